//! Fan-out on this core: messages from other cores, the pass's broadcast
//! and channel frames to local subscribers (through the hub's one delivery
//! loop), this pass's traffic for other cores, and the slow consumers that
//! went over their bound on the way.

use tracing::debug;

use super::slab::{Flag, Phase, Slab};
use super::Shard;
use crate::app::protocol::{self, ErrorCode};
use crate::app::Endpoint;
use crate::conn::outq::Pushed;
use crate::conn::{ConnKey, Frame, OutQueue};
use crate::hub::deliver::deliver;
use crate::hub::{
    HistoryAnswer, MeshMsg, Position, PresenceList, Recipients, ReplyTo, SubscribeReply,
};
use crate::ws::deflate::WindowBits;
use crate::ws::{CloseCode, State};

/// Capacity of the reply scratch buffer kept after a large reply.
const SCRATCH_KEEP: usize = 256 * 1024;

/// The core's connections as fan-out sees them: a queue per key. One that
/// got frames is listed for the flush, one over its bound for a 1008 close.
struct Sink<'a> {
    conns: &'a mut Slab,
    dirty: &'a mut Vec<ConnKey>,
    overflow: &'a mut Vec<ConnKey>,
}

impl Recipients for Sink<'_> {
    #[inline]
    fn with_queue(
        &mut self,
        key: ConnKey,
        push: impl FnOnce(&mut OutQueue, Option<WindowBits>) -> Pushed,
    ) -> Option<Pushed> {
        let conn = self.conns.get_mut(key)?;
        let window = conn.deflate();
        let pushed = push(&mut conn.out, window);
        if pushed.over {
            self.overflow.push(key);
        }
        if !conn.flags.has(Flag::Dirty) {
            conn.flags.set(Flag::Dirty, true);
            self.dirty.push(key);
        }
        Some(pushed)
    }
}

impl Shard {
    /// Moves this pass's messages for owners and subscriber cores on: to
    /// the mesh, or, for this core, into this pass's inbound messages.
    pub(super) fn route_outgoing(&mut self) {
        let me = self.id;
        let mut out = self.env.channels.take_outgoing();
        out.append(&mut self.env.streams.out);
        for (core, msg) in out.drain(..) {
            if core == me {
                self.mesh_in.push(msg);
            } else if let Some(m) = &mut self.mesh {
                m.send_to(core, msg);
            }
        }
        self.env.channels.give_back(out);
    }

    /// Dispatches what other cores (and this core's own engine) sent, until
    /// nothing addressed to this core is left: an owner's answer to a
    /// request made here is handled in the same pass.
    pub(super) fn handle_mesh_messages(&mut self) {
        loop {
            self.route_outgoing();
            if self.mesh_in.is_empty() {
                break;
            }
            self.handle_mesh_batch();
        }
    }

    fn handle_mesh_batch(&mut self) {
        let mut msgs = std::mem::take(&mut self.mesh_in);
        let now = self.env.now_us;
        for msg in msgs.drain(..) {
            let Some(msg) = self.env.streams.receive(msg, now) else {
                continue;
            };
            match msg {
                MeshMsg::Broadcast(f) => self.env.hub.inbox.push(Frame::new(f)),
                MeshMsg::Publish {
                    channel,
                    offset,
                    frame,
                } => self
                    .env
                    .channels
                    .deliver(&channel, offset, Frame::new(frame)),
                MeshMsg::Event { channel, frame } => {
                    self.env.channels.event(&channel, Frame::new(frame))
                }
                MeshMsg::Sequenced { reply, position } => self.sequenced(reply, position),
                MeshMsg::Subscribed(r) => {
                    // Publications that arrived before the answer are
                    // covered by it: they go out before the new subscriber
                    // joins the list.
                    if self.env.channels.has_pending() {
                        self.fan_out();
                    }
                    self.subscribed(*r);
                }
                MeshMsg::HistoryAnswer { reply, answer } => self.history_answer(reply, *answer),
                MeshMsg::PresenceAnswer { reply, list } => self.presence_answer(reply, &list),
                MeshMsg::ChannelsQuery { from, query } => {
                    let channels = self.env.channels.local_counts();
                    if let Some(m) = &mut self.mesh {
                        m.send_to(from as usize, MeshMsg::ChannelsReply { query, channels });
                    }
                }
                MeshMsg::ChannelsReply { query, channels } => self.channels_reply(query, &channels),
                MeshMsg::Refused { reply, reason } => self.refused(reply, &reason),
                MeshMsg::Reset {
                    channel,
                    position,
                    frame,
                } => self
                    .env
                    .channels
                    .reset(&channel, position, Frame::new(frame)),
                // Engine requests were taken by `streams.receive`.
                MeshMsg::Sequence(_)
                | MeshMsg::Subscribe(_)
                | MeshMsg::Leave { .. }
                | MeshMsg::Withdraw { .. }
                | MeshMsg::History(_)
                | MeshMsg::Presence { .. } => {}
            }
        }
        // Anything that arrived meanwhile waits for the next round.
        msgs.append(&mut self.mesh_in);
        self.mesh_in = msgs;
    }

