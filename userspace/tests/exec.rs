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
use world::{NginxConfig, NginxProcesses};

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
    world_of(world::Family::Ipv4)
}

/// The world with IP versions `family` (dnsmasq's example.com too, unless IPv4 only).
fn world_of(family: world::Family) -> World {
    build_library();
    World::up(&WorldOptions {
        nginx: true,
        big_file: Some(64 << 20),
        dnsmasq: family != world::Family::Ipv4,
        family,
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

/// `userspace exec --share --iface veth0 -v -- ARGV`: through the interface's switch.
fn share_command(w: &World, argv: &[&str]) -> Command {
    let mut command = w.exec(&w.host);
    command
        .args([BIN, "exec", "--share", "--iface", HOST_IF, "-v", "--"])
        .args(argv)
        .stdin(Stdio::null());
    command
}

/// The host namespace's kernel TCP counters that a connection through the kernel moves,
/// once the kernel's own connections there (a kernel run just before) have finished
/// closing: their last segments would otherwise land in the next reading.
fn kernel_tcp(w: &World) -> [i64; 3] {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = run_in(
            w,
            &w.host,
            &["ss", "-Htn", "state", "connected", "exclude", "time-wait"],
        );
        if text(&out.stdout).trim().is_empty() || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    nstat(
        w,
        &w.host,
        ["TcpActiveOpens", "TcpPassiveOpens", "TcpInSegs"],
    )
}

/// Runs `argv` under exec with stdout into a file, and checks the file is nginx's
/// big.bin and the kernel's counters did not move.
fn download_big_file(name: &str, argv: &[&str]) {
    let w = world();
    download_big_file_in(&w, name, argv, &format!("{SERVER_IP}:80"));
}

/// As [`download_big_file`] in `w`, `-v` saying the stack connected to `to`.
fn download_big_file_in(w: &World, name: &str, argv: &[&str], to: &str) {
    let out_file = w.dir.join(format!("{name}.bin"));
    let before = kernel_tcp(w);
    let started = std::time::Instant::now();
    let out = exec_command(w, argv)
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
        stderr.contains(&format!("connect to {to}: stack")),
        "-v did not say the connection went to the stack"
    );
    assert_eq!(
        sha256(&out_file),
        sha256(&w.dir.join("www/big.bin")),
        "{name}: body differs"
    );
    assert_eq!(
        kernel_tcp(w),
        before,
        "{name}: the kernel's TCP counters moved (TcpActiveOpens, TcpPassiveOpens, TcpInSegs)"
    );
    assert!(!xdp_attached(w), "{name} left XDP attached");
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

/// Starts `argv` under exec, and returns once `-v` says it listens on `port` on the stack.
fn start_server(w: &World, argv: &[&str], port: u16) -> std::process::Child {
    start_server_with(exec_command(w, argv), argv, port, 1)
}

/// Starts `command` (`argv` under exec), and returns once `-v` has said `times` times
/// that it listens on `port` on the stack (a forking server: once per process).
fn start_server_with(
    command: Command,
    argv: &[&str],
    port: u16,
    times: usize,
) -> std::process::Child {
    start_server_lines(command, argv, port, times).0
}

/// As [`start_server_with`], and the server's later stderr lines.
fn start_server_lines(
    mut command: Command,
    argv: &[&str],
    port: u16,
    times: usize,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = command
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
    let ready = format!(":{port} on the stack");
    let mut seen = 0;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        if line.contains("listening on") && line.contains(&ready) {
            seen += 1;
            if seen == times {
                return (child, rx);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{argv:?} under exec did not listen within 30 s");
}

/// `python3 -m http.server 8080` under exec, serving the world's www/.
fn start_http_server(w: &World) -> std::process::Child {
    start_http_server_on(w, 8080, false)
}

/// `python3 -m http.server PORT` under exec (`share`: through the switch).
fn start_http_server_on(w: &World, port: u16, share: bool) -> std::process::Child {
    let www = w.dir.join("www");
    let www = www.to_string_lossy();
    let port_arg = port.to_string();
    let argv = [
        PYTHON,
        "-m",
        "http.server",
        &port_arg,
        "--bind",
        "0.0.0.0",
        "--directory",
        &www,
    ];
    let command = match share {
        true => share_command(w, &argv),
        false => exec_command(w, &argv),
    };
    start_server_with(command, &argv, port, 1)
}

/// The kernel's curl in the server namespace fetches `path` from the server under exec.
fn fetch_from_server_ns(w: &World, path: &str, out: &std::path::Path) -> std::process::Output {
    fetch_from_port(w, 8080, path, out)
}

/// The kernel's curl in the server namespace fetches `path` from port `port` of the host.
fn fetch_from_port(
    w: &World,
    port: u16,
    path: &str,
    out: &std::path::Path,
) -> std::process::Output {
    fetch_from(w, &HOST_IP.to_string(), port, path, out)
}

/// The kernel's curl in the server namespace fetches `path` from `host` (an IPv6
/// literal in brackets, or not), port `port`.
fn fetch_from(
    w: &World,
    host: &str,
    port: u16,
    path: &str,
    out: &std::path::Path,
) -> std::process::Output {
    let url = format!("http://{host}:{port}/{path}");
    let out = out.to_string_lossy();
    run_in(
        w,
        &w.server,
        &[
            "curl",
            "-g",
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
    // Counted before the kill: a killed program's exit guard may make its peers answer
    // the kernel (by design, see docs/PRELOAD.md).
    let after = kernel_tcp(&w);
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
        after, before,
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

/// Stops a server started under exec (SIGTERM, so it exits through its own handler).
fn stop(mut server: std::process::Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    wait_timeout(&mut server, Duration::from_secs(10))
}

/// `se.slice` (ns, from /proc/PID/task/TID/sched) of every poll loop thread of `pid`
/// and the processes under it.
fn poll_loop_slices(pid: u32) -> Vec<u64> {
    let mut slices = Vec::new();
    let mut pids = vec![pid.to_string()];
    while let Some(pid) = pids.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            pids.extend(read("children").split_whitespace().map(str::to_owned));
            // The loop's own thread, or the inline loop's background thread (the default).
            if matches!(read("comm").trim(), "userspace-poll" | "userspace-bg") {
                let sched = read("sched");
                let slice: Option<u64> = sched
                    .lines()
                    .find_map(|l| l.strip_prefix("se.slice"))
                    .and_then(|l| l.trim_start_matches([' ', ':']).trim().parse().ok());
                slices.extend(slice);
            }
        }
    }
    slices
}

#[test]
fn redis_server_under_exec_serves_redis_benchmark() {
    let w = world();
    let argv = [
        "redis-server",
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    let server = start_server(&w, &argv, 6379);
    let before = kernel_tcp(&w);
    let host = HOST_IP.to_string();
    let out = run_in(
        &w,
        &w.server,
        &[
            "redis-benchmark",
            "-h",
            &host,
            "-p",
            "6379",
            "-c",
            "50",
            "-n",
            "20000",
            "-t",
            "set,get",
            "-q",
        ],
    );
    let report = text(&out.stdout);
    eprintln!("{report}{}", text(&out.stderr));
    let check = run_in(
        &w,
        &w.server,
        &["redis-cli", "-h", &host, "-p", "6379", "dbsize"],
    );
    let slices = poll_loop_slices(server.id());
    stop(server);
    // The loop's thread asked for a 100 us scheduler slice (the kernel's default here
    // is 1.4 ms): docs/PERFORMANCE.md, "The redis tail under exec".
    assert!(
        !slices.is_empty() && slices.iter().all(|&s| s == 100_000),
        "the poll loop's se.slice (ns): {slices:?}"
    );
    assert!(out.status.success(), "redis-benchmark failed");
    assert!(
        report.contains("SET:") && report.contains("GET:"),
        "{report}"
    );
    assert_eq!(
        text(&check.stdout).trim(),
        "1",
        "redis-cli dbsize: {}",
        text(&check.stderr)
    );
    assert_eq!(
        kernel_tcp(&w),
        before,
        "redis: the kernel's TCP counters moved"
    );
}

#[test]
fn memcached_with_4_threads_under_exec_serves_many_connections() {
    let w = world();
    let argv = [
        "memcached",
        "-u",
        "root",
        "-t",
        "4",
        "-l",
        "0.0.0.0",
        "-p",
        "11211",
        "-U",
        "0",
    ];
    let server = start_server(&w, &argv, 11211);
    let before = kernel_tcp(&w);
    // 16 connections at once (memcached spreads them over its 4 threads), each setting
    // and getting its own 100 keys.
    let script = format!(
        "import socket, threading\n\
         errors = []\n\
         def client(n):\n\
         \x20   s = socket.create_connection(('{HOST_IP}', 11211))\n\
         \x20   f = s.makefile('rwb')\n\
         \x20   for i in range(100):\n\
         \x20       v = (b'%d-%d-' % (n, i)) * 50\n\
         \x20       f.write(b'set k%d-%d 0 0 %d\\r\\n%s\\r\\n' % (n, i, len(v), v)); f.flush()\n\
         \x20       if f.readline() != b'STORED\\r\\n': errors.append('set'); return\n\
         \x20       f.write(b'get k%d-%d\\r\\n' % (n, i)); f.flush()\n\
         \x20       f.readline(); got = f.readline()[:-2]; f.readline()\n\
         \x20       if got != v: errors.append('get'); return\n\
         \x20   s.close()\n\
         ts = [threading.Thread(target=client, args=(n,)) for n in range(16)]\n\
         [t.start() for t in ts]; [t.join() for t in ts]\n\
         print('errors', len(errors))"
    );
    let out = run_in(&w, &w.server, &[PYTHON, "-c", &script]);
    stop(server);
    assert_eq!(
        text(&out.stdout).trim(),
        "errors 0",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        kernel_tcp(&w),
        before,
        "memcached: the kernel's TCP counters moved"
    );
}

#[test]
fn a_child_forked_after_bind_gets_one_clear_line_not_a_hang() {
    let w = world();
    // A pre-fork server in miniature: bind and listen, fork, accept in the child.
    let script = "import os, socket, sys\n\
                  s = socket.socket(); s.bind(('0.0.0.0', 8082)); s.listen(8)\n\
                  pid = os.fork()\n\
                  if pid == 0:\n\
                  \x20   try: s.accept()\n\
                  \x20   except OSError as e: os._exit(3 if e.errno == 95 else 4)\n\
                  \x20   os._exit(0)\n\
                  sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))";
    let out = exec_command(&w, &[PYTHON, "-c", script]).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the child's accept did not fail with EOPNOTSUPP: {stderr}"
    );
    assert!(
        stderr.contains("used a stack socket its parent opened before fork"),
        "no clear line: {stderr}"
    );
}

/// nginx in one process (`master_process off`) under exec, serving the world's www/
/// on `listen LISTEN;`, started once it listens on `port`; `name` names its files.
fn start_one_nginx(w: &World, name: &str, listen: &str, port: u16) -> std::process::Child {
    let conf = NginxConfig {
        name,
        processes: NginxProcesses::NoMaster,
        connections: 1024,
        server: &format!(
            "    listen {listen};
"
        ),
    }
    .write(&w.dir)
    .unwrap();
    let conf = conf.to_string_lossy();
    start_server(w, &["nginx", "-c", &conf], port)
}

/// wrk's report says requests were served, with no socket error and no non-2xx.
fn assert_wrk_clean(load: &std::process::Output) {
    let report = text(&load.stdout);
    eprintln!("{report}");
    assert!(
        report.contains("Requests/sec")
            && !report.contains("Socket errors")
            && !report.contains("Non-2xx"),
        "{report}"
    );
}

/// The kernel's curl in the server namespace fetches big.bin from `port` of the host
/// byte for byte and `wrk -c100` gets index.html without an error, then `server` stops;
/// the host's kernel TCP counters must not have moved.
fn serves_big_file_and_wrk(w: &World, server: std::process::Child, port: u16, what: &str) {
    let before = kernel_tcp(w);
    let out_file = w.dir.join(format!("served-{port}.bin"));
    let got = fetch_from_port(w, port, "big.bin", &out_file);
    let index = format!("http://{HOST_IP}:{port}/index.html");
    let load = run_in(w, &w.server, &["wrk", "-t2", "-c100", "-d3s", &index]);
    stop(server);
    assert!(got.status.success(), "curl: {}", text(&got.stderr));
    assert_eq!(
        sha256(&out_file),
        sha256(&w.dir.join("www/big.bin")),
        "{what}: body differs"
    );
    assert_wrk_clean(&load);
    assert_eq!(
        kernel_tcp(w),
        before,
        "{what}: the kernel's TCP counters moved"
    );
}

#[test]
fn nginx_in_one_process_under_exec_serves_64_mib_and_wrk() {
    let w = world();
    let server = start_one_nginx(&w, "nginx-exec", "8084", 8084);
    serves_big_file_and_wrk(&w, server, 8084, "nginx under exec");
}

#[test]
fn edge_triggered_epoll_mixes_a_stack_socket_and_a_pipe() {
    let w = world();
    let script = format!(
        "import os, select, socket\n\
         s = socket.create_connection(('{SERVER_IP}', 80))\n\
         r, wr = os.pipe()\n\
         ep = select.epoll()\n\
         ep.register(s.fileno(), select.EPOLLIN | select.EPOLLET)\n\
         ep.register(r, select.EPOLLIN)\n\
         os.write(wr, b'x')\n\
         ev = dict(ep.poll(5))\n\
         assert r in ev and s.fileno() not in ev, ev\n\
         os.read(r, 1)\n\
         s.sendall(b'GET /index.html HTTP/1.0\\r\\n\\r\\n')\n\
         s.setblocking(False)\n\
         body = b''\n\
         done = False\n\
         while not done:\n\
         \x20   ev = dict(ep.poll(5))\n\
         \x20   assert s.fileno() in ev, ev\n\
         \x20   while True:\n\
         \x20       try: chunk = s.recv(65536)\n\
         \x20       except BlockingIOError: break\n\
         \x20       if not chunk: done = True; break\n\
         \x20       body += chunk\n\
         print(body.split(b'\\r\\n\\r\\n', 1)[1].decode(), end='')"
    );
    assert_eq!(python_on_the_stack(&w, &script), world::INDEX_HTML);
}

/// Runs python3 `script` under exec: it succeeds, its connection to the server went
/// on the stack; its stdout.
fn python_on_the_stack(w: &World, script: &str) -> String {
    python_on_the_stack_said(w, script).0
}

/// [`python_on_the_stack`], and what the preload library said on stderr.
fn python_on_the_stack_said(w: &World, script: &str) -> (String, String) {
    let out = exec_command(w, &[PYTHON, "-c", script]).output().unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("connect to {SERVER_IP}:80: stack")),
        "{stderr}"
    );
    (text(&out.stdout), stderr)
}

/// Level- and edge-triggered epoll, one-shot, `maxevents` 1, a socket in two sets, and
/// `poll`/`select` on a socket an `epoll_wait` reported: the same events under exec
/// (where the ready list hands a turn's news to the wait that turned it, see
/// docs/PRELOAD.md) as on the kernel's TCP, none lost and none twice.
const EPOLL_EVENTS_SCRIPT: &str = r#"import select as P, socket, threading, time
REQ = b'GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n'
def conn():
    s = socket.create_connection(('SERVER', 80)); s.setblocking(False); return s
a, b, c = conn(), conn(), conn()
A, B, C = a.fileno(), b.fileno(), c.fileno()
def wait(ep, t, n=-1):
    got = ep.poll(t, n)
    fds = [fd for fd, _ in got]
    assert len(fds) == len(set(fds)), ('twice in one answer', got)
    return dict(got)
def whole(s, have=b''):
    # One response, read as it comes: headers, then Content-Length bytes.
    while True:
        if b'\r\n\r\n' in have:
            head, body = have.split(b'\r\n\r\n', 1)
            size = int([l for l in head.split(b'\r\n') if l.lower().startswith(b'content-length')][0].split(b':')[1])
            if len(body) >= size:
                assert len(body) == size, 'more than one response'
                return body
        P.select([s], [], [], 5)
        try: have += s.recv(65536)
        except BlockingIOError: pass
ep = P.epoll()
ep.register(A, P.EPOLLIN)
ep.register(B, P.EPOLLIN)
a.sendall(REQ)
ev = wait(ep, 5)
print('answer reported:', ev.get(A, 0) & P.EPOLLIN != 0, 'other one quiet:', B not in ev)
print('reported again, not read (level):', A in wait(ep, 0))
pl = P.poll(); pl.register(A, P.POLLIN)
print('poll sees it:', dict(pl.poll(0)).get(A, 0) & P.POLLIN != 0)
print('select sees it:', a in P.select([a], [], [], 0)[0])
first = a.recv(1)
print('reported after one byte read:', A in wait(ep, 0))
print('body:', whole(a, first).decode() == 'BODY')
print('drained, not reported:', A not in wait(ep, 0))
a.sendall(REQ); b.sendall(REQ)
seen = set()
deadline = time.monotonic() + 5
while seen != {A, B} and time.monotonic() < deadline:
    ev = wait(ep, 5, 1)
    assert len(ev) <= 1, ev
    seen |= set(ev)
print('both seen one at a time:', seen == {A, B})
turns = [wait(ep, 0, 1) for _ in range(4)]
print('maxevents 1 answers:', [len(t) for t in turns], set().union(*turns) == {A, B})
print('bodies:', whole(a) == whole(b) == b'BODY')
print('both drained:', wait(ep, 0) == {})
rounds = 0
for _ in range(20):
    a.sendall(REQ)
    rounds += A in wait(ep, 5) and whole(a) == b'BODY'
print('twenty in turn:', rounds == 20)
ep2 = P.epoll(); ep2.register(A, P.EPOLLIN)
a.sendall(REQ)
print('second set reports it:', A in wait(ep2, 5), 'first set too:', A in wait(ep, 5))
print('body:', whole(a) == b'BODY', 'none left:', wait(ep, 0) == wait(ep2, 0) == {})
ep2.close()
slept = {}
def sleeper():
    slept['r'] = a in P.select([a], [], [], 5)[0]
t = threading.Thread(target=sleeper); t.start()
time.sleep(0.3)
a.sendall(REQ)
print('waiting set reports it:', A in wait(ep, 5))
t.join()
print('sleeping select woken:', slept['r'])
print('body:', whole(a) == b'BODY')
ep.unregister(B); ep.register(B, P.EPOLLIN | P.EPOLLET)
b.sendall(REQ)
time.sleep(0.3)
print('edge reported once:', B in wait(ep, 5))
print('edge not again:', B not in wait(ep, 0))
print('body:', whole(b) == b'BODY')
ep3 = P.epoll(); ep3.register(C, P.EPOLLIN | P.EPOLLONESHOT)
c.sendall(REQ)
time.sleep(0.3)
print('one-shot reported:', C in wait(ep3, 5), 'then not:', C not in wait(ep3, 0))
ep3.modify(C, P.EPOLLIN | P.EPOLLONESHOT)
print('re-armed reported:', C in wait(ep3, 0))
print('body:', whole(c) == b'BODY')
d = conn(); D = d.fileno()
ep5 = P.epoll(); ep5.register(D, P.EPOLLIN)
number = ep5.fileno(); ep5.close()
ep6 = P.epoll()
r, w = __import__('os').pipe()
ep6.register(r, P.EPOLLIN)
print('a closed set\'s number again:', ep6.fileno() == number)
d.sendall(REQ)
print('a closed set\'s socket not in a new one:', all(D not in wait(ep6, 0.1) for _ in range(5)))
print('body:', whole(d) == b'BODY')
"#;

#[test]
fn epoll_events_under_exec_are_the_kernels_none_lost_none_twice() {
    let w = world();
    let script = EPOLL_EVENTS_SCRIPT
        .replace("SERVER", &SERVER_IP.to_string())
        .replace("b'BODY'", &format!("{:?}.encode()", world::INDEX_HTML))
        .replace("== 'BODY'", &format!("== {:?}", world::INDEX_HTML));
    let kernel = run_in(&w, &w.host, &[PYTHON, "-c", &script]);
    assert!(kernel.status.success(), "{}", text(&kernel.stderr));
    let (ours, stderr) = python_on_the_stack_said(&w, &script);
    assert_eq!(ours, text(&kernel.stdout), "{stderr}");
    assert!(!ours.contains("False"), "{ours}");
    // The ready list carried events (the path under test ran).
    let handed: u64 = stderr
        .lines()
        .find_map(|l| l.split("ready list: ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(handed > 0, "{stderr}");
}

/// Waits for a process started under exec after SIGKILL.
fn kill_hard(mut server: std::process::Child) {
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn a_server_and_a_client_share_the_interface_each_with_its_own_connections() {
    let w = world();
    let mut server = start_http_server_on(&w, 8080, true);
    let before = kernel_tcp(&w);
    // At once: the kernel's curl in the server namespace downloads from the server under
    // exec, and a curl under exec downloads from the server namespace's nginx.
    let served = w.dir.join("shared-served.bin");
    let fetched = w.dir.join("shared-fetched.bin");
    let url = format!("http://{SERVER_IP}/big.bin");
    let client = share_command(&w, &["curl", "-sS", "--fail", "--max-time", "60", &url])
        .stdout(std::fs::File::create(&fetched).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let got = fetch_from_port(&w, 8080, "big.bin", &served);
    let client = client.wait_with_output().unwrap();
    let client_err = text(&client.stderr);
    eprintln!("{client_err}");
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        got.status.success(),
        "curl from the server namespace: {}",
        text(&got.stderr)
    );
    assert!(
        client.status.success(),
        "curl under exec --share: {client_err}"
    );
    assert!(
        client_err.contains(&format!("connect to {SERVER_IP}:80: stack")),
        "{client_err}"
    );
    let big = sha256(&w.dir.join("www/big.bin"));
    assert_eq!(sha256(&served), big, "the server's body differs");
    assert_eq!(sha256(&fetched), big, "the client's body differs");
    assert_eq!(
        kernel_tcp(&w),
        before,
        "the kernel's TCP counters moved (TcpActiveOpens, TcpPassiveOpens, TcpInSegs)"
    );
    assert!(
        xdp_detached_within(&w, Duration::from_secs(5)),
        "the switch left XDP attached after its last program"
    );
}

#[test]
fn two_servers_share_the_interface_and_a_killed_one_leaves_nothing_behind() {
    let w = world();
    let first = start_http_server_on(&w, 8080, true);
    let mut second = start_http_server_on(&w, 8081, true);
    let before = kernel_tcp(&w);
    let (a, b) = (w.dir.join("two-a.bin"), w.dir.join("two-b.bin"));
    let (got_a, got_b) = std::thread::scope(|s| {
        let one = s.spawn(|| fetch_from_port(&w, 8080, "big.bin", &a));
        let two = s.spawn(|| fetch_from_port(&w, 8081, "big.bin", &b));
        (one.join().unwrap(), two.join().unwrap())
    });
    assert!(got_a.status.success(), "8080: {}", text(&got_a.stderr));
    assert!(got_b.status.success(), "8081: {}", text(&got_b.stderr));
    let big = sha256(&w.dir.join("www/big.bin"));
    assert_eq!(sha256(&a), big, "8080: body differs");
    assert_eq!(sha256(&b), big, "8081: body differs");
    assert_eq!(kernel_tcp(&w), before, "the kernel's TCP counters moved");
    // SIGKILL the first: its port is no longer steered, so the kernel refuses a new
    // connection at once (RST), while the second serves on.
    kill_hard(first);
    std::thread::sleep(Duration::from_millis(200));
    let url = format!("http://{HOST_IP}:8080/index.html");
    let refused = run_in(&w, &w.server, &["curl", "-sS", "--max-time", "5", &url]);
    assert_eq!(
        refused.status.code(),
        Some(7),
        "a killed server's port was not refused at once: {}",
        text(&refused.stderr)
    );
    let probe = w.dir.join("two-probe.html");
    let still = fetch_from_port(&w, 8081, "index.html", &probe);
    assert!(
        still.status.success(),
        "8081 after the kill: {}",
        text(&still.stderr)
    );
    assert_eq!(std::fs::read_to_string(&probe).unwrap(), world::INDEX_HTML);
    // Its lease is free again: a new server takes the port.
    let third = start_http_server_on(&w, 8080, true);
    let again = fetch_from_port(&w, 8080, "index.html", &probe);
    assert!(
        again.status.success(),
        "8080 again: {}",
        text(&again.stderr)
    );
    assert_eq!(std::fs::read_to_string(&probe).unwrap(), world::INDEX_HTML);
    kill_hard(third);
    // Leases do not leak: more programs one after another than the switch has slots
    // (16, one of them the second server's), each ending normally.
    let url = format!("http://{SERVER_IP}/index.html");
    for run in 0..20 {
        let out = share_command(&w, &["curl", "-sS", "--fail", &url])
            .output()
            .unwrap();
        assert!(out.status.success(), "run {run}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), world::INDEX_HTML, "run {run}");
    }
    let _ = second.kill();
    let _ = second.wait();
    assert!(
        xdp_detached_within(&w, Duration::from_secs(5)),
        "killed programs left XDP attached"
    );
    // And the next program starts afresh.
    let next = share_command(&w, &["curl", "-sS", "--fail", &url])
        .output()
        .unwrap();
    assert!(next.status.success(), "{}", text(&next.stderr));
    assert_eq!(text(&next.stdout), world::INDEX_HTML);
    assert!(xdp_detached_within(&w, Duration::from_secs(5)));
}

#[test]
fn nginx_master_and_2_workers_under_exec_share_serve_wrk() {
    let w = world();
    let conf = NginxConfig {
        name: "nginx-share",
        processes: NginxProcesses::Workers(2),
        connections: 1024,
        server: "    listen 8085;\n",
    }
    .write(&w.dir)
    .unwrap();
    let conf = conf.to_string_lossy();
    let argv = ["nginx", "-c", &conf];
    // The master listens, then each worker listens again on its own stack (nginx has
    // sent its stderr, and the workers' `-v` lines, to its error log by then).
    let server = start_server_with(share_command(&w, &argv), &argv, 8085, 1);
    let log = w.dir.join("nginx-share-error.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let workers_listen = || {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        log.matches(":8085 on the stack").count() >= 2
    };
    while !workers_listen() {
        assert!(
            std::time::Instant::now() < deadline,
            "nginx's workers did not listen: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    serves_big_file_and_wrk(&w, server, 8085, "nginx's workers");
    assert!(
        xdp_detached_within(&w, Duration::from_secs(5)),
        "nginx left XDP attached"
    );
}

/// The start of a python3 script: `os`, `socket` and `sys`, and `s` listening on
/// `port` of every address (SO_REUSEADDR, as servers set it).
fn listening_python(port: u16, backlog: u32) -> String {
    format!(
        "import os, socket, sys\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', {port})); s.listen({backlog})\n"
    )
}

#[test]
fn a_pre_fork_python_server_under_exec_share_accepts_in_every_child() {
    let w = world();
    // Bind and listen, fork 3 children, each accepts and answers with its pid.
    let script = listening_python(8086, 64)
        + "kids = []\n\
                  for _ in range(3):\n\
                  \x20   pid = os.fork()\n\
                  \x20   if pid == 0:\n\
                  \x20       while True:\n\
                  \x20           c, _ = s.accept()\n\
                  \x20           req = b''\n\
                  \x20           while b'\\r\\n\\r\\n' not in req: req += c.recv(4096)\n\
                  \x20           body = b'%d\\n' % os.getpid()\n\
                  \x20           c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s' % (len(body), body))\n\
                  \x20           c.close()\n\
                  \x20   kids.append(pid)\n\
                  for pid in kids: os.waitpid(pid, 0)";
    let argv = [PYTHON, "-c", &script];
    let server = start_server_with(share_command(&w, &argv), &argv, 8086, 4);
    let before = kernel_tcp(&w);
    let url = format!("http://{HOST_IP}:8086/");
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let out = run_in(
            &w,
            &w.server,
            &["curl", "-sS", "--fail", "--max-time", "10", &url],
        );
        assert!(out.status.success(), "curl: {}", text(&out.stderr));
        pids.insert(text(&out.stdout).trim().to_string());
    }
    kill_group(server);
    assert!(
        pids.len() >= 2,
        "30 connections went to {pids:?}: the children did not share them"
    );
    assert_eq!(
        kernel_tcp(&w),
        before,
        "the pre-fork server: the kernel's TCP counters moved"
    );
    assert!(
        xdp_detached_within(&w, Duration::from_secs(5)),
        "the pre-fork server left XDP attached"
    );
}

/// SIGKILLs a server and the children it forked, by their ids.
fn kill_group(mut server: std::process::Child) {
    let pid = server.id();
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children.split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", child]).status();
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// The kernel's established TCP connections in the server namespace that `filter`
/// (an `ss` filter such as `( sport = :80 )`) selects.
fn established_in_server_ns(w: &World, filter: &str) -> usize {
    let out = run_in(
        w,
        &w.server,
        &["ss", "-Htn", "state", "established", filter],
    );
    text(&out.stdout).lines().count()
}

#[test]
fn a_killed_client_under_exec_share_leaves_its_peer_reset_not_hanging() {
    let w = world();
    let established = || established_in_server_ns(&w, "( sport = :80 )");
    assert_eq!(established(), 0);
    // A server on the switch keeps it (and its XDP program) there throughout: the
    // RST must come from the switch, not from the kernel after the switch has gone.
    let mut keeper = start_http_server_on(&w, 8080, true);
    // A slow download from the server namespace's nginx, killed half way.
    let url = format!("http://{SERVER_IP}/big.bin");
    let client = share_command(
        &w,
        &["curl", "-sS", "--limit-rate", "2M", "-o", "/dev/null", &url],
    )
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while established() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the download did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    kill_hard(client);
    // nginx's next segment meets no process: the switch answers it with a RST, as the
    // kernel would for a killed process's socket; nginx does not retransmit for minutes.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while established() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nginx still holds the killed client's connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(xdp_attached(&w), "the switch left while a server used it");
    let _ = keeper.kill();
    let _ = keeper.wait();
    assert!(
        xdp_detached_within(&w, Duration::from_secs(5)),
        "the killed client left XDP attached"
    );
}

#[test]
fn poll_and_epoll_report_hangup_and_the_peers_fin_as_the_kernel_does() {
    let w = world();
    // The same script under exec and on the kernel's TCP must print the same events.
    let script = format!(
        "import select as P, socket, time\n\
         names = [('IN', P.POLLIN), ('OUT', P.POLLOUT), ('ERR', P.POLLERR), ('HUP', P.POLLHUP), ('RDHUP', P.POLLRDHUP)]\n\
         def show(tag, ev): print(tag, ' '.join(n for n, b in names if ev & b) or '-')\n\
         def once(s, events, ms):\n\
         \x20   p = P.poll(); p.register(s, events)\n\
         \x20   t = time.monotonic(); got = dict(p.poll(ms)).get(s.fileno(), 0)\n\
         \x20   return got, time.monotonic() - t\n\
         fresh = socket.socket()\n\
         ev, waited = once(fresh, 0, 3000)\n\
         show('fresh, nothing asked:', ev); print('fresh waited:', waited < 1)\n\
         show('fresh, out asked:', once(fresh, P.POLLOUT, 3000)[0])\n\
         s = socket.create_connection(('{SERVER_IP}', 80))\n\
         s.sendall(b'GET /index.html HTTP/1.0\\r\\n\\r\\n')\n\
         deadline = time.monotonic() + 5\n\
         while time.monotonic() < deadline:\n\
         \x20   ev = once(s, P.POLLIN | P.POLLRDHUP, 5000)[0]\n\
         \x20   if ev & P.POLLRDHUP: break\n\
         \x20   time.sleep(0.01)\n\
         show('after the FIN:', ev)\n\
         ep = P.epoll(); ep.register(s.fileno(), P.EPOLLIN | P.EPOLLRDHUP)\n\
         show('epoll after the FIN:', dict(ep.poll(5)).get(s.fileno(), 0))\n\
         body = b''\n\
         while True:\n\
         \x20   chunk = s.recv(65536)\n\
         \x20   if not chunk: break\n\
         \x20   body += chunk\n\
         print('body bytes:', len(body) > 0)\n\
         s.shutdown(socket.SHUT_WR)\n\
         show('both shut:', once(s, P.POLLIN | P.POLLOUT | P.POLLRDHUP, 5000)[0])\n\
         ep.modify(s.fileno(), P.EPOLLOUT)\n\
         show('epoll both shut:', dict(ep.poll(5)).get(s.fileno(), 0))\n"
    );
    let ours = exec_command(&w, &[PYTHON, "-c", &script]).output().unwrap();
    let stderr = text(&ours.stderr);
    assert!(ours.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("connect to {SERVER_IP}:80: stack")),
        "{stderr}"
    );
    let kernel = run_in(&w, &w.host, &[PYTHON, "-c", &script]);
    assert!(kernel.status.success(), "{}", text(&kernel.stderr));
    assert_eq!(text(&ours.stdout), text(&kernel.stdout));
}

// ------------------------------------------------------------------ IPv6 (issue 20)

/// Debian's curl fetches 64 MiB by IPv6 literal, and example.com by its AAAA record
/// (tried first), over the stack in a dual-stack world; the kernel's TCP counters
/// (Linux counts IPv6 TCP in the same Tcp* counters) do not move.
#[test]
fn debian_curl_over_ipv6_goes_on_the_stack() {
    use world::SERVER_IP6;
    let w = world_of(world::Family::Dual);
    let url = format!("http://[{SERVER_IP6}]/big.bin");
    let to = format!("[{SERVER_IP6}]:80");
    download_big_file_in(&w, "curl6", &["curl", "-g", "-sS", "--fail", &url], &to);
    curl_by_name_on_the_stack(&w, "/dev/null", "http://example.com/");
}

/// Debian's curl under exec fetches `url` (example.com, AAAA tried first) into `out`:
/// over IPv6 (`%{remote_ip}`), on the stack (`-v`), the kernel's TCP counters unmoved.
fn curl_by_name_on_the_stack(w: &World, out: &str, url: &str) {
    let server6 = world::SERVER_IP6.to_string();
    let before = kernel_tcp(w);
    let argv = [
        "curl",
        "-sS",
        "--fail",
        "-o",
        out,
        "-w",
        "%{remote_ip}",
        url,
    ];
    let got = exec_command(w, &argv).output().unwrap();
    let stderr = text(&got.stderr);
    assert!(got.status.success(), "curl {url}: {stderr}");
    assert_eq!(text(&got.stdout), server6, "{stderr}");
    let said = format!("connect to [{server6}]:80: stack");
    assert!(stderr.contains(&said), "{stderr}");
    assert_eq!(
        kernel_tcp(w),
        before,
        "curl {url}: the kernel's TCP counters moved"
    );
}

/// `python3 -m http.server --bind ::` under exec (IPV6_V6ONLY off, as Linux's default):
/// the kernel's curl gets big.bin over IPv6 and IPv4, and the server logs the IPv4
/// client V4-mapped, as under the kernel; the kernel's TCP counters do not move.
#[test]
fn python_http_server_on_ipv6_any_serves_ipv6_and_mapped_ipv4() {
    use world::{HOST_IP6, SERVER_IP6};
    let w = world_of(world::Family::Dual);
    let www = w.dir.join("www");
    let www_arg = www.to_string_lossy();
    let argv = [
        PYTHON,
        "-m",
        "http.server",
        "8080",
        "--bind",
        "::",
        "--directory",
        &www_arg,
    ];
    let (server, lines) = start_server_lines(exec_command(&w, &argv), &argv, 8080, 1);
    let before = kernel_tcp(&w);
    let mut fetched = Vec::new();
    for (name, host) in [("v6", format!("[{HOST_IP6}]")), ("v4", HOST_IP.to_string())] {
        let out_file = w.dir.join(format!("served-{name}.bin"));
        fetched.push((fetch_from(&w, &host, 8080, "big.bin", &out_file), out_file));
    }
    let after = kernel_tcp(&w);
    stop(server);
    std::thread::sleep(Duration::from_millis(200));
    let mut said = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
        said.push(line);
    }
    for (got, out_file) in &fetched {
        assert!(got.status.success(), "curl: {}", text(&got.stderr));
        assert_eq!(
            sha256(out_file),
            sha256(&www.join("big.bin")),
            "http.server: body differs"
        );
    }
    assert_eq!(
        after, before,
        "http.server: the kernel's TCP counters moved"
    );
    // http.server logs each client's address as accept gave it.
    for client in [SERVER_IP6.to_string(), format!("::ffff:{SERVER_IP}")] {
        assert!(
            said.iter()
                .any(|l| l.starts_with(&format!("{client} - - "))),
            "no request logged from {client}: {said:?}"
        );
    }
}

/// nginx (one process) with `listen [::]:8086;` under exec (nginx sets IPV6_V6ONLY, so
/// the stack listens on its IPv6 address only): wrk over IPv6 sees no error, the
/// kernel's counters do not move, and IPv4 is refused as under the kernel.
#[test]
fn nginx_listening_on_ipv6_under_exec_serves_wrk() {
    use world::HOST_IP6;
    let w = world_of(world::Family::Dual);
    let server = start_one_nginx(&w, "nginx-exec6", "[::]:8086", 8086);
    let before = kernel_tcp(&w);
    let index = format!("http://[{HOST_IP6}]:8086/index.html");
    let load = run_in(&w, &w.server, &["wrk", "-t2", "-c100", "-d3s", &index]);
    let after = kernel_tcp(&w);
    let v4 = format!("http://{HOST_IP}:8086/index.html");
    let refused = run_in(&w, &w.server, &["curl", "-sS", "--max-time", "5", &v4]);
    stop(server);
    assert_wrk_clean(&load);
    assert_eq!(after, before, "nginx: the kernel's TCP counters moved");
    assert_eq!(
        refused.status.code(),
        Some(7),
        "IPv4 to an IPv6-only listener: {}",
        text(&refused.stderr)
    );
}

/// The socket calls of an AF_INET6 program: what it sees under exec (the stack) is
/// what it sees on the kernel, call for call: names and peers (V4-mapped included),
/// IPV6_V6ONLY and the other IPv6 options, recvfrom/recvmsg's address, and the errnos
/// of a short address (EINVAL), a wrong family (EAFNOSUPPORT), a mapped address with
/// IPV6_V6ONLY (ENETUNREACH, EINVAL) and IPV6_V6ONLY after bind (EINVAL).
#[test]
fn an_ipv6_programs_socket_calls_see_what_the_kernel_shows() {
    use world::{HOST_IP6, SERVER_IP6};
    let w = world_of(world::Family::Dual);
    let script = r#"
import ctypes, errno, socket, struct, sys
s6, s4, h4 = sys.argv[1:4]
libc = ctypes.CDLL(None, use_errno=True)
def say(*a): print(*a, flush=True)
def raw(call, fd, b):
    buf = ctypes.create_string_buffer(b, len(b))
    r = getattr(libc, call)(fd, buf, len(b))
    return errno.errorcode[ctypes.get_errno()] if r < 0 else r
def sin6(ip, port): return struct.pack('=HHI16sI', socket.AF_INET6, socket.htons(port), 0, socket.inet_pton(socket.AF_INET6, ip), 0)
def sin(ip, port): return struct.pack('=HH4s8x', socket.AF_INET, socket.htons(port), socket.inet_aton(ip))
def err(f):
    try: return f()
    except OSError as e: return errno.errorcode[e.errno]
V6 = socket.IPPROTO_IPV6
GET = b'GET /index.html HTTP/1.0\r\nHost: example.com\r\n\r\n'
a = socket.socket(socket.AF_INET6)
say('domain', a.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN), 'v6only', a.getsockopt(V6, socket.IPV6_V6ONLY))
say('unbound', a.getsockname())
say('short', raw('connect', a.fileno(), sin6(s6, 80)[:23]), raw('bind', a.fileno(), sin6('::', 0)[:20]))
say('family', raw('connect', a.fileno(), sin(s4, 80) + bytes(12)), raw('bind', a.fileno(), sin('0.0.0.0', 0) + bytes(12)))
a.connect((s6, 80))
say('v6 peer', a.getpeername(), 'local', a.getsockname()[0])
a.sendto(GET, (s6, 80))
data, addr = a.recvfrom(12, socket.MSG_WAITALL)
say('recvfrom', data, addr, 'recvmsg', a.recvmsg(4)[3])
b = socket.socket(socket.AF_INET6)
b.connect(('::ffff:' + s4, 80))
say('mapped peer', b.getpeername(), 'local', b.getsockname()[0])
b.sendall(GET)
say('mapped', b.recv(12, socket.MSG_WAITALL))
c = socket.socket(socket.AF_INET6)
c.setsockopt(V6, socket.IPV6_V6ONLY, 1)
say('v6only mapped', err(lambda: c.connect(('::ffff:' + s4, 80))), err(lambda: c.bind(('::ffff:' + h4, 8092))))
l = socket.socket(socket.AF_INET6)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.setsockopt(V6, socket.IPV6_V6ONLY, 1)
l.bind(('::', 8091))
say('after bind', err(lambda: l.setsockopt(V6, socket.IPV6_V6ONLY, 0)))
l.listen()
say('listener', l.getsockname(), l.getsockopt(V6, socket.IPV6_V6ONLY))
t = socket.socket(socket.AF_INET6)
t.setsockopt(V6, socket.IPV6_TCLASS, 32)
t.setsockopt(V6, socket.IPV6_RECVPKTINFO, 1)
t.connect((s6, 80))
say('options', t.getsockopt(V6, socket.IPV6_TCLASS), t.getsockopt(V6, socket.IPV6_RECVPKTINFO))
v = socket.socket(socket.AF_INET)
say('inet', err(lambda: v.setsockopt(V6, socket.IPV6_V6ONLY, 1)), raw('connect', v.fileno(), sin6(s6, 80)), raw('connect', v.fileno(), sin(s4, 80)[:15]))
"#;
    let args = [
        PYTHON,
        "-c",
        script,
        &SERVER_IP6.to_string(),
        &SERVER_IP.to_string(),
        &HOST_IP.to_string(),
    ];
    let kernel = run_in(&w, &w.host, &args);
    assert!(kernel.status.success(), "{}", text(&kernel.stderr));
    let before = kernel_tcp(&w);
    let ours = exec_command(&w, &args).output().unwrap();
    let stderr = text(&ours.stderr);
    eprintln!("{stderr}");
    assert!(ours.status.success(), "{stderr}");
    assert_eq!(
        kernel_tcp(&w),
        before,
        "the kernel's TCP counters moved under exec"
    );
    assert_eq!(text(&ours.stdout), text(&kernel.stdout), "{stderr}");
    for said in [
        format!("connect to [{SERVER_IP6}]:80: stack"),
        format!("connect to {SERVER_IP}:80: stack"),
        format!("the stack listens on [{HOST_IP6}]:8091 (IPv6 only)"),
    ] {
        assert!(stderr.contains(&said), "-v did not say {said:?}: {stderr}");
    }
    eprintln!("{}", text(&ours.stdout));
}

/// In an IPv6-only world (no IPv4 address anywhere, example.com has only an AAAA
/// record), Debian's curl under exec fetches by name over the stack.
#[test]
fn debian_curl_in_an_ipv6_only_world_goes_on_the_stack() {
    let w = world_of(world::Family::Ipv6);
    let out_file = w.dir.join("curl6-only.bin");
    let url = "http://example.com/big.bin";
    curl_by_name_on_the_stack(&w, &out_file.to_string_lossy(), url);
    assert_eq!(
        sha256(&out_file),
        sha256(&w.dir.join("www/big.bin")),
        "body differs"
    );
}

/// Whether a process of the exit guard (`userspace __exit-guard`) runs in the host
/// namespace.
fn exit_guard_runs(w: &World) -> bool {
    let pids = run_in(w, &w.host, &["sh", "-c", "ip netns pids \"$0\"", &w.host]);
    text(&pids.stdout).split_whitespace().any(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__exit-guard"))
    })
}

#[test]
fn a_killed_program_under_exec_has_its_waiting_peers_reset_not_hanging() {
    let w = world();
    // 1. A client under exec is killed while the kernel's server waits for its next
    // request: the server must see a reset at once, as with a killed kernel client
    // (there it sees the FIN the kernel sends), not wait out its timeout.
    let waiting_server = format!(
        "import socket, time\n\
         l = socket.create_server(('{SERVER_IP}', 9300))\n\
         c, _ = l.accept()\n\
         c.settimeout(20)\n\
         t = time.monotonic()\n\
         try:\n\
         \x20   while c.recv(100): pass\n\
         \x20   print('eof', end=' ')\n\
         except ConnectionResetError: print('reset', end=' ')\n\
         except socket.timeout: print('timeout', end=' ')\n\
         print(round(time.monotonic() - t, 1))\n"
    );
    let server = w
        .exec(&w.server)
        .args([PYTHON, "-c", &waiting_server])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    w.wait_for_port(&w.server, SERVER_IP, 9300, false).unwrap();
    let client_script = format!(
        "import socket, time\n\
         s = socket.create_connection(('{SERVER_IP}', 9300))\n\
         s.sendall(b'request 1')\n\
         print('sent', flush=True)\n\
         time.sleep(60)\n"
    );
    let mut client = exec_command(&w, &[PYTHON, "-c", &client_script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(first_stdout_line(&mut client), "sent");
    // At once: the guard may not have looked at the table yet (it looks every 250 ms).
    kill_hard(client);
    let out = server.wait_with_output().unwrap();
    let said = text(&out.stdout);
    let mut words = said.split_whitespace();
    assert_eq!(words.next(), Some("reset"), "the server saw: {said}");
    let waited: f64 = words.next().unwrap().parse().unwrap();
    assert!(waited < 5.0, "the reset took {waited} s");

    // 2. A server under exec is killed while the kernel's curl waits for its reply.
    let silent_server = "import socket, time\n\
         l = socket.create_server(('0.0.0.0', 9301))\n\
         c, _ = l.accept()\n\
         c.recv(1000)\n\
         time.sleep(60)\n";
    let server = start_server(&w, &[PYTHON, "-c", silent_server], 9301);
    let curl = w
        .exec(&w.server)
        .args([
            "curl",
            "-sS",
            "--max-time",
            "20",
            &format!("http://{HOST_IP}:9301/"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // curl has sent its request once the server's connection is established.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while established_in_server_ns(&w, "( dport = :9301 )") == 0 {
        assert!(std::time::Instant::now() < deadline, "curl did not connect");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let killed = std::time::Instant::now();
    kill_hard(server);
    let out = curl.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(56), "curl: {stderr}");
    assert!(stderr.contains("reset by peer"), "curl: {stderr}");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "curl waited {:?}",
        killed.elapsed()
    );
    // The guards are gone with their programs, and so is XDP.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while exit_guard_runs(&w) {
        assert!(std::time::Instant::now() < deadline, "an exit guard stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(xdp_detached_within(&w, Duration::from_secs(5)));
}

/// A python3 server under `command` that binds to port 0 and listens, and listens
/// without binding: the ports getsockname shows, printed on stdout, take connections
/// from the server namespace's kernel.
fn port_zero_serves(w: &World, mut command: Command, what: &str) {
    let script = "import errno, socket\n\
                  a = socket.socket(); a.bind(('0.0.0.0', 0)); p = a.getsockname()[1]\n\
                  assert p != 0, 'bind to port 0 left port 0'\n\
                  try: a.bind(('0.0.0.0', 0)); raise SystemExit('bound twice')\n\
                  except OSError as e: assert e.errno == errno.EINVAL, e\n\
                  a.listen(8); assert a.getsockname()[1] == p, a.getsockname()\n\
                  b = socket.socket(socket.AF_INET6); b.listen(8); q = b.getsockname()[1]\n\
                  assert q not in (0, p), (p, q)\n\
                  assert b.getsockname()[0] == '::', b.getsockname()\n\
                  print(p, q, flush=True)\n\
                  for s in (a, b):\n\
                  \x20   c, _ = s.accept(); c.sendall(b'port %d\\n' % s.getsockname()[1]); c.close()";
    let mut server = command
        .args([PYTHON, "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = server.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("{line}");
        }
    });
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let ports: Vec<u16> = line
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if ports.len() != 2 {
        let _ = server.kill();
        panic!("{what}: the server printed {line:?}, not two ports");
    }
    let before = kernel_tcp(w);
    for port in ports {
        let client = format!(
            "import socket\ns = socket.create_connection(('{HOST_IP}', {port}), timeout=10)\n\
             data = b''\nwhile True:\n\x20   d = s.recv(100)\n\x20   if not d: break\n\x20   data += d\n\
             print(data.decode(), end='')"
        );
        let out = run_in(w, &w.server, &[PYTHON, "-c", &client]);
        assert_eq!(
            text(&out.stdout),
            format!("port {port}\n"),
            "{what}: port {port}: {}",
            text(&out.stderr)
        );
    }
    let status = wait_timeout(&mut server, Duration::from_secs(10));
    assert!(status.success(), "{what}: the server exited with {status}");
    assert_eq!(
        kernel_tcp(w),
        before,
        "{what}: the kernel's TCP counters moved"
    );
}

#[test]
fn bind_and_listen_on_port_0_pick_a_port_that_getsockname_shows() {
    let w = world();
    let mut alone = w.exec(&w.host);
    alone.args([BIN, "exec", "--iface", HOST_IF, "-v", "--"]);
    port_zero_serves(&w, alone, "exec");
    let mut shared = w.exec(&w.host);
    shared.args([BIN, "exec", "--share", "--iface", HOST_IF, "-v", "--"]);
    port_zero_serves(&w, shared, "exec --share");
}

#[test]
fn share_with_an_owned_address_is_refused_with_one_line() {
    let w = world();
    let owned = OWNED_IP.to_string();
    let out = w
        .exec(&w.host)
        .args([BIN, "exec", "--share", "--ip", &owned, "--iface", HOST_IF])
        .args(["--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--share with --ip is not supported"),
        "{stderr}"
    );
    // The library by hand, with both variables: its stack says why it did not start,
    // and the socket fails with ENETDOWN, not on the kernel.
    let library = std::path::Path::new(BIN).with_file_name("libuserspace_preload.so");
    let script = format!(
        "import errno, socket\ns = socket.socket()\n\
         try: s.connect(('{SERVER_IP}', 80))\n\
         except OSError as e: raise SystemExit(0 if e.errno == errno.ENETDOWN else e.errno)\n\
         raise SystemExit('connected')"
    );
    let out = w
        .exec(&w.host)
        .env("LD_PRELOAD", &library)
        .env("USERSPACE_SWITCH", "1")
        .env("USERSPACE_IP", &owned)
        .env("USERSPACE_IFACE", HOST_IF)
        .args([PYTHON, "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the switch serves the interface's own address only"),
        "{stderr}"
    );
}

/// A server that accepts, runs a program (`subprocess.run`, and `fork` + `execv`), then
/// answers on the connection it holds: the children exec without touching it, and the
/// parent's connection keeps working (the fork+exec pattern), with and without --share.
#[test]
fn a_server_that_runs_a_program_before_it_answers_keeps_its_connection() {
    let w = world();
    let script = listening_python(8087, 8)
        + "import subprocess\n\
                  for _ in range(2):\n\
                  \x20   c, _ = s.accept()\n\
                  \x20   req = b''\n\
                  \x20   while b'\\r\\n\\r\\n' not in req: req += c.recv(4096)\n\
                  \x20   assert subprocess.run(['true']).returncode == 0\n\
                  \x20   pid = os.fork()\n\
                  \x20   if pid == 0: os.execv('/bin/true', ['true'])\n\
                  \x20   assert os.waitpid(pid, 0)[1] == 0\n\
                  \x20   body = bytes(range(256)) * 4096\n\
                  \x20   c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(body) + body)\n\
                  \x20   c.close()";
    let argv = [PYTHON, "-c", &script];
    let want: Vec<u8> = (0..=255u8).cycle().take(256 * 4096).collect();
    for share in [false, true] {
        let command = match share {
            true => share_command(&w, &argv),
            false => exec_command(&w, &argv),
        };
        let mut server = start_server_with(command, &argv, 8087, 1);
        let before = kernel_tcp(&w);
        for round in 0..2 {
            let out_file = w.dir.join(format!("forkexec-{share}-{round}.bin"));
            let got = fetch_from_port(&w, 8087, "x", &out_file);
            assert!(
                got.status.success(),
                "share {share}, round {round}: {}",
                text(&got.stderr)
            );
            assert!(
                std::fs::read(&out_file).unwrap() == want,
                "share {share}, round {round}: body differs"
            );
        }
        let status = wait_timeout(&mut server, Duration::from_secs(10));
        assert!(
            status.success(),
            "share {share}: the server exited with {status}"
        );
        assert_eq!(
            kernel_tcp(&w),
            before,
            "share {share}: the kernel's TCP counters moved"
        );
    }
}

/// Python's `socketserver.ForkingTCPServer` under --share: the parent accepts and forks
/// a child per connection, closes its copy, and the child answers on the connection and
/// leaves with `os._exit`. The child takes the connection over from its parent at its
/// first call (the parent's stack exports it, the child's imports it, the switch steers
/// it to the child), so every answer (1 MiB) arrives byte-exact: three clients one
/// after another, then two at once. The child never takes the parent's port, and the
/// kernel's TCP counters do not move.
#[test]
fn a_forking_tcp_server_under_share_answers_from_the_child_byte_exact() {
    let w = world();
    let script = "import socketserver\n\
                  body = bytes(range(256)) * 4096\n\
                  class H(socketserver.BaseRequestHandler):\n\
                  \x20   def handle(self):\n\
                  \x20       req = b''\n\
                  \x20       while b'\\r\\n\\r\\n' not in req: req += self.request.recv(4096)\n\
                  \x20       self.request.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(body) + body)\n\
                  socketserver.ForkingTCPServer.allow_reuse_address = True\n\
                  socketserver.ForkingTCPServer(('0.0.0.0', 8088), H).serve_forever()";
    let argv = [PYTHON, "-c", script];
    let (server, lines) = start_server_lines(share_command(&w, &argv), &argv, 8088, 1);
    let want: Vec<u8> = (0..=255u8).cycle().take(256 * 4096).collect();
    let before = kernel_tcp(&w);
    let check = |name: &str, out: &std::process::Output, file: &std::path::Path| {
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(std::fs::read(file).unwrap() == want, "{name}: body differs");
    };
    for round in 0..3 {
        let file = w.dir.join(format!("forking-{round}.bin"));
        let started = std::time::Instant::now();
        let out = fetch_from_port(&w, 8088, "x", &file);
        check(&format!("round {round}"), &out, &file);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "round {round}: took {:?}",
            started.elapsed()
        );
    }
    let url = format!("http://{HOST_IP}:8088/x");
    let together: Vec<_> = (0..2)
        .map(|i| {
            let file = w.dir.join(format!("forking-together-{i}.bin"));
            let child = w
                .exec(&w.server)
                .args(["curl", "-sS", "--fail", "--max-time", "30", "-o"])
                .arg(&file)
                .arg(&url)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (file, child)
        })
        .collect();
    for (i, (file, child)) in together.into_iter().enumerate() {
        check(
            &format!("client {i} of two at once"),
            &child.wait_with_output().unwrap(),
            &file,
        );
    }
    assert_eq!(kernel_tcp(&w), before, "the kernel's TCP counters moved");
    let mut taken = 0;
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
        taken += line.contains("taken over from the parent") as usize;
        for bad in ["listening again", "could not be taken over", "ENOTCONN"] {
            assert!(!line.contains(bad), "{bad}: {line}");
        }
    }
    kill_group(server);
    assert_eq!(taken, 5, "one child per connection took it over");
}

/// A connection a parent shares with its forked child, under --share, as the kernel's
/// shared socket: when both let go of it without using it (the child closes it and
/// lives on, or exits at once), it closes then, never a hang; once the child took it
/// over and answered, the parent's own use fails with ENOTCONN and one -v line.
#[test]
fn a_shared_connection_closes_when_both_let_go_and_leaves_the_parent_once_taken() {
    let w = world();
    let script = listening_python(8089, 8)
        + "import time\n\
           c, _ = s.accept(); lives = os.fork()\n\
           if lives == 0: c.close(); time.sleep(6); os._exit(0)\n\
           c.close()\n\
           c, _ = s.accept(); pid = os.fork()\n\
           if pid == 0: os._exit(0)\n\
           c.close(); os.waitpid(pid, 0)\n\
           c, _ = s.accept(); pid = os.fork()\n\
           if pid == 0:\n\
           \x20   req = b''\n\
           \x20   while b'\\r\\n\\r\\n' not in req: req += c.recv(4096)\n\
           \x20   c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nhi'); c.close(); os._exit(0)\n\
           os.waitpid(pid, 0)\n\
           try: c.send(b'x'); print('parent sent', file=sys.stderr, flush=True)\n\
           except OSError as e: print('parent errno', e.errno, file=sys.stderr, flush=True)\n\
           c.close(); os.waitpid(lives, 0)";
    let argv = [PYTHON, "-c", &script];
    let (mut server, lines) = start_server_lines(share_command(&w, &argv), &argv, 8089, 1);
    let before = kernel_tcp(&w);
    let url = format!("http://{HOST_IP}:8089/");
    for what in [
        "the child closed it and lives on",
        "the child exited at once",
    ] {
        let started = std::time::Instant::now();
        let out = run_in(&w, &w.server, &["curl", "-sS", "--max-time", "10", &url]);
        // curl: (52) Empty reply from server, or (56) a reset; never a timeout (28).
        assert!(
            matches!(out.status.code(), Some(52 | 56)),
            "{what}: {:?} {}",
            out.status.code(),
            text(&out.stderr)
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what}: the connection closed only after {:?}",
            started.elapsed()
        );
    }
    let out = run_in(&w, &w.server, &["curl", "-sS", "--max-time", "10", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi");
    let status = wait_timeout(&mut server, Duration::from_secs(15));
    let mut said = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
        said.push(line);
    }
    assert!(
        status.success(),
        "the server exited with {status}: {said:?}"
    );
    assert!(
        said.iter()
            .any(|l| l == &format!("parent errno {}", libc::ENOTCONN)),
        "{said:?}"
    );
    let gone = said
        .iter()
        .filter(|l| l.contains("another process took it over"))
        .count();
    assert_eq!(gone, 1, "one -v line for the parent's use: {said:?}");
    assert_eq!(kernel_tcp(&w), before, "the kernel's TCP counters moved");
}

/// A child that took its parent's connection over and is killed: the peer's next
/// segment is answered with a RST at once (by the switch, as for any process under
/// --share that ended), not dropped by the parent that gave the connection away.
#[test]
fn a_killed_child_that_took_a_connection_leaves_its_peer_reset() {
    let w = world();
    let script = listening_python(8091, 8)
        + "import signal, time\n\
           c, _ = s.accept(); pid = os.fork()\n\
           if pid == 0: c.recv(4096); c.sendall(b'x' * 65536); os.kill(os.getpid(), signal.SIGKILL)\n\
           c.close(); os.waitpid(pid, 0); time.sleep(30)";
    let argv = [PYTHON, "-c", &script];
    let (server, _lines) = start_server_lines(share_command(&w, &argv), &argv, 8091, 1);
    // Its ACKs of the first bytes, or the bytes it sends after them, reach the switch
    // after the child died.
    let client = format!(
        "import socket, time\n\
         s = socket.create_connection(('{HOST_IP}', 8091)); t = time.time()\n\
         s.sendall(b'go'); s.settimeout(1)\n\
         try:\n\
         \x20   try:\n\
         \x20       while s.recv(65536): pass\n\
         \x20   except socket.timeout: pass\n\
         \x20   s.settimeout(8); s.sendall(b'more')\n\
         \x20   while s.recv(65536): pass\n\
         \x20   print('end of stream')\n\
         except ConnectionResetError: print('reset after %.1f s' % (time.time() - t))\n\
         except socket.timeout: print('no answer')"
    );
    let out = run_in(&w, &w.server, &[PYTHON, "-c", &client]);
    kill_group(server);
    let said = text(&out.stdout);
    let after: f64 = said
        .trim()
        .strip_prefix("reset after ")
        .and_then(|r| r.strip_suffix(" s"))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{said} {}", text(&out.stderr)));
    assert!(after < 4.0, "{said}");
}

/// The inline loop (the default): the program's threads turn the stack's loop when
/// they call in, and the background thread takes it over while they do not. A client
/// that sleeps in a wait that is not the stack's (`time.sleep`), then one that computes
/// without a call, while its kernel peer sends 64 KiB: every byte is acknowledged
/// within 0.6 s (the peer's unacknowledged count, TIOCOUTQ, is 0: no retransmit was
/// needed) and delivered. With nobody turning the loop, the peer's first window would
/// sit unacknowledged until its retransmit timer.
#[test]
fn a_sleeping_or_computing_program_still_acks_what_its_peer_sends() {
    let w = world();
    let port = 9311;
    let peer = format!(
        "import socket, fcntl, termios, struct, time\n\
         l = socket.socket()\n\
         l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.bind(('0.0.0.0', {port})); l.listen(1)\n\
         print('ready', flush=True)\n\
         for phase in ('sleep', 'compute'):\n\
         \x20   c, _ = l.accept()\n\
         \x20   c.sendall(b'x' * 65536)\n\
         \x20   time.sleep(0.6)\n\
         \x20   outq = struct.unpack('i', fcntl.ioctl(c, termios.TIOCOUTQ, b'\\0' * 4))[0]\n\
         \x20   print(phase, 'unacked', outq, flush=True)\n\
         \x20   c.recv(1)\n\
         \x20   c.close()"
    );
    let mut server = w
        .exec(&w.server)
        .args([PYTHON, "-c", &peer])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(server.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let client = format!(
        "import socket, time\n\
         for phase in ('sleep', 'compute'):\n\
         \x20   s = socket.create_connection(('{SERVER_IP}', {port}))\n\
         \x20   end = time.time() + 1.5\n\
         \x20   if phase == 'sleep': time.sleep(1.5)\n\
         \x20   else:\n\
         \x20       while time.time() < end: pass\n\
         \x20   got = 0\n\
         \x20   while got < 65536:\n\
         \x20       b = s.recv(65536)\n\
         \x20       if not b: break\n\
         \x20       got += len(b)\n\
         \x20   print(phase, 'got', got, flush=True)\n\
         \x20   s.sendall(b'.')\n\
         \x20   s.close()"
    );
    let out = exec_command(&w, &[PYTHON, "-c", &client]).output().unwrap();
    let stderr = text(&out.stderr);
    let peer_said: Vec<String> = lines.map_while(Result::ok).collect();
    let _ = server.wait();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("loop turned by the program's threads"),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "sleep got 65536\ncompute got 65536\n");
    assert_eq!(
        peer_said,
        ["sleep unacked 0", "compute unacked 0"],
        "the peer waited for ACKs while the program slept or computed"
    );
}

/// Fork safety, in C (a Python thread mostly waits for the interpreter's lock, never
/// inside the library when another forks): two threads open, register, wait on and
/// close stack sockets in a loop while the main thread forks 500 times, and each child
/// opens a socket and closes an inherited one and its duplicate (the calls that take
/// the library's locks) and exits. A lock another thread held at fork would stay held
/// in the child for ever (it has only the forking thread): no child may hang, with or
/// without the switch.
#[test]
fn children_forked_while_other_threads_use_the_sockets_never_hang() {
    const PROGRAM: &str = r#"
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
static int ep, conn;
static volatile int stop;
static void *hammer(void *wait_ms) {
    struct epoll_event ev = {.events = EPOLLIN}, got[8];
    while (!stop) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        ev.data.fd = s;
        epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
        epoll_wait(ep, got, 8, (int)(long)wait_ms);
        close(s);
    }
    return 0;
}
int main(int argc, char **argv) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(80)};
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    conn = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(conn, (struct sockaddr *)&to, sizeof to) != 0) return 2;
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = conn};
    epoll_ctl(ep, EPOLL_CTL_ADD, conn, &ev);
    int copy = dup(conn);
    pthread_t threads[2];
    pthread_create(&threads[0], 0, hammer, (void *)0L);
    pthread_create(&threads[1], 0, hammer, (void *)1L);
    for (int i = 0; i < 500; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (s >= 0) close(s);
            close(conn);
            close(copy);
            _exit(0);
        }
        int status, waited = 0;
        while (waitpid(pid, &status, WNOHANG) == 0) {
            if (++waited == 5000) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                printf("child %d hung\n", i);
                return 7;
            }
            usleep(1000);
        }
    }
    stop = 1;
    pthread_join(threads[0], 0);
    pthread_join(threads[1], 0);
    printf("forked 500\n");
    return 0;
}
"#;
    let w = world();
    let program = build_c("fork", PROGRAM);
    let (program, ip) = (program.to_str().unwrap(), SERVER_IP.to_string());
    for share in [false, true] {
        let argv = [program, ip.as_str()];
        let command = match share {
            false => exec_command(&w, &argv),
            true => share_command(&w, &argv),
        };
        run_c(
            command,
            Duration::from_secs(120),
            "forked 500\n",
            &format!("share {share}"),
        );
    }
}

