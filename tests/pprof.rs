//! `GET /debug/pprof/profile`: a CPU profile of the running server, taken
//! while a client keeps it busy, as a gzipped pprof protobuf (decoded here
//! with the pprof crate's own types) and as a flamegraph; behind the API
//! key, one at a time, bad parameters refused.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{client, tcp, Server};
use pprof::protos::Message;
use tungstenite::Message as WsMessage;

const KEY: &str = "pprof-test-key";

/// Sends `GET path` (with the API key unless `key` is `None`) and returns
/// the status, the head and the raw body.
fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut s = tcp(addr);
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .expect("the server closes after its answer");
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, head, resp[split + 4..].to_vec())
}

/// Keeps one `/echo` client busy until `stop` is set, so the profile has
/// something to sample.
fn busy(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut ws = client(&format!("ws://{addr}/echo"));
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            ws.send(WsMessage::text("keep the cores busy")).unwrap();
            assert_eq!(ws.read().unwrap(), WsMessage::text("keep the cores busy"));
            n += 1;
        }
        n
    })
}

#[test]
fn a_cpu_profile_of_the_busy_server_decodes_as_pprof_and_draws_as_svg() {
    let server = Server::spawn(&["--cores", "2", "--api-key", KEY]);
    let stop = Arc::new(AtomicBool::new(false));
    let load = busy(server.addr, stop.clone());

    let (status, head, body) = get(server.addr, "/debug/pprof/profile?seconds=1", Some(KEY));
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("application/octet-stream"), "{head}");
    assert_eq!(&body[..2], &[0x1f, 0x8b], "gzipped, as Go's pprof");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut raw)
        .expect("valid gzip");
    let profile = pprof::protos::Profile::decode(&raw[..]).expect("a pprof protobuf");
    assert!(!profile.sample.is_empty(), "samples of a busy server");
    // Most of the server's CPU is spent inside io_uring_enter; a profile
    // that drops samples taken there (interrupted in libc's syscall
    // wrapper) shows almost nothing.
    assert!(
        profile.string_table.iter().any(|s| s.contains("syscall")),
        "samples taken in system calls are kept"
    );
    assert!(
        profile.string_table.iter().any(|s| s.contains("ringcast")),
        "the server's own functions are named in the profile"
    );

    let (status, head, body) = get(
        server.addr,
        "/debug/pprof/profile?seconds=1&format=svg",
        Some(KEY),
    );
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("image/svg+xml"), "{head}");
    let svg = String::from_utf8(body).expect("SVG is text");
    assert!(
        svg.contains("<svg") && svg.contains("ringcast"),
        "a flamegraph"
    );

    stop.store(true, Ordering::Relaxed);
    assert!(load.join().unwrap() > 0);
    server.stop();
}

#[test]
fn profiles_need_the_key_one_at_a_time_with_valid_parameters() {
    // No API key configured: the endpoint is off.
    let off = Server::spawn(&["--cores", "1"]);
    let (status, _, body) = get(off.addr, "/debug/pprof/profile?seconds=1", None);
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("api_disabled"));
    off.stop();

    let server = Server::spawn(&["--cores", "2", "--api-key", KEY]);
    let (status, _, _) = get(server.addr, "/debug/pprof/profile?seconds=1", None);
    assert_eq!(status, 401);
    let (status, _, _) = get(server.addr, "/debug/pprof/profile?seconds=1", Some("wrong"));
    assert_eq!(status, 401);
    for bad in [
        "seconds=0",
        "seconds=301",
        "seconds=x",
        "seconds=-1",
        "format=png",
    ] {
        let (status, _, body) = get(
            server.addr,
            &format!("/debug/pprof/profile?{bad}"),
            Some(KEY),
        );
        assert_eq!(status, 400, "{bad}");
        assert!(
            String::from_utf8_lossy(&body).contains("bad_request"),
            "{bad}"
        );
    }
    // A second profile while one is being taken: 409, at once. (Should
    // the second request win the race, the first is the one refused.)
    let addr = server.addr;
    let first =
        std::thread::spawn(move || get(addr, "/debug/pprof/profile?seconds=3", Some(KEY)).0);
    let mut statuses = Vec::new();
    loop {
        let (status, _, body) = get(addr, "/debug/pprof/profile?seconds=1", Some(KEY));
        statuses.push(status);
        if status == 409 {
            assert!(String::from_utf8_lossy(&body).contains("profile_running"));
            // Other clients are served while a profile runs: the core
            // never waits for it.
            let mut ws = client(&format!("ws://{}/echo", server.addr));
            ws.send(WsMessage::text("still here")).unwrap();
            assert_eq!(ws.read().unwrap(), WsMessage::text("still here"));
            break;
        }
        assert_eq!(status, 200);
        if statuses.len() >= 5 {
            break;
        }
    }
    statuses.push(first.join().unwrap());
    assert!(
        statuses.contains(&409),
        "a concurrent profile is refused: {statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    server.stop();
}
