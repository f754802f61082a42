//! Bounded send buffer: bytes the application wrote that are not yet acknowledged.
//! Rings, so acknowledging and appending never move data. Storage starts small and
//! doubles up to the bound, so an idle connection costs little memory. A ring the
//! application filled can be handed over whole ([`SendBuffer::append`]): it is chained
//! behind the bytes in flight, and no byte is copied.

/// Storage a new buffer starts with.
pub const INITIAL_STORAGE: usize = 4096;

/// Bytes in a ring: `len` of them from `head`, wrapping around the storage.
#[derive(Debug, Default)]
pub struct Ring {
    storage: Box<[u8]>,
    head: usize,
    len: usize,
}

impl Ring {
    /// No bytes and no storage (it grows on the first push).
    pub fn new() -> Self {
        Ring::default()
    }

    fn with_storage(size: usize) -> Self {
        Ring {
            storage: vec![0; size].into_boxed_slice(),
            head: 0,
            len: 0,
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
    /// Drops every byte (the storage stays).
    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    /// A copy of the bytes held, in order.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len];
        self.copy_out(0, &mut out);
        out
    }

    /// Grows the storage (doubling, up to `limit`) so that `needed` bytes fit.
    fn reserve(&mut self, needed: usize, limit: usize) {
        let old = self.storage.len();
        if needed <= old {
            return;
        }
        let new_cap = needed.next_power_of_two().max(old * 2).min(limit);
        let mut storage = vec![0; new_cap].into_boxed_slice();
        self.copy_out(0, &mut storage[..self.len]);
        self.storage = storage;
        self.head = 0;
    }

    /// Appends as much of `data` as keeps the ring within `limit` bytes; returns how much.
    pub fn push(&mut self, data: &[u8], limit: usize) -> usize {
        let n = data.len().min(limit.saturating_sub(self.len));
        if n == 0 {
            return 0;
        }
        self.reserve(self.len + n, limit);
        let cap = self.storage.len();
        let tail = (self.head + self.len) % cap;
        let first = n.min(cap - tail);
        self.storage[tail..tail + first].copy_from_slice(&data[..first]);
        self.storage[..n - first].copy_from_slice(&data[first..n]);
        self.len += n;
        n
    }

    /// Drops `n` bytes from the front.
    fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        self.head = (self.head + n) % self.storage.len();
        self.len -= n;
    }

    /// Copies `dst.len()` bytes starting at `offset` from the front into `dst`.
    fn copy_out(&self, offset: usize, dst: &mut [u8]) {
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

/// Bytes queued by the application and not yet acknowledged by the peer: the `front`
/// ring, then the `back` one (a ring handed over while `front` still held bytes).
#[derive(Debug)]
pub struct SendBuffer {
    front: Ring,
    back: Ring,
    limit: usize,
}

impl SendBuffer {
    /// An empty buffer holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        SendBuffer {
            front: Ring::with_storage(limit.min(INITIAL_STORAGE)),
            back: Ring::new(),
            limit,
        }
    }

    /// A buffer with no storage and no room (a connection in TIME-WAIT).
    pub fn empty() -> Self {
        SendBuffer {
            front: Ring::new(),
            back: Ring::new(),
            limit: 0,
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.front.len + self.back.len
    }
    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The bound on buffered bytes.
    pub fn capacity(&self) -> usize {
        self.limit
    }
    /// Room left.
    pub fn free(&self) -> usize {
        self.limit - self.len()
    }
    /// Bytes of storage held now.
    pub fn storage_len(&self) -> usize {
        self.front.storage.len() + self.back.storage.len()
    }

    /// Appends as much of `data` as fits and returns how much that was (back-pressure).
    pub fn push(&mut self, data: &[u8]) -> usize {
        let (n, limit) = (data.len().min(self.free()), self.limit);
        // Bytes go behind the last ones held (the back ring holds bytes only while the
        // front one does).
        let tail = if self.back.is_empty() {
            &mut self.front
        } else {
            &mut self.back
        };
        tail.push(&data[..n], limit)
    }

    /// Takes the bytes of `ring`: the whole ring, swapped for an empty one, when it fits
    /// and a place is free for it (no byte moves); else as many bytes as fit, copied.
    /// Returns how many.
    pub fn append(&mut self, ring: &mut Ring) -> usize {
        let n = ring.len;
        if n == 0 || n > self.free() {
            return self.append_copy(ring);
        }
        if self.front.is_empty() {
            std::mem::swap(&mut self.front, ring);
        } else if self.back.is_empty() {
            std::mem::swap(&mut self.back, ring);
        } else {
            return self.append_copy(ring);
        }
        ring.clear();
        n
    }

    fn append_copy(&mut self, ring: &mut Ring) -> usize {
        let n = ring.len.min(self.free());
        let cap = ring.storage.len();
        let first = n.min(cap.saturating_sub(ring.head));
        let mut moved = self.push(&ring.storage[ring.head..ring.head + first]);
        moved += self.push(&ring.storage[..n - first]);
        ring.consume(moved);
        moved
    }

    /// Drops `n` acknowledged bytes from the front.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len());
        let from_front = n.min(self.front.len);
        self.front.consume(from_front);
        if self.front.is_empty() && !self.back.is_empty() {
            // The front ring is done: the one behind it moves up, its storage stays.
            std::mem::swap(&mut self.front, &mut self.back);
            self.back.clear();
        }
        self.front.consume(n - from_front);
    }

    /// Copies `dst.len()` bytes starting at `offset` from the front into `dst`.
    pub fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        assert!(
            offset + dst.len() <= self.len(),
            "copy_out past the end of the send buffer"
        );
        let in_front = self.front.len.saturating_sub(offset).min(dst.len());
        let (a, b) = dst.split_at_mut(in_front);
        self.front.copy_out(offset, a);
        self.back
            .copy_out((offset + in_front).saturating_sub(self.front.len), b);
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

    fn ring(bytes: &[u8]) -> Ring {
        let mut r = Ring::new();
        assert_eq!(r.push(bytes, 64), bytes.len());
        r
    }

    #[test]
    fn rings_are_handed_over_whole_behind_the_bytes_in_flight() {
        let mut b = SendBuffer::new(16);
        let mut r = ring(b"abcd");
        assert_eq!(b.append(&mut r), 4, "into the empty front");
        assert!(r.is_empty());
        let mut r = ring(b"efgh");
        assert_eq!(b.append(&mut r), 4, "into the back");
        assert_eq!(b.push(b"ij"), 2, "behind the back ring");
        let mut r = ring(b"klmnopqrstu");
        assert_eq!(b.append(&mut r), 6, "copied: both places taken, room for 6");
        assert_eq!(r.len(), 5);
        let mut out = [0u8; 16];
        b.copy_out(0, &mut out);
        assert_eq!(&out, b"abcdefghijklmnop");
        let mut out = [0u8; 6];
        b.copy_out(2, &mut out);
        assert_eq!(&out, b"cdefgh", "across the two rings");
        b.consume(5);
        assert_eq!(b.len(), 11);
        let mut out = [0u8; 11];
        b.copy_out(0, &mut out);
        assert_eq!(&out, b"fghijklmnop", "the back ring moved up");
        assert_eq!(b.append(&mut r), 5, "into the back again");
        let mut out = [0u8; 16];
        b.copy_out(0, &mut out);
        assert_eq!(&out, b"fghijklmnopqrstu");
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
