//! A kernel-bypass TCP/IP stack on AF_XDP, usable as a library.
//!
//! An eBPF XDP program steers the stack's packets into an AF_XDP socket, so they never
//! reach the kernel; a poll loop on its own thread runs ARP, IPv4 and TCP over them. The
//! sockets look like [`std::net`]'s: [`TcpStream`] and [`TcpListener`], blocking, and
//! with the `tokio` feature `net::tokio::TcpStream` and `net::tokio::TcpListener`,
//! on which hyper runs unchanged.
//!
//! # Use it
//!
//! ```no_run
//! use std::io::{Read, Write};
//!
//! fn main() -> std::io::Result<()> {
//!     // Needs root. Attaches XDP to eth0 and starts the poll loop on CPU 1.
//!     let stack = userspace::Stack::builder().interface("eth0").cpu(1).build()?;
//!
//!     let mut stream = userspace::TcpStream::connect(&stack, "93.184.215.14:80")?;
//!     stream.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")?;
//!     let mut response = String::new();
//!     stream.read_to_string(&mut response)?;
//!     println!("{response}");
//!
//!     let listener = userspace::TcpListener::bind(&stack, "0.0.0.0:8080")?;
//!     let (mut client, peer) = listener.accept()?;
//!     writeln!(client, "hello {peer}")?;
//!     Ok(())
//! } // the stack stops and the XDP program is detached when the last handle goes
//! ```
//!
//! The builder's defaults are the `userspace` command's: the interface of the default
//! route, shared-IP mode (the interface's own address; only the stack's ports are
//! steered to it, the kernel keeps everything else), CUBIC, Nagle on, 1 MiB buffers.
//! `.ip(addr)` switches to owned-IP mode, where the stack owns a second address.
//!
//! # Features
//!
//! - `cli` (default): the `userspace` command (curl, serve, bench), a client of this
//!   library in the same package (`src/main.rs` and its `app` modules). A library user
//!   turns it off with `default-features = false`; the stack then needs none of clap,
//!   rustls, indicatif, signal-hook, tokio or anyhow; setup fails with a typed
//!   [`device::error::SetupError`].
//! - `tokio`: the async sockets in `net::tokio`.
//! - `test-kit`: the link simulator and the fuzz drivers (hidden modules `sim` and
//!   `fuzzing`), for the fuzz crate and the benchmarks; never needed by a user.
//!
//! # Layers, bottom up
//!
//! - [`wire`]: parse and emit Ethernet, ARP, IPv4, ICMP, TCP. No state.
//! - [`tcp`]: the sans-IO TCP connection (time passed in, segments in and out).
//! - [`stack`]: demultiplexing, ARP, listeners, timers and batched output over a
//!   [`device::Device`], sans-IO too, with per-connection [`stack::Events`].
//! - [`device`]: the AF_XDP device (aya, and AF_XDP sockets of our own), and an in-memory link for tests.
//! - [`net`]: the running stack and its sockets: the builder and its [`StackConfig`],
//!   the poll-loop runtime, per-queue sharding and the set-up every user runs.
#![warn(missing_docs)]

pub mod device;
/// The fuzz drivers: built for tests and with the `test-kit` feature only.
#[cfg(any(test, feature = "test-kit"))]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod fuzzing;
pub mod net;
/// The seeded link simulator: built for tests and with the `test-kit` feature only.
#[cfg(any(test, feature = "test-kit"))]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod sim;
pub mod stack;
pub mod tcp;
pub mod wire;

pub use net::{Stack, StackBuilder, StackConfig, TcpListener, TcpStream};
