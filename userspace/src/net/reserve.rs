//! Listening ports reserved in the kernel while the stack listens on them.
//!
//! In shared-IP mode the XDP program steers a listening port's segments to the stack,
//! away from the kernel. A kernel server on that port would silently lose its clients,
//! so a bind refuses a port a kernel listener holds, with `EADDRINUSE` as the kernel
//! would, unless the application asks to take the port over. While the stack listens,
//! a kernel TCP socket bound to the port (never listening) keeps the kernel from giving
//! it to anyone else; it also picks a free port for a bind to port 0.
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

/// A kernel TCP socket bound to a port and never listening: nobody else can bind it
/// while it is held. Shared by the stacks of one process that listen on the same port
/// (sharded servers bind the port on every stack).
#[derive(Debug)]
pub(crate) struct PortReservation {
    pub(crate) port: u16,
    key: (Ipv4Addr, u16),
    _socket: OwnedFd,
}

/// Reservations by address and port.
type Reservations = HashMap<(Ipv4Addr, u16), Weak<PortReservation>>;

/// This process's reservations, so that its stacks share one per port.
static RESERVED: Mutex<Option<Reservations>> = Mutex::new(None);

impl Drop for PortReservation {
    fn drop(&mut self) {
        let mut reserved = RESERVED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = reserved.as_mut()
            && map.get(&self.key).is_some_and(|w| w.strong_count() == 0)
        {
            map.remove(&self.key);
        }
    }
}

impl PortReservation {
    /// Reserves `port` on `ip` (0: a free port the kernel picks). `owned`: the address
    /// is not the kernel's (owned-IP mode), so no kernel server can receive on it and
    /// only port 0 needs the kernel (bound with IP_FREEBIND). `take_over`: a port a
    /// kernel listener holds is served anyway (then nothing is reserved).
    ///
    /// Fails with `EADDRINUSE` when a kernel socket holds the port; [`kernel_listener`]
    /// says which process.
    pub(crate) fn take(
        ip: Ipv4Addr,
        port: u16,
        owned: bool,
        take_over: bool,
    ) -> io::Result<Option<Arc<PortReservation>>> {
        if owned && port != 0 {
            return Ok(None);
        }
        Self::take_in(ip, port, owned, take_over, true)
    }

    /// `port` on `ip` if nobody holds it, this process included: `EADDRINUSE` else.
    pub(crate) fn take_unused(ip: Ipv4Addr, port: u16) -> io::Result<Arc<PortReservation>> {
        Self::take_in(ip, port, false, false, false)?.ok_or_else(|| io::ErrorKind::AddrInUse.into())
    }

    fn take_in(
        ip: Ipv4Addr,
        port: u16,
        owned: bool,
        take_over: bool,
        share: bool,
    ) -> io::Result<Option<Arc<PortReservation>>> {
        let mut reserved = RESERVED.lock().unwrap_or_else(|p| p.into_inner());
        let map = reserved.get_or_insert_with(HashMap::new);
        if port != 0
            && let Some(existing) = map.get(&(ip, port)).and_then(Weak::upgrade)
        {
            return match share {
                true => Ok(Some(existing)),
                false => Err(io::Error::from_raw_os_error(libc::EADDRINUSE)),
            };
        }
        let socket = match bind_kernel_socket(ip, port, owned) {
            Ok(socket) => socket,
            Err(e) if take_over && e.raw_os_error() == Some(libc::EADDRINUSE) => return Ok(None),
            Err(e) => return Err(e),
        };
        let port = match rustix::net::getsockname(&socket)?.try_into() {
            Ok(std::net::SocketAddr::V4(a)) => a.port(),
            _ => return Err(io::Error::other("the kernel bound no IPv4 port")),
        };
        let reservation = Arc::new(PortReservation {
            port,
            key: (ip, port),
            _socket: socket,
        });
        map.insert((ip, port), Arc::downgrade(&reservation));
        Ok(Some(reservation))
    }
}

/// A TCP socket bound to `ip:port`. Without SO_REUSEADDR nobody can bind the port
/// after it; but a port that only connections in TIME-WAIT or another state hold (no
/// listener) is free for a server, as for std's `bind` (SO_REUSEADDR), so that is
/// tried second.
fn bind_kernel_socket(ip: Ipv4Addr, port: u16, freebind: bool) -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, bind, socket_with, sockopt};
    let addr = SocketAddrV4::new(ip, port);
    let open = |reuse: bool| -> io::Result<OwnedFd> {
        // Close-on-exec: a program the application starts must not keep the port.
        let fd = socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        sockopt::set_socket_reuseaddr(&fd, reuse)?;
        if freebind {
            sockopt::set_ip_freebind(&fd, true)?;
        }
        bind(&fd, &addr)?;
        Ok(fd)
    };
    match open(false) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) && port != 0 => {
            if kernel_listener(port).is_some() {
                return Err(e);
            }
            open(true)
        }
        other => other,
    }
}

