//! The XDP program: loaded with aya (without the kernel's BTF), attached through a BPF
//! link owned by this process, its maps (XSKMAP, steering config, counters), and its
//! hand-over to a lingering holder at exit (see [`crate::device::holder`]).
//!
//! The program is attached through a BPF link owned by this process, so the kernel
//! detaches it when the process ends by any path, `kill -9` included; or, when asked to
//! linger, by a holder process shortly after.
use super::attach::{XdpModeChoice, attach_link};
use crate::device::error::{Context, SetupError, SetupResult, bail, setup_error};
use crate::device::holder::{self, PooledSocket};
use crate::device::netinfo;
use crate::device::startup;
use crate::device::steering::{PodSteerConfig, map_from_fd};
use aya::maps::{Array, Map, MapData, PerCpuArray, XskMap};
use aya::programs::Xdp;
use std::os::fd::{AsFd, OwnedFd};
use xdp_ebpf::{
    COUNTER_COUNT, COUNTER_NO_SOCKET, COUNTER_NO_SOCKET_QUEUE0, COUNTER_PASSED, COUNTER_STEERED,
    COUNTER_V6_NDP_STEERED, COUNTER_V6_PASSED_EXTENSIONS, COUNTER_V6_PASSED_KERNEL_PORT,
    COUNTER_V6_PASSED_NOT_OURS, COUNTER_V6_PASSED_OTHER, COUNTER_V6_STEERED, MAX_QUEUES,
    SteerConfig,
};

/// The XDP object built by `cargo xtask build-ebpf`, embedded at compile time.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ebpf.o"));

/// Steering counters from the XDP program, summed over CPUs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SteerCounters {
    /// Frames steered to an AF_XDP socket.
    pub steered: u64,
    /// Frames passed to the kernel.
    pub passed: u64,
    /// Frames for the stack that arrived on a queue without a socket.
    pub no_socket: u64,
    /// What the program did with IPv6, and why.
    pub ipv6: Ipv6SteerCounters,
}

/// The program's IPv6 verdicts (included in [`SteerCounters::steered`] and
/// [`SteerCounters::passed`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ipv6SteerCounters {
    /// To the stack's address: its TCP and the ICMPv6 errors about it (shared), or all
    /// of it (owned).
    pub steered: u64,
    /// Owned address: neighbour solicitations and advertisements for it.
    pub ndp_steered: u64,
    /// Passed: to another address, or no IPv6 address is the stack's.
    pub passed_not_ours: u64,
    /// Passed: TCP to a port of the kernel's (shared address).
    pub passed_kernel_port: u64,
    /// Passed: ICMPv6 other than errors about the stack's segments (echo, NDP, errors
    /// about the kernel's), UDP, other protocols (shared address).
    pub passed_other: u64,
    /// Passed: a fragment, a chain of more extension headers than the program follows,
    /// or a header cut short (the kernel parses in full).
    pub passed_extensions: u64,
}

impl Ipv6SteerCounters {
    /// One `  name value` line per counter, as in the `--stats` report.
    pub fn report(&self) -> String {
        [
            ("ipv6_steered", self.steered),
            ("ipv6_ndp_steered", self.ndp_steered),
            ("ipv6_passed_not_ours", self.passed_not_ours),
            ("ipv6_passed_kernel_port", self.passed_kernel_port),
            ("ipv6_passed_other", self.passed_other),
            ("ipv6_passed_extensions", self.passed_extensions),
        ]
        .iter()
        .map(|(name, n)| format!("  {name:<24} {n}\n"))
        .collect()
    }
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
    pub(super) interface: String,
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

/// A program loaded and not attached yet, and the holder that will attach it, if any.
pub(super) struct Loaded {
    ebpf: aya::Ebpf,
    holder: Option<holder::Starting>,
}

/// The program shared by the sockets of every queue.
pub type SharedProgram = std::sync::Arc<std::sync::Mutex<XdpProgram>>;

/// The error for an interface whose program process `pid` is using.
fn in_use_by(iface: &str, pid: u32) -> SetupError {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    setup_error!(
        "interface {iface} is already in use by process {pid} ({}): only one XDP program can attach to an interface; stop it, run on another interface, or run every program on it with `userspace exec --share`",
        comm.trim()
    )
}

/// The fd of the loaded program of `ebpf`.
fn program_fd(ebpf: &aya::Ebpf) -> SetupResult<OwnedFd> {
    let program: &Xdp = ebpf
        .program(xdp_ebpf::PROGRAM_NAME)
        .ok_or_else(|| setup_error!("XDP program {} not in the object", xdp_ebpf::PROGRAM_NAME))?
        .try_into()?;
    Ok(program.fd()?.as_fd().try_clone_to_owned()?)
}

/// The fd of map `name` of a loaded object.
fn object_map_fd(ebpf: &aya::Ebpf, name: &str) -> SetupResult<OwnedFd> {
    let data = match ebpf.map(name) {
        Some(Map::XskMap(d) | Map::Array(d) | Map::PerCpuArray(d)) => d,
        _ => bail!("map {name} missing from the XDP object"),
    };
    Ok(data.fd().as_fd().try_clone_to_owned()?)
}

impl XdpProgram {
    /// Checks the setup, loads the program and attaches it through a BPF link. Nothing
    /// is steered until [`XdpProgram::enable`]. A lingering holder of an earlier
    /// command's program (see [`crate::device::holder`]) is asked to detach first.
    pub fn load(interface: &str, mode: Option<XdpModeChoice>) -> SetupResult<SharedProgram> {
        XdpProgram::load_on(&netinfo::interface(interface)?, mode)
    }

