//! `/ws` channels over real sockets: typed JSON messages, subscribe and
//! publish across cores, unsubscribe, the publish API.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;

use common::{http_exchange, read_head, tcp, ws_on_core, Running, Server};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

type Ws = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// Sends text exactly as given (for malformed or whitespace-exact input).
fn send_raw(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).unwrap();
}

/// The next text message, as the server wrote it (pings are answered by
/// tungstenite itself).
fn recv_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The next JSON message.
fn recv(ws: &mut Ws) -> Value {
    serde_json::from_str(&recv_text(ws)).expect("JSON")
}

fn subscribe(ws: &mut Ws, channel: &str, id: u64) {
    send(ws, json!({"type":"subscribe","channel":channel,"id":id}));
    assert_eq!(
        recv(ws),
        json!({"type":"ack","id":id}),
        "subscribe {channel}"
    );
}

/// Publishes and waits for the ack (the publisher must not be subscribed
/// to anything that could arrive first).
fn publish(ws: &mut Ws, channel: &str, payload: Value, id: u64) {
    send(
        ws,
        json!({"type":"publish","channel":channel,"payload":payload,"id":id}),
    );
    assert_eq!(recv(ws), json!({"type":"ack","id":id}), "publish {channel}");
}

fn message(channel: &str, payload: Value) -> Value {
    json!({"type":"message","channel":channel,"payload":payload})
}

#[test]
fn subscribe_and_publish_across_cores() {
    let server = Server::start(&["--cores", "2"]);
    let mut sub = ws_on_core(&server, "/ws", 0);
    let mut publ = ws_on_core(&server, "/ws", 1);
    send(
        &mut sub,
        json!({"type":"subscribe","channel":"news","id":1}),
    );
    assert_eq!(recv(&mut sub), json!({"type":"ack","id":1}));
    send(
        &mut publ,
        json!({"type":"publish","channel":"news","payload":{"a":[1,2,"x"]},"id":9}),
    );
    assert_eq!(recv(&mut publ), json!({"type":"ack","id":9}));
    assert_eq!(
        recv(&mut sub),
        json!({"type":"message","channel":"news","payload":{"a":[1,2,"x"]}})
    );
}

/// The subscribe ack promises that every core already routes the channel
/// to the subscriber: a publish sent from the other core the moment the ack
/// is read must arrive. Each round uses a fresh channel, so every subscribe
/// needs the cross-core announcement; both directions.
#[test]
fn a_publish_after_the_ack_from_the_other_core_is_delivered() {
    let server = Server::start(&["--cores", "2"]);
    let mut c0 = ws_on_core(&server, "/ws", 0);
    let mut c1 = ws_on_core(&server, "/ws", 1);
    let mut id = 0;
    for round in 0..25 {
        for dir in 0..2 {
            let (sub, publ) = if dir == 0 {
                (&mut c0, &mut c1)
            } else {
                (&mut c1, &mut c0)
            };
            let channel = format!("fresh.{round}.{dir}");
            id += 1;
            subscribe(sub, &channel, id);
            id += 1;
            publish(publ, &channel, json!({"round": round, "dir": dir}), id);
            assert_eq!(
                recv(sub),
                message(&channel, json!({"round": round, "dir": dir}))
            );
        }
    }
}

