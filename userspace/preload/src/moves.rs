//! Connections a parent shares with the children it forks, under `exec --share`
//! (docs/PRELOAD.md, "Moving a connection between processes"). Each process has its
//! own stack, so a connection lives in one of them: the child that first uses an
//! inherited connection takes it over from its parent.
//!
//! - **At fork** (`before_fork`, in the parent, while it has connections): a unix
//!   socket pair, one end for the child, one kept by the parent's mover thread with
//!   the connections the child may take. The child's end is close-on-exec, so the
//!   parent reads its end of stream when the child exits, dies or execs.
//! - **The child's first call** on an inherited connection sends `TAKE local remote`
//!   (`handover::take`); the parent's mover exports it from the parent's stack
//!   (`userspace::TcpStream::export`) and answers `OK length` and the bytes; the
//!   child's stack imports them and has the switch steer the connection to it.
//! - **The parent's close** of a connection a living child may still take sends no
//!   FIN (`kept_for_children`); it closes as the kernel's would once every child that
//!   held it closed it (`DROP`), exited or exec'd without taking it.
use crate::handover::{ANSWER_WITHIN, LINE_MAX, send_all};
use crate::real::real;
use crate::table::{self, Sock};
use libc::c_int;
use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};

type Tuple = (SocketAddr, SocketAddr);

/// The parent's end of one child's socket pair, and the connections that child may
/// still take.
struct Holder {
    end: OwnedFd,
    tuples: Vec<Tuple>,
    /// Bytes of a request line not yet whole.
    partial: Vec<u8>,
}

/// The mover of this process: its children's pair ends and the connections the
/// program closed that a child may still take.
pub struct Mover {
    /// The process whose thread serves this state (a child starts its own).
    pid: u32,
    holders: Vec<Holder>,
    kept: Vec<Arc<Sock>>,
    /// Written when a holder is added: the thread looks again.
    wake: OwnedFd,
}

static MOVER: Mutex<Option<Mover>> = Mutex::new(None);

/// The child's end of the pair made for the fork under way (-1: none).
static CHILD_END: AtomicI32 = AtomicI32::new(-1);

thread_local! {
    /// The mover's lock, held by the forking thread from `before_fork` until after
    /// the fork, so the child never inherits it locked by the mover thread.
    static HELD: RefCell<Option<MutexGuard<'static, Option<Mover>>>> = const { RefCell::new(None) };
}

fn lock() -> MutexGuard<'static, Option<Mover>> {
    MOVER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers the fork handlers (once per process image; children inherit them).
pub fn register_fork_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers plain `extern "C" fn()`s run around fork(2).
        unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork_in_parent), None) };
    });
}

/// In the parent, before fork: with `--share` and connections open, a socket pair
/// for the child, its end in `CHILD_END`.
extern "C" fn before_fork() {
    if !crate::config::switched() {
        return;
    }
    let _ = std::panic::catch_unwind(|| {
        let mut guard = lock();
        if crate::config::running().is_some() {
            let tuples = table::connections();
            if !tuples.is_empty()
                && let Some(child) = add_holder(&mut guard, tuples)
            {
                CHILD_END.store(child, Ordering::SeqCst);
            }
        }
        HELD.with(|h| *h.borrow_mut() = Some(guard));
    });
}

/// A socket pair whose parent end the mover serves with `tuples`: the child's end.
fn add_holder(mover: &mut Option<Mover>, tuples: Vec<Tuple>) -> Option<RawFd> {
    let pid = std::process::id();
    if mover.as_ref().is_none_or(|m| m.pid != pid) {
        let wake = crate::real::eventfd().ok()?;
        let wake_fd = wake.as_raw_fd();
        *mover = Some(Mover {
            pid,
            holders: Vec::new(),
            kept: Vec::new(),
            wake,
        });
        // It turns the loop: with every signal blocked, as the stack's own threads, so
        // no handler runs inside a turn or with a connection's lock held.
        SERVING.store(true, Ordering::Release);
        let started = crate::config::without_signals(|| {
            std::thread::Builder::new()
                .name("userspace-mover".into())
                .spawn(move || serve(wake_fd))
        });
        if started.is_err() {
            *mover = None;
            return None;
        }
    }
    let (parent, child) = UnixStream::pair().ok()?;
    let m = mover.as_mut()?;
    m.holders.push(Holder {
        end: parent.into(),
        tuples,
        partial: Vec::new(),
    });
    crate::real::set_counter(&m.wake, 0, 1);
    Some(std::os::fd::IntoRawFd::into_raw_fd(child))
}

