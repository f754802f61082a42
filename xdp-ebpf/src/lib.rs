//! Types shared by the XDP program and userspace: one definition, compiled for the
//! `bpfel-unknown-none` target (the program) and for the host (the device layer).
#![cfg_attr(not(test), no_std)]

pub mod ipv6;

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "xdp_steer";
/// Array map (one entry) holding the [`SteerConfig`].
pub const CONFIG_MAP: &str = "CONFIG";
/// XSKMAP: AF_XDP socket per RX queue.
pub const XSKS_MAP: &str = "XSKS";
/// Per-CPU array of [`COUNTER_COUNT`] `u64` counters.
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Entries in the XSKMAP, so the highest usable queue index is `MAX_QUEUES - 1`.
pub const MAX_QUEUES: u32 = 64;
/// How many listening ports the program can steer in shared-IP mode.
pub const MAX_LISTEN_PORTS: usize = 16;

/// Shared-IP mode: steer only TCP to our address whose destination port is in the
/// stack's port range or is one of its listening ports, and the ICMP errors (ICMPv6
/// destination unreachable and packet too big) that quote the stack's own segments.
pub const MODE_SHARED_IP: u32 = 0;
/// Owned-IP mode: steer all IPv4 to our address, and all ARP whose target is our
/// address; for IPv6, everything to our address and the neighbour discovery for it.
pub const MODE_OWNED_IP: u32 = 1;
/// Extension headers (hop-by-hop, routing, destination options) the program follows
/// before it gives up and passes the packet to the kernel (RFC 8200 section 4.1).
pub const MAX_IPV6_EXTENSION_HEADERS: usize = 4;

/// Counter indices in [`COUNTERS_MAP`].
pub const COUNTER_STEERED: u32 = 0;
pub const COUNTER_PASSED: u32 = 1;
/// Packets for the stack that met an empty XSKMAP slot (dropped, never passed to the
/// kernel, which would answer them with a RST): the total, then one counter per queue.
pub const COUNTER_NO_SOCKET: u32 = 2;
pub const COUNTER_NO_SOCKET_QUEUE0: u32 = 3;
/// IPv6 counters, after the per-queue ones: what was steered, and why the rest went to
/// the kernel.
pub const COUNTER_V6_STEERED: u32 = COUNTER_NO_SOCKET_QUEUE0 + MAX_QUEUES;
/// IPv6 to another address (or none configured), multicast other than NDP for us.
pub const COUNTER_V6_PASSED_NOT_OURS: u32 = COUNTER_V6_STEERED + 1;
/// Shared-IP mode: TCP to our address on a port of the kernel's.
pub const COUNTER_V6_PASSED_KERNEL_PORT: u32 = COUNTER_V6_STEERED + 2;
/// Shared-IP mode: ICMPv6 to our address that is not an error about our segments
/// (echo, NDP, errors about the kernel's own segments), or UDP and other protocols.
pub const COUNTER_V6_PASSED_OTHER: u32 = COUNTER_V6_STEERED + 3;
/// An extension header chain longer than [`MAX_IPV6_EXTENSION_HEADERS`], a fragment,
/// or a header cut short: left to the kernel, which reassembles and parses in full.
pub const COUNTER_V6_PASSED_EXTENSIONS: u32 = COUNTER_V6_STEERED + 4;
/// Owned-IP mode: neighbour solicitations and advertisements whose target is our
/// address, whatever their destination (solicited-node multicast, all-nodes).
pub const COUNTER_V6_NDP_STEERED: u32 = COUNTER_V6_STEERED + 5;
pub const COUNTER_COUNT: u32 = COUNTER_V6_STEERED + 6;

/// Steering configuration written by userspace before it opens its sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerConfig {
    /// The stack's IPv4 address, in wire order (`a.b.c.d` is `[a, b, c, d]`).
    pub ipv4: [u8; 4],
    /// [`MODE_SHARED_IP`] or [`MODE_OWNED_IP`].
    pub mode: u32,
    /// Inclusive range of local ports the stack picks for its connections (host order).
    pub port_lo: u16,
    pub port_hi: u16,
    /// Listening ports (host order); 0 marks an empty slot.
    pub listen_ports: [u16; MAX_LISTEN_PORTS],
    /// 0 until userspace has written a complete config; nothing is steered before.
    pub enabled: u32,
    /// The stack's IPv6 address, in wire order; all zero: none, no IPv6 is steered.
    pub ipv6: [u8; 16],
    /// [`MODE_SHARED_IP`] or [`MODE_OWNED_IP`] for [`SteerConfig::ipv6`]: a stack may
    /// own its IPv4 address and share the interface's IPv6 one, or the other way round.
    pub ipv6_mode: u32,
}

impl SteerConfig {
    /// True if an IPv6 address is configured.
    #[inline(always)]
    pub fn has_ipv6(&self) -> bool {
        let mut i = 0;
        while i < 16 {
            if self.ipv6[i] != 0 {
                return true;
            }
            i += 1;
        }
        false
    }

    /// True if a TCP segment with destination port `port` belongs to the stack in shared-IP mode.
    #[inline(always)]
    pub fn owns_port(&self, port: u16) -> bool {
        if port >= self.port_lo && port <= self.port_hi {
            return true;
        }
        let mut i = 0;
        while i < MAX_LISTEN_PORTS {
            if self.listen_ports[i] != 0 && self.listen_ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }
}
