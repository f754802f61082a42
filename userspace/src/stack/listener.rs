//! Listeners: the listen state (RFC 9293 3.10.7.2), a bounded SYN queue (half-open
//! connections, counted per listener) and the accept queue. A full SYN queue answers
//! with SYN cookies (see `cookies.rs`).
use super::{ConnId, Stack, StackError};
use crate::tcp::{Connection, Instant};
use crate::wire::{MacAddr, TcpFlags, TcpRepr};
use std::collections::VecDeque;
use std::net::SocketAddr;

/// A listening port: its accept queue and how many of its connections are half-open.
#[derive(Debug)]
pub(super) struct Listener {
    pub(super) backlog: usize,
    /// The families it takes connections of: (IPv4, IPv6).
    pub(super) families: (bool, bool),
    /// Connections in the SYN queue: not yet synchronized, not in the accept queue.
    pub(super) half_open: usize,
    pub(super) accept_queue: VecDeque<ConnId>,
}

impl Stack {
    /// Starts listening on `port` with an accept queue of `backlog`, for both families
    /// (as a Linux socket bound to `[::]` with IPV6_V6ONLY off).
    pub fn listen(&mut self, port: u16, backlog: usize) -> Result<(), StackError> {
        self.listen_families(port, backlog, true, true)
    }

    /// [`Stack::listen`] for IPv4 peers, IPv6 peers or both: a socket bound to 0.0.0.0
    /// takes IPv4 only, one bound to an IPv6 address (or with IPV6_V6ONLY) IPv6 only. A
    /// segment of the other family finds the port closed (RFC 9293 3.10.7.1).
    pub fn listen_families(
        &mut self,
        port: u16,
        backlog: usize,
        ipv4: bool,
        ipv6: bool,
    ) -> Result<(), StackError> {
        if self.listeners.contains_key(&port) {
            return Err(StackError::PortInUse);
        }
        self.listeners.insert(
            port,
            Listener {
                backlog: backlog.max(1),
                families: (ipv4, ipv6),
                half_open: 0,
                accept_queue: VecDeque::new(),
            },
        );
        Ok(())
    }

    /// Stops listening; queued connections not yet accepted are aborted.
    pub fn unlisten(&mut self, port: u16) {
        if let Some(l) = self.listeners.remove(&port) {
            for id in l.accept_queue {
                self.abort(id);
                self.release(id);
            }
        }
    }

    /// The ports listened on.
    pub fn listening_ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }

    /// The next established connection on `port`'s accept queue.
    pub fn accept(&mut self, port: u16) -> Option<ConnId> {
        self.listeners.get_mut(&port)?.accept_queue.pop_front()
    }

    /// Listen state (RFC 9293 3.10.7.2) with a bounded SYN queue and SYN cookies (RFC 4987).
    pub(super) fn listener_input(
        &mut self,
        now: Instant,
        eth_src: MacAddr,
        local: SocketAddr,
        remote: SocketAddr,
        seg: &TcpRepr<'_>,
    ) {
        if seg.flags.rst {
            return;
        }
        let port = local.port();
        if seg.flags.syn && !seg.flags.ack {
            // Sharded stacks: a SYN retransmitted onto another stack's queue belongs to
            // the stack that has the connection already (it answers with its SYN-ACK).
            if let Some(owner) = self.owned_by_another_shard(local, remote) {
                self.unmatched = Some(owner);
                return;
            }
            if self.live >= self.cfg.max_connections {
                self.stats.listen_drops += 1;
                return;
            }
            let listener = &self.listeners[&port];
            if listener.accept_queue.len() >= listener.backlog {
                // Linux (tcp_conn_request): a full accept queue drops the SYN; the
                // client retransmits it. Cookies would only pile more onto the queue.
                self.stats.listen_overflows += 1;
                return;
            }
            if listener.half_open >= self.cfg.syn_backlog {
                self.send_cookie(now, eth_src, local, remote, seg);
                return;
            }
            if let Err(owner) = self.claim_for_shard(local, remote) {
                self.unmatched = Some(owner);
                return;
            }
            self.learn_next_hop(remote.ip(), eth_src);
            let iss = self.isn.isn(now, local, remote);
            let mut conn = Connection::accept(now, self.cfg.tcp.clone(), local, remote, iss, seg);
            conn.set_timestamp_offset(self.timestamp_offset(local, remote));
            self.insert(conn, Some(port));
            if let Some(l) = self.listeners.get_mut(&port) {
                l.half_open += 1;
            }
            return;
        }
        if seg.flags.ack
            && !seg.flags.syn
            && let Some(mss) = self.check_cookie(now, local, remote, seg)
        {
            if let Err(owner) = self.claim_for_shard(local, remote) {
                self.unmatched = Some(owner);
                return;
            }
            let options = self.cookie_options(seg, mss);
            self.stats.syn_cookies_accepted += 1;
            let syn = TcpRepr {
                src_port: remote.port(),
                dst_port: port,
                seq: seg.seq - 1u32,
                flags: TcpFlags::SYN,
                window: seg.window,
                options,
                ..Default::default()
            };
            self.learn_next_hop(remote.ip(), eth_src);
            let mut conn = Connection::accept(
                now,
                self.cfg.tcp.clone(),
                local,
                remote,
                seg.ack.unwrap_or_default().0.wrapping_sub(1),
                &syn,
            );
            conn.set_timestamp_offset(self.timestamp_offset(local, remote));
            conn.mark_syn_sent(now);
            conn.handle_segment(now, seg);
            let id = self.insert(conn, None);
            self.enqueue_accept(port, id);
            return;
        }
        if !seg.flags.ack {
            // RFC 9293 3.10.7.2: any other segment without ACK is dropped.
            self.stats.listen_drops += 1;
            return;
        }
        self.no_connection(eth_src, local, remote, seg);
    }

    /// Queues an established connection for `accept`; past twice the backlog it is
    /// reset instead (counted in `accept_overflows`).
    pub(super) fn enqueue_accept(&mut self, port: u16, id: ConnId) {
        match self.listeners.get_mut(&port) {
            Some(l) if l.accept_queue.len() < l.backlog * 2 => l.accept_queue.push_back(id),
            _ => {
                self.stats.accept_overflows += 1;
                self.abort(id);
                self.release(id);
            }
        }
    }

    /// A half-open connection of a listener that completed its handshake leaves the SYN
    /// queue for the accept queue.
    pub(super) fn promote_if_synchronized(&mut self, slot: usize) {
        let generation = self.slots[slot].generation;
        let Some(entry) = self.slots[slot].entry.as_mut() else {
            return;
        };
        if let Some(port) = entry.listener
            && entry.conn.is_synchronized()
        {
            entry.listener = None;
            if let Some(l) = self.listeners.get_mut(&port) {
                l.half_open = l.half_open.saturating_sub(1);
            }
            self.enqueue_accept(
                port,
                ConnId {
                    slot: slot as u32,
                    generation,
                },
            );
        }
    }
}
