//! The endpoints: what a message does once the protocol layer has it.
//!
//! Kept apart from the parser and the I/O loop (as uWebSockets keeps its App
//! apart from its parser), and an enum rather than trait objects: the hot
//! path is a `match`, not an indirect call.

pub mod api;
pub mod auth;
pub mod protocol;

use tracing::debug;

use crate::hub::channels::{Channels, Subscribed};
use crate::hub::frame::{Frame, SharedFrame};
use crate::shard::conn::{ConnCtl, ConnKey};
use crate::shard::heartbeat;
use crate::shard::outq::{BufPool, OutQueue};
use crate::ws::frame::{encode_frame_into, encode_header, unmask_into, MAX_SERVER_HEADER_LEN};
use crate::ws::handshake::Target;
use crate::ws::session::{Handler, MessageKind};
use crate::ws::OpCode;
use protocol::{ClientMsg, ErrorCode};

/// An endpoint a client can upgrade on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Every message comes back to its sender with its opcode.
    Echo,
    /// Every message goes to every `/broadcast` client on every core.
    Broadcast,
    /// `/ws`: typed JSON messages, channels, publish/subscribe.
    Channels,
}

/// A plain HTTP resource for operators, load balancers and backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `GET /healthz`: 200 while the process serves requests at all.
    Health,
    /// `GET /readyz`: 200 once every core listens, 503 once draining.
    Ready,
    /// `GET /metrics`: every core's counters, Prometheus text format.
    Metrics,
    /// `POST /api/publish`: publish to channels from a backend.
    Publish,
    /// `GET /api/channels`: channels and subscriber counts, all cores.
    ChannelList,
}

impl Route {
    /// Maps a request path to an endpoint.
    pub fn from_path(path: &str) -> Option<Route> {
        match path {
            "/echo" => Some(Route::Echo),
            "/broadcast" => Some(Route::Broadcast),
            "/ws" => Some(Route::Channels),
            _ => None,
        }
    }

    /// Maps a request path to a WebSocket endpoint or an HTTP resource.
    pub fn target(path: &str) -> Option<Target<Route, Resource>> {
        match path {
            "/healthz" => Some(Target::Http(Resource::Health)),
            "/readyz" => Some(Target::Http(Resource::Ready)),
            "/metrics" => Some(Target::Http(Resource::Metrics)),
            "/api/publish" => Some(Target::Http(Resource::Publish)),
            "/api/channels" => Some(Target::Http(Resource::ChannelList)),
            _ => Route::from_path(path).map(Target::WebSocket),
        }
    }
}

/// Upper bounds (microseconds) of the ping round-trip histogram buckets;
/// a last `+Inf` bucket is implied.
pub const RTT_BUCKETS_US: [u64; 14] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// Counters a connection's messages update (plain integers: one core).
/// `repr(C)` of `u64`s only: published to the metrics block word by word.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct MsgStats {
    pub messages_in: u64,
    pub bytes_in: u64,
    /// Replies queued to the sender (echoes, `/ws` acks, pongs, errors);
    /// fan-out deliveries are counted by the core.
    pub replies: u64,
    /// `/ws` and API publishes accepted.
    pub publishes: u64,
    /// `/ws` requests answered with an `error` message.
    pub protocol_errors: u64,
    /// Subscribe/publish refused by the token's channel claims.
    pub claims_denied: u64,
    /// Subscribes refused at `--max-subscriptions`.
    pub subscription_limit: u64,
    /// Pongs dropped because a later ping in the same read superseded them
    /// (ping floods).
    pub pongs_coalesced: u64,
    /// Ping round trips per bucket of [`RTT_BUCKETS_US`] (last: `+Inf`),
    /// not cumulative.
    pub rtt_buckets: [u64; RTT_BUCKETS_US.len() + 1],
    pub rtt_sum_us: u64,
    pub rtt_count: u64,
}

impl MsgStats {
    fn record_rtt(&mut self, rtt_us: u64) {
        let b = RTT_BUCKETS_US
            .iter()
            .position(|&le| rtt_us <= le)
            .unwrap_or(RTT_BUCKETS_US.len());
        self.rtt_buckets[b] += 1;
        self.rtt_sum_us += rtt_us;
        self.rtt_count += 1;
    }
}

/// Pings answered one by one in a single read; past this, each new pong
/// replaces the previous one if nothing was queued after it (RFC 6455
/// §5.5.3 lets an endpoint answer only the most recent ping). Autobahn's
/// ping cases send 10; a flood gets one pong per read.
pub const PONG_BURST: u32 = 32;

