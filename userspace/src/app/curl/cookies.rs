//! -b and -c: curl's cookie engine, with the `cookie` crate parsing Set-Cookie and the
//! jar in the Netscape format curl reads and writes.
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    domain: String,
    /// Sent to subdomains too (a Domain attribute was given).
    tailmatch: bool,
    path: String,
    secure: bool,
    httponly: bool,
    /// Unix time, 0 for a session cookie.
    expires: i64,
    name: String,
    value: String,
    /// Creation order: curl lists the newest first.
    created: u64,
}

#[derive(Debug, Default)]
pub struct Jar {
    entries: Vec<Entry>,
    /// -b NAME=VALUE strings, sent after the jar's cookies.
    literal: Vec<String>,
    /// The engine is on (a cookie file was read, or -c was given).
    enabled: bool,
    counter: u64,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The default path of a cookie: the request path up to its last '/'.
fn default_path(request_path: &str) -> String {
    let path = request_path.split('?').next().unwrap_or("/");
    match path.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => path[..i].into(),
    }
}

/// Whether a response from `host` may set a cookie with this Domain attribute, and if
/// so whether the cookie goes to subdomains too (curl's tailmatch).
/// RFC 6265 5.3 step 6: the host must domain-match the domain (5.1.3: the same name, or
/// a name under it, and no IP address). Step 5: no public suffix, unless it is the
/// host itself (as libpsl's psl_is_cookie_domain_acceptable, which curl uses).
fn domain_allowed(host: &str, domain: &str) -> Option<bool> {
    let host = host.to_ascii_lowercase();
    let is_ip = host.parse::<std::net::Ipv4Addr>().is_ok() || host.starts_with('[');
    if is_ip {
        // An address matches only itself, and never its "subdomains".
        return (host == domain).then_some(false);
    }
    if host == domain {
        return Some(true);
    }
    let under = host
        .strip_suffix(domain)
        .is_some_and(|rest| rest.ends_with('.'));
    (under && !super::psl::is_public_suffix(domain)).then_some(true)
}

impl Jar {
    pub fn new(cookie_args: &[String], jar_file: Option<&Path>) -> Jar {
        let mut jar = Jar {
            enabled: jar_file.is_some(),
            ..Default::default()
        };
        for arg in cookie_args {
            if arg.contains('=') {
                jar.literal.push(arg.clone());
            } else {
                jar.enabled = true;
                // curl ignores a cookie file it cannot read.
                if let Ok(text) = std::fs::read_to_string(arg) {
                    jar.load(&text);
                }
            }
        }
        jar
    }

