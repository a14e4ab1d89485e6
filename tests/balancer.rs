//! ringcast behind real infrastructure: nginx running `deploy/nginx.conf`
//! in front of three ringcast processes (spread, a SIGKILLed node, health
//! checks through the proxy), and the Redis helpers the broker tests build
//! on (a single server killed and restarted on its port, a 3-master
//! cluster). Every service is a real process on a free loopback port
//! (`tests/common/services.rs`); `.ci/run` installs redis-server,
//! redis-tools and nginx.

mod common;

use std::collections::BTreeMap;

use common::services::{render_nginx_conf, Nginx, Redis, RedisCluster, RespValue, NGINX_CONF};
use common::{
    client, handshakes, http_body, http_exchange, read_message, scrape, ws_client, Server, Ws,
};
use tungstenite::Message;

/// Sends `text` on an `/echo` connection and reads it back; `false` when
/// the connection is gone (its node was killed).
fn echo_ok(ws: &mut Ws, text: &str) -> bool {
    if ws.send(Message::text(text)).is_err() {
        return false;
    }
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                assert_eq!(t.as_str(), text, "echo through nginx");
                return true;
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) => return false,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                continue
            }
            Err(_) => return false,
        }
    }
}

/// Upgrades completed on each node, by `ringcast_handshakes_total`.
fn upgraded(nodes: &[Server]) -> Vec<u64> {
    nodes
        .iter()
        .map(|n| handshakes(&scrape(n), "upgraded") as u64)
        .collect()
}

/// A plain HTTP GET through nginx (HTTP/1.1, so `Connection: close` to get
/// the end of the response).
fn get(nginx: &Nginx, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: ringcast.test\r\nConnection: close\r\n\r\n");
    http_exchange(nginx.addr(), req.as_bytes())
}

#[test]
fn nginx_spreads_connections_and_routes_around_a_killed_node() {
    let mut nodes: Vec<Server> = (0..3).map(|_| Server::spawn(&["--cores", "1"])).collect();
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let nginx = Nginx::start(&addrs);

    // 30 clients through nginx, all open at once, each echoing.
    let mut clients: Vec<Ws> = (0..30)
        .map(|i| {
            let mut ws = client(&nginx.url("/echo"));
            assert!(echo_ok(&mut ws, &format!("hello {i}")), "{}", nginx.log());
            ws
        })
        .collect();
    let before = upgraded(&nodes);
    assert_eq!(before.iter().sum::<u64>(), 30, "per node: {before:?}");
    let used = before.iter().filter(|&&n| n > 0).count();
    assert!(
        used > 1,
        "least_conn put every connection on one node: {before:?}"
    );

    // SIGKILL the node with the most connections: its clients lose theirs,
    // everyone else's keep echoing.
    let victim = (0..3).max_by_key(|&i| before[i]).unwrap();
    nodes[victim].signal(libc::SIGKILL);
    let status = nodes[victim].wait();
    assert!(!status.success(), "{status}");
    let dead = nodes.remove(victim);
    let survivors_before: Vec<u64> = (0..3).filter(|&i| i != victim).map(|i| before[i]).collect();
    let mut alive = 0;
    for (i, ws) in clients.iter_mut().enumerate() {
        alive += u64::from(echo_ok(ws, &format!("still there {i}")));
    }
    assert_eq!(
        alive,
        30 - before[victim],
        "the clients of the two live nodes keep their connections (per node before: {before:?})"
    );
    drop(dead);

    // New connections through nginx: every one succeeds, on the two that are
    // left (nginx retries a refused connect on the next server).
    let mut fresh: Vec<Ws> = (0..30)
        .map(|i| {
            let mut ws = client(&nginx.url("/echo"));
            assert!(echo_ok(&mut ws, &format!("after {i}")), "{}", nginx.log());
            ws
        })
        .collect();
    // /ws through nginx: the welcome arrives first.
    let (ws, welcome) = ws_client(&nginx.url("/ws"));
    assert_eq!(welcome["type"], "welcome");
    let after = upgraded(&nodes);
    let new: u64 = after
        .iter()
        .zip(&survivors_before)
        .map(|(a, b)| a - b)
        .sum();
    assert_eq!(
        new, 31,
        "every new upgrade on a live node: {after:?} after {survivors_before:?}"
    );
    for (i, ws) in fresh.iter_mut().enumerate() {
        assert!(echo_ok(ws, &format!("again {i}")), "{}", nginx.log());
    }

    // Health checks through the proxy: 200 every time, whichever live node
    // nginx picks.
    for _ in 0..6 {
        let (status, resp) = get(&nginx, "/readyz");
        assert_eq!(status, 200, "{resp}\n{}", nginx.log());
        assert_eq!(http_body(&resp), "ready\n");
    }
    drop(ws);
}

