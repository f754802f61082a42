//! Zero heap allocations per packet in steady state, in both directions: a counting global
//! allocator watches two stacks move data over the in-memory link after a warm-up, and
//! charges every allocation to the side (sender or receiver) whose call made it.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use userspace::device::Device;
use userspace::device::memory::MemoryDevice;
use userspace::stack::{ConnId, Stack, StackConfig};
use userspace::tcp::{Instant, State};
use userspace::wire::MacAddr;

struct Counting;

thread_local! {
    // Per thread: the test harness runs tests side by side on several threads.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the allocator may run while this thread's locals are torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The in-memory link, dropping every `drop_every`-th frame it delivers (0: none), so
/// that the sender also runs its loss recovery (SACK, retransmission) in steady state.
struct Link {
    inner: MemoryDevice,
    drop_every: u64,
    delivered: u64,
}

impl Device for Link {
    fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize {
        let (every, delivered) = (self.drop_every, &mut self.delivered);
        self.inner.receive(&mut |frame| {
            *delivered += 1;
            if every == 0 || !(*delivered).is_multiple_of(every) {
                handle(frame);
            }
        })
    }
    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        self.inner.transmit(build)
    }
    fn flush(&mut self) {
        self.inner.flush()
    }
    fn mac(&self) -> MacAddr {
        self.inner.mac()
    }
}

/// One side: its stack, its end of the link, its connection and its byte counts.
struct Side {
    stack: Stack,
    link: Link,
    id: Option<ConnId>,
    sends: bool,
    sent: u64,
    received: u64,
    /// Heap allocations made by this side's calls (poll, send, recv).
    allocations: u64,
}

impl Side {
    fn new(mac: MacAddr, ip: Ipv4Addr, link: MemoryDevice, drop_every: u64) -> Side {
        Side {
            stack: Stack::new(StackConfig::new(mac, ip, 24)),
            link: Link {
                inner: link,
                drop_every,
                delivered: 0,
            },
            id: None,
            sends: false,
            sent: 0,
            received: 0,
            allocations: 0,
        }
    }

    /// One turn: poll, accept, write what fits, read what came.
    fn step(&mut self, now: Instant, chunk: &[u8], buf: &mut [u8]) {
        let before = allocations();
        self.stack.poll(now, &mut self.link);
        if self.id.is_none() {
            self.id = self.stack.accept(80);
        }
        if let Some(id) = self.id
            && self.stack.state(id) == State::Established
        {
            if self.sends {
                self.sent += self.stack.try_send(id, chunk).unwrap_or(0) as u64;
            }
            while let Ok(n) = self.stack.try_recv(id, buf) {
                self.received += n as u64;
            }
        }
        self.allocations += allocations() - before;
    }

    fn segments_out(&self) -> u64 {
        self.id
            .and_then(|id| self.stack.connection(id))
            .map_or(0, |c| c.stats().segments_out)
    }
}

/// Client and server with a connection between them; `client_sends`/`server_sends` pick
/// the directions. Runs a warm-up of 50 MiB each way that flows, then `measure` bytes,
/// and returns the two sides with counters covering only the measured part.
fn transfer(client_sends: bool, server_sends: bool, drop_every: u64, measure: u64) -> [Side; 2] {
    let (ip_c, ip_s) = (Ipv4Addr::new(10, 1, 1, 1), Ipv4Addr::new(10, 1, 1, 2));
    let (mac_c, mac_s) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let (dc, ds) = MemoryDevice::pair(mac_c, mac_s);
    let mut sides = [
        Side::new(mac_c, ip_c, dc, drop_every),
        Side::new(mac_s, ip_s, ds, drop_every),
    ];
    sides[0].sends = client_sends;
    sides[1].sends = server_sends;
    sides[1].stack.listen(80, 4).unwrap();
    let mut now = Instant::from_millis(1);
    sides[0].id = Some(
        sides[0]
            .stack
            .connect(now, SocketAddrV4::new(ip_s, 80))
            .unwrap(),
    );
    let chunk = vec![7u8; 64 * 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let least = |sides: &[Side; 2]| {
        let mut least = u64::MAX;
        if client_sends {
            least = least.min(sides[1].received);
        }
        if server_sends {
            least = least.min(sides[0].received);
        }
        least
    };
    let mut run = |sides: &mut [Side; 2], until: u64| {
        while least(sides) < until {
            for side in sides.iter_mut() {
                side.step(now, &chunk, &mut buf);
            }
            now = now + Duration::from_micros(20);
        }
    };
    // Warm-up: handshake, ARP, buffers, queues and the scoreboard grow to working size.
    run(&mut sides, 50 << 20);
    for side in sides.iter_mut() {
        side.allocations = 0;
        side.sent = 0;
        side.received = 0;
    }
    let segments_before = [sides[0].segments_out(), sides[1].segments_out()];
    run(&mut sides, measure);
    for (side, before) in sides.iter_mut().zip(segments_before) {
        // Reuse `sent` for the segments of the measured part.
        side.sent = side.segments_out() - before;
    }
    sides
}

fn assert_no_allocations(sides: &[Side; 2], min_segments: u64) {
    for (name, side) in ["client", "server"].iter().zip(sides) {
        assert!(
            !side.sends || side.sent > min_segments,
            "{name}: only {} segments measured",
            side.sent
        );
        assert_eq!(
            side.allocations, 0,
            "{name}: {} heap allocations for {} segments sent",
            side.allocations, side.sent
        );
    }
}

#[test]
fn steady_state_transfer_allocates_nothing() {
    assert_no_allocations(&transfer(true, false, 0, 100 << 20), 50_000);
}

/// The sender on its own: a bulk upload from the server side of the connection (the
/// accepting side), so the sender's path is measured from both kinds of connection.
#[test]
fn bulk_send_from_the_accepting_side_allocates_nothing() {
    assert_no_allocations(&transfer(false, true, 0, 100 << 20), 50_000);
}

/// Both directions at once: every segment carries data and acknowledges the other way.
#[test]
fn both_directions_at_once_allocate_nothing() {
    assert_no_allocations(&transfer(true, true, 0, 50 << 20), 25_000);
}

/// A bulk send through steady loss (one frame in 500 each way): fast retransmit, SACK
/// recovery and out-of-order reassembly run over and over, still without allocating.
#[test]
fn bulk_send_through_loss_allocates_nothing() {
    let sides = transfer(true, false, 500, 50 << 20);
    let stats = sides[0].stack.connection_totals();
    assert!(
        stats.fast_retransmits > 10
            && sides[1].stack.connection_totals().out_of_order_segments > 10,
        "the loss did not show: {stats:?}"
    );
    assert_no_allocations(&sides, 25_000);
}
