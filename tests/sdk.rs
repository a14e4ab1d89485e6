//! The browser SDK's own suite (`clients/js`, `node --test`), run against
//! this build's server binary, so `cargo test` covers the client half too.
//!
//! Needs Node.js ≥ 18 and npm (`.ci/run` installs them); the SDK's only
//! development dependency (`ws`, the Node WebSocket) comes from the
//! committed lock file through `npm ci`.

mod common;

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

/// The server serves the SDK it was built with: `/ringcast.js` revalidated
/// through its `ETag`, `/ringcast-VERSION.js` cached for good.
#[test]
fn the_server_serves_the_sdk_it_embeds() {
    let server = common::Server::start(&["--cores", "1"]);
    let file =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js/index.js"))
            .expect("clients/js/index.js");
    let versioned = format!("/ringcast-{}.js", env!("CARGO_PKG_VERSION"));
    let mut etags = Vec::new();
    for (path, cache) in [
        ("/ringcast.js", "Cache-Control: no-cache\r\n"),
        (
            versioned.as_str(),
            "Cache-Control: public, max-age=31536000, immutable\r\n",
        ),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (status, resp) = common::http_exchange(server.addr, req.as_bytes());
        assert_eq!(status, 200, "{path}");
        assert!(
            resp.contains("Content-Type: text/javascript; charset=utf-8\r\n"),
            "{resp:.300}"
        );
        assert!(resp.contains(cache), "{path}: {resp:.300}");
        assert_eq!(common::http_body(&resp), file, "{path}: the embedded file");
        let etag = resp
            .lines()
            .find_map(|l| l.strip_prefix("ETag: "))
            .expect("an ETag")
            .to_owned();
        etags.push(etag);
    }
    assert_eq!(etags[0], etags[1]);
    assert!(etags[0].starts_with('"') && etags[0].ends_with('"'));
}

/// `/demo` is the chat page the binary embeds; its rooms (`demo:*`) have
/// presence and join/leave through the built-in rule.
#[test]
fn the_server_serves_the_demo_and_its_rooms_have_presence() {
    let server = common::Server::start(&["--cores", "1"]);
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/demo/index.html"),
    )
    .expect("clients/demo/index.html");
    let (status, resp) =
        common::http_exchange(server.addr, b"GET /demo HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(
        resp.contains("Content-Type: text/html; charset=utf-8\r\n"),
        "{resp:.300}"
    );
    assert_eq!(common::http_body(&resp), page);
    let (mut ws, _) = common::ws_client(&server.url("/ws"));
    common::send_json(
        &mut ws,
        serde_json::json!({"type":"subscribe","channel":"demo:lobby","id":1,"presence":true,"join_leave":true}),
    );
    let ack = common::recv_json(&mut ws);
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["presence"]["count"], 1, "{ack}");
}
