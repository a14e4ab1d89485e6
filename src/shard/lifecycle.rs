//! A connection's way out — abort, linger, release, the server-initiated
//! close — and the bookkeeping every phase uses: the flush list, deadlines
//! and the timer wheel, leaving the hub and the channels. The phase files
//! call into this one; it calls none of them.

use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::info;

use super::slab::{Deadline, Flag, Phase, NO_TICK};
use super::Shard;
use crate::app::handler::leave_channel;
use crate::app::{ConnIo, Endpoint};
use crate::conn::ConnKey;
use crate::http::Refusal;
use crate::ws::{CloseCode, State};

impl Shard {
    /// Lists a connection for this pass's flush.
    pub(super) fn mark_dirty(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.flags.has(Flag::Dirty) {
                c.flags.set(Flag::Dirty, true);
                self.dirty.push(key);
            }
        }
    }

    pub(super) fn set_deadline(&mut self, key: ConnKey, at: Instant) {
        let us = at.saturating_duration_since(self.epoch).as_micros() as u64;
        if let Some(c) = self.conns.get_mut(key) {
            c.deadline = Deadline::at_us(us);
        }
        self.schedule(key);
    }

    /// Makes sure the wheel holds an entry for the connection's earliest
    /// timer: its phase deadline, or (open) its next ping or idle limit.
    pub(super) fn schedule(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let at = |us: u64| self.epoch + Duration::from_micros(us);
        let mut next = c.deadline.get().map(at);
        if matches!(c.phase, Phase::Open(_)) && next.is_none() {
            let ping = at(c.ctl.beat.next_us);
            let idle = self.cfg.idle_timeout.map(|t| at(c.ctl.last_msg_us) + t);
            next = Some(idle.map_or(ping, |i| i.min(ping)));
        }
        let Some(next) = next else {
            return;
        };
        let tick = self.wheel.tick_of(next);
        if c.wheel_tick == NO_TICK || tick < c.wheel_tick {
            c.wheel_tick = self.wheel.insert(next, key);
        }
    }

    /// Takes the connection out of the hub's subscribers and its channels.
    pub(super) fn unsubscribe(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let moved = match &mut conn.ctl.endpoint {
            Endpoint::Channels(ws) => {
                for idx in ws.subs.drain(..) {
                    leave_channel(&mut self.env, key, ws.client, idx, None);
                }
                None
            }
            Endpoint::Broadcast { slot } => slot
                .take()
                .and_then(|s| Some((self.env.hub.unsubscribe(s)?, s))),
            Endpoint::None | Endpoint::Echo => None,
        };
        // The subscriber moved into the freed slot learns its new place.
        if let Some((moved, at)) = moved {
            if let Some(m) = self.conns.get_mut(moved) {
                if let Endpoint::Broadcast { slot } = &mut m.ctl.endpoint {
                    *slot = Some(at);
                }
            }
        }
    }

    /// Ends a connection now: no more bytes either way.
    pub(super) fn abort(&mut self, key: ConnKey) {
        self.unsubscribe(key);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(conn.phase, Phase::Closing) {
            return;
        }
        conn.phase = Phase::Closing;
        conn.deadline = Deadline::NONE;
        if conn.busy() {
            // Completes the armed receive (and any stuck send) promptly; an
            // error only means the socket is shut down already.
            let _ = socket2::SockRef::from(&conn.fd).shutdown(Shutdown::Both);
        }
        self.maybe_release(key);
    }

    /// The peer's FIN arrived while lingering. What is still queued for it
    /// (a response, a close reply) goes out first: releasing now would
    /// close the descriptor with it unsent, e.g. for a client that sends
    /// its request and shuts down its write side in the same breath.
    pub(super) fn release_after_flush(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.has_unsent() || conn.sending() || conn.flags.has(Flag::FinAfterFlush) {
            conn.flags.set(Flag::PeerFin, true);
            self.mark_dirty(key);
        } else {
            self.release(key);
        }
    }

    /// Closes the socket normally (after our FIN and the peer's).
    pub(super) fn release(&mut self, key: ConnKey) {
        self.unsubscribe(key);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.phase = Phase::Closing;
        }
        self.maybe_release(key);
    }

    /// Frees a closing connection once no operation references it; its
    /// descriptor closes as it drops.
    pub(super) fn maybe_release(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !matches!(conn.phase, Phase::Closing) || conn.busy() {
            return;
        }
        if let Some(conn) = self.conns.remove(key) {
            self.stats.closed += 1;
            if conn.ctl.endpoint.route().is_some() {
                self.open_ws -= 1;
            }
            if let Some(m) = conn.sendmsg {
                self.sendmsgs.push(m);
            }
            let mut out = conn.out;
            out.clear(&mut self.env.pool);
            if let Some(crate::tls::Tls::User(mut tls)) = conn.tls.map(|b| *b) {
                if tls.handshaking() {
                    // Neither finished nor refused nor timed out: the peer
                    // went away in the middle.
                    self.stats.tls.abandoned += 1;
                }
                tls.clear(&mut self.env.pool);
            }
        }
    }

    /// Flush what is queued, then FIN, then wait for the peer's FIN.
    pub(super) fn linger(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.phase = Phase::Lingering;
        conn.flags.set(Flag::FinAfterFlush, true);
        self.set_deadline(key, Instant::now() + self.cfg.close_timeout);
        self.mark_dirty(key);
    }

    /// Answers with a refusal (counted by the caller) and closes.
    pub(super) fn refuse(&mut self, key: ConnKey, refusal: Refusal) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.out
            .write_with(&mut self.env.pool, |v| refusal.write_response(v));
        self.linger(key);
    }

    /// React to the session entering `AwaitingClose` or `Done`.
    pub(super) fn session_changed(&mut self, key: ConnKey, state: State) {
        self.unsubscribe(key);
        match state {
            State::AwaitingClose => self.set_deadline(key, Instant::now() + self.cfg.close_timeout),
            State::Done => self.linger(key),
            State::Open => {}
        }
    }

    /// Starts a server-initiated close handshake on an open connection,
    /// optionally dropping its unsent backlog first. Returns whether it was
    /// open.
    pub(super) fn close_open(
        &mut self,
        key: ConnKey,
        code: CloseCode,
        reason: &str,
        drop_backlog: bool,
    ) -> bool {
        let Shard { conns, env, .. } = &mut *self;
        let Some(conn) = conns.get_mut(key) else {
            return false;
        };
        let Phase::Open(session) = &mut conn.phase else {
            return false;
        };
        if session.state() != State::Open {
            return false;
        }
        if drop_backlog {
            conn.out.drop_unsent(&mut env.pool);
        }
        let deflate = session.deflate();
        let mut io = ConnIo::new(key, &mut conn.out, &mut conn.ctl, env, deflate);
        session.close(code, reason, &mut io);
        self.session_changed(key, State::AwaitingClose);
        self.mark_dirty(key);
        true
    }

    /// Shutdown: no new connections; every open one gets a close frame
    /// (1001, or 1012 when a core failed) and until the grace period's end
    /// to finish its close handshake.
    pub(super) fn begin_drain(&mut self) {
        let deadline = Instant::now() + self.cfg.shutdown_grace;
        self.drain_deadline = Some(deadline);
        self.control.metrics[self.id]
            .listening
            .store(false, Ordering::Relaxed);
        info!(
            core = self.id,
            connections = self.conns.len(),
            "shutting down: closing with 1001"
        );
        self.accept.shut_down();
        let (code, reason) = if self.control.restart.load(Ordering::Relaxed) {
            (
                CloseCode::SERVICE_RESTART,
                "server restarting after a failure",
            )
        } else {
            (CloseCode::GOING_AWAY, "server shutting down")
        };
        for key in self.conns.keys() {
            let handshaking = self
                .conns
                .get_mut(key)
                .is_some_and(|c| matches!(c.phase, Phase::Handshake(_)));
            if handshaking {
                self.abort(key);
            } else if self.close_open(key, code, reason, false) {
                self.set_deadline(key, deadline);
            }
        }
    }
}
