//! What the host knows about an interface: MAC, MTU, state, IPv4 address, routes and
//! neighbours. Asked of the kernel through rtnetlink ([`super::netlink`]) and read from
//! /sys, never written.
use super::netlink;
use crate::device::error::{SetupError, SetupResult, bail, setup_error};
use crate::wire::MacAddr;
use std::net::{Ipv4Addr, Ipv6Addr};

pub use super::netlink::Route;

/// An interface as the host sees it.
#[derive(Debug, Clone)]
pub struct InterfaceInfo {
    /// Its name, e.g. `eth0`.
    pub name: String,
    /// Its interface index.
    pub ifindex: u32,
    /// Its Ethernet address.
    pub mac: MacAddr,
    /// Its MTU in bytes.
    pub mtu: usize,
    /// Administratively up and not operationally down.
    pub up: bool,
    /// First IPv4 address and its prefix length, if any.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// First usable IPv6 address (global before link-local) and its prefix length.
    pub ipv6: Option<(Ipv6Addr, u8)>,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<MacAddr> {
    let parts: Vec<u8> = s
        .trim()
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

/// The link named `name`, or a one-line error.
fn link(name: &str) -> SetupResult<netlink::Link> {
    if name.is_empty() || name.contains('/') {
        bail!("unknown interface {name:?}");
    }
    netlink::link_by_name(name).map_err(|e| match e.raw_os_error() {
        Some(libc::ENODEV) => setup_error!("unknown interface {name:?}"),
        _ => SetupError::new(format!("asking the kernel about interface {name}"), e),
    })
}

/// Reads what the host knows about interface `name` (an error if there is none).
pub fn interface(name: &str) -> SetupResult<InterfaceInfo> {
    let link = link(name)?;
    // IFF_LOOPBACK: no Ethernet link, no ARP; nothing for the stack to steer there.
    if link.loopback {
        bail!(
            "{name} is a loopback interface, which the stack cannot use: pass the interface towards the peer (--iface)"
        );
    }
    let mac = link
        .mac
        .ok_or_else(|| setup_error!("interface {name} has no Ethernet address"))?;
    let ipv4 = netlink::ipv4_addresses(link.index)
        .map_err(|e| SetupError::new(format!("reading the addresses of {name}"), e))?
        .into_iter()
        .next();
    let ipv6 = netlink::ipv6_addresses(link.index)
        .map_err(|e| SetupError::new(format!("reading the IPv6 addresses of {name}"), e))?
        .into_iter()
        .next()
        .map(|a| (a.ip, a.prefix_len));
    Ok(InterfaceInfo {
        name: name.to_string(),
        ipv6,
        ifindex: link.index,
        mac,
        mtu: link.mtu.map_or(1500, |m| m as usize),
        up: link.up,
        ipv4,
    })
}

/// The prefix length of `ip` if it is one of the addresses of interface `ifindex`.
pub fn address_prefix(ifindex: u32, ip: Ipv4Addr) -> Option<u8> {
    netlink::ipv4_addresses(ifindex)
        .ok()?
        .into_iter()
        .find_map(|(a, prefix)| (a == ip).then_some(prefix))
}

/// The prefix length of IPv6 address `ip` if it is a usable address of `ifindex`.
pub fn address_prefix6(ifindex: u32, ip: Ipv6Addr) -> Option<u8> {
    netlink::ipv6_addresses(ifindex)
        .ok()?
        .into_iter()
        .find_map(|a| (a.ip == ip).then_some(a.prefix_len))
}

/// The name of the interface with index `ifindex`.
pub fn interface_name(ifindex: u32) -> Option<String> {
    netlink::link_by_index(ifindex).ok().map(|l| l.name)
}

/// The holder's process name (what [`xdp_holder_comm`] reports for a program a holder
/// keeps attached; see [`crate::device::holder`]).
pub const HOLDER_COMM: &str = "userspace-xdp";

/// The index of interface `name`. Asked with `SIOCGIFINDEX`, which the kernel answers
/// under RCU: a netlink `RTM_GETLINK` waits for rtnl, which an XDP attach holds for
/// 10-20 ms (a holder's, while this process already uses the program).
pub fn interface_index(name: &str) -> Option<u32> {
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::DGRAM,
        None,
    )
    .ok()?;
    rustix::net::netdevice::name_to_index(&socket, name).ok()
}

/// Where the stack's traffic goes: the interface, and the kernel's route to the
/// destination it is opened for (or its default route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The interface to bypass.
    pub iface: String,
    /// The router for destinations the routes give no other hop for.
    pub gateway: Option<Ipv4Addr>,
    /// The source address the kernel would use towards the destination.
    pub source: Option<Ipv4Addr>,
}

