//! `userspace bench`: workloads measured on the stack or, with `--kernel`, on kernel
//! sockets running the same workload code; and `userspace sink`, the raw AF_XDP receive
//! rate (frames counted and recycled, no stack) that bounds what the stack can do.
use super::setup::{StackArgs, open_runtime, resolve_next_hop};
use anyhow::{Context, anyhow, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant as WallInstant};
use userspace::device::Device;
use userspace::net::runtime::Runtime;
use userspace::stack::{ConnId, RecvError, SendError};
use userspace::tcp::State;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub workload: Workload,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Workload {
    /// Request/response latency: send SIZE bytes to an echo server, wait for them back
    Rr {
        /// Echo server address
        target: SocketAddr,
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Use kernel sockets instead of the stack
        #[arg(long)]
        kernel: bool,
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Connections per second: connect, GET PATH with Connection: close, read to EOF, close
    Cps {
        /// HTTP server address
        target: SocketAddr,
        #[arg(long, default_value = "/index.html")]
        path: String,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Connections in flight at once
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        #[arg(long)]
        kernel: bool,
        #[command(flatten)]
        stack: StackArgs,
    },
    /// Upload: send BYTES to a discard server, close, and wait for its close (every byte
    /// delivered and read)
    Send {
        /// Discard server address (reads to EOF, then closes)
        target: SocketAddr,
        #[arg(long, default_value_t = 256 << 20)]
        bytes: u64,
        #[arg(long)]
        kernel: bool,
        #[command(flatten)]
        stack: StackArgs,
    },
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Points of the latency distribution in `cdf_us`: the k-th value is the latency at or
/// below which k/CDF_POINTS of the requests fell (`cargo xtask bench` draws it).
const CDF_POINTS: usize = 200;

fn report_latency(kind: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let cdf: Vec<String> = (1..=CDF_POINTS)
        .map(|k| {
            let i = (samples.len() * k).div_ceil(CDF_POINTS).saturating_sub(1);
            samples
                .get(i)
                .map_or("0".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e6))
        })
        .collect();
    println!(
        "{{\"workload\":\"rr\",\"path\":\"{kind}\",\"count\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"cdf_us\":[{}]}}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        percentile(&samples, 0.999),
        cdf.join(",")
    );
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match &args.workload {
        Workload::Rr {
            target,
            count,
            size,
            kernel: true,
            ..
        } => {
            let mut s = TcpStream::connect(target).context("connect")?;
            s.set_nodelay(true)?;
            let msg = vec![0x42u8; *size];
            let mut back = vec![0u8; *size];
            let mut samples = Vec::with_capacity(*count);
            for _ in 0..*count {
                let t = WallInstant::now();
                s.write_all(&msg)?;
                s.read_exact(&mut back)?;
                samples.push(t.elapsed());
            }
            report_latency("kernel", samples);
            Ok(())
        }
        Workload::Rr {
            target,
            count,
            size,
            kernel: false,
            stack,
        } => {
            let mut stack_args = stack.clone();
            stack_args.nodelay = true;
            let mut rt = open_runtime(&stack_args, &[])?;
            let id = connect(&mut rt, *target)?;
            let mut back = vec![0u8; *size];
            let mut samples = Vec::with_capacity(*count);
            for round in 0..*count {
                // A different pattern every round, checked on return: the echo must be exact.
                let msg: Vec<u8> = (0..*size).map(|i| (i * 31 + round * 7) as u8).collect();
                let t = WallInstant::now();
                let mut sent = 0;
                let mut got = 0;
                while got < *size {
                    if sent < *size {
                        sent += match rt.stack.try_send(id, &msg[sent..]) {
                            Ok(n) => n,
                            Err(SendError::WouldBlock) => 0,
                            Err(e) => bail!("send: {e}"),
                        };
                    }
                    rt.idle();
                    rt.turn();
                    got += match rt.stack.try_recv(id, &mut back[got..]) {
                        Ok(n) => n,
                        Err(RecvError::WouldBlock) => 0,
                        Err(e) => bail!("recv: {e}"),
                    };
                    if rt.stopped() {
                        bail!("interrupted");
                    }
                }
                samples.push(t.elapsed());
                if back != msg {
                    bail!("round {round}: the echo differs from what was sent");
                }
            }
            report_latency("stack", samples);
            rt.stack.close(id);
            let end = rt.now() + Duration::from_millis(200);
            while rt.now() < end {
                rt.turn();
            }
            Ok(())
        }
        Workload::Cps {
            target,
            path,
            seconds,
            parallel,
            kernel,
            stack,
        } => {
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    .into_bytes();
            let duration = Duration::from_secs_f64(*seconds);
            let (done, failed) = if *kernel {
                cps_kernel(*target, &request, duration, *parallel)
            } else {
                cps_stack(stack, *target, &request, duration, *parallel)?
            };
            println!(
                "{{\"workload\":\"cps\",\"path\":\"{}\",\"parallel\":{parallel},\"connections\":{done},\"failed\":{failed},\"per_second\":{:.0}}}",
                if *kernel { "kernel" } else { "stack" },
                done as f64 / seconds
            );
            Ok(())
        }
        Workload::Send {
            target,
            bytes,
            kernel,
            stack,
        } => {
            let seconds = if *kernel {
                send_kernel(*target, *bytes)?
            } else {
                send_stack(stack, *target, *bytes)?
            };
            println!(
                "{{\"workload\":\"send\",\"path\":\"{}\",\"bytes\":{bytes},\"seconds\":{seconds:.4},\"gbit_per_s\":{:.3}}}",
                if *kernel { "kernel" } else { "stack" },
                *bytes as f64 * 8.0 / seconds.max(1e-9) / 1e9
            );
            Ok(())
        }
    }
}

/// What an upload writes: one buffer, sent again and again (no allocation per write).
const SEND_CHUNK: usize = 256 << 10;

/// The upload's buffer: byte `i` is `i % 251`; the stream is this chunk again and
/// again, so a segment out of place or corrupted shows in what the peer stored (the
/// netns upload test checks it byte for byte).
fn send_chunk() -> Vec<u8> {
    (0..SEND_CHUNK).map(|i| (i % 251) as u8).collect()
}

/// Upload on kernel sockets: write everything, half-close, wait for the peer's close.
/// Returns the seconds from connect to the peer's close.
fn send_kernel(target: SocketAddr, bytes: u64) -> anyhow::Result<f64> {
    let chunk = send_chunk();
    let t = WallInstant::now();
    let mut s = TcpStream::connect(target).context("connect")?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut buf = [0u8; 512];
    while s.read(&mut buf)? > 0 {}
    Ok(t.elapsed().as_secs_f64())
}

/// Upload on the stack: the same workload. Returns the seconds from connect to the
/// peer's FIN after ours was acknowledged.
fn send_stack(args: &StackArgs, target: SocketAddr, bytes: u64) -> anyhow::Result<f64> {
    let mut rt = open_runtime(args, &[])?;
    let chunk = send_chunk();
    let t = WallInstant::now();
    let id = connect(&mut rt, target)?;
    let mut left = bytes;
    rt.wait(None, |stack, _| {
        while left > 0 {
            // Where the stream is in the chunk: a partial write goes on from there, so
            // the peer gets the chunk again and again, as from the kernel path.
            let at = ((bytes - left) % chunk.len() as u64) as usize;
            let n = left.min((chunk.len() - at) as u64) as usize;
            match stack.try_send(id, &chunk[at..at + n]) {
                Ok(0) | Err(SendError::WouldBlock) => return None,
                Ok(n) => left -= n as u64,
                Err(SendError::Connection(e)) => return Some(Err(e)),
            }
        }
        Some(Ok(()))
    })
    .map_err(|e| anyhow!("send: {e:?}"))?
    .map_err(|e| anyhow!("send: {e}"))?;
    rt.stack.close(id);
    let deadline = rt.now() + Duration::from_secs(30);
    rt.wait(Some(deadline), |stack, _| {
        matches!(stack.state(id), State::TimeWait | State::Closed).then_some(())
    })
    .map_err(|e| anyhow!("waiting for the peer to close: {e:?}"))?;
    let seconds = t.elapsed().as_secs_f64();
    if args.stats {
        super::setup::print_stats(&rt);
    }
    if let Some(err) = rt.stack.connection(id).and_then(|c| c.error()) {
        bail!("upload failed: {err}");
    }
    Ok(seconds)
}

fn connect(rt: &mut Runtime, target: SocketAddr) -> anyhow::Result<ConnId> {
    resolve_next_hop(rt, target.ip(), Duration::from_secs(3))?;
    let now = rt.now();
    let id = rt.stack.connect(now, target)?;
    let deadline = rt.now() + Duration::from_secs(5);
    rt.wait(Some(deadline), |stack, _| match stack.state(id) {
        State::SynSent | State::SynReceived => None,
        State::Established => Some(Ok(())),
        _ => Some(Err(())),
    })
    .map_err(|e| anyhow!("connect: {e:?}"))?
    .map_err(|_| anyhow!("connect to {target} failed"))?;
    Ok(id)
}

fn cps_kernel(
    target: SocketAddr,
    request: &[u8],
    duration: Duration,
    parallel: usize,
) -> (u64, u64) {
    let threads: Vec<_> = (0..parallel.max(1))
        .map(|_| {
            let request = request.to_vec();
            std::thread::spawn(move || {
                let (mut done, mut failed) = (0u64, 0u64);
                let end = WallInstant::now() + duration;
                let mut buf = vec![0u8; 16384];
                while WallInstant::now() < end {
                    let ok = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect(target)?;
                        s.write_all(&request)?;
                        while s.read(&mut buf)? > 0 {}
                        Ok(())
                    })();
                    if ok.is_ok() { done += 1 } else { failed += 1 }
                }
                (done, failed)
            })
        })
        .collect();
    threads
        .into_iter()
        .filter_map(|t| t.join().ok())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

