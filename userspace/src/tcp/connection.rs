//! One TCP connection (RFC 9293), as a pure state machine.
//!
//! Inputs: [`Connection::handle_segment`], [`Connection::handle_timeout`] and the
//! application calls (`send`, `recv`, `close`, `abort`), each with `now`.
//! Outputs: [`Connection::poll_transmit`] (segments to send, one at a time) and
//! [`Connection::poll_timeout`] (the next deadline).
use super::CongestionKind;
use super::congestion::{CongestionControl, Cubic, NewReno};
use super::reassembly::Reassembler;
use super::recovery::{LossRecovery, Sender};
use super::rtt::RttEstimator;
use super::sack::Scoreboard;
use super::send_buffer::SendBuffer;
use super::seq::SeqNum;
use super::time::Instant;
use super::timer::{Timer, TimerTable};
use crate::wire::{MAX_SACK_BLOCKS, TcpFlags, TcpOptions, TcpRepr};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// ACK points owed within one receive batch (RFC 5681 4.2: an ACK for at least every
/// second full-sized segment); a 64-frame batch needs 32.
const MAX_OWED_ACKS: usize = 64;

/// Per-connection settings. Defaults follow the RFCs and Linux where the RFCs leave room.
#[derive(Debug, Clone)]
pub struct Config {
    /// MSS we advertise and send at most (MTU minus 40).
    pub mss: u16,
    /// Send buffer in bytes.
    pub send_buffer: usize,
    /// Receive buffer (and so the largest window) in bytes.
    pub recv_buffer: usize,
    /// Bounds on out-of-order state kept by the receiver.
    pub max_ooo_ranges: usize,
    /// Most out-of-order bytes held.
    pub max_ooo_bytes: usize,
    /// Nagle's algorithm off (RFC 896).
    pub nodelay: bool,
    /// Offer window scaling (RFC 7323).
    pub window_scaling: bool,
    /// Offer timestamps (RFC 7323).
    pub timestamps: bool,
    /// Offer SACK (RFC 2018).
    pub sack: bool,
    /// Longest an ACK is delayed (RFC 1122 4.2.3.2).
    pub delayed_ack: Duration,
    /// TIME-WAIT length, 2*MSL (RFC 9293 section 3.6.1).
    pub time_wait: Duration,
    /// RTO before the first RTT sample (RFC 6298 2.1).
    pub initial_rto: Duration,
    /// Smallest RTO.
    pub min_rto: Duration,
    /// Largest RTO.
    pub max_rto: Duration,
    /// Retransmissions of one segment before giving up (RFC 1122 4.2.3.5 R2).
    pub max_retries: u32,
    /// Retransmissions of a SYN before giving up.
    pub max_syn_retries: u32,
    /// Congestion control.
    pub congestion: CongestionKind,
    /// How long an orphaned connection (released by the application) may stay in
    /// FIN-WAIT-2 (Linux tcp_fin_timeout, 60 s).
    pub fin_wait2_timeout: Duration,
    /// Challenge ACKs per second for all connections sharing `challenge_acks`
    /// (RFC 5961 section 7; Linux tcp_challenge_ack_limit).
    pub challenge_ack_limit: u32,
    /// The budget shared by the connections of one stack (clones share it).
    pub challenge_acks: ChallengeAckBudget,
    /// Black-hole detection for paths that filter ICMP (Linux tcp_mtu_probing=1,
    /// RFC 4821): after repeated timeouts, smaller segments. Off by default, as in Linux.
    pub mtu_probing: bool,
    /// Keep-alive (RFC 1122 4.2.3.6): off by default; Linux's tcp_keepalive_time,
    /// tcp_keepalive_intvl and tcp_keepalive_probes when on.
    pub keepalive: bool,
    /// Idle time before the first keep-alive probe (Linux: 7200 s).
    pub keepalive_idle: Duration,
    /// Time between unanswered probes (Linux: 75 s).
    pub keepalive_interval: Duration,
    /// Unanswered probes before the connection is dropped (Linux: 9).
    pub keepalive_count: u32,
}

/// The window scale we offer (RFC 7323 2.3): the smallest that covers the receive buffer.
pub fn receive_window_scale(cfg: &Config) -> u8 {
    let mut ws = 0;
    while cfg.window_scaling && ws < 14 && (cfg.recv_buffer >> ws) > 65535 {
        ws += 1;
    }
    ws
}

/// A global challenge-ACK budget (RFC 5961 section 7): at most `limit` per second of
/// virtual time, shared through an `Arc` by every connection built from one [`Config`].
#[derive(Debug, Clone, Default)]
pub struct ChallengeAckBudget(Arc<AtomicU64>);

impl ChallengeAckBudget {
    /// Takes one challenge ACK from this second's budget; false when it is spent.
    pub fn take(&self, now: Instant, limit: u32) -> bool {
        let second = (now.micros() / 1_000_000) & 0xffff_ffff;
        let v = self.0.load(Ordering::Relaxed);
        let count = if v >> 32 == second {
            v & 0xffff_ffff
        } else {
            0
        };
        if count >= u64::from(limit) {
            return false;
        }
        self.0.store(second << 32 | (count + 1), Ordering::Relaxed);
        true
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mss: 1460,
            send_buffer: 1 << 20,
            recv_buffer: 1 << 20,
            max_ooo_ranges: 64,
            max_ooo_bytes: 1 << 20,
            nodelay: false,
            window_scaling: true,
            timestamps: true,
            sack: true,
            delayed_ack: Duration::from_millis(40),
            time_wait: Duration::from_secs(60),
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(60),
            max_retries: 15,
            max_syn_retries: 6,
            congestion: CongestionKind::Cubic,
            fin_wait2_timeout: Duration::from_secs(60),
            challenge_ack_limit: 1000,
            challenge_acks: ChallengeAckBudget::default(),
            mtu_probing: false,
            keepalive: false,
            keepalive_idle: Duration::from_secs(7200),
            keepalive_interval: Duration::from_secs(75),
            keepalive_count: 9,
        }
    }
}

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
    local: SocketAddrV4,
    remote: SocketAddrV4,
    cfg: Config,
    error: Option<TcpError>,

    // Send sequence space (RFC 9293 section 3.3.1).
    iss: SeqNum,
    snd_una: SeqNum,
    snd_nxt: SeqNum,
    /// Highest sequence number sent so far (SND.NXT can go back after a timeout).
    snd_max: SeqNum,
    snd_wnd: u32,
    max_snd_wnd: u32,
    snd_wl1: SeqNum,
    snd_wl2: SeqNum,
    /// Sequence number of the first byte in `send_buf`.
    buf_seq: SeqNum,
    send_buf: SendBuffer,
    fin_queued: bool,

    // Receive sequence space.
    irs: SeqNum,
    rcv_nxt: SeqNum,
    /// Right edge of the window we last advertised; never moves left (RFC 9293 3.8.6).
    rcv_adv: SeqNum,
    recv: Reassembler,
    peer_fin: Option<SeqNum>,
    fin_received: bool,

    // Negotiated options.
    /// Payload per segment with timestamps but no SACK blocks (for congestion control).
    snd_mss: usize,
    /// Room for payload plus options in one segment: the peer's MSS (RFC 9293 3.7.1).
    peer_mss: usize,
    /// End of the last small segment sent (Minshall's Nagle variant).
    snd_sml: SeqNum,
    /// The sender SWS override timer fired (RFC 9293 3.8.6.2.1): send what the window allows.
    sws_override: bool,
    snd_wscale: u8,
    rcv_wscale: u8,
    ts_enabled: bool,
    ts_recent: u32,
    ts_offset: u32,
    sack_enabled: bool,
    last_ack_sent: SeqNum,

    /// Deadlines: retransmission, delayed ACK, persist, keep-alive, TIME-WAIT, FIN-WAIT-2.
    timers: TimerTable,
    /// Segments owed to the peer beyond new data (see [`PendingOutput`]).
    pending: PendingOutput,

    // ACK generation.
    last_challenge_ack: Option<Instant>,
    /// Earlier ACK points still to send, oldest first (see MAX_OWED_ACKS).
    acks_owed: [SeqNum; MAX_OWED_ACKS],
    acks_owed_len: usize,
    /// In-order bytes received since the last ACK, and the largest segment seen
    /// (Linux's rcv_mss estimate), which define "two full-sized segments".
    rcv_unacked: usize,
    rcv_mss: usize,
    segs_since_ack: u32,
    /// When TS.Recent was last updated (RFC 7323 5.5).
    ts_recent_stamp: Instant,

    // Loss detection and recovery.
    rtt: RttEstimator,
    retries: u32,
    rtt_probe: Option<(SeqNum, Instant)>,
    /// Fast retransmit, fast recovery and the SACK scoreboard.
    loss: LossRecovery,
    cc: Box<dyn CongestionControl>,

    persist_backoff: u32,
    /// Zero-window or keep-alive probes sent since the peer last answered.
    probes_out: u32,
    /// The last time a segment arrived (keep-alive idle time, probe give-up).
    last_rx: Instant,
    keepalive: bool,
    /// The application released the connection (an orphan, in Linux's terms).
    orphaned: bool,
    /// Last soft ICMP error, reported if the connection later times out (RFC 5927 5.2).
    soft_error: Option<TcpError>,
    /// Our SYN or SYN-ACK was retransmitted (RFC 6298 5.7).
    syn_retransmitted: bool,
    /// When data was last sent, for the restart window after idle (RFC 5681 4.1).
    last_data_sent: Instant,
    /// Highest flight in this round trip and the sequence that ends the round, to
    /// tell a cwnd-limited sender from an application-limited one (RFC 7661).
    max_flight: usize,
    max_flight_end: SeqNum,

    stats: ConnectionStats,
}

