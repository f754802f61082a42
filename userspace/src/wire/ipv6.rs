//! IPv6 (RFC 8200) with the extension headers a TCP segment can carry, ICMPv6 (RFC 4443)
//! and the neighbour discovery messages (RFC 4861) the stack uses.
use super::{ETH_HEADER_LEN, MacAddr, WireError, checksum_with, emit_ethernet, pseudo_sum_v6};
use std::net::Ipv6Addr;

/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// The smallest MTU every IPv6 link has (RFC 8200 section 5).
pub const IPV6_MIN_MTU: u16 = 1280;

pub(super) const NH_HOP_BY_HOP: u8 = 0;
pub(super) const NH_TCP: u8 = 6;
pub(super) const NH_ROUTING: u8 = 43;
pub(super) const NH_FRAGMENT: u8 = 44;
pub(super) const NH_ICMPV6: u8 = 58;
pub(super) const NH_NONE: u8 = 59;
pub(super) const NH_DEST_OPTS: u8 = 60;

/// Extension headers walked before giving up: a longer chain is one meant to hide the
/// upper-layer header (RFC 7112, RFC 8200 section 4.1), dropped.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// The parts of an IPv6 header the stack needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Info {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Hop limit (255 on NDP messages from the link, RFC 4861 section 7.1).
    pub hop_limit: u8,
}

/// Validates an IPv6 header and walks its extension headers (RFC 8200 section 4);
/// returns it, the upper-layer protocol and its payload.
pub(super) fn parse(packet: &[u8]) -> Result<(Ipv6Info, u8, &[u8]), WireError> {
    if packet.len() < IPV6_HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let header = etherparse::Ipv6HeaderSlice::from_slice(packet).map_err(|e| match e {
        etherparse::err::ipv6::HeaderSliceError::Len(_) => WireError::Truncated,
        _ => WireError::Malformed,
    })?;
    let payload_len = usize::from(header.payload_length());
    // A payload length of 0 means a jumbogram (RFC 2675), which no Ethernet carries.
    if payload_len == 0 && header.next_header().0 != NH_NONE {
        return Err(WireError::Malformed);
    }
    if IPV6_HEADER_LEN + payload_len > packet.len() {
        return Err(WireError::Truncated);
    }
    let ip = Ipv6Info {
        src: header.source_addr(),
        dst: header.destination_addr(),
        hop_limit: header.hop_limit(),
    };
    // RFC 4291 2.7: a multicast source is never valid.
    if ip.src.is_multicast() {
        return Err(WireError::Malformed);
    }
    let body = &packet[IPV6_HEADER_LEN..IPV6_HEADER_LEN + payload_len];
    let (next, offset) = skip_extensions(header.next_header().0, body, true)?;
    Ok((ip, next, &body[offset..]))
}

/// Walks the extension headers starting with `next` over `body`; returns the
/// upper-layer protocol and where its header starts. `strict` applies RFC 8200 section 4
/// to a packet we receive; a quoted packet in an ICMPv6 error is only skipped through.
fn skip_extensions(mut next: u8, body: &[u8], strict: bool) -> Result<(u8, usize), WireError> {
    let mut offset = 0;
    for n in 0..=MAX_EXTENSION_HEADERS {
        match next {
            NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS => {}
            NH_FRAGMENT => return Err(WireError::Ipv6Fragment),
            _ => return Ok((next, offset)),
        }
        if n == MAX_EXTENSION_HEADERS {
            break;
        }
        // RFC 8200 4.3: Hop-by-Hop only right after the IPv6 header.
        if strict && next == NH_HOP_BY_HOP && n != 0 {
            return Err(WireError::Ipv6Extension);
        }
        // The chain must hold the upper-layer header (RFC 7112): running off the end
        // is a truncated (or hiding) chain.
        let h = body
            .get(offset..offset + 2)
            .ok_or(WireError::Ipv6Extension)?;
        let len = (usize::from(h[1]) + 1) * 8;
        let ext = body
            .get(offset..offset + len)
            .ok_or(WireError::Ipv6Extension)?;
        if strict {
            match next {
                // RFC 8200 4.4: a Routing header with segments left is for a router.
                NH_ROUTING if ext.len() < 4 || ext[3] != 0 => {
                    return Err(WireError::Ipv6Extension);
                }
                NH_HOP_BY_HOP | NH_DEST_OPTS => check_options(&ext[2..])?,
                _ => {}
            }
        }
        next = ext[0];
        offset += len;
    }
    Err(WireError::Ipv6Extension)
}

