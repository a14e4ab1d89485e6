//! A connection's outbound queue: bounded in bytes, coalesced into one send.
//!
//! Frames the connection produces itself (echoes, pongs, close frames, HTTP
//! responses) are appended to an owned buffer; broadcast frames are queued
//! by reference. When the loop flushes, everything queued goes out in one
//! submission: a `send` for a single buffer, a `sendmsg` whose iovecs point
//! straight at the queued buffers and shared frames otherwise. Nothing is
//! copied to coalesce, and a shared frame is never copied per recipient.

use std::collections::VecDeque;

use crate::hub::frame::Frame;

/// Most iovecs in one `sendmsg` (the kernel allows 1024).
pub const MAX_IOV: usize = 64;

/// Owned buffers up to this capacity are kept for reuse by the core's pool
/// (a coalesced send of a few 16 KiB echoes must not fall out of it: a
/// buffer that is freed and grown again costs page faults and reallocs).
const POOL_BUF_MAX: usize = 256 * 1024;
/// Buffers kept in the pool.
const POOL_LEN: usize = 256;
/// Total capacity the pool keeps, so a burst of large sends does not pin
/// memory after it.
const POOL_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A per-core free list of send buffers, so steady-state echo traffic does
/// not allocate.
///
/// Buffers that sat unused for a whole trim period are freed: after a burst
/// the pool would otherwise pin up to `POOL_BYTES_MAX` per core forever, and
/// its large buffers keep the allocator from returning the pages around
/// them (the soak measured that as steady RSS growth). The free list is a
/// stack, so the ones at the bottom that `get` never reached during the
/// period are exactly the ones nobody needed.
#[derive(Default)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
    /// Sum of the capacities in `free`.
    bytes: usize,
    /// Fewest buffers the free list held since the last trim: that many at
    /// its bottom went unused the whole period.
    low_water: usize,
}

impl BufPool {
    fn get(&mut self) -> Vec<u8> {
        match self.free.pop() {
            Some(v) => {
                self.bytes -= v.capacity();
                self.low_water = self.low_water.min(self.free.len());
                v
            }
            None => Vec::new(),
        }
    }

    fn put(&mut self, mut v: Vec<u8>) {
        let cap = v.capacity();
        if cap <= POOL_BUF_MAX && self.free.len() < POOL_LEN && self.bytes + cap <= POOL_BYTES_MAX {
            v.clear();
            self.bytes += cap;
            self.free.push(v);
        }
    }

    /// Whether the pool holds any buffer (an idle core keeps waking to trim
    /// until it does not).
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Bytes of capacity the pool holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frees the buffers unused since the previous call; the shard calls it
    /// once per trim period.
    pub fn trim(&mut self) {
        let stale = self.low_water.min(self.free.len());
        for v in self.free.drain(..stale) {
            self.bytes -= v.capacity();
        }
        if self.free.is_empty() {
            self.free = Vec::new();
        }
        self.low_water = self.free.len();
    }
}

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
}

/// The queue. Its memory is two words plus whatever is queued.
#[derive(Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes queued and not yet acknowledged by a send completion.
    queued: usize,
    /// Bytes of `chunks[0]` already sent.
    head_sent: usize,
    /// Number of leading chunks referenced by the send in flight; they must
    /// not move or change until it completes.
    in_flight: usize,
}

impl OutQueue {
    /// Bytes waiting to be sent (including any send in flight).
    #[inline]
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Whether a send is in flight.
    #[inline]
    pub fn sending(&self) -> bool {
        self.in_flight > 0
    }

    /// Whether there are bytes no send covers yet.
    #[inline]
    pub fn has_unsent(&self) -> bool {
        self.chunks.len() > self.in_flight
    }

    /// Appends bytes produced by `write` to the owned tail buffer and
    /// returns them (so the caller can check what it wrote).
    #[inline]
    pub fn write_with(&mut self, pool: &mut BufPool, write: impl FnOnce(&mut Vec<u8>)) -> &[u8] {
        let tail_free = self.chunks.len() > self.in_flight;
        let tail = match self.chunks.back_mut() {
            Some(Chunk::Owned(v)) if tail_free => Some(v),
            _ => None,
        };
        let start = match tail {
            Some(v) => {
                let before = v.len();
                write(v);
                self.queued += v.len() - before;
                before
            }
            None => {
                let mut v = pool.get();
                write(&mut v);
                self.queued += v.len();
                if v.is_empty() {
                    pool.put(v);
                    return &[];
                }
                self.chunks.push_back(Chunk::Owned(v));
                0
            }
        };
        match self.chunks.back() {
            Some(Chunk::Owned(v)) => &v[start..],
            _ => &[],
        }
    }

    /// Takes back the last `n` bytes [`OutQueue::write_with`] appended (a
    /// reply that turned out invalid before it was sent).
    pub fn unwrite(&mut self, n: usize) {
        if self.chunks.len() <= self.in_flight {
            return;
        }
        if let Some(Chunk::Owned(v)) = self.chunks.back_mut() {
            let keep = v.len().saturating_sub(n);
            self.queued -= v.len() - keep;
            v.truncate(keep);
            if v.is_empty() {
                self.chunks.pop_back();
            }
        }
    }

