//! Per-core counters an operator can scrape, and the Prometheus text for
//! them.
//!
//! Each core counts in plain integers on its own data path ([`super::Stats`])
//! and copies them once per loop pass into its own [`CoreMetrics`]: a block of
//! atomics on cache lines no other core writes. Relaxed stores of a few words
//! per pass cost next to nothing and never contend; a scrape, served by
//! whichever core accepted it, reads every core's block. Values are at most
//! one pass old, and a pass publishes before the sends it queued are
//! submitted, so a reply a client has seen is already counted.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::Stats;

/// One core's published counters.
#[repr(align(128))]
#[derive(Default)]
pub struct CoreMetrics {
    /// The core's listener is bound and its accept is armed.
    pub listening: AtomicBool,
    connections: AtomicU64,
    accepted: AtomicU64,
    upgraded: AtomicU64,
    refused: AtomicU64,
    closed: AtomicU64,
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    deliveries: AtomicU64,
    sends: AtomicU64,
    slow_consumer_closes: AtomicU64,
    http_requests: AtomicU64,
}

/// A copy of one core's published counters.
#[derive(Default, Debug, Clone, Copy)]
pub struct Snapshot {
    pub connections: u64,
    pub stats: Stats,
}

impl CoreMetrics {
    /// Copies this core's counters out (called by the owning core only).
    #[inline]
    pub fn publish(&self, stats: &Stats, connections: usize) {
        let r = Ordering::Relaxed;
        self.connections.store(connections as u64, r);
        self.accepted.store(stats.accepted, r);
        self.upgraded.store(stats.upgraded, r);
        self.refused.store(stats.refused, r);
        self.closed.store(stats.closed, r);
        self.messages_in.store(stats.messages_in, r);
        self.bytes_in.store(stats.bytes_in, r);
        self.deliveries.store(stats.deliveries, r);
        self.sends.store(stats.sends, r);
        self.slow_consumer_closes
            .store(stats.slow_consumer_closes, r);
        self.http_requests.store(stats.http_requests, r);
    }

    /// Reads the counters (any core).
    pub fn snapshot(&self) -> Snapshot {
        let r = Ordering::Relaxed;
        Snapshot {
            connections: self.connections.load(r),
            stats: Stats {
                accepted: self.accepted.load(r),
                upgraded: self.upgraded.load(r),
                refused: self.refused.load(r),
                closed: self.closed.load(r),
                messages_in: self.messages_in.load(r),
                bytes_in: self.bytes_in.load(r),
                deliveries: self.deliveries.load(r),
                sends: self.sends.load(r),
                slow_consumer_closes: self.slow_consumer_closes.load(r),
                http_requests: self.http_requests.load(r),
                ..Stats::default()
            },
        }
    }
}

/// One metric family: name, type, help, and how to read it from a snapshot.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    /// `(extra label, value)` pairs per core.
    series: fn(&Snapshot) -> Vec<(&'static str, u64)>,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "ringcast_connections",
        kind: "gauge",
        help: "Open TCP connections in any phase (handshake, open, closing).",
        series: |s| vec![("", s.connections)],
    },
    Family {
        name: "ringcast_accepted_total",
        kind: "counter",
        help: "TCP connections accepted.",
        series: |s| vec![("", s.stats.accepted)],
    },
    Family {
        name: "ringcast_handshakes_total",
        kind: "counter",
        help: "Opening handshakes by outcome (plain HTTP requests count as http).",
        series: |s| {
            vec![
                ("outcome=\"upgraded\"", s.stats.upgraded),
                ("outcome=\"refused\"", s.stats.refused),
                ("outcome=\"http\"", s.stats.http_requests),
            ]
        },
    },
    Family {
        name: "ringcast_closed_total",
        kind: "counter",
        help: "Connections closed and released.",
        series: |s| vec![("", s.stats.closed)],
    },
    Family {
        name: "ringcast_messages_in_total",
        kind: "counter",
        help: "Complete data messages received from clients.",
        series: |s| vec![("", s.stats.messages_in)],
    },
    Family {
        name: "ringcast_bytes_in_total",
        kind: "counter",
        help: "Payload bytes of the data messages received from clients.",
        series: |s| vec![("", s.stats.bytes_in)],
    },
    Family {
        name: "ringcast_deliveries_total",
        kind: "counter",
        help: "Broadcast messages queued to a local subscriber.",
        series: |s| vec![("", s.stats.deliveries)],
    },
    Family {
        name: "ringcast_sends_total",
        kind: "counter",
        help: "Send operations submitted (each coalesces everything queued for a connection).",
        series: |s| vec![("", s.stats.sends)],
    },
    Family {
        name: "ringcast_slow_consumer_closes_total",
        kind: "counter",
        help: "Connections closed with 1008 because their send backlog passed the bound.",
        series: |s| vec![("", s.stats.slow_consumer_closes)],
    },
];

/// Renders every core's counters in the Prometheus text format (0.0.4),
/// one series per core (`core="N"`).
pub fn render(cores: &[CoreMetrics]) -> String {
    let snaps: Vec<Snapshot> = cores.iter().map(CoreMetrics::snapshot).collect();
    let mut out = String::with_capacity(256 * FAMILIES.len() * snaps.len().max(1));
    for f in FAMILIES {
        // Writing into a String cannot fail.
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (core, s) in snaps.iter().enumerate() {
            for (label, v) in (f.series)(s) {
                let sep = if label.is_empty() { "" } else { "," };
                let _ = writeln!(out, "{}{{core=\"{core}\"{sep}{label}}} {v}", f.name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_series_per_core() {
        let cores: Vec<CoreMetrics> = (0..2).map(|_| CoreMetrics::default()).collect();
        let stats = Stats {
            upgraded: 3,
            messages_in: 42,
            ..Stats::default()
        };
        cores[1].publish(&stats, 5);
        let text = render(&cores);
        assert!(text.contains("# TYPE ringcast_connections gauge\n"));
        assert!(text.contains("ringcast_connections{core=\"0\"} 0\n"));
        assert!(text.contains("ringcast_connections{core=\"1\"} 5\n"));
        assert!(text.contains("ringcast_handshakes_total{core=\"1\",outcome=\"upgraded\"} 3\n"));
        assert!(text.contains("ringcast_messages_in_total{core=\"1\"} 42\n"));
        assert!(text.ends_with('\n'));
    }
}
