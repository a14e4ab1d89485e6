//! Channel streams over real sockets (the wire contract is
//! `spec-streams.md`, issue 17): the `/ws` welcome, per-channel offsets in
//! one order for every subscriber on every core, recovery with `since`,
//! history (size, TTL, the per-core byte budget), presence and join/leave,
//! the HTTP API's view of the same, per-channel options from `[[channels]]`
//! rules and the flags, and the errors of each request.
//!
//! Every test asserts exact sequences. Waits are bounded by the sockets'
//! read timeouts (`PATIENCE`) only, except the TTL test, which sleeps out
//! the TTL (a wait, not a timing assertion).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    check_offset_ack, close_client, expect_welcome, http_exchange, masked, message_text,
    metric_sum, parse_message, read_frame, read_head, recv_json, recv_text, scrape, send_json,
    subscribe_ws, tcp, upgrade_request, ws_client_on_core, ws_path_on_core, Running, Server, Ws,
    PATIENCE,
};
use ringcast::internals::auth::{sign, Claims};
use serde_json::{json, Value};
use tungstenite::Message;

const KEY: &str = "streams-api-key";

// ----- helpers ---------------------------------------------------------------

/// The core that owns `channel` (FNV-1a 64 of the name, mod the cores).
fn owner(channel: &str, cores: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % cores as u64) as usize
}

/// `PREFIX.N`, the first such name owned by `core` of `cores`.
fn owned_by(prefix: &str, core: usize, cores: usize) -> String {
    (0..)
        .map(|n| format!("{prefix}.{n}"))
        .find(|c| owner(c, cores) == core)
        .unwrap()
}

/// A `/ws` client on `core` and its client id.
fn ws_on(server: &impl Running, core: usize) -> (Ws, String) {
    let (ws, welcome) = ws_client_on_core(server, core);
    (ws, welcome["client"].as_str().unwrap().to_owned())
}

/// Sends a request and returns the next message.
fn request(ws: &mut Ws, v: Value) -> Value {
    send_json(ws, v);
    recv_json(ws)
}

/// A ping round trip: the connection is open and answering.
fn assert_pong(ws: &mut Ws, id: u64) {
    assert_eq!(
        request(ws, json!({"type":"ping","id":id})),
        json!({"type":"pong","id":id}),
        "the connection still answers"
    );
}

/// Checks an error reply: exactly `type`, `id` (when the request had one),
/// `code` and a non-empty `message`.
fn assert_error(v: &Value, id: Option<u64>, code: &str, what: &str) {
    assert_eq!(v["type"], "error", "{what}: {v}");
    assert_eq!(v["code"], code, "{what}: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    match id {
        Some(id) => {
            assert_eq!(v["id"], id, "{what}: {v}");
            assert_eq!(keys, ["code", "id", "message", "type"], "{what}: {v}");
        }
        None => assert_eq!(keys, ["code", "message", "type"], "{what}: {v}"),
    }
}

/// Publishes each payload in turn, waiting for each ack; returns the
/// offsets (the publisher must not be subscribed to anything).
fn publish_each(ws: &mut Ws, channel: &str, payloads: &[Value]) -> Vec<u64> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| common::publish_ws(ws, channel, p.clone(), 10_000 + i as u64).1)
        .collect()
}

/// `{"n": k}` for k in `range`.
fn numbered(range: std::ops::Range<u64>) -> Vec<Value> {
    range.map(|n| json!({ "n": n })).collect()
}

/// The next `n` messages: (channel, offset, payload), field order checked.
fn recv_messages(ws: &mut Ws, n: usize) -> Vec<(String, u64, Value)> {
    (0..n).map(|_| parse_message(&recv_text(ws))).collect()
}

/// `(channel, offset, {"n": n})` for offsets in `offsets`, `n` counting up
/// from `n_first`: what a subscriber sees of `numbered` publications.
fn expected(
    channel: &str,
    offsets: std::ops::RangeInclusive<u64>,
    n_first: u64,
) -> Vec<(String, u64, Value)> {
    let first = *offsets.start();
    offsets
        .map(|o| (channel.to_owned(), o, json!({ "n": n_first + (o - first) })))
        .collect()
}

/// A subscribe with `since`: returns the ack.
fn subscribe_since(ws: &mut Ws, channel: &str, id: u64, offset: u64, epoch: &str) -> Value {
    request(
        ws,
        json!({"type":"subscribe","channel":channel,"id":id,"since":{"offset":offset,"epoch":epoch}}),
    )
}

/// A `history` request's ack (or error).
fn history(ws: &mut Ws, fields: Value, id: u64) -> Value {
    let mut req = json!({"type":"history","id":id});
    for (k, v) in fields.as_object().unwrap() {
        req[k] = v.clone();
    }
    request(ws, req)
}

/// `[{"offset":o,"payload":{"n":o-1}}]` for offsets in `range`.
fn pubs(offsets: std::ops::RangeInclusive<u64>) -> Value {
    offsets
        .map(|o| json!({"offset":o,"payload":{"n":o - 1}}))
        .collect::<Vec<_>>()
        .into()
}

/// A hex epoch that is not `e`.
fn other_epoch(e: &str) -> &'static str {
    if e == "0123456789abcdef" {
        "fedcba9876543210"
    } else {
        "0123456789abcdef"
    }
}

/// A history ack: exactly type, id, epoch, offset, publications.
fn history_ack(id: u64, epoch: &str, offset: u64, publications: Value) -> Value {
    json!({"type":"ack","id":id,"epoch":epoch,"offset":offset,"publications":publications})
}

/// A `--config` file with `toml` in it, unique to this test process.
fn config_file(name: &str, toml: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ringcast-streams-{}-{name}.toml",
        std::process::id()
    ));
    std::fs::write(&path, toml).unwrap();
    path
}

/// One API request: `POST path` with `body` (and the API key unless
/// `key` is None); returns the status and the parsed JSON body.
fn api(server: &impl Running, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, resp) = http_exchange(server.addr(), req.as_bytes());
    let text = common::http_body(&resp);
    let v = serde_json::from_str(text).unwrap_or_else(|e| panic!("{path} {body}: {e}: {resp}"));
    (status, v)
}

/// The code of an API error body, checking its shape
/// (`{"error":{"code":...,"message":...}}`).
fn api_error(v: &Value) -> &str {
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("{v}"))
}

/// A raw `/ws` connection on `core` (the 101's `X-Ringcast-Core`), its
/// welcome read: (socket, client id).
fn raw_on_core(server: &impl Running, core: usize) -> (TcpStream, String) {
    for _ in 0..200 {
        let mut s = tcp(server.addr());
        s.write_all(upgrade_request("/ws").as_bytes()).unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let on = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            if k.eq_ignore_ascii_case("x-ringcast-core") {
                v.trim().parse::<usize>().ok()
            } else {
                None
            }
        });
        if on == Some(core) {
            let welcome = raw_recv(&mut s);
            common::check_welcome(&welcome);
            return (s, welcome["client"].as_str().unwrap().to_owned());
        }
    }
    panic!("no raw connection landed on core {core} in 200 tries");
}

fn raw_send(s: &mut TcpStream, v: Value) {
    s.write_all(&masked(true, 1, v.to_string().as_bytes()))
        .unwrap();
}

/// The next text frame on a raw connection, as JSON (pings skipped).
fn raw_recv(s: &mut TcpStream) -> Value {
    loop {
        let (_, op, p) = read_frame(s).expect("a frame");
        match op {
            1 => return serde_json::from_slice(&p).expect("JSON"),
            9 | 10 => continue,
            _ => panic!("unexpected opcode {op}"),
        }
    }
}

