//! The stack over IPv6, whole frames in and out: the handshake, data, RST to a closed
//! port, ICMPv6 errors (RFC 4443, RFC 8201), NDP (RFC 4861) and duplicate address
//! detection (RFC 4862), in the style of `rfc_tests.rs`.
use super::tests::{IP_S, MAC_C, MAC_S};
use super::*;
use crate::device::memory::MemoryDevice;
use crate::sim::{LinkConfig, StackPair};
use crate::wire::{Icmpv6Repr, NdpRepr, TcpFlags, TcpOptions, TcpRepr};
use std::net::SocketAddrV6;
use std::time::Duration;

const IP6_C: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xc);
const IP6_S: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x5);
const CLIENT_ISS: u32 = 7000;

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// A stack with IPv6 address `IP6_S`; in owned mode its address starts tentative.
fn stack6(mode: AddressMode) -> (Stack, MemoryDevice) {
    let (_dc, ds) = MemoryDevice::pair(MAC_C, MAC_S);
    let mut cfg = StackConfig::new(MAC_S, IP_S, 24);
    cfg.ipv6 = Some(IP6_S);
    cfg.ipv6_prefix_len = 64;
    cfg.mode = mode;
    (Stack::new(cfg), ds)
}

/// An owned-mode stack whose duplicate address detection is over.
fn owned_ready() -> (Stack, MemoryDevice) {
    let (mut s, mut ds) = stack6(AddressMode::Owned);
    s.poll(t(0), &mut ds);
    s.poll(t(1000), &mut ds);
    assert_eq!(s.ipv6_state(), Ipv6State::Ready);
    ds.take_transmitted();
    (s, ds)
}

/// A TCP segment from the client over IPv6.
fn frame6(repr: &TcpRepr<'_>) -> Vec<u8> {
    super::tests::frame_between((IP6_C.into(), IP6_S.into()), repr)
}

/// An NDP message from the client with a chosen hop limit.
fn ndp_frame(eth_dst: MacAddr, ip: (Ipv6Addr, Ipv6Addr), ndp: NdpRepr, hop_limit: u8) -> Vec<u8> {
    let mut buf = vec![0u8; 200];
    let n = wire::emit_ndp(&mut buf, (MAC_C, eth_dst), ip, &ndp);
    buf.truncate(n);
    buf[14 + 7] = hop_limit; // outside the checksum
    buf
}

/// The client's solicitation for our address, with a chosen hop limit.
fn solicit_us(hop_limit: u8) -> Vec<u8> {
    let group = wire::solicited_node(IP6_S);
    let ns = NdpRepr::Solicit {
        target: IP6_S,
        source_mac: Some(MAC_C),
    };
    ndp_frame(wire::multicast_mac(group), (IP6_C, group), ns, hop_limit)
}

/// An ICMPv6 message (type, code, 4-byte field, body) from `src` to our address.
fn icmp6_frame(src: Ipv6Addr, kind_code: (u8, u8), field: u32, body: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 1600];
    let n = wire::emit_icmpv6_error(
        &mut buf,
        (MAC_C, MAC_S),
        (src, IP6_S),
        kind_code,
        field,
        body,
    );
    buf.truncate(n);
    buf
}

/// What the stack sent, parsed: (Ethernet destination, IPv6 header, message).
#[derive(Debug, PartialEq)]
enum Out {
    Tcp(MacAddr, Ipv6Info, TcpRepr<'static>, usize),
    Icmp(MacAddr, Ipv6Info, String),
}

fn sent(ds: &MemoryDevice) -> Vec<Out> {
    ds.take_transmitted()
        .iter()
        .map(|f| {
            let eth_dst: MacAddr = f[..6].try_into().unwrap();
            match wire::parse_frame(f) {
                Ok(Frame::Tcp6 { ip, tcp, .. }) => Out::Tcp(
                    eth_dst,
                    ip,
                    TcpRepr {
                        payload: &[],
                        ..tcp
                    },
                    tcp.payload.len(),
                ),
                Ok(Frame::Icmp6 { ip, icmp, .. }) => Out::Icmp(eth_dst, ip, format!("{icmp:?}")),
                other => panic!("unexpected frame {other:?}"),
            }
        })
        .collect()
}

fn info(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8) -> Ipv6Info {
    Ipv6Info {
        src,
        dst,
        hop_limit,
    }
}

fn syn(port: u16) -> TcpRepr<'static> {
    TcpRepr {
        src_port: 40_000,
        dst_port: port,
        seq: SeqNum(CLIENT_ISS),
        flags: TcpFlags::SYN,
        window: 65535,
        options: TcpOptions {
            mss: Some(1440),
            ..TcpOptions::NONE
        },
        ..Default::default()
    }
}

