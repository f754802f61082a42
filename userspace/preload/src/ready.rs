//! The ready list: news of a stack socket that an `epoll_wait` of the program's carries
//! in its own answer instead of through the socket's eventfd.
//!
//! A program thread in `epoll_wait` turns the stack's loop itself (see `inline`). When
//! that turn makes a socket ready, signalling its eventfd (one write) only for the same
//! thread to find it in the kernel's answer, then draining it when the program reads
//! (one read), costs two system calls per request. Instead the socket goes on this
//! list, its eventfd left as it was, and the wait adds it to the kernel's answer
//! (`hangup::merge_ready`) with the events the kernel would have given.
//!
//! Only where nobody else could tell the difference: the socket has one fd and one
//! epoll registration, level-triggered without `EPOLLONESHOT` or `EPOLLEXCLUSIVE`, in
//! the set this thread waits on; no epoll set of the process is inside another; and no
//! thread sleeps in a wait of the process (`epoll_wait`, `poll`, `select`) that the
//! eventfd would have woken. Every wait (and `epoll_ctl` on a stack socket) first
//! settles the list: each socket on it that is still not shown gets its eventfd set,
//! so a level-triggered socket the program did not drain is reported again by the
//! kernel, and a sleeping wait never misses one. A read that drains the socket leaves
//! the eventfd as it was: nothing to undo. In a child forked off the process the list
//! is off.
use libc::c_int;
use std::cell::{Cell, RefCell};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

thread_local! {
    /// The epoll set whose `epoll_wait` this thread is in (-1: none).
    static COLLECTING: Cell<c_int> = const { Cell::new(-1) };
    /// The list as one look or settling saw it (kept to spare an allocation per wait).
    static SEEN: RefCell<Vec<c_int>> = const { RefCell::new(Vec::new()) };
}

/// The fds of sockets whose eventfd shows less than they are ready for.
static LIST: Mutex<Vec<c_int>> = Mutex::new(Vec::new());
/// Entries in `LIST`: waits skip the lock while there are none.
static LISTED: AtomicUsize = AtomicUsize::new(0);
/// Threads in a blocking wait of the process (changed up only with `LIST` locked).
static SLEEPERS: AtomicUsize = AtomicUsize::new(0);
/// An epoll set of the process is inside another one: never defer.
static NESTED: AtomicBool = AtomicBool::new(false);
/// Events handed to the program through the list (said at exit with `-v`).
static HANDED: AtomicU64 = AtomicU64::new(0);
/// A child forked off this process: the list is off in it (the parent's sockets on
/// it are the parent's, and its lock may have been held by a parent's thread).
static CHILD: AtomicBool = AtomicBool::new(false);

extern "C" fn in_forked_child() {
    CHILD.store(true, Ordering::SeqCst);
    LISTED.store(0, Ordering::SeqCst);
}

fn off() -> bool {
    CHILD.load(Ordering::Relaxed)
}

/// A socket with no registration the list may serve.
pub const NONE: u64 = u64::MAX;

/// A socket's one registration the list may serve: fd `fd` in epoll set `epfd`.
pub fn sole(epfd: c_int, fd: c_int) -> u64 {
    ((epfd as u32 as u64) << 32) | fd as u32 as u64
}

fn unpack(sole: u64) -> Option<(c_int, c_int)> {
    (sole != NONE).then_some(((sole >> 32) as u32 as c_int, sole as u32 as c_int))
}

/// Whether epoll `events` asked may be served by the list: level-triggered, not
/// one-shot, not exclusive (those wake or disarm in the kernel only).
pub fn plain(events: u32) -> bool {
    events & (libc::EPOLLET | libc::EPOLLONESHOT | libc::EPOLLEXCLUSIVE) as u32 == 0
}

/// Runs `f` with the list locked, in a critical section (no signal handler meanwhile,
/// see `signals`).
fn with_list<T>(f: impl FnOnce(&mut Vec<c_int>) -> T) -> T {
    let _critical = crate::signals::critical();
    let mut list = LIST.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut list)
}

/// This thread is in an `epoll_wait` on `epfd` until dropped.
pub struct Collecting(c_int);

pub fn collecting(epfd: c_int) -> Collecting {
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain `extern "C" fn()` to run in the child after a fork.
    AT_FORK.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(in_forked_child));
    });
    Collecting(COLLECTING.try_with(|c| c.replace(epfd)).unwrap_or(-1))
}

impl Drop for Collecting {
    fn drop(&mut self) {
        let _ = COLLECTING.try_with(|c| c.set(self.0));
    }
}

/// The poll loop's news for a socket with registration `sole`: whether it goes on
/// the list (true: the eventfd is left alone), `changed` when the eventfd's count is
/// not what the socket is ready for. News that changes nothing the eventfd shows needs
/// no signal either, where the list may serve the socket: its one level-triggered
/// registration reports it from the count already there.
pub fn defer(sole: u64, changed: bool) -> bool {
    let Some((epfd, fd)) = unpack(sole) else {
        return false;
    };
    if COLLECTING.try_with(Cell::get).unwrap_or(-1) != epfd
        || NESTED.load(Ordering::Acquire)
        || off()
    {
        return false;
    }
    if !changed {
        return true;
    }
    with_list(|list| {
        if SLEEPERS.load(Ordering::Acquire) > 0 {
            return false;
        }
        if !list.contains(&fd) {
            list.push(fd);
            LISTED.store(list.len(), Ordering::Release);
        }
        true
    })
}

