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

use std::sync::Arc;

pub(crate) use broadcast::Hub;
pub(crate) use deliver::Recipients;

use crate::conn::SharedFrame;

/// Most cores one server can run: a channel's interest set is a bit set of
/// this many cores.
pub(crate) const MAX_CORES: usize = 256;

/// What one core sends another through its SPSC ring. Channel names travel
/// as `Arc<str>` so a name is allocated once per core that holds it, and
/// frames as [`SharedFrame`]s, encoded once on the publishing core.
pub enum MeshMsg {
    /// A `/broadcast` frame for every `/broadcast` client.
    Broadcast(SharedFrame),
    /// A channel message for this core's subscribers of `channel`. Sent only
    /// to cores that announced interest in it.
    Publish {
        channel: Arc<str>,
        frame: SharedFrame,
    },
    /// Core `from` now has (`on`) or no longer has local subscribers of
    /// `channel`; an `on` is answered with [`MeshMsg::InterestAck`].
    Interest {
        channel: Arc<str>,
        from: u16,
        on: bool,
    },
    /// Core `from` has recorded an interest announcement: any publish it
    /// handles from now on reaches the announcing core.
    InterestAck { channel: Arc<str>, from: u16 },
    /// `GET /api/channels`: core `from` asks for this core's channels.
    ChannelsQuery { from: u16, query: u32 },
    /// The answer: every channel with local subscribers, and how many.
    ChannelsReply {
        query: u32,
        channels: Vec<(Arc<str>, u32)>,
    },
}