#[test]
fn the_committed_nginx_conf_is_rewritten_only_where_the_tests_need() {
    let template = std::fs::read_to_string(NGINX_CONF).unwrap();
    let upstreams: Vec<std::net::SocketAddr> = vec![
        "127.0.0.1:1111".parse().unwrap(),
        "127.0.0.1:2222".parse().unwrap(),
    ];
    let conf = render_nginx_conf(
        &template,
        4444,
        &upstreams,
        std::path::Path::new("/scratch"),
    );
    let lines: Vec<&str> = conf.lines().map(str::trim).collect();
    for want in [
        "listen 127.0.0.1:4444;",
        "server 127.0.0.1:1111 max_fails=2 fail_timeout=5s;",
        "server 127.0.0.1:2222 max_fails=2 fail_timeout=5s;",
        "pid /scratch/nginx.pid;",
        "proxy_temp_path /scratch/proxy_temp;",
        "least_conn;",
        "proxy_next_upstream error timeout;",
    ] {
        assert!(lines.contains(&want), "{want} in\n{conf}");
    }
    let directives: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with('#'))
        .collect();
    for gone in [":900", "/var/log/", "/run/", "listen 8080"] {
        assert!(
            !directives.iter().any(|l| l.contains(gone)),
            "{gone} rewritten:\n{conf}"
        );
    }
    // Everything else is the committed file, line for line.
    let kept = template
        .lines()
        .filter(|l| conf.lines().any(|c| c == *l))
        .count();
    assert_eq!(kept + 7, template.lines().count(), "{conf}");
}

#[test]
fn a_plain_http_request_passes_through_nginx() {
    let node = Server::spawn(&["--cores", "1"]);
    let nginx = Nginx::start(&[node.addr]);
    let (status, resp) = get(&nginx, "/healthz");
    assert_eq!(status, 200, "{resp}");
    assert_eq!(http_body(&resp), "ok\n");
    let (status, _) = get(&nginx, "/no-such-page");
    assert_eq!(status, 404);
    // A binary message through the proxy comes back as binary.
    let mut ws = client(&nginx.url("/echo"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(read_message(&mut ws), Message::binary(vec![0u8, 1, 2, 255]));
}

#[test]
fn redis_kill9_and_restart_on_the_same_port_loses_the_data() {
    let mut redis = Redis::start();
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert!(redis.cmd(&["SET", "k", "v"]).is_ok());
    assert_eq!(redis.cmd(&["GET", "k"]), RespValue::Bulk(b"v".to_vec()));
    // The other reply types.
    assert_eq!(redis.cmd(&["GET", "missing"]), RespValue::Nil);
    assert_eq!(redis.cmd(&["INCR", "n"]), RespValue::Integer(1));
    let err = redis.cmd(&["INCR", "k"]);
    assert!(
        matches!(&err, RespValue::Error(e) if e.starts_with("ERR")),
        "{err:?}"
    );
    assert_eq!(redis.cmd(&["RPUSH", "l", "a", "", "c"]).as_int(), Some(3));
    assert_eq!(
        redis.cmd(&["LRANGE", "l", "0", "-1"]),
        RespValue::Array(vec![
            RespValue::Bulk(b"a".to_vec()),
            RespValue::Bulk(Vec::new()),
            RespValue::Bulk(b"c".to_vec()),
        ])
    );

    redis.kill9();
    assert!(!redis.is_running());
    assert!(
        redis.try_cmd(&["PING"]).is_err(),
        "nothing answers after SIGKILL"
    );

    redis.restart();
    assert!(redis.is_running());
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cmd(&["PING"]), RespValue::Simple("PONG".into()));
    // --save "" --appendonly no: nothing survived.
    assert_eq!(redis.cmd(&["GET", "k"]), RespValue::Nil);
    assert_eq!(redis.cmd(&["DBSIZE"]), RespValue::Integer(0));
}

#[test]
#[should_panic(expected = "Address already in use")]
fn a_service_that_cannot_start_fails_the_test_with_its_log() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    Redis::start_on(port, &[]);
}

