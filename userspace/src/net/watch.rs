//! Readiness for programs that wait on many sockets at once through the kernel (the
//! preload library for unmodified programs): what a socket is ready for, a watcher the
//! poll loop tells after every change, a connect that returns at once, and a peek.
//!
//! A watcher runs with the socket's state locked, on the poll loop's thread or on the
//! thread that asked: it must be short and must not call back into the socket.
use super::shared::{HasWaiters, Phase};
use super::stream::Handle;
use super::{Stack, TcpListener, TcpStream};
use std::io;
use std::net::SocketAddr;

use super::readiness::Ready;
pub use super::readiness::{Readiness, Watcher};
pub use super::shared::{WaitHooks, set_wait_hooks};

impl TcpStream {
    /// Starts a connection to `remote` and returns at once, as a non-blocking
    /// `connect(2)` does: [`Readiness::connecting`] until it is open or failed, then
    /// [`TcpStream::connect_result`] says which.
    pub fn connect_nonblocking(stack: &Stack, remote: impl Into<SocketAddr>) -> TcpStream {
        let remote = remote.into();
        let timeout = stack.inner.connect_timeout;
        TcpStream::from_handle(Handle::connect(stack, remote, timeout))
    }

    /// [`TcpStream::connect_nonblocking`] from `port`, one the program bound first
    /// (bind(2) then connect(2)); a port outside the stack's own range is steered to
    /// the stack while the connection lasts. A pair of addresses already taken fails
    /// the connect with `EADDRNOTAVAIL`, as Linux.
    pub fn connect_nonblocking_from(
        stack: &Stack,
        port: u16,
        remote: impl Into<SocketAddr>,
    ) -> TcpStream {
        let remote = remote.into();
        let timeout = stack.inner.connect_timeout;
        TcpStream::from_handle(Handle::connect_from(stack, Some(port), remote, timeout))
    }

    /// `None` while the connect is under way, then `Ok` (open) or why it failed.
    pub fn connect_result(&self) -> Option<io::Result<()>> {
        self.handle.conn.shared.lock().connect_result()
    }

