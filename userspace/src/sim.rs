//! A deterministic link simulator, in the spirit of quinn-proto's test `Pair`: two TCP
//! endpoints exchange real frames (emitted and parsed by [`crate::wire`], checksums
//! included) over a simulated link in virtual time. Loss, duplication, reordering,
//! delay, jitter, corruption, a bandwidth-limited queue and the MTU all come from a seed.
use crate::tcp::{Config, Connection, Instant, State};
use crate::wire::{self, Frame, MacAddr};
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

/// SplitMix64: small, fast and fully determined by its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Impairments of one direction of the link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub loss: f64,
    pub duplicate: f64,
    /// Probability a frame is held back by `reorder_delay` extra (the only source of
    /// reordering: jitter keeps the order).
    pub reorder: f64,
    pub reorder_delay: Duration,
    pub delay: Duration,
    /// Up to this much extra delay per frame, never past a frame sent later.
    pub jitter: Duration,
    /// Probability one random bit of the frame is flipped.
    pub corrupt: f64,
    /// Bits per second; 0 means unlimited.
    pub bandwidth: u64,
    /// Frames that may wait in the bottleneck queue before tail drop.
    pub queue_limit: usize,
    pub mtu: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(3),
            delay: Duration::from_millis(5),
            jitter: Duration::ZERO,
            corrupt: 0.0,
            bandwidth: 0,
            queue_limit: 1000,
            mtu: 1500,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct InFlight {
    at: Instant,
    order: u64,
    frame: Vec<u8>,
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: the earliest delivery is the greatest.
        other.at.cmp(&self.at).then(other.order.cmp(&self.order))
    }
}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Counters of what the link did to the frames.
#[derive(Debug, Clone, Default)]
pub struct LinkStats {
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupted: u64,
    pub queue_drops: u64,
    pub rejected_by_parser: u64,
    pub delivered: u64,
}

#[derive(Debug)]
pub struct Link {
    pub config: LinkConfig,
    queue: BinaryHeap<InFlight>,
    busy_until: Instant,
    /// Arrival time of the last frame sent that was not reordered on purpose.
    last_in_order: Instant,
    order: u64,
    pub stats: LinkStats,
}

impl Link {
    pub fn new(config: LinkConfig) -> Self {
        Link {
            config,
            queue: BinaryHeap::new(),
            busy_until: Instant::ZERO,
            last_in_order: Instant::ZERO,
            order: 0,
            stats: LinkStats::default(),
        }
    }

    pub fn send(&mut self, now: Instant, mut frame: Vec<u8>, rng: &mut Rng) {
        self.stats.sent += 1;
        assert!(
            frame.len() <= self.config.mtu + wire::ETH_HEADER_LEN,
            "frame of {} bytes over the MTU",
            frame.len()
        );
        if rng.chance(self.config.loss) {
            self.stats.lost += 1;
            return;
        }
        if self.queue.len() >= self.config.queue_limit {
            self.stats.queue_drops += 1;
            return;
        }
        if rng.chance(self.config.corrupt) {
            let bit = rng.below(frame.len() as u64 * 8);
            frame[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.stats.corrupted += 1;
        }
        // Serialization on a bandwidth-limited link.
        let start = now.max(self.busy_until);
        let tx = (frame.len() as u64 * 8 * 1_000_000_000)
            .checked_div(self.config.bandwidth)
            .map_or(Duration::ZERO, Duration::from_nanos);
        self.busy_until = start + tx;
        let mut at = self.busy_until + self.config.delay;
        if !self.config.jitter.is_zero() {
            // Jitter varies the delay, but like a real link's queue it keeps the order:
            // a frame never overtakes one sent before it. Reordering is `reorder` alone,
            // so that `stats.reordered` counts every frame that arrives out of order.
            at = at + Duration::from_micros(rng.below(self.config.jitter.as_micros() as u64 + 1));
            at = at.max(self.last_in_order);
            self.last_in_order = at;
        }
        if rng.chance(self.config.reorder) {
            at = at + self.config.reorder_delay;
            self.stats.reordered += 1;
        }
        if rng.chance(self.config.duplicate) {
            self.stats.duplicated += 1;
            self.push(at + Duration::from_micros(rng.below(1000)), frame.clone());
        }
        self.push(at, frame);
    }

    fn push(&mut self, at: Instant, frame: Vec<u8>) {
        self.order += 1;
        self.queue.push(InFlight {
            at,
            order: self.order,
            frame,
        });
    }

    pub fn next_delivery(&self) -> Option<Instant> {
        self.queue.peek().map(|f| f.at)
    }

    /// Removes and returns a frame due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.queue.peek()?.at <= now {
            self.stats.delivered += 1;
            self.queue.pop().map(|f| f.frame)
        } else {
            None
        }
    }
}

