//! What the handlers enforce per connection, and the test hooks.

use super::heartbeat;

/// Pings answered one by one in a single read; past this, each new pong
/// replaces the previous one if nothing was queued after it (RFC 6455
/// §5.5.3 lets an endpoint answer only the most recent ping). Autobahn's
/// ping cases send 10; a flood gets one pong per read.
pub(crate) const PONG_BURST: u32 = 32;

/// Per-connection limits and heartbeat settings the handlers apply.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The connection's backlog bound (`--max-send-queue-bytes`).
    pub max_queue: usize,
    /// Data messages per connection (`--max-msgs-per-sec`, `--msg-burst`);
    /// `None`: unlimited.
    pub msg_rate: Option<Rate>,
    /// Publishes per connection (`--max-publishes-per-sec`); `None`:
    /// unlimited.
    pub publish_rate: Option<Rate>,
    /// Channels per `/ws` connection.
    pub max_subscriptions: usize,
    /// Largest `limit` a history read may ask (`--history-max-limit`).
    pub history_max_limit: u32,
    /// Ping intervals.
    pub heartbeat: heartbeat::Policy,
    /// Test hook (`RINGCAST_FAILPOINTS=1` in the environment, never a
    /// flag): a message `ringcast:panic` panics in the handler, so the test
    /// suite can check that a panic costs one connection, not the core.
    pub failpoints: bool,
}

/// A rate limit as the generic cell rate algorithm keeps it: a connection
/// holds one number per limit, the *theoretical arrival time* of its next
/// message (nanoseconds on the core's clock), instead of a token count and
/// a refill time. A message at `now` is admitted if that time is at most
/// `tolerance` ahead of `now`, and pushes it `interval` further. The same
/// limits as a token bucket of `burst` tokens refilled at `rate`, exactly,
/// in integers, in 8 bytes per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds per message at the sustained rate.
    interval_ns: u64,
    /// How far ahead of now the schedule may run: `(burst - 1) * interval`.
    tolerance_ns: u64,
}

impl Rate {
    /// `per_sec` messages per second with bursts of `burst` (at least 1);
    /// `None` for no limit (`per_sec` zero or less).
    pub fn new(per_sec: f64, burst: f64) -> Option<Rate> {
        if per_sec.is_nan() || per_sec <= 0.0 {
            return None;
        }
        let interval_ns = (1e9 / per_sec).max(1.0) as u64;
        let tolerance_ns = ((burst.max(1.0) - 1.0) * interval_ns as f64) as u64;
        Some(Rate {
            interval_ns,
            tolerance_ns,
        })
    }

    /// Admits a message at `now_ns` against the connection's schedule
    /// `tat` (0: a fresh connection, whose whole burst is available).
    #[inline]
    pub fn admit(&self, tat: &mut u64, now_ns: u64) -> bool {
        let next = (*tat).max(now_ns);
        if next - now_ns > self.tolerance_ns {
            return false;
        }
        *tat = next + self.interval_ns;
        true
    }
}

/// What a test hook asks of the whole core (`RINGCAST_FAILPOINTS=1` only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CoreHook {
    #[default]
    None,
    /// `ringcast:fail-core`: the core's loop panics outside `catch_unwind`.
    Fail,
    /// `ringcast:stall-core`: the core's loop stops until resumed (at most
    /// a minute), as a core stuck behind a slow peer would.
    Stall,
    /// `ringcast:resume-cores`: stalled cores go on.
    Resume,
}

#[cfg(test)]
mod rate_tests {
    use super::Rate;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        // 10 per second, bursts of 3: three at once, then one per 100 ms.
        let r = Rate::new(10.0, 3.0).unwrap();
        let mut tat = 0;
        let t0 = 5_000_000_000;
        assert!((0..3).all(|_| r.admit(&mut tat, t0)));
        assert!(!r.admit(&mut tat, t0), "the burst is spent");
        assert!(!r.admit(&mut tat, t0 + 99_000_000));
        assert!(r.admit(&mut tat, t0 + 100_000_000));
        assert!(!r.admit(&mut tat, t0 + 100_000_000));
        // An idle second refills the whole burst, never more.
        let later = t0 + 2_000_000_000;
        assert_eq!((0..10).filter(|_| r.admit(&mut tat, later)).count(), 3);
    }

    #[test]
    fn no_rate_means_no_limit_and_tiny_intervals_stay_positive() {
        assert!(Rate::new(0.0, 5.0).is_none());
        assert!(Rate::new(-1.0, 5.0).is_none());
        assert!(Rate::new(f64::NAN, 5.0).is_none());
        let fast = Rate::new(1e12, 1.0).unwrap();
        let mut tat = 0;
        assert!(fast.admit(&mut tat, 10));
        assert!(!fast.admit(&mut tat, 10), "burst 1: one at a time");
        assert!(fast.admit(&mut tat, 11));
    }
}
