//! Sockets on the kernel-bypass stack, shaped like [`std::net`] (and, with the `tokio`
//! feature, like `tokio::net`).
//!
//! [`Stack::builder`] attaches the XDP program to an interface, opens the AF_XDP
//! socket, and starts the poll loop on a thread of its own (pinned to a CPU if asked).
//! [`TcpStream`] and [`TcpListener`] are handles to connections and listeners of that
//! loop.
//!
//! # How the handles talk to the poll loop
//!
//! The poll loop owns the device and the sans-IO [`crate::stack::Stack`]; nothing else
//! touches them. Each connection has a small shared state: a receive buffer, a send
//! buffer, flags (connected, end of stream, error, shut down) and the waiters (a
//! condition variable for blocking handles, wakers for async ones), behind one mutex.
//!
//! - The loop takes that mutex once per turn for a connection that has news, never per
//!   packet: it moves the whole batch of bytes received since the last turn into the
//!   receive buffer, takes as much of the send buffer as the TCP send buffer holds,
//!   updates the flags and wakes the waiters.
//! - A handle takes the mutex once per `read` or `write` call. When it makes a change
//!   the loop must act on (bytes to send, room made in a full receive buffer, a
//!   shutdown), it sends a wake command on a channel, at most one in flight per
//!   connection (an atomic flag). Opening connections and listeners also goes through
//!   that channel.
//!
//! So a busy connection costs two short, uncontended lock operations per turn (one per
//! side), whatever the number of packets, and an idle one costs nothing.
mod config;
mod driver;
pub mod errno;
pub mod exec_env;
mod inline;
mod listener;
mod local;
mod moves;
mod readiness;
mod reserve;
pub mod runtime;
pub mod setup;
mod shard;
mod shared;
mod stream;
pub mod switch;
#[cfg(feature = "tokio")]
pub mod tokio;
pub mod watch;

pub use crate::device::xdp::XdpModeChoice;
pub use crate::stack::AddressMode;
pub use crate::tcp::CongestionKind;
pub use config::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_SPIN, DEFAULT_LINGER, StackConfig};
pub(crate) use driver::learn_route;
pub use listener::{DEFAULT_BACKLOG, Incoming, ListenOptions, TcpListener};
pub use local::{PerQueue, StackLoop};
pub use reserve::{describe_holder, kernel_listener};
pub use stream::TcpStream;

use crate::device::error::{SetupError, SetupResult};
use crate::device::wake::WakeFd;
use runtime::Runtime;
use setup::open_runtime;
use shared::{Command, Conn};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Most bytes buffered between a handle and the stack in each direction, on top of the
/// TCP buffers.
const MAX_HANDLE_BUFFER: usize = 256 * 1024;

/// Builds a running [`Stack`]. Every default is the `userspace` command's default.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let stack = userspace::Stack::builder()
///     .interface("eth0")
///     .cpu(1)
///     .nodelay(true)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct StackBuilder {
    config: StackConfig,
}

impl From<StackConfig> for StackBuilder {
    fn from(config: StackConfig) -> Self {
        StackBuilder { config }
    }
}

impl StackBuilder {
    /// The configuration built so far.
    pub fn config(&self) -> &StackConfig {
        &self.config
    }

    /// The interface to bypass. Default: the interface of the default route.
    pub fn interface(mut self, name: impl Into<String>) -> Self {
        self.config.interface = Some(name.into());
        self
    }

    /// Owned-IP mode: the stack owns `ip`, a second address on the link, and answers
    /// ARP and ping for it. Default: shared-IP mode, with the interface's own address
    /// and only the stack's ports steered to it.
    pub fn ip(mut self, ip: Ipv4Addr) -> Self {
        self.config.ip = Some(ip);
        self
    }

    /// The next-hop router. Default: from the kernel's routing table.
    pub fn gateway(mut self, gateway: Ipv4Addr) -> Self {
        self.config.gateway = Some(gateway);
        self
    }

    /// The first destination the stack will talk to: when no interface is given, the
    /// stack runs on the interface of the kernel's route to `ip` (a specific route, or
    /// one on a host without a default route), and takes that route's source address
    /// and next hop. Default: the interface of the default route. Every destination's
    /// next hop comes from the kernel's route to it whatever this says.
    /// An IPv6 destination chooses by the kernel's IPv6 route.
    pub fn destination(mut self, ip: impl Into<IpAddr>) -> Self {
        match ip.into() {
            IpAddr::V4(v4) => self.config.destination = Some(v4),
            IpAddr::V6(v6) => self.config.destination6 = Some(v6),
        }
        self
    }

