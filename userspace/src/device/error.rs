//! The error of setting the stack up: loading and attaching the XDP program, binding
//! the AF_XDP sockets, reading the interface and the routes, resolving the next hop.
//!
//! A [`SetupError`] says what failed in a sentence, and keeps the error underneath as
//! its [`source`](std::error::Error::source). `{}` shows the sentence, `{:#}` the
//! sentence and every cause after it, separated by `: `.
use std::fmt;

/// The result of a setup step.
pub type SetupResult<T> = Result<T, SetupError>;

/// Why the stack could not be set up.
#[derive(Debug)]
pub struct SetupError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl SetupError {
    /// An error with no underlying cause.
    pub fn msg(message: impl Into<String>) -> Self {
        SetupError {
            message: message.into(),
            source: None,
        }
    }

    /// `message`, caused by `source`.
    pub fn new(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        SetupError {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// This error as the cause of a new one that says `message`.
    pub fn context(self, message: impl Into<String>) -> Self {
        SetupError::new(message, self)
    }

    /// Whether this error, or one of its causes, is an [`std::io::Error`] of `kind`.
    pub fn has_io_kind(&self, kind: std::io::ErrorKind) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == kind)
            {
                return true;
            }
            cause = e.source();
        }
        false
    }

    /// The innermost cause: the error the failure started from.
    pub fn root_cause(&self) -> &(dyn std::error::Error + 'static) {
        let mut cause: &(dyn std::error::Error + 'static) = self;
        while let Some(next) = cause.source() {
            cause = next;
        }
        cause
    }
}

/// The errors of the libraries underneath (aya, the OS) become setup errors
/// that say what they said.
macro_rules! from_library {
    ($($t:ty),*) => {$(
        impl From<$t> for SetupError {
            fn from(e: $t) -> Self {
                SetupError::msg(e.to_string())
            }
        }
    )*};
}
from_library!(
    std::io::Error,
    aya::maps::MapError,
    aya::programs::ProgramError,
    aya::EbpfError,
    pcap_file::PcapError
);

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if f.alternate() {
            let mut cause = std::error::Error::source(self);
            while let Some(e) = cause {
                write!(f, ": {e}")?;
                cause = e.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<SetupError> for std::io::Error {
    /// An `io::Error` that carries the setup error itself, of the kind of the first
    /// `io::Error` among its causes (`Other` if none), so a caller can tell "no route to
    /// the destination" (`NetworkUnreachable`) from the rest:
    /// `err.get_ref().and_then(|e| e.downcast_ref::<SetupError>())` gives it back, `{}`
    /// shows its sentence, `{:#}` the whole chain of causes.
    fn from(e: SetupError) -> Self {
        let mut kind = std::io::ErrorKind::Other;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                kind = io.kind();
                break;
            }
            cause = c.source();
        }
        std::io::Error::new(kind, e)
    }
}

/// Adds a sentence to the error of a failed step.
pub trait Context<T> {
    /// The error, if any, becomes the cause of one that says `message`.
    fn context(self, message: impl Into<String>) -> SetupResult<T>;
    /// As [`Context::context`], with the message made only on error.
    fn with_context<M: Into<String>>(self, message: impl FnOnce() -> M) -> SetupResult<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, message: impl Into<String>) -> SetupResult<T> {
        self.map_err(|e| SetupError::new(message, e))
    }
    fn with_context<M: Into<String>>(self, message: impl FnOnce() -> M) -> SetupResult<T> {
        self.map_err(|e| SetupError::new(message(), e))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, message: impl Into<String>) -> SetupResult<T> {
        self.ok_or_else(|| SetupError::msg(message))
    }
    fn with_context<M: Into<String>>(self, message: impl FnOnce() -> M) -> SetupResult<T> {
        self.ok_or_else(|| SetupError::msg(message()))
    }
}

/// A [`SetupError`] from a format string.
macro_rules! setup_error {
    ($($arg:tt)*) => {
        $crate::device::error::SetupError::msg(format!($($arg)*))
    };
}

/// Returns a [`SetupError`] from a format string.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::device::error::setup_error!($($arg)*).into())
    };
}

pub(crate) use {bail, setup_error};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentence_alone_or_with_every_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = Err::<(), _>(io)
            .context("binding an AF_XDP socket to eth0 queue 0")
            .unwrap_err()
            .context("opening the stack");
        assert_eq!(e.to_string(), "opening the stack");
        assert_eq!(
            format!("{e:#}"),
            "opening the stack: binding an AF_XDP socket to eth0 queue 0: denied"
        );
        assert_eq!(e.root_cause().to_string(), "denied");
        assert!(e.has_io_kind(std::io::ErrorKind::PermissionDenied));
        assert!(!e.has_io_kind(std::io::ErrorKind::NotFound));
        let as_io: std::io::Error = e.into();
        assert_eq!(as_io.to_string(), "opening the stack");
        assert!(format!("{as_io:#}").ends_with(": denied"));
        let inner = as_io.get_ref().and_then(|e| e.downcast_ref::<SetupError>());
        assert!(inner.is_some_and(|e| e.has_io_kind(std::io::ErrorKind::PermissionDenied)));
    }

    #[test]
    fn a_missing_value_and_a_format_string() {
        let e = None::<u8>.context("no default route").unwrap_err();
        assert_eq!(format!("{e:#}"), "no default route");
        let port = 80;
        assert_eq!(setup_error!("listen on {port}").to_string(), "listen on 80");
    }
}
