//! IPv6, ICMPv6 and NDP: whole packets, and malformed or truncated ones.
use super::*;

const MAC_A: MacAddr = [2, 0, 0, 0, 0, 1];
const MAC_B: MacAddr = [2, 0, 0, 0, 0, 2];
const IP_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const IP_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

fn data_segment() -> TcpRepr<'static> {
    TcpRepr {
        src_port: 40000,
        dst_port: 80,
        seq: SeqNum(1000),
        ack: Some(SeqNum(2000)),
        flags: TcpFlags::PSH_ACK,
        window: 512,
        options: TcpOptions {
            timestamps: Some((7, 9)),
            ..Default::default()
        },
        payload: b"hello",
    }
}

fn emit6(repr: &TcpRepr<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 1600];
    let n = emit_tcp(
        &mut buf,
        (MAC_A, MAC_B),
        (IP_A, IP_B),
        repr,
        5,
        |_| {},
        crate::wire::TxChecksum::Complete,
    );
    assert_ne!(n, 0);
    buf.truncate(n);
    buf
}

/// Inserts extension headers (each `[next, len, ...]` with its next-header byte
/// patched) between the IPv6 header and the TCP segment of `frame`.
fn with_extensions(frame: &[u8], exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let ip = ETH_HEADER_LEN;
    let mut out = frame[..ip + IPV6_HEADER_LEN].to_vec();
    let mut chain = Vec::new();
    let mut next_of_prev = 6u8; // TCP at the end
    for (kind, body) in exts.iter().rev() {
        let mut h = body.clone();
        h[0] = next_of_prev;
        next_of_prev = *kind;
        chain.splice(0..0, h);
    }
    out[ip + 6] = next_of_prev;
    out.extend_from_slice(&chain);
    out.extend_from_slice(&frame[ip + IPV6_HEADER_LEN..]);
    let plen = (out.len() - ip - IPV6_HEADER_LEN) as u16;
    out[ip + 4..ip + 6].copy_from_slice(&plen.to_be_bytes());
    out
}

