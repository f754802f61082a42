//! Virtual time: the state machine never reads a clock, `now` is passed in.
use std::ops::{Add, Sub};
use std::time::Duration;

/// Microseconds since an arbitrary origin chosen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant(0);
    /// `us` microseconds after the origin.
    pub fn from_micros(us: u64) -> Self {
        Instant(us)
    }
    /// `ms` milliseconds after the origin.
    pub fn from_millis(ms: u64) -> Self {
        Instant(ms * 1000)
    }
    /// Microseconds since the origin.
    pub fn micros(self) -> u64 {
        self.0
    }
    /// Milliseconds since the origin.
    pub fn millis(self) -> u64 {
        self.0 / 1000
    }
    /// Time since `earlier`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.as_micros() as u64))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_since(rhs)
    }
}

/// Earliest of two optional deadlines.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
