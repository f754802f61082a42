//! Integration tests in network namespaces against real peers (the Linux kernel's TCP,
//! nginx, dnsmasq, ping). They need root; `cargo xtask test` runs them.
mod common;
use common::*;
use std::time::{Duration, Instant};

fn world(opts: WorldOptions) -> World {
    World::up(&opts).expect("build the namespace world")
}

/// The default world with nginx and dnsmasq answering `example.com`.
fn web_world() -> World {
    world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        ..Default::default()
    })
}

// ------------------------------------------------------------------ foundation (issue 2)

#[test]
fn owned_ip_answers_arp_and_ping_through_the_tx_ring() {
    let w = world(WorldOptions::default());
    let stack = start_stack(
        &w,
        &["--iface", HOST_IF, "--ip", &OWNED_IP.to_string(), "--stats"],
    );
    // The router must ARP for the owned address and the server's ping must come back.
    let out = run_in(
        &w,
        &w.server,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            &OWNED_IP.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "ping: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let neigh = text(
        &run_in(
            &w,
            &w.router,
            &["ip", "neigh", "show", &OWNED_IP.to_string()],
        )
        .stdout,
    );
    assert!(
        neigh.contains("lladdr"),
        "router learned the stack's MAC: {neigh}"
    );
    let (_, lines) = stack.stop("-INT");
    assert!(stat(&lines, "arp_in").unwrap() >= 1, "{lines:?}");
    assert!(stat(&lines, "steered").unwrap() >= 4, "{lines:?}");
}

#[test]
fn closed_port_gets_rst_from_the_stack_not_the_kernel() {
    let w = world(WorldOptions::default());
    // The kernel listens on 7777 in the host namespace: if the SYN reached the kernel, the
    // connection would succeed. Steered to the stack, which has no listener, it gets a RST.
    let kernel_listener = w.spawn(&w.host, &["python3", "-c", "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',7777))\ns.listen()\ntime.sleep(60)"]).unwrap();
    w.wait_for_port(&w.host, HOST_IP, 7777, false).unwrap();
    let stack = start_stack(&w, &["--iface", HOST_IF, "--steer-port", "7777", "--stats"]);
    let script = format!(
        "import socket\ns=socket.socket()\ns.settimeout(5)\ntry:\n  s.connect(('{HOST_IP}',7777))\n  print('connected')\nexcept ConnectionRefusedError:\n  print('refused')"
    );
    let out = python(&w, &w.server, &script);
    assert_eq!(text(&out.stdout).trim(), "refused", "{}", text(&out.stderr));
    let (_, lines) = stack.stop("-TERM");
    assert!(stat(&lines, "rst_sent").unwrap() >= 1, "{lines:?}");
    drop(kernel_listener);
}

/// Issue 22 item 1: `serve --ip` (sharded stacks, every queue) refuses a closed port at
/// once, as `run --ip` does (RFC 9293 3.10.7.1): the kernel's curl exits 7, not 28.
#[test]
fn serve_owned_ip_refuses_closed_ports_on_every_queue() {
    let w = world(WorldOptions::default());
    let owned = OWNED_IP.to_string();
    let serve = start_serve(
        &w,
        &[
            "--iface", HOST_IF, "--ip", &owned, "--port", "7", "--echo", "--stats",
        ],
    );
    // Sixteen connections from different ports: RSS spreads them over the four queues.
    let script = format!(
        "for i in $(seq 16); do curl -sS --max-time 5 -o /dev/null http://{owned}:9/; echo $?; done"
    );
    let out = run_in(&w, &w.server, &["sh", "-c", &script]);
    let codes: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(codes, vec!["7"; 16], "{}", text(&out.stderr));
    let (status, lines) = serve.stop("-INT");
    assert!(status.success(), "{lines:?}");
    assert!(stat(&lines, "closed_port").unwrap() >= 16, "{lines:?}");
}

/// Issue 23 / 22 item 6: serve refuses a port a kernel server listens on, naming it,
/// with exit 2; `--take-over` serves it anyway.
#[test]
fn serve_refuses_a_port_a_kernel_server_holds_unless_told_to_take_it_over() {
    let w = world(WorldOptions::default());
    let mut kernel_server = w
        .spawn(
            &w.host,
            &["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"],
        )
        .unwrap();
    w.wait_for_port(&w.host, HOST_IP, 8080, false).unwrap();
    let root = www(&w);
    let out = run_in(
        &w,
        &w.host,
        &[
            BIN, "serve", "--iface", HOST_IF, "--root", &root, "--port", "8080",
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let pid = kernel_server.id();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("port 8080 is in use by process") && stderr.contains("(python3)"),
        "names the holder (pid {pid} or its child): {stderr}"
    );
    assert!(!xdp_attached(&w));
    let serve = start_serve(
        &w,
        &[
            "--iface",
            HOST_IF,
            "--root",
            &root,
            "--port",
            "8080",
            "--take-over",
        ],
    );
    let out = run_in(
        &w,
        &w.server,
        &[
            "curl",
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            SERVE_URL,
        ],
    );
    assert!(
        text(&out.stdout).contains("Server: userspace"),
        "{}",
        text(&out.stderr)
    );
    serve.stop("-INT");
    let _ = kernel_server.kill();
    let _ = kernel_server.wait();
}

#[test]
fn xdp_is_detached_on_every_way_out() {
    let w = world(WorldOptions {
        nginx: true,
        ..Default::default()
    });
    for (how, env) in [
        ("-INT", None),
        ("-TERM", None),
        ("-KILL", None),
        ("error", Some("error")),
        ("panic", Some("panic")),
    ] {
        if let Some(mode) = env {
            let out = w
                .exec(&w.host)
                .env("USERSPACE_TEST_FAIL_AFTER_ATTACH", mode)
                .args([BIN, "run", "--iface", HOST_IF])
                .output()
                .unwrap();
            assert!(!out.status.success(), "{how}: must fail");
            assert!(
                text(&out.stderr).contains("ready:"),
                "{how}: attached before failing: {}",
                text(&out.stderr)
            );
        } else {
            let stack = start_stack(&w, &["--iface", HOST_IF]);
            assert!(xdp_attached(&w), "{how}: attached while running");
            stack.stop(how);
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(!xdp_attached(&w), "{how}: XDP program left attached");
        // The kernel's own TCP on the interface works again.
        let out = run_in(
            &w,
            &w.host,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{SERVER_IP}/index.html"),
            ],
        );
        assert!(
            text(&out.stdout).contains("Example Domain"),
            "{how}: kernel curl failed: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn umem_frames_are_recycled_without_leak() {
    let w = world(WorldOptions::default());
    let stack = start_stack(
        &w,
        &["--iface", HOST_IF, "--ip", &OWNED_IP.to_string(), "--stats"],
    );
    // 6000 connection attempts to a closed port: 6000 SYNs in and 6000 RSTs out, more
    // than the frames of the UMEMs, so every frame goes around several times.
    let script = format!(
        "import socket\nn=0\nfor i in range(6000):\n  s=socket.socket()\n  s.settimeout(2)\n  try:\n    s.connect(('{OWNED_IP}',9))\n  except ConnectionRefusedError:\n    n+=1\n  s.close()\nprint(n)"
    );
    let out = python(&w, &w.server, &script);
    assert_eq!(text(&out.stdout).trim(), "6000", "{}", text(&out.stderr));
    let (_, lines) = stack.stop("-INT");
    assert!(stat(&lines, "rx_frames").unwrap() >= 6000, "{lines:?}");
    assert_eq!(stat(&lines, "missing"), Some(0), "{lines:?}");
    // Each queue's UMEM holds a fill ring's worth of frames; the transmitting socket's
    // holds as many again for transmit.
    let queues = i64::from(world::DEFAULT_QUEUES);
    let ring = stat(&lines, "total").unwrap() / (queues + 1);
    let rx_share = stat(&lines, "in_fill_ring").unwrap() + stat(&lines, "awaiting_fill").unwrap();
    assert_eq!(
        rx_share,
        queues * ring,
        "every received frame went back to the fill ring: {lines:?}"
    );
    let tx_share = stat(&lines, "free_for_tx").unwrap() + stat(&lines, "in_tx_ring").unwrap();
    assert_eq!(
        tx_share, ring,
        "every sent frame came back from the completion ring: {lines:?}"
    );
    assert_eq!(
        stat(&lines, "rx_fill_ring_empty"),
        Some(0),
        "the kernel never found the fill ring empty: {lines:?}"
    );
    assert_eq!(stat(&lines, "rx_dropped"), Some(0), "{lines:?}");
}

#[test]
fn runt_and_malformed_frames_are_counted_and_dropped() {
    let w = world(WorldOptions::default());
    let stack = start_stack(
        &w,
        &["--iface", HOST_IF, "--ip", &OWNED_IP.to_string(), "--stats"],
    );
    let mac = text(
        &run_in(
            &w,
            &w.host,
            &["cat", &format!("/sys/class/net/{HOST_IF}/address")],
        )
        .stdout,
    )
    .trim()
    .replace(':', "");
    // From the router, raw frames onto the host link: runts, lying IHL, truncated TCP,
    // bad IP and TCP checksums, a fragment. Then a valid SYN, which must still get a RST.
    let script = format!(
        r#"
import socket, struct
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b)//2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
dst = bytes.fromhex('{mac}')
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('r0', 0))
src = s.getsockname()[4]
eth = dst + src + b'\x08\x00'
sip = socket.inet_aton('10.77.1.1'); dip = socket.inet_aton('{OWNED_IP}')
def ip(payload, ihl=5, frag=0x4000, total=None, good=True):
    h = struct.pack('!BBHHHBBH4s4s', 0x40 | ihl, 0, total or 20 + len(payload), 1, frag, 64, 6, 0, sip, dip)
    if good: h = h[:10] + struct.pack('!H', csum(h)) + h[12:]
    return h + payload
def tcp(flags=2, good=True, port=80):
    t = struct.pack('!HHIIBBHHH', 40000, port, 1, 0, 5 << 4, flags, 65535, 0, 0)
    if good:
        ph = sip + dip + struct.pack('!BBH', 0, 6, len(t))
        t = t[:16] + struct.pack('!H', csum(ph + t)) + t[18:]
    return t
frames = [
    dst + src,                                   # runt: no ethertype
    eth + b'\x45\x00',                           # truncated IPv4 header
    eth + ip(tcp(), ihl=15)[:40],                # IHL says 60 bytes, frame has fewer
    eth + ip(tcp())[:30],                        # truncated TCP
    eth + ip(tcp(), total=400),                  # total length beyond the frame
    eth + ip(tcp(), good=False),                 # bad IP checksum
    eth + ip(tcp(good=False)),                   # bad TCP checksum
    eth + ip(tcp(), frag=0x2000),                # a fragment
]
for f in frames:
    s.send(f.ljust(14, b'\0'))
s.send(eth + ip(tcp(port=5555)))                 # valid SYN to a closed port
"#
    );
    let out = python(&w, &w.router, &script);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_millis(300));
    let (_, lines) = stack.stop("-INT");
    let n = |name| stat(&lines, name).unwrap_or(-1);
    // Frames too short to read the IPv4 destination are never steered: the kernel gets them.
    assert!(
        n("passed_to_kernel") >= 2,
        "runt and truncated IPv4 header passed: {lines:?}"
    );
    // Steered frames whose headers lie: IHL, truncated TCP, total length.
    assert!(n("drop_truncated") + n("drop_malformed") >= 3, "{lines:?}");
    assert!(n("drop_bad_ip_checksum") >= 1, "{lines:?}");
    assert!(n("drop_bad_tcp_checksum") >= 1, "{lines:?}");
    assert!(n("drop_ip_fragment") >= 1, "{lines:?}");
    assert!(
        n("rst_sent") >= 1,
        "the valid SYN after the bad frames was answered: {lines:?}"
    );
}

