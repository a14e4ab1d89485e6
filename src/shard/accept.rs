//! Accepting connections: the listener's multishot accept, and the back-off
//! when the descriptor table is full.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};
use tracing::{debug, warn};

use super::slab::{token, Conn, Deadline, Op};
use super::{Shard, CORE};
use crate::conn::ConnKey;
use crate::tls::{Tls, TlsSession};

/// Pause before re-arming accept after EMFILE/ENFILE, so a full descriptor
/// table does not turn the accept path into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One listening socket and its accept's state.
struct Listener {
    /// `None` once shut down and no accept references it any more.
    fd: Option<OwnedFd>,
    /// A multishot accept is armed.
    armed: bool,
    /// Connections accepted here speak TLS first.
    tls: bool,
}

/// The core's listeners — `--listen`, and `--tls-listen` when TLS is
/// served beside plain — and their accepts' state.
pub(super) struct Acceptor {
    listeners: Vec<Listener>,
    /// When to re-arm after a back-off.
    pub(super) retry_at: Option<Instant>,
}

/// The completion token of listener `i`'s accept.
fn accept_token(i: usize) -> u64 {
    token(
        Op::Accept,
        ConnKey {
            gen: i as u32,
            ..CORE
        },
    )
}

impl Acceptor {
    /// `listeners`: each socket, and whether it serves TLS.
    pub(super) fn new(listeners: Vec<(OwnedFd, bool)>) -> Acceptor {
        Acceptor {
            listeners: listeners
                .into_iter()
                .map(|(fd, tls)| Listener {
                    fd: Some(fd),
                    armed: false,
                    tls,
                })
                .collect(),
            retry_at: None,
        }
    }

    /// Whether any accept is still armed.
    pub(super) fn armed(&self) -> bool {
        self.listeners.iter().any(|l| l.armed)
    }

    /// Stops new connections at once (the armed accepts complete), and
    /// closes the listeners once nothing references them.
    pub(super) fn shut_down(&mut self) {
        for l in &mut self.listeners {
            if let Some(fd) = &l.fd {
                // Errors only mean it was not listening any more.
                let _ = socket2::SockRef::from(fd).shutdown(Shutdown::Both);
                if !l.armed {
                    l.fd = None;
                }
            }
        }
    }
}

impl Shard {
    /// Arms every listener's accept that is not armed.
    pub(super) fn arm_accept(&mut self) -> io::Result<()> {
        for (i, l) in self.accept.listeners.iter_mut().enumerate() {
            let Some(fd) = &l.fd else {
                continue;
            };
            if l.armed {
                continue;
            }
            let sqe = opcode::AcceptMulti::new(types::Fd(fd.as_raw_fd()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(accept_token(i));
            // SAFETY: accept takes no buffers.
            unsafe { self.ring.push(&sqe)? };
            l.armed = true;
        }
        Ok(())
    }

    pub(super) fn on_accept(&mut self, which: ConnKey, res: i32, flags: u32) {
        let draining = self.drain_deadline.is_some();
        let i = which.gen as usize;
        let Some(l) = self.accept.listeners.get_mut(i) else {
            return;
        };
        if !cqueue::more(flags) {
            l.armed = false;
        }
        let tls = l.tls;
        if res >= 0 {
            self.stats.accepted += 1;
            // SAFETY: a successful accept completion hands us a new
            // descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            if draining {
                return; // closed as `fd` drops
            }
            let now = Instant::now();
            let deadline = (now + self.cfg.handshake_timeout).saturating_duration_since(self.epoch);
            let mut conn = Conn::new(fd, Deadline::at_us(deadline.as_micros() as u64));
            if tls {
                self.take_tls_reload();
                let Some(config) = &self.tls else {
                    return;
                };
                match TlsSession::new(config.clone(), now) {
                    Ok(mut s) => {
                        if !self.ktls_ciphers().is_empty() {
                            s.want_offload();
                        }
                        conn.tls = Some(Box::new(Tls::User(Box::new(s))));
                    }
                    Err(e) => {
                        warn!(core = self.id, "starting a TLS session: {e}");
                        return;
                    }
                }
            }
            let key = self.conns.insert(conn);
            self.schedule(key);
            debug!(core = self.id, fd = res, tls, "accepted connection");
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
        if !draining && self.accept.retry_at.is_none() {
            if let Err(e) = self.arm_accept() {
                warn!(core = self.id, "re-arming accept: {e}");
            }
        }
        if draining {
            for l in &mut self.accept.listeners {
                if !l.armed {
                    l.fd = None;
                }
            }
        }
    }

    /// Picks up a reloaded TLS configuration, if one came since the last
    /// look (one relaxed load when none did).
    fn take_tls_reload(&mut self) {
        let generation = self.control.tls_generation.load(Ordering::Acquire);
        if generation == self.tls_generation {
            return;
        }
        self.tls_generation = generation;
        let reloaded = self
            .control
            .tls_reloaded
            .lock()
            .ok()
            .and_then(|s| s.clone());
        if let Some(base) = reloaded {
            self.tls = Some(crate::tls::config::per_core(&base, self.ktls_asked()));
            debug!(core = self.id, generation, "TLS configuration reloaded");
        }
    }

    /// Re-arms accept once a back-off is over.
    pub(super) fn accept_backoff_over(&mut self, now: Instant) {
        if self.accept.retry_at.is_none_or(|t| now < t) {
            return;
        }
        self.accept.retry_at = None;
        if self.drain_deadline.is_none() {
            if let Err(e) = self.arm_accept() {
                warn!(core = self.id, "re-arming accept: {e}");
                self.accept.retry_at = Some(now + ACCEPT_BACKOFF);
            }
        }
    }
}
