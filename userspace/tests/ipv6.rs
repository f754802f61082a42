//! IPv6 in network namespaces (issue 20): the XDP program's steering next to the
//! kernel's own IPv6, and curl and serve over IPv6 in dual-stack and IPv6-only worlds.
//! Tests marked `needs v6core` need the stack's IPv6 core (wire, TCP, NDP, the library's
//! `SocketAddr::V6`), which lands on its own branch.
mod common;
use common::*;
use world::{Family, HOST_IP6, OWNED_IP6, SERVER_IP6};

fn world(opts: WorldOptions) -> World {
    World::up(&opts).expect("build the namespace world")
}

/// nginx and dnsmasq (A and AAAA for example.com) in a world of `family`.
fn web_world(family: Family) -> World {
    world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        family,
        ..Default::default()
    })
}

/// A kernel TCP listener on [::]:`port` (both families) in `ns`, answering "kernel".
fn kernel_listener(w: &mut World, ns: &str, port: u16) {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\ns.bind(('::',{port}))\ns.listen()\nwhile True:\n  c,_=s.accept()\n  c.sendall(b'kernel')\n  c.close()"
    );
    let child = w.spawn(ns, &["python3", "-c", &script]).unwrap();
    w.adopt(child);
    w.wait_for_port(ns, std::net::Ipv6Addr::UNSPECIFIED, port, false)
        .unwrap();
}

/// Connects from `ns` to [addr]:port with the kernel's TCP: what it read ("kernel"),
/// "refused", or "timeout".
fn kernel_connect(w: &World, ns: &str, addr: &str, port: u16) -> String {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET6)\ns.settimeout(3)\ntry:\n  s.connect(('{addr}',{port}))\n  print(s.recv(16).decode())\nexcept ConnectionRefusedError:\n  print('refused')\nexcept socket.timeout:\n  print('timeout')"
    );
    let out = python(w, ns, &script);
    text(&out.stdout).trim().to_string()
}

/// The kernel's curl fetching `url` from `ns`: the HTTP status and stderr.
fn kernel_http_code(w: &World, ns: &str, url: &str) -> (String, String) {
    let argv = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        url,
    ];
    let out = run_in(w, ns, &argv);
    (text(&out.stdout), text(&out.stderr))
}

// ------------------------------------------------------------------ XDP steering

/// The program attached in shared-address mode takes nothing of the kernel's IPv6:
/// ping, the host's own TCP connections out and a kernel server's connections in all
/// keep working, and the counters say why each went to the kernel.
#[test]
fn xdp_leaves_the_kernels_ipv6_alone_in_a_dual_stack_world() {
    let mut w = web_world(Family::Dual);
    let host = w.host.clone();
    kernel_listener(&mut w, &host, 7777);
    let stack = start_stack(&w, &["--iface", HOST_IF, "--stats"]);
    let server6 = SERVER_IP6.to_string();
    let ping = run_in(
        &w,
        &w.host,
        &["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", &server6],
    );
    assert!(ping.status.success(), "ping -6: {}", text(&ping.stdout));
    let url = format!("http://[{server6}]/");
    let (code, err) = kernel_http_code(&w, &w.host, &url);
    assert_eq!(code, "200", "{err}");
    let by_name = run_in(
        &w,
        &w.host,
        &[
            "curl",
            "-6",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{remote_ip}",
            "--max-time",
            "5",
            "http://example.com/",
        ],
    );
    assert_eq!(text(&by_name.stdout), server6, "{}", text(&by_name.stderr));
    // A client on the server reaches the host's kernel listener over IPv6 and IPv4.
    assert_eq!(
        kernel_connect(&w, &w.server, &HOST_IP6.to_string(), 7777),
        "kernel"
    );
    assert_eq!(
        kernel_connect(&w, &w.server, &format!("::ffff:{HOST_IP}"), 7777),
        "kernel"
    );
    let (status, lines) = stack.stop("-INT");
    assert!(status.success(), "{lines:?}");
    assert_eq!(stat(&lines, "ipv6_steered"), Some(0), "{lines:?}");
    // The kernel curls' and the listener's segments; the echo replies.
    assert!(
        stat(&lines, "ipv6_passed_kernel_port").unwrap() >= 4,
        "{lines:?}"
    );
    assert!(stat(&lines, "ipv6_passed_other").unwrap() >= 3, "{lines:?}");
    // Neighbour solicitations to the solicited-node group, and the like.
    assert!(
        stat(&lines, "ipv6_passed_not_ours").unwrap() >= 1,
        "{lines:?}"
    );
    assert_eq!(stat(&lines, "no_socket"), Some(0), "{lines:?}");
}

