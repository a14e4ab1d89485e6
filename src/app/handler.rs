//! The message handler: what a message on an open connection does, per
//! endpoint, with the connection's own queue for its replies and the core's
//! [`Env`] for everything that reaches other connections.

use tracing::debug;

use super::conn_state::{ConnCtl, Endpoint};
use super::policy::{CoreHook, Policy, PONG_BURST};
use std::rc::Rc;

use super::protocol::{self, ClientMsg, ErrorCode, Since};
use super::route::Route;
use super::stats::MsgStats;
use crate::conn::{BufPool, ConnKey, Frame, OutQueue, SharedFrame};
use crate::hub::channels::Channels;
use crate::hub::options::ChannelRules;
use crate::hub::stream::{process_nonce, StreamLimits, Streams};
use crate::hub::{HistoryReq, Hub, Member, MeshMsg, ReplyTo, SubscribeReq, Unsequenced};
use crate::ws::deflate::{self, Deflater, WindowBits};
use crate::ws::frame::{encode_frame_into, encode_header, unmask_into, MAX_SERVER_HEADER_LEN};
use crate::ws::session::{Handler, MessageKind};
use crate::ws::OpCode;

/// What a connection's handler may touch besides its own connection: the
/// core's broadcast hub and channels, its counters, a scratch buffer, the
/// send-buffer pool. Owned here and lent to one [`ConnIo`] at a time, so the
/// core's loop borrows it beside one connection with no split borrow to
/// write out.
pub struct Env {
    /// `/broadcast` subscribers and the pass's frames.
    pub hub: Hub,
    /// Named channels: this core's subscribers.
    pub channels: Channels,
    /// The streams this core owns (sequencing, history, presence).
    pub streams: Streams,
    /// Channel options by pattern.
    pub rules: Rc<ChannelRules>,
    /// The base of this process's client ids.
    pub nonce: u64,
    /// The connections' message counters.
    pub stats: MsgStats,
    /// Reused for `/ws` replies and HTTP responses.
    pub scratch: Vec<u8>,
    /// Send buffers for every connection's out-queue.
    pub pool: BufPool,
    /// The core's permessage-deflate compressors, shared by every
    /// connection that negotiated it.
    pub deflater: Deflater,
    /// The limits and heartbeat settings applied per connection.
    pub policy: Policy,
    /// This pass's time on the core's clock (read once per pass).
    pub now_us: u64,
}

impl Env {
    /// The state of core `me` of `cores`, with the default channel options
    /// and engine limits (benchmarks, tests).
    pub fn new(me: usize, cores: usize, policy: Policy) -> Env {
        let limits = StreamLimits {
            history_max_bytes: 64 << 20,
            presence_max_clients: 1000,
            answer_max_bytes: policy.max_queue,
        };
        Env::with_channels(me, cores, policy, Rc::default(), limits, process_nonce())
    }

    /// The state of core `me` of `cores`: channel options by pattern, the
    /// engine's limits, the process's nonce (epochs, client ids).
    pub fn with_channels(
        me: usize,
        cores: usize,
        policy: Policy,
        rules: Rc<ChannelRules>,
        limits: StreamLimits,
        nonce: u64,
    ) -> Env {
        Env {
            hub: Hub::default(),
            channels: Channels::new(me, cores),
            streams: Streams::new(me, rules.clone(), limits, nonce),
            rules,
            nonce,
            stats: MsgStats::default(),
            scratch: Vec::new(),
            pool: BufPool::default(),
            deflater: Deflater::new(deflate::DEFAULT_LEVEL, deflate::DEFAULT_MIN_BYTES),
            policy,
            now_us: 0,
        }
    }

    /// Messages queued for other cores so far (a handler that grew it made
    /// cross-core traffic).
    #[inline]
    pub fn mesh_traffic(&self) -> usize {
        self.hub.outbox.len() + self.channels.outgoing_len()
    }

    /// Writes a `/ws` message with `write` and queues it to `out` as one
    /// text frame, compressed for a peer that negotiated permessage-deflate
    /// (`window`). Counted as a reply.
    pub fn queue_text(
        &mut self,
        out: &mut OutQueue,
        window: Option<WindowBits>,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        self.scratch.clear();
        write(&mut self.scratch);
        let (pool, deflater) = (&mut self.pool, &mut self.deflater);
        out.write_message(pool, deflater, window, OpCode::Text, &self.scratch);
        self.stats.replies += 1;
    }

    /// The id a `/ws` connection's `welcome` names, from its per-core
    /// sequence number: unique in the process, and across restarts (the
    /// nonce is random).
    pub fn client_id(&self, seq: u64) -> Box<str> {
        client_id(self.nonce, self.channels.me(), seq)
    }
}

