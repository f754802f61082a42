//! The stack: demultiplexes frames to connections by 4-tuple over IPv4 and IPv6, runs
//! ARP, NDP (with duplicate address detection), ICMP and ICMPv6, the
//! listeners (SYN queue and accept queue in `listener.rs`, SYN cookies in `cookies.rs`)
//! and the timers, and batches output.
//!
//! It is sans-IO like the TCP below it: [`Stack::poll`] is given `now` and a [`Device`].
mod arp;
mod cookies;
mod events;
mod listener;
mod moves;
mod stats;
mod timers;

pub use arp::{ArpCache, NdpCache, NeighbourCache};
pub use events::{Events, RecvError, SendError};
pub use moves::ImportError;
pub use stats::StackStats;

use crate::device::Device;
use crate::tcp::isn::IsnGenerator;
use crate::tcp::{self, Connection, Instant, SeqNum, State};
use crate::wire::{
    self, ArpOp, ArpRepr, BROADCAST_MAC, Frame, IcmpRepr, Icmpv6Repr, Ipv4Info, Ipv6Info, MacAddr,
    NdpRepr, TcpFlags, TcpRepr, WireError,
};
use listener::Listener;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use timers::TimerHeap;

/// How the stack shares the link with the kernel (see DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressMode {
    /// The interface's own address; only our ports are steered to us.
    Shared,
    /// A second address the stack owns: it answers ARP, NDP and ICMP echo for it.
    Owned,
}

/// Where the stack's IPv6 address stands (RFC 4862 section 5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6State {
    /// The stack has no IPv6 address.
    None,
    /// Duplicate address detection runs: the address is not used yet.
    Tentative,
    /// The address is in use.
    Ready,
    /// Another node on the link has the address (RFC 4862 5.4.5): it is never used.
    Duplicate,
}

/// RFC 4861 section 10: RetransTimer, the wait for an answer to a DAD solicitation
/// (DupAddrDetectTransmits = 1, RFC 4862 5.1).
pub const DAD_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Most destinations with a route of their own (see [`Stack::set_route`]).
pub const MAX_ROUTES: usize = 4096;

/// How a [`Stack`] is set up: addresses, mode, ports, limits and the TCP settings.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Our Ethernet address.
    pub mac: MacAddr,
    /// Our IPv4 address.
    pub ip: Ipv4Addr,
    /// Prefix length of our subnet (destinations in it are on-link).
    pub prefix_len: u8,
    /// Our IPv6 address, if the stack speaks IPv6 (global or link-local).
    pub ipv6: Option<Ipv6Addr>,
    /// Prefix length of our IPv6 subnet (destinations in it are on-link).
    pub ipv6_prefix_len: u8,
    /// The IPv6 router for destinations off our subnet (often link-local).
    pub gateway6: Option<Ipv6Addr>,
    /// The router for destinations off our subnet.
    pub gateway: Option<Ipv4Addr>,
    /// The gateway was chosen by the user: it serves every destination off the subnet,
    /// and the host's routes are not asked (see [`Stack::set_route`]).
    pub gateway_fixed: bool,
    /// Shared-IP or owned-IP mode.
    pub mode: AddressMode,
    /// Local ports for active opens (inclusive), outside the kernel's ephemeral range.
    pub port_range: (u16, u16),
    /// Settings for every connection.
    pub tcp: tcp::Config,
    /// Most connections held at once (active, half-open and closing).
    pub max_connections: usize,
    /// Bound on half-open connections per listener; beyond it, SYN cookies.
    pub syn_backlog: usize,
    /// Secret for ISNs, ephemeral ports, timestamp offsets and SYN cookies (RFC 6528).
    pub isn_key: [u8; 16],
    /// Where this process starts in the ephemeral port sequence (random per process).
    pub start_counter: u32,
    /// Which TCP checksums to accept: partial ones only where frames come from memory.
    pub checksum_policy: wire::ChecksumPolicy,
}

impl StackConfig {
    /// A configuration with the CLI's defaults and a fresh random key for ISNs, ports,
    /// timestamp offsets and SYN cookies (RFC 6528). Owned-IP mode, no gateway.
    pub fn new(mac: MacAddr, ip: Ipv4Addr, prefix_len: u8) -> Self {
        Self::with_key(mac, ip, prefix_len, random_bytes())
    }

    /// [`StackConfig::new`] with a chosen key and port starting point 0: deterministic,
    /// for tests and fuzzing. Never use a fixed key on a real link.
    pub fn with_key(mac: MacAddr, ip: Ipv4Addr, prefix_len: u8, isn_key: [u8; 16]) -> Self {
        StackConfig {
            mac,
            ip,
            prefix_len,
            ipv6: None,
            ipv6_prefix_len: 64,
            gateway6: None,
            gateway: None,
            gateway_fixed: false,
            mode: AddressMode::Owned,
            port_range: (61_000, 65_535),
            tcp: tcp::Config::default(),
            max_connections: 100_000,
            syn_backlog: 1024,
            isn_key,
            start_counter: 0,
            checksum_policy: wire::ChecksumPolicy::Strict,
        }
    }
}

/// Fresh random bytes from the kernel (for keys and starting points, not the hot path).
/// Should /dev/urandom be unreadable, std's per-process random hash keys stand in.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Read;
    let mut out = [0u8; N];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .is_err()
    {
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let mut h = std::hash::RandomState::new().build_hasher();
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
        }
    }
    out
}

/// Sharded stacks (one per group of RX queues): which stack owns each connection. Touched once when a connection opens and once when it goes, never
/// per packet.
#[derive(Debug, Default)]
pub struct ShardDirectory {
    owners: std::sync::Mutex<HashMap<(SocketAddr, SocketAddr), usize>>,
}

impl ShardDirectory {
    /// Records `key` as stack `me`'s if nobody has it; `Err(owner)` if another has it.
    fn claim(&self, key: (SocketAddr, SocketAddr), me: usize) -> Result<(), usize> {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        match *owners.entry(key).or_insert(me) {
            owner if owner == me => Ok(()),
            owner => Err(owner),
        }
    }

    /// The stack that has `key`, if any.
    fn owner(&self, key: (SocketAddr, SocketAddr)) -> Option<usize> {
        let owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        owners.get(&key).copied()
    }