/// A port the stack listens on is steered to it over IPv6 as over IPv4: the kernel's
/// listener on the same port never sees the connection.
#[test]
fn xdp_steers_the_stacks_ipv6_listening_port_away_from_the_kernel() {
    let mut w = web_world(Family::Dual);
    let host = w.host.clone();
    kernel_listener(&mut w, &host, 7777);
    let stack = start_stack(&w, &["--iface", HOST_IF, "--steer-port", "7777", "--stats"]);
    let answer = kernel_connect(&w, &w.server, &HOST_IP6.to_string(), 7777);
    // The stack answers a closed port with a RST (refused) once it speaks IPv6; the
    // kernel would have said "kernel".
    assert_ne!(answer, "kernel", "the kernel got the stack's IPv6 port");
    // Another port stays the kernel's.
    let (status, lines) = stack.stop("-INT");
    assert!(status.success(), "{lines:?}");
    assert!(stat(&lines, "ipv6_steered").unwrap() >= 1, "{lines:?}");
}

/// With the IPv6 core: the steered SYN gets the stack's RST (RFC 9293 3.10.7.1).
#[test]
fn stack_refuses_a_closed_ipv6_port_itself() {
    let mut w = web_world(Family::Dual);
    let host = w.host.clone();
    kernel_listener(&mut w, &host, 7777);
    let stack = start_stack(&w, &["--iface", HOST_IF, "--steer-port", "7777", "--stats"]);
    assert_eq!(
        kernel_connect(&w, &w.server, &HOST_IP6.to_string(), 7777),
        "refused"
    );
    let (_, lines) = stack.stop("-INT");
    assert!(stat(&lines, "rst_sent").unwrap() >= 1, "{lines:?}");
}

/// Owned address: the stack answers neighbour solicitations for it (sent to its
/// solicited-node group) and ping.
#[test]
fn owned_ipv6_answers_neighbour_solicitations_and_ping() {
    let w = web_world(Family::Dual);
    let owned = OWNED_IP6.to_string();
    let stack = start_stack(&w, &["--iface", HOST_IF, "--ip", &owned, "--stats"]);
    let out = run_in(
        &w,
        &w.server,
        &["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", &owned],
    );
    assert!(out.status.success(), "ping: {}", text(&out.stdout));
    let neigh = text(&run_in(&w, &w.router, &["ip", "-6", "neigh", "show", &owned]).stdout);
    assert!(
        neigh.contains("lladdr"),
        "router learned the stack's MAC: {neigh}"
    );
    let (_, lines) = stack.stop("-INT");
    assert!(stat(&lines, "ipv6_ndp_steered").unwrap() >= 1, "{lines:?}");
}

// ------------------------------------------------------------------ curl

