//! Accepting connections: the listener's multishot accept, and the back-off
//! when the descriptor table is full.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};
use tracing::{debug, warn};

use super::slab::{token, Conn, Op};
use super::{Shard, CORE};

/// Pause before re-arming accept after EMFILE/ENFILE, so a full descriptor
/// table does not turn the accept path into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The core's listener and its accept's state.
pub(super) struct Acceptor {
    /// `None` once shut down and no accept references it any more.
    listener: Option<OwnedFd>,
    /// A multishot accept is armed.
    pub(super) armed: bool,
    /// When to re-arm after a back-off.
    pub(super) retry_at: Option<Instant>,
}

impl Acceptor {
    pub(super) fn new(listener: OwnedFd) -> Acceptor {
        Acceptor {
            listener: Some(listener),
            armed: false,
            retry_at: None,
        }
    }

    /// Stops new connections at once (the armed accept completes), and
    /// closes the listener once nothing references it.
    pub(super) fn shut_down(&mut self) {
        if let Some(l) = &self.listener {
            // Errors only mean it was not listening any more.
            let _ = socket2::SockRef::from(l).shutdown(Shutdown::Both);
            if !self.armed {
                self.listener = None;
            }
        }
    }
}

impl Shard {
    pub(super) fn arm_accept(&mut self) -> io::Result<()> {
        let Some(l) = &self.accept.listener else {
            return Ok(());
        };
        let sqe = opcode::AcceptMulti::new(types::Fd(l.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(token(Op::Accept, CORE));
        // SAFETY: accept takes no buffers.
        unsafe { self.ring.push(&sqe)? };
        self.accept.armed = true;
        Ok(())
    }

    pub(super) fn on_accept(&mut self, res: i32, flags: u32) {
        let draining = self.drain_deadline.is_some();
        if !cqueue::more(flags) {
            self.accept.armed = false;
        }
        if res >= 0 {
            self.stats.accepted += 1;
            // SAFETY: a successful accept completion hands us a new
            // descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            if draining {
                return; // closed as `fd` drops
            }
            let deadline = Instant::now() + self.cfg.handshake_timeout;
            let key = self.conns.insert(Conn::new(fd, deadline));
            self.schedule(key);
            debug!(core = self.id, fd = res, "accepted connection");
            self.arm_recv(key);
        } else {
            let err = io::Error::from_raw_os_error(-res);
            match -res {
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                    warn!(
                        core = self.id,
                        "accept: {err}; pausing accepts for {ACCEPT_BACKOFF:?}"
                    );
                    self.accept.retry_at = Some(Instant::now() + ACCEPT_BACKOFF);
                }
                libc::ECANCELED | libc::EINVAL if draining => {}
                _ => debug!(core = self.id, "accept: {err}"),
            }
        }
        if !self.accept.armed && !draining && self.accept.retry_at.is_none() {
            if let Err(e) = self.arm_accept() {
                warn!(core = self.id, "re-arming accept: {e}");
            }
        }
        if draining && !self.accept.armed {
            self.accept.listener = None;
        }
    }

    /// Re-arms accept once a back-off is over.
    pub(super) fn accept_backoff_over(&mut self, now: Instant) {
        if self.accept.retry_at.is_none_or(|t| now < t) {
            return;
        }
        self.accept.retry_at = None;
        if !self.accept.armed && self.drain_deadline.is_none() {
            if let Err(e) = self.arm_accept() {
                warn!(core = self.id, "re-arming accept: {e}");
                self.accept.retry_at = Some(now + ACCEPT_BACKOFF);
            }
        }
    }
}
