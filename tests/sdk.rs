//! The browser SDK's own suite (`clients/js`, `node --test`), run against
//! this build's server binary, so `cargo test` covers the client half too.
//!
//! Needs Node.js ≥ 18 and npm (`.ci/run` installs them); the SDK's only
//! development dependency (`ws`, the Node WebSocket) comes from the
//! committed lock file through `npm ci`.

use std::path::Path;
use std::process::Command;

#[test]
fn the_sdk_suite_passes_against_this_server() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    let node = Command::new("node").arg("--version").output();
    let Ok(node) = node else {
        panic!("node not found: install Node.js >= 18 (Debian: apt-get install nodejs npm)");
    };
    assert!(node.status.success(), "node --version failed");
    if !dir.join("node_modules/ws").is_dir() {
        let ci = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm (install it with Node.js)");
        assert!(ci.success(), "npm ci in clients/js failed");
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_ringcast"));
    let status = Command::new("node")
        .args(["--test", "--test-concurrency=1"])
        .current_dir(&dir)
        .env("RINGCAST_BIN", bin)
        .status()
        .expect("node --test");
    assert!(
        status.success(),
        "the SDK's node --test suite failed (output above)"
    );
}
