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
pub(crate) mod engine;
pub(crate) mod mesh;
pub(crate) mod name;
pub(crate) mod options;
pub(crate) mod stream;
pub(crate) mod wire;

use std::sync::Arc;

pub(crate) use broadcast::Hub;
pub(crate) use deliver::Recipients;
pub(crate) use engine::{
    HistoryAnswer, HistoryReq, Member, Position, PresenceList, ReplyTo, SubscribeReply,
    SubscribeReq, Unsequenced,
};

use crate::conn::SharedFrame;

/// Most cores one server can run: a channel's interest set is a bit set of
/// this many cores.
pub(crate) const MAX_CORES: usize = 256;

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
    /// From a broker engine: the request was not carried out (Redis is
    /// unreachable or refused it); `reason` says why, for the client.
    Refused {
        /// Who waits.
        reply: ReplyTo,
        /// Why, in words.
        reason: Box<str>,
    },
    /// From a broker engine, in offset order: the channel's stream was
    /// lost or restarted while this node was cut off, so its subscribers
    /// missed publications they cannot recover; they get the `reset`
    /// frame and delivery goes on from `position`.
    Reset {
        /// The channel.
        channel: Arc<str>,
        /// Where delivery goes on from.
        position: Position,
        /// The `reset` frame for every subscriber.
        frame: SharedFrame,
    },
    /// `GET /api/channels`: core `from` asks for this core's channels.
    ChannelsQuery { from: u16, query: u32 },
    /// The answer: every channel with local subscribers, and how many.
    ChannelsReply {
        query: u32,
        channels: Vec<(Arc<str>, u32)>,
    },
}