/// In the parent after fork: its copy of the child's end goes (a failed fork's end
/// with it, so its holder ends at once).
extern "C" fn after_fork_in_parent() {
    let child = CHILD_END.swap(-1, Ordering::SeqCst);
    if child >= 0 {
        // SAFETY: our copy of the child's end, used by nothing else here.
        unsafe { libc::syscall(libc::SYS_close, child) };
    }
    let _ = HELD.try_with(|h| drop(h.borrow_mut().take()));
}

/// In the child after fork (before `table::adopt_after_fork`): the parent's mover state
/// is not this process's (its pair ends are closed, the sockets the parent kept are
/// left alone); returns this child's end to the parent, if the fork made one.
pub fn after_fork_in_child() -> Option<c_int> {
    let guard = HELD.try_with(|h| h.borrow_mut().take()).ok().flatten();
    let mut guard = guard.unwrap_or_else(lock);
    SERVING.store(false, Ordering::Release);
    if let Some(m) = guard.take() {
        for h in m.holders {
            drop(h.end);
        }
        // The parent's sockets talk to the parent's loop: never dropped here.
        std::mem::forget(m.kept);
        drop(m.wake);
    }
    drop(guard);
    let child = CHILD_END.swap(-1, Ordering::SeqCst);
    (child >= 0).then_some(child)
}

/// Whether this process serves children's requests (a fork shared connections).
static SERVING: AtomicBool = AtomicBool::new(false);

/// The mover's lock for a `close`, if this process serves children: held from taking
/// the fd out of the table until the socket is in `kept`, so a child's TAKE (which
/// looks in both under it) never falls between the two.
pub fn hold_for_close() -> Option<MutexGuard<'static, Option<Mover>>> {
    SERVING.load(Ordering::Acquire).then(lock)
}

/// The parent closes the last fd of `sock` (`held`: [`hold_for_close`]'s guard):
/// whether a child may still take its connection, in which case it is kept open (no
/// FIN) until none may.
pub fn kept_for_children(
    held: Option<&mut MutexGuard<'static, Option<Mover>>>,
    sock: &Arc<Sock>,
) -> bool {
    let Some(guard) = held else {
        return false;
    };
    let Some(tuple) = sock.connection() else {
        return false;
    };
    let Some(m) = guard.as_mut().filter(|m| m.pid == std::process::id()) else {
        return false;
    };
    if !m.holders.iter().any(|h| h.tuples.contains(&tuple)) {
        return false;
    }
    crate::config::say!(
        "the connection {} <- {}: closed here, kept for the child that may take it",
        tuple.0,
        tuple.1
    );
    m.kept.push(sock.clone());
    true
}

/// The mover thread: answers the children's requests.
fn serve(wake: RawFd) {
    let mut ready = Vec::new();
    loop {
        let mut fds = vec![libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        }];
        {
            let guard = lock();
            let Some(m) = guard.as_ref() else { return };
            fds.extend(m.holders.iter().map(|h| libc::pollfd {
                fd: h.end.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }));
        }
        // SAFETY: libc's own poll (not this library's, which would turn the loop) on
        // `fds`, a valid array of its length.
        let n = unsafe {
            real!(poll: fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int)(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                1000,
            )
        };
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            let mut count = 0u64;
            // SAFETY: reads 8 bytes into `count`; the eventfd is the mover's.
            unsafe { libc::syscall(libc::SYS_read, wake, &mut count as *mut u64, 8usize) };
        }
        ready.clear();
        ready.extend(fds[1..].iter().filter(|p| p.revents != 0).map(|p| p.fd));
        for &fd in &ready {
            serve_one(fd);
        }
    }
}

/// Reads what the child behind the pair end `fd` sent, and answers it.
fn serve_one(fd: RawFd) {
    let mut buf = [0u8; LINE_MAX];
    // SAFETY: reads at most `buf.len()` bytes into `buf`; the fd is open (the holder
    // owning it is only removed by this thread).
    let n = unsafe { libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) };
    if n < 0
        && matches!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINTR | libc::EAGAIN)
        )
    {
        return;
    }
    let lines = {
        let mut guard = lock();
        let Some(m) = guard.as_mut() else { return };
        let Some(i) = m.holders.iter().position(|h| h.end.as_raw_fd() == fd) else {
            return;
        };
        if n <= 0 {
            // The child ended, exec'd or closed its end: it takes nothing more.
            m.holders.swap_remove(i);
            let released = release(m);
            drop(guard);
            close_kept(released);
            return;
        }
        let holder = &mut m.holders[i];
        holder.partial.extend_from_slice(&buf[..n as usize]);
        let mut lines = Vec::new();
        while let Some(end) = holder.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = holder.partial.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line).trim().to_string());
        }
        if holder.partial.len() > LINE_MAX {
            holder.partial.clear();
        }
        lines
    };
    for line in lines {
        answer(fd, &line);
    }
}

