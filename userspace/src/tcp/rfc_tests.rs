//! Tests for the RFC and Linux conformance items of issue 11, smoltcp style: the peer's
//! segments go in with `send!`, and `recv!` checks every segment that comes out, whole
//! (flags, seq, ack, window, options, payload), and that nothing else does.
#![allow(clippy::vec_init_then_push)] // the `recv!` macro builds its list item by item
use super::testkit::{check_out, sent, t};
use super::*;
use crate::sim::{ADDR_A, ADDR_B};
use crate::wire::{TcpFlags, TcpOptions, TcpRepr};
use std::time::Duration;

/// Our ISS and the peer's.
const ISS: u32 = 10_000;
const PEER_ISS: u32 = 500_000;
/// First sequence number of our data and of the peer's.
const A: u32 = ISS + 1;
const P: u32 = PEER_ISS + 1;
const MSS: usize = 1460;

const NO_OPTIONS: TcpOptions = TcpOptions::NONE;

/// What the peer sends unless a test says otherwise: an ACK from B to A.
const SEND_TEMPL: TcpRepr<'static> = TcpRepr {
    src_port: ADDR_B.port(),
    dst_port: ADDR_A.port(),
    seq: SeqNum(P),
    ack: Some(SeqNum(A)),
    flags: TcpFlags::ACK,
    window: 65535,
    options: NO_OPTIONS,
    payload: &[],
};

/// What the connection sends unless a test says otherwise: an ACK from A to B with the
/// full 64 KiB window of the test configuration.
const RECV_TEMPL: TcpRepr<'static> = TcpRepr {
    src_port: ADDR_A.port(),
    dst_port: ADDR_B.port(),
    seq: SeqNum(A),
    ack: Some(SeqNum(P)),
    flags: TcpFlags::ACK,
    window: 65535,
    options: NO_OPTIONS,
    payload: &[],
};

const FIN_ACK: TcpFlags = TcpFlags::FIN_ACK;
const PSH_ACK: TcpFlags = TcpFlags::PSH_ACK;

static DATA: [u8; 70_000] = [0x5a; 70_000];

/// Options off and a 64 KiB receive buffer, so windows are simple numbers.
fn cfg() -> Config {
    Config {
        timestamps: false,
        sack: false,
        window_scaling: false,
        recv_buffer: 65535,
        ..Config::default()
    }
}

/// Our SYN's options with this configuration: the MSS alone.
const MSS_ONLY: TcpOptions = TcpOptions {
    mss: Some(1460),
    ..NO_OPTIONS
};

/// Our SYN, with these options.
fn our_syn(options: TcpOptions) -> TcpRepr<'static> {
    TcpRepr {
        flags: TcpFlags::SYN,
        ack: None,
        ..our_syn_ack(options)
    }
}

/// Our SYN-ACK, with these options.
fn our_syn_ack(options: TcpOptions) -> TcpRepr<'static> {
    TcpRepr {
        flags: TcpFlags::SYN_ACK,
        seq: SeqNum(ISS),
        options,
        ..RECV_TEMPL
    }
}

/// An active open completed at 10 ms: our SYN carries `offer`, the peer's SYN-ACK
/// `answer`, and our ACK `ack_options`. Our timestamp clock has offset 0.
fn open(cfg: Config, offer: TcpOptions, answer: TcpOptions, ack_options: TcpOptions) -> Connection {
    let wnd = cfg.recv_buffer.min(65535) as u16;
    let mut c = Connection::connect(cfg, ADDR_A, ADDR_B, ISS);
    c.set_timestamp_offset(0);
    recv!(
        c,
        t(0),
        [TcpRepr {
            window: wnd,
            ..our_syn(offer)
        }]
    );
    send!(
        c,
        t(10),
        TcpRepr {
            flags: TcpFlags::SYN_ACK,
            seq: SeqNum(PEER_ISS),
            options: answer,
        }
    );
    recv!(
        c,
        t(10),
        [TcpRepr {
            window: wnd,
            options: ack_options,
        }]
    );
    assert_eq!(c.state(), State::Established);
    c
}

fn established_with(cfg: Config) -> Connection {
    open(cfg, MSS_ONLY, MSS_ONLY, NO_OPTIONS)
}

fn established() -> Connection {
    established_with(cfg())
}

/// SACK permitted both ways.
fn established_sack() -> Connection {
    let sack_ok = TcpOptions {
        sack_permitted: true,
        ..MSS_ONLY
    };
    let cfg = Config {
        sack: true,
        ..cfg()
    };
    open(cfg, sack_ok, sack_ok, NO_OPTIONS)
}

/// Timestamps on (our clock offset 0), as negotiated with a peer whose TSval is 1000.
fn established_ts() -> Connection {
    let ts = |tsval, tsecr| TcpOptions {
        timestamps: Some((tsval, tsecr)),
        ..MSS_ONLY
    };
    let cfg = Config {
        timestamps: true,
        ..cfg()
    };
    open(
        cfg,
        ts(0, 0),
        ts(1000, 0),
        TcpOptions {
            mss: None,
            ..ts(10, 1000)
        },
    )
}