/// `<nonce>-<core>-<seq>`: see [`Env::client_id`].
pub(crate) fn client_id(nonce: u64, core: usize, seq: u64) -> Box<str> {
    format!("{:012x}-{core}-{seq}", nonce & 0xffff_ffff_ffff).into_boxed_str()
}

/// The [`Handler`] a session talks to while it parses one read: the
/// connection's queue for its own replies, the core's [`Env`] for the rest.
pub struct ConnIo<'a> {
    key: ConnKey,
    out: &'a mut OutQueue,
    ctl: &'a mut ConnCtl,
    env: &'a mut Env,
    /// The window its permessage-deflate agreement allows, if it has one.
    deflate: Option<WindowBits>,
    /// Set when a reply was refused because the backlog was over the bound:
    /// the peer is not reading, and the owner closes it with 1008.
    pub overflowed: bool,
    /// Set when the client went over its message rate: the owner closes it
    /// with 1008; messages after that in the same read are dropped.
    pub rate_limited: bool,
    /// Set when the client went over its publish rate: closed with 1008.
    pub publish_limited: bool,
    /// Test hooks on the whole core (failpoints on), acted on by the owner
    /// outside any `catch_unwind`.
    pub core_hook: CoreHook,
    /// Bytes of the reply `copy_masked` wrote last, for `withdraw_copy`.
    last_copy: usize,
    /// Pongs queued during this read, and where the last one ends (queue
    /// length right after it) and its size: a flood's pongs are coalesced.
    pongs: u32,
    pong_end: usize,
    pong_len: usize,
}

