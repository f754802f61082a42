//! Segment arrival (RFC 9293 3.10.7): acceptability, RST, SYN, ACK, data and FIN.
use super::*;

impl Connection {
    /// An ICMP destination unreachable quoting one of our segments (RFC 1122 3.2.2.1,
    /// RFC 5927): `seq` is the quoted sequence number, `mtu` the next-hop MTU of a
    /// "fragmentation needed" (code 4).
    pub fn handle_icmp_unreachable(&mut self, code: u8, seq: u32, mtu: u16) {
        // RFC 5927 4.1: only a message quoting data in flight, SND.UNA <= seq < SND.MAX,
        // can be about this connection; a blind attacker has to guess it.
        let seq = SeqNum(seq);
        if self.state == State::Closed || !seq.in_range(self.snd.una, self.snd.max) {
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

    /// An ICMPv6 packet too big quoting one of our segments (RFC 8201 section 4,
    /// validated as RFC 5927 4.1 says): lower the segment size to the reported MTU, never
    /// below the IPv6 minimum of 1280.
    pub fn handle_packet_too_big(&mut self, seq: u32, mtu: u32) {
        let seq = SeqNum(seq);
        if self.state == State::Closed || !seq.in_range(self.snd.una, self.snd.max) {
            return;
        }
        self.path_mtu(mtu.clamp(1280, u32::from(u16::MAX)) as u16);
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

    /// The peer's SYN (or SYN-ACK) synchronizes the receive sequence space at its IRS
    /// (RFC 9293 3.10.7.2-3), sets the options it negotiates and its send window.
    pub(super) fn take_peer_syn(&mut self, now: Instant, syn: &TcpRepr<'_>) {
        self.rcv.irs = syn.seq;
        self.rcv.nxt = self.rcv.irs + 1u32;
        self.rcv.adv = self.rcv.nxt;
        self.negotiate(&syn.options);
        self.opts.ts_recent_stamp = now;
        self.probes.last_rx = now;
        // The window of a SYN is never scaled (RFC 7323 section 2.2).
        self.snd.wnd = u32::from(syn.window);
        self.snd.max_wnd = self.snd.wnd;
        self.snd.wl1 = self.rcv.irs;
    }

    pub(super) fn handle_syn_sent(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        let ack = seg.ack.unwrap_or_default();
        // RFC 9293 3.10.7.3, first: check the ACK.
        let ack_ok = seg.flags.ack && ack > self.snd.iss && ack <= self.snd.max;
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
        self.take_peer_syn(now, seg);
        self.snd.wl2 = ack;
        if ack_ok {
            // The echoed timestamp times the SYN the SYN-ACK answers, even after a
            // retransmission (RFC 7323 4.1, as Linux); without it, Karn: only a SYN
            // sent once is timed.
            if !self.sample_rtt_from_echo(now, seg)
                && self.rtx.retries == 0
                && let Some((_, sent)) = self.rtx.rtt_probe.take()
            {
                self.rtx.rtt.sample(now - sent);
            }
            self.rtx.rtt_probe = None;
            self.snd.una = ack;
            self.snd.nxt = self.snd.nxt.max(ack);
            self.rtx.retries = 0;
            self.rtx.rtt.reset_backoff();
            self.timers[Timer::Rto] = None;
            self.state = State::Established;
            self.pending.ack_now = true;
            self.on_established();
        } else {
            // Simultaneous open (RFC 9293 figure 7): answer with SYN-ACK.
            self.state = State::SynReceived;
            self.pending.syn = true;
            self.snd.nxt = self.snd.iss;
        }
    }

    pub(super) fn handle_synchronized(&mut self, now: Instant, seg: &TcpRepr<'_>) {
        let seq = seg.seq;
        let seg_len = seg.seq_len();
        let rcv_wnd = if self.rcv.adv > self.rcv.nxt {
            self.rcv.adv.since(self.rcv.nxt)
        } else {
            0
        };

        // PAWS (RFC 7323 section 5.3); after 24 days without a segment TS.Recent is no
        // longer valid (section 5.5) and the segment passes.
        if self.opts.ts_enabled
            && !seg.flags.rst
            && let Some((tsval, _)) = seg.options.timestamps
            && (tsval.wrapping_sub(self.opts.ts_recent) as i32) < 0
            && now - self.opts.ts_recent_stamp <= PAWS_IDLE
        {
            self.stats.paws_drops += 1;
            self.pending.ack_now = true;
            return;
        }

        if self.state == State::SynReceived
            && seg.flags.syn
            && !seg.flags.rst
            && seq == self.rcv.irs
        {
            if !seg.flags.ack {
                // The peer retransmitted its SYN: our SYN-ACK was lost, send it again
                // (Linux's tcp_check_req); a bare ACK is ignored in SYN-SENT.
                self.pending.syn = true;
                self.snd.nxt = self.snd.iss;
                return;
            }
            // Simultaneous open (RFC 9293 figure 8, line 6): the peer's SYN-ACK
            // acknowledges our SYN and establishes; nothing more is sent.
            let window = u32::from(seg.window);
            if self.process_ack(now, seg) && self.state == State::Established {
                // The window of a SYN is never scaled (RFC 7323 section 2.2).
                self.snd.wnd = window;
                self.snd.max_wnd = self.snd.max_wnd.max(window);
            }
            return;
        }

        // Acceptability test (RFC 9293 3.10.7.4, first).
        let in_window = |s: SeqNum| s.in_range(self.rcv.nxt, self.rcv.nxt + rcv_wnd);
        let acceptable = match (seg_len, rcv_wnd) {
            (0, 0) => seq == self.rcv.nxt,
            (0, _) => in_window(seq),
            (_, 0) => false,
            (_, _) => in_window(seq) || in_window(seq + (seg_len - 1)),
        };

        // RST (RFC 5961 section 3.2): exact match resets, in-window gets a challenge ACK.
        if seg.flags.rst {
            if seq == self.rcv.nxt {
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
            if self.state == State::SynReceived && seq == self.rcv.irs {
                self.pending.syn = true; // our SYN-ACK was lost
                self.snd.nxt = self.snd.iss;
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
        if self.opts.ts_enabled
            && let Some((tsval, _)) = seg.options.timestamps
            && seq <= self.acks.last_sent
        {
            self.opts.ts_recent = tsval;
            self.opts.ts_recent_stamp = now;
        }

        // Segment text (RFC 9293 3.10.7.4, seventh).
        if !seg.payload.is_empty() {
            self.process_data(now, seq, seg.payload);
        }

        if seg.flags.fin {
            // A FIN already in sequence stays received; a repeated one changes nothing.
            if self.rcv.fin != PeerFin::Received {
                self.rcv.fin = PeerFin::Pending(seq + seg.payload.len());
            }
        }
        self.check_fin(now);
    }

    /// The ACK field (RFC 9293 3.10.7.4, fifth). Returns false if the segment is dropped.
    pub(super) fn process_ack(&mut self, now: Instant, seg: &TcpRepr<'_>) -> bool {
        let ack = seg.ack.unwrap_or_default();
        let seq = seg.seq;
        let opening = self.state == State::SynReceived;
        if opening {
            if ack > self.snd.una && ack <= self.snd.max {
                self.state = State::Established;
                // The window of the ACK completing the handshake is scaled.
                self.snd.wnd = u32::from(seg.window) << self.opts.snd_wscale;
                self.snd.max_wnd = self.snd.max_wnd.max(self.snd.wnd);
                self.snd.wl1 = seq;
                self.snd.wl2 = ack;
            } else {
                self.pending.rst = Some(self.rst_repr(ack, None));
                return false;
            }
        }
        // RFC 5961 5.2: an ACK for data never sent is dropped with an ACK; one far in the
        // past gets a challenge ACK.
        if ack > self.snd.max {
            self.pending.ack_now = true;
            return false;
        }
        if ack < self.snd.una - self.snd.max_wnd.max(1) {
            self.challenge_ack(now);
            return false;
        }
        // The peer is alive: it answered whatever probe we sent (RFC 9293 3.8.6.1).
        self.probes.last_rx = now;
        self.probes.unanswered = 0;

        if self.opts.sack_enabled {
            for &(l, r) in seg.options.sack_blocks() {
                self.cong
                    .loss
                    .scoreboard
                    .add(SeqNum(l), SeqNum(r), self.snd.una, self.snd.max);
            }
        }

        let window = u32::from(seg.window) << self.opts.snd_wscale;
        if ack > self.snd.una {
            self.on_new_ack(now, ack, seg);
            if opening {
                self.on_established();
            }
        } else if ack == self.snd.una
            && seg.payload.is_empty()
            && !seg.flags.fin
            && window == self.snd.wnd
            && self.snd.max > self.snd.una
        {
            // RFC 5681 section 2 "duplicate acknowledgment".
            self.stats.dup_acks += 1;
            self.on_dup_ack(now);
        }

        // Window update (RFC 9293 3.10.7.4): only from a segment newer than the last one used.
        if self.snd.wl1 < seq || (self.snd.wl1 == seq && self.snd.wl2 <= ack) {
            self.snd.wnd = window;
            self.snd.max_wnd = self.snd.max_wnd.max(window);
            self.snd.wl1 = seq;
            self.snd.wl2 = ack;
            if self.snd.wnd > 0 {
                self.timers[Timer::Persist] = None;
                self.probes.persist_backoff = 0;
            }
        }

        // FIN acknowledged?
        let fin_acked = self.snd.fin_queued && self.snd.una == self.data_end() + 1u32;
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

    /// An RTT sample from the timestamp the peer echoed (RFC 7323 4.1), if timestamps
    /// are on and the echo is one of ours; whether there was one.
    fn sample_rtt_from_echo(&mut self, now: Instant, seg: &TcpRepr<'_>) -> bool {
        if !self.opts.ts_enabled {
            return false;
        }
        let Some((_, ecr)) = seg.options.timestamps else {
            return false;
        };
        let elapsed = self.ts_now(now).wrapping_sub(ecr);
        if ecr == 0 || elapsed >= 60_000 {
            return false;
        }
        self.rtx
            .rtt
            .sample(Duration::from_millis(u64::from(elapsed)).max(Duration::from_micros(100)));
        true
    }

    /// The handshake completed (SYN-SENT or SYN-RECEIVED to ESTABLISHED).
    pub(super) fn on_established(&mut self) {
        // RFC 6298 5.7: after a retransmitted SYN or SYN-ACK and with no RTT sample,
        // the RTO is 3 s when data transfer begins.
        if self.rtx.syn_retransmitted && self.rtx.rtt.srtt().is_none() {
            self.rtx.rtt.restart(RTO_AFTER_SYN_LOSS);
        }
        self.arm_keepalive();
    }

    pub(super) fn on_new_ack(&mut self, now: Instant, ack: SeqNum, seg: &TcpRepr<'_>) {
        let acked = ack.since(self.snd.una) as usize;
        // RTT: timestamps give a sample from every ACK (RFC 7323 4.1), otherwise one timed
        // segment per window, never a retransmitted one (Karn).
        let sampled = self.sample_rtt_from_echo(now, seg);
        if let Some((timed, sent)) = self.rtx.rtt_probe
            && ack >= timed
        {
            if !sampled {
                self.rtx.rtt.sample(now - sent);
            }
            self.rtx.rtt_probe = None;
        }

        // RFC 7661 (as Linux's tcp_is_cwnd_limited): grow cwnd only if the sender used it.
        // In slow start, a flight of at least half of cwnd counts; in congestion avoidance
        // the flight must have filled cwnd to within a segment.
        let cwnd = self.cong.cc.window();
        let cwnd_limited = if cwnd < self.cong.cc.ssthresh() {
            2 * self.cong.max_flight > cwnd
        } else {
            self.cong.max_flight + self.opts.snd_mss >= cwnd
        };
        if ack >= self.cong.max_flight_end {
            // A new round: measure the flight again from what is still outstanding.
            self.cong.max_flight = self.snd.max.since(ack) as usize;
            self.cong.max_flight_end = self.snd.max;
        }

        // Drop acknowledged bytes from the send buffer.
        let data_acked_to = ack.min(self.data_end());
        if data_acked_to > self.snd.buf_seq {
            let acked = data_acked_to.since(self.snd.buf_seq);
            self.stats.bytes_acked += u64::from(acked);
            self.snd.buf.consume(acked as usize);
            self.snd.buf_seq = data_acked_to;
        }
        self.snd.una = ack;
        if self.snd.nxt < ack {
            self.snd.nxt = ack;
        }
        self.rtx.retries = 0;
        self.rtx.rtt.reset_backoff();
        let srtt = self.rtx.rtt.srtt();
        let (loss, sender) = self.recovery_parts();
        if loss.on_new_ack(now, ack, acked, cwnd_limited, srtt, sender) {
            self.pending.fast_retransmit = true;
        }

        // RFC 6298 5.2/5.3: stop the timer when all is acknowledged, else restart it.
        self.timers[Timer::Rto] = if self.snd.max > self.snd.una {
            Some(now + self.rtx.rtt.rto())
        } else {
            None
        };
    }

    /// The loss recovery state, and the sender fields and congestion controller it uses.
    pub(super) fn recovery_parts(&mut self) -> (&mut LossRecovery, Sender<'_>) {
        let sender = Sender {
            snd_una: self.snd.una,
            snd_max: self.snd.max,
            snd_mss: self.opts.snd_mss,
            sack: self.opts.sack_enabled,
            cc: self.cong.cc.as_mut(),
        };
        (&mut self.cong.loss, sender)
    }

    pub(super) fn on_dup_ack(&mut self, now: Instant) {
        let (loss, sender) = self.recovery_parts();
        if loss.on_dup_ack(now, sender) {
            self.pending.fast_retransmit = true;
            self.stats.fast_retransmits += 1;
        }
    }

    pub(super) fn process_data(&mut self, now: Instant, seq: SeqNum, mut payload: &[u8]) {
        if !matches!(
            self.state,
            State::Established | State::FinWait1 | State::FinWait2
        ) {
            return;
        }
        let mut offset = 0usize;
        if seq < self.rcv.nxt {
            let skip = self.rcv.nxt.since(seq) as usize;
            if skip >= payload.len() {
                self.pending.ack_now = true;
                return;
            }
            payload = &payload[skip..];
        } else {
            offset = seq.since(self.rcv.nxt) as usize;
        }
        let had_gap = self.rcv.buf.has_out_of_order();
        let ins = self.rcv.buf.insert(offset, payload);
        self.rcv.nxt = self.rcv.nxt + ins.advanced;
        self.stats.bytes_received += ins.advanced as u64;
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
            self.acks.rcv_mss = self
                .acks
                .rcv_mss
                .max(payload.len())
                .min(usize::from(self.cfg.mss));
            // Smaller segments are acknowledged every second one too, but those ACKs
            // coalesce into one per batch.
            self.acks.unacked_bytes += ins.advanced;
            self.acks.segs_since += 1;
            if self.acks.unacked_bytes >= 2 * self.acks.rcv_mss {
                self.acks.unacked_bytes = 0;
                self.acks.segs_since = 0;
                self.owe_ack(self.rcv.nxt);
            } else if self.acks.segs_since >= 2 {
                self.pending.ack_now = true;
            } else if self.timers[Timer::DelayedAck].is_none() {
                self.timers[Timer::DelayedAck] = Some(now + self.cfg.delayed_ack);
            }
        }
    }

    pub(super) fn owe_ack(&mut self, ack: SeqNum) {
        if self.acks.owed_len == MAX_OWED_ACKS {
            // Coalesce only past the bound: the last point moves up.
            self.acks.owed_len -= 1;
        }
        self.acks.owed[self.acks.owed_len] = ack;
        self.acks.owed_len += 1;
    }

    pub(super) fn check_fin(&mut self, now: Instant) {
        let PeerFin::Pending(fin) = self.rcv.fin else {
            return;
        };
        if self.rcv.nxt != fin {
            return;
        }
        self.rcv.fin = PeerFin::Received;
        self.rcv.nxt = self.rcv.nxt + 1u32;
        self.pending.ack_now = true;
        let our_fin_acked = self.snd.fin_queued && self.snd.una == self.data_end() + 1u32;
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
    pub(super) fn challenge_ack(&mut self, now: Instant) {
        if self
            .acks
            .last_challenge
            .is_some_and(|t| now - t < CHALLENGE_ACK_SPACING)
            || !self
                .cfg
                .challenge_acks
                .take(now, self.cfg.challenge_ack_limit)
        {
            return;
        }
        self.acks.last_challenge = Some(now);
        self.stats.challenge_acks += 1;
        self.pending.challenge_ack = true;
    }

    pub(super) fn enter_time_wait(&mut self, now: Instant) {
        self.state = State::TimeWait;
        self.timers.stop_all();
        self.timers[Timer::TimeWait] = Some(now + self.cfg.time_wait);
        self.release_buffers();
    }

    pub(super) fn enter_closed(&mut self, error: Option<TcpError>) {
        self.state = State::Closed;
        if self.error.is_none() {
            self.error = error;
        }
        self.timers.stop_all();
        self.pending.ack_now = false;
        self.pending.dup_acks = 0;
        self.acks.owed_len = 0;
    }

    /// RFC 1122 4.2.3.5: give up with an error to the application, and a RST at the
    /// highest sequence number sent (RFC 9293 3.10.7.4), as Linux's tcp_write_err.
    pub(super) fn give_up(&mut self) {
        if self.state != State::SynSent {
            self.pending.rst = Some(self.rst_repr(self.snd.max, None));
        }
        // RFC 5927 5.2: a soft ICMP error explains the timeout better.
        let error = self.soft_error.unwrap_or(TcpError::TimedOut);
        self.enter_closed(Some(error));
    }
}
