//! IPv6 steering (RFC 8200), shared by the XDP program and the host's unit tests: the
//! frame is read through [`Frame`], bounds-checked at every access, as the verifier
//! wants.
use crate::{
    COUNTER_V6_NDP_STEERED, COUNTER_V6_PASSED_EXTENSIONS, COUNTER_V6_PASSED_KERNEL_PORT,
    COUNTER_V6_PASSED_NOT_OURS, COUNTER_V6_PASSED_OTHER, COUNTER_V6_STEERED,
    MAX_IPV6_EXTENSION_HEADERS, MODE_OWNED_IP, SteerConfig,
};

pub const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETH_HDR_LEN: usize = 14;
const IPV6_HDR_LEN: usize = 40;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_HDR_LEN: usize = 8;
/// RFC 4443 sections 3.1 and 3.2.
const ICMPV6_DEST_UNREACHABLE: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// RFC 4861 sections 4.3 and 4.4; the target address follows 8 bytes of header.
const NDP_NEIGHBOUR_SOLICITATION: u8 = 135;
const NDP_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
const NDP_TARGET_OFFSET: usize = 8;

/// An Ethernet frame the steering code reads from; every read is `None` past its end.
pub trait Frame {
    /// The byte at `offset`.
    fn u8_at(&self, offset: usize) -> Option<u8>;
    /// The big-endian `u16` at `offset`, in host order.
    fn be16_at(&self, offset: usize) -> Option<u16>;
    /// The 16 bytes (an IPv6 address) at `offset`.
    fn addr_at(&self, offset: usize) -> Option<[u8; 16]>;
}

/// True if the verdict [`steer_ipv6`] returned steers the frame to the stack.
#[inline(always)]
pub fn steers(verdict: u32) -> bool {
    verdict == COUNTER_V6_STEERED || verdict == COUNTER_V6_NDP_STEERED
}

/// The IPv6 verdict, as the counter that records it: [`COUNTER_V6_STEERED`] and
/// [`COUNTER_V6_NDP_STEERED`] steer, every other one passes to the kernel.
#[inline(always)]
pub fn steer_ipv6<F: Frame + ?Sized>(frame: &F, config: &SteerConfig) -> u32 {
    if !config.has_ipv6() {
        return COUNTER_V6_PASSED_NOT_OURS;
    }
    let (Some(version), Some(next), Some(dst)) = (
        frame.u8_at(ETH_HDR_LEN),
        frame.u8_at(ETH_HDR_LEN + 6),
        frame.addr_at(ETH_HDR_LEN + 24),
    ) else {
        return COUNTER_V6_PASSED_EXTENSIONS;
    };
    if version >> 4 != 6 {
        return COUNTER_V6_PASSED_OTHER;
    }
    let ours = dst == config.ipv6;
    let owned = config.ipv6_mode == MODE_OWNED_IP;
    // Owned address: all of it is the stack's, which parses (and counts) the rest.
    if ours && owned {
        return COUNTER_V6_STEERED;
    }
    if !ours && !owned {
        return COUNTER_V6_PASSED_NOT_OURS;
    }
    let upper = skip_extensions(frame, next, ETH_HDR_LEN + IPV6_HDR_LEN);
    if !ours {
        // Owned mode, another destination: the neighbour discovery for our address,
        // sent to its solicited-node multicast address (RFC 4861 section 7.2.2), to
        // all-nodes (an unsolicited advertisement, section 7.2.6) or by a node doing
        // duplicate address detection (RFC 4862 section 5.4.3).
        if let Some((IPPROTO_ICMPV6, l4)) = upper
            && matches!(
                frame.u8_at(l4),
                Some(NDP_NEIGHBOUR_SOLICITATION | NDP_NEIGHBOUR_ADVERTISEMENT)
            )
            && frame.addr_at(l4 + NDP_TARGET_OFFSET) == Some(config.ipv6)
        {
            return COUNTER_V6_NDP_STEERED;
        }
        return COUNTER_V6_PASSED_NOT_OURS;
    }
    let Some((protocol, l4)) = upper else {
        return COUNTER_V6_PASSED_EXTENSIONS;
    };
    // Shared address.
    match protocol {
        IPPROTO_TCP => match frame.be16_at(l4 + 2) {
            Some(port) if config.owns_port(port) => COUNTER_V6_STEERED,
            Some(_) => COUNTER_V6_PASSED_KERNEL_PORT,
            None => COUNTER_V6_PASSED_EXTENSIONS,
        },
        IPPROTO_ICMPV6 if icmpv6_error_for_us(frame, config, l4) => COUNTER_V6_STEERED,
        _ => COUNTER_V6_PASSED_OTHER,
    }
}

