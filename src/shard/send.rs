//! Sending: one send per connection per pass covering everything it has
//! queued (`send` for one buffer, `sendmsg` with pooled headers for more),
//! and what a finished send leads to.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd};

use io_uring::{opcode, types};

use super::slab::{token, Flag, Op, Phase, SendMsg};
use super::Shard;
use crate::conn::ConnKey;

/// Plaintext one pass encrypts for a TLS connection at most: four full
/// records, so its ciphertext buffer stays modest however long the
/// backlog (the rest goes in the next passes, as the sends complete).
const TLS_SEND_MAX: usize = 64 * 1024;

/// A `send` of `len` bytes at `ptr` (no SIGPIPE); the caller keeps them
/// in place until the completion.
fn send_sqe(fd: types::Fd, ptr: *const u8, len: usize) -> io_uring::squeue::Entry {
    opcode::Send::new(fd, ptr, len as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build()
}

impl Shard {
    /// Sends what every listed connection has queued; shuts down the write
    /// side of those that asked for it once flushed.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.flags.set(Flag::Dirty, false);
            if conn.sending() || matches!(conn.phase, Phase::Closing) {
                continue;
            }
            if let Some(tls) = crate::tls::user_mut(&mut conn.tls) {
                let pool = &mut self.env.pool;
                if tls.failed() {
                    // Only the alert may still go out; whatever was queued
                    // since (a fan-out frame) can never be.
                    conn.out.drop_unsent(pool);
                }
                if tls.established() && conn.out.has_unsent() {
                    // This pass's bytes, encrypted into one buffer (up to
                    // a bound, so a backlog is not all copied at once).
                    let mut failed = false;
                    conn.out.drain_with(TLS_SEND_MAX, pool, |bytes, pool| {
                        failed = tls.encrypt(bytes, pool).is_err();
                        !failed
                    });
                    if failed {
                        conn.out.clear(pool);
                        tls.set_failed();
                    }
                }
                if conn.flags.has(Flag::FinAfterFlush)
                    && !conn.out.has_unsent()
                    && !tls.has_unsent()
                {
                    // The clean end of the TLS stream before our FIN.
                    tls.close_notify(pool);
                }
                if tls.has_unsent() {
                    let bytes = tls.prepare_send();
                    let sqe = send_sqe(types::Fd(conn.fd.as_raw_fd()), bytes.as_ptr(), bytes.len());
                    self.stats.sends += 1;
                    // SAFETY: the ciphertext buffer stays in the session,
                    // unmoved and unchanged, while `sending()` (until the
                    // completion), and the session lives as long.
                    unsafe { self.ring.push(&sqe.user_data(token(Op::Send, key)))? };
                    continue;
                }
                if conn.out.has_unsent() {
                    // The handshake is not done: plaintext waits for it.
                    continue;
                }
            }
            if !conn.out.has_unsent() {
                if conn.flags.has(Flag::FinAfterFlush) {
                    conn.flags.set(Flag::FinAfterFlush, false);
                    if let Some(crate::tls::Tls::Kernel(k)) = conn.tls.as_deref() {
                        // kTLS: the clean end of the TLS stream first.
                        let _ = k.close_notify(conn.fd.as_fd());
                    }
                    // An error only means the peer is gone already.
                    let _ = socket2::SockRef::from(&conn.fd).shutdown(Shutdown::Write);
                }
                if conn.flags.has(Flag::PeerFin) {
                    // Everything went out, and the peer had finished.
                    self.release(key);
                }
                continue;
            }
            // Gathered into the core's scratch iovecs first: a single buffer
            // needs no header (most sends), so one is taken only for more.
            let n = conn.out.prepare_send(&mut self.iov[..]);
            let fd = types::Fd(conn.fd.as_raw_fd());
            let sqe = if n == 1 {
                let iov = self.iov[0];
                send_sqe(fd, iov.iov_base as *const u8, iov.iov_len)
            } else {
                let mut msg = self.sendmsgs.pop().unwrap_or_else(SendMsg::new);
                msg.iov[..n].copy_from_slice(&self.iov[..n]);
                msg.hdr.msg_iov = msg.iov.as_mut_ptr();
                msg.hdr.msg_iovlen = n;
                let sqe = opcode::SendMsg::new(fd, &msg.hdr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build();
                conn.sendmsg = Some(msg);
                sqe
            };
            self.stats.sends += 1;
            // SAFETY: the iovecs point into chunks the queue keeps unmoved
            // while `sending()`, and the msghdr is boxed in the connection
            // until the completion.
            unsafe { self.ring.push(&sqe.user_data(token(Op::Send, key)))? };
        }
        self.dirty = dirty;
        Ok(())
    }

    pub(super) fn on_send(&mut self, key: ConnKey, res: i32) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(tls) = crate::tls::user_mut(&mut conn.tls).filter(|t| t.sending()) {
            if res < 0 {
                tls.clear(&mut self.env.pool);
                conn.out.clear(&mut self.env.pool);
                self.abort(key);
                self.maybe_release(key);
                return;
            }
            self.stats.bytes_out += res as u64;
            tls.complete_send(res as usize, &mut self.env.pool);
            if tls.offload_pending() && !conn.flags.has(Flag::RecvArmed) {
                // Reads waited for this send before the kTLS hand-over.
                self.rearm.push(key);
            }
            if conn.has_unsent()
                || conn.flags.has(Flag::FinAfterFlush)
                || conn.flags.has(Flag::PeerFin)
            {
                self.mark_dirty(key);
            }
            self.maybe_release(key);
            return;
        }
        if let Some(m) = conn.sendmsg.take() {
            self.sendmsgs.push(m);
        }
        if res < 0 {
            conn.out.clear(&mut self.env.pool);
            self.abort(key);
            self.maybe_release(key);
            return;
        }
        self.stats.bytes_out += res as u64;
        conn.out.complete_send(res as usize, &mut self.env.pool);
        if conn.out.has_unsent()
            || conn.flags.has(Flag::FinAfterFlush)
            || conn.flags.has(Flag::PeerFin)
        {
            self.mark_dirty(key);
        }
        self.maybe_release(key);
    }
}