/// Two full segments sent at 20 ms and unacknowledged.
fn two_in_flight(cfg: Config) -> Connection {
    let mut c = established_with(cfg);
    c.send(&DATA[..2 * MSS]).unwrap();
    recv!(
        c,
        t(20),
        [
            data_seg(0),
            TcpRepr {
                flags: PSH_ACK,
                ..data_seg(1)
            }
        ]
    );
    c
}

/// The RST we send at `seq`, without ACK.
fn rst(seq: u32) -> TcpRepr<'static> {
    TcpRepr {
        flags: TcpFlags::RST,
        seq: SeqNum(seq),
        ack: None,
        window: 0,
        ..RECV_TEMPL
    }
}

/// Data segment `i` (MSS-sized) of a bulk send starting at A.
fn data_seg(i: u32) -> TcpRepr<'static> {
    TcpRepr {
        seq: SeqNum(A + i * MSS as u32),
        payload: &DATA[..MSS],
        ..RECV_TEMPL
    }
}

/// The peer sends `n` full-sized segments from P, in one batch.
fn peer_sends_full_segments(c: &mut Connection, now: Instant, n: u32) {
    for i in 0..n {
        send!(
            c,
            now,
            TcpRepr {
                seq: SeqNum(P + i * MSS as u32),
                payload: &DATA[..MSS],
            }
        );
    }
}

/// A simultaneous close that ends in TIME-WAIT at 30 ms.
fn time_wait() -> Connection {
    let mut c = established();
    c.close();
    recv!(c, t(20), [TcpRepr { flags: FIN_ACK }]);
    send!(c, t(21), TcpRepr { flags: FIN_ACK });
    assert_eq!(c.state(), State::Closing);
    recv!(
        c,
        t(21),
        [TcpRepr {
            seq: SeqNum(A + 1),
            ack: Some(SeqNum(P + 1)),
            window: 65534
        }]
    );
    send!(
        c,
        t(30),
        TcpRepr {
            seq: SeqNum(P + 1),
            ack: Some(SeqNum(A + 1))
        }
    );
    assert_eq!(c.state(), State::TimeWait);
    recv_nothing!(c, t(30));
    c
}

// ---------------------------------------------------------------- 1. TIME-WAIT

#[test]
fn test_time_wait_duplicate_ack_is_not_answered() {
    let mut c = time_wait();
    // RFC 9293 3.10.7.4: an in-window ACK in TIME-WAIT is not answered (no ping-pong).
    send!(
        c,
        t(40),
        TcpRepr {
            seq: SeqNum(P + 1),
            ack: Some(SeqNum(A + 1))
        }
    );
    recv_nothing!(c, t(40));
    assert_eq!(c.state(), State::TimeWait);
}

#[test]
fn test_time_wait_retransmitted_fin_is_acked_and_restarts_2msl() {
    let mut c = time_wait();
    send!(
        c,
        t(5_000),
        TcpRepr {
            flags: FIN_ACK,
            ack: Some(SeqNum(A + 1))
        }
    );
    recv!(
        c,
        t(5_000),
        [TcpRepr {
            seq: SeqNum(A + 1),
            ack: Some(SeqNum(P + 1)),
            window: 65534
        }]
    );
    assert_eq!(c.poll_timeout(), Some(t(5_000) + Duration::from_secs(60)));
    c.handle_timeout(t(30) + Duration::from_secs(60));
    assert_eq!(
        c.state(),
        State::TimeWait,
        "the old deadline no longer holds"
    );
}

#[test]
fn test_time_wait_syn_with_higher_sequence_may_reopen() {
    let c = time_wait();
    let syn = |seq| TcpRepr {
        flags: TcpFlags::SYN,
        seq,
        ack: None,
        ..SEND_TEMPL
    };
    assert!(c.time_wait_accepts_syn(&syn(SeqNum(P + 100_000))));
    assert!(!c.time_wait_accepts_syn(&syn(SeqNum(P - 100))));
}

// ---------------------------------------------------------------- 2. zero-window probes

#[test]
fn test_established_zero_window_answered_probes_keep_connection() {
    let mut c = two_in_flight(Config {
        max_retries: 3,
        ..cfg()
    });
    // The peer takes one segment and closes its window: the other stays in flight.
    send!(
        c,
        t(30),
        TcpRepr {
            ack: Some(SeqNum(A + MSS as u32)),
            window: 0
        }
    );
    recv_nothing!(c, t(30));
    let mut probes = 0;
    for _ in 0..20 {
        let now = c.poll_timeout().expect("a timer runs");
        c.handle_timeout(now);
        // A timeout sends nothing (RTO: the window is closed) or one probe: the old
        // byte before SND.UNA, which draws an ACK with the window (RFC 9293 3.8.6.1).
        let probe = TcpRepr {
            seq: SeqNum(A + MSS as u32 - 1),
            ..RECV_TEMPL
        };
        let out = sent(&mut c, now);
        assert!(out.is_empty() || out == [(probe, vec![])], "{out:?}");
        probes += out.len();
        // Every probe is answered: the window is still closed.
        send!(
            c,
            now,
            TcpRepr {
                ack: Some(SeqNum(A + MSS as u32)),
                window: 0
            }
        );
        recv_nothing!(c, now);
    }
    assert!(probes >= 5, "{probes} probes");
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.error(), None);
}

