//! Moving a connection to another process's stack (a forked child that uses a
//! connection its parent accepted): [`TcpStream::export`] takes it out of this
//! stack whole, with the bytes its handle holds, and [`TcpStream::import`] takes
//! it in on another. See docs/PRELOAD.md, "Moving a connection between processes".
use super::shared::{Command, Failure};
use super::stream::Handle;
use super::{Stack, TcpStream};
use std::io;
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
    use super::{pack, unpack};

    #[test]
    fn a_moved_connection_unpacks_to_its_parts_and_a_cut_or_foreign_one_is_refused() {
        let bytes = pack(b"the tcb", b"staged");
        let (tcb, staged) = unpack(&bytes).unwrap();
        assert_eq!((tcb, staged), (&b"the tcb"[..], &b"staged"[..]));
        let (tcb, staged) = unpack(&pack(b"", b"")).unwrap();
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
