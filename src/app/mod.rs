//! The endpoints: what a message does once the protocol layer has it.
//!
//! Kept apart from the parser and the I/O loop (as uWebSockets keeps its App
//! apart from its parser), and an enum rather than trait objects: the hot
//! path is a `match`, not an indirect call.

use crate::hub::frame::{Frame, SharedFrame};
use crate::shard::outq::{BufPool, OutQueue};
use crate::ws::frame::{encode_frame_into, encode_header, unmask_into, MAX_SERVER_HEADER_LEN};
use crate::ws::handshake::Target;
use crate::ws::session::{Handler, MessageKind};
use crate::ws::OpCode;

/// An endpoint a client can upgrade on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Every message comes back to its sender with its opcode.
    Echo,
    /// Every message goes to every `/broadcast` client on every core.
    Broadcast,
}

/// A plain HTTP resource for operators and load balancers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `GET /healthz`: 200 while the process serves requests at all.
    Health,
    /// `GET /readyz`: 200 once every core listens, 503 once draining.
    Ready,
    /// `GET /metrics`: every core's counters, Prometheus text format.
    Metrics,
}

impl Route {
    /// Maps a request path to an endpoint.
    pub fn from_path(path: &str) -> Option<Route> {
        match path {
            "/echo" => Some(Route::Echo),
            "/broadcast" => Some(Route::Broadcast),
            _ => None,
        }
    }

    /// Maps a request path to a WebSocket endpoint or an HTTP resource.
    pub fn target(path: &str) -> Option<Target<Route, Resource>> {
        match path {
            "/healthz" => Some(Target::Http(Resource::Health)),
            "/readyz" => Some(Target::Http(Resource::Ready)),
            "/metrics" => Some(Target::Http(Resource::Metrics)),
            _ => Route::from_path(path).map(Target::WebSocket),
        }
    }
}

/// Per-turn counters a connection's messages update.
#[derive(Default, Clone, Copy)]
pub struct MsgStats {
    pub messages_in: u64,
    pub bytes_in: u64,
}

/// The [`Handler`] a session talks to while it parses one read: the
/// connection's queue for its own replies, the core's outbox for broadcasts.
pub struct ConnIo<'a> {
    pub route: Route,
    pub out: &'a mut OutQueue,
    pub pool: &'a mut BufPool,
    pub outbox: &'a mut Vec<Frame>,
    pub stats: &'a mut MsgStats,
    /// The connection's backlog bound (`--max-send-queue-bytes`).
    pub max_queue: usize,
    /// Set when a reply was refused because the backlog was over the bound:
    /// the peer is not reading, and the owner closes it with 1008.
    pub overflowed: bool,
    /// Bytes of the reply `copy_masked` wrote last, for `withdraw_copy`.
    last_copy: usize,
}

impl<'a> ConnIo<'a> {
    /// A handler for one connection's read.
    pub fn new(
        route: Route,
        out: &'a mut OutQueue,
        pool: &'a mut BufPool,
        outbox: &'a mut Vec<Frame>,
        stats: &'a mut MsgStats,
        max_queue: usize,
    ) -> ConnIo<'a> {
        ConnIo {
            route,
            out,
            pool,
            outbox,
            stats,
            max_queue,
            overflowed: false,
            last_copy: 0,
        }
    }

    /// A consumer is "slow" when the backlog it has not read is over the
    /// bound at the moment something new is queued. One message larger than
    /// the bound (up to `--max-message-bytes`) is still delivered.
    #[inline]
    fn backlogged(&mut self) -> bool {
        if self.out.queued_bytes() > self.max_queue {
            self.overflowed = true;
        }
        self.overflowed
    }
}

impl Handler for ConnIo<'_> {
    #[inline]
    fn on_message(&mut self, kind: MessageKind, payload: &[u8]) {
        self.stats.messages_in += 1;
        self.stats.bytes_in += payload.len() as u64;
        match self.route {
            Route::Echo => {
                if !self.backlogged() {
                    self.out
                        .write_with(self.pool, |v| encode_frame_into(kind.opcode(), payload, v));
                }
            }
            // Framed once here; every recipient gets a reference.
            Route::Broadcast => self
                .outbox
                .push(Frame::new(SharedFrame::encode(kind.opcode(), payload))),
        }
    }

    /// The echo unmasks while it copies the payload into its reply: one
    /// pass over the bytes instead of two.
    #[inline]
    fn copy_masked(&mut self, kind: MessageKind, masked: &[u8], mask: [u8; 4]) -> Option<&[u8]> {
        if self.route != Route::Echo || self.backlogged() {
            return None;
        }
        self.stats.messages_in += 1;
        self.stats.bytes_in += masked.len() as u64;
        let mut hdr = [0u8; MAX_SERVER_HEADER_LEN];
        let h = encode_header(kind.opcode(), masked.len(), &mut hdr);
        self.last_copy = h + masked.len();
        let frame = self.out.write_with(self.pool, |v| {
            v.reserve(h + masked.len());
            v.extend_from_slice(&hdr[..h]);
            unmask_into(masked, mask, v);
        });
        frame.get(h..)
    }

    #[inline]
    fn withdraw_copy(&mut self) {
        self.out.unwrite(self.last_copy);
        self.last_copy = 0;
    }

    #[inline]
    fn send_control(&mut self, opcode: OpCode, payload: &[u8]) {
        // Close frames always go out; pongs to a peer that does not read
        // count against its backlog like any reply.
        if opcode == OpCode::Close || !self.backlogged() {
            self.out
                .write_with(self.pool, |v| encode_frame_into(opcode, payload, v));
        }
    }
}
