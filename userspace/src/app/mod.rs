//! Applications on the stack's public API: curl, serve, and the bare `run` mode, and the
//! setup they share (flags to a running [`runtime::Runtime`]). Internal to the crate's
//! own command and library; not a stable API.
#[cfg(feature = "cli")]
pub mod bench;
#[cfg(feature = "cli")]
pub mod curl;
#[cfg(feature = "cli")]
pub mod exec;
#[cfg(feature = "cli")]
pub mod run;
pub mod runtime;
#[cfg(feature = "cli")]
pub mod serve;
pub mod setup;
#[cfg(feature = "cli")]
pub mod tls;