    /// Borrows the program and its bound sockets from the interface's holder, if one
    /// has it in a mode that suits (`None`: attach as usual).
    pub(super) fn borrow(
        info: &netinfo::InterfaceInfo,
        mode: Option<XdpModeChoice>,
        linger: std::time::Duration,
    ) -> SetupResult<Option<(SharedProgram, Vec<PooledSocket>)>> {
        let wanted = mode.map(XdpModeChoice::name);
        match holder::ask(info.ifindex, true, wanted)? {
            holder::Answer::Busy(pid) => Err(in_use_by(&info.name, pid)),
            holder::Answer::Absent => Ok(None),
            holder::Answer::Lent {
                conn,
                mode,
                maps,
                pool,
            } => {
                let mode = XdpModeChoice::from_name(&mode)
                    .ok_or_else(|| setup_error!("holder: bad mode {mode}"))?
                    .name();
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
    /// detach first.
    pub(super) fn load_on(
        info: &netinfo::InterfaceInfo,
        mode: Option<XdpModeChoice>,
    ) -> SetupResult<SharedProgram> {
        let loaded = XdpProgram::load_unattached(info, mode, None)?;
        let mut program = XdpProgram::unattached(&loaded, info, None)?;
        program.attach_loaded(loaded, info, mode)?;
        Ok(std::sync::Arc::new(std::sync::Mutex::new(program)))
    }

    /// Checks the setup and loads the program, not attached yet: a holder that has the
    /// interface is asked to detach first. With `linger`, a new holder is started
    /// beside the load, to attach the program ([`XdpProgram::attach_loaded`]).
    pub(super) fn load_unattached(
        info: &netinfo::InterfaceInfo,
        mode: Option<XdpModeChoice>,
        linger: Option<std::time::Duration>,
    ) -> SetupResult<Loaded> {
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
        match holder::ask(info.ifindex, false, mode.map(XdpModeChoice::name))? {
            holder::Answer::Busy(pid) => return Err(in_use_by(iface, pid)),
            // A holder answers RETIRE with GONE (Absent), never with a loan.
            holder::Answer::Lent { .. } | holder::Answer::Absent => {}
        }
        // This very binary, even if its file was replaced since it started.
        let exe = std::path::Path::new("/proc/self/exe");
        // Started from a thread of its own: the spawn waits until the new process has
        // exec'd, and the load need not wait with it.
        let ifindex = info.ifindex;
        let starting =
            linger.map(|linger| std::thread::spawn(move || holder::start(exe, ifindex, linger)));
        tracing::debug!("loading the XDP object");
        let mut ebpf = load_object_without_kernel_btf().context("loading the XDP program")?;
        tracing::debug!("XDP object parsed");
        let _load = startup::step("program load (verifier)");
        let program: &mut Xdp = ebpf
            .program_mut(xdp_ebpf::PROGRAM_NAME)
            .ok_or_else(|| {
                setup_error!("XDP program {} not in the object", xdp_ebpf::PROGRAM_NAME)
            })?
            .try_into()?;
        program
            .load()
            .context("the kernel refused the XDP program")?;
        let holder = starting.and_then(|t| t.join().ok()).and_then(|started| {
            started
                .inspect_err(|e| tracing::debug!("no holder to attach, attaching here: {e:#}"))
                .ok()
        });
        Ok(Loaded { ebpf, holder })
    }

    /// The maps of `loaded` as a program not attached yet: sockets may be registered
    /// and steering written before [`XdpProgram::attach_loaded`].
    pub(super) fn unattached(
        loaded: &Loaded,
        info: &netinfo::InterfaceInfo,
        linger: Option<std::time::Duration>,
    ) -> SetupResult<XdpProgram> {
        let maps = [
            object_map_fd(&loaded.ebpf, xdp_ebpf::XSKS_MAP)?,
            object_map_fd(&loaded.ebpf, xdp_ebpf::CONFIG_MAP)?,
            object_map_fd(&loaded.ebpf, xdp_ebpf::COUNTERS_MAP)?,
        ];
        XdpProgram::from_maps(maps, "none", info, None, None, linger)
    }

    /// Attaches `loaded` (the program these maps are of) in `mode`. Through its holder,
    /// when it has one: this returns as soon as the program runs, and the holder's
    /// attach call (which waits for an RCU grace period more) ends without this
    /// process, which borrows the program from then on. Else in this process.
    pub(super) fn attach_loaded(
        &mut self,
        loaded: Loaded,
        info: &netinfo::InterfaceInfo,
        mode: Option<XdpModeChoice>,
    ) -> SetupResult<()> {
        let prog = program_fd(&loaded.ebpf)?;
        let by_holder = match loaded.holder {
            Some(starting) => {
                let _t = startup::step("attach by the holder, until the program runs");
                let maps = self.map_fds.each_ref().map(|m| m.as_fd());
                let wanted = mode.map_or("any", XdpModeChoice::name);
                let attached =
                    starting.attach(prog.as_fd(), maps, info.ifindex, &info.name, wanted)?;
                if attached.is_none() {
                    tracing::debug!("the holder ended without attaching; attaching here");
                }
                attached
            }
            None => None,
        };
        match by_holder {
            Some(attached) => {
                self.attached_mode = XdpModeChoice::from_name(&attached.mode)
                    .ok_or_else(|| setup_error!("holder: bad mode {}", attached.mode))?
                    .name();
                tracing::debug!(
                    mode = self.attached_mode,
                    holder = attached.pid,
                    live_before_return = attached.live_before_return,
                    "XDP program attached by its holder"
                );
                self.loan = Some(attached.conn);
            }
            None => {
                let _t = startup::step("attach (BPF link)");
                let (link, attached_mode) =
                    attach_link(prog.as_fd(), info.ifindex, &info.name, mode, &|_| {})?;
                tracing::debug!(mode = attached_mode, "XDP program attached");
                self.link = Some(link);
                self.attached_mode = attached_mode;
            }
        }
        // Some drivers (virtio_net) change their channels when XDP comes.
        self.rx_queues = netinfo::rx_queue_count(&info.name).min(MAX_QUEUES);
        Ok(())
    }

    fn from_maps(
        map_fds: [OwnedFd; 3],
        attached_mode: &'static str,
        info: &netinfo::InterfaceInfo,
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
            rx_queues: netinfo::rx_queue_count(&info.name).min(MAX_QUEUES),
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
        for index in 0..COUNTER_COUNT {
            if let Ok(zero) = aya::maps::PerCpuValues::try_from(vec![0u64; cpus]) {
                let _ = counters.set(index, zero, 0);
            }
        }
    }

    pub(super) fn register(&mut self, queue: u32, fd: std::os::fd::RawFd) -> SetupResult<()> {
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
    pub(super) fn release(&mut self, sockets: &[holder::PoolEntry<'_>]) -> bool {
        if let Some(conn) = &self.loan {
            // Steering off now, not when the holder reads the hand-back: a holder that
            // attached the program for this process may still be in its attach call.
            let _ = self
                .config
                .set(0, PodSteerConfig(SteerConfig::default()), 0);
            return holder::give_back(conn, sockets).is_ok();
        }
        let (Some(linger), Some(link)) = (self.linger, &self.link) else {
            return false;
        };
        // This very binary, even if its file was replaced since it started.
        let exe = std::path::Path::new("/proc/self/exe");
        let handover = holder::Handover {
            ifindex: self.ifindex,
            mode: self.attached_mode,
            linger,
            link: link.as_fd(),
            maps: self.map_fds.each_ref().map(|m| m.as_fd()),
            pool: sockets.to_vec(),
        };
        match holder::spawn(exe, &handover) {
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
    pub(super) fn detach(&mut self) {
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
            ipv6: Ipv6SteerCounters {
                steered: self.counter(COUNTER_V6_STEERED),
                ndp_steered: self.counter(COUNTER_V6_NDP_STEERED),
                passed_not_ours: self.counter(COUNTER_V6_PASSED_NOT_OURS),
                passed_kernel_port: self.counter(COUNTER_V6_PASSED_KERNEL_PORT),
                passed_other: self.counter(COUNTER_V6_PASSED_OTHER),
                passed_extensions: self.counter(COUNTER_V6_PASSED_EXTENSIONS),
            },
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
                let _t = startup::step("loader without kernel BTF (thread)");
                let hidden = hide_kernel_btf_from_this_thread();
                tracing::debug!(hidden, "kernel BTF hidden from the loader");
                aya::EbpfLoader::new()
            })
            .join()
            .map_err(|_| setup_error!("the XDP loader thread panicked"))
    })?;
    let probes = startup::step("aya feature probes");
    let _ = aya::features();
    drop(probes);
    let _parse = startup::step("object parse, maps created");
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
pub(super) fn lock(program: &SharedProgram) -> std::sync::MutexGuard<'_, XdpProgram> {
    program
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