    /// A publication's offset, for the `/ws` client or API request that
    /// made it.
    fn sequenced(&mut self, reply: ReplyTo, position: Position) {
        match reply {
            ReplyTo::Nobody => {}
            ReplyTo::Ws { key, id } => {
                self.ws_reply(key, |v| protocol::write_position_ack(id, position, v))
            }
            ReplyTo::Api { ticket, index } => self.api_sequenced(ticket, index, position),
        }
    }

    /// The broker engine could not carry out a request: the client is
    /// told (`unavailable`, HTTP 503), nothing is acked.
    fn refused(&mut self, reply: ReplyTo, reason: &str) {
        match reply {
            ReplyTo::Nobody => {}
            ReplyTo::Ws { key, id } => self.ws_reply(key, |v| {
                protocol::write_error(id, ErrorCode::Unavailable, reason, v)
            }),
            ReplyTo::Api { ticket, .. } => self.api_refused(ticket, reason),
        }
    }

    /// The owner answered a subscribe: the subscriber starts receiving
    /// (unless it left meanwhile), gets its ack, then whatever was
    /// recovered, before any later publication.
    fn subscribed(&mut self, r: SubscribeReply) {
        let channels = &mut self.env.channels;
        let Some((idx, joining)) = channels.answered(&r.channel, r.key, r.position) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(r.key) else {
            channels.settle(idx);
            return;
        };
        if let Endpoint::Channels(ws) = &mut conn.ctl.endpoint {
            ws.held_acks = ws.held_acks.saturating_sub(1);
        }
        let open = matches!(&conn.phase, Phase::Open(s) if s.state() == State::Open);
        if joining.cancelled || !open {
            channels.settle(idx);
            let id = r.id;
            self.ws_reply(r.key, |v| {
                protocol::write_subscribe_ack(id, r.position, r.recovered, None, v)
            });
            if let Some(unsub) = joining.unsub_ack {
                self.ws_reply(r.key, |v| protocol::write_ack(unsub, v));
            }
            return;
        }
        // A repeated subscribe of a connection that already receives the
        // channel is answered, but nothing is replayed: it has it all.
        let fresh = channels.add(idx, r.key, joining.join_leave);
        self.env.stats.count_recovery(r.recovered);
        let id = r.id;
        let presence = r.presence.as_ref();
        self.ws_reply(r.key, |v| {
            protocol::write_subscribe_ack(id, r.position, r.recovered, presence, v)
        });
        if r.frames.is_empty() || !fresh {
            return;
        }
        // The replay goes through the one delivery loop, like any fan-out.
        // For a deflate peer through the core's cache, so a publication
        // many connections recover is compressed once here.
        let deflate = self
            .conns
            .get_mut(r.key)
            .and_then(|c| c.deflate())
            .is_some();
        let frames: Vec<Frame> = if deflate {
            let cache = &mut self.replays;
            r.frames.into_iter().map(|f| cache.frame(f)).collect()
        } else {
            r.frames.into_iter().map(Frame::new).collect()
        };
        let max = self.cfg.max_send_queue_bytes;
        let Shard {
            env,
            conns,
            dirty,
            overflow,
            stats,
            ..
        } = self;
        let mut sink = Sink {
            conns,
            dirty,
            overflow,
        };
        stats.deliveries += deliver(
            [r.key],
            frames.iter(),
            &mut env.pool,
            &mut env.deflater,
            max,
            &mut sink,
        );
    }