/// Drops a connection with a TCP reset (SO_LINGER 0), not a FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Presence clients as a sorted list of (client, user).
fn presence_set(v: &Value) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = v
        .as_array()
        .unwrap_or_else(|| panic!("clients: {v}"))
        .iter()
        .map(|c| {
            let mut keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["client", "user"], "{c}");
            (c["client"].as_str().unwrap().to_owned(), c["user"].clone())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn anon(ids: &[&String]) -> Vec<(String, Value)> {
    let mut v: Vec<(String, Value)> = ids.iter().map(|i| ((*i).clone(), Value::Null)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn token(sub: &str, channels: Option<&[&str]>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    sign(
        SECRET.as_bytes(),
        &Claims {
            sub: sub.into(),
            exp: now + 3600,
            nbf: None,
            channels: channels.map(|c| c.iter().map(|s| s.to_string()).collect()),
        },
    )
}

const SECRET: &str = "streams-test-secret-0123456789abcdef";

// ----- the welcome -------------------------------------------------------------

/// Every `/ws` connection starts with a welcome: a client id unique in the
/// process (also after connections close), the core it landed on (as the
/// 101's `X-Ringcast-Core` says), and the interval the server pings at
/// before it has measured a round trip, in ms:
/// `clamp(ping_interval / 2, ping_min, ping_max)`. `/echo` and `/broadcast`
/// get none.
#[test]
fn welcome_ids_are_unique_and_name_the_core_and_ping_interval() {
    let server = Server::start(&["--cores", "2", "--ping-interval", "45"]);
    let mut ids = HashSet::new();
    let mut per_core = [0usize; 2];
    let connect = |ids: &mut HashSet<String>, per_core: &mut [usize; 2]| -> Ws {
        let (mut ws, resp) = tungstenite::connect(server.url("/ws")).expect("upgrade");
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(PATIENCE)).unwrap();
        }
        let core: usize = resp
            .headers()
            .get("x-ringcast-core")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("X-Ringcast-Core");
        let w = expect_welcome(&mut ws);
        assert_eq!(w["core"], core, "{w}");
        // 45 s / 2, within the default [10, 120] s.
        assert_eq!(w["ping_ms"], 22_500, "{w}");
        let id = w["client"].as_str().unwrap().to_owned();
        // `<12 hex nonce>-<core>-<seq>`.
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.len(), 3, "client id {id}");
        assert!(
            parts[0].len() == 12 && parts[0].bytes().all(|b| b.is_ascii_hexdigit()),
            "client id {id}"
        );
        assert_eq!(parts[1], core.to_string(), "client id {id}");
        assert!(
            !parts[2].is_empty() && parts[2].bytes().all(|b| b.is_ascii_digit()),
            "client id {id}"
        );
        assert!(ids.insert(id.clone()), "client id {id} given twice");
        per_core[core] += 1;
        ws
    };
    let mut open: Vec<Ws> = (0..200).map(|_| connect(&mut ids, &mut per_core)).collect();
    assert!(
        per_core[0] > 0 && per_core[1] > 0,
        "connections on both cores: {per_core:?}"
    );
    // Close half; the next ones still get new ids.
    for ws in open.drain(..100) {
        close_client(ws);
    }
    for _ in 0..100 {
        open.push(connect(&mut ids, &mut per_core));
    }
    assert_eq!(ids.len(), 300);

    // The welcome comes first even when a request is already on its way.
    let mut s = tcp(server.addr);
    let mut bytes = upgrade_request("/ws").into_bytes();
    bytes.extend(masked(true, 1, br#"{"type":"ping","id":1}"#));
    s.write_all(&bytes).unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101 "));
    assert_eq!(raw_recv(&mut s)["type"], "welcome");
    assert_eq!(raw_recv(&mut s), json!({"type":"pong","id":1}));

    // Not on /echo or /broadcast: their first frame is the client's own.
    let mut echo = common::client(&server.url("/echo"));
    echo.send(Message::text("first")).unwrap();
    assert_eq!(echo.read().unwrap(), Message::text("first"));
    let mut bc = common::client(&server.url("/broadcast"));
    bc.send(Message::binary(b"first".to_vec())).unwrap();
    loop {
        match bc.read().unwrap() {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => {
                assert_eq!(m, Message::binary(b"first".to_vec()));
                break;
            }
        }
    }

    // Fractional, and clamped at either end.
    for (flags, ping_ms) in [
        (&["--ping-interval", "12.5", "--ping-min", "2"][..], 6_250),
        (&["--ping-interval", "12.5"][..], 10_000),
        (&["--ping-interval", "300", "--ping-max", "60"][..], 60_000),
    ] {
        let mut args = vec!["--cores", "1"];
        args.extend_from_slice(flags);
        let other = Server::start(&args);
        let (_, w) = ws_client_on_core(&other, 0);
        assert_eq!(w["ping_ms"], ping_ms, "{flags:?}: {w}");
        assert_eq!(w["core"], 0, "{w}");
    }
}

// ----- one order for everyone ------------------------------------------------

/// Two publishers, one on each core, publish to one channel at once
/// (bursts, acks in between, so they interleave); subscribers on both
/// cores each receive the same sequence, offsets 1, 2, ... with no gap,
/// and each publisher's ack carries the offset its message has in it.
#[test]
fn two_publishers_on_two_cores_give_every_subscriber_one_sequence() {
    const EACH: u64 = 600;
    const BURST: u64 = 5;
    const CHANNEL: &str = "seq";
    let server = Server::start(&["--cores", "2", "--max-publishes-per-sec", "0"]);
    let mut epoch: Option<String> = None;
    let mut readers = Vec::new();
    for i in 0..4 {
        let (mut ws, _) = ws_on(&server, i % 2);
        let (e, o) = subscribe_ws(&mut ws, CHANNEL, 1);
        assert_eq!(o, 0, "nothing published yet");
        assert_eq!(
            epoch.get_or_insert(e.clone()),
            &e,
            "one epoch from every core"
        );
        readers.push(thread::spawn(move || {
            recv_messages(&mut ws, 2 * EACH as usize)
        }));
    }
    let epoch = epoch.unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let publishers: Vec<_> = (0..2)
        .map(|core| {
            let (mut ws, _) = ws_on(&server, core);
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let mut acks = Vec::new();
                for start in (0..EACH).step_by(BURST as usize) {
                    for seq in start..start + BURST {
                        let m = json!({"type":"publish","channel":CHANNEL,
                                       "payload":{"from":core,"seq":seq},"id":seq});
                        ws.write(Message::text(m.to_string())).unwrap();
                    }
                    ws.flush().unwrap();
                    for seq in start..start + BURST {
                        acks.push(check_offset_ack(&recv_json(&mut ws), Some(seq)));
                    }
                }
                acks
            })
        })
        .collect();
    let acks: Vec<Vec<(String, u64)>> = publishers
        .into_iter()
        .map(|p| p.join().expect("publisher"))
        .collect();
    let seen: Vec<Vec<(String, u64, Value)>> = readers
        .into_iter()
        .map(|r| r.join().expect("subscriber"))
        .collect();

    let total = 2 * EACH;
    // The acks: one epoch, offsets increasing per publisher, 1..=total in all.
    let mut all = Vec::new();
    for (from, a) in acks.iter().enumerate() {
        assert!(
            a.iter().all(|(e, _)| *e == epoch),
            "publisher {from}: epoch"
        );
        assert!(
            a.windows(2).all(|w| w[0].1 < w[1].1),
            "publisher {from}: offsets not increasing"
        );
        all.extend(a.iter().map(|(_, o)| *o));
    }
    all.sort_unstable();
    assert_eq!(all, (1..=total).collect::<Vec<_>>(), "ack offsets");

    // Every subscriber: the same sequence, offsets consecutive from 1, and
    // each message where its publisher's ack put it.
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            s, &seen[0],
            "subscriber {i} saw another order than subscriber 0"
        );
    }
    let mut switches = 0;
    for (k, (channel, offset, payload)) in seen[0].iter().enumerate() {
        assert_eq!(channel, CHANNEL);
        assert_eq!(*offset, k as u64 + 1, "offsets consecutive from 1");
        let from = payload["from"].as_u64().unwrap() as usize;
        let seq = payload["seq"].as_u64().unwrap() as usize;
        assert_eq!(
            acks[from][seq].1, *offset,
            "message {payload}: its ack's offset"
        );
        if k > 0 && seen[0][k - 1].2["from"] != payload["from"] {
            switches += 1;
        }
    }
    eprintln!("the publishers took turns {switches} times in {total} publications");

    // History holds the last 100 (the default size) of the same sequence.
    let (mut q, _) = ws_on(&server, 1);
    let h = history(&mut q, json!({"channel":CHANNEL}), 7);
    let want: Vec<Value> = seen[0][(total - 100) as usize..]
        .iter()
        .map(|(_, o, p)| json!({"offset":o,"payload":p}))
        .collect();
    assert_eq!(h, history_ack(7, &epoch, total, want.into()));

    let m = scrape(&server);
    assert_eq!(
        metric_sum(&m, "ringcast_sequenced_total", None),
        total as f64
    );
    assert_eq!(metric_sum(&m, "ringcast_streams", None), 1.0);
    assert_eq!(metric_sum(&m, "ringcast_history_publications", None), 100.0);
}

// ----- recovery ----------------------------------------------------------------

/// A subscriber that left and comes back with `since` (its last offset and
/// the epoch) gets `recovered: true` and exactly what it missed, in order,
/// then live messages with no gap or duplicate. With the subscriber on
/// either core. `since` at the latest offset replays nothing; `since` 0
/// replays the whole history.
#[test]
fn resubscribe_with_since_recovers_exactly_the_missed_publications() {
    const RAW: &str = r#"{"k": [1, 2.50, "\u00e9"]}"#;
    let server = Server::start(&["--cores", "2"]);
    // The subscriber on core 0; the channel owned by core 0, then by 1.
    for core in 0..2 {
        let channel = owned_by("resume", core, 2);
        let ch = channel.as_str();
        let (mut publisher, _) = ws_on(&server, 1);
        let (mut a, _) = ws_on(&server, 0);
        let (epoch, offset) = subscribe_ws(&mut a, ch, 1);
        assert_eq!(offset, 0);
        assert_eq!(
            publish_each(&mut publisher, ch, &numbered(0..10)),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(recv_messages(&mut a, 10), expected(ch, 1..=10, 0));
        close_client(a);

        // Missed: 11..=60, one of them with a payload whose bytes must
        // come back verbatim.
        assert_eq!(
            publish_each(&mut publisher, ch, &numbered(10..30)),
            (11..=30).collect::<Vec<_>>()
        );
        publisher
            .send(Message::text(format!(
                r#"{{"type":"publish","channel":"{ch}","id":5,"payload":{RAW}}}"#
            )))
            .unwrap();
        assert_eq!(
            recv_json(&mut publisher),
            json!({"type":"ack","id":5,"epoch":epoch,"offset":31})
        );
        assert_eq!(
            publish_each(&mut publisher, ch, &numbered(31..60)),
            (32..=60).collect::<Vec<_>>()
        );

        let (mut b, _) = ws_on(&server, 0);
        assert_eq!(
            subscribe_since(&mut b, ch, 2, 10, &epoch),
            json!({"type":"ack","id":2,"epoch":epoch,"offset":60,"recovered":true})
        );
        assert_eq!(recv_messages(&mut b, 20), expected(ch, 11..=30, 10));
        assert_eq!(
            recv_text(&mut b),
            message_text(ch, 31, RAW),
            "replayed verbatim"
        );
        assert_eq!(recv_messages(&mut b, 29), expected(ch, 32..=60, 31));
        // Then live, right after the replay.
        assert_eq!(
            publish_each(&mut publisher, ch, &numbered(60..65)),
            (61..=65).collect::<Vec<_>>()
        );
        assert_eq!(recv_messages(&mut b, 5), expected(ch, 61..=65, 60));

        // `since` the latest offset: recovered, nothing to replay.
        let (mut c, _) = ws_on(&server, 1);
        assert_eq!(
            subscribe_since(&mut c, ch, 3, 65, &epoch),
            json!({"type":"ack","id":3,"epoch":epoch,"offset":65,"recovered":true})
        );
        assert_eq!(publish_each(&mut publisher, ch, &numbered(65..66)), [66]);
        for ws in [&mut b, &mut c] {
            assert_eq!(recv_messages(ws, 1), expected(ch, 66..=66, 65));
        }

        // `since` 0: the whole history (66 of the default 100).
        let (mut d, _) = ws_on(&server, 1);
        assert_eq!(
            subscribe_since(&mut d, ch, 4, 0, &epoch),
            json!({"type":"ack","id":4,"epoch":epoch,"offset":66,"recovered":true})
        );
        assert_eq!(recv_messages(&mut d, 30), expected(ch, 1..=30, 0));
        assert_eq!(recv_text(&mut d), message_text(ch, 31, RAW));
        assert_eq!(recv_messages(&mut d, 35), expected(ch, 32..=66, 31));
        assert_eq!(publish_each(&mut publisher, ch, &numbered(66..67)), [67]);
        for ws in [&mut b, &mut c, &mut d] {
            assert_eq!(recv_messages(ws, 1), expected(ch, 67..=67, 66));
        }
        // Nothing else came: a ping answers next.
        for (i, ws) in [&mut b, &mut c, &mut d].into_iter().enumerate() {
            assert_pong(ws, 100 + i as u64);
        }
    }
    let m = scrape(&server);
    assert_eq!(
        metric_sum(
            &m,
            "ringcast_recoveries_total",
            Some(("outcome", "recovered"))
        ),
        6.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "ringcast_recoveries_total",
            Some(("outcome", "not_recovered"))
        ),
        0.0
    );
}

