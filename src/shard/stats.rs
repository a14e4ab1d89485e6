//! A core's counters and gauges.

use crate::tls::TlsStats;
use crate::ws::deflate::DeflateStats;
use bytemuck::{Pod, Zeroable};

use crate::app::MsgStats;

/// Per-core counters and gauges (plain integers: only this core writes
/// them). `Pod`, so the metrics block copies it word by word: the derive
/// refuses to compile if a field ever adds padding or a non-integer.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy, Pod, Zeroable)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: u64,
    /// WebSocket upgrades completed.
    pub upgraded: u64,
    /// Upgrades refused as malformed or unsupported.
    pub refused: u64,
    /// Connections closed and freed.
    pub closed: u64,
    /// Frames queued to subscribers by fan-out.
    pub deliveries: u64,
    /// Connections closed with 1008 for their backlog.
    pub slow_consumer_closes: u64,
    /// Send submissions (one per connection per pass at most).
    pub sends: u64,
    /// `io_uring_enter` calls.
    pub enters: u64,
    /// Loop passes.
    pub turns: u64,
    /// Plain HTTP requests answered (health, readiness, metrics, API).
    pub http_requests: u64,
    /// Upgrades refused: 401 (token), 403 (origin), 503 (connection limit).
    pub unauthorized: u64,
    /// Upgrades refused for their origin (403).
    pub forbidden_origin: u64,
    /// Upgrades refused at `--max-connections` (503).
    pub over_capacity: u64,
    /// Connections closed with 1008 for their message rate.
    pub rate_limit_closes: u64,
    /// Connections closed with 1011 after missed pongs.
    pub heartbeat_closes: u64,
    /// Connections closed for sending nothing within the idle timeout.
    pub idle_closes: u64,
    /// Times the loop slept (blocked in its ring with nothing to do).
    pub sleeps: u64,
    /// Times a peer core's backlog reached the pause mark (episodes).
    pub congestion_episodes: u64,
    /// Messages dropped for a core that had stopped.
    pub mesh_dropped: u64,
    /// Connections that became suspect (missed pongs), ever.
    pub suspects_total: u64,
    /// Pings sent.
    pub pings: u64,
    /// Panics caught while handling one connection's input (that
    /// connection was dropped; the core went on).
    pub handler_panics: u64,
    /// Bytes the kernel accepted from our sends.
    pub bytes_out: u64,
    /// Gauges, refreshed about once a second: suspect connections now,
    /// unsent bytes queued over all connections.
    pub suspects: u64,
    /// Gauge: unsent bytes queued over all connections.
    pub send_queue_bytes: u64,
    /// Gauge: memory held by all send queues (what the bound counts).
    pub send_queue_memory: u64,
    /// Gauges: frames waiting for room in peers' rings; connections whose
    /// reads are paused while a peer is congested.
    pub mesh_backlog: u64,
    /// Gauge: connections whose reads are paused.
    pub paused_connections: u64,
    /// Gauges: free `sendmsg` headers and pooled send-buffer bytes kept
    /// for reuse (both freed once unused for a second).
    pub sendmsg_headers: u64,
    /// Gauge: pooled send-buffer bytes.
    pub send_pool_bytes: u64,
    /// Gauges: channel entries and local subscriptions.
    pub channels: u64,
    /// Gauge: local channel subscriptions.
    pub subscriptions: u64,
    /// `/ws` connections closed with 4002 because their token expired.
    pub token_expired_closes: u64,
    /// Gauge: channel streams this core owns.
    pub streams: u64,
    /// Gauge: publications held in the history of this core's streams.
    pub history_publications: u64,
    /// Gauge: bytes they take (frames plus per-entry overhead), bounded by
    /// `--history-max-bytes`.
    pub history_bytes: u64,
    /// Publications evicted from history for the byte budget.
    pub history_evicted: u64,
    /// Publications dropped from history for their age.
    pub history_expired: u64,
    /// Gauge: clients in the presence of this core's streams.
    pub presence_clients: u64,
    /// Publications this core's streams numbered.
    pub sequenced: u64,
    /// Counters of the connections' messages.
    pub msg: MsgStats,
    /// permessage-deflate work: compressions, inflations, compressed
    /// frames sent.
    pub deflate: DeflateStats,
    /// TLS handshakes and record errors.
    pub tls: TlsStats,
    /// Gauge: bytes held in TLS connections' own buffers.
    pub tls_buffer_bytes: u64,
}
