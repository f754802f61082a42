//! The stack: demultiplexes frames to connections by 4-tuple, runs ARP, ICMP, the
//! listeners (SYN queue, accept queue, SYN cookies) and the timers, and batches output.
//!
//! It is sans-IO like the TCP below it: [`Stack::poll`] is given `now` and a [`Device`].
mod arp;
mod stats;
mod timers;

pub use arp::ArpCache;
pub use stats::StackStats;

use crate::device::Device;
use crate::tcp::isn::IsnGenerator;
use crate::tcp::{self, Connection, Instant, State, TcpError};
use crate::wire::{
    self, ArpOp, ArpRepr, BROADCAST_MAC, Frame, IcmpRepr, Ipv4Info, MacAddr, TcpFlags, TcpOptions,
    TcpRepr, WireError,
};
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use timers::TimerHeap;

/// How the stack shares the link with the kernel (see DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressMode {
    /// The interface's own address; only our ports are steered to us.
    Shared,
    /// A second address the stack owns: it answers ARP and ICMP echo for it.
    Owned,
}

#[derive(Debug, Clone)]
pub struct StackConfig {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mode: AddressMode,
    /// Local ports for active opens (inclusive), outside the kernel's ephemeral range.
    pub port_range: (u16, u16),
    pub tcp: tcp::Config,
    pub max_connections: usize,
    /// Bound on half-open connections per listener; beyond it, SYN cookies.
    pub syn_backlog: usize,
    pub isn_key: [u8; 16],
    /// Where this process starts in the ephemeral port sequence (random per process).
    pub start_counter: u32,
    /// Which TCP checksums to accept: partial ones only where frames come from memory.
    pub checksum_policy: wire::ChecksumPolicy,
}

impl StackConfig {
    pub fn new(mac: MacAddr, ip: Ipv4Addr, prefix_len: u8) -> Self {
        StackConfig {
            mac,
            ip,
            prefix_len,
            gateway: None,
            mode: AddressMode::Owned,
            port_range: (61_000, 65_535),
            tcp: tcp::Config::default(),
            max_connections: 100_000,
            syn_backlog: 1024,
            isn_key: [0x5a; 16],
            start_counter: 0,
            checksum_policy: wire::ChecksumPolicy::Strict,
        }
    }
}

/// A handle to a connection. Stale handles (slot reused) are detected by the generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    slot: u32,
    generation: u32,
}

