//! What tokio's `TcpStream` offers beyond `AsyncRead`/`AsyncWrite`: readiness,
//! non-blocking reads and writes, peek, the pending error, owned halves, and the way
//! from the blocking stream.
use super::{Handle, READER, TcpStream, WRITER, poll_read, poll_write};
use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use std::future::poll_fn;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

impl TcpStream {
    /// The async stream around a blocking one (both may be used; they are handles to
    /// one connection, which closes when the last is dropped).
    pub fn from_std(stream: super::super::TcpStream) -> io::Result<TcpStream> {
        Ok(TcpStream {
            handle: stream.into_handle(),
        })
    }

    /// Waits until a read would not wait (data, the end of the stream, or an error).
    pub async fn readable(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_read_ready(cx)).await
    }

    /// Waits until a write would not wait (room in the buffer, or an error).
    pub async fn writable(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_write_ready(cx)).await
    }

    /// [`TcpStream::readable`] as a poll.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &self.handle.conn.shared;
        shared.poll(cx, READER, |st| st.readable().then_some(Ok(())))
    }

    /// [`TcpStream::writable`] as a poll.
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &self.handle.conn.shared;
        shared.poll(cx, WRITER, |st| st.writable().then_some(Ok(())))
    }

    /// Reads what is there without waiting: [`io::ErrorKind::WouldBlock`] if nothing is.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let outcome = self.handle.conn.shared.lock().read(buf);
        if outcome.wake_loop {
            self.handle.stack.wake(&self.handle.conn);
        }
        outcome
            .result
            .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))
    }

    /// Writes what fits without waiting: [`io::ErrorKind::WouldBlock`] if nothing does.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let outcome = self.handle.conn.shared.lock().write(buf);
        let result = outcome
            .result
            .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()));
        if result.as_ref().is_ok_and(|n| *n > 0) || outcome.wake_loop {
            self.handle.stack.wake(&self.handle.conn);
        }
        result
    }

    /// Waits for data and copies it into `buf` without taking it (MSG_PEEK).
    pub async fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        let shared = &self.handle.conn.shared;
        poll_fn(|cx| shared.poll(cx, READER, |st| st.peek(buf))).await
    }

    /// The error that ended the connection if no read or write reported it yet
    /// (SO_ERROR; cleared once taken).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        Ok(self.handle.conn.shared.lock().take_error())
    }

    /// Splits the stream into a read half and a write half that can move to different
    /// tasks. Dropping the write half sends FIN (as tokio's); the connection closes when
    /// both are dropped.
    pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        let handle = self.handle;
        (
            OwnedReadHalf {
                handle: handle.clone(),
            },
            OwnedWriteHalf { handle },
        )
    }
}

/// The read half of [`TcpStream::into_split`].
#[derive(Debug)]
pub struct OwnedReadHalf {
    handle: Arc<Handle>,
}

/// The write half of [`TcpStream::into_split`]; dropping it sends FIN.
#[derive(Debug)]
pub struct OwnedWriteHalf {
    handle: Arc<Handle>,
}

impl OwnedReadHalf {
    /// The remote end's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.handle.peer_addr())
    }

    /// Our end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.handle.local_addr())
    }
}

impl OwnedWriteHalf {
    /// The remote end's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.handle.peer_addr())
    }

    /// Our end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.handle.local_addr())
    }
}

impl Drop for OwnedWriteHalf {
    fn drop(&mut self) {
        let _ = self.handle.shutdown(Shutdown::Write);
    }
}

impl AsyncRead for OwnedReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_read(&self.handle, cx, buf)
    }
}

impl AsyncWrite for OwnedWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write(&self.handle, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = self.handle.shutdown(Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}
