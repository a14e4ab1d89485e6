//! A connection's outbound queue: bounded by the memory it holds, coalesced
//! into one send.
//!
//! Frames the connection produces itself (echoes, pongs, close frames, HTTP
//! responses) are appended to an owned buffer, and so are small shared
//! frames: copying a few hundred bytes is cheaper than an iovec, a queue
//! entry and a reference count each, and it keeps a flood of tiny frames in
//! a few buffers that leave in one `send`. Larger shared frames are queued
//! by reference and never copied per recipient. When the loop flushes,
//! everything queued goes out in one submission: a `send` for a single
//! buffer, a `sendmsg` whose iovecs point straight at the queued buffers and
//! shared frames otherwise.
//!
//! The bound (`--max-send-queue-bytes`) is checked against [`OutQueue::cost`]:
//! what the queue really holds in memory (owned buffers by capacity, shared
//! frames by length, the entry array by capacity), not only payload bytes.

use std::collections::VecDeque;
use std::mem::size_of;

use super::frame::Frame;
use crate::ws::deflate::{Deflater, WindowBits};
use crate::ws::frame::{encode_compressed_frame_into, encode_frame_into, OpCode};

/// Most iovecs in one `sendmsg` (the kernel allows 1024). Small frames are
/// copied, so every iovec but the owned ones carries more than
/// [`COPY_MAX`] bytes and one send carries at least 64 KiB of them.
pub const MAX_IOV: usize = 64;

/// Shared frames up to this length are copied into the owned tail buffer
/// instead of being queued by reference.
pub(crate) const COPY_MAX: usize = 1024;

/// An owned buffer stops growing at this length; later writes start a new
/// one, so a long backlog is a list of modest buffers that are freed as
/// they are sent, not one huge buffer grown by reallocation.
const OWNED_CHUNK_MAX: usize = 64 * 1024;

/// Owned buffers up to this capacity are kept for reuse by the core's pool
/// (a coalesced send of a few 16 KiB echoes must not fall out of it: a
/// buffer that is freed and grown again costs page faults and reallocs).
const POOL_BUF_MAX: usize = 256 * 1024;
/// Buffers kept in the pool.
const POOL_LEN: usize = 256;
/// Total capacity the pool keeps, so a burst of large sends does not pin
/// memory after it.
const POOL_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A free list that gives back what went unused for a whole period.
///
/// The list is a stack, so the items at its bottom that `pop` never reached
/// since the last [`FreeList::trim`] are exactly the ones nobody needed;
/// `trim` frees them. Without it a burst (one fan-out to 100k subscribers)
/// would pin its peak for good.
pub(crate) struct FreeList<T> {
    free: Vec<T>,
    /// Fewest items the list held since the last trim.
    low_water: usize,
}

impl<T> Default for FreeList<T> {
    fn default() -> Self {
        FreeList {
            free: Vec::new(),
            low_water: 0,
        }
    }
}

impl<T> FreeList<T> {
    /// Takes an item, if any.
    pub(crate) fn pop(&mut self) -> Option<T> {
        let v = self.free.pop();
        self.low_water = self.low_water.min(self.free.len());
        v
    }

    /// Returns an item.
    pub(crate) fn push(&mut self, v: T) {
        self.free.push(v);
    }

    /// Items held.
    pub(crate) fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether the list holds nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Removes the items unused since the previous call, handing each to
    /// `freed`; the owner calls it once per trim period. An emptied list
    /// gives back its array too.
    pub(crate) fn trim(&mut self, freed: impl FnMut(T)) {
        let stale = self.low_water.min(self.free.len());
        self.free.drain(..stale).for_each(freed);
        if self.free.is_empty() {
            self.free = Vec::new();
        }
        self.low_water = self.free.len();
    }
}

/// A per-core free list of send buffers, so steady-state echo traffic does
/// not allocate. Buffers unused for a whole trim period are freed: after a
/// burst the pool would otherwise pin up to `POOL_BYTES_MAX` per core, and
/// its large buffers keep the allocator from returning the pages around
/// them (the soak measured that as steady RSS growth).
#[derive(Default)]
pub struct BufPool {
    list: FreeList<Vec<u8>>,
    /// Sum of the capacities in `list`.
    bytes: usize,
    /// Entry arrays of drained queues: an idle connection's queue holds
    /// none (what 100k idle connections would multiply), and a busy one
    /// takes one from here instead of from the allocator.
    deques: FreeList<VecDeque<Chunk>>,
}

