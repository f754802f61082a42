//! `userspace serve`: an HTTP/1.1 static file server, or a TCP echo service, on the stack.
//!
//! One event loop: the stack reports which connections have news (`drain_news`), so
//! an idle connection costs nothing per turn, whatever their number.
mod files;

use super::runtime::Runtime;
use super::setup::{StackArgs, open_runtime, print_stats};
use crate::stack::{ConnId, RecvError, SendError, Stack};
use crate::tcp::{Instant, State};
use files::{Found, Range, Validators};
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::PathBuf;
use std::time::Duration;

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

#[derive(Default)]
struct Session {
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    file: Option<(std::fs::File, u64)>,
    /// Request body bytes still to be discarded.
    skip_body: u64,
    close_after: bool,
    closing: bool,
    /// The request being answered is a HEAD.
    head_only: bool,
}

impl Session {
    fn pending(&self) -> usize {
        self.output.len() - self.sent
    }
    fn busy(&self) -> bool {
        self.pending() > 0 || self.file.is_some()
    }
}

pub struct Server {
    root: PathBuf,
    echo: bool,
    list: bool,
    port: u16,
    sessions: HashMap<ConnId, Session>,
    buf: Vec<u8>,
    work: Vec<ConnId>,
    news: Vec<ConnId>,
}

impl Server {
    pub fn new(root: PathBuf, echo: bool, port: u16) -> Self {
        Server {
            root,
            echo,
            list: false,
            port,
            sessions: HashMap::new(),
            buf: vec![0; 64 * 1024],
            work: Vec::with_capacity(1024),
            news: Vec::with_capacity(1024),
        }
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Queues a connection to be looked at on the next turn.
    pub fn wake(&mut self, id: ConnId) {
        self.work.push(id);
    }

    /// Accepts new connections and serves those with news: the stack's news list, plus
    /// connections woken by the caller.
    pub fn turn(&mut self, stack: &mut Stack, accepting: bool) {
        if accepting {
            while let Some(id) = stack.accept(self.port) {
                self.sessions.insert(id, Session::default());
                self.work.push(id);
            }
        }
        stack.drain_news(&mut self.news);
        self.work.append(&mut self.news);
        let mut work = std::mem::take(&mut self.work);
        for id in work.drain(..) {
            self.serve(stack, id);
        }
        self.work = work; // keep the allocation
    }

    fn serve(&mut self, stack: &mut Stack, id: ConnId) {
        let Some(mut session) = self.sessions.remove(&id) else {
            return;
        };
        let keep = self.progress(stack, id, &mut session);
        if keep {
            self.sessions.insert(id, session);
        } else {
            stack.release(id);
        }
    }

    /// Moves one session forward; false once it is finished.
    fn progress(&mut self, stack: &mut Stack, id: ConnId, s: &mut Session) -> bool {
        loop {
            match stack.state(id) {
                State::Closed | State::TimeWait => return false,
                State::SynSent | State::SynReceived => return true,
                _ => {}
            }
            let mut moved = self.flush(stack, id, s);
            if !s.closing && s.pending() < MAX_PENDING_OUT {
                match stack.try_recv(id, &mut self.buf) {
                    Err(RecvError::WouldBlock | RecvError::Finished) | Ok(0) => {}
                    Ok(n) => {
                        moved = true;
                        if self.echo {
                            s.output.extend_from_slice(&self.buf[..n]);
                        } else {
                            s.input.extend_from_slice(&self.buf[..n]);
                        }
                    }
                    Err(_) => {
                        stack.abort(id);
                        return false;
                    }
                }
            }
            if !self.echo && !s.busy() && !s.closing {
                moved |= self.handle_requests(s);
            }
            let peer_done = stack.connection(id).is_none_or(|c| c.at_eof());
            if !s.busy()
                && !s.closing
                && (s.close_after || (peer_done && (self.echo || s.input.is_empty())))
            {
                stack.close(id);
                s.closing = true;
            }
            if !moved {
                return true;
            }
        }
    }

    /// Sends buffered output, refilling from the file being served.
    fn flush(&mut self, stack: &mut Stack, id: ConnId, s: &mut Session) -> bool {
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
                    return moved;
                }
            }
            match stack.try_send(id, &s.output[s.sent..]) {
                Ok(0) | Err(SendError::WouldBlock) => return moved,
                Ok(n) => {
                    s.sent += n;
                    moved = true;
                }
                Err(_) => {
                    s.output.clear();
                    s.sent = 0;
                    s.file = None;
                    return moved;
                }
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
    if !args.echo && !args.root.is_dir() {
        anyhow::bail!("--root {} is not a directory", args.root.display());
    }
    if args.queues == Some(1) || (args.queues.is_none() && args.stack.queue.is_some()) {
        let mut rt: Runtime = open_runtime(&args.stack, &[args.port])?;
        return serve_on(&mut rt, args, true);
    }
    run_sharded(args)
}

/// Several stacks: the program is loaded once, every RX queue gets its socket, and the
/// queues are dealt to the stacks (queue q to stack q mod N), each on a thread pinned to
/// its own core. A flow stays on its queue (RSS), so it always meets the same stack.
/// Steering starts once every socket is registered, so no packet for the stack reaches
/// a queue without one.
fn run_sharded(args: &ServeArgs) -> anyhow::Result<()> {
    use crate::device::xdp::{QueueChoice, XdpProgram, XdpQueues, choose_queues};
    use std::sync::{Arc, Barrier};
    let plan = Arc::new(super::setup::plan(&args.stack, &[args.port])?);
    let program = XdpProgram::load(&plan.iface, args.stack.xdp_mode)?;
    let queues = choose_queues(&program, QueueChoice::All)?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let stacks = match args.queues {
        Some(0) => anyhow::bail!("--queues must be at least 1"),
        Some(n) if n as usize > queues.len() => anyhow::bail!(
            "--queues {n}: {} has {} RX queue(s), so at most {} stacks",
            plan.iface,
            queues.len(),
            queues.len()
        ),
        Some(n) => n as usize,
        None => queues.len().min(cores.len().max(1)),
    };
    let bound = Arc::new(Barrier::new(stacks + 1));
    let mut shards = super::runtime::Shards::new(queues.clone(), stacks);
    // Stacks still serving: one that has finished keeps its queues polled (handing over
    // frames of the others' connections) until every stack is done.
    let serving = Arc::new(std::sync::atomic::AtomicUsize::new(stacks));
    let mut threads = Vec::new();
    for shard in 0..stacks {
        let member = shards.member(shard);
        let (plan, program, bound, args, serving) = (
            plan.clone(),
            program.clone(),
            bound.clone(),
            args.clone(),
            serving.clone(),
        );
        let core = cores.get(shard % cores.len().max(1)).copied();
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let done = StillServing(serving.clone());
            if let Some(core) = core {
                core_affinity::set_for_current(core);
            }
            let device = XdpQueues::bind(&program, &member.queues);
            bound.wait();
            let mut rt = plan.runtime(super::runtime::NetDevice::Plain(device?))?;
            let mine = member.queues.clone();
            member.join(&mut rt);
            drop(program);
            let result = serve_on(&mut rt, &args, false);
            drop(done);
            while serving.load(std::sync::atomic::Ordering::Acquire) > 0 {
                rt.turn();
                rt.idle();
            }
            let s = &rt.stack.stats;
            eprintln!(
                "stack {shard} (queues {mine:?}): {} connections, {} frames in, {} frames out",
                s.connections_opened, s.rx_frames, s.tx_frames
            );
            result
        }));
    }
    bound.wait();
    program
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .enable(plan.steer)?;
    eprintln!(
        "ready: serving {} on {}:{} (RX queues: {}, stacks: {stacks})",
        args.root.display(),
        plan.stack.ip,
        args.port,
        queues.len()
    );
    drop(program);
    let mut first_error = None;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(_) => {
                first_error = first_error.or(Some(anyhow::anyhow!("a queue's thread panicked")))
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Counts a sharded stack as serving until dropped (on every way out of its thread).
struct StillServing(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StillServing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Release);
    }
}

