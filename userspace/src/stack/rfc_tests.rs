//! Stack-level tests for issue 11 (listener, TIME-WAIT reuse, ARP, SYN cookies), in the
//! style of the TCP tests: `send!` injects a segment from the client at 192.168.7.1:40000
//! and polls the server, `recv!` checks every frame the server sent, whole.
use super::tests::{IP_C, IP_S, MAC_C, MAC_S, frame, pair};
use super::*;
use crate::device::memory::MemoryDevice;
use crate::wire::{ArpOp, TcpFlags, TcpOptions, TcpRepr};
use std::time::Duration;

const CLIENT_ISS: u32 = 7000;
const C1: u32 = CLIENT_ISS + 1;

const NO_OPTIONS: TcpOptions = TcpOptions::NONE;

/// The client's segments unless a test says otherwise.
const SEND_TEMPL: TcpRepr<'static> = TcpRepr {
    src_port: 40_000,
    dst_port: 80,
    seq: SeqNum(C1),
    ack: None,
    flags: TcpFlags::ACK,
    window: 65535,
    options: NO_OPTIONS,
    payload: &[],
};

/// The server's segments unless a test says otherwise.
const RECV_TEMPL: TcpRepr<'static> = TcpRepr {
    src_port: 80,
    dst_port: 40_000,
    seq: SeqNum(0),
    ack: Some(SeqNum(C1)),
    flags: TcpFlags::ACK,
    window: 65535,
    options: NO_OPTIONS,
    payload: &[],
};

const SYN: TcpRepr<'static> = TcpRepr {
    seq: SeqNum(CLIENT_ISS),
    flags: TcpFlags::SYN,
    options: TcpOptions {
        mss: Some(1460),
        ..NO_OPTIONS
    },
    ..SEND_TEMPL
};

const FIN_ACK: TcpFlags = TcpFlags::FIN_ACK;

/// Injects one client segment (the template with these fields) and polls the server.
macro_rules! send {
    ($s:expr, $ds:expr, $now:expr, TcpRepr { $($field:ident : $value:expr,)* ..$base:expr }) => {{
        $ds.inject(&frame(&TcpRepr { $($field: $value,)* ..$base }));
        $s.poll($now, &mut $ds);
    }};
    ($s:expr, $ds:expr, $now:expr, TcpRepr { $($field:ident : $value:expr),* $(,)? }) => {
        send!($s, $ds, $now, TcpRepr { $($field: $value,)* ..SEND_TEMPL })
    };
}

/// Checks that the server sent exactly these TCP segments (template plus fields) and no
/// other frame.
macro_rules! recv {
    ($ds:expr, [$(TcpRepr { $($field:ident : $value:expr),* $(,)? }),* $(,)?]) => {{
        let want: Vec<TcpRepr<'static>> = vec![$(TcpRepr { $($field: $value,)* ..RECV_TEMPL }),*];
        check_out(&$ds, &want);
    }};
}

