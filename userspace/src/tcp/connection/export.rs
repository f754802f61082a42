//! Moving a connection to another stack, in another process: [`Connection::export`]
//! writes its whole TCB as bytes (RFC 9293 3.3.1: the sequence spaces and windows, what
//! the SYNs negotiated, the timers, congestion and recovery state, the bytes not yet
//! acknowledged and the bytes not yet read, out-of-order ones included), and
//! [`Connection::import`] rebuilds it on the other stack's clock. Times travel as ages
//! and as what is left of each timer; our timestamp clock (RFC 7323 5.4) goes on from
//! the last TSval sent, so the peer sees one connection throughout.
use super::super::congestion::CcParts;
use super::super::recovery::Phase;
use super::super::rtt::RttParts;
use super::*;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

/// The format's first bytes (a version: a stack reads only its own).
const MAGIC: &[u8; 4] = b"TCB1";
/// No connection buffers more than this each way (a bound for bad input).
const MAX_BUFFER: u64 = 1 << 30;
/// Every timer, in the order the format lists them.
const TIMERS: [Timer; 6] = [
    Timer::Rto,
    Timer::DelayedAck,
    Timer::Persist,
    Timer::Keepalive,
    Timer::TimeWait,
    Timer::FinWait2,
];

/// Why a connection could not be exported or imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoveError {
    /// Still opening, closed, or with a RST to send: nothing to move.
    #[error("the connection is not synchronized")]
    NotSynchronized,
    /// The bytes said to be handed out and unread are not what the connection lent.
    #[error("the bytes handed out and not read do not match the connection's")]
    Lent,
    /// Not an exported connection of this format, or cut short.
    #[error("not an exported connection")]
    Malformed,
}