#[test]
fn setup_errors_are_one_line_with_exit_code_2() {
    let w = world(WorldOptions::default());
    for (args, expect) in [
        (vec!["run", "--iface", "nosuch0"], "unknown interface"),
        (vec!["run", "--bogus-flag"], "unexpected argument"),
        (vec!["run", "--iface", "lo"], "loopback interface"),
    ] {
        let mut argv = vec![BIN];
        argv.extend(args.iter());
        let out = run_in(&w, &w.host, &argv);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    run_in(&w, &w.host, &["ip", "link", "set", HOST_IF, "down"]);
    let out = run_in(&w, &w.host, &[BIN, "run", "--iface", HOST_IF]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is down"),
        "{}",
        text(&out.stderr)
    );
}

// ------------------------------------------------------- real links (issue 10)

/// The default world is the one users have: 4 RX queues on the stack's link, default
/// offloads on every veth (the router sends CHECKSUM_PARTIAL frames).
#[test]
fn default_link_has_four_queues_and_partial_checksums_are_accepted() {
    let w = web_world();
    let queues = run_in(&w, &w.host, &["ls", "/sys/class/net/veth0/queues"]);
    assert_eq!(
        text(&queues.stdout).matches("rx-").count(),
        4,
        "{}",
        text(&queues.stdout)
    );
    let offloads = text(&run_in(&w, &w.router, &["ethtool", "-k", "r0"]).stdout);
    assert!(
        offloads.contains("tx-checksumming: on"),
        "router keeps TX checksum offload: {offloads}"
    );
    let out = curl(&w, &["-sS", "--stats", "http://example.com/"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), world::INDEX_HTML);
    let lines: Vec<String> = text(&out.stderr).lines().map(String::from).collect();
    assert!(
        stat(&lines, "rx_partial_checksum").unwrap() > 0,
        "{lines:?}"
    );
    assert_eq!(stat(&lines, "drop_bad_tcp_checksum"), Some(0), "{lines:?}");
    assert_eq!(stat(&lines, "no_socket"), Some(0), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("sockets on queues [0, 1, 2, 3] of 4")),
        "{lines:?}"
    );
}

#[test]
fn single_queue_flag_is_refused_on_a_multi_queue_link_and_allowed_on_one_queue() {
    let w = web_world();
    let out = curl(&w, &["-sS", "--queue", "1", "http://example.com/"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("4 RX queues") && err.contains("leave out --queue"),
        "{err}"
    );
    drop(w);
    let single = world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        queues: Some(1),
        ..Default::default()
    });
    let out = curl(&single, &["-sS", "--queue", "0", "http://example.com/"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), world::INDEX_HTML);
}

