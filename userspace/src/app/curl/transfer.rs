//! One URL from request to output (redirects, cookies, -D, -i, -f, -C, -J), the retry
//! loop around it, and the loop over every URL of the command line: one after the
//! other, or with -Z up to --parallel-max at once, all on one stack, with kept-alive
//! connections reused from one transfer to the next.
use super::cookies::Jar;
use super::output::{Dest, Sink, disposition_name, remote_name};
use super::progress::Progress;
use super::proxy::Proxy;
use super::request::{Hop, Payload, Prepared, build_head, initial_method};
use super::resolve::{ResolveEntry, display_host, parse_resolve, resolve};
use super::response::{Chunked, Decoder, Framing, Response, parse_head};
use super::transport::{Conn, Io, TlsParams, block_on};
use super::writeout::{Info, Stream, render};
use super::*;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{IsTerminal, Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Where one URL's body goes, as the command line said.
#[derive(Debug, Clone)]
enum Spec {
    Stdout,
    File(PathBuf),
    Remote,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PoolKey {
    /// The addresses the name resolved to (a connection to any of them serves).
    ips: Vec<IpAddr>,
    port: u16,
    https: bool,
    host: String,
}

/// What the transfers of one command line share; each runs as a future on one stack.
impl PoolKey {
    fn new(target: &Target, ips: &[IpAddr]) -> PoolKey {
        PoolKey {
            ips: ips.to_vec(),
            port: target.port,
            https: target.https,
            host: target.host.clone(),
        }
    }
}

struct Session<'a> {
    args: &'a CurlArgs,
    prepared: Prepared,
    resolve: Vec<ResolveEntry>,
    jar: RefCell<Jar>,
    io: Io,
    /// Idle kept-alive connections.
    pool: RefCell<Vec<(PoolKey, Conn)>>,
    dump: RefCell<Option<Box<dyn Write>>>,
    /// Connections made so far (curl's "Connection #N").
    connections: Cell<u32>,
    /// -Z: places whose first request has no answer yet, and places that answered.
    first_in_flight: RefCell<Vec<PoolKey>>,
    answered: RefCell<Vec<PoolKey>>,
    /// Body bytes received and announced by all transfers, for -Z's meter.
    downloaded: Cell<u64>,
    expected: Cell<u64>,
}

type Transfer<'a> = Pin<Box<dyn Future<Output = (Result<(), CurlError>, Info)> + 'a>>;

fn read_format(arg: &str) -> String {
    match arg.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            let _ = std::io::stdin().read_to_string(&mut s);
            s
        }
        Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
        None => arg.to_string(),
    }
}

fn print_error(args: &CurlArgs, e: &CurlError) {
    if args.show_errors() && !e.message.is_empty() {
        eprintln!("curl: ({}) {}", e.code, e.message);
    }
}

