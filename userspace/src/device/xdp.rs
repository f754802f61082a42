//! The AF_XDP device: loads and attaches the XDP program with aya, binds an xsk-rs socket
//! to one queue, and moves frames through the UMEM rings in batches.
//!
//! The program is attached through a BPF link owned by this process, so the kernel
//! detaches it when the process ends by any path, `kill -9` included.
use super::Device;
use crate::wire::MacAddr;
use anyhow::{Context, anyhow, bail};
use aya::maps::{Array, MapData, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpMode};
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use xdp_ebpf::{COUNTER_NO_SOCKET, COUNTER_PASSED, COUNTER_STEERED, SteerConfig};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

/// The XDP object built by `cargo xtask build-ebpf`, embedded at compile time.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ebpf.o"));

/// Most frames received or queued for transmit in one batch.
pub const BATCH: usize = 64;
const FRAME_SIZE: u32 = 2048;
const RING_SIZE: u32 = 2048;
/// Frames in the UMEM: a full fill ring plus as many again for transmit.
const FRAME_COUNT: u32 = 2 * RING_SIZE;

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum XdpModeChoice {
    /// In the driver (fastest; veth supports it).
    Native,
    /// Generic XDP on the socket buffer (works everywhere, slower).
    Skb,
}

/// Where and how to open the AF_XDP device.
#[derive(Debug, Clone)]
pub struct XdpOptions {
    /// Interface name.
    pub interface: String,
    /// NIC queue to bind to.
    pub queue: u32,
    /// Attach mode (`None`: native, falling back to skb).
    pub mode: Option<XdpModeChoice>,
    /// What the XDP program steers to the stack.
    pub steer: SteerConfig,
}

/// `SteerConfig` as a map value. The newtype lives here so that the only `unsafe impl`
/// stays in the device layer.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodSteerConfig(SteerConfig);
// SAFETY: SteerConfig is #[repr(C)], Copy, made only of integers and integer arrays
// ([u8; 4], u32, u16, u16, [u16; 16], u32 = 48 bytes, align 4), so it has no padding.
unsafe impl aya::Pod for PodSteerConfig {}

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
    umem: Umem,
    rx: RxQueue,
    tx: TxQueue,
    fill: FillQueue,
    completion: CompQueue,
    rx_batch: Vec<FrameDesc>,
    tx_free: Vec<FrameDesc>,
    tx_queued: Vec<FrameDesc>,
    completed: Vec<FrameDesc>,
    awaiting_fill: Vec<FrameDesc>,
    in_fill_ring: usize,
    in_tx_ring: usize,
    total_frames: usize,
    /// The NIC queue it is bound to.
    pub queue: u32,
    // Dropped last: the program is detached when its last socket is gone.
    program: SharedProgram,
}

/// Steering counters from the XDP program, summed over CPUs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SteerCounters {
    /// Frames steered to an AF_XDP socket.
    pub steered: u64,
    /// Frames passed to the kernel.
    pub passed: u64,
    /// Frames for the stack that arrived on a queue without a socket.
    pub no_socket: u64,
}

/// The loaded and attached XDP program, shared by the AF_XDP sockets of every queue.
pub struct XdpProgram {
    ebpf: aya::Ebpf,
    counters: PerCpuArray<MapData, u64>,
    /// `native` or `skb`.
    pub attached_mode: &'static str,
    interface: String,
    mac: MacAddr,
    mtu: usize,
}

/// The program shared by the sockets of every queue.
pub type SharedProgram = std::sync::Arc<std::sync::Mutex<XdpProgram>>;

impl XdpProgram {
    /// Checks the setup, loads the program and attaches it through a BPF link. Nothing
    /// is steered until [`XdpProgram::enable`].
    pub fn load(interface: &str, mode: Option<XdpModeChoice>) -> anyhow::Result<SharedProgram> {
        if XDP_OBJECT.is_empty() {
            bail!("the eBPF object is missing: run `cargo xtask build-ebpf`, then rebuild");
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("AF_XDP needs root (CAP_NET_ADMIN and CAP_BPF): run with sudo");
        }
        let iface = interface;
        let info = super::netinfo::interface(iface)?;
        if !info.up {
            bail!("interface {iface} is down");
        }
        let mut ebpf = aya::Ebpf::load(XDP_OBJECT).context("loading the XDP program")?;
        let program: &mut Xdp = ebpf
            .program_mut(xdp_ebpf::PROGRAM_NAME)
            .ok_or_else(|| anyhow!("XDP program {} not in the object", xdp_ebpf::PROGRAM_NAME))?
            .try_into()?;
        program
            .load()
            .context("the kernel refused the XDP program")?;
        let attached_mode = match mode {
            Some(XdpModeChoice::Native) => {
                program
                    .attach(iface, XdpMode::Driver)
                    .with_context(|| format!("attaching XDP (native) to {iface}"))?;
                "native"
            }
            Some(XdpModeChoice::Skb) => {
                program
                    .attach(iface, XdpMode::Skb)
                    .with_context(|| format!("attaching XDP (skb) to {iface}"))?;
                "skb"
            }
            None => match program.attach(iface, XdpMode::Driver) {
                Ok(_) => "native",
                Err(_) => {
                    program
                        .attach(iface, XdpMode::Skb)
                        .with_context(|| format!("attaching XDP to {iface}"))?;
                    "skb"
                }
            },
        };
        let counters = PerCpuArray::try_from(
            ebpf.take_map(xdp_ebpf::COUNTERS_MAP)
                .ok_or_else(|| anyhow!("COUNTERS map missing"))?,
        )?;
        Ok(std::sync::Arc::new(std::sync::Mutex::new(XdpProgram {
            ebpf,
            counters,
            attached_mode,
            interface: iface.to_string(),
            mac: info.mac,
            mtu: info.mtu,
        })))
    }