// ---------------------------------------------------------------- DAD (RFC 4862 5.4)

#[test]
fn test_owned_ipv6_dad_then_unsolicited_advert() {
    let (mut s, mut ds) = stack6(AddressMode::Owned);
    assert_eq!(s.ipv6_state(), Ipv6State::Tentative);
    s.poll(t(0), &mut ds);
    let group = wire::solicited_node(IP6_S);
    let ns = NdpRepr::Solicit {
        target: IP6_S,
        source_mac: None,
    };
    assert_eq!(
        sent(&ds),
        vec![Out::Icmp(
            [0x33, 0x33, 0xff, 0, 0, 5],
            info(Ipv6Addr::UNSPECIFIED, group, 255),
            format!(
                "{:?}",
                Icmpv6Repr::NeighborSolicit {
                    target: IP6_S,
                    source_mac: None
                }
            )
        )],
        "{ns:?} from :: to the solicited-node group"
    );
    assert_eq!(s.poll_at(), Some(t(1000)), "RetransTimer");
    // Tentative: not usable (RFC 4862 5.4).
    let remote = SocketAddrV6::new(IP6_C, 80, 0, 0);
    assert_eq!(s.connect(t(1), remote), Err(StackError::AddressTentative));
    s.poll(t(999), &mut ds);
    assert_eq!(sent(&ds), vec![]);
    s.poll(t(1000), &mut ds);
    assert_eq!(s.ipv6_state(), Ipv6State::Ready);
    assert_eq!(
        sent(&ds),
        vec![Out::Icmp(
            [0x33, 0x33, 0, 0, 0, 1],
            info(IP6_S, wire::ALL_NODES, 255),
            format!(
                "{:?}",
                Icmpv6Repr::NeighborAdvert {
                    target: IP6_S,
                    router: false,
                    solicited: false,
                    override_: true,
                    target_mac: Some(MAC_S)
                }
            )
        )],
        "an unsolicited advertisement (RFC 4861 7.2.6)"
    );
    assert!(s.connect(t(1001), remote).is_ok());
    assert_eq!(s.stats.ndp_solicits, 1);
}

#[test]
fn test_owned_ipv6_dad_conflict_by_advert() {
    let (mut s, mut ds) = stack6(AddressMode::Owned);
    s.poll(t(0), &mut ds);
    ds.take_transmitted();
    let na = NdpRepr::Advert {
        target: IP6_S,
        target_mac: MAC_C,
        solicited: false,
        override_: true,
    };
    let other = "fe80::c".parse().unwrap();
    ds.inject(&ndp_frame(
        wire::multicast_mac(wire::ALL_NODES),
        (other, wire::ALL_NODES),
        na,
        255,
    ));
    s.poll(t(500), &mut ds);
    assert_eq!(s.ipv6_state(), Ipv6State::Duplicate);
    assert_eq!(s.stats.dad_conflicts, 1);
    s.poll(t(1000), &mut ds);
    assert_eq!(sent(&ds), vec![], "no advertisement of an address not ours");
    let remote = SocketAddrV6::new(IP6_C, 80, 0, 0);
    assert_eq!(
        s.connect(t(1001), remote),
        Err(StackError::DuplicateAddress)
    );
    // IPv4 is not affected.
    assert!(s.connect(t(1001), SocketAddrV4::new(IP_S, 80)).is_ok());
}