/// The interface, next hop and source address for a stack on `iface` (any interface
/// when `None`) that first talks to `destination` (none known: the default route), as
/// the kernel routes them. With an interface given, only routes out of it count, as
/// for a socket bound to that device; none at all means the destination is taken to
/// be on the link. Without one, no route at all is an error of kind
/// `NetworkUnreachable` (or the kernel's errno for an unreachable, prohibit or
/// blackhole route).
pub fn outbound(iface: Option<&str>, destination: Option<Ipv4Addr>) -> SetupResult<Outbound> {
    let route_error = |e: std::io::Error| match destination {
        Some(dst) => SetupError::new(format!("no route to {dst}"), e),
        None => SetupError::new("reading the routing table", e),
    };
    match (iface, destination) {
        (Some(name), Some(dst)) => {
            let index = link(name)?.index;
            let route = netlink::route_to(dst, Some(index)).ok();
            Ok(Outbound {
                iface: name.to_string(),
                gateway: route.and_then(|r| r.gateway),
                source: route.and_then(|r| r.source),
            })
        }
        (Some(name), None) => {
            let index = link(name)?.index;
            let route = netlink::default_route()
                .map_err(route_error)?
                .filter(|r| r.ifindex == index);
            Ok(Outbound {
                iface: name.to_string(),
                gateway: route.and_then(|r| r.gateway),
                source: route.and_then(|r| r.source),
            })
        }
        (None, Some(dst)) => {
            let route = netlink::route_to(dst, None).map_err(route_error)?;
            outbound_on(route)
        }
        (None, None) => {
            let route = netlink::default_route()
                .map_err(route_error)?
                .ok_or_else(|| setup_error!("no default route: pass --iface"))?;
            outbound_on(route)
        }
    }
}

impl Outbound {
    /// With the IPv6 gateway and source of the route that chose the interface, if one
    /// did: (this, IPv6 gateway, IPv6 source).
    pub fn with_gateway6(
        self,
        gateway6: Option<Ipv6Addr>,
        source6: Option<Ipv6Addr>,
    ) -> (Outbound, Option<Ipv6Addr>, Option<Ipv6Addr>) {
        (self, gateway6, source6)
    }
}

fn outbound_on(route: Route) -> SetupResult<Outbound> {
    let iface = interface_name(route.ifindex)
        .ok_or_else(|| setup_error!("the route's interface {} is gone", route.ifindex))?;
    Ok(Outbound {
        iface,
        gateway: route.gateway,
        source: route.source,
    })
}

/// The next hop towards `destination` for a stack on interface `ifindex`, from the
/// kernel's route to it: the gateway, or `destination` itself when it is on the link.
/// A destination the kernel routes out of another interface is reached through ours
/// only if a route with a gateway leaves by ours too (the route a socket bound to our
/// device would get). `Err` holds the kernel's errno when it has no route at all.
pub fn next_hop_on(ifindex: u32, destination: Ipv4Addr) -> Result<Ipv4Addr, RouteRefusal> {
    match netlink::route_to(destination, None) {
        Ok(route) if route.ifindex == ifindex => Ok(route.gateway.unwrap_or(destination)),
        Ok(route) => netlink::route_to(destination, Some(ifindex))
            .ok()
            .and_then(|ours| ours.gateway)
            .ok_or(RouteRefusal::OtherInterface(route.ifindex)),
        Err(e) => Err(RouteRefusal::Errno(
            e.raw_os_error().unwrap_or(libc::ENETUNREACH),
        )),
    }
}

