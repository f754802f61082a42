//! Several programs on one interface: the frame rings between a process's stack and the
//! interface's switch (see docs/PRELOAD.md).
//!
//! One process, the switch (`userspace __xdp-switch`, started by the first
//! `userspace exec --share`), owns the XDP program and the AF_XDP sockets of every
//! queue. Each client process runs its own stack over a [`SwitchPort`]: two
//! single-producer single-consumer rings of frames in a memfd both processes map (RX:
//! the switch produces, TX: the client does), and two eventfds that wake a side that
//! sleeps. The control connection (a unix socket named for the interface) carries the
//! client's lease: its slot, its slice of the stack's ephemeral ports, its listening
//! ports. The switch ends the lease when the connection closes, whatever ended the
//! process.
use crate::device::Device;
use crate::wire::MacAddr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::sync::atomic::{AtomicU32, Ordering};

/// The hidden first argument that makes the `userspace` binary run as a switch.
pub const SWITCH_ARG: &str = "__xdp-switch";
/// Frames in the RX ring (the switch to the client).
pub const RX_SLOTS: u32 = 256;
/// Frames in the TX ring (the client to the switch).
pub const TX_SLOTS: u32 = 512;
/// Largest frame the RX ring carries: a put-together multi-buffer packet.
pub const RX_FRAME: usize = 65_536 + 256;
/// Largest frame the TX ring carries: one UMEM frame.
pub const TX_FRAME: usize = 2048;
/// Most clients of one switch.
pub const SLOTS: usize = 16;

const RX_STRIDE: usize = 8 + RX_FRAME;
const TX_STRIDE: usize = 8 + TX_FRAME;
/// The header: one index or flag per cache line.
const HEADER: usize = 4096;
const RX_HEAD: usize = 0;
const RX_TAIL: usize = 64;
const TX_HEAD: usize = 128;
const TX_TAIL: usize = 192;
const CLIENT_SLEEPING: usize = 256;
const SWITCH_SLEEPING: usize = 320;
const RX_BASE: usize = HEADER;
const TX_BASE: usize = RX_BASE + RX_SLOTS as usize * RX_STRIDE;
/// Bytes of the shared memory.
pub const SHM_LEN: usize = TX_BASE + TX_SLOTS as usize * TX_STRIDE;

/// The abstract unix socket name of the switch of interface `ifindex` (abstract names
/// are per network namespace).
pub fn address(ifindex: u32) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("userspace-switch/{ifindex}"))
}

/// The two rings in a shared mapping of a memfd.
pub struct Rings {
    ptr: *mut u8,
    memfd: OwnedFd,
}

// SAFETY: the mapping is plain memory; each index has one writer (the ring's producer
// or consumer), and a slot belongs to the producer until the head passes it.
unsafe impl Send for Rings {}

impl Rings {
    /// New, empty rings in a fresh memfd (the client makes them).
    pub fn create() -> io::Result<Rings> {
        let memfd = rustix::fs::memfd_create(c"userspace-switch", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&memfd, SHM_LEN as u64)?;
        Rings::map(memfd)
    }

