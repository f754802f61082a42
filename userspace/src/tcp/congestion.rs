//! Congestion control behind a small trait: NewReno (RFC 5681) and CUBIC (RFC 9438).
//! Loss recovery itself (fast retransmit, NewReno partial ACKs, SACK) is in
//! `recovery.rs`; algorithms only decide how the window grows and shrinks.
use super::time::Instant;
use std::time::Duration;

/// A congestion controller: the congestion window and how ACKs, loss and timeouts
/// move it.
pub trait CongestionControl: std::fmt::Debug + Send {
    /// Its name, for diagnostics.
    fn name(&self) -> &'static str;
    /// Congestion window in bytes.
    fn window(&self) -> usize;
    /// The slow-start threshold in bytes.
    fn ssthresh(&self) -> usize;
    /// New data was acknowledged outside of loss recovery.
    fn on_ack(&mut self, now: Instant, acked: usize, srtt: Option<Duration>);
    /// Loss detected by duplicate ACKs or SACK: returns the new ssthresh; the window is set to it.
    fn on_loss(&mut self, now: Instant, flight: usize) -> usize;
    /// Retransmission timeout (RFC 5681 section 3.1, equation 4): window falls to one segment.
    fn on_timeout(&mut self, now: Instant, flight: usize);
    /// Used by recovery to inflate and deflate the window (RFC 6582).
    fn set_window(&mut self, cwnd: usize);
    /// Restart after idle (RFC 5681 4.1): the window falls to `cwnd`.
    fn restart(&mut self, cwnd: usize) {
        self.set_window(cwnd);
    }
    /// Its whole state, for a connection moved to another stack (times as ages at `now`).
    fn parts(&self, now: Instant) -> CcParts;
    /// Takes the state [`CongestionControl::parts`] gave, at this stack's `now`.
    fn set_parts(&mut self, now: Instant, p: &CcParts);
}

/// A congestion controller's state, see [`CongestionControl::parts`]. NewReno uses the
/// first three fields, CUBIC all but `acked_in_ca`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CcParts {
    /// cwnd in bytes.
    pub cwnd: usize,
    /// ssthresh in bytes.
    pub ssthresh: usize,
    /// NewReno: bytes acknowledged in congestion avoidance towards the next SMSS.
    pub acked_in_ca: usize,
    /// CUBIC: W_max (RFC 9438 4.1), in segments.
    pub w_max: f64,
    /// CUBIC: K (RFC 9438 4.2), in seconds.
    pub k: f64,
    /// CUBIC: W_est (RFC 9438 4.3), in segments.
    pub w_est: f64,
    /// CUBIC: how long ago the congestion-avoidance epoch started, if one runs.
    pub epoch_age: Option<Duration>,
}

/// `now - age`, or the origin if that is before it.
fn back_from(now: Instant, age: Duration) -> Instant {
    Instant(now.0.saturating_sub(age.as_micros() as u64))
}

/// RFC 3465 section 2.2: the limit L on bytes counted per ACK in slow start, in SMSS.
pub const ABC_LIMIT: usize = 2;

/// Initial window (RFC 6928): 10 segments.
pub fn initial_window(mss: usize) -> usize {
    10 * mss
}

/// NewReno (RFC 5681, RFC 6582).
#[derive(Debug)]
pub struct NewReno {
    mss: usize,
    cwnd: usize,
    ssthresh: usize,
    acked_in_ca: usize,
}

impl NewReno {
    /// A controller for segments of `mss` bytes, in slow start.
    pub fn new(mss: usize) -> Self {
        NewReno {
            mss,
            cwnd: initial_window(mss),
            ssthresh: usize::MAX,
            acked_in_ca: 0,
        }
    }
}

