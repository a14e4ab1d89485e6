//! `/ws` channels over real sockets: typed JSON messages, subscribe and
//! publish across cores, unsubscribe, the publish API.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;

use common::{
    check_offset_ack, http_exchange, message_json, message_text, parse_message, publish_ws,
    read_head, recv_text, subscribe_ws, tcp, ws_client_on_core, Running, Server,
};
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

/// The next JSON message.
fn recv(ws: &mut Ws) -> Value {
    serde_json::from_str(&recv_text(ws)).expect("JSON")
}

/// A `/ws` client on `core`, its welcome read.
fn ws_on(server: &impl Running, core: usize) -> Ws {
    ws_client_on_core(server, core).0
}

/// Subscribes and checks the ack; returns the channel's latest offset.
fn subscribe(ws: &mut Ws, channel: &str, id: u64) -> u64 {
    subscribe_ws(ws, channel, id).1
}

/// Publishes and waits for the ack (the publisher must not be subscribed
/// to anything that could arrive first); returns the publication's offset.
fn publish(ws: &mut Ws, channel: &str, payload: Value, id: u64) -> u64 {
    publish_ws(ws, channel, payload, id).1
}

fn message(channel: &str, offset: u64, payload: Value) -> Value {
    message_json(channel, offset, payload)
}

/// The next message, its field order checked: (channel, offset, payload).
fn recv_message(ws: &mut Ws) -> (String, u64, Value) {
    parse_message(&recv_text(ws))
}

#[test]
fn subscribe_and_publish_across_cores() {
    let server = Server::start(&["--cores", "2"]);
    let mut sub = ws_on(&server, 0);
    let mut publ = ws_on(&server, 1);
    send(
        &mut sub,
        json!({"type":"subscribe","channel":"news","id":1}),
    );
    let (epoch, offset) = check_offset_ack(&recv(&mut sub), Some(1));
    assert_eq!(offset, 0, "nothing published yet");
    send(
        &mut publ,
        json!({"type":"publish","channel":"news","payload":{"a":[1,2,"x"]},"id":9}),
    );
    // The same epoch from either core: the channel's owner sequences both.
    assert_eq!(
        recv(&mut publ),
        json!({"type":"ack","id":9,"epoch":epoch,"offset":1})
    );
    assert_eq!(
        recv_text(&mut sub),
        r#"{"type":"message","channel":"news","offset":1,"payload":{"a":[1,2,"x"]}}"#
    );
}

