//! The stack over an in-memory link: two stacks, or one stack and hand-made frames.
use super::*;
use crate::device::memory::MemoryDevice;
use crate::sim::{LinkConfig, StackPair};
use crate::wire::{TcpFlags, TcpOptions, TcpRepr};
use std::time::Duration;

pub(super) const MAC_C: MacAddr = [2, 0, 0, 0, 0, 0xc];
pub(super) const MAC_S: MacAddr = [2, 0, 0, 0, 0, 0x5];
pub(super) const IP_C: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 1);
pub(super) const IP_S: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 2);

pub(super) fn pair(
    server_cfg: impl FnOnce(&mut StackConfig),
) -> (Stack, MemoryDevice, Stack, MemoryDevice) {
    let (dc, ds) = MemoryDevice::pair(MAC_C, MAC_S);
    let client = Stack::new(StackConfig::new(MAC_C, IP_C, 24));
    let mut cfg = StackConfig::new(MAC_S, IP_S, 24);
    server_cfg(&mut cfg);
    (client, dc, Stack::new(cfg), ds)
}

/// Polls both stacks in virtual time until `done` or a limit: the shared driver
/// ([`crate::sim::run_until`]) on an in-memory wire, in steps of at most 50 µs.
pub(super) fn drive(
    c: &mut Stack,
    dc: &mut MemoryDevice,
    s: &mut Stack,
    ds: &mut MemoryDevice,
    now: &mut Instant,
    done: impl FnMut(&mut Stack, &mut Stack) -> bool,
) {
    crate::sim::run_until(
        now,
        Duration::from_micros(50),
        Duration::from_secs(10),
        (c, dc),
        (s, ds),
        done,
    );
}

/// A client sends `len` bytes to a server over a simulated link, then both close.
/// Returns the pair for its counters.
fn transfer_over(
    seed: u64,
    link: LinkConfig,
    server_cfg: impl FnOnce(&mut StackConfig),
) -> StackPair {
    let mut cfg = StackConfig::new(MAC_S, IP_S, 24);
    server_cfg(&mut cfg);
    let mut pair = StackPair::new(seed, StackConfig::new(MAC_C, IP_C, 24), cfg, link);
    let (id, sid) = pair.connect(80, 16, Duration::from_secs(60));
    assert!(
        pair.client.stats.arp_requests >= 1,
        "the client resolved the server by ARP"
    );
    send_and_close(&mut pair, (id, sid), seed, 2_000_000);
    pair
}

/// The client sends `len` random bytes on `id` and closes; the server reads them all
/// on `sid`, then closes too: both end as an active closer in TIME-WAIT and a closed
/// passive one.
pub(super) fn send_and_close(
    pair: &mut StackPair,
    (id, sid): (ConnId, ConnId),
    seed: u64,
    len: usize,
) {
    let mut stream = Stream::new(seed, len);
    pair.run_until(Duration::from_secs(600), |c, s| {
        stream.turn(c, s, (id, sid));
        stream.done() && s.connection(sid).is_some_and(|x| x.at_eof())
    });
    assert!(stream.intact(), "seed {seed}: the stream arrived intact");
    pair.server.close(sid);
    pair.run_until(Duration::from_secs(600), |c, s| {
        c.state(id) == State::TimeWait && s.state(sid) == State::Closed
    });
}

/// `len` random bytes from the client to the server, a turn at a time.
struct Stream {
    data: Vec<u8>,
    sent: usize,
    got: Vec<u8>,
    buf: Vec<u8>,
}

impl Stream {
    fn new(seed: u64, len: usize) -> Self {
        let mut data = vec![0u8; len];
        crate::sim::Rng::new(seed).fill(&mut data);
        Stream {
            data,
            sent: 0,
            got: Vec::new(),
            buf: vec![0u8; 65536],
        }
    }

    /// The client sends what fits on `id` (and closes after the last byte); the server
    /// reads what came on `sid`.
    fn turn(&mut self, c: &mut Stack, s: &mut Stack, (id, sid): (ConnId, ConnId)) {
        if self.sent < self.data.len() {
            self.sent += c.try_send(id, &self.data[self.sent..]).unwrap_or(0);
            if self.sent == self.data.len() {
                c.close(id);
            }
        }
        while let Ok(n) = s.try_recv(sid, &mut self.buf) {
            self.got.extend_from_slice(&self.buf[..n]);
        }
    }

    fn done(&self) -> bool {
        self.got.len() == self.data.len()
    }

    fn intact(&self) -> bool {
        self.got == self.data
    }
}

