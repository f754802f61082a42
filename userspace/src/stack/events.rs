//! What happened to a connection, as the application sees it: events instead of states,
//! and typed errors per operation (no data yet is not the same as end of stream).
use super::{ConnId, Stack};
use crate::tcp::reassembly::RecvBuf;
use crate::tcp::send_buffer::Ring;
use crate::tcp::{State, TcpError};

/// The events of one connection at this moment (level-triggered, like `poll(2)`).
///
/// [`Stack::drain_news`] names the connections that may have new events; this says
/// which ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    /// [`Stack::try_recv`] would not block: data, end of stream, or an error is there.
    pub readable: bool,
    /// [`Stack::try_send`] would accept at least one byte.
    pub writable: bool,
    /// The handshake completed (stays true after it, also once closing).
    pub connected: bool,
    /// The connection is gone: closed, reset, timed out, or released.
    pub closed: bool,
    /// The error that ended the connection, if one did.
    pub error: Option<TcpError>,
    /// The peer sent FIN and every byte before it was read.
    pub read_closed: bool,
    /// The peer's FIN arrived, bytes before it perhaps still unread (what Linux's
    /// `tcp_poll` reports as `POLLRDHUP` at once).
    pub fin_received: bool,
}

/// Why [`Stack::try_recv`] returned no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// Nothing to read yet; the connection is open.
    #[error("no data yet")]
    WouldBlock,
    /// The peer closed its side and everything it sent has been read.
    #[error("end of stream")]
    Finished,
    /// The connection failed (reset, refused, timed out, unreachable) or is unknown.
    #[error(transparent)]
    Connection(#[from] TcpError),
}

/// Why [`Stack::try_send`] took no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The send buffer is full (or the handshake has not started yet); try later.
    #[error("send buffer full")]
    WouldBlock,
    /// Our side was closed, or the connection failed.
    #[error(transparent)]
    Connection(#[from] TcpError),
}

impl Stack {
    /// The events of `id` now. A stale or freed handle is `closed`.
    pub fn events(&self, id: ConnId) -> Events {
        let Some(conn) = self.connection(id) else {
            return Events {
                closed: true,
                readable: true,
                ..Events::default()
            };
        };
        let state = conn.state();
        let error = conn.error();
        let closed = matches!(state, State::Closed | State::TimeWait);
        let read_closed = conn.at_eof();
        Events {
            readable: conn.recv_available() > 0 || read_closed || error.is_some() || closed,
            writable: !closed
                && error.is_none()
                && !matches!(state, State::SynSent | State::SynReceived)
                && conn.send_capacity() > 0,
            connected: conn.is_synchronized() || (closed && error.is_none()),
            closed,
            error,
            read_closed,
            fin_received: conn.fin_received() || read_closed,
        }
    }

