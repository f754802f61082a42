//! `userspace serve`: an HTTP/1.1 static file server, or a TCP echo service, on the stack.
//!
//! It runs on the library's public API as any server would: a listener and async
//! streams on each stack, whose loop it turns on the stack's own thread
//! ([`userspace::net::StackLoop`]), one stack per group of RX queues
//! ([`userspace::net::StackBuilder::run_per_queue`]). A connection's waker puts its client
//! on the list of those with news, so an idle connection costs nothing per turn,
//! whatever their number.
mod files;
mod timeouts;

use super::setup::StackArgs;
use files::{Found, Range, Validators};
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use timeouts::{Clock, Phase, Timeouts};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use userspace::net::tokio::{TcpListener, TcpStream};
use userspace::net::{ListenOptions, Stack, StackLoop};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// TCP port to listen on (0: a free port, printed in the ready line)
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// List directories that have no index.html
    #[arg(long)]
    pub list: bool,
    /// Directory to serve files from
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub root: PathBuf,
    /// Echo every byte back instead of serving HTTP
    #[arg(long)]
    pub echo: bool,
    /// Accept queue length
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub backlog: usize,
    /// Serve the port even if a kernel server listens on it (its clients then reach
    /// this server instead; without it, such a port is refused)
    #[arg(long)]
    pub take_over: bool,
    /// Seconds a client has to send a whole request head (nginx's
    /// client_header_timeout)
    #[arg(long, value_name = "SECONDS", default_value_t = timeouts::HEADER_TIMEOUT)]
    pub header_timeout: f64,
    /// Seconds a request body may stall between two reads (nginx's client_body_timeout)
    #[arg(long, value_name = "SECONDS", default_value_t = timeouts::BODY_TIMEOUT)]
    pub body_timeout: f64,
    /// Seconds a response may stall between two writes (nginx's send_timeout); the
    /// connection is then reset
    #[arg(long, value_name = "SECONDS", default_value_t = timeouts::SEND_TIMEOUT)]
    pub send_timeout: f64,
    /// Seconds an idle keep-alive connection (with --echo: any idle connection) stays
    /// open (nginx's keepalive_timeout)
    #[arg(long, value_name = "SECONDS", default_value_t = timeouts::KEEPALIVE_TIMEOUT)]
    pub keepalive_timeout: f64,
    /// Seconds in-flight responses get to finish after SIGINT/SIGTERM
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub grace: f64,
    /// Stacks to shard the RX queues over, one pinned thread each; queue q goes to stack
    /// q mod N, and every queue gets a socket (default: one per RX queue, at most one
    /// per CPU)
    #[arg(long, value_name = "N")]
    pub queues: Option<u32>,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// Largest request head accepted (431 beyond).
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted and discarded (413 beyond).
const MAX_BODY: u64 = 1 << 20;
/// Output buffered per connection before reading stops (back-pressure).
const MAX_PENDING_OUT: usize = 256 * 1024;

struct Session {
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    file: Option<(std::fs::File, u64)>,
    /// Request body bytes still to be discarded.
    skip_body: u64,
    close_after: bool,
    /// The client sent FIN: nothing more to read.
    peer_done: bool,
    /// The request being answered is a HEAD.
    head_only: bool,
    /// Responses sent whole.
    served: u64,
    /// When the current phase began and last moved (for the timeouts).
    clock: Clock,
}

impl Session {
    fn new(now: Instant) -> Self {
        Session {
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            file: None,
            skip_body: 0,
            close_after: false,
            peer_done: false,
            head_only: false,
            served: 0,
            clock: Clock::new(now),
        }
    }

    /// The limit the connection is under now.
    fn phase(&self, echo: bool) -> Phase {
        if self.busy() {
            Phase::Send
        } else if echo || (self.input.is_empty() && self.served > 0 && self.skip_body == 0) {
            Phase::KeepAlive
        } else if self.skip_body > 0 {
            Phase::Body
        } else {
            Phase::Header
        }
    }

