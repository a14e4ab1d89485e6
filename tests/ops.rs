//! Operator endpoints over real sockets: `/healthz`, `/readyz`, and
//! `/metrics` parsed with a Prometheus text parser, its counters checked
//! against what the test did.

mod common;

use common::{client, http_exchange, Server};
use tungstenite::Message;

fn get(server: &Server, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    http_exchange(server.addr, req.as_bytes())
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Sums a metric's samples over cores (optionally only those with a label).
fn sum(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name}: unexpected sample type"),
        })
        .sum()
}

#[test]
fn health_and_readiness_answer_plain_http() {
    let server = Server::start(&["--cores", "2"]);
    let (status, resp) = get(&server, "/healthz");
    assert_eq!(status, 200, "{resp}");
    assert_eq!(body(&resp), "ok\n");
    assert!(resp.contains("Connection: close\r\n"));
    let (status, resp) = get(&server, "/readyz");
    assert_eq!(status, 200, "{resp}");
    assert_eq!(body(&resp), "ready\n");
    // Still HTTP: other methods are refused, unknown paths are 404.
    let (status, _) = http_exchange(server.addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 405);
    let (status, _) = get(&server, "/nothing-here");
    assert_eq!(status, 404);
    let (status, _) = server.stop();
    assert!(status.success());
}

#[test]
fn metrics_parse_and_count_what_the_clients_did() {
    let server = Server::start(&["--cores", "2"]);
    const CLIENTS: usize = 6;
    const MESSAGES: usize = 25;
    let mut sockets = Vec::new();
    let mut payload_bytes = 0usize;
    for c in 0..CLIENTS {
        let mut ws = client(&server.url("/echo"));
        for m in 0..MESSAGES {
            let text = format!("client {c} message {m}");
            payload_bytes += text.len();
            ws.send(Message::text(text.clone())).unwrap();
            assert_eq!(ws.read().unwrap(), Message::text(text));
        }
        sockets.push(ws);
    }
    // One refused handshake (wrong version) and one plain request.
    let (status, _) = http_exchange(
        server.addr,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    );
    assert_eq!(status, 426);
    let (status, _) = get(&server, "/healthz");
    assert_eq!(status, 200);

    let (status, resp) = get(&server, "/metrics");
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("Content-Type: text/plain; version=0.0.4"));
    let lines = body(&resp).lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");

    // Both cores report every family.
    let cores: std::collections::BTreeSet<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "ringcast_connections")
        .filter_map(|s| s.labels.get("core").map(str::to_owned))
        .collect();
    assert_eq!(cores.len(), 2, "one series per core");

    let total = (CLIENTS * MESSAGES) as f64;
    assert_eq!(sum(&scrape, "ringcast_messages_in_total", None), total);
    assert_eq!(
        sum(&scrape, "ringcast_bytes_in_total", None),
        payload_bytes as f64
    );
    let outcome = |o| sum(&scrape, "ringcast_handshakes_total", Some(("outcome", o)));
    assert_eq!(outcome("upgraded"), CLIENTS as f64);
    assert_eq!(outcome("refused"), 1.0);
    // The /healthz request and this scrape itself.
    assert_eq!(outcome("http"), 2.0);
    // The echo clients, plus the scrape's own connection.
    assert!(sum(&scrape, "ringcast_connections", None) >= CLIENTS as f64);
    assert!(sum(&scrape, "ringcast_accepted_total", None) >= (CLIENTS + 3) as f64);
    assert!(sum(&scrape, "ringcast_sends_total", None) >= total);
    assert_eq!(
        sum(&scrape, "ringcast_slow_consumer_closes_total", None),
        0.0
    );

    for mut ws in sockets {
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    }
    let (status, _) = server.stop();
    assert!(status.success());
}
