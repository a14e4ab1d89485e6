//! The Redis engine's state: per channel, what this node has delivered and
//! who on it is interested; per command connection, the replies it waits
//! for. It answers the same [`MeshMsg`] requests as the in-memory engine
//! and upholds the same contract: a core receives a channel's publications
//! in offset order, and a `Subscribed` answer after exactly the
//! publications up to its position.
//!
//! One order per channel comes from Redis: the publish script numbers,
//! keeps and publishes atomically, and the subscriber connection sees the
//! channel's messages in that order. This node keeps, per channel, the
//! position it has delivered up to. A message that is not the next offset
//! (a blip dropped some, or the stream restarted with a new epoch) stops
//! the channel: live messages are held while the stream is read from the
//! last delivered offset, and delivery resumes from there in order, with
//! nothing twice — or, if the stream no longer has them, the subscribers
//! get a `reset` and the channel goes on from the stream's new position.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use tracing::warn;

use super::link::Link;
use super::metrics::BrokerMetrics;
use super::resp::{self, Reply};
use super::scripts;
use super::topology::Topology;
use crate::conn::SharedFrame;
use crate::hub::channels::CoreSet;
use crate::hub::options::{ChannelOptions, ChannelRules};
use crate::hub::stream::StreamLimits;
use crate::hub::wire;
use crate::hub::{
    HistoryAnswer, HistoryReq, Member, MeshMsg, Position, PresenceList, ReplyTo, SubscribeReq,
    Unsequenced,
};

/// Live messages one channel holds while its stream is read; past it they
/// are dropped and the next message's gap makes the channel read again.
const HELD_MAX: usize = 100_000;
/// Channels per `SUBSCRIBE`/`UNSUBSCRIBE` command.
const BATCH_MAX: usize = 1000;
/// How long a presence entry lives in Redis unless its node refreshes it:
/// a node that dies takes its clients out of presence within this.
pub(crate) const PRESENCE_TTL: Duration = Duration::from_secs(30);
/// How often a node refreshes its clients' presence entries.
pub(crate) const PRESENCE_REFRESH: Duration = Duration::from_secs(10);
/// Clients per presence refresh command.
const REFRESH_BATCH: usize = 500;

/// Settings of the engine.
#[derive(Clone, Debug)]
pub(crate) struct EngineConfig {
    /// How long a channel stays subscribed in Redis after its last local
    /// subscriber left (absorbs churn).
    pub(crate) unsubscribe_delay: Duration,
    /// How long a channel's epoch and offset outlive its last publication.
    pub(crate) meta_ttl: Duration,
    /// Presence and answer limits (as the in-memory engine's).
    pub(crate) limits: StreamLimits,
}

/// What the command connection's next reply answers.
enum Op {
    /// AUTH, SELECT, SCRIPT LOAD: an error means this connection is unusable.
    Setup(&'static str),
    /// The liveness probe.
    Ping,
    /// A publication, to be acked or refused.
    Publish {
        from: u16,
        reply: ReplyTo,
        sent: Instant,
    },
    /// The read that (re)starts a channel's delivery.
    Sync(Arc<str>),
    /// A subscribe with `since` on a live channel.
    Recover(Box<SubscribeReq>),
    /// A history request.
    History(Box<HistoryReq>),
    /// A presence write (join, leave, refresh): only errors matter.
    PresenceWrite,
    /// A presence request.
    Presence { from: u16, reply: ReplyTo },
    /// The presence list a subscribe's ack carries, read before the
    /// subscribe goes on.
    PresenceForAck(Box<SubscribeReq>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `SUBSCRIBE` sent (or to be sent once the subscriber connection is
    /// up), not yet confirmed.
    Subscribing,
    /// Confirmed; the read that positions the channel is under way (or
    /// waits for the command connection). Live messages are held.
    Syncing { read_sent: bool },
    /// Delivering.
    Live,
}

/// A subscribe answer that waits until this node has delivered up to its
/// position.
struct Deferred {
    at: u64,
    req: Box<SubscribeReq>,
    frames: Vec<SharedFrame>,
}

struct Chan {
    name: Arc<str>,
    opts: ChannelOptions,
    cores: CoreSet,
    phase: Phase,
    /// What this node has delivered (None until the first sync).
    position: Option<Position>,
    /// Live messages received while not live: epoch, offset, payload.
    held: Vec<(u64, u64, Box<[u8]>)>,
    /// Subscribes waiting for the channel to be live.
    #[allow(clippy::vec_box)] // moved on as the boxes the mesh carries
    waiting: Vec<Box<SubscribeReq>>,
    /// Recovery reads under way; while any is, delivered frames are kept.
    recovering: u32,
    kept: VecDeque<(u64, SharedFrame)>,
    deferred: Vec<Deferred>,
    /// This node's subscribed clients (channels that track presence).
    members: IndexMap<Box<str>, Option<Box<str>>>,
    /// When an unused channel is unsubscribed.
    idle_since: Option<Instant>,
    /// The Redis node that holds it.
    node: usize,
}

impl Chan {
    fn unused(&self) -> bool {
        self.cores.is_empty()
            && self.waiting.is_empty()
            && self.deferred.is_empty()
            && self.recovering == 0
            && self.members.is_empty()
    }
}

/// The engine: channels, pending replies, connections.
pub(crate) struct Engine {
    cfg: EngineConfig,
    rules: ChannelRules,
    metrics: Arc<BrokerMetrics>,
    nonce: u64,
    epochs: u64,
    chans: HashMap<Arc<str>, Chan>,
    /// The Redis nodes (one, or a cluster's masters) and their
    /// connections.
    pub(crate) nodes: Vec<Node>,
    topology: Topology,
    /// Redis Cluster: sharded pub/sub (`SSUBSCRIBE`, `SPUBLISH`).
    sharded: bool,
    /// A reply said a slot moved: the thread rereads the topology.
    pub(crate) stale: bool,
    /// Channels that went idle, with when (oldest first): the unsubscribe
    /// queue.
    idle: VecDeque<(Instant, Arc<str>)>,
    /// Subscribes with `since` whose read was lost with the command
    /// connection: sent again when it is back.
    #[allow(clippy::vec_box)]
    retry: Vec<Box<SubscribeReq>>,
    publish_sha: String,
    read_sha: String,
    /// Presence scripts: add, remove, refresh, read.
    presence: [(String, String); 4],
    /// Presence lists read for subscribe acks, by connection and channel.
    ack_presence: HashMap<(crate::conn::ConnKey, Arc<str>), PresenceList>,
    /// Answers and publications for the cores.
    pub(crate) out: Vec<(usize, MeshMsg)>,
}

/// One Redis node's connections: a command connection with the replies
/// it owes, in order, and a subscriber connection.
pub(crate) struct Node {
    /// `HOST:PORT`.
    pub(crate) addr: String,
    pub(crate) cmd: Option<Link>,
    pending: VecDeque<Op>,
    /// Setup replies (AUTH, SELECT, SCRIPT LOAD) still owed: the command
    /// connection counts as up once Redis has answered them all.
    setup_left: u32,
    pub(crate) sub: Option<Link>,
    /// The subscriber connection has answered something (its first probe
    /// at least): a socket that connects but never answers is not up.
    sub_answered: bool,
    /// A probe sent on the subscriber connection not answered yet.
    pub(crate) sub_probe: Option<Instant>,
    /// Channels to subscribe / unsubscribe at the end of this pass.
    to_subscribe: Vec<Arc<str>>,
    to_unsubscribe: Vec<Arc<str>>,
}

impl Node {
    fn new(addr: String) -> Node {
        Node {
            addr,
            cmd: None,
            pending: VecDeque::new(),
            setup_left: 0,
            sub: None,
            sub_answered: false,
            sub_probe: None,
            to_subscribe: Vec::new(),
            to_unsubscribe: Vec::new(),
        }
    }
}

fn ms(d: Duration) -> Vec<u8> {
    resp::itoa(d.as_millis().max(1) as u64).as_bytes().to_vec()
}

/// A read script's reply: epoch, top offset, entries (offset, payload).
type Read<'a> = (u64, u64, Vec<(u64, &'a [u8])>);

/// `{epoch, top, entries}` of a read script's reply.
fn parse_read(r: &Reply) -> Option<Read<'_>> {
    let a = r.array()?;
    let epoch = a.first()?.u64()?;
    let top = a.get(1)?.u64()?;
    let mut entries = Vec::new();
    for e in a.get(2)?.array()? {
        let e = e.array()?;
        entries.push((
            scripts::entry_offset(e.first()?.bytes()?)?,
            e.get(1)?.bytes()?,
        ));
    }
    Some((epoch, top, entries))
}