impl<'a> ConnIo<'a> {
    /// A handler for one connection's read; `deflate`: the window it
    /// negotiated permessage-deflate with, if it did.
    pub fn new(
        key: ConnKey,
        out: &'a mut OutQueue,
        ctl: &'a mut ConnCtl,
        env: &'a mut Env,
        deflate: Option<WindowBits>,
    ) -> ConnIo<'a> {
        ConnIo {
            key,
            out,
            ctl,
            env,
            deflate,
            overflowed: false,
            rate_limited: false,
            publish_limited: false,
            core_hook: CoreHook::None,
            last_copy: 0,
            pongs: 0,
            pong_end: 0,
            pong_len: 0,
        }
    }

    #[inline]
    fn route(&self) -> Option<Route> {
        self.ctl.endpoint.route()
    }

    /// A consumer is "slow" when the backlog it has not read is over the
    /// bound at the moment something new is queued. One message larger than
    /// the bound (up to `--max-message-bytes`) is still delivered.
    #[inline]
    fn backlogged(&mut self) -> bool {
        if self.out.cost() > self.env.policy.max_queue {
            self.overflowed = true;
        }
        self.overflowed
    }

    /// Counts a data message against the rate limit (token bucket, refilled
    /// by elapsed time) and the idle clock. Returns whether to act on it.
    #[inline]
    fn admit(&mut self, len: usize) -> bool {
        if self.rate_limited {
            return false;
        }
        let now = self.env.now_us;
        self.ctl.last_msg_us = now;
        if let Some(rate) = &self.env.policy.msg_rate {
            if !rate.admit(&mut self.ctl.msg_tat, now * 1000) {
                self.rate_limited = true;
                return false;
            }
        }
        self.env.stats.messages_in += 1;
        self.env.stats.bytes_in += len as u64;
        true
    }

    /// Counts a publish (a `/broadcast` message, a `/ws` publish) against
    /// the connection's publish rate. Returns whether to act on it; past
    /// the rate the owner closes the connection with 1008.
    #[inline]
    fn admit_publish(&mut self) -> bool {
        let Some(rate) = &self.env.policy.publish_rate else {
            return true;
        };
        if self.publish_limited {
            return false;
        }
        if !rate.admit(&mut self.ctl.publish_tat, self.env.now_us * 1000) {
            self.publish_limited = true;
            return false;
        }
        true
    }

    /// Queues a `/ws` reply (JSON text written by `write`) as a text frame.
    fn reply(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.backlogged() {
            return;
        }
        self.env.queue_text(self.out, self.deflate, write);
    }

    fn error(&mut self, id: Option<u64>, code: ErrorCode, message: &str) {
        self.env.stats.protocol_errors += 1;
        self.reply(|v| protocol::write_error(id, code, message, v));
    }

    /// Whether the token's claims (if any) allow `channel`.
    fn allowed(&mut self, channel: &str, id: Option<u64>) -> bool {
        let ok = match &self.ctl.endpoint {
            Endpoint::Channels(ws) => ws.claims.as_ref().is_none_or(|c| c.allows(channel)),
            _ => true,
        };
        if !ok {
            self.env.stats.claims_denied += 1;
            let msg = format!("the token does not allow channel \"{channel}\"");
            self.error(id, ErrorCode::Forbidden, &msg);
        }
        ok
    }

    fn ws_message(&mut self, text: &[u8]) {
        let msg = match protocol::parse_client(text) {
            Ok(m) => m,
            Err(e) => return self.error(e.id, e.code, &e.message),
        };
        match msg {
            ClientMsg::Ping { id } => self.reply(|v| protocol::write_pong(id, v)),
            ClientMsg::Subscribe {
                channel,
                id,
                since,
                presence,
                join_leave,
            } => self.subscribe(&channel, id, since, presence, join_leave),
            ClientMsg::Unsubscribe { channel, id } => self.unsubscribe(&channel, id),
            ClientMsg::Publish {
                channel,
                payload,
                id,
            } => self.publish(&channel, payload.get().as_bytes(), id),
            ClientMsg::History {
                channel,
                id,
                limit,
                since,
            } => self.history(&channel, id, limit, since),
            ClientMsg::Presence { channel, id } => self.presence(&channel, id),
        }
    }

    /// Sends `msg` to `channel`'s owner (this core's loop, if it is the
    /// owner).
    fn send_to_owner(&mut self, channel: &str, msg: MeshMsg) {
        let owner = self.env.channels.owner_of(channel);
        self.env.channels.send(owner, msg);
    }

    fn me(&self) -> u16 {
        self.env.channels.me() as u16
    }

    /// Publishes: the owner numbers it, fans it out and answers with its
    /// offset; the ack waits for that.
    fn publish(&mut self, channel: &str, payload: &[u8], id: Option<u64>) {
        if !self.allowed(channel, id) {
            return;
        }
        if !self.env.rules.resolve(channel).allow_publish {
            let msg = format!("channel \"{channel}\" takes publications from the API only");
            return self.error(id, ErrorCode::PublishDisabled, &msg);
        }
        if !self.admit_publish() {
            return;
        }
        self.env.stats.publishes += 1;
        let me = self.env.channels.me();
        // This core numbers it: no copy but the frame's, no ring push —
        // unless a request of this pass waits in the queue for this core
        // (this connection's subscribe, say), which it must not overtake.
        if self.env.channels.owner_of(channel) == me && !self.env.channels.queued_for_me() {
            let now = self.env.now_us;
            let position = self
                .env
                .streams
                .sequence(me, ReplyTo::Nobody, channel, payload, now);
            return self.reply(|v| protocol::write_position_ack(id, position, v));
        }
        let msg = MeshMsg::Sequence(Box::new(Unsequenced {
            from: me as u16,
            reply: ReplyTo::Ws { key: self.key, id },
            channel: channel.into(),
            payload: payload.into(),
        }));
        self.send_to_owner(channel, msg);
    }

    fn subscribe(
        &mut self,
        channel: &str,
        id: Option<u64>,
        since: Option<Since>,
        presence: bool,
        join_leave: bool,
    ) {
        if !self.allowed(channel, id) {
            return;
        }
        let opts = self.env.rules.resolve(channel);
        let tracked = opts.tracked();
        if presence && !opts.presence {
            return self.error(id, ErrorCode::PresenceDisabled, &no_presence(channel));
        }
        if join_leave && !opts.join_leave {
            let msg = format!("channel \"{channel}\" has no join/leave events");
            return self.error(id, ErrorCode::JoinLeaveDisabled, &msg);
        }
        let max = self.env.policy.max_subscriptions;
        let known = self.env.channels.lookup(channel);
        let Endpoint::Channels(ws) = &mut self.ctl.endpoint else {
            return;
        };
        let listed = known.is_some_and(|i| ws.subs.contains(&i));
        let full = !listed && ws.subs.len() >= max;
        if full || ws.held_acks as usize >= max {
            self.env.stats.subscription_limit += 1;
            debug!(limit = max, "subscription refused: --max-subscriptions");
            let msg = if full {
                format!("at most {max} subscriptions per connection")
            } else {
                format!("at most {max} subscribes waiting for an answer per connection")
            };
            return self.error(id, ErrorCode::TooManySubscriptions, &msg);
        }
        let key = self.key;
        let channels = &mut self.env.channels;
        let idx = channels.entry(channel, tracked);
        if !listed {
            ws.subs.push(idx);
        }
        // This core already receives the channel: everything after the
        // offset it delivered last is still to come, so the answer is here
        // — unless the owner has something to add (presence, recovery).
        // A subscribe of this connection still waiting for the owner goes
        // the same way, so the answers keep their order.
        let live = channels
            .live_position(idx)
            .filter(|_| !channels.is_joining(idx, key));
        let local = match live {
            Some(pos) if !tracked && !presence => match since {
                None => Some((pos, None)),
                Some(s) if s.epoch != pos.epoch || s.offset >= pos.offset => {
                    Some((pos, Some(s == pos)))
                }
                Some(_) => None,
            },
            _ => None,
        };
        if let Some((pos, recovered)) = local {
            channels.add(idx, key, false);
            self.env.stats.count_recovery(recovered);
            return self.reply(|v| protocol::write_subscribe_ack(id, pos, recovered, None, v));
        }
        let member = tracked.then(|| Member {
            client: client_id(self.env.nonce, channels.me(), ws.client),
            user: ws.claims.as_ref().map(|c| c.sub.clone().into_boxed_str()),
        });
        let req = SubscribeReq {
            from: channels.me() as u16,
            channel: channels.name(idx).unwrap_or_else(|| channel.into()),
            key,
            id,
            since,
            member,
            want_presence: presence,
        };
        channels.request(idx, req, join_leave);
        ws.held_acks += 1;
    }

    fn unsubscribe(&mut self, channel: &str, id: Option<u64>) {
        let idx = self.env.channels.lookup(channel);
        let Endpoint::Channels(ws) = &mut self.ctl.endpoint else {
            return;
        };
        let Some(pos) = idx.and_then(|i| ws.subs.iter().position(|&s| s == i)) else {
            let msg = format!("not subscribed to \"{channel}\"");
            return self.error(id, ErrorCode::NotSubscribed, &msg);
        };
        let idx = ws.subs.swap_remove(pos);
        let client = ws.client;
        let owed = leave_channel(self.env, self.key, client, idx, Some(id));
        if !owed {
            self.reply(|v| protocol::write_ack(id, v));
        }
    }

    fn history(
        &mut self,
        channel: &str,
        id: Option<u64>,
        limit: Option<u64>,
        since: Option<Since>,
    ) {
        if !self.allowed(channel, id) {
            return;
        }
        let cap = self.env.policy.history_max_limit;
        let req = match history_request(&self.env.rules, channel, limit, since, cap) {
            Ok(r) => r,
            Err((code, msg)) => return self.error(id, code, &msg),
        };
        let msg = MeshMsg::History(Box::new(HistoryReq {
            from: self.me(),
            reply: ReplyTo::Ws { key: self.key, id },
            ..req
        }));
        self.send_to_owner(channel, msg);
    }

    fn presence(&mut self, channel: &str, id: Option<u64>) {
        if !self.allowed(channel, id) {
            return;
        }
        if !self.env.rules.resolve(channel).presence {
            return self.error(id, ErrorCode::PresenceDisabled, &no_presence(channel));
        }
        let msg = MeshMsg::Presence {
            from: self.me(),
            reply: ReplyTo::Ws { key: self.key, id },
            channel: channel.into(),
        };
        self.send_to_owner(channel, msg);
    }
}

