use super::*;

const MAC_A: MacAddr = [2, 0, 0, 0, 0, 1];
const MAC_B: MacAddr = [2, 0, 0, 0, 0, 2];
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn syn_with_options() -> TcpRepr<'static> {
    TcpRepr {
        src_port: 40000,
        dst_port: 80,
        seq: SeqNum(0xffff_fff0),
        ack: None,
        flags: TcpFlags::SYN,
        window: 65535,
        options: TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamps: Some((1, 0)),
            ..Default::default()
        },
        payload: &[],
    }
}

#[test]
fn tcp_roundtrip_with_options_and_payload() {
    let mut buf = [0u8; 1600];
    let mut repr = syn_with_options();
    repr.flags = TcpFlags::ACK;
    repr.options.sack_count = 2;
    repr.options.sack_blocks[0] = (100, 200);
    repr.options.sack_blocks[1] = (300, 400);
    repr.options.sack_permitted = false;
    let len = emit_tcp(
        &mut buf,
        (MAC_A, MAC_B),
        (IP_A, IP_B),
        &repr,
        5,
        |p| p.copy_from_slice(b"hello"),
        TxChecksum::Complete,
    );
    assert_eq!(len, tcp_frame_len(&repr, 5));
    // etherparse agrees on the layout and checksum.
    let sliced = etherparse::SlicedPacket::from_ethernet(&buf[..len]).unwrap();
    assert!(matches!(
        sliced.transport,
        Some(etherparse::TransportSlice::Tcp(_))
    ));
    match parse_frame(&buf[..len]).unwrap() {
        Frame::Tcp { eth_src, ip, tcp } => {
            assert_eq!(eth_src, MAC_A);
            assert_eq!((ip.src, ip.dst), (IP_A, IP_B));
            assert_eq!(tcp.payload, b"hello");
            assert_eq!(tcp.options.sack_blocks(), &[(100, 200), (300, 400)]);
            assert_eq!(tcp.options.timestamps, Some((1, 0)));
            assert_eq!(tcp.options.mss, Some(1460));
            assert_eq!(tcp.options.window_scale, Some(7));
            assert_eq!(tcp.seq, SeqNum(0xffff_fff0));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn corrupted_tcp_is_rejected_by_checksum() {
    let mut buf = [0u8; 200];
    let len = emit_tcp(
        &mut buf,
        (MAC_A, MAC_B),
        (IP_A, IP_B),
        &syn_with_options(),
        0,
        |_| {},
        TxChecksum::Complete,
    );
    for i in (ETH_HEADER_LEN + IPV4_HEADER_LEN)..len {
        let mut bad = buf;
        bad[i] ^= 0x10;
        let err = parse_frame(&bad[..len]).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::BadTcpChecksum | WireError::Malformed | WireError::Truncated
            ),
            "byte {i}: {err:?}"
        );
    }
}

#[test]
fn truncated_and_lying_headers_are_errors() {
    let mut buf = [0u8; 200];
    let len = emit_tcp(
        &mut buf,
        (MAC_A, MAC_B),
        (IP_A, IP_B),
        &syn_with_options(),
        0,
        |_| {},
        TxChecksum::Complete,
    );
    for cut in 0..len {
        assert!(parse_frame(&buf[..cut]).is_err(), "cut at {cut}");
    }
    // IHL larger than the packet.
    let mut bad = buf;
    bad[ETH_HEADER_LEN] = 0x4f;
    assert!(parse_frame(&bad[..len]).is_err());
    // Total length beyond the frame.
    let mut bad = buf;
    bad[ETH_HEADER_LEN + 2..ETH_HEADER_LEN + 4].copy_from_slice(&1500u16.to_be_bytes());
    assert_eq!(parse_frame(&bad[..len]).unwrap_err(), WireError::Malformed);
}

#[test]
fn fragments_are_reported() {
    let mut buf = [0u8; 200];
    let len = emit_tcp(
        &mut buf,
        (MAC_A, MAC_B),
        (IP_A, IP_B),
        &syn_with_options(),
        0,
        |_| {},
        TxChecksum::Complete,
    );
    buf[ETH_HEADER_LEN + 6] = 0x20; // MF
    buf[ETH_HEADER_LEN + 10..ETH_HEADER_LEN + 12].fill(0);
    let sum = checksum(&buf[ETH_HEADER_LEN..ETH_HEADER_LEN + 20]);
    buf[ETH_HEADER_LEN + 10..ETH_HEADER_LEN + 12].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(parse_frame(&buf[..len]).unwrap_err(), WireError::Fragment);
}

#[test]
fn bad_option_lengths_are_malformed() {
    assert_eq!(
        TcpOptions::parse(&[2, 0]).unwrap_err(),
        WireError::Malformed
    );
    assert_eq!(
        TcpOptions::parse(&[2, 9, 0]).unwrap_err(),
        WireError::Malformed
    );
    assert_eq!(
        TcpOptions::parse(&[8, 2]).unwrap_err(),
        WireError::Malformed
    );
    assert_eq!(
        TcpOptions::parse(&[1, 1, 0, 99]).unwrap(),
        TcpOptions::default()
    );
}

fn arp_request() -> ArpRepr {
    ArpRepr {
        op: ArpOp::Request,
        sender_mac: MAC_A,
        sender_ip: IP_A,
        target_mac: [0; 6],
        target_ip: IP_B,
    }
}

#[test]
fn arp_roundtrip() {
    let mut buf = [0u8; 64];
    let arp = arp_request();
    let len = emit_arp(&mut buf, BROADCAST_MAC, &arp);
    assert_eq!(len, 60);
    match parse_frame(&buf[..len]).unwrap() {
        Frame::Arp(parsed) => assert_eq!(parsed, arp),
        other => panic!("unexpected {other:?}"),
    }
}

/// The reference: RFC 1071's algorithm, one big-endian 16-bit word at a time.
fn reference_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

proptest::proptest! {
    /// Any bytes of any length (odd ones included) sum as RFC 1071's reference does,
    /// and a buffer with its checksum in place sums to zero.
    #[test]
    fn checksum_matches_rfc1071_reference(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1600),
    ) {
        proptest::prop_assert_eq!(checksum(&data), reference_checksum(&data));
        if data.len() >= 12 {
            let mut with_sum = data.clone();
            with_sum[10..12].fill(0);
            let c = checksum(&with_sum);
            with_sum[10..12].copy_from_slice(&c.to_be_bytes());
            proptest::prop_assert_eq!(checksum(&with_sum), 0);
        }
    }
}

