//! The generator over `wss://` against the tokio baseline serving TLS with
//! a certificate made here (rcgen: a CA, and a server certificate for
//! 127.0.0.1 and localhost signed by it): echo and broadcast with exact
//! counts and no error, each TLS version, churn with and without session
//! resumption, and a CA that did not sign the server's certificate failing
//! the run at once with the reason named. No timing is asserted.
//!
//! The baseline is another workspace member's binary, so it is looked for
//! beside this test's (`target/<profile>/ringcast-tokio`): `cargo test` at
//! the repo root, or with `-p ringcast-load -p ringcast-tokio`, builds it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::Value;

// PATIENCE bounds anything the test waits for, so a bug fails it instead
// of hanging it. Not a performance assertion.
use common::{load, PATIENCE};

/// The path of another workspace crate's binary, `target/<profile>/<name>`
/// (the test executable runs from `target/<profile>/deps/`).
fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable under target/<profile>/deps/");
    let bin = profile_dir.join(name);
    let release = if profile_dir.ends_with("release") {
        " --release"
    } else {
        ""
    };
    assert!(
        bin.is_file(),
        "{} not found: build it with `cargo build{release} -p {name}`, or run \
         `cargo test{release} -p ringcast-load -p ringcast-tokio` (or `cargo test` at the root)",
        bin.display()
    );
    bin
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// A CA (`ca.pem`) and a server certificate it signed for 127.0.0.1 and
/// localhost (`cert.pem`, `key.pem`), written into `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name
        .push(DnType::CommonName, format!("ringcast test CA {name}"));
    p
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let params = ca_params("main");
    let ca_cert = params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    leaf.distinguished_name
        .push(DnType::CommonName, "ringcast test server");
    let cert = leaf.signed_by(&key, &issuer).expect("server certificate");
    let out = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&out.ca, ca_cert.pem()).unwrap();
    std::fs::write(&out.cert, cert.pem()).unwrap();
    std::fs::write(&out.key, key.serialize_pem()).unwrap();
    out
}

