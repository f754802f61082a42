//! The test world: three network namespaces made by the test itself, torn down on drop.
//!
//! ```text
//!  host ns                 router ns                      server ns
//!  veth0 10.77.1.2/24 ---- r0 10.77.1.1 | r1 10.77.2.1 ---- veth0 10.77.2.2/24
//!  (the stack; owned IP 10.77.1.100)   (forwarding, nft loss)  (nginx, dnsmasq, peers)
//!  fd00:77:1::2/64         fd00:77:1::1 | fd00:77:2::1        fd00:77:2::2/64
//!  (owned fd00:77:1::100)                 (IPv6: dual-stack and IPv6-only worlds)
//! ```
//! Names carry the process id and a counter, so parallel runs never collide. Only
//! addresses inside these namespaces are ever contacted.
use anyhow::{Context, bail};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const HOST_IF: &str = "veth0";
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
pub const ROUTER_HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
pub const ROUTER_SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
/// The address the stack owns in owned-IP mode.
pub const OWNED_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 100);
pub const HOST_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 1, 0, 0, 0, 0, 2);
pub const ROUTER_HOST_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 1, 0, 0, 0, 0, 1);
pub const ROUTER_SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 2, 0, 0, 0, 0, 1);
pub const SERVER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 2, 0, 0, 0, 0, 2);
/// The IPv6 address the stack owns in owned-IP mode.
pub const OWNED_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 1, 0, 0, 0, 0, 0x100);
/// The server's IPv6 subnet.
pub const SERVER_SUBNET6: &str = "fd00:77:2::/64";
/// Queues of the host link unless a test asks otherwise: a multi-queue NIC, as users have.
pub const DEFAULT_QUEUES: u32 = 4;
/// Programs the world and its tests start, with the Debian package of each.
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("ethtool", "ethtool"),
    ("nginx", "nginx-light"),
    ("dnsmasq", "dnsmasq"),
    ("curl", "curl"),
    ("wrk", "wrk"),
    ("tshark", "tshark"),
    ("python3", "python3"),
    ("ping", "iputils-ping"),
    ("socat", "socat"),
    ("iperf3", "iperf3"),
    ("openssl", "openssl"),
    ("ss", "iproute2"),
    ("script", "bsdutils"),
    ("tinyproxy", "tinyproxy"),
    ("wget", "wget"),
    ("redis-server", "redis-server"),
    ("redis-benchmark", "redis-tools"),
    ("memcached", "memcached"),
    ("nstat", "iproute2"),
    // tests/exec.rs builds small C programs (fork and signal safety).
    ("cc", "gcc"),
];

/// Fails with one line naming the first missing program and its package.
pub fn check_tools() -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (program, package) in TOOLS {
        let found = std::env::split_paths(&path)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|dir| dir.join(program).is_file());
        if !found {
            bail!(
                "the test world needs `{program}` (Debian package {package}): run `cargo xtask install-deps`"
            );
        }
    }
    Ok(())
}

pub const INDEX_HTML: &str = "<!doctype html>\n<html>\n<head><title>Example Domain</title></head>\n<body>\n<h1>Example Domain</h1>\n<p>This domain is for use in illustrative examples in documents, served by nginx inside a network namespace.</p>\n</body>\n</html>\n";

#[derive(Debug, Clone, Default)]
pub struct WorldOptions {
    /// Start nginx serving `www/` on SERVER_IP:80.
    pub nginx: bool,
    /// Start dnsmasq answering example.com with SERVER_IP.
    pub dnsmasq: bool,
    /// Size of `www/big.bin` (random bytes), if any.
    pub big_file: Option<usize>,
    /// RX/TX queues of the host veth. `None` is the realistic default,
    /// [`DEFAULT_QUEUES`] (RSS spreads flows over them, as on a server NIC); `Some(1)` is
    /// the single-queue variant, only for tests that isolate one behaviour.
    pub queues: Option<u32>,
    /// nginx also serves https on SERVER_IP:443 with a certificate for example.com from
    /// a test CA made for this world (`ca.pem` in the world's directory).
    pub tls: bool,
    /// Start a request-echoing HTTP/1.1 server (`echo_server.py`) on
    /// SERVER_IP:HTTP_ECHO_PORT, serving `/file/NAME` from the world's `files/`.
    pub http_echo: bool,
    /// The host's routing table.
    pub host_routes: HostRoutes,
    /// Which IP versions the world speaks.
    pub family: Family,
    /// Dual-stack or IPv6-only: the host has its IPv6 address but no IPv6 route beyond
    /// its link (for the "no route" error).
    pub no_host_ipv6_route: bool,
}

