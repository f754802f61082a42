//! The blocking [`TcpStream`], shaped like [`std::net::TcpStream`].
use super::Stack;
use super::shared::{Command, Conn, ConnOption, ConnState, Outcome, Phase};
use crate::tcp::reassembly::RecvBuf;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// A connection's handle: the stack it lives on and its shared state. Dropping it
/// closes the connection (FIN after the bytes still queued).
pub(crate) struct Handle {
    pub(crate) stack: Stack,
    pub(crate) conn: Arc<Conn>,
}

impl Handle {
    /// Asks the loop for a connection to `remote`; the handle then waits for the answer.
    pub(crate) fn connect(stack: &Stack, remote: SocketAddr, timeout: Duration) -> Handle {
        Self::connect_from(stack, None, remote, timeout)
    }

    /// [`Handle::connect`] from `from_port` if given (else a port of the stack's).
    pub(crate) fn connect_from(
        stack: &Stack,
        from_port: Option<u16>,
        remote: SocketAddr,
        timeout: Duration,
    ) -> Handle {
        let inner = &stack.inner;
        let conn = Conn::new(remote, inner.cap, inner.nodelay, Phase::Connecting, None);
        stack.send(Command::Connect {
            conn: conn.clone(),
            remote,
            timeout,
            from_port,
        });
        Handle {
            stack: stack.clone(),
            conn,
        }
    }

    /// Changes the state and tells the loop.
    pub(crate) fn update(&self, change: impl FnOnce(&mut ConnState)) {
        change(&mut self.conn.shared.lock());
        self.stack.wake(&self.conn);
    }

    pub(crate) fn peer_addr(&self) -> SocketAddr {
        self.conn.shared.lock().remote
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.conn.shared.lock().local
    }

    /// Shuts one or both directions; `false` if the connection was already finished
    /// (closed or reset), where Linux's shutdown(2) fails with ENOTCONN.
    pub(crate) fn shutdown(&self, how: Shutdown) -> bool {
        let mut open = true;
        self.update(|st| {
            open = st.phase != super::shared::Phase::Closed;
            if matches!(how, Shutdown::Read | Shutdown::Both) {
                st.read_shut = true;
                st.discard_rx();
            }
            if matches!(how, Shutdown::Write | Shutdown::Both) {
                st.write_shut = true;
            }
        });
        open
    }

    pub(crate) fn set_nodelay(&self, nodelay: bool) {
        self.conn.shared.lock().nodelay = nodelay;
        self.set(ConnOption::Nodelay(nodelay));
    }

    /// Tells the loop to apply an option.
    fn set(&self, option: ConnOption) {
        self.stack.send(Command::Set(self.conn.clone(), option));
    }

    pub(crate) fn nodelay(&self) -> bool {
        self.conn.shared.lock().nodelay
    }

    pub(crate) fn set_keepalive(&self, every: Option<Duration>) -> io::Result<()> {
        check_timeout(every)?;
        self.conn.shared.lock().keepalive = every;
        self.set(ConnOption::Keepalive(every));
        Ok(())
    }

    pub(crate) fn keepalive(&self) -> Option<Duration> {
        self.conn.shared.lock().keepalive
    }

    /// Resets the connection: RST, and the bytes not yet sent are dropped.
    pub(crate) fn abort(&self) {
        self.update(|st| {
            st.abort = true;
            st.tx.clear();
        });
    }

    /// The peer will send nothing more: its FIN came, or the connection ended.
    pub(crate) fn peer_closed(&self) -> bool {
        let st = self.conn.shared.lock();
        st.peer_fin || st.read_closed || st.phase == Phase::Closed || st.failure.is_some()
    }

    /// A zero-copy read's second half: `f` looks at the lent bytes without the lock,
    /// then they go back, less those it consumed.
    pub(crate) fn consume_lent(
        &self,
        mut rx: RecvBuf,
        f: impl FnOnce(&[u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        // `f` sees the first contiguous piece: it cannot consume past it. A panic in it
        // still gives the bytes back (else every later read would wait for them).
        let piece = rx.front().len();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(rx.front())));
        let result = match outcome {
            Ok(result) => result.map(|n| rx.consume(n.min(piece))),
            Err(panic) => {
                let mut st = self.conn.shared.lock();
                st.give_back(rx, 0);
                self.conn.shared.notify(&mut st);
                drop(st);
                std::panic::resume_unwind(panic);
            }
        };
        let consumed = *result.as_ref().unwrap_or(&0);
        let mut st = self.conn.shared.lock();
        let (wake_loop, waited) = st.give_back(rx, consumed);
        if waited {
            self.conn.shared.notify(&mut st);
        }
        drop(st);
        if wake_loop {
            self.stack.wake(&self.conn);
        }
        result
    }

