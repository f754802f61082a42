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
    /// Frames dropped: IPv4 fragments.
    drop_ip_fragment,
    /// Frames dropped: protocols the stack does not speak.
    drop_unsupported,
    /// Frames for another address.
    not_for_us,
    /// ARP packets for our address.
    arp_in,
    /// ARP requests sent.
    arp_requests,
    /// Connections that failed because their next hop never answered ARP.
    arp_failures,
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
    /// Connections reset because an accept queue overflowed.
    accept_overflows,
    /// SYN-ACKs sent with a SYN cookie (SYN queue full).
    syn_cookies_sent,
    /// Connections opened from a valid SYN cookie.
    syn_cookies_accepted,
    /// Connections created.
    connections_opened,
    /// Connections freed.
    connections_closed,
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