#[test]
fn test_established_zero_window_unanswered_probes_give_up() {
    let mut c = established_with(Config {
        max_retries: 3,
        ..cfg()
    });
    send!(c, t(20), TcpRepr { window: 0 });
    c.send(b"blocked").unwrap();
    recv_nothing!(c, t(20));
    for _ in 0..3 {
        let now = c.poll_timeout().expect("persist timer");
        c.handle_timeout(now);
        recv!(c, now, [TcpRepr { seq: SeqNum(A - 1) }]);
    }
    let now = c.poll_timeout().expect("persist timer");
    c.handle_timeout(now);
    recv!(c, now, [rst(A)]);
    assert_eq!(c.error(), Some(TcpError::TimedOut));
}

// ---------------------------------------------------------------- 3. RST at SND.MAX

#[test]
fn test_established_abort_after_timeout_sends_rst_at_snd_max() {
    let mut c = two_in_flight(cfg());
    let rto = c.poll_timeout().unwrap();
    c.handle_timeout(rto);
    recv!(c, rto, [data_seg(0)]);
    c.abort();
    recv!(c, rto, [rst(A + 2 * MSS as u32)]);
}

#[test]
fn test_established_give_up_sends_rst_at_snd_max() {
    let mut c = two_in_flight(Config {
        max_retries: 1,
        ..cfg()
    });
    let rto = c.poll_timeout().unwrap();
    c.handle_timeout(rto);
    recv!(c, rto, [data_seg(0)]);
    let rto = c.poll_timeout().unwrap();
    c.handle_timeout(rto);
    recv!(c, rto, [rst(A + 2 * MSS as u32)]);
    assert_eq!(c.error(), Some(TcpError::TimedOut));
}

// ---------------------------------------------------------------- 5. FIN-WAIT-2 timeout

#[test]
fn test_fin_wait_2_orphan_times_out() {
    let mut c = established();
    c.close();
    recv!(c, t(20), [TcpRepr { flags: FIN_ACK }]);
    send!(
        c,
        t(30),
        TcpRepr {
            ack: Some(SeqNum(A + 1))
        }
    );
    assert_eq!(c.state(), State::FinWait2);
    recv_nothing!(c, t(30));
    assert_eq!(c.poll_timeout(), None, "not orphaned: waits for the peer");
    c.orphan(t(40));
    let deadline = t(40) + Duration::from_secs(60);
    assert_eq!(c.poll_timeout(), Some(deadline));
    c.handle_timeout(deadline);
    assert_eq!(c.state(), State::Closed);
    assert!(c.is_closed());
    recv_nothing!(c, deadline);
}

// ---------------------------------------------------------------- 6. PAWS expiry

#[test]
fn test_established_paws_ts_recent_expires_after_24_days() {
    let mut c = established_ts();
    let later = t(10) + Duration::from_secs(25 * 24 * 3600);
    let now_ts = later.millis() as u32;
    // The peer's clock restarted: an older TSval. After 24 days idle it passes.
    send!(
        c,
        later,
        TcpRepr {
            flags: PSH_ACK,
            payload: b"hello",
            options: TcpOptions {
                timestamps: Some((500, 10)),
                ..NO_OPTIONS
            },
        }
    );
    assert_eq!(c.recv_available(), 5);
    assert_eq!(c.stats().paws_drops, 0);
    let delack = c.poll_timeout().unwrap();
    c.handle_timeout(delack);
    recv!(
        c,
        delack,
        [TcpRepr {
            ack: Some(SeqNum(P + 5)),
            window: 65530,
            options: TcpOptions {
                timestamps: Some((now_ts + 40, 500)),
                ..NO_OPTIONS
            },
        }]
    );
}

#[test]
fn test_established_paws_holds_while_segments_arrive() {
    let mut c = established_ts();
    let day = Duration::from_secs(24 * 3600);
    let ts_at = |now: Instant| now.millis() as u32;
    // A segment on day 23 renews TS.Recent (RFC 7323 4.3)...
    let d23 = t(10) + day * 23;
    send!(
        c,
        d23,
        TcpRepr {
            options: TcpOptions {
                timestamps: Some((2000, 10)),
                ..NO_OPTIONS
            },
        }
    );
    recv_nothing!(c, d23);
    // ...so on day 25 an older TSval is still a PAWS drop, answered with an ACK.
    let d25 = t(10) + day * 25;
    send!(
        c,
        d25,
        TcpRepr {
            flags: PSH_ACK,
            payload: b"old",
            options: TcpOptions {
                timestamps: Some((1500, 10)),
                ..NO_OPTIONS
            },
        }
    );
    assert_eq!(c.stats().paws_drops, 1);
    assert_eq!(c.recv_available(), 0);
    recv!(
        c,
        d25,
        [TcpRepr {
            options: TcpOptions {
                timestamps: Some((ts_at(d25), 2000)),
                ..NO_OPTIONS
            },
        }]
    );
}