impl CongestionControl for NewReno {
    fn name(&self) -> &'static str {
        "newreno"
    }
    fn window(&self) -> usize {
        self.cwnd
    }
    fn ssthresh(&self) -> usize {
        self.ssthresh
    }
    fn on_ack(&mut self, _now: Instant, acked: usize, _srtt: Option<Duration>) {
        if self.cwnd < self.ssthresh {
            // RFC 5681 3.1 slow start with RFC 3465 Appropriate Byte Counting, L = 2*SMSS
            // (as Linux): a stretch ACK grows cwnd by what it acknowledges, up to L.
            self.cwnd += acked.min(ABC_LIMIT * self.mss);
        } else {
            // Congestion avoidance: one SMSS per window of acknowledged data.
            self.acked_in_ca += acked;
            if self.acked_in_ca >= self.cwnd {
                self.acked_in_ca -= self.cwnd;
                self.cwnd += self.mss;
            }
        }
    }
    fn on_loss(&mut self, _now: Instant, flight: usize) -> usize {
        // RFC 5681 equation 4.
        self.ssthresh = (flight / 2).max(2 * self.mss);
        self.cwnd = self.ssthresh;
        self.acked_in_ca = 0;
        self.ssthresh
    }
    fn on_timeout(&mut self, _now: Instant, flight: usize) {
        self.ssthresh = (flight / 2).max(2 * self.mss);
        self.cwnd = self.mss;
        self.acked_in_ca = 0;
    }
    fn set_window(&mut self, cwnd: usize) {
        self.cwnd = cwnd.max(self.mss);
    }
    fn parts(&self, _now: Instant) -> CcParts {
        CcParts {
            cwnd: self.cwnd,
            ssthresh: self.ssthresh,
            acked_in_ca: self.acked_in_ca,
            ..CcParts::default()
        }
    }
    fn set_parts(&mut self, _now: Instant, p: &CcParts) {
        self.cwnd = p.cwnd.max(self.mss);
        self.ssthresh = p.ssthresh.max(2 * self.mss);
        self.acked_in_ca = p.acked_in_ca;
    }
}

/// CUBIC (RFC 9438), in units of segments for the cubic function.
#[derive(Debug)]
pub struct Cubic {
    mss: usize,
    cwnd: usize,
    ssthresh: usize,
    w_max: f64,
    k: f64,
    epoch_start: Option<Instant>,
    /// Reno-friendly estimate (RFC 9438 section 4.3), in segments.
    w_est: f64,
}

const CUBIC_C: f64 = 0.4;
const CUBIC_BETA: f64 = 0.7;

impl Cubic {
    /// A controller for segments of `mss` bytes, in slow start.
    pub fn new(mss: usize) -> Self {
        Cubic {
            mss,
            cwnd: initial_window(mss),
            ssthresh: usize::MAX,
            w_max: 0.0,
            k: 0.0,
            epoch_start: None,
            w_est: 0.0,
        }
    }
}