    fn load(&mut self, text: &str) {
        for line in text.lines() {
            let (httponly, line) = match line.strip_prefix("#HttpOnly_") {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 7 {
                continue;
            }
            let entry = Entry {
                domain: f[0].trim_start_matches('.').to_ascii_lowercase(),
                tailmatch: f[1] == "TRUE",
                path: f[2].into(),
                secure: f[3] == "TRUE",
                httponly,
                expires: f[4].parse().unwrap_or(0),
                name: f[5].into(),
                value: f[6].into(),
                created: 0,
            };
            self.insert(entry);
        }
    }

    fn insert(&mut self, mut entry: Entry) {
        self.counter += 1;
        entry.created = self.counter;
        let same =
            |e: &Entry| e.name == entry.name && e.domain == entry.domain && e.path == entry.path;
        if let Some(old) = self.entries.iter_mut().find(|e| same(e)) {
            entry.created = old.created;
            *old = entry;
        } else {
            self.entries.push(entry);
        }
    }

    /// Takes the Set-Cookie headers of a response from `host` for `path`.
    pub fn store(&mut self, host: &str, path: &str, set_cookies: &[&str]) {
        if !self.enabled {
            return;
        }
        let now = unix_now();
        for raw in set_cookies {
            let Ok(c) = cookie::Cookie::parse(raw.to_string()) else {
                continue;
            };
            let (domain, tailmatch) = match c.domain() {
                Some(d) if !d.is_empty() => {
                    let domain = d.trim_start_matches('.').to_ascii_lowercase();
                    match domain_allowed(host, &domain) {
                        Some(tailmatch) => (domain, tailmatch),
                        None => continue,
                    }
                }
                _ => (host.to_ascii_lowercase(), false),
            };
            let expires = if let Some(age) = c.max_age() {
                now + age.whole_seconds()
            } else if let Some(t) = c.expires_datetime() {
                t.unix_timestamp()
            } else {
                0
            };
            let entry = Entry {
                domain,
                tailmatch,
                path: c.path().map_or_else(|| default_path(path), str::to_string),
                secure: c.secure().unwrap_or(false),
                httponly: c.http_only().unwrap_or(false),
                expires,
                name: c.name().into(),
                value: c.value().into(),
                created: 0,
            };
            if expires != 0 && expires <= now {
                self.entries.retain(|e| {
                    !(e.name == entry.name && e.domain == entry.domain && e.path == entry.path)
                });
            } else {
                self.insert(entry);
            }
        }
    }

    /// The Cookie header value for a request, if any.
    pub fn header(&self, host: &str, path: &str, https: bool) -> Option<String> {
        let host = host.to_ascii_lowercase();
        let now = unix_now();
        let mut matching: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| {
                let domain_ok =
                    host == e.domain || (e.tailmatch && host.ends_with(&format!(".{}", e.domain)));
                let path_ok = path.starts_with(&e.path)
                    && (e.path.ends_with('/')
                        || path.len() == e.path.len()
                        || path[e.path.len()..].starts_with(['/', '?']));
                domain_ok && path_ok && (https || !e.secure) && (e.expires == 0 || e.expires > now)
            })
            .collect();
        // curl's order: longer paths, then longer domains, then longer names, then newer.
        matching.sort_by(|a, b| {
            b.path
                .len()
                .cmp(&a.path.len())
                .then(b.domain.len().cmp(&a.domain.len()))
                .then(b.name.len().cmp(&a.name.len()))
                .then(b.created.cmp(&a.created))
        });
        let mut parts: Vec<String> = matching
            .iter()
            .map(|e| format!("{}={}", e.name, e.value))
            .collect();
        parts.extend(self.literal.iter().cloned());
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// The jar as curl writes it for -c, newest first.
    pub fn netscape(&self) -> String {
        let mut out = String::from(
            "# Netscape HTTP Cookie File\n# https://curl.se/docs/http-cookies.html\n# This file was generated by libcurl! Edit at your own risk.\n\n",
        );
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.created));
        let flag = |b: bool| if b { "TRUE" } else { "FALSE" };
        for e in entries {
            out.push_str(&format!(
                "{}{}{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                if e.httponly { "#HttpOnly_" } else { "" },
                if e.tailmatch { "." } else { "" },
                e.domain,
                flag(e.tailmatch),
                e.path,
                flag(e.secure),
                e.expires,
                e.name,
                e.value
            ));
        }
        out
    }

    /// Writes the jar for -c ("-" is stdout).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if path == Path::new("-") {
            use std::io::Write;
            return std::io::stdout().write_all(self.netscape().as_bytes());
        }
        std::fs::write(path, self.netscape())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_cookies_come_back_in_curls_order_and_file_format() {
        let mut jar = Jar::new(&["x=9".into()], Some(Path::new("jar")));
        jar.store(
            "h",
            "/a/b",
            &[
                "a=1; Path=/",
                "b=2; Path=/",
                "c=3",
                "d=4; Domain=.h; Path=/",
            ],
        );
        assert_eq!(
            jar.header("h", "/a/x", false).unwrap(),
            "c=3; d=4; b=2; a=1; x=9"
        );
        assert_eq!(jar.header("h", "/", false).unwrap(), "d=4; b=2; a=1; x=9");
        assert_eq!(
            jar.netscape().lines().skip(4).collect::<Vec<_>>(),
            vec![
                ".h\tTRUE\t/\tFALSE\t0\td\t4",
                "h\tFALSE\t/a\tFALSE\t0\tc\t3",
                "h\tFALSE\t/\tFALSE\t0\tb\t2",
                "h\tFALSE\t/\tFALSE\t0\ta\t1"
            ]
        );
        // A file written by the jar reads back.
        let mut again = Jar::default();
        again.load(&jar.netscape());
        assert_eq!(again.entries.len(), 4);
        jar.store("h", "/", &["a=gone; Max-Age=0; Path=/"]);
        assert_eq!(jar.header("h", "/", false).unwrap(), "d=4; b=2; x=9");
    }

    #[test]
    fn domains_must_match_the_host_and_not_be_public_suffixes() {
        // Step 6: the host must be the domain or under it.
        assert_eq!(domain_allowed("www.example.com", "example.com"), Some(true));
        assert_eq!(domain_allowed("Example.com", "example.com"), Some(true));
        assert_eq!(domain_allowed("evil.example", "example.com"), None);
        assert_eq!(domain_allowed("notexample.com", "example.com"), None);
        assert_eq!(domain_allowed("example.com", "www.example.com"), None);
        // Step 5: no public suffix (the system's list, else single labels), unless
        // it is the host itself.
        assert_eq!(domain_allowed("www.example.com", "com"), None);
        assert_eq!(domain_allowed("com", "com"), Some(true));
        // An address only sets a cookie for itself, for no other name.
        assert_eq!(domain_allowed("10.0.0.1", "10.0.0.1"), Some(false));
        assert_eq!(domain_allowed("10.0.0.1", "0.0.1"), None);
        let mut jar = Jar::new(&[], Some(Path::new("jar")));
        jar.store(
            "www.example.com",
            "/",
            &[
                "a=1; Domain=other.example",
                "b=2; Domain=com",
                "c=3; Domain=.example.com",
            ],
        );
        assert_eq!(jar.header("other.example", "/", false), None);
        assert_eq!(jar.header("x.example.com", "/", false).unwrap(), "c=3");
    }

    #[test]
    fn literal_cookies_only_without_the_engine() {
        let mut jar = Jar::new(&["k=v".into()], None);
        jar.store("h", "/", &["a=1"]);
        assert_eq!(jar.header("h", "/", false).unwrap(), "k=v");
    }
}
