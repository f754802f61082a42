//! The program's signal handlers run with this thread's calls of the library marked
//! re-entered (see `inline`), so a call on a stack socket from a handler never turns
//! the poll loop: a turn takes the connections' locks and may allocate, which a
//! handler that interrupted any code (malloc included) must not do.
//!
//! A handler never runs inside the library's critical sections either ([`critical`]:
//! a turn of the loop, or one of the library's locks held): an asynchronous signal
//! that comes then waits until the thread leaves it, and is sent again to the thread
//! with its own siginfo (`rt_tgsigqueueinfo`), so the handler runs right after, as
//! Onload defers them. A handler that closes a stack socket cannot deadlock on a lock
//! its thread holds, and one that leaves by `siglongjmp` cannot leave the loop or a
//! lock taken. A fault's signal (SIGSEGV...) runs at once: it would come back.
//!
//! `sigaction` and `signal` install a trampoline in the program's place and keep the
//! program's handler; `sigaction`'s old action shows the program's handler again.
//! `SA_RESETHAND` is the trampoline's to apply, when the handler really runs.
use crate::inline;
use crate::real::real;
use libc::{c_int, c_void, sighandler_t, siginfo_t};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Signals 1 to 64.
const SIGNALS: usize = 65;

/// The program's handler of each signal, when the trampoline stands in for it.
static HANDLERS: [AtomicUsize; SIGNALS] = [const { AtomicUsize::new(0) }; SIGNALS];
/// Whether that handler takes three arguments (`SA_SIGINFO`).
static WITH_INFO: [AtomicBool; SIGNALS] = [const { AtomicBool::new(false) }; SIGNALS];
/// Whether the program asked for `SA_RESETHAND`: the default action after one run.
static ONE_SHOT: [AtomicBool; SIGNALS] = [const { AtomicBool::new(false) }; SIGNALS];

/// Signals one thread keeps while in critical sections; more run at once.
const DEFERRED: usize = 16;

thread_local! {
    /// Critical sections this thread is in (see [`critical`]).
    static CRITICAL: Cell<u32> = const { Cell::new(0) };
    /// Whether a signal waits in `PENDING`.
    static ANY_PENDING: Cell<bool> = const { Cell::new(false) };
    static PENDING: [Cell<Option<siginfo_t>>; DEFERRED] =
        const { [const { Cell::new(None) }; DEFERRED] };
    /// Ends the sleep of a blocking call this thread is in (see [`around_sleep`]).
    static SLEEP_WAKE: Cell<Option<&'static dyn Fn()>> = const { Cell::new(None) };
}

/// Marks a critical section of this thread until dropped: an asynchronous signal
/// that comes meanwhile runs its handler when the outermost one ends. Only
/// thread-local `Cell`s without destructors are touched.
pub fn critical() -> Critical {
    let _ = CRITICAL.try_with(|c| c.set(c.get().saturating_add(1)));
    Critical(())
}

/// See [`critical`].
pub struct Critical(());

impl Drop for Critical {
    fn drop(&mut self) {
        let left = CRITICAL.try_with(|c| {
            let left = c.get().saturating_sub(1);
            c.set(left);
            left
        });
        if left == Ok(0) && ANY_PENDING.try_with(|a| a.replace(false)) == Ok(true) {
            redeliver();
        }
    }
}

/// Runs `f`, a wait that may block, outside the critical sections this thread is in
/// (the caller holds none of the library's locks): a handler runs during it as during
/// the kernel's own wait, and one that leaves by `siglongjmp` leaves the thread in the
/// program, outside any section, as it should be.
pub fn outside<T>(f: impl FnOnce() -> T) -> T {
    let depth = CRITICAL.try_with(|c| c.replace(0)).unwrap_or(0);
    if ANY_PENDING.try_with(|a| a.replace(false)) == Ok(true) {
        redeliver();
    }
    let out = f();
    let _ = CRITICAL.try_with(|c| c.set(c.get().saturating_add(depth)));
    out
}