    fn pending(&self) -> usize {
        self.output.len() - self.sent
    }
    fn busy(&self) -> bool {
        self.pending() > 0 || self.file.is_some()
    }
}

/// A connection being served.
struct Client {
    tcp: TcpStream,
    /// Wakes the server for this client when its connection has news.
    waker: Waker,
    session: Session,
}

/// The clients of one stack, and which of them have news.
pub struct Server {
    root: PathBuf,
    echo: bool,
    list: bool,
    clients: HashMap<usize, Client>,
    next_id: usize,
    buf: Vec<u8>,
    /// Clients whose connections woke them.
    woken: Arc<Mutex<Vec<usize>>>,
    work: Vec<usize>,
    timeouts: Timeouts,
    /// Connections closed by each timeout.
    pub timed_out: timeouts::Counts,
    /// When the clients' deadlines are next looked at.
    next_expiry_check: Instant,
}

/// How often the clients' deadlines are looked at.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Puts a client on the server's list when its connection has news.
struct Wake {
    id: usize,
    woken: Arc<Mutex<Vec<usize>>>,
}

impl std::task::Wake for Wake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.id);
    }
}

impl Server {
    pub fn new(root: PathBuf, echo: bool, timeouts: Timeouts) -> Self {
        Server {
            timeouts,
            timed_out: timeouts::Counts::default(),
            next_expiry_check: Instant::now(),
            root,
            echo,
            list: false,
            clients: HashMap::new(),
            next_id: 0,
            buf: vec![0; 64 * 1024],
            woken: Arc::default(),
            work: Vec::with_capacity(1024),
        }
    }

    pub fn open_sessions(&self) -> usize {
        self.clients.len()
    }