impl Connection {
    /// The whole connection as bytes, at `now`; `unread` are the bytes handed out with
    /// [`Connection::take_readable`] that the application has not read (they come first
    /// on the other side). The connection itself is left as it was: the caller drops
    /// it without a FIN or RST once the bytes are safely elsewhere.
    pub fn export(&self, now: Instant, unread: &[u8]) -> Result<Vec<u8>, MoveError> {
        if !self.is_synchronized() || self.pending.rst.is_some() {
            return Err(MoveError::NotSynchronized);
        }
        if unread.len() != self.rcv.buf.lent() {
            return Err(MoveError::Lent);
        }
        let mut w = Writer(Vec::with_capacity(
            256 + self.snd.buf.len() + self.rcv.buf.readable() + unread.len(),
        ));
        w.0.extend_from_slice(MAGIC);
        w.u8(state_code(self.state));
        w.addr(self.local);
        w.addr(self.remote);
        w.u8(error_code(self.error));
        w.u8(error_code(self.soft_error));
        w.bool(self.orphaned);
        // The settings a program may change per connection, and the buffers' sizes.
        w.u16(self.cfg.mss);
        w.bool(self.cfg.nodelay);
        w.dur(self.cfg.keepalive_idle);
        w.dur(self.cfg.keepalive_interval);
        w.u32(self.cfg.keepalive_count);
        w.u64(self.snd.buf.capacity() as u64);
        w.u64(self.rcv.buf.capacity() as u64);
        // Send sequence space and the bytes not yet acknowledged.
        let s = &self.snd;
        for seq in [s.iss, s.una, s.nxt, s.max] {
            w.seq(seq);
        }
        w.u32(s.wnd);
        w.u32(s.max_wnd);
        for seq in [s.wl1, s.wl2, s.buf_seq, s.sml] {
            w.seq(seq);
        }
        w.bool(s.fin_queued);
        w.bool(s.sws_override);
        let mut bytes = vec![0; s.buf.len()];
        s.buf.copy_out(0, &mut bytes);
        w.bytes(&bytes);
        // Receive sequence space, the bytes not read, the out-of-order ranges.
        let r = &self.rcv;
        for seq in [r.irs, r.nxt, r.adv] {
            w.seq(seq);
        }
        match r.fin {
            PeerFin::None => w.u8(0),
            PeerFin::Pending(at) => {
                w.u8(1);
                w.seq(at)
            }
            PeerFin::Received => w.u8(2),
        }
        let readable = r.buf.readable();
        let mut bytes = Vec::with_capacity(unread.len() + readable);
        bytes.extend_from_slice(unread);
        bytes.resize(unread.len() + readable, 0);
        r.buf.copy_at(0, &mut bytes[unread.len()..]);
        w.bytes(&bytes);
        let (ranges, reported) = (r.buf.out_of_order_ranges(), r.buf.reported_first());
        w.u32(ranges.len() as u32);
        for &(start, end) in ranges {
            let mut data = vec![0; end - start];
            r.buf.copy_at(readable + start, &mut data);
            w.u64(start as u64);
            w.bytes(&data);
        }
        w.u32(reported.len() as u32);
        for &(start, end) in reported {
            w.u64(start as u64);
            w.u64(end as u64);
        }
        // What the SYNs negotiated; the TSval we would send now.
        let o = &self.opts;
        w.u64(o.snd_mss as u64);
        w.u64(o.peer_mss as u64);
        w.u8(o.snd_wscale);
        w.u8(o.rcv_wscale);
        w.bool(o.ts_enabled);
        w.u32(o.ts_recent);
        w.age(now, o.ts_recent_stamp);
        w.u32(self.ts_now(now));
        w.bool(o.sack_enabled);
        // Acknowledgments.
        let a = &self.acks;
        w.seq(a.last_sent);
        w.opt_age(now, a.last_challenge);
        w.u32(a.owed_len as u32);
        for &seq in &a.owed[..a.owed_len] {
            w.seq(seq);
        }
        w.u64(a.unacked_bytes as u64);
        w.u64(a.rcv_mss as u64);
        w.u32(a.segs_since);
        // Retransmission.
        let p = self.rtx.rtt.parts();
        w.opt_dur(p.srtt);
        w.dur(p.rttvar);
        w.dur(p.rto);
        w.u32(p.backoff);
        w.opt_dur(p.latest);
        w.u32(self.rtx.retries);
        match self.rtx.rtt_probe {
            None => w.bool(false),
            Some((end, at)) => {
                w.bool(true);
                w.seq(end);
                w.age(now, at);
            }
        }
        w.bool(self.rtx.syn_retransmitted);
        // Congestion control and loss recovery.
        let c = self.cong.cc.parts(now);
        w.u64(c.cwnd as u64);
        w.u64(c.ssthresh as u64);
        w.u64(c.acked_in_ca as u64);
        for v in [c.w_max, c.k, c.w_est] {
            w.u64(v.to_bits());
        }
        w.opt_dur(c.epoch_age);
        let l = &self.cong.loss;
        w.u32(l.dupacks);
        match l.phase {
            Phase::None => w.bool(false),
            Phase::Fast { recover } => {
                w.bool(true);
                w.seq(recover);
            }
        }
        w.seq(l.recover_guard);
        w.seq(l.rtx_next);
        let blocks = l.scoreboard.ranges();
        w.u32(blocks.len() as u32);
        for &(start, end) in blocks {
            w.seq(start);
            w.seq(end);
        }
        w.u64(self.cong.max_flight as u64);
        w.seq(self.cong.max_flight_end);
        w.age(now, self.cong.last_data_sent);
        // Probes.
        w.u32(self.probes.persist_backoff);
        w.u32(self.probes.unanswered);
        w.age(now, self.probes.last_rx);
        w.bool(self.probes.keepalive);
        // Timers: what is left of each.
        for timer in TIMERS {
            w.opt_dur(self.timers[timer].map(|at| at.saturating_since(now)));
        }
        // Segments owed.
        let q = &self.pending;
        for b in [
            q.syn,
            q.challenge_ack,
            q.fast_retransmit,
            q.probe,
            q.ack_now,
        ] {
            w.bool(b);
        }
        w.u32(q.dup_acks);
        w.bool(q.window_update);
        Ok(w.0)
    }