/// One request of the child behind `fd`: `TAKE local remote` or `DROP local remote`.
fn answer(fd: RawFd, line: &str) {
    let mut words = line.split_whitespace();
    let verb = words.next();
    let tuple = match (
        words.next().and_then(|w| w.parse().ok()),
        words.next().and_then(|w| w.parse().ok()),
    ) {
        (Some(local), Some(remote)) => (local, remote),
        _ => return reply(fd, b"NO bad request\n", &[]),
    };
    let held = {
        let guard = lock();
        guard.as_ref().is_some_and(|m| {
            m.holders
                .iter()
                .any(|h| h.end.as_raw_fd() == fd && h.tuples.contains(&tuple))
        })
    };
    match verb {
        Some("DROP") => forget(Some(fd), tuple),
        Some("TAKE") if !held => reply(
            fd,
            b"NO the parent no longer has it for this process (another took it, or it closed)\n",
            &[],
        ),
        Some("TAKE") => {
            // Both places under the mover's lock: a close moves a socket from the
            // table to `kept` under it (see `hold_for_close`).
            let sock = {
                let guard = lock();
                table::find_connection(tuple.0, tuple.1).or_else(|| {
                    guard.as_ref().and_then(|m| {
                        m.kept
                            .iter()
                            .find(|s| s.connection() == Some(tuple))
                            .cloned()
                    })
                })
            };
            let given = match sock {
                Some(sock) => sock.give_away(),
                None => Err("the parent has no such connection".to_string()),
            };
            match given {
                Ok(bytes) => {
                    crate::config::say!(
                        "the connection {} <- {}: given to a child",
                        tuple.0,
                        tuple.1
                    );
                    // It is the child's now: no other process takes it, none closes it.
                    forget(None, tuple);
                    reply(fd, format!("OK {}\n", bytes.len()).as_bytes(), &bytes);
                }
                Err(why) => reply(fd, format!("NO {why}\n").as_bytes(), &[]),
            }
        }
        _ => reply(fd, b"NO unknown request\n", &[]),
    }
}

/// The holder `fd` (every holder for `None`: it moved) no longer takes `tuple`; a
/// kept socket nobody may take any more closes (one given away is only dropped: its
/// connection is not here any more, so nothing is sent).
fn forget(fd: Option<RawFd>, tuple: Tuple) {
    let released = {
        let mut guard = lock();
        let Some(m) = guard.as_mut() else { return };
        for h in &mut m.holders {
            if fd.is_none_or(|fd| h.end.as_raw_fd() == fd) {
                h.tuples.retain(|t| *t != tuple);
            }
        }
        release(m)
    };
    close_kept(released);
}

/// The kept sockets no holder may take any more, out of the list.
fn release(m: &mut Mover) -> Vec<Arc<Sock>> {
    let holders = &m.holders;
    let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut m.kept).into_iter().partition(|s| {
        s.connection()
            .is_none_or(|t| !holders.iter().any(|h| h.tuples.contains(&t)))
    });
    m.kept = kept;
    gone
}

/// Closes sockets the parent closed and no child took: as the kernel's last close.
fn close_kept(socks: Vec<Arc<Sock>>) {
    for sock in socks {
        if let Some((local, remote)) = sock.connection() {
            crate::config::say!("the connection {local} <- {remote}: no child took it: closed now");
        }
        sock.closing();
        drop(sock);
    }
    crate::inline::turn();
}

/// Writes an answer and its bytes to the child (blocking: it reads them at once).
fn reply(fd: RawFd, line: &[u8], bytes: &[u8]) {
    // SAFETY: a holder's end, open while its holder is listed; not closed by this.
    let end = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(fd) });
    let _ = end.set_write_timeout(Some(ANSWER_WITHIN));
    let _ = send_all(fd, line).and_then(|()| send_all(fd, bytes));
}
