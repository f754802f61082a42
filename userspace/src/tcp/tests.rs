//! State machine tests: unit tests per state and event (`test_<state>_<event>`, after
//! smoltcp), and property tests over the simulator.
#![allow(clippy::vec_init_then_push)] // the `recv!` macro builds its list item by item
use super::testkit::{sent, t};
use super::*;
use crate::sim::{ADDR_A, ADDR_B, LinkConfig, Pair};
use crate::wire::{TcpFlags, TcpOptions, TcpRepr};
use std::time::Duration;

pub(super) const ISS: u32 = u32::MAX - 5; // near the wrap
pub(super) const PEER_ISS: u32 = 1000;

pub(super) fn cfg() -> Config {
    Config {
        timestamps: false,
        sack: false,
        ..Config::default()
    }
}

fn seg(seq: u32, ack: u32, flags: TcpFlags, payload: &'static [u8]) -> TcpRepr<'static> {
    TcpRepr {
        src_port: ADDR_B.port(),
        dst_port: ADDR_A.port(),
        seq: SeqNum(seq),
        ack: flags.ack.then_some(SeqNum(ack)),
        flags,
        window: 65535,
        options: TcpOptions::default(),
        payload,
    }
}

trait TapWindow {
    fn tap_window(self, window: u16) -> Self;
}
impl TapWindow for TcpRepr<'static> {
    fn tap_window(mut self, window: u16) -> Self {
        self.window = window;
        self
    }
}

/// A connection in ESTABLISHED after an active open.
fn established(cfg: Config) -> Connection {
    let mut c = Connection::connect(cfg, ADDR_A, ADDR_B, ISS);
    let syn = sent(&mut c, t(0));
    assert!(syn[0].0.flags.syn);
    let mut synack = seg(PEER_ISS, ISS.wrapping_add(1), TcpFlags::SYN_ACK, b"");
    synack.options.mss = Some(1460);
    c.handle_segment(t(10), &synack);
    assert_eq!(c.state(), State::Established);
    let ack = sent(&mut c, t(10));
    assert_eq!(ack.len(), 1);
    c
}

pub(super) const A1: u32 = ISS.wrapping_add(1);
pub(super) const P1: u32 = PEER_ISS + 1;

/// The peer's segment unless a test says otherwise (for `send!`): an ACK from B to A.
pub(super) const SEND_TEMPL: TcpRepr<'static> = TcpRepr {
    src_port: ADDR_B.port(),
    dst_port: ADDR_A.port(),
    seq: SeqNum(P1),
    ack: Some(SeqNum(A1)),
    flags: TcpFlags::ACK,
    window: 65535,
    options: TcpOptions::NONE,
    payload: &[],
};

/// Our segment unless a test says otherwise (for `recv!`): an ACK from A to B with the
/// 64 KiB window an unscaled connection offers.
pub(super) const RECV_TEMPL: TcpRepr<'static> = TcpRepr {
    src_port: ADDR_A.port(),
    dst_port: ADDR_B.port(),
    seq: SeqNum(A1),
    ack: Some(SeqNum(P1)),
    flags: TcpFlags::ACK,
    window: 65535,
    options: TcpOptions::NONE,
    payload: &[],
};

/// Our RST at `seq`, without ACK.
fn our_rst(seq: u32) -> TcpRepr<'static> {
    TcpRepr {
        seq: SeqNum(seq),
        ack: None,
        flags: TcpFlags::RST,
        window: 0,
        ..RECV_TEMPL
    }
}

#[test]
fn test_syn_sent_syn_ack_establishes() {
    let c = established(cfg());
    assert_eq!(c.send_mss(), 1460);
    assert!(c.srtt().is_some());
}

#[test]
fn test_syn_sent_rst_is_refused() {
    let mut c = Connection::connect(cfg(), ADDR_A, ADDR_B, ISS);
    sent(&mut c, t(0));
    c.handle_segment(t(1), &seg(0, A1, TcpFlags::RST_ACK, b""));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.error(), Some(TcpError::Refused));
}

#[test]
fn test_syn_sent_bad_ack_gets_rst() {
    let mut c = Connection::connect(cfg(), ADDR_A, ADDR_B, ISS);
    sent(&mut c, t(0));
    c.handle_segment(t(1), &seg(PEER_ISS, 12345, TcpFlags::SYN_ACK, b""));
    recv!(c, t(1), [our_rst(12345)]);
    assert_eq!(c.state(), State::SynSent);
}

