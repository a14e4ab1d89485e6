//! The generator against real servers (ringcast embedded in this process):
//! the closed-loop `publish` scenario, connections spread over several
//! `--addr`s, and a broadcast through two nodes sharing a channel in Redis
//! (skipped when `redis-server` is not installed; `.ci/run` installs it).

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// An in-process ringcast on an ephemeral loopback port, one core.
fn server(extra: &[&str]) -> ringcast::Server {
    let mut args = vec!["ringcast", "--listen", "127.0.0.1:0", "--cores", "1"];
    args.extend_from_slice(extra);
    let cfg = ringcast::Config::from_args_and_file(args.clone())
        .unwrap_or_else(|e| panic!("config {args:?}: {e}"));
    ringcast::Server::start(&cfg).unwrap_or_else(|e| panic!("start {args:?}: {e}"))
}

/// Kills the child when dropped (a failed assertion leaves nothing running).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `ringcast-load ARGS` (bounded: killed after 60 s) and returns its
/// JSON line, with the whole output on failure.
fn load(args: &[String]) -> Value {
    let child = Command::new(env!("CARGO_BIN_EXE_ringcast-load"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcast-load");
    let mut child = Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "ringcast-load {args:?} ran over 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success(),
        "ringcast-load {args:?}: {status}\n{out}\n{err}"
    );
    let line = out
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line:\n{out}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn addr_args(addrs: &[SocketAddr]) -> Vec<String> {
    addrs
        .iter()
        .flat_map(|a| ["--addr".to_string(), a.to_string()])
        .collect()
}

fn upgraded(stats: &[ringcast::Stats]) -> u64 {
    stats.iter().map(|s| s.upgraded).sum()
}

#[test]
fn publish_counts_acks_and_their_latency() {
    let srv = server(&["--max-publishes-per-sec", "0"]);
    let mut a = args(&[
        "publish",
        "--conns",
        "2",
        "--inflight",
        "4",
        "--size",
        "40",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--threads",
        "1",
        "--server-pid",
        &std::process::id().to_string(),
    ]);
    a.extend(addr_args(&[srv.local_addr()]));
    let j = load(&a);
    assert_eq!(j["scenario"], "publish");
    assert_eq!(j["errors"], 0, "{j}");
    let acks = j["count"].as_u64().unwrap();
    assert!(acks > 0, "no ack counted: {j}");
    assert_eq!(j["latency_us"]["samples"].as_u64(), Some(acks));
    // Every ack in the window answers a publish; at most the 8 in flight
    // when the window opened were sent before it.
    assert!(j["published"].as_u64().unwrap() + 8 >= acks, "{j}");
    assert!(j["server"]["cpu_s"].as_f64().unwrap() > 0.0, "{j}");
    srv.shutdown().unwrap();
}

#[test]
fn publish_reports_refusals_as_errors() {
    // Publishing off for /ws clients: every publish is answered with an
    // error, which frees its slot (the loop goes on) and is counted.
    let srv = server(&["--allow-publish", "false"]);
    let mut a = args(&[
        "publish",
        "--conns",
        "1",
        "--inflight",
        "2",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
    ]);
    a.extend(addr_args(&[srv.local_addr()]));
    let j = load(&a);
    assert_eq!(j["count"], 0, "{j}");
    assert!(j["errors"].as_u64().unwrap() > 2, "{j}");
    srv.shutdown().unwrap();
}

#[test]
fn connections_go_round_robin_over_the_addresses() {
    let (s1, s2) = (server(&[]), server(&[]));
    let mut a = args(&[
        "echo",
        "--conns",
        "7",
        "--in-flight",
        "1",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--threads",
        "2",
    ]);
    a.extend(addr_args(&[s1.local_addr(), s2.local_addr()]));
    let j = load(&a);
    assert_eq!(j["conns_per_addr"], serde_json::json!([4, 3]), "{j}");
    assert_eq!(j["errors"], 0, "{j}");
    assert!(j["count"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(upgraded(&s1.shutdown().unwrap()), 4);
    assert_eq!(upgraded(&s2.shutdown().unwrap()), 3);
}

/// A free loopback port (closed again: a race with other programs, which
/// redis-server's start-up check below would report).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn broadcast_through_two_nodes_sharing_redis() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("redis-server not installed: skipping");
        return;
    }
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("ringcast-load-redis-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    let _redis = Reaped(redis);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("redis://127.0.0.1:{port}");
    let nodes = [
        server(&["--broker", &url, "--history-size", "100"]),
        server(&["--broker", &url, "--history-size", "100"]),
    ];
    let mut a = args(&[
        "broadcast",
        "--conns",
        "10",
        "--rate",
        "200",
        "--channel",
        "cluster",
        "--publishers",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--threads",
        "2",
    ]);
    a.extend(addr_args(&[nodes[0].local_addr(), nodes[1].local_addr()]));
    let j = load(&a);
    assert_eq!(j["conns_per_addr"], serde_json::json!([5, 5]), "{j}");
    // One publisher per node (the same core number on each), and every
    // subscriber, on either node, saw both publishers' messages in one
    // consecutive order.
    assert_eq!(
        j["stream"]["publisher_addrs"],
        serde_json::json!([0, 1]),
        "{j}"
    );
    assert_eq!(j["stream"]["placement_gave_up"], false, "{j}");
    assert_eq!(j["stream"]["publisher_distinct_cores"], 2, "{j}");
    assert!(j["published"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["loss"], 0, "{j}");
    assert_eq!(j["gaps"], 0, "{j}");
    assert_eq!(j["reorders"], 0, "{j}");
    assert_eq!(j["errors"], 0, "{j}");
    let [n0, n1] = nodes;
    // 5 subscribers and a publisher each.
    assert_eq!(upgraded(&n0.shutdown().unwrap()), 6);
    assert_eq!(upgraded(&n1.shutdown().unwrap()), 6);
    let _ = std::fs::remove_dir_all(&dir);
}