/// One publisher's messages arrive in publish order and complete, on its
/// own core and across the mesh, also while another core publishes on the
/// same channel; a publisher subscribed to its channel gets its own
/// messages.
#[test]
fn messages_from_one_publisher_arrive_in_order() {
    const N: u64 = 200;
    let server = Server::start(&["--cores", "2"]);
    let mut s0 = ws_on_core(&server, "/ws", 0);
    let mut s1 = ws_on_core(&server, "/ws", 1);
    let mut p0 = ws_on_core(&server, "/ws", 0);
    let mut p1 = ws_on_core(&server, "/ws", 1);
    subscribe(&mut s0, "order", 1);
    subscribe(&mut s1, "order", 1);
    subscribe(&mut p1, "order", 1);
    // Both publishers send everything without waiting.
    for seq in 0..N {
        for (from, p) in [(0, &mut p0), (1, &mut p1)] {
            let id = 100 + seq;
            send(
                p,
                json!({"type":"publish","channel":"order","payload":{"from":from,"seq":seq},"id":id}),
            );
        }
    }
    // p0 is not subscribed: exactly its acks, in order.
    for seq in 0..N {
        assert_eq!(recv(&mut p0), json!({"type":"ack","id":100 + seq}));
    }
    // p1 gets its acks in order, interleaved with the messages.
    let mut acks = Vec::new();
    let mut p1_msgs = Vec::new();
    while acks.len() < N as usize || p1_msgs.len() < 2 * N as usize {
        let v = recv(&mut p1);
        match v["type"].as_str() {
            Some("ack") => acks.push(v["id"].as_u64().unwrap()),
            Some("message") => p1_msgs.push(v),
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(acks, (100..100 + N).collect::<Vec<_>>());
    let mut s0_msgs = Vec::new();
    let mut s1_msgs = Vec::new();
    for _ in 0..2 * N {
        s0_msgs.push(recv(&mut s0));
        s1_msgs.push(recv(&mut s1));
    }
    for (who, msgs) in [("s0", s0_msgs), ("s1", s1_msgs), ("p1", p1_msgs)] {
        let mut next = [0u64; 2];
        for m in msgs {
            assert_eq!(m["type"], "message", "{who}: {m}");
            assert_eq!(m["channel"], "order", "{who}: {m}");
            let from = m["payload"]["from"].as_u64().unwrap() as usize;
            let seq = m["payload"]["seq"].as_u64().unwrap();
            assert_eq!(seq, next[from], "{who}: publisher {from} out of order");
            next[from] += 1;
        }
        assert_eq!(next, [N, N], "{who}: every message once");
    }
}

/// After the unsubscribe ack nothing more arrives from that channel, from
/// either core; a marker on a channel still subscribed (published after the
/// unsubscribed ones, from both cores) bounds the wait. Another subscriber
/// on the same core keeps getting the channel. Unsubscribing what is not
/// subscribed is an error naming the request.
#[test]
fn unsubscribe_stops_delivery_from_both_cores() {
    let server = Server::start(&["--cores", "2"]);
    let mut p = [ws_on_core(&server, "/ws", 0), ws_on_core(&server, "/ws", 1)];
    let mut id = 1000;
    for core in 0..2 {
        // `shared` keeps another subscriber on this core; `solo` has none,
        // so the core withdraws its interest from the other core.
        let (shared, solo, marker) = (
            format!("shared.{core}"),
            format!("solo.{core}"),
            format!("marker.{core}"),
        );
        let mut sub = ws_on_core(&server, "/ws", core);
        let mut keep = ws_on_core(&server, "/ws", core);
        subscribe(&mut sub, &shared, 1);
        subscribe(&mut sub, &solo, 2);
        subscribe(&mut sub, &marker, 3);
        subscribe(&mut keep, &shared, 1);
        for (from, pp) in p.iter_mut().enumerate() {
            id += 1;
            publish(pp, &solo, json!({"before": from}), id);
            assert_eq!(recv(&mut sub), message(&solo, json!({"before": from})));
        }

        send(
            &mut sub,
            json!({"type":"unsubscribe","channel":shared,"id":4}),
        );
        assert_eq!(recv(&mut sub), json!({"type":"ack","id":4}));
        send(
            &mut sub,
            json!({"type":"unsubscribe","channel":solo,"id":5}),
        );
        assert_eq!(recv(&mut sub), json!({"type":"ack","id":5}));

        for (from, pp) in p.iter_mut().enumerate() {
            id += 1;
            publish(pp, &shared, json!({"after": from}), id);
            id += 1;
            publish(pp, &solo, json!({"after": from}), id);
        }
        for (from, pp) in p.iter_mut().enumerate() {
            id += 1;
            publish(pp, &marker, json!({"marker": from}), id);
        }
        let mut markers = BTreeSet::new();
        while markers.len() < 2 {
            let m = recv(&mut sub);
            assert_eq!(m["channel"], marker.as_str(), "after unsubscribe: {m}");
            markers.insert(m["payload"]["marker"].as_u64().unwrap());
        }
        // The other subscriber is unaffected. Order holds per publisher
        // only: one publish crosses the mesh, the other is local, so either
        // may come first.
        let mut got: Vec<Value> = (0..2).map(|_| recv(&mut keep)).collect();
        got.sort_by_key(|m| m["payload"]["after"].as_u64());
        for (from, m) in got.into_iter().enumerate() {
            assert_eq!(m, message(&shared, json!({"after": from})));
        }

        // Unsubscribing again, or from a channel never subscribed.
        for (channel, req) in [(shared.as_str(), 6), ("never", 7)] {
            send(
                &mut sub,
                json!({"type":"unsubscribe","channel":channel,"id":req}),
            );
            let e = recv(&mut sub);
            assert_eq!(e["type"], "error", "{e}");
            assert_eq!(e["code"], "not_subscribed", "{e}");
            assert_eq!(e["id"], req, "{e}");
        }

        // Subscribing again restores delivery from the other core at once.
        subscribe(&mut sub, &solo, 8);
        id += 1;
        publish(&mut p[1 - core], &solo, json!({"again": 1}), id);
        assert_eq!(recv(&mut sub), message(&solo, json!({"again": 1})));
    }
}

/// An unsubscribe that arrives before the other core confirmed the
/// subscribe still gets both requests answered, in order: the subscribe's
/// ack is not lost. Both frames go out in one write, so the server reads
/// them in one pass, before any confirmation can have come back.
#[test]
fn unsubscribe_while_the_subscribe_is_unconfirmed_answers_both() {
    let server = Server::start(&["--cores", "2"]);
    let mut sub = ws_on_core(&server, "/ws", 0);
    let mut publ = ws_on_core(&server, "/ws", 1);
    subscribe(&mut sub, "marker", 1);
    for round in 0..10u64 {
        let channel = format!("brief.{round}");
        let (s, u) = (10 * round + 2, 10 * round + 3);
        for v in [
            json!({"type":"subscribe","channel":channel,"id":s}),
            json!({"type":"unsubscribe","channel":channel,"id":u}),
        ] {
            sub.write(Message::text(v.to_string())).unwrap();
        }
        sub.flush().unwrap();
        assert_eq!(recv(&mut sub), json!({"type":"ack","id":s}));
        assert_eq!(recv(&mut sub), json!({"type":"ack","id":u}));
        // Not subscribed: a publish, then a marker, shows only the marker.
        publish(&mut publ, &channel, json!("gone"), 1);
        publish(&mut publ, "marker", json!(round), 2);
        assert_eq!(recv(&mut sub), message("marker", json!(round)));
    }
}

/// Several subscribers on each core each get every message exactly once,
/// and the payload bytes pass through exactly as the publisher wrote them.
#[test]
fn every_subscriber_on_every_core_gets_each_message_once_verbatim() {
    const PER_PUBLISHER: u64 = 50;
    // Whitespace, a trailing zero and an escape: re-encoding would change
    // any of them.
    const RAW: &str = r#"{"k": [1, 2.50, "\u00e9"]}"#;
    let server = Server::start(&["--cores", "2"]);
    let mut subs: Vec<Ws> = (0..6).map(|i| ws_on_core(&server, "/ws", i % 2)).collect();
    for s in &mut subs {
        subscribe(s, "fan", 1);
    }
    let mut p = [ws_on_core(&server, "/ws", 0), ws_on_core(&server, "/ws", 1)];
    for seq in 0..PER_PUBLISHER {
        for (from, pp) in p.iter_mut().enumerate() {
            publish(pp, "fan", json!({"from": from, "seq": seq}), seq);
        }
    }
    send_raw(
        &mut p[1],
        &format!(r#"{{"type":"publish","channel":"fan","id":77,"payload":{RAW}}}"#),
    );
    assert_eq!(recv(&mut p[1]), json!({"type":"ack","id":77}));
    for (from, pp) in p.iter_mut().enumerate() {
        publish(pp, "fan", json!({"marker": from}), 99);
    }

    let exact = format!(r#"{{"type":"message","channel":"fan","payload":{RAW}}}"#);
    for (i, s) in subs.iter_mut().enumerate() {
        let mut counts: BTreeMap<(u64, u64), usize> = BTreeMap::new();
        let (mut raw_seen, mut markers) = (0, 0);
        while markers < 2 {
            let text = recv_text(s);
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["channel"], "fan", "sub {i}: {v}");
            let pl = &v["payload"];
            if pl.get("marker").is_some() {
                markers += 1;
            } else if pl.get("k").is_some() {
                assert_eq!(text, exact, "sub {i}: payload re-encoded");
                raw_seen += 1;
            } else {
                let key = (pl["from"].as_u64().unwrap(), pl["seq"].as_u64().unwrap());
                *counts.entry(key).or_default() += 1;
            }
        }
        assert_eq!(raw_seen, 1, "sub {i}");
        assert_eq!(
            counts.len() as u64,
            2 * PER_PUBLISHER,
            "sub {i}: all arrived"
        );
        assert!(counts.values().all(|&n| n == 1), "sub {i}: duplicates");
    }
}

/// Each malformed request gets an error with the right code (and the id,
/// when one could be read); the connection stays open and keeps working.
#[test]
fn errors_keep_the_connection_open() {
    let server = Server::start(&["--cores", "2"]);
    let mut ws = ws_on_core(&server, "/ws", 1);
    let long = "x".repeat(129);
    let cases: Vec<(String, &str, Option<u64>)> = vec![
        ("not json".into(), "bad_json", None),
        ("[1,2]".into(), "bad_json", None),
        (r#"{"type":"ping","id":5"#.into(), "bad_json", Some(5)),
        (
            r#"{"id":14,"type":"subscribe","channel":5}"#.into(),
            "bad_json",
            Some(14),
        ),
        (r#"{"type":"dance","id":6}"#.into(), "unknown_type", Some(6)),
        (
            r#"{"type":"subscribe","id":7}"#.into(),
            "missing_field",
            Some(7),
        ),
        (
            r#"{"type":"publish","channel":"a","id":8}"#.into(),
            "missing_field",
            Some(8),
        ),
        (r#"{"id":9}"#.into(), "missing_field", Some(9)),
        (
            r#"{"type":"subscribe","channel":"has space","id":10}"#.into(),
            "bad_channel",
            Some(10),
        ),
        (
            format!(r#"{{"type":"subscribe","channel":"{long}","id":11}}"#),
            "bad_channel",
            Some(11),
        ),
        (
            r#"{"type":"subscribe","channel":"","id":12}"#.into(),
            "bad_channel",
            Some(12),
        ),
        (
            r#"{"type":"publish","channel":"a*","payload":1,"id":13}"#.into(),
            "bad_channel",
            Some(13),
        ),
        (
            r#"{"type":"unsubscribe","channel":"caf\u00e9","id":15}"#.into(),
            "bad_channel",
            Some(15),
        ),
    ];
    for (text, code, id) in &cases {
        send_raw(&mut ws, text);
        let e = recv(&mut ws);
        assert_eq!(e["type"], "error", "{text}: {e}");
        assert_eq!(e["code"], *code, "{text}: {e}");
        assert_eq!(e.get("id").and_then(Value::as_u64), *id, "{text}: {e}");
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{text}: {e}"
        );
    }
    ws.send(Message::binary(&b"{\"type\":\"ping\"}"[..]))
        .unwrap();
    let e = recv(&mut ws);
    assert_eq!(e["code"], "binary_unsupported", "{e}");
    assert_eq!(e.get("id"), None, "{e}");

    // Still a working connection: the longest name and every allowed
    // punctuation character subscribe fine, and a ping gets its pong.
    subscribe(&mut ws, &"y".repeat(128), 16);
    subscribe(&mut ws, "a_b-c.d:e/f@G9", 17);
    send(&mut ws, json!({"type":"ping","id":18}));
    assert_eq!(recv(&mut ws), json!({"type":"pong","id":18}));
    send(&mut ws, json!({"type":"ping"}));
    assert_eq!(recv(&mut ws), json!({"type":"pong"}));
}

// ----- the HTTP publish API ------------------------------------------------

const KEY: &str = "s3cret";

/// Sends one HTTP request (`head` without its blank line; Content-Length
/// is added) and reads the whole response.
fn http(server: &impl Running, head: &str, body: &str) -> (u16, String) {
    let req = format!("{head}Content-Length: {}\r\n\r\n{body}", body.len());
    http_exchange(server.addr(), req.as_bytes())
}

fn post_publish(server: &impl Running, auth: &str, body: &str) -> (u16, String) {
    let head = format!("POST /api/publish HTTP/1.1\r\nHost: x\r\n{auth}");
    http(server, &head, body)
}

fn bearer() -> String {
    format!("Authorization: Bearer {KEY}\r\n")
}

fn body_json(resp: &str) -> Value {
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"))
}

fn error_code(resp: &str) -> String {
    body_json(resp)["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code: {resp}"))
        .to_owned()
}

#[test]
fn publish_api_reaches_subscribers_on_every_core() {
    let server = Server::start(&["--cores", "2", "--api-key", KEY, "--max-body-bytes", "4096"]);
    let mut subs = [ws_on_core(&server, "/ws", 0), ws_on_core(&server, "/ws", 1)];
    for s in &mut subs {
        subscribe(s, "news", 1);
    }

    // Single, with a bearer token; payload bytes pass through.
    let raw = r#"{"headline": "hi", "n": 1.50}"#;
    let (status, resp) = post_publish(
        &server,
        &bearer(),
        &format!(r#"{{"channel":"news","payload":{raw}}}"#),
    );
    assert_eq!(status, 200, "{resp}");
    assert!(
        resp.contains("Content-Type: application/json\r\n"),
        "{resp}"
    );
    assert_eq!(body_json(&resp), json!({"published":1}));
    let exact = format!(r#"{{"type":"message","channel":"news","payload":{raw}}}"#);
    for s in &mut subs {
        assert_eq!(recv_text(s), exact);
    }

    // A batch of three with X-Api-Key, delivered in order.
    let batch = json!({"messages":[
        {"channel":"news","payload":1},
        {"channel":"news","payload":"two"},
        {"channel":"news","payload":[3]},
    ]});
    let (status, resp) = post_publish(
        &server,
        &format!("X-Api-Key: {KEY}\r\n"),
        &batch.to_string(),
    );
    assert_eq!(status, 200, "{resp}");
    assert_eq!(body_json(&resp), json!({"published":3}));
    for s in &mut subs {
        for p in [json!(1), json!("two"), json!([3])] {
            assert_eq!(recv(s), message("news", p));
        }
    }

    // `Expect: 100-continue` (what curl sends for larger bodies): the
    // interim response comes before the body is sent, then the real one.
    let body = r#"{"channel":"news","payload":"continued"}"#;
    let mut s = tcp(server.addr);
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    assert_eq!(read_head(&mut s), "HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert_eq!(body_json(&resp), json!({"published":1}));
    for s in &mut subs {
        assert_eq!(recv(s), message("news", json!("continued")));
    }

    // A wrong key is refused from the head alone: 401 instead of
    // `100 Continue`, so the body is never sent or buffered.
    let mut s = tcp(server.addr);
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        2000
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 401 "), "{resp}");
    assert_eq!(error_code(&resp), "unauthorized");

    // Refusals. None of them publishes anything (checked below).
    let good = r#"{"channel":"news","payload":"refused"}"#;
    for auth in [String::new(), "Authorization: Bearer wrong\r\n".into()] {
        let (status, resp) = post_publish(&server, &auth, good);
        assert_eq!(status, 401, "{resp}");
        assert!(resp.contains("WWW-Authenticate: Bearer\r\n"), "{resp}");
        assert_eq!(error_code(&resp), "unauthorized");
    }
    for (body, code) in [
        ("{", "bad_json"),
        ("[]", "bad_json"),
        (r#"{"channel":"has space","payload":1}"#, "bad_channel"),
        (r#"{"channel":"news"}"#, "missing_field"),
        (r#"{"messages":[]}"#, "bad_batch"),
        // All or nothing: two good entries do not go out with a bad one.
        (
            r#"{"messages":[{"channel":"news","payload":"refused"},{"channel":"news","payload":"refused"},{"channel":"a b","payload":3}]}"#,
            "bad_channel",
        ),
    ] {
        let (status, resp) = post_publish(&server, &bearer(), body);
        assert_eq!(status, 400, "{body}: {resp}");
        assert_eq!(error_code(&resp), code, "{body}: {resp}");
    }
    let (status, resp) = http(&server, "GET /api/publish HTTP/1.1\r\nHost: x\r\n", "");
    assert_eq!(status, 405, "{resp}");
    assert!(resp.contains("Allow: POST\r\n"), "{resp}");
    let (status, resp) = http(
        &server,
        &format!("POST /api/channels HTTP/1.1\r\nHost: x\r\n{}", bearer()),
        "",
    );
    assert_eq!(status, 405, "{resp}");
    assert!(resp.contains("Allow: GET\r\n"), "{resp}");
    let chunked = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\n{}Transfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{good}\r\n0\r\n\r\n",
        bearer(),
        good.len()
    );
    let (status, resp) = http_exchange(server.addr, chunked.as_bytes());
    assert_eq!(status, 411, "{resp}");
    // Refused from the head alone, before any of the body is sent.
    let big = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\n{}Content-Length: 4097\r\n\r\n",
        bearer()
    );
    let (status, resp) = http_exchange(server.addr, big.as_bytes());
    assert_eq!(status, 413, "{resp}");
    // Exactly at the limit is fine.
    let pad = 4096 - r#"{"channel":"news","payload":"","pad":""}"#.len();
    let at_limit = format!(
        r#"{{"channel":"news","payload":"","pad":"{}"}}"#,
        "p".repeat(pad)
    );
    assert_eq!(at_limit.len(), 4096);
    let (status, resp) = post_publish(&server, &bearer(), &at_limit);
    assert_eq!(status, 200, "{resp}");

    // Nothing refused went out: the next message is the one at the limit.
    for s in &mut subs {
        assert_eq!(recv(s), message("news", json!("")));
    }
}

#[test]
fn api_is_off_without_a_key() {
    let server = Server::start(&["--cores", "2"]);
    let (status, resp) = post_publish(&server, &bearer(), r#"{"channel":"a","payload":1}"#);
    assert_eq!(status, 403, "{resp}");
    assert_eq!(error_code(&resp), "api_disabled");
    let (status, resp) = http(
        &server,
        &format!("GET /api/channels HTTP/1.1\r\nHost: x\r\n{}", bearer()),
        "",
    );
    assert_eq!(status, 403, "{resp}");
    assert_eq!(error_code(&resp), "api_disabled");
}

fn channel_list(server: &impl Running) -> Value {
    let head = format!("GET /api/channels HTTP/1.1\r\nHost: x\r\nX-Api-Key: {KEY}\r\n");
    let (status, resp) = http(server, &head, "");
    assert_eq!(status, 200, "{resp}");
    body_json(&resp)
}

/// `GET /api/channels` sums each channel's subscribers over the cores.
#[test]
fn channel_list_sums_subscribers_over_cores() {
    let server = Server::start(&["--cores", "2", "--api-key", KEY]);
    assert_eq!(channel_list(&server), json!({"channels":[]}));
    let mut a0 = ws_on_core(&server, "/ws", 0);
    let mut a0b = ws_on_core(&server, "/ws", 0);
    let mut a1 = ws_on_core(&server, "/ws", 1);
    let mut b1 = ws_on_core(&server, "/ws", 1);
    subscribe(&mut a0, "a", 1);
    subscribe(&mut a0b, "a", 1);
    subscribe(&mut a1, "a", 1);
    subscribe(&mut b1, "b", 1);
    // Subscribing twice counts once.
    subscribe(&mut a0, "a", 2);
    assert_eq!(
        channel_list(&server),
        json!({"channels":[{"name":"a","subscribers":3},{"name":"b","subscribers":1}]})
    );
    for auth in ["", "X-Api-Key: nope\r\n"] {
        let head = format!("GET /api/channels HTTP/1.1\r\nHost: x\r\n{auth}");
        let (status, resp) = http(&server, &head, "");
        assert_eq!(status, 401, "{resp}");
        assert!(resp.contains("WWW-Authenticate: Bearer\r\n"), "{resp}");
    }

    // An unsubscribe and a closed connection are reflected.
    send(&mut a0, json!({"type":"unsubscribe","channel":"a","id":3}));
    assert_eq!(recv(&mut a0), json!({"type":"ack","id":3}));
    b1.close(None).unwrap();
    while b1.read().is_ok() {}
    assert_eq!(
        channel_list(&server),
        json!({"channels":[{"name":"a","subscribers":2}]})
    );
}