/// Per-connection limits and heartbeat settings the handlers apply.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The connection's backlog bound (`--max-send-queue-bytes`).
    pub max_queue: usize,
    /// Rate limit: tokens per microsecond (0: none) and bucket size.
    pub rate_per_us: f64,
    pub burst: f32,
    /// Publish rate limit: tokens per microsecond (0: none) and bucket.
    pub publish_rate_per_us: f64,
    pub publish_burst: f32,
    /// Channels per `/ws` connection.
    pub max_subscriptions: usize,
    pub heartbeat: heartbeat::Policy,
    /// Test hook (`RINGCAST_FAILPOINTS=1` in the environment, never a
    /// flag): a message `ringcast:panic` panics in the handler, so the test
    /// suite can check that a panic costs one connection, not the core.
    pub failpoints: bool,
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

/// `/ws` state of one connection.
#[derive(Default)]
pub struct WsConn {
    /// Channel indices in the core's registry.
    pub subs: Vec<u32>,
    /// Subscribe acks held on channels until other cores confirm (one per
    /// request, repeats included); bounded by `--max-subscriptions`, so a
    /// client repeating subscribes it does not read answers to cannot grow
    /// the channels' waiting lists.
    pub held_acks: u32,
    /// The token's claims when auth is on (channel patterns).
    pub claims: Option<auth::Claims>,
}

/// What a connection's handler may touch besides its own connection: the
/// core's broadcast outbox and channels, its counters, a scratch buffer.
pub struct Env<'a> {
    pub outbox: &'a mut Vec<Frame>,
    pub channels: &'a mut Channels,
    pub stats: &'a mut MsgStats,
    pub scratch: &'a mut Vec<u8>,
    pub policy: &'a Policy,
    /// This pass's time on the core's clock (read once per pass).
    pub now_us: u64,
}

