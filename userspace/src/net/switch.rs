//! The switch of an interface: the one process that owns the XDP program and the AF_XDP
//! sockets of every queue when several programs share the interface, and forwards
//! each received frame to the client process it belongs to (by listening port, by
//! slice of the ephemeral ports, or by flow for a port several processes listen on),
//! and each client's frames to the wire. See [`crate::device::switch`] for the rings
//! and docs/PRELOAD.md for the design.
use super::config::StackConfig;
use super::setup::plan;
use crate::device::Device;
use crate::device::error::{Context, SetupResult, bail, setup_error};
use crate::device::netinfo;
use crate::device::switch::{self as ring, Rings, SLOTS};
use crate::device::xdp::{QueueChoice, XdpQueues};
use crate::wire::{
    ChecksumPolicy, Frame, MacAddr, SeqNum, TcpFlags, TcpRepr, emit_tcp, parse_frame_with,
};
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// How long the switch stays after its last client left.
const LINGER: Duration = Duration::from_millis(300);
/// How long a busy loop spins with nothing to do before it sleeps.
const SPIN: Duration = Duration::from_micros(200);
/// How often a busy loop looks at the control connections.
const CONTROL_EVERY: Duration = Duration::from_millis(1);
/// A flow not seen for this long leaves the flow table when it is swept.
const FLOW_IDLE: Duration = Duration::from_secs(120);
/// The flow table is swept when it grows past this.
const FLOW_SWEEP_AT: usize = 16_384;

/// One client process's lease.
struct Lease {
    rings: Rings,
    /// The client's eventfd, written when it may sleep and got frames.
    wake_client: OwnedFd,
    /// Ours, written by the client when we may sleep and it gave us frames.
    wake_me: OwnedFd,
    listening: Vec<u16>,
    /// The client's process and its parent's.
    pid: u32,
    ppid: u32,
    /// Got frames this turn.
    fed: bool,
}

/// A connection to the switch: a lease, or a keep-alive of a program not yet started.
struct Client {
    conn: UnixStream,
    lease: Option<Lease>,
}

/// The switch's state.
struct Switch {
    queues: XdpQueues,
    clients: Vec<Option<Client>>,
    /// Extra connections: keep-alives (exec's, until the program's first socket).
    holds: Vec<UnixStream>,
    routes: Routes,
    /// Frames for no client (answered with a RST when they are TCP).
    unrouted: u64,
    /// The interface's address and the checksums its frames carry.
    mac: MacAddr,
    policy: ChecksumPolicy,
    /// The resets of one turn (made once: no allocation per packet).
    resets: Vec<([u8; RESET_LEN], usize)>,
}

/// The switch process: `userspace __xdp-switch` with the stack's flags in the
/// environment, its starter's end of a socket pair on stdin (told `READY` or `ERR why`).
/// Returns the exit code.
pub fn run(config: &StackConfig) -> i32 {
    ring::become_daemon();
    let report = std::io::stdin().as_fd().try_clone_to_owned().ok();
    let switch = open(config);
    let mut switch = match switch {
        Ok(s) => s,
        Err((e, _)) => {
            if let Some(r) = report {
                let _ = UnixStream::from(r).write_all(format!("ERR {e:#}\n").as_bytes());
            }
            return 1;
        }
    };
    let listener = switch.1;
    if let Some(r) = report {
        let _ = UnixStream::from(r).write_all(b"READY\n");
    }
    switch.0.serve(&listener);
    0
}

type Opened = (Switch, UnixListener);

/// The switch's configuration from the variables `userspace exec` sets (interface, XDP
/// mode, owned address: refused).
pub fn config_from_env() -> StackConfig {
    use super::exec_env;
    StackConfig {
        interface: std::env::var(exec_env::IFACE).ok(),
        ip: std::env::var(exec_env::IP)
            .ok()
            .and_then(|v| v.parse().ok()),
        xdp_mode: std::env::var(exec_env::XDP_MODE)
            .ok()
            .and_then(|m| crate::device::xdp::XdpModeChoice::from_name(&m)),
        ..Default::default()
    }
}

