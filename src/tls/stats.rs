//! A core's TLS counters: handshakes by outcome and version, and how long
//! they took.

use bytemuck::{Pod, Zeroable};
use rustls::ProtocolVersion;

/// Upper bounds of the handshake-duration histogram's buckets, in
/// microseconds (the last bucket, past these, is `+Inf`).
pub const HANDSHAKE_BUCKETS_US: [u64; 10] = [
    500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 500_000, 1_000_000,
];

/// Per-core TLS counters (plain words, see `Stats`).
#[repr(C)]
#[derive(Default, Debug, Clone, Copy, Pod, Zeroable)]
pub struct TlsStats {
    /// Handshakes completed.
    pub handshakes: u64,
    /// Handshakes refused: not TLS (plain HTTP, garbage), a bad or
    /// unsupported ClientHello, an alert from the client.
    pub failed: u64,
    /// Plain HTTP requests that reached the TLS port (answered 400).
    pub plain_http: u64,
    /// Handshakes not finished within `--handshake-timeout`.
    pub timed_out: u64,
    /// Connections closed by the peer in the middle of the handshake.
    pub abandoned: u64,
    /// Established connections ended by a bad record (a decryption
    /// failure, a renegotiation attempt, an oversized record).
    pub record_errors: u64,
    /// close_notify alerts received.
    pub peer_close_notify: u64,
    /// Completed handshakes by version: TLS 1.3.
    pub tls13: u64,
    /// Completed handshakes by version: TLS 1.2.
    pub tls12: u64,
    /// Handshake durations (accept to the client's Finished), one count
    /// per bucket of [`HANDSHAKE_BUCKETS_US`], the last for `+Inf`.
    pub duration_buckets: [u64; HANDSHAKE_BUCKETS_US.len() + 1],
    /// Sum of the handshake durations, microseconds.
    pub duration_sum_us: u64,
    /// kTLS: sessions whose keys went to the kernel.
    pub ktls_offloaded: u64,
    /// kTLS asked for, but the kernel offloads nothing (no `tls` module):
    /// sessions kept in user space.
    pub ktls_unavailable: u64,
    /// kTLS: TLS 1.2 sessions, kept in user space.
    pub ktls_tls12: u64,
    /// kTLS: sessions of a cipher the kernel lacks, kept in user space.
    pub ktls_cipher: u64,
    /// kTLS: `TCP_ULP` refused on the connection, kept in user space.
    pub ktls_ulp: u64,
    /// kTLS: the kernel refused the keys after rustls gave them up; the
    /// connection is closed.
    pub ktls_failed: u64,
    /// kTLS control records from peers: close_notify.
    pub ktls_close_notify: u64,
    /// kTLS control records: other alerts.
    pub ktls_alerts: u64,
    /// kTLS control records: KeyUpdate.
    pub ktls_key_updates: u64,
    /// KeyUpdates the kernel took (new keys installed).
    pub ktls_rekeys: u64,
    /// KeyUpdates the kernel refused (before Linux 6.14): connection closed.
    pub ktls_rekeys_refused: u64,
    /// kTLS control records a TLS 1.3 client must not send (closed).
    pub ktls_unexpected: u64,
}

impl TlsStats {
    /// Counts a completed handshake of `version` that took `us`.
    pub fn handshake_done(&mut self, version: Option<ProtocolVersion>, us: u64) {
        self.handshakes += 1;
        match version {
            Some(ProtocolVersion::TLSv1_3) => self.tls13 += 1,
            Some(ProtocolVersion::TLSv1_2) => self.tls12 += 1,
            _ => {}
        }
        let bucket = HANDSHAKE_BUCKETS_US
            .iter()
            .position(|&le| us <= le)
            .unwrap_or(HANDSHAKE_BUCKETS_US.len());
        self.duration_buckets[bucket] += 1;
        self.duration_sum_us += us;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_their_bucket() {
        let mut s = TlsStats::default();
        s.handshake_done(Some(ProtocolVersion::TLSv1_3), 400);
        s.handshake_done(Some(ProtocolVersion::TLSv1_2), 1_000);
        s.handshake_done(None, 2_000_000);
        assert_eq!(s.handshakes, 3);
        assert_eq!((s.tls13, s.tls12), (1, 1));
        assert_eq!(s.duration_buckets[0], 1);
        assert_eq!(s.duration_buckets[1], 1);
        assert_eq!(s.duration_buckets[HANDSHAKE_BUCKETS_US.len()], 1);
        assert_eq!(s.duration_sum_us, 2_001_400);
    }
}
