//! `POLLHUP`, `POLLERR` and `POLLRDHUP` for stack sockets. The eventfd behind a stack
//! socket can only be readable and writable, so the kernel's `poll` and `epoll` never
//! report these on it. Linux's `tcp_poll` does: hang-up when both directions are shut
//! or the socket is closed (a socket never connected included), an error when one is
//! waiting, and `RDHUP` once the peer's FIN came. `poll`/`ppoll` and the `epoll_wait`
//! family add them to what the kernel returned; a `poll` on a socket that already has
//! one does not wait (the kernel's would return at once).
use crate::real::real;
use crate::table::{Conditions, lookup};
use crate::{config, inline, ready, signals};
use libc::{c_int, epoll_event, nfds_t, pollfd, sigset_t, timespec};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What `tcp_poll` adds for `c`, as poll(2) bits: `POLLRDHUP` only when asked for.
fn poll_bits(c: Conditions, asked: i16) -> i16 {
    let mut bits = 0;
    if c.hangup {
        bits |= libc::POLLHUP;
    }
    if c.error {
        bits |= libc::POLLERR;
    }
    if c.peer_closed && asked & libc::POLLRDHUP != 0 {
        bits |= libc::POLLRDHUP;
    }
    bits
}

/// The bits to add to each entry of `set`, if any entry is a stack socket with one.
fn extra(set: &[pollfd]) -> Option<Vec<i16>> {
    if config::forked() {
        // The parent's sockets: their state is its loop's (and its threads' locks).
        return None;
    }
    let mut any = false;
    let bits: Vec<i16> = set
        .iter()
        .map(|p| {
            let b = lookup(p.fd).map_or(0, |s| {
                s.in_use(p.fd);
                poll_bits(s.conditions(), p.events)
            });
            any |= b != 0;
            b
        })
        .collect();
    any.then_some(bits)
}

/// Adds `bits` to the kernel's answer `ready` (its count of entries with events).
fn merge(set: &mut [pollfd], bits: &[i16], ready: c_int) -> c_int {
    if ready < 0 {
        return ready;
    }
    for (p, b) in set.iter_mut().zip(bits) {
        p.revents |= b;
    }
    set.iter().filter(|p| p.revents != 0).count() as c_int
}

/// # Safety
/// `fds` points to `nfds` pollfds (poll's contract).
unsafe fn pollfds<'a>(fds: *mut pollfd, nfds: nfds_t) -> &'a mut [pollfd] {
    if fds.is_null() || nfds == 0 {
        return &mut [];
    }
    // SAFETY: the caller's array of `nfds` entries, valid for the call.
    unsafe { std::slice::from_raw_parts_mut(fds, nfds as usize) }
}