fn open(config: &StackConfig) -> Result<Opened, (crate::device::error::SetupError, ())> {
    let inner = || -> SetupResult<Opened> {
        if config.ip.is_some() {
            bail!("--share serves shared-IP mode only (leave out --ip)");
        }
        let plan = plan(config, &[])?;
        let info = netinfo::interface(&plan.iface)?;
        // The clients' frames arrive with their checksums complete.
        crate::device::xdp::transmit_complete_frames();
        let queues = XdpQueues::open(
            &plan.iface,
            config.xdp_mode,
            QueueChoice::All,
            plan.steer,
            None,
        )?;
        let listener = UnixListener::bind_addr(&ring::address(info.ifindex)?)
            .context("binding the switch's name (another switch runs)")?;
        listener.set_nonblocking(true)?;
        let range = plan.stack.port_range;
        let slice = ((u32::from(range.1) - u32::from(range.0) + 1) / SLOTS as u32) as u16;
        if slice == 0 {
            bail!("no ephemeral ports to deal");
        }
        Ok((
            Switch {
                queues,
                clients: (0..SLOTS).map(|_| None).collect(),
                holds: Vec::new(),
                routes: Routes {
                    range,
                    slice,
                    listeners: HashMap::new(),
                    flows: HashMap::new(),
                    moved: HashMap::new(),
                },
                unrouted: 0,
                mac: info.mac,
                policy: match netinfo::frames_come_from_memory(&plan.iface) {
                    true => ChecksumPolicy::AcceptPartial,
                    false => ChecksumPolicy::Strict,
                },
                resets: Vec::with_capacity(RESETS_PER_TURN),
            },
            listener,
        ))
    };
    inner().map_err(|e| (e, ()))
}

/// In a child forked after its stack joined the switch: lets go of the parent's
/// control connection, so that the parent's lease ends with the parent (see
/// [`ring::close_inherited_connections`]).
pub fn after_fork_in_child() {
    ring::close_inherited_connections();
}

/// The parent process of `pid` (0 when unknown), from /proc/PID/stat.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) state ppid ...": the name may hold spaces and parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Longest reset the switch writes (Ethernet, IPv4 and TCP headers, no options).
const RESET_LEN: usize = 64;
/// Most resets one turn sends.
const RESETS_PER_TURN: usize = 64;

/// The RST that answers `frame`, a segment for no process (RFC 9293 section
/// 3.10.7.1: as the kernel answers a segment for a closed port, never a RST), written
/// into `out`: its length, 0 when none is due.
fn reset_for(frame: &[u8], mac: MacAddr, policy: ChecksumPolicy, out: &mut [u8]) -> usize {
    let Ok(parsed) = parse_frame_with(frame, policy) else {
        return 0;
    };
    let Frame::Tcp { eth_src, ip, tcp } = parsed.frame else {
        return 0;
    };
    if tcp.flags.rst {
        return 0;
    }
    let (seq, ack, flags) = match tcp.flags.ack {
        true => (tcp.ack.unwrap_or_default(), None, TcpFlags::RST),
        false => (SeqNum(0), Some(tcp.seq + tcp.seq_len()), TcpFlags::RST_ACK),
    };
    let repr = TcpRepr {
        src_port: tcp.dst_port,
        dst_port: tcp.src_port,
        seq,
        ack,
        flags,
        ..Default::default()
    };
    emit_tcp(
        out,
        (mac, eth_src),
        (ip.dst, ip.src),
        &repr,
        0,
        |_| {},
        crate::wire::TxChecksum::Complete,
    )
}

/// The fields of a TCP segment (or of the TCP segment an ICMP error quotes) that
/// route it: (peer address, peer port, our port, a SYN without ACK).
fn route_key(frame: &[u8]) -> Option<(u32, u16, u16, bool)> {
    let be16 = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?))
    };
    if be16(12)? != 0x0800 {
        return None;
    }
    let ip = 14;
    let ihl = usize::from(*frame.get(ip)? & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let peer = u32::from_be_bytes(frame.get(ip + 12..ip + 16)?.try_into().ok()?);
    let l4 = ip + ihl;
    match *frame.get(ip + 9)? {
        6 => {
            let flags = *frame.get(l4 + 13)?;
            Some((peer, be16(l4)?, be16(l4 + 2)?, flags & 0x12 == 0x02))
        }
        // Destination unreachable about our segment (RFC 792): the quoted header's
        // source port is ours.
        1 if *frame.get(l4)? == 3 => {
            let quoted = l4 + 8;
            let qihl = usize::from(*frame.get(quoted)? & 0x0f) * 4;
            let dst = u32::from_be_bytes(frame.get(quoted + 16..quoted + 20)?.try_into().ok()?);
            Some((dst, be16(quoted + qihl + 2)?, be16(quoted + qihl)?, false))
        }
        _ => None,
    }
}

