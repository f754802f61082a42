//! Fork safety, as glibc keeps its own locks safe (`pthread_atfork`): the library's
//! locks are taken before fork and let go after it, in the parent and in the child.
//! The child has only the forking thread, so a lock another thread held at fork would
//! stay held in it for ever, and its next socket call would hang.
//!
//! [`prepare`], [`parent`] and [`child`] are the handlers, registered when the library
//! loads, so they run before those registered later (the child's start of its own
//! stack, `config::in_forked_child`, finds the locks free). What else a fork needs
//! goes in these three functions, after the locks.
use crate::{hangup, signals, table};
use std::cell::RefCell;
use std::io::Write;

/// What the forking thread holds from `prepare` to `parent` or `child`, let go in
/// the reverse order of its taking (the fields' order).
struct Held {
    _registry: hangup::Held,
    _table: table::Held,
    /// No signal handler on this thread while it holds them (see `signals`).
    _critical: signals::Critical,
}

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// Before fork, on the forking thread: every lock of the library, in the order the
/// calls nest them (see `table::hold`, then the epoll registry's).
extern "C" fn prepare() {
    let critical = signals::critical();
    let table = table::hold();
    let registry = hangup::hold();
    let held = Held {
        _registry: registry,
        _table: table,
        _critical: critical,
    };
    let _ = HELD.try_with(|h| h.try_borrow_mut().map(|mut h| *h = Some(held)));
}

/// Lets go of what `prepare` took.
fn release() {
    let held = HELD.try_with(|h| h.try_borrow_mut().ok().and_then(|mut h| h.take()));
    drop(held);
}

/// After fork, in the parent.
extern "C" fn parent() {
    release();
}

/// After fork, in the child: the same locks, free again (a thread's lock is memory,
/// copied, and this thread held them all); signals the parent's thread kept for later
/// were the parent's.
extern "C" fn child() {
    signals::forget_pending();
    release();
}

/// Registers the handlers when the library loads.
extern "C" fn register() {
    // SAFETY: registers plain `extern "C" fn()`s that do not panic (poisoned locks
    // are taken all the same, the cell only borrowed if free).
    let r = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if r != 0 {
        let _ = writeln!(
            std::io::stderr(),
            "userspace-preload: pthread_atfork failed ({r}): a fork while other threads use sockets may hang the child"
        );
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static REGISTER: extern "C" fn() = register;
