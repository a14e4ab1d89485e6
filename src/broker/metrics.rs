//! What the broker thread counts, for `/metrics`: plain atomics it alone
//! writes, read by whichever core serves a scrape.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Upper bounds of the publish-latency histogram, in microseconds.
pub(crate) const LATENCY_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];
/// Upper bounds of the subscribe-batch histogram, in channels.
pub(crate) const BATCH_BUCKETS: [u64; 7] = [1, 4, 16, 64, 256, 1024, 4096];

/// The broker's counters and gauges.
#[derive(Default)]
pub(crate) struct BrokerMetrics {
    /// Both connections are up: publishes are accepted.
    pub(crate) connected: AtomicBool,
    /// Connections (re)established, subscriber and command.
    pub(crate) reconnects: AtomicU64,
    /// Pub/sub messages received from Redis.
    pub(crate) messages_received: AtomicU64,
    /// Publications acked (Redis has them).
    pub(crate) published: AtomicU64,
    /// Publications refused (broker unreachable, or Redis said no).
    pub(crate) refused: AtomicU64,
    /// Publications read back from the stream after a blip or a gap and
    /// delivered in order.
    pub(crate) recovered_after_blip: AtomicU64,
    /// Channels whose stream could not be recovered after a blip (new
    /// epoch, or past the history window): their subscribers were told.
    pub(crate) unrecoverable: AtomicU64,
    /// Channels the subscriber connection is subscribed to.
    pub(crate) channels: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
    batches: [AtomicU64; BATCH_BUCKETS.len() + 1],
    batch_sum: AtomicU64,
}

fn bucket(bounds: &[u64], v: u64) -> usize {
    bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len())
}

impl BrokerMetrics {
    /// Records one acked publication's round trip.
    pub(crate) fn observe_publish(&self, us: u64) {
        self.latency[bucket(&LATENCY_BUCKETS_US, us)].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one `SUBSCRIBE` of `n` channels.
    pub(crate) fn observe_batch(&self, n: u64) {
        self.batches[bucket(&BATCH_BUCKETS, n)].fetch_add(1, Ordering::Relaxed);
        self.batch_sum.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    pub(crate) fn inc(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Appends the broker's families in Prometheus text format.
    pub(crate) fn render(&self, out: &mut String) {
        let r = Ordering::Relaxed;
        let plain: [(&str, &str, &str, u64); 8] = [
            ("ringcast_broker_connected", "gauge", "1 while both Redis connections are up (publishes are accepted).", u64::from(self.connected.load(r))),
            ("ringcast_broker_reconnects_total", "counter", "Redis connections established (subscriber and command), the first ones included.", self.reconnects.load(r)),
            ("ringcast_broker_messages_received_total", "counter", "Pub/sub messages received from Redis.", self.messages_received.load(r)),
            ("ringcast_broker_publish_refused_total", "counter", "Publications refused because Redis was unreachable or refused them (never acked).", self.refused.load(r)),
            ("ringcast_broker_recovered_after_blip_total", "counter", "Publications read back from the Redis stream after a broker blip or a gap, delivered in order.", self.recovered_after_blip.load(r)),
            ("ringcast_broker_unrecoverable_total", "counter", "Channel streams that could not be recovered after a blip (new epoch or past the history window); subscribers got a reset.", self.unrecoverable.load(r)),
            ("ringcast_broker_channels", "gauge", "Channels this node is subscribed to in Redis.", self.channels.load(r)),
            ("ringcast_broker_published_total", "counter", "Publications acked by Redis.", self.published.load(r)),
        ];
        for (name, kind, help, v) in plain {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        histogram(
            out,
            "ringcast_broker_publish_seconds",
            "Publication round trip to Redis (script sent to reply), seconds.",
            &LATENCY_BUCKETS_US.map(|b| b as f64 / 1e6),
            &self.latency,
            self.latency_sum_us.load(r) as f64 / 1e6,
        );
        histogram(
            out,
            "ringcast_broker_subscribe_batch_channels",
            "Channels per SUBSCRIBE command sent to Redis.",
            &BATCH_BUCKETS.map(|b| b as f64),
            &self.batches,
            self.batch_sum.load(r) as f64,
        );
    }
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64],
    counts: &[AtomicU64],
    sum: f64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, le) in bounds.iter().enumerate() {
        cumulative += counts[i].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    cumulative += counts[bounds.len()].load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {cumulative}\n{name}_sum {sum}\n{name}_count {cumulative}"
    );
}
