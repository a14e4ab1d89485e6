//! Several ringcast nodes sharing channels through the Redis engine
//! (`--broker redis://...`), all real processes: the `ringcast` binary,
//! `redis-server` and nginx (`tests/common/services.rs`).
//!
//! What is checked is the engine's promise to subscribers: one order per
//! channel for every subscriber on every node, offsets consecutive from 1,
//! every publication exactly once; acks only for what Redis stored
//! (`unavailable` / 503 while it is unreachable, never an ack); recovery
//! with `since` on any node; a lost stream announced with a `reset`; a
//! short blip of the pub/sub connections repaired from the stream without
//! a reset; and the broker metrics and `/readyz` that tell an operator.
//!
//! Every wait is bounded ("eventually within N seconds", or a socket read
//! timeout, in all: server pings do not extend a wait); nothing asserts how
//! fast anything happens.
//!

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::services::{free_port, Nginx, Redis, RespValue};
use common::{
    check_offset_ack, check_welcome, handshakes, http_body, http_exchange, parse_message, scrape,
    send_json, ws_client, ws_client_on_core, Server, Ws, PATIENCE,
};
use serde_json::{json, Value};
use tungstenite::Message;

const KEY: &str = "cluster-api-key";

/// How long a node gets to (re)connect to Redis: its backoff grows to 5 s.
const RECONNECT: Duration = Duration::from_secs(20);

/// How long collecting the publications of one test may take.
const COLLECT: Duration = Duration::from_secs(20);

// ----- nodes, HTTP, metrics ----------------------------------------------------

/// A node on `redis` with `cores` cores, the API on and history large enough
/// for every test here; returns once its `/readyz` says 200.
fn node(redis: &Redis, cores: usize) -> Server {
    let cores = cores.to_string();
    let url = redis.url();
    let server = Server::spawn(&[
        "--cores",
        &cores,
        "--broker",
        &url,
        "--api-key",
        KEY,
        "--history-size",
        "1000",
    ]);
    wait_ready(&server, 200);
    server
}

