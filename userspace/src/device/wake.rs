//! An eventfd that wakes a poll loop sleeping in poll(2) when another thread gives it
//! work (a handle's command), so that an idle loop can sleep instead of spinning.
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The loop's side sets [`WakeFd::set_sleeping`] before its last look for work and
/// sleeps with the fd in its poll set; the other side, after handing over work, calls
/// [`WakeFd::notify`], which writes the fd only while the loop may be sleeping.
/// Both flags are SeqCst: the loop stores `sleeping` then looks for work, a notifier
/// hands over work then loads `sleeping`, so one of them sees the other.
#[derive(Debug)]
pub struct WakeFd {
    fd: OwnedFd,
    sleeping: AtomicBool,
    /// Written since the last [`WakeFd::clear`] (set after the write).
    written: AtomicBool,
}

impl WakeFd {
    /// A new non-blocking eventfd.
    pub fn new() -> io::Result<WakeFd> {
        use rustix::event::EventfdFlags;
        let fd = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(WakeFd {
            fd,
            sleeping: AtomicBool::new(false),
            written: AtomicBool::new(false),
        })
    }

    /// The descriptor to put in the loop's poll set (readable once notified).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The loop is about to sleep (true), or is awake again (false). Set it to true
    /// before the last look for work: work handed over after that look is notified.
    pub fn set_sleeping(&self, sleeping: bool) {
        self.sleeping.store(sleeping, Ordering::SeqCst);
    }

    /// Wakes the loop if it may be sleeping.
    pub fn notify(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            // Fails only when the counter would overflow: the loop is awake anyway.
            let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
            self.written.store(true, Ordering::SeqCst);
        }
    }

    /// After a wake-up: empties the eventfd so that the next sleep blocks. The flag is
    /// set after the write, so a read here never misses a write it was told of; a write
    /// whose flag comes late only ends the next sleep early, once.
    pub fn clear(&self) {
        if self.written.swap(false, Ordering::SeqCst) {
            let mut count = [0u8; 8];
            // EAGAIN: already empty.
            let _ = rustix::io::read(&self.fd, &mut count);
        }
    }
}

/// Sleeps in ppoll(2) on `fds` for at most `timeout`: the number of fds with events
/// (their `revents` set), 0 on timeout, negative on error (EINTR included).
pub(crate) fn sleep_on(fds: &mut [libc::pollfd], timeout: std::time::Duration) -> i32 {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // The system call itself, not libc's ppoll: under the preload library that name is
    // the program's wrapped wait, which turns the loop (see userspace/preload).
    // SAFETY: `fds` is an initialised slice of `len()` pollfd structs that the kernel may
    // write `revents` of; `ts` lives across the call; no signal mask.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ppoll,
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts as *const libc::timespec,
            std::ptr::null::<libc::sigset_t>(),
            0usize,
        )
    };
    r as i32
}

#[cfg(test)]
mod tests {
    use super::WakeFd;

    fn readable(wake: &WakeFd) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let mut p = [PollFd::new(&wake.fd, PollFlags::IN)];
        rustix::event::poll(&mut p, Some(&Timespec::default())).unwrap() == 1
    }

    #[test]
    fn notifies_only_a_sleeping_loop_and_clears() {
        let wake = WakeFd::new().unwrap();
        wake.notify();
        assert!(!readable(&wake), "an awake loop is not signalled");
        wake.set_sleeping(true);
        wake.notify();
        wake.notify();
        assert!(readable(&wake));
        wake.set_sleeping(false);
        wake.clear();
        assert!(!readable(&wake));
    }
}