#[derive(Debug)]
struct Entry {
    conn: Connection,
    /// The application gave up the handle: free the slot once closed.
    released: bool,
    /// Half-open connection of this listener, not yet in its accept queue.
    listener: Option<u16>,
    dirty: bool,
    /// Queued in `ready` for the application.
    ready: bool,
    /// Waiting in `Stack::waiting` for the next hop's MAC address.
    parked: bool,
    timer: Option<Instant>,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

#[derive(Debug)]
struct Listener {
    backlog: usize,
    half_open: usize,
    accept_queue: VecDeque<ConnId>,
}

/// Frames the stack answers itself, queued during receive and sent after the batch.
#[derive(Debug)]
enum Control {
    Arp {
        eth_dst: MacAddr,
        arp: ArpRepr,
    },
    Tcp {
        ip_dst: Ipv4Addr,
        eth_dst: MacAddr,
        repr: TcpRepr<'static>,
    },
    EchoReply {
        ip_dst: Ipv4Addr,
        eth_dst: MacAddr,
        ident: u16,
        seq: u16,
        data: Vec<u8>,
    },
}

/// The low TSval bits of a cookie SYN-ACK that carry options, as in Linux.
const COOKIE_TS_MASK: u32 = 0x3f;
const COOKIE_WS_MASK: u32 = 0x0f;
/// Window scale bits meaning "no window scale" (valid shifts end at 14).
const COOKIE_NO_WS: u8 = 0x0f;
const COOKIE_SACK: u32 = 0x10;

/// How often stale ARP entries are swept.
const ARP_GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Segment sizes encodable in a SYN cookie (RFC 4987 section 3.6).
const COOKIE_MSS: [u16; 4] = [536, 1220, 1440, 1460];

pub struct Stack {
    cfg: StackConfig,
    isn: IsnGenerator,
    arp: ArpCache,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    by_tuple: HashMap<(SocketAddrV4, SocketAddrV4), usize>,
    listeners: HashMap<u16, Listener>,
    timers: TimerHeap,
    dirty: Vec<usize>,
    /// Connections with news for the application (segments arrived, timers fired).
    ready: Vec<ConnId>,
    control: Vec<Control>,
    /// Connections waiting for a next hop's MAC address, by next hop: an ARP frame wakes
    /// only those, never scans every slot.
    waiting: HashMap<Ipv4Addr, Vec<ConnId>>,
    /// The time of the current (or last) poll.
    now: Instant,
    /// Scratch list of addresses for ARP retries and failures.
    arp_scratch: Vec<Ipv4Addr>,
    /// Next sweep of stale ARP entries.
    arp_gc_at: Instant,
    /// IPv4 datagrams being reassembled, and the buffer a completed one lands in.
    fragments: wire::frag::Reassembler,
    reassembled: Vec<u8>,
    port_counter: u32,
    live: usize,
    /// Counters of connections already removed, so totals survive them.
    finished: tcp::ConnectionStats,
    pub stats: StackStats,
}

impl Stack {
    pub fn new(cfg: StackConfig) -> Self {
        // RFC 6056 algorithm 3 keeps a global counter; a process starts at a random
        // point of it, so runs do not all begin with the same port.
        let k = cfg.isn_key;
        let port_counter = u32::from_le_bytes([k[3], k[7], k[11], k[15]]) ^ cfg.start_counter;
        // Shared-IP mode never sees ARP replies (they go to the kernel), so entries it
        // learned from SYNs or the kernel must not expire; the bound still holds.
        let owned = cfg.mode == AddressMode::Owned;
        Stack {
            isn: IsnGenerator::new(cfg.isn_key),
            cfg,
            arp: ArpCache::new(owned),
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_tuple: HashMap::new(),
            listeners: HashMap::new(),
            timers: TimerHeap::default(),
            dirty: Vec::with_capacity(1024),
            ready: Vec::with_capacity(1024),
            control: Vec::with_capacity(64),
            waiting: HashMap::new(),
            now: Instant::ZERO,
            arp_scratch: Vec::new(),
            arp_gc_at: Instant::ZERO,
            fragments: wire::frag::Reassembler::default(),
            reassembled: Vec::new(),
            port_counter,
            live: 0,
            finished: tcp::ConnectionStats::default(),
            stats: StackStats::default(),
        }
    }

    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }
    pub fn ip(&self) -> Ipv4Addr {
        self.cfg.ip
    }
    pub fn arp_cache(&mut self) -> &mut ArpCache {
        &mut self.arp
    }
    pub fn connection_count(&self) -> usize {
        self.live
    }