/// Follows at most [`MAX_IPV6_EXTENSION_HEADERS`] hop-by-hop, routing and destination
/// options headers (RFC 8200 section 4) from `next` at `offset`: the upper-layer
/// protocol and its offset. `None` for a longer chain, a fragment (the kernel
/// reassembles) or a header cut short. The bound keeps the verifier content, and a
/// chain meant to hide the TCP header goes to the kernel, never to the stack.
#[inline(always)]
fn skip_extensions<F: Frame + ?Sized>(frame: &F, next: u8, offset: usize) -> Option<(u8, usize)> {
    let (mut next, mut offset) = (next, offset);
    let mut i = 0;
    while i < MAX_IPV6_EXTENSION_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let header = frame.be16_at(offset)?;
                next = (header >> 8) as u8;
                // Hdr Ext Len: 8-octet units, not counting the first 8.
                offset += ((header & 0xff) as usize + 1) * 8;
            }
            _ => break,
        }
        i += 1;
    }
    match next {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => None,
        _ => Some((next, offset)),
    }
}

/// Shared-IP mode: an ICMPv6 destination unreachable or packet too big (RFC 4443
/// sections 3.1 and 3.2; the latter drives path MTU discovery, RFC 8201) that quotes
/// a TCP segment from our address and one of our ports belongs to the stack.
#[inline(always)]
fn icmpv6_error_for_us<F: Frame + ?Sized>(frame: &F, config: &SteerConfig, icmp: usize) -> bool {
    if !matches!(
        frame.u8_at(icmp),
        Some(ICMPV6_DEST_UNREACHABLE | ICMPV6_PACKET_TOO_BIG)
    ) {
        return false;
    }
    let quoted = icmp + ICMP_HDR_LEN;
    let (Some(version), Some(next), Some(src)) = (
        frame.u8_at(quoted),
        frame.u8_at(quoted + 6),
        frame.addr_at(quoted + 8),
    ) else {
        return false;
    };
    if version >> 4 != 6 || src != config.ipv6 {
        return false;
    }
    let Some((IPPROTO_TCP, tcp)) = skip_extensions(frame, next, quoted + IPV6_HDR_LEN) else {
        return false;
    };
    match frame.be16_at(tcp) {
        Some(port) => config.owns_port(port),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MODE_SHARED_IP, SteerConfig};

    impl Frame for [u8] {
        fn u8_at(&self, offset: usize) -> Option<u8> {
            self.get(offset).copied()
        }
        fn be16_at(&self, offset: usize) -> Option<u16> {
            let b = self.get(offset..offset.checked_add(2)?)?;
            Some(u16::from_be_bytes([b[0], b[1]]))
        }
        fn addr_at(&self, offset: usize) -> Option<[u8; 16]> {
            self.get(offset..offset.checked_add(16)?)?.try_into().ok()
        }
    }

    const OURS: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const PEER: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const OTHER: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    /// ff02::1:ff00:2, the solicited-node multicast address of OURS.
    const SOLICITED: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2];
    const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    fn config(mode: u32) -> SteerConfig {
        let mut c = SteerConfig {
            ipv6: OURS,
            ipv6_mode: mode,
            port_lo: 61_000,
            port_hi: 65_535,
            enabled: 1,
            ..Default::default()
        };
        c.listen_ports[0] = 80;
        c
    }

    /// An IPv6 packet (header and `payload`) from `src` to `dst`.
    fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend((payload.len() as u16).to_be_bytes());
        p.extend([next, 64]);
        p.extend(src);
        p.extend(dst);
        p.extend(payload);
        p
    }

    /// `packet` in an Ethernet frame.
    fn frame(packet: &[u8]) -> Vec<u8> {
        let mut f = vec![0x33, 0x33, 0, 0, 0, 1, 2, 0, 0, 0, 0, 1];
        f.extend(ETHERTYPE_IPV6.to_be_bytes());
        f.extend(packet);
        f
    }

    fn tcp(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend(src_port.to_be_bytes());
        t.extend(dst_port.to_be_bytes());
        t.extend([0; 8]);
        t.extend([0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        t
    }

    /// `count` extension headers of `kind` (8 bytes each but the first, 16) before
    /// `next`'s `payload`.
    fn with_extensions(kind: u8, count: usize, next: u8, payload: &[u8]) -> (u8, Vec<u8>) {
        let mut body = payload.to_vec();
        let mut next = next;
        for i in 0..count {
            let len = if i == count - 1 { 1 } else { 0 };
            let mut header = vec![next, len];
            header.resize((len as usize + 1) * 8, 0);
            header.extend(body);
            body = header;
            next = kind;
        }
        (next, body)
    }

    fn icmpv6(kind: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind, 0, 0, 0];
        m.extend(rest);
        m.extend(body);
        m
    }

    fn verdict(config: &SteerConfig, frame: &[u8]) -> u32 {
        steer_ipv6(frame, config)
    }

    #[test]
    fn shared_steers_tcp_to_our_ports_and_passes_the_kernels() {
        let c = config(MODE_SHARED_IP);
        let to = |dst, port| frame(&ipv6(IPPROTO_TCP, PEER, dst, &tcp(443, port)));
        assert_eq!(verdict(&c, &to(OURS, 61_000)), COUNTER_V6_STEERED);
        assert_eq!(verdict(&c, &to(OURS, 80)), COUNTER_V6_STEERED);
        assert_eq!(verdict(&c, &to(OURS, 22)), COUNTER_V6_PASSED_KERNEL_PORT);
        assert_eq!(
            verdict(&c, &to(OURS, 60_999)),
            COUNTER_V6_PASSED_KERNEL_PORT
        );
        assert_eq!(verdict(&c, &to(OTHER, 61_000)), COUNTER_V6_PASSED_NOT_OURS);
        let udp = frame(&ipv6(17, PEER, OURS, &tcp(53, 61_000)));
        assert_eq!(verdict(&c, &udp), COUNTER_V6_PASSED_OTHER);
        // No IPv6 address configured: nothing of IPv6 is the stack's.
        let none = SteerConfig { ipv6: [0; 16], ..c };
        assert_eq!(
            verdict(&none, &to(OURS, 61_000)),
            COUNTER_V6_PASSED_NOT_OURS
        );
        assert_eq!(
            verdict(&none, &to([0; 16], 61_000)),
            COUNTER_V6_PASSED_NOT_OURS
        );
        for v in [
            COUNTER_V6_PASSED_KERNEL_PORT,
            COUNTER_V6_PASSED_NOT_OURS,
            COUNTER_V6_PASSED_OTHER,
            COUNTER_V6_PASSED_EXTENSIONS,
        ] {
            assert!(!steers(v));
        }
        assert!(steers(COUNTER_V6_STEERED) && steers(COUNTER_V6_NDP_STEERED));
    }

    #[test]
    fn extension_headers_are_followed_a_few_deep_and_longer_chains_go_to_the_kernel() {
        let c = config(MODE_SHARED_IP);
        for kind in [IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS] {
            for count in 1..=MAX_IPV6_EXTENSION_HEADERS {
                let (next, body) = with_extensions(kind, count, IPPROTO_TCP, &tcp(443, 61_000));
                let f = frame(&ipv6(next, PEER, OURS, &body));
                assert_eq!(verdict(&c, &f), COUNTER_V6_STEERED, "{kind} x{count}");
                let (next, body) = with_extensions(kind, count, IPPROTO_TCP, &tcp(443, 22));
                let f = frame(&ipv6(next, PEER, OURS, &body));
                assert_eq!(verdict(&c, &f), COUNTER_V6_PASSED_KERNEL_PORT);
            }
            let deep = MAX_IPV6_EXTENSION_HEADERS + 1;
            let (next, body) = with_extensions(kind, deep, IPPROTO_TCP, &tcp(443, 61_000));
            let f = frame(&ipv6(next, PEER, OURS, &body));
            assert_eq!(verdict(&c, &f), COUNTER_V6_PASSED_EXTENSIONS);
        }
        // A fragment: the kernel reassembles.
        let (next, body) = with_extensions(IPPROTO_HOPOPTS, 1, IPPROTO_FRAGMENT, &[0; 16]);
        let f = frame(&ipv6(next, PEER, OURS, &body));
        assert_eq!(verdict(&c, &f), COUNTER_V6_PASSED_EXTENSIONS);
        // A header whose length runs past the frame.
        let f = frame(&ipv6(
            IPPROTO_DSTOPTS,
            PEER,
            OURS,
            &[IPPROTO_TCP, 200, 0, 0],
        ));
        assert_eq!(verdict(&c, &f), COUNTER_V6_PASSED_EXTENSIONS);
    }

    #[test]
    fn shared_steers_icmpv6_errors_that_quote_our_segments_only() {
        let c = config(MODE_SHARED_IP);
        let quoted = |src, sport| ipv6(IPPROTO_TCP, src, PEER, &tcp(sport, 443));
        let error = |kind, q: Vec<u8>| {
            frame(&ipv6(
                IPPROTO_ICMPV6,
                PEER,
                OURS,
                &icmpv6(kind, [0, 0, 5, 0], &q),
            ))
        };
        for kind in [ICMPV6_DEST_UNREACHABLE, ICMPV6_PACKET_TOO_BIG] {
            assert_eq!(
                verdict(&c, &error(kind, quoted(OURS, 61_000))),
                COUNTER_V6_STEERED
            );
            assert_eq!(
                verdict(&c, &error(kind, quoted(OURS, 80))),
                COUNTER_V6_STEERED
            );
            // The kernel's own connection, or another address's.
            assert_eq!(
                verdict(&c, &error(kind, quoted(OURS, 40_000))),
                COUNTER_V6_PASSED_OTHER
            );
            assert_eq!(
                verdict(&c, &error(kind, quoted(OTHER, 61_000))),
                COUNTER_V6_PASSED_OTHER
            );
            // A quote cut before the ports.
            let mut cut = quoted(OURS, 61_000);
            cut.truncate(41);
            assert_eq!(verdict(&c, &error(kind, cut)), COUNTER_V6_PASSED_OTHER);
            // The quoted segment behind a destination options header.
            let (next, body) = with_extensions(IPPROTO_DSTOPTS, 1, IPPROTO_TCP, &tcp(61_000, 443));
            let q = ipv6(next, OURS, PEER, &body);
            assert_eq!(verdict(&c, &error(kind, q)), COUNTER_V6_STEERED);
        }
        // Echo, time exceeded and NDP stay with the kernel.
        for kind in [
            128,
            129,
            3,
            NDP_NEIGHBOUR_SOLICITATION,
            NDP_NEIGHBOUR_ADVERTISEMENT,
        ] {
            assert_eq!(
                verdict(&c, &error(kind, quoted(OURS, 61_000))),
                COUNTER_V6_PASSED_OTHER
            );
        }
    }

    fn ndp(kind: u8, dst: [u8; 16], target: [u8; 16]) -> Vec<u8> {
        frame(&ipv6(
            IPPROTO_ICMPV6,
            PEER,
            dst,
            &icmpv6(kind, [0; 4], &target),
        ))
    }

    #[test]
    fn owned_steers_everything_to_our_address_and_the_ndp_for_it() {
        let c = config(MODE_OWNED_IP);
        let udp = frame(&ipv6(17, PEER, OURS, &[0; 8]));
        assert_eq!(verdict(&c, &udp), COUNTER_V6_STEERED);
        let tcp22 = frame(&ipv6(IPPROTO_TCP, PEER, OURS, &tcp(443, 22)));
        assert_eq!(verdict(&c, &tcp22), COUNTER_V6_STEERED);
        // However long its chain: the stack parses and counts it.
        let (next, body) = with_extensions(IPPROTO_HOPOPTS, 9, IPPROTO_TCP, &tcp(443, 22));
        assert_eq!(
            verdict(&c, &frame(&ipv6(next, PEER, OURS, &body))),
            COUNTER_V6_STEERED
        );
        let to_other = frame(&ipv6(IPPROTO_TCP, PEER, OTHER, &tcp(443, 61_000)));
        assert_eq!(verdict(&c, &to_other), COUNTER_V6_PASSED_NOT_OURS);
        let ns = NDP_NEIGHBOUR_SOLICITATION;
        let na = NDP_NEIGHBOUR_ADVERTISEMENT;
        assert_eq!(
            verdict(&c, &ndp(ns, SOLICITED, OURS)),
            COUNTER_V6_NDP_STEERED
        );
        assert_eq!(
            verdict(&c, &ndp(na, ALL_NODES, OURS)),
            COUNTER_V6_NDP_STEERED
        );
        assert_eq!(verdict(&c, &ndp(na, OURS, PEER)), COUNTER_V6_STEERED);
        assert_eq!(
            verdict(&c, &ndp(ns, SOLICITED, OTHER)),
            COUNTER_V6_PASSED_NOT_OURS
        );
        assert_eq!(
            verdict(&c, &ndp(128, ALL_NODES, OURS)),
            COUNTER_V6_PASSED_NOT_OURS
        );
        // Shared mode: NDP for the interface's address is the kernel's.
        let s = config(MODE_SHARED_IP);
        assert_eq!(
            verdict(&s, &ndp(ns, SOLICITED, OURS)),
            COUNTER_V6_PASSED_NOT_OURS
        );
        assert_eq!(verdict(&s, &ndp(na, OURS, PEER)), COUNTER_V6_PASSED_OTHER);
    }

    #[test]
    fn runts_and_garbage_are_passed_never_a_panic() {
        let frames = [
            frame(&ipv6(IPPROTO_TCP, PEER, OURS, &tcp(443, 61_000))),
            frame(&ipv6(
                IPPROTO_ICMPV6,
                PEER,
                OURS,
                &icmpv6(2, [0; 4], &ipv6(IPPROTO_TCP, OURS, PEER, &tcp(61_000, 1))),
            )),
            ndp(NDP_NEIGHBOUR_SOLICITATION, SOLICITED, OURS),
        ];
        // NDP for our address is steered in owned mode only.
        for (mode, steered) in [(MODE_SHARED_IP, 2), (MODE_OWNED_IP, 3)] {
            let c = config(mode);
            for f in &frames[..steered] {
                assert!(steers(verdict(&c, f)));
                for len in 0..f.len() {
                    let v = verdict(&c, &f[..len]);
                    // Cut before the destination: never steered.
                    if len < ETH_HDR_LEN + 40 {
                        assert_eq!(v, COUNTER_V6_PASSED_EXTENSIONS, "{len}");
                    }
                }
            }
            let mut v4 = frames[0].clone();
            v4[ETH_HDR_LEN] = 0x45;
            assert_eq!(verdict(&c, &v4), COUNTER_V6_PASSED_OTHER);
        }
    }
}
