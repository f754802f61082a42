//! Async sockets for tokio (feature `tokio`), shaped like `tokio::net`.
//!
//! The poll loop wakes the task that waits on a connection when its data, room, or
//! state changes; a task never spins. They work with anything built on tokio's
//! [`AsyncRead`]/[`AsyncWrite`], hyper through `hyper_util::rt::TokioIo` included.
//!
//! ```no_run
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! # async fn run() -> std::io::Result<()> {
//! let stack = userspace::Stack::builder().build()?;
//! let listener = userspace::net::tokio::TcpListener::bind(&stack, "0.0.0.0:7").await?;
//! loop {
//!     let (mut stream, _) = listener.accept().await?;
//!     tokio::spawn(async move {
//!         let mut buf = [0u8; 4096];
//!         while let Ok(n @ 1..) = stream.read(&mut buf).await {
//!             if stream.write_all(&buf[..n]).await.is_err() {
//!                 break;
//!             }
//!         }
//!     });
//! }
//! # }
//! ```
mod more;
pub use more::{OwnedReadHalf, OwnedWriteHalf};

use super::Stack;
use super::listener::{ListenHandle, ListenOptions};
use super::shared::{READER, WRITER};
use super::stream::{Handle, connect_target};
use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use std::future::poll_fn;
use std::io;
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A TCP connection on the kernel-bypass stack for tokio: [`AsyncRead`] and
/// [`AsyncWrite`]. Dropping it closes the connection gracefully (FIN after the bytes
/// written).
#[derive(Debug)]
pub struct TcpStream {
    handle: Arc<Handle>,
}

impl TcpStream {
    /// Opens a connection to the first address of `addr` that answers. Names are
    /// resolved with the system resolver (blocking, as [`std::net::ToSocketAddrs`]).
    pub async fn connect(stack: &Stack, addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
        let mut last = None;
        for remote in Stack::resolve(addr)? {
            match Self::open(stack, remote, stack.inner.connect_timeout).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::ErrorKind::InvalidInput.into()))
    }

    /// Opens a connection to `addr`, waiting at most `timeout` (not zero). It fails with
    /// [`io::ErrorKind::TimedOut`] after it, [`io::ErrorKind::ConnectionRefused`] on a
    /// RST, [`io::ErrorKind::HostUnreachable`] when the next hop does not answer ARP,
    /// the kernel finds the neighbour gone (shared-IP mode), or a router says so.
    /// Dropping the future gives the connection up.
    pub async fn connect_timeout(
        stack: &Stack,
        addr: &SocketAddr,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        Self::open(stack, connect_target(addr, timeout)?, timeout).await
    }

    async fn open(stack: &Stack, remote: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let handle = Handle::connect(stack, remote, timeout);
        poll_fn(|cx| {
            handle
                .conn
                .shared
                .poll(cx, WRITER, |st| st.connect_result())
        })
        .await?;
        Ok(TcpStream {
            handle: Arc::new(handle),
        })
    }

    /// The remote end's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.handle.peer_addr())
    }

    /// Our end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.handle.local_addr())
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

    /// TCP keep-alive; see [`super::TcpStream::set_keepalive`].
    pub fn set_keepalive(&self, every: Option<Duration>) -> io::Result<()> {
        self.handle.set_keepalive(every)
    }

    /// Resets the connection (RST); see [`super::TcpStream::abort`].
    pub fn abort(&self) -> io::Result<()> {
        self.handle.abort();
        Ok(())
    }

    /// Whether the peer will send nothing more; see [`super::TcpStream::peer_closed`].
    pub fn peer_closed(&self) -> bool {
        self.handle.peer_closed()
    }

    /// Reads without a copy: once bytes are there, `f` is called with them where they
    /// lie and returns how many it consumed; that, or `Ok(0)` at the end of the stream
    /// (without calling `f`), is the result. See [`super::TcpStream::read_with`].
    ///
    /// ```no_run
    /// # async fn run(stream: userspace::net::tokio::TcpStream) -> std::io::Result<()> {
    /// let mut sum = 0u64;
    /// while stream
    ///     .read_with(|bytes| {
    ///         sum += bytes.iter().map(|&b| u64::from(b)).sum::<u64>();
    ///         Ok(bytes.len())
    ///     })
    ///     .await?
    ///     > 0
    /// {}
    /// # Ok(()) }
    /// ```
    pub async fn read_with(
        &self,
        mut f: impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read_with(cx, &mut f)).await
    }

    /// [`TcpStream::read_with`] as a poll: `f` runs (once) only when the answer is
    /// ready; `Pending` keeps the reader's waker.
    pub fn poll_read_with(
        &self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&[u8]) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        match self.handle.conn.shared.poll(cx, READER, |st| st.lend()) {
            Poll::Ready(Ok(Some(rx))) => Poll::Ready(self.handle.consume_lent(rx, f)),
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(0)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_read(&self.handle, cx, buf)
    }
}

