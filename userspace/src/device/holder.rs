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
//! While no instance is connected the steering config is off, so the program passes
//! every packet to the kernel. The holder detaches (closes the link) after the linger
//! with no instance, or when its borrower's connection closes without a word and the
//! linger passes (a killed instance). One instance at a time: a second one is told which
//! process has the interface.
use anyhow::{Context, anyhow, bail};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// The hidden first argument that makes the `userspace` binary run as a holder.
pub const HOLDER_ARG: &str = "__xdp-holder";
/// The holder's process name (what `xdp_holder` reports, and how an instance knows
/// that an attached program it meets is one of ours on its way out).
pub const HOLDER_COMM: &str = "userspace-xdp";
/// How long the CLI's curl keeps the program attached after it exits, unless told.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(1500);
/// Environment variable giving the linger in milliseconds (0: detach at exit).
pub const LINGER_ENV: &str = "USERSPACE_XDP_LINGER_MS";
/// Most fds in one message (the sockets of every queue, the link and three maps).
const MAX_FDS: usize = 64;

/// The abstract socket name of the holder of interface `ifindex`.
fn address(ifindex: u32) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("userspace-xdp/{ifindex}"))
}

/// The map fds of the program, in this order: XSKMAP, steering config, counters.
pub struct MapFds {
    pub xsks: OwnedFd,
    pub config: OwnedFd,
    pub counters: OwnedFd,
}

/// What the holder of an interface answered.
pub enum Answer {
    /// No holder, or it has just detached: attach as usual.
    Absent,
    /// The program, lent for this process's lifetime; the connection ends the loan.
    Lent {
        conn: UnixStream,
        mode: &'static str,
        maps: MapFds,
    },
    /// Another instance has the interface.
    Busy(u32),
}

fn mode_name(s: &str) -> Option<&'static str> {
    match s {
        "native" => Some("native"),
        "skb" => Some("skb"),
        _ => None,
    }
}

/// Asks the holder of `ifindex`, if any, for the program (`borrow`: the caller lingers
/// too) or to detach now (`!borrow`). `mode` is the attach mode the caller insists on.
pub fn ask(ifindex: u32, borrow: bool, mode: Option<&'static str>) -> anyhow::Result<Answer> {
    let Ok(mut conn) = UnixStream::connect_addr(&address(ifindex)?) else {
        return Ok(Answer::Absent);
    };
    let verb = if borrow { "USE" } else { "RETIRE" };
    let request = format!(
        "{verb} {} {}\n",
        mode.unwrap_or("any"),
        std::process::id()
    );
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
        (Some("OK"), Some(mode)) if fds.len() == 3 => {
            let mode = mode_name(mode).ok_or_else(|| anyhow!("holder: bad mode {mode}"))?;
            let mut fds = fds.into_iter();
            let mut next = || fds.next().expect("three fds");
            let maps = MapFds {
                xsks: next(),
                config: next(),
                counters: next(),
            };
            conn.set_read_timeout(None)?;
            Ok(Answer::Lent { conn, mode, maps })
        }
        (Some("BUSY"), Some(pid)) => Ok(Answer::Busy(pid.parse().unwrap_or(0))),
        _ => Ok(Answer::Absent),
    }
}

/// Ends a loan, handing the sockets back to the holder: steering goes off at once, and
/// the holder may lend the program again. The holder closes the sockets once the
/// connection closes (see [`spawn`]).
pub fn give_back(conn: &UnixStream, sockets: &[RawFd]) -> std::io::Result<()> {
    send_with_fds(conn.as_fd(), b"END\n", sockets)
}

/// Everything an attaching process hands to a new holder.
pub struct Handover<'a> {
    pub ifindex: u32,
    pub mode: &'static str,
    pub linger: Duration,
    pub link: BorrowedFd<'a>,
    pub maps: [BorrowedFd<'a>; 3],
    pub sockets: Vec<RawFd>,
}

