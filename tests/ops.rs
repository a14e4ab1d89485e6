//! Operator endpoints over real sockets: `/healthz`, `/readyz`, and
//! `/metrics` parsed with a Prometheus text parser, its counters checked
//! against what the test did.

mod common;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::time::Instant;

use common::{client, http_exchange, metric_sum as sum, Server, PATIENCE};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

type Ws = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

fn get(server: &Server, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    http_exchange(server.addr, req.as_bytes())
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn health_and_readiness_answer_plain_http() {
    let server = Server::spawn(&["--cores", "2"]);
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
    // A body announced for a resource that takes none is refused from the
    // head, not waited for and buffered.
    let (status, resp) = http_exchange(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
    );
    assert_eq!(status, 413, "{resp}");
    assert!(resp.contains("body_not_allowed"), "{resp}");
    let (status, _) = server.stop();
    assert!(status.success());
}

#[test]
fn metrics_parse_and_count_what_the_clients_did() {
    let server = Server::spawn(&["--cores", "2"]);
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

// ----- /ws helpers ------------------------------------------------------

/// A `/ws` client and the core it landed on (`X-Ringcast-Core`, which the
/// welcome, read here, repeats).
fn ws_client(server: &Server) -> (Ws, usize) {
    let (mut ws, resp) = tungstenite::connect(server.url("/ws")).expect("upgrade");
    let core = resp
        .headers()
        .get("x-ringcast-core")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("X-Ringcast-Core");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
    }
    let welcome = common::expect_welcome(&mut ws);
    assert_eq!(welcome["core"], core, "{welcome}");
    (ws, core)
}

/// Sends a JSON message; returns its length in bytes.
fn send(ws: &mut Ws, v: Value) -> usize {
    let text = v.to_string();
    ws.send(Message::text(text.clone())).unwrap();
    text.len()
}

/// The next JSON message (heartbeat pings are answered by tungstenite).
fn recv(ws: &mut Ws) -> Value {
    loop {
        match common::read_message(ws) {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn scrape(server: &Server) -> (String, prometheus_parse::Scrape) {
    let (status, resp) = get(server, "/metrics");
    assert_eq!(status, 200, "{resp}");
    let text = body(&resp).to_owned();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    (text, parsed)
}

/// SIGTERM with `--drain-delay`: `/readyz` turns 503 at once, open
/// connections are still served during the delay, then closed with 1001,
/// and the process exits 0.
#[test]
fn readyz_fails_first_and_open_clients_are_served_during_the_drain_delay() {
    // The checks "during the delay" must all be done before it ends. A
    // runner slower than that proves nothing either way, so such a run is
    // repeated with a longer delay; only a failure seen before the delay
    // was over (the server drained early) or on the last attempt counts.
    const DELAYS: [u64; 3] = [3, 8, 20];
    for (i, delay) in DELAYS.into_iter().enumerate() {
        if drain_delay_run(delay, i + 1 == DELAYS.len()) {
            return;
        }
        eprintln!(
            "the runner took longer than the {delay} s drain delay: again, with a longer one"
        );
    }
}

/// One run of the drain-delay test with `--drain-delay DELAY`. Returns
/// false if a check during the delay failed only after the delay was over
/// (and `last` is false); panics on any other failure.
fn drain_delay_run(delay: u64, last: bool) -> bool {
    let delay_s = delay.to_string();
    let mut server = Server::spawn(&["--cores", "2", "--drain-delay", &delay_s]);
    let (mut ws, _) = ws_client(&server);
    send(&mut ws, json!({"type":"subscribe","channel":"d","id":1}));
    let (epoch, _) = common::check_offset_ack(&recv(&mut ws), Some(1));
    assert_eq!(get(&server, "/readyz").0, 200);

    // Taken before the signal: the server's delay starts later still.
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let during = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let start = Instant::now();
        loop {
            let (status, resp) = get(&server, "/readyz");
            if status == 503 {
                break;
            }
            assert_eq!(status, 200, "{resp}");
            assert!(start.elapsed() < PATIENCE, "/readyz never turned 503");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Still liveness: /healthz is 200 while draining.
        assert_eq!(get(&server, "/healthz").0, 200);

        // The open connection still works during the delay.
        send(&mut ws, json!({"type":"ping","id":2}));
        assert_eq!(recv(&mut ws), json!({"type":"pong","id":2}));
        send(&mut ws, json!({"type":"subscribe","channel":"e","id":3}));
        common::check_offset_ack(&recv(&mut ws), Some(3));
        send(
            &mut ws,
            json!({"type":"publish","channel":"d","payload":"still here","id":4}),
        );
        let mut got = vec![recv(&mut ws), recv(&mut ws)];
        got.sort_by_key(|v| v["type"].as_str().map(str::to_owned));
        assert_eq!(
            got,
            [
                json!({"type":"ack","id":4,"epoch":epoch,"offset":1}),
                json!({"type":"message","channel":"d","offset":1,"payload":"still here"}),
            ]
        );
    }));
    if let Err(failure) = during {
        if !last && signalled.elapsed() >= std::time::Duration::from_secs(delay) {
            return false;
        }
        std::panic::resume_unwind(failure);
    }

    // Then the server closes it as going away.
    let close = loop {
        match ws.read() {
            Ok(Message::Close(f)) => break f,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("unexpected {other:?} before the close"),
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    while ws.read().is_ok() {}
    // Our FIN: the server waits for it before it lets the socket go.
    drop(ws);
    let status = server.wait();
    assert!(status.success(), "{status}\n{}", server.log());
    true
}

/// After a channel load (subscribers on both cores, publishes over /ws and
/// the API, every message received by every client), the scrape's counters
/// match what the clients did exactly.
#[test]
fn metrics_count_a_channel_load_exactly() {
    const PER_PUBLISHER: usize = 10;
    let server = Server::spawn(&["--cores", "2", "--api-key", "k"]);

    // At least six subscribers, at least two on each core; every upgrade
    // is kept, so they are all counted.
    let mut clients: Vec<(Ws, usize)> = Vec::new();
    let on = |cs: &[(Ws, usize)], core| cs.iter().filter(|c| c.1 == core).count();
    while clients.len() < 6 || on(&clients, 0) < 2 || on(&clients, 1) < 2 {
        assert!(clients.len() < 200, "connections did not spread over cores");
        clients.push(ws_client(&server));
    }
    let n = clients.len();
    let (mut ws_in, mut bytes_in) = (0usize, 0usize);
    for (ws, _) in &mut clients {
        bytes_in += send(ws, json!({"type":"subscribe","channel":"load","id":1}));
        ws_in += 1;
        assert_eq!(common::check_offset_ack(&recv(ws), Some(1)).1, 0);
    }

    // One publisher on each core (both are subscribers too).
    let publishers = [
        clients.iter().position(|c| c.1 == 0).unwrap(),
        clients.iter().position(|c| c.1 == 1).unwrap(),
    ];
    for seq in 0..PER_PUBLISHER {
        for &p in &publishers {
            let msg =
                json!({"type":"publish","channel":"load","payload":{"p":p,"seq":seq},"id":seq});
            bytes_in += send(&mut clients[p].0, msg);
            ws_in += 1;
        }
    }
    let m = PER_PUBLISHER * publishers.len();

    // And through the API: two single publishes and a batch of three.
    let api = |body: String| {
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-Api-Key: k\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, resp) = http_exchange(server.addr, req.as_bytes());
        assert_eq!(status, 200, "{resp}");
    };
    api(json!({"channel":"load","payload":"api 1"}).to_string());
    api(json!({"channel":"load","payload":"api 2"}).to_string());
    api(json!({"messages":[
        {"channel":"load","payload":"api 3"},
        {"channel":"load","payload":"api 4"},
        {"channel":"load","payload":"api 5"},
    ]})
    .to_string());
    let k = 5;
    let api_requests = 3;

    // Every client receives everything (publishers also their acks), then
    // a ping round trip, before the scrape.
    for (i, (ws, _)) in clients.iter_mut().enumerate() {
        let want_acks = if publishers.contains(&i) {
            PER_PUBLISHER
        } else {
            0
        };
        let (mut msgs, mut acks) = (0, 0);
        while msgs < m + k || acks < want_acks {
            let v = recv(ws);
            match v["type"].as_str() {
                Some("message") => {
                    msgs += 1;
                    // The channel's order, whoever published.
                    assert_eq!(v["offset"], msgs, "client {i}: {v}");
                }
                Some("ack") => acks += 1,
                _ => panic!("client {i}: unexpected {v}"),
            }
        }
        assert_eq!((msgs, acks), (m + k, want_acks), "client {i}");
        bytes_in += send(ws, json!({"type":"ping","id":7}));
        ws_in += 1;
        assert_eq!(recv(ws), json!({"type":"pong","id":7}));
    }

    let (text, scrape) = scrape(&server);
    println!("----- /metrics after the channel load -----\n{text}");

    let total = (m + k) as f64;
    assert_eq!(sum(&scrape, "ringcast_publishes_total", None), total);
    assert_eq!(
        sum(&scrape, "ringcast_deliveries_total", None),
        total * n as f64
    );
    assert_eq!(sum(&scrape, "ringcast_subscriptions", None), n as f64);
    // Each core holds the channel: local subscribers on both.
    assert_eq!(sum(&scrape, "ringcast_channels", None), 2.0);
    let outcome = |o| sum(&scrape, "ringcast_handshakes_total", Some(("outcome", o)));
    assert_eq!(outcome("upgraded"), n as f64);
    // The API requests and this scrape.
    assert_eq!(outcome("http"), (api_requests + 1) as f64);
    assert_eq!(outcome("refused"), 0.0);
    assert_eq!(
        sum(&scrape, "ringcast_messages_in_total", None),
        ws_in as f64
    );
    assert_eq!(
        sum(&scrape, "ringcast_bytes_in_total", None),
        bytes_in as f64
    );
    // Replies (a welcome each, a subscribe ack each, a publish ack each, a
    // pong each) and deliveries.
    assert_eq!(
        sum(&scrape, "ringcast_messages_out_total", None),
        (n + n + m + n) as f64 + total * n as f64
    );
    // Every publication was sequenced once, by the channel's owner.
    assert_eq!(sum(&scrape, "ringcast_sequenced_total", None), total);
    assert_eq!(sum(&scrape, "ringcast_protocol_errors_total", None), 0.0);
    assert_eq!(
        sum(&scrape, "ringcast_slow_consumer_closes_total", None),
        0.0
    );
    assert!(sum(&scrape, "ringcast_connections", None) >= n as f64);

    // The heartbeat histogram: one per core, ending in a +Inf bucket.
    let hist: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "ringcast_ping_rtt_seconds")
        .collect();
    let cores: BTreeSet<_> = hist.iter().filter_map(|s| s.labels.get("core")).collect();
    assert_eq!(cores.len(), 2, "a histogram per core");
    for h in &hist {
        let prometheus_parse::Value::Histogram(buckets) = &h.value else {
            panic!(
                "ringcast_ping_rtt_seconds is not a histogram: {:?}",
                h.value
            );
        };
        let inf = buckets.iter().find(|b| b.less_than == f64::INFINITY);
        assert!(inf.is_some(), "no +Inf bucket: {buckets:?}");
    }
    for core in 0..2 {
        let line = format!("ringcast_ping_rtt_seconds_bucket{{core=\"{core}\",le=\"+Inf\"}} ");
        assert!(text.contains(&line), "{line}");
        assert!(text.contains(&format!(
            "ringcast_ping_rtt_seconds_count{{core=\"{core}\"}} "
        )));
    }

    for (mut ws, _) in clients {
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    }
    let (status, _) = server.stop();
    assert!(status.success());
}

/// A `--config` TOML file sets flags (here: cores, a subscription limit and
/// the API key), and `--print-config` shows the merged result.
#[test]
fn config_file_settings_take_effect() {
    let dir = std::env::temp_dir().join(format!("ringcast-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ringcast.toml");
    std::fs::write(
        &path,
        "# test settings\ncores = 2\nmax-subscriptions = 2\napi-key = \"k\"\n",
    )
    .unwrap();
    let path_str = path.to_str().unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--print-config", "--config", path_str])
        .output()
        .expect("run ringcast --print-config");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{printed}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("max-subscriptions = 2\n"), "{printed}");
    assert!(printed.contains("cores = 2\n"), "{printed}");
    // The key itself is never printed.
    assert!(printed.contains("api-key = \"<redacted>\"\n"), "{printed}");

    let server = Server::spawn(&["--config", path_str]);
    let (mut ws, _) = ws_client(&server);
    for (id, ch) in [(1, "a"), (2, "b")] {
        send(&mut ws, json!({"type":"subscribe","channel":ch,"id":id}));
        common::check_offset_ack(&recv(&mut ws), Some(id));
    }
    send(&mut ws, json!({"type":"subscribe","channel":"c","id":3}));
    let e = recv(&mut ws);
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "too_many_subscriptions", "{e}");
    assert_eq!(e["id"], 3, "{e}");
    // Already subscribed channels still are.
    send(&mut ws, json!({"type":"subscribe","channel":"a","id":4}));
    common::check_offset_ack(&recv(&mut ws), Some(4));

    let publish = |key: &str| {
        let body = r#"{"channel":"a","payload":"from the API"}"#;
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        http_exchange(server.addr, req.as_bytes())
    };
    let (status, resp) = publish("k");
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        recv(&mut ws),
        json!({"type":"message","channel":"a","offset":1,"payload":"from the API"})
    );
    let (status, resp) = publish("wrong");
    assert_eq!(status, 401, "{resp}");

    // Both cores run (the file's `cores = 2`).
    let (_, parsed) = scrape(&server);
    let cores: BTreeSet<_> = parsed
        .samples
        .iter()
        .filter(|s| s.metric == "ringcast_connections")
        .filter_map(|s| s.labels.get("core").map(str::to_owned))
        .collect();
    assert_eq!(cores.len(), 2);

    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    drop(ws);
    let (status, _) = server.stop();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
