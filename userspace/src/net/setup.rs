//! The set-up every user of the library runs: where the stack goes, with which
//! address, what the XDP program steers to it, and the stack's configuration (a
//! plan); then the XDP program, the AF_XDP sockets and a [`Runtime`] around them.
//! Also the reports of a running stack's counters and losses.
use super::config::StackConfig;
use super::io_error;
use super::runtime::{NetDevice, Runtime, WaitError, pin_to_cpu};
use super::shard::{ShardMember, Shards};
use crate::device::error::{Context, SetupResult, bail, setup_error};
use crate::device::holder;
use crate::device::netinfo::{
    self, kernel_neighbour_ip as kernel_neighbour, provoke_kernel_resolve,
};
use crate::device::pcap::PcapDevice;
use crate::device::startup;
use crate::device::xdp::{QueueChoice, SharedProgram, XdpProgram, XdpQueues, choose_queues};
use crate::stack::{self, AddressMode, Stack};
use crate::tcp::Instant;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use xdp_ebpf::{MAX_LISTEN_PORTS, MODE_OWNED_IP, MODE_SHARED_IP, SteerConfig};

/// The kernel's ephemeral port range; the stack takes ports above it in shared-IP mode.
fn kernel_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Where the per-boot secret lives: /run is emptied at every boot.
const BOOT_KEY: &str = "/run/userspace/isn.key";

/// The secret for ISNs, timestamp offsets, ports and SYN cookies (RFC 6528 section 3). It
/// is kept per boot, as Linux keeps its own: then ISNs and timestamps to the same peer
/// keep growing across runs, and a peer's TIME-WAIT accepts a reused 4-tuple. Only root
/// can read it; if it cannot be stored, a per-process key is used.
fn boot_key() -> [u8; 16] {
    if let Ok(bytes) = std::fs::read(BOOT_KEY)
        && let Ok(key) = <[u8; 16]>::try_from(bytes.as_slice())
    {
        return key;
    }
    let key = stack::random_bytes::<16>();
    let stored = (|| -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create("/run/userspace")?;
        let tmp = format!("{BOOT_KEY}.{}", std::process::id());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, &key)?;
        // Publish atomically; when two processes race, the first one's key wins.
        std::fs::hard_link(&tmp, BOOT_KEY).or_else(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        std::fs::remove_file(&tmp)
    })();
    match (stored, std::fs::read(BOOT_KEY)) {
        (Ok(()), Ok(bytes)) => <[u8; 16]>::try_from(bytes.as_slice()).unwrap_or(key),
        _ => key,
    }
}

/// Everything decided before the device opens: where, which address, what to steer, and
/// the stack's configuration. One plan serves one queue or several.
pub(crate) struct Plan {
    /// The interface to bypass.
    pub iface: String,
    /// The interface's own IPv4 address.
    pub iface_ip: Ipv4Addr,
    /// What the XDP program steers to the stack.
    pub steer: SteerConfig,
    /// The sans-IO stack's configuration.
    pub stack: stack::StackConfig,
    listen_ports: Vec<u16>,
    busy_poll: Duration,
    peer_table: Option<std::path::PathBuf>,
}

impl Plan {
    /// A runtime around `device`: a stack listening on the plan's ports.
    pub fn runtime(&self, device: NetDevice) -> SetupResult<Runtime> {
        let mut stack = Stack::new(self.stack.clone());
        for port in &self.listen_ports {
            stack
                .listen(*port, 4096)
                .map_err(|e| setup_error!("listen on {port}: {e}"))?;
        }
        if self.stack.mode == AddressMode::Owned && !self.stack.ip.is_unspecified() {
            stack.announce();
        }
        let mut rt = Runtime::new(stack, device);
        rt.iface = self.iface.clone();
        rt.iface_ip = self.iface_ip;
        rt.busy_poll = self.busy_poll;
        if let Some(path) = &self.peer_table {
            rt.keep_peer_table(path);
        }
        await_dad(&mut rt)?;
        Ok(rt)
    }
}