/// RFC 8200 4.2: options whose type's two high bits are 00 are skipped; the others say
/// discard (the ICMPv6 Parameter Problem they may ask for is not sent: counted instead).
fn check_options(mut opts: &[u8]) -> Result<(), WireError> {
    while let Some(&kind) = opts.first() {
        if kind == 0 {
            opts = &opts[1..]; // Pad1
            continue;
        }
        let len = 2 + usize::from(*opts.get(1).ok_or(WireError::Ipv6Extension)?);
        if len > opts.len() {
            return Err(WireError::Ipv6Extension);
        }
        if kind != 1 && kind >> 6 != 0 {
            return Err(WireError::Ipv6Extension);
        }
        opts = &opts[len..];
    }
    Ok(())
}

/// Writes a 40-byte IPv6 header.
pub(super) fn emit_header(
    buf: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    payload_len: usize,
    hop_limit: u8,
) {
    let b = &mut buf[..IPV6_HEADER_LEN];
    b[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    b[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    b[6] = next_header;
    b[7] = hop_limit;
    b[8..24].copy_from_slice(&src.octets());
    b[24..40].copy_from_slice(&dst.octets());
}

/// The Ethernet address of an IPv6 multicast address (RFC 2464 section 7): 33:33 and
/// its last 32 bits.
pub fn multicast_mac(ip: Ipv6Addr) -> MacAddr {
    let o = ip.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The solicited-node multicast address of `ip` (RFC 4291 section 2.7.1).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// All-nodes multicast, ff02::1.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The first bytes of one of our TCP segments, quoted by an ICMPv6 error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotedTcp6 {
    /// Source of the quoted packet (ours).
    pub src: Ipv6Addr,
    /// Destination of the quoted packet.
    pub dst: Ipv6Addr,
    /// Source port of the quoted segment.
    pub src_port: u16,
    /// Destination port of the quoted segment.
    pub dst_port: u16,
    /// Sequence number of the quoted segment, to validate the message (RFC 5927 4.1).
    pub seq: u32,
}

impl QuotedTcp6 {
    /// The quoted IPv6 packet must hold a TCP header's first 8 bytes; else `None`.
    fn parse(quoted: &[u8]) -> Result<Option<Self>, WireError> {
        if quoted.len() < IPV6_HEADER_LEN || quoted[0] >> 4 != 6 {
            return Err(WireError::Truncated);
        }
        let addr = |o: usize| -> Ipv6Addr {
            <[u8; 16]>::try_from(&quoted[o..o + 16])
                .unwrap_or([0; 16])
                .into()
        };
        let body = &quoted[IPV6_HEADER_LEN..];
        let Ok((NH_TCP, offset)) = skip_extensions(quoted[6], body, false) else {
            return Ok(None);
        };
        let Some(t) = body.get(offset..offset + 8) else {
            return Ok(None);
        };
        Ok(Some(QuotedTcp6 {
            src: addr(8),
            dst: addr(24),
            src_port: u16::from_be_bytes([t[0], t[1]]),
            dst_port: u16::from_be_bytes([t[2], t[3]]),
            seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        }))
    }
}

/// ICMPv6 messages the stack acts on (RFC 4443, RFC 4861).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmpv6Repr<'a> {
    /// Echo request (RFC 4443 4.1).
    EchoRequest {
        /// Identifier, echoed back.
        ident: u16,
        /// Sequence number, echoed back.
        seq: u16,
        /// Payload, echoed back.
        data: &'a [u8],
    },
    /// Destination unreachable (RFC 4443 3.1) quoting one of our TCP segments.
    DestUnreachable {
        /// Code (0 no route, 1 prohibited, 3 address, 4 port unreachable, ...).
        code: u8,
        /// The quoted segment.
        quoted: QuotedTcp6,
    },
    /// Packet too big (RFC 4443 3.2) quoting one of our TCP segments.
    PacketTooBig {
        /// The next hop's MTU.
        mtu: u32,
        /// The quoted segment.
        quoted: QuotedTcp6,
    },
    /// Neighbour solicitation (RFC 4861 4.3).
    NeighborSolicit {
        /// The address asked for.
        target: Ipv6Addr,
        /// The source link-layer address option, if present.
        source_mac: Option<MacAddr>,
    },
    /// Neighbour advertisement (RFC 4861 4.4).
    NeighborAdvert {
        /// The address advertised.
        target: Ipv6Addr,
        /// Router flag.
        router: bool,
        /// Solicited flag.
        solicited: bool,
        /// Override flag.
        override_: bool,
        /// The target link-layer address option, if present.
        target_mac: Option<MacAddr>,
    },
    /// Any other ICMPv6 message (or an error quoting no TCP segment).
    Other,
}

const NDP_SOURCE_LL: u8 = 1;
const NDP_TARGET_LL: u8 = 2;

impl<'a> Icmpv6Repr<'a> {
    /// Parses an ICMPv6 message carried in a packet with header `ip` (the checksum
    /// covers the RFC 8200 8.1 pseudo-header; NDP is checked as RFC 4861 7.1 says).
    pub(super) fn parse(ip: &Ipv6Info, msg: &'a [u8]) -> Result<Self, WireError> {
        if msg.len() < 8 {
            return Err(WireError::Truncated);
        }
        let sum = pseudo_sum_v6(ip.src, ip.dst, NH_ICMPV6, msg.len());
        if checksum_with(msg, sum) != 0 {
            return Err(WireError::BadIcmpChecksum);
        }
        let (kind, code) = (msg[0], msg[1]);
        match kind {
            128 if code == 0 => Ok(Icmpv6Repr::EchoRequest {
                ident: u16::from_be_bytes([msg[4], msg[5]]),
                seq: u16::from_be_bytes([msg[6], msg[7]]),
                data: &msg[8..],
            }),
            1 => Ok(match QuotedTcp6::parse(&msg[8..])? {
                Some(quoted) => Icmpv6Repr::DestUnreachable { code, quoted },
                None => Icmpv6Repr::Other,
            }),
            2 => Ok(match QuotedTcp6::parse(&msg[8..])? {
                Some(quoted) => Icmpv6Repr::PacketTooBig {
                    mtu: u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]),
                    quoted,
                },
                None => Icmpv6Repr::Other,
            }),
            135 | 136 => Self::parse_ndp(ip, msg),
            _ => Ok(Icmpv6Repr::Other),
        }
    }

    /// RFC 4861 7.1.1 and 7.1.2: the validity checks of NS and NA.
    fn parse_ndp(ip: &Ipv6Info, msg: &'a [u8]) -> Result<Self, WireError> {
        // From off the link (a router decremented the hop limit): never trusted.
        if ip.hop_limit != 255 {
            return Err(WireError::OffLinkNdp);
        }
        if msg[1] != 0 {
            return Err(WireError::Malformed);
        }
        if msg.len() < 24 {
            return Err(WireError::Truncated);
        }
        let target: Ipv6Addr = <[u8; 16]>::try_from(&msg[8..24]).unwrap_or([0; 16]).into();
        if target.is_multicast() {
            return Err(WireError::Malformed);
        }
        let mut ll = None;
        let mut opts = &msg[24..];
        while opts.len() >= 2 {
            let len = usize::from(opts[1]) * 8;
            if len == 0 || len > opts.len() {
                return Err(WireError::Malformed);
            }
            let want = if msg[0] == 135 {
                NDP_SOURCE_LL
            } else {
                NDP_TARGET_LL
            };
            if opts[0] == want && len == 8 {
                ll = Some(<MacAddr>::try_from(&opts[2..8]).unwrap_or([0; 6]));
            }
            opts = &opts[len..];
        }
        if !opts.is_empty() {
            return Err(WireError::Malformed);
        }
        if msg[0] == 135 {
            // From the unspecified address (DAD): to a solicited-node address, no option.
            if ip.src.is_unspecified() && (ll.is_some() || !is_solicited_node(ip.dst)) {
                return Err(WireError::Malformed);
            }
            Ok(Icmpv6Repr::NeighborSolicit {
                target,
                source_mac: ll,
            })
        } else {
            let solicited = msg[4] & 0x40 != 0;
            if solicited && ip.dst.is_multicast() {
                return Err(WireError::Malformed);
            }
            Ok(Icmpv6Repr::NeighborAdvert {
                target,
                router: msg[4] & 0x80 != 0,
                solicited,
                override_: msg[4] & 0x20 != 0,
                target_mac: ll,
            })
        }
    }
}

