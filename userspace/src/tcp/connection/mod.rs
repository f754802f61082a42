//! One TCP connection (RFC 9293), as a pure state machine.
//!
//! Inputs: [`Connection::handle_segment`], [`Connection::handle_timeout`] and the
//! application calls (`send`, `recv`, `close`, `abort`), each with `now`.
//! Outputs: [`Connection::poll_transmit`] (segments to send, one at a time) and
//! [`Connection::poll_timeout`] (the next deadline).
//!
//! The state lives in groups named after RFC 9293 3.3.1 (send and receive sequence
//! spaces) and what else a TCB holds; the code is split by concern: `app` (the
//! application's calls), `input` (segment arrival), `output` (segments to send),
//! `timers` and `options` (negotiation and path MTU).
mod app;
mod config;
mod export;
mod info;
mod input;
mod options;
mod output;
mod timers;

pub use config::{ChallengeAckBudget, Config, receive_window_scale};
pub use export::MoveError;
pub use info::{ConnectionInfo, RecoveryPhase};

use super::CongestionKind;
use super::congestion::{CongestionControl, Cubic, NewReno};
use super::reassembly::{Reassembler, RecvBuf};
use super::recovery::{LossRecovery, Sender};
use super::rtt::RttEstimator;
use super::sack::Scoreboard;
use super::send_buffer::{Ring, SendBuffer};
use super::seq::SeqNum;
use super::time::Instant;
use super::timer::{Timer, TimerTable};
use crate::wire::{MAX_SACK_BLOCKS, TcpFlags, TcpOptions, TcpRepr};
use std::net::SocketAddr;
use std::time::Duration;

/// RFC 6298 5.7: the RTO once data transfer starts after a retransmitted SYN or SYN-ACK
/// with no RTT sample.
const RTO_AFTER_SYN_LOSS: Duration = Duration::from_secs(3);
/// RFC 7323 5.5: TS.Recent is invalid after 24 days without a segment.
const PAWS_IDLE: Duration = Duration::from_secs(24 * 24 * 3600);
/// Per-connection spacing of challenge ACKs and other out-of-window answers (RFC 5961
/// section 7 leaves the rate open; Linux's tcp_invalid_ratelimit is 500 ms).
const CHALLENGE_ACK_SPACING: Duration = Duration::from_millis(500);
/// Timeouts in a row after which black-hole detection lowers the MSS (Linux's
/// tcp_retries1), and the MSS it starts from (tcp_base_mss).
const BLACK_HOLE_RETRIES: u32 = 3;
const BASE_MSS: usize = 1024;

/// The MSS over IPv6 for a configured (IPv4) MSS of MTU - 40: MTU - 60 (RFC 8200
/// section 5: the IPv6 header is 20 bytes longer), never below the 1220 that the
/// minimum MTU of 1280 leaves; a smaller configured MSS stays as it is.
pub fn ipv6_mss(mss: u16) -> u16 {
    if mss >= 1240 { mss - 20 } else { mss.min(1220) }
}
/// ACK points owed within one receive batch (RFC 5681 4.2: an ACK for at least every
/// second full-sized segment); a 64-frame batch needs 32.
const MAX_OWED_ACKS: usize = 64;

/// Segments a connection owes its peer besides new data. `poll_transmit` sends them in
/// this order: RST, SYN, challenge ACK, owed ACK points, fast retransmit, SACK
/// retransmissions and new data, zero-window probe, and last a pure ACK or window update.
#[derive(Debug, Default)]
struct PendingOutput {
    /// A RST to send before anything else (abort, giving up, RFC 9293 3.10.7.4).
    rst: Option<TcpRepr<'static>>,
    /// Our SYN or SYN-ACK is to be sent (again).
    syn: bool,
    /// A challenge ACK (RFC 5961), already past its rate limit.
    challenge_ack: bool,
    /// Retransmit the first unacknowledged segment (RFC 5681 3.2, RFC 6582).
    fast_retransmit: bool,
    /// A zero-window probe is due (RFC 9293 3.8.6.1).
    probe: bool,
    /// An ACK is due now, not delayed.
    ack_now: bool,
    /// Duplicate ACKs owed: one per out-of-order segment (RFC 5681 4.2), even in a batch
    /// whose in-order segments share a single ACK.
    dup_acks: u32,
    /// The receive window opened enough to be worth announcing (RFC 9293 3.8.6.2.2).
    window_update: bool,
}

