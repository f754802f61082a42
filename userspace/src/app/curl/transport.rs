//! The byte streams curl's HTTP runs on: connect, write, read, close, and TLS on top.
//!
//! This is the only part of curl that knows about the runtime and the stack. Several
//! connections are open at once on the one stack (kept-alive ones, and -Z's transfers),
//! each named by a [`Conn`] handle. The calls are `async`: a transfer waiting for the
//! network yields, and [`Io::turn`] runs the stack for everyone between polls, so the
//! transfers of one command line share one runtime and one poll loop. The HTTP code
//! above sees nothing but these calls.
use super::{
    CurlError, EXIT_CANNOT_CONNECT, EXIT_INTERRUPTED, EXIT_RECV_ERROR, EXIT_TIMEOUT, fail,
};
use crate::app::runtime::Runtime;
use crate::app::setup::{NeighbourWatch, StackArgs, print_stats, resolve_next_hop};
use crate::stack::{ConnId, RecvError, SendError, Stack};
use crate::tcp::{State, TcpError};
use std::cell::RefCell;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A connection's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn(usize);

/// What a raw read or write needs: the stack's id and the transfer's deadline.
#[derive(Debug, Clone, Copy)]
struct Raw {
    id: ConnId,
    deadline: Option<Instant>,
}

struct Stream {
    raw: Raw,
    tls: Option<rustls::ClientConnection>,
    /// The peer ended the stream.
    eof: bool,
}

struct Transport {
    rt: Runtime,
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

/// The stack, opened on first use and shared by every transfer of the command line.
pub struct Io {
    inner: RefCell<Option<Transport>>,
    stack: StackArgs,
    verbose: bool,
    /// `--keepalive-time`: idle time before keep-alive probes, and between them.
    keepalive: Option<Duration>,
}

impl Io {
    pub fn new(stack: StackArgs, verbose: bool, keepalive: Option<Duration>) -> Io {
        Io {
            inner: RefCell::new(None),
            stack,
            verbose,
            keepalive,
        }
    }

    /// Runs `f` on the transport, opening it first if needed.
    fn with<R>(&self, f: impl FnOnce(&mut Transport) -> R) -> Result<R, CurlError> {
        let mut guard = self.inner.borrow_mut();
        if guard.is_none() {
            let rt = crate::app::setup::open_runtime(&self.stack, &[])
                .map_err(|e| fail(super::EXIT_FAILED_INIT, format!("{e:#}")))?;
            *guard = Some(Transport {
                rt,
                streams: Vec::new(),
                tls_config: None,
            });
        }
        Ok(f(guard.as_mut().expect("opened above")))
    }

    pub fn is_open(&self) -> bool {
        self.inner.borrow().is_some()
    }

    /// One turn of the stack's poll loop (the executor calls it between polls).
    pub fn turn(&self) {
        if let Some(t) = self.inner.borrow_mut().as_mut() {
            t.rt.turn();
            t.rt.idle();
        }
    }

    /// Lines about what the stack dropped that the user needed (see `setup::diagnose`).
    pub fn diagnosis(&self) -> Vec<String> {
        self.inner
            .borrow()
            .as_ref()
            .map(|t| crate::app::setup::diagnose(&t.rt))
            .unwrap_or_default()
    }

    pub fn print_stats(&self) {
        if let Some(t) = self.inner.borrow().as_ref() {
            print_stats(&t.rt);
        }
    }

    fn info(&self, line: &str) {
        if self.verbose {
            eprintln!("* {line}");
        }
    }

    /// Waits until `ready` gives a value, the deadline passes, or Ctrl-C.
    async fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut(&mut Stack) -> Option<T>,
    ) -> Result<T, CurlError> {
        std::future::poll_fn(|_| {
            let mut guard = self.inner.borrow_mut();
            let Some(t) = guard.as_mut() else {
                return Poll::Ready(Err(fail(EXIT_RECV_ERROR, "the stack is not open")));
            };
            if let Some(v) = ready(&mut t.rt.stack) {
                return Poll::Ready(Ok(v));
            }
            if t.rt.stopped() {
                return Poll::Ready(Err(fail(EXIT_INTERRUPTED, "interrupted")));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Poll::Ready(Err(fail(EXIT_TIMEOUT, "Operation timed out")));
            }
            Poll::Pending
        })
        .await
    }