/// The `presence_disabled` message (`/ws` and the API say the same).
pub(crate) fn no_presence(channel: &str) -> String {
    format!("channel \"{channel}\" keeps no presence")
}

/// Checks a history read against the channel's options and the cap; the
/// request's `from` and `reply` are the caller's to fill in.
pub(crate) fn history_request(
    rules: &ChannelRules,
    channel: &str,
    limit: Option<u64>,
    since: Option<Since>,
    cap: u32,
) -> Result<HistoryReq, (ErrorCode, String)> {
    if rules.resolve(channel).history_size == 0 {
        let msg = format!("channel \"{channel}\" keeps no history");
        return Err((ErrorCode::HistoryDisabled, msg));
    }
    let limit = limit.unwrap_or(u64::from(cap));
    if limit > u64::from(cap) {
        let msg = format!("limit {limit} is over the server's maximum of {cap}");
        return Err((ErrorCode::BadLimit, msg));
    }
    Ok(HistoryReq {
        from: 0,
        reply: ReplyTo::Nobody,
        channel: channel.into(),
        limit: limit as u32,
        since,
    })
}

/// Takes connection `key` (client number `client`) off channel `idx`:
/// tells the owner it left if the channel tracks presence, stops its
/// deliveries, and cancels a subscribe still waiting for the owner.
/// `unsub_ack`: the unsubscribe's id, when one asked. Returns whether that
/// ack is owed later (after a waiting subscribe's).
pub(crate) fn leave_channel(
    env: &mut Env,
    key: ConnKey,
    client: u64,
    idx: u32,
    unsub_ack: Option<Option<u64>>,
) -> bool {
    let channels = &mut env.channels;
    if channels.tracked(idx) {
        let id = client_id(env.nonce, channels.me(), client);
        channels.leave(idx, id);
    }
    channels.remove(idx, key);
    channels.cancel(idx, key, unsub_ack)
}

