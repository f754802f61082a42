//! `userspace curl`: an HTTP/1.1 client on the stack, with curl's flags, output and
//! exit codes (curl 7.88 is the reference where nothing else is said).
//!
//! Layers: `args` (the command line), `request` and `form` (what is sent), `response`
//! (what comes back), `output`, `progress`, `writeout` and `cookies` (what the user
//! sees), and `transport` (the stack's connections, the only part that knows the
//! runtime). `transfer` drives one URL through them; this file drives the URLs.
mod args;
mod cookies;
pub mod flags;
mod form;
mod glob;
mod output;
mod progress;
mod proxy;
mod psl;
mod request;
mod resolve;
mod response;
mod transfer;
mod transport;
mod writeout;

pub use args::CurlArgs;

/// A failure with curl's exit code for it.
#[derive(Debug)]
pub struct CurlError {
    pub code: i32,
    pub message: String,
}

pub fn fail(code: i32, message: impl Into<String>) -> CurlError {
    CurlError {
        code,
        message: message.into(),
    }
}

pub const EXIT_UNSUPPORTED_PROTOCOL: i32 = 1;
pub const EXIT_FAILED_INIT: i32 = 2;
pub const EXIT_BAD_URL: i32 = 3;
pub const EXIT_CANNOT_RESOLVE: i32 = 6;
pub const EXIT_CANNOT_CONNECT: i32 = 7;
pub const EXIT_HTTP_ERROR: i32 = 22;
pub const EXIT_WRITE_ERROR: i32 = 23;
pub const EXIT_TIMEOUT: i32 = 28;
pub const EXIT_RANGE_ERROR: i32 = 33;
pub const EXIT_TOO_MANY_REDIRECTS: i32 = 47;
pub const EXIT_BAD_RESOLVE: i32 = 49;
pub const EXIT_RECV_ERROR: i32 = 56;
/// The signal an error's code stands for, if any: a code below zero is not an exit code
/// but a signal (SIGINT, SIGTERM) that ended the transfers, its number negated; the
/// process ends by that signal after cleaning up.
pub fn killed_by(code: i32) -> Option<i32> {
    (code < 0).then_some(-code)
}

pub const USER_AGENT: &str = concat!("userspace-curl/", env!("CARGO_PKG_VERSION"));
pub const VERSION_LINE: &str = concat!(
    "userspace-curl/",
    env!("CARGO_PKG_VERSION"),
    " rustls flate2 brotli ruzstd"
);

/// A URL split into what the transfer needs.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: url::Url,
    pub host: String,
    pub port: u16,
    pub https: bool,
}

impl Target {
    /// The Host header: the host, with the port when it is not the scheme's.
    pub fn host_header(&self) -> String {
        let default_port = if self.https { 443 } else { 80 };
        if self.port == default_port {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Path and query, as sent in the request line.
    pub fn path(&self) -> String {
        let mut path = self.url.path().to_string();
        if let Some(q) = self.url.query() {
            path.push('?');
            path.push_str(q);
        }
        path
    }

    /// user:password from the URL, decoded.
    pub fn credentials(&self) -> Option<String> {
        if self.url.username().is_empty() && self.url.password().is_none() {
            return None;
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        Some(format!(
            "{}:{}",
            decode(self.url.username()),
            decode(self.url.password().unwrap_or(""))
        ))
    }
}

pub fn parse_url(raw: &str) -> Result<Target, CurlError> {
    // curl's URL parser refuses control bytes and spaces (its junk scan) where the url
    // crate would percent-encode them: a CR/LF would otherwise reach the request line.
    if raw.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(fail(
            EXIT_BAD_URL,
            "URL using bad/illegal format or missing URL",
        ));
    }
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|e| {
        fail(
            EXIT_BAD_URL,
            format!("URL using bad/illegal format or missing URL ({e})"),
        )
    })?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(fail(
                EXIT_UNSUPPORTED_PROTOCOL,
                format!("Protocol \"{other}\" not supported"),
            ));
        }
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| fail(EXIT_BAD_URL, "URL rejected: No host part in the URL"))?
        .to_string();
    let https = url.scheme() == "https";
    let port = url
        .port_or_known_default()
        .unwrap_or(if https { 443 } else { 80 });
    Ok(Target {
        url,
        host,
        port,
        https,
    })
}

fn print_version() {
    println!("{VERSION_LINE} (userspace TCP/IP stack on AF_XDP)");
    println!("Protocols: http https");
    println!("Features: IPv4 IPv6 SSL libz brotli zstd cookies globbing parallel");
}

/// Ends the process by `signal`, as a shell expects from Ctrl-C or `kill`: the default
/// handler is put back and the signal raised again (the XDP link is gone with the
/// runtime already, and the kernel would detach it at exit anyway).
fn die_by(signal: i32) -> ! {
    let _ = signal_hook::low_level::emulate_default_handler(signal);
    std::process::exit(128 + signal)
}

pub fn run(args: &CurlArgs) -> Result<(), CurlError> {
    if args.version {
        print_version();
        return Ok(());
    }
    output::note_closed_stdout();
    let urls = args.all_urls();
    if urls.is_empty() {
        // Said even with -s, as curl says it.
        eprintln!("curl: no URL specified!\n{}", flags::TRY_HELP);
        return Err(fail(EXIT_FAILED_INIT, ""));
    }
    let result = transfer::run_all(args, &urls);
    match result {
        Err(e) if let Some(signal) = killed_by(e.code) => die_by(signal),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_defaults_credentials_and_errors() {
        let t = parse_url("example.com").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.url.path()),
            ("example.com", 80, "/")
        );
        assert_eq!(parse_url("http://[bad").err().unwrap().code, EXIT_BAD_URL);
        assert_eq!(
            parse_url("gopher://x/").err().unwrap().code,
            EXIT_UNSUPPORTED_PROTOCOL
        );
        let t = parse_url("https://example.com/a?b").unwrap();
        assert_eq!((t.port, t.https, t.path().as_str()), (443, true, "/a?b"));
        let t = parse_url("http://u%40x:p%3Aw@h:8080/").unwrap();
        assert_eq!(t.credentials().as_deref(), Some("u@x:p:w"));
        assert_eq!(t.host_header(), "h:8080");
        assert_eq!(parse_url("http://h/").unwrap().credentials(), None);
    }
}
