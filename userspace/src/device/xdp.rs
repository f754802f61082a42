//! The AF_XDP device: loads and attaches the XDP program with aya, binds an AF_XDP socket
//! ([`super::xsk`]) to each queue, and moves frames through the UMEM rings in batches.
//!
//! The program is attached through a BPF link owned by this process, so the kernel
//! detaches it when the process ends by any path, `kill -9` included; or, when asked to
//! linger, by a holder process shortly after (see [`super::holder`]).
use super::Device;
use super::xsk::XskSocket;
use crate::device::error::{Context, SetupError, SetupResult, bail, setup_error};
use crate::wire::MacAddr;
use aya::maps::{Array, Map, MapData, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpMode};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use xdp_ebpf::{
    COUNTER_NO_SOCKET, COUNTER_NO_SOCKET_QUEUE0, COUNTER_PASSED, COUNTER_STEERED, MAX_QUEUES,
    SteerConfig,
};

/// The XDP object built by `cargo xtask build-ebpf`, embedded at compile time.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ebpf.o"));

/// Most frames received or queued for transmit in one batch.
pub const BATCH: usize = 64;
/// At exit, how long the sockets may take to complete the frames in their TX rings.
const TX_DRAIN_AT_EXIT: std::time::Duration = std::time::Duration::from_millis(5);
/// sendto(2) calls one flush makes at most to drain the TX ring (32 frames each).
const MAX_KICKS: usize = 16;
const FRAME_SIZE: u32 = 2048;
/// The largest packet put together from several frames: a GSO/GRO unit (64 KiB) with
/// its headers.
const MAX_GATHERED: usize = 65_536 + 256;
/// `xdp_desc.options`: more frames of this packet follow (XDP multi-buffer).
const XDP_PKT_CONTD: u32 = 1;
/// Ring size of a socket when its stack polls no other; a stack that polls several
/// queues gives each less, so that its UMEMs together stay at 8 MiB. UMEM memory is
/// what start-up and exit cost most (the kernel populates, pins and frees every page),
/// and one poll loop drains one ring at a time. Below 512, a bulk download on veth
/// finds the fill ring empty.
const RING_SIZE: u32 = 2048;
const MIN_RING_SIZE: u32 = 512;

/// Ring size for each of the `queues` sockets one stack polls (a power of two, as the
/// kernel requires). Each UMEM holds twice its ring size in frames: a full fill ring
/// plus as many for transmit.
fn ring_size_for(queues: u32) -> u32 {
    (RING_SIZE / queues.max(1))
        .next_power_of_two()
        .clamp(MIN_RING_SIZE, RING_SIZE)
}

/// True if the running kernel delivers a packet larger than a frame to an AF_XDP socket
/// in several frames (multi-buffer, `XDP_USE_SG`, Linux 6.6) instead of dropping it.
fn multi_buffer_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| kernel_at_least(&super::netinfo::kernel_release(), (6, 6)))
}

/// Compares a release string such as `6.18.0-1-amd64` with `(major, minor)`.
fn kernel_at_least(release: &str, wanted: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= wanted
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

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum XdpModeChoice {
    /// In the driver (fastest; veth supports it).
    Native,
    /// Generic XDP on the socket buffer (works everywhere, slower).
    Skb,
}

impl XdpModeChoice {
    /// The mode's name, as the attached program reports it (`native` or `skb`).
    pub fn name(self) -> &'static str {
        match self {
            XdpModeChoice::Native => "native",
            XdpModeChoice::Skb => "skb",
        }
    }
}

/// Which RX queues get an AF_XDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueChoice {
    /// Every RX queue of the interface: RSS may hash a flow to any of them.
    All,
    /// One queue only; refused unless it is the interface's only queue, because nothing
    /// steers the stack's flows to it.
    Only(u32),
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
}

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
    xsks: XskMap<MapData>,
    config: Array<MapData, PodSteerConfig>,
    counters: PerCpuArray<MapData, u64>,
    /// The maps' fds (XSKMAP, config, counters), to hand to a holder.
    map_fds: [OwnedFd; 3],
    /// `native` or `skb`.
    pub attached_mode: &'static str,
    interface: String,
    ifindex: u32,
    /// RX queues of the interface, read after the program is attached (some drivers,
    /// virtio_net among them, change their channels when XDP comes or goes).
    pub rx_queues: u32,
    /// The BPF link that attaches the program, when this process attached it; closing
    /// it detaches.
    link: Option<OwnedFd>,
    /// The connection to the holder that lent the program to this process.
    loan: Option<std::os::unix::net::UnixStream>,
    /// Hand the program to a holder at exit, which keeps it attached this long.
    linger: Option<std::time::Duration>,
    /// The listening ports of each set of queues (stacks sharing the interface share
    /// the program): the program steers them all.
    listening: std::collections::HashMap<usize, Vec<u16>>,
}