/// The routing state: who listens where, the flows of shared ports, the slices.
struct Routes {
    /// The stack's ephemeral range, dealt in `SLOTS` slices.
    range: (u16, u16),
    slice: u16,
    /// Listening port -> the slots listening on it, and whether each is a parent whose
    /// children listen there too.
    listeners: HashMap<u16, Vec<(usize, bool)>>,
    /// (peer address, peer port, our port) -> slot, for the connections of listening
    /// ports (looked up when several processes listen on the port).
    flows: Flows,
    /// Connections moved to another process (`MOVE`): looked up first, while any.
    moved: HashMap<(u32, u16, u16), usize>,
}

impl Routes {
    /// `MOVE`: the connection (peer address, peer port, our port) goes to `slot` from
    /// now on (a forked child took it from its parent; see docs/PRELOAD.md).
    /// Until that process leaves, or a new SYN reuses the 4-tuple.
    fn steer_moved(&mut self, key: (u32, u16, u16), slot: usize) {
        self.moved.insert(key, slot);
    }

    /// A client left: its flows are forgotten.
    /// The connections moved to it stay listed for no process: their segments are
    /// answered with a RST at once, as for any process that ended, not left to the
    /// process they were moved from (which no longer has them).
    fn forget_slot(&mut self, slot: usize) {
        self.flows.retain(|_, (s, _)| *s != slot);
        if self.moved.len() >= FLOW_SWEEP_AT {
            self.moved.retain(|_, s| *s != NOBODY);
        }
        for s in self.moved.values_mut().filter(|s| **s == slot) {
            *s = NOBODY;
        }
    }
}

impl Routes {
    /// The slot a received frame goes to.
    fn route(&mut self, frame: &[u8], now: Instant) -> Option<usize> {
        let (peer, peer_port, port, syn) = route_key(frame)?;
        let key = (peer, peer_port, port);
        // A connection moved to another process (`MOVE`) goes there; a new SYN on its
        // 4-tuple is a new connection.
        if !self.moved.is_empty() {
            match syn {
                true => drop(self.moved.remove(&key)),
                false => {
                    if let Some(&slot) = self.moved.get(&key) {
                        return (slot != NOBODY).then_some(slot);
                    }
                }
            }
        }
        if let Some(slots) = self.listeners.get(&port) {
            if let [(only, _)] = slots.as_slice() {
                // Its flow is remembered too: a child forked later that listens on the
                // port must not get this process's connections.
                let only = *only;
                if syn {
                    remember(&mut self.flows, key, only, now);
                } else if let Some((_, seen)) = self.flows.get_mut(&key) {
                    // Still in use: a sweep must not forget it.
                    *seen = now;
                }
                return Some(only);
            }
            if let Some((slot, seen)) = self.flows.get_mut(&key) {
                *seen = now;
                return Some(*slot);
            }
            // A new connection goes to a listener by flow hash, leaving out a parent
            // whose forked workers listen too.
            let active = slots.iter().filter(|(_, y)| !y).count();
            let hash = (peer ^ (u32::from(peer_port) << 16 | u32::from(port)))
                .wrapping_mul(0x9e37_79b9)
                >> 16;
            let slot = match active {
                0 => slots[hash as usize % slots.len()].0,
                n => {
                    slots
                        .iter()
                        .filter(|(_, y)| !y)
                        .nth(hash as usize % n)
                        .expect("n of them")
                        .0
                }
            };
            if syn {
                remember(&mut self.flows, key, slot, now);
            }
            return Some(slot);
        }
        if port < self.range.0 || port > self.range.1 {
            return None;
        }
        let slot = usize::from((port - self.range.0) / self.slice);
        (slot < SLOTS).then_some(slot)
    }
}

/// The connection a `MOVE peer-address peer-port our-port` request names.
fn parse_move<'a>(mut words: impl Iterator<Item = &'a str>) -> Option<(u32, u16, u16)> {
    let peer: std::net::Ipv4Addr = words.next()?.parse().ok()?;
    let peer_port = words.next()?.parse().ok()?;
    let port = words.next()?.parse().ok()?;
    words
        .next()
        .is_none()
        .then_some((u32::from(peer), peer_port, port))
}

/// A moved connection's slot once its process left.
const NOBODY: usize = usize::MAX;

