//! Per-connection settings, and the challenge-ACK budget the connections of a stack share.
use super::super::CongestionKind;
use super::super::time::Instant;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
