//! The poll loop around the sans-IO stack, on the caller's thread: the clock, the
//! device, idling and CPU pinning.
//!
//! [`crate::Stack`] runs this loop on a thread of its own and talks to it through
//! handles. A program that drives the sans-IO [`crate::stack::Stack`] itself (the
//! `userspace` command's `run` and `bench`) opens a [`Runtime`] with
//! [`super::setup::open_runtime`] and calls [`Runtime::turn`] and [`Runtime::wait`].
use super::shard::{ShardLink, ShardMember};
use crate::device::Device;
use crate::device::error::{SetupResult, bail, setup_error};
use crate::device::exit_guard::PeerTable;
use crate::device::pcap::PcapDevice;
use crate::device::xdp::XdpQueues;
use crate::stack::Stack;
use crate::tcp::Instant;
use crate::wire::MacAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The AF_XDP sockets of the stack's queues, optionally recording to a pcap file.
pub enum NetDevice {
    /// The sockets alone.
    Plain(XdpQueues),
    /// The sockets, every frame recorded to a pcap file.
    Pcap(PcapDevice<XdpQueues>),
}

impl NetDevice {
    /// The AF_XDP sockets (and the XDP program's counters through them).
    pub fn xdp(&self) -> &XdpQueues {
        match self {
            NetDevice::Plain(d) => d,
            NetDevice::Pcap(d) => d.inner(),
        }
    }
    fn xdp_mut(&mut self) -> &mut XdpQueues {
        match self {
            NetDevice::Plain(d) => d,
            NetDevice::Pcap(d) => d.inner_mut(),
        }
    }
    fn as_device(&mut self) -> &mut dyn Device {
        match self {
            NetDevice::Plain(d) => d,
            NetDevice::Pcap(d) => d,
        }
    }
}

impl Device for NetDevice {
    fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize {
        self.as_device().receive(handle)
    }
    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        self.as_device().transmit(build)
    }
    fn flush(&mut self) {
        self.as_device().flush()
    }
    fn mac(&self) -> MacAddr {
        self.xdp().mac()
    }
    fn mtu(&self) -> usize {
        self.xdp().mtu()
    }
    fn tx_checksum_offload(&self) -> bool {
        self.xdp().tx_checksum_offload()
    }
}

/// Why [`Runtime::wait`] returned without a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed.
    TimedOut,
    /// [`Runtime::stop`] was set (by a signal handler, say).
    Interrupted,
}

/// A sans-IO stack, its device and the clock: one poll loop, turned by its owner.
pub struct Runtime {
    /// The sans-IO stack the loop runs.
    pub stack: Stack,
    /// Its AF_XDP sockets.
    pub device: NetDevice,
    origin: std::time::Instant,
    /// When set, [`Runtime::wait`] returns [`WaitError::Interrupted`] (a program hands
    /// it to its signal handlers).
    pub stop: Arc<AtomicBool>,
    /// The interface the stack bypasses.
    pub iface: String,
    /// The interface's own IPv4 address (the stack's address in shared-IP mode).
    pub iface_ip: std::net::Ipv4Addr,
    idle_turns: u32,
    idle_since: Option<Instant>,
    last_now: Instant,
    boot_offset_us: u64,
    /// Set when this stack is one of several sharing an interface.
    pub(crate) shard: Option<ShardLink>,
    /// How long the loop spins with nothing received before it sleeps in poll(2).
    pub busy_poll: std::time::Duration,
    /// The exit guard's table of open connections, and the stack's count of opened
    /// plus closed connections when it was last written, and when it may be next.
    peer_table: Option<PeerTable>,
    peers_published: u64,
    next_peer_publish: Instant,
    next_peer_rescan: Instant,
    /// When the spinning loop last yielded the CPU.
    last_yield: Instant,
    /// The next sleep's longest length: doubles while nothing comes, up to `MAX_SLEEP`.
    sleep_for: std::time::Duration,
}

/// Time since boot when the process started, from /proc/uptime (10 ms resolution).
fn uptime_us() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |secs| (secs * 1e6) as u64)
}

/// How often a spinning loop yields the CPU to threads queued on its core.
const YIELD_EVERY: std::time::Duration = std::time::Duration::from_micros(20);
/// An idle loop first sleeps this long at most, then twice as long each time nothing
/// came, up to `MAX_SLEEP`. Short first sleeps keep a condition the stack cannot see
/// (the kernel's neighbour table, polled while resolving the next hop) prompt.
const MIN_SLEEP: std::time::Duration = std::time::Duration::from_millis(1);
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_millis(100);
/// How often a busy loop writes the exit guard's table when connections come and go.
const PEER_PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(10);
/// How often an idle loop looks for connections that ended in place (TIME-WAIT).
const PEER_RESCAN_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl Drop for Runtime {
    /// A stack that stops (not a process killed) leaves nothing for the guard to reset.
    fn drop(&mut self) {
        if let Some(table) = &mut self.peer_table {
            let _ = table.clear();
        }
    }
}

