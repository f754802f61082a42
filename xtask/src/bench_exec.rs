//! The exec rows of `cargo xtask bench`: unmodified Debian nginx and redis-server on the
//! stack (`userspace exec`) against the same programs on the kernel's TCP, the load from
//! the server namespace, rounds alternating. Issue 19's targets: at least 1.5x the
//! kernel's requests/s and at most 0.7x its p99.
use crate::bench::{Row, leak, output};
use crate::world::{HOST_IF, HOST_IP, NginxConfig, NginxProcesses, World};
use anyhow::{Context, bail};
use std::process::{Child, Command};

const ROUNDS: usize = 3;
/// The kernel's copy and ours listen at once, on different ports of the host address.
const NGINX_PORTS: [u16; 2] = [8091, 8092];
const REDIS_PORTS: [u16; 2] = [6391, 6392];

/// Requests per second and the 99th percentile latency of one load run.
#[derive(Clone, Copy, Default)]
struct Load {
    per_second: f64,
    p99_ms: f64,
}

/// `1.23ms`, `850.00us`, `2.01s` as wrk prints them, in milliseconds.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(v) = text.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1e3)
    } else {
        return None;
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// The requests/s and the `99%` line of `wrk --latency`.
fn parse_wrk(report: &str) -> anyhow::Result<Load> {
    let per_second = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok());
    let p99_ms = report.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some("99%"))
            .then(|| words.next().and_then(wrk_duration_ms))
            .flatten()
    });
    match (per_second, p99_ms) {
        (Some(per_second), Some(p99_ms)) => Ok(Load { per_second, p99_ms }),
        _ => bail!("no Requests/sec or 99% line in wrk's output: {report}"),
    }
}

/// SET and GET from `redis-benchmark --csv` (redis 7: test, rps, avg, min, p50, p95,
/// p99, max).
fn parse_redis_csv(report: &str) -> anyhow::Result<[Load; 2]> {
    let row = |test: &str| -> Option<Load> {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("\"{test}\"")))?;
        let fields: Vec<f64> = line
            .split(',')
            .skip(1)
            .filter_map(|f| f.trim_matches('"').parse().ok())
            .collect();
        Some(Load {
            per_second: *fields.first()?,
            p99_ms: *fields.get(5)?,
        })
    };
    match (row("SET"), row("GET")) {
        (Some(set), Some(get)) => Ok([set, get]),
        _ => bail!("no SET/GET rows in redis-benchmark's csv: {report}"),
    }
}

/// Starts `argv` on the stack under `userspace exec` in the host namespace and returns
/// once the preload library says it listens on `port`.
fn start_on_stack(world: &World, bin: &str, argv: &[&str], port: u16) -> anyhow::Result<Child> {
    let mut full = vec![bin, "exec", "--iface", HOST_IF, "-v", "--"];
    full.extend_from_slice(argv);
    let ready = format!("listening on 0.0.0.0:{port} on the stack");
    world.spawn_until(&world.host, &full, move |line| line.contains(&ready))
}

