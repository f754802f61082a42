//! IPv4 (RFC 791, with RFC 1122 section 3.2.1 validation) and the ICMP messages the stack uses.
use super::{
    ETH_HEADER_LEN, ETHERTYPE_IPV4, IPV4_HEADER_LEN, MacAddr, WireError, checksum, emit_ethernet,
};
use std::net::Ipv4Addr;

pub(super) const PROTO_ICMP: u8 = 1;
pub(super) const PROTO_TCP: u8 = 6;

/// The parts of an IPv4 header the stack needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Info {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Time to live.
    pub ttl: u8,
}

/// Validates an IPv4 header; returns it, the protocol number and the payload (the
/// caller parses the payload by protocol, so this file knows nothing of TCP).
pub(super) fn parse(packet: &[u8]) -> Result<(Ipv4Info, u8, &[u8]), WireError> {
    if packet.len() < IPV4_HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let header = etherparse::Ipv4HeaderSlice::from_slice(packet).map_err(|e| match e {
        etherparse::err::ipv4::HeaderSliceError::Len(_) => WireError::Truncated,
        _ => WireError::Malformed,
    })?;
    let header_len = usize::from(header.ihl()) * 4;
    let total_len = usize::from(header.total_len());
    // RFC 1122 3.2.1.2/3.2.1.1: drop on bad checksum or lying lengths.
    if total_len < header_len || total_len > packet.len() {
        return Err(WireError::Malformed);
    }
    if checksum(&packet[..header_len]) != 0 {
        return Err(WireError::BadIpChecksum);
    }
    // Fragments are counted and dropped: the stack never sends packets that need them.
    if header.more_fragments() || header.fragments_offset().value() != 0 {
        return Err(WireError::Fragment);
    }
    let ip = Ipv4Info {
        src: header.source_addr(),
        dst: header.destination_addr(),
        ttl: header.ttl(),
    };
    Ok((ip, header.protocol().0, &packet[header_len..total_len]))
}

/// Writes a 20-byte IPv4 header (no options, DF set) with its checksum.
pub(super) fn emit_header(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload_len: usize,
) {
    let total = (IPV4_HEADER_LEN + payload_len) as u16;
    let b = &mut buf[..IPV4_HEADER_LEN];
    b[0] = 0x45;
    b[1] = 0;
    b[2..4].copy_from_slice(&total.to_be_bytes());
    b[4..6].copy_from_slice(&0u16.to_be_bytes());
    b[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    b[8] = 64;
    b[9] = protocol;
    b[10..12].fill(0);
    b[12..16].copy_from_slice(&src.octets());
    b[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(b);
    b[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// ICMP messages the stack acts on (RFC 792, RFC 1122 section 3.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpRepr<'a> {
    /// Echo request (ping).
    EchoRequest {
        /// Identifier, echoed back.
        ident: u16,
        /// Sequence number, echoed back.
        seq: u16,
        /// Payload, echoed back.
        data: &'a [u8],
    },
    /// Destination unreachable, quoting the start of one of our TCP segments.
    DestUnreachable {
        /// ICMP code (0 net, 1 host, 2 protocol, 3 port unreachable, ...).
        code: u8,
        /// Source address of the quoted packet (ours).
        quoted_src: Ipv4Addr,
        /// Destination address of the quoted packet.
        quoted_dst: Ipv4Addr,
        /// Source port of the quoted TCP segment.
        quoted_src_port: u16,
        /// Destination port of the quoted TCP segment.
        quoted_dst_port: u16,
        /// Sequence number of the quoted segment, to validate the message (RFC 5927 4.1).
        quoted_seq: u32,
        /// Next-hop MTU of "fragmentation needed" (code 4, RFC 1191 section 4), else 0.
        next_hop_mtu: u16,
    },
    /// Any other ICMP message.
    Other,
}

impl<'a> IcmpRepr<'a> {
    pub(super) fn parse(msg: &'a [u8]) -> Result<Self, WireError> {
        if msg.len() < 8 {
            return Err(WireError::Truncated);
        }
        if checksum(msg) != 0 {
            return Err(WireError::BadIcmpChecksum);
        }
        match msg[0] {
            8 if msg[1] == 0 => Ok(IcmpRepr::EchoRequest {
                ident: u16::from_be_bytes([msg[4], msg[5]]),
                seq: u16::from_be_bytes([msg[6], msg[7]]),
                data: &msg[8..],
            }),
            3 => {
                let quoted = &msg[8..];
                if quoted.len() < IPV4_HEADER_LEN || quoted[0] >> 4 != 4 {
                    return Err(WireError::Truncated);
                }
                let ihl = usize::from(quoted[0] & 0x0f) * 4;
                // RFC 792: the quote holds at least 8 bytes of the TCP header, which
                // include the sequence number the message is validated with.
                if ihl < IPV4_HEADER_LEN || quoted.len() < ihl + 8 || quoted[9] != PROTO_TCP {
                    return Ok(IcmpRepr::Other);
                }
                let ip4 = |o: usize| {
                    Ipv4Addr::new(quoted[o], quoted[o + 1], quoted[o + 2], quoted[o + 3])
                };
                Ok(IcmpRepr::DestUnreachable {
                    code: msg[1],
                    quoted_src: ip4(12),
                    quoted_dst: ip4(16),
                    quoted_src_port: u16::from_be_bytes([quoted[ihl], quoted[ihl + 1]]),
                    quoted_dst_port: u16::from_be_bytes([quoted[ihl + 2], quoted[ihl + 3]]),
                    quoted_seq: u32::from_be_bytes([
                        quoted[ihl + 4],
                        quoted[ihl + 5],
                        quoted[ihl + 6],
                        quoted[ihl + 7],
                    ]),
                    next_hop_mtu: if msg[1] == 4 {
                        u16::from_be_bytes([msg[6], msg[7]])
                    } else {
                        0
                    },
                })
            }
            _ => Ok(IcmpRepr::Other),
        }
    }
}

/// Writes an Ethernet+IPv4+ICMP echo reply and returns the frame length, or 0 if it
/// does not fit in `buf`.
pub fn emit_icmp_echo_reply(
    buf: &mut [u8],
    eth: (MacAddr, MacAddr),
    ip: (Ipv4Addr, Ipv4Addr),
    ident: u16,
    seq: u16,
    data: &[u8],
) -> usize {
    let icmp_len = 8 + data.len();
    let total = ETH_HEADER_LEN + IPV4_HEADER_LEN + icmp_len;
    if total > buf.len() {
        return 0;
    }
    emit_ethernet(buf, eth.0, eth.1, ETHERTYPE_IPV4);
    emit_header(&mut buf[ETH_HEADER_LEN..], ip.0, ip.1, PROTO_ICMP, icmp_len);
    let m = &mut buf[ETH_HEADER_LEN + IPV4_HEADER_LEN..total];
    m[0] = 0;
    m[1] = 0;
    m[2..4].fill(0);
    m[4..6].copy_from_slice(&ident.to_be_bytes());
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    m[8..].copy_from_slice(data);
    let sum = checksum(m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    total
}