#[test]
fn two_stacks_resolve_arp_connect_transfer_and_close() {
    let pair = transfer_over(1, LinkConfig::default(), |_| {});
    let totals = pair.client.connection_totals();
    assert_eq!(totals.retransmits, 0, "{totals:?}");
}

#[test]
fn two_stacks_over_an_impaired_link() {
    let link = LinkConfig {
        loss: 0.02,
        duplicate: 0.01,
        reorder: 0.05,
        corrupt: 0.01,
        jitter: Duration::from_millis(1),
        bandwidth: 100_000_000,
        queue_limit: 200,
        ..LinkConfig::default()
    };
    for seed in 1..4 {
        let pair = transfer_over(seed, link.clone(), |_| {});
        let link_stats = pair.client_dev.link().a_to_b.stats.clone();
        assert!(
            link_stats.lost > 0 && link_stats.corrupted > 0,
            "{link_stats:?}"
        );
        assert!(pair.client.connection_totals().retransmits > 0);
        assert!(
            pair.server.stats.drop_bad_tcp_checksum + pair.server.stats.drop_bad_ip_checksum > 0,
            "seed {seed}: corrupted frames are dropped by checksum"
        );
    }
}

#[test]
fn two_stacks_with_syn_cookies_over_a_jittery_link() {
    let link = LinkConfig {
        jitter: Duration::from_millis(2),
        reorder: 0.05,
        ..LinkConfig::default()
    };
    let pair = transfer_over(7, link, |cfg| cfg.syn_backlog = 0);
    assert_eq!(pair.server.stats.syn_cookies_sent, 1);
    assert_eq!(pair.server.stats.syn_cookies_accepted, 1);
}

fn syn(port: u16, seq: u32) -> TcpRepr<'static> {
    TcpRepr {
        src_port: 40_000,
        dst_port: port,
        seq: SeqNum(seq),
        flags: TcpFlags::SYN,
        window: 65535,
        options: TcpOptions {
            mss: Some(1460),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub(super) fn frame(repr: &TcpRepr<'_>) -> Vec<u8> {
    frame_between((IP_C.into(), IP_S.into()), repr)
}

/// A segment from the client's MAC to the server's between these addresses (either
/// family).
pub(super) fn frame_between(ip: (IpAddr, IpAddr), repr: &TcpRepr<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 1600];
    let n = wire::emit_tcp(
        &mut buf,
        (MAC_C, MAC_S),
        ip,
        repr,
        repr.payload.len(),
        |_| {},
        wire::TxChecksum::Complete,
    );
    buf.truncate(n);
    buf
}

fn tcp_out(dev: &MemoryDevice) -> Vec<TcpRepr<'static>> {
    dev.take_transmitted()
        .into_iter()
        .filter_map(|f| match wire::parse_frame(&f) {
            Ok(Frame::Tcp { tcp, .. }) => Some(TcpRepr {
                payload: &[],
                ..tcp
            }),
            _ => None,
        })
        .collect()
}

#[test]
fn closed_port_is_answered_with_rst() {
    let (_, dc, mut s, mut ds) = pair(|_| {});
    dc.inject(&[0u8; 0]); // nothing
    ds.inject(&frame(&syn(81, 100)));
    s.poll(Instant::from_millis(1), &mut ds);
    let out = tcp_out(&ds);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].flags, TcpFlags::RST_ACK);
    assert_eq!(out[0].ack, Some(SeqNum(101)));
    assert_eq!(s.stats.rst_sent, 1);
}

#[test]
fn syn_cookies_when_the_syn_queue_is_full() {
    let (_, _dc, mut s, mut ds) = pair(|cfg| cfg.syn_backlog = 0);
    s.listen(80, 16).unwrap();
    let now = Instant::from_millis(5);
    ds.inject(&frame(&syn(80, 5000)));
    s.poll(now, &mut ds);
    let out = tcp_out(&ds);
    assert_eq!(out[0].flags, TcpFlags::SYN_ACK, "{out:?}");
    assert_eq!(s.connection_count(), 0, "no state kept for the SYN");
    assert_eq!(s.stats.syn_cookies_sent, 1);
    let cookie = out[0].seq;
    // The ACK completing the handshake carries data; the cookie rebuilds the connection.
    let ack = TcpRepr {
        src_port: 40_000,
        dst_port: 80,
        seq: SeqNum(5001),
        ack: Some(cookie + 1u32),
        flags: TcpFlags::ACK,
        window: 65535,
        payload: b"hello",
        ..Default::default()
    };
    ds.inject(&frame(&ack));
    s.poll(now + Duration::from_millis(1), &mut ds);
    assert_eq!(s.stats.syn_cookies_accepted, 1);
    let id = s.accept(80).expect("accepted from a cookie");
    let mut buf = [0u8; 16];
    assert_eq!(s.try_recv(id, &mut buf), Ok(5));
    assert_eq!(&buf[..5], b"hello");
    // A forged ACK (wrong cookie) gets a RST, not a connection.
    let forged = TcpRepr {
        src_port: 40_001,
        seq: SeqNum(7001),
        ack: Some(SeqNum(12345)),
        ..ack
    };
    ds.inject(&frame(&forged));
    s.poll(now + Duration::from_millis(2), &mut ds);
    assert_eq!(s.stats.syn_cookies_accepted, 1);
    assert!(
        tcp_out(&ds)
            .iter()
            .any(|r| r.flags.rst && r.seq == SeqNum(12345))
    );
}