/// An owned IPv6 address is tentative until duplicate address detection ends (RFC
/// 4862 5.4): the stack's first turns run it, so that no connection or listener meets
/// a tentative address. Another node with the address is an error.
fn await_dad(rt: &mut Runtime) -> SetupResult<()> {
    if rt.stack.ipv6_state() != stack::Ipv6State::Tentative {
        return Ok(());
    }
    let deadline = rt.now() + stack::DAD_WAIT + Duration::from_millis(500);
    let state = rt.wait(Some(deadline), |stack, _| {
        let state = stack.ipv6_state();
        (state != stack::Ipv6State::Tentative).then_some(state)
    });
    match state {
        Ok(stack::Ipv6State::Duplicate) => bail!(
            "duplicate address detection: another node on the link has {}",
            rt.stack.ipv6().map_or_else(String::new, |a| a.to_string())
        ),
        Ok(_) => Ok(()),
        Err(WaitError::Interrupted) => bail!("interrupted"),
        Err(WaitError::TimedOut) => bail!("duplicate address detection did not end"),
    }
}

/// Opens the stack `config` describes on the calling thread (pinned to
/// [`StackConfig::cpu`] if set): loads and attaches the XDP program, binds an AF_XDP
/// socket on every RX queue (or [`StackConfig::queue`]), and returns the poll loop
/// around a stack listening on `listen_ports`. Needs root (CAP_NET_ADMIN and CAP_BPF).
pub fn open_runtime(config: &StackConfig, listen_ports: &[u16]) -> SetupResult<Runtime> {
    let planning = startup::step("plan: route, interface, addresses");
    let mut plan = plan(config, listen_ports)?;
    drop(planning);
    if let Some(cpu) = config.cpu {
        pin_to_cpu(cpu)?;
    }
    if config.switch {
        if config.ip.is_some() {
            // See app/exec.rs SHARE_WITH_IP: the switch steers the interface's address.
            bail!(
                "the switch serves the interface's own address only: leave out the owned address (--ip, USERSPACE_IP) or the switch (--share, USERSPACE_SWITCH)"
            );
        }
        let info = netinfo::interface(&plan.iface)?;
        let port = crate::device::switch::SwitchPort::attach(info.ifindex, info.mac, info.mtu)
            .context("joining the interface's switch")?
            .ok_or_else(|| {
                setup_error!(
                    "no switch runs on {}: start the program with `userspace exec --share`",
                    plan.iface
                )
            })?;
        // This process's slice of the ephemeral ports: the switch steers it here.
        plan.stack.port_range = port.port_range;
        let xdp = XdpQueues::switched(port);
        if !listen_ports.is_empty() {
            xdp.set_listen_ports(listen_ports)?;
        }
        tracing::info!(iface = plan.iface, ip = %plan.stack.ip, "stack up, through the switch");
        return plan.runtime(NetDevice::Plain(xdp));
    }
    // Only a binary that can run the holder lingers (`holder::linger` knows).
    let linger = config
        .xdp_linger
        .and_then(|d| holder::linger(Some(d.as_millis() as u64), Duration::ZERO));
    let xdp = XdpQueues::open(
        &plan.iface,
        config.xdp_mode,
        config.queue.map_or(QueueChoice::All, QueueChoice::Only),
        plan.steer,
        linger,
    )?;
    tracing::info!(
        iface = plan.iface,
        ip = %plan.stack.ip,
        xdp = xdp.attached_mode(),
        queues = ?xdp.queues(),
        tx_checksum = xdp.tx_checksum().describe(),
        tx_budget = xdp.tx_budget(),
        "stack up"
    );
    let device = match &config.pcap {
        Some(path) => NetDevice::Pcap(PcapDevice::create(xdp, path)?),
        None => NetDevice::Plain(xdp),
    };
    let runtime = plan.runtime(device);
    startup::print_if_enabled();
    runtime
}

/// The one plan of both ways of starting stacks per group of RX queues
/// ([`super::StackBuilder::build_per_queue`] and [`super::StackBuilder::run_per_queue`]):
/// the [`Plan`], the loaded program, how many stacks, and the CPU of each.
pub(crate) struct PerQueuePlan {
    /// What every stack of the group runs.
    pub plan: Plan,
    /// The XDP program they share; steering starts with [`PerQueuePlan::enable`].
    pub program: SharedProgram,
    /// How many stacks.
    pub stacks: usize,
    cores: Vec<core_affinity::CoreId>,
    first_cpu: usize,
}

