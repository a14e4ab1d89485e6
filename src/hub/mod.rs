//! Fan-out: one core's `/broadcast` subscribers and named channels, the one
//! delivery loop both use, and the mesh that carries frames and channel
//! interest between cores.
//!
//! Nothing here is shared with another core except the mesh's SPSC rings;
//! nothing here sees a socket or the core's slab, only [`ConnKey`](crate::conn::ConnKey)s and
//! out-queues (through [`Recipients`]). Above `conn`, below `app`.

pub(crate) mod broadcast;
pub(crate) mod channels;
pub(crate) mod deliver;
pub(crate) mod mesh;
pub(crate) mod name;
pub(crate) mod options;
pub(crate) mod stream;
pub(crate) mod wire;

use std::sync::Arc;

pub(crate) use broadcast::Hub;
pub(crate) use deliver::Recipients;

use crate::conn::{ConnKey, SharedFrame};

/// Most cores one server can run: a channel's interest set is a bit set of
/// this many cores.
pub(crate) const MAX_CORES: usize = 256;

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

/// What one core sends another through its SPSC ring. Channel names travel
/// as `Arc<str>` so a name is allocated once per core that holds it, and
/// frames as [`SharedFrame`]s, encoded once by the channel's owner.
pub enum MeshMsg {
    /// A `/broadcast` frame for every `/broadcast` client.
    Broadcast(SharedFrame),
    /// To a channel's owner: number this publication and fan it out.
    Sequence(Box<Unsequenced>),
    /// From the owner: the publication's offset, for whoever waits.
    Sequenced {
        /// Who waits.
        reply: ReplyTo,
        /// Its place in the stream.
        position: Position,
    },
    /// From the owner, in offset order: a publication for this core's
    /// subscribers of `channel`.
    Publish {
        /// The channel.
        channel: Arc<str>,
        /// The publication's offset.
        offset: u64,
        /// The `message` frame.
        frame: SharedFrame,
    },
    /// From the owner: a `join`/`leave` frame for the subscribers that
    /// asked for events.
    Event {
        /// The channel.
        channel: Arc<str>,
        /// The event frame.
        frame: SharedFrame,
    },
    /// To the owner: a subscribe it must see.
    Subscribe(Box<SubscribeReq>),
    /// From the owner: its answer.
    Subscribed(Box<SubscribeReply>),
    /// To the owner: a member left (unsubscribed or closed).
    Leave {
        /// The channel.
        channel: Arc<str>,
        /// The client id.
        client: Box<str>,
    },
    /// To the owner: core `from` has no subscriber of `channel` left.
    Withdraw { channel: Arc<str>, from: u16 },
    /// To the owner: read history.
    History(Box<HistoryReq>),
    /// From the owner: the history read.
    HistoryAnswer {
        /// Who waits.
        reply: ReplyTo,
        /// What was found.
        answer: Box<HistoryAnswer>,
    },
    /// To the owner: who is subscribed to `channel`.
    Presence {
        /// The core to answer.
        from: u16,
        /// Who waits.
        reply: ReplyTo,
        /// The channel.
        channel: Box<str>,
    },
    /// From the owner: the presence list.
    PresenceAnswer {
        /// Who waits.
        reply: ReplyTo,
        /// The list.
        list: Box<PresenceList>,
    },
    /// `GET /api/channels`: core `from` asks for this core's channels.
    ChannelsQuery { from: u16, query: u32 },
    /// The answer: every channel with local subscribers, and how many.
    ChannelsReply {
        query: u32,
        channels: Vec<(Arc<str>, u32)>,
    },
}
