//! Where start-up time goes: each step (the program's load, its attach, each UMEM's
//! populate and each socket's bind, the next hop) is timed from the process's start
//! when `USERSPACE_STARTUP_TIMES=1`, and [`report`] lists them, overlapping steps on
//! the threads that ran them. Off, a step costs one load of a flag.
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The environment variable that turns the timing on.
pub const ENV: &str = "USERSPACE_STARTUP_TIMES";

struct Step {
    name: &'static str,
    /// The queue (or other number) the step was for.
    tag: Option<u32>,
    start: Duration,
    end: Duration,
}

/// Steps kept at most.
const MAX_STEPS: usize = 256;

static ORIGIN: OnceLock<Instant> = OnceLock::new();
/// The same moment as [`ORIGIN`] on CLOCK_MONOTONIC, for steps another process timed.
static ORIGIN_NS: OnceLock<u64> = OnceLock::new();
static STEPS: Mutex<Vec<Step>> = Mutex::new(Vec::new());

/// Whether steps are timed.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var(ENV).is_ok_and(|v| v == "1"))
}

/// Marks the process's start (the first thing `main` does); steps count from here.
pub fn begin() {
    ORIGIN.get_or_init(Instant::now);
    ORIGIN_NS.get_or_init(monotonic_ns);
}

/// When [`begin`] ran, in [`monotonic_ns`].
pub fn origin_ns() -> u64 {
    *ORIGIN_NS.get_or_init(monotonic_ns)
}

/// CLOCK_MONOTONIC in ns: a time another process on this machine can compare.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

/// Records the step `name` that another process timed, from `start` to `end`
/// ([`monotonic_ns`] of that process).
pub fn record_between(name: &'static str, start: u64, end: u64) {
    let Some(&origin) = ORIGIN_NS.get() else {
        return;
    };
    if !enabled() || end < start {
        return;
    }
    let at = |ns: u64| Duration::from_nanos(ns.saturating_sub(origin));
    let mut steps = STEPS.lock().unwrap_or_else(|p| p.into_inner());
    if steps.len() < MAX_STEPS {
        steps.push(Step {
            name,
            tag: None,
            start: at(start),
            end: at(end),
        });
    }
}

fn since_origin(at: Instant) -> Duration {
    at.saturating_duration_since(*ORIGIN.get_or_init(Instant::now))
}

/// A step being timed: recorded when dropped.
pub struct Timer {
    name: &'static str,
    tag: Option<u32>,
    start: Option<Instant>,
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let step = Step {
                name: self.name,
                tag: self.tag,
                start: since_origin(start),
                end: since_origin(Instant::now()),
            };
            let mut steps = STEPS.lock().unwrap_or_else(|p| p.into_inner());
            // Start-up is a few dozen steps; a long-running server stops recording.
            if steps.len() < MAX_STEPS {
                steps.push(step);
            }
        }
    }
}

/// Times the step `name` until the returned timer drops.
pub fn step(name: &'static str) -> Timer {
    Timer {
        name,
        tag: None,
        start: enabled().then(Instant::now),
    }
}

/// Records the step `name` as running from the process's start until now.
pub fn since_start(name: &'static str) {
    if enabled() {
        drop(Timer {
            name,
            tag: None,
            start: ORIGIN.get().copied(),
        });
    }
}

/// Times the step `name` for queue (or item) `tag`.
pub fn step_for(name: &'static str, tag: u32) -> Timer {
    Timer {
        name,
        tag: Some(tag),
        start: enabled().then(Instant::now),
    }
}

/// The steps so far, by start: `start end duration name`, in ms since the process began.
pub fn report() -> String {
    use std::fmt::Write;
    let mut steps = STEPS.lock().unwrap_or_else(|p| p.into_inner());
    steps.sort_by_key(|s| s.start);
    let mut out = String::from("start-up steps (ms from the process's start):\n");
    for s in steps.iter() {
        let name = match s.tag {
            Some(t) => format!("{} {t}", s.name),
            None => s.name.to_string(),
        };
        let _ = writeln!(
            out,
            "  {:>7.2} {:>7.2} {:>6.2}  {name}",
            s.start.as_secs_f64() * 1e3,
            s.end.as_secs_f64() * 1e3,
            (s.end - s.start).as_secs_f64() * 1e3
        );
    }
    out
}

/// Prints [`report`] on stderr if timing is on, and forgets the steps printed.
pub fn print_if_enabled() {
    if enabled() {
        eprint!("{}", report());
        STEPS.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_listed_by_start_with_their_tags() {
        begin();
        // Timers made while timing is off record nothing; the report lists what was.
        let recorded = STEPS.lock().unwrap().len();
        {
            let _t = Timer {
                name: "attach",
                tag: None,
                start: Some(Instant::now()),
            };
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(Timer {
            name: "bind",
            tag: Some(3),
            start: Some(Instant::now()),
        });
        drop(Timer {
            name: "never",
            tag: None,
            start: None,
        });
        let text = report();
        assert_eq!(STEPS.lock().unwrap().len(), recorded + 2);
        let attach = text.find("  attach").expect(&text);
        let bind = text.find("  bind 3").expect(&text);
        assert!(attach < bind, "{text}");
        assert!(!text.contains("never"), "{text}");
    }
}