    /// Owned-IP mode for IPv6: the stack owns `ip`, checks with duplicate address
    /// detection that no other node has it (RFC 4862 5.4), then answers neighbour
    /// solicitations and ping for it. Default: the interface's own IPv6 address in
    /// shared-IP mode, none in owned-IP mode.
    pub fn ipv6(mut self, ip: Ipv6Addr) -> Self {
        self.config.ipv6 = Some(ip);
        self
    }

    /// Pins the poll loop's thread to this CPU. Default: not pinned.
    pub fn cpu(mut self, cpu: usize) -> Self {
        self.config.cpu = Some(cpu);
        self
    }

    /// Binds only this RX queue. Default: every RX queue of the interface (RSS spreads
    /// flows over them); one queue alone is refused on an interface with several.
    pub fn queue(mut self, queue: u32) -> Self {
        self.config.queue = Some(queue);
        self
    }

    /// Forces the XDP attach mode. Default: skb (generic, with multi-buffer sockets) on a
    /// veth or another device without a bus, native (falling back to skb) elsewhere.
    pub fn xdp_mode(mut self, mode: XdpModeChoice) -> Self {
        self.config.xdp_mode = Some(mode);
        self
    }

    /// Records every frame sent and received to this pcap file.
    pub fn pcap(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.pcap = Some(path.into());
        self
    }

    /// Keeps the open connections' addresses in this file, for a watcher that resets
    /// their peers if the process dies with them open (see
    /// [`crate::device::exit_guard`]; `userspace exec` sets it up).
    pub fn peer_table(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.peer_table = Some(path.into());
        self
    }

    /// Congestion control. Default: CUBIC.
    pub fn congestion(mut self, kind: CongestionKind) -> Self {
        self.config.congestion = kind;
        self
    }