/// poll(2) itself, with the bits the kernel cannot show added.
unsafe fn poll_merged(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int {
    // SAFETY: poll's contract.
    let bits = extra(unsafe { pollfds(fds, nfds) });
    let timeout = if bits.is_some() { 0 } else { timeout };
    // SAFETY: libc's poll with the caller's array.
    let ready = unsafe { real!(poll: fn(*mut pollfd, nfds_t, c_int) -> c_int)(fds, nfds, timeout) };
    match bits {
        // SAFETY: as above; the kernel is done with the array.
        Some(bits) => merge(unsafe { pollfds(fds, nfds) }, &bits, ready),
        None => ready,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int {
    let _entered = inline::enter();
    let look = || {
        ready::settle();
        // SAFETY: poll's contract, for each look.
        unsafe { poll_merged(fds, nfds, 0) }
    };
    if let Some(r) = inline::before_wait(timeout != 0, look) {
        return r;
    }
    let _sleeping = (timeout != 0).then(ready::sleeping);
    // SAFETY: as above.
    unsafe { poll_merged(fds, nfds, timeout) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __poll_chk(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: c_int,
    _fdslen: libc::size_t,
) -> c_int {
    // SAFETY: poll's contract (the length check is the compiler's, for the caller).
    unsafe { poll(fds, nfds, timeout) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    let _entered = inline::enter();
    // SAFETY: a null timeout waits for ever; else the caller's valid timespec.
    let blocking =
        timeout.is_null() || unsafe { (*timeout).tv_sec != 0 || (*timeout).tv_nsec != 0 };
    let zero = timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let look = || {
        ready::settle();
        // SAFETY: ppoll's contract, for each look.
        unsafe { ppoll_merged(fds, nfds, &zero, sigmask) }
    };
    if let Some(r) = inline::before_wait(blocking, look) {
        return r;
    }
    let _sleeping = blocking.then(ready::sleeping);
    // SAFETY: as above.
    unsafe { ppoll_merged(fds, nfds, timeout, sigmask) }
}

/// ppoll(2) itself, with the bits the kernel cannot show added.
unsafe fn ppoll_merged(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    // SAFETY: ppoll's contract.
    let bits = extra(unsafe { pollfds(fds, nfds) });
    let zero = timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let timeout = if bits.is_some() { &zero } else { timeout };
    // SAFETY: libc's ppoll with the caller's array and mask, and a valid timeout.
    let ready = unsafe {
        real!(ppoll: fn(*mut pollfd, nfds_t, *const timespec, *const sigset_t) -> c_int)(
            fds, nfds, timeout, sigmask,
        )
    };
    match bits {
        // SAFETY: as above.
        Some(bits) => merge(unsafe { pollfds(fds, nfds) }, &bits, ready),
        None => ready,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const timespec,
    sigmask: *const sigset_t,
    _fdslen: libc::size_t,
) -> c_int {
    // SAFETY: ppoll's contract.
    unsafe { ppoll(fds, nfds, timeout, sigmask) }
}

/// Stack sockets registered with an epoll instance: the event's `data` is all that
/// `epoll_wait` gives back, so it is kept with the fd and the events asked for.
#[derive(Default)]
pub struct Registry {
    by_data: HashMap<(c_int, u64), (c_int, u32)>,
    by_fd: HashMap<c_int, Vec<(c_int, u64)>>,
    /// Epoll sets that stack sockets were registered with: closing one drops its
    /// registrations (a new set may get its number).
    sets: std::collections::HashSet<c_int>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
/// Entries in the registry: `epoll_wait` skips the lock while there are none.
static REGISTERED: AtomicUsize = AtomicUsize::new(0);

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let _critical = signals::critical();
    let mut guard = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let registry = guard.get_or_insert_with(Registry::default);
    let out = f(registry);
    REGISTERED.store(registry.by_data.len(), Ordering::Release);
    out
}

impl Registry {
    fn remove(&mut self, epfd: c_int, fd: c_int) {
        if let Some(keys) = self.by_fd.get_mut(&fd) {
            keys.retain(|&(ep, data)| {
                if ep == epfd {
                    self.by_data.remove(&(ep, data));
                }
                ep != epfd
            });
        }
    }
}

/// The event data that marks the device's sockets in a program's epoll set.
const DEVICE: u64 = 0x7573_6572_7370_6163;

/// Epoll sets the device's sockets were added to (see `inline::watched_wait`).
static WATCHED: Mutex<Vec<c_int>> = Mutex::new(Vec::new());
static WATCHING: AtomicUsize = AtomicUsize::new(0);

/// Whether epoll set `epfd` holds the device's sockets `fds` (added now if not),
/// each with EPOLLEXCLUSIVE: of the threads waiting on several sets, a frame wakes
/// one.
fn watched(epfd: c_int, fds: &[c_int]) -> bool {
    let _critical = signals::critical();
    let mut sets = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
    if sets.contains(&epfd) {
        return true;
    }
    for &fd in fds {
        let add = |flags: u32| {
            let mut event = epoll_event {
                events: libc::EPOLLIN as u32 | flags,
                u64: DEVICE,
            };
            // SAFETY: libc's epoll_ctl with a valid event.
            unsafe {
                real!(epoll_ctl: fn(c_int, c_int, c_int, *mut epoll_event) -> c_int)(
                    epfd,
                    libc::EPOLL_CTL_ADD,
                    fd,
                    &mut event,
                )
            }
        };
        let added = add(libc::EPOLLEXCLUSIVE as u32) == 0
            || crate::table::last_errno() == libc::EEXIST
            || add(0) == 0;
        if !added {
            return false;
        }
    }
    sets.push(epfd);
    WATCHING.store(sets.len(), Ordering::Release);
    true
}

/// The registry's locks, taken before fork (see `fork`).
pub type Held = (
    std::sync::MutexGuard<'static, Option<Registry>>,
    std::sync::MutexGuard<'static, Vec<c_int>>,
);

pub fn hold() -> Held {
    (
        REGISTRY.lock().unwrap_or_else(|p| p.into_inner()),
        WATCHED.lock().unwrap_or_else(|p| p.into_inner()),
    )
}

/// Takes the device's events out of the `ready` events an epoll wait returned.
fn unwatched(events: *mut epoll_event, ready: c_int) -> c_int {
    if ready <= 0 || events.is_null() {
        return ready;
    }
    // SAFETY: the kernel filled `ready` entries of the caller's array.
    let got = unsafe { std::slice::from_raw_parts_mut(events, ready as usize) };
    let mut kept = 0;
    for i in 0..got.len() {
        if got[i].u64 != DEVICE {
            got[kept] = got[i];
            kept += 1;
        }
    }
    kept as c_int
}

/// The real epoll wait `wait(left)` (`None`: no timeout) until it has an answer for
/// the program: the device's events alone (a set a watched wait added them to, waited
/// on where this thread does not turn the loop) are none, and Linux returns 0 only at
/// the timeout, so it waits again for the time left.
fn wait_unwatched(
    events: *mut epoll_event,
    timeout: Option<Duration>,
    mut wait: impl FnMut(Option<Duration>) -> c_int,
) -> c_int {
    // A timeout past what an Instant holds (epoll_pwait2 with tv_sec i64::MAX): none.
    let timeout = timeout.filter(|&t| Instant::now().checked_add(t).is_some());
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut left = timeout;
    let mut device_only = 0u32;
    loop {
        let ready = wait(left);
        let kept = unwatched(events, ready);
        if kept != 0 || ready <= 0 || timeout == Some(Duration::ZERO) {
            return kept;
        }
        if let Some(deadline) = deadline {
            left = Some(deadline.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return 0;
            }
        }
        // Level-triggered: while the loop's owner has not taken the frames yet, a
        // short pause, not a spin.
        device_only += 1;
        if device_only > 1 {
            let pause = Duration::from_micros(200);
            std::thread::sleep(left.map_or(pause, |l| l.min(pause)));
        }
    }
}

/// [`wait_unwatched`] for epoll_wait's milliseconds (negative: no timeout).
fn wait_unwatched_ms(
    events: *mut epoll_event,
    timeout: c_int,
    wait: impl Fn(c_int) -> c_int,
) -> c_int {
    let timeout = u64::try_from(timeout).ok().map(Duration::from_millis);
    wait_unwatched(events, timeout, |left| {
        // Whole milliseconds, rounded up: never before the time.
        wait(left.map_or(-1, |l| {
            l.as_micros().div_ceil(1000).min(i32::MAX as u128) as c_int
        }))
    })
}

/// An epoll wait of the program's: on an inline stack the thread turns the loop,
/// and waits on the device's sockets itself if it can (else the background thread
/// takes the loop while it waits); `wait(ms)` is the real call.
fn epoll_inline(
    epfd: c_int,
    events: *mut epoll_event,
    maxevents: c_int,
    timeout: c_int,
    wait: impl Fn(c_int) -> c_int,
) -> c_int {
    ready::settle();
    let _collecting = ready::collecting(epfd);
    // The real wait (`real(ms)`, the device's events out), the ready list's sockets in.
    let answer = |ms: c_int, real: &dyn Fn(c_int) -> c_int| {
        let sleeping = (ms != 0).then(ready::sleeping);
        let got = real(ms);
        drop(sleeping);
        merge_epoll(epfd, events, merge_ready(epfd, events, maxevents, got))
    };
    let look = |ms| answer(ms, &|ms| wait_unwatched_ms(events, ms, &wait));
    let Some(stack) = inline::stack() else {
        return look(timeout);
    };
    let fds = stack.watch_fds();
    if !fds.is_empty() && timeout != 0 && watched(epfd, fds) {
        return inline::watched_wait(stack, timeout, |ms| {
            answer(ms, &|ms| unwatched(events, wait(ms)))
        });
    }
    inline::before_wait(timeout != 0, || look(0)).unwrap_or_else(|| look(timeout))
}

/// Adds the sockets the ready list holds for set `epfd` to the `ready` events an
/// epoll wait returned, as the kernel would have reported them had their eventfds
/// been set: the events asked for, one entry per registration (bits added to the
/// kernel's entry if it has one). Those without room in `maxevents` are signalled now,
/// for the next wait to report (see `ready`).
fn merge_ready(epfd: c_int, events: *mut epoll_event, maxevents: c_int, ready: c_int) -> c_int {
    if ready < 0 || events.is_null() || maxevents <= 0 || !ready::any() {
        return ready;
    }
    // SAFETY: the caller's array of `maxevents` entries (epoll_wait's contract); the
    // kernel filled the first `ready`.
    let all = unsafe { std::slice::from_raw_parts_mut(events, maxevents as usize) };
    let mut ready = ready as usize;
    let mut handed = 0;
    ready::seen(|fds| {
        for &fd in fds {
            let Some(sock) = lookup(fd) else {
                continue;
            };
            let Some(bits) = sock.listed_for(ready::sole(epfd, fd)) else {
                continue;
            };
            let asked = with_registry(|reg| {
                let keys = reg.by_fd.get(&fd)?;
                let &(_, data) = keys.iter().find(|(ep, _)| *ep == epfd)?;
                reg.by_data
                    .get(&(epfd, data))
                    .map(|&(_, asked)| (data, asked))
            });
            let Some((data, asked)) = asked else {
                continue;
            };
            let bits = bits & asked;
            if bits == 0 {
                continue;
            }
            if let Some(e) = all[..ready].iter_mut().find(|e| e.u64 == data) {
                e.events |= bits;
            } else if ready < all.len() {
                all[ready] = epoll_event {
                    events: bits,
                    u64: data,
                };
                ready += 1;
                handed += 1;
            } else {
                crate::table::settle(fd);
            }
        }
    });
    ready::handed(handed);
    ready as c_int
}

/// The fd is closed: its registrations are gone with it (the kernel's go with the last
/// fd of the file; a stack socket's eventfd is that file).
pub fn forget(fd: c_int) {
    if let Some(sock) = lookup(fd) {
        sock.set_sole(ready::NONE);
    }
    if WATCHING.load(Ordering::Acquire) > 0 {
        let _critical = signals::critical();
        let mut sets = WATCHED.lock().unwrap_or_else(|p| p.into_inner());
        sets.retain(|&s| s != fd);
        WATCHING.store(sets.len(), Ordering::Release);
    }
    if REGISTERED.load(Ordering::Acquire) == 0 {
        return;
    }
    let orphans = with_registry(|r| {
        for key in r.by_fd.remove(&fd).unwrap_or_default() {
            r.by_data.remove(&key);
        }
        if !r.sets.remove(&fd) {
            return Vec::new();
        }
        // An epoll set closed: the sockets registered with it are not in any set the
        // kernel keeps under that number (a set dup'd elsewhere loses only what this
        // library adds: hang-up bits and the ready list, never the kernel's events).
        let stale: Vec<(c_int, u64)> = r.by_data.keys().filter(|k| k.0 == fd).copied().collect();
        let mut orphans = Vec::new();
        for key in stale {
            if let Some((sock_fd, _)) = r.by_data.remove(&key) {
                if let Some(keys) = r.by_fd.get_mut(&sock_fd) {
                    keys.retain(|k| *k != key);
                }
                orphans.push(sock_fd);
            }
        }
        orphans
    });
    // The ready list serves a socket only for the set it names: none now.
    for sock_fd in orphans {
        if let Some(sock) = lookup(sock_fd) {
            sock.set_sole(ready::NONE);
            crate::table::settle(sock_fd);
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut epoll_event,
) -> c_int {
    let stack = lookup(fd);
    if stack.is_some() {
        // The kernel looks at the eventfd now: it must show what the socket is ready for.
        ready::settle();
    }
    // SAFETY: libc's epoll_ctl with the caller's arguments.
    let r = unsafe {
        real!(epoll_ctl: fn(c_int, c_int, c_int, *mut epoll_event) -> c_int)(epfd, op, fd, event)
    };
    if r == 0 && stack.is_none() && op == libc::EPOLL_CTL_ADD && ready::is_epoll(fd) {
        ready::nested();
    }
    if r != 0 || (stack.is_none() && REGISTERED.load(Ordering::Acquire) == 0) {
        return r;
    }
    if op != libc::EPOLL_CTL_DEL
        && let Some(sock) = lookup(fd)
    {
        sock.in_use(fd);
    }
    // SAFETY: for ADD and MOD the kernel just read `event`, so it is valid.
    let asked = (op != libc::EPOLL_CTL_DEL && !event.is_null())
        .then(|| unsafe { ((*event).events, (*event).u64) });
    let stack = lookup(fd).is_some();
    let sole = with_registry(|reg| {
        reg.remove(epfd, fd);
        if let (Some((events, data)), true) = (asked, stack) {
            reg.by_data.insert((epfd, data), (fd, events));
            reg.by_fd.entry(fd).or_default().push((epfd, data));
            reg.sets.insert(epfd);
        }
        // One registration, level-triggered: the ready list may serve it.
        match reg.by_fd.get(&fd).map(Vec::as_slice) {
            Some(&[(ep, data)]) => reg
                .by_data
                .get(&(ep, data))
                .filter(|(_, events)| ready::plain(*events))
                .map_or(ready::NONE, |_| ready::sole(ep, fd)),
            _ => ready::NONE,
        }
    });
    if let Some(sock) = lookup(fd) {
        sock.set_sole(sole);
    }
    r
}

/// Adds the stack sockets' conditions to the `ready` events `epoll_wait` returned.
fn merge_epoll(epfd: c_int, events: *mut epoll_event, ready: c_int) -> c_int {
    if ready <= 0 || events.is_null() || REGISTERED.load(Ordering::Acquire) == 0 {
        return ready;
    }
    if config::forked() {
        // As in `extra`.
        return ready;
    }
    // SAFETY: the kernel filled `ready` entries of the caller's array.
    let got = unsafe { std::slice::from_raw_parts_mut(events, ready as usize) };
    let sockets: Vec<(usize, c_int, u32)> = with_registry(|reg| {
        got.iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let data = e.u64;
                reg.by_data
                    .get(&(epfd, data))
                    .map(|&(fd, asked)| (i, fd, asked))
            })
            .collect()
    });
    for (i, fd, asked) in sockets {
        if let Some(sock) = lookup(fd) {
            let bits = poll_bits(sock.conditions(), (asked & libc::EPOLLRDHUP as u32) as i16);
            // poll(2)'s bits and epoll's are the same values.
            got[i].events |= bits as u16 as u32;
        }
    }
    ready
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    events: *mut epoll_event,
    maxevents: c_int,
    timeout: c_int,
) -> c_int {
    let _entered = inline::enter();
    let wait = |timeout| {
        // SAFETY: libc's epoll_wait with the caller's array.
        unsafe {
            real!(epoll_wait: fn(c_int, *mut epoll_event, c_int, c_int) -> c_int)(
                epfd, events, maxevents, timeout,
            )
        }
    };
    epoll_inline(epfd, events, maxevents, timeout, wait)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut epoll_event,
    maxevents: c_int,
    timeout: c_int,
    sigmask: *const sigset_t,
) -> c_int {
    let _entered = inline::enter();
    let wait = |timeout| {
        // SAFETY: libc's epoll_pwait with the caller's array and mask.
        unsafe {
            real!(epoll_pwait: fn(c_int, *mut epoll_event, c_int, c_int, *const sigset_t) -> c_int)(
                epfd, events, maxevents, timeout, sigmask,
            )
        }
    };
    epoll_inline(epfd, events, maxevents, timeout, wait)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    events: *mut epoll_event,
    maxevents: c_int,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    let _entered = inline::enter();
    ready::settle();
    let _collecting = ready::collecting(epfd);
    // SAFETY: a null timeout waits for ever; else the caller's timespec, valid to read.
    let asked = (!timeout.is_null()).then(|| unsafe { *timeout });
    let valid = asked.is_none_or(|t| t.tv_sec >= 0 && (0..1_000_000_000).contains(&t.tv_nsec));
    let raw = |left: Option<Duration>| {
        let spec = left.map(|l| timespec {
            tv_sec: l.as_secs() as libc::time_t,
            tv_nsec: l.subsec_nanos() as libc::c_long,
        });
        let at = match (valid, &spec) {
            (false, _) => timeout,
            (true, Some(spec)) => spec as *const timespec,
            (true, None) => std::ptr::null(),
        };
        // SAFETY: libc's epoll_pwait2 with the caller's array and mask, and a valid
        // timeout, none, or the caller's invalid one (the kernel's EINVAL).
        unsafe {
            real!(epoll_pwait2: fn(c_int, *mut epoll_event, c_int, *const timespec, *const sigset_t) -> c_int)(
                epfd, events, maxevents, at, sigmask,
            )
        }
    };
    let limit = asked
        .filter(|_| valid)
        .map(|t| Duration::new(t.tv_sec as u64, t.tv_nsec as u32));
    let wait = |left: Option<Duration>| {
        let sleeping = (left != Some(Duration::ZERO)).then(ready::sleeping);
        let got = wait_unwatched(events, left, &raw);
        drop(sleeping);
        merge_epoll(epfd, events, merge_ready(epfd, events, maxevents, got))
    };
    let blocking = limit != Some(Duration::ZERO);
    inline::before_wait(blocking, || wait(Some(Duration::ZERO))).unwrap_or_else(|| wait(limit))
}

/// The caller's fd sets, kept so that each zero-timeout look of an inline wait starts
/// from them (select(2) overwrites them with its answer): `nfds` bits of each, as the
/// kernel reads them, however many (a program may pass sets larger than glibc's 1024
/// bits); in place up to 1024, on the heap beyond.
struct FdSets {
    sets: [*mut u64; 3],
    words: usize,
    small: [[u64; SMALL_WORDS]; 3],
    large: Vec<u64>,
}

/// glibc's fd_set: 1024 bits.
const SMALL_WORDS: usize = 1024 / 64;

impl FdSets {
    /// # Safety
    /// Each pointer is null or a valid set of at least `nfds` bits (select's contract).
    unsafe fn keep(nfds: c_int, sets: [*mut libc::fd_set; 3]) -> FdSets {
        let words = fd_table_clamp(nfds.max(0) as usize).div_ceil(64);
        let mut kept = FdSets {
            sets: sets.map(|p| p.cast::<u64>()),
            words,
            small: [[0; SMALL_WORDS]; 3],
            large: if words > SMALL_WORDS {
                vec![0; 3 * words]
            } else {
                Vec::new()
            },
        };
        for i in 0..3 {
            let from = kept.sets[i];
            if !from.is_null() {
                // SAFETY: the caller's set holds `words` words (select's contract).
                let from = unsafe { std::slice::from_raw_parts(from, words) };
                kept.saved(i).copy_from_slice(from);
            }
        }
        kept
    }

    fn saved(&mut self, i: usize) -> &mut [u64] {
        match self.words > SMALL_WORDS {
            true => &mut self.large[i * self.words..(i + 1) * self.words],
            false => &mut self.small[i][..self.words],
        }
    }

    fn restore(&mut self) {
        for i in 0..3 {
            let to = self.sets[i];
            if !to.is_null() {
                let words = self.words;
                let saved = self.saved(i).as_ptr();
                // SAFETY: the caller's valid, writable set of `words` words; ours is
                // as long and apart from it.
                unsafe { std::ptr::copy_nonoverlapping(saved, to, words) };
            }
        }
    }
}

/// `nfds` as the kernel reads it (core_sys_select): at most the process's fd table
/// size (FDSize), which may be far less than the sets a program passes are sized
/// for (select(1 << 20) on a 1024-bit fd_set). Also at most RLIMIT_NOFILE, where no
/// fd can be open. The table only grows: its size is read from /proc again only when
/// `nfds` and the limit pass the size seen last.
fn fd_table_clamp(nfds: usize) -> usize {
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    let limit = nofile_limit().map_or(nfds, |l| nfds.min(l));
    let seen = SEEN.load(Ordering::Relaxed);
    if limit <= seen {
        return limit;
    }
    let size = fd_table_size().unwrap_or(SMALL_WORDS * 64);
    SEEN.fetch_max(size, Ordering::Relaxed);
    limit.min(size)
}

/// The soft RLIMIT_NOFILE.
fn nofile_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the valid struct given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    ok.then(|| usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

/// This process's fd table size now (FDSize in /proc/self/status).
fn fd_table_size() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    fd_size_of(&status)
}

/// FDSize in the text of a /proc status file.
fn fd_size_of(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))?
        .trim()
        .parse()
        .ok()
}

/// A wait of the select family on sets that may hold stack sockets: on an inline
/// stack, the loop's turns and spin first (see `inline::before_wait`), each look from
/// the caller's sets; `call(zero)` is the real call, with a zero timeout if `zero`.
fn select_inline(
    nfds: c_int,
    sets: [*mut libc::fd_set; 3],
    blocking: bool,
    call: impl Fn(bool) -> c_int,
) -> c_int {
    if inline::stack().is_some() {
        // SAFETY: each set is null or valid for `nfds` bits (select's contract).
        let mut kept = unsafe { FdSets::keep(nfds, sets) };
        let look = || {
            ready::settle();
            kept.restore();
            call(true)
        };
        if let Some(r) = inline::before_wait(blocking, look) {
            return r;
        }
        kept.restore();
    }
    ready::settle();
    let _sleeping = blocking.then(ready::sleeping);
    call(false)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn select(
    nfds: c_int,
    readfds: *mut libc::fd_set,
    writefds: *mut libc::fd_set,
    exceptfds: *mut libc::fd_set,
    timeout: *mut libc::timeval,
) -> c_int {
    let _entered = inline::enter();
    let real_select = real!(select: fn(c_int, *mut libc::fd_set, *mut libc::fd_set, *mut libc::fd_set, *mut libc::timeval) -> c_int);
    // SAFETY: a null timeout waits for ever; else the caller's valid timeval.
    let blocking =
        timeout.is_null() || unsafe { (*timeout).tv_sec != 0 || (*timeout).tv_usec != 0 };
    select_inline(nfds, [readfds, writefds, exceptfds], blocking, |zero| {
        let mut none = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        let timeout = if zero { &mut none } else { timeout };
        // SAFETY: libc's select with the caller's sets and timeout (or a zero one).
        unsafe { real_select(nfds, readfds, writefds, exceptfds, timeout) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    readfds: *mut libc::fd_set,
    writefds: *mut libc::fd_set,
    exceptfds: *mut libc::fd_set,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    let _entered = inline::enter();
    let real_pselect = real!(pselect: fn(c_int, *mut libc::fd_set, *mut libc::fd_set, *mut libc::fd_set, *const timespec, *const sigset_t) -> c_int);
    // SAFETY: a null timeout waits for ever; else the caller's valid timespec.
    let blocking =
        timeout.is_null() || unsafe { (*timeout).tv_sec != 0 || (*timeout).tv_nsec != 0 };
    let none = timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    select_inline(nfds, [readfds, writefds, exceptfds], blocking, |zero| {
        let timeout = if zero { &none } else { timeout };
        // SAFETY: libc's pselect with the caller's sets, timeout (or a zero one), mask.
        unsafe { real_pselect(nfds, readfds, writefds, exceptfds, timeout, sigmask) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_table_size_is_read_from_a_status_file_and_clamps_nfds() {
        assert_eq!(fd_size_of("Name:\tx\nFDSize:\t256\nGid:\t0\n"), Some(256));
        assert_eq!(fd_size_of("Name:\tx\n"), None);
        let size = fd_table_size().unwrap();
        assert!(fd_table_clamp(1 << 30) <= size);
        assert_eq!(fd_table_clamp(3), 3);
    }

    #[test]
    fn bits_follow_tcp_poll() {
        let none = Conditions::default();
        assert_eq!(poll_bits(none, libc::POLLIN | libc::POLLRDHUP), 0);
        let hung = Conditions {
            hangup: true,
            error: true,
            peer_closed: true,
        };
        // HUP and ERR are reported whether asked for or not; RDHUP only when asked.
        assert_eq!(poll_bits(hung, 0), libc::POLLHUP | libc::POLLERR);
        assert_eq!(
            poll_bits(hung, libc::POLLRDHUP),
            libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP
        );
        let fin = Conditions {
            peer_closed: true,
            ..none
        };
        assert_eq!(poll_bits(fin, libc::POLLIN), 0);
        assert_eq!(poll_bits(fin, libc::POLLRDHUP), libc::POLLRDHUP);
        assert_eq!(libc::EPOLLRDHUP, libc::POLLRDHUP as i32);
        assert_eq!(libc::EPOLLHUP, libc::POLLHUP as i32);
    }

    /// Sets larger than glibc's 1024 bits come back whole, as nfds says (select(2)
    /// reads nfds bits); bits past nfds are not the library's to touch.
    #[test]
    fn fd_sets_are_kept_for_every_fd_below_nfds() {
        // An fd table of 2048 fds at least, as a program with fd 1600 open has (nfds
        // is clamped to the table's size, as Linux).
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: get/setrlimit with a valid struct; dup2 and close take no pointers.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = limit.rlim_cur.max(2048).min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            assert_eq!(libc::dup2(2, 1700), 1700);
            libc::close(1700);
        }
        let mut read = [0u64; 32];
        let mut write = [0u64; 32];
        read[1500 / 64] = 1 << (1500 % 64);
        read[3] = 1;
        write[1600 / 64] = 1 << (1600 % 64);
        let sets = [read.as_mut_ptr(), write.as_mut_ptr(), std::ptr::null_mut()];
        // SAFETY: two sets of 2048 bits and a null one.
        let mut kept = unsafe { FdSets::keep(1601, sets.map(|p| p.cast::<libc::fd_set>())) };
        // SAFETY: the sets are ours and valid; as select(2) writes its answer.
        unsafe {
            std::ptr::write_bytes(sets[0], 0, 32);
            std::ptr::write_bytes(sets[1], 0, 32);
            *sets[1].add(31) = 7;
        }
        kept.restore();
        assert_eq!(read[1500 / 64], 1 << (1500 % 64));
        assert_eq!(read[3], 1);
        assert_eq!(write[1600 / 64], 1 << (1600 % 64));
        assert_eq!(write[31], 7, "past nfds: not restored");
        // glibc's size and smaller: in place.
        let mut small = [0u64; 16];
        small[15] = 1 << 63;
        let sets = [
            small.as_mut_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        ];
        // SAFETY: one set of 1024 bits.
        let mut kept = unsafe { FdSets::keep(1024, sets) };
        small[15] = 0;
        kept.restore();
        assert_eq!(small[15], 1 << 63);
    }

    #[test]
    fn merge_counts_entries_with_events() {
        let mut set = [
            pollfd {
                fd: 3,
                events: libc::POLLIN,
                revents: 0,
            },
            pollfd {
                fd: 4,
                events: libc::POLLIN,
                revents: libc::POLLIN,
            },
        ];
        assert_eq!(merge(&mut set, &[libc::POLLHUP, 0], 1), 2);
        assert_eq!(set[0].revents, libc::POLLHUP);
        assert_eq!(merge(&mut set, &[0, 0], -1), -1);
    }
}
