//! What a socket is ready for, and the watcher the poll loop tells after every change
//! (see `net::watch`, which the preload library uses).
use std::sync::Arc;

/// What a socket is ready for, as `poll(2)` would say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    /// A read (or accept) would not wait: bytes, end of stream, an error, a connection.
    pub readable: bool,
    /// A write would not wait: room in the send buffer, or an error to report.
    pub writable: bool,
    /// The connection is over both ways (or failed).
    pub hangup: bool,
    /// The connection failed (its error is waiting).
    pub error: bool,
    /// A connect is still under way.
    pub connecting: bool,
}

/// Told the socket's [`Readiness`] after every change the poll loop makes.
pub type Watcher = Arc<dyn Fn(Readiness) + Send + Sync>;

/// State that has a readiness.
pub(crate) trait Ready {
    fn readiness(&self) -> Readiness;
}