    fn history_answer(&mut self, reply: ReplyTo, answer: HistoryAnswer) {
        match reply {
            ReplyTo::Nobody => {}
            ReplyTo::Ws { key, id } => match answer {
                HistoryAnswer::Found {
                    position,
                    publications,
                } => self.ws_reply(key, |v| {
                    protocol::write_history_ack(id, position, &publications, v)
                }),
                HistoryAnswer::EpochMismatch { current } => {
                    let msg = epoch_mismatch(current);
                    self.env.stats.protocol_errors += 1;
                    self.ws_reply(key, |v| {
                        protocol::write_error(id, ErrorCode::EpochMismatch, &msg, v)
                    })
                }
            },
            ReplyTo::Api { ticket, .. } => self.api_history(ticket, answer),
        }
    }

    fn presence_answer(&mut self, reply: ReplyTo, list: &PresenceList) {
        match reply {
            ReplyTo::Nobody => {}
            ReplyTo::Ws { key, id } => {
                self.ws_reply(key, |v| protocol::write_presence_ack(id, list, v))
            }
            ReplyTo::Api { ticket, .. } => self.api_presence(ticket, list),
        }
    }

    /// Queues a `/ws` reply to an open connection outside its own read.
    fn ws_reply(&mut self, key: ConnKey, write: impl FnOnce(&mut Vec<u8>)) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !matches!(&conn.phase, Phase::Open(s) if s.state() == State::Open) {
            return;
        }
        if conn.out.cost() > self.cfg.max_send_queue_bytes {
            // Not reading: it is closed as a slow consumer, like any reply
            // refused for its backlog.
            self.overflow.push(key);
            return;
        }
        let env = &mut self.env;
        let window = conn.deflate();
        env.queue_text(&mut conn.out, window, write);
        // A history answer can be megabytes: the scratch buffer does not
        // keep that much for good.
        if env.scratch.capacity() > SCRATCH_KEEP {
            env.scratch = Vec::new();
        }
        self.mark_dirty(key);
    }

    /// The pass's fan-out, one walk per batch: `/broadcast` frames (local
    /// and from other cores) to every local subscriber, this core's own
    /// then handed to the other cores; then channel messages to their local
    /// subscribers.
    pub(super) fn fan_out(&mut self) {
        let max = self.cfg.max_send_queue_bytes;
        let Shard {
            env,
            conns,
            dirty,
            overflow,
            mesh,
            stats,
            ..
        } = self;
        let mut sink = Sink {
            conns,
            dirty,
            overflow,
        };
        if env.hub.has_pending() {
            stats.deliveries += env
                .hub
                .fan_out(&mut env.pool, &mut env.deflater, max, &mut sink);
            if let Some(m) = mesh {
                m.send(&env.hub.outbox);
            }
            env.hub.outbox.clear();
        }
        if env.channels.has_pending() {
            stats.deliveries +=
                env.channels
                    .fan_out(&mut env.pool, &mut env.deflater, max, &mut sink);
        }
    }

    /// Closes consumers whose backlog went over the bound: the backlog is
    /// dropped and they get a 1008 close frame; everyone else is unaffected.
    pub(super) fn close_overflowed(&mut self) {
        while let Some(key) = self.overflow.pop() {
            if self.close_open(key, CloseCode::POLICY, "send queue over limit", true) {
                self.stats.slow_consumer_closes += 1;
                debug!(core = self.id, "closed slow consumer (1008)");
            }
        }
    }
}

/// The error message for a history `since` from another epoch.
pub(super) fn epoch_mismatch(current: u64) -> String {
    format!(
        "`since.epoch` is not the channel's epoch ({current:016x}): the history it refers to is gone"
    )
}