    /// The connection [`Connection::export`] wrote, on a stack whose clock reads `now`
    /// and whose settings are `cfg` (timer bounds, congestion control, limits; the
    /// connection keeps its own MSS, buffer sizes, Nagle and keep-alive settings).
    pub fn import(now: Instant, cfg: Config, bytes: &[u8]) -> Result<Connection, MoveError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(MoveError::Malformed);
        }
        let state = state_of(r.u8()?)?;
        let local = r.addr()?;
        let remote = r.addr()?;
        let error = error_of(r.u8()?)?;
        let soft_error = error_of(r.u8()?)?;
        let orphaned = r.bool()?;
        let mut cfg = cfg;
        cfg.mss = r.u16()?.max(64);
        cfg.nodelay = r.bool()?;
        cfg.keepalive_idle = r.dur()?;
        cfg.keepalive_interval = r.dur()?;
        cfg.keepalive_count = r.u32()?;
        let send_cap = r.size(MAX_BUFFER)?;
        let recv_cap = r.size(MAX_BUFFER)?;
        cfg.send_buffer = send_cap;
        cfg.recv_buffer = recv_cap;
        // Connection::new would lower an IPv6 connection's MSS again: it is final here.
        let mss = cfg.mss;
        let mut c = Connection::new(cfg, local, remote, 0, state);
        c.cfg.mss = mss;
        c.error = error;
        c.soft_error = soft_error;
        c.orphaned = orphaned;

        let [iss, una, nxt, max] = [r.seq()?, r.seq()?, r.seq()?, r.seq()?];
        let (wnd, max_wnd) = (r.u32()?, r.u32()?);
        let [wl1, wl2, buf_seq, sml] = [r.seq()?, r.seq()?, r.seq()?, r.seq()?];
        let fin_queued = r.bool()?;
        let sws_override = r.bool()?;
        let unacked = r.take_len(send_cap)?;
        // RFC 9293 3.3.1: SND.UNA =< SND.NXT =< SND.MAX, and the buffer holds what is
        // between SND.UNA and SND.MAX (a FIN takes one more).
        if una > nxt || nxt > max || buf_seq > una {
            return Err(MoveError::Malformed);
        }
        if max.since(buf_seq) as usize > unacked.len() + 1 {
            return Err(MoveError::Malformed);
        }
        c.snd = SendSequence {
            iss,
            una,
            nxt,
            max,
            wnd,
            max_wnd,
            wl1,
            wl2,
            buf_seq,
            buf: match send_cap {
                0 => SendBuffer::empty(),
                n => SendBuffer::new(n),
            },
            fin_queued,
            sml,
            sws_override,
        };
        if c.snd.buf.push(unacked) != unacked.len() {
            return Err(MoveError::Malformed);
        }

        let [irs, rcv_nxt, adv] = [r.seq()?, r.seq()?, r.seq()?];
        let fin = match r.u8()? {
            0 => PeerFin::None,
            1 => PeerFin::Pending(r.seq()?),
            2 => PeerFin::Received,
            _ => return Err(MoveError::Malformed),
        };
        c.rcv.irs = irs;
        c.rcv.nxt = rcv_nxt;
        c.rcv.adv = adv;
        c.rcv.fin = fin;
        c.rcv.buf = match recv_cap {
            0 => Reassembler::empty(),
            n => Reassembler::new(n, c.cfg.max_ooo_ranges, c.cfg.max_ooo_bytes),
        };
        let readable = r.take_len(recv_cap)?;
        if c.rcv.buf.insert(0, readable).advanced != readable.len() {
            return Err(MoveError::Malformed);
        }
        let ranges = r.count(16)?;
        let mut held = Vec::with_capacity(ranges);
        for _ in 0..ranges {
            let start = r.size(MAX_BUFFER)?;
            let data = r.take_len(recv_cap)?;
            if start == 0 || data.is_empty() {
                return Err(MoveError::Malformed);
            }
            held.push((start, data));
        }
        let reported = r.count(16)?;
        let mut order = Vec::with_capacity(reported);
        for _ in 0..reported {
            order.push((r.size(MAX_BUFFER)?, r.size(MAX_BUFFER)?));
        }
        // The ranges SACK does not report first go in first, then the reported ones
        // from the last to the first: the report keeps its order (RFC 2018 section 4).
        held.sort_by_key(|(start, data)| {
            order
                .iter()
                .position(|&(s, e)| (s, e) == (*start, start + data.len()))
                .map_or(0, |i| usize::MAX - i)
        });
        for (start, data) in held {
            let put = c.rcv.buf.insert(start, data);
            if put.dropped || put.advanced > 0 {
                return Err(MoveError::Malformed);
            }
        }

        c.opts.snd_mss = r.size(65535)?.max(64);
        c.opts.peer_mss = r.size(65535)?.max(64);
        c.opts.snd_wscale = r.u8()?.min(14);
        c.opts.rcv_wscale = r.u8()?.min(14);
        c.opts.ts_enabled = r.bool()?;
        c.opts.ts_recent = r.u32()?;
        c.opts.ts_recent_stamp = r.instant(now)?;
        // Our next TSval continues from the last one (RFC 7323 5.4: monotonic).
        let ts_val = r.u32()?;
        c.opts.ts_offset = ts_val.wrapping_sub(now.millis() as u32);
        c.opts.sack_enabled = r.bool()?;

        c.acks.last_sent = r.seq()?;
        c.acks.last_challenge = r.opt_instant(now)?;
        let owed = r.count(MAX_OWED_ACKS)?;
        for i in 0..owed {
            c.acks.owed[i] = r.seq()?;
        }
        c.acks.owed_len = owed;
        c.acks.unacked_bytes = r.size(MAX_BUFFER)?;
        c.acks.rcv_mss = r.size(65535)?.max(1);
        c.acks.segs_since = r.u32()?;

        let rtt = RttParts {
            srtt: r.opt_dur()?,
            rttvar: r.dur()?,
            rto: r.dur()?,
            backoff: r.u32()?,
            latest: r.opt_dur()?,
        };
        c.rtx.rtt.set_parts(rtt);
        c.rtx.retries = r.u32()?;
        c.rtx.rtt_probe = match r.bool()? {
            false => None,
            true => Some((r.seq()?, r.instant(now)?)),
        };
        c.rtx.syn_retransmitted = r.bool()?;

        let cc = CcParts {
            cwnd: r.size(MAX_BUFFER)?,
            ssthresh: r.u64()?.min(usize::MAX as u64) as usize,
            acked_in_ca: r.size(MAX_BUFFER)?,
            w_max: f64::from_bits(r.u64()?),
            k: f64::from_bits(r.u64()?),
            w_est: f64::from_bits(r.u64()?),
            epoch_age: r.opt_dur()?,
        };
        // Counted in the configured MSS, as Connection::new does.
        let cc_mss = usize::from(c.cfg.mss);
        c.cong.cc = match c.cfg.congestion {
            CongestionKind::NewReno => Box::new(NewReno::new(cc_mss)),
            CongestionKind::Cubic => Box::new(Cubic::new(cc_mss)),
        };
        c.cong.cc.set_parts(now, &cc);
        let l = &mut c.cong.loss;
        l.dupacks = r.u32()?;
        l.phase = match r.bool()? {
            false => Phase::None,
            true => Phase::Fast { recover: r.seq()? },
        };
        l.recover_guard = r.seq()?;
        l.rtx_next = r.seq()?;
        let blocks = r.count(64)?;
        for _ in 0..blocks {
            let (start, end) = (r.seq()?, r.seq()?);
            l.scoreboard.add(start, end, una, max);
        }
        c.cong.max_flight = r.size(MAX_BUFFER)?;
        c.cong.max_flight_end = r.seq()?;
        c.cong.last_data_sent = r.instant(now)?;

        c.probes.persist_backoff = r.u32()?.min(10);
        c.probes.unanswered = r.u32()?;
        c.probes.last_rx = r.instant(now)?;
        c.probes.keepalive = r.bool()?;

        for timer in TIMERS {
            c.timers[timer] = r.opt_dur()?.map(|left| now + left);
        }
        c.pending = PendingOutput {
            rst: None,
            syn: r.bool()?,
            challenge_ack: r.bool()?,
            fast_retransmit: r.bool()?,
            probe: r.bool()?,
            ack_now: r.bool()?,
            dup_acks: r.u32()?,
            window_update: r.bool()?,
        };
        if !r.0.is_empty() {
            return Err(MoveError::Malformed);
        }
        Ok(c)
    }
}

