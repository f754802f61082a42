//! The lingering holder of an attached XDP program, so that back-to-back runs of a short
//! command (a script's curls, a benchmark) neither attach nor detach each time.
//!
//! Attaching XDP to an interface and detaching it each wait for the kernel (RCU grace
//! periods in the driver, rtnl), and closing an AF_XDP socket waits for one more: about
//! 20 ms of a fetch that itself takes 1 ms. So a process that attached the program and
//! asked to linger hands it, at exit, to a small holder process (the same binary started
//! with [`HOLDER_ARG`]): the BPF link, the program's maps, and its AF_XDP sockets, which
//! the holder closes off the command's critical path. The holder listens on an abstract
//! unix socket named for the interface (abstract names are per network namespace). The
//! next instance that asks to linger borrows the program from it: it receives the map
//! fds, binds its own sockets, steers, and at exit hands its sockets back. An instance
//! that does not linger asks an idle holder to detach first, then attaches as usual.
//!
//! A cold start (no holder) starts its holder at once instead, beside the program's load,
//! and has it attach the program ([`start`], [`Starting::attach`]): the kernel runs an
//! XDP program as soon as the driver has it, but the attach call returns only after an
//! RCU grace period more (the XDP dispatcher's rebuild, 10-20 ms), and a process cannot
//! exit while one of its threads is in it. The holder tells its starter when the
//! program runs (its attaching thread's kernel stack has reached the dispatcher's
//! rebuild, which the kernel does after the driver installed the program), and lends it
//! from then on as to any borrower.
//!
//! While no instance is connected the steering config is off, so the program passes
//! every packet to the kernel. The holder detaches (closes the link) after the linger
//! with no instance, or when its borrower's connection closes without a word and the
//! linger passes (a killed instance). One instance at a time: a second one is told which
//! process has the interface.
use crate::device::error::{Context, SetupResult, bail};
use crate::device::startup;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// The hidden first argument that makes the `userspace` binary run as a holder.
pub const HOLDER_ARG: &str = "__xdp-holder";
/// The holder's process name (what `xdp_holder` reports, and how an instance knows
/// that an attached program it meets is one of ours on its way out).
pub use crate::device::netinfo::HOLDER_COMM;
/// How long the CLI's curl keeps the program attached after it exits, unless told.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(1500);
/// Environment variable giving the linger in milliseconds (0: detach at exit).
pub const LINGER_ENV: &str = "USERSPACE_XDP_LINGER_MS";
/// Most fds in one message (the sockets of every queue, the link and three maps).
const MAX_FDS: usize = 64;

/// A bound socket handed from one process to the next by the holder: the socket, its
/// UMEM's memfd, its queue and its ring size.
pub struct PooledSocket {
    /// The AF_XDP socket.
    pub fd: OwnedFd,
    /// Its UMEM.
    pub memfd: OwnedFd,
    /// The queue it is bound to.
    pub queue: u32,
    /// Entries of each of its rings.
    pub ring_size: u32,
    /// Bytes of TX metadata its UMEM was registered with.
    pub tx_metadata_len: u32,
}

/// A bound socket as handed on: (queue, ring size, TX metadata length, socket, memfd).
pub type PoolEntry<'a> = (u32, u32, u32, BorrowedFd<'a>, BorrowedFd<'a>);

/// The abstract socket name of the holder of interface `ifindex`.
fn address(ifindex: u32) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("userspace-xdp/{ifindex}"))
}

/// The map fds of the program, in this order: XSKMAP, steering config, counters.
pub struct MapFds {
    /// The XSKMAP.
    pub xsks: OwnedFd,
    /// The steering config.
    pub config: OwnedFd,
    /// The counters.
    pub counters: OwnedFd,
}

/// What the holder of an interface answered.
pub enum Answer {
    /// No holder, or it has just detached: attach as usual.
    Absent,
    /// The program and the bound sockets, lent for this process's lifetime; the
    /// connection ends the loan.
    Lent {
        /// The loan: hand the sockets back over it, and close it.
        conn: UnixStream,
        /// The attach mode, as its attacher named it.
        mode: String,
        /// The program's maps.
        maps: MapFds,
        /// The sockets the last borrower left bound.
        pool: Vec<PooledSocket>,
    },
    /// Another instance has the interface.
    Busy(u32),
}