/// A new connection of a listening port stays with `slot`.
fn remember(flows: &mut Flows, key: (u32, u16, u16), slot: usize, now: Instant) {
    if flows.len() >= FLOW_SWEEP_AT {
        flows.retain(|_, (_, seen)| now - *seen < FLOW_IDLE);
    }
    flows.insert(key, (slot, now));
}

/// (peer address, peer port, our port) -> slot and when last seen.
type Flows = HashMap<(u32, u16, u16), (usize, Instant)>;

impl Switch {
    /// One turn: received frames to their clients, clients' frames to the wire.
    /// Whether anything moved.
    fn turn(&mut self) -> bool {
        let now = Instant::now();
        let mut moved = 0;
        let Switch {
            queues,
            clients,
            routes,
            unrouted,
            mac,
            policy,
            resets,
            ..
        } = self;
        loop {
            let n = queues.receive(&mut |frame| {
                let lease = routes
                    .route(frame, now)
                    .and_then(|s| clients[s].as_mut())
                    .and_then(|c| c.lease.as_mut());
                match lease {
                    Some(lease) => {
                        lease.rings.rx_push(frame);
                        lease.fed = true;
                    }
                    None => {
                        // A killed process's peer: reset, as the kernel would.
                        *unrouted += 1;
                        if resets.len() < RESETS_PER_TURN {
                            let mut out = [0u8; RESET_LEN];
                            let n = reset_for(frame, *mac, *policy, &mut out);
                            if n > 0 {
                                resets.push((out, n));
                            }
                        }
                    }
                }
            });
            if n == 0 {
                break;
            }
            moved += n;
        }
        for (reset, n) in resets.drain(..) {
            queues.transmit(&mut |buf| {
                buf[..n].copy_from_slice(&reset[..n]);
                n
            });
        }
        for client in clients.iter_mut().flatten() {
            let Some(lease) = &mut client.lease else {
                continue;
            };
            if std::mem::take(&mut lease.fed) && lease.rings.sleeping(true) {
                ring::wake(lease.wake_client.as_fd());
            }
            let mut sent = 0;
            while sent < crate::device::xdp::BATCH * 4
                && lease.rings.tx_pop(&mut |frame| {
                    queues.transmit(&mut |buf| {
                        let n = frame.len().min(buf.len());
                        buf[..n].copy_from_slice(&frame[..n]);
                        n
                    });
                })
            {
                sent += 1;
            }
            moved += sent;
        }
        queues.flush();
        moved > 0
    }

    /// Serves until the last client has been gone for `LINGER`.
    fn serve(&mut self, listener: &UnixListener) {
        let mut last_control = Instant::now();
        let mut idle_since: Option<Instant> = None;
        let mut alone_since: Option<Instant> = None;
        loop {
            if self.turn() {
                idle_since = None;
            } else if idle_since.is_none() {
                idle_since = Some(Instant::now());
            }
            let spun = idle_since.is_some_and(|t| t.elapsed() >= SPIN);
            if spun || last_control.elapsed() >= CONTROL_EVERY {
                let timeout = if spun {
                    Duration::from_millis(100)
                } else {
                    Duration::ZERO
                };
                self.control(listener, timeout);
                last_control = Instant::now();
            }
            let empty = self.clients.iter().all(Option::is_none) && self.holds.is_empty();
            match (empty, alone_since) {
                (false, _) => alone_since = None,
                (true, None) => alone_since = Some(Instant::now()),
                (true, Some(t)) if t.elapsed() >= LINGER => return,
                (true, Some(_)) => {}
            }
        }
    }

