//! The XDP program: steer the stack's packets into its AF_XDP socket, pass the rest.
//!
//! Built by `cargo xtask build-ebpf` for `bpfel-unknown-none`. On the host this file
//! compiles to an empty binary so that `cargo clippy --workspace` works.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