#[test]
fn test_syn_sent_timeout_retransmits_then_gives_up() {
    let mut c = Connection::connect(
        Config {
            max_syn_retries: 2,
            ..cfg()
        },
        ADDR_A,
        ADDR_B,
        ISS,
    );
    sent(&mut c, t(0));
    let mut now = t(0);
    for _ in 0..2 {
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
        let out = sent(&mut c, now);
        assert!(out[0].0.flags.syn, "SYN retransmitted");
    }
    assert!(
        c.poll_timeout().unwrap() - now >= Duration::from_secs(4),
        "exponential backoff"
    );
    c.handle_timeout(c.poll_timeout().unwrap());
    assert_eq!(c.error(), Some(TcpError::TimedOut));
}

#[test]
fn test_syn_sent_simultaneous_open() {
    let mut c = Connection::connect(cfg(), ADDR_A, ADDR_B, ISS);
    sent(&mut c, t(0));
    c.handle_segment(t(1), &seg(PEER_ISS, 0, TcpFlags::SYN, b""));
    assert_eq!(c.state(), State::SynReceived);
    recv!(
        c,
        t(1),
        [TcpRepr {
            flags: TcpFlags::SYN_ACK,
            seq: SeqNum(ISS),
            options: TcpOptions {
                mss: Some(1460),
                ..TcpOptions::NONE
            },
        }]
    );
    c.handle_segment(t(2), &seg(P1, A1, TcpFlags::ACK, b""));
    assert_eq!(c.state(), State::Established);
}

#[test]
fn test_established_send_splits_into_mss_segments() {
    let mut c = established(cfg());
    static DATA: [u8; 5000] = [7; 5000];
    assert_eq!(c.send(&DATA).unwrap(), 5000);
    let at = |i: u32| SeqNum(A1.wrapping_add(i * 1460));
    recv!(
        c,
        t(20),
        [
            TcpRepr {
                payload: &DATA[..1460]
            },
            TcpRepr {
                seq: at(1),
                payload: &DATA[..1460]
            },
            TcpRepr {
                seq: at(2),
                payload: &DATA[..1460]
            },
            TcpRepr {
                seq: at(3),
                flags: TcpFlags::PSH_ACK,
                payload: &DATA[..620]
            },
        ]
    );
}

#[test]
fn test_established_send_buffer_back_pressure() {
    let mut c = established(Config {
        send_buffer: 3000,
        ..cfg()
    });
    static DATA: [u8; 5000] = [1; 5000];
    assert_eq!(c.send(&DATA).unwrap(), 3000);
    assert_eq!(c.send(&DATA).unwrap(), 0);
    sent(&mut c, t(20));
    c.handle_segment(t(30), &seg(P1, A1.wrapping_add(1460), TcpFlags::ACK, b""));
    assert_eq!(c.send(&DATA).unwrap(), 1460);
}

#[test]
fn test_established_nagle_holds_small_segments() {
    let mut c = established(cfg());
    c.send(b"a").unwrap();
    recv!(
        c,
        t(20),
        [TcpRepr {
            flags: TcpFlags::PSH_ACK,
            payload: b"a"
        }]
    );
    c.send(b"b").unwrap();
    recv_nothing!(c, t(21)); // held while 'a' is unacked
    send!(
        c,
        t(30),
        TcpRepr {
            ack: Some(SeqNum(A1.wrapping_add(1)))
        }
    );
    recv!(
        c,
        t(30),
        [TcpRepr {
            seq: SeqNum(A1.wrapping_add(1)),
            flags: TcpFlags::PSH_ACK,
            payload: b"b"
        }]
    );

    let mut c = established(Config {
        nodelay: true,
        ..cfg()
    });
    c.send(b"a").unwrap();
    sent(&mut c, t(20));
    c.send(b"b").unwrap();
    // nodelay sends at once
    recv!(
        c,
        t(21),
        [TcpRepr {
            seq: SeqNum(A1.wrapping_add(1)),
            flags: TcpFlags::PSH_ACK,
            payload: b"b"
        }]
    );
}

#[test]
fn test_established_batch_of_segments_gets_one_ack() {
    let mut c = established(cfg());
    static D: [u8; 100] = [3; 100];
    for i in 0..8u32 {
        c.handle_segment(t(20), &seg(P1 + i * 100, A1, TcpFlags::ACK, &D));
    }
    // One ACK for the whole batch.
    recv!(
        c,
        t(20),
        [TcpRepr {
            ack: Some(SeqNum(P1 + 800))
        }]
    );
}