const MAC_A: MacAddr = [2, 0, 0, 0, 0, 0xa];
const MAC_B: MacAddr = [2, 0, 0, 0, 0, 0xb];
/// Frames handed to a connection per step, as the AF_XDP receive batch.
pub const RX_BATCH: usize = 64;
pub const ADDR_A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 50_000);
pub const ADDR_B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80);
/// A's and B's addresses in an IPv6 pair ([`Pair::new_in`]).
pub const ADDR6_A: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1), 50_000, 0, 0);
pub const ADDR6_B: SocketAddrV6 =
    SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2), 80, 0, 0);

/// One side's application: writes `to_send` then closes, reads everything into `received`.
#[derive(Debug, Default)]
pub struct App {
    pub to_send: Vec<u8>,
    pub sent: usize,
    pub received: Vec<u8>,
    pub closed: bool,
    /// Stop reading (to exercise zero windows) until this time.
    pub read_paused_until: Instant,
}

impl App {
    fn drive(&mut self, conn: &mut Connection, now: Instant) {
        if conn.is_synchronized() || conn.state() == State::SynReceived {
            while self.sent < self.to_send.len() {
                match conn.send(&self.to_send[self.sent..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => self.sent += n,
                }
            }
        }
        if now >= self.read_paused_until {
            let mut buf = [0u8; 16384];
            loop {
                let n = conn.recv(&mut buf);
                if n == 0 {
                    break;
                }
                self.received.extend_from_slice(&buf[..n]);
            }
        }
        if !self.closed && self.sent == self.to_send.len() && conn.is_synchronized() {
            conn.close();
            self.closed = true;
        }
    }
}

/// Two connections over a simulated link: `a` opens actively, `b` passively on A's SYN.
pub struct Pair {
    pub now: Instant,
    pub rng: Rng,
    pub a: Connection,
    pub b: Option<Connection>,
    b_config: Config,
    /// A's and B's addresses (one family).
    pub addr_a: SocketAddr,
    pub addr_b: SocketAddr,
    pub a_to_b: Link,
    pub b_to_a: Link,
    pub app_a: App,
    pub app_b: App,
    frame: Vec<u8>,
}

impl Pair {
    pub fn new(
        seed: u64,
        a_config: Config,
        b_config: Config,
        a_to_b: LinkConfig,
        b_to_a: LinkConfig,
    ) -> Self {
        Self::new_in(false, seed, a_config, b_config, a_to_b, b_to_a)
    }

    /// [`Pair::new`] over IPv6 (`ipv6`) or IPv4: one state machine for both families.
    pub fn new_in(
        ipv6: bool,
        seed: u64,
        a_config: Config,
        b_config: Config,
        a_to_b: LinkConfig,
        b_to_a: LinkConfig,
    ) -> Self {
        let mut rng = Rng::new(seed);
        // Start near the 2^32 wrap so every test crosses it.
        let iss_a = u32::MAX - rng.below(100_000) as u32;
        let (addr_a, addr_b) = if ipv6 {
            (SocketAddr::V6(ADDR6_A), SocketAddr::V6(ADDR6_B))
        } else {
            (SocketAddr::V4(ADDR_A), SocketAddr::V4(ADDR_B))
        };
        let a = Connection::connect(a_config, addr_a, addr_b, iss_a);
        Pair {
            now: Instant::from_millis(1),
            rng,
            a,
            b: None,
            b_config,
            addr_a,
            addr_b,
            a_to_b: Link::new(a_to_b),
            b_to_a: Link::new(b_to_a),
            app_a: App::default(),
            app_b: App::default(),
            frame: vec![0; 9000],
        }
    }