    /// Takes a new connection and serves it.
    fn add(&mut self, tcp: TcpStream) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let waker = Waker::from(Arc::new(Wake {
            id,
            woken: self.woken.clone(),
        }));
        let client = Client {
            tcp,
            waker,
            session: Session::new(Instant::now()),
        };
        self.clients.insert(id, client);
        self.work.push(id);
    }

    /// Closes the connections past their phase's limit (a stalled send is reset).
    pub fn expire(&mut self, now: Instant) {
        if now < self.next_expiry_check {
            return;
        }
        self.next_expiry_check = now + EXPIRY_CHECK_EVERY;
        let (timeouts, echo) = (self.timeouts, self.echo);
        let counts = &mut self.timed_out;
        self.clients.retain(|_, c| {
            let phase = c.session.phase(echo);
            if now < timeouts.deadline(phase, &c.session.clock) {
                return true;
            }
            counts.count(phase);
            if phase == Phase::Send {
                let _ = c.tcp.abort();
            }
            false
        });
    }

    /// Serves the clients whose connections woke them, and those queued by the server.
    pub fn turn(&mut self) {
        self.work
            .append(&mut self.woken.lock().unwrap_or_else(|p| p.into_inner()));
        let mut work = std::mem::take(&mut self.work);
        for id in work.drain(..) {
            self.serve(id);
        }
        self.work = work; // keep the allocation
    }

    fn serve(&mut self, id: usize) {
        let Some(mut client) = self.clients.remove(&id) else {
            return;
        };
        if self.progress(&mut client) {
            self.clients.insert(id, client);
        }
        // Else the client is dropped: its stream closes (FIN after what was written),
        // or was reset.
    }

    /// Moves one client forward; false once it is finished.
    fn progress(&mut self, c: &mut Client) -> bool {
        let waker = c.waker.clone();
        let mut cx = Context::from_waker(&waker);
        let s = &mut c.session;
        loop {
            let was_busy = s.busy();
            let mut moved = match self.flush(&mut c.tcp, &mut cx, s) {
                Ok(moved) => moved,
                Err(()) => return false,
            };
            if moved {
                s.clock.last_step = Instant::now();
                if was_busy && !s.busy() {
                    // A response went out whole: the next head's clock starts now.
                    s.served += 1;
                    s.clock.head_start = s.clock.last_step;
                }
            }
            if !s.peer_done && s.pending() < MAX_PENDING_OUT {
                let mut read = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut c.tcp).poll_read(&mut cx, &mut read) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(())) if read.filled().is_empty() => {
                        s.peer_done = true;
                        moved = true;
                    }
                    Poll::Ready(Ok(())) => {
                        moved = true;
                        let now = Instant::now();
                        if s.phase(self.echo) == Phase::KeepAlive {
                            // The first byte of a kept-alive connection's next request.
                            s.clock.head_start = now;
                        }
                        s.clock.last_step = now;
                        if self.echo {
                            s.output.extend_from_slice(read.filled());
                        } else {
                            s.input.extend_from_slice(read.filled());
                        }
                    }
                    Poll::Ready(Err(_)) => {
                        let _ = c.tcp.abort();
                        return false;
                    }
                }
            }
            if !self.echo && !s.busy() {
                moved |= self.handle_requests(s);
            }
            if !s.busy() && (s.close_after || (s.peer_done && (self.echo || s.input.is_empty()))) {
                // Done: dropping the stream sends FIN after the bytes written.
                return false;
            }
            if !moved {
                return true;
            }
        }
    }

    /// Sends buffered output, refilling from the file being served; whether anything
    /// moved, or `Err` when the connection failed.
    fn flush(
        &mut self,
        tcp: &mut TcpStream,
        cx: &mut Context<'_>,
        s: &mut Session,
    ) -> Result<bool, ()> {
        let mut moved = false;
        loop {
            if s.pending() == 0 {
                s.output.clear();
                s.sent = 0;
                if let Some((file, left)) = s.file.as_mut() {
                    let want = (*left).min(self.buf.len() as u64) as usize;
                    match file.read(&mut self.buf[..want]) {
                        Ok(n) if n > 0 => {
                            *left -= n as u64;
                            s.output.extend_from_slice(&self.buf[..n]);
                        }
                        _ => {
                            // The file shrank or failed under us: the length promised
                            // cannot be kept, so the connection cannot be reused.
                            *left = 0;
                            s.close_after = true;
                        }
                    }
                    if *left == 0 {
                        s.file = None;
                    }
                }
                if s.pending() == 0 {
                    return Ok(moved);
                }
            }
            match Pin::new(&mut *tcp).poll_write(cx, &s.output[s.sent..]) {
                Poll::Pending | Poll::Ready(Ok(0)) => return Ok(moved),
                Poll::Ready(Ok(n)) => {
                    s.sent += n;
                    moved = true;
                }
                Poll::Ready(Err(_)) => return Err(()),
            }
        }
    }

    /// Parses one complete request from the input and queues its response.
    fn handle_requests(&mut self, s: &mut Session) -> bool {
        if s.skip_body > 0 {
            let n = (s.skip_body as usize).min(s.input.len());
            s.input.drain(..n);
            s.skip_body -= n as u64;
            if s.skip_body > 0 {
                return n > 0;
            }
        }
        if s.input.is_empty() {
            return false;
        }
        s.head_only = false;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let used = match req.parse(&s.input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if s.input.len() > MAX_HEAD {
                    respond_error(s, 431, "Request Header Fields Too Large");
                    return true;
                }
                return false;
            }
            Err(httparse::Error::TooManyHeaders) => {
                respond_error(s, 431, "Request Header Fields Too Large");
                return true;
            }
            Err(_) => {
                respond_error(s, 400, "Bad Request");
                return true;
            }
        };
        if used > MAX_HEAD {
            respond_error(s, 431, "Request Header Fields Too Large");
            return true;
        }
        let raw_header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
        };
        let header = |name: &str| raw_header(name).map(|v| v.to_ascii_lowercase());
        let body_len: u64 = match header("content-length").map(|v| v.parse::<u64>()) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                respond_error(s, 400, "Bad Request");
                return true;
            }
        };
        if header("transfer-encoding").is_some() {
            respond_error(s, 400, "Bad Request");
            return true;
        }
        if body_len > MAX_BODY {
            respond_error(s, 413, "Content Too Large");
            return true;
        }
        let http10 = req.version == Some(0);
        let connection = header("connection").unwrap_or_default();
        s.close_after = if http10 {
            !connection.contains("keep-alive")
        } else {
            connection.contains("close")
        };
        let method = req.method.unwrap_or("").to_string();
        let path = req.path.unwrap_or("/").to_string();
        let conditions = Conditions {
            if_none_match: raw_header("if-none-match"),
            if_modified_since: raw_header("if-modified-since"),
            range: raw_header("range"),
            if_range: raw_header("if-range"),
        };
        s.input.drain(..used);
        s.skip_body = body_len;
        let head_only = method == "HEAD";
        s.head_only = head_only;
        if method != "GET" && !head_only {
            respond(
                s,
                405,
                "Method Not Allowed",
                "text/plain",
                b"method not allowed\n",
                &[("Allow", "GET, HEAD")],
            );
            return true;
        }
        let found = files::resolve(&self.root, &path, self.list);
        match found {
            Err(status) => {
                let reason = if status == 403 {
                    "Forbidden"
                } else {
                    "Not Found"
                };
                respond_plain(s, status, reason);
            }
            Ok(Found::Redirect(location)) => respond(
                s,
                301,
                "Moved Permanently",
                "text/plain",
                b"moved permanently\n",
                &[("Location", &location)],
            ),
            Ok(Found::Listing(dir)) => {
                let url_path = path.split('?').next().unwrap_or("/");
                let page = files::listing(&dir, url_path);
                respond(
                    s,
                    200,
                    "OK",
                    "text/html; charset=utf-8",
                    page.as_bytes(),
                    &[],
                );
            }
            Ok(Found::File(file_path)) => {
                serve_file(s, &file_path, &conditions, head_only);
            }
        }
        true
    }
}