// ---------------------------------------------------------------- 7. ICMP validation

#[test]
fn test_established_icmp_port_unreachable_is_soft() {
    let mut c = established();
    c.send(b"data").unwrap();
    recv!(
        c,
        t(20),
        [TcpRepr {
            flags: PSH_ACK,
            payload: b"data",
        }]
    );
    // RFC 5927 5.2: a hard error in a synchronized state does not abort.
    c.handle_icmp_unreachable(3, A, 0);
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.error(), None);
    recv_nothing!(c, t(21));
}

#[test]
fn test_syn_sent_icmp_with_wrong_sequence_is_ignored() {
    let mut c = Connection::connect(cfg(), ADDR_A, ADDR_B, ISS);
    recv!(c, t(0), [our_syn(MSS_ONLY)]);
    // RFC 5927 4.1: the quoted sequence number must be in SND.UNA..SND.NXT.
    c.handle_icmp_unreachable(3, ISS + 5000, 0);
    assert_eq!(c.state(), State::SynSent);
    recv_nothing!(c, t(1));
    c.handle_icmp_unreachable(3, ISS, 0);
    assert_eq!(c.error(), Some(TcpError::Unreachable));
    recv_nothing!(c, t(1));
}

// ---------------------------------------------------------------- 8. challenge ACK limits

#[test]
fn test_established_rst_flood_draws_one_challenge_ack() {
    let mut c = established();
    for i in 0..30u64 {
        send!(
            c,
            t(20 + 5 * i),
            TcpRepr {
                flags: TcpFlags::RST,
                seq: SeqNum(P + 100),
                ack: None,
            }
        );
        if i == 0 {
            recv!(c, t(20), [TcpRepr {}]);
        } else {
            recv_nothing!(c, t(20 + 5 * i));
        }
    }
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.stats().challenge_acks, 1);
}

#[test]
fn test_established_challenge_ack_limit_is_global() {
    let shared = Config {
        challenge_ack_limit: 1,
        ..cfg()
    };
    let mut c1 = established_with(shared.clone());
    let mut c2 = established_with(shared);
    let rst = TcpRepr {
        flags: TcpFlags::RST,
        seq: SeqNum(P + 100),
        ack: None,
        ..SEND_TEMPL
    };
    send!(c1, t(20), rst);
    recv!(c1, t(20), [TcpRepr {}]);
    send!(c2, t(20), rst);
    recv_nothing!(c2, t(20));
}

// ---------------------------------------------------------------- 9. path MTU

#[test]
fn test_established_icmp_frag_needed_lowers_mss_and_retransmits() {
    let mut c = two_in_flight(cfg());
    // Quoting a sequence number outside the flight: ignored (RFC 5927 4.1).
    c.handle_icmp_unreachable(4, A + 5 * MSS as u32, 1000);
    recv_nothing!(c, t(21));
    // RFC 1191: the path takes 1000 bytes; resend what is in flight in 960-byte segments.
    c.handle_icmp_unreachable(4, A, 1000);
    let seg = |i: u32, len: usize| TcpRepr {
        seq: SeqNum(A + i * 960),
        payload: &DATA[..len],
        ..RECV_TEMPL
    };
    recv!(
        c,
        t(22),
        [
            seg(0, 960),
            seg(1, 960),
            seg(2, 960),
            TcpRepr {
                flags: PSH_ACK,
                ..seg(3, 2 * MSS - 3 * 960)
            }
        ]
    );
    assert_eq!(c.send_mss(), 960);
}

#[test]
fn test_established_black_hole_lowers_mss_after_three_timeouts() {
    let mut c = two_in_flight(Config {
        mtu_probing: true,
        ..cfg()
    });
    // Full-sized segments vanish and no ICMP comes back.
    for _ in 0..2 {
        let rto = c.poll_timeout().unwrap();
        c.handle_timeout(rto);
        recv!(c, rto, [data_seg(0)]);
    }
    // The third timeout halves the segment size to at most 1024 bytes (Linux
    // tcp_mtu_probing=1, tcp_base_mss) and goes back to SND.UNA; the one-segment
    // window after a timeout (1460 bytes) now holds two.
    let rto = c.poll_timeout().unwrap();
    c.handle_timeout(rto);
    let small = |i: u32| TcpRepr {
        seq: SeqNum(A + i * 730),
        payload: &DATA[..730],
        ..RECV_TEMPL
    };
    recv!(c, rto, [small(0), small(1)]);
    assert_eq!(c.send_mss(), 730);
}

// ---------------------------------------------------------------- 11. ACK ratio

#[test]
fn test_established_batch_of_full_segments_acked_every_second_one() {
    let mut c = established();
    peer_sends_full_segments(&mut c, t(20), 6);
    let m = MSS as u32;
    recv!(
        c,
        t(20),
        [
            TcpRepr {
                ack: Some(SeqNum(P + 2 * m)),
                window: (65535 - 2 * m) as u16
            },
            TcpRepr {
                ack: Some(SeqNum(P + 4 * m)),
                window: (65535 - 4 * m) as u16
            },
            TcpRepr {
                ack: Some(SeqNum(P + 6 * m)),
                window: (65535 - 6 * m) as u16
            },
        ]
    );
}

