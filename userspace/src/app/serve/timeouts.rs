//! nginx's timeouts, so that a client cannot hold a connection (and its memory) at no
//! cost: a request header must arrive within `client_header_timeout`, a body read and
//! a send may stall for `client_body_timeout` and `send_timeout` between two steps, and
//! an idle keep-alive connection closes after `keepalive_timeout`.
use std::time::{Duration, Instant};

/// nginx's defaults.
pub const HEADER_TIMEOUT: f64 = 60.0;
pub const BODY_TIMEOUT: f64 = 60.0;
pub const SEND_TIMEOUT: f64 = 60.0;
pub const KEEPALIVE_TIMEOUT: f64 = 75.0;

/// The limits serve applies.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub body: Duration,
    pub send: Duration,
    pub keepalive: Duration,
}

/// Which limit a connection is under, and so which one closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for (the rest of) a request head.
    Header,
    /// Reading a request body.
    Body,
    /// Sending a response.
    Send,
    /// Idle between requests (echo: idle).
    KeepAlive,
}

/// When a connection's phase began and last moved.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The head being read began (accepted, or the first byte after a response).
    pub head_start: Instant,
    /// The last read or write that moved bytes.
    pub last_step: Instant,
}

impl Clock {
    pub fn new(now: Instant) -> Self {
        Clock {
            head_start: now,
            last_step: now,
        }
    }
}

impl Timeouts {
    /// When a connection in `phase` times out.
    pub fn deadline(&self, phase: Phase, clock: &Clock) -> Instant {
        match phase {
            // The whole head within the limit (nginx: from the connection, or from the
            // first byte of a kept-alive connection's next request).
            Phase::Header => clock.head_start + self.header,
            // Between two successive reads or writes.
            Phase::Body => clock.last_step + self.body,
            Phase::Send => clock.last_step + self.send,
            Phase::KeepAlive => clock.last_step + self.keepalive,
        }
    }
}

/// Connections closed by each limit, for `--stats`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub header: u64,
    pub body: u64,
    pub send: u64,
    pub keepalive: u64,
}

impl Counts {
    pub fn count(&mut self, phase: Phase) {
        match phase {
            Phase::Header => self.header += 1,
            Phase::Body => self.body += 1,
            Phase::Send => self.send += 1,
            Phase::KeepAlive => self.keepalive += 1,
        }
    }

    /// The `--stats` section.
    pub fn report(&self) -> String {
        format!(
            "* serve timeouts:\n  {:<24} {}\n  {:<24} {}\n  {:<24} {}\n  {:<24} {}\n",
            "header_timeouts",
            self.header,
            "body_timeouts",
            self.body,
            "send_timeouts",
            self.send,
            "keepalive_timeouts",
            self.keepalive
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phase_has_its_own_clock() {
        let t = Timeouts {
            header: Duration::from_secs(60),
            body: Duration::from_secs(61),
            send: Duration::from_secs(62),
            keepalive: Duration::from_secs(75),
        };
        let start = Instant::now();
        let clock = Clock {
            head_start: start,
            last_step: start + Duration::from_secs(10),
        };
        assert_eq!(
            t.deadline(Phase::Header, &clock),
            start + Duration::from_secs(60)
        );
        assert_eq!(
            t.deadline(Phase::Body, &clock),
            start + Duration::from_secs(71)
        );
        assert_eq!(
            t.deadline(Phase::Send, &clock),
            start + Duration::from_secs(72)
        );
        assert_eq!(
            t.deadline(Phase::KeepAlive, &clock),
            start + Duration::from_secs(85)
        );
    }
}
