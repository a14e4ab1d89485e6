//! Fan-out on this core: messages from other cores, the pass's broadcast
//! and channel frames to local subscribers (through the hub's one delivery
//! loop), this pass's traffic for other cores, and the slow consumers that
//! went over their bound on the way.

use tracing::debug;

use super::slab::{Phase, Slab};
use super::Shard;
use crate::app::{protocol, Endpoint};
use crate::conn::outq::Pushed;
use crate::conn::{ConnKey, Frame, OutQueue};
use crate::hub::{MeshMsg, Recipients};
use crate::ws::frame::encode_frame_into;
use crate::ws::{CloseCode, OpCode, State};

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
        push: impl FnOnce(&mut OutQueue) -> Pushed,
    ) -> Option<Pushed> {
        let conn = self.conns.get_mut(key)?;
        let pushed = push(&mut conn.out);
        if pushed.over {
            self.overflow.push(key);
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
        Some(pushed)
    }
}

impl Shard {
    /// Dispatches what other cores sent this pass.
    pub(super) fn handle_mesh_messages(&mut self) {
        let mut msgs = std::mem::take(&mut self.mesh_in);
        for msg in msgs.drain(..) {
            match self.env.channels.receive(msg) {
                None => {}
                Some(MeshMsg::Broadcast(f)) => self.env.hub.inbox.push(Frame::new(f)),
                Some(MeshMsg::ChannelsQuery { from, query }) => {
                    let channels = self.env.channels.local_counts();
                    if let Some(m) = &mut self.mesh {
                        m.send_to(from as usize, MeshMsg::ChannelsReply { query, channels });
                    }
                }
                Some(MeshMsg::ChannelsReply { query, channels }) => {
                    self.channels_reply(query, &channels)
                }
                Some(_) => {}
            }
        }
        self.mesh_in = msgs;
        // Subscriptions every peer has now confirmed.
        let acks = std::mem::take(&mut self.env.channels.acks_due);
        for (key, id) in acks {
            if let Some(c) = self.conns.get_mut(key) {
                if let Endpoint::Channels(ws) = &mut c.ctl.endpoint {
                    ws.held_acks = ws.held_acks.saturating_sub(1);
                }
            }
            self.ws_reply(key, |v| protocol::write_ack(id, v));
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
        env.scratch.clear();
        write(&mut env.scratch);
        let scratch = &env.scratch;
        conn.out.write_with(&mut env.pool, |v| {
            encode_frame_into(OpCode::Text, scratch, v)
        });
        // Counted like a reply queued during the connection's own read.
        env.stats.replies += 1;
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
            stats.deliveries += env.hub.fan_out(&mut env.pool, max, &mut sink);
            if let Some(m) = mesh {
                m.send(&env.hub.outbox);
            }
            env.hub.outbox.clear();
        }
        if env.channels.has_pending() {
            stats.deliveries += env.channels.fan_out(&mut env.pool, max, &mut sink);
        }
    }

    /// Hands this pass's channel messages for other cores to the mesh.
    pub(super) fn send_channel_messages(&mut self) {
        if self.env.channels.outgoing.is_empty() {
            return;
        }
        let mut out = std::mem::take(&mut self.env.channels.outgoing);
        if let Some(m) = &mut self.mesh {
            for (core, msg) in out.drain(..) {
                m.send_to(core, msg);
            }
        }
        out.clear();
        self.env.channels.outgoing = out;
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
