//! The AF_XDP device: loads and attaches the XDP program with aya, binds an xsk-rs socket
//! to one queue, and moves frames through the UMEM rings in batches.
//!
//! The program is attached through a BPF link owned by this process, so the kernel
//! detaches it when the process ends by any path, `kill -9` included.
use super::Device;
use crate::device::error::{Context, SetupError, SetupResult, bail, setup_error};
use crate::wire::MacAddr;
use aya::maps::{Array, MapData, PerCpuArray, XskMap};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{Xdp, XdpMode};
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use xdp_ebpf::{
    COUNTER_NO_SOCKET, COUNTER_NO_SOCKET_QUEUE0, COUNTER_PASSED, COUNTER_STEERED, MAX_QUEUES,
    SteerConfig,
};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

/// The XDP object built by `cargo xtask build-ebpf`, embedded at compile time.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ebpf.o"));

/// Most frames received or queued for transmit in one batch.
pub const BATCH: usize = 64;
/// sendto(2) calls one flush makes at most to drain the TX ring (32 frames each).
const MAX_KICKS: usize = 16;
const FRAME_SIZE: u32 = 2048;
/// Ring size of a socket when its stack polls no other; a stack that polls several
/// queues gives each less, so that its UMEMs together stay at 8 MiB. UMEM memory is
/// what start-up and exit cost most (the kernel populates, pins and frees every page),
/// and one poll loop drains one ring at a time. Below 512, a bulk download on veth
/// finds the fill ring empty.
const RING_SIZE: u32 = 2048;
const MIN_RING_SIZE: u32 = 512;

/// Ring size for each of the `queues` sockets one stack polls (a power of two, as the
/// kernel requires). Each UMEM holds twice its ring size in frames: a full fill ring
/// plus as many for transmit.
fn ring_size_for(queues: u32) -> u32 {
    (RING_SIZE / queues.max(1))
        .next_power_of_two()
        .clamp(MIN_RING_SIZE, RING_SIZE)
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum XdpModeChoice {
    /// In the driver (fastest; veth supports it).
    Native,
    /// Generic XDP on the socket buffer (works everywhere, slower).
    Skb,
}

/// Which RX queues get an AF_XDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueChoice {
    /// Every RX queue of the interface: RSS may hash a flow to any of them.
    All,
    /// One queue only; refused unless it is the interface's only queue, because nothing
    /// steers the stack's flows to it.
    Only(u32),
}

/// `SteerConfig` as a map value. The newtype lives here so that the only `unsafe impl`
/// stays in the device layer.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodSteerConfig(SteerConfig);
// SAFETY: SteerConfig is #[repr(C)], Copy, made only of integers and integer arrays
// ([u8; 4], u32, u16, u16, [u16; 16], u32 = 48 bytes, align 4), so it has no padding.
unsafe impl aya::Pod for PodSteerConfig {}

/// Frames of the UMEM, by where they are; their sum never changes (no leak).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameAccount {
    /// Frames in the UMEM.
    pub total: usize,
    /// Free for transmit.
    pub free_for_tx: usize,
    /// In the fill ring, waiting for received frames.
    pub in_fill_ring: usize,
    /// Received frames waiting for room in the fill ring (returned on the next turn).
    pub awaiting_fill: usize,
    /// In the TX ring, not yet completed.
    pub in_tx_ring: usize,
    /// Filled for transmit, not yet in the TX ring.
    pub queued_tx: usize,
}

impl FrameAccount {
    /// Frames unaccounted for (0 unless one leaked).
    pub fn missing(&self) -> isize {
        self.total as isize
            - (self.free_for_tx
                + self.in_fill_ring
                + self.awaiting_fill
                + self.in_tx_ring
                + self.queued_tx) as isize
    }
}

/// An AF_XDP socket on one queue, with its own UMEM and rings.
pub struct XdpDevice {
    mac: MacAddr,
    mtu: usize,
    umem: Umem,
    rx: RxQueue,
    tx: TxQueue,
    fill: FillQueue,
    completion: CompQueue,
    rx_batch: Vec<FrameDesc>,
    tx_free: Vec<FrameDesc>,
    tx_queued: Vec<FrameDesc>,
    completed: Vec<FrameDesc>,
    awaiting_fill: Vec<FrameDesc>,
    in_fill_ring: usize,
    in_tx_ring: usize,
    total_frames: usize,
    /// The NIC queue it is bound to.
    pub queue: u32,
}