impl Runtime {
    /// A loop around `stack` and `device`, its clock started now.
    pub fn new(stack: Stack, device: NetDevice) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        Runtime {
            stack,
            device,
            origin: std::time::Instant::now(),
            stop,
            iface: String::new(),
            iface_ip: std::net::Ipv4Addr::UNSPECIFIED,
            idle_turns: 0,
            idle_since: None,
            last_now: Instant::ZERO,
            boot_offset_us: uptime_us(),
            shard: None,
            busy_poll: super::config::DEFAULT_IDLE_SPIN,
            sleep_for: MIN_SLEEP,
            last_yield: Instant::ZERO,
            peer_table: None,
            peers_published: 0,
            next_peer_publish: Instant::ZERO,
            next_peer_rescan: Instant::ZERO,
        }
    }

    /// Keeps the open connections' addresses in the exit guard's table at `path`
    /// (see [`crate::device::exit_guard`]). A table another live process holds, or one
    /// that cannot be written, is said and left alone: the stack runs without it.
    pub(crate) fn keep_peer_table(&mut self, path: &std::path::Path) {
        match PeerTable::claim(path) {
            Ok(table) => self.peer_table = Some(table),
            Err(e) => tracing::warn!("no exit guard: {e}"),
        }
    }

    /// Writes the table again: when connections came or went (busy: at most every
    /// `PEER_PUBLISH_EVERY`; about to sleep, `idle`: at once, so the table is current
    /// whenever the process could be killed idle), and every `PEER_RESCAN_EVERY` for
    /// those that ended without leaving (TIME-WAIT; an unchanged list is not written).
    fn publish_peers(&mut self, idle: bool) {
        let Some(table) = &mut self.peer_table else {
            return;
        };
        let stats = &self.stack.stats;
        let changes = stats.connections_opened + stats.connections_closed;
        let now = self.last_now;
        let go = match idle {
            false => {
                (changes != self.peers_published && now >= self.next_peer_publish)
                    || now >= self.next_peer_rescan
            }
            true => changes != self.peers_published || now >= self.next_peer_rescan,
        };
        if !go {
            return;
        }
        self.peers_published = changes;
        self.next_peer_publish = now + PEER_PUBLISH_EVERY;
        self.next_peer_rescan = now + PEER_RESCAN_EVERY;
        if let Err(e) = table.publish(self.stack.connection_addresses()) {
            tracing::warn!("exit guard's table: {e}; going on without it");
            self.peer_table = None;
        }
    }

    /// Microseconds since boot: one time base for every process, so ISNs (RFC 6528's
    /// clock) and TCP timestamps to the same peer keep growing from one run to the next.
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.boot_offset_us + self.origin.elapsed().as_micros() as u64)
    }

    /// Makes this loop `member` of a group of stacks sharing the interface: strays
    /// handed over, the directory shared, and the program's interface-wide counters
    /// reported by stack 0 only.
    pub(crate) fn join_shards(&mut self, member: ShardMember) {
        if let NetDevice::Plain(device) = &mut self.device {
            device.report_program_counters = member.index == 0;
        }
        self.stack.join_shards(member.directory, member.index);
        self.shard = Some(member.link);
    }

    /// Whether [`Runtime::stop`] is set.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The time the current turn started: the clock is read once per turn (reading it is
    /// a vDSO call that showed up as a quarter of the profile when done more often).
    pub fn turn_time(&self) -> Instant {
        self.last_now
    }

    /// One turn of the poll loop.
    pub fn turn(&mut self) -> usize {
        let now = self.now();
        self.last_now = now;
        let received = self.stack.poll(now, &mut self.device);
        if let Some(link) = &self.shard {
            link.exchange(&mut self.stack, now);
        }
        self.publish_peers(false);
        self.idle_turns = if received == 0 {
            self.idle_turns.saturating_add(1)
        } else {
            0
        };
        received
    }

    /// Makes the idle loop's sleep in poll(2) end when `fd` becomes readable too (the
    /// library's handles wake their loop through an eventfd).
    pub fn also_wake_on(&mut self, fd: std::os::fd::RawFd) {
        self.device.xdp_mut().also_wake_on(fd);
    }

    /// Called between turns: spins while traffic flows and for `busy_poll` after the
    /// last frame (a reply that comes within the budget costs no wakeup); after that it
    /// sleeps in poll(2) on the sockets until a frame comes or the stack's next timer
    /// (`Stack::poll_at`) is due, so an idle stack costs no CPU.
    pub fn idle(&mut self) {
        self.idle_until(None);
    }

    fn idle_until(&mut self, deadline: Option<Instant>) {
        if self.idle_turns == 0 {
            self.idle_since = None;
            self.sleep_for = MIN_SLEEP;
            return;
        }
        let since = *self.idle_since.get_or_insert(self.last_now);
        if self.last_now.saturating_since(since) < self.busy_poll {
            // A thread woken by our own softirq work (the peer reading what we sent, or
            // ksoftirqd) is often queued on this very core: let it run now and then, or
            // the reply we spin for waits until the scheduler preempts us.
            if self.last_now.saturating_since(self.last_yield) >= YIELD_EVERY {
                self.last_yield = self.last_now;
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            return;
        }
        if !self.ready_to_sleep() {
            return;
        }
        let now = self.last_now;
        let wake = self.wake_at(deadline);
        if wake > now {
            self.device
                .xdp_mut()
                .wait_for_frames(wake.saturating_since(now));
        }
        self.sleep_for = (self.sleep_for * 2).min(MAX_SLEEP);
    }

    /// Before an idle loop sleeps: the application's calls since the last turn (a read
    /// that opens the window, a write) may have given the stack something to send,
    /// which goes first (false: it turned, look again); then the exit guard's table is
    /// brought up to date.
    fn ready_to_sleep(&mut self) -> bool {
        if self.stack.has_pending_output() && (self.turn() > 0 || self.stack.has_pending_output()) {
            return false;
        }
        self.publish_peers(true);
        true
    }

    /// When an idle loop's sleep ends at the latest: its current sleep length, the
    /// stack's next timer, `deadline`, and for sharded stacks, which hand each other
    /// frames through channels that poll(2) does not watch, a short nap.
    fn wake_at(&self, deadline: Option<Instant>) -> Instant {
        let now = self.last_now;
        let nap = self.shard.as_ref().map(|_| now + MIN_SLEEP);
        [self.stack.poll_at(), deadline, nap]
            .into_iter()
            .flatten()
            .fold(now + self.sleep_for, |wake, t| wake.min(t))
    }

    /// For a loop that sleeps without holding the runtime (other threads may turn it
    /// meanwhile), after a turn without work: how long it may sleep on
    /// [`XdpQueues::sleep_fds`](crate::device::xdp::XdpQueues::sleep_fds), until the
    /// stack's next timer at most, or `None` when it must turn again (frames came,
    /// output or frames wait). After `Some`, call [`Runtime::woke`] once awake.
    pub fn sleep_plan(&mut self) -> Option<std::time::Duration> {
        if self.idle_turns == 0 {
            self.sleep_for = MIN_SLEEP;
            return None;
        }
        if !self.ready_to_sleep() {
            return None;
        }
        let now = self.last_now;
        let wake = self.wake_at(None);
        if wake <= now || !self.device.xdp_mut().ready_to_sleep() {
            return None;
        }
        self.sleep_for = (self.sleep_for * 2).min(MAX_SLEEP);
        Some(wake.saturating_since(now))
    }

    /// For a thread that waits on the device's sockets itself (see
    /// `XdpQueues::watch_fds`) right after a turn: how long until the stack needs a turn
    /// whatever comes (its next timer, at most `MAX_SLEEP`, or `also`), or `None` when
    /// it needs one now (output or frames wait).
    pub fn watch_plan(&mut self, also: Option<Instant>) -> Option<std::time::Duration> {
        if self.stack.has_pending_output() || self.device.xdp().frames_to_move() {
            return None;
        }
        self.publish_peers(false);
        let now = self.now();
        let mut wake = now + MAX_SLEEP;
        for t in [self.stack.poll_at(), also].into_iter().flatten() {
            wake = wake.min(t);
        }
        (wake > now).then(|| wake.saturating_since(now))
    }

    /// After a sleep that [`Runtime::sleep_plan`] allowed.
    pub fn woke(&mut self) {
        self.device.xdp_mut().woke();
    }

    /// Busy-polls until `ready` returns a value, the deadline passes, or a signal arrives.
    pub fn wait<T>(
        &mut self,
        deadline: Option<Instant>,
        mut ready: impl FnMut(&mut Stack, Instant) -> Option<T>,
    ) -> Result<T, WaitError> {
        loop {
            self.turn();
            let now = self.last_now;
            if let Some(v) = ready(&mut self.stack, now) {
                return Ok(v);
            }
            if self.stopped() {
                return Err(WaitError::Interrupted);
            }
            if deadline.is_some_and(|d| now >= d) {
                return Err(WaitError::TimedOut);
            }
            self.idle_until(deadline);
        }
    }
}

/// Pins the calling thread to `cpu` (the poll loop busy-polls one core).
pub fn pin_to_cpu(cpu: usize) -> SetupResult<()> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let core = cores
        .into_iter()
        .find(|c| c.id == cpu)
        .ok_or_else(|| setup_error!("no CPU {cpu} on this machine"))?;
    if !core_affinity::set_for_current(core) {
        bail!("could not pin to CPU {cpu}");
    }
    Ok(())
}