    /// Disables Nagle's algorithm on every connection. Default: Nagle on.
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.config.nodelay = nodelay;
        self
    }

    /// Send and receive buffer per connection, in bytes. Default: 1 MiB.
    pub fn buffer(mut self, bytes: usize) -> Self {
        self.config.buffer = bytes;
        self
    }

    /// Most connections held at once. Default: 100,000.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n;
        self
    }

    /// Half-open connections per listener before SYN cookies. Default: 1024.
    pub fn syn_backlog(mut self, n: usize) -> Self {
        self.config.syn_backlog = n;
        self
    }

    /// How long [`TcpStream::connect`] waits. Default: [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// How long the poll loop spins with nothing received before it sleeps in poll(2)
    /// until a frame, a timer or a call on a handle. Default: 100 µs.
    pub fn idle_spin(mut self, spin: Duration) -> Self {
        self.config.idle_spin = spin;
        self
    }

    /// Keeps the XDP program and the sockets attached this long after the stack
    /// stops, held by a small process (see [`StackConfig::xdp_linger`]: only a program
    /// that can run the holder, the `userspace` command, lingers). Default: `None`.
    pub fn xdp_linger(mut self, linger: Option<Duration>) -> Self {
        self.config.xdp_linger = linger;
        self
    }

    /// Whether the poll loop spins for a while ([`StackBuilder::idle_spin`], 100 µs by
    /// default) after the last frame before it sleeps. Default: `true`, as the
    /// `userspace` command does. Either way an idle loop sleeps in poll(2) and costs no
    /// CPU: a frame, a timer or a call on a handle wakes it. With `false` it sleeps at
    /// once, and the first packet after a pause pays the wake-up (some microseconds).
    pub fn busy_poll(mut self, busy_poll: bool) -> Self {
        self.config.busy_poll = busy_poll;
        self
    }

    /// Goes through the interface's switch instead of attaching (see
    /// [`StackConfig::switch`]). Default: `false`.
    pub fn switch(mut self, switch: bool) -> Self {
        self.config.switch = switch;
        self
    }

    /// When the stack stops, how long connections whose handles were already dropped
    /// may take to deliver what was written to them (FIN acknowledged). Default:
    /// [`DEFAULT_LINGER`].
    pub fn linger(mut self, linger: Duration) -> Self {
        self.config.linger = linger;
        self
    }

    /// Attaches the XDP program, opens the AF_XDP socket and starts the poll loop on a
    /// thread of its own. Needs root (CAP_NET_ADMIN and CAP_BPF). The key for ISNs and
    /// SYN cookies is fresh and random (kept per boot, as Linux keeps its own).
    ///
    /// A failed set-up is an [`io::ErrorKind::Other`] error that carries the typed
    /// [`SetupError`]: `{err:#}` says what failed and every cause, and
    /// `err.get_ref().and_then(|e| e.downcast_ref::<SetupError>())` gives it back.
    pub fn build(self) -> io::Result<Stack> {
        let config = self.config.clone();
        self.start(move || open_runtime(&config, &[]))
    }

    /// `stacks` stacks sharing the interface, for servers: every RX queue gets an AF_XDP
    /// socket, queue q goes to stack q mod `stacks`, and each stack has its own poll
    /// loop pinned to its own CPU (from [`StackBuilder::cpu`] on, else from 0). They
    /// share one XDP program; steering starts once every queue has its socket. Bind the
    /// same port on every stack and accept on all of them. A flow whose segments move
    /// to another stack's queue (veth and virtio queues follow the sender's flow hash)
    /// is handed to the stack that owns it. Clients use [`StackBuilder::build`].
    ///
    /// `stacks` must be at least 1 and at most the interface's RX queue count (an
    /// [`io::ErrorKind::InvalidInput`] error says the limit otherwise), as for
    /// [`StackBuilder::run_per_queue`].
    pub fn build_per_queue(self, stacks: u32) -> io::Result<Vec<Stack>> {
        let (per_queue, mut shards) = setup::PerQueuePlan::new(&self.config, Some(stacks))?;
        let per_queue = Arc::new(per_queue);
        let mut started = Vec::new();
        for index in 0..per_queue.stacks {
            let member = shards.member(index);
            let per_queue = per_queue.clone();
            started.push(self.clone().start(move || {
                per_queue.pin(index);
                let device = per_queue.bind(&member)?;
                per_queue.runtime(device, member)
            })?);
        }
        per_queue.enable().map_err(io_error)?;
        Ok(started)
    }

    /// Starts a poll loop on a new thread around the runtime `open` makes there (that is
    /// where it is pinned); returns once it is up.
    fn start(
        self,
        open: impl FnOnce() -> SetupResult<Runtime> + Send + 'static,
    ) -> io::Result<Stack> {
        self.start_as(open, false)
    }

    /// Like [`StackBuilder::build`], but the poll loop is turned by the threads that
    /// use the stack's sockets, Onload-style: [`Stack::turn`] after a call that gave the
    /// stack work (a write, a read that found nothing) and before waiting, and
    /// [`Stack::park`] before blocking. A background thread (pinned if
    /// [`StackBuilder::cpu`] is set) takes the loop over while no thread has asked for
    /// a turn for a millisecond, or once one parked, so the stack keeps running (ACKs,
    /// retransmits, timers, new connections) while the program sleeps or computes. The
    /// handles work as with [`StackBuilder::build`], blocking ones included.
    pub fn build_inline(self) -> io::Result<Stack> {
        let config = self.config.clone();
        self.start_as(move || open_runtime(&config, &[]), true)
    }

    /// [`StackBuilder::start`]; with `inline`, the new thread is the background thread
    /// of an inline loop (see `net::inline`) instead of the loop's own.
    fn start_as(
        self,
        open: impl FnOnce() -> SetupResult<Runtime> + Send + 'static,
        inline: bool,
    ) -> io::Result<Stack> {
        let (commands, receiver) = mpsc::channel();
        let shutdown = Arc::new(AtomicBool::new(false));
        let loop_shutdown = shutdown.clone();
        let options = self.loop_options();
        let wake = Arc::new(WakeFd::new()?);
        let loop_wake = wake.clone();
        let name = if inline {
            "userspace-bg"
        } else {
            "userspace-poll"
        };
        let (thread, (info, inline)) = spawn_loop(name, move |up| {
            let rt = match open() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = up.send(Err(io_error(e)));
                    return;
                }
            };
            let info = Info::of(&rt);
            let mut driver = driver::Driver::new(rt, receiver, loop_shutdown.clone(), options);
            if !inline {
                if up.send(Ok((info, None))).is_ok() {
                    driver.wake_on(loop_wake).run();
                }
                return;
            }
            driver.start();
            match inline::InlineLoop::new(driver, loop_wake, loop_shutdown) {
                Ok(inline) => {
                    if up.send(Ok((info, Some(inline.clone())))).is_ok() {
                        inline.background();
                    }
                }
                Err(e) => {
                    let _ = up.send(Err(e));
                }
            }
        })?;
        let mut stack = self.handle(commands, shutdown, Some((thread, wake)), info);
        if let Some(inner) = Arc::get_mut(&mut stack.inner) {
            inner.inline = inline;
        }
        Ok(stack)
    }

    fn loop_options(&self) -> driver::LoopOptions {
        driver::LoopOptions {
            cap: self.config.buffer.clamp(1, MAX_HANDLE_BUFFER),
            nodelay: self.config.nodelay,
            busy_poll: self.config.busy_poll,
            linger: self.config.linger,
        }
    }

    /// The handle to a loop that runs on `thread`, or that the application turns.
    fn handle(
        &self,
        commands: Sender<Command>,
        shutdown: Arc<AtomicBool>,
        thread: Option<(JoinHandle<()>, Arc<WakeFd>)>,
        info: Info,
    ) -> Stack {
        let (thread, wake) = thread.unzip();
        let options = self.loop_options();
        Stack {
            inner: Arc::new(Inner {
                commands,
                shutdown,
                thread: Mutex::new(thread),
                wake,
                info,
                cap: options.cap,
                nodelay: options.nodelay,
                connect_timeout: self.config.connect_timeout,
                congestion: self.config.congestion,
                inline: None,
            }),
        }
    }
}

