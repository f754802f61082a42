//! The kernel's view of the network through rtnetlink: links, addresses, routes and
//! neighbours, asked the way `ip link`, `ip addr`, `ip route get` and `ip neigh get` ask.
//! One request, its answers read synchronously on a socket of the calling thread; no
//! process is spawned and no text is parsed.
use crate::wire::MacAddr;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, LinkXdp, State};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A link as the kernel reports it (RTM_NEWLINK).
#[derive(Debug, Clone)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its hardware address (none for a link without one).
    pub mac: Option<MacAddr>,
    /// Its MTU.
    pub mtu: Option<u32>,
    /// Administratively up and not operationally down.
    pub up: bool,
    /// A loopback link.
    pub loopback: bool,
    /// The id of the XDP program attached to it, if any.
    pub xdp_program: Option<u32>,
}

/// The kernel's route to one destination (RTM_GETROUTE, as `ip route get`), with the
/// addresses of its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteVia<A> {
    /// The interface it leaves by (a link-local IPv6 gateway only means something on it).
    pub ifindex: u32,
    /// The router to hand it to; none for a destination on the link.
    pub gateway: Option<A>,
    /// The source address the kernel would use.
    pub source: Option<A>,
}

/// An IPv4 route.
pub type Route = RouteVia<Ipv4Addr>;
/// An IPv6 route.
pub type Route6 = RouteVia<Ipv6Addr>;

/// A neighbour entry (RTM_NEWNEIGH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// Its link-layer address, when the kernel has one.
    pub mac: Option<MacAddr>,
    /// NUD state: resolved and usable (reachable, stale, delay, probe, permanent,
    /// noarp), or not (incomplete, failed).
    pub valid: bool,
}

/// A netlink route socket and a receive buffer.
struct Rtnl {
    socket: Socket,
    buffer: Vec<u8>,
    sequence: u32,
}

impl Rtnl {
    fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl {
            socket,
            buffer: vec![0; 32 * 1024],
            sequence: 0,
        })
    }

    /// Sends `request` and collects the messages that answer it: one for a get, all of
    /// them up to NLMSG_DONE for a dump. A netlink error becomes the io::Error of its
    /// errno (ENETUNREACH: no route; ENOENT: no such entry; ENODEV: no such link).
    fn request(
        &mut self,
        request: RouteNetlinkMessage,
        dump: bool,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        header.sequence_number = self.sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::from(request));
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        let mut answers = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut self.buffer[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let reply: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&self.buffer[offset..n])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let length = reply.header.length as usize;
                if reply.header.sequence_number == self.sequence {
                    match reply.payload {
                        NetlinkPayload::Done(_) => return Ok(answers),
                        NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                        NetlinkPayload::Error(_) => return Ok(answers),
                        NetlinkPayload::InnerMessage(m) => {
                            answers.push(m);
                            if !dump {
                                return Ok(answers);
                            }
                        }
                        _ => {}
                    }
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

thread_local! {
    /// Each thread keeps its socket: a lookup costs one request and its answer.
    static RTNL: RefCell<Option<Rtnl>> = const { RefCell::new(None) };
}

/// Runs `request` on this thread's netlink socket, opened on first use.
fn ask(request: RouteNetlinkMessage, dump: bool) -> io::Result<Vec<RouteNetlinkMessage>> {
    RTNL.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(Rtnl::open()?);
        }
        let rtnl = cell.as_mut().expect("opened above");
        let answer = rtnl.request(request, dump);
        if answer
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::InvalidData)
        {
            // Out of step with the kernel: start afresh next time.
            *cell = None;
        }
        answer
    })
}

