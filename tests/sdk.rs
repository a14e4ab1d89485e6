//! The browser SDK's own suite (`clients/js`, `node --test`), run against
//! this build's server binary, so `cargo test` covers the client half too.
//!
//! Needs Node.js ≥ 18 and npm (`.ci/run` installs them); the SDK's only
//! development dependency (`ws`, the Node WebSocket) comes from the
//! committed lock file through `npm ci`.

mod node;

use std::path::Path;
use std::process::Command;

#[test]
fn the_sdk_suite_passes_against_this_server() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    let version = Command::new("node").arg("--version").output();
    let Ok(version) = version else {
        panic!("node not found: install Node.js >= 18 (Debian: apt-get install nodejs npm)");
    };
    assert!(version.status.success(), "node --version failed");
    node::npm_ci(&dir, "ws");
    let bin = env!("CARGO_BIN_EXE_ringcast");
    node::run_suite(
        &dir,
        "the SDK's node --test suite",
        &[("RINGCAST_BIN", bin)],
    );
}