/// Starts a holder (`exe` run with [`HOLDER_ARG`]) and hands it the program and the
/// sockets; returns once they are in flight, so the caller may exit at once. Fails (and
/// the caller detaches itself) when the interface's holder name is taken. The holder
/// closes the sockets once the returned connection closes: the caller's own copies of
/// them must be closed first, or the caller's close would be the one that waits.
pub fn spawn(exe: &std::path::Path, h: &Handover<'_>) -> anyhow::Result<UnixStream> {
    // Bound here, before this process lets go of the program: from now on a new
    // instance finds the holder (its connection waits in the backlog until the holder
    // accepts), never an attached program with nobody to ask.
    let listener =
        UnixListener::bind_addr(&address(h.ifindex)?).context("binding the holder's name")?;
    let (ours, theirs) = UnixStream::pair()?;
    std::process::Command::new(exe)
        .arg(HOLDER_ARG)
        .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the XDP holder")?;
    let mut fds = vec![h.link.as_raw_fd(), listener.as_raw_fd()];
    fds.extend(h.maps.iter().map(|m| m.as_raw_fd()));
    fds.extend_from_slice(&h.sockets);
    let header = format!("HOLD {} {}\n", h.mode, h.linger.as_millis());
    send_with_fds(ours.as_fd(), header.as_bytes(), &fds).context("handing over to the holder")?;
    Ok(ours)
}

/// Sends `data` with `fds` attached (SCM_RIGHTS).
fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(std::io::Error::other("too many fds"));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    let mut control = [0u64; 64]; // 512 bytes, aligned for cmsghdr; room for MAX_FDS
    // SAFETY: an all-zero msghdr is valid (no name, no buffers yet).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
        // SAFETY: msg_control points at `control`, large enough for one cmsghdr with
        // MAX_FDS fds, so CMSG_FIRSTHDR is non-null and its data has room for `fds`.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                fd_bytes as usize,
            );
        }
    }
    // SAFETY: `msg` points at `iov` and `control`, which live across the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message and the fds attached to it (close-on-exec). End of stream is
/// an error.
fn recv_with_fds(sock: BorrowedFd<'_>) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = [0u64; 64];
    // SAFETY: an all-zero msghdr is valid (no name, no buffers yet).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points at `iov` and `control`, which live across the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` with msg_controllen bytes of cmsghdrs; the
    // CMSG_* walk stays within them, and each SCM_RIGHTS fd is new and ours to own.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let p = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok((data[..n as usize].to_vec(), fds))
}

/// The holder's side of the program: turns steering off between loans.
struct Held {
    link: Option<OwnedFd>,
    maps: [OwnedFd; 3],
    mode: &'static str,
}

impl Held {
    /// Steering off: from now on every packet goes to the kernel.
    fn steer_off(&self) {
        let _ = super::xdp::disable_steering(self.maps[1].as_fd());
    }

    /// Detaches the program (closing the link waits for the kernel).
    fn detach(&mut self) {
        self.steer_off();
        drop(self.link.take());
    }
}

