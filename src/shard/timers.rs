//! Timers: phase deadlines, heartbeats and idle limits through the wheel,
//! the accept back-off, the pool trim, and the end of the shutdown grace.

use std::time::{Duration, Instant};

use tracing::debug;

use super::slab::{Deadline, Phase, NO_TICK};
use super::{Shard, POOL_TRIM_PERIOD};
use crate::app::heartbeat::Due;
use crate::app::Endpoint;
use crate::conn::ConnKey;
use crate::ws::frame::encode_frame_into;
use crate::ws::{CloseCode, OpCode};

/// After the shutdown grace period, how long aborted connections get for
/// their in-flight operations to complete before the core exits anyway.
const DRAIN_CUTOFF: Duration = Duration::from_secs(1);

impl Shard {
    pub(super) fn timers(&mut self) {
        let now = Instant::now();
        if now >= self.pool_trim_at {
            self.env.pool.trim();
            self.sendmsgs.trim(drop);
            self.replays.clear();
            self.pool_trim_at = now + POOL_TRIM_PERIOD;
        }
        self.accept_backoff_over(now);
        if self.wheel.next_wake().is_some_and(|t| t <= now) {
            let mut due = std::mem::take(&mut self.due);
            self.wheel.advance(now, |tick, k| due.push((tick, k)));
            for (tick, key) in due.drain(..) {
                self.timer_fired(tick, key, now);
            }
            self.due = due;
        }
        if self.drain_cutoff.is_none() && self.drain_deadline.is_some_and(|d| now >= d) {
            // Grace is over: drop whoever has not finished closing. Their
            // descriptors close as soon as the aborted operations complete.
            self.drain_cutoff = Some(now + DRAIN_CUTOFF);
            for key in self.conns.keys() {
                self.abort(key);
            }
        }
    }

    /// A wheel entry fired: act on whatever of the connection's timers is
    /// due, then make sure its next one is in the wheel.
    fn timer_fired(&mut self, tick: u64, key: ConnKey, now: Instant) {
        let now_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.wheel_tick != tick {
            return; // superseded by an earlier entry
        }
        conn.wheel_tick = NO_TICK;
        let answering = matches!(conn.phase, Phase::Answering);
        if let Some(d) = conn.deadline.get() {
            if d <= now_us {
                conn.deadline = Deadline::NONE;
                if matches!(conn.phase, Phase::Handshake(_)) {
                    debug!(core = self.id, "handshake timeout");
                }
                if let Some(tls) = conn.user_tls_mut().filter(|t| t.handshaking()) {
                    tls.set_failed();
                    self.stats.tls.timed_out += 1;
                }
                self.abort(key);
                return;
            }
        } else if matches!(conn.phase, Phase::Open(_)) {
            let idle = self
                .cfg
                .idle_timeout
                .is_some_and(|t| now_us >= conn.ctl.last_msg_us + t.as_micros() as u64);
            if idle {
                if self.close_open(key, CloseCode::NORMAL, "idle timeout", false) {
                    self.stats.idle_closes += 1;
                    debug!(core = self.id, "closed idle connection");
                }
                return;
            }
            if token_expired(&conn.ctl.endpoint) {
                if self.close_open(key, CloseCode::TOKEN_EXPIRED, "token expired", false) {
                    self.stats.token_expired_closes += 1;
                    debug!(
                        core = self.id,
                        "closed a connection whose token expired (4002)"
                    );
                }
                return;
            }
            if now_us >= conn.ctl.beat.next_us {
                self.heartbeat(key, now_us);
            }
        }
        // A profile request's wake-up (before its deadline).
        if answering && self.poll_profile(key, now) {
            return;
        }
        self.schedule(key);
    }

    /// A connection's ping is due: ping it, or close it after too many
    /// missed pongs. A peer that does not even read gets no ping (its
    /// backlog is over the bound); its misses still count.
    fn heartbeat(&mut self, key: ConnKey, now_us: u64) {
        let max = self.cfg.max_send_queue_bytes;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.ctl.beat.due(now_us) {
            Due::Close => {
                if self.close_open(key, CloseCode::INTERNAL, "heartbeat timeout", true) {
                    self.stats.heartbeat_closes += 1;
                    debug!(core = self.id, "closed after missed pongs (1011)");
                }
            }
            Due::Ping {
                payload,
                now_suspect,
            } => {
                if now_suspect {
                    self.stats.suspects_total += 1;
                    debug!(core = self.id, "connection suspect: missed pongs");
                }
                if conn.out.cost() <= max {
                    conn.out.write_with(&mut self.env.pool, |v| {
                        encode_frame_into(OpCode::Ping, &payload, v)
                    });
                    self.stats.pings += 1;
                    self.mark_dirty(key);
                }
            }
        }
    }
}

/// Whether a `/ws` connection's token has expired (past its `exp` and the
/// verifier's leeway). Checked when the connection's timer fires (at least
/// once per ping interval), so it closes within one interval of expiry.
fn token_expired(endpoint: &Endpoint) -> bool {
    let Endpoint::Channels(ws) = endpoint else {
        return false;
    };
    let Some(claims) = &ws.claims else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now > claims.exp.saturating_add(crate::app::auth::LEEWAY_SECS)
}
