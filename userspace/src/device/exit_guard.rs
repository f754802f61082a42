//! The exit guard: the peers of a process that dies are reset at once.
//!
//! When a process with kernel sockets dies, the kernel closes them and the peers learn
//! of it. A process on the stack that is killed (or crashes) takes its connections'
//! state with it; its XDP program goes with its fds, so a peer's next segment reaches
//! the kernel, which answers with a RST (RFC 9293 3.10.7.1), but a peer that only waits
//! (a client for its reply, a server for the next request) would wait forever.
//!
//! So the stack keeps the addresses of its connections in a small file (a memfd
//! `userspace exec` makes: [`PeerTable`]), rewritten when connections come and go, and
//! a watcher process (`userspace exec`'s guard, [`watch`]) waits for the stack's
//! process to end. If it ends with connections in the table, the guard sends each peer
//! a segment outside its window through a raw socket; the peer answers it with an ACK
//! (RFC 9293 3.10.7.4), which reaches the kernel now that the XDP program is gone, and
//! the kernel's RST carries exactly the sequence number the peer expects. A stack that
//! stops cleanly empties the table first, so nothing is sent.
//!
//! The table is written with `pwrite` (no shared mapping): a header, then two halves
//! of entries; a new list goes into the inactive half and the header names it after,
//! so a process killed mid-write leaves the previous list whole.
use crate::wire::{TcpFlags, TcpOptions, TcpRepr, emit_tcp, seq::SeqNum};
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

/// The hidden argument that starts the guard (`userspace __exit-guard PID`).
pub const GUARD_ARG: &str = "__exit-guard";

const MAGIC: u32 = u32::from_le_bytes(*b"USGT");
const HEADER_LEN: u64 = 64;
const ENTRY_LEN: usize = 40;
/// Connections one half of the table holds; more are left out (their peers are reset
/// by the kernel on their next segment, as without the guard).
pub const TABLE_ENTRIES: usize = 65536;
const HALF_LEN: u64 = (TABLE_ENTRIES * ENTRY_LEN) as u64;
/// Bytes of the table file.
pub const TABLE_LEN: u64 = HEADER_LEN + 2 * HALF_LEN;

/// The header: magic, the owning process, the half in use, and its entry count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    owner: u32,
    half: u32,
    count: u32,
}

impl Header {
    fn read(file: &File) -> io::Result<Header> {
        let mut b = [0u8; 16];
        file.read_exact_at(&mut b, 0)?;
        let word = |i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        if word(0) != MAGIC {
            return Ok(Header {
                owner: 0,
                half: 0,
                count: 0,
            });
        }
        Ok(Header {
            owner: word(1),
            half: word(2) & 1,
            count: word(3).min(TABLE_ENTRIES as u32),
        })
    }

    fn write(&self, file: &File) -> io::Result<()> {
        let mut b = [0u8; 16];
        for (i, w) in [MAGIC, self.owner, self.half, self.count]
            .iter()
            .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        // One small write: a kill cannot leave half of it.
        file.write_all_at(&b, 0)
    }
}

fn half_offset(half: u32) -> u64 {
    HEADER_LEN + u64::from(half & 1) * HALF_LEN
}

fn encode(local: SocketAddr, remote: SocketAddr, out: &mut [u8]) {
    let ip16 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    out[0] = u8::from(local.is_ipv6());
    out[2..4].copy_from_slice(&local.port().to_le_bytes());
    out[4..6].copy_from_slice(&remote.port().to_le_bytes());
    out[8..24].copy_from_slice(&ip16(local.ip()));
    out[24..40].copy_from_slice(&ip16(remote.ip()));
}

