//! Heartbeats and idle timeouts over real sockets: a peer that never
//! answers pings is closed with 1011, one that answers stays open, one
//! that sends nothing is closed with 1000 after `--idle-timeout`.
//!
//! Nothing here asserts how soon anything happens; every wait is bounded
//! by PATIENCE only so a bug fails instead of hanging.

mod common;

use common::{expect_close, masked, metric_sum, raw_ws, read_frame, scrape, Server, PATIENCE};
use std::io::{Read, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

/// Pings every 0.1 s whatever the round-trip time.
const FAST_PINGS: [&str; 6] = [
    "--ping-interval",
    "0.1",
    "--ping-min",
    "0.1",
    "--ping-max",
    "0.1",
];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--cores", "1"];
    v.extend_from_slice(&FAST_PINGS);
    v.extend_from_slice(extra);
    v
}

/// Reads frames until a close frame, answering nothing; returns the pings'
/// payloads and the close frame's code and reason.
fn pings_until_close(s: &mut std::net::TcpStream) -> (Vec<Vec<u8>>, u16, Vec<u8>) {
    let start = Instant::now();
    let mut pings = Vec::new();
    loop {
        assert!(start.elapsed() < PATIENCE, "no close frame");
        let (fin, op, p) = read_frame(s).expect("a close frame, not the end");
        assert!(fin);
        match op {
            9 => pings.push(p),
            8 => {
                assert!(p.len() >= 2, "close frame without a code");
                return (pings, u16::from_be_bytes([p[0], p[1]]), p[2..].to_vec());
            }
            _ => panic!("unexpected opcode {op}"),
        }
    }
}

#[test]
fn silent_peer_is_pinged_then_closed_with_1011() {
    let server = Server::start(&args(&[]));
    let mut s = raw_ws(server.addr, "/echo");
    let (pings, code, reason) = pings_until_close(&mut s);
    assert_eq!(code, 1011);
    assert_eq!(reason, b"heartbeat timeout");
    // One ping, then one more per miss until the fifth closes it.
    assert!(pings.len() >= 5, "{} pings before the close", pings.len());
    for p in &pings {
        assert_eq!(p.len(), 4, "ping payload {p:?}");
    }
    let distinct: std::collections::BTreeSet<_> = pings.iter().collect();
    assert_eq!(distinct.len(), pings.len(), "each ping is new: {pings:?}");
    // Complete the close handshake; the server then closes TCP.
    s.write_all(&masked(true, 8, &1011u16.to_be_bytes()))
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);

    let m = scrape(&server);
    assert_eq!(metric_sum(&m, "ringcast_heartbeat_closes_total", None), 1.0);
    assert_eq!(metric_sum(&m, "ringcast_suspects_total", None), 1.0);
    assert!(metric_sum(&m, "ringcast_pings_total", None) >= pings.len() as f64);
    assert_eq!(metric_sum(&m, "ringcast_ping_rtt_seconds_count", None), 0.0);
}

/// Pings every 0.5 s whatever the round-trip time (see below for why not
/// 0.1 s here).
const STEADY_PINGS: [&str; 6] = [
    "--ping-interval",
    "0.5",
    "--ping-min",
    "0.5",
    "--ping-max",
    "0.5",
];

/// What the answering client's reading thread saw.
#[derive(Debug)]
enum Seen {
    Ping(Vec<u8>),
    Text(Vec<u8>),
    Close(u16),
    End(String),
}

