//! Receive buffer with out-of-order reassembly (RFC 9293 section 3.10.7.4).
//!
//! One ring holds both the in-order bytes waiting for the application and the
//! out-of-order bytes beyond them, each at its final place, so a segment's payload is
//! copied exactly once: from the frame into the ring. Out-of-order data is tracked as
//! sorted, merged ranges relative to RCV.NXT; their number and total size are bounded.

/// The receive buffer: in-order bytes for the application plus out-of-order ranges
/// waiting for the gap before them.
#[derive(Debug)]
pub struct Reassembler {
    /// Grows (doubling) up to `capacity` as data arrives; an idle connection holds 4 KiB.
    storage: Box<[u8]>,
    capacity: usize,
    head: usize,
    readable: usize,
    /// Sorted, disjoint, non-adjacent `[start, end)` offsets from RCV.NXT.
    ranges: Vec<(usize, usize)>,
    max_ranges: usize,
    max_ooo_bytes: usize,
    /// Ranges in the order SACK reports them (RFC 2018 section 4): the one holding the
    /// latest out-of-order segment first, then the most recently reported ones.
    recent: [(usize, usize); RECENT],
    recent_len: usize,
    /// In-order bytes handed out whole ([`Reassembler::take_readable`]) that the
    /// application has not read yet: they still count against the window.
    lent: usize,
}

/// SACK blocks that fit in the option space.
const RECENT: usize = crate::wire::MAX_SACK_BLOCKS;

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inserted {
    /// Bytes that became readable in order (RCV.NXT advances by this).
    pub advanced: usize,
    /// The segment (or part of it) was kept out of order.
    pub out_of_order: bool,
    /// Some bytes were beyond the window or over a bound and were dropped.
    pub dropped: bool,
}

impl Reassembler {
    /// A buffer of `capacity` bytes keeping at most `max_ranges` out-of-order ranges and
    /// `max_ooo_bytes` out-of-order bytes.
    pub fn new(capacity: usize, max_ranges: usize, max_ooo_bytes: usize) -> Self {
        let capacity = capacity.max(1);
        Reassembler {
            storage: vec![0; capacity.min(super::send_buffer::INITIAL_STORAGE)].into_boxed_slice(),
            capacity,
            head: 0,
            readable: 0,
            ranges: Vec::with_capacity(max_ranges + 1),
            max_ranges,
            max_ooo_bytes,
            recent: [(0, 0); RECENT],
            recent_len: 0,
            lent: 0,
        }
    }

    /// Its size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A buffer with no storage and a zero window (a connection in TIME-WAIT).
    pub fn empty() -> Self {
        Reassembler {
            storage: Box::default(),
            capacity: 0,
            head: 0,
            readable: 0,
            ranges: Vec::new(),
            max_ranges: 0,
            max_ooo_bytes: 0,
            recent: [(0, 0); RECENT],
            recent_len: 0,
            lent: 0,
        }
    }

    /// Bytes of storage held now.
    pub fn storage_len(&self) -> usize {
        self.storage.len()
    }

    /// Makes room for `extent` bytes from the read position, keeping every byte in place
    /// relative to it (in-order data and out-of-order ranges alike).
    fn reserve(&mut self, extent: usize) {
        let old = self.storage.len();
        if extent <= old {
            return;
        }
        let new_cap = extent.next_power_of_two().max(old * 2).min(self.capacity);
        let mut storage = vec![0; new_cap].into_boxed_slice();
        // Everything held lies within `old` bytes from head (it all fit before).
        let first = old - self.head;
        storage[..first].copy_from_slice(&self.storage[self.head..]);
        storage[first..old].copy_from_slice(&self.storage[..self.head]);
        self.storage = storage;
        self.head = 0;
    }
    /// In-order bytes waiting for the application.
    pub fn readable(&self) -> usize {
        self.readable
    }
    /// The receive window: room beyond the in-order data, both the data held here and
    /// the data handed out and not read yet (RFC 9293 3.8.6.2.2).
    pub fn window(&self) -> usize {
        self.capacity().saturating_sub(self.readable + self.lent)
    }
    /// Bytes handed out and not read yet.
    pub fn lent(&self) -> usize {
        self.lent
    }
    /// Bytes held out of order.
    pub fn out_of_order_bytes(&self) -> usize {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }
    /// True while a gap is open.
    pub fn has_out_of_order(&self) -> bool {
        !self.ranges.is_empty()
    }

