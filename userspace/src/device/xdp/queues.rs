//! AF_XDP sockets on every RX queue of an interface, registered with the program and
//! driven by one poll loop as one [`Device`].
use super::attach::XdpModeChoice;
use super::program::{SharedProgram, SteerCounters, XdpProgram, lock};
use super::socket::{
    FrameAccount, TxChecksumMode, XdpDevice, ring_size_for, wanted_tx_metadata_len,
};
use crate::device::Device;
use crate::device::error::{Context, SetupResult, bail};
use crate::device::netinfo::{self, multi_buffer_supported};
use crate::device::startup;
use crate::device::switch::SwitchPort;
use crate::wire::MacAddr;
use std::os::fd::{AsRawFd, RawFd};
use xdp_ebpf::{MAX_QUEUES, SteerConfig};

/// At exit, how long the sockets may take to complete the frames in their TX rings.
const TX_DRAIN_AT_EXIT: std::time::Duration = std::time::Duration::from_millis(5);

/// Which RX queues get an AF_XDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueChoice {
    /// Every RX queue of the interface: RSS may hash a flow to any of them.
    All,
    /// One queue only; refused unless it is the interface's only queue, because nothing
    /// steers the stack's flows to it.
    Only(u32),
}

/// AF_XDP sockets on several RX queues of one interface, driven by one poll loop: RSS
/// hashes each flow to a queue of its own choosing, so the stack must listen on all.
/// Frames are received from every queue and sent on the first socket's TX ring (any
/// queue's TX ring leaves by the same interface).
pub struct XdpQueues {
    devices: Vec<XdpDevice>,
    /// The program, unless the frames go through the interface's switch.
    program: Option<SharedProgram>,
    /// The rings to the interface's switch, which owns the program and the sockets
    /// (several programs on one interface; see [`crate::device::switch`]).
    switch: Option<SwitchPort>,
    /// Whether this set reports the program's interface-wide counters (steering,
    /// packets on queues without a socket); with sharded stacks, one of them does.
    pub report_program_counters: bool,
    /// One `pollfd` per socket, for [`XdpQueues::wait_for_frames`] (made once).
    pollfds: Vec<libc::pollfd>,
    /// Names this set of queues to the program (its listening ports).
    owner: usize,
}

