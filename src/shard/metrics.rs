//! Per-core counters an operator can scrape, and the Prometheus text for
//! them.
//!
//! Each core counts in plain integers on its own data path ([`Stats`]) and
//! copies them once per loop pass into its own [`CoreMetrics`]: a block of
//! atomics on cache lines no other core writes. Relaxed stores of a few
//! dozen words per pass cost next to nothing and never contend; a scrape,
//! served by whichever core accepted it, reads every core's block. Values
//! are at most one pass old, and a pass publishes before the sends it queued
//! are submitted, so a reply a client has seen is already counted.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::Stats;
use crate::app::RTT_BUCKETS_US;
use crate::hub::wire::write_json_string;

/// `Stats` is `Pod` (plain words by construction, checked by the derive),
/// so it is published and read back as `u64` words.
const WORDS: usize = std::mem::size_of::<Stats>() / 8;

fn words(s: &Stats) -> &[u64; WORDS] {
    bytemuck::cast_ref(s)
}

fn from_words(w: [u64; WORDS]) -> Stats {
    bytemuck::cast(w)
}

/// One core's published counters.
#[repr(align(128))]
pub(crate) struct CoreMetrics {
    /// The core's listener is bound and its accept is armed.
    pub listening: AtomicBool,
    connections: AtomicU64,
    stats: [AtomicU64; WORDS],
}

impl Default for CoreMetrics {
    fn default() -> CoreMetrics {
        CoreMetrics {
            listening: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            stats: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// A copy of one core's published counters.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    pub connections: u64,
    pub stats: Stats,
}

impl CoreMetrics {
    /// Copies this core's counters out (called by the owning core only).
    #[inline]
    pub(crate) fn publish(&self, stats: &Stats, connections: usize) {
        let r = Ordering::Relaxed;
        self.connections.store(connections as u64, r);
        for (a, &v) in self.stats.iter().zip(words(stats)) {
            a.store(v, r);
        }
    }

    /// Reads the counters (any core).
    pub(crate) fn snapshot(&self) -> Snapshot {
        let r = Ordering::Relaxed;
        Snapshot {
            connections: self.connections.load(r),
            stats: from_words(std::array::from_fn(|i| self.stats[i].load(r))),
        }
    }
}

/// One sample of a family: name suffix (`_bucket`, `_sum`...), its label
/// beyond `core` (name and value) if any, value.
type Sample = (&'static str, Option<(&'static str, String)>, f64);

/// One metric family: name, type, help, and how to read it from a snapshot.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    series: fn(&Snapshot) -> Vec<Sample>,
}

fn one(v: u64) -> Vec<Sample> {
    vec![("", None, v as f64)]
}

/// One sample per value of the label `name`.
fn labelled(name: &'static str, values: &[(&str, u64)]) -> Vec<Sample> {
    values
        .iter()
        .map(|&(l, v)| ("", Some((name, l.to_string())), v as f64))
        .collect()
}

fn rtt_histogram(s: &Snapshot) -> Vec<Sample> {
    let m = &s.stats.msg;
    let mut out = Vec::with_capacity(RTT_BUCKETS_US.len() + 3);
    let mut cumulative = 0;
    for (i, &le) in RTT_BUCKETS_US.iter().enumerate() {
        cumulative += m.rtt_buckets[i];
        let le = le as f64 / 1e6;
        out.push(("_bucket", Some(("le", le.to_string())), cumulative as f64));
    }
    cumulative += m.rtt_buckets[RTT_BUCKETS_US.len()];
    out.push(("_bucket", Some(("le", "+Inf".into())), cumulative as f64));
    out.push(("_sum", None, m.rtt_sum_us as f64 / 1e6));
    out.push(("_count", None, m.rtt_count as f64));
    out
}