impl PerQueuePlan {
    /// Loads the program on the interface `config` names and deals its RX queues to
    /// `stacks` stacks (`None`: one per queue, at most one per CPU).
    pub fn new(config: &StackConfig, stacks: Option<u32>) -> io::Result<(Self, Shards)> {
        let plan = plan(config, &[]).map_err(io_error)?;
        let program = XdpProgram::load(&plan.iface, config.xdp_mode).map_err(io_error)?;
        let queues = choose_queues(&program, QueueChoice::All).map_err(io_error)?;
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let stacks = stack_count(stacks, &plan.iface, queues.len(), cores.len())?;
        let per_queue = PerQueuePlan {
            plan,
            program,
            stacks,
            cores,
            first_cpu: config.cpu.unwrap_or(0),
        };
        Ok((per_queue, Shards::new(queues, stacks)))
    }

    /// Pins the calling thread to stack `index`'s CPU: from [`StackConfig::cpu`] on
    /// (else from 0), round the machine's CPUs.
    pub fn pin(&self, index: usize) {
        let core = self
            .cores
            .get((self.first_cpu + index) % self.cores.len().max(1));
        if let Some(core) = core {
            core_affinity::set_for_current(*core);
        }
    }

    /// Binds the AF_XDP sockets of `member`'s queues.
    pub fn bind(&self, member: &ShardMember) -> SetupResult<XdpQueues> {
        XdpQueues::bind(&self.program, &member.queues)
    }

    /// The runtime of `member` around its bound sockets.
    pub fn runtime(&self, device: XdpQueues, member: ShardMember) -> SetupResult<Runtime> {
        let mut rt = self.plan.runtime(NetDevice::Plain(device))?;
        rt.join_shards(member);
        Ok(rt)
    }

    /// Starts steering, once every queue has its socket.
    pub fn enable(&self) -> SetupResult<()> {
        self.program
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enable(self.plan.steer)
    }
}

/// How many stacks share an interface with `queues` RX queues on a machine with
/// `cores` CPUs: the number asked for, or one per queue (at most one per CPU).
///
/// More stacks than queues is an error, not a quiet clamp: each stack is a thread and a
/// CPU the caller planned for, and a stack without a queue would receive nothing. The
/// caller learns the limit and its remedy (raise the channels, `ethtool -L`), as
/// `ethtool -L` itself refuses more channels than the device has.
fn stack_count(
    requested: Option<u32>,
    iface: &str,
    queues: usize,
    cores: usize,
) -> io::Result<usize> {
    match requested {
        Some(0) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "at least one stack is needed",
        )),
        Some(n) if n as usize > queues => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{n} stacks: {iface} has {queues} RX queue(s), so at most {queues} stacks (more queues: ethtool -L {iface} combined N)"
            ),
        )),
        Some(n) => Ok(n as usize),
        None => Ok(queues.min(cores.max(1))),
    }
}

