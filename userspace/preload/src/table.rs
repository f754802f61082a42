//! The stack's sockets of this process, by fd number, and what each call does to them.
//!
//! Each stack socket is backed by a kernel eventfd whose readiness the poll loop drives,
//! so its fd number is a real one: the kernel's own `poll`, `select` and `epoll` see it
//! beside pipes, timers and kernel sockets, and nothing about them needs intercepting.
//! The counter encodes what the socket is ready for: 0 writable only, 1 both, and
//! `u64::MAX - 1` readable only (the kernel reports an eventfd at that count readable
//! but not writable). A socket ready for neither shows as readable only (a stream: a
//! writer waiting for room must not spin) or writable only (a listener).
use crate::addr;
use crate::config::{self, say};
use crate::real::{self, real};
use crate::signals;
use libc::{c_int, c_void, socklen_t};
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use userspace::net::watch::{Readiness, Watcher};
use userspace::{TcpListener, TcpStream};

/// A call's failure: the errno the kernel would give.
pub type Errno = i32;
pub type Res<T> = Result<T, Errno>;

static SOCKETS: RwLock<BTreeMap<c_int, Arc<Sock>>> = RwLock::new(BTreeMap::new());
/// Another thread's first use of an inherited listener waits until it listens again.
static LISTENING_AGAIN: Mutex<()> = Mutex::new(());
/// Fds in `SOCKETS`: calls on other fds skip the lock while there are none.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// The stack socket behind `fd`, if it is one.
pub fn lookup(fd: c_int) -> Option<Arc<Sock>> {
    if COUNT.load(Ordering::Acquire) == 0 {
        return None;
    }
    let _critical = signals::critical();
    SOCKETS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&fd)
        .cloned()
}

/// A further fd of `sock` (dup): the ready list no longer serves it (see `ready`).
pub fn insert(fd: c_int, sock: Arc<Sock>) {
    sock.signal.shared.store(true, Ordering::Release);
    sock.signal
        .sole
        .store(crate::ready::NONE, Ordering::Release);
    insert_fresh(fd, sock);
}

fn insert_fresh(fd: c_int, sock: Arc<Sock>) {
    let _critical = signals::critical();
    let mut map = SOCKETS.write().unwrap_or_else(|p| p.into_inner());
    sock.fds.fetch_add(1, Ordering::AcqRel);
    match map.insert(fd, sock) {
        None => {
            COUNT.fetch_add(1, Ordering::Release);
        }
        Some(old) => {
            old.fds.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Forgets `fd` (closed, or a kernel socket now); the socket closes with its last fd.
pub fn remove(fd: c_int) -> Option<Arc<Sock>> {
    let _critical = signals::critical();
    let mut map = SOCKETS.write().unwrap_or_else(|p| p.into_inner());
    let gone = map.remove(&fd);
    if let Some(sock) = &gone {
        COUNT.fetch_sub(1, Ordering::Release);
        sock.fds.fetch_sub(1, Ordering::AcqRel);
    }
    gone
}

/// The socket of this process's connection (local, remote), if one is open.
pub fn find_connection(local: SocketAddr, remote: SocketAddr) -> Option<Arc<Sock>> {
    every_socket()
        .into_iter()
        .find(|s| s.connection() == Some((local, remote)))
}

/// The sockets open now (the table's lock is not held while they are looked at).
fn every_socket() -> Vec<Arc<Sock>> {
    SOCKETS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect()
}

/// This process's connections open now: (local, remote).
pub fn connections() -> Vec<(SocketAddr, SocketAddr)> {
    let mut all: Vec<_> = every_socket()
        .iter()
        .filter_map(|s| s.connection())
        .collect();
    all.sort();
    all.dedup();
    all
}

/// At exit: every socket still open closes as if its fds were closed.
pub fn close_all() {
    let all = {
        let _critical = signals::critical();
        std::mem::take(&mut *SOCKETS.write().unwrap_or_else(|p| p.into_inner()))
    };
    COUNT.store(0, Ordering::Release);
    drop(all);
}

/// The table's locks and every socket's, taken before fork (see `fork`): a lock
/// another thread held at fork would stay held in the child for ever.
pub struct Held {
    guards: Option<Guards>,
    socks: Vec<Arc<Sock>>,
}

/// [`Held`]'s guards.
struct Guards {
    _listening_again: MutexGuard<'static, ()>,
    states: Vec<MutexGuard<'static, State>>,
    _start: MutexGuard<'static, ()>,
    _stderr: std::io::StderrLock<'static>,
    _sockets: std::sync::RwLockWriteGuard<'static, BTreeMap<c_int, Arc<Sock>>>,
}

impl Drop for Held {
    /// The states' guards first (they borrow the sockets); then our clones of the
    /// sockets, while the table is still held, so a close() waiting for the table
    /// never sees one of them (it would count two owners and skip `closing`). A clone
    /// that was the last (its fds closed meanwhile) is dropped after every guard: its
    /// drop closes an eventfd, a call that takes the table.
    fn drop(&mut self) {
        let Some(mut guards) = self.guards.take() else {
            return;
        };
        guards.states.clear();
        let last: Vec<Sock> = std::mem::take(&mut self.socks)
            .into_iter()
            .filter_map(Arc::into_inner)
            .collect();
        drop(guards);
        drop(last);
    }
}

/// Takes the locks in the order the calls nest them: a listener listening again,
/// the sockets' states, the stack's start, stderr (whose writes look fd 2 up here),
/// the table. Sockets opened while it took the states are caught up on with another
/// round.
pub fn hold() -> Held {
    loop {
        let listening_again = LISTENING_AGAIN.lock().unwrap_or_else(|p| p.into_inner());
        let mut socks: Vec<Arc<Sock>> = SOCKETS
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        // A socket's duplicated fds share it: its lock is taken once.
        socks.sort_by_key(Arc::as_ptr);
        socks.dedup_by(|a, b| Arc::ptr_eq(a, b));
        let states = socks
            .iter()
            .map(|sock| {
                let guard = sock.state.lock().unwrap_or_else(|p| p.into_inner());
                // SAFETY: the guard borrows a socket that `Held::socks` keeps alive
                // until after the guard is dropped (`Held`'s drop).
                unsafe {
                    std::mem::transmute::<MutexGuard<'_, State>, MutexGuard<'static, State>>(guard)
                }
            })
            .collect();
        let start = config::hold_start();
        let stderr = std::io::stderr().lock();
        let sockets = SOCKETS.write().unwrap_or_else(|p| p.into_inner());
        if sockets
            .values()
            .all(|s| socks.iter().any(|k| Arc::ptr_eq(k, s)))
        {
            return Held {
                guards: Some(Guards {
                    _listening_again: listening_again,
                    states,
                    _start: start,
                    _stderr: stderr,
                    _sockets: sockets,
                }),
                socks,
            };
        }
    }
}

/// In a child forked after the stack started, through the switch: every inherited
/// stack socket gets an eventfd of its own at its fd number (the parent's poll loop
/// keeps writing the one they shared), and every inherited listener listens again on
/// the child's stack when the child first uses it (accept, poll, epoll_ctl), so the
/// child accepts on it as a forked worker of a kernel listener does; the switch then
/// spreads new connections over the children that listen (see docs/PRELOAD.md). A
/// child that never uses it (a fork-per-connection server's) leaves the parent its
/// new connections. A connection the parent opened stays with the parent: here it
/// fails with ENOTCONN.
/// `via` is this child's end of the pair to the parent, through which its
/// connections are taken over (see `moves`), if the fork made one.
pub fn adopt_after_fork(via: Option<c_int>) {
    userspace::net::switch::after_fork_in_child();
    let _critical = signals::critical();
    let inherited: Vec<(c_int, Arc<Sock>)> = SOCKETS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(fd, s)| (*fd, s.clone()))
        .collect();
    let mut connections = 0;
    let mut listeners = 0;
    for (fd, old) in inherited {
        let (kind, listener, nonblocking, options) = {
            let st = old.lock();
            let (kind, listener) = match &st.kind {
                Kind::Fresh { bound } => (Kind::Fresh { bound: *bound }, false),
                Kind::Listener(_) => (
                    Kind::Fresh {
                        bound: Some(st.bound_as.unwrap_or(old.local_addr_of(&st.kind))),
                    },
                    true,
                ),
                Kind::Stream(s) => match (via, s.local_addr(), s.peer_addr()) {
                    (Some(via), Ok(local), Ok(remote))
                        if s.connect_result().is_some_and(|r| r.is_ok()) =>
                    {
                        say!("fd {fd}: a connection of the parent's: taken over at its first use");
                        (Kind::Inherited { local, remote, via }, false)
                    }
                    _ => {
                        connections += 1;
                        (Kind::Fresh { bound: None }, false)
                    }
                },
                Kind::Inherited { local, remote, via } => (
                    Kind::Inherited {
                        local: *local,
                        remote: *remote,
                        via: *via,
                    },
                    false,
                ),
                Kind::Gone { local, .. } => (
                    Kind::Gone {
                        local: *local,
                        said: false,
                    },
                    false,
                ),
            };
            listeners += listener as usize;
            (kind, listener, st.nonblocking, st.options.clone())
        };
        let Ok(private) = real::eventfd() else {
            continue;
        };
        // SAFETY: fcntl F_GETFD takes no pointer.
        let fd_flags = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD, 0) } as c_int;
        let cloexec = if fd_flags >= 0 && fd_flags & libc::FD_CLOEXEC != 0 {
            libc::O_CLOEXEC
        } else {
            0
        };
        // SAFETY: both fds are open; dup3 puts the new eventfd at `fd` in one step.
        if unsafe {
            real!(dup3: fn(c_int, c_int, c_int) -> c_int)(private.as_raw_fd(), fd, cloexec)
        } < 0
        {
            continue;
        }
        let sock = Arc::new(Sock {
            family: old.family,
            signal: Arc::new(Signal::new(private)),
            state: Mutex::new(State {
                kind,
                nonblocking,
                options,
                bound_as: None,
                port_hold: None,
            }),
            listen_on_use: AtomicBool::new(listener),
            take_on_use: AtomicBool::new(false),
            fds: AtomicUsize::new(0),
        });
        if matches!(sock.lock().kind, Kind::Inherited { .. }) {
            sock.take_on_use.store(true, Ordering::Release);
            sock.signal.show(CALL_NOW, false, true);
        }
        sock.fds.fetch_add(1, Ordering::AcqRel);
        let replaced = SOCKETS
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fd, sock);
        // The parent's socket: its handles talk to the parent's poll loop, so it is
        // never dropped here; its own copy of the shared eventfd is closed.
        if let Some(old) = replaced {
            // SAFETY: the parent's private eventfd copy in this process; nothing
            // else uses it after this.
            unsafe { real!(close: fn(c_int) -> c_int)(old.signal.fd.as_raw_fd()) };
            std::mem::forget(old);
        }
    }
    if listeners > 0 {
        // The child's stack starts now, while the child is still what it was at fork
        // (a server's worker may drop its privileges before it first uses the port).
        // One that only inherited connections starts it when it takes one over (a
        // child that never uses them, redis's BGSAVE, never does).
        let _ = config::stack();
    }
    if connections > 0 {
        eprintln!(
            "userspace-preload: process {} inherited {connections} connection(s) of its parent on the stack: they stay with the parent (here: ENOTCONN)",
            std::process::id()
        );
    }
}

