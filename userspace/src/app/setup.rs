//! The stack flags every subcommand shares, turned into the library's [`StackConfig`]
//! and a running [`Runtime`], and the reports the commands print at exit.
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use userspace::device::error::SetupResult;
use userspace::device::holder;
use userspace::device::xdp::XdpModeChoice;
use userspace::net::runtime::Runtime;
use userspace::net::setup::{diagnose, stats_report};
use userspace::net::{self, StackBuilder, StackConfig};
use userspace::tcp::CongestionKind;

pub use userspace::net::setup::resolve_next_hop;

#[derive(Debug, Clone, clap::Args)]
/// The stack flags every subcommand takes; they convert into the library's
/// [`StackConfig`].
pub struct StackArgs {
    /// Interface to bypass (default: the interface of the kernel's route to the first
    /// destination when one is known, else of the default route)
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    /// Owned-IP mode: the stack owns this extra address, IPv4 or IPv6 (answers ARP or
    /// neighbour solicitations, and ping, for it)
    #[arg(long, value_name = "ADDR", value_parser = parse_owned_ip)]
    pub ip: Option<IpAddr>,
    /// Next-hop router (default: from the kernel's routing table)
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<Ipv4Addr>,
    /// Pin the poll loop to this CPU
    #[arg(long, value_name = "N")]
    pub cpu: Option<usize>,
    /// Bind only this RX queue (default: every queue of the interface; refused when the
    /// interface has several, as RSS would hash flows to the others)
    #[arg(long, value_name = "N")]
    pub queue: Option<u32>,
    /// Force the XDP attach mode (default: skb on a veth or other bus-less device, where it
    /// takes a peer's GSO units whole; native elsewhere, falling back to skb)
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// Record every frame sent and received to this pcap file
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Print the stack's counters at exit
    #[arg(long)]
    pub stats: bool,
    /// Congestion control
    #[arg(long, value_enum, default_value_t)]
    pub congestion: CongestionArg,
    /// Disable Nagle's algorithm
    #[arg(long)]
    pub nodelay: bool,
    /// Most connections held at once
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Half-open connections per listener before SYN cookies
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub syn_backlog: usize,
    /// Per-connection send and receive buffer, bytes
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub buffer: usize,
    /// Stop on SIGINT/SIGTERM: set when the CLI parses its flags (a library leaves its
    /// host program's signals alone, so the library's configuration has no such field).
    #[arg(skip = true)]
    pub stop_on_signals: bool,
    /// Microseconds the poll loop spins with nothing received before it sleeps in
    /// poll(2) (the latency budget of an idle stack)
    #[arg(long, value_name = "US", default_value_t = net::DEFAULT_IDLE_SPIN.as_micros() as u64)]
    pub busy_poll_us: u64,
    /// Keep XDP attached this long after exit, held by a small process, so that the
    /// next run on the interface neither attaches nor detaches (0: detach at exit;
    /// default: 1500 for curl, 0 otherwise, or $USERSPACE_XDP_LINGER_MS)
    #[arg(long, value_name = "MS")]
    pub xdp_linger_ms: Option<u64>,
    /// The linger when neither the flag nor the environment gives one (the CLI's curl
    /// sets it). Only the `userspace` binary can start a holder: elsewhere none lingers.
    #[arg(skip)]
    pub default_linger_ms: u64,
}

/// `--ip ADDR`: an IPv4 or IPv6 address (the library's `ip` or `ipv6`).
fn parse_owned_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

/// `--congestion`: the library's [`CongestionKind`] as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CongestionArg {
    /// NewReno (RFC 5681, RFC 6582).
    NewReno,
    /// CUBIC (RFC 8312), the default, as in Linux.
    #[default]
    Cubic,
}

impl From<CongestionArg> for CongestionKind {
    fn from(arg: CongestionArg) -> Self {
        match arg {
            CongestionArg::NewReno => CongestionKind::NewReno,
            CongestionArg::Cubic => CongestionKind::Cubic,
        }
    }
}

/// `--xdp-mode`: the library's [`XdpModeChoice`] as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// In the driver (fastest; veth supports it).
    Native,
    /// Generic XDP on the socket buffer (works everywhere, slower).
    Skb,
}

impl From<XdpModeArg> for XdpModeChoice {
    fn from(arg: XdpModeArg) -> Self {
        match arg {
            XdpModeArg::Native => XdpModeChoice::Native,
            XdpModeArg::Skb => XdpModeChoice::Skb,
        }
    }
}

impl StackArgs {
    /// The library's configuration with these flags: the apps build their stacks as
    /// any user of the library does. (`--stats` and the signals are the apps' own
    /// business.)
    pub fn config(&self) -> StackConfig {
        let mut config = StackConfig::default();
        config.interface = self.iface.clone();
        match self.ip {
            Some(IpAddr::V4(v4)) => config.ip = Some(v4),
            Some(IpAddr::V6(v6)) => config.ipv6 = Some(v6),
            None => {}
        }
        config.gateway = self.gateway;
        config.cpu = self.cpu;
        config.queue = self.queue;
        config.xdp_mode = self.xdp_mode.map(Into::into);
        config.pcap = self.pcap.clone();
        config.congestion = self.congestion.into();
        config.nodelay = self.nodelay;
        config.max_connections = self.max_connections;
        config.syn_backlog = self.syn_backlog;
        config.buffer = self.buffer;
        config.idle_spin = Duration::from_micros(self.busy_poll_us);
        config.xdp_linger = holder::linger(
            self.xdp_linger_ms,
            Duration::from_millis(self.default_linger_ms),
        );
        config
    }

    /// A library [`StackBuilder`] with these flags.
    pub fn builder(&self) -> StackBuilder {
        StackBuilder::from(self.config())
    }
}

impl Default for StackArgs {
    /// The CLI's defaults (clap applies its own only when it parses), signals left alone.
    fn default() -> Self {
        let config = StackConfig::default();
        StackArgs {
            iface: None,
            ip: None,
            gateway: None,
            cpu: None,
            queue: None,
            xdp_mode: None,
            pcap: None,
            stats: false,
            congestion: CongestionArg::default(),
            nodelay: config.nodelay,
            max_connections: config.max_connections,
            syn_backlog: config.syn_backlog,
            buffer: config.buffer,
            stop_on_signals: false,
            busy_poll_us: config.idle_spin.as_micros() as u64,
            xdp_linger_ms: None,
            default_linger_ms: 0,
        }
    }
}

/// SIGINT and SIGTERM set `stop` (the commands stop gracefully on them).
pub fn stop_on_signals(stop: &Arc<AtomicBool>) {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
}

/// The library's [`net::setup::open_runtime`] with these flags, stopped by SIGINT and
/// SIGTERM when the flags were parsed from a command line.
pub fn open_runtime(args: &StackArgs, listen_ports: &[u16]) -> SetupResult<Runtime> {
    let rt = net::setup::open_runtime(&args.config(), listen_ports)?;
    if args.stop_on_signals {
        stop_on_signals(&rt.stop);
    }
    Ok(rt)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        stack: StackArgs,
    }

    #[test]
    fn the_library_defaults_are_the_commands_defaults() {
        let parsed = Flags::parse_from(["userspace"]).stack;
        assert!(parsed.stop_on_signals);
        assert_eq!(parsed.config(), StackConfig::default());
        assert_eq!(StackArgs::default().config(), StackConfig::default());
        assert_eq!(StackConfig::default().max_connections, 100_000);
        assert_eq!(StackConfig::default().buffer, 1 << 20);
    }
}
