//! A connection moved to another stack ([`Connection::export`], [`Connection::import`]):
//! on another clock it sends, segment for segment, what it would have sent where it
//! was; in the simulator, moved again and again mid-transfer under loss, it delivers
//! the same bytes at the same times as one never moved; bad input is refused.
#![allow(clippy::vec_init_then_push)] // the `recv!` macro builds its list item by item
use super::testkit::{sent, t};
use super::tests::{A1, ISS, P1, PEER_ISS, RECV_TEMPL, SEND_TEMPL, cfg};
use super::*;
use crate::sim::{ADDR_A, ADDR_B, LinkConfig, Pair, Rng};
use crate::wire::{TcpFlags, TcpOptions, TcpRepr};
use std::time::Duration;

/// The other stack's clock is this far ahead.
const SHIFT: Duration = Duration::from_secs(1000);

/// ESTABLISHED after an active open at t(0), the peer's SYN-ACK at t(10) carrying
/// `options` (what it agrees to of ours).
fn established(cfg: Config, options: TcpOptions) -> Connection {
    let mut c = Connection::connect(cfg, ADDR_A, ADDR_B, ISS);
    assert!(sent(&mut c, t(0))[0].0.flags.syn);
    let synack = TcpRepr {
        seq: SeqNum(PEER_ISS),
        ack: Some(SeqNum(A1)),
        flags: TcpFlags::SYN_ACK,
        options: TcpOptions {
            mss: Some(1460),
            ..options
        },
        ..SEND_TEMPL
    };
    c.handle_segment(t(10), &synack);
    assert_eq!(c.state(), State::Established);
    assert_eq!(sent(&mut c, t(10)).len(), 1);
    c
}

fn moved(c: &Connection, at: Instant, cfg: Config) -> Connection {
    let bytes = c.export(at, &[]).expect("export");
    Connection::import(at + SHIFT, cfg, &bytes).expect("import")
}

#[test]
fn a_moved_connection_acks_reads_and_retransmits_on_the_new_clock() {
    let mut a = established(cfg(), TcpOptions::NONE);
    assert_eq!(a.send(b"hello world"), Ok(11));
    recv!(
        a,
        t(20),
        [TcpRepr {
            flags: TcpFlags::PSH_ACK,
            payload: b"hello world",
        }]
    );
    // The peer's bytes arrive but are not read; the hello is not acknowledged.
    send!(
        a,
        t(30),
        TcpRepr {
            flags: TcpFlags::PSH_ACK,
            payload: b"abcde",
        }
    );
    let mut b = moved(&a, t(31), cfg());
    // The delayed ACK falls due when it would have, on the new clock.
    let ack_at = b.poll_timeout().unwrap();
    assert_eq!(ack_at, t(30) + Duration::from_millis(40) + SHIFT);
    recv_nothing!(b, t(31) + SHIFT);
    b.handle_timeout(ack_at);
    a.handle_timeout(t(70));
    sent(&mut a, t(70));
    // The RTO (200 ms, the minimum, after a 10 ms RTT) from the hello at t(20).
    let rto_at = a.poll_timeout().unwrap();
    assert_eq!(rto_at, t(220));
    recv!(
        b,
        ack_at,
        [TcpRepr {
            seq: SeqNum(A1.wrapping_add(11)),
            ack: Some(SeqNum(P1 + 5)),
        }]
    );
    let mut buf = [0; 16];
    assert_eq!(b.recv(&mut buf), 5);
    assert_eq!(&buf[..5], b"abcde");
    recv_nothing!(b, ack_at);
    // The unacknowledged hello goes again at the original's RTO deadline.
    assert_eq!(b.poll_timeout(), Some(rto_at + SHIFT));
    b.handle_timeout(rto_at + SHIFT);
    recv!(
        b,
        rto_at + SHIFT,
        [TcpRepr {
            flags: TcpFlags::PSH_ACK,
            ack: Some(SeqNum(P1 + 5)),
            payload: b"hello world",
        }]
    );
    // Acknowledged, then new data follows it.
    let now = rto_at + SHIFT + Duration::from_millis(10);
    send!(
        b,
        now,
        TcpRepr {
            seq: SeqNum(P1 + 5),
            ack: Some(SeqNum(A1.wrapping_add(11))),
        }
    );
    recv_nothing!(b, now);
    assert_eq!(b.send(b"more"), Ok(4));
    recv!(
        b,
        now,
        [TcpRepr {
            seq: SeqNum(A1.wrapping_add(11)),
            ack: Some(SeqNum(P1 + 5)),
            flags: TcpFlags::PSH_ACK,
            payload: b"more",
        }]
    );
}

