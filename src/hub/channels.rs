//! Named channels: each core's map from a channel to its local subscribers,
//! and its view of which other cores have subscribers of it.
//!
//! A publish is framed once on the core that received it, queued by
//! reference to every local subscriber, and pushed (one `Arc` handle) only to
//! the cores that announced interest. Interest is announced through the
//! mesh when a core's first local subscriber arrives and withdrawn when its
//! last one leaves; a subscribe is acknowledged to the client only once
//! every peer has confirmed the announcement, so anything published after
//! the ack, on any core, is delivered.
//!
//! Nothing here is shared: the registry belongs to its core's loop. Channel
//! entries exist while a local subscriber, a remote interest or an
//! unconfirmed announcement needs them, so memory is bounded by
//! connections × `--max-subscriptions`.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexSet;

use super::deliver::{deliver, Recipients};
use super::{MeshMsg, MAX_CORES};
use crate::conn::{BufPool, ConnKey, Frame};

/// A set of core ids (`< MAX_CORES`).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct CoreSet([u64; MAX_CORES / 64]);

impl CoreSet {
    /// Adds `core`.
    pub(crate) fn insert(&mut self, core: usize) {
        self.0[core / 64] |= 1 << (core % 64);
    }

    /// Removes `core`.
    pub(crate) fn remove(&mut self, core: usize) {
        self.0[core / 64] &= !(1 << (core % 64));
    }

    /// Whether no core is in the set.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The cores in the set, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

struct Channel {
    name: Arc<str>,
    /// Local subscribers: dense for the fan-out walk, O(1) removal.
    subs: IndexSet<ConnKey>,
    /// Other cores with subscribers.
    remote: CoreSet,
    /// Interest announcements not yet confirmed by a peer.
    unconfirmed: u32,
    /// Subscribe acks held until `unconfirmed` reaches zero.
    waiting: Vec<(ConnKey, Option<u64>)>,
}

impl Channel {
    fn unused(&self) -> bool {
        self.subs.is_empty() && self.remote.is_empty() && self.unconfirmed == 0
    }
}

/// What a subscribe did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscribed {
    /// Subscribed (newly, or already was); acknowledge now.
    Now { new: bool },
    /// Subscribed; the ack follows through [`Channels::acks_due`] once every
    /// other core has confirmed this core's interest.
    Pending { new: bool },
}

/// One core's channels.
pub struct Channels {
    me: usize,
    cores: usize,
    by_name: HashMap<Arc<str>, u32>,
    slots: Vec<Option<Channel>>,
    free: Vec<u32>,
    /// Entries that may have become unused this pass; freed at the end of
    /// it, so an index queued for fan-out is never reused mid-pass.
    maybe_unused: Vec<u32>,
    /// Messages for this pass's local fan-out, in order.
    pending: Vec<(u32, Frame)>,
    /// Mesh messages for other cores: `(core, message)`, sent by the loop.
    pub outgoing: Vec<(usize, MeshMsg)>,
    /// Subscribe acks released by confirmations: `(connection, request id)`.
    pub acks_due: Vec<(ConnKey, Option<u64>)>,
    subscriptions: usize,
    live: usize,
}

impl Channels {
    /// The registry of core `me` out of `cores`.
    pub fn new(me: usize, cores: usize) -> Channels {
        assert!(cores <= MAX_CORES, "at most {MAX_CORES} cores");
        Channels {
            me,
            cores,
            by_name: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            maybe_unused: Vec::new(),
            pending: Vec::new(),
            outgoing: Vec::new(),
            acks_due: Vec::new(),
            subscriptions: 0,
            live: 0,
        }
    }

    fn slot(&mut self, idx: u32) -> Option<&mut Channel> {
        self.slots.get_mut(idx as usize).and_then(Option::as_mut)
    }

