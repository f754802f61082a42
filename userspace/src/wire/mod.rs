//! Parse and emit Ethernet, ARP, IPv4, IPv6, ICMP, ICMPv6, NDP and TCP on top of
//! etherparse. No state.
//!
//! Parsing validates everything a hostile peer could lie about (lengths, IHL, data
//! offset, checksums) and reports a [`WireError`] the stack counts and drops.

mod arp;
pub mod frag;
mod ipv4;
mod ipv6;
pub mod seq;
mod tcp;
pub mod time;

pub use arp::{ArpOp, ArpRepr, emit_arp};
pub use ipv4::{IcmpRepr, Ipv4Info, emit_icmp_echo_reply};
pub use ipv6::{
    ALL_NODES, ETHERTYPE_IPV6, IPV6_HEADER_LEN, IPV6_MIN_MTU, Icmpv6Repr, Ipv6Info,
    MAX_EXTENSION_HEADERS, NdpRepr, QuotedTcp6, emit_icmpv6_echo_reply, emit_icmpv6_error,
    emit_ndp, multicast_mac, ndp_frame_len, solicited_node,
};
pub use seq::SeqNum;
pub use tcp::{MAX_SACK_BLOCKS, TcpFlags, TcpOptions, TcpRepr, emit_tcp, tcp_frame_len};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An Ethernet address.
pub type MacAddr = [u8; 6];
/// The Ethernet broadcast address.
pub const BROADCAST_MAC: MacAddr = [0xff; 6];
/// Length of an Ethernet header (no VLAN tag).
pub const ETH_HEADER_LEN: usize = 14;
/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// Why a frame was dropped. Each variant is a counter in the stack's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its headers say.
    #[error("frame shorter than its headers")]
    Truncated,
    /// A header field with an impossible value.
    #[error("malformed header")]
    Malformed,
    /// The IPv4 header checksum is wrong.
    #[error("bad IPv4 header checksum")]
    BadIpChecksum,
    /// The TCP checksum is wrong.
    #[error("bad TCP checksum")]
    BadTcpChecksum,
    /// The ICMP checksum is wrong.
    #[error("bad ICMP checksum")]
    BadIcmpChecksum,
    /// An IPv4 fragment (the stack does not reassemble).
    #[error("IPv4 fragment")]
    Fragment,
    /// A protocol the stack does not speak.
    #[error("unsupported protocol")]
    Unsupported,
    /// An IPv6 extension header chain RFC 8200 section 4 says to drop: Hop-by-Hop not
    /// first, a Routing header with segments left, an option that says discard, or a
    /// chain too long or cut short (one that hides the upper-layer header).
    #[error("IPv6 extension header dropped")]
    Ipv6Extension,
    /// An IPv6 fragment (the stack does not reassemble them; its segments never need it).
    #[error("IPv6 fragment")]
    Ipv6Fragment,
    /// A neighbour discovery message whose hop limit is not 255: it crossed a router
    /// (RFC 4861 section 7.1).
    #[error("NDP message from off the link")]
    OffLinkNdp,
}

/// A parsed frame, borrowing its payload from the receive buffer.
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    /// An ARP packet.
    Arp(ArpRepr),
    /// A TCP segment.
    Tcp {
        /// Ethernet source address (the previous hop).
        eth_src: MacAddr,
        /// The IPv4 header.
        ip: Ipv4Info,
        /// The segment.
        tcp: TcpRepr<'a>,
    },
    /// An ICMP message.
    Icmp {
        /// Ethernet source address (the previous hop).
        eth_src: MacAddr,
        /// The IPv4 header.
        ip: Ipv4Info,
        /// The message.
        icmp: IcmpRepr<'a>,
    },
    /// A TCP segment over IPv6.
    Tcp6 {
        /// Ethernet source address (the previous hop).
        eth_src: MacAddr,
        /// The IPv6 header.
        ip: Ipv6Info,
        /// The segment.
        tcp: TcpRepr<'a>,
    },
    /// An ICMPv6 message (NDP included).
    Icmp6 {
        /// Ethernet source address (the previous hop).
        eth_src: MacAddr,
        /// The IPv6 header.
        ip: Ipv6Info,
        /// The message.
        icmp: Icmpv6Repr<'a>,
    },
}

/// Which TCP checksums a parse accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumPolicy {
    /// Only complete, correct checksums: what a frame from a wire must carry.
    #[default]
    Strict,
    /// Also a CHECKSUM_PARTIAL frame: one whose checksum field holds the folded
    /// pseudo-header sum, not complemented, because the sender's kernel left the rest to
    /// a "hardware" that a frame from memory (veth) never met. Only for devices whose
    /// frames come from memory: there is no wire to corrupt them.
    AcceptPartial,
}

