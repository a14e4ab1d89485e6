//! TLS for `wss://` targets: the client configuration (trust, versions,
//! ALPN, no resumption unless asked) and the state of one TLS connection as
//! the worker's io_uring loop drives it.
//!
//! The loop owns the socket operations; rustls only transforms bytes. A
//! receive lands in [`Tls::rx`] (ciphertext), [`Tls::received`] feeds it to
//! rustls and appends the plaintext to the connection's read buffer, where
//! the plain path's frame parser reads it. Outgoing plaintext (the upgrade
//! request, queued frames, echo frames from the prebuilt batch) is written
//! into rustls and [`Tls::fill`] moves the records into [`Tls::tx`], which
//! the one send in flight points into. A plain connection has no `Tls` at
//! all (`Conn::tls` is `None`), so its path is the one it always was.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{ring as provider, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, RootCertStore};

/// `--tls-version`: what the client offers.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Version {
    /// TLS 1.2 only.
    #[value(name = "1.2")]
    V12,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    V13,
    /// Both; the server picks (1.3 when it has it).
    Any,
}

impl Version {
    /// The name `--tls-version` takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Version::V12 => "1.2",
            Version::V13 => "1.3",
            Version::Any => "any",
        }
    }
}

/// How the server's certificate is checked.
pub(crate) enum Trust<'a> {
    /// Against the CA certificates (or self-signed certificate) in this
    /// PEM file, for the host of each URL.
    Ca(&'a Path),
    /// Not at all (`--insecure-tls`); the handshake's signatures are still
    /// checked, so the work per handshake is the same.
    Insecure,
}

/// The provider the client uses: ring, offering what browsers offer first.
/// rustls 0.23.48's ring defaults lead with P-384 key exchange and
/// AES-256-GCM; the server follows the client's order for both, so a
/// client with those defaults would make every server handshake pay for
/// P-384 (several times X25519's cost in ring) where a browser's would
/// use X25519. Browsers (Chrome, Firefox) put X25519 first (after a
/// post-quantum hybrid ring lacks), then P-256, P-384; and AES-128-GCM,
/// AES-256-GCM, ChaCha20-Poly1305, TLS 1.3 suites before TLS 1.2's.
fn browser_like_provider() -> CryptoProvider {
    use provider::{cipher_suite as cs, kx_group};
    // ring, as the server uses (no aws-lc, no C toolchain beyond ring's).
    // rustls 0.23.48 deprecates it for lacking post-quantum key exchange,
    // which neither end of this benchmark offers.
    #[allow(deprecated)]
    let ring = provider::default_provider();
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..ring
    }
}

