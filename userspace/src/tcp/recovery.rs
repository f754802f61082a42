//! Loss recovery: fast retransmit and fast recovery after three duplicate ACKs
//! (RFC 5681 3.2), NewReno's partial acknowledgments (RFC 6582) and, with SACK, the
//! retransmission of the holes the scoreboard shows (RFC 6675). The congestion
//! controller decides how far the window falls; this decides when and what to resend.
use super::congestion::CongestionControl;
use super::sack::Scoreboard;
use super::seq::SeqNum;
use super::time::Instant;
use std::time::Duration;

/// What recovery reads of the sender, and the congestion controller it steers.
pub(super) struct Sender<'a> {
    /// SND.UNA, after the ACK being processed.
    pub(super) snd_una: SeqNum,
    /// The highest sequence number sent.
    pub(super) snd_max: SeqNum,
    /// Payload per segment.
    pub(super) snd_mss: usize,
    /// SACK was negotiated.
    pub(super) sack: bool,
    /// The connection's congestion controller.
    pub(super) cc: &'a mut dyn CongestionControl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    None,
    /// Fast recovery until SND.UNA reaches `recover` (RFC 6582).
    Fast {
        recover: SeqNum,
    },
}

/// The loss recovery state of one connection.
#[derive(Debug)]
pub(super) struct LossRecovery {
    /// Duplicate ACKs in a row (RFC 5681 section 2).
    pub(super) dupacks: u32,
    pub(super) phase: Phase,
    /// RFC 6582 "recover": no new fast retransmit until SND.UNA passes it.
    pub(super) recover_guard: SeqNum,
    /// Where the next retransmission in recovery starts.
    pub(super) rtx_next: SeqNum,
    /// What the peer's SACK blocks say it holds (RFC 2018, RFC 6675).
    pub(super) scoreboard: Scoreboard,
}

impl LossRecovery {
    /// No recovery yet, for a connection whose initial sequence number is `iss`.
    pub(super) fn new(iss: SeqNum) -> Self {
        LossRecovery {
            dupacks: 0,
            phase: Phase::None,
            recover_guard: iss,
            rtx_next: iss,
            scoreboard: Scoreboard::default(),
        }
    }

    /// True during fast recovery.
    pub(super) fn in_recovery(&self) -> bool {
        self.phase != Phase::None
    }

    /// New data up to `ack` (SND.UNA already moved there) was acknowledged, `acked`
    /// bytes. Returns true when NewReno must retransmit the next unacknowledged segment.
    pub(super) fn on_new_ack(
        &mut self,
        now: Instant,
        ack: SeqNum,
        acked: usize,
        cwnd_limited: bool,
        srtt: Option<Duration>,
        s: Sender<'_>,
    ) -> bool {
        self.scoreboard.advance(ack);
        self.dupacks = 0;
        match self.phase {
            Phase::Fast { recover } if ack >= recover => {
                // Full acknowledgment (RFC 6582 3.2 step 3): deflate to ssthresh.
                self.phase = Phase::None;
                let ssthresh = s.cc.ssthresh();
                let flight = s.snd_max.since(s.snd_una) as usize;
                s.cc.set_window(ssthresh.min(flight + s.snd_mss).max(s.snd_mss));
            }
            Phase::Fast { .. } => {
                // Partial acknowledgment (RFC 6582 3.2 step 4).
                self.rtx_next = self.rtx_next.max(ack);
                if !s.sack {
                    let cwnd = s.cc.window();
                    s.cc.set_window(cwnd.saturating_sub(acked) + s.snd_mss);
                    return true;
                }
            }
            Phase::None if cwnd_limited => s.cc.on_ack(now, acked, srtt),
            Phase::None => {}
        }
        false
    }

    /// A duplicate ACK (RFC 5681 section 2). Returns true when it starts fast
    /// retransmit: the first unacknowledged segment is to be sent again.
    pub(super) fn on_dup_ack(&mut self, now: Instant, s: Sender<'_>) -> bool {
        self.dupacks += 1;
        let sack_loss = s.sack && self.scoreboard.sacked_bytes() as usize >= 3 * s.snd_mss;
        match self.phase {
            Phase::None if (self.dupacks >= 3 || sack_loss) && s.snd_una >= self.recover_guard => {
                // Fast retransmit (RFC 5681 3.2 steps 2-4, RFC 6582 3.2 step 2).
                let flight = s.snd_max.since(s.snd_una) as usize;
                let ssthresh = s.cc.on_loss(now, flight);
                self.phase = Phase::Fast { recover: s.snd_max };
                self.recover_guard = s.snd_max;
                self.rtx_next = s.snd_una;
                if !s.sack {
                    s.cc.set_window(ssthresh + 3 * s.snd_mss);
                }
                return true;
            }
            Phase::Fast { .. } if !s.sack => {
                // Inflate by one segment per further duplicate (RFC 5681 3.2 step 5).
                let cwnd = s.cc.window();
                s.cc.set_window(cwnd + s.snd_mss);
            }
            _ => {}
        }
        false
    }

    /// A retransmission timeout ends recovery; `snd_max` is the highest sequence sent.
    pub(super) fn on_timeout(&mut self, snd_max: SeqNum) {
        self.phase = Phase::None;
        self.recover_guard = snd_max;
        self.dupacks = 0;
        // RFC 2018 section 8: the receiver may have reneged; start over.
        self.scoreboard.clear();
    }

    /// RFC 6675 "pipe": the bytes thought to be in the network during SACK recovery.
    pub(super) fn pipe(&self, snd_una: SeqNum, snd_max: SeqNum) -> u32 {
        self.scoreboard.pipe(snd_una, snd_max, self.rtx_next)
    }

    /// RFC 6675 NextSeg rule 1: the next hole below the highest SACK at or after what
    /// was already retransmitted, as (start, length of the hole).
    pub(super) fn next_hole(&self, snd_una: SeqNum) -> Option<(SeqNum, u32)> {
        self.scoreboard.next_hole(self.rtx_next.max(snd_una))
    }

    /// A hole was retransmitted up to `end`.
    pub(super) fn retransmitted_to(&mut self, end: SeqNum) {
        self.rtx_next = self.rtx_next.max(end);
    }
}
