//! `/broadcast`: every local subscriber gets every frame published on any
//! core.
//!
//! Messages published on this core collect in an outbox during a loop pass;
//! frames from other cores collect in an inbox. At the end of the pass the
//! hub walks its local subscribers once and queues the whole batch to each
//! (a reference per frame, no copy); the loop then hands the outbox to the
//! other cores through the mesh.

use super::deliver::{deliver, Recipients};
use crate::conn::{BufPool, ConnKey, Frame};
use crate::ws::deflate::Deflater;

/// Local subscribers and the frames waiting for them.
#[derive(Default)]
pub struct Hub {
    subscribers: Vec<ConnKey>,
    /// Published on this core during the current pass, in order.
    pub outbox: Vec<Frame>,
    /// Received from other cores, in the order each core sent them.
    pub inbox: Vec<Frame>,
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
    /// [`deliver`]). The outbox is left for the mesh. Returns the number of
    /// deliveries.
    pub fn fan_out(
        &mut self,
        pool: &mut BufPool,
        deflater: &mut Deflater,
        max_queue: usize,
        recipients: &mut impl Recipients,
    ) -> u64 {
        if self.outbox.is_empty() && self.inbox.is_empty() {
            return 0;
        }
        let batch = self.outbox.iter().chain(self.inbox.iter());
        let n = deliver(
            self.subscribers.iter().copied(),
            batch,
            pool,
            deflater,
            max_queue,
            recipients,
        );
        self.inbox.clear();
        n
    }
}
