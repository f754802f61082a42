//! `LD_PRELOAD` library that puts an unmodified program's TCP over IPv4 and IPv6 on
//! the kernel-bypass stack; `userspace exec -- PROGRAM` loads it.
//!
//! It takes the POSIX socket calls (`socket`, `connect`, `bind`, `listen`, `accept`,
//! reads and writes, options, `fcntl`/`ioctl`, `dup`, `close`) and serves those of TCP
//! sockets (AF_INET and AF_INET6, see `addr`) that go to a non-loopback address other
//! than the stack's own on the stack, through the library's public API only.
//! Everything else (UDP, so DNS keeps working, unix sockets, loopback, link-local
//! IPv6) goes to libc unchanged. A socket is
//! decided at `connect` or `bind`; until then it is the stack's, and if the kernel
//! takes it, its fd becomes a kernel socket with the options set so far.
//!
//! Each stack socket has a real fd, an eventfd whose readiness the stack's poll loop
//! drives (see `table`), so the kernel's own `poll`, `select` and `epoll` see stack
//! sockets and kernel fds in one set, level- and edge-triggered. `poll`, `ppoll` and
//! `epoll_wait` are wrapped only to add what an eventfd cannot show: hang-up, error
//! and the peer's FIN (see `hangup`).
//!
//! The stack starts in the process on the first stack socket, configured from the
//! `USERSPACE_*` environment variables (see `config`); `USERSPACE_VERBOSE=1` says
//! where each socket went and why.
//!
//! # Unsafe
//!
//! The project keeps `unsafe` in the library's `device/` module; an FFI preload
//! library cannot avoid it: it defines libc's functions, reads the caller's pointers,
//! and finds libc's own definitions with `dlsym`. It is kept to this crate, and each
//! block says why it holds. No panic crosses the C boundary: each entry point catches
//! it and fails with `EIO`. The functions are `unsafe extern "C"` with libc's
//! contracts (valid pointers of the lengths given), hence no `# Safety` sections.
#![allow(clippy::missing_safety_doc)]

mod addr;
mod config;
mod fork;
mod handover;
mod hangup;
mod inline;
mod moves;
mod ready;
mod real;
mod signals;
mod splice;
mod table;
mod tcpinfo;

use config::say;
use libc::{c_int, c_ulong, c_void, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};
use real::{real, set_errno};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use table::{Res, Route, Sock, lookup};

/// Runs a call on a stack socket: its value, or `failed` with errno set (EIO for a
/// panic, which never crosses into C).
fn run<T>(failed: T, call: impl FnOnce() -> Res<T>) -> T {
    let _entered = inline::enter();
    // A handler runs after the call (or in its sleeps, see `signals::around_sleep`), never
    // while it holds a lock.
    let _critical = signals::critical();
    if config::forked() {
        used_after_fork();
        set_errno(libc::EOPNOTSUPP);
        return failed;
    }
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(v)) => v,
        Ok(Err(errno)) => {
            set_errno(errno);
            failed
        }
        Err(_) => {
            set_errno(libc::EIO);
            failed
        }
    }
}

/// Says once per process that a forked child used a stack socket, which it cannot yet.
fn used_after_fork() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        eprintln!(
            "userspace-preload: process {} used a stack socket its parent opened before fork: the stack serves only the process that started it (EOPNOTSUPP; see docs/PRELOAD.md)",
            std::process::id()
        )
    });
}

