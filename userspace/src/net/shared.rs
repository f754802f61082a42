//! The state a socket handle shares with the poll loop, and the ways to wait on it.
//!
//! Each connection has one [`Conn`]: a mutex around its buffers and flags, a condition
//! variable for blocking handles and two waker slots for async ones. The poll loop takes
//! the mutex once per turn for a connection that has news (never per packet) and moves
//! whole batches of bytes between the stack and the buffers; a handle takes it once per
//! call. Bytes are handed over whole: the TCP's receive ring is swapped for the handle's
//! drained one ([`RecvBuf`]), and the handle's written ring ([`Ring`]) is chained into
//! the TCP's send buffer when it fits, so no byte is copied between the handle and the
//! TCP.
//! The handle tells the loop about its own news (bytes written, room made, close)
//! with a [`Command::Wake`] on a channel, at most one in flight per connection, and
//! about option changes with a command of their own.
use crate::stack::{ConnId, StackError};
use crate::tcp::TcpError;
use crate::tcp::reassembly::RecvBuf;
use crate::tcp::send_buffer::Ring;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// What a handle asks of the poll loop.
pub(crate) enum Command {
    /// Open a connection to `remote`; give up after `timeout`.
    Connect {
        conn: Arc<Conn>,
        remote: SocketAddr,
        timeout: Duration,
        /// The port the application bound first, if any: the connection's own.
        from_port: Option<u16>,
    },
    /// Listen on the listener's port.
    Listen(Arc<Listener>),
    /// Stop listening; connections not yet accepted are reset.
    Unlisten(Arc<Listener>),
    /// The handle changed the connection (wrote, read from a full buffer, shut down,
    /// dropped): look at it on this turn.
    Wake(Arc<Conn>),
    /// Apply a socket option to the connection.
    Set(Arc<Conn>, ConnOption),
    /// Run this on the loop's thread, between two turns (counters, diagnostics).
    Run(Box<dyn FnOnce(&mut super::runtime::Runtime) + Send>),
    /// Take the connection out of the stack whole, for another process
    /// (`TcpStream::export`); the answer is the bytes to import there.
    Export(Arc<Conn>, SyncSender<io::Result<Vec<u8>>>),
    /// Take in a connection another stack exported (`TcpStream::import`).
    Import(Vec<u8>, SyncSender<io::Result<Arc<Conn>>>),
}

/// A socket option a handle changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnOption {
    /// Nagle off (`true`) or on.
    Nodelay(bool),
    /// Keep-alive probes after this much idle time, and between them (`None`: off).
    Keepalive(Option<Duration>),
}

/// A handle reading from bytes the loop waits to hear about tells it once it has read
/// this many (or all of them), so that their room in the window is given back.
const RETURN_STEP: usize = 64 * 1024;

/// Why an operation failed, kept until the handle asks (an `io::Error` is not `Copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Tcp(TcpError),
    Stack(StackError),
    /// The poll loop is gone (the stack was shut down).
    Stopped,
    /// The connection was exported to another process's stack.
    Moved,
    /// More listening ports than the XDP program can steer, or the map refused.
    Steering,
    /// Port 0, or an address that is not the stack's.
    BadAddress,
    /// The connect's own time limit passed (not TCP giving up on its SYNs).
    ConnectTimeout,
    /// The next hop towards the peer never answered ARP (or NDP, for IPv6).
    NoArpReply(std::net::IpAddr),
    /// The kernel has no route to the peer out of the stack's interface.
    NoRoute(crate::device::netinfo::RouteRefusal),
}

use crate::device::netinfo::RouteRefusal;