fn state_code(s: State) -> u8 {
    match s {
        State::SynSent => 0,
        State::SynReceived => 1,
        State::Established => 2,
        State::FinWait1 => 3,
        State::FinWait2 => 4,
        State::CloseWait => 5,
        State::Closing => 6,
        State::LastAck => 7,
        State::TimeWait => 8,
        State::Closed => 9,
    }
}

/// Only the synchronized states travel.
fn state_of(code: u8) -> Result<State, MoveError> {
    Ok(match code {
        2 => State::Established,
        3 => State::FinWait1,
        4 => State::FinWait2,
        5 => State::CloseWait,
        6 => State::Closing,
        7 => State::LastAck,
        8 => State::TimeWait,
        _ => return Err(MoveError::Malformed),
    })
}

const ERRORS: [TcpError; 6] = [
    TcpError::Refused,
    TcpError::Reset,
    TcpError::TimedOut,
    TcpError::Unreachable,
    TcpError::Closed,
    TcpError::HostUnreachable,
];

fn error_code(e: Option<TcpError>) -> u8 {
    e.and_then(|e| ERRORS.iter().position(|&x| x == e))
        .map_or(0, |i| i as u8 + 1)
}

fn error_of(code: u8) -> Result<Option<TcpError>, MoveError> {
    match code {
        0 => Ok(None),
        n => ERRORS
            .get(usize::from(n) - 1)
            .copied()
            .map(Some)
            .ok_or(MoveError::Malformed),
    }
}

