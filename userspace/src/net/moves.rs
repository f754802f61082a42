//! Moving a connection to another process's stack (a forked child that uses a
//! connection its parent accepted): [`TcpStream::export`] takes it out of this
//! stack whole, with the bytes its handle holds, and [`TcpStream::import`] takes
//! it in on another. See docs/PRELOAD.md, "Moving a connection between processes".
use super::shared::{Command, Conn, ConnState, Failure, Phase};
use super::stream::Handle;
use super::{Stack, TcpStream};
use crate::stack::{ConnId, ImportError};
use std::io;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

/// The first bytes of a moved connection (a version: a stack reads only its own).
const MAGIC: &[u8; 4] = b"MOV1";

/// A moved connection as bytes: the TCB ([`crate::stack::Stack::export`]: the
/// handle's unread bytes are in it, in front), then the handle's written bytes that
/// did not fit in the TCP's send buffer.
pub(super) fn pack(tcb: &[u8], staged: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + tcb.len() + staged.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(tcb.len() as u32).to_be_bytes());
    out.extend_from_slice(tcb);
    out.extend_from_slice(staged);
    out
}

/// The TCB and the staged bytes of [`pack`]; bad input is `InvalidData`.
pub(super) fn unpack(bytes: &[u8]) -> io::Result<(&[u8], &[u8])> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a moved connection");
    let rest = bytes.strip_prefix(MAGIC).ok_or_else(bad)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(bad());
    }
    Ok(rest.split_at(len))
}

/// The loop's half of [`TcpStream::export`] on the handle's state `st`: the
/// handle's written bytes go into the TCP's send buffer as far as they fit (a FIN a
/// `shutdown` owes with them), the bytes it read are given back to the window, and
/// the TCB carries the ones it holds unread in front of the TCP's; what did not fit in
/// the send buffer travels beside it ([`pack`]). The handle is then closed with
/// [`Failure::Moved`]. Nothing is sent to the peer.
pub(super) fn export_conn(
    stack: &mut crate::stack::Stack,
    st: &mut ConnState,
) -> io::Result<(ConnId, Vec<u8>)> {
    let id = match st.id {
        Some(id) if !st.dropped && !st.abort => id,
        _ => return Err(io::Error::from_raw_os_error(libc::ENOTCONN)),
    };
    if st.rx_lent {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "a reader holds the connection's bytes",
        ));
    }
    if !st.tx.is_empty() {
        stack.send_ring(id, &mut st.tx);
    }
    if st.write_shut && st.tx.is_empty() && !st.fin_queued {
        stack.close(id);
        st.fin_queued = true;
    }
    if st.read_shut {
        st.discard_rx();
    }
    stack.returned(id, std::mem::take(&mut st.rx_read));
    let mut unread = vec![0; st.rx.len()];
    st.rx.peek(&mut unread);
    let tcb = stack
        .export(id, &unread)
        .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e))?;
    let bytes = pack(&tcb, &st.tx.to_vec());
    st.tx.clear();
    st.rx.clear();
    st.id = None;
    st.phase = Phase::Closed;
    st.failure = Some(Failure::Moved);
    Ok((id, bytes))
}

/// The loop's half of [`TcpStream::import`]: the connection on `stack`, and its
/// handle's state with the staged bytes queued (the loop's next sync hands them and
/// the unread bytes over).
pub(super) fn import_conn(
    stack: &mut crate::stack::Stack,
    now: crate::tcp::Instant,
    bytes: &[u8],
    cap: usize,
    nodelay: bool,
) -> io::Result<(ConnId, Arc<Conn>)> {
    let (tcb, staged) = unpack(bytes)?;
    let id = stack.import(now, tcb).map_err(|e| match e {
        ImportError::AddressInUse => io::Error::new(io::ErrorKind::AddrInUse, e),
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    })?;
    let Some(c) = stack.connection(id) else {
        return Err(io::ErrorKind::NotConnected.into());
    };
    let (local, remote) = (c.local(), c.remote());
    let conn = Conn::new(remote, cap, nodelay, Phase::Open, Some(id));
    {
        let mut st = conn.shared.lock();
        st.local = local;
        let room = st.cap.max(staged.len());
        st.tx.push(staged, room);
    }
    Ok((id, conn))
}

