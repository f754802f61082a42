//! The poll loop's thread asks the kernel's fair scheduler (EEVDF, Linux 6.12+) for a
//! short time slice of its own: `sched_setattr(2)` with `SCHED_OTHER` and
//! `sched_runtime`, which any thread may do for itself (no capability, no sysctl).
//!
//! Why: under `userspace exec` the loop is a third busy thread beside the program's
//! and its peer's. A thread woken onto a CPU where another runs waits until that one's
//! slice ends, and with HZ=250 the end is only noticed at a tick: up to 4 ms, the redis
//! tail in docs/PERFORMANCE.md. A woken thread with a shorter slice than the running
//! one preempts it at once (the scheduler's PREEMPT_SHORT), and a running thread whose
//! short slice is used up yields to the next thread woken onto its CPU.
use std::io;

/// The shortest slice the kernel accepts (it clamps to 0.1..100 ms).
pub const SHORT_SLICE: std::time::Duration = std::time::Duration::from_micros(100);

/// `struct sched_attr` of `sched_setattr(2)` (the 56-byte version, SCHED_ATTR_SIZE_VER1).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Gives the calling thread a fair-scheduler slice of `slice` (clamped by the kernel),
/// keeping its nice value; returns the slice the kernel reports now (a kernel before
/// 6.12 ignores the request and reports none).
pub fn set_own_slice(slice: std::time::Duration) -> io::Result<std::time::Duration> {
    // SAFETY: getpriority and gettid take no pointers; errno is read right after.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
    };
    if nice == -1 && io::Error::last_os_error().raw_os_error() != Some(0) {
        return Err(io::Error::last_os_error());
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        nice,
        runtime: slice.as_nanos() as u64,
        ..SchedAttr::default()
    };
    // SAFETY: `attr` is a live, initialised sched_attr whose `size` field is its size;
    // pid 0 is the calling thread; flags 0.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut now = SchedAttr::default();
    // SAFETY: `now` is writable and `size_of::<SchedAttr>()` bytes long, as told.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut now as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as u32,
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::time::Duration::from_nanos(now.runtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On this kernel (6.18) the slice is taken, and the nice value is kept.
    #[test]
    fn a_thread_gets_the_short_slice_and_keeps_its_nice() {
        std::thread::spawn(|| {
            // SAFETY: nice(2) on this thread only (Linux: per thread), no pointers.
            unsafe { libc::nice(3) };
            let got = set_own_slice(SHORT_SLICE).expect("sched_setattr");
            assert_eq!(got, SHORT_SLICE);
            // SAFETY: as above.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as _) };
            assert!(nice >= 3, "nice {nice}");
        })
        .join()
        .unwrap();
    }
}