    /// The rings of a memfd the client handed over (the switch's side).
    pub fn map(memfd: OwnedFd) -> io::Result<Rings> {
        use rustix::mm::{MapFlags, ProtFlags};
        if rustix::fs::fstat(&memfd)?.st_size < SHM_LEN as i64 {
            return Err(io::Error::other("the shared memory is too small"));
        }
        // SAFETY: a new shared mapping chosen by the kernel; nothing else in the
        // process refers to that range yet.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                SHM_LEN,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &memfd,
                0,
            )
        }?;
        Ok(Rings {
            ptr: ptr.cast(),
            memfd,
        })
    }

    /// The memfd, to hand to the switch.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is one of the header's aligned words, inside the mapping,
        // which lives as long as `self`; the other process touches it atomically too.
        unsafe { &*self.ptr.add(offset).cast::<AtomicU32>() }
    }

    /// The slot `index` of the ring at `base` with `stride` bytes per slot: its length
    /// word and its bytes.
    ///
    /// # Safety
    /// The caller must own the slot (the producer between its head and the tail plus
    /// the size, the consumer between its tail and the head) and hold no other borrow
    /// of it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slot(&self, base: usize, stride: usize, index: u32) -> (&AtomicU32, &mut [u8]) {
        let offset = base + index as usize * stride;
        // SAFETY: the slot lies inside the mapping (index < slots); the caller owns it.
        unsafe {
            (
                &*self.ptr.add(offset).cast::<AtomicU32>(),
                std::slice::from_raw_parts_mut(self.ptr.add(offset + 8), stride - 8),
            )
        }
    }

    fn is_empty(&self, head: usize, tail: usize) -> bool {
        self.word(head).load(Ordering::Acquire) == self.word(tail).load(Ordering::Relaxed)
    }

    /// Producer: writes one frame with `build` (returns its length; 0 writes nothing).
    /// False when the ring is full.
    fn push(
        &self,
        (head, tail, base, stride, slots): (usize, usize, usize, usize, u32),
        build: &mut dyn FnMut(&mut [u8]) -> usize,
    ) -> bool {
        let h = self.word(head).load(Ordering::Relaxed);
        let t = self.word(tail).load(Ordering::Acquire);
        if h.wrapping_sub(t) >= slots {
            return false;
        }
        // SAFETY: slot h is between the tail and the tail plus the size: the producer's.
        let (len, data) = unsafe { self.slot(base, stride, h % slots) };
        let n = build(data).min(data.len());
        if n > 0 {
            len.store(n as u32, Ordering::Relaxed);
            self.word(head).store(h.wrapping_add(1), Ordering::Release);
        }
        true
    }

    /// Consumer: hands the oldest frame to `f`; false when the ring is empty.
    fn pop(
        &self,
        (head, tail, base, stride, slots): (usize, usize, usize, usize, u32),
        f: &mut dyn FnMut(&[u8]),
    ) -> bool {
        let t = self.word(tail).load(Ordering::Relaxed);
        let h = self.word(head).load(Ordering::Acquire);
        if h == t {
            return false;
        }
        // SAFETY: slot t is between the tail and the head: the consumer's.
        let (len, data) = unsafe { self.slot(base, stride, t % slots) };
        // The other side may be anything: a length is never trusted past the slot.
        let n = (len.load(Ordering::Relaxed) as usize).min(data.len());
        f(&data[..n]);
        self.word(tail).store(t.wrapping_add(1), Ordering::Release);
        true
    }

    const RX: (usize, usize, usize, usize, u32) = (RX_HEAD, RX_TAIL, RX_BASE, RX_STRIDE, RX_SLOTS);
    const TX: (usize, usize, usize, usize, u32) = (TX_HEAD, TX_TAIL, TX_BASE, TX_STRIDE, TX_SLOTS);

    /// The switch: one received frame for the client; false (dropped) when its ring is
    /// full.
    pub fn rx_push(&self, frame: &[u8]) -> bool {
        if frame.len() > RX_FRAME {
            return false;
        }
        self.push(Self::RX, &mut |buf| {
            buf[..frame.len()].copy_from_slice(frame);
            frame.len()
        })
    }

    /// The switch: the client's oldest frame to send.
    pub fn tx_pop(&self, f: &mut dyn FnMut(&[u8])) -> bool {
        self.pop(Self::TX, f)
    }

    /// Whether the client has frames to send.
    pub fn tx_waiting(&self) -> bool {
        !self.is_empty(TX_HEAD, TX_TAIL)
    }

    /// Marks the client (`client`) or the switch as sleeping or not. SeqCst with
    /// the look at the ring that follows: a producer that pushes after that look sees
    /// the flag.
    pub fn set_sleeping(&self, client: bool, sleeping: bool) {
        let at = if client {
            CLIENT_SLEEPING
        } else {
            SWITCH_SLEEPING
        };
        self.word(at).store(sleeping as u32, Ordering::SeqCst);
    }

    /// Whether the client (`client`) or the switch may be sleeping. The fence orders
    /// the producer's push before this look (a store then a load).
    pub fn sleeping(&self, client: bool) -> bool {
        let at = if client {
            CLIENT_SLEEPING
        } else {
            SWITCH_SLEEPING
        };
        std::sync::atomic::fence(Ordering::SeqCst);
        self.word(at).load(Ordering::SeqCst) != 0
    }
}

impl Drop for Rings {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `Rings::map` and nothing borrows it any more.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), SHM_LEN) };
    }
}

/// Writes an eventfd (a wake-up); a full counter means the reader is awake anyway.
pub fn wake(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Empties an eventfd.
pub fn drain(fd: BorrowedFd<'_>) {
    let mut count = [0u8; 8];
    let _ = rustix::io::read(fd, &mut count);
}

/// A non-blocking eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    use rustix::event::EventfdFlags;
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC,
    )?)
}

