//! Bounded send buffer: bytes the application wrote that are not yet acknowledged.
//! A ring, so acknowledging and appending never move data.

#[derive(Debug)]
pub struct SendBuffer {
    storage: Box<[u8]>,
    head: usize,
    len: usize,
}

impl SendBuffer {
    pub fn new(capacity: usize) -> Self {
        SendBuffer {
            storage: vec![0; capacity.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.storage.len()
    }
    pub fn free(&self) -> usize {
        self.capacity() - self.len
    }

    /// Appends as much of `data` as fits and returns how much that was (back-pressure).
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        let cap = self.capacity();
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
        self.head = (self.head + n) % self.capacity();
        self.len -= n;
    }

    /// Copies `dst.len()` bytes starting at `offset` from the front into `dst`.
    pub fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        assert!(
            offset + dst.len() <= self.len,
            "copy_out past the end of the send buffer"
        );
        let cap = self.capacity();
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