fn link_from(message: LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: message.header.flags.contains(LinkFlags::Up),
        loopback: message.header.flags.contains(LinkFlags::Loopback),
        xdp_program: None,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Address(a) => link.mac = a.try_into().ok(),
            LinkAttribute::Mtu(mtu) => link.mtu = Some(mtu),
            LinkAttribute::OperState(State::Down) => link.up = false,
            LinkAttribute::Xdp(xdp) => {
                link.xdp_program = xdp.iter().find_map(|x| match x {
                    LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

fn one_link(request: LinkMessage) -> io::Result<Link> {
    ask(RouteNetlinkMessage::GetLink(request), false)?
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_from(l)),
            _ => None,
        })
        .ok_or_else(|| io::ErrorKind::NotFound.into())
}

/// The link named `name` (ENODEV: none).
pub fn link_by_name(name: &str) -> io::Result<Link> {
    let mut request = LinkMessage::default();
    request
        .attributes
        .push(LinkAttribute::IfName(name.to_string()));
    one_link(request)
}

/// The link with index `index` (ENODEV: none).
pub fn link_by_index(index: u32) -> io::Result<Link> {
    let mut request = LinkMessage::default();
    request.header.index = index;
    one_link(request)
}

/// The IPv4 addresses of link `index` with their prefix lengths, primary first, as
/// the kernel lists them.
pub fn ipv4_addresses(index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
    let mut request = AddressMessage::default();
    request.header.family = AddressFamily::Inet;
    request.header.index = index;
    let answers = ask(RouteNetlinkMessage::GetAddress(request), true)?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) if a.header.index == index => Some(a),
            _ => None,
        })
        .filter_map(|a| {
            // IFA_LOCAL is the address itself; IFA_ADDRESS the peer's on a
            // point-to-point link, and the same as IFA_LOCAL elsewhere.
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let address = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            local.or(address).map(|ip| (ip, a.header.prefix_len))
        })
        .collect())
}

/// An IPv6 address of a link, as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Address {
    /// The address.
    pub ip: Ipv6Addr,
    /// Its prefix length.
    pub prefix_len: u8,
}

/// The usable IPv6 addresses of link `index` with their prefix lengths, global ones
/// before link-local ones (RFC 6724 rule 2 prefers the matching scope; a global
/// destination wants a global source). Tentative addresses (DAD still running, RFC 4862
/// 5.4) and ones DAD found duplicate are left out.
pub fn ipv6_addresses(index: u32) -> io::Result<Vec<Ipv6Address>> {
    let mut request = AddressMessage::default();
    request.header.family = AddressFamily::Inet6;
    request.header.index = index;
    let answers = ask(RouteNetlinkMessage::GetAddress(request), true)?;
    let mut out: Vec<Ipv6Address> = answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) if a.header.index == index => Some(a),
            _ => None,
        })
        .filter(usable_ipv6)
        .filter_map(|a| {
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(IpAddr::V6(ip))
                | AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            })?;
            Some(Ipv6Address {
                ip,
                prefix_len: a.header.prefix_len,
            })
        })
        .collect();
    out.sort_by_key(|a| a.ip.is_unicast_link_local());
    Ok(out)
}

/// Not tentative, not duplicate, by the 32-bit IFA_FLAGS when the kernel sends them,
/// else by the header's 8.
fn usable_ipv6(a: &AddressMessage) -> bool {
    let extended = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Flags(f) => Some(*f),
        _ => None,
    });
    match extended {
        Some(f) => !f.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed),
        None => !a
            .header
            .flags
            .intersects(AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed),
    }
}

/// The kernel's IPv6 route to `destination` (RTM_GETROUTE, as `ip -6 route get`):
/// longest prefix match, metrics and policy; out of `oif` only when given. ENETUNREACH
/// when no route matches (as the kernel's connect says).
pub fn route6_to(destination: Ipv6Addr, oif: Option<u32>) -> io::Result<Route6> {
    route_query(
        AddressFamily::Inet6,
        RouteAddress::Inet6(destination),
        128,
        oif,
        |a| match a {
            RouteAddress::Inet6(ip) => Some(*ip),
            _ => None,
        },
    )
}