    fn on_link(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.cfg.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.cfg.prefix_len))
        };
        u32::from(ip) & mask == u32::from(self.cfg.ip) & mask
    }

    /// The next hop for `dst`: on-link, else the gateway (RFC 1122 3.3.1).
    pub fn next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        if self.on_link(dst) {
            dst
        } else {
            self.cfg.gateway.unwrap_or(dst)
        }
    }

    // ---------------------------------------------------------------- application API

    /// Active open to `remote` from a port in the stack's range (RFC 6056 algorithm 3).
    pub fn connect(&mut self, now: Instant, remote: SocketAddrV4) -> Result<ConnId, StackError> {
        if self.live >= self.cfg.max_connections {
            return Err(StackError::TooManyConnections);
        }
        let (lo, hi) = self.cfg.port_range;
        let range = u32::from(hi - lo) + 1;
        let base = self.isn.hash(SocketAddrV4::new(self.cfg.ip, 0), remote, 0) as u32;
        for i in 0..range {
            let port = lo + ((base.wrapping_add(self.port_counter).wrapping_add(i)) % range) as u16;
            let local = SocketAddrV4::new(self.cfg.ip, port);
            if self.by_tuple.contains_key(&(local, remote)) || self.listeners.contains_key(&port) {
                continue;
            }
            self.port_counter = self.port_counter.wrapping_add(i + 1);
            let iss = self.isn.isn(now, local, remote);
            let mut conn = Connection::connect(self.cfg.tcp.clone(), local, remote, iss);
            conn.set_timestamp_offset(self.timestamp_offset(local, remote));
            return Ok(self.insert(conn, None));
        }
        Err(StackError::NoFreePort)
    }

    /// Timestamp clock offset for a pair of addresses (like Linux's secure_tcp_ts_off):
    /// unpredictable without the key, and the same for the same peer while the key is.
    fn timestamp_offset(&self, local: SocketAddrV4, remote: SocketAddrV4) -> u32 {
        let local = SocketAddrV4::new(*local.ip(), 0);
        let remote = SocketAddrV4::new(*remote.ip(), 0);
        self.isn.hash(local, remote, u64::from(u32::MAX)) as u32
    }

    /// Starts listening on `port` with an accept queue of `backlog`.
    pub fn listen(&mut self, port: u16, backlog: usize) -> Result<(), StackError> {
        if self.listeners.contains_key(&port) {
            return Err(StackError::PortInUse);
        }
        self.listeners.insert(
            port,
            Listener {
                backlog: backlog.max(1),
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

    pub fn listening_ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }

    pub fn accept(&mut self, port: u16) -> Option<ConnId> {
        self.listeners.get_mut(&port)?.accept_queue.pop_front()
    }

    fn entry(&self, id: ConnId) -> Option<&Entry> {
        let slot = self.slots.get(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.entry.as_ref()
    }

    fn entry_mut(&mut self, id: ConnId) -> Option<&mut Entry> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let entry = slot.entry.as_mut()?;
        if !entry.dirty {
            entry.dirty = true;
            self.dirty.push(id.slot as usize);
        }
        Some(entry)
    }

    pub fn connection(&self, id: ConnId) -> Option<&Connection> {
        self.entry(id).map(|e| &e.conn)
    }

    pub fn state(&self, id: ConnId) -> State {
        self.connection(id).map_or(State::Closed, |c| c.state())
    }

    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<usize, TcpError> {
        match self.entry_mut(id) {
            Some(e) => e.conn.send(data),
            None => Err(TcpError::Closed),
        }
    }

    pub fn recv(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, TcpError> {
        match self.entry_mut(id) {
            Some(e) => {
                let n = e.conn.recv(buf);
                if n == 0
                    && let Some(err) = e.conn.error()
                {
                    return Err(err);
                }
                Ok(n)
            }
            None => Err(TcpError::Closed),
        }
    }

    pub fn close(&mut self, id: ConnId) {
        if let Some(e) = self.entry_mut(id) {
            e.conn.close();
        }
    }

    pub fn abort(&mut self, id: ConnId) {
        if let Some(e) = self.entry_mut(id) {
            e.conn.abort();
        }
    }

    /// The application is done with `id`; the stack frees it once it is closed (after
    /// TIME-WAIT for an active closer).
    pub fn release(&mut self, id: ConnId) {
        let now = self.now;
        if let Some(e) = self.entry_mut(id) {
            e.released = true;
            // An orphan in FIN-WAIT-2 is reclaimed after tcp_fin_timeout (Linux).
            e.conn.orphan(now);
        }
    }

    /// Turns keep-alive on or off for `id` (SO_KEEPALIVE), with the idle time, interval
    /// and probe count of `StackConfig::tcp` unless set with [`Stack::set_keepalive_params`].
    pub fn set_keepalive(&mut self, id: ConnId, on: bool) {
        let now = self.now;
        if let Some(e) = self.entry_mut(id) {
            e.conn.set_keepalive(now, on);
        }
    }

    /// TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT for `id`.
    pub fn set_keepalive_params(
        &mut self,
        id: ConnId,
        idle: std::time::Duration,
        interval: std::time::Duration,
        count: u32,
    ) {
        if let Some(e) = self.entry_mut(id) {
            e.conn.set_keepalive_params(idle, interval, count);
        }
    }

    /// Gratuitous ARP for our address (owned-IP mode), so neighbours learn it at once.
    pub fn announce(&mut self) {
        let arp = self.arp_request(self.cfg.ip);
        self.control.push(Control::Arp {
            eth_dst: BROADCAST_MAC,
            arp,
        });
    }

    /// An ARP request from our address for `target_ip` (our own address: gratuitous ARP).
    fn arp_request(&self, target_ip: Ipv4Addr) -> ArpRepr {
        ArpRepr {
            op: ArpOp::Request,
            sender_mac: self.cfg.mac,
            sender_ip: self.cfg.ip,
            target_mac: [0; 6],
            target_ip,
        }
    }

    /// Sends an ARP request for `ip` unless one went out within the retry interval.
    pub fn request_arp(&mut self, now: Instant, ip: Ipv4Addr) {
        if self.arp.should_request(ip, now) {
            let arp = self.arp_request(ip);
            self.control.push(Control::Arp {
                eth_dst: BROADCAST_MAC,
                arp,
            });
            self.stats.arp_requests += 1;
        }
    }

    // ---------------------------------------------------------------- the poll loop

    fn insert(&mut self, conn: Connection, listener: Option<u16>) -> ConnId {
        let tuple = (conn.local(), conn.remote());
        let entry = Entry {
            conn,
            released: false,
            listener,
            dirty: true,
            ready: false,
            parked: false,
            timer: None,
        };
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        };
        self.slots[slot].entry = Some(entry);
        self.by_tuple.insert(tuple, slot);
        self.dirty.push(slot);
        self.live += 1;
        self.stats.connections_opened += 1;
        ConnId {
            slot: slot as u32,
            generation: self.slots[slot].generation,
        }
    }

    fn remove(&mut self, slot: usize) {
        if let Some(entry) = self.slots[slot].entry.take() {
            self.by_tuple
                .remove(&(entry.conn.local(), entry.conn.remote()));
            if let Some(port) = entry.listener
                && let Some(l) = self.listeners.get_mut(&port)
            {
                l.half_open = l.half_open.saturating_sub(1);
            }
            self.slots[slot].generation = self.slots[slot].generation.wrapping_add(1);
            self.free_slots.push(slot);
            self.live -= 1;
            self.stats.connections_closed += 1;
            self.finished.add(entry.conn.stats());
        }
    }

    /// Moves the connections with news for the application into `out` (cleared first).
    pub fn drain_ready(&mut self, out: &mut Vec<ConnId>) {
        out.clear();
        std::mem::swap(out, &mut self.ready);
        for id in out.iter() {
            if let Some(e) = self.slots[id.slot as usize].entry.as_mut() {
                e.ready = false;
            }
        }
    }

    fn mark_ready(&mut self, slot: usize) {
        let generation = self.slots[slot].generation;
        if let Some(e) = self.slots[slot].entry.as_mut()
            && !e.ready
        {
            e.ready = true;
            self.ready.push(ConnId {
                slot: slot as u32,
                generation,
            });
        }
    }

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(e) = self.slots[slot].entry.as_mut()
            && !e.dirty
        {
            e.dirty = true;
            self.dirty.push(slot);
        }
    }

    /// Whether the next [`Stack::poll`] has output to send whatever it receives: frames
    /// that found the TX ring full, or connections the application has given work.
    pub fn has_pending_output(&self) -> bool {
        !self.dirty.is_empty() || !self.control.is_empty()
    }

    /// The earliest time [`Stack::poll`] has timer work to do.
    pub fn poll_at(&self) -> Option<Instant> {
        let t = tcp::time::earliest(self.timers.next(), self.arp.next_retry());
        tcp::time::earliest(t, self.fragments.next_deadline())
    }

    /// One turn of the poll loop: a batch of received frames, due timers, then all output.
    /// Returns how many frames were received.
    pub fn poll(&mut self, now: Instant, device: &mut dyn Device) -> usize {
        self.now = now;
        self.arp.set_now(now);
        let received = device.receive(&mut |frame| self.process_frame(now, frame));
        self.stats.rx_frames += received as u64;
        while let Some((at, slot)) = self.timers.pop_due(now) {
            let Some(entry) = self.slots[slot].entry.as_mut() else {
                continue;
            };
            if entry.timer != Some(at) {
                continue; // replaced by an earlier entry; stale
            }
            entry.timer = None;
            // The deadline may have moved later since this entry was pushed (an ACK
            // restarted the RTO): then nothing is due and the entry is simply renewed.
            if entry.conn.poll_timeout().is_some_and(|t| t <= now) {
                entry.conn.handle_timeout(now);
                self.mark_ready(slot);
            }
            self.mark_dirty(slot);
        }
        if self.arp.next_retry().is_some_and(|t| t <= now) {
            self.arp_timers(now);
        }
        if self.fragments.next_deadline().is_some_and(|t| t <= now) {
            self.fragments.expire(now);
            self.sync_fragment_stats();
        }
        if now >= self.arp_gc_at {
            self.arp.expire(now);
            self.arp_gc_at = now + ARP_GC_INTERVAL;
        }
        self.dispatch(now, device);
        device.flush();
        received
    }

    fn process_frame(&mut self, now: Instant, frame: &[u8]) {
        let parsed = match wire::parse_frame_with(frame, self.cfg.checksum_policy) {
            Ok(parsed) => parsed,
            Err(WireError::Fragment) => return self.process_fragment(now, frame),
            Err(e) => return self.stats.count_wire_error(e),
        };
        self.stats.rx_partial_checksum += u64::from(parsed.partial_checksum);
        match parsed.frame {
            Frame::Arp(arp) => self.process_arp(arp),
            Frame::Tcp { eth_src, ip, tcp } => {
                if ip.dst != self.cfg.ip {
                    self.stats.not_for_us += 1;
                    return;
                }
                self.process_tcp(now, eth_src, ip, &tcp);
            }
            Frame::Icmp { eth_src, ip, icmp } => self.process_icmp(eth_src, ip, icmp),
        }
    }

    /// An IPv4 fragment (RFC 1122 3.3.2: a host MUST reassemble). The parser checked its
    /// header; a completed datagram goes through the normal path.
    fn process_fragment(&mut self, now: Instant, frame: &[u8]) {
        let mut packet = std::mem::take(&mut self.reassembled);
        let eth_src: MacAddr = frame[6..12].try_into().expect("6 bytes");
        let ip = &frame[wire::ETH_HEADER_LEN..];
        if self.fragments.add(now, ip, &mut packet) {
            match wire::parse_ipv4(eth_src, &packet, self.cfg.checksum_policy).map(|p| p.frame) {
                Err(e) => self.stats.count_wire_error(e),
                Ok(Frame::Tcp { eth_src, ip, tcp }) if ip.dst == self.cfg.ip => {
                    self.process_tcp(now, eth_src, ip, &tcp)
                }
                Ok(Frame::Icmp { eth_src, ip, icmp }) => self.process_icmp(eth_src, ip, icmp),
                Ok(_) => self.stats.not_for_us += 1,
            }
        }
        self.reassembled = packet;
        self.sync_fragment_stats();
    }

    fn sync_fragment_stats(&mut self) {
        let f = &self.fragments.stats;
        self.stats.ip_fragments = f.fragments;
        self.stats.ip_reassembled = f.reassembled;
        self.stats.ip_reassembly_timeouts = f.timeouts;
        self.stats.drop_ip_fragment = f.over_limit + f.malformed;
    }

    fn process_arp(&mut self, arp: ArpRepr) {
        if arp.target_ip != self.cfg.ip {
            self.stats.not_for_us += 1;
            return;
        }
        // RFC 826: learn the sender, then answer a request for our address.
        self.stats.arp_in += 1;
        self.arp_learned(arp.sender_ip, arp.sender_mac, false);
        if arp.op == ArpOp::Request && self.cfg.mode == AddressMode::Owned {
            self.control.push(Control::Arp {
                eth_dst: arp.sender_mac,
                arp: ArpRepr {
                    op: ArpOp::Reply,
                    sender_mac: self.cfg.mac,
                    sender_ip: self.cfg.ip,
                    target_mac: arp.sender_mac,
                    target_ip: arp.sender_ip,
                },
            });
        }
    }

    fn process_icmp(&mut self, eth_src: MacAddr, ip: Ipv4Info, icmp: IcmpRepr<'_>) {
        if ip.dst != self.cfg.ip {
            self.stats.not_for_us += 1;
            return;
        }
        match icmp {
            IcmpRepr::EchoRequest { ident, seq, data } if self.cfg.mode == AddressMode::Owned => {
                self.control.push(Control::EchoReply {
                    ip_dst: ip.src,
                    eth_dst: eth_src,
                    ident,
                    seq,
                    data: data.to_vec(),
                });
            }
            IcmpRepr::DestUnreachable {
                code,
                quoted_src,
                quoted_dst,
                quoted_src_port,
                quoted_dst_port,
                quoted_seq,
                next_hop_mtu,
            } => {
                self.stats.icmp_unreachable += 1;
                let key = (
                    SocketAddrV4::new(quoted_src, quoted_src_port),
                    SocketAddrV4::new(quoted_dst, quoted_dst_port),
                );
                if let Some(&slot) = self.by_tuple.get(&key) {
                    if let Some(e) = self.slots[slot].entry.as_mut() {
                        e.conn
                            .handle_icmp_unreachable(code, quoted_seq, next_hop_mtu);
                    }
                    self.mark_dirty(slot);
                    self.mark_ready(slot);
                }
            }
            _ => self.stats.icmp_ignored += 1,
        }
    }

    fn process_tcp(&mut self, now: Instant, eth_src: MacAddr, ip: Ipv4Info, seg: &TcpRepr<'_>) {
        let local = SocketAddrV4::new(ip.dst, seg.dst_port);
        let remote = SocketAddrV4::new(ip.src, seg.src_port);
        if let Some(&slot) = self.by_tuple.get(&(local, remote)) {
            let reopen = self.listeners.contains_key(&local.port())
                && self.slots[slot]
                    .entry
                    .as_ref()
                    .is_some_and(|e| e.conn.time_wait_accepts_syn(seg));
            if !reopen {
                if let Some(e) = self.slots[slot].entry.as_mut() {
                    e.conn.handle_segment(now, seg);
                }
                self.mark_dirty(slot);
                self.mark_ready(slot);
                return;
            }
            // RFC 9293 3.6.1 / RFC 6191: a new SYN with a higher sequence number or a
            // newer timestamp ends TIME-WAIT and opens a new connection (Linux's TCP_TW_SYN).
            self.stats.time_wait_reopened += 1;
            self.remove(slot);
        }
        if self.listeners.contains_key(&local.port()) {
            self.listener_input(now, eth_src, local, remote, seg);
            return;
        }
        // RFC 9293 3.10.7.1: a segment for a closed port gets a RST.
        self.stats.closed_port += 1;
        self.reply_rst(eth_src, local, remote, seg);
    }

    fn reply_rst(
        &mut self,
        eth_src: MacAddr,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        seg: &TcpRepr<'_>,
    ) {
        if seg.flags.rst {
            return;
        }
        let (seq, ack, flags) = if seg.flags.ack {
            (seg.ack, 0, TcpFlags::RST)
        } else {
            (0, seg.seq.wrapping_add(seg.seq_len()), TcpFlags::RST_ACK)
        };
        let repr = TcpRepr {
            src_port: local.port(),
            dst_port: remote.port(),
            seq,
            ack,
            flags,
            ..Default::default()
        };
        self.stats.rst_sent += 1;
        self.queue_tcp(remote, eth_src, repr);
    }

    /// A segment the stack answers without a connection (RST, cookie SYN-ACK), sent after the batch.
    fn queue_tcp(&mut self, remote: SocketAddrV4, eth_dst: MacAddr, repr: TcpRepr<'static>) {
        self.control.push(Control::Tcp {
            ip_dst: *remote.ip(),
            eth_dst,
            repr,
        });
    }

    /// Listen state (RFC 9293 3.10.7.2) with a bounded SYN queue and SYN cookies (RFC 4987).
    fn listener_input(
        &mut self,
        now: Instant,
        eth_src: MacAddr,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        seg: &TcpRepr<'_>,
    ) {
        if seg.flags.rst {
            return;
        }
        let port = local.port();
        if seg.flags.syn && !seg.flags.ack {
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
            self.learn_next_hop(*remote.ip(), eth_src);
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
            let options = self.cookie_options(seg, mss);
            self.stats.syn_cookies_accepted += 1;
            let syn = TcpRepr {
                src_port: remote.port(),
                dst_port: port,
                seq: seg.seq.wrapping_sub(1),
                flags: TcpFlags::SYN,
                window: seg.window,
                options,
                ..Default::default()
            };
            self.learn_next_hop(*remote.ip(), eth_src);
            let mut conn = Connection::accept(
                now,
                self.cfg.tcp.clone(),
                local,
                remote,
                seg.ack.wrapping_sub(1),
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
        self.stats.closed_port += 1;
        self.reply_rst(eth_src, local, remote, seg);
    }

    /// The frame that opened a connection came from the next hop back to its sender, so
    /// its source MAC answers for that hop. Needed in shared-IP mode, where ARP replies
    /// go to the kernel; the ARP cache is authoritative when it already has the hop.
    fn learn_next_hop(&mut self, remote: Ipv4Addr, eth_src: MacAddr) {
        let hop = self.next_hop(remote);
        if self.arp.lookup(hop).is_none() {
            self.arp_learned(hop, eth_src, true);
        }
    }

    /// A neighbour's address is known: remember it (if the bounded cache has room) and
    /// wake the connections waiting for it.
    fn arp_learned(&mut self, ip: Ipv4Addr, mac: MacAddr, wanted: bool) {
        let wanted = wanted || self.waiting.contains_key(&ip);
        if !self.arp.learn(ip, mac, wanted) {
            self.stats.arp_cache_full += 1;
        }
        for id in self.waiting.remove(&ip).unwrap_or_default() {
            if let Some(e) = self.entry_mut(id) {
                e.parked = false;
            }
        }
    }

    /// ARP retries that are due, and next hops that never answered: the connections
    /// waiting for them fail like Linux's on a failed neighbour (EHOSTUNREACH).
    fn arp_timers(&mut self, now: Instant) {
        let mut hops = std::mem::take(&mut self.arp_scratch);
        self.arp.due(now, &mut hops);
        for &hop in &hops {
            self.request_arp(now, hop);
        }
        hops.clear();
        self.arp.take_failed(now, &mut hops);
        for hop in hops.drain(..) {
            self.stats.arp_failures += 1;
            for id in self.waiting.remove(&hop).unwrap_or_default() {
                if let Some(e) = self.entry_mut(id) {
                    e.parked = false;
                    e.conn.neighbour_failed();
                }
                self.mark_ready(id.slot as usize);
            }
        }
        self.arp_scratch = hops;
    }

    fn cookie(
        &self,
        counter: u64,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        client_isn: u32,
        mss_index: u32,
    ) -> u32 {
        let hash = self
            .isn
            .hash(local, remote, counter << 32 | u64::from(client_isn)) as u32;
        ((counter as u32 & 0x1f) << 27) | (mss_index << 24) | (hash & 0x00ff_ffff)
    }

    fn cookie_counter(now: Instant) -> u64 {
        now.micros() / 64_000_000 // 64-second steps
    }

    fn send_cookie(
        &mut self,
        now: Instant,
        eth_src: MacAddr,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        seg: &TcpRepr<'_>,
    ) {
        let peer_mss = seg.options.mss.unwrap_or(536).min(self.cfg.tcp.mss);
        let index = COOKIE_MSS.iter().rposition(|&m| m <= peer_mss).unwrap_or(0) as u32;
        let isn = self.cookie(Self::cookie_counter(now), local, remote, seg.seq, index);
        let tcp = &self.cfg.tcp;
        let mut options = TcpOptions {
            mss: Some(COOKIE_MSS[index as usize]),
            ..Default::default()
        };
        // Like Linux (cookie_init_timestamp): with timestamps, the options the cookie
        // cannot hold ride in the low 6 bits of our TSval, which the peer echoes:
        // bits 0-3 its window scale (15: none), bit 4 SACK permitted.
        if tcp.timestamps
            && let Some((peer_tsval, _)) = seg.options.timestamps
        {
            let peer_ws = seg.options.window_scale.filter(|_| tcp.window_scaling);
            let sack = tcp.sack && seg.options.sack_permitted;
            let bits = u32::from(peer_ws.map_or(COOKIE_NO_WS, |w| w.min(14)))
                | if sack { COOKIE_SACK } else { 0 };
            let ts = (now.millis() as u32).wrapping_add(self.timestamp_offset(local, remote));
            let mut tsval = (ts & !COOKIE_TS_MASK) | bits;
            if tsval > ts {
                tsval = tsval.wrapping_sub(COOKIE_TS_MASK + 1); // never ahead of our clock
            }
            options.timestamps = Some((tsval, peer_tsval));
            options.sack_permitted = sack;
            options.window_scale = peer_ws.map(|_| tcp::receive_window_scale(tcp));
        }
        let repr = TcpRepr {
            src_port: local.port(),
            dst_port: remote.port(),
            seq: isn,
            ack: seg.seq.wrapping_add(1),
            flags: TcpFlags::SYN_ACK,
            window: tcp.recv_buffer.min(65535) as u16,
            options,
            payload: &[],
        };
        self.stats.syn_cookies_sent += 1;
        self.queue_tcp(remote, eth_src, repr);
    }

    /// The SYN options a cookie ACK stands for: the MSS from the cookie, and window
    /// scale, SACK and timestamps from the echoed TSval (see `send_cookie`).
    fn cookie_options(&self, seg: &TcpRepr<'_>, mss: u16) -> TcpOptions {
        let mut options = TcpOptions {
            mss: Some(mss),
            ..Default::default()
        };
        if let Some((tsval, tsecr)) = seg.options.timestamps
            && self.cfg.tcp.timestamps
        {
            let ws = (tsecr & COOKIE_WS_MASK) as u8;
            options.window_scale = (ws != COOKIE_NO_WS).then_some(ws);
            options.sack_permitted = tsecr & COOKIE_SACK != 0;
            options.timestamps = Some((tsval, 0));
        }
        options
    }

    fn check_cookie(
        &self,
        now: Instant,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        seg: &TcpRepr<'_>,
    ) -> Option<u16> {
        let cookie = seg.ack.wrapping_sub(1);
        let client_isn = seg.seq.wrapping_sub(1);
        let index = (cookie >> 24) & 0x3;
        let current = Self::cookie_counter(now);
        (0..2u64)
            .filter_map(|age| current.checked_sub(age))
            .any(|counter| self.cookie(counter, local, remote, client_isn, index) == cookie)
            .then_some(COOKIE_MSS[index as usize])
    }

    fn enqueue_accept(&mut self, port: u16, id: ConnId) {
        match self.listeners.get_mut(&port) {
            Some(l) if l.accept_queue.len() < l.backlog * 2 => l.accept_queue.push_back(id),
            _ => {
                self.stats.accept_overflows += 1;
                self.abort(id);
                self.release(id);
            }
        }
    }

    /// Sends the control frames, then lets every connection with work emit its segments:
    /// this is where one ACK comes to cover a whole received batch.
    fn dispatch(&mut self, now: Instant, device: &mut dyn Device) {
        let mac = self.cfg.mac;
        let ip = self.cfg.ip;
        for control in std::mem::take(&mut self.control) {
            let sent = device.transmit(&mut |buf| match &control {
                Control::Arp { eth_dst, arp } => wire::emit_arp(buf, *eth_dst, arp),
                Control::Tcp {
                    ip_dst,
                    eth_dst,
                    repr,
                } => wire::emit_tcp(buf, (mac, *eth_dst), (ip, *ip_dst), repr, 0, |_| {}),
                Control::EchoReply {
                    ip_dst,
                    eth_dst,
                    ident,
                    seq,
                    data,
                } => wire::emit_icmp_echo_reply(
                    buf,
                    (mac, *eth_dst),
                    (ip, *ip_dst),
                    *ident,
                    *seq,
                    data,
                ),
            });
            if sent {
                self.stats.tx_frames += 1;
            } else {
                self.stats.tx_ring_full += 1;
            }
        }

        let mut dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            let Some(entry) = self.slots[slot].entry.as_mut() else {
                continue;
            };
            entry.dirty = false;
            let remote_ip = *entry.conn.remote().ip();
            let closed = entry.conn.is_closed();
            let hop = self.next_hop(remote_ip);
            match self.arp.lookup(hop) {
                Some(dst_mac) => {
                    let entry = self.slots[slot]
                        .entry
                        .as_mut()
                        .expect("entry checked above");
                    let conn = &mut entry.conn;
                    loop {
                        let mut emitted = false;
                        let ok = device.transmit(&mut |buf| match conn.poll_transmit(now) {
                            Some(t) => {
                                emitted = true;
                                wire::emit_tcp(
                                    buf,
                                    (mac, dst_mac),
                                    (ip, remote_ip),
                                    &t.repr,
                                    t.payload_len,
                                    |dst| conn.copy_payload(t.payload_offset, dst),
                                )
                            }
                            None => 0,
                        });
                        if !ok {
                            self.stats.tx_ring_full += 1;
                            entry.dirty = true;
                            self.dirty.push(slot);
                            break;
                        }
                        if !emitted {
                            break;
                        }
                        self.stats.tx_frames += 1;
                    }
                }
                None if !closed => self.request_neighbour(now, hop, device, slot),
                None => {}
            }
            self.after_dispatch(slot);
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }

    /// Sends an ARP request for the next hop (rate-limited) and parks the connection.
    fn request_neighbour(
        &mut self,
        now: Instant,
        hop: Ipv4Addr,
        device: &mut dyn Device,
        slot: usize,
    ) {
        if self.arp.should_request(hop, now) {
            let arp = self.arp_request(hop);
            if device.transmit(&mut |buf| wire::emit_arp(buf, BROADCAST_MAC, &arp)) {
                self.stats.arp_requests += 1;
                self.stats.tx_frames += 1;
            }
        }
        // Park until the address is learned or fails (see `arp_timers`).
        let generation = self.slots[slot].generation;
        if let Some(e) = self.slots[slot].entry.as_mut()
            && !e.parked
        {
            e.parked = true;
            self.waiting.entry(hop).or_default().push(ConnId {
                slot: slot as u32,
                generation,
            });
        }
    }

    /// Bookkeeping after a connection had its turn: accept queue, timer, removal.
    fn after_dispatch(&mut self, slot: usize) {
        let generation = self.slots[slot].generation;
        let Some(entry) = self.slots[slot].entry.as_mut() else {
            return;
        };
        if let Some(port) = entry.listener
            && entry.conn.is_established()
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
        let Some(entry) = self.slots[slot].entry.as_mut() else {
            return;
        };
        if entry.conn.is_closed() && (entry.released || entry.listener.is_some()) {
            self.remove(slot);
            return;
        }
        // Push only when the deadline moves earlier than the entry already in the heap:
        // an RTO restarted by every ACK then costs no heap operation at all.
        if let Some(t) = entry.conn.poll_timeout()
            && entry.timer.is_none_or(|scheduled| t < scheduled)
        {
            entry.timer = Some(t);
            self.timers.schedule(t, slot);
        }
    }

    /// Per-connection counters summed over every connection so far (for `--stats`).
    pub fn connection_totals(&self) -> tcp::ConnectionStats {
        let mut total = self.finished.clone();
        for e in self.slots.iter().filter_map(|s| s.entry.as_ref()) {
            total.add(e.conn.stats());
        }
        total
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    #[error("too many connections")]
    TooManyConnections,
    #[error("no free local port")]
    NoFreePort,
    #[error("port already in use")]
    PortInUse,
}

#[cfg(test)]
mod rfc_tests;
#[cfg(test)]
mod tests;
