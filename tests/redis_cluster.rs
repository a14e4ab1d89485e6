//! The Redis engine on a Redis Cluster (`--broker redis-cluster://...`),
//! on a Redis with persistence, and presence across nodes: real
//! `redis-server`s (a 3-master cluster made by `redis-cli --cluster
//! create`), real `ringcast` processes.
//!
//! Checked: one order per channel with channels spread over every master;
//! a live reshard of every slot of the master holding a channel, while it
//! is published to, loses and repeats nothing; a Redis with `appendfsync
//! always` SIGKILLed and restarted loses nothing that was acked and resets
//! nobody; presence and join/leave span nodes, and a node that dies drops
//! out of presence by expiry, with one `leave` per client. Every wait is
//! bounded; nothing asserts speed.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::services::{Redis, RedisCluster};
use common::{http_exchange, recv_json, send_json, ws_client, Server, Ws};
use serde_json::{json, Value};

const KEY: &str = "redis-cluster-key";

fn node(url: &str, cores: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--cores", cores, "--broker", url, "--api-key", KEY];
    args.extend_from_slice(extra);
    let server = Server::spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = http_exchange(
            server.addr,
            b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        if status == 200 {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "node not ready: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The next JSON text message, or `None` after `wait` of silence.
fn next_json(ws: &mut Ws, wait: Duration) -> Option<Value> {
    set_timeout(ws, wait);
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                return Some(serde_json::from_str(&t).expect("JSON"))
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                continue
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn set_timeout(ws: &Ws, wait: Duration) {
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(wait)).expect("timeout");
    }
}

fn subscribe(ws: &mut Ws, channel: &str, extra: Value) -> Value {
    let mut m = json!({"type":"subscribe","channel":channel,"id":1});
    if let (Some(m), Some(e)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    send_json(ws, m);
    loop {
        let v = recv_json(ws);
        if v["type"] == "ack" && v["id"] == 1 {
            return v;
        }
        assert_ne!(v["type"], "error", "{v}");
    }
}

/// Reads `channel`'s messages until `n` arrived or `quiet` passes with
/// nothing: `(offset, payload)` in arrival order, and any `reset`s.
fn collect(
    ws: &mut Ws,
    channel: &str,
    n: usize,
    quiet: Duration,
) -> (Vec<(u64, Value)>, Vec<Value>) {
    let mut got = Vec::new();
    let mut resets = Vec::new();
    while got.len() < n {
        let Some(v) = next_json(ws, quiet) else {
            break;
        };
        match v["type"].as_str() {
            Some("message") if v["channel"] == channel => {
                got.push((v["offset"].as_u64().expect("offset"), v["payload"].clone()))
            }
            Some("reset") => resets.push(v),
            _ => {}
        }
    }
    (got, resets)
}

/// Every subscriber received offsets `1..=last` of `channel`, once each,
/// in order, and no `reset`.
fn every_one_received(subs: &mut [Ws], channel: &str, last: u64) {
    for (k, ws) in subs.iter_mut().enumerate() {
        let (got, resets) = collect(ws, channel, last as usize, Duration::from_secs(20));
        assert!(resets.is_empty(), "subscriber {k}: {resets:?}");
        let offsets: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(offsets, (1..=last).collect::<Vec<_>>(), "subscriber {k}");
    }
}

/// Slot → master port, from `CLUSTER SLOTS`.
fn slot_owners(cluster: &RedisCluster) -> Vec<(i64, i64, i64)> {
    let r = cluster.cmd_on(0, &["CLUSTER", "SLOTS"]);
    r.as_array()
        .expect("CLUSTER SLOTS")
        .iter()
        .map(|range| {
            let f = range.as_array().expect("range");
            let master = f[2].as_array().expect("master");
            (
                f[0].as_int().expect("lo"),
                f[1].as_int().expect("hi"),
                master[1].as_int().expect("port"),
            )
        })
        .collect()
}

fn owner(cluster: &RedisCluster, channel: &str) -> i64 {
    let slot = cluster
        .cmd_on(0, &["CLUSTER", "KEYSLOT", &format!("rc:{{{channel}}}:m")])
        .as_int()
        .expect("slot");
    slot_owners(cluster)
        .into_iter()
        .find(|&(lo, hi, _)| lo <= slot && slot <= hi)
        .map(|(_, _, port)| port)
        .expect("an owner")
}

/// Two channels per master.
fn spread_channels(cluster: &RedisCluster) -> Vec<(String, i64)> {
    let mut per: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for i in 0..200 {
        let ch = format!("spread:{i}");
        let port = owner(cluster, &ch);
        let list = per.entry(port).or_default();
        if list.len() < 2 {
            list.push(ch);
        }
    }
    assert_eq!(per.len(), 3, "channels on every master: {per:?}");
    per.into_iter()
        .flat_map(|(port, chs)| chs.into_iter().map(move |c| (c, port)))
        .collect()
}

fn api_publish(server: &Server, channel: &str, payload: Value) -> u16 {
    let body = json!({"channel":channel,"payload":payload}).to_string();
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http_exchange(server.addr, req.as_bytes()).0
}

#[test]
fn cluster_of_three_masters_one_order_per_channel() {
    let cluster = RedisCluster::start(3);
    let url = cluster.url();
    let nodes = [
        node(&url, "2", &[]),
        node(&url, "1", &[]),
        node(&url, "1", &[]),
    ];
    let channels = spread_channels(&cluster);
    // A subscriber of every channel on every node.
    let mut subs: Vec<(String, Ws)> = Vec::new();
    for (ch, _) in &channels {
        for n in &nodes {
            let (mut ws, _) = ws_client(&n.url("/ws"));
            let ack = subscribe(&mut ws, ch, json!({}));
            assert_eq!(ack["offset"], 0, "{ack}");
            subs.push((ch.clone(), ws));
        }
    }
    // Publishers on nodes 0 and 1 over /ws, the API on node 2.
    let per = 40;
    let mut pubs: Vec<Ws> = nodes[..2]
        .iter()
        .map(|n| ws_client(&n.url("/ws")).0)
        .collect();
    for (ch, _) in &channels {
        for i in 0..per {
            for (p, ws) in pubs.iter_mut().enumerate() {
                let id = (i * 2 + p) as u64 + 10;
                send_json(
                    ws,
                    json!({"type":"publish","channel":ch,"payload":{"p":p,"i":i},"id":id}),
                );
            }
            assert_eq!(api_publish(&nodes[2], ch, json!({"p":2,"i":i})), 200);
        }
    }
    // Every /ws publish is acked with a distinct offset.
    for (p, ws) in pubs.iter_mut().enumerate() {
        let mut offsets = HashSet::new();
        for _ in 0..per * channels.len() {
            let v = recv_json(ws);
            assert_eq!(v["type"], "ack", "publisher {p}: {v}");
            let fresh = offsets.insert((v["epoch"].to_string(), v["offset"].as_u64()));
            assert!(fresh, "publisher {p}: offset acked twice: {v}");
        }
    }
    let total = per * 3;
    let mut seen: BTreeMap<String, Vec<(u64, Value)>> = BTreeMap::new();
    for (ch, ws) in &mut subs {
        let (got, resets) = collect(ws, ch, total, Duration::from_secs(20));
        assert!(resets.is_empty(), "{ch}: {resets:?}");
        let offsets: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(offsets, (1..=total as u64).collect::<Vec<_>>(), "{ch}");
        match seen.get(ch.as_str()) {
            Some(first) => assert_eq!(first, &got, "{ch}: one order for every subscriber"),
            None => {
                seen.insert(ch.clone(), got);
            }
        }
    }
    // The channels' keys live on every master.
    for i in 0..3 {
        let keys = cluster.cmd_on(i, &["DBSIZE"]).as_int().expect("dbsize");
        assert!(keys > 0, "master {i} holds no channel");
    }
    for n in &nodes {
        let log = n.log();
        assert!(log.contains("Redis Cluster with 3 masters"), "{log}");
    }
}

/// The node ids of the masters, by port (`CLUSTER NODES`).
fn master_ids(cluster: &RedisCluster) -> BTreeMap<i64, String> {
    let text = cluster.cmd_on(0, &["CLUSTER", "NODES"]);
    text.text()
        .lines()
        .filter(|l| l.contains("master"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("port");
            (port, f[0].to_owned())
        })
        .collect()
}

#[test]
fn a_live_reshard_loses_and_repeats_nothing() {
    let cluster = RedisCluster::start(3);
    let url = cluster.url();
    let nodes = [node(&url, "1", &[]), node(&url, "1", &[])];
    let ch = "reshard:live";
    let from_port = owner(&cluster, ch);
    let ids = master_ids(&cluster);
    let to_port = *ids
        .keys()
        .find(|&&p| p != from_port)
        .expect("another master");
    let mut subs: Vec<Ws> = nodes
        .iter()
        .map(|n| {
            let (mut ws, _) = ws_client(&n.url("/ws"));
            subscribe(&mut ws, ch, json!({}));
            ws
        })
        .collect();
    // A publisher over /ws, one publication at a time, counting acks.
    let done = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let refused = Arc::new(Mutex::new(0u64));
    let publisher = {
        let (done, acked, refused) = (done.clone(), acked.clone(), refused.clone());
        let url = nodes[0].url("/ws");
        std::thread::spawn(move || {
            let (mut ws, _) = ws_client(&url);
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) && i < 5000 {
                i += 1;
                send_json(
                    &mut ws,
                    json!({"type":"publish","channel":ch,"payload":i,"id":i}),
                );
                let v = recv_json(&mut ws);
                match v["type"].as_str() {
                    Some("ack") => acked
                        .lock()
                        .unwrap()
                        .push(v["offset"].as_u64().expect("offset")),
                    Some("error") => {
                        assert_eq!(v["code"], "unavailable", "{v}");
                        *refused.lock().unwrap() += 1;
                    }
                    _ => panic!("{v}"),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let cli = Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{from_port}"),
            "--cluster-from",
            &ids[&from_port],
            "--cluster-to",
            &ids[&to_port],
            "--cluster-slots",
            "16384",
            "--cluster-yes",
        ])
        .output()
        .expect("redis-cli");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(owner(&cluster, ch), to_port, "the channel's slot moved");
    // Publishing goes on through the new owner, then stops.
    let moved_at = acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < moved_at + 50 {
        assert!(Instant::now() < deadline, "no acks after the reshard");
        std::thread::sleep(Duration::from_millis(20));
    }
    done.store(true, Ordering::Relaxed);
    publisher.join().expect("publisher");
    let acked = acked.lock().unwrap().clone();
    let last = *acked.last().expect("acks");
    assert_eq!(
        acked,
        (1..=last).collect::<Vec<_>>(),
        "acked offsets are consecutive (refused publications took none)"
    );
    every_one_received(&mut subs, ch, last);
    let refused = *refused.lock().unwrap();
    println!("reshard: {last} acked, {refused} refused during the move");
}

fn presence_clients(ws: &mut Ws, channel: &str) -> (u64, Vec<String>) {
    send_json(ws, json!({"type":"presence","channel":channel,"id":77}));
    loop {
        let v = recv_json(ws);
        if v["type"] == "ack" && v["id"] == 77 {
            let mut clients: Vec<String> = v["clients"]
                .as_array()
                .expect("clients")
                .iter()
                .map(|c| c["client"].as_str().expect("client").to_owned())
                .collect();
            clients.sort();
            return (v["count"].as_u64().expect("count"), clients);
        }
    }
}

#[test]
fn presence_spans_nodes_and_a_killed_node_drops_out() {
    let redis = Redis::start();
    let url = redis.url();
    let extra = ["--presence", "--join-leave"];
    let a_node = node(&url, "1", &extra);
    let b_node = node(&url, "2", &extra);
    let ch = "room:presence";
    let (mut a, wa) = ws_client(&a_node.url("/ws"));
    let ack = subscribe(&mut a, ch, json!({"presence":true,"join_leave":true}));
    assert_eq!(ack["presence"]["count"], 1, "{ack}");
    let mut others = Vec::new();
    let mut ids = vec![wa["client"].as_str().expect("id").to_owned()];
    for _ in 0..2 {
        let (mut ws, w) = ws_client(&b_node.url("/ws"));
        subscribe(&mut ws, ch, json!({"presence":true,"join_leave":true}));
        let id = w["client"].as_str().expect("id").to_owned();
        // A, on the other node, sees the join.
        loop {
            let v = next_json(&mut a, Duration::from_secs(20)).expect("a join");
            if v["type"] == "join" {
                assert_eq!(v["client"], id.as_str(), "{v}");
                break;
            }
        }
        ids.push(id);
        others.push(ws);
    }
    ids.sort();
    assert_eq!(presence_clients(&mut a, ch), (3, ids.clone()));
    assert_eq!(presence_clients(&mut others[0], ch), (3, ids.clone()));
    // The node holding two of them dies: they leave by expiry, each once.
    b_node.signal(libc::SIGKILL);
    let mut left = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while left.len() < 2 {
        assert!(Instant::now() < deadline, "leaves: {left:?}");
        if let Some(v) = next_json(&mut a, Duration::from_secs(5)) {
            if v["type"] == "leave" {
                left.push(v["client"].as_str().expect("client").to_owned());
            }
        }
    }
    left.sort();
    let mut gone: Vec<String> = ids
        .iter()
        .filter(|i| **i != wa["client"])
        .cloned()
        .collect();
    gone.sort();
    assert_eq!(left, gone, "one leave per client of the dead node");
    assert_eq!(presence_clients(&mut a, ch).0, 1);
    // Nothing more is announced (no leave twice).
    if let Some(v) = next_json(&mut a, Duration::from_millis(500)) {
        assert_ne!(v["type"], "leave", "{v}");
    }
    drop(others);
}

#[test]
fn a_persistent_redis_killed_and_restarted_loses_nothing_acked() {
    let port = common::services::free_port();
    let mut redis = Redis::start_on(port, &["--appendonly", "yes", "--appendfsync", "always"]);
    let url = redis.url();
    let nodes = [node(&url, "1", &[]), node(&url, "2", &[])];
    let ch = "durable:feed";
    let mut subs: Vec<Ws> = nodes
        .iter()
        .map(|n| {
            let (mut ws, _) = ws_client(&n.url("/ws"));
            subscribe(&mut ws, ch, json!({}));
            ws
        })
        .collect();
    let (mut publisher, _) = ws_client(&nodes[0].url("/ws"));
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut publish = |i: u64, acked: &mut Vec<u64>, refused: &mut u64| {
        send_json(
            &mut publisher,
            json!({"type":"publish","channel":ch,"payload":i,"id":i}),
        );
        let v = recv_json(&mut publisher);
        match v["type"].as_str() {
            Some("ack") => acked.push(v["offset"].as_u64().expect("offset")),
            Some("error") => {
                assert_eq!(v["code"], "unavailable", "{v}");
                *refused += 1;
            }
            _ => panic!("{v}"),
        }
    };
    for i in 1..=100 {
        publish(i, &mut acked, &mut refused);
    }
    redis.kill9();
    // While it is down: refused, never acked.
    for i in 101..=110 {
        publish(i, &mut acked, &mut refused);
    }
    assert!(
        refused >= 10,
        "publishes to a dead Redis are refused: {refused}"
    );
    redis.restart();
    // Back: acks resume (after the nodes reconnect), the stream continues.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 111;
    while acked.len() < 200 {
        assert!(Instant::now() < deadline, "no acks after the restart");
        publish(i, &mut acked, &mut refused);
        i += 1;
        if acked.len() < 101 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let last = *acked.last().expect("acks");
    assert_eq!(
        acked,
        (1..=last).collect::<Vec<_>>(),
        "one stream, kept across the restart"
    );
    every_one_received(&mut subs, ch, last);
}

fn readyz(server: &Server) -> u16 {
    http_exchange(
        server.addr,
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .0
}

/// A Redis that stops answering (SIGSTOP: its sockets stay open, TCP says
/// nothing) is caught by the probes: publishes are refused instead of
/// hanging, `/readyz` says 503; once it answers again, the stream goes on
/// and every subscriber has every offset, once, in order.
#[test]
fn a_wedged_redis_is_detected_by_the_probes() {
    let redis = Redis::start();
    let a = node(&redis.url(), "1", &[]);
    let ch = "wedged:feed";
    let (mut sub, _) = ws_client(&a.url("/ws"));
    subscribe(&mut sub, ch, json!({}));
    let (mut publisher, _) = ws_client(&a.url("/ws"));
    let mut publish = |i: u64| {
        send_json(
            &mut publisher,
            json!({"type":"publish","channel":ch,"payload":i,"id":i}),
        );
        loop {
            let v = recv_json(&mut publisher);
            if v["id"] == i {
                return v;
            }
        }
    };
    for i in 1..=20 {
        assert_eq!(publish(i)["type"], "ack");
    }
    redis.signal(libc::SIGSTOP);
    // The next publish is answered (not left hanging): refused once the
    // probe gives up on the connection.
    let v = publish(21);
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{v}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while readyz(&a) != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 200 with Redis wedged"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    redis.signal(libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 22;
    let last = loop {
        let v = publish(i);
        if v["type"] == "ack" {
            break v["offset"].as_u64().expect("offset");
        }
        assert!(Instant::now() < deadline, "no ack after SIGCONT: {v}");
        std::thread::sleep(Duration::from_millis(50));
        i += 1;
    };
    while readyz(&a) != 200 {
        assert!(Instant::now() < deadline, "/readyz stayed 503");
        std::thread::sleep(Duration::from_millis(100));
    }
    // What the wedged Redis had in its socket buffer may have been stored
    // (those publishes were refused as "may or may not have been stored"):
    // the stream has no gap either way, and the subscriber has all of it.
    every_one_received(std::slice::from_mut(&mut sub), ch, last);
}

/// `history_ttl` on the Redis engine: entries older than it are neither
/// served nor recovered.
#[test]
fn history_ttl_holds_on_the_redis_engine() {
    let redis = Redis::start();
    let a = node(&redis.url(), "1", &["--history-ttl", "1"]);
    let b = node(&redis.url(), "1", &["--history-ttl", "1"]);
    let ch = "ttl:feed";
    let (mut ws, _) = ws_client(&a.url("/ws"));
    let mut epoch = String::new();
    for i in 1..=3u64 {
        send_json(
            &mut ws,
            json!({"type":"publish","channel":ch,"payload":i,"id":i}),
        );
        let v = recv_json(&mut ws);
        assert_eq!(v["type"], "ack", "{v}");
        epoch = v["epoch"].as_str().expect("epoch").to_owned();
    }
    let history = |ws: &mut Ws| {
        send_json(
            ws,
            json!({"type":"history","channel":ch,"limit":10,"id":50}),
        );
        loop {
            let v = recv_json(ws);
            if v["id"] == 50 {
                return v["publications"].as_array().expect("publications").len();
            }
        }
    };
    let (mut other, _) = ws_client(&b.url("/ws"));
    assert_eq!(history(&mut other), 3, "fresh history on the other node");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(history(&mut other), 0, "past the TTL");
    let ack = subscribe(&mut other, ch, json!({"since":{"offset":1,"epoch":epoch}}));
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_eq!(ack["offset"], 3, "{ack}");
}