// ---------------------------------------------------------------- 12. byte counting

#[test]
fn test_established_stretch_ack_grows_cwnd_by_two_segments() {
    let mut c = established();
    c.send(&DATA[..30 * MSS]).unwrap();
    let first: Vec<TcpRepr<'static>> = (0..10).map(data_seg).collect();
    check_out(&mut c, t(20), &first);
    // One ACK for four segments: RFC 3465 counts 2*SMSS of it (L = 2), so cwnd is 12
    // segments and six new ones fit.
    send!(
        c,
        t(30),
        TcpRepr {
            ack: Some(SeqNum(A + 4 * MSS as u32))
        }
    );
    let next: Vec<TcpRepr<'static>> = (10..16).map(data_seg).collect();
    check_out(&mut c, t(30), &next);
}

// ---------------------------------------------------------------- 13. cwnd validation

#[test]
fn test_established_application_limited_sender_keeps_cwnd() {
    let mut c = established_with(Config {
        nodelay: true,
        ..cfg()
    });
    let mut next = A;
    for i in 0..50u64 {
        let now = t(20 + 10 * i);
        c.send(&DATA[..100]).unwrap();
        recv!(
            c,
            now,
            [TcpRepr {
                flags: PSH_ACK,
                seq: SeqNum(next),
                payload: &DATA[..100],
            }]
        );
        next += 100;
        send!(
            c,
            now + Duration::from_millis(5),
            TcpRepr {
                ack: Some(SeqNum(next))
            }
        );
    }
    // RFC 7661: cwnd did not grow while the application sent 100 bytes at a time.
    let now = t(600);
    c.send(&DATA[..64 * 1024]).unwrap();
    let burst: Vec<TcpRepr<'static>> = (0..10)
        .map(|i| TcpRepr {
            seq: SeqNum(next + i * MSS as u32),
            ..data_seg(0)
        })
        .collect();
    check_out(&mut c, now, &burst);
}

#[test]
fn test_established_idle_restarts_from_initial_window() {
    let mut c = established();
    c.send(&DATA[..10 * MSS]).unwrap();
    let mut first: Vec<TcpRepr<'static>> = (0..10).map(data_seg).collect();
    first[9].flags = PSH_ACK;
    check_out(&mut c, t(20), &first);
    for i in 1..=5u32 {
        send!(
            c,
            t(30),
            TcpRepr {
                ack: Some(SeqNum(A + 2 * i * MSS as u32))
            }
        );
    }
    recv_nothing!(c, t(30));
    // cwnd grew to 20 segments; after 10 s idle (> RTO) RFC 5681 4.1 restarts at IW.
    let now = t(10_030);
    c.send(&DATA[..64 * 1024]).unwrap();
    let burst: Vec<TcpRepr<'static>> = (10..20).map(data_seg).collect();
    check_out(&mut c, now, &burst);
}

// ---------------------------------------------------------------- 14. window updates

#[test]
fn test_established_small_reads_do_not_repeat_the_ack() {
    let mut c = established_with(Config {
        recv_buffer: 2 * MSS,
        ..cfg()
    });
    // The handshake ACK advertised 2920; the peer fills it.
    peer_sends_full_segments(&mut c, t(20), 2);
    let full = 2 * MSS as u32;
    recv!(
        c,
        t(20),
        [TcpRepr {
            ack: Some(SeqNum(P + full)),
            window: 0
        }]
    );
    let mut buf = [0u8; 100];
    for i in 1..=14u64 {
        assert_eq!(c.recv(&mut buf), 100);
        // Receiver SWS avoidance keeps the edge: an update would repeat the last ACK.
        recv_nothing!(c, t(20 + i));
    }
    assert_eq!(c.recv(&mut buf), 100);
    recv!(
        c,
        t(40),
        [TcpRepr {
            ack: Some(SeqNum(P + full)),
            window: 1500
        }]
    );
}

// ---------------------------------------------------------------- 16. RTO after SYN loss

#[test]
fn test_syn_sent_retransmitted_syn_sets_rto_to_3s() {
    let mut c = Connection::connect(cfg(), ADDR_A, ADDR_B, ISS);
    let syn = our_syn(MSS_ONLY);
    recv!(c, t(0), [syn]);
    assert_eq!(c.poll_timeout(), Some(t(1000)));
    c.handle_timeout(t(1000));
    recv!(c, t(1000), [syn]);
    send!(
        c,
        t(1500),
        TcpRepr {
            flags: TcpFlags::SYN_ACK,
            seq: SeqNum(PEER_ISS),
            options: TcpOptions {
                mss: Some(1460),
                ..NO_OPTIONS
            },
        }
    );
    recv!(c, t(1500), [TcpRepr {}]);
    c.send(b"x").unwrap();
    recv!(
        c,
        t(1600),
        [TcpRepr {
            flags: PSH_ACK,
            payload: b"x",
        }]
    );
    // RFC 6298 5.7: no RTT sample after a retransmitted SYN, so the RTO is 3 s.
    assert_eq!(c.poll_timeout(), Some(t(4600)));
}

