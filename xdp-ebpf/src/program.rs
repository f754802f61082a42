use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, XskMap},
    programs::XdpContext,
};
use xdp_ebpf::ipv6::{ETHERTYPE_IPV6, Frame, steer_ipv6, steers};
use xdp_ebpf::{
    COUNTER_COUNT, COUNTER_NO_SOCKET, COUNTER_NO_SOCKET_QUEUE0, COUNTER_PASSED, COUNTER_STEERED,
    MAX_QUEUES, MODE_OWNED_IP, SteerConfig,
};

#[map(name = "CONFIG")]
static CONFIG: Array<SteerConfig> = Array::with_max_entries(1, 0);

#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

const ETH_HDR_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_HDR_LEN: usize = 8;
/// Offset of the target protocol address in an Ethernet/IPv4 ARP packet.
const ARP_TPA_OFFSET: usize = 24;

#[xdp(frags)]
pub fn xdp_steer(ctx: XdpContext) -> u32 {
    if should_steer(&ctx) {
        let queue = ctx.rx_queue_index();
        if XSKS.get(queue).is_none() {
            // The stack's packet on a queue without its socket: passed on, the kernel
            // would answer it with a RST. Drop it and count it per queue; userspace tells
            // the user which queue it was.
            count(COUNTER_NO_SOCKET);
            if queue < MAX_QUEUES {
                count(COUNTER_NO_SOCKET_QUEUE0 + queue);
            }
            return xdp_action::XDP_DROP;
        }
        count(COUNTER_STEERED);
        XSKS.redirect(queue, xdp_action::XDP_PASS as u64)
            .unwrap_or(xdp_action::XDP_PASS)
    } else {
        count(COUNTER_PASSED);
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU array slot is only touched by this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Reads a `T` at `offset` in the frame, or `None` if it does not fit: the verifier
/// needs every access bounds-checked against `data_end`, and so do runt frames.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: the range was checked against data_end just above; unaligned read.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

/// The frame as the shared IPv6 steering code reads it.
struct Packet<'a>(&'a XdpContext);

impl Frame for Packet<'_> {
    #[inline(always)]
    fn u8_at(&self, offset: usize) -> Option<u8> {
        // A one-byte check at a variable offset compiles to `p >= end`, from which the
        // verifier learns no range; a two-byte read ending at the byte does not.
        let before = offset.checked_sub(1)?;
        read::<[u8; 2]>(self.0, before).map(|b| b[1])
    }
    #[inline(always)]
    fn be16_at(&self, offset: usize) -> Option<u16> {
        read::<u16>(self.0, offset).map(u16::from_be)
    }
    #[inline(always)]
    fn addr_at(&self, offset: usize) -> Option<[u8; 16]> {
        read(self.0, offset)
    }
}

#[inline(always)]
fn should_steer(ctx: &XdpContext) -> bool {
    let Some(config) = CONFIG.get(0) else {
        return false;
    };
    if config.enabled == 0 {
        return false;
    }
    let Some(ethertype) = read::<u16>(ctx, 12) else {
        return false;
    };
    match u16::from_be(ethertype) {
        ETHERTYPE_IPV4 => steer_ipv4(ctx, config),
        ETHERTYPE_ARP => {
            config.mode == MODE_OWNED_IP
                && read::<[u8; 4]>(ctx, ETH_HDR_LEN + ARP_TPA_OFFSET) == Some(config.ipv4)
        }
        ETHERTYPE_IPV6 => {
            let verdict = steer_ipv6(&Packet(ctx), config);
            count(verdict);
            steers(verdict)
        }
        _ => false,
    }
}

#[inline(always)]
fn steer_ipv4(ctx: &XdpContext, config: &SteerConfig) -> bool {
    let Some(version_ihl) = read::<u8>(ctx, ETH_HDR_LEN) else {
        return false;
    };
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return false;
    }
    let Some(dst) = read::<[u8; 4]>(ctx, ETH_HDR_LEN + 16) else {
        return false;
    };
    if dst != config.ipv4 {
        return false;
    }
    if config.mode == MODE_OWNED_IP {
        return true;
    }
    let Some(protocol) = read::<u8>(ctx, ETH_HDR_LEN + 9) else {
        return false;
    };
    // The IHL is checked against the frame length before use (it may lie).
    if ihl > 60 {
        return false;
    }
    match protocol {
        IPPROTO_TCP => {
            let Some(dst_port) = read::<u16>(ctx, ETH_HDR_LEN + ihl + 2) else {
                return false;
            };
            config.owns_port(u16::from_be(dst_port))
        }
        IPPROTO_ICMP => icmp_error_for_us(ctx, config, ETH_HDR_LEN + ihl),
        _ => false,
    }
}

/// Shared-IP mode: an ICMP destination unreachable (RFC 792; "fragmentation needed"
/// among them, RFC 1191) about one of the stack's own segments, from our address and
/// one of our ports, belongs to the stack: in the kernel it would be lost, and a
/// connect to an unreachable host would wait for its timeout.
#[inline(always)]
fn icmp_error_for_us(ctx: &XdpContext, config: &SteerConfig, icmp: usize) -> bool {
    if read::<u8>(ctx, icmp) != Some(ICMP_DEST_UNREACHABLE) {
        return false;
    }
    let quoted = icmp + ICMP_HDR_LEN;
    let Some(version_ihl) = read::<u8>(ctx, quoted) else {
        return false;
    };
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || !(20..=60).contains(&ihl) {
        return false;
    }
    if read::<u8>(ctx, quoted + 9) != Some(IPPROTO_TCP)
        || read::<[u8; 4]>(ctx, quoted + 12) != Some(config.ipv4)
    {
        return false;
    }
    let Some(src_port) = read::<u16>(ctx, quoted + ihl) else {
        return false;
    };
    config.owns_port(u16::from_be(src_port))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