#[test]
fn test_established_delayed_ack_timer() {
    let mut c = established(cfg());
    send!(c, t(20), TcpRepr { payload: b"hello" });
    recv_nothing!(c, t(20)); // one segment: the ACK is delayed
    let deadline = c.poll_timeout().unwrap();
    assert_eq!(deadline, t(20) + Duration::from_millis(40));
    c.handle_timeout(deadline);
    recv!(
        c,
        deadline,
        [TcpRepr {
            ack: Some(SeqNum(P1 + 5))
        }]
    );
}

#[test]
fn test_established_out_of_order_acked_at_once_with_sack() {
    let mut c = established(Config {
        sack: true,
        ..cfg()
    });
    // Peer did not offer SACK in `established`, so enable by handshake with SACK.
    let mut c2 = Connection::connect(
        Config {
            sack: true,
            ..cfg()
        },
        ADDR_A,
        ADDR_B,
        ISS,
    );
    sent(&mut c2, t(0));
    let mut synack = seg(PEER_ISS, A1, TcpFlags::SYN_ACK, b"");
    synack.options.sack_permitted = true;
    c2.handle_segment(t(1), &synack);
    sent(&mut c2, t(1));
    send!(
        c2,
        t(2),
        TcpRepr {
            seq: SeqNum(P1 + 10),
            payload: b"world"
        }
    );
    // An immediate ACK for out-of-order data, with its SACK block.
    let mut sack = TcpOptions::NONE;
    sack.sack_blocks[0] = (P1 + 10, P1 + 15);
    sack.sack_count = 1;
    recv!(c2, t(2), [TcpRepr { options: sack }]);
    // Filling the gap is acknowledged at once too, and the data reads in order.
    send!(
        c2,
        t(3),
        TcpRepr {
            payload: b"hello, the"
        }
    );
    recv!(
        c2,
        t(3),
        [TcpRepr {
            ack: Some(SeqNum(P1 + 15))
        }]
    );
    let mut buf = [0u8; 64];
    let n = c2.recv(&mut buf);
    assert_eq!(&buf[..n], b"hello, theworld");
    // The first connection had SACK off (not offered by the peer).
    send!(
        c,
        t(2),
        TcpRepr {
            seq: SeqNum(P1 + 10),
            payload: b"world"
        }
    );
    recv!(c, t(2), [RECV_TEMPL]);
}

#[test]
fn test_established_rst_exact_resets() {
    let mut c = established(cfg());
    c.handle_segment(t(20), &seg(P1, 0, TcpFlags::RST, b""));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.error(), Some(TcpError::Reset));
}

#[test]
fn test_established_rst_in_window_gets_challenge_ack() {
    let mut c = established(cfg());
    c.handle_segment(t(20), &seg(P1 + 100, 0, TcpFlags::RST, b""));
    assert_eq!(c.state(), State::Established);
    recv!(c, t(20), [RECV_TEMPL]);
    assert_eq!(c.stats().challenge_acks, 1);
    // Out of window: silently dropped.
    c.handle_segment(
        t(21),
        &seg(P1.wrapping_add(10_000_000), 0, TcpFlags::RST, b""),
    );
    recv_nothing!(c, t(21));
}

#[test]
fn test_established_syn_gets_challenge_ack() {
    let mut c = established(cfg());
    c.handle_segment(t(20), &seg(P1 + 5, 0, TcpFlags::SYN, b""));
    assert_eq!(c.state(), State::Established);
    recv!(c, t(20), [RECV_TEMPL]);
    assert_eq!(c.stats().challenge_acks, 1);
}

#[test]
fn test_established_ack_of_unsent_data_is_dropped() {
    let mut c = established(cfg());
    c.send(b"abc").unwrap();
    sent(&mut c, t(20));
    c.handle_segment(
        t(21),
        &seg(P1, A1.wrapping_add(1000), TcpFlags::ACK, b"xyz"),
    );
    assert_eq!(c.recv_available(), 0, "segment with a bogus ACK is dropped");
    assert_eq!(c.unacked(), 3);
    // Answered with an ACK.
    recv!(
        c,
        t(21),
        [TcpRepr {
            seq: SeqNum(A1.wrapping_add(3))
        }]
    );
}

#[test]
fn test_established_duplicate_data_is_acked_not_delivered_twice() {
    let mut c = established(cfg());
    c.handle_segment(t(20), &seg(P1, A1, TcpFlags::ACK, b"abc"));
    c.handle_segment(t(21), &seg(P1, A1, TcpFlags::ACK, b"abc"));
    recv!(
        c,
        t(21),
        [TcpRepr {
            ack: Some(SeqNum(P1 + 3))
        }]
    );
    assert_eq!(c.recv_available(), 3);
}

