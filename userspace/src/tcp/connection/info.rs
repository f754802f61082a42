//! A snapshot of one connection's TCB for its user: what Linux's `TCP_INFO` socket
//! option reports (`struct tcp_info`), in the stack's own units.
use super::{Connection, ConnectionStats, State};
use std::time::Duration;

/// Where loss recovery stands (Linux's `tcpi_ca_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryPhase {
    /// No loss being repaired.
    Open,
    /// Fast recovery after duplicate ACKs (RFC 6582, RFC 6675).
    Recovery,
    /// The retransmission timer fired and the oldest segment is not yet acknowledged
    /// again (RFC 5681 3.1, RFC 6298 5).
    Loss,
}

/// One connection as `getsockopt(TCP_INFO)` shows it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The RFC 9293 state.
    pub state: State,
    /// Where loss recovery stands.
    pub recovery: RecoveryPhase,
    /// Timeouts in a row of the oldest unacknowledged segment.
    pub retries: u32,
    /// The retransmission timeout now, back-off included (RFC 6298).
    pub rto: Duration,
    /// Smoothed RTT (RFC 6298 2), zero before the first sample.
    pub srtt: Duration,
    /// Its variation, RTTVAR.
    pub rttvar: Duration,
    /// Payload per full-sized segment we send.
    pub send_mss: usize,
    /// The largest segment the peer has sent (Linux's `rcv_mss` estimate).
    pub receive_mss: usize,
    /// The MSS our SYN advertised (RFC 9293 3.7.1).
    pub advertised_mss: usize,
    /// The congestion window in bytes (RFC 5681).
    pub cwnd: usize,
    /// The slow-start threshold in bytes.
    pub ssthresh: usize,
    /// Bytes sent and not yet acknowledged.
    pub unacked: usize,
    /// Of those, the ones the peer SACKed (RFC 2018).
    pub sacked: usize,
    /// Bytes the application wrote that were not sent yet.
    pub not_sent: usize,
    /// The peer's window, scaled (SND.WND).
    pub send_window: u32,
    /// The window we advertised last, from RCV.NXT.
    pub receive_window: u32,
    /// RFC 7323 window scale shifts (the peer's, ours), `None` when not negotiated.
    pub window_scale: Option<(u8, u8)>,
    /// RFC 7323 timestamps are on.
    pub timestamps: bool,
    /// RFC 2018 SACK is on.
    pub sack: bool,
    /// The congestion controller's name (`cubic`, `newreno`).
    pub congestion: &'static str,
    /// The peer stopped answering probes this many times (zero-window or keep-alive).
    pub unanswered_probes: u32,
    /// The connection's counters.
    pub stats: ConnectionStats,
}

impl Connection {
    /// A snapshot of the TCB (`TCP_INFO`).
    pub fn info(&self) -> ConnectionInfo {
        let rtt = self.rtx.rtt.parts();
        let recovery = if self.rtx.retries > 0 {
            RecoveryPhase::Loss
        } else if self.cong.loss.in_recovery() {
            RecoveryPhase::Recovery
        } else {
            RecoveryPhase::Open
        };
        let sent_end = self.snd.max.max(self.snd.nxt);
        let scaled = self.opts.snd_wscale != 0 || self.opts.rcv_wscale != 0;
        ConnectionInfo {
            state: self.state,
            recovery,
            retries: self.rtx.retries,
            rto: self.rtx.rtt.rto(),
            srtt: rtt.srtt.unwrap_or_default(),
            rttvar: rtt.rttvar,
            send_mss: self.opts.snd_mss,
            receive_mss: self.acks.rcv_mss,
            advertised_mss: usize::from(self.cfg.mss),
            cwnd: self.cong.cc.window(),
            ssthresh: self.cong.cc.ssthresh(),
            unacked: sent_end.since(self.snd.una) as usize,
            sacked: self.cong.loss.scoreboard.sacked_bytes() as usize,
            // Our FIN takes SND.NXT past the data's end.
            not_sent: self
                .data_end()
                .since(sent_end.max(self.snd.buf_seq).min(self.data_end()))
                as usize,
            send_window: self.snd.wnd,
            receive_window: self.rcv.adv.max(self.rcv.nxt).since(self.rcv.nxt),
            window_scale: scaled.then_some((self.opts.snd_wscale, self.opts.rcv_wscale)),
            timestamps: self.opts.ts_enabled,
            sack: self.opts.sack_enabled,
            congestion: self.cong.cc.name(),
            unanswered_probes: self.probes.unanswered,
            stats: self.stats.clone(),
        }
    }
}
