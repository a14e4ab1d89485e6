//! One connection's TLS, driven by the core: rustls's unbuffered state
//! machine over buffers this module owns only while bytes are in them.
//!
//! Records are decrypted in place in the buffer they arrived in (the ring's
//! provided receive buffer on the fast path) and their plaintext appended to
//! the caller's scratch; what the connection sends in a pass is encrypted
//! into one ciphertext buffer that leaves in one submission. A record split
//! across reads waits in `carry`; both `carry` and `out` come from the
//! core's [`BufPool`] and go back to it once drained, so an idle TLS
//! connection holds rustls's own session state and nothing else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{ProtocolVersion, ServerConfig};

use crate::conn::BufPool;

/// The most received bytes held for incomplete records: one full TLS 1.2
/// record (2^14 + 2048 + 5) is 18 KiB, and a ClientHello spanning several
/// records stays far below this. More is a peer that is not speaking TLS.
pub(crate) const CARRY_MAX: usize = 64 * 1024;

/// Per-record overhead reserved when encrypting (TLS 1.2 GCM: header 5,
/// explicit nonce 8, tag 16; TLS 1.3: header 5, type 1, tag 16).
const RECORD_OVERHEAD: usize = 32;
/// Plaintext per record (rustls's default maximum fragment).
const RECORD_PLAIN: usize = 16 * 1024;

/// Why a TLS connection ends without a clean close.
#[derive(Debug)]
pub(crate) enum TlsError {
    /// rustls refused the peer's bytes (not TLS, a bad record, a failed
    /// handshake, a renegotiation attempt); an alert is queued when TLS
    /// calls for one.
    Protocol(rustls::Error),
    /// More than [`CARRY_MAX`] bytes without a complete record.
    Oversized,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Protocol(e) => write!(f, "{e}"),
            TlsError::Oversized => write!(f, "no complete TLS record in {CARRY_MAX} bytes"),
        }
    }
}

/// What one call to [`TlsSession::receive`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Received {
    /// The handshake completed during this call.
    pub(crate) handshake_done: bool,
    /// The peer sent close_notify: no more data will come.
    pub(crate) peer_closed: bool,
}

/// Where the handshake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Handshaking,
    Established,
    /// Failed; only queued alerts may still go out.
    Failed,
}

/// One connection's TLS state. Boxed in the connection; its buffers are
/// empty (capacity 0) whenever no bytes wait in them.
pub(crate) struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Received bytes that do not yet make a complete record.
    carry: Vec<u8>,
    /// Ciphertext to send: `out[sent..filled]`. Its length is its usable
    /// size (zeroed once when grown), `filled` how much is written.
    out: Vec<u8>,
    filled: usize,
    sent: usize,
    /// A send of `out[sent..filled]` is in flight: `out` must not move.
    sending: bool,
    stage: Stage,
    close_notify_queued: bool,
    /// `--ktls`: hand the keys to the kernel once established and quiet.
    offload: bool,
    started: Instant,
}

