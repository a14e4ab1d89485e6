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
//! A registered eventfd lets the core sleep in glommio's reactor and be woken
//! when this ring has work (see [`super::park`]); it is switched off while the
//! loop is running so a busy core pays nothing for it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, Ordering};

use io_uring::{cqueue, squeue, IoUring};

/// The ring plus its wake-up eventfd.
pub struct Ring {
    ring: IoUring,
    eventfd: OwnedFd,
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
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter().register_eventfd(fd)?;
        let mut r = Ring { ring, eventfd };
        r.set_eventfd_enabled(false);
        Ok(r)
    }

    /// The underlying ring, for registering buffer rings.
    pub fn raw(&self) -> &IoUring {
        &self.ring
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
        match self.ring.submitter().submit_with_args(0, &args) {
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

    /// Pops the next completion, if any.
    #[inline]
    pub fn next_completion(&mut self) -> Option<cqueue::Entry> {
        self.ring.completion().next()
    }

    /// Arms the eventfd before the core sleeps. Returns `false` (and leaves
    /// it disarmed) if work arrived in the meantime, so the caller must not
    /// sleep: the kernel only signals on the transition to "work pending",
    /// so work that was already pending would never wake us.
    pub fn arm_wakeup(&mut self) -> bool {
        self.set_eventfd_enabled(true);
        fence(Ordering::SeqCst);
        let busy = {
            let sq = self.ring.submission();
            !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
        } || !self.ring.completion().is_empty();
        if busy {
            self.set_eventfd_enabled(false);
        }
        !busy
    }

    /// Disarms the eventfd after waking and clears its counter.
    pub fn disarm_wakeup(&mut self) {
        self.set_eventfd_enabled(false);
        let mut v = 0u64;
        // SAFETY: reading 8 bytes into a u64 from our own non-blocking eventfd.
        unsafe { libc::read(self.eventfd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// The eventfd the kernel signals when this ring has work while armed.
    /// Anyone may also write it to wake the core (e.g. on shutdown).
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    fn set_eventfd_enabled(&mut self, on: bool) {
        let cq = self.ring.completion();
        if on {
            cq.enable_eventfd();
        } else {
            cq.disable_eventfd();
        }
    }
}