/// Entry arrays up to this capacity go back to the pool; larger ones (a
/// backlog of many shared frames) are freed.
const DEQUE_KEEP: usize = 16;

impl BufPool {
    pub(crate) fn get(&mut self) -> Vec<u8> {
        match self.list.pop() {
            Some(v) => {
                self.bytes -= v.capacity();
                v
            }
            None => Vec::new(),
        }
    }

    pub(crate) fn put(&mut self, mut v: Vec<u8>) {
        let cap = v.capacity();
        if cap <= POOL_BUF_MAX && self.list.len() < POOL_LEN && self.bytes + cap <= POOL_BYTES_MAX {
            v.clear();
            self.bytes += cap;
            self.list.push(v);
        }
    }

    /// An entry array for a queue that had none.
    fn get_deque(&mut self) -> VecDeque<Chunk> {
        self.deques
            .pop()
            .unwrap_or_else(|| VecDeque::with_capacity(4))
    }

    /// Takes back a drained queue's entry array.
    fn put_deque(&mut self, d: VecDeque<Chunk>) {
        debug_assert!(d.is_empty());
        if d.capacity() > 0 && d.capacity() <= DEQUE_KEEP && self.deques.len() < POOL_LEN {
            self.deques.push(d);
        }
    }

    /// Whether the pool holds any buffer (an idle core keeps waking to trim
    /// until it does not).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.deques.is_empty()
    }

    /// Bytes of capacity the pool holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frees the buffers unused since the previous call; the shard calls it
    /// once per trim period.
    pub fn trim(&mut self) {
        let mut freed = 0;
        self.list.trim(|v| freed += v.capacity());
        self.bytes -= freed;
        self.deques.trim(drop);
    }
}

/// One queue entry. Not `Clone`: an owned buffer or a frame reference has
/// exactly one place in one queue, which is what lets the iovecs of a send
/// in flight point into it.
enum Chunk {
    Owned(Vec<u8>),
    Shared(Frame),
}

impl Chunk {
    #[inline]
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(f) => f.bytes(),
        }
    }

    /// Memory this entry holds beyond the entry itself.
    #[inline]
    fn held(&self) -> usize {
        match self {
            Chunk::Owned(v) => v.capacity(),
            Chunk::Shared(f) => f.bytes().len(),
        }
    }
}

/// What [`OutQueue::push_frames`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Frames queued.
    pub frames: u64,
    /// The bound was reached before every frame was queued: the consumer is
    /// slow and the rest was not queued.
    pub over: bool,
}

/// The queue. Its memory is a few words plus whatever is queued.
#[derive(Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes queued and not yet acknowledged by a send completion.
    queued: usize,
    /// Memory the chunks hold (owned capacities, shared frame lengths).
    held: usize,
    /// Bytes of `chunks[0]` already sent (a chunk is at most one message
    /// past [`OWNED_CHUNK_MAX`], and messages are bounded well below 4 GiB
    /// by the configuration).
    head_sent: u32,
    /// Number of leading chunks referenced by the send in flight; they must
    /// not move or change until it completes.
    in_flight: u32,
}

impl OutQueue {
    /// Bytes waiting to be sent (including any send in flight).
    #[inline]
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Memory the queue holds for its backlog: what the send-queue bound is
    /// checked against. At least [`OutQueue::queued_bytes`].
    #[inline]
    pub fn cost(&self) -> usize {
        self.held + self.chunks.capacity() * size_of::<Chunk>()
    }

    /// Whether a send is in flight.
    #[inline]
    pub fn sending(&self) -> bool {
        self.in_flight > 0
    }

    /// Whether there are bytes no send covers yet.
    #[inline]
    pub fn has_unsent(&self) -> bool {
        self.chunks.len() > self.in_flight as usize
    }

    /// The entry array, taken from the pool if the queue had none.
    #[inline]
    fn entries(&mut self, pool: &mut BufPool) -> &mut VecDeque<Chunk> {
        if self.chunks.capacity() == 0 {
            self.chunks = pool.get_deque();
        }
        &mut self.chunks
    }