    /// Waits up to `timeout` (when idle: the clients are told we may sleep) for a
    /// frame, a client's frames or a control message, and serves the control
    /// connections.
    fn control(&mut self, listener: &UnixListener, timeout: Duration) {
        let (sockets, busy) = self.queues.socket_fds();
        let slots: Vec<usize> = (0..SLOTS).filter(|s| self.clients[*s].is_some()).collect();
        let mut fds: Vec<RawFd> = vec![listener.as_raw_fd()];
        fds.extend(
            slots
                .iter()
                .map(|s| self.clients[*s].as_ref().expect("some").conn.as_raw_fd()),
        );
        fds.extend(self.holds.iter().map(|h| h.as_raw_fd()));
        fds.extend(sockets);
        let leases: Vec<&Lease> = self
            .clients
            .iter()
            .flatten()
            .filter_map(|c| c.lease.as_ref())
            .collect();
        fds.extend(leases.iter().map(|l| l.wake_me.as_raw_fd()));
        let mut sleep = !timeout.is_zero() && !busy;
        if sleep {
            for lease in &leases {
                lease.rings.set_sleeping(false, true);
                sleep &= !lease.rings.tx_waiting();
            }
        }
        let ready = ring::wait_readable(&fds, if sleep { timeout } else { Duration::ZERO });
        for lease in &leases {
            lease.rings.set_sleeping(false, false);
            ring::drain(lease.wake_me.as_fd());
        }
        if ready[0] {
            while let Ok((conn, _)) = listener.accept() {
                self.accept(conn);
            }
        }
        for (i, slot) in slots.iter().enumerate() {
            if ready[1 + i] {
                self.message(*slot);
            }
        }
        // A keep-alive says nothing: readable means closed.
        let holds = &ready[1 + slots.len()..1 + slots.len() + self.holds.len()];
        let mut closed = holds.iter();
        self.holds
            .retain(|_| !closed.next().copied().unwrap_or(false));
    }

    /// A new connection: `ATTACH pid` with the rings' memfd and two eventfds, or
    /// `HOLD pid` (a keep-alive).
    fn accept(&mut self, conn: UnixStream) {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let Ok((hello, fds)) = ring::recv_with_fds(conn.as_fd()) else {
            return;
        };
        let hello = String::from_utf8_lossy(&hello);
        let _ = conn.set_read_timeout(None);
        let mut words = hello.split_whitespace();
        let verb = words.next();
        let pid: u32 = words.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        match verb {
            Some("HOLD") => {
                let _ = (&conn).write_all(b"OK\n");
                self.holds.push(conn);
            }
            Some("ATTACH") => {
                let Some(slot) = self.clients.iter().position(Option::is_none) else {
                    let _ = (&conn).write_all(
                        format!("FULL {SLOTS} processes share this interface already\n").as_bytes(),
                    );
                    return;
                };
                let mut fds = fds.into_iter();
                let (Some(memfd), Some(wake_client), Some(wake_me)) =
                    (fds.next(), fds.next(), fds.next())
                else {
                    let _ = (&conn).write_all(b"ERR no rings\n");
                    return;
                };
                let rings = match Rings::map(memfd) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = (&conn).write_all(format!("ERR {e}\n").as_bytes());
                        return;
                    }
                };
                let lo = self.routes.range.0 + slot as u16 * self.routes.slice;
                let hi = lo + (self.routes.slice - 1);
                if (&conn)
                    .write_all(format!("OK {slot} {lo} {hi}\n").as_bytes())
                    .is_ok()
                {
                    tracing::debug!(slot, lo, hi, "client attached");
                    self.clients[slot] = Some(Client {
                        conn,
                        lease: Some(Lease {
                            rings,
                            wake_client,
                            wake_me,
                            listening: Vec::new(),
                            pid,
                            ppid: parent_of(pid),
                            fed: false,
                        }),
                    });
                }
            }
            _ => {}
        }
    }

    /// A message from the client in `slot`, or its end.
    fn message(&mut self, slot: usize) {
        let Some(client) = &self.clients[slot] else {
            return;
        };
        let line = match ring::read_line(&client.conn) {
            Ok(line) => line,
            Err(_) => {
                // Gone (exit, crash, kill): what it queued before it went leaves
                // first (a clean exit's last ACKs and FINs), then its ports are
                // unsteered, so the kernel answers its peers' next segments with a RST.
                self.turn();
                self.clients[slot] = None;
                self.routes.forget_slot(slot);
                let _ = self.steer_listeners();
                return;
            }
        };
        let mut words = line.split_whitespace();
        let reply = match words.next() {
            Some("LISTEN") => {
                let ports: Vec<u16> = words.filter_map(|w| w.parse().ok()).collect();
                if let Some(lease) = self.clients[slot].as_mut().and_then(|c| c.lease.as_mut()) {
                    lease.listening = ports;
                }
                match self.steer_listeners() {
                    Ok(()) => "OK\n".to_string(),
                    Err(e) => format!("ERR {e:#}\n"),
                }
            }
            Some("MOVE") => match parse_move(words) {
                Some(key) => {
                    self.routes.steer_moved(key, slot);
                    "OK\n".to_string()
                }
                None => "ERR MOVE takes an IPv4 peer address, its port and ours\n".to_string(),
            },
            _ => "ERR unknown request\n".to_string(),
        };
        if let Some(client) = &self.clients[slot] {
            let _ = (&client.conn).write_all(reply.as_bytes());
        }
    }

    /// Rebuilds the listener table from the leases and has the program steer every
    /// listening port.
    fn steer_listeners(&mut self) -> SetupResult<()> {
        let listeners = &mut self.routes.listeners;
        listeners.clear();
        let leases: Vec<(usize, &Lease)> = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| Some((slot, c.as_ref()?.lease.as_ref()?)))
            .collect();
        for &(slot, lease) in &leases {
            for &port in &lease.listening {
                // A parent whose forked children listen on the port too leaves its new
                // connections to them (nginx's master and its workers).
                let parent = leases
                    .iter()
                    .any(|(_, l)| l.ppid == lease.pid && l.listening.contains(&port));
                listeners.entry(port).or_default().push((slot, parent));
            }
        }
        let ports: Vec<u16> = listeners.keys().copied().collect();
        self.queues
            .set_listen_ports(&ports)
            .map_err(|e| setup_error!("steering the listening ports: {e:#}"))
    }
}

