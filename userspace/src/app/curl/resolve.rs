//! Names to addresses as curl resolves them: `--resolve`, IP literals (IPv6 in
//! brackets), then the system resolver's A and AAAA records; `-4`/`-6` keep one family.
//! The addresses are split for Happy Eyeballs (RFC 8305) as curl splits them: the
//! family of the resolver's first answer (IPv6 first, RFC 6724) is tried first, the
//! other family [`HAPPY_EYEBALLS_DELAY`] later unless the first has connected.
use super::{CurlError, EXIT_BAD_RESOLVE, EXIT_CANNOT_RESOLVE, fail};
use std::net::{IpAddr, Ipv6Addr, ToSocketAddrs};
use std::time::Duration;

/// RFC 8305 section 5: the "Connection Attempt Delay" (curl's
/// `--happy-eyeballs-timeout-ms` default): the second family starts this much later.
pub const HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(200);

/// `-4`, `-6`, or either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Any,
    V4,
    V6,
}

impl Family {
    fn allows(self, ip: &IpAddr) -> bool {
        match self {
            Family::Any => true,
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
        }
    }
}

/// One --resolve entry: HOST:PORT:ADDR (PORT may be *; ADDR may be in brackets, and a
/// comma-separated list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveEntry {
    host: String,
    port: Option<u16>,
    addrs: Vec<IpAddr>,
}

