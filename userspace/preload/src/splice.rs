//! `splice(2)` between a stack socket and a pipe (proxies such as haproxy move bytes
//! this way). The kernel moves pages; here the bytes go through a buffer, and never more
//! than the other side takes at once, so nothing read is lost: a socket's bytes are
//! peeked, written to the pipe, and only what the pipe took is consumed; a pipe's bytes
//! are read only as far as the socket's send buffer has room, which a blocking splice
//! waits for. As Linux (`fs/splice.c`): unknown flags are `EINVAL`, a length of 0 is 0,
//! one side must be a pipe (else `EINVAL`), an offset on the pipe is `ESPIPE` and on
//! the socket `EINVAL`, `SPLICE_F_NONBLOCK` makes the pipe side non-blocking and the
//! socket keeps its own `O_NONBLOCK`. One writer per socket at a time is assumed (as
//! for the room a non-blocking write sees).
use crate::real::{real, set_errno};
use crate::table::{Sock, lookup};
use libc::{c_int, c_uint, loff_t, size_t, ssize_t};

/// SPLICE_F_MOVE | SPLICE_F_NONBLOCK | SPLICE_F_MORE | SPLICE_F_GIFT.
const SPLICE_F_ALL: c_uint = 0xf;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn splice(
    fd_in: c_int,
    off_in: *mut loff_t,
    fd_out: c_int,
    off_out: *mut loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    let (from, to) = (lookup(fd_in), lookup(fd_out));
    if from.is_none() && to.is_none() {
        // SAFETY: libc's splice with the caller's arguments.
        return unsafe {
            real!(splice: fn(c_int, *mut loff_t, c_int, *mut loff_t, size_t, c_uint) -> ssize_t)(
                fd_in, off_in, fd_out, off_out, len, flags,
            )
        };
    }
    if flags & !SPLICE_F_ALL != 0 {
        return fail(libc::EINVAL);
    }
    if len == 0 {
        return 0;
    }
    let (pipe_fd, pipe_offset, socket_offset) = match from {
        Some(_) => (fd_out, off_out, off_in),
        None => (fd_in, off_in, off_out),
    };
    if from.is_some() && to.is_some() || !is_pipe(pipe_fd) {
        return fail(libc::EINVAL);
    }
    if !pipe_offset.is_null() {
        return fail(libc::ESPIPE);
    }
    if !socket_offset.is_null() {
        // A socket cannot be read or written at an offset (no FMODE_PREAD/PWRITE).
        return fail(libc::EINVAL);
    }
    let fd_nonblocking = fd_flags(pipe_fd) & libc::O_NONBLOCK != 0;
    let pipe = Pipe {
        fd: pipe_fd,
        nonblocking: flags & libc::SPLICE_F_NONBLOCK != 0 || fd_nonblocking,
        fd_nonblocking,
    };
    crate::with_scratch(|buf| {
        let size = len.min(buf.len());
        let buf = &mut buf[..size];
        match (from, to) {
            (Some(sock), _) => socket_to_pipe(&sock, fd_in, &pipe, buf),
            (_, Some(sock)) => pipe_to_socket(&pipe, &sock, fd_out, buf),
            (None, None) => unreachable!("one side is a stack socket"),
        }
    })
}

/// The pipe side of a splice.
struct Pipe {
    fd: c_int,
    /// Its `O_NONBLOCK`, or `SPLICE_F_NONBLOCK`.
    nonblocking: bool,
    /// Its own `O_NONBLOCK` (a write to it then returns what fitted).
    fd_nonblocking: bool,
}

fn is_pipe(fd: c_int) -> bool {
    // SAFETY: an all-zero stat is a valid value for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the stat above.
    unsafe { libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO }
}

fn fd_flags(fd: c_int) -> c_int {
    // SAFETY: F_GETFL takes no pointer.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }.max(0)
}

/// Whether a kernel fd is ready for `events` now (a zero-timeout poll, libc's own).
fn ready_now(fd: c_int, events: libc::c_short) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the real poll, as the fd is the kernel's.
    let n =
        unsafe { real!(poll: fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int)(&mut p, 1, 0) };
    n > 0 && p.revents & (events | libc::POLLERR | libc::POLLHUP) != 0
}