/// TCP connection states (RFC 9293 3.3.2); LISTEN lives in the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Our SYN is sent.
    SynSent,
    /// A SYN came and our SYN-ACK is sent.
    SynReceived,
    /// Data flows both ways.
    Established,
    /// We closed; our FIN is not acknowledged yet.
    FinWait1,
    /// We closed and our FIN is acknowledged; the peer still sends.
    FinWait2,
    /// The peer closed; we still send.
    CloseWait,
    /// Both closed at once; our FIN is not acknowledged yet.
    Closing,
    /// The peer closed first, then we did; our FIN is not acknowledged yet.
    LastAck,
    /// Both closed; waiting 2 MSL for stray segments.
    TimeWait,
    /// Gone.
    Closed,
}

/// Why a connection ended, or an application call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TcpError {
    /// The peer answered our SYN with RST.
    #[error("connection refused")]
    Refused,
    /// The peer reset the connection.
    #[error("connection reset by peer")]
    Reset,
    /// Retransmissions ran out.
    #[error("connection timed out")]
    TimedOut,
    /// An ICMP error (or an unanswered ARP) said the peer cannot be reached.
    #[error("destination unreachable")]
    Unreachable,
    /// The connection is closed for this call.
    #[error("connection closed")]
    Closed,
    /// The next hop never answered ARP (like Linux's EHOSTUNREACH from a failed neighbour).
    #[error("host unreachable: the next hop does not answer ARP")]
    HostUnreachable,
}

/// Counters for `-v` and `--stats`.
#[derive(Debug, Clone, Default)]
pub struct ConnectionStats {
    /// Segments received.
    pub segments_in: u64,
    /// Segments sent.
    pub segments_out: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Segments sent again.
    pub retransmits: u64,
    /// Fast retransmits (RFC 5681 3.2).
    pub fast_retransmits: u64,
    /// Retransmission timeouts.
    pub timeouts: u64,
    /// Duplicate ACKs received.
    pub dup_acks: u64,
    /// Segments received out of order.
    pub out_of_order_segments: u64,
    /// Challenge ACKs sent (RFC 5961).
    pub challenge_acks: u64,
    /// Segments dropped by PAWS (RFC 7323 5).
    pub paws_drops: u64,
    /// Segments dropped outside the window.
    pub dropped_out_of_window: u64,
    /// Zero-window probes sent.
    pub window_probes: u64,
    /// Keep-alive probes sent (RFC 1122 4.2.3.6).
    pub keepalive_probes: u64,
    /// Payload bytes the peer acknowledged (RFC 4898 tcpEStatsAppHCThruOctetsAcked).
    pub bytes_acked: u64,
    /// Payload bytes received in order (RFC 4898 tcpEStatsAppHCThruOctetsReceived).
    pub bytes_received: u64,
}

impl ConnectionStats {
    /// Adds `o`'s counters to these.
    pub fn add(&mut self, o: &ConnectionStats) {
        self.segments_in += o.segments_in;
        self.segments_out += o.segments_out;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.retransmits += o.retransmits;
        self.fast_retransmits += o.fast_retransmits;
        self.timeouts += o.timeouts;
        self.dup_acks += o.dup_acks;
        self.out_of_order_segments += o.out_of_order_segments;
        self.challenge_acks += o.challenge_acks;
        self.paws_drops += o.paws_drops;
        self.dropped_out_of_window += o.dropped_out_of_window;
        self.window_probes += o.window_probes;
        self.keepalive_probes += o.keepalive_probes;
        self.bytes_acked += o.bytes_acked;
        self.bytes_received += o.bytes_received;
    }
}

/// A segment to send: header fields, and `payload_len` bytes at `payload_offset` in
/// the send buffer, copied into the frame with [`Connection::copy_payload`].
#[derive(Debug, Clone, Copy)]
pub struct Transmit {
    /// The segment's header and options (its payload is left empty).
    pub repr: TcpRepr<'static>,
    /// Offset of the payload in the send buffer.
    pub payload_offset: usize,
    /// Payload length; [`Connection::copy_payload`] copies it into the frame.
    pub payload_len: usize,
}

/// One TCP connection as a pure state machine: segments and application calls in,
/// segments and a deadline out. It never reads a clock or touches a socket.
#[derive(Debug)]
pub struct Connection {
    state: State,
    local: SocketAddr,
    remote: SocketAddr,
    cfg: Config,
    error: Option<TcpError>,
    /// Last soft ICMP error, reported if the connection later times out (RFC 5927 5.2).
    soft_error: Option<TcpError>,
    /// The application released the connection (an orphan, in Linux's terms).
    orphaned: bool,