pub fn parse_resolve(entry: &str) -> Result<ResolveEntry, CurlError> {
    let bad = || {
        fail(
            EXIT_BAD_RESOLVE,
            format!("Couldn't parse CURLOPT_RESOLVE entry '{entry}'"),
        )
    };
    let entry_body = entry.strip_prefix('+').unwrap_or(entry);
    let mut parts = entry_body.splitn(3, ':');
    let (Some(host), Some(port), Some(addrs)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let port = match port {
        "*" => None,
        p => Some(p.parse::<u16>().map_err(|_| bad())?),
    };
    let addrs = addrs
        .split(',')
        .map(|a| {
            a.trim()
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
                .map_err(|_| bad())
        })
        .collect::<Result<Vec<_>, _>>()?;
    if host.is_empty() || addrs.is_empty() {
        return Err(bad());
    }
    Ok(ResolveEntry {
        host: host.to_string(),
        port,
        addrs,
    })
}

/// The address of an IP literal host: `10.0.0.1`, or `[fd00::2]` as a URL writes it.
pub fn literal(host: &str) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // A zone id (fe80::1%25eth0) is not supported by the stack's routing.
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The host as curl names it in messages: an IPv6 literal without its brackets.
pub fn display_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The addresses of `host`, in the resolver's order, of the family asked for. None is
/// curl's "Could not resolve host" (exit 6), for a literal of the other family too (as
/// getaddrinfo answers curl -6 with an IPv4 literal).
pub fn resolve(
    entries: &[ResolveEntry],
    host: &str,
    port: u16,
    family: Family,
) -> Result<Vec<IpAddr>, CurlError> {
    let found: Vec<IpAddr> = if let Some(e) = entries
        .iter()
        .find(|e| e.host.eq_ignore_ascii_case(host) && e.port.is_none_or(|p| p == port))
    {
        e.addrs.clone()
    } else if let Some(ip) = literal(host) {
        vec![ip]
    } else {
        // The system resolver: /etc/hosts, then the DNS servers of resolv.conf, A and
        // AAAA, sorted by RFC 6724 (IPv6 first where it has a route).
        let mut seen: Vec<IpAddr> = Vec::new();
        for a in (host, port).to_socket_addrs().into_iter().flatten() {
            if !seen.contains(&a.ip()) {
                seen.push(a.ip());
            }
        }
        seen
    };
    let kept: Vec<IpAddr> = found.into_iter().filter(|ip| family.allows(ip)).collect();
    if kept.is_empty() {
        return Err(fail(
            EXIT_CANNOT_RESOLVE,
            format!("Could not resolve host: {}", display_host(host)),
        ));
    }
    Ok(kept)
}

/// Happy Eyeballs' two lists (RFC 8305 section 4, as curl does it): the addresses of
/// the first answer's family, tried one after the other at once, and those of the
/// other family, started [`HAPPY_EYEBALLS_DELAY`] later (or as soon as the first list
/// has failed).
pub fn eyeballs(addrs: &[IpAddr]) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let Some(first) = addrs.first() else {
        return (Vec::new(), Vec::new());
    };
    addrs.iter().partition(|ip| ip.is_ipv6() == first.is_ipv6())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn literals_with_and_without_brackets() {
        assert_eq!(literal("[fd00::2]"), Some(ip("fd00::2")));
        assert_eq!(literal("10.0.0.1"), Some(ip("10.0.0.1")));
        assert_eq!(literal("fd00::2"), None);
        assert_eq!(literal("[10.0.0.1]"), None);
        assert_eq!(literal("example.com"), None);
        assert_eq!(display_host("[fd00::2]"), "fd00::2");
        assert_eq!(display_host("example.com"), "example.com");
        let t = super::super::parse_url("http://[fd00::2]:8080/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("[fd00::2]", 8080));
        assert_eq!(t.host_header(), "[fd00::2]:8080");
        let t = super::super::parse_url("http://[fd00::2]/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("[fd00::2]", 80));
        assert_eq!(t.host_header(), "[fd00::2]");
        assert_eq!(literal(&t.host), Some(ip("fd00::2")));
    }

    #[test]
    fn family_flags_keep_one_family_and_a_literal_of_the_other_does_not_resolve() {
        let r = |host, family| resolve(&[], host, 80, family);
        assert_eq!(r("[fd00::2]", Family::Any).unwrap(), vec![ip("fd00::2")]);
        assert_eq!(r("[fd00::2]", Family::V6).unwrap(), vec![ip("fd00::2")]);
        let e = r("[fd00::2]", Family::V4).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (EXIT_CANNOT_RESOLVE, "Could not resolve host: fd00::2")
        );
        assert_eq!(r("10.0.0.1", Family::V4).unwrap(), vec![ip("10.0.0.1")]);
        assert_eq!(
            r("10.0.0.1", Family::V6).unwrap_err().code,
            EXIT_CANNOT_RESOLVE
        );
        let both = parse_resolve("h:80:[fd00::2],10.0.0.1").unwrap();
        let entries = [both];
        let r = |family| resolve(&entries, "h", 80, family).unwrap();
        assert_eq!(r(Family::Any), vec![ip("fd00::2"), ip("10.0.0.1")]);
        assert_eq!(r(Family::V4), vec![ip("10.0.0.1")]);
        assert_eq!(r(Family::V6), vec![ip("fd00::2")]);
    }

    #[test]
    fn resolve_entries_parse_or_fail_with_49() {
        let e = parse_resolve("example.com:80:10.0.0.1").unwrap();
        assert_eq!(
            resolve(&[e], "EXAMPLE.com", 80, Family::Any).unwrap(),
            vec![ip("10.0.0.1")]
        );
        let e = parse_resolve("h:*:[10.0.0.2]").unwrap();
        assert_eq!(
            resolve(&[e], "h", 1, Family::Any).unwrap(),
            vec![ip("10.0.0.2")]
        );
        let e = parse_resolve("h:443:[fd00::2]").unwrap();
        assert_eq!(
            resolve(std::slice::from_ref(&e), "h", 443, Family::Any).unwrap(),
            vec![ip("fd00::2")]
        );
        // Another host: the entry does not apply.
        assert_eq!(
            resolve(&[e], "10.0.0.9", 443, Family::Any).unwrap(),
            vec![ip("10.0.0.9")]
        );
        for bad in [
            "nohost",
            "h:port:1.2.3.4",
            ":80:1.2.3.4",
            "h:80:not-an-ip",
            "h:80:",
        ] {
            assert_eq!(
                parse_resolve(bad).unwrap_err().code,
                EXIT_BAD_RESOLVE,
                "{bad}"
            );
        }
    }

    #[test]
    fn eyeballs_try_the_first_answers_family_first_and_the_other_later() {
        let mixed = [ip("fd00::2"), ip("10.0.0.1"), ip("fd00::3"), ip("10.0.0.2")];
        let (first, later) = eyeballs(&mixed);
        assert_eq!(first, vec![ip("fd00::2"), ip("fd00::3")]);
        assert_eq!(later, vec![ip("10.0.0.1"), ip("10.0.0.2")]);
        let (first, later) = eyeballs(&[ip("10.0.0.1"), ip("fd00::2")]);
        assert_eq!((first, later), (vec![ip("10.0.0.1")], vec![ip("fd00::2")]));
        let (first, later) = eyeballs(&[ip("fd00::2")]);
        assert_eq!((first, later), (vec![ip("fd00::2")], vec![]));
        assert_eq!(eyeballs(&[]), (vec![], vec![]));
    }
}