/// `{count, {client, user, ...}}` of the presence read script.
fn parse_presence(r: &Reply) -> Option<PresenceList> {
    let a = r.array()?;
    let count = a.first()?.u64()?;
    let flat = a.get(1)?.array()?;
    let clients = flat
        .chunks(2)
        .filter_map(|pair| {
            let client = std::str::from_utf8(pair.first()?.bytes()?).ok()?;
            Some(Member {
                client: client.into(),
                user: scripts::decode_user(pair.get(1)?.bytes()?),
            })
        })
        .collect();
    Some(PresenceList { count, clients })
}

/// Whether `entries` are exactly the offsets `after+1..=top`.
fn contiguous(entries: &[(u64, &[u8])], after: u64, top: u64) -> bool {
    entries.len() as u64 == top.saturating_sub(after)
        && entries
            .iter()
            .enumerate()
            .all(|(i, (o, _))| *o == after + 1 + i as u64)
}

impl Engine {
    /// An engine with no connection yet.
    pub(crate) fn new(
        cfg: EngineConfig,
        rules: ChannelRules,
        metrics: Arc<BrokerMetrics>,
        nonce: u64,
        topology: Topology,
        sharded: bool,
    ) -> Engine {
        Engine {
            nodes: topology.nodes.iter().cloned().map(Node::new).collect(),
            topology,
            sharded,
            stale: false,
            cfg,
            rules,
            metrics,
            nonce,
            epochs: 0,
            chans: HashMap::new(),
            retry: Vec::new(),
            idle: VecDeque::new(),
            publish_sha: scripts::sha(scripts::PUBLISH),
            read_sha: scripts::sha(scripts::READ),
            presence: scripts::presence_scripts().map(|src| (scripts::sha(&src), src)),
            ack_presence: HashMap::new(),
            out: Vec::new(),
        }
    }

    /// Takes a new cluster topology: every connection is dropped (what
    /// waited is refused or redone) and channels move to their new nodes,
    /// where they are subscribed and read again, losing nothing.
    pub(crate) fn set_topology(&mut self, topology: Topology) {
        for i in 0..self.nodes.len() {
            self.command_down(i);
            self.subscriber_down(i);
        }
        self.nodes = topology.nodes.iter().cloned().map(Node::new).collect();
        for c in self.chans.values_mut() {
            c.node = topology.node_of(&c.name);
        }
        self.topology = topology;
        self.stale = false;
    }

    fn node_of(&self, channel: &str) -> usize {
        self.topology.node_of(channel)
    }

    /// A fresh epoch for a channel Redis has none for (never 0).
    fn new_epoch(&mut self) -> Vec<u8> {
        self.epochs += 1;
        let e = crate::hub::stream::mix(self.nonce ^ (self.epochs << 20)).max(1);
        resp::itoa(e).as_bytes().to_vec()
    }

