//! A small AF_XDP socket of our own: its UMEM lives in a memfd, so that the socket, its
//! rings and its frames can outlive the process that bound it. A lingering holder (see
//! [`super::holder`]) keeps the sockets bound between runs and the next process adopts
//! them: mapping the UMEM and the rings again costs a fraction of a millisecond, where
//! a new socket costs the UMEM's populate and pin, and waits for the old socket's queue
//! to be released (two RCU grace periods after its close).
//!
//! Why not the xsk-rs crate, which the device used before: it maps its UMEM anonymously
//! and can only create sockets, not take over one that another process bound, so a
//! socket could never outlive its process.
use rustix::net::xdp::{
    SocketAddrXdp, SocketAddrXdpFlags, XDP_PGOFF_RX_RING, XDP_PGOFF_TX_RING,
    XDP_UMEM_PGOFF_COMPLETION_RING, XDP_UMEM_PGOFF_FILL_RING, XdpRingOffset, XdpStatistics,
    XdpUmemReg, XdpUmemRegFlags,
};
use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType, sockopt};
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};

/// Lets one transmit kick send up to a whole TX ring (`XDP_MAX_TX_SKB_BUDGET`, Linux
/// 6.17+; the kernel takes 32 up to the ring's size). Returns the budget in force: 32
/// where the kernel lacks the option.
fn set_tx_budget(fd: &OwnedFd, ring_size: u32) -> u32 {
    use std::os::fd::AsRawFd;
    // USERSPACE_XDP_TX_BUDGET=32 keeps the kernel's default (to measure the difference).
    let budget: libc::c_uint = std::env::var("USERSPACE_XDP_TX_BUDGET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ring_size)
        .clamp(32, ring_size.max(32));
    // SAFETY: `budget` lives across the call and its size is passed; the kernel only
    // reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&budget as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc == 0 { budget } else { 32 }
}

/// A shared mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; who may touch which bytes is ruled by the rings.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(fd: &OwnedFd, len: usize, offset: u64, populate: bool) -> io::Result<Mapping> {
        use rustix::mm::{MapFlags, ProtFlags};
        let flags = MapFlags::SHARED
            | if populate {
                MapFlags::POPULATE
            } else {
                MapFlags::empty()
            };
        // SAFETY: a new shared mapping of `fd` chosen by the kernel; nothing else in
        // the process refers to that address range yet.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                flags,
                fd,
                offset,
            )
        }?;
        Ok(Mapping {
            ptr: ptr as *mut u8,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `Mapping::new` and nothing borrows it any more.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

/// One ring shared with the kernel: a power-of-two array of `T` with a producer and a
/// consumer index. This side either produces (fill, TX) or consumes (RX, completion).
struct Ring<T: Copy> {
    _map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    mask: u32,
    size: u32,
    cached_prod: u32,
    cached_cons: u32,
}

// SAFETY: the ring's pointers point into its own mapping, which moves with it.
unsafe impl<T: Copy> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    /// Maps ring `pgoff` of socket `fd`, of `size` entries, at the kernel's offsets.
    fn map(fd: &OwnedFd, off: &XdpRingOffset, size: u32, pgoff: u64) -> io::Result<Self> {
        // The flags word (need-wakeup) is there since Linux 5.4.
        let flags_at = off
            .flags
            .ok_or_else(|| io::Error::other("AF_XDP rings without flags (Linux before 5.4)"))?;
        let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        let map = Mapping::new(fd, len, pgoff, true)?;
        // SAFETY: the kernel's offsets lie inside the mapping just made, aligned for
        // their types (u32 indices, u64 or xdp_desc entries).
        let (producer, consumer, flags, descs) = unsafe {
            (
                map.ptr.add(off.producer as usize) as *const AtomicU32,
                map.ptr.add(off.consumer as usize) as *const AtomicU32,
                map.ptr.add(flags_at as usize) as *const AtomicU32,
                map.ptr.add(off.desc as usize) as *mut T,
            )
        };
        let mut ring = Ring {
            _map: map,
            producer,
            consumer,
            flags,
            descs,
            mask: size - 1,
            size,
            cached_prod: 0,
            cached_cons: 0,
        };
        // An adopted ring goes on from where its last user left it.
        ring.cached_prod = ring.producer().load(Ordering::Acquire);
        ring.cached_cons = ring.consumer().load(Ordering::Acquire);
        Ok(ring)
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping, at a u32 the kernel also reads atomically.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { &*self.consumer }
    }

    fn entry(&self, index: u32) -> *mut T {
        // SAFETY: masked, the index is within the ring's `size` entries.
        unsafe { self.descs.add((index & self.mask) as usize) }
    }

    /// Producer side: puts as many of `items` as there is room for; returns how many.
    fn produce(&mut self, items: &[T]) -> usize {
        let mut free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        if (free as usize) < items.len() {
            self.cached_cons = self.consumer().load(Ordering::Acquire);
            free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        }
        let n = items.len().min(free as usize);
        for (i, item) in items[..n].iter().enumerate() {
            // SAFETY: the slot is between the kernel's consumer and our producer plus
            // the free room, so the kernel does not read it until we publish.
            unsafe {
                self.entry(self.cached_prod.wrapping_add(i as u32))
                    .write(*item)
            };
        }
        self.cached_prod = self.cached_prod.wrapping_add(n as u32);
        self.producer().store(self.cached_prod, Ordering::Release);
        n
    }

    /// Consumer side: takes up to `out.len()` entries; returns how many.
    fn consume(&mut self, out: &mut [T]) -> usize {
        let mut ready = self.cached_prod.wrapping_sub(self.cached_cons);
        if (ready as usize) < out.len() {
            self.cached_prod = self.producer().load(Ordering::Acquire);
            ready = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        let n = out.len().min(ready as usize);
        for (i, slot) in out[..n].iter_mut().enumerate() {
            // SAFETY: the entry is published by the kernel (before its producer index,
            // loaded with Acquire) and not yet given back.
            *slot = unsafe { self.entry(self.cached_cons.wrapping_add(i as u32)).read() };
        }
        self.cached_cons = self.cached_cons.wrapping_add(n as u32);
        self.consumer().store(self.cached_cons, Ordering::Release);
        n
    }

    /// The entries between the consumer and the producer, as the kernel sees them.
    /// Entries published by the producer and not yet taken by the consumer.
    fn in_flight(&self) -> u32 {
        let prod = self.producer().load(Ordering::Acquire);
        let cons = self.consumer().load(Ordering::Acquire);
        prod.wrapping_sub(cons).min(self.size)
    }

    fn outstanding(&self) -> Vec<T> {
        let prod = self.producer().load(Ordering::Acquire);
        let cons = self.consumer().load(Ordering::Acquire);
        let n = prod.wrapping_sub(cons).min(self.size);
        (0..n)
            // SAFETY: within the ring (masked); a stale entry is only a number.
            .map(|i| unsafe { self.entry(cons.wrapping_add(i)).read() })
            .collect()
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: points into the live mapping, at a u32 the kernel writes atomically.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

/// Bytes reserved before each TX frame's data for `struct xsk_tx_metadata` (Linux
/// 6.8+): flags (8), csum_start and csum_offset (2 each), and since 6.14 launch_time
/// (8, after padding). A multiple of 8 below 256, as the kernel requires.
pub const TX_METADATA_LEN: u32 = 24;

/// `setsockopt(SOL_XDP, XDP_MAX_TX_SKB_BUDGET)` (Linux 6.17+): how many frames one
/// copy-mode `sendto(2)` sends at most (32 before, the kernel's TX_BATCH_SIZE).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

/// Writes a `struct xsk_tx_metadata` asking for the checksum from `start` (from the
/// frame's data) to be stored at `start + offset` into the `TX_METADATA_LEN` bytes
/// before a frame's data.
pub fn write_tx_checksum_request(meta: &mut [u8], start: u16, offset: u16) {
    meta.fill(0);
    meta[..8].copy_from_slice(&u64::from(libc::XDP_TXMD_FLAGS_CHECKSUM).to_ne_bytes());
    meta[8..10].copy_from_slice(&start.to_ne_bytes());
    meta[10..12].copy_from_slice(&offset.to_ne_bytes());
}

/// Frames in the UMEM of a socket with rings of `ring_size`: a full fill ring, and as
/// many again for transmit if the socket `transmits` (a stack sends on one of its
/// sockets; the others only receive, and their smaller UMEM costs less to populate
/// and pin at start-up).
pub fn umem_frames(ring_size: u32, transmits: bool) -> u32 {
    if transmits { 2 * ring_size } else { ring_size }
}

/// An AF_XDP socket bound to one queue, with its own UMEM in a memfd.
pub struct XskSocket {
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fill: Ring<u64>,
    comp: Ring<u64>,
    umem: Mapping,
    fd: OwnedFd,
    memfd: OwnedFd,
    /// Entries of each ring.
    pub ring_size: u32,
    /// Bytes per frame.
    pub frame_size: u32,
    /// Frames in the UMEM.
    pub frames: u32,
    /// Bytes of TX metadata before each transmitted frame's data (0: none registered).
    pub tx_metadata_len: u32,
    /// Frames one transmit kick sends at most.
    pub tx_budget: u32,
}

impl XskSocket {
    /// A new socket on `queue` of `ifindex`, bound with `flags` (`XDP_COPY` and so on),
    /// with a UMEM of [`umem_frames`] frames, and room for TX metadata before each
    /// frame if `tx_metadata` and the kernel takes it (see `tx_metadata_len`). The
    /// error is the kernel's (EBUSY: the queue has a socket).
    pub fn create(
        ifindex: u32,
        queue: u32,
        ring_size: u32,
        frame_size: u32,
        flags: u16,
        tx_metadata: bool,
        transmits: bool,
    ) -> io::Result<Self> {
        let frames = umem_frames(ring_size, transmits);
        let len = frames as usize * frame_size as usize;
        let populate = super::startup::step_for("umem populate, queue", queue);
        let memfd = rustix::fs::memfd_create(c"userspace-umem", rustix::fs::MemfdFlags::CLOEXEC)?;
        // The pages are allocated in the memfd, not faulted in through the mapping:
        // MAP_POPULATE holds the process's mmap lock while it zeroes them, and every
        // other thread's mmap (the loader's thread stack, a large allocation) waited
        // behind it at start-up. The UMEM registration maps them when it pins them.
        rustix::fs::fallocate(&memfd, rustix::fs::FallocateFlags::empty(), 0, len as u64)?;
        let umem = Mapping::new(&memfd, len, 0, false)?;
        drop(populate);
        let register = super::startup::step_for("umem register (pin) and rings, queue", queue);
        let fd = rustix::net::socket_with(
            AddressFamily::XDP,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let reg = |tx_metadata_len: u32| XdpUmemReg {
            addr: umem.ptr as u64,
            len: len as u64,
            chunk_size: frame_size,
            headroom: 0,
            flags: if tx_metadata_len > 0 {
                XdpUmemRegFlags::from_bits_retain(libc::XDP_UMEM_TX_METADATA_LEN)
            } else {
                XdpUmemRegFlags::empty()
            },
            tx_metadata_len,
        };
        // A kernel before 6.8 refuses the flag (EINVAL) and keeps no UMEM: register
        // again without it.
        let mut tx_metadata_len = 0;
        if tx_metadata && sockopt::set_xdp_umem_reg(&fd, reg(TX_METADATA_LEN)).is_ok() {
            tx_metadata_len = TX_METADATA_LEN;
        } else {
            sockopt::set_xdp_umem_reg(&fd, reg(0))?;
        }
        sockopt::set_xdp_umem_fill_ring_size(&fd, ring_size)?;
        sockopt::set_xdp_umem_completion_ring_size(&fd, ring_size)?;
        sockopt::set_xdp_rx_ring_size(&fd, ring_size)?;
        sockopt::set_xdp_tx_ring_size(&fd, ring_size)?;
        let mut socket = XskSocket::map(fd, memfd, umem, ring_size, frame_size, frames)?;
        socket.tx_metadata_len = tx_metadata_len;
        drop(register);
        let _bind = super::startup::step_for("bind, queue", queue);
        let addr = SocketAddrXdp::new(SocketAddrXdpFlags::from_bits_retain(flags), ifindex, queue);
        rustix::net::bind(&socket.fd, &addr)?;
        Ok(socket)
    }

    /// A bound socket that another process made (`fd`, its UMEM `memfd`, registered
    /// with `tx_metadata_len`), with its rings as that process left them.
    pub fn adopt(
        fd: OwnedFd,
        memfd: OwnedFd,
        ring_size: u32,
        frame_size: u32,
        tx_metadata_len: u32,
        transmits: bool,
    ) -> io::Result<Self> {
        if !ring_size.is_power_of_two() {
            return Err(io::Error::other("ring size not a power of two"));
        }
        let frames = umem_frames(ring_size, transmits);
        let len = frames as usize * frame_size as usize;
        let size = rustix::fs::fstat(&memfd)?.st_size as usize;
        if size != len {
            return Err(io::Error::other("UMEM of another size"));
        }
        let umem = Mapping::new(&memfd, len, 0, true)?;
        let mut socket = XskSocket::map(fd, memfd, umem, ring_size, frame_size, frames)?;
        socket.tx_metadata_len = tx_metadata_len;
        Ok(socket)
    }

    fn map(
        fd: OwnedFd,
        memfd: OwnedFd,
        umem: Mapping,
        ring_size: u32,
        frame_size: u32,
        frames: u32,
    ) -> io::Result<Self> {
        let off = sockopt::xdp_mmap_offsets(&fd)?;
        let tx_budget = set_tx_budget(&fd, ring_size);
        Ok(XskSocket {
            rx: Ring::map(&fd, &off.rx, ring_size, XDP_PGOFF_RX_RING)?,
            tx: Ring::map(&fd, &off.tx, ring_size, XDP_PGOFF_TX_RING)?,
            fill: Ring::map(&fd, &off.fr, ring_size, XDP_UMEM_PGOFF_FILL_RING)?,
            comp: Ring::map(&fd, &off.cr, ring_size, XDP_UMEM_PGOFF_COMPLETION_RING)?,
            umem,
            fd,
            memfd,
            ring_size,
            frame_size,
            frames,
            tx_metadata_len: 0,
            tx_budget,
        })
    }

    /// The socket's fd.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The UMEM's memfd.
    pub fn memfd(&self) -> &OwnedFd {
        &self.memfd
    }

    /// The start of the frame that holds UMEM address `addr`.
    pub fn frame_start(&self, addr: u64) -> u64 {
        addr - addr % self.frame_size as u64
    }

    /// Frame addresses in no ring: free for the process that owns the socket now. For
    /// an adopted socket, frames its last user held outside the rings come back here.
    pub fn frames_outside_rings(&self) -> Vec<u64> {
        let mut used = vec![false; self.frames as usize];
        let mut mark = |addr: u64| {
            if let Some(u) = used.get_mut((addr / self.frame_size as u64) as usize) {
                *u = true;
            }
        };
        self.fill.outstanding().into_iter().for_each(&mut mark);
        self.comp.outstanding().into_iter().for_each(&mut mark);
        self.rx.outstanding().iter().for_each(|d| mark(d.addr));
        self.tx.outstanding().iter().for_each(|d| mark(d.addr));
        (0..self.frames as u64)
            .filter(|&i| !used[i as usize])
            .map(|i| i * self.frame_size as u64)
            .collect()
    }

    /// Frames the rings' published indices show in the TX and completion rings (no
    /// allocation). The kernel may hold a few more that it has not published yet.
    pub fn published_in_tx(&self) -> usize {
        (self.tx.in_flight() + self.comp.in_flight()) as usize
    }

    /// Frame addresses in the TX and completion rings (not yet back from the kernel).
    pub fn frames_in_tx(&self) -> Vec<u64> {
        let tx = self.tx.outstanding().into_iter().map(|d| d.addr);
        let comp = self.comp.outstanding().into_iter();
        tx.chain(comp).map(|a| self.frame_start(a)).collect()
    }

    /// The bytes of a received frame.
    ///
    /// # Safety
    /// `desc` came from this socket's RX ring and its frame is not back in the fill ring.
    pub unsafe fn rx_frame(&self, desc: &libc::xdp_desc) -> &[u8] {
        let end = (desc.addr + desc.len as u64).min(self.umem.len as u64);
        let start = desc.addr.min(end);
        // SAFETY: within the UMEM mapping (clamped); the caller owns the frame.
        unsafe {
            std::slice::from_raw_parts(self.umem.ptr.add(start as usize), (end - start) as usize)
        }
    }

    /// The whole frame at `addr`, to build a frame in.
    ///
    /// # Safety
    /// The frame is in no ring, and no other borrow of it lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn tx_frame(&self, addr: u64) -> &mut [u8] {
        let start = self
            .frame_start(addr)
            .min(self.umem.len as u64 - self.frame_size as u64);
        // SAFETY: a whole frame within the UMEM mapping; the caller owns it.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.umem.ptr.add(start as usize),
                self.frame_size as usize,
            )
        }
    }

    /// Takes received descriptors.
    pub fn consume_rx(&mut self, out: &mut [libc::xdp_desc]) -> usize {
        self.rx.consume(out)
    }

    /// Gives frames to the kernel to receive into.
    pub fn produce_fill(&mut self, addrs: &[u64]) -> usize {
        self.fill.produce(addrs)
    }

    /// Queues frames for transmit.
    pub fn produce_tx(&mut self, descs: &[libc::xdp_desc]) -> usize {
        self.tx.produce(descs)
    }

    /// Takes frames whose transmit completed.
    pub fn consume_completions(&mut self, out: &mut [u64]) -> usize {
        self.comp.consume(out)
    }

    /// Whether the kernel wants a wake-up to use the fill ring.
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Whether the kernel wants a wake-up to send what is in the TX ring.
    pub fn tx_needs_wakeup(&self) -> bool {
        self.tx.needs_wakeup()
    }

    /// Wakes the receive side (poll(2) with no wait).
    pub fn wake_rx(&self) {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let mut pfd = [PollFd::new(&self.fd, PollFlags::IN)];
        let _ = rustix::event::poll(&mut pfd, Some(&Timespec::default()));
    }

    /// Has the kernel send what is in the TX ring (copy mode sends up to 32 a call).
    pub fn wake_tx(&self) {
        // An empty send(2) is AF_XDP's transmit kick; EAGAIN and EBUSY only say the
        // kernel is busy, and the next kick tries again.
        let _ = rustix::net::send(&self.fd, &[], SendFlags::DONTWAIT);
    }

    /// The kernel's statistics of the socket.
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        Ok(sockopt::xdp_statistics(&self.fd)?)
    }
}
