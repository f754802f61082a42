//! Bounded send buffer: bytes the application wrote that are not yet acknowledged.
//! A ring, so acknowledging and appending never move data. Storage starts small and
//! doubles up to the bound, so an idle connection costs little memory.

/// Storage a new buffer starts with.
pub const INITIAL_STORAGE: usize = 4096;

/// Bytes queued by the application and not yet acknowledged by the peer.
#[derive(Debug)]
pub struct SendBuffer {
    storage: Box<[u8]>,
    head: usize,
    len: usize,
    limit: usize,
}

impl SendBuffer {
    /// An empty buffer holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        SendBuffer {
            storage: vec![0; limit.min(INITIAL_STORAGE)].into_boxed_slice(),
            head: 0,
            len: 0,
            limit,
        }
    }

    /// Grows the ring (doubling, up to the limit) so that `needed` bytes fit.
    fn reserve(&mut self, needed: usize) {
        let old = self.storage.len();
        if needed <= old {
            return;
        }
        let new_cap = needed.next_power_of_two().max(old * 2).min(self.limit);
        let mut storage = vec![0; new_cap].into_boxed_slice();
        self.copy_out(0, &mut storage[..self.len]);
        self.storage = storage;
        self.head = 0;
    }

    /// A buffer with no storage and no room (a connection in TIME-WAIT).
    pub fn empty() -> Self {
        SendBuffer {
            storage: Box::default(),
            head: 0,
            len: 0,
            limit: 0,
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The bound on buffered bytes.
    pub fn capacity(&self) -> usize {
        self.limit
    }
    /// Room left.
    pub fn free(&self) -> usize {
        self.limit - self.len
    }
    /// Bytes of storage held now.
    pub fn storage_len(&self) -> usize {
        self.storage.len()
    }

    /// Appends as much of `data` as fits and returns how much that was (back-pressure).
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        if n == 0 {
            return 0;
        }
        self.reserve(self.len + n);
        let cap = self.storage.len();
        let tail = (self.head + self.len) % cap;
        let first = n.min(cap - tail);
        self.storage[tail..tail + first].copy_from_slice(&data[..first]);
        self.storage[..n - first].copy_from_slice(&data[first..n]);
        self.len += n;
        n
    }

    /// Drops `n` acknowledged bytes from the front.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        self.head = (self.head + n) % self.storage.len();
        self.len -= n;
    }

    /// Copies `dst.len()` bytes starting at `offset` from the front into `dst`.
    pub fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        assert!(
            offset + dst.len() <= self.len,
            "copy_out past the end of the send buffer"
        );
        if dst.is_empty() {
            return;
        }
        let cap = self.storage.len();
        let start = (self.head + offset) % cap;
        let first = dst.len().min(cap - start);
        dst[..first].copy_from_slice(&self.storage[start..start + first]);
        let rest = dst.len() - first;
        dst[first..].copy_from_slice(&self.storage[..rest]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_inside_small_storage_before_growing() {
        let mut b = SendBuffer::new(1 << 20);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        b.push(&data[..3000]);
        b.consume(2500);
        b.push(&data[3000..6000]); // wraps in the 4096-byte ring
        let mut out = vec![0; 3500];
        b.copy_out(0, &mut out);
        assert_eq!(&out[..], &data[2500..6000]);
        b.push(&data[6000..]); // grows, unwrapping the ring
        let mut out = vec![0; 7500];
        b.copy_out(0, &mut out);
        assert_eq!(&out[..], &data[2500..]);
    }

    #[test]
    fn grows_on_demand_up_to_the_limit() {
        let mut b = SendBuffer::new(100_000);
        assert_eq!(b.storage_len(), INITIAL_STORAGE);
        let data: Vec<u8> = (0..150_000u32).map(|i| i as u8).collect();
        b.push(&data[..3000]);
        b.consume(2000);
        assert_eq!(b.push(&data[3000..]), 99_000);
        assert_eq!(b.storage_len(), 100_000);
        let mut out = vec![0; 100_000];
        b.copy_out(0, &mut out);
        assert_eq!(&out[..], &data[2000..102_000]);
    }

    #[test]
    fn wraps_and_applies_back_pressure() {
        let mut b = SendBuffer::new(8);
        assert_eq!(b.push(b"abcdef"), 6);
        b.consume(4);
        assert_eq!(b.push(b"ghijklmn"), 6);
        assert_eq!(b.len(), 8);
        let mut out = [0u8; 8];
        b.copy_out(0, &mut out);
        assert_eq!(&out, b"efghijkl");
        let mut out = [0u8; 3];
        b.copy_out(4, &mut out);
        assert_eq!(&out, b"ijk");
    }
}