/// The next [`XdpQueues::owner`].
static NEXT_OWNER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl XdpQueues {
    /// Loads the program, binds the queues `choice` names, registers them and enables
    /// steering, then attaches: no packet is steered before every socket is
    /// registered. The sockets are bound while the program loads: each step waits on
    /// the kernel, so side by side they take the time of the longest.
    ///
    /// With `linger`, the program is borrowed from the interface's holder when one has
    /// it (no load, no attach); else a holder is started at once and attaches it, and
    /// keeps it attached for `linger` after this process (see
    /// [`crate::device::holder`]).
    pub fn open(
        interface: &str,
        mode: Option<XdpModeChoice>,
        choice: QueueChoice,
        steer: SteerConfig,
        linger: Option<std::time::Duration>,
    ) -> SetupResult<Self> {
        let looking = startup::step("interface and queues");
        let info = netinfo::interface(interface)?;
        let count = netinfo::rx_queue_count(interface).min(MAX_QUEUES);
        let wanted = queues_for(interface, count, choice)?;
        drop(looking);
        let asking = startup::step("holder asked");
        let borrowed = match linger {
            Some(linger) => XdpProgram::borrow(&info, mode, linger)?,
            None => None,
        };
        drop(asking);
        if let Some((program, pool)) = borrowed {
            let ring_size = ring_size_for(wanted.len() as u32);
            let meta = wanted_tx_metadata_len();
            let fits = pool.iter().all(|p| {
                wanted.contains(&p.queue) && p.ring_size == ring_size && p.tx_metadata_len == meta
            });
            let taken_over = fits.then(|| -> SetupResult<XdpQueues> {
                let mut devices = Vec::with_capacity(wanted.len());
                let mut pool = pool;
                for (i, &q) in wanted.iter().enumerate() {
                    // The first socket transmits (see `transmit`).
                    let transmits = i == 0;
                    devices.push(match pool.iter().position(|p| p.queue == q) {
                        Some(i) => XdpDevice::adopt(&info, pool.swap_remove(i), transmits)?,
                        None => XdpDevice::bind(&info, q, wanted.len() as u32, transmits)?,
                    });
                }
                let queues = XdpQueues::register(&program, devices)?;
                lock(&program).enable(steer)?;
                Ok(queues)
            });
            match taken_over {
                Some(Ok(queues)) => {
                    tracing::debug!(queues = ?queues.queues(), "AF_XDP sockets taken over, steering on");
                    return Ok(queues);
                }
                Some(Err(e)) => tracing::debug!("could not take the sockets over: {e:#}"),
                None => {}
            }
            // Sockets of another shape (another queue choice), or unusable: the holder
            // lets go of everything, and this process starts afresh.
            drop(program);
        }
        // One thread binds the sockets while this one loads the program: each gets a
        // core of its own. The binds must end before the attach starts: each takes
        // rtnl, which the attach holds until it returns.
        let (loaded, devices) = std::thread::scope(|scope| {
            let info = &info;
            let wanted = &wanted;
            let binds = scope.spawn(move || {
                let _t = startup::step("sockets bound (thread)");
                wanted
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| XdpDevice::bind(info, q, wanted.len() as u32, i == 0))
                    .collect::<SetupResult<Vec<XdpDevice>>>()
            });
            let loaded = XdpProgram::load_unattached(info, mode, linger);
            let devices = binds
                .join()
                .unwrap_or_else(|_| bail!("binding the queues panicked"));
            (loaded, devices)
        });
        let loaded = loaded?;
        // A queue taken by another program's socket: say whose the interface is.
        let mut devices = devices
            .map_err(|e| super::attach::in_use_error(&info.name, info.ifindex).unwrap_or(e))?;
        // Every socket registered and the steering written before the attach: the
        // program steers from the moment it runs, which is before the attach returns
        // (through a holder, before this process hears of it).
        let steering = startup::step("sockets registered, steering on");
        let mut program = XdpProgram::unattached(&loaded, &info, linger)?;
        for device in &devices {
            program.register(device.queue, device.pooled_fds().0.as_raw_fd())?;
        }
        program.enable(steer)?;
        drop(steering);
        program.attach_loaded(loaded, &info, mode)?;
        // Some drivers (virtio_net) change their channels when XDP attaches: bind what
        // the attached interface has, if that differs.
        let now = program.rx_queues;
        if now != count {
            let wanted = queues_for(interface, now, choice)?;
            devices.retain(|d| wanted.contains(&d.queue));
            for &q in &wanted {
                if !devices.iter().any(|d| d.queue == q) {
                    let transmits = q == wanted[0];
                    devices.push(XdpDevice::bind(&info, q, wanted.len() as u32, transmits)?);
                }
            }
            // The transmitting socket first.
            devices.sort_by_key(|d| d.queue);
        }
        let program = std::sync::Arc::new(std::sync::Mutex::new(program));
        let queues = XdpQueues::register(&program, devices)?;
        tracing::debug!(queues = ?queues.queues(), "AF_XDP sockets bound, steering on");
        Ok(queues)
    }

    /// One socket per queue in `queues` for an already loaded program.
    pub fn bind(program: &SharedProgram, queues: &[u32]) -> SetupResult<Self> {
        let info = netinfo::interface(&lock(program).interface)?;
        let devices = queues
            .iter()
            .enumerate()
            .map(|(i, &q)| XdpDevice::bind(&info, q, queues.len() as u32, i == 0))
            .collect::<SetupResult<Vec<_>>>()?;
        XdpQueues::register(program, devices)
    }

    /// Puts each socket in the program's XSKMAP slot of its queue.
    fn register(program: &SharedProgram, devices: Vec<XdpDevice>) -> SetupResult<Self> {
        if devices.is_empty() {
            bail!("no RX queue to bind");
        }
        for device in &devices {
            lock(program).register(device.queue, device.pooled_fds().0.as_raw_fd())?;
        }
        let pollfds = devices
            .iter()
            .map(|d| libc::pollfd {
                fd: d.pooled_fds().0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Ok(XdpQueues {
            devices,
            program: Some(program.clone()),
            switch: None,
            report_program_counters: true,
            pollfds,
            owner: NEXT_OWNER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Frames through the interface's switch (see [`crate::device::switch`]): the
    /// switch owns the program and the sockets.
    pub fn switched(port: SwitchPort) -> Self {
        XdpQueues {
            devices: Vec::new(),
            program: None,
            switch: Some(port),
            report_program_counters: false,
            pollfds: Vec::new(),
            owner: NEXT_OWNER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The rings to the switch, when the frames go through one.
    pub fn switch(&self) -> Option<&SwitchPort> {
        self.switch.as_ref()
    }

    fn program(&self) -> Option<std::sync::MutexGuard<'_, XdpProgram>> {
        self.program.as_ref().map(lock)
    }

    /// `native` or `skb` (`switch`: through the interface's switch).
    pub fn attached_mode(&self) -> &'static str {
        self.program().map_or("switch", |p| p.attached_mode)
    }

    /// The program's steering counters, summed over CPUs.
    pub fn steer_counters(&self) -> SteerCounters {
        self.program()
            .map(|p| p.steer_counters())
            .unwrap_or_default()
    }

    /// The queues with a socket, in order.
    pub fn queues(&self) -> Vec<u32> {
        self.devices.iter().map(|d| d.queue).collect()
    }

    /// RX queues of the interface (with a socket or not).
    pub fn interface_queues(&self) -> u32 {
        self.program().map_or(0, |p| p.rx_queues)
    }

    /// The listening ports of this set of queues; see [`XdpProgram::set_listen_ports`].
    pub fn set_listen_ports(&self, ports: &[u16]) -> SetupResult<()> {
        match (&self.switch, self.program()) {
            (Some(switch), _) => Ok(switch
                .set_listen_ports(ports)
                .context("the switch's steering")?),
            (None, Some(mut p)) => p.set_listen_ports(self.owner, ports),
            (None, None) => Ok(()),
        }
    }

    /// Packets for the stack dropped on queues without a socket: (queue, count).
    pub fn no_socket_by_queue(&self) -> Vec<(u32, u64)> {
        if !self.report_program_counters {
            return Vec::new();
        }
        self.program()
            .map(|p| p.no_socket_by_queue())
            .unwrap_or_default()
    }

    /// Sleeps in poll(2) until a frame arrives on any queue's RX ring or `timeout`
    /// passes: what an idle poll loop does instead of spinning. The kernel wakes a copy-mode
    /// socket from the softirq that puts a frame in its RX ring. Returns at once while
    /// frames wait for room in a ring (the fill ring or the TX ring) or for the kernel
    /// to send them, which only the poll loop moves on. Returns whether a socket has
    /// frames to read or to move.
    pub fn wait_for_frames(&mut self, timeout: std::time::Duration) -> bool {
        if let Some(switch) = &mut self.switch {
            return switch.wait_for_frames(timeout);
        }
        if self.devices.iter().any(XdpDevice::has_frames_to_move) {
            return true;
        }
        let ready = crate::device::wake::sleep_on(&mut self.pollfds, timeout);
        ready > 0
    }

    /// [`XdpQueues::wait_for_frames`] in three steps, for a loop that sleeps without
    /// holding the device (other threads may turn it meanwhile): the fds to sleep on
    /// (taken once), then before each sleep [`XdpQueues::ready_to_sleep`], after it
    /// [`XdpQueues::woke`].
    pub fn sleep_fds(&self) -> Vec<libc::pollfd> {
        match &self.switch {
            Some(switch) => switch.sleep_fds(),
            None => self.pollfds.clone(),
        }
    }

    /// Whether the device may sleep now (no frame waits to be moved); through a
    /// switch, it is told that this side sleeps from now on.
    pub fn ready_to_sleep(&mut self) -> bool {
        match &mut self.switch {
            Some(switch) => switch.ready_to_sleep(),
            None => !self.devices.iter().any(XdpDevice::has_frames_to_move),
        }
    }

    /// The AF_XDP sockets a thread may wait on itself, beside its own fds, instead of
    /// a loop's sleep: none through a switch (whose wake-ups need the loop's flag).
    pub fn watch_fds(&self) -> Vec<RawFd> {
        match &self.switch {
            Some(_) => Vec::new(),
            None => self.pollfds.iter().map(|p| p.fd).collect(),
        }
    }

    /// Whether frames wait to be moved by the loop (it must turn again, not sleep).
    pub fn frames_to_move(&self) -> bool {
        self.devices.iter().any(XdpDevice::has_frames_to_move)
    }

    /// After a sleep on [`XdpQueues::sleep_fds`] (or a [`XdpQueues::ready_to_sleep`]
    /// that said no): awake again.
    pub fn woke(&mut self) {
        if let Some(switch) = &mut self.switch {
            switch.woke();
        }
    }

    /// The AF_XDP sockets' fds (readable when a frame waits), and whether frames wait
    /// for room in a ring or for the kernel: for a loop that sleeps in a poll(2) of its
    /// own (the switch's).
    pub fn socket_fds(&self) -> (Vec<RawFd>, bool) {
        (
            self.devices
                .iter()
                .map(|d| d.pooled_fds().0.as_raw_fd())
                .collect(),
            self.devices.iter().any(XdpDevice::has_frames_to_move),
        )
    }

    /// Adds `fd` to what [`XdpQueues::wait_for_frames`] waits for: it returns when `fd`
    /// is readable too (a [`crate::device::wake::WakeFd`] of the loop).
    pub fn also_wake_on(&mut self, fd: RawFd) {
        if let Some(switch) = &mut self.switch {
            return switch.also_wake_on(fd);
        }
        self.pollfds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }

    /// UMEM frames of every queue, summed.
    pub fn frame_account(&self) -> FrameAccount {
        self.devices
            .iter()
            .map(XdpDevice::frame_account)
            .fold(FrameAccount::default(), |a, b| FrameAccount {
                total: a.total + b.total,
                free_for_tx: a.free_for_tx + b.free_for_tx,
                in_fill_ring: a.in_fill_ring + b.in_fill_ring,
                awaiting_fill: a.awaiting_fill + b.awaiting_fill,
                in_tx_ring: a.in_tx_ring + b.in_tx_ring,
                queued_tx: a.queued_tx + b.queued_tx,
            })
    }

    /// Socket statistics of every queue, summed: (rx_dropped, rx_ring_full, fill_empty).
    /// rx_dropped includes the packets too large to put together (see `MAX_GATHERED`).
    pub fn socket_stats(&self) -> (u64, u64, u64) {
        self.devices
            .iter()
            .fold((0, 0, 0), |a, d| match d.socket_stats() {
                Some(x) => (
                    a.0 + x.rx_dropped + d.rx_oversized(),
                    a.1 + x.rx_ring_full,
                    a.2 + x.rx_fill_ring_empty,
                ),
                None => (a.0 + d.rx_oversized(), a.1, a.2),
            })
    }

    /// How sent frames get their TCP checksum (the socket that transmits decides).
    pub fn tx_checksum(&self) -> TxChecksumMode {
        self.devices
            .first()
            .map_or(TxChecksumMode::SoftwareSwitch, |d| d.tx_checksum())
    }

    /// Frames one transmit kick sends at most.
    pub fn tx_budget(&self) -> u32 {
        // Through the switch: the switch's sockets send (0: not this process).
        self.devices.first().map_or(0, |d| d.tx_budget())
    }

    /// True if the sockets take packets larger than a frame in several frames.
    pub fn multi_buffer(&self) -> bool {
        multi_buffer_supported()
    }
}

impl Drop for XdpQueues {
    /// Closing an AF_XDP socket and detaching XDP each wait for an RCU grace period in
    /// the kernel (several ms each). Done side by side they cost one, which is most of
    /// the exit time of a short fetch. The program is detached here only when no other
    /// `XdpQueues` shares it (serve's other stacks may still be draining).
    /// A lingering program takes the sockets with it to its holder, which closes them
    /// after this process has gone.
    fn drop(&mut self) {
        let Some(program) = &self.program else {
            return;
        };
        let last_user = std::sync::Arc::strong_count(program) == 1;
        if last_user {
            let draining = startup::step("exit: TX drained");
            let give_up = std::time::Instant::now() + TX_DRAIN_AT_EXIT;
            for device in &mut self.devices {
                device.drain_tx(give_up);
            }
            drop(draining);
            let _exit = startup::step("exit: program and sockets handed on");
            let sockets: Vec<_> = self
                .devices
                .iter()
                .map(|d| {
                    let (fd, memfd) = d.pooled_fds();
                    (d.queue, d.ring_size(), d.tx_metadata_len(), fd, memfd)
                })
                .collect();
            if lock(program).release(&sockets) {
                // Our copies of the fds: closing them only drops a reference.
                self.devices.clear();
                return;
            }
        }
        std::thread::scope(|scope| {
            if last_user {
                scope.spawn(|| lock(program).detach());
            }
            for device in self.devices.drain(..) {
                scope.spawn(move || drop(device));
            }
        });
    }
}

/// The queues of an attached program's interface to bind for `choice`.
pub fn choose_queues(program: &SharedProgram, choice: QueueChoice) -> SetupResult<Vec<u32>> {
    let (iface, count) = {
        let p = lock(program);
        (p.interface.clone(), p.rx_queues)
    };
    queues_for(&iface, count, choice)
}

/// The queues to bind for `choice` on `iface` with `count` RX queues.
fn queues_for(iface: &str, count: u32, choice: QueueChoice) -> SetupResult<Vec<u32>> {
    match choice {
        QueueChoice::All => Ok((0..count).collect()),
        QueueChoice::Only(q) if q >= count => {
            bail!("--queue {q}: {iface} has {count} RX queue(s), numbered from 0")
        }
        QueueChoice::Only(q) if count > 1 => bail!(
            "--queue {q}: {iface} has {count} RX queues and RSS spreads flows over all of them; without a flow-steering rule, a socket on one queue misses the flows hashed to the others (leave out --queue: the stack binds every queue)"
        ),
        QueueChoice::Only(q) => Ok(vec![q]),
    }
}

impl Device for XdpQueues {
    fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize {
        if let Some(switch) = &mut self.switch {
            return switch.receive(handle);
        }
        self.devices.iter_mut().map(|d| d.receive(handle)).sum()
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        match &mut self.switch {
            Some(switch) => switch.transmit(build),
            None => self.devices[0].transmit(build),
        }
    }

    fn flush(&mut self) {
        match &mut self.switch {
            Some(switch) => switch.flush(),
            None => self.devices[0].flush(),
        }
    }

    fn mac(&self) -> MacAddr {
        match &self.switch {
            Some(switch) => switch.mac(),
            None => self.devices[0].mac(),
        }
    }

    fn mtu(&self) -> usize {
        match &self.switch {
            Some(switch) => switch.mtu(),
            None => self.devices[0].mtu(),
        }
    }

    fn tx_checksum_offload(&self) -> bool {
        self.devices
            .first()
            .is_some_and(|d| d.tx_checksum_offload())
    }
}