#[test]
fn test_established_rto_retransmits_with_backoff_then_times_out() {
    let mut c = established(Config {
        max_retries: 3,
        ..cfg()
    });
    c.send(b"data").unwrap();
    sent(&mut c, t(20));
    let mut last = t(20);
    let mut gaps = Vec::new();
    for _ in 0..3 {
        let at = c.poll_timeout().unwrap();
        gaps.push(at - last);
        last = at;
        c.handle_timeout(at);
        recv!(
            c,
            at,
            [TcpRepr {
                flags: TcpFlags::PSH_ACK,
                payload: b"data"
            }]
        );
    }
    assert!(
        gaps[1] >= gaps[0] * 2 - Duration::from_millis(1)
            && gaps[2] >= gaps[1] * 2 - Duration::from_millis(1),
        "{gaps:?}"
    );
    c.handle_timeout(c.poll_timeout().unwrap());
    assert_eq!(c.error(), Some(TcpError::TimedOut));
    // Gives up with a RST at SND.MAX.
    recv!(c, last, [our_rst(A1.wrapping_add(4))]);
}

#[test]
fn test_established_three_dup_acks_fast_retransmit() {
    let mut c = established(Config {
        congestion: CongestionKind::NewReno,
        ..cfg()
    });
    static DATA: [u8; 8000] = [9; 8000];
    c.send(&DATA).unwrap();
    assert_eq!(sent(&mut c, t(20)).len(), 6);
    c.handle_segment(t(30), &seg(P1, A1.wrapping_add(1460), TcpFlags::ACK, b""));
    sent(&mut c, t(30));
    for i in 0..3 {
        c.handle_segment(
            t(31 + i),
            &seg(P1, A1.wrapping_add(1460), TcpFlags::ACK, b""),
        );
    }
    // Retransmits the first unacknowledged segment, and only it.
    recv!(
        c,
        t(34),
        [TcpRepr {
            seq: SeqNum(A1.wrapping_add(1460)),
            payload: &DATA[..1460]
        }]
    );
    assert_eq!(c.stats().fast_retransmits, 1);
    assert!(c.cwnd() < 14_600);
}

#[test]
fn test_established_zero_window_probing() {
    let mut c = established(cfg());
    let mut zero = seg(P1, A1, TcpFlags::ACK, b"");
    zero.window = 0;
    c.handle_segment(t(20), &zero);
    c.send(b"blocked").unwrap();
    assert!(sent(&mut c, t(20)).is_empty());
    let mut now = t(20);
    for _ in 0..5 {
        now = c.poll_timeout().expect("persist timer");
        c.handle_timeout(now);
        // One probe: an old sequence number draws an ACK with the window.
        recv!(
            c,
            now,
            [TcpRepr {
                seq: SeqNum(A1.wrapping_sub(1))
            }]
        );
        c.handle_segment(now, &zero); // still closed
    }
    assert_eq!(
        c.state(),
        State::Established,
        "probing never gives up while the peer answers"
    );
    assert_eq!(c.stats().window_probes, 5);
    send!(c, now, SEND_TEMPL);
    recv!(
        c,
        now,
        [TcpRepr {
            flags: TcpFlags::PSH_ACK,
            payload: b"blocked"
        }]
    );
}

#[test]
fn test_established_paws_drops_old_timestamp() {
    let mut c = Connection::connect(Config::default(), ADDR_A, ADDR_B, ISS);
    sent(&mut c, t(0));
    let mut synack = seg(PEER_ISS, A1, TcpFlags::SYN_ACK, b"");
    synack.options.timestamps = Some((5000, 0));
    c.handle_segment(t(1), &synack);
    sent(&mut c, t(1));
    let mut old = seg(P1, A1, TcpFlags::ACK, b"stale");
    old.options.timestamps = Some((4000, 0));
    c.handle_segment(t(2), &old);
    assert_eq!(c.recv_available(), 0);
    assert_eq!(c.stats().paws_drops, 1);
}