/// The client configuration every TLS connection of the run shares.
/// `resume`: keep sessions (tickets, IDs) and resume them; without it every
/// handshake is a full one.
pub(crate) fn client_config(
    trust: Trust<'_>,
    version: Version,
    resume: bool,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(browser_like_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match version {
        Version::V12 => &[&rustls::version::TLS12],
        Version::V13 => &[&rustls::version::TLS13],
        Version::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let mut config = match trust {
        Trust::Ca(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--ca {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("--ca {}: no PEM certificate in it", path.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// The name a `wss://` URL's host gives the server (SNI and the
/// certificate check): an IP address or a DNS name.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| format!("server name {host:?}: {e}"))
}

/// `--insecure-tls`: any certificate is accepted, but the handshake's
/// signatures are verified as usual (same cost, no trust).
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// One TLS connection's state, boxed in its `Conn`.
pub(crate) struct Tls {
    pub(crate) conn: ClientConnection,
    /// Ciphertext the receive in flight writes into (consumed whole by
    /// [`Tls::received`] before the next receive is posted).
    pub(crate) rx: Box<[u8]>,
    /// Ciphertext to send: `tx[tx_off..]` is what the send in flight (or
    /// the next one) carries.
    pub(crate) tx: Vec<u8>,
    pub(crate) tx_off: usize,
    /// The handshake's outcome has been recorded ([`Tls::established`]).
    pub(crate) established: bool,
}

/// What a receive brought, once decrypted.
pub(crate) struct Received {
    /// Plaintext bytes appended to the read buffer.
    pub(crate) plaintext: usize,
    /// The server sent `close_notify`.
    pub(crate) closed: bool,
}

/// A rustls error and whether it came during the handshake (where it is a
/// property of the setup, a wrong CA, version or name, not of the load).
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) handshaking: bool,
}

/// The negotiated parameters of an established connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) version: String,
    pub(crate) cipher: String,
    /// The key exchange group (none for a resumed TLS 1.2 session).
    pub(crate) kx: Option<String>,
    pub(crate) alpn: Option<String>,
    pub(crate) resumed: bool,
}

impl Session {
    /// The same version, suite and ALPN protocol, and the same key
    /// exchange group when both had one (a resumed TLS 1.2 session has none).
    pub(crate) fn same_parameters(&self, other: &Session) -> bool {
        let kx = match (&self.kx, &other.kx) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        kx && (&self.version, &self.cipher, &self.alpn)
            == (&other.version, &other.cipher, &other.alpn)
    }
}

impl Tls {
    /// A client connection to `name`, with room for receives of
    /// `rx_len` bytes. rustls starts with its ClientHello queued, so the
    /// first [`Tls::fill`] has it to send.
    pub(crate) fn new(
        config: &Arc<ClientConfig>,
        name: ServerName<'static>,
        rx_len: usize,
    ) -> io::Result<Tls> {
        let mut conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
        // The loop bounds what it queues itself (one send in flight, the
        // rest behind it), as on the plain path: rustls never refuses
        // plaintext, so a write is always whole.
        conn.set_buffer_limit(None);
        Ok(Tls {
            conn,
            rx: vec![0; rx_len].into_boxed_slice(),
            tx: Vec::new(),
            tx_off: 0,
            established: false,
        })
    }

    /// Queues plaintext (whole frames, in order). Before the handshake
    /// completes rustls holds it and sends it right after.
    #[inline]
    pub(crate) fn write(&mut self, plaintext: &[u8]) -> io::Result<()> {
        self.conn.writer().write_all(plaintext)
    }

    /// Nothing of `tx` is left to send.
    #[inline]
    pub(crate) fn tx_done(&self) -> bool {
        self.tx_off >= self.tx.len()
    }

    /// Moves every record rustls has ready into `tx` (which must be sent
    /// out already); true if there is something to send.
    pub(crate) fn fill(&mut self) -> io::Result<bool> {
        debug_assert!(self.tx_done());
        self.tx.clear();
        self.tx_off = 0;
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.tx)?;
        }
        Ok(!self.tx.is_empty())
    }

    /// Feeds `rx[..n]` (just received) to rustls and appends the plaintext
    /// to `rbuf[*rend..]`, growing `rbuf` (doubling) when it lacks room.
    /// `rstart..*rend` is unprocessed input: moved to the front first when
    /// that makes room.
    pub(crate) fn received(
        &mut self,
        n: usize,
        rbuf: &mut Vec<u8>,
        rstart: &mut usize,
        rend: &mut usize,
    ) -> Result<Received, Failure> {
        let mut input = &self.rx[..n];
        let mut out = Received {
            plaintext: 0,
            closed: false,
        };
        while !input.is_empty() {
            let read = self.conn.read_tls(&mut input).map_err(|e| Failure {
                message: e.to_string(),
                handshaking: self.conn.is_handshaking(),
            })?;
            let state = self.conn.process_new_packets().map_err(|e| Failure {
                message: match e {
                    rustls::Error::InvalidCertificate(_) => format!(
                        "{e} (does --ca hold the CA that signed the server's certificate, \
                         and does that certificate name the --addr host?)"
                    ),
                    e => e.to_string(),
                },
                handshaking: self.conn.is_handshaking(),
            })?;
            let want = state.plaintext_bytes_to_read();
            if want > 0 {
                make_room(rbuf, rstart, rend, want);
                self.conn
                    .reader()
                    .read_exact(&mut rbuf[*rend..*rend + want])
                    .map_err(|e| Failure {
                        message: format!("reading decrypted data: {e}"),
                        handshaking: false,
                    })?;
                *rend += want;
                out.plaintext += want;
            }
            if state.peer_has_closed() {
                out.closed = true;
                break;
            }
            if read == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// The negotiated parameters, once the handshake is over and the first
    /// time only (`None` before, and after the first call).
    pub(crate) fn established(&mut self) -> Option<Session> {
        if self.established || self.conn.is_handshaking() {
            return None;
        }
        self.established = true;
        let c = &self.conn;
        Some(Session {
            version: c
                .protocol_version()
                .map_or_else(|| "?".into(), |v| format!("{v:?}")),
            cipher: c
                .negotiated_cipher_suite()
                .map_or_else(|| "?".into(), |s| format!("{:?}", s.suite())),
            kx: c
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name())),
            alpn: c
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            resumed: c.handshake_kind() == Some(HandshakeKind::Resumed),
        })
    }
}

/// Ensures `rbuf[*rend..]` holds at least `want` bytes: compacts the
/// unprocessed `rstart..rend` to the front, then doubles as needed.
fn make_room(rbuf: &mut Vec<u8>, rstart: &mut usize, rend: &mut usize, want: usize) {
    if rbuf.len() - *rend >= want {
        return;
    }
    if *rstart > 0 {
        rbuf.copy_within(*rstart..*rend, 0);
        *rend -= *rstart;
        *rstart = 0;
    }
    let mut len = rbuf.len().max(1);
    while len - *rend < want {
        len *= 2;
    }
    if len > rbuf.len() {
        rbuf.resize(len, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_leads_with_x25519_and_aes_128() {
        let p = browser_like_provider();
        assert_eq!(p.kx_groups[0].name(), rustls::NamedGroup::X25519);
        assert_eq!(
            p.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        // Every suite and group ring has is still offered.
        #[allow(deprecated)]
        let ring = provider::default_provider();
        assert_eq!(p.cipher_suites.len(), ring.cipher_suites.len());
        assert_eq!(p.kx_groups.len(), ring.kx_groups.len());
    }

    #[test]
    fn room_is_made_by_compacting_then_growing() {
        let mut buf = vec![0u8; 8];
        buf[5..8].copy_from_slice(b"abc");
        let (mut s, mut e) = (5, 8);
        make_room(&mut buf, &mut s, &mut e, 4);
        assert_eq!((s, e, buf.len()), (0, 3, 8));
        assert_eq!(&buf[..3], b"abc");
        make_room(&mut buf, &mut s, &mut e, 20);
        assert_eq!((s, e), (0, 3));
        assert!(buf.len() - e >= 20 && buf.len() == 32, "{}", buf.len());
        assert_eq!(&buf[..3], b"abc");
    }

    #[test]
    fn names_from_url_hosts() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("localhost"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("bad name").is_err());
    }
}
