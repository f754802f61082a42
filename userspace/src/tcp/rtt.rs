//! Retransmission timer computation (RFC 6298).
use std::time::Duration;

/// Round-trip time estimation and the retransmission timeout (RFC 6298).
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    min_rto: Duration,
    max_rto: Duration,
    backoff: u32,
    latest: Option<Duration>,
}

impl RttEstimator {
    /// RFC 6298 section 2.1: RTO starts at 1 s before any measurement.
    pub fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            rto: initial_rto,
            min_rto,
            max_rto,
            backoff: 0,
            latest: None,
        }
    }

    /// RFC 6298 section 2.2 and 2.3. Karn's rule (section 3) is the caller's: it never
    /// passes a sample taken from a retransmitted segment without timestamps.
    pub fn sample(&mut self, rtt: Duration) {
        self.latest = Some(rtt);
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(rtt);
                self.rttvar = self.rttvar * 3 / 4 + delta / 4; // beta = 1/4
                self.srtt = Some(srtt * 7 / 8 + rtt / 8); // alpha = 1/8
            }
        }
        let srtt = self.srtt.unwrap_or(rtt);
        // G (clock granularity) is 1 us here, below 4*RTTVAR in practice.
        self.rto = (srtt + (self.rttvar * 4).max(Duration::from_micros(1)))
            .clamp(self.min_rto, self.max_rto);
        self.backoff = 0;
    }

    /// Current RTO including exponential backoff (RFC 6298 section 5.5), capped.
    pub fn rto(&self) -> Duration {
        self.rto
            .saturating_mul(1 << self.backoff.min(16))
            .min(self.max_rto)
    }
    /// Doubles the RTO after a timeout (RFC 6298 5.5), up to the maximum.
    pub fn back_off(&mut self) {
        self.backoff = self.backoff.saturating_add(1);
    }
    /// Sets the RTO while there is no RTT sample yet (RFC 6298 section 5.7).
    pub fn restart(&mut self, rto: Duration) {
        if self.srtt.is_none() {
            self.rto = rto.clamp(self.min_rto, self.max_rto);
            self.backoff = 0;
        }
    }
    /// Forgets the back-off once new data is acknowledged.
    pub fn reset_backoff(&mut self) {
        self.backoff = 0;
    }
    /// The smoothed RTT, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }
    /// The latest RTT sample.
    pub fn latest(&self) -> Option<Duration> {
        self.latest
    }
    /// What a moved connection carries: SRTT, RTTVAR, the RTO before back-off, the
    /// back-off and the latest sample (the bounds are the stack's).
    pub fn parts(&self) -> RttParts {
        RttParts {
            srtt: self.srtt,
            rttvar: self.rttvar,
            rto: self.rto,
            backoff: self.backoff,
            latest: self.latest,
        }
    }
    /// Takes the state [`RttEstimator::parts`] gave (the RTO within this one's bounds).
    pub fn set_parts(&mut self, p: RttParts) {
        self.srtt = p.srtt;
        self.rttvar = p.rttvar;
        self.rto = p.rto.clamp(self.min_rto, self.max_rto);
        self.backoff = p.backoff.min(16);
        self.latest = p.latest;
    }
}

/// The state of an [`RttEstimator`], see [`RttEstimator::parts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttParts {
    /// SRTT (RFC 6298 2.2), once measured.
    pub srtt: Option<Duration>,
    /// RTTVAR.
    pub rttvar: Duration,
    /// RTO before back-off.
    pub rto: Duration,
    /// Doublings of the RTO (RFC 6298 5.5).
    pub backoff: u32,
    /// The latest sample.
    pub latest: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_and_backoff() {
        let ms = Duration::from_millis;
        let mut r = RttEstimator::new(ms(1000), ms(200), ms(60_000));
        assert_eq!(r.rto(), ms(1000));
        r.sample(ms(100));
        assert_eq!(r.srtt(), Some(ms(100)));
        assert_eq!(r.rto(), ms(300)); // 100 + 4*50
        r.back_off();
        r.back_off();
        assert_eq!(r.rto(), ms(1200));
        r.sample(ms(100));
        assert_eq!(r.rto(), ms(250)); // 100 + 4*37.5, backoff cleared
    }
}