/// The server loop on one runtime, then the graceful shutdown.
fn serve_on(rt: &mut Runtime, args: &ServeArgs, announce: bool) -> anyhow::Result<()> {
    rt.stack.unlisten(args.port);
    // The gateway's MAC from the kernel's neighbour table, if it has it (a hint; SYNs
    // teach the stack the next hop of each client anyway).
    if let Some(gateway) = rt.stack.config().gateway {
        let _ = super::setup::resolve_next_hop(rt, gateway, Duration::from_millis(500));
    }
    rt.stack
        .listen(args.port, args.backlog)
        .map_err(|e| anyhow::anyhow!("listen on {}: {e}", args.port))?;
    if announce {
        eprintln!(
            "ready: serving {} on {}:{} ({} mode)",
            if args.echo {
                "echo".to_string()
            } else {
                args.root.display().to_string()
            },
            rt.stack.ip(),
            args.port,
            rt.device.xdp().attached_mode()
        );
    }
    let mut server = Server::new(args.root.clone(), args.echo, args.port);
    server.list = args.list;
    while !rt.stopped() {
        rt.turn();
        server.turn(&mut rt.stack, true);
        rt.idle();
    }
    // Graceful shutdown: stop accepting, let responses in flight finish within the
    // grace period, close with FIN, then the XDP program goes with the process.
    rt.stack.unlisten(args.port);
    let deadline: Instant = rt.now() + Duration::from_secs_f64(args.grace);
    // The stack's count, as --stats reports it (closing and TIME-WAIT included).
    eprintln!(
        "shutting down: {} connections open ({} with a client session)",
        rt.stack.connection_count(),
        server.open_sessions()
    );
    for (id, session) in server.sessions.iter_mut() {
        // Idle keep-alive connections close now; busy ones after their response.
        session.close_after = true;
        server.work.push(*id);
    }
    while rt.now() < deadline && server.open_sessions() > 0 {
        rt.turn();
        server.turn(&mut rt.stack, false);
    }
    // Whatever is left past the grace period is reset.
    for id in server.sessions.keys().copied().collect::<Vec<_>>() {
        rt.stack.abort(id);
    }
    let end = rt.now() + Duration::from_millis(200);
    while rt.now() < end {
        rt.turn();
    }
    if args.stack.stats {
        print_stats(rt);
    }
    super::setup::warn_about_losses(rt);
    Ok(())
}