pub fn run_all(args: &CurlArgs, urls: &[String]) -> Result<(), CurlError> {
    let resolve = args
        .resolve
        .iter()
        .map(|e| parse_resolve(e))
        .collect::<Result<Vec<_>, _>>()?;
    let prepared = Prepared::new(args)?;
    let format = args.write_out.as_deref().map(read_format);
    let session = Session {
        args,
        prepared,
        resolve,
        jar: RefCell::new(Jar::new(&args.cookie, args.cookie_jar.as_deref())),
        io: Io::new(
            args.stack_args(),
            args.verbose,
            args.keepalive_time
                .map(|s| std::time::Duration::from_secs(u64::from(s.max(1)))),
        ),
        pool: RefCell::new(Vec::new()),
        dump: RefCell::new(None),
        connections: Cell::new(0),
        first_in_flight: RefCell::new(Vec::new()),
        answered: RefCell::new(Vec::new()),
        downloaded: Cell::new(0),
        expected: Cell::new(0),
    };
    // -o and -O pair with the URLs in the order they were given.
    let mut outputs: std::collections::VecDeque<Spec> = if args.output_order.is_empty() {
        args.output
            .iter()
            .map(|o| Spec::File(o.clone()))
            .chain((0..args.remote_name).map(|_| Spec::Remote))
            .collect()
    } else {
        args.output_order
            .iter()
            .filter_map(|o| match o {
                Some(i) => args.output.get(*i).cloned().map(Spec::File),
                None => Some(Spec::Remote),
            })
            .collect()
    };
    let mut queue = std::collections::VecDeque::new();
    for url in urls {
        let spec = if let Some(o) = outputs.pop_front() {
            o
        } else if args.remote_name_all {
            Spec::Remote
        } else {
            Spec::Stdout
        };
        let expanded = if args.globoff {
            vec![super::glob::Expanded {
                url: url.clone(),
                values: Vec::new(),
            }]
        } else {
            super::glob::expand(url)?
        };
        for e in expanded {
            let spec = match &spec {
                Spec::File(template) => Spec::File(PathBuf::from(super::glob::output_name(
                    &template.to_string_lossy(),
                    &e.values,
                ))),
                other => other.clone(),
            };
            queue.push_back((queue.len(), e.url, spec));
        }
    }
    let at_once = if args.parallel {
        args.parallel_max.clamp(1, 300)
    } else {
        1
    };
    let mut running: Vec<Transfer<'_>> = Vec::new();
    let mut cx = Context::from_waker(session.io.waker());
    let mut last = Ok(());
    let mut left = queue.len();
    let total = queue.len();
    let mut meter = (args.parallel && !args.silent && !args.no_progress_meter)
        .then(super::progress::ParallelMeter::new);
    'run: loop {
        while running.len() < at_once
            && let Some((i, url, spec)) = queue.pop_front()
        {
            let session = &session;
            running.push(Box::pin(async move {
                session.transfer_with_retry(i, &url, &spec).await
            }));
        }
        if running.is_empty() {
            break;
        }
        let mut k = 0;
        let mut finished = false;
        while k < running.len() {
            let Poll::Ready((result, info)) = running[k].as_mut().poll(&mut cx) else {
                k += 1;
                continue;
            };
            finished = true;
            drop(running.remove(k));
            left -= 1;
            if matches!(&result, Err(e) if killed_by(e.code).is_some()) {
                // Ctrl-C: nothing more is written; the runtime goes (XDP detached).
                drop(running);
                drop(session);
                return result;
            }
            if let Some(format) = &format {
                write_out(format, &info);
            }
            let failed = result.is_err();
            if left > 0
                && let Err(e) = &result
            {
                print_error(args, e);
            }
            last = result;
            if failed && args.fail_early {
                break 'run;
            }
        }
        if let Some(m) = &mut meter {
            m.update(&session.totals(total - queue.len(), running.len()), false);
        }
        if !finished {
            // Every transfer waits: until a connection has news or a deadline.
            session.io.wait();
        }
    }
    if let Some(m) = &mut meter {
        m.update(&session.totals(total - queue.len(), running.len()), true);
    }
    drop(running);
    block_on(&session.io, session.shutdown());
    // What the stack lost that the user needed (segments dropped for checksums,
    // packets on queues without a socket): `-v` says so, and so does a failure, in its
    // one line.
    let losses = session.io.diagnosis();
    if args.verbose {
        for line in &losses {
            eprintln!("* {line}");
        }
    }
    if let (Err(e), Some(first)) = (&mut last, losses.first()) {
        e.message = format!("{} ({first})", e.message);
    }
    last
}