/// Why a bind failed: a queue still held by a socket being released, or anything else.
enum BindError {
    Busy(SetupError),
    Other(SetupError),
}

impl From<SetupError> for BindError {
    fn from(e: SetupError) -> Self {
        BindError::Other(e)
    }
}

/// Steering counters from the XDP program, summed over CPUs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SteerCounters {
    /// Frames steered to an AF_XDP socket.
    pub steered: u64,
    /// Frames passed to the kernel.
    pub passed: u64,
    /// Frames for the stack that arrived on a queue without a socket.
    pub no_socket: u64,
}

/// The loaded and attached XDP program, shared by the AF_XDP sockets of every queue.
pub struct XdpProgram {
    ebpf: aya::Ebpf,
    counters: PerCpuArray<MapData, u64>,
    /// `native` or `skb`.
    pub attached_mode: &'static str,
    interface: String,
    /// RX queues of the interface, read after the program is attached (some drivers,
    /// virtio_net among them, change their channels when XDP comes or goes).
    pub rx_queues: u32,
    /// The BPF link that attaches the program; closing it detaches.
    link: Option<XdpLinkId>,
    /// The listening ports of each set of queues (stacks sharing the interface share
    /// the program): the program steers them all.
    listening: std::collections::HashMap<usize, Vec<u16>>,
}

/// The program shared by the sockets of every queue.
pub type SharedProgram = std::sync::Arc<std::sync::Mutex<XdpProgram>>;

impl XdpProgram {
    /// Checks the setup, loads the program and attaches it through a BPF link. Nothing
    /// is steered until [`XdpProgram::enable`].
    pub fn load(interface: &str, mode: Option<XdpModeChoice>) -> SetupResult<SharedProgram> {
        XdpProgram::load_on(&super::netinfo::interface(interface)?, mode)
    }

    /// [`XdpProgram::load`] for an interface already looked up.
    fn load_on(
        info: &super::netinfo::InterfaceInfo,
        mode: Option<XdpModeChoice>,
    ) -> SetupResult<SharedProgram> {
        if XDP_OBJECT.is_empty() {
            bail!("the eBPF object is missing: run `cargo xtask build-ebpf`, then rebuild");
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("AF_XDP needs root (CAP_NET_ADMIN and CAP_BPF): run with sudo");
        }
        let iface = info.name.as_str();
        if !info.up {
            bail!("interface {iface} is down");
        }
        tracing::debug!("loading the XDP object");
        let mut ebpf = load_object_without_kernel_btf().context("loading the XDP program")?;
        tracing::debug!("XDP object parsed");
        let program: &mut Xdp = ebpf
            .program_mut(xdp_ebpf::PROGRAM_NAME)
            .ok_or_else(|| {
                setup_error!("XDP program {} not in the object", xdp_ebpf::PROGRAM_NAME)
            })?
            .try_into()?;
        program
            .load()
            .context("the kernel refused the XDP program")?;
        let attach = |program: &mut Xdp, mode: XdpMode| {
            program.attach(iface, mode).map_err(|e| {
                // One XDP program per interface: name whoever holds it.
                match super::netinfo::xdp_holder(info.ifindex) {
                    Some(holder) => setup_error!(
                        "interface {iface} is already in use by {holder}: only one XDP program can attach to an interface; stop it, or run on another interface"
                    ),
                    None => SetupError::new(format!("attaching XDP to {iface}"), e),
                }
            })
        };
        let (link, attached_mode) = match mode {
            Some(XdpModeChoice::Native) => (attach(program, XdpMode::Driver)?, "native"),
            Some(XdpModeChoice::Skb) => (attach(program, XdpMode::Skb)?, "skb"),
            None => match attach(program, XdpMode::Driver) {
                Ok(link) => (link, "native"),
                Err(e) if super::netinfo::xdp_holder(info.ifindex).is_some() => return Err(e),
                Err(native) => {
                    let link = attach(program, XdpMode::Skb)?;
                    tracing::warn!(
                        "native XDP refused on {iface} ({:#}); running in generic (skb) mode, where frames larger than {FRAME_SIZE} bytes (a local peer's GSO segments) are dropped and bulk transfers crawl. On a veth, give it as many RX queues as its peer has TX queues (`ethtool -L {iface} rx N`)",
                        native.root_cause()
                    );
                    (link, "skb")
                }
            },
        };
        tracing::debug!(mode = attached_mode, "XDP program attached");
        let counters = PerCpuArray::try_from(
            ebpf.take_map(xdp_ebpf::COUNTERS_MAP)
                .ok_or_else(|| setup_error!("COUNTERS map missing"))?,
        )?;
        let rx_queues = super::netinfo::rx_queue_count(iface).min(MAX_QUEUES);
        Ok(std::sync::Arc::new(std::sync::Mutex::new(XdpProgram {
            ebpf,
            counters,
            attached_mode,
            interface: iface.to_string(),
            rx_queues,
            link: Some(link),
            listening: std::collections::HashMap::new(),
        })))
    }