#[test]
fn backlog_and_connection_limits_hold() {
    let (_, _dc, mut s, mut ds) = pair(|cfg| {
        cfg.max_connections = 3;
        cfg.syn_backlog = 100;
    });
    s.listen(80, 16).unwrap();
    for i in 0..10u32 {
        let mut seg = syn(80, 1000 * i);
        seg.src_port = 40_000 + i as u16;
        ds.inject(&frame(&seg));
    }
    s.poll(Instant::from_millis(1), &mut ds);
    assert_eq!(s.connection_count(), 3);
    assert_eq!(s.stats.listen_drops, 7);
}

#[test]
fn timers_stay_cheap_with_many_connections() {
    let (_, _dc, mut s, mut ds) = pair(|cfg| {
        cfg.max_connections = 200_000;
        cfg.syn_backlog = 200_000;
    });
    s.listen(80, 200_000).unwrap();
    let now = Instant::from_millis(1);
    for i in 0..20_000u32 {
        let mut seg = syn(80, i);
        seg.src_port = 1024 + (i % 60_000) as u16;
        let mut f = frame(&seg);
        // Vary the source address so every SYN is a new 4-tuple.
        f[wire::ETH_HEADER_LEN + 15] = (i / 60_000) as u8 + 1;
        f[wire::ETH_HEADER_LEN + 10..wire::ETH_HEADER_LEN + 12].fill(0);
        let sum = wire::checksum(&f[wire::ETH_HEADER_LEN..wire::ETH_HEADER_LEN + 20]);
        f[wire::ETH_HEADER_LEN + 10..wire::ETH_HEADER_LEN + 12].copy_from_slice(&sum.to_be_bytes());
        let tcp_start = wire::ETH_HEADER_LEN + 20;
        f[tcp_start + 16..tcp_start + 18].fill(0);
        let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
        let sum = wire::tcp_checksum(src, IP_S, &f[tcp_start..]);
        f[tcp_start + 16..tcp_start + 18].copy_from_slice(&sum.to_be_bytes());
        ds.inject(&f);
        if ds.pending_rx() >= 64 {
            s.poll(now, &mut ds);
            ds.take_transmitted();
        }
    }
    s.poll(now, &mut ds);
    ds.take_transmitted();
    assert_eq!(s.connection_count(), 20_000);
    // One heap entry per half-open connection, pushed once.
    assert_eq!(s.timers.len(), 20_000);
    assert_eq!(s.timers.ops, 20_000);
    // Before the first deadline, a poll has nothing to do and touches no heap entry.
    let first = s.poll_at().expect("a deadline");
    assert!(first > now + Duration::from_millis(500));
    s.poll(Instant(first.0 - 1000), &mut ds);
    assert!(ds.take_transmitted().is_empty());
    assert_eq!(s.timers.ops, 20_000, "an early poll pops nothing");
    // At the SYN-ACK timeout every half-open connection retransmits once, in deadline
    // order, at the cost of one pop and one push each, however many polls it takes.
    let mut retransmitted = 0;
    let mut polls = 0;
    let mut t = first;
    while retransmitted < 20_000 {
        s.poll(t, &mut ds);
        polls += 1;
        retransmitted += ds.take_transmitted().len();
        t = t + Duration::from_millis(1);
    }
    assert_eq!(retransmitted, 20_000);
    assert!(polls > 1);
    assert_eq!(
        s.timers.ops,
        20_000 + 2 * 20_000,
        "one pop and one push each"
    );
    assert_eq!(s.timers.len(), 20_000, "no stale entries pile up");
}

