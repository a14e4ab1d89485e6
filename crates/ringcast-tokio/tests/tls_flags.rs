//! `--tls-cert`/`--tls-key` refused up front when incomplete or unreadable,
//! with the flag and the file named (the TLS serving itself is exercised by
//! the load generator's tests/tls.rs, which makes a certificate).

use std::process::{Command, Stdio};

/// Runs the baseline with `args` (it must exit on its own: every case here
/// fails before listening) and returns its exit success and stderr.
fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast-tokio"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running ringcast-tokio");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_flags_come_in_pairs_and_name_bad_files() {
    let (ok, err) = run(&["--tls-cert", "cert.pem"]);
    assert!(!ok && err.contains("--tls-key"), "{err}");
    let (ok, err) = run(&["--tls-key", "key.pem"]);
    assert!(!ok && err.contains("--tls-cert"), "{err}");

    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.pem");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let (m, e) = (missing.to_str().unwrap(), empty.to_str().unwrap());

    let (ok, err) = run(&["--tls-cert", m, "--tls-key", e]);
    assert!(
        !ok && err.contains("--tls-cert") && err.contains(m),
        "{err}"
    );
    let (ok, err) = run(&["--tls-cert", e, "--tls-key", e]);
    assert!(
        !ok && err.contains("no PEM certificate") && err.contains(e),
        "{err}"
    );
}