/// A client's stack's device: its rings to the switch.
pub struct SwitchPort {
    conn: UnixStream,
    rings: Rings,
    /// Written by the switch when it gave frames to a sleeping client.
    wake_me: OwnedFd,
    /// Written by this side when it gave frames to a sleeping switch.
    wake_switch: OwnedFd,
    pollfds: Vec<libc::pollfd>,
    mac: MacAddr,
    mtu: usize,
    /// The slice of the stack's ephemeral ports the switch leased to this process.
    pub port_range: (u16, u16),
    /// The slot the switch gave this process.
    pub slot: usize,
    pushed: bool,
}

impl SwitchPort {
    /// Connects to the switch of `ifindex` and leases a slot: rings, ports. `None`
    /// when no switch runs there.
    pub fn attach(ifindex: u32, mac: MacAddr, mtu: usize) -> io::Result<Option<SwitchPort>> {
        let Ok(conn) = UnixStream::connect_addr(&address(ifindex)?) else {
            return Ok(None);
        };
        let rings = Rings::create()?;
        let (wake_me, wake_switch) = (eventfd()?, eventfd()?);
        let hello = format!("ATTACH {}\n", std::process::id());
        send_with_fds(
            conn.as_fd(),
            hello.as_bytes(),
            &[rings.memfd(), wake_me.as_fd(), wake_switch.as_fd()],
        )?;
        conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let reply = read_line(&conn)?;
        let mut words = reply.split_whitespace();
        let (slot, lo, hi) = match (words.next(), words.next(), words.next(), words.next()) {
            (Some("OK"), Some(slot), Some(lo), Some(hi)) => (
                slot.parse().map_err(io::Error::other)?,
                lo.parse().map_err(io::Error::other)?,
                hi.parse().map_err(io::Error::other)?,
            ),
            _ => return Err(io::Error::other(format!("the switch refused: {reply}"))),
        };
        CONNECTIONS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn.as_raw_fd());
        let pollfds = vec![libc::pollfd {
            fd: wake_me.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        Ok(Some(SwitchPort {
            conn,
            rings,
            wake_me,
            wake_switch,
            pollfds,
            mac,
            mtu,
            port_range: (lo, hi),
            slot,
            pushed: false,
        }))
    }

    /// Tells the switch this process's listening ports (all of them), and waits until
    /// it steers them.
    pub fn set_listen_ports(&self, ports: &[u16]) -> io::Result<()> {
        let mut line = String::from("LISTEN");
        for p in ports {
            line.push_str(&format!(" {p}"));
        }
        line.push('\n');
        (&self.conn).write_all(line.as_bytes())?;
        let reply = read_line(&self.conn)?;
        match reply.strip_prefix("OK") {
            Some(_) => Ok(()),
            None => Err(io::Error::other(reply)),
        }
    }

    /// Has the switch send this process the segments of a connection another process
    /// had (`MOVE`: a forked child took its parent's), and waits until it does.
    pub fn steer_moved(
        &self,
        peer: std::net::Ipv4Addr,
        peer_port: u16,
        port: u16,
    ) -> io::Result<()> {
        (&self.conn).write_all(format!("MOVE {peer} {peer_port} {port}\n").as_bytes())?;
        let reply = read_line(&self.conn)?;
        match reply.strip_prefix("OK") {
            Some(_) => Ok(()),
            None => Err(io::Error::other(reply)),
        }
    }

    /// Sleeps until the switch gives this side frames, a fd of
    /// [`SwitchPort::also_wake_on`] is readable, or `timeout` passes.
    pub fn wait_for_frames(&mut self, timeout: std::time::Duration) -> bool {
        self.rings.set_sleeping(true, true);
        if !self.rings.is_empty(RX_HEAD, RX_TAIL) {
            self.rings.set_sleeping(true, false);
            return true;
        }
        let ready = crate::device::wake::sleep_on(&mut self.pollfds, timeout);
        self.rings.set_sleeping(true, false);
        if self.pollfds[0].revents != 0 {
            drain(self.wake_me.as_fd());
        }
        ready > 0
    }

    /// The fds [`SwitchPort::wait_for_frames`] sleeps on (see `XdpQueues::sleep_fds`).
    pub fn sleep_fds(&self) -> Vec<libc::pollfd> {
        self.pollfds.clone()
    }

    /// Tells the switch this side sleeps from now on (it writes our eventfd for each
    /// frame); false, and awake again, when frames wait already.
    pub fn ready_to_sleep(&mut self) -> bool {
        self.rings.set_sleeping(true, true);
        if !self.rings.is_empty(RX_HEAD, RX_TAIL) {
            self.rings.set_sleeping(true, false);
            return false;
        }
        true
    }

    /// Awake again: the switch need not write our eventfd, which is emptied.
    pub fn woke(&mut self) {
        self.rings.set_sleeping(true, false);
        drain(self.wake_me.as_fd());
    }

    /// Adds `fd` to what [`SwitchPort::wait_for_frames`] waits for.
    pub fn also_wake_on(&mut self, fd: RawFd) {
        self.pollfds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }
}

/// The control connections of this process's switch ports, by fd.
static CONNECTIONS: std::sync::Mutex<Vec<RawFd>> = std::sync::Mutex::new(Vec::new());

/// In a child after fork: closes its copies of the parent's control connections, so
/// that the switch sees the parent's end when the parent ends. The parent's ports in
/// the child's memory must never be used or dropped afterwards (the preload library
/// leaks its parent's stack in a child).
pub fn close_inherited_connections() {
    let fds = std::mem::take(&mut *CONNECTIONS.lock().unwrap_or_else(|p| p.into_inner()));
    for fd in fds {
        // SAFETY: a copy of the parent's connection that nothing in this process uses
        // or closes after this (see above).
        unsafe { libc::close(fd) };
    }
}

impl Drop for SwitchPort {
    fn drop(&mut self) {
        let fd = self.conn.as_raw_fd();
        CONNECTIONS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c| *c != fd);
    }
}

