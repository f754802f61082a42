//! One AF_XDP socket as a [`Device`]: its UMEM frames accounted for (fill, RX, TX and
//! completion rings), packets that come in several frames (multi-buffer) put together,
//! and frames sent in batches.
use crate::device::Device;
use crate::device::error::{Context, SetupError, SetupResult};
use crate::device::holder::PooledSocket;
use crate::device::netinfo::{self, multi_buffer_supported, tx_metadata_supported};
use crate::device::xsk::{TX_METADATA_LEN, XskSocket, write_tx_checksum_request};
use crate::wire::MacAddr;
use std::os::fd::{AsFd, BorrowedFd};

/// Most frames received or queued for transmit in one batch.
pub const BATCH: usize = 64;

/// Most frames taken from the RX ring in one turn. A GSO unit comes in about 33
/// frames (multi-buffer), so a turn takes up to 8 of them: the turn's ACKs leave in
/// one sendto(2) and the reader is woken once for all of them.
const RX_BATCH: usize = 256;

/// Frames queued for transmit before they go to the TX ring and one kick sends them:
/// with `XDP_MAX_TX_SKB_BUDGET` one sendto(2) sends them all (a turn's last frames go
/// at its end, whatever their number).
const TX_BATCH: usize = 256;

/// sendto(2) calls one flush makes at most to drain the TX ring (a budget each).
const MAX_KICKS: usize = 16;

pub(super) const FRAME_SIZE: u32 = 2048;

/// The largest packet put together from several frames: a GSO/GRO unit (64 KiB) with
/// its headers.
const MAX_GATHERED: usize = 65_536 + 256;

/// `xdp_desc.options`: more frames of this packet follow (XDP multi-buffer).
const XDP_PKT_CONTD: u32 = 1;

/// Ring size of a socket when its stack polls no other; a stack that polls several
/// queues gives each less, so that its UMEMs together stay at 8 MiB at most. UMEM memory is
/// what start-up and exit cost most (the kernel populates, pins and frees every page),
/// and one poll loop drains one ring at a time. Below 512, a bulk download on veth
/// finds the fill ring empty.
const RING_SIZE: u32 = 2048;

const MIN_RING_SIZE: u32 = 512;

/// Ring size for each of the `queues` sockets one stack polls (a power of two, as the
/// kernel requires). Each UMEM holds a full fill ring's frames, and the transmitting
/// socket's as many again for transmit ([`crate::device::xsk::umem_frames`]).
pub(super) fn ring_size_for(queues: u32) -> u32 {
    (RING_SIZE / queues.max(1))
        .next_power_of_two()
        .clamp(MIN_RING_SIZE, RING_SIZE)
}

/// Copy mode, wake-ups on demand, and multi-buffer where the kernel has it.
fn bind_flags() -> u16 {
    let flags = libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP;
    if multi_buffer_supported() {
        flags | libc::XDP_USE_SG
    } else {
        flags
    }
}

/// How the TCP checksum of a sent frame is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxChecksumMode {
    /// The stack leaves the pseudo-header sum and asks for the rest through AF_XDP TX
    /// metadata (`XDP_TXMD_FLAGS_CHECKSUM`). In copy mode the kernel makes the frame a
    /// CHECKSUM_PARTIAL skb, which the device completes, or the kernel's transmit path
    /// in software where the device has no checksum offload.
    Offload,
    /// The stack computes it: the kernel is older than 6.8.
    SoftwareOldKernel,
    /// The stack computes it: the kernel refused the TX metadata area.
    SoftwareRefused,
    /// The stack computes it: `USERSPACE_TX_CHECKSUM=software`.
    SoftwareAsked,
    /// The stack computes it: its frames go through the interface's switch, which
    /// sends them as they come (complete).
    SoftwareSwitch,
}

impl TxChecksumMode {
    /// What `-v` says.
    pub fn describe(self) -> &'static str {
        match self {
            TxChecksumMode::Offload => "offloaded through AF_XDP TX metadata",
            TxChecksumMode::SoftwareOldKernel => "software (AF_XDP TX metadata needs Linux 6.8)",
            TxChecksumMode::SoftwareRefused => {
                "software (the kernel refused the AF_XDP TX metadata area)"
            }
            TxChecksumMode::SoftwareAsked => "software (USERSPACE_TX_CHECKSUM=software)",
            TxChecksumMode::SoftwareSwitch => "software (frames go through the interface's switch)",
        }
    }
}

static TX_CHECKSUM_MODE: std::sync::OnceLock<TxChecksumMode> = std::sync::OnceLock::new();

