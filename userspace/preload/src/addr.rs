//! Socket addresses across the C boundary: `sockaddr_in` for an AF_INET socket,
//! `sockaddr_in6` for an AF_INET6 one, checked as the kernel checks them (a length too
//! short for the socket's family is EINVAL, another family EAFNOSUPPORT), and an IPv4
//! address shown to an AF_INET6 socket as `::ffff:a.b.c.d` (RFC 4291 2.5.5.2), as Linux.
use crate::table::Res;
use libc::c_int;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

const SIN: usize = std::mem::size_of::<libc::sockaddr_in>();
const SIN6: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// The shortest `sockaddr_in6` Linux takes: RFC 2133's, without `sin6_scope_id`.
const SIN6_RFC2133: usize = 24;

/// The address in `bytes` for a socket of `family` (AF_INET or AF_INET6), as the
/// kernel's `inet_bind`/`tcp_v4_connect` and `inet6_bind`/`tcp_v6_connect` read it.
pub fn parse(family: c_int, bytes: &[u8]) -> Res<SocketAddr> {
    let min = if family == libc::AF_INET6 {
        SIN6_RFC2133
    } else {
        SIN
    };
    if bytes.len() < min {
        return Err(libc::EINVAL);
    }
    let at = |i: usize, n: usize| &bytes[i..i + n];
    let sa_family = u16::from_ne_bytes([bytes[0], bytes[1]]) as c_int;
    if sa_family != family {
        return Err(libc::EAFNOSUPPORT);
    }
    let port = u16::from_be_bytes([bytes[2], bytes[3]]);
    if family == libc::AF_INET {
        let ip: [u8; 4] = at(4, 4).try_into().map_err(|_| libc::EINVAL)?;
        return Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)));
    }
    let flowinfo = u32::from_be_bytes(at(4, 4).try_into().map_err(|_| libc::EINVAL)?);
    let ip: [u8; 16] = at(8, 16).try_into().map_err(|_| libc::EINVAL)?;
    let scope = match bytes.get(24..28) {
        Some(b) => u32::from_ne_bytes(b.try_into().map_err(|_| libc::EINVAL)?),
        None => 0,
    };
    Ok(SocketAddr::V6(SocketAddrV6::new(
        Ipv6Addr::from(ip),
        port,
        flowinfo,
        scope,
    )))
}

