//! Stack-wide counters: what was received, sent, answered and dropped, and why.
use crate::wire::WireError;
use std::fmt;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Stack-wide counters, for `--stats` and tests.
        #[derive(Debug, Clone, Default)]
        pub struct StackStats {
            $($(#[$doc])* pub $name: u64,)*
        }
        impl StackStats {
            /// (name, value) of every counter, in declaration order.
            pub fn entries(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Frames received.
    rx_frames,
    /// TCP segments accepted with a CHECKSUM_PARTIAL signature (frames from memory only).
    rx_partial_checksum,
    /// Frames transmitted.
    tx_frames,
    /// TX ring had no free frame; the work was kept for the next turn.
    tx_ring_full,
    /// Frames dropped: shorter than their headers say.
    drop_truncated,
    /// Frames dropped: impossible header fields.
    drop_malformed,
    /// Frames dropped: bad IPv4 header checksum.
    drop_bad_ip_checksum,
    /// Frames dropped: bad TCP checksum.
    drop_bad_tcp_checksum,
    /// Frames dropped: bad ICMP checksum.
    drop_bad_icmp_checksum,
    /// Fragments dropped by reassembly: over a bound, or malformed (overlaps).
    drop_ip_fragment,
    /// IPv4 fragments received, datagrams reassembled from them, and datagrams whose
    /// 30 s reassembly time ran out (RFC 1122 3.3.2).
    ip_fragments,
    /// IPv4 datagrams reassembled.
    ip_reassembled,
    /// IPv4 datagrams whose reassembly timed out.
    ip_reassembly_timeouts,
    /// Frames dropped: protocols the stack does not speak.
    drop_unsupported,
    /// Frames dropped: IPv6 extension header chains RFC 8200 section 4 says to drop
    /// (misplaced Hop-by-Hop, Routing with segments left, discard options, hiding chains).
    drop_ipv6_extension,
    /// Frames dropped: IPv6 fragments.
    drop_ipv6_fragment,
    /// Frames dropped: NDP messages with a hop limit below 255 (RFC 4861 7.1).
    drop_offlink_ndp,
    /// Frames for another address.
    not_for_us,
    /// ARP packets for our address.
    arp_in,
    /// ARP requests sent.
    arp_requests,
    /// Next hops that never answered ARP; their waiting connections failed.
    arp_failures,
    /// NDP solicitations and advertisements for our IPv6 address received.
    ndp_in,
    /// Neighbour solicitations sent (resolution and DAD).
    ndp_solicits,
    /// Next hops that never answered a neighbour solicitation.
    ndp_failures,
    /// Duplicate address detection found our IPv6 address in use (RFC 4862 5.4.5).
    dad_conflicts,
    /// ICMPv6 packet-too-big messages about one of our connections (RFC 8201).
    icmp6_packet_too_big,
    /// Addresses not learned because the ARP cache was full.
    arp_cache_full,
    /// ICMP destination-unreachable messages received.
    icmp_unreachable,
    /// Other ICMP messages, ignored.
    icmp_ignored,
    /// Segments for a port nobody listens on.
    closed_port,
    /// RSTs sent for closed ports.
    rst_sent,
    /// SYNs dropped because the connection limit was reached.
    listen_drops,
    /// SYNs dropped because the accept queue was full.
    listen_overflows,
    /// TIME-WAIT connections ended by a new SYN (RFC 6191).
    time_wait_reopened,
    /// Connections reset because an accept queue overflowed.
    accept_overflows,
    /// SYN-ACKs sent with a SYN cookie (SYN queue full).
    syn_cookies_sent,
    /// Connections opened from a valid SYN cookie.
    syn_cookies_accepted,
    /// Sharded stacks: segments of unknown connections given to the other stacks,
    /// received from them, and received but unknown here too.
    strays_handed_over,
    /// Sharded stacks: segments handed over by the other stacks.
    strays_received,
    /// Sharded stacks: handed-over segments that matched no connection here either.
    strays_unclaimed,
    /// Connections created.
    connections_opened,
    /// Connections freed.
    connections_closed,
    /// Connections exported to another stack.
    connections_moved_out,
    /// Connections imported from another stack.
    connections_moved_in,
    /// Segments dropped for a connection moved to another stack (its new stack gets
    /// their retransmissions).
    moved_away_dropped,
}

impl StackStats {
    /// Counts a frame dropped for `e`.
    pub fn count_wire_error(&mut self, e: WireError) {
        let counter = match e {
            WireError::Truncated => &mut self.drop_truncated,
            WireError::Malformed => &mut self.drop_malformed,
            WireError::BadIpChecksum => &mut self.drop_bad_ip_checksum,
            WireError::BadTcpChecksum => &mut self.drop_bad_tcp_checksum,
            WireError::BadIcmpChecksum => &mut self.drop_bad_icmp_checksum,
            WireError::Fragment => &mut self.drop_ip_fragment,
            WireError::Unsupported => &mut self.drop_unsupported,
            WireError::Ipv6Extension => &mut self.drop_ipv6_extension,
            WireError::Ipv6Fragment => &mut self.drop_ipv6_fragment,
            WireError::OffLinkNdp => &mut self.drop_offlink_ndp,
        };
        *counter += 1;
    }

    /// Frames dropped as truncated, malformed, bad checksum, fragment or unsupported.
    pub fn dropped(&self) -> u64 {
        self.drop_truncated
            + self.drop_malformed
            + self.drop_bad_ip_checksum
            + self.drop_bad_tcp_checksum
            + self.drop_bad_icmp_checksum
            + self.drop_ip_fragment
            + self.drop_unsupported
            + self.drop_ipv6_extension
            + self.drop_ipv6_fragment
            + self.drop_offlink_ndp
    }
}

impl fmt::Display for StackStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in self.entries() {
            writeln!(f, "  {name:<24} {value}")?;
        }
        Ok(())
    }
}