#[test]
fn tcp_over_ipv6_roundtrip() {
    let frame = emit6(&data_segment());
    assert_eq!(frame.len(), 14 + 40 + 32 + 5);
    assert_eq!(u16::from_be_bytes([frame[12], frame[13]]), ETHERTYPE_IPV6);
    // etherparse agrees on the layout and the RFC 8200 8.1 checksum.
    let sliced = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
    let Some(etherparse::TransportSlice::Tcp(t)) = sliced.transport else {
        panic!("no TCP");
    };
    assert_eq!(
        t.calc_checksum_ipv6(IP_A.octets(), IP_B.octets()).unwrap(),
        t.checksum()
    );
    match parse_frame(&frame).unwrap() {
        Frame::Tcp6 { eth_src, ip, tcp } => {
            assert_eq!(eth_src, MAC_A);
            assert_eq!((ip.src, ip.dst, ip.hop_limit), (IP_A, IP_B, 64));
            assert_eq!(tcp.payload, b"hello");
            assert_eq!(tcp.seq, SeqNum(1000));
            assert_eq!(tcp.options.timestamps, Some((7, 9)));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn corrupted_ipv6_segment_fails_the_pseudo_header_checksum() {
    let frame = emit6(&data_segment());
    // A flipped bit in the source address is only caught by the pseudo-header.
    let mut bad = frame.clone();
    bad[14 + 8 + 15] ^= 1;
    assert_eq!(parse_frame(&bad).unwrap_err(), WireError::BadTcpChecksum);
    let mut bad = frame;
    let last = bad.len() - 1;
    bad[last] ^= 0x80;
    assert_eq!(parse_frame(&bad).unwrap_err(), WireError::BadTcpChecksum);
}

#[test]
fn partial_checksum_over_ipv6_is_accepted_only_by_policy() {
    let mut frame = emit6(&data_segment());
    let seg_len = frame.len() - 54;
    let partial = partial_tcp_checksum(IP_A, IP_B, seg_len);
    frame[54 + 16..54 + 18].copy_from_slice(&partial.to_be_bytes());
    assert_eq!(parse_frame(&frame).unwrap_err(), WireError::BadTcpChecksum);
    let parsed = parse_frame_with(&frame, ChecksumPolicy::AcceptPartial).unwrap();
    assert!(parsed.partial_checksum);
}

#[test]
fn truncated_and_lying_ipv6_headers_are_errors() {
    let frame = emit6(&data_segment());
    for cut in [14, 20, 53, 54, 60, 73] {
        assert!(parse_frame(&frame[..cut]).is_err(), "cut at {cut}");
    }
    // Payload length longer than the frame.
    let mut long = frame.clone();
    long[18..20].copy_from_slice(&2000u16.to_be_bytes());
    assert_eq!(parse_frame(&long).unwrap_err(), WireError::Truncated);
    // Version 4 in an IPv6 EtherType.
    let mut v = frame.clone();
    v[14] = 0x40;
    assert!(parse_frame(&v).is_err());
    // A jumbogram's zero payload length.
    let mut jumbo = frame.clone();
    jumbo[18..20].fill(0);
    assert_eq!(parse_frame(&jumbo).unwrap_err(), WireError::Malformed);
    // A multicast source.
    let mut mc = frame.clone();
    mc[22] = 0xff;
    assert_eq!(parse_frame(&mc).unwrap_err(), WireError::Malformed);
    // Ethernet padding after the payload is ignored.
    let mut padded = frame;
    padded.extend_from_slice(&[0; 6]);
    assert!(matches!(parse_frame(&padded), Ok(Frame::Tcp6 { .. })));
}

#[test]
fn extension_headers_are_skipped_or_dropped_as_rfc_8200_says() {
    let frame = emit6(&data_segment());
    let pad = |kind: u8| (kind, vec![0, 0, 1, 4, 0, 0, 0, 0]); // PadN of 4
    // Hop-by-Hop first, then Destination Options: skipped, the segment parses.
    let ok = with_extensions(&frame, &[pad(0), pad(60)]);
    assert!(matches!(parse_frame(&ok), Ok(Frame::Tcp6 { .. })));
    // Routing header with no segments left: ignored (RFC 8200 4.4).
    let rh = (43, vec![0, 0, 4, 0, 0, 0, 0, 0]);
    let ok = with_extensions(&frame, &[rh]);
    assert!(matches!(parse_frame(&ok), Ok(Frame::Tcp6 { .. })));
    // ... with segments left: for a router, dropped.
    let rh = (43, vec![0, 0, 4, 1, 0, 0, 0, 0]);
    let bad = with_extensions(&frame, &[rh]);
    assert_eq!(parse_frame(&bad).unwrap_err(), WireError::Ipv6Extension);
    // Hop-by-Hop after another header.
    let bad = with_extensions(&frame, &[pad(60), pad(0)]);
    assert_eq!(parse_frame(&bad).unwrap_err(), WireError::Ipv6Extension);
    // An option whose type says discard (high bits 01).
    let bad = with_extensions(&frame, &[(60, vec![0, 0, 0x47, 4, 0, 0, 0, 0])]);
    assert_eq!(parse_frame(&bad).unwrap_err(), WireError::Ipv6Extension);
    // An option running past its header.
    let bad = with_extensions(&frame, &[(60, vec![0, 0, 1, 9, 0, 0, 0, 0])]);
    assert_eq!(parse_frame(&bad).unwrap_err(), WireError::Ipv6Extension);
    // A fragment header.
    let bad = with_extensions(&frame, &[(44, vec![0, 0, 0, 1, 0, 0, 0, 1])]);
    assert_eq!(parse_frame(&bad).unwrap_err(), WireError::Ipv6Fragment);
    // A chain longer than the bound hides the TCP header.
    let long: Vec<_> = (0..=MAX_EXTENSION_HEADERS).map(|_| pad(60)).collect();
    let bad = with_extensions(&frame, &long);
    assert_eq!(parse_frame(&bad).unwrap_err(), WireError::Ipv6Extension);
    // A header length that runs past the packet.
    let mut bad = with_extensions(&frame, &[pad(60)]);
    bad[54 + 1] = 200;
    assert_eq!(parse_frame(&bad).unwrap_err(), WireError::Ipv6Extension);
    // No next header, and an unknown upper layer.
    let mut none = with_extensions(&frame, &[pad(60)]);
    none[54] = 59;
    assert_eq!(parse_frame(&none).unwrap_err(), WireError::Unsupported);
    let mut udp = frame;
    udp[20] = 17;
    assert_eq!(parse_frame(&udp).unwrap_err(), WireError::Unsupported);
}

#[test]
fn icmpv6_echo_reply_roundtrip() {
    let mut buf = [0u8; 200];
    let n = emit_icmpv6_echo_reply(&mut buf, (MAC_A, MAC_B), (IP_A, IP_B), 7, 9, b"ping");
    assert_eq!(n, 14 + 40 + 8 + 4);
    {
        let sliced = etherparse::SlicedPacket::from_ethernet(&buf[..n]).unwrap();
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = sliced.transport else {
            panic!("no ICMPv6");
        };
        assert_eq!(
            icmp.icmp_type(),
            etherparse::Icmpv6Type::EchoReply(etherparse::IcmpEchoHeader { id: 7, seq: 9 })
        );
    }
    // An echo request parses with its fields; a corrupt one fails the checksum.
    buf[54] = 128;
    buf[56..58].fill(0);
    let ip = Ipv6Info {
        src: IP_A,
        dst: IP_B,
        hop_limit: 64,
    };
    let sum = checksum_with(&buf[54..n], pseudo_sum_v6(IP_A, IP_B, 58, n - 54));
    buf[56..58].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(
        parse_frame(&buf[..n]).unwrap(),
        Frame::Icmp6 {
            eth_src: MAC_A,
            ip,
            icmp: Icmpv6Repr::EchoRequest {
                ident: 7,
                seq: 9,
                data: b"ping"
            }
        }
    );
    buf[n - 1] ^= 1;
    assert_eq!(
        parse_frame(&buf[..n]).unwrap_err(),
        WireError::BadIcmpChecksum
    );
}

#[test]
fn icmpv6_errors_quote_the_segment_they_are_about() {
    let segment = emit6(&data_segment());
    let quoted = &segment[14..];
    let mut buf = [0u8; 1600];
    let router = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
    let n = emit_icmpv6_error(
        &mut buf,
        (MAC_B, MAC_A),
        (router, IP_A),
        (2, 0),
        1400,
        quoted,
    );
    let want = QuotedTcp6 {
        src: IP_A,
        dst: IP_B,
        src_port: 40000,
        dst_port: 80,
        seq: 1000,
    };
    let icmp_of = |frame: &[u8]| match parse_frame(frame).unwrap() {
        Frame::Icmp6 { icmp, .. } => format!("{icmp:?}"),
        other => panic!("unexpected {other:?}"),
    };
    let ptb = Icmpv6Repr::PacketTooBig {
        mtu: 1400,
        quoted: want,
    };
    assert_eq!(icmp_of(&buf[..n]), format!("{ptb:?}"));
    let n = emit_icmpv6_error(&mut buf, (MAC_B, MAC_A), (router, IP_A), (1, 4), 0, quoted);
    let unreachable = Icmpv6Repr::DestUnreachable {
        code: 4,
        quoted: want,
    };
    assert_eq!(icmp_of(&buf[..n]), format!("{unreachable:?}"));
    // A quote too short to hold the ports and sequence number is no TCP's.
    let n = emit_icmpv6_error(
        &mut buf,
        (MAC_B, MAC_A),
        (router, IP_A),
        (2, 0),
        1400,
        &quoted[..44],
    );
    assert!(matches!(
        parse_frame(&buf[..n]),
        Ok(Frame::Icmp6 {
            icmp: Icmpv6Repr::Other,
            ..
        })
    ));
    // A quote shorter than an IPv6 header is truncated.
    let n = emit_icmpv6_error(
        &mut buf,
        (MAC_B, MAC_A),
        (router, IP_A),
        (2, 0),
        1400,
        &quoted[..20],
    );
    assert_eq!(parse_frame(&buf[..n]).unwrap_err(), WireError::Truncated);
}

#[test]
fn ndp_solicit_and_advert_roundtrip() {
    let mut buf = [0u8; 200];
    let group = solicited_node(IP_B);
    assert_eq!(group, "ff02::1:ff00:2".parse::<Ipv6Addr>().unwrap());
    assert_eq!(multicast_mac(group), [0x33, 0x33, 0xff, 0, 0, 2]);
    let ns = NdpRepr::Solicit {
        target: IP_B,
        source_mac: Some(MAC_A),
    };
    let n = emit_ndp(&mut buf, (MAC_A, multicast_mac(group)), (IP_A, group), &ns);
    assert_eq!(n, ndp_frame_len(&ns));
    assert_eq!(buf[14 + 7], 255, "hop limit 255 (RFC 4861 7.1)");
    match parse_frame(&buf[..n]).unwrap() {
        Frame::Icmp6 { icmp, ip, .. } => {
            assert_eq!(ip.dst, group);
            assert_eq!(
                icmp,
                Icmpv6Repr::NeighborSolicit {
                    target: IP_B,
                    source_mac: Some(MAC_A)
                }
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let na = NdpRepr::Advert {
        target: IP_B,
        target_mac: MAC_B,
        solicited: true,
        override_: true,
    };
    let n = emit_ndp(&mut buf, (MAC_B, MAC_A), (IP_B, IP_A), &na);
    let sliced = etherparse::SlicedPacket::from_ethernet(&buf[..n]).unwrap();
    assert!(matches!(
        sliced.transport,
        Some(etherparse::TransportSlice::Icmpv6(_))
    ));
    match parse_frame(&buf[..n]).unwrap() {
        Frame::Icmp6 { icmp, .. } => assert_eq!(
            icmp,
            Icmpv6Repr::NeighborAdvert {
                target: IP_B,
                router: false,
                solicited: true,
                override_: true,
                target_mac: Some(MAC_B)
            }
        ),
        other => panic!("unexpected {other:?}"),
    }
}

/// Rewrites the hop limit of an NDP frame and fixes nothing else (it is not covered by
/// the checksum).
fn with_hop_limit(frame: &[u8], hop_limit: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[14 + 7] = hop_limit;
    f
}

#[test]
fn bad_ndp_is_dropped() {
    let mut buf = [0u8; 200];
    let group = solicited_node(IP_B);
    let ns = NdpRepr::Solicit {
        target: IP_B,
        source_mac: Some(MAC_A),
    };
    let n = emit_ndp(&mut buf, (MAC_A, multicast_mac(group)), (IP_A, group), &ns);
    // From off the link: a router lowered the hop limit.
    let off_link = with_hop_limit(&buf[..n], 254);
    assert_eq!(parse_frame(&off_link).unwrap_err(), WireError::OffLinkNdp);
    // DAD from the unspecified address must not carry a source link-layer option.
    let n = emit_ndp(
        &mut buf,
        (MAC_A, multicast_mac(group)),
        (Ipv6Addr::UNSPECIFIED, group),
        &ns,
    );
    assert_eq!(parse_frame(&buf[..n]).unwrap_err(), WireError::Malformed);
    // ... and go to a solicited-node group.
    let dad = NdpRepr::Solicit {
        target: IP_B,
        source_mac: None,
    };
    let n = emit_ndp(
        &mut buf,
        (MAC_A, MAC_B),
        (Ipv6Addr::UNSPECIFIED, IP_B),
        &dad,
    );
    assert_eq!(parse_frame(&buf[..n]).unwrap_err(), WireError::Malformed);
    let n = emit_ndp(
        &mut buf,
        (MAC_A, multicast_mac(group)),
        (Ipv6Addr::UNSPECIFIED, group),
        &dad,
    );
    assert!(parse_frame(&buf[..n]).is_ok());
    // A solicited advertisement to a multicast address.
    let na = NdpRepr::Advert {
        target: IP_B,
        target_mac: MAC_B,
        solicited: true,
        override_: true,
    };
    let n = emit_ndp(&mut buf, (MAC_B, MAC_A), (IP_B, ALL_NODES), &na);
    assert_eq!(parse_frame(&buf[..n]).unwrap_err(), WireError::Malformed);
    // A zero-length option (would loop forever).
    let n = emit_ndp(&mut buf, (MAC_B, MAC_A), (IP_B, IP_A), &na);
    let mut zero = buf[..n].to_vec();
    zero[54 + 25] = 0;
    let sum_at = 54 + 2;
    zero[sum_at..sum_at + 2].fill(0);
    let sum = checksum_with(&zero[54..], pseudo_sum_v6(IP_B, IP_A, 58, n - 54));
    zero[sum_at..sum_at + 2].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(parse_frame(&zero).unwrap_err(), WireError::Malformed);
    // Cut short.
    for cut in [54, 60, 70, 77] {
        assert!(parse_frame(&buf[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn every_prefix_of_an_ipv6_frame_is_an_error_not_a_panic() {
    let frame = emit6(&data_segment());
    for cut in 0..frame.len() {
        assert!(parse_frame(&frame[..cut]).is_err(), "cut at {cut}");
    }
}