#[cfg(test)]
mod tests {
    use super::{Routes, reset_for, route_key};
    use crate::wire::{ChecksumPolicy, Frame, TcpFlags, parse_frame};

    fn tcp_frame(src: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[34 + 13] = flags;
        f
    }

    #[test]
    fn a_segment_routes_by_its_ports_and_a_runt_or_other_protocol_by_nothing() {
        let syn = tcp_frame([10, 0, 0, 2], 40000, 80, 0x02);
        assert_eq!(route_key(&syn), Some((0x0a00_0002, 40000, 80, true)));
        let ack = tcp_frame([10, 0, 0, 2], 40000, 80, 0x10);
        assert_eq!(route_key(&ack), Some((0x0a00_0002, 40000, 80, false)));
        let synack = tcp_frame([10, 0, 0, 2], 80, 61000, 0x12);
        assert_eq!(route_key(&synack).map(|k| k.3), Some(false));
        assert_eq!(route_key(&syn[..40]), None);
        let mut udp = syn.clone();
        udp[14 + 9] = 17;
        assert_eq!(route_key(&udp), None);
        let mut arp = syn;
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(route_key(&arp), None);
    }

    /// A segment from 10.0.0.`last`:40000 to port 80.
    fn from(last: u8, flags: u8) -> Vec<u8> {
        tcp_frame([10, 0, 0, last], 40000, 80, flags)
    }

    /// Routes with process 0 listening on port 80 alone.
    fn one_listener() -> Routes {
        Routes {
            range: (61000, 61999),
            slice: 1000 / super::SLOTS as u16,
            listeners: [(80, vec![(0, false)])].into(),
            flows: Default::default(),
            moved: Default::default(),
        }
    }

    #[test]
    fn a_connection_stays_with_its_process_when_a_forked_child_listens_too() {
        let mut routes = one_listener();
        let now = std::time::Instant::now();
        assert_eq!(routes.route(&from(2, 0x02), now), Some(0));
        assert_eq!(routes.route(&from(2, 0x10), now), Some(0));
        // A child forks and listens on the port: the parent (slot 0) gets no new
        // connection, but keeps the one it accepted.
        routes.listeners.insert(80, vec![(0, true), (1, false)]);
        for _ in 0..3 {
            assert_eq!(routes.route(&from(2, 0x10), now), Some(0));
        }
        for peer in 3..20 {
            assert_eq!(routes.route(&from(peer, 0x02), now), Some(1));
            assert_eq!(routes.route(&from(peer, 0x10), now), Some(1));
        }
    }