/// One RTM_GETROUTE for `destination` (a host route of `prefix_len` bits), its unicast
/// answer read with `address` for the family's addresses.
fn route_query<A>(
    family: AddressFamily,
    destination: RouteAddress,
    prefix_len: u8,
    oif: Option<u32>,
    address: fn(&RouteAddress) -> Option<A>,
) -> io::Result<RouteVia<A>> {
    let mut request = RouteMessage::default();
    request.header.address_family = family;
    request.header.destination_prefix_length = prefix_len;
    request
        .attributes
        .push(RouteAttribute::Destination(destination));
    if let Some(oif) = oif {
        request.attributes.push(RouteAttribute::Oif(oif));
    }
    let answers = ask(RouteNetlinkMessage::GetRoute(request), false)?;
    answers
        .iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) if r.header.kind == RouteType::Unicast => {
                route_from(r, address)
            }
            _ => None,
        })
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENETUNREACH))
}

/// The kernel's neighbour entry for IPv6 address `ip` on link `index`, if it has one.
pub fn neighbour6(index: u32, ip: Ipv6Addr) -> io::Result<Option<Neighbour>> {
    neighbour_of(index, AddressFamily::Inet6, NeighbourAddress::Inet6(ip))
}

fn route_address(address: &RouteAddress) -> Option<Ipv4Addr> {
    match address {
        RouteAddress::Inet(ip) => Some(*ip),
        _ => None,
    }
}

/// The route a message describes, its addresses read with `address`; `None` without
/// an interface.
fn route_from<A>(
    message: &RouteMessage,
    address: fn(&RouteAddress) -> Option<A>,
) -> Option<RouteVia<A>> {
    let mut route = RouteVia {
        ifindex: 0,
        gateway: None,
        source: None,
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Oif(index) => route.ifindex = *index,
            RouteAttribute::Gateway(g) => route.gateway = address(g),
            RouteAttribute::PrefSource(s) => route.source = address(s),
            _ => {}
        }
    }
    (route.ifindex != 0).then_some(route)
}

/// The kernel's route to `destination` (out of interface `oif` only, when given, as for
/// a socket bound to that device): longest prefix match, metrics, policy rules and
/// on-link routes, as `ip route get` resolves them. The error is the kernel's:
/// ENETUNREACH when no route matches, EHOSTUNREACH or EACCES for an `unreachable` or
/// `prohibit` route, EINVAL for a blackhole.
pub fn route_to(destination: Ipv4Addr, oif: Option<u32>) -> io::Result<Route> {
    route_query(
        AddressFamily::Inet,
        RouteAddress::Inet(destination),
        32,
        oif,
        route_address,
    )
}

/// The main table's default route with the lowest metric (as the kernel would pick
/// it for a destination no other route covers).
pub fn default_route() -> io::Result<Option<Route>> {
    let mut request = RouteMessage::default();
    request.header.address_family = AddressFamily::Inet;
    let answers = ask(RouteNetlinkMessage::GetRoute(request), true)?;
    Ok(answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r)
                if r.header.destination_prefix_length == 0
                    && r.header.kind == RouteType::Unicast
                    && r.header.table == RouteHeader::RT_TABLE_MAIN =>
            {
                let metric = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Priority(p) => Some(*p),
                    _ => None,
                });
                route_from(r, route_address).map(|route| (metric.unwrap_or(0), route))
            }
            _ => None,
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, route)| route))
}

/// The kernel's neighbour entry for `ip` on link `index` (RTM_GETNEIGH for that one
/// address, as `ip neigh get`), if it has one.
pub fn neighbour(index: u32, ip: Ipv4Addr) -> io::Result<Option<Neighbour>> {
    neighbour_of(index, AddressFamily::Inet, NeighbourAddress::Inet(ip))
}

fn neighbour_of(
    index: u32,
    family: AddressFamily,
    ip: NeighbourAddress,
) -> io::Result<Option<Neighbour>> {
    let mut request = NeighbourMessage::default();
    request.header.family = family;
    request.header.ifindex = index;
    request.attributes.push(NeighbourAttribute::Destination(ip));
    let answers = match ask(RouteNetlinkMessage::GetNeighbour(request), false) {
        Ok(a) => a,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(answers.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewNeighbour(n) => {
            let mac = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(l) => <MacAddr>::try_from(l.as_slice())
                    .ok()
                    .filter(|m| *m != [0; 6]),
                _ => None,
            });
            let valid = !matches!(
                n.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            );
            Some(Neighbour { mac, valid })
        }
        _ => None,
    }))
}
