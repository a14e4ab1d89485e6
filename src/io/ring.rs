//! The per-core io_uring instance that carries all socket I/O.
//!
//! glommio 0.9 creates its rings without setup flags and keeps its socket
//! operations private, and its `TcpStream` tries a plain `recv`/`send`
//! syscall before touching a ring. This ring is ours: created on the core's
//! own thread with `SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG`, so the
//! kernel never interrupts the core to complete work (no IPIs, no task work
//! on unrelated syscalls); completions are produced only when the loop asks
//! for them, one `io_uring_enter` per loop pass for everything queued.
//!
//! An idle core sleeps inside this ring ([`Ring::wait`]): one
//! `io_uring_enter` that returns on the first completion or at the next
//! timer. Other threads wake it through an eventfd the ring polls
//! (multishot), so a sleeping core needs nothing from glommio's reactor and a
//! wake-up costs the sleeper no extra syscall.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::bufring::BufRing;

/// The core's ring, and the provided buffers registered with it. The
/// eventfd that wakes it belongs to the core's doorbell (shared with the
/// threads that ring it), not to the ring.
pub struct Ring {
    /// Dropped by hand first (see `Drop`): closing the io_uring cancels the
    /// receives that could still write into `bufs` and unregisters them.
    ring: ManuallyDrop<IoUring>,
    bufs: Option<BufRing>,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `ring` is never used again; dropping it before `bufs`
        // (which the field drop that follows frees) is what makes the
        // buffer memory safe to unmap.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
    }
}

impl Ring {
    /// Creates a ring with room for `entries` submissions (completion queue
    /// 8× that, so bursts of multishot completions do not overflow).
    pub fn new(entries: u32) -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_submit_all()
            .setup_cqsize(entries * 8)
            .build(entries)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("io_uring setup with SINGLE_ISSUER|DEFER_TASKRUN failed (needs Linux >= 6.1): {e}"),
                )
            })?;
        Ok(Ring {
            ring: ManuallyDrop::new(ring),
            bufs: None,
        })
    }

    /// Queues a multishot poll of the wake-up eventfd `wake`, completing
    /// with `user_data` on every write to it. The eventfd is never read:
    /// each write is a new wake-up event for the poll even while the counter
    /// stays non-zero. Call again when a completion says the poll ended. The
    /// descriptor must stay open at least until the next submission (the
    /// kernel resolves it then and holds its own reference after).
    pub fn arm_wake_poll(&mut self, wake: BorrowedFd<'_>, user_data: u64) -> io::Result<()> {
        let sqe = opcode::PollAdd::new(types::Fd(wake.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data);
        // SAFETY: the entry references no memory.
        unsafe { self.push(&sqe) }
    }

    /// The underlying ring, for registering buffer rings.
    pub(super) fn uring(&self) -> &IoUring {
        &self.ring
    }

    /// Registers `count` provided buffers of `size` bytes as group `group`
    /// (consumed incrementally where the kernel allows it), owned by the
    /// ring from now on: see [`BufRing`].
    pub fn provide_buffers(&mut self, group: u16, count: u16, size: usize) -> io::Result<()> {
        self.provide_buffers_mode(group, count, size, true)
    }

    /// [`Ring::provide_buffers`], trying incremental consumption only if
    /// `try_incremental` (tests cover the pre-6.12 mode on any kernel).
    pub(crate) fn provide_buffers_mode(
        &mut self,
        group: u16,
        count: u16,
        size: usize,
        try_incremental: bool,
    ) -> io::Result<()> {
        self.bufs = Some(BufRing::register(
            self,
            group,
            count,
            size,
            try_incremental,
        )?);
        Ok(())
    }

    /// The provided buffers, once registered.
    #[inline]
    pub fn buffers(&mut self) -> Option<&mut BufRing> {
        self.bufs.as_mut()
    }

    /// Queues one submission; if the queue is full, submits what is there
    /// first (an extra `io_uring_enter`, only under very large bursts).
    ///
    /// # Safety
    /// Every buffer the entry points to must stay valid and unmoved until its
    /// completion arrives.
    pub unsafe fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded to the caller.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            self.submit_only()?;
        }
    }

    fn submit_only(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    || e.raw_os_error() == Some(libc::EINTR) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether an `io_uring_enter` would do anything: submissions are queued,
    /// deferred completions are waiting to run, or the CQ overflowed.
    pub fn needs_enter(&mut self) -> bool {
        let sq = self.ring.submission();
        !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
    }

    /// Submits everything queued and runs deferred completion work, without
    /// waiting. One syscall, and only when [`Ring::needs_enter`] says so.
    pub fn enter(&mut self) -> io::Result<()> {
        if !self.needs_enter() {
            return Ok(());
        }
        // submit() adds GETEVENTS when the TASKRUN flag is set.
        let args = io_uring::types::SubmitArgs::new();
        transient_ok(self.ring.submitter().submit_with_args(0, &args))
    }

    /// Pops the next completion, if any.
    #[inline]
    pub fn next_completion(&mut self) -> Option<cqueue::Entry> {
        self.ring.completion().next()
    }

    /// Sleeps until at least one completion is ready or `timeout` passes,
    /// submitting whatever is queued on the way in: one syscall. Returns at
    /// once if completions or deferred work are already pending, so no
    /// wake-up that happened before the call can be lost.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let ts = timeout.map(types::Timespec::from);
        let mut args = types::SubmitArgs::new();
        if let Some(ts) = &ts {
            args = args.timespec(ts);
        }
        transient_ok(self.ring.submitter().submit_with_args(1, &args))
    }
}

/// `io_uring_enter` results that only mean "nothing more this time": the
/// CQ is busy (EBUSY), a signal arrived (EINTR), the wait timed out (ETIME).
fn transient_ok(r: io::Result<usize>) -> io::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EBUSY) | Some(libc::EINTR) | Some(libc::ETIME)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}