fn write_out(format: &str, info: &Info) {
    for (stream, text) in render(format, info) {
        match stream {
            Stream::Stdout => {
                let mut out = std::io::stdout();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            Stream::Stderr => eprint!("{text}"),
        }
    }
}

impl Session<'_> {
    async fn shutdown(&self) {
        let pool = std::mem::take(&mut *self.pool.borrow_mut());
        for (key, conn) in pool {
            self.io.close(conn).await;
            if self.args.verbose {
                eprintln!("* Closing connection to {}", key.host);
            }
        }
        self.io.close_all().await;
        if self.args.stack.stats {
            self.io.print_stats();
        }
        if let Some(d) = self.dump.borrow_mut().as_mut() {
            let _ = d.flush();
        }
        if let Some(path) = &self.args.cookie_jar
            && let Err(e) = self.jar.borrow().save(path)
            && self.args.show_errors()
        {
            eprintln!(
                "curl: WARNING: failed to save cookies in {}: {e}",
                path.display()
            );
        }
    }

    async fn transfer_with_retry(
        &self,
        urlnum: usize,
        url: &str,
        spec: &Spec,
    ) -> (Result<(), CurlError>, Info) {
        let args = self.args;
        let start = Instant::now();
        let mut left = args.retry;
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut info = Info {
                urlnum,
                url: url.to_string(),
                ..Default::default()
            };
            let t0 = Instant::now();
            let result = self.transfer(url, spec, &mut info, t0).await;
            info.time_total = t0.elapsed().as_secs_f64();
            if let Err(e) = &result {
                info.exitcode = e.code;
                info.errormsg = Some(e.message.clone());
            }
            let http_retry = matches!(info.http_code, 408 | 429 | 500 | 502 | 503 | 504)
                && matches!(
                    &result,
                    Ok(())
                        | Err(CurlError {
                            code: EXIT_HTTP_ERROR,
                            ..
                        })
                );
            let reason = match &result {
                Err(e) if killed_by(e.code).is_some() => None,
                Err(e) if e.code == EXIT_TIMEOUT || e.code == EXIT_CANNOT_RESOLVE => {
                    Some(": timeout")
                }
                Err(e) if e.code == EXIT_CANNOT_CONNECT && args.retry_connrefused => {
                    Some(": connection refused")
                }
                _ if http_retry => Some(": HTTP error"),
                Err(_) if args.retry_all_errors => Some(" (retrying all errors)"),
                _ => None,
            };
            let Some(reason) = reason.filter(|_| left > 0) else {
                return (result, info);
            };
            let retry_after = info
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("retry-after"))
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let delay = retry_after.unwrap_or(match args.retry_delay {
                Some(d) if d > 0.0 => Duration::from_secs_f64(d),
                _ => backoff,
            });
            if let Some(max) = args.retry_max_time
                && max > 0.0
                && start.elapsed().as_secs_f64() >= max
            {
                return (result, info);
            }
            // A warning, which -s silences (-S brings back errors, not warnings).
            if !args.silent {
                let secs = delay.as_secs();
                eprintln!(
                    "Warning: Problem {reason}. Will retry in {secs} second{}. {left} retr{} left.",
                    if secs == 1 { "" } else { "s" },
                    if left > 1 { "ies" } else { "y" }
                );
            }
            left -= 1;
            backoff = (backoff * 2).min(Duration::from_secs(600));
            if let Err(e) = self.io.sleep(delay).await {
                return (Err(e), info);
            }
        }
    }

    /// The end of a transfer that starts at `t0` (-m).
    fn deadline(&self, t0: Instant) -> Option<Instant> {
        self.args
            .max_time
            .filter(|s| *s > 0.0)
            .map(|s| t0 + Duration::from_secs_f64(s))
    }

    /// -Z as curl does it (its "pipewait"): a transfer to a place whose first request
    /// has no answer yet waits for that answer, which may free a connection to reuse,
    /// before it opens one of its own.
    async fn pipewait(&self, key: &PoolKey) {
        std::future::poll_fn(|_| {
            if self.answered.borrow().contains(key) {
                return Poll::Ready(());
            }
            let mut in_flight = self.first_in_flight.borrow_mut();
            if in_flight.contains(key) {
                return Poll::Pending;
            }
            in_flight.push(key.clone());
            Poll::Ready(())
        })
        .await
    }

    /// A request to `key` got its answer (or failed): the transfers waiting may go.
    fn settle(&self, key: &PoolKey) {
        self.first_in_flight.borrow_mut().retain(|k| k != key);
        let mut answered = self.answered.borrow_mut();
        if !answered.contains(key) {
            answered.push(key.clone());
        }
    }

    /// A kept-alive connection to the same place, or a new one.
    async fn connection(
        &self,
        target: &Target,
        ips: &[IpAddr],
        via: Option<&Proxy>,
        info: &mut Info,
        t0: Instant,
    ) -> Result<(Conn, bool), CurlError> {
        let args = self.args;
        let key = PoolKey::new(target, ips);
        if args.parallel {
            self.pipewait(&key).await;
        }
        let pooled = {
            let mut pool = self.pool.borrow_mut();
            let pos = pool.iter().position(|(k, _)| *k == key);
            pos.map(|p| pool.remove(p).1)
        };
        if let Some(conn) = pooled {
            if self.io.reusable(conn) {
                if args.verbose {
                    eprintln!("* Re-using existing connection with host {}", target.host);
                }
                self.io.set_deadline(conn, self.deadline(t0));
                return Ok((conn, true));
            }
            self.io.close(conn).await;
        }
        let timeout = Duration::from_secs_f64(args.connect_timeout.unwrap_or(30.0));
        let tls = target.https.then(|| TlsParams {
            host: &target.host,
            cacert: args.cacert.as_deref(),
            insecure: args.insecure,
        });
        // Through a proxy: TCP to the proxy; for https a tunnel, and TLS inside it.
        let port = via.map_or(target.port, |p| p.port);
        let (direct_tls, tunnel_tls) = match via {
            Some(_) => (None, tls),
            None => (tls, None),
        };
        let (conn, ip) = self
            .io
            .connect(
                display_host(via.map_or(&target.host, |p| &p.host)),
                ips,
                port,
                timeout,
                self.deadline(t0),
                direct_tls,
            )
            .await?;
        if let (Some(proxy), Some(params)) = (via, tunnel_tls) {
            let tunnel = self.tunnel(conn, target, proxy).await;
            let secured = match tunnel {
                Ok(()) => self.io.handshake(conn, &params).await,
                Err(e) => Err(e),
            };
            if let Err(e) = secured {
                self.io.abort(conn);
                return Err(e);
            }
        }
        info.num_connects += 1;
        info.time_connect = t0.elapsed().as_secs_f64();
        if target.https {
            info.time_appconnect = info.time_connect;
        }
        if args.verbose {
            eprintln!(
                "* Connected to {} ({ip}) port {} (#{})",
                display_host(&target.host),
                target.port,
                self.connections.get()
            );
        }
        self.connections.set(self.connections.get() + 1);
        Ok((conn, false))
    }

    /// Opens a CONNECT tunnel through a proxy to the target (RFC 9110 9.3.6): any 2xx
    /// answer is the tunnel; anything else is curl's (56).
    async fn tunnel(&self, conn: Conn, target: &Target, proxy: &Proxy) -> Result<(), CurlError> {
        let agent = match &self.args.user_agent {
            Some(a) if a.is_empty() => None,
            Some(a) => Some(a.as_str()),
            None => Some(USER_AGENT),
        };
        let request = super::proxy::connect_request(target, proxy, agent);
        if self.args.verbose {
            eprintln!(
                "* Establish HTTP proxy tunnel to {}:{}",
                target.host, target.port
            );
        }
        self.io.write(conn, &request).await?;
        match read_head(&self.io, conn, true, Vec::new(), false).await? {
            Some((response, _)) if (200..300).contains(&response.status) => Ok(()),
            Some((response, _)) => Err(fail(
                EXIT_RECV_ERROR,
                format!("CONNECT tunnel failed, response {}", response.status),
            )),
            None => Err(fail(EXIT_RECV_ERROR, "Proxy CONNECT aborted")),
        }
    }

    /// Sends a request and reads the response head (1xx skipped). A kept-alive
    /// connection that the server closed meanwhile is replaced once.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        target: &Target,
        ips: &[IpAddr],
        via: Option<&Proxy>,
        request: &[u8],
        head_request: bool,
        info: &mut Info,
        t0: Instant,
    ) -> Result<(Conn, Response, Vec<u8>), CurlError> {
        let (mut conn, mut reused) = self.connection(target, ips, via, info, t0).await?;
        loop {
            let t = &self.io;
            // The address the connection went to: Happy Eyeballs picked one.
            let peer = t.peer_addr(conn);
            info.remote_ip = peer.map(|p| p.ip()).or(ips.first().copied());
            info.remote_port = Some(via.map_or(target.port, |p| p.port));
            if let Some(local) = t.local_addr(conn) {
                info.local_ip = Some(local.ip());
                info.local_port = Some(local.port());
            }
            info.time_pretransfer = t0.elapsed().as_secs_f64();
            // As curl: the request's head under -v once the connection is up.
            if self.args.verbose {
                let text = String::from_utf8_lossy(request);
                for line in text.split("\r\n").take_while(|l| !l.is_empty()) {
                    eprintln!("> {line}");
                }
                eprintln!(">");
            }
            let got = self
                .send_request(conn, request, head_request, self.deadline(t0))
                .await;
            match got {
                Ok(Some((response, rest))) => {
                    info.size_request += request.len() as u64;
                    info.time_starttransfer = t0.elapsed().as_secs_f64();
                    return Ok((conn, response, rest));
                }
                Ok(None) if reused => {
                    t.abort(conn);
                    (conn, reused) = self.connection(target, ips, via, info, t0).await?;
                }
                Ok(None) => {
                    t.abort(conn);
                    return Err(fail(52, "Empty reply from server"));
                }
                Err(e) if reused && killed_by(e.code).is_none() && e.code != EXIT_TIMEOUT => {
                    t.abort(conn);
                    (conn, reused) = self.connection(target, ips, via, info, t0).await?;
                }
                Err(e) => {
                    t.abort(conn);
                    return Err(e);
                }
            }
        }
    }

    /// Writes a request and reads the answer's head. A body over 1 MiB goes after the
    /// server's 100 Continue, or after a second without an answer, as curl does; a
    /// final answer instead means the body is not sent and the connection not reused.
    async fn send_request(
        &self,
        conn: Conn,
        request: &[u8],
        head_request: bool,
        deadline: Option<Instant>,
    ) -> Result<Option<(Response, Vec<u8>)>, CurlError> {
        let t = &self.io;
        let head_len = request
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(request.len(), |p| p + 4);
        let (head, body) = request.split_at(head_len);
        let expect = String::from_utf8_lossy(head)
            .to_ascii_lowercase()
            .contains("\r\nexpect: 100-continue\r\n");
        if !expect || body.is_empty() {
            t.write(conn, request).await?;
            return read_head(t, conn, head_request, Vec::new(), false).await;
        }
        t.write(conn, head).await?;
        let wait = Instant::now() + Duration::from_secs(1);
        t.set_deadline(conn, Some(deadline.map_or(wait, |d| d.min(wait))));
        let first = read_head(t, conn, head_request, Vec::new(), true).await;
        t.set_deadline(conn, deadline);
        let rest = match first {
            Ok(Some((r, rest))) if r.status == 100 => rest,
            Ok(Some((mut r, rest))) => {
                r.close = true;
                return Ok(Some((r, rest)));
            }
            Err(e) if e.code == EXIT_TIMEOUT && deadline.is_none_or(|d| Instant::now() < d) => {
                Vec::new()
            }
            other => return other,
        };
        t.write(conn, body).await?;
        read_head(t, conn, head_request, rest, false).await
    }

    fn dump_head(&self, head: &[u8]) -> Result<(), CurlError> {
        let Some(path) = &self.args.dump_header else {
            return Ok(());
        };
        let mut dump = self.dump.borrow_mut();
        if dump.is_none() {
            let out: Box<dyn Write> = if path.as_os_str() == "-" {
                Box::new(std::io::stdout())
            } else {
                Box::new(std::fs::File::create(path).map_err(|e| {
                    fail(
                        EXIT_WRITE_ERROR,
                        format!("Failed to open {}: {e}", path.display()),
                    )
                })?)
            };
            *dump = Some(out);
        }
        let d = dump.as_mut().expect("opened above");
        d.write_all(head)
            .and_then(|()| d.flush())
            .map_err(|e| fail(EXIT_WRITE_ERROR, format!("Failed writing header: {e}")))
    }

    fn totals(&self, started: usize, running: usize) -> super::progress::Totals {
        super::progress::Totals {
            downloaded: self.downloaded.get(),
            expected: self.expected.get(),
            started,
            running,
        }
    }

    /// Where this transfer's output goes, made when the first byte is due.
    fn sink(&self, dest: &Dest, append: bool) -> Sink {
        let args = self.args;
        let mut sink = Sink::new(
            dest.clone(),
            append,
            args.create_dirs,
            !args.silent,
            self.progress(dest),
        );
        sink.unbuffered = args.no_buffer;
        sink
    }

    fn progress(&self, dest: &Dest) -> Progress {
        let args = self.args;
        let to_terminal = matches!(dest, Dest::Stdout { .. }) && std::io::stdout().is_terminal();
        // -Z transfers run at once: one meter per transfer would garble stderr.
        if args.silent || args.no_progress_meter || to_terminal || args.parallel {
            Progress::Off
        } else if args.progress_bar {
            Progress::bar()
        } else {
            Progress::meter()
        }
    }

    async fn transfer(
        &self,
        url: &str,
        spec: &Spec,
        info: &mut Info,
        t0: Instant,
    ) -> Result<(), CurlError> {
        let args = self.args;
        let mut target = parse_url(url)?;
        // -T to a URL ending in '/' names the file after the upload.
        if let Some(file) = args.upload_file.as_deref().filter(|f| *f != "-")
            && target.url.path().ends_with('/')
            && let Some(name) = std::path::Path::new(file).file_name()
        {
            let path = format!("{}{}", target.url.path(), name.to_string_lossy());
            target.url.set_path(&path);
        }
        if args.get
            && let Some(data) = &self.prepared.data
        {
            let data = String::from_utf8_lossy(data);
            let query = match target.url.query() {
                Some(q) if !q.is_empty() => format!("{q}&{data}"),
                _ => data.into_owned(),
            };
            target.url.set_query(Some(&query));
        }
        info.url_effective = target.url.to_string();
        info.scheme = target.url.scheme().to_ascii_uppercase();
        info.referer = args.referer.clone();
        let mut dest = match spec {
            Spec::Stdout => Dest::Stdout { explicit: false },
            Spec::File(p) if p.as_os_str() == "-" => Dest::Stdout { explicit: true },
            Spec::File(p) => Dest::File(p.clone()),
            Spec::Remote => Dest::File(remote_name(&target.url)?),
        };
        if let (Some(dir), Dest::File(p)) = (&args.output_dir, &mut dest)
            && p.is_relative()
        {
            *p = dir.join(&*p);
        }
        let offset = match args.continue_at.as_deref() {
            None => 0,
            Some("-") => match &dest {
                Dest::File(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
                Dest::Stdout { .. } => 0,
            },
            Some(n) => n
                .parse::<u64>()
                .map_err(|_| fail(EXIT_FAILED_INIT, format!("bad --continue-at offset {n}")))?,
        };
        let resume_range = (offset > 0).then(|| format!("{offset}-"));
        let range = args.range.clone().or(resume_range);
        let mut method = initial_method(args, &self.prepared);
        let mut body: Option<Payload> = self.prepared.payload.clone();
        let first_host = target.host.clone();
        let mut sink: Option<Sink> = None;
        let mut redirects = 0u32;
        let result = loop {
            let proxy = super::proxy::for_target(args, &target)?;
            let family = args.family();
            // Through a proxy, only the proxy's name is resolved here.
            let ips = match &proxy {
                Some(p) => resolve(&self.resolve, &p.host, p.port, family).map_err(|e| {
                    if e.code == EXIT_CANNOT_RESOLVE {
                        fail(
                            super::proxy::EXIT_CANNOT_RESOLVE_PROXY,
                            format!("Could not resolve proxy: {}", p.host),
                        )
                    } else {
                        e
                    }
                })?,
                None => resolve(&self.resolve, &target.host, target.port, family)?,
            };
            info.time_namelookup = t0.elapsed().as_secs_f64();
            // -u goes to the first host only (curl without --location-trusted); URL
            // credentials belong to their URL.
            let credentials = target.credentials().or_else(|| {
                (target.host.eq_ignore_ascii_case(&first_host))
                    .then(|| self.prepared.user.clone())
                    .flatten()
            });
            let path = target.path();
            let cookie = self.jar.borrow().header(&target.host, &path, target.https);
            let host = target.host_header();
            // Plain http through a proxy names the whole URL (RFC 9112 3.2.2).
            let plain_proxy = proxy.as_ref().filter(|_| !target.https);
            let request_target = match plain_proxy {
                Some(_) => super::proxy::absolute_target(&target),
                None => path.clone(),
            };
            let hop = Hop {
                method: &method,
                path: &request_target,
                proxy: plain_proxy.map(|p| p.credentials.as_deref()),
                host: &host,
                credentials: credentials.as_deref(),
                range: range.as_deref(),
                cookie: cookie.as_deref(),
                body: body.as_ref(),
            };
            let mut request = build_head(args, &self.prepared, &hop);
            if let Some(b) = &body {
                request.extend_from_slice(&b.bytes);
                info.size_upload = b.bytes.len() as u64;
            }
            let head_request = method.eq_ignore_ascii_case("HEAD");
            let exchanged = self
                .exchange(
                    &target,
                    &ips,
                    proxy.as_ref(),
                    &request,
                    head_request,
                    info,
                    t0,
                )
                .await;
            self.settle(&PoolKey::new(&target, &ips));
            let (conn, response, rest) = exchanged?;
            info.method = method.clone();
            info.http_code = response.status;
            info.headers = response.headers.clone();
            info.size_header += response.head.len() as u64;
            if args.verbose {
                for line in String::from_utf8_lossy(&response.head)
                    .split("\r\n")
                    .filter(|l| !l.is_empty())
                {
                    eprintln!("< {line}");
                }
                eprintln!("<");
            }
            self.dump_head(&response.head)?;
            let set_cookies: Vec<&str> = response.header_all("set-cookie").collect();
            self.jar
                .borrow_mut()
                .store(&target.host, target.url.path(), &set_cookies);
            let location = response.header("location").map(|l| target.url.join(l));
            let is_redirect = matches!(response.status, 301 | 302 | 303 | 307 | 308);
            let follow = args.location && is_redirect && location.is_some();
            if args.include || args.head {
                let s = sink.get_or_insert_with(|| self.sink(&dest, offset > 0));
                if let Err(e) = s.write_head(&response.head) {
                    self.io.abort(conn);
                    break Err(e);
                }
            }
            // A target that is no URL ends a -L transfer, as curl's (3); without -L it
            // is only not reported as %{redirect_url}.
            let location = match location {
                Some(Err(e)) if follow => {
                    self.discard(conn, &target, &ips, &response, rest).await;
                    break Err(fail(
                        EXIT_BAD_URL,
                        format!("The redirect target URL could not be parsed: {e}"),
                    ));
                }
                other => other.and_then(Result::ok),
            };
            if follow && let Some(next) = location {
                redirects += 1;
                info.num_redirects = redirects;
                if args.max_redirs >= 0 && i64::from(redirects) > args.max_redirs {
                    self.io.abort(conn);
                    break Err(fail(
                        EXIT_TOO_MANY_REDIRECTS,
                        format!("Maximum ({}) redirects followed", args.max_redirs),
                    ));
                }
                // The redirect's own body is read and dropped.
                self.discard(conn, &target, &ips, &response, rest).await;
                if args.verbose {
                    eprintln!("* Issue another request to this URL: '{next}'");
                }
                // 301/302 turn a POST into a GET, 303 turns everything but HEAD into
                // GET; 307 and 308 keep the method and body. -X keeps its method.
                let switch = match response.status {
                    301 | 302 => method == "POST",
                    303 => method != "HEAD",
                    _ => false,
                };
                if switch {
                    body = None;
                    if args.method.is_none() {
                        method = "GET".into();
                    }
                }
                target = parse_url(next.as_str())?;
                info.url_effective = target.url.to_string();
                continue;
            }
            if is_redirect {
                info.redirect_url = location.map(|l| l.to_string());
            }
            if offset > 0 && args.range.is_none() && response.status == 416 {
                // curl takes 416 to a resume as "already complete": its body is dropped.
                self.discard(conn, &target, &ips, &response, rest).await;
                break Ok(());
            }
            // -z: a 304, or a document that does not meet the condition, is not output
            // (no file is made).
            if let Some(tc) = &self.prepared.time_cond
                && (response.status == 304
                    || (response.status == 200 && tc.unmet(response.header("last-modified"))))
            {
                if args.verbose {
                    eprintln!("* The requested document is not new enough");
                }
                self.discard(conn, &target, &ips, &response, rest).await;
                break Ok(());
            }
            let http_error = (args.fail || args.fail_with_body) && response.status >= 400;
            if http_error && !args.fail_with_body {
                self.io.abort(conn);
                break Err(http_error_status(response.status));
            }
            if offset > 0 && args.range.is_none() && response.status == 200 && !head_request {
                self.io.abort(conn);
                break Err(fail(
                    EXIT_RANGE_ERROR,
                    "HTTP server doesn't seem to support byte ranges. Cannot resume.",
                ));
            }
            if args.remote_header_name
                && matches!(spec, Spec::Remote)
                && sink.is_none()
                && let Some(name) = response
                    .header("content-disposition")
                    .and_then(disposition_name)
            {
                let path = PathBuf::from(name);
                if path.exists() {
                    self.io.abort(conn);
                    break Err(fail(
                        EXIT_WRITE_ERROR,
                        format!("Refusing to overwrite {}: File exists", path.display()),
                    ));
                }
                dest = Dest::File(path);
            }
            if let Dest::File(p) = &dest {
                info.filename_effective = Some(p.display().to_string());
            }
            let s = sink.get_or_insert_with(|| self.sink(&dest, offset > 0));
            let announced = match response.framing {
                Framing::Length(n) => Some(n),
                _ => None,
            };
            s.progress.set_total(announced);
            self.expected
                .set(self.expected.get() + announced.unwrap_or(0));
            let encoding = response.header("content-encoding");
            let mut decoder = Decoder::new(encoding, args.compressed);
            let mut size = 0u64;
            let t = &self.io;
            let rate = args.limit_rate;
            let read = read_body(t, conn, response.framing, rest, rate, &mut |data| {
                size += data.len() as u64;
                self.downloaded
                    .set(self.downloaded.get() + data.len() as u64);
                decoder.feed(data, &mut |d| s.write(d))?;
                // The meter counts bytes as they come over the wire, as curl's does.
                s.progress.update(size);
                Ok(())
            })
            .await
            .and_then(|()| decoder.finish(&mut |d| s.write(d)));
            info.size_download = size;
            if let Err(e) = read {
                t.abort(conn);
                break Err(e);
            }
            self.release(conn, &target, &ips, &response, true).await;
            if http_error {
                // --fail-with-body: the body is out, the exit code still says 22.
                break Err(http_error_status(response.status));
            }
            break Ok(());
        };
        // Whatever was written reaches its destination, also after an error.
        if let Some(s) = &mut sink {
            let finished = s.finish();
            if result.is_ok() {
                finished?;
            }
        }
        // -R: the file gets the server's Last-Modified time.
        if args.remote_time
            && result.is_ok()
            && let Dest::File(path) = &dest
            && let Some(time) = info
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("last-modified"))
                .and_then(|(_, v)| httpdate::parse_http_date(v).ok())
        {
            let _ = std::fs::File::options()
                .append(true)
                .open(path)
                .and_then(|f| f.set_modified(time));
        }
        result
    }

    /// Reads a body nobody wants (a redirect's, say) and lets the connection go.
    async fn discard(
        &self,
        conn: Conn,
        target: &Target,
        ips: &[IpAddr],
        response: &Response,
        rest: Vec<u8>,
    ) {
        let drained = read_body(
            &self.io,
            conn,
            response.framing,
            rest,
            None,
            &mut |_| Ok(()),
        )
        .await;
        self.release(conn, target, ips, response, drained.is_ok())
            .await;
    }

    /// Puts a connection back in the pool, or closes it.
    async fn release(
        &self,
        conn: Conn,
        target: &Target,
        ips: &[IpAddr],
        response: &Response,
        complete: bool,
    ) {
        let t = &self.io;
        if complete && !response.closes() && t.reusable(conn) {
            if self.args.verbose {
                eprintln!("* Connection to host {} left intact", target.host);
            }
            self.pool
                .borrow_mut()
                .push((PoolKey::new(target, ips), conn));
        } else {
            t.close(conn).await;
            if self.args.verbose {
                eprintln!("* Closing connection to {}", target.host);
            }
        }
    }
}

