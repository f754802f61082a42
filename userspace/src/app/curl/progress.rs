//! The progress meter curl prints on stderr (terminal or not) when the body goes to a
//! file, and -#'s bar (indicatif).
use std::io::Write;
use std::time::{Duration, Instant};

const HEADER: &str = "  % Total    % Received % Xferd  Average Speed   Time    Time     Time  Current\n                                 Dload  Upload   Total   Spent    Left  Speed\n";

/// A byte count or speed in 5 columns, as curl's max5data writes it.
pub fn max5(n: u64) -> String {
    const K: u64 = 1024;
    if n < 100_000 {
        format!("{n:5}")
    } else if n < 10_000 * K {
        format!("{:4}k", n / K)
    } else if n < 100 * K * K {
        format!("{:2}.{}M", n / (K * K), (n % (K * K)) * 10 / (K * K))
    } else if n < 10_000 * K * K {
        format!("{:4}M", n / (K * K))
    } else if n < 100 * K * K * K {
        format!(
            "{:2}.{}G",
            n / (K * K * K),
            (n % (K * K * K)) * 10 / (K * K * K)
        )
    } else {
        format!("{:4}G", n / (K * K * K))
    }
}

/// Seconds as curl's 8-letter H:MM:SS (--:--:-- when unknown).
pub fn time8(secs: Option<u64>) -> String {
    match secs {
        // curl shows no time below one second.
        None | Some(0) => "--:--:--".into(),
        Some(s) if s < 100 * 3600 => format!("{:2}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60),
        Some(s) if s / 86400 < 1000 => format!("{:3}d {:02}h", s / 86400, (s / 3600) % 24),
        Some(s) => format!("{:7}d", s / 86400),
    }
}

pub enum Progress {
    Off,
    Meter {
        start: Instant,
        last_draw: Option<Instant>,
        /// (time, bytes) samples of the last few seconds, for the current speed.
        samples: Vec<(Instant, u64)>,
        total: Option<u64>,
        received: u64,
    },
    Bar(indicatif::ProgressBar),
}

impl Progress {
    pub fn meter() -> Progress {
        eprint!("{HEADER}");
        let now = Instant::now();
        let mut meter = Progress::Meter {
            start: now,
            last_draw: None,
            samples: vec![(now, 0)],
            total: None,
            received: 0,
        };
        // A line of zeros at once; the next after a second, or at the end.
        meter.draw();
        meter
    }

    pub fn bar() -> Progress {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{wide_bar} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} {elapsed}/{eta}",
        ) {
            bar.set_style(style);
        }
        Progress::Bar(bar)
    }

    pub fn set_total(&mut self, n: Option<u64>) {
        match self {
            Progress::Meter { total, .. } => *total = n,
            Progress::Bar(b) => {
                if let Some(n) = n {
                    b.set_length(n);
                }
            }
            Progress::Off => {}
        }
    }

    pub fn update(&mut self, bytes: u64) {
        match self {
            Progress::Meter {
                received,
                last_draw,
                ..
            } => {
                *received = bytes;
                if last_draw.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    self.draw();
                }
            }
            Progress::Bar(b) => b.set_position(bytes),
            Progress::Off => {}
        }
    }

    fn draw(&mut self) {
        let Progress::Meter {
            start,
            last_draw,
            samples,
            total,
            received,
        } = self
        else {
            return;
        };
        let total = *total;
        let now = Instant::now();
        *last_draw = Some(now);
        samples.push((now, *received));
        if samples.len() > 6 {
            samples.remove(0);
        }
        let spent = now.duration_since(*start).as_secs_f64();
        let speed = if spent > 0.0 {
            (*received as f64 / spent) as u64
        } else {
            0
        };
        let (t0, b0) = samples[0];
        let window = now.duration_since(t0).as_secs_f64();
        let current = if window > 0.0 {
            (received.saturating_sub(b0) as f64 / window) as u64
        } else {
            speed
        };
        let percent = |part: u64| match total {
            Some(t) if t > 0 => (part * 100 / t).min(100),
            Some(_) => 100,
            None => 0,
        };
        let (total_time, left) = match (total, speed) {
            (Some(t), s) if s > 0 => (Some(t / s), Some(t.saturating_sub(*received) / s)),
            _ => (None, None),
        };
        eprint!(
            "\r{:3} {}  {:3} {}  {:3} {}  {}  {} {} {} {} {}",
            percent(*received),
            max5(total.unwrap_or(*received)),
            percent(*received),
            max5(*received),
            0,
            max5(0),
            max5(speed),
            max5(0),
            time8(total_time),
            time8(Some(spent as u64)),
            time8(left),
            max5(current)
        );
    }

    pub fn finish(&mut self) {
        match self {
            Progress::Meter { .. } => {
                self.draw();
                eprintln!();
                let _ = std::io::stderr().flush();
            }
            Progress::Bar(b) => b.finish(),
            Progress::Off => {}
        }
        *self = Progress::Off;
    }
}

/// -Z: curl's one meter for all the transfers running at once.
pub struct ParallelMeter {
    start: Instant,
    last_draw: Option<Instant>,
}

/// What the parallel meter shows.
pub struct Totals {
    pub downloaded: u64,
    /// The sum of the sizes announced so far (0: unknown).
    pub expected: u64,
    pub started: usize,
    pub running: usize,
}

impl ParallelMeter {
    pub fn new() -> ParallelMeter {
        eprintln!("DL% UL%  Dled  Uled  Xfers  Live Total     Current  Left    Speed");
        ParallelMeter {
            start: Instant::now(),
            last_draw: None,
        }
    }

    /// Draws at most once a second, and always when `last`.
    pub fn update(&mut self, t: &Totals, last: bool) {
        if !last
            && self
                .last_draw
                .is_some_and(|d| d.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_draw = Some(Instant::now());
        let spent = self.start.elapsed().as_secs_f64();
        let speed = if spent > 0.0 {
            (t.downloaded as f64 / spent) as u64
        } else {
            0
        };
        let percent = (t.downloaded * 100)
            .checked_div(t.expected)
            .map_or_else(|| "-- ".into(), |p| format!("{:3}", p.min(100)));
        let (total, left) = match (t.expected, speed) {
            (e, s) if e > 0 && s > 0 => (Some(e / s), Some(e.saturating_sub(t.downloaded) / s)),
            _ => (None, None),
        };
        eprint!(
            "\r{percent} --  {} {} {:5} {:5}  {} {} {} {}{}",
            max5(t.downloaded),
            max5(0),
            t.started,
            t.running,
            time8(total),
            time8(Some(spent as u64)),
            time8(left),
            max5(speed),
            if last { "\n" } else { "" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_like_curls() {
        assert_eq!(max5(1256), " 1256");
        assert_eq!(max5(99_999), "99999");
        assert_eq!(max5(100_000), "  97k");
        assert_eq!(max5(256 << 20), " 256M");
        assert_eq!(max5(15 << 20), "15.0M");
        assert_eq!(time8(None), "--:--:--");
        assert_eq!(time8(Some(3725)), " 1:02:05");
    }
}