impl TlsSession {
    /// A server-side session for a freshly accepted connection.
    pub(crate) fn new(
        config: Arc<ServerConfig>,
        now: Instant,
    ) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config)?,
            carry: Vec::new(),
            out: Vec::new(),
            filled: 0,
            sent: 0,
            sending: false,
            stage: Stage::Handshaking,
            close_notify_queued: false,
            offload: false,
            started: now,
        })
    }

    /// Whether the handshake has completed (application data may flow).
    pub(crate) fn established(&self) -> bool {
        self.stage == Stage::Established
    }

    /// Marks the session for kTLS (`--ktls`, and the kernel offloads).
    pub(crate) fn want_offload(&mut self) {
        self.offload = true;
    }

    /// Whether a hand-over to the kernel is still to come: reads are then
    /// single-shot, so no ciphertext leaves the socket ahead of the
    /// moment the kernel takes over.
    pub(crate) fn offload_pending(&self) -> bool {
        self.offload && self.stage != Stage::Failed
    }

    /// The session stays in user space for good.
    pub(crate) fn decline_offload(&mut self) {
        self.offload = false;
    }

    /// Whether the keys can go to the kernel now: established, no partial
    /// record kept, no ciphertext of ours waiting or in flight (rustls has
    /// encoded everything it queued, session tickets included).
    pub(crate) fn quiet(&self) -> bool {
        self.stage == Stage::Established
            && self.carry.is_empty()
            && !self.sending
            && self.filled == self.sent
    }

    /// The negotiated cipher suite, once known.
    pub(crate) fn suite(&self) -> Option<rustls::CipherSuite> {
        self.conn.negotiated_cipher_suite().map(|s| s.suite())
    }

    /// Gives the session's secrets up for the kernel, and what of rustls a
    /// key update needs. Only when [`TlsSession::quiet`]: the buffers are
    /// empty then, so nothing goes back to the pool.
    pub(crate) fn into_kernel(
        self,
    ) -> Result<
        (
            rustls::ExtractedSecrets,
            rustls::kernel::KernelConnection<ServerConnectionData>,
        ),
        rustls::Error,
    > {
        self.conn.dangerous_into_kernel_connection()
    }

    /// Whether bytes of an incomplete record wait for the next read.
    pub(crate) fn has_carry(&self) -> bool {
        !self.carry.is_empty()
    }

    /// Whether the handshake is still under way (neither done nor failed).
    pub(crate) fn handshaking(&self) -> bool {
        self.stage == Stage::Handshaking
    }

    /// Ends the handshake as failed (it timed out): nothing more is read.
    pub(crate) fn set_failed(&mut self) {
        self.stage = Stage::Failed;
    }

    /// Whether the session failed: only queued alerts may still go out.
    pub(crate) fn failed(&self) -> bool {
        self.stage == Stage::Failed
    }

    /// The negotiated protocol version, once known.
    pub(crate) fn version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// How long the handshake has taken so far (or took, read when
    /// [`Received::handshake_done`]).
    pub(crate) fn handshake_elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Processes received ciphertext: decrypts records in place in `data`
    /// (or in the carry buffer, when an earlier read left a partial record),
    /// appends their plaintext to `plain`, queues handshake records and
    /// alerts for sending, and keeps an incomplete record for the next read.
    pub(crate) fn receive(
        &mut self,
        data: &mut [u8],
        plain: &mut Vec<u8>,
        pool: &mut BufPool,
    ) -> Result<Received, TlsError> {
        let mut carry = std::mem::take(&mut self.carry);
        let result = if carry.is_empty() {
            let r = self.process(data, plain, pool);
            if let Ok((_, used)) = &r {
                if *used < data.len() {
                    carry = pool.get();
                    carry.extend_from_slice(&data[*used..]);
                }
            }
            r
        } else {
            carry.extend_from_slice(data);
            let r = self.process(&mut carry, plain, pool);
            if let Ok((_, used)) = &r {
                carry.drain(..*used);
            }
            r
        };
        let result = result.and_then(|(got, _)| {
            if carry.len() > CARRY_MAX {
                Err(TlsError::Oversized)
            } else {
                Ok(got)
            }
        });
        if carry.is_empty() || result.is_err() {
            pool.put(carry);
        } else {
            self.carry = carry;
        }
        result
    }

    /// Runs the state machine over `buf`; returns what happened and how
    /// many leading bytes of `buf` were consumed.
    fn process(
        &mut self,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
        pool: &mut BufPool,
    ) -> Result<(Received, usize), TlsError> {
        let mut got = Received::default();
        let mut used = 0;
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut buf[used..]);
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    used += discard;
                    self.fail(&mut buf[used..], pool);
                    return Err(TlsError::Protocol(e));
                }
            };
            let stop = match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        match rec {
                            Ok(rec) => plain.extend_from_slice(rec.payload),
                            Err(e) => {
                                drop(r);
                                used += discard;
                                self.fail(&mut buf[used..], pool);
                                return Err(TlsError::Protocol(e));
                            }
                        }
                    }
                    false
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut self.out, &mut self.filled, pool, |b| e.encode(b));
                    false
                }
                ConnectionState::TransmitTlsData(t) => {
                    // Sent at this pass's flush, in order with the rest.
                    t.done();
                    false
                }
                ConnectionState::PeerClosed => {
                    got.peer_closed = true;
                    false
                }
                ConnectionState::WriteTraffic(_) => true,
                // Early data is never enabled (max_early_data_size 0).
                ConnectionState::ReadEarlyData(_)
                | ConnectionState::BlockedHandshake
                | ConnectionState::Closed => true,
                _ => true,
            };
            used += discard;
            if stop {
                // Established once the client's Finished is in: TLS 1.3
                // lets the server write (0.5-RTT) before that.
                if self.stage == Stage::Handshaking && !self.conn.is_handshaking() {
                    self.stage = Stage::Established;
                    got.handshake_done = true;
                }
                return Ok((got, used));
            }
        }
    }

    /// After an error: collects the alert rustls queued, if any. `rest` is
    /// what is left of the buffer the error came from: rustls must always
    /// see the same buffer (less what it discarded), or it indexes past it.
    fn fail(&mut self, rest: &mut [u8], pool: &mut BufPool) {
        self.stage = Stage::Failed;
        // One call: rustls hands out the queued alert before it looks at
        // the records again. A second call would decrypt the bad record
        // once more and send a second fatal alert (a debug assertion in
        // rustls).
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(rest);
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = state {
            encode(&mut self.out, &mut self.filled, pool, |b| e.encode(b));
        }
    }

    /// Encrypts `plain` as application data, appended to what waits to be
    /// sent. Only once [`TlsSession::established`].
    pub(crate) fn encrypt(&mut self, plain: &[u8], pool: &mut BufPool) -> Result<(), TlsError> {
        self.with_write_traffic(pool, |w, out, filled, pool| {
            let records = plain.len().div_ceil(RECORD_PLAIN).max(1);
            let mut need = plain.len() + records * RECORD_OVERHEAD;
            loop {
                reserve(out, *filled, need, pool);
                match w.encrypt(plain, &mut out[*filled..]) {
                    Ok(n) => {
                        *filled += n;
                        return Ok(());
                    }
                    Err(EncryptError::InsufficientSize(s)) => need = s.required_size,
                    Err(EncryptError::EncryptExhausted) => {
                        return Err(TlsError::Protocol(rustls::Error::EncryptError))
                    }
                }
            }
        })
    }

    /// Queues close_notify (once): the clean end of the TLS stream, sent
    /// before the connection's FIN.
    pub(crate) fn close_notify(&mut self, pool: &mut BufPool) {
        if self.close_notify_queued || self.stage != Stage::Established {
            return;
        }
        self.close_notify_queued = true;
        let _ = self.with_write_traffic(pool, |w, out, filled, pool| {
            let mut need = 64;
            loop {
                reserve(out, *filled, need, pool);
                match w.queue_close_notify(&mut out[*filled..]) {
                    Ok(n) => {
                        *filled += n;
                        return Ok(());
                    }
                    Err(EncryptError::InsufficientSize(s)) => need = s.required_size,
                    Err(_) => return Ok(()),
                }
            }
        });
    }

    /// Drives the state machine to `WriteTraffic` (encoding what it queued
    /// on the way: session tickets, key updates) and calls `f` there.
    fn with_write_traffic(
        &mut self,
        pool: &mut BufPool,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, ServerConnectionData>,
            &mut Vec<u8>,
            &mut usize,
            &mut BufPool,
        ) -> Result<(), TlsError>,
    ) -> Result<(), TlsError> {
        let mut f = Some(f);
        loop {
            // The carry, not an empty buffer: rustls may be part-way
            // through a handshake message (a KeyUpdate split across
            // records) whose start it keeps in the buffer it was given.
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.carry);
            match state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    self.carry.drain(..discard);
                    return match f.take() {
                        Some(f) => f(&mut w, &mut self.out, &mut self.filled, pool),
                        None => Ok(()),
                    };
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut self.out, &mut self.filled, pool, |b| e.encode(b));
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                Ok(_) => return Err(TlsError::Protocol(rustls::Error::HandshakeNotComplete)),
                Err(e) => return Err(TlsError::Protocol(e)),
            }
            self.carry.drain(..discard);
        }
    }

    /// Ciphertext waiting to be sent, not yet in flight.
    pub(crate) fn has_unsent(&self) -> bool {
        !self.sending && self.filled > self.sent
    }

    /// Whether a send of this session's ciphertext is in flight.
    pub(crate) fn sending(&self) -> bool {
        self.sending
    }

    /// Marks the unsent ciphertext in flight and returns it: the buffer
    /// stays put until [`TlsSession::complete_send`].
    pub(crate) fn prepare_send(&mut self) -> &[u8] {
        self.sending = true;
        &self.out[self.sent..self.filled]
    }

    /// Records a completed send of `n` bytes; a drained buffer goes back
    /// to the pool.
    pub(crate) fn complete_send(&mut self, n: usize, pool: &mut BufPool) {
        self.sending = false;
        self.sent = (self.sent + n).min(self.filled);
        if self.sent == self.filled {
            self.sent = 0;
            self.filled = 0;
            pool.put(std::mem::take(&mut self.out));
        }
    }

    /// Gives back every buffer (the connection is going away, or its send
    /// failed).
    pub(crate) fn clear(&mut self, pool: &mut BufPool) {
        self.sending = false;
        self.sent = 0;
        self.filled = 0;
        pool.put(std::mem::take(&mut self.out));
        pool.put(std::mem::take(&mut self.carry));
    }

    /// Bytes this session's buffers hold right now (0 when idle).
    pub(crate) fn buffered(&self) -> usize {
        self.out.capacity() + self.carry.capacity()
    }
}

