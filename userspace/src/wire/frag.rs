//! IPv4 reassembly (RFC 791 section 3.2; RFC 1122 3.3.2: a host MUST reassemble), with
//! strict bounds, as Linux's ipfrag: concurrent datagrams and their memory (like
//! ipfrag_high_thresh), fragments per datagram, and a 30 s timeout (ipfrag_time).
//! Overlapping fragments drop the whole datagram, as Linux does since 4.19 (and RFC 5722
//! asks for IPv6). This is not the hot path: it allocates per datagram.
use super::time::Instant;
use super::{IPV4_HEADER_LEN, checksum};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Reassembly timeout (RFC 1122 3.3.2 leaves 60-120 s; Linux uses 30 s).
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Datagrams being reassembled at once.
pub const MAX_DATAGRAMS: usize = 64;
/// Bytes held for all datagrams being reassembled (Linux ipfrag_high_thresh: 4 MiB).
pub const MAX_BYTES: usize = 4 << 20;
/// Fragments kept for one datagram.
pub const MAX_FRAGMENTS: usize = 64;
const MAX_DATAGRAM: usize = 65_535;

/// What happened to fragments, for the stack's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FragmentStats {
    /// Fragments received.
    pub fragments: u64,
    /// Datagrams completed from them.
    pub reassembled: u64,
    /// Datagrams whose reassembly time ran out.
    pub timeouts: u64,
    /// Dropped over a bound (datagrams, memory, fragments per datagram).
    pub over_limit: u64,
    /// Dropped as malformed: overlap, bad length or offset, conflicting last fragment.
    pub malformed: u64,
}

type Key = (Ipv4Addr, Ipv4Addr, u16, u8);

#[derive(Debug)]
struct Datagram {
    key: Key,
    deadline: Instant,
    /// Header of the first fragment (offset 0), once it arrived.
    header: Vec<u8>,
    payload: Vec<u8>,
    /// Bytes of the memory bound this datagram holds.
    held: usize,
    /// Received `[start, end)` ranges of the payload, sorted, disjoint.
    ranges: Vec<(usize, usize)>,
    fragments: usize,
    /// Payload length, known from the last fragment.
    total: Option<usize>,
}

/// IPv4 datagrams being reassembled from their fragments, within fixed bounds.
#[derive(Debug, Default)]
pub struct Reassembler {
    datagrams: Vec<Datagram>,
    bytes: usize,
    /// What happened to the fragments so far.
    pub stats: FragmentStats,
}

