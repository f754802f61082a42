//! What happened to a connection, as the application sees it: events instead of states,
//! and typed errors per operation (no data yet is not the same as end of stream).
use super::{ConnId, Stack};
use crate::tcp::{State, TcpError};

/// The events of one connection at this moment (level-triggered, like `poll(2)`).
///
/// [`Stack::drain_ready`] names the connections that may have new events; this says
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
            connected: conn.is_established() || (closed && error.is_none()),
            closed,
            error,
            read_closed,
        }
    }

    /// Reads in-order data of `id`: at least one byte, or why there is none.
    pub fn try_recv(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, RecvError> {
        match self.recv(id, buf)? {
            0 if buf.is_empty() => Ok(0),
            0 => match self.connection(id) {
                Some(c) if c.at_eof() => Err(RecvError::Finished),
                Some(c) if c.state() == State::Closed => {
                    Err(c.error().unwrap_or(TcpError::Closed).into())
                }
                Some(_) => Err(RecvError::WouldBlock),
                None => Err(TcpError::Closed.into()),
            },
            n => Ok(n),
        }
    }

    /// Queues data on `id`: how much fit, at least one byte, or why none did.
    pub fn try_send(&mut self, id: ConnId, data: &[u8]) -> Result<usize, SendError> {
        match self.send(id, data)? {
            0 if !data.is_empty() => Err(SendError::WouldBlock),
            n => Ok(n),
        }
    }

    /// Turns Nagle's algorithm off (`true`) or on for `id`.
    pub fn set_nodelay(&mut self, id: ConnId, nodelay: bool) {
        if let Some(e) = self.entry_mut(id) {
            e.conn.set_nodelay(nodelay);
        }
    }
}