    /// Opens a TCP connection, and the TLS session on it when asked. Every read and
    /// write on it ends at `deadline` (-m).
    pub async fn connect(
        &self,
        ip: Ipv4Addr,
        port: u16,
        connect_timeout: Duration,
        deadline: Option<Instant>,
        tls: Option<TlsParams<'_>>,
    ) -> Result<Conn, CurlError> {
        self.info(&format!("Trying {ip}:{port}..."));
        let refused = |e: &dyn std::fmt::Display| {
            fail(
                EXIT_CANNOT_CONNECT,
                format!("Failed to connect to {ip} port {port}: {e}"),
            )
        };
        let arp_timeout = connect_timeout.min(Duration::from_secs(3));
        self.with(|t| resolve_next_hop(&mut t.rt, ip, arp_timeout))?
            .map_err(|e| refused(&format!("{e:#}")))?;
        let id = self
            .with(|t| {
                let now = t.rt.now();
                t.rt.stack.connect(now, SocketAddrV4::new(ip, port))
            })?
            .map_err(|e| refused(&e))?;
        let started = Instant::now();
        let connect_deadline = started + connect_timeout;
        let until = deadline.map_or(connect_deadline, |d| d.min(connect_deadline));
        let mut neighbour = self.with(|t| NeighbourWatch::new(&mut t.rt, ip))?;
        let result = self
            .wait_until(Some(until), |stack| match stack.state(id) {
                State::SynSent if neighbour.lost() => Some(Err(TcpError::HostUnreachable)),
                State::SynSent | State::SynReceived => None,
                State::Closed => Some(Err(stack
                    .connection(id)
                    .and_then(|c| c.error())
                    .unwrap_or(TcpError::Closed))),
                _ => Some(Ok(())),
            })
            .await;
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(refused(&e)),
            // The time it really took, as curl reports it; `-m` ending the connect
            // phase is curl's "Connection timed out".
            Err(e) if e.code == EXIT_TIMEOUT && until == connect_deadline => Some(fail(
                EXIT_TIMEOUT,
                format!(
                    "Failed to connect to {ip} port {port} after {} ms: Timeout was reached",
                    started.elapsed().as_millis()
                ),
            )),
            Err(e) if e.code == EXIT_TIMEOUT => Some(fail(
                EXIT_TIMEOUT,
                format!(
                    "Connection timed out after {} milliseconds",
                    started.elapsed().as_millis()
                ),
            )),
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            let _ = self.with(|t| {
                t.rt.stack.abort(id);
                t.rt.stack.release(id);
            });
            return Err(e);
        }
        // RFC 1122 4.2.3.6 keep-alive, as curl's --keepalive-time sets TCP_KEEPIDLE and
        // TCP_KEEPINTVL (with Linux's default of 9 probes).
        if let Some(every) = self.keepalive {
            self.with(|t| {
                t.rt.stack.set_keepalive_params(id, every, every, 9);
                t.rt.stack.set_keepalive(id, true);
            })?;
        }
        let conn = self.with(|t| {
            let slot = t
                .streams
                .iter()
                .position(Option::is_none)
                .unwrap_or_else(|| {
                    t.streams.push(None);
                    t.streams.len() - 1
                });
            t.streams[slot] = Some(Stream {
                raw: Raw { id, deadline },
                tls: None,
                eof: false,
            });
            Conn(slot)
        })?;
        if let Some(params) = tls
            && let Err(e) = self.handshake(conn, &params).await
        {
            self.abort(conn);
            return Err(e);
        }
        Ok(conn)
    }

    /// A kept-alive connection serves a new transfer, with that transfer's deadline.
    pub fn set_deadline(&self, conn: Conn, deadline: Option<Instant>) {
        let _ = self.with(|t| {
            if let Ok(s) = t.stream(conn) {
                s.raw.deadline = deadline;
            }
        });
    }

    /// True while the connection can carry another request (keep-alive).
    pub fn reusable(&self, conn: Conn) -> bool {
        self.with(|t| {
            let Ok(stream) = t.stream(conn) else {
                return false;
            };
            if stream.eof {
                return false;
            }
            let id = stream.raw.id;
            t.rt.turn();
            t.rt.stack.state(id) == State::Established
                && t.rt.stack.connection(id).is_some_and(|c| !c.at_eof())
        })
        .unwrap_or(false)
    }

    /// The local end of a connection.
    pub fn local_addr(&self, conn: Conn) -> Option<SocketAddrV4> {
        self.with(|t| {
            let id = t.stream(conn).ok()?.raw.id;
            Some(t.rt.stack.connection(id)?.local())
        })
        .ok()
        .flatten()
    }

    /// Takes a connection's TLS session out while an operation uses it.
    fn take(&self, conn: Conn) -> Result<(Raw, Option<rustls::ClientConnection>), CurlError> {
        self.with(|t| {
            let s = t.stream(conn)?;
            Ok((s.raw, s.tls.take()))
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

    /// Closes gracefully (close_notify, FIN) and forgets the connection.
    pub async fn close(&self, conn: Conn) {
        let Ok(Some(mut stream)) = self.with(|t| t.streams.get_mut(conn.0).and_then(Option::take))
        else {
            return;
        };
        if let Some(tls) = &mut stream.tls {
            tls.send_close_notify();
            let _ = self.flush_tls(stream.raw, tls).await;
        }
        let id = stream.raw.id;
        let _ = self.with(|t| t.rt.stack.close(id));
        let _ = self
            .wait_until(Some(Instant::now() + Duration::from_millis(500)), |stack| {
                matches!(stack.state(id), State::Closed | State::TimeWait).then_some(())
            })
            .await;
        let _ = self.with(|t| t.rt.stack.release(id));
    }

    /// Resets the connection (an unread response is not worth draining).
    pub fn abort(&self, conn: Conn) {
        if let Some(t) = self.inner.borrow_mut().as_mut()
            && let Some(stream) = t.streams.get_mut(conn.0).and_then(Option::take)
        {
            t.rt.stack.abort(stream.raw.id);
            t.rt.stack.release(stream.raw.id);
            t.rt.turn();
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
            .wait_until(Some(Instant::now() + duration), |_| None::<()>)
            .await
        {
            Err(e) if e.code == EXIT_INTERRUPTED => Err(e),
            _ => Ok(()),
        }
    }

    /// The TLS handshake over an established TCP connection.
    async fn handshake(&self, conn: Conn, params: &TlsParams<'_>) -> Result<(), CurlError> {
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
                .wait_until(raw.deadline, |stack| match stack.try_send(raw.id, data) {
                    Ok(0) | Err(SendError::WouldBlock) => None,
                    Ok(n) => Some(Ok(n)),
                    Err(SendError::Connection(e)) => Some(Err(e)),
                })
                .await?
                .map_err(|e| fail(55, format!("Send failure: {e}")))?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Reads what the stack has (at least one byte), or returns 0 at end of stream.
    async fn read_raw(&self, raw: Raw, buf: &mut [u8]) -> Result<usize, CurlError> {
        self.wait_until(raw.deadline, |stack| match stack.try_recv(raw.id, buf) {
            Ok(n) => Some(Ok(n)),
            Err(RecvError::Finished) => Some(Ok(0)),
            Err(RecvError::WouldBlock) => None,
            Err(RecvError::Connection(e)) => Some(Err(e)),
        })
        .await?
        .map_err(|e| fail(EXIT_RECV_ERROR, format!("Recv failure: {e}")))
    }
}

/// Runs one future to its end, turning the stack while it waits.
pub fn block_on<F: Future>(io: &Io, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        io.turn();
    }
}