/// An infinite epoll_wait off the inline path (here a forked child's, on the set its
/// parent's waits added the device's sockets to) that the device's frames wake has
/// nothing to give the program: it waits on, as Linux returns only for an event.
#[test]
fn an_infinite_epoll_wait_woken_by_the_devices_frames_waits_on() {
    let w = world();
    let script = format!(
        "import os, select, socket, time\n\
         def fetch():\n\
         \x20   c = socket.create_connection(('{SERVER_IP}', 80))\n\
         \x20   c.sendall(b'GET /index.html HTTP/1.0\\r\\n\\r\\n')\n\
         \x20   while c.recv(65536): pass\n\
         \x20   c.close()\n\
         fetch()\n\
         ep = select.epoll()\n\
         r, wr = os.pipe()\n\
         ep.register(r, select.EPOLLIN)\n\
         ep.poll(0.05)\n\
         pid = os.fork()\n\
         if pid == 0:\n\
         \x20   got = ep.poll(-1)\n\
         \x20   os._exit(0 if got == [(r, select.EPOLLIN)] else 5)\n\
         time.sleep(0.2)\n\
         for _ in range(3): fetch()\n\
         time.sleep(0.2)\n\
         os.write(wr, b'x')\n\
         deadline = time.monotonic() + 5\n\
         while True:\n\
         \x20   p, status = os.waitpid(pid, os.WNOHANG)\n\
         \x20   if p: break\n\
         \x20   if time.monotonic() > deadline: os.kill(pid, 9); raise SystemExit('the child hung')\n\
         \x20   time.sleep(0.01)\n\
         raise SystemExit(os.waitstatus_to_exitcode(status))"
    );
    let out = exec_command(&w, &[PYTHON, "-W", "ignore", "-c", &script])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("loop turned by the program's threads"),
        "{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "the child's epoll_wait returned without its pipe: {stderr}"
    );
}

