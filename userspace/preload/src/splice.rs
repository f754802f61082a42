//! `splice(2)` between a stack socket and a pipe (proxies such as haproxy move bytes
//! this way). The kernel moves pages; here the bytes go through a buffer, and never more
//! than the other side takes at once, so nothing read is lost: a socket's bytes are
//! peeked, written to the pipe, and only what the pipe took is consumed; a pipe's bytes
//! are read only as far as the socket's send buffer has room (a non-blocking socket) or
//! a blocking send takes them all. As Linux: one side must be a pipe (else `EINVAL`),
//! offsets on either side are `ESPIPE`, `SPLICE_F_NONBLOCK` makes the pipe side
//! non-blocking and the socket keeps its own `O_NONBLOCK`.
use crate::real::{real, set_errno};
use crate::table::{Sock, lookup};
use libc::{c_int, c_uint, loff_t, size_t, ssize_t};

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
    let pipe_fd = if from.is_some() { fd_out } else { fd_in };
    if from.is_some() && to.is_some() || !is_pipe(pipe_fd) {
        return fail(libc::EINVAL);
    }
    if !off_in.is_null() || !off_out.is_null() {
        return fail(libc::ESPIPE);
    }
    if len == 0 {
        return 0;
    }
    let pipe = Pipe {
        fd: pipe_fd,
        nonblocking: flags & libc::SPLICE_F_NONBLOCK != 0
            || fd_flags(pipe_fd) & libc::O_NONBLOCK != 0,
    };
    crate::with_scratch(|buf| {
        let size = len.min(buf.len());
        let buf = &mut buf[..size];
        match (from, to) {
            (Some(sock), _) => socket_to_pipe(&sock, &pipe, buf),
            (_, Some(sock)) => pipe_to_socket(&pipe, &sock, buf),
            (None, None) => unreachable!("one side is a stack socket"),
        }
    })
}

/// The pipe side of a splice.
struct Pipe {
    fd: c_int,
    /// Its `O_NONBLOCK`, or `SPLICE_F_NONBLOCK`.
    nonblocking: bool,
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

/// Whether `fd` is ready for `events` now (a zero-timeout poll, through libc's own).
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

/// The socket's bytes into the pipe: peeked, written, and consumed as far as written.
fn socket_to_pipe(sock: &Sock, pipe: &Pipe, buf: &mut [u8]) -> ssize_t {
    if pipe.nonblocking && !ready_now(pipe.fd, libc::POLLOUT) {
        return fail(libc::EAGAIN);
    }
    // Waits for bytes as a read does (the socket's own O_NONBLOCK); 0 at the end.
    let peeked = crate::recv_on(sock, buf, libc::MSG_PEEK);
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
    let blocking_fd = fd_flags(pipe.fd) & libc::O_NONBLOCK == 0;
    if !pipe.nonblocking || !blocking_fd {
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

/// The pipe's bytes into the socket, never more than the socket takes.
fn pipe_to_socket(pipe: &Pipe, sock: &Sock, buf: &mut [u8]) -> ssize_t {
    let want = if sock.nonblocking() {
        let room = room_in(sock);
        if room == 0 {
            // Full, or no connection to write to: an empty send says which errno.
            let r = crate::send_on(sock, &[], 0);
            return if r < 0 { r } else { fail(libc::EAGAIN) };
        }
        buf.len().min(room)
    } else {
        // A blocking send takes all it is given.
        buf.len()
    };
    if pipe.nonblocking && !ready_now(pipe.fd, libc::POLLIN) {
        return fail(libc::EAGAIN);
    }
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