/// A byte slice over C's `(buf, len)`; empty for a null pointer.
unsafe fn bytes<'a>(buf: *const c_void, len: usize) -> &'a [u8] {
    if buf.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the caller passes a readable buffer of `len` bytes (libc's contract).
    unsafe { std::slice::from_raw_parts(buf.cast(), len) }
}

unsafe fn bytes_mut<'a>(buf: *mut c_void, len: usize) -> &'a mut [u8] {
    if buf.is_null() || len == 0 {
        return &mut [];
    }
    // SAFETY: the caller passes a writable buffer of `len` bytes (libc's contract).
    unsafe { std::slice::from_raw_parts_mut(buf.cast(), len) }
}

/// The address in C's `(addr, len)` for a socket of `family` (see `addr::parse`).
unsafe fn addr_from(family: c_int, addr: *const sockaddr, len: socklen_t) -> Res<SocketAddr> {
    if addr.is_null() {
        return Err(libc::EINVAL);
    }
    // SAFETY: the caller's address of `len` bytes (libc's contract).
    let bytes = unsafe { bytes(addr.cast(), len as usize) };
    addr::parse(family, bytes)
}

/// Writes `at` to C's `(addr, *len)` for a socket of `family` as the kernel does:
/// truncated to the room given, `*len` set to the full size.
unsafe fn addr_to(family: c_int, at: SocketAddr, addr: *mut sockaddr, len: *mut socklen_t) {
    if addr.is_null() || len.is_null() {
        return;
    }
    let (bytes, full) = addr::encode(family, at);
    // SAFETY: `len` points to the caller's socklen_t; `addr` has `*len` bytes of room.
    unsafe {
        let room = (*len as usize).min(full);
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr.cast::<u8>(), room);
        *len = full as socklen_t;
    }
}