    /// Gives a drained queue's entry array back to the pool: an idle
    /// connection's queue holds no heap memory.
    #[inline]
    fn recycle(&mut self, pool: &mut BufPool) {
        if self.chunks.is_empty() && self.in_flight == 0 && self.chunks.capacity() > 0 {
            pool.put_deque(std::mem::take(&mut self.chunks));
        }
    }

    /// Appends bytes produced by `write` to the owned tail buffer and
    /// returns them (so the caller can check what it wrote).
    #[inline]
    pub fn write_with(&mut self, pool: &mut BufPool, write: impl FnOnce(&mut Vec<u8>)) -> &[u8] {
        let tail_free = self.chunks.len() > self.in_flight as usize;
        let tail = match self.chunks.back_mut() {
            Some(Chunk::Owned(v)) if tail_free && v.len() < OWNED_CHUNK_MAX => Some(v),
            _ => None,
        };
        let start = match tail {
            Some(v) => {
                let (before, cap) = (v.len(), v.capacity());
                write(v);
                self.queued += v.len() - before;
                self.held = self.held + v.capacity() - cap;
                before
            }
            None => {
                let mut v = pool.get();
                write(&mut v);
                if v.is_empty() {
                    pool.put(v);
                    return &[];
                }
                self.queued += v.len();
                self.held += v.capacity();
                self.entries(pool).push_back(Chunk::Owned(v));
                0
            }
        };
        match self.chunks.back() {
            Some(Chunk::Owned(v)) => &v[start..],
            _ => &[],
        }
    }

    /// Queues one data message the connection produced itself (an echo, a
    /// `/ws` reply): compressed with the core's `deflater` if the peer
    /// negotiated permessage-deflate (`window`) and the message is worth
    /// it, plain otherwise.
    #[inline]
    pub fn write_message(
        &mut self,
        pool: &mut BufPool,
        deflater: &mut Deflater,
        window: Option<WindowBits>,
        opcode: OpCode,
        payload: &[u8],
    ) {
        if let Some(packed) = window.and_then(|w| deflater.compress(w, payload)) {
            let n = self.write_with(pool, |v| encode_compressed_frame_into(opcode, packed, v));
            let n = n.len() as u64;
            deflater.stats.sent_compressed += 1;
            deflater.stats.sent_compressed_bytes += n;
            deflater.stats.sent_compressed_plain_bytes +=
                (crate::ws::frame::server_header_len(payload.len()) + payload.len()) as u64;
            deflater.release();
        } else {
            self.write_with(pool, |v| encode_frame_into(opcode, payload, v));
        }
    }

    /// Takes back the last `n` bytes [`OutQueue::write_with`] appended (a
    /// reply that turned out invalid before it was sent).
    pub fn unwrite(&mut self, n: usize, pool: &mut BufPool) {
        if self.chunks.len() <= self.in_flight as usize {
            return;
        }
        if let Some(Chunk::Owned(v)) = self.chunks.back_mut() {
            let keep = v.len().saturating_sub(n);
            self.queued -= v.len() - keep;
            v.truncate(keep);
            if v.is_empty() {
                self.held -= v.capacity();
                if let Some(Chunk::Owned(v)) = self.chunks.pop_back() {
                    pool.put(v);
                }
            }
        }
        self.recycle(pool);
    }

    /// Queues a shared frame: copied into the owned tail if it is small,
    /// by reference otherwise.
    #[inline]
    pub fn push_frame(&mut self, frame: &Frame, pool: &mut BufPool) {
        let bytes = frame.bytes();
        if bytes.len() <= COPY_MAX {
            self.write_with(pool, |v| v.extend_from_slice(bytes));
        } else {
            self.queued += bytes.len();
            self.held += bytes.len();
            self.entries(pool).push_back(Chunk::Shared(frame.clone()));
        }
    }

