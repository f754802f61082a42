//! An in-memory device pair: what one side transmits, the other receives. Frames live in
//! preallocated rings, so moving a frame allocates nothing (benchmarks and the
//! zero-allocation test rely on it).
use super::Device;
use crate::wire::{MacAddr, complete_checksum, tcp_checksum_location};
use std::cell::RefCell;
use std::rc::Rc;

const FRAME: usize = 2048;

/// A bounded FIFO of frames in one preallocated block.
#[derive(Debug)]
pub struct FrameRing {
    data: Vec<u8>,
    lens: Vec<usize>,
    head: usize,
    len: usize,
}

impl FrameRing {
    /// An empty queue that holds at most `frames` frames.
    pub fn new(frames: usize) -> Self {
        FrameRing {
            data: vec![0; frames * FRAME],
            lens: vec![0; frames],
            head: 0,
            len: 0,
        }
    }
    /// Frames queued.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn slots(&self) -> usize {
        self.lens.len()
    }
    /// Writes a frame with `build`; false when the ring is full.
    pub fn push_with(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        if self.len == self.slots() {
            return false;
        }
        let slot = (self.head + self.len) % self.slots();
        let n = build(&mut self.data[slot * FRAME..(slot + 1) * FRAME]);
        if n > 0 {
            self.lens[slot] = n;
            self.len += 1;
        }
        true
    }
    /// Queues a copy of `frame`; false (dropped) when the queue is full.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        self.push_with(&mut |buf| {
            buf[..frame.len()].copy_from_slice(frame);
            frame.len()
        })
    }
    /// Hands the oldest frame to `f` and drops it.
    pub fn pop_with(&mut self, f: &mut dyn FnMut(&[u8])) -> bool {
        if self.len == 0 {
            return false;
        }
        let slot = self.head;
        f(&self.data[slot * FRAME..slot * FRAME + self.lens[slot]]);
        self.head = (self.head + 1) % self.slots();
        self.len -= 1;
        true
    }
}

/// One end of an in-memory Ethernet link: what one end transmits, the other receives.
pub struct MemoryDevice {
    mac: MacAddr,
    rx: Rc<RefCell<FrameRing>>,
    tx: Rc<RefCell<FrameRing>>,
    /// Most frames handed out by one `receive` call.
    pub batch: usize,
    /// Completes the TCP checksum of what it transmits, as a NIC with TX checksum
    /// offload does (the stack then leaves only the pseudo-header sum).
    pub tx_checksum_offload: bool,
}

impl MemoryDevice {
    /// Two devices joined by a wire of `frames` slots each way.
    pub fn pair(mac_a: MacAddr, mac_b: MacAddr) -> (MemoryDevice, MemoryDevice) {
        Self::pair_with_capacity(mac_a, mac_b, 4096)
    }

    /// Two connected ends whose queues hold at most `frames` frames each way.
    pub fn pair_with_capacity(
        mac_a: MacAddr,
        mac_b: MacAddr,
        frames: usize,
    ) -> (MemoryDevice, MemoryDevice) {
        let ab = Rc::new(RefCell::new(FrameRing::new(frames)));
        let ba = Rc::new(RefCell::new(FrameRing::new(frames)));
        (
            MemoryDevice {
                mac: mac_a,
                rx: ba.clone(),
                tx: ab.clone(),
                batch: 64,
                tx_checksum_offload: false,
            },
            MemoryDevice {
                mac: mac_b,
                rx: ab,
                tx: ba,
                batch: 64,
                tx_checksum_offload: false,
            },
        )
    }

    /// Queues a frame as if it arrived from the wire.
    pub fn inject(&self, frame: &[u8]) {
        self.rx.borrow_mut().push(frame);
    }

    /// Takes the frames this device transmitted (when nothing is on the other end).
    pub fn take_transmitted(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while self.tx.borrow_mut().pop_with(&mut |f| out.push(f.to_vec())) {}
        out
    }

    /// Frames waiting to be received by this end.
    pub fn pending_rx(&self) -> usize {
        self.rx.borrow().len()
    }
}

impl Device for MemoryDevice {
    fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        let mut rx = self.rx.borrow_mut();
        while n < self.batch && rx.pop_with(handle) {
            n += 1;
        }
        n
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        // A full wire has no free buffer, like a full TX ring: the stack retries later.
        let offload = self.tx_checksum_offload;
        self.tx.borrow_mut().push_with(&mut |buf| {
            let n = build(buf);
            if offload && let Some((start, offset)) = tcp_checksum_location(&buf[..n]) {
                complete_checksum(&mut buf[..n], start.into(), offset.into());
            }
            n
        })
    }

    fn flush(&mut self) {}

    fn mac(&self) -> MacAddr {
        self.mac
    }

    fn tx_checksum_offload(&self) -> bool {
        self.tx_checksum_offload
    }
}