    /// Inserts `data` at `offset` bytes past RCV.NXT. Duplicates and overlaps are harmless:
    /// bytes land where they belong.
    pub fn insert(&mut self, offset: usize, data: &[u8]) -> Inserted {
        let mut result = Inserted::default();
        let window = self.window();
        if offset >= window {
            result.dropped = !data.is_empty();
            return result;
        }
        let len = data.len().min(window - offset);
        result.dropped = len < data.len();
        if len == 0 {
            return result;
        }
        let (start, end) = (offset, offset + len);
        if start > 0 {
            // Bound the out-of-order state (memory and work per segment).
            let merged_growth = self.new_bytes_in(start, end);
            let touches = self.ranges.iter().any(|&(s, e)| s <= end && start <= e);
            if (!touches && self.ranges.len() >= self.max_ranges)
                || self.out_of_order_bytes() + merged_growth > self.max_ooo_bytes
            {
                result.dropped = true;
                return result;
            }
        }
        self.write_new_bytes(start, &data[..len]);
        self.merge(start, end);
        if self.ranges[0].0 == 0 {
            let advanced = self.ranges.remove(0).1;
            self.readable += advanced;
            for r in &mut self.ranges {
                r.0 -= advanced;
                r.1 -= advanced;
            }
            // Ranges now in order leave the report; the others move with RCV.NXT.
            let mut kept = 0;
            for i in 0..self.recent_len {
                let (s, e) = self.recent[i];
                if s > advanced {
                    self.recent[kept] = (s - advanced, e - advanced);
                    kept += 1;
                }
            }
            self.recent_len = kept;
            result.advanced = advanced;
        }
        result.out_of_order = start > 0;
        if start > 0
            && let Some(&block) = self.ranges.iter().find(|&&(s, e)| s <= start && end <= e)
        {
            self.report_first(block);
        }
        result
    }

    /// Moves `block` to the front of the SACK report, dropping the reported ranges it
    /// absorbed (RFC 2018 section 4).
    fn report_first(&mut self, block: (usize, usize)) {
        let mut order = [block; RECENT];
        let mut n = 1;
        for &(s, e) in &self.recent[..self.recent_len] {
            let absorbed = block.0 <= s && e <= block.1;
            if !absorbed && n < RECENT {
                order[n] = (s, e);
                n += 1;
            }
        }
        self.recent = order;
        self.recent_len = n;
    }

    fn new_bytes_in(&self, start: usize, end: usize) -> usize {
        let covered: usize = self
            .ranges
            .iter()
            .map(|&(s, e)| e.min(end).saturating_sub(s.max(start)))
            .sum();
        (end - start) - covered
    }

    /// Writes only the bytes of `[start, start + data.len())` no range holds yet: the
    /// first copy of a byte wins, as in Linux and BSD, so a later overlapping segment
    /// with different bytes cannot rewrite data already queued out of order.
    fn write_new_bytes(&mut self, start: usize, data: &[u8]) {
        let end = start + data.len();
        let mut pos = start;
        for i in 0..self.ranges.len() {
            let (s, e) = self.ranges[i];
            if e <= pos {
                continue;
            }
            if s >= end {
                break;
            }
            if s > pos {
                self.write_at(pos, &data[pos - start..s - start]);
            }
            pos = pos.max(e);
            if pos >= end {
                return;
            }
        }
        if pos < end {
            self.write_at(pos, &data[pos - start..]);
        }
    }

    fn write_at(&mut self, offset: usize, data: &[u8]) {
        self.reserve(self.readable + offset + data.len());
        let cap = self.storage.len();
        let pos = (self.head + self.readable + offset) % cap;
        let first = data.len().min(cap - pos);
        self.storage[pos..pos + first].copy_from_slice(&data[..first]);
        self.storage[..data.len() - first].copy_from_slice(&data[first..]);
    }

