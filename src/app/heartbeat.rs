//! Adaptive heartbeats as a pure policy: when to ping, what a missed pong
//! leads to, and how a pong's round-trip time sets the next interval.
//!
//! Browsers cannot send pings, so the server must find dead peers. Each open
//! connection carries one [`Beat`] (32 bytes, no task, no timer object); the
//! core's timer wheel wakes it when `next_us` is due. The interval follows
//! the seed document's formula, `base * 0.5 + rtt * 2`, clamped to
//! `[min, max]`: a slow path is probed less often, never less than once per
//! `max`. Misses escalate: one → ping again sooner; [`SUSPECT_AFTER`] → the
//! connection is marked suspect (a metric); [`CLOSE_AFTER`] → closed 1011.

/// Consecutive missed pongs after which a connection counts as suspect.
pub const SUSPECT_AFTER: u8 = 3;
/// Consecutive missed pongs after which the connection is closed.
pub const CLOSE_AFTER: u8 = 5;

/// Heartbeat settings (microseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `--ping-interval`: the interval before any round trip is measured.
    pub base_us: u64,
    /// `--ping-min`: the shortest interval.
    pub min_us: u64,
    /// `--ping-max`: the longest interval.
    pub max_us: u64,
}

impl Policy {
    /// The interval for a measured round-trip time (none yet: base only).
    pub fn interval_us(&self, rtt_us: Option<u64>) -> u64 {
        let raw = self.base_us / 2 + rtt_us.unwrap_or(0).saturating_mul(2);
        raw.clamp(self.min_us, self.max_us.max(self.min_us))
    }
}

/// One connection's heartbeat state; times are microseconds on the core's
/// clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Beat {
    /// When the next ping is due.
    pub next_us: u64,
    /// When the outstanding ping was sent (0: none outstanding).
    pub sent_us: u64,
    /// Sequence number of the last ping, carried as its payload.
    pub seq: u32,
    /// Current interval (adapted on every pong).
    pub interval_us: u32,
    /// Consecutive pings without a pong.
    pub missed: u8,
    /// Marked suspect (counted in metrics until it answers or closes).
    pub suspect: bool,
}

/// What a due heartbeat asks of the owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Send a ping carrying `payload`; `now_suspect` when this miss made
    /// the connection suspect.
    Ping {
        /// The ping's payload (its sequence number), echoed by the pong.
        payload: [u8; 4],
        /// This miss made the connection suspect.
        now_suspect: bool,
    },
    /// Too many missed pongs: close the connection (1011).
    Close,
}

impl Beat {
    /// Starts heartbeats for a connection opened at `now_us`.
    pub fn start(now_us: u64, policy: &Policy) -> Beat {
        let interval = policy.interval_us(None);
        Beat {
            next_us: now_us + interval,
            interval_us: interval.min(u32::MAX as u64) as u32,
            ..Beat::default()
        }
    }

    /// The ping is due at `now_us`: counts a miss if the last one was not
    /// answered, and schedules the next.
    pub fn due(&mut self, now_us: u64) -> Due {
        let mut now_suspect = false;
        if self.sent_us != 0 {
            self.missed = self.missed.saturating_add(1);
            if self.missed >= CLOSE_AFTER {
                return Due::Close;
            }
            if self.missed >= SUSPECT_AFTER && !self.suspect {
                self.suspect = true;
                now_suspect = true;
            }
        }
        self.seq = self.seq.wrapping_add(1);
        self.sent_us = now_us.max(1);
        // After a miss, ask again sooner: half the interval.
        let wait = if self.missed > 0 {
            self.interval_us as u64 / 2
        } else {
            self.interval_us as u64
        };
        self.next_us = now_us + wait.max(1);
        Due::Ping {
            payload: self.seq.to_be_bytes(),
            now_suspect,
        }
    }

