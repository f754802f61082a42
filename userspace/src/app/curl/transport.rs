//! The byte streams curl's HTTP runs on: connect, write, read, close, and TLS on top.
//!
//! This is the only part of curl that knows about the runtime and the stack. Several
//! connections can be open at once on the one stack (kept-alive ones, or -Z's), each
//! named by a [`Conn`] handle. The HTTP code above sees nothing but these calls.
use super::{
    CurlError, EXIT_CANNOT_CONNECT, EXIT_INTERRUPTED, EXIT_RECV_ERROR, EXIT_TIMEOUT, fail,
};
use crate::app::runtime::{Runtime, WaitError};
use crate::app::setup::{StackArgs, print_stats, resolve_next_hop};
use crate::stack::ConnId;
use crate::tcp::{Instant, State, TcpError};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

/// A connection's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn(usize);

struct Stream {
    id: ConnId,
    tls: Option<rustls::ClientConnection>,
    /// The peer ended the stream.
    eof: bool,
}

pub struct Transport {
    rt: Runtime,
    streams: Vec<Option<Stream>>,
    /// The end of the current transfer (-m).
    deadline: Option<Instant>,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    verbose: bool,
}

impl Transport {
    pub fn open(stack: &StackArgs, verbose: bool) -> anyhow::Result<Transport> {
        let rt = crate::app::setup::open_runtime(stack, &[])?;
        Ok(Transport {
            rt,
            streams: Vec::new(),
            deadline: None,
            tls_config: None,
            verbose,
        })
    }

    pub fn print_stats(&self) {
        print_stats(&self.rt);
    }

    /// The local end of a connection.
    pub fn local_addr(&self, conn: Conn) -> Option<SocketAddrV4> {
        let stream = self.streams.get(conn.0)?.as_ref()?;
        Some(self.rt.stack.connection(stream.id)?.local())
    }

    /// -m: the transfer starting now must end within `max`.
    pub fn set_max_time(&mut self, max: Option<Duration>) {
        self.deadline = max.map(|d| self.rt.now() + d);
    }