    fn merge(&mut self, mut start: usize, mut end: usize) {
        let mut i = 0;
        while i < self.ranges.len() {
            let (s, e) = self.ranges[i];
            if e < start {
                i += 1;
            } else if s > end {
                break;
            } else {
                start = start.min(s);
                end = end.max(e);
                self.ranges.remove(i);
            }
        }
        self.ranges.insert(i, (start, end));
    }

    /// Copies in-order bytes into `dst` and frees their space; returns how many.
    pub fn read(&mut self, dst: &mut [u8]) -> usize {
        read_ring(&self.storage, &mut self.head, &mut self.readable, dst)
    }

    /// Hands every in-order byte out into `out`, which must have been read empty:
    /// without out-of-order data the two rings are swapped (no byte moves), else the
    /// in-order bytes are copied. The bytes count against the window until
    /// [`Reassembler::returned`] says the application read them. Returns how many.
    pub fn take_readable(&mut self, out: &mut RecvBuf) -> usize {
        let n = self.readable;
        if n == 0 || !out.is_empty() {
            return 0;
        }
        if self.ranges.is_empty() {
            std::mem::swap(&mut self.storage, &mut out.storage);
            out.head = self.head;
            self.head = 0;
            self.readable = 0;
        } else {
            // The ring also holds bytes beyond a gap: only the in-order ones leave.
            if out.storage.len() < n {
                out.storage = vec![0; n.next_power_of_two().min(self.capacity)].into_boxed_slice();
            }
            out.head = 0;
            self.read(&mut out.storage[..n]);
        }
        out.len = n;
        self.lent += n;
        n
    }

    /// The application read `n` of the bytes handed out: their room is free again.
    pub fn returned(&mut self, n: usize) {
        self.lent -= n.min(self.lent);
    }

    /// Copies the bytes at `offset` past the read position (in-order bytes first, then
    /// the out-of-order ranges at `readable + start`) into `dst`, leaving them.
    pub fn copy_at(&self, offset: usize, dst: &mut [u8]) {
        let cap = self.storage.len();
        if dst.is_empty() || cap == 0 {
            return;
        }
        let pos = (self.head + offset) % cap;
        let first = dst.len().min(cap - pos);
        dst[..first].copy_from_slice(&self.storage[pos..pos + first]);
        let rest = dst.len() - first;
        dst[first..].copy_from_slice(&self.storage[..rest]);
    }

    /// The out-of-order ranges (offsets from RCV.NXT), sorted.
    pub fn out_of_order_ranges(&self) -> &[(usize, usize)] {
        &self.ranges
    }

    /// The out-of-order ranges SACK reports first, in that order (RFC 2018 section 4).
    pub fn reported_first(&self) -> &[(usize, usize)] {
        &self.recent[..self.recent_len]
    }

    /// Out-of-order ranges as offsets from RCV.NXT, the most recently changed first
    /// (RFC 2018 section 4), at most `max` of them.
    pub fn sack_ranges(&self, out: &mut [(usize, usize)]) -> usize {
        let reported = &self.recent[..self.recent_len];
        let mut n = 0;
        let others = self.ranges.iter().filter(|r| !reported.contains(r));
        for &r in reported.iter().chain(others) {
            if n == out.len() {
                break;
            }
            out[n] = r;
            n += 1;
        }
        n
    }
}

/// Copies up to `dst.len()` of the `len` bytes at `head` of the ring `storage` into
/// `dst` and drops them from the ring; returns how many.
fn read_ring(storage: &[u8], head: &mut usize, len: &mut usize, dst: &mut [u8]) -> usize {
    let n = dst.len().min(*len);
    if n == 0 {
        return 0;
    }
    let cap = storage.len();
    let first = n.min(cap - *head);
    dst[..first].copy_from_slice(&storage[*head..*head + first]);
    dst[first..n].copy_from_slice(&storage[..n - first]);
    *head = (*head + n) % cap;
    *len -= n;
    n
}