#[test]
fn test_owned_ipv6_dad_conflict_by_another_nodes_dad() {
    let (mut s, mut ds) = stack6(AddressMode::Owned);
    s.poll(t(0), &mut ds);
    let group = wire::solicited_node(IP6_S);
    let dad = NdpRepr::Solicit {
        target: IP6_S,
        source_mac: None,
    };
    ds.inject(&ndp_frame(
        wire::multicast_mac(group),
        (Ipv6Addr::UNSPECIFIED, group),
        dad,
        255,
    ));
    s.poll(t(10), &mut ds);
    assert_eq!(s.ipv6_state(), Ipv6State::Duplicate);
}

#[test]
fn test_shared_ipv6_address_is_ready_without_dad() {
    let (mut s, mut ds) = stack6(AddressMode::Shared);
    assert_eq!(s.ipv6_state(), Ipv6State::Ready);
    s.poll(t(0), &mut ds);
    assert_eq!(sent(&ds), vec![], "the kernel did DAD for its address");
}

#[test]
fn test_no_ipv6_address_refuses_ipv6_peers() {
    let (_, _dc, mut s, _ds) = super::tests::pair(|_| {});
    assert_eq!(s.ipv6_state(), Ipv6State::None);
    let remote = SocketAddrV6::new(IP6_C, 80, 0, 0);
    assert_eq!(s.connect(t(0), remote), Err(StackError::NoAddress));
}

// ---------------------------------------------------------------- NDP (RFC 4861)

#[test]
fn test_ipv6_neighbour_solicitation_answered() {
    let (mut s, mut ds) = owned_ready();
    ds.inject(&solicit_us(255));
    s.poll(t(2000), &mut ds);
    assert_eq!(
        sent(&ds),
        vec![Out::Icmp(
            MAC_C,
            info(IP6_S, IP6_C, 255),
            format!(
                "{:?}",
                Icmpv6Repr::NeighborAdvert {
                    target: IP6_S,
                    router: false,
                    solicited: true,
                    override_: true,
                    target_mac: Some(MAC_S)
                }
            )
        )]
    );
    assert_eq!(
        s.ndp_cache().lookup(IP6_C),
        Some(MAC_C),
        "the solicitor learned"
    );
    assert_eq!(s.stats.ndp_in, 1);
}

#[test]
fn test_off_link_ndp_is_dropped() {
    let (mut s, mut ds) = owned_ready();
    // Hop limit 254: a router forwarded it (RFC 4861 7.1.1).
    ds.inject(&solicit_us(254));
    let na = NdpRepr::Advert {
        target: IP6_C,
        target_mac: [6; 6],
        solicited: true,
        override_: true,
    };
    ds.inject(&ndp_frame(MAC_S, (IP6_C, IP6_S), na, 64));
    s.poll(t(2000), &mut ds);
    assert_eq!(sent(&ds), vec![]);
    assert_eq!(s.stats.drop_offlink_ndp, 2);
    assert_eq!(
        s.ndp_cache().lookup(IP6_C),
        None,
        "nothing learned from off the link"
    );
}

#[test]
fn test_ipv6_unsolicited_advert_of_a_stranger_is_not_learned() {
    let (mut s, mut ds) = owned_ready();
    let na = NdpRepr::Advert {
        target: IP6_C,
        target_mac: MAC_C,
        solicited: false,
        override_: true,
    };
    let all = wire::ALL_NODES;
    ds.inject(&ndp_frame(wire::multicast_mac(all), (IP6_C, all), na, 255));
    s.poll(t(2000), &mut ds);
    assert_eq!(s.ndp_cache().lookup(IP6_C), None, "RFC 4861 7.2.5");
    // Once the stack asked, the same advertisement answers it.
    s.request_neighbour_ip(t(2001), IP6_C.into());
    s.poll(t(2001), &mut ds);
    ds.inject(&ndp_frame(wire::multicast_mac(all), (IP6_C, all), na, 255));
    s.poll(t(2002), &mut ds);
    assert_eq!(s.ndp_cache().lookup(IP6_C), Some(MAC_C));
}

