//! What the handlers enforce per connection, and the test hooks.

use super::heartbeat;

/// Pings answered one by one in a single read; past this, each new pong
/// replaces the previous one if nothing was queued after it (RFC 6455
/// §5.5.3 lets an endpoint answer only the most recent ping). Autobahn's
/// ping cases send 10; a flood gets one pong per read.
pub(crate) const PONG_BURST: u32 = 32;

/// Per-connection limits and heartbeat settings the handlers apply.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The connection's backlog bound (`--max-send-queue-bytes`).
    pub max_queue: usize,
    /// Rate limit: tokens per microsecond (0: none) and bucket size.
    pub rate_per_us: f64,
    /// Message-rate bucket size.
    pub burst: f32,
    /// Publish rate limit: tokens per microsecond (0: none) and bucket.
    pub publish_rate_per_us: f64,
    /// Publish-rate bucket size.
    pub publish_burst: f32,
    /// Channels per `/ws` connection.
    pub max_subscriptions: usize,
    /// Largest `limit` a history read may ask (`--history-max-limit`).
    pub history_max_limit: u32,
    /// Ping intervals.
    pub heartbeat: heartbeat::Policy,
    /// Test hook (`RINGCAST_FAILPOINTS=1` in the environment, never a
    /// flag): a message `ringcast:panic` panics in the handler, so the test
    /// suite can check that a panic costs one connection, not the core.
    pub failpoints: bool,
}

/// What a test hook asks of the whole core (`RINGCAST_FAILPOINTS=1` only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CoreHook {
    #[default]
    None,
    /// `ringcast:fail-core`: the core's loop panics outside `catch_unwind`.
    Fail,
    /// `ringcast:stall-core`: the core's loop stops until resumed (at most
    /// a minute), as a core stuck behind a slow peer would.
    Stall,
    /// `ringcast:resume-cores`: stalled cores go on.
    Resume,
}