/// The address families of a world. Every IPv6 address is static, with `nodad` (no
/// router advertisements, no duplicate address detection to wait for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only (IPv6 stays as the kernel has it: link-local addresses only).
    #[default]
    Ipv4,
    /// IPv4 and IPv6 everywhere; example.com has an A and an AAAA record.
    Dual,
    /// IPv6 only: no IPv4 address in any namespace; example.com has only an AAAA record.
    Ipv6,
}

impl Family {
    pub fn has_ipv4(self) -> bool {
        self != Family::Ipv6
    }
    pub fn has_ipv6(self) -> bool {
        self != Family::Ipv4
    }
    /// `ipv4`, `dual` or `ipv6`.
    pub fn from_name(name: &str) -> Option<Family> {
        match name {
            "ipv4" => Some(Family::Ipv4),
            "dual" => Some(Family::Dual),
            "ipv6" => Some(Family::Ipv6),
            _ => None,
        }
    }
}

/// The routes of the host namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HostRoutes {
    /// A default route via the router.
    #[default]
    Default,
    /// No default route: only a route to the server's subnet via the router (split
    /// routing, a VPN-less host with static routes).
    ServerSubnetOnly,
    /// A default route via [`SILENT_GATEWAY`], which does not exist, and a more
    /// specific route to the server's subnet via the router (a second gateway).
    MoreSpecificViaRouter,
}

/// The default gateway of [`HostRoutes::MoreSpecificViaRouter`]: an address on the
/// host's link that nobody holds.
pub const SILENT_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 9);
/// The server's subnet.
pub const SERVER_SUBNET: &str = "10.77.2.0/24";

/// The port of the request-echoing server (`WorldOptions::http_echo`).
pub const HTTP_ECHO_PORT: u16 = 8000;
/// The request-echoing server's script.
pub const ECHO_SERVER_PY: &str = include_str!("echo_server.py");