fn tls_histogram(s: &Snapshot) -> Vec<Sample> {
    use crate::tls::stats::HANDSHAKE_BUCKETS_US;
    let t = &s.stats.tls;
    let mut out = Vec::with_capacity(HANDSHAKE_BUCKETS_US.len() + 3);
    let mut cumulative = 0;
    for (i, &le) in HANDSHAKE_BUCKETS_US.iter().enumerate() {
        cumulative += t.duration_buckets[i];
        let le = le as f64 / 1e6;
        out.push(("_bucket", Some(("le", le.to_string())), cumulative as f64));
    }
    cumulative += t.duration_buckets[HANDSHAKE_BUCKETS_US.len()];
    out.push(("_bucket", Some(("le", "+Inf".into())), cumulative as f64));
    out.push(("_sum", None, t.duration_sum_us as f64 / 1e6));
    out.push(("_count", None, t.handshakes as f64));
    out
}

const FAMILIES: &[Family] = &[
    Family {
        name: "ringcast_connections",
        kind: "gauge",
        help: "Open TCP connections in any phase (handshake, open, closing).",
        series: |s| one(s.connections),
    },
    Family {
        name: "ringcast_accepted_total",
        kind: "counter",
        help: "TCP connections accepted.",
        series: |s| one(s.stats.accepted),
    },
    Family {
        name: "ringcast_handshakes_total",
        kind: "counter",
        help: "Requests by outcome: upgraded, refused (bad request), unauthorized (401), \
               forbidden (403 origin), over_capacity (503 connection limit), http (plain HTTP).",
        series: |s| {
            let t = &s.stats;
            labelled(
                "outcome",
                &[
                    ("upgraded", t.upgraded),
                    ("refused", t.refused),
                    ("unauthorized", t.unauthorized),
                    ("forbidden", t.forbidden_origin),
                    ("over_capacity", t.over_capacity),
                    ("http", t.http_requests),
                ],
            )
        },
    },
    Family {
        name: "ringcast_closed_total",
        kind: "counter",
        help: "Connections closed and released.",
        series: |s| one(s.stats.closed),
    },
    Family {
        name: "ringcast_messages_in_total",
        kind: "counter",
        help: "Complete data messages received from clients.",
        series: |s| one(s.stats.msg.messages_in),
    },
    Family {
        name: "ringcast_bytes_in_total",
        kind: "counter",
        help: "Payload bytes of the data messages received from clients.",
        series: |s| one(s.stats.msg.bytes_in),
    },
    Family {
        name: "ringcast_messages_out_total",
        kind: "counter",
        help: "Data messages queued to clients: replies (echo, /ws acks, pongs, errors) and deliveries.",
        series: |s| one(s.stats.msg.replies + s.stats.deliveries),
    },
    Family {
        name: "ringcast_bytes_out_total",
        kind: "counter",
        help: "Bytes sent to clients (frames and HTTP responses, as the kernel accepted them).",
        series: |s| one(s.stats.bytes_out),
    },
    Family {
        name: "ringcast_deliveries_total",
        kind: "counter",
        help: "Broadcast and channel messages queued to a local subscriber.",
        series: |s| one(s.stats.deliveries),
    },
    Family {
        name: "ringcast_publishes_total",
        kind: "counter",
        help: "Channel messages published (from /ws clients and the publish API).",
        series: |s| one(s.stats.msg.publishes),
    },
    Family {
        name: "ringcast_sends_total",
        kind: "counter",
        help: "Send operations submitted (each coalesces everything queued for a connection).",
        series: |s| one(s.stats.sends),
    },
    Family {
        name: "ringcast_send_queue_bytes",
        kind: "gauge",
        help: "Unsent bytes queued over all connections (refreshed every second).",
        series: |s| one(s.stats.send_queue_bytes),
    },
    Family {
        name: "ringcast_send_queue_memory_bytes",
        kind: "gauge",
        help: "Memory held by all send queues (owned buffers, shared frames, queue entries): what --max-send-queue-bytes bounds per connection.",
        series: |s| one(s.stats.send_queue_memory),
    },
    Family {
        name: "ringcast_sendmsg_headers_pooled",
        kind: "gauge",
        help: "Free sendmsg headers kept for reuse (~1 KiB each; freed once unused for a second).",
        series: |s| one(s.stats.sendmsg_headers),
    },
    Family {
        name: "ringcast_send_pool_bytes",
        kind: "gauge",
        help: "Send-buffer capacity kept for reuse (freed once unused for a second).",
        series: |s| one(s.stats.send_pool_bytes),
    },
    Family {
        name: "ringcast_loop_passes_total",
        kind: "counter",
        help: "Passes of the core's loop.",
        series: |s| one(s.stats.turns),
    },
    Family {
        name: "ringcast_loop_sleeps_total",
        kind: "counter",
        help: "Times the core slept in its ring with nothing to do (its wake-ups).",
        series: |s| one(s.stats.sleeps),
    },
    Family {
        name: "ringcast_mesh_backlog",
        kind: "gauge",
        help: "Frames waiting for room in other cores' rings.",
        series: |s| one(s.stats.mesh_backlog),
    },
    Family {
        name: "ringcast_mesh_congestion_total",
        kind: "counter",
        help: "Episodes of a peer core's backlog reaching the pause mark (publishing connections' reads paused).",
        series: |s| one(s.stats.congestion_episodes),
    },
    Family {
        name: "ringcast_mesh_paused_connections",
        kind: "gauge",
        help: "Publishing connections whose reads are paused while a peer core is congested.",
        series: |s| one(s.stats.paused_connections),
    },
    Family {
        name: "ringcast_mesh_dropped_total",
        kind: "counter",
        help: "Cross-core messages dropped because their core had stopped (a failed core).",
        series: |s| one(s.stats.mesh_dropped),
    },
    Family {
        name: "ringcast_slow_consumer_closes_total",
        kind: "counter",
        help: "Connections closed with 1008 because their send backlog passed the bound.",
        series: |s| one(s.stats.slow_consumer_closes),
    },
    Family {
        name: "ringcast_rate_limit_closes_total",
        kind: "counter",
        help: "Connections closed with 1008 for sending over --max-msgs-per-sec.",
        series: |s| one(s.stats.rate_limit_closes),
    },
    Family {
        name: "ringcast_subscription_limit_total",
        kind: "counter",
        help: "Subscribes refused at --max-subscriptions.",
        series: |s| one(s.stats.msg.subscription_limit),
    },
    Family {
        name: "ringcast_claims_denied_total",
        kind: "counter",
        help: "Subscribes and publishes refused by the token's channel claims.",
        series: |s| one(s.stats.msg.claims_denied),
    },
    Family {
        name: "ringcast_protocol_errors_total",
        kind: "counter",
        help: "/ws requests answered with an error message.",
        series: |s| one(s.stats.msg.protocol_errors),
    },
    Family {
        name: "ringcast_pongs_coalesced_total",
        kind: "counter",
        help: "Pongs superseded by a later ping in the same read (ping floods get one pong per read).",
        series: |s| one(s.stats.msg.pongs_coalesced),
    },
    Family {
        name: "ringcast_tls_handshakes_total",
        kind: "counter",
        help: "TLS handshakes by outcome: ok, failed (not TLS, a bad ClientHello, an alert), \
               plain_http (an HTTP request on the TLS port, answered 400), timeout \
               (--handshake-timeout), abandoned (the peer left mid-handshake).",
        series: |s| {
            let t = &s.stats.tls;
            labelled(
                "outcome",
                &[
                    ("ok", t.handshakes),
                    ("failed", t.failed),
                    ("plain_http", t.plain_http),
                    ("timeout", t.timed_out),
                    ("abandoned", t.abandoned),
                ],
            )
        },
    },
    Family {
        name: "ringcast_tls_versions_total",
        kind: "counter",
        help: "Completed TLS handshakes by protocol version.",
        series: |s| {
            let t = &s.stats.tls;
            labelled("version", &[("1.3", t.tls13), ("1.2", t.tls12)])
        },
    },
    Family {
        name: "ringcast_tls_handshake_seconds",
        kind: "histogram",
        help: "TLS handshake duration, accept to the client's Finished.",
        series: tls_histogram,
    },
    Family {
        name: "ringcast_tls_record_errors_total",
        kind: "counter",
        help: "Established TLS connections ended by a bad record (decryption failure, \
               renegotiation attempt, oversized record).",
        series: |s| one(s.stats.tls.record_errors),
    },
    Family {
        name: "ringcast_tls_close_notify_total",
        kind: "counter",
        help: "close_notify alerts received from TLS clients.",
        series: |s| one(s.stats.tls.peer_close_notify),
    },
    Family {
        name: "ringcast_tls_buffer_bytes",
        kind: "gauge",
        help: "Bytes TLS connections hold in their own buffers (partial records, \
               ciphertext in flight); 0 when every TLS connection is idle.",
        series: |s| one(s.stats.tls_buffer_bytes),
    },
    Family {
        name: "ringcast_ktls_connections_total",
        kind: "counter",
        help: "With --ktls, what became of each TLS session: offloaded (keys handed to the \
               kernel), or kept in user space because the kernel offloads nothing \
               (unavailable), it is TLS 1.2 (tls12), the kernel lacks its cipher (cipher) or \
               refused TCP_ULP (ulp); failed: the kernel refused the keys (closed).",
        series: |s| {
            let t = &s.stats.tls;
            labelled(
                "outcome",
                &[
                    ("offloaded", t.ktls_offloaded),
                    ("unavailable", t.ktls_unavailable),
                    ("tls12", t.ktls_tls12),
                    ("cipher", t.ktls_cipher),
                    ("ulp", t.ktls_ulp),
                    ("failed", t.ktls_failed),
                ],
            )
        },
    },
    Family {
        name: "ringcast_ktls_control_records_total",
        kind: "counter",
        help: "Records the kernel handed back on kTLS connections instead of data: \
               close_notify, other alerts, key_update, unexpected (closed).",
        series: |s| {
            let t = &s.stats.tls;
            labelled(
                "kind",
                &[
                    ("close_notify", t.ktls_close_notify),
                    ("alert", t.ktls_alerts),
                    ("key_update", t.ktls_key_updates),
                    ("unexpected", t.ktls_unexpected),
                ],
            )
        },
    },
    Family {
        name: "ringcast_ktls_rekeys_total",
        kind: "counter",
        help: "KeyUpdates on kTLS connections: ok (new keys in the kernel), refused (the \
               kernel cannot rekey, before Linux 6.14: connection closed with an alert).",
        series: |s| {
            let t = &s.stats.tls;
            labelled(
                "outcome",
                &[("ok", t.ktls_rekeys), ("refused", t.ktls_rekeys_refused)],
            )
        },
    },
    Family {
        name: "ringcast_deflate_compressed_total",
        kind: "counter",
        help: "Messages compressed with permessage-deflate: once per message and core, however many recipients get it.",
        series: |s| one(s.stats.deflate.compressed),
    },
    Family {
        name: "ringcast_deflate_incompressible_total",
        kind: "counter",
        help: "Messages compressed but sent plain because the result was not smaller.",
        series: |s| one(s.stats.deflate.incompressible),
    },
    Family {
        name: "ringcast_deflate_inflated_total",
        kind: "counter",
        help: "Compressed messages received from clients and inflated.",
        series: |s| one(s.stats.deflate.inflated),
    },
    Family {
        name: "ringcast_deflate_out_bytes_total",
        kind: "counter",
        help: "Payload bytes of the messages compressed (once per message), before (form plain) and after (form compressed).",
        series: |s| {
            let d = &s.stats.deflate;
            labelled(
                "form",
                &[
                    ("plain", d.compressed_plain_bytes),
                    ("compressed", d.compressed_bytes),
                ],
            )
        },
    },
    Family {
        name: "ringcast_deflate_in_bytes_total",
        kind: "counter",
        help: "Payload bytes of the compressed messages received, as received (form compressed) and inflated (form plain).",
        series: |s| {
            let d = &s.stats.deflate;
            labelled(
                "form",
                &[
                    ("compressed", d.inflated_wire_bytes),
                    ("plain", d.inflated_bytes),
                ],
            )
        },
    },
    Family {
        name: "ringcast_deflate_sent_total",
        kind: "counter",
        help: "Compressed frames queued to clients (once per recipient).",
        series: |s| one(s.stats.deflate.sent_compressed),
    },
    Family {
        name: "ringcast_deflate_sent_bytes_total",
        kind: "counter",
        help: "Bytes of the compressed frames queued to clients (form compressed), and what they would have been plain (form plain).",
        series: |s| {
            let d = &s.stats.deflate;
            labelled(
                "form",
                &[
                    ("compressed", d.sent_compressed_bytes),
                    ("plain", d.sent_compressed_plain_bytes),
                ],
            )
        },
    },
    Family {
        name: "ringcast_deflate_seconds_total",
        kind: "counter",
        help: "CPU time spent compressing and inflating (op compress or inflate).",
        series: |s| {
            let d = &s.stats.deflate;
            [("compress", d.compress_ns), ("inflate", d.inflate_ns)]
                .into_iter()
                .map(|(op, ns)| ("", Some(("op", op.to_string())), ns as f64 / 1e9))
                .collect()
        },
    },
    Family {
        name: "ringcast_handler_panics_total",
        kind: "counter",
        help: "Panics caught while handling one connection's input (that connection was dropped).",
        series: |s| one(s.stats.handler_panics),
    },
    Family {
        name: "ringcast_pings_total",
        kind: "counter",
        help: "Heartbeat pings sent.",
        series: |s| one(s.stats.pings),
    },
    Family {
        name: "ringcast_ping_rtt_seconds",
        kind: "histogram",
        help: "Heartbeat round-trip time (ping sent to pong received).",
        series: rtt_histogram,
    },
    Family {
        name: "ringcast_suspect_connections",
        kind: "gauge",
        help: "Connections that missed 3 or more pongs in a row (refreshed every second).",
        series: |s| one(s.stats.suspects),
    },
    Family {
        name: "ringcast_suspects_total",
        kind: "counter",
        help: "Connections that became suspect.",
        series: |s| one(s.stats.suspects_total),
    },
    Family {
        name: "ringcast_heartbeat_closes_total",
        kind: "counter",
        help: "Connections closed with 1011 after 5 missed pongs.",
        series: |s| one(s.stats.heartbeat_closes),
    },
    Family {
        name: "ringcast_idle_closes_total",
        kind: "counter",
        help: "Connections closed for sending no message within --idle-timeout.",
        series: |s| one(s.stats.idle_closes),
    },
    Family {
        name: "ringcast_channels",
        kind: "gauge",
        help: "Channels this core's connections subscribe to (or wait to).",
        series: |s| one(s.stats.channels),
    },
    Family {
        name: "ringcast_subscriptions",
        kind: "gauge",
        help: "Channel subscriptions of this core's connections.",
        series: |s| one(s.stats.subscriptions),
    },
    Family {
        name: "ringcast_token_expired_closes_total",
        kind: "counter",
        help: "/ws connections closed with 4002 because their token expired (checked once per ping interval).",
        series: |s| one(s.stats.token_expired_closes),
    },
    Family {
        name: "ringcast_streams",
        kind: "gauge",
        help: "Channel streams this core owns (sequences, keeps history and presence of).",
        series: |s| one(s.stats.streams),
    },
    Family {
        name: "ringcast_sequenced_total",
        kind: "counter",
        help: "Publications numbered by this core's streams.",
        series: |s| one(s.stats.sequenced),
    },
    Family {
        name: "ringcast_history_publications",
        kind: "gauge",
        help: "Publications held in the history of this core's streams.",
        series: |s| one(s.stats.history_publications),
    },
    Family {
        name: "ringcast_history_bytes",
        kind: "gauge",
        help: "Memory held by history on this core (frames plus per-entry and per-channel overhead); at most --history-max-bytes.",
        series: |s| one(s.stats.history_bytes),
    },
    Family {
        name: "ringcast_history_evicted_total",
        kind: "counter",
        help: "History entries evicted to stay within --history-max-bytes (oldest first).",
        series: |s| one(s.stats.history_evicted),
    },
    Family {
        name: "ringcast_history_expired_total",
        kind: "counter",
        help: "History entries dropped for being older than their channel's history_ttl.",
        series: |s| one(s.stats.history_expired),
    },
    Family {
        name: "ringcast_presence_clients",
        kind: "gauge",
        help: "Clients in the presence of this core's streams.",
        series: |s| one(s.stats.presence_clients),
    },
    Family {
        name: "ringcast_recoveries_total",
        kind: "counter",
        help: "Subscribes with `since`, by outcome (recovered: the missed publications followed the ack).",
        series: |s| {
            let m = &s.stats.msg;
            labelled(
                "outcome",
                &[("recovered", m.recovered), ("not_recovered", m.not_recovered)],
            )
        },
    },
];