/// While a publisher keeps publishing, a subscriber disconnects and comes
/// back with `since`, again and again, on alternating cores (half of the
/// disconnects clean, half resets): over all its connections it sees every
/// offset exactly once, in order, across each replay/live boundary.
#[test]
fn recovery_under_live_traffic_has_no_gap_or_duplicate() {
    const N: u64 = 3000;
    const PER_ROUND: u64 = 150;
    const BURST: u64 = 10;
    const WINDOW: u64 = 100;
    let server = Server::start(&[
        "--cores",
        "2",
        "--history-size",
        "100000",
        "--max-publishes-per-sec",
        "0",
    ]);
    let channel = "live";
    let (mut first, _) = ws_on(&server, 0);
    let (epoch, start) = subscribe_ws(&mut first, channel, 1);
    assert_eq!(start, 0);
    let (mut publisher, _) = ws_on(&server, 1);
    // Flow control, not timing: the publisher stays within WINDOW of what
    // the subscriber has, so reconnects happen while it publishes and each
    // replay is short, with live traffic right behind it.
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = progress.clone();
    let publishing = thread::spawn(move || {
        for s in (0..N).step_by(BURST as usize) {
            let start = Instant::now();
            while s > seen.load(std::sync::atomic::Ordering::Acquire) + WINDOW {
                assert!(start.elapsed() < PATIENCE, "the subscriber stopped at {s}");
                thread::sleep(Duration::from_micros(200));
            }
            for n in s..s + BURST {
                let m = json!({"type":"publish","channel":channel,"payload":{"n":n},"id":n});
                publisher.write(Message::text(m.to_string())).unwrap();
            }
            publisher.flush().unwrap();
            for n in s..s + BURST {
                assert_eq!(
                    check_offset_ack(&recv_json(&mut publisher), Some(n)).1,
                    n + 1
                );
            }
        }
        publisher
    });

    let mut last = 0u64;
    let mut ws = first;
    let mut round = 0usize;
    // The current connection's ack offset: what it gets up to there is
    // replay, after it live (the first connection had no `since`).
    let mut tip = 0u64;
    let (mut replayed, mut live) = (0u64, 0u64);
    loop {
        let until = (last + PER_ROUND).min(N);
        while last < until {
            let (ch, offset, payload) = parse_message(&recv_text(&mut ws));
            assert_eq!(ch, channel);
            assert_eq!(offset, last + 1, "round {round}: after {last}");
            assert_eq!(payload, json!({ "n": offset - 1 }));
            last = offset;
            progress.store(last, std::sync::atomic::Ordering::Release);
            if offset <= tip {
                replayed += 1;
            } else {
                live += 1;
            }
        }
        if last == N {
            break;
        }
        if round.is_multiple_of(2) {
            close_client(ws);
        } else {
            match ws.into_inner() {
                tungstenite::stream::MaybeTlsStream::Plain(s) => reset(s),
                _ => unreachable!(),
            }
        }
        round += 1;
        let (next, _) = ws_on(&server, round % 2);
        ws = next;
        let ack = subscribe_since(&mut ws, channel, round as u64, last, &epoch);
        assert_eq!(ack["recovered"], true, "round {round}: {ack}");
        assert_eq!(ack["epoch"], epoch.as_str(), "{ack}");
        tip = ack["offset"].as_u64().unwrap();
        assert!(
            tip >= last,
            "round {round}: the ack's offset {tip} is behind {last}"
        );
    }
    let _ = publishing.join().expect("publisher");
    assert_pong(&mut ws, 1);
    eprintln!("{round} reconnects; {replayed} replayed, {live} live");
}

/// Recovery is refused (`recovered: false`, no replay, live messages from
/// the next offset) when history no longer reaches back to `since + 1`,
/// when `since` is ahead of the channel, or when the epoch differs; it
/// works at the exact edge of the window.
#[test]
fn recovery_beyond_the_history_window_is_refused() {
    let server = Server::start(&["--cores", "2", "--history-size", "20"]);
    let ch = "window";
    let (mut publisher, _) = ws_on(&server, 1);
    let (mut a, _) = ws_on(&server, 0);
    let (epoch, _) = subscribe_ws(&mut a, ch, 1);
    publish_each(&mut publisher, ch, &numbered(0..5));
    assert_eq!(recv_messages(&mut a, 5), expected(ch, 1..=5, 0));
    close_client(a);
    publish_each(&mut publisher, ch, &numbered(5..55));
    // History holds 36..=55 now.

    let (mut b, _) = ws_on(&server, 0);
    assert_eq!(
        subscribe_since(&mut b, ch, 2, 5, &epoch),
        json!({"type":"ack","id":2,"epoch":epoch,"offset":55,"recovered":false})
    );
    assert_eq!(publish_each(&mut publisher, ch, &numbered(55..56)), [56]);
    // No replay: the next message is the live one.
    assert_eq!(recv_messages(&mut b, 1), expected(ch, 56..=56, 55));
    // History holds 37..=56: since 35 misses 36, since 36 is the edge.
    let (mut c, _) = ws_on(&server, 1);
    assert_eq!(
        subscribe_since(&mut c, ch, 3, 35, &epoch),
        json!({"type":"ack","id":3,"epoch":epoch,"offset":56,"recovered":false})
    );
    let (mut d, _) = ws_on(&server, 0);
    assert_eq!(
        subscribe_since(&mut d, ch, 4, 36, &epoch),
        json!({"type":"ack","id":4,"epoch":epoch,"offset":56,"recovered":true})
    );
    assert_eq!(recv_messages(&mut d, 20), expected(ch, 37..=56, 36));
    // Ahead of the channel.
    let (mut e, _) = ws_on(&server, 1);
    assert_eq!(
        subscribe_since(&mut e, ch, 5, 57, &epoch),
        json!({"type":"ack","id":5,"epoch":epoch,"offset":56,"recovered":false})
    );
    // Another epoch, offsets well inside the window.
    let wrong = other_epoch(&epoch);
    let (mut f, _) = ws_on(&server, 0);
    assert_eq!(
        subscribe_since(&mut f, ch, 6, 50, wrong),
        json!({"type":"ack","id":6,"epoch":epoch,"offset":56,"recovered":false})
    );
    // Everyone is live from 57 on, nothing replayed to the refused ones.
    assert_eq!(publish_each(&mut publisher, ch, &numbered(56..57)), [57]);
    for ws in [&mut b, &mut c, &mut d, &mut e, &mut f] {
        assert_eq!(recv_messages(ws, 1), expected(ch, 57..=57, 56));
    }
    let m = scrape(&server);
    assert_eq!(
        metric_sum(
            &m,
            "ringcast_recoveries_total",
            Some(("outcome", "recovered"))
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "ringcast_recoveries_total",
            Some(("outcome", "not_recovered"))
        ),
        4.0
    );
    assert_eq!(metric_sum(&m, "ringcast_history_publications", None), 20.0);
}

