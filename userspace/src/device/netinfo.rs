//! What the host knows about an interface: MAC, MTU, state, IPv4 address, default route
//! and neighbours. Read from /sys, /proc and iproute2, never written.
use crate::wire::MacAddr;
use anyhow::{Context, anyhow, bail};
use std::net::Ipv4Addr;
use std::process::Command;

/// An interface as the host sees it.
#[derive(Debug, Clone)]
pub struct InterfaceInfo {
    /// Its name, e.g. `eth0`.
    pub name: String,
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
pub fn interface(name: &str) -> anyhow::Result<InterfaceInfo> {
    let sys = format!("/sys/class/net/{name}");
    if name.is_empty() || name.contains('/') || !std::path::Path::new(&sys).exists() {
        bail!("unknown interface {name:?}");
    }
    let read = |f: &str| {
        std::fs::read_to_string(format!("{sys}/{f}")).with_context(|| format!("reading {sys}/{f}"))
    };
    let mac = parse_mac(&read("address")?)
        .ok_or_else(|| anyhow!("interface {name} has no Ethernet address"))?;
    let mtu = read("mtu")?.trim().parse().unwrap_or(1500);
    let flags =
        u32::from_str_radix(read("flags")?.trim().trim_start_matches("0x"), 16).unwrap_or(0);
    let up = flags & 1 != 0 && read("operstate")?.trim() != "down";
    Ok(InterfaceInfo {
        name: name.to_string(),
        mac,
        mtu,
        up,
        ipv4: ipv4_address(name)?,
    })
}

fn ipv4_address(name: &str) -> anyhow::Result<Option<(Ipv4Addr, u8)>> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", name])
        .output()
        .context("running `ip` (iproute2) to read the interface address")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for word in text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .skip(1)
        .take(1)
    {
        if let Some((addr, prefix)) = word.split_once('/') {
            return Ok(Some((addr.parse()?, prefix.parse()?)));
        }
    }
    Ok(None)
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

/// Asks the kernel to resolve `ip` (shared-IP mode, where ARP replies go to the kernel):
/// a UDP datagram to the discard port makes it send its own ARP request.
pub fn provoke_kernel_arp(ip: Ipv4Addr) {
    if let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") {
        let _ = sock.send_to(&[], (ip, 9));
    }
}
