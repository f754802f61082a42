//! The `userspace` command's applications: curl, serve, bench and the bare `run`
//! mode, and the stack flags they share. They are clients of the library's public API
//! (`userspace::...`) like any other program; nothing here is part of the library.
pub mod bench;
pub mod curl;
pub mod exec;
pub mod run;
pub mod serve;
pub mod setup;
pub mod tls;