#[test]
fn test_close_wait_half_close_and_last_ack() {
    let mut c = established(cfg());
    c.handle_segment(
        t(20),
        &seg(
            P1,
            A1,
            TcpFlags {
                fin: true,
                ack: true,
                ..Default::default()
            },
            b"bye",
        ),
    );
    assert_eq!(c.state(), State::CloseWait);
    // Half-close: we can still send.
    c.send(b"still here").unwrap();
    c.close();
    recv!(
        c,
        t(20),
        [TcpRepr {
            ack: Some(SeqNum(P1 + 4)),
            flags: TcpFlags {
                fin: true,
                psh: true,
                ..TcpFlags::ACK
            },
            payload: b"still here"
        }]
    );
    assert_eq!(c.state(), State::LastAck);
    c.handle_segment(t(30), &seg(P1 + 4, A1.wrapping_add(11), TcpFlags::ACK, b""));
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.error(), None);
}

#[test]
fn test_fin_wait_time_wait_expires() {
    let mut c = established(Config {
        time_wait: Duration::from_secs(2),
        ..cfg()
    });
    c.close();
    recv!(
        c,
        t(20),
        [TcpRepr {
            flags: TcpFlags::FIN_ACK
        }]
    );
    c.handle_segment(t(30), &seg(P1, A1.wrapping_add(1), TcpFlags::ACK, b""));
    assert_eq!(c.state(), State::FinWait2);
    c.handle_segment(
        t(40),
        &seg(
            P1,
            A1.wrapping_add(1),
            TcpFlags {
                fin: true,
                ack: true,
                ..Default::default()
            },
            b"",
        ),
    );
    assert_eq!(c.state(), State::TimeWait);
    assert_eq!(c.poll_timeout(), Some(t(40) + Duration::from_secs(2)));
    c.handle_timeout(t(2040));
    assert_eq!(c.state(), State::Closed);
}

#[test]
fn test_simultaneous_close_goes_through_closing() {
    let mut c = established(cfg());
    c.close();
    sent(&mut c, t(20));
    c.handle_segment(
        t(21),
        &seg(
            P1,
            A1,
            TcpFlags {
                fin: true,
                ack: true,
                ..Default::default()
            },
            b"",
        ),
    );
    assert_eq!(c.state(), State::Closing);
    c.handle_segment(t(22), &seg(P1 + 1, A1.wrapping_add(1), TcpFlags::ACK, b""));
    assert_eq!(c.state(), State::TimeWait);
}

#[test]
fn test_window_scale_negotiated_and_applied() {
    let mut c = Connection::connect(
        Config {
            timestamps: false,
            ..Config::default()
        },
        ADDR_A,
        ADDR_B,
        ISS,
    );
    let syn = sent(&mut c, t(0));
    assert_eq!(syn[0].0.options.window_scale, Some(5)); // 1 MiB buffer
    let mut synack = seg(PEER_ISS, A1, TcpFlags::SYN_ACK, b"");
    synack.options.window_scale = Some(3);
    synack.options.mss = Some(1460);
    c.handle_segment(t(1), &synack);
    let ack = sent(&mut c, t(1));
    assert_eq!(u32::from(ack[0].0.window) << 5, 1 << 20);
    let mut upd = seg(P1, A1, TcpFlags::ACK, b"");
    upd.window = 1000;
    c.handle_segment(t(2), &upd);
    static DATA: [u8; 10_000] = [0; 10_000];
    c.send(&DATA).unwrap();
    let total: usize = sent(&mut c, t(2)).iter().map(|(_, p)| p.len()).sum();
    assert_eq!(
        total,
        5 * 1460,
        "window 1000 << 3, the 700-byte rest held by sender SWS"
    );
    c.handle_segment(
        t(3),
        &seg(P1, A1.wrapping_add(5 * 1460), TcpFlags::ACK, b"").tap_window(1000),
    );
    let out = sent(&mut c, t(3));
    assert_eq!(
        out.iter().map(|(_, p)| p.len()).sum::<usize>(),
        2700,
        "window moved with the ACK"
    );
}

// ------------------------------------------------------------------ simulator tests

fn stream(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = crate::sim::Rng::new(seed ^ 0x5eed);
    let mut v = vec![0; len];
    rng.fill(&mut v);
    v
}

fn transfer(
    seed: u64,
    a_cfg: Config,
    b_cfg: Config,
    link: LinkConfig,
    a_len: usize,
    b_len: usize,
) -> Pair {
    transfer_in(false, seed, a_cfg, b_cfg, link, a_len, b_len)
}