#[test]
fn answering_peer_stays_open_across_many_pings() {
    // Why this cannot fail on a slow runner: the server closes a peer only
    // after 5 consecutive pings each went unanswered until the next one was
    // due (0.5 s for the first, then 0.25 s for each retry), so a 1011
    // needs the client's answers to lag by more than that for 1.5 s on
    // end. The pongs are written by a thread that does nothing but block
    // in read and answer, so the test thread's own pace does not matter,
    // and nothing below depends on how fast anything happens: the test
    // waits (up to PATIENCE) for PINGS pings, then checks the connection
    // still works and was never closed. 0.1 s pings would leave only
    // 0.3 s of tolerance, which a loaded runner can exceed.
    const PINGS: usize = 8;
    let mut v = vec!["--cores", "1"];
    v.extend_from_slice(&STEADY_PINGS);
    let server = Server::start(&v);
    let mut reader = raw_ws(server.addr, "/echo");
    let writer = Arc::new(Mutex::new(reader.try_clone().unwrap()));
    let (tx, rx) = mpsc::channel();
    let w = writer.clone();
    let thread = std::thread::spawn(move || loop {
        let seen = match read_frame(&mut reader) {
            Ok((true, 9, p)) => {
                // Answer at once, before telling anyone.
                if let Err(e) = w.lock().unwrap().write_all(&masked(true, 10, &p)) {
                    let _ = tx.send(Seen::End(format!("writing a pong: {e}")));
                    return;
                }
                Seen::Ping(p)
            }
            Ok((true, 1, p)) => Seen::Text(p),
            Ok((_, 8, p)) if p.len() >= 2 => Seen::Close(u16::from_be_bytes([p[0], p[1]])),
            Ok(f) => Seen::End(format!("unexpected frame {f:?}")),
            Err(e) => Seen::End(format!("read: {e}")),
        };
        let last = matches!(seen, Seen::Close(_) | Seen::End(_));
        if tx.send(seen).is_err() || last {
            return;
        }
    });
    let start = Instant::now();
    let next = |what: &str| {
        rx.recv_timeout(PATIENCE.saturating_sub(start.elapsed()))
            .unwrap_or_else(|_| panic!("waiting for {what}: nothing in {PATIENCE:?}"))
    };

    let mut pings = std::collections::BTreeSet::new();
    while pings.len() < PINGS {
        match next("pings") {
            Seen::Ping(p) => {
                assert_eq!(p.len(), 4, "ping payload {p:?}");
                assert!(pings.insert(p), "each ping is new");
            }
            Seen::End(e) => panic!("connection failed after {} pings: {e}", pings.len()),
            other => panic!("{other:?} after {} pings", pings.len()),
        }
    }
    // Still open and served.
    writer
        .lock()
        .unwrap()
        .write_all(&masked(true, 1, b"still here"))
        .unwrap();
    loop {
        match next("the echo") {
            Seen::Ping(_) => continue,
            Seen::Text(t) => break assert_eq!(t, b"still here"),
            other => panic!("{other:?} instead of the echo"),
        }
    }
    let m = scrape(&server);
    assert_eq!(metric_sum(&m, "ringcast_heartbeat_closes_total", None), 0.0);
    assert!(metric_sum(&m, "ringcast_pings_total", None) >= PINGS as f64);
    // The connection outlived more than 5 pings, so at least one pong
    // answered the ping it was for, and its round trip was timed.
    assert!(metric_sum(&m, "ringcast_ping_rtt_seconds_count", None) >= 1.0);

    // Our close: the server answers it with the same code, never 1011.
    writer
        .lock()
        .unwrap()
        .write_all(&masked(true, 8, &1000u16.to_be_bytes()))
        .unwrap();
    let code = loop {
        match next("the close") {
            Seen::Ping(_) => continue,
            Seen::Close(code) => break code,
            other => panic!("{other:?} instead of a close frame"),
        }
    };
    assert_eq!(code, 1000);
    thread.join().expect("reading thread");
    let mut rest = Vec::new();
    let _ = writer.lock().unwrap().read_to_end(&mut rest);
    let m = scrape(&server);
    assert_eq!(metric_sum(&m, "ringcast_heartbeat_closes_total", None), 0.0);
}

#[test]
fn idle_peer_is_closed_with_1000() {
    let server = Server::start(&["--cores", "1", "--idle-timeout", "0.3"]);
    let mut s = raw_ws(server.addr, "/echo");
    assert_eq!(expect_close(&mut s), 1000);

    let m = scrape(&server);
    assert_eq!(metric_sum(&m, "ringcast_idle_closes_total", None), 1.0);
    assert_eq!(metric_sum(&m, "ringcast_heartbeat_closes_total", None), 0.0);
}

#[test]
fn pongs_do_not_keep_an_idle_peer_open() {
    let server = Server::start(&args(&["--idle-timeout", "0.3"]));
    let mut s = raw_ws(server.addr, "/echo");
    let start = Instant::now();
    let code = loop {
        assert!(start.elapsed() < PATIENCE, "no close frame");
        let (_, op, p) = read_frame(&mut s).expect("a close frame, not the end");
        match op {
            // Answer every ping, send nothing else.
            9 => s.write_all(&masked(true, 10, &p)).unwrap(),
            8 => break u16::from_be_bytes([p[0], p[1]]),
            _ => panic!("unexpected opcode {op}"),
        }
    };
    assert_eq!(code, 1000, "closed as idle, not for missed pongs");
    s.write_all(&masked(true, 8, &1000u16.to_be_bytes()))
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);

    let m = scrape(&server);
    assert_eq!(metric_sum(&m, "ringcast_idle_closes_total", None), 1.0);
    assert_eq!(metric_sum(&m, "ringcast_heartbeat_closes_total", None), 0.0);
}