/// A pool as words (`ring_size[+tx_metadata_len] queue...`) and fds (socket and
/// memfd of each).
fn pool_message<'a>(pool: &[PoolEntry<'a>]) -> (String, Vec<BorrowedFd<'a>>) {
    let (ring, meta) = pool.first().map_or((0, 0), |p| (p.1, p.2));
    let mut words = if meta > 0 {
        format!("{ring}+{meta}")
    } else {
        format!("{ring}")
    };
    let mut fds = Vec::new();
    for &(queue, _, _, fd, memfd) in pool {
        words.push_str(&format!(" {queue}"));
        fds.extend([fd, memfd]);
    }
    (words, fds)
}

/// The pool from the words after the header's fixed ones and the fds after the fixed
/// ones.
fn parse_pool<'a>(
    mut words: impl Iterator<Item = &'a str>,
    fds: impl Iterator<Item = OwnedFd>,
) -> Vec<PooledSocket> {
    let (ring_size, tx_metadata_len) = words
        .next()
        .and_then(|w| {
            let (ring, meta) = w.split_once('+').unwrap_or((w, "0"));
            Some((ring.parse().ok()?, meta.parse().ok()?))
        })
        .unwrap_or((0, 0));
    let queues: Vec<u32> = words.filter_map(|w| w.parse().ok()).collect();
    let mut fds = fds;
    let mut pool = Vec::new();
    for queue in queues {
        let (Some(fd), Some(memfd)) = (fds.next(), fds.next()) else {
            break;
        };
        pool.push(PooledSocket {
            fd,
            memfd,
            queue,
            ring_size,
            tx_metadata_len,
        });
    }
    pool
}

/// Asks the holder of `ifindex`, if any, for the program and its sockets (`borrow`:
/// the caller lingers too) or to detach now (`!borrow`). `mode` is the attach mode the
/// caller insists on.
pub fn ask(ifindex: u32, borrow: bool, mode: Option<&str>) -> SetupResult<Answer> {
    let Ok(mut conn) = UnixStream::connect_addr(&address(ifindex)?) else {
        return Ok(Answer::Absent);
    };
    let verb = if borrow { "USE" } else { "RETIRE" };
    let request = format!("{verb} {} {}\n", mode.unwrap_or("any"), std::process::id());
    if conn.write_all(request.as_bytes()).is_err() {
        return Ok(Answer::Absent);
    }
    // A holder answers at once, or after its detach (tens of ms).
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (reply, fds) = match recv_with_fds(conn.as_fd()) {
        Ok(r) => r,
        // The holder went away meanwhile (its linger ended): it has detached.
        Err(_) => return Ok(Answer::Absent),
    };
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let mut words = reply.split_whitespace();
    match (words.next(), words.next()) {
        (Some("OK"), Some(mode)) if fds.len() >= 3 => {
            let mode = mode.to_string();
            let mut fds = fds.into_iter();
            let mut next = || fds.next().expect("three fds");
            let maps = MapFds {
                xsks: next(),
                config: next(),
                counters: next(),
            };
            let pool = parse_pool(words, fds);
            conn.set_read_timeout(None)?;
            Ok(Answer::Lent {
                conn,
                mode,
                maps,
                pool,
            })
        }
        (Some("BUSY"), Some(pid)) => Ok(Answer::Busy(pid.parse().unwrap_or(0))),
        _ => Ok(Answer::Absent),
    }
}