fn http_error_status(status: u16) -> CurlError {
    fail(
        EXIT_HTTP_ERROR,
        format!("The requested URL returned error: {status}"),
    )
}

/// Reads until a final response head: None when the stream ends before any byte.
/// Reads until a final response head (or a 100 Continue, with `until_continue`), from
/// what `raw` already holds and then the connection.
async fn read_head(
    t: &Io,
    conn: Conn,
    head_request: bool,
    mut raw: Vec<u8>,
    until_continue: bool,
) -> Result<Option<(Response, Vec<u8>)>, CurlError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some((used, response)) = parse_head(&raw, head_request)? {
            if (100..200).contains(&response.status) && response.status != 101 {
                if until_continue && response.status == 100 {
                    return Ok(Some((response, raw.split_off(used))));
                }
                raw.drain(..used);
                continue; // an interim response
            }
            return Ok(Some((response, raw.split_off(used))));
        }
        let n = t.read(conn, &mut buf).await?;
        if n == 0 {
            // As curl: no complete header line yet counts as an empty reply (52).
            if !raw.contains(&b'\n') {
                return Ok(None);
            }
            return Err(fail(
                EXIT_RECV_ERROR,
                "Recv failure: connection closed in the headers",
            ));
        }
        // parse_head holds the head to curl's size limits.
        raw.extend_from_slice(&buf[..n]);
    }
}