/// Everything decided before the device opens (see [`Plan`]).
pub(crate) fn plan(config: &StackConfig, listen_ports: &[u16]) -> SetupResult<Plan> {
    // An IPv6 first destination (and no IPv4 one) picks the interface of its route.
    let outbound = match (
        config.interface.as_deref(),
        config.destination,
        config.destination6,
    ) {
        (None, None, Some(dst6)) => {
            let (iface, route) = netinfo::outbound6(dst6)?;
            netinfo::Outbound {
                iface,
                gateway: None,
                source: None,
            }
            .with_gateway6(route.gateway, route.source)
        }
        _ => netinfo::outbound(config.interface.as_deref(), config.destination)?
            .with_gateway6(None, None),
    };
    let (iface, route_gateway) = (outbound.0.iface, outbound.0.gateway);
    let info = netinfo::interface(&iface)?;
    if !info.up {
        bail!("interface {iface} is down");
    }
    let owned = config.ip.is_some() || config.ipv6.is_some();
    let (ip, prefix, mode) = match config.ip {
        Some(ip) => (ip, info.ipv4.map_or(24, |(_, p)| p), AddressMode::Owned),
        // An owned IPv6 address alone: no IPv4 (0.0.0.0 matches no frame).
        None if owned => (Ipv4Addr::UNSPECIFIED, 32, AddressMode::Owned),
        None => {
            // The route's source address when it is one of the interface's own, else
            // the interface's first.
            let source = outbound
                .0
                .source
                .and_then(|s| Some((s, netinfo::address_prefix(info.ifindex, s)?)));
            match source.or(info.ipv4) {
                Some((ip, prefix)) => (ip, prefix, AddressMode::Shared),
                // An IPv6-only interface: the stack speaks IPv6 alone.
                None if info.ipv6.is_some() => (Ipv4Addr::UNSPECIFIED, 32, AddressMode::Shared),
                None => bail!("interface {iface} has no IPv4 or IPv6 address (or pass --ip)"),
            }
        }
    };
    // The IPv6 address: the owned one, or in shared mode the route's source when it is
    // the interface's, else the interface's first usable one.
    let ipv6: Option<(Ipv6Addr, u8)> = match (config.ipv6, mode) {
        (Some(v6), _) => Some((v6, info.ipv6.map_or(64, |(_, p)| p))),
        (None, AddressMode::Owned) => None,
        (None, AddressMode::Shared) => outbound
            .2
            .and_then(|s| Some((s, netinfo::address_prefix6(info.ifindex, s)?)))
            .or(info.ipv6),
    };
    if listen_ports.len() > MAX_LISTEN_PORTS {
        bail!("at most {MAX_LISTEN_PORTS} listening ports");
    }
    let port_range = match mode {
        AddressMode::Owned => (49_152, 65_535),
        AddressMode::Shared => {
            let (_, hi) = kernel_port_range();
            if hi >= 65_000 {
                bail!(
                    "the kernel's ephemeral port range reaches {hi}: lower net.ipv4.ip_local_port_range to leave ports for the stack"
                );
            }
            (hi + 1, 65_535)
        }
    };
    let mut steer = SteerConfig {
        ipv4: ip.octets(),
        mode: if mode == AddressMode::Owned {
            MODE_OWNED_IP
        } else {
            MODE_SHARED_IP
        },
        port_lo: port_range.0,
        port_hi: port_range.1,
        ..Default::default()
    };
    // The XDP program steers the stack's IPv6 address: everything for an owned one
    // (NDP included), the stack's ports on a shared one. An owned IPv4 address with no
    // IPv6 one steers no IPv6.
    (steer.ipv6, steer.ipv6_mode) = match (config.ipv6, ipv6) {
        (Some(owned), _) => (owned.octets(), MODE_OWNED_IP),
        (None, Some((v6, _))) if mode == AddressMode::Shared => (v6.octets(), MODE_SHARED_IP),
        _ => ([0; 16], MODE_SHARED_IP),
    };
    steer.listen_ports[..listen_ports.len()].copy_from_slice(listen_ports);
    let mut cfg = stack::StackConfig::new(info.mac, ip, prefix);
    if let Some((v6, prefix6)) = ipv6 {
        cfg.ipv6 = Some(v6);
        cfg.ipv6_prefix_len = prefix6;
    }
    cfg.gateway6 = outbound.1;
    cfg.gateway = config.gateway.or(route_gateway);
    cfg.gateway_fixed = config.gateway.is_some();
    cfg.mode = mode;
    cfg.port_range = port_range;
    cfg.max_connections = config.max_connections;
    cfg.syn_backlog = config.syn_backlog;
    cfg.isn_key = boot_key();
    cfg.start_counter = u32::from_le_bytes(stack::random_bytes::<4>());
    cfg.tcp.mss = (info.mtu.min(1500) - 40) as u16;
    cfg.tcp.congestion = config.congestion;
    cfg.tcp.nodelay = config.nodelay;
    cfg.tcp.send_buffer = config.buffer;
    cfg.tcp.recv_buffer = config.buffer;
    cfg.tcp.max_ooo_bytes = config.buffer;
    // A veth delivers the peer's CHECKSUM_PARTIAL frames as they are; a wire never does.
    if netinfo::frames_come_from_memory(&iface) {
        cfg.checksum_policy = crate::wire::ChecksumPolicy::AcceptPartial;
    }
    Ok(Plan {
        iface_ip: info.ipv4.map_or(ip, |(a, _)| a),
        iface,
        steer,
        stack: cfg,
        listen_ports: listen_ports.to_vec(),
        busy_poll: config.idle_spin,
        peer_table: config.peer_table.clone(),
    })
}

/// How often a wait for a next hop asks the kernel's neighbour table.
const NEIGHBOUR_LOOK_EVERY: Duration = Duration::from_millis(5);