impl Handler for ConnIo<'_> {
    #[inline]
    fn on_message(&mut self, kind: MessageKind, payload: &[u8]) {
        if !self.admit(payload.len()) {
            return;
        }
        if self.env.policy.failpoints {
            match payload {
                b"ringcast:panic" => panic!("failpoint: a handler panic requested by the client"),
                b"ringcast:fail-core" => {
                    self.core_hook = CoreHook::Fail;
                    return;
                }
                // Echoed (on /echo) before the core stalls, so the client
                // knows when it has.
                b"ringcast:stall-core" => self.core_hook = CoreHook::Stall,
                b"ringcast:resume-cores" => {
                    self.core_hook = CoreHook::Resume;
                    return;
                }
                _ => {}
            }
        }
        match self.route() {
            Some(Route::Echo) if !self.backlogged() => {
                let env = &mut *self.env;
                let (pool, deflater) = (&mut env.pool, &mut env.deflater);
                self.out
                    .write_message(pool, deflater, self.deflate, kind.opcode(), payload);
                env.stats.replies += 1;
            }
            // Framed once here; every recipient gets a reference.
            Some(Route::Broadcast) if self.admit_publish() => {
                let frame = Frame::new(SharedFrame::encode(kind.opcode(), payload));
                self.env.hub.outbox.push(frame);
            }
            None | Some(Route::Echo | Route::Broadcast) => {}
            Some(Route::Channels) => match kind {
                MessageKind::Text => self.ws_message(payload),
                MessageKind::Binary => self.error(
                    None,
                    ErrorCode::BinaryUnsupported,
                    "send JSON messages as text frames",
                ),
            },
        }
    }

    /// The echo unmasks while it copies the payload into its reply: one
    /// pass over the bytes instead of two.
    #[inline]
    fn copy_masked(&mut self, kind: MessageKind, masked: &[u8], mask: [u8; 4]) -> Option<&[u8]> {
        // A peer with permessage-deflate gets its echo compressed (from the
        // unmasked payload, in `on_message`).
        if self.route() != Some(Route::Echo)
            || self.deflate.is_some()
            || self.backlogged()
            || self.env.policy.failpoints
        {
            return None;
        }
        if !self.admit(masked.len()) {
            return None;
        }
        let mut hdr = [0u8; MAX_SERVER_HEADER_LEN];
        let h = encode_header(kind.opcode(), masked.len(), &mut hdr);
        self.last_copy = h + masked.len();
        self.env.stats.replies += 1;
        let frame = self.out.write_with(&mut self.env.pool, |v| {
            v.reserve(h + masked.len());
            v.extend_from_slice(&hdr[..h]);
            unmask_into(masked, mask, v);
        });
        frame.get(h..)
    }

    #[inline]
    fn withdraw_copy(&mut self) {
        self.env.stats.replies -= 1;
        self.out.unwrite(self.last_copy, &mut self.env.pool);
        self.last_copy = 0;
    }

    #[inline]
    fn send_control(&mut self, opcode: OpCode, payload: &[u8]) {
        // Close frames always go out; pongs to a peer that does not read
        // count against its backlog like any reply.
        if opcode != OpCode::Close && self.backlogged() {
            return;
        }
        if opcode == OpCode::Pong {
            self.pongs += 1;
            if self.pongs > PONG_BURST
                && self.pong_len > 0
                && self.out.queued_bytes() == self.pong_end
            {
                self.out.unwrite(self.pong_len, &mut self.env.pool);
                self.env.stats.pongs_coalesced += 1;
            }
        }
        let frame = self.out.write_with(&mut self.env.pool, |v| {
            encode_frame_into(opcode, payload, v)
        });
        self.pong_len = if opcode == OpCode::Pong {
            frame.len()
        } else {
            0
        };
        self.pong_end = self.out.queued_bytes();
    }

    fn on_pong(&mut self, payload: &[u8]) {
        let policy = &self.env.policy.heartbeat;
        if let Some(p) = self.ctl.beat.pong(payload, self.env.now_us, policy) {
            self.env.stats.record_rtt(p.rtt_us);
        }
    }
}