#[test]
fn test_ipv6_solicitation_for_another_target_is_not_answered() {
    let (mut s, mut ds) = owned_ready();
    let other: Ipv6Addr = "fd00::99".parse().unwrap();
    let group = wire::solicited_node(other);
    let ns = NdpRepr::Solicit {
        target: other,
        source_mac: Some(MAC_C),
    };
    ds.inject(&ndp_frame(
        wire::multicast_mac(group),
        (IP6_C, group),
        ns,
        255,
    ));
    s.poll(t(2000), &mut ds);
    assert_eq!(sent(&ds), vec![]);
    assert_eq!(s.stats.not_for_us, 1);
}

#[test]
fn test_ipv6_connect_resolves_the_neighbour_then_sends_the_syn() {
    let (mut s, mut ds) = owned_ready();
    let id = s
        .connect(t(2000), SocketAddrV6::new(IP6_C, 80, 0, 0))
        .unwrap();
    s.poll(t(2000), &mut ds);
    let group = wire::solicited_node(IP6_C);
    assert_eq!(
        sent(&ds),
        vec![Out::Icmp(
            wire::multicast_mac(group),
            info(IP6_S, group, 255),
            format!(
                "{:?}",
                Icmpv6Repr::NeighborSolicit {
                    target: IP6_C,
                    source_mac: Some(MAC_S)
                }
            )
        )]
    );
    let na = NdpRepr::Advert {
        target: IP6_C,
        target_mac: MAC_C,
        solicited: true,
        override_: true,
    };
    ds.inject(&ndp_frame(MAC_S, (IP6_C, IP6_S), na, 255));
    s.poll(t(2001), &mut ds);
    let out = sent(&ds);
    assert_eq!(out.len(), 1, "{out:?}");
    let Out::Tcp(eth_dst, ip, tcp, 0) = &out[0] else {
        panic!("{out:?}");
    };
    assert_eq!(*eth_dst, MAC_C);
    assert_eq!(*ip, info(IP6_S, IP6_C, 64));
    assert_eq!(tcp.flags, TcpFlags::SYN);
    assert_eq!(
        tcp.options.mss,
        Some(1440),
        "MSS from the IPv6 MTU: 1500 - 60"
    );
    assert_eq!(s.state(id), State::SynSent);
}

#[test]
fn test_ipv6_neighbour_that_never_answers_fails_the_connect() {
    let (mut s, mut ds) = owned_ready();
    let id = s
        .connect(t(2000), SocketAddrV6::new(IP6_C, 80, 0, 0))
        .unwrap();
    let mut now = t(2000);
    while now < t(6000) {
        s.poll(now, &mut ds);
        now = now + Duration::from_millis(100);
    }
    let solicits = sent(&ds).len();
    assert_eq!(solicits, 4, "ARP_MAX_REQUESTS solicitations");
    assert_eq!(s.stats.ndp_failures, 1);
    assert_eq!(
        s.connection(id).and_then(|c| c.error()),
        Some(tcp::TcpError::HostUnreachable)
    );
}

// ---------------------------------------------------------------- TCP over IPv6

#[test]
fn test_ipv6_listen_handshake_data_and_reply() {
    let (mut s, mut ds) = stack6(AddressMode::Shared);
    s.listen(80, 16).unwrap();
    ds.inject(&frame6(&syn(80)));
    s.poll(t(1), &mut ds);
    let out = sent(&ds);
    let [Out::Tcp(eth_dst, ip, synack, 0)] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!((*eth_dst, *ip), (MAC_C, info(IP6_S, IP6_C, 64)));
    assert_eq!(synack.flags, TcpFlags::SYN_ACK);
    assert_eq!(synack.ack, Some(SeqNum(CLIENT_ISS + 1)));
    assert_eq!(synack.options.mss, Some(1440));
    let s1 = synack.seq + 1u32;
    let data = TcpRepr {
        seq: SeqNum(CLIENT_ISS + 1),
        ack: Some(s1),
        flags: TcpFlags::PSH_ACK,
        payload: b"hello",
        ..syn(80)
    };
    ds.inject(&frame6(&TcpRepr {
        payload: &[],
        flags: TcpFlags::ACK,
        options: TcpOptions::NONE,
        ..data
    }));
    ds.inject(&frame6(&TcpRepr {
        options: TcpOptions::NONE,
        ..data
    }));
    s.poll(t(2), &mut ds);
    let id = s.accept(80).expect("accepted");
    let conn = s.connection(id).unwrap();
    assert_eq!(conn.local(), SocketAddr::new(IP6_S.into(), 80));
    assert_eq!(conn.remote(), SocketAddr::new(IP6_C.into(), 40_000));
    assert_eq!(conn.send_mss(), 1440);
    let mut buf = [0u8; 16];
    assert_eq!(s.try_recv(id, &mut buf), Ok(5));
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(s.try_send(id, b"world"), Ok(5));
    s.poll(t(3), &mut ds);
    let out = sent(&ds);
    let [Out::Tcp(_, ip, reply, 5)] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(*ip, info(IP6_S, IP6_C, 64));
    assert_eq!(reply.seq, s1);
    assert_eq!(reply.ack, Some(SeqNum(CLIENT_ISS + 6)));
}