    /// Waits until the connect is over, and says how it ended.
    pub fn wait_connected(&self) -> io::Result<()> {
        self.handle
            .conn
            .shared
            .block_on(None, |st| st.connect_result())
            .unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))
    }

    /// Has `watcher` told the readiness after every change, from now on (`None`: stop);
    /// it is told the present readiness at once.
    pub fn watch(&self, watcher: Option<Watcher>) {
        let mut st = self.handle.conn.shared.lock();
        if let Some(w) = &watcher {
            w(st.readiness());
        }
        st.waiters().watcher = watcher;
    }

    /// Runs `f` on the present readiness, with the state locked, so no change of the
    /// poll loop's comes between (the way to bring a watcher up to date after a read).
    pub fn with_readiness<T>(&self, f: impl FnOnce(Readiness) -> T) -> T {
        let st = self.handle.conn.shared.lock();
        f(st.readiness())
    }

    /// Bytes received and not yet read (`FIONREAD`).
    pub fn bytes_to_read(&self) -> usize {
        self.handle.conn.shared.lock().rx.len()
    }

    /// A snapshot of the connection's TCB (`getsockopt(TCP_INFO)`): state, RTT,
    /// windows, congestion state and counters, taken by the poll loop between two
    /// turns. `None` before the loop has the connection or after it ended.
    pub fn info(&self) -> io::Result<Option<crate::tcp::ConnectionInfo>> {
        self.info_turning(|| {})
    }

    /// As [`TcpStream::info`], calling `turn` once the loop has been asked: a thread
    /// of a program that turns an inline loop itself ([`Stack::turn`]) and may do so
    /// here (not in a signal handler) gets its answer without waiting for the
    /// background thread.
    pub fn info_turning(
        &self,
        turn: impl FnOnce(),
    ) -> io::Result<Option<crate::tcp::ConnectionInfo>> {
        let conn = self.handle.conn.clone();
        self.handle.stack.with_runtime_then(
            move |rt| {
                let id = conn.shared.lock().id?;
                rt.stack.connection(id).map(|c| c.info())
            },
            turn,
        )
    }

    /// Bytes a write would take now without waiting: the send buffer's free room, 0
    /// while the connection is opening, failed or shut for writing (what `splice(2)`
    /// from a pipe may take out of the pipe).
    pub fn send_space(&self) -> usize {
        let st = self.handle.conn.shared.lock();
        let open = st.phase == Phase::Open && st.failure.is_none() && !st.write_shut;
        match open {
            true => st.cap.saturating_sub(st.tx.len()),
            false => 0,
        }
    }

    /// Copies received bytes into `buf` without taking them (`MSG_PEEK`):
    /// [`io::ErrorKind::WouldBlock`] when none are there yet, `Ok(0)` at end of stream.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        let st = self.handle.conn.shared.lock();
        if !st.rx.is_empty() && !buf.is_empty() {
            let n = st.rx.peek(buf);
            return Ok(n);
        }
        let readiness = st.readiness();
        match st.failure {
            Some(f) if readiness.readable && !st.read_closed => Err(f.io()),
            _ if readiness.readable => Ok(0),
            _ => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl TcpListener {
    /// Has `watcher` told the readiness after every change (a connection to accept);
    /// it is told the present readiness at once.
    pub fn watch(&self, watcher: Option<Watcher>) {
        let mut st = self.handle.listener.shared.lock();
        if let Some(w) = &watcher {
            w(st.readiness());
        }
        st.waiters().watcher = watcher;
    }

    /// Runs `f` on the present readiness, with the state locked.
    pub fn with_readiness<T>(&self, f: impl FnOnce(Readiness) -> T) -> T {
        let st = self.handle.listener.shared.lock();
        f(st.readiness())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::shared::{Conn, Failure, Listener, Phase};
    use crate::tcp::TcpError;
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    fn conn(phase: Phase) -> Arc<crate::net::shared::Conn> {
        Conn::new(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 80)),
            4,
            false,
            phase,
            None,
        )
    }

    #[test]
    fn a_connecting_socket_is_ready_for_nothing_and_an_open_one_for_writing() {
        let c = conn(Phase::Connecting);
        let r = c.shared.lock().readiness();
        assert!(r.connecting && !r.readable && !r.writable && !r.hangup);
        let c = conn(Phase::Open);
        let r = c.shared.lock().readiness();
        assert!(!r.connecting && !r.readable && r.writable && !r.hangup);
    }

    #[test]
    fn bytes_make_it_readable_a_full_buffer_unwritable_a_failure_both() {
        let c = conn(Phase::Open);
        let mut st = c.shared.lock();
        st.rx = crate::tcp::reassembly::RecvBuf::holding(b"hi");
        st.tx.push(b"full", usize::MAX);
        let r = st.readiness();
        assert!(r.readable && !r.writable);
        st.rx.clear();
        st.failure = Some(Failure::Tcp(TcpError::Reset));
        let r = st.readiness();
        assert!(r.readable && r.writable && r.error && r.hangup);
    }

    #[test]
    fn a_failed_connect_is_not_connecting_any_more() {
        let c = conn(Phase::Connecting);
        let mut st = c.shared.lock();
        st.failure = Some(Failure::Tcp(TcpError::Refused));
        let r = st.readiness();
        assert!(!r.connecting && r.readable && r.writable && r.error);
    }

    #[test]
    fn a_listener_is_readable_with_a_connection_queued() {
        let l = Listener::new(80, 4, (true, true));
        let mut st = l.shared.lock();
        assert_eq!(st.readiness(), Readiness::default());
        st.queue.push_back(conn(Phase::Open));
        assert!(st.readiness().readable);
    }

    #[test]
    fn the_watcher_hears_every_notify() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let c = conn(Phase::Open);
        let heard = Arc::new(AtomicUsize::new(0));
        let h = heard.clone();
        c.shared.lock().waiters().watcher = Some(Arc::new(move |r: Readiness| {
            if r.readable {
                h.fetch_add(1, Ordering::SeqCst);
            }
        }));
        let mut st = c.shared.lock();
        st.rx = crate::tcp::reassembly::RecvBuf::holding(b"x");
        c.shared.notify(&mut st);
        assert_eq!(heard.load(Ordering::SeqCst), 1);
    }
}
