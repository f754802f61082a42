//! The blocking [`TcpListener`], shaped like [`std::net::TcpListener`].
use super::Stack;
use super::reserve::PortReservation;
use super::shared::{Command, Conn, Listener};
use super::stream::{Handle, TcpStream};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

/// Accept queue length of a listener (the stack adds SYN cookies beyond its SYN queue).
pub const DEFAULT_BACKLOG: usize = 4096;

/// How a listener binds: [`TcpListener::bind_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOptions {
    /// Accept queue length (established connections not accepted yet; beyond it, and
    /// beyond the stack's SYN backlog, SYN cookies). Default: [`DEFAULT_BACKLOG`].
    pub backlog: usize,
    /// Serve the port even if a kernel listener holds it (shared-IP mode: its clients
    /// then reach this listener, not the kernel's server). Default: `false`, and such a
    /// bind fails with [`io::ErrorKind::AddrInUse`] (`EADDRINUSE`) as the kernel's would.
    pub take_over: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            backlog: DEFAULT_BACKLOG,
            take_over: false,
        }
    }
}

/// A listener's handle; dropping it stops listening and resets the connections that
/// were not accepted yet.
pub(crate) struct ListenHandle {
    pub(crate) stack: Stack,
    pub(crate) listener: Arc<Listener>,
    /// The address bound to (0.0.0.0, `[::]` or one of the stack's).
    bound_ip: IpAddr,
    /// The port held in the kernel while the stack listens (see `reserve.rs`).
    _reservation: Option<Arc<PortReservation>>,
}

impl ListenHandle {
    /// Asks the loop to listen on the port of `addr` (0: a free one) as `options` say;
    /// the handle then waits for the answer. A port a kernel listener holds is refused
    /// with `EADDRINUSE` unless taken over.
    pub(crate) fn bind(
        stack: &Stack,
        addr: impl ToSocketAddrs,
        options: ListenOptions,
    ) -> io::Result<ListenHandle> {
        let bound = stack.listen_addr(addr)?;
        let port = bound.port();
        let owned = stack.mode() == super::AddressMode::Owned;
        let reservation = PortReservation::take(stack.ip(), port, owned, options.take_over)?;
        let port = reservation.as_ref().map_or(port, |r| r.port);
        // As Linux with IPV6_V6ONLY off: `[::]` takes both families, 0.0.0.0 or an IPv4
        // address IPv4 only, an IPv6 address IPv6 only.
        let families = match bound.ip() {
            IpAddr::V4(_) => (true, false),
            IpAddr::V6(ip) if ip.is_unspecified() => (true, true),
            IpAddr::V6(_) => (false, true),
        };
        let listener = Listener::new(port, options.backlog, families);
        stack.send(Command::Listen(listener.clone()));
        Ok(ListenHandle {
            stack: stack.clone(),
            bound_ip: bound.ip(),
            listener,
            _reservation: reservation,
        })
    }

    /// The loop's answer to the bind, once there is one.
    pub(crate) fn bound(st: &super::shared::ListenState) -> Option<io::Result<()>> {
        st.bound.map(|r| r.map_err(|f| f.io()))
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        // Like the kernel: the address the socket was bound to, the unspecified one
        // of an IPv6 bind included; an IPv4 wildcard bind reports the stack's address.
        let ip = match self.bound_ip {
            IpAddr::V4(_) => IpAddr::V4(self.stack.ip()),
            v6 => v6,
        };
        SocketAddr::new(ip, self.listener.port)
    }

    /// A stream around an accepted connection, and its peer's address.
    pub(crate) fn handle(&self, conn: Arc<Conn>) -> (Handle, SocketAddr) {
        let peer = conn.shared.lock().remote;
        (
            Handle {
                stack: self.stack.clone(),
                conn,
            },
            peer,
        )
    }
}

impl std::fmt::Debug for ListenHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenHandle")
            .field("local", &self.local_addr())
            .finish()
    }
}

impl Drop for ListenHandle {
    fn drop(&mut self) {
        self.stack.send(Command::Unlisten(self.listener.clone()));
    }
}

/// A TCP listener on the kernel-bypass stack, shaped like [`std::net::TcpListener`].
///
/// In shared-IP mode the XDP program steers the listening port to the stack from the
/// moment `bind` returns (at most 16 listening ports at once).
///
/// ```no_run
/// use std::io::Write;
/// # fn main() -> std::io::Result<()> {
/// let stack = userspace::Stack::builder().build()?;
/// let listener = userspace::TcpListener::bind(&stack, "0.0.0.0:8080")?;
/// for stream in listener.incoming() {
///     stream?.write_all(b"hello\n")?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TcpListener {
    /// Shared by the clones; the port is listened on until the last one is dropped.
    pub(super) handle: Arc<ListenHandle>,
}

impl TcpListener {
    /// Listens on the port of `addr`, whose address must be the stack's or `0.0.0.0`,
    /// with an accept queue of [`DEFAULT_BACKLOG`]. Port 0 picks a free port
    /// ([`TcpListener::local_addr`] says which). A port a kernel listener holds fails
    /// with [`io::ErrorKind::AddrInUse`] (`EADDRINUSE`), as with std; while the stack
    /// listens, the kernel gives the port to nobody else.
    pub fn bind(stack: &Stack, addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        Self::bind_with(stack, addr, ListenOptions::default())
    }

    /// [`TcpListener::bind`] with an accept queue of `backlog` established connections
    /// (beyond it, and beyond the stack's SYN backlog, SYN cookies).
    pub fn bind_with_backlog(
        stack: &Stack,
        addr: impl ToSocketAddrs,
        backlog: usize,
    ) -> io::Result<TcpListener> {
        let options = ListenOptions {
            backlog,
            ..ListenOptions::default()
        };
        Self::bind_with(stack, addr, options)
    }

    /// [`TcpListener::bind`] as `options` say (backlog, taking a port over from a
    /// kernel listener).
    pub fn bind_with(
        stack: &Stack,
        addr: impl ToSocketAddrs,
        options: ListenOptions,
    ) -> io::Result<TcpListener> {
        let handle = ListenHandle::bind(stack, addr, options)?;
        handle
            .listener
            .shared
            .block_on(None, |st| ListenHandle::bound(st))
            .unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))?;
        Ok(TcpListener {
            handle: Arc::new(handle),
        })
    }

    /// Another handle to the same listener, as std's `try_clone`: both accept from one
    /// queue, and the port is listened on until both are dropped.
    pub fn try_clone(&self) -> io::Result<TcpListener> {
        Ok(TcpListener {
            handle: self.handle.clone(),
        })
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let listener = &self.handle.listener;
        let conn = listener
            .shared
            .block_on(None, |st| listener.take(st))
            .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))?;
        let (handle, peer) = self.handle.handle(conn);
        Ok((TcpStream::from_handle(handle), peer))
    }

    /// An endless iterator over incoming connections, as [`TcpListener::accept`] gives them.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The address listened on: the stack's address and the port.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.handle.local_addr())
    }

    /// In non-blocking mode, `accept` fails with [`io::ErrorKind::WouldBlock`] instead
    /// of waiting.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.handle.listener.shared.lock().nonblocking = nonblocking;
        Ok(())
    }
}

/// The iterator of [`TcpListener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}
