//! The server's TLS configuration: a certificate chain and key from PEM
//! files, TLS 1.3 and 1.2 with rustls's default safe cipher suites (ring),
//! ALPN `http/1.1`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerSessionMemoryCache;
use rustls::ServerConfig;

/// Session IDs each core remembers for TLS 1.2 resumption and TLS 1.3
/// tickets (rustls's default size).
const SESSION_CACHE: usize = 256;

/// Where the certificate chain and its private key are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// PEM: the server's certificate first, then its intermediates.
    pub(crate) cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub(crate) key: PathBuf,
}

/// Reads and checks the files and builds the configuration every core
/// starts from. The error names the file and what is wrong with it.
pub(crate) fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "--tls-key {}: no usable private key ({})",
            files.key.display(),
            pem_error(&e)
        )
    })?;
    // ring: no C toolchain beyond a C compiler, and fast AES-GCM; rustls
    // deprecates it only for lacking post-quantum key exchange (X25519 and
    // the NIST curves are what it offers; see README "TLS").
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    // X25519 first (what browsers offer first too): ring's default order
    // starts with P-384, which costs several times X25519's CPU per
    // handshake when a client leaves the choice to the server.
    provider.kx_groups = vec![
        rustls::crypto::ring::kx_group::X25519,
        rustls::crypto::ring::kx_group::SECP256R1,
        rustls::crypto::ring::kx_group::SECP384R1,
    ];
    let provider = Arc::new(provider);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "--tls-cert {} / --tls-key {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A core's own copy of `base`, with its own session cache: the cache's
/// lock is only ever taken by that core, so handshakes on different cores
/// never contend (a resumption that lands on another core does a full
/// handshake). `ktls`: sessions may give their secrets up to the kernel.
pub(crate) fn per_core(base: &Arc<ServerConfig>, ktls: bool) -> Arc<ServerConfig> {
    let mut config = ServerConfig::clone(base);
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    config.enable_secret_extraction = ktls;
    Arc::new(config)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = |e: &rustls::pki_types::pem::Error| {
        format!("--tls-cert {}: {}", path.display(), pem_error(e))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| what(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| what(&e))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no CERTIFICATE block in the PEM file",
            path.display()
        ));
    }
    Ok(certs)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of that kind".into(),
        other => format!("{other:?}"),
    }
}
