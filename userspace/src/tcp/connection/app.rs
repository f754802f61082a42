//! The application's calls: send, receive, close, abort, options (RFC 9293 3.10.2-3.10.5).
use super::*;

impl Connection {
    /// Queues data; returns how much fit in the send buffer (0 when full).
    pub fn send(&mut self, data: &[u8]) -> Result<usize, TcpError> {
        self.sending(|buf| buf.push(data))
    }

    /// Queues the bytes of `ring` as [`Connection::send`] does, taking the ring whole
    /// (swapped for an empty one, no copy) when it fits; returns how many bytes it took.
    pub fn send_ring(&mut self, ring: &mut Ring) -> Result<usize, TcpError> {
        self.sending(|buf| buf.append(ring))
    }

    /// `queue` into the send buffer, if the connection may still send.
    fn sending(&mut self, queue: impl FnOnce(&mut SendBuffer) -> usize) -> Result<usize, TcpError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match self.state {
            State::SynSent | State::SynReceived | State::Established | State::CloseWait
                if !self.snd.fin_queued =>
            {
                Ok(queue(&mut self.snd.buf))
            }
            _ => Err(TcpError::Closed),
        }
    }

    /// Room in the send buffer.
    pub fn send_capacity(&self) -> usize {
        if self.snd.fin_queued {
            0
        } else {
            self.snd.buf.free()
        }
    }

    /// Bytes sent or queued that the peer has not acknowledged yet.
    pub fn unacked(&self) -> usize {
        self.snd.buf.len()
    }

    /// Reads in-order data. Returns 0 when nothing is ready; see [`Connection::at_eof`].
    pub fn recv(&mut self, buf: &mut [u8]) -> usize {
        let before = self.rcv.buf.window();
        let n = self.rcv.buf.read(buf);
        self.window_opened(before, n);
        n
    }

    /// Hands every in-order byte out whole into `out`, which must have been read empty
    /// (no copy without out-of-order data). The bytes keep their room in the window until
    /// [`Connection::returned`]; returns how many.
    pub fn take_readable(&mut self, out: &mut RecvBuf) -> usize {
        let n = self.rcv.buf.take_readable(out);
        if self.state == State::TimeWait && self.rcv.buf.readable() == 0 {
            self.release_buffers();
        }
        n
    }

    /// The application read `n` bytes handed out by [`Connection::take_readable`].
    pub fn returned(&mut self, n: usize) {
        let before = self.rcv.buf.window();
        self.rcv.buf.returned(n);
        self.window_opened(before, n);
    }

    /// After the application freed `n` bytes of the receive buffer, from a window of
    /// `before`: a window update if it opened by enough.
    fn window_opened(&mut self, before: usize, n: usize) {
        if n > 0 && self.rcv.fin != PeerFin::Received {
            // Send a window update once the window opened by enough (RFC 9293 3.8.6.2.2),
            // and only if the right edge we would advertise really moves: an update
            // that repeats the last ACK reads as a duplicate ACK to the peer.
            let new_edge = self.rcv.nxt + self.rcv.buf.window();
            let opened = if new_edge > self.rcv.adv {
                new_edge.since(self.rcv.adv) as usize
            } else {
                0
            };
            let threshold = (self.rcv.buf.capacity() / 2).min(2 * usize::from(self.cfg.mss));
            if (opened >= threshold || before < usize::from(self.cfg.mss))
                && self.advertised_edge().1 > self.rcv.adv
            {
                self.pending.window_update = true;
            }
        }
        if self.state == State::TimeWait && self.rcv.buf.readable() == 0 {
            self.release_buffers();
        }
    }

    /// The receive window: room not taken by bytes the application has not read.
    pub fn recv_window(&self) -> usize {
        self.rcv.buf.window()
    }

    /// In-order bytes ready for [`Connection::recv`].
    pub fn recv_available(&self) -> usize {
        self.rcv.buf.readable()
    }

    /// The peer's FIN has arrived (bytes before it may still wait to be read).
    pub fn fin_received(&self) -> bool {
        self.rcv.fin == PeerFin::Received
    }

    /// The peer closed its side and every byte before its FIN has been read.
    pub fn at_eof(&self) -> bool {
        self.rcv.fin == PeerFin::Received && self.rcv.buf.readable() == 0
    }

    /// Half-close: send FIN after the queued data (RFC 9293 3.10.4).
    pub fn close(&mut self) {
        match self.state {
            State::SynSent => self.state = State::Closed,
            State::SynReceived | State::Established => {
                self.snd.fin_queued = true;
                self.state = State::FinWait1;
            }
            State::CloseWait => {
                self.snd.fin_queued = true;
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
            self.pending.rst = Some(self.rst_repr(self.snd.max, None));
        }
        self.enter_closed(None);
    }

    /// The application released the connection: it becomes an orphan, which Linux keeps
    /// in FIN-WAIT-2 for at most tcp_fin_timeout.
    pub fn orphan(&mut self, now: Instant) {
        self.orphaned = true;
        self.arm_fin_wait2(now);
    }

    pub(super) fn arm_fin_wait2(&mut self, now: Instant) {
        if self.orphaned && self.state == State::FinWait2 && self.timers[Timer::FinWait2].is_none()
        {
            self.timers[Timer::FinWait2] = Some(now + self.cfg.fin_wait2_timeout);
        }
    }

    /// Turns keep-alive on or off (RFC 1122 4.2.3.6; SO_KEEPALIVE).
    pub fn set_keepalive(&mut self, now: Instant, on: bool) {
        self.probes.keepalive = on;
        self.probes.unanswered = 0;
        self.probes.last_rx = self.probes.last_rx.max(now);
        self.arm_keepalive();
    }

    /// Keep-alive settings (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT).
    pub fn set_keepalive_params(&mut self, idle: Duration, interval: Duration, count: u32) {
        self.cfg.keepalive_idle = idle;
        self.cfg.keepalive_interval = interval;
        self.cfg.keepalive_count = count;
        self.arm_keepalive();
    }

    pub(super) fn arm_keepalive(&mut self) {
        self.timers[Timer::Keepalive] = (self.probes.keepalive && self.is_synchronized())
            .then(|| self.probes.last_rx + self.cfg.keepalive_idle);
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
        match (self.opts.ts_enabled, seg.options.timestamps) {
            (true, Some((tsval, _))) => (tsval.wrapping_sub(self.opts.ts_recent) as i32) > 0,
            _ => seg.seq > self.rcv.nxt,
        }
    }

    /// Bytes of buffer storage the connection holds.
    pub fn buffer_bytes(&self) -> usize {
        self.snd.buf.storage_len() + self.rcv.buf.storage_len()
    }

    /// TIME-WAIT keeps only what a Linux tcp_timewait_sock keeps: the buffers go.
    pub(super) fn release_buffers(&mut self) {
        if self.snd.buf.storage_len() > 0 {
            self.snd.buf = SendBuffer::empty();
        }
        if self.rcv.buf.readable() == 0 && self.rcv.buf.storage_len() > 0 {
            self.rcv.buf = Reassembler::empty();
        }
        self.cong.loss.scoreboard = Scoreboard::default();
    }
}