/// [`next_hop_on`] for IPv6: the gateway (often link-local, which only has a meaning
/// on the route's own interface, so the route must leave by ours), or `destination`
/// itself on the link.
pub fn next_hop6_on(ifindex: u32, destination: Ipv6Addr) -> Result<Ipv6Addr, RouteRefusal> {
    match netlink::route6_to(destination, None) {
        Ok(route) if route.ifindex == ifindex => Ok(route.gateway.unwrap_or(destination)),
        Ok(route) => netlink::route6_to(destination, Some(ifindex))
            .ok()
            .filter(|ours| ours.ifindex == ifindex)
            .and_then(|ours| ours.gateway)
            .ok_or(RouteRefusal::OtherInterface(route.ifindex)),
        Err(e) => Err(RouteRefusal::Errno(
            e.raw_os_error().unwrap_or(libc::ENETUNREACH),
        )),
    }
}

/// The interface the kernel routes IPv6 `destination` out of, its gateway and source.
pub fn outbound6(destination: Ipv6Addr) -> SetupResult<(String, netlink::Route6)> {
    let route = netlink::route6_to(destination, None)
        .map_err(|e| SetupError::new(format!("no route to {destination}"), e))?;
    let iface = interface_name(route.ifindex)
        .ok_or_else(|| setup_error!("the route's interface {} is gone", route.ifindex))?;
    Ok((iface, route))
}

/// Why the stack cannot reach a destination on its interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteRefusal {
    /// The kernel has no usable route: its errno (ENETUNREACH, EHOSTUNREACH, ...).
    Errno(i32),
    /// The route leaves by another interface (its index).
    OtherInterface(u32),
}

impl std::fmt::Display for RouteRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteRefusal::Errno(errno) => {
                write!(f, "{}", std::io::Error::from_raw_os_error(*errno))
            }
            RouteRefusal::OtherInterface(ifindex) => write!(
                f,
                "the route to it leaves by {}, not by the stack's interface",
                interface_name(*ifindex).unwrap_or_else(|| format!("interface {ifindex}"))
            ),
        }
    }
}

/// RX queues of the interface, from /sys (the kernel updates it with the channel count).
pub fn rx_queue_count(name: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{name}/queues"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// The running kernel's release, e.g. `6.18.0-1-amd64` (empty if unknown).
pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// True if the running kernel delivers a packet larger than a frame to an AF_XDP socket
/// in several frames (multi-buffer, `XDP_USE_SG`, Linux 6.6) instead of dropping it.
pub fn multi_buffer_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| kernel_at_least(&kernel_release(), (6, 6)))
}

/// True if the kernel has AF_XDP TX metadata (`tx_metadata_len`, the TX checksum
/// request, Linux 6.8+).
pub fn tx_metadata_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| kernel_at_least(&kernel_release(), (6, 8)))
}

/// Compares a release string such as `6.18.0-1-amd64` with `(major, minor)`.
fn kernel_at_least(release: &str, wanted: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= wanted
}

/// True for an interface whose frames come from memory, not from a wire (veth, and the
/// other virtual devices with no bus device behind them). Only there may a TCP checksum
/// still be partial (CHECKSUM_PARTIAL) when the frame reaches us.
pub fn frames_come_from_memory(name: &str) -> bool {
    !std::path::Path::new(&format!("/sys/class/net/{name}/device")).exists()
}