/// [`transfer`] over IPv6 (`ipv6`) or IPv4.
fn transfer_in(
    ipv6: bool,
    seed: u64,
    a_cfg: Config,
    b_cfg: Config,
    link: LinkConfig,
    a_len: usize,
    b_len: usize,
) -> Pair {
    let mut pair = Pair::new_in(ipv6, seed, a_cfg, b_cfg, link.clone(), link);
    pair.app_a.to_send = stream(seed, a_len);
    pair.app_b.to_send = stream(seed + 1, b_len);
    let outcome = pair.run(Duration::from_secs(600));
    assert!(
        pair.app_b.received == pair.app_a.to_send && pair.app_a.received == pair.app_b.to_send,
        "seed {seed}: streams differ (a->b {} of {}, b->a {} of {}), outcome {outcome:?}, links {:?} {:?}",
        pair.app_b.received.len(),
        a_len,
        pair.app_a.received.len(),
        b_len,
        pair.a_to_b.stats,
        pair.b_to_a.stats
    );
    assert!(
        matches!(outcome.a_state, State::Closed | State::TimeWait)
            && matches!(outcome.b_state, Some(State::Closed | State::TimeWait)),
        "seed {seed}: did not close cleanly: {outcome:?}"
    );
    assert_eq!(
        pair.a.error(),
        None,
        "seed {seed}: {:?} {:?}",
        pair.a.stats(),
        outcome
    );
    pair
}

#[test]
fn sim_clean_link_transfer_both_ways() {
    let pair = transfer(
        1,
        Config::default(),
        Config::default(),
        LinkConfig::default(),
        3_000_000,
        200_000,
    );
    assert_eq!(
        pair.a.stats().retransmits,
        0,
        "{:?} {:?} {:?}",
        pair.a.stats(),
        pair.a_to_b.stats,
        pair.b.as_ref().unwrap().stats()
    );
    let b = pair.b.as_ref().unwrap();
    assert_eq!(b.stats().retransmits, 0);
    // Delayed ACKs: fewer ACK segments than data segments received.
    assert!(
        b.stats().segments_out < b.stats().segments_in,
        "{:?}",
        b.stats()
    );
}

#[test]
fn sim_lossy_link_recovers_with_sack_and_newreno() {
    let link = LinkConfig {
        loss: 0.03,
        ..LinkConfig::default()
    };
    for (seed, sack, cc) in [
        (2, true, CongestionKind::Cubic),
        (3, false, CongestionKind::NewReno),
        (4, true, CongestionKind::NewReno),
    ] {
        let c = Config {
            sack,
            congestion: cc,
            ..Config::default()
        };
        let pair = transfer(seed, c.clone(), c, link.clone(), 1_000_000, 100_000);
        let lost = pair.a_to_b.stats.lost + pair.b_to_a.stats.lost;
        assert!(pair.a.stats().retransmits > 0);
        assert!(
            pair.a.stats().retransmits <= 4 * lost + 10,
            "seed {seed}: {} retransmits for {lost} losses",
            pair.a.stats().retransmits
        );
        assert!(
            pair.a.stats().fast_retransmits > 0,
            "seed {seed}: loss recovered by fast retransmit {:?} {:?}",
            pair.a.stats(),
            pair.a_to_b.stats
        );
    }
}

#[test]
fn sim_zero_window_when_reader_pauses() {
    let mut pair = Pair::new(
        9,
        Config::default(),
        Config {
            recv_buffer: 8192,
            ..Config::default()
        },
        LinkConfig::default(),
        LinkConfig::default(),
    );
    pair.app_a.to_send = stream(9, 200_000);
    pair.app_b.read_paused_until = Instant::from_millis(3_000);
    pair.run(Duration::from_secs(100));
    assert_eq!(pair.app_b.received, pair.app_a.to_send);
    assert!(pair.a.stats().window_probes > 0);
}

#[test]
fn sim_corruption_is_caught_by_checksums() {
    let link = LinkConfig {
        corrupt: 0.05,
        ..LinkConfig::default()
    };
    let pair = transfer(
        11,
        Config::default(),
        Config::default(),
        link,
        300_000,
        300_000,
    );
    assert!(pair.a_to_b.stats.corrupted > 0);
    assert!(pair.a_to_b.stats.rejected_by_parser > 0);
}

/// `cases` property-test cases, or PROPTEST_CASES of them.
pub(super) fn proptest_config(cases: u32) -> proptest::prelude::ProptestConfig {
    proptest::prelude::ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        ..proptest::prelude::ProptestConfig::default()
    }
}

