//! Segments to send (RFC 9293 3.8.6, 3.7.4; RFC 5681, RFC 6675): what goes out next,
//! and the headers and options it carries.
use super::*;

impl Connection {
    pub(super) fn data_end(&self) -> SeqNum {
        self.snd.buf_seq + self.snd.buf.len()
    }

    pub(super) fn ts_now(&self, now: Instant) -> u32 {
        (now.millis() as u32).wrapping_add(self.opts.ts_offset)
    }

    /// Copies the payload of a [`Transmit`] into the frame.
    pub fn copy_payload(&self, offset: usize, dst: &mut [u8]) {
        self.snd.buf.copy_out(offset, dst);
    }

    pub(super) fn rst_repr(&self, seq: SeqNum, ack: Option<SeqNum>) -> TcpRepr<'static> {
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
    pub(super) fn advertise_window(&mut self) -> u16 {
        let (wnd, edge) = self.advertised_edge();
        self.rcv.adv = self.rcv.adv.max(edge);
        wnd
    }

    /// The window field the next ACK would carry, and the right edge it stands for.
    pub(super) fn advertised_edge(&self) -> (u16, SeqNum) {
        let free = self.rcv.buf.window();
        let new_edge = self.rcv.nxt + free;
        let step = (self.rcv.buf.capacity() / 2).min(usize::from(self.cfg.mss));
        let edge = if new_edge > self.rcv.adv && new_edge.since(self.rcv.adv) as usize >= step {
            new_edge
        } else {
            self.rcv.adv.max(self.rcv.nxt)
        };
        let wnd = (edge.since(self.rcv.nxt) >> self.opts.rcv_wscale).min(65535);
        (wnd as u16, self.rcv.nxt + (wnd << self.opts.rcv_wscale))
    }

