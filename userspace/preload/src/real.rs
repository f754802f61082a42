//! The next definition of a libc function (libc's own), found once with
//! `dlsym(RTLD_NEXT)`, and the eventfd system calls made without going through libc
//! (so they never come back into this library's own `read` and `write`).
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `real!(name: fn(ARGS) -> RET)`: the next definition of `name`, as a function pointer.
macro_rules! real {
    ($name:ident : fn($($arg:ty),*) -> $ret:ty) => {{
        static SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let address = $crate::real::next(&SLOT, concat!(stringify!($name), "\0"));
        // SAFETY: `address` is the next loaded definition of the libc function `$name`,
        // whose C signature is exactly this one.
        #[allow(unused_unsafe)]
        let function = unsafe {
            std::mem::transmute::<usize, unsafe extern "C" fn($($arg),*) -> $ret>(address)
        };
        function
    }};
}
pub(crate) use real;

/// The address of the next definition of `name` (NUL-terminated), cached in `slot`.
pub(crate) fn next(slot: &std::sync::atomic::AtomicUsize, name: &'static str) -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    let cached = slot.load(Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: `name` ends with NUL; RTLD_NEXT is a valid pseudo-handle for dlsym.
    let address = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
    if address == 0 {
        // No libc below us: nothing sensible can follow.
        eprintln!(
            "userspace-preload: libc has no {}",
            name.trim_end_matches('\0')
        );
        std::process::abort();
    }
    slot.store(address, Relaxed);
    address
}

/// A non-blocking, close-on-exec eventfd: the kernel fd behind a stack socket.
pub(crate) fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_eventfd2,
            0,
            libc::EFD_NONBLOCK | libc::EFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Moves an eventfd's counter from `old` (what it holds) to `new` in as few system
/// calls as it takes: up by adding the difference (an addition wakes pollers,
/// edge-triggered epoll included, even when it adds 0), down by taking the count and
/// adding `new` back if it is not 0 (readiness that goes away needs no wake-up).
pub(crate) fn set_counter(fd: &OwnedFd, old: u64, new: u64) {
    let raw = fd.as_raw_fd();
    if new < old {
        let mut taken = 0u64;
        // SAFETY: reads at most 8 bytes into `taken`, which is 8 bytes; the fd is open.
        unsafe { libc::syscall(libc::SYS_read, raw, &mut taken as *mut u64, 8usize) };
        if new == 0 {
            return;
        }
    }
    let add = if new < old { new } else { new - old };
    // SAFETY: writes the 8 bytes of `add`; the fd is open.
    unsafe { libc::syscall(libc::SYS_write, raw, &add as *const u64, 8usize) };
}

/// Sets `errno` for the calling thread.
pub(crate) fn set_errno(code: i32) {
    // SAFETY: __errno_location returns this thread's errno, always valid.
    unsafe { *libc::__errno_location() = code };
}
