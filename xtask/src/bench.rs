//! `cargo xtask bench`: the end-to-end comparison, side by side in one run on the same
//! link (the machine is noisy, so only ratios measured together mean anything).
use crate::charts;
use crate::install;
use crate::world::{
    HOST_IF, HOST_IP, HTTP_ECHO_PORT, NginxConfig, NginxProcesses, OWNED_IP, SERVER_IP, World,
    WorldOptions,
};
use anyhow::{Context, bail};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FILE_SIZE: usize = 512 << 20;
const UPLOAD_SIZE: usize = 256 << 20;

/// Busy CPU time of the whole machine (all cores), from /proc/stat: user, nice, system,
/// irq and softirq, so the kernel's softirq work on the kernel path is counted too.
fn cpu_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy = f.first().unwrap_or(&0.0)
        + f.get(1).unwrap_or(&0.0)
        + f.get(2).unwrap_or(&0.0)
        + f.get(5).unwrap_or(&0.0)
        + f.get(6).unwrap_or(&0.0);
    busy / 100.0
}

/// Row names are made once per run; leaking them keeps `Row` simple.
pub(crate) fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

pub(crate) struct Row {
    pub(crate) name: &'static str,
    pub(crate) ours: f64,
    pub(crate) kernel: f64,
    pub(crate) unit: &'static str,
    pub(crate) target: &'static str,
}

pub(crate) fn json_field(line: &str, key: &str) -> Option<f64> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim_matches('"').parse().ok()
}

pub(crate) fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One bulk transfer: its rate, and CPU seconds per GB moved, of the whole machine
/// (/proc/stat: counts the softirq work wherever it runs, but also whatever else the
/// machine is doing) and of the client process alone (its rusage: exact, but the kernel
/// path's receive work runs partly in the sender's context and is not all charged to it).
#[derive(Clone, Copy)]
pub(crate) struct Transfer {
    pub(crate) gbps: f64,
    pub(crate) machine_cpu_per_gb: f64,
    pub(crate) client_cpu_per_gb: f64,
}

/// Runs a transfer command moving `bytes`. The rate is the one the command prints
/// (`gbit_per_s`), or else from its wall time.
pub(crate) fn timed_transfer(mut cmd: Command, bytes: usize) -> anyhow::Result<Transfer> {
    let cpu0 = cpu_busy_seconds();
    let client0 = children_cpu_seconds();
    let t = Instant::now();
    let line = output(&mut cmd)?;
    let secs = t.elapsed().as_secs_f64();
    let gb = bytes as f64 / 1e9;
    Ok(Transfer {
        gbps: json_field(&line, "gbit_per_s").unwrap_or(bytes as f64 * 8.0 / secs / 1e9),
        machine_cpu_per_gb: (cpu_busy_seconds() - cpu0) / gb,
        client_cpu_per_gb: (children_cpu_seconds() - client0) / gb,
    })
}

/// The better (faster) of two runs: the first one warms caches.
pub(crate) fn best_of_two(run: &dyn Fn() -> anyhow::Result<Transfer>) -> anyhow::Result<Transfer> {
    let (a, b) = (run()?, run()?);
    Ok(if a.gbps >= b.gbps { a } else { b })
}

fn wrk(world: &World, url: &str) -> anyhow::Result<f64> {
    let report = output(
        world
            .exec(&world.server)
            .args(["wrk", "-t2", "-c100", "-d10s", url]),
    )?;
    report
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output: {report}"))
}

/// Median wall time and median CPU time (user + system of the process and its
/// children) of `runs` runs of a whole command, start-up and exit included: what a user
/// of a CLI waits for.
fn whole_process(mk: &dyn Fn() -> Command, runs: usize) -> anyhow::Result<(f64, f64)> {
    let mut walls = Vec::with_capacity(runs);
    let mut cpus = Vec::with_capacity(runs);
    for _ in 0..runs {
        let before = children_cpu_seconds();
        let t = Instant::now();
        output(&mut mk())?;
        walls.push(t.elapsed().as_secs_f64());
        cpus.push(children_cpu_seconds() - before);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(&mut walls), median(&mut cpus)))
}

