//! Applications on the stack's public API: curl, serve, and the bare `run` mode.
pub mod bench;
pub mod curl;
pub mod run;
pub mod runtime;
pub mod serve;
pub mod setup;
pub mod tls;
