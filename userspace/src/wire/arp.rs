//! ARP for Ethernet/IPv4 (RFC 826).
use super::{ETH_HEADER_LEN, ETHERTYPE_ARP, MacAddr, WireError, emit_ethernet};
use std::net::Ipv4Addr;

const ARP_LEN: usize = 28;

/// ARP operation (RFC 826).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    /// Who has the target IP?
    Request,
    /// The sender has it.
    Reply,
}

/// An ARP packet for IPv4 over Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    /// Request or reply.
    pub op: ArpOp,
    /// Sender's Ethernet address.
    pub sender_mac: MacAddr,
    /// Sender's IPv4 address.
    pub sender_ip: Ipv4Addr,
    /// Target's Ethernet address (zero in a request).
    pub target_mac: MacAddr,
    /// Target's IPv4 address.
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    pub(super) fn parse(payload: &[u8]) -> Result<Self, WireError> {
        let arp =
            etherparse::ArpPacketSlice::from_slice(payload).map_err(|_| WireError::Truncated)?;
        if arp.hw_addr_type() != etherparse::ArpHardwareId::ETHERNET
            || arp.proto_addr_type() != etherparse::EtherType::IPV4
            || arp.hw_addr_size() != 6
            || arp.proto_addr_size() != 4
        {
            return Err(WireError::Unsupported);
        }
        let op = match arp.operation() {
            etherparse::ArpOperation::REQUEST => ArpOp::Request,
            etherparse::ArpOperation::REPLY => ArpOp::Reply,
            _ => return Err(WireError::Unsupported),
        };
        let mac = |s: &[u8]| -> MacAddr { s.try_into().unwrap_or([0; 6]) };
        let ip = |s: &[u8]| -> Ipv4Addr { <[u8; 4]>::try_from(s).unwrap_or([0; 4]).into() };
        Ok(ArpRepr {
            op,
            sender_mac: mac(arp.sender_hw_addr()),
            sender_ip: ip(arp.sender_protocol_addr()),
            target_mac: mac(arp.target_hw_addr()),
            target_ip: ip(arp.target_protocol_addr()),
        })
    }
}

/// Writes an Ethernet+ARP frame into `buf` and returns its length.
pub fn emit_arp(buf: &mut [u8], eth_dst: MacAddr, arp: &ArpRepr) -> usize {
    emit_ethernet(buf, arp.sender_mac, eth_dst, ETHERTYPE_ARP);
    let b = &mut buf[ETH_HEADER_LEN..ETH_HEADER_LEN + ARP_LEN];
    b[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    b[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    b[4] = 6;
    b[5] = 4;
    let op: u16 = match arp.op {
        ArpOp::Request => 1,
        ArpOp::Reply => 2,
    };
    b[6..8].copy_from_slice(&op.to_be_bytes());
    b[8..14].copy_from_slice(&arp.sender_mac);
    b[14..18].copy_from_slice(&arp.sender_ip.octets());
    b[18..24].copy_from_slice(&arp.target_mac);
    b[24..28].copy_from_slice(&arp.target_ip.octets());
    // Pad to the Ethernet minimum of 60 bytes (without FCS).
    let len = ETH_HEADER_LEN + ARP_LEN;
    buf[len..60].fill(0);
    60
}
