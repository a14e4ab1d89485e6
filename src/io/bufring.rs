//! A provided-buffer ring: the per-core pool that multishot receives fill.
//!
//! Connections own no read buffer. The kernel picks a free buffer from this
//! ring only when bytes arrive, the loop parses them in place and hands the
//! buffer straight back, so read memory is proportional to the bytes in
//! flight on the core, not to the number of connections.
//!
//! The ring is registered for incremental consumption (`IOU_PBUF_RING_INC`,
//! Linux 6.12) where the kernel allows it: receives from many connections
//! are packed one after another into the same large buffer instead of each
//! taking a whole buffer. Small messages then stay in a few warm cache lines,
//! and large buffers cost nothing per small read, so a 16 KiB frame usually
//! arrives whole and is parsed in place rather than assembled from pieces.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

use super::ring::Ring;

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes; `populate` faults them all in now (`MAP_POPULATE`)
    /// instead of on first write.
    fn new(len: usize, populate: bool) -> io::Result<Mapping> {
        let flags =
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: anonymous mapping, no file, checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).ok_or_else(io::Error::last_os_error)?,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The bytes one receive completion delivered into a provided buffer: the
/// right to read them until [`BufRing::release`] takes the token back.
/// Neither `Copy` nor `Clone`, so a buffer cannot be read after it went back
/// to the kernel, nor given back twice.
#[derive(Debug)]
pub struct RecvBuf {
    bid: u16,
    at: usize,
    len: usize,
    buffer_more: bool,
}

impl RecvBuf {
    /// Number of bytes received.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the completion carried no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A registered buffer group of `count` buffers of `size` bytes each.
pub struct BufRing {
    entries: Mapping,
    data: Mapping,
    mask: u16,
    tail: u16,
    size: usize,
    count: u16,
    group: u16,
    /// Incremental mode: bytes of each buffer the kernel has filled so far.
    /// `None` when each completion gets a buffer of its own.
    filled: Option<Box<[u32]>>,
}

/// `IOU_PBUF_RING_INC` from the io_uring ABI.
const PBUF_RING_INC: u16 = 2;

impl BufRing {
    /// Registers a buffer group with `ring`, consumed incrementally if the
    /// kernel supports it. `count` is rounded up to a power of two (at most
    /// 32768).
    /// (`try_incremental: false` covers the pre-6.12 path on any kernel.)
    pub(super) fn register(
        ring: &Ring,
        group: u16,
        count: u16,
        size: usize,
        try_incremental: bool,
    ) -> io::Result<BufRing> {
        let count = count.clamp(1, 1 << 15).next_power_of_two();
        let page = 4096;
        let ring_bytes =
            (count as usize * std::mem::size_of::<BufRingEntry>()).div_ceil(page) * page;
        let entries = Mapping::new(ring_bytes, false)?;
        // The buffers are a fixed cost of the core, faulted in at start:
        // the kernel fills them in ring order, so any traffic touches every
        // one within seconds; populated now, the data path never takes a
        // page fault and RSS does not creep with the first connections
        // (what they add is then only their own state).
        let data = Mapping::new(count as usize * size, true)?;
        // SAFETY: `entries` is page aligned and lives as long as the BufRing;
        // the group is unregistered when the io_uring is dropped, and the
        // `Ring` that owns this BufRing drops its io_uring first (see its
        // `Drop`).
        let register = |flags: u16| unsafe {
            ring.uring().submitter().register_buf_ring_with_flags(
                entries.ptr.as_ptr() as u64,
                count,
                group,
                flags,
            )
        };
        let incremental = match register(if try_incremental { PBUF_RING_INC } else { 0 }) {
            Ok(()) => try_incremental,
            // Before Linux 6.12: one buffer per completion.
            Err(e) if try_incremental && e.raw_os_error() == Some(libc::EINVAL) => {
                register(0)?;
                false
            }
            Err(e) => return Err(e),
        };
        let mut br = BufRing {
            entries,
            data,
            mask: count - 1,
            tail: 0,
            size,
            count,
            group,
            filled: incremental.then(|| vec![0u32; count as usize].into_boxed_slice()),
        };
        for bid in 0..count {
            br.put(bid);
        }
        br.publish();
        Ok(br)
    }

    /// The buffer group id to put in receive submissions.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Size of each buffer.
    pub fn buffer_size(&self) -> usize {
        self.size
    }

    /// Number of buffers in the group.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Whether receives share buffers (`IOU_PBUF_RING_INC`).
    pub fn incremental(&self) -> bool {
        self.filled.is_some()
    }