/// In-order received bytes handed out of a [`Reassembler`] whole: a ring the
/// application reads from while the connection receives into another.
#[derive(Debug, Default)]
pub struct RecvBuf {
    storage: Box<[u8]>,
    head: usize,
    len: usize,
}

impl RecvBuf {
    /// No bytes and no storage; [`Reassembler::take_readable`] gives it both.
    pub fn new() -> Self {
        RecvBuf::default()
    }
    /// Bytes not read yet.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when every byte was read.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Copies bytes into `dst` and drops them; returns how many.
    pub fn read(&mut self, dst: &mut [u8]) -> usize {
        read_ring(&self.storage, &mut self.head, &mut self.len, dst)
    }
    /// The bytes not read yet that lie in one piece from the read position: all of
    /// them, or those before the ring wraps (the rest come after [`RecvBuf::consume`]).
    pub fn front(&self) -> &[u8] {
        let end = (self.head + self.len).min(self.storage.len());
        &self.storage[self.head..end]
    }
    /// Drops the first `n` bytes not read yet (at most [`RecvBuf::len`]), as a read
    /// would without copying them; returns how many.
    pub fn consume(&mut self, n: usize) -> usize {
        let n = n.min(self.len);
        if n > 0 {
            self.head = (self.head + n) % self.storage.len();
            self.len -= n;
        }
        n
    }
    /// Copies bytes into `dst` without dropping them (MSG_PEEK); returns how many.
    pub fn peek(&self, dst: &mut [u8]) -> usize {
        let (mut head, mut len) = (self.head, self.len);
        read_ring(&self.storage, &mut head, &mut len, dst)
    }
    /// A ring holding `data`, as a hand-over would leave it (for tests).
    pub fn holding(data: &[u8]) -> Self {
        RecvBuf {
            storage: data.into(),
            head: 0,
            len: data.len(),
        }
    }
    /// Drops the bytes not read (the storage stays for the next hand-over).
    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_out_of_order_and_gap_fill() {
        let mut r = Reassembler::new(16, 4, 16);
        assert_eq!(r.insert(4, b"efgh").advanced, 0);
        assert!(r.has_out_of_order());
        assert_eq!(r.insert(10, b"kl").advanced, 0);
        let mut sacks = [(0, 0); 4];
        assert_eq!(r.sack_ranges(&mut sacks), 2);
        assert_eq!(sacks[0], (10, 12));
        let ins = r.insert(0, b"abcd");
        assert_eq!(ins.advanced, 8);
        assert_eq!(r.insert(0, b"ij").advanced, 4);
        let mut out = [0u8; 16];
        assert_eq!(r.read(&mut out), 12);
        assert_eq!(&out[..12], b"abcdefghijkl");
        assert!(!r.has_out_of_order());
    }

    #[test]
    fn storage_grows_keeping_in_order_and_out_of_order_bytes() {
        let data: Vec<u8> = (0..60_000u32).map(|i| (i * 7) as u8).collect();
        let mut r = Reassembler::new(64 * 1024, 8, 64 * 1024);
        assert_eq!(r.insert(0, &data[..3000]).advanced, 3000);
        let mut out = vec![0; 2500];
        r.read(&mut out); // head moves, so the ring wraps when it grows
        assert_eq!(r.insert(20_000 - 3000, &data[20_000..30_000]).advanced, 0);
        assert_eq!(r.insert(0, &data[3000..20_000]).advanced, 27_000);
        let mut out = vec![0; 27_500];
        assert_eq!(r.read(&mut out), 27_500);
        assert_eq!(&out[..], &data[2500..30_000]);
    }

    #[test]
    fn handing_out_swaps_the_ring_and_the_bytes_keep_their_room_until_returned() {
        let mut r = Reassembler::new(16, 4, 16);
        r.insert(0, b"abcdefgh");
        let mut rx = RecvBuf::new();
        assert_eq!(r.take_readable(&mut rx), 8);
        assert_eq!((r.readable(), r.lent(), r.window()), (0, 8, 8));
        assert_eq!(r.insert(0, b"ijklmnopq").advanced, 8, "the window is 8");
        assert_eq!(r.take_readable(&mut rx), 0, "not before rx is read empty");
        let mut out = [0u8; 8];
        assert_eq!(rx.read(&mut out), 8);
        assert_eq!(&out, b"abcdefgh");
        r.returned(8);
        assert_eq!(r.window(), 8);
        assert_eq!(r.take_readable(&mut rx), 8);
        assert_eq!(rx.read(&mut out), 8);
        assert_eq!(&out, b"ijklmnop");
    }