/// Who holds the XDP hook of interface `ifindex` in our network namespace: the process
/// owning a BPF link to it, or a program attached without a link (by `ip link`).
pub fn xdp_holder(ifindex: u32) -> Option<String> {
    let our_netns = std::fs::read_link("/proc/self/ns/net").ok()?;
    let me = std::process::id().to_string();
    for proc_entry in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let pid = proc_entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Interface indexes are per namespace: only a process in ours can hold this one.
        if std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() != Some(our_netns.clone()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:bpf_link") {
                let info = std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    fd.file_name().to_string_lossy()
                ))
                .unwrap_or_default();
                let field = |name: &str| {
                    info.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_string())
                };
                if field("link_type:").as_deref() == Some("xdp")
                    && field("ifindex:") == Some(ifindex.to_string())
                {
                    if pid == me {
                        // Another Stack of this very process (the library's user opened
                        // a second one on the interface).
                        return Some(format!(
                            "this process ({pid}): another Stack of it runs on the interface, so share that one (its handles are cheap to clone) or drop it before building this one"
                        ));
                    }
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    return Some(format!("process {pid} ({})", comm.trim()));
                }
            }
        }
    }
    // Attached through netlink: no process owns it, the link reports it.
    let link = netlink::link_by_index(ifindex).ok()?;
    let id = link.xdp_program?;
    Some(format!(
        "XDP program id {id}, attached without a process (`ip link set dev {} xdp off` removes it)",
        link.name
    ))
}

/// The process name of the process that holds the XDP hook of `ifindex`, if a process does.
pub fn xdp_holder_comm(ifindex: u32) -> Option<String> {
    let holder = xdp_holder(ifindex)?;
    let (_, comm) = holder.strip_prefix("process ")?.split_once(" (")?;
    Some(comm.strip_suffix(')')?.to_string())
}

/// The kernel's neighbour entry for `ip` on `iface`, if resolved.
pub fn kernel_neighbour(iface: &str, ip: Ipv4Addr) -> Option<MacAddr> {
    let entry = netlink::neighbour(interface_index(iface)?, ip).ok()??;
    entry.mac.filter(|_| entry.valid)
}

/// The kernel's neighbour entry for IPv6 `ip` on `iface`, if resolved.
pub fn kernel_neighbour6(iface: &str, ip: Ipv6Addr) -> Option<MacAddr> {
    let entry = netlink::neighbour6(interface_index(iface)?, ip).ok()??;
    entry.mac.filter(|_| entry.valid)
}

/// True if the kernel's neighbour table holds IPv6 `ip` on `iface` as unresolved.
pub fn kernel_neighbour6_failed(iface: &str, ip: Ipv6Addr) -> bool {
    interface_index(iface)
        .and_then(|index| netlink::neighbour6(index, ip).ok().flatten())
        .is_some_and(|entry| !entry.valid)
}

/// Asks the kernel to resolve IPv6 `ip` on `iface` (shared-IP mode, where the NA goes to
/// the kernel): a UDP datagram to the discard port makes it solicit the neighbour. A
/// link-local address needs the interface as its scope.
pub fn provoke_kernel_ndp(iface: &str, ip: Ipv6Addr) {
    let scope = if ip.is_unicast_link_local() {
        interface_index(iface).unwrap_or(0)
    } else {
        0
    };
    if let Ok(sock) = std::net::UdpSocket::bind("[::]:0") {
        let _ = sock.send_to(&[], std::net::SocketAddrV6::new(ip, 9, 0, scope));
    }
}

/// [`kernel_neighbour`] or [`kernel_neighbour6`] by the address's family.
pub fn kernel_neighbour_ip(iface: &str, ip: std::net::IpAddr) -> Option<MacAddr> {
    match ip {
        std::net::IpAddr::V4(v4) => kernel_neighbour(iface, v4),
        std::net::IpAddr::V6(v6) => kernel_neighbour6(iface, v6),
    }
}

/// [`kernel_neighbour_failed`] or [`kernel_neighbour6_failed`] by the address's family.
pub fn kernel_neighbour_ip_failed(iface: &str, ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => kernel_neighbour_failed(iface, v4),
        std::net::IpAddr::V6(v6) => kernel_neighbour6_failed(iface, v6),
    }
}

