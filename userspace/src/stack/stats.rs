//! Stack-wide counters: what was received, sent, answered and dropped, and why.
use crate::wire::WireError;
use std::fmt;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
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
    rx_frames,
    tx_frames,
    /// TX ring had no free frame; the work was kept for the next turn.
    tx_ring_full,
    drop_truncated,
    drop_malformed,
    drop_bad_ip_checksum,
    drop_bad_tcp_checksum,
    drop_bad_icmp_checksum,
    drop_ip_fragment,
    drop_unsupported,
    not_for_us,
    arp_in,
    arp_requests,
    /// Connections that failed because their next hop never answered ARP.
    arp_failures,
    icmp_unreachable,
    icmp_ignored,
    closed_port,
    rst_sent,
    listen_drops,
    accept_overflows,
    syn_cookies_sent,
    syn_cookies_accepted,
    connections_opened,
    connections_closed,
}

impl StackStats {
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