fn is_solicited_node(ip: Ipv6Addr) -> bool {
    let o = ip.octets();
    o[..13] == [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff]
}

/// The NDP messages the stack sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdpRepr {
    /// A solicitation for `target`, with our link-layer address unless sent from `::`.
    Solicit {
        /// The address asked for.
        target: Ipv6Addr,
        /// Our Ethernet address, as the source link-layer option (`None` for DAD).
        source_mac: Option<MacAddr>,
    },
    /// An advertisement of `target` at `target_mac`.
    Advert {
        /// The address advertised.
        target: Ipv6Addr,
        /// Its Ethernet address (the target link-layer option).
        target_mac: MacAddr,
        /// An answer to a solicitation.
        solicited: bool,
        /// Replace cached entries.
        override_: bool,
    },
}

/// Length of the Ethernet frame [`emit_ndp`] writes.
pub fn ndp_frame_len(ndp: &NdpRepr) -> usize {
    let opt = match ndp {
        NdpRepr::Solicit {
            source_mac: None, ..
        } => 0,
        _ => 8,
    };
    ETH_HEADER_LEN + IPV6_HEADER_LEN + 24 + opt
}

/// Writes an Ethernet+IPv6+NDP frame (hop limit 255, RFC 4861 7.1) and returns its
/// length, 0 if it does not fit.
pub fn emit_ndp(
    buf: &mut [u8],
    eth: (MacAddr, MacAddr),
    ip: (Ipv6Addr, Ipv6Addr),
    ndp: &NdpRepr,
) -> usize {
    // The target address, then the one link-layer option (RFC 4861 4.6.1).
    let mut body = [0u8; 24];
    let (kind_code, field, option) = match *ndp {
        NdpRepr::Solicit { target, source_mac } => {
            body[..16].copy_from_slice(&target.octets());
            ((135, 0), 0, source_mac.map(|mac| (NDP_SOURCE_LL, mac)))
        }
        NdpRepr::Advert {
            target,
            target_mac,
            solicited,
            override_,
        } => {
            body[..16].copy_from_slice(&target.octets());
            let flags = u32::from(solicited) << 30 | u32::from(override_) << 29;
            ((136, 0), flags, Some((NDP_TARGET_LL, target_mac)))
        }
    };
    let len = match option {
        Some((kind, mac)) => {
            body[16] = kind;
            body[17] = 1;
            body[18..24].copy_from_slice(&mac);
            24
        }
        None => 16,
    };
    emit_icmpv6(buf, eth, ip, 255, kind_code, field, &body[..len])
}