/// The switch sends its clients' frames as they come, checksums complete: its sockets
/// must not ask the kernel to checksum them again. Called before its sockets are made.
pub fn transmit_complete_frames() {
    let _ = TX_CHECKSUM_MODE.set(TxChecksumMode::SoftwareSwitch);
}

/// Whether new sockets ask for TX metadata, and if not, why.
fn tx_checksum_wanted() -> TxChecksumMode {
    *TX_CHECKSUM_MODE.get_or_init(|| {
        if std::env::var("USERSPACE_TX_CHECKSUM").is_ok_and(|v| v == "software") {
            TxChecksumMode::SoftwareAsked
        } else if !tx_metadata_supported() {
            TxChecksumMode::SoftwareOldKernel
        } else {
            TxChecksumMode::Offload
        }
    })
}

/// The TX metadata length sockets of this process register (0: none).
pub(super) fn wanted_tx_metadata_len() -> u32 {
    match tx_checksum_wanted() {
        TxChecksumMode::Offload => TX_METADATA_LEN,
        _ => 0,
    }
}

/// Frames of the UMEM, by where they are; their sum never changes (no leak).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameAccount {
    /// Frames in the UMEM.
    pub total: usize,
    /// Free for transmit.
    pub free_for_tx: usize,
    /// In the fill ring, waiting for received frames.
    pub in_fill_ring: usize,
    /// Received frames waiting for room in the fill ring (returned on the next turn).
    pub awaiting_fill: usize,
    /// In the TX ring, not yet completed.
    pub in_tx_ring: usize,
    /// Filled for transmit, not yet in the TX ring.
    pub queued_tx: usize,
}

impl FrameAccount {
    /// Frames unaccounted for (0 unless one leaked).
    pub fn missing(&self) -> isize {
        self.total as isize
            - (self.free_for_tx
                + self.in_fill_ring
                + self.awaiting_fill
                + self.in_tx_ring
                + self.queued_tx) as isize
    }
}

/// An AF_XDP socket on one queue, with its own UMEM and rings.
pub struct XdpDevice {
    mac: MacAddr,
    mtu: usize,
    socket: XskSocket,
    rx_batch: Vec<libc::xdp_desc>,
    /// Frame addresses free for transmit.
    tx_free: Vec<u64>,
    /// Per frame, whether this socket's user put it in the TX ring and awaits its
    /// completion. Only those completions free a frame: one that a killed predecessor
    /// had in flight, which looked free when the socket was taken over and may be in
    /// the fill ring or `tx_free` now, must not be freed a second time.
    awaiting_completion: Vec<bool>,
    tx_queued: Vec<libc::xdp_desc>,
    completed: Vec<u64>,
    awaiting_fill: Vec<u64>,
    in_fill_ring: usize,
    in_tx_ring: usize,
    total_frames: usize,
    /// The socket's statistics when this process took it (an adopted socket counted
    /// earlier runs' drops too).
    stats_at_start: SocketStats,
    /// A packet that came in several frames (XDP multi-buffer), put together.
    gathered: Vec<u8>,
    /// The packet being gathered outgrew `MAX_GATHERED`: it is dropped when it ends.
    oversized: bool,
    /// Packets dropped for being larger than `MAX_GATHERED`.
    rx_oversized: u64,
    /// The NIC queue it is bound to.
    pub queue: u32,
    /// How sent frames get their TCP checksum.
    tx_checksum: TxChecksumMode,
}

/// Kernel statistics of a socket, as the difference of two readings.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketStats {
    /// Frames dropped (too large for a frame, and so on).
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was found empty.
    pub rx_fill_ring_empty: u64,
}

impl From<&rustix::net::xdp::XdpStatistics> for SocketStats {
    /// The kernel's counters (those a kernel before 5.9 lacks count 0).
    fn from(s: &rustix::net::xdp::XdpStatistics) -> Self {
        SocketStats {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full.unwrap_or(0),
            rx_fill_ring_empty: s.rx_fill_ring_empty_descs.unwrap_or(0),
        }
    }
}

/// Why a bind failed: a queue still held by a socket being released, or anything else.
enum BindError {
    Busy(SetupError),
    Other(SetupError),
}

impl From<SetupError> for BindError {
    fn from(e: SetupError) -> Self {
        BindError::Other(e)
    }
}