    /// Accounts for a completion that put `len` bytes into buffer `bid` and
    /// returns the token for those bytes. Every completion that names a
    /// buffer must pass through here, in completion order (in incremental
    /// mode the kernel only tells us the length; we track the position).
    /// `buffer_more` is the completion's `IORING_CQE_F_BUF_MORE`: the kernel
    /// keeps filling the buffer, so releasing the token keeps it.
    pub fn claim(&mut self, bid: u16, len: usize, buffer_more: bool) -> RecvBuf {
        let bid = bid.min(self.count - 1);
        let len = len.min(self.size);
        let at = match self.filled.as_mut() {
            None => 0,
            Some(filled) => {
                let slot = &mut filled[bid as usize];
                let at = *slot as usize;
                *slot = (at + len).min(self.size) as u32;
                at
            }
        };
        RecvBuf {
            bid,
            at,
            len: len.min(self.size - at),
            buffer_more,
        }
    }

    /// The bytes a [`BufRing::claim`] token stands for. Safe: the token can
    /// only come from `claim` on this ring and is consumed by
    /// [`BufRing::release`], and the slice borrows the ring, so it is gone
    /// before the buffer can go back to the kernel.
    pub fn get(&mut self, buf: &RecvBuf) -> &mut [u8] {
        debug_assert!(buf.bid < self.count && buf.at + buf.len <= self.size);
        let off = buf.bid as usize * self.size + buf.at;
        // SAFETY: `claim` clamped bid, at and len to the `data` mapping; the
        // kernel does not write these bytes again until the buffer is
        // released, which takes the token by value.
        unsafe { std::slice::from_raw_parts_mut(self.data.ptr.as_ptr().add(off), buf.len) }
    }

    /// Gives a token's buffer back to the kernel (visible after
    /// [`BufRing::publish`]), unless the completion said the kernel is still
    /// filling it. Returns whether it was given back.
    pub fn release(&mut self, buf: RecvBuf) -> bool {
        let bid = buf.bid;
        if let Some(filled) = self.filled.as_mut() {
            if buf.buffer_more {
                return false;
            }
            filled[bid as usize] = 0;
        }
        self.put(bid);
        true
    }