fn cps_stack(
    args: &StackArgs,
    target: SocketAddr,
    request: &[u8],
    duration: Duration,
    parallel: usize,
) -> anyhow::Result<(u64, u64)> {
    let mut rt = open_runtime(args, &[])?;
    resolve_next_hop(&mut rt, target.ip(), Duration::from_secs(3))?;
    let end = rt.now() + duration;
    let (mut done, mut failed) = (0u64, 0u64);
    // (connection, request bytes sent)
    let mut flights: Vec<(ConnId, usize)> = Vec::with_capacity(parallel);
    let mut buf = vec![0u8; 16384];
    while rt.now() < end && !rt.stopped() {
        while flights.len() < parallel.max(1) {
            let now = rt.now();
            flights.push((rt.stack.connect(now, target)?, 0));
        }
        rt.idle();
        rt.turn();
        let mut i = 0;
        while i < flights.len() {
            let (id, sent) = &mut flights[i];
            let id = *id;
            let finished = match rt.stack.state(id) {
                State::SynSent | State::SynReceived => false,
                State::Closed => {
                    // Refused or reset; or a clean close before we read everything.
                    if rt.stack.connection(id).and_then(|c| c.error()).is_some() {
                        failed += 1;
                    } else {
                        done += 1;
                    }
                    true
                }
                _ => {
                    if *sent < request.len() {
                        *sent += rt.stack.try_send(id, &request[*sent..]).unwrap_or(0);
                    }
                    while rt.stack.try_recv(id, &mut buf).is_ok_and(|n| n > 0) {}
                    if rt.stack.connection(id).is_some_and(|c| c.at_eof()) {
                        rt.stack.close(id);
                        done += 1;
                        true
                    } else {
                        false
                    }
                }
            };
            if finished {
                rt.stack.release(id);
                flights.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
    // Connections still in flight are reset, as the kernel does for the sockets of a
    // process that exits: left open, the server would hold them, and the next run that
    // picks one of their ports would meet a challenge ACK and wait out a SYN timeout.
    for (id, _) in flights.drain(..) {
        rt.stack.abort(id);
    }
    rt.turn();
    if args.stats {
        super::setup::print_stats(&rt);
    }
    Ok((done, failed))
}

#[derive(clap::Args, Debug, Clone)]
pub struct SinkArgs {
    /// Seconds to count for
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// Receives and recycles frames without looking at them: the AF_XDP ceiling.
pub fn sink(args: &SinkArgs) -> anyhow::Result<()> {
    let mut rt = open_runtime(&args.stack, &[])?;
    eprintln!("ready: sink on {}", rt.iface);
    let (mut frames, mut bytes) = (0u64, 0u64);
    // Wait for the first frame, then count for the given time.
    let mut started: Option<WallInstant> = None;
    let limit = Duration::from_secs_f64(args.seconds);
    let give_up = WallInstant::now() + Duration::from_secs(30);
    loop {
        let n = rt.device.receive(&mut |f| bytes += f.len() as u64);
        frames += n as u64;
        if n > 0 && started.is_none() {
            started = Some(WallInstant::now());
        }
        if started.is_some_and(|s| s.elapsed() >= limit)
            || rt.stopped()
            || WallInstant::now() > give_up
        {
            break;
        }
    }
    let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64()).max(1e-9);
    println!(
        "{{\"workload\":\"sink\",\"frames\":{frames},\"pps\":{:.0},\"gbit_per_s\":{:.3}}}",
        frames as f64 / secs,
        bytes as f64 * 8.0 / secs / 1e9
    );
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
pub struct BlastArgs {
    /// Destination IPv4 address of the frames
    #[arg(long)]
    pub to: std::net::Ipv4Addr,
    /// Destination MAC address (aa:bb:cc:dd:ee:ff)
    #[arg(long)]
    pub to_mac: String,
    /// Seconds to send for
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Frame length in bytes
    #[arg(long, default_value_t = 1514)]
    pub frame_len: usize,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// Transmits UDP frames through AF_XDP as fast as the TX ring takes them: a traffic
/// source for the receive ceiling that the kernel's socket path does not limit.
pub fn blast(args: &BlastArgs) -> anyhow::Result<()> {
    let dst_mac = userspace::device::netinfo::parse_mac(&args.to_mac)
        .ok_or_else(|| anyhow!("bad MAC {}", args.to_mac))?;
    // Owned-IP mode on an address nobody uses: the program steers nothing to us.
    let mut stack_args = args.stack.clone();
    stack_args.ip = Some(std::net::Ipv4Addr::new(198, 51, 100, 254).into());
    let mut rt = open_runtime(&stack_args, &[])?;
    let src_mac = rt.device.mac();
    let src_ip = rt.iface_ip;
    let len = args.frame_len.clamp(60, 1514);
    let mut frame = vec![0u8; len];
    userspace::wire::emit_ethernet(
        &mut frame,
        src_mac,
        dst_mac,
        userspace::wire::ETHERTYPE_IPV4,
    );
    let ip_len = len - userspace::wire::ETH_HEADER_LEN;
    let ip = &mut frame[userspace::wire::ETH_HEADER_LEN..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src_ip.octets());
    ip[16..20].copy_from_slice(&args.to.octets());
    let sum = userspace::wire::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip[20..22].copy_from_slice(&9u16.to_be_bytes());
    ip[22..24].copy_from_slice(&9u16.to_be_bytes());
    ip[24..26].copy_from_slice(&((ip_len - 20) as u16).to_be_bytes());
    eprintln!(
        "ready: blasting {len}-byte frames to {} for {} s",
        args.to, args.seconds
    );
    let end = WallInstant::now() + Duration::from_secs_f64(args.seconds);
    let mut sent = 0u64;
    while WallInstant::now() < end && !rt.stopped() {
        for _ in 0..64 {
            if rt.device.transmit(&mut |buf| {
                buf[..len].copy_from_slice(&frame);
                len
            }) {
                sent += 1;
            }
        }
        rt.device.flush();
    }
    println!("{{\"workload\":\"blast\",\"frames\":{sent}}}");
    Ok(())
}