/// Who completes the TCP checksum of an emitted segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxChecksum {
    /// The stack writes the complete checksum.
    #[default]
    Complete,
    /// The stack writes the pseudo-header sum (as Linux's CHECKSUM_PARTIAL does) and
    /// the device completes it from [`tcp_checksum_location`] on (TX checksum offload).
    Partial,
}

/// Where a device completes the TCP checksum of a frame left [`TxChecksum::Partial`]:
/// `(csum_start, csum_offset)`, the start of the TCP header from the frame's start and
/// the field's offset in it. None for any other frame (ARP, ICMP, an IPv6 header
/// followed by an extension header, a short frame).
pub fn tcp_checksum_location(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < ETH_HEADER_LEN + IPV4_HEADER_LEN {
        return None;
    }
    let ip = &frame[ETH_HEADER_LEN..];
    let start = match u16::from_be_bytes([frame[12], frame[13]]) {
        ETHERTYPE_IPV4 if ip[9] == 6 => ETH_HEADER_LEN + usize::from(ip[0] & 0x0f) * 4,
        // RFC 8200 section 3: the next header is byte 6 of the fixed header.
        ETHERTYPE_IPV6 if ip[6] == 6 => ETH_HEADER_LEN + IPV6_HEADER_LEN,
        _ => return None,
    };
    // RFC 9293 section 3.1: the checksum is bytes 16-17 of the TCP header.
    (start + 18 <= frame.len()).then_some((start as u16, 16))
}

/// What a device does with a [`TxChecksum::Partial`] frame: sums from `start` to the
/// end (the pseudo-header sum is in the field already) and stores the complement at
/// `start + offset`. For devices without offload in tests, and to check a partial frame.
pub fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) {
    let sum = fold(sum(&frame[start..], 0));
    frame[start + offset..start + offset + 2].copy_from_slice(&sum.to_be_bytes());
}

/// A parsed frame, and whether its TCP checksum was partial (accepted by the policy).
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The frame.
    pub frame: Frame<'a>,
    /// Its TCP checksum was the CHECKSUM_PARTIAL signature, not a complete sum.
    pub partial_checksum: bool,
}

/// Parses an Ethernet frame down to ARP, TCP or ICMP, with complete checksums only.
pub fn parse_frame(frame: &[u8]) -> Result<Frame<'_>, WireError> {
    parse_frame_with(frame, ChecksumPolicy::Strict).map(|p| p.frame)
}

/// Parses an Ethernet frame down to ARP, TCP or ICMP under a checksum policy.
pub fn parse_frame_with(frame: &[u8], policy: ChecksumPolicy) -> Result<Parsed<'_>, WireError> {
    let eth = etherparse::Ethernet2Slice::from_slice_without_fcs(frame)
        .map_err(|_| WireError::Truncated)?;
    let eth_src = eth.source();
    match eth.ether_type().0 {
        ETHERTYPE_ARP => Ok(Parsed {
            frame: Frame::Arp(ArpRepr::parse(eth.payload_slice())?),
            partial_checksum: false,
        }),
        ETHERTYPE_IPV4 => parse_ipv4(eth_src, eth.payload_slice(), policy),
        ETHERTYPE_IPV6 => parse_ipv6(eth_src, eth.payload_slice(), policy),
        _ => Err(WireError::Unsupported),
    }
}

/// Parses a whole IPv6 packet as if it came in a frame from `eth_src`.
pub fn parse_ipv6(
    eth_src: MacAddr,
    packet: &[u8],
    policy: ChecksumPolicy,
) -> Result<Parsed<'_>, WireError> {
    let (ip, next, payload) = ipv6::parse(packet)?;
    match next {
        ipv6::NH_TCP => {
            let (tcp, partial_checksum) =
                tcp::parse(IpAddr::V6(ip.src), IpAddr::V6(ip.dst), payload, policy)?;
            Ok(Parsed {
                frame: Frame::Tcp6 { eth_src, ip, tcp },
                partial_checksum,
            })
        }
        ipv6::NH_ICMPV6 => Ok(Parsed {
            frame: Frame::Icmp6 {
                eth_src,
                ip,
                icmp: Icmpv6Repr::parse(&ip, payload)?,
            },
            partial_checksum: false,
        }),
        _ => Err(WireError::Unsupported),
    }
}