fn decode(b: &[u8]) -> (SocketAddr, SocketAddr) {
    let ip = |b: &[u8], v6: bool| {
        let a = Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes"));
        match (v6, a.to_ipv4_mapped()) {
            (false, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(a),
        }
    };
    let v6 = b[0] == 1;
    let port = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    (
        SocketAddr::new(ip(&b[8..24], v6), port(2)),
        SocketAddr::new(ip(&b[24..40], v6), port(4)),
    )
}

/// A new, empty table in a memfd that child processes and `exec` inherit (not
/// close-on-exec): `userspace exec` makes it for the program and the guard.
pub fn new_table() -> io::Result<File> {
    let fd = rustix::fs::memfd_create(c"userspace-exit-guard", rustix::fs::MemfdFlags::empty())?;
    let file = File::from(fd);
    file.set_len(TABLE_LEN)?;
    Header {
        owner: 0,
        half: 0,
        count: 0,
    }
    .write(&file)?;
    Ok(file)
}

/// The stack's side: the table it keeps its connections' addresses in.
#[derive(Debug)]
pub struct PeerTable {
    file: File,
    header: Header,
    scratch: Vec<u8>,
    /// The list last written (the same list is not written again).
    written: Vec<u8>,
}

impl PeerTable {
    /// Opens the table at `path` and claims it for this process; an error if another
    /// live process holds it (the first stack under one `userspace exec` keeps it).
    pub fn claim(path: &Path) -> io::Result<PeerTable> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        // Only a table `new_table` made: never write into a file that took its fd number.
        let mut magic = [0u8; 4];
        file.read_exact_at(&mut magic, 0)?;
        if file.metadata()?.len() != TABLE_LEN || u32::from_le_bytes(magic) != MAGIC {
            return Err(io::Error::other(format!(
                "{} is not an exit guard's table",
                path.display()
            )));
        }
        let old = Header::read(&file)?;
        let me = std::process::id();
        if old.owner != 0 && old.owner != me && process_alive(old.owner) {
            return Err(io::Error::other(format!(
                "the exit guard's table is held by process {}",
                old.owner
            )));
        }
        let header = Header {
            owner: me,
            half: 0,
            count: 0,
        };
        header.write(&file)?;
        Ok(PeerTable {
            file,
            header,
            scratch: Vec::new(),
            written: Vec::new(),
        })
    }

    /// Writes the connections' (local, remote) addresses as the table's list.
    pub fn publish(
        &mut self,
        connections: impl Iterator<Item = (SocketAddr, SocketAddr)>,
    ) -> io::Result<()> {
        self.scratch.clear();
        for (local, remote) in connections.take(TABLE_ENTRIES) {
            let at = self.scratch.len();
            self.scratch.resize(at + ENTRY_LEN, 0);
            encode(local, remote, &mut self.scratch[at..]);
        }
        if self.scratch == self.written {
            return Ok(());
        }
        let half = self.header.half ^ 1;
        self.file.write_all_at(&self.scratch, half_offset(half))?;
        self.header.half = half;
        self.header.count = (self.scratch.len() / ENTRY_LEN) as u32;
        self.header.write(&self.file)?;
        std::mem::swap(&mut self.written, &mut self.scratch);
        Ok(())
    }

    /// The stack stopped cleanly: nothing is left to reset.
    pub fn clear(&mut self) -> io::Result<()> {
        self.header.count = 0;
        self.written.clear();
        self.header.write(&self.file)
    }
}

fn process_alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// The owner and the connections the table lists now.
fn read_table(file: &File) -> io::Result<(u32, Vec<(SocketAddr, SocketAddr)>)> {
    let header = Header::read(file)?;
    let mut bytes = vec![0u8; header.count as usize * ENTRY_LEN];
    file.read_exact_at(&mut bytes, half_offset(header.half))?;
    Ok((
        header.owner,
        bytes.chunks_exact(ENTRY_LEN).map(decode).collect(),
    ))
}

/// The sequence numbers of the two provoking segments: half the sequence space apart,
/// so that at least one lies outside the peer's window (never 2^31 wide), whatever the
/// connection's numbers.
const PROVOKING_SEQS: [u32; 2] = [0x8000_0000, 0];

