//! Neighbour cache and resolution for both families: ARP (RFC 826, RFC 1122 2.3.2.1
//! rate limiting) and NDP (RFC 4861 section 7.2, the same timings as Linux gives both).
//!
//! Bounded and expiring like Linux's neighbour table: at most `ARP_CAPACITY` entries
//! (gc_thresh3), and an entry learned from the network and unused for `ARP_STALE`
//! (gc_stale_time) goes. Unanswered requests back off and end after
//! `ARP_MAX_REQUESTS`, and the address is then reported as failed.
use crate::tcp::Instant;
use crate::wire::MacAddr;
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Wait before the first repeat of an unanswered request; doubles with each one.
pub const ARP_RETRY: Duration = Duration::from_millis(200);
/// Requests for one address before it is declared unreachable: 200, 400 and 800 ms
/// apart, then 1.6 s more, so resolution fails 3 s after it started, as in Linux
/// (3 probes of retrans_time 1 s).
pub const ARP_MAX_REQUESTS: u32 = 4;
/// Entries kept at most (Linux gc_thresh3).
pub const ARP_CAPACITY: usize = 1024;
/// An entry learned from the network and unused this long is dropped (Linux gc_stale_time).
pub const ARP_STALE: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Entry {
    mac: MacAddr,
    /// Last lookup or update.
    used: Cell<Instant>,
    /// Given by the application (e.g. from the kernel's neighbour table): never expires.
    pinned: bool,
}

/// Neighbours' Ethernet addresses, and the requests still unanswered.
#[derive(Debug)]
pub struct NeighbourCache<A> {
    entries: HashMap<A, Entry>,
    /// Address -> (time the next request is due, requests sent).
    pending: HashMap<A, (Instant, u32)>,
    capacity: usize,
    /// Learned entries expire (owned-IP mode, where the stack can resolve again).
    expiring: bool,
    /// The stack's current time, for entries inserted through [`ArpCache::insert`].
    now: Instant,
}

/// The IPv4 neighbours (ARP).
pub type ArpCache = NeighbourCache<Ipv4Addr>;
/// The IPv6 neighbours (NDP).
pub type NdpCache = NeighbourCache<Ipv6Addr>;

impl<A: Copy + Eq + Hash> Default for NeighbourCache<A> {
    fn default() -> Self {
        NeighbourCache::new(true)
    }
}

impl<A: Copy + Eq + Hash> NeighbourCache<A> {
    /// A cache of `ARP_CAPACITY` entries; learned ones expire if `expiring`.
    pub fn new(expiring: bool) -> Self {
        NeighbourCache::with_capacity(ARP_CAPACITY, expiring)
    }

