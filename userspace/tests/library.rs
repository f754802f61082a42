//! The library's examples in the namespace world: a blocking client and a hyper client
//! fetch a 64 MiB file from nginx byte for byte, and a hyper server takes `wrk` without
//! an error. They need root; `cargo xtask test` runs them.
mod common;
// The command's TLS set-up (an app module, not the library's): the test shares its file.
#[allow(dead_code)]
#[path = "../src/app/tls.rs"]
mod tls;
use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Builds the examples once (same profile as this test) and returns the path of `name`.
fn example(name: &str) -> String {
    static BUILT: OnceLock<()> = OnceLock::new();
    let release = !cfg!(debug_assertions);
    BUILT.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args([
            "build",
            "-p",
            "userspace",
            "--features",
            "netns-tests",
            "--examples",
        ]);
        if release {
            cargo.arg("--release");
        }
        // The variables cargo set for this test would look like changes to build
        // scripts that watch them (ring's), and rebuild them for nothing.
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
        let status = cargo.status().expect("run cargo build --examples");
        assert!(status.success(), "building the examples failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if release { "release" } else { "debug" };
    target
        .join(profile)
        .join("examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Runs example `name` in the host namespace on the host link, with `args` after
/// `--iface`.
fn run_example(w: &World, name: &str, args: &[&str]) -> std::process::Output {
    let binary = example(name);
    let mut argv = vec![binary.as_str(), "--iface", HOST_IF];
    argv.extend_from_slice(args);
    run_in(w, &w.host, &argv)
}

/// Starts `command`, echoes its stderr, and returns once it said `ready:` `times` times.
fn start(mut command: Command, times: usize) -> std::process::Child {
    let mut child = command
        .stdin(Stdio::null())
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut ready = 0;
    while ready < times {
        assert!(
            std::time::Instant::now() < deadline,
            "not ready within 30 s"
        );
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(100))
            && line.starts_with("ready:")
        {
            ready += 1;
        }
    }
    child
}

fn world() -> World {
    World::up(&WorldOptions {
        nginx: true,
        dnsmasq: true,
        big_file: Some(64 << 20),
        ..Default::default()
    })
    .expect("build the namespace world")
}

/// Runs a client example in the host namespace, its stdout into a file, and checks the
/// file is nginx's big.bin.
fn fetch_big_file(name: &str, loss: u32) {
    let w = world();
    w.set_loss(loss).unwrap();
    let out_file = w.dir.join(format!("{name}.bin"));
    let binary = example(name);
    let started = std::time::Instant::now();
    let status = w
        .exec(&w.host)
        .args([
            &binary,
            "--iface",
            HOST_IF,
            &format!("http://{SERVER_IP}/big.bin"),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "{name} exited with {status}");
    let took = started.elapsed();
    eprintln!(
        "{name}: 64 MiB with {loss}% loss in {took:?} ({:.2} Gbit/s, process start included)",
        (64u64 << 23) as f64 / took.as_secs_f64() / 1e9
    );
    assert_eq!(
        sha256(&out_file),
        sha256(&w.dir.join("www/big.bin")),
        "{name}: body differs"
    );
    assert!(!xdp_attached(&w), "{name} left XDP attached");
}

/// The examples over IPv6, in an IPv6-only world: by bracketed literal in shared-IP
/// mode, and by name (AAAA) in owned-IP mode with an owned IPv6 address.
#[test]
fn blocking_get_and_hyper_get_fetch_over_ipv6() {
    let w = World::up(&WorldOptions {
        nginx: true,
        dnsmasq: true,
        family: world::Family::Ipv6,
        big_file: Some(64 << 20),
        ..Default::default()
    })
    .expect("build the IPv6-only world");
    let owned = world::OWNED_IP6.to_string();
    let literal = format!("http://[{}]/big.bin", world::SERVER_IP6);
    for name in ["blocking_get", "hyper_get"] {
        for args in [
            vec![literal.as_str()],
            vec!["--ip", &owned, "http://example.com/big.bin"],
        ] {
            let out_file = w.dir.join(format!("{name}6.bin"));
            let status = w
                .exec(&w.host)
                .arg(example(name))
                .args(["--iface", HOST_IF])
                .args(&args)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out_file).unwrap())
                .status()
                .unwrap();
            assert!(status.success(), "{name} {args:?} exited with {status}");
            assert_eq!(
                sha256(&out_file),
                sha256(&w.dir.join("www/big.bin")),
                "{name} {args:?}: body differs"
            );
        }
    }
    assert!(!xdp_attached(&w), "left XDP attached");
}

#[test]
fn blocking_get_fetches_64_mib_byte_identical() {
    fetch_big_file("blocking_get", 0);
}

#[test]
fn blocking_get_fetches_64_mib_byte_identical_with_2_percent_loss() {
    fetch_big_file("blocking_get", 2);
}

#[test]
fn hyper_get_fetches_64_mib_byte_identical() {
    fetch_big_file("hyper_get", 0);
}

#[test]
fn hyper_get_resolves_names_and_exits_0_on_2xx_only() {
    let w = world();
    // With a loop that sleeps when idle, too.
    let run = |url: &str| run_example(&w, "hyper_get", &["--no-busy-poll", url]);
    let ok = run("http://example.com/");
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert_eq!(text(&ok.stdout), world::INDEX_HTML);
    let missing = run("http://example.com/nope");
    assert_eq!(missing.status.code(), Some(22), "{}", text(&missing.stderr));
}

/// hyper_hello with `args` under `wrk -c100 -d5s`: no errors, then SIGTERM detaches.
fn hyper_hello_under_wrk(w: &World, args: &[&str], stacks: usize) {
    let mut command = w.exec(&w.host);
    command
        .arg(example("hyper_hello"))
        .args(["--iface", HOST_IF, "--port", "8080"])
        .args(args);
    let mut child = start(command, stacks);
    let url = format!("http://{HOST_IP}:8080/");
    let once = run_in(w, &w.server, &["curl", "-sS", "--max-time", "10", &url]);
    assert_eq!(
        text(&once.stdout),
        "hello from userspace\n",
        "{}",
        text(&once.stderr)
    );
    let out = run_in(w, &w.server, &["wrk", "-t2", "-c100", "-d5s", &url]);
    let report = text(&out.stdout);
    eprintln!("{report}");
    assert!(out.status.success(), "{report}");
    assert!(report.contains("Requests/sec"), "{report}");
    assert!(!report.contains("Socket errors"), "{report}");
    assert!(!report.contains("Non-2xx"), "{report}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_timeout(&mut child, std::time::Duration::from_secs(10));
    assert!(status.success(), "hyper_hello exited with {status}");
    assert!(!xdp_attached(w), "hyper_hello left XDP attached");
}

#[test]
fn hyper_hello_serves_wrk_without_errors_and_detaches() {
    hyper_hello_under_wrk(&world(), &[], 1);
}

#[test]
fn hyper_hello_with_a_stack_per_queue_serves_wrk_without_errors() {
    let w = World::up(&WorldOptions {
        queues: Some(2),
        ..Default::default()
    })
    .expect("build the namespace world");
    hyper_hello_under_wrk(&w, &["--queues", "2"], 2);
}

#[test]
fn blocking_get_in_owned_ip_mode() {
    let w = world();
    let out = run_example(
        &w,
        "blocking_get",
        &[
            "--ip",
            &OWNED_IP.to_string(),
            &format!("http://{SERVER_IP}/"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), world::INDEX_HTML);
}

#[test]
fn connect_to_a_silent_next_hop_fails_unreachable_in_shared_ip_mode() {
    // Nobody has 10.77.1.99 on the host link: neither the kernel (asked to resolve it)
    // nor the stack's own ARP requests get an answer. The connect fails in seconds.
    let w = world();
    let started = std::time::Instant::now();
    let out = run_example(&w, "blocking_get", &["http://10.77.1.99/"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("unreachable"),
        "{}",
        text(&out.stderr)
    );
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
}

/// Set in the copy of this test binary that runs inside the host namespace.
const INNER: &str = "USERSPACE_LIBRARY_INNER";

/// The sockets used in-process, inside the host namespace: blocking client and server,
/// https over rustls, an async echo (run by
/// `sockets_in_process_blocking_async_and_tls`; a no-op anywhere else).
#[test]
fn inner_sockets() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    if std::env::var_os(INNER).is_none() {
        return;
    }
    let stack = userspace::Stack::builder()
        .interface(HOST_IF)
        .build()
        .unwrap();
    // A second Stack on the interface names this process's own, with the remedy that
    // keeps it (not the `ip link ... xdp off` that would tear it down).
    let Err(second) = userspace::Stack::builder().interface(HOST_IF).build() else {
        panic!("a second Stack on the interface is refused");
    };
    let message = format!("{second:#}");
    assert!(
        message.contains(&format!("this process ({})", std::process::id()))
            && !message.contains("xdp off"),
        "{message}"
    );
    // A closed port: the kernel's errno, as std's connect gives it.
    let refused = userspace::TcpStream::connect(&stack, (SERVER_IP, 81)).unwrap_err();
    assert_eq!(
        refused.raw_os_error(),
        Some(libc::ECONNREFUSED),
        "{refused}"
    );
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // A client: a read timeout, then a request and its response.
    let nginx = std::net::SocketAddr::from((SERVER_IP, 80));
    let stream =
        userspace::TcpStream::connect_timeout(&stack, &nginx, Duration::from_secs(5)).unwrap();
    assert_eq!(stream.peer_addr().unwrap(), nginx);
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let err = (&stream).read(&mut [0; 16]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    assert!(started.elapsed() >= Duration::from_millis(190));
    stream.set_nodelay(true).unwrap();
    (&stream)
        .write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        .unwrap();
    stream.set_read_timeout(None).unwrap();
    let mut response = String::new();
    (&stream).read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(world::INDEX_HTML), "{response}");
    drop(stream);
    // https: rustls over the stream, as any `Read + Write`.
    let ca = std::env::var_os("USERSPACE_LIBRARY_CA").expect("the world's CA");
    let config = tls::client_config(Some(ca.as_ref()), false).unwrap();
    let tls = tls::connection(config, "example.com").unwrap();
    let tcp = userspace::TcpStream::connect(&stack, (SERVER_IP, 443)).unwrap();
    let mut https = rustls::StreamOwned::new(tls, tcp);
    https
        .write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    match https.read_to_end(&mut response) {
        Ok(_) => {}
        // nginx may close TCP without close_notify after a `Connection: close` reply.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("https read: {e}"),
    }
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(world::INDEX_HTML), "{response}");
    drop(https);
    // A port a kernel listener holds is refused as the kernel refuses it (issue 22 item
    // 6), unless taken over; port 0 picks a free port, which the kernel then keeps.
    let kernel = std::net::TcpListener::bind("0.0.0.0:9002").unwrap();
    let refused = userspace::TcpListener::bind(&stack, "0.0.0.0:9002").unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::AddrInUse);
    assert_eq!(refused.raw_os_error(), Some(libc::EADDRINUSE));
    let options = userspace::net::ListenOptions {
        take_over: true,
        ..Default::default()
    };
    drop(userspace::TcpListener::bind_with(&stack, "0.0.0.0:9002", options).unwrap());
    drop(kernel);
    let any = userspace::TcpListener::bind(&stack, "0.0.0.0:0").unwrap();
    let port = any.local_addr().unwrap().port();
    assert_ne!(port, 0);
    let taken = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap_err();
    assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
    drop(any);
    // A server: accept, read to the end, answer, half-close.
    let listener = userspace::TcpListener::bind_with_backlog(&stack, "0.0.0.0:9000", 16).unwrap();
    assert_eq!(listener.local_addr().unwrap().port(), 9000);
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let echo = tokio
        .block_on(userspace::net::tokio::TcpListener::bind(
            &stack,
            "0.0.0.0:9001",
        ))
        .unwrap();
    eprintln!("ready: listening");
    for _ in 0..2 {
        let mut client = listener.incoming().next().unwrap().unwrap();
        let reader = client.try_clone().unwrap();
        let mut got = Vec::new();
        (&reader).read_to_end(&mut got).unwrap();
        client.write_all(&got.to_ascii_uppercase()).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let err = client.write(b"late").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        // Once the client has closed too, the connection is finished: shutdown fails
        // with ENOTCONN, as std's (issue 22 item 6).
        let until = Instant::now() + Duration::from_secs(10);
        let finished = loop {
            match client.shutdown(std::net::Shutdown::Both) {
                Err(e) => break e,
                Ok(()) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                Ok(()) => panic!("the connection never finished"),
            }
        };
        assert_eq!(finished.kind(), std::io::ErrorKind::NotConnected);
        assert_eq!(finished.raw_os_error(), Some(libc::ENOTCONN));
    }
    // An async echo: what comes in goes back out, under back-pressure both ways.
    // tokio's extras (issue 22 item 6): readiness, peek, try_read, owned halves.
    tokio.block_on(async {
        use tokio::io::AsyncWriteExt;
        let (stream, _) = echo.accept().await.unwrap();
        stream.readable().await.unwrap();
        let mut peeked = [0u8; 1024];
        let n = stream.peek(&mut peeked).await.unwrap();
        assert!(n > 0);
        let mut first = vec![0u8; n];
        assert_eq!(
            stream.try_read(&mut first).unwrap(),
            n,
            "what was peeked is there"
        );
        assert_eq!(first, peeked[..n]);
        stream.writable().await.unwrap();
        assert!(stream.take_error().unwrap().is_none());
        let (mut reader, mut writer) = stream.into_split();
        writer.write_all(&first).await.unwrap();
        tokio::io::copy(&mut reader, &mut writer).await.unwrap();
        drop(writer); // FIN, as tokio's write half
    });
    // A client that resets: the write that meets the reset fails with ECONNRESET, the
    // next one with EPIPE, as on Linux (issue 22 item 6).
    let (mut reset, _) = listener.try_clone().unwrap().accept().unwrap();
    let first = loop {
        match reset.write(b"x") {
            Ok(n) => {
                assert_eq!(n, 1);
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => break e,
        }
    };
    assert_eq!(first.kind(), std::io::ErrorKind::ConnectionReset);
    let second = reset.write(b"x").unwrap_err();
    assert_eq!(second.kind(), std::io::ErrorKind::BrokenPipe);
    assert_eq!(second.raw_os_error(), Some(libc::EPIPE));
    let reset = userspace::net::tokio::TcpStream::from_std(reset).unwrap();
    assert!(reset.take_error().unwrap().is_none(), "reported already");
    drop(reset);
    let stats = stack.stats().unwrap();
    assert!(stats.connections_opened >= 3, "{stats:?}");
    stack.shutdown();
    let err = userspace::TcpStream::connect(&stack, nginx).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
}

#[test]
fn sockets_in_process_blocking_async_and_tls() {
    let w = World::up(&WorldOptions {
        nginx: true,
        tls: true,
        ..Default::default()
    })
    .expect("build the namespace world");
    let mut command = w.exec(&w.host);
    command
        .arg(std::env::current_exe().unwrap())
        .args(["inner_sockets", "--exact", "--nocapture"])
        .env(INNER, "1")
        .env("USERSPACE_LIBRARY_CA", w.dir.join("ca.pem"));
    let mut inner = start(command, 1);
    for message in ["hello", "a second one"] {
        let script = format!(
            "import socket\ns=socket.create_connection(('{HOST_IP}',9000),timeout=10)\ns.sendall(b'{message}')\ns.shutdown(socket.SHUT_WR)\ngot=b''\nwhile True:\n  c=s.recv(4096)\n  if not c: break\n  got+=c\nprint(got.decode())"
        );
        let out = python(&w, &w.server, &script);
        assert_eq!(
            text(&out.stdout).trim(),
            message.to_uppercase(),
            "{}",
            text(&out.stderr)
        );
    }
    let script = "import socket,hashlib,os,threading\ndata=os.urandom(4<<20)\ns=socket.create_connection(('HOST',9001),timeout=30)\nt=threading.Thread(target=lambda:(s.sendall(data),s.shutdown(socket.SHUT_WR)))\nt.start()\ngot=bytearray()\nwhile True:\n  c=s.recv(1<<16)\n  if not c: break\n  got+=c\nt.join()\nprint(hashlib.sha256(got).digest()==hashlib.sha256(data).digest(), len(got))"
        .replace("HOST", &HOST_IP.to_string());
    let out = python(&w, &w.server, &script);
    assert_eq!(
        text(&out.stdout).trim(),
        format!("True {}", 4 << 20),
        "{}",
        text(&out.stderr)
    );
    let script = format!(
        "import socket,struct\ns=socket.create_connection(('{HOST_IP}',9000),timeout=10)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0))\ns.close()"
    );
    let out = python(&w, &w.server, &script);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = wait_timeout(&mut inner, std::time::Duration::from_secs(20));
    assert!(status.success(), "the inner test failed: {status}");
}

/// Set in the copy of this test binary that runs the zero-copy reads in the host
/// namespace: the path of the world's big.bin.
const INNER_ZERO_COPY: &str = "USERSPACE_LIBRARY_ZERO_COPY";

/// GETs nginx's big.bin over `stream` with `read_with` only, checking each lent slice
/// against `expected` where it lies (no copy); `pause` runs inside the first callback
/// that sees body bytes, while they are lent.
fn zero_copy_get(stream: &userspace::TcpStream, expected: &[u8], mut pause: impl FnMut()) {
    use std::io::Write;
    (&*stream)
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut body = 0;
    let mut paused = false;
    while stream
        .read_with(|bytes| {
            let mut used = 0;
            while used < bytes.len() && !head.ends_with(b"\r\n\r\n") {
                head.push(bytes[used]);
                used += 1;
            }
            let rest = &bytes[used..];
            if !rest.is_empty() && !paused {
                paused = true;
                pause();
            }
            assert!(
                expected.get(body..body + rest.len()) == Some(rest),
                "body differs in the {} bytes at {body}",
                rest.len()
            );
            body += rest.len();
            Ok(bytes.len())
        })
        .unwrap()
        > 0
    {}
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    assert_eq!(body, expected.len(), "the whole body");
}

/// The zero-copy reads in-process (run by
/// `zero_copy_reads_are_byte_exact_and_a_slow_reader_holds_back_only_its_connection`;
/// a no-op anywhere else).
#[test]
fn inner_zero_copy() {
    let Some(big) = std::env::var_os(INNER_ZERO_COPY) else {
        return;
    };
    let expected = std::fs::read(big).unwrap();
    let stack = userspace::Stack::builder()
        .interface(HOST_IF)
        .build()
        .unwrap();
    let slow = userspace::TcpStream::connect(&stack, (SERVER_IP, 80)).unwrap();
    let fast = userspace::TcpStream::connect(&stack, (SERVER_IP, 80)).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        // This reader keeps its first body bytes lent until the other connection has
        // downloaded all 64 MiB: the stack goes on receiving meanwhile.
        let (slow, expected) = (&slow, &expected);
        s.spawn(move || {
            zero_copy_get(slow, expected, || {
                finished
                    .recv_timeout(std::time::Duration::from_secs(60))
                    .expect("the other download finished while these bytes were lent");
            })
        });
        zero_copy_get(&fast, expected, || {});
        done.send(()).unwrap();
    });
    stack.shutdown();
}

#[test]
fn zero_copy_reads_are_byte_exact_and_a_slow_reader_holds_back_only_its_connection() {
    let w = world();
    let status = w
        .exec(&w.host)
        .arg(std::env::current_exe().unwrap())
        .args(["inner_zero_copy", "--exact", "--nocapture"])
        .env(INNER_ZERO_COPY, w.dir.join("www/big.bin"))
        .status()
        .unwrap();
    assert!(status.success(), "the inner test failed: {status}");
}
