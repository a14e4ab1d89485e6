//! A hashed timing wheel for per-connection deadlines.
//!
//! Handshake, close and linger timeouts, heartbeats and idle timeouts cost
//! one entry in a slot vector per connection: no task, no timer object, no
//! heap node each. Entries are cancelled lazily: the owner remembers the
//! tick of the one entry it counts on ([`TimerWheel::insert`] returns it)
//! and ignores any other that fires; an entry that fires before anything is
//! due just leads to the next one being inserted.

use std::time::{Duration, Instant};

/// Granularity of deadlines.
pub(crate) const TICK: Duration = Duration::from_millis(50);
const SLOTS: usize = 512;
/// A slot keeps up to this many entries' worth of capacity when it drains;
/// beyond it, capacity the remaining entries do not need is given back.
const SLOT_KEEP: usize = 32;

/// The wheel; `K` identifies a connection.
pub(crate) struct TimerWheel<K> {
    start: Instant,
    /// Next tick to process.
    cursor: u64,
    slots: Vec<Vec<(u64, K)>>,
    /// Earliest tick in each slot (`u64::MAX`: empty), so the next wake-up
    /// is found without walking the entries.
    slot_min: Vec<u64>,
    /// The minimum of `slot_min` (`u64::MAX`: empty). A core asks for its
    /// next wake-up every time it parks; a scan of the 512 words each time
    /// was 4% of a connection-churn run's CPU. Inserts keep it exact, and
    /// the scan runs only when the slot holding it drains.
    earliest: u64,
    len: usize,
}

impl<K: Copy> TimerWheel<K> {
    /// An empty wheel starting now.
    pub(crate) fn new(now: Instant) -> TimerWheel<K> {
        TimerWheel {
            start: now,
            cursor: 0,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            slot_min: vec![u64::MAX; SLOTS],
            earliest: u64::MAX,
            len: 0,
        }
    }

    /// The tick an entry for `t` would fire at.
    pub(crate) fn tick_of(&self, t: Instant) -> u64 {
        // Round up so nothing fires before its deadline.
        let d = t.saturating_duration_since(self.start);
        (d.as_nanos().div_ceil(TICK.as_nanos())) as u64
    }

    /// Schedules `key` to be reported at or after `deadline`; returns the
    /// entry's tick, which [`TimerWheel::advance`] reports with it.
    pub(crate) fn insert(&mut self, deadline: Instant, key: K) -> u64 {
        let tick = self.tick_of(deadline).max(self.cursor);
        let s = (tick as usize) % SLOTS;
        self.slots[s].push((tick, key));
        self.slot_min[s] = self.slot_min[s].min(tick);
        self.earliest = self.earliest.min(tick);
        self.len += 1;
        tick
    }

