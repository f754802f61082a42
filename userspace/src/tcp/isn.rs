//! Initial sequence numbers (RFC 6528 section 3): ISN = M + F(4-tuple, secret), where M is
//! a 4-microsecond timer and F a keyed hash (SipHash-2-4 here).
use super::time::Instant;
use siphasher::sip::SipHasher24;
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};

/// Keyed hashes for initial sequence numbers (RFC 6528), ports and SYN cookies.
#[derive(Debug, Clone)]
pub struct IsnGenerator {
    key: [u8; 16],
}

/// Feeds the 4-tuple to the hash: the 4 bytes of each IPv4 address as before, the 16
/// of each IPv6 one behind a family byte, so the two families never share an input.
#[inline]
fn write_tuple(h: &mut SipHasher24, local: SocketAddr, remote: SocketAddr) {
    for addr in [local, remote] {
        match addr.ip() {
            IpAddr::V4(ip) => h.write(&ip.octets()),
            IpAddr::V6(ip) => {
                h.write_u8(6);
                h.write(&ip.octets());
            }
        }
        h.write_u16(addr.port());
    }
}

impl IsnGenerator {
    /// A generator with the secret `key`.
    pub fn new(key: [u8; 16]) -> Self {
        IsnGenerator { key }
    }

    /// The ISN for a connection: a 4-microsecond clock plus a keyed hash of its 4-tuple.
    pub fn isn(
        &self,
        now: Instant,
        local: impl Into<SocketAddr>,
        remote: impl Into<SocketAddr>,
    ) -> u32 {
        let mut h = SipHasher24::new_with_key(&self.key);
        write_tuple(&mut h, local.into(), remote.into());
        let m = (now.micros() / 4) as u32;
        m.wrapping_add(h.finish() as u32)
    }

    /// A keyed hash for SYN cookies and port choice, with an extra input.
    pub fn hash(
        &self,
        local: impl Into<SocketAddr>,
        remote: impl Into<SocketAddr>,
        extra: u64,
    ) -> u64 {
        let mut h = SipHasher24::new_with_key(&self.key);
        write_tuple(&mut h, local.into(), remote.into());
        h.write_u64(extra);
        h.finish()
    }
}