impl CongestionControl for Cubic {
    fn name(&self) -> &'static str {
        "cubic"
    }
    fn window(&self) -> usize {
        self.cwnd
    }
    fn ssthresh(&self) -> usize {
        self.ssthresh
    }
    fn on_ack(&mut self, now: Instant, acked: usize, srtt: Option<Duration>) {
        if self.cwnd < self.ssthresh {
            // Slow start (RFC 9438 4.10 defers to RFC 5681) with byte counting, L = 2*SMSS.
            self.cwnd += acked.min(ABC_LIMIT * self.mss);
            return;
        }
        let mss = self.mss as f64;
        let cwnd_seg = self.cwnd as f64 / mss;
        let start = *self.epoch_start.get_or_insert_with(|| {
            // RFC 9438 4.2: a new congestion-avoidance epoch.
            if self.w_max < cwnd_seg {
                self.w_max = cwnd_seg;
            }
            self.k = ((self.w_max - cwnd_seg) / CUBIC_C).cbrt();
            self.w_est = cwnd_seg;
            now
        });
        let rtt = srtt.unwrap_or(Duration::from_millis(100)).as_secs_f64();
        let t = now.saturating_since(start).as_secs_f64() + rtt;
        let target = CUBIC_C * (t - self.k).powi(3) + self.w_max;
        // Reno-friendly region (section 4.3).
        let alpha = 3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA);
        self.w_est += alpha * (acked as f64 / mss) / cwnd_seg;
        let target = target.max(self.w_est).min(cwnd_seg * 1.5);
        if target > cwnd_seg {
            let inc = (target - cwnd_seg) / cwnd_seg * (acked as f64 / mss);
            self.cwnd += (inc * mss) as usize;
        }
    }
    fn on_loss(&mut self, _now: Instant, flight: usize) -> usize {
        let cwnd_seg = self.cwnd as f64 / self.mss as f64;
        // Fast convergence (section 4.7).
        self.w_max = if cwnd_seg < self.w_max {
            cwnd_seg * (1.0 + CUBIC_BETA) / 2.0
        } else {
            cwnd_seg
        };
        self.ssthresh = ((flight.max(self.cwnd) as f64 * CUBIC_BETA) as usize).max(2 * self.mss);
        self.cwnd = self.ssthresh;
        self.epoch_start = None;
        self.ssthresh
    }
    fn on_timeout(&mut self, now: Instant, flight: usize) {
        self.on_loss(now, flight);
        self.cwnd = self.mss;
    }
    fn restart(&mut self, cwnd: usize) {
        self.set_window(cwnd);
        // The cubic curve restarts too: idle time is not growth time (as Linux's
        // bictcp_cwnd_event on CA_EVENT_TX_START).
        self.epoch_start = None;
    }
    fn set_window(&mut self, cwnd: usize) {
        self.cwnd = cwnd.max(self.mss);
    }
    fn parts(&self, now: Instant) -> CcParts {
        CcParts {
            cwnd: self.cwnd,
            ssthresh: self.ssthresh,
            acked_in_ca: 0,
            w_max: self.w_max,
            k: self.k,
            w_est: self.w_est,
            epoch_age: self.epoch_start.map(|s| now.saturating_since(s)),
        }
    }
    fn set_parts(&mut self, now: Instant, p: &CcParts) {
        let finite = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
        self.cwnd = p.cwnd.max(self.mss);
        self.ssthresh = p.ssthresh.max(2 * self.mss);
        self.w_max = finite(p.w_max);
        self.k = finite(p.k);
        self.w_est = finite(p.w_est);
        self.epoch_start = p.epoch_age.map(|age| back_from(now, age));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newreno_slow_start_then_avoidance() {
        let mut cc = NewReno::new(1000);
        assert_eq!(cc.window(), 10_000);
        cc.on_ack(Instant::ZERO, 1000, None);
        assert_eq!(cc.window(), 11_000);
        assert_eq!(cc.on_loss(Instant::ZERO, 20_000), 10_000);
        for _ in 0..10 {
            cc.on_ack(Instant::ZERO, 1000, None);
        }
        assert_eq!(cc.window(), 11_000);
        cc.on_timeout(Instant::ZERO, 11_000);
        assert_eq!(cc.window(), 1000);
    }

    #[test]
    fn test_slow_start_stretch_ack_counts_up_to_two_segments() {
        // RFC 3465 2.2 with L = 2*SMSS, for both algorithms.
        let mut reno = NewReno::new(1000);
        let mut cubic = Cubic::new(1000);
        for cc in [&mut reno as &mut dyn CongestionControl, &mut cubic] {
            cc.on_ack(Instant::ZERO, 4000, None);
            assert_eq!(cc.window(), 12_000, "{}", cc.name());
            cc.on_ack(Instant::ZERO, 1500, None);
            assert_eq!(cc.window(), 13_500, "{}", cc.name());
        }
    }

    #[test]
    fn cubic_reduces_by_beta_and_regrows() {
        let mut cc = Cubic::new(1000);
        cc.set_window(100_000);
        cc.ssthresh = 50_000;
        let ss = cc.on_loss(Instant::ZERO, 100_000);
        assert_eq!(ss, 70_000);
        let mut now = Instant::ZERO;
        for _ in 0..2000 {
            now = now + Duration::from_millis(10);
            cc.on_ack(now, 1000, Some(Duration::from_millis(10)));
        }
        assert!(cc.window() > 100_000, "window {}", cc.window());
    }
}