    /// Entries scheduled and not yet reported.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is scheduled.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// When the earliest entry is due, if anything is scheduled: the core
    /// sleeps until then, not until the next tick (an idle core holding
    /// connections whose next pings are seconds away wakes seconds from
    /// now, not 20 times a second). A scan of one word per slot.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let tick = self.earliest;
        let nanos = (TICK.as_nanos() as u64).saturating_mul(tick);
        Some(self.start + Duration::from_nanos(nanos))
    }

    /// Reports every entry (tick, key) whose tick has passed at `now`.
    pub(crate) fn advance(&mut self, now: Instant, mut fire: impl FnMut(u64, K)) {
        // Rounded down: tick k (deadlines up to k * TICK) has passed only
        // once `now` reaches k * TICK; `tick_of`'s rounding up would fire
        // entries up to a tick early.
        let d = now.saturating_duration_since(self.start);
        let now_tick = (d.as_nanos() / TICK.as_nanos()) as u64;
        while self.cursor <= now_tick && self.len > 0 {
            // Nothing due before the earliest entry: jump there instead of
            // visiting every empty tick in between.
            if self.earliest > self.cursor {
                self.cursor = self.earliest.min(now_tick + 1);
                continue;
            }
            let s = (self.cursor as usize) % SLOTS;
            let slot = &mut self.slots[s];
            let mut i = 0;
            let mut min = u64::MAX;
            while i < slot.len() {
                if slot[i].0 <= self.cursor {
                    let (t, k) = slot.swap_remove(i);
                    self.len -= 1;
                    fire(t, k);
                } else {
                    min = min.min(slot[i].0);
                    i += 1;
                }
            }
            let drained_earliest = self.earliest == self.slot_min[s] && min > self.slot_min[s];
            self.slot_min[s] = min;
            if drained_earliest {
                self.earliest = self.slot_min.iter().copied().min().unwrap_or(u64::MAX);
            }
            // Deadlines set together (connections opened in a burst, their
            // heartbeats in step) fill one slot, then the next one their
            // interval leads to, and so on round the wheel: a slot that
            // kept its largest burst would leave every slot, in time, at
            // the size of the largest burst, 512 times the memory the
            // entries need, held for good (a soak run showed RSS rising
            // this way). A drained slot gives the excess back.
            if slot.capacity() > SLOT_KEEP && slot.len() * 4 < slot.capacity() {
                slot.shrink_to((slot.len() * 2).max(SLOT_KEEP));
            }
            self.cursor += 1;
        }
        if self.len == 0 {
            self.cursor = self.cursor.max(now_tick);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_never_early() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        w.insert(t0 + Duration::from_millis(120), 1);
        w.insert(t0 + Duration::from_millis(10), 2);
        w.insert(t0 + Duration::from_secs(60), 3); // wraps the wheel
        let mut got = Vec::new();
        w.advance(t0 + Duration::from_millis(60), |_, k| got.push(k));
        assert_eq!(got, vec![2]);
        w.advance(t0 + Duration::from_millis(100), |_, k| got.push(k));
        assert_eq!(got, vec![2]);
        // Past 120 ms's tick start but before its end: not yet.
        w.advance(t0 + Duration::from_millis(101), |_, k| got.push(k));
        w.advance(t0 + Duration::from_millis(149), |_, k| got.push(k));
        assert_eq!(got, vec![2]);
        w.advance(t0 + Duration::from_millis(150), |_, k| got.push(k));
        assert_eq!(got, vec![2, 1]);
        w.advance(t0 + Duration::from_secs(59), |_, k| got.push(k));
        assert_eq!(got, vec![2, 1]);
        w.advance(t0 + Duration::from_secs(61), |_, k| got.push(k));
        assert_eq!(got, vec![2, 1, 3]);
        assert!(w.is_empty());
        assert_eq!(w.next_wake(), None);
    }

    #[test]
    fn next_wake_is_the_earliest_entry_not_the_next_tick() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        w.insert(t0 + Duration::from_secs(15), 1);
        w.insert(t0 + Duration::from_secs(40), 2); // a later turn of the wheel
        w.insert(t0 + Duration::from_secs(9), 3);
        let wake = w.next_wake().expect("scheduled");
        assert!(wake >= t0 + Duration::from_secs(9));
        assert!(wake < t0 + Duration::from_secs(9) + TICK);
        let mut got = Vec::new();
        w.advance(wake, |_, k| got.push(k));
        assert_eq!(got, vec![3]);
        let wake = w.next_wake().expect("scheduled");
        assert!(wake >= t0 + Duration::from_secs(15) && wake < t0 + Duration::from_secs(15) + TICK);
        w.advance(wake, |_, k| got.push(k));
        let wake = w.next_wake().expect("scheduled");
        assert!(wake >= t0 + Duration::from_secs(40) && wake < t0 + Duration::from_secs(40) + TICK);
        w.advance(wake, |_, k| got.push(k));
        assert_eq!(got, vec![3, 1, 2]);
        assert_eq!(w.next_wake(), None);
    }

    #[test]
    fn cached_earliest_matches_a_full_scan() {
        // Random inserts and advances (a fixed xorshift sequence): the wake-up
        // from the cache is always the one a scan of every slot gives.
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut now = t0;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                now += Duration::from_millis(x % 400);
                w.advance(now, |_, _| {});
            } else {
                w.insert(now + Duration::from_millis(x % 60_000), 0u32);
            }
            let scan = w.slot_min.iter().copied().min().filter(|_| w.len > 0);
            let nanos = |t: u64| Duration::from_nanos((TICK.as_nanos() as u64) * t);
            assert_eq!(w.next_wake(), scan.map(|t| t0 + nanos(t)));
        }
    }

    #[test]
    fn drained_slots_give_back_burst_capacity() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        // A burst of deadlines walking round the wheel, one slot after
        // another, with a few entries a full turn later in each slot.
        let turn = TICK * SLOTS as u32;
        for step in 0..SLOTS as u32 * 2 {
            let at = t0 + TICK * step;
            for k in 0..1000 {
                w.insert(at + Duration::from_millis(10), k);
            }
            w.insert(at + turn + Duration::from_millis(10), 7);
            w.advance(at + Duration::from_millis(60), |_, _| {});
        }
        let capacity: usize = w.slots.iter().map(Vec::capacity).sum();
        assert!(
            capacity <= SLOTS * SLOT_KEEP + 2 * 1024,
            "slots keep {capacity} entries of capacity"
        );
        // What is still scheduled is all there.
        assert_eq!(w.len(), SLOTS);
        let mut fired = 0;
        w.advance(t0 + turn * 4, |_, k| {
            assert_eq!(k, 7);
            fired += 1;
        });
        assert_eq!(fired, SLOTS);
        assert!(w.is_empty());
    }
}
