//! Timeouts (RFC 6298 retransmission, RFC 9293 3.8.6.1 persist, RFC 1122 4.2.3.6
//! keep-alive, delayed ACK, TIME-WAIT, FIN-WAIT-2).
use super::*;

impl Connection {
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
            if self.snd.wnd == 0 {
                // Zero-window probe (RFC 9293 3.8.6.1); keeps going while the peer answers,
                // gives up after max_retries unanswered ones (Linux tcp_retries2).
                self.probes.unanswered += 1;
                if self.probes.unanswered > self.cfg.max_retries {
                    self.give_up();
                    return;
                }
                self.pending.probe = true;
                self.stats.window_probes += 1;
                self.probes.persist_backoff = (self.probes.persist_backoff + 1).min(10);
                self.timers[Timer::Persist] = Some(now + self.persist_interval());
            } else {
                self.snd.sws_override = true;
            }
        }
        if self.timers.expired(Timer::Rto, now) {
            self.on_rto(now);
        }
    }

    pub(super) fn persist_interval(&self) -> Duration {
        (self.rtx.rtt.rto() * (1 << self.probes.persist_backoff))
            .clamp(self.cfg.min_rto, self.cfg.max_rto)
    }

    pub(super) fn on_keepalive(&mut self, now: Instant) {
        self.timers[Timer::Keepalive] = None;
        if !self.probes.keepalive || !matches!(self.state, State::Established | State::CloseWait) {
            return;
        }
        // Linux probes only an idle connection: nothing in flight or queued.
        if self.snd.max != self.snd.una || !self.snd.buf.is_empty() {
            self.timers[Timer::Keepalive] = Some(now + self.cfg.keepalive_idle);
            return;
        }
        let due = if self.probes.unanswered == 0 {
            self.probes.last_rx + self.cfg.keepalive_idle
        } else {
            now
        };
        if due > now {
            self.timers[Timer::Keepalive] = Some(due);
            return;
        }
        // RFC 1122 4.2.3.6: a probe is a segment with SEG.SEQ = SND.NXT-1 and no data.
        if self.probes.unanswered >= self.cfg.keepalive_count {
            self.give_up();
            return;
        }
        self.probes.unanswered += 1;
        self.pending.probe = true;
        self.stats.keepalive_probes += 1;
        self.timers[Timer::Keepalive] = Some(now + self.cfg.keepalive_interval);
    }

    pub(super) fn on_rto(&mut self, now: Instant) {
        self.stats.timeouts += 1;
        // Our SYN is unacknowledged (also after a close in SYN-RECEIVED): the timer is
        // the SYN's, whatever the state.
        let syn_unacked = self.snd.una == self.snd.iss;
        if self.snd.wnd == 0 && !syn_unacked {
            // The peer closed its window with data in flight: our retransmissions are
            // window probes, and the connection stays while they are answered (RFC 9293
            // 3.8.6.1, RFC 1122 4.2.2.17); unanswered ones are bounded like retries.
            self.probes.unanswered += 1;
            if self.probes.unanswered > self.cfg.max_retries {
                self.give_up();
                return;
            }
        } else {
            self.rtx.retries += 1;
        }
        let limit = if syn_unacked {
            self.cfg.max_syn_retries
        } else {
            self.cfg.max_retries
        };
        if self.rtx.retries > limit {
            self.give_up();
            return;
        }
        self.rtx.rtt.back_off();
        self.rtx.rtt_probe = None; // Karn: never time a retransmission
        match self.state {
            _ if syn_unacked => {
                self.pending.syn = true;
                self.snd.nxt = self.snd.iss;
            }
            _ => {
                // RFC 5681 3.1 / RFC 6298 5.4-5.6: go back to SND.UNA with a one-segment window.
                let flight = self.snd.max.since(self.snd.una) as usize;
                self.cong.cc.on_timeout(now, flight);
                self.snd.nxt = self.snd.una;
                self.cong.loss.on_timeout(self.snd.max);
                self.pending.fast_retransmit = false;
                if self.cfg.mtu_probing && self.rtx.retries == BLACK_HOLE_RETRIES {
                    // A path that drops big segments and filters the ICMP that would say
                    // so (RFC 4821 section 1, RFC 2923 2.1): like Linux's tcp_mtu_probing
                    // after tcp_retries1 timeouts, halve the segment size, to at most
                    // tcp_base_mss (1024).
                    let mss = (self.opts.peer_mss / 2).min(BASE_MSS);
                    self.path_mtu((mss + self.ip_overhead()) as u16);
                }
            }
        }
        self.timers[Timer::Rto] = Some(now + self.rtx.rtt.rto());
    }
}
