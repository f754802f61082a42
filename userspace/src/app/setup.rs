//! Turns the stack flags shared by every subcommand into a running [`Runtime`].
use super::runtime::{NetDevice, Runtime, WaitError, pin_to_cpu};
use crate::device::error::{Context, SetupResult, bail, setup_error};
use crate::device::holder;
use crate::device::netinfo::{self, kernel_neighbour, provoke_kernel_arp};
use crate::device::pcap::PcapDevice;
use crate::device::xdp::{QueueChoice, XdpModeChoice, XdpQueues};
use crate::stack::{AddressMode, Stack, StackConfig};
use crate::tcp::{CongestionKind, Instant};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;
use xdp_ebpf::{MAX_LISTEN_PORTS, MODE_OWNED_IP, MODE_SHARED_IP, SteerConfig};

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct StackArgs {
    /// Interface to bypass (default: the interface of the kernel's route to the first
    /// destination when one is known, else of the default route)
    #[cfg_attr(feature = "cli", arg(long, value_name = "IF"))]
    pub iface: Option<String>,
    /// Owned-IP mode: the stack owns this extra address (answers ARP and ping for it)
    #[cfg_attr(feature = "cli", arg(long, value_name = "ADDR"))]
    pub ip: Option<Ipv4Addr>,
    /// Next-hop router (default: from the kernel's routing table)
    #[cfg_attr(feature = "cli", arg(long, value_name = "ADDR"))]
    pub gateway: Option<Ipv4Addr>,
    /// The first destination, when known: the interface (unless given), the next hop
    /// and the source address come from the kernel's route to it.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub destination: Option<Ipv4Addr>,
    /// Pin the poll loop to this CPU
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub cpu: Option<usize>,
    /// Bind only this RX queue (default: every queue of the interface; refused when the
    /// interface has several, as RSS would hash flows to the others)
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub queue: Option<u32>,
    /// Force the XDP attach mode (default: skb on a veth or other bus-less device, where it
    /// takes a peer's GSO units whole; native elsewhere, falling back to skb)
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    pub xdp_mode: Option<XdpModeChoice>,
    /// Record every frame sent and received to this pcap file
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub pcap: Option<PathBuf>,
    /// Print the stack's counters at exit
    #[cfg_attr(feature = "cli", arg(long))]
    pub stats: bool,
    /// Congestion control
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t))]
    pub congestion: CongestionKind,
    /// Disable Nagle's algorithm
    #[cfg_attr(feature = "cli", arg(long))]
    pub nodelay: bool,
    /// Most connections held at once
    #[cfg_attr(
        feature = "cli",
        arg(long, value_name = "N", default_value_t = 100_000)
    )]
    pub max_connections: usize,
    /// Half-open connections per listener before SYN cookies
    #[cfg_attr(feature = "cli", arg(long, value_name = "N", default_value_t = 1024))]
    pub syn_backlog: usize,
    /// Per-connection send and receive buffer, bytes
    #[cfg_attr(feature = "cli", arg(long, value_name = "BYTES", default_value_t = 1 << 20))]
    pub buffer: usize,
    /// Stop on SIGINT/SIGTERM: set when the CLI parses its flags; a library leaves its
    /// host program's signals alone.
    #[cfg_attr(feature = "cli", arg(skip = true))]
    pub stop_on_signals: bool,
    /// Microseconds the poll loop spins with nothing received before it sleeps in
    /// poll(2) (the latency budget of an idle stack)
    #[cfg_attr(feature = "cli", arg(long, value_name = "US", default_value_t = super::runtime::DEFAULT_BUSY_POLL.as_micros() as u64))]
    pub busy_poll_us: u64,
    /// Keep XDP attached this long after exit, held by a small process, so that the
    /// next run on the interface neither attaches nor detaches (0: detach at exit;
    /// default: 1500 for curl, 0 otherwise, or $USERSPACE_XDP_LINGER_MS)
    #[cfg_attr(feature = "cli", arg(long, value_name = "MS"))]
    pub xdp_linger_ms: Option<u64>,
    /// The linger when neither the flag nor the environment gives one (the CLI's curl
    /// sets it). Only the `userspace` binary can start a holder: elsewhere none lingers.
    #[cfg_attr(feature = "cli", arg(skip))]
    pub default_linger_ms: u64,
}

