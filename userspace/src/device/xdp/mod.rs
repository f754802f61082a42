//! The AF_XDP device: the XDP program ([`program`]), one socket per queue as a device
//! ([`socket`], over the sockets of [`super::xsk`]), and the sockets of every queue
//! driven as one ([`queues`]).
pub mod attach;
pub mod program;
pub mod queues;
pub mod socket;

pub use crate::device::holder::PooledSocket;
pub use attach::XdpModeChoice;
pub use program::{Ipv6SteerCounters, SharedProgram, SteerCounters, XdpProgram};
pub use queues::{QueueChoice, XdpQueues, choose_queues};
pub use socket::{
    BATCH, FrameAccount, SocketStats, TxChecksumMode, XdpDevice, transmit_complete_frames,
};