    /// Queues `frames` in order while the queue's cost is within `max`,
    /// checking the bound before every frame: a consumer that stopped
    /// reading gets at most one frame past the bound, whatever the frames'
    /// sizes and however many arrive in one pass.
    #[inline]
    pub fn push_frames<'f>(
        &mut self,
        frames: impl IntoIterator<Item = &'f Frame>,
        max: usize,
        pool: &mut BufPool,
    ) -> Pushed {
        let mut pushed = Pushed::default();
        for f in frames {
            if self.cost() > max {
                pushed.over = true;
                break;
            }
            self.push_frame(f, pool);
            pushed.frames += 1;
        }
        pushed
    }

    /// Drops everything no send covers yet (used when a slow consumer is
    /// cut off: its backlog will never be delivered). A chunk that is partly
    /// sent stays whole: cutting it would cut a frame, and the close frame
    /// that follows would be read as the rest of its payload.
    pub fn drop_unsent(&mut self, pool: &mut BufPool) {
        let keep = (self.in_flight as usize).max(usize::from(self.head_sent > 0));
        while self.chunks.len() > keep {
            if let Some(c) = self.chunks.pop_back() {
                self.queued -= c.bytes().len();
                self.held -= c.held();
                if let Chunk::Owned(v) = c {
                    pool.put(v);
                }
            }
        }
        self.recycle(pool);
    }

    /// Describes the unsent bytes as iovecs (at most `iov.len()`), marks
    /// them in flight and returns how many iovecs were filled.
    pub fn prepare_send(&mut self, iov: &mut [libc::iovec]) -> usize {
        debug_assert_eq!(self.in_flight, 0);
        let mut n = 0;
        for (i, c) in self.chunks.iter().enumerate().take(iov.len()) {
            let b = c.bytes();
            let skip = if i == 0 { self.head_sent as usize } else { 0 };
            iov[n] = libc::iovec {
                iov_base: b[skip..].as_ptr() as *mut libc::c_void,
                iov_len: b.len() - skip,
            };
            n += 1;
        }
        self.in_flight = n as u32;
        n
    }

    /// Hands up to about `max` unsent bytes, chunk by chunk in order, to
    /// `take` (which encrypts them, for TLS) and drops them from the queue
    /// as if sent; stops early when `take` returns `false`. Returns the
    /// bytes taken. Never called while a send is in flight.
    pub fn drain_with(
        &mut self,
        max: usize,
        pool: &mut BufPool,
        mut take: impl FnMut(&[u8], &mut BufPool) -> bool,
    ) -> usize {
        debug_assert_eq!(self.in_flight, 0);
        let mut taken = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            if taken >= max {
                break;
            }
            let skip = if i == 0 { self.head_sent as usize } else { 0 };
            let bytes = &c.bytes()[skip..];
            if !take(bytes, pool) {
                break;
            }
            taken += bytes.len();
        }
        // What was taken is gone as if sent.
        self.complete_send(taken, pool);
        taken
    }

    /// Records a completed send of `sent` bytes: fully sent chunks are
    /// released, a partial one is remembered by offset.
    pub fn complete_send(&mut self, mut sent: usize, pool: &mut BufPool) {
        self.in_flight = 0;
        self.queued -= sent;
        while sent > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.head_sent as usize;
            if sent < left {
                self.head_sent += sent as u32;
                break;
            }
            sent -= left;
            self.head_sent = 0;
            if let Some(c) = self.chunks.pop_front() {
                self.held -= c.held();
                if let Chunk::Owned(v) = c {
                    pool.put(v);
                }
            }
        }
        self.recycle(pool);
    }

    /// Abandons a failed send: nothing more will be sent on this socket.
    pub fn clear(&mut self, pool: &mut BufPool) {
        self.in_flight = 0;
        for c in self.chunks.drain(..) {
            if let Chunk::Owned(v) = c {
                pool.put(v);
            }
        }
        self.recycle(pool);
        self.queued = 0;
        self.held = 0;
        self.head_sent = 0;
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::frame::SharedFrame;
    use crate::ws::OpCode;

    #[test]
    fn a_drained_queue_holds_no_heap_and_reuses_the_pools_entry_array() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        q.write_with(&mut pool, |v| v.extend_from_slice(b"HTTP/1.1 101"));
        assert!(q.chunks.capacity() > 0);
        let (sent, _) = gather(&mut q);
        q.complete_send(sent.len(), &mut pool);
        assert_eq!(q.chunks.capacity(), 0, "an idle queue holds no entry array");
        assert_eq!(q.cost(), 0);
        assert_eq!(pool.deques.len(), 1);
        q.write_with(&mut pool, |v| v.extend_from_slice(b"again"));
        assert_eq!(pool.deques.len(), 0, "taken from the pool, not allocated");
        q.clear(&mut pool);
        assert_eq!(q.chunks.capacity(), 0);
        assert_eq!(pool.deques.len(), 1);
    }

    fn gather(q: &mut OutQueue) -> (Vec<u8>, usize) {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOV];
        let n = q.prepare_send(&mut iov);
        let mut out = Vec::new();
        for v in &iov[..n] {
            // SAFETY: iovecs point into live queue chunks.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
            });
        }
        (out, n)
    }

    #[test]
    fn coalesces_small_frames_and_shares_large_ones_in_order() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        q.write_with(&mut pool, |v| v.extend_from_slice(b"ab"));
        q.write_with(&mut pool, |v| v.extend_from_slice(b"cd"));
        let small = Frame::new(SharedFrame::encode(OpCode::Text, b"X"));
        q.push_frame(&small, &mut pool);
        let big = Frame::new(SharedFrame::encode(OpCode::Binary, &[7; COPY_MAX]));
        q.push_frame(&big, &mut pool);
        q.write_with(&mut pool, |v| v.extend_from_slice(b"ef"));
        let big_len = big.bytes().len();
        assert_eq!(q.queued_bytes(), 4 + 3 + big_len + 2);
        let (bytes, n) = gather(&mut q);
        assert_eq!(n, 3, "owned writes and the small frame share one iovec");
        assert_eq!(&bytes[..7], b"abcd\x81\x01X");
        assert_eq!(&bytes[7..7 + big_len], big.bytes());
        assert_eq!(&bytes[7 + big_len..], b"ef");
        // While in flight, new bytes go to a new chunk, not into sent ones.
        q.write_with(&mut pool, |v| v.extend_from_slice(b"gh"));
        assert!(q.has_unsent());
        q.complete_send(8, &mut pool); // the owned chunk + 1 byte of the frame
        let (bytes, _) = gather(&mut q);
        assert_eq!(bytes.len(), big_len - 1 + 4);
        assert!(bytes.ends_with(b"efgh"));
        q.complete_send(big_len - 1 + 4, &mut pool);
        assert_eq!(q.queued_bytes(), 0);
        assert!(!q.has_unsent());
    }

    #[test]
    fn cost_counts_memory_not_payload_and_the_bound_is_checked_per_frame() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        // Empty messages: 2 bytes each on the wire.
        let empty = Frame::new(SharedFrame::encode(OpCode::Binary, b""));
        let frames = vec![empty; 100_000];
        let max = 64 * 1024;
        let p = q.push_frames(&frames, max, &mut pool);
        assert!(p.over, "a flood of tiny frames still trips the bound");
        assert!(q.cost() >= q.queued_bytes());
        // At most one frame past the bound, counted in memory.
        assert!(q.cost() <= max + OWNED_CHUNK_MAX, "cost {}", q.cost());
        assert_eq!(q.queued_bytes() as u64, 2 * p.frames);
        // Coalesced: a few owned buffers, not 30,000 entries.
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOV];
        assert!(q.prepare_send(&mut iov) <= 2);
        // Large frames are charged their length each.
        let mut q = OutQueue::default();
        let big = Frame::new(SharedFrame::encode(OpCode::Binary, &[1; 10_000]));
        let p = q.push_frames(std::iter::repeat_n(&big, 100), 50_000, &mut pool);
        assert!(p.over);
        // 4 frames and their entries fit; the 5th takes the queue past the
        // bound (its entries count too), so the 6th is refused.
        assert_eq!(p.frames, 5, "checked before each frame");
        assert!(q.cost() > 50_000 && q.cost() < 50_000 + big.bytes().len() + 1024);
    }

    #[test]
    fn drop_unsent_never_cuts_a_partly_sent_frame() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        let big = Frame::new(SharedFrame::encode(OpCode::Binary, &[3; 5000]));
        q.push_frame(&big, &mut pool);
        q.push_frame(&big, &mut pool);
        q.write_with(&mut pool, |v| v.extend_from_slice(b"tail"));
        let _ = gather(&mut q);
        q.complete_send(100, &mut pool); // short send: frame 1 partly out
        assert!(!q.sending());
        q.drop_unsent(&mut pool);
        // The rest of frame 1 stays; frame 2 and the tail are dropped.
        assert_eq!(q.queued_bytes(), big.bytes().len() - 100);
        let (bytes, _) = gather(&mut q);
        assert_eq!(bytes, &big.bytes()[100..]);
        q.complete_send(bytes.len(), &mut pool);
        assert_eq!(q.queued_bytes(), 0);
        assert_eq!(q.held, 0);
    }

    #[test]
    fn write_with_shows_what_it_wrote_and_unwrite_takes_it_back() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        assert_eq!(
            q.write_with(&mut pool, |v| v.extend_from_slice(b"ab")),
            b"ab"
        );
        assert_eq!(
            q.write_with(&mut pool, |v| v.extend_from_slice(b"cde")),
            b"cde"
        );
        q.unwrite(3, &mut pool);
        assert_eq!(q.queued_bytes(), 2);
        let (bytes, _) = gather(&mut q);
        assert_eq!(bytes, b"ab");
        // In flight: a new write goes to a new chunk, and taking it back
        // leaves the sent bytes alone.
        assert_eq!(
            q.write_with(&mut pool, |v| v.extend_from_slice(b"xy")),
            b"xy"
        );
        q.unwrite(2, &mut pool);
        assert_eq!(q.queued_bytes(), 2);
        assert!(!q.has_unsent());
        q.unwrite(2, &mut pool);
        assert_eq!(q.queued_bytes(), 2, "bytes in flight are never taken back");
        q.complete_send(2, &mut pool);
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn drain_with_hands_over_chunks_in_order_up_to_the_bound() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        q.write_with(&mut pool, |v| v.extend_from_slice(b"head "));
        let big = Frame::new(SharedFrame::encode(OpCode::Binary, &[9; 3000]));
        q.push_frame(&big, &mut pool);
        q.push_frame(&big, &mut pool);
        let total = q.queued_bytes();
        let mut seen = Vec::new();
        // The bound stops after the chunk that crosses it.
        let taken = q.drain_with(10, &mut pool, |b, _| {
            seen.extend_from_slice(b);
            true
        });
        assert_eq!(taken, seen.len());
        assert!(seen.starts_with(b"head "));
        assert_eq!(q.queued_bytes(), total - taken);
        // A refusal leaves the chunk queued.
        assert_eq!(q.drain_with(usize::MAX, &mut pool, |_, _| false), 0);
        assert_eq!(q.queued_bytes(), total - taken);
        let rest = q.drain_with(usize::MAX, &mut pool, |b, _| {
            seen.extend_from_slice(b);
            true
        });
        assert_eq!(taken + rest, total);
        assert_eq!(seen.len(), total);
        assert!(!q.has_unsent());
    }

    #[test]
    fn drop_unsent_keeps_in_flight() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        q.write_with(&mut pool, |v| v.extend_from_slice(b"1234"));
        let _ = gather(&mut q);
        q.push_frame(
            &Frame::new(SharedFrame::encode(OpCode::Binary, &[0; 2000])),
            &mut pool,
        );
        q.drop_unsent(&mut pool);
        assert_eq!(q.queued_bytes(), 4);
        q.complete_send(4, &mut pool);
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn pool_frees_only_buffers_unused_for_a_whole_period() {
        let mut pool = BufPool::default();
        for _ in 0..4 {
            pool.put(Vec::with_capacity(1024));
        }
        pool.trim(); // starts the first period: nothing was counted yet
        assert_eq!(pool.list.len(), 4);
        // One buffer is taken and returned during the period: it stays, the
        // three beneath it go.
        let v = pool.get();
        pool.put(v);
        pool.trim();
        assert_eq!(pool.list.len(), 1);
        assert_eq!(pool.bytes(), 1024);
        // Unused for the next period: freed, and the pool holds nothing.
        pool.trim();
        assert!(pool.is_empty());
        assert_eq!(pool.bytes(), 0);
    }
}