#[cfg(feature = "cli")]
impl StackArgs {
    /// A library [`crate::net::StackBuilder`] with these flags: the apps build their
    /// stacks as any user of the library does. (`--stats` and the signals are the
    /// apps' own business.)
    pub fn builder(&self) -> crate::net::StackBuilder {
        let mut b = crate::Stack::builder()
            .congestion(self.congestion)
            .nodelay(self.nodelay)
            .max_connections(self.max_connections)
            .syn_backlog(self.syn_backlog)
            .buffer(self.buffer)
            .idle_spin(Duration::from_micros(self.busy_poll_us))
            .xdp_linger(self.xdp_linger_ms, self.default_linger_ms);
        if let Some(iface) = &self.iface {
            b = b.interface(iface.clone());
        }
        if let Some(ip) = self.ip {
            b = b.ip(ip);
        }
        if let Some(gateway) = self.gateway {
            b = b.gateway(gateway);
        }
        if let Some(destination) = self.destination {
            b = b.destination(destination);
        }
        if let Some(cpu) = self.cpu {
            b = b.cpu(cpu);
        }
        if let Some(queue) = self.queue {
            b = b.queue(queue);
        }
        if let Some(mode) = self.xdp_mode {
            b = b.xdp_mode(mode);
        }
        if let Some(pcap) = &self.pcap {
            b = b.pcap(pcap.clone());
        }
        b
    }
}

impl Default for StackArgs {
    /// The CLI's defaults (clap applies its own only when it parses), signals left alone.
    fn default() -> Self {
        let tcp = crate::tcp::Config::default();
        StackArgs {
            iface: None,
            ip: None,
            gateway: None,
            destination: None,
            cpu: None,
            queue: None,
            xdp_mode: None,
            pcap: None,
            stats: false,
            congestion: tcp.congestion,
            nodelay: tcp.nodelay,
            max_connections: 100_000,
            syn_backlog: 1024,
            buffer: tcp.send_buffer,
            stop_on_signals: false,
            busy_poll_us: super::runtime::DEFAULT_BUSY_POLL.as_micros() as u64,
            xdp_linger_ms: None,
            default_linger_ms: 0,
        }
    }
}

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
    let key = crate::stack::random_bytes::<16>();
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
pub struct Plan {
    pub iface: String,
    pub iface_ip: Ipv4Addr,
    pub steer: SteerConfig,
    pub stack: StackConfig,
    listen_ports: Vec<u16>,
    #[cfg_attr(not(feature = "cli"), allow(dead_code))]
    stop_on_signals: bool,
    busy_poll: Duration,
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
        if self.stack.mode == AddressMode::Owned {
            stack.announce();
        }
        let mut rt = Runtime::new(stack, device);
        #[cfg(feature = "cli")]
        if self.stop_on_signals {
            rt.stop_on_signals();
        }
        rt.iface = self.iface.clone();
        rt.iface_ip = self.iface_ip;
        rt.busy_poll = self.busy_poll;
        Ok(rt)
    }
}

pub fn open_runtime(args: &StackArgs, listen_ports: &[u16]) -> SetupResult<Runtime> {
    let plan = plan(args, listen_ports)?;
    if let Some(cpu) = args.cpu {
        pin_to_cpu(cpu)?;
    }
    let xdp = XdpQueues::open(
        &plan.iface,
        args.xdp_mode,
        args.queue.map_or(QueueChoice::All, QueueChoice::Only),
        plan.steer,
        holder::linger(
            args.xdp_linger_ms,
            Duration::from_millis(args.default_linger_ms),
        ),
    )?;
    tracing::info!(
        iface = plan.iface,
        ip = %plan.stack.ip,
        xdp = xdp.attached_mode(),
        queues = ?xdp.queues(),
        "stack up"
    );
    let device = match &args.pcap {
        Some(path) => NetDevice::Pcap(PcapDevice::create(xdp, path)?),
        None => NetDevice::Plain(xdp),
    };
    plan.runtime(device)
}