    /// A blocking zero-copy read (see [`TcpStream::read_with`]).
    fn read_with(&self, f: impl FnOnce(&[u8]) -> io::Result<usize>) -> io::Result<usize> {
        let (timeout, nonblocking) = {
            let st = self.conn.shared.lock();
            (st.read_timeout, st.nonblocking)
        };
        let lent = self
            .conn
            .shared
            .block_on(timeout, |st| match st.lend() {
                None if nonblocking => Some(Err(io::ErrorKind::WouldBlock.into())),
                r => r,
            })
            .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))?;
        match lent {
            Some(rx) => self.consume_lent(rx, f),
            None => Ok(0),
        }
    }

    /// One blocking read or write: `op` until it has an answer, within the timeout.
    fn block(
        &self,
        timeout: impl Fn(&ConnState) -> Option<Duration>,
        mut op: impl FnMut(&mut ConnState) -> Outcome,
    ) -> io::Result<usize> {
        let (timeout, nonblocking) = {
            let st = self.conn.shared.lock();
            (timeout(&st), st.nonblocking)
        };
        let mut wake_loop = false;
        let result = self.conn.shared.block_on(timeout, |st| {
            let outcome = op(st);
            wake_loop |= outcome.wake_loop;
            match outcome.result {
                None if nonblocking => Some(Err(io::ErrorKind::WouldBlock.into())),
                r => r,
            }
        });
        if wake_loop {
            self.stack.wake(&self.conn);
        }
        // std's sockets report a timeout as WouldBlock on Unix.
        result.unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("local", &self.local_addr())
            .field("peer", &self.peer_addr())
            .finish()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.update(|st| st.dropped = true);
    }
}

/// A TCP connection on the kernel-bypass stack, shaped like [`std::net::TcpStream`]:
/// blocking [`Read`] and [`Write`], timeouts, shutdown, `TCP_NODELAY`.
///
/// Reading returns `Ok(0)` only at the end of the stream; a reset or timed-out
/// connection returns the error ([`io::ErrorKind::ConnectionReset`],
/// [`io::ErrorKind::TimedOut`], ...). Dropping the stream closes the connection
/// gracefully: the bytes already written are sent, then FIN.
///
/// ```no_run
/// use std::io::{Read, Write};
/// # fn main() -> std::io::Result<()> {
/// let stack = userspace::Stack::builder().build()?;
/// let mut stream = userspace::TcpStream::connect(&stack, "10.0.0.2:80")?;
/// stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
/// let mut response = Vec::new();
/// stream.read_to_end(&mut response)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TcpStream {
    pub(super) handle: Arc<Handle>,
}