/// A's retransmissions, and the frames the link damaged either way. Every retransmission
/// answers some damage (a loss, a drop, a corruption, or reordering and duplication that
/// look like loss): a few per damaged frame at most, and none over a link that damaged
/// nothing.
fn retransmits_and_damage(pair: &Pair) -> (u64, u64) {
    let damaged = |l: &crate::sim::LinkStats| {
        l.lost + l.corrupted + l.queue_drops + l.reordered + l.duplicated
    };
    (
        pair.a.stats().retransmits,
        damaged(&pair.a_to_b.stats) + damaged(&pair.b_to_a.stats),
    )
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // 64 cases by default; PROPTEST_CASES=N for a longer run.
        #![proptest_config(proptest_config(64))]

        #[test]
        fn streams_arrive_identical_under_impairments(
            seed in any::<u64>(),
            ipv6 in any::<bool>(),
            loss in 0.0f64..0.08,
            duplicate in 0.0f64..0.05,
            reorder in 0.0f64..0.2,
            corrupt in 0.0f64..0.02,
            jitter_ms in 0u64..4,
            a_len in 0usize..200_000,
            b_len in 0usize..50_000,
            sack in any::<bool>(),
            timestamps in any::<bool>(),
            nodelay in any::<bool>(),
            cubic in any::<bool>(),
            bandwidth in prop_oneof![Just(0u64), Just(10_000_000u64), Just(100_000_000u64)],
        ) {
            let link = LinkConfig {
                loss, duplicate, reorder, corrupt,
                jitter: Duration::from_millis(jitter_ms),
                bandwidth,
                queue_limit: 200,
                ..LinkConfig::default()
            };
            let congestion = if cubic { CongestionKind::Cubic } else { CongestionKind::NewReno };
            let cfg = Config { nodelay, ..sim_case_config(sack, timestamps, congestion) };
            let pair = transfer_in(ipv6, seed, cfg.clone(), cfg, link, a_len, b_len);
            let (retransmits, damaged) = retransmits_and_damage(&pair);
            prop_assert!(
                retransmits <= 3 * damaged + 2,
                "{} retransmits for {} damaged frames", retransmits, damaged
            );
        }
    }
}

/// The endpoints' configuration in the property test and its regression cases.
fn sim_case_config(sack: bool, timestamps: bool, congestion: CongestionKind) -> Config {
    Config {
        sack,
        timestamps,
        congestion,
        recv_buffer: 256 * 1024,
        ..Config::default()
    }
}

#[test]
fn sim_regression_jitter_small_transfer() {
    let link = LinkConfig {
        jitter: Duration::from_millis(1),
        queue_limit: 200,
        ..LinkConfig::default()
    };
    let c = sim_case_config(true, false, CongestionKind::NewReno);
    transfer(0, c.clone(), c, link, 1461, 16049);
}

#[test]
fn sim_regression_lossy_reordered() {
    let link = LinkConfig {
        loss: 0.063,
        duplicate: 0.013,
        reorder: 0.139,
        corrupt: 0.0186,
        jitter: Duration::from_millis(2),
        queue_limit: 200,
        ..LinkConfig::default()
    };
    let c = sim_case_config(true, true, CongestionKind::NewReno);
    transfer(5158668795688621367, c.clone(), c, link, 45439, 27333);
}

#[test]
fn sim_regression_duplicated_acks_without_sack() {
    let link = LinkConfig {
        loss: 0.0066,
        duplicate: 0.0129,
        reorder: 0.049,
        corrupt: 0.0193,
        queue_limit: 200,
        ..LinkConfig::default()
    };
    let c = sim_case_config(false, true, CongestionKind::NewReno);
    transfer(13704321024857542621, c.clone(), c, link, 27513, 23169);
}

#[test]
fn test_established_peer_shrinks_window() {
    // RFC 9293 3.8.6: a receiver should not shrink its window, but a sender must cope.
    let mut c = established(cfg());
    static DATA: [u8; 20_000] = [4; 20_000];
    c.send(&DATA).unwrap();
    let first: usize = sent(&mut c, t(20)).iter().map(|(_, p)| p.len()).sum();
    assert_eq!(first, 14_600, "initial window of 10 segments");
    // The peer acknowledges one segment and moves its right edge left of what we sent.
    let mut shrink = seg(P1, A1.wrapping_add(1460), TcpFlags::ACK, b"");
    shrink.window = 2000;
    c.handle_segment(t(30), &shrink);
    assert!(
        sent(&mut c, t(30)).iter().all(|(_, p)| p.is_empty()),
        "nothing new beyond the shrunken window"
    );
    // Timeouts retransmit from SND.UNA; the connection survives and recovers when the
    // window opens again.
    let at = c.poll_timeout().unwrap();
    c.handle_timeout(at);
    let out = sent(&mut c, at);
    assert_eq!(out[0].0.seq, SeqNum(A1.wrapping_add(1460)));
    let mut open = seg(P1, A1.wrapping_add(14_600), TcpFlags::ACK, b"");
    open.window = 65535;
    c.handle_segment(at, &open);
    // Slow start after the timeout (RFC 5681 3.1): two segments, then more per ACK.
    let mut acked = 14_600u32;
    let mut now = at;
    loop {
        let out = sent(&mut c, now);
        let n: u32 = out.iter().map(|(_, p)| p.len() as u32).sum();
        if n == 0 {
            break;
        }
        acked += n;
        now = now + Duration::from_millis(10);
        let mut ack = seg(P1, A1.wrapping_add(acked), TcpFlags::ACK, b"");
        ack.window = 65535;
        c.handle_segment(now, &ack);
    }
    assert_eq!(
        acked, 20_000,
        "everything delivered once the window reopened"
    );
    assert_eq!(c.unacked(), 0);
    assert_eq!(c.state(), State::Established);
}