pub struct World {
    pub id: String,
    pub host: String,
    pub router: String,
    pub server: String,
    pub dir: PathBuf,
    children: Vec<Child>,
    keep: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn sh(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    sh(Command::new("ip").args(args)).map(|_| ())
}

impl World {
    pub fn up(opts: &WorldOptions) -> anyhow::Result<World> {
        check_tools()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("ust{}x{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("userspace-world-{id}"));
        std::fs::create_dir_all(dir.join("www"))?;
        let mut world = World {
            host: format!("{id}-host"),
            router: format!("{id}-rtr"),
            server: format!("{id}-srv"),
            id,
            dir,
            children: Vec::new(),
            keep: false,
        };
        world.build(opts).inspect_err(|_| world.teardown())?;
        Ok(world)
    }

    fn build(&mut self, opts: &WorldOptions) -> anyhow::Result<()> {
        let (h, r, s) = (self.host.clone(), self.router.clone(), self.server.clone());
        for ns in [&h, &r, &s] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            if opts.family.has_ipv6() {
                // Before the links exist, so that they inherit it: IPv6 on, and no
                // duplicate address detection (link-local addresses usable at once).
                for key in ["all", "default"] {
                    sh(self.exec(ns).args([
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{key}.disable_ipv6=0"),
                        &format!("net.ipv6.conf.{key}.accept_dad=0"),
                    ]))?;
                }
            }
        }
        let mut host_link = vec!["link", "add", HOST_IF, "netns", &h];
        let queues = opts.queues.unwrap_or(DEFAULT_QUEUES).to_string();
        let q = queues.as_str();
        host_link.extend(["numrxqueues", q, "numtxqueues", q]);
        host_link.extend(["type", "veth", "peer", "name", "r0", "netns", &r]);
        host_link.extend(["numrxqueues", q, "numtxqueues", q]);
        ip(&host_link)?;
        ip(&[
            "link", "add", "r1", "netns", &r, "type", "veth", "peer", "name", "veth0", "netns", &s,
        ])?;
        let v4 = [
            (&h, HOST_IF, HOST_IP),
            (&r, "r0", ROUTER_HOST_IP),
            (&r, "r1", ROUTER_SERVER_IP),
            (&s, "veth0", SERVER_IP),
        ];
        let v6 = [
            (&h, HOST_IF, HOST_IP6),
            (&r, "r0", ROUTER_HOST_IP6),
            (&r, "r1", ROUTER_SERVER_IP6),
            (&s, "veth0", SERVER_IP6),
        ];
        if opts.family.has_ipv4() {
            for (ns, dev, addr) in v4 {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            }
        }
        for (ns, dev) in [(&h, HOST_IF), (&r, "r0"), (&r, "r1"), (&s, "veth0")] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        // IPv6 addresses on links that are up: an address added to a link that is down
        // joins its solicited-node group only when the kernel notices the carrier (up
        // to a second later), and the first neighbour solicitation is lost till then.
        if opts.family.has_ipv6() {
            for (ns, dev, addr) in v6 {
                let cidr = format!("{addr}/64");
                ip(&["-n", ns, "addr", "add", &cidr, "dev", dev, "nodad"])?;
            }
        }
        if opts.family.has_ipv4() {
            self.ipv4_routes(opts.host_routes)?;
        }
        if opts.family.has_ipv6() {
            if !opts.no_host_ipv6_route {
                let router = ROUTER_HOST_IP6.to_string();
                ip(&["-n", &h, "-6", "route", "add", "default", "via", &router])?;
            }
            let router = ROUTER_SERVER_IP6.to_string();
            ip(&["-n", &s, "-6", "route", "add", "default", "via", &router])?;
            sh(self
                .exec(&r)
                .args(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]))?;
        }
        // Every veth keeps the kernel's default offloads (TX checksum, TSO/GSO, GRO), as
        // in a container: the stack must cope with what such a link delivers.
        // `ip netns exec` bind-mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf.
        let etc = PathBuf::from("/etc/netns").join(&h);
        std::fs::create_dir_all(&etc)?;
        let nameserver: IpAddr = if opts.family.has_ipv4() {
            SERVER_IP.into()
        } else {
            SERVER_IP6.into()
        };
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {nameserver}\n"),
        )?;
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n")?;