impl Failure {
    pub(crate) fn io(self) -> io::Error {
        use io::ErrorKind as K;
        match self {
            // The kernel's errno where it has one for exactly this (std's kinds follow:
            // ConnectionRefused, ConnectionReset, TimedOut, NotConnected, AddrInUse...),
            // so code that matches `raw_os_error()` works. An ICMP unreachable keeps its
            // own words: the stack does not tell its codes apart as the kernel does.
            Failure::Tcp(e @ (TcpError::Unreachable | TcpError::HostUnreachable)) => {
                io::Error::new(K::HostUnreachable, e)
            }
            Failure::Tcp(e) => io::Error::from_raw_os_error(super::errno::tcp_errno(e)),
            Failure::Stack(e) => io::Error::from_raw_os_error(super::errno::stack_errno(e)),
            Failure::Stopped => io::Error::new(K::NotConnected, "the stack has stopped"),
            Failure::Moved => {
                io::Error::new(K::NotConnected, "the connection moved to another process")
            }
            Failure::Steering => io::Error::other(format!(
                "cannot steer another listening port (at most {})",
                xdp_ebpf::MAX_LISTEN_PORTS
            )),
            // bind(2) to an address that is not the host's.
            Failure::BadAddress => io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
            Failure::ConnectTimeout => io::Error::new(K::TimedOut, "connect timed out"),
            Failure::NoArpReply(hop) => io::Error::new(
                K::HostUnreachable,
                if hop.is_ipv6() {
                    format!(
                        "resolving the next hop: no neighbour advertisement from next hop {hop}"
                    )
                } else {
                    format!("resolving the next hop: no ARP reply from next hop {hop}")
                },
            ),
            Failure::NoRoute(RouteRefusal::Errno(errno)) => io::Error::from_raw_os_error(errno),
            Failure::NoRoute(other) => io::Error::new(K::NetworkUnreachable, other.to_string()),
        }
    }
}

/// Who waits on a piece of shared state: blocked threads and async tasks.
#[derive(Default)]
pub(crate) struct Waiters {
    blocked: u32,
    wakers: [Option<Waker>; 2],
    /// Told the readiness after every change (see `net::watch`).
    pub(crate) watcher: Option<super::readiness::Watcher>,
}

/// Waker slots: a reader and a writer may wait on one connection at once.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) const READER: usize = 0;
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) const WRITER: usize = 1;

pub(crate) trait HasWaiters: super::readiness::Ready {
    fn waiters(&mut self) -> &mut Waiters;
}

/// What runs around the sleeps of blocking handles (see [`set_wait_hooks`]).
static WAIT_HOOKS: OnceLock<WaitHooks> = OnceLock::new();

/// A program's hooks around each sleep of a blocking call (the preload library lets
/// the program's signal handlers run there only, never while a lock is held).
pub struct WaitHooks {
    /// Runs the sleep it is given (the condition variable's wait, which lets the
    /// state's lock go), or returns without it: then `unlocked` runs, the lock let go,
    /// and the call looks again before it sleeps. The second function ends the sleep
    /// early (a spurious wake-up; it only wakes a futex, so a signal handler may call
    /// it).
    pub sleep: fn(&mut dyn FnMut(), &dyn Fn()),
    /// Runs with no lock of the call held.
    pub unlocked: fn(),
}

/// Sets the hooks of every blocking call, once per process (a later call changes
/// nothing).
pub fn set_wait_hooks(hooks: WaitHooks) {
    let _ = WAIT_HOOKS.set(hooks);
}

/// State behind a mutex that handles can wait on, blocking or async.
pub(crate) struct Waitable<S> {
    state: Mutex<S>,
    cond: Condvar,
}

impl<S: HasWaiters> Waitable<S> {
    fn new(state: S) -> Self {
        Waitable {
            state: Mutex::new(state),
            cond: Condvar::new(),
        }
    }