    fn register(&mut self, queue: u32, fd: std::os::fd::RawFd) -> anyhow::Result<()> {
        let mut xsks: XskMap<&mut MapData> = XskMap::try_from(
            self.ebpf
                .map_mut(xdp_ebpf::XSKS_MAP)
                .ok_or_else(|| anyhow!("XSKS map missing"))?,
        )?;
        xsks.set(queue, fd, 0)
            .context("registering the AF_XDP socket in the XSKMAP")?;
        Ok(())
    }

    /// Writes the steering config: from now on the program steers the stack's packets.
    pub fn enable(&mut self, steer: SteerConfig) -> anyhow::Result<()> {
        let mut config: Array<&mut MapData, PodSteerConfig> = Array::try_from(
            self.ebpf
                .map_mut(xdp_ebpf::CONFIG_MAP)
                .ok_or_else(|| anyhow!("CONFIG map missing"))?,
        )?;
        let mut steer = steer;
        steer.enabled = 1;
        config
            .set(0, PodSteerConfig(steer), 0)
            .context("writing the steering config")?;
        Ok(())
    }

    /// Replaces the listening ports steered to the stack in shared-IP mode, so that a
    /// listener opened after start-up gets its SYNs. The rest of the config stays.
    pub fn set_listen_ports(&mut self, ports: &[u16]) -> anyhow::Result<()> {
        if ports.len() > xdp_ebpf::MAX_LISTEN_PORTS {
            bail!("at most {} listening ports", xdp_ebpf::MAX_LISTEN_PORTS);
        }
        let mut config: Array<&mut MapData, PodSteerConfig> = Array::try_from(
            self.ebpf
                .map_mut(xdp_ebpf::CONFIG_MAP)
                .ok_or_else(|| anyhow!("CONFIG map missing"))?,
        )?;
        let PodSteerConfig(mut steer) = config.get(&0, 0).context("reading the steering config")?;
        steer.listen_ports = [0; xdp_ebpf::MAX_LISTEN_PORTS];
        steer.listen_ports[..ports.len()].copy_from_slice(ports);
        config
            .set(0, PodSteerConfig(steer), 0)
            .context("writing the steering config")?;
        Ok(())
    }

    /// The program's steering counters, summed over CPUs.
    pub fn steer_counters(&self) -> SteerCounters {
        let sum = |index| {
            self.counters
                .get(&index, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        SteerCounters {
            steered: sum(COUNTER_STEERED),
            passed: sum(COUNTER_PASSED),
            no_socket: sum(COUNTER_NO_SOCKET),
        }
    }
}

impl XdpDevice {
    /// One queue with its own program: load, bind, enable.
    pub fn open(opts: &XdpOptions) -> anyhow::Result<Self> {
        let program = XdpProgram::load(&opts.interface, opts.mode)?;
        let device = XdpDevice::bind(&program, opts.queue)?;
        lock(&program).enable(opts.steer)?;
        Ok(device)
    }

    /// An AF_XDP socket with its own UMEM on `queue`, registered with the program.
    pub fn bind(program: &SharedProgram, queue: u32) -> anyhow::Result<Self> {
        let (iface, mac, mtu) = {
            let p = lock(program);
            (p.interface.clone(), p.mac, p.mtu)
        };
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| anyhow!("{e}"))?)
            .fill_queue_size(QueueSize::new(RING_SIZE).map_err(|e| anyhow!("{e}"))?)
            .comp_queue_size(QueueSize::new(RING_SIZE).map_err(|e| anyhow!("{e}"))?)
            .build()
            .map_err(|e| anyhow!("UMEM config: {e}"))?;
        let frame_count = NonZeroU32::new(FRAME_COUNT).expect("non-zero");
        let (umem, mut frames) = Umem::new(umem_config, frame_count, false)
            .map_err(|e| anyhow!("creating UMEM: {e}"))?;
        let socket_config = SocketConfig::builder()
            .rx_queue_size(QueueSize::new(RING_SIZE).map_err(|e| anyhow!("{e}"))?)
            .tx_queue_size(QueueSize::new(RING_SIZE).map_err(|e| anyhow!("{e}"))?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let if_name: Interface = iface
            .parse()
            .map_err(|_| anyhow!("bad interface name {iface}"))?;
        // SAFETY: this UMEM is new and not shared, so no other socket is bound with it.
        let (tx, rx, fq_cq) = unsafe { xsk_rs::Socket::new(socket_config, &umem, &if_name, queue) }
            .map_err(|e| anyhow!("binding an AF_XDP socket to {iface} queue {queue}: {e}"))?;
        let (mut fill, completion) =
            fq_cq.ok_or_else(|| anyhow!("AF_XDP socket came without fill/completion rings"))?;
        let tx_free = frames.split_off(RING_SIZE as usize);
        // SAFETY: the frames belong to this UMEM and none is in any ring yet.
        let filled = unsafe { fill.produce(&frames) };
        if filled != frames.len() {
            bail!("could not fill the AF_XDP fill ring");
        }
        lock(program).register(queue, rx.fd().as_raw_fd())?;
        Ok(XdpDevice {
            mac,
            mtu,
            umem,
            rx,
            tx,
            fill,
            completion,
            rx_batch: frames,
            tx_free,
            tx_queued: Vec::with_capacity(BATCH * 4),
            completed: (0..RING_SIZE as usize)
                .map(|_| FrameDesc::default())
                .collect(),
            awaiting_fill: Vec::with_capacity(RING_SIZE as usize),
            in_fill_ring: RING_SIZE as usize,
            in_tx_ring: 0,
            total_frames: FRAME_COUNT as usize,
            queue,
            program: program.clone(),
        })
    }

    /// `native` or `skb`.
    pub fn attached_mode(&self) -> &'static str {
        lock(&self.program).attached_mode
    }