/// Parses a whole IPv4 packet (a reassembled datagram) as if it came in a frame from
/// `eth_src`.
pub fn parse_ipv4(
    eth_src: MacAddr,
    packet: &[u8],
    policy: ChecksumPolicy,
) -> Result<Parsed<'_>, WireError> {
    let (ip, protocol, payload) = ipv4::parse(packet)?;
    match protocol {
        ipv4::PROTO_TCP => {
            let (tcp, partial_checksum) =
                tcp::parse(IpAddr::V4(ip.src), IpAddr::V4(ip.dst), payload, policy)?;
            Ok(Parsed {
                frame: Frame::Tcp { eth_src, ip, tcp },
                partial_checksum,
            })
        }
        ipv4::PROTO_ICMP => Ok(Parsed {
            frame: Frame::Icmp {
                eth_src,
                ip,
                icmp: IcmpRepr::parse(payload)?,
            },
            partial_checksum: false,
        }),
        _ => Err(WireError::Unsupported),
    }
}

/// Writes the Ethernet header into `buf[..14]`.
pub fn emit_ethernet(buf: &mut [u8], src: MacAddr, dst: MacAddr, ethertype: u16) {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Ones' complement sum of `data` (RFC 1071) added to `acc`, eight bytes per step.
/// Words are summed in native byte order; RFC 1071 section 2(B) lets the byte swap wait
/// until the end (see [`fold`]).
#[inline]
fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Add the two 32-bit halves; 64 bits leave room for 2^32 of them without overflow.
        acc += (v & 0xffff_ffff) + (v >> 32);
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        acc += u64::from(u16::from_ne_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [last] = rest {
        acc += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    acc
}

/// Folds a native-order sum to 16 bits and returns its ones' complement, as the value
/// to write big-endian into a header.
#[inline]
fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::from_be(!(acc as u16))
}

/// RFC 1071 checksum: the ones' complement of the ones' complement sum.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum(data, 0))
}

/// RFC 1071 checksum of `data` with a pseudo-header sum from [`pseudo_sum_v6`].
fn checksum_with(data: &[u8], pseudo: u64) -> u16 {
    fold(sum(data, pseudo))
}

/// The RFC 9293 section 3.1 pseudo-header of a TCP segment of `len` bytes.
fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> [u8; 12] {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..].copy_from_slice(&(len as u16).to_be_bytes());
    pseudo
}

/// The sum of the RFC 8200 section 8.1 pseudo-header: addresses, upper-layer length
/// (32 bits) and next header.
fn pseudo_sum_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: usize) -> u64 {
    let mut pseudo = [0u8; 40];
    pseudo[..16].copy_from_slice(&src.octets());
    pseudo[16..32].copy_from_slice(&dst.octets());
    pseudo[32..36].copy_from_slice(&(len as u32).to_be_bytes());
    pseudo[39] = next_header;
    sum(&pseudo, 0)
}

/// The pseudo-header sum of a TCP segment of `len` bytes between `src` and `dst`
/// (mixed families never meet: the IPv4 sum is taken then).
#[inline]
fn tcp_pseudo_sum(src: IpAddr, dst: IpAddr, len: usize) -> u64 {
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => pseudo_sum_v6(s, d, 6, len),
        (IpAddr::V4(s), IpAddr::V4(d)) => sum(&pseudo_header(s, d, len), 0),
        _ => 0,
    }
}

/// TCP checksum over the pseudo-header (RFC 9293 section 3.1, RFC 8200 section 8.1)
/// and the segment.
#[inline]
pub fn tcp_checksum(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, segment: &[u8]) -> u16 {
    match (src.into(), dst.into()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => tcp_checksum_v4(s, d, segment),
        (IpAddr::V6(s), IpAddr::V6(d)) => tcp_checksum_v6(s, d, segment),
        _ => fold(sum(segment, 0)),
    }
}

/// [`tcp_checksum`] over IPv4 (RFC 9293 section 3.1).
pub(crate) fn tcp_checksum_v4(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let pseudo = pseudo_header(src, dst, segment.len());
    fold(sum(segment, sum(&pseudo, 0)))
}

/// [`tcp_checksum`] over IPv6 (RFC 8200 section 8.1).
pub(crate) fn tcp_checksum_v6(src: Ipv6Addr, dst: Ipv6Addr, segment: &[u8]) -> u16 {
    fold(sum(segment, pseudo_sum_v6(src, dst, 6, segment.len())))
}

/// What a CHECKSUM_PARTIAL segment of `len` bytes carries in its checksum field: the
/// folded pseudo-header sum, not complemented (Linux's `~tcp_v4_check(len, s, d, 0)`).
pub fn partial_tcp_checksum(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, len: usize) -> u16 {
    !fold(tcp_pseudo_sum(src.into(), dst.into(), len))
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &MacAddr) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod ipv6_tests;
#[cfg(test)]
mod tests;