    /// A pong arrived at `now_us`. If it answers the outstanding ping, the
    /// misses reset, the interval adapts, and the round-trip time is
    /// returned (`was_suspect` says whether the suspicion was lifted).
    /// Unsolicited or stale pongs (RFC 6455 allows them) change nothing.
    pub fn pong(&mut self, payload: &[u8], now_us: u64, policy: &Policy) -> Option<Pong> {
        if self.sent_us == 0 || payload != self.seq.to_be_bytes() {
            return None;
        }
        let rtt = now_us.saturating_sub(self.sent_us);
        let was_suspect = self.suspect;
        self.sent_us = 0;
        self.missed = 0;
        self.suspect = false;
        let interval = policy.interval_us(Some(rtt));
        self.interval_us = interval.min(u32::MAX as u64) as u32;
        self.next_us = now_us + interval;
        Some(Pong {
            rtt_us: rtt,
            was_suspect,
        })
    }
}

/// A pong that answered the outstanding ping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pong {
    /// The measured round trip.
    pub rtt_us: u64,
    /// The connection had been suspect before this pong.
    pub was_suspect: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn policy() -> Policy {
        Policy {
            base_us: 30 * S,
            min_us: 10 * S,
            max_us: 120 * S,
        }
    }

    #[test]
    fn interval_follows_the_seed_formula() {
        let p = policy();
        assert_eq!(p.interval_us(None), 15 * S);
        assert_eq!(p.interval_us(Some(S)), 17 * S);
        assert_eq!(p.interval_us(Some(100 * S)), 120 * S, "clamped to max");
        let fast = Policy {
            base_us: 2 * S,
            ..p
        };
        assert_eq!(fast.interval_us(Some(0)), 10 * S, "clamped to min");
    }

    #[test]
    fn pong_resets_misses_and_adapts() {
        let p = policy();
        let mut b = Beat::start(0, &p);
        assert_eq!(b.next_us, 15 * S);
        let Due::Ping { payload, .. } = b.due(15 * S) else {
            panic!("ping expected")
        };
        assert_eq!(b.next_us, 30 * S);
        assert_eq!(b.pong(b"nope", 15 * S + 10, &p), None, "unsolicited");
        let pong = b.pong(&payload, 15 * S + 2 * S, &p).unwrap();
        assert_eq!(pong.rtt_us, 2 * S);
        assert_eq!(b.missed, 0);
        assert_eq!(b.interval_us as u64, 19 * S);
        assert_eq!(b.next_us, 17 * S + 19 * S);
        assert_eq!(b.pong(&payload, 40 * S, &p), None, "answered already");
    }

    #[test]
    fn misses_escalate_to_suspect_then_close() {
        let p = policy();
        let mut b = Beat::start(0, &p);
        let mut now = b.next_us;
        let mut suspects = 0;
        let mut outcome = Vec::new();
        for _ in 0..10 {
            let d = b.due(now);
            outcome.push(d);
            match d {
                Due::Close => break,
                Due::Ping { now_suspect, .. } => suspects += now_suspect as u32,
            }
            now = b.next_us;
        }
        // First ping, then misses 1..4 re-ping, the 5th miss closes.
        assert_eq!(outcome.len(), 6);
        assert_eq!(outcome[5], Due::Close);
        assert_eq!(suspects, 1);
        assert!(b.suspect);
        // A retry after a miss comes sooner than the interval.
        let mut c = Beat::start(0, &p);
        c.due(15 * S);
        c.due(30 * S);
        assert_eq!(c.next_us, 30 * S + 15 * S / 2);
    }

    #[test]
    fn late_answer_lifts_suspicion() {
        let p = policy();
        let mut b = Beat::start(0, &p);
        let mut last = [0; 4];
        let mut now = 0;
        for _ in 0..4 {
            now = b.next_us;
            if let Due::Ping { payload, .. } = b.due(now) {
                last = payload;
            }
        }
        assert!(b.suspect);
        let pong = b.pong(&last, now + 5, &p).unwrap();
        assert!(pong.was_suspect);
        assert!(!b.suspect);
        assert_eq!(b.missed, 0);
    }
}