/// --limit-rate: how long to pause so that `bytes` received since `elapsed` ago keep
/// to `rate` bytes a second on average (curl's average, not a burst limit).
fn pause_for(bytes: u64, elapsed: Duration, rate: u64) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(bytes as f64 / rate as f64).saturating_sub(elapsed)
}

/// Reads from a connection, keeping to --limit-rate: while it pauses, the stack's
/// receive window fills and the sender waits, as with curl.
struct Paced<'a> {
    t: &'a Io,
    conn: Conn,
    rate: Option<u64>,
    start: Instant,
    received: u64,
}

impl Paced<'_> {
    /// Passes the next received bytes, at most `limit` of them, to `out` (straight from
    /// the stack's receive buffer on a plain connection); how many came, 0 at the end.
    async fn pass(
        &mut self,
        buf: &mut [u8],
        limit: usize,
        out: &mut dyn FnMut(&[u8]) -> Result<(), CurlError>,
    ) -> Result<usize, CurlError> {
        if let Some(rate) = self.rate {
            let pause = pause_for(self.received, self.start.elapsed(), rate);
            if !pause.is_zero() {
                self.t.sleep(pause).await?;
            }
        }
        let n = self.t.read_with(self.conn, buf, limit, out).await?;
        self.received += n as u64;
        Ok(n)
    }
}