/// The [`Handler`] a session talks to while it parses one read: the
/// connection's queue for its own replies, the core's [`Env`] for the rest.
pub struct ConnIo<'a, 'e> {
    route: Route,
    key: ConnKey,
    out: &'a mut OutQueue,
    ctl: &'a mut ConnCtl,
    pool: &'a mut BufPool,
    env: &'a mut Env<'e>,
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

impl<'a, 'e> ConnIo<'a, 'e> {
    /// A handler for one connection's read.
    pub fn new(
        route: Route,
        key: ConnKey,
        out: &'a mut OutQueue,
        ctl: &'a mut ConnCtl,
        pool: &'a mut BufPool,
        env: &'a mut Env<'e>,
    ) -> ConnIo<'a, 'e> {
        ConnIo {
            route,
            key,
            out,
            ctl,
            pool,
            env,
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
        let p = self.env.policy;
        if p.rate_per_us > 0.0 {
            let (tokens, refill) = (&mut self.ctl.tokens, &mut self.ctl.refill_us);
            if !take_token(tokens, refill, now, p.rate_per_us, p.burst) {
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
        let p = self.env.policy;
        if p.publish_rate_per_us <= 0.0 {
            return true;
        }
        if self.publish_limited {
            return false;
        }
        let (tokens, refill) = (&mut self.ctl.pub_tokens, &mut self.ctl.pub_refill_us);
        let now = self.env.now_us;
        if !take_token(tokens, refill, now, p.publish_rate_per_us, p.publish_burst) {
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
        let scratch = &mut *self.env.scratch;
        scratch.clear();
        write(scratch);
        self.out
            .write_with(self.pool, |v| encode_frame_into(OpCode::Text, scratch, v));
        self.env.stats.replies += 1;
    }

    fn error(&mut self, id: Option<u64>, code: ErrorCode, message: &str) {
        self.env.stats.protocol_errors += 1;
        self.reply(|v| protocol::write_error(id, code, message, v));
    }

    /// Whether the token's claims (if any) allow `channel`.
    fn allowed(&mut self, channel: &str, id: Option<u64>) -> bool {
        let ok = self
            .ctl
            .ws
            .as_ref()
            .and_then(|w| w.claims.as_ref())
            .is_none_or(|c| c.allows(channel));
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
            ClientMsg::Subscribe { channel, id } => self.subscribe(&channel, id),
            ClientMsg::Unsubscribe { channel, id } => self.unsubscribe(&channel, id),
            ClientMsg::Publish {
                channel,
                payload,
                id,
            } => {
                if !self.allowed(&channel, id) || !self.admit_publish() {
                    return;
                }
                // Framed once; every subscriber on every core shares it.
                let parts = protocol::message_parts(&channel, payload);
                let frame = Frame::new(SharedFrame::encode_parts(OpCode::Text, &parts));
                self.env.channels.publish(&channel, &frame);
                self.env.stats.publishes += 1;
                self.reply(|v| protocol::write_ack(id, v));
            }
        }
    }

    fn subscribe(&mut self, channel: &str, id: Option<u64>) {
        if !self.allowed(channel, id) {
            return;
        }
        let max = self.env.policy.max_subscriptions;
        let known = self.env.channels.lookup(channel);
        let ws = self.ctl.ws.get_or_insert_with(Box::default);
        let already = known.is_some_and(|i| ws.subs.contains(&i));
        let full = !already && ws.subs.len() >= max;
        if full || ws.held_acks as usize >= max {
            self.env.stats.subscription_limit += 1;
            debug!(limit = max, "subscription refused: --max-subscriptions");
            let msg = if full {
                format!("at most {max} subscriptions per connection")
            } else {
                format!("at most {max} subscribes waiting for confirmation per connection")
            };
            return self.error(id, ErrorCode::TooManySubscriptions, &msg);
        }
        let (idx, outcome) = self.env.channels.subscribe(self.key, channel, id);
        let (Subscribed::Now { new } | Subscribed::Pending { new }) = outcome;
        if new {
            ws.subs.push(idx);
        }
        match outcome {
            Subscribed::Now { .. } => self.reply(|v| protocol::write_ack(id, v)),
            Subscribed::Pending { .. } => ws.held_acks += 1,
        }
    }

    fn unsubscribe(&mut self, channel: &str, id: Option<u64>) {
        let idx = self.env.channels.lookup(channel);
        let ws = self.ctl.ws.get_or_insert_with(Box::default);
        match idx.and_then(|i| ws.subs.iter().position(|&s| s == i)) {
            Some(pos) => {
                let idx = ws.subs.swap_remove(pos);
                // A subscribe still waiting for confirmations is answered
                // first: every request gets its reply, in order.
                let held = self.env.channels.take_held_acks(self.key, idx);
                ws.held_acks = ws.held_acks.saturating_sub(held.len() as u32);
                for held in held {
                    self.reply(|v| protocol::write_ack(held, v));
                }
                self.env.channels.unsubscribe(self.key, idx);
                self.reply(|v| protocol::write_ack(id, v));
            }
            None => {
                let msg = format!("not subscribed to \"{channel}\"");
                self.error(id, ErrorCode::NotSubscribed, &msg);
            }
        }
    }
}

/// Token bucket: refills `tokens` by the time elapsed since `refill_us` at
/// `rate_per_us` up to `burst`, then takes one. Returns whether there was one.
#[inline]
fn take_token(
    tokens: &mut f32,
    refill_us: &mut u64,
    now_us: u64,
    rate_per_us: f64,
    burst: f32,
) -> bool {
    let elapsed = now_us.saturating_sub(*refill_us) as f64;
    let t = (*tokens as f64 + elapsed * rate_per_us).min(burst as f64);
    *refill_us = now_us;
    if t < 1.0 {
        *tokens = t as f32;
        return false;
    }
    *tokens = (t - 1.0) as f32;
    true
}

impl Handler for ConnIo<'_, '_> {
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
        match self.route {
            Route::Echo => {
                if !self.backlogged() {
                    self.out
                        .write_with(self.pool, |v| encode_frame_into(kind.opcode(), payload, v));
                    self.env.stats.replies += 1;
                }
            }
            // Framed once here; every recipient gets a reference.
            Route::Broadcast => {
                if self.admit_publish() {
                    self.env
                        .outbox
                        .push(Frame::new(SharedFrame::encode(kind.opcode(), payload)));
                }
            }
            Route::Channels => match kind {
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
        if self.route != Route::Echo || self.backlogged() || self.env.policy.failpoints {
            return None;
        }
        if !self.admit(masked.len()) {
            return None;
        }
        let mut hdr = [0u8; MAX_SERVER_HEADER_LEN];
        let h = encode_header(kind.opcode(), masked.len(), &mut hdr);
        self.last_copy = h + masked.len();
        self.env.stats.replies += 1;
        let frame = self.out.write_with(self.pool, |v| {
            v.reserve(h + masked.len());
            v.extend_from_slice(&hdr[..h]);
            unmask_into(masked, mask, v);
        });
        frame.get(h..)
    }

    #[inline]
    fn withdraw_copy(&mut self) {
        self.env.stats.replies -= 1;
        self.out.unwrite(self.last_copy, self.pool);
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
                self.out.unwrite(self.pong_len, self.pool);
                self.env.stats.pongs_coalesced += 1;
            }
        }
        let frame = self
            .out
            .write_with(self.pool, |v| encode_frame_into(opcode, payload, v));
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
