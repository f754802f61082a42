//! The byte streams curl's HTTP runs on: connect, write, read, close, and TLS on top.
//!
//! This is the only part of curl that knows about the stack, and it knows it as any
//! user of the library does: a [`userspace::Stack`] opened on first use, and
//! [`net::tokio::TcpStream`]s on it, each named by a [`Conn`] handle. Several are open
//! at once (kept-alive ones, and -Z's transfers). The calls are `async`; the poll loop
//! runs on its own thread and wakes the waiting transfer through its waker, and
//! [`Io::wait`] parks this thread until then (or the next deadline). The HTTP code above
//! sees nothing but these calls.
use super::resolve::{HAPPY_EYEBALLS_DELAY, eyeballs};
use super::{CurlError, EXIT_CANNOT_CONNECT, EXIT_RECV_ERROR, EXIT_TIMEOUT, fail, killed_by};
use crate::app::setup::StackArgs;
use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use userspace::net::{self, tokio::TcpStream};
use userspace::tcp::TcpError;

/// Happy Eyeballs' race (RFC 8305 section 5): `primary` at once, `secondary` (if
/// any) once `due` says its delay has passed or `primary` has failed to connect; the
/// first to connect wins and the other is dropped. A failure that is no "couldn't
/// connect" (a signal, -m) ends both; when both fail, the last one's error is curl's.
async fn race<T>(
    primary: impl Future<Output = Result<T, CurlError>>,
    secondary: Option<impl Future<Output = Result<T, CurlError>>>,
    mut due: impl FnMut() -> bool,
) -> Result<T, CurlError> {
    let mut primary = pin!(primary);
    let has_secondary = secondary.is_some();
    let mut secondary = pin!(secondary);
    let mut primary_failed: Option<CurlError> = None;
    let mut secondary_failed: Option<CurlError> = None;
    poll_fn(|cx| {
        if primary_failed.is_none()
            && let Poll::Ready(result) = primary.as_mut().poll(cx)
        {
            match result {
                Ok(won) => return Poll::Ready(Ok(won)),
                Err(e) if e.code != EXIT_CANNOT_CONNECT => return Poll::Ready(Err(e)),
                Err(e) => primary_failed = Some(e),
            }
        }
        if secondary_failed.is_none()
            && (primary_failed.is_some() || due())
            && let Some(fut) = secondary.as_mut().as_pin_mut()
            && let Poll::Ready(result) = fut.poll(cx)
        {
            match result {
                Ok(won) => return Poll::Ready(Ok(won)),
                Err(e) if e.code != EXIT_CANNOT_CONNECT => return Poll::Ready(Err(e)),
                Err(e) => secondary_failed = Some(e),
            }
        }
        if primary_failed.is_some() && (secondary_failed.is_some() || !has_secondary) {
            // The last family tried says what went wrong.
            let last = secondary_failed.take().or(primary_failed.take());
            return Poll::Ready(Err(last.expect("one failed")));
        }
        Poll::Pending
    })
    .await
}

/// The longest the thread parks without a wake-up: how soon Ctrl-C is noticed.
const MAX_PARK: Duration = Duration::from_millis(50);
/// How long the stack, when the process ends, lets closed connections get their last
/// bytes and FIN acknowledged.
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// A connection's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn(usize);

/// What a raw read or write needs: the connection and the transfer's deadline.
#[derive(Debug, Clone, Copy)]
struct Raw {
    conn: Conn,
    deadline: Option<Instant>,
}

struct Stream {
    tcp: TcpStream,
    deadline: Option<Instant>,
    tls: Option<rustls::ClientConnection>,
    /// The peer ended the stream.
    eof: bool,
}

struct Transport {
    stack: net::Stack,
    streams: Vec<Option<Stream>>,
    tls_config: Option<Arc<rustls::ClientConfig>>,
}