/// Makes sure the stack knows the MAC of the next hop towards `dst`. The kernel's
/// neighbour table is the first hint; in shared-IP mode ARP replies go to the kernel, so
/// it is asked to resolve; in owned-IP mode the stack's own ARP requests do it.
pub fn resolve_next_hop(
    rt: &mut Runtime,
    dst: impl Into<IpAddr>,
    timeout: Duration,
) -> SetupResult<()> {
    let dst = dst.into();
    let hop = crate::net::learn_route(&mut rt.stack, &rt.iface, dst)
        .map_err(|refusal| setup_error!("no route to {dst}: {refusal}"))?;
    let what = if hop.is_ipv6() {
        "no neighbour advertisement"
    } else {
        "no ARP reply"
    };
    if rt.stack.neighbour_mac(hop).is_some() {
        return Ok(());
    }
    let iface = rt.iface.clone();
    if let Some(mac) = kernel_neighbour(&iface, hop) {
        rt.stack.add_neighbour(hop, mac);
        return Ok(());
    }
    let deadline = rt.now() + timeout;
    match rt.stack.config().mode {
        AddressMode::Shared => {
            let mut last_provoke: Option<Instant> = None;
            let mut last_look: Option<Instant> = None;
            let found = rt.wait(Some(deadline), |_, now| {
                if last_provoke.is_none_or(|t| now >= t + Duration::from_millis(300)) {
                    provoke_kernel_resolve(&iface, hop);
                    last_provoke = Some(now);
                }
                // The kernel's table is asked every few ms, not at every turn.
                if last_look.is_some_and(|t| now < t + NEIGHBOUR_LOOK_EVERY) {
                    return None;
                }
                last_look = Some(now);
                kernel_neighbour(&iface, hop)
            });
            match found {
                Ok(mac) => {
                    rt.stack.add_neighbour(hop, mac);
                    Ok(())
                }
                Err(WaitError::Interrupted) => bail!("interrupted"),
                Err(WaitError::TimedOut) => Err(setup_error!("{what} from next hop {hop}")),
            }
        }
        AddressMode::Owned => {
            // The stack sends the requests itself when a connection needs the neighbour;
            // here it is asked directly so that a silent neighbour is a clear error.
            let now = rt.now();
            rt.stack.request_neighbour_ip(now, hop);
            match rt.wait(Some(deadline), |stack, now| {
                if stack.neighbour_mac(hop).is_some() {
                    return Some(());
                }
                stack.request_neighbour_ip(now, hop);
                None
            }) {
                Ok(()) => Ok(()),
                Err(WaitError::Interrupted) => bail!("interrupted"),
                Err(WaitError::TimedOut) => Err(setup_error!("{what} from next hop {hop}")),
            }
        }
    }
    .context("resolving the next hop")
}

/// Every counter of the stack, the XDP program, the AF_XDP sockets and their UMEM
/// frames, as text, one `name value` line each under a `* section:` heading.
pub fn stats_report(rt: &Runtime) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let xdp = rt.device.xdp();
    let _ = writeln!(out, "* stack counters:");
    let _ = write!(out, "{}", rt.stack.stats);
    let t = rt.stack.connection_totals();
    let _ = writeln!(
        out,
        "* connections (open now: {}):",
        rt.stack.connection_count()
    );
    let _ = writeln!(out, "  {:<24} {}", "segments_in", t.segments_in);
    let _ = writeln!(out, "  {:<24} {}", "segments_out", t.segments_out);
    let _ = writeln!(out, "  {:<24} {}", "retransmits", t.retransmits);
    let _ = writeln!(out, "  {:<24} {}", "fast_retransmits", t.fast_retransmits);
    let _ = writeln!(out, "  {:<24} {}", "timeouts", t.timeouts);
    let _ = writeln!(
        out,
        "  {:<24} {}",
        "out_of_order_segments", t.out_of_order_segments
    );
    let _ = writeln!(out, "  {:<24} {}", "challenge_acks", t.challenge_acks);
    let s = xdp.steer_counters();
    let _ = writeln!(
        out,
        "* xdp program ({} mode, sockets on queues {:?} of {}):",
        xdp.attached_mode(),
        xdp.queues(),
        xdp.interface_queues()
    );
    let _ = writeln!(out, "  {:<24} {}", "steered", s.steered);
    let _ = writeln!(out, "  {:<24} {}", "passed_to_kernel", s.passed);
    let _ = writeln!(out, "  {:<24} {}", "no_socket", s.no_socket);
    out.push_str(&s.ipv6.report());
    let _ = writeln!(out, "* tx: tcp checksum {}", xdp.tx_checksum().describe());
    let _ = writeln!(out, "  {:<24} {}", "frames_per_kick", xdp.tx_budget());
    let f = xdp.frame_account();
    let _ = writeln!(out, "* umem frames:");
    let _ = writeln!(out, "  {:<24} {}", "total", f.total);
    let _ = writeln!(out, "  {:<24} {}", "in_fill_ring", f.in_fill_ring);
    let _ = writeln!(out, "  {:<24} {}", "awaiting_fill", f.awaiting_fill);
    let _ = writeln!(out, "  {:<24} {}", "in_tx_ring", f.in_tx_ring);
    let _ = writeln!(out, "  {:<24} {}", "free_for_tx", f.free_for_tx);
    let _ = writeln!(out, "  {:<24} {}", "missing", f.missing());
    let (rx_dropped, rx_ring_full, fill_empty) = xdp.socket_stats();
    let _ = writeln!(out, "* af_xdp sockets:");
    let _ = writeln!(out, "  {:<24} {}", "rx_dropped", rx_dropped);
    let _ = writeln!(out, "  {:<24} {}", "rx_ring_full", rx_ring_full);
    let _ = writeln!(out, "  {:<24} {}", "rx_fill_ring_empty", fill_empty);
    out
}