impl Connection {
    fn new(cfg: Config, local: SocketAddrV4, remote: SocketAddrV4, iss: u32, state: State) -> Self {
        let iss = SeqNum(iss);
        let mss = usize::from(cfg.mss);
        let cc: Box<dyn CongestionControl> = match cfg.congestion {
            CongestionKind::NewReno => Box::new(NewReno::new(mss)),
            CongestionKind::Cubic => Box::new(Cubic::new(mss)),
        };
        let rcv_wscale = receive_window_scale(&cfg);
        Connection {
            state,
            timers: TimerTable::default(),
            pending: PendingOutput {
                syn: true,
                ..PendingOutput::default()
            },
            local,
            remote,
            error: None,
            iss,
            snd_una: iss,
            snd_nxt: iss,
            snd_max: iss,
            snd_wnd: 0,
            max_snd_wnd: 0,
            snd_wl1: SeqNum(0),
            snd_wl2: iss,
            buf_seq: iss + 1u32,
            send_buf: SendBuffer::new(cfg.send_buffer),
            fin_queued: false,
            irs: SeqNum(0),
            rcv_nxt: SeqNum(0),
            rcv_adv: SeqNum(0),
            recv: Reassembler::new(cfg.recv_buffer, cfg.max_ooo_ranges, cfg.max_ooo_bytes),
            peer_fin: None,
            fin_received: false,
            snd_mss: 536,
            peer_mss: 536,
            snd_sml: iss,
            sws_override: false,
            snd_wscale: 0,
            rcv_wscale,
            ts_enabled: cfg.timestamps,
            ts_recent: 0,
            ts_offset: iss.0.rotate_left(13),
            sack_enabled: cfg.sack,
            last_ack_sent: SeqNum(0),
            last_challenge_ack: None,
            acks_owed: [SeqNum(0); MAX_OWED_ACKS],
            acks_owed_len: 0,
            rcv_unacked: 0,
            rcv_mss: 536,
            segs_since_ack: 0,
            ts_recent_stamp: Instant::ZERO,
            rtt: RttEstimator::new(cfg.initial_rto, cfg.min_rto, cfg.max_rto),
            retries: 0,
            rtt_probe: None,
            loss: LossRecovery::new(iss),
            cc,
            persist_backoff: 0,
            probes_out: 0,
            last_rx: Instant::ZERO,
            keepalive: cfg.keepalive,
            orphaned: false,
            soft_error: None,
            syn_retransmitted: false,
            last_data_sent: Instant::ZERO,
            max_flight: 0,
            max_flight_end: iss,
            stats: ConnectionStats::default(),
            cfg,
        }
    }

    /// Active open (RFC 9293 3.10.1): the first `poll_transmit` returns the SYN.
    pub fn connect(cfg: Config, local: SocketAddrV4, remote: SocketAddrV4, iss: u32) -> Self {
        let mut c = Connection::new(cfg, local, remote, iss, State::SynSent);
        // RFC 7323: window scale and timestamps are offered only in the SYN.
        c.snd_wscale = 0;
        c
    }

    /// Passive open from a SYN that a listener accepted (RFC 9293 3.10.7.2).
    pub fn accept(
        now: Instant,
        cfg: Config,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        iss: u32,
        syn: &TcpRepr<'_>,
    ) -> Self {
        let mut c = Connection::new(cfg, local, remote, iss, State::SynReceived);
        c.irs = syn.seq;
        c.rcv_nxt = c.irs + 1u32;
        c.rcv_adv = c.rcv_nxt;
        c.negotiate(&syn.options);
        c.ts_recent_stamp = now;
        c.last_rx = now;
        // The window of a SYN is never scaled (RFC 7323 section 2.2).
        c.snd_wnd = u32::from(syn.window);
        c.max_snd_wnd = c.snd_wnd;
        c.snd_wl1 = c.irs;
        c.timers[Timer::Rto] = Some(now + c.rtt.rto());
        c
    }

    /// For a connection rebuilt from a SYN cookie: our SYN-ACK (ISS = the cookie) is
    /// already out, so the next segment is the peer's ACK (RFC 4987 section 3.6).
    pub fn mark_syn_sent(&mut self, now: Instant) {
        self.pending.syn = false;
        // The cookie SYN-ACK advertised an unscaled window of up to 64 KiB.
        self.rcv_adv = self.rcv_nxt + self.recv.window().min(65535);
        self.snd_nxt = self.iss + 1u32;
        self.snd_max = self.snd_nxt;
        self.timers[Timer::Rto] = Some(now + self.rtt.rto());
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
        self.ts_offset = offset;
    }

    /// Turns Nagle's algorithm off (`true`) or on for the data sent from now on.
    pub fn set_nodelay(&mut self, nodelay: bool) {
        self.cfg.nodelay = nodelay;
    }