/// The subscribe ack promises that every core already routes the channel
/// to the subscriber: a publish sent from the other core the moment the ack
/// is read must arrive. Each round uses a fresh channel, so every subscribe
/// needs the cross-core announcement; both directions.
#[test]
fn a_publish_after_the_ack_from_the_other_core_is_delivered() {
    let server = Server::start(&["--cores", "2"]);
    let mut c0 = ws_on(&server, 0);
    let mut c1 = ws_on(&server, 1);
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
            assert_eq!(subscribe(sub, &channel, id), 0);
            id += 1;
            assert_eq!(
                publish(publ, &channel, json!({"round": round, "dir": dir}), id),
                1
            );
            assert_eq!(
                recv(sub),
                message(&channel, 1, json!({"round": round, "dir": dir}))
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
    let mut s0 = ws_on(&server, 0);
    let mut s1 = ws_on(&server, 1);
    let mut p0 = ws_on(&server, 0);
    let mut p1 = ws_on(&server, 1);
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
    // p0 is not subscribed: exactly its acks, in order, their offsets
    // increasing. `at[from][seq]` is the offset the ack gave.
    let mut at = [Vec::new(), Vec::new()];
    let mut epoch = None;
    for seq in 0..N {
        let (e, o) = check_offset_ack(&recv(&mut p0), Some(100 + seq));
        assert_eq!(epoch.get_or_insert(e.clone()), &e, "one epoch");
        at[0].push(o);
    }
    // p1 gets its acks in order, interleaved with the messages.
    let mut acks = Vec::new();
    let mut p1_msgs = Vec::new();
    while acks.len() < N as usize || p1_msgs.len() < 2 * N as usize {
        let text = recv_text(&mut p1);
        let v: Value = serde_json::from_str(&text).unwrap();
        match v["type"].as_str() {
            Some("ack") => {
                let id = v["id"].as_u64().unwrap();
                let (e, o) = check_offset_ack(&v, Some(id));
                assert_eq!(epoch.as_ref(), Some(&e), "one epoch");
                acks.push(id);
                at[1].push(o);
            }
            Some("message") => p1_msgs.push(parse_message(&text)),
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(acks, (100..100 + N).collect::<Vec<_>>());
    let mut s0_msgs = Vec::new();
    let mut s1_msgs = Vec::new();
    for _ in 0..2 * N {
        s0_msgs.push(recv_message(&mut s0));
        s1_msgs.push(recv_message(&mut s1));
    }
    // The acks' offsets are 1..=2N, each once, increasing per publisher.
    let mut all: Vec<u64> = at.concat();
    all.sort_unstable();
    assert_eq!(all, (1..=2 * N).collect::<Vec<_>>(), "ack offsets");
    for (from, offs) in at.iter().enumerate() {
        assert!(offs.windows(2).all(|w| w[0] < w[1]), "publisher {from}");
    }
    assert_eq!(s0_msgs, s1_msgs, "the same sequence on both cores");
    assert_eq!(s0_msgs, p1_msgs, "the same sequence for the publisher");
    for (who, msgs) in [("s0", s0_msgs), ("s1", s1_msgs), ("p1", p1_msgs)] {
        let mut next = [0u64; 2];
        for (i, (channel, offset, payload)) in msgs.into_iter().enumerate() {
            assert_eq!(channel, "order", "{who}");
            assert_eq!(offset, i as u64 + 1, "{who}: offsets consecutive from 1");
            let from = payload["from"].as_u64().unwrap() as usize;
            let seq = payload["seq"].as_u64().unwrap();
            assert_eq!(seq, next[from], "{who}: publisher {from} out of order");
            assert_eq!(at[from][seq as usize], offset, "{who}: the ack's offset");
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
    let mut p = [ws_on(&server, 0), ws_on(&server, 1)];
    let mut id = 1000;
    for core in 0..2 {
        // `shared` keeps another subscriber on this core; `solo` has none,
        // so the core withdraws its interest from the other core.
        let (shared, solo, marker) = (
            format!("shared.{core}"),
            format!("solo.{core}"),
            format!("marker.{core}"),
        );
        let mut sub = ws_on(&server, core);
        let mut keep = ws_on(&server, core);
        subscribe(&mut sub, &shared, 1);
        subscribe(&mut sub, &solo, 2);
        subscribe(&mut sub, &marker, 3);
        subscribe(&mut keep, &shared, 1);
        for (from, pp) in p.iter_mut().enumerate() {
            id += 1;
            let offset = publish(pp, &solo, json!({"before": from}), id);
            assert_eq!(offset, from as u64 + 1);
            assert_eq!(
                recv(&mut sub),
                message(&solo, offset, json!({"before": from}))
            );
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
        // The other subscriber is unaffected, and gets them in the
        // channel's order (each publish was acked before the next).
        for from in 0..2 {
            assert_eq!(
                recv(&mut keep),
                message(&shared, from + 1, json!({"after": from}))
            );
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

        // Subscribing again restores delivery from the other core at once;
        // the channel kept counting while it was not subscribed (two
        // before, two after).
        assert_eq!(subscribe(&mut sub, &solo, 8), 4);
        id += 1;
        publish(&mut p[1 - core], &solo, json!({"again": 1}), id);
        assert_eq!(recv(&mut sub), message(&solo, 5, json!({"again": 1})));
    }
}

/// An unsubscribe that arrives before the other core confirmed the
/// subscribe still gets both requests answered, in order: the subscribe's
/// ack is not lost. Both frames go out in one write, so the server reads
/// them in one pass, before any confirmation can have come back.
#[test]
fn unsubscribe_while_the_subscribe_is_unconfirmed_answers_both() {
    let server = Server::start(&["--cores", "2"]);
    let mut sub = ws_on(&server, 0);
    let mut publ = ws_on(&server, 1);
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
        assert_eq!(check_offset_ack(&recv(&mut sub), Some(s)).1, 0);
        assert_eq!(recv(&mut sub), json!({"type":"ack","id":u}));
        // Not subscribed: a publish, then a marker, shows only the marker.
        publish(&mut publ, &channel, json!("gone"), 1);
        let offset = publish(&mut publ, "marker", json!(round), 2);
        assert_eq!(offset, round + 1);
        assert_eq!(recv(&mut sub), message("marker", offset, json!(round)));
    }
}

/// Several subscribers on each core each get every message exactly once,
/// in the channel's order, and the payload bytes pass through exactly as
/// the publisher wrote them.
#[test]
fn every_subscriber_on_every_core_gets_each_message_once_verbatim() {
    const PER_PUBLISHER: u64 = 50;
    // Whitespace, a trailing zero and an escape: re-encoding would change
    // any of them.
    const RAW: &str = r#"{"k": [1, 2.50, "\u00e9"]}"#;
    let server = Server::start(&["--cores", "2"]);
    let mut subs: Vec<Ws> = (0..6).map(|i| ws_on(&server, i % 2)).collect();
    for s in &mut subs {
        subscribe(s, "fan", 1);
    }
    let mut p = [ws_on(&server, 0), ws_on(&server, 1)];
    // Each publish is acked before the next: the offsets are known.
    for seq in 0..PER_PUBLISHER {
        for (from, pp) in p.iter_mut().enumerate() {
            let offset = publish(pp, "fan", json!({"from": from, "seq": seq}), seq);
            assert_eq!(offset, 2 * seq + from as u64 + 1);
        }
    }
    send_raw(
        &mut p[1],
        &format!(r#"{{"type":"publish","channel":"fan","id":77,"payload":{RAW}}}"#),
    );
    let raw_at = 2 * PER_PUBLISHER + 1;
    assert_eq!(check_offset_ack(&recv(&mut p[1]), Some(77)).1, raw_at);
    for (from, pp) in p.iter_mut().enumerate() {
        let offset = publish(pp, "fan", json!({"marker": from}), 99);
        assert_eq!(offset, raw_at + 1 + from as u64);
    }

    let exact = message_text("fan", raw_at, RAW);
    for (i, s) in subs.iter_mut().enumerate() {
        for seq in 0..PER_PUBLISHER {
            for from in 0..2 {
                assert_eq!(
                    recv_message(s),
                    (
                        "fan".to_owned(),
                        2 * seq + from + 1,
                        json!({"from": from, "seq": seq})
                    ),
                    "sub {i}"
                );
            }
        }
        assert_eq!(recv_text(s), exact, "sub {i}: payload re-encoded");
        for from in 0..2 {
            assert_eq!(
                recv_message(s),
                ("fan".to_owned(), raw_at + 1 + from, json!({"marker": from})),
                "sub {i}"
            );
        }
    }
}

/// Each malformed request gets an error with the right code (and the id,
/// when one could be read); the connection stays open and keeps working.
#[test]
fn errors_keep_the_connection_open() {
    let server = Server::start(&["--cores", "2"]);
    let mut ws = ws_on(&server, 1);
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
    let mut subs = [ws_on(&server, 0), ws_on(&server, 1)];
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
    let first = body_json(&resp);
    let epoch = first["results"][0]["epoch"].clone();
    assert!(common::is_epoch(&epoch), "{first}");
    assert_eq!(
        first,
        json!({"published":1,"results":[{"channel":"news","offset":1,"epoch":epoch}]})
    );
    let exact = message_text("news", 1, raw);
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
    let result = |offset: u64| json!({"channel":"news","offset":offset,"epoch":epoch});
    assert_eq!(
        body_json(&resp),
        json!({"published":3,"results":[result(2), result(3), result(4)]})
    );
    for s in &mut subs {
        for (offset, p) in [(2, json!(1)), (3, json!("two")), (4, json!([3]))] {
            assert_eq!(recv(s), message("news", offset, p));
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
    assert_eq!(
        body_json(&resp),
        json!({"published":1,"results":[result(5)]})
    );
    for s in &mut subs {
        assert_eq!(recv(s), message("news", 5, json!("continued")));
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
    assert_eq!(
        body_json(&resp),
        json!({"published":1,"results":[result(6)]})
    );

    // Nothing refused went out: the next message is the one at the limit,
    // and no offset was spent on a refusal.
    for s in &mut subs {
        assert_eq!(recv(s), message("news", 6, json!("")));
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
    let mut a0 = ws_on(&server, 0);
    let mut a0b = ws_on(&server, 0);
    let mut a1 = ws_on(&server, 1);
    let mut b1 = ws_on(&server, 1);
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