/// With timestamps the SYN-ACK's echo times the retransmitted SYN it answers (RFC 7323
/// 4.1, as Linux): the RTO comes from that sample, not RFC 6298 5.7's 3 s. (A client
/// whose handshake ACK a full accept queue dropped retransmits its data on this RTO.)
#[test]
fn test_syn_sent_retransmitted_syn_timed_by_the_echoed_timestamp() {
    let ts = |tsval, tsecr| TcpOptions {
        timestamps: Some((tsval, tsecr)),
        ..MSS_ONLY
    };
    let cfg = Config {
        timestamps: true,
        ..cfg()
    };
    let mut c = Connection::connect(cfg, ADDR_A, ADDR_B, ISS);
    c.set_timestamp_offset(0);
    recv!(c, t(0), [our_syn(ts(0, 0))]);
    c.handle_timeout(t(1000));
    recv!(c, t(1000), [our_syn(ts(1000, 0))]);
    send!(
        c,
        t(1500),
        TcpRepr {
            flags: TcpFlags::SYN_ACK,
            seq: SeqNum(PEER_ISS),
            options: ts(7000, 1000),
        }
    );
    let ts_only = |tsval| TcpOptions {
        mss: None,
        ..ts(tsval, 7000)
    };
    recv!(
        c,
        t(1500),
        [TcpRepr {
            options: ts_only(1500)
        }]
    );
    c.send(b"x").unwrap();
    recv!(
        c,
        t(1600),
        [TcpRepr {
            flags: PSH_ACK,
            payload: b"x",
            options: ts_only(1600),
        }]
    );
    // One sample of 500 ms: SRTT 500 ms, RTTVAR 250 ms, RTO 1.5 s (RFC 6298 2.2).
    assert_eq!(c.poll_timeout(), Some(t(3100)));
}

// ---------------------------------------------------------------- 17. SACK order

#[test]
fn test_established_sack_reports_most_recent_blocks_first() {
    let mut c = established_sack();
    let sack = |blocks: &[(u32, u32)]| {
        let mut o = NO_OPTIONS;
        for (i, &b) in blocks.iter().enumerate() {
            o.sack_blocks[i] = (P + b.0, P + b.1);
        }
        o.sack_count = blocks.len() as u8;
        o
    };
    for (n, at) in [100u32, 300, 500].into_iter().enumerate() {
        send!(
            c,
            t(20),
            TcpRepr {
                seq: SeqNum(P + at),
                payload: &DATA[..10],
            }
        );
        let mut blocks: Vec<(u32, u32)> = [100u32, 300, 500][..=n]
            .iter()
            .rev()
            .map(|&s| (s, s + 10))
            .collect();
        blocks.truncate(4);
        recv!(
            c,
            t(20),
            [TcpRepr {
                options: sack(&blocks)
            }]
        );
    }
    // The first block grows: it goes first, then the others as most recently reported
    // (500 before 300), not in ascending order.
    send!(
        c,
        t(30),
        TcpRepr {
            seq: SeqNum(P + 110),
            payload: &DATA[..10],
        }
    );
    recv!(
        c,
        t(30),
        [TcpRepr {
            options: sack(&[(100, 120), (500, 510), (300, 310)]),
        }]
    );
}

// ---------------------------------------------------------------- 18. SYN-RECEIVED

/// The peer's SYN.
const PEER_SYN: TcpRepr<'static> = TcpRepr {
    flags: TcpFlags::SYN,
    seq: SeqNum(PEER_ISS),
    ack: None,
    options: MSS_ONLY,
    ..SEND_TEMPL
};

fn syn_received() -> Connection {
    let mut c = Connection::accept(t(0), cfg(), ADDR_A, ADDR_B, ISS, &PEER_SYN);
    recv!(c, t(0), [our_syn_ack(MSS_ONLY)]);
    c
}

#[test]
fn test_syn_received_retransmitted_syn_gets_syn_ack() {
    let mut c = syn_received();
    send!(c, t(100), PEER_SYN);
    recv!(c, t(100), [our_syn_ack(MSS_ONLY)]);
    assert_eq!(c.state(), State::SynReceived);
}

#[test]
fn test_syn_received_syn_ack_establishes_simultaneous_open() {
    let mut c = Connection::connect(cfg(), ADDR_A, ADDR_B, ISS);
    recv!(c, t(0), [our_syn(MSS_ONLY)]);
    send!(c, t(5), PEER_SYN);
    assert_eq!(c.state(), State::SynReceived);
    recv!(c, t(5), [our_syn_ack(MSS_ONLY)]);
    // RFC 9293 figure 8: the peer's SYN-ACK establishes, and nothing more is sent.
    send!(
        c,
        t(10),
        TcpRepr {
            flags: TcpFlags::SYN_ACK,
            seq: SeqNum(PEER_ISS),
            options: MSS_ONLY,
        }
    );
    assert_eq!(c.state(), State::Established);
    recv_nothing!(c, t(10));
    c.send(b"hi").unwrap();
    recv!(
        c,
        t(11),
        [TcpRepr {
            flags: PSH_ACK,
            payload: b"hi",
        }]
    );
}