/// Renders every core's counters in the Prometheus text format (0.0.4),
/// one series per core (`core="N"`).
pub(crate) fn render(cores: &[CoreMetrics]) -> String {
    let snaps: Vec<Snapshot> = cores.iter().map(CoreMetrics::snapshot).collect();
    let mut out = String::with_capacity(256 * FAMILIES.len() * snaps.len().max(1));
    for f in FAMILIES {
        // Writing into a String cannot fail.
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (core, s) in snaps.iter().enumerate() {
            for (suffix, label, v) in (f.series)(s) {
                let _ = write!(out, "{}{suffix}{{core=\"{core}\"", f.name);
                if let Some((name, value)) = label {
                    let _ = write!(out, ",{name}=\"{value}\"");
                }
                let _ = writeln!(out, "}} {v}");
            }
        }
    }
    out
}

/// The same families as JSON, for the dashboard and scripts:
/// `{"version","uptime_ms","cores","metrics":{NAME:{"type","help",
/// "samples":[{"suffix"?,"labels"?,"values":[one per core]}]}}}`. Counters
/// stay cumulative, as in Prometheus: a reader takes rates from two
/// snapshots and their `uptime_ms` (the server's monotonic clock, so a
/// wall-clock step cannot fake a rate).
pub(crate) fn render_json(cores: &[CoreMetrics], uptime_ms: u64) -> Vec<u8> {
    use std::io::Write as _;
    let snaps: Vec<Snapshot> = cores.iter().map(CoreMetrics::snapshot).collect();
    let mut out = Vec::with_capacity(128 * FAMILIES.len() * (snaps.len() + 1));
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{{\"version\":\"{}\",\"uptime_ms\":{uptime_ms},\"cores\":{},\"metrics\":{{",
        env!("CARGO_PKG_VERSION"),
        snaps.len()
    );
    for (i, f) in FAMILIES.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(
            out,
            "{sep}\"{}\":{{\"type\":\"{}\",\"help\":",
            f.name, f.kind
        );
        write_json_string(f.help, &mut out);
        out.extend_from_slice(b",\"samples\":[");
        // Every core yields the same samples in the same order.
        let per_core: Vec<Vec<Sample>> = snaps.iter().map(f.series).collect();
        let Some(first) = per_core.first() else {
            out.extend_from_slice(b"]}");
            continue;
        };
        for (j, (suffix, label, _)) in first.iter().enumerate() {
            out.extend_from_slice(if j == 0 { b"{" } else { b",{" });
            if !suffix.is_empty() {
                let _ = write!(out, "\"suffix\":\"{suffix}\",");
            }
            if let Some((name, value)) = label {
                let _ = write!(out, "\"labels\":{{\"{name}\":\"{value}\"}},");
            }
            out.extend_from_slice(b"\"values\":[");
            for (c, samples) in per_core.iter().enumerate() {
                let sep = if c == 0 { "" } else { "," };
                let _ = write!(out, "{sep}{}", samples[j].2);
            }
            out.extend_from_slice(b"]}");
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::MsgStats;

    #[test]
    fn renders_one_series_per_core() {
        let cores: Vec<CoreMetrics> = (0..2).map(|_| CoreMetrics::default()).collect();
        let mut stats = Stats {
            upgraded: 3,
            msg: MsgStats {
                messages_in: 42,
                ..MsgStats::default()
            },
            ..Stats::default()
        };
        stats.msg.rtt_buckets[0] = 2;
        stats.msg.rtt_buckets[RTT_BUCKETS_US.len()] = 1;
        stats.msg.rtt_sum_us = 1_500_000;
        stats.msg.rtt_count = 3;
        cores[1].publish(&stats, 5);
        let snap = cores[1].snapshot();
        assert_eq!(snap.stats.msg.messages_in, 42, "round trip through words");
        let text = render(&cores);
        assert!(text.contains("# TYPE ringcast_connections gauge\n"));
        assert!(text.contains("ringcast_connections{core=\"0\"} 0\n"));
        assert!(text.contains("ringcast_connections{core=\"1\"} 5\n"));
        assert!(text.contains("ringcast_handshakes_total{core=\"1\",outcome=\"upgraded\"} 3\n"));
        assert!(text.contains("ringcast_messages_in_total{core=\"1\"} 42\n"));
        assert!(text.contains("ringcast_ping_rtt_seconds_bucket{core=\"1\",le=\"0.00025\"} 2\n"));
        assert!(text.contains("ringcast_ping_rtt_seconds_bucket{core=\"1\",le=\"10\"} 2\n"));
        assert!(text.contains("ringcast_ping_rtt_seconds_bucket{core=\"1\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("ringcast_ping_rtt_seconds_sum{core=\"1\"} 1.5\n"));
        assert!(text.contains("ringcast_ping_rtt_seconds_count{core=\"1\"} 3\n"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn json_has_every_family_with_one_value_per_core() {
        let cores: Vec<CoreMetrics> = (0..2).map(|_| CoreMetrics::default()).collect();
        let mut stats = Stats {
            upgraded: 3,
            ..Stats::default()
        };
        stats.msg.rtt_buckets[1] = 4;
        cores[1].publish(&stats, 5);
        let json = render_json(&cores, 1234);
        let v: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
        assert_eq!(v["uptime_ms"], 1234);
        assert_eq!(v["cores"], 2);
        let m = &v["metrics"];
        assert_eq!(m.as_object().map(|o| o.len()), Some(FAMILIES.len()));
        assert_eq!(m["ringcast_connections"]["type"], "gauge");
        assert_eq!(
            m["ringcast_connections"]["samples"][0]["values"],
            serde_json::json!([0, 5])
        );
        let hs = m["ringcast_handshakes_total"]["samples"]
            .as_array()
            .unwrap();
        assert_eq!(hs[0]["labels"]["outcome"], "upgraded");
        assert_eq!(hs[0]["values"], serde_json::json!([0, 3]));
        let rtt = m["ringcast_ping_rtt_seconds"]["samples"]
            .as_array()
            .unwrap();
        assert_eq!(rtt[1]["suffix"], "_bucket");
        assert_eq!(rtt[1]["labels"]["le"], "0.0005");
        assert_eq!(rtt[1]["values"], serde_json::json!([0, 4]));
        assert_eq!(rtt[RTT_BUCKETS_US.len()]["labels"]["le"], "+Inf");
    }
}