impl XdpDevice {
    /// An AF_XDP socket with its own UMEM on `queue` of `iface`, whose rings are sized
    /// for a stack that polls `queues` queues. It receives once registered with the program.
    /// Only a socket that `transmits` gets UMEM frames for transmit.
    pub fn bind(
        iface: &netinfo::InterfaceInfo,
        queue: u32,
        queues: u32,
        transmits: bool,
    ) -> SetupResult<Self> {
        // The kernel releases a closed socket's hold on its queue a while after the
        // close returns (two RCU grace periods): a stack started right after another
        // one ended may find the queue still busy (EBUSY) for tens of milliseconds.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            match XdpDevice::try_bind(iface, queue, queues, transmits) {
                Err(BindError::Busy(_)) if std::time::Instant::now() < give_up => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(BindError::Busy(e) | BindError::Other(e)) => return Err(e),
                Ok(device) => return Ok(device),
            }
        }
    }

    fn try_bind(
        iface: &netinfo::InterfaceInfo,
        queue: u32,
        queues: u32,
        transmits: bool,
    ) -> Result<Self, BindError> {
        let ring_size = ring_size_for(queues);
        let wanted = tx_checksum_wanted();
        let socket = XskSocket::create(
            iface.ifindex,
            queue,
            ring_size,
            FRAME_SIZE,
            bind_flags(),
            wanted == TxChecksumMode::Offload,
            transmits,
        )
        .map_err(|e| {
            let busy = e.raw_os_error() == Some(libc::EBUSY);
            let error = SetupError::new(
                format!("binding an AF_XDP socket to {} queue {queue}", iface.name),
                e,
            );
            if busy {
                BindError::Busy(error)
            } else {
                BindError::Other(error)
            }
        })?;
        XdpDevice::with_socket(iface, queue, socket).map_err(BindError::Other)
    }

    /// Takes over a socket that an earlier process bound (from the holder's pool); its
    /// UMEM must have the size of one that `transmits` or not.
    pub fn adopt(
        iface: &netinfo::InterfaceInfo,
        pooled: PooledSocket,
        transmits: bool,
    ) -> SetupResult<Self> {
        let queue = pooled.queue;
        let socket = XskSocket::adopt(
            pooled.fd,
            pooled.memfd,
            pooled.ring_size,
            FRAME_SIZE,
            pooled.tx_metadata_len,
            transmits,
        )
        .with_context(|| format!("taking over the AF_XDP socket of queue {queue}"))?;
        // Have the kernel publish how far it got with the TX ring before the frames are
        // counted (it publishes its consumer index lazily).
        socket.wake_tx();
        let mut device = XdpDevice::with_socket(iface, queue, socket)?;
        // What arrived between two runs belongs to no connection of this one.
        device.discard_received();
        Ok(device)
    }

    fn with_socket(
        iface: &netinfo::InterfaceInfo,
        queue: u32,
        mut socket: XskSocket,
    ) -> SetupResult<Self> {
        let ring_size = socket.ring_size as usize;
        let total_frames = socket.frames as usize;
        // Every frame in no ring is ours: up to a ring's worth goes to the fill ring
        // (the RX share), the rest is for transmit.
        let mut free = socket.frames_outside_rings();
        // A frame may show in both the TX and the completion ring (the kernel publishes
        // its TX consumer index late): count each once.
        let mut awaiting_completion = vec![false; total_frames];
        for addr in socket.frames_in_tx() {
            if let Some(a) = awaiting_completion.get_mut((addr / FRAME_SIZE as u64) as usize) {
                *a = true;
            }
        }
        let in_tx_ring = awaiting_completion.iter().filter(|a| **a).count();
        let in_fill_already = total_frames.saturating_sub(free.len() + in_tx_ring);
        let to_fill = ring_size.saturating_sub(in_fill_already).min(free.len());
        let tx_free = free.split_off(to_fill);
        // A taken-over fill ring may not have room for all yet (the kernel publishes
        // its consumer index late): the rest waits for the next turn.
        let filled = socket.produce_fill(&free);
        let awaiting_fill = {
            let mut v = Vec::with_capacity(ring_size.max(free.len()));
            v.extend_from_slice(&free[filled..]);
            v
        };
        let stats_at_start = socket
            .statistics()
            .map(|s| SocketStats::from(&s))
            .unwrap_or_default();
        let tx_checksum = match tx_checksum_wanted() {
            _ if socket.tx_metadata_len >= TX_METADATA_LEN => TxChecksumMode::Offload,
            TxChecksumMode::Offload => TxChecksumMode::SoftwareRefused,
            other => other,
        };
        Ok(XdpDevice {
            mac: iface.mac,
            mtu: iface.mtu,
            socket,
            rx_batch: vec![
                libc::xdp_desc {
                    addr: 0,
                    len: 0,
                    options: 0
                };
                RX_BATCH
            ],
            tx_free,
            awaiting_completion,
            tx_queued: Vec::with_capacity(TX_BATCH),
            completed: vec![0; ring_size],
            awaiting_fill,
            in_fill_ring: in_fill_already + filled,
            in_tx_ring,
            total_frames,
            stats_at_start,
            gathered: Vec::with_capacity(MAX_GATHERED),
            oversized: false,
            rx_oversized: 0,
            queue,
            tx_checksum,
        })
    }

    /// Recycles every received frame without looking at it.
    /// Sends what is queued and waits, up to `give_up`, for the kernel to complete
    /// every frame in the TX ring: a socket handed to the holder leaves no frame in
    /// flight, whose late completion the next user could not tell from a free frame.
    pub(super) fn drain_tx(&mut self, give_up: std::time::Instant) {
        loop {
            self.flush();
            self.recycle_completions();
            if (self.in_tx_ring == 0 && self.tx_queued.is_empty())
                || std::time::Instant::now() >= give_up
            {
                return;
            }
            self.socket.wake_tx();
            std::thread::yield_now();
        }
    }

    fn discard_received(&mut self) {
        self.gathered.clear();
        self.oversized = false;
        loop {
            let n = self.socket.consume_rx(&mut self.rx_batch[..RX_BATCH]);
            if n == 0 {
                break;
            }
            self.in_fill_ring -= n.min(self.in_fill_ring);
            for desc in &self.rx_batch[..n] {
                self.awaiting_fill.push(self.socket.frame_start(desc.addr));
            }
            self.refill();
        }
    }

    /// The socket and its UMEM, for the holder's pool.
    pub fn pooled_fds(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        (self.socket.fd().as_fd(), self.socket.memfd().as_fd())
    }

    /// Whether frames wait for room in a ring (fill or TX) or for the kernel to send
    /// them: only the poll loop moves them on, so it must not sleep.
    pub fn has_frames_to_move(&self) -> bool {
        !self.awaiting_fill.is_empty() || !self.tx_queued.is_empty() || self.in_tx_ring > 0
    }

    /// Packets dropped for being larger than `MAX_GATHERED`.
    pub fn rx_oversized(&self) -> u64 {
        self.rx_oversized
    }

    /// Entries of each of its rings.
    pub fn ring_size(&self) -> u32 {
        self.socket.ring_size
    }

    /// Bytes of TX metadata its UMEM was registered with.
    pub fn tx_metadata_len(&self) -> u32 {
        self.socket.tx_metadata_len
    }

    /// How sent frames get their TCP checksum.
    pub fn tx_checksum(&self) -> TxChecksumMode {
        self.tx_checksum
    }

    /// Frames one transmit kick sends at most.
    pub fn tx_budget(&self) -> u32 {
        self.socket.tx_budget
    }

    /// Where the UMEM's frames are.
    pub fn frame_account(&self) -> FrameAccount {
        FrameAccount {
            total: self.total_frames,
            free_for_tx: self.tx_free.len(),
            in_fill_ring: self.in_fill_ring,
            awaiting_fill: self.awaiting_fill.len(),
            in_tx_ring: self.in_tx_ring,
            queued_tx: self.tx_queued.len(),
        }
    }

    /// The kernel's statistics of the socket (drops, full rings) since this process
    /// took it.
    pub fn socket_stats(&self) -> Option<SocketStats> {
        let now = SocketStats::from(&self.socket.statistics().ok()?);
        let was = &self.stats_at_start;
        Some(SocketStats {
            rx_dropped: now.rx_dropped.saturating_sub(was.rx_dropped),
            rx_ring_full: now.rx_ring_full.saturating_sub(was.rx_ring_full),
            rx_fill_ring_empty: now
                .rx_fill_ring_empty
                .saturating_sub(was.rx_fill_ring_empty),
        })
    }

    /// Returns received frames to the fill ring. The ring holds exactly the RX share of
    /// the frames, but the kernel may not have released a slot yet: what does not fit
    /// waits for the next turn, so the RX share never shrinks.
    fn refill(&mut self) {
        if self.awaiting_fill.is_empty() {
            return;
        }
        let returned = self.socket.produce_fill(&self.awaiting_fill);
        if returned > 0 {
            self.in_fill_ring += returned;
            self.awaiting_fill.drain(..returned);
        }
    }

    fn recycle_completions(&mut self) {
        if self.in_tx_ring == 0 {
            return;
        }
        let n = self.socket.consume_completions(&mut self.completed);
        self.in_tx_ring -= n.min(self.in_tx_ring);
        if n == 0 && self.socket.published_in_tx() == 0 {
            // The rings show nothing in flight: a count carried over from a socket's
            // earlier user must not keep the loop from sleeping.
            self.in_tx_ring = 0;
        }
        for &addr in &self.completed[..n] {
            let addr = self.socket.frame_start(addr);
            if let Some(awaited) = self
                .awaiting_completion
                .get_mut((addr / FRAME_SIZE as u64) as usize)
                && *awaited
            {
                *awaited = false;
                self.tx_free.push(addr);
            }
        }
    }
}

