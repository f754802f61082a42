//! The stack of this process: configured from the environment `userspace exec` sets,
//! started on the first socket that goes to it, stopped at exit.
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::time::Duration;
use userspace::Stack;
use userspace::net::XdpModeChoice;

use userspace::net::exec_env::*;

/// Whether `-v` asked to hear where each socket went.
pub fn verbose() -> bool {
    static VERBOSE_ON: OnceLock<bool> = OnceLock::new();
    *VERBOSE_ON.get_or_init(|| std::env::var_os(VERBOSE).is_some_and(|v| v != "0"))
}

/// Says where a socket went and why, with `-v`.
macro_rules! say {
    ($($arg:tt)*) => {
        if $crate::config::verbose() {
            $crate::config::say_line(format_args!($($arg)*));
        }
    };
}

/// One `-v` line in one write(2), so the lines of forked children sharing stderr do
/// not interleave (a pipe write up to PIPE_BUF is atomic; `eprintln!` writes in pieces).
pub fn say_line(what: std::fmt::Arguments) {
    use std::io::Write;
    let line = format!("userspace-preload: {what}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
pub(crate) use say;

fn parsed<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={v} is not valid")),
    }
}

fn builder() -> Result<userspace::StackBuilder, String> {
    let mut b = Stack::builder().linger(Duration::from_secs(5));
    if let Some(iface) = parsed::<String>(IFACE)? {
        b = b.interface(iface);
    }
    if let Some(ip) = parsed::<Ipv4Addr>(IP)? {
        b = b.ip(ip);
    }
    if let Some(gw) = parsed::<Ipv4Addr>(GATEWAY)? {
        b = b.gateway(gw);
    }
    if let Some(cpu) = parsed::<usize>(CPU)? {
        b = b.cpu(cpu);
    }
    if let Some(queue) = parsed::<u32>(QUEUE)? {
        b = b.queue(queue);
    }
    match parsed::<String>(XDP_MODE)?.as_deref() {
        None => {}
        Some("native") => b = b.xdp_mode(XdpModeChoice::Native),
        Some("skb") => b = b.xdp_mode(XdpModeChoice::Skb),
        Some(other) => return Err(format!("{XDP_MODE}={other}: native or skb")),
    }
    if parsed::<String>(NODELAY)?.is_some_and(|v| v != "0") {
        b = b.nodelay(true);
    }
    if let Some(bytes) = parsed::<usize>(BUFFER)? {
        b = b.buffer(bytes);
    }
    if let Some(table) = parsed::<String>(PEER_TABLE)? {
        b = b.peer_table(table);
    }
    if parsed::<String>(SWITCH)?.is_some_and(|v| v != "0") {
        b = b.switch(true);
    }
    if parsed::<String>(NO_BUSY_POLL)?.is_some_and(|v| v != "0") {
        b = b.busy_poll(false);
    }
    Ok(b)
}

/// Whether the poll loop runs on a thread of its own (`userspace exec --loop-thread`)
/// instead of on the program's threads (see `inline`).
pub fn loop_thread() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(LOOP_THREAD).is_some_and(|v| v != "0"))
}

/// How long a wait on stack sockets spins, turning the loop, before it sleeps: none
/// with `--no-busy-poll`.
pub fn spin() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(
        || match std::env::var_os(NO_BUSY_POLL).is_some_and(|v| v != "0") {
            true => Duration::ZERO,
            false => crate::inline::DEFAULT_SPIN,
        },
    )
}

/// Whether the stack goes through the interface's switch (`userspace exec --share`),
/// so that a child forked after the stack started gets a stack of its own.
pub fn switched() -> bool {
    static SWITCHED: OnceLock<bool> = OnceLock::new();
    *SWITCHED.get_or_init(|| std::env::var_os(SWITCH).is_some_and(|v| v != "0"))
}

/// A stack started in process `pid` (a child forked after the start starts its own).
struct Started {
    pid: u32,
    stack: Result<Stack, String>,
}

/// The latest start; never freed (a child must not drop its parent's stack).
static STARTED: AtomicPtr<Started> = AtomicPtr::new(std::ptr::null_mut());
static START: Mutex<()> = Mutex::new(());

/// The stack started in this process, if any (started or failed).
fn current(pid: u32) -> Option<Result<&'static Stack, &'static str>> {
    let started = STARTED.load(Ordering::Acquire);
    // SAFETY: a non-null pointer is a leaked Box that is never freed or written again.
    let started = unsafe { started.as_ref() }?;
    (started.pid == pid).then(|| started.stack.as_ref().map_err(|e| e.as_str()))
}

