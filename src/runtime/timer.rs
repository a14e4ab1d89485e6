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
pub const TICK: Duration = Duration::from_millis(50);
const SLOTS: usize = 512;
/// A slot keeps up to this many entries' worth of capacity when it drains;
/// beyond it, capacity the remaining entries do not need is given back.
const SLOT_KEEP: usize = 32;

/// The wheel; `K` identifies a connection.
pub struct TimerWheel<K> {
    start: Instant,
    /// Next tick to process.
    cursor: u64,
    slots: Vec<Vec<(u64, K)>>,
    len: usize,
}

impl<K: Copy> TimerWheel<K> {
    /// An empty wheel starting now.
    pub fn new(now: Instant) -> TimerWheel<K> {
        TimerWheel {
            start: now,
            cursor: 0,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            len: 0,
        }
    }

    /// The tick an entry for `t` would fire at.
    pub fn tick_of(&self, t: Instant) -> u64 {
        // Round up so nothing fires before its deadline.
        let d = t.saturating_duration_since(self.start);
        (d.as_nanos().div_ceil(TICK.as_nanos())) as u64
    }

    /// Schedules `key` to be reported at or after `deadline`; returns the
    /// entry's tick, which [`TimerWheel::advance`] reports with it.
    pub fn insert(&mut self, deadline: Instant, key: K) -> u64 {
        let tick = self.tick_of(deadline).max(self.cursor);
        self.slots[(tick as usize) % SLOTS].push((tick, key));
        self.len += 1;
        tick
    }

    /// Entries scheduled and not yet reported.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// When the next tick is due, if anything is scheduled.
    pub fn next_wake(&self) -> Option<Instant> {
        (self.len > 0).then(|| self.start + TICK * self.cursor as u32)
    }

    /// Reports every entry (tick, key) whose tick has passed at `now`.
    pub fn advance(&mut self, now: Instant, mut fire: impl FnMut(u64, K)) {
        // Rounded down: tick k (deadlines up to k * TICK) has passed only
        // once `now` reaches k * TICK; `tick_of`'s rounding up would fire
        // entries up to a tick early.
        let d = now.saturating_duration_since(self.start);
        let now_tick = (d.as_nanos() / TICK.as_nanos()) as u64;
        while self.cursor <= now_tick && self.len > 0 {
            let slot = &mut self.slots[(self.cursor as usize) % SLOTS];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].0 <= self.cursor {
                    let (t, k) = slot.swap_remove(i);
                    self.len -= 1;
                    fire(t, k);
                } else {
                    i += 1;
                }
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