    #[test]
    fn handing_out_copies_the_in_order_bytes_past_a_gap_and_keeps_the_rest() {
        let mut r = Reassembler::new(16, 4, 16);
        r.insert(0, b"ab");
        r.insert(2, b"ef"); // two bytes past RCV.NXT: a gap before them
        let mut rx = RecvBuf::new();
        assert_eq!(r.take_readable(&mut rx), 2);
        assert_eq!(r.window(), 14, "the held bytes and the handed-out ones");
        assert_eq!(r.insert(0, b"cd").advanced, 4);
        let mut out = [0u8; 4];
        assert_eq!(rx.read(&mut out), 2);
        assert_eq!(&out[..2], b"ab");
        r.returned(2);
        assert_eq!(r.take_readable(&mut rx), 4);
        assert_eq!(rx.read(&mut out), 4);
        assert_eq!(&out, b"cdef");
    }

    #[test]
    fn the_front_is_the_unread_bytes_up_to_the_wrap_and_consuming_moves_past_them() {
        let mut r = Reassembler::new(8, 4, 8);
        r.insert(0, b"abcdef");
        let mut out = [0u8; 5];
        assert_eq!(r.read(&mut out), 5, "the read position moves to 5");
        r.insert(0, b"ghijk"); // wraps: "fgh" at 5..8, "ijk" at 0..3
        let mut rx = RecvBuf::new();
        assert_eq!(r.take_readable(&mut rx), 6);
        assert_eq!(rx.front(), b"fgh", "up to the wrap");
        assert_eq!(rx.consume(2), 2);
        assert_eq!(rx.front(), b"h");
        assert_eq!(rx.consume(1), 1);
        assert_eq!(rx.front(), b"ijk", "then from the ring's start");
        assert_eq!(rx.consume(10), 3, "no more than it holds");
        assert!(rx.is_empty() && rx.front().is_empty());
        assert_eq!(rx.consume(1), 0);
        assert!(RecvBuf::new().front().is_empty(), "no storage: nothing");
    }

    #[test]
    fn first_copy_of_a_byte_wins() {
        let mut r = Reassembler::new(64, 4, 64);
        r.insert(4, b"good");
        r.insert(2, b"EVILEVIL"); // overlaps the queued bytes and extends both sides
        assert_eq!(r.insert(0, b"ok").advanced, 10);
        let mut out = [0u8; 10];
        r.read(&mut out);
        assert_eq!(&out, b"okEVgoodIL");
    }

    #[test]
    fn overlaps_duplicates_and_window() {
        let mut r = Reassembler::new(8, 4, 8);
        assert_eq!(r.insert(0, b"abc").advanced, 3);
        assert_eq!(r.insert(0, b"def").advanced, 3); // offset is from RCV.NXT
        let ins = r.insert(0, b"ghijk");
        assert_eq!(ins.advanced, 2);
        assert!(ins.dropped);
        assert_eq!(r.window(), 0);
        let mut out = [0u8; 3];
        r.read(&mut out);
        assert_eq!(&out, b"abc");
        assert_eq!(r.window(), 3);
    }

    #[test]
    fn bounds_on_out_of_order_state() {
        let mut r = Reassembler::new(100, 2, 10);
        assert!(!r.insert(10, b"aa").dropped);
        assert!(!r.insert(20, b"bb").dropped);
        assert!(
            r.insert(30, b"cc").dropped,
            "third range over the range bound"
        );
        assert!(!r.insert(12, b"cc").dropped, "extending a range is fine");
        assert!(r.insert(40, b"0123456789").dropped, "over the byte bound");
    }
}