/// Whether the list holds anything.
pub fn any() -> bool {
    LISTED.load(Ordering::Acquire) > 0 && !off()
}

/// Moves the list into `out`, keeping its room.
fn drain(list: &mut Vec<c_int>, out: &mut Vec<c_int>) {
    out.append(list);
    LISTED.store(0, Ordering::Release);
}

/// Runs `f` on the fds `fill` puts in this thread's buffer (kept from call to call: no
/// allocation per wait; a buffer of its own when re-entered).
fn scratch<T>(fill: impl FnOnce(&mut Vec<c_int>), f: impl FnOnce(&[c_int]) -> T) -> T {
    let mut buf = SEEN
        .try_with(|s| s.try_borrow_mut().ok().map(|mut s| std::mem::take(&mut *s)))
        .ok()
        .flatten()
        .unwrap_or_default();
    buf.clear();
    fill(&mut buf);
    let out = f(&buf);
    let _ = SEEN.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            *s = buf;
        }
    });
    out
}

fn settle_all(fds: &[c_int]) {
    for &fd in fds {
        crate::table::settle(fd);
    }
}

/// Every socket on the list gets its eventfd set to what it is ready for (the list
/// is empty after).
pub fn settle() {
    if any() {
        scratch(|buf| with_list(|list| drain(list, buf)), settle_all);
    }
}

/// A blocking wait is under way until dropped: nothing goes on the list meanwhile,
/// and what was on it is settled first, so the wait sees it.
pub struct Sleeping(());

pub fn sleeping() -> Sleeping {
    if off() {
        SLEEPERS.fetch_add(1, Ordering::AcqRel);
        return Sleeping(());
    }
    let fill = |buf: &mut Vec<c_int>| {
        with_list(|list| {
            SLEEPERS.fetch_add(1, Ordering::AcqRel);
            drain(list, buf);
        })
    };
    scratch(fill, settle_all);
    Sleeping(())
}

impl Drop for Sleeping {
    fn drop(&mut self) {
        SLEEPERS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs `f` on the fds the list holds now (it keeps them: the program has not read
/// yet).
pub fn seen<T>(f: impl FnOnce(&[c_int]) -> T) -> T {
    if off() {
        return f(&[]);
    }
    scratch(|buf| with_list(|list| buf.extend_from_slice(list)), f)
}

/// Counts events handed to the program through the list.
pub fn handed(n: u64) {
    HANDED.fetch_add(n, Ordering::Relaxed);
}

/// An epoll set went inside another (`epoll_ctl` added an epoll fd): its waiters
/// would not hear the list, so nothing goes on it from now on.
pub fn nested() {
    NESTED.store(true, Ordering::Release);
    settle();
}

/// Whether `fd` is an epoll instance (its `/proc/self/fd` link names `[eventpoll]`);
/// true when that cannot be read, to stay on the safe side.
pub fn is_epoll(fd: c_int) -> bool {
    let path = format!("/proc/self/fd/{fd}\0");
    let mut buf = [0u8; 64];
    // SAFETY: a NUL-terminated path and a buffer of its stated length.
    let n = unsafe { libc::readlink(path.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return true;
    }
    buf[..n as usize].ends_with(b"[eventpoll]")
}

/// At exit, with `-v`: how many events the list carried.
pub fn report() {
    crate::config::say!(
        "ready list: {} event(s) handed to epoll_wait without an eventfd signal",
        HANDED.load(Ordering::Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_packs_and_unpacks() {
        assert_eq!(unpack(sole(7, 12)), Some((7, 12)));
        assert_eq!(unpack(NONE), None);
        assert!(plain(libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32));
        assert!(!plain(libc::EPOLLIN as u32 | libc::EPOLLET as u32));
        assert!(!plain(libc::EPOLLIN as u32 | libc::EPOLLONESHOT as u32));
        assert!(!plain(libc::EPOLLIN as u32 | libc::EPOLLEXCLUSIVE as u32));
    }

    #[test]
    fn only_the_set_this_thread_waits_on_defers() {
        let s = sole(900, 901);
        assert!(!defer(s, true), "no wait under way");
        let c = collecting(899);
        assert!(!defer(s, true), "another set");
        drop(c);
        assert!(!defer(NONE, true));
    }

    #[test]
    fn nothing_goes_on_the_list_while_a_thread_sleeps() {
        let s = sole(910, 911);
        let _c = collecting(910);
        let asleep = sleeping();
        assert!(
            !defer(s, true),
            "a sleeping wait must be woken by the eventfd"
        );
        // No change to show: nothing to write, sleeper or not.
        assert!(defer(s, false));
        drop(asleep);
        assert!(defer(s, true));
        assert!(any());
        // No socket at fd 911: settling just empties the list.
        settle();
        assert!(!any());
    }
}