/// The errno for an error of the library's: the kernel's for what the stack reported
/// (`userspace::net::errno`), EIO for anything it has no errno for.
pub fn errno_of(e: &io::Error) -> Errno {
    userspace::net::errno::errno(e).unwrap_or(libc::EIO)
}

/// The eventfd a socket's readiness shows on, and the count last put there.
struct Signal {
    fd: OwnedFd,
    /// The count the eventfd holds.
    last: AtomicU64,
    /// The count the socket's readiness asks for: more than `last` shows while the
    /// socket is on the ready list (see `ready`).
    want: AtomicU64,
    /// The one epoll registration the ready list may serve (`ready::sole`), or
    /// `ready::NONE`.
    sole: AtomicU64,
    /// The socket has several fds (dup): the ready list never serves it.
    shared: AtomicBool,
}

const READABLE_ONLY: u64 = u64::MAX - 1;

/// What a socket shows whose next call answers at once (its connection left), or
/// takes its connection over (inherited): readable and writable, so that a wait the
/// library does not see (`select`) ends too.
const CALL_NOW: Readiness = Readiness {
    readable: true,
    writable: true,
    hangup: true,
    error: false,
    connecting: false,
};

impl Signal {
    fn new(fd: OwnedFd) -> Signal {
        Signal {
            fd,
            last: AtomicU64::new(0),
            want: AtomicU64::new(0),
            sole: AtomicU64::new(crate::ready::NONE),
            shared: AtomicBool::new(false),
        }
    }

    fn show(&self, r: Readiness, listener: bool, news: bool) {
        let count = count_for(r, listener);
        // Every call comes with the socket's state locked, so `last` is the count.
        let old = self.last.load(Ordering::Relaxed);
        self.want.store(count, Ordering::Relaxed);
        // The poll loop's news for the epoll wait that turned it: in its answer.
        if news && crate::ready::defer(self.sole.load(Ordering::Acquire), old != count) {
            return;
        }
        self.last.store(count, Ordering::Relaxed);
        // The poll loop's news always wakes (edge-triggered epoll needs each one); a
        // call's own refresh only when the readiness changed.
        if old != count || news {
            real::set_counter(&self.fd, old, count);
        }
    }
}

/// The epoll events the kernel reports for an eventfd at `count` (eventfd_poll).
fn epoll_bits(count: u64) -> u32 {
    let mut bits = 0;
    if count > 0 {
        bits |= libc::EPOLLIN as u32;
    }
    if count < READABLE_ONLY {
        bits |= libc::EPOLLOUT as u32;
    }
    bits
}

