//! Initial sequence numbers (RFC 6528 section 3): ISN = M + F(4-tuple, secret), where M is
//! a 4-microsecond timer and F a keyed hash (SipHash-2-4 here).
use super::time::Instant;
use siphasher::sip::SipHasher24;
use std::hash::Hasher;
use std::net::SocketAddrV4;

/// Keyed hashes for initial sequence numbers (RFC 6528), ports and SYN cookies.
#[derive(Debug, Clone)]
pub struct IsnGenerator {
    key: [u8; 16],
}

impl IsnGenerator {
    /// A generator with the secret `key`.
    pub fn new(key: [u8; 16]) -> Self {
        IsnGenerator { key }
    }

    /// The ISN for a connection: a 4-microsecond clock plus a keyed hash of its 4-tuple.
    pub fn isn(&self, now: Instant, local: SocketAddrV4, remote: SocketAddrV4) -> u32 {
        let mut h = SipHasher24::new_with_key(&self.key);
        h.write(&local.ip().octets());
        h.write_u16(local.port());
        h.write(&remote.ip().octets());
        h.write_u16(remote.port());
        let m = (now.micros() / 4) as u32;
        m.wrapping_add(h.finish() as u32)
    }

    /// A keyed hash for SYN cookies and port choice, with an extra input.
    pub fn hash(&self, local: SocketAddrV4, remote: SocketAddrV4, extra: u64) -> u64 {
        let mut h = SipHasher24::new_with_key(&self.key);
        h.write(&local.ip().octets());
        h.write_u16(local.port());
        h.write(&remote.ip().octets());
        h.write_u16(remote.port());
        h.write_u64(extra);
        h.finish()
    }
}
