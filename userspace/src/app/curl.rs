//! `userspace curl`: an HTTP/1.1 client on the stack, with curl's flags and exit codes.
use super::runtime::{Runtime, WaitError};
use super::setup::{StackArgs, open_runtime, print_stats, resolve_next_hop};
use crate::stack::ConnId;
use crate::tcp::{Instant, State, TcpError};
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddrV4, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct CurlArgs {
    /// URL to fetch (http:// is assumed when no scheme is given)
    pub url: String,
    /// Write the body to FILE instead of stdout
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Fetch the headers only (HEAD)
    #[arg(short = 'I', long)]
    pub head: bool,
    /// Include the response headers in the output
    #[arg(short = 'i', long)]
    pub include: bool,
    /// Extra request header, "Name: value" (repeatable)
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Request method
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub method: Option<String>,
    /// Send DATA in a POST request body
    #[arg(short = 'd', long, value_name = "DATA")]
    pub data: Option<String>,
    /// User-Agent header
    #[arg(
        short = 'A',
        long,
        value_name = "NAME",
        default_value = "userspace-curl/0.1"
    )]
    pub user_agent: String,
    /// Follow redirects
    #[arg(short = 'L', long)]
    pub location: bool,
    /// Most redirects to follow with -L
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub max_redirs: u32,
    /// Fail with exit code 22 on HTTP errors (status >= 400), printing no body
    #[arg(short = 'f', long)]
    pub fail: bool,
    /// Silent: no progress bar and no error messages
    #[arg(short = 's', long)]
    pub silent: bool,
    /// With -s, still show errors
    #[arg(short = 'S', long)]
    pub show_error: bool,
    /// Verbose: '*' info, '>' sent and '<' received header lines on stderr
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Most seconds the whole transfer may take
    #[arg(short = 'm', long, value_name = "SECONDS")]
    pub max_time: Option<f64>,
    /// Most seconds the connection setup may take
    #[arg(long, value_name = "SECONDS")]
    pub connect_timeout: Option<f64>,
    /// Send TCP keep-alive probes after SECONDS idle, then every SECONDS (as curl)
    #[arg(long, value_name = "SECONDS")]
    pub keepalive_time: Option<u32>,
    /// Use ADDR for HOST:PORT instead of the resolver (HOST:PORT:ADDR, repeatable)
    #[arg(long, value_name = "HOST:PORT:ADDR")]
    pub resolve: Vec<String>,
    /// https: do not verify the server's certificate
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// https: trust the CA certificates in this PEM file instead of the system's
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// A failure with curl's exit code for it.
#[derive(Debug)]
pub struct CurlError {
    pub code: i32,
    pub message: String,
}

