//! TCP header and options (RFC 9293 section 3.1, RFC 7323, RFC 2018).
use super::seq::SeqNum;
use super::{
    ChecksumPolicy, ETH_HEADER_LEN, ETHERTYPE_IPV4, IPV4_HEADER_LEN, MacAddr, TxChecksum,
    WireError, emit_ethernet,
    ipv4::{PROTO_TCP, emit_header},
    ipv6::{ETHERTYPE_IPV6, IPV6_HEADER_LEN, NH_TCP},
    partial_tcp_checksum, tcp_checksum, tcp_checksum_v4, tcp_checksum_v6,
};
use std::net::IpAddr;

/// At most four SACK blocks fit in the option space (three with timestamps).
pub const MAX_SACK_BLOCKS: usize = 4;
const TCP_MIN_HEADER: usize = 20;

/// TCP control flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags {
    /// Synchronize sequence numbers.
    pub syn: bool,
    /// The acknowledgment field is significant.
    pub ack: bool,
    /// No more data from the sender.
    pub fin: bool,
    /// Reset the connection.
    pub rst: bool,
    /// Push.
    pub psh: bool,
}

impl TcpFlags {
    /// SYN alone: an active open.
    pub const SYN: TcpFlags = TcpFlags {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
        psh: false,
    };
    /// SYN and ACK: the answer to a SYN.
    pub const SYN_ACK: TcpFlags = TcpFlags {
        syn: true,
        ack: true,
        fin: false,
        rst: false,
        psh: false,
    };
    /// ACK alone.
    pub const ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
        psh: false,
    };
    /// RST alone.
    pub const RST: TcpFlags = TcpFlags {
        syn: false,
        ack: false,
        fin: false,
        rst: true,
        psh: false,
    };
    /// FIN and ACK.
    pub const FIN_ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: true,
        rst: false,
        psh: false,
    };
    /// PSH and ACK.
    pub const PSH_ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
        psh: true,
    };
    /// RST and ACK: the answer to a segment without ACK for a closed port.
    pub const RST_ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: false,
        rst: true,
        psh: false,
    };
}

/// The options the stack understands; unknown options are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpOptions {
    /// Maximum segment size (SYN only).
    pub mss: Option<u16>,
    /// Window scale shift (RFC 7323, SYN only).
    pub window_scale: Option<u8>,
    /// SACK permitted (RFC 2018, SYN only).
    pub sack_permitted: bool,
    /// (TSval, TSecr), RFC 7323 section 3.
    pub timestamps: Option<(u32, u32)>,
    /// SACK blocks, the first `sack_count` of them in use.
    pub sack_blocks: [(u32, u32); MAX_SACK_BLOCKS],
    /// How many of `sack_blocks` are in use.
    pub sack_count: u8,
}

impl TcpOptions {
    /// No options (usable in constants, unlike `Default`).
    pub const NONE: TcpOptions = TcpOptions {
        mss: None,
        window_scale: None,
        sack_permitted: false,
        timestamps: None,
        sack_blocks: [(0, 0); MAX_SACK_BLOCKS],
        sack_count: 0,
    };

    /// The SACK blocks in use.
    pub fn sack_blocks(&self) -> &[(u32, u32)] {
        &self.sack_blocks[..usize::from(self.sack_count)]
    }

    /// Parses the option bytes; a length that runs past the end or is below 2 is malformed.
    pub(crate) fn parse(mut data: &[u8]) -> Result<Self, WireError> {
        let mut o = TcpOptions::default();
        while let Some(&kind) = data.first() {
            match kind {
                0 => break,
                1 => {
                    data = &data[1..];
                    continue;
                }
                _ => {}
            }
            let len = usize::from(*data.get(1).ok_or(WireError::Malformed)?);
            if len < 2 || len > data.len() {
                return Err(WireError::Malformed);
            }
            let body = &data[2..len];
            match (kind, len) {
                (2, 4) => o.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                (3, 3) => o.window_scale = Some(body[0]),
                (4, 2) => o.sack_permitted = true,
                (5, _) if (len - 2) % 8 == 0 => {
                    for block in body.chunks_exact(8).take(MAX_SACK_BLOCKS) {
                        let left = u32::from_be_bytes([block[0], block[1], block[2], block[3]]);
                        let right = u32::from_be_bytes([block[4], block[5], block[6], block[7]]);
                        o.sack_blocks[usize::from(o.sack_count)] = (left, right);
                        o.sack_count += 1;
                    }
                }
                (8, 10) => {
                    let val = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let ecr = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                    o.timestamps = Some((val, ecr));
                }
                (2 | 3 | 4 | 5 | 8, _) => return Err(WireError::Malformed),
                _ => {}
            }
            data = &data[len..];
        }
        Ok(o)
    }