/// The socket at `fd` (if any) shows on its eventfd what it is ready for (the ready
/// list lets go of it).
pub fn settle(fd: c_int) {
    if let Some(sock) = lookup(fd)
        && sock.signal.want.load(Ordering::Relaxed) != sock.signal.last.load(Ordering::Relaxed)
    {
        sock.refresh(&sock.lock().kind);
    }
}

/// The eventfd count that shows `r` to the kernel's poll.
fn count_for(r: Readiness, listener: bool) -> u64 {
    match (r.readable, r.writable) {
        (true, true) => 1,
        (true, false) => READABLE_ONLY,
        (false, true) => 0,
        (false, false) if listener => 0,
        (false, false) => READABLE_ONLY,
    }
}

/// See [`Sock::conditions`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Conditions {
    pub hangup: bool,
    pub error: bool,
    pub peer_closed: bool,
}

/// What a socket is on the stack.
enum Kind {
    /// Made, not yet connected or listening (it may still go to the kernel).
    Fresh {
        bound: Option<SocketAddr>,
    },
    Listener(Arc<TcpListener>),
    Stream(Arc<TcpStream>),
    /// A connection the parent had at fork, not taken over yet: its addresses, and
    /// the connection to the parent to ask for it through (see `moves`).
    Inherited {
        local: SocketAddr,
        remote: SocketAddr,
        via: c_int,
    },
    /// A connection another process took over (or one that could not be): ENOTCONN,
    /// said once.
    Gone {
        local: SocketAddr,
        said: bool,
    },
}

/// A socket's state, locked: no signal handler runs on this thread meanwhile (one
/// that closed the socket would wait for ever for the lock its thread holds).
struct Locked<'a> {
    state: MutexGuard<'a, State>,
    /// Dropped after the lock.
    _critical: signals::Critical,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

struct State {
    kind: Kind,
    /// O_NONBLOCK, shared by the fds of one socket as by a kernel file description.
    nonblocking: bool,
    /// Options set, in order: replayed on a kernel socket, answered by getsockopt.
    options: Vec<(c_int, c_int, Vec<u8>)>,
    /// A listener's address as bound, when the stack listens on another one (`[::]`
    /// with IPV6_V6ONLY: the stack's IPv6 address); getsockname shows this one.
    bound_as: Option<SocketAddr>,
    /// The port a bind to port 0 picked, held until the socket listens on it.
    port_hold: Option<userspace::net::PortHold>,
}

/// A TCP socket of the program's on the stack (or not yet decided).
pub struct Sock {
    /// AF_INET or AF_INET6: what its addresses look like at the C boundary.
    family: c_int,
    signal: Arc<Signal>,
    state: Mutex<State>,
    /// A listener inherited across fork: it listens again on this process's stack at
    /// its first use ([`Sock::in_use`]).
    listen_on_use: AtomicBool,
    /// A connection inherited across fork: taken over at its first use
    /// ([`Sock::take_over`]); looked at without the lock on every call.
    take_on_use: AtomicBool,
    /// The fds of this process that name it (`dup`s), counted in the table: its
    /// close is the last one's, whatever clones other threads hold for a moment.
    fds: AtomicUsize,
}

/// Where a connect or bind goes.
pub enum Route {
    Done,
    /// The kernel takes it: the fd is a kernel socket now; repeat the call on it.
    Kernel,
}

/// RFC 4291 2.5.6: fe80::/10. The stack has no link-local address of its own.
fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

impl Sock {
    /// A new socket and its fd (`O_NONBLOCK`, `FD_CLOEXEC` as asked).
    pub fn open(family: c_int, nonblocking: bool, cloexec: bool) -> Res<(c_int, Arc<Sock>)> {
        Self::open_as(family, Kind::Fresh { bound: None }, nonblocking, cloexec)
    }