/// Starts `run` on a thread named `name`: it says once through its sender that its loop
/// is up (with what the caller needs) or why not, and this returns then; a thread that
/// failed is joined.
fn spawn_loop<T: Send + 'static>(
    name: &str,
    run: impl FnOnce(mpsc::SyncSender<io::Result<T>>) + Send + 'static,
) -> io::Result<(JoinHandle<()>, T)> {
    let (up_tx, up_rx) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // Woken by a frame, the loop preempts the thread on its CPU at once; busy,
            // it yields to a woken one within 100 us, not at the next tick
            // (docs/PERFORMANCE.md, "The redis tail under exec").
            match crate::device::slice::set_own_slice(crate::device::slice::SHORT_SLICE) {
                Ok(slice) => tracing::debug!(?slice, "the poll loop's scheduler slice"),
                Err(e) => tracing::debug!("no short scheduler slice for the poll loop: {e}"),
            }
            run(up_tx)
        })?;
    let failed = match up_rx.recv() {
        Ok(Ok(up)) => return Ok((thread, up)),
        Ok(Err(e)) => e,
        Err(_) => io::Error::other("the poll loop died while starting"),
    };
    let _ = thread.join();
    Err(failed)
}

/// A setup error as an `io::Error` whose source is the [`SetupError`] itself, so a
/// caller can take it back with `err.get_ref().and_then(|e| e.downcast_ref::<SetupError>())`;
/// its kind is that of the first `io::Error` among the causes (`NetworkUnreachable` for
/// no route to the destination), `{}` shows its sentence, `{:#}` the whole chain.
fn io_error(e: SetupError) -> io::Error {
    e.into()
}

#[derive(Debug)]
struct Info {
    ip: Ipv4Addr,
    ipv6: Option<Ipv6Addr>,
    interface: String,
    mode: AddressMode,
    queues: Vec<u32>,
    xdp_mode: &'static str,
    tx_checksum: &'static str,
    tx_budget: u32,
    /// The local ports the stack picks for its connections.
    port_range: (u16, u16),
}

impl Info {
    fn of(rt: &Runtime) -> Info {
        let xdp = rt.device.xdp();
        Info {
            ip: rt.stack.ip(),
            ipv6: rt.stack.ipv6(),
            interface: rt.iface.clone(),
            mode: rt.stack.config().mode,
            queues: xdp.queues(),
            xdp_mode: xdp.attached_mode(),
            tx_checksum: xdp.tx_checksum().describe(),
            tx_budget: xdp.tx_budget(),
            port_range: rt.stack.config().port_range,
        }
    }
}

