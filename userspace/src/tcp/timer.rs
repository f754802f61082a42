//! A connection's deadlines as one table, as in quinn-proto: one slot per kind of timer,
//! and the next deadline is the earliest slot that is set.
use super::time::Instant;
use std::ops::{Index, IndexMut};

/// The kinds of timer a connection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Retransmission timeout (RFC 6298), also for the SYN and FIN.
    Rto,
    /// Delayed ACK (RFC 1122 4.2.3.2, RFC 5681 4.2).
    DelayedAck,
    /// Zero-window probe (RFC 9293 3.8.6.1) or the sender SWS override (3.8.6.2.1).
    Persist,
    /// Keep-alive idle time and probe interval (RFC 1122 4.2.3.6).
    Keepalive,
    /// 2*MSL in TIME-WAIT (RFC 9293 3.6.1).
    TimeWait,
    /// How long an orphaned connection may stay in FIN-WAIT-2 (Linux tcp_fin_timeout).
    FinWait2,
}

impl Timer {
    const COUNT: usize = 6;
}

/// The deadline of each [`Timer`], `None` when it is stopped.
#[derive(Debug, Clone, Default)]
pub(super) struct TimerTable([Option<Instant>; Timer::COUNT]);

impl TimerTable {
    /// The earliest deadline set.
    pub(super) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// True when `timer` is set and due at `now`.
    pub(super) fn expired(&self, timer: Timer, now: Instant) -> bool {
        self[timer].is_some_and(|d| now >= d)
    }

    /// Stops every timer.
    pub(super) fn stop_all(&mut self) {
        self.0 = [None; Timer::COUNT];
    }
}

impl Index<Timer> for TimerTable {
    type Output = Option<Instant>;
    fn index(&self, timer: Timer) -> &Option<Instant> {
        &self.0[timer as usize]
    }
}

impl IndexMut<Timer> for TimerTable {
    fn index_mut(&mut self, timer: Timer) -> &mut Option<Instant> {
        &mut self.0[timer as usize]
    }
}