/// A restarted server has new epochs: `since` from before the restart is
/// not recovered even where the offsets exist again, and history with the
/// old epoch is `epoch_mismatch`.
#[test]
fn recovery_after_a_restart_is_refused_with_a_new_epoch() {
    let ch = "restart";
    let old_epoch = {
        let server = Server::spawn(&["--cores", "2"]);
        let (mut sub, _) = ws_on(&server, 0);
        let (epoch, _) = subscribe_ws(&mut sub, ch, 1);
        let (mut publisher, _) = ws_on(&server, 1);
        publish_each(&mut publisher, ch, &numbered(0..10));
        assert_eq!(recv_messages(&mut sub, 10), expected(ch, 1..=10, 0));
        let (status, log) = server.stop();
        assert!(status.success(), "{log}");
        epoch
    };
    let server = Server::spawn(&["--cores", "2"]);
    let (mut publisher, _) = ws_on(&server, 1);
    // Offsets start again at 1.
    let (new_epoch, first) = common::publish_ws(&mut publisher, ch, json!({"n":0}), 1);
    assert_eq!(first, 1);
    assert_ne!(new_epoch, old_epoch, "a restart must change the epoch");
    publish_each(&mut publisher, ch, &numbered(1..20));

    let (mut b, _) = ws_on(&server, 0);
    assert_eq!(
        subscribe_since(&mut b, ch, 2, 5, &old_epoch),
        json!({"type":"ack","id":2,"epoch":new_epoch,"offset":20,"recovered":false})
    );
    let h = history(
        &mut b,
        json!({"channel":ch,"since":{"offset":5,"epoch":old_epoch}}),
        3,
    );
    assert_error(&h, Some(3), "epoch_mismatch", "history with the old epoch");
    assert_eq!(publish_each(&mut publisher, ch, &numbered(20..21)), [21]);
    assert_eq!(recv_messages(&mut b, 1), expected(ch, 21..=21, 20));
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

/// Requests that reach the server in one read are handled in the order
/// sent, also when the channel's owner is the connection's own core (where
/// a publication is numbered on the spot): the SDK, reconnecting, sends its
/// resubscribe and then the publications it queued, all at once. The
/// subscribe must be answered before the publications, and they must reach
/// the subscriber; a history request after them sees them.
#[test]
fn requests_in_one_write_are_answered_in_order_on_the_owner_core() {
    let server = Server::spawn(&["--cores", "2"]);
    let mut id = 0;
    for core in 0..2 {
        for since in [false, true] {
            let ch = owned_by(&format!("pipelined.{since}"), core, 2);
            let (mut ws, _) = ws_on(&server, core);
            let mut sub = json!({"type":"subscribe","channel":ch,"id":id + 1});
            if since {
                sub["since"] = json!({"offset":0,"epoch":"0123456789abcdef"});
            }
            let mut batch = vec![sub];
            for n in 0..3 {
                batch
                    .push(json!({"type":"publish","channel":ch,"payload":{"n":n},"id":id + 2 + n}));
            }
            batch.push(json!({"type":"history","channel":ch,"id":id + 5}));
            for req in &batch {
                ws.write(Message::text(req.to_string())).unwrap();
            }
            ws.flush().unwrap();

            let mut ack = recv_json(&mut ws);
            if since {
                // Another epoch's position: nothing to recover from it.
                let recovered = ack.as_object_mut().and_then(|a| a.remove("recovered"));
                assert_eq!(recovered, Some(json!(false)), "core {core}: {ack}");
            }
            let (epoch, offset) = check_offset_ack(&ack, Some(id + 1));
            assert_eq!(
                offset, 0,
                "core {core}, since {since}: subscribed before the publications: {ack}"
            );
            let mut acks = Vec::new();
            let mut messages = Vec::new();
            let mut hist = None;
            while acks.len() < 3 || messages.len() < 3 || hist.is_none() {
                let v = recv_json(&mut ws);
                match (v["type"].as_str(), v["id"].as_u64()) {
                    (Some("message"), _) => {
                        messages.push((v["offset"].clone(), v["payload"].clone()))
                    }
                    (Some("ack"), Some(i)) if i == id + 5 => hist = Some(v),
                    (Some("ack"), Some(_)) => acks.push(v),
                    _ => panic!("core {core}, since {since}: unexpected {v}"),
                }
            }
            let want: Vec<Value> = (0..3)
                .map(|n| json!({"type":"ack","id":id + 2 + n,"epoch":epoch,"offset":n + 1}))
                .collect();
            assert_eq!(acks, want, "core {core}, since {since}");
            let want: Vec<(Value, Value)> =
                (0..3u64).map(|n| (json!(n + 1), json!({"n":n}))).collect();
            assert_eq!(
                messages, want,
                "core {core}, since {since}: every publication delivered, in order"
            );
            assert_eq!(
                hist.unwrap(),
                history_ack(id + 5, &epoch, 3, pubs(1..=3)),
                "core {core}, since {since}: history sees what was published before it"
            );
            id += 10;
        }
    }
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

// ----- history -----------------------------------------------------------------

/// `history` without `since`: the newest `limit` (default: all kept, up to
/// --history-max-limit); with `since`: the first `limit` after it; oldest
/// first; only the last --history-size are kept.
#[test]
fn history_keeps_the_newest_publications_and_pages_with_since() {
    let server = Server::start(&["--cores", "2", "--history-size", "10"]);
    let ch = "hist";
    let (mut publisher, _) = ws_on(&server, 0);
    let (mut q, _) = ws_on(&server, 1);
    // A channel nobody published to: an epoch, offset 0, nothing.
    let empty = history(&mut q, json!({"channel":"hist.empty"}), 1);
    assert!(common::is_epoch(&empty["epoch"]), "{empty}");
    assert_eq!(
        empty,
        history_ack(1, empty["epoch"].as_str().unwrap(), 0, json!([]))
    );

    let (epoch, _) = common::publish_ws(&mut publisher, ch, json!({"n":0}), 1);
    publish_each(&mut publisher, ch, &numbered(1..25));
    let e = epoch.as_str();
    let cases = [
        (json!({"channel":ch}), pubs(16..=25)),
        (json!({"channel":ch,"limit":3}), pubs(23..=25)),
        (json!({"channel":ch,"limit":1}), pubs(25..=25)),
        (json!({"channel":ch,"limit":0}), json!([])),
        (json!({"channel":ch,"limit":1000}), pubs(16..=25)),
        (
            json!({"channel":ch,"since":{"offset":18,"epoch":e}}),
            pubs(19..=25),
        ),
        (
            json!({"channel":ch,"since":{"offset":18,"epoch":e},"limit":3}),
            pubs(19..=21),
        ),
        (
            json!({"channel":ch,"since":{"offset":15,"epoch":e},"limit":2}),
            pubs(16..=17),
        ),
        (
            json!({"channel":ch,"since":{"offset":24,"epoch":e}}),
            pubs(25..=25),
        ),
        (
            json!({"channel":ch,"since":{"offset":25,"epoch":e}}),
            json!([]),
        ),
    ];
    for (i, (req, want)) in cases.into_iter().enumerate() {
        let id = 10 + i as u64;
        assert_eq!(
            history(&mut q, req.clone(), id),
            history_ack(id, e, 25, want),
            "{req}"
        );
    }
    // A subscriber's view is the same.
    let (mut s, _) = ws_on(&server, 0);
    subscribe_ws(&mut s, ch, 1);
    assert_eq!(
        history(&mut s, json!({"channel":ch,"limit":2}), 2),
        history_ack(2, e, 25, pubs(24..=25))
    );
    // Refusals.
    assert_error(
        &history(&mut q, json!({"channel":ch,"limit":1001}), 30),
        Some(30),
        "bad_limit",
        "limit over --history-max-limit",
    );
    assert_error(
        &history(
            &mut q,
            json!({"channel":ch,"since":{"offset":3,"epoch":other_epoch(e)}}),
            31,
        ),
        Some(31),
        "epoch_mismatch",
        "another epoch",
    );
    assert_pong(&mut q, 32);
}

/// `limit` absent means --history-max-limit, with and without `since`.
#[test]
fn history_limit_defaults_to_the_max_limit() {
    let server = Server::start(&[
        "--cores",
        "2",
        "--history-size",
        "10",
        "--history-max-limit",
        "5",
    ]);
    let ch = "paged";
    let (mut publisher, _) = ws_on(&server, 1);
    let (epoch, _) = common::publish_ws(&mut publisher, ch, json!({"n":0}), 1);
    publish_each(&mut publisher, ch, &numbered(1..25));
    let e = epoch.as_str();
    let (mut q, _) = ws_on(&server, 0);
    assert_eq!(
        history(&mut q, json!({"channel":ch}), 1),
        history_ack(1, e, 25, pubs(21..=25))
    );
    assert_eq!(
        history(
            &mut q,
            json!({"channel":ch,"since":{"offset":16,"epoch":e}}),
            2
        ),
        history_ack(2, e, 25, pubs(17..=21))
    );
    assert_eq!(
        history(&mut q, json!({"channel":ch,"limit":5}), 3),
        history_ack(3, e, 25, pubs(21..=25))
    );
    assert_error(
        &history(&mut q, json!({"channel":ch,"limit":6}), 4),
        Some(4),
        "bad_limit",
        "limit 6 over --history-max-limit 5",
    );
    assert_pong(&mut q, 5);
}

/// Publications older than `--history-ttl` leave history (waited out: 2.5
/// s for a 1 s TTL); the channel keeps its epoch and offsets while it has a
/// subscriber, recovery across the expired part is refused.
#[test]
fn history_expires_after_the_ttl() {
    let server = Server::start(&["--cores", "2", "--history-ttl", "1"]);
    let ch = "ttl";
    let (mut keeper, _) = ws_on(&server, 0);
    let (epoch, _) = subscribe_ws(&mut keeper, ch, 1);
    let (mut publisher, _) = ws_on(&server, 1);
    publish_each(&mut publisher, ch, &numbered(0..5));
    assert_eq!(recv_messages(&mut keeper, 5), expected(ch, 1..=5, 0));
    let e = epoch.as_str();
    assert_eq!(
        history(&mut publisher, json!({"channel":ch}), 1),
        history_ack(1, e, 5, pubs(1..=5))
    );

    thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        history(&mut publisher, json!({"channel":ch}), 2),
        history_ack(2, e, 5, json!([])),
        "after the TTL"
    );
    let (mut late, _) = ws_on(&server, 0);
    assert_eq!(
        subscribe_since(&mut late, ch, 3, 2, e),
        json!({"type":"ack","id":3,"epoch":e,"offset":5,"recovered":false})
    );
    assert_eq!(publish_each(&mut publisher, ch, &numbered(5..6)), [6]);
    assert_eq!(
        history(&mut publisher, json!({"channel":ch}), 4),
        history_ack(4, e, 6, pubs(6..=6))
    );
    for ws in [&mut keeper, &mut late] {
        assert_eq!(recv_messages(ws, 1), expected(ch, 6..=6, 5));
    }
    let m = scrape(&server);
    assert_eq!(metric_sum(&m, "ringcast_history_expired_total", None), 5.0);
    assert_eq!(metric_sum(&m, "ringcast_history_publications", None), 1.0);
}

/// `--history-max-bytes` bounds each core's history: filling 200 channels
/// with 1 KiB payloads (about 1 MiB over two cores against 64 KiB each)
/// keeps every core's `ringcast_history_bytes` within the budget, evicts
/// the oldest entries (the first channel's), keeps the newest (the last
/// channel's), and every publication is either still held or counted as
/// evicted.
#[test]
fn the_per_core_history_budget_evicts_the_oldest_first() {
    const CHANNELS: u64 = 200;
    const EACH: u64 = 5;
    const BUDGET: f64 = 65536.0;
    let server = Server::start(&[
        "--cores",
        "2",
        "--history-max-bytes",
        "65536",
        "--max-publishes-per-sec",
        "0",
    ]);
    let name = |i: u64| format!("fill.{i}");
    // A subscriber on the first channel keeps its entry (and epoch) while
    // its history goes.
    let (mut keeper, _) = ws_on(&server, 1);
    let (epoch0, _) = subscribe_ws(&mut keeper, &name(0), 1);
    let (mut publisher, _) = ws_on(&server, 0);
    let pad = "x".repeat(1000);
    for i in 0..CHANNELS {
        for j in 0..EACH {
            let id = i * EACH + j;
            let payload = format!("{i:04}-{j}-{pad}");
            let m = json!({"type":"publish","channel":name(i),"payload":payload,"id":id});
            publisher.write(Message::text(m.to_string())).unwrap();
        }
        publisher.flush().unwrap();
    }
    // Acks may come in any order across channels: matched by id.
    let mut acked = BTreeMap::new();
    for _ in 0..CHANNELS * EACH {
        let v = recv_json(&mut publisher);
        let id = v["id"].as_u64().unwrap_or_else(|| panic!("{v}"));
        let (_, offset) = check_offset_ack(&v, Some(id));
        assert!(acked.insert(id, offset).is_none(), "ack {id} twice");
    }
    for (id, offset) in &acked {
        assert_eq!(*offset, id % EACH + 1, "publish {id}");
    }
    assert_eq!(
        recv_messages(&mut keeper, EACH as usize).len(),
        EACH as usize
    );

    let m = scrape(&server);
    let per_core: Vec<_> = m
        .samples
        .iter()
        .filter(|s| s.metric == "ringcast_history_bytes")
        .collect();
    assert_eq!(per_core.len(), 2, "ringcast_history_bytes for each core");
    for s in &per_core {
        let v = metric_sum(
            &m,
            "ringcast_history_bytes",
            Some(("core", s.labels.get("core").unwrap())),
        );
        assert!(
            v <= BUDGET,
            "core {:?}: {v} history bytes over {BUDGET}",
            s.labels.get("core")
        );
        assert!(v > 0.0, "core {:?} holds nothing", s.labels.get("core"));
    }
    let evicted = metric_sum(&m, "ringcast_history_evicted_total", None);
    let held = metric_sum(&m, "ringcast_history_publications", None);
    assert!(evicted > 0.0, "nothing evicted");
    assert_eq!(
        evicted + held,
        (CHANNELS * EACH) as f64,
        "held {held} + evicted {evicted}"
    );

    let (mut q, _) = ws_on(&server, 0);
    // The first channel lost its oldest entries: what is left (if any) is
    // its newest, in order.
    let h = history(&mut q, json!({"channel":name(0)}), 1);
    assert_eq!(h["epoch"], epoch0.as_str(), "{h}");
    assert_eq!(h["offset"], EACH, "{h}");
    let left: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert!(
        left.len() < EACH as usize,
        "the first channel lost nothing: {left:?}"
    );
    assert_eq!(
        left,
        (EACH - left.len() as u64 + 1..=EACH).collect::<Vec<_>>()
    );
    let (mut r, _) = ws_on(&server, 0);
    let ack = subscribe_since(&mut r, &name(0), 2, 0, &epoch0);
    assert_eq!(ack["recovered"], false, "{ack}");
    // The last channel, the newest entries on its core, is whole.
    let last = name(CHANNELS - 1);
    let h = history(&mut q, json!({"channel":last}), 3);
    let got: Vec<Value> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["payload"].clone())
        .collect();
    let want: Vec<Value> = (0..EACH)
        .map(|j| json!(format!("{:04}-{j}-{pad}", CHANNELS - 1)))
        .collect();
    assert_eq!(got, want, "the newest channel's history");
}