fn fail(code: i32, message: impl Into<String>) -> CurlError {
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
pub const EXIT_WRITE_ERROR: i32 = 23;
pub const EXIT_HTTP_ERROR: i32 = 22;
pub const EXIT_TIMEOUT: i32 = 28;
pub const EXIT_TOO_MANY_REDIRECTS: i32 = 47;
pub const EXIT_RECV_ERROR: i32 = 56;

struct Target {
    url: url::Url,
    host: String,
    port: u16,
    https: bool,
}

fn parse_url(raw: &str) -> Result<Target, CurlError> {
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let url = url::Url::parse(&with_scheme)
        .map_err(|e| fail(EXIT_BAD_URL, format!("URL rejected: {e}")))?;
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
        .ok_or_else(|| fail(EXIT_BAD_URL, "URL rejected: no host"))?
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

fn resolve(args: &CurlArgs, host: &str, port: u16) -> Result<Ipv4Addr, CurlError> {
    for entry in &args.resolve {
        let mut parts = entry.splitn(3, ':');
        if let (Some(h), Some(p), Some(a)) = (parts.next(), parts.next(), parts.next())
            && h.eq_ignore_ascii_case(host)
            && (p == "*" || p.parse() == Ok(port))
        {
            return a
                .trim_matches(|c| c == '[' || c == ']')
                .parse()
                .map_err(|_| fail(EXIT_BAD_URL, format!("bad --resolve address {a}")));
        }
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    // The system resolver: /etc/hosts, then the DNS servers of resolv.conf.
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| {
            addrs.find_map(|a| match a {
                std::net::SocketAddr::V4(v4) => Some(*v4.ip()),
                _ => None,
            })
        })
        .ok_or_else(|| {
            fail(
                EXIT_CANNOT_RESOLVE,
                format!("Could not resolve host: {host}"),
            )
        })
}

struct Client<'a> {
    args: &'a CurlArgs,
    rt: Runtime,
    deadline: Option<Instant>,
    tls_config: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The TLS session of the current https connection.
    tls: Option<rustls::ClientConnection>,
}

impl Client<'_> {
    fn info(&self, line: &str) {
        if self.args.verbose {
            eprintln!("* {line}");
        }
    }

    fn wait<T>(
        &mut self,
        deadline: Option<Instant>,
        ready: impl FnMut(&mut crate::stack::Stack, Instant) -> Option<T>,
    ) -> Result<T, CurlError> {
        let deadline = match (deadline, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.rt.wait(deadline, ready).map_err(|e| match e {
            WaitError::TimedOut => fail(EXIT_TIMEOUT, "Operation timed out"),
            WaitError::Interrupted => fail(EXIT_RECV_ERROR, "interrupted"),
        })
    }

    fn connect(&mut self, ip: Ipv4Addr, port: u16) -> Result<ConnId, CurlError> {
        let connect_timeout = Duration::from_secs_f64(self.args.connect_timeout.unwrap_or(30.0));
        let deadline = self.rt.now() + connect_timeout;
        self.info(&format!("Trying {ip}:{port}..."));
        resolve_next_hop(
            &mut self.rt,
            ip,
            connect_timeout.min(Duration::from_secs(3)),
        )
        .map_err(|e| {
            fail(
                EXIT_CANNOT_CONNECT,
                format!("Failed to connect to {ip} port {port}: {e:#}"),
            )
        })?;
        let now = self.rt.now();
        let id = self
            .rt
            .stack
            .connect(now, SocketAddrV4::new(ip, port))
            .map_err(|e| {
                fail(
                    EXIT_CANNOT_CONNECT,
                    format!("Failed to connect to {ip} port {port}: {e}"),
                )
            })?;
        let result = self.wait(Some(deadline), |stack, _| match stack.state(id) {
            State::SynSent | State::SynReceived => None,
            State::Closed => Some(Err(stack
                .connection(id)
                .and_then(|c| c.error())
                .unwrap_or(TcpError::Closed))),
            _ => Some(Ok(())),
        });
        match result {
            Ok(Ok(())) => {
                if let Some(secs) = self.args.keepalive_time {
                    let every = Duration::from_secs(u64::from(secs.max(1)));
                    let stack = &mut self.rt.stack;
                    stack.set_keepalive_params(id, every, every, 9);
                    stack.set_keepalive(id, true);
                }
                Ok(id)
            }
            Ok(Err(e)) => Err(fail(
                EXIT_CANNOT_CONNECT,
                format!("Failed to connect to {ip} port {port}: {e}"),
            )),
            Err(e) if e.code == EXIT_TIMEOUT => Err(fail(
                EXIT_TIMEOUT,
                format!(
                    "Failed to connect to {ip} port {port} after {} ms: Timeout was reached",
                    connect_timeout.as_millis()
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// Sends application data: through TLS when the connection is https.
    fn send_all(&mut self, id: ConnId, data: &[u8]) -> Result<(), CurlError> {
        let Some(mut tls) = self.tls.take() else {
            return self.send_raw(id, data);
        };
        let result = std::io::Write::write_all(&mut tls.writer(), data)
            .map_err(|e| fail(EXIT_RECV_ERROR, format!("TLS send: {e}")))
            .and_then(|()| self.flush_tls(id, &mut tls));
        self.tls = Some(tls);
        result
    }

    /// Sends the TLS records rustls has ready.
    fn flush_tls(
        &mut self,
        id: ConnId,
        tls: &mut rustls::ClientConnection,
    ) -> Result<(), CurlError> {
        let mut records = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut records)
                .map_err(|e| fail(35, format!("TLS: {e}")))?;
        }
        self.send_raw(id, &records)
    }

    /// Feeds TLS records from the stack to rustls; false at the end of the TCP stream.
    fn pump_tls(
        &mut self,
        id: ConnId,
        tls: &mut rustls::ClientConnection,
    ) -> Result<bool, CurlError> {
        let mut raw = [0u8; 16 * 1024];
        let n = self.read_raw(id, &mut raw)?;
        if n == 0 {
            return Ok(false);
        }
        let mut records = &raw[..n];
        while !records.is_empty() {
            tls.read_tls(&mut records)
                .map_err(|e| fail(35, format!("TLS: {e}")))?;
            tls.process_new_packets()
                .map_err(|e| fail(super::tls::error_code(&e), format!("TLS: {e}")))?;
        }
        self.flush_tls(id, tls)?;
        Ok(true)
    }

    /// The TLS handshake over an established TCP connection.
    fn handshake(&mut self, id: ConnId, host: &str) -> Result<(), CurlError> {
        if self.tls_config.is_none() {
            let config = super::tls::client_config(self.args.cacert.as_deref(), self.args.insecure)
                .map_err(|e| fail(e.code, e.message))?;
            self.tls_config = Some(config);
        }
        let config = self.tls_config.clone().expect("set above");
        let mut tls = super::tls::connection(config, host).map_err(|e| fail(e.code, e.message))?;
        let result = (|| {
            while tls.is_handshaking() {
                self.flush_tls(id, &mut tls)?;
                if tls.is_handshaking() && !self.pump_tls(id, &mut tls)? {
                    return Err(fail(35, "TLS: connection closed during the handshake"));
                }
            }
            self.flush_tls(id, &mut tls)
        })();
        if result.is_ok() {
            let version = tls
                .protocol_version()
                .map_or("TLS".into(), |v| format!("{v:?}"));
            let suite = tls
                .negotiated_cipher_suite()
                .map_or(String::new(), |s| format!("{:?}", s.suite()));
            self.info(&format!("SSL connection using {version} / {suite}"));
            self.tls = Some(tls);
        }
        result
    }

    fn send_raw(&mut self, id: ConnId, mut data: &[u8]) -> Result<(), CurlError> {
        while !data.is_empty() {
            let n = self.wait(None, |stack, _| match stack.send(id, data) {
                Ok(0) => None,
                other => Some(other),
            })?;
            let n = n.map_err(|e| fail(EXIT_RECV_ERROR, format!("Send failure: {e}")))?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Reads application data (decrypted for https): at least one byte, or 0 at the end.
    fn read_some(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, CurlError> {
        let Some(mut tls) = self.tls.take() else {
            return self.read_raw(id, buf);
        };
        let result = loop {
            match std::io::Read::read(&mut tls.reader(), buf) {
                Ok(n) => break Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The peer closed TCP without close_notify: the HTTP framing decides
                // whether that truncated anything.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(0),
                Err(e) => break Err(fail(EXIT_RECV_ERROR, format!("TLS recv: {e}"))),
            }
            match self.pump_tls(id, &mut tls) {
                Ok(true) => {}
                Ok(false) => break Ok(0),
                Err(e) => break Err(e),
            }
        };
        self.tls = Some(tls);
        result
    }

    /// Reads what the stack has (at least one byte), or returns 0 at end of stream.
    fn read_raw(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, CurlError> {
        self.wait(None, |stack, _| match stack.recv(id, buf) {
            Ok(0) if stack.connection(id).is_none_or(|c| c.at_eof()) => Some(Ok(0)),
            Ok(0) => None,
            other => Some(other),
        })?
        .map_err(|e| fail(EXIT_RECV_ERROR, format!("Recv failure: {e}")))
    }

    fn close(&mut self, id: ConnId) {
        if let Some(mut tls) = self.tls.take() {
            tls.send_close_notify();
            let _ = self.flush_tls(id, &mut tls);
        }
        self.rt.stack.close(id);
        let deadline = self.rt.now() + Duration::from_millis(500);
        let _ = self.rt.wait(Some(deadline), |stack, _| {
            matches!(stack.state(id), State::Closed | State::TimeWait).then_some(())
        });
        self.rt.stack.release(id);
    }
}

/// Response framing (RFC 9112 section 6.3).
enum Body {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

struct Response {
    status: u16,
    head: Vec<u8>,
    location: Option<String>,
    body: Body,
}

fn parse_head(raw: &[u8], head_request: bool) -> Result<Option<(usize, Response)>, CurlError> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(fail(8, format!("Weird server reply: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        Body::None
    } else if header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        Body::Chunked
    } else if let Some(len) = header("content-length") {
        Body::Length(
            len.parse()
                .map_err(|_| fail(8, "Weird server reply: bad Content-Length"))?,
        )
    } else {
        Body::UntilClose
    };
    Ok(Some((
        n,
        Response {
            status,
            head: raw[..n].to_vec(),
            location: header("location"),
            body,
        },
    )))
}

/// Incremental decoder for the chunked transfer coding (RFC 9112 section 7.1).
#[derive(Default)]
struct Chunked {
    buf: Vec<u8>,
    remaining: u64,
    done: bool,
    in_data: bool,
}

impl Chunked {
    /// Feeds raw bytes; calls `out` with decoded body bytes.
    fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut dyn FnMut(&[u8]) -> Result<(), CurlError>,
    ) -> Result<(), CurlError> {
        while !input.is_empty() && !self.done {
            if self.in_data {
                let n = (self.remaining as usize).min(input.len());
                out(&input[..n])?;
                self.remaining -= n as u64;
                input = &input[n..];
                if self.remaining == 0 {
                    self.in_data = false;
                }
                continue;
            }
            self.buf.extend_from_slice(input);
            input = &[];
            // Skip the CRLF after a chunk's data, then parse the next size line.
            if self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            match httparse::parse_chunk_size(&self.buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    let rest = self.buf.split_off(used);
                    self.buf.clear();
                    if size == 0 {
                        self.done = true;
                        return Ok(());
                    }
                    self.remaining = size;
                    self.in_data = true;
                    input = &[];
                    self.feed(&rest, out)?;
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(fail(56, "Recv failure: bad chunk size")),
            }
        }
        Ok(())
    }
}

fn build_request(args: &CurlArgs, target: &Target) -> Vec<u8> {
    let method = args.method.clone().unwrap_or_else(|| {
        if args.head {
            "HEAD".into()
        } else if args.data.is_some() {
            "POST".into()
        } else {
            "GET".into()
        }
    });
    let mut path = target.url.path().to_string();
    if let Some(q) = target.url.query() {
        path.push('?');
        path.push_str(q);
    }
    let default_port = if target.https { 443 } else { 80 };
    let host = if target.port == default_port {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {}\r\nAccept: */*\r\n",
        args.user_agent
    );
    let custom = |name: &str| {
        args.headers.iter().any(|h| {
            h.split(':')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
        })
    };
    if !custom("connection") {
        req.push_str("Connection: close\r\n");
    }
    if let Some(data) = &args.data {
        if !custom("content-type") {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n", data.len()));
    }
    for h in &args.headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(data) = &args.data {
        bytes.extend_from_slice(data.as_bytes());
    }
    bytes
}

/// Where the body goes: stdout or a file, with a progress bar for files on a terminal.
struct Sink {
    out: Box<dyn Write>,
    progress: Option<indicatif::ProgressBar>,
    written: u64,
}

impl Sink {
    fn write(&mut self, data: &[u8]) -> Result<(), CurlError> {
        self.out
            .write_all(data)
            .map_err(|e| fail(EXIT_WRITE_ERROR, format!("Failure writing output: {e}")))?;
        self.written += data.len() as u64;
        if let Some(p) = &self.progress {
            p.set_position(self.written);
        }
        Ok(())
    }
}

pub fn run(args: &CurlArgs) -> Result<(), CurlError> {
    let mut target = parse_url(&args.url)?;
    let mut ip = resolve(args, &target.host, target.port)?;
    let rt =
        open_runtime(&args.stack, &[]).map_err(|e| fail(EXIT_FAILED_INIT, format!("{e:#}")))?;
    let mut client = Client {
        args,
        rt,
        deadline: None,
        tls_config: None,
        tls: None,
    };
    client.deadline = args
        .max_time
        .map(|s| client.rt.now() + Duration::from_secs_f64(s));
    let result = (|| {
        let mut redirects = 0;
        loop {
            let status = fetch(&mut client, &target, ip)?;
            match status {
                Fetched::Redirect(location) if args.location => {
                    redirects += 1;
                    if redirects > args.max_redirs {
                        return Err(fail(
                            EXIT_TOO_MANY_REDIRECTS,
                            format!("Maximum ({}) redirects followed", args.max_redirs),
                        ));
                    }
                    let next = target
                        .url
                        .join(&location)
                        .map_err(|e| fail(EXIT_BAD_URL, format!("bad redirect {location}: {e}")))?;
                    client.info(&format!("Issue another request to this URL: '{next}'"));
                    target = parse_url(next.as_str())?;
                    ip = resolve(args, &target.host, target.port)?;
                }
                _ => return Ok(()),
            }
        }
    })();
    if args.stack.stats {
        print_stats(&client.rt);
    }
    result
}

enum Fetched {
    Done,
    Redirect(String),
}

fn fetch(client: &mut Client<'_>, target: &Target, ip: Ipv4Addr) -> Result<Fetched, CurlError> {
    let args = client.args;
    let id = client.connect(ip, target.port)?;
    client.info(&format!(
        "Connected to {} ({ip}) port {}",
        target.host, target.port
    ));
    client.tls = None;
    if target.https {
        client.handshake(id, &target.host)?;
    }
    let request = build_request(args, target);
    if args.verbose {
        let head_end = request
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(request.len());
        for line in String::from_utf8_lossy(&request[..head_end]).lines() {
            eprintln!("> {line}");
        }
        eprintln!(">");
    }
    client.send_all(id, &request)?;

    let mut buf = vec![0u8; 64 * 1024];
    let mut raw = Vec::new();
    let (used, response) = loop {
        let n = client.read_some(id, &mut buf)?;
        if n == 0 {
            return Err(fail(
                if raw.is_empty() { 52 } else { EXIT_RECV_ERROR },
                if raw.is_empty() {
                    "Empty reply from server"
                } else {
                    "Recv failure: connection closed in the headers"
                },
            ));
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(parsed) = parse_head(&raw, args.head || args.method.as_deref() == Some("HEAD"))?
        {
            if (100..200).contains(&parsed.1.status) && parsed.1.status != 101 {
                raw.drain(..parsed.0);
                continue; // interim response
            }
            break parsed;
        }
        if raw.len() > 256 * 1024 {
            return Err(fail(
                EXIT_RECV_ERROR,
                "Recv failure: response head too large",
            ));
        }
    };
    if args.verbose {
        for line in String::from_utf8_lossy(&response.head)
            .lines()
            .filter(|l| !l.is_empty())
        {
            eprintln!("< {line}");
        }
        eprintln!("<");
    }
    if args.location
        && (300..400).contains(&response.status)
        && let Some(location) = response.location.clone()
    {
        client.close(id);
        return Ok(Fetched::Redirect(location));
    }
    if args.fail && response.status >= 400 {
        client.rt.stack.abort(id);
        client.rt.stack.release(id);
        return Err(fail(
            EXIT_HTTP_ERROR,
            format!("The requested URL returned error: {}", response.status),
        ));
    }

    let out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(path).map_err(|e| {
                fail(
                    EXIT_WRITE_ERROR,
                    format!("Failure writing output to {}: {e}", path.display()),
                )
            })?,
        )),
        None => Box::new(std::io::BufWriter::with_capacity(
            1 << 16,
            std::io::stdout().lock(),
        )),
    };
    let total = match response.body {
        Body::Length(n) => Some(n),
        _ => None,
    };
    let progress =
        (args.output.is_some() && !args.silent && std::io::stderr().is_terminal()).then(|| {
            match total {
                Some(n) => indicatif::ProgressBar::new(n),
                None => indicatif::ProgressBar::new_spinner(),
            }
        });
    let mut sink = Sink {
        out,
        progress,
        written: 0,
    };
    if args.include || args.head {
        sink.write(&response.head)?;
    }
    let mut rest = raw.split_off(used);
    match response.body {
        Body::None => {}
        Body::Length(len) => {
            let mut remaining = len;
            loop {
                let take = (remaining as usize).min(rest.len());
                sink.write(&rest[..take])?;
                remaining -= take as u64;
                if remaining == 0 {
                    break;
                }
                let n = client.read_some(id, &mut buf)?;
                if n == 0 {
                    return Err(fail(
                        18,
                        format!("transfer closed with {remaining} bytes remaining to read"),
                    ));
                }
                rest.clear();
                rest.extend_from_slice(&buf[..n]);
            }
        }
        Body::Chunked => {
            let mut decoder = Chunked::default();
            let mut write = |d: &[u8]| sink.write(d);
            decoder.feed(&rest, &mut write)?;
            while !decoder.done {
                let n = client.read_some(id, &mut buf)?;
                if n == 0 {
                    return Err(fail(
                        18,
                        "transfer closed with outstanding read data remaining",
                    ));
                }
                decoder.feed(&buf[..n], &mut write)?;
            }
        }
        Body::UntilClose => {
            sink.write(&rest)?;
            loop {
                let n = client.read_some(id, &mut buf)?;
                if n == 0 {
                    break;
                }
                sink.write(&buf[..n])?;
            }
        }
    }
    sink.out
        .flush()
        .map_err(|e| fail(EXIT_WRITE_ERROR, format!("Failure writing output: {e}")))?;
    if let Some(p) = &sink.progress {
        p.finish();
    }
    client.close(id);
    client.info(&format!("Closing connection to {}", target.host));
    Ok(Fetched::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_decoding_across_reads() {
        let body = b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n";
        for split in 1..body.len() {
            let mut d = Chunked::default();
            let mut out = Vec::new();
            let mut w = |b: &[u8]| {
                out.extend_from_slice(b);
                Ok(())
            };
            d.feed(&body[..split], &mut w).unwrap();
            d.feed(&body[split..], &mut w).unwrap();
            assert!(d.done, "split {split}");
            assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.", "split {split}");
        }
    }

    #[test]
    fn url_defaults_and_errors() {
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
        assert_eq!((t.port, t.https), (443, true));
    }
}
