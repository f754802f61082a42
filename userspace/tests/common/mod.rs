//! Helpers for the namespace tests: run the stack's binary inside the test world.
#![allow(dead_code)]
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
#[allow(unused_imports)]
pub use xtask::world::{self, HOST_IF, HOST_IP, OWNED_IP, SERVER_IP, World, WorldOptions};

pub const BIN: &str = env!("CARGO_BIN_EXE_userspace");

/// A running `userspace run` in the host namespace, ready to receive.
pub struct RunningStack {
    pub child: Child,
    pub stderr: std::sync::mpsc::Receiver<String>,
}

pub fn start_stack(world: &World, args: &[&str]) -> RunningStack {
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    start_binary(world, &full)
}

impl RunningStack {
    /// Sends `signal`, waits for exit, returns the remaining stderr lines.
    pub fn stop(mut self, signal: &str) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        Command::new("kill").args([signal, &pid]).status().unwrap();
        let status = wait_timeout(&mut self.child, Duration::from_secs(10));
        let mut lines = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            lines.push(line);
        }
        (status, lines)
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command in a namespace and returns its output.
pub fn run_in(world: &World, ns: &str, argv: &[&str]) -> Output {
    world
        .exec(ns)
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .expect("run command in namespace")
}

/// The kernel's counters `names` in namespace `ns` (`nstat -a -z -j`: absolute values).
pub fn nstat<const N: usize>(world: &World, ns: &str, names: [&str; N]) -> [i64; N] {
    let out = run_in(world, ns, &["nstat", "-a", "-z", "-j"]);
    let text = text(&out.stdout);
    names.map(|name| {
        let at = text
            .find(&format!("\"{name}\""))
            .unwrap_or_else(|| panic!("nstat has no {name}: {text}"));
        text[at..]
            .split([':', ',', '}'])
            .nth(1)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("nstat's {name}: {text}"))
    })
}

/// `userspace curl ARGS` in the host namespace.
pub fn curl(world: &World, args: &[&str]) -> Output {
    let mut full = vec![BIN, "curl"];
    full.extend_from_slice(args);
    run_in(world, &world.host, &full)
}

/// Python in a namespace.
pub fn python(world: &World, ns: &str, script: &str) -> Output {
    run_in(world, ns, &["python3", "-c", script])
}

/// Waits up to `within` for the XDP program to leave the host interface (a curl's
/// holder detaches after its linger); true once it has.
pub fn xdp_detached_within(world: &World, within: Duration) -> bool {
    let until = Instant::now() + within;
    loop {
        if !xdp_attached(world) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn xdp_attached(world: &World) -> bool {
    let out = run_in(world, &world.host, &["ip", "link", "show", "dev", HOST_IF]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("xdp") || text.contains("prog/xdp")
}

/// A counter from `--stats` output: the number after `name`, summed over every stack
/// that printed it (`serve` prints one block per stack).
/// Our curl downloads `url` (the world's www/big.bin) with `loss` percent random loss
/// on the router and `--stats`: it must exit 0 with the file byte for byte. Returns the
/// stats lines; the loss is off again after.
pub fn download_big_file(w: &World, loss: u32, url: &str) -> Vec<String> {
    w.set_loss(loss).unwrap();
    let out_file = w.dir.join(format!("download-{loss}.bin"));
    let out = curl(
        w,
        &[
            "-sS",
            "--stats",
            "-o",
            out_file.to_str().unwrap(),
            "--max-time",
            "300",
            url,
        ],
    );
    w.set_loss(0).unwrap();
    assert!(
        out.status.success(),
        "loss {loss}%: exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    assert_eq!(
        sha256(&out_file),
        sha256(&w.dir.join("www/big.bin")),
        "loss {loss}%: body differs"
    );
    let _ = std::fs::remove_file(out_file);
    text(&out.stderr).lines().map(String::from).collect()
}

pub fn stat(lines: &[String], name: &str) -> Option<i64> {
    lines
        .iter()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(name))
                .then(|| it.next()?.parse::<i64>().ok())
                .flatten()
        })
        .reduce(|a, b| a + b)
}

pub fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `userspace serve` in the host namespace.
pub fn start_serve(world: &World, args: &[&str]) -> RunningStack {
    let mut full = vec!["serve"];
    full.extend_from_slice(args);
    start_binary(world, &full)
}

pub fn start_binary(world: &World, args: &[&str]) -> RunningStack {
    let mut child = world
        .exec(&world.host)
        .arg(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start userspace");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.starts_with("ready:") => break,
            Ok(line) => eprintln!("stack: {line}"),
            Err(_) if Instant::now() > deadline => panic!("the stack did not become ready"),
            Err(_) => {
                if let Ok(Some(status)) = child.try_wait() {
                    let rest: Vec<String> = rx.try_iter().collect();
                    panic!("the stack exited early with {status}: {rest:?}");
                }
            }
        }
    }
    RunningStack { child, stderr: rx }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The first line `child` writes to its piped stdout, without its newline (the stdout
/// is taken: a child that says when it is ready, then goes on).
pub fn first_stdout_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .unwrap();
    line.trim_end().to_string()
}