/// The library's hook around a blocking call's sleep (`net::watch::WaitHooks`),
/// called with the connection's lock held, which the sleep lets go and takes again:
/// the thread stays in its critical section (a handler never runs between the lock
/// and the sleep, nor after), and a signal that comes ends the sleep (`wake`), so the
/// call runs the handler at once with no lock held ([`let_run`]) and sleeps again. A
/// signal kept already: no sleep.
pub fn around_sleep(sleep: &mut dyn FnMut(), wake: &dyn Fn()) {
    // SAFETY: only the lifetime is widened; `SLEEP_WAKE` is cleared below, before
    // `wake` goes, and only this thread (its trampoline, meanwhile) reads it.
    let wake: &'static dyn Fn() = unsafe { std::mem::transmute::<&dyn Fn(), _>(wake) };
    let _ = SLEEP_WAKE.try_with(|w| w.set(Some(wake)));
    if !ANY_PENDING.try_with(Cell::get).unwrap_or(false) {
        sleep();
    }
    let _ = SLEEP_WAKE.try_with(|w| w.set(None));
}

/// The signals kept in this thread's critical sections run now (no lock held).
pub fn let_run() {
    outside(|| {});
}

/// Sends this thread the signals kept in its critical sections again, each with its
/// siginfo: the kernel delivers each on the way out of the system call.
fn redeliver() {
    let _ = PENDING.try_with(|pending| {
        for slot in pending {
            if let Some(mut info) = slot.take() {
                // SAFETY: getpid and gettid take no pointers; the kernel copies `info`,
                // a siginfo it gave this process (rt_tgsigqueueinfo to itself may keep
                // any si_code).
                unsafe {
                    libc::syscall(
                        libc::SYS_rt_tgsigqueueinfo,
                        libc::getpid(),
                        libc::gettid(),
                        info.si_signo,
                        &mut info as *mut siginfo_t,
                    )
                };
            }
        }
    });
}

/// In a child after fork: the signals its parent's thread kept were the parent's.
pub fn forget_pending() {
    let _ = ANY_PENDING.try_with(|a| a.set(false));
    let _ = PENDING.try_with(|pending| pending.iter().for_each(|s| s.set(None)));
}

/// Whether `sig` waits for the end of this thread's critical section (kept now).
fn deferred(sig: c_int, info: *const siginfo_t) -> bool {
    if CRITICAL.try_with(Cell::get).unwrap_or(0) == 0 || info.is_null() {
        return false;
    }
    // SAFETY: the kernel's siginfo for this signal (SA_SIGINFO).
    let info = unsafe { *info };
    let fault = matches!(
        sig,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGFPE | libc::SIGILL | libc::SIGTRAP | libc::SIGSYS
    ) && info.si_code > 0;
    if fault {
        return false;
    }
    PENDING
        .try_with(|pending| {
            // A standard signal already kept is the same one (the kernel merges them).
            let standard = sig < 32;
            if standard
                && pending
                    .iter()
                    .any(|s| s.get().is_some_and(|i| i.si_signo == sig))
            {
                return true;
            }
            let Some(free) = pending.iter().find(|s| s.get().is_none()) else {
                return false;
            };
            free.set(Some(info));
            let _ = ANY_PENDING.try_with(|a| a.set(true));
            // A blocking call's sleep ends, to run the handler with no lock held.
            if let Ok(Some(wake)) = SLEEP_WAKE.try_with(Cell::get) {
                wake();
            }
            true
        })
        .unwrap_or(false)
}