    /// Whether every node's connections are up.
    pub(crate) fn connected(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.cmd.is_some() && n.setup_left == 0 && n.sub.is_some() && n.sub_answered)
    }

    // ---- connections ------------------------------------------------

    /// The command connection is up: log in, load the scripts, then send
    /// what waited for it.
    pub(crate) fn command_up(&mut self, i: usize, mut link: Link, auth: &[Vec<u8>], db: u32) {
        let pending = &mut self.nodes[i].pending;
        if !auth.is_empty() {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            args.extend(auth.iter().map(Vec::as_slice));
            link.send(&args);
            pending.push_back(Op::Setup("AUTH"));
        }
        if db != 0 {
            link.send(&[b"SELECT", resp::itoa(u64::from(db)).as_bytes()]);
            pending.push_back(Op::Setup("SELECT"));
        }
        let presence = self.presence.iter().map(|(_, src)| src.as_str());
        for s in [scripts::PUBLISH, scripts::READ]
            .into_iter()
            .chain(presence)
        {
            link.send(&[b"SCRIPT", b"LOAD", s.as_bytes()]);
            pending.push_back(Op::Setup("SCRIPT LOAD"));
        }
        self.nodes[i].setup_left = self.nodes[i]
            .pending
            .iter()
            .filter(|op| matches!(op, Op::Setup(_)))
            .count() as u32;
        self.nodes[i].cmd = Some(link);
        // This node's clients are back in presence at once.
        self.refresh_presence();
        BrokerMetrics::inc(&self.metrics.reconnects, 1);
        // Channels whose positioning read was lost, and recoveries.
        let names: Vec<Arc<str>> = self
            .chans
            .values()
            .filter(|c| c.node == i && c.phase == Phase::Syncing { read_sent: false })
            .map(|c| c.name.clone())
            .collect();
        for n in names {
            self.send_sync(&n);
        }
        for req in std::mem::take(&mut self.retry) {
            self.subscribe(req);
        }
    }

    /// The command connection failed: refuse what waited on it (a
    /// publication may or may not have been stored: it is never acked),
    /// and redo the reads when it is back.
    pub(crate) fn command_down(&mut self, i: usize) {
        self.nodes[i].cmd = None;
        for op in std::mem::take(&mut self.nodes[i].pending) {
            match op {
                Op::Publish { from, reply, .. } => self.refuse(from, reply, "the connection to Redis failed before it confirmed the publication; it may or may not have been stored"),
                Op::Sync(name) => {
                    if let Some(c) = self.chans.get_mut(&name) {
                        if matches!(c.phase, Phase::Syncing { .. }) {
                            c.phase = Phase::Syncing { read_sent: false };
                        }
                    }
                }
                Op::Recover(req) => {
                    if let Some(c) = self.chans.get_mut(&req.channel) {
                        c.recovering -= 1;
                        if c.recovering == 0 {
                            c.kept.clear();
                        }
                    }
                    self.retry.push(req);
                }
                Op::History(req) => self.refuse(req.from, req.reply, "the connection to Redis failed"),
                Op::Presence { from, reply } => self.refuse(from, reply, "the connection to Redis failed"),
                Op::PresenceForAck(req) => self.retry.push(req),
                Op::PresenceWrite => {}
                Op::Setup(_) | Op::Ping => {}
            }
        }
    }

    /// The subscriber connection is up: subscribe to every channel with
    /// interest, in batches.
    pub(crate) fn subscriber_up(&mut self, i: usize, mut link: Link, auth: &[Vec<u8>]) {
        if !auth.is_empty() {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            args.extend(auth.iter().map(Vec::as_slice));
            link.send(&args);
        }
        // The first probe, at once: the connection is up when it answers.
        link.send(&[b"PING"]);
        let node = &mut self.nodes[i];
        node.sub = Some(link);
        node.sub_probe = Some(Instant::now());
        node.sub_answered = false;
        BrokerMetrics::inc(&self.metrics.reconnects, 1);
        node.to_subscribe = self
            .chans
            .values()
            .filter(|c| c.node == i)
            .map(|c| c.name.clone())
            .collect();
    }

    /// The subscriber connection failed: every channel stops until it is
    /// subscribed and read again.
    pub(crate) fn subscriber_down(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.sub = None;
        node.sub_probe = None;
        node.to_subscribe.clear();
        node.to_unsubscribe.clear();
        for c in self.chans.values_mut().filter(|c| c.node == i) {
            c.phase = Phase::Subscribing;
            c.held = Vec::new();
        }
    }

    /// Sends the pass's batched subscribes and unsubscribes.
    pub(crate) fn flush_subscriptions(&mut self) {
        let (unsub, sub_verb): (&[u8], &[u8]) = if self.sharded {
            (b"SUNSUBSCRIBE", b"SSUBSCRIBE")
        } else {
            (b"UNSUBSCRIBE", b"SUBSCRIBE")
        };
        for node in &mut self.nodes {
            let Some(sub) = &mut node.sub else {
                continue;
            };
            for (verb, list) in [
                (unsub, &mut node.to_unsubscribe),
                (sub_verb, &mut node.to_subscribe),
            ] {
                // Sharded pub/sub takes channels of one slot per command.
                let per = if self.sharded { 1 } else { BATCH_MAX };
                for batch in list.chunks(per) {
                    let names: Vec<[Vec<u8>; 3]> = batch.iter().map(|c| scripts::keys(c)).collect();
                    let mut args: Vec<&[u8]> = vec![verb];
                    args.extend(names.iter().map(|k| k[2].as_slice()));
                    sub.send(&args);
                }
                if verb == sub_verb && !list.is_empty() {
                    self.metrics.observe_batch(list.len() as u64);
                }
                list.clear();
            }
        }
    }

    /// Probes both connections (a wedged socket answers nothing).
    pub(crate) fn probe(&mut self, now: Instant) {
        for node in &mut self.nodes {
            if let Some(cmd) = &mut node.cmd {
                cmd.send(&[b"PING"]);
                node.pending.push_back(Op::Ping);
            }
            if let Some(sub) = &mut node.sub {
                if node.sub_probe.is_none() {
                    sub.send(&[b"PING"]);
                    node.sub_probe = Some(now);
                }
            }
        }
    }

    /// When node `i`'s oldest unanswered publication was sent.
    pub(crate) fn oldest_publish(&self, i: usize) -> Option<Instant> {
        self.nodes[i].pending.iter().find_map(|op| match op {
            Op::Publish { sent, .. } => Some(*sent),
            _ => None,
        })
    }

    /// Unsubscribes channels idle for the delay.
    pub(crate) fn expire_idle(&mut self, now: Instant) -> Option<Instant> {
        // Channels went idle in time order and the delay is one, so the
        // queue is due front first: a pass looks at what is due, not at
        // every channel.
        let delay = self.cfg.unsubscribe_delay;
        let mut removed = false;
        while let Some((t, _)) = self.idle.front() {
            if now < *t + delay {
                break;
            }
            let Some((t, name)) = self.idle.pop_front() else {
                break;
            };
            // Still idle since then (not resubscribed, or idle again later).
            if self
                .chans
                .get(&name)
                .is_some_and(|c| c.idle_since == Some(t))
            {
                if let Some(c) = self.chans.remove(&name) {
                    let node = &mut self.nodes[c.node];
                    if node.sub.is_some() {
                        node.to_unsubscribe.push(name);
                    }
                    removed = true;
                }
            }
        }
        if removed {
            self.metrics.channels.store(
                self.chans.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        self.idle.front().map(|(t, _)| *t + delay)
    }

    // ---- requests from the cores -------------------------------------

    /// Handles one request from a core.
    pub(crate) fn receive(&mut self, msg: MeshMsg, now: Instant) {
        match msg {
            MeshMsg::Sequence(u) => self.publish(*u, now),
            MeshMsg::Subscribe(req) => {
                self.join(&req);
                self.subscribe(req);
            }
            MeshMsg::Leave { channel, client } => self.leave(&channel, &client, now),
            MeshMsg::Withdraw { channel, from } => {
                if let Some(c) = self.chans.get_mut(&channel) {
                    c.cores.remove(from as usize);
                    if c.unused() {
                        c.idle_since = Some(now);
                        self.idle.push_back((now, c.name.clone()));
                    }
                }
            }
            MeshMsg::History(req) => self.history(req),
            MeshMsg::Presence {
                from,
                reply,
                channel,
            } => {
                let n = self.node_of(&channel);
                if self.nodes[n].cmd.is_none() {
                    return self.refuse(from, reply, "the broker (Redis) is unreachable");
                }
                self.send_presence_read(&channel);
                self.nodes[n]
                    .pending
                    .push_back(Op::Presence { from, reply });
            }
            _ => {}
        }
    }

    fn refuse(&mut self, from: u16, reply: ReplyTo, why: &str) {
        BrokerMetrics::inc(&self.metrics.refused, 1);
        if reply != ReplyTo::Nobody {
            self.out.push((
                from as usize,
                MeshMsg::Refused {
                    reply,
                    reason: why.into(),
                },
            ));
        }
    }

    fn publish(&mut self, u: Unsequenced, now: Instant) {
        let n = self.node_of(&u.channel);
        if self.nodes[n].cmd.is_none() {
            return self.refuse(
                u.from,
                u.reply,
                "the broker (Redis) is unreachable: the publication was not stored",
            );
        }
        let verb: &[u8] = if self.sharded {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        };
        let epoch = self.new_epoch();
        let opts = self.rules.resolve(&u.channel);
        let [meta, stream, pubsub] = scripts::keys(&u.channel);
        let size = resp::itoa(u64::from(opts.history_size));
        let ttl = ms(opts.history_ttl);
        let meta_ttl = ms(self.cfg.meta_ttl.max(opts.history_ttl));
        let node = &mut self.nodes[n];
        let Some(cmd) = &mut node.cmd else {
            return;
        };
        cmd.send(&[
            b"EVALSHA",
            self.publish_sha.as_bytes(),
            b"2",
            &meta,
            &stream,
            &u.payload,
            size.as_bytes(),
            &ttl,
            &meta_ttl,
            &epoch,
            &pubsub,
            verb,
        ]);
        node.pending.push_back(Op::Publish {
            from: u.from,
            reply: u.reply,
            sent: now,
        });
    }

    fn chan(&mut self, name: &Arc<str>) -> &mut Chan {
        if !self.chans.contains_key(name) {
            let c = Chan {
                name: name.clone(),
                opts: self.rules.resolve(name).clone(),
                cores: CoreSet::default(),
                phase: Phase::Subscribing,
                position: None,
                held: Vec::new(),
                waiting: Vec::new(),
                recovering: 0,
                kept: VecDeque::new(),
                deferred: Vec::new(),
                members: IndexMap::new(),
                idle_since: None,
                node: self.topology.node_of(name),
            };
            let node = &mut self.nodes[c.node];
            if node.sub.is_some() {
                node.to_subscribe.push(name.clone());
            }
            self.chans.insert(name.clone(), c);
            self.metrics.channels.store(
                self.chans.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        self.chans.get_mut(name).expect("inserted above")
    }

    /// Presence: kept on this node (to refresh and remove) and written to
    /// Redis, which announces the join to every node.
    fn join(&mut self, req: &SubscribeReq) {
        let Some(m) = &req.member else {
            return;
        };
        let c = self.chan(&req.channel);
        if !c.opts.tracked() || c.members.contains_key(&m.client) {
            return;
        }
        c.members.insert(m.client.clone(), m.user.clone());
        let jl = c.opts.join_leave;
        let user = scripts::encode_user(m.user.as_deref());
        let ttl = ms(PRESENCE_TTL);
        self.presence_call(0, &req.channel, jl, &[&ttl, m.client.as_bytes(), &user]);
    }

    fn leave(&mut self, channel: &str, client: &str, now: Instant) {
        let Some(c) = self.chans.get_mut(channel) else {
            return;
        };
        if c.members.swap_remove(client).is_none() {
            return;
        }
        let (name, jl) = (c.name.clone(), c.opts.join_leave);
        if c.unused() {
            c.idle_since = Some(now);
            self.idle.push_back((now, name.clone()));
        }
        self.presence_call(1, &name, jl, &[client.as_bytes()]);
    }

    /// Runs presence script `which` (add, remove, refresh) on `channel`.
    fn presence_call(&mut self, which: usize, channel: &str, join_leave: bool, args: &[&[u8]]) {
        let n = self.node_of(channel);
        let node = &mut self.nodes[n];
        let Some(cmd) = &mut node.cmd else {
            // Written again by the refresh once Redis is back.
            return;
        };
        let [zset, users] = scripts::presence_keys(channel);
        let [_, _, pubsub] = scripts::keys(channel);
        // How joins and leaves are announced, if the channel has them.
        let jl: &[u8] = match (join_leave, self.sharded) {
            (false, _) => b"0",
            (true, false) => b"PUBLISH",
            (true, true) => b"SPUBLISH",
        };
        let mut all: Vec<&[u8]> = vec![
            b"EVALSHA",
            self.presence[which].0.as_bytes(),
            b"2",
            &zset,
            &users,
            &pubsub,
            jl,
        ];
        all.extend_from_slice(args);
        cmd.send(&all);
        node.pending.push_back(Op::PresenceWrite);
    }

    fn send_presence_read(&mut self, channel: &str) {
        let max = resp::itoa(u64::from(self.cfg.limits.presence_max_clients));
        let jl = self.rules.resolve(channel).join_leave;
        self.presence_call(3, channel, jl, &[max.as_bytes()]);
        // `presence_call` queued a write; this one is a read (the caller
        // queues what answers it).
        let n = self.node_of(channel);
        self.nodes[n].pending.pop_back();
    }

    /// Refreshes the expiry of every presence entry this node holds (and
    /// writes back any Redis lost).
    pub(crate) fn refresh_presence(&mut self) {
        let ttl = ms(PRESENCE_TTL);
        type Members = Vec<(Box<str>, Vec<u8>)>;
        let work: Vec<(Arc<str>, bool, Members)> = self
            .chans
            .values()
            .filter(|c| !c.members.is_empty())
            .map(|c| {
                let members = c
                    .members
                    .iter()
                    .map(|(client, user)| (client.clone(), scripts::encode_user(user.as_deref())))
                    .collect();
                (c.name.clone(), c.opts.join_leave, members)
            })
            .collect();
        for (name, jl, members) in work {
            for chunk in members.chunks(REFRESH_BATCH) {
                let mut args: Vec<&[u8]> = vec![&ttl];
                for (client, user) in chunk {
                    args.push(client.as_bytes());
                    args.push(user);
                }
                self.presence_call(2, &name, jl, &args);
            }
        }
    }

    fn event(&mut self, channel: &Arc<str>, frame: SharedFrame) {
        let Some(c) = self.chans.get(channel) else {
            return;
        };
        for core in c.cores.iter() {
            self.out.push((
                core,
                MeshMsg::Event {
                    channel: c.name.clone(),
                    frame: frame.share(),
                },
            ));
        }
    }

    fn subscribe(&mut self, req: Box<SubscribeReq>) {
        let n = self.node_of(&req.channel);
        let cmd_up = self.nodes[n].cmd.is_some();
        let key = (req.key, req.channel.clone());
        if req.want_presence && !self.ack_presence.contains_key(&key) {
            // The ack's presence list is the cluster's: read it first.
            if !cmd_up {
                self.retry.push(req);
                return;
            }
            self.send_presence_read(&req.channel);
            self.nodes[n].pending.push_back(Op::PresenceForAck(req));
            return;
        }
        let c = self.chan(&req.channel);
        c.idle_since = None;
        if c.phase != Phase::Live {
            c.waiting.push(req);
            return;
        }
        let position = c.position.unwrap_or_default();
        match req.since {
            Some(since)
                if since != position
                    && since.epoch == position.epoch
                    && since.offset < position.offset
                    && c.opts.history_size > 0 =>
            {
                if !cmd_up {
                    self.retry.push(req);
                    return;
                }
                c.recovering += 1;
                let size = u64::from(c.opts.history_size);
                let ttl = c.opts.history_ttl;
                self.send_read(&req.channel.clone(), b"since", since, size, size, ttl);
                self.nodes[n].pending.push_back(Op::Recover(req));
            }
            Some(since) => {
                let recovered = since == position;
                self.answer(req, position, Some(recovered), Vec::new());
            }
            None => self.answer(req, position, None, Vec::new()),
        }
    }

    /// Answers a subscribe: the core joins the channel's delivery from
    /// `position` on.
    #[allow(clippy::boxed_local)] // requests travel boxed; unboxed here
    fn answer(
        &mut self,
        req: Box<SubscribeReq>,
        position: Position,
        recovered: Option<bool>,
        frames: Vec<SharedFrame>,
    ) {
        let max = self.cfg.limits.presence_max_clients as usize;
        let from = req.from as usize;
        let read = self.ack_presence.remove(&(req.key, req.channel.clone()));
        let presence = match self.chans.get_mut(&req.channel) {
            Some(c) => {
                c.cores.insert(from);
                c.idle_since = None;
                req.want_presence
                    .then(|| read.unwrap_or_else(|| presence_list(c, max)))
            }
            None => req.want_presence.then(PresenceList::default),
        };
        self.out
            .push((*req).reply(position, recovered, frames, presence));
    }

    fn send_read(
        &mut self,
        channel: &Arc<str>,
        mode: &[u8],
        since: Position,
        limit: u64,
        size: u64,
        ttl: Duration,
    ) {
        let epoch = self.new_epoch();
        let meta_ttl = ms(self.cfg.meta_ttl.max(ttl));
        let n = self.node_of(channel);
        let Some(cmd) = &mut self.nodes[n].cmd else {
            return;
        };
        let [meta, stream, _] = scripts::keys(channel);
        cmd.send(&[
            b"EVALSHA",
            self.read_sha.as_bytes(),
            b"2",
            &meta,
            &stream,
            mode,
            resp::itoa(since.offset).as_bytes(),
            resp::itoa(limit.max(1)).as_bytes(),
            resp::itoa(size).as_bytes(),
            &ms(ttl),
            &meta_ttl,
            &epoch,
            resp::itoa(since.epoch).as_bytes(),
        ]);
    }

    fn send_sync(&mut self, name: &Arc<str>) {
        let Some(c) = self.chans.get_mut(name) else {
            return;
        };
        let n = c.node;
        if self.nodes[n].cmd.is_none() {
            c.phase = Phase::Syncing { read_sent: false };
            return;
        }
        c.phase = Phase::Syncing { read_sent: true };
        let size = u64::from(c.opts.history_size);
        let ttl = c.opts.history_ttl;
        let (mode, since): (&[u8], Position) = match c.position {
            Some(p) if size > 0 => (b"since", p),
            _ => (b"pos", Position::default()),
        };
        self.send_read(name, mode, since, size, size, ttl);
        self.nodes[n].pending.push_back(Op::Sync(name.clone()));
    }

    fn history(&mut self, req: Box<HistoryReq>) {
        let n = self.node_of(&req.channel);
        if self.nodes[n].cmd.is_none() {
            return self.refuse(req.from, req.reply, "the broker (Redis) is unreachable");
        }
        let opts = self.rules.resolve(&req.channel);
        let size = u64::from(opts.history_size);
        let ttl = opts.history_ttl;
        let channel: Arc<str> = Arc::from(&*req.channel);
        match req.since {
            Some(s) => self.send_read(
                &channel,
                b"since",
                Position { epoch: 0, ..s },
                u64::from(req.limit),
                size,
                ttl,
            ),
            None => self.send_read(
                &channel,
                b"last",
                Position::default(),
                u64::from(req.limit),
                size,
                ttl,
            ),
        }
        self.nodes[n].pending.push_back(Op::History(req));
    }

    // ---- replies from Redis ------------------------------------------

    /// Handles one reply on the command connection. An error here means
    /// the connection is unusable.
    pub(crate) fn command_reply(&mut self, i: usize, r: Reply, now: Instant) -> Result<(), String> {
        if let Reply::Error(e) = &r {
            if e.starts_with("MOVED ") || e.starts_with("ASK ") || e.starts_with("CLUSTERDOWN") {
                self.stale = true;
            }
        }
        let Some(op) = self.nodes[i].pending.pop_front() else {
            return Err(format!("Redis sent a reply nobody asked for: {r:?}"));
        };
        match op {
            Op::PresenceWrite => {
                if let Reply::Error(e) = &r {
                    warn!("broker: a presence write failed: {e}");
                }
            }
            Op::Presence { from, reply } => match parse_presence(&r) {
                Some(list) => self.out.push((
                    from as usize,
                    MeshMsg::PresenceAnswer {
                        reply,
                        list: Box::new(list),
                    },
                )),
                None => self.refuse(
                    from,
                    reply,
                    &format!("Redis refused the presence read: {r:?}"),
                ),
            },
            Op::PresenceForAck(req) => {
                let list = parse_presence(&r).unwrap_or_default();
                self.ack_presence
                    .insert((req.key, req.channel.clone()), list);
                self.subscribe(req);
            }
            Op::Setup(what) => {
                if let Reply::Error(e) = &r {
                    return Err(format!("{what}: {e}"));
                }
                let node = &mut self.nodes[i];
                node.setup_left = node.setup_left.saturating_sub(1);
            }
            Op::Ping => {}
            Op::Publish { from, reply, sent } => match &r {
                Reply::Array(a) if a.len() == 2 => {
                    let position = Position {
                        epoch: a[0].u64().unwrap_or(0),
                        offset: a[1].u64().unwrap_or(0),
                    };
                    self.metrics
                        .observe_publish(now.saturating_duration_since(sent).as_micros() as u64);
                    if reply != ReplyTo::Nobody {
                        self.out
                            .push((from as usize, MeshMsg::Sequenced { reply, position }));
                    }
                }
                Reply::Error(e) => {
                    let why = format!("Redis refused the publication: {e}");
                    self.refuse(from, reply, &why);
                }
                other => return Err(format!("unexpected publish reply {other:?}")),
            },
            // A reply that makes no sense drops the connection; what it
            // answered is redone (reads) or refused (history) first.
            Op::Sync(name) => {
                if let Err(e) = self.synced(&name, &r) {
                    if let Some(c) = self.chans.get_mut(&name) {
                        c.phase = Phase::Syncing { read_sent: false };
                    }
                    return Err(e);
                }
            }
            Op::Recover(req) => {
                if parse_read(&r).is_none() {
                    if let Some(c) = self.chans.get_mut(&req.channel) {
                        c.recovering -= 1;
                    }
                    self.retry.push(req);
                    return Err(format!("bad read reply {r:?}"));
                }
                self.recovered(req, &r)?;
            }
            Op::History(req) => {
                if !matches!(r, Reply::Error(_)) && parse_read(&r).is_none() {
                    self.refuse(req.from, req.reply, "Redis sent a bad history reply");
                    return Err(format!("bad history reply {r:?}"));
                }
                self.history_read(*req, &r)?;
            }
        }
        Ok(())
    }

    fn history_read(&mut self, req: HistoryReq, r: &Reply) -> Result<(), String> {
        if let Reply::Error(e) = r {
            self.refuse(
                req.from,
                req.reply,
                &format!("Redis refused the history read: {e}"),
            );
            return Ok(());
        }
        let (epoch, top, entries) =
            parse_read(r).ok_or_else(|| format!("bad history reply {r:?}"))?;
        let position = Position { epoch, offset: top };
        let answer = match req.since {
            Some(s) if s.epoch != epoch => HistoryAnswer::EpochMismatch { current: epoch },
            _ => {
                let max = self.cfg.limits.answer_max_bytes;
                let mut budget = max;
                let mut publications = Vec::new();
                let fits = |len: usize, budget: &mut usize| {
                    if len > *budget && *budget < max {
                        return false;
                    }
                    *budget = budget.saturating_sub(len);
                    true
                };
                if req.since.is_some() {
                    for (o, p) in &entries {
                        if !fits(p.len(), &mut budget) {
                            break;
                        }
                        let (f, at) = wire::message_frame(&req.channel, *o, p);
                        publications.push((*o, f, at));
                    }
                } else {
                    // Newest first within the budget, then oldest first.
                    for (o, p) in entries.iter().rev() {
                        if !fits(p.len(), &mut budget) {
                            break;
                        }
                        let (f, at) = wire::message_frame(&req.channel, *o, p);
                        publications.push((*o, f, at));
                    }
                    publications.reverse();
                }
                HistoryAnswer::Found {
                    position,
                    publications,
                }
            }
        };
        self.out.push((
            req.from as usize,
            MeshMsg::HistoryAnswer {
                reply: req.reply,
                answer: Box::new(answer),
            },
        ));
        Ok(())
    }

    /// The read that positions a channel came back.
    fn synced(&mut self, name: &Arc<str>, r: &Reply) -> Result<(), String> {
        if let Reply::Error(e) = r {
            return Err(format!("the read script failed: {e}"));
        }
        let (epoch, top, entries) = parse_read(r).ok_or_else(|| format!("bad read reply {r:?}"))?;
        let Some(c) = self.chans.get_mut(name) else {
            return Ok(());
        };
        if c.phase != (Phase::Syncing { read_sent: true }) {
            // The subscriber connection dropped meanwhile: it will read again.
            return Ok(());
        }
        let name = c.name.clone();
        let mut replay = Vec::new();
        let mut reset = false;
        match c.position {
            None => c.position = Some(Position { epoch, offset: top }),
            Some(p)
                if p.epoch == epoch && top >= p.offset && contiguous(&entries, p.offset, top) =>
            {
                replay = entries.iter().map(|(o, pl)| (*o, pl.to_vec())).collect();
            }
            Some(_) => {
                // A new epoch (or a stream that went backwards): the
                // subscribers are told, then get what the new stream still
                // has, in order.
                reset = true;
                let first = match entries.first() {
                    Some(&(o, _)) if contiguous(&entries, o - 1, top) => o - 1,
                    _ => top,
                };
                c.position = Some(Position {
                    epoch,
                    offset: first,
                });
                if first < top {
                    replay = entries.iter().map(|(o, pl)| (*o, pl.to_vec())).collect();
                }
            }
        }
        c.phase = Phase::Live;
        if reset {
            BrokerMetrics::inc(&self.metrics.unrecoverable, 1);
            self.reset(&name);
        } else if !replay.is_empty() {
            BrokerMetrics::inc(&self.metrics.recovered_after_blip, replay.len() as u64);
        }
        for (o, pl) in replay {
            self.deliver(&name, o, &pl);
        }
        // What arrived live meanwhile, in order.
        let held = self
            .chans
            .get_mut(&name)
            .map(|c| std::mem::take(&mut c.held))
            .unwrap_or_default();
        let mut rest = held.into_iter();
        for (e, o, pl) in rest.by_ref() {
            if !self.live_message(&name, e, o, &pl) {
                break;
            }
        }
        // A gap in what was held: the channel reads again (held on).
        if let Some(c) = self.chans.get_mut(&name) {
            c.held.extend(rest);
            if c.phase == Phase::Live {
                for req in std::mem::take(&mut c.waiting) {
                    self.subscribe(req);
                }
            }
        }
        Ok(())
    }

    /// A recovery read for a subscribe with `since` came back.
    fn recovered(&mut self, req: Box<SubscribeReq>, r: &Reply) -> Result<(), String> {
        if let Reply::Error(e) = r {
            if let Some(c) = self.chans.get_mut(&req.channel) {
                c.recovering -= 1;
            }
            self.retry.push(req);
            return Err(format!("the read script failed: {e}"));
        }
        let (epoch, top, entries) = parse_read(r).ok_or_else(|| format!("bad read reply {r:?}"))?;
        let Some(c) = self.chans.get_mut(&req.channel) else {
            return Ok(());
        };
        c.recovering -= 1;
        let since = req.since.unwrap_or_default();
        let position = c.position.unwrap_or_default();
        let ok = c.phase == Phase::Live
            && epoch == position.epoch
            && since.epoch == epoch
            && since.offset <= top
            && contiguous(&entries, since.offset, top);
        if !ok {
            if c.recovering == 0 {
                c.kept.clear();
            }
            // Recovered publications must match what this node delivered;
            // if the channel is not live, answer once it is.
            if c.phase != Phase::Live {
                c.waiting.push(req);
                return Ok(());
            }
            self.answer(req, position, Some(false), Vec::new());
            return Ok(());
        }
        let name = c.name.clone();
        let mut frames: Vec<SharedFrame> = entries
            .iter()
            .map(|(o, p)| wire::message_frame(&name, *o, p).0)
            .collect();
        if top <= position.offset {
            frames.extend(
                c.kept
                    .iter()
                    .filter(|(o, _)| *o > top && *o <= position.offset)
                    .map(|(_, f)| f.share()),
            );
            if c.recovering == 0 {
                c.kept.clear();
            }
            self.answer(req, position, Some(true), frames);
        } else {
            c.deferred.push(Deferred {
                at: top,
                req,
                frames,
            });
        }
        Ok(())
    }

    /// Delivers publication `offset` of `channel` to its cores, in order.
    fn deliver(&mut self, name: &Arc<str>, offset: u64, payload: &[u8]) {
        let Some(c) = self.chans.get_mut(name) else {
            return;
        };
        let (frame, _) = wire::message_frame(name, offset, payload);
        for core in c.cores.iter() {
            self.out.push((
                core,
                MeshMsg::Publish {
                    channel: c.name.clone(),
                    offset,
                    frame: frame.share(),
                },
            ));
        }
        if c.recovering > 0 {
            c.kept.push_back((offset, frame));
        }
        if let Some(p) = &mut c.position {
            p.offset = offset;
        }
        if c.deferred.iter().any(|d| d.at <= offset) {
            let position = c.position.unwrap_or_default();
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut c.deferred)
                .into_iter()
                .partition(|d| d.at <= offset);
            c.deferred = later;
            if c.recovering == 0 && c.deferred.is_empty() {
                c.kept.clear();
            }
            for d in due {
                self.answer(d.req, position, Some(true), d.frames);
            }
        }
    }

    /// The stream restarted or lost what this node missed: subscribers
    /// are told, and anyone waiting for a recovery is answered
    /// `recovered: false`.
    fn reset(&mut self, name: &Arc<str>) {
        let Some(c) = self.chans.get_mut(name) else {
            return;
        };
        let position = c.position.unwrap_or_default();
        let frame = wire::reset_frame(name, position);
        for core in c.cores.iter() {
            self.out.push((
                core,
                MeshMsg::Reset {
                    channel: c.name.clone(),
                    position,
                    frame: frame.share(),
                },
            ));
        }
        c.kept.clear();
        for d in std::mem::take(&mut c.deferred) {
            self.answer(d.req, position, Some(false), Vec::new());
        }
    }

    /// A pub/sub message: delivered if it is the next offset. Returns
    /// whether the channel is still live (`false`: it reads its stream and
    /// holds what follows).
    fn live_message(&mut self, name: &Arc<str>, epoch: u64, offset: u64, payload: &[u8]) -> bool {
        let Some(c) = self.chans.get_mut(name) else {
            return true;
        };
        match c.phase {
            Phase::Live => {}
            _ => {
                if c.held.len() < HELD_MAX {
                    c.held.push((epoch, offset, payload.into()));
                }
                return false;
            }
        }
        let p = c.position.unwrap_or_default();
        if epoch == p.epoch && offset == p.offset + 1 {
            self.deliver(name, offset, payload);
            true
        } else if epoch == p.epoch && offset <= p.offset {
            true
        } else {
            c.held.push((epoch, offset, payload.into()));
            self.send_sync(name);
            false
        }
    }

    /// Handles one reply on the subscriber connection.
    pub(crate) fn subscriber_reply(&mut self, i: usize, r: Reply) -> Result<(), String> {
        if !matches!(r, Reply::Error(_)) {
            self.nodes[i].sub_answered = true;
        }
        let items = match &r {
            Reply::Array(a) => a,
            Reply::Error(e) => {
                if e.starts_with("MOVED ") || e.starts_with("CLUSTERDOWN") {
                    self.stale = true;
                }
                return Err(format!("subscriber connection: {e}"));
            }
            // PING outside subscribed mode; AUTH's +OK.
            Reply::Status(s) => {
                if s.eq_ignore_ascii_case("pong") {
                    self.nodes[i].sub_probe = None;
                }
                return Ok(());
            }
            other => return Err(format!("unexpected pub/sub reply {other:?}")),
        };
        let kind = items.first().and_then(Reply::bytes).unwrap_or_default();
        match kind {
            b"message" | b"smessage" => {
                BrokerMetrics::inc(&self.metrics.messages_received, 1);
                let (Some(ch), Some(data)) = (
                    items.get(1).and_then(Reply::bytes),
                    items.get(2).and_then(Reply::bytes),
                ) else {
                    return Err("a pub/sub message without channel or data".into());
                };
                let Some(name) = scripts::channel_of(ch)
                    .and_then(|n| self.chans.get_key_value(n))
                    .map(|(k, _)| k.clone())
                else {
                    return Ok(());
                };
                if let Some((join, client, user)) = scripts::split_event(data) {
                    let opts = &self.chans[&name].opts;
                    if opts.join_leave {
                        let frame = wire::event_frame(join, &name, client, user.as_deref());
                        self.event(&name, frame);
                    }
                    return Ok(());
                }
                let Some((epoch, offset, payload)) = scripts::split_message(data) else {
                    return Ok(());
                };
                self.live_message(&name, epoch, offset, payload);
            }
            b"subscribe" | b"ssubscribe" => {
                let name = items
                    .get(1)
                    .and_then(Reply::bytes)
                    .and_then(scripts::channel_of)
                    .and_then(|n| self.chans.get_key_value(n))
                    .map(|(k, _)| k.clone());
                if let Some(name) = name {
                    if self
                        .chans
                        .get(&name)
                        .is_some_and(|c| c.phase == Phase::Subscribing)
                    {
                        self.send_sync(&name);
                    }
                }
            }
            b"pong" => self.nodes[i].sub_probe = None,
            // Redis Cluster unsubscribes a shard channel whose slot moved:
            // ours if we still want it, so the topology is read again.
            b"sunsubscribe" => {
                let ours = items
                    .get(1)
                    .and_then(Reply::bytes)
                    .and_then(scripts::channel_of)
                    .is_some_and(|n| self.chans.contains_key(n));
                if ours {
                    self.stale = true;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn presence_list(c: &Chan, max: usize) -> PresenceList {
    PresenceList {
        count: c.members.len() as u64,
        clients: c
            .members
            .iter()
            .take(max)
            .map(|(client, user)| Member {
                client: client.clone(),
                user: user.clone(),
            })
            .collect(),
    }
}