    /// The state; a panic on another thread does not wedge the connection.
    pub(crate) fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until `check` gives a value, or `timeout` passes (then `None`).
    pub(crate) fn block_on<T>(
        &self,
        timeout: Option<Duration>,
        mut check: impl FnMut(&mut S) -> Option<T>,
    ) -> Option<T> {
        // A timeout past what an Instant holds (SO_RCVTIMEO of i64::MAX s): none.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut st = self.lock();
        loop {
            if let Some(v) = check(&mut st) {
                return Some(v);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return None;
            }
            st.waiters().blocked += 1;
            // Only the sleep itself runs in the hook: `check` (the copy) holds the lock.
            let mut slept = false;
            let mut held = Some(st);
            let mut sleep = || {
                slept = true;
                held = held.take().map(|st| match left {
                    None => self.cond.wait(st).unwrap_or_else(|p| p.into_inner()),
                    Some(left) => {
                        self.cond
                            .wait_timeout(st, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                });
            };
            let hooks = WAIT_HOOKS.get();
            match hooks {
                Some(hooks) => (hooks.sleep)(&mut sleep, &|| self.cond.notify_all()),
                None => sleep(),
            }
            st = held.unwrap_or_else(|| self.lock());
            st.waiters().blocked -= 1;
            if let Some(hooks) = hooks.filter(|_| !slept) {
                // The hook would not sleep now: its turn with the lock let go.
                drop(st);
                (hooks.unlocked)();
                st = self.lock();
            }
        }
    }

    /// `check` now, or `Pending` with the task's waker in `slot`.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        slot: usize,
        check: impl FnOnce(&mut S) -> Option<T>,
    ) -> Poll<T> {
        let mut st = self.lock();
        match check(&mut st) {
            Some(v) => Poll::Ready(v),
            None => {
                let waker = &mut st.waiters().wakers[slot];
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    /// Wakes whoever waits (called with the lock held, after a change).
    pub(crate) fn notify(&self, st: &mut S) {
        if st.waiters().watcher.is_some() {
            let readiness = st.readiness();
            if let Some(watcher) = &st.waiters().watcher {
                watcher(readiness);
            }
        }
        let w = st.waiters();
        if w.blocked > 0 {
            self.cond.notify_all();
        }
        for waker in w.wakers.iter_mut() {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
    }
}

/// Where a connection is, as its handle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Connecting,
    Open,
    Closed,
}

/// One connection's shared state.
pub(crate) struct ConnState {
    pub id: Option<ConnId>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Received in order, handed over by the TCP, not yet read by the application.
    pub rx: RecvBuf,
    /// Bytes read from `rx` since the loop last looked: their room in the TCP's receive
    /// window is free again once the loop gives them back.
    pub rx_read: usize,
    /// Written by the application, not yet taken by the stack's send buffer (which
    /// takes the ring whole when it can).
    pub tx: Ring,
    /// Bound of `tx`.
    pub cap: usize,
    pub phase: Phase,
    pub failure: Option<Failure>,
    /// A read or a write already returned `failure`: as Linux reports a socket's error
    /// once, later writes fail with EPIPE and later reads see the end of the stream.
    pub failure_reported: bool,
    /// The peer's FIN arrived and every byte before it is in `rx`.
    pub read_closed: bool,
    /// The peer's FIN arrived (bytes before it may still be in the stack).
    pub peer_fin: bool,
    /// The application will not read any more (`shutdown(Read)`).
    pub read_shut: bool,
    /// The application will not write any more: FIN once `tx` is empty.
    pub write_shut: bool,
    /// The loop has queued our FIN in the stack.
    pub fin_queued: bool,
    /// The handle is gone: the loop closes and forgets the connection.
    pub dropped: bool,
    /// The loop wants to hear of reads from `rx`: the stack holds more bytes behind
    /// them, or they take much of the window.
    pub rx_stalled: bool,
    /// A zero-copy reader holds `rx` (moved out, an empty one in its place) while its
    /// callback runs: the loop hands nothing over and other readers wait until it is
    /// back. The bytes lie in the connection's own ring, not in the UMEM, so a slow
    /// reader holds back only its own connection's window.
    pub rx_lent: bool,
    /// A reader waited for `rx` to come back.
    rx_wanted: bool,
    /// Nagle off (the loop applies it through [`ConnOption::Nodelay`]).
    pub nodelay: bool,
    /// Keep-alive probes after this much idle time, and between them (`None`: off).
    pub keepalive: Option<Duration>,
    /// The handle asked for a reset: the loop aborts the connection (RST) and forgets it.
    pub abort: bool,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    pub nonblocking: bool,
    waiters: Waiters,
}

impl HasWaiters for ConnState {
    fn waiters(&mut self) -> &mut Waiters {
        &mut self.waiters
    }
}

/// A connection shared by its handle and the poll loop.
pub(crate) struct Conn {
    pub shared: Waitable<ConnState>,
    /// A [`Command::Wake`] for this connection is on its way to the loop.
    pub queued: AtomicBool,
}

impl Conn {
    pub(crate) fn new(
        remote: SocketAddr,
        cap: usize,
        nodelay: bool,
        phase: Phase,
        id: Option<ConnId>,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            shared: Waitable::new(ConnState {
                id,
                local: SocketAddr::new(
                    if remote.is_ipv6() {
                        std::net::Ipv6Addr::UNSPECIFIED.into()
                    } else {
                        std::net::Ipv4Addr::UNSPECIFIED.into()
                    },
                    0,
                ),
                remote,
                rx: RecvBuf::new(),
                rx_read: 0,
                tx: Ring::new(),
                cap,
                phase,
                failure: None,
                failure_reported: false,
                read_closed: false,
                peer_fin: false,
                read_shut: false,
                write_shut: false,
                fin_queued: false,
                dropped: false,
                rx_stalled: false,
                rx_lent: false,
                rx_wanted: false,
                nodelay,
                keepalive: None,
                abort: false,
                read_timeout: None,
                write_timeout: None,
                nonblocking: false,
                waiters: Waiters::default(),
            }),
            queued: AtomicBool::new(false),
        })
    }
}

/// What a read or write found: a result, or nothing yet (wait), and whether the loop
/// must be told about the change.
pub(crate) struct Outcome {
    pub result: Option<io::Result<usize>>,
    pub wake_loop: bool,
}

impl ConnState {
    /// The connect finished: `Ok` once open (or already closed cleanly), else why not.
    pub(crate) fn connect_result(&self) -> Option<io::Result<()>> {
        match (self.phase, self.failure) {
            (_, Some(f)) => Some(Err(f.io())),
            (Phase::Connecting, None) => None,
            _ => Some(Ok(())),
        }
    }

    /// Copies received bytes into `buf`: data, `Ok(0)` at end of stream, the error that
    /// ended the connection, or `None` when nothing is there yet.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> Outcome {
        if self.rx_lent && !buf.is_empty() {
            return self.wait_for_lent();
        }
        if !self.rx.is_empty() && !buf.is_empty() {
            let n = self.rx.read(buf);
            return Outcome {
                result: Some(Ok(n)),
                wake_loop: self.count_read(n),
            };
        }
        let result = if buf.is_empty() {
            Some(Ok(0))
        } else {
            self.end_of_data()
        };
        Outcome {
            result,
            wake_loop: false,
        }
    }

    /// `n` bytes were read from `rx`: whether the loop must hear of it now.
    fn count_read(&mut self, n: usize) -> bool {
        self.rx_read += n;
        let wake_loop = self.rx_stalled && (self.rx.is_empty() || self.rx_read >= RETURN_STEP);
        self.rx_stalled &= !wake_loop;
        wake_loop
    }

    /// Another reader holds `rx`: wait until it gives it back.
    fn wait_for_lent(&mut self) -> Outcome {
        self.rx_wanted = true;
        Outcome {
            result: None,
            wake_loop: false,
        }
    }

    /// What a read finds with `rx` empty: the end of the stream, the error that ended
    /// the connection, or `None` (wait).
    fn end_of_data(&mut self) -> Option<io::Result<usize>> {
        if self.read_closed || self.read_shut {
            Some(Ok(0))
        } else if let Some(f) = self.failure {
            self.report_failure(f).map_or(Some(Ok(0)), |e| Some(Err(e)))
        } else if self.phase == Phase::Closed {
            Some(Ok(0))
        } else {
            None
        }
    }

    /// A zero-copy read's start: the received bytes, moved out for the reader to look
    /// at without the lock (`Ok(Some)`), the end of the stream (`Ok(None)`), the
    /// error, or `None` (wait). [`ConnState::give_back`] ends it.
    pub(crate) fn lend(&mut self) -> Option<io::Result<Option<RecvBuf>>> {
        if self.rx_lent {
            self.rx_wanted = true;
            return None;
        }
        if !self.rx.is_empty() {
            self.rx_lent = true;
            return Some(Ok(Some(std::mem::take(&mut self.rx))));
        }
        self.end_of_data().map(|r| r.map(|_| None))
    }

    /// A zero-copy read's end: `rx` comes back with `consumed` bytes read from it.
    /// Returns whether the loop must hear of it, and whether another reader waits.
    pub(crate) fn give_back(&mut self, rx: RecvBuf, consumed: usize) -> (bool, bool) {
        self.rx = rx;
        self.rx_lent = false;
        // Shut meanwhile: what is left goes too, and the loop gives its room back.
        let shut = self.read_shut && !self.rx.is_empty();
        if shut {
            self.discard_rx();
        }
        let wake_loop = self.count_read(consumed) || shut;
        (wake_loop, std::mem::take(&mut self.rx_wanted))
    }

    /// Drops the received bytes not read yet (`shutdown(Read)`); the loop gives their
    /// room back.
    pub(crate) fn discard_rx(&mut self) {
        self.rx_read += self.rx.len();
        self.rx.clear();
    }

    /// A read would not wait: data, the end of the stream, or an error.
    #[cfg(feature = "tokio")]
    pub(crate) fn readable(&self) -> bool {
        !self.rx.is_empty()
            || self.read_closed
            || self.read_shut
            || self.failure.is_some()
            || self.phase == Phase::Closed
    }

    /// A write would not wait: room in the buffer, or an error.
    #[cfg(feature = "tokio")]
    pub(crate) fn writable(&self) -> bool {
        self.phase != Phase::Connecting && (self.tx.len() < self.cap || self.failure.is_some())
    }

    /// Copies received bytes into `buf` without taking them; as [`ConnState::read`]
    /// otherwise, but an error stays to be reported.
    #[cfg(feature = "tokio")]
    pub(crate) fn peek(&self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        if !self.rx.is_empty() && !buf.is_empty() {
            return Some(Ok(self.rx.peek(buf)));
        }
        match self.failure {
            Some(f) if !self.failure_reported && !self.read_closed && !self.read_shut => {
                Some(Err(f.io()))
            }
            _ if self.readable() || buf.is_empty() => Some(Ok(0)),
            _ => None,
        }
    }

    /// The connection's error if no read or write reported it yet, as SO_ERROR gives it
    /// (and clears it).
    pub(crate) fn take_error(&mut self) -> Option<io::Error> {
        let f = self.failure.filter(|f| *f != Failure::Stopped)?;
        self.report_failure(f)
    }

    /// The connection's error the first time a read or a write meets it, `None` after
    /// (Linux clears a socket's error once reported, `sock_error`). A stopped stack
    /// keeps saying so.
    pub(crate) fn report_failure(&mut self, f: Failure) -> Option<io::Error> {
        if self.failure_reported && f != Failure::Stopped {
            return None;
        }
        self.failure_reported = true;
        Some(f.io())
    }

    /// Queues bytes of `buf` for the stack: how many fit, the error, or `None` when the
    /// buffer is full.
    pub(crate) fn write(&mut self, buf: &[u8]) -> Outcome {
        let result = if let Some(e) = self.failure.and_then(|f| self.report_failure(f)) {
            Some(Err(e))
        } else if self.write_shut || self.phase == Phase::Closed || self.failure.is_some() {
            // EPIPE, as the kernel's send on a socket shut or reset (its error reported).
            Some(Err(io::Error::from_raw_os_error(libc::EPIPE)))
        } else if buf.is_empty() {
            Some(Ok(0))
        } else {
            let n = self.tx.push(buf, self.cap);
            (n > 0).then_some(Ok(n))
        };
        let wake_loop = matches!(result, Some(Ok(n)) if n > 0);
        Outcome { result, wake_loop }
    }
}

/// One listener's shared state.
pub(crate) struct ListenState {
    /// The loop's answer to [`Command::Listen`].
    pub bound: Option<Result<(), Failure>>,
    /// Established connections not yet accepted.
    pub queue: VecDeque<Arc<Conn>>,
    /// The loop stopped.
    pub stopped: bool,
    pub nonblocking: bool,
    waiters: Waiters,
}

impl HasWaiters for ListenState {
    fn waiters(&mut self) -> &mut Waiters {
        &mut self.waiters
    }
}

/// A listener shared by its handle and the poll loop.
pub(crate) struct Listener {
    pub port: u16,
    pub backlog: usize,
    /// The families it takes connections of: (IPv4, IPv6).
    pub families: (bool, bool),
    pub shared: Waitable<ListenState>,
    /// Length of `queue`, readable by the loop without the lock.
    pub queued: AtomicUsize,
}

impl Listener {
    /// A listener for IPv4 peers, IPv6 peers or both.
    pub(crate) fn new(port: u16, backlog: usize, families: (bool, bool)) -> Arc<Listener> {
        Arc::new(Listener {
            port,
            backlog: backlog.max(1),
            families,
            shared: Waitable::new(ListenState {
                bound: None,
                queue: VecDeque::new(),
                stopped: false,
                nonblocking: false,
                waiters: Waiters::default(),
            }),
            queued: AtomicUsize::new(0),
        })
    }