// ---------------------------------------------------------------- 20. TIME-WAIT buffers

#[test]
fn test_time_wait_releases_buffers() {
    let mut c = established();
    let len = 7 * MSS;
    c.send(&DATA[..len]).unwrap();
    let mut flight: Vec<TcpRepr<'static>> = (0..7).map(data_seg).collect();
    flight[6].flags = PSH_ACK;
    check_out(&mut c, t(20), &flight);
    assert!(c.buffer_bytes() > 0);
    c.close();
    let fin = A + len as u32;
    recv!(
        c,
        t(20),
        [TcpRepr {
            flags: FIN_ACK,
            seq: SeqNum(fin),
        }]
    );
    // The peer acknowledges everything with its FIN: TIME-WAIT holds no buffers.
    send!(
        c,
        t(30),
        TcpRepr {
            flags: FIN_ACK,
            ack: Some(SeqNum(fin + 1)),
        }
    );
    assert_eq!(c.state(), State::TimeWait);
    assert_eq!(c.buffer_bytes(), 0);
    recv!(
        c,
        t(30),
        [TcpRepr {
            seq: SeqNum(fin + 1),
            ack: Some(SeqNum(P + 1)),
            window: 65534,
        }]
    );
    // And it still answers a retransmitted FIN.
    send!(
        c,
        t(40),
        TcpRepr {
            flags: FIN_ACK,
            ack: Some(SeqNum(fin + 1)),
        }
    );
    recv!(
        c,
        t(40),
        [TcpRepr {
            seq: SeqNum(fin + 1),
            ack: Some(SeqNum(P + 1)),
            window: 65534,
        }]
    );
}

// ---------------------------------------------------------------- 21. keep-alive

#[test]
fn test_established_keepalive_is_off_by_default() {
    let mut c = established();
    assert_eq!(c.poll_timeout(), None);
    let later = t(10) + Duration::from_secs(3 * 3600);
    c.handle_timeout(later);
    recv_nothing!(c, later);
}

#[test]
fn test_established_keepalive_probes_then_gives_up() {
    let mut c = established();
    c.set_keepalive_params(Duration::from_secs(10), Duration::from_secs(1), 3);
    c.set_keepalive(t(10), true);
    assert_eq!(c.poll_timeout(), Some(t(10_010)));
    // RFC 1122 4.2.3.6: probes carry SEG.SEQ = SND.NXT - 1 and no data.
    for i in 0..3u64 {
        let now = t(10_010 + 1000 * i);
        assert_eq!(c.poll_timeout(), Some(now));
        c.handle_timeout(now);
        recv!(c, now, [TcpRepr { seq: SeqNum(A - 1) }]);
    }
    c.handle_timeout(t(13_010));
    recv!(c, t(13_010), [rst(A)]);
    assert_eq!(c.error(), Some(TcpError::TimedOut));
}

#[test]
fn test_established_keepalive_answered_keeps_connection() {
    let mut c = established();
    c.set_keepalive_params(Duration::from_secs(10), Duration::from_secs(1), 3);
    c.set_keepalive(t(10), true);
    c.handle_timeout(t(10_010));
    recv!(c, t(10_010), [TcpRepr { seq: SeqNum(A - 1) }]);
    send!(c, t(10_020), TcpRepr {});
    recv_nothing!(c, t(10_020));
    // The answer restarts the idle time: the next timer finds no probe due.
    assert_eq!(c.poll_timeout(), Some(t(11_010)));
    c.handle_timeout(t(11_010));
    recv_nothing!(c, t(11_010));
    assert_eq!(c.poll_timeout(), Some(t(20_020)));
    assert_eq!(c.state(), State::Established);
}

// ---------------------------------------------------------------- 23. closed, not released

#[test]
fn test_closed_segment_after_abort_gets_rst() {
    let mut c = established();
    c.abort();
    recv!(c, t(20), [rst(A)]);
    // RFC 9293 3.10.7.1: the connection is CLOSED; the peer's data draws a RST.
    send!(
        c,
        t(30),
        TcpRepr {
            flags: PSH_ACK,
            payload: b"late",
            ack: Some(SeqNum(A + 7)),
        }
    );
    recv!(c, t(30), [rst(A + 7)]);
    send!(
        c,
        t(31),
        TcpRepr {
            flags: FIN_ACK.without_ack(),
            seq: SeqNum(P + 4),
            ack: None,
        }
    );
    recv!(
        c,
        t(31),
        [TcpRepr {
            flags: TcpFlags::RST_ACK,
            seq: SeqNum(0),
            ack: Some(SeqNum(P + 5)),
            window: 0,
        }]
    );
}