    /// Length of the encoded options, padded to a multiple of 4.
    pub fn encoded_len(&self) -> usize {
        let mut n = 0;
        if self.mss.is_some() {
            n += 4;
        }
        if self.window_scale.is_some() {
            n += 4; // NOP + 3
        }
        if self.timestamps.is_some() {
            n += if self.sack_permitted { 10 } else { 12 }; // SACK-permitted takes the 2 NOPs' place
        }
        if self.sack_permitted {
            n += if self.timestamps.is_some() { 2 } else { 4 };
        }
        if self.sack_count > 0 {
            n += 4 + 8 * usize::from(self.sack_count); // NOP NOP kind len blocks
        }
        n
    }

    fn emit(&self, b: &mut [u8]) -> usize {
        let mut i = 0;
        let mut put = |bytes: &[u8]| {
            b[i..i + bytes.len()].copy_from_slice(bytes);
            i += bytes.len();
        };
        if let Some(mss) = self.mss {
            let m = mss.to_be_bytes();
            put(&[2, 4, m[0], m[1]]);
        }
        if let Some(ws) = self.window_scale {
            put(&[1, 3, 3, ws]);
        }
        match (self.sack_permitted, self.timestamps) {
            (true, Some(_)) => put(&[4, 2]),
            (true, None) => put(&[1, 1, 4, 2]),
            (false, Some(_)) => put(&[1, 1]),
            _ => {}
        }
        if let Some((val, ecr)) = self.timestamps {
            put(&[8, 10]);
            put(&val.to_be_bytes());
            put(&ecr.to_be_bytes());
        }
        if self.sack_count > 0 {
            put(&[1, 1, 5, 2 + 8 * self.sack_count]);
            for &(l, r) in self.sack_blocks() {
                put(&l.to_be_bytes());
                put(&r.to_be_bytes());
            }
        }
        i
    }
}

/// A TCP segment as a value; the payload borrows from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpRepr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: SeqNum,
    /// Acknowledgment number: `Some` when the ACK flag is set (parsed segments), `None`
    /// without it (sent as 0).
    pub ack: Option<SeqNum>,
    /// Control flags.
    pub flags: TcpFlags,
    /// Receive window, unscaled as on the wire.
    pub window: u16,
    /// Options.
    pub options: TcpOptions,
    /// Payload.
    pub payload: &'a [u8],
}

impl TcpRepr<'_> {
    /// Sequence space the segment occupies: payload plus one each for SYN and FIN.
    pub fn seq_len(&self) -> u32 {
        self.payload.len() as u32 + u32::from(self.flags.syn) + u32::from(self.flags.fin)
    }
}