/// `addr` as the kernel writes it for a socket of `family`: its bytes and length. An
/// IPv4 address on an AF_INET6 socket is V4-mapped.
pub fn encode(family: c_int, addr: SocketAddr) -> ([u8; SIN6], usize) {
    let mut out = [0u8; SIN6];
    let v6 = match (family, shown(family, addr)) {
        (libc::AF_INET6, SocketAddr::V6(a)) => a,
        (_, a) => {
            // An AF_INET socket only ever holds IPv4 addresses.
            let ip = match a.ip() {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(ip) => ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
            };
            out[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&a.port().to_be_bytes());
            out[4..8].copy_from_slice(&ip.octets());
            return (out, SIN);
        }
    };
    out[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
    out[2..4].copy_from_slice(&v6.port().to_be_bytes());
    out[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
    out[8..24].copy_from_slice(&v6.ip().octets());
    out[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
    (out, SIN6)
}

/// A V4-mapped IPv6 address as the IPv4 one it stands for; any other as it is.
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, a.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// `addr` as a socket of `family` names it (V4-mapped on AF_INET6), for `-v`.
pub fn shown(family: c_int, addr: SocketAddr) -> SocketAddr {
    match (family, addr) {
        (libc::AF_INET6, SocketAddr::V4(a)) => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        _ => addr,
    }
}

/// The unspecified address of `family`, port 0 (an unbound socket's name).
pub fn unspecified(family: c_int) -> SocketAddr {
    if family == libc::AF_INET6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What libc's own structs hold for `addr`, to check `parse` against.
    fn sin(ip: [u8; 4], port: u16) -> Vec<u8> {
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        s.sin_family = libc::AF_INET as libc::sa_family_t;
        s.sin_port = port.to_be();
        s.sin_addr.s_addr = u32::from_ne_bytes(ip);
        // SAFETY: a plain C struct read as its bytes.
        unsafe { std::slice::from_raw_parts((&s as *const libc::sockaddr_in).cast(), SIN) }.to_vec()
    }

    fn sin6(ip: Ipv6Addr, port: u16, scope: u32) -> Vec<u8> {
        // SAFETY: all-zero is a valid sockaddr_in6.
        let mut s: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        s.sin6_port = port.to_be();
        s.sin6_addr.s6_addr = ip.octets();
        s.sin6_scope_id = scope;
        // SAFETY: a plain C struct read as its bytes.
        unsafe { std::slice::from_raw_parts((&s as *const libc::sockaddr_in6).cast(), SIN6) }
            .to_vec()
    }

    #[test]
    fn an_ipv6_address_crosses_both_ways_with_its_scope() {
        let ip: Ipv6Addr = "fd00::2".parse().unwrap();
        let bytes = sin6(ip, 80, 7);
        let addr = parse(libc::AF_INET6, &bytes).unwrap();
        assert_eq!(addr, SocketAddr::V6(SocketAddrV6::new(ip, 80, 0, 7)));
        let (out, len) = encode(libc::AF_INET6, addr);
        assert_eq!((&out[..len], len), (&bytes[..], SIN6));
    }

    #[test]
    fn an_ipv4_address_crosses_an_af_inet_socket_as_sockaddr_in() {
        let bytes = sin([10, 0, 0, 2], 8080);
        let addr = parse(libc::AF_INET, &bytes).unwrap();
        assert_eq!(addr, "10.0.0.2:8080".parse().unwrap());
        let (out, len) = encode(libc::AF_INET, addr);
        assert_eq!(&out[..len], &bytes[..]);
    }

    #[test]
    fn an_ipv4_peer_of_an_af_inet6_socket_is_v4_mapped() {
        let (out, len) = encode(libc::AF_INET6, "10.0.0.1:4000".parse().unwrap());
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(&out[..len], &sin6(mapped, 4000, 0)[..]);
        // And a mapped address given is the IPv4 one underneath.
        let given = parse(libc::AF_INET6, &sin6(mapped, 80, 0)).unwrap();
        assert_eq!(unmapped(given), "10.0.0.1:80".parse().unwrap());
        assert_eq!(
            unmapped("[fd00::1]:80".parse().unwrap()),
            "[fd00::1]:80".parse().unwrap()
        );
    }

    #[test]
    fn a_short_address_is_einval_as_the_kernel() {
        let v6 = sin6(Ipv6Addr::LOCALHOST, 80, 0);
        // RFC 2133's 24 bytes (no scope id) are enough; 23 are not.
        assert!(parse(libc::AF_INET6, &v6[..24]).is_ok());
        assert_eq!(parse(libc::AF_INET6, &v6[..23]), Err(libc::EINVAL));
        // A sockaddr_in is too short for an AF_INET6 socket: EINVAL before the family.
        assert_eq!(
            parse(libc::AF_INET6, &sin([10, 0, 0, 2], 80)),
            Err(libc::EINVAL)
        );
        assert_eq!(
            parse(libc::AF_INET, &sin([10, 0, 0, 2], 80)[..15]),
            Err(libc::EINVAL)
        );
        assert_eq!(parse(libc::AF_INET, &[]), Err(libc::EINVAL));
    }

    #[test]
    fn a_wrong_family_is_eafnosupport_as_the_kernel() {
        // A sockaddr_in6 to an AF_INET socket (long enough, wrong family).
        assert_eq!(
            parse(libc::AF_INET, &sin6(Ipv6Addr::LOCALHOST, 80, 0)),
            Err(libc::EAFNOSUPPORT)
        );
        // A sockaddr_in padded to a sockaddr_in6's length, to an AF_INET6 socket.
        let mut padded = sin([10, 0, 0, 2], 80);
        padded.resize(SIN6, 0);
        assert_eq!(parse(libc::AF_INET6, &padded), Err(libc::EAFNOSUPPORT));
    }
}