/// [`whole_process`] of `ours` and `kernel` alternating, `runs` each, `before_ours`
/// called before each of ours (not timed); a first run of ours, untimed, warms up.
fn whole_process_side_by_side(
    ours: &dyn Fn() -> Command,
    kernel: &dyn Fn() -> Command,
    runs: usize,
    before_ours: &dyn Fn(),
) -> anyhow::Result<((f64, f64), (f64, f64))> {
    let (mut ours_walls, mut ours_cpus, mut kernel_walls, mut kernel_cpus) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    output(&mut ours())?;
    for _ in 0..runs {
        let (wall, cpu) = whole_process(kernel, 1)?;
        kernel_walls.push(wall);
        kernel_cpus.push(cpu);
        before_ours();
        let (wall, cpu) = whole_process(ours, 1)?;
        ours_walls.push(wall);
        ours_cpus.push(cpu);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((
        (median(ours_walls), median(ours_cpus)),
        (median(kernel_walls), median(kernel_cpus)),
    ))
}

/// CPU seconds of this process's waited-for children (getrusage RUSAGE_CHILDREN).
fn children_cpu_seconds() -> f64 {
    let out = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields 16 and 17 (cutime, cstime), after the command name in parentheses.
    let after = out.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<f64> = after
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // `after` starts at field 3 (state, not a number, skipped by the parse).
    let ticks = f.get(12).unwrap_or(&0.0) + f.get(13).unwrap_or(&0.0);
    ticks / 100.0
}

/// Starts `userspace serve` (port 8080, `www`) with `extra` flags in the host
/// namespace, measures it with wrk and stops it.
fn serve_rps(world: &World, bin: &str, www: &Path, extra: &[&str]) -> anyhow::Result<f64> {
    let mut argv = vec![
        bin,
        "serve",
        "--iface",
        HOST_IF,
        "--port",
        "8080",
        "--root",
        www.to_str().unwrap_or("."),
    ];
    argv.extend_from_slice(extra);
    let mut serve = world.spawn_ready(&world.host, &argv)?;
    let rps = wrk(world, &format!("http://{HOST_IP}:8080/index.html"));
    let _ = Command::new("kill")
        .args(["-INT", &serve.id().to_string()])
        .status();
    let _ = serve.wait();
    rps
}

/// The sections of a run, in order; `--only` picks some.
pub const SECTIONS: [&str; 9] = [
    "process", "bulk", "rr", "cps", "serve", "idle", "queues", "exec", "ipv6",
];

/// Refuses an `--only` name that is not a section.
pub fn check_sections(only: &[String]) -> anyhow::Result<()> {
    match only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        Some(bad) => bail!(
            "no bench section `{bad}`; the sections are {}",
            SECTIONS.join(", ")
        ),
        None => Ok(()),
    }
}