#[track_caller]
fn check_out(ds: &MemoryDevice, want: &[TcpRepr<'static>]) {
    let frames = ds.take_transmitted();
    let mut got = Vec::new();
    for f in &frames {
        match wire::parse_frame(f) {
            Ok(Frame::Tcp { tcp, ip, .. }) => {
                assert_eq!((ip.src, ip.dst), (IP_S, IP_C));
                assert!(tcp.payload.is_empty(), "no test here expects data");
                got.push(TcpRepr {
                    payload: &[],
                    ..tcp
                });
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(got, want);
}

/// The SYN-ACK's sequence number: the server's ISS, a keyed hash.
fn take_syn_ack(ds: &MemoryDevice) -> TcpRepr<'static> {
    let frames = ds.take_transmitted();
    assert_eq!(frames.len(), 1, "one SYN-ACK");
    match wire::parse_frame(&frames[0]) {
        Ok(Frame::Tcp { tcp, .. }) => {
            assert_eq!(tcp.flags, TcpFlags::SYN_ACK);
            TcpRepr {
                payload: &[],
                ..tcp
            }
        }
        other => panic!("unexpected frame {other:?}"),
    }
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn server(cfg: impl FnOnce(&mut StackConfig)) -> (Stack, MemoryDevice) {
    let (_, _dc, mut s, ds) = pair(cfg);
    s.listen(80, 16).unwrap();
    (s, ds)
}

/// A handshake on the server; returns the server's ISS + 1.
fn handshake(s: &mut Stack, ds: &mut MemoryDevice, now: Instant) -> SeqNum {
    ds.inject(&frame(&SYN));
    s.poll(now, ds);
    let synack = take_syn_ack(ds);
    let s1 = synack.seq + 1u32;
    send!(s, *ds, now, TcpRepr { ack: Some(s1) });
    recv!(*ds, []);
    s1
}

// ---------------------------------------------------------------- 22. listener

#[test]
fn test_listen_segment_without_syn_or_ack_is_dropped() {
    let (mut s, mut ds) = server(|_| {});
    // RFC 9293 3.10.7.2: neither SYN nor ACK (nor RST): drop, no RST.
    send!(
        s,
        ds,
        t(1),
        TcpRepr {
            flags: TcpFlags {
                fin: true,
                ..TcpFlags::default()
            },
        }
    );
    recv!(ds, []);
    send!(
        s,
        ds,
        t(2),
        TcpRepr {
            flags: TcpFlags::default(),
            payload: b"data",
        }
    );
    recv!(ds, []);
    // An ACK still gets its RST.
    send!(
        s,
        ds,
        t(3),
        TcpRepr {
            ack: Some(SeqNum(1234))
        }
    );
    recv!(
        ds,
        [TcpRepr {
            flags: TcpFlags::RST,
            seq: SeqNum(1234),
            ack: None,
            window: 0,
        }]
    );
}

// ---------------------------------------------------------------- 15. accept queue, cookies

#[test]
fn test_listen_syn_dropped_when_accept_queue_full() {
    let (_, _dc, mut s, mut ds) = pair(|_| {});
    s.listen(80, 1).unwrap();
    handshake(&mut s, &mut ds, t(1));
    // The accept queue (backlog 1) is full: the next SYN is dropped, as Linux does.
    send!(
        s,
        ds,
        t(2),
        TcpRepr {
            src_port: 40_001,
            ..SYN
        }
    );
    recv!(ds, []);
    assert_eq!(s.stats.listen_overflows, 1);
    assert_eq!(s.stats.syn_cookies_sent, 0);
}

#[test]
fn test_listen_syn_cookie_keeps_window_scale_sack_and_timestamps() {
    let (mut s, mut ds) = server(|cfg| cfg.syn_backlog = 0);
    let now = t(5000);
    send!(
        s,
        ds,
        now,
        TcpRepr {
            options: TcpOptions {
                mss: Some(1460),
                window_scale: Some(7),
                sack_permitted: true,
                timestamps: Some((777, 0)),
                ..NO_OPTIONS
            },
            ..SYN
        }
    );
    let synack = take_syn_ack(&ds);
    assert_eq!(s.connection_count(), 0, "no state for a cookie");
    let (tsval, _) = synack.options.timestamps.expect("timestamps kept");
    // Low bits: window scale 7 and SACK (bit 4), as Linux encodes them.
    assert_eq!(tsval & 0x3f, 7 | 0x10);
    assert_eq!(
        synack,
        TcpRepr {
            flags: TcpFlags::SYN_ACK,
            seq: synack.seq,
            options: TcpOptions {
                mss: Some(1460),
                window_scale: Some(5),
                sack_permitted: true,
                timestamps: Some((tsval, 777)),
                ..NO_OPTIONS
            },
            ..RECV_TEMPL
        }
    );
    let s1 = synack.seq + 1u32;
    // The ACK completes the handshake; its window is scaled by 7.
    send!(
        s,
        ds,
        now,
        TcpRepr {
            ack: Some(s1),
            window: 100,
            options: TcpOptions {
                timestamps: Some((778, tsval)),
                ..NO_OPTIONS
            },
        }
    );
    recv!(ds, []);
    assert_eq!(s.stats.syn_cookies_accepted, 1);
    let id = s.accept(80).expect("accepted from the cookie");
    // Out-of-order data draws an ACK with a SACK block, a scaled window and timestamps.
    let later = now + Duration::from_millis(10);
    send!(
        s,
        ds,
        later,
        TcpRepr {
            seq: SeqNum(C1 + 100),
            ack: Some(s1),
            payload: b"late",
            options: TcpOptions {
                timestamps: Some((779, tsval)),
                ..NO_OPTIONS
            },
        }
    );
    let frames = ds.take_transmitted();
    assert_eq!(frames.len(), 1);
    let Ok(Frame::Tcp { tcp, .. }) = wire::parse_frame(&frames[0]) else {
        panic!("not TCP");
    };
    let ts = tcp.options.timestamps.expect("timestamps on").0;
    // Our clock: 10 ms after the cookie's TSval, which sits up to 127 ms below it.
    assert!(ts.wrapping_sub(tsval) >= 10 && ts.wrapping_sub(tsval) < 10 + 128);
    let mut sack = NO_OPTIONS;
    sack.sack_blocks[0] = (C1 + 100, C1 + 104);
    sack.sack_count = 1;
    sack.timestamps = Some((ts, 778));
    assert_eq!(
        TcpRepr {
            payload: &[],
            ..tcp
        },
        TcpRepr {
            seq: s1,
            window: ((1 << 20) >> 5) as u16,
            options: sack,
            ..RECV_TEMPL
        }
    );
    assert_eq!(
        s.connection(id).unwrap().state(),
        crate::tcp::State::Established
    );
}

// ---------------------------------------------------------------- 1. TIME-WAIT reuse

#[test]
fn test_time_wait_new_syn_with_higher_sequence_opens_a_connection() {
    let (mut s, mut ds) = server(|_| {});
    let s1 = handshake(&mut s, &mut ds, t(1));
    let id = s.accept(80).unwrap();
    // The server closes first and ends in TIME-WAIT.
    s.close(id);
    s.poll(t(2), &mut ds);
    recv!(
        ds,
        [TcpRepr {
            flags: FIN_ACK,
            seq: s1,
        }]
    );
    send!(
        s,
        ds,
        t(3),
        TcpRepr {
            flags: FIN_ACK,
            ack: Some(s1 + 1u32),
        }
    );
    recv!(
        ds,
        [TcpRepr {
            seq: s1 + 1u32,
            ack: Some(SeqNum(C1 + 1)),
            window: 65534,
        }]
    );
    assert_eq!(s.state(id), State::TimeWait);
    s.release(id);
    // A new SYN on the same 4-tuple, above RCV.NXT: a new connection, not an ACK.
    ds.inject(&frame(&TcpRepr {
        seq: SeqNum(C1 + 100_000),
        ..SYN
    }));
    s.poll(t(4), &mut ds);
    let synack = take_syn_ack(&ds);
    assert_eq!(
        synack,
        TcpRepr {
            flags: TcpFlags::SYN_ACK,
            seq: synack.seq,
            ack: Some(SeqNum(C1 + 100_001)),
            options: TcpOptions {
                mss: Some(1460),
                ..NO_OPTIONS
            },
            ..RECV_TEMPL
        }
    );
    assert_eq!(s.stats.time_wait_reopened, 1);
    assert_eq!(s.connection_count(), 1);
}

// ---------------------------------------------------------------- 4. ARP failure

#[test]
fn test_syn_sent_neighbour_never_answers_arp_connect_fails() {
    let (mut c, mut dc, _, _ds) = pair(|_| {});
    let id = c.connect(t(0), SocketAddrV4::new(IP_S, 80)).unwrap();
    let mut requests = Vec::new();
    let mut ms = 0;
    while c.state(id) != State::Closed {
        assert!(ms < 10_000, "connect never failed");
        c.poll(t(ms), &mut dc);
        for f in dc.take_transmitted() {
            match wire::parse_frame(&f) {
                Ok(Frame::Arp(arp)) => {
                    assert_eq!(
                        arp,
                        ArpRepr {
                            op: ArpOp::Request,
                            sender_mac: MAC_C,
                            sender_ip: IP_C,
                            target_mac: [0; 6],
                            target_ip: IP_S,
                        }
                    );
                    requests.push(ms);
                }
                other => panic!("only ARP requests go out: {other:?}"),
            }
        }
        ms += 1;
    }
    // Backoff 200, 400, 800 ms; the connect fails 3 s after it started.
    assert_eq!(requests, vec![0, 200, 600, 1400]);
    assert_eq!(ms - 1, 3000);
    assert_eq!(
        c.connection(id).and_then(|x| x.error()),
        Some(crate::tcp::TcpError::HostUnreachable)
    );
    assert_eq!(c.stats.arp_failures, 1);
    let _ = MAC_S;
}

// ---------------------------------------------------------------- 19. ARP cache bounds

#[test]
fn test_arp_cache_is_bounded_and_expires() {
    let (_, _dc, mut s, mut ds) = pair(|_| {});
    for i in 0..2000u32 {
        let sender = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i);
        let arp = ArpRepr {
            op: ArpOp::Request,
            sender_mac: [2, 0, 0, 1, (i >> 8) as u8, i as u8],
            sender_ip: sender,
            target_mac: [0; 6],
            target_ip: IP_S,
        };
        let mut buf = [0u8; 64];
        let n = wire::emit_arp(&mut buf, BROADCAST_MAC, &arp);
        ds.inject(&buf[..n]);
        if ds.pending_rx() >= 64 {
            s.poll(t(1), &mut ds);
        }
    }
    s.poll(t(1), &mut ds);
    assert_eq!(s.arp_cache().len(), arp::ARP_CAPACITY);
    assert_eq!(s.stats.arp_cache_full, 2000 - arp::ARP_CAPACITY as u64);
    // Every request was still answered (owned-IP mode).
    assert_eq!(ds.take_transmitted().len(), 2000);
    s.poll(t(1) + arp::ARP_STALE, &mut ds);
    assert_eq!(
        s.arp_cache().len(),
        0,
        "learned entries unused for 60 s expire"
    );
}

// ---------------------------------------------------------------- 10. IPv4 reassembly

/// Splits the IPv4 packet of `frame` into fragments of `size` payload bytes (last first,
/// to check the order does not matter).
fn fragments(frame: &[u8], size: usize) -> Vec<Vec<u8>> {
    let eth = &frame[..wire::ETH_HEADER_LEN];
    let ip = &frame[wire::ETH_HEADER_LEN..];
    let payload = &ip[20..];
    let mut out = Vec::new();
    for (i, chunk) in payload.chunks(size).enumerate() {
        let more = (i + 1) * size < payload.len();
        let mut f = eth.to_vec();
        let mut h = ip[..20].to_vec();
        h[2..4].copy_from_slice(&((20 + chunk.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        let fo = ((i * size / 8) as u16) | if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&fo.to_be_bytes());
        h[10..12].fill(0);
        let sum = wire::checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&h);
        f.extend_from_slice(chunk);
        out.push(f);
    }
    out.reverse();
    out
}

#[test]
fn test_established_fragmented_segment_is_reassembled() {
    let (mut s, mut ds) = server(|_| {});
    let s1 = handshake(&mut s, &mut ds, t(1));
    let id = s.accept(80).unwrap();
    static DATA: [u8; 1192] = [0x77; 1192];
    let seg = TcpRepr {
        ack: Some(s1),
        flags: TcpFlags {
            psh: true,
            ..TcpFlags::ACK
        },
        payload: &DATA,
        ..SEND_TEMPL
    };
    // A 1232-byte datagram in 4 fragments (RFC 1122 3.3.2: a host MUST reassemble).
    let pieces = fragments(&frame(&seg), 304);
    assert_eq!(pieces.len(), 4);
    for p in &pieces {
        ds.inject(p);
    }
    s.poll(t(2), &mut ds);
    recv!(ds, []);
    let mut buf = [0u8; 2000];
    assert_eq!(s.try_recv(id, &mut buf), Ok(1192));
    assert_eq!(&buf[..1192], &DATA[..]);
    // One segment: the ACK is delayed (40 ms).
    s.poll(t(42), &mut ds);
    recv!(
        ds,
        [TcpRepr {
            seq: s1,
            ack: Some(SeqNum(C1 + 1192)),
        }]
    );
    assert_eq!(s.stats.ip_fragments, 4);
    assert_eq!(s.stats.ip_reassembled, 1);
    assert_eq!(s.stats.drop_ip_fragment, 0);
}

#[test]
fn test_listen_incomplete_fragments_time_out() {
    let (mut s, mut ds) = server(|_| {});
    let pieces = fragments(&frame(&SYN), 16);
    ds.inject(&pieces[1]);
    s.poll(t(1), &mut ds);
    recv!(ds, []);
    assert_eq!(s.poll_at(), Some(t(1) + wire::frag::REASSEMBLY_TIMEOUT));
    s.poll(t(1) + wire::frag::REASSEMBLY_TIMEOUT, &mut ds);
    assert_eq!(s.stats.ip_reassembly_timeouts, 1);
    // The rest of it arrives too late: no SYN-ACK.
    ds.inject(&pieces[0]);
    s.poll(t(31_002), &mut ds);
    recv!(ds, []);
    assert_eq!(s.connection_count(), 0);
}

// ---------------------------------------------------------------- sharded stacks

/// Two stacks serving the same port on different RX queues (`serve` shards): a flow
/// whose later segments land on the other stack's queue is handed over, not reset.
#[test]
fn test_established_segment_on_another_stacks_queue_is_handed_over() {
    let directory = std::sync::Arc::new(ShardDirectory::default());
    let (mut a, mut da) = server(|_| {});
    let (mut b, mut db) = server(|_| {});
    a.join_shards(directory.clone(), 0);
    b.join_shards(directory, 1);
    let s1 = handshake(&mut a, &mut da, t(1));
    // B knows no such connection: it sends nothing (no RST) and keeps the frame.
    send!(
        b,
        db,
        t(2),
        TcpRepr {
            ack: Some(s1),
            flags: TcpFlags::PSH_ACK,
            payload: b"hello",
        }
    );
    recv!(db, []);
    let strays = b.take_strays();
    assert_eq!(strays.len(), 1);
    assert_eq!(strays[0].0, 0, "for A, which owns the connection");
    assert_eq!((b.stats.closed_port, b.stats.rst_sent), (0, 0));
    assert!(b.take_strays().is_empty(), "taken once");
    // A takes it as its own segment and acknowledges the 5 bytes.
    a.receive_handed_over(t(2), &strays[0].1);
    a.poll(t(2), &mut da);
    a.poll(t(500), &mut da); // the delayed ACK (RFC 9293 3.8.6.3)
    recv!(
        da,
        [TcpRepr {
            seq: s1,
            ack: Some(SeqNum(C1 + 5)),
        }]
    );
    assert_eq!(a.stats.strays_received, 1);
    assert_eq!(a.stats.strays_unclaimed, 0);
    // A frame handed over for a connection that is gone meanwhile: a closed port's RST
    // (RFC 9293 3.10.7.1), never handed on again.
    b.receive_handed_over(
        t(600),
        &frame(&TcpRepr {
            ack: Some(SeqNum(1234)),
            ..SEND_TEMPL
        }),
    );
    b.poll(t(600), &mut db);
    recv!(
        db,
        [TcpRepr {
            seq: SeqNum(1234),
            ack: None,
            flags: TcpFlags::RST,
            window: 0,
        }]
    );
    assert_eq!(b.stats.strays_unclaimed, 1);
    assert!(b.take_strays().is_empty(), "never handed on again");
}

/// Sharded stacks answer a segment no stack has a connection for at once, as one stack
/// does (RFC 9293 3.10.7.1 for a closed port, 3.10.7.2 for an ACK at a listener): a
/// closed port is refused at once, not left to the client's timeout.
#[test]
fn test_sharded_closed_port_and_stray_ack_at_listener_get_rst() {
    let directory = std::sync::Arc::new(ShardDirectory::default());
    let (mut a, mut da) = server(|_| {});
    let (mut b, mut db) = server(|_| {});
    a.join_shards(directory.clone(), 0);
    b.join_shards(directory, 1);
    handshake(&mut a, &mut da, t(1));
    // A SYN to a port nobody listens on.
    send!(
        b,
        db,
        t(2),
        TcpRepr {
            dst_port: 9,
            seq: SeqNum(CLIENT_ISS),
            flags: TcpFlags::SYN,
        }
    );
    recv!(
        db,
        [TcpRepr {
            src_port: 9,
            seq: SeqNum(0),
            ack: Some(SeqNum(C1)),
            flags: TcpFlags::RST_ACK,
            window: 0,
        }]
    );
    // A stray ACK at the listener from a port no stack has a connection for.
    send!(
        b,
        db,
        t(3),
        TcpRepr {
            src_port: 40_001,
            ack: Some(SeqNum(1234)),
        }
    );
    recv!(
        db,
        [TcpRepr {
            dst_port: 40_001,
            seq: SeqNum(1234),
            ack: None,
            flags: TcpFlags::RST,
            window: 0,
        }]
    );
    assert!(b.take_strays().is_empty());
    assert_eq!(b.stats.closed_port, 2);
}

/// A sharded stack's own connect is recorded in the directory, so the peer's answer on
/// another stack's queue goes to it instead of being reset there.
#[test]
fn test_syn_sent_answer_on_another_shard_goes_to_the_connecting_stack() {
    let directory = std::sync::Arc::new(ShardDirectory::default());
    let (mut a, _da) = server(|_| {});
    let (mut b, mut db) = server(|_| {});
    a.join_shards(directory.clone(), 0);
    b.join_shards(directory, 1);
    let id = a.connect(t(1), SocketAddrV4::new(IP_C, 40_000)).unwrap();
    let local = a.connection(id).unwrap().local();
    send!(
        b,
        db,
        t(2),
        TcpRepr {
            dst_port: local.port(),
            seq: SeqNum(CLIENT_ISS),
            ack: Some(SeqNum(1)),
            flags: TcpFlags::SYN_ACK,
        }
    );
    recv!(db, []);
    let strays = b.take_strays();
    assert_eq!(strays.len(), 1);
    assert_eq!(strays[0].0, 0);
}

#[test]
fn test_closed_segment_without_sharding_still_gets_rst() {
    let (mut s, mut ds) = server(|_| {});
    send!(
        s,
        ds,
        t(1),
        TcpRepr {
            ack: Some(SeqNum(1234))
        }
    );
    recv!(
        ds,
        [TcpRepr {
            seq: SeqNum(1234),
            ack: None,
            flags: TcpFlags::RST,
            window: 0,
        }]
    );
    assert!(s.take_strays().is_empty());
}

// ---------------------------------------------------------------- next hop learned

/// The kinds of frame a client stack sent: "arp" or the TCP flags.
fn sent_kinds(dc: &MemoryDevice) -> Vec<String> {
    dc.take_transmitted()
        .iter()
        .map(|f| match wire::parse_frame(f) {
            Ok(Frame::Arp(_)) => "arp".to_string(),
            Ok(Frame::Tcp { tcp, .. }) => format!("{:?}", tcp.flags),
            other => panic!("unexpected frame {other:?}"),
        })
        .collect()
}

/// RFC 1122 2.3.2.2: a connection waiting for its next hop sends as soon as the ARP
/// reply arrives, not at its next retransmission timeout.
#[test]
fn test_syn_sent_arp_reply_releases_the_syn_at_once() {
    let (mut c, mut dc, _s, _ds) = pair(|_| {});
    let id = c.connect(t(1), SocketAddrV4::new(IP_S, 80)).unwrap();
    c.poll(t(1), &mut dc);
    assert_eq!(sent_kinds(&dc), ["arp"]);
    let mut reply = vec![0u8; 64];
    let n = wire::emit_arp(
        &mut reply,
        MAC_C,
        &ArpRepr {
            op: ArpOp::Reply,
            sender_mac: MAC_S,
            sender_ip: IP_S,
            target_mac: MAC_C,
            target_ip: IP_C,
        },
    );
    reply.truncate(n);
    dc.inject(&reply);
    c.poll(t(2), &mut dc);
    assert_eq!(sent_kinds(&dc), [format!("{:?}", TcpFlags::SYN)]);
    assert_eq!(c.state(id), State::SynSent);
}

/// The same with an address learned outside the stack (the kernel's neighbour table).
#[test]
fn test_syn_sent_neighbour_added_by_the_application_releases_the_syn() {
    let (mut c, mut dc, _s, _ds) = pair(|_| {});
    c.connect(t(1), SocketAddrV4::new(IP_S, 80)).unwrap();
    c.poll(t(1), &mut dc);
    assert_eq!(sent_kinds(&dc), ["arp"]);
    c.add_neighbour(IP_S, MAC_S);
    c.poll(t(2), &mut dc);
    assert_eq!(sent_kinds(&dc), [format!("{:?}", TcpFlags::SYN)]);
}

/// A SYN retransmitted onto another shard's queue (Linux rehashes the flow after a SYN
/// timeout) goes to the shard that has the half-open connection, which answers with its
/// SYN-ACK again (RFC 9293 3.10.7.4): no second connection with another ISN.
#[test]
fn test_syn_received_retransmitted_syn_on_another_shard_goes_to_the_owner() {
    let directory = std::sync::Arc::new(ShardDirectory::default());
    let (mut a, mut da) = server(|_| {});
    let (mut b, mut db) = server(|_| {});
    a.join_shards(directory.clone(), 0);
    b.join_shards(directory.clone(), 1);
    da.inject(&frame(&SYN));
    a.poll(t(1), &mut da);
    let first = take_syn_ack(&da);
    // The retransmitted SYN reaches B: B opens nothing and answers nothing.
    db.inject(&frame(&SYN));
    b.poll(t(1001), &mut db);
    recv!(db, []);
    assert_eq!(b.connection_count(), 0);
    let strays = b.take_strays();
    assert_eq!(strays.len(), 1);
    // A gets it and sends the same SYN-ACK again.
    a.receive_handed_over(t(1001), &strays[0].1);
    a.poll(t(1001), &mut da);
    let again = take_syn_ack(&da);
    assert_eq!(again.seq, first.seq);
    // Once A's connection is gone, the tuple is free for whichever shard gets the SYN.
    send!(
        a,
        da,
        t(1002),
        TcpRepr {
            flags: TcpFlags::RST,
            ack: None
        }
    );
    a.poll(t(1003), &mut da);
    assert_eq!(a.connection_count(), 0);
    db.inject(&frame(&SYN));
    b.poll(t(2000), &mut db);
    assert_eq!(take_syn_ack(&db).flags, TcpFlags::SYN_ACK);
    assert_eq!(b.connection_count(), 1);
}