/// select(2) with nfds above 1024 on a program's own larger fd_set (glibc's is 1024
/// bits): Linux looks at every fd below nfds, so the library's inline looks must too.
/// Here fd 1500 (a pipe written 0.3 s later) is the one fd watched.
#[test]
fn select_watches_fds_above_1024_when_nfds_says_so() {
    let w = world();
    let script = format!(
        "import ctypes, os, resource, socket, threading, time\n\
         soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))\n\
         c = socket.create_connection(('{SERVER_IP}', 80))\n\
         r, wr = os.pipe()\n\
         os.dup2(r, 1500)\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         for pselect in (False, True):\n\
         \x20   bits = (ctypes.c_uint64 * 32)()\n\
         \x20   bits[1500 // 64] = 1 << (1500 % 64)\n\
         \x20   threading.Timer(0.3, lambda: os.write(wr, b'x')).start()\n\
         \x20   start = time.monotonic()\n\
         \x20   if pselect:\n\
         \x20       ts = (ctypes.c_long * 2)(3, 0)\n\
         \x20       n = libc.pselect(1501, ctypes.byref(bits), None, None, ctypes.byref(ts), None)\n\
         \x20   else:\n\
         \x20       tv = (ctypes.c_long * 2)(3, 0)\n\
         \x20       n = libc.select(1501, ctypes.byref(bits), None, None, ctypes.byref(tv))\n\
         \x20   took = time.monotonic() - start\n\
         \x20   assert n == 1 and bits[1500 // 64] >> (1500 % 64) & 1, (pselect, n, took)\n\
         \x20   assert took < 2, (pselect, took)\n\
         \x20   os.read(1500, 1)\n\
         print('ok')"
    );
    assert_eq!(python_on_the_stack(&w, &script), "ok\n");
}