/// `%{remote_ip}` of a fetch by our curl with `args`, and its exit code.
fn fetch(w: &World, args: &[&str]) -> (Option<i32>, String, String) {
    let mut full = vec![
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{remote_ip}",
        "--max-time",
        "10",
    ];
    full.extend_from_slice(args);
    let out = curl(w, &full);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// curl fetches by AAAA name, by bracketed literal with and without a port, in both
/// address modes, in a dual-stack and an IPv6-only world; Happy Eyeballs prefers IPv6,
/// `-4` and `-6` pick a family.
#[test]
fn curl_fetches_by_aaaa_name_and_literal_in_both_modes_and_worlds() {
    let server6 = SERVER_IP6.to_string();
    let owned = OWNED_IP6.to_string();
    for family in [Family::Dual, Family::Ipv6] {
        let w = web_world(family);
        for mode in [vec![], vec!["--ip", owned.as_str()]] {
            // 100 runs by AAAA name, the first 10 by literal too.
            for run in 0..100 {
                let literals = [
                    format!("http://[{server6}]/"),
                    format!("http://[{server6}]:80/"),
                ];
                let by_name = ["http://example.com/".to_string()];
                let urls = if run < 10 {
                    by_name.iter().chain(literals.iter())
                } else {
                    by_name.iter().chain(literals[..0].iter())
                };
                for url in urls {
                    let mut args = mode.clone();
                    args.push(url);
                    let (code, ip, err) = fetch(&w, &args);
                    assert_eq!(
                        (code, ip.as_str()),
                        (Some(0), server6.as_str()),
                        "{family:?} {mode:?} run {run} {url}: {err}"
                    );
                }
            }
        }
        let (code, ip, err) = fetch(&w, &["-6", "http://example.com/"]);
        assert_eq!((code, ip.as_str()), (Some(0), server6.as_str()), "{err}");
        if family == Family::Dual {
            let (code, ip, err) = fetch(&w, &["-4", "http://example.com/"]);
            assert_eq!((code, ip), (Some(0), SERVER_IP.to_string()), "{err}");
        } else {
            // No A record: curl's "Could not resolve host".
            let (code, _, err) = fetch(&w, &["-4", "http://example.com/"]);
            assert_eq!(code, Some(6), "{err}");
            assert!(err.contains("Could not resolve host: example.com"), "{err}");
        }
    }
}

/// A default route through the router's link-local address (as router advertisements
/// install it): the next hop is found on the route's interface and curl fetches over
/// IPv6 in shared-IP mode.
#[test]
fn curl_through_a_link_local_gateway() {
    let w = web_world(Family::Ipv6);
    let out = run_in(
        &w,
        &w.router,
        &[
            "ip", "-6", "-o", "addr", "show", "dev", "r0", "scope", "link",
        ],
    );
    let text_out = text(&out.stdout);
    let gateway = text_out
        .split_whitespace()
        .find_map(|word| word.split('/').next().filter(|a| a.starts_with("fe80:")))
        .unwrap_or_else(|| panic!("no link-local address on the router: {text_out}"))
        .to_string();
    let replaced = run_in(
        &w,
        &w.host,
        &[
            "ip", "-6", "route", "replace", "default", "via", &gateway, "dev", HOST_IF,
        ],
    );
    assert!(replaced.status.success(), "{}", text(&replaced.stderr));
    let route = run_in(
        &w,
        &w.host,
        &["ip", "-6", "route", "get", &SERVER_IP6.to_string()],
    );
    assert!(
        text(&route.stdout).contains(&gateway),
        "{}",
        text(&route.stdout)
    );
    let (code, ip, err) = fetch(&w, &["http://example.com/"]);
    assert_eq!((code, ip), (Some(0), SERVER_IP6.to_string()), "{err}");
}

/// `-v` names the address tried as curl does, brackets and all.
#[test]
fn curl_verbose_shows_the_ipv6_address_tried() {
    let w = web_world(Family::Dual);
    let url = format!("http://[{SERVER_IP6}]:80/");
    let out = curl(&w, &["-sS", "-v", "-o", "/dev/null", &url]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("*   Trying [{SERVER_IP6}]:80...")),
        "{err}"
    );
    assert!(err.contains(&format!("> Host: [{SERVER_IP6}]")), "{err}");
    // In curl's order: the connect, then the request it sends on it.
    let at = |needle: &str| err.find(needle).unwrap_or(usize::MAX);
    assert!(
        at("*   Trying") < at("* Connected to") && at("* Connected to") < at("> GET / "),
        "{err}"
    );
}

