//! The sans-IO TCP: a pure state machine fed `(now, segment)` and `(now, app call)`.
//! It returns segments to send and its next deadline; it never reads a clock or
//! touches a socket.

pub mod congestion;
mod connection;
pub mod isn;
pub mod reassembly;
mod recovery;
pub mod rtt;
pub mod sack;
pub mod send_buffer;
mod timer;

/// Sequence numbers live in [`crate::wire`] (segments carry them); re-exported here,
/// where the connection does its arithmetic with them.
pub use crate::wire::seq;
/// Virtual time lives in [`crate::wire`] (fragment reassembly takes `now` too);
/// re-exported here for the connection's timers.
pub use crate::wire::time;

pub use congestion::{CongestionControl, Cubic, NewReno};
pub use connection::{
    ChallengeAckBudget, Config, Connection, ConnectionInfo, ConnectionStats, MoveError,
    RecoveryPhase, State, TcpError, Transmit, ipv6_mss, receive_window_scale,
};
pub use seq::SeqNum;
pub use time::Instant;

/// Which congestion control a connection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionKind {
    /// NewReno (RFC 5681, RFC 6582).
    NewReno,
    /// CUBIC (RFC 8312), the default, as in Linux.
    #[default]
    Cubic,
}

#[cfg(test)]
#[macro_use]
mod testkit;
#[cfg(test)]
mod export_tests;
#[cfg(test)]
mod rfc_tests;
#[cfg(test)]
mod tests;