/// Waits until the stack socket `fd` is ready for `events` (or has news: an error, the
/// end), through this library's `poll`, which turns the loop and sleeps as a program's
/// poll does. -1 with errno (EINTR) if a signal cut the wait short.
fn wait_for(fd: c_int, events: libc::c_short) -> c_int {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    unsafe { crate::hangup::poll(&mut p, 1, -1) }
}

/// The socket's bytes into the pipe: peeked, written, and consumed as far as written.
fn socket_to_pipe(sock: &Sock, fd: c_int, pipe: &Pipe, buf: &mut [u8]) -> ssize_t {
    if pipe.nonblocking && !ready_now(pipe.fd, libc::POLLOUT) {
        return fail(libc::EAGAIN);
    }
    // Bytes, the end (0) or an error; a blocking socket waits for them as a read does.
    let peeked = loop {
        let n = crate::recv_on(sock, buf, libc::MSG_PEEK | libc::MSG_DONTWAIT);
        if n >= 0 || crate::table::last_errno() != libc::EAGAIN || sock.nonblocking() {
            break n;
        }
        if wait_for(fd, libc::POLLIN) < 0 {
            return -1;
        }
    };
    if peeked <= 0 {
        return peeked;
    }
    let written = write_pipe(pipe, &buf[..peeked as usize]);
    if written <= 0 {
        return written;
    }
    // The bytes the pipe took leave the socket (they are there: we peeked them).
    let mut consumed = 0;
    while consumed < written as usize {
        let n = crate::recv_on(
            sock,
            &mut buf[consumed..written as usize],
            libc::MSG_DONTWAIT,
        );
        if n <= 0 {
            break;
        }
        consumed += n as usize;
    }
    written
}

/// As much of `bytes` as the pipe takes: all of it when blocking, else what fits now.
fn write_pipe(pipe: &Pipe, bytes: &[u8]) -> ssize_t {
    if !pipe.nonblocking || pipe.fd_nonblocking {
        // SAFETY: writes `bytes` (valid for their length) to the caller's pipe.
        return unsafe { libc::syscall(libc::SYS_write, pipe.fd, bytes.as_ptr(), bytes.len()) }
            as ssize_t;
    }
    // SPLICE_F_NONBLOCK on a blocking pipe: a pipe that polls writable has a free slot,
    // which takes PIPE_BUF bytes without waiting.
    let mut done = 0;
    while done < bytes.len() && ready_now(pipe.fd, libc::POLLOUT) {
        let piece = &bytes[done..bytes.len().min(done + libc::PIPE_BUF)];
        // SAFETY: as above, one piece.
        let n = unsafe { libc::syscall(libc::SYS_write, pipe.fd, piece.as_ptr(), piece.len()) };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    if done == 0 {
        fail(libc::EAGAIN)
    } else {
        done as ssize_t
    }
}

/// The pipe's bytes into the socket, never more than its send buffer has room for, so
/// the send that follows takes them all.
fn pipe_to_socket(pipe: &Pipe, sock: &Sock, fd: c_int, buf: &mut [u8]) -> ssize_t {
    let room = loop {
        // An empty send first: nothing to write to (not connected, failed, shut, or a
        // socket this process cannot use) is its errno; full is EAGAIN.
        let r = crate::send_on(sock, &[], libc::MSG_DONTWAIT);
        if r < 0 && crate::table::last_errno() != libc::EAGAIN {
            return r;
        }
        match room_in(sock) {
            0 => {}
            room => break room,
        }
        if sock.nonblocking() {
            return fail(libc::EAGAIN);
        }
        if wait_for(fd, libc::POLLOUT) < 0 {
            return -1;
        }
    };
    if pipe.nonblocking && !ready_now(pipe.fd, libc::POLLIN) {
        return fail(libc::EAGAIN);
    }
    let want = buf.len().min(room);
    // SAFETY: reads at most `want` bytes into `buf`; the caller's pipe (0: no writers).
    let got = unsafe { libc::syscall(libc::SYS_read, pipe.fd, buf.as_mut_ptr(), want) } as ssize_t;
    if got <= 0 {
        return got;
    }
    crate::send_on(sock, &buf[..got as usize], 0)
}

/// The socket's free send room, after a turn of the loop if there is none.
fn room_in(sock: &Sock) -> usize {
    match sock.send_space() {
        0 => {
            crate::inline::turn();
            sock.send_space()
        }
        room => room,
    }
}

fn fail(errno: c_int) -> ssize_t {
    set_errno(errno);
    -1
}
