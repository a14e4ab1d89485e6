//! TLS for the tests: a throwaway CA and server certificate made with
//! rcgen at test time (never committed), and rustls clients that trust it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion,
};

use super::PATIENCE;

/// A TLS stream over TCP, as the tests' clients use it.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;
/// A WebSocket client over TLS.
pub type Wss = tungstenite::WebSocket<TlsStream>;

/// A CA and a server certificate for `localhost` and `127.0.0.1`, as PEM
/// files in a directory of their own.
pub struct Pki {
    /// The directory the files are in (removed on drop).
    pub dir: PathBuf,
    /// The CA certificate (what clients trust).
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    /// A fresh CA named `name` and a server certificate it signed.
    pub fn new(name: &str) -> Pki {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ringcast-tls-{}-{name}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            ca_der: CertificateDer::from(Vec::new()),
            dir,
        };
        pki.issue(name)
    }

    /// Writes a new CA and server certificate over this one's files (what
    /// an operator's renewal does before SIGHUP) and returns the new set.
    pub fn issue(mut self, name: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("ringcast test CA {name}"));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
        let cert = params.signed_by(&key, &ca).expect("server certificate");
        std::fs::write(&self.ca, ca.pem()).expect("write CA");
        std::fs::write(&self.cert, cert.pem()).expect("write cert");
        std::fs::write(&self.key, key.serialize_pem()).expect("write key");
        self.ca_der = ca.der().clone();
        self
    }

    /// The server flags that serve TLS with this certificate.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            path(&self.cert),
            "--tls-key".into(),
            path(&self.key),
        ]
    }

    /// A client configuration trusting this CA, for `versions` (all when
    /// empty), ALPN http/1.1.
    pub fn client_config(
        &self,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .expect("CA into the root store");
        let versions = if versions.is_empty() {
            rustls::DEFAULT_VERSIONS
        } else {
            versions
        };
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A path as a flag value.
pub fn path(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp path").to_owned()
}

/// A TLS connection to `addr` for `localhost`, handshake completed.
pub fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(PATIENCE))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("server name");
    let conn = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// A WebSocket client over TLS on `path`.
pub fn wss(addr: SocketAddr, path: &str, config: Arc<ClientConfig>) -> Wss {
    let stream = tls_connect(addr, config).expect("TLS handshake");
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, resp) = tungstenite::client(url.as_str(), stream).expect("WebSocket upgrade over TLS");
    assert_eq!(resp.status(), 101);
    ws
}

/// One HTTP/1.1 request over TLS (`Connection: close`); the status and the
/// whole response.
pub fn https_exchange(addr: SocketAddr, config: Arc<ClientConfig>, request: &str) -> (u16, String) {
    let mut s = tls_connect(addr, config).expect("TLS handshake");
    s.write_all(request.as_bytes()).expect("write request");
    s.flush().expect("flush");
    let mut out = Vec::new();
    // The server ends with close_notify: a clean EOF, not an error.
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    (status, text)
}