    pub(super) fn base_repr(
        &mut self,
        now: Instant,
        seq: SeqNum,
        flags: TcpFlags,
    ) -> TcpRepr<'static> {
        let mut options = TcpOptions::default();
        if self.opts.ts_enabled {
            options.timestamps = Some((self.ts_now(now), self.opts.ts_recent));
        }
        // SACK blocks never ride on a SYN: its own options already take the space.
        if self.opts.sack_enabled && !flags.syn && self.rcv.buf.has_out_of_order() {
            let max = if self.opts.ts_enabled {
                3
            } else {
                MAX_SACK_BLOCKS
            };
            let mut ranges = [(0usize, 0usize); MAX_SACK_BLOCKS];
            let n = self.rcv.buf.sack_ranges(&mut ranges[..max]);
            for (i, &(s, e)) in ranges[..n].iter().enumerate() {
                options.sack_blocks[i] = ((self.rcv.nxt + s).0, (self.rcv.nxt + e).0);
            }
            options.sack_count = n as u8;
        }
        let window = if flags.syn {
            // Windows in SYN segments are not scaled (RFC 7323 2.2).
            let window = self.rcv.buf.window().min(65535);
            self.rcv.adv = self.rcv.adv.max(self.rcv.nxt + window);
            window as u16
        } else {
            self.advertise_window()
        };
        if flags.ack {
            self.acks.last_sent = self.rcv.nxt;
            self.pending.ack_now = false;
            self.acks.unacked_bytes = 0;
            self.acks.segs_since = 0;
            self.timers[Timer::DelayedAck] = None;
            self.pending.window_update = false;
        }
        self.stats.segments_out += 1;
        TcpRepr {
            src_port: self.local.port(),
            dst_port: self.remote.port(),
            seq,
            ack: flags.ack.then_some(self.rcv.nxt),
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
            _ if self.pending.syn && self.snd.una == self.snd.iss => {
                return Some(self.syn_segment(now));
            }
            State::SynSent => return None,
            _ => {}
        }
        if self.pending.challenge_ack {
            self.pending.challenge_ack = false;
            let repr = self.base_repr(now, self.snd.max, TcpFlags::ACK);
            return Some(Transmit {
                repr,
                payload_offset: 0,
                payload_len: 0,
            });
        }
        if let Some(t) = self.owed_ack(now) {
            return Some(t);
        }
        if self.snd.una == self.snd.iss {
            // Nothing but ACKs until the peer acknowledges our SYN (a close in
            // SYN-RECEIVED queues the FIN until then, RFC 9293 3.10.4).
            return self.pure_ack(now);
        }
        if self.pending.fast_retransmit {
            self.pending.fast_retransmit = false;
            let len = self.opts.snd_mss.min(self.snd.buf.len());
            // Only while something is unacknowledged: data, or a FIN not yet acked.
            if self.snd.una < self.snd.max && (len > 0 || self.snd.una == self.data_end()) {
                self.stats.retransmits += 1;
                let t = self.data_segment(now, self.snd.una, len);
                // RFC 6675 5 step 4.1: the retransmitted segment counts as sent, so
                // NextSeg does not pick the same hole again.
                self.cong
                    .loss
                    .retransmitted_to(self.snd.una + t.payload_len);
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
            let repr = self.base_repr(now, self.snd.una - 1u32, TcpFlags::ACK);
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
    pub(super) fn owed_ack(&mut self, now: Instant) -> Option<Transmit> {
        if self.acks.owed_len == 0 {
            return None;
        }
        let ack = self.acks.owed[0];
        self.acks.owed.copy_within(1..self.acks.owed_len, 0);
        self.acks.owed_len -= 1;
        if ack == self.rcv.nxt || ack <= self.acks.last_sent {
            // The latest point is the ordinary ACK.
            self.pending.ack_now |= ack == self.rcv.nxt;
            return self.owed_ack(now);
        }
        // Bytes after this point are still unacknowledged: keep the delayed-ACK state.
        let kept = (
            self.pending.ack_now,
            self.pending.window_update,
            self.timers[Timer::DelayedAck],
            self.acks.unacked_bytes,
            self.acks.segs_since,
        );
        let mut repr = self.base_repr(now, self.snd.max, TcpFlags::ACK);
        (
            self.pending.ack_now,
            self.pending.window_update,
            self.timers[Timer::DelayedAck],
            self.acks.unacked_bytes,
            self.acks.segs_since,
        ) = kept;
        let edge = self.rcv.nxt + (u32::from(repr.window) << self.opts.rcv_wscale);
        repr.ack = Some(ack);
        repr.window = (edge.since(ack) >> self.opts.rcv_wscale).min(65535) as u16;
        self.acks.last_sent = ack;
        Some(Transmit {
            repr,
            payload_offset: 0,
            payload_len: 0,
        })
    }

    pub(super) fn pure_ack(&mut self, now: Instant) -> Option<Transmit> {
        if self.pending.dup_acks > 0 {
            self.pending.dup_acks -= 1;
            self.pending.ack_now = true;
        }
        if !self.pending.ack_now
            && self.pending.window_update
            && self.advertised_edge().1 <= self.rcv.adv
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
        let repr = self.base_repr(now, self.snd.max, TcpFlags::ACK);
        Some(Transmit {
            repr,
            payload_offset: 0,
            payload_len: 0,
        })
    }

    pub(super) fn syn_segment(&mut self, now: Instant) -> Transmit {
        self.pending.syn = false;
        let flags = if self.state == State::SynSent {
            TcpFlags::SYN
        } else {
            TcpFlags::SYN_ACK
        };
        let mut repr = self.base_repr(now, self.snd.iss, flags);
        let offered = self.state == State::SynSent;
        repr.options.mss = Some(self.cfg.mss);
        // In a SYN-ACK, options are only echoed if the peer offered them (RFC 7323, RFC 2018).
        if self.cfg.window_scaling
            && (offered || self.opts.snd_wscale > 0 || self.opts.rcv_wscale > 0)
        {
            repr.options.window_scale = Some(self.opts.rcv_wscale);
        }
        if !(self.cfg.timestamps && (offered || self.opts.ts_enabled)) {
            repr.options.timestamps = None;
        } else if offered {
            repr.options.timestamps = Some((self.ts_now(now), 0));
        }
        repr.options.sack_permitted = self.cfg.sack && (offered || self.opts.sack_enabled);
        if self.snd.max > self.snd.iss {
            self.stats.retransmits += 1;
            self.rtx.syn_retransmitted = true;
        } else {
            self.rtx.rtt_probe = Some((self.snd.iss + 1u32, now));
        }
        self.snd.nxt = self.snd.iss + 1u32;
        self.snd.max = self.snd.max.max(self.snd.nxt);
        if self.timers[Timer::Rto].is_none() {
            self.timers[Timer::Rto] = Some(now + self.rtx.rtt.rto());
        }
        Transmit {
            repr,
            payload_offset: 0,
            payload_len: 0,
        }
    }

    /// A segment carrying up to `max_len` bytes from `seq` (and FIN if it reaches the end
    /// after close). Options (SACK blocks) shrink the payload so the segment fits the MSS.
    pub(super) fn data_segment(&mut self, now: Instant, seq: SeqNum, max_len: usize) -> Transmit {
        let mut repr = self.base_repr(now, seq, TcpFlags::ACK);
        let len = max_len.min(
            self.opts
                .peer_mss
                .saturating_sub(repr.options.encoded_len()),
        );
        let end = seq + len;
        let fin = self.snd.fin_queued && end == self.data_end();
        repr.flags.fin = fin;
        repr.flags.psh = len > 0 && end == self.data_end();
        if len < self.opts.snd_mss {
            self.snd.sml = end;
        }
        let next = end + u32::from(fin);
        if seq < self.snd.max {
            // Karn: a retransmission invalidates the timed segment it covers.
            if self.rtx.rtt_probe.is_some_and(|(t, _)| t > seq) {
                self.rtx.rtt_probe = None;
            }
        } else if len > 0 && self.rtx.rtt_probe.is_none() && !self.opts.ts_enabled {
            self.rtx.rtt_probe = Some((end, now));
        }
        self.snd.max = self.snd.max.max(next);
        self.cong.max_flight = self
            .cong
            .max_flight
            .max(self.snd.max.since(self.snd.una) as usize);
        if self.timers[Timer::Rto].is_none() {
            self.timers[Timer::Rto] = Some(now + self.rtx.rtt.rto());
        }
        if next > seq {
            self.cong.last_data_sent = now;
        }
        self.stats.bytes_out += len as u64;
        Transmit {
            repr,
            payload_offset: if len > 0 {
                seq.since(self.snd.buf_seq) as usize
            } else {
                0
            },
            payload_len: len,
        }
    }

    /// RFC 6675 NextSeg rule 1 during SACK recovery: retransmit holes below the highest SACK.
    pub(super) fn sack_retransmit(&mut self, now: Instant) -> Option<Transmit> {
        if !self.opts.sack_enabled || !self.cong.loss.in_recovery() {
            return None;
        }
        let (start, hole) = self.cong.loss.next_hole(self.snd.una)?;
        let pipe = self.cong.loss.pipe(self.snd.una, self.snd.max) as usize;
        let len = (hole as usize)
            .min(self.opts.snd_mss)
            .min(self.data_end().since(start) as usize);
        if len == 0 || pipe + len > self.cong.cc.window() {
            return None;
        }
        self.stats.retransmits += 1;
        let t = self.data_segment(now, start, len);
        self.cong.loss.retransmitted_to(start + t.payload_len);
        Some(t)
    }

    /// New data at SND.NXT (or data again after a timeout), within the peer's window and
    /// the congestion window, with Nagle and sender-side SWS avoidance (RFC 9293 3.7.4, 3.8.6.2.1).
    pub(super) fn new_data(&mut self, now: Instant) -> Option<Transmit> {
        let data_end = self.data_end();
        if self.snd.nxt > data_end {
            return None; // FIN already sent
        }
        let available = data_end.since(self.snd.nxt) as usize;
        let fin_pending = self.snd.fin_queued;
        if available == 0 && !fin_pending {
            return None;
        }
        let wnd_end = self.snd.una + self.snd.wnd;
        let wnd_room = if wnd_end > self.snd.nxt {
            wnd_end.since(self.snd.nxt) as usize
        } else {
            0
        };
        let in_flight = if self.opts.sack_enabled && self.cong.loss.in_recovery() {
            self.cong.loss.pipe(self.snd.una, self.snd.max) as usize
        } else {
            self.snd.nxt.since(self.snd.una) as usize
        };
        if in_flight == 0
            && self.snd.nxt == self.snd.max
            && now - self.cong.last_data_sent > self.rtx.rtt.rto()
            && self.cong.last_data_sent > Instant::ZERO
        {
            // RFC 5681 4.1: after an idle period longer than the RTO, restart from
            // RW = min(IW, cwnd).
            let iw = crate::tcp::congestion::initial_window(self.opts.snd_mss);
            if self.cong.cc.window() > iw {
                self.cong.cc.restart(iw);
            }
        }
        let cwnd_room = self.cong.cc.window().saturating_sub(in_flight);
        let len = available
            .min(self.opts.snd_mss)
            .min(wnd_room)
            .min(cwnd_room);

        if available > 0 && len == 0 {
            // Zero window with nothing in flight: start the persist timer.
            if self.snd.wnd == 0 && in_flight == 0 && self.timers[Timer::Persist].is_none() {
                self.timers[Timer::Persist] = Some(now + self.persist_interval());
            }
            return None;
        }
        let override_timer = std::mem::take(&mut self.snd.sws_override);
        if len < self.opts.snd_mss && len < available && !override_timer {
            // Sender SWS: do not send a small part of what is queued unless it is at least
            // half the largest window the peer offered; the override timer ends the wait.
            if len < (self.snd.max_wnd as usize / 2).max(1) {
                if in_flight == 0 && self.timers[Timer::Persist].is_none() {
                    self.timers[Timer::Persist] = Some(now + self.persist_interval());
                }
                return None;
            }
        }
        if len < self.opts.snd_mss
            && len == available
            && len > 0
            && !fin_pending
            && !self.cfg.nodelay
        {
            // Nagle (RFC 896 / RFC 9293 3.7.4), Minshall's variant as in Linux: hold a
            // small segment only while an earlier small segment is unacknowledged.
            if self.snd.sml > self.snd.una && in_flight > 0 {
                return None;
            }
        }
        if len == 0 && (!fin_pending || cwnd_room == 0 && in_flight > 0) {
            return None;
        }
        if self.snd.nxt < self.snd.max {
            self.stats.retransmits += 1;
        }
        let seq = self.snd.nxt;
        let t = self.data_segment(now, seq, len);
        self.snd.nxt = seq + t.payload_len + u32::from(t.repr.flags.fin);
        // Data sent past SACKed ranges after a timeout need not be resent.
        Some(t)
    }
}