extern "C" fn trampoline(sig: c_int, info: *mut siginfo_t, context: *mut c_void) {
    let Some(slot) = usize::try_from(sig).ok().filter(|&s| s < SIGNALS) else {
        return;
    };
    let handler = HANDLERS[slot].load(Ordering::Acquire);
    if handler == 0 || deferred(sig, info) {
        return;
    }
    if ONE_SHOT[slot].swap(false, Ordering::AcqRel) {
        reset_to_default(sig, slot);
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

/// `SA_RESETHAND`, as the kernel applies it before the handler runs.
fn reset_to_default(sig: c_int, slot: usize) {
    HANDLERS[slot].store(0, Ordering::Release);
    // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask and no flags; libc's
    // sigaction (async-signal-safe) with valid pointers.
    unsafe {
        let default: libc::sigaction = std::mem::zeroed();
        real!(sigaction: fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int)(
            sig,
            &default,
            std::ptr::null_mut(),
        );
    }
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
        ONE_SHOT[slot].load(Ordering::Acquire),
    );
    let result = if act.is_null() {
        // SAFETY: libc's sigaction with the caller's arguments.
        unsafe { real_sigaction(sig, act, old) }
    } else {
        // SAFETY: the caller's valid action (sigaction's contract).
        let mut wrapped = unsafe { *act };
        if is_function(wrapped.sa_sigaction) {
            WITH_INFO[slot].store(wrapped.sa_flags & libc::SA_SIGINFO != 0, Ordering::Release);
            ONE_SHOT[slot].store(
                wrapped.sa_flags & libc::SA_RESETHAND != 0,
                Ordering::Release,
            );
            HANDLERS[slot].store(wrapped.sa_sigaction, Ordering::Release);
            wrapped.sa_sigaction = trampoline as *const () as sighandler_t;
            wrapped.sa_flags |= libc::SA_SIGINFO;
            // The trampoline resets it when the handler runs, not when a signal waits.
            wrapped.sa_flags &= !libc::SA_RESETHAND;
        }
        // SAFETY: libc's sigaction with a valid action and the caller's `old`.
        let r = unsafe { real_sigaction(sig, &wrapped, old) };
        if r != 0 {
            HANDLERS[slot].store(before.0, Ordering::Release);
            WITH_INFO[slot].store(before.1, Ordering::Release);
            ONE_SHOT[slot].store(before.2, Ordering::Release);
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
            if before.2 {
                old.sa_flags |= libc::SA_RESETHAND;
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

#[cfg(test)]
mod tests {
    use super::*;

    static RAN: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn count(_: c_int) {
        RAN.fetch_add(1, Ordering::SeqCst);
    }

    fn install(sig: c_int, flags: c_int) {
        // SAFETY: a zeroed sigaction is a valid value; then our sigaction with it.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = count as *const () as sighandler_t;
            act.sa_flags = flags;
            assert_eq!(sigaction(sig, &act, std::ptr::null_mut()), 0);
        }
    }

    fn raise(sig: c_int) {
        // SAFETY: raise takes no pointers; the signal's handler is `count`.
        unsafe { libc::raise(sig) };
    }

    /// A signal that comes in a critical section runs its handler once the outermost
    /// one ends, once; outside one, at once. SA_RESETHAND applies when it really runs.
    #[test]
    fn a_signal_in_a_critical_section_runs_its_handler_when_it_ends() {
        install(libc::SIGUSR2, libc::SA_RESETHAND);
        let outer = critical();
        let inner = critical();
        raise(libc::SIGUSR2);
        assert_eq!(RAN.load(Ordering::SeqCst), 0, "ran inside");
        drop(inner);
        assert_eq!(
            RAN.load(Ordering::SeqCst),
            0,
            "ran inside the outer section"
        );
        drop(outer);
        assert_eq!(RAN.load(Ordering::SeqCst), 1, "not run after");
        // SA_RESETHAND: the default action now, as the program's old action shows.
        // SAFETY: a query of the action, into a zeroed one.
        let old = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            sigaction(libc::SIGUSR2, std::ptr::null(), &mut old);
            old
        };
        assert_eq!(old.sa_sigaction, libc::SIG_DFL);
        install(libc::SIGUSR2, 0);
        raise(libc::SIGUSR2);
        assert_eq!(RAN.load(Ordering::SeqCst), 2, "not run at once");
    }
}
