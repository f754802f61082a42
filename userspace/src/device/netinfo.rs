//! What the host knows about an interface: MAC, MTU, state, IPv4 address, default route
//! and neighbours. Read from /sys, /proc and iproute2, never written.
use crate::device::error::{Context, SetupResult, bail, setup_error};
use crate::wire::MacAddr;
use std::net::Ipv4Addr;
use std::process::Command;

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

/// Reads what the host knows about interface `name` (an error if there is none).
pub fn interface(name: &str) -> SetupResult<InterfaceInfo> {
    let sys = format!("/sys/class/net/{name}");
    if name.is_empty() || name.contains('/') || !std::path::Path::new(&sys).exists() {
        bail!("unknown interface {name:?}");
    }
    let read = |f: &str| {
        std::fs::read_to_string(format!("{sys}/{f}")).with_context(|| format!("reading {sys}/{f}"))
    };
    let mac = parse_mac(&read("address")?)
        .ok_or_else(|| setup_error!("interface {name} has no Ethernet address"))?;
    let mtu = read("mtu")?.trim().parse().unwrap_or(1500);
    let flags =
        u32::from_str_radix(read("flags")?.trim().trim_start_matches("0x"), 16).unwrap_or(0);
    let up = flags & 1 != 0 && read("operstate")?.trim() != "down";
    // IFF_LOOPBACK: no Ethernet link, no ARP; nothing for the stack to steer there.
    if flags & 0x8 != 0 {
        bail!(
            "{name} is a loopback interface, which the stack cannot use: pass the interface towards the peer (--iface)"
        );
    }
    Ok(InterfaceInfo {
        name: name.to_string(),
        ifindex: read("ifindex")?.trim().parse().unwrap_or(0),
        mac,
        mtu,
        up,
        ipv4: ipv4_address(name)?,
    })
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
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_default()
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
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
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
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    return Some(format!("process {pid} ({})", comm.trim()));
                }
            }
        }
    }
    // Attached through netlink: no process owns it, `ip link` shows it.
    let out = Command::new("ip")
        .args(["-d", "link", "show", "dev"])
        .arg(ifindex_name(ifindex)?)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text
        .split_whitespace()
        .skip_while(|w| !w.starts_with("prog/xdp"))
        .nth(2)?;
    Some(format!(
        "XDP program id {id}, attached without a process (`ip link set dev {} xdp off` removes it)",
        ifindex_name(ifindex)?
    ))
}

/// The process name of the process that holds the XDP hook of `ifindex`, if a process does.
pub fn xdp_holder_comm(ifindex: u32) -> Option<String> {
    let holder = xdp_holder(ifindex)?;
    let (_, comm) = holder.strip_prefix("process ")?.split_once(" (")?;
    Some(comm.strip_suffix(')')?.to_string())
}

fn ifindex_name(ifindex: u32) -> Option<String> {
    std::fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(Result::ok)
        .find(|e| {
            std::fs::read_to_string(e.path().join("ifindex"))
                .is_ok_and(|i| i.trim() == ifindex.to_string())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// The first IPv4 address of `name` and its prefix length, from getifaddrs(3): no
/// process to spawn, which matters for start-up time.
fn ipv4_address(name: &str) -> SetupResult<Option<(Ipv4Addr, u8)>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `list`; it is freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut found = None;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let entry_name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the list.
        let family = unsafe { (*entry.ifa_addr).sa_family };
        if entry_name.to_bytes() != name.as_bytes() || i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address (and its netmask) is a sockaddr_in.
        let (addr, mask) = unsafe {
            let addr = &*(entry.ifa_addr as *const libc::sockaddr_in);
            let mask = (!entry.ifa_netmask.is_null()).then(|| {
                (*(entry.ifa_netmask as *const libc::sockaddr_in))
                    .sin_addr
                    .s_addr
            });
            (addr.sin_addr.s_addr, mask)
        };
        let prefix = mask.map_or(32, |m| u32::from_be(m).count_ones() as u8);
        found = Some((Ipv4Addr::from(u32::from_be(addr)), prefix));
        break;
    }
    // SAFETY: `list` came from getifaddrs and is freed once; no reference outlives this.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// The default route from /proc/net/route: (interface, gateway).
pub fn default_route() -> Option<(String, Ipv4Addr)> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
            let gw = u32::from_str_radix(f[2], 16).ok()?;
            return Some((f[0].to_string(), Ipv4Addr::from(gw.to_le_bytes())));
        }
    }
    None
}

/// The kernel's neighbour entry for `ip` on `iface`, from /proc/net/arp.
pub fn kernel_neighbour(iface: &str, ip: Ipv4Addr) -> Option<MacAddr> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // IP, HW type, Flags, HW address, Mask, Device; flags 0x2 = complete.
        if f.len() >= 6
            && f[5] == iface
            && f[0].parse::<Ipv4Addr>().ok() == Some(ip)
            && f[2] != "0x0"
        {
            return parse_mac(f[3]).filter(|m| *m != [0; 6]);
        }
    }
    None
}

/// True if the kernel's neighbour table holds `ip` on `iface` as unresolved (incomplete
/// or failed: /proc/net/arp shows flags 0x0 and no address).
pub fn kernel_neighbour_failed(iface: &str, ip: Ipv4Addr) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/arp") else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() >= 6 && f[5] == iface && f[0].parse::<Ipv4Addr>().ok() == Some(ip) && f[2] == "0x0"
    })
}

/// Asks the kernel to resolve `ip` (shared-IP mode, where ARP replies go to the kernel):
/// a UDP datagram to the discard port makes it send its own ARP request.
pub fn provoke_kernel_arp(ip: Ipv4Addr) {
    if let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") {
        let _ = sock.send_to(&[], (ip, 9));
    }
}
