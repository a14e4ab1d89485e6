//! The broadcast hub: one per core.
//!
//! Messages published on this core collect in an outbox during a loop pass;
//! frames from other cores collect in an inbox. At the end of the pass the
//! hub walks its local subscribers once and queues the whole batch to each
//! (a reference per frame, no copy), then hands the outbox to the other
//! cores: one push per frame into each peer's SPSC ring of glommio's channel
//! mesh. Nothing here is shared with another core except those rings.

pub mod channels;
pub mod frame;
pub mod mesh;

use std::sync::Arc;

use frame::{Frame, SharedFrame};

use crate::shard::conn::{Conn, ConnKey, Slab};
use crate::shard::outq::BufPool;
#[cfg(doc)]
use crate::shard::outq::OutQueue;

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

/// Local subscribers and the frames waiting for them.
#[derive(Default)]
pub struct Hub {
    subscribers: Vec<ConnKey>,
    /// Published on this core during the current pass, in order.
    pub outbox: Vec<Frame>,
    /// Received from other cores, in the order each core sent them.
    pub inbox: Vec<Frame>,
}

/// What one fan-out did.
#[derive(Default, Debug, Clone, Copy)]
pub struct FanOut {
    pub deliveries: u64,
}

impl Hub {
    /// Adds a connection; returns its slot for [`Hub::unsubscribe`].
    pub fn subscribe(&mut self, key: ConnKey) -> u32 {
        self.subscribers.push(key);
        (self.subscribers.len() - 1) as u32
    }

    /// Removes the subscriber at `slot` in O(1); the subscriber moved into
    /// the hole is returned so its stored slot can be updated.
    pub fn unsubscribe(&mut self, slot: u32) -> Option<ConnKey> {
        let slot = slot as usize;
        if slot >= self.subscribers.len() {
            return None;
        }
        self.subscribers.swap_remove(slot);
        self.subscribers.get(slot).copied()
    }

    /// Local subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    /// Whether frames are waiting for fan-out.
    pub fn has_pending(&self) -> bool {
        !self.outbox.is_empty() || !self.inbox.is_empty()
    }

    /// Queues every pending frame to every local subscriber, in order,
    /// checking each subscriber's bound before every frame (see
    /// [`OutQueue::push_frames`]). `touched` is called once per subscriber
    /// with whether it went over the bound (it is about to be closed as a
    /// slow consumer). The outbox is left for the mesh.
    pub fn fan_out(
        &mut self,
        conns: &mut Slab,
        pool: &mut BufPool,
        max_queue: usize,
        mut touched: impl FnMut(ConnKey, &mut Conn, bool),
    ) -> FanOut {
        if self.outbox.is_empty() && self.inbox.is_empty() {
            return FanOut::default();
        }
        let mut deliveries = 0;
        for &key in &self.subscribers {
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            let batch = self.outbox.iter().chain(self.inbox.iter());
            let pushed = conn.out.push_frames(batch, max_queue, pool);
            deliveries += pushed.frames;
            touched(key, conn, pushed.over);
        }
        self.inbox.clear();
        FanOut { deliveries }
    }
}