/// Makes `out[filled..]` at least `need` bytes long, taking a buffer from
/// the pool when `out` has none; `out`'s length stays the zeroed, writable
/// part (its capacity keeps growing the usual way).
fn reserve(out: &mut Vec<u8>, filled: usize, need: usize, pool: &mut BufPool) {
    if out.capacity() == 0 {
        *out = pool.get();
    }
    // Only what this write needs is zeroed: a pooled buffer's whole
    // capacity (up to 256 KiB) would cost a memset per send.
    if out.len() < filled + need {
        out.resize(filled + need, 0);
    }
}

/// Encodes one handshake record (or alert) after `out[..filled]`.
fn encode(
    out: &mut Vec<u8>,
    filled: &mut usize,
    pool: &mut BufPool,
    mut enc: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) {
    let mut need = 4096;
    loop {
        reserve(out, *filled, need, pool);
        match enc(&mut out[*filled..]) {
            Ok(n) => {
                *filled += n;
                return;
            }
            Err(EncodeError::InsufficientSize(s)) => need = s.required_size,
            Err(EncodeError::AlreadyEncoded) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use std::io::{Read, Write};

    /// A server configuration for a self-signed `localhost` certificate,
    /// and a client configuration trusting it.
    fn configs(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = CertificateDer::from(ck.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// What the server session has to send, as if the kernel took it all.
    fn sent(s: &mut TlsSession, pool: &mut BufPool) -> Vec<u8> {
        let mut out = Vec::new();
        while s.has_unsent() {
            out.extend_from_slice(s.prepare_send());
            let n = out.len();
            s.complete_send(n, pool);
        }
        out
    }

    /// Feeds `bytes` to the server in pieces of `step` (the last shorter).
    fn feed(
        s: &mut TlsSession,
        bytes: &[u8],
        step: usize,
        pool: &mut BufPool,
    ) -> (Vec<u8>, Received) {
        let mut plain = Vec::new();
        let mut all = Received::default();
        for chunk in bytes.chunks(step.max(1)) {
            let mut chunk = chunk.to_vec();
            let got = s.receive(&mut chunk, &mut plain, pool).expect("valid TLS");
            all.handshake_done |= got.handshake_done;
            all.peer_closed |= got.peer_closed;
        }
        (plain, all)
    }

    #[test]
    fn handshake_and_data_at_every_split_both_versions() {
        let splits = [1, 2, 7, 100, 1500, 16_384, 100_000];
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        for (version, step) in versions.iter().flat_map(|v| splits.map(|s| (*v, s))) {
            let (server_cfg, client_cfg) = configs(version);
            let mut pool = BufPool::default();
            let name = ServerName::try_from("localhost").unwrap();
            let mut client = ClientConnection::new(client_cfg.clone(), name).unwrap();
            let mut server = TlsSession::new(server_cfg.clone(), Instant::now()).unwrap();
            // The handshake, flight by flight.
            let mut done = false;
            for _ in 0..10 {
                let mut flight = Vec::new();
                while client.wants_write() {
                    client.write_tls(&mut flight).unwrap();
                }
                let (plain, got) = feed(&mut server, &flight, step, &mut pool);
                assert!(plain.is_empty());
                done |= got.handshake_done;
                let back = sent(&mut server, &mut pool);
                let mut rd = &back[..];
                while !rd.is_empty() {
                    client.read_tls(&mut rd).unwrap();
                    client.process_new_packets().unwrap();
                }
                if done && !client.is_handshaking() {
                    break;
                }
            }
            assert!(done && server.established(), "step {step}");
            assert_eq!(server.version(), Some(version.version));
            assert_eq!(
                server.buffered(),
                0,
                "step {step}: idle after the handshake"
            );
            // Client to server: 200 KB in records, fed at this split.
            let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
            let mut wire = Vec::new();
            for piece in data.chunks(16_384) {
                client.writer().write_all(piece).unwrap();
                while client.wants_write() {
                    client.write_tls(&mut wire).unwrap();
                }
            }
            let (plain, _) = feed(&mut server, &wire, step, &mut pool);
            assert_eq!(plain, data, "step {step}");
            assert_eq!(server.buffered(), 0, "step {step}: no carry left");
            // Server to client.
            server.encrypt(b"hello ", &mut pool).unwrap();
            server.encrypt(&data, &mut pool).unwrap();
            let back = sent(&mut server, &mut pool);
            let mut rd = &back[..];
            let mut got = Vec::new();
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
                let mut buf = [0u8; 65_536];
                while let Ok(n @ 1..) = client.reader().read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            assert_eq!(&got[..6], b"hello ");
            assert_eq!(&got[6..], &data[..], "step {step}");
            // close_notify both ways.
            client.send_close_notify();
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            let (_, got) = feed(&mut server, &wire, step, &mut pool);
            assert!(got.peer_closed, "step {step}");
            server.close_notify(&mut pool);
            assert!(!sent(&mut server, &mut pool).is_empty());
            server.clear(&mut pool);
        }
    }

    #[test]
    fn a_forged_record_after_the_handshake_fails_with_one_alert() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (server_cfg, client_cfg) = configs(version);
            let mut pool = BufPool::default();
            let name = ServerName::try_from("localhost").unwrap();
            let mut client = ClientConnection::new(client_cfg, name).unwrap();
            let mut server = TlsSession::new(server_cfg, Instant::now()).unwrap();
            while client.is_handshaking() || !server.established() {
                let mut flight = Vec::new();
                while client.wants_write() {
                    client.write_tls(&mut flight).unwrap();
                }
                feed(&mut server, &flight, 100_000, &mut pool);
                let back = sent(&mut server, &mut pool);
                let mut rd = &back[..];
                while !rd.is_empty() {
                    client.read_tls(&mut rd).unwrap();
                    client.process_new_packets().unwrap();
                }
            }
            // Application data that does not decrypt, after a good record
            // in the same read.
            client.writer().write_all(b"good").unwrap();
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            wire.extend_from_slice(&[23, 3, 3, 0, 40]);
            wire.extend_from_slice(&[0x5a; 40]);
            let mut plain = Vec::new();
            assert!(server.receive(&mut wire, &mut plain, &mut pool).is_err());
            assert_eq!(plain, b"good");
            assert!(server.failed());
            // Exactly one alert record goes out.
            let alert = sent(&mut server, &mut pool);
            assert_eq!(
                alert[0],
                if version == &rustls::version::TLS13 {
                    23
                } else {
                    21
                }
            );
            let len = u16::from_be_bytes([alert[3], alert[4]]) as usize;
            assert_eq!(alert.len(), 5 + len, "one record");
            server.clear(&mut pool);
        }
    }

    #[test]
    fn garbage_fails_without_panicking_and_queues_an_alert() {
        let (server_cfg, client_cfg) = configs(&rustls::version::TLS13);
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(client_cfg, name).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            vec![0xff; 64],
            [&[0x16, 3, 1, 0, 16][..], &[0xab; 16]].concat(),
            [&[0x16, 3, 3, 0xff, 0xff][..], &[0; 100]].concat(),
            // Half a real ClientHello, then garbage in the same record.
            [&hello[..hello.len() / 2], &[0xee; 300][..]].concat(),
        ];
        for (i, bytes) in cases.into_iter().enumerate() {
            for step in [1, 5, 1000] {
                let mut pool = BufPool::default();
                let mut s = TlsSession::new(server_cfg.clone(), Instant::now()).unwrap();
                let mut plain = Vec::new();
                let mut failed = false;
                for chunk in bytes.chunks(step) {
                    let mut chunk = chunk.to_vec();
                    if s.receive(&mut chunk, &mut plain, &mut pool).is_err() {
                        failed = true;
                        break;
                    }
                }
                if i < 3 {
                    assert!(failed, "case {i} step {step}");
                }
                if failed {
                    assert!(s.failed());
                }
                assert!(plain.is_empty());
                s.clear(&mut pool);
            }
        }
    }
}