/// After a failed write: SIGPIPE for EPIPE unless MSG_NOSIGNAL, as the kernel.
fn pipe_signal(result: ssize_t, flags: c_int) -> ssize_t {
    if result < 0 && table::last_errno() == libc::EPIPE && flags & libc::MSG_NOSIGNAL == 0 {
        // SAFETY: raise takes no pointers; the errno is kept around it.
        unsafe { libc::raise(libc::SIGPIPE) };
        set_errno(libc::EPIPE);
    }
    result
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    let kind = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    let tcp = protocol == 0 || protocol == libc::IPPROTO_TCP;
    let inet = matches!(domain, libc::AF_INET | libc::AF_INET6);
    if inet && kind == libc::SOCK_STREAM && tcp {
        return run(-1, || {
            let (fd, _) = Sock::open(
                domain,
                ty & libc::SOCK_NONBLOCK != 0,
                ty & libc::SOCK_CLOEXEC != 0,
            )?;
            let over = if domain == libc::AF_INET6 {
                "IPv6 (and IPv4, V4-mapped)"
            } else {
                "IPv4"
            };
            say!("fd {fd}: TCP over {over}: the stack's unless it connects or binds to loopback");
            Ok(fd)
        });
    }
    // SAFETY: libc's socket with the caller's arguments.
    let fd = unsafe { real!(socket: fn(c_int, c_int, c_int) -> c_int)(domain, ty, protocol) };
    if matches!(domain, libc::AF_INET | libc::AF_INET6) {
        let why = match kind {
            libc::SOCK_DGRAM => "UDP",
            _ => "not TCP",
        };
        say!("fd {fd}: kernel ({why})");
    }
    fd
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if let Some(sock) = lookup(fd) {
        // SAFETY: the caller's address of `len` bytes.
        let to = unsafe { addr_from(sock.family(), addr, len) };
        match run(None, || sock.connect(fd, to?).map(Some)) {
            Some(Route::Done) => return 0,
            None => return -1,
            Some(Route::Kernel) => {}
        }
    }
    // SAFETY: libc's connect with the caller's arguments.
    unsafe { real!(connect: fn(c_int, *const sockaddr, socklen_t) -> c_int)(fd, addr, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if let Some(sock) = lookup(fd) {
        // SAFETY: the caller's address of `len` bytes.
        let at = unsafe { addr_from(sock.family(), addr, len) };
        match run(None, || sock.bind(fd, at?).map(Some)) {
            Some(Route::Done) => return 0,
            None => return -1,
            Some(Route::Kernel) => {}
        }
    }
    // SAFETY: libc's bind with the caller's arguments.
    unsafe { real!(bind: fn(c_int, *const sockaddr, socklen_t) -> c_int)(fd, addr, len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    match lookup(fd) {
        Some(sock) => run(-1, || sock.listen(fd, backlog).map(|()| 0)),
        // SAFETY: libc's listen with the caller's arguments.
        None => unsafe { real!(listen: fn(c_int, c_int) -> c_int)(fd, backlog) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    match lookup(fd) {
        Some(sock) => run(-1, || {
            let (new, peer) = sock.accept(fd, flags)?;
            // SAFETY: the caller's address buffer and its length.
            unsafe { addr_to(sock.family(), peer, addr, len) };
            Ok(new)
        }),
        // SAFETY: libc's accept4 with the caller's arguments.
        None => unsafe {
            real!(accept4: fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int)(
                fd, addr, len, flags,
            )
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match lookup(fd) {
        // SAFETY: the same arguments, as accept4 without flags.
        Some(_) => unsafe { accept4(fd, addr, len, 0) },
        // SAFETY: libc's accept with the caller's arguments.
        None => unsafe {
            real!(accept: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int)(fd, addr, len)
        },
    }
}

fn recv_on(sock: &Sock, buf: &mut [u8], flags: c_int) -> ssize_t {
    run(-1, || sock.recv(buf, flags).map(|n| n as ssize_t))
}

fn send_on(sock: &Sock, buf: &[u8], flags: c_int) -> ssize_t {
    pipe_signal(
        run(-1, || sock.send(buf, flags).map(|n| n as ssize_t)),
        flags,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    match lookup(fd) {
        // SAFETY: the caller's buffer of `count` bytes.
        Some(sock) => recv_on(&sock, unsafe { bytes_mut(buf, count) }, 0),
        // SAFETY: libc's read with the caller's arguments.
        None => unsafe { real!(read: fn(c_int, *mut c_void, size_t) -> ssize_t)(fd, buf, count) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    size: size_t,
) -> ssize_t {
    match lookup(fd) {
        // SAFETY: the caller's buffer of `count` bytes (the fortify check is libc's).
        Some(sock) => recv_on(&sock, unsafe { bytes_mut(buf, count.min(size)) }, 0),
        // SAFETY: libc's __read_chk with the caller's arguments.
        None => unsafe {
            real!(__read_chk: fn(c_int, *mut c_void, size_t, size_t) -> ssize_t)(
                fd, buf, count, size,
            )
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    match lookup(fd) {
        // SAFETY: the caller's buffer of `count` bytes.
        Some(sock) => send_on(&sock, unsafe { bytes(buf, count) }, 0),
        // SAFETY: libc's write with the caller's arguments.
        None => unsafe {
            real!(write: fn(c_int, *const c_void, size_t) -> ssize_t)(fd, buf, count)
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    match lookup(fd) {
        // SAFETY: the caller's buffer of `len` bytes.
        Some(sock) => recv_on(&sock, unsafe { bytes_mut(buf, len) }, flags),
        // SAFETY: libc's recv with the caller's arguments.
        None => unsafe {
            real!(recv: fn(c_int, *mut c_void, size_t, c_int) -> ssize_t)(fd, buf, len, flags)
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    size: size_t,
    flags: c_int,
) -> ssize_t {
    match lookup(fd) {
        // SAFETY: the caller's buffer of `len` bytes.
        Some(sock) => recv_on(&sock, unsafe { bytes_mut(buf, len.min(size)) }, flags),
        // SAFETY: libc's __recv_chk with the caller's arguments.
        None => unsafe {
            real!(__recv_chk: fn(c_int, *mut c_void, size_t, size_t, c_int) -> ssize_t)(
                fd, buf, len, size, flags,
            )
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    match lookup(fd) {
        // SAFETY: the caller's buffer of `len` bytes.
        Some(sock) => send_on(&sock, unsafe { bytes(buf, len) }, flags),
        // SAFETY: libc's send with the caller's arguments.
        None => unsafe {
            real!(send: fn(c_int, *const c_void, size_t, c_int) -> ssize_t)(fd, buf, len, flags)
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addr_len: *mut socklen_t,
) -> ssize_t {
    match lookup(fd) {
        Some(sock) => {
            // SAFETY: the caller's buffer of `len` bytes.
            let n = recv_on(&sock, unsafe { bytes_mut(buf, len) }, flags);
            if n >= 0 && !addr.is_null() && !addr_len.is_null() {
                // SAFETY: the caller's length; TCP gives no source address, as Linux.
                unsafe { *addr_len = 0 };
            }
            n
        }
        // SAFETY: libc's recvfrom with the caller's arguments.
        None => unsafe {
            real!(recvfrom: fn(c_int, *mut c_void, size_t, c_int, *mut sockaddr, *mut socklen_t) -> ssize_t)(
                fd, buf, len, flags, addr, addr_len,
            )
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    size: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addr_len: *mut socklen_t,
) -> ssize_t {
    // SAFETY: the same arguments, the length bounded by the buffer's size.
    unsafe { recvfrom(fd, buf, len.min(size), flags, addr, addr_len) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    addr_len: socklen_t,
) -> ssize_t {
    match lookup(fd) {
        // SAFETY: the caller's buffer; a connected TCP socket ignores the address.
        Some(sock) => send_on(&sock, unsafe { bytes(buf, len) }, flags),
        // SAFETY: libc's sendto with the caller's arguments.
        None => unsafe {
            real!(sendto: fn(c_int, *const c_void, size_t, c_int, *const sockaddr, socklen_t) -> ssize_t)(
                fd, buf, len, flags, addr, addr_len,
            )
        },
    }
}

/// The caller's iovecs as a slice.
unsafe fn iovecs<'a>(iov: *const iovec, count: usize) -> &'a [iovec] {
    if iov.is_null() || count == 0 {
        return &[];
    }
    // SAFETY: the caller passes `count` iovecs (libc's contract).
    unsafe { std::slice::from_raw_parts(iov, count) }
}

/// Reads into the iovecs in turn: the first read as asked, the rest only what is there.
fn recv_vectored(sock: &Sock, iov: &[iovec], flags: c_int) -> ssize_t {
    let mut total: ssize_t = 0;
    for v in iov {
        let flags = if total > 0 {
            flags | libc::MSG_DONTWAIT
        } else {
            flags
        };
        // SAFETY: each iovec is a writable buffer of its length (libc's contract).
        let buf = unsafe { bytes_mut(v.iov_base, v.iov_len) };
        if buf.is_empty() {
            continue;
        }
        let n = recv_on(sock, buf, flags);
        if n < 0 {
            return if total > 0 { total } else { n };
        }
        total += n;
        if (n as usize) < buf.len() || flags & libc::MSG_PEEK != 0 {
            break;
        }
    }
    total
}

/// Writes the iovecs in turn, stopping at the first short write.
fn send_vectored(sock: &Sock, iov: &[iovec], flags: c_int) -> ssize_t {
    let mut total: ssize_t = 0;
    for v in iov {
        // SAFETY: each iovec is a readable buffer of its length (libc's contract).
        let buf = unsafe { bytes(v.iov_base, v.iov_len) };
        if buf.is_empty() {
            continue;
        }
        let n = send_on(
            sock,
            buf,
            flags | if total > 0 { libc::MSG_NOSIGNAL } else { 0 },
        );
        if n < 0 {
            return if total > 0 { total } else { n };
        }
        total += n;
        if (n as usize) < buf.len() {
            break;
        }
    }
    total
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t {
    match lookup(fd) {
        // SAFETY: the caller's iovecs.
        Some(sock) => recv_vectored(&sock, unsafe { iovecs(iov, count.max(0) as usize) }, 0),
        // SAFETY: libc's readv with the caller's arguments.
        None => unsafe { real!(readv: fn(c_int, *const iovec, c_int) -> ssize_t)(fd, iov, count) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t {
    match lookup(fd) {
        // SAFETY: the caller's iovecs.
        Some(sock) => send_vectored(&sock, unsafe { iovecs(iov, count.max(0) as usize) }, 0),
        // SAFETY: libc's writev with the caller's arguments.
        None => unsafe { real!(writev: fn(c_int, *const iovec, c_int) -> ssize_t)(fd, iov, count) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    match lookup(fd) {
        Some(sock) if !msg.is_null() => {
            // SAFETY: the caller's msghdr, valid and writable.
            let msg = unsafe { &mut *msg };
            // SAFETY: its iovecs.
            let iov = unsafe { iovecs(msg.msg_iov, msg.msg_iovlen) };
            let n = recv_vectored(&sock, iov, flags);
            if n >= 0 {
                // TCP has no source address and no control data here.
                msg.msg_namelen = 0;
                msg.msg_controllen = 0;
                msg.msg_flags = 0;
            }
            n
        }
        Some(_) => run(-1, || Err(libc::EFAULT)),
        // SAFETY: libc's recvmsg with the caller's arguments.
        None => unsafe { real!(recvmsg: fn(c_int, *mut msghdr, c_int) -> ssize_t)(fd, msg, flags) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    match lookup(fd) {
        Some(sock) if !msg.is_null() => {
            // SAFETY: the caller's msghdr and its iovecs.
            let iov = unsafe { iovecs((*msg).msg_iov, (*msg).msg_iovlen) };
            send_vectored(&sock, iov, flags)
        }
        Some(_) => run(-1, || Err(libc::EFAULT)),
        // SAFETY: libc's sendmsg with the caller's arguments.
        None => unsafe {
            real!(sendmsg: fn(c_int, *const msghdr, c_int) -> ssize_t)(fd, msg, flags)
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    match lookup(fd) {
        Some(sock) => run(-1, || sock.shutdown(how).map(|()| 0)),
        // SAFETY: libc's shutdown with the caller's arguments.
        None => unsafe { real!(shutdown: fn(c_int, c_int) -> c_int)(fd, how) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let _entered = inline::enter();
    hangup::forget(fd);
    if lookup(fd).is_some() {
        close_stack_socket(fd);
    }
    // SAFETY: libc's close with the caller's fd (the eventfd, for a stack socket).
    unsafe { real!(close: fn(c_int) -> c_int)(fd) }
}

/// The library's part of closing `fd`, a stack socket's: the socket closes with its
/// last fd (FIN, or RST with a zero linger), unless a child may still take it over.
fn close_stack_socket(fd: c_int) {
    let _critical = signals::critical();
    let mut mover = moves::hold_for_close();
    if let Some(sock) = table::remove(fd) {
        if config::forked() {
            // Its state belongs to the parent's poll loop: leave it alone.
            std::mem::forget(sock);
        } else {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                // Counted per fd, not by clones another thread may hold a moment.
                let last = sock.no_fds_left();
                let kept = last && moves::kept_for_children(mover.as_mut(), &sock);
                drop(mover.take());
                if kept {
                    return;
                }
                if last {
                    sock.closing();
                }
                drop(sock);
                // The FIN (or RST) leaves now (inline).
                if last {
                    inline::turn();
                }
            }));
        }
    }
}

/// `_exit` (what a forked child calls after its work, `os._exit` in Python): as at
/// `exit`, the stack's connections get their linger time to deliver what was written
/// to them, as the kernel keeps sending for a process that is gone.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _exit(status: c_int) -> ! {
    config::before_exit();
    // SAFETY: libc's _exit, which does not return.
    unsafe { real!(_exit: fn(c_int) -> ())(status) };
    unreachable!("_exit returned")
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match lookup(fd) {
        Some(sock) => run(-1, || {
            // SAFETY: the caller's address buffer and length.
            unsafe { addr_to(sock.family(), sock.local_addr(), addr, len) };
            Ok(0)
        }),
        // SAFETY: libc's getsockname with the caller's arguments.
        None => unsafe {
            real!(getsockname: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int)(fd, addr, len)
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    match lookup(fd) {
        Some(sock) => run(-1, || {
            let peer = sock.peer_addr()?;
            // SAFETY: the caller's address buffer and length.
            unsafe { addr_to(sock.family(), peer, addr, len) };
            Ok(0)
        }),
        // SAFETY: libc's getpeername with the caller's arguments.
        None => unsafe {
            real!(getpeername: fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int)(fd, addr, len)
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: socklen_t,
) -> c_int {
    match lookup(fd) {
        Some(sock) => run(-1, || {
            // SAFETY: the caller's option value of `len` bytes.
            let value = unsafe { bytes(value, len as usize) };
            sock.set_option(fd, level, name, value).map(|()| 0)
        }),
        // SAFETY: libc's setsockopt with the caller's arguments.
        None => unsafe {
            real!(setsockopt: fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int)(
                fd, level, name, value, len,
            )
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    match lookup(fd) {
        Some(sock) => run(-1, || {
            if value.is_null() || len.is_null() {
                return Err(libc::EFAULT);
            }
            let bytes = sock.option(level, name)?;
            // SAFETY: the caller's length, and a value buffer of that many bytes.
            unsafe {
                let n = (*len as usize).min(bytes.len());
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), value.cast::<u8>(), n);
                *len = n as socklen_t;
            }
            Ok(0)
        }),
        // SAFETY: libc's getsockopt with the caller's arguments.
        None => unsafe {
            real!(getsockopt: fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int)(
                fd, level, name, value, len,
            )
        },
    }
}

/// `fcntl` on a stack socket: the status flags are the socket's; the fd flags and
/// duplicates are the kernel's, on the eventfd.
fn fcntl_on(sock: std::sync::Arc<Sock>, fd: c_int, cmd: c_int, arg: usize) -> c_int {
    match cmd {
        libc::F_GETFL => {
            libc::O_RDWR
                | if sock.nonblocking() {
                    libc::O_NONBLOCK
                } else {
                    0
                }
        }
        libc::F_SETFL => {
            sock.set_nonblocking(arg as c_int & libc::O_NONBLOCK != 0);
            0
        }
        _ => {
            // SAFETY: fcntl's other commands on the eventfd, with the caller's argument.
            let r = unsafe { libc::syscall(libc::SYS_fcntl, fd, cmd, arg) } as c_int;
            if r >= 0 && matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC) {
                table::insert(r, sock);
            }
            if r < 0 {
                set_errno(table::last_errno());
            }
            r
        }
    }
}

// fcntl and ioctl are variadic in C; their one optional argument travels in the
// register of a third integer argument, so a fixed third parameter receives it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    match lookup(fd) {
        Some(sock) => run(-1, || Ok(fcntl_on(sock, fd, cmd, arg))),
        // SAFETY: libc's fcntl with the caller's arguments.
        None => unsafe { real!(fcntl: fn(c_int, c_int, usize) -> c_int)(fd, cmd, arg) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    match lookup(fd) {
        Some(sock) => run(-1, || Ok(fcntl_on(sock, fd, cmd, arg))),
        // SAFETY: libc's fcntl64 with the caller's arguments.
        None => unsafe { real!(fcntl64: fn(c_int, c_int, usize) -> c_int)(fd, cmd, arg) },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: usize) -> c_int {
    let Some(sock) = lookup(fd) else {
        // SAFETY: libc's ioctl with the caller's arguments.
        return unsafe { real!(ioctl: fn(c_int, c_ulong, usize) -> c_int)(fd, request, arg) };
    };
    run(-1, || {
        let int = arg as *mut c_int;
        if int.is_null() {
            return Err(libc::EFAULT);
        }
        match request {
            libc::FIONBIO => {
                // SAFETY: FIONBIO's argument points to an int.
                sock.set_nonblocking(unsafe { *int } != 0);
                Ok(0)
            }
            libc::FIONREAD => {
                // SAFETY: FIONREAD's argument points to a writable int.
                unsafe { *int = sock.bytes_to_read().min(c_int::MAX as usize) as c_int };
                Ok(0)
            }
            _ => Err(libc::ENOTTY),
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: libc's dup with the caller's fd.
    let new = unsafe { real!(dup: fn(c_int) -> c_int)(fd) };
    if new >= 0
        && let Some(sock) = lookup(fd)
    {
        table::insert(new, sock);
    }
    new
}

/// dup2/dup3: `new` stops being what it was; it is `old`'s socket if `old` is one.
fn after_dup(old: c_int, new: c_int, result: c_int) -> c_int {
    if result >= 0 && old != new {
        let sock = lookup(old);
        drop(table::remove(new));
        if let Some(sock) = sock {
            table::insert(new, sock);
        }
    }
    result
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: libc's dup2 with the caller's fds.
    let r = unsafe { real!(dup2: fn(c_int, c_int) -> c_int)(old, new) };
    after_dup(old, new, r)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: libc's dup3 with the caller's fds.
    let r = unsafe { real!(dup3: fn(c_int, c_int, c_int) -> c_int)(old, new, flags) };
    after_dup(old, new, r)
}

/// `sendfile` to a stack socket: the file's bytes through a buffer into the stream,
/// from `*offset` (then moved on) or the file's position (then moved by what was sent).
fn sendfile_on(sock: &Sock, in_fd: c_int, offset: *mut libc::off_t, count: size_t) -> ssize_t {
    with_scratch(|buf| sendfile_through(sock, in_fd, offset, count, buf))
}

/// Runs `f` on this thread's 64 KiB copy buffer (`sendfile`, `splice`).
fn with_scratch<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    const CHUNK: usize = 64 << 10;
    // One buffer per thread, zeroed once: zeroing 64 KiB on every call cost nginx 3% of
    // its CPU serving small files.
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; CHUNK]);
    }
    let mut f = Some(f);
    // Re-entered (from a signal handler) or during thread exit: a buffer of its own.
    BUFFER
        .try_with(|cell| {
            cell.try_borrow_mut()
                .ok()
                .map(|mut buf| (f.take().expect("called once"))(&mut buf))
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| (f.take().expect("not called yet"))(&mut vec![0; CHUNK]))
}

fn sendfile_through(
    sock: &Sock,
    in_fd: c_int,
    offset: *mut libc::off_t,
    count: size_t,
    buf: &mut [u8],
) -> ssize_t {
    let mut sent: usize = 0;
    while sent < count {
        let want = (count - sent).min(buf.len());
        let got = if offset.is_null() {
            // SAFETY: reads at most `want` bytes into `buf`; in_fd is the caller's.
            unsafe { libc::syscall(libc::SYS_read, in_fd, buf.as_mut_ptr(), want) as ssize_t }
        } else {
            // SAFETY: as above, at the caller's offset (a valid off_t pointer).
            unsafe { libc::pread(in_fd, buf.as_mut_ptr().cast(), want, *offset) }
        };
        if got <= 0 {
            return if sent > 0 { sent as ssize_t } else { got };
        }
        let got = got as usize;
        let n = send_on(sock, &buf[..got], 0);
        let wrote = n.max(0) as usize;
        if offset.is_null() {
            if wrote < got {
                // SAFETY: lseek takes no pointers; puts back what was read, not sent.
                unsafe { libc::lseek(in_fd, -((got - wrote) as libc::off_t), libc::SEEK_CUR) };
            }
        } else {
            // SAFETY: the caller's valid offset pointer.
            unsafe { *offset += wrote as libc::off_t };
        }
        if n < 0 {
            return if sent > 0 { sent as ssize_t } else { n };
        }
        sent += wrote;
        if wrote < got {
            break;
        }
    }
    sent as ssize_t
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut libc::off_t,
    count: size_t,
) -> ssize_t {
    match lookup(out_fd) {
        Some(sock) => sendfile_on(&sock, in_fd, offset, count),
        // SAFETY: libc's sendfile with the caller's arguments.
        None => unsafe {
            real!(sendfile: fn(c_int, c_int, *mut libc::off_t, size_t) -> ssize_t)(
                out_fd, in_fd, offset, count,
            )
        },
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut libc::off_t,
    count: size_t,
) -> ssize_t {
    // SAFETY: on 64-bit Linux sendfile64 is sendfile (off_t is 64 bits).
    unsafe { sendfile(out_fd, in_fd, offset, count) }
}
