//! An in-memory device pair: what one side transmits, the other receives.
use super::Device;
use crate::wire::MacAddr;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

type Queue = Rc<RefCell<VecDeque<Vec<u8>>>>;

pub struct MemoryDevice {
    mac: MacAddr,
    rx: Queue,
    tx: Queue,
    buf: Vec<u8>,
    pub batch: usize,
}

impl MemoryDevice {
    /// Two devices joined by a wire.
    pub fn pair(mac_a: MacAddr, mac_b: MacAddr) -> (MemoryDevice, MemoryDevice) {
        let ab: Queue = Rc::default();
        let ba: Queue = Rc::default();
        (
            MemoryDevice {
                mac: mac_a,
                rx: ba.clone(),
                tx: ab.clone(),
                buf: vec![0; 2048],
                batch: 64,
            },
            MemoryDevice {
                mac: mac_b,
                rx: ab,
                tx: ba,
                buf: vec![0; 2048],
                batch: 64,
            },
        )
    }

    /// Queues a frame as if it arrived from the wire.
    pub fn inject(&self, frame: &[u8]) {
        self.rx.borrow_mut().push_back(frame.to_vec());
    }

    /// Takes the frames this device transmitted (when nothing is on the other end).
    pub fn take_transmitted(&self) -> Vec<Vec<u8>> {
        self.tx.borrow_mut().drain(..).collect()
    }
}

impl Device for MemoryDevice {
    fn receive(&mut self, handle: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < self.batch {
            let Some(frame) = self.rx.borrow_mut().pop_front() else {
                break;
            };
            handle(&frame);
            n += 1;
        }
        n
    }

    fn transmit(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize) -> bool {
        let len = build(&mut self.buf);
        if len > 0 {
            self.tx.borrow_mut().push_back(self.buf[..len].to_vec());
        }
        true
    }

    fn flush(&mut self) {}

    fn mac(&self) -> MacAddr {
        self.mac
    }
}
