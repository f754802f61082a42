//! `userspace exec` in the namespace world: unmodified Debian programs (curl, wget,
//! python3) over the stack, byte for byte, and the kernel's TCP counters in the host
//! namespace (`nstat`) prove their traffic bypassed the kernel. They need root;
//! `cargo xtask test` runs them.
// common re-exports more than this suite needs.
#![allow(unused_imports)]
mod common;
use common::*;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The Debian interpreter, not a version manager's shim that may be first in PATH.
const PYTHON: &str = "/usr/bin/python3";

/// Builds the preload library beside the `userspace` binary (same profile), once.
fn build_library() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "-p", "userspace-preload"]);
        if !cfg!(debug_assertions) {
            cargo.arg("--release");
        }
        // As tests/library.rs: cargo's variables for this test would look like changes.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name == "OUT_DIR"
                || (name.starts_with("CARGO_")
                    && name != "CARGO_HOME"
                    && name != "CARGO_TARGET_DIR")
            {
                cargo.env_remove(name.as_ref());
            }
        }
        assert!(
            cargo.status().unwrap().success(),
            "building the preload library failed"
        );
    });
}

fn world() -> World {
    build_library();
    World::up(&WorldOptions {
        nginx: true,
        big_file: Some(64 << 20),
        ..Default::default()
    })
    .expect("build the namespace world")
}

/// `userspace exec --iface veth0 -v -- ARGV` in the host namespace.
fn exec_command(w: &World, argv: &[&str]) -> Command {
    let mut command = w.exec(&w.host);
    command
        .args([BIN, "exec", "--iface", HOST_IF, "-v", "--"])
        .args(argv)
        .stdin(Stdio::null());
    command
}

/// The host namespace's kernel TCP counters that a connection through the kernel moves.
fn kernel_tcp(w: &World) -> [i64; 3] {
    let out = run_in(w, &w.host, &["nstat", "-a", "-z", "-j"]);
    let text = text(&out.stdout);
    ["TcpActiveOpens", "TcpPassiveOpens", "TcpInSegs"].map(|name| {
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

/// Runs `argv` under exec with stdout into a file, and checks the file is nginx's
/// big.bin and the kernel's counters did not move.
fn download_big_file(name: &str, argv: &[&str]) {
    let w = world();
    let out_file = w.dir.join(format!("{name}.bin"));
    let before = kernel_tcp(&w);
    let started = std::time::Instant::now();
    let out = exec_command(&w, argv)
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "{name} exited with {}", out.status);
    eprintln!(
        "{name} under exec: 64 MiB in {took:?} ({:.2} Gbit/s, process start included)",
        (64u64 << 23) as f64 / took.as_secs_f64() / 1e9
    );
    assert!(
        stderr.contains(&format!("connect to {SERVER_IP}:80: stack")),
        "-v did not say the connection went to the stack"
    );
    assert_eq!(
        sha256(&out_file),
        sha256(&w.dir.join("www/big.bin")),
        "{name}: body differs"
    );
    assert_eq!(
        kernel_tcp(&w),
        before,
        "{name}: the kernel's TCP counters moved (TcpActiveOpens, TcpPassiveOpens, TcpInSegs)"
    );
    assert!(!xdp_attached(&w), "{name} left XDP attached");
}

#[test]
fn debian_curl_downloads_64_mib_over_the_stack() {
    let url = format!("http://{SERVER_IP}/big.bin");
    download_big_file("curl", &["curl", "-sS", "--fail", &url]);
}

#[test]
fn debian_wget_downloads_64_mib_over_the_stack() {
    let url = format!("http://{SERVER_IP}/big.bin");
    download_big_file("wget", &["wget", "-q", "-O", "-", &url]);
}

#[test]
fn python_urllib_downloads_64_mib_over_the_stack() {
    let script = format!(
        "import sys, urllib.request\n\
         with urllib.request.urlopen('http://{SERVER_IP}/big.bin') as r:\n\
         \x20   sys.stdout.buffer.write(r.read())"
    );
    download_big_file("python3-urllib", &[PYTHON, "-c", &script]);
}

/// Starts `python3 -m http.server` under exec on port 8080, serving the world's www/,
/// and returns once `-v` says it listens on the stack.
fn start_http_server(w: &World) -> std::process::Child {
    let www = w.dir.join("www");
    let mut child = exec_command(
        w,
        &[
            PYTHON,
            "-m",
            "http.server",
            "8080",
            "--bind",
            "0.0.0.0",
            "--directory",
        ],
    )
    .arg(&www)
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("{line}");
            let _ = tx.send(line);
        }
    });
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        if line.contains("listening on 0.0.0.0:8080 on the stack") {
            return child;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("http.server under exec did not listen within 30 s");
}

/// The kernel's curl in the server namespace fetches `path` from the server under exec.
fn fetch_from_server_ns(w: &World, path: &str, out: &std::path::Path) -> std::process::Output {
    let url = format!("http://{HOST_IP}:8080/{path}");
    let out = out.to_string_lossy();
    run_in(
        w,
        &w.server,
        &[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "30",
            "-o",
            &out,
            &url,
        ],
    )
}

#[test]
fn python_http_server_under_exec_serves_the_kernels_curl() {
    let w = world();
    let mut server = start_http_server(&w);
    let before = kernel_tcp(&w);
    let out_file = w.dir.join("served.bin");
    let got = fetch_from_server_ns(&w, "big.bin", &out_file);
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        got.status.success(),
        "curl from the server namespace: {}",
        text(&got.stderr)
    );
    assert_eq!(
        sha256(&out_file),
        sha256(&w.dir.join("www/big.bin")),
        "http.server: body differs"
    );
    assert_eq!(
        kernel_tcp(&w),
        before,
        "http.server: the kernel's TCP counters moved"
    );
    assert!(
        xdp_detached_within(&w, Duration::from_secs(5)),
        "http.server left XDP attached"
    );
}

#[test]
fn a_second_program_on_the_interface_gets_one_clear_line() {
    let w = world();
    let mut server = start_http_server(&w);
    let probe = w.dir.join("probe.html");
    let first = fetch_from_server_ns(&w, "index.html", &probe);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(std::fs::read_to_string(&probe).unwrap(), world::INDEX_HTML);
    let url = format!("http://{SERVER_IP}/");
    let out = exec_command(&w, &["curl", "-sS", &url]).output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a second program on veth0 succeeded: {stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.contains("the stack did not start"))
        .unwrap_or_else(|| panic!("no clear error: {stderr}"));
    assert!(line.contains("already in use"), "{line}");
}