/// Reads a body by its framing, passing the payload to `out`, at most `rate` bytes a
/// second when given.
async fn read_body(
    t: &Io,
    conn: Conn,
    framing: Framing,
    rest: Vec<u8>,
    rate: Option<u64>,
    out: &mut dyn FnMut(&[u8]) -> Result<(), CurlError>,
) -> Result<(), CurlError> {
    let mut paced = Paced {
        t,
        conn,
        rate,
        start: Instant::now(),
        received: rest.len() as u64,
    };
    let mut buf = vec![0u8; 64 * 1024];
    match framing {
        Framing::None => Ok(()),
        Framing::Length(len) => {
            let take = usize::try_from(len).unwrap_or(usize::MAX).min(rest.len());
            out(&rest[..take])?;
            let mut remaining = len - take as u64;
            while remaining > 0 {
                let limit = usize::try_from(remaining).unwrap_or(usize::MAX);
                let n = paced.pass(&mut buf, limit, out).await?;
                if n == 0 {
                    return Err(fail(
                        18,
                        format!("transfer closed with {remaining} bytes remaining to read"),
                    ));
                }
                remaining -= (n as u64).min(remaining);
            }
            Ok(())
        }
        Framing::Chunked => {
            let mut decoder = Chunked::default();
            decoder.feed(&rest, out)?;
            while !decoder.done {
                let n = paced
                    .pass(&mut buf, usize::MAX, &mut |data| decoder.feed(data, out))
                    .await?;
                if n == 0 {
                    return Err(fail(
                        18,
                        "transfer closed with outstanding read data remaining",
                    ));
                }
            }
            Ok(())
        }
        Framing::UntilClose => {
            out(&rest)?;
            while paced.pass(&mut buf, usize::MAX, out).await? > 0 {}
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_rate_pauses_until_the_average_is_met() {
        let ms = Duration::from_millis;
        assert_eq!(pause_for(1000, ms(0), 1000), ms(1000));
        assert_eq!(pause_for(1000, ms(400), 1000), ms(600));
        assert_eq!(pause_for(1000, ms(1500), 1000), Duration::ZERO);
        assert_eq!(pause_for(0, ms(0), 1000), Duration::ZERO);
        assert_eq!(pause_for(5000, ms(0), 0), Duration::ZERO);
    }
}
