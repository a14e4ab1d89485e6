//! TLS served by the cores themselves, over real sockets: wss:// echo,
//! channels and broadcast with a rustls + tungstenite client on TLS 1.3
//! and 1.2, https:// resources and the publish API with curl, Python
//! `websockets` over `ssl`, bad input (garbage, plain HTTP, oversized and
//! truncated records, silence, renegotiation), key updates, certificate
//! reload, and TLS beside plain (`--tls-listen`).
//!
//! Certificates are made by each test (rcgen), never committed. Waits are
//! bounded by the sockets' read timeouts (`PATIENCE`); nothing is timed.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tls::{https_exchange, path, tls_connect, wss, Pki, Wss};
use common::{metric_sum, Running, Server, PATIENCE};
use serde_json::{json, Value};
use tungstenite::Message;

const KEY: &str = "tls-test-api-key";

fn args<'a>(pki: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = pki.iter().map(String::as_str).collect();
    v.extend_from_slice(more);
    v
}

fn send_text(ws: &mut Wss, text: &str) {
    ws.send(Message::text(text)).expect("send");
}

fn read(ws: &mut Wss) -> Message {
    loop {
        match ws.read().expect("read") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

fn read_json(ws: &mut Wss) -> Value {
    match read(ws) {
        Message::Text(t) => serde_json::from_str(&t).expect("JSON"),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Reads the `/ws` welcome.
fn welcomed(mut ws: Wss) -> Wss {
    let w = read_json(&mut ws);
    assert_eq!(w["type"], "welcome", "{w}");
    ws
}

/// `/metrics` over https, parsed.
fn scrape_tls(server: &impl Running, pki: &Pki) -> prometheus_parse::Scrape {
    let (status, resp) = https_exchange(
        server.addr(),
        pki.client_config(&[]),
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{resp}");
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus")
}

fn tls_outcome(s: &prometheus_parse::Scrape, outcome: &str) -> f64 {
    metric_sum(
        s,
        "ringcast_tls_handshakes_total",
        Some(("outcome", outcome)),
    )
}

/// Waits until the TLS counters show `want` for `outcome` (a scrape is
/// itself one more `ok` handshake, counted before its answer).
fn await_outcome(server: &impl Running, pki: &Pki, outcome: &str, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = tls_outcome(&scrape_tls(server, pki), outcome);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline && got < want,
            "ringcast_tls_handshakes_total{{outcome=\"{outcome}\"}} is {got}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until the server closes; returns what it sent.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

/// A TLS alert record (content type 21), the first thing sent.
fn is_alert(bytes: &[u8]) -> bool {
    bytes.first() == Some(&21)
}

#[test]
fn wss_echo_channels_and_broadcast_over_tls13_and_tls12() {
    let pki = Pki::new("basic");
    let pargs = pki.args();
    let server = Server::spawn(&args(&pargs, &["--cores", "2"]));
    let addr = server.addr();
    let mut handshakes = 0.0;
    for (name, version) in [
        ("1.3", &rustls::version::TLS13),
        ("1.2", &rustls::version::TLS12),
    ] {
        let config = pki.client_config(&[version]);
        // Echo: small, large (many records, several reads) and a pipelined
        // burst whose answers arrive coalesced.
        let mut echo = wss(addr, "/echo", config.clone());
        handshakes += 1.0;
        send_text(&mut echo, "hello over TLS");
        assert_eq!(read(&mut echo), Message::text("hello over TLS"));
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        echo.send(Message::binary(big.clone())).unwrap();
        assert_eq!(
            read(&mut echo),
            Message::binary(big),
            "TLS {name}: 300 KB echo"
        );
        for i in 0..500 {
            echo.write(Message::text(format!("m{i}"))).unwrap();
        }
        echo.flush().unwrap();
        for i in 0..500 {
            assert_eq!(
                read(&mut echo),
                Message::text(format!("m{i}")),
                "TLS {name}"
            );
        }
        // A client-initiated key update (TLS 1.3): traffic goes on under
        // the new keys both ways.
        if version == &rustls::version::TLS13 {
            echo.get_mut()
                .conn
                .refresh_traffic_keys()
                .expect("key update");
            send_text(&mut echo, "after the key update");
            assert_eq!(read(&mut echo), Message::text("after the key update"));
        }
        echo.close(None).unwrap();
        while echo.read().is_ok() {}

        // Channels: a subscriber and a publisher on wss.
        let mut sub = welcomed(wss(addr, "/ws", config.clone()));
        let mut publ = welcomed(wss(addr, "/ws", config.clone()));
        handshakes += 2.0;
        let ch = format!("tls.{name}");
        send_text(
            &mut sub,
            &json!({"type":"subscribe","channel":ch,"id":1}).to_string(),
        );
        assert_eq!(read_json(&mut sub)["id"], 1);
        send_text(
            &mut publ,
            &json!({"type":"publish","channel":ch,"payload":{"v":name},"id":2}).to_string(),
        );
        assert_eq!(read_json(&mut publ)["offset"], 1);
        let m = read_json(&mut sub);
        assert_eq!(
            m,
            json!({"type":"message","channel":ch,"offset":1,"payload":{"v":name}})
        );

        // Broadcast: every /broadcast client gets the message.
        let mut b1 = wss(addr, "/broadcast", config.clone());
        let mut b2 = wss(addr, "/broadcast", config.clone());
        handshakes += 2.0;
        // Both are subscribed once their upgrade is answered; a round trip
        // on each proves it.
        for b in [&mut b1, &mut b2] {
            b.send(Message::Ping(b"sync".to_vec().into())).unwrap();
            loop {
                if let Message::Pong(_) = b.read().unwrap() {
                    break;
                }
            }
        }
        send_text(&mut b1, "to everyone");
        assert_eq!(read(&mut b1), Message::text("to everyone"));
        assert_eq!(read(&mut b2), Message::text("to everyone"));
    }
    let s = scrape_tls(&server, &pki);
    handshakes += 1.0;
    assert_eq!(tls_outcome(&s, "ok"), handshakes);
    assert_eq!(
        metric_sum(&s, "ringcast_tls_versions_total", Some(("version", "1.2"))),
        5.0
    );
    assert_eq!(
        metric_sum(&s, "ringcast_tls_versions_total", Some(("version", "1.3"))),
        handshakes - 5.0
    );
    assert_eq!(
        metric_sum(&s, "ringcast_tls_handshake_seconds_count", None),
        handshakes
    );
    assert_eq!(tls_outcome(&s, "failed"), 0.0);
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn https_resources_and_the_publish_api_with_curl() {
    let pki = Pki::new("curl");
    let pargs = pki.args();
    let server = Server::spawn(&args(&pargs, &["--cores", "2", "--api-key", KEY]));
    let port = server.addr().port();
    let ca = path(&pki.ca);
    let curl = |extra: &[&str], resource: &str| -> (String, String) {
        let out = Command::new("curl")
            .args(["-sS", "-v", "--cacert", &ca, "-w", "\n%{http_code}"])
            .args(extra)
            .arg(format!("https://localhost:{port}{resource}"))
            .output()
            .expect("curl (apt-get install curl)");
        assert!(
            out.status.success(),
            "curl {resource}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').expect("curl's -w line");
        // -v names the protocol: "SSL connection using TLSv1.3 / ...".
        let verbose = String::from_utf8_lossy(&out.stderr);
        let version = ["TLSv1.3", "TLSv1.2"]
            .into_iter()
            .find(|v| verbose.contains(&format!("SSL connection using {v}")))
            .unwrap_or("?");
        (body.to_owned(), format!("{status} {version}"))
    };
    let (body, tail) = curl(&[], "/healthz");
    assert_eq!((body.trim(), tail.as_str()), ("ok", "200 TLSv1.3"));
    let (_, tail) = curl(&["--tlsv1.2", "--tls-max", "1.2"], "/healthz");
    assert_eq!(tail, "200 TLSv1.2");
    let (metrics, tail) = curl(&[], "/metrics");
    assert!(tail.starts_with("200"), "{tail}");
    assert!(
        metrics.contains("ringcast_tls_handshakes_total"),
        "{metrics}"
    );

    // The publish API over https reaches a wss subscriber.
    let mut sub = welcomed(wss(server.addr(), "/ws", pki.client_config(&[])));
    send_text(
        &mut sub,
        &json!({"type":"subscribe","channel":"api.tls","id":1}).to_string(),
    );
    assert_eq!(read_json(&mut sub)["id"], 1);
    let auth = format!("Authorization: Bearer {KEY}");
    let (body, tail) = curl(
        &[
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"channel":"api.tls","payload":{"via":"https"}}"#,
        ],
        "/api/publish",
    );
    assert!(tail.starts_with("200"), "{tail}: {body}");
    assert_eq!(
        read_json(&mut sub),
        json!({"type":"message","channel":"api.tls","offset":1,"payload":{"via":"https"}})
    );
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

/// A Python venv with `websockets`, made once under `target/`.
fn python_with_websockets() -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-websockets");
    let python = venv.join("bin/python");
    let ok = |p: &std::path::Path| {
        Command::new(p)
            .args(["-c", "import websockets"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 (apt-get install python3 python3-venv)");
        assert!(made.success(), "python3 -m venv failed");
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "websockets==15.0.1"])
            .status()
            .expect("pip");
        assert!(pip.success(), "pip install websockets failed");
    }
    python
}

const PY_CLIENT: &str = r#"
import asyncio, json, ssl, sys
import websockets

async def main(port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    async with websockets.connect(f"wss://localhost:{port}/echo", ssl=ctx) as ws:
        for m in ["hello", "x" * 70000, bytes(range(256)) * 300]:
            await ws.send(m)
            assert await ws.recv() == m
        version = ws.transport.get_extra_info("ssl_object").version()
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
    async with websockets.connect(f"wss://localhost:{port}/ws", ssl=ctx) as sub, \
               websockets.connect(f"wss://localhost:{port}/ws", ssl=ctx) as pub:
        for ws in (sub, pub):
            assert json.loads(await ws.recv())["type"] == "welcome"
        await sub.send(json.dumps({"type": "subscribe", "channel": "py.tls", "id": 1}))
        assert json.loads(await sub.recv())["id"] == 1
        await pub.send(json.dumps({"type": "publish", "channel": "py.tls", "payload": [1, 2], "id": 2}))
        assert json.loads(await pub.recv())["offset"] == 1
        got = json.loads(await sub.recv())
        assert got == {"type": "message", "channel": "py.tls", "offset": 1, "payload": [1, 2]}, got
    print(f"ok {version} {ext}")

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"#;

#[test]
fn python_websockets_over_wss_with_deflate() {
    let python = python_with_websockets();
    let pki = Pki::new("python");
    let pargs = pki.args();
    let server = Server::spawn(&args(&pargs, &["--cores", "2"]));
    let out = Command::new(python)
        .args([
            "-c",
            PY_CLIENT,
            &server.addr().port().to_string(),
            &path(&pki.ca),
        ])
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Python's ssl negotiates TLS 1.3; websockets offers permessage-deflate,
    // which composes with TLS (compressed, then encrypted).
    assert!(
        stdout.starts_with("ok TLSv1.3 permessage-deflate"),
        "{stdout}"
    );
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn bad_input_closes_cleanly_is_counted_and_bystanders_are_served() {
    let pki = Pki::new("hostile");
    let pargs = pki.args();
    let server = Server::spawn(&args(&pargs, &["--cores", "2", "--handshake-timeout", "1"]));
    let addr = server.addr();
    let config = pki.client_config(&[]);
    let mut bystander = wss(addr, "/echo", config.clone());
    let mut ok = 1.0;
    let mut check_bystander = |n: &str| {
        send_text(&mut bystander, n);
        assert_eq!(
            read(&mut bystander),
            Message::text(n),
            "the bystander after {n}"
        );
    };

    // A handshake record of garbage instead of a ClientHello: closed (with
    // an alert where rustls finds one fitting).
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x10]).unwrap();
    s.write_all(&[0xab; 16]).unwrap();
    let got = read_until_closed(&mut s);
    assert!(got.is_empty() || is_alert(&got), "{got:?}");
    await_outcome(&server, &pki, "failed", 1.0);
    ok += 1.0;
    check_bystander("garbage");

    // Bytes that are not TLS records at all: a decode_error alert (21, then
    // version 3.3, length 2, level fatal 2, description 50), then the close.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0xff; 64]).unwrap();
    let got = read_until_closed(&mut s);
    assert_eq!(got, [21, 3, 3, 0, 2, 2, 50], "a fatal decode_error alert");
    await_outcome(&server, &pki, "failed", 2.0);
    ok += 1.0;

    // A record header announcing more than TLS allows.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0x16, 0x03, 0x03, 0xff, 0xff]).unwrap();
    s.write_all(&[0u8; 1024]).unwrap();
    let got = read_until_closed(&mut s);
    assert!(got.is_empty() || is_alert(&got), "{got:?}");
    await_outcome(&server, &pki, "failed", 3.0);
    ok += 1.0;
    check_bystander("oversized");

    // Plain HTTP on the TLS port: a readable 400.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = String::from_utf8_lossy(&read_until_closed(&mut s)).into_owned();
    assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
    assert!(
        got.contains("this port speaks TLS: use https:// or wss://"),
        "{got}"
    );
    await_outcome(&server, &pki, "plain_http", 1.0);
    ok += 1.0;

    // A truncated ClientHello, then FIN: abandoned mid-handshake.
    let hello = client_hello(&pki);
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    read_until_closed(&mut s);
    await_outcome(&server, &pki, "abandoned", 1.0);
    ok += 1.0;

    // Silence, and half a ClientHello left hanging: the handshake timeout.
    let mut quiet = TcpStream::connect(addr).unwrap();
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(&hello[..hello.len() / 2]).unwrap();
    assert!(read_until_closed(&mut quiet).is_empty());
    read_until_closed(&mut half);
    await_outcome(&server, &pki, "timeout", 2.0);
    ok += 1.0;
    check_bystander("timeouts");

    // TLS 1.2 renegotiation, asked for by openssl: refused.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-tls1_2",
            "-servername",
            "localhost",
        ])
        .args(["-CAfile", &path(&pki.ca)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.as_mut().expect("stdin").write_all(b"R\n")?;
            // openssl ends by itself once the server refuses.
            c.wait_with_output()
        })
        .expect("openssl (apt-get install openssl)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("RENEGOTIATING"), "{text}");
    assert!(text.contains("no renegotiation"), "{text}");
    ok += 1.0;
    check_bystander("renegotiation");

    let s = scrape_tls(&server, &pki);
    ok += 1.0;
    assert_eq!(tls_outcome(&s, "ok"), ok);
    assert_eq!(tls_outcome(&s, "failed"), 3.0);
    assert_eq!(tls_outcome(&s, "plain_http"), 1.0);
    assert_eq!(tls_outcome(&s, "abandoned"), 1.0);
    assert_eq!(tls_outcome(&s, "timeout"), 2.0);
    // The renegotiation: refused with a warning, and openssl's fatal alert
    // in answer ended that established connection.
    assert_eq!(
        metric_sum(&s, "ringcast_tls_record_errors_total", None),
        1.0
    );
    assert!(
        server.log().lines().all(|l| !l.contains("panic")),
        "{}",
        server.log()
    );
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

/// The first flight of a real TLS client: its ClientHello record(s).
fn client_hello(pki: &Pki) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(pki.client_config(&[]), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert!(out.len() > 100, "a ClientHello");
    out
}

#[test]
fn sighup_reloads_the_certificate_for_new_handshakes_only() {
    let pki = Pki::new("reload");
    let pargs = pki.args();
    let server = Server::spawn(&args(&pargs, &["--cores", "2"]));
    let addr = server.addr();
    let old = pki.client_config(&[]);
    let mut established = wss(addr, "/echo", old.clone());
    send_text(&mut established, "before");
    assert_eq!(read(&mut established), Message::text("before"));

    // Renewal: new CA, new certificate, same files; then SIGHUP.
    let pki = pki.issue("reload-2");
    let new = pki.client_config(&[]);
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + PATIENCE;
    while !server.log().contains("TLS certificate reloaded") {
        assert!(Instant::now() < deadline, "no reload:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // New handshakes get the new certificate: the old CA refuses it.
    let err = tls_connect(addr, old).expect_err("the old CA must not verify the new certificate");
    assert!(err.to_string().contains("certificate"), "{err}");
    let mut fresh = wss(addr, "/echo", new);
    send_text(&mut fresh, "new certificate");
    assert_eq!(read(&mut fresh), Message::text("new certificate"));
    // The established connection keeps its session.
    send_text(&mut established, "after");
    assert_eq!(read(&mut established), Message::text("after"));

    // A broken file: the reload fails, logged, and the current one stays.
    std::fs::write(&pki.key, "not a key").unwrap();
    server.signal(libc::SIGHUP);
    while !server.log().contains("TLS reload failed") {
        assert!(
            Instant::now() < deadline,
            "no failure logged:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.log().contains("--tls-key"), "{}", server.log());
    let mut again = wss(addr, "/echo", pki.client_config(&[]));
    send_text(&mut again, "still served");
    assert_eq!(read(&mut again), Message::text("still served"));
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn tls_listen_serves_tls_beside_plain_and_idle_tls_holds_no_buffers() {
    let pki = Pki::new("side");
    let pargs = pki.args();
    let server = Server::start(&args(
        &pargs,
        &["--cores", "2", "--tls-listen", "127.0.0.1:0"],
    ));
    let tls_addr = server.tls_addr().expect("a TLS address");
    assert_ne!(tls_addr, server.addr());
    // Plain on --listen.
    let mut plain = common::client(&server.url("/echo"));
    plain.send(Message::text("plain")).unwrap();
    assert_eq!(plain.read().unwrap(), Message::text("plain"));
    // TLS on --tls-listen, a few connections that go idle after a large
    // message each.
    let mut idle: Vec<Wss> = (0..8)
        .map(|_| wss(tls_addr, "/echo", pki.client_config(&[])))
        .collect();
    for ws in &mut idle {
        ws.send(Message::binary(vec![7u8; 100_000])).unwrap();
        assert_eq!(read(ws), Message::binary(vec![7u8; 100_000]));
    }
    // Once idle, no TLS connection holds a buffer (the gauge is refreshed
    // about once a second).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = common::scrape(&server);
        let held = metric_sum(&s, "ringcast_tls_buffer_bytes", None);
        let ok = metric_sum(&s, "ringcast_tls_handshakes_total", Some(("outcome", "ok")));
        if held == 0.0 && ok == 8.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "TLS buffers still held: {held} B"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The plain listener does not speak TLS, and the TLS one not plain.
    assert!(tls_connect(server.addr(), pki.client_config(&[])).is_err());
    let mut s = TcpStream::connect(tls_addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(String::from_utf8_lossy(&read_until_closed(&mut s)).starts_with("HTTP/1.1 400"));
    // The embedding API reloads too.
    assert_eq!(server.reload_tls(), Ok(true));
    let mut after = wss(tls_addr, "/echo", pki.client_config(&[]));
    send_text(&mut after, "reloaded");
    assert_eq!(read(&mut after), Message::text("reloaded"));
    drop(idle);
    server.stop();
}

#[test]
fn half_a_tls_configuration_is_refused_at_start_up() {
    let pki = Pki::new("half");
    let other = Pki::new("other");
    for (flags, want) in [
        (
            vec!["--tls-cert", pki.cert.to_str().unwrap()],
            "--tls-cert needs --tls-key",
        ),
        (
            vec!["--tls-key", pki.key.to_str().unwrap()],
            "--tls-key needs --tls-cert",
        ),
        (
            vec!["--tls-listen", "127.0.0.1:0"],
            "--tls-listen needs --tls-cert and --tls-key",
        ),
        (vec!["--ktls"], "--ktls needs --tls-cert and --tls-key"),
        (
            vec![
                "--tls-cert",
                "/nonexistent.pem",
                "--tls-key",
                pki.key.to_str().unwrap(),
            ],
            "--tls-cert /nonexistent.pem",
        ),
        (
            vec![
                "--tls-cert",
                pki.key.to_str().unwrap(),
                "--tls-key",
                pki.key.to_str().unwrap(),
            ],
            "no CERTIFICATE",
        ),
        (
            vec![
                "--tls-cert",
                pki.cert.to_str().unwrap(),
                "--tls-key",
                pki.cert.to_str().unwrap(),
            ],
            "no usable private key",
        ),
        (
            vec![
                "--tls-cert",
                pki.cert.to_str().unwrap(),
                "--tls-key",
                other.key.to_str().unwrap(),
            ],
            "KeyMismatch",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["--listen", "127.0.0.1:0"])
            .args(&flags)
            .output()
            .expect("ringcast");
        assert!(!out.status.success(), "{flags:?} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{flags:?}: {err}");
    }
}

/// `ringcast_ktls_connections_total{outcome}`.
fn ktls_outcome(s: &prometheus_parse::Scrape, outcome: &str) -> f64 {
    metric_sum(
        s,
        "ringcast_ktls_connections_total",
        Some(("outcome", outcome)),
    )
}

/// Waits until `metric{label}` (summed over cores, and over every label
/// when `label` is `None`) reaches `want` (counters are gathered from the
/// cores about once a second).
fn await_metric(
    server: &impl Running,
    metric: &str,
    label: impl Into<Option<(&'static str, &'static str)>>,
    want: f64,
) {
    let label = label.into();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = metric_sum(&common::scrape(server), metric, label);
        if got >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{metric}{label:?} is {got}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Echoes small and large messages, one at a time and pipelined.
fn echo_some(ws: &mut Wss, tag: &str) {
    for i in 0..50 {
        let text = format!("{tag} {i}");
        send_text(ws, &text);
        assert_eq!(read(ws), Message::text(text));
    }
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(read(ws), Message::binary(big));
    for i in 0..100 {
        ws.write(Message::text(format!("{tag} pipelined {i}")))
            .unwrap();
    }
    ws.flush().unwrap();
    for i in 0..100 {
        assert_eq!(read(ws), Message::text(format!("{tag} pipelined {i}")));
    }
}

#[test]
fn ktls_offloads_where_the_kernel_allows_and_falls_back_to_rustls_where_not() {
    use ringcast::tls::ktls::{probe, Support};
    let kernel = probe();
    eprintln!("{}", kernel.describe());
    let available = matches!(kernel, Support::Available(_));
    // scripts/ktls-vm.sh sets this where the guest kernel has kTLS, so that
    // a missing module fails the run instead of passing on the fallback.
    if std::env::var_os("RINGCAST_TEST_EXPECT_KTLS").is_some() {
        assert!(available, "kTLS expected here: {}", kernel.describe());
    }
    let pki = Pki::new("ktls");
    let pargs = pki.args();
    let server = Server::start(&args(
        &pargs,
        &["--cores", "2", "--tls-listen", "127.0.0.1:0", "--ktls"],
    ));
    let tls_addr = server.tls_addr().expect("a TLS address");
    // TLS 1.3 (AES-GCM first, as rustls's clients and browsers ask):
    // offloaded where the kernel allows, rustls otherwise; the client sees
    // no difference either way.
    let mut ws = wss(
        tls_addr,
        "/echo",
        pki.client_config(&[&rustls::version::TLS13]),
    );
    echo_some(&mut ws, "first");
    let (main_outcome, other) = if available {
        ("offloaded", "unavailable")
    } else {
        ("unavailable", "offloaded")
    };
    await_metric(
        &server,
        "ringcast_ktls_connections_total",
        ("outcome", main_outcome),
        1.0,
    );
    assert_eq!(ktls_outcome(&common::scrape(&server), other), 0.0);
    // Many at once, on both cores, each through its own hand-over.
    let mut many: Vec<Wss> = (0..16)
        .map(|_| wss(tls_addr, "/echo", pki.client_config(&[])))
        .collect();
    for (i, ws) in many.iter_mut().enumerate() {
        echo_some(ws, &format!("conn {i}"));
    }
    // TLS 1.2 stays in user space (counted as such where kTLS exists).
    let mut v12 = wss(
        tls_addr,
        "/echo",
        pki.client_config(&[&rustls::version::TLS12]),
    );
    echo_some(&mut v12, "tls12");
    if available {
        await_metric(
            &server,
            "ringcast_ktls_connections_total",
            ("outcome", "tls12"),
            1.0,
        );
    }
    // A KeyUpdate from the client: rustls rekeys in user space; the kernel
    // rekeys from Linux 6.14 on, and before that the connection is closed
    // (with an alert) and counted, never left reading garbage.
    send_text(&mut ws, "before the key update");
    assert_eq!(read(&mut ws), Message::text("before the key update"));
    ws.get_mut().conn.refresh_traffic_keys().expect("KeyUpdate");
    send_text(&mut ws, "after the key update");
    match ws.read() {
        Ok(m) => {
            assert_eq!(m, Message::text("after the key update"));
            if available {
                await_metric(
                    &server,
                    "ringcast_ktls_rekeys_total",
                    ("outcome", "ok"),
                    1.0,
                );
            }
        }
        Err(e) => {
            assert!(available, "rustls must handle a KeyUpdate: {e}");
            await_metric(
                &server,
                "ringcast_ktls_rekeys_total",
                ("outcome", "refused"),
                1.0,
            );
        }
    }
    // The server's close: a close frame, then close_notify before FIN (a
    // clean end of the TLS stream, not a truncation).
    let mut closing = wss(tls_addr, "/echo", pki.client_config(&[]));
    echo_some(&mut closing, "closing");
    closing.close(None).unwrap();
    loop {
        match closing.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("expected a clean close, got {e}"),
        }
    }
    let mut rest = [0u8; 64];
    assert_eq!(
        closing
            .get_mut()
            .read(&mut rest)
            .expect("close_notify, then EOF"),
        0
    );
    // The client's close_notify reaches the server as one (a control
    // record, with kTLS).
    let mut notify = wss(tls_addr, "/echo", pki.client_config(&[]));
    echo_some(&mut notify, "notify");
    let before = metric_sum(
        &common::scrape(&server),
        "ringcast_tls_close_notify_total",
        None,
    );
    let stream = notify.get_mut();
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    stream.sock.shutdown(Shutdown::Write).unwrap();
    await_metric(
        &server,
        "ringcast_tls_close_notify_total",
        None,
        before + 1.0,
    );
    // A forged record on an established connection does not decrypt: the
    // connection is closed and counted; everyone else is served.
    let mut forged = wss(tls_addr, "/echo", pki.client_config(&[]));
    echo_some(&mut forged, "forged");
    let errors = metric_sum(
        &common::scrape(&server),
        "ringcast_tls_record_errors_total",
        None,
    );
    let mut record = vec![23, 3, 3, 0, 64];
    record.extend_from_slice(&[0x5a; 64]);
    forged.get_mut().sock.write_all(&record).unwrap();
    let mut raw = forged.get_mut().sock.try_clone().unwrap();
    read_until_closed(&mut raw);
    await_metric(
        &server,
        "ringcast_tls_record_errors_total",
        None,
        errors + 1.0,
    );
    for (i, ws) in many.iter_mut().enumerate() {
        echo_some(ws, &format!("still {i}"));
    }
    echo_some(&mut v12, "tls12 still");
    let s = common::scrape(&server);
    assert_eq!(ktls_outcome(&s, "failed"), 0.0);
    if available {
        assert!(ktls_outcome(&s, "offloaded") >= 19.0, "{:?}", kernel);
    } else {
        assert!(ktls_outcome(&s, "unavailable") >= 20.0);
    }
    // The record of what happened (`--nocapture`): which path served them.
    for sample in s
        .samples
        .iter()
        .filter(|s| s.metric.starts_with("ringcast_ktls_"))
    {
        if let prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) =
            sample.value
        {
            let labels: std::collections::BTreeMap<_, _> = sample.labels.iter().collect();
            eprintln!("{} {labels:?} {v}", sample.metric);
        }
    }
    drop(many);
    server.stop();
}
