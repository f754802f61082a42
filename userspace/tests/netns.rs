//! Integration tests in network namespaces against real peers (the Linux kernel's TCP,
//! nginx, dnsmasq, ping). They need root; `cargo xtask test` runs them.
mod common;
use common::*;
use std::time::Duration;

fn world(opts: WorldOptions) -> World {
    World::up(&opts).expect("build the namespace world")
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
    std::thread::sleep(Duration::from_millis(300));
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
    // than the 4096 frames of the UMEM, so every frame goes around several times.
    let script = format!(
        "import socket\nn=0\nfor i in range(6000):\n  s=socket.socket()\n  s.settimeout(2)\n  try:\n    s.connect(('{OWNED_IP}',9))\n  except ConnectionRefusedError:\n    n+=1\n  s.close()\nprint(n)"
    );
    let out = python(&w, &w.server, &script);
    assert_eq!(text(&out.stdout).trim(), "6000", "{}", text(&out.stderr));
    let (_, lines) = stack.stop("-INT");
    assert!(stat(&lines, "rx_frames").unwrap() >= 6000, "{lines:?}");
    assert_eq!(stat(&lines, "missing"), Some(0), "{lines:?}");
    let rx_share = stat(&lines, "in_fill_ring").unwrap() + stat(&lines, "awaiting_fill").unwrap();
    assert_eq!(
        rx_share, 2048,
        "every received frame went back to the fill ring: {lines:?}"
    );
    let tx_share = stat(&lines, "free_for_tx").unwrap() + stat(&lines, "in_tx_ring").unwrap();
    assert_eq!(
        tx_share, 2048,
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
    let w = world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        ..Default::default()
    });
    let owned = OWNED_IP.to_string();
    for mode in [vec![], vec!["--ip", owned.as_str()]] {
        for i in 0..100 {
            let mut args = mode.clone();
            args.extend(["-sS", "http://example.com/"]);
            let out = curl(&w, &args);
            assert!(
                out.status.success(),
                "run {i} {mode:?}: exit {:?}: {}",
                out.status.code(),
                text(&out.stderr)
            );
            assert_eq!(text(&out.stdout), world::INDEX_HTML, "run {i} {mode:?}");
        }
    }
}

fn download(w: &World, loss: u32) {
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
            "http://example.com/big.bin",
        ],
    );
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
    let lines: Vec<String> = text(&out.stderr).lines().map(String::from).collect();
    if loss > 0 {
        assert!(
            stat(&lines, "out_of_order_segments").unwrap() > 0,
            "loss {loss}% exercised reassembly: {lines:?}"
        );
    }
    let _ = std::fs::remove_file(out_file);
    w.set_loss(0).unwrap();
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
    let w = world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        ..Default::default()
    });
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
    std::thread::sleep(Duration::from_millis(500));
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
fn curl_verbose_head_include_redirect_and_pcap() {
    let w = world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        ..Default::default()
    });
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
    let syn_ack = std::process::Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-Y",
            "tcp.flags.syn==1 && tcp.flags.ack==1",
        ])
        .output()
        .unwrap();
    assert!(
        !text(&syn_ack.stdout).trim().is_empty(),
        "SYN-ACK in capture"
    );
    let http = std::process::Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-Y",
            "http.response.code==200",
        ])
        .output()
        .unwrap();
    assert!(
        !text(&http.stdout).trim().is_empty(),
        "tshark decodes the HTTP response"
    );
}