/// A response with a body in memory; to a HEAD request only its head.
fn respond(
    s: &mut Session,
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) {
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: userspace\r\nDate: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        now_date(),
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    finish_head(s, &mut head);
    s.output.extend_from_slice(head.as_bytes());
    if !s.head_only {
        s.output.extend_from_slice(body);
    }
}

/// Errors in the request itself: answer and close, the rest of the input is not trusted.
fn respond_error(s: &mut Session, status: u16, reason: &str) {
    s.close_after = true;
    s.input.clear();
    respond_plain(s, status, reason);
}

/// A response whose body is its reason phrase in lower case.
fn respond_plain(s: &mut Session, status: u16, reason: &str) {
    let body = format!("{}\n", reason.to_ascii_lowercase());
    respond(s, status, reason, "text/plain", body.as_bytes(), &[]);
}

/// The request headers that make a file response conditional or partial.
struct Conditions {
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
    range: Option<String>,
    if_range: Option<String>,
}

/// A file: 200, 206 for a range, 304 when the client's copy is current, 416 for a range
/// past the end.
fn serve_file(s: &mut Session, path: &std::path::Path, c: &Conditions, head_only: bool) {
    let Ok((mut file, meta)) = std::fs::File::open(path).and_then(|f| {
        let m = f.metadata()?;
        Ok((f, m))
    }) else {
        respond_plain(s, 404, "Not Found");
        return;
    };
    let v = Validators::new(meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH));
    let last_modified = v.last_modified();
    let validators = [
        ("Last-Modified", last_modified.as_str()),
        ("ETag", v.etag.as_str()),
    ];
    if v.not_modified(c.if_none_match.as_deref(), c.if_modified_since.as_deref()) {
        let mut head = format!(
            "HTTP/1.1 304 Not Modified\r\nServer: userspace\r\nDate: {}\r\n",
            now_date()
        );
        for (name, value) in validators {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        finish_head(s, &mut head);
        s.output.extend_from_slice(head.as_bytes());
        return;
    }
    let content_type = files::content_type(path);
    let range = files::range(c.range.as_deref(), c.if_range.as_deref(), &v);
    let (status, reason, start, len, content_range) = match range {
        Range::Full => (200, "OK", 0, v.len, None),
        Range::Part(first, last) => (
            206,
            "Partial Content",
            first,
            last - first + 1,
            Some(format!("bytes {first}-{last}/{}", v.len)),
        ),
        Range::Unsatisfiable => {
            let all = format!("bytes */{}", v.len);
            respond(
                s,
                416,
                "Range Not Satisfiable",
                "text/plain",
                b"range not satisfiable\n",
                &[("Content-Range", &all)],
            );
            return;
        }
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: userspace\r\nDate: {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n",
        now_date()
    );
    for (name, value) in validators {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Accept-Ranges: bytes\r\n");
    if let Some(cr) = content_range {
        head.push_str(&format!("Content-Range: {cr}\r\n"));
    }
    finish_head(s, &mut head);
    s.output.extend_from_slice(head.as_bytes());
    if !head_only && len > 0 {
        if start > 0 && file.seek(std::io::SeekFrom::Start(start)).is_err() {
            s.close_after = true;
            return;
        }
        s.file = Some((file, len));
    }
}

fn now_date() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

/// Ends a head: Connection: close when the connection ends after this response.
fn finish_head(s: &Session, head: &mut String) {
    if s.close_after {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
}

/// `--port 0`: a port nothing on this host listens on, from the kernel.
fn free_port() -> anyhow::Result<u16> {
    let probe = std::net::TcpListener::bind(("0.0.0.0", 0))?;
    Ok(probe.local_addr()?.port())
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let mut args = args.clone();
    if args.port == 0 {
        args.port = free_port()?;
    }
    let args = &args;
    for (flag, seconds) in [
        ("--grace", args.grace),
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
        ("--send-timeout", args.send_timeout),
        ("--keepalive-timeout", args.keepalive_timeout),
    ] {
        if !(0.0..=1e9).contains(&seconds) {
            anyhow::bail!("{flag} {seconds}: seconds must be a number from 0 to 1e9");
        }
    }
    if !args.echo && !args.root.is_dir() {
        anyhow::bail!("--root {} is not a directory", args.root.display());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut builder = args.stack.builder();
    builder = builder.linger(Duration::from_secs_f64(args.grace));
    if args.queues == Some(1) || (args.queues.is_none() && args.stack.queue.is_some()) {
        let (stack, mut poll) = builder.build_local()?;
        stop_on_signals(&stop);
        return serve_on(&stack, &mut poll, args, &stop, |port| {
            eprintln!(
                "ready: serving {} on {}:{port} ({} mode)",
                served(args),
                stack.ip(),
                stack.xdp_mode()
            );
        });
    }
    // Several stacks, one per group of RX queues, each on a thread pinned to its own
    // core. A flow stays on its queue (RSS), so it always meets the same stack.
    let bound = AtomicUsize::new(0);
    stop_on_signals(&stop);
    let results = builder
        .run_per_queue(args.queues, |shard| {
            let stacks = shard.stacks;
            let stack = shard.stack;
            let result = serve_on(&stack, shard.poll, args, &stop, |port| {
                // The last stack to listen says the server is ready.
                if bound.fetch_add(1, Ordering::AcqRel) + 1 == stacks {
                    eprintln!(
                        "ready: serving {} on {}:{port} (RX queues: {}, stacks: {stacks})",
                        args.root.display(),
                        stack.ip(),
                        stack.queues().len() * stacks
                    );
                }
            });
            result?;
            let s = shard.poll.stats();
            eprintln!(
                "stack {} (queues {:?}): {} connections, {} frames in, {} frames out",
                shard.index,
                stack.queues(),
                s.connections_opened,
                s.rx_frames,
                s.tx_frames
            );
            Ok(())
        })
        .map_err(|e| match args.queues {
            Some(n) => anyhow::anyhow!("--queues {n}: {e}"),
            None => e.into(),
        })?;
    results.into_iter().collect()
}

/// What is served, for the ready line.
fn served(args: &ServeArgs) -> String {
    if args.echo {
        "echo".to_string()
    } else {
        args.root.display().to_string()
    }
}

/// SIGINT and SIGTERM set `stop`: the server then shuts down gracefully.
fn stop_on_signals(stop: &Arc<AtomicBool>) {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
}

/// The server loop on one stack, turned on this thread, then the graceful shutdown.
fn serve_on(
    stack: &Stack,
    poll: &mut StackLoop,
    args: &ServeArgs,
    stop: &AtomicBool,
    ready: impl FnOnce(u16),
) -> anyhow::Result<()> {
    let options = ListenOptions {
        backlog: args.backlog,
        take_over: args.take_over,
    };
    // Both families on one listener, as nginx users expect of `listen [::]:80`: IPv4
    // clients arrive as IPv4-mapped addresses (RFC 4291 section 2.5.5.2).
    let both = (std::net::Ipv6Addr::UNSPECIFIED, args.port);
    let (bound, refused) = match poll.block_on(TcpListener::bind_with(stack, both, options)) {
        // A library without IPv6 takes no [::]: IPv4 alone, and said once it listens.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            let v4 = (std::net::Ipv4Addr::UNSPECIFIED, args.port);
            (
                poll.block_on(TcpListener::bind_with(stack, v4, options)),
                Some(e),
            )
        }
        other => (other, None),
    };
    let listener = bound.map_err(|e| match e.raw_os_error() {
        Some(libc::EADDRINUSE) => anyhow::anyhow!(
            "{}; pass --take-over to serve it anyway",
            userspace::net::describe_holder(args.port)
        ),
        _ => anyhow::anyhow!("listen on {}: {e}", args.port),
    })?;
    // Said once, not by every stack of the group.
    static SAID: AtomicBool = AtomicBool::new(false);
    if let Some(e) = refused
        && !SAID.swap(true, Ordering::Relaxed)
    {
        eprintln!("warning: listening on IPv4 only: the library refused [::] ({e})");
    }
    ready(args.port);
    let timeouts = Timeouts {
        header: Duration::from_secs_f64(args.header_timeout),
        body: Duration::from_secs_f64(args.body_timeout),
        send: Duration::from_secs_f64(args.send_timeout),
        keepalive: Duration::from_secs_f64(args.keepalive_timeout),
    };
    let mut server = Server::new(args.root.clone(), args.echo, timeouts);
    server.list = args.list;
    let mut accepting = Context::from_waker(Waker::noop());
    while !stop.load(Ordering::Relaxed) && !poll.stopped() {
        let mut busy = poll.turn();
        while let Poll::Ready(accepted) = listener.poll_accept(&mut accepting) {
            match accepted {
                Ok((tcp, _)) => server.add(tcp),
                Err(_) => break,
            }
            busy = true;
        }
        busy |= !server.work.is_empty();
        server.turn();
        server.expire(Instant::now());
        if !busy {
            poll.idle();
        }
    }
    // Graceful shutdown: stop accepting, let responses in flight finish within the
    // grace period, close with FIN, then the XDP program goes with the stack.
    drop(listener);
    // The stack's count, as --stats reports it (closing and TIME-WAIT included).
    eprintln!(
        "shutting down: {} connections open ({} with a client session)",
        poll.connection_count(),
        server.open_sessions()
    );
    let ids: Vec<usize> = server.clients.keys().copied().collect();
    for id in ids {
        // Idle keep-alive connections close now; busy ones after their response.
        if let Some(c) = server.clients.get_mut(&id) {
            c.session.close_after = true;
        }
        server.work.push(id);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.grace);
    while Instant::now() < deadline && server.open_sessions() > 0 && !poll.stopped() {
        let busy = poll.turn() | !server.work.is_empty();
        server.turn();
        if !busy {
            poll.idle();
        }
    }
    // Whatever is left past the grace period is reset, and the stack gets only the
    // rest of the grace period to finish the connections already handed back.
    for (_, client) in server.clients.drain() {
        let _ = client.tcp.abort();
    }
    poll.linger_within(deadline.saturating_duration_since(Instant::now()));
    poll.turn();
    if args.stack.stats {
        eprint!("{}", poll.report());
        eprint!("{}", server.timed_out.report());
    }
    for line in poll.diagnose() {
        eprintln!("warning: {line}");
    }
    Ok(())
}
