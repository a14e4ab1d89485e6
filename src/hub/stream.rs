//! The in-memory engine: the streams this core owns. Every channel has one
//! owner core ([`super::name::owner`]); it numbers the channel's
//! publications, keeps their history and the channel's presence, and sends
//! each publication, in offset order, to the cores that have subscribers.
//!
//! The engine's interface is messages: requests ([`MeshMsg::Sequence`],
//! `Subscribe`, `Leave`, `Withdraw`, `History`, `Presence`) in, answers and
//! publications out through [`Streams::out`] as `(core, message)` pairs —
//! this core included, whose messages the loop handles like a peer's. A
//! broker-backed engine answers the same messages.
//!
//! Memory: history is bounded per channel (`history_size`, `history_ttl`)
//! and per core (`--history-max-bytes`, entries nearest their expiry
//! evicted first); presence by the subscriptions that exist; a stream entry
//! is dropped once it has no subscriber core, no member and no history,
//! and a new epoch starts if it comes back.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::sync::Arc;

use indexmap::IndexMap;

use super::channels::CoreSet;
use super::options::{ChannelOptions, ChannelRules};
use super::wire;
use super::{
    HistoryAnswer, HistoryReq, Member, MeshMsg, Position, PresenceList, ReplyTo, SubscribeReq,
    Unsequenced,
};
use crate::conn::SharedFrame;

/// What a history entry costs besides its frame bytes: the `Arc` header
/// and the deque slot.
pub(crate) const ENTRY_OVERHEAD: usize = 64;

/// What a stream with history costs besides its entries and name (the
/// entry, its map slot, the deque): counted in the budget too, so many
/// channels of one tiny publication each cannot hold more than it.
pub(crate) const STREAM_OVERHEAD: usize = 256;

/// The engine's limits.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    /// Per-core history budget, bytes (frames plus [`ENTRY_OVERHEAD`]).
    pub history_max_bytes: usize,
    /// Most clients a presence list shows.
    pub presence_max_clients: u32,
    /// Most payload bytes one history answer carries (at least one
    /// publication): the reader's send queue bound, so one request cannot
    /// make the server build an answer of the whole budget.
    pub answer_max_bytes: usize,
}

struct Entry {
    offset: u64,
    expires_us: u64,
    /// This core's count of entries kept before this one: ties of
    /// `expires_us` (one pass reads the clock once) are broken by age.
    seq: u64,
    frame: SharedFrame,
    payload_at: u32,
}

impl Entry {
    fn cost(&self) -> usize {
        self.frame.bytes().len() + ENTRY_OVERHEAD
    }
}

struct Stream {
    name: Arc<str>,
    opts: ChannelOptions,
    position: Position,
    history: VecDeque<Entry>,
    /// Cores with subscribers (this one included).
    cores: CoreSet,
    /// Subscribed clients (channels that track presence).
    members: IndexMap<Box<str>, Option<Box<str>>>,
}

impl Stream {
    /// What holding history costs beyond the entries.
    fn overhead(&self) -> usize {
        STREAM_OVERHEAD + self.name.len()
    }

    fn unused(&self) -> bool {
        self.cores.is_empty() && self.members.is_empty() && self.history.is_empty()
    }

    /// The oldest entry's place in the eviction order.
    fn front_key(&self) -> Option<(u64, u64)> {
        self.history.front().map(|e| (e.expires_us, e.seq))
    }
}

/// What the engine did (for `/metrics`).
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamCounters {
    /// Publications numbered.
    pub sequenced: u64,
    /// History entries evicted for the byte budget.
    pub evicted: u64,
    /// History entries dropped for their age.
    pub expired: u64,
    /// Subscribes with `since` that recovered / could not.
    pub recovered: u64,
    /// See `recovered`.
    pub not_recovered: u64,
}