    /// Send sequence space (RFC 9293 3.3.1) and the send buffer.
    snd: SendSequence,
    /// Receive sequence space (RFC 9293 3.3.1) and the reassembly buffer.
    rcv: ReceiveSequence,
    /// What the SYNs negotiated (RFC 9293 3.7.1, RFC 7323, RFC 2018).
    opts: Negotiated,
    /// When and what to acknowledge (RFC 9293 3.8.6.3, RFC 5681 4.2, RFC 5961 7).
    acks: AckGeneration,
    /// Round-trip time, retransmission timeout and retries (RFC 6298).
    rtx: Retransmission,
    /// Congestion control and loss recovery (RFC 5681, 6582, 6675, 7661).
    cong: Congestion,
    /// Zero-window and keep-alive probes (RFC 9293 3.8.6.1, RFC 1122 4.2.3.6).
    probes: Probes,
    /// Deadlines: retransmission, delayed ACK, persist, keep-alive, TIME-WAIT, FIN-WAIT-2.
    timers: TimerTable,
    /// Segments owed to the peer beyond new data (see [`PendingOutput`]).
    pending: PendingOutput,

    stats: ConnectionStats,
}

/// Send sequence space (RFC 9293 3.3.1): SND.UNA, SND.NXT, SND.WND, SND.WL1, SND.WL2,
/// ISS, and what the sender keeps beside them.
#[derive(Debug)]
struct SendSequence {
    iss: SeqNum,
    una: SeqNum,
    nxt: SeqNum,
    /// Highest sequence number sent so far (SND.NXT can go back after a timeout).
    max: SeqNum,
    wnd: u32,
    /// Largest window the peer offered (sender SWS avoidance, RFC 9293 3.8.6.2.1).
    max_wnd: u32,
    wl1: SeqNum,
    wl2: SeqNum,
    /// Sequence number of the first byte in `buf`.
    buf_seq: SeqNum,
    buf: SendBuffer,
    /// The application closed: a FIN follows the data in `buf` (RFC 9293 3.10.4).
    fin_queued: bool,
    /// End of the last small segment sent (Minshall's Nagle variant).
    sml: SeqNum,
    /// The sender SWS override timer fired (RFC 9293 3.8.6.2.1): send what the window allows.
    sws_override: bool,
}

/// Receive sequence space (RFC 9293 3.3.1): RCV.NXT, RCV.WND (as the right edge last
/// advertised) and IRS, with the reassembly buffer and the peer's FIN.
#[derive(Debug)]
struct ReceiveSequence {
    irs: SeqNum,
    nxt: SeqNum,
    /// Right edge of the window we last advertised; never moves left (RFC 9293 3.8.6).
    adv: SeqNum,
    buf: Reassembler,
    fin: PeerFin,
}

/// The peer's FIN (RFC 9293 3.10.7.4, eighth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerFin {
    /// No FIN seen.
    None,
    /// A FIN at this sequence number arrived, with data before it still missing.
    Pending(SeqNum),
    /// The FIN is in sequence: RCV.NXT is past it and no more data comes.
    Received,
}

/// Options the SYNs negotiated, and the state they carry (RFC 9293 3.7.1, RFC 7323,
/// RFC 2018).
#[derive(Debug)]
struct Negotiated {
    /// Payload per segment with timestamps but no SACK blocks (for congestion control).
    snd_mss: usize,
    /// Room for payload plus options in one segment: the peer's MSS (RFC 9293 3.7.1).
    peer_mss: usize,
    snd_wscale: u8,
    rcv_wscale: u8,
    ts_enabled: bool,
    /// TS.Recent (RFC 7323 4.3), and when it was last updated (RFC 7323 5.5).
    ts_recent: u32,
    ts_recent_stamp: Instant,
    /// Offset of our timestamp clock (RFC 7323 5.4).
    ts_offset: u32,
    sack_enabled: bool,
}