    /// A cache of at most `capacity` entries; learned ones expire if `expiring`.
    pub fn with_capacity(capacity: usize, expiring: bool) -> Self {
        NeighbourCache {
            entries: HashMap::new(),
            pending: HashMap::new(),
            capacity,
            expiring,
            now: Instant::ZERO,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The Ethernet address of `ip`, if known (and marks the entry used).
    pub fn lookup(&self, ip: A) -> Option<MacAddr> {
        let e = self.entries.get(&ip)?;
        e.used.set(self.now);
        Some(e.mac)
    }

    /// An address the application knows (a hint from the kernel): kept until replaced.
    pub fn insert(&mut self, ip: A, mac: MacAddr) {
        self.pending.remove(&ip);
        self.entries.insert(
            ip,
            Entry {
                mac,
                used: Cell::new(self.now),
                pinned: true,
            },
        );
    }

    /// An address learned from the network (ARP, or the source of a SYN). When the cache
    /// is full of live entries, an address nobody asked for is not kept (Linux refuses new
    /// neighbours past gc_thresh3), and one that is `wanted` (we asked for it, or a
    /// connection needs it) takes the place of the least recently used learned entry.
    /// Returns false if the address was not kept.
    pub fn learn(&mut self, ip: A, mac: MacAddr, wanted: bool) -> bool {
        let wanted = wanted || self.pending.contains_key(&ip);
        self.pending.remove(&ip);
        if let Some(e) = self.entries.get_mut(&ip) {
            e.mac = mac;
            e.used.set(self.now);
            return true;
        }
        if self.entries.len() >= self.capacity {
            self.expire(self.now);
        }
        if self.entries.len() >= self.capacity {
            let lru = self
                .entries
                .iter()
                .filter(|(_, e)| !e.pinned)
                .min_by_key(|(_, e)| e.used.get())
                .map(|(&ip, _)| ip);
            match lru {
                Some(old) if wanted => {
                    self.entries.remove(&old);
                }
                _ => return false,
            }
        }
        self.entries.insert(
            ip,
            Entry {
                mac,
                used: Cell::new(self.now),
                pinned: false,
            },
        );
        true
    }

    /// Advances the cache's clock.
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// Drops learned entries unused for `ARP_STALE`.
    pub fn expire(&mut self, now: Instant) {
        if self.expiring {
            self.entries
                .retain(|_, e| e.pinned || now.saturating_since(e.used.get()) < ARP_STALE);
        }
    }

    /// True if a request for `ip` should go out now: the first at once, then with
    /// exponential backoff (RFC 1122 2.3.2.1), at most `ARP_MAX_REQUESTS`.
    pub fn should_request(&mut self, ip: A, now: Instant) -> bool {
        match self.pending.get_mut(&ip) {
            Some((next, tries)) if now < *next || *tries >= ARP_MAX_REQUESTS => false,
            Some((next, tries)) => {
                *next = now + ARP_RETRY * (1 << *tries);
                *tries += 1;
                true
            }
            None => {
                self.pending.insert(ip, (now + ARP_RETRY, 1));
                true
            }
        }
    }

    /// Whether `ip` has an entry or an unanswered request (without marking it used).
    pub fn knows(&self, ip: A) -> bool {
        self.entries.contains_key(&ip) || self.pending.contains_key(&ip)
    }

    /// Requests sent for `ip` that are still unanswered.
    pub fn attempts(&self, ip: A) -> u32 {
        self.pending.get(&ip).map_or(0, |&(_, n)| n)
    }

    /// When the next request is due, or the next address fails.
    pub fn next_retry(&self) -> Option<Instant> {
        self.pending.values().map(|&(t, _)| t).min()
    }

    /// Addresses due for another request now.
    pub fn due(&self, now: Instant, out: &mut Vec<A>) {
        out.extend(
            self.pending
                .iter()
                .filter(|&(_, &(t, n))| t <= now && n < ARP_MAX_REQUESTS)
                .map(|(&ip, _)| ip),
        );
    }

    /// Moves the addresses whose last request went unanswered into `out`.
    pub fn take_failed(&mut self, now: Instant, out: &mut Vec<A>) {
        self.pending.retain(|&ip, &mut (t, n)| {
            let failed = n >= ARP_MAX_REQUESTS && t <= now;
            if failed {
                out.push(ip);
            }
            !failed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_entries_are_bounded_and_expire() {
        let mut c = ArpCache::with_capacity(4, true);
        let ip = |i: u8| Ipv4Addr::new(10, 0, 0, i);
        c.insert(ip(100), [1; 6]);
        for i in 0..10 {
            c.learn(ip(i), [i; 6], false);
        }
        assert_eq!(c.len(), 4, "bounded");
        assert_eq!(c.lookup(ip(0)), Some([0; 6]));
        assert_eq!(c.lookup(ip(9)), None, "no room for live entries");
        c.set_now(Instant::from_millis(1));
        c.lookup(ip(0));
        c.lookup(ip(2));
        assert!(
            c.learn(ip(20), [20; 6], true),
            "a wanted address takes a place"
        );
        assert_eq!(c.lookup(ip(1)), None, "the least recently used went");
        assert_eq!(c.lookup(ip(20)), Some([20; 6]));
        c.set_now(Instant::from_millis(1) + ARP_STALE);
        c.expire(Instant::from_millis(1) + ARP_STALE);
        assert_eq!(c.len(), 1, "learned entries expire, pinned ones stay");
        assert_eq!(c.lookup(ip(100)), Some([1; 6]));
    }

    #[test]
    fn requests_back_off_then_fail() {
        let mut c = ArpCache::default();
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let mut sent = Vec::new();
        let mut failed = Vec::new();
        for ms in 0..5000u64 {
            let now = Instant::from_millis(ms);
            if c.should_request(ip, now) {
                sent.push(ms);
            }
            c.take_failed(now, &mut failed);
            if !failed.is_empty() {
                assert_eq!(ms, 3000);
                break;
            }
        }
        assert_eq!(sent, vec![0, 200, 600, 1400]);
        assert_eq!(failed, vec![ip]);
    }
}
