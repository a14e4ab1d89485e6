//! Named channels, subscriber side: each core's map from a channel to its
//! local subscribers, and where this core's copy of each stream stands.
//!
//! Publications come from the channel's owner core ([`super::stream`]), in
//! offset order, one `Arc` handle per core, and are queued by reference to
//! every local subscriber. The owner learns that this core has subscribers
//! from the first subscribe (sent to it), and that it has none from a
//! `Withdraw` when the last one leaves. A later subscribe on a core that
//! already receives the channel is answered here, from the offset this core
//! delivered last: everything after it is still to come, so nothing is
//! missed or repeated. A subscribe the owner must see (the first, one that
//! recovers or wants presence, any on a channel tracking presence) waits in
//! `joining` until the owner's answer, which arrives after every
//! publication it covers.
//!
//! Nothing here is shared: the registry belongs to its core's loop. Channel
//! entries exist while a local subscriber or a pending subscribe needs
//! them, so memory is bounded by connections × `--max-subscriptions`.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexSet;

use std::collections::VecDeque;

use super::deliver::{deliver, Recipients};
use super::{name, MeshMsg, Position, SubscribeReq, MAX_CORES};
use crate::conn::{BufPool, ConnKey, Frame};
use crate::ws::deflate::Deflater;

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
    owner: usize,
    /// The channel tracks presence: every subscribe and leave goes to the
    /// owner.
    tracked: bool,
    /// Local subscribers: dense for the fan-out walk, O(1) removal.
    subs: IndexSet<ConnKey>,
    /// The subscribers that asked for join/leave events.
    events: IndexSet<ConnKey>,
    /// The stream as this core has delivered it (valid while `subs` is
    /// not empty).
    position: Position,
    /// Subscribes waiting for the owner's answer, in the order sent (the
    /// owner answers in that order).
    joining: VecDeque<Joining>,
}

impl Channel {
    fn unused(&self) -> bool {
        self.subs.is_empty() && self.joining.is_empty()
    }
}

