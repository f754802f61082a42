//! The errno the Linux kernel gives for each way a stack call fails: for code that
//! matches errno values, and for the preload library, which must return them from the
//! socket calls it takes over.
use crate::stack::StackError;
use crate::tcp::TcpError;
use std::io;

/// The kernel's errno for a TCP connection's failure.
pub fn tcp_errno(e: TcpError) -> i32 {
    match e {
        // connect(2) after the peer's RST to our SYN.
        TcpError::Refused => libc::ECONNREFUSED,
        TcpError::Reset => libc::ECONNRESET,
        // The SYNs or the data retransmissions given up on (tcp_syn_retries,
        // tcp_retries2), or keep-alive probes unanswered.
        TcpError::TimedOut => libc::ETIMEDOUT,
        // An ICMP destination unreachable, or a neighbour that never answered.
        TcpError::Unreachable | TcpError::HostUnreachable => libc::EHOSTUNREACH,
        TcpError::Closed => libc::ENOTCONN,
    }
}

/// The kernel's errno for a refused stack call.
pub fn stack_errno(e: StackError) -> i32 {
    match e {
        StackError::PortInUse => libc::EADDRINUSE,
        // connect(2) with no ephemeral port left.
        StackError::NoFreePort => libc::EADDRNOTAVAIL,
        // The kernel's limit on sockets (ENFILE/EMFILE) is the nearest.
        StackError::TooManyConnections => libc::EMFILE,
        // connect(2) to an IPv6 peer on a host with no IPv6 address or route.
        StackError::NoAddress => libc::ENETUNREACH,
        // bind(2) to a tentative or duplicate address (RFC 4862 5.4).
        StackError::AddressTentative | StackError::DuplicateAddress => libc::EADDRNOTAVAIL,
    }
}

/// The errno of an error from the stack's sockets: its `raw_os_error()` when it has
/// one, else the kernel's errno for what the stack reported (a TCP failure, a refused
/// call, or the kind of error).
pub fn errno(e: &io::Error) -> Option<i32> {
    if let Some(code) = e.raw_os_error() {
        return Some(code);
    }
    if let Some(inner) = e.get_ref() {
        if let Some(tcp) = inner.downcast_ref::<TcpError>() {
            return Some(tcp_errno(*tcp));
        }
        if let Some(stack) = inner.downcast_ref::<StackError>() {
            return Some(stack_errno(*stack));
        }
    }
    use io::ErrorKind as K;
    Some(match e.kind() {
        K::ConnectionRefused => libc::ECONNREFUSED,
        K::ConnectionReset => libc::ECONNRESET,
        K::ConnectionAborted => libc::ECONNABORTED,
        K::TimedOut => libc::ETIMEDOUT,
        K::HostUnreachable => libc::EHOSTUNREACH,
        K::NetworkUnreachable => libc::ENETUNREACH,
        K::NotConnected => libc::ENOTCONN,
        K::BrokenPipe => libc::EPIPE,
        K::AddrInUse => libc::EADDRINUSE,
        K::AddrNotAvailable => libc::EADDRNOTAVAIL,
        K::WouldBlock => libc::EAGAIN,
        K::InvalidInput => libc::EINVAL,
        K::PermissionDenied => libc::EACCES,
        K::Interrupted => libc::EINTR,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::shared::Failure;

    /// Every failure the sockets report has the kernel's errno, whose kind is the one
    /// std gives it.
    #[test]
    fn every_failure_maps_to_the_kernels_errno() {
        let failures = [
            (Failure::Tcp(TcpError::Refused), libc::ECONNREFUSED),
            (Failure::Tcp(TcpError::Reset), libc::ECONNRESET),
            (Failure::Tcp(TcpError::TimedOut), libc::ETIMEDOUT),
            (Failure::Tcp(TcpError::Unreachable), libc::EHOSTUNREACH),
            (Failure::Tcp(TcpError::HostUnreachable), libc::EHOSTUNREACH),
            (Failure::Tcp(TcpError::Closed), libc::ENOTCONN),
            (Failure::Stack(StackError::PortInUse), libc::EADDRINUSE),
            (Failure::Stack(StackError::NoFreePort), libc::EADDRNOTAVAIL),
            (Failure::Stopped, libc::ENOTCONN),
            (Failure::BadAddress, libc::EADDRNOTAVAIL),
            (Failure::ConnectTimeout, libc::ETIMEDOUT),
            (
                Failure::NoArpReply(std::net::Ipv4Addr::new(10, 0, 0, 1).into()),
                libc::EHOSTUNREACH,
            ),
        ];
        for (failure, expected) in failures {
            let error = failure.io();
            assert_eq!(errno(&error), Some(expected), "{failure:?}");
            assert_eq!(
                io::Error::from_raw_os_error(expected).kind(),
                error.kind(),
                "{failure:?}"
            );
        }
        assert_eq!(
            errno(&io::Error::from_raw_os_error(libc::EPIPE)),
            Some(libc::EPIPE)
        );
    }
}
