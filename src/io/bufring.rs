//! A provided-buffer ring: the per-core pool that multishot receives fill.
//!
//! Connections own no read buffer. The kernel picks a free buffer from this
//! ring only when bytes arrive, the loop parses them in place and hands the
//! buffer straight back, so read memory is proportional to the bytes in
//! flight on the core, not to the number of connections.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

use super::ring::Ring;

/// An anonymous private mapping, unmapped on drop. Pages cost nothing until
/// the kernel first writes them.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: anonymous mapping, no file, checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
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

/// A registered buffer group of `count` buffers of `size` bytes each.
pub struct BufRing {
    entries: Mapping,
    data: Mapping,
    mask: u16,
    tail: u16,
    size: usize,
    count: u16,
    group: u16,
    /// Buffers currently handed out by the kernel and not yet recycled.
    in_use: u32,
}

impl BufRing {
    /// Registers a buffer group with `ring`. `count` is rounded up to a power
    /// of two (at most 32768).
    pub fn new(ring: &Ring, group: u16, count: u16, size: usize) -> io::Result<BufRing> {
        let count = count.clamp(1, 1 << 15).next_power_of_two();
        let page = 4096;
        let ring_bytes =
            (count as usize * std::mem::size_of::<BufRingEntry>()).div_ceil(page) * page;
        let entries = Mapping::new(ring_bytes)?;
        let data = Mapping::new(count as usize * size)?;
        // SAFETY: `entries` is page aligned and lives as long as the BufRing;
        // the ring is unregistered when the io_uring is dropped, and Shard
        // drops its Ring before its BufRing.
        unsafe {
            ring.raw().submitter().register_buf_ring_with_flags(
                entries.ptr.as_ptr() as u64,
                count,
                group,
                0,
            )?;
        }
        let mut br = BufRing {
            entries,
            data,
            mask: count - 1,
            tail: 0,
            size,
            count,
            group,
            in_use: count as u32,
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

    /// Buffers the kernel currently holds filled and unprocessed.
    pub fn in_use(&self) -> u32 {
        self.in_use
    }

    /// The first `len` bytes of buffer `bid`, which a completion just filled.
    ///
    /// # Safety
    /// `bid` must come from a completion of this group and not have been
    /// recycled since; the slice must be dropped before [`BufRing::recycle`].
    pub unsafe fn get(&mut self, bid: u16, len: usize) -> &mut [u8] {
        debug_assert!(bid < self.count && len <= self.size);
        let off = bid as usize * self.size;
        // SAFETY: in bounds of `data`; the kernel is done writing this buffer
        // until we recycle it.
        unsafe {
            std::slice::from_raw_parts_mut(self.data.ptr.as_ptr().add(off), len.min(self.size))
        }
    }

    /// Gives buffer `bid` back to the kernel (visible after [`BufRing::publish`]).
    pub fn recycle(&mut self, bid: u16) {
        self.put(bid);
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
        self.in_use -= 1;
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

    /// Records that the kernel handed out a buffer (a completion used one).
    pub fn taken(&mut self) {
        self.in_use += 1;
    }
}