    fn info(&self, line: &str) {
        if self.verbose {
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
            WaitError::Interrupted => fail(EXIT_INTERRUPTED, "interrupted"),
        })
    }

    fn stream(&mut self, conn: Conn) -> Result<&mut Stream, CurlError> {
        self.streams
            .get_mut(conn.0)
            .and_then(Option::as_mut)
            .ok_or_else(|| fail(EXIT_RECV_ERROR, "connection already closed"))
    }

    /// Opens a TCP connection (and the TLS session on it when `tls_host` is given).
    pub fn connect(
        &mut self,
        ip: Ipv4Addr,
        port: u16,
        connect_timeout: Duration,
        tls: Option<(&str, Option<&std::path::Path>, bool)>,
    ) -> Result<Conn, CurlError> {
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
        let refused = |e: TcpError| {
            fail(
                EXIT_CANNOT_CONNECT,
                format!("Failed to connect to {ip} port {port}: {e}"),
            )
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.rt.stack.release(id);
                return Err(refused(e));
            }
            Err(e) => {
                self.rt.stack.abort(id);
                self.rt.stack.release(id);
                return Err(if e.code == EXIT_TIMEOUT {
                    fail(
                        EXIT_TIMEOUT,
                        format!(
                            "Failed to connect to {ip} port {port} after {} ms: Timeout was reached",
                            connect_timeout.as_millis()
                        ),
                    )
                } else {
                    e
                });
            }
        }
        let conn = Conn(
            self.streams
                .iter()
                .position(Option::is_none)
                .unwrap_or_else(|| {
                    self.streams.push(None);
                    self.streams.len() - 1
                }),
        );
        self.streams[conn.0] = Some(Stream {
            id,
            tls: None,
            eof: false,
        });
        if let Some((host, cacert, insecure)) = tls
            && let Err(e) = self.handshake(conn, host, cacert, insecure)
        {
            self.abort(conn);
            return Err(e);
        }
        Ok(conn)
    }

    /// True while the connection can carry another request (keep-alive).
    pub fn reusable(&mut self, conn: Conn) -> bool {
        let Ok(stream) = self.stream(conn) else {
            return false;
        };
        if stream.eof {
            return false;
        }
        let id = stream.id;
        self.rt.turn();
        self.rt.stack.state(id) == State::Established
            && self.rt.stack.connection(id).is_some_and(|c| !c.at_eof())
    }

    /// Sends application data: through TLS when the connection is https.
    pub fn write(&mut self, conn: Conn, data: &[u8]) -> Result<(), CurlError> {
        let stream = self.stream(conn)?;
        let id = stream.id;
        let Some(mut tls) = stream.tls.take() else {
            return self.send_raw(id, data);
        };
        let result = std::io::Write::write_all(&mut tls.writer(), data)
            .map_err(|e| fail(EXIT_RECV_ERROR, format!("TLS send: {e}")))
            .and_then(|()| self.flush_tls(id, &mut tls));
        self.stream(conn)?.tls = Some(tls);
        result
    }

    /// Reads application data (decrypted for https): at least one byte, or 0 at the end.
    pub fn read(&mut self, conn: Conn, buf: &mut [u8]) -> Result<usize, CurlError> {
        let stream = self.stream(conn)?;
        let id = stream.id;
        let n = match stream.tls.take() {
            None => self.read_raw(id, buf),
            Some(mut tls) => {
                let result = self.read_tls(id, &mut tls, buf);
                self.stream(conn)?.tls = Some(tls);
                result
            }
        }?;
        if n == 0 {
            self.stream(conn)?.eof = true;
        }
        Ok(n)
    }

    fn read_tls(
        &mut self,
        id: ConnId,
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
            if !self.pump_tls(id, tls)? {
                return Ok(0);
            }
        }
    }

    /// Closes gracefully (close_notify, FIN) and forgets the connection.
    pub fn close(&mut self, conn: Conn) {
        let Some(mut stream) = self.streams.get_mut(conn.0).and_then(Option::take) else {
            return;
        };
        if let Some(tls) = &mut stream.tls {
            tls.send_close_notify();
            let _ = self.flush_tls(stream.id, tls);
        }
        let id = stream.id;
        self.rt.stack.close(id);
        let deadline = self.rt.now() + Duration::from_millis(500);
        let _ = self.rt.wait(Some(deadline), |stack, _| {
            matches!(stack.state(id), State::Closed | State::TimeWait).then_some(())
        });
        self.rt.stack.release(id);
    }

    /// Resets the connection (an unread response is not worth draining).
    pub fn abort(&mut self, conn: Conn) {
        if let Some(stream) = self.streams.get_mut(conn.0).and_then(Option::take) {
            self.rt.stack.abort(stream.id);
            self.rt.stack.release(stream.id);
            self.rt.turn();
        }
    }

    /// Closes every connection still open.
    pub fn close_all(&mut self) {
        for i in 0..self.streams.len() {
            self.close(Conn(i));
        }
    }

    /// Sleeps (for --retry) while the stack keeps running; false if interrupted.
    pub fn sleep(&mut self, duration: Duration) -> Result<(), CurlError> {
        let until = self.rt.now() + duration;
        match self.rt.wait(Some(until), |_, _| None::<()>) {
            Err(WaitError::Interrupted) => Err(fail(EXIT_INTERRUPTED, "interrupted")),
            _ => Ok(()),
        }
    }

    /// The TLS handshake over an established TCP connection.
    fn handshake(
        &mut self,
        conn: Conn,
        host: &str,
        cacert: Option<&std::path::Path>,
        insecure: bool,
    ) -> Result<(), CurlError> {
        let config = match &self.tls_config {
            Some(c) => c.clone(),
            None => {
                let c = crate::app::tls::client_config(cacert, insecure)
                    .map_err(|e| fail(e.code, e.message))?;
                self.tls_config = Some(c.clone());
                c
            }
        };
        let mut tls =
            crate::app::tls::connection(config, host).map_err(|e| fail(e.code, e.message))?;
        let id = self.stream(conn)?.id;
        while tls.is_handshaking() {
            self.flush_tls(id, &mut tls)?;
            if tls.is_handshaking() && !self.pump_tls(id, &mut tls)? {
                return Err(fail(35, "TLS: connection closed during the handshake"));
            }
        }
        self.flush_tls(id, &mut tls)?;
        let version = tls
            .protocol_version()
            .map_or("TLS".into(), |v| format!("{v:?}"));
        let suite = tls
            .negotiated_cipher_suite()
            .map_or(String::new(), |s| format!("{:?}", s.suite()));
        self.info(&format!("SSL connection using {version} / {suite}"));
        self.stream(conn)?.tls = Some(tls);
        Ok(())
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
                .map_err(|e| fail(crate::app::tls::error_code(&e), format!("TLS: {e}")))?;
        }
        self.flush_tls(id, tls)?;
        Ok(true)
    }

    fn send_raw(&mut self, id: ConnId, mut data: &[u8]) -> Result<(), CurlError> {
        while !data.is_empty() {
            let n = self.wait(None, |stack, _| match stack.send(id, data) {
                Ok(0) => None,
                other => Some(other),
            })?;
            let n = n.map_err(|e| fail(55, format!("Send failure: {e}")))?;
            data = &data[n..];
        }
        Ok(())
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
}