/// Everything the connection sends at `now`: each header whole, and its payload (its
/// length and a checksum of it, so that a difference prints short).
fn out(c: &mut Connection, now: Instant) -> Vec<(TcpRepr<'static>, usize, u64)> {
    sent(c, now)
        .into_iter()
        .map(|(repr, payload)| {
            let sum = payload.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            (repr, payload.len(), sum)
        })
        .collect()
}

#[test]
fn a_moved_connection_sends_what_the_original_would_timestamps_and_sack_included() {
    let options = TcpOptions {
        window_scale: Some(7),
        sack_permitted: true,
        timestamps: Some((5000, 0)),
        ..TcpOptions::NONE
    };
    let mut a = established(Config::default(), options);
    let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
    let mut queued = a.send(&data).unwrap();
    let first = out(&mut a, t(20));
    assert!(first.len() >= 10, "the initial window goes out");
    // The peer holds the third segment and later ones but not the first two (SACK),
    // and sends bytes of its own out of order (a gap before them).
    let mss = first[0].1 as u32;
    let mut sack = TcpOptions {
        timestamps: Some((5010, first[0].0.options.timestamps.unwrap().0)),
        ..TcpOptions::NONE
    };
    sack.sack_blocks[0] = (A1.wrapping_add(2 * mss), A1.wrapping_add(5 * mss));
    sack.sack_count = 1;
    let dup = TcpRepr {
        options: sack,
        window: 1000,
        ..SEND_TEMPL
    };
    a.handle_segment(t(30), &dup);
    let ooo = TcpRepr {
        seq: SeqNum(P1 + 100),
        payload: b"later bytes",
        options: TcpOptions {
            timestamps: Some((5011, 0)),
            ..TcpOptions::NONE
        },
        window: 1000,
        ..SEND_TEMPL
    };
    a.handle_segment(t(31), &ooo);
    let mut b = moved(&a, t(32), Config::default());
    let shifted = |at: Instant| at + SHIFT;
    assert_eq!(out(&mut a, t(32)), out(&mut b, shifted(t(32))));
    // Then the same events on both: duplicate ACKs, timeouts, the gap filled, more
    // data, the peer's FIN; every segment each sends is the same, TSval included.
    let mut now = t(32);
    let mut compared = 0;
    for round in 0..40u32 {
        now = match (a.poll_timeout(), round % 3) {
            (Some(at), 0) if round > 6 => at,
            _ => now + Duration::from_millis(7),
        };
        a.handle_timeout(now);
        b.handle_timeout(shifted(now));
        let (una, _, rcv_nxt) = a.sequence_numbers();
        let mut seg = TcpRepr {
            seq: SeqNum(rcv_nxt),
            ack: Some(SeqNum(una.wrapping_add(if round % 4 == 1 {
                mss
            } else {
                0
            }))),
            window: 1000,
            options: TcpOptions {
                timestamps: Some((5020 + round, 0)),
                ..TcpOptions::NONE
            },
            ..SEND_TEMPL
        };
        if round < 5 {
            // Duplicate ACKs whose SACK blocks grow: fast recovery resends the holes
            // the scoreboard shows (RFC 6675), the blocks from before the move included.
            seg.ack = Some(SeqNum(A1));
            // One block each, the newest (RFC 2018 section 4 lets a receiver leave the
            // older ones out): what the first said is only in the moved scoreboard.
            seg.options.sack_blocks[0] =
                (A1.wrapping_add(6 * mss), A1.wrapping_add((7 + round) * mss));
            seg.options.sack_count = 1;
        }
        if round == 5 {
            seg.seq = SeqNum(P1);
            seg.payload = &[b'x'; 100];
        }
        if round == 30 {
            seg.flags = TcpFlags::FIN_ACK;
        }
        a.handle_segment(now, &seg);
        b.handle_segment(shifted(now), &seg);
        if queued < data.len() {
            let n = a.send(&data[queued..]).unwrap();
            assert_eq!(b.send(&data[queued..]), Ok(n));
            queued += n;
        }
        let (mut ra, mut rb) = ([0; 512], [0; 512]);
        let n = a.recv(&mut ra);
        assert_eq!(b.recv(&mut rb), n);
        assert_eq!(ra[..n], rb[..n]);
        let from_a = out(&mut a, now);
        compared += from_a.len();
        assert_eq!(from_a, out(&mut b, shifted(now)), "round {round}");
        assert_eq!(a.state(), b.state());
        assert_eq!(a.sequence_numbers(), b.sequence_numbers());
        assert_eq!(a.poll_timeout().map(|at| at + SHIFT), b.poll_timeout());
    }
    assert_eq!(a.state(), State::CloseWait);
    assert!(compared > 30, "{compared} segments");
    assert!(a.stats().fast_retransmits > 0 && a.stats().timeouts > 0);
}