#[test]
fn test_ipv6_closed_port_is_answered_with_rst() {
    let (mut s, mut ds) = stack6(AddressMode::Shared);
    ds.inject(&frame6(&syn(81)));
    s.poll(t(1), &mut ds);
    let out = sent(&ds);
    let [Out::Tcp(eth_dst, ip, rst, 0)] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!((*eth_dst, *ip), (MAC_C, info(IP6_S, IP6_C, 64)));
    assert_eq!(
        *rst,
        TcpRepr {
            src_port: 81,
            dst_port: 40_000,
            seq: SeqNum(0),
            ack: Some(SeqNum(CLIENT_ISS + 1)),
            flags: TcpFlags::RST_ACK,
            ..Default::default()
        }
    );
    assert_eq!(s.stats.rst_sent, 1);
}

#[test]
fn test_listener_families() {
    let (mut s, mut ds) = stack6(AddressMode::Shared);
    s.listen_families(80, 16, true, false).unwrap();
    s.listen_families(81, 16, false, true).unwrap();
    // An IPv4-only listener: an IPv6 SYN finds the port closed.
    ds.inject(&frame6(&syn(80)));
    s.poll(t(1), &mut ds);
    let out = sent(&ds);
    let [Out::Tcp(_, _, rst, 0)] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(rst.flags, TcpFlags::RST_ACK);
    // An IPv6-only listener answers it, and refuses IPv4.
    ds.inject(&frame6(&syn(81)));
    s.poll(t(2), &mut ds);
    let out = sent(&ds);
    let [Out::Tcp(_, _, synack, 0)] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!(synack.flags, TcpFlags::SYN_ACK);
    ds.inject(&super::tests::frame(&syn(81)));
    s.poll(t(3), &mut ds);
    let v4: Vec<_> = ds
        .take_transmitted()
        .iter()
        .filter_map(|f| match wire::parse_frame(f) {
            Ok(Frame::Tcp { tcp, .. }) => Some(tcp.flags),
            _ => None,
        })
        .collect();
    assert_eq!(v4, vec![TcpFlags::RST_ACK]);
}

#[test]
fn test_ipv6_segment_for_another_address_is_not_ours() {
    let (mut s, mut ds) = stack6(AddressMode::Shared);
    let mut buf = vec![0u8; 200];
    let other: Ipv6Addr = "fd00::77".parse().unwrap();
    let n = wire::emit_tcp(
        &mut buf,
        (MAC_C, MAC_S),
        (IP6_C, other),
        &syn(81),
        0,
        |_| {},
        wire::TxChecksum::Complete,
    );
    ds.inject(&buf[..n]);
    s.poll(t(1), &mut ds);
    assert_eq!(sent(&ds), vec![]);
    assert_eq!(s.stats.not_for_us, 1);
}