        std::fs::create_dir_all(self.dir.join("tmp"))?;
        std::fs::write(self.dir.join("www/index.html"), INDEX_HTML)?;
        if let Some(size) = opts.big_file {
            write_random_file(&self.dir.join("www/big.bin"), size)?;
        }
        if opts.dnsmasq {
            let pid = self.dir.join("dnsmasq.pid");
            let mut argv = vec![
                "dnsmasq".to_string(),
                "--keep-in-foreground".into(),
                "--no-resolv".into(),
                "--no-hosts".into(),
                "--bind-interfaces".into(),
                format!("--pid-file={}", pid.display()),
                "--user=root".into(),
                "--group=root".into(),
                "--log-facility=-".into(),
                "--quiet-dhcp".into(),
            ];
            // One A and one AAAA record per family the world speaks.
            if opts.family.has_ipv4() {
                argv.push(format!("--listen-address={SERVER_IP}"));
                argv.push(format!("--address=/example.com/{SERVER_IP}"));
            }
            if opts.family.has_ipv6() {
                argv.push(format!("--listen-address={SERVER_IP6}"));
                argv.push(format!("--address=/example.com/{SERVER_IP6}"));
            }
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let child = self.spawn(&s, &argv)?;
            self.children.push(child);
            self.wait_for_port(&s, nameserver, 53, true)?;
        }
        if opts.tls {
            self.make_test_ca()?;
        }
        if opts.http_echo {
            if !opts.family.has_ipv4() {
                bail!("the request-echoing server listens on IPv4 only");
            }
            self.start_http_echo()?;
        }
        if opts.nginx {
            let conf = self.dir.join("nginx.conf");
            std::fs::write(&conf, nginx_config(&self.dir, opts.tls, opts.family))?;
            let child = self.spawn(
                &s,
                &[
                    "nginx",
                    "-c",
                    &conf.display().to_string(),
                    "-p",
                    &self.dir.display().to_string(),
                ],
            )?;
            self.children.push(child);
            if opts.family.has_ipv4() {
                self.wait_for_port(&s, SERVER_IP, 80, false)?;
            }
            if opts.family.has_ipv6() {
                self.wait_for_port(&s, SERVER_IP6, 80, false)?;
            }
        }
        Ok(())
    }

    /// The IPv4 routes: the host's as `routes` says, the server's default via the router,
    /// and forwarding on the router.
    fn ipv4_routes(&self, routes: HostRoutes) -> anyhow::Result<()> {
        let (h, r, s) = (&self.host, &self.router, &self.server);
        let router = ROUTER_HOST_IP.to_string();
        match routes {
            HostRoutes::Default => ip(&["-n", h, "route", "add", "default", "via", &router])?,
            HostRoutes::ServerSubnetOnly => {
                ip(&["-n", h, "route", "add", SERVER_SUBNET, "via", &router])?
            }
            HostRoutes::MoreSpecificViaRouter => {
                let silent = SILENT_GATEWAY.to_string();
                ip(&["-n", h, "route", "add", "default", "via", &silent])?;
                ip(&["-n", h, "route", "add", SERVER_SUBNET, "via", &router])?;
            }
        }
        ip(&[
            "-n",
            s,
            "route",
            "add",
            "default",
            "via",
            &ROUTER_SERVER_IP.to_string(),
        ])?;
        sh(self
            .exec(r)
            .args(["sysctl", "-qw", "net.ipv4.ip_forward=1"]))?;
        Ok(())
    }

    /// The request-echoing server in the server namespace; its files in `files/`.
    fn start_http_echo(&mut self) -> anyhow::Result<()> {
        let files = self.dir.join("files");
        std::fs::create_dir_all(&files)?;
        let script = self.dir.join("echo_server.py");
        std::fs::write(&script, ECHO_SERVER_PY)?;
        let child = self.spawn(
            &self.server.clone(),
            &[
                "python3",
                &script.display().to_string(),
                &SERVER_IP.to_string(),
                &HTTP_ECHO_PORT.to_string(),
                &files.display().to_string(),
            ],
        )?;
        self.children.push(child);
        self.wait_for_port(&self.server.clone(), SERVER_IP, HTTP_ECHO_PORT, false)
    }

    /// A CA and a server certificate for example.com signed by it, with openssl.
    fn make_test_ca(&self) -> anyhow::Result<()> {
        let d = &self.dir;
        let p = |f: &str| d.join(f).display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        sh(Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args([
                "-keyout",
                &p("ca.key"),
                "-out",
                &p("ca.pem"),
                "-days",
                "2",
                "-subj",
                "/CN=userspace test CA",
            ]))?;
        sh(Command::new("openssl").arg("req").args(ec).args([
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
            "-subj",
            "/CN=example.com",
        ]))?;
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:example.com\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )?;
        sh(Command::new("openssl")
            .args([
                "x509",
                "-req",
                "-in",
                &p("server.csr"),
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
            ])
            .args([
                "-out",
                &p("server.pem"),
                "-days",
                "2",
                "-extfile",
                &p("server.ext"),
            ]))?;
        Ok(())
    }

    /// `ip netns exec NS` as a command to add arguments to.
    pub fn exec(&self, ns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        cmd
    }

    /// Starts a long-running process in `ns`; it is killed at teardown.
    pub fn spawn(&self, ns: &str, argv: &[&str]) -> anyhow::Result<Child> {
        self.exec(ns)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {argv:?} in {ns}"))
    }

    /// Starts one of the stack's long-running commands (serve, sink, run) in `ns` and
    /// returns once it prints its `ready:` line on stderr; the rest of stderr is drained.
    pub fn spawn_ready(&self, ns: &str, argv: &[&str]) -> anyhow::Result<Child> {
        self.spawn_until(ns, argv, |line| line.starts_with("ready:"))
    }

    /// Starts a long-running process in `ns` and returns once a line of its stderr
    /// satisfies `ready` (within 20 s); the rest of stderr is drained.
    pub fn spawn_until(
        &self,
        ns: &str,
        argv: &[&str],
        ready: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Child> {
        use std::io::BufRead;
        let mut child = self.spawn(ns, argv)?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if ready(&line) => break,
                Ok(_) => {}
                Err(_) if Instant::now() > deadline => {
                    let _ = child.kill();
                    bail!("{argv:?} did not become ready within 20 s");
                }
                Err(_) => {
                    if let Some(status) = child.try_wait()? {
                        bail!("{argv:?} exited with {status} before it was ready");
                    }
                }
            }
        }
        // Keep draining, so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in rx {});
        Ok(child)
    }

    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Waits until something listens on `addr:port` (TCP, or UDP) in `ns`: tests wait
    /// for a server this way instead of sleeping.
    pub fn wait_for_port(
        &self,
        ns: &str,
        addr: impl Into<IpAddr>,
        port: u16,
        udp: bool,
    ) -> anyhow::Result<()> {
        let addr: IpAddr = addr.into();
        let shown = match addr {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let flag = if udp { "-uln" } else { "-tln" };
        while Instant::now() < deadline {
            let out = self.exec(ns).args(["ss", "-H", flag]).output()?;
            // The local address column: this address or a wildcard, and the port.
            let listening = String::from_utf8_lossy(&out.stdout).lines().any(|line| {
                line.split_whitespace().nth(3).is_some_and(|local| {
                    local.rsplit_once(':').is_some_and(|(host, p)| {
                        p == port.to_string()
                            && [shown.as_str(), "0.0.0.0", "*", "[::]"].contains(&host)
                    })
                })
            });
            if listening {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nothing listens on {addr}:{port} in {ns} after 10 s")
    }

    /// Random loss on the router, in percent, both directions (0 removes it).
    pub fn set_loss(&self, percent: u32) -> anyhow::Result<()> {
        let _ = self
            .exec(&self.router)
            .args(["nft", "delete", "table", "inet", "impair"])
            .output();
        if percent == 0 {
            return Ok(());
        }
        self.nft(&format!(
            "table inet impair {{\n  chain impair_forward {{\n    type filter hook forward priority 0; policy accept;\n    numgen random mod 100 < {percent} drop\n  }}\n}}\n"
        ))
    }

    /// Loads an nftables ruleset into the router namespace.
    fn nft(&self, ruleset: &str) -> anyhow::Result<()> {
        let file = self.dir.join("rules.nft");
        std::fs::write(&file, ruleset)?;
        sh(self.exec(&self.router).args(["nft", "-f"]).arg(&file)).map(|_| ())
    }

    /// Drops everything forwarded to `addr` (a black hole, for timeout tests).
    pub fn blackhole(&self, addr: Ipv4Addr) -> anyhow::Result<()> {
        self.nft(&format!(
            "table inet blackhole {{\n  chain blackhole_forward {{\n    type filter hook forward priority 0; policy accept;\n    ip daddr {addr} drop\n  }}\n}}\n"
        ))
    }

    /// The router answers TCP to `port` with ICMP port unreachable (RFC 1122 3.2.2.1).
    pub fn reject_with_icmp(&self, port: u16) -> anyhow::Result<()> {
        self.nft(&format!(
            "table inet reject_icmp {{\n  chain reject_forward {{\n    type filter hook forward priority 0; policy accept;\n    tcp dport {port} reject with icmp type port-unreachable\n  }}\n}}\n"
        ))
    }

    /// Keep the namespaces after this process ends (`cargo xtask netns up`).
    pub fn keep(mut self) -> String {
        self.keep = true;
        self.id.clone()
    }

    fn teardown(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        destroy(&self.id);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if !self.keep {
            self.teardown();
        }
    }
}

/// Removes the namespaces of world `id` and everything running in them.
pub fn destroy(id: &str) {
    for suffix in ["host", "rtr", "srv"] {
        let ns = format!("{id}-{suffix}");
        // Kill what still runs in the namespace, then delete it.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&ns));
    }
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("userspace-world-{id}")));
}