/// Another CA, unrelated to the server's certificate.
fn other_ca(dir: &Path) -> PathBuf {
    let key = KeyPair::generate().expect("key");
    let cert = ca_params("other").self_signed(&key).expect("certificate");
    let path = dir.join("other-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

/// A running `ringcast-tokio --tls-cert --tls-key`, killed on drop.
struct Baseline {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Baseline {
    fn start(dir: &Path, pki: &Pki) -> Baseline {
        let addr_file = dir.join("addr");
        let mut child = Command::new(workspace_bin("ringcast-tokio"))
            .args(["--listen", "127.0.0.1:0", "--threads", "1", "--log", "warn"])
            .arg("--tls-cert")
            .arg(&pki.cert)
            .arg("--tls-key")
            .arg(&pki.key)
            .arg("--addr-file")
            .arg(&addr_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting ringcast-tokio");
        let deadline = Instant::now() + PATIENCE;
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                break text;
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("ringcast-tokio exited ({status}) before writing its address file");
            }
            assert!(
                Instant::now() < deadline,
                "no address file within {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let addr = text.trim().parse().expect("address file");
        Baseline { child, addr }
    }

    fn url(&self) -> String {
        format!("wss://{}", self.addr)
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The common flags: the server, the CA, one thread, short windows.
fn common(srv: &Baseline, ca: &Path) -> Vec<String> {
    let mut a = args(&["--threads", "1", "--duration", "0.4", "--warmup", "0.2"]);
    a.extend([
        "--addr".into(),
        srv.url(),
        "--ca".into(),
        ca.display().to_string(),
    ]);
    a
}

fn u(j: &Value, path: &str) -> u64 {
    j.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} not a number in {j}"))
}

#[test]
fn echo_and_broadcast_over_tls_count_every_message() {
    let dir = scratch("counts");
    let pki = pki(&dir);
    let srv = Baseline::start(&dir, &pki);

    for version in ["1.3", "1.2"] {
        let mut a = args(&["echo", "--conns", "4", "--in-flight", "3", "--size", "100"]);
        a.extend(common(&srv, &pki.ca));
        a.extend(args(&["--tls-version", version]));
        let j = load(&a);
        assert_eq!(u(&j, "/errors"), 0, "{j}");
        assert_eq!(u(&j, "/opened"), 4, "{j}");
        let count = u(&j, "/count");
        assert!(count > 0, "no echo in the window: {j}");
        // Every echo counted has its latency sample, and came back as sent.
        assert_eq!(u(&j, "/latency_us/samples"), count, "{j}");
        assert_eq!(u(&j, "/wire/mismatches"), 0, "{j}");
        // One full handshake per connection, as offered.
        assert_eq!(u(&j, "/tls/handshakes"), 4, "{j}");
        assert_eq!(u(&j, "/tls/resumed"), 0, "{j}");
        assert_eq!(u(&j, "/tls/mixed"), 0, "{j}");
        let want = if version == "1.3" {
            "TLSv1_3"
        } else {
            "TLSv1_2"
        };
        assert_eq!(j["tls"]["version"], want, "{j}");
        assert_eq!(j["tls"]["alpn"], "http/1.1", "{j}");
        // What the generator offers first, as browsers do.
        assert_eq!(j["tls"]["kx"], "X25519", "{j}");
        let suite = if version == "1.3" {
            "TLS13_AES_128_GCM_SHA256"
        } else {
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
        };
        assert_eq!(j["tls"]["cipher"], suite, "{j}");
        assert_eq!(j["tls"]["verified"], true, "{j}");
        assert_eq!(j["tls"]["offered"], version, "{j}");
    }

    // Larger messages than a TLS record (16 KiB): split over records and
    // reassembled, each echo compared with the message sent.
    let mut a = args(&[
        "echo",
        "--conns",
        "2",
        "--in-flight",
        "2",
        "--size",
        "40000",
        "--binary",
    ]);
    a.extend(common(&srv, &pki.ca));
    let j = load(&a);
    assert_eq!(u(&j, "/errors"), 0, "{j}");
    assert!(u(&j, "/count") > 0, "{j}");
    assert_eq!(u(&j, "/wire/mismatches"), 0, "{j}");

    // Broadcast: every message published in the window reaches every
    // subscriber, exactly once.
    let mut a = args(&[
        "broadcast",
        "--conns",
        "20",
        "--rate",
        "200",
        "--size",
        "64",
    ]);
    a.extend(common(&srv, &pki.ca));
    let j = load(&a);
    assert_eq!(u(&j, "/errors"), 0, "{j}");
    let published = u(&j, "/published");
    assert!(published > 0, "nothing published in the window: {j}");
    assert_eq!(u(&j, "/expected"), published * 20, "{j}");
    assert_eq!(u(&j, "/count"), published * 20, "{j}");
    assert_eq!(u(&j, "/loss"), 0, "{j}");
    // 20 subscribers and the publisher.
    assert_eq!(u(&j, "/tls/handshakes"), 21, "{j}");

    // JSON bodies go through TLS the same.
    let mut a = args(&[
        "broadcast",
        "--conns",
        "5",
        "--rate",
        "100",
        "--size",
        "600",
        "--payload",
        "json",
    ]);
    a.extend(common(&srv, &pki.ca));
    let j = load(&a);
    assert_eq!(u(&j, "/errors"), 0, "{j}");
    assert_eq!(u(&j, "/count"), u(&j, "/published") * 5, "{j}");
}

#[test]
fn churn_over_tls_does_full_handshakes_unless_told_to_resume() {
    let dir = scratch("churn");
    let pki = pki(&dir);
    let srv = Baseline::start(&dir, &pki);

    let mut a = args(&["churn", "--parallel", "2"]);
    a.extend(common(&srv, &pki.ca));
    let j = load(&a);
    assert_eq!(u(&j, "/errors"), 0, "{j}");
    assert!(u(&j, "/count") > 0, "no cycle in the window: {j}");
    assert!(u(&j, "/tls/handshakes") >= u(&j, "/count"), "{j}");
    assert_eq!(u(&j, "/tls/resumed"), 0, "{j}");
    assert_eq!(j["tls"]["resumption"], false, "{j}");

    // With --tls-resume the baseline's session cache and tickets let the
    // later connections resume.
    a.push("--tls-resume".into());
    let j = load(&a);
    assert_eq!(u(&j, "/errors"), 0, "{j}");
    let cycles = u(&j, "/count");
    assert!(cycles > 2, "{j}");
    assert!(u(&j, "/tls/resumed") > 0, "nothing resumed: {j}");
    assert_eq!(j["tls"]["resumption"], true, "{j}");
}

#[test]
fn a_wrong_ca_fails_the_run_at_once_naming_the_reason() {
    let dir = scratch("wrong-ca");
    let pki = pki(&dir);
    let wrong = other_ca(&dir);
    let srv = Baseline::start(&dir, &pki);

    for scenario in [
        &["echo", "--conns", "3"][..],
        &["broadcast", "--conns", "3"],
        &["churn", "--parallel", "2"],
    ] {
        let mut a = args(scenario);
        a.extend(common(&srv, &wrong));
        // Past PATIENCE: a generator that waited for connections to open
        // instead of failing would be killed by run_load, failing the test.
        a.extend(args(&["--open-timeout", "600"]));
        let out = common::run(&a);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{scenario:?} succeeded with the wrong CA"
        );
        assert!(
            stderr.contains("TLS handshake with") && stderr.contains("UnknownIssuer"),
            "{scenario:?}: {stderr}"
        );
    }

    // The same server without verification: runs (and says so).
    let mut a = args(&[
        "echo",
        "--conns",
        "2",
        "--threads",
        "1",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
    ]);
    a.extend(["--addr".into(), srv.url(), "--insecure-tls".into()]);
    let j = load(&a);
    assert_eq!(u(&j, "/errors"), 0, "{j}");
    assert_eq!(j["tls"]["verified"], false, "{j}");

    // wss:// with neither --ca nor --insecure-tls: refused up front.
    let out = common::run(&args(&["echo", "--addr", &srv.url()]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca"));
}