    /// Forgets `key` if it is `me`'s.
    fn release(&self, key: (SocketAddr, SocketAddr), me: usize) {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        if owners.get(&key) == Some(&me) {
            owners.remove(&key);
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
    /// Queued in `Stack::needs_output`: the connection may have segments to send.
    needs_output: bool,
    /// Queued in `Stack::app_news`: the connection has news for the application.
    has_news: bool,
    /// Waiting in `Stack::waiting` for the next hop's MAC address.
    parked: bool,
    timer: Option<Instant>,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

/// Frames the stack sends without a connection (ARP requests and replies, RSTs and
/// cookie SYN-ACKs, echo replies), queued during receive and sent after the batch.
#[derive(Debug)]
enum StatelessFrame {
    Arp {
        eth_dst: MacAddr,
        arp: ArpRepr,
    },
    Tcp {
        ip_dst: IpAddr,
        eth_dst: MacAddr,
        repr: TcpRepr<'static>,
    },
    Ndp {
        ip_src: Ipv6Addr,
        ip_dst: Ipv6Addr,
        eth_dst: MacAddr,
        ndp: NdpRepr,
    },
    EchoReply {
        ip_dst: IpAddr,
        eth_dst: MacAddr,
        ident: u16,
        seq: u16,
        data: Vec<u8>,
    },
}

/// How often stale ARP entries are swept.
const ARP_GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The sans-IO stack: connections, listeners, ARP and timers over a [`Device`], driven
/// by [`Stack::poll`]. It never reads a clock: time is passed in.
pub struct Stack {
    cfg: StackConfig,
    isn: IsnGenerator,
    arp: ArpCache,
    ndp: NdpCache,
    /// Our IPv6 address's duplicate address detection: its state, and when the wait
    /// ends (`None` before the solicitation went out).
    ipv6_state: Ipv6State,
    dad_until: Option<Instant>,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    by_tuple: HashMap<(SocketAddr, SocketAddr), usize>,
    listeners: HashMap<u16, Listener>,
    timers: TimerHeap,
    /// Connections that may have segments to send, emitted at the end of the poll.
    needs_output: Vec<usize>,
    /// Connections with news for the application (segments arrived, timers fired).
    app_news: Vec<ConnId>,
    /// Frames to send that belong to no connection.
    stateless: Vec<StatelessFrame>,
    /// Connections waiting for a next hop's MAC address, by next hop: an ARP frame wakes
    /// only those, never scans every slot.
    waiting: HashMap<IpAddr, Vec<ConnId>>,
    /// The time of the current (or last) poll.
    now: Instant,
    /// Scratch list of addresses for ARP retries and failures.
    arp_scratch: Vec<Ipv4Addr>,
    ndp_scratch: Vec<Ipv6Addr>,
    /// Next hops the host's routing table gave for single destinations (see
    /// [`Stack::set_route`]); they come before the subnet and the gateway.
    routes: HashMap<Ipv4Addr, Ipv4Addr>,
    routes6: HashMap<Ipv6Addr, Ipv6Addr>,
    /// Next sweep of stale ARP entries.
    arp_gc_at: Instant,
    /// IPv4 datagrams being reassembled, and the buffer a completed one lands in.
    fragments: wire::frag::Reassembler,
    reassembled: Vec<u8>,
    port_counter: u32,
    live: usize,
    /// Counters of connections already removed, so totals survive them.
    finished: tcp::ConnectionStats,
    /// Sharded stacks (see [`Stack::join_shards`]): frames of connections another stack
    /// has, each with that stack's index, kept for it.
    strays: Vec<(usize, Vec<u8>)>,
    /// Sharded stacks: which stack owns each connection, and our index.
    shards: Option<(std::sync::Arc<ShardDirectory>, usize)>,
    /// The segment just processed belongs to this other stack's connection.
    unmatched: Option<usize>,
    /// The frame being processed was handed over by another stack.
    handed_over: bool,
    /// 4-tuples of connections exported to another stack, until when their segments
    /// are dropped here (see `moves.rs`).
    moved: HashMap<(SocketAddr, SocketAddr), Instant>,
    /// Stack-wide counters.
    pub stats: StackStats,
}

impl Stack {
    /// A stack with no connection and no listener.
    pub fn new(cfg: StackConfig) -> Self {
        // RFC 6056 algorithm 3 keeps a global counter; a process starts at a random
        // point of it, so runs do not all begin with the same port.
        let k = cfg.isn_key;
        let port_counter = u32::from_le_bytes([k[3], k[7], k[11], k[15]]) ^ cfg.start_counter;
        // Shared-IP mode never sees ARP replies (they go to the kernel), so entries it
        // learned from SYNs or the kernel must not expire; the bound still holds.
        let owned = cfg.mode == AddressMode::Owned;
        // RFC 4862 5.4: an address we own is tentative until DAD ends; the kernel's own
        // address (shared mode) went through the kernel's DAD.
        let ipv6_state = match (cfg.ipv6, cfg.mode) {
            (None, _) => Ipv6State::None,
            (Some(_), AddressMode::Owned) => Ipv6State::Tentative,
            (Some(_), AddressMode::Shared) => Ipv6State::Ready,
        };
        Stack {
            isn: IsnGenerator::new(cfg.isn_key),
            cfg,
            arp: ArpCache::new(owned),
            ndp: NdpCache::new(owned),
            ipv6_state,
            dad_until: None,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_tuple: HashMap::new(),
            listeners: HashMap::new(),
            timers: TimerHeap::default(),
            needs_output: Vec::with_capacity(1024),
            app_news: Vec::with_capacity(1024),
            stateless: Vec::with_capacity(64),
            waiting: HashMap::new(),
            now: Instant::ZERO,
            arp_scratch: Vec::new(),
            ndp_scratch: Vec::new(),
            routes: HashMap::new(),
            routes6: HashMap::new(),
            arp_gc_at: Instant::ZERO,
            fragments: wire::frag::Reassembler::default(),
            reassembled: Vec::new(),
            port_counter,
            live: 0,
            finished: tcp::ConnectionStats::default(),
            strays: Vec::new(),
            shards: None,
            unmatched: None,
            handed_over: false,
            moved: HashMap::new(),
            stats: StackStats::default(),
        }
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }
    /// Our IPv4 address.
    pub fn ip(&self) -> Ipv4Addr {
        self.cfg.ip
    }
    /// Our IPv6 address, if the stack has one (usable once [`Stack::ipv6_state`] is
    /// `Ready`).
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.cfg.ipv6
    }
    /// Where our IPv6 address stands (duplicate address detection, RFC 4862 5.4).
    pub fn ipv6_state(&self) -> Ipv6State {
        self.ipv6_state
    }
    /// The ARP cache (callers may seed it, e.g. from the kernel's neighbour table).
    pub fn arp_cache(&mut self) -> &mut ArpCache {
        &mut self.arp
    }
    /// The IPv6 neighbour cache (NDP).
    pub fn ndp_cache(&mut self) -> &mut NdpCache {
        &mut self.ndp
    }
    /// Connections held now, closing ones included.
    pub fn connection_count(&self) -> usize {
        self.live
    }

    /// The (local, remote) addresses of every connection whose peer may wait on us: our
    /// FIN not sent or not acknowledged yet (SYN-SENT too: listed from the first SYN, a
    /// connection needs no state change to be known). Not FIN-WAIT-2 (the peer has our
    /// FIN), TIME-WAIT or closed.
    pub fn connection_addresses(&self) -> impl Iterator<Item = (SocketAddr, SocketAddr)> + '_ {
        self.slots.iter().filter_map(|slot| {
            let conn = &slot.entry.as_ref()?.conn;
            (!matches!(
                conn.state(),
                State::FinWait2 | State::TimeWait | State::Closed
            ))
            .then(|| (conn.local(), conn.remote()))
        })
    }

    fn on_link(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.cfg.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.cfg.prefix_len))
        };
        u32::from(ip) & mask == u32::from(self.cfg.ip) & mask
    }

    fn on_link6(&self, ip: Ipv6Addr) -> bool {
        // RFC 4861 5.2: link-local destinations are always on the link.
        if ip.is_unicast_link_local() {
            return true;
        }
        let Some(ours) = self.cfg.ipv6 else {
            return false;
        };
        let bits = u32::from(self.cfg.ipv6_prefix_len.min(128));
        let mask = if bits == 0 {
            0
        } else {
            u128::MAX << (128 - bits)
        };
        u128::from(ip) & mask == u128::from(ours) & mask
    }

    /// The IPv6 next hop for `dst`: the route set for it, else on-link, else the
    /// default router (RFC 4861 5.2, conceptual sending algorithm).
    pub fn next_hop6(&self, dst: Ipv6Addr) -> Ipv6Addr {
        if let Some(hop) = self.routes6.get(&dst) {
            *hop
        } else if self.on_link6(dst) {
            dst
        } else {
            self.cfg.gateway6.unwrap_or(dst)
        }
    }

    /// The next hop for `dst` in its family.
    pub fn next_hop_ip(&self, dst: IpAddr) -> IpAddr {
        match dst {
            IpAddr::V4(d) => IpAddr::V4(self.next_hop(d)),
            IpAddr::V6(d) => IpAddr::V6(self.next_hop6(d)),
        }
    }

    /// The Ethernet address of the neighbour `hop` (either family), if known.
    pub fn neighbour_mac(&self, hop: IpAddr) -> Option<MacAddr> {
        match hop {
            IpAddr::V4(h) => self.arp.lookup(h),
            IpAddr::V6(h) => self.ndp.lookup(h),
        }
    }

    /// The next hop for `dst`: the route set for it, else on-link, else the gateway
    /// (RFC 1122 3.3.1).
    pub fn next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        if let Some(hop) = self.routes.get(&dst) {
            *hop
        } else if self.on_link(dst) {
            dst
        } else {
            self.cfg.gateway.unwrap_or(dst)
        }
    }

    /// Sends to `dst` through `hop` (`dst` itself for a destination on the link): the
    /// host's route for it, which may be more specific than the subnet and the gateway
    /// (RFC 1122 3.3.1.2). At most [`MAX_ROUTES`] are kept; past that the table
    /// starts afresh and routes are set again as destinations come.
    /// Both addresses are of one family; a mixed pair is ignored.
    pub fn set_route(&mut self, dst: impl Into<IpAddr>, hop: impl Into<IpAddr>) {
        match (dst.into(), hop.into()) {
            (IpAddr::V4(dst), IpAddr::V4(hop)) => {
                if self.routes.len() >= MAX_ROUTES && !self.routes.contains_key(&dst) {
                    self.routes.clear();
                }
                self.routes.insert(dst, hop);
            }
            (IpAddr::V6(dst), IpAddr::V6(hop)) => {
                if self.routes6.len() >= MAX_ROUTES && !self.routes6.contains_key(&dst) {
                    self.routes6.clear();
                }
                self.routes6.insert(dst, hop);
            }
            _ => {}
        }
    }

    /// Whether a route for `dst` was set with [`Stack::set_route`].
    pub fn has_route(&self, dst: impl Into<IpAddr>) -> bool {
        match dst.into() {
            IpAddr::V4(d) => self.routes.contains_key(&d),
            IpAddr::V6(d) => self.routes6.contains_key(&d),
        }
    }

    // ---------------------------------------------------------------- application API

    /// Our address in `remote`'s family: `Err` when the stack has no usable one.
    fn local_ip_for(&self, remote: IpAddr) -> Result<IpAddr, StackError> {
        match remote {
            // An IPv6-only stack has 0.0.0.0 for its IPv4 address.
            IpAddr::V4(_) if self.cfg.ip.is_unspecified() => Err(StackError::NoAddress),
            IpAddr::V4(_) => Ok(IpAddr::V4(self.cfg.ip)),
            IpAddr::V6(_) => match (self.cfg.ipv6, self.ipv6_state) {
                (Some(ip), Ipv6State::Ready) => Ok(IpAddr::V6(ip)),
                (Some(_), Ipv6State::Tentative) => Err(StackError::AddressTentative),
                (Some(_), Ipv6State::Duplicate) => Err(StackError::DuplicateAddress),
                _ => Err(StackError::NoAddress),
            },
        }
    }

    /// Active open to `remote` (IPv4 or IPv6) from a port in the stack's range (RFC 6056
    /// algorithm 3).
    pub fn connect(
        &mut self,
        now: Instant,
        remote: impl Into<SocketAddr>,
    ) -> Result<ConnId, StackError> {
        let remote = remote.into();
        let local_ip = self.active_open_ip(remote)?;
        let (lo, hi) = self.cfg.port_range;
        let range = u32::from(hi - lo) + 1;
        let base = self.isn.hash(SocketAddr::new(local_ip, 0), remote, 0) as u32;
        for i in 0..range {
            let port = lo + ((base.wrapping_add(self.port_counter).wrapping_add(i)) % range) as u16;
            let local = SocketAddr::new(local_ip, port);
            if self.by_tuple.contains_key(&(local, remote))
                || self.listeners.contains_key(&port)
                || self.claim_for_shard(local, remote).is_err()
            {
                continue;
            }
            self.port_counter = self.port_counter.wrapping_add(i + 1);
            return Ok(self.open_active(now, local, remote));
        }
        Err(StackError::NoFreePort)
    }

    /// Active open to `remote` from `port`, one the application bound first (bind(2)
    /// then connect(2)): `NoFreePort` (EADDRNOTAVAIL, as Linux's `__inet_hash_connect`)
    /// when that pair of addresses is taken.
    pub fn connect_from(
        &mut self,
        now: Instant,
        port: u16,
        remote: impl Into<SocketAddr>,
    ) -> Result<ConnId, StackError> {
        let remote = remote.into();
        let local = SocketAddr::new(self.active_open_ip(remote)?, port);
        if self.by_tuple.contains_key(&(local, remote))
            || self.claim_for_shard(local, remote).is_err()
        {
            return Err(StackError::NoFreePort);
        }
        Ok(self.open_active(now, local, remote))
    }

    /// Our address for an active open to `remote`, if the stack may open one more.
    fn active_open_ip(&self, remote: SocketAddr) -> Result<IpAddr, StackError> {
        if self.live >= self.cfg.max_connections {
            return Err(StackError::TooManyConnections);
        }
        self.local_ip_for(remote.ip())
    }

    /// The SYN-SENT connection between `local` and `remote` (RFC 9293 3.10.1).
    fn open_active(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr) -> ConnId {
        let iss = self.isn.isn(now, local, remote);
        let mut conn = Connection::connect(self.cfg.tcp.clone(), local, remote, iss);
        conn.set_timestamp_offset(self.timestamp_offset(local, remote));
        self.insert(conn, None)
    }

    /// Timestamp clock offset for a pair of addresses (like Linux's secure_tcp_ts_off):
    /// unpredictable without the key, and the same for the same peer while the key is.
    fn timestamp_offset(&self, local: SocketAddr, remote: SocketAddr) -> u32 {
        let local = SocketAddr::new(local.ip(), 0);
        let remote = SocketAddr::new(remote.ip(), 0);
        self.isn.hash(local, remote, u64::from(u32::MAX)) as u32
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
        if !entry.needs_output {
            entry.needs_output = true;
            self.needs_output.push(id.slot as usize);
        }
        Some(entry)
    }

    /// The TCP connection behind `id` (`None` once freed).
    pub fn connection(&self, id: ConnId) -> Option<&Connection> {
        self.entry(id).map(|e| &e.conn)
    }

    /// The TCP state of `id` (`Closed` once freed).
    pub fn state(&self, id: ConnId) -> State {
        self.connection(id).map_or(State::Closed, |c| c.state())
    }

    /// Closes our side of `id`: FIN after the data queued (RFC 9293 3.10.4).
    pub fn close(&mut self, id: ConnId) {
        if let Some(e) = self.entry_mut(id) {
            e.conn.close();
        }
    }

    /// Aborts `id` with a RST (RFC 9293 3.10.5).
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
        self.stateless.push(StatelessFrame::Arp {
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

    /// Duplicate address detection (RFC 4862 5.4.2): a solicitation for our tentative
    /// address from the unspecified address to its solicited-node group.
    fn start_dad(&mut self, now: Instant) {
        let Some(ours) = self.cfg.ipv6 else {
            return;
        };
        self.dad_until = Some(now + DAD_WAIT);
        self.stats.ndp_solicits += 1;
        let group = wire::solicited_node(ours);
        self.stateless.push(StatelessFrame::Ndp {
            ip_src: Ipv6Addr::UNSPECIFIED,
            ip_dst: group,
            eth_dst: wire::multicast_mac(group),
            ndp: NdpRepr::Solicit {
                target: ours,
                source_mac: None,
            },
        });
    }

    /// DAD's wait is over with no answer (RFC 4862 5.4): the address is ours. Like
    /// the gratuitous ARP, an unsolicited advertisement tells the link (RFC 4861 7.2.6).
    fn finish_dad(&mut self) {
        self.ipv6_state = Ipv6State::Ready;
        self.dad_until = None;
        if let Some(ours) = self.cfg.ipv6 {
            self.stateless.push(StatelessFrame::Ndp {
                ip_src: ours,
                ip_dst: wire::ALL_NODES,
                eth_dst: wire::multicast_mac(wire::ALL_NODES),
                ndp: NdpRepr::Advert {
                    target: ours,
                    target_mac: self.cfg.mac,
                    solicited: false,
                    override_: true,
                },
            });
        }
    }

    /// A neighbour solicitation for `target` to its solicited-node group (RFC 4861 7.2.2).
    fn neighbour_solicit(&mut self, target: Ipv6Addr) -> Option<StatelessFrame> {
        let ours = self.cfg.ipv6?;
        self.stats.ndp_solicits += 1;
        let group = wire::solicited_node(target);
        Some(StatelessFrame::Ndp {
            ip_src: ours,
            ip_dst: group,
            eth_dst: wire::multicast_mac(group),
            ndp: NdpRepr::Solicit {
                target,
                source_mac: Some(self.cfg.mac),
            },
        })
    }

    /// Asks for the neighbour `hop` of either family: an ARP request, or a neighbour
    /// solicitation (RFC 4861 7.2.2), unless one went out within the retry interval.
    pub fn request_neighbour_ip(&mut self, now: Instant, hop: IpAddr) {
        match hop {
            IpAddr::V4(v4) => self.request_arp(now, v4),
            IpAddr::V6(v6) => {
                if self.ndp.should_request(v6, now)
                    && let Some(ns) = self.neighbour_solicit(v6)
                {
                    self.stateless.push(ns);
                }
            }
        }
    }

    /// Sends an ARP request for `ip` unless one went out within the retry interval.
    pub fn request_arp(&mut self, now: Instant, ip: Ipv4Addr) {
        if self.arp.should_request(ip, now) {
            let arp = self.arp_request(ip);
            self.stateless.push(StatelessFrame::Arp {
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
            needs_output: true,
            has_news: false,
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
        self.needs_output.push(slot);
        self.live += 1;
        self.stats.connections_opened += 1;
        ConnId {
            slot: slot as u32,
            generation: self.slots[slot].generation,
        }
    }

    fn remove(&mut self, slot: usize) {
        if let Some(entry) = self.slots[slot].entry.take() {
            let key = (entry.conn.local(), entry.conn.remote());
            self.by_tuple.remove(&key);
            if let Some((directory, me)) = &self.shards {
                directory.release(key, *me);
            }
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
    pub fn drain_news(&mut self, out: &mut Vec<ConnId>) {
        out.clear();
        std::mem::swap(out, &mut self.app_news);
        for id in out.iter() {
            if let Some(e) = self.slots[id.slot as usize].entry.as_mut() {
                e.has_news = false;
            }
        }
    }

    fn mark_news(&mut self, slot: usize) {
        let generation = self.slots[slot].generation;
        if let Some(e) = self.slots[slot].entry.as_mut()
            && !e.has_news
        {
            e.has_news = true;
            self.app_news.push(ConnId {
                slot: slot as u32,
                generation,
            });
        }
    }

    fn mark_needs_output(&mut self, slot: usize) {
        if let Some(e) = self.slots[slot].entry.as_mut()
            && !e.needs_output
        {
            e.needs_output = true;
            self.needs_output.push(slot);
        }
    }

    /// Whether the next [`Stack::poll`] has output to send whatever it receives: frames
    /// that found the TX ring full, or connections the application has given work.
    pub fn has_pending_output(&self) -> bool {
        !self.needs_output.is_empty() || !self.stateless.is_empty()
    }

    /// The earliest time [`Stack::poll`] has timer work to do.
    pub fn poll_at(&self) -> Option<Instant> {
        let t = tcp::time::earliest(self.timers.next(), self.arp.next_retry());
        let t = tcp::time::earliest(t, self.ndp.next_retry());
        let t = tcp::time::earliest(t, self.dad_until);
        tcp::time::earliest(t, self.fragments.next_deadline())
    }

    /// One turn of the poll loop: a batch of received frames, due timers, then all output.
    /// Returns how many frames were received.
    pub fn poll(&mut self, now: Instant, device: &mut dyn Device) -> usize {
        self.now = now;
        self.arp.set_now(now);
        self.ndp.set_now(now);
        if self.ipv6_state == Ipv6State::Tentative && self.dad_until.is_none() {
            self.start_dad(now);
        }
        let received = device.receive(&mut |frame| self.process_frame(now, frame));
        if self.ipv6_state == Ipv6State::Tentative && self.dad_until.is_some_and(|t| t <= now) {
            self.finish_dad();
        }
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
                self.mark_news(slot);
            }
            self.mark_needs_output(slot);
        }
        if self.arp.next_retry().is_some_and(|t| t <= now) {
            self.arp_timers(now);
        }
        if self.ndp.next_retry().is_some_and(|t| t <= now) {
            self.ndp_timers(now);
        }
        if self.fragments.next_deadline().is_some_and(|t| t <= now) {
            self.fragments.expire(now);
            self.sync_fragment_stats();
        }
        if now >= self.arp_gc_at {
            self.arp.expire(now);
            self.ndp.expire(now);
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
                let ours = ip.dst == self.cfg.ip;
                let addrs = (ip.src.into(), ip.dst.into());
                self.tcp_frame(now, frame, eth_src, ours, addrs, &tcp);
            }
            Frame::Icmp { eth_src, ip, icmp } => self.process_icmp(eth_src, ip, icmp),
            Frame::Tcp6 { eth_src, ip, tcp } => {
                // RFC 4862 5.4: nothing for a tentative (or duplicate) address.
                let ours = Some(ip.dst) == self.cfg.ipv6 && self.ipv6_state == Ipv6State::Ready;
                let addrs = (ip.src.into(), ip.dst.into());
                self.tcp_frame(now, frame, eth_src, ours, addrs, &tcp);
            }
            Frame::Icmp6 { eth_src, ip, icmp } => self.process_icmp6(eth_src, ip, icmp),
        }
    }

    /// A TCP segment of either family: to its connection if it is for our address, and
    /// kept for the sharded stack that owns it if another does.
    #[inline]
    fn tcp_frame(
        &mut self,
        now: Instant,
        frame: &[u8],
        eth_src: MacAddr,
        ours: bool,
        addrs: (IpAddr, IpAddr),
        tcp: &TcpRepr<'_>,
    ) {
        if !ours {
            self.stats.not_for_us += 1;
            return;
        }
        self.process_tcp(now, eth_src, addrs, tcp);
        if let Some(owner) = self.unmatched.take() {
            self.strays.push((owner, frame.to_vec()));
            self.stats.strays_handed_over += 1;
        }
    }

    /// Joins a group of sharded stacks (one per group of RX queues) as stack `me`. Each
    /// owns the connections it opened, recorded in the group's directory. A NIC's hash
    /// keeps a flow on its queue, but a veth or a virtio queue follows the sender's flow
    /// hash, which Linux changes after a retransmission timeout: a flow may move to
    /// another stack's queue. A segment of another stack's connection is then kept for
    /// [`Stack::take_strays`], to be given to that stack, and a SYN retransmitted onto
    /// another stack's queue reaches the stack that has it instead of opening a second
    /// connection here. A segment no stack has a connection for is answered here, as by
    /// a stack alone (RFC 9293 3.10.7.1).
    pub fn join_shards(&mut self, directory: std::sync::Arc<ShardDirectory>, me: usize) {
        self.shards = Some((directory, me));
    }

    /// The other sharded stack that has a connection for the 4-tuple, if any.
    fn owned_by_another_shard(&self, local: SocketAddr, remote: SocketAddr) -> Option<usize> {
        let (directory, me) = self.shards.as_ref()?;
        directory.owner((local, remote)).filter(|o| o != me)
    }

    /// Records the 4-tuple as this stack's, unless another sharded stack has it: then
    /// `Err` with that stack's index. Always `Ok` when not sharded.
    fn claim_for_shard(&self, local: SocketAddr, remote: SocketAddr) -> Result<(), usize> {
        match &self.shards {
            Some((directory, me)) => directory.claim((local, remote), *me),
            None => Ok(()),
        }
    }

    /// The frames kept since the last call, each with the index of the stack that owns
    /// its connection (see [`Stack::join_shards`]).
    pub fn take_strays(&mut self) -> Vec<(usize, Vec<u8>)> {
        std::mem::take(&mut self.strays)
    }

    /// A frame another stack handed over, as one of this stack's connections: processed
    /// as if received here. If the connection is gone meanwhile, it is answered as a
    /// segment for a closed port.
    pub fn receive_handed_over(&mut self, now: Instant, frame: &[u8]) {
        self.handed_over = true;
        self.stats.strays_received += 1;
        self.process_frame(now, frame);
        self.handed_over = false;
        self.unmatched = None;
    }

    /// A segment that matches no connection and no listener: RFC 9293 3.10.7.1 answers
    /// it with a RST, unless it belongs to another sharded stack's connection.
    fn no_connection(
        &mut self,
        eth_src: MacAddr,
        local: SocketAddr,
        remote: SocketAddr,
        seg: &TcpRepr<'_>,
    ) {
        if self.handed_over {
            self.stats.strays_unclaimed += 1;
        } else if let Some(owner) = self.owned_by_another_shard(local, remote) {
            self.unmatched = Some(owner);
            return;
        }
        self.stats.closed_port += 1;
        self.reply_rst(eth_src, local, remote, seg);
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
                    self.process_tcp(now, eth_src, (ip.src.into(), ip.dst.into()), &tcp)
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
            self.stateless.push(StatelessFrame::Arp {
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
                self.stateless.push(StatelessFrame::EchoReply {
                    ip_dst: IpAddr::V4(ip.src),
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
                    SocketAddr::V4(SocketAddrV4::new(quoted_src, quoted_src_port)),
                    SocketAddr::V4(SocketAddrV4::new(quoted_dst, quoted_dst_port)),
                );
                if let Some(&slot) = self.by_tuple.get(&key) {
                    if let Some(e) = self.slots[slot].entry.as_mut() {
                        e.conn
                            .handle_icmp_unreachable(code, quoted_seq, next_hop_mtu);
                    }
                    self.mark_needs_output(slot);
                    self.mark_news(slot);
                }
            }
            _ => self.stats.icmp_ignored += 1,
        }
    }

    /// An ICMPv6 message or NDP (RFC 4443, RFC 4861, RFC 4862).
    fn process_icmp6(&mut self, eth_src: MacAddr, ip: Ipv6Info, icmp: Icmpv6Repr<'_>) {
        let Some(ours) = self.cfg.ipv6 else {
            self.stats.not_for_us += 1;
            return;
        };
        match icmp {
            Icmpv6Repr::NeighborSolicit { target, source_mac } => {
                if target != ours {
                    self.stats.not_for_us += 1;
                    return;
                }
                self.stats.ndp_in += 1;
                match self.ipv6_state {
                    // RFC 4862 5.4.3: another node's DAD for our tentative address.
                    Ipv6State::Tentative if ip.src.is_unspecified() => self.dad_conflict(),
                    // RFC 4862 5.4.3: no answer while tentative.
                    Ipv6State::Ready if self.cfg.mode == AddressMode::Owned => {
                        self.answer_solicit(ours, ip.src, source_mac, eth_src)
                    }
                    _ => {}
                }
            }
            Icmpv6Repr::NeighborAdvert {
                target, target_mac, ..
            } => {
                if target == ours {
                    // RFC 4862 5.4.4: an advertisement of our tentative address.
                    if self.ipv6_state == Ipv6State::Tentative {
                        self.dad_conflict();
                    }
                    return;
                }
                self.stats.ndp_in += 1;
                // RFC 4861 7.2.5: an advertisement for a neighbour we neither hold nor
                // asked for is discarded. Without a target link-layer option the frame's
                // source stands in (it is the target on an Ethernet link).
                if self.ndp.knows(target) || self.waiting.contains_key(&IpAddr::V6(target)) {
                    self.neighbour_learned(
                        IpAddr::V6(target),
                        target_mac.unwrap_or(eth_src),
                        false,
                    );
                }
            }
            _ if ip.dst != ours || self.ipv6_state != Ipv6State::Ready => {
                self.stats.not_for_us += 1
            }
            Icmpv6Repr::EchoRequest { ident, seq, data } if self.cfg.mode == AddressMode::Owned => {
                self.stateless.push(StatelessFrame::EchoReply {
                    ip_dst: IpAddr::V6(ip.src),
                    eth_dst: eth_src,
                    ident,
                    seq,
                    data: data.to_vec(),
                });
            }
            Icmpv6Repr::DestUnreachable { code, quoted } => {
                self.stats.icmp_unreachable += 1;
                // ICMPv6 code 4 is port unreachable, ICMP's 3; the others are the
                // host's (RFC 4443 3.1, as Linux's icmpv6_err_convert: all hard errors).
                let v4_code = if code == 4 { 3 } else { 1 };
                self.quoted_connection(quoted, |c| {
                    c.handle_icmp_unreachable(v4_code, quoted.seq, 0)
                });
            }
            Icmpv6Repr::PacketTooBig { mtu, quoted } => {
                // RFC 8201 section 4: lower the path MTU, never below 1280, only for a
                // connection the quoted segment belongs to.
                if self.quoted_connection(quoted, |c| c.handle_packet_too_big(quoted.seq, mtu)) {
                    self.stats.icmp6_packet_too_big += 1;
                }
            }
            _ => self.stats.icmp_ignored += 1,
        }
    }

    /// Runs `f` on the connection a quoted segment of an ICMPv6 error belongs to; false
    /// if there is none.
    fn quoted_connection(
        &mut self,
        quoted: wire::QuotedTcp6,
        f: impl FnOnce(&mut Connection),
    ) -> bool {
        let key = (
            SocketAddr::new(IpAddr::V6(quoted.src), quoted.src_port),
            SocketAddr::new(IpAddr::V6(quoted.dst), quoted.dst_port),
        );
        let Some(&slot) = self.by_tuple.get(&key) else {
            return false;
        };
        if let Some(e) = self.slots[slot].entry.as_mut() {
            f(&mut e.conn);
        }
        self.mark_needs_output(slot);
        self.mark_news(slot);
        true
    }

    /// RFC 4862 5.4.5: our tentative address is another node's; it is never used.
    fn dad_conflict(&mut self) {
        self.stats.dad_conflicts += 1;
        self.ipv6_state = Ipv6State::Duplicate;
        self.dad_until = None;
    }

    /// RFC 4861 7.2.4: learn the solicitor, then advertise our address to it (to
    /// all-nodes when it asked from the unspecified address).
    fn answer_solicit(
        &mut self,
        ours: Ipv6Addr,
        src: Ipv6Addr,
        source_mac: Option<MacAddr>,
        eth_src: MacAddr,
    ) {
        let (ip_dst, eth_dst, solicited) = if src.is_unspecified() {
            (wire::ALL_NODES, wire::multicast_mac(wire::ALL_NODES), false)
        } else {
            if let Some(mac) = source_mac {
                self.neighbour_learned(IpAddr::V6(src), mac, false);
            }
            (src, source_mac.unwrap_or(eth_src), true)
        };
        self.stateless.push(StatelessFrame::Ndp {
            ip_src: ours,
            ip_dst,
            eth_dst,
            ndp: NdpRepr::Advert {
                target: ours,
                target_mac: self.cfg.mac,
                solicited,
                override_: true,
            },
        });
    }

    fn process_tcp(
        &mut self,
        now: Instant,
        eth_src: MacAddr,
        (src, dst): (IpAddr, IpAddr),
        seg: &TcpRepr<'_>,
    ) {
        let local = SocketAddr::new(dst, seg.dst_port);
        let remote = SocketAddr::new(src, seg.src_port);
        if let Some(&slot) = self.by_tuple.get(&(local, remote)) {
            let reopen = self.listens_for(local.port(), remote)
                && self.slots[slot]
                    .entry
                    .as_ref()
                    .is_some_and(|e| e.conn.time_wait_accepts_syn(seg));
            if !reopen {
                if let Some(e) = self.slots[slot].entry.as_mut() {
                    e.conn.handle_segment(now, seg);
                }
                self.mark_needs_output(slot);
                self.mark_news(slot);
                return;
            }
            // RFC 9293 3.6.1 / RFC 6191: a new SYN with a higher sequence number or a
            // newer timestamp ends TIME-WAIT and opens a new connection (Linux's TCP_TW_SYN).
            self.stats.time_wait_reopened += 1;
            self.remove(slot);
        }
        if !self.moved.is_empty()
            && self.moved_away(&(local, remote), seg.flags.syn && !seg.flags.ack)
        {
            return;
        }
        if self.listens_for(local.port(), remote) {
            self.listener_input(now, eth_src, local, remote, seg);
            return;
        }
        // RFC 9293 3.10.7.1: a segment for a closed port gets a RST.
        self.no_connection(eth_src, local, remote, seg);
    }

    /// Whether a listener on `port` takes connections from `remote`'s family.
    #[inline]
    fn listens_for(&self, port: u16, remote: SocketAddr) -> bool {
        self.listeners.get(&port).is_some_and(|l| {
            if remote.is_ipv6() {
                l.families.1
            } else {
                l.families.0
            }
        })
    }

    fn reply_rst(
        &mut self,
        eth_src: MacAddr,
        local: SocketAddr,
        remote: SocketAddr,
        seg: &TcpRepr<'_>,
    ) {
        if seg.flags.rst {
            return;
        }
        let (seq, ack, flags) = if seg.flags.ack {
            (seg.ack.unwrap_or_default(), None, TcpFlags::RST)
        } else {
            (SeqNum(0), Some(seg.seq + seg.seq_len()), TcpFlags::RST_ACK)
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
    fn queue_tcp(&mut self, remote: SocketAddr, eth_dst: MacAddr, repr: TcpRepr<'static>) {
        self.stateless.push(StatelessFrame::Tcp {
            ip_dst: remote.ip(),
            eth_dst,
            repr,
        });
    }

    /// The frame that opened a connection came from the next hop back to its sender, so
    /// its source MAC answers for that hop. Needed in shared-IP mode, where ARP replies
    /// go to the kernel; the ARP cache is authoritative when it already has the hop.
    fn learn_next_hop(&mut self, remote: IpAddr, eth_src: MacAddr) {
        let hop = self.next_hop_ip(remote);
        if self.neighbour_mac(hop).is_none() {
            self.neighbour_learned(hop, eth_src, true);
        }
    }

    /// A neighbour's address is known: remember it (if the bounded cache has room) and
    /// wake the connections waiting for it.
    fn arp_learned(&mut self, ip: Ipv4Addr, mac: MacAddr, wanted: bool) {
        self.neighbour_learned(IpAddr::V4(ip), mac, wanted);
    }

    /// [`Stack::arp_learned`] for either family.
    fn neighbour_learned(&mut self, ip: IpAddr, mac: MacAddr, wanted: bool) {
        let wanted = wanted || self.waiting.contains_key(&ip);
        let kept = match ip {
            IpAddr::V4(ip) => self.arp.learn(ip, mac, wanted),
            IpAddr::V6(ip) => self.ndp.learn(ip, mac, wanted),
        };
        if !kept {
            self.stats.arp_cache_full += 1;
        }
        self.wake_waiting(ip);
    }

    /// The connections parked on next hop `ip` send what they hold at the next poll.
    fn wake_waiting(&mut self, ip: IpAddr) {
        for id in self.waiting.remove(&ip).unwrap_or_default() {
            if let Some(e) = self.entry_mut(id) {
                e.parked = false;
                self.mark_needs_output(id.slot as usize);
            }
        }
    }

    /// A neighbour's address learned outside the stack (e.g. the kernel's neighbour
    /// table, in shared-IP mode where ARP replies go to the kernel): kept until replaced,
    /// and the connections waiting for it send at once.
    pub fn add_neighbour(&mut self, ip: impl Into<IpAddr>, mac: MacAddr) {
        let ip = ip.into();
        match ip {
            IpAddr::V4(v4) => self.arp.insert(v4, mac),
            IpAddr::V6(v6) => self.ndp.insert(v6, mac),
        }
        self.wake_waiting(ip);
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
            self.neighbour_failed(IpAddr::V4(hop));
        }
        self.arp_scratch = hops;
    }

    /// The connections waiting for `hop` fail (EHOSTUNREACH).
    fn neighbour_failed(&mut self, hop: IpAddr) {
        for id in self.waiting.remove(&hop).unwrap_or_default() {
            if let Some(e) = self.entry_mut(id) {
                e.parked = false;
                e.conn.neighbour_failed();
            }
            self.mark_news(id.slot as usize);
        }
    }

    /// [`Stack::arp_timers`] for NDP: solicitations due again (RFC 4861 7.2.2), and next
    /// hops that never answered (RFC 4861 7.3.3, the waiting connections fail).
    fn ndp_timers(&mut self, now: Instant) {
        let mut hops = std::mem::take(&mut self.ndp_scratch);
        self.ndp.due(now, &mut hops);
        for &hop in &hops {
            if self.ndp.should_request(hop, now)
                && let Some(ns) = self.neighbour_solicit(hop)
            {
                self.stateless.push(ns);
            }
        }
        hops.clear();
        self.ndp.take_failed(now, &mut hops);
        for hop in hops.drain(..) {
            self.stats.ndp_failures += 1;
            self.neighbour_failed(IpAddr::V6(hop));
        }
        self.ndp_scratch = hops;
    }

    /// Writes a frame that belongs to no connection; its length, 0 if it does not fit.
    /// A TCP checksum is left to the device under [`wire::TxChecksum::Partial`].
    fn emit_stateless(
        &self,
        frame: &StatelessFrame,
        buf: &mut [u8],
        checksum: wire::TxChecksum,
    ) -> usize {
        let mac = self.cfg.mac;
        let ip = self.cfg.ip;
        let ip6 = self.cfg.ipv6.unwrap_or(Ipv6Addr::UNSPECIFIED);
        let ours = |dst: &IpAddr| match dst {
            IpAddr::V4(_) => IpAddr::V4(ip),
            IpAddr::V6(_) => IpAddr::V6(ip6),
        };
        match frame {
            StatelessFrame::Arp { eth_dst, arp } => wire::emit_arp(buf, *eth_dst, arp),
            StatelessFrame::Tcp {
                ip_dst,
                eth_dst,
                repr,
            } => wire::emit_tcp(
                buf,
                (mac, *eth_dst),
                (ours(ip_dst), *ip_dst),
                repr,
                0,
                |_| {},
                checksum,
            ),
            StatelessFrame::Ndp {
                ip_src,
                ip_dst,
                eth_dst,
                ndp,
            } => wire::emit_ndp(buf, (mac, *eth_dst), (*ip_src, *ip_dst), ndp),
            StatelessFrame::EchoReply {
                ip_dst: IpAddr::V6(ip_dst),
                eth_dst,
                ident,
                seq,
                data,
            } => wire::emit_icmpv6_echo_reply(
                buf,
                (mac, *eth_dst),
                (ip6, *ip_dst),
                *ident,
                *seq,
                data,
            ),
            StatelessFrame::EchoReply {
                ip_dst: IpAddr::V4(ip_dst),
                eth_dst,
                ident,
                seq,
                data,
            } => {
                wire::emit_icmp_echo_reply(buf, (mac, *eth_dst), (ip, *ip_dst), *ident, *seq, data)
            }
        }
    }

    /// Sends the stateless frames, then lets every connection with work emit its segments:
    /// this is where one ACK comes to cover a whole received batch.
    fn dispatch(&mut self, now: Instant, device: &mut dyn Device) {
        let mac = self.cfg.mac;
        let checksum = if device.tx_checksum_offload() {
            wire::TxChecksum::Partial
        } else {
            wire::TxChecksum::Complete
        };
        for frame in std::mem::take(&mut self.stateless) {
            let sent = device.transmit(&mut |buf| self.emit_stateless(&frame, buf, checksum));
            if sent {
                self.stats.tx_frames += 1;
            } else {
                self.stats.tx_ring_full += 1;
            }
        }

        let mut needs_output = std::mem::take(&mut self.needs_output);
        for &slot in &needs_output {
            let Some(entry) = self.slots[slot].entry.as_mut() else {
                continue;
            };
            entry.needs_output = false;
            let remote_ip = entry.conn.remote().ip();
            let local_ip = entry.conn.local().ip();
            let closed = entry.conn.is_closed();
            let hop = self.next_hop_ip(remote_ip);
            match self.neighbour_mac(hop) {
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
                                    (local_ip, remote_ip),
                                    &t.repr,
                                    t.payload_len,
                                    |dst| conn.copy_payload(t.payload_offset, dst),
                                    checksum,
                                )
                            }
                            None => 0,
                        });
                        if !ok {
                            self.stats.tx_ring_full += 1;
                            entry.needs_output = true;
                            self.needs_output.push(slot);
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
        needs_output.clear();
        if self.needs_output.is_empty() {
            self.needs_output = needs_output; // keep the allocation
        }
    }

    /// Sends an ARP request for the next hop (rate-limited) and parks the connection.
    fn request_neighbour(
        &mut self,
        now: Instant,
        hop: IpAddr,
        device: &mut dyn Device,
        slot: usize,
    ) {
        match hop {
            IpAddr::V4(hop) if self.arp.should_request(hop, now) => {
                let arp = self.arp_request(hop);
                if device.transmit(&mut |buf| wire::emit_arp(buf, BROADCAST_MAC, &arp)) {
                    self.stats.arp_requests += 1;
                    self.stats.tx_frames += 1;
                }
            }
            // RFC 4861 7.2.2: a solicitation to the target's solicited-node group.
            IpAddr::V6(hop) if self.ndp.should_request(hop, now) => {
                if let Some(ns) = self.neighbour_solicit(hop)
                    && device.transmit(&mut |buf| {
                        self.emit_stateless(&ns, buf, wire::TxChecksum::Complete)
                    })
                {
                    self.stats.tx_frames += 1;
                }
            }
            _ => {}
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
        self.promote_if_synchronized(slot);
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

/// Why the stack refused an application call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// [`StackConfig::max_connections`] reached.
    #[error("too many connections")]
    TooManyConnections,
    /// Every local port of the range is in use towards this peer.
    #[error("no free local port")]
    NoFreePort,
    /// Something already listens on the port.
    #[error("port already in use")]
    PortInUse,
    /// The stack has no address in the destination's family (no IPv6 address, or an
    /// IPv6-only stack asked for an IPv4 peer).
    #[error("no local address in the destination's family")]
    NoAddress,
    /// Our IPv6 address is still tentative: duplicate address detection runs (RFC 4862 5.4).
    #[error("IPv6 address still tentative (duplicate address detection)")]
    AddressTentative,
    /// Another node has our IPv6 address (RFC 4862 5.4.5).
    #[error("IPv6 address in use by another node (duplicate address detected)")]
    DuplicateAddress,
}

#[cfg(test)]
mod ipv6_tests;
#[cfg(test)]
mod rfc_tests;
#[cfg(test)]
mod tests;