/// When and what to acknowledge.
#[derive(Debug)]
struct AckGeneration {
    /// The acknowledgment number of the last ACK sent (RFC 7323 4.3 Last.ACK.sent).
    last_sent: SeqNum,
    last_challenge: Option<Instant>,
    /// Earlier ACK points still to send, oldest first (see MAX_OWED_ACKS).
    owed: [SeqNum; MAX_OWED_ACKS],
    owed_len: usize,
    /// In-order bytes received since the last ACK, and the largest segment seen
    /// (Linux's rcv_mss estimate), which define "two full-sized segments".
    unacked_bytes: usize,
    rcv_mss: usize,
    segs_since: u32,
}

/// RTT measurement and the retransmission timer's backoff (RFC 6298).
#[derive(Debug)]
struct Retransmission {
    rtt: RttEstimator,
    /// Timeouts in a row of the oldest unacknowledged segment.
    retries: u32,
    /// The segment being timed (Karn's algorithm): its end and when it was sent.
    rtt_probe: Option<(SeqNum, Instant)>,
    /// Our SYN or SYN-ACK was retransmitted (RFC 6298 5.7).
    syn_retransmitted: bool,
}

/// Congestion control and loss recovery.
#[derive(Debug)]
struct Congestion {
    cc: Box<dyn CongestionControl>,
    /// Fast retransmit, fast recovery and the SACK scoreboard.
    loss: LossRecovery,
    /// Highest flight in this round trip and the sequence that ends the round, to
    /// tell a cwnd-limited sender from an application-limited one (RFC 7661).
    max_flight: usize,
    max_flight_end: SeqNum,
    /// When data was last sent, for the restart window after idle (RFC 5681 4.1).
    last_data_sent: Instant,
}

/// Zero-window probes (RFC 9293 3.8.6.1) and keep-alive (RFC 1122 4.2.3.6).
#[derive(Debug)]
struct Probes {
    persist_backoff: u32,
    /// Zero-window or keep-alive probes sent since the peer last answered.
    unanswered: u32,
    /// The last time a segment arrived (keep-alive idle time, probe give-up).
    last_rx: Instant,
    keepalive: bool,
}

impl Connection {
    fn new(mut cfg: Config, local: SocketAddr, remote: SocketAddr, iss: u32, state: State) -> Self {
        if remote.is_ipv6() {
            cfg.mss = ipv6_mss(cfg.mss);
        }
        let iss = SeqNum(iss);
        let mss = usize::from(cfg.mss);
        let cc: Box<dyn CongestionControl> = match cfg.congestion {
            CongestionKind::NewReno => Box::new(NewReno::new(mss)),
            CongestionKind::Cubic => Box::new(Cubic::new(mss)),
        };
        Connection {
            state,
            local,
            remote,
            error: None,
            soft_error: None,
            orphaned: false,
            snd: SendSequence {
                iss,
                una: iss,
                nxt: iss,
                max: iss,
                wnd: 0,
                max_wnd: 0,
                wl1: SeqNum(0),
                wl2: iss,
                buf_seq: iss + 1u32,
                buf: SendBuffer::new(cfg.send_buffer),
                fin_queued: false,
                sml: iss,
                sws_override: false,
            },
            rcv: ReceiveSequence {
                irs: SeqNum(0),
                nxt: SeqNum(0),
                adv: SeqNum(0),
                buf: Reassembler::new(cfg.recv_buffer, cfg.max_ooo_ranges, cfg.max_ooo_bytes),
                fin: PeerFin::None,
            },
            opts: Negotiated {
                snd_mss: 536,
                peer_mss: 536,
                snd_wscale: 0,
                rcv_wscale: receive_window_scale(&cfg),
                ts_enabled: cfg.timestamps,
                ts_recent: 0,
                ts_recent_stamp: Instant::ZERO,
                ts_offset: iss.0.rotate_left(13),
                sack_enabled: cfg.sack,
            },
            acks: AckGeneration {
                last_sent: SeqNum(0),
                last_challenge: None,
                owed: [SeqNum(0); MAX_OWED_ACKS],
                owed_len: 0,
                unacked_bytes: 0,
                rcv_mss: 536,
                segs_since: 0,
            },
            rtx: Retransmission {
                rtt: RttEstimator::new(cfg.initial_rto, cfg.min_rto, cfg.max_rto),
                retries: 0,
                rtt_probe: None,
                syn_retransmitted: false,
            },
            cong: Congestion {
                cc,
                loss: LossRecovery::new(iss),
                max_flight: 0,
                max_flight_end: iss,
                last_data_sent: Instant::ZERO,
            },
            probes: Probes {
                persist_backoff: 0,
                unanswered: 0,
                last_rx: Instant::ZERO,
                keepalive: cfg.keepalive,
            },
            timers: TimerTable::default(),
            pending: PendingOutput {
                syn: true,
                ..PendingOutput::default()
            },
            stats: ConnectionStats::default(),
            cfg,
        }
    }