    fn get_or_create(&mut self, name: &str) -> u32 {
        if let Some(&idx) = self.by_name.get(name) {
            return idx;
        }
        let name: Arc<str> = Arc::from(name);
        let ch = Channel {
            name: name.clone(),
            subs: IndexSet::new(),
            remote: CoreSet::default(),
            unconfirmed: 0,
            waiting: Vec::new(),
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(ch);
                i
            }
            None => {
                self.slots.push(Some(ch));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_name.insert(name, idx);
        self.live += 1;
        idx
    }

    fn peers(&self) -> impl Iterator<Item = usize> {
        let me = self.me;
        (0..self.cores).filter(move |&c| c != me)
    }

    fn announce(&mut self, idx: u32, on: bool) {
        let Some(ch) = self.slots.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        let name = ch.name.clone();
        if on {
            ch.unconfirmed += (self.cores - 1) as u32;
        }
        let from = self.me as u16;
        for core in (0..self.cores).filter(|&c| c != self.me) {
            self.outgoing.push((
                core,
                MeshMsg::Interest {
                    channel: name.clone(),
                    from,
                    on,
                },
            ));
        }
    }

    /// Subscribes `key` to `name` (already validated). Returns the channel's
    /// index (for [`Channels::unsubscribe`]) and when to acknowledge.
    pub fn subscribe(&mut self, key: ConnKey, name: &str, id: Option<u64>) -> (u32, Subscribed) {
        let idx = self.get_or_create(name);
        let cores = self.cores;
        let Some(ch) = self.slot(idx) else {
            return (idx, Subscribed::Now { new: false });
        };
        let new = ch.subs.insert(key);
        let first = new && ch.subs.len() == 1;
        if new {
            self.subscriptions += 1;
        }
        if first && cores > 1 {
            self.announce(idx, true);
        }
        let Some(ch) = self.slot(idx) else {
            return (idx, Subscribed::Now { new });
        };
        if ch.unconfirmed > 0 {
            ch.waiting.push((key, id));
            (idx, Subscribed::Pending { new })
        } else {
            (idx, Subscribed::Now { new })
        }
    }

    /// Takes `key`'s subscribe acks still held on channel `idx` for
    /// confirmations (oldest first), so an unsubscribe can answer them
    /// before its own ack instead of dropping them.
    pub fn take_held_acks(&mut self, key: ConnKey, idx: u32) -> Vec<Option<u64>> {
        let mut held = Vec::new();
        if let Some(ch) = self.slot(idx) {
            ch.waiting.retain(|&(k, id)| {
                if k == key {
                    held.push(id);
                }
                k != key
            });
        }
        held
    }

    /// Unsubscribes `key` from channel `idx`. Returns whether it was
    /// subscribed.
    pub fn unsubscribe(&mut self, key: ConnKey, idx: u32) -> bool {
        let cores = self.cores;
        let Some(ch) = self.slot(idx) else {
            return false;
        };
        if !ch.subs.swap_remove(&key) {
            return false;
        }
        ch.waiting.retain(|(k, _)| *k != key);
        let last = ch.subs.is_empty();
        self.subscriptions -= 1;
        if last {
            if cores > 1 {
                self.announce(idx, false);
            }
            self.maybe_unused.push(idx);
        }
        true
    }

    /// The index of channel `name`, if this core knows it.
    pub fn lookup(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Publishes an encoded message frame on `name`: queued for this core's
    /// subscribers and pushed to every core that has subscribers. A channel
    /// this core does not know has no subscribers anywhere (remote interest
    /// creates the entry), so the message goes nowhere. Returns whether any
    /// core had subscribers.
    pub fn publish(&mut self, name: &str, frame: &Frame) -> bool {
        let Some(idx) = self.lookup(name) else {
            return false;
        };
        let Some(ch) = self.slots.get(idx as usize).and_then(Option::as_ref) else {
            return false;
        };
        let local = !ch.subs.is_empty();
        for core in ch.remote.iter() {
            self.outgoing.push((
                core,
                MeshMsg::Publish {
                    channel: ch.name.clone(),
                    frame: frame.share(),
                },
            ));
        }
        let remote = !ch.remote.is_empty();
        if local {
            self.pending.push((idx, frame.clone()));
        }
        local || remote
    }

    /// Handles a channel message from another core. Returns any message
    /// that is not about channels (broadcast frames, queries, replies).
    pub fn receive(&mut self, msg: MeshMsg) -> Option<MeshMsg> {
        match msg {
            MeshMsg::Publish { channel, frame } => {
                if let Some(idx) = self.lookup(&channel) {
                    if self.slot(idx).is_some_and(|c| !c.subs.is_empty()) {
                        self.pending.push((idx, Frame::new(frame)));
                    }
                }
            }
            MeshMsg::Interest { channel, from, on } => {
                let core = from as usize;
                if on {
                    let idx = self.get_or_create(&channel);
                    if let Some(ch) = self.slot(idx) {
                        ch.remote.insert(core);
                    }
                    self.outgoing.push((
                        core,
                        MeshMsg::InterestAck {
                            channel,
                            from: self.me as u16,
                        },
                    ));
                } else if let Some(idx) = self.lookup(&channel) {
                    if let Some(ch) = self.slot(idx) {
                        ch.remote.remove(core);
                    }
                    self.maybe_unused.push(idx);
                }
            }
            MeshMsg::InterestAck { channel, .. } => {
                if let Some(idx) = self.lookup(&channel) {
                    let mut released = Vec::new();
                    if let Some(ch) = self.slot(idx) {
                        ch.unconfirmed = ch.unconfirmed.saturating_sub(1);
                        if ch.unconfirmed == 0 {
                            released = std::mem::take(&mut ch.waiting);
                        }
                    }
                    self.acks_due.append(&mut released);
                    self.maybe_unused.push(idx);
                }
            }
            other => return Some(other),
        }
        None
    }

    /// Whether messages wait for local fan-out.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Queues every pending message to its channel's local subscribers
    /// through [`deliver`], each subscriber's bound checked before every
    /// frame. Returns the number of deliveries.
    pub fn fan_out(
        &mut self,
        pool: &mut BufPool,
        max_queue: usize,
        recipients: &mut impl Recipients,
    ) -> u64 {
        let mut deliveries = 0;
        for (idx, frame) in self.pending.drain(..) {
            let Some(ch) = self.slots.get(idx as usize).and_then(Option::as_ref) else {
                continue;
            };
            let batch = std::iter::once(&frame);
            deliveries += deliver(ch.subs.iter().copied(), batch, pool, max_queue, recipients);
        }
        deliveries
    }

    /// Frees entries nothing needs any more. Call once per pass, after
    /// fan-out.
    pub fn end_pass(&mut self) {
        while let Some(idx) = self.maybe_unused.pop() {
            let unused = self
                .slots
                .get(idx as usize)
                .and_then(Option::as_ref)
                .is_some_and(|c| c.unused() && c.waiting.is_empty());
            if unused && !self.pending.iter().any(|(i, _)| *i == idx) {
                if let Some(ch) = self.slots[idx as usize].take() {
                    self.by_name.remove(&ch.name);
                    self.free.push(idx);
                    self.live -= 1;
                }
            }
        }
    }

    /// Every channel with local subscribers, and how many.
    pub fn local_counts(&self) -> Vec<(Arc<str>, u32)> {
        self.slots
            .iter()
            .flatten()
            .filter(|c| !c.subs.is_empty())
            .map(|c| (c.name.clone(), c.subs.len() as u32))
            .collect()
    }

    /// Local subscriptions in total.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }

    /// Channel entries held (local subscribers or remote interest).
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no channel entry is held.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether a peer is known to have subscribers of `name` (tests).
    pub fn remote_interest(&self, name: &str) -> Vec<usize> {
        self.lookup(name)
            .and_then(|i| self.slots.get(i as usize).and_then(Option::as_ref))
            .map(|c| c.remote.iter().collect())
            .unwrap_or_default()
    }

    /// Number of other cores.
    pub fn peer_count(&self) -> usize {
        self.peers().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::SharedFrame;
    use crate::hub::deliver::tests::Queues;
    use crate::ws::OpCode;

    fn key(i: u32) -> ConnKey {
        ConnKey { idx: i, gen: 0 }
    }

    /// Delivers every outgoing message to its core, as the mesh would.
    fn pump(cores: &mut [Channels]) {
        loop {
            let mut moved = false;
            for c in 0..cores.len() {
                let out = std::mem::take(&mut cores[c].outgoing);
                for (dst, msg) in out {
                    moved = true;
                    assert!(cores[dst].receive(msg).is_none());
                }
            }
            if !moved {
                break;
            }
        }
    }

    #[test]
    fn core_sets() {
        let mut s = CoreSet::default();
        assert!(s.is_empty());
        s.insert(3);
        s.insert(200);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![3, 200]);
        s.remove(3);
        s.remove(200);
        assert!(s.is_empty());
    }

    #[test]
    fn single_core_acks_at_once_and_frees_on_last_unsubscribe() {
        let mut ch = Channels::new(0, 1);
        let (idx, s) = ch.subscribe(key(1), "a", Some(7));
        assert_eq!(s, Subscribed::Now { new: true });
        assert_eq!(
            ch.subscribe(key(1), "a", None).1,
            Subscribed::Now { new: false }
        );
        assert_eq!(ch.subscriptions(), 1);
        assert!(ch.outgoing.is_empty());
        assert!(ch.unsubscribe(key(1), idx));
        assert!(!ch.unsubscribe(key(1), idx));
        ch.end_pass();
        assert!(ch.is_empty());
        assert_eq!(ch.lookup("a"), None);
    }

    #[test]
    fn ack_waits_for_every_peer_and_publish_reaches_interested_cores_only() {
        let mut cores: Vec<Channels> = (0..3).map(|i| Channels::new(i, 3)).collect();
        let (_, s) = cores[1].subscribe(key(5), "news", Some(1));
        assert_eq!(s, Subscribed::Pending { new: true });
        assert_eq!(cores[1].outgoing.len(), 2, "announced to both peers");
        assert!(cores[1].acks_due.is_empty());
        pump(&mut cores);
        assert_eq!(cores[1].acks_due, vec![(key(5), Some(1))]);
        assert_eq!(cores[0].remote_interest("news"), vec![1]);
        assert_eq!(cores[2].remote_interest("news"), vec![1]);
        // A second local subscriber needs no new announcement.
        assert_eq!(
            cores[1].subscribe(key(6), "news", None).1,
            Subscribed::Now { new: true }
        );

        let f = Frame::new(SharedFrame::encode(OpCode::Text, b"m"));
        assert!(cores[0].publish("news", &f));
        assert!(!cores[0].has_pending(), "no local subscribers on core 0");
        let out = std::mem::take(&mut cores[0].outgoing);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 1, "only the interested core");
        for (dst, msg) in out {
            assert!(cores[dst].receive(msg).is_none());
        }
        let (a, b) = (key(10), key(11));
        let mut queues = Queues::default();
        queues.add(a);
        queues.add(b);
        let mut c1 = Channels::new(1, 3);
        let (_, _) = c1.subscribe(a, "x", None);
        let (_, _) = c1.subscribe(b, "x", None);
        let fx = Frame::new(SharedFrame::encode(OpCode::Text, b"x"));
        cores[1].pending.clear();
        // Fan-out shares the frame with every local subscriber.
        c1.pending.push((c1.lookup("x").unwrap(), fx.clone()));
        assert_eq!(
            c1.fan_out(&mut BufPool::default(), usize::MAX, &mut queues),
            2
        );
        assert_eq!(queues.touched.len(), 2);
        assert!(!cores[2].publish("nobody", &f));
    }

    #[test]
    fn last_unsubscribe_withdraws_interest_and_entries_are_freed() {
        let mut cores: Vec<Channels> = (0..2).map(|i| Channels::new(i, 2)).collect();
        let (idx, _) = cores[0].subscribe(key(1), "c", None);
        pump(&mut cores);
        assert_eq!(cores[1].remote_interest("c"), vec![0]);
        cores[0].unsubscribe(key(1), idx);
        pump(&mut cores);
        for c in &mut cores {
            c.end_pass();
        }
        assert!(cores[0].is_empty());
        assert!(cores[1].is_empty());
        let f = Frame::new(SharedFrame::encode(OpCode::Text, b"m"));
        assert!(!cores[1].publish("c", &f));
    }

    #[test]
    fn unsubscribe_takes_only_its_own_held_acks() {
        let mut cores: Vec<Channels> = (0..2).map(|i| Channels::new(i, 2)).collect();
        let (idx, _) = cores[0].subscribe(key(1), "c", Some(1));
        let (_, s) = cores[0].subscribe(key(2), "c", Some(5));
        assert_eq!(s, Subscribed::Pending { new: true });
        assert_eq!(cores[0].take_held_acks(key(1), idx), vec![Some(1)]);
        assert!(cores[0].unsubscribe(key(1), idx));
        pump(&mut cores);
        assert_eq!(cores[0].acks_due, vec![(key(2), Some(5))]);
    }

    #[test]
    fn resubscribe_before_confirmation_waits_for_all_confirmations() {
        let mut cores: Vec<Channels> = (0..2).map(|i| Channels::new(i, 2)).collect();
        let (idx, _) = cores[0].subscribe(key(1), "c", Some(1));
        cores[0].unsubscribe(key(1), idx);
        let (_, s) = cores[0].subscribe(key(2), "c", Some(2));
        assert_eq!(s, Subscribed::Pending { new: true });
        cores[0].end_pass();
        assert!(cores[0].lookup("c").is_some(), "kept while unconfirmed");
        pump(&mut cores);
        assert_eq!(cores[0].acks_due, vec![(key(2), Some(2))]);
        assert_eq!(cores[1].remote_interest("c"), vec![0]);
    }
}