/// Little-endian fields, lengths before bytes.
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn seq(&mut self, v: SeqNum) {
        self.u32(v.0);
    }
    fn dur(&mut self, d: Duration) {
        self.u64(d.as_micros().min(u64::MAX as u128) as u64);
    }
    fn opt_dur(&mut self, d: Option<Duration>) {
        match d {
            None => self.bool(false),
            Some(d) => {
                self.bool(true);
                self.dur(d);
            }
        }
    }
    fn age(&mut self, now: Instant, at: Instant) {
        self.dur(now.saturating_since(at));
    }
    fn opt_age(&mut self, now: Instant, at: Option<Instant>) {
        self.opt_dur(at.map(|at| now.saturating_since(at)));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn addr(&mut self, a: SocketAddr) {
        match a {
            SocketAddr::V4(a) => {
                self.u8(4);
                self.0.extend_from_slice(&a.ip().octets());
                self.u16(a.port());
            }
            SocketAddr::V6(a) => {
                self.u8(6);
                self.0.extend_from_slice(&a.ip().octets());
                self.u16(a.port());
                self.u32(a.flowinfo());
                self.u32(a.scope_id());
            }
        }
    }
}

/// Reads what [`Writer`] wrote; anything short or out of bounds is `Malformed`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MoveError> {
        if n > self.0.len() {
            return Err(MoveError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], MoveError> {
        self.take(N)?.try_into().map_err(|_| MoveError::Malformed)
    }
    fn u8(&mut self) -> Result<u8, MoveError> {
        Ok(self.array::<1>()?[0])
    }
    fn bool(&mut self) -> Result<bool, MoveError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(MoveError::Malformed),
        }
    }
    fn u16(&mut self) -> Result<u16, MoveError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, MoveError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, MoveError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A size of at most `max`.
    fn size(&mut self, max: u64) -> Result<usize, MoveError> {
        let v = self.u64()?;
        if v > max {
            return Err(MoveError::Malformed);
        }
        Ok(v as usize)
    }
    /// A count of at most `max` items.
    fn count(&mut self, max: usize) -> Result<usize, MoveError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(MoveError::Malformed);
        }
        Ok(n)
    }
    fn seq(&mut self) -> Result<SeqNum, MoveError> {
        Ok(SeqNum(self.u32()?))
    }
    fn dur(&mut self) -> Result<Duration, MoveError> {
        Ok(Duration::from_micros(self.u64()?))
    }
    fn opt_dur(&mut self) -> Result<Option<Duration>, MoveError> {
        match self.bool()? {
            false => Ok(None),
            true => self.dur().map(Some),
        }
    }
    /// An age, as an instant on this clock (the origin if it would be before it).
    fn instant(&mut self, now: Instant) -> Result<Instant, MoveError> {
        let age = self.u64()?;
        Ok(Instant(now.0.saturating_sub(age)))
    }
    fn opt_instant(&mut self, now: Instant) -> Result<Option<Instant>, MoveError> {
        match self.bool()? {
            false => Ok(None),
            true => self.instant(now).map(Some),
        }
    }
    /// Length-prefixed bytes, at most `max` of them.
    fn take_len(&mut self, max: usize) -> Result<&'a [u8], MoveError> {
        let n = self.size(max as u64)?;
        self.take(n)
    }
    fn addr(&mut self) -> Result<SocketAddr, MoveError> {
        match self.u8()? {
            4 => {
                let ip = Ipv4Addr::from(self.array::<4>()?);
                Ok(SocketAddr::V4(SocketAddrV4::new(ip, self.u16()?)))
            }
            6 => {
                let ip = Ipv6Addr::from(self.array::<16>()?);
                let port = self.u16()?;
                let (flow, scope) = (self.u32()?, self.u32()?);
                Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, flow, scope)))
            }
            _ => Err(MoveError::Malformed),
        }
    }
}