    fn open_as(
        family: c_int,
        kind: Kind,
        nonblocking: bool,
        cloexec: bool,
    ) -> Res<(c_int, Arc<Sock>)> {
        let private = real::eventfd().map_err(|e| errno_of(&e))?;
        let cmd = if cloexec {
            libc::F_DUPFD_CLOEXEC
        } else {
            libc::F_DUPFD
        };
        // SAFETY: fcntl F_DUPFD on an fd we own, no pointers.
        let fd = unsafe { libc::syscall(libc::SYS_fcntl, private.as_raw_fd(), cmd, 0) } as c_int;
        if fd < 0 {
            return Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EMFILE));
        }
        let sock = Arc::new(Sock {
            family,
            signal: Arc::new(Signal::new(private)),
            state: Mutex::new(State {
                kind,
                nonblocking,
                options: Vec::new(),
                bound_as: None,
                port_hold: None,
            }),
            listen_on_use: AtomicBool::new(false),
            take_on_use: AtomicBool::new(false),
            fds: AtomicUsize::new(0),
        });
        sock.attach();
        insert_fresh(fd, sock.clone());
        Ok((fd, sock))
    }

    /// AF_INET or AF_INET6.
    pub fn family(&self) -> c_int {
        self.family
    }

    /// IPV6_V6ONLY set on an AF_INET6 socket.
    fn v6only(&self, st: &State) -> bool {
        self.family == libc::AF_INET6
            && int_option(&st.options, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
                .is_some_and(|v| v != 0)
    }

    /// The socket's state, locked in a critical section (see `signals::critical`).
    fn lock(&self) -> Locked<'_> {
        let critical = signals::critical();
        Locked {
            state: self.state.lock().unwrap_or_else(|p| p.into_inner()),
            _critical: critical,
        }
    }

    /// Has the poll loop drive the eventfd from now on.
    fn attach(&self) {
        let st = self.lock();
        let signal = self.signal.clone();
        match &st.kind {
            Kind::Fresh { .. } | Kind::Inherited { .. } | Kind::Gone { .. } => {}
            Kind::Stream(s) => {
                s.set_nonblocking(st.nonblocking).ok();
                let w: Watcher = Arc::new(move |r| signal.show(r, false, true));
                s.watch(Some(w));
            }
            Kind::Listener(l) => {
                l.set_nonblocking(st.nonblocking).ok();
                let w: Watcher = Arc::new(move |r| signal.show(r, true, true));
                l.watch(Some(w));
            }
        }
    }

    /// Brings the eventfd up to date after a call changed the socket.
    fn refresh(&self, kind: &Kind) {
        match kind {
            Kind::Fresh { .. } | Kind::Inherited { .. } | Kind::Gone { .. } => {}
            Kind::Stream(s) => s.with_readiness(|r| self.signal.show(r, false, false)),
            Kind::Listener(l) => l.with_readiness(|r| self.signal.show(r, true, false)),
        }
    }

    /// The socket's one epoll registration the ready list may serve from now on
    /// (`ready::NONE`: none).
    pub fn set_sole(&self, sole: u64) {
        let sole = if self.signal.shared.load(Ordering::Acquire) {
            crate::ready::NONE
        } else {
            sole
        };
        self.signal.sole.store(sole, Ordering::Release);
    }

    /// On the ready list for registration `sole`: the epoll events its eventfd would
    /// show, not shown yet (`None`: nothing the kernel does not show already).
    pub fn listed_for(&self, sole: u64) -> Option<u32> {
        let signal = &self.signal;
        if signal.sole.load(Ordering::Acquire) != sole {
            return None;
        }
        let want = signal.want.load(Ordering::Relaxed);
        (want != signal.last.load(Ordering::Relaxed)).then(|| epoll_bits(want))
    }

    /// What the kernel's `tcp_poll` reports beyond readable and writable: hang-up (both
    /// ways shut, or closed: also a socket never connected), an error waiting, and the
    /// peer's FIN (`POLLRDHUP`).
    pub fn conditions(&self) -> Conditions {
        match &self.lock().kind {
            Kind::Inherited { .. } => Conditions::default(),
            Kind::Fresh { .. } | Kind::Gone { .. } => Conditions {
                hangup: true,
                ..Conditions::default()
            },
            Kind::Listener(l) => l.with_readiness(|r| Conditions {
                hangup: r.hangup,
                ..Conditions::default()
            }),
            Kind::Stream(s) => {
                let r = s.with_readiness(|r| r);
                Conditions {
                    hangup: r.hangup,
                    error: r.error,
                    peer_closed: !r.connecting && s.peer_closed(),
                }
            }
        }
    }

    fn stream(&self) -> Res<Arc<TcpStream>> {
        self.take_over();
        let mut st = self.lock();
        match &mut st.kind {
            Kind::Stream(s) => Ok(s.clone()),
            Kind::Gone { local, said } => {
                if !std::mem::replace(said, true) {
                    say!(
                        "the connection on {local}: another process took it over (a child forked with it): ENOTCONN here"
                    );
                }
                Err(libc::ENOTCONN)
            }
            Kind::Listener(_) | Kind::Fresh { .. } | Kind::Inherited { .. } => Err(libc::ENOTCONN),
        }
    }

    /// A connection of the parent's, used here for the first time: the parent gives
    /// it (`moves::take`), this process's stack takes it in and the switch steers it
    /// here. If it cannot be, the socket is not connected here (one line says why).
    fn take_over(&self) {
        if !self.take_on_use.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.lock();
        let Kind::Inherited { local, remote, via } = st.kind else {
            return;
        };
        self.take_on_use.store(false, Ordering::Release);
        let taken = crate::handover::take(via, local, remote).and_then(|bytes| {
            let stack = config::stack().map_err(str::to_string)?;
            TcpStream::import(stack, &bytes).map_err(|e| format!("taking it in: {e}"))
        });
        match taken {
            Ok(stream) => {
                apply_options(&stream, &st.options);
                st.kind = Kind::Stream(Arc::new(stream));
                drop(st);
                say!("the connection {local} <- {remote}: taken over from the parent");
                self.attach();
                self.refresh(&self.lock().kind);
            }
            Err(why) => {
                st.kind = Kind::Gone { local, said: true };
                eprintln!(
                    "userspace-preload: process {}: the connection {local} <- {remote} of its parent could not be taken over ({why}): ENOTCONN",
                    std::process::id()
                );
                self.signal.show(CALL_NOW, false, true);
            }
        }
    }

    /// This socket's connection, if it is one here: (local, remote).
    pub fn connection(&self) -> Option<(SocketAddr, SocketAddr)> {
        match &self.lock().kind {
            Kind::Stream(s) if s.connect_result().is_some_and(|r| r.is_ok()) => {
                Some((s.local_addr().ok()?, s.peer_addr().ok()?))
            }
            _ => None,
        }
    }

    /// Gives the connection away to a child that asked for it (`moves`): the bytes
    /// for its stack. From now on the socket is not connected here.
    pub fn give_away(&self) -> Result<Vec<u8>, String> {
        let mut st = self.lock();
        let Kind::Stream(s) = &st.kind else {
            return Err("not a connection here".to_string());
        };
        let s = s.clone();
        let local = s.local_addr().map_err(|e| e.to_string())?;
        let bytes = s.export().map_err(|e| e.to_string())?;
        s.watch(None);
        st.kind = Kind::Gone { local, said: false };
        // A wait on it ends, and the call fails with ENOTCONN.
        self.signal.show(CALL_NOW, false, true);
        Ok(bytes)
    }

    pub fn nonblocking(&self) -> bool {
        self.lock().nonblocking
    }

    pub fn set_nonblocking(&self, on: bool) {
        let mut st = self.lock();
        st.nonblocking = on;
        match &st.kind {
            Kind::Fresh { .. } | Kind::Inherited { .. } | Kind::Gone { .. } => {}
            Kind::Stream(s) => drop(s.set_nonblocking(on)),
            Kind::Listener(l) => drop(l.set_nonblocking(on)),
        }
    }

    /// The fd is a kernel TCP socket from now on, with the options set so far.
    fn to_kernel(&self, fd: c_int, st: &State) -> Res<()> {
        let ty = libc::SOCK_STREAM
            | if st.nonblocking {
                libc::SOCK_NONBLOCK
            } else {
                0
            };
        // SAFETY: socket takes no pointers.
        let new = unsafe { real!(socket: fn(c_int, c_int, c_int) -> c_int)(self.family, ty, 0) };
        if new < 0 {
            return Err(last_errno());
        }
        for (level, name, value) in &st.options {
            // SAFETY: `value` is a live buffer of its own length.
            unsafe {
                real!(setsockopt: fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int)(
                    new,
                    *level,
                    *name,
                    value.as_ptr().cast(),
                    value.len() as socklen_t,
                )
            };
        }
        // SAFETY: fcntl F_GETFD takes no pointer.
        let fd_flags = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD, 0) } as c_int;
        let cloexec = if fd_flags >= 0 && fd_flags & libc::FD_CLOEXEC != 0 {
            libc::O_CLOEXEC
        } else {
            0
        };
        remove(fd);
        // SAFETY: both fds are open; dup3 puts the kernel socket at `fd` in one step.
        let moved = unsafe { real!(dup3: fn(c_int, c_int, c_int) -> c_int)(new, fd, cloexec) };
        let failed = (moved < 0).then(last_errno);
        // SAFETY: `new` is ours and no longer needed (the socket lives on at `fd`).
        unsafe { real!(close: fn(c_int) -> c_int)(new) };
        failed.map_or(Ok(()), Err)
    }

    /// A free port for a bind to port 0 (the kernel's pick, held in the kernel), or
    /// the kernel's bind errno (EADDRINUSE when none is free).
    fn free_port(fd: c_int) -> Res<userspace::net::PortHold> {
        Self::stack_or_enetdown()?.hold_free_port().map_err(|e| {
            say!("fd {fd}: no free port: {e}");
            errno_of(&e)
        })
    }

    fn stack_or_enetdown() -> Res<&'static userspace::Stack> {
        config::stack().map_err(|_| libc::ENETDOWN)
    }

    pub fn connect(&self, fd: c_int, to: SocketAddr) -> Res<Route> {
        let mut st = self.lock();
        match &st.kind {
            Kind::Stream(s) => {
                return match s.connect_result() {
                    None => Err(libc::EALREADY),
                    Some(Ok(())) => Err(libc::EISCONN),
                    Some(Err(e)) => Err(errno_of(&e)),
                };
            }
            Kind::Listener(_) | Kind::Inherited { .. } | Kind::Gone { .. } => {
                return Err(libc::EISCONN);
            }
            Kind::Fresh { .. } => {}
        }
        // An AF_INET6 socket reaches a V4-mapped address over IPv4, as Linux; not
        // with IPV6_V6ONLY (tcp_v6_connect: ENETUNREACH).
        let to = addr::unmapped(to);
        if to.is_ipv4() && self.v6only(&st) {
            return Err(libc::ENETUNREACH);
        }
        let why_kernel = match to.ip() {
            ip if ip.is_loopback() || ip.is_unspecified() => Some("loopback"),
            IpAddr::V6(ip) if is_link_local(ip) => {
                Some("link-local: the stack has no link-local address")
            }
            ip => {
                let stack = Self::stack_or_enetdown()?;
                match ip {
                    IpAddr::V4(ip) => (stack.ip() == ip)
                        .then_some("the stack's own address (the kernel answers it)"),
                    IpAddr::V6(ip) => match stack.ipv6() {
                        None => Some("the stack has no IPv6 address"),
                        Some(own) => {
                            (own == ip).then_some("the stack's own address (the kernel answers it)")
                        }
                    },
                }
            }
        };
        if let Some(why) = why_kernel {
            say!("fd {fd}: connect to {to}: kernel ({why})");
            self.to_kernel(fd, &st)?;
            return Ok(Route::Kernel);
        }
        let stack = Self::stack_or_enetdown()?;
        say!("fd {fd}: connect to {to}: stack on {}", stack.interface());
        // From the port bound, if any, as Linux (a bind to port 0's stays held for
        // the connection); else from one of the stack's own.
        let stream = Arc::new(match st.kind {
            Kind::Fresh {
                bound: Some(at), ..
            } if at.port() != 0 => TcpStream::connect_nonblocking_from(stack, at.port(), to),
            _ => TcpStream::connect_nonblocking(stack, to),
        });
        apply_options(&stream, &st.options);
        st.kind = Kind::Stream(stream.clone());
        let nonblocking = st.nonblocking;
        drop(st);
        self.attach();
        // The SYN leaves now.
        crate::inline::turn();
        if nonblocking {
            return Err(libc::EINPROGRESS);
        }
        crate::inline::spin_until(|| stream.connect_result().is_some());
        let result = stream.wait_connected();
        self.refresh(&self.lock().kind);
        result.map(|()| Route::Done).map_err(|e| errno_of(&e))
    }

    pub fn bind(&self, fd: c_int, at: SocketAddr) -> Res<Route> {
        let mut st = self.lock();
        let v6only = self.v6only(&st);
        let Kind::Fresh { bound } = &mut st.kind else {
            return Err(libc::EINVAL);
        };
        if bound.is_some() {
            return Err(libc::EINVAL);
        }
        // A V4-mapped address binds the IPv4 one (IPv4 only); with IPV6_V6ONLY it is
        // EINVAL (inet6_bind).
        let at = addr::unmapped(at);
        if at.is_ipv4() && v6only {
            return Err(libc::EINVAL);
        }
        let why_kernel = match at.ip() {
            ip if ip.is_loopback() => Some("loopback"),
            IpAddr::V6(ip) if is_link_local(ip) => {
                Some("link-local: the stack has no link-local address")
            }
            // `[::]` with IPV6_V6ONLY: the stack listens on its IPv6 address (it has one).
            IpAddr::V6(ip) if ip.is_unspecified() && v6only => Self::stack_or_enetdown()?
                .ipv6()
                .is_none()
                .then_some("IPV6_V6ONLY, and the stack has no IPv6 address"),
            ip if ip.is_unspecified() => None,
            ip => {
                let stack = Self::stack_or_enetdown()?;
                let own = match ip {
                    IpAddr::V4(ip) => stack.ip() == ip,
                    IpAddr::V6(ip) => stack.ipv6() == Some(ip),
                };
                (!own).then_some("not the stack's address")
            }
        };
        if let Some(why) = why_kernel {
            say!("fd {fd}: bind {at}: kernel ({why})");
            self.to_kernel(fd, &st)?;
            return Ok(Route::Kernel);
        }
        let mut at = at;
        let hold = match at.port() {
            // As the kernel (inet_csk_get_port): port 0 picks a free port now, so
            // getsockname shows it before listen.
            0 => {
                let hold = Self::free_port(fd)?;
                at.set_port(hold.port());
                Some(hold)
            }
            _ => None,
        };
        say!("fd {fd}: bind {at}: stack");
        *bound = Some(at);
        st.port_hold = hold;
        Ok(Route::Done)
    }

    pub fn listen(&self, fd: c_int, backlog: c_int) -> Res<()> {
        let mut st = self.lock();
        let at = match &st.kind {
            Kind::Listener(_) => return Ok(()),
            Kind::Stream(_) | Kind::Inherited { .. } | Kind::Gone { .. } => {
                return Err(libc::EINVAL);
            }
            Kind::Fresh { bound: Some(at) } => *at,
            // Never bound: as the kernel's inet_autobind, the wildcard address and a
            // free port.
            Kind::Fresh { bound: None } => {
                let hold = Self::free_port(fd)?;
                let at = SocketAddr::new(addr::unspecified(self.family).ip(), hold.port());
                say!("fd {fd}: listen without bind: {at}");
                st.port_hold = Some(hold);
                at
            }
        };
        let stack = Self::stack_or_enetdown()?;
        // The library's `[::]` takes both families; IPV6_V6ONLY's takes IPv6 only,
        // which is the stack's one IPv6 address (checked at bind).
        let asked = at;
        let at = match (at.ip(), stack.ipv6()) {
            (IpAddr::V6(ip), Some(own)) if ip.is_unspecified() && self.v6only(&st) => {
                say!(
                    "fd {fd}: {at} with IPV6_V6ONLY: the stack listens on [{own}]:{} (IPv6 only)",
                    at.port()
                );
                SocketAddr::new(IpAddr::V6(own), at.port())
            }
            _ => at,
        };
        // As the kernel, at most somaxconn (4096) and at least 1.
        let backlog = backlog.clamp(1, 4096) as usize;
        // The library waits for the loop to listen: the background thread's turn.
        if let Some(inline) = crate::inline::stack() {
            inline.park();
        }
        let listener = TcpListener::bind_with_backlog(stack, at, backlog).map_err(|e| {
            say!("fd {fd}: listen on {at}: {e}");
            errno_of(&e)
        })?;
        say!("fd {fd}: listening on {asked} on the stack");
        // The listener holds the port now.
        st.port_hold = None;
        st.bound_as = (asked != at).then_some(asked);
        st.kind = Kind::Listener(Arc::new(listener));
        drop(st);
        self.attach();
        Ok(())
    }

    /// The process uses `fd` (accept, poll, epoll_ctl): a listener it inherited across
    /// fork listens again here now, on the same port (shared through the switch).
    pub fn in_use(&self, fd: c_int) {
        self.take_over();
        if !self.listen_on_use.load(Ordering::Acquire) {
            return;
        }
        let _critical = signals::critical();
        let _one = LISTENING_AGAIN.lock().unwrap_or_else(|p| p.into_inner());
        if !self.listen_on_use.load(Ordering::Acquire) {
            return;
        }
        say!("fd {fd}: a listener of the parent's, used here: listening again");
        if let Err(errno) = self.listen(fd, 4096) {
            eprintln!(
                "userspace-preload: process {}: listening again on fd {fd} after fork failed (errno {errno})",
                std::process::id()
            );
        }
        self.listen_on_use.store(false, Ordering::Release);
    }

    /// The next connection: its new fd and peer.
    pub fn accept(&self, fd: c_int, flags: c_int) -> Res<(c_int, SocketAddr)> {
        self.in_use(fd);
        let listener = match &self.lock().kind {
            Kind::Listener(l) => l.clone(),
            _ => return Err(libc::EINVAL),
        };
        if !listener.with_readiness(|r| r.readable) {
            if self.nonblocking() {
                crate::inline::turn();
            } else {
                crate::inline::spin_until(|| listener.with_readiness(|r| r.readable));
            }
        }
        let accepted = listener.accept();
        self.refresh(&self.lock().kind);
        let (stream, peer) = accepted.map_err(|e| errno_of(&e))?;
        if peer.is_ipv6() && self.family == libc::AF_INET {
            // The library's listener was bound to an IPv4 address: never.
            return Err(libc::EAFNOSUPPORT);
        }
        let options = self.lock().options.clone();
        apply_options(&stream, &options);
        let (new, sock) = Self::open_as(
            self.family,
            Kind::Stream(Arc::new(stream)),
            flags & libc::SOCK_NONBLOCK != 0,
            flags & libc::SOCK_CLOEXEC != 0,
        )?;
        sock.lock().options = options;
        say!(
            "fd {fd}: accepted {} on the stack as fd {new}",
            addr::shown(self.family, peer)
        );
        Ok((new, peer))
    }

    /// A read: `peek` leaves the bytes, `dont_wait` never blocks, `wait_all` fills `buf`.
    pub fn recv(&self, buf: &mut [u8], flags: c_int) -> Res<usize> {
        let stream = self.stream()?;
        let dont_wait = flags & libc::MSG_DONTWAIT != 0 || self.nonblocking();
        // Nothing to read yet: the loop may hold it (inline), or gets the turn it needs.
        if !stream.with_readiness(|r| r.readable) {
            if dont_wait {
                crate::inline::turn();
            } else {
                crate::inline::spin_until(|| stream.with_readiness(|r| r.readable));
            }
        }
        let result = if flags & libc::MSG_PEEK != 0 {
            loop {
                match stream.peek(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && !dont_wait => {
                        wait_readable(&stream)
                    }
                    r => break r,
                }
            }
        } else if dont_wait && !stream.with_readiness(|r| r.readable) {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            let mut done = 0;
            loop {
                // A blocking read lets handlers run in its sleep only (`set_wait_hooks`).
                match std::io::Read::read(&mut &*stream, &mut buf[done..]) {
                    Ok(n) if n > 0 && flags & libc::MSG_WAITALL != 0 && done + n < buf.len() => {
                        done += n
                    }
                    Ok(n) => break Ok(done + n),
                    Err(_) if done > 0 => break Ok(done),
                    Err(e) => break Err(e),
                }
            }
        };
        self.refresh(&Kind::Stream(stream));
        result.map_err(|e| errno_of(&e))
    }

    /// A write: all of `buf` unless non-blocking (then what fits) or an error came.
    pub fn send(&self, buf: &[u8], flags: c_int) -> Res<usize> {
        let stream = self.stream()?;
        let dont_wait = flags & libc::MSG_DONTWAIT != 0 || self.nonblocking();
        let mut done = 0;
        let result = loop {
            if !stream.with_readiness(|r| r.writable) {
                // The loop takes what was written, making room (inline).
                match dont_wait {
                    true => crate::inline::turn(),
                    false => crate::inline::spin_until(|| stream.with_readiness(|r| r.writable)),
                };
            }
            if dont_wait && !stream.with_readiness(|r| r.writable) {
                break if done > 0 {
                    Ok(done)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            match std::io::Write::write(&mut &*stream, &buf[done..]) {
                Ok(n) => {
                    done += n;
                    if done == buf.len() || n == 0 {
                        break Ok(done);
                    }
                }
                Err(_) if done > 0 => break Ok(done),
                Err(e) => break Err(e),
            }
        };
        crate::inline::flush();
        self.refresh(&Kind::Stream(stream));
        result.map_err(|e| errno_of(&e))
    }

    pub fn shutdown(&self, how: c_int) -> Res<()> {
        let stream = self.stream()?;
        let how = match how {
            libc::SHUT_RD => Shutdown::Read,
            libc::SHUT_WR => Shutdown::Write,
            libc::SHUT_RDWR => Shutdown::Both,
            _ => return Err(libc::EINVAL),
        };
        stream.shutdown(how).map_err(|e| errno_of(&e))?;
        crate::inline::turn();
        self.refresh(&Kind::Stream(stream));
        Ok(())
    }

    pub fn local_addr(&self) -> SocketAddr {
        let st = self.lock();
        st.bound_as.unwrap_or_else(|| self.local_addr_of(&st.kind))
    }

    fn local_addr_of(&self, kind: &Kind) -> SocketAddr {
        let none = addr::unspecified(self.family);
        match kind {
            Kind::Fresh { bound } => bound.unwrap_or(none),
            Kind::Listener(l) => l.local_addr().unwrap_or(none),
            Kind::Stream(s) => s.local_addr().unwrap_or(none),
            Kind::Inherited { local, .. } | Kind::Gone { local, .. } => *local,
        }
    }

    pub fn peer_addr(&self) -> Res<SocketAddr> {
        self.take_over();
        match &self.lock().kind {
            Kind::Stream(s) if s.connect_result().is_some_and(|r| r.is_ok()) => {
                s.peer_addr().map_err(|_| libc::ENOTCONN)
            }
            _ => Err(libc::ENOTCONN),
        }
    }

    /// No fd of this process names it any more (its last one was closed).
    pub fn no_fds_left(&self) -> bool {
        self.fds.load(Ordering::Acquire) == 0
    }

    /// Bytes a write would take now without waiting (0 when not connected).
    pub fn send_space(&self) -> usize {
        match &self.lock().kind {
            Kind::Stream(s) => s.send_space(),
            _ => 0,
        }
    }

    /// Bytes waiting to be read (`FIONREAD`).
    pub fn bytes_to_read(&self) -> usize {
        self.take_over();
        match &self.lock().kind {
            Kind::Stream(s) => s.bytes_to_read(),
            _ => 0,
        }
    }

    pub fn set_option(&self, fd: c_int, level: c_int, name: c_int, value: &[u8]) -> Res<()> {
        let int = value
            .get(..4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        if int.is_none() && !matches!((level, name), (libc::SOL_SOCKET, libc::SO_LINGER)) {
            return Err(libc::EINVAL);
        }
        if level == libc::IPPROTO_IPV6 && self.family == libc::AF_INET {
            // The kernel's ip_setsockopt knows no IPv6 level.
            return Err(libc::ENOPROTOOPT);
        }
        let known = matches!(
            (level, name),
            (
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR | libc::SO_REUSEPORT | libc::SO_KEEPALIVE
            ) | (
                libc::SOL_SOCKET,
                libc::SO_RCVBUF | libc::SO_SNDBUF | libc::SO_LINGER
            ) | (libc::SOL_SOCKET, libc::SO_RCVTIMEO | libc::SO_SNDTIMEO)
                | (libc::IPPROTO_TCP, libc::TCP_NODELAY | libc::TCP_KEEPIDLE)
                | (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL | libc::TCP_KEEPCNT)
                | (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
        );
        if (level, name) == (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
            && !matches!(self.lock().kind, Kind::Fresh { bound: None })
        {
            // As the kernel: only before bind (ipv6_setsockopt).
            return Err(libc::EINVAL);
        }
        if !known {
            say!("fd {fd}: option {level}/{name} kept, but the stack does not apply it");
        }
        let mut st = self.lock();
        st.options.retain(|(l, n, _)| (*l, *n) != (level, name));
        st.options.push((level, name, value.to_vec()));
        if let Kind::Stream(s) = &st.kind {
            apply_options(s, &st.options);
        }
        Ok(())
    }

    /// A socket option's value, as the kernel would write it.
    pub fn option(&self, level: c_int, name: c_int) -> Res<Vec<u8>> {
        let int = |v: i32| Ok(v.to_ne_bytes().to_vec());
        if level == libc::IPPROTO_TCP {
            // The TCB's options of an inherited connection: it is used here now.
            self.take_over();
        }
        let st = self.lock();
        if (level, name) == (libc::SOL_SOCKET, libc::SO_ERROR) {
            return int(match &st.kind {
                Kind::Stream(s) => match s.connect_result() {
                    Some(Err(e)) => errno_of(&e),
                    _ => s.take_error().ok().flatten().map_or(0, |e| errno_of(&e)),
                },
                _ => 0,
            });
        }
        if let Some((_, _, v)) = st
            .options
            .iter()
            .find(|(l, n, _)| (*l, *n) == (level, name))
        {
            return Ok(v.clone());
        }
        if level == libc::IPPROTO_TCP
            && matches!(
                name,
                libc::TCP_INFO | libc::TCP_CONGESTION | libc::TCP_MAXSEG
            )
        {
            return self.tcp_state_option(st, name);
        }
        match (level, name) {
            (libc::SOL_SOCKET, libc::SO_TYPE) => int(libc::SOCK_STREAM),
            (libc::SOL_SOCKET, libc::SO_DOMAIN) => int(self.family),
            (libc::SOL_SOCKET, libc::SO_PROTOCOL) => int(libc::IPPROTO_TCP),
            (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => {
                let inherited = self.listen_on_use.load(Ordering::Acquire);
                int((matches!(st.kind, Kind::Listener(_)) || inherited) as i32)
            }
            (libc::SOL_SOCKET, libc::SO_RCVBUF | libc::SO_SNDBUF) => int(2 << 20),
            (libc::SOL_SOCKET, libc::SO_LINGER) => Ok(vec![0; std::mem::size_of::<libc::linger>()]),
            (libc::SOL_SOCKET, libc::SO_RCVTIMEO | libc::SO_SNDTIMEO) => {
                Ok(vec![0; std::mem::size_of::<libc::timeval>()])
            }
            (libc::SOL_SOCKET, libc::SO_REUSEADDR | libc::SO_REUSEPORT | libc::SO_KEEPALIVE) => {
                int(0)
            }
            (libc::IPPROTO_TCP, libc::TCP_NODELAY) => int(0),
            (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) => int(7200),
            (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) => int(75),
            (libc::IPPROTO_TCP, libc::TCP_KEEPCNT) => int(9),
            // Linux's default (net.ipv6.bindv6only = 0): `[::]` takes IPv4 too.
            (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) if self.family == libc::AF_INET6 => int(0),
            _ => Err(libc::ENOPROTOOPT),
        }
    }

    /// The options read from the connection's TCB: `TCP_INFO`, `TCP_CONGESTION` and
    /// `TCP_MAXSEG` (the segment size in use; Linux's 536 before a connection).
    fn tcp_state_option(&self, st: Locked<'_>, name: c_int) -> Res<Vec<u8>> {
        let (stream, state) = match &st.kind {
            // Before the loop has its TCB (an ARP look-up first), a connect is pending.
            Kind::Stream(s) if s.connect_result().is_none() => {
                (Some(s.clone()), crate::tcpinfo::TCP_SYN_SENT)
            }
            Kind::Stream(s) => (Some(s.clone()), crate::tcpinfo::TCP_CLOSE),
            Kind::Listener(_) => (None, crate::tcpinfo::TCP_LISTEN),
            Kind::Fresh { .. } | Kind::Gone { .. } => (None, crate::tcpinfo::TCP_CLOSE),
            // Taken over before (see `option`); one that could not be is `Gone`.
            Kind::Inherited { .. } => (None, crate::tcpinfo::TCP_CLOSE),
        };
        // The loop takes the snapshot: not with this socket's state locked.
        drop(st);
        // This thread turns the loop for it where the library's rules let it (never
        // in a signal handler or a nested call).
        let info = stream.and_then(|s| {
            s.info_turning(|| {
                crate::inline::turn();
            })
            .ok()
            .flatten()
        });
        match name {
            libc::TCP_INFO => Ok(crate::tcpinfo::tcp_info(info.as_ref(), state)),
            libc::TCP_CONGESTION => Ok(crate::tcpinfo::congestion_name(match &info {
                Some(i) => i.congestion,
                None => crate::tcpinfo::default_congestion(
                    config::running().map_or_else(Default::default, |s| s.congestion()),
                ),
            })),
            _ => {
                let mss = info.map_or(536, |i| i.send_mss);
                Ok((mss as i32).to_ne_bytes().to_vec())
            }
        }
    }

    /// Closing the last fd: with `SO_LINGER` on and 0 s, a reset, as the kernel.
    pub fn closing(&self) {
        let st = self.lock();
        if let Kind::Inherited { local, remote, via } = st.kind {
            // Closed here without taking it: the parent may close it when no one else
            // holds it.
            crate::handover::let_go(via, local, remote);
        }
        let reset = st.options.iter().any(|(l, n, v)| {
            (*l, *n) == (libc::SOL_SOCKET, libc::SO_LINGER)
                && v.len() >= 8
                && v[..4] != [0; 4]
                && v[4..8] == [0; 4]
        });
        if let (true, Kind::Stream(s)) = (reset, &st.kind) {
            let _ = s.abort();
        }
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        // The loop must not write to an eventfd that is closing.
        match &self.lock().kind {
            Kind::Fresh { .. } | Kind::Inherited { .. } | Kind::Gone { .. } => {}
            Kind::Stream(s) => s.watch(None),
            Kind::Listener(l) => l.watch(None),
        }
    }
}

/// Blocks until the stream is readable (for a blocking `MSG_PEEK`).
fn wait_readable(stream: &TcpStream) {
    // A peek that blocks is rare (connection checks); a short sleep keeps it simple.
    // Handlers run in the sleep only, never while the look holds the lock.
    while !stream.with_readiness(|r| r.readable) {
        signals::outside(|| std::thread::sleep(Duration::from_millis(1)));
    }
}

fn int_option(options: &[(c_int, c_int, Vec<u8>)], level: c_int, name: c_int) -> Option<i32> {
    options
        .iter()
        .find(|(l, n, _)| (*l, *n) == (level, name))
        .and_then(|(_, _, v)| v.get(..4))
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn timeval_option(options: &[(c_int, c_int, Vec<u8>)], name: c_int) -> Option<Duration> {
    let (_, _, v) = options
        .iter()
        .find(|(l, n, _)| (*l, *n) == (libc::SOL_SOCKET, name))?;
    let field = |i: usize| {
        v.get(i..i + 8)
            .map(|b| i64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let t = Duration::from_secs(field(0)?.max(0) as u64)
        + Duration::from_micros(field(8)?.max(0) as u64);
    (!t.is_zero()).then_some(t)
}

/// Applies the options the stack has to a stream.
fn apply_options(stream: &TcpStream, options: &[(c_int, c_int, Vec<u8>)]) {
    if let Some(on) = int_option(options, libc::IPPROTO_TCP, libc::TCP_NODELAY) {
        let _ = stream.set_nodelay(on != 0);
    }
    if let Some(on) = int_option(options, libc::SOL_SOCKET, libc::SO_KEEPALIVE) {
        // RFC 1122 4.2.3.6: the idle time before probes, 2 hours unless set.
        let idle = int_option(options, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE).unwrap_or(7200);
        let every = Duration::from_secs(idle.max(1) as u64);
        let _ = stream.set_keepalive((on != 0).then_some(every));
    }
    let _ = stream.set_read_timeout(timeval_option(options, libc::SO_RCVTIMEO));
    let _ = stream.set_write_timeout(timeval_option(options, libc::SO_SNDTIMEO));
}

pub fn last_errno() -> Errno {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(readable: bool, writable: bool) -> Readiness {
        Readiness {
            readable,
            writable,
            ..Readiness::default()
        }
    }

    /// What the kernel's poll reports for an eventfd at `count`: (POLLIN, POLLOUT).
    fn polled(count: u64) -> (bool, bool) {
        let fd = real::eventfd().unwrap();
        real::set_counter(&fd, 0, count);
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 1);
        (
            p.revents & libc::POLLIN != 0,
            p.revents & libc::POLLOUT != 0,
        )
    }

    #[test]
    fn the_kernels_poll_sees_what_a_stream_is_ready_for() {
        assert_eq!(polled(count_for(ready(true, true), false)), (true, true));
        assert_eq!(polled(count_for(ready(true, false), false)), (true, false));
        assert_eq!(polled(count_for(ready(false, true), false)), (false, true));
        // A writer waiting for room must not wake for nothing.
        assert_eq!(polled(count_for(ready(false, false), false)), (true, false));
    }

    static FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
    static HANDLED: AtomicBool = AtomicBool::new(false);

    extern "C" fn getsockname_in_handler(_: c_int) {
        // SAFETY: an address buffer of the size given.
        unsafe {
            let mut at: libc::sockaddr_storage = std::mem::zeroed();
            let mut len = std::mem::size_of_val(&at) as socklen_t;
            crate::getsockname(
                FD.load(Ordering::SeqCst),
                (&mut at as *mut libc::sockaddr_storage).cast(),
                &mut len,
            );
        }
        HANDLED.store(true, Ordering::SeqCst);
    }

    /// A signal handler that uses a stack socket (getsockname takes its lock) while its
    /// thread holds that socket's lock: the handler runs once the lock is let go, not
    /// inside (where it would wait for ever).
    #[test]
    fn a_handler_using_a_socket_its_thread_has_locked_runs_after_not_for_ever() {
        let (fd, sock) = Sock::open(libc::AF_INET, false, true).unwrap();
        FD.store(fd, Ordering::SeqCst);
        // SAFETY: a zeroed sigaction is valid; installed through the library's sigaction.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = getsockname_in_handler as *const () as libc::sighandler_t;
            assert_eq!(
                crate::signals::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut()),
                0
            );
        }
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let state = sock.lock();
            // SAFETY: raise takes no pointers.
            unsafe { libc::raise(libc::SIGUSR1) };
            let inside = HANDLED.load(Ordering::SeqCst);
            drop(state);
            let _ = done.send((inside, HANDLED.load(Ordering::SeqCst)));
        });
        let (inside, after) = finished
            .recv_timeout(Duration::from_secs(5))
            .expect("the handler waited for the lock its own thread held");
        assert!(!inside && after, "ran inside {inside}, after {after}");
        // SAFETY: our socket's fd.
        unsafe { crate::close(fd) };
    }

    #[test]
    fn an_idle_listener_is_not_readable() {
        assert_eq!(polled(count_for(ready(false, false), true)), (false, true));
        assert_eq!(polled(count_for(ready(true, false), true)), (true, false));
    }

    #[test]
    fn the_librarys_errors_map_to_the_kernels_errnos() {
        use io::ErrorKind as K;
        for (kind, errno) in [
            (K::ConnectionRefused, libc::ECONNREFUSED),
            (K::ConnectionReset, libc::ECONNRESET),
            (K::TimedOut, libc::ETIMEDOUT),
            (K::HostUnreachable, libc::EHOSTUNREACH),
            (K::AddrInUse, libc::EADDRINUSE),
            (K::BrokenPipe, libc::EPIPE),
            (K::WouldBlock, libc::EAGAIN),
        ] {
            assert_eq!(errno_of(&io::Error::new(kind, "x")), errno, "{kind:?}");
        }
        assert_eq!(
            errno_of(&io::Error::from_raw_os_error(libc::EMFILE)),
            libc::EMFILE
        );
    }
}
