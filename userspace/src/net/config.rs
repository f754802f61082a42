//! What a running stack is made of: the library's own configuration, which
//! [`super::StackBuilder`] fills in and the `userspace` command's flags convert into.
use crate::device::xdp::XdpModeChoice;
use crate::tcp::CongestionKind;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

/// How long a connect waits when no timeout is given: longer than the SYN
/// retransmissions take to give up, so the TCP's own answer comes first.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(130);

/// How long a stopping stack lets connections whose handles were dropped finish sending.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(2);

/// How long an idle poll loop spins before it sleeps in poll(2): a reply within this
/// long is waited for by spinning.
pub const DEFAULT_IDLE_SPIN: Duration = Duration::from_micros(100);

/// The configuration of a running stack. Every default is the `userspace` command's
/// default. Fill it in with [`super::StackBuilder`]'s methods, or set the fields and
/// turn it into a builder with `StackBuilder::from(config)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StackConfig {
    /// The interface to bypass. `None`: the interface of the default route.
    pub interface: Option<String>,
    /// Owned-IP mode: the stack owns this second address on the link and answers ARP
    /// and ping for it. `None`: shared-IP mode, with the interface's own address and
    /// only the stack's ports steered to it.
    pub ip: Option<Ipv4Addr>,
    /// Owned-IP mode for IPv6: the stack owns this address (after duplicate address
    /// detection, RFC 4862 5.4) and answers neighbour solicitations and ping for it.
    /// `None`: in shared-IP mode the interface's own IPv6 address (global before
    /// link-local) if it has one; in owned-IP mode no IPv6.
    pub ipv6: Option<Ipv6Addr>,
    /// The next-hop router. `None`: from the kernel's routing table.
    pub gateway: Option<Ipv4Addr>,
    /// The first destination, when known: the interface (unless given), the next hop
    /// and the source address come from the kernel's route to it. `None`: the
    /// interface of the default route.
    pub destination: Option<Ipv4Addr>,
    /// [`StackConfig::destination`] for an IPv6 first destination: the interface is
    /// that of the kernel's IPv6 route to it. Used when `destination` is `None`.
    pub destination6: Option<Ipv6Addr>,
    /// The CPU the poll loop's thread is pinned to (the first of several with
    /// per-queue stacks). `None`: not pinned.
    pub cpu: Option<usize>,
    /// Bind only this RX queue. `None`: every RX queue of the interface (RSS spreads
    /// flows over them); one queue alone is refused on an interface with several.
    pub queue: Option<u32>,
    /// The XDP attach mode. `None`: skb (generic, with multi-buffer sockets) on a veth
    /// or another device without a bus, native (falling back to skb) elsewhere.
    pub xdp_mode: Option<XdpModeChoice>,
    /// Record every frame sent and received to this pcap file.
    pub pcap: Option<PathBuf>,
    /// Congestion control of every connection. Default: CUBIC.
    pub congestion: CongestionKind,
    /// Nagle's algorithm off on every connection. Default: `false` (Nagle on).
    pub nodelay: bool,
    /// Most connections held at once. Default: 100,000.
    pub max_connections: usize,
    /// Half-open connections per listener before SYN cookies. Default: 1024.
    pub syn_backlog: usize,
    /// Send and receive buffer per connection, in bytes. Default: 1 MiB.
    pub buffer: usize,
    /// How long the poll loop spins with nothing received before it sleeps in poll(2)
    /// until a frame, a timer or a call on a handle. Default: [`DEFAULT_IDLE_SPIN`].
    pub idle_spin: Duration,
    /// Whether the poll loop spins for [`StackConfig::idle_spin`] after the last frame
    /// before it sleeps (`false`: it sleeps at once). Default: `true`.
    pub busy_poll: bool,
    /// How long a connect waits. Default: [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// When the stack stops, how long connections whose handles were already dropped
    /// may take to deliver what was written to them. Default: [`DEFAULT_LINGER`].
    pub linger: Duration,
    /// How long the XDP program and the sockets stay attached after the stack stops,
    /// held by a small process, so that the next run on the interface neither attaches
    /// nor detaches. Only a program that runs [`crate::device::holder::run`] when
    /// started with [`crate::device::holder::HOLDER_ARG`] and has called
    /// [`crate::device::holder::set_available`] (the `userspace` command) can hold;
    /// elsewhere this is ignored. Default: `None` (detach at once).
    pub xdp_linger: Option<Duration>,
    /// Go through the interface's switch, which owns the XDP program and the sockets
    /// and serves several processes (`userspace exec --share`; see
    /// [`crate::device::switch`]), instead of attaching. Default: `false`.
    pub switch: bool,
    /// Keep the addresses of the open connections in this file, so that a watcher
    /// resets their peers if the process dies with them open (`userspace exec`'s exit
    /// guard, [`crate::device::exit_guard`]). Default: `None`.
    pub peer_table: Option<PathBuf>,
}

impl Default for StackConfig {
    fn default() -> Self {
        let tcp = crate::tcp::Config::default();
        StackConfig {
            interface: None,
            ip: None,
            ipv6: None,
            gateway: None,
            destination: None,
            destination6: None,
            cpu: None,
            queue: None,
            xdp_mode: None,
            pcap: None,
            congestion: tcp.congestion,
            nodelay: tcp.nodelay,
            max_connections: 100_000,
            syn_backlog: 1024,
            buffer: tcp.send_buffer,
            idle_spin: DEFAULT_IDLE_SPIN,
            busy_poll: true,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            linger: DEFAULT_LINGER,
            xdp_linger: None,
            switch: false,
            peer_table: None,
        }
    }
}