#[test]
fn accept_queue_is_bounded() {
    let (_, _dc, mut s, mut ds) = pair(|cfg| cfg.syn_backlog = 1000);
    s.listen(80, 2).unwrap();
    let now = Instant::from_millis(1);
    // Ten clients complete the handshake (SYN, then ACK of our SYN-ACK); nobody accepts.
    for i in 0..10u16 {
        let mut seg = syn(80, 100);
        seg.src_port = 41_000 + i;
        ds.inject(&frame(&seg));
    }
    s.poll(now, &mut ds);
    for synack in tcp_out(&ds) {
        let ack = TcpRepr {
            src_port: synack.dst_port,
            dst_port: 80,
            seq: SeqNum(101),
            ack: Some(synack.seq + 1u32),
            flags: TcpFlags::ACK,
            window: 65535,
            ..Default::default()
        };
        ds.inject(&frame(&ack));
    }
    s.poll(now, &mut ds);
    let mut accepted = 0;
    while s.accept(80).is_some() {
        accepted += 1;
    }
    // The queue holds up to twice the backlog; the rest were reset and counted.
    assert_eq!(accepted, 4);
    assert_eq!(s.stats.accept_overflows, 6);
}

/// RFC 1122 3.3.1.2: a destination's own route (from the host's routing table) comes
/// before the subnet and the default gateway. A connect to it asks ARP for the route's
/// next hop, not for the gateway; a destination without one still goes to the gateway.
#[test]
fn a_route_of_its_own_comes_before_the_default_gateway() {
    let gateway = Ipv4Addr::new(192, 168, 7, 254);
    let second = Ipv4Addr::new(192, 168, 7, 9);
    let remote = Ipv4Addr::new(10, 0, 0, 1);
    let on_link_elsewhere = Ipv4Addr::new(172, 16, 0, 5);
    let mut cfg = StackConfig::new(MAC_C, IP_C, 24);
    cfg.gateway = Some(gateway);
    let mut stack = Stack::new(cfg);
    let (mut dev, _peer) = MemoryDevice::pair(MAC_C, MAC_S);
    assert_eq!(stack.next_hop(remote), gateway);
    stack.set_route(remote, second);
    stack.set_route(on_link_elsewhere, on_link_elsewhere);
    assert!(stack.has_route(remote));
    assert_eq!(stack.next_hop(remote), second);
    assert_eq!(stack.next_hop(on_link_elsewhere), on_link_elsewhere);
    assert_eq!(stack.next_hop(Ipv4Addr::new(10, 0, 0, 2)), gateway);
    assert_eq!(stack.next_hop(IP_S), IP_S, "the subnet stays on the link");
    let now = Instant::ZERO;
    stack.connect(now, SocketAddrV4::new(remote, 80)).unwrap();
    stack.poll(now, &mut dev);
    let asked: Vec<ArpRepr> = dev
        .take_transmitted()
        .iter()
        .filter_map(|f| match crate::wire::parse_frame(f) {
            Ok(crate::wire::Frame::Arp(arp)) => Some(arp),
            _ => None,
        })
        .collect();
    assert_eq!(
        asked,
        vec![ArpRepr {
            op: crate::wire::ArpOp::Request,
            sender_mac: MAC_C,
            sender_ip: IP_C,
            target_mac: [0; 6],
            target_ip: second,
        }]
    );
}

/// With a device that completes TCP checksums (TX checksum offload), the stack leaves
/// the pseudo-header sum and the frames still arrive whole: the server takes every
/// segment under the strict policy, the bytes arrive intact, and the client's RST for a
/// closed port (a stateless frame) is complete too.
#[test]
fn tx_checksum_offload_leaves_the_sum_to_the_device_and_every_segment_is_accepted() {
    let (mut c, mut dc, mut s, mut ds) = pair(|_| {});
    dc.tx_checksum_offload = true;
    s.listen(80, 16).unwrap();
    let mut now = Instant::ZERO;
    let id = c.connect(now, SocketAddrV4::new(IP_S, 80)).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 + 7) as u8).collect();
    let (mut sent, mut got, mut sid) = (0, Vec::new(), None);
    let mut buf = vec![0u8; 65536];
    drive(&mut c, &mut dc, &mut s, &mut ds, &mut now, |c, s| {
        if sent < data.len() {
            sent += c.try_send(id, &data[sent..]).unwrap_or(0);
        }
        if sid.is_none() {
            sid = s.accept(80);
        }
        if let Some(sid) = sid {
            while let Ok(n) = s.try_recv(sid, &mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        got.len() == data.len()
    });
    assert!(got == data, "the stream arrived intact");
    assert_eq!(s.stats.drop_bad_tcp_checksum, 0);
    // A frame the offloading device never saw carries only the pseudo-header sum.
    let (mut lone, _peer) = MemoryDevice::pair(MAC_C, MAC_S);
    struct Partial<'a>(&'a mut MemoryDevice);
    impl Device for Partial<'_> {
        fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize {
            self.0.receive(handle)
        }
        fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
            self.0.transmit(build)
        }
        fn flush(&mut self) {}
        fn mac(&self) -> MacAddr {
            MAC_C
        }
        fn tx_checksum_offload(&self) -> bool {
            true
        }
    }
    let mut stack = Stack::new(StackConfig::new(MAC_S, IP_S, 24));
    lone.inject(&frame(&syn(81, 100)));
    stack.poll(Instant::from_millis(1), &mut Partial(&mut lone));
    let out = lone.take_transmitted();
    assert_eq!(out.len(), 1);
    assert_eq!(
        wire::parse_frame(&out[0]).unwrap_err(),
        wire::WireError::BadTcpChecksum
    );
    let partial = wire::parse_frame_with(&out[0], wire::ChecksumPolicy::AcceptPartial).unwrap();
    assert!(partial.partial_checksum, "RST left partial");
}

