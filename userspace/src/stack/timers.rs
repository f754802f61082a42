//! Connection deadlines in a binary heap with lazy deletion: scheduling is O(log n) and
//! finding due timers is cheap even with 100,000 connections. A connection rescheduled
//! to another time leaves its old entry behind, skipped when it surfaces.
use crate::tcp::Instant;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug, Default)]
pub struct TimerHeap {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Pushes and pops so far, for tests that bound what timers cost.
    #[cfg(test)]
    pub ops: u64,
}

impl TimerHeap {
    pub fn schedule(&mut self, at: Instant, slot: usize) {
        #[cfg(test)]
        {
            self.ops += 1;
        }
        self.heap.push(Reverse((at, slot)));
    }

    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Entries in the heap, stale ones included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Pops an entry due at `now`; the caller checks it is still current.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        match self.heap.peek() {
            Some(Reverse((t, _))) if *t <= now => {
                #[cfg(test)]
                {
                    self.ops += 1;
                }
                self.heap.pop().map(|Reverse(e)| e)
            }
            _ => None,
        }
    }
}