/// Ends a loan, handing the bound sockets back to the holder, as [`PoolEntry`]s: steering goes off at once, and the holder lends them to the next
/// instance as they are.
pub fn give_back(conn: &UnixStream, pool: &[PoolEntry<'_>]) -> std::io::Result<()> {
    let (words, fds) = pool_message(pool);
    send_with_fds(conn.as_fd(), format!("END {words}\n").as_bytes(), &fds)
}

/// Everything an attaching process hands to a new holder.
pub struct Handover<'a> {
    /// The interface.
    pub ifindex: u32,
    /// Its attach mode (one word).
    pub mode: &'a str,
    /// How long the holder waits for a borrower.
    pub linger: Duration,
    /// The BPF link.
    pub link: BorrowedFd<'a>,
    /// The XSKMAP, config and counters maps.
    pub maps: [BorrowedFd<'a>; 3],
    /// The bound sockets.
    pub pool: Vec<PoolEntry<'a>>,
}

/// Starts a holder (`exe` run with [`HOLDER_ARG`]) and hands it the program and the
/// sockets; returns once they are in flight, so the caller may exit at once. Fails (and
/// the caller detaches itself) when the interface's holder name is taken.
pub fn spawn(exe: &std::path::Path, h: &Handover<'_>) -> SetupResult<()> {
    // Bound here, before this process lets go of the program: from now on a new
    // instance finds the holder (its connection waits in the backlog until the holder
    // accepts), never an attached program with nobody to ask.
    let (listener, ours, _) = launch(exe, h.ifindex)?;
    let mut fds = vec![h.link, listener.as_fd()];
    fds.extend(h.maps);
    let (words, pool_fds) = pool_message(&h.pool);
    fds.extend(pool_fds);
    let header = format!("HOLD {} {} {words}\n", h.mode, h.linger.as_millis());
    send_with_fds(ours.as_fd(), header.as_bytes(), &fds).context("handing over to the holder")
}

/// Binds the holder's name for `ifindex` and starts a holder process (`exe`) whose
/// stdin is the other end of the returned connection: the name's listener (to hand
/// over), our end, and the child.
fn launch(
    exe: &std::path::Path,
    ifindex: u32,
) -> SetupResult<(UnixListener, UnixStream, std::process::Child)> {
    let listener =
        UnixListener::bind_addr(&address(ifindex)?).context("binding the holder's name")?;
    let (ours, theirs) = UnixStream::pair()?;
    let child = std::process::Command::new(exe)
        .arg(HOLDER_ARG)
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the XDP holder")?;
    Ok((listener, ours, child))
}

/// A holder started by a cold run before its program is loaded (see [`start`]).
pub struct Starting {
    conn: UnixStream,
    pid: u32,
}

/// The program as a holder attached it for its starter.
pub struct Attached {
    /// The loan: hand the sockets back over it at exit ([`give_back`]).
    pub conn: UnixStream,
    /// The mode it got (`native` or `skb`).
    pub mode: String,
    /// True if the starter was told when the program ran, before the attach call
    /// returned; false if it waited for the call's end.
    pub live_before_return: bool,
    /// The holder's process id.
    pub pid: u32,
}

/// Starts a holder for interface `ifindex` that will attach the program itself
/// ([`Starting::attach`]) and keep it `linger` after this process. Fails when the
/// holder's name is taken (a holder on its way out): the caller attaches as usual.
pub fn start(exe: &std::path::Path, ifindex: u32, linger: Duration) -> SetupResult<Starting> {
    let _t = startup::step("holder started");
    let (listener, ours, child) = launch(exe, ifindex)?;
    let header = format!("START {} {}\n", linger.as_millis(), std::process::id());
    send_with_fds(ours.as_fd(), header.as_bytes(), &[listener.as_fd()])
        .context("handing over to the holder")?;
    Ok(Starting {
        conn: ours,
        pid: child.id(),
    })
}

impl Starting {
    /// Hands the loaded program `prog` and its maps (XSKMAP, config, counters) to the
    /// holder, which attaches it to interface `ifindex` (named `iface`) in `mode`
    /// (`native`, `skb`, or `any`: native, else skb). Returns as soon as the program
    /// runs, usually long before the holder's attach call returns; `None` if the
    /// holder ended (or did not answer in 10 s) without a word: the caller attaches.
    pub fn attach(
        self,
        prog: BorrowedFd<'_>,
        maps: [BorrowedFd<'_>; 3],
        ifindex: u32,
        iface: &str,
        mode: &str,
    ) -> SetupResult<Option<Attached>> {
        let mut fds = vec![prog];
        fds.extend(maps);
        let request = format!("ATTACH {ifindex} {iface} {mode}\n");
        send_with_fds(self.conn.as_fd(), request.as_bytes(), &fds)
            .context("handing the program to the holder")?;
        // The attach waits for an earlier holder's detach for 2 s at most.
        self.conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\n") {
            match (&self.conn).read(&mut byte) {
                Ok(1) => reply.push(byte[0]),
                // Gone (or stuck): whatever it attached goes with it.
                _ => return Ok(None),
            }
        }
        self.conn.set_read_timeout(None)?;
        let reply = String::from_utf8_lossy(&reply).trim_end().to_string();
        let (verb, rest) = reply.split_once(' ').unwrap_or((&reply, ""));
        if verb != "LIVE" && verb != "ATTACHED" {
            return Err(crate::device::error::setup_error!("{rest}"));
        }
        let mut words = rest.split_whitespace();
        let mode = words.next().unwrap_or("").to_string();
        let times: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
        if let [started, ready, received, call, end] = times[..] {
            startup::record_between(
                "holder: exec'd, until it reads the hand-over",
                started,
                ready,
            );
            startup::record_between(
                "holder: program received, until its attach call",
                received,
                call,
            );
            startup::record_between("holder: attach call, until the program runs", call, end);
        }
        Ok(Some(Attached {
            conn: self.conn,
            mode,
            live_before_return: verb == "LIVE",
            pid: self.pid,
        }))
    }
}

/// Whether a thread's kernel stack (`/proc/PID/task/TID/stack`) shows it in the XDP
/// dispatcher's update: `dev_xdp_install` (net/core/dev.c) calls it once the driver's
/// `ndo_bpf` has installed the program, which from then on runs on every packet (the
/// dispatcher calls a program not yet in its image indirectly).
pub fn past_the_install(stack: &str) -> bool {
    stack.lines().any(|l| {
        l.contains("] bpf_dispatcher_change_prog+") || l.contains("] bpf_prog_change_xdp+")
    })
}

/// A thread that watches the calling thread's kernel stack during its attach call
/// (made before the program arrives, so that the attach does not wait for a new
/// thread): it writes `LIVE mode` to the starter once [`past_the_install`]. A stack
/// this process may not read (no CAP_SYS_ADMIN, no CONFIG_STACKTRACE) or a kernel whose
/// functions have other names only cost the wait for the call's end.
struct Watcher {
    go: std::sync::mpsc::Sender<std::sync::Arc<AttachState>>,
    thread: std::thread::JoinHandle<bool>,
}

/// What the attaching thread tells its watcher: the mode being tried (0: none yet, 1:
/// native, 2: skb), whether the call is over, and when things happened (for the
/// starter's `USERSPACE_STARTUP_TIMES`, in [`startup::monotonic_ns`]): this process's
/// start, the hand-over read, the program received, the last attach call's start.
#[derive(Default)]
struct AttachState {
    trying: std::sync::atomic::AtomicU8,
    over: std::sync::atomic::AtomicBool,
    times: [u64; 3],
    call: std::sync::atomic::AtomicU64,
}

impl AttachState {
    /// The reply `verb mode` with the times, up to `end`.
    fn reply(&self, verb: &str, mode: &str, end: u64) -> String {
        let [a, b, c] = self.times;
        let call = self.call.load(std::sync::atomic::Ordering::SeqCst);
        format!("{verb} {mode} {a} {b} {c} {call} {end}\n")
    }
}

impl Watcher {
    /// Starts watching the calling thread; `conn` is the starter's connection.
    fn new(conn: UnixStream) -> Watcher {
        use std::sync::atomic::Ordering;
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        let (go, wait) = std::sync::mpsc::channel::<std::sync::Arc<AttachState>>();
        let thread = std::thread::spawn(move || {
            // A short slice: woken from its 50 us sleeps onto a busy core, it preempts
            // at once instead of waiting for the next tick (up to 4 ms; see
            // `device::slice`).
            let _ = crate::device::slice::set_own_slice(crate::device::slice::SHORT_SLICE);
            let Ok(state) = wait.recv() else {
                return false;
            };
            let path = format!("/proc/self/task/{tid}/stack");
            let started = Instant::now();
            while !state.over.load(Ordering::SeqCst) {
                match std::fs::read_to_string(&path) {
                    Ok(stack) if past_the_install(&stack) => {
                        let mode = match state.trying.load(Ordering::SeqCst) {
                            2 => "skb",
                            _ => "native",
                        };
                        let reply = state.reply("LIVE", mode, startup::monotonic_ns());
                        return (&conn).write_all(reply.as_bytes()).is_ok();
                    }
                    Ok(_) => {}
                    Err(_) => return false,
                }
                // The install takes well under a millisecond: the first 5 ms are
                // watched without sleeping (a sleeper woken onto a busy core can wait
                // for the next tick, 4 ms; its starter waits for nothing else). An
                // attach that waits longer (for an earlier holder's detach, for rtnl)
                // is looked at every 500 us.
                if started.elapsed() < Duration::from_millis(5) {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            false
        });
        Watcher { go, thread }
    }

    /// Attaches the program (see [`crate::device::xdp::attach::attach_link`]) while
    /// the watcher looks on: `LIVE mode` goes to the starter as soon as it runs, else
    /// `ATTACHED mode` or `ERR why` when the call returns.
    fn attach(
        self,
        prog: BorrowedFd<'_>,
        ifindex: u32,
        iface: &str,
        mode: Option<crate::device::xdp::attach::XdpModeChoice>,
        conn: &UnixStream,
        times: [u64; 3],
    ) -> Option<(OwnedFd, &'static str)> {
        use crate::device::xdp::attach::XdpModeChoice;
        use std::sync::atomic::Ordering;
        let state = std::sync::Arc::new(AttachState {
            times,
            ..AttachState::default()
        });
        let _ = self.go.send(state.clone());
        let result = crate::device::xdp::attach::attach_link(prog, ifindex, iface, mode, &|m| {
            let code = if m == XdpModeChoice::Skb { 2 } else { 1 };
            state.trying.store(code, Ordering::SeqCst);
            state.call.store(startup::monotonic_ns(), Ordering::SeqCst);
        });
        state.over.store(true, Ordering::SeqCst);
        let told = self.thread.join().unwrap_or(false);
        if !told {
            let reply = match &result {
                Ok((_, mode)) => state.reply("ATTACHED", mode, startup::monotonic_ns()),
                Err(e) => format!("ERR {}\n", format!("{e:#}").replace('\n', " ")),
            };
            let _ = (&*conn).write_all(reply.as_bytes());
        }
        result.ok()
    }
}

/// Sends `data` with `fds` attached (SCM_RIGHTS).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    if fds.len() > MAX_FDS {
        return Err(std::io::Error::other("too many fds"));
    }
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many fds"));
    }
    rustix::net::sendmsg(
        sock,
        &[std::io::IoSlice::new(data)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives one message and the fds attached to it (close-on-exec). End of stream is
/// an error.
pub fn recv_with_fds(sock: BorrowedFd<'_>) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut data = [0u8; 256];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        sock,
        &mut [std::io::IoSliceMut::new(&mut data)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if received.bytes == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok((data[..received.bytes].to_vec(), fds))
}

/// The holder's side of the program: turns steering off between loans.
struct Held {
    link: Option<OwnedFd>,
    maps: [OwnedFd; 3],
    mode: String,
    /// The bound sockets, lent to each borrower and given back at its end.
    pool: Vec<PooledSocket>,
}

impl Held {
    /// Steering off: from now on every packet goes to the kernel.
    fn steer_off(&self) {
        let _ = super::steering::disable_steering(self.maps[1].as_fd());
    }

    /// Detaches the program (closing the link waits for the kernel).
    fn detach(&mut self) {
        self.steer_off();
        drop(self.link.take());
    }

    /// The holder's end: detaches, gives up its name, closes the sockets.
    fn retire(&mut self, listener: UnixListener) {
        self.detach();
        // Connections still waiting in the backlog are reset when the listener closes;
        // they find no holder and attach themselves.
        drop(listener);
        self.close_pool();
    }

    /// Closes the pooled sockets, each on a thread of its own: every close waits for
    /// an RCU grace period.
    fn close_pool(&mut self) {
        let closing: Vec<_> = self
            .pool
            .drain(..)
            .map(|s| std::thread::spawn(move || drop(s)))
            .collect();
        for c in closing {
            let _ = c.join();
        }
    }
}

/// The holder process: `userspace __xdp-holder`, its hand-over on stdin. Returns the
/// process's exit code.
pub fn run() -> i32 {
    match hold() {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn hold() -> SetupResult<()> {
    // A new session keeps the holder out of its starter's terminal signals (^C after
    // the command ended); SIGTERM still ends it, and then the kernel detaches the
    // program as for any process.
    let _ = rustix::process::setsid();
    let _ = rustix::thread::set_name(c"userspace-xdp");
    // SAFETY: signal with SIG_IGN installs no handler and has no memory preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // Fds the starter left open across exec: the holder gets what it holds on stdin,
    // and must not keep anything else open.
    // SAFETY: close_range only closes descriptors; none above 2 is in use here yet.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
    let boot = std::io::stdin().as_fd().try_clone_to_owned()?;
    let (header, fds) = recv_with_fds(boot.as_fd())?;
    let header = String::from_utf8_lossy(&header).into_owned();
    if header.starts_with("START ") {
        return attach_then_hold(&header, fds, UnixStream::from(boot));
    }
    drop(boot);
    let mut words = header.split_whitespace();
    let (Some("HOLD"), Some(mode), Some(linger)) = (words.next(), words.next(), words.next())
    else {
        bail!("bad hand-over");
    };
    let mode = mode.to_string();
    let linger = Duration::from_millis(linger.parse().context("the linger argument")?);
    if fds.len() < 5 {
        bail!("hand-over without the program");
    }
    let mut fds = fds.into_iter();
    let link = fds.next().expect("checked");
    let listener = UnixListener::from(fds.next().expect("checked"));
    let maps = [
        fds.next().expect("checked"),
        fds.next().expect("checked"),
        fds.next().expect("checked"),
    ];
    let mut held = Held {
        link: Some(link),
        maps,
        mode,
        pool: parse_pool(words, fds),
    };
    held.steer_off();
    serve_loans(&mut held, &listener, linger, None);
    held.retire(listener);
    Ok(())
}

/// A holder started before its program was loaded (`START linger starter-pid`, the
/// listener): it waits for `ATTACH ifindex iface mode` with the program and its maps,
/// attaches the program (telling its starter when it runs), and lends it to its
/// starter first. If the starter goes without a word, before or after, the program is
/// detached (now, or after the linger, as for any borrower).
fn attach_then_hold(header: &str, fds: Vec<OwnedFd>, starter: UnixStream) -> SetupResult<()> {
    let mut words = header.split_whitespace().skip(1);
    let linger = Duration::from_millis(words.next().unwrap_or("").parse().context("the linger")?);
    let starter_pid: u32 = words.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let Some(listener) = fds.into_iter().next().map(UnixListener::from) else {
        bail!("hand-over without the holder's name");
    };
    let ready = startup::monotonic_ns();
    // The program's arrival wakes this thread while its starter waits: a short slice
    // keeps that wake-up from waiting for the next tick.
    let _ = crate::device::slice::set_own_slice(crate::device::slice::SHORT_SLICE);
    let watcher = Watcher::new(starter.try_clone()?);
    let (request, fds) = recv_with_fds(starter.as_fd())?;
    let times = [startup::origin_ns(), ready, startup::monotonic_ns()];
    let request = String::from_utf8_lossy(&request).into_owned();
    let mut words = request.split_whitespace();
    let (Some("ATTACH"), Some(ifindex), Some(iface), Some(mode)) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        bail!("bad attach request");
    };
    let ifindex: u32 = ifindex.parse().context("the interface index")?;
    if fds.len() != 4 {
        bail!("attach request without the program and its maps");
    }
    let mut fds = fds.into_iter();
    let prog = fds.next().expect("checked");
    let maps = [
        fds.next().expect("checked"),
        fds.next().expect("checked"),
        fds.next().expect("checked"),
    ];
    let mode = crate::device::xdp::attach::XdpModeChoice::from_name(mode);
    let Some((link, mode)) = watcher.attach(prog.as_fd(), ifindex, iface, mode, &starter, times)
    else {
        return Ok(());
    };
    let mut held = Held {
        link: Some(link),
        maps,
        mode: mode.to_string(),
        pool: Vec::new(),
    };
    serve_loans(&mut held, &listener, linger, Some((starter, starter_pid)));
    held.retire(listener);
    Ok(())
}

/// Lends the program until `linger` passes with no borrower; `borrower` has it first.
fn serve_loans(
    held: &mut Held,
    listener: &UnixListener,
    linger: Duration,
    borrower: Option<(UnixStream, u32)>,
) {
    let mut borrower = borrower;
    let mut idle_since = Instant::now();
    loop {
        let timeout = match &borrower {
            Some(_) => None,
            None => match linger.checked_sub(idle_since.elapsed()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return,
            },
        };
        let mut fds = vec![listener.as_fd()];
        fds.extend(borrower.as_ref().map(|(c, _)| c.as_fd()));
        let ready = wait_readable(&fds, timeout);
        // The borrower first: a loan it just ended frees the program for the next one.
        if borrower.is_some()
            && ready[1]
            && let Some((conn, _)) = borrower.take()
        {
            held.steer_off();
            idle_since = Instant::now();
            // Gone without a word (killed): the pool is still ours, in whatever state
            // it left the rings; the next borrower takes it from there.
            if let Ok((msg, fds)) = recv_with_fds(conn.as_fd()) {
                let msg = String::from_utf8_lossy(&msg).into_owned();
                let mut words = msg.split_whitespace();
                if words.next() == Some("END") {
                    // The same sockets, as their borrower left them (our copies of
                    // them close without releasing anything).
                    let pool = parse_pool(words, fds.into_iter());
                    drop(std::mem::replace(&mut held.pool, pool));
                }
            }
        }
        if ready[0]
            && let Ok((mut conn, _)) = listener.accept()
        {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
            let mut request = [0u8; 128];
            let n = conn.read(&mut request).unwrap_or(0);
            let request = String::from_utf8_lossy(&request[..n]).into_owned();
            let mut words = request.split_whitespace();
            let (verb, mode, pid) = (words.next(), words.next(), words.next());
            let pid: u32 = pid.and_then(|p| p.parse().ok()).unwrap_or(0);
            if let Some((_, holder_pid)) = &borrower {
                let _ = conn.write_all(format!("BUSY {holder_pid}\n").as_bytes());
                continue;
            }
            let fits = mode.is_some_and(|m| m == "any" || m == held.mode);
            if verb == Some("USE") && fits {
                let mut fds: Vec<BorrowedFd<'_>> = held.maps.iter().map(|m| m.as_fd()).collect();
                let pool: Vec<_> = held
                    .pool
                    .iter()
                    .map(|p| {
                        let meta = p.tx_metadata_len;
                        (p.queue, p.ring_size, meta, p.fd.as_fd(), p.memfd.as_fd())
                    })
                    .collect();
                let (words, pool_fds) = pool_message(&pool);
                fds.extend(pool_fds);
                let reply = format!("OK {} {words}\n", held.mode);
                if send_with_fds(conn.as_fd(), reply.as_bytes(), &fds).is_ok() {
                    let _ = conn.set_read_timeout(None);
                    borrower = Some((conn, pid));
                }
            } else if verb.is_some() {
                // Asked to go, or to lend in another mode: detach and release the
                // queues first, so that the asker finds the interface free.
                held.detach();
                held.close_pool();
                let _ = conn.write_all(b"GONE\n");
                return;
            }
        }
    }
}

/// poll(2) on `fds` for input: which are readable (or closed).
fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Vec<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let timeout = timeout.map(|t| Timespec {
        tv_sec: t.as_secs() as i64,
        tv_nsec: i64::from(t.subsec_nanos()).max(1),
    });
    let n = rustix::event::poll(&mut polled, timeout.as_ref()).unwrap_or(0);
    polled
        .iter()
        .map(|p| n > 0 && !p.revents().is_empty())
        .collect()
}

/// Set once the running binary answers [`HOLDER_ARG`] (the `userspace` CLI does).
static AVAILABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says that this binary runs [`run`] when started with [`HOLDER_ARG`], so a program it
/// attached may linger. A library's host program never says so, and never lingers.
pub fn set_available() {
    AVAILABLE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The linger a command asked for: `flag` (milliseconds), else [`LINGER_ENV`], else
/// `default`. Zero means none, and so does a binary that cannot hold.
pub fn linger(flag: Option<u64>, default: Duration) -> Option<Duration> {
    if !AVAILABLE.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let ms = flag.or_else(|| std::env::var(LINGER_ENV).ok()?.trim().parse().ok());
    let linger = ms.map_or(default, Duration::from_millis);
    (!linger.is_zero()).then_some(linger)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_is_past_once_the_dispatcher_update_is_on_the_attaching_stack() {
        // As Linux 6.18 shows an attach call waiting for the dispatcher's grace period.
        let waiting = "[<0>] synchronize_rcu_normal+0xb3/0xe0\n[<0>] bpf_dispatcher_change_prog+0x21d/0x3a0\n[<0>] dev_xdp_install+0x1fc/0x460\n[<0>] dev_xdp_attach+0x1ba/0x480\n[<0>] bpf_xdp_link_attach+0x13b/0x250\n[<0>] __sys_bpf+0x247e/0x28b0\n";
        assert!(past_the_install(waiting));
        // Waiting for rtnl before the install, or running (an empty stack): not yet.
        let before = "[<0>] __mutex_lock.constprop.0+0x2a/0x50\n[<0>] bpf_xdp_link_attach+0x5f/0x250\n[<0>] __sys_bpf+0x247e/0x28b0\n";
        assert!(!past_the_install(before));
        assert!(!past_the_install(""));
    }
}