    fn put(&mut self, bid: u16) {
        let idx = (self.tail & self.mask) as usize;
        // SAFETY: idx < count, and the entries mapping holds count entries.
        let e = unsafe { &mut *(self.entries.ptr.as_ptr() as *mut BufRingEntry).add(idx) };
        // SAFETY: bid < count, so the address is inside `data`.
        e.set_addr(unsafe { self.data.ptr.as_ptr().add(bid as usize * self.size) } as u64);
        e.set_len(self.size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes recycled buffers visible to the kernel (one release store for a
    /// whole batch).
    pub fn publish(&mut self) {
        // SAFETY: the tail field overlays the first entry's `resv`, as the
        // io_uring ABI defines; the kernel reads it with acquire semantics.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.ptr.as_ptr() as *const BufRingEntry)
                as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use io_uring::{cqueue, opcode, types};

    #[test]
    fn incremental_claims_pack_reads_and_release_waits_for_the_kernel() {
        let mut ring = Ring::new(8).expect("io_uring");
        ring.provide_buffers(0, 4, 4096).expect("buffer ring");
        let br = ring.buffers().expect("buffers");
        if !br.incremental() {
            // Kernel before 6.12: every completion starts at offset 0.
            let b = br.claim(1, 100, false);
            assert_eq!(b.at, 0);
            assert!(br.release(b));
            return;
        }
        // Three reads into buffer 2, packed one after another.
        let a = br.claim(2, 100, true);
        assert_eq!(a.at, 0);
        let b = br.claim(2, 50, true);
        assert_eq!(b.at, 100);
        assert_eq!(br.get(&b).len(), 50);
        // The kernel still fills it: not given back.
        assert!(!br.release(a));
        assert!(!br.release(b));
        let c = br.claim(2, 3946, false);
        assert_eq!(c.at, 150);
        // Filled to the end: given back, and the next use starts at 0.
        assert!(br.release(c));
        assert_eq!(br.claim(2, 10, false).at, 0);
        // Other buffers keep their own positions.
        assert_eq!(br.claim(3, 7, true).at, 0);
        assert_eq!(br.claim(3, 7, true).at, 7);
    }

    /// Deterministic test bytes (xorshift), so a chunk delivered twice, out
    /// of order or from the wrong offset of a buffer cannot compare equal.
    fn pattern(state: &mut u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                (*state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn multishot_receives_move_real_bytes_through_recycled_buffers() {
        // Incremental where the kernel has it (6.12+), then one buffer per
        // completion (the older kernels' mode) on any kernel.
        receive_through_ring(true);
        receive_through_ring(false);
    }

    /// Moves bytes from a socket pair through a multishot receive into
    /// `BufRing` buffers and back out, recycling the buffers as the shard
    /// does, and checks they arrive intact.
    fn receive_through_ring(try_incremental: bool) {
        const COUNT: u16 = 4;
        const SIZE: usize = 4096;
        const ROUNDS: usize = 6;
        const RECV: u64 = 7;
        // Sizes around the buffer size; one round (26 KiB) is more than the
        // whole group (16 KiB), so it only arrives if buffers the test
        // released go back to the kernel, and may run the kernel out of
        // buffers (ENOBUFS ends the multishot receive).
        const WRITES: [usize; 8] = [1, 100, 4095, 4096, 4097, 9000, 5000, 3];
        // Bounds a bug (a buffer never coming back, a lost completion), not
        // the speed of the host.
        let deadline = Instant::now() + Duration::from_secs(30);

        let (mut peer, sock) = UnixStream::pair().expect("socketpair");
        let mut ring = Ring::new(8).expect("io_uring");
        ring.provide_buffers_mode(3, COUNT, SIZE, try_incremental)
            .expect("buffer ring");
        let group = ring.buffers().expect("buffers").group();
        let incremental = ring.buffers().expect("buffers").incremental();
        if !try_incremental {
            assert!(!incremental);
        }
        let mut rig = ring;
        let recv = opcode::RecvMulti::new(types::Fd(sock.as_raw_fd()), group)
            .build()
            .user_data(RECV);

        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let (mut written, mut got) = (Vec::new(), Vec::new());
        let (mut armed, mut arms, mut enobufs) = (false, 0usize, 0usize);
        let mut released = [0usize; COUNT as usize];
        for round in 0..ROUNDS {
            for n in WRITES {
                let bytes = pattern(&mut rng, n);
                // Fits the socket's send buffer with everything unread.
                peer.write_all(&bytes).expect("write");
                written.extend_from_slice(&bytes);
            }
            while got.len() < written.len() {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: received {} of {} bytes (incremental {}, \
                     {arms} arms, {enobufs} ENOBUFS, released {released:?})",
                    got.len(),
                    written.len(),
                    incremental
                );
                if !armed {
                    // SAFETY: the receive points at no memory of ours but the
                    // registered buffer group, which `rig` keeps alive until
                    // the io_uring is gone.
                    unsafe { rig.push(&recv) }.expect("queue the receive");
                    armed = true;
                    arms += 1;
                }
                rig.wait(Some(Duration::from_millis(100)))
                    .expect("io_uring_enter");
                while let Some(cqe) = rig.next_completion() {
                    assert_eq!(cqe.user_data(), RECV);
                    let (res, flags) = (cqe.result(), cqe.flags());
                    if !cqueue::more(flags) {
                        armed = false;
                    }
                    // Every completion that names a buffer goes through
                    // claim and release, as the shard does.
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        assert!(bid < COUNT, "buffer id {bid}");
                        let len = res.max(0) as usize;
                        let br = rig.buffers().expect("buffers");
                        let buf = br.claim(bid, len, cqueue::buffer_more(flags));
                        let at = buf.at;
                        assert!(at + len <= SIZE, "{len} bytes at {at} of buffer {bid}");
                        assert_eq!(buf.len(), len);
                        if !incremental {
                            assert_eq!(at, 0);
                        }
                        got.extend_from_slice(br.get(&buf));
                        if br.release(buf) {
                            released[bid as usize] += 1;
                        }
                        br.publish();
                    }
                    match res {
                        1.. => {}
                        // Out of buffers: the multishot ended; it is armed
                        // again once the released ones are published.
                        r if r == -libc::ENOBUFS => {
                            assert!(!armed, "ENOBUFS without the receive ending");
                            enobufs += 1;
                        }
                        0 => panic!("end of stream: the peer is still open"),
                        r => panic!("receive failed: {}", io::Error::from_raw_os_error(-r)),
                    }
                }
                // Nothing received so far may differ from what was sent.
                assert!(
                    written.starts_with(&got),
                    "bytes differ at offset {}",
                    got.iter().zip(&written).take_while(|(a, b)| a == b).count()
                );
            }
        }
        assert_eq!(got, written, "every byte, once, in order");
        // Far more bytes than the group holds went through it: each buffer
        // was handed back and filled again, several times over.
        // (The ring hands buffers out in the order they were given back,
        // so every one of them takes its turn.)
        assert!(written.len() > 4 * COUNT as usize * SIZE);
        assert!(
            released.iter().all(|&n| n >= 2),
            "buffers released {released:?} for {} bytes",
            written.len()
        );
        eprintln!(
            "incremental {}: {} bytes, {arms} arms, {enobufs} ENOBUFS, released {released:?}",
            incremental,
            written.len()
        );
        drop(rig);
        drop(sock);
    }
}