/// One line per way the stack has been losing what the user needed: packets on queues
/// without a socket, segments dropped for checksums. Each says what to do about it.
pub fn diagnose(rt: &Runtime) -> Vec<String> {
    let mut lines = Vec::new();
    let xdp = rt.device.xdp();
    for (queue, n) in xdp.no_socket_by_queue() {
        lines.push(format!(
            "{n} packet(s) for the stack arrived on RX queue {queue} of {}, which has no AF_XDP socket (the stack has queues {:?}), and were dropped: the interface's queues changed after start-up; restart the stack (without --queue) so that every queue gets one",
            rt.iface,
            xdp.queues()
        ));
    }
    let (rx_dropped, _, _) = xdp.socket_stats();
    if rx_dropped > 0 {
        let why = if xdp.multi_buffer() {
            "larger than 64 KiB, or the fill ring ran short of frames (the stack fell behind)"
        } else if xdp.attached_mode() == "skb" {
            "XDP runs in generic (skb) mode here, where a local peer's GSO segments arrive whole, and this kernel (before 6.6) cannot split them over several frames; native mode avoids it (on a veth: as many RX queues as the peer has TX queues)"
        } else {
            "too large for a 2048-byte frame (an MTU above 2000?)"
        };
        lines.push(format!(
            "{rx_dropped} frame(s) dropped by the AF_XDP sockets: {why}"
        ));
    }
    let bad = rt.stack.stats.drop_bad_tcp_checksum;
    if bad > 0 {
        let remedy = if rt.stack.config().checksum_policy == crate::wire::ChecksumPolicy::Strict {
            format!(
                "{} has a bus device, so partial checksums are not accepted from it; if a local peer's TX checksum offload sends them, turn it off there (`ethtool -K <peer-if> tx off`)",
                rt.iface
            )
        } else {
            "the frames were corrupted on the way".to_string()
        };
        lines.push(format!(
            "{bad} TCP segment(s) dropped for bad checksums: {remedy}"
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::stack_count;
    use std::io::ErrorKind;

    #[test]
    fn per_queue_stacks_are_as_many_as_asked_and_never_more_than_queues() {
        assert_eq!(stack_count(Some(2), "eth0", 4, 8).unwrap(), 2);
        assert_eq!(stack_count(Some(4), "eth0", 4, 2).unwrap(), 4);
        assert_eq!(stack_count(None, "eth0", 4, 2).unwrap(), 2);
        assert_eq!(stack_count(None, "eth0", 2, 8).unwrap(), 2);
        assert_eq!(stack_count(None, "eth0", 1, 0).unwrap(), 1);
        let zero = stack_count(Some(0), "eth0", 4, 8).unwrap_err();
        assert_eq!(zero.kind(), ErrorKind::InvalidInput);
        let more = stack_count(Some(5), "eth0", 4, 8).unwrap_err();
        assert_eq!(more.kind(), ErrorKind::InvalidInput);
        assert_eq!(
            more.to_string(),
            "5 stacks: eth0 has 4 RX queue(s), so at most 4 stacks (more queues: ethtool -L eth0 combined N)"
        );
    }
}
