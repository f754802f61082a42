//! HTTP proxies as curl uses them: `-x`/`--proxy`, else the environment (`http_proxy`
//! for http, `https_proxy`/`HTTPS_PROXY` for https, `all_proxy`/`ALL_PROXY` for
//! both), minus the hosts of `--noproxy`/`no_proxy`. A plain http request goes to the
//! proxy with its absolute URL (RFC 9112 3.2.2); https goes through a CONNECT tunnel
//! (RFC 9110 9.3.6) with TLS to the server inside it.
use super::{CurlArgs, CurlError, Target, fail};
use std::net::Ipv4Addr;

/// curl's CURLE_COULDNT_RESOLVE_PROXY.
pub const EXIT_CANNOT_RESOLVE_PROXY: i32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
    /// user:password for Proxy-Authorization (from the proxy URL or -U).
    pub credentials: Option<String>,
}

/// A variable of the environment, the lower-case name first; an empty one is unset.
fn env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// The proxy for `target`, if one applies.
pub fn for_target(args: &CurlArgs, target: &Target) -> Result<Option<Proxy>, CurlError> {
    let configured = match &args.proxy {
        Some(p) => Some(p.clone()),
        // curl takes http_proxy in lower case only (HTTP_PROXY can come from a CGI
        // request's Proxy: header).
        None if target.https => env(&["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]),
        None => env(&["http_proxy", "all_proxy", "ALL_PROXY"]),
    };
    let Some(configured) = configured.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let bypass = args
        .noproxy
        .clone()
        .or_else(|| env(&["no_proxy", "NO_PROXY"]));
    if bypass.is_some_and(|list| bypassed(&list, &target.host)) {
        return Ok(None);
    }
    parse(&configured, args.proxy_user.as_deref()).map(Some)
}

/// `[http://][user:password@]host[:port]`; the port defaults to 1080, as curl's.
pub fn parse(raw: &str, proxy_user: Option<&str>) -> Result<Proxy, CurlError> {
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|e| {
        fail(
            EXIT_CANNOT_RESOLVE_PROXY,
            format!("Could not resolve proxy: {raw} ({e})"),
        )
    })?;
    if url.scheme() != "http" {
        return Err(fail(
            super::EXIT_CANNOT_CONNECT,
            format!("Unsupported proxy scheme for '{raw}': only http:// proxies are spoken here"),
        ));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            fail(
                EXIT_CANNOT_RESOLVE_PROXY,
                "Could not resolve proxy: no host",
            )
        })?
        .to_string();
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let from_url = (!url.username().is_empty()).then(|| {
        format!(
            "{}:{}",
            decode(url.username()),
            decode(url.password().unwrap_or(""))
        )
    });
    Ok(Proxy {
        host,
        port: url.port().unwrap_or(1080),
        credentials: proxy_user.map(str::to_string).or(from_url),
    })
}

/// `--noproxy`/`no_proxy`: "*" is every host; else a comma-separated list of names
/// (a name covers its subdomains; a leading dot is the same name) and IPv4 addresses
/// or networks (a.b.c.d/len).
pub fn bypassed(list: &str, host: &str) -> bool {
    let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
    let address = host.parse::<Ipv4Addr>().ok();
    list.split([',', ' '])
        .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let Some(ip) = address {
                let (net, len) = entry.split_once('/').unwrap_or((&entry, "32"));
                let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
                    return false;
                };
                let mask = u32::MAX.checked_shl(32 - len.min(32)).unwrap_or(0);
                return u32::from(ip) & mask == u32::from(net) & mask;
            }
            host == entry || host.ends_with(&format!(".{entry}"))
        })
}

/// The CONNECT request for a tunnel to `target`, in curl's header order.
pub fn connect_request(target: &Target, proxy: &Proxy, user_agent: Option<&str>) -> Vec<u8> {
    let authority = format!("{}:{}", target.host, target.port);
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(c) = &proxy.credentials {
        head.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            super::request::basic_auth(c)
        ));
    }
    if let Some(agent) = user_agent {
        head.push_str(&format!("User-Agent: {agent}\r\n"));
    }
    head.push_str("Proxy-Connection: Keep-Alive\r\n\r\n");
    head.into_bytes()
}

/// The request target for a plain http request through a proxy: the absolute URL
/// without credentials or fragment (RFC 9112 3.2.2).
pub fn absolute_target(target: &Target) -> String {
    let scheme = if target.https { "https" } else { "http" };
    format!("{scheme}://{}{}", target.host_header(), target.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_lists_and_requests() {
        let p = parse("u%40x:pw@proxy.example", None).unwrap();
        assert_eq!(
            p,
            Proxy {
                host: "proxy.example".into(),
                port: 1080,
                credentials: Some("u@x:pw".into())
            }
        );
        assert_eq!(parse("http://h:3128", Some("a:b")).unwrap().port, 3128);
        assert_eq!(
            parse("socks5://h", None).unwrap_err().code,
            super::super::EXIT_CANNOT_CONNECT
        );
        assert!(bypassed("*", "anything"));
        assert!(bypassed("example.com, .other.org", "www.example.com"));
        assert!(bypassed("example.com", "EXAMPLE.com"));
        assert!(bypassed(".other.org", "other.org"));
        assert!(!bypassed("example.com", "notexample.com"));
        assert!(bypassed("10.0.0.0/8", "10.1.2.3"));
        assert!(bypassed("10.1.2.3", "10.1.2.3"));
        assert!(!bypassed("10.0.0.0/8", "11.0.0.1"));
        let t = super::super::parse_url("https://example.com:8443/x?y").unwrap();
        let p = parse("a:b@h:1", None).unwrap();
        assert_eq!(
            String::from_utf8(connect_request(&t, &p, Some("ua"))).unwrap(),
            "CONNECT example.com:8443 HTTP/1.1\r\nHost: example.com:8443\r\nProxy-Authorization: Basic YTpi\r\nUser-Agent: ua\r\nProxy-Connection: Keep-Alive\r\n\r\n"
        );
        let t = super::super::parse_url("http://u:p@example.com:81/a?b#frag").unwrap();
        assert_eq!(absolute_target(&t), "http://example.com:81/a?b");
    }
}