    /// The next accepted connection, the reason there will be none, or `None` (wait).
    pub(crate) fn take(&self, st: &mut ListenState) -> Option<io::Result<Arc<Conn>>> {
        if let Some(conn) = st.queue.pop_front() {
            self.queued.store(st.queue.len(), Ordering::Relaxed);
            return Some(Ok(conn));
        }
        if st.stopped {
            return Some(Err(Failure::Stopped.io()));
        }
        if st.nonblocking {
            return Some(Err(io::ErrorKind::WouldBlock.into()));
        }
        None
    }
}

impl super::readiness::Ready for ConnState {
    fn readiness(&self) -> super::readiness::Readiness {
        let error = self.failure.is_some();
        let closed = self.phase == Phase::Closed;
        let connecting = self.phase == Phase::Connecting && !error;
        super::readiness::Readiness {
            readable: !connecting
                && (!self.rx.is_empty() || self.read_closed || self.read_shut || error || closed),
            writable: !connecting
                && (error || closed || self.write_shut || self.tx.len() < self.cap),
            hangup: error || closed || (self.read_closed && self.write_shut),
            error,
            connecting,
        }
    }
}

impl super::readiness::Ready for ListenState {
    fn readiness(&self) -> super::readiness::Readiness {
        super::readiness::Readiness {
            readable: !self.queue.is_empty() || self.stopped,
            hangup: self.stopped,
            ..super::readiness::Readiness::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn conn(cap: usize) -> Arc<Conn> {
        let remote = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 80));
        Conn::new(remote, cap, false, Phase::Open, None)
    }