    /// The program's steering counters, summed over CPUs.
    pub fn steer_counters(&self) -> SteerCounters {
        lock(&self.program).steer_counters()
    }

    /// See [`XdpProgram::set_listen_ports`].
    pub fn set_listen_ports(&self, ports: &[u16]) -> anyhow::Result<()> {
        lock(&self.program).set_listen_ports(ports)
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

    /// The kernel's statistics of the socket (drops, full rings).
    pub fn socket_stats(&self) -> Option<xsk_rs::socket::XdpStatistics> {
        self.rx.fd().xdp_statistics().ok()
    }

    /// Returns received frames to the fill ring. The ring holds exactly the RX share of
    /// the frames, but the kernel may not have released a slot yet: what does not fit
    /// waits for the next turn, so the RX share never shrinks.
    fn refill(&mut self) {
        if self.awaiting_fill.is_empty() {
            return;
        }
        // SAFETY: these frames came from this UMEM's RX ring and are no longer borrowed.
        let returned = unsafe { self.fill.produce(&self.awaiting_fill) };
        if returned > 0 {
            self.in_fill_ring += returned;
            self.awaiting_fill.drain(..returned);
        }
    }

    fn recycle_completions(&mut self) {
        if self.in_tx_ring == 0 {
            return;
        }
        // SAFETY: completion descriptors come back from this UMEM's TX ring.
        let n = unsafe { self.completion.consume(&mut self.completed) };
        self.in_tx_ring -= n;
        self.tx_free.extend_from_slice(&self.completed[..n]);
    }
}

impl Device for XdpDevice {
    fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize {
        let batch = &mut self.rx_batch[..BATCH];
        // SAFETY: the descriptors receive frames of this UMEM from its RX ring.
        let n = unsafe { self.rx.consume(batch) };
        if n == 0 {
            self.refill();
            if self.fill.needs_wakeup() {
                let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
            }
            return 0;
        }
        self.in_fill_ring -= n;
        for desc in &self.rx_batch[..n] {
            // SAFETY: the frame came from the RX ring and is ours until it goes back to
            // the fill ring below; nothing else reads or writes it meanwhile.
            let data = unsafe { self.umem.data(desc) };
            handle(data.contents());
        }
        self.awaiting_fill.extend_from_slice(&self.rx_batch[..n]);
        self.refill();
        n
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        if self.tx_free.is_empty() {
            self.flush();
        }
        let Some(mut desc) = self.tx_free.pop() else {
            return false;
        };
        // SAFETY: the frame is in the free list, so neither ring nor the kernel holds it.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        let mut cursor = data.cursor();
        let room = cursor.buf_len();
        cursor.set_pos(room);
        let len = build(data.contents_mut());
        data.cursor().set_pos(len);
        if len == 0 {
            self.tx_free.push(desc);
        } else {
            self.tx_queued.push(desc);
            if self.tx_queued.len() >= BATCH {
                self.flush();
            }
        }
        true
    }

    fn flush(&mut self) {
        if !self.tx_queued.is_empty() {
            // SAFETY: queued frames are filled, of this UMEM, and in no ring.
            let n = unsafe { self.tx.produce(&self.tx_queued) };
            self.in_tx_ring += n;
            self.tx_queued.drain(..n);
        }
        if self.in_tx_ring > 0 && self.tx.needs_wakeup() {
            let _ = self.tx.wakeup();
        }
        self.recycle_completions();
    }

    fn mac(&self) -> MacAddr {
        self.mac
    }

    fn mtu(&self) -> usize {
        self.mtu
    }
}

/// The program's lock; a panic in another queue's thread must not wedge this one.
fn lock(program: &SharedProgram) -> std::sync::MutexGuard<'_, XdpProgram> {
    program
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