/// Waits with arguments at their limits, with a stack socket open: select with nfds
/// far above the fd_set's 1024 bits (1 << 20, and getdtablesize() under the hard
/// RLIMIT_NOFILE), which Linux clamps to the fd table's size, and epoll_pwait2 with a
/// timeout of i64::MAX seconds (for ever), woken by a pipe 0.2 s later.
#[test]
fn select_and_epoll_pwait2_take_arguments_at_their_limits() {
    const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static int later[2];
static void *write_later(void *arg) {
    (void)arg;
    usleep(200000);
    write(later[1], "x", 1);
    return 0;
}
static int select_ready(int nfds, int fd) {
    fd_set r;
    FD_ZERO(&r);
    FD_SET(fd, &r);
    struct timeval tv = {1, 0};
    return select(nfds, &r, 0, 0, &tv) == 1 && FD_ISSET(fd, &r);
}
int main(int argc, char **argv) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(80)};
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&to, sizeof to) != 0) return 2;
    int ready[2];
    if (pipe(ready) != 0 || pipe(later) != 0) return 3;
    write(ready[1], "x", 1);
    if (!select_ready(1 << 20, ready[0])) { printf("select 1 << 20\n"); return 4; }
    struct rlimit nofile;
    getrlimit(RLIMIT_NOFILE, &nofile);
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
    if (!select_ready(getdtablesize(), ready[0])) { printf("select getdtablesize\n"); return 5; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = later[0]};
    epoll_ctl(ep, EPOLL_CTL_ADD, later[0], &ev);
    pthread_t t;
    pthread_create(&t, 0, write_later, 0);
    struct timespec forever = {LLONG_MAX, 0};
    struct epoll_event got;
    int n = epoll_pwait2(ep, &got, 1, &forever, 0);
    pthread_join(t, 0);
    printf("%s\n", n == 1 && got.data.fd == later[0] ? "ok" : "epoll_pwait2");
    return 0;
}
"#;
    let w = world();
    let program = build_c("limits", PROGRAM);
    let ip = SERVER_IP.to_string();
    let command = exec_command(&w, &[program.to_str().unwrap(), &ip]);
    run_c(command, Duration::from_secs(30), "ok\n", "exec");
}