/// A transfer both ways over a lossy, reordering link, with both ends moved to a new
/// connection every `every` steps (none: never).
fn lossy_transfer(seed: u64, every: Option<usize>) -> Pair {
    let link = LinkConfig {
        loss: 0.03,
        reorder: 0.05,
        duplicate: 0.01,
        jitter: Duration::from_millis(2),
        ..LinkConfig::default()
    };
    let mut pair = Pair::new(
        seed,
        Config::default(),
        Config::default(),
        link.clone(),
        link,
    );
    let mut rng = Rng::new(seed ^ 0x5eed);
    pair.app_a.to_send = vec![0; 300_000];
    rng.fill(&mut pair.app_a.to_send);
    pair.app_b.to_send = vec![0; 100_000];
    rng.fill(&mut pair.app_b.to_send);
    let mut steps = 0;
    let mut moves = 0;
    let deadline = pair.now + Duration::from_secs(600);
    while pair.now < deadline {
        let finished = |s: State| matches!(s, State::Closed | State::TimeWait);
        if finished(pair.a.state()) && pair.b.as_ref().is_some_and(|b| finished(b.state())) {
            break;
        }
        if !pair.step() {
            break;
        }
        steps += 1;
        if every.is_some_and(|n| steps % n == 0) {
            let now = pair.now;
            if let Ok(bytes) = pair.a.export(now, &[]) {
                pair.a = Connection::import(now, Config::default(), &bytes).unwrap();
                moves += 1;
            }
            if let Some(b) = pair.b.as_mut()
                && let Ok(bytes) = b.export(now, &[])
            {
                *b = Connection::import(now, Config::default(), &bytes).unwrap();
                moves += 1;
            }
        }
    }
    if every.is_some() {
        assert!(moves > 20, "seed {seed}: only {moves} moves");
    }
    assert_eq!(
        pair.app_b.received, pair.app_a.to_send,
        "seed {seed}: a to b"
    );
    assert_eq!(
        pair.app_a.received, pair.app_b.to_send,
        "seed {seed}: b to a"
    );
    pair
}