/// Writes an Ethernet+IPv6+ICMPv6 echo reply (RFC 4443 4.2) and returns the frame
/// length, 0 if it does not fit in `buf`.
pub fn emit_icmpv6_echo_reply(
    buf: &mut [u8],
    eth: (MacAddr, MacAddr),
    ip: (Ipv6Addr, Ipv6Addr),
    ident: u16,
    seq: u16,
    data: &[u8],
) -> usize {
    let field = u32::from(ident) << 16 | u32::from(seq);
    emit_icmpv6(buf, eth, ip, 64, (129, 0), field, data)
}

/// Writes an ICMPv6 error (type, code, 4-byte field) quoting `packet` (as much as fits
/// in the 1280-byte minimum MTU, RFC 4443 2.4(c)); for tests and peers' simulation.
pub fn emit_icmpv6_error(
    buf: &mut [u8],
    eth: (MacAddr, MacAddr),
    ip: (Ipv6Addr, Ipv6Addr),
    kind_code: (u8, u8),
    field: u32,
    packet: &[u8],
) -> usize {
    let quote = packet
        .len()
        .min(usize::from(IPV6_MIN_MTU) - IPV6_HEADER_LEN - 8);
    emit_icmpv6(buf, eth, ip, 64, kind_code, field, &packet[..quote])
}

/// Writes an Ethernet+IPv6+ICMPv6 message with a hop limit: type and code, the 4-byte
/// field after the checksum, and `body`. Its length, 0 if it does not fit.
fn emit_icmpv6(
    buf: &mut [u8],
    eth: (MacAddr, MacAddr),
    ip: (Ipv6Addr, Ipv6Addr),
    hop_limit: u8,
    kind_code: (u8, u8),
    field: u32,
    body: &[u8],
) -> usize {
    let icmp_len = 8 + body.len();
    let total = ETH_HEADER_LEN + IPV6_HEADER_LEN + icmp_len;
    if total > buf.len() {
        return 0;
    }
    emit_ethernet(buf, eth.0, eth.1, ETHERTYPE_IPV6);
    emit_header(
        &mut buf[ETH_HEADER_LEN..],
        ip.0,
        ip.1,
        NH_ICMPV6,
        icmp_len,
        hop_limit,
    );
    let m = &mut buf[ETH_HEADER_LEN + IPV6_HEADER_LEN..total];
    m[0] = kind_code.0;
    m[1] = kind_code.1;
    m[2..4].fill(0);
    m[4..8].copy_from_slice(&field.to_be_bytes());
    m[8..].copy_from_slice(body);
    let sum = checksum_with(m, pseudo_sum_v6(ip.0, ip.1, NH_ICMPV6, icmp_len));
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    total
}
