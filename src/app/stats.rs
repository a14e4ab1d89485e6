//! The counters a connection's messages update.

use bytemuck::{Pod, Zeroable};

/// Upper bounds (microseconds) of the ping round-trip histogram buckets;
/// a last `+Inf` bucket is implied.
pub(crate) const RTT_BUCKETS_US: [u64; 14] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// Counters a connection's messages update (plain integers: one core).
/// `Pod`: the metrics block publishes it word by word, and the derive
/// refuses to compile if a field ever makes that unsound.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug, Pod, Zeroable)]
pub struct MsgStats {
    /// Data messages received.
    pub messages_in: u64,
    /// Their payload bytes.
    pub bytes_in: u64,
    /// Replies queued to the sender (echoes, `/ws` acks, pongs, errors);
    /// fan-out deliveries are counted by the core.
    pub replies: u64,
    /// `/ws` and API publishes accepted.
    pub publishes: u64,
    /// `/ws` requests answered with an `error` message.
    pub protocol_errors: u64,
    /// Subscribe/publish refused by the token's channel claims.
    pub claims_denied: u64,
    /// Subscribes refused at `--max-subscriptions`.
    pub subscription_limit: u64,
    /// Pongs dropped because a later ping in the same read superseded them
    /// (ping floods).
    pub pongs_coalesced: u64,
    /// Subscribes with `since` whose missed publications were recovered.
    pub recovered: u64,
    /// Subscribes with `since` that could not be recovered (`recovered:false`).
    pub not_recovered: u64,
    /// Ping round trips per bucket of [`RTT_BUCKETS_US`] (last: `+Inf`),
    /// not cumulative.
    pub rtt_buckets: [u64; RTT_BUCKETS_US.len() + 1],
    /// Sum of the ping round trips measured (microseconds).
    pub rtt_sum_us: u64,
    /// Ping round trips measured.
    pub rtt_count: u64,
}

impl MsgStats {
    /// Counts a subscribe's recovery outcome (`None`: no `since`).
    pub(crate) fn count_recovery(&mut self, recovered: Option<bool>) {
        match recovered {
            Some(true) => self.recovered += 1,
            Some(false) => self.not_recovered += 1,
            None => {}
        }
    }

    pub(crate) fn record_rtt(&mut self, rtt_us: u64) {
        let b = RTT_BUCKETS_US
            .iter()
            .position(|&le| rtt_us <= le)
            .unwrap_or(RTT_BUCKETS_US.len());
        self.rtt_buckets[b] += 1;
        self.rtt_sum_us += rtt_us;
        self.rtt_count += 1;
    }
}