pub fn bench(root: &Path, binary: &Path, only: &[String]) -> anyhow::Result<()> {
    check_sections(only)?;
    let want = |section: &str| only.is_empty() || only.iter().any(|s| s == section);
    install::apt_install(&["socat"])?; // the echo peer
    let world = World::up(&WorldOptions {
        nginx: true,
        http_echo: true,
        big_file: Some(FILE_SIZE),
        ..Default::default()
    })?;
    let bin = binary.to_str().unwrap();
    let url = format!("http://{SERVER_IP}/big.bin");
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut cdfs = Vec::new();
    std::fs::write(
        world.dir.join("www/big64.bin"),
        &std::fs::read(world.dir.join("www/big.bin"))?[..64 << 20],
    )?;
    if want("process") {
        whole_process_rows(&world, bin, &mut rows, &mut notes)?;
    }
    if want("bulk") {
        bulk_rows(&world, bin, &url, &mut rows, &mut notes)?;
    }
    if want("rr") {
        cdfs = rr_rows(&world, bin, &mut rows, &mut notes)?;
    }
    if want("cps") {
        cps_rows(&world, bin, &mut rows)?;
    }
    if want("serve") {
        serve_row(&world, bin, &mut rows)?;
    }
    if want("idle") {
        idle_row(&world, bin, &mut rows)?;
    }
    if want("exec") {
        crate::bench_exec::exec_rows(&world, bin, &mut rows, &mut notes)?;
    }
    drop(world);
    if want("ipv6") {
        crate::bench_ipv6::ipv6_rows(bin, &mut rows, &mut notes)?;
    }
    if want("queues") {
        queues_row(bin, &mut rows)?;
    }
    print_rows(&rows, &notes);
    if only.is_empty() {
        draw_charts(root, &rows, &cdfs)?;
    }
    let path = root.join("target/bench.json");
    std::fs::write(&path, rows_json(&rows))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// Whole process, as users measure a CLI: start-up, transfer and exit, median of 10,
/// ours and the kernel's curl alternating. Warm: back to back, as a script's curls
/// run (the program stays attached between them, held by a lingering process).
/// Cold: each run after the holder has gone (it attaches and binds afresh).
fn whole_process_rows(
    world: &World,
    bin: &str,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let holder_gone = || {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            let pids =
                output(Command::new("ip").args(["netns", "pids", &world.host])).unwrap_or_default();
            let held = pids.split_whitespace().any(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "userspace-xdp")
            });
            if !held {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let held = format!("http://{SERVER_IP}:{HTTP_ECHO_PORT}/hold");
    for (name, page, target_wall, cold) in [
        (
            "small page (226 B), warm",
            format!("http://{SERVER_IP}/index.html"),
            "<= 1.2x",
            false,
        ),
        (
            "small page (226 B), cold",
            format!("http://{SERVER_IP}/index.html"),
            "<= 1.5x",
            true,
        ),
        (
            "64 MiB download",
            format!("http://{SERVER_IP}/big64.bin"),
            "<= 1.0x",
            false,
        ),
        // The server keeps the connection open after a complete response: curl exits
        // at once without waiting for the server's FIN.
        ("server keeps the connection open", held, "<= 1.2x", false),
    ] {
        let (ours, kernel) = whole_process_side_by_side(
            &|| {
                let mut c = world.exec(&world.host);
                c.args([bin, "curl", "-sS", "-o", "/dev/null", &page]);
                c
            },
            &|| {
                let mut c = world.exec(&world.host);
                c.args(["curl", "-sS", "-o", "/dev/null", &page]);
                c
            },
            10,
            &|| {
                if cold {
                    holder_gone();
                }
            },
        )?;
        rows.push(Row {
            name: leak(format!("whole process wall, {name} (median of 10)")),
            ours: ours.0 * 1e3,
            kernel: kernel.0 * 1e3,
            unit: "ms",
            target: target_wall,
        });
        rows.push(Row {
            name: leak(format!("whole process CPU, {name}")),
            ours: ours.1 * 1e3,
            kernel: kernel.1 * 1e3,
            unit: "ms",
            target: "<= 1.0x",
        });
    }
    notes.push(
        "whole process CPU of ours leaves out the lingering holder (not a waited-for child); it only waits between runs"
            .to_string(),
    );
    Ok(())
}

/// Bulk download and upload against the kernel, and the AF_XDP receive ceiling.
fn bulk_rows(
    world: &World,
    bin: &str,
    url: &str,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    // Bulk download, each twice (best of two: the first warms the page cache).
    let download = |kernel: bool| {
        best_of_two(&|| {
            let mut c = world.exec(&world.host);
            if kernel {
                c.arg("curl");
            } else {
                c.args([bin, "curl"]);
            }
            c.args(["-sS", "-o", "/dev/null", url]);
            timed_transfer(c, FILE_SIZE)
        })
    };
    let (ours_down, kernel_down) = (download(false)?, download(true)?);
    let ours_gbps = ours_down.gbps;

    // Upload: 256 MiB from the host to a kernel discard server (socat reading to EOF,
    // then closing), by the stack and by kernel sockets running the same workload.
    let _discard = world.spawn(
        &world.server,
        &[
            "socat",
            "-u",
            "-b",
            "262144",
            "TCP-LISTEN:7001,reuseaddr,fork",
            "/dev/null",
        ],
    )?;
    world.wait_for_port(&world.server, SERVER_IP, 7001, false)?;
    let discard = format!("{SERVER_IP}:7001");
    let upload = |kernel: bool| {
        best_of_two(&|| {
            let mut c = world.exec(&world.host);
            c.args([bin, "bench", "send", &discard, "--bytes"])
                .arg(UPLOAD_SIZE.to_string());
            if kernel {
                c.arg("--kernel");
            }
            timed_transfer(c, UPLOAD_SIZE)
        })
    };
    let (ours_up, kernel_up) = (upload(false)?, upload(true)?);
    // The per-packet comparison: the kernel sending the same upload as MTU frames, as
    // AF_XDP must (TSO and GSO off on the host's link for this run only).
    let host_offloads = |state: &str| {
        output(
            world
                .exec(&world.host)
                .args(["ethtool", "-K", HOST_IF, "tso", state, "gso", state]),
        )
    };
    host_offloads("off")?;
    let kernel_up_mtu = upload(true);
    host_offloads("on")?;
    let kernel_up_mtu = kernel_up_mtu?;
    for (direction, size, ours, kernel) in [
        (
            "download (512 MiB, nginx -> curl)",
            "downloaded",
            ours_down,
            kernel_down,
        ),
        (
            "upload (256 MiB, to a kernel discard server)",
            "uploaded",
            ours_up,
            kernel_up,
        ),
    ] {
        rows.push(Row {
            name: leak(format!("bulk {direction}")),
            ours: ours.gbps,
            kernel: kernel.gbps,
            unit: "Gbit/s",
            target: if size == "downloaded" {
                ">= 1.2x"
            } else {
                ">= 1.0x"
            },
        });
        rows.push(Row {
            name: leak(format!("CPU per GB {size} (machine)")),
            ours: ours.machine_cpu_per_gb,
            kernel: kernel.machine_cpu_per_gb,
            unit: "CPU-s/GB",
            target: "<= 1.0x",
        });
        rows.push(Row {
            name: leak(format!("CPU per GB {size} (client process)")),
            ours: ours.client_cpu_per_gb,
            kernel: kernel.client_cpu_per_gb,
            unit: "CPU-s/GB",
            target: "<= 1.0x",
        });
    }

    rows.push(Row {
        name: "bulk upload vs the kernel sending MTU frames (TSO/GSO off)",
        ours: ours_up.gbps,
        kernel: kernel_up_mtu.gbps,
        unit: "Gbit/s",
        target: ">= 1.0x",
    });
    rows.push(Row {
        name: "CPU per GB uploaded (machine), kernel sending MTU frames",
        ours: ours_up.machine_cpu_per_gb,
        kernel: kernel_up_mtu.machine_cpu_per_gb,
        unit: "CPU-s/GB",
        target: "report",
    });

    // The AF_XDP ceiling: frames counted and recycled by a sink with no stack, sent by
    // an AF_XDP blaster on the router's end of the link.
    // Read inside the host namespace: /sys of this process shows the root namespace.
    let mac = output(
        world
            .exec(&world.host)
            .args(["cat", &format!("/sys/class/net/{HOST_IF}/address")]),
    )?;
    let sink = world
        .exec(&world.host)
        .args([
            bin,
            "sink",
            "--iface",
            HOST_IF,
            "--ip",
            &OWNED_IP.to_string(),
            "--seconds",
            "3",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    let blaster = world.spawn(
        &world.router,
        &[
            bin,
            "blast",
            "--iface",
            "r0",
            "--to",
            &OWNED_IP.to_string(),
            "--to-mac",
            mac.trim(),
            "--seconds",
            "6",
        ],
    )?;
    let sink_out = sink.wait_with_output()?;
    let mut blaster = blaster;
    let _ = blaster.kill();
    let _ = blaster.wait();
    let sink_line = String::from_utf8_lossy(&sink_out.stdout).into_owned();
    let ceiling = json_field(&sink_line, "gbit_per_s").unwrap_or(0.0);
    let ceiling_pps = json_field(&sink_line, "pps").unwrap_or(0.0);
    rows.push(Row {
        name: "download vs AF_XDP receive ceiling",
        ours: ours_gbps,
        kernel: ceiling,
        unit: "Gbit/s",
        target: ">= 0.9x ceiling",
    });
    notes.push(format!("AF_XDP receive ceiling: 1514 B UDP frames sent by `userspace blast` (AF_XDP TX on the router end of the link), counted and recycled by `userspace sink`: {ceiling:.2} Gbit/s, {ceiling_pps:.0} frames/s"));
    Ok(())
}

/// Request/response latency against a socat echo in the server namespace; returns the
/// last round's latency distributions for the chart.
fn rr_rows(
    world: &World,
    bin: &str,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<charts::Cdf>> {
    let _echo = world.spawn(
        &world.server,
        &["socat", "TCP-LISTEN:7000,reuseaddr,fork", "PIPE"],
    )?;
    world.wait_for_port(&world.server, SERVER_IP, 7000, false)?;
    // Five rounds, ours and the kernel's alternately: the target must hold in each.
    let target = format!("{SERVER_IP}:7000");
    const RR_ROUNDS: usize = 5;
    let keys = ["p50_us", "p99_us", "p999_us"];
    let mut rounds: Vec<([f64; 3], [f64; 3])> = Vec::new();
    let mut cdfs = Vec::new();
    for _ in 0..RR_ROUNDS {
        let ours = output(world.exec(&world.host).args([
            bin, "bench", "rr", &target, "--count", "20000", "--cpu", "0",
        ]))?;
        let kernel = output(
            world
                .exec(&world.host)
                .args([bin, "bench", "rr", &target, "--count", "20000", "--kernel"]),
        )?;
        let field = |out: &str| keys.map(|k| json_field(out, k).unwrap_or(0.0));
        rounds.push((field(&ours), field(&kernel)));
        cdfs = [("stack", &ours), ("kernel sockets", &kernel)]
            .into_iter()
            .filter_map(|(label, out)| {
                Some(charts::Cdf {
                    label: label.into(),
                    points: charts::parse_cdf(out)?,
                })
            })
            .collect();
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (i, (name, limit)) in [
        ("rr latency p50 (64 B), median of 5 rounds", 0.7),
        ("rr latency p99, median of 5 rounds", 0.8),
        ("rr latency p99.9, median of 5 rounds", 0.8),
    ]
    .into_iter()
    .enumerate()
    {
        let ratios: Vec<f64> = rounds.iter().map(|(o, k)| o[i] / k[i]).collect();
        let held = ratios.iter().filter(|r| **r <= limit).count();
        notes.push(format!(
            "{name}: ratio per round {}; target <= {limit}x held in {held} of {RR_ROUNDS}",
            ratios
                .iter()
                .map(|r| format!("{r:.2}x"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        rows.push(Row {
            name,
            ours: median(rounds.iter().map(|(o, _)| o[i]).collect()),
            kernel: median(rounds.iter().map(|(_, k)| k[i]).collect()),
            unit: "us",
            target: if limit < 0.75 { "<= 0.7x" } else { "<= 0.8x" },
        });
    }
    Ok(cdfs)
}

/// Connections per second against nginx (connect, GET, response, close), one at a
/// time and 16 in flight.
fn cps_rows(world: &World, bin: &str, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let target = format!("{SERVER_IP}:80");
    for parallel in [1usize, 16] {
        let cps = |kernel: bool| -> anyhow::Result<f64> {
            let mut c = world.exec(&world.host);
            c.args([bin, "bench", "cps", &target, "--seconds", "5", "--parallel"])
                .arg(parallel.to_string());
            c.args(if kernel {
                &["--kernel"][..]
            } else {
                &["--cpu", "0"][..]
            });
            Ok(json_field(&output(&mut c)?, "per_second").unwrap_or(0.0))
        };
        rows.push(Row {
            name: if parallel == 1 {
                "connections/s (sequential)"
            } else {
                "connections/s (16 in flight)"
            },
            ours: cps(false)?,
            kernel: cps(true)?,
            unit: "conn/s",
            target: ">= 2.0x",
        });
    }
    Ok(())
}

/// Server: `userspace serve` vs nginx in the host namespace, same file, wrk from the
/// server side.
fn serve_row(world: &World, bin: &str, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let www = world.dir.join("www");
    let conf = NginxConfig {
        name: "nginx-host",
        processes: NginxProcesses::One,
        connections: 4096,
        server: &format!(
            "    listen {HOST_IP}:8081 backlog=4096;
"
        ),
    }
    .write(&world.dir)?;
    let _nginx_host = world.spawn(
        &world.host,
        &[
            "nginx",
            "-c",
            conf.to_str().unwrap(),
            "-p",
            &world.dir.display().to_string(),
        ],
    )?;
    world.wait_for_port(&world.host, HOST_IP, 8081, false)?;
    let nginx_rps = wrk(world, &format!("http://{HOST_IP}:8081/index.html"))?;
    let stack_rps = serve_rps(world, bin, &www, &["--cpu", "0"])?;
    rows.push(Row {
        name: "server requests/s (wrk -c100)",
        ours: stack_rps,
        kernel: nginx_rps,
        unit: "req/s",
        target: ">= 1.5x nginx",
    });
    Ok(())
}

/// An idle stack: `userspace run` for 3 s with nothing to do, sleeping in poll(2)
/// after the default busy-poll budget vs spinning all along (a budget longer than
/// the run), process CPU time.
fn idle_row(world: &World, bin: &str, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let idle_cpu = |budget: &str| -> anyhow::Result<f64> {
        let run = || {
            let mut c = world.exec(&world.host);
            c.args([bin, "run", "--duration", "3", "--busy-poll-us", budget]);
            c
        };
        Ok(whole_process(&run, 1)?.1)
    };
    rows.push(Row {
        name: "CPU of an idle stack over 3 s: sleeping (stack) vs spinning (kernel column)",
        ours: idle_cpu("100")?,
        kernel: idle_cpu("1000000000")?,
        unit: "CPU-s",
        target: "near 0",
    });
    Ok(())
}

/// Multi-queue: `userspace serve` on the default 4-queue link, all queues dealt to one
/// stack vs to one stack per core (2 here), each stack on a pinned core.
fn queues_row(bin: &str, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let world = World::up(&WorldOptions::default())?;
    let www = world.dir.join("www");
    let mut rps = Vec::new();
    for stacks in [&["--queues", "1"][..], &[][..]] {
        rps.push(serve_rps(&world, bin, &www, stacks)?);
    }
    rows.push(Row {
        name: "serve req/s, 4 queues: a stack per core (stack) vs one stack (kernel column)",
        ours: rps[1],
        kernel: rps[0],
        unit: "req/s",
        target: "scaling shown",
    });
    Ok(())
}

fn print_rows(rows: &[Row], notes: &[String]) {
    println!("\n| measurement | userspace stack | kernel | ratio | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let ratio = r.ours / r.kernel.max(1e-9);
        println!(
            "| {} | {:.2} {} | {:.2} {} | {:.2}x | {} |",
            r.name, r.ours, r.unit, r.kernel, r.unit, ratio, r.target
        );
    }
    for n in notes {
        println!("\n{n}");
    }
}

fn rows_json(rows: &[Row]) -> String {
    let mut json = String::from("[");
    for r in rows {
        let ratio = r.ours / r.kernel.max(1e-9);
        json.push_str(&format!(
            "{{\"name\":\"{}\",\"ours\":{},\"kernel\":{},\"unit\":\"{}\",\"ratio\":{ratio}}},",
            r.name, r.ours, r.kernel, r.unit
        ));
    }
    json.pop();
    json.push_str("]\n");
    json
}

/// docs/bench-throughput.svg (every Gbit/s row: stack, kernel, ceiling) and
/// docs/bench-rr-cdf.svg (the last rr round of each path).
fn draw_charts(root: &Path, rows: &[Row], cdfs: &[charts::Cdf]) -> anyhow::Result<()> {
    // One group per transfer: the ceiling joins the download, the kernel's MTU-frame
    // upload joins the upload.
    let mut groups: Vec<charts::ThroughputGroup> = Vec::new();
    for r in rows.iter().filter(|r| r.unit == "Gbit/s") {
        let extra = if r.name.contains("ceiling") {
            Some(("bulk download", "AF_XDP receive ceiling (MTU frames)"))
        } else if r.name.contains("MTU frames") {
            Some(("bulk upload", "kernel, MTU frames (TSO/GSO off)"))
        } else {
            None
        };
        match extra.and_then(|(into, label)| {
            let group = groups.iter_mut().find(|g| g.name.starts_with(into))?;
            Some((group, label))
        }) {
            Some((group, label)) => group.bars.push((label.into(), r.kernel)),
            None => groups.push(charts::ThroughputGroup {
                name: r.name.to_string(),
                bars: vec![("stack".into(), r.ours), ("kernel".into(), r.kernel)],
            }),
        }
    }
    let docs = root.join("docs");
    charts::throughput(&docs.join("bench-throughput.svg"), &groups)?;
    if cdfs.len() == 2 {
        charts::latency_cdf(&docs.join("bench-rr-cdf.svg"), cdfs)?;
    }
    eprintln!("xtask: wrote docs/bench-throughput.svg and docs/bench-rr-cdf.svg");
    Ok(())
}
