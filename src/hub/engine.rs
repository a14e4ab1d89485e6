//! The channel engine's interface: what a core asks of the engine that owns
//! a channel's stream (number a publication, record a subscriber core,
//! recover, read history, track presence) and what comes back.
//!
//! These are plain data, carried as [`MeshMsg`](super::MeshMsg) variants:
//! `Sequence`, `Subscribe`, `Leave`, `Withdraw`, `History` and `Presence`
//! go to the engine; `Sequenced`, `Subscribed`, `HistoryAnswer`,
//! `PresenceAnswer` and, in offset order, `Publish` and `Event` come back.
//! The in-memory engine ([`super::stream`]) runs on the channel's owner
//! core and answers through the mesh; a broker-backed engine answers the
//! same messages from its own thread. The cores' side ([`super::channels`])
//! only relies on one property: an engine's answers and publications reach
//! a core in the order the engine sent them.

use std::sync::Arc;

use crate::conn::{ConnKey, SharedFrame};

/// Who an owner's answer is for, carried through the request and back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// Nobody (an embedding program's `Publisher`).
    Nobody,
    /// A `/ws` connection's request `id`.
    Ws { key: ConnKey, id: Option<u64> },
    /// Entry `index` of an HTTP API request waiting on core `ticket`.
    Api { ticket: u32, index: u32 },
}

/// A point in a channel's stream: which history (`epoch`) and how far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Position {
    /// Identifies one continuous history of the channel.
    pub epoch: u64,
    /// The latest offset (0: nothing published yet).
    pub offset: u64,
}

/// A client as presence and join/leave show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The connection's id from its `welcome`.
    pub client: Box<str>,
    /// The token's `sub`, when auth is on.
    pub user: Option<Box<str>>,
}

/// A publication on its way to the channel's owner, which numbers it.
pub struct Unsequenced {
    /// The core to answer.
    pub from: u16,
    /// Who waits for the offset.
    pub reply: ReplyTo,
    /// The channel name (validated).
    pub channel: Box<str>,
    /// The payload, valid JSON, exactly as the publisher sent it.
    pub payload: Box<[u8]>,
}

/// A subscribe the owner must see: the first one of a channel on a core
/// (interest), one asking for recovery or presence, and every one on a
/// channel that tracks presence.
pub struct SubscribeReq {
    /// The subscriber's core.
    pub from: u16,
    /// The channel (this core's name handle).
    pub channel: Arc<str>,
    /// The connection and its request id.
    pub key: ConnKey,
    /// Request id to echo.
    pub id: Option<u64>,
    /// Where the client's copy of the stream ends, for recovery.
    pub since: Option<Position>,
    /// The member to add to presence (channels that track it).
    pub member: Option<Member>,
    /// Whether the ack carries the presence list.
    pub want_presence: bool,
}

impl SubscribeReq {
    /// The answer to this subscribe, addressed to its core: both engines
    /// answer through this, after every publication up to `position`.
    pub fn reply(
        self,
        position: Position,
        recovered: Option<bool>,
        frames: Vec<SharedFrame>,
        presence: Option<PresenceList>,
    ) -> (usize, super::MeshMsg) {
        (
            self.from as usize,
            super::MeshMsg::Subscribed(Box::new(SubscribeReply {
                channel: self.channel,
                key: self.key,
                id: self.id,
                position,
                recovered,
                frames,
                presence,
            })),
        )
    }
}

/// The owner's answer to a [`SubscribeReq`]: sent after every publication
/// up to `position` on the same ring, so the subscriber's core has seen
/// exactly those when it arrives.
pub struct SubscribeReply {
    /// The channel.
    pub channel: Arc<str>,
    /// The connection and its request id.
    pub key: ConnKey,
    /// Request id to echo.
    pub id: Option<u64>,
    /// The stream's position now.
    pub position: Position,
    /// With `since`: whether the publications after it were recovered.
    pub recovered: Option<bool>,
    /// The recovered publications' frames, oldest first.
    pub frames: Vec<SharedFrame>,
    /// The presence list, when asked for.
    pub presence: Option<PresenceList>,
}

/// Presence of one channel: the exact count and the first clients.
#[derive(Debug, Default)]
pub struct PresenceList {
    /// How many clients are subscribed.
    pub count: u64,
    /// Up to `--presence-max-clients` of them.
    pub clients: Vec<Member>,
}

/// A history read: the last `limit` publications, or the first `limit`
/// after `since`.
pub struct HistoryReq {
    /// The core to answer.
    pub from: u16,
    /// Who waits.
    pub reply: ReplyTo,
    /// The channel.
    pub channel: Box<str>,
    /// Most publications to return.
    pub limit: u32,
    /// Start after this point of the stream.
    pub since: Option<Position>,
}

/// What a history read found.
pub enum HistoryAnswer {
    /// The stream's position and the publications (frame, payload start).
    Found {
        /// The stream's position now.
        position: Position,
        /// Oldest first.
        publications: Vec<(u64, SharedFrame, u32)>,
    },
    /// `since` named another epoch: the history it refers to is gone.
    EpochMismatch {
        /// The current epoch.
        current: u64,
    },
}