impl Transport {
    fn stream(&mut self, conn: Conn) -> Result<&mut Stream, CurlError> {
        self.streams
            .get_mut(conn.0)
            .and_then(Option::as_mut)
            .ok_or_else(|| fail(EXIT_RECV_ERROR, "connection already closed"))
    }
}

/// TLS settings for a connection: server name, CA file, -k.
pub struct TlsParams<'a> {
    pub host: &'a str,
    pub cacert: Option<&'a Path>,
    pub insecure: bool,
}

/// Wakes the thread that runs the transfers.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// The stack, opened on first use and shared by every transfer of the command line.
pub struct Io {
    inner: RefCell<Option<Transport>>,
    stack: StackArgs,
    verbose: bool,
    /// `--keepalive-time`: idle time before keep-alive probes, and between them.
    keepalive: Option<Duration>,
    /// The number of the signal (SIGINT, SIGTERM) that came once the stack was open,
    /// or 0.
    interrupted: Arc<AtomicUsize>,
    /// The earliest deadline of the waits pending since the last [`Io::wait`].
    next_deadline: Cell<Option<Instant>>,
    waker: Waker,
}

impl Io {
    pub fn new(stack: StackArgs, verbose: bool, keepalive: Option<Duration>) -> Io {
        Io {
            inner: RefCell::new(None),
            stack,
            verbose,
            keepalive,
            interrupted: Arc::new(AtomicUsize::new(0)),
            next_deadline: Cell::new(None),
            waker: Waker::from(Arc::new(Unpark(std::thread::current()))),
        }
    }

    /// Runs `f` on the transport, opening it first if needed.
    fn with<R>(&self, f: impl FnOnce(&mut Transport) -> R) -> Result<R, CurlError> {
        self.open_towards(None, f)
    }