#[test]
fn checksum_of_all_ones_matches_the_reference() {
    let all_ones = vec![0xffu8; 1500];
    assert_eq!(checksum(&all_ones), reference_checksum(&all_ones));
}

/// The pseudo-header sum the way RFC 1071 writes it: big-endian words, end-around carry,
/// not complemented. That is what a CHECKSUM_PARTIAL segment carries in its field.
fn reference_partial_signature(src: Ipv4Addr, dst: Ipv4Addr, tcp_len: usize) -> u16 {
    let words = [
        u16::from_be_bytes([src.octets()[0], src.octets()[1]]),
        u16::from_be_bytes([src.octets()[2], src.octets()[3]]),
        u16::from_be_bytes([dst.octets()[0], dst.octets()[1]]),
        u16::from_be_bytes([dst.octets()[2], dst.octets()[3]]),
        6,
        tcp_len as u16,
    ];
    let mut acc: u32 = words.iter().map(|w| u32::from(*w)).sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[test]
fn partial_checksum_is_accepted_only_when_the_policy_allows_it() {
    let mut buf = [0u8; 200];
    let len = emit_tcp(
        &mut buf,
        (MAC_A, MAC_B),
        (IP_A, IP_B),
        &syn_with_options(),
        7,
        |p| p.copy_from_slice(b"payload"),
        TxChecksum::Complete,
    );
    let tcp_start = ETH_HEADER_LEN + IPV4_HEADER_LEN;
    let tcp_len = len - tcp_start;
    // A complete checksum is fine under both policies, and is not counted as partial.
    for policy in [ChecksumPolicy::Strict, ChecksumPolicy::AcceptPartial] {
        let parsed = parse_frame_with(&buf[..len], policy).unwrap();
        assert!(!parsed.partial_checksum);
    }
    let mut partial = buf;
    let signature = reference_partial_signature(IP_A, IP_B, tcp_len);
    assert_eq!(partial_tcp_checksum(IP_A, IP_B, tcp_len), signature);
    partial[tcp_start + 16..tcp_start + 18].copy_from_slice(&signature.to_be_bytes());
    assert_eq!(
        parse_frame(&partial[..len]).unwrap_err(),
        WireError::BadTcpChecksum,
        "a wire never delivers a partial checksum"
    );
    let parsed = parse_frame_with(&partial[..len], ChecksumPolicy::AcceptPartial).unwrap();
    assert!(parsed.partial_checksum);
    match parsed.frame {
        Frame::Tcp { tcp, .. } => assert_eq!(tcp.payload, b"payload"),
        other => panic!("unexpected {other:?}"),
    }
    // Anything else in the field is still a bad checksum, whatever the policy.
    let mut wrong = partial;
    wrong[tcp_start + 17] ^= 0x01;
    assert_eq!(
        parse_frame_with(&wrong[..len], ChecksumPolicy::AcceptPartial).unwrap_err(),
        WireError::BadTcpChecksum
    );
}

/// A segment left partial for TX checksum offload carries Linux's CHECKSUM_PARTIAL
/// signature, and completed the way a device does (sum from the TCP header on, stored
/// at the field) it is the same frame as one emitted with the whole checksum, for
/// every payload length (odd ones too), over IPv4 and IPv6 (after the fixed header).
#[test]
fn partial_tx_checksum_completed_by_the_device_equals_the_complete_one() {
    let payload: Vec<u8> = (0..1460u32).map(|i| (i * 7 + 3) as u8).collect();
    let v6: (IpAddr, IpAddr) = (
        std::net::Ipv6Addr::new(0xfd00, 0x77, 1, 0, 0, 0, 0, 2).into(),
        std::net::Ipv6Addr::new(0xfd00, 0x77, 2, 0, 0, 0, 0, 2).into(),
    );
    for (ip, tcp_at) in [((IP_A.into(), IP_B.into()), 34), (v6, 54)] {
        for n in [0usize, 1, 2, 3, 7, 100, 1400, 1401] {
            let mut repr = syn_with_options();
            repr.flags = TcpFlags::ACK;
            repr.payload = &payload[..n];
            let (mut full, mut partial) = ([0u8; 1600], [0u8; 1600]);
            let emit = |buf: &mut [u8], checksum| {
                emit_tcp(buf, (MAC_A, MAC_B), ip, &repr, n, |_| {}, checksum)
            };
            let len = emit(&mut full, TxChecksum::Complete);
            assert_eq!(emit(&mut partial, TxChecksum::Partial), len);
            assert_ne!(full[..len], partial[..len], "{n} bytes: left partial");
            // The partial frame is what a veth peer may deliver: accepted as partial only.
            assert_eq!(
                parse_frame(&partial[..len]).unwrap_err(),
                WireError::BadTcpChecksum
            );
            let loose = parse_frame_with(&partial[..len], ChecksumPolicy::AcceptPartial);
            assert!(loose.unwrap().partial_checksum);
            let (start, offset) = tcp_checksum_location(&partial[..len]).unwrap();
            assert_eq!((start, offset), (tcp_at, 16));
            complete_checksum(&mut partial[..len], start.into(), offset.into());
            assert_eq!(full[..len], partial[..len], "{n} bytes");
        }
    }
}

#[test]
fn only_tcp_frames_have_a_checksum_location() {
    let mut buf = [0u8; 200];
    let arp = arp_request();
    let len = emit_arp(&mut buf, BROADCAST_MAC, &arp);
    assert_eq!(tcp_checksum_location(&buf[..len]), None);
    let len = emit_icmp_echo_reply(&mut buf, (MAC_A, MAC_B), (IP_A, IP_B), 1, 2, b"ping");
    assert_eq!(tcp_checksum_location(&buf[..len]), None);
    assert_eq!(tcp_checksum_location(&buf[..20]), None);
}