    /// `bytes` handed over by a receive buffer, as the loop does.
    fn received(bytes: &[u8]) -> RecvBuf {
        let mut tcp = crate::tcp::reassembly::Reassembler::new(1 << 16, 4, 1 << 16);
        tcp.insert(0, bytes);
        let mut rx = RecvBuf::new();
        assert_eq!(tcp.take_readable(&mut rx), bytes.len());
        rx
    }

    #[test]
    fn reads_give_data_then_end_of_stream_or_the_error() {
        let c = conn(8);
        let mut st = c.shared.lock();
        let mut buf = [0u8; 4];
        assert!(st.read(&mut buf).result.is_none(), "nothing yet: wait");
        st.rx = received(b"abcdef");
        st.read_closed = true;
        assert_eq!(st.read(&mut buf).result.unwrap().unwrap(), 4);
        assert_eq!(&buf, b"abcd");
        assert_eq!(st.read(&mut buf).result.unwrap().unwrap(), 2);
        assert_eq!(st.read(&mut buf).result.unwrap().unwrap(), 0, "then EOF");
        st.read_closed = false;
        st.failure = Some(Failure::Tcp(TcpError::Reset));
        let err = st.read(&mut buf).result.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    /// Issue 22 item 6: as Linux reports a socket's error once, the write after the one
    /// that met a reset fails with EPIPE (std's BrokenPipe), and a read then sees the
    /// end of the stream.
    #[test]
    fn after_a_reset_is_reported_writes_give_epipe_and_reads_end() {
        let c = conn(8);
        let mut st = c.shared.lock();
        st.failure = Some(Failure::Tcp(TcpError::Reset));
        st.phase = Phase::Closed;
        let first = st.write(b"x").result.unwrap().unwrap_err();
        assert_eq!(first.kind(), io::ErrorKind::ConnectionReset);
        let second = st.write(b"x").result.unwrap().unwrap_err();
        assert_eq!(second.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(second.raw_os_error(), Some(libc::EPIPE));
        assert_eq!(st.read(&mut [0; 4]).result.unwrap().unwrap(), 0);
        // A stopped stack keeps saying so.
        st.failure = Some(Failure::Stopped);
        for _ in 0..2 {
            let err = st.write(b"x").result.unwrap().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotConnected);
        }
    }

    #[test]
    fn a_stalled_buffer_wakes_the_loop_once_read_empty_and_counts_the_reads() {
        let c = conn(4);
        let mut st = c.shared.lock();
        st.rx = received(b"full");
        let mut buf = [0u8; 2];
        assert!(!st.read(&mut buf).wake_loop, "not stalled: no wake");
        st.rx = received(b"full");
        st.rx_stalled = true;
        assert!(!st.read(&mut buf).wake_loop, "bytes left, under the step");
        assert!(st.read(&mut buf).wake_loop, "read empty");
        assert!(!st.rx_stalled, "once");
        assert_eq!(st.rx_read, 6, "every byte read goes back to the window");
        st.rx = received(b"abc");
        st.discard_rx();
        assert_eq!(st.rx_read, 9, "and every byte dropped");
        assert!(st.rx.is_empty());
    }

    #[test]
    fn a_lent_buffer_comes_back_less_what_was_consumed_and_others_wait_meanwhile() {
        let c = conn(8);
        let mut st = c.shared.lock();
        assert!(st.lend().is_none(), "nothing yet: wait");
        st.rx = received(b"abcdef");
        st.rx_stalled = true;
        let rx = st.lend().unwrap().unwrap().expect("the bytes");
        assert_eq!(rx.front(), b"abcdef");
        assert!(st.rx_lent && st.rx.is_empty());
        // Meanwhile a second reader waits, a zero-copy one too.
        assert!(st.read(&mut [0; 4]).result.is_none());
        assert!(st.lend().is_none());
        let mut rx = rx;
        rx.consume(4);
        let (wake_loop, waited) = st.give_back(rx, 4);
        assert!(!wake_loop, "bytes left, under the step");
        assert!(waited, "the other reader is told");
        assert_eq!(st.rx_read, 4, "the consumed bytes go back to the window");
        assert!(!st.rx_lent);
        let mut buf = [0u8; 4];
        assert_eq!(st.read(&mut buf).result.unwrap().unwrap(), 2);
        assert_eq!(&buf[..2], b"ef", "then the rest, in order");
        // Read empty, stalled: the loop hears of it, as after a copying read.
        st.rx = received(b"gh");
        st.rx_stalled = true;
        let mut rx = st.lend().unwrap().unwrap().unwrap();
        rx.consume(2);
        assert_eq!(st.give_back(rx, 2), (true, false));
        // With nothing there: the end of the stream, then the error, as a read.
        st.read_closed = true;
        assert!(st.lend().unwrap().unwrap().is_none());
        st.read_closed = false;
        st.failure = Some(Failure::Tcp(TcpError::Reset));
        let err = st.lend().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn bytes_given_back_after_a_shutdown_of_reading_are_dropped_and_the_loop_told() {
        let c = conn(8);
        let mut st = c.shared.lock();
        st.rx = received(b"abcdef");
        let mut rx = st.lend().unwrap().unwrap().unwrap();
        st.read_shut = true;
        st.discard_rx(); // what shutdown(Read) does meanwhile: nothing to drop yet
        rx.consume(1);
        let (wake_loop, _) = st.give_back(rx, 1);
        assert!(wake_loop, "their room goes back");
        assert!(st.rx.is_empty());
        assert_eq!(st.rx_read, 6);
        assert!(st.lend().unwrap().unwrap().is_none(), "then the end");
    }

    #[test]
    fn writes_fill_up_to_the_bound_and_fail_once_shut() {
        let c = conn(4);
        let mut st = c.shared.lock();
        let first = st.write(b"abcdef");
        assert_eq!(first.result.unwrap().unwrap(), 4);
        assert!(first.wake_loop);
        assert!(st.write(b"g").result.is_none(), "full: wait");
        st.tx.clear();
        st.write_shut = true;
        let err = st.write(b"g").result.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_blocked_reader_wakes_on_notify_and_times_out_without() {
        let c = conn(8);
        let timed_out = c.shared.block_on(Some(Duration::from_millis(20)), |st| {
            st.read(&mut [0; 1]).result
        });
        assert!(timed_out.is_none());
        let c2 = c.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let mut st = c2.shared.lock();
            st.rx = received(b"x");
            c2.shared.notify(&mut st);
        });
        let got = c.shared.block_on(Some(Duration::from_secs(10)), |st| {
            st.read(&mut [0; 1]).result
        });
        assert_eq!(got.unwrap().unwrap(), 1);
        writer.join().unwrap();
    }

    #[test]
    fn failures_map_to_std_error_kinds() {
        use io::ErrorKind as K;
        for (failure, kind) in [
            (Failure::Tcp(TcpError::Refused), K::ConnectionRefused),
            (Failure::Tcp(TcpError::TimedOut), K::TimedOut),
            (Failure::Tcp(TcpError::Unreachable), K::HostUnreachable),
            (Failure::Stack(StackError::PortInUse), K::AddrInUse),
            (Failure::Stopped, K::NotConnected),
            (Failure::ConnectTimeout, K::TimedOut),
            (
                Failure::NoArpReply(Ipv4Addr::new(10, 0, 0, 1).into()),
                K::HostUnreachable,
            ),
        ] {
            assert_eq!(failure.io().kind(), kind, "{failure:?}");
        }
    }

    #[test]
    fn tcp_failures_carry_the_kernels_errno_and_the_others_say_what_happened() {
        // What connect(2), read(2) and bind(2) give: the raw errno.
        for (failure, errno) in [
            (Failure::Tcp(TcpError::Refused), libc::ECONNREFUSED),
            (Failure::Tcp(TcpError::Reset), libc::ECONNRESET),
            (Failure::Tcp(TcpError::TimedOut), libc::ETIMEDOUT),
            (Failure::Tcp(TcpError::Closed), libc::ENOTCONN),
            (Failure::Stack(StackError::PortInUse), libc::EADDRINUSE),
            (Failure::BadAddress, libc::EADDRNOTAVAIL),
        ] {
            assert_eq!(failure.io().raw_os_error(), Some(errno), "{failure:?}");
        }
        // An ICMP unreachable keeps the TCP error; the connect's own limit is not one.
        let icmp = Failure::Tcp(TcpError::Unreachable).io();
        assert!(icmp.get_ref().is_some_and(|e| e.is::<TcpError>()));
        let limit = Failure::ConnectTimeout.io();
        assert_eq!(limit.raw_os_error(), None);
        assert!(!limit.get_ref().is_some_and(|e| e.is::<TcpError>()));
        let arp = Failure::NoArpReply(Ipv4Addr::new(10, 0, 0, 1).into()).io();
        assert!(
            arp.to_string()
                .contains("no ARP reply from next hop 10.0.0.1")
        );
    }
}