/// A client connection to `[IP6_C]:80` through the handshake; returns it and the ISS+1.
fn client_established(s: &mut Stack, ds: &mut MemoryDevice) -> (ConnId, SeqNum) {
    s.add_neighbour(IP6_C, MAC_C);
    let id = s.connect(t(0), SocketAddrV6::new(IP6_C, 80, 0, 0)).unwrap();
    s.poll(t(0), ds);
    let out = sent(ds);
    let [Out::Tcp(_, _, syn, 0)] = &out[..] else {
        panic!("{out:?}");
    };
    let iss1 = syn.seq + 1u32;
    let synack = TcpRepr {
        src_port: 80,
        dst_port: syn.src_port,
        seq: SeqNum(CLIENT_ISS),
        ack: Some(iss1),
        flags: TcpFlags::SYN_ACK,
        window: 65535,
        options: TcpOptions {
            mss: Some(1440),
            ..TcpOptions::NONE
        },
        payload: &[],
    };
    ds.inject(&frame6(&synack));
    s.poll(t(1), ds);
    assert_eq!(s.state(id), State::Established);
    sent(ds);
    (id, iss1)
}

#[test]
fn test_ipv6_packet_too_big_lowers_the_segment_size() {
    let (mut s, mut ds) = stack6(AddressMode::Shared);
    let (id, _) = client_established(&mut s, &mut ds);
    let data = vec![7u8; 4000];
    assert_eq!(s.try_send(id, &data), Ok(4000));
    // The frames as they left, to quote one.
    s.poll(t(2), &mut ds);
    let frames = ds.take_transmitted();
    assert!(frames.len() >= 2);
    assert_eq!(frames[0].len(), 14 + 40 + 20 + 1440);
    let first = frames[0][14..].to_vec();
    // A router's packet too big (RFC 4443 3.2) with MTU 1300 quoting the first.
    let router: Ipv6Addr = "fd00::1".parse().unwrap();
    ds.inject(&icmp6_frame(router, (2, 0), 1300, &first));
    s.poll(t(3), &mut ds);
    assert_eq!(s.stats.icmp6_packet_too_big, 1);
    assert_eq!(s.connection(id).unwrap().send_mss(), 1300 - 60);
    let out = sent(&ds);
    assert!(!out.is_empty(), "what was too big goes again");
    for o in &out {
        let Out::Tcp(_, _, _, len) = o else {
            panic!("{o:?}");
        };
        assert!(*len <= 1240, "{len}");
    }
    // RFC 8201 section 4: never below 1280.
    ds.inject(&icmp6_frame(router, (2, 0), 600, &first));
    s.poll(t(4), &mut ds);
    assert_eq!(s.connection(id).unwrap().send_mss(), 1220);
    // A quote of no connection of ours changes nothing.
    let mut stranger = first.clone();
    stranger[40] ^= 0xff; // another source port
    let before = s.stats.icmp6_packet_too_big;
    ds.inject(&icmp6_frame(router, (2, 0), 1280, &stranger));
    s.poll(t(5), &mut ds);
    assert_eq!(s.stats.icmp6_packet_too_big, before);
}

#[test]
fn test_ipv6_destination_unreachable_aborts_a_connect() {
    let (mut s, mut ds) = stack6(AddressMode::Shared);
    s.add_neighbour(IP6_C, MAC_C);
    let id = s.connect(t(0), SocketAddrV6::new(IP6_C, 80, 0, 0)).unwrap();
    s.poll(t(0), &mut ds);
    let frames = ds.take_transmitted();
    // Code 4, port unreachable (RFC 4443 3.1), quoting our SYN.
    ds.inject(&icmp6_frame(
        "fd00::1".parse().unwrap(),
        (1, 4),
        0,
        &frames[0][14..],
    ));
    s.poll(t(1), &mut ds);
    assert_eq!(s.stats.icmp_unreachable, 1);
    assert_eq!(
        s.connection(id).and_then(|c| c.error()),
        Some(tcp::TcpError::Unreachable)
    );
}