/// A segment that makes a peer answer: an ACK with sequence number `seq` and no data.
/// Outside the window it gets an ACK back (RFC 9293 3.10.7.4); inside it, its
/// acknowledgment of nothing sent gets one too.
fn provoking_segment(local: SocketAddr, remote: SocketAddr, seq: u32) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: local.port(),
        dst_port: remote.port(),
        seq: SeqNum(seq),
        ack: Some(SeqNum(0)),
        flags: TcpFlags {
            ack: true,
            ..TcpFlags::default()
        },
        window: 0,
        options: TcpOptions::default(),
        payload: &[],
    };
    // emit_tcp writes Ethernet and IP headers too: take the TCP segment after them.
    let mut frame = [0u8; 128];
    let len = emit_tcp(
        &mut frame,
        (Default::default(), Default::default()),
        (local.ip(), remote.ip()),
        &repr,
        0,
        |_| {},
        crate::wire::TxChecksum::Complete,
    );
    let headers = 14 + if local.is_ipv6() { 40 } else { 20 };
    frame[headers..len].to_vec()
}

/// Sends the provoking segment from `local` to `remote` through a raw socket (the
/// kernel adds the IP header and routes it).
fn provoke(local: SocketAddr, remote: SocketAddr) -> io::Result<()> {
    use rustix::net::{AddressFamily, SocketType, ipproto};
    let family = if remote.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let raw = rustix::net::socket(family, SocketType::RAW, Some(ipproto::TCP))?;
    rustix::net::bind(&raw, &SocketAddr::new(local.ip(), 0))?;
    for seq in PROVOKING_SEQS {
        rustix::net::sendto(
            &raw,
            &provoking_segment(local, remote, seq),
            rustix::net::SendFlags::empty(),
            &SocketAddr::new(remote.ip(), 0),
        )?;
    }
    Ok(())
}

/// When, after the owner's death, the peers are provoked: once the XDP program is
/// surely gone, and again past Linux's 500 ms limit on answers to segments outside
/// the window (`tcp_invalid_ratelimit`) in case the first answer met it still attached.
const PROVOKE_AT: [Duration; 3] = [
    Duration::from_millis(30),
    Duration::from_millis(600),
    Duration::from_millis(1800),
];

/// The guard: waits for process `pid` (the program `userspace exec` runs) and for the
/// process that claims the table (the program, or a child of it that started the
/// stack); when the owner ends with connections listed, their peers are provoked.
/// Returns when the program has ended and no owner is left.
pub fn watch(pid: u32, file: File, say: &dyn Fn(&str)) -> io::Result<()> {
    let program = pidfd(pid)?;
    // The owner and its pidfd (`None`: it had ended before it could be opened).
    let mut owner: Option<(u32, Option<OwnedFd>)> = None;
    loop {
        let claimed = Header::read(&file)?.owner;
        if claimed != 0 && owner.as_ref().map(|o| o.0) != Some(claimed) {
            owner = Some((claimed, pidfd(claimed).ok()));
        }
        let owner_ended = match &owner {
            Some((_, None)) => true,
            Some((_, Some(fd))) => ended(fd.as_fd(), WATCH_TICK)?,
            None => {
                if ended(program.as_fd(), WATCH_TICK)? {
                    // Claimed and ended within one tick: handled on the next look.
                    let claimed = Header::read(&file)?.owner;
                    if claimed == 0 {
                        return Ok(());
                    }
                    owner = Some((claimed, pidfd(claimed).ok()));
                }
                continue;
            }
        };
        if owner_ended && let Some((dead, _)) = owner.take() {
            let (still, peers) = read_table(&file)?;
            if still == dead && !peers.is_empty() {
                say(&format!(
                    "process {dead} ended with {} connection(s) open: resetting their peers",
                    peers.len()
                ));
                reset_peers(&peers, say);
            }
            Header {
                owner: 0,
                half: 0,
                count: 0,
            }
            .write(&file)?;
        }
        if owner.is_none() && ended(program.as_fd(), Duration::ZERO)? {
            return Ok(());
        }
    }
}