    #[test]
    fn a_moved_connection_goes_to_the_process_that_took_it_until_that_one_leaves() {
        let mut routes = one_listener();
        let now = std::time::Instant::now();
        assert_eq!(routes.route(&from(2, 0x02), now), Some(0));
        // The parent (slot 0) accepted it; its child in slot 3 took it.
        let key = super::parse_move("10.0.0.2 40000 80".split_whitespace()).unwrap();
        routes.steer_moved(key, 3);
        assert_eq!(routes.route(&from(2, 0x10), now), Some(3));
        // The parent's other connections and new ones stay with the parent.
        assert_eq!(routes.route(&from(4, 0x10), now), Some(0));
        assert_eq!(routes.route(&from(5, 0x02), now), Some(0));
        // A connection the parent opened, in the parent's slice.
        let slice = tcp_frame([10, 0, 0, 9], 80, 61001, 0x10);
        assert_eq!(routes.route(&slice, now), Some(0));
        routes.steer_moved((0x0a00_0009, 80, 61001), 3);
        assert_eq!(routes.route(&slice, now), Some(3));
        // Even when a child forked later listens on the port too.
        routes.listeners.insert(80, vec![(0, true), (1, false)]);
        assert_eq!(routes.route(&from(2, 0x10), now), Some(3));
        routes.listeners.insert(80, vec![(0, false)]);
        // A new connection on the same 4-tuple (the peer reused its port) is not the
        // moved one.
        let mut reused = one_listener();
        reused.steer_moved(key, 3);
        assert_eq!(reused.route(&from(2, 0x02), now), Some(0));
        assert_eq!(reused.route(&from(2, 0x10), now), Some(0));
        // The child leaves: its connections' segments are for nobody (a RST), not for
        // the parent, which gave them away; a new connection on the 4-tuple is the
        // parent's again.
        routes.forget_slot(3);
        assert_eq!(routes.route(&from(2, 0x10), now), None);
        assert_eq!(routes.route(&slice, now), None);
        assert_eq!(routes.route(&from(2, 0x02), now), Some(0));
        assert_eq!(routes.route(&from(2, 0x10), now), Some(0));
        assert_eq!(
            routes.route(&from(4, 0x10), now),
            Some(0),
            "the parent's own"
        );
        for bad in [
            "",
            "10.0.0.2 1",
            "::1 1 2",
            "10.0.0.2 1 2 3",
            "10.0.0.2 x 80",
        ] {
            assert_eq!(super::parse_move(bad.split_whitespace()), None, "{bad:?}");
        }
    }

    /// A whole, checksummed segment from the kit's emitter.
    fn segment(flags: TcpFlags, seq: u32, ack: Option<u32>, payload: &[u8]) -> Vec<u8> {
        use crate::wire::{SeqNum, TcpRepr, emit_tcp};
        let repr = TcpRepr {
            src_port: 40000,
            dst_port: 61000,
            seq: SeqNum(seq),
            ack: ack.map(SeqNum),
            flags,
            window: 1000,
            payload,
            ..Default::default()
        };
        let mut buf = vec![0u8; 200];
        let peer = std::net::Ipv4Addr::new(10, 0, 0, 2);
        let us = std::net::Ipv4Addr::new(10, 0, 0, 1);
        let n = emit_tcp(
            &mut buf,
            ([2; 6], [1; 6]),
            (peer, us),
            &repr,
            payload.len(),
            |_| {},
            crate::wire::TxChecksum::Complete,
        );
        buf.truncate(n);
        buf
    }

    #[test]
    fn a_segment_for_no_process_gets_the_rst_of_rfc_9293_and_a_rst_gets_none() {
        let mut out = [0u8; super::RESET_LEN];
        // With ACK: the RST takes its sequence number from the ACK field.
        let data = segment(TcpFlags::ACK, 100, Some(5000), b"hello");
        let n = reset_for(&data, [1; 6], ChecksumPolicy::Strict, &mut out);
        let Ok(Frame::Tcp { ip, tcp, eth_src }) = parse_frame(&out[..n]) else {
            panic!("no RST");
        };
        assert_eq!(
            (eth_src, ip.dst, tcp.dst_port, tcp.src_port),
            ([1; 6], std::net::Ipv4Addr::new(10, 0, 0, 2), 40000, 61000)
        );
        assert_eq!((tcp.flags, tcp.seq.0, tcp.ack), (TcpFlags::RST, 5000, None));
        // Without ACK (a SYN): sequence 0, ACK of the segment's end.
        let syn = segment(TcpFlags::SYN, 700, None, b"");
        let n = reset_for(&syn, [1; 6], ChecksumPolicy::Strict, &mut out);
        let Ok(Frame::Tcp { tcp, .. }) = parse_frame(&out[..n]) else {
            panic!("no RST");
        };
        assert_eq!(
            (tcp.flags, tcp.seq.0, tcp.ack.map(|a| a.0)),
            (TcpFlags::RST_ACK, 0, Some(701))
        );
        let rst = segment(TcpFlags::RST, 1, None, b"");
        assert_eq!(reset_for(&rst, [1; 6], ChecksumPolicy::Strict, &mut out), 0);
    }
}