/// Starts `argv` on the kernel's TCP in the host namespace, waiting for its port.
fn start_on_kernel(world: &World, argv: &[&str], port: u16) -> anyhow::Result<Child> {
    let child = world.spawn(&world.host, argv)?;
    world.wait_for_port(&world.host, HOST_IP, port, false)?;
    Ok(child)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn nginx_conf(world: &World, port: u16) -> anyhow::Result<String> {
    // One process (master_process off): the same shape on both sides.
    let conf = NginxConfig {
        name: &format!("nginx-exec-bench-{port}"),
        processes: NginxProcesses::NoMaster,
        connections: 4096,
        server: &format!(
            "    listen {port} backlog=4096;
"
        ),
    }
    .write(&world.dir)?;
    Ok(conf.to_string_lossy().into_owned())
}

fn redis_argv(port: &str) -> [&str; 11] {
    [
        "redis-server",
        "--port",
        port,
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Pushes the requests/s and p99 rows of `name` from `rounds` of (stack, kernel).
fn push_rows(name: &str, rounds: &[(Load, Load)], rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    let ratios: Vec<String> = rounds
        .iter()
        .map(|(o, k)| format!("{:.2}x", o.per_second / k.per_second.max(1e-9)))
        .collect();
    notes.push(format!(
        "{name} under `userspace exec`, requests/s ratio per round: {}",
        ratios.join(", ")
    ));
    rows.push(Row {
        name: leak(format!(
            "{name} requests/s, exec vs kernel (median of {ROUNDS})"
        )),
        ours: median(rounds.iter().map(|(o, _)| o.per_second).collect()),
        kernel: median(rounds.iter().map(|(_, k)| k.per_second).collect()),
        unit: "req/s",
        target: ">= 1.5x",
    });
    rows.push(Row {
        name: leak(format!("{name} p99 latency, exec vs kernel")),
        ours: median(rounds.iter().map(|(o, _)| o.p99_ms).collect()),
        kernel: median(rounds.iter().map(|(_, k)| k.p99_ms).collect()),
        unit: "ms",
        target: "<= 0.7x",
    });
}

pub(crate) fn exec_rows(
    world: &World,
    bin: &str,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    // nginx, wrk -c100 from the server namespace.
    let [kernel_port, stack_port] = NGINX_PORTS;
    let kernel_conf = nginx_conf(world, kernel_port)?;
    let stack_conf = nginx_conf(world, stack_port)?;
    let kernel = start_on_kernel(world, &["nginx", "-c", &kernel_conf], kernel_port)?;
    let stack = start_on_stack(world, bin, &["nginx", "-c", &stack_conf], stack_port)?;
    let wrk = |port: u16| -> anyhow::Result<Load> {
        let url = format!("http://{HOST_IP}:{port}/index.html");
        parse_wrk(&output(world.exec(&world.server).args([
            "wrk",
            "-t2",
            "-c100",
            "-d5s",
            "--latency",
            &url,
        ]))?)
    };
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let theirs = wrk(kernel_port)?;
        rounds.push((wrk(stack_port)?, theirs));
    }
    stop(stack);
    stop(kernel);
    push_rows("nginx (wrk -c100)", &rounds, rows, notes);

    // redis-server, redis-benchmark SET/GET with 50 clients from the server namespace.
    let [kernel_port, stack_port] = REDIS_PORTS.map(|p| p.to_string());
    let kernel = start_on_kernel(world, &redis_argv(&kernel_port), REDIS_PORTS[0])?;
    let stack = start_on_stack(world, bin, &redis_argv(&stack_port), REDIS_PORTS[1])?;
    let host = HOST_IP.to_string();
    let bench = |port: &str| -> anyhow::Result<[Load; 2]> {
        parse_redis_csv(
            &output(world.exec(&world.server).args([
                "redis-benchmark",
                "-h",
                &host,
                "-p",
                port,
                "-c",
                "50",
                "-n",
                "100000",
                "-t",
                "set,get",
                "--csv",
            ]))
            .context("redis-benchmark")?,
        )
    };
    let (mut set, mut get) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let [kernel_set, kernel_get] = bench(&kernel_port)?;
        let [stack_set, stack_get] = bench(&stack_port)?;
        set.push((stack_set, kernel_set));
        get.push((stack_get, kernel_get));
    }
    stop(stack);
    stop(kernel);
    push_rows("redis SET (50 clients)", &set, rows, notes);
    push_rows("redis GET (50 clients)", &get, rows, notes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_latency_report_is_read() {
        let report = "Running 5s test @ http://10.77.1.2:8092/index.html\n  2 threads and 100 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.10ms  300.00us   9.87ms   80.00%\n  Latency Distribution\n     50%    1.02ms\n     75%    1.20ms\n     90%    1.50ms\n     99%  850.00us\n  183000 requests in 5.00s, 60.00MB read\nRequests/sec:  36600.12\nTransfer/sec:     12.00MB\n";
        let load = parse_wrk(report).unwrap();
        assert_eq!(load.per_second, 36600.12);
        assert!((load.p99_ms - 0.85).abs() < 1e-9);
        assert!(parse_wrk("Requests/sec: 1\n").is_err());
        assert_eq!(wrk_duration_ms("2.00s"), Some(2000.0));
        assert_eq!(wrk_duration_ms("3.5ms"), Some(3.5));
        assert_eq!(wrk_duration_ms("3.5m"), None);
    }

    #[test]
    fn redis_benchmark_csv_is_read() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"SET\",\"51020.41\",\"0.550\",\"0.120\",\"0.511\",\"0.807\",\"1.127\",\"3.223\"\n\"GET\",\"60240.96\",\"0.470\",\"0.100\",\"0.447\",\"0.679\",\"0.983\",\"2.111\"\n";
        let [set, get] = parse_redis_csv(csv).unwrap();
        assert_eq!((set.per_second, set.p99_ms), (51020.41, 1.127));
        assert_eq!((get.per_second, get.p99_ms), (60240.96, 0.983));
        assert!(parse_redis_csv("\"SET\",\"1\"\n").is_err());
    }
}