/// The streams one core owns.
pub struct Streams {
    me: usize,
    rules: Rc<ChannelRules>,
    limits: StreamLimits,
    by_name: HashMap<Arc<str>, u32>,
    slots: Vec<Option<Stream>>,
    free: Vec<u32>,
    /// Streams with history, by their oldest entry's expiry (then age):
    /// the TTL sweep and the budget's eviction order.
    expiry: BTreeSet<(u64, u64, u32)>,
    /// Entries kept so far (their `seq`).
    kept: u64,
    bytes: usize,
    entries: usize,
    members: usize,
    /// Epochs: a per-process random base mixed with this core and a count
    /// of streams created, so no two incarnations share one.
    nonce: u64,
    incarnations: u64,
    /// Answers and publications, `(core, message)`, for the loop to send.
    pub out: Vec<(usize, MeshMsg)>,
    /// What happened so far.
    pub counters: StreamCounters,
}

/// A per-process random number (the standard library seeds its hash maps
/// from the OS): the base of epochs and client ids, so neither repeats
/// across restarts.
pub(crate) fn process_nonce() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// A bijection on `u64` (SplitMix64's finaliser): distinct inputs give
/// distinct epochs that look random.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Streams {
    /// Core `me`'s engine.
    pub fn new(me: usize, rules: Rc<ChannelRules>, limits: StreamLimits, nonce: u64) -> Streams {
        Streams {
            me,
            rules,
            limits,
            by_name: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            expiry: BTreeSet::new(),
            kept: 0,
            bytes: 0,
            entries: 0,
            members: 0,
            nonce,
            incarnations: 0,
            out: Vec::new(),
            counters: StreamCounters::default(),
        }
    }

    /// The options of `channel`.
    pub fn options(&self, channel: &str) -> &ChannelOptions {
        self.rules.resolve(channel)
    }

    fn get_or_create(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let name: Arc<str> = Arc::from(name);
        self.incarnations += 1;
        // 0 is the epoch of a `since` the server never issued: no stream
        // has it.
        let epoch = mix(self.nonce ^ ((self.me as u64) << 48) ^ self.incarnations).max(1);
        let st = Stream {
            opts: self.rules.resolve(&name).clone(),
            name: name.clone(),
            position: Position { epoch, offset: 0 },
            history: VecDeque::new(),
            cores: CoreSet::default(),
            members: IndexMap::new(),
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(st);
                i
            }
            None => {
                self.slots.push(Some(st));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_name.insert(name, idx);
        idx
    }

    fn lookup(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    fn stream(&mut self, idx: u32) -> &mut Stream {
        self.slots[idx as usize]
            .as_mut()
            .expect("a stream index from by_name is live")
    }

    /// Drops a stream nothing needs; its epoch dies with it.
    fn drop_if_unused(&mut self, idx: u32) {
        let unused = self.slots[idx as usize]
            .as_ref()
            .is_some_and(Stream::unused);
        if unused {
            if let Some(st) = self.slots[idx as usize].take() {
                self.by_name.remove(&st.name);
                self.free.push(idx);
            }
        }
    }

    /// Re-keys stream `idx` in the expiry order after its oldest entry
    /// changed from `old`.
    fn rekey(&mut self, idx: u32, old: Option<(u64, u64)>) {
        let new = self.slots[idx as usize]
            .as_ref()
            .and_then(Stream::front_key);
        if old == new {
            return;
        }
        if let Some((t, seq)) = old {
            self.expiry.remove(&(t, seq, idx));
        }
        if let Some((t, seq)) = new {
            self.expiry.insert((t, seq, idx));
        }
    }

    /// Removes stream `idx`'s oldest entry.
    fn pop_oldest(&mut self, idx: u32) -> bool {
        let st = self.stream(idx);
        let old = st.front_key();
        let Some(e) = st.history.pop_front() else {
            return false;
        };
        let mut freed = e.cost();
        if st.history.is_empty() {
            freed += st.overhead();
            st.history = VecDeque::new();
        }
        self.bytes -= freed;
        self.entries -= 1;
        self.rekey(idx, old);
        true
    }

    /// Numbers a publication, keeps it, and sends it to every core with
    /// subscribers; answers `reply` on core `from` (a caller on this core
    /// passes [`ReplyTo::Nobody`] and uses the returned position).
    pub fn sequence(
        &mut self,
        from: usize,
        reply: ReplyTo,
        channel: &str,
        payload: &[u8],
        now_us: u64,
    ) -> Position {
        let idx = self.get_or_create(channel);
        let st = self.stream(idx);
        st.position.offset += 1;
        let position = st.position;
        let (frame, payload_at) = wire::message_frame(channel, position.offset, payload);
        let name = st.name.clone();
        let cores = st.cores;
        for core in cores.iter() {
            self.out.push((
                core,
                MeshMsg::Publish {
                    channel: name.clone(),
                    offset: position.offset,
                    frame: frame.share(),
                },
            ));
        }
        if reply != ReplyTo::Nobody {
            self.out
                .push((from, MeshMsg::Sequenced { reply, position }));
        }
        self.counters.sequenced += 1;
        self.keep(idx, position.offset, frame, payload_at, now_us);
        self.drop_if_unused(idx);
        position
    }

    /// Adds a publication to stream `idx`'s history, within its size and
    /// the core's budget.
    fn keep(&mut self, idx: u32, offset: u64, frame: SharedFrame, payload_at: u32, now_us: u64) {
        let st = self.stream(idx);
        let size = st.opts.history_size as usize;
        if size == 0 {
            return;
        }
        let expires_us = now_us.saturating_add(st.opts.history_ttl.as_micros() as u64);
        let entry = Entry {
            offset,
            expires_us,
            seq: self.kept,
            frame,
            payload_at,
        };
        let cost = entry.cost();
        self.kept += 1;
        let st = self.stream(idx);
        let was_empty = st.history.is_empty();
        let cost = if was_empty {
            cost + st.overhead()
        } else {
            cost
        };
        st.history.push_back(entry);
        self.bytes += cost;
        self.entries += 1;
        if was_empty {
            self.rekey(idx, None);
        }
        while self.stream(idx).history.len() > size {
            self.pop_oldest(idx);
        }
        while self.bytes > self.limits.history_max_bytes {
            let Some(&(_, _, victim)) = self.expiry.first() else {
                break;
            };
            self.pop_oldest(victim);
            self.counters.evicted += 1;
            if victim != idx {
                self.drop_if_unused(victim);
            }
        }
    }

    /// Drops history past its age, everywhere. Returns whether history
    /// remains (the loop sweeps again later).
    pub fn sweep(&mut self, now_us: u64) -> bool {
        while let Some(&(t, _, idx)) = self.expiry.first() {
            if t > now_us {
                break;
            }
            self.pop_oldest(idx);
            self.counters.expired += 1;
            self.drop_if_unused(idx);
        }
        !self.expiry.is_empty()
    }

    /// Drops stream `idx`'s expired entries before it is read, so a read
    /// never serves what the sweep has not reached yet.
    fn expire(&mut self, idx: u32, now_us: u64) {
        while self.slots[idx as usize]
            .as_ref()
            .and_then(Stream::front_key)
            .is_some_and(|(t, _)| t <= now_us)
        {
            self.pop_oldest(idx);
            self.counters.expired += 1;
        }
    }

    /// A subscribe that needs the owner: records the core's interest and
    /// the member, recovers what `since` asks for, and answers after every
    /// publication the subscriber's core has been sent.
    pub fn subscribe(&mut self, mut req: SubscribeReq, now_us: u64) {
        let from = req.from as usize;
        let idx = self.get_or_create(&req.channel);
        self.expire(idx, now_us);
        let max_list = self.limits.presence_max_clients as usize;
        let st = self.stream(idx);
        st.cores.insert(from);
        let name = st.name.clone();
        let mut joined = None;
        let mut added = false;
        if let Some(m) = req.member.take() {
            if st.opts.tracked() && !st.members.contains_key(&m.client) {
                added = true;
                if st.opts.join_leave {
                    joined = Some(wire::event_frame(true, &name, &m.client, m.user.as_deref()));
                }
                st.members.insert(m.client, m.user);
            }
        }
        let position = st.position;
        let (recovered, frames) = match req.since {
            None => (None, Vec::new()),
            Some(since) => match recover(st, since) {
                Some(frames) => (Some(true), frames),
                None => (Some(false), Vec::new()),
            },
        };
        let presence = req.want_presence.then(|| presence_list(st, max_list));
        if added {
            self.members += 1;
        }
        match recovered {
            Some(true) => self.counters.recovered += 1,
            Some(false) => self.counters.not_recovered += 1,
            None => {}
        }
        if let Some(frame) = joined {
            self.send_event(idx, frame);
        }
        self.out
            .push(req.reply(position, recovered, frames, presence));
    }

    fn send_event(&mut self, idx: u32, frame: SharedFrame) {
        let st = self.stream(idx);
        let name = st.name.clone();
        let cores: Vec<usize> = st.cores.iter().collect();
        for core in cores {
            self.out.push((
                core,
                MeshMsg::Event {
                    channel: name.clone(),
                    frame: frame.share(),
                },
            ));
        }
    }

    /// A member left `channel` (unsubscribed, or its connection closed).
    pub fn leave(&mut self, channel: &str, client: &str) {
        let Some(idx) = self.lookup(channel) else {
            return;
        };
        let st = self.stream(idx);
        let Some(user) = st.members.swap_remove(client) else {
            return;
        };
        let event = st
            .opts
            .join_leave
            .then(|| wire::event_frame(false, &st.name, client, user.as_deref()));
        self.members -= 1;
        if let Some(frame) = event {
            self.send_event(idx, frame);
        }
        self.drop_if_unused(idx);
    }

    /// Core `from` has no subscriber of `channel` left.
    pub fn withdraw(&mut self, channel: &str, from: usize) {
        if let Some(idx) = self.lookup(channel) {
            self.stream(idx).cores.remove(from);
            self.drop_if_unused(idx);
        }
    }

    /// Reads history for `req`.
    pub fn history(&mut self, req: &HistoryReq, now_us: u64) {
        let answer = match self.lookup(&req.channel) {
            None => HistoryAnswer::Found {
                position: Position::default(),
                publications: Vec::new(),
            },
            Some(idx) => {
                self.expire(idx, now_us);
                let max_bytes = self.limits.answer_max_bytes;
                let st = self.stream(idx);
                read_history(st, req.limit as usize, req.since, max_bytes)
            }
        };
        if let Some(idx) = self.lookup(&req.channel) {
            self.drop_if_unused(idx);
        }
        self.out.push((
            req.from as usize,
            MeshMsg::HistoryAnswer {
                reply: req.reply,
                answer: Box::new(answer),
            },
        ));
    }

    /// Answers who is subscribed to `channel`.
    pub fn presence(&mut self, from: usize, reply: ReplyTo, channel: &str) {
        let max = self.limits.presence_max_clients as usize;
        let list = match self.lookup(channel) {
            Some(idx) => presence_list(self.stream(idx), max),
            None => PresenceList::default(),
        };
        self.out.push((
            from,
            MeshMsg::PresenceAnswer {
                reply,
                list: Box::new(list),
            },
        ));
    }

    /// Handles an engine request; gives back any other message.
    pub fn receive(&mut self, msg: MeshMsg, now_us: u64) -> Option<MeshMsg> {
        match msg {
            MeshMsg::Sequence(u) => {
                let Unsequenced {
                    from,
                    reply,
                    channel,
                    payload,
                } = *u;
                let _ = self.sequence(from as usize, reply, &channel, &payload, now_us);
            }
            MeshMsg::Subscribe(req) => self.subscribe(*req, now_us),
            MeshMsg::Leave { channel, client } => self.leave(&channel, &client),
            MeshMsg::Withdraw { channel, from } => self.withdraw(&channel, from as usize),
            MeshMsg::History(req) => self.history(&req, now_us),
            MeshMsg::Presence {
                from,
                reply,
                channel,
            } => self.presence(from as usize, reply, &channel),
            other => return Some(other),
        }
        None
    }

    /// Streams held.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no stream is held.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// History bytes held (frames plus per-entry overhead).
    pub fn history_bytes(&self) -> usize {
        self.bytes
    }

    /// History entries held.
    pub fn history_entries(&self) -> usize {
        self.entries
    }

    /// Presence members held.
    pub fn members(&self) -> usize {
        self.members
    }

    /// When the oldest history entry expires (the loop's next sweep).
    pub fn next_expiry_us(&self) -> Option<u64> {
        self.expiry.first().map(|&(t, ..)| t)
    }
}

/// The frames after `since`, if the stream still holds all of them.
fn recover(st: &Stream, since: Position) -> Option<Vec<SharedFrame>> {
    let top = st.position.offset;
    if since.epoch != st.position.epoch || since.offset > top {
        return None;
    }
    if since.offset == top {
        return Some(Vec::new());
    }
    let first = st.history.front()?.offset;
    if since.offset + 1 < first {
        return None;
    }
    let skip = (since.offset + 1 - first) as usize;
    Some(
        st.history
            .iter()
            .skip(skip)
            .map(|e| e.frame.share())
            .collect(),
    )
}

/// Up to `limit` publications: the newest (without `since`) or the first
/// after `since`, oldest first either way, and no more payload bytes than
/// `max_bytes` (at least one publication, so paging with `since` always
/// moves on).
fn read_history(
    st: &Stream,
    limit: usize,
    since: Option<Position>,
    max_bytes: usize,
) -> HistoryAnswer {
    let position = st.position;
    let mut budget = max_bytes;
    let mut fits = |e: &&Entry| {
        let len = e.frame.bytes().len() - e.payload_at as usize - 1;
        if len > budget && budget < max_bytes {
            return false;
        }
        budget = budget.saturating_sub(len);
        true
    };
    let take = |e: &Entry| (e.offset, e.frame.share(), e.payload_at);
    let publications = match since {
        Some(s) if s.epoch != position.epoch => {
            return HistoryAnswer::EpochMismatch {
                current: position.epoch,
            }
        }
        Some(s) => st
            .history
            .iter()
            .filter(|e| e.offset > s.offset)
            .take(limit)
            .take_while(&mut fits)
            .map(take)
            .collect(),
        None => {
            let mut newest: Vec<_> = st
                .history
                .iter()
                .rev()
                .take(limit)
                .take_while(&mut fits)
                .map(take)
                .collect();
            newest.reverse();
            newest
        }
    };
    HistoryAnswer::Found {
        position,
        publications,
    }
}

fn presence_list(st: &Stream, max: usize) -> PresenceList {
    PresenceList {
        count: st.members.len() as u64,
        clients: st
            .members
            .iter()
            .take(max)
            .map(|(c, u)| Member {
                client: c.clone(),
                user: u.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::conn::ConnKey;
    use crate::hub::options::ChannelRule;

    fn engine(budget: usize) -> Streams {
        let rules = ChannelRules {
            rules: vec![ChannelRule {
                pattern: "room:*".into(),
                options: ChannelOptions {
                    history_size: 5,
                    history_ttl: Duration::from_secs(10),
                    presence: true,
                    join_leave: true,
                    allow_publish: true,
                },
            }],
            default: ChannelOptions::default(),
        };
        let limits = StreamLimits {
            history_max_bytes: budget,
            presence_max_clients: 2,
            answer_max_bytes: 1000,
        };
        Streams::new(0, Rc::new(rules), limits, 42)
    }

    fn take(s: &mut Streams) -> Vec<(usize, MeshMsg)> {
        std::mem::take(&mut s.out)
    }

    fn sub(
        core: u16,
        channel: &str,
        since: Option<Position>,
        member: Option<&str>,
    ) -> SubscribeReq {
        SubscribeReq {
            from: core,
            channel: Arc::from(channel),
            key: ConnKey { idx: 1, gen: 0 },
            id: Some(1),
            since,
            member: member.map(|c| Member {
                client: c.into(),
                user: None,
            }),
            want_presence: true,
        }
    }

    fn reply(msgs: Vec<(usize, MeshMsg)>) -> Box<crate::hub::SubscribeReply> {
        msgs.into_iter()
            .find_map(|(_, m)| match m {
                MeshMsg::Subscribed(r) => Some(r),
                _ => None,
            })
            .expect("a subscribe reply")
    }

    #[test]
    fn offsets_are_consecutive_and_publications_reach_interested_cores_in_order() {
        let mut s = engine(1 << 20);
        s.subscribe(sub(1, "news", None, None), 0);
        let r = reply(take(&mut s));
        assert_eq!(r.position.offset, 0);
        for i in 0..3 {
            let reply = ReplyTo::Ws {
                key: ConnKey { idx: 9, gen: 0 },
                id: Some(i),
            };
            s.sequence(0, reply, "news", b"1", 0);
        }
        let out = take(&mut s);
        let offsets: Vec<(usize, u64)> = out
            .iter()
            .filter_map(|(c, m)| match m {
                MeshMsg::Publish { offset, .. } => Some((*c, *offset)),
                _ => None,
            })
            .collect();
        assert_eq!(offsets, vec![(1, 1), (1, 2), (1, 3)]);
        let acks = out
            .iter()
            .filter(|(c, m)| *c == 0 && matches!(m, MeshMsg::Sequenced { .. }))
            .count();
        assert_eq!(acks, 3);
    }

    #[test]
    fn recovery_within_history_and_not_past_it_or_across_epochs() {
        let mut s = engine(1 << 20);
        s.subscribe(sub(0, "room:a", None, None), 0);
        let epoch = reply(take(&mut s)).position.epoch;
        for _ in 0..8 {
            s.sequence(0, ReplyTo::Nobody, "room:a", b"0", 0);
        }
        take(&mut s);
        // History keeps 5 (offsets 4..=8).
        let r = reply({
            s.subscribe(
                sub(1, "room:a", Some(Position { epoch, offset: 3 }), None),
                0,
            );
            take(&mut s)
        });
        assert_eq!((r.recovered, r.frames.len()), (Some(true), 5));
        let r = reply({
            s.subscribe(
                sub(1, "room:a", Some(Position { epoch, offset: 2 }), None),
                0,
            );
            take(&mut s)
        });
        assert_eq!(r.recovered, Some(false));
        let r = reply({
            s.subscribe(
                sub(
                    1,
                    "room:a",
                    Some(Position {
                        epoch: epoch ^ 1,
                        offset: 8,
                    }),
                    None,
                ),
                0,
            );
            take(&mut s)
        });
        assert_eq!(r.recovered, Some(false));
        let r = reply({
            s.subscribe(
                sub(1, "room:a", Some(Position { epoch, offset: 8 }), None),
                0,
            );
            take(&mut s)
        });
        assert_eq!((r.recovered, r.frames.len()), (Some(true), 0));
        // Past the TTL nothing is recoverable, and the sweep frees it.
        let r = reply({
            s.subscribe(
                sub(1, "room:a", Some(Position { epoch, offset: 7 }), None),
                11_000_000,
            );
            take(&mut s)
        });
        assert_eq!(r.recovered, Some(false));
        assert_eq!(s.history_entries(), 0);
    }

    #[test]
    fn the_budget_evicts_oldest_first_and_holds() {
        let mut s = engine(10 * (ENTRY_OVERHEAD + 100) + 3 * (STREAM_OVERHEAD + 1));
        for ch in ["a", "b", "c"] {
            for _ in 0..5 {
                s.sequence(0, ReplyTo::Nobody, ch, &[b'1'; 40], 0);
            }
        }
        assert!(s.history_bytes() <= 10 * (ENTRY_OVERHEAD + 100) + 3 * (STREAM_OVERHEAD + 1));
        assert!(s.counters.evicted > 0);
        // The first channel lost its oldest entries first.
        let a = s.lookup("a");
        let a_len = a.map_or(0, |i| s.stream(i).history.len());
        let c_len = s.lookup("c").map_or(0, |i| s.stream(i).history.len());
        assert!(a_len < c_len, "a {a_len} c {c_len}");
        // An unused stream with no history left is gone.
        for _ in 0..200 {
            s.sequence(0, ReplyTo::Nobody, "d", &[b'1'; 40], 0);
        }
        assert_eq!(s.lookup("a"), None);
    }

    #[test]
    fn equal_expiry_times_evict_by_age_so_a_new_stream_keeps_its_entry() {
        // Every publication in one pass has the same time.
        let mut s = engine(4 * (ENTRY_OVERHEAD + 100) + 2 * (STREAM_OVERHEAD + 7));
        for i in 0..20 {
            let ch = format!("fill.{i}");
            let p = s.sequence(0, ReplyTo::Nobody, &ch, &[b'1'; 40], 0);
            assert_eq!(p.offset, 1);
            let p = s.sequence(0, ReplyTo::Nobody, &ch, &[b'1'; 40], 0);
            assert_eq!(p.offset, 2, "{ch}: the stream survived its own publication");
        }
        let last = s.lookup("fill.19").expect("the newest stream is kept");
        assert_eq!(s.stream(last).history.len(), 2);
        assert_eq!(s.lookup("fill.0"), None, "the oldest went first");
    }

    #[test]
    fn a_history_answer_is_bounded_in_bytes_and_always_moves_on() {
        let mut s = engine(1 << 20);
        s.subscribe(sub(0, "room:h", None, None), 0);
        let epoch = reply(take(&mut s)).position.epoch;
        for _ in 0..5 {
            s.sequence(0, ReplyTo::Nobody, "room:h", &[b'7'; 400], 0);
        }
        let read = |s: &mut Streams, since: Option<Position>| {
            let req = HistoryReq {
                from: 0,
                reply: ReplyTo::Nobody,
                channel: "room:h".into(),
                limit: 100,
                since,
            };
            s.history(&req, 0);
            match take(s).pop() {
                Some((_, MeshMsg::HistoryAnswer { answer, .. })) => match *answer {
                    HistoryAnswer::Found { publications, .. } => {
                        publications.iter().map(|p| p.0).collect::<Vec<_>>()
                    }
                    HistoryAnswer::EpochMismatch { .. } => panic!("epoch"),
                },
                _ => panic!("no answer"),
            }
        };
        // 1000 bytes hold two 400-byte payloads: the newest two, in order.
        assert_eq!(read(&mut s, None), vec![4, 5]);
        assert_eq!(
            read(&mut s, Some(Position { epoch, offset: 0 })),
            vec![1, 2]
        );
        let big = engine(1 << 20);
        let mut big = big;
        big.sequence(0, ReplyTo::Nobody, "room:h", &[b'7'; 5000], 0);
        assert_eq!(read(&mut big, None), vec![1], "one over the cap still goes");
    }

    #[test]
    fn presence_join_and_leave_go_to_subscriber_cores() {
        let mut s = engine(1 << 20);
        s.subscribe(sub(1, "room:x", None, Some("c1")), 0);
        let r = reply(take(&mut s));
        assert_eq!(r.presence.as_ref().map(|p| p.count), Some(1));
        s.subscribe(sub(0, "room:x", None, Some("c2")), 0);
        let out = take(&mut s);
        let events: Vec<usize> = out
            .iter()
            .filter_map(|(c, m)| matches!(m, MeshMsg::Event { .. }).then_some(*c))
            .collect();
        assert_eq!(events, vec![0, 1], "the join goes to both cores");
        s.subscribe(sub(0, "room:x", None, Some("c3")), 0);
        let r = reply(take(&mut s));
        let p = r.presence.expect("asked");
        assert_eq!(
            (p.count, p.clients.len()),
            (3, 2),
            "count exact, list capped"
        );
        s.leave("room:x", "c1");
        assert_eq!(s.members(), 2);
        s.leave("room:x", "c1");
        assert_eq!(s.members(), 2, "a second leave is a no-op");
    }
}