    fn flush(
        conn: &mut Connection,
        link: &mut Link,
        rng: &mut Rng,
        now: Instant,
        frame: &mut [u8],
        from_a: bool,
    ) {
        let eth = if from_a {
            (MAC_A, MAC_B)
        } else {
            (MAC_B, MAC_A)
        };
        let ip = (conn.local().ip(), conn.remote().ip());
        while let Some(t) = conn.poll_transmit(now) {
            let len = wire::emit_tcp(
                frame,
                eth,
                ip,
                &t.repr,
                t.payload_len,
                |dst| conn.copy_payload(t.payload_offset, dst),
                wire::TxChecksum::Complete,
            );
            assert!(len > 0, "segment did not fit a frame");
            link.send(now, frame[..len].to_vec(), rng);
        }
    }

    /// Delivers every frame due now on `link` to `conn` (a batch), counting what the parser rejects.
    /// At most [`RX_BATCH`] frames, like one receive batch of the real device; the rest
    /// wait for the next step.
    fn deliver(link: &mut Link, now: Instant, mut handle: impl FnMut(&crate::wire::TcpRepr<'_>)) {
        for _ in 0..RX_BATCH {
            let Some(frame) = link.pop_due(now) else {
                break;
            };
            match wire::parse_frame(&frame) {
                Ok(Frame::Tcp { tcp, .. } | Frame::Tcp6 { tcp, .. }) => handle(&tcp),
                _ => link.stats.rejected_by_parser += 1,
            }
        }
    }

    /// One step: deliver due frames, run timers and apps, send, then advance time to the
    /// next event. Returns false when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        let now = self.now;
        // Frames to B; the first SYN creates B (the listener's accept).
        let (b_config, b) = (&self.b_config, &mut self.b);
        let (addr_a, addr_b) = (self.addr_a, self.addr_b);
        Self::deliver(&mut self.a_to_b, now, |seg| match b {
            Some(conn) => conn.handle_segment(now, seg),
            None if seg.flags.syn && !seg.flags.ack => {
                let iss = 0x7fff_0000;
                *b = Some(Connection::accept(
                    now,
                    b_config.clone(),
                    addr_b,
                    addr_a,
                    iss,
                    seg,
                ));
            }
            None => {}
        });
        let a = &mut self.a;
        let trace = std::env::var_os("SIM_TRACE").is_some();
        Self::deliver(&mut self.b_to_a, now, |seg| {
            let before = a.state();
            a.handle_segment(now, seg);
            if trace {
                eprintln!(
                    "{:>10} B->A seq={} ack={} {:?} len={} win={} ts={:?} sack={:?} | A {:?}->{:?}",
                    now.0,
                    seg.seq.0,
                    seg.ack.map_or(0, |a| a.0),
                    seg.flags,
                    seg.payload.len(),
                    seg.window,
                    seg.options.timestamps,
                    seg.options.sack_blocks(),
                    before,
                    a.state()
                );
            }
        });

        if self.a.poll_timeout().is_some_and(|t| t <= now) {
            self.a.handle_timeout(now);
        }
        self.app_a.drive(&mut self.a, now);
        Self::flush(
            &mut self.a,
            &mut self.a_to_b,
            &mut self.rng,
            now,
            &mut self.frame,
            true,
        );
        if let Some(b) = self.b.as_mut() {
            if b.poll_timeout().is_some_and(|t| t <= now) {
                b.handle_timeout(now);
            }
            self.app_b.drive(b, now);
            Self::flush(
                b,
                &mut self.b_to_a,
                &mut self.rng,
                now,
                &mut self.frame,
                false,
            );
        }

        let mut next = [
            self.a_to_b.next_delivery(),
            self.b_to_a.next_delivery(),
            self.a.poll_timeout(),
            self.b.as_ref().and_then(|b| b.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min();
        if self.app_a.read_paused_until > now || self.app_b.read_paused_until > now {
            let resume = self
                .app_a
                .read_paused_until
                .max(self.app_b.read_paused_until);
            next = Some(next.map_or(resume, |n| n.min(resume)));
        }
        match next {
            Some(t) => {
                self.now = t.max(Instant(now.0 + 1));
                true
            }
            None => false,
        }
    }

    /// Runs until both sides are closed or `limit` of virtual time passes.
    pub fn run(&mut self, limit: Duration) -> Outcome {
        let deadline = self.now + limit;
        while self.now < deadline {
            let finished = |s: State| matches!(s, State::Closed | State::TimeWait);
            let done =
                finished(self.a.state()) && self.b.as_ref().is_some_and(|b| finished(b.state()));
            if done || !self.step() {
                break;
            }
        }
        Outcome {
            a_state: self.a.state(),
            b_state: self.b.as_ref().map(|b| b.state()),
            elapsed: self.now,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub a_state: State,
    pub b_state: Option<State>,
    pub elapsed: Instant,
}

// ---------------------------------------------------------------- whole stacks

/// What the two ends of a simulated link share: the virtual clock, the seeded random
/// numbers and one [`Link`] each way.
#[derive(Debug)]
pub struct SimLink {
    /// The time of the current poll; set it before polling a stack.
    pub now: Instant,
    pub rng: Rng,
    pub a_to_b: Link,
    pub b_to_a: Link,
}

impl SimLink {
    /// The earliest time a frame arrives on either side.
    pub fn next_delivery(&self) -> Option<Instant> {
        crate::tcp::time::earliest(self.a_to_b.next_delivery(), self.b_to_a.next_delivery())
    }
}

/// One end of a simulated link as a [`Device`](crate::device::Device), so that
/// impaired, seeded links drive whole [`Stack`](crate::stack::Stack)s: listeners, SYN
/// cookies, ARP and all. Frames are delivered at the shared clock's time.
#[derive(Debug)]
pub struct SimDevice {
    mac: MacAddr,
    /// True for the A end (transmits on `a_to_b`).
    is_a: bool,
    link: std::rc::Rc<std::cell::RefCell<SimLink>>,
    scratch: Vec<u8>,
}

impl SimDevice {
    /// Two devices joined by a link with the given impairments each way.
    pub fn pair(
        seed: u64,
        (mac_a, a_to_b): (MacAddr, LinkConfig),
        (mac_b, b_to_a): (MacAddr, LinkConfig),
    ) -> (SimDevice, SimDevice) {
        let link = std::rc::Rc::new(std::cell::RefCell::new(SimLink {
            now: Instant::ZERO,
            rng: Rng::new(seed),
            a_to_b: Link::new(a_to_b),
            b_to_a: Link::new(b_to_a),
        }));
        let end = |mac, is_a| SimDevice {
            mac,
            is_a,
            link: link.clone(),
            scratch: vec![0; 9000 + wire::ETH_HEADER_LEN],
        };
        (end(mac_a, true), end(mac_b, false))
    }

    /// The link both ends share.
    pub fn link(&self) -> std::cell::RefMut<'_, SimLink> {
        self.link.borrow_mut()
    }
}

impl crate::device::Device for SimDevice {
    fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize {
        let mut received = 0;
        while received < RX_BATCH {
            let frame = {
                let mut l = self.link.borrow_mut();
                let now = l.now;
                let inbound = if self.is_a {
                    &mut l.b_to_a
                } else {
                    &mut l.a_to_b
                };
                inbound.pop_due(now)
            };
            let Some(frame) = frame else {
                break;
            };
            handle(&frame);
            received += 1;
        }
        received
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        let mtu = self.mtu();
        let n = build(&mut self.scratch[..mtu + wire::ETH_HEADER_LEN]);
        if n > 0 {
            let mut l = self.link.borrow_mut();
            let SimLink {
                now,
                rng,
                a_to_b,
                b_to_a,
            } = &mut *l;
            let outbound = if self.is_a { a_to_b } else { b_to_a };
            outbound.send(*now, self.scratch[..n].to_vec(), rng);
        }
        true
    }

    fn flush(&mut self) {}

    fn mac(&self) -> MacAddr {
        self.mac
    }

    fn mtu(&self) -> usize {
        let l = self.link.borrow();
        if self.is_a {
            l.a_to_b.config.mtu
        } else {
            l.b_to_a.config.mtu
        }
    }
}

// ---------------------------------------------------------------- the two-endpoint driver

/// A device a test drives in virtual time: the simulator's links deliver at the shared
/// clock's time and say when the next frame arrives; an in-memory wire delivers at once.
pub trait TestDevice: crate::device::Device {
    /// The time of the poll about to happen.
    fn set_now(&mut self, _now: Instant) {}
    /// When the next frame arrives on either end, if one is on its way.
    fn next_delivery(&self) -> Option<Instant> {
        None
    }
}

impl TestDevice for crate::device::memory::MemoryDevice {}

impl TestDevice for SimDevice {
    fn set_now(&mut self, now: Instant) {
        self.link().now = now;
    }
    fn next_delivery(&self) -> Option<Instant> {
        self.link.borrow().next_delivery()
    }
}

/// The one two-endpoint driver the unit tests, the simulator, the fuzz drivers and the
/// benches share: polls the client and then the server at `now`, and moves `now` to the
/// next event (a frame's arrival or a stack's deadline), at least 1 µs and at most
/// `max_step` later, so that the application gets its turns.
pub fn turn<D: TestDevice>(
    now: &mut Instant,
    max_step: Duration,
    (client, client_dev): (&mut crate::stack::Stack, &mut D),
    (server, server_dev): (&mut crate::stack::Stack, &mut D),
) {
    let at = *now;
    client_dev.set_now(at);
    client.poll(at, client_dev);
    server_dev.set_now(at);
    server.poll(at, server_dev);
    let next = [
        client_dev.next_delivery(),
        server_dev.next_delivery(),
        client.poll_at(),
        server.poll_at(),
    ]
    .into_iter()
    .flatten()
    .min()
    .map_or(at + max_step, |t| t.min(at + max_step));
    *now = next.max(Instant(at.0 + 1));
}

/// [`turn`]s until `done` says so (it runs after each turn); panics after `limit` of
/// virtual time.
pub fn run_until<D: TestDevice>(
    now: &mut Instant,
    max_step: Duration,
    limit: Duration,
    (client, client_dev): (&mut crate::stack::Stack, &mut D),
    (server, server_dev): (&mut crate::stack::Stack, &mut D),
    mut done: impl FnMut(&mut crate::stack::Stack, &mut crate::stack::Stack) -> bool,
) {
    let deadline = *now + limit;
    loop {
        turn(
            now,
            max_step,
            (&mut *client, &mut *client_dev),
            (&mut *server, &mut *server_dev),
        );
        if done(client, server) {
            return;
        }
        assert!(*now < deadline, "did not finish by {deadline:?}");
    }
}

/// Two whole stacks, a client and a server, joined by a pair of devices (a simulated
/// link by default, or an in-memory wire) and driven by [`run_until`].
pub struct StackPair<D: TestDevice = SimDevice> {
    pub now: Instant,
    pub client: crate::stack::Stack,
    pub server: crate::stack::Stack,
    pub client_dev: D,
    pub server_dev: D,
}

impl StackPair<SimDevice> {
    /// Stacks built from `client` and `server` (on one subnet), joined by `link` each way.
    pub fn new(
        seed: u64,
        client: crate::stack::StackConfig,
        server: crate::stack::StackConfig,
        link: LinkConfig,
    ) -> Self {
        let (client_dev, server_dev) =
            SimDevice::pair(seed, (client.mac, link.clone()), (server.mac, link));
        StackPair::with_devices(client, server, client_dev, server_dev)
    }
}

impl StackPair<crate::device::memory::MemoryDevice> {
    /// Stacks built from `client` and `server` (on one subnet), joined by an in-memory
    /// wire that loses nothing and delivers at once.
    pub fn wired(client: crate::stack::StackConfig, server: crate::stack::StackConfig) -> Self {
        let (client_dev, server_dev) =
            crate::device::memory::MemoryDevice::pair(client.mac, server.mac);
        StackPair::with_devices(client, server, client_dev, server_dev)
    }
}

impl<D: TestDevice> StackPair<D> {
    /// Stacks built from `client` and `server`, on these two ends of one link.
    pub fn with_devices(
        client: crate::stack::StackConfig,
        server: crate::stack::StackConfig,
        client_dev: D,
        server_dev: D,
    ) -> Self {
        StackPair {
            now: Instant::from_millis(1),
            client: crate::stack::Stack::new(client),
            server: crate::stack::Stack::new(server),
            client_dev,
            server_dev,
        }
    }

    /// One [`turn`] of at most `max_step`.
    pub fn step(&mut self, max_step: Duration) {
        turn(
            &mut self.now,
            max_step,
            (&mut self.client, &mut self.client_dev),
            (&mut self.server, &mut self.server_dev),
        );
    }

    /// Steps (at most 1 ms each) until `done` says so; panics after `limit` of virtual time.
    pub fn run_until(
        &mut self,
        limit: Duration,
        done: impl FnMut(&mut crate::stack::Stack, &mut crate::stack::Stack) -> bool,
    ) {
        run_until(
            &mut self.now,
            Duration::from_millis(1),
            limit,
            (&mut self.client, &mut self.client_dev),
            (&mut self.server, &mut self.server_dev),
            done,
        );
    }

    /// Connects the client to the server's `port` (listening with `backlog`) and runs
    /// until the client is established and the server accepted: (client id, server id).
    pub fn connect(
        &mut self,
        port: u16,
        backlog: usize,
        limit: Duration,
    ) -> (crate::stack::ConnId, crate::stack::ConnId) {
        let ip = self.server.config().ip;
        self.connect_to(
            SocketAddr::V4(SocketAddrV4::new(ip, port)),
            port,
            backlog,
            limit,
        )
    }

    /// [`StackPair::connect`] to the server's IPv6 address (its DAD over first).
    pub fn connect6(
        &mut self,
        port: u16,
        backlog: usize,
        limit: Duration,
    ) -> (crate::stack::ConnId, crate::stack::ConnId) {
        let ip = self
            .server
            .config()
            .ipv6
            .expect("server has an IPv6 address");
        self.run_until(limit, |c, s| {
            c.ipv6_state() == crate::stack::Ipv6State::Ready
                && s.ipv6_state() == crate::stack::Ipv6State::Ready
        });
        self.connect_to(
            SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
            port,
            backlog,
            limit,
        )
    }

    fn connect_to(
        &mut self,
        remote: SocketAddr,
        port: u16,
        backlog: usize,
        limit: Duration,
    ) -> (crate::stack::ConnId, crate::stack::ConnId) {
        self.server.listen(port, backlog).expect("listen");
        let id = self.client.connect(self.now, remote).expect("connect");
        let mut server_id = None;
        self.run_until(limit, |c, s| {
            server_id = server_id.or_else(|| s.accept(port));
            server_id.is_some() && c.state(id) == State::Established
        });
        (id, server_id.expect("accepted"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jitter delays frames but never lets one overtake an earlier one: only `reorder`
    /// reorders, and `stats.reordered` counts it.
    #[test]
    fn jitter_keeps_the_order() {
        let mut link = Link::new(LinkConfig {
            jitter: Duration::from_millis(3),
            ..LinkConfig::default()
        });
        let mut rng = Rng::new(7);
        for i in 0..200u8 {
            link.send(
                Instant::from_millis(u64::from(i) / 10),
                vec![i; 60],
                &mut rng,
            );
        }
        let mut arrived = Vec::new();
        while let Some(frame) = link.pop_due(Instant::from_millis(1_000)) {
            arrived.push(frame[0]);
        }
        assert_eq!(arrived, (0..200).collect::<Vec<u8>>());
        assert_eq!(link.stats.reordered, 0);
    }
}
