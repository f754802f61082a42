//! Connections moved between stacks (between processes: a forked child that uses a
//! connection its parent accepted). [`Stack::export`] takes a connection out whole,
//! with no FIN and no RST, and keeps its 4-tuple as moved for a while: segments that
//! still arrive for it here (before the switch steers it to its new stack) are dropped
//! and counted, not answered with the RST of RFC 9293 3.10.7.1, so the peer's
//! retransmissions reach the new stack. [`Stack::import`] takes it in.
use super::{ConnId, Stack, StackError};
use crate::tcp::{Connection, Instant, MoveError};
use std::net::SocketAddr;
use std::time::Duration;

/// How long a moved 4-tuple is remembered: far longer than the move takes.
pub(super) const MOVED_FOR: Duration = Duration::from_secs(10);
/// Moved 4-tuples remembered at most (the oldest go first).
const MOVED_MAX: usize = 4096;

/// Why a connection could not be taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The bytes are not a connection ([`MoveError`]).
    #[error(transparent)]
    Move(#[from] MoveError),
    /// Its local address is not this stack's, or its 4-tuple is taken here.
    #[error("the connection's address is not free on this stack")]
    AddressInUse,
    /// [`super::StackConfig::max_connections`] reached.
    #[error(transparent)]
    Stack(#[from] StackError),
}

impl Stack {
    /// Takes `id` out of this stack as bytes for [`Stack::import`] elsewhere: nothing is
    /// sent to the peer, and its segments arriving here later are dropped (see the
    /// module). `unread` are the bytes handed out and not read
    /// ([`Connection::export`]). On an error the connection stays.
    pub fn export(&mut self, id: ConnId, unread: &[u8]) -> Result<Vec<u8>, MoveError> {
        let now = self.now;
        let conn = self.connection(id).ok_or(MoveError::NotSynchronized)?;
        let bytes = conn.export(now, unread)?;
        let key = (conn.local(), conn.remote());
        self.remember_moved(key, now);
        self.remove(id.slot as usize);
        self.stats.connections_moved_out += 1;
        Ok(bytes)
    }

    /// A connection [`Stack::export`] gave, on this stack from now on.
    pub fn import(&mut self, now: Instant, bytes: &[u8]) -> Result<ConnId, ImportError> {
        if self.live >= self.cfg.max_connections {
            return Err(StackError::TooManyConnections.into());
        }
        let conn = Connection::import(now, self.cfg.tcp.clone(), bytes)?;
        let key = (conn.local(), conn.remote());
        let ours = match key.0.ip() {
            std::net::IpAddr::V4(ip) => ip == self.ip(),
            std::net::IpAddr::V6(ip) => Some(ip) == self.ipv6(),
        };
        if !ours || self.by_tuple.contains_key(&key) || self.claim_for_shard(key.0, key.1).is_err()
        {
            return Err(ImportError::AddressInUse);
        }
        self.moved.remove(&key);
        self.stats.connections_moved_in += 1;
        let id = self.insert(conn, None);
        self.mark_news(id.slot as usize);
        Ok(id)
    }

    fn remember_moved(&mut self, key: (SocketAddr, SocketAddr), now: Instant) {
        if self.moved.len() >= MOVED_MAX {
            self.moved.retain(|_, until| *until > now);
            if self.moved.len() >= MOVED_MAX
                && let Some(oldest) = self.moved.iter().min_by_key(|(_, u)| **u).map(|(k, _)| *k)
            {
                self.moved.remove(&oldest);
            }
        }
        self.moved.insert(key, now + MOVED_FOR);
    }

    /// A segment for a 4-tuple moved away (not a new SYN): dropped, counted.
    pub(super) fn moved_away(&mut self, key: &(SocketAddr, SocketAddr), syn_only: bool) -> bool {
        match self.moved.get(key) {
            Some(&until) if until > self.now && !syn_only => {
                self.stats.moved_away_dropped += 1;
                true
            }
            Some(_) => {
                self.moved.remove(key);
                false
            }
            None => false,
        }
    }
}
