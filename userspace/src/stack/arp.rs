//! ARP cache and resolution (RFC 826, RFC 1122 2.3.2.1 rate limiting).
use crate::tcp::Instant;
use crate::wire::MacAddr;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

/// How often an unanswered request is repeated.
pub const ARP_RETRY: Duration = Duration::from_millis(200);
/// Unanswered requests after which a neighbour counts as unreachable (3 s, as Linux's
/// three probes a second apart).
pub const ARP_MAX_REQUESTS: u32 = 15;

/// Neighbours' Ethernet addresses, and the requests still unanswered.
#[derive(Debug, Default)]
pub struct ArpCache {
    entries: HashMap<Ipv4Addr, MacAddr>,
    /// Address -> (time of last request, requests sent).
    pending: HashMap<Ipv4Addr, (Instant, u32)>,
}

impl ArpCache {
    /// The Ethernet address of `ip`, if known.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.entries.get(&ip).copied()
    }

    /// Learns (or replaces) the Ethernet address of `ip`.
    pub fn insert(&mut self, ip: Ipv4Addr, mac: MacAddr) {
        self.pending.remove(&ip);
        self.entries.insert(ip, mac);
    }

    /// True if a request for `ip` should go out now (rate-limited to one per ARP_RETRY).
    pub fn should_request(&mut self, ip: Ipv4Addr, now: Instant) -> bool {
        match self.pending.get_mut(&ip) {
            Some((last, tries)) if now < *last + ARP_RETRY => {
                let _ = tries;
                false
            }
            Some((last, tries)) => {
                *last = now;
                *tries += 1;
                true
            }
            None => {
                self.pending.insert(ip, (now, 1));
                true
            }
        }
    }

    /// Requests sent for `ip` that are still unanswered.
    pub fn attempts(&self, ip: Ipv4Addr) -> u32 {
        self.pending.get(&ip).map_or(0, |&(_, n)| n)
    }

    /// Forgets the unanswered requests for `ip`: the next one starts a fresh count.
    pub fn forget_pending(&mut self, ip: Ipv4Addr) {
        self.pending.remove(&ip);
    }

    /// When the next unanswered request may be repeated.
    pub fn next_retry(&self) -> Option<Instant> {
        self.pending.values().map(|&(t, _)| t + ARP_RETRY).min()
    }
}
