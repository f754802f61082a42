//! Project tasks (`cargo xtask ...`) and the network-namespace test world they share
//! with the integration tests.
pub mod bench;
mod bench_exec;
pub mod charts;
pub mod install;
pub mod world;