/// Builds the C program `source` (named `name`) with the system's compiler, in a
/// directory of this test's own; the program's path.
fn build_c(name: &str, source: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("exec-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (c, program) = (dir.join(format!("{name}.c")), dir.join(name));
    std::fs::write(&c, source).unwrap();
    let cc = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .args([&program, &c])
        .status()
        .unwrap();
    assert!(cc.success(), "cc {name}.c failed");
    program
}

/// Runs a program built by [`build_c`] under `command` for at most `limit`: it says
/// `expected` on stdout and exits 0.
fn run_c(mut command: Command, limit: Duration, expected: &str, what: &str) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, limit);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(out, expected, "{what}: {status}");
    assert!(status.success(), "{what}: {status}");
}

/// A handler that leaves by `siglongjmp`, 2000 times, while the program turns the
/// loop without pause (poll with no timeout, recv with MSG_DONTWAIT on a stack
/// socket): a handler that left a turn would leave the loop taken for ever. The loop
/// still turns after: a request on the connection is answered.
#[test]
fn a_handler_that_siglongjmps_never_leaves_the_loop_taken() {
    const PROGRAM: &str = r#"
#include <arpa/inet.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
static sigjmp_buf back;
static volatile sig_atomic_t jumps;
static void on_alarm(int sig) {
    (void)sig;
    jumps++;
    siglongjmp(back, 1);
}
int main(int argc, char **argv) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(80)};
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&to, sizeof to) != 0) return 2;
    struct sigaction alarm = {.sa_handler = on_alarm};
    sigaction(SIGALRM, &alarm, 0);
    struct itimerval every = {{0, 200}, {0, 200}}, off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &every, 0);
    sigsetjmp(back, 1);
    while (jumps < 2000) {
        struct pollfd p = {.fd = s, .events = POLLIN};
        char byte;
        poll(&p, 1, 0);
        recv(s, &byte, 1, MSG_DONTWAIT);
    }
    setitimer(ITIMER_REAL, &off, 0);
    const char *get = "GET /index.html HTTP/1.0\r\n\r\n";
    send(s, get, strlen(get), 0);
    long got = 0;
    for (;;) {
        struct pollfd p = {.fd = s, .events = POLLIN};
        if (poll(&p, 1, 5000) != 1) {
            printf("no answer after %d jumps\n", (int)jumps);
            return 3;
        }
        char buf[4096];
        long n = recv(s, buf, sizeof buf, 0);
        if (n <= 0) break;
        got += n;
    }
    printf("%s\n", got > 0 ? "answered" : "nothing");
    return 0;
}
"#;
    let w = world();
    let program = build_c("longjmp", PROGRAM);
    let ip = SERVER_IP.to_string();
    let command = exec_command(&w, &[program.to_str().unwrap(), &ip]);
    run_c(command, Duration::from_secs(60), "answered\n", "exec");
}