#[test]
fn test_owned_ipv6_echo_request_is_answered() {
    let (mut s, mut ds) = owned_ready();
    ds.inject(&icmp6_frame(IP6_C, (128, 0), 0x0007_0009, b"ping"));
    s.poll(t(2000), &mut ds);
    let frames = ds.take_transmitted();
    assert_eq!(frames.len(), 1);
    let sliced = etherparse::SlicedPacket::from_ethernet(&frames[0]).unwrap();
    let Some(etherparse::TransportSlice::Icmpv6(icmp)) = sliced.transport else {
        panic!("no ICMPv6");
    };
    assert_eq!(
        icmp.icmp_type(),
        etherparse::Icmpv6Type::EchoReply(etherparse::IcmpEchoHeader { id: 7, seq: 9 })
    );
    assert_eq!(icmp.payload(), b"ping");
    // Shared mode leaves echo to the kernel.
    let (mut s, mut ds) = stack6(AddressMode::Shared);
    ds.inject(&icmp6_frame(IP6_C, (128, 0), 0x0007_0009, b"ping"));
    s.poll(t(1), &mut ds);
    assert!(ds.take_transmitted().is_empty());
}

#[test]
fn test_ipv6_malformed_frames_are_counted_not_answered() {
    let (mut s, mut ds) = stack6(AddressMode::Shared);
    s.listen(80, 16).unwrap();
    let good = frame6(&syn(80));
    // Truncated, a hop-by-hop header after another, and a fragment.
    ds.inject(&good[..60]);
    let mut bad_chain = good[..54].to_vec();
    bad_chain[20] = 60; // destination options first
    bad_chain.extend_from_slice(&[0, 0, 1, 4, 0, 0, 0, 0]); // ... then hop-by-hop (0)
    bad_chain.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    bad_chain.extend_from_slice(&good[54..]);
    let plen = (bad_chain.len() - 54) as u16;
    bad_chain[18..20].copy_from_slice(&plen.to_be_bytes());
    ds.inject(&bad_chain);
    let mut frag = good[..54].to_vec();
    frag[20] = 44;
    frag.extend_from_slice(&[6, 0, 0, 1, 0, 0, 0, 1]);
    frag.extend_from_slice(&good[54..]);
    let plen = (frag.len() - 54) as u16;
    frag[18..20].copy_from_slice(&plen.to_be_bytes());
    ds.inject(&frag);
    s.poll(t(1), &mut ds);
    assert_eq!(sent(&ds), vec![]);
    assert_eq!(s.stats.drop_truncated, 1);
    assert_eq!(s.stats.drop_ipv6_extension, 1);
    assert_eq!(s.stats.drop_ipv6_fragment, 1);
    assert_eq!(s.connection_count(), 0);
}

// ---------------------------------------------------------------- two stacks

/// Two owned-mode stacks on a simulated link: DAD, NDP, the handshake, a transfer and
/// the close, all over IPv6.
fn transfer_over_ipv6(seed: u64, link: LinkConfig) -> StackPair {
    let mut ccfg = StackConfig::new(MAC_C, Ipv4Addr::new(192, 168, 7, 1), 24);
    ccfg.ipv6 = Some(IP6_C);
    let mut scfg = StackConfig::new(MAC_S, IP_S, 24);
    scfg.ipv6 = Some(IP6_S);
    let mut pair = StackPair::new(seed, ccfg, scfg, link);
    let (id, sid) = pair.connect6(80, 16, Duration::from_secs(60));
    assert!(pair.client.stats.ndp_solicits >= 2, "DAD and resolution");
    assert_eq!(pair.client.stats.arp_requests, 0, "no IPv4 at all");
    super::tests::send_and_close(&mut pair, (id, sid), seed, 1_000_000);
    pair
}

#[test]
fn two_stacks_over_ipv6_resolve_connect_transfer_and_close() {
    let pair = transfer_over_ipv6(1, LinkConfig::default());
    assert_eq!(pair.client.connection_totals().retransmits, 0);
}

#[test]
fn two_stacks_over_ipv6_on_an_impaired_link() {
    let link = LinkConfig {
        loss: 0.02,
        duplicate: 0.01,
        reorder: 0.05,
        corrupt: 0.01,
        jitter: Duration::from_millis(1),
        ..LinkConfig::default()
    };
    for seed in 1..3 {
        let pair = transfer_over_ipv6(seed, link.clone());
        assert!(pair.client.connection_totals().retransmits > 0);
    }
}