/// The kernel socket listening on TCP `port` (any address, IPv4 or IPv6), and the
/// process that holds it, if it can be found: `(pid, name)`.
pub fn kernel_listener(port: u16) -> Option<(Option<u32>, String)> {
    let inode = [libc::AF_INET, libc::AF_INET6]
        .into_iter()
        .find_map(|family| listening_inode(family as u8, port).ok().flatten())?;
    Some(match process_of_socket(inode) {
        Some((pid, name)) => (Some(pid), name),
        None => (None, "unknown".to_string()),
    })
}

/// Netlink message type of a sock_diag request (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const TCP_LISTEN: u32 = 10;
const NLMSG_HEADER_LEN: usize = 16;
/// Offsets in `struct inet_diag_msg` (linux/inet_diag.h).
const DIAG_SPORT: usize = 4;
const DIAG_INODE: usize = 68;

/// The inode of a kernel TCP socket of `family` listening on `port`, from the kernel's
/// sock_diag dump of listening sockets.
fn listening_inode(family: u8, port: u16) -> io::Result<Option<u32>> {
    use rustix::net::netlink::{SOCK_DIAG, SocketAddrNetlink};
    use rustix::net::{
        AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, recv, sendto, socket_with,
    };
    let fd = socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(SOCK_DIAG),
    )?;
    // nlmsghdr, then struct inet_diag_req_v2: family, protocol, extensions, padding,
    // the states wanted, and a zeroed struct inet_diag_sockid (48 bytes).
    let mut request = Vec::with_capacity(72);
    request.extend_from_slice(&72u32.to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    request.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    request.resize(72, 0);
    sendto(
        &fd,
        &request,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let (n, _) = recv(fd.as_fd(), &mut buf[..], RecvFlags::empty())?;
        if n == 0 {
            return Ok(None);
        }
        let mut at = 0;
        while at + NLMSG_HEADER_LEN <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
            if len < NLMSG_HEADER_LEN || at + len > n {
                return Ok(None);
            }
            match kind {
                NLMSG_DONE | NLMSG_ERROR => return Ok(None),
                SOCK_DIAG_BY_FAMILY => {
                    let msg = &buf[at + NLMSG_HEADER_LEN..at + len];
                    if msg.len() >= DIAG_INODE + 4
                        && u16::from_be_bytes([msg[DIAG_SPORT], msg[DIAG_SPORT + 1]]) == port
                    {
                        let inode = &msg[DIAG_INODE..DIAG_INODE + 4];
                        return Ok(Some(u32::from_ne_bytes(inode.try_into().expect("4 bytes"))));
                    }
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

/// The process with socket `inode` open, and its name (`/proc/PID/fd` links read
/// `socket:[INODE]`).
fn process_of_socket(inode: u32) -> Option<(u32, String)> {
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
        });
        if holds {
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some((pid, name.trim().to_string()));
        }
    }
    None
}

/// One line naming what holds `port` for a refused bind, e.g.
/// `port 80 is in use by process 4242 (python3)`.
pub fn describe_holder(port: u16) -> String {
    match kernel_listener(port) {
        Some((Some(pid), name)) => format!("port {port} is in use by process {pid} ({name})"),
        Some((None, _)) => format!("port {port} is in use by a kernel listener"),
        None => format!("port {port} is in use"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_listener_is_found_with_its_process_and_refuses_the_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (pid, _) = kernel_listener(port).expect("the listener is found");
        assert_eq!(pid, Some(std::process::id()));
        let refused = PortReservation::take(Ipv4Addr::LOCALHOST, port, false, false).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EADDRINUSE));
        assert!(describe_holder(port).contains(&format!("process {}", std::process::id())));
        // Taken over: nothing reserved, no error.
        let taken = PortReservation::take(Ipv4Addr::LOCALHOST, port, false, true).unwrap();
        assert!(taken.is_none());
    }

    #[test]
    fn port_zero_gets_a_free_port_that_nobody_else_can_bind_meanwhile() {
        let held = PortReservation::take(Ipv4Addr::LOCALHOST, 0, false, false)
            .unwrap()
            .unwrap();
        assert_ne!(held.port, 0);
        let flags = rustix::io::fcntl_getfd(&held._socket).unwrap();
        assert!(
            flags.contains(rustix::io::FdFlags::CLOEXEC),
            "not inherited by exec"
        );
        let again = std::net::TcpListener::bind(("127.0.0.1", held.port));
        assert_eq!(
            again.unwrap_err().kind(),
            io::ErrorKind::AddrInUse,
            "reserved"
        );
        // The process's other stacks share it.
        let shared = PortReservation::take(Ipv4Addr::LOCALHOST, held.port, false, false)
            .unwrap()
            .unwrap();
        assert!(Arc::ptr_eq(&held, &shared));
        let port = held.port;
        drop((held, shared));
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