/// Waits for the loop's answer, turning an inline loop meanwhile (the caller may be
/// the thread that would turn it).
fn answer<T>(stack: &Stack, rx: Receiver<io::Result<T>>) -> io::Result<T> {
    loop {
        match rx.try_recv() {
            Ok(result) => return result,
            Err(TryRecvError::Disconnected) => return Err(Failure::Stopped.io()),
            Err(TryRecvError::Empty) => {}
        }
        if stack.turn().is_none() {
            match rx.recv_timeout(Duration::from_millis(1)) {
                Ok(result) => return result,
                Err(RecvTimeoutError::Disconnected) => return Err(Failure::Stopped.io()),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

impl TcpStream {
    /// Takes the connection out of its stack, whole, for [`TcpStream::import`] on
    /// another stack (another process's): its TCB, the bytes received and not yet
    /// read, and the bytes written and not yet acknowledged. Nothing is sent to the
    /// peer (no FIN, no RST), and its segments still arriving here are dropped for a
    /// while (see [`crate::stack::Stack::export`]), so the peer's retransmissions reach
    /// the new stack once they are steered there. This stream and its clones then fail
    /// with [`io::ErrorKind::NotConnected`]. Fails with `NotConnected` for a
    /// connection not established (or closed), and `WouldBlock` while a
    /// [`TcpStream::read_with`] holds its bytes.
    pub fn export(&self) -> io::Result<Vec<u8>> {
        let stack = &self.handle.stack;
        let (tx, rx) = mpsc::sync_channel(1);
        stack.send(Command::Export(self.handle.conn.clone(), tx));
        answer(stack, rx)
    }

    /// A connection [`TcpStream::export`] gave, on `stack` from now on: its local
    /// address must be `stack`'s and its 4-tuple free there (else
    /// [`io::ErrorKind::AddrInUse`]); bytes that are not an exported connection are
    /// [`io::ErrorKind::InvalidData`]. The received bytes not yet read come first.
    pub fn import(stack: &Stack, bytes: &[u8]) -> io::Result<TcpStream> {
        unpack(bytes)?;
        let (tx, rx) = mpsc::sync_channel(1);
        stack.send(Command::Import(bytes.to_vec(), tx));
        let conn = answer(stack, rx)?;
        Ok(TcpStream::from_handle(Handle {
            stack: stack.clone(),
            conn,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::{Conn, Failure, Phase, export_conn, import_conn, pack, unpack};
    use crate::sim::{LinkConfig, StackPair};
    use crate::stack::{Stack, StackConfig};
    use std::net::Ipv4Addr;
    use std::time::Duration;

    const MAC_C: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_S: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const IP_C: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const IP_S: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// A handle holding bytes both ways (received and partly read; written past what
    /// the send buffer takes) moves to a new stack: the reader there gets the unread
    /// ones first, and the peer gets every written byte, in order.
    #[test]
    fn a_handles_unread_and_staged_bytes_travel_with_the_connection() {
        let mut pair = StackPair::new(
            7,
            StackConfig::new(MAC_C, IP_C, 24),
            StackConfig::new(MAC_S, IP_S, 24),
            LinkConfig::default(),
        );
        let (id, sid) = pair.connect(80, 16, Duration::from_secs(10));
        assert_eq!(pair.client.try_send(id, b"hello world"), Ok(11));
        pair.run_until(Duration::from_secs(10), |_, s| {
            s.connection(sid).is_some_and(|c| c.recv_available() == 11)
        });
        let remote = pair.server.connection(sid).unwrap().remote();
        let conn = Conn::new(remote, 1 << 24, false, Phase::Open, Some(sid));
        let mut st = conn.shared.lock();
        assert_eq!(pair.server.take_readable(sid, &mut st.rx), 11);
        let mut five = [0u8; 5];
        assert_eq!(st.read(&mut five).result.unwrap().unwrap(), 5);
        assert_eq!(&five, b"hello");
        let room = pair.server.connection(sid).unwrap().send_capacity();
        let written: Vec<u8> = (0..room + 1000).map(|i| (i % 251) as u8).collect();
        assert_eq!(st.tx.push(&written, written.len()), written.len());

        let (out, bytes) = export_conn(&mut pair.server, &mut st).expect("export");
        assert_eq!(out, sid);
        assert!(pair.server.connection(sid).is_none());
        assert_eq!((st.id, st.phase), (None, Phase::Closed));
        assert_eq!(st.failure, Some(Failure::Moved));
        assert_eq!(unpack(&bytes).unwrap().1.len(), 1000, "what did not fit");
        assert!(export_conn(&mut pair.server, &mut st).is_err(), "gone");
        drop(st);

        pair.server = Stack::new(StackConfig::new(MAC_S, IP_S, 24));
        let now = pair.now;
        let (nid, moved) = import_conn(&mut pair.server, now, &bytes, 1 << 20, false).unwrap();
        let again = import_conn(&mut pair.server, now, &bytes, 1 << 20, false);
        assert_eq!(
            again.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::AddrInUse)
        );
        let garbled = import_conn(&mut pair.server, now, b"MOV1", 1 << 20, false);
        assert_eq!(
            garbled.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::InvalidData)
        );
        let mut st = moved.shared.lock();
        assert_eq!((st.local.ip(), st.remote), (IP_S.into(), remote));
        assert_eq!(pair.server.take_readable(nid, &mut st.rx), 6);
        let mut rest = [0u8; 16];
        assert_eq!(st.read(&mut rest).result.unwrap().unwrap(), 6);
        assert_eq!(&rest[..6], b" world");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        pair.run_until(Duration::from_secs(60), |c, s| {
            s.send_ring(nid, &mut st.tx);
            while let Ok(n) = c.try_recv(id, &mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            got.len() >= written.len()
        });
        assert!(got == written, "the written bytes arrived changed");
    }

    #[test]
    fn a_moved_connection_unpacks_to_its_parts_and_a_cut_or_foreign_one_is_refused() {
        let bytes = pack(b"the tcb", b"staged");
        let (tcb, staged) = unpack(&bytes).unwrap();
        assert_eq!((tcb, staged), (&b"the tcb"[..], &b"staged"[..]));
        let empty = pack(b"", b"");
        let (tcb, staged) = unpack(&empty).unwrap();
        assert!(tcb.is_empty() && staged.is_empty());
        for cut in 0..12 {
            assert!(unpack(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut foreign = bytes.clone();
        foreign[0] = b'X';
        assert_eq!(
            unpack(&foreign).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
    }
}