impl Device for SwitchPort {
    fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < crate::device::xdp::BATCH && self.rings.pop(Rings::RX, handle) {
            n += 1;
        }
        n
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        let pushed = self.rings.push(Rings::TX, build);
        self.pushed |= pushed;
        pushed
    }

    fn flush(&mut self) {
        if std::mem::take(&mut self.pushed) && self.rings.sleeping(false) {
            wake(self.wake_switch.as_fd());
        }
    }

    fn mac(&self) -> MacAddr {
        self.mac
    }

    fn mtu(&self) -> usize {
        self.mtu
    }
}

/// The switch's process name.
pub const SWITCH_COMM: &str = "userspace-switch";

/// Makes the calling process a switch that outlives its starter's terminal: a session
/// of its own, its name, and SIGINT, SIGHUP and SIGPIPE ignored (SIGTERM still ends
/// it, and the kernel detaches its program as for any process).
pub fn become_daemon() {
    let _ = rustix::process::setsid();
    let _ = rustix::thread::set_name(c"userspace-switch");
    // SAFETY: signal with SIG_IGN installs no handler and has no memory preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Sleeps in poll(2) until one of `fds` is readable (or closed) or `timeout` passes:
/// which are.
pub fn wait_readable(fds: &[RawFd], timeout: std::time::Duration) -> Vec<bool> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `polled` is an initialised array of `len()` pollfd structs that the
    // kernel may write `revents` of; `ts` lives across the call; no signal mask.
    let n = unsafe {
        libc::ppoll(
            polled.as_mut_ptr(),
            polled.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    polled.iter().map(|p| n > 0 && p.revents != 0).collect()
}

/// Reads one line (up to 255 bytes) from a control connection.
pub fn read_line(conn: &UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 256 {
        match (&*conn).read(&mut byte)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ if byte[0] == b'\n' => break,
            _ => line.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

pub use super::holder::{recv_with_fds, send_with_fds};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_the_rings_whole_and_in_order_and_a_full_ring_refuses() {
        let client = Rings::create().unwrap();
        let switch = Rings::map(client.memfd().try_clone_to_owned().unwrap()).unwrap();
        // RX: the switch pushes, the client pops; the ring holds RX_SLOTS frames.
        for i in 0..RX_SLOTS {
            assert!(switch.rx_push(&[i as u8; 60]));
        }
        assert!(!switch.rx_push(&[0; 60]));
        let mut seen = Vec::new();
        while client.pop(Rings::RX, &mut |f| seen.push((f.len(), f[0]))) {}
        assert_eq!(seen.len(), RX_SLOTS as usize);
        assert!(
            seen.iter()
                .enumerate()
                .all(|(i, &(n, b))| n == 60 && b == i as u8)
        );
        assert!(switch.rx_push(&[7; RX_FRAME]));
        assert!(!switch.rx_push(&[7; RX_FRAME + 1]));
        // TX: a build of 0 bytes sends nothing.
        assert!(client.push(Rings::TX, &mut |_| 0));
        assert!(!switch.tx_waiting());
        assert!(client.push(Rings::TX, &mut |b| {
            b[..3].copy_from_slice(b"abc");
            3
        }));
        assert!(switch.tx_waiting());
        let mut got = Vec::new();
        assert!(switch.tx_pop(&mut |f| got.extend_from_slice(f)));
        assert_eq!(got, b"abc");
        assert!(!switch.tx_pop(&mut |_| {}));
    }
}
