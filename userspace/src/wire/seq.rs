//! Sequence number arithmetic modulo 2^32 (RFC 9293 section 3.4).
use std::cmp::Ordering;
use std::ops::{Add, Sub};

/// A TCP sequence number. Ordering is by signed distance, valid for numbers within
/// 2^31 of each other, which the window bounds guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNum(pub u32);

impl SeqNum {
    /// Distance from `earlier` to `self`, as an unsigned count (wraps).
    pub fn since(self, earlier: SeqNum) -> u32 {
        self.0.wrapping_sub(earlier.0)
    }
    /// The later of two sequence numbers (modulo 2^32).
    pub fn max(self, other: SeqNum) -> SeqNum {
        if self >= other { self } else { other }
    }
    /// The earlier of two sequence numbers (modulo 2^32).
    pub fn min(self, other: SeqNum) -> SeqNum {
        if self <= other { self } else { other }
    }
    /// `lo <= self < hi`
    pub fn in_range(self, lo: SeqNum, hi: SeqNum) -> bool {
        self >= lo && self < hi
    }
}

impl PartialOrd for SeqNum {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some((self.0.wrapping_sub(other.0) as i32).cmp(&0))
    }
}

impl Add<u32> for SeqNum {
    type Output = SeqNum;
    fn add(self, n: u32) -> SeqNum {
        SeqNum(self.0.wrapping_add(n))
    }
}

impl Add<usize> for SeqNum {
    type Output = SeqNum;
    fn add(self, n: usize) -> SeqNum {
        SeqNum(self.0.wrapping_add(n as u32))
    }
}

impl Sub<u32> for SeqNum {
    type Output = SeqNum;
    fn sub(self, n: u32) -> SeqNum {
        SeqNum(self.0.wrapping_sub(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_across_the_wrap() {
        let a = SeqNum(u32::MAX - 10);
        let b = a + 20u32;
        assert_eq!(b.0, 9);
        assert!(a < b);
        assert!(b > a);
        assert_eq!(b.since(a), 20);
        assert!(SeqNum(5).in_range(a, b));
        assert!(!b.in_range(a, b));
        assert_eq!(a.max(b), b);
        assert_eq!(a.min(b), a);
    }
}