/// A read for tokio: into `buf`, or the reader's waker kept.
pub(super) fn poll_read(
    handle: &Handle,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let mut wake_loop = false;
    let poll = handle.conn.shared.poll(cx, READER, |st| {
        let outcome = st.read(buf.initialize_unfilled());
        wake_loop = outcome.wake_loop;
        outcome.result
    });
    if wake_loop {
        handle.stack.wake(&handle.conn);
    }
    poll.map(|r| r.map(|n| buf.advance(n)))
}

/// A write for tokio: from `buf`, or the writer's waker kept.
pub(super) fn poll_write(
    handle: &Handle,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    let mut wake_loop = false;
    let poll = handle.conn.shared.poll(cx, WRITER, |st| {
        let outcome = st.write(buf);
        wake_loop = outcome.wake_loop;
        outcome.result
    });
    if wake_loop {
        handle.stack.wake(&handle.conn);
    }
    poll
}

impl AsyncWrite for TcpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write(&self.handle, cx, buf)
    }

    /// Bytes written are already on their way to the TCP send buffer.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends FIN after the bytes written.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Like tokio's, it may run after the peer finished; that is not an error here.
        let _ = self.handle.shutdown(Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}

/// A TCP listener on the kernel-bypass stack for tokio.
#[derive(Debug)]
pub struct TcpListener {
    handle: ListenHandle,
}

impl TcpListener {
    /// Listens on the port of `addr`, whose address must be the stack's or `0.0.0.0`,
    /// with an accept queue of [`super::DEFAULT_BACKLOG`].
    pub async fn bind(stack: &Stack, addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        Self::bind_with(stack, addr, ListenOptions::default()).await
    }

    /// [`TcpListener::bind`] with an accept queue of `backlog` established connections.
    pub async fn bind_with_backlog(
        stack: &Stack,
        addr: impl ToSocketAddrs,
        backlog: usize,
    ) -> io::Result<TcpListener> {
        let options = ListenOptions {
            backlog,
            ..ListenOptions::default()
        };
        Self::bind_with(stack, addr, options).await
    }

    /// [`TcpListener::bind`] as `options` say (backlog, taking a port over from a
    /// kernel listener); see [`super::TcpListener::bind`] for ports held by the kernel
    /// and port 0.
    pub async fn bind_with(
        stack: &Stack,
        addr: impl ToSocketAddrs,
        options: ListenOptions,
    ) -> io::Result<TcpListener> {
        let handle = ListenHandle::bind(stack, addr, options)?;
        poll_fn(|cx| {
            handle
                .listener
                .shared
                .poll(cx, READER, |st| ListenHandle::bound(st))
        })
        .await?;
        Ok(TcpListener { handle })
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// The next connection, or `Pending` with the task woken when one arrives.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        let listener = &self.handle.listener;
        listener
            .shared
            .poll(cx, READER, |st| listener.take(st))
            .map(|r| {
                r.map(|conn| {
                    let (handle, peer) = self.handle.handle(conn);
                    let handle = Arc::new(handle);
                    (TcpStream { handle }, peer)
                })
            })
    }

    /// The address listened on: the stack's address and the port.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.handle.local_addr())
    }
}