    /// [`Io::with`], the stack opened (if it is not yet) on the kernel's route to
    /// `destination`. No route there is curl's "couldn't connect" (exit 7).
    fn open_towards<R>(
        &self,
        destination: Option<IpAddr>,
        f: impl FnOnce(&mut Transport) -> R,
    ) -> Result<R, CurlError> {
        let mut guard = self.inner.borrow_mut();
        if guard.is_none() {
            let mut builder = self.stack.builder().linger(CLOSE_LINGER);
            // The library picks the interface by the kernel's route to the destination,
            // IPv4 or IPv6.
            if let Some(ip) = destination {
                builder = builder.destination(ip);
            }
            let stack = builder.build().map_err(|e| match e.kind() {
                std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::HostUnreachable => {
                    fail(super::EXIT_CANNOT_CONNECT, format!("{e:#}"))
                }
                _ => fail(super::EXIT_FAILED_INIT, format!("{e:#}")),
            })?;
            if self.stack.stop_on_signals {
                for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                    let _ = signal_hook::flag::register_usize(
                        signal,
                        self.interrupted.clone(),
                        signal as usize,
                    );
                }
            }
            if self.verbose {
                eprintln!(
                    "* Stack on {} queues {:?} ({} XDP), TCP checksum {}, up to {} frames per transmit kick",
                    stack.interface(),
                    stack.queues(),
                    stack.xdp_mode(),
                    stack.tx_checksum(),
                    stack.tx_budget()
                );
            }
            *guard = Some(Transport {
                stack,
                streams: Vec::new(),
                tls_config: None,
            });
        }
        Ok(f(guard.as_mut().expect("opened above")))
    }

    pub fn is_open(&self) -> bool {
        self.inner.borrow().is_some()
    }

    /// The waker to poll the transfers with: it wakes [`Io::wait`].
    pub fn waker(&self) -> &Waker {
        &self.waker
    }

    /// Parks the thread until a connection has news for a transfer, the earliest
    /// deadline of a pending wait, or [`MAX_PARK`].
    pub fn wait(&self) {
        let park = self.next_deadline.take().map_or(MAX_PARK, |d| {
            d.saturating_duration_since(Instant::now()).min(MAX_PARK)
        });
        if !park.is_zero() {
            std::thread::park_timeout(park);
        }
    }

    /// Lines about what the stack dropped that the user needed ([`net::Stack::diagnose`]).
    pub fn diagnosis(&self) -> Vec<String> {
        self.inner
            .borrow()
            .as_ref()
            .and_then(|t| t.stack.diagnose().ok())
            .unwrap_or_default()
    }

    pub fn print_stats(&self) {
        if let Some(report) = self
            .inner
            .borrow()
            .as_ref()
            .and_then(|t| t.stack.report().ok())
        {
            eprint!("{report}");
        }
    }

    fn info(&self, line: &str) {
        if self.verbose {
            eprintln!("* {line}");
        }
    }

    /// Runs `fut` until it ends, the deadline passes, or Ctrl-C.
    async fn within<F: Future>(
        &self,
        deadline: Option<Instant>,
        fut: F,
    ) -> Result<F::Output, CurlError> {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            let signal = self.interrupted.load(Ordering::Relaxed);
            if signal != 0 {
                return Poll::Ready(Err(fail(-(signal as i32), "interrupted")));
            }
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return Poll::Ready(Err(fail(EXIT_TIMEOUT, "Operation timed out")));
                }
                let next = self.next_deadline.get().map_or(d, |n| n.min(d));
                self.next_deadline.set(Some(next));
            }
            Poll::Pending
        })
        .await
    }

    /// Polls `op` on a connection's TCP stream until it is ready, within the deadline.
    async fn on_stream<T>(
        &self,
        raw: Raw,
        mut op: impl FnMut(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<T>,
    ) -> Result<T, CurlError> {
        let ready = poll_fn(|cx| {
            let mut guard = self.inner.borrow_mut();
            match guard.as_mut().map(|t| t.stream(raw.conn)) {
                Some(Ok(s)) => op(Pin::new(&mut s.tcp), cx).map(Ok),
                Some(Err(e)) => Poll::Ready(Err(e)),
                None => Poll::Ready(Err(fail(EXIT_RECV_ERROR, "the stack is not open"))),
            }
        });
        self.within(raw.deadline, ready).await?
    }

    /// True once `at` has come; until then the thread's next wake-up is no later.
    fn due(&self, at: Instant) -> bool {
        if Instant::now() >= at {
            return true;
        }
        let next = self.next_deadline.get().map_or(at, |n| n.min(at));
        self.next_deadline.set(Some(next));
        false
    }

    /// Opens a TCP connection to the first of `addrs` that answers, Happy Eyeballs as
    /// curl does it (RFC 8305 sections 4 and 5): the addresses of the first one's family
    /// one after the other, those of the other family from [`HAPPY_EYEBALLS_DELAY`] on
    /// (or once the first family has failed); the first to connect wins and the other
    /// attempt is dropped. Then the TLS session, when asked. Every read and write on it
    /// ends at `deadline` (-m). The address connected to comes back with it.
    pub async fn connect(
        &self,
        host: &str,
        addrs: &[IpAddr],
        port: u16,
        connect_timeout: Duration,
        deadline: Option<Instant>,
        tls: Option<TlsParams<'_>>,
    ) -> Result<(Conn, IpAddr), CurlError> {
        let (first, later) = eyeballs(addrs);
        // The stack starts first (a cold start attaches XDP): the second family's delay
        // counts from the first connect, as curl's does from its connect(2). A failure
        // here is the first attempt's to report.
        if let Some(&ip) = first.first() {
            let _ = self.open_towards(Some(ip), |_| ());
        }
        let started = Instant::now();
        let family = |list: Vec<IpAddr>| async move {
            let mut last = fail(EXIT_CANNOT_CONNECT, "no address to connect to");
            for ip in list {
                match self
                    .connect_tcp(host, ip, port, connect_timeout, deadline)
                    .await
                {
                    Ok(tcp) => return Ok((tcp, ip)),
                    // A signal or -m ends every attempt.
                    Err(e) if e.code != EXIT_CANNOT_CONNECT => return Err(e),
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        let start_later = started + HAPPY_EYEBALLS_DELAY;
        let winner = race(
            family(first),
            (!later.is_empty()).then(|| family(later)),
            || self.due(start_later),
        )
        .await;
        let (tcp, ip) = winner?;
        let conn = self.register(tcp, deadline)?;
        if let Some(params) = tls
            && let Err(e) = self.handshake(conn, &params).await
        {
            self.abort(conn);
            return Err(e);
        }
        Ok((conn, ip))
    }

    /// One TCP connect to `ip`, with curl's messages and exit codes for its failures
    /// (which name `host` as curl names it).
    async fn connect_tcp(
        &self,
        host: &str,
        ip: IpAddr,
        port: u16,
        connect_timeout: Duration,
        deadline: Option<Instant>,
    ) -> Result<TcpStream, CurlError> {
        let addr = SocketAddr::new(ip, port);
        self.info(&format!("  Trying {addr}..."));
        let refused = |e: &dyn std::fmt::Display| {
            fail(
                EXIT_CANNOT_CONNECT,
                format!("Failed to connect to {host} port {port}: {e}"),
            )
        };
        let started = Instant::now();
        // As curl 7.88 says it when connect(2) fails at once (ENETUNREACH).
        let unreachable = |why: &dyn std::fmt::Display| {
            self.info(&format!("Immediate connect fail for {ip}: {why}"));
            fail(
                EXIT_CANNOT_CONNECT,
                format!(
                    "Failed to connect to {host} port {port} after {} ms: Couldn't connect to server",
                    started.elapsed().as_millis()
                ),
            )
        };
        let stack = match self.open_towards(Some(ip), |t| t.stack.clone()) {
            Ok(stack) => stack,
            Err(e) if e.code == EXIT_CANNOT_CONNECT => return Err(unreachable(&e.message)),
            Err(e) => return Err(e),
        };
        let connect_deadline = started + connect_timeout;
        let until = deadline.map_or(connect_deadline, |d| d.min(connect_deadline));
        // The library's own limit backs up `until` (which a zero timeout passes at once).
        let limit = connect_timeout.max(Duration::from_millis(1));
        let connecting = TcpStream::connect_timeout(&stack, &addr, limit);
        let connect_timed_out = || {
            // The time it really took, as curl reports it.
            fail(
                EXIT_TIMEOUT,
                format!(
                    "Failed to connect to {host} port {port} after {} ms: Timeout was reached",
                    started.elapsed().as_millis()
                ),
            )
        };
        // The library ends the connect at its own limit (as a timeout, or with what
        // went wrong: no ARP reply); `-m` when it comes first.
        let outer = deadline.filter(|d| *d < connect_deadline);
        let tcp = match self.within(outer, connecting).await {
            Ok(Ok(tcp)) => tcp,
            // An ICMP unreachable, in the stack's words.
            Ok(Err(e)) if e.get_ref().is_some_and(|inner| inner.is::<TcpError>()) => {
                return Err(refused(&e));
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NetworkUnreachable => {
                return Err(unreachable(&e));
            }
            // TCP's own answer (refused, reset, its SYNs given up on), as the kernel's
            // errno: curl 7.88 names it under -v and says "Couldn't connect" otherwise.
            Ok(Err(e)) if e.raw_os_error().is_some() => {
                self.info(&format!(
                    "connect to {ip} port {port} failed: {}",
                    in_words(&e)
                ));
                return Err(fail(
                    EXIT_CANNOT_CONNECT,
                    format!(
                        "Failed to connect to {host} port {port} after {} ms: Couldn't connect to server",
                        started.elapsed().as_millis()
                    ),
                ));
            }
            // The connect's time limit.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(connect_timed_out());
            }
            Ok(Err(e)) => return Err(refused(&e)),
            Err(e) if e.code == EXIT_TIMEOUT && until == connect_deadline => {
                return Err(connect_timed_out());
            }
            // `-m` ending the connect phase is curl's "Connection timed out".
            Err(e) if e.code == EXIT_TIMEOUT => {
                return Err(fail(
                    EXIT_TIMEOUT,
                    format!(
                        "Connection timed out after {} milliseconds",
                        started.elapsed().as_millis()
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        Ok(tcp)
    }

    /// Keeps a connected stream under a new handle.
    fn register(&self, tcp: TcpStream, deadline: Option<Instant>) -> Result<Conn, CurlError> {
        // RFC 1122 4.2.3.6 keep-alive, as curl's --keepalive-time sets TCP_KEEPIDLE and
        // TCP_KEEPINTVL (with Linux's default of 9 probes).
        if let Some(every) = self.keepalive {
            let _ = tcp.set_keepalive(Some(every));
        }
        self.with(|t| {
            let slot = t
                .streams
                .iter()
                .position(Option::is_none)
                .unwrap_or_else(|| {
                    t.streams.push(None);
                    t.streams.len() - 1
                });
            t.streams[slot] = Some(Stream {
                tcp,
                deadline,
                tls: None,
                eof: false,
            });
            Conn(slot)
        })
    }

    /// A kept-alive connection serves a new transfer, with that transfer's deadline.
    pub fn set_deadline(&self, conn: Conn, deadline: Option<Instant>) {
        let _ = self.with(|t| {
            if let Ok(s) = t.stream(conn) {
                s.deadline = deadline;
            }
        });
    }

    /// True while the connection can carry another request (keep-alive).
    pub fn reusable(&self, conn: Conn) -> bool {
        self.with(|t| t.stream(conn).is_ok_and(|s| !s.eof && !s.tcp.peer_closed()))
            .unwrap_or(false)
    }

    /// The remote end of a connection.
    pub fn peer_addr(&self, conn: Conn) -> Option<SocketAddr> {
        self.with(|t| t.stream(conn).ok()?.tcp.peer_addr().ok())
            .ok()
            .flatten()
    }

    /// The local end of a connection.
    pub fn local_addr(&self, conn: Conn) -> Option<SocketAddr> {
        self.with(|t| t.stream(conn).ok()?.tcp.local_addr().ok())
            .ok()
            .flatten()
    }

    /// Takes a connection's TLS session out while an operation uses it.
    fn take(&self, conn: Conn) -> Result<(Raw, Option<rustls::ClientConnection>), CurlError> {
        self.with(|t| {
            let s = t.stream(conn)?;
            let raw = Raw {
                conn,
                deadline: s.deadline,
            };
            Ok((raw, s.tls.take()))
        })?
    }

    fn put_back(&self, conn: Conn, tls: rustls::ClientConnection) {
        let _ = self.with(|t| {
            if let Ok(s) = t.stream(conn) {
                s.tls = Some(tls);
            }
        });
    }

    /// Sends application data: through TLS when the connection is https.
    pub async fn write(&self, conn: Conn, data: &[u8]) -> Result<(), CurlError> {
        let (raw, tls) = self.take(conn)?;
        let Some(mut tls) = tls else {
            return self.send_raw(raw, data).await;
        };
        let result = match std::io::Write::write_all(&mut tls.writer(), data) {
            Ok(()) => self.flush_tls(raw, &mut tls).await,
            Err(e) => Err(fail(EXIT_RECV_ERROR, format!("TLS send: {e}"))),
        };
        self.put_back(conn, tls);
        result
    }

    /// Reads application data (decrypted for https): at least one byte, or 0 at the end.
    pub async fn read(&self, conn: Conn, buf: &mut [u8]) -> Result<usize, CurlError> {
        let (raw, tls) = self.take(conn)?;
        let n = match tls {
            None => self.read_raw(raw, buf).await?,
            Some(mut tls) => {
                let result = self.read_tls(raw, &mut tls, buf).await;
                self.put_back(conn, tls);
                result?
            }
        };
        if n == 0 {
            let _ = self.with(|t| t.stream(conn).map(|s| s.eof = true));
        }
        Ok(n)
    }

    /// Passes the next received bytes, at most `limit` of them, to `out`: on a plain
    /// connection straight from the stack's receive buffer (no copy), under TLS through
    /// `buf`. Returns how many were received: at least one, or 0 at the end (bytes past
    /// `limit` stay to be read on a plain connection; under TLS they are dropped, as a
    /// read into `buf` would).
    pub async fn read_with(
        &self,
        conn: Conn,
        buf: &mut [u8],
        limit: usize,
        out: &mut dyn FnMut(&[u8]) -> Result<(), CurlError>,
    ) -> Result<usize, CurlError> {
        let plain = self.with(|t| t.stream(conn).map(|s| s.tls.is_none()))??;
        if !plain {
            let n = self.read(conn, buf).await?;
            out(&buf[..n.min(limit)])?;
            return Ok(n);
        }
        let (raw, _) = self.take(conn)?;
        let mut failed = None;
        let n = self
            .on_stream(raw, |tcp, cx| {
                tcp.poll_read_with(cx, |data| {
                    let take = data.len().min(limit);
                    match out(&data[..take]) {
                        Ok(()) => Ok(take),
                        Err(e) => {
                            failed = Some(e);
                            Err(std::io::ErrorKind::Other.into())
                        }
                    }
                })
            })
            .await?;
        if let Some(e) = failed {
            return Err(e);
        }
        let n = n.map_err(|e| fail(EXIT_RECV_ERROR, format!("Recv failure: {}", in_words(&e))))?;
        if n == 0 {
            let _ = self.with(|t| t.stream(conn).map(|s| s.eof = true));
        }
        Ok(n)
    }

    async fn read_tls(
        &self,
        raw: Raw,
        tls: &mut rustls::ClientConnection,
        buf: &mut [u8],
    ) -> Result<usize, CurlError> {
        loop {
            match std::io::Read::read(&mut tls.reader(), buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The peer closed TCP without close_notify: the HTTP framing decides
                // whether that truncated anything.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(fail(EXIT_RECV_ERROR, format!("TLS recv: {e}"))),
            }
            if !self.pump_tls(raw, tls).await? {
                return Ok(0);
            }
        }
    }

    /// Closes gracefully (close_notify, FIN) and forgets the connection: the stack
    /// finishes the close, as the kernel does for a socket closed by its process. Nothing
    /// waits for the peer's FIN: a server may keep the connection open for as long as it
    /// likes.
    pub async fn close(&self, conn: Conn) {
        let Ok((raw, tls)) = self.take(conn) else {
            return;
        };
        if let Some(mut tls) = tls {
            tls.send_close_notify();
            let _ = self.flush_tls(raw, &mut tls).await;
        }
        let closing = Raw {
            conn,
            deadline: Some(Instant::now() + CLOSE_LINGER),
        };
        let _ = self
            .on_stream(closing, |tcp, cx| tcp.poll_shutdown(cx))
            .await;
        let _ = self.with(|t| t.streams.get_mut(conn.0).and_then(Option::take));
    }

    /// Resets the connection (an unread response is not worth draining).
    pub fn abort(&self, conn: Conn) {
        if let Some(t) = self.inner.borrow_mut().as_mut()
            && let Some(stream) = t.streams.get_mut(conn.0).and_then(Option::take)
        {
            let _ = stream.tcp.abort();
        }
    }

    /// Closes every connection still open.
    pub async fn close_all(&self) {
        let count = self.inner.borrow().as_ref().map_or(0, |t| t.streams.len());
        for i in 0..count {
            self.close(Conn(i)).await;
        }
    }

    /// Sleeps (for --retry) while the stack keeps running.
    pub async fn sleep(&self, duration: Duration) -> Result<(), CurlError> {
        if !self.is_open() {
            std::thread::sleep(duration);
            return Ok(());
        }
        match self
            .within(
                Some(Instant::now() + duration),
                std::future::pending::<()>(),
            )
            .await
        {
            Err(e) if killed_by(e.code).is_some() => Err(e),
            _ => Ok(()),
        }
    }

    /// The TLS handshake over an established TCP connection.
    pub async fn handshake(&self, conn: Conn, params: &TlsParams<'_>) -> Result<(), CurlError> {
        let config = self.with(|t| match &t.tls_config {
            Some(c) => Ok(c.clone()),
            None => {
                let c = crate::app::tls::client_config(params.cacert, params.insecure)
                    .map_err(|e| fail(e.code, e.message))?;
                t.tls_config = Some(c.clone());
                Ok(c)
            }
        })??;
        let mut tls = crate::app::tls::connection(config, params.host)
            .map_err(|e| fail(e.code, e.message))?;
        let (raw, _) = self.take(conn)?;
        while tls.is_handshaking() {
            self.flush_tls(raw, &mut tls).await?;
            if tls.is_handshaking() && !self.pump_tls(raw, &mut tls).await? {
                return Err(fail(35, "TLS: connection closed during the handshake"));
            }
        }
        self.flush_tls(raw, &mut tls).await?;
        let version = tls
            .protocol_version()
            .map_or("TLS".into(), |v| format!("{v:?}"));
        let suite = tls
            .negotiated_cipher_suite()
            .map_or(String::new(), |s| format!("{:?}", s.suite()));
        self.info(&format!("SSL connection using {version} / {suite}"));
        self.put_back(conn, tls);
        Ok(())
    }

    /// Sends the TLS records rustls has ready.
    async fn flush_tls(
        &self,
        raw: Raw,
        tls: &mut rustls::ClientConnection,
    ) -> Result<(), CurlError> {
        let mut records = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut records)
                .map_err(|e| fail(35, format!("TLS: {e}")))?;
        }
        self.send_raw(raw, &records).await
    }

    /// Feeds TLS records from the stack to rustls; false at the end of the TCP stream.
    async fn pump_tls(
        &self,
        raw: Raw,
        tls: &mut rustls::ClientConnection,
    ) -> Result<bool, CurlError> {
        let mut buf = [0u8; 16 * 1024];
        let n = self.read_raw(raw, &mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        let mut records = &buf[..n];
        while !records.is_empty() {
            tls.read_tls(&mut records)
                .map_err(|e| fail(35, format!("TLS: {e}")))?;
            tls.process_new_packets()
                .map_err(|e| fail(crate::app::tls::error_code(&e), format!("TLS: {e}")))?;
        }
        self.flush_tls(raw, tls).await?;
        Ok(true)
    }

    async fn send_raw(&self, raw: Raw, mut data: &[u8]) -> Result<(), CurlError> {
        while !data.is_empty() {
            let n = self
                .on_stream(raw, |tcp, cx| tcp.poll_write(cx, data))
                .await?
                .map_err(|e| fail(55, format!("Send failure: {}", in_words(&e))))?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Reads what the stack has (at least one byte), or returns 0 at end of stream.
    async fn read_raw(&self, raw: Raw, buf: &mut [u8]) -> Result<usize, CurlError> {
        self.on_stream(raw, |tcp, cx| {
            let mut filled = ReadBuf::new(buf);
            tcp.poll_read(cx, &mut filled)
                .map(|r| r.map(|()| filled.filled().len()))
        })
        .await?
        .map_err(|e| fail(EXIT_RECV_ERROR, format!("Recv failure: {}", in_words(&e))))
    }
}

/// Runs one future to its end, parking while it waits.
pub fn block_on<F: Future>(io: &Io, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(io.waker());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        io.wait();
    }
}

/// An error as curl words it: the system's message for an errno ("Connection reset by
/// peer"), without std's " (os error N)".
fn in_words(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{pending, ready};

    type Attempt = Pin<Box<dyn Future<Output = Result<&'static str, CurlError>>>>;

    fn ok(name: &'static str) -> Attempt {
        Box::pin(ready(Ok(name)))
    }
    fn err(code: i32, message: &'static str) -> Attempt {
        Box::pin(ready(Err(fail(code, message))))
    }
    fn never() -> Attempt {
        Box::pin(pending())
    }
    /// An attempt that panics if it is ever started.
    fn untouched() -> Attempt {
        Box::pin(poll_fn(|_| panic!("started too early")))
    }

    /// Polls the race once with `due` as the delay's answer.
    fn poll_once(
        race: &mut Pin<Box<dyn Future<Output = Result<&'static str, CurlError>> + '_>>,
    ) -> Poll<Result<&'static str, String>> {
        let mut cx = Context::from_waker(Waker::noop());
        race.as_mut()
            .poll(&mut cx)
            .map(|r| r.map_err(|e| format!("{} {}", e.code, e.message)))
    }

    #[test]
    fn eyeballs_race_first_family_wins_at_once_and_the_second_waits_for_its_delay() {
        let mut r: Pin<Box<dyn Future<Output = _>>> =
            Box::pin(race(ok("v6"), Some(untouched()), || false));
        assert_eq!(poll_once(&mut r), Poll::Ready(Ok("v6")));
        // The first is slow: the second starts when its delay has passed, and wins.
        let due = Cell::new(false);
        let mut r: Pin<Box<dyn Future<Output = _>>> =
            Box::pin(race(never(), Some(ok("v4")), || due.get()));
        assert_eq!(poll_once(&mut r), Poll::Pending);
        assert_eq!(poll_once(&mut r), Poll::Pending);
        due.set(true);
        assert_eq!(poll_once(&mut r), Poll::Ready(Ok("v4")));
    }

    #[test]
    fn eyeballs_race_starts_the_second_family_at_once_when_the_first_fails() {
        let mut r: Pin<Box<dyn Future<Output = _>>> = Box::pin(race(
            err(EXIT_CANNOT_CONNECT, "no route"),
            Some(ok("v4")),
            || false,
        ));
        assert_eq!(poll_once(&mut r), Poll::Ready(Ok("v4")));
        // Both fail: the last one's error.
        let mut r: Pin<Box<dyn Future<Output = _>>> = Box::pin(race(
            err(EXIT_CANNOT_CONNECT, "v6 down"),
            Some(err(EXIT_CANNOT_CONNECT, "v4 down")),
            || false,
        ));
        assert_eq!(poll_once(&mut r), Poll::Ready(Err("7 v4 down".into())));
        // One family only.
        let mut r: Pin<Box<dyn Future<Output = _>>> = Box::pin(race(
            err(EXIT_CANNOT_CONNECT, "v6 down"),
            None::<Attempt>,
            || true,
        ));
        assert_eq!(poll_once(&mut r), Poll::Ready(Err("7 v6 down".into())));
        // A failure that is not "couldn't connect" (Ctrl-C, -m) ends the race.
        let mut r: Pin<Box<dyn Future<Output = _>>> = Box::pin(race(
            err(EXIT_TIMEOUT, "Operation timed out"),
            Some(untouched()),
            || false,
        ));
        assert_eq!(
            poll_once(&mut r),
            Poll::Ready(Err("28 Operation timed out".into()))
        );
        let mut r: Pin<Box<dyn Future<Output = _>>> =
            Box::pin(race(never(), Some(err(EXIT_TIMEOUT, "t")), || true));
        assert_eq!(poll_once(&mut r), Poll::Ready(Err("28 t".into())));
    }
}