    /// Active open (RFC 9293 3.10.1): the first `poll_transmit` returns the SYN.
    pub fn connect(
        cfg: Config,
        local: impl Into<SocketAddr>,
        remote: impl Into<SocketAddr>,
        iss: u32,
    ) -> Self {
        let mut c = Connection::new(cfg, local.into(), remote.into(), iss, State::SynSent);
        // RFC 7323: window scale and timestamps are offered only in the SYN.
        c.opts.snd_wscale = 0;
        c
    }

    /// Passive open from a SYN that a listener accepted (RFC 9293 3.10.7.2).
    pub fn accept(
        now: Instant,
        cfg: Config,
        local: impl Into<SocketAddr>,
        remote: impl Into<SocketAddr>,
        iss: u32,
        syn: &TcpRepr<'_>,
    ) -> Self {
        let mut c = Connection::new(cfg, local.into(), remote.into(), iss, State::SynReceived);
        c.take_peer_syn(now, syn);
        c.timers[Timer::Rto] = Some(now + c.rtx.rtt.rto());
        c
    }

    /// For a connection rebuilt from a SYN cookie: our SYN-ACK (ISS = the cookie) is
    /// already out, so the next segment is the peer's ACK (RFC 4987 section 3.6).
    pub fn mark_syn_sent(&mut self, now: Instant) {
        self.pending.syn = false;
        // The cookie SYN-ACK advertised an unscaled window of up to 64 KiB.
        self.rcv.adv = self.rcv.nxt + self.rcv.buf.window().min(65535);
        self.snd.nxt = self.snd.iss + 1u32;
        self.snd.max = self.snd.nxt;
        self.timers[Timer::Rto] = Some(now + self.rtx.rtt.rto());
    }

    /// The RFC 9293 state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Sets the offset of our timestamp clock (RFC 7323 section 5.4). The stack derives it
    /// from a keyed hash of the addresses, so that it stays the same for the same peer
    /// across connections and processes: a reused 4-tuple then always carries newer
    /// timestamps than the TIME-WAIT it meets at the peer.
    pub fn set_timestamp_offset(&mut self, offset: u32) {
        self.opts.ts_offset = offset;
    }

    /// Turns Nagle's algorithm off (`true`) or on for the data sent from now on.
    pub fn set_nodelay(&mut self, nodelay: bool) {
        self.cfg.nodelay = nodelay;
    }

    /// (SND.UNA, SND.NXT, RCV.NXT), for diagnostics and the fuzz drivers.
    pub fn sequence_numbers(&self) -> (u32, u32, u32) {
        (self.snd.una.0, self.snd.nxt.0, self.rcv.nxt.0)
    }
    /// Our address and port.
    pub fn local(&self) -> SocketAddr {
        self.local
    }
    /// The peer's address and port.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
    /// Why the connection ended, if it failed.
    pub fn error(&self) -> Option<TcpError> {
        self.error
    }
    /// Its counters.
    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }
    /// The smoothed RTT, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtx.rtt.srtt()
    }
    /// The congestion window in bytes.
    pub fn cwnd(&self) -> usize {
        self.cong.cc.window()
    }
    /// The congestion controller's name.
    pub fn congestion_name(&self) -> &'static str {
        self.cong.cc.name()
    }
    /// Bytes received out of order, held for the gap before them.
    pub fn out_of_order_bytes(&self) -> usize {
        self.rcv.buf.out_of_order_bytes()
    }
    /// The largest segment we send.
    pub fn send_mss(&self) -> usize {
        self.opts.snd_mss
    }
    /// True in the synchronized states (RFC 9293 3.3.2): once the handshake completed,
    /// until CLOSED, so also in FIN-WAIT, CLOSE-WAIT, CLOSING, LAST-ACK and TIME-WAIT.
    /// For ESTABLISHED alone, compare [`Connection::state`] with [`State::Established`].
    pub fn is_synchronized(&self) -> bool {
        !matches!(
            self.state,
            State::SynSent | State::SynReceived | State::Closed
        )
    }
    /// True once the connection is fully closed and can be forgotten.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed && self.pending.rst.is_none()
    }
}