/// A host without an IPv6 route: `-6` gets curl's exit 7 and message, as the kernel's
/// curl does, and without `-6` Happy Eyeballs falls back to IPv4 at once.
#[test]
fn curl_without_an_ipv6_route_fails_as_curl_and_falls_back_to_ipv4() {
    let w = world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        family: Family::Dual,
        no_host_ipv6_route: true,
        ..Default::default()
    });
    let kernel = run_in(&w, &w.host, &["curl", "-6", "-sS", "http://example.com/"]);
    let ours = curl(&w, &["-6", "-sS", "http://example.com/"]);
    assert_eq!(kernel.status.code(), Some(7));
    assert_eq!(ours.status.code(), Some(7), "{}", text(&ours.stderr));
    let message = |out: &std::process::Output| {
        // "curl: (7) Failed to connect to example.com port 80 after N ms: ..."
        let e = text(&out.stderr);
        let (head, tail) = e.split_once(" after ").unwrap_or((&e, ""));
        let tail = tail.split_once(" ms: ").map_or("", |(_, t)| t);
        format!("{head} after _ ms: {tail}")
    };
    assert_eq!(message(&ours), message(&kernel));
    let literal = format!("http://[{SERVER_IP6}]/");
    assert_eq!(curl(&w, &["-sS", &literal]).status.code(), Some(7));
    let t0 = std::time::Instant::now();
    let (code, ip, err) = fetch(&w, &["http://example.com/"]);
    assert_eq!((code, ip), (Some(0), SERVER_IP.to_string()), "{err}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
}

fn download(w: &World, loss: u32, url: &str) {
    let lines = download_big_file(w, loss, url);
    if loss > 0 {
        assert!(
            stat(&lines, "out_of_order_segments").unwrap() > 0,
            "{lines:?}"
        );
    }
    assert!(stat(&lines, "ipv6_steered").unwrap() > 0, "{lines:?}");
}

/// 256 MiB over IPv6, byte-exact, with 0% and 2% loss on the router.
#[test]
fn curl_256_mib_ipv6_download_is_byte_identical_without_and_with_loss() {
    let w = world(WorldOptions {
        nginx: true,
        dnsmasq: true,
        family: Family::Ipv6,
        big_file: Some(256 << 20),
        ..Default::default()
    });
    download(&w, 0, "http://example.com/big.bin");
    download(&w, 2, &format!("http://[{SERVER_IP6}]/big.bin"));
}

// ------------------------------------------------------------------ serve

/// serve listens on both families by default: the kernel's curl reaches it over IPv6
/// and IPv4, and wrk over IPv6 sees no error.
#[test]
fn serve_answers_the_kernels_curl_and_wrk_over_ipv6() {
    let w = world(WorldOptions {
        family: Family::Dual,
        ..Default::default()
    });
    let root = w.dir.join("www").display().to_string();
    let serve = start_serve(&w, &["--iface", HOST_IF, "--root", &root, "--stats"]);
    for url in [
        format!("http://[{HOST_IP6}]:8080/index.html"),
        format!("http://{HOST_IP}:8080/index.html"),
    ] {
        let (code, err) = kernel_http_code(&w, &w.server, &url);
        assert_eq!(code, "200", "{url}: {err}");
    }
    let url = format!("http://[{HOST_IP6}]:8080/index.html");
    let out = run_in(&w, &w.server, &["wrk", "-t2", "-c100", "-d5s", &url]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("Requests/sec"), "{report}");
    assert!(!report.contains("Socket errors"), "{report}");
    assert!(!report.contains("Non-2xx"), "{report}");
    let (status, lines) = serve.stop("-INT");
    assert!(status.success(), "{lines:?}");
}
