//! Heartbeats and idle timeouts over real sockets: a peer that never
//! answers pings is closed with 1011, one that answers stays open, one
//! that sends nothing is closed with 1000 after `--idle-timeout`.
//!
//! Nothing here asserts how soon anything happens; every wait is bounded
//! by PATIENCE only so a bug fails instead of hanging.

mod common;

use common::{client, close_client, masked, metric_sum, raw_ws, read_frame, scrape, Server};
use common::{expect_close, PATIENCE};
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};
use tungstenite::Message;

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

#[test]
fn answering_peer_stays_open_across_many_pings() {
    const PINGS: usize = 10;
    let server = Server::start(&args(&[]));
    let mut ws = client(&server.url("/echo"));
    // Short reads so the client is nearly always reading, and answers a
    // ping (tungstenite queues the pong and flushes it on the next call)
    // as soon as it arrives; a timed-out read sends the next echo.
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    }
    let start = Instant::now();
    let (mut pings, mut sent, mut echoed) = (0usize, 0usize, 0usize);
    // Pings whose pongs were flushed before the echo in flight was sent,
    // and so were read by the server before it answered that echo.
    let (mut pings_at_send, mut answered) = (0usize, 0usize);
    loop {
        assert!(
            start.elapsed() < PATIENCE,
            "{pings} pings, {echoed} echoes in {PATIENCE:?}"
        );
        match ws.read() {
            Ok(Message::Ping(p)) => {
                assert_eq!(p.len(), 4);
                pings += 1;
                ws.flush().unwrap();
            }
            Ok(Message::Text(t)) => {
                assert_eq!(t.as_str(), format!("echo {echoed}"));
                echoed += 1;
                answered = pings_at_send;
            }
            Ok(other) => panic!("unexpected {other:?} after {pings} pings"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                if echoed == sent {
                    pings_at_send = pings;
                    ws.send(Message::text(format!("echo {sent}"))).unwrap();
                    sent += 1;
                }
            }
            Err(e) => panic!("connection failed after {pings} pings: {e}"),
        }
        if answered >= PINGS && echoed == sent {
            let m = scrape(&server);
            assert_eq!(metric_sum(&m, "ringcast_heartbeat_closes_total", None), 0.0);
            assert!(metric_sum(&m, "ringcast_pings_total", None) >= PINGS as f64);
            if metric_sum(&m, "ringcast_ping_rtt_seconds_count", None) >= PINGS as f64 {
                break;
            }
            // A pong the test thread was too slow to send answered a
            // superseded ping and was not timed: go on until enough are.
        }
    }
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
    }
    close_client(ws);
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