/// Issue 22 item 4: "11 retransmits for 2 damaged frames". The link's jitter let frames
/// overtake each other without counting them as reordered, and a fast retransmit sent
/// the first hole twice (once as fast retransmit, once as RFC 6675 NextSeg).
#[test]
fn sim_regression_spurious_retransmits() {
    let link = LinkConfig {
        loss: 0.021325777373395943,
        reorder: 0.0027442160594764874,
        corrupt: 0.004433394313438863,
        jitter: Duration::from_millis(1),
        queue_limit: 200,
        ..LinkConfig::default()
    };
    let c = sim_case_config(true, false, CongestionKind::Cubic);
    let pair = transfer(594961160353668500, c.clone(), c, link, 30661, 29081);
    let (retransmits, damaged) = retransmits_and_damage(&pair);
    assert!(
        retransmits <= 3 * damaged + 2,
        "{retransmits} retransmits for {damaged} damaged frames"
    );
}

#[test]
fn test_established_info_counts_bytes_acked_received_and_in_flight() {
    let mut c = established(cfg());
    static DATA: [u8; 5000] = [7; 5000];
    assert_eq!(c.send(&DATA).unwrap(), 5000);
    assert_eq!(sent(&mut c, t(20)).len(), 4);
    // The first two segments acknowledged, 100 bytes arrive in order.
    c.handle_segment(
        t(30),
        &seg(P1, A1.wrapping_add(2920), TcpFlags::PSH_ACK, &[1; 100]),
    );
    let info = c.info();
    assert_eq!(info.state, State::Established);
    assert_eq!(info.recovery, RecoveryPhase::Open);
    assert_eq!(info.stats.bytes_acked, 2920);
    assert_eq!(info.stats.bytes_received, 100);
    assert_eq!(info.unacked, 5000 - 2920);
    assert_eq!(info.not_sent, 0);
    assert_eq!(info.send_mss, 1460);
    assert_eq!(info.send_window, 65535);
    assert_eq!(info.window_scale, None);
    assert!(!info.timestamps && !info.sack);
    // Two samples of 10 ms (the SYN, then the data): SRTT 10 ms, RTTVAR 5 ms after
    // the first (RFC 6298 2.2) and 3/4 of it after the second (2.3).
    assert_eq!(info.srtt, Duration::from_millis(10));
    assert_eq!(info.rttvar, Duration::from_micros(3750));
    // A timeout: the loss phase, one retry, the RTO doubled (RFC 6298 5.5).
    let rto = info.rto;
    // The delayed ACK of the 100 bytes first, then the retransmission timeout.
    for deadline in [t(30) + Duration::from_millis(40), t(30) + rto] {
        assert_eq!(c.poll_timeout(), Some(deadline));
        c.handle_timeout(deadline);
        sent(&mut c, deadline);
    }
    let info = c.info();
    assert_eq!(info.recovery, RecoveryPhase::Loss);
    assert_eq!(info.retries, 1);
    assert_eq!(info.rto, rto * 2);
    assert_eq!(info.stats.timeouts, 1);
}

#[test]
fn test_fin_wait_1_info_has_nothing_left_to_send() {
    let mut c = established(cfg());
    assert_eq!(c.send(b"hello").unwrap(), 5);
    c.close();
    // The data and the FIN in one segment: SND.NXT is past the data's end.
    assert_eq!(sent(&mut c, t(20)).len(), 1);
    let info = c.info();
    assert_eq!(info.state, State::FinWait1);
    assert_eq!(info.not_sent, 0);
    assert_eq!(info.unacked, 6);
}