fn nginx_config(dir: &Path, tls: bool, family: Family) -> String {
    let mut server = String::new();
    if family.has_ipv4() {
        server += &format!("    listen {SERVER_IP}:80 backlog=16384;\n");
    }
    if family.has_ipv6() {
        server += "    listen [::]:80 ipv6only=on backlog=16384;\n";
    }
    if tls {
        if family.has_ipv4() {
            server += &format!("    listen {SERVER_IP}:443 ssl;\n");
        }
        if family.has_ipv6() {
            server += "    listen [::]:443 ipv6only=on ssl;\n";
        }
        let d = dir.display();
        server += &format!(
            "    ssl_certificate {d}/server.pem;\n    ssl_certificate_key {d}/server.key;\n"
        );
    }
    server += "    server_name example.com;\n\
               location = /redirect { return 302 /index.html; }\n\
               location = /loop { return 302 /loop; }\n\
               location = /teapot { return 418 \"no coffee\\n\"; }\n";
    NginxConfig {
        name: "nginx",
        processes: NginxProcesses::One,
        connections: 16384,
        server: &server,
    }
    .text(dir)
}

/// How nginx runs its processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NginxProcesses {
    /// One worker under a master (the world's server).
    One,
    /// No master: the worker is the process started (`master_process off`).
    NoMaster,
    /// A master and this many workers.
    Workers(u32),
}