    /// (SND.UNA, SND.NXT, RCV.NXT), for diagnostics and the fuzz drivers.
    pub fn sequence_numbers(&self) -> (u32, u32, u32) {
        (self.snd_una.0, self.snd_nxt.0, self.rcv_nxt.0)
    }
    /// Our address and port.
    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }
    /// The peer's address and port.
    pub fn remote(&self) -> SocketAddrV4 {
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
        self.rtt.srtt()
    }
    /// The congestion window in bytes.
    pub fn cwnd(&self) -> usize {
        self.cc.window()
    }
    /// The congestion controller's name.
    pub fn congestion_name(&self) -> &'static str {
        self.cc.name()
    }
    /// Bytes received out of order, held for the gap before them.
    pub fn out_of_order_bytes(&self) -> usize {
        self.recv.out_of_order_bytes()
    }
    /// The largest segment we send.
    pub fn send_mss(&self) -> usize {
        self.snd_mss
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

    // ---------------------------------------------------------------- application calls

    /// Queues data; returns how much fit in the send buffer (0 when full).
    pub fn send(&mut self, data: &[u8]) -> Result<usize, TcpError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match self.state {
            State::SynSent | State::SynReceived | State::Established | State::CloseWait
                if !self.fin_queued =>
            {
                Ok(self.send_buf.push(data))
            }
            _ => Err(TcpError::Closed),
        }
    }

    /// Room in the send buffer.
    pub fn send_capacity(&self) -> usize {
        if self.fin_queued {
            0
        } else {
            self.send_buf.free()
        }
    }

    /// Bytes sent or queued that the peer has not acknowledged yet.
    pub fn unacked(&self) -> usize {
        self.send_buf.len()
    }

    /// Reads in-order data. Returns 0 when nothing is ready; see [`Connection::at_eof`].
    pub fn recv(&mut self, buf: &mut [u8]) -> usize {
        let before = self.recv.window();
        let n = self.recv.read(buf);
        if n > 0 && !self.fin_received {
            // Send a window update once the window opened by enough (RFC 9293 3.8.6.2.2),
            // and only if the right edge we would advertise really moves: an update
            // that repeats the last ACK reads as a duplicate ACK to the peer.
            let new_edge = self.rcv_nxt + self.recv.window();
            let opened = if new_edge > self.rcv_adv {
                new_edge.since(self.rcv_adv) as usize
            } else {
                0
            };
            let threshold = (self.recv.capacity() / 2).min(2 * usize::from(self.cfg.mss));
            if (opened >= threshold || before < usize::from(self.cfg.mss))
                && self.advertised_edge().1 > self.rcv_adv
            {
                self.pending.window_update = true;
            }
        }
        if self.state == State::TimeWait && self.recv.readable() == 0 {
            self.release_buffers();
        }
        n
    }

    /// In-order bytes ready for [`Connection::recv`].
    pub fn recv_available(&self) -> usize {
        self.recv.readable()
    }

    /// The peer closed its side and every byte before its FIN has been read.
    pub fn at_eof(&self) -> bool {
        self.fin_received && self.recv.readable() == 0
    }

    /// Half-close: send FIN after the queued data (RFC 9293 3.10.4).
    pub fn close(&mut self) {
        match self.state {
            State::SynSent => self.state = State::Closed,
            State::SynReceived | State::Established => {
                self.fin_queued = true;
                self.state = State::FinWait1;
            }
            State::CloseWait => {
                self.fin_queued = true;
                self.state = State::LastAck;
            }
            _ => {}
        }
    }

    /// Abort: send RST and forget everything (RFC 9293 3.10.5).
    pub fn abort(&mut self) {
        if !matches!(self.state, State::SynSent | State::Closed | State::TimeWait) {
            // SND.MAX, not SND.NXT: after a timeout SND.NXT went back, and a RST below the
            // peer's RCV.NXT is out of its window (RFC 9293 3.10.7.4, RFC 5961 3.2).
            self.pending.rst = Some(self.rst_repr(self.snd_max, None));
        }
        self.enter_closed(None);
    }

    /// The application released the connection: it becomes an orphan, which Linux keeps
    /// in FIN-WAIT-2 for at most tcp_fin_timeout.
    pub fn orphan(&mut self, now: Instant) {
        self.orphaned = true;
        self.arm_fin_wait2(now);
    }

    fn arm_fin_wait2(&mut self, now: Instant) {
        if self.orphaned && self.state == State::FinWait2 && self.timers[Timer::FinWait2].is_none()
        {
            self.timers[Timer::FinWait2] = Some(now + self.cfg.fin_wait2_timeout);
        }
    }

    /// Turns keep-alive on or off (RFC 1122 4.2.3.6; SO_KEEPALIVE).
    pub fn set_keepalive(&mut self, now: Instant, on: bool) {
        self.keepalive = on;
        self.probes_out = 0;
        self.last_rx = self.last_rx.max(now);
        self.arm_keepalive();
    }

    /// Keep-alive settings (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT).
    pub fn set_keepalive_params(&mut self, idle: Duration, interval: Duration, count: u32) {
        self.cfg.keepalive_idle = idle;
        self.cfg.keepalive_interval = interval;
        self.cfg.keepalive_count = count;
        self.arm_keepalive();
    }

    fn arm_keepalive(&mut self) {
        self.timers[Timer::Keepalive] = (self.keepalive && self.is_synchronized())
            .then(|| self.last_rx + self.cfg.keepalive_idle);
    }

    /// The next hop never answered ARP. Like Linux, which turns a failed neighbour into
    /// an ICMP host unreachable: a connection still opening fails with
    /// [`TcpError::HostUnreachable`]; a synchronized one keeps it as a soft error.
    pub fn neighbour_failed(&mut self) {
        match self.state {
            State::SynSent | State::SynReceived => {
                self.pending.rst = None;
                self.enter_closed(Some(TcpError::HostUnreachable));
            }
            State::Closed => {}
            _ => self.soft_error = Some(TcpError::HostUnreachable),
        }
    }

    /// A SYN for this 4-tuple in TIME-WAIT that may open a new connection: higher
    /// sequence number or newer timestamp (RFC 9293 3.6.1, RFC 6191 section 2, as
    /// Linux's tcp_timewait_state_process).
    pub fn time_wait_accepts_syn(&self, seg: &TcpRepr<'_>) -> bool {
        if self.state != State::TimeWait || !seg.flags.syn || seg.flags.ack || seg.flags.rst {
            return false;
        }
        match (self.ts_enabled, seg.options.timestamps) {
            (true, Some((tsval, _))) => (tsval.wrapping_sub(self.ts_recent) as i32) > 0,
            _ => seg.seq > self.rcv_nxt,
        }
    }

    /// Bytes of buffer storage the connection holds.
    pub fn buffer_bytes(&self) -> usize {
        self.send_buf.storage_len() + self.recv.storage_len()
    }

    /// TIME-WAIT keeps only what a Linux tcp_timewait_sock keeps: the buffers go.
    fn release_buffers(&mut self) {
        if self.send_buf.storage_len() > 0 {
            self.send_buf = SendBuffer::empty();
        }
        if self.recv.readable() == 0 && self.recv.storage_len() > 0 {
            self.recv = Reassembler::empty();
        }
        self.loss.scoreboard = Scoreboard::default();
    }

    // ---------------------------------------------------------------- input

    /// An ICMP destination unreachable quoting one of our segments (RFC 1122 3.2.2.1,
    /// RFC 5927): `seq` is the quoted sequence number, `mtu` the next-hop MTU of a
    /// "fragmentation needed" (code 4).
    pub fn handle_icmp_unreachable(&mut self, code: u8, seq: u32, mtu: u16) {
        // RFC 5927 4.1: only a message quoting data in flight, SND.UNA <= seq < SND.MAX,
        // can be about this connection; a blind attacker has to guess it.
        let seq = SeqNum(seq);
        if self.state == State::Closed || !seq.in_range(self.snd_una, self.snd_max) {
            return;
        }
        if code == 4 {
            self.path_mtu(mtu);
            return;
        }
        match self.state {
            // Linux (tcp_v4_err) aborts a connection still opening on any unreachable.
            State::SynSent | State::SynReceived => self.enter_closed(Some(TcpError::Unreachable)),
            // RFC 5927 5.2 (and Linux): in synchronized states hard errors are soft;
            // reported only if the connection later times out.
            _ => self.soft_error = Some(TcpError::Unreachable),
        }
    }

    /// Path MTU discovery (RFC 1191 section 6.1): lower the segment size to fit the MTU
    /// the router reported, and resend what was sent too large (as Linux's
    /// tcp_simple_retransmit: no congestion response, nothing was lost to congestion).
    fn path_mtu(&mut self, mtu: u16) {
        // RFC 1191 section 5 lets a host guess when MTU is 0; like Linux we never go
        // below a 552-byte path (min_pmtu).
        if mtu == 0 {
            return;
        }
        let room = usize::from(mtu.max(552)) - 40;
        if room >= self.peer_mss {
            return;
        }
        let ts = if self.ts_enabled { 12 } else { 0 };
        self.peer_mss = room;
        self.snd_mss = room - ts;
        self.snd_nxt = self.snd_una;
        self.rtt_probe = None;
        self.loss.scoreboard.clear();
    }

    /// Processes one arriving segment (RFC 9293 3.10.7).
    pub fn handle_segment(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        self.stats.segments_in += 1;
        self.stats.bytes_in += seg.payload.len() as u64;
        match self.state {
            // RFC 9293 3.10.7.1: a connection the application closed (or aborted) but has
            // not released answers like a closed port, with a RST.
            State::Closed if !seg.flags.rst => {
                self.pending.rst = Some(if seg.flags.ack {
                    self.rst_repr(seg.ack.unwrap_or_default(), None)
                } else {
                    self.rst_repr(SeqNum(0), Some(seg.seq + seg.seq_len()))
                });
            }
            State::Closed => {}
            State::SynSent => self.handle_syn_sent(now, seg),
            _ => self.handle_synchronized(now, seg),
        }
    }

    fn negotiate(&mut self, opts: &TcpOptions) {
        // RFC 9293 3.7.1: 536 when no MSS option.
        let peer_mss = usize::from(opts.mss.unwrap_or(536)).max(64);
        match (self.cfg.window_scaling, opts.window_scale) {
            (true, Some(ws)) => self.snd_wscale = ws.min(14), // RFC 7323 2.3
            _ => {
                self.snd_wscale = 0;
                self.rcv_wscale = 0;
            }
        }
        self.ts_enabled = self.cfg.timestamps && opts.timestamps.is_some();
        if let Some((val, _)) = opts.timestamps {
            self.ts_recent = val;
        }
        self.sack_enabled = self.cfg.sack && opts.sack_permitted;
        let mut mss = peer_mss.min(usize::from(self.cfg.mss));
        self.peer_mss = mss;
        if self.ts_enabled {
            mss -= 12; // timestamps take 12 bytes of every segment
        }
        self.snd_mss = mss;
    }

    fn handle_syn_sent(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        let ack = seg.ack.unwrap_or_default();
        // RFC 9293 3.10.7.3, first: check the ACK.
        let ack_ok = seg.flags.ack && ack > self.iss && ack <= self.snd_max;
        if seg.flags.ack && !ack_ok {
            if !seg.flags.rst {
                self.pending.rst = Some(self.rst_repr(ack, None));
            }
            return;
        }
        if seg.flags.rst {
            if ack_ok {
                self.enter_closed(Some(TcpError::Refused));
            }
            return;
        }
        if !seg.flags.syn {
            return;
        }
        self.irs = seg.seq;
        self.rcv_nxt = self.irs + 1u32;
        self.rcv_adv = self.rcv_nxt;
        self.negotiate(&seg.options);
        self.ts_recent_stamp = now;
        self.last_rx = now;
        self.snd_wnd = u32::from(seg.window);
        self.max_snd_wnd = self.snd_wnd;
        self.snd_wl1 = self.irs;
        self.snd_wl2 = ack;
        if ack_ok {
            if self.retries == 0
                && let Some((_, sent)) = self.rtt_probe.take()
            {
                self.rtt.sample(now - sent);
            }
            self.rtt_probe = None;
            self.snd_una = ack;
            self.snd_nxt = self.snd_nxt.max(ack);
            self.retries = 0;
            self.rtt.reset_backoff();
            self.timers[Timer::Rto] = None;
            self.state = State::Established;
            self.pending.ack_now = true;
            self.on_established();
        } else {
            // Simultaneous open (RFC 9293 figure 7): answer with SYN-ACK.
            self.state = State::SynReceived;
            self.pending.syn = true;
            self.snd_nxt = self.iss;
        }
    }

    fn handle_synchronized(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        let seq = seg.seq;
        let seg_len = seg.seq_len();
        let rcv_wnd = if self.rcv_adv > self.rcv_nxt {
            self.rcv_adv.since(self.rcv_nxt)
        } else {
            0
        };

        // PAWS (RFC 7323 section 5.3); after 24 days without a segment TS.Recent is no
        // longer valid (section 5.5) and the segment passes.
        if self.ts_enabled
            && !seg.flags.rst
            && let Some((tsval, _)) = seg.options.timestamps
            && (tsval.wrapping_sub(self.ts_recent) as i32) < 0
            && now - self.ts_recent_stamp <= PAWS_IDLE
        {
            self.stats.paws_drops += 1;
            self.pending.ack_now = true;
            return;
        }

        if self.state == State::SynReceived && seg.flags.syn && !seg.flags.rst && seq == self.irs {
            if !seg.flags.ack {
                // The peer retransmitted its SYN: our SYN-ACK was lost, send it again
                // (Linux's tcp_check_req); a bare ACK is ignored in SYN-SENT.
                self.pending.syn = true;
                self.snd_nxt = self.iss;
                return;
            }
            // Simultaneous open (RFC 9293 figure 8, line 6): the peer's SYN-ACK
            // acknowledges our SYN and establishes; nothing more is sent.
            let window = u32::from(seg.window);
            if self.process_ack(now, seg) && self.state == State::Established {
                // The window of a SYN is never scaled (RFC 7323 section 2.2).
                self.snd_wnd = window;
                self.max_snd_wnd = self.max_snd_wnd.max(window);
            }
            return;
        }

        // Acceptability test (RFC 9293 3.10.7.4, first).
        let in_window = |s: SeqNum| s.in_range(self.rcv_nxt, self.rcv_nxt + rcv_wnd);
        let acceptable = match (seg_len, rcv_wnd) {
            (0, 0) => seq == self.rcv_nxt,
            (0, _) => in_window(seq),
            (_, 0) => false,
            (_, _) => in_window(seq) || in_window(seq + (seg_len - 1)),
        };

        // RST (RFC 5961 section 3.2): exact match resets, in-window gets a challenge ACK.
        if seg.flags.rst {
            if seq == self.rcv_nxt {
                let err = match self.state {
                    State::SynReceived | State::Closing | State::LastAck | State::TimeWait => None,
                    _ => Some(TcpError::Reset),
                };
                self.enter_closed(err);
            } else if acceptable {
                self.challenge_ack(now);
            }
            return;
        }

        if !acceptable {
            if seg_len > 0 {
                self.stats.dropped_out_of_window += 1;
            }
            // A duplicate or out-of-window segment gets an ACK (RFC 9293 3.10.7.4), but the
            // ACK field of a zero-window probe or pure ACK is still worth reading.
            self.pending.ack_now = true;
            if self.state == State::TimeWait && seg.flags.fin {
                // RFC 9293 3.10.7.4: a retransmitted FIN in TIME-WAIT is acknowledged
                // and restarts the 2 MSL timeout.
                self.timers[Timer::TimeWait] = Some(now + self.cfg.time_wait);
            }
            if !(rcv_wnd == 0 && seg.flags.ack) {
                return;
            }
        }

        // SYN in a synchronized state (RFC 5961 section 4.2): challenge ACK.
        if seg.flags.syn {
            if self.state == State::SynReceived && seq == self.irs {
                self.pending.syn = true; // our SYN-ACK was lost
                self.snd_nxt = self.iss;
            } else if self.state == State::TimeWait {
                self.pending.ack_now = true;
            } else {
                self.challenge_ack(now);
            }
            return;
        }

        if !seg.flags.ack {
            return;
        }
        if !self.process_ack(now, seg) {
            return;
        }
        if !acceptable {
            return;
        }

        // RFC 7323 4.3: remember the timestamp of a segment that covers the last ACK sent.
        if self.ts_enabled
            && let Some((tsval, _)) = seg.options.timestamps
            && seq <= self.last_ack_sent
        {
            self.ts_recent = tsval;
            self.ts_recent_stamp = now;
        }

        // Segment text (RFC 9293 3.10.7.4, seventh).
        if !seg.payload.is_empty() {
            self.process_data(now, seq, seg.payload);
        }

        if seg.flags.fin {
            self.peer_fin = Some(seq + seg.payload.len());
        }
        self.check_fin(now);
    }

    /// The ACK field (RFC 9293 3.10.7.4, fifth). Returns false if the segment is dropped.
    fn process_ack(&mut self, now: Instant, seg: &TcpRepr<'_>) -> bool {
        let ack = seg.ack.unwrap_or_default();
        let seq = seg.seq;
        let opening = self.state == State::SynReceived;
        if opening {
            if ack > self.snd_una && ack <= self.snd_max {
                self.state = State::Established;
                // The window of the ACK completing the handshake is scaled.
                self.snd_wnd = u32::from(seg.window) << self.snd_wscale;
                self.max_snd_wnd = self.max_snd_wnd.max(self.snd_wnd);
                self.snd_wl1 = seq;
                self.snd_wl2 = ack;
            } else {
                self.pending.rst = Some(self.rst_repr(ack, None));
                return false;
            }
        }
        // RFC 5961 5.2: an ACK for data never sent is dropped with an ACK; one far in the
        // past gets a challenge ACK.
        if ack > self.snd_max {
            self.pending.ack_now = true;
            return false;
        }
        if ack < self.snd_una - self.max_snd_wnd.max(1) {
            self.challenge_ack(now);
            return false;
        }
        // The peer is alive: it answered whatever probe we sent (RFC 9293 3.8.6.1).
        self.last_rx = now;
        self.probes_out = 0;

        if self.sack_enabled {
            for &(l, r) in seg.options.sack_blocks() {
                self.loss
                    .scoreboard
                    .add(SeqNum(l), SeqNum(r), self.snd_una, self.snd_max);
            }
        }

        let window = u32::from(seg.window) << self.snd_wscale;
        if ack > self.snd_una {
            self.on_new_ack(now, ack, seg);
            if opening {
                self.on_established();
            }
        } else if ack == self.snd_una
            && seg.payload.is_empty()
            && !seg.flags.fin
            && window == self.snd_wnd
            && self.snd_max > self.snd_una
        {
            // RFC 5681 section 2 "duplicate acknowledgment".
            self.stats.dup_acks += 1;
            self.on_dup_ack(now);
        }

        // Window update (RFC 9293 3.10.7.4): only from a segment newer than the last one used.
        if self.snd_wl1 < seq || (self.snd_wl1 == seq && self.snd_wl2 <= ack) {
            self.snd_wnd = window;
            self.max_snd_wnd = self.max_snd_wnd.max(window);
            self.snd_wl1 = seq;
            self.snd_wl2 = ack;
            if self.snd_wnd > 0 {
                self.timers[Timer::Persist] = None;
                self.persist_backoff = 0;
            }
        }

        // FIN acknowledged?
        let fin_acked = self.fin_queued && self.snd_una == self.data_end() + 1u32;
        match self.state {
            State::FinWait1 if fin_acked => {
                self.state = State::FinWait2;
                self.arm_fin_wait2(now);
            }
            State::Closing if fin_acked => self.enter_time_wait(now),
            State::LastAck if fin_acked => {
                self.enter_closed(None);
                return false;
            }
            // RFC 9293 3.10.7.4: in TIME-WAIT only a retransmitted FIN is acknowledged;
            // answering every ACK starts an ACK ping-pong between two TIME-WAIT ends.
            _ => {}
        }
        true
    }

    /// The handshake completed (SYN-SENT or SYN-RECEIVED to ESTABLISHED).
    fn on_established(&mut self) {
        // RFC 6298 5.7: after a retransmitted SYN or SYN-ACK and with no RTT sample,
        // the RTO is 3 s when data transfer begins.
        if self.syn_retransmitted && self.rtt.srtt().is_none() {
            self.rtt.restart(RTO_AFTER_SYN_LOSS);
        }
        self.arm_keepalive();
    }

    fn on_new_ack(&mut self, now: Instant, ack: SeqNum, seg: &TcpRepr<'_>) {
        let acked = ack.since(self.snd_una) as usize;
        // RTT: timestamps give a sample from every ACK (RFC 7323 4.1), otherwise one timed
        // segment per window, never a retransmitted one (Karn).
        let mut sampled = false;
        if self.ts_enabled
            && let Some((_, ecr)) = seg.options.timestamps
            && ecr != 0
        {
            let elapsed = self.ts_now(now).wrapping_sub(ecr);
            if elapsed < 60_000 {
                self.rtt.sample(
                    Duration::from_millis(u64::from(elapsed)).max(Duration::from_micros(100)),
                );
                sampled = true;
            }
        }
        if let Some((timed, sent)) = self.rtt_probe
            && ack >= timed
        {
            if !sampled {
                self.rtt.sample(now - sent);
            }
            self.rtt_probe = None;
        }

        // RFC 7661 (as Linux's tcp_is_cwnd_limited): grow cwnd only if the sender used it.
        // In slow start, a flight of at least half of cwnd counts; in congestion avoidance
        // the flight must have filled cwnd to within a segment.
        let cwnd = self.cc.window();
        let cwnd_limited = if cwnd < self.cc.ssthresh() {
            2 * self.max_flight > cwnd
        } else {
            self.max_flight + self.snd_mss >= cwnd
        };
        if ack >= self.max_flight_end {
            // A new round: measure the flight again from what is still outstanding.
            self.max_flight = self.snd_max.since(ack) as usize;
            self.max_flight_end = self.snd_max;
        }

        // Drop acknowledged bytes from the send buffer.
        let data_acked_to = ack.min(self.data_end());
        if data_acked_to > self.buf_seq {
            self.send_buf
                .consume(data_acked_to.since(self.buf_seq) as usize);
            self.buf_seq = data_acked_to;
        }
        self.snd_una = ack;
        if self.snd_nxt < ack {
            self.snd_nxt = ack;
        }
        self.retries = 0;
        self.rtt.reset_backoff();
        let srtt = self.rtt.srtt();
        let (loss, sender) = self.recovery_parts();
        if loss.on_new_ack(now, ack, acked, cwnd_limited, srtt, sender) {
            self.pending.fast_retransmit = true;
        }

        // RFC 6298 5.2/5.3: stop the timer when all is acknowledged, else restart it.
        self.timers[Timer::Rto] = if self.snd_max > self.snd_una {
            Some(now + self.rtt.rto())
        } else {
            None
        };
    }

    /// The loss recovery state, and the sender fields and congestion controller it uses.
    fn recovery_parts(&mut self) -> (&mut LossRecovery, Sender<'_>) {
        let sender = Sender {
            snd_una: self.snd_una,
            snd_max: self.snd_max,
            snd_mss: self.snd_mss,
            sack: self.sack_enabled,
            cc: self.cc.as_mut(),
        };
        (&mut self.loss, sender)
    }

    fn on_dup_ack(&mut self, now: Instant) {
        let (loss, sender) = self.recovery_parts();
        if loss.on_dup_ack(now, sender) {
            self.pending.fast_retransmit = true;
            self.stats.fast_retransmits += 1;
        }
    }

    fn process_data(&mut self, now: Instant, seq: SeqNum, mut payload: &[u8]) {
        if !matches!(
            self.state,
            State::Established | State::FinWait1 | State::FinWait2
        ) {
            return;
        }
        let mut offset = 0usize;
        if seq < self.rcv_nxt {
            let skip = self.rcv_nxt.since(seq) as usize;
            if skip >= payload.len() {
                self.pending.ack_now = true;
                return;
            }
            payload = &payload[skip..];
        } else {
            offset = seq.since(self.rcv_nxt) as usize;
        }
        let had_gap = self.recv.has_out_of_order();
        let ins = self.recv.insert(offset, payload);
        self.rcv_nxt = self.rcv_nxt + ins.advanced;
        if ins.out_of_order {
            self.stats.out_of_order_segments += 1;
            self.pending.dup_acks = (self.pending.dup_acks + 1).min(64);
        }
        if ins.out_of_order || (had_gap && ins.advanced > 0) || ins.advanced == 0 {
            // RFC 5681 4.2: ACK out-of-order data and gap fills at once.
            self.pending.ack_now = true;
        } else {
            // Delayed ACK (RFC 1122 4.2.3.2), but an ACK for at least every second
            // full-sized segment (RFC 5681 4.2), even within one receive batch: the ACK
            // point is recorded here and sent with its own number by poll_transmit.
            // "Full-sized" is the largest segment seen, like Linux's rcv_mss.
            self.rcv_mss = self
                .rcv_mss
                .max(payload.len())
                .min(usize::from(self.cfg.mss));
            // Smaller segments are acknowledged every second one too, but those ACKs
            // coalesce into one per batch.
            self.rcv_unacked += ins.advanced;
            self.segs_since_ack += 1;
            if self.rcv_unacked >= 2 * self.rcv_mss {
                self.rcv_unacked = 0;
                self.segs_since_ack = 0;
                self.owe_ack(self.rcv_nxt);
            } else if self.segs_since_ack >= 2 {
                self.pending.ack_now = true;
            } else if self.timers[Timer::DelayedAck].is_none() {
                self.timers[Timer::DelayedAck] = Some(now + self.cfg.delayed_ack);
            }
        }
    }

    fn owe_ack(&mut self, ack: SeqNum) {
        if self.acks_owed_len == MAX_OWED_ACKS {
            // Coalesce only past the bound: the last point moves up.
            self.acks_owed_len -= 1;
        }
        self.acks_owed[self.acks_owed_len] = ack;
        self.acks_owed_len += 1;
    }

    fn check_fin(&mut self, now: Instant) {
        let Some(fin) = self.peer_fin else { return };
        if self.fin_received || self.rcv_nxt != fin {
            return;
        }
        self.fin_received = true;
        self.rcv_nxt = self.rcv_nxt + 1u32;
        self.pending.ack_now = true;
        let our_fin_acked = self.fin_queued && self.snd_una == self.data_end() + 1u32;
        match self.state {
            State::SynReceived | State::Established => self.state = State::CloseWait,
            State::FinWait1 if our_fin_acked => self.enter_time_wait(now),
            State::FinWait1 => self.state = State::Closing,
            State::FinWait2 => self.enter_time_wait(now),
            _ => {}
        }
    }

    /// RFC 5961 section 7: challenge ACKs are rate-limited, per connection (Linux's
    /// tcp_invalid_ratelimit, 500 ms) and for the whole stack (tcp_challenge_ack_limit).
    fn challenge_ack(&mut self, now: Instant) {
        if self
            .last_challenge_ack
            .is_some_and(|t| now - t < CHALLENGE_ACK_SPACING)
            || !self
                .cfg
                .challenge_acks
                .take(now, self.cfg.challenge_ack_limit)
        {
            return;
        }
        self.last_challenge_ack = Some(now);
        self.stats.challenge_acks += 1;
        self.pending.challenge_ack = true;
    }

    fn enter_time_wait(&mut self, now: Instant) {
        self.state = State::TimeWait;
        self.timers.stop_all();
        self.timers[Timer::TimeWait] = Some(now + self.cfg.time_wait);
        self.release_buffers();
    }

    fn enter_closed(&mut self, error: Option<TcpError>) {
        self.state = State::Closed;
        if self.error.is_none() {
            self.error = error;
        }
        self.timers.stop_all();
        self.pending.ack_now = false;
        self.pending.dup_acks = 0;
        self.acks_owed_len = 0;
    }

    /// RFC 1122 4.2.3.5: give up with an error to the application, and a RST at the
    /// highest sequence number sent (RFC 9293 3.10.7.4), as Linux's tcp_write_err.
    fn give_up(&mut self) {
        if self.state != State::SynSent {
            self.pending.rst = Some(self.rst_repr(self.snd_max, None));
        }
        // RFC 5927 5.2: a soft ICMP error explains the timeout better.
        let error = self.soft_error.unwrap_or(TcpError::TimedOut);
        self.enter_closed(Some(error));
    }

    // ---------------------------------------------------------------- timers

    /// The next time [`Connection::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Fires the timers due at `now`: retransmission, persist, delayed ACK, TIME-WAIT.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers.expired(Timer::TimeWait, now) {
            self.enter_closed(None);
            return;
        }
        if self.timers.expired(Timer::FinWait2, now) {
            // Linux: an orphan in FIN-WAIT-2 past tcp_fin_timeout is dropped silently
            // (its FIN-WAIT-2 timewait socket expires).
            self.enter_closed(None);
            return;
        }
        if self.timers.expired(Timer::Keepalive, now) {
            self.on_keepalive(now);
            if self.state == State::Closed {
                return;
            }
        }
        if self.timers.expired(Timer::DelayedAck, now) {
            self.timers[Timer::DelayedAck] = None;
            self.pending.ack_now = true;
        }
        if self.timers.expired(Timer::Persist, now) {
            self.timers[Timer::Persist] = None;
            if self.snd_wnd == 0 {
                // Zero-window probe (RFC 9293 3.8.6.1); keeps going while the peer answers,
                // gives up after max_retries unanswered ones (Linux tcp_retries2).
                self.probes_out += 1;
                if self.probes_out > self.cfg.max_retries {
                    self.give_up();
                    return;
                }
                self.pending.probe = true;
                self.stats.window_probes += 1;
                self.persist_backoff = (self.persist_backoff + 1).min(10);
                self.timers[Timer::Persist] = Some(now + self.persist_interval());
            } else {
                self.sws_override = true;
            }
        }
        if self.timers.expired(Timer::Rto, now) {
            self.on_rto(now);
        }
    }

    fn persist_interval(&self) -> Duration {
        (self.rtt.rto() * (1 << self.persist_backoff)).clamp(self.cfg.min_rto, self.cfg.max_rto)
    }

    fn on_keepalive(&mut self, now: Instant) {
        self.timers[Timer::Keepalive] = None;
        if !self.keepalive || !matches!(self.state, State::Established | State::CloseWait) {
            return;
        }
        // Linux probes only an idle connection: nothing in flight or queued.
        if self.snd_max != self.snd_una || !self.send_buf.is_empty() {
            self.timers[Timer::Keepalive] = Some(now + self.cfg.keepalive_idle);
            return;
        }
        let due = if self.probes_out == 0 {
            self.last_rx + self.cfg.keepalive_idle
        } else {
            now
        };
        if due > now {
            self.timers[Timer::Keepalive] = Some(due);
            return;
        }
        // RFC 1122 4.2.3.6: a probe is a segment with SEG.SEQ = SND.NXT-1 and no data.
        if self.probes_out >= self.cfg.keepalive_count {
            self.give_up();
            return;
        }
        self.probes_out += 1;
        self.pending.probe = true;
        self.stats.keepalive_probes += 1;
        self.timers[Timer::Keepalive] = Some(now + self.cfg.keepalive_interval);
    }

    fn on_rto(&mut self, now: Instant) {
        self.stats.timeouts += 1;
        // Our SYN is unacknowledged (also after a close in SYN-RECEIVED): the timer is
        // the SYN's, whatever the state.
        let syn_unacked = self.snd_una == self.iss;
        if self.snd_wnd == 0 && !syn_unacked {
            // The peer closed its window with data in flight: our retransmissions are
            // window probes, and the connection stays while they are answered (RFC 9293
            // 3.8.6.1, RFC 1122 4.2.2.17); unanswered ones are bounded like retries.
            self.probes_out += 1;
            if self.probes_out > self.cfg.max_retries {
                self.give_up();
                return;
            }
        } else {
            self.retries += 1;
        }
        let limit = if syn_unacked {
            self.cfg.max_syn_retries
        } else {
            self.cfg.max_retries
        };
        if self.retries > limit {
            self.give_up();
            return;
        }
        self.rtt.back_off();
        self.rtt_probe = None; // Karn: never time a retransmission
        match self.state {
            _ if syn_unacked => {
                self.pending.syn = true;
                self.snd_nxt = self.iss;
            }
            _ => {
                // RFC 5681 3.1 / RFC 6298 5.4-5.6: go back to SND.UNA with a one-segment window.
                let flight = self.snd_max.since(self.snd_una) as usize;
                self.cc.on_timeout(now, flight);
                self.snd_nxt = self.snd_una;
                self.loss.on_timeout(self.snd_max);
                self.pending.fast_retransmit = false;
                if self.cfg.mtu_probing && self.retries == BLACK_HOLE_RETRIES {
                    // A path that drops big segments and filters the ICMP that would say
                    // so (RFC 4821 section 1, RFC 2923 2.1): like Linux's tcp_mtu_probing
                    // after tcp_retries1 timeouts, halve the segment size, to at most
                    // tcp_base_mss (1024).
                    let mss = (self.peer_mss / 2).min(BASE_MSS);
                    self.path_mtu((mss + 40) as u16);
                }
            }
        }
        self.timers[Timer::Rto] = Some(now + self.rtt.rto());
    }

    // ---------------------------------------------------------------- output

    fn data_end(&self) -> SeqNum {
        self.buf_seq + self.send_buf.len()
    }

    fn ts_now(&self, now: Instant) -> u32 {
        (now.millis() as u32).wrapping_add(self.ts_offset)
    }

    /// Copies the payload of a [`Transmit`] into the frame.
    pub fn copy_payload(&self, offset: usize, dst: &mut [u8]) {
        self.send_buf.copy_out(offset, dst);
    }

    fn rst_repr(&self, seq: SeqNum, ack: Option<SeqNum>) -> TcpRepr<'static> {
        TcpRepr {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq,
            ack,
            flags: if ack.is_some() {
                TcpFlags::RST_ACK
            } else {
                TcpFlags::RST
            },
            ..Default::default()
        }
    }

    /// The window to advertise, with receiver-side silly window avoidance
    /// (RFC 9293 3.8.6.2.2): the right edge only moves by at least min(buffer/2, MSS).
    fn advertise_window(&mut self) -> u16 {
        let (wnd, edge) = self.advertised_edge();
        self.rcv_adv = self.rcv_adv.max(edge);
        wnd
    }

    /// The window field the next ACK would carry, and the right edge it stands for.
    fn advertised_edge(&self) -> (u16, SeqNum) {
        let free = self.recv.window();
        let new_edge = self.rcv_nxt + free;
        let step = (self.recv.capacity() / 2).min(usize::from(self.cfg.mss));
        let edge = if new_edge > self.rcv_adv && new_edge.since(self.rcv_adv) as usize >= step {
            new_edge
        } else {
            self.rcv_adv.max(self.rcv_nxt)
        };
        let wnd = (edge.since(self.rcv_nxt) >> self.rcv_wscale).min(65535);
        (wnd as u16, self.rcv_nxt + (wnd << self.rcv_wscale))
    }

    fn base_repr(&mut self, now: Instant, seq: SeqNum, flags: TcpFlags) -> TcpRepr<'static> {
        let mut options = TcpOptions::default();
        if self.ts_enabled {
            options.timestamps = Some((self.ts_now(now), self.ts_recent));
        }
        // SACK blocks never ride on a SYN: its own options already take the space.
        if self.sack_enabled && !flags.syn && self.recv.has_out_of_order() {
            let max = if self.ts_enabled { 3 } else { MAX_SACK_BLOCKS };
            let mut ranges = [(0usize, 0usize); MAX_SACK_BLOCKS];
            let n = self.recv.sack_ranges(&mut ranges[..max]);
            for (i, &(s, e)) in ranges[..n].iter().enumerate() {
                options.sack_blocks[i] = ((self.rcv_nxt + s).0, (self.rcv_nxt + e).0);
            }
            options.sack_count = n as u8;
        }
        let window = if flags.syn {
            // Windows in SYN segments are not scaled (RFC 7323 2.2).
            let window = self.recv.window().min(65535);
            self.rcv_adv = self.rcv_adv.max(self.rcv_nxt + window);
            window as u16
        } else {
            self.advertise_window()
        };
        if flags.ack {
            self.last_ack_sent = self.rcv_nxt;
            self.pending.ack_now = false;
            self.rcv_unacked = 0;
            self.segs_since_ack = 0;
            self.timers[Timer::DelayedAck] = None;
            self.pending.window_update = false;
        }
        self.stats.segments_out += 1;
        TcpRepr {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq,
            ack: flags.ack.then_some(self.rcv_nxt),
            flags,
            window,
            options,
            payload: &[],
        }
    }

    /// The next segment to send, if any. Call until it returns `None` after every batch
    /// of input: that is what makes one ACK cover a whole batch of received segments.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if let Some(rst) = self.pending.rst.take() {
            self.stats.segments_out += 1;
            return Some(Transmit {
                repr: rst,
                payload_offset: 0,
                payload_len: 0,
            });
        }
        match self.state {
            State::Closed => return None,
            _ if self.pending.syn && self.snd_una == self.iss => {
                return Some(self.syn_segment(now));
            }
            State::SynSent => return None,
            _ => {}
        }
        if self.pending.challenge_ack {
            self.pending.challenge_ack = false;
            let repr = self.base_repr(now, self.snd_max, TcpFlags::ACK);
            return Some(Transmit {
                repr,
                payload_offset: 0,
                payload_len: 0,
            });
        }
        if let Some(t) = self.owed_ack(now) {
            return Some(t);
        }
        if self.snd_una == self.iss {
            // Nothing but ACKs until the peer acknowledges our SYN (a close in
            // SYN-RECEIVED queues the FIN until then, RFC 9293 3.10.4).
            return self.pure_ack(now);
        }
        if self.pending.fast_retransmit {
            self.pending.fast_retransmit = false;
            let len = self.snd_mss.min(self.send_buf.len());
            // Only while something is unacknowledged: data, or a FIN not yet acked.
            if self.snd_una < self.snd_max && (len > 0 || self.snd_una == self.data_end()) {
                self.stats.retransmits += 1;
                let t = self.data_segment(now, self.snd_una, len);
                // RFC 6675 5 step 4.1: the retransmitted segment counts as sent, so
                // NextSeg does not pick the same hole again.
                self.loss.retransmitted_to(self.snd_una + t.payload_len);
                return Some(t);
            }
        }
        if let Some(t) = self.sack_retransmit(now) {
            return Some(t);
        }
        if let Some(t) = self.new_data(now) {
            return Some(t);
        }
        if self.pending.probe {
            self.pending.probe = false;
            // An old sequence number draws an ACK with the current window.
            let repr = self.base_repr(now, self.snd_una - 1u32, TcpFlags::ACK);
            return Some(Transmit {
                repr,
                payload_offset: 0,
                payload_len: 0,
            });
        }
        self.pure_ack(now)
    }

    /// An ACK point reached within the last receive batch (RFC 5681 4.2: at least every
    /// second full-sized segment), sent with the acknowledgment number of that point.
    fn owed_ack(&mut self, now: Instant) -> Option<Transmit> {
        if self.acks_owed_len == 0 {
            return None;
        }
        let ack = self.acks_owed[0];
        self.acks_owed.copy_within(1..self.acks_owed_len, 0);
        self.acks_owed_len -= 1;
        if ack == self.rcv_nxt || ack <= self.last_ack_sent {
            // The latest point is the ordinary ACK.
            self.pending.ack_now |= ack == self.rcv_nxt;
            return self.owed_ack(now);
        }
        // Bytes after this point are still unacknowledged: keep the delayed-ACK state.
        let kept = (
            self.pending.ack_now,
            self.pending.window_update,
            self.timers[Timer::DelayedAck],
            self.rcv_unacked,
            self.segs_since_ack,
        );
        let mut repr = self.base_repr(now, self.snd_max, TcpFlags::ACK);
        (
            self.pending.ack_now,
            self.pending.window_update,
            self.timers[Timer::DelayedAck],
            self.rcv_unacked,
            self.segs_since_ack,
        ) = kept;
        let edge = self.rcv_nxt + (u32::from(repr.window) << self.rcv_wscale);
        repr.ack = Some(ack);
        repr.window = (edge.since(ack) >> self.rcv_wscale).min(65535) as u16;
        self.last_ack_sent = ack;
        Some(Transmit {
            repr,
            payload_offset: 0,
            payload_len: 0,
        })
    }

    fn pure_ack(&mut self, now: Instant) -> Option<Transmit> {
        if self.pending.dup_acks > 0 {
            self.pending.dup_acks -= 1;
            self.pending.ack_now = true;
        }
        if !self.pending.ack_now
            && self.pending.window_update
            && self.advertised_edge().1 <= self.rcv_adv
        {
            // RFC 9293 3.8.6.2.2: an update that does not move the right edge would
            // repeat the last ACK, a duplicate ACK to the peer.
            self.pending.window_update = false;
        }
        if !(self.pending.ack_now || self.pending.window_update) {
            return None;
        }
        // The highest sequence number sent, not SND.NXT: after a timeout SND.NXT goes back,
        // and an ACK stamped below the peer's RCV.NXT would be dropped as out of window.
        let repr = self.base_repr(now, self.snd_max, TcpFlags::ACK);
        Some(Transmit {
            repr,
            payload_offset: 0,
            payload_len: 0,
        })
    }

    fn syn_segment(&mut self, now: Instant) -> Transmit {
        self.pending.syn = false;
        let flags = if self.state == State::SynSent {
            TcpFlags::SYN
        } else {
            TcpFlags::SYN_ACK
        };
        let mut repr = self.base_repr(now, self.iss, flags);
        let offered = self.state == State::SynSent;
        repr.options.mss = Some(self.cfg.mss);
        // In a SYN-ACK, options are only echoed if the peer offered them (RFC 7323, RFC 2018).
        if self.cfg.window_scaling && (offered || self.snd_wscale > 0 || self.rcv_wscale > 0) {
            repr.options.window_scale = Some(self.rcv_wscale);
        }
        if !(self.cfg.timestamps && (offered || self.ts_enabled)) {
            repr.options.timestamps = None;
        } else if offered {
            repr.options.timestamps = Some((self.ts_now(now), 0));
        }
        repr.options.sack_permitted = self.cfg.sack && (offered || self.sack_enabled);
        if self.snd_max > self.iss {
            self.stats.retransmits += 1;
            self.syn_retransmitted = true;
        } else {
            self.rtt_probe = Some((self.iss + 1u32, now));
        }
        self.snd_nxt = self.iss + 1u32;
        self.snd_max = self.snd_max.max(self.snd_nxt);
        if self.timers[Timer::Rto].is_none() {
            self.timers[Timer::Rto] = Some(now + self.rtt.rto());
        }
        Transmit {
            repr,
            payload_offset: 0,
            payload_len: 0,
        }
    }

    /// A segment carrying up to `max_len` bytes from `seq` (and FIN if it reaches the end
    /// after close). Options (SACK blocks) shrink the payload so the segment fits the MSS.
    fn data_segment(&mut self, now: Instant, seq: SeqNum, max_len: usize) -> Transmit {
        let mut repr = self.base_repr(now, seq, TcpFlags::ACK);
        let len = max_len.min(self.peer_mss.saturating_sub(repr.options.encoded_len()));
        let end = seq + len;
        let fin = self.fin_queued && end == self.data_end();
        repr.flags.fin = fin;
        repr.flags.psh = len > 0 && end == self.data_end();
        if len < self.snd_mss {
            self.snd_sml = end;
        }
        let next = end + u32::from(fin);
        if seq < self.snd_max {
            // Karn: a retransmission invalidates the timed segment it covers.
            if self.rtt_probe.is_some_and(|(t, _)| t > seq) {
                self.rtt_probe = None;
            }
        } else if len > 0 && self.rtt_probe.is_none() && !self.ts_enabled {
            self.rtt_probe = Some((end, now));
        }
        self.snd_max = self.snd_max.max(next);
        self.max_flight = self
            .max_flight
            .max(self.snd_max.since(self.snd_una) as usize);
        if self.timers[Timer::Rto].is_none() {
            self.timers[Timer::Rto] = Some(now + self.rtt.rto());
        }
        if next > seq {
            self.last_data_sent = now;
        }
        self.stats.bytes_out += len as u64;
        Transmit {
            repr,
            payload_offset: if len > 0 {
                seq.since(self.buf_seq) as usize
            } else {
                0
            },
            payload_len: len,
        }
    }

    /// RFC 6675 NextSeg rule 1 during SACK recovery: retransmit holes below the highest SACK.
    fn sack_retransmit(&mut self, now: Instant) -> Option<Transmit> {
        if !self.sack_enabled || !self.loss.in_recovery() {
            return None;
        }
        let (start, hole) = self.loss.next_hole(self.snd_una)?;
        let pipe = self.loss.pipe(self.snd_una, self.snd_max) as usize;
        let len = (hole as usize)
            .min(self.snd_mss)
            .min(self.data_end().since(start) as usize);
        if len == 0 || pipe + len > self.cc.window() {
            return None;
        }
        self.stats.retransmits += 1;
        let t = self.data_segment(now, start, len);
        self.loss.retransmitted_to(start + t.payload_len);
        Some(t)
    }

    /// New data at SND.NXT (or data again after a timeout), within the peer's window and
    /// the congestion window, with Nagle and sender-side SWS avoidance (RFC 9293 3.7.4, 3.8.6.2.1).
    fn new_data(&mut self, now: Instant) -> Option<Transmit> {
        let data_end = self.data_end();
        if self.snd_nxt > data_end {
            return None; // FIN already sent
        }
        let available = data_end.since(self.snd_nxt) as usize;
        let fin_pending = self.fin_queued;
        if available == 0 && !fin_pending {
            return None;
        }
        let wnd_end = self.snd_una + self.snd_wnd;
        let wnd_room = if wnd_end > self.snd_nxt {
            wnd_end.since(self.snd_nxt) as usize
        } else {
            0
        };
        let in_flight = if self.sack_enabled && self.loss.in_recovery() {
            self.loss.pipe(self.snd_una, self.snd_max) as usize
        } else {
            self.snd_nxt.since(self.snd_una) as usize
        };
        if in_flight == 0
            && self.snd_nxt == self.snd_max
            && now - self.last_data_sent > self.rtt.rto()
            && self.last_data_sent > Instant::ZERO
        {
            // RFC 5681 4.1: after an idle period longer than the RTO, restart from
            // RW = min(IW, cwnd).
            let iw = super::congestion::initial_window(self.snd_mss);
            if self.cc.window() > iw {
                self.cc.restart(iw);
            }
        }
        let cwnd_room = self.cc.window().saturating_sub(in_flight);
        let len = available.min(self.snd_mss).min(wnd_room).min(cwnd_room);

        if available > 0 && len == 0 {
            // Zero window with nothing in flight: start the persist timer.
            if self.snd_wnd == 0 && in_flight == 0 && self.timers[Timer::Persist].is_none() {
                self.timers[Timer::Persist] = Some(now + self.persist_interval());
            }
            return None;
        }
        let override_timer = std::mem::take(&mut self.sws_override);
        if len < self.snd_mss && len < available && !override_timer {
            // Sender SWS: do not send a small part of what is queued unless it is at least
            // half the largest window the peer offered; the override timer ends the wait.
            if len < (self.max_snd_wnd as usize / 2).max(1) {
                if in_flight == 0 && self.timers[Timer::Persist].is_none() {
                    self.timers[Timer::Persist] = Some(now + self.persist_interval());
                }
                return None;
            }
        }
        if len < self.snd_mss && len == available && len > 0 && !fin_pending && !self.cfg.nodelay {
            // Nagle (RFC 896 / RFC 9293 3.7.4), Minshall's variant as in Linux: hold a
            // small segment only while an earlier small segment is unacknowledged.
            if self.snd_sml > self.snd_una && in_flight > 0 {
                return None;
            }
        }
        if len == 0 && (!fin_pending || cwnd_room == 0 && in_flight > 0) {
            return None;
        }
        if self.snd_nxt < self.snd_max {
            self.stats.retransmits += 1;
        }
        let seq = self.snd_nxt;
        let t = self.data_segment(now, seq, len);
        self.snd_nxt = seq + t.payload_len + u32::from(t.repr.flags.fin);
        // Data sent past SACKed ranges after a timeout need not be resent.
        Some(t)
    }
}