/// A handler that peeks at the socket (recv with MSG_PEEK|MSG_DONTWAIT) every 100 us
/// while the program reads a 64 MiB body with blocking recvs: a handler runs only in
/// the read's sleep, never while the read holds the connection's lock (it would wait
/// for that lock for ever).
#[test]
fn a_handler_that_peeks_during_a_blocking_read_never_deadlocks() {
    const PROGRAM: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
static int s;
static volatile sig_atomic_t peeks;
static void on_alarm(int sig) {
    (void)sig;
    char byte;
    int saved = errno;
    recv(s, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    peeks++;
    errno = saved;
}
int main(int argc, char **argv) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(80)};
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&to, sizeof to) != 0) return 2;
    const char *get = "GET /big.bin HTTP/1.0\r\n\r\n";
    send(s, get, strlen(get), 0);
    struct sigaction alarm = {.sa_handler = on_alarm, .sa_flags = SA_RESTART};
    sigaction(SIGALRM, &alarm, 0);
    struct itimerval every = {{0, 100}, {0, 100}}, off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &every, 0);
    static char buf[1 << 20];
    long got = 0;
    for (;;) {
        long n = recv(s, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += n;
    }
    setitimer(ITIMER_REAL, &off, 0);
    printf("%s\n", got > (64L << 20) && peeks > 0 ? "whole" : "short");
    return 0;
}
"#;
    let w = world();
    let program = build_c("peek_in_handler", PROGRAM);
    let ip = SERVER_IP.to_string();
    let command = exec_command(&w, &[program.to_str().unwrap(), &ip]);
    run_c(command, Duration::from_secs(60), "whole\n", "exec");
}