    fn register(&mut self, queue: u32, fd: std::os::fd::RawFd) -> SetupResult<()> {
        let mut xsks: XskMap<&mut MapData> = XskMap::try_from(
            self.ebpf
                .map_mut(xdp_ebpf::XSKS_MAP)
                .ok_or_else(|| setup_error!("XSKS map missing"))?,
        )?;
        xsks.set(queue, fd, 0)
            .context("registering the AF_XDP socket in the XSKMAP")?;
        Ok(())
    }

    /// Writes the steering config: from now on the program steers the stack's packets.
    pub fn enable(&mut self, steer: SteerConfig) -> SetupResult<()> {
        let mut config: Array<&mut MapData, PodSteerConfig> = Array::try_from(
            self.ebpf
                .map_mut(xdp_ebpf::CONFIG_MAP)
                .ok_or_else(|| setup_error!("CONFIG map missing"))?,
        )?;
        let mut steer = steer;
        steer.enabled = 1;
        config
            .set(0, PodSteerConfig(steer), 0)
            .context("writing the steering config")?;
        Ok(())
    }

    /// Replaces the listening ports of `owner` (one set of queues, one stack) steered
    /// to the stacks in shared-IP mode, so that a listener opened after start-up gets
    /// its SYNs: the program steers the ports of every owner. The rest of the config
    /// stays.
    pub fn set_listen_ports(&mut self, owner: usize, ports: &[u16]) -> SetupResult<()> {
        let mut all: Vec<u16> = self
            .listening
            .iter()
            .filter(|(o, _)| **o != owner)
            .flat_map(|(_, p)| p.iter().copied())
            .chain(ports.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        if all.len() > xdp_ebpf::MAX_LISTEN_PORTS {
            bail!("at most {} listening ports", xdp_ebpf::MAX_LISTEN_PORTS);
        }
        self.listening.insert(owner, ports.to_vec());
        let ports = &all;
        let mut config: Array<&mut MapData, PodSteerConfig> = Array::try_from(
            self.ebpf
                .map_mut(xdp_ebpf::CONFIG_MAP)
                .ok_or_else(|| setup_error!("CONFIG map missing"))?,
        )?;
        let PodSteerConfig(mut steer) = config.get(&0, 0).context("reading the steering config")?;
        steer.listen_ports = [0; xdp_ebpf::MAX_LISTEN_PORTS];
        steer.listen_ports[..ports.len()].copy_from_slice(ports);
        config
            .set(0, PodSteerConfig(steer), 0)
            .context("writing the steering config")?;
        Ok(())
    }

    /// Detaches the program now (dropping it would too, later).
    fn detach(&mut self) {
        if let Some(link) = self.link.take()
            && let Some(program) = self.ebpf.program_mut(xdp_ebpf::PROGRAM_NAME)
            && let Ok(xdp) = <&mut Xdp>::try_from(program)
        {
            let _ = xdp.detach(link);
        }
    }

    fn counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// The program's steering counters, summed over CPUs.
    pub fn steer_counters(&self) -> SteerCounters {
        SteerCounters {
            steered: self.counter(COUNTER_STEERED),
            passed: self.counter(COUNTER_PASSED),
            no_socket: self.counter(COUNTER_NO_SOCKET),
        }
    }

    /// Packets for the stack dropped because their queue had no socket: (queue, count).
    pub fn no_socket_by_queue(&self) -> Vec<(u32, u64)> {
        if self.counter(COUNTER_NO_SOCKET) == 0 {
            return Vec::new();
        }
        (0..MAX_QUEUES)
            .map(|q| (q, self.counter(COUNTER_NO_SOCKET_QUEUE0 + q)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

impl XdpDevice {
    /// An AF_XDP socket with its own UMEM on `queue` of `iface`, whose rings are sized
    /// for a stack that polls `queues` queues. It receives once registered with the program.
    pub fn bind(
        iface: &super::netinfo::InterfaceInfo,
        queue: u32,
        queues: u32,
    ) -> SetupResult<Self> {
        // The kernel releases a closed socket's hold on its queue a moment after the
        // close returns: a stack started right after another one ended may find the
        // queue still busy (EBUSY) for a few milliseconds.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            match XdpDevice::try_bind(iface, queue, queues) {
                Err(BindError::Busy(_)) if std::time::Instant::now() < give_up => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(BindError::Busy(e) | BindError::Other(e)) => return Err(e),
                Ok(device) => return Ok(device),
            }
        }
    }

    fn try_bind(
        iface: &super::netinfo::InterfaceInfo,
        queue: u32,
        queues: u32,
    ) -> Result<Self, BindError> {
        let (mac, mtu) = (iface.mac, iface.mtu);
        let iface = iface.name.as_str();
        let ring_size = ring_size_for(queues);
        let frame_count = 2 * ring_size;
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| setup_error!("{e}"))?)
            .fill_queue_size(QueueSize::new(ring_size).map_err(|e| setup_error!("{e}"))?)
            .comp_queue_size(QueueSize::new(ring_size).map_err(|e| setup_error!("{e}"))?)
            .build()
            .map_err(|e| setup_error!("UMEM config: {e}"))?;
        let frame_count = NonZeroU32::new(frame_count).expect("non-zero");
        let (umem, mut frames) = Umem::new(umem_config, frame_count, false)
            .map_err(|e| setup_error!("creating UMEM: {e}"))?;
        let socket_config = SocketConfig::builder()
            .rx_queue_size(QueueSize::new(ring_size).map_err(|e| setup_error!("{e}"))?)
            .tx_queue_size(QueueSize::new(ring_size).map_err(|e| setup_error!("{e}"))?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let if_name: Interface = iface
            .parse()
            .map_err(|_| setup_error!("bad interface name {iface}"))?;
        // SAFETY: this UMEM is new and not shared, so no other socket is bound with it.
        let (tx, rx, fq_cq) = unsafe { xsk_rs::Socket::new(socket_config, &umem, &if_name, queue) }
            .map_err(|e| {
                let busy = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .and_then(std::io::Error::raw_os_error)
                    == Some(libc::EBUSY);
                let error = SetupError::new(
                    format!("binding an AF_XDP socket to {iface} queue {queue}"),
                    e,
                );
                if busy {
                    BindError::Busy(error)
                } else {
                    BindError::Other(error)
                }
            })?;
        let (mut fill, completion) = fq_cq
            .ok_or_else(|| setup_error!("AF_XDP socket came without fill/completion rings"))?;
        let tx_free = frames.split_off(ring_size as usize);
        // SAFETY: the frames belong to this UMEM and none is in any ring yet.
        let filled = unsafe { fill.produce(&frames) };
        if filled != frames.len() {
            return Err(setup_error!("could not fill the AF_XDP fill ring").into());
        }
        Ok(XdpDevice {
            mac,
            mtu,
            umem,
            rx,
            tx,
            fill,
            completion,
            rx_batch: frames,
            tx_free,
            tx_queued: Vec::with_capacity(BATCH * 4),
            completed: (0..ring_size as usize)
                .map(|_| FrameDesc::default())
                .collect(),
            awaiting_fill: Vec::with_capacity(ring_size as usize),
            in_fill_ring: ring_size as usize,
            in_tx_ring: 0,
            total_frames: frame_count.get() as usize,
            queue,
        })
    }

    /// Where the UMEM's frames are.
    pub fn frame_account(&self) -> FrameAccount {
        FrameAccount {
            total: self.total_frames,
            free_for_tx: self.tx_free.len(),
            in_fill_ring: self.in_fill_ring,
            awaiting_fill: self.awaiting_fill.len(),
            in_tx_ring: self.in_tx_ring,
            queued_tx: self.tx_queued.len(),
        }
    }

    /// The kernel's statistics of the socket (drops, full rings).
    pub fn socket_stats(&self) -> Option<xsk_rs::socket::XdpStatistics> {
        self.rx.fd().xdp_statistics().ok()
    }

    /// Returns received frames to the fill ring. The ring holds exactly the RX share of
    /// the frames, but the kernel may not have released a slot yet: what does not fit
    /// waits for the next turn, so the RX share never shrinks.
    fn refill(&mut self) {
        if self.awaiting_fill.is_empty() {
            return;
        }
        // SAFETY: these frames came from this UMEM's RX ring and are no longer borrowed.
        let returned = unsafe { self.fill.produce(&self.awaiting_fill) };
        if returned > 0 {
            self.in_fill_ring += returned;
            self.awaiting_fill.drain(..returned);
        }
    }

    fn recycle_completions(&mut self) {
        if self.in_tx_ring == 0 {
            return;
        }
        // SAFETY: completion descriptors come back from this UMEM's TX ring.
        let n = unsafe { self.completion.consume(&mut self.completed) };
        self.in_tx_ring -= n;
        self.tx_free.extend_from_slice(&self.completed[..n]);
    }
}

impl Device for XdpDevice {
    fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize {
        let batch = &mut self.rx_batch[..BATCH];
        // SAFETY: the descriptors receive frames of this UMEM from its RX ring.
        let n = unsafe { self.rx.consume(batch) };
        if n == 0 {
            self.refill();
            if self.fill.needs_wakeup() {
                let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
            }
            return 0;
        }
        self.in_fill_ring -= n;
        for desc in &self.rx_batch[..n] {
            // SAFETY: the frame came from the RX ring and is ours until it goes back to
            // the fill ring below; nothing else reads or writes it meanwhile.
            let data = unsafe { self.umem.data(desc) };
            handle(data.contents());
        }
        self.awaiting_fill.extend_from_slice(&self.rx_batch[..n]);
        self.refill();
        n
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        if self.tx_free.is_empty() {
            self.flush();
        }
        let Some(mut desc) = self.tx_free.pop() else {
            return false;
        };
        // SAFETY: the frame is in the free list, so neither ring nor the kernel holds it.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        let mut cursor = data.cursor();
        let room = cursor.buf_len();
        cursor.set_pos(room);
        let len = build(data.contents_mut());
        data.cursor().set_pos(len);
        if len == 0 {
            self.tx_free.push(desc);
        } else {
            self.tx_queued.push(desc);
            if self.tx_queued.len() >= BATCH {
                self.flush();
            }
        }
        true
    }

    /// Puts the queued frames on the TX ring and has the kernel send them. In copy mode
    /// one sendto(2) sends at most 32 frames (the kernel's TX_BATCH_SIZE), so the ring
    /// is kicked again while that completes more: a turn leaves no frame waiting in the
    /// ring, and an idle loop may sleep (see [`XdpQueues::wait_for_frames`]).
    fn flush(&mut self) {
        if !self.tx_queued.is_empty() {
            // SAFETY: queued frames are filled, of this UMEM, and in no ring.
            let n = unsafe { self.tx.produce(&self.tx_queued) };
            self.in_tx_ring += n;
            self.tx_queued.drain(..n);
        }
        for _ in 0..MAX_KICKS {
            if self.in_tx_ring == 0 || !self.tx.needs_wakeup() {
                break;
            }
            let before = self.in_tx_ring;
            let _ = self.tx.wakeup();
            self.recycle_completions();
            if self.in_tx_ring == before {
                break; // the kernel is busy: the next turn tries again
            }
        }
        self.recycle_completions();
    }

    fn mac(&self) -> MacAddr {
        self.mac
    }

    fn mtu(&self) -> usize {
        self.mtu
    }
}

/// AF_XDP sockets on several RX queues of one interface, driven by one poll loop: RSS
/// hashes each flow to a queue of its own choosing, so the stack must listen on all.
/// Frames are received from every queue and sent on the first socket's TX ring (any
/// queue's TX ring leaves by the same interface).
pub struct XdpQueues {
    devices: Vec<XdpDevice>,
    program: SharedProgram,
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
    /// Loads and attaches the program, binds the queues `choice` names, then enables
    /// steering: no packet is steered before every socket is registered. The sockets
    /// are bound while the program loads: each step waits on the kernel, so side by side
    /// they take the time of the longest.
    pub fn open(
        interface: &str,
        mode: Option<XdpModeChoice>,
        choice: QueueChoice,
        steer: SteerConfig,
    ) -> SetupResult<Self> {
        let info = super::netinfo::interface(interface)?;
        let count = super::netinfo::rx_queue_count(interface).min(MAX_QUEUES);
        let wanted = queues_for(interface, count, choice)?;
        // One thread binds the sockets while this one loads and attaches the program
        // (the attach mostly waits in the kernel): each gets a core of its own.
        let (program, devices) = std::thread::scope(|scope| {
            let info = &info;
            let wanted = &wanted;
            let binds = scope.spawn(move || {
                wanted
                    .iter()
                    .map(|&q| XdpDevice::bind(info, q, wanted.len() as u32))
                    .collect::<SetupResult<Vec<XdpDevice>>>()
            });
            let program = XdpProgram::load_on(info, mode);
            let devices = binds
                .join()
                .unwrap_or_else(|_| bail!("binding the queues panicked"));
            (program, devices)
        });
        let program = program?;
        let mut devices = devices?;
        // Some drivers (virtio_net) change their channels when XDP attaches: bind what
        // the attached interface has, if that differs.
        let now = lock(&program).rx_queues;
        if now != count {
            let wanted = queues_for(interface, now, choice)?;
            devices.retain(|d| wanted.contains(&d.queue));
            for &q in &wanted {
                if !devices.iter().any(|d| d.queue == q) {
                    devices.push(XdpDevice::bind(&info, q, wanted.len() as u32)?);
                }
            }
        }
        let queues = XdpQueues::register(&program, devices)?;
        lock(&program).enable(steer)?;
        tracing::debug!(queues = ?queues.queues(), "AF_XDP sockets bound, steering on");
        Ok(queues)
    }

    /// One socket per queue in `queues` for an already loaded program.
    pub fn bind(program: &SharedProgram, queues: &[u32]) -> SetupResult<Self> {
        let info = super::netinfo::interface(&lock(program).interface)?;
        let devices = queues
            .iter()
            .map(|&q| XdpDevice::bind(&info, q, queues.len() as u32))
            .collect::<SetupResult<Vec<_>>>()?;
        XdpQueues::register(program, devices)
    }

    /// Puts each socket in the program's XSKMAP slot of its queue.
    fn register(program: &SharedProgram, devices: Vec<XdpDevice>) -> SetupResult<Self> {
        if devices.is_empty() {
            bail!("no RX queue to bind");
        }
        for device in &devices {
            lock(program).register(device.queue, device.rx.fd().as_raw_fd())?;
        }
        let pollfds = devices
            .iter()
            .map(|d| libc::pollfd {
                fd: d.rx.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Ok(XdpQueues {
            devices,
            program: program.clone(),
            report_program_counters: true,
            pollfds,
            owner: NEXT_OWNER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    fn program(&self) -> std::sync::MutexGuard<'_, XdpProgram> {
        lock(&self.program)
    }

    /// `native` or `skb`.
    pub fn attached_mode(&self) -> &'static str {
        self.program().attached_mode
    }

    /// The program's steering counters, summed over CPUs.
    pub fn steer_counters(&self) -> SteerCounters {
        self.program().steer_counters()
    }

    /// The queues with a socket, in order.
    pub fn queues(&self) -> Vec<u32> {
        self.devices.iter().map(|d| d.queue).collect()
    }

    /// RX queues of the interface (with a socket or not).
    pub fn interface_queues(&self) -> u32 {
        self.program().rx_queues
    }

    /// The listening ports of this set of queues; see [`XdpProgram::set_listen_ports`].
    pub fn set_listen_ports(&self, ports: &[u16]) -> SetupResult<()> {
        self.program().set_listen_ports(self.owner, ports)
    }

    /// Packets for the stack dropped on queues without a socket: (queue, count).
    pub fn no_socket_by_queue(&self) -> Vec<(u32, u64)> {
        if !self.report_program_counters {
            return Vec::new();
        }
        self.program().no_socket_by_queue()
    }

    /// Sleeps in poll(2) until a frame arrives on any queue's RX ring or `timeout`
    /// passes: what an idle poll loop does instead of spinning. The kernel wakes a copy-mode
    /// socket from the softirq that puts a frame in its RX ring. Returns at once while
    /// frames wait for room in a ring (the fill ring or the TX ring) or for the kernel
    /// to send them, which only the poll loop moves on. Returns whether a socket has
    /// frames to read or to move.
    pub fn wait_for_frames(&mut self, timeout: std::time::Duration) -> bool {
        if self
            .devices
            .iter()
            .any(|d| !d.awaiting_fill.is_empty() || !d.tx_queued.is_empty() || d.in_tx_ring > 0)
        {
            return true;
        }
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `pollfds` is an initialised array of `len()` pollfd structs that the
        // kernel may write `revents` of; `ts` lives across the call; no signal mask.
        let ready = unsafe {
            libc::ppoll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        ready > 0
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
    pub fn socket_stats(&self) -> (u64, u64, u64) {
        self.devices
            .iter()
            .filter_map(XdpDevice::socket_stats)
            .fold((0, 0, 0), |a, x| {
                (
                    a.0 + x.rx_dropped(),
                    a.1 + x.rx_ring_full(),
                    a.2 + x.rx_fill_ring_empty_descs(),
                )
            })
    }
}

impl Drop for XdpQueues {
    /// Closing an AF_XDP socket and detaching XDP each wait for an RCU grace period in
    /// the kernel (several ms each). Done side by side they cost one, which is most of
    /// the exit time of a short fetch. The program is detached here only when no other
    /// `XdpQueues` shares it (serve's other stacks may still be draining).
    fn drop(&mut self) {
        let program = &self.program;
        let last_user = std::sync::Arc::strong_count(program) == 1;
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
        self.devices.iter_mut().map(|d| d.receive(handle)).sum()
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        self.devices[0].transmit(build)
    }

    fn flush(&mut self) {
        self.devices[0].flush();
    }

    fn mac(&self) -> MacAddr {
        self.devices[0].mac
    }

    fn mtu(&self) -> usize {
        self.devices[0].mtu
    }
}

/// Loads the XDP object without parsing the kernel's BTF. The program needs no CO-RE
/// relocation, but aya's `EbpfLoader::new()` always parses /sys/kernel/btf/vmlinux
/// (megabytes; 20 to 30 ms, most of a small fetch's start-up). So the loader is made on
/// a thread of its own whose root directory is /proc, where that path does not exist;
/// the thread ends there and nothing else sees the change. If that fails, the loader
/// parses the file as usual.
fn load_object_without_kernel_btf() -> SetupResult<aya::Ebpf> {
    let mut loader = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let hidden = hide_kernel_btf_from_this_thread();
                tracing::debug!(hidden, "kernel BTF hidden from the loader");
                aya::EbpfLoader::new()
            })
            .join()
            .map_err(|_| setup_error!("the XDP loader thread panicked"))
    })?;
    loader
        .btf(None)
        .load(XDP_OBJECT)
        .context("parsing the XDP object")
}

/// Gives the calling thread a root directory without /sys/kernel/btf/vmlinux. Other
/// threads and processes see no change.
fn hide_kernel_btf_from_this_thread() -> bool {
    // SAFETY: unshare(CLONE_FS) gives the calling thread its own copy of the root and
    // working directories; chroot then changes only that copy. Both take C strings
    // that outlive the calls.
    unsafe {
        libc::unshare(libc::CLONE_FS) == 0
            && libc::chroot(c"/proc".as_ptr()) == 0
            && libc::chdir(c"/".as_ptr()) == 0
    }
}

/// The program's lock; a panic in another queue's thread must not wedge this one.
fn lock(program: &SharedProgram) -> std::sync::MutexGuard<'_, XdpProgram> {
    program
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