pub fn plan(args: &StackArgs, listen_ports: &[u16]) -> SetupResult<Plan> {
    let outbound = netinfo::outbound(args.iface.as_deref(), args.destination)?;
    let (iface, route_gateway) = (outbound.iface, outbound.gateway);
    let info = netinfo::interface(&iface)?;
    if !info.up {
        bail!("interface {iface} is down");
    }
    let (ip, prefix, mode) = match args.ip {
        Some(ip) => (ip, info.ipv4.map_or(24, |(_, p)| p), AddressMode::Owned),
        None => {
            // The route's source address when it is one of the interface's own, else
            // the interface's first.
            let source = outbound
                .source
                .and_then(|s| Some((s, netinfo::address_prefix(info.ifindex, s)?)));
            let (ip, prefix) = source.or(info.ipv4).ok_or_else(|| {
                setup_error!("interface {iface} has no IPv4 address (or pass --ip)")
            })?;
            (ip, prefix, AddressMode::Shared)
        }
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
    steer.listen_ports[..listen_ports.len()].copy_from_slice(listen_ports);
    let mut cfg = StackConfig::new(info.mac, ip, prefix);
    cfg.gateway = args.gateway.or(route_gateway);
    cfg.gateway_fixed = args.gateway.is_some();
    cfg.mode = mode;
    cfg.port_range = port_range;
    cfg.max_connections = args.max_connections;
    cfg.syn_backlog = args.syn_backlog;
    cfg.isn_key = boot_key();
    cfg.start_counter = u32::from_le_bytes(crate::stack::random_bytes::<4>());
    cfg.tcp.mss = (info.mtu.min(1500) - 40) as u16;
    cfg.tcp.congestion = args.congestion;
    cfg.tcp.nodelay = args.nodelay;
    cfg.tcp.send_buffer = args.buffer;
    cfg.tcp.recv_buffer = args.buffer;
    cfg.tcp.max_ooo_bytes = args.buffer;
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
        stop_on_signals: args.stop_on_signals,
        busy_poll: Duration::from_micros(args.busy_poll_us),
    })
}

/// How often a wait for a next hop asks the kernel's neighbour table.
const NEIGHBOUR_LOOK_EVERY: Duration = Duration::from_millis(5);

/// Makes sure the stack knows the MAC of the next hop towards `dst`. The kernel's
/// neighbour table is the first hint; in shared-IP mode ARP replies go to the kernel, so
/// it is asked to resolve; in owned-IP mode the stack's own ARP requests do it.
pub fn resolve_next_hop(rt: &mut Runtime, dst: Ipv4Addr, timeout: Duration) -> SetupResult<()> {
    let hop = crate::net::learn_route(&mut rt.stack, &rt.iface, dst)
        .map_err(|refusal| setup_error!("no route to {dst}: {refusal}"))?;
    if rt.stack.arp_cache().lookup(hop).is_some() {
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
                    provoke_kernel_arp(hop);
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
                Err(WaitError::TimedOut) => Err(setup_error!("no ARP reply from next hop {hop}")),
            }
        }
        AddressMode::Owned => {
            // The stack sends the requests itself when a connection needs the neighbour;
            // here it is asked directly so that a silent neighbour is a clear error.
            let now = rt.now();
            rt.stack.request_arp(now, hop);
            match rt.wait(Some(deadline), |stack, now| {
                if stack.arp_cache().lookup(hop).is_some() {
                    return Some(());
                }
                stack.request_arp(now, hop);
                None
            }) {
                Ok(()) => Ok(()),
                Err(WaitError::Interrupted) => bail!("interrupted"),
                Err(WaitError::TimedOut) => Err(setup_error!("no ARP reply from next hop {hop}")),
            }
        }
    }
    .context("resolving the next hop")
}

/// Every counter of the stack, the XDP program and the AF_XDP socket.
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

/// `--stats`: prints [`stats_report`] on stderr.
pub fn print_stats(rt: &Runtime) {
    eprint!("{}", stats_report(rt));
}

/// Prints [`diagnose`]'s lines as warnings on stderr.
pub fn warn_about_losses(rt: &Runtime) {
    for line in diagnose(rt) {
        eprintln!("warning: {line}");
    }
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