/// bind(2) to port 0 (and to a port named), then connect(2): the connection is from
/// the port bound, as Linux; getsockname shows it, and the server answers on it (its
/// segments reach the stack, not the kernel), with and without the switch.
#[test]
fn a_connect_after_bind_goes_from_the_port_bound() {
    let w = world();
    let script = format!(
        "import socket\n\
         for port in (0, 47123):\n\
         \x20   s = socket.socket(); s.bind(('0.0.0.0', port)); p = s.getsockname()[1]\n\
         \x20   assert p != 0 and (port == 0 or p == port), (port, p)\n\
         \x20   s.connect(('{SERVER_IP}', 80)); q = s.getsockname()[1]\n\
         \x20   assert q == p, ('bound', p, 'connected from', q)\n\
         \x20   s.sendall(b'GET /index.html HTTP/1.0\\r\\n\\r\\n')\n\
         \x20   body = b''\n\
         \x20   while True:\n\
         \x20       d = s.recv(65536)\n\
         \x20       if not d: break\n\
         \x20       body += d\n\
         \x20   assert body.startswith(b'HTTP/1.1 200'), body[:40]\n\
         \x20   s.close()\n\
         print('ok')"
    );
    for share in [false, true] {
        let argv = [PYTHON, "-c", &script];
        let before = kernel_tcp(&w);
        let out = match share {
            false => exec_command(&w, &argv),
            true => share_command(&w, &argv),
        }
        .output()
        .unwrap();
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "share {share}: {stderr}");
        assert_eq!(text(&out.stdout), "ok\n", "share {share}");
        assert_eq!(
            kernel_tcp(&w),
            before,
            "share {share}: the kernel's TCP moved"
        );
    }
}

