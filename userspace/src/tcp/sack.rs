//! Sender-side SACK scoreboard (RFC 2018, loss recovery after RFC 6675).
use super::seq::SeqNum;

/// Bound on distinct SACKed ranges remembered; more are merged into the last.
const MAX_RANGES: usize = 32;

/// What the peer reported holding beyond the cumulative ACK (RFC 2018, RFC 6675).
#[derive(Debug, Default)]
pub struct Scoreboard {
    /// Sorted, disjoint `[start, end)` ranges above SND.UNA the receiver holds.
    ranges: Vec<(SeqNum, SeqNum)>,
}

impl Scoreboard {
    /// Forgets every block.
    pub fn clear(&mut self) {
        self.ranges.clear();
    }
    /// True when no block is held.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Records a SACK block, ignoring blocks outside `(snd_una, snd_max]` (RFC 2018 section 8).
    pub fn add(&mut self, start: SeqNum, end: SeqNum, snd_una: SeqNum, snd_max: SeqNum) {
        if end <= start || end <= snd_una || end > snd_max {
            return;
        }
        let (mut start, mut end) = (start.max(snd_una), end);
        let mut i = 0;
        while i < self.ranges.len() {
            let (s, e) = self.ranges[i];
            if e < start {
                i += 1;
            } else if s > end {
                break;
            } else {
                start = start.min(s);
                end = end.max(e);
                self.ranges.remove(i);
            }
        }
        if self.ranges.len() >= MAX_RANGES {
            return;
        }
        self.ranges.insert(i, (start, end));
    }

    /// Forgets everything below the new cumulative ACK.
    pub fn advance(&mut self, snd_una: SeqNum) {
        self.ranges.retain(|&(_, e)| e > snd_una);
        if let Some(first) = self.ranges.first_mut() {
            first.0 = first.0.max(snd_una);
        }
    }

    /// The blocks, sorted.
    pub fn ranges(&self) -> &[(SeqNum, SeqNum)] {
        &self.ranges
    }

    /// Bytes covered by the blocks.
    pub fn sacked_bytes(&self) -> u32 {
        self.ranges.iter().map(|&(s, e)| e.since(s)).sum()
    }

    /// Highest SACKed sequence number (exclusive end), if any.
    pub fn high(&self) -> Option<SeqNum> {
        self.ranges.last().map(|&(_, e)| e)
    }

    /// True if `seq` lies in a block.
    pub fn is_sacked(&self, seq: SeqNum) -> bool {
        self.ranges.iter().any(|&(s, e)| seq.in_range(s, e))
    }

    /// RFC 6675 NextSeg rule 1: the first un-SACKed hole at or after `from` and below the
    /// highest SACKed byte, as (start, length).
    pub fn next_hole(&self, from: SeqNum) -> Option<(SeqNum, u32)> {
        let mut pos = from;
        for &(s, e) in &self.ranges {
            if pos < s {
                return Some((pos, s.since(pos)));
            }
            pos = pos.max(e);
        }
        None
    }

    /// Un-SACKed bytes in `[from, to)`.
    pub fn unsacked_between(&self, from: SeqNum, to: SeqNum) -> u32 {
        if to <= from {
            return 0;
        }
        let covered: u32 = self
            .ranges
            .iter()
            .map(|&(s, e)| {
                let (lo, hi) = (s.max(from), e.min(to));
                if hi > lo { hi.since(lo) } else { 0 }
            })
            .sum();
        to.since(from) - covered
    }

    /// RFC 6675 section 4 "pipe": bytes believed in the network. Un-SACKed bytes below the
    /// highest SACK count as lost unless retransmitted (below `rtx_next`).
    pub fn pipe(&self, snd_una: SeqNum, snd_max: SeqNum, rtx_next: SeqNum) -> u32 {
        let outstanding = snd_max.since(snd_una);
        let Some(high) = self.high() else {
            return outstanding;
        };
        let lost = self.unsacked_between(snd_una, high);
        let retransmitted = self.unsacked_between(snd_una, rtx_next.min(high));
        outstanding - self.sacked_bytes() - lost + retransmitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_and_pipe() {
        let una = SeqNum(u32::MAX - 100);
        let max = una + 10_000u32;
        let mut sb = Scoreboard::default();
        sb.add(una + 1000u32, una + 2000u32, una, max);
        sb.add(una + 3000u32, una + 4000u32, una, max);
        sb.add(una + 20_000u32, una + 21_000u32, una, max); // beyond snd_max: ignored
        assert_eq!(sb.sacked_bytes(), 2000);
        assert_eq!(sb.next_hole(una), Some((una, 1000)));
        assert_eq!(sb.next_hole(una + 1000u32), Some((una + 2000u32, 1000)));
        assert_eq!(sb.next_hole(una + 3500u32), None);
        // 10000 outstanding - 2000 sacked - 2000 lost
        assert_eq!(sb.pipe(una, max, una), 6000);
        assert_eq!(sb.pipe(una, max, una + 1000u32), 7000);
        sb.advance(una + 1500u32);
        assert_eq!(sb.sacked_bytes(), 1500);
    }
}