/// A connection taken out of the server's stack mid-transfer and into a new stack on
/// the same interface (a forked child taking over its parent's connection): the old
/// stack drops the segments that still reach it, without a RST, and the new one goes
/// on with every byte intact over a lossy link.
#[test]
fn a_connection_moved_to_another_stack_mid_transfer_goes_on_intact() {
    let link = LinkConfig {
        loss: 0.01,
        reorder: 0.02,
        ..LinkConfig::default()
    };
    let mut pair = StackPair::new(
        5,
        StackConfig::new(MAC_C, IP_C, 24),
        StackConfig::new(MAC_S, IP_S, 24),
        link,
    );
    let (id, sid) = pair.connect(80, 16, Duration::from_secs(60));
    let mut stream = Stream::new(5, 1_000_000);
    pair.run_until(Duration::from_secs(600), |c, s| {
        stream.turn(c, s, (id, sid));
        stream.got.len() > 300_000
    });
    let rst_before = pair.server.stats.rst_sent;
    let bytes = pair.server.export(sid, &[]).expect("export");
    assert!(pair.server.connection(sid).is_none());
    // The client goes on sending for a while: the old stack drops, never resets.
    pair.run_until(Duration::from_secs(5), |_, s| {
        s.stats.moved_away_dropped >= 3
    });
    assert_eq!(
        pair.server.stats.rst_sent, rst_before,
        "the old stack sent a RST"
    );
    assert!(pair.server.stats.moved_away_dropped > 0);
    assert_eq!(pair.server.stats.connections_moved_out, 1);
    assert!(
        pair.client
            .connection(id)
            .is_some_and(|c| c.error().is_none() && c.is_synchronized()),
        "the client's connection failed"
    );
    // The new stack takes it in; a second import of the same bytes is refused.
    pair.server = Stack::new(StackConfig::new(MAC_S, IP_S, 24));
    let now = pair.now;
    let sid = pair.server.import(now, &bytes).expect("import");
    assert_eq!(
        pair.server.import(now, &bytes),
        Err(ImportError::AddressInUse)
    );
    assert_eq!(
        pair.server.import(now, &bytes[..bytes.len() - 1]),
        Err(ImportError::Move(crate::tcp::MoveError::Malformed))
    );
    pair.run_until(Duration::from_secs(600), |c, s| {
        stream.turn(c, s, (id, sid));
        stream.done()
    });
    assert!(stream.intact(), "the stream did not arrive intact");
    pair.run_until(Duration::from_secs(60), |_, s| {
        s.connection(sid).is_some_and(|c| c.at_eof())
    });
    assert_eq!(pair.server.stats.connections_moved_in, 1);
}

/// bind(2) to a port, then connect(2): the SYN leaves from that port, the connection
/// opens on it, and a second one to the same peer from it is refused (the pair of
/// addresses is taken), as Linux.
#[test]
fn a_connection_from_a_bound_port_uses_that_port() {
    let (mut c, mut dc, mut s, mut ds) = pair(|_| {});
    s.listen(80, 8).unwrap();
    let mut now = Instant::ZERO;
    let server = SocketAddrV4::new(IP_S, 80);
    let id = c.connect_from(now, 45_678, server).unwrap();
    assert_eq!(
        c.connect_from(now, 45_678, server),
        Err(StackError::NoFreePort)
    );
    drive(&mut c, &mut dc, &mut s, &mut ds, &mut now, |c, _| {
        c.state(id) == State::Established
    });
    let local = c.connection(id).unwrap().local();
    assert_eq!(local, SocketAddr::from((IP_C, 45_678)));
    let sid = s.accept(80).expect("the server accepted");
    assert_eq!(s.connection(sid).unwrap().remote(), local);
}
