//! The program's threads turn the stack's poll loop themselves (the default; see
//! `userspace::StackBuilder::build_inline`): after a call that gave the stack work, when
//! a read or accept finds nothing, and before a wait would block. A wait first spins a
//! bounded budget, turning the loop and looking with a zero-timeout real wait, then
//! parks (the library's background thread takes the loop over) and blocks.
//!
//! Only the outermost call of the library on a thread turns the loop: a call made
//! while this thread is inside another (a signal handler that interrupted one, which
//! may hold a socket's lock) does not, and neither does a signal handler (`signals`).
use crate::config;
use std::cell::Cell;
use std::time::{Duration, Instant};
use userspace::Stack;

thread_local! {
    /// Calls of this library in progress on this thread (more than 1: re-entered).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// This thread waits in the wrapped waits (an event loop): what it writes leaves
    /// at its next wait, with the rest of the batch.
    static EVENT_LOOP: Cell<bool> = const { Cell::new(false) };
    /// Signal handlers run on this thread (see `signals`).
    static HANDLED: Cell<u32> = const { Cell::new(0) };
}

/// Signal handlers run on this thread so far.
fn handled() -> u32 {
    HANDLED.try_with(Cell::get).unwrap_or(0)
}

/// Whether a handler ran on this thread since `before` ([`handled`]): a wait that
/// would block now returns EINTR instead, as the kernel's own would have had the
/// signal come during it (epoll_wait, poll and select are never restarted). Without
/// this a signal caught while the wait spins would be missed by the program (nginx
/// waits for ever after its SIGTERM).
fn interrupted(before: u32) -> Option<i32> {
    (handled() != before).then(|| {
        crate::real::set_errno(libc::EINTR);
        -1
    })
}

/// After a write: an event loop's bytes leave at its next wait, in one batch with the
/// other connections' (one transmit kick for all); another thread's leave now, as it
/// may block next where the library does not see it.
pub fn flush() {
    if !EVENT_LOOP.try_with(Cell::get).unwrap_or(false) {
        turn();
    }
}

/// Counts a call of the library on this thread until dropped.
pub struct Entered(());

/// Marks the start of a call of the library on this thread.
pub fn enter() -> Entered {
    let _ = DEPTH.try_with(|d| d.set(d.get().saturating_add(1)));
    Entered(())
}