#[test]
fn a_second_instance_is_told_which_process_holds_the_interface() {
    let w = web_world();
    let root = www(&w);
    let serve = start_serve(&w, &["--iface", HOST_IF, "--root", &root]);
    let pid = serve.child.id();
    let out = curl(&w, &["-sS", "http://example.com/"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    // `ip netns exec` runs the binary as its child: the holder is that child's pid.
    assert!(
        err.contains("already in use by process") && err.contains("(userspace)"),
        "{err}"
    );
    assert!(!err.contains("os error"), "{err}");
    // The server was not disturbed.
    let page = run_in(
        &w,
        &w.server,
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{SERVE_URL}/index.html"),
        ],
    );
    assert_eq!(text(&page.stdout), "200", "{}", text(&page.stderr));
    let (status, _) = serve.stop("-INT");
    assert!(status.success());
    let _ = pid;
    // Once it is gone, the interface is free again.
    let out = curl(&w, &["-sS", "http://example.com/"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A queue that appears after start-up (here: channels raised with ethtool) has no
/// socket. The stack's packets on it are dropped, not passed to the kernel (which would
/// answer with a RST), and the user is told which queue and what to do.
#[test]
fn packets_on_a_queue_without_a_socket_are_dropped_and_reported() {
    let w = world(WorldOptions {
        nginx: true,
        ..Default::default()
    });
    run_in(
        &w,
        &w.host,
        &["ethtool", "-L", HOST_IF, "rx", "1", "tx", "1"],
    );
    let root = www(&w);
    let serve = start_serve(&w, &["--iface", HOST_IF, "--root", &root, "--stats"]);
    let grow = run_in(
        &w,
        &w.host,
        &["ethtool", "-L", HOST_IF, "rx", "4", "tx", "4"],
    );
    assert!(grow.status.success(), "{}", text(&grow.stderr));
    let script = format!(
        "seq 40 | xargs -P 8 -I{{}} curl -s --max-time 1 -o /dev/null -w '%{{http_code}}\\n' {SERVE_URL}/index.html"
    );
    let out = run_in(&w, &w.server, &["sh", "-c", &script]);
    let codes = text(&out.stdout);
    assert!(
        codes.contains("200"),
        "flows on queue 0 are served: {codes}"
    );
    let (_, lines) = serve.stop("-INT");
    let dropped = stat(&lines, "no_socket").unwrap();
    assert!(dropped > 0, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("which has no AF_XDP socket")
                && l.contains("RX queue")
                && l.contains("restart the stack")),
        "{lines:?}"
    );
    // Dropped, not refused: no RST from the kernel reached a client.
    assert!(
        !text(&out.stderr).contains("refused"),
        "{}",
        text(&out.stderr)
    );
}

/// Shared-IP mode takes next hops from the kernel's neighbour table, which may hold a
/// stale address for a host that went away. Like the kernel's own connect, the stack
/// ends with "host unreachable" (curl's exit 7) once the kernel fails to confirm the
/// neighbour, not with a timeout (28) after 30 s. IPv6 literals are refused plainly.
#[test]
fn shared_ip_unreachable_hosts_and_ipv6_literal_fail_with_exit_7() {
    let w = world(WorldOptions::default());
    run_in(
        &w,
        &w.host,
        &[
            "ip",
            "neigh",
            "replace",
            "10.77.1.51",
            "lladdr",
            "02:00:00:00:00:51",
            "dev",
            HOST_IF,
            "nud",
            "stale",
        ],
    );
    let started = std::time::Instant::now();
    let out = curl(&w, &["-sS", "http://10.77.1.51/"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("unreachable"),
        "{}",
        text(&out.stderr)
    );
    assert!(took < Duration::from_secs(25), "took {took:?}");
    // No neighbour entry at all: the ARP timeout (3 s), exit 7.
    let out = curl(&w, &["-sS", "http://10.77.1.52/"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    // Off the link, the router answers with ICMP unreachable (no route; no ARP reply
    // on its far link). In shared-IP mode those reach the stack too (steered when they
    // quote one of its segments), so the connect fails as the kernel's does.
    for (url, within) in [("http://10.77.3.3/", 2), ("http://10.77.2.77/", 10)] {
        let started = std::time::Instant::now();
        let out = curl(&w, &["-sS", url]);
        assert_eq!(out.status.code(), Some(7), "{url}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("unreachable"),
            "{url}: {}",
            text(&out.stderr)
        );
        assert!(started.elapsed() < Duration::from_secs(within), "{url}");
    }
    // The loopback address is not on the link: curl's "couldn't connect".
    let out = curl(&w, &["-sS", "http://[::1]/"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("curl: (7) Failed to connect to ::1 port 80"),
        "{}",
        text(&out.stderr)
    );
}

/// Issue 22 item 2: the interface, the source address and the next hop come from the
/// kernel's route to the destination, not from the default route alone. A host with
/// only a route to the server's subnet, and one whose default gateway is silent while a
/// more specific route goes through the router: our curl fetches the page in every
/// mode, as the kernel's curl does. No route at all: exit 7 with curl's words, at once.
#[test]
fn routes_other_than_the_default_one_are_followed_as_the_kernels_curl_follows_them() {
    use world::HostRoutes;
    let url = format!("http://{SERVER_IP}/");
    let owned = OWNED_IP.to_string();
    for routes in [
        HostRoutes::ServerSubnetOnly,
        HostRoutes::MoreSpecificViaRouter,
    ] {
        let w = world(WorldOptions {
            nginx: true,
            host_routes: routes,
            ..Default::default()
        });
        let kernel = run_in(&w, &w.host, &["curl", "-sS", "--max-time", "10", &url]);
        assert_eq!(
            text(&kernel.stdout),
            world::INDEX_HTML,
            "{routes:?}: the kernel's curl: {}",
            text(&kernel.stderr)
        );
        for mode in [
            vec![],
            vec!["--iface", HOST_IF],
            vec!["--ip", owned.as_str()],
        ] {
            let mut args = mode.clone();
            args.extend(["-sS", "--connect-timeout", "5", url.as_str()]);
            let out = curl(&w, &args);
            assert!(
                out.status.success(),
                "{routes:?} {mode:?}: exit {:?}: {}",
                out.status.code(),
                text(&out.stderr)
            );
            assert_eq!(text(&out.stdout), world::INDEX_HTML, "{routes:?} {mode:?}");
        }
    }
    let w = world(WorldOptions {
        host_routes: HostRoutes::ServerSubnetOnly,
        ..Default::default()
    });
    let nowhere = "http://10.99.0.1/";
    let kernel = run_in(&w, &w.host, &["curl", "-sS", nowhere]);
    assert_eq!(kernel.status.code(), Some(7), "{}", text(&kernel.stderr));
    for mode in [vec![], vec!["--iface", HOST_IF]] {
        let mut args = mode.clone();
        args.extend(["-sS", "--connect-timeout", "5", nowhere]);
        let started = Instant::now();
        let out = curl(&w, &args);
        assert_eq!(
            out.status.code(),
            kernel.status.code(),
            "{mode:?}: {}",
            text(&out.stderr)
        );
        // "curl: (7) Failed to connect to 10.99.0.1 port 80 after 0 ms: Couldn't
        // connect to server", the milliseconds aside.
        let words = |stderr: &[u8]| {
            let line = text(stderr).trim().to_string();
            let (head, tail) = line.split_once(" after ").unwrap_or((&line, ""));
            let tail = tail.split_once(" ms: ").map_or("", |(_, t)| t).to_string();
            (head.to_string(), tail)
        };
        assert_eq!(words(&out.stderr), words(&kernel.stderr), "{mode:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{mode:?}: at once"
        );
    }
}

// ------------------------------------------------------------------ curl (issue 4)

fn curl_ok(w: &World, args: &[&str]) -> String {
    let out = curl(w, args);
    assert!(
        out.status.success(),
        "curl {args:?} exited {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn curl_example_com_100_times_in_each_mode() {
    let w = web_world();
    let owned = OWNED_IP.to_string();
    for mode in [vec![], vec!["--ip", owned.as_str()]] {
        for i in 0..100 {
            let mut args = mode.clone();
            args.extend(["-sS", "--stats", "http://example.com/"]);
            let out = curl(&w, &args);
            assert!(
                out.status.success(),
                "run {i} {mode:?}: exit {:?}: {}",
                out.status.code(),
                text(&out.stderr)
            );
            assert_eq!(text(&out.stdout), world::INDEX_HTML, "run {i} {mode:?}");
            // Every run reuses a 4-tuple nginx may still hold in TIME-WAIT: ISNs and
            // timestamps that grow across runs make the peer accept it at once, with no
            // SYN timeout (a regression once cost half the runs a second).
            let lines: Vec<String> = text(&out.stderr).lines().map(String::from).collect();
            assert_eq!(
                stat(&lines, "timeouts"),
                Some(0),
                "run {i} {mode:?}: {lines:?}"
            );
        }
    }
}

fn download(w: &World, loss: u32) {
    let lines = download_big_file(w, loss, "http://example.com/big.bin");
    if loss == 0 {
        // The router's GSO units (up to 64 KiB) reach the stack whole on the veth, in
        // several frames each (generic XDP, multi-buffer sockets): on average far more
        // than an MTU per segment.
        let size = std::fs::metadata(w.dir.join("www/big.bin")).unwrap().len() as i64;
        let segments = stat(&lines, "segments_in").unwrap();
        assert!(
            segments * 4 * 1500 < size,
            "{segments} segments for {size} bytes: GSO units were split: {lines:?}"
        );
    }
    if loss > 0 {
        assert!(
            stat(&lines, "out_of_order_segments").unwrap() > 0,
            "loss {loss}% exercised reassembly: {lines:?}"
        );
    }
}

#[test]
fn curl_256_mib_download_is_byte_identical_without_and_with_loss() {
    let w = world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        big_file: Some(256 << 20),
        ..Default::default()
    });
    download(&w, 0);
    download(&w, 2);
}

#[test]
fn curl_exit_codes_match_curl() {
    let w = web_world();
    let code = |args: &[&str]| curl(&w, args).status.code();
    assert_eq!(code(&["http://exa mple.com:99999/"]), Some(3), "bad URL");
    assert_eq!(
        code(&["http://nosuchhost.invalid/"]),
        Some(6),
        "cannot resolve"
    );
    assert_eq!(
        code(&[&format!("http://{SERVER_IP}:81/")]),
        Some(7),
        "connection refused"
    );
    assert_eq!(
        code(&["-f", "http://example.com/missing"]),
        Some(22),
        "HTTP error with -f"
    );
    assert_eq!(
        code(&["http://example.com/missing"]),
        Some(0),
        "HTTP error without -f"
    );
    // A server that accepts and never answers: --max-time.
    let silent = w.spawn(&w.server, &["python3", "-c", "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',8081))\ns.listen()\nc=s.accept()\ntime.sleep(60)"]).unwrap();
    // A server that sends half a response and resets the connection.
    let reset = w.spawn(&w.server, &["python3", "-c", "import socket,struct,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',8082))\ns.listen()\nc,_=s.accept()\nc.recv(1000)\nc.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 100000\\r\\n\\r\\n'+b'x'*1000)\ntime.sleep(0.3)\nc.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0))\nc.close()\ntime.sleep(5)"]).unwrap();
    for port in [8081, 8082] {
        w.wait_for_port(&w.server, SERVER_IP, port, false).unwrap();
    }
    assert_eq!(
        code(&["--max-time", "1", &format!("http://{SERVER_IP}:8081/")]),
        Some(28),
        "timeout"
    );
    assert_eq!(
        code(&[&format!("http://{SERVER_IP}:8082/")]),
        Some(56),
        "receive failure"
    );
    drop((silent, reset));
    // Nobody answers ARP for the next hop: exit 7 with a clear message (owned-IP mode,
    // next hop on-link and absent).
    let out = curl(
        &w,
        &[
            "--ip",
            &OWNED_IP.to_string(),
            "--gateway",
            "10.77.1.99",
            "--connect-timeout",
            "3",
            "http://example.com/",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no ARP reply"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn stack_client_exchanges_data_both_ways_with_0_and_5_percent_loss() {
    let mut w = world(WorldOptions::default());
    let echo = w
        .spawn(
            &w.server,
            &["socat", "TCP-LISTEN:7000,reuseaddr,fork", "PIPE"],
        )
        .unwrap();
    w.adopt(echo); // killed and reaped at teardown
    w.wait_for_port(&w.server, SERVER_IP, 7000, false).unwrap();
    for loss in [0, 5] {
        w.set_loss(loss).unwrap();
        // 100 rounds of 32 KiB out and the same 32 KiB back, each checked byte for byte.
        let out = run_in(
            &w,
            &w.host,
            &[
                BIN,
                "bench",
                "rr",
                &format!("{SERVER_IP}:7000"),
                "--count",
                "100",
                "--size",
                "32768",
            ],
        );
        assert!(out.status.success(), "{loss}% loss: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("\"count\":100"),
            "{}",
            text(&out.stdout)
        );
    }
    w.set_loss(0).unwrap();
}

#[test]
fn icmp_port_unreachable_aborts_a_connect() {
    let w = world(WorldOptions::default());
    w.reject_with_icmp(81).unwrap();
    // Owned-IP mode steers ICMP to the stack; the SYN is answered by an ICMP error.
    let out = curl(
        &w,
        &[
            "--ip",
            &OWNED_IP.to_string(),
            "--connect-timeout",
            "20",
            "--stats",
            &format!("http://{SERVER_IP}:81/"),
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("destination unreachable"), "{err}");
    let lines: Vec<String> = err.lines().map(String::from).collect();
    assert!(stat(&lines, "icmp_unreachable").unwrap() >= 1, "{lines:?}");
    assert_eq!(
        stat(&lines, "timeouts"),
        Some(0),
        "aborted by the ICMP error, not by the SYN timer: {lines:?}"
    );
}

#[test]
fn curl_https_with_test_ca_system_roots_and_insecure() {
    let w = world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        tls: true,
        ..Default::default()
    });
    let ca = w.dir.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let out = curl(&w, &["-v", "--cacert", ca, "https://example.com/"]);
    assert!(
        out.status.success(),
        "https with --cacert: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), world::INDEX_HTML);
    assert!(
        text(&out.stderr).contains("SSL connection using TLSv1_"),
        "{}",
        text(&out.stderr)
    );
    // The system roots do not know the test CA: curl's exit code 60.
    assert_eq!(curl(&w, &["https://example.com/"]).status.code(), Some(60));
    // -k skips verification.
    assert_eq!(
        text(&curl(&w, &["-k", "https://example.com/"]).stdout),
        world::INDEX_HTML
    );
    // A 4 MiB body over TLS arrives intact.
    world::write_random_file(&w.dir.join("www/tls.bin"), 4 << 20).unwrap();
    let got = w.dir.join("tls-got.bin");
    let out = curl(
        &w,
        &[
            "-sS",
            "--cacert",
            ca,
            "-o",
            got.to_str().unwrap(),
            "https://example.com/tls.bin",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&got), sha256(&w.dir.join("www/tls.bin")));
    // A missing CA file: curl's exit code 77.
    assert_eq!(
        curl(
            &w,
            &["--cacert", "/nonexistent.pem", "https://example.com/"]
        )
        .status
        .code(),
        Some(77)
    );
}

#[test]
fn curl_verbose_head_include_redirect_and_pcap() {
    let w = web_world();
    let out = curl(&w, &["-v", "http://example.com/"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("* Connected to example.com (10.77.2.2) port 80"),
        "{err}"
    );
    assert!(
        err.contains("> GET / HTTP/1.1") && err.contains("> Host: example.com"),
        "{err}"
    );
    assert!(err.contains("< HTTP/1.1 200 OK"), "{err}");
    let head = curl_ok(&w, &["-I", "http://example.com/"]);
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && !head.contains("<html>"),
        "{head}"
    );
    let inc = curl_ok(&w, &["-i", "http://example.com/"]);
    assert!(
        inc.starts_with("HTTP/1.1 200") && inc.contains("Example Domain"),
        "{inc}"
    );
    assert_eq!(
        curl_ok(&w, &["-L", "http://example.com/redirect"]),
        world::INDEX_HTML
    );
    assert_eq!(
        curl(&w, &["-L", "--max-redirs", "3", "http://example.com/loop"])
            .status
            .code(),
        Some(47)
    );
    let pcap = w.dir.join("capture.pcap");
    curl_ok(
        &w,
        &["--pcap", pcap.to_str().unwrap(), "http://example.com/"],
    );
    let out = std::process::Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-Y",
            "tcp",
            "-T",
            "fields",
            "-e",
            "tcp.flags.str",
        ])
        .output()
        .unwrap();
    let flags = text(&out.stdout);
    assert!(
        flags.contains("S·") || flags.contains("·S"),
        "SYN in capture: {flags} {}",
        text(&out.stderr)
    );
    let matching = |filter: &str| {
        let out = std::process::Command::new("tshark")
            .args(["-r", pcap.to_str().unwrap(), "-Y", filter])
            .output()
            .unwrap();
        text(&out.stdout).trim().to_string()
    };
    assert!(
        !matching("tcp.flags.syn==1 && tcp.flags.ack==1").is_empty(),
        "SYN-ACK in capture"
    );
    assert!(
        !matching("http.response.code==200").is_empty(),
        "tshark decodes the HTTP response"
    );
}

// ------------------------------------------------------------------ serve (issue 5) and
// kernel clients against the stack's listener (issue 3)

const SERVE_URL: &str = "http://10.77.1.2:8080";

fn www(w: &World) -> String {
    w.dir.join("www").display().to_string()
}

#[test]
fn serve_1000_parallel_kernel_curls_get_identical_bodies() {
    let w = world(WorldOptions::default());
    world::write_random_file(&w.dir.join("www/f.bin"), 200_000).unwrap();
    let expected = sha256(&w.dir.join("www/f.bin"));
    let root = www(&w);
    let serve = start_serve(&w, &["--iface", HOST_IF, "--root", &root, "--stats"]);
    let script = format!(
        "seq 1000 | xargs -P 1000 -I{{}} sh -c 'curl -sS --max-time 60 {SERVE_URL}/f.bin | sha256sum'"
    );
    let out = run_in(&w, &w.server, &["sh", "-c", &script]);
    let sums = text(&out.stdout);
    let good = sums.lines().filter(|l| l.starts_with(&expected)).count();
    assert_eq!(
        good,
        1000,
        "identical bodies; stderr: {}",
        text(&out.stderr)
    );
    let (status, lines) = serve.stop("-TERM");
    assert!(status.success(), "{lines:?}");
}

#[test]
fn serve_under_wrk_has_no_errors() {
    let w = world(WorldOptions::default());
    let root = www(&w);
    let serve = start_serve(&w, &["--iface", HOST_IF, "--root", &root]);
    let out = run_in(
        &w,
        &w.server,
        &[
            "wrk",
            "-t2",
            "-c100",
            "-d10s",
            &format!("{SERVE_URL}/index.html"),
        ],
    );
    let report = text(&out.stdout);
    eprintln!("{report}");
    assert!(out.status.success(), "{report}");
    assert!(report.contains("Requests/sec"), "{report}");
    assert!(!report.contains("Socket errors"), "{report}");
    assert!(!report.contains("Non-2xx"), "{report}");
    serve.stop("-INT");
}

#[test]
fn serve_http_errors_and_keep_alive() {
    let w = world(WorldOptions::default());
    let root = www(&w);
    let serve = start_serve(&w, &["--iface", HOST_IF, "--root", &root]);
    let status = |args: &[&str]| {
        let mut argv = vec![
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ];
        argv.extend_from_slice(args);
        text(&run_in(&w, &w.server, &argv).stdout)
    };
    assert_eq!(status(&[&format!("{SERVE_URL}/")]), "200");
    assert_eq!(status(&[&format!("{SERVE_URL}/nope")]), "404");
    assert_eq!(
        status(&["--path-as-is", &format!("{SERVE_URL}/../../etc/passwd")]),
        "403"
    );
    assert_eq!(status(&["-X", "DELETE", &format!("{SERVE_URL}/")]), "405");
    assert_eq!(
        status(&[
            "-H",
            &format!("X-Big: {}", "a".repeat(20_000)),
            &format!("{SERVE_URL}/")
        ]),
        "431"
    );
    assert_eq!(status(&["-I", &format!("{SERVE_URL}/")]), "200");
    // Keep-alive and pipelining: three requests in one write, three responses in order.
    let script = format!(
        "import socket\ns=socket.create_connection(('{HOST_IP}',8080))\nr=b'GET /index.html HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'\ns.sendall(r*3)\nd=b''\ns.settimeout(5)\nwhile d.count(b'Example Domain')<3:\n  c=s.recv(65536)\n  if not c: break\n  d+=c\nprint(d.count(b'HTTP/1.1 200 OK'))"
    );
    assert_eq!(text(&python(&w, &w.server, &script).stdout).trim(), "3");
    let garbage = format!(
        "import socket\ns=socket.create_connection(('{HOST_IP}',8080))\ns.sendall(b'\\x00\\x01 garbage\\r\\n\\r\\n')\ns.settimeout(5)\nprint(s.recv(100).split(b'\\r\\n')[0].decode())"
    );
    assert_eq!(
        text(&python(&w, &w.server, &garbage).stdout).trim(),
        "HTTP/1.1 400 Bad Request"
    );
    serve.stop("-INT");
}

#[test]
fn echo_returns_every_byte_for_1000_concurrent_clients() {
    let w = world(WorldOptions::default());
    let serve = start_serve(&w, &["--iface", HOST_IF, "--echo", "--port", "8080"]);
    let script = format!(
        r#"
import asyncio, os, resource
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def client(i):
    data = os.urandom(20000 + i)
    r, w = await asyncio.open_connection('{HOST_IP}', 8080)
    w.write(data); await w.drain()
    got = await asyncio.wait_for(r.readexactly(len(data)), 60)
    w.close()
    return got == data
async def main():
    res = await asyncio.gather(*[client(i) for i in range(1000)])
    print(sum(res))
asyncio.run(main())
"#
    );
    let out = python(&w, &w.server, &script);
    assert_eq!(text(&out.stdout).trim(), "1000", "{}", text(&out.stderr));
    serve.stop("-INT");
}

#[test]
fn serve_holds_10000_connections_and_bounds_memory() {
    let w = world(WorldOptions::default());
    let root = www(&w);
    let serve = start_serve(
        &w,
        &[
            "--iface", HOST_IF, "--root", &root, "--buffer", "65536", "--stats",
        ],
    );
    let pid = serve.child.id();
    // `ip netns exec` runs the binary as a child: measure the stack process itself.
    let stack_pid = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|c| c.split_whitespace().next()?.parse().ok())
        .unwrap_or(pid);
    let before = rss_kib(stack_pid);
    let script = format!(
        r#"
import socket, resource, time, sys
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for i in range(10000):
    s = socket.socket(); s.setblocking(False)
    s.connect_ex(('{HOST_IP}', 8080)); socks.append(s)
    if i % 500 == 499: time.sleep(0.05)
time.sleep(3)
ok = 0
for s in socks:
    try:
        s.getpeername(); ok += 1
    except OSError:
        pass
print(ok, flush=True)
sys.stdin.readline()
"#
    );
    let mut holder = w
        .exec(&w.server)
        .args(["python3", "-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(
        first_stdout_line(&mut holder),
        "10000",
        "all connections established"
    );
    let during = rss_kib(stack_pid);
    let per_conn = (during.saturating_sub(before)) * 1024 / 10_000;
    eprintln!(
        "memory: {before} KiB idle, {during} KiB with 10000 connections: {per_conn} bytes per idle connection"
    );
    assert!(
        per_conn < 32 * 1024,
        "idle connection costs {per_conn} bytes"
    );
    // The server still answers while holding them.
    let out = run_in(
        &w,
        &w.server,
        &[
            "curl",
            "-sS",
            "--max-time",
            "10",
            &format!("{SERVE_URL}/index.html"),
        ],
    );
    assert!(text(&out.stdout).contains("Example Domain"));
    drop(holder.stdin.take());
    let _ = holder.wait();
    serve.stop("-INT");
}

#[test]
fn legitimate_clients_connect_during_a_syn_flood() {
    let w = world(WorldOptions::default());
    let root = www(&w);
    let serve = start_serve(
        &w,
        &[
            "--iface",
            HOST_IF,
            "--root",
            &root,
            "--syn-backlog",
            "64",
            "--stats",
        ],
    );
    // Spoofed SYNs from random sources that never answer, from the server namespace.
    let flood = format!(
        r#"
import socket, struct, random, time
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b)//2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
dst = socket.inet_aton('{HOST_IP}')
end = time.time() + 6
n = 0
while time.time() < end:
    src = bytes([10, 99, random.randrange(256), random.randrange(1, 255)])
    tcp = struct.pack('!HHIIBBHHH', random.randrange(1024, 65535), 8080, random.getrandbits(32), 0, 5 << 4, 2, 65535, 0, 0)
    tcp = tcp[:16] + struct.pack('!H', csum(src + dst + struct.pack('!BBH', 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 40, 0, 0, 64, 6, 0, src, dst)
    s.sendto(ip + tcp, ('{HOST_IP}', 0))
    n += 1
print(n)
"#
    );
    let flooder = w.spawn(&w.server, &["python3", "-c", &flood]).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let script = format!(
        "seq 200 | xargs -P 20 -I{{}} curl -sS --max-time 20 -o /dev/null -w '%{{http_code}}\\n' {SERVE_URL}/index.html"
    );
    let out = run_in(&w, &w.server, &["sh", "-c", &script]);
    let ok = text(&out.stdout).lines().filter(|l| *l == "200").count();
    assert_eq!(
        ok,
        200,
        "legitimate requests during the flood: {}",
        text(&out.stderr)
    );
    drop(flooder);
    let (_, lines) = serve.stop("-INT");
    assert!(stat(&lines, "syn_cookies_sent").unwrap() > 0, "{lines:?}");
}

/// Stops serve with `signal`: it exits 0 and said one connection was open.
fn stop_with_one_connection_open(serve: RunningStack, signal: &str) {
    let (status, lines) = serve.stop(signal);
    assert!(status.success(), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("shutting down: 1 connections open")),
        "{lines:?}"
    );
}

#[test]
fn graceful_shutdown_finishes_the_response_in_flight() {
    let w = world(WorldOptions {
        big_file: Some(32 << 20),
        ..Default::default()
    });
    let root = www(&w);
    let serve = start_serve(&w, &["--iface", HOST_IF, "--root", &root, "--grace", "20"]);
    let out_file = w.dir.join("got.bin");
    let download = w
        .exec(&w.server)
        .args([
            "curl",
            "-sS",
            "--limit-rate",
            "10M",
            "--max-time",
            "60",
            "-o",
            out_file.to_str().unwrap(),
            &format!("{SERVE_URL}/big.bin"),
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    stop_with_one_connection_open(serve, "-TERM");
    let mut download = download;
    assert!(wait_timeout(&mut download, Duration::from_secs(30)).success());
    assert_eq!(sha256(&out_file), sha256(&w.dir.join("www/big.bin")));
    assert!(!xdp_attached(&w));
    // New connections after shutdown go to the kernel again (nothing listens: refused).
    let refused = python(
        &w,
        &w.server,
        &format!(
            "import socket\ntry:\n  socket.create_connection(('{HOST_IP}',8080),timeout=3)\n  print('connected')\nexcept ConnectionRefusedError:\n  print('refused')"
        ),
    );
    assert_eq!(text(&refused.stdout).trim(), "refused");
}

/// Issue 23: nginx's timeouts (short values here): a client that sends no head, half a
/// head, half a body, reads no response, or idles after a response is closed, and
/// each is counted in `--stats`.
#[test]
fn serve_closes_stalled_and_idle_clients_after_its_timeouts() {
    let w = world(WorldOptions {
        big_file: Some(32 << 20),
        ..Default::default()
    });
    let root = www(&w);
    let serve = start_serve(
        &w,
        &[
            "--iface",
            HOST_IF,
            "--root",
            &root,
            "--stats",
            "--header-timeout",
            "1",
            "--body-timeout",
            "1.5",
            "--send-timeout",
            "2",
            "--keepalive-timeout",
            "2.5",
        ],
    );
    // Each client says how its connection ended: "closed" (FIN), "reset", or "open"
    // (nothing within 30 s).
    let script = format!(
        r#"
import socket, threading
def ended(s):
    s.settimeout(30)
    try:
        while s.recv(65536): pass
        return "closed"
    except ConnectionResetError: return "reset"
    except socket.timeout: return "open"
def client(name, send, read_first=False, rcvbuf=None):
    s = socket.socket()
    if rcvbuf: s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(('{HOST_IP}', 8080))
    s.sendall(send)
    if read_first:
        s.settimeout(10)
        got = b''
        while b'Example Domain' not in got: got += s.recv(65536)
    results[name] = ended(s)
results = {{}}
clients = [
    ("silent", b""),
    ("half_head", b"GET / HTTP/1.1\r\nHost: x\r\n"),
    ("half_body", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"),
    ("keepalive", b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", True),
]
threads = [threading.Thread(target=client, args=c) for c in clients]
for t in threads: t.start()
# A client that asks for 32 MiB and reads nothing: the send stalls.
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(('{HOST_IP}', 8080))
s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
import time
time.sleep(6)
results["stalled_send"] = ended(s)
for t in threads: t.join()
print(" ".join(f"{{k}}={{results[k]}}" for k in sorted(results)))
"#
    );
    let out = python(&w, &w.server, &script);
    assert_eq!(
        text(&out.stdout).trim(),
        "half_body=closed half_head=closed keepalive=closed silent=closed stalled_send=reset",
        "{}",
        text(&out.stderr)
    );
    let (status, lines) = serve.stop("-INT");
    assert!(status.success(), "{lines:?}");
    assert_eq!(stat(&lines, "header_timeouts"), Some(2), "{lines:?}");
    assert_eq!(stat(&lines, "body_timeouts"), Some(1), "{lines:?}");
    assert_eq!(stat(&lines, "send_timeouts"), Some(1), "{lines:?}");
    assert_eq!(stat(&lines, "keepalive_timeouts"), Some(1), "{lines:?}");
}

/// Issue 23: SIGINT with a stalled client (half a request head, then silence: its
/// connection never finishes closing) ends within `--grace`, not twice it (`stop`
/// gives the process 10 s; before, `--grace 6` took 12 s).
#[test]
fn serve_shutdown_with_a_stalled_client_ends_within_the_grace() {
    let w = world(WorldOptions::default());
    let root = www(&w);
    let serve = start_serve(&w, &["--iface", HOST_IF, "--root", &root, "--grace", "6"]);
    let stalled = w
        .spawn(
            &w.server,
            &[
                "python3",
                "-c",
                &format!(
                    "import socket,time\ns=socket.socket()\ns.connect(('{HOST_IP}',8080))\ns.sendall(b'GET /index.html HTTP/1.1\\r\\n')\ntime.sleep(60)"
                ),
            ],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    stop_with_one_connection_open(serve, "-INT");
    let mut stalled = stalled;
    let _ = stalled.kill();
    let _ = stalled.wait();
}

#[test]
fn kernel_clients_transfer_both_ways_with_0_and_5_percent_loss() {
    let w = world(WorldOptions {
        big_file: Some(8 << 20),
        ..Default::default()
    });
    let root = www(&w);
    let expected = sha256(&w.dir.join("www/big.bin"));
    // The stack sends: a kernel curl downloads from `serve`.
    let serve = start_serve(&w, &["--iface", HOST_IF, "--root", &root, "--stats"]);
    for loss in [0, 5] {
        w.set_loss(loss).unwrap();
        let out = run_in(
            &w,
            &w.server,
            &[
                "sh",
                "-c",
                &format!("curl -sS --max-time 120 {SERVE_URL}/big.bin | sha256sum"),
            ],
        );
        assert!(
            text(&out.stdout).starts_with(&expected),
            "download with {loss}% loss: {}",
            text(&out.stderr)
        );
    }
    w.set_loss(0).unwrap();
    let (_, lines) = serve.stop("-INT");
    assert!(
        stat(&lines, "retransmits").unwrap() > 0,
        "loss was recovered by retransmission: {lines:?}"
    );
    // The stack receives and sends: a kernel client streams 4 MiB through `serve --echo`.
    let echo = start_serve(
        &w,
        &["--iface", HOST_IF, "--echo", "--port", "8080", "--stats"],
    );
    let script = format!(
        "import socket,hashlib,threading\ndata=open('{}','rb').read()[:4<<20]\ns=socket.create_connection(('{HOST_IP}',8080))\nt=threading.Thread(target=lambda:(s.sendall(data),s.shutdown(socket.SHUT_WR)))\nt.start()\ngot=bytearray()\nwhile True:\n  c=s.recv(1<<16)\n  if not c: break\n  got+=c\nprint(hashlib.sha256(got).hexdigest()==hashlib.sha256(data).hexdigest(), len(got))",
        w.dir.join("www/big.bin").display()
    );
    for loss in [0, 5] {
        w.set_loss(loss).unwrap();
        let out = python(&w, &w.server, &script);
        assert_eq!(
            text(&out.stdout).trim(),
            format!("True {}", 4 << 20),
            "echo with {loss}% loss: {}",
            text(&out.stderr)
        );
    }
    w.set_loss(0).unwrap();
    let (_, lines) = echo.stop("-INT");
    assert!(
        stat(&lines, "out_of_order_segments").unwrap() > 0,
        "reassembly was exercised: {lines:?}"
    );
}

// ------------------------------------------------------------------ start-up (issue 10, item 4)

/// `userspace --log debug curl ARGS` in the host namespace, with `env` set.
fn curl_logged(w: &World, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut c = w.exec(&w.host);
    c.args([BIN, "--log", "debug", "curl"]).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(std::process::Stdio::null()).output().unwrap()
}

/// Whether a holder process is alive (not counting one that exited and awaits its reaping).
fn holder_running(w: &World) -> bool {
    let out = run_in(w, &w.host, &["ps", "-eo", "stat=,comm="]);
    text(&out.stdout).lines().any(|l| {
        let mut it = l.split_whitespace();
        let (stat, comm) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        comm == "userspace-xdp" && !stat.starts_with('Z')
    })
}

#[test]
fn back_to_back_curls_attach_once_and_the_holder_detaches_after_its_linger() {
    let w = web_world();
    let url = "http://example.com/";
    let first = curl_logged(&w, &[], &["-sS", url]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(text(&first.stdout), world::INDEX_HTML);
    assert!(text(&first.stderr).contains("XDP program attached"));
    // The program stays attached for the next run, held by a small process; with no
    // curl running, steering is off and the kernel gets every packet.
    assert!(xdp_attached(&w) && holder_running(&w));
    let kernel = run_in(
        &w,
        &w.host,
        &["curl", "-sS", "--max-time", "5", "http://example.com/"],
    );
    assert_eq!(
        text(&kernel.stdout),
        world::INDEX_HTML,
        "{}",
        text(&kernel.stderr)
    );
    for _ in 0..5 {
        let next = curl_logged(&w, &[], &["-sS", "--stats", url]);
        let err = text(&next.stderr);
        assert!(next.status.success(), "{err}");
        assert_eq!(text(&next.stdout), world::INDEX_HTML);
        assert!(err.contains("lent by its holder"), "{err}");
        assert!(!err.contains("XDP program attached"), "{err}");
        // Counters and frames are this run's: no packet lost, no frame missing.
        let lines: Vec<String> = err.lines().map(String::from).collect();
        assert_eq!(stat(&lines, "no_socket"), Some(0), "{err}");
        assert_eq!(stat(&lines, "missing"), Some(0), "{err}");
        assert_eq!(stat(&lines, "rx_dropped"), Some(0), "{err}");
    }
    // No curl for the linger (1.5 s): the holder detaches and exits.
    assert!(
        xdp_detached_within(&w, Duration::from_secs(5)),
        "the holder left XDP attached"
    );
    let gone = Instant::now() + Duration::from_secs(3);
    while holder_running(&w) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!holder_running(&w), "the holder did not exit");
    // Without a linger, XDP goes when the command exits, and a lingering holder is
    // asked to leave first.
    let held = curl_logged(&w, &[], &["-sS", url]);
    assert!(held.status.success());
    let now = curl_logged(&w, &[("USERSPACE_XDP_LINGER_MS", "0")], &["-sS", url]);
    assert!(now.status.success(), "{}", text(&now.stderr));
    assert_eq!(text(&now.stdout), world::INDEX_HTML);
    assert!(!xdp_attached(&w), "--xdp-linger-ms 0 left XDP attached");
    let flag = curl_logged(&w, &[], &["-sS", "--xdp-linger-ms", "0", url]);
    assert!(flag.status.success(), "{}", text(&flag.stderr));
    assert!(!xdp_attached(&w));
}

#[test]
fn a_curl_that_borrows_the_program_is_named_to_a_second_and_cleaned_up_when_killed() {
    let w = world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        http_echo: true,
        ..Default::default()
    });
    let page = format!("http://{SERVER_IP}/index.html");
    let first = curl(&w, &["-sS", &page]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    // A slow download borrows the program from the holder.
    let slow = format!("http://{SERVER_IP}:{}/slow", world::HTTP_ECHO_PORT);
    let mut borrower = w
        .exec(&w.host)
        .args([BIN, "curl", "-s", "-o", "/dev/null", &slow])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let second = curl(&w, &["-sS", &page]);
    assert_eq!(second.status.code(), Some(2));
    let err = text(&second.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "already in use by process {} (userspace)",
            borrower.id()
        )),
        "{err}"
    );
    // Killed: the holder sees its connection close, turns steering off and keeps the
    // sockets; the next curl takes them over as the killed one left them.
    std::process::Command::new("kill")
        .args(["-KILL", &borrower.id().to_string()])
        .status()
        .unwrap();
    wait_timeout(&mut borrower, Duration::from_secs(5));
    for _ in 0..3 {
        let next = curl(&w, &["-sS", &page]);
        assert!(next.status.success(), "{}", text(&next.stderr));
        assert_eq!(text(&next.stdout), world::INDEX_HTML);
    }
    assert!(
        xdp_detached_within(&w, Duration::from_secs(5)),
        "the holder left XDP attached"
    );
}

// ------------------------------------------------------------------ hostile input (issue 7)

#[test]
fn adversarial_segments_during_a_download_change_nothing() {
    let w = world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        big_file: Some(16 << 20),
        ..Default::default()
    });
    let mac = text(
        &run_in(
            &w,
            &w.host,
            &["cat", &format!("/sys/class/net/{HOST_IF}/address")],
        )
        .stdout,
    )
    .trim()
    .replace(':', "");
    // Pace the download (TBF on the router's link to the host) so that the attacker's
    // in-window guesses are still in the window when they land.
    let tbf = run_in(
        &w,
        &w.router,
        &[
            "tc", "qdisc", "add", "dev", "r0", "root", "tbf", "rate", "50mbit", "burst", "64kb",
            "latency", "20ms",
        ],
    );
    assert!(tbf.status.success(), "{}", text(&tbf.stderr));
    // An on-path attacker on the router: it watches one data segment of the stack's
    // download to learn the port and sequence numbers, then injects crafted frames.
    let attacker = format!(
        r#"
import socket, struct, time
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b)//2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
ETH_P_ALL = 3
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
s.bind(('r0', 0))
s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS: no waiting behind the TBF queue
dst = bytes.fromhex('{mac}')
src = s.getsockname()[4]
sip = socket.inet_aton('{SERVER_IP}'); dip = socket.inet_aton('{HOST_IP}')
def sniff():
    # Forget what queued up since the last round: the guesses need fresh numbers.
    s.setblocking(False)
    try:
        while True: s.recv(65535)
    except BlockingIOError:
        pass
    s.setblocking(True)
    while True:
        f, addr = s.recvfrom(65535)
        if addr[2] != socket.PACKET_OUTGOING or len(f) < 54 or f[12:14] != b'\x08\x00' or f[23] != 6: continue
        ihl = (f[14] & 15) * 4
        t = f[14+ihl:]
        if f[26:30] != sip or struct.unpack('!H', t[0:2])[0] != 80: continue
        total = struct.unpack('!H', f[16:18])[0]
        if total - ihl - (t[12] >> 4) * 4 < 1000: continue
        return struct.unpack('!H', t[2:4])[0], struct.unpack('!II', t[4:12])
def acked(dport):
    # The stack's own latest ACK on the wire: everything below it has been received.
    while True:
        f, addr = s.recvfrom(65535)
        if addr[2] == socket.PACKET_OUTGOING or len(f) < 54 or f[12:14] != b'\x08\x00' or f[23] != 6: continue
        ihl = (f[14] & 15) * 4
        t = f[14+ihl:]
        if f[26:30] != dip or struct.unpack('!H', t[0:2])[0] != dport or not (t[13] & 0x10): continue
        return struct.unpack('!I', t[8:12])[0]
def frame(seq, ack, flags, payload=b'', good_ip=True, good_tcp=True, frag=0x4000, opts=b''):
    off = (20 + len(opts)) // 4
    tcp = struct.pack('!HHIIBBHHH', 80, dport, seq & 0xffffffff, ack & 0xffffffff, off << 4, flags, 65535, 0, 0) + opts + payload
    if good_tcp:
        ph = sip + dip + struct.pack('!BBH', 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack('!H', csum(ph + tcp)) + tcp[18:]
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 7, frag, 64, 6, 0, sip, dip)
    if good_ip: ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    return dst + src + b'\x08\x00' + ip + tcp
ACK, RST, SYN, PSH = 0x10, 0x04, 0x02, 0x08
evil = b'E' * 1448
rounds = 0
for _ in range(3):
    dport, (seq, ack) = sniff()
    received = acked(dport)
    frames = [
        frame(seq + 100_000, 0, RST),                               # blind RST, in window, not exact
        frame(seq + 120_000, 0, SYN),                               # SYN in window
        frame(seq, ack, ACK, evil, good_ip=False),                  # bad IP checksum
        frame(seq, ack, ACK, evil, good_tcp=False),                 # bad TCP checksum
        frame(seq + (1 << 30), 0, RST),                             # RST far out of window
        frame(seq + (1 << 29), ack, ACK, evil),                     # data far outside the window
        frame(received - 2000, ack, ACK, evil),                     # retransmission of acknowledged data, different bytes
        frame(received, ack + 10_000_000, ACK, evil),               # ACK for data never sent, at RCV.NXT
        frame(seq, ack, ACK, evil, frag=0x2000),                    # IP fragment
        frame(seq, ack, ACK, b'', opts=b'\x02\x00\x01\x01'),        # option with a zero length
        frame(seq, ack, ACK | PSH, b'', opts=b'\x08\x0a\x00\x00'),  # timestamp option cut short
    ]
    for f in frames:
        s.send(f)
    rounds += 1
    time.sleep(0.2)
print('injected', len(frames) * rounds, 'port', dport)
"#
    );
    let sniffer = w
        .exec(&w.router)
        .args(["python3", "-c", &attacker])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out_file = w.dir.join("got.bin");
    let out = curl(
        &w,
        &[
            "-sS",
            "-v",
            "--stats",
            "--max-time",
            "120",
            "-o",
            out_file.to_str().unwrap(),
            "http://example.com/big.bin",
        ],
    );
    // `-v` says what the stack dropped for checksums, with the remedy, in one line.
    assert!(
        text(&out.stderr)
            .lines()
            .any(|l| l.starts_with("* ") && l.contains("TCP segment(s) dropped for bad checksums")),
        "{}",
        text(&out.stderr)
    );
    let attack = sniffer.wait_with_output().unwrap();
    assert!(
        text(&attack.stdout).contains("injected 33"),
        "attacker: {} {}",
        text(&attack.stdout),
        text(&attack.stderr)
    );
    assert!(
        out.status.success(),
        "download under attack: {}",
        text(&out.stderr)
    );
    let (got, want) = (
        std::fs::read(&out_file).unwrap(),
        std::fs::read(w.dir.join("www/big.bin")).unwrap(),
    );
    if got != want {
        let at = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        let end = (at + 16).min(got.len());
        panic!(
            "body differs at byte {at} of {} (expected {}): got {:02x?}, attacker said {}; stats: {}",
            got.len(),
            want.len(),
            &got[at..end],
            text(&attack.stdout),
            text(&out.stderr)
        );
    }
    let lines: Vec<String> = text(&out.stderr).lines().map(String::from).collect();
    let n = |name| stat(&lines, name).unwrap_or(-1);
    assert!(n("drop_bad_ip_checksum") >= 3, "{lines:?}");
    assert!(n("drop_bad_tcp_checksum") >= 3, "{lines:?}");
    assert!(n("drop_ip_fragment") >= 3, "{lines:?}");
    assert!(n("drop_malformed") >= 3, "bad option lengths: {lines:?}");
    // RFC 5961 section 7: the in-window RSTs and SYNs, sent within a few ms, draw
    // challenge ACKs under a rate limit (as Linux's tcp_challenge_ack_limit), not one each.
    assert!(
        n("challenge_acks") >= 1,
        "RFC 5961 challenge ACKs for in-window RST and SYN: {lines:?}"
    );
}

#[test]
fn serve_shards_all_four_queues_over_two_stacks() {
    // The default world: 4 RX queues, RSS spreading the clients' flows over them.
    let w = world(WorldOptions::default());
    let root = www(&w);
    let serve = start_serve(&w, &["--iface", HOST_IF, "--root", &root, "--queues", "2"]);
    let out = run_in(
        &w,
        &w.server,
        &[
            "wrk",
            "-t2",
            "-c64",
            "-d3s",
            &format!("{SERVE_URL}/index.html"),
        ],
    );
    let report = text(&out.stdout);
    assert!(
        report.contains("Requests/sec")
            && !report.contains("Socket errors")
            && !report.contains("Non-2xx"),
        "{report}"
    );
    let (status, lines) = serve.stop("-INT");
    assert!(status.success(), "{lines:?}");
    for (stack, queues) in [(0, "[0, 2]"), (1, "[1, 3]")] {
        let served = lines
            .iter()
            .find_map(|l| {
                l.strip_prefix(&format!("stack {stack} (queues {queues}): "))?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        assert!(served > 0, "stack {stack} served no connection: {lines:?}");
    }
    assert!(!xdp_attached(&w));
}

// ------------------------------------------------------------------ issue 21: the send side

/// The server namespace's kernel TCP counters: (TcpInSegs, TcpInCsumErrors).
fn server_tcp_counters(w: &World) -> (i64, i64) {
    let [segs, csum_errors] = nstat(w, &w.server, ["TcpInSegs", "TcpInCsumErrors"]);
    (segs, csum_errors)
}

/// A 64 MiB upload from `bench send` to a kernel server that stores it, with the TCP
/// checksum offloaded through AF_XDP TX metadata (the default on Linux 6.8+) and with
/// the stack's own checksum (`USERSPACE_TX_CHECKSUM=software`). The router's link to the
/// server has no TX checksum offload, so the router's kernel completes each checksum
/// in software from the pseudo-header sum the stack left (csum_start/csum_offset from
/// the metadata), and the server's kernel verifies every segment: a wrong sum, start or
/// offset is a TcpInCsumErrors there and a segment that never arrives.
#[test]
fn upload_with_tx_checksum_offload_arrives_byte_exact_with_no_checksum_errors() {
    let w = world(WorldOptions::default());
    let off = run_in(&w, &w.router, &["ethtool", "-K", "r1", "tx", "off"]);
    assert!(off.status.success(), "{}", text(&off.stderr));
    const BYTES: usize = 64 << 20;
    for (mode, env, says) in [
        (
            "offload",
            "",
            "tcp checksum offloaded through AF_XDP TX metadata",
        ),
        (
            "software",
            "software",
            "tcp checksum software (USERSPACE_TX_CHECKSUM=software)",
        ),
    ] {
        let file = w.dir.join(format!("upload-{mode}.bin"));
        let sink = w
            .spawn(
                &w.server,
                &[
                    "socat",
                    "-u",
                    "TCP-LISTEN:7003,reuseaddr",
                    &format!("CREATE:{}", file.display()),
                ],
            )
            .unwrap();
        w.wait_for_port(&w.server, SERVER_IP, 7003, false).unwrap();
        let before = server_tcp_counters(&w);
        let out = w
            .exec(&w.host)
            .env("USERSPACE_TX_CHECKSUM", env)
            .args([
                BIN,
                "bench",
                "send",
                &format!("{SERVER_IP}:7003"),
                "--bytes",
                &BYTES.to_string(),
                "--stats",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        // socat ends at our FIN, after writing everything (killed if it does not).
        let mut sink = sink;
        let sink_status = wait_timeout(&mut sink, Duration::from_secs(20));
        let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{mode}: {report}");
        assert!(report.contains(says), "{mode}: {report}");
        assert!(sink_status.success(), "{mode}: socat {sink_status}");
        let after = server_tcp_counters(&w);
        assert_eq!(
            after.1 - before.1,
            0,
            "{mode}: TcpInCsumErrors at the server"
        );
        assert!(
            after.0 - before.0 > (BYTES / 1500) as i64,
            "{mode}: the server's TCP took {} segments",
            after.0 - before.0
        );
        let got = std::fs::read(&file).unwrap();
        assert_eq!(got.len(), BYTES, "{mode}: bytes stored");
        for (i, chunk) in got.chunks(256 << 10).enumerate() {
            let first_bad = chunk
                .iter()
                .enumerate()
                .position(|(j, &b)| b != (j % 251) as u8);
            assert_eq!(first_bad, None, "{mode}: chunk {i} differs");
        }
    }
}