    /// Reads in-order data of `id`: at least one byte, or why there is none.
    pub fn try_recv(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, RecvError> {
        let Some(e) = self.entry_mut(id) else {
            return Err(TcpError::Closed.into());
        };
        let c = &mut e.conn;
        match c.recv(buf) {
            0 if buf.is_empty() => Ok(0),
            0 if c.error().is_some() => Err(c.error().unwrap_or(TcpError::Closed).into()),
            0 if c.at_eof() => Err(RecvError::Finished),
            0 if c.state() == State::Closed => Err(TcpError::Closed.into()),
            0 => Err(RecvError::WouldBlock),
            n => Ok(n),
        }
    }

    /// Hands the in-order bytes of `id` out whole into `out` (read empty before): see
    /// [`crate::tcp::Connection::take_readable`]. Returns how many.
    pub fn take_readable(&mut self, id: ConnId, out: &mut RecvBuf) -> usize {
        self.entry_mut(id).map_or(0, |e| e.conn.take_readable(out))
    }

    /// The application read `n` of the bytes [`Stack::take_readable`] handed out of `id`.
    pub fn returned(&mut self, id: ConnId, n: usize) {
        if let Some(e) = self.entry_mut(id) {
            e.conn.returned(n);
        }
    }

    /// Queues data on `id`: how much fit, at least one byte, or why none did.
    pub fn try_send(&mut self, id: ConnId, data: &[u8]) -> Result<usize, SendError> {
        let Some(e) = self.entry_mut(id) else {
            return Err(TcpError::Closed.into());
        };
        match e.conn.send(data)? {
            0 if !data.is_empty() => Err(SendError::WouldBlock),
            n => Ok(n),
        }
    }

    /// Queues the bytes of `ring` on `id`, the whole ring when it fits (see
    /// [`crate::tcp::Connection::send_ring`]); returns how many it took.
    pub fn send_ring(&mut self, id: ConnId, ring: &mut Ring) -> usize {
        self.entry_mut(id)
            .and_then(|e| e.conn.send_ring(ring).ok())
            .unwrap_or(0)
    }

    /// Turns Nagle's algorithm off (`true`) or on for `id`.
    pub fn set_nodelay(&mut self, id: ConnId, nodelay: bool) {
        if let Some(e) = self.entry_mut(id) {
            e.conn.set_nodelay(nodelay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{IP_C, IP_S, MAC_C, MAC_S, drive, pair};
    use super::*;
    use crate::device::memory::MemoryDevice;
    use crate::stack::StackConfig;
    use crate::tcp::Instant;
    use std::net::SocketAddrV4;
    use std::time::Duration;

    /// Two stacks over a link, a connection between them, and what drives them.
    struct Connected {
        c: Stack,
        dc: MemoryDevice,
        s: Stack,
        ds: MemoryDevice,
        now: Instant,
        id: ConnId,
        sid: ConnId,
    }

    impl Connected {
        /// Connects; `before` sees the client's connection before the handshake.
        fn new(before: impl FnOnce(&mut Stack, ConnId)) -> Connected {
            let (mut c, mut dc, mut s, mut ds) = pair(|_| {});
            s.listen(80, 16).unwrap();
            let mut now = Instant::from_millis(1);
            let id = c.connect(now, SocketAddrV4::new(IP_S, 80)).unwrap();
            before(&mut c, id);
            let mut sid = None;
            drive(&mut c, &mut dc, &mut s, &mut ds, &mut now, |c, s| {
                sid = sid.or_else(|| s.accept(80));
                sid.is_some() && c.events(id).connected
            });
            let sid = sid.unwrap();
            Connected {
                c,
                dc,
                s,
                ds,
                now,
                id,
                sid,
            }
        }

        /// Drives both stacks until `done(client, server)`.
        fn both(&mut self, done: impl FnMut(&mut Stack, &mut Stack) -> bool) {
            let (c, dc, s, ds) = (&mut self.c, &mut self.dc, &mut self.s, &mut self.ds);
            drive(c, dc, s, ds, &mut self.now, done);
        }

        fn until(&mut self, mut done: impl FnMut(&Stack, ConnId) -> bool) {
            let id = self.id;
            let (c, dc, s, ds) = (&mut self.c, &mut self.dc, &mut self.s, &mut self.ds);
            drive(c, dc, s, ds, &mut self.now, |c, _| done(c, id));
        }
    }

    #[test]
    fn recv_tells_no_data_yet_from_end_of_stream() {
        let mut buf = [0u8; 16];
        let mut t = Connected::new(|c, id| {
            assert_eq!(c.try_recv(id, &mut [0u8; 4]), Err(RecvError::WouldBlock));
            assert!(!c.events(id).connected && !c.events(id).writable);
        });
        let (id, sid) = (t.id, t.sid);
        let ev = t.c.events(id);
        assert!(ev.writable && !ev.readable && !ev.closed && ev.error.is_none());
        assert_eq!(t.c.try_recv(id, &mut buf), Err(RecvError::WouldBlock));
        assert_eq!(t.s.try_send(sid, b"hi"), Ok(2));
        t.s.close(sid);
        t.until(|c, id| c.events(id).readable);
        assert_eq!(t.c.try_recv(id, &mut buf), Ok(2));
        assert_eq!(&buf[..2], b"hi");
        t.until(|c, id| c.events(id).read_closed);
        assert_eq!(t.c.try_recv(id, &mut buf), Err(RecvError::Finished));
        assert!(t.c.events(id).readable, "end of stream is readable");
    }

    /// The FIN shows at once, as Linux's POLLRDHUP, before the bytes ahead of it are
    /// read; the end of the stream only after them.
    #[test]
    fn the_peers_fin_shows_before_its_bytes_are_read() {
        let mut buf = [0u8; 16];
        let mut t = Connected::new(|_, _| {});
        let (id, sid) = (t.id, t.sid);
        assert!(!t.c.events(id).fin_received);
        assert_eq!(t.s.try_send(sid, b"bye"), Ok(3));
        t.s.close(sid);
        t.until(|c, id| c.events(id).fin_received);
        let ev = t.c.events(id);
        assert!(ev.readable && !ev.read_closed, "{ev:?}");
        assert_eq!(t.c.try_recv(id, &mut buf), Ok(3));
        let ev = t.c.events(id);
        assert!(ev.fin_received && ev.read_closed, "{ev:?}");
    }

    #[test]
    fn a_reset_is_an_error_event_and_a_typed_error() {
        let mut t = Connected::new(|_, _| {});
        t.s.abort(t.sid);
        t.until(|c, id| c.events(id).closed);
        let (c, id) = (&mut t.c, t.id);
        let ev = c.events(id);
        assert_eq!(ev.error, Some(TcpError::Reset));
        assert!(ev.readable && !ev.writable);
        let mut buf = [0u8; 4];
        assert_eq!(
            c.try_recv(id, &mut buf),
            Err(RecvError::Connection(TcpError::Reset))
        );
        assert_eq!(
            c.try_send(id, b"x"),
            Err(SendError::Connection(TcpError::Reset))
        );
    }

    #[test]
    fn handed_over_bytes_keep_their_room_in_the_window_until_read() {
        let mut t = Connected::new(|_, _| {});
        let (id, sid) = (t.id, t.sid);
        let cap = t.c.connection(id).unwrap().recv_window();
        let data: Vec<u8> = (0..2 * cap).map(|i| (i % 251) as u8).collect();
        let (mut sent, mut taken, mut turns) = (0, 0, 0);
        let mut rx = RecvBuf::new();
        // The application takes the bytes over and reads none: the peer fills the
        // buffer once and no more (RFC 9293 3.8.6.2.2).
        t.both(|c, s| {
            sent += s.try_send(sid, &data[sent..]).unwrap_or(0);
            taken += c.take_readable(id, &mut rx);
            let held = taken + c.connection(id).unwrap().recv_available();
            assert!(held <= cap, "{held} bytes held in a buffer of {cap}");
            turns += usize::from(held == cap);
            turns == 2000
        });
        assert_eq!(t.c.connection(id).unwrap().recv_window(), 0);
        // Reading gives the room back, and the rest comes.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        t.both(|c, s| {
            sent += s.try_send(sid, &data[sent..]).unwrap_or(0);
            let n = rx.read(&mut buf);
            got.extend_from_slice(&buf[..n]);
            c.returned(id, n);
            c.take_readable(id, &mut rx);
            got.len() == data.len()
        });
        assert!(got == data);
    }

    #[test]
    fn rings_handed_over_whole_arrive_in_order() {
        let mut t = Connected::new(|_, _| {});
        let (id, sid) = (t.id, t.sid);
        let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        let (mut written, mut all_taken) = (0, 0);
        let mut ring = Ring::new();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        // The application fills a ring of at most 100 000 bytes and hands it over.
        t.both(|c, s| {
            written += ring.push(&data[written..], 100_000);
            let before = ring.len();
            let took = c.send_ring(id, &mut ring);
            all_taken += usize::from(took > 0 && took == before);
            while let Ok(n) = s.try_recv(sid, &mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            got.len() == data.len()
        });
        assert!(got == data, "every byte, in order");
        assert!(all_taken > 0, "some rings were taken whole");
    }

    #[test]
    fn a_full_send_buffer_would_block() {
        let mut t = Connected::new(|_, _| {});
        let (c, id) = (&mut t.c, t.id);
        let chunk = vec![7u8; 64 * 1024];
        while c.try_send(id, &chunk).is_ok() {}
        assert_eq!(c.try_send(id, &chunk), Err(SendError::WouldBlock));
        assert!(!c.events(id).writable);
    }

    #[test]
    fn a_connect_to_a_silent_neighbour_fails_unreachable() {
        // The other end of the link never answers ARP: the connection has no SYN out
        // and so no timer of its own, yet it must end.
        let (mut dc, _silent) = MemoryDevice::pair(MAC_C, MAC_S);
        let mut c = Stack::new(StackConfig::new(MAC_C, IP_C, 24));
        let mut now = Instant::from_millis(1);
        let id = c.connect(now, SocketAddrV4::new(IP_S, 80)).unwrap();
        let mut news = Vec::new();
        let mut reported = false;
        while now < Instant::from_millis(10_000) && !c.events(id).closed {
            c.poll(now, &mut dc);
            c.drain_news(&mut news);
            reported |= news.contains(&id);
            now = now + Duration::from_millis(10);
        }
        assert_eq!(c.events(id).error, Some(TcpError::HostUnreachable));
        assert!(reported, "the failure is reported as news");
        assert!(now > Instant::from_millis(2_000), "after the ARP retries");
        assert_eq!(c.stats.arp_failures, 1);
        // A new connect to the same neighbour tries ARP afresh.
        let again = c.connect(now, SocketAddrV4::new(IP_S, 81)).unwrap();
        c.poll(now, &mut dc);
        assert!(!c.events(again).closed);
    }
}