struct Inner {
    commands: Sender<Command>,
    shutdown: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Wakes the loop's thread from poll(2) (none for a loop the application turns).
    wake: Option<Arc<WakeFd>>,
    info: Info,
    cap: usize,
    nodelay: bool,
    connect_timeout: Duration,
    /// The congestion control new connections run.
    congestion: CongestionKind,
    /// The loop the program's threads turn ([`StackBuilder::build_inline`]).
    inline: Option<Arc<inline::InlineLoop>>,
}

impl Inner {
    /// Ends the loop's sleep in poll(2), if it sleeps.
    fn notify_loop(&self) {
        if let Some(wake) = &self.wake {
            wake.notify();
        }
    }

    fn stop(&self) {
        // SeqCst against the loop's `sleeping` store and `stopping` load (see WakeFd).
        self.shutdown.store(true, Ordering::SeqCst);
        self.notify_loop();
        if let Some(inline) = &self.inline {
            inline.wake_all();
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port [`Stack::hold_free_port`] picked, held while this lives.
#[derive(Debug, Clone)]
pub struct PortHold(Arc<reserve::PortReservation>);

impl PortHold {
    /// The port.
    pub fn port(&self) -> u16 {
        self.0.port
    }
}

/// A running kernel-bypass stack: the XDP program, the AF_XDP socket and the poll loop
/// on its own thread. Cheap to clone; the loop stops and the XDP program is detached
/// when the last clone and the last socket are dropped, or at [`Stack::shutdown`].
///
/// Not to be confused with [`crate::stack::Stack`], the sans-IO engine the loop runs.
#[derive(Clone)]
pub struct Stack {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("interface", &self.inner.info.interface)
            .field("ip", &self.inner.info.ip)
            .field("mode", &self.inner.info.mode)
            .finish()
    }
}

impl Stack {
    /// A builder with the defaults of the `userspace` command.
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// The stack's IPv4 address (the interface's own in shared-IP mode).
    pub fn ip(&self) -> Ipv4Addr {
        self.inner.info.ip
    }

    /// The stack's IPv6 address, if it has one (the interface's own in shared-IP mode).
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.inner.info.ipv6
    }

    /// The interface the stack bypasses.
    pub fn interface(&self) -> &str {
        &self.inner.info.interface
    }

    /// Shared-IP or owned-IP mode.
    pub fn mode(&self) -> AddressMode {
        self.inner.info.mode
    }

    /// The RX queues of the interface this stack has AF_XDP sockets on.
    pub fn queues(&self) -> &[u32] {
        &self.inner.info.queues
    }

    /// How the XDP program is attached: `"native"` (in the driver) or `"skb"` (generic).
    pub fn xdp_mode(&self) -> &'static str {
        self.inner.info.xdp_mode
    }

