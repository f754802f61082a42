//! Types shared by the XDP program and userspace: one definition, compiled for the
//! `bpfel-unknown-none` target (the program) and for the host (the device layer).
#![no_std]

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
/// stack's port range or is one of its listening ports.
pub const MODE_SHARED_IP: u32 = 0;
/// Owned-IP mode: steer all IPv4 to our address, and all ARP whose target is our address.
pub const MODE_OWNED_IP: u32 = 1;

/// Counter indices in [`COUNTERS_MAP`].
pub const COUNTER_STEERED: u32 = 0;
pub const COUNTER_PASSED: u32 = 1;
/// Packets for the stack that met an empty XSKMAP slot (dropped, never passed to the
/// kernel, which would answer them with a RST): the total, then one counter per queue.
pub const COUNTER_NO_SOCKET: u32 = 2;
pub const COUNTER_NO_SOCKET_QUEUE0: u32 = 3;
pub const COUNTER_COUNT: u32 = COUNTER_NO_SOCKET_QUEUE0 + MAX_QUEUES;

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
}

impl SteerConfig {
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
