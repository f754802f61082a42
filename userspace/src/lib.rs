//! A kernel-bypass TCP/IP stack on AF_XDP.
//!
//! Layers, bottom up:
//! - [`wire`]: parse and emit Ethernet, ARP, IPv4, ICMP, TCP. No state.
//! - [`tcp`]: the sans-IO TCP connection (time passed in, segments in and out).
//! - [`stack`]: demultiplexing, ARP, listeners, timers and batched output over a [`device::Device`].
//! - [`device`]: the AF_XDP device (aya + xsk-rs), and an in-memory link for tests.
//! - [`sim`]: a deterministic link simulator with loss, reordering, duplication, delay and corruption.
//! - [`app`]: curl, serve and bench on the stack's public API.

pub mod app;
pub mod device;
pub mod fuzzing;
pub mod sim;
pub mod stack;
pub mod tcp;
pub mod wire;