/// A subscribe waiting for its owner's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Joining {
    /// The connection.
    pub key: ConnKey,
    /// It asked for join/leave events.
    pub join_leave: bool,
    /// Unsubscribed (or closed) meanwhile: answer, but do not add.
    pub cancelled: bool,
    /// The id of the unsubscribe that cancelled it, acknowledged after the
    /// subscribe's own ack.
    pub unsub_ack: Option<Option<u64>>,
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
    /// Frames for this pass's local fan-out, in order: `(channel, frame,
    /// event)` (events go to the subscribers that asked for them).
    pending: Vec<(u32, Frame, bool)>,
    /// Messages for owners, `(core, message)` (this core included), sent
    /// by the loop ([`Channels::send`], [`Channels::take_outgoing`]).
    outgoing: Vec<(usize, MeshMsg)>,
    /// Whether `outgoing` holds a message for this core: a request a
    /// connection made before a publication it numbers here, which must
    /// not overtake it.
    queued_for_me: bool,
    subscriptions: usize,
    live: usize,
    /// The broker engine's mesh index, when it owns every channel.
    broker: Option<usize>,
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
            queued_for_me: false,
            subscriptions: 0,
            live: 0,
            broker: None,
        }
    }

    /// This core's id.
    pub fn me(&self) -> usize {
        self.me
    }

    /// Queues `msg` for core (or broker) `core`; the loop sends it.
    pub fn send(&mut self, core: usize, msg: MeshMsg) {
        self.queued_for_me |= core == self.me;
        self.outgoing.push((core, msg));
    }

    /// Messages queued since the last call, in order. Hand the emptied
    /// vector back with [`Channels::give_back`] to keep its capacity.
    pub fn take_outgoing(&mut self) -> Vec<(usize, MeshMsg)> {
        self.queued_for_me = false;
        std::mem::take(&mut self.outgoing)
    }

    /// Returns the (drained) vector [`Channels::take_outgoing`] took.
    pub fn give_back(&mut self, mut out: Vec<(usize, MeshMsg)>) {
        out.clear();
        if self.outgoing.is_empty() {
            self.outgoing = out;
        }
    }

    /// Messages queued for owners and not yet sent.
    pub fn outgoing_len(&self) -> usize {
        self.outgoing.len()
    }

    /// Whether a message for this very core waits in the queue: a local
    /// shortcut taken now (numbering a publication here) would overtake
    /// it, so the caller queues behind it instead.
    pub fn queued_for_me(&self) -> bool {
        self.queued_for_me
    }

    /// The owner core of `channel`, or the broker's mesh index when a
    /// broker engine owns every channel.
    pub fn owner_of(&self, channel: &str) -> usize {
        match self.broker {
            Some(b) => b,
            None => name::owner(channel, self.cores),
        }
    }

    /// Hands every channel to the broker engine at mesh index `index`.
    pub fn use_broker(&mut self, index: usize) {
        self.broker = Some(index);
    }

    /// The broker engine lost publications of `channel` its subscribers
    /// cannot recover: each gets the `reset` frame, and delivery goes on
    /// from `position`.
    pub fn reset(&mut self, channel: &str, position: Position, frame: Frame) {
        let Some(idx) = self.lookup(channel) else {
            return;
        };
        if let Some(ch) = self.slot(idx) {
            if !ch.subs.is_empty() {
                ch.position = position;
                self.pending.push((idx, frame, false));
            }
        }
    }

    fn slot(&mut self, idx: u32) -> Option<&mut Channel> {
        self.slots.get_mut(idx as usize).and_then(Option::as_mut)
    }

    fn get(&self, idx: u32) -> Option<&Channel> {
        self.slots.get(idx as usize).and_then(Option::as_ref)
    }

    /// The entry of `name` (already validated), created if need be;
    /// `tracked`: the channel's options keep presence.
    pub fn entry(&mut self, name: &str, tracked: bool) -> u32 {
        if let Some(&idx) = self.by_name.get(name) {
            return idx;
        }
        let name: Arc<str> = Arc::from(name);
        let ch = Channel {
            owner: self.owner_of(&name),
            name: name.clone(),
            tracked,
            subs: IndexSet::new(),
            events: IndexSet::new(),
            position: Position::default(),
            joining: VecDeque::new(),
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
        self.maybe_unused.push(idx);
        idx
    }

    /// The channel's name handle.
    pub fn name(&self, idx: u32) -> Option<Arc<str>> {
        self.get(idx).map(|c| c.name.clone())
    }

    /// Whether the channel tracks presence.
    pub fn tracked(&self, idx: u32) -> bool {
        self.get(idx).is_some_and(|c| c.tracked)
    }

    /// Whether `key` receives channel `idx` now.
    pub fn is_subscribed(&self, idx: u32, key: ConnKey) -> bool {
        self.get(idx).is_some_and(|c| c.subs.contains(&key))
    }

    /// Where this core's copy of the stream stands, if it receives it
    /// (some local subscriber does).
    pub fn live_position(&self, idx: u32) -> Option<Position> {
        self.get(idx)
            .filter(|c| !c.subs.is_empty())
            .map(|c| c.position)
    }

    /// Adds `key` to the channel's receivers (the core receives it).
    /// Returns whether it is new.
    pub fn add(&mut self, idx: u32, key: ConnKey, events: bool) -> bool {
        let Some(ch) = self.slot(idx) else {
            return false;
        };
        let new = ch.subs.insert(key);
        if events {
            ch.events.insert(key);
        }
        if new {
            self.subscriptions += 1;
        }
        new
    }

    /// Sends a subscribe to the channel's owner; the connection waits in
    /// `joining` for the answer.
    pub fn request(&mut self, idx: u32, req: SubscribeReq, join_leave: bool) {
        let key = req.key;
        let Some(ch) = self.slot(idx) else {
            return;
        };
        ch.joining.push_back(Joining {
            key,
            join_leave,
            cancelled: false,
            unsub_ack: None,
        });
        let owner = ch.owner;
        self.send(owner, MeshMsg::Subscribe(Box::new(req)));
    }

    /// Whether `key` has a subscribe waiting on channel `idx`.
    pub fn is_joining(&self, idx: u32, key: ConnKey) -> bool {
        self.get(idx)
            .is_some_and(|c| c.joining.iter().any(|j| j.key == key && !j.cancelled))
    }

    /// The owner answered the oldest subscribe waiting on `channel`:
    /// records the stream's position and gives back who asked. The caller
    /// adds it ([`Channels::add`]) unless it was cancelled, and then calls
    /// [`Channels::settle`].
    pub fn answered(
        &mut self,
        channel: &str,
        key: ConnKey,
        position: Position,
    ) -> Option<(u32, Joining)> {
        let idx = self.lookup(channel)?;
        let ch = self.slot(idx)?;
        let at = ch.joining.iter().position(|j| j.key == key)?;
        let j = ch.joining.remove(at)?;
        ch.position = position;
        Some((idx, j))
    }

    /// Cancels `key`'s waiting subscribes on channel `idx` (it unsubscribed
    /// or closed); an unsubscribe's ack is owed after the last of them.
    /// Returns whether there was one.
    pub fn cancel(&mut self, idx: u32, key: ConnKey, unsub_ack: Option<Option<u64>>) -> bool {
        let Some(ch) = self.slot(idx) else {
            return false;
        };
        let mut last = None;
        for (i, j) in ch.joining.iter_mut().enumerate() {
            if j.key == key && !j.cancelled {
                j.cancelled = true;
                last = Some(i);
            }
        }
        if let (Some(i), Some(ack)) = (last, unsub_ack) {
            ch.joining[i].unsub_ack = Some(ack);
        }
        last.is_some()
    }

    /// Tells the owner a member left (channels that track presence).
    pub fn leave(&mut self, idx: u32, client: Box<str>) {
        if let Some(ch) = self.get(idx) {
            let msg = MeshMsg::Leave {
                channel: ch.name.clone(),
                client,
            };
            self.send(ch.owner, msg);
        }
    }

    /// Removes `key` from channel `idx`'s receivers. Returns whether it was
    /// one.
    pub fn remove(&mut self, idx: u32, key: ConnKey) -> bool {
        let Some(ch) = self.slot(idx) else {
            return false;
        };
        if !ch.subs.swap_remove(&key) {
            return false;
        }
        ch.events.swap_remove(&key);
        self.subscriptions -= 1;
        self.settle(idx);
        true
    }

    /// After a removal or an answer: a channel this core no longer needs
    /// is withdrawn from its owner and freed at the end of the pass.
    pub fn settle(&mut self, idx: u32) {
        let me = self.me as u16;
        let Some(ch) = self.get(idx) else {
            return;
        };
        if ch.unused() {
            let msg = MeshMsg::Withdraw {
                channel: ch.name.clone(),
                from: me,
            };
            self.send(ch.owner, msg);
            self.maybe_unused.push(idx);
        }
    }

    /// The index of channel `name`, if this core knows it.
    pub fn lookup(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// A publication from the owner: queued for this core's subscribers.
    pub fn deliver(&mut self, channel: &str, offset: u64, frame: Frame) {
        let Some(idx) = self.lookup(channel) else {
            return;
        };
        if let Some(ch) = self.slot(idx) {
            if !ch.subs.is_empty() {
                ch.position.offset = offset;
                self.pending.push((idx, frame, false));
            }
        }
    }

    /// A join/leave event from the owner.
    pub fn event(&mut self, channel: &str, frame: Frame) {
        let Some(idx) = self.lookup(channel) else {
            return;
        };
        if self.get(idx).is_some_and(|c| !c.events.is_empty()) {
            self.pending.push((idx, frame, true));
        }
    }

    /// Whether messages wait for local fan-out.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Queues every pending frame to its channel's local subscribers
    /// through [`deliver`], each subscriber's bound checked before every
    /// frame. Returns the number of deliveries.
    pub fn fan_out(
        &mut self,
        pool: &mut BufPool,
        deflater: &mut Deflater,
        max_queue: usize,
        recipients: &mut impl Recipients,
    ) -> u64 {
        let mut deliveries = 0;
        for (idx, frame, event) in self.pending.drain(..) {
            let Some(ch) = self.slots.get(idx as usize).and_then(Option::as_ref) else {
                continue;
            };
            let to = if event { &ch.events } else { &ch.subs };
            let batch = std::iter::once(&frame);
            deliveries += deliver(
                to.iter().copied(),
                batch,
                pool,
                deflater,
                max_queue,
                recipients,
            );
        }
        deliveries
    }

    /// Frees entries nothing needs any more. Call once per pass, after
    /// fan-out.
    pub fn end_pass(&mut self) {
        while let Some(idx) = self.maybe_unused.pop() {
            let unused = self.get(idx).is_some_and(Channel::unused);
            if unused && !self.pending.iter().any(|(i, ..)| *i == idx) {
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

    /// Channel entries held (local subscribers or pending subscribes).
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no channel entry is held.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Number of other cores.
    pub fn peer_count(&self) -> usize {
        self.cores - 1
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

    fn req(channel: &Arc<str>, k: ConnKey) -> SubscribeReq {
        SubscribeReq {
            from: 1,
            channel: channel.clone(),
            key: k,
            id: None,
            since: None,
            member: None,
            want_presence: false,
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
    fn a_subscribe_waits_for_its_owner_then_receives_in_order() {
        let mut ch = Channels::new(1, 2);
        let idx = ch.entry("news", false);
        let name = ch.name(idx).unwrap();
        ch.request(idx, req(&name, key(5)), false);
        let owner = ch.owner_of("news");
        let out = ch.take_outgoing();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, owner);
        // A publication before the answer reaches nobody here.
        let f = Frame::new(SharedFrame::encode(OpCode::Text, b"m"));
        ch.deliver("news", 1, f.clone());
        assert!(!ch.has_pending());
        let pos = Position {
            epoch: 7,
            offset: 1,
        };
        let (i, j) = ch.answered("news", key(5), pos).unwrap();
        assert!(!j.cancelled);
        assert!(ch.add(i, key(5), false));
        assert_eq!(ch.live_position(idx), Some(pos));
        ch.deliver("news", 2, f.clone());
        assert_eq!(ch.live_position(idx).unwrap().offset, 2);
        let mut queues = Queues::default();
        queues.add(key(5));
        assert_eq!(
            ch.fan_out(
                &mut BufPool::default(),
                &mut Deflater::new(6, 64),
                usize::MAX,
                &mut queues
            ),
            1
        );
    }

    #[test]
    fn the_last_subscriber_leaving_withdraws_and_frees() {
        let mut ch = Channels::new(0, 2);
        let idx = ch.entry("c", false);
        ch.add(idx, key(1), false);
        ch.take_outgoing();
        assert!(ch.remove(idx, key(1)));
        assert!(!ch.remove(idx, key(1)));
        assert!(matches!(
            ch.take_outgoing()[..],
            [(_, MeshMsg::Withdraw { .. })]
        ));
        ch.end_pass();
        assert!(ch.is_empty());
        assert_eq!(ch.lookup("c"), None);
    }

    #[test]
    fn a_cancelled_subscribe_keeps_the_entry_until_answered() {
        let mut ch = Channels::new(0, 2);
        let idx = ch.entry("c", false);
        let name = ch.name(idx).unwrap();
        ch.request(idx, req(&name, key(1)), false);
        assert!(ch.cancel(idx, key(1), Some(Some(9))));
        ch.end_pass();
        assert!(ch.lookup("c").is_some(), "kept while answered is owed");
        let (i, j) = ch.answered("c", key(1), Position::default()).unwrap();
        assert!(j.cancelled);
        assert_eq!(j.unsub_ack, Some(Some(9)));
        ch.settle(i);
        ch.end_pass();
        assert!(ch.is_empty());
    }

    #[test]
    fn events_go_only_to_those_who_asked() {
        let mut ch = Channels::new(0, 1);
        let idx = ch.entry("r", true);
        ch.add(idx, key(1), true);
        ch.add(idx, key(2), false);
        ch.event("r", Frame::new(SharedFrame::encode(OpCode::Text, b"j")));
        let mut queues = Queues::default();
        queues.add(key(1));
        queues.add(key(2));
        ch.fan_out(
            &mut BufPool::default(),
            &mut Deflater::new(6, 64),
            usize::MAX,
            &mut queues,
        );
        assert_eq!(queues.touched, vec![(key(1), false)]);
    }
}