/// 24 sockets, each bound to port 0 then connected, all open at once (shared-IP mode
/// steers only 16 listening ports): each is answered, and a listen after them works.
#[test]
fn many_sockets_bound_to_port_0_then_connected_are_all_answered() {
    let w = world();
    let script = format!(
        "import socket\n\
         socks = []\n\
         for i in range(24):\n\
         \x20   s = socket.socket(); s.settimeout(10); s.bind(('0.0.0.0', 0))\n\
         \x20   s.connect(('{SERVER_IP}', 80)); socks.append(s)\n\
         for s in socks:\n\
         \x20   s.sendall(b'GET /index.html HTTP/1.0\\r\\n\\r\\n')\n\
         \x20   assert s.recv(12).startswith(b'HTTP/1.1 200'), s.getsockname()\n\
         l = socket.socket(); l.bind(('0.0.0.0', 0)); l.listen(); l.close()\n\
         for s in socks: s.close()\n\
         print('ok')"
    );
    assert_eq!(python_on_the_stack(&w, &script), "ok\n");
}

#[test]
fn splice_moves_bytes_between_a_stack_socket_and_a_pipe_both_ways() {
    let w = world();
    // The kernel's server: reads to the end, answers with the SHA-256 of what came.
    let digest_server = "import hashlib, socket, sys\n\
         l = socket.create_server(('0.0.0.0', 7300))\n\
         print('ready', flush=True)\n\
         c, _ = l.accept()\n\
         h = hashlib.sha256()\n\
         while chunk := c.recv(1 << 16): h.update(chunk)\n\
         c.sendall(h.hexdigest().encode())\n\
         c.close()";
    let mut server = w
        .exec(&w.server)
        .args([PYTHON, "-c", digest_server])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(first_stdout_line(&mut server), "ready");
    // Under exec: the 64 MiB download socket -> pipe (blocking, then non-blocking with
    // SPLICE_F_NONBLOCK), its request pipe -> socket; then 8 MiB up pipe -> socket into
    // a non-blocking socket while another thread fills the pipe. First Linux's errnos,
    // and a splice into a socket whose connect failed leaves the pipe's bytes there.
    let client = format!(
        "import errno, fcntl, hashlib, os, select, socket, struct, termios, threading\n\
         r, w = os.pipe()\n\
         os.write(w, b'abc')\n\
         c = socket.socket()\n\
         assert c.connect_ex(('{SERVER_IP}', 1)) == errno.ECONNREFUSED\n\
         assert os.splice(r, c.fileno(), 0) == 0\n\
         for kw, e in [({{'offset_dst': 0}}, errno.EINVAL), ({{'offset_src': 0}}, errno.ESPIPE), ({{'flags': 0x100}}, errno.EINVAL), ({{}}, None)]:\n\
         \x20   try: os.splice(r, c.fileno(), 3, **kw); raise SystemExit(f'no error for {{kw}}')\n\
         \x20   except OSError as x: assert e is None or x.errno == e, (kw, x)\n\
         left = struct.unpack('i', fcntl.ioctl(r, termios.FIONREAD, b'0000'))[0]\n\
         assert left == 3, left\n\
         os.read(r, 3)\n\
         s = socket.create_connection(('{SERVER_IP}', 80))\n\
         req = b'GET /big.bin HTTP/1.0\\r\\n\\r\\n'\n\
         os.write(w, req)\n\
         assert os.splice(r, s.fileno(), len(req)) == len(req)\n\
         data = bytearray()\n\
         nb = False\n\
         while True:\n\
         \x20   if not nb and len(data) > 32 << 20: s.setblocking(False); nb = True\n\
         \x20   try: n = os.splice(s.fileno(), w, 1 << 20, flags=os.SPLICE_F_NONBLOCK if nb else 0)\n\
         \x20   except BlockingIOError: select.select([s], [], [], 5); continue\n\
         \x20   if n == 0: break\n\
         \x20   while n: piece = os.read(r, n); data += piece; n -= len(piece)\n\
         body = bytes(data).split(b'\\r\\n\\r\\n', 1)[1]\n\
         print(hashlib.sha256(body).hexdigest())\n\
         u = socket.create_connection(('{SERVER_IP}', 7300))\n\
         u.setblocking(False)\n\
         payload = os.urandom(8 << 20)\n\
         r2, w2 = os.pipe()\n\
         def feed(): os.write(w2, payload); os.close(w2)\n\
         threading.Thread(target=feed).start()\n\
         sent = 0\n\
         while True:\n\
         \x20   try: n = os.splice(r2, u.fileno(), 1 << 20)\n\
         \x20   except BlockingIOError: select.select([], [u], [], 5); continue\n\
         \x20   if n == 0: break\n\
         \x20   sent += n\n\
         u.shutdown(socket.SHUT_WR)\n\
         u.setblocking(True)\n\
         answer = b''\n\
         while chunk := u.recv(100): answer += chunk\n\
         assert sent == len(payload), sent\n\
         assert answer.decode() == hashlib.sha256(payload).hexdigest(), answer\n\
         print('upload', sent)"
    );
    let before = kernel_tcp(&w);
    let out = exec_command(&w, &[PYTHON, "-c", &client]).output().unwrap();
    let stderr = text(&out.stderr);
    let _ = server.kill();
    let _ = server.wait();
    assert!(out.status.success(), "{stderr}");
    for port in [80, 7300] {
        assert!(
            stderr.contains(&format!("connect to {SERVER_IP}:{port}: stack")),
            "{stderr}"
        );
    }
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            sha256(&w.dir.join("www/big.bin")).as_str(),
            "upload 8388608"
        ]
    );
    assert_eq!(kernel_tcp(&w), before, "the kernel's TCP counters moved");
}

#[test]
fn tcp_info_reports_the_connections_bytes_segment_size_and_options() {
    let w = world();
    // Counted by the program itself (what it wrote and read), against what TCP_INFO says.
    let script = format!(
        "import socket, struct\n\
         s = socket.create_connection(('{SERVER_IP}', 80))\n\
         req = b'GET /big.bin HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'\n\
         s.sendall(req)\n\
         head = b''\n\
         while b'\\r\\n\\r\\n' not in head: head += s.recv(1)\n\
         got = len(head) + (64 << 20)\n\
         left = 64 << 20\n\
         while left: left -= len(s.recv(min(left, 1 << 20)))\n\
         info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)\n\
         state, ca, options, wscale = info[0], info[1], info[5], info[6]\n\
         rto, ato, snd_mss, rcv_mss = struct.unpack_from('IIII', info, 8)\n\
         rtt, rttvar, ssthresh, cwnd = struct.unpack_from('IIII', info, 68)\n\
         bytes_acked, bytes_received = struct.unpack_from('QQ', info, 120)\n\
         maxseg = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)\n\
         cc = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b'\\0').decode()\n\
         fresh = socket.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b'\\0').decode()\n\
         print(state, options & 7, snd_mss, maxseg, bytes_acked == len(req), bytes_received == got, rtt > 0, cwnd > 0, rto >= 200000, cc, fresh)"
    );
    let before = kernel_tcp(&w);
    let out = exec_command(&w, &[PYTHON, "-c", &script]).output().unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("connect to {SERVER_IP}:80: stack")),
        "{stderr}"
    );
    // Established (1); timestamps, SACK and window scaling (7) as the kernel's peer
    // offers them; 1500-byte MTU less IPv4, TCP and timestamp headers: 1448.
    assert_eq!(
        text(&out.stdout).trim(),
        "1 7 1448 1448 True True True True True cubic cubic"
    );
    assert_eq!(kernel_tcp(&w), before, "the kernel's TCP counters moved");
}

#[test]
fn iperf3_under_exec_reads_tcp_info_without_an_error() {
    let w = world();
    let mut server = w
        .exec(&w.server)
        .args(["iperf3", "-s", "-1", "-p", "5301"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // iperf3 reads TCP_INFO every interval for its Retr and Cwnd columns.
    let server_ip = SERVER_IP.to_string();
    let mut out = None;
    for _ in 0..50 {
        let o = exec_command(
            &w,
            &["iperf3", "-J", "-c", &server_ip, "-p", "5301", "-t", "2"],
        )
        .output()
        .unwrap();
        // The server may not listen yet: iperf3 then fails at once.
        if o.status.success() || !text(&o.stdout).contains("Connection refused") {
            out = Some(o);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    let out = out.expect("iperf3's server never listened");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    // Without TCP_INFO it says "getsockopt - Protocol not available" (in its JSON
    // under -J) and shows an RTT of 0 and a garbage cwnd.
    assert!(
        !stdout.contains("getsockopt") && !stderr.contains("getsockopt"),
        "{stdout}{stderr}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let sender = &json["end"]["streams"][0]["sender"];
    let bytes = sender["bytes"].as_u64().unwrap();
    let received = json["end"]["sum_received"]["bytes"].as_u64().unwrap();
    // What the server read; bytes still in flight when the time ran out are not in it.
    assert!(received > 0 && received <= bytes, "{sender} {received}");
    assert!(sender["max_snd_cwnd"].as_u64().unwrap() > 0, "{sender}");
    let rtt = sender["mean_rtt"].as_u64().unwrap();
    assert!(rtt > 0 && rtt < 1_000_000, "{sender}");
    assert!(sender["retransmits"].as_u64().is_some(), "{sender}");
}