    /// Queues a shared frame by reference.
    #[inline]
    pub fn push_frame(&mut self, frame: Frame) {
        self.queued += frame.bytes().len();
        self.chunks.push_back(Chunk::Shared(frame));
    }

    /// Drops everything no send covers yet (used when a slow consumer is
    /// cut off: its backlog will never be delivered).
    pub fn drop_unsent(&mut self, pool: &mut BufPool) {
        while self.chunks.len() > self.in_flight {
            if let Some(c) = self.chunks.pop_back() {
                let n = c.bytes().len();
                self.queued -= if self.chunks.is_empty() {
                    n - self.head_sent
                } else {
                    n
                };
                if self.chunks.is_empty() {
                    self.head_sent = 0;
                }
                if let Chunk::Owned(v) = c {
                    pool.put(v);
                }
            }
        }
    }

    /// Describes the unsent bytes as iovecs (at most `iov.len()`), marks
    /// them in flight and returns how many iovecs were filled.
    pub fn prepare_send(&mut self, iov: &mut [libc::iovec]) -> usize {
        debug_assert_eq!(self.in_flight, 0);
        let mut n = 0;
        for (i, c) in self.chunks.iter().enumerate().take(iov.len()) {
            let b = c.bytes();
            let skip = if i == 0 { self.head_sent } else { 0 };
            iov[n] = libc::iovec {
                iov_base: b[skip..].as_ptr() as *mut libc::c_void,
                iov_len: b.len() - skip,
            };
            n += 1;
        }
        self.in_flight = n;
        n
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
            let left = front.bytes().len() - self.head_sent;
            if sent < left {
                self.head_sent += sent;
                break;
            }
            sent -= left;
            self.head_sent = 0;
            if let Some(Chunk::Owned(v)) = self.chunks.pop_front() {
                pool.put(v);
            }
        }
        if self.chunks.is_empty() && self.chunks.capacity() > 16 {
            self.chunks = VecDeque::new();
        }
    }

    /// Abandons a failed send: nothing more will be sent on this socket.
    pub fn clear(&mut self, pool: &mut BufPool) {
        self.in_flight = 0;
        for c in self.chunks.drain(..) {
            if let Chunk::Owned(v) = c {
                pool.put(v);
            }
        }
        self.chunks = VecDeque::new();
        self.queued = 0;
        self.head_sent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::frame::SharedFrame;
    use crate::ws::OpCode;

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
    fn coalesces_owned_and_shares_frames_in_order() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        q.write_with(&mut pool, |v| v.extend_from_slice(b"ab"));
        q.write_with(&mut pool, |v| v.extend_from_slice(b"cd"));
        let f = Frame::new(SharedFrame::encode(OpCode::Text, b"X"));
        q.push_frame(f.clone());
        q.write_with(&mut pool, |v| v.extend_from_slice(b"ef"));
        assert_eq!(q.queued_bytes(), 4 + 3 + 2);
        let (bytes, n) = gather(&mut q);
        assert_eq!(n, 3, "two owned writes coalesce into one iovec");
        assert_eq!(bytes, b"abcd\x81\x01Xef");
        // While in flight, new bytes go to a new chunk, not into sent ones.
        q.write_with(&mut pool, |v| v.extend_from_slice(b"gh"));
        assert!(q.has_unsent());
        q.complete_send(5, &mut pool); // "abcd" + 1 byte of the frame
        let (bytes, _) = gather(&mut q);
        assert_eq!(bytes, b"\x01Xefgh");
        q.complete_send(6, &mut pool);
        assert_eq!(q.queued_bytes(), 0);
        assert!(!q.has_unsent());
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
        q.unwrite(3);
        assert_eq!(q.queued_bytes(), 2);
        let (bytes, _) = gather(&mut q);
        assert_eq!(bytes, b"ab");
        // In flight: a new write goes to a new chunk, and taking it back
        // leaves the sent bytes alone.
        assert_eq!(
            q.write_with(&mut pool, |v| v.extend_from_slice(b"xy")),
            b"xy"
        );
        q.unwrite(2);
        assert_eq!(q.queued_bytes(), 2);
        assert!(!q.has_unsent());
        q.unwrite(2);
        assert_eq!(q.queued_bytes(), 2, "bytes in flight are never taken back");
        q.complete_send(2, &mut pool);
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn drop_unsent_keeps_in_flight() {
        let mut pool = BufPool::default();
        let mut q = OutQueue::default();
        q.write_with(&mut pool, |v| v.extend_from_slice(b"1234"));
        let _ = gather(&mut q);
        q.push_frame(Frame::new(SharedFrame::encode(OpCode::Binary, &[0; 100])));
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
        assert_eq!(pool.free.len(), 4);
        // One buffer is taken and returned during the period: it stays, the
        // three beneath it go.
        let v = pool.get();
        pool.put(v);
        pool.trim();
        assert_eq!(pool.free.len(), 1);
        assert_eq!(pool.bytes(), 1024);
        // Unused for the next period: freed, and the pool holds nothing.
        pool.trim();
        assert!(pool.is_empty());
        assert_eq!(pool.bytes(), 0);
    }
}