/// The program shared by the sockets of every queue.
pub type SharedProgram = std::sync::Arc<std::sync::Mutex<XdpProgram>>;

/// The error for an interface whose program process `pid` is using.
fn in_use_by(iface: &str, pid: u32) -> SetupError {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    setup_error!(
        "interface {iface} is already in use by process {pid} ({}): only one XDP program can attach to an interface; stop it, or run on another interface",
        comm.trim()
    )
}

/// A typed map over `fd`.
fn map_from_fd<M: TryFrom<Map, Error = aya::maps::MapError>>(fd: &OwnedFd) -> SetupResult<M> {
    let data = MapData::from_fd(fd.try_clone()?)?;
    Ok(M::try_from(Map::from_map_data(data)?)?)
}

/// The fd of map `name` of a loaded object.
fn object_map_fd(ebpf: &aya::Ebpf, name: &str) -> SetupResult<OwnedFd> {
    let data = match ebpf.map(name) {
        Some(Map::XskMap(d) | Map::Array(d) | Map::PerCpuArray(d)) => d,
        _ => bail!("map {name} missing from the XDP object"),
    };
    Ok(data.fd().as_fd().try_clone_to_owned()?)
}

/// Writes an all-zero (disabled) steering config into the config map `config`: the
/// program passes everything to the kernel.
pub(super) fn disable_steering(config: std::os::fd::BorrowedFd<'_>) -> SetupResult<()> {
    let mut map: Array<MapData, PodSteerConfig> = map_from_fd(&config.try_clone_to_owned()?)?;
    map.set(0, PodSteerConfig(SteerConfig::default()), 0)?;
    Ok(())
}