impl Reassembler {
    /// True when no datagram is in progress.
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// The earliest reassembly deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.datagrams.iter().map(|d| d.deadline).min()
    }

    /// Drops datagrams whose 30 s ran out.
    pub fn expire(&mut self, now: Instant) {
        let before = self.datagrams.len();
        let bytes = &mut self.bytes;
        self.datagrams.retain(|d| {
            let keep = d.deadline > now;
            if !keep {
                *bytes -= d.held;
            }
            keep
        });
        self.stats.timeouts += (before - self.datagrams.len()) as u64;
    }

    /// Adds one fragment: `packet` is a whole IPv4 packet whose header the parser has
    /// already validated (checksum, lengths). When it completes a datagram, the datagram
    /// is written to `out` as one unfragmented IPv4 packet and true is returned.
    pub fn add(&mut self, now: Instant, packet: &[u8], out: &mut Vec<u8>) -> bool {
        self.stats.fragments += 1;
        self.expire(now);
        let hlen = usize::from(packet[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        let id = u16::from_be_bytes([packet[4], packet[5]]);
        let flags_offset = u16::from_be_bytes([packet[6], packet[7]]);
        let more = flags_offset & 0x2000 != 0;
        let start = usize::from(flags_offset & 0x1fff) * 8;
        let data = &packet[hlen..total_len];
        let end = start + data.len();
        let key: Key = (
            Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
            Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
            id,
            packet[9],
        );
        // RFC 791: all but the last fragment carry a multiple of 8 bytes; nothing ends
        // past the largest datagram.
        if end + hlen > MAX_DATAGRAM || (more && (!data.len().is_multiple_of(8) || data.is_empty()))
        {
            self.stats.malformed += 1;
            return false;
        }
        let index = match self.datagrams.iter().position(|d| d.key == key) {
            Some(i) => i,
            None => {
                if self.datagrams.len() >= MAX_DATAGRAMS {
                    self.stats.over_limit += 1;
                    return false;
                }
                self.datagrams.push(Datagram {
                    key,
                    deadline: now + REASSEMBLY_TIMEOUT,
                    header: Vec::new(),
                    payload: Vec::new(),
                    held: 0,
                    ranges: Vec::new(),
                    fragments: 0,
                    total: None,
                });
                self.datagrams.len() - 1
            }
        };
        match self.insert(index, start, data, more, &packet[..hlen]) {
            Err(over_limit) => {
                if over_limit {
                    self.stats.over_limit += 1;
                } else {
                    self.stats.malformed += 1;
                }
                self.remove(index);
                false
            }
            Ok(false) => false,
            Ok(true) => {
                let d = self.remove(index);
                let total = d.total.unwrap_or(0);
                out.clear();
                out.extend_from_slice(&d.header);
                out.extend_from_slice(&d.payload[..total]);
                let len = (d.header.len() + total) as u16;
                out[2..4].copy_from_slice(&len.to_be_bytes());
                out[6..8].fill(0); // no more fragments, offset 0
                out[10..12].fill(0);
                let sum = checksum(&out[..d.header.len()]);
                out[10..12].copy_from_slice(&sum.to_be_bytes());
                self.stats.reassembled += 1;
                true
            }
        }
    }

    /// Ok(true) when the datagram is complete; Err(true) over a bound, Err(false) malformed.
    fn insert(
        &mut self,
        index: usize,
        start: usize,
        data: &[u8],
        more: bool,
        header: &[u8],
    ) -> Result<bool, bool> {
        let end = start + data.len();
        let d = &mut self.datagrams[index];
        if d.ranges.iter().any(|&(s, e)| start < e && s < end) {
            return Err(false);
        }
        if !more {
            if d.total.is_some_and(|t| t != end) || d.ranges.iter().any(|&(_, e)| e > end) {
                return Err(false);
            }
            d.total = Some(end);
        } else if d.total.is_some_and(|t| end > t) {
            return Err(false);
        }
        d.fragments += 1;
        if d.fragments > MAX_FRAGMENTS {
            return Err(true);
        }
        if end > d.held {
            let grow = end - d.held;
            if self.bytes + grow > MAX_BYTES {
                return Err(true);
            }
            self.bytes += grow;
            d.held = end;
            d.payload.resize(end, 0);
        }
        d.payload[start..end].copy_from_slice(data);
        if start == 0 {
            d.header = header.to_vec();
        }
        let at = d.ranges.partition_point(|&(s, _)| s < start);
        d.ranges.insert(at, (start, end));
        // Merge touching neighbours.
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(d.ranges.len());
        for &(s, e) in &d.ranges {
            match merged.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => merged.push((s, e)),
            }
        }
        d.ranges = merged;
        let complete =
            d.total.is_some_and(|t| d.ranges == [(0, t)]) && d.header.len() >= IPV4_HEADER_LEN;
        Ok(complete)
    }

    fn remove(&mut self, index: usize) -> Datagram {
        let d = self.datagrams.swap_remove(index);
        self.bytes -= d.held;
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 fragment of `payload` at `offset` bytes.
    fn fragment(id: u16, offset: usize, payload: &[u8], more: bool) -> Vec<u8> {
        let mut p = vec![0u8; 20 + payload.len()];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        let fo = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        p[6..8].copy_from_slice(&fo.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..].copy_from_slice(payload);
        p
    }

    #[test]
    fn reassembles_out_of_order_fragments() {
        let data: Vec<u8> = (0..1232u32).map(|i| i as u8).collect();
        let mut r = Reassembler::default();
        let mut out = Vec::new();
        let now = Instant::ZERO;
        assert!(!r.add(now, &fragment(7, 904, &data[904..], false), &mut out));
        assert!(!r.add(now, &fragment(7, 0, &data[..304], true), &mut out));
        assert!(!r.add(now, &fragment(7, 600, &data[600..904], true), &mut out));
        assert!(r.add(now, &fragment(7, 304, &data[304..600], true), &mut out));
        assert_eq!(&out[20..], &data[..]);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 1252);
        assert_eq!(&out[6..8], &[0, 0]);
        assert_eq!(checksum(&out[..20]), 0);
        assert_eq!(r.stats.reassembled, 1);
        assert!(r.is_empty());
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn bounds_overlap_and_timeout() {
        let mut r = Reassembler::default();
        let mut out = Vec::new();
        let now = Instant::ZERO;
        // Overlap drops the datagram.
        r.add(now, &fragment(1, 0, &[0; 16], true), &mut out);
        r.add(now, &fragment(1, 8, &[0; 16], true), &mut out);
        assert_eq!(r.stats.malformed, 1);
        assert!(r.is_empty());
        // Too many datagrams at once.
        for id in 0..=MAX_DATAGRAMS as u16 {
            r.add(now, &fragment(100 + id, 0, &[0; 8], true), &mut out);
        }
        assert_eq!(r.datagrams.len(), MAX_DATAGRAMS);
        assert_eq!(r.stats.over_limit, 1);
        // Too many fragments for one datagram.
        let mut r2 = Reassembler::default();
        for i in 0..=MAX_FRAGMENTS {
            r2.add(now, &fragment(9, i * 16, &[0; 8], true), &mut out);
        }
        assert_eq!(r2.stats.over_limit, 1);
        assert!(r2.is_empty());
        // The 30 s timeout.
        r.expire(now + REASSEMBLY_TIMEOUT);
        assert!(r.is_empty());
        assert_eq!(r.stats.timeouts, MAX_DATAGRAMS as u64);
        assert_eq!(r.bytes, 0);
    }
}