/// Closes AF_XDP sockets on a thread of their own each: every close waits for an RCU
/// grace period, and the holder must keep answering meanwhile.
fn close_in_background(sockets: Vec<OwnedFd>) {
    for s in sockets {
        std::thread::spawn(move || drop(s));
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

fn hold() -> anyhow::Result<()> {
    // SAFETY: setsid, signal with SIG_IGN and prctl(PR_SET_NAME) with a NUL-terminated
    // name have no memory preconditions. A new session keeps the holder out of its
    // starter's terminal signals (^C after the command ended); SIGTERM still ends it,
    // and then the kernel detaches the program as for any process.
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::prctl(libc::PR_SET_NAME, c"userspace-xdp".as_ptr());
    }
    // Fds the starter left open across exec (libxdp's AF_XDP sockets are not
    // close-on-exec): the holder gets what it holds on stdin, and must not keep a
    // queue busy with a stray copy of a socket.
    // SAFETY: close_range only closes descriptors; none above 2 is in use here yet.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
    let boot = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let (header, fds) = recv_with_fds(boot.as_fd())?;
    let header = String::from_utf8_lossy(&header).into_owned();
    let mut words = header.split_whitespace();
    let (Some("HOLD"), Some(mode), Some(linger)) = (words.next(), words.next(), words.next())
    else {
        bail!("bad hand-over");
    };
    let mode = mode_name(mode).ok_or_else(|| anyhow!("bad mode"))?;
    let linger = Duration::from_millis(linger.parse()?);
    if fds.len() < 5 {
        bail!("hand-over without the program");
    }
    let mut fds = fds.into_iter();
    let link = fds.next().expect("checked");
    let listener = UnixListener::from(fds.next().expect("checked"));
    let mut held = Held {
        link: Some(link),
        maps: [
            fds.next().expect("checked"),
            fds.next().expect("checked"),
            fds.next().expect("checked"),
        ],
        mode,
    };
    held.steer_off();
    serve_loans(&mut held, &listener, linger, (boot, fds.collect()));
    held.detach();
    // Connections still waiting in the backlog are reset when the listener closes;
    // they find no holder and attach themselves.
    drop(listener);
    Ok(())
}

/// Lends the program until `linger` passes with no borrower. `starter` is the
/// connection of the process that attached it, and its sockets.
fn serve_loans(
    held: &mut Held,
    listener: &UnixListener,
    linger: Duration,
    starter: (UnixStream, Vec<OwnedFd>),
) {
    let mut borrower: Option<(UnixStream, u32)> = None;
    // Connections of processes on their way out, with the sockets they handed back:
    // closed once the process has closed its own copies (its connection ends).
    let mut retiring: Vec<(UnixStream, Vec<OwnedFd>)> = vec![starter];
    let mut idle_since = Instant::now();
    loop {
        let timeout = match (&borrower, retiring.is_empty()) {
            (Some(_), _) => None,
            (None, false) => Some(Duration::from_millis(100)),
            (None, true) => match linger.checked_sub(idle_since.elapsed()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return,
            },
        };
        let mut fds = vec![listener.as_fd()];
        fds.extend(borrower.as_ref().map(|(c, _)| c.as_fd()));
        fds.extend(retiring.iter().map(|(c, _)| c.as_fd()));
        let ready = wait_readable(&fds, timeout);
        let listener_ready = ready[0];
        let borrower_ready = borrower.is_some() && ready[1];
        let first_retiring = 1 + usize::from(borrower.is_some());
        let mut index = first_retiring;
        retiring.retain_mut(|(conn, sockets)| {
            let ready = ready[index];
            index += 1;
            if !ready {
                return true;
            }
            // Any message, or the end: only the end matters.
            match recv_with_fds(conn.as_fd()) {
                Ok((_, more)) => {
                    sockets.extend(more);
                    true
                }
                Err(_) => {
                    close_in_background(std::mem::take(sockets));
                    false
                }
            }
        });
        if retiring.is_empty() && borrower.is_none() && linger <= idle_since.elapsed() {
            return;
        }
        // The borrower first: a loan it just ended frees the program for the next one.
        if borrower_ready && let Some((conn, _)) = borrower.take() {
            held.steer_off();
            idle_since = Instant::now();
            match recv_with_fds(conn.as_fd()) {
                // END: the sockets are closed once the process has closed its copies.
                Ok((_, sockets)) => retiring.push((conn, sockets)),
                // Gone without a word (killed): its sockets closed with it.
                Err(_) => {}
            }
        }
        if listener_ready && let Ok((mut conn, _)) = listener.accept() {
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
                let maps = held.maps.each_ref().map(|m| m.as_raw_fd());
                let reply = format!("OK {}\n", held.mode);
                if send_with_fds(conn.as_fd(), reply.as_bytes(), &maps).is_ok() {
                    let _ = conn.set_read_timeout(None);
                    borrower = Some((conn, pid));
                }
            } else if verb.is_some() {
                // Asked to go, or to lend in another mode: detach first, so that the
                // asker's attach finds the interface free.
                held.detach();
                let _ = conn.write_all(b"GONE\n");
                for (_, sockets) in retiring {
                    close_in_background(sockets);
                }
                return;
            }
        }
    }
}

/// poll(2) on `fds` for input: which are readable (or closed).
fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Vec<bool> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
    // SAFETY: `polled` is an initialised array of `len()` pollfd structs that lives
    // across the call.
    let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, ms) };
    polled.iter().map(|p| n > 0 && p.revents != 0).collect()
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