/// An nginx configuration for the world, its tests and its benches: one server block
/// serving `DIR/www`, files and logs under the world's directory named after `name`.
#[derive(Debug, Clone, Copy)]
pub struct NginxConfig<'a> {
    /// Names the pid and error-log files (several nginx run in one world).
    pub name: &'a str,
    pub processes: NginxProcesses,
    /// `worker_connections`.
    pub connections: u32,
    /// The server block's body: its `listen` lines and anything else.
    pub server: &'a str,
}

impl NginxConfig<'_> {
    /// The configuration text; `dir` holds www/, tmp/, the pid and the error log.
    pub fn text(&self, dir: &Path) -> String {
        let d = dir.display();
        let name = self.name;
        let processes = match self.processes {
            NginxProcesses::One => "worker_processes 1;".to_string(),
            NginxProcesses::NoMaster => "master_process off;\nworker_processes 1;".to_string(),
            NginxProcesses::Workers(n) => format!("master_process on;\nworker_processes {n};"),
        };
        format!(
            "daemon off;\n{processes}\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log;\n\
             events {{ worker_connections {connections}; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  default_type application/octet-stream;\n  keepalive_requests 1000000;\n\
             client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
               server {{\n{server}    root {d}/www;\n  }}\n}}\n",
            connections = self.connections,
            server = self.server,
        )
    }

    /// Writes the configuration to `DIR/NAME.conf` and returns that path.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("{}.conf", self.name));
        std::fs::write(&path, self.text(dir))?;
        Ok(path)
    }
}

/// Writes `size` bytes of a fixed pseudo-random stream (xorshift), fast and reproducible.
pub fn write_random_file(path: &Path, size: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ size as u64;
    let mut chunk = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        for word in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
        let n = left.min(chunk.len());
        file.write_all(&chunk[..n])?;
        left -= n;
    }
    file.flush()?;
    Ok(())
}