/// Polls `cond` every 20 ms until it holds; panics after `limit` with
/// `what` and `context()`.
fn eventually(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let start = Instant::now();
    loop {
        if cond() {
            return;
        }
        if start.elapsed() > limit {
            panic!("{what}: not within {limit:?}\n{}", context());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /readyz`'s status.
fn readyz(server: &Server) -> u16 {
    http_exchange(server.addr, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").0
}

/// Waits until the node's `/readyz` answers `status`.
fn wait_ready(server: &Server, status: u16) {
    eventually(
        &format!("/readyz {status} on {}", server.addr),
        RECONNECT,
        || readyz(server) == status,
        || server.log(),
    );
}

/// The node's `/metrics`, checked as Prometheus text, as a map from each
/// series (name and labels, as written) to its value.
fn metrics(server: &Server) -> HashMap<String, f64> {
    // Parses as Prometheus text (panics otherwise).
    let _ = scrape(server);
    let (status, resp) = http_exchange(server.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{resp}");
    http_body(&resp)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            (
                series.to_owned(),
                v.parse().unwrap_or_else(|_| panic!("{l:?}")),
            )
        })
        .collect()
}

/// The broker's families and their types: one series each (histograms:
/// their buckets, sum and count), none with a core label.
const BROKER_FAMILIES: [(&str, &str); 10] = [
    ("ringcast_broker_connected", "gauge"),
    ("ringcast_broker_reconnects_total", "counter"),
    ("ringcast_broker_messages_received_total", "counter"),
    ("ringcast_broker_publish_refused_total", "counter"),
    ("ringcast_broker_recovered_after_blip_total", "counter"),
    ("ringcast_broker_unrecoverable_total", "counter"),
    ("ringcast_broker_channels", "gauge"),
    ("ringcast_broker_published_total", "counter"),
    ("ringcast_broker_publish_seconds", "histogram"),
    ("ringcast_broker_subscribe_batch_channels", "histogram"),
];

/// Checks the shape of a node's broker families ([`BROKER_FAMILIES`]).
fn check_broker_families(server: &Server) {
    let (_, resp) = http_exchange(server.addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = http_body(&resp);
    for (name, kind) in BROKER_FAMILIES {
        assert!(
            text.lines().any(|l| l == format!("# TYPE {name} {kind}")),
            "{name} is a {kind}:\n{text}"
        );
        let series: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s))
            .filter(|s| s.split('{').next() == Some(name) || s.starts_with(&format!("{name}_")))
            .filter(|s| kind == "histogram" || s.split('{').next() == Some(name))
            .collect();
        assert!(
            series.iter().all(|s| !s.contains("core=")),
            "{name} has no core label: {series:?}"
        );
        if kind == "histogram" {
            for suffix in ["_sum", "_count"] {
                let want = format!("{name}{suffix}");
                assert_eq!(
                    series.iter().filter(|s| **s == want).count(),
                    1,
                    "{series:?}"
                );
            }
            assert!(
                series
                    .iter()
                    .any(|s| *s == format!("{name}_bucket{{le=\"+Inf\"}}")),
                "{series:?}"
            );
        } else {
            assert_eq!(series, [name], "{name}: one unlabelled series");
        }
    }
}

/// One broker series of a node (they carry no core label).
fn metric(server: &Server, series: &str) -> f64 {
    *metrics(server)
        .get(series)
        .unwrap_or_else(|| panic!("{series} missing from {}'s /metrics", server.addr))
}

/// `POST /api/publish` with `body`: status and parsed JSON body.
fn api_publish(server: &Server, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, resp) = http_exchange(server.addr, req.as_bytes());
    let v = serde_json::from_str(http_body(&resp)).unwrap_or_else(|e| panic!("{e}: {resp}"));
    (status, v)
}

/// Publishes `payloads` to `channel` in one API batch; returns each one's
/// (epoch, offset), in order.
fn api_batch(server: &Server, channel: &str, payloads: &[Value]) -> Vec<(String, u64)> {
    let messages: Vec<Value> = payloads
        .iter()
        .map(|p| json!({"channel":channel,"payload":p}))
        .collect();
    let (status, v) = api_publish(server, &json!({ "messages": messages }));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["published"], payloads.len(), "{v}");
    let results = v["results"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(results.len(), payloads.len(), "{v}");
    results
        .iter()
        .map(|r| {
            assert_eq!(r["channel"], channel, "{v}");
            (
                r["epoch"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{v}"))
                    .to_owned(),
                r["offset"].as_u64().unwrap_or_else(|| panic!("{v}")),
            )
        })
        .collect()
}

/// Checks an API error body: `{"error":{"code":CODE,"message":TEXT}}`.
fn assert_api_error(v: &Value, code: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

/// Checks a `/ws` error: exactly type, id, code (`code`), message.
fn assert_ws_error(v: &Value, id: u64, code: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "id", "message", "type"], "{v}");
}

/// Every node's log, for failure messages.
fn logs(nodes: &[Server]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- node {} ---\n{}", n.addr, n.log()))
        .collect()
}

// ----- reading subscribers -----------------------------------------------------

/// What a subscriber receives on its channel.
#[derive(Clone, Debug, PartialEq)]
enum Ev {
    /// `message`: offset, payload.
    Msg(u64, Value),
    /// `reset`: the new epoch and the offset delivery goes on after.
    Reset(String, u64),
}

/// One read attempt's outcome.
enum Next {
    Text(String),
    /// Nothing within the socket's (short) read timeout.
    Idle,
    /// The connection is gone (closed, reset).
    Closed(String),
}

/// Makes reads return after at most 200 ms, so a reader can check its
/// deadline; tungstenite keeps a partial frame across such a timeout.
fn short_reads(ws: &Ws) {
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s.set_write_timeout(Some(PATIENCE)).unwrap();
    }
}

/// Reads one text message (pings answered by tungstenite).
fn next(ws: &mut Ws) -> Next {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Next::Text(t.as_str().to_owned()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(c)) => return Next::Closed(format!("close {c:?}")),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Next::Idle
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                continue
            }
            Err(e) => return Next::Closed(e.to_string()),
        }
    }
}

/// The next text message within `limit` (panics on a timeout or a
/// close), whatever the socket's read timeout.
fn next_text(ws: &mut Ws, limit: Duration, what: &str) -> String {
    let start = Instant::now();
    loop {
        match next(ws) {
            Next::Text(t) => return t,
            Next::Idle if start.elapsed() < limit => {}
            Next::Idle => panic!("{what}: nothing within {limit:?}"),
            Next::Closed(e) => panic!("{what}: connection gone: {e}"),
        }
    }
}

/// [`next_text`], parsed.
fn next_json(ws: &mut Ws, limit: Duration, what: &str) -> Value {
    let t = next_text(ws, limit, what);
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}"))
}

/// A `message` or `reset` frame of `channel`, its exact shape checked.
fn parse_event(text: &str, channel: &str) -> Ev {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    match v["type"].as_str() {
        Some("message") => {
            let (ch, offset, payload) = parse_message(text);
            assert_eq!(ch, channel, "{text}");
            Ev::Msg(offset, payload)
        }
        Some("reset") => {
            let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(
                keys,
                ["channel", "epoch", "offset", "type"],
                "reset: {text}"
            );
            assert_eq!(v["channel"], channel, "{text}");
            assert!(common::is_epoch(&v["epoch"]), "{text}");
            Ev::Reset(
                v["epoch"].as_str().unwrap().to_owned(),
                v["offset"].as_u64().unwrap_or_else(|| panic!("{text}")),
            )
        }
        _ => panic!("a subscriber of {channel} got {text}"),
    }
}

/// A subscriber reading on its own thread into `events` (shared, so the
/// test can watch progress) until `done(events)` holds or `limit` passes.
/// Its connection must stay up.
struct Reader {
    name: String,
    events: Arc<Mutex<Vec<Ev>>>,
    handle: Option<JoinHandle<Ws>>,
}

impl Reader {
    fn start(
        name: String,
        mut ws: Ws,
        channel: &str,
        limit: Duration,
        done: impl Fn(&[Ev]) -> bool + Send + 'static,
    ) -> Reader {
        short_reads(&ws);
        let events = Arc::new(Mutex::new(Vec::new()));
        let out = events.clone();
        let channel = channel.to_owned();
        let who = name.clone();
        let handle = thread::spawn(move || {
            let start = Instant::now();
            loop {
                if done(&out.lock().unwrap()) || start.elapsed() > limit {
                    return ws;
                }
                match next(&mut ws) {
                    Next::Text(t) => out.lock().unwrap().push(parse_event(&t, &channel)),
                    Next::Idle => {}
                    Next::Closed(e) => panic!("{who}: connection lost: {e}"),
                }
            }
        });
        Reader {
            name,
            events,
            handle: Some(handle),
        }
    }

    /// What it has received so far.
    fn events(&self) -> Vec<Ev> {
        self.events.lock().unwrap().clone()
    }

    /// Waits for the thread; returns the connection (reads bounded by
    /// `PATIENCE` again) and everything received.
    fn finish(&mut self) -> (Ws, Vec<Ev>) {
        let ws = self
            .handle
            .take()
            .expect("finished once")
            .join()
            .unwrap_or_else(|_| panic!("{}'s reader panicked", self.name));
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(PATIENCE)).unwrap();
        }
        (ws, self.events())
    }
}

/// Whether `events` hold a message with offset `offset` (after a reset,
/// if `after_reset`).
fn has_offset(events: &[Ev], offset: u64, after_reset: bool) -> bool {
    let from = if after_reset {
        match events.iter().position(|e| matches!(e, Ev::Reset(..))) {
            Some(i) => i + 1,
            None => return false,
        }
    } else {
        0
    };
    events[from..]
        .iter()
        .any(|e| matches!(e, Ev::Msg(o, _) if *o == offset))
}

/// Around a subscriber's (first) reset: the last offsets before it, the
/// reset, the first offsets after it.
fn turn(events: &[Ev]) -> String {
    let at = events
        .iter()
        .position(|e| matches!(e, Ev::Reset(..)))
        .unwrap_or(events.len());
    format!(
        "{} events, ... {:?} | {:?} | {:?} ...",
        events.len(),
        offsets(&events[at.saturating_sub(3)..at]),
        events.get(at),
        offsets(&events[(at + 1).min(events.len())..(at + 4).min(events.len())])
    )
}

/// The offsets of the messages in `events`.
fn offsets(events: &[Ev]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Ev::Msg(o, _) => Some(*o),
            Ev::Reset(..) => None,
        })
        .collect()
}

/// Subscribes (no options) and checks the ack: (epoch, offset). Unlike
/// `common::subscribe_ws`, the wait is bounded in all (server pings do not
/// extend it).
fn subscribe(ws: &mut Ws, channel: &str, id: u64) -> (String, u64) {
    send_json(ws, json!({"type":"subscribe","channel":channel,"id":id}));
    let ack = next_json(
        ws,
        PATIENCE,
        &format!("the ack of subscribe {id} to {channel}"),
    );
    check_offset_ack(&ack, Some(id))
}

/// Publishes and checks the ack: (epoch, offset). The connection must not
/// be subscribed to anything that could arrive first.
fn publish(ws: &mut Ws, channel: &str, payload: Value, id: u64) -> (String, u64) {
    send_json(
        ws,
        json!({"type":"publish","channel":channel,"payload":payload,"id":id}),
    );
    let ack = next_json(
        ws,
        PATIENCE,
        &format!("the ack of publish {id} to {channel}"),
    );
    check_offset_ack(&ack, Some(id))
}

/// Subscribes `ws` (nothing else on it) with `since`; returns the ack.
fn subscribe_since(ws: &mut Ws, channel: &str, id: u64, epoch: &str, offset: u64) -> Value {
    send_json(
        ws,
        json!({"type":"subscribe","channel":channel,"id":id,
               "since":{"offset":offset,"epoch":epoch}}),
    );
    next_json(ws, PATIENCE, &format!("the ack of subscribe {id}"))
}

/// The next `n` frames, each a `message` of `channel`: (offset, payload).
fn recv_messages(ws: &mut Ws, channel: &str, n: usize) -> Vec<(u64, Value)> {
    (0..n)
        .map(
            |_| match parse_event(&next_text(ws, PATIENCE, channel), channel) {
                Ev::Msg(o, p) => (o, p),
                other => panic!("expected a message of {channel}, got {other:?}"),
            },
        )
        .collect()
}

// ----- publishers --------------------------------------------------------------

/// Publishes every payload over `/ws` with up to `window` publishes in
/// flight (ids `first_id..`); returns each id's reply. The connection must
/// not be subscribed to anything.
fn publish_pipelined(
    ws: &mut Ws,
    channel: &str,
    payloads: &[Value],
    first_id: u64,
    window: usize,
) -> BTreeMap<u64, Value> {
    let mut replies = BTreeMap::new();
    let mut sent = 0;
    while replies.len() < payloads.len() {
        while sent < payloads.len() && sent - replies.len() < window {
            let id = first_id + sent as u64;
            let m = json!({"type":"publish","channel":channel,"payload":payloads[sent],"id":id});
            ws.write(Message::text(m.to_string())).unwrap();
            sent += 1;
        }
        ws.flush().unwrap();
        let v = next_json(ws, PATIENCE, "a publish reply");
        let id = v["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("reply without id: {v}"));
        assert!(
            (first_id..first_id + sent as u64).contains(&id),
            "a reply to nothing sent: {v}"
        );
        assert!(
            replies.insert(id, v.clone()).is_none(),
            "two replies to {id}: {v}"
        );
    }
    replies
}

/// One `/ws` publish of a steady publisher: what it sent and what came
/// back, with the test's phase when it was sent and when it was answered.
#[derive(Clone, Debug)]
struct Sent {
    n: u64,
    sent_phase: u8,
    reply_phase: u8,
    reply: Value,
}

/// A `/ws` publisher on its own thread: publishes `{"n":N}` (N from 0), one
/// at a time, waiting for each reply, every `pause`, until `stop`.
struct SteadyWs {
    log: Arc<Mutex<Vec<Sent>>>,
    stop: Arc<AtomicBool>,
    /// Set: publish nothing more; `parked` says when it stopped.
    hold: Arc<AtomicBool>,
    parked: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl SteadyWs {
    fn start(mut ws: Ws, channel: &str, pause: Duration, phase: Arc<AtomicU8>) -> SteadyWs {
        short_reads(&ws);
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(AtomicBool::new(false));
        let parked = Arc::new(AtomicBool::new(false));
        let (out, halt) = (log.clone(), stop.clone());
        let (holding, park) = (hold.clone(), parked.clone());
        let channel = channel.to_owned();
        let handle = thread::spawn(move || {
            let mut n = 0;
            while !halt.load(Ordering::SeqCst) {
                if holding.load(Ordering::SeqCst) {
                    park.store(true, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(2));
                    continue;
                }
                park.store(false, Ordering::SeqCst);
                let sent_phase = phase.load(Ordering::SeqCst);
                let id = n + 1;
                send_json(
                    &mut ws,
                    json!({"type":"publish","channel":channel,"payload":{"n":n},"id":id}),
                );
                let reply = next_json(&mut ws, PATIENCE, "a publish reply");
                let reply_phase = phase.load(Ordering::SeqCst);
                assert_eq!(reply["id"], id, "replies in order: {reply}");
                out.lock().unwrap().push(Sent {
                    n,
                    sent_phase,
                    reply_phase,
                    reply,
                });
                n += 1;
                thread::sleep(pause);
            }
        });
        SteadyWs {
            log,
            stop,
            hold,
            parked,
            handle: Some(handle),
        }
    }

    /// Stops publishing; returns once the last publish was answered.
    fn hold(&self) {
        self.hold.store(true, Ordering::SeqCst);
        eventually(
            "the publisher holds",
            PATIENCE,
            || self.parked.load(Ordering::SeqCst),
            || format!("{:?}", self.log().last()),
        );
    }

    /// Publishes again after [`hold`](Self::hold).
    fn resume(&self) {
        self.hold.store(false, Ordering::SeqCst);
    }

    fn log(&self) -> Vec<Sent> {
        self.log.lock().unwrap().clone()
    }

    /// Acked publishes so far: (n, epoch, offset).
    fn acked(&self) -> Vec<(u64, String, u64)> {
        self.log()
            .iter()
            .filter(|s| s.reply["type"] == "ack")
            .map(|s| {
                let (e, o) = check_offset_ack(&s.reply, Some(s.n + 1));
                (s.n, e, o)
            })
            .collect()
    }

    fn finish(&mut self) -> Vec<Sent> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .expect("finished once")
            .join()
            .expect("the publisher panicked");
        self.log()
    }
}

/// A `/ws` client on `core` of `server`, its welcome read.
fn on_core(server: &Server, core: usize) -> Ws {
    ws_client_on_core(server, core).0
}

/// A `/ws` client on whichever core, its welcome read.
fn any_core(server: &Server) -> Ws {
    ws_client(&server.url("/ws")).0
}

// ----- 1. one order across nodes -----------------------------------------------

/// Three nodes (two with 2 cores, one with 1), seven subscribers spread
/// over every node and core; two `/ws` publishers on two nodes, pipelined
/// and interleaved, and the HTTP API in batches on the third: every
/// subscriber receives the same 700 publications, offsets 1..=700, each
/// one at the offset its ack named, then nothing but the next one.
#[test]
fn three_nodes_one_order() {
    let redis = Redis::start();
    let nodes = [node(&redis, 2), node(&redis, 2), node(&redis, 1)];
    let ch = "cluster:order";

    let placement = [(0, 0), (0, 1), (0, 0), (1, 0), (1, 1), (2, 0), (2, 0)];
    let mut subs: Vec<Ws> = placement
        .iter()
        .map(|&(n, core)| on_core(&nodes[n], core))
        .collect();
    let mut epoch = None;
    for ws in &mut subs {
        let (e, offset) = subscribe(ws, ch, 1);
        assert_eq!(offset, 0, "a new channel");
        assert_eq!(
            *epoch.get_or_insert(e.clone()),
            e,
            "one epoch on every node"
        );
    }
    let epoch = epoch.unwrap();
    let mut readers: Vec<Reader> = subs
        .into_iter()
        .zip(placement)
        .map(|(ws, (n, core))| {
            Reader::start(format!("node {n} core {core}"), ws, ch, COLLECT, |ev| {
                ev.len() >= 700
            })
        })
        .collect();

    let ws_publisher = |node: &Server, src: &'static str| {
        let mut ws = on_core(node, 1);
        let payloads: Vec<Value> = (0..300).map(|i| json!({"src":src,"i":i})).collect();
        let channel = ch.to_owned();
        thread::spawn(move || {
            let replies = publish_pipelined(&mut ws, &channel, &payloads, 1, 16);
            payloads
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    (
                        p,
                        check_offset_ack(&replies[&(i as u64 + 1)], Some(i as u64 + 1)),
                    )
                })
                .collect::<Vec<_>>()
        })
    };
    let a = ws_publisher(&nodes[0], "a");
    let b = ws_publisher(&nodes[1], "b");
    let mut published: Vec<(Value, (String, u64))> = Vec::new();
    for batch in 0..10 {
        let payloads: Vec<Value> = (0..10)
            .map(|i| json!({"src":"api","i":batch * 10 + i}))
            .collect();
        let results = api_batch(&nodes[2], ch, &payloads);
        published.extend(payloads.into_iter().zip(results));
    }
    published.extend(a.join().expect("publisher a"));
    published.extend(b.join().expect("publisher b"));
    assert_eq!(published.len(), 700);

    // Every ack: the channel's epoch, an offset of its own.
    let mut at: BTreeMap<u64, Value> = BTreeMap::new();
    for (payload, (e, offset)) in &published {
        assert_eq!(*e, epoch, "{payload}");
        assert!(
            at.insert(*offset, payload.clone()).is_none(),
            "offset {offset} acked twice"
        );
    }
    assert_eq!(
        at.keys().copied().collect::<Vec<_>>(),
        (1..=700).collect::<Vec<_>>()
    );

    let want: Vec<Ev> = at.iter().map(|(o, p)| Ev::Msg(*o, p.clone())).collect();
    let mut conns = Vec::new();
    let mut wrong = Vec::new();
    for r in &mut readers {
        let (ws, got) = r.finish();
        if got != want {
            let first_bad = got.iter().zip(&want).position(|(g, w)| g != w);
            let offs = offsets(&got);
            wrong.push(format!(
                "{}: {} events, first difference at {first_bad:?} ({:?} for {:?}), last offsets {:?}",
                r.name,
                got.len(),
                first_bad.map(|i| &got[i]),
                first_bad.map(|i| &want[i]),
                &offs[offs.len().saturating_sub(5)..]
            ));
        }
        conns.push(ws);
    }
    assert!(
        wrong.is_empty(),
        "subscribers that did not get the 700 in order:\n{}\n{}",
        wrong.join("\n"),
        logs(&nodes)
    );

    // Nothing twice: the next frame on every subscriber is the next one.
    let (_, last) = api_batch(&nodes[0], ch, &[json!("marker")])[0].clone();
    assert_eq!(last, 701);
    for ws in &mut conns {
        match parse_event(&next_text(ws, PATIENCE, "the marker"), ch) {
            Ev::Msg(701, p) => assert_eq!(p, json!("marker")),
            other => panic!("after 700, expected 701, got {other:?}"),
        }
    }

    // The broker metrics: connected, every publication acked by the node
    // that took it, received by every node, none refused or lost.
    let per_node_published = [300.0, 300.0, 100.0];
    for (i, n) in nodes.iter().enumerate() {
        let m = metrics(n);
        let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("node {i}: {k} missing"));
        assert_eq!(get("ringcast_broker_connected"), 1.0, "node {i}");
        let extra = if i == 0 { 1.0 } else { 0.0 };
        assert_eq!(
            get("ringcast_broker_published_total"),
            per_node_published[i] + extra,
            "node {i}"
        );
        assert_eq!(
            get("ringcast_broker_publish_seconds_count"),
            get("ringcast_broker_published_total"),
            "node {i}: one latency sample per acked publication"
        );
        assert!(
            get("ringcast_broker_messages_received_total") >= 701.0,
            "node {i}"
        );
        assert_eq!(
            get("ringcast_broker_publish_refused_total"),
            0.0,
            "node {i}"
        );
        assert_eq!(get("ringcast_broker_unrecoverable_total"), 0.0, "node {i}");
        assert_eq!(
            get("ringcast_broker_channels"),
            1.0,
            "node {i}: one channel"
        );
        assert_eq!(
            get("ringcast_broker_publish_seconds_bucket{le=\"+Inf\"}"),
            get("ringcast_broker_publish_seconds_count"),
            "node {i}"
        );
        check_broker_families(n);
        assert!(
            get("ringcast_broker_subscribe_batch_channels_count") >= 1.0,
            "node {i}"
        );
        assert!(get("ringcast_broker_reconnects_total") >= 2.0, "node {i}");
    }
}

// ----- 2. recovery on another node ---------------------------------------------

/// A subscriber of node A leaves after 10 publications; 50 more are made
/// through node C; a client on node B subscribing with A's (epoch, offset)
/// is told `recovered:true` and gets exactly those 50, then live ones. A
/// second client on B's other core (B already receives the channel) and
/// one back on A recover the same way.
#[test]
fn recovery_on_another_node() {
    let redis = Redis::start();
    let (a, b, c) = (node(&redis, 2), node(&redis, 2), node(&redis, 1));
    let ch = "cluster:recover";
    let mut publisher = any_core(&c);
    let publish_n = |ws: &mut Ws, n: u64| publish(ws, ch, json!({ "n": n }), 100 + n);

    let mut sub = on_core(&a, 0);
    let (epoch, offset) = subscribe(&mut sub, ch, 1);
    assert_eq!(offset, 0);
    for n in 0..10 {
        assert_eq!(publish_n(&mut publisher, n), (epoch.clone(), n + 1));
    }
    let seen = recv_messages(&mut sub, ch, 10);
    assert_eq!(
        seen,
        (0..10)
            .map(|n| (n + 1, json!({ "n": n })))
            .collect::<Vec<_>>()
    );
    let last = seen.last().unwrap().0;
    common::close_client(sub);

    for n in 10..60 {
        assert_eq!(publish_n(&mut publisher, n), (epoch.clone(), n + 1));
    }

    let mut on_b = on_core(&b, 0);
    assert_eq!(
        subscribe_since(&mut on_b, ch, 7, &epoch, last),
        json!({"type":"ack","id":7,"epoch":epoch,"offset":60,"recovered":true}),
        "recovery on another node"
    );
    assert_eq!(
        recv_messages(&mut on_b, ch, 50),
        (10..60)
            .map(|n| (n + 1, json!({ "n": n })))
            .collect::<Vec<_>>(),
        "exactly the missed publications, in order"
    );
    assert_eq!(publish_n(&mut publisher, 60), (epoch.clone(), 61));
    assert_eq!(
        recv_messages(&mut on_b, ch, 1),
        vec![(61, json!({"n":60}))],
        "then live"
    );

    // B's other core, while B already receives the channel.
    let mut on_b1 = on_core(&b, 1);
    assert_eq!(
        subscribe_since(&mut on_b1, ch, 8, &epoch, last),
        json!({"type":"ack","id":8,"epoch":epoch,"offset":61,"recovered":true})
    );
    assert_eq!(
        recv_messages(&mut on_b1, ch, 51),
        (10..61)
            .map(|n| (n + 1, json!({ "n": n })))
            .collect::<Vec<_>>()
    );
    // Back on A (which may have dropped the channel after its last
    // subscriber left: either way the same answer).
    let mut on_a = on_core(&a, 1);
    assert_eq!(
        subscribe_since(&mut on_a, ch, 9, &epoch, 55),
        json!({"type":"ack","id":9,"epoch":epoch,"offset":61,"recovered":true})
    );
    assert_eq!(
        recv_messages(&mut on_a, ch, 6),
        (55..61)
            .map(|n| (n + 1, json!({ "n": n })))
            .collect::<Vec<_>>()
    );
    // Up to date: recovered, nothing replayed.
    let mut on_c = any_core(&c);
    assert_eq!(
        subscribe_since(&mut on_c, ch, 10, &epoch, 61),
        json!({"type":"ack","id":10,"epoch":epoch,"offset":61,"recovered":true})
    );

    assert_eq!(publish_n(&mut publisher, 61), (epoch.clone(), 62));
    for (name, ws) in [
        ("B0", &mut on_b),
        ("B1", &mut on_b1),
        ("A1", &mut on_a),
        ("C", &mut on_c),
    ] {
        assert_eq!(
            recv_messages(ws, ch, 1),
            vec![(62, json!({"n":61}))],
            "{name}: the next live publication, nothing twice"
        );
    }
}

// ----- 3. nginx in front, a node SIGKILLed -------------------------------------

/// What one client through nginx went through.
#[derive(Debug, Default)]
struct Journey {
    /// Every message received, over every connection.
    seen: Vec<(u64, Value)>,
    /// The ack of each resubscribe and the offset it resubscribed from.
    resubscribes: Vec<(u64, Value)>,
}

/// 24 clients through nginx (in front of three nodes) subscribe; a
/// publisher on one node's API publishes steadily; the node with the most
/// clients is SIGKILLed. Its clients reconnect through nginx and
/// resubscribe with `since` their last (epoch, offset): `recovered:true`,
/// and in the end every client saw offsets 1..=N exactly once, in order.
#[test]
fn through_nginx_node_killed() {
    let redis = Redis::start();
    let mut nodes: Vec<Server> = (0..3).map(|_| node(&redis, 2)).collect();
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let nginx = Nginx::start(&addrs);
    let ch = "cluster:nginx";
    let clients = 24;

    let mut conns: Vec<Ws> = Vec::new();
    let mut epoch = None;
    for _ in 0..clients {
        let (mut ws, _) = ws_client(&nginx.url("/ws"));
        let (e, offset) = subscribe(&mut ws, ch, 1);
        assert_eq!(offset, 0);
        assert_eq!(*epoch.get_or_insert(e.clone()), e);
        conns.push(ws);
    }
    let epoch = epoch.unwrap();
    let per_node: Vec<u64> = nodes
        .iter()
        .map(|n| handshakes(&scrape(n), "upgraded") as u64)
        .collect();
    assert_eq!(per_node.iter().sum::<u64>(), clients as u64, "{per_node:?}");
    let victim = (0..3).max_by_key(|&i| per_node[i]).unwrap();
    let on_victim = per_node[victim] as usize;
    let pub_node = (victim + 1) % 3;

    // Shared with the clients: how many lost their connection, when they
    // may reconnect, and the last offset (0 until the publisher stops).
    let lost = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(AtomicBool::new(false));
    let target = Arc::new(AtomicU64::new(0));
    let url = nginx.url("/ws");
    let threads: Vec<JoinHandle<Journey>> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let (lost, go, target) = (lost.clone(), go.clone(), target.clone());
            let (url, epoch) = (url.clone(), epoch.clone());
            thread::spawn(move || {
                short_reads(&ws);
                let mut j = Journey::default();
                let start = Instant::now();
                loop {
                    let last = j.seen.last().map_or(0, |m| m.0);
                    let t = target.load(Ordering::SeqCst);
                    if (t > 0 && last >= t) || start.elapsed() > COLLECT {
                        return j;
                    }
                    match next(&mut ws) {
                        Next::Text(text) => match parse_event(&text, ch) {
                            Ev::Msg(o, p) => j.seen.push((o, p)),
                            other => panic!("client {i}: {other:?}"),
                        },
                        Next::Idle => {}
                        Next::Closed(_) => {
                            lost.fetch_add(1, Ordering::SeqCst);
                            while !go.load(Ordering::SeqCst) {
                                assert!(start.elapsed() < COLLECT, "client {i}: no go");
                                thread::sleep(Duration::from_millis(10));
                            }
                            // Reconnect through nginx (bounded retries).
                            ws = loop {
                                match tungstenite::connect(&url) {
                                    Ok((mut ws, _)) => {
                                        short_reads(&ws);
                                        let welcome = next_json(&mut ws, PATIENCE, "welcome");
                                        check_welcome(&welcome);
                                        break ws;
                                    }
                                    Err(e) => {
                                        assert!(
                                            start.elapsed() < COLLECT,
                                            "client {i}: cannot reconnect: {e}"
                                        );
                                        thread::sleep(Duration::from_millis(50));
                                    }
                                }
                            };
                            let ack = subscribe_since(&mut ws, ch, 2, &epoch, last);
                            j.resubscribes.push((last, ack));
                        }
                    }
                }
            })
        })
        .collect();

    let publishing = Arc::new(AtomicBool::new(true));
    let count = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (publishing, count) = (publishing.clone(), count.clone());
        let addr = nodes[pub_node].addr;
        thread::spawn(move || {
            let mut n = 0u64;
            let mut acked = Vec::new();
            while publishing.load(Ordering::SeqCst) {
                let body = json!({"channel":ch,"payload":{"n":n}}).to_string();
                let req = format!(
                    "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-Api-Key: {KEY}\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let (status, resp) = http_exchange(addr, req.as_bytes());
                assert_eq!(status, 200, "{resp}");
                let v: Value = serde_json::from_str(http_body(&resp)).unwrap();
                acked.push((
                    v["results"][0]["epoch"].as_str().unwrap().to_owned(),
                    v["results"][0]["offset"].as_u64().unwrap(),
                ));
                n += 1;
                count.store(n, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(5));
            }
            acked
        })
    };
    let context = || {
        format!(
            "published {}, lost {}\n{}",
            count.load(Ordering::SeqCst),
            lost.load(Ordering::SeqCst),
            nginx.log()
        )
    };
    eventually(
        "50 publications",
        COLLECT,
        || count.load(Ordering::SeqCst) >= 50,
        context,
    );
    nodes[victim].signal(libc::SIGKILL);
    assert!(!nodes[victim].wait().success());
    eventually(
        "the killed node's clients notice",
        COLLECT,
        || lost.load(Ordering::SeqCst) >= on_victim,
        context,
    );
    // They missed at least 20 publications before they may reconnect.
    let at = count.load(Ordering::SeqCst);
    eventually(
        "20 more",
        COLLECT,
        || count.load(Ordering::SeqCst) >= at + 20,
        context,
    );
    go.store(true, Ordering::SeqCst);
    let at = count.load(Ordering::SeqCst);
    eventually(
        "50 more",
        COLLECT,
        || count.load(Ordering::SeqCst) >= at + 50,
        context,
    );
    publishing.store(false, Ordering::SeqCst);
    let acked = publisher.join().expect("the publisher");
    let n = acked.len() as u64;
    for (i, (e, o)) in acked.iter().enumerate() {
        assert_eq!(
            (e.as_str(), *o),
            (epoch.as_str(), i as u64 + 1),
            "one publisher, consecutive"
        );
    }
    target.store(n, Ordering::SeqCst);

    let want: Vec<(u64, Value)> = (1..=n).map(|o| (o, json!({ "n": o - 1 }))).collect();
    let mut reconnected = 0;
    for (i, t) in threads.into_iter().enumerate() {
        let j = t.join().unwrap_or_else(|_| panic!("client {i} panicked"));
        for (since, ack) in &j.resubscribes {
            let top = ack["offset"].as_u64().unwrap_or(0);
            assert_eq!(
                *ack,
                json!({"type":"ack","id":2,"epoch":epoch,"offset":top,"recovered":true}),
                "client {i} resubscribing from {since}"
            );
            assert!(
                top >= since + 20,
                "client {i}: missed 20 or more ({since} -> {top})"
            );
        }
        reconnected += usize::from(!j.resubscribes.is_empty());
        assert!(
            j.resubscribes.len() <= 1,
            "client {i}: {:?}",
            j.resubscribes
        );
        if j.seen != want {
            let got: Vec<u64> = j.seen.iter().map(|m| m.0).collect();
            panic!(
                "client {i} (resubscribed {:?}): {} messages, want 1..={n}: {got:?}",
                j.resubscribes,
                j.seen.len()
            );
        }
    }
    assert_eq!(
        reconnected, on_victim,
        "the killed node's clients, and only they"
    );
    assert!(on_victim > 0);
}

// ----- 4. Redis restarted: the streams are gone --------------------------------

/// Redis is SIGKILLed while a publisher publishes over `/ws` and
/// subscribers on three nodes listen; restarted on its port, empty. The
/// publisher holds while Redis is killed (nothing in flight: every ack
/// before the kill is complete), and publishes on during the outage.
/// During the outage: `unavailable` errors (never an ack), `/readyz` 503,
/// `ringcast_broker_connected` 0, the API 503. After it: the nodes
/// reconnect by themselves, each subscriber got every acked publication of
/// the old epoch, then one `reset` to the new epoch, then the new
/// publications, consecutive; a `since` of the old epoch is not recovered.
#[test]
fn redis_restart() {
    redis_restart_case(true);
}

/// [`redis_restart`] with the publisher publishing steadily right across
/// the kill: everything acked before the kill reaches every subscriber
/// before the reset, except possibly the one publication acked in the
/// instant Redis died (Redis writes the script's reply before the pub/sub
/// messages, and without persistence it is gone with Redis: the reset
/// tells the subscribers). With `appendfsync always` nothing acked is lost
/// (tests/redis_cluster.rs).
#[test]
fn redis_restart_racing_an_ack() {
    redis_restart_case(false);
}

/// The Redis restart scenario; `quiesce`: the publisher holds, and every
/// subscriber has every acked publication, when Redis is killed.
fn redis_restart_case(quiesce: bool) {
    let mut redis = Redis::start();
    let nodes = [node(&redis, 2), node(&redis, 2), node(&redis, 1)];
    let ch = "cluster:restart";
    let placement = [(0, 0), (0, 1), (1, 1), (2, 0)];
    let mut epoch = None;
    // The new epoch's last offset, once the publisher stopped.
    let target = Arc::new(AtomicU64::new(0));
    let mut readers: Vec<Reader> = placement
        .iter()
        .map(|&(n, core)| {
            let mut ws = on_core(&nodes[n], core);
            let (e, offset) = subscribe(&mut ws, ch, 1);
            assert_eq!(offset, 0);
            assert_eq!(*epoch.get_or_insert(e.clone()), e);
            let target = target.clone();
            Reader::start(
                format!("node {n} core {core}"),
                ws,
                ch,
                RECONNECT + RECONNECT,
                move |ev| {
                    let t = target.load(Ordering::SeqCst);
                    t > 0 && has_offset(ev, t, true)
                },
            )
        })
        .collect();
    let old = epoch.unwrap();
    // 0: Redis up; 1: killed (kill9 returned); 2: restarting.
    let phase = Arc::new(AtomicU8::new(0));
    let mut publisher = SteadyWs::start(
        on_core(&nodes[0], 1),
        ch,
        Duration::from_millis(5),
        phase.clone(),
    );
    let context = || {
        let log = publisher.log();
        format!(
            "{} publishes, last {:?}\n{}",
            log.len(),
            log.last(),
            logs(&nodes)
        )
    };
    eventually(
        "30 acks",
        COLLECT,
        || publisher.acked().len() >= 30,
        context,
    );

    if quiesce {
        publisher.hold();
        let last = publisher.acked().last().unwrap().2;
        eventually(
            &format!("every subscriber has offset {last}"),
            COLLECT,
            || readers.iter().all(|r| has_offset(&r.events(), last, false)),
            context,
        );
    }
    redis.kill9();
    phase.store(1, Ordering::SeqCst);
    publisher.resume();
    eventually(
        "publishes refused during the outage",
        RECONNECT,
        || {
            publisher
                .log()
                .iter()
                .filter(|s| s.sent_phase == 1 && s.reply["type"] == "error")
                .count()
                >= 3
        },
        context,
    );
    for (i, n) in nodes.iter().enumerate() {
        wait_ready(n, 503);
        assert_eq!(metric(n, "ringcast_broker_connected"), 0.0, "node {i}");
    }
    let (status, v) = api_publish(&nodes[1], &json!({"channel":ch,"payload":"outage"}));
    assert_eq!(status, 503, "the API while Redis is down: {v}");
    assert_api_error(&v, "unavailable");

    phase.store(2, Ordering::SeqCst);
    redis.restart();
    for (i, n) in nodes.iter().enumerate() {
        wait_ready(n, 200);
        assert_eq!(metric(n, "ringcast_broker_connected"), 1.0, "node {i}");
    }
    // Every subscriber is told; then 20 more publications are acked.
    eventually(
        "a reset on every subscriber",
        RECONNECT,
        || {
            readers
                .iter()
                .all(|r| r.events().iter().any(|e| matches!(e, Ev::Reset(..))))
        },
        context,
    );
    let acked_new = |p: &SteadyWs| p.acked().into_iter().filter(|a| a.1 != old).count();
    let at = acked_new(&publisher);
    eventually(
        "20 more acks",
        COLLECT,
        || acked_new(&publisher) >= at + 20,
        context,
    );
    let log = publisher.finish();

    // The publisher: acks only for what Redis stored, errors while it
    // was gone.
    let mut old_acks: BTreeMap<u64, Value> = BTreeMap::new();
    let mut new_acks: BTreeMap<u64, Value> = BTreeMap::new();
    let mut new_epoch = None;
    let mut refused = 0;
    for s in &log {
        let id = s.n + 1;
        if s.reply["type"] == "error" {
            assert_ws_error(&s.reply, id, "unavailable");
            refused += 1;
            continue;
        }
        assert!(
            !(s.sent_phase == 1 && s.reply_phase == 1),
            "acked while Redis was down: {s:?}"
        );
        let (e, o) = check_offset_ack(&s.reply, Some(id));
        let payload = json!({ "n": s.n });
        if e == old {
            assert!(
                new_acks.is_empty(),
                "an old-epoch ack after a new one: {s:?}"
            );
            assert!(old_acks.insert(o, payload).is_none(), "{s:?}");
        } else {
            assert_eq!(
                *new_epoch.get_or_insert(e.clone()),
                e,
                "one new epoch: {s:?}"
            );
            assert!(new_acks.insert(o, payload).is_none(), "{s:?}");
        }
    }
    assert!(refused >= 1);
    let new_epoch = new_epoch.expect("acks after the restart");
    assert_ne!(new_epoch, old);
    let last_old = *old_acks.keys().last().unwrap();
    let last_new = *new_acks.keys().last().unwrap();
    // Sequential acks of one publisher within one epoch: consecutive.
    assert_eq!(
        old_acks.keys().copied().collect::<Vec<_>>(),
        (1..=last_old).collect::<Vec<_>>()
    );
    let first_new = *new_acks.keys().next().unwrap();
    assert_eq!(
        new_acks.keys().copied().collect::<Vec<_>>(),
        (first_new..=last_new).collect::<Vec<_>>()
    );

    target.store(last_new, Ordering::SeqCst);
    let all: Vec<(String, Vec<Ev>)> = readers
        .iter_mut()
        .map(|r| (r.name.clone(), r.finish().1))
        .collect();
    // For failure messages: where each subscriber's stream turned, and
    // what the publisher saw around the kill.
    let summary = format!(
        "subscribers:\n{}publisher (n, sent phase, reply phase, reply) around the kill:\n{}\n{}",
        all.iter()
            .map(|(name, ev)| format!("  {name}: {}\n", turn(ev)))
            .collect::<String>(),
        log.iter()
            .filter(|s| s.sent_phase > 0 || s.reply_phase > 0 || s.n + 5 >= last_old)
            .take(12)
            .map(|s| format!("  {} {} {} {}\n", s.n, s.sent_phase, s.reply_phase, s.reply))
            .collect::<String>(),
        logs(&nodes)
    );
    for (name, events) in all {
        assert!(
            has_offset(&events, last_new, true),
            "{name}: offset {last_new} of the new epoch never arrived: {events:?}"
        );
        let reset_at = events
            .iter()
            .position(|e| matches!(e, Ev::Reset(..)))
            .unwrap();
        let Ev::Reset(e, o) = &events[reset_at] else {
            unreachable!()
        };
        assert_eq!(*e, new_epoch, "{name}: the reset names the new epoch");
        let before = &events[..reset_at];
        let after = &events[reset_at + 1..];
        assert!(
            !after.iter().any(|e| matches!(e, Ev::Reset(..))),
            "{name}: one reset: {events:?}"
        );
        // Before: 1..=K consecutive, K covering every acked publication.
        let k = before.len() as u64;
        assert_eq!(offsets(before), (1..=k).collect::<Vec<_>>(), "{name}");
        // Without persistence, the one publication acked in the instant
        // Redis died (it writes the script's reply before the pub/sub
        // messages) may die with it; the reset is what says so. Anything
        // acked earlier was delivered.
        let slack = if quiesce { 0 } else { 1 };
        assert!(
            k + slack >= last_old,
            "{name}: acked up to {last_old} before the kill, got {k}\n{summary}"
        );
        for ev in before {
            if let Ev::Msg(off, p) = ev {
                if let Some(want) = old_acks.get(off) {
                    assert_eq!(p, want, "{name}: offset {off}");
                }
            }
        }
        // After: O+1.. consecutive, each the acked publication.
        let after: Vec<&Ev> = after
            .iter()
            .take_while(|e| !matches!(e, Ev::Msg(o, _) if *o > last_new))
            .collect();
        let got: Vec<u64> = after
            .iter()
            .filter_map(|e| match e {
                Ev::Msg(o, _) => Some(*o),
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            (o + 1..=last_new).collect::<Vec<_>>(),
            "{name}: after the reset at {o}\n{summary}"
        );
        for ev in after {
            if let Ev::Msg(off, p) = ev {
                assert_eq!(Some(p), new_acks.get(off), "{name}: offset {off}");
            }
        }
    }

    for (i, n) in nodes.iter().enumerate() {
        let m = metrics(n);
        assert!(
            m["ringcast_broker_unrecoverable_total"] >= 1.0,
            "node {i}: {m:?}"
        );
        assert!(
            m["ringcast_broker_reconnects_total"] >= 4.0,
            "node {i}: {m:?}"
        );
    }
    assert!(
        metric(&nodes[0], "ringcast_broker_publish_refused_total") >= refused as f64,
        "the publisher's node counts its refusals"
    );

    // A client that was away across the restart is not recovered.
    let mut late = on_core(&nodes[2], 0);
    assert_eq!(
        subscribe_since(&mut late, ch, 3, &old, last_old),
        json!({"type":"ack","id":3,"epoch":new_epoch,"offset":last_new,"recovered":false})
    );
}

// ----- 5. bad --broker URLs ----------------------------------------------------

/// A `--broker` URL that cannot name a Redis stops the binary at startup,
/// with a non-zero exit and a message naming `--broker`.
#[test]
fn broker_url_errors() {
    for url in [
        "http://x",
        "redis://h:0",
        "redis://",
        "redis://h:port",
        "redis://a:1,b:2",
        "redis-cluster://a:1/3",
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["--listen", "127.0.0.1:0", "--cores", "1", "--broker", url])
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
                panic!("--broker {url}: the server started");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "--broker {url}: {status}\n{err}");
        assert!(
            err.contains("--broker"),
            "--broker {url}: the message does not name the flag:\n{err}"
        );
    }
}

// ----- 6. a blip of the pub/sub connections ------------------------------------

/// `CLIENT KILL TYPE pubsub` drops every node's subscriber connection,
/// several times, while a publisher keeps publishing (Redis keeps the
/// streams). The nodes reconnect and read what they missed back from the
/// stream: every subscriber gets every publication exactly once, in order,
/// and no `reset`; `ringcast_broker_recovered_after_blip_total` counts the
/// publications read back.
#[test]
fn pubsub_blip_loses_nothing() {
    let redis = Redis::start();
    let nodes = [node(&redis, 2), node(&redis, 1)];
    let ch = "cluster:blip";
    let placement = [(0, 0), (0, 1), (1, 0)];
    let target = Arc::new(AtomicU64::new(0));
    let mut epoch = None;
    let mut readers: Vec<Reader> = placement
        .iter()
        .map(|&(n, core)| {
            let mut ws = on_core(&nodes[n], core);
            let (e, offset) = subscribe(&mut ws, ch, 1);
            assert_eq!(offset, 0);
            assert_eq!(*epoch.get_or_insert(e.clone()), e);
            let target = target.clone();
            Reader::start(
                format!("node {n} core {core}"),
                ws,
                ch,
                COLLECT,
                move |ev| {
                    let t = target.load(Ordering::SeqCst);
                    t > 0 && has_offset(ev, t, false)
                },
            )
        })
        .collect();
    let epoch = epoch.unwrap();
    let mut publisher = SteadyWs::start(
        on_core(&nodes[0], 1),
        ch,
        Duration::from_millis(2),
        Arc::new(AtomicU8::new(0)),
    );
    let context = || format!("{} publishes\n{}", publisher.log().len(), logs(&nodes));
    let blips = || -> f64 {
        nodes
            .iter()
            .map(|n| metric(n, "ringcast_broker_recovered_after_blip_total"))
            .sum()
    };
    eventually(
        "20 acks",
        COLLECT,
        || publisher.acked().len() >= 20,
        context,
    );
    // Kill the pub/sub connections until some node had to read back what
    // it missed (bounded: each kill while publishing makes that likely).
    let mut kills = 0;
    while blips() < 1.0 {
        assert!(
            kills < 20,
            "no publication read back after {kills} kills\n{}",
            context()
        );
        // Both nodes' subscriber connections are back (subscribed again).
        eventually(
            "both subscriber connections subscribed",
            RECONNECT,
            || pubsub_clients(&redis) >= nodes.len(),
            context,
        );
        let killed = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert!(
            killed.as_int().is_some_and(|k| k >= nodes.len() as i64),
            "CLIENT KILL: {killed:?}"
        );
        kills += 1;
        let at = publisher.log().len();
        eventually(
            "10 more publishes",
            COLLECT,
            || publisher.log().len() >= at + 10,
            context,
        );
    }
    eventually(
        "both subscriber connections back",
        RECONNECT,
        || pubsub_clients(&redis) >= nodes.len(),
        context,
    );
    let at = publisher.log().len();
    eventually(
        "20 more publishes",
        COLLECT,
        || publisher.log().len() >= at + 20,
        context,
    );
    let log = publisher.finish();

    // The command connections were never touched: every publish acked.
    let mut at: BTreeMap<u64, Value> = BTreeMap::new();
    for s in &log {
        let (e, o) = check_offset_ack(&s.reply, Some(s.n + 1));
        assert_eq!(e, epoch);
        at.insert(o, json!({ "n": s.n }));
    }
    let n = log.len() as u64;
    assert_eq!(
        at.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    target.store(n, Ordering::SeqCst);
    let want: Vec<Ev> = at.into_iter().map(|(o, p)| Ev::Msg(o, p)).collect();
    for r in &mut readers {
        let (_, got) = r.finish();
        assert!(
            got == want,
            "{} after {kills} kills: offsets {:?}",
            r.name,
            got.iter()
                .map(|e| match e {
                    Ev::Msg(o, _) => format!("{o}"),
                    Ev::Reset(e, o) => format!("reset({e},{o})"),
                })
                .collect::<Vec<_>>()
        );
    }
    for (i, node) in nodes.iter().enumerate() {
        let m = metrics(node);
        assert_eq!(m["ringcast_broker_unrecoverable_total"], 0.0, "node {i}");
        assert_eq!(m["ringcast_broker_publish_refused_total"], 0.0, "node {i}");
        assert_eq!(m["ringcast_broker_connected"], 1.0, "node {i}");
        // The first connections, and at least one more subscriber one per kill.
        assert!(
            m["ringcast_broker_reconnects_total"] >= 2.0 + kills as f64,
            "node {i}: {m:?}"
        );
    }
    assert!(blips() >= 1.0);
}

/// How many pub/sub connections Redis has (`CLIENT LIST TYPE pubsub`).
fn pubsub_clients(redis: &Redis) -> usize {
    match redis.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]) {
        RespValue::Bulk(b) => String::from_utf8_lossy(&b)
            .lines()
            .filter(|l| l.contains("sub=") && !l.contains(" sub=0 "))
            .count(),
        other => panic!("CLIENT LIST: {other:?}"),
    }
}

// ----- 7. Redis not there at startup --------------------------------------------

/// A node started before its Redis: it runs, `/readyz` says 503,
/// publishes are refused (`/ws` and the API), and once Redis comes up on
/// that port the node connects by itself and serves.
#[test]
fn node_started_before_redis() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let server = Server::spawn(&["--cores", "2", "--broker", &url, "--api-key", KEY]);
    wait_ready(&server, 503);
    assert_eq!(metric(&server, "ringcast_broker_connected"), 0.0);
    let mut ws = any_core(&server);
    send_json(
        &mut ws,
        json!({"type":"publish","channel":"cluster:late","payload":1,"id":5}),
    );
    assert_ws_error(
        &next_json(&mut ws, PATIENCE, "the refusal"),
        5,
        "unavailable",
    );
    let (status, v) = api_publish(&server, &json!({"channel":"cluster:late","payload":2}));
    assert_eq!(status, 503, "{v}");
    assert_api_error(&v, "unavailable");

    let redis = Redis::start_on(port, &[]);
    wait_ready(&server, 200);
    assert_eq!(metric(&server, "ringcast_broker_connected"), 1.0);
    let mut sub = any_core(&server);
    let (epoch, offset) = subscribe(&mut sub, "cluster:late", 1);
    assert_eq!(offset, 0, "nothing refused was stored");
    assert_eq!(
        publish(&mut ws, "cluster:late", json!(3), 6),
        (epoch.clone(), 1)
    );
    assert_eq!(
        recv_messages(&mut sub, "cluster:late", 1),
        vec![(1, json!(3))]
    );
    assert!(metric(&server, "ringcast_broker_publish_refused_total") >= 2.0);
    drop(redis);
}

// ----- 8. every publish answered -------------------------------------------------

/// One publisher alone on a node, one publish at a time (nothing else
/// reaches the node's broker thread meanwhile): every publish over `/ws`
/// and every API publish is answered, offsets consecutive.
#[test]
fn every_publish_is_answered() {
    let redis = Redis::start();
    let server = node(&redis, 1);
    let ch = "cluster:lone";
    let mut ws = any_core(&server);
    short_reads(&ws);
    let mut epoch = None;
    for n in 0..3000u64 {
        send_json(
            &mut ws,
            json!({"type":"publish","channel":ch,"payload":n,"id":n}),
        );
        let reply = next_json(&mut ws, PATIENCE, &format!("the reply to publish {n}"));
        let (e, offset) = check_offset_ack(&reply, Some(n));
        assert_eq!(*epoch.get_or_insert(e.clone()), e);
        assert_eq!(offset, n + 1);
    }
    let epoch = epoch.unwrap();
    for n in 3000..3500u64 {
        let (status, v) = api_publish(&server, &json!({"channel":ch,"payload":n}));
        assert_eq!(status, 200, "API publish {n}: {v}");
        assert_eq!(
            v,
            json!({"published":1,"results":[{"channel":ch,"offset":n + 1,"epoch":epoch}]})
        );
    }
}

// ----- 9. an idle node keeps its connections -------------------------------------

/// A node with no channel (nothing subscribed in Redis) keeps both its
/// Redis connections: its probes are answered, nothing is reconnected,
/// `/readyz` stays 200, over several probe periods (1 s each; a probe
/// unanswered for 3 s drops the connection).
#[test]
fn an_idle_node_keeps_its_redis_connections() {
    let redis = Redis::start();
    let server = node(&redis, 1);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        assert_eq!(readyz(&server), 200, "/readyz while idle\n{}", server.log());
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(&server, "ringcast_broker_reconnects_total"),
        2.0,
        "the first two connections only\n{}",
        server.log()
    );
    assert!(!server.log().contains("reconnecting"), "{}", server.log());
}