impl TcpStream {
    /// Opens a connection to the first address of `addr` that answers, waiting at most
    /// the stack's connect timeout for each.
    pub fn connect(stack: &Stack, addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let mut last = None;
        for remote in Stack::resolve(addr)? {
            match Self::open(stack, remote, stack.inner.connect_timeout) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::ErrorKind::InvalidInput.into()))
    }

    /// Opens a connection to `addr`, waiting at most `timeout`
    /// ([`io::ErrorKind::TimedOut`] after it).
    pub fn connect_timeout(
        stack: &Stack,
        addr: &SocketAddr,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        Self::open(stack, connect_target(addr, timeout)?, timeout)
    }

    fn open(stack: &Stack, remote: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let handle = Handle::connect(stack, remote, timeout);
        handle
            .conn
            .shared
            .block_on(None, |st| st.connect_result())
            .unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))?;
        Ok(TcpStream::from_handle(handle))
    }

    pub(crate) fn from_handle(handle: Handle) -> TcpStream {
        TcpStream {
            handle: Arc::new(handle),
        }
    }

    /// The remote end's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.handle.peer_addr())
    }

    /// Our end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.handle.local_addr())
    }

    /// Shuts down reading (later reads return `Ok(0)`), writing (FIN once the bytes
    /// written are sent; later writes fail with [`io::ErrorKind::BrokenPipe`]), or both.
    /// On a finished connection (closed both ways, or reset) it fails with
    /// [`io::ErrorKind::NotConnected`] (ENOTCONN), as std's does.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if self.handle.shutdown(how) {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::ENOTCONN))
        }
    }

    /// Turns Nagle's algorithm off (`true`) or on (`TCP_NODELAY`).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.handle.set_nodelay(nodelay);
        Ok(())
    }

    /// Whether Nagle's algorithm is off.
    pub fn nodelay(&self) -> io::Result<bool> {
        Ok(self.handle.nodelay())
    }

    /// TCP keep-alive (RFC 1122 4.2.3.6): after `every` without traffic, a probe, then
    /// one per `every`; after 9 unanswered probes, as Linux, the connection fails with
    /// [`io::ErrorKind::TimedOut`]. `None` turns it off (the default).
    pub fn set_keepalive(&self, every: Option<Duration>) -> io::Result<()> {
        self.handle.set_keepalive(every)
    }

    /// The keep-alive interval, if keep-alive is on.
    pub fn keepalive(&self) -> io::Result<Option<Duration>> {
        Ok(self.handle.keepalive())
    }

    /// Resets the connection (RST) instead of closing it gracefully: the bytes not yet
    /// sent are dropped, and later reads and writes fail. The way to give up on a
    /// response not worth reading to the end.
    pub fn abort(&self) -> io::Result<()> {
        self.handle.abort();
        Ok(())
    }

    /// Whether the peer will send nothing more: its FIN came (the bytes before it may
    /// still be waiting to be read), or the connection ended (reset, timed out,
    /// aborted). A connection for which this is true cannot carry another request.
    pub fn peer_closed(&self) -> bool {
        self.handle.peer_closed()
    }

    /// How long a read waits for data (`None`: for ever). After it, the read fails with
    /// [`io::ErrorKind::WouldBlock`], as std's sockets do on Unix.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        check_timeout(timeout)?;
        self.handle.conn.shared.lock().read_timeout = timeout;
        Ok(())
    }

    /// How long a write waits for room (`None`: for ever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        check_timeout(timeout)?;
        self.handle.conn.shared.lock().write_timeout = timeout;
        Ok(())
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.handle.conn.shared.lock().read_timeout)
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.handle.conn.shared.lock().write_timeout)
    }

    /// In non-blocking mode, reads and writes that would wait fail with
    /// [`io::ErrorKind::WouldBlock`] instead.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.handle.conn.shared.lock().nonblocking = nonblocking;
        Ok(())
    }

    /// Another handle to the same connection (for a reader and a writer thread). The
    /// connection closes when the last one is dropped.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        Ok(TcpStream {
            handle: self.handle.clone(),
        })
    }

    /// Reads without a copy: waits as [`Read::read`] does, then calls `f` with received
    /// bytes where they lie, in the connection's receive buffer. `f` returns how many of
    /// them it consumed (the rest stay to be read; at most the slice's length counts),
    /// and that is what this returns. At the end of the stream it returns `Ok(0)`
    /// without calling `f`; an error from `f` is returned with nothing consumed.
    ///
    /// The slice is all the bytes waiting or, where the buffer's ring wraps, those
    /// before the wrap. It is not in the UMEM (the stack copies each segment out of
    /// its frame once, on arrival), so a slow `f` holds back only this connection:
    /// while it runs, the stack keeps receiving for every connection, this one's
    /// bytes up to its window. Other reads of this connection wait for `f` to return.
    ///
    /// ```no_run
    /// use std::io::Write;
    /// # fn main() -> std::io::Result<()> {
    /// let stack = userspace::Stack::builder().build()?;
    /// let stream = userspace::TcpStream::connect(&stack, "10.0.0.2:7")?;
    /// let mut out = std::fs::File::create("received.bin")?;
    /// // Straight from the receive buffer to the file: no copy into a buffer of ours.
    /// while stream.read_with(|bytes| out.write(bytes))? > 0 {}
    /// # Ok(()) }
    /// ```
    pub fn read_with(&self, f: impl FnOnce(&[u8]) -> io::Result<usize>) -> io::Result<usize> {
        self.handle.read_with(f)
    }

    /// The error that ended the connection, if no read or write reported it yet; as
    /// std's (SO_ERROR), it is cleared.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        Ok(self.handle.conn.shared.lock().take_error())
    }

    /// The handle, for the async stream ([`super::tokio::TcpStream::from_std`]).
    #[cfg(feature = "tokio")]
    pub(crate) fn into_handle(self) -> Arc<Handle> {
        self.handle
    }
}

/// The address of a `connect_timeout`, if the call makes sense (either family).
pub(crate) fn connect_target(addr: &SocketAddr, timeout: Duration) -> io::Result<SocketAddr> {
    let remote = *addr;
    if timeout.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "zero connect timeout",
        ));
    }
    Ok(remote)
}

pub(crate) fn check_timeout(timeout: Option<Duration>) -> io::Result<()> {
    if timeout.is_some_and(|t| t.is_zero()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "zero timeout (use None for none)",
        ));
    }
    Ok(())
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.handle.block(|st| st.read_timeout, |st| st.read(buf))
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.handle.block(|st| st.write_timeout, |st| st.write(buf))
    }

    /// Bytes written are already on their way to the TCP send buffer; like std's,
    /// there is nothing to flush.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
