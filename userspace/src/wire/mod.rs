//! Parse and emit Ethernet, ARP, IPv4, ICMP and TCP on top of etherparse. No state.
//!
//! Parsing validates everything a hostile peer could lie about (lengths, IHL, data
//! offset, checksums) and reports a [`WireError`] the stack counts and drops.

mod arp;
mod ipv4;
mod tcp;

pub use arp::{ArpOp, ArpRepr, emit_arp};
pub use ipv4::{IcmpRepr, Ipv4Info, emit_icmp_echo_reply};
pub use tcp::{MAX_SACK_BLOCKS, TcpFlags, TcpOptions, TcpRepr, emit_tcp, tcp_frame_len};

use std::net::Ipv4Addr;

pub type MacAddr = [u8; 6];
pub const BROADCAST_MAC: MacAddr = [0xff; 6];
pub const ETH_HEADER_LEN: usize = 14;
pub const IPV4_HEADER_LEN: usize = 20;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// Why a frame was dropped. Each variant is a counter in the stack's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame shorter than its headers")]
    Truncated,
    #[error("malformed header")]
    Malformed,
    #[error("bad IPv4 header checksum")]
    BadIpChecksum,
    #[error("bad TCP checksum")]
    BadTcpChecksum,
    #[error("bad ICMP checksum")]
    BadIcmpChecksum,
    #[error("IPv4 fragment")]
    Fragment,
    #[error("unsupported protocol")]
    Unsupported,
}

/// A parsed frame, borrowing its payload from the receive buffer.
#[derive(Debug)]
pub enum Frame<'a> {
    Arp(ArpRepr),
    Tcp {
        eth_src: MacAddr,
        ip: Ipv4Info,
        tcp: TcpRepr<'a>,
    },
    Icmp {
        eth_src: MacAddr,
        ip: Ipv4Info,
        icmp: IcmpRepr<'a>,
    },
}

/// Parses an Ethernet frame down to ARP, TCP or ICMP.
pub fn parse_frame(frame: &[u8]) -> Result<Frame<'_>, WireError> {
    let eth = etherparse::Ethernet2Slice::from_slice_without_fcs(frame)
        .map_err(|_| WireError::Truncated)?;
    let eth_src = eth.source();
    match eth.ether_type().0 {
        ETHERTYPE_ARP => Ok(Frame::Arp(ArpRepr::parse(eth.payload_slice())?)),
        ETHERTYPE_IPV4 => ipv4::parse(eth_src, eth.payload_slice()),
        _ => Err(WireError::Unsupported),
    }
}

/// Writes the Ethernet header into `buf[..14]`.
pub fn emit_ethernet(buf: &mut [u8], src: MacAddr, dst: MacAddr, ethertype: u16) {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// RFC 1071 checksum: the ones' complement of the ones' complement sum.
pub fn checksum(data: &[u8]) -> u16 {
    etherparse::checksum::Sum16BitWords::new()
        .add_slice(data)
        .ones_complement()
        .to_be()
}

/// TCP checksum over the RFC 9293 section 3.1 pseudo-header and the segment.
pub fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    etherparse::checksum::Sum16BitWords::new()
        .add_4bytes(src.octets())
        .add_4bytes(dst.octets())
        .add_2bytes([0, 6])
        .add_2bytes((segment.len() as u16).to_be_bytes())
        .add_slice(segment)
        .ones_complement()
        .to_be()
}

pub fn format_mac(mac: &MacAddr) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests;
