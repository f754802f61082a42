//! The device layer: the only code that knows about aya and AF_XDP. The stack sees one
//! small trait, so tests can put an in-memory link in the AF_XDP socket's place.
pub mod error;
pub mod exit_guard;
pub mod holder;
pub mod memory;
pub mod netinfo;
pub mod netlink;
pub mod pcap;
pub mod slice;
pub mod startup;
pub mod steering;
pub mod switch;
pub mod wake;
pub mod xdp;
pub mod xsk;

use crate::wire::MacAddr;

/// A network device that receives and transmits Ethernet frames in batches.
pub trait Device {
    /// Calls `handle` for each received frame, up to one batch; returns how many.
    /// The frame borrows device memory (a UMEM frame) and is recycled afterwards.
    fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize;
    /// Lends a free TX buffer to `build`, which writes a frame and returns its length
    /// (0: nothing to send, the buffer stays free). False if no buffer is free.
    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool;
    /// Hands queued frames to the hardware and recycles completed ones.
    fn flush(&mut self);
    /// The device's Ethernet address.
    fn mac(&self) -> MacAddr;
    /// The device's MTU (IP packet size), 1500 unless the device says otherwise.
    fn mtu(&self) -> usize {
        1500
    }
    /// Whether the device completes the TCP checksum of the frames it transmits
    /// (TX checksum offload): then every TCP frame given to [`Device::transmit`] must
    /// carry only the pseudo-header sum ([`crate::wire::TxChecksum::Partial`]).
    fn tx_checksum_offload(&self) -> bool {
        false
    }
}
