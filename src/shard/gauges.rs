//! Publishing the core's counters where a scrape on any core reads them,
//! and the gauges that need a walk over every connection.

use super::{Shard, GAUGE_PERIOD};

impl Shard {
    /// Copies this core's counters where a scrape on any core can read them.
    pub(super) fn publish_metrics(&mut self) {
        if self.now.saturating_duration_since(self.gauges_at) >= GAUGE_PERIOD {
            self.gauges_at = self.now;
            self.refresh_gauges();
        }
        let mut s = self.stats;
        s.msg = self.env.stats;
        s.deflate = self.env.deflater.stats.plus(&self.inflater.stats);
        if let Some(m) = &self.mesh {
            s.mesh_backlog = m.backlog_len() as u64;
            s.mesh_dropped = m.counters().dropped;
        }
        s.paused_connections = self.paused.len() as u64;
        s.sendmsg_headers = self.sendmsgs.len() as u64;
        s.send_pool_bytes = self.env.pool.bytes() as u64;
        s.channels = self.env.channels.len() as u64;
        s.subscriptions = self.env.channels.subscriptions() as u64;
        let streams = &self.env.streams;
        s.streams = streams.len() as u64;
        s.history_publications = streams.history_entries() as u64;
        s.history_bytes = streams.history_bytes() as u64;
        s.history_evicted = streams.counters.evicted;
        s.history_expired = streams.counters.expired;
        s.presence_clients = streams.members() as u64;
        s.sequenced = streams.counters.sequenced;
        self.control.metrics[self.id].publish(&s, self.conns.len());
    }

    /// The gauges that need a walk over every connection; about once a
    /// second, a few nanoseconds per connection.
    fn refresh_gauges(&mut self) {
        let (mut queued, mut memory, mut suspects, mut tls) = (0u64, 0u64, 0u64, 0u64);
        self.conns.for_each(|c| {
            queued += c.out.queued_bytes() as u64;
            memory += c.out.cost() as u64;
            suspects += c.ctl.beat.suspect as u64;
            tls += c.user_tls().map_or(0, |t| t.buffered() as u64);
        });
        self.stats.tls_buffer_bytes = tls;
        self.stats.send_queue_bytes = queued;
        self.stats.send_queue_memory = memory;
        self.stats.suspects = suspects;
    }
}
