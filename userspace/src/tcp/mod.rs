//! The sans-IO TCP: a pure state machine fed `(now, segment)` and `(now, app call)`.
//! It returns segments to send and its next deadline; it never reads a clock or
//! touches a socket.

pub mod congestion;
mod connection;
pub mod isn;
pub mod reassembly;
pub mod rtt;
pub mod sack;
pub mod send_buffer;
pub mod seq;
pub mod time;

pub use congestion::{CongestionControl, Cubic, NewReno};
pub use connection::{
    ChallengeAckBudget, Config, Connection, ConnectionStats, State, TcpError, Transmit,
    receive_window_scale,
};
pub use seq::SeqNum;
pub use time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CongestionKind {
    NewReno,
    #[default]
    Cubic,
}

#[cfg(test)]
mod rfc_tests;
#[cfg(test)]
mod tests;