/// How long the guard sleeps before it looks for a new owner of the table.
const WATCH_TICK: Duration = Duration::from_millis(250);

fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or(io::ErrorKind::InvalidInput)?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Whether the process behind `pidfd` has ended (a zombie too), waiting up to `wait`.
fn ended(pidfd: std::os::fd::BorrowedFd<'_>, wait: Duration) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let timeout = Timespec {
        tv_sec: wait.as_secs() as i64,
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    match poll(&mut fds, Some(&timeout)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(!fds[0].revents().is_empty()),
        Err(e) => Err(e.into()),
    }
}

fn reset_peers(peers: &[(SocketAddr, SocketAddr)], say: &dyn Fn(&str)) {
    let start = std::time::Instant::now();
    for at in PROVOKE_AT {
        std::thread::sleep(at.saturating_sub(start.elapsed()));
        for &(local, remote) in peers {
            if let Err(e) = provoke(local, remote) {
                say(&format!("cannot reach {remote} from {local}: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp_checksum;

    #[test]
    fn a_table_lists_what_was_published_last_and_nothing_after_clear() {
        let made = new_table().unwrap();
        let path = std::path::PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&made)
        ));
        let mut table = PeerTable::claim(&path).unwrap();
        let a = (
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        let b = (
            "[2001:db8::1]:40001".parse().unwrap(),
            "[2001:db8::2]:443".parse().unwrap(),
        );
        let c = (
            "[::ffff:10.0.0.1]:80".parse().unwrap(),
            "[::ffff:10.0.0.9]:5000".parse().unwrap(),
        );
        table.publish([a, b].into_iter()).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(read_table(&file).unwrap(), (std::process::id(), vec![a, b]));
        table.publish([c].into_iter()).unwrap();
        assert_eq!(read_table(&file).unwrap().1, vec![c]);
        table.clear().unwrap();
        assert_eq!(read_table(&file).unwrap().1, vec![]);
        // A second claim by this (live) process takes it over; another live one would not.
        assert!(PeerTable::claim(&path).is_ok());
        // Any other file is refused, and left as it was.
        let other = std::env::temp_dir().join(format!("not-a-table-{}", std::process::id()));
        std::fs::write(&other, b"a log line\n").unwrap();
        assert!(PeerTable::claim(&other).is_err());
        assert_eq!(std::fs::read(&other).unwrap(), b"a log line\n");
        std::fs::remove_file(&other).unwrap();
    }

    #[test]
    fn the_provoking_segments_are_bare_acks_half_the_sequence_space_apart() {
        let local: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let seg = provoking_segment(local, remote, PROVOKING_SEQS[0]);
        assert_eq!(seg.len(), 20);
        assert_eq!(&seg[0..4], &[0x9c, 0x40, 0x00, 0x50]);
        assert_eq!(&seg[4..8], &0x8000_0000u32.to_be_bytes());
        assert_eq!(seg[12] >> 4, 5, "no options");
        assert_eq!(seg[13], 0x10, "ACK only");
        assert_eq!(tcp_checksum(local.ip(), remote.ip(), &seg), 0);
        let local6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let remote6: SocketAddr = "[2001:db8::2]:2".parse().unwrap();
        let seg6 = provoking_segment(local6, remote6, PROVOKING_SEQS[1]);
        assert_eq!(tcp_checksum(local6.ip(), remote6.ip(), &seg6), 0);
        assert_eq!(&seg6[4..8], &[0, 0, 0, 0]);
        assert_eq!(PROVOKING_SEQS[0].wrapping_sub(PROVOKING_SEQS[1]), 1 << 31);
    }
}
