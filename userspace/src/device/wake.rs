//! An eventfd that wakes a poll loop sleeping in poll(2) when another thread gives it
//! work (a handle's command), so that an idle loop can sleep instead of spinning.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
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
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(WakeFd {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
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
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to our own eventfd.
            unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
            self.written.store(true, Ordering::SeqCst);
        }
    }

    /// After a wake-up: empties the eventfd so that the next sleep blocks. The flag is
    /// set after the write, so a read here never misses a write it was told of; a write
    /// whose flag comes late only ends the next sleep early, once.
    pub fn clear(&self) {
        if self.written.swap(false, Ordering::SeqCst) {
            let mut count = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live buffer from our own eventfd.
            unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WakeFd;

    fn readable(fd: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, zero timeout.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn notifies_only_a_sleeping_loop_and_clears() {
        let wake = WakeFd::new().unwrap();
        wake.notify();
        assert!(!readable(wake.raw_fd()), "an awake loop is not signalled");
        wake.set_sleeping(true);
        wake.notify();
        wake.notify();
        assert!(readable(wake.raw_fd()));
        wake.set_sleeping(false);
        wake.clear();
        assert!(!readable(wake.raw_fd()));
    }
}