impl Drop for Entered {
    fn drop(&mut self) {
        let _ = DEPTH.try_with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Marks this thread as running a signal handler until dropped: its calls of the
/// library never turn the loop. Only a thread-local `Cell` without a destructor is
/// touched, which is safe in a handler.
pub fn in_signal_handler() -> Handling {
    let _ = DEPTH.try_with(|d| d.set(d.get().saturating_add(IN_HANDLER)));
    let _ = HANDLED.try_with(|h| h.set(h.get().wrapping_add(1)));
    Handling(())
}

/// See [`in_signal_handler`].
pub struct Handling(());

impl Drop for Handling {
    fn drop(&mut self) {
        let _ = DEPTH.try_with(|d| d.set(d.get().saturating_sub(IN_HANDLER)));
    }
}

/// What a signal handler adds to the depth: far more than calls ever nest.
const IN_HANDLER: u32 = 1 << 16;

/// This process's inline stack, if it runs and this thread may turn its loop now.
pub fn stack() -> Option<&'static Stack> {
    let outermost = DEPTH.try_with(|d| d.get() <= 1).unwrap_or(false);
    if !outermost {
        return None;
    }
    config::inline_stack()
}

/// One turn of the loop, if this thread may; whether it had work.
pub fn turn() -> bool {
    stack().and_then(turn_of).unwrap_or(false)
}

/// One turn of `stack`'s loop, a critical section (see `signals::critical`): a
/// handler never runs inside it, so none can leave the loop taken.
fn turn_of(stack: &Stack) -> Option<bool> {
    let _critical = crate::signals::critical();
    stack.turn()
}

/// Before a wait with a timeout (`blocking`: not zero) on a set that may hold stack
/// sockets: turns the loop and calls `look` (the wait with a zero timeout, its answer
/// made as the caller's would be); spins while `look` finds nothing, for the spin
/// budget, then parks the loop. `Some(answer)` when that answers the call (something
/// ready, an error, or a zero timeout), `None` when the caller makes its real wait.
pub fn before_wait(blocking: bool, mut look: impl FnMut() -> i32) -> Option<i32> {
    let stack = stack()?;
    let _ = EVENT_LOOP.try_with(|e| e.set(true));
    let signals = handled();
    turn_of(stack);
    let found = look();
    if found != 0 || !blocking {
        return Some(found);
    }
    if let Some(found) = spin(stack, &mut look) {
        return Some(found);
    }
    stack.park();
    interrupted(signals)
}

/// Turns the loop for the spin budget, looking after each busy turn and every few
/// others (a look is a system call); what a look found, if anything.
fn spin(stack: &Stack, look: &mut impl FnMut() -> i32) -> Option<i32> {
    let budget = config::spin();
    let start = Instant::now();
    let mut idle = 0u32;
    while start.elapsed() < budget {
        let busy = turn_of(stack) == Some(true);
        idle = if busy { 0 } else { idle + 1 };
        if busy || idle.is_multiple_of(LOOK_EVERY) {
            let found = look();
            if found != 0 {
                return Some(found);
            }
        }
        std::hint::spin_loop();
    }
    None
}

/// While spinning, turns without work between two looks at the program's own fds.
const LOOK_EVERY: u32 = 8;

/// An epoll wait (`wait(ms)`: the real one, the device's events taken out of its
/// answer) on a set that holds the device's sockets too (see `hangup::watched`): the
/// thread turns the loop, spins, then sleeps on its own fds and the device's at once,
/// at most until the stack's next timer, and turns the loop whenever it wakes. The
/// background thread stays away meanwhile, and nothing crosses a thread.
pub fn watched_wait(stack: &Stack, timeout_ms: i32, mut wait: impl FnMut(i32) -> i32) -> i32 {
    let _ = EVENT_LOOP.try_with(|e| e.set(true));
    let signals = handled();
    let deadline =
        (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
    let mut spun = false;
    loop {
        turn_of(stack);
        let found = wait(0);
        if found != 0 || timeout_ms == 0 {
            return found;
        }
        if !spun {
            spun = true;
            if let Some(found) = spin(stack, &mut || wait(0)) {
                return found;
            }
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return 0;
        }
        let watch = {
            let _critical = crate::signals::critical();
            stack.watch()
        };
        let Some(until_timer) = watch else {
            continue;
        };
        let sleep = left.map_or(until_timer, |l| l.min(until_timer));
        // Whole milliseconds, rounded up: the wait never ends before the timer.
        let ms = sleep.as_micros().div_ceil(1000).clamp(1, i32::MAX as u128) as i32;
        if let Some(eintr) = interrupted(signals) {
            return eintr;
        }
        let found = wait(ms);
        stack.unwatch();
        if found != 0 {
            return found;
        }
    }
}

/// Before a call blocks on one socket (a read, an accept, a connect): turns the loop
/// until `ready` or for the spin budget, then parks it. Whether `ready` came.
pub fn spin_until(mut ready: impl FnMut() -> bool) -> bool {
    let Some(stack) = stack() else {
        return ready();
    };
    let budget = config::spin();
    let start = Instant::now();
    loop {
        turn_of(stack);
        if ready() {
            return true;
        }
        if start.elapsed() >= budget {
            stack.park();
            return ready();
        }
        std::hint::spin_loop();
    }
}

/// The default spin before a wait parks: about a request's round trip on a loaded
/// host, so a reply on its way is met without a sleep and wake-up.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