// ----- presence and join/leave ---------------------------------------------------

const ROOMS: &str = "[[channels]]\npattern = \"room:*\"\npresence = true\njoin_leave = true\n";

/// Subscribers of a `room:*` channel (presence and join/leave on, from a
/// config file) on both cores: each `join_leave` subscriber gets a `join`
/// for every later subscriber and a `leave` for each that goes (an
/// unsubscribe, a clean close, a reset), exactly once, never its own; one
/// that did not ask for join/leave gets none; presence counts follow.
#[test]
fn presence_and_join_leave_across_cores() {
    let cfg = config_file("rooms", ROOMS);
    let server = Server::start(&["--cores", "2", "--config", cfg.to_str().unwrap()]);
    let ch = "room:1";
    let join =
        |kind: &str, client: &str| json!({"type":kind,"channel":ch,"client":client,"user":null});
    let sub_req = |id: u64, presence: bool, join_leave: bool| json!({"type":"subscribe","channel":ch,"id":id,"presence":presence,"join_leave":join_leave});

    let (mut a, a_id) = ws_on(&server, 0);
    let ack = request(&mut a, sub_req(1, true, true));
    assert!(common::is_epoch(&ack["epoch"]), "{ack}");
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    assert_eq!(
        ack,
        json!({"type":"ack","id":1,"epoch":epoch,"offset":0,
               "presence":{"count":1,"clients":[{"client":a_id,"user":null}]}})
    );
    let (mut b, b_id) = ws_on(&server, 1);
    let ack = request(&mut b, sub_req(1, true, true));
    assert_eq!(ack["presence"]["count"], 2, "{ack}");
    assert_eq!(
        presence_set(&ack["presence"]["clients"]),
        anon(&[&a_id, &b_id])
    );
    // Without presence or join/leave: a plain ack, and no events later.
    let (mut c, c_id) = ws_on(&server, 1);
    assert_eq!(
        check_offset_ack(&request(&mut c, sub_req(1, false, false)), Some(1)).1,
        0
    );
    // A raw connection on core 0, to be reset.
    let (mut d, d_id) = raw_on_core(&server, 0);
    raw_send(&mut d, json!({"type":"subscribe","channel":ch,"id":1}));
    assert_eq!(check_offset_ack(&raw_recv(&mut d), Some(1)).1, 0);

    assert_eq!(recv_json(&mut a), join("join", &b_id));
    assert_eq!(recv_json(&mut a), join("join", &c_id));
    assert_eq!(recv_json(&mut a), join("join", &d_id));
    assert_eq!(recv_json(&mut b), join("join", &c_id));
    assert_eq!(recv_json(&mut b), join("join", &d_id));
    let p = request(&mut c, json!({"type":"presence","channel":ch,"id":2}));
    assert_eq!(p["count"], 4, "{p}");
    assert_eq!(
        presence_set(&p["clients"]),
        anon(&[&a_id, &b_id, &c_id, &d_id])
    );
    assert_eq!((&p["type"], &p["id"]), (&json!("ack"), &json!(2)), "{p}");
    let keys: BTreeSet<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["clients", "count", "id", "type"]),
        "{p}"
    );

    // D vanishes with a reset: one leave each, at once.
    reset(d);
    assert_eq!(recv_json(&mut a), join("leave", &d_id));
    assert_eq!(recv_json(&mut b), join("leave", &d_id));
    let p = request(&mut c, json!({"type":"presence","channel":ch,"id":3}));
    assert_eq!(p["count"], 3, "{p}");
    assert_eq!(presence_set(&p["clients"]), anon(&[&a_id, &b_id, &c_id]));
    // A marker: the next thing everyone gets (no second leave, and no
    // event ever reached C).
    let (mut publisher, _) = ws_on(&server, 0);
    let (_, marker) = common::publish_ws(&mut publisher, ch, json!("marker"), 1);
    assert_eq!(marker, 1);
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(recv_json(ws), common::message_json(ch, 1, json!("marker")));
    }

    // C unsubscribes, B closes cleanly: a leave each.
    assert_eq!(
        request(&mut c, json!({"type":"unsubscribe","channel":ch,"id":4})),
        json!({"type":"ack","id":4})
    );
    assert_eq!(recv_json(&mut a), join("leave", &c_id));
    assert_eq!(recv_json(&mut b), join("leave", &c_id));
    close_client(b);
    assert_eq!(recv_json(&mut a), join("leave", &b_id));
    let p = request(&mut c, json!({"type":"presence","channel":ch,"id":5}));
    assert_eq!(
        p,
        json!({"type":"ack","id":5,"count":1,"clients":[{"client":a_id,"user":null}]})
    );

    // Back with since, presence and join/leave at once: all three in the
    // ack, the missed marker replayed; A sees the join.
    let (mut e, e_id) = ws_on(&server, 1);
    let ack = request(
        &mut e,
        json!({"type":"subscribe","channel":ch,"id":6,"since":{"offset":0,"epoch":epoch},
               "presence":true,"join_leave":true}),
    );
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["epoch"], epoch.as_str(), "{ack}");
    assert_eq!(ack["offset"], 1, "{ack}");
    assert_eq!(ack["presence"]["count"], 2, "{ack}");
    assert_eq!(
        presence_set(&ack["presence"]["clients"]),
        anon(&[&a_id, &e_id])
    );
    assert_eq!(
        recv_json(&mut e),
        common::message_json(ch, 1, json!("marker"))
    );
    assert_eq!(recv_json(&mut a), join("join", &e_id));

    let m = scrape(&server);
    assert_eq!(metric_sum(&m, "ringcast_presence_clients", None), 2.0);
    assert_pong(&mut a, 7);
    assert_pong(&mut e, 8);
    let _ = std::fs::remove_file(cfg);
}

