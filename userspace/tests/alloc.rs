//! Zero heap allocations per packet in steady state: a counting global allocator watches
//! two stacks move data over the in-memory link after a warm-up.
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use userspace::device::memory::MemoryDevice;
use userspace::stack::{Stack, StackConfig};
use userspace::tcp::{Instant, State};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_transfer_allocates_nothing() {
    let (ip_c, ip_s) = (Ipv4Addr::new(10, 1, 1, 1), Ipv4Addr::new(10, 1, 1, 2));
    let (mut dc, mut ds) = MemoryDevice::pair([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let mut c = Stack::new(StackConfig::new(dc_mac(), ip_c, 24));
    let mut s = Stack::new(StackConfig::new([2, 0, 0, 0, 0, 2], ip_s, 24));
    s.listen(80, 4).unwrap();
    let mut now = Instant::from_millis(1);
    let id = c.connect(now, SocketAddrV4::new(ip_s, 80)).unwrap();
    let mut sid = None;
    let chunk = vec![7u8; 64 * 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let mut received: u64 = 0;
    let mut step = |c: &mut Stack, s: &mut Stack, now: &mut Instant, sid: &mut Option<_>| -> u64 {
        let mut got = 0;
        c.poll(*now, &mut dc);
        s.poll(*now, &mut ds);
        if sid.is_none() {
            *sid = s.accept(80);
        }
        if c.state(id) == State::Established {
            let _ = c.send(id, &chunk);
        }
        if let Some(sid) = *sid {
            while let Ok(n) = s.recv(sid, &mut buf) {
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
        }
        *now = *now + Duration::from_micros(20);
        got
    };
    // Warm-up: handshake, ARP, buffers and queues grow to their working size.
    while received < 50 << 20 {
        received += step(&mut c, &mut s, &mut now, &mut sid);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let start = received;
    let segments_before = c.connection(id).unwrap().stats().segments_out;
    while received < start + (100 << 20) {
        received += step(&mut c, &mut s, &mut now, &mut sid);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let segments = c.connection(id).unwrap().stats().segments_out - segments_before;
    assert!(segments > 50_000, "{segments} segments measured");
    assert_eq!(
        allocations, 0,
        "{allocations} heap allocations for {segments} segments"
    );
}

fn dc_mac() -> [u8; 6] {
    [2, 0, 0, 0, 0, 1]
}