#[test]
fn moved_again_and_again_under_loss_a_transfer_is_the_same_as_one_never_moved() {
    for seed in 1..=4 {
        let still = lossy_transfer(seed, None);
        let moved = lossy_transfer(seed, Some(7));
        assert!(still.a_to_b.stats.lost + still.b_to_a.stats.lost > 0);
        // The same segments at the same times: the links saw the same frames.
        assert_eq!(still.now, moved.now, "seed {seed}: ended at another time");
        assert_eq!(
            format!("{:?} {:?}", still.a_to_b.stats, still.b_to_a.stats),
            format!("{:?} {:?}", moved.a_to_b.stats, moved.b_to_a.stats),
            "seed {seed}"
        );
        assert_eq!(still.a.sequence_numbers(), moved.a.sequence_numbers());
    }
}

#[test]
fn only_a_synchronized_connection_with_its_lent_bytes_moves() {
    let mut c = Connection::connect(cfg(), ADDR_A, ADDR_B, ISS);
    assert_eq!(c.export(t(0), &[]), Err(MoveError::NotSynchronized));
    sent(&mut c, t(0));
    assert_eq!(c.export(t(1), &[]), Err(MoveError::NotSynchronized));
    let mut c = established(cfg(), TcpOptions::NONE);
    send!(
        c,
        t(20),
        TcpRepr {
            flags: TcpFlags::PSH_ACK,
            payload: b"abcdef",
        }
    );
    let mut lent = crate::tcp::reassembly::RecvBuf::new();
    assert_eq!(c.take_readable(&mut lent), 6);
    assert_eq!(c.export(t(21), &[]), Err(MoveError::Lent));
    let mut two = [0; 2];
    assert_eq!(lent.read(&mut two), 2);
    let mut rest = [0; 4];
    assert_eq!(lent.peek(&mut rest), 4);
    // The application read 2 of the 6: the other 4 travel, first in line.
    c.returned(2);
    assert_eq!(c.export(t(21), &rest[..3]), Err(MoveError::Lent));
    let bytes = c.export(t(21), &rest).unwrap();
    let mut b = Connection::import(t(21), cfg(), &bytes).unwrap();
    let mut buf = [0; 8];
    assert_eq!(b.recv(&mut buf), 4);
    assert_eq!(&buf[..4], b"cdef");
    c.abort();
    assert_eq!(c.export(t(22), &[]), Err(MoveError::NotSynchronized));
}

#[test]
fn a_cut_or_garbled_export_is_refused_or_harmless_never_a_panic() {
    let mut c = established(Config::default(), TcpOptions::NONE);
    c.send(&[7; 5000]).unwrap();
    sent(&mut c, t(20));
    send!(
        c,
        t(25),
        TcpRepr {
            seq: SeqNum(P1 + 10),
            payload: b"out of order",
        }
    );
    let bytes = c.export(t(30), &[]).unwrap();
    for len in 0..bytes.len() {
        assert_eq!(
            Connection::import(t(0), Config::default(), &bytes[..len]).err(),
            Some(MoveError::Malformed),
            "cut at {len}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Connection::import(t(0), Config::default(), &longer).is_err());
    // Flipped bits: refused, or a connection that runs (and may fail) without a panic.
    let mut rng = Rng::new(11);
    for _ in 0..2000 {
        let mut garbled = bytes.clone();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(garbled.len() as u64) as usize;
            garbled[at] ^= 1 << rng.below(8);
        }
        let Ok(mut g) = Connection::import(t(0), Config::default(), &garbled) else {
            continue;
        };
        let mut now = t(0);
        for i in 0..20u32 {
            sent(&mut g, now);
            let (una, nxt, rcv) = g.sequence_numbers();
            let seg = TcpRepr {
                seq: SeqNum(rcv),
                ack: Some(SeqNum(if i % 2 == 0 { nxt } else { una })),
                payload: b"xyz",
                ..SEND_TEMPL
            };
            g.handle_segment(now, &seg);
            now = g
                .poll_timeout()
                .unwrap_or(now)
                .max(now + Duration::from_millis(1));
            g.handle_timeout(now);
            let mut buf = [0; 64];
            g.recv(&mut buf);
            let _ = g.send(b"data");
        }
    }
}
