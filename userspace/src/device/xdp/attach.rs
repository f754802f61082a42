//! Attaching the loaded XDP program to an interface through a BPF link, in the mode
//! asked or the best one there is: the same code for a process that attaches for
//! itself ([`super::program`]) and for the holder that attaches for a cold start
//! ([`crate::device::holder`]).
use super::socket::FRAME_SIZE;
use crate::device::error::{SetupError, SetupResult, setup_error};
use crate::device::netinfo::{self, multi_buffer_supported};
use aya::programs::XdpMode;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpModeChoice {
    /// In the driver (fastest; veth supports it).
    Native,
    /// Generic XDP on the socket buffer (works everywhere, slower).
    Skb,
}

impl XdpModeChoice {
    /// The mode named `name` (see [`XdpModeChoice::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        [XdpModeChoice::Native, XdpModeChoice::Skb]
            .into_iter()
            .find(|m| m.name() == name)
    }

    /// The mode's name, as the attached program reports it (`native` or `skb`).
    pub fn name(self) -> &'static str {
        match self {
            XdpModeChoice::Native => "native",
            XdpModeChoice::Skb => "skb",
        }
    }
}

/// Attaches the program `prog` to `ifindex` through a new BPF link (BPF_LINK_CREATE),
/// whose fd this process owns: closing it detaches, as the kernel does when the process
/// ends.
fn create_xdp_link(prog: BorrowedFd<'_>, ifindex: u32, mode: XdpMode) -> std::io::Result<OwnedFd> {
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_XDP: u32 = 37;
    const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
    let flags = match mode {
        XdpMode::Skb => XDP_FLAGS_SKB_MODE,
        _ => XDP_FLAGS_DRV_MODE,
    };
    // union bpf_attr's link_create: prog_fd, target_ifindex, attach_type, flags; the
    // rest zero.
    let mut attr = [0u32; 16];
    attr[..4].copy_from_slice(&[prog.as_raw_fd() as u32, ifindex, BPF_XDP, flags]);
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

/// Attaches the loaded program `prog` to interface `ifindex` (named `iface`) in `mode`
/// (native, falling back to skb, when not given): the link and the mode it got.
/// `attempting` is told each mode before its attach call starts. A holder on its way
/// out (its linger ended) still holds the hook for the few ms of its detach: that is
/// waited for, up to 2 s, rather than reported.
pub(crate) fn attach_link(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    iface: &str,
    mode: Option<XdpModeChoice>,
    attempting: &dyn Fn(XdpModeChoice),
) -> SetupResult<(OwnedFd, &'static str)> {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match attach_once(
            &Attach {
                prog,
                ifindex,
                iface,
                attempting,
            },
            mode,
        ) {
            Err(e)
                if std::time::Instant::now() < give_up
                    && netinfo::xdp_holder_comm(ifindex).as_deref()
                        == Some(netinfo::HOLDER_COMM) =>
            {
                tracing::debug!("waiting for a lingering holder to detach: {e:#}");
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            attached => return attached,
        }
    }
}

/// One XDP program per interface: the error naming whoever holds `iface`'s, if anyone
/// does (an attach, or a bind to a queue whose socket that program has, that failed).
pub(super) fn in_use_error(iface: &str, ifindex: u32) -> Option<SetupError> {
    let holder = netinfo::xdp_holder(ifindex)?;
    Some(if holder.starts_with("this process") {
        setup_error!("interface {iface} is already in use by {holder}")
    } else {
        setup_error!(
            "interface {iface} is already in use by {holder}: only one XDP program can attach to an interface; stop it, run on another interface, or run every program on it with `userspace exec --share`"
        )
    })
}

/// What [`attach_link`] tries each time.
struct Attach<'a> {
    prog: BorrowedFd<'a>,
    ifindex: u32,
    iface: &'a str,
    attempting: &'a dyn Fn(XdpModeChoice),
}

/// One try of [`attach_link`].
fn attach_once(
    a: &Attach<'_>,
    mode: Option<XdpModeChoice>,
) -> SetupResult<(OwnedFd, &'static str)> {
    let Attach {
        prog,
        ifindex,
        iface,
        attempting,
    } = *a;
    let attach = |mode: XdpModeChoice| {
        attempting(mode);
        let xdp_mode = match mode {
            XdpModeChoice::Native => XdpMode::Driver,
            XdpModeChoice::Skb => XdpMode::Skb,
        };
        create_xdp_link(prog, ifindex, xdp_mode).map_err(|e| {
            in_use_error(iface, ifindex)
                .unwrap_or_else(|| SetupError::new(format!("attaching XDP to {iface}"), e))
        })
    };
    // On a veth (or another device whose frames come from memory) AF_XDP is copy mode
    // either way, and native XDP costs a great deal: the peer must then split every
    // GSO unit into MTU frames (veth turns its peer's GSO off). Generic XDP sees the
    // units whole, and multi-buffer sockets take them: 40 times fewer packets.
    let mode = mode.or_else(|| {
        (netinfo::frames_come_from_memory(iface) && multi_buffer_supported())
            .then_some(XdpModeChoice::Skb)
    });
    Ok(match mode {
        Some(m) => (attach(m)?, m.name()),
        None => match attach(XdpModeChoice::Native) {
            Ok(link) => (link, "native"),
            Err(e) if netinfo::xdp_holder(ifindex).is_some() => return Err(e),
            Err(native) => {
                let link = attach(XdpModeChoice::Skb)?;
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