/// With tokens, presence and join/leave name the token's subject as
/// `user`; channel claims also bound `history`, `presence` and recovery.
#[test]
fn presence_and_join_leave_carry_the_token_subject_and_claims_apply() {
    let cfg = config_file("rooms-auth", ROOMS);
    let server = Server::start(&[
        "--cores",
        "2",
        "--auth-secret",
        SECRET,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let ch = "room:auth";
    let alice_t = token("alice", None);
    let bob_t = token("bob", Some(&["room:*"]));
    let (mut alice, alice_id) = {
        let (ws, w) = ws_path_on_core(&server, &format!("/ws?token={alice_t}"), 0);
        (ws, w["client"].as_str().unwrap().to_owned())
    };
    let (mut bob, bob_id) = {
        let (ws, w) = ws_path_on_core(&server, &format!("/ws?token={bob_t}"), 1);
        (ws, w["client"].as_str().unwrap().to_owned())
    };
    let sub = json!({"type":"subscribe","channel":ch,"id":1,"presence":true,"join_leave":true});
    let ack = request(&mut alice, sub.clone());
    assert_eq!(
        ack["presence"],
        json!({"count":1,"clients":[{"client":alice_id,"user":"alice"}]})
    );
    let ack = request(&mut bob, sub);
    let mut want = vec![
        (alice_id.clone(), json!("alice")),
        (bob_id.clone(), json!("bob")),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(presence_set(&ack["presence"]["clients"]), want);
    assert_eq!(
        recv_json(&mut alice),
        json!({"type":"join","channel":ch,"client":bob_id,"user":"bob"})
    );

    // Bob's claims cover room:* only.
    let e = history(&mut bob, json!({"channel":"news"}), 2);
    assert_error(&e, Some(2), "forbidden", "history outside the claims");
    let e = request(&mut bob, json!({"type":"presence","channel":"news","id":3}));
    assert_error(&e, Some(3), "forbidden", "presence outside the claims");
    let e = request(
        &mut bob,
        json!({"type":"subscribe","channel":"news","id":4,"since":{"offset":0,"epoch":"ab"}}),
    );
    assert_error(&e, Some(4), "forbidden", "recovery outside the claims");
    assert_pong(&mut bob, 5);
    // Inside them, fine.
    let h = history(&mut bob, json!({"channel":ch}), 6);
    assert_eq!(h["publications"], json!([]), "{h}");

    close_client(bob);
    assert_eq!(
        recv_json(&mut alice),
        json!({"type":"leave","channel":ch,"client":bob_id,"user":"bob"})
    );

    // A subject JSON must escape (quote, backslash, a control character,
    // non-ASCII) comes back as the same string.
    let odd = "e\"v\\il\u{1}\tno\u{e9}\u{1f600}";
    let odd_t = token(odd, None);
    let (mut o, w) = ws_path_on_core(&server, &format!("/ws?token={odd_t}"), 1);
    let odd_id = w["client"].as_str().unwrap().to_owned();
    let ack = request(
        &mut o,
        json!({"type":"subscribe","channel":ch,"id":1,"presence":true}),
    );
    let mut want = vec![
        (alice_id.clone(), json!("alice")),
        (odd_id.clone(), json!(odd)),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(presence_set(&ack["presence"]["clients"]), want);
    assert_eq!(
        recv_json(&mut alice),
        json!({"type":"join","channel":ch,"client":odd_id,"user":odd})
    );
    assert_pong(&mut alice, 7);
    let _ = std::fs::remove_file(cfg);
}

/// `--presence-max-clients` caps the list, never the count.
#[test]
fn presence_lists_are_capped_and_counts_exact() {
    let cfg = config_file("rooms-capped", ROOMS);
    let server = Server::start(&[
        "--cores",
        "2",
        "--presence-max-clients",
        "2",
        "--api-key",
        KEY,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let ch = "room:big";
    let mut ids = BTreeSet::new();
    let mut conns = Vec::new();
    for i in 0..5 {
        let (mut ws, id) = ws_on(&server, i % 2);
        subscribe_ws(&mut ws, ch, 1);
        ids.insert(id);
        conns.push(ws);
    }
    let p = request(
        &mut conns[0],
        json!({"type":"presence","channel":ch,"id":2}),
    );
    assert_eq!(p["count"], 5, "{p}");
    let listed = presence_set(&p["clients"]);
    assert_eq!(listed.len(), 2, "{p}");
    assert!(listed.iter().all(|(c, _)| ids.contains(c)), "{p}");
    let (status, body) = api(
        &server,
        "/api/presence",
        Some(KEY),
        &json!({"channel":ch}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 5, "{body}");
    assert_eq!(body["clients"].as_array().unwrap().len(), 2, "{body}");
    let _ = std::fs::remove_file(cfg);
}

/// Subscribers come and go on both cores at once (each subscribing and
/// unsubscribing in turn, half of them subscribing twice each time, which
/// counts once), then close (half cleanly, half with a reset): two
/// observers, one on each core, see for every one of them exactly
/// join, leave, join, leave, ... and nothing else; presence ends with the
/// observers alone.
#[test]
fn join_leave_stays_consistent_under_churn_across_cores() {
    const CHURNERS: usize = 8;
    const CYCLES: usize = 25;
    let cfg = config_file("rooms-churn", ROOMS);
    let server = Server::start(&[
        "--cores",
        "2",
        "--max-publishes-per-sec",
        "0",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let ch = "room:churn";
    let mut observers = Vec::new();
    let mut observer_ids = Vec::new();
    for core in 0..2 {
        let (mut ws, id) = ws_on(&server, core);
        let ack = request(
            &mut ws,
            json!({"type":"subscribe","channel":ch,"id":1,"join_leave":true}),
        );
        check_offset_ack(&ack, Some(1));
        observers.push(ws);
        observer_ids.push(id);
    }
    // The second observer's join reaches the first.
    assert_eq!(
        recv_json(&mut observers[0]),
        json!({"type":"join","channel":ch,"client":observer_ids[1],"user":null})
    );
    let barrier = Arc::new(Barrier::new(CHURNERS));
    let churners: Vec<_> = (0..CHURNERS)
        .map(|i| {
            let (mut ws, id) = ws_on(&server, i % 2);
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let mut req = 0;
                let mut next = |ws: &mut Ws, kind: &str| {
                    req += 1;
                    let v = request(ws, json!({"type":kind,"channel":ch,"id":req}));
                    assert_eq!(v["type"], "ack", "churner {i}: {kind}: {v}");
                };
                for _ in 0..CYCLES {
                    next(&mut ws, "subscribe");
                    if i % 4 < 2 {
                        next(&mut ws, "subscribe");
                    }
                    next(&mut ws, "unsubscribe");
                }
                next(&mut ws, "subscribe");
                (id, ws)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for (i, c) in churners.into_iter().enumerate() {
        let (id, ws) = c.join().expect("churner");
        if i % 2 == 0 {
            close_client(ws);
        } else {
            match ws.into_inner() {
                tungstenite::stream::MaybeTlsStream::Plain(s) => reset(s),
                _ => unreachable!(),
            }
        }
        ids.push(id);
    }
    let per_churner = 2 * (CYCLES + 1);
    for (o, ws) in observers.iter_mut().enumerate() {
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for _ in 0..CHURNERS * per_churner {
            let v = recv_json(ws);
            assert_eq!(v["channel"], ch, "observer {o}: {v}");
            assert_eq!(v["user"], Value::Null, "observer {o}: {v}");
            let kind = v["type"].as_str().unwrap().to_owned();
            assert!(kind == "join" || kind == "leave", "observer {o}: {v}");
            let client = v["client"].as_str().unwrap().to_owned();
            assert!(ids.contains(&client), "observer {o}: an event for {v}");
            seen.entry(client).or_default().push(kind);
        }
        // Nothing more: the next reply is a pong.
        assert_pong(ws, 99);
        for id in &ids {
            let kinds = seen.get(id).cloned().unwrap_or_default();
            let want: Vec<String> = (0..per_churner)
                .map(|k| if k % 2 == 0 { "join" } else { "leave" }.to_owned())
                .collect();
            assert_eq!(kinds, want, "observer {o}: churner {id}");
        }
    }
    let p = request(
        &mut observers[0],
        json!({"type":"presence","channel":ch,"id":100}),
    );
    assert_eq!(p["count"], 2, "{p}");
    assert_eq!(
        presence_set(&p["clients"]),
        anon(&[&observer_ids[0], &observer_ids[1]])
    );
    let _ = std::fs::remove_file(cfg);
}

/// A plain subscribe (no `since`) while a publisher keeps publishing: the
/// ack's offset T is exactly where the subscriber's stream starts, so its
/// first message is T+1 and the rest follow without a gap, on either core.
#[test]
fn a_subscribe_under_traffic_gets_everything_after_its_ack_offset() {
    const N: u64 = 4000;
    const BURST: u64 = 10;
    let server = Server::start(&["--cores", "2", "--max-publishes-per-sec", "0"]);
    let channel = "flowing";
    // Keeps the channel's stream (and epoch) alive throughout.
    let (mut keeper, _) = ws_on(&server, 1);
    let (epoch, _) = subscribe_ws(&mut keeper, channel, 1);
    let keeping = thread::spawn(move || {
        for k in 1..=N {
            let (_, o, _) = parse_message(&recv_text(&mut keeper));
            assert_eq!(o, k, "the keeper");
        }
    });
    let (mut publisher, _) = ws_on(&server, 0);
    let publishing = thread::spawn(move || {
        for s in (0..N).step_by(BURST as usize) {
            for n in s..s + BURST {
                let m = json!({"type":"publish","channel":channel,"payload":{"n":n},"id":n});
                publisher.write(Message::text(m.to_string())).unwrap();
            }
            publisher.flush().unwrap();
            for n in s..s + BURST {
                assert_eq!(
                    check_offset_ack(&recv_json(&mut publisher), Some(n)).1,
                    n + 1
                );
            }
        }
    });
    let mut joined_mid_stream = 0;
    for round in 0..40 {
        let (mut ws, _) = ws_on(&server, round % 2);
        let (e, t) = subscribe_ws(&mut ws, channel, 1);
        assert_eq!(e, epoch, "round {round}");
        if t == N {
            break;
        }
        joined_mid_stream += 1;
        let until = (t + 50).min(N);
        for want in t + 1..=until {
            let (_, o, p) = parse_message(&recv_text(&mut ws));
            assert_eq!(o, want, "round {round}: subscribed at {t}");
            assert_eq!(p, json!({ "n": o - 1 }));
        }
        close_client(ws);
    }
    publishing.join().expect("publisher");
    keeping.join().expect("keeper");
    eprintln!("{joined_mid_stream} subscribes while the publisher ran");
}

// ----- the HTTP API ------------------------------------------------------------

const API_RULES: &str = "[[channels]]\npattern = \"room:*\"\npresence = true\n\n\
                         [[channels]]\npattern = \"nohist:*\"\nhistory_size = 0\n";

/// `POST /api/publish` answers each publication's offset and epoch, in
/// request order, sequenced with `/ws` publishes; `/api/history` and
/// `/api/presence` show what a `/ws` client sees; errors as on `/ws`.
#[test]
fn api_publish_history_and_presence_match_the_websocket_view() {
    let cfg = config_file("api", API_RULES);
    let server = Server::start(&[
        "--cores",
        "2",
        "--api-key",
        KEY,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let (mut s0, _) = ws_on(&server, 0);
    let (mut s1, _) = ws_on(&server, 1);
    let (epoch, _) = subscribe_ws(&mut s0, "news", 1);
    subscribe_ws(&mut s1, "news", 1);
    let e = epoch.as_str();

    let (status, body) = api(
        &server,
        "/api/publish",
        Some(KEY),
        r#"{"channel":"news","payload":{"n":0}}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"published":1,"results":[{"channel":"news","offset":1,"epoch":e}]})
    );
    let (mut w, _) = ws_on(&server, 1);
    assert_eq!(
        common::publish_ws(&mut w, "news", json!({"n":1}), 1),
        (epoch.clone(), 2)
    );
    let batch = json!({"messages":[
        {"channel":"news","payload":{"n":2}},
        {"channel":"other","payload":{"n":0}},
        {"channel":"news","payload":{"n":3}},
    ]});
    let (status, body) = api(&server, "/api/publish", Some(KEY), &batch.to_string());
    assert_eq!(status, 200, "{body}");
    let other_ch_epoch = body["results"][1]["epoch"].clone();
    assert!(common::is_epoch(&other_ch_epoch), "{body}");
    assert_eq!(
        body,
        json!({"published":3,"results":[
            {"channel":"news","offset":3,"epoch":e},
            {"channel":"other","offset":1,"epoch":other_ch_epoch},
            {"channel":"news","offset":4,"epoch":e},
        ]})
    );
    for s in [&mut s0, &mut s1] {
        assert_eq!(recv_messages(s, 4), expected("news", 1..=4, 0));
    }

    // History: the API's body is the /ws ack without type and id.
    for (i, req) in [
        json!({"channel":"news"}),
        json!({"channel":"news","limit":2}),
        json!({"channel":"news","since":{"offset":2,"epoch":e},"limit":1}),
        json!({"channel":"news","since":{"offset":1,"epoch":e}}),
    ]
    .into_iter()
    .enumerate()
    {
        let id = 20 + i as u64;
        let mut via_ws = history(&mut w, req.clone(), id);
        assert_eq!(via_ws["type"], "ack", "{via_ws}");
        let o = via_ws.as_object_mut().unwrap();
        o.remove("type");
        o.remove("id");
        let (status, via_api) = api(&server, "/api/history", Some(KEY), &req.to_string());
        assert_eq!(status, 200, "{req}: {via_api}");
        assert_eq!(via_api, via_ws, "{req}");
    }
    let (_, h) = api(
        &server,
        "/api/history",
        Some(KEY),
        r#"{"channel":"news","limit":2}"#,
    );
    assert_eq!(h, json!({"epoch":e,"offset":4,"publications":pubs(3..=4)}));

    // Presence.
    let (mut r0, r0_id) = ws_on(&server, 0);
    let (mut r1, r1_id) = ws_on(&server, 1);
    for r in [&mut r0, &mut r1] {
        subscribe_ws(r, "room:1", 1);
    }
    let mut via_ws = request(
        &mut w,
        json!({"type":"presence","channel":"room:1","id":30}),
    );
    assert_eq!(via_ws["count"], 2, "{via_ws}");
    assert_eq!(presence_set(&via_ws["clients"]), anon(&[&r0_id, &r1_id]));
    let (status, via_api) = api(
        &server,
        "/api/presence",
        Some(KEY),
        r#"{"channel":"room:1"}"#,
    );
    assert_eq!(status, 200, "{via_api}");
    assert_eq!(via_api["count"], 2, "{via_api}");
    assert_eq!(
        presence_set(&via_api["clients"]),
        presence_set(&via_ws["clients"])
    );
    let o = via_ws.as_object_mut().unwrap();
    o.remove("type");
    o.remove("id");
    let keys: BTreeSet<&String> = via_api.as_object().unwrap().keys().collect();
    assert_eq!(keys, via_ws.as_object().unwrap().keys().collect());

    // Errors: 400 with the /ws codes, 401 without the key.
    let wrong = other_epoch(e);
    for (path, body, code) in [
        (
            "/api/history",
            json!({"channel":"news","limit":1001}).to_string(),
            "bad_limit",
        ),
        (
            "/api/history",
            json!({"channel":"news","limit":-1}).to_string(),
            "bad_json",
        ),
        (
            "/api/history",
            json!({"channel":"news","since":{"offset":1,"epoch":wrong}}).to_string(),
            "epoch_mismatch",
        ),
        (
            "/api/history",
            json!({"channel":"news","since":{"offset":"1","epoch":e}}).to_string(),
            "bad_json",
        ),
        (
            "/api/history",
            json!({"channel":"nohist:1"}).to_string(),
            "history_disabled",
        ),
        (
            "/api/history",
            json!({"channel":"a b"}).to_string(),
            "bad_channel",
        ),
        ("/api/history", "{".to_owned(), "bad_json"),
        (
            "/api/history",
            json!({"limit":1}).to_string(),
            "missing_field",
        ),
        (
            "/api/presence",
            json!({"channel":"news"}).to_string(),
            "presence_disabled",
        ),
        (
            "/api/presence",
            json!({"channel":"a*"}).to_string(),
            "bad_channel",
        ),
        ("/api/presence", "[]".to_owned(), "bad_json"),
    ] {
        let (status, resp) = api(&server, path, Some(KEY), &body);
        assert_eq!(status, 400, "{path} {body}: {resp}");
        assert_eq!(api_error(&resp), code, "{path} {body}: {resp}");
    }
    for path in ["/api/history", "/api/presence", "/api/publish"] {
        let (status, resp) = api(&server, path, None, r#"{"channel":"news"}"#);
        assert_eq!(status, 401, "{path}: {resp}");
        let (status, resp) = api(&server, path, Some("wrong"), r#"{"channel":"news"}"#);
        assert_eq!(status, 401, "{path}: {resp}");
    }
    // Nothing above published anything.
    assert_eq!(common::publish_ws(&mut w, "news", json!({"n":4}), 40).1, 5);
    for s in [&mut s0, &mut s1] {
        assert_eq!(recv_messages(s, 1), expected("news", 5..=5, 4));
    }
    let _ = std::fs::remove_file(cfg);
}

// ----- bad input -----------------------------------------------------------------

/// Each malformed or refused stream request gets an `error` with the right
/// code and its id; the connection stays open (a ping gets its pong after
/// each), and a refused subscribe subscribes nothing.
#[test]
fn bad_stream_requests_get_clear_errors_and_keep_the_connection() {
    let cfg = config_file("bad", API_RULES);
    let server = Server::start(&["--cores", "2", "--config", cfg.to_str().unwrap()]);
    let (mut ws, _) = ws_on(&server, 1);
    let (mut publisher, _) = ws_on(&server, 0);
    let (epoch, _) = common::publish_ws(&mut publisher, "plain", json!(1), 1);
    let e = epoch.as_str();
    let sub_since = |since: Value| json!({"type":"subscribe","channel":"plain","since":since});
    let hist = |extra: Value| {
        let mut v = json!({"type":"history","channel":"plain"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    // (request without id, the codes allowed): one code except where the
    // spec leaves the choice open (a number that is integral but written
    // as a float, or past u64).
    let cases: Vec<(String, &[&str])> = vec![
        (
            sub_since(json!({"offset":"5","epoch":e})).to_string(),
            &["bad_json"],
        ),
        (
            sub_since(json!({"offset":-1,"epoch":e})).to_string(),
            &["bad_json"],
        ),
        (
            sub_since(json!({"offset":1.5,"epoch":e})).to_string(),
            &["bad_json"],
        ),
        (
            sub_since(json!({"offset":null,"epoch":e})).to_string(),
            &["bad_json"],
        ),
        (sub_since(json!("yesterday")).to_string(), &["bad_json"]),
        (sub_since(json!([1, e])).to_string(), &["bad_json"]),
        (
            sub_since(json!({"offset":1,"epoch":5})).to_string(),
            &["bad_json"],
        ),
        (
            hist(json!({"since":{"offset":"x","epoch":e}})).to_string(),
            &["bad_json"],
        ),
        (hist(json!({"since":7})).to_string(), &["bad_json"]),
        (hist(json!({"limit":-1})).to_string(), &["bad_json"]),
        (hist(json!({"limit":2.5})).to_string(), &["bad_json"]),
        (hist(json!({"limit":"10"})).to_string(), &["bad_json"]),
        (hist(json!({"limit":true})).to_string(), &["bad_json"]),
        (hist(json!({"limit":1001})).to_string(), &["bad_limit"]),
        (
            hist(json!({"limit":1_000_000_000_000u64})).to_string(),
            &["bad_limit"],
        ),
        (hist(json!({"limit":u64::MAX})).to_string(), &["bad_limit"]),
        (
            r#"{"type":"history","channel":"plain","limit":1e12}"#.to_owned(),
            &["bad_limit", "bad_json"],
        ),
        (
            r#"{"type":"history","channel":"plain","limit":18446744073709551616}"#.to_owned(),
            &["bad_limit", "bad_json"],
        ),
        (
            hist(json!({"since":{"offset":0,"epoch":other_epoch(e)}})).to_string(),
            &["epoch_mismatch"],
        ),
        (
            json!({"type":"presence","channel":"plain"}).to_string(),
            &["presence_disabled"],
        ),
        (
            json!({"type":"subscribe","channel":"plain","presence":true}).to_string(),
            &["presence_disabled"],
        ),
        (
            json!({"type":"subscribe","channel":"plain","join_leave":true}).to_string(),
            &["join_leave_disabled"],
        ),
        (
            json!({"type":"history","channel":"nohist:a"}).to_string(),
            &["history_disabled"],
        ),
        (
            json!({"type":"history","channel":"a b"}).to_string(),
            &["bad_channel"],
        ),
        (
            json!({"type":"presence","channel":"x*"}).to_string(),
            &["bad_channel"],
        ),
        (json!({"type":"history"}).to_string(), &["missing_field"]),
        (json!({"type":"presence"}).to_string(), &["missing_field"]),
    ];
    for (i, (text, codes)) in cases.iter().enumerate() {
        let id = 100 + i as u64;
        // With an id (spliced in, so numbers stay as written), then without.
        let with_id = format!("{},\"id\":{id}}}", &text[..text.len() - 1]);
        for (req, want_id) in [(with_id, Some(id)), (text.clone(), None)] {
            ws.send(Message::text(req.as_str())).unwrap();
            let v = recv_json(&mut ws);
            let code = v["code"].as_str().unwrap_or("");
            assert!(codes.contains(&code), "{req}: {v}, want one of {codes:?}");
            assert_error(&v, want_id, code, &req);
            assert_pong(&mut ws, 10_000 + id);
        }
    }
    // The refused subscribes subscribed nothing.
    assert_error(
        &request(
            &mut ws,
            json!({"type":"unsubscribe","channel":"plain","id":1}),
        ),
        Some(1),
        "not_subscribed",
        "after refused subscribes",
    );
    // Recovery is never possible on a channel without history.
    let (_, o) = common::publish_ws(&mut publisher, "nohist:a", json!(1), 2);
    assert!(o >= 1);
    let ack = subscribe_since(&mut ws, "nohist:a", 3, 0, e);
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_pong(&mut ws, 4);
    let _ = std::fs::remove_file(cfg);
}

// ----- per-channel options --------------------------------------------------------

/// `join_leave` on a channel without it is refused; on an `allow_publish =
/// false` channel `/ws` publishes are refused (`publish_disabled`, nothing
/// sequenced) while the API and an embedding program's `Publisher` publish.
#[test]
fn join_leave_and_publish_permissions_follow_the_channel_options() {
    let cfg = config_file(
        "perms",
        "[[channels]]\npattern = \"ro:*\"\nallow_publish = false\n\n\
         [[channels]]\npattern = \"quiet:*\"\npresence = true\n",
    );
    let server = Server::start(&[
        "--cores",
        "2",
        "--api-key",
        KEY,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let (mut ws, ws_id) = ws_on(&server, 0);
    let e = request(
        &mut ws,
        json!({"type":"subscribe","channel":"quiet:1","id":1,"join_leave":true}),
    );
    assert_error(&e, Some(1), "join_leave_disabled", "join_leave on quiet:*");
    let ack = request(
        &mut ws,
        json!({"type":"subscribe","channel":"quiet:1","id":2,"presence":true}),
    );
    assert_eq!(
        ack["presence"],
        json!({"count":1,"clients":[{"client":ws_id,"user":null}]}),
        "{ack}"
    );

    let (mut sub, _) = ws_on(&server, 1);
    let (epoch, _) = subscribe_ws(&mut sub, "ro:feed", 1);
    let e = request(
        &mut ws,
        json!({"type":"publish","channel":"ro:feed","payload":"no","id":3}),
    );
    assert_error(&e, Some(3), "publish_disabled", "ws publish on ro:*");
    assert_pong(&mut ws, 4);
    let (status, body) = api(
        &server,
        "/api/publish",
        Some(KEY),
        r#"{"channel":"ro:feed","payload":"api"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"published":1,"results":[{"channel":"ro:feed","offset":1,"epoch":epoch}]})
    );
    server
        .publisher()
        .publish("ro:feed", r#""embedded""#)
        .expect("the Publisher may publish");
    assert_eq!(
        recv_json(&mut sub),
        common::message_json("ro:feed", 1, json!("api"))
    );
    assert_eq!(
        recv_json(&mut sub),
        common::message_json("ro:feed", 2, json!("embedded"))
    );
    // Other channels still take /ws publishes.
    assert_eq!(common::publish_ws(&mut ws, "rw", json!(1), 5).1, 1);
    let m = scrape(&server);
    assert_eq!(metric_sum(&m, "ringcast_sequenced_total", None), 3.0);
    let _ = std::fs::remove_file(cfg);
}

/// The first matching rule decides; keys it does not give come from the
/// flags (`--presence`, `--join-leave`, `--allow-publish`,
/// `--history-size`), which also cover channels no rule matches.
#[test]
fn channel_options_come_from_the_first_matching_rule_then_the_flags() {
    let cfg = config_file(
        "options",
        "[[channels]]\npattern = \"open:*\"\nallow_publish = true\npresence = false\n\n\
         [[channels]]\npattern = \"open:exact\"\nallow_publish = false\nhistory_size = 1\n\n\
         [[channels]]\npattern = \"short:*\"\nhistory_size = 2\nhistory_ttl = 600\n",
    );
    let server = Server::start(&[
        "--cores",
        "2",
        "--api-key",
        KEY,
        "--presence",
        "--join-leave",
        "--allow-publish",
        "false",
        "--history-size",
        "7",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let (mut ws, ws_id) = ws_on(&server, 1);
    let publish_api = |ch: &str, n: u64| {
        for k in 0..n {
            let (status, body) = api(
                &server,
                "/api/publish",
                Some(KEY),
                &json!({"channel":ch,"payload":{"n":k}}).to_string(),
            );
            assert_eq!(status, 200, "{body}");
        }
    };

    // No rule: the flags. Publishing over /ws is off, presence and
    // join/leave on, history 7.
    let e = request(
        &mut ws,
        json!({"type":"publish","channel":"plain","payload":1,"id":1}),
    );
    assert_error(&e, Some(1), "publish_disabled", "--allow-publish false");
    let ack = request(
        &mut ws,
        json!({"type":"subscribe","channel":"plain","id":2,"presence":true,"join_leave":true}),
    );
    assert_eq!(ack["presence"]["count"], 1, "{ack}");
    publish_api("plain", 10);
    assert_eq!(recv_messages(&mut ws, 10), expected("plain", 1..=10, 0));
    let h = history(&mut ws, json!({"channel":"plain"}), 3);
    assert_eq!(h["publications"], pubs(4..=10), "--history-size 7: {h}");

    // open:exact matches `open:*` first: publishing allowed, presence off,
    // join/leave from the flag, history from the flag (not the second
    // rule's 1).
    let (_, o) = common::publish_ws(&mut ws, "open:exact", json!({"n":0}), 4);
    assert_eq!(o, 1);
    assert_error(
        &request(
            &mut ws,
            json!({"type":"presence","channel":"open:exact","id":5}),
        ),
        Some(5),
        "presence_disabled",
        "the first rule's presence = false",
    );
    let ack = request(
        &mut ws,
        json!({"type":"subscribe","channel":"open:exact","id":6,"join_leave":true}),
    );
    check_offset_ack(&ack, Some(6));
    publish_api("open:exact", 2);
    assert_eq!(
        recv_messages(&mut ws, 2),
        [
            ("open:exact".to_owned(), 2, json!({"n":0})),
            ("open:exact".to_owned(), 3, json!({"n":1}))
        ]
    );
    let h = history(&mut ws, json!({"channel":"open:exact"}), 7);
    assert_eq!(h["publications"].as_array().unwrap().len(), 3, "{h}");

    // short:*: history 2, everything else from the flags.
    publish_api("short:a", 5);
    let h = history(&mut ws, json!({"channel":"short:a"}), 8);
    assert_eq!(h["publications"], pubs(4..=5), "{h}");
    assert_error(
        &request(
            &mut ws,
            json!({"type":"publish","channel":"short:a","payload":1,"id":9}),
        ),
        Some(9),
        "publish_disabled",
        "allow_publish from the flag",
    );
    let p = request(
        &mut ws,
        json!({"type":"presence","channel":"short:a","id":10}),
    );
    assert_eq!(p, json!({"type":"ack","id":10,"count":0,"clients":[]}));
    let p = request(
        &mut ws,
        json!({"type":"presence","channel":"plain","id":11}),
    );
    assert_eq!(
        p,
        json!({"type":"ack","id":11,"count":1,"clients":[{"client":ws_id,"user":null}]})
    );
    let _ = std::fs::remove_file(cfg);
}

/// The spec's patterns: `*` matches any run of characters, also inside a
/// pattern.
#[test]
fn a_star_inside_a_pattern_matches_any_run() {
    let cfg = config_file(
        "inner-star",
        "[[channels]]\npattern = \"team:*:chat\"\npresence = true\n",
    );
    let server = Server::start(&["--cores", "2", "--config", cfg.to_str().unwrap()]);
    let (mut ws, id) = ws_on(&server, 0);
    for (i, ch) in ["team:7:chat", "team::chat", "team:a/b:chat"]
        .iter()
        .enumerate()
    {
        let ack = request(
            &mut ws,
            json!({"type":"subscribe","channel":ch,"id":i,"presence":true}),
        );
        assert_eq!(
            ack["presence"],
            json!({"count":1,"clients":[{"client":id,"user":null}]}),
            "{ch}: {ack}"
        );
    }
    for (i, ch) in ["team:7:chatty", "team:7", "xteam:7:chat"]
        .iter()
        .enumerate()
    {
        let e = request(&mut ws, json!({"type":"presence","channel":ch,"id":10 + i}));
        assert_error(&e, Some(10 + i as u64), "presence_disabled", ch);
    }
    let _ = std::fs::remove_file(cfg);
}

/// A bad `[[channels]]` entry stops the server at startup (non-zero exit)
/// with a message naming the entry and the problem.
#[test]
fn bad_channel_rules_are_startup_errors_naming_the_entry() {
    let ok = "[[channels]]\npattern = \"a:*\"\n\n[[channels]]\npattern = \"b:*\"\n\n";
    // (file, what the message must contain: any of the first, all of the
    // rest). Entries are named by index; the third entry is `channels[2]`
    // counting from 0 (the spec's example), `channels[3]` from 1.
    let cases: [(String, &[&str], &[&str]); 4] = [
        (
            format!("{ok}[[channels]]\npattern = \"c:*\"\nhistroy_size = 5\n"),
            &["channels[2]", "channels[3]"],
            &["unknown key \"histroy_size\""],
        ),
        (
            format!("{ok}[[channels]]\npattern = \"c:*\"\nhistory_size = \"big\"\n"),
            &["channels[2]", "channels[3]"],
            &["history_size"],
        ),
        (
            format!("{ok}[[channels]]\npattern = \"has space*\"\n"),
            &["channels[2]", "channels[3]"],
            &["pattern"],
        ),
        (
            format!("{ok}[[channels]]\npresence = true\n"),
            &["channels[2]", "channels[3]"],
            &["pattern"],
        ),
    ];
    for (i, (toml, any, all)) in cases.iter().enumerate() {
        let path = config_file(&format!("bad-{i}"), toml);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["--listen", "127.0.0.1:0", "--cores", "1", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ringcast");
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > PATIENCE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("case {i}: the server started with a bad rule:\n{toml}");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "case {i}: {status}\n{err}");
        assert!(
            any.iter().any(|s| err.contains(s)) && all.iter().all(|s| err.contains(s)),
            "case {i}: the message names neither the entry nor the problem:\n{err}\n(file:\n{toml})"
        );
        let _ = std::fs::remove_file(path);
    }
}

/// Two subscribes of one connection pipelined on a core that already
/// receives the channel — the first recovering from history, the second
/// plain — are answered in order: the first ack, the recovered
/// publications, the second ack, then live traffic, nothing twice and
/// nothing missed.
#[test]
fn pipelined_subscribes_on_a_live_core_answer_in_order_without_losing_the_recovery() {
    let server = Server::start(&["--cores", "2"]);
    // Owned by core 1; the subscribers sit on core 0, which already
    // receives the channel through `keeper`.
    let channel = owned_by("pipelined", 1, 2);
    let ch = channel.as_str();
    let (mut keeper, _) = ws_on(&server, 0);
    let (epoch, _) = subscribe_ws(&mut keeper, ch, 1);
    let (mut publisher, _) = ws_on(&server, 1);
    assert_eq!(
        publish_each(&mut publisher, ch, &numbered(0..20)),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(recv_messages(&mut keeper, 20), expected(ch, 1..=20, 0));

    let (mut b, _) = ws_on(&server, 0);
    let first = json!({"type":"subscribe","channel":ch,"id":1,"since":{"offset":5,"epoch":epoch}});
    let second = json!({"type":"subscribe","channel":ch,"id":2});
    b.write(Message::text(first.to_string())).unwrap();
    b.write(Message::text(second.to_string())).unwrap();
    b.flush().unwrap();
    assert_eq!(
        recv_json(&mut b),
        json!({"type":"ack","id":1,"epoch":epoch,"offset":20,"recovered":true})
    );
    assert_eq!(recv_messages(&mut b, 15), expected(ch, 6..=20, 5));
    assert_eq!(
        recv_json(&mut b),
        json!({"type":"ack","id":2,"epoch":epoch,"offset":20})
    );
    assert_eq!(
        publish_each(&mut publisher, ch, &numbered(20..25)),
        (21..=25).collect::<Vec<_>>()
    );
    assert_eq!(recv_messages(&mut b, 5), expected(ch, 21..=25, 20));
    assert_pong(&mut b, 9);
}