/// [`provoke_kernel_arp`] or [`provoke_kernel_ndp`] by the address's family.
pub fn provoke_kernel_resolve(iface: &str, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => provoke_kernel_arp(v4),
        std::net::IpAddr::V6(v6) => provoke_kernel_ndp(iface, v6),
    }
}

/// True if the kernel's neighbour table holds `ip` on `iface` as unresolved (incomplete
/// or failed).
pub fn kernel_neighbour_failed(iface: &str, ip: Ipv4Addr) -> bool {
    interface_index(iface)
        .and_then(|index| netlink::neighbour(index, ip).ok().flatten())
        .is_some_and(|entry| !entry.valid)
}

/// Asks the kernel to resolve `ip` (shared-IP mode, where ARP replies go to the kernel):
/// a UDP datagram to the discard port makes it send its own ARP request.
pub fn provoke_kernel_arp(ip: Ipv4Addr) {
    if let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") {
        let _ = sock.send_to(&[], (ip, 9));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel answers over netlink without root: the loopback link is there in
    /// every network namespace, with index 1 and 127.0.0.1/8.
    #[test]
    fn netlink_reports_the_loopback_link_and_refuses_it_and_unknown_names() {
        let lo = netlink::link_by_name("lo").unwrap();
        assert!(lo.loopback);
        assert_eq!(interface_name(lo.index).as_deref(), Some("lo"));
        assert_eq!(interface_index("lo"), Some(lo.index));
        if lo.up {
            assert_eq!(
                address_prefix(lo.index, Ipv4Addr::LOCALHOST),
                Some(8),
                "{:?}",
                netlink::ipv4_addresses(lo.index)
            );
        }
        let e = interface("lo").unwrap_err().to_string();
        assert!(e.contains("loopback interface"), "{e}");
        let e = interface("nosuch-if0").unwrap_err().to_string();
        assert_eq!(e, "unknown interface \"nosuch-if0\"");
    }

    /// IPv6 over netlink without root: ::1/128 on loopback (when the namespace has IPv6),
    /// the route to it, and no route out of loopback to a global address.
    #[test]
    fn netlink_reports_ipv6_addresses_and_routes() {
        let lo = netlink::link_by_name("lo").unwrap();
        if !lo.up || !std::path::Path::new("/proc/net/if_inet6").exists() {
            return; // no IPv6 in this namespace
        }
        let addrs = netlink::ipv6_addresses(lo.index).unwrap();
        if addrs.is_empty() {
            return; // IPv6 disabled on lo (net.ipv6.conf.lo.disable_ipv6)
        }
        assert_eq!(address_prefix6(lo.index, Ipv6Addr::LOCALHOST), Some(128));
        // The route to our own address is of type local, not one the stack can use:
        // refused as the IPv4 loopback is.
        assert_eq!(
            next_hop6_on(lo.index, Ipv6Addr::LOCALHOST),
            Err(RouteRefusal::Errno(libc::ENETUNREACH))
        );
        assert_eq!(
            next_hop_on(lo.index, Ipv4Addr::LOCALHOST),
            Err(RouteRefusal::Errno(libc::ENETUNREACH))
        );
        assert_eq!(kernel_neighbour6("lo", "fe80::1".parse().unwrap()), None);
        assert!(!kernel_neighbour6_failed("lo", "fe80::1".parse().unwrap()));
    }

    #[test]
    fn kernel_release_comparison() {
        assert!(kernel_at_least("6.18.0-1-amd64", (6, 6)));
        assert!(kernel_at_least("6.6.0", (6, 6)));
        assert!(!kernel_at_least("6.1.0-27-amd64", (6, 6)));
        assert!(!kernel_at_least("5.19.17", (6, 6)));
        assert!(kernel_at_least("7.0", (6, 6)));
        assert!(!kernel_at_least("", (6, 6)));
    }
}