impl Device for XdpDevice {
    fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize {
        let n = self.socket.consume_rx(&mut self.rx_batch[..RX_BATCH]);
        if n == 0 {
            self.refill();
            if self.socket.fill_needs_wakeup() {
                self.socket.wake_rx();
            }
            return 0;
        }
        self.in_fill_ring -= n.min(self.in_fill_ring);
        for desc in &self.rx_batch[..n] {
            // SAFETY: the frame came from the RX ring and is ours until it goes back to
            // the fill ring below; nothing else reads or writes it meanwhile.
            let data = unsafe { self.socket.rx_frame(desc) };
            self.awaiting_fill.push(self.socket.frame_start(desc.addr));
            // A packet larger than a frame (a peer's GSO unit, with multi-buffer) comes
            // in several descriptors, all but the last marked XDP_PKT_CONTD: put it
            // together for the stack.
            let more = desc.options & XDP_PKT_CONTD != 0;
            if !more && self.gathered.is_empty() && !self.oversized {
                handle(data);
                continue;
            }
            if self.gathered.len() + data.len() > MAX_GATHERED {
                self.oversized = true;
            }
            if !self.oversized {
                self.gathered.extend_from_slice(data);
            }
            if !more {
                if self.oversized {
                    self.rx_oversized += 1;
                } else {
                    handle(&self.gathered);
                }
                self.gathered.clear();
                self.oversized = false;
            }
        }
        self.refill();
        n
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        if self.tx_free.is_empty() {
            self.flush();
        }
        let Some(addr) = self.tx_free.pop() else {
            return false;
        };
        // SAFETY: the frame is in the free list, so neither ring nor the kernel holds
        // it, and the borrow ends before the frame is queued.
        let frame = unsafe { self.socket.tx_frame(addr) };
        // The TX metadata, if registered, sits right before the data (the descriptor's
        // address).
        let (meta, data) = frame.split_at_mut(self.socket.tx_metadata_len as usize);
        let len = build(data).min(data.len());
        if len == 0 {
            self.tx_free.push(addr);
        } else {
            let mut options = 0;
            if self.tx_checksum == TxChecksumMode::Offload
                && let Some((start, offset)) = crate::wire::tcp_checksum_location(&data[..len])
            {
                write_tx_checksum_request(meta, start, offset);
                options = libc::XDP_TX_METADATA;
            }
            self.awaiting_completion[(addr / FRAME_SIZE as u64) as usize] = true;
            self.tx_queued.push(libc::xdp_desc {
                addr: addr + meta.len() as u64,
                len: len as u32,
                options,
            });
            let batch = TX_BATCH.min(self.socket.tx_budget as usize).max(BATCH);
            if self.tx_queued.len() >= batch {
                self.flush();
            }
        }
        true
    }

    /// Puts the queued frames on the TX ring and has the kernel send them. In copy mode
    /// one sendto(2) sends at most the socket's budget (`XDP_MAX_TX_SKB_BUDGET`, 32
    /// before Linux 6.17), so the ring is kicked again while that completes more: a turn
    /// leaves no frame waiting in the ring, and an idle loop may sleep (see
    /// [`super::XdpQueues::wait_for_frames`]).
    fn flush(&mut self) {
        if !self.tx_queued.is_empty() {
            let n = self.socket.produce_tx(&self.tx_queued);
            self.in_tx_ring += n;
            self.tx_queued.drain(..n);
        }
        for _ in 0..MAX_KICKS {
            if self.in_tx_ring == 0 || !self.socket.tx_needs_wakeup() {
                break;
            }
            let before = self.in_tx_ring;
            self.socket.wake_tx();
            self.recycle_completions();
            if self.in_tx_ring == before {
                break; // the kernel is busy: the next turn tries again
            }
        }
        self.recycle_completions();
    }

    fn mac(&self) -> MacAddr {
        self.mac
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn tx_checksum_offload(&self) -> bool {
        self.tx_checksum == TxChecksumMode::Offload
    }
}