/// Parses a TCP segment; the flag says its checksum was partial (see [`ChecksumPolicy`]).
pub(super) fn parse(
    src: IpAddr,
    dst: IpAddr,
    segment: &[u8],
    policy: ChecksumPolicy,
) -> Result<(TcpRepr<'_>, bool), WireError> {
    if segment.len() < TCP_MIN_HEADER {
        return Err(WireError::Truncated);
    }
    let tcp = etherparse::TcpSlice::from_slice(segment).map_err(|e| match e {
        etherparse::err::tcp::HeaderSliceError::Len(_) => WireError::Truncated,
        _ => WireError::Malformed,
    })?;
    // The partial signature is checked first: it costs 12 bytes, the full sum all of them.
    let field = u16::from_be_bytes([segment[16], segment[17]]);
    let partial = policy == ChecksumPolicy::AcceptPartial
        && field == partial_tcp_checksum(src, dst, segment.len());
    if !partial && tcp_checksum(src, dst, segment) != 0 {
        return Err(WireError::BadTcpChecksum);
    }
    let repr = TcpRepr {
        src_port: tcp.source_port(),
        dst_port: tcp.destination_port(),
        seq: SeqNum(tcp.sequence_number()),
        ack: tcp.ack().then(|| SeqNum(tcp.acknowledgment_number())),
        flags: TcpFlags {
            syn: tcp.syn(),
            ack: tcp.ack(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            psh: tcp.psh(),
        },
        window: tcp.window_size(),
        options: TcpOptions::parse(tcp.options())?,
        payload: tcp.payload(),
    };
    Ok((repr, partial))
}

/// Length of the IPv4 frame [`emit_tcp`] writes for `repr` with `payload_len` bytes.
pub fn tcp_frame_len(repr: &TcpRepr<'_>, payload_len: usize) -> usize {
    ETH_HEADER_LEN + IPV4_HEADER_LEN + TCP_MIN_HEADER + repr.options.encoded_len() + payload_len
}

/// Writes Ethernet+IPv4+TCP (or Ethernet+IPv6+TCP for IPv6 addresses) into `buf`. The payload is `repr.payload` if not empty,
/// else `fill` writes `payload_len` bytes straight into the frame (so data moves from
/// the send buffer to the frame in one copy). The TCP checksum is complete or left to
/// the device ([`TxChecksum`]). Returns the frame length, 0 if it won't fit.
pub fn emit_tcp<A: Into<IpAddr>>(
    buf: &mut [u8],
    eth: (MacAddr, MacAddr),
    ip: (A, A),
    repr: &TcpRepr<'_>,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
    tx_checksum: TxChecksum,
) -> usize {
    // One body per family, each as lean as an IPv4-only one.
    match (ip.0.into(), ip.1.into()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => emit_segment(
            buf,
            IPV4_HEADER_LEN,
            repr,
            payload_len,
            fill,
            |b, len| {
                emit_ethernet(b, eth.0, eth.1, ETHERTYPE_IPV4);
                emit_header(&mut b[ETH_HEADER_LEN..], s, d, PROTO_TCP, len);
            },
            |seg| match tx_checksum {
                TxChecksum::Complete => tcp_checksum_v4(s, d, seg),
                TxChecksum::Partial => partial_tcp_checksum(s, d, seg.len()),
            },
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => emit_segment(
            buf,
            IPV6_HEADER_LEN,
            repr,
            payload_len,
            fill,
            |b, len| {
                emit_ethernet(b, eth.0, eth.1, ETHERTYPE_IPV6);
                // Hop limit 64, as Linux's default (net.ipv6.conf.*.hop_limit).
                super::ipv6::emit_header(&mut b[ETH_HEADER_LEN..], s, d, NH_TCP, len, 64);
            },
            |seg| match tx_checksum {
                TxChecksum::Complete => tcp_checksum_v6(s, d, seg),
                TxChecksum::Partial => partial_tcp_checksum(s, d, seg.len()),
            },
        ),
        _ => 0,
    }
}

/// The body of [`emit_tcp`] for one family: `header` writes the Ethernet and IP headers
/// for a segment of the given length, `checksum` sums the segment with its pseudo-header.
#[inline(always)]
fn emit_segment(
    buf: &mut [u8],
    ip_header_len: usize,
    repr: &TcpRepr<'_>,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
    header: impl FnOnce(&mut [u8], usize),
    checksum: impl FnOnce(&[u8]) -> u16,
) -> usize {
    let options_len = repr.options.encoded_len();
    let tcp_header_len = TCP_MIN_HEADER + options_len;
    let total = ETH_HEADER_LEN + ip_header_len + tcp_header_len + payload_len;
    if total > buf.len() || tcp_header_len > 60 {
        return 0;
    }
    header(buf, tcp_header_len + payload_len);
    let seg = &mut buf[ETH_HEADER_LEN + ip_header_len..total];
    seg[0..2].copy_from_slice(&repr.src_port.to_be_bytes());
    seg[2..4].copy_from_slice(&repr.dst_port.to_be_bytes());
    seg[4..8].copy_from_slice(&repr.seq.0.to_be_bytes());
    seg[8..12].copy_from_slice(&repr.ack.map_or(0, |a| a.0).to_be_bytes());
    seg[12] = ((tcp_header_len / 4) as u8) << 4;
    let f = repr.flags;
    seg[13] = u8::from(f.fin)
        | u8::from(f.syn) << 1
        | u8::from(f.rst) << 2
        | u8::from(f.psh) << 3
        | u8::from(f.ack) << 4;
    seg[14..16].copy_from_slice(&repr.window.to_be_bytes());
    seg[16..20].fill(0); // checksum, urgent pointer
    repr.options.emit(&mut seg[TCP_MIN_HEADER..tcp_header_len]);
    if repr.payload.is_empty() {
        fill(&mut seg[tcp_header_len..]);
    } else {
        seg[tcp_header_len..].copy_from_slice(&repr.payload[..payload_len]);
    }
    let sum = checksum(seg);
    seg[16..18].copy_from_slice(&sum.to_be_bytes());
    total
}
