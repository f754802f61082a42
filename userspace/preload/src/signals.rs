//! The program's signal handlers run with this thread's calls of the library marked
//! re-entered (see `inline`), so a call on a stack socket from a handler never turns
//! the poll loop: a turn takes the connections' locks and may allocate, which a
//! handler that interrupted any code (malloc included) must not do.
//!
//! `sigaction` and `signal` install a trampoline in the program's place and keep the
//! program's handler; `sigaction`'s old action shows the program's handler again.
use crate::inline;
use crate::real::real;
use libc::{c_int, c_void, sighandler_t, siginfo_t};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Signals 1 to 64.
const SIGNALS: usize = 65;

/// The program's handler of each signal, when the trampoline stands in for it.
static HANDLERS: [AtomicUsize; SIGNALS] = [const { AtomicUsize::new(0) }; SIGNALS];
/// Whether that handler takes three arguments (`SA_SIGINFO`).
static WITH_INFO: [AtomicBool; SIGNALS] = [const { AtomicBool::new(false) }; SIGNALS];

extern "C" fn trampoline(sig: c_int, info: *mut siginfo_t, context: *mut c_void) {
    let Some(slot) = usize::try_from(sig).ok().filter(|&s| s < SIGNALS) else {
        return;
    };
    let handler = HANDLERS[slot].load(Ordering::Acquire);
    if handler == 0 {
        return;
    }
    let handling = inline::in_signal_handler();
    if WITH_INFO[slot].load(Ordering::Acquire) {
        // SAFETY: the program installed this address as an SA_SIGINFO handler.
        let f = unsafe {
            std::mem::transmute::<usize, extern "C" fn(c_int, *mut siginfo_t, *mut c_void)>(handler)
        };
        f(sig, info, context);
    } else {
        // SAFETY: the program installed this address as a plain handler.
        let f = unsafe { std::mem::transmute::<usize, extern "C" fn(c_int)>(handler) };
        f(sig);
    }
    drop(handling);
}

/// Whether `handler` is a function (not SIG_DFL, SIG_IGN or SIG_ERR).
fn is_function(handler: sighandler_t) -> bool {
    handler != libc::SIG_DFL && handler != libc::SIG_IGN && handler != libc::SIG_ERR
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let real_sigaction =
        real!(sigaction: fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int);
    let slot = usize::try_from(sig).ok().filter(|&s| s > 0 && s < SIGNALS);
    let Some(slot) = slot else {
        // SAFETY: libc's sigaction with the caller's arguments.
        return unsafe { real_sigaction(sig, act, old) };
    };
    let before = (
        HANDLERS[slot].load(Ordering::Acquire),
        WITH_INFO[slot].load(Ordering::Acquire),
    );
    let result = if act.is_null() {
        // SAFETY: libc's sigaction with the caller's arguments.
        unsafe { real_sigaction(sig, act, old) }
    } else {
        // SAFETY: the caller's valid action (sigaction's contract).
        let mut wrapped = unsafe { *act };
        if is_function(wrapped.sa_sigaction) {
            WITH_INFO[slot].store(wrapped.sa_flags & libc::SA_SIGINFO != 0, Ordering::Release);
            HANDLERS[slot].store(wrapped.sa_sigaction, Ordering::Release);
            wrapped.sa_sigaction = trampoline as *const () as sighandler_t;
            wrapped.sa_flags |= libc::SA_SIGINFO;
        }
        // SAFETY: libc's sigaction with a valid action and the caller's `old`.
        let r = unsafe { real_sigaction(sig, &wrapped, old) };
        if r != 0 {
            HANDLERS[slot].store(before.0, Ordering::Release);
            WITH_INFO[slot].store(before.1, Ordering::Release);
        }
        r
    };
    // The old action as the program set it, not the trampoline.
    if result == 0 && !old.is_null() {
        // SAFETY: the kernel just wrote the caller's `old`.
        let old = unsafe { &mut *old };
        if old.sa_sigaction == trampoline as *const () as sighandler_t && before.0 != 0 {
            old.sa_sigaction = before.0;
            if !before.1 {
                old.sa_flags &= !libc::SA_SIGINFO;
            }
        }
    }
    result
}

/// `signal(2)` as glibc's (BSD semantics: SA_RESTART, the handler stays), through the
/// wrapped `sigaction` (glibc's own `signal` would not come back here).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal(sig: c_int, handler: sighandler_t) -> sighandler_t {
    // SAFETY: a zeroed sigaction is a valid value (an empty mask, no flags).
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset on our own set; sigaction with valid pointers.
    let r = unsafe {
        libc::sigemptyset(&mut act.sa_mask);
        sigaction(sig, &act, &mut old)
    };
    if r != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn bsd_signal(sig: c_int, handler: sighandler_t) -> sighandler_t {
    // SAFETY: the same contract as signal.
    unsafe { signal(sig, handler) }
}