    /// How sent segments get their TCP checksum: offloaded through AF_XDP TX metadata,
    /// or computed by the stack (and why).
    pub fn tx_checksum(&self) -> &'static str {
        self.inner.info.tx_checksum
    }

    /// Frames one transmit kick (`sendto(2)`) sends at most.
    pub fn tx_budget(&self) -> u32 {
        self.inner.info.tx_budget
    }

    /// Opens a connection; the same as [`TcpStream::connect`].
    pub fn connect(&self, addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        TcpStream::connect(self, addr)
    }

    /// Listens on a port; the same as [`TcpListener::bind`].
    pub fn bind(&self, addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        TcpListener::bind(self, addr)
    }

    /// A free port picked as the kernel picks one for a bind to port 0 (from its
    /// ephemeral range), held in the kernel until the hold and every listener on the
    /// port are dropped: a [`TcpListener::bind`] to that port while it is held uses it.
    /// Fails with `EADDRINUSE` when no port is free, as the kernel's bind.
    ///
    /// In shared-IP mode the port is one of the stack's own range instead (above the
    /// kernel's ephemeral one), which the XDP program steers to the stack already: a
    /// connection from it (bind(2) to port 0, then connect(2)) needs no steering of its
    /// own, however many there are.
    pub fn hold_free_port(&self) -> io::Result<PortHold> {
        let owned = self.mode() == AddressMode::Owned;
        if !owned {
            return self.hold_free_port_in_range();
        }
        reserve::PortReservation::take(self.ip(), 0, owned, false)?
            .map(PortHold)
            .ok_or_else(|| io::ErrorKind::AddrInUse.into())
    }

    /// A port of the stack's range nobody holds, from a start that moves on each call
    /// (RFC 6056 3.3.3's simple increment, from a per-process offset).
    fn hold_free_port_in_range(&self) -> io::Result<PortHold> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let (lo, hi) = self.inner.info.port_range;
        let span = u32::from(hi.saturating_sub(lo)) + 1;
        let start = std::process::id()
            .wrapping_mul(2_654_435_761)
            .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
        for i in 0..span {
            let port = lo + (start.wrapping_add(i) % span) as u16;
            match reserve::PortReservation::take_unused(self.ip(), port) {
                Ok(hold) => return Ok(PortHold(hold)),
                Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => continue,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::ErrorKind::AddrInUse.into())
    }

    /// Stops the poll loop: listeners stop, connections whose handles were dropped get
    /// up to the linger time ([`StackBuilder::linger`]) to deliver what was written to
    /// them, the connections still open are closed (reset if they had data left), their
    /// handles then fail with [`io::ErrorKind::NotConnected`], and the XDP program is
    /// detached. Returns when the loop's thread has ended. Dropping the last handle
    /// does the same.
    pub fn shutdown(&self) {
        self.inner.stop();
    }

    /// Whether the program's threads turn the loop ([`StackBuilder::build_inline`]).
    pub fn is_inline(&self) -> bool {
        self.inner.inline.is_some()
    }

    /// An inline stack ([`StackBuilder::build_inline`]): one turn of its poll loop on
    /// this thread, unless another thread is turning it (it then turns again for
    /// this one before letting go; this one never waits). `Some(busy)` if this thread
    /// turned it, `None` if not (taken, stopped, or not an inline stack). Never call it
    /// from a signal handler: the turn takes the connections' locks and may allocate.
    pub fn turn(&self) -> Option<bool> {
        self.inner.inline.as_ref()?.turn()
    }

    /// An inline stack: this thread is about to block (in epoll_wait, poll, a blocking
    /// read): the background thread takes the loop over now, not a millisecond later.
    pub fn park(&self) {
        if let Some(inline) = &self.inner.inline {
            inline.park();
        }
    }

    /// An inline stack: the device's sockets (AF_XDP, readable when a frame comes) a
    /// thread about to block in a wait of its own may add to what it waits for, after
    /// [`Stack::watch`] said how long. Empty if it may not (through the interface's
    /// switch, or not an inline stack).
    pub fn watch_fds(&self) -> &[std::os::fd::RawFd] {
        self.inner
            .inline
            .as_ref()
            .map_or(&[], |inline| inline.watch_fds())
    }

    /// An inline stack, right after a turn: this thread will wait on
    /// [`Stack::watch_fds`] itself (and turn the loop when it wakes), at most the
    /// returned time, after which the stack needs a turn (its next timer) whatever
    /// comes; the background thread stays away meanwhile. `None`: turn again first
    /// (frames or output wait, another thread holds the loop, or no such sockets).
    pub fn watch(&self) -> Option<Duration> {
        self.inner.inline.as_ref()?.watch()
    }

    /// After a wait that [`Stack::watch`] allowed: whatever ended it, the background
    /// thread may take the loop over again if this thread does not turn it soon.
    pub fn unwatch(&self) {
        if let Some(inline) = &self.inner.inline {
            inline.unwatch();
        }
    }

    /// The congestion control new connections run (`TCP_CONGESTION` of a socket not
    /// yet connected).
    pub fn congestion(&self) -> CongestionKind {
        self.inner.congestion
    }

    /// A snapshot of the stack's counters (frames, drops, ARP, listeners, connections).
    pub fn stats(&self) -> io::Result<crate::stack::StackStats> {
        self.with_runtime(|rt| rt.stack.stats.clone())
    }

    /// Every counter of the stack, the XDP program, the AF_XDP sockets and their UMEM
    /// frames, as text, one `name value` line each under a `* section:` heading (what
    /// the `userspace` command's `--stats` prints).
    pub fn report(&self) -> io::Result<String> {
        self.with_runtime(|rt| setup::stats_report(rt))
    }

    /// One sentence per way the stack has been losing packets its user needed, each
    /// saying what to do about it: packets that arrived on an RX queue without an
    /// AF_XDP socket, frames too large for a UMEM frame, segments dropped for bad
    /// checksums. Empty when nothing was lost.
    pub fn diagnose(&self) -> io::Result<Vec<String>> {
        self.with_runtime(|rt| setup::diagnose(rt))
    }

    /// Runs `f` with the poll loop's runtime, on its thread between two turns, and
    /// returns its result.
    fn with_runtime<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Runtime) -> R + Send + 'static,
    ) -> io::Result<R> {
        self.with_runtime_then(f, || {})
    }

    /// As [`Stack::with_runtime`], running `then` once `f` is queued: a caller that
    /// may turn an inline loop turns it there, so `f` runs without waiting for the
    /// background thread.
    pub(crate) fn with_runtime_then<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Runtime) -> R + Send + 'static,
        then: impl FnOnce(),
    ) -> io::Result<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Command::Run(Box::new(move |rt| {
            let _ = tx.send(f(rt));
        })));
        then();
        rx.recv().map_err(|_| shared::Failure::Stopped.io())
    }

    fn send(&self, command: Command) {
        if let Err(mpsc::SendError(command)) = self.inner.commands.send(command) {
            driver::stopped(command);
        }
        self.inner.notify_loop();
    }

    /// Tells the loop to look at `conn` on its next turn (one message in flight).
    fn wake(&self, conn: &Arc<Conn>) {
        if !conn.queued.swap(true, Ordering::AcqRel) {
            self.send(Command::Wake(conn.clone()));
        }
    }

    /// `addr`'s addresses, both families, in the resolver's order.
    fn resolve(addr: impl ToSocketAddrs) -> io::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no address to use",
            ));
        }
        Ok(addrs)
    }

    /// The address and port to listen on (port 0: any free one), if `addr` is one of
    /// ours: the stack's IPv4 or IPv6 address, 0.0.0.0 or `[::]`. A listener takes both
    /// families on its port, as a Linux socket bound to `[::]` with IPV6_V6ONLY off.
    fn listen_addr(&self, addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
        Self::resolve(addr)?
            .into_iter()
            .find(|a| match a.ip() {
                IpAddr::V4(ip) => ip.is_unspecified() || ip == self.ip(),
                IpAddr::V6(ip) => ip.is_unspecified() || Some(ip) == self.ipv6(),
            })
            .ok_or_else(|| shared::Failure::BadAddress.io())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setup_error_reaches_the_caller_as_the_io_errors_source() {
        let cause = io::Error::from(io::ErrorKind::PermissionDenied);
        let err = io_error(SetupError::new("attaching XDP to eth0", cause));
        // The kind of the first io::Error among the causes.
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let setup = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<SetupError>())
            .expect("the SetupError itself");
        assert!(setup.has_io_kind(io::ErrorKind::PermissionDenied));
        assert_eq!(err.to_string(), "attaching XDP to eth0");
        assert_eq!(
            format!("{err:#}"),
            "attaching XDP to eth0: permission denied"
        );
    }

    #[test]
    fn a_failed_build_gives_the_typed_setup_error() {
        let err = Stack::builder()
            .interface("no-such-if0")
            .build()
            .expect_err("no such interface");
        let setup = err.get_ref().and_then(|e| e.downcast_ref::<SetupError>());
        assert!(setup.is_some(), "{err:?}");
        assert!(format!("{err:#}").contains("no-such-if0"), "{err:#}");
    }

    #[test]
    fn a_fresh_key_per_stack_config() {
        let a = crate::stack::StackConfig::new([2; 6], std::net::Ipv4Addr::LOCALHOST, 8);
        let b = crate::stack::StackConfig::new([2; 6], std::net::Ipv4Addr::LOCALHOST, 8);
        assert_ne!(a.isn_key, b.isn_key);
        assert_ne!(a.isn_key, [0x5a; 16]);
    }
}

#[cfg(test)]
mod handle_tests {
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_move_between_threads_and_tasks() {
        send_sync::<super::Stack>();
        send_sync::<super::TcpStream>();
        send_sync::<super::TcpListener>();
        #[cfg(feature = "tokio")]
        {
            send_sync::<super::tokio::TcpStream>();
            send_sync::<super::tokio::TcpListener>();
        }
    }
}