trait WithoutAck {
    fn without_ack(self) -> Self;
}
impl WithoutAck for TcpFlags {
    fn without_ack(self) -> Self {
        TcpFlags { ack: false, ..self }
    }
}

// ---------------------------------------------------------------- simulator properties

mod sim_properties {
    use super::*;
    use crate::sim::{LinkConfig, Pair};
    use proptest::prelude::*;

    /// A one-way bulk transfer over a clean link; returns the pair when A has sent
    /// `len` bytes or `limit` of virtual time passed.
    fn bulk(ipv6: bool, seed: u64, cfg: Config, delay_ms: u64, len: usize) -> Pair {
        let link = LinkConfig {
            delay: Duration::from_millis(delay_ms),
            ..LinkConfig::default()
        };
        let mut pair = Pair::new_in(ipv6, seed, cfg.clone(), cfg, link.clone(), link);
        pair.app_a.to_send = vec![0x42; len];
        pair
    }

    proptest! {
        #![proptest_config(crate::tcp::tests::proptest_config(16))]

        /// RFC 5681 4.2: the receiver ACKs at least every second full-sized segment,
        /// although the simulator hands it whole flights as one batch.
        #[test]
        fn sim_ack_ratio_at_least_one_per_two_full_segments(
            seed in any::<u64>(),
            ipv6 in any::<bool>(),
            delay_ms in 1u64..40,
            timestamps in any::<bool>(),
            cubic in any::<bool>(),
            len in 200_000usize..1_000_000,
        ) {
            let cfg = Config {
                timestamps,
                congestion: if cubic { CongestionKind::Cubic } else { CongestionKind::NewReno },
                ..Config::default()
            };
            let mut pair = bulk(ipv6, seed, cfg, delay_ms, len);
            pair.run(Duration::from_secs(120));
            prop_assert_eq!(&pair.app_b.received.len(), &len);
            let mss = pair.a.send_mss() as u64;
            let full_segments = len as u64 / mss;
            let b = pair.b.as_ref().unwrap();
            // B sends only ACKs (its SYN-ACK and FIN aside).
            let acks = b.stats().segments_out;
            prop_assert!(
                2 * acks + 2 >= full_segments,
                "{} ACKs for {} full-sized segments", acks, full_segments
            );
        }

        /// Slow start on a clean link: after N round trips cwnd is within a factor of
        /// what RFC 5681 slow start with RFC 3465 byte counting gives, IW * 2^N.
        #[test]
        fn sim_slow_start_doubles_cwnd_per_round_trip(
            seed in any::<u64>(),
            ipv6 in any::<bool>(),
            delay_ms in 2u64..40,
            rounds in 1u32..6,
            cubic in any::<bool>(),
        ) {
            let cfg = Config {
                congestion: if cubic { CongestionKind::Cubic } else { CongestionKind::NewReno },
                send_buffer: 4 << 20,
                recv_buffer: 4 << 20,
                ..Config::default()
            };
            let mut pair = bulk(ipv6, seed, cfg, delay_ms, 16 << 20);
            while !pair.a.is_synchronized() {
                prop_assert!(pair.step());
            }
            let rtt = Duration::from_millis(2 * delay_ms);
            // The first flight leaves now; `rounds` RTTs later its ACKs have come back
            // `rounds` times.
            let end = pair.now + rtt * rounds + rtt / 2;
            while pair.now < end {
                prop_assert!(pair.step());
            }
            let iw = 10.0 * pair.a.send_mss() as f64;
            let ideal = iw * f64::from(1u32 << rounds);
            let cwnd = pair.a.cwnd() as f64;
            prop_assert!(
                cwnd >= ideal / 2.0 && cwnd <= ideal * 1.5,
                "cwnd {} after {} RTTs, slow start gives {}", cwnd, rounds, ideal
            );
        }
    }
}

// ---------------------------------------------------------------- SACK recovery

/// RFC 6675 5 step 4: fast retransmit sends the first hole once; NextSeg then looks
/// past it (before, the same segment went out twice in the same batch).
#[test]
fn test_established_fast_retransmit_sends_the_hole_once() {
    let mut c = established_sack();
    c.send(&DATA[..10 * MSS]).unwrap();
    let mut flight: Vec<TcpRepr<'static>> = (0..10).map(data_seg).collect();
    flight[9].flags = PSH_ACK;
    recv!(
        c,
        t(20),
        [
            flight[0], flight[1], flight[2], flight[3], flight[4], flight[5], flight[6], flight[7],
            flight[8], flight[9]
        ]
    );
    // Segment 0 is lost; the peer SACKs 1, then 1-2, then 1-3: three duplicate ACKs.
    for n in 1..=3u32 {
        let mut options = NO_OPTIONS;
        options.sack_blocks[0] = (A + MSS as u32, A + (n + 1) * MSS as u32);
        options.sack_count = 1;
        send!(c, t(30), TcpRepr { options: options });
    }
    // One retransmission of segment 0, then pipe (10 - 3 SACKed) fills the window
    // CUBIC left (0.7 of 10 segments).
    recv!(c, t(30), [data_seg(0)]);
}