/// The process's stack, started on first use; the same error for every caller if it
/// could not start (said once on stderr, `-v` or not: nothing falls back in silence).
pub fn stack() -> Result<&'static Stack, &'static str> {
    let pid = std::process::id();
    if let Some(started) = current(pid) {
        return started;
    }
    let _critical = crate::signals::critical();
    let _starting = START.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(started) = current(pid) {
        return started;
    }
    let first = STARTED.load(Ordering::Acquire).is_null();
    let started = builder().and_then(|b| {
        without_signals(|| match loop_thread() {
            true => b.build(),
            false => b.build_inline(),
        })
        .map_err(|e| e.to_string())
    });
    match &started {
        Ok(stack) => {
            say!(
                "stack up on {} ({}), XDP {}, {}",
                stack.interface(),
                stack.ip(),
                stack.xdp_mode(),
                match stack.is_inline() {
                    true => "loop turned by the program's threads",
                    false => "loop on a thread of its own",
                }
            );
            if first {
                // SAFETY: registers plain `extern "C" fn()`s to run at exit and in the
                // child after a fork.
                unsafe {
                    libc::atexit(at_exit);
                    libc::pthread_atfork(None, None, Some(in_forked_child));
                }
                crate::moves::register_fork_handlers();
                userspace::net::watch::set_wait_hooks(userspace::net::watch::WaitHooks {
                    sleep: crate::signals::around_sleep,
                    unlocked: crate::signals::let_run,
                });
            }
        }
        Err(e) => eprintln!(
            "userspace-preload: the stack did not start: {e}; its TCP sockets fail with ENETDOWN"
        ),
    }
    let started = Box::leak(Box::new(Started {
        pid,
        stack: started,
    }));
    STARTED.store(started, Ordering::Release);
    if let Ok(stack) = &started.stack
        && stack.is_inline()
    {
        INLINE.store(std::ptr::from_ref(stack).cast_mut(), Ordering::Release);
    }
    started.stack.as_ref().map_err(|e| e.as_str())
}

/// Runs `f` with every signal blocked on this thread, so the threads it starts (the
/// stack's loop or background thread) block them all: the program's handlers run on
/// its own threads only, never inside the loop's turn on ours (a handler that left by
/// `siglongjmp` would leave the loop taken for ever). A signal that comes meanwhile
/// waits for the end of `f`.
pub fn without_signals<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: an all-zero sigset_t is a valid (empty) set.
    let (mut all, mut before): (libc::sigset_t, libc::sigset_t) = unsafe { std::mem::zeroed() };
    // SAFETY: sigfillset and pthread_sigmask on sets of our own, this thread only.
    let blocked = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut before) == 0
    };
    let out = f();
    if blocked {
        // SAFETY: puts back this thread's mask as it was.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut()) };
    }
    out
}

/// The stack's start lock, held across fork (see `fork`): the child starts its own.
pub fn hold_start() -> std::sync::MutexGuard<'static, ()> {
    START.lock().unwrap_or_else(|p| p.into_inner())
}

/// This process's stack when its loop is inline (null in a child forked after it
/// started, until the child starts its own): found without a getpid(2) per call.
static INLINE: AtomicPtr<Stack> = AtomicPtr::new(std::ptr::null_mut());

/// This process's stack, if it runs and its loop is inline (see `inline`).
pub fn inline_stack() -> Option<&'static Stack> {
    // SAFETY: a non-null pointer is to a stack in a leaked `Started`, never freed.
    unsafe { INLINE.load(Ordering::Acquire).as_ref() }
}

/// The stack, if it runs already in this process (no start).
pub fn running() -> Option<&'static Stack> {
    current(std::process::id()).and_then(Result::ok)
}

/// Set in a child after fork whose stack sockets stayed with the parent's poll loop.
static FORKED: AtomicBool = AtomicBool::new(false);

extern "C" fn in_forked_child() {
    // The parent's loop is not this process's to turn.
    INLINE.store(std::ptr::null_mut(), Ordering::Release);
    if switched() {
        // Through the switch, the child gets a stack of its own now, before it can
        // put an inherited listener in an epoll set (see `table::adopt_after_fork`).
        let _ = std::panic::catch_unwind(|| {
            crate::table::adopt_after_fork(crate::moves::after_fork_in_child())
        });
    } else {
        FORKED.store(true, Ordering::SeqCst);
    }
}

/// Whether this process is a child forked after the stack started that has no stack
/// of its own: its stack sockets have no poll loop (and their locks may have been held
/// by the parent's threads).
pub fn forked() -> bool {
    FORKED.load(Ordering::Relaxed)
}

/// At exit: the sockets still open close (FIN after their bytes), and the stack gets
/// its linger time to deliver them before the XDP program is detached.
extern "C" fn at_exit() {
    before_exit();
}

/// At `exit` or `_exit`: the sockets still open close, and a stack started in this
/// process lingers to deliver their bytes (nothing in a child that has no stack of
/// its own, a vfork child's included: the memory may be its parent's).
pub fn before_exit() {
    if forked() || running().is_none() {
        return;
    }
    let _ = std::panic::catch_unwind(|| {
        crate::ready::report();
        crate::table::close_all();
        if let Some(stack) = running() {
            stack.shutdown();
        }
    });
}