/// One line of CLUSTER NODES: (port, flags, slots it serves).
fn cluster_nodes(reply: &RespValue) -> Vec<(u16, String, u64)> {
    reply
        .text()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // id ip:port@cport[,hostname] flags master ping pong epoch link slot...
            let port = f[1]
                .split(['@', ','])
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("address in {line:?}"));
            let slots = f[8..]
                .iter()
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
                    None => 1,
                })
                .sum();
            (port, f[2].to_owned(), slots)
        })
        .collect()
}

#[test]
fn redis_cluster_of_three_masters_serves_every_slot() {
    let cluster = RedisCluster::start(3);
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    assert_eq!(
        cluster.url(),
        format!("redis-cluster://{}", hosts.join(","))
    );

    for i in 0..3 {
        let info = cluster.cmd_on(i, &["CLUSTER", "INFO"]);
        let info = info.text();
        for want in [
            "cluster_state:ok",
            "cluster_slots_assigned:16384",
            "cluster_known_nodes:3",
            "cluster_size:3",
        ] {
            assert!(
                info.lines().any(|l| l.trim() == want),
                "node {i}: {want} in\n{info}"
            );
        }
    }

    // CLUSTER NODES: three masters, all 16384 slots between them.
    let nodes = cluster_nodes(&cluster.cmd_on(0, &["CLUSTER", "NODES"]));
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(
        nodes
            .iter()
            .all(|(_, flags, _)| flags.split(',').any(|f| f == "master")),
        "{nodes:?}"
    );
    assert_eq!(nodes.iter().map(|n| n.2).sum::<u64>(), 16384, "{nodes:?}");
    let mut found: Vec<u16> = nodes.iter().map(|n| n.0).collect();
    found.sort_unstable();
    let mut want = ports.clone();
    want.sort_unstable();
    assert_eq!(found, want);

    // CLUSTER SHARDS (nested arrays): three shards, slots as start/end pairs.
    let shards = cluster.cmd_on(1, &["CLUSTER", "SHARDS"]);
    let shards = shards.as_array().unwrap_or_else(|| panic!("{shards:?}"));
    assert_eq!(shards.len(), 3, "{shards:?}");
    let mut slots = 0;
    for shard in shards {
        let fields = shard.as_array().unwrap();
        let at = fields
            .iter()
            .position(|f| f.as_str() == Some("slots"))
            .unwrap();
        let ranges = fields[at + 1].as_array().unwrap();
        for pair in ranges.chunks(2) {
            slots += pair[1].as_int().unwrap() - pair[0].as_int().unwrap() + 1;
        }
    }
    assert_eq!(slots, 16384);

    // Keys on different slots, at least one on each node: SET on the owner
    // works, on another node it is redirected with MOVED.
    let ranges = cluster_slots(&cluster.cmd_on(0, &["CLUSTER", "SLOTS"]));
    let owner_of = |slot: i64| -> usize {
        let port = ranges
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|r| r.2)
            .unwrap_or_else(|| panic!("slot {slot} unassigned"));
        ports.iter().position(|&p| p == port).unwrap()
    };
    let mut per_node: BTreeMap<usize, (String, i64)> = BTreeMap::new();
    for n in 0..1000 {
        let key = format!("key:{n}");
        let slot = cluster
            .cmd_on(2, &["CLUSTER", "KEYSLOT", &key])
            .as_int()
            .unwrap();
        per_node.entry(owner_of(slot)).or_insert((key, slot));
        if per_node.len() == 3 {
            break;
        }
    }
    assert_eq!(per_node.len(), 3, "keys on every node: {per_node:?}");
    for (&owner, (key, slot)) in &per_node {
        assert!(cluster.cmd_on(owner, &["SET", key, "here"]).is_ok());
        assert_eq!(cluster.cmd_on(owner, &["GET", key]).text(), "here");
        let other = (owner + 1) % 3;
        let moved = cluster.cmd_on(other, &["SET", key, "there"]);
        let want = format!("MOVED {slot} 127.0.0.1:{}", ports[owner]);
        assert_eq!(moved, RespValue::Error(want));
    }
}

/// CLUSTER SLOTS: (first slot, last slot, master's port) per range.
fn cluster_slots(reply: &RespValue) -> Vec<(i64, i64, u16)> {
    reply
        .as_array()
        .unwrap_or_else(|| panic!("{reply:?}"))
        .iter()
        .map(|r| {
            let r = r.as_array().unwrap();
            let master = r[2].as_array().unwrap();
            (
                r[0].as_int().unwrap(),
                r[1].as_int().unwrap(),
                master[1].as_int().unwrap() as u16,
            )
        })
        .collect()
}