/// Attaches `program` to `ifindex` through a new BPF link (BPF_LINK_CREATE), whose fd
/// this process owns: closing it detaches, as the kernel does when the process ends.
fn create_xdp_link(program: &Xdp, ifindex: u32, mode: XdpMode) -> std::io::Result<OwnedFd> {
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_XDP: u32 = 37;
    const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
    let prog_fd = program
        .fd()
        .map_err(std::io::Error::other)?
        .as_fd()
        .as_raw_fd();
    let flags = match mode {
        XdpMode::Skb => XDP_FLAGS_SKB_MODE,
        _ => XDP_FLAGS_DRV_MODE,
    };
    // union bpf_attr's link_create: prog_fd, target_ifindex, attach_type, flags; the
    // rest zero.
    let mut attr = [0u32; 16];
    attr[..4].copy_from_slice(&[prog_fd as u32, ifindex, BPF_XDP, flags]);
    // SAFETY: `attr` is a zeroed bpf_attr prefix of the size passed, alive across the
    // call; the kernel only reads it and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

impl XdpProgram {
    /// Checks the setup, loads the program and attaches it through a BPF link. Nothing
    /// is steered until [`XdpProgram::enable`]. A lingering holder of an earlier
    /// command's program (see [`super::holder`]) is asked to detach first.
    pub fn load(interface: &str, mode: Option<XdpModeChoice>) -> SetupResult<SharedProgram> {
        XdpProgram::load_on(&super::netinfo::interface(interface)?, mode, None)
    }

    /// Borrows the program and its bound sockets from the interface's holder, if one
    /// has it in a mode that suits (`None`: attach as usual).
    fn borrow(
        info: &super::netinfo::InterfaceInfo,
        mode: Option<XdpModeChoice>,
        linger: std::time::Duration,
    ) -> SetupResult<Option<(SharedProgram, Vec<PooledSocket>)>> {
        let wanted = mode.map(XdpModeChoice::name);
        match super::holder::ask(info.ifindex, true, wanted)? {
            super::holder::Answer::Busy(pid) => Err(in_use_by(&info.name, pid)),
            super::holder::Answer::Absent => Ok(None),
            super::holder::Answer::Lent {
                conn,
                mode,
                maps,
                pool,
            } => {
                tracing::debug!(mode, sockets = pool.len(), "XDP program lent by its holder");
                let program = XdpProgram::from_maps(
                    [maps.xsks, maps.config, maps.counters],
                    mode,
                    info,
                    None,
                    Some(conn),
                    Some(linger),
                )?;
                // Counters from this process's run only.
                program.zero_counters();
                Ok(Some((
                    std::sync::Arc::new(std::sync::Mutex::new(program)),
                    pool,
                )))
            }
        }
    }

    /// [`XdpProgram::load`] for an interface already looked up: a holder is asked to
    /// detach first. With `linger`, the program goes to a holder at exit.
    fn load_on(
        info: &super::netinfo::InterfaceInfo,
        mode: Option<XdpModeChoice>,
        linger: Option<std::time::Duration>,
    ) -> SetupResult<SharedProgram> {
        if XDP_OBJECT.is_empty() {
            bail!("the eBPF object is missing: run `cargo xtask build-ebpf`, then rebuild");
        }
        if !rustix::process::geteuid().is_root() {
            bail!("AF_XDP needs root (CAP_NET_ADMIN and CAP_BPF): run with sudo");
        }
        let iface = info.name.as_str();
        if !info.up {
            bail!("interface {iface} is down");
        }
        let wanted = mode.map(XdpModeChoice::name);
        let mut object: Option<aya::Ebpf> = None;
        // A holder on its way out (its linger ended) still holds the hook for the
        // few ms of its detach: wait for it rather than report it.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match super::holder::ask(info.ifindex, false, wanted)? {
                super::holder::Answer::Busy(pid) => return Err(in_use_by(iface, pid)),
                // A holder answers RETIRE with GONE (Absent), never with a loan.
                super::holder::Answer::Lent { .. } | super::holder::Answer::Absent => {}
            }
            if object.is_none() {
                tracing::debug!("loading the XDP object");
                let mut ebpf =
                    load_object_without_kernel_btf().context("loading the XDP program")?;
                tracing::debug!("XDP object parsed");
                let program: &mut Xdp = ebpf
                    .program_mut(xdp_ebpf::PROGRAM_NAME)
                    .ok_or_else(|| {
                        setup_error!("XDP program {} not in the object", xdp_ebpf::PROGRAM_NAME)
                    })?
                    .try_into()?;
                program
                    .load()
                    .context("the kernel refused the XDP program")?;
                object = Some(ebpf);
            }
            let ebpf = object.as_ref().expect("loaded above");
            match XdpProgram::attach(ebpf, info, mode) {
                Ok((link, attached_mode)) => {
                    tracing::debug!(mode = attached_mode, "XDP program attached");
                    let maps = [
                        object_map_fd(ebpf, xdp_ebpf::XSKS_MAP)?,
                        object_map_fd(ebpf, xdp_ebpf::CONFIG_MAP)?,
                        object_map_fd(ebpf, xdp_ebpf::COUNTERS_MAP)?,
                    ];
                    let program =
                        XdpProgram::from_maps(maps, attached_mode, info, Some(link), None, linger)?;
                    return Ok(std::sync::Arc::new(std::sync::Mutex::new(program)));
                }
                Err(e)
                    if std::time::Instant::now() < give_up
                        && super::netinfo::xdp_holder_comm(info.ifindex).as_deref()
                            == Some(super::holder::HOLDER_COMM) =>
                {
                    tracing::debug!("waiting for a lingering holder to detach: {e:#}");
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Attaches the loaded program in `mode` (native, falling back to skb, when not
    /// given): the link and the mode it got.
    fn attach(
        ebpf: &aya::Ebpf,
        info: &super::netinfo::InterfaceInfo,
        mode: Option<XdpModeChoice>,
    ) -> SetupResult<(OwnedFd, &'static str)> {
        let iface = info.name.as_str();
        let program: &Xdp = ebpf
            .program(xdp_ebpf::PROGRAM_NAME)
            .ok_or_else(|| {
                setup_error!("XDP program {} not in the object", xdp_ebpf::PROGRAM_NAME)
            })?
            .try_into()?;
        let attach = |mode: XdpMode| {
            create_xdp_link(program, info.ifindex, mode).map_err(|e| {
                // One XDP program per interface: name whoever holds it.
                match super::netinfo::xdp_holder(info.ifindex) {
                    Some(holder) => setup_error!(
                        "interface {iface} is already in use by {holder}: only one XDP program can attach to an interface; stop it, or run on another interface"
                    ),
                    None => SetupError::new(format!("attaching XDP to {iface}"), e),
                }
            })
        };
        // On a veth (or another device whose frames come from memory) AF_XDP is copy mode
        // either way, and native XDP costs a great deal: the peer must then split every
        // GSO unit into MTU frames (veth turns its peer's GSO off). Generic XDP sees the
        // units whole, and multi-buffer sockets take them: 40 times fewer packets.
        let mode = mode.or_else(|| {
            (super::netinfo::frames_come_from_memory(iface) && multi_buffer_supported())
                .then_some(XdpModeChoice::Skb)
        });
        Ok(match mode {
            Some(m @ XdpModeChoice::Native) => (attach(XdpMode::Driver)?, m.name()),
            Some(m @ XdpModeChoice::Skb) => (attach(XdpMode::Skb)?, m.name()),
            None => match attach(XdpMode::Driver) {
                Ok(link) => (link, "native"),
                Err(e) if super::netinfo::xdp_holder(info.ifindex).is_some() => return Err(e),
                Err(native) => {
                    let link = attach(XdpMode::Skb)?;
                    if multi_buffer_supported() {
                        tracing::info!(
                            "native XDP refused on {iface} ({:#}); running in generic (skb) mode",
                            native.root_cause()
                        );
                    } else {
                        tracing::warn!(
                            "native XDP refused on {iface} ({:#}); running in generic (skb) mode, where this kernel (before 6.6, no AF_XDP multi-buffer) drops frames larger than {FRAME_SIZE} bytes (a local peer's GSO segments) and bulk transfers crawl",
                            native.root_cause()
                        );
                    }
                    (link, "skb")
                }
            },
        })
    }

    fn from_maps(
        map_fds: [OwnedFd; 3],
        attached_mode: &'static str,
        info: &super::netinfo::InterfaceInfo,
        link: Option<OwnedFd>,
        loan: Option<std::os::unix::net::UnixStream>,
        linger: Option<std::time::Duration>,
    ) -> SetupResult<XdpProgram> {
        Ok(XdpProgram {
            xsks: map_from_fd(&map_fds[0])?,
            config: map_from_fd(&map_fds[1])?,
            counters: map_from_fd(&map_fds[2])?,
            map_fds,
            attached_mode,
            interface: info.name.clone(),
            ifindex: info.ifindex,
            rx_queues: super::netinfo::rx_queue_count(&info.name).min(MAX_QUEUES),
            link,
            loan,
            linger,
            listening: std::collections::HashMap::new(),
        })
    }

    /// Zeroes the steering counters (a lent program counted earlier runs' packets).
    fn zero_counters(&self) {
        let Ok(cpus) = aya::util::nr_cpus() else {
            return;
        };
        let Ok(mut counters) = map_from_fd::<PerCpuArray<MapData, u64>>(&self.map_fds[2]) else {
            return;
        };
        for index in 0..COUNTER_NO_SOCKET_QUEUE0 + MAX_QUEUES {
            if let Ok(zero) = aya::maps::PerCpuValues::try_from(vec![0u64; cpus]) {
                let _ = counters.set(index, zero, 0);
            }
        }
    }

    fn register(&mut self, queue: u32, fd: std::os::fd::RawFd) -> SetupResult<()> {
        self.xsks
            .set(queue, fd, 0)
            .context("registering the AF_XDP socket in the XSKMAP")?;
        Ok(())
    }

    /// Writes the steering config: from now on the program steers the stack's packets.
    pub fn enable(&mut self, steer: SteerConfig) -> SetupResult<()> {
        let mut steer = steer;
        steer.enabled = 1;
        self.config
            .set(0, PodSteerConfig(steer), 0)
            .context("writing the steering config")?;
        Ok(())
    }

    /// Replaces the listening ports of `owner` (one set of queues, one stack) steered
    /// to the stacks in shared-IP mode, so that a listener opened after start-up gets
    /// its SYNs: the program steers the ports of every owner. The rest of the config
    /// stays.
    pub fn set_listen_ports(&mut self, owner: usize, ports: &[u16]) -> SetupResult<()> {
        let mut all: Vec<u16> = self
            .listening
            .iter()
            .filter(|(o, _)| **o != owner)
            .flat_map(|(_, p)| p.iter().copied())
            .chain(ports.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        if all.len() > xdp_ebpf::MAX_LISTEN_PORTS {
            bail!("at most {} listening ports", xdp_ebpf::MAX_LISTEN_PORTS);
        }
        self.listening.insert(owner, ports.to_vec());
        let PodSteerConfig(mut steer) = self
            .config
            .get(&0, 0)
            .context("reading the steering config")?;
        steer.listen_ports = [0; xdp_ebpf::MAX_LISTEN_PORTS];
        steer.listen_ports[..all.len()].copy_from_slice(&all);
        self.config
            .set(0, PodSteerConfig(steer), 0)
            .context("writing the steering config")?;
        Ok(())
    }

    /// Lets go of the program and of `sockets` (queue, ring size, AF_XDP socket and
    /// UMEM memfd of each) at exit. A lent program goes back to its holder with the
    /// sockets, which it keeps bound for the next borrower; a program this process
    /// attached goes to a new holder when it should linger. Either way this
    /// returns at once, and true. False when the caller must close the sockets and
    /// detach itself (the program is not lingering, or no holder could take it).
    fn release(&mut self, sockets: &[(u32, u32, BorrowedFd<'_>, BorrowedFd<'_>)]) -> bool {
        if let Some(conn) = &self.loan {
            return super::holder::give_back(conn, sockets).is_ok();
        }
        let (Some(linger), Some(link)) = (self.linger, &self.link) else {
            return false;
        };
        // This very binary, even if its file was replaced since it started.
        let exe = std::path::Path::new("/proc/self/exe");
        let handover = super::holder::Handover {
            ifindex: self.ifindex,
            mode: self.attached_mode,
            linger,
            link: link.as_fd(),
            maps: self.map_fds.each_ref().map(|m| m.as_fd()),
            pool: sockets.to_vec(),
        };
        match super::holder::spawn(exe, &handover) {
            Ok(()) => {
                // The holder has the link now; ours closes without detaching.
                drop(self.link.take());
                true
            }
            Err(e) => {
                tracing::debug!("no holder, detaching now: {e:#}");
                false
            }
        }
    }

    /// Detaches the program now (dropping it would too, later), unless it is lent.
    fn detach(&mut self) {
        drop(self.link.take());
    }

    fn counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// The program's steering counters, summed over CPUs.
    pub fn steer_counters(&self) -> SteerCounters {
        SteerCounters {
            steered: self.counter(COUNTER_STEERED),
            passed: self.counter(COUNTER_PASSED),
            no_socket: self.counter(COUNTER_NO_SOCKET),
        }
    }

    /// Packets for the stack dropped because their queue had no socket: (queue, count).
    pub fn no_socket_by_queue(&self) -> Vec<(u32, u64)> {
        if self.counter(COUNTER_NO_SOCKET) == 0 {
            return Vec::new();
        }
        (0..MAX_QUEUES)
            .map(|q| (q, self.counter(COUNTER_NO_SOCKET_QUEUE0 + q)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

impl XdpDevice {
    /// An AF_XDP socket with its own UMEM on `queue` of `iface`, whose rings are sized
    /// for a stack that polls `queues` queues. It receives once registered with the program.
    pub fn bind(
        iface: &super::netinfo::InterfaceInfo,
        queue: u32,
        queues: u32,
    ) -> SetupResult<Self> {
        // The kernel releases a closed socket's hold on its queue a while after the
        // close returns (two RCU grace periods): a stack started right after another
        // one ended may find the queue still busy (EBUSY) for tens of milliseconds.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            match XdpDevice::try_bind(iface, queue, queues) {
                Err(BindError::Busy(_)) if std::time::Instant::now() < give_up => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(BindError::Busy(e) | BindError::Other(e)) => return Err(e),
                Ok(device) => return Ok(device),
            }
        }
    }

    fn try_bind(
        iface: &super::netinfo::InterfaceInfo,
        queue: u32,
        queues: u32,
    ) -> Result<Self, BindError> {
        let ring_size = ring_size_for(queues);
        let socket = XskSocket::create(iface.ifindex, queue, ring_size, FRAME_SIZE, bind_flags())
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

    /// Takes over a socket that an earlier process bound (from the holder's pool).
    pub fn adopt(iface: &super::netinfo::InterfaceInfo, pooled: PooledSocket) -> SetupResult<Self> {
        let queue = pooled.queue;
        let socket = XskSocket::adopt(pooled.fd, pooled.memfd, pooled.ring_size, FRAME_SIZE)
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
        iface: &super::netinfo::InterfaceInfo,
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
                BATCH
            ],
            tx_free,
            awaiting_completion,
            tx_queued: Vec::with_capacity(BATCH * 4),
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
        })
    }

    /// Recycles every received frame without looking at it.
    /// Sends what is queued and waits, up to `give_up`, for the kernel to complete
    /// every frame in the TX ring: a socket handed to the holder leaves no frame in
    /// flight, whose late completion the next user could not tell from a free frame.
    fn drain_tx(&mut self, give_up: std::time::Instant) {
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
            let n = self.socket.consume_rx(&mut self.rx_batch[..BATCH]);
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

    /// Entries of each of its rings.
    pub fn ring_size(&self) -> u32 {
        self.socket.ring_size
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
        let n = self.socket.consume_rx(&mut self.rx_batch[..BATCH]);
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
        let len = build(frame).min(FRAME_SIZE as usize);
        if len == 0 {
            self.tx_free.push(addr);
        } else {
            self.awaiting_completion[(addr / FRAME_SIZE as u64) as usize] = true;
            self.tx_queued.push(libc::xdp_desc {
                addr,
                len: len as u32,
                options: 0,
            });
            if self.tx_queued.len() >= BATCH {
                self.flush();
            }
        }
        true
    }

    /// Puts the queued frames on the TX ring and has the kernel send them. In copy mode
    /// one sendto(2) sends at most 32 frames (the kernel's TX_BATCH_SIZE), so the ring
    /// is kicked again while that completes more: a turn leaves no frame waiting in the
    /// ring, and an idle loop may sleep (see [`XdpQueues::wait_for_frames`]).
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
}

/// AF_XDP sockets on several RX queues of one interface, driven by one poll loop: RSS
/// hashes each flow to a queue of its own choosing, so the stack must listen on all.
/// Frames are received from every queue and sent on the first socket's TX ring (any
/// queue's TX ring leaves by the same interface).
pub struct XdpQueues {
    devices: Vec<XdpDevice>,
    program: SharedProgram,
    /// Whether this set reports the program's interface-wide counters (steering,
    /// packets on queues without a socket); with sharded stacks, one of them does.
    pub report_program_counters: bool,
    /// One `pollfd` per socket, for [`XdpQueues::wait_for_frames`] (made once).
    pollfds: Vec<libc::pollfd>,
    /// Names this set of queues to the program (its listening ports).
    owner: usize,
}

/// The next [`XdpQueues::owner`].
static NEXT_OWNER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl XdpQueues {
    /// Loads and attaches the program, binds the queues `choice` names, then enables
    /// steering: no packet is steered before every socket is registered. The sockets
    /// are bound while the program loads: each step waits on the kernel, so side by side
    /// they take the time of the longest.
    ///
    /// With `linger`, the program is borrowed from the interface's holder when one has
    /// it (no load, no attach), and at exit goes to a holder that keeps it attached for
    /// `linger` more (see [`super::holder`]).
    pub fn open(
        interface: &str,
        mode: Option<XdpModeChoice>,
        choice: QueueChoice,
        steer: SteerConfig,
        linger: Option<std::time::Duration>,
    ) -> SetupResult<Self> {
        let info = super::netinfo::interface(interface)?;
        let count = super::netinfo::rx_queue_count(interface).min(MAX_QUEUES);
        let wanted = queues_for(interface, count, choice)?;
        if let Some(linger) = linger
            && let Some((program, pool)) = XdpProgram::borrow(&info, mode, linger)?
        {
            let ring_size = ring_size_for(wanted.len() as u32);
            let fits = pool
                .iter()
                .all(|p| wanted.contains(&p.queue) && p.ring_size == ring_size);
            let taken_over = fits.then(|| -> SetupResult<XdpQueues> {
                let mut devices = Vec::with_capacity(wanted.len());
                let mut pool = pool;
                for &q in &wanted {
                    devices.push(match pool.iter().position(|p| p.queue == q) {
                        Some(i) => XdpDevice::adopt(&info, pool.swap_remove(i))?,
                        None => XdpDevice::bind(&info, q, wanted.len() as u32)?,
                    });
                }
                let queues = XdpQueues::register(&program, devices)?;
                lock(&program).enable(steer)?;
                Ok(queues)
            });
            match taken_over {
                Some(Ok(queues)) => {
                    tracing::debug!(queues = ?queues.queues(), "AF_XDP sockets taken over, steering on");
                    return Ok(queues);
                }
                Some(Err(e)) => tracing::debug!("could not take the sockets over: {e:#}"),
                None => {}
            }
            // Sockets of another shape (another queue choice), or unusable: the holder
            // lets go of everything, and this process starts afresh.
            drop(program);
        }
        // One thread binds the sockets while this one loads and attaches the program
        // (the attach mostly waits in the kernel): each gets a core of its own.
        let (program, devices) = std::thread::scope(|scope| {
            let info = &info;
            let wanted = &wanted;
            let binds = scope.spawn(move || {
                wanted
                    .iter()
                    .map(|&q| XdpDevice::bind(info, q, wanted.len() as u32))
                    .collect::<SetupResult<Vec<XdpDevice>>>()
            });
            let program = XdpProgram::load_on(info, mode, linger);
            let devices = binds
                .join()
                .unwrap_or_else(|_| bail!("binding the queues panicked"));
            (program, devices)
        });
        let program = program?;
        let mut devices = devices?;
        // Some drivers (virtio_net) change their channels when XDP attaches: bind what
        // the attached interface has, if that differs.
        let now = lock(&program).rx_queues;
        if now != count {
            let wanted = queues_for(interface, now, choice)?;
            devices.retain(|d| wanted.contains(&d.queue));
            for &q in &wanted {
                if !devices.iter().any(|d| d.queue == q) {
                    devices.push(XdpDevice::bind(&info, q, wanted.len() as u32)?);
                }
            }
        }
        let queues = XdpQueues::register(&program, devices)?;
        lock(&program).enable(steer)?;
        tracing::debug!(queues = ?queues.queues(), "AF_XDP sockets bound, steering on");
        Ok(queues)
    }

    /// One socket per queue in `queues` for an already loaded program.
    pub fn bind(program: &SharedProgram, queues: &[u32]) -> SetupResult<Self> {
        let info = super::netinfo::interface(&lock(program).interface)?;
        let devices = queues
            .iter()
            .map(|&q| XdpDevice::bind(&info, q, queues.len() as u32))
            .collect::<SetupResult<Vec<_>>>()?;
        XdpQueues::register(program, devices)
    }

    /// Puts each socket in the program's XSKMAP slot of its queue.
    fn register(program: &SharedProgram, devices: Vec<XdpDevice>) -> SetupResult<Self> {
        if devices.is_empty() {
            bail!("no RX queue to bind");
        }
        for device in &devices {
            lock(program).register(device.queue, device.pooled_fds().0.as_raw_fd())?;
        }
        let pollfds = devices
            .iter()
            .map(|d| libc::pollfd {
                fd: d.pooled_fds().0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Ok(XdpQueues {
            devices,
            program: program.clone(),
            report_program_counters: true,
            pollfds,
            owner: NEXT_OWNER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    fn program(&self) -> std::sync::MutexGuard<'_, XdpProgram> {
        lock(&self.program)
    }

    /// `native` or `skb`.
    pub fn attached_mode(&self) -> &'static str {
        self.program().attached_mode
    }

    /// The program's steering counters, summed over CPUs.
    pub fn steer_counters(&self) -> SteerCounters {
        self.program().steer_counters()
    }

    /// The queues with a socket, in order.
    pub fn queues(&self) -> Vec<u32> {
        self.devices.iter().map(|d| d.queue).collect()
    }

    /// RX queues of the interface (with a socket or not).
    pub fn interface_queues(&self) -> u32 {
        self.program().rx_queues
    }

    /// The listening ports of this set of queues; see [`XdpProgram::set_listen_ports`].
    pub fn set_listen_ports(&self, ports: &[u16]) -> SetupResult<()> {
        self.program().set_listen_ports(self.owner, ports)
    }

    /// Packets for the stack dropped on queues without a socket: (queue, count).
    pub fn no_socket_by_queue(&self) -> Vec<(u32, u64)> {
        if !self.report_program_counters {
            return Vec::new();
        }
        self.program().no_socket_by_queue()
    }

    /// Sleeps in poll(2) until a frame arrives on any queue's RX ring or `timeout`
    /// passes: what an idle poll loop does instead of spinning. The kernel wakes a copy-mode
    /// socket from the softirq that puts a frame in its RX ring. Returns at once while
    /// frames wait for room in a ring (the fill ring or the TX ring) or for the kernel
    /// to send them, which only the poll loop moves on. Returns whether a socket has
    /// frames to read or to move.
    pub fn wait_for_frames(&mut self, timeout: std::time::Duration) -> bool {
        if self
            .devices
            .iter()
            .any(|d| !d.awaiting_fill.is_empty() || !d.tx_queued.is_empty() || d.in_tx_ring > 0)
        {
            return true;
        }
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `pollfds` is an initialised array of `len()` pollfd structs that the
        // kernel may write `revents` of; `ts` lives across the call; no signal mask.
        let ready = unsafe {
            libc::ppoll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        ready > 0
    }

    /// Adds `fd` to what [`XdpQueues::wait_for_frames`] waits for: it returns when `fd`
    /// is readable too (a [`super::wake::WakeFd`] of the loop).
    pub fn also_wake_on(&mut self, fd: RawFd) {
        self.pollfds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }

    /// UMEM frames of every queue, summed.
    pub fn frame_account(&self) -> FrameAccount {
        self.devices
            .iter()
            .map(XdpDevice::frame_account)
            .fold(FrameAccount::default(), |a, b| FrameAccount {
                total: a.total + b.total,
                free_for_tx: a.free_for_tx + b.free_for_tx,
                in_fill_ring: a.in_fill_ring + b.in_fill_ring,
                awaiting_fill: a.awaiting_fill + b.awaiting_fill,
                in_tx_ring: a.in_tx_ring + b.in_tx_ring,
                queued_tx: a.queued_tx + b.queued_tx,
            })
    }

    /// Socket statistics of every queue, summed: (rx_dropped, rx_ring_full, fill_empty).
    /// rx_dropped includes the packets too large to put together (see `MAX_GATHERED`).
    pub fn socket_stats(&self) -> (u64, u64, u64) {
        self.devices
            .iter()
            .fold((0, 0, 0), |a, d| match d.socket_stats() {
                Some(x) => (
                    a.0 + x.rx_dropped + d.rx_oversized,
                    a.1 + x.rx_ring_full,
                    a.2 + x.rx_fill_ring_empty,
                ),
                None => (a.0 + d.rx_oversized, a.1, a.2),
            })
    }

    /// True if the sockets take packets larger than a frame in several frames.
    pub fn multi_buffer(&self) -> bool {
        multi_buffer_supported()
    }
}

impl Drop for XdpQueues {
    /// Closing an AF_XDP socket and detaching XDP each wait for an RCU grace period in
    /// the kernel (several ms each). Done side by side they cost one, which is most of
    /// the exit time of a short fetch. The program is detached here only when no other
    /// `XdpQueues` shares it (serve's other stacks may still be draining).
    /// A lingering program takes the sockets with it to its holder, which closes them
    /// after this process has gone.
    fn drop(&mut self) {
        let program = &self.program;
        let last_user = std::sync::Arc::strong_count(program) == 1;
        if last_user {
            let give_up = std::time::Instant::now() + TX_DRAIN_AT_EXIT;
            for device in &mut self.devices {
                device.drain_tx(give_up);
            }
            let sockets: Vec<_> = self
                .devices
                .iter()
                .map(|d| {
                    let (fd, memfd) = d.pooled_fds();
                    (d.queue, d.ring_size(), fd, memfd)
                })
                .collect();
            if lock(program).release(&sockets) {
                // Our copies of the fds: closing them only drops a reference.
                self.devices.clear();
                return;
            }
        }
        std::thread::scope(|scope| {
            if last_user {
                scope.spawn(|| lock(program).detach());
            }
            for device in self.devices.drain(..) {
                scope.spawn(move || drop(device));
            }
        });
    }
}

/// The queues of an attached program's interface to bind for `choice`.
pub fn choose_queues(program: &SharedProgram, choice: QueueChoice) -> SetupResult<Vec<u32>> {
    let (iface, count) = {
        let p = lock(program);
        (p.interface.clone(), p.rx_queues)
    };
    queues_for(&iface, count, choice)
}

/// The queues to bind for `choice` on `iface` with `count` RX queues.
fn queues_for(iface: &str, count: u32, choice: QueueChoice) -> SetupResult<Vec<u32>> {
    match choice {
        QueueChoice::All => Ok((0..count).collect()),
        QueueChoice::Only(q) if q >= count => {
            bail!("--queue {q}: {iface} has {count} RX queue(s), numbered from 0")
        }
        QueueChoice::Only(q) if count > 1 => bail!(
            "--queue {q}: {iface} has {count} RX queues and RSS spreads flows over all of them; without a flow-steering rule, a socket on one queue misses the flows hashed to the others (leave out --queue: the stack binds every queue)"
        ),
        QueueChoice::Only(q) => Ok(vec![q]),
    }
}

impl Device for XdpQueues {
    fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize {
        self.devices.iter_mut().map(|d| d.receive(handle)).sum()
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        self.devices[0].transmit(build)
    }

    fn flush(&mut self) {
        self.devices[0].flush();
    }

    fn mac(&self) -> MacAddr {
        self.devices[0].mac
    }

    fn mtu(&self) -> usize {
        self.devices[0].mtu
    }
}

/// Loads the XDP object without parsing the kernel's BTF. The program needs no CO-RE
/// relocation, but aya's `EbpfLoader::new()` always parses /sys/kernel/btf/vmlinux
/// (megabytes; 20 to 30 ms, most of a small fetch's start-up). So the loader is made on
/// a thread of its own whose root directory is /proc, where that path does not exist;
/// the thread ends there and nothing else sees the change. If that fails, the loader
/// parses the file as usual.
fn load_object_without_kernel_btf() -> SetupResult<aya::Ebpf> {
    let mut loader = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let hidden = hide_kernel_btf_from_this_thread();
                tracing::debug!(hidden, "kernel BTF hidden from the loader");
                aya::EbpfLoader::new()
            })
            .join()
            .map_err(|_| setup_error!("the XDP loader thread panicked"))
    })?;
    loader
        .btf(None)
        .load(XDP_OBJECT)
        .context("parsing the XDP object")
}

/// Gives the calling thread a root directory without /sys/kernel/btf/vmlinux. Other
/// threads and processes see no change.
fn hide_kernel_btf_from_this_thread() -> bool {
    // SAFETY: unshare(CLONE_FS) gives the calling thread its own copy of the root and
    // working directories; chroot then changes only that copy. Both take C strings
    // that outlive the calls.
    unsafe {
        libc::unshare(libc::CLONE_FS) == 0
            && libc::chroot(c"/proc".as_ptr()) == 0
            && libc::chdir(c"/".as_ptr()) == 0
    }
}

/// The program's lock; a panic in another queue's thread must not wedge this one.
fn lock(program: &SharedProgram) -> std::sync::MutexGuard<'_, XdpProgram> {
    program
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::kernel_at_least;

    #[test]
    fn kernel_release_comparison() {
        assert!(kernel_at_least("6.18.0-1-amd64", (6, 6)));
        assert!(kernel_at_least("6.6.0", (6, 6)));
        assert!(!kernel_at_least("6.1.0-27-amd64", (6, 6)));
        assert!(!kernel_at_least("5.19.17", (6, 6)));
        assert!(kernel_at_least("7.0", (6, 6)));
        assert!(!kernel_at_least("", (6, 6)));
    }
}
