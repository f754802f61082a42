//! The IPv6 address the XDP program steers (RFC 4291 section 2.5): the interface's own
//! global address in shared-address mode, asked from the kernel with one RTM_GETADDR
//! dump. Kept apart from [`super::netlink`] so that the steering config can be filled
//! before the routing code knows IPv6.
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use xdp_ebpf::{MODE_OWNED_IP, MODE_SHARED_IP};

/// An IPv6 address of an interface as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceIpv6 {
    /// The address.
    pub address: Ipv6Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// Global scope (not link-local, not host).
    pub global: bool,
    /// Still tentative, failed duplicate address detection, or deprecated: not to be
    /// used as a source (RFC 4862 section 5.5.4).
    pub unusable: bool,
}

/// The IPv6 addresses of link `ifindex`, as the kernel lists them.
pub fn interface_ipv6_addresses(ifindex: u32) -> io::Result<Vec<InterfaceIpv6>> {
    let mut request = AddressMessage::default();
    request.header.family = AddressFamily::Inet6;
    request.header.index = ifindex;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut message = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetAddress(request)),
    );
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&bytes, 0)?;
    let mut buffer = vec![0u8; 32 * 1024];
    let mut found = Vec::new();
    loop {
        let n = socket.recv(&mut &mut buffer[..], 0)?;
        let mut offset = 0;
        while offset < n {
            let reply: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&buffer[offset..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a))
                    if a.header.index == ifindex =>
                {
                    found.extend(from_message(&a));
                }
                _ => {}
            }
            let length = reply.header.length as usize;
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

fn from_message(message: &AddressMessage) -> Option<InterfaceIpv6> {
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(IpAddr::V6(ip)) | AddressAttribute::Local(IpAddr::V6(ip)) => {
            Some(*ip)
        }
        _ => None,
    })?;
    // IFA_FLAGS, when present, holds all the flags; the header only the low eight.
    let flags = message
        .attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(message.header.flags.bits() as u32));
    Some(InterfaceIpv6 {
        address,
        prefix: message.header.prefix_len,
        global: message.header.scope == AddressScope::Universe,
        unusable: flags.intersects(
            AddressFlags::Tentative | AddressFlags::Dadfailed | AddressFlags::Deprecated,
        ),
    })
}

/// The address a shared-address stack uses: the first usable global one.
pub fn shared_ipv6(addresses: &[InterfaceIpv6]) -> Option<Ipv6Addr> {
    addresses
        .iter()
        .find(|a| a.global && !a.unusable && !a.address.is_unicast_link_local())
        .map(|a| a.address)
}

/// The IPv6 part of the steering config, `(ipv6, ipv6_mode)`: the `owned` address
/// (owned-address mode), else in shared-address mode the interface's own global
/// address, else none (all zero). A stack that owns its IPv4 address and no IPv6 one
/// steers no IPv6: its ports are not kept apart from the kernel's.
pub fn steered_ipv6(ifindex: u32, shared: bool, owned: Option<Ipv6Addr>) -> ([u8; 16], u32) {
    if let Some(ip) = owned {
        return (ip.octets(), MODE_OWNED_IP);
    }
    let address = shared
        .then(|| interface_ipv6_addresses(ifindex).ok())
        .flatten()
        .and_then(|a| shared_ipv6(&a));
    match address {
        Some(ip) => (ip.octets(), MODE_SHARED_IP),
        None => ([0; 16], MODE_SHARED_IP),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str, global: bool, unusable: bool) -> InterfaceIpv6 {
        InterfaceIpv6 {
            address: s.parse().unwrap(),
            prefix: 64,
            global,
            unusable,
        }
    }

    #[test]
    fn shared_address_is_the_first_usable_global_one() {
        let list = [
            addr("fe80::1", false, false),
            addr("fd00:1::5", true, true),
            addr("fd00:1::2", true, false),
            addr("2001:db8::2", true, false),
        ];
        assert_eq!(shared_ipv6(&list), Some("fd00:1::2".parse().unwrap()));
        assert_eq!(shared_ipv6(&list[..2]), None);
        assert_eq!(shared_ipv6(&[]), None);
    }

    #[test]
    fn owned_address_wins_and_owned_ipv4_steers_no_ipv6() {
        let owned: Ipv6Addr = "fd00:1::100".parse().unwrap();
        assert_eq!(
            steered_ipv6(0, false, Some(owned)),
            (owned.octets(), MODE_OWNED_IP)
        );
        assert_eq!(
            steered_ipv6(0, true, Some(owned)),
            (owned.octets(), MODE_OWNED_IP)
        );
        assert_eq!(steered_ipv6(0, false, None), ([0; 16], MODE_SHARED_IP));
    }
}
