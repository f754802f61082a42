//! What the examples share: their few flags and the parts of an `http://` URL.
#![allow(dead_code)]
use std::io;

/// `[--iface IF] [--ip ADDR] [--queues N] [--no-busy-poll] [--port P] [ARG]`, the flags
/// every example takes.
pub struct Args {
    pub iface: Option<String>,
    /// Owned-IP mode with this address.
    pub ip: Option<std::net::IpAddr>,
    pub port: Option<u16>,
    /// One stack per NIC queue `0..queues` (servers).
    pub queues: u32,
    /// `--no-busy-poll`: the poll loop sleeps when idle.
    pub busy_poll: bool,
    pub positional: Option<String>,
}

pub fn args(usage: &str) -> Args {
    let mut out = Args {
        iface: None,
        ip: None,
        port: None,
        queues: 1,
        busy_poll: true,
        positional: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--iface" => out.iface = it.next(),
            "--ip" => out.ip = it.next().and_then(|a| a.parse().ok()),
            "--queues" => out.queues = it.next().and_then(|q| q.parse().ok()).unwrap_or(1),
            "--no-busy-poll" => out.busy_poll = false,
            "--port" => out.port = it.next().and_then(|p| p.parse().ok()),
            "-h" | "--help" => {
                println!("usage: {usage}");
                std::process::exit(0);
            }
            _ if out.positional.is_none() && !arg.starts_with("--") => out.positional = Some(arg),
            _ => {
                eprintln!("usage: {usage}");
                std::process::exit(2);
            }
        }
    }
    out
}

/// `--queues` stacks, one per NIC queue, or one stack.
pub fn stacks(args: &Args) -> io::Result<Vec<userspace::Stack>> {
    if args.queues > 1 {
        builder(args).build_per_queue(args.queues)
    } else {
        Ok(vec![builder(args).build()?])
    }
}

/// A running stack on `--iface` (default: the interface of the default route), in
/// owned-IP mode with `--ip`.
pub fn stack(args: &Args) -> io::Result<userspace::Stack> {
    builder(args).build()
}

fn builder(args: &Args) -> userspace::StackBuilder {
    let mut builder = userspace::Stack::builder().busy_poll(args.busy_poll);
    if let Some(iface) = &args.iface {
        builder = builder.interface(iface);
    }
    match args.ip {
        Some(std::net::IpAddr::V4(v4)) => builder = builder.ip(v4),
        Some(std::net::IpAddr::V6(v6)) => builder = builder.ipv6(v6),
        None => {}
    }
    builder
}

/// `http://host[:port][/path]` as (host, port, path); an IPv6 literal comes in
/// brackets (`http://[fd00::2]:8080/`) and goes out without them.
pub fn parse_url(url: &str) -> io::Result<(String, u16, String)> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unclosed ["))?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| invalid("bad port"))?,
        None => 80,
    };
    Ok((host.to_string(), port, path.to_string()))
}

/// The `Host:` header for `host` (an IPv6 literal in brackets, RFC 7230 5.4).
pub fn host_header(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}
