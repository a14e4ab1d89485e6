//! Hostile clients, small scale: slowloris, abusive request heads, frame and
//! fragment floods, a ping flood and a channel subscriber that never read,
//! abrupt resets, a connection flood over `--max-connections`.
//!
//! Every scenario asserts its exact outcome, and while it runs a bystander
//! (a normal `/echo` client opened before the attack) keeps getting its
//! echoes and the server's RSS stays under a stated, generous bound. Waits
//! are bounded by `PATIENCE` only: no timing assertions. The heavier
//! versions (thousands of connections, a descriptor table that fills up)
//! are in `scripts/hostile.sh`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    client, close_client, http_exchange, masked, metric_sum, raw_ws, read_frame, read_head,
    recv_json, rss_bytes, scrape, send_json, tcp, upgrade_request, upgrade_request_with, Server,
    Ws, PATIENCE,
};
use serde_json::json;
use tungstenite::Message;

const MIB: u64 = 1 << 20;

/// A normal `/echo` client, connected before the attack starts, that must
/// keep being served throughout.
struct Bystander {
    ws: Ws,
    sent: usize,
}

impl Bystander {
    fn new(server: &Server) -> Bystander {
        let mut b = Bystander {
            ws: client(&server.url("/echo")),
            sent: 0,
        };
        b.check("before the attack");
        b
    }

    /// One echo round trip.
    fn check(&mut self, during: &str) {
        self.sent += 1;
        let text = format!("bystander #{} {during}", self.sent);
        self.ws.send(Message::text(text.as_str())).unwrap();
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    assert_eq!(t.as_str(), text, "bystander {during}");
                    return;
                }
                // Heartbeats: tungstenite answers them itself.
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(other) => panic!("bystander {during}: unexpected {other:?}"),
                Err(e) => panic!("bystander {during}: {e}"),
            }
        }
    }
}

/// The server's RSS against a bound: baseline when the attack starts plus
/// `headroom`, checked at every sample.
struct Memory {
    baseline: u64,
    peak: u64,
    headroom: u64,
}

impl Memory {
    fn new(server: &Server, headroom: u64) -> Memory {
        let baseline = rss_bytes(server);
        Memory {
            baseline,
            peak: baseline,
            headroom,
        }
    }

    fn sample(&mut self, server: &Server, during: &str) -> u64 {
        let now = rss_bytes(server);
        self.peak = self.peak.max(now);
        assert!(
            now <= self.baseline + self.headroom,
            "{during}: server RSS {:.1} MiB, over the baseline {:.1} MiB + {} MiB",
            now as f64 / MIB as f64,
            self.baseline as f64 / MIB as f64,
            self.headroom / MIB
        );
        now
    }

    fn report(&mut self, server: &Server, scenario: &str) {
        let after = self.sample(server, scenario);
        eprintln!(
            "{scenario}: RSS baseline {:.1} MiB, peak {:.1} MiB, after {:.1} MiB",
            self.baseline as f64 / MIB as f64,
            self.peak as f64 / MIB as f64,
            after as f64 / MIB as f64
        );
    }
}

/// Polls `/metrics` until `ringcast_connections` (which counts the scrape's
/// own connection) is `want`.
fn wait_connections(server: &Server, want: usize) {
    let start = Instant::now();
    loop {
        let open = metric_sum(&scrape(server), "ringcast_connections", None) as usize;
        if open == want {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "ringcast_connections stayed at {open}, expected {want}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the server's close frame (nothing else may come first), completes
/// the closing handshake and waits for the server's FIN. Returns the code
/// and reason.
fn close_frame(s: &mut TcpStream) -> (u16, String) {
    let (_, op, p) = read_frame(s).expect("a close frame, not the end of the stream");
    assert_eq!(op, 8, "expected a close frame, got opcode {op}");
    assert!(p.len() >= 2, "close frame without a code");
    let _ = s.write_all(&masked(true, 8, &p[..2]));
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    (
        u16::from_be_bytes([p[0], p[1]]),
        String::from_utf8_lossy(&p[2..]).into_owned(),
    )
}

/// An upgraded raw connection whose receive buffer is tiny, so whatever the
/// server sends it and it does not read backs up in the server quickly.
fn raw_ws_not_reading(addr: SocketAddr, path: &str) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(upgrade_request(path).as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    s
}

/// Drops a connection with a TCP reset (SO_LINGER 0), not a FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

#[test]
fn slowloris_heads_are_dropped_at_the_handshake_timeout() {
    const CONNS: usize = 50;
    let server = Server::spawn(&["--handshake-timeout", "1", "--log", "debug"]);
    let mut bystander = Bystander::new(&server);
    let mut mem = Memory::new(&server, 64 * MIB);
    let head = upgrade_request("/echo").into_bytes();
    let mut conns: Vec<Option<TcpStream>> = (0..CONNS)
        .map(|_| {
            let s = tcp(server.addr);
            s.set_nonblocking(true).unwrap();
            Some(s)
        })
        .collect();
    // One byte of the head every 100 ms on every connection; the last byte
    // is never sent, so no head can complete however slow the host is.
    let mut sent = 0;
    let mut buf = [0u8; 256];
    let start = Instant::now();
    let mut legit = 0;
    while conns.iter().any(Option::is_some) {
        let open = conns.iter().filter(|c| c.is_some()).count();
        assert!(
            start.elapsed() < PATIENCE,
            "{open} slowloris connections still open"
        );
        for slot in conns.iter_mut() {
            let Some(s) = slot else { continue };
            if sent < head.len() - 1 && s.write_all(&head[sent..sent + 1]).is_err() {
                *slot = None;
                continue;
            }
            match s.read(&mut buf) {
                Ok(0) => *slot = None,
                Ok(n) => panic!(
                    "the server answered an unfinished head: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => *slot = None,
                Err(e) => panic!("slowloris connection: {e}"),
            }
        }
        sent += 1;
        // Meanwhile a legitimate client connects and is served.
        let mut ws = client(&server.url("/echo"));
        ws.send(Message::text("legit")).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text("legit"));
        close_client(ws);
        legit += 1;
        bystander.check("during slowloris");
        mem.sample(&server, "slowloris");
        thread::sleep(Duration::from_millis(100));
    }
    assert!(legit > 0);
    // Only the slowloris connections timed out, each of them once.
    let start = Instant::now();
    loop {
        let log = server.log();
        let timeouts = log
            .lines()
            .filter(|l| l.contains("DEBUG") && l.contains("handshake timeout"))
            .count();
        if timeouts == CONNS {
            break;
        }
        assert!(
            timeouts < CONNS && start.elapsed() < PATIENCE,
            "{timeouts} handshake timeouts logged, expected {CONNS}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    wait_connections(&server, 2);
    bystander.check("after slowloris");
    mem.report(&server, "slowloris");
}

#[test]
fn abusive_request_heads_are_refused() {
    // Refusals tests/handshake.rs does not already cover.
    let server = Server::spawn(&[]);
    let mut bystander = Bystander::new(&server);
    let mut mem = Memory::new(&server, 64 * MIB);
    let flood: String = (0..100).map(|i| format!("X-Flood-{i}: y\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "100 header lines",
            upgrade_request_with("/echo", &flood).into_bytes(),
            431,
        ),
        (
            "a body on the upgrade GET",
            (upgrade_request_with("/echo", "Content-Length: 5\r\n") + "hello").into_bytes(),
            400,
        ),
        (
            "HTTP/1.0 upgrade",
            upgrade_request("/echo")
                .replacen("HTTP/1.1", "HTTP/1.0", 1)
                .into_bytes(),
            400,
        ),
    ];
    for (name, bytes, want) in cases {
        let (status, resp) = http_exchange(server.addr, &bytes);
        assert_eq!(status, want, "{name}: {resp}");
        bystander.check(name);
        mem.sample(&server, name);
    }

    // A head that never ends: 1 MiB of header lines and no blank line. 431
    // once it passes --max-header-bytes; the rest is read and dropped, not
    // buffered.
    let mut s = tcp(server.addr);
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").unwrap();
    let line = format!("X-Pad: {}\r\n", "p".repeat(1016));
    for i in 0..1024 {
        s.write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("endless head, line {i}: {e}"));
        if i % 128 == 0 {
            mem.sample(&server, "endless head");
        }
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
    bystander.check("endless head");

    // Bytes that are not a frame right behind a valid upgrade, in the same
    // write: the upgrade is answered, then the connection closed with 1002.
    let garbage: [(&str, &[u8]); 2] = [
        ("an unmasked frame", b"\x81\x05hello"),
        (
            "a second HTTP request",
            b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    ];
    for (name, bytes) in garbage {
        let mut s = tcp(server.addr);
        let mut req = upgrade_request("/echo").into_bytes();
        req.extend_from_slice(bytes);
        s.write_all(&req).unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101 "), "{name}: {head}");
        assert_eq!(close_frame(&mut s).0, 1002, "{name} behind the upgrade");
        bystander.check(name);
    }
    mem.report(&server, "request heads");
}

#[test]
fn frame_length_claims_are_judged_from_the_header_alone() {
    // Default limits (16 MiB messages). No payload is ever sent: each close
    // must come from the frame header by itself.
    let server = Server::spawn(&[]);
    let mut bystander = Bystander::new(&server);
    let mut mem = Memory::new(&server, 64 * MIB);
    let header = |first: u8, len: u64| {
        let mut h = vec![first, 0x80 | 127];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    };
    let max = i64::MAX as u64;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("binary frame of 2^63-1 bytes", header(0x82, max), 1009),
        ("text frame of 2^63-1 bytes", header(0x81, max), 1009),
        (
            "continuation of 2^63-1 bytes",
            [masked(false, 2, b"x"), header(0x80, max)].concat(),
            1009,
        ),
        (
            "64-bit length with the top bit set",
            header(0x82, 1 << 63),
            1002,
        ),
        ("ping of 2^63-1 bytes", header(0x89, max), 1002),
    ];
    for (name, bytes, want) in cases {
        let mut s = raw_ws(server.addr, "/echo");
        s.write_all(&bytes).unwrap();
        assert_eq!(close_frame(&mut s).0, want, "{name}");
        bystander.check(name);
        mem.sample(&server, name);
    }
    mem.report(&server, "length claims");
}

#[test]
fn one_byte_fragments_are_closed_when_they_pass_max_message_bytes() {
    const LIMIT: usize = 65536;
    const FLOOD: usize = 100_000;
    let server = Server::spawn(&["--max-message-bytes", "65536"]);
    let mut bystander = Bystander::new(&server);
    let mut mem = Memory::new(&server, 64 * MIB);

    // 65,536 one-byte frames: exactly at the limit, still open (a ping
    // behind them is answered).
    let mut s = raw_ws(server.addr, "/echo");
    let mut bytes = masked(false, 2, b"x");
    for _ in 1..LIMIT {
        bytes.extend(masked(false, 0, b"x"));
    }
    bytes.extend(masked(true, 9, b"at the limit"));
    s.write_all(&bytes).unwrap();
    let (_, op, p) = read_frame(&mut s).unwrap();
    assert_eq!((op, p.as_slice()), (10, b"at the limit".as_slice()));
    bystander.check("at the limit");
    mem.sample(&server, "one-byte fragments at the limit");
    // The rest of a 100,000-fragment flood: the first byte past the limit
    // closes it with 1009.
    let rest: Vec<u8> = (LIMIT..FLOOD)
        .flat_map(|_| masked(false, 0, b"x"))
        .collect();
    s.write_all(&rest).unwrap();
    assert_eq!(close_frame(&mut s), (1009, "message too big".into()));
    bystander.check("after the one-byte flood");

    // 100,000 empty fragments are within --max-fragments' default (131072)
    // and add no bytes: the message completes and is echoed.
    let mut s = raw_ws(server.addr, "/echo");
    let mut bytes = masked(false, 2, b"");
    for _ in 0..FLOOD {
        bytes.extend(masked(false, 0, b""));
    }
    bytes.extend(masked(true, 0, b"done"));
    s.write_all(&bytes).unwrap();
    let (fin, op, p) = read_frame(&mut s).unwrap();
    assert_eq!((fin, op, p.as_slice()), (true, 2, b"done".as_slice()));
    bystander.check("after the empty-fragment flood");
    mem.report(&server, "one-byte fragments");
}

#[test]
fn empty_fragments_are_closed_past_max_fragments() {
    const FLOOD: usize = 100_000;
    let server = Server::spawn(&["--max-fragments", "1000"]);
    let mut bystander = Bystander::new(&server);
    let mut mem = Memory::new(&server, 64 * MIB);
    let mut s = raw_ws(server.addr, "/echo");
    // 1000 frames of one message: allowed.
    let mut bytes = masked(false, 1, b"");
    for _ in 1..1000 {
        bytes.extend(masked(false, 0, b""));
    }
    bytes.extend(masked(true, 9, b"1000 frames"));
    s.write_all(&bytes).unwrap();
    let (_, op, p) = read_frame(&mut s).unwrap();
    assert_eq!((op, p.as_slice()), (10, b"1000 frames".as_slice()));
    // The 1001st of a 100,000-fragment flood closes it.
    let rest: Vec<u8> = (1000..FLOOD).flat_map(|_| masked(false, 0, b"")).collect();
    s.write_all(&rest).unwrap();
    assert_eq!(close_frame(&mut s), (1009, "too many fragments".into()));
    bystander.check("after the empty-fragment flood");
    mem.report(&server, "empty fragments");
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_bounded() {
    const PINGS: usize = 50_000;
    let server = Server::spawn(&["--max-send-queue-bytes", "1048576", "--close-timeout", "60"]);
    let mut bystander = Bystander::new(&server);
    let mut mem = Memory::new(&server, 64 * MIB);
    let mut s = raw_ws_not_reading(server.addr, "/echo");
    let pings: Vec<u8> = (0..PINGS as u64)
        .flat_map(|i| {
            let mut p = [b'p'; 125];
            p[..8].copy_from_slice(&i.to_be_bytes());
            masked(true, 9, &p)
        })
        .collect();
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&pings));
    while !writer.is_finished() {
        bystander.check("during the ping flood");
        mem.sample(&server, "ping flood");
        thread::sleep(Duration::from_millis(50));
    }
    // The server reads on after its close (it discards what follows), so
    // every ping could be written.
    writer.join().unwrap().expect("writing the pings");
    // Now read: pongs in increasing order, far fewer than the pings
    // (coalesced past 32 per read), ending with the answer to the last
    // ping — or, if the unread pongs passed the send-queue bound first,
    // with close 1008.
    let mut pongs = 0u64;
    let mut last: Option<u64> = None;
    let code = loop {
        let (_, op, p) = read_frame(&mut s).expect("pongs, then the last one or a close");
        match op {
            10 => {
                assert_eq!(p.len(), 125);
                let seq = u64::from_be_bytes(p[..8].try_into().unwrap());
                assert!(last.is_none_or(|l| seq > l), "pong out of order");
                last = Some(seq);
                pongs += 1;
                if seq == PINGS as u64 - 1 {
                    break None;
                }
            }
            8 => break Some(u16::from_be_bytes([p[0], p[1]])),
            _ => panic!("unexpected opcode {op}"),
        }
    };
    assert!(matches!(code, None | Some(1008)), "closed with {code:?}");
    assert!(pongs < PINGS as u64, "every ping was answered");
    eprintln!("ping flood: {pongs} pongs for {PINGS} pings, ended by {code:?}");
    let _ = s.write_all(&masked(true, 8, &1000u16.to_be_bytes()));
    drop(s);
    let m = scrape(&server);
    let coalesced = metric_sum(&m, "ringcast_pongs_coalesced_total", None);
    assert!(coalesced > 0.0, "no pong was coalesced");
    assert_eq!(
        metric_sum(&m, "ringcast_slow_consumer_closes_total", None),
        if code.is_some() { 1.0 } else { 0.0 }
    );
    bystander.check("after the ping flood");
    mem.report(&server, "ping flood");
}

#[test]
fn a_channel_subscriber_that_never_reads_is_cut_off_and_the_others_get_everything() {
    const MESSAGES: usize = 20_000;
    const SIZE: usize = 1024;
    // Readers that keep up stay within 256 messages (~256 KiB, a quarter of
    // the bound) of the publisher, so only the one that never reads can go
    // over it.
    const WINDOW: usize = 256;
    const READERS: usize = 2;
    // Publishers here go as fast as their readers keep up: the publish rate
    // limit is off (tests/reliability.rs tests it).
    let server = Server::spawn(&[
        "--max-send-queue-bytes",
        "1048576",
        "--close-timeout",
        "60",
        "--max-publishes-per-sec",
        "0",
    ]);
    let mut bystander = Bystander::new(&server);
    let mut mem = Memory::new(&server, 64 * MIB);
    let subscribe = br#"{"type":"subscribe","channel":"flood","id":1}"#;

    let mut slow = raw_ws_not_reading(server.addr, "/ws");
    let (_, op, welcome) = read_frame(&mut slow).unwrap();
    assert_eq!(op, 1);
    common::check_welcome(&serde_json::from_slice(&welcome).unwrap());
    slow.write_all(&masked(true, 1, subscribe)).unwrap();
    let (_, op, ack) = read_frame(&mut slow).unwrap();
    assert_eq!(op, 1);
    let ack = serde_json::from_slice(&ack).unwrap();
    assert_eq!(common::check_offset_ack(&ack, Some(1)).1, 0, "{ack}");

    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..READERS).map(|_| AtomicUsize::new(0)).collect());
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (mut ws, _) = common::ws_client(&server.url("/ws"));
            send_json(
                &mut ws,
                json!({"type":"subscribe","channel":"flood","id":1}),
            );
            assert_eq!(common::check_offset_ack(&recv_json(&mut ws), Some(1)).1, 0);
            let progress = progress.clone();
            thread::spawn(move || {
                for i in 0..MESSAGES {
                    let m = recv_json(&mut ws);
                    assert_eq!(m["type"], "message", "reader {r}: {m}");
                    assert_eq!(m["offset"], i + 1, "reader {r}: {m}");
                    let payload = m["payload"].as_str().expect("string payload");
                    assert_eq!(payload.len(), SIZE);
                    assert_eq!(payload[..8].parse::<usize>().unwrap(), i, "reader {r}");
                    progress[r].store(i + 1, Ordering::Release);
                }
                ws
            })
        })
        .collect();

    // The publisher writes raw frames (no id); its acks are drained on a
    // thread, offsets in order.
    let (mut publisher, _) = common::raw_ws_welcomed(server.addr, "/ws");
    let mut acks = publisher.try_clone().unwrap();
    let drainer = thread::spawn(move || {
        for i in 0..MESSAGES {
            let (_, op, p) = read_frame(&mut acks).unwrap();
            assert_eq!(op, 1);
            let ack = serde_json::from_slice(&p).unwrap();
            assert_eq!(common::check_offset_ack(&ack, None).1, i as u64 + 1);
        }
    });
    let pad = "x".repeat(SIZE - 8);
    for i in 0..MESSAGES {
        let start = Instant::now();
        while i
            >= progress
                .iter()
                .map(|p| p.load(Ordering::Acquire))
                .min()
                .unwrap()
                + WINDOW
        {
            assert!(start.elapsed() < PATIENCE, "readers stopped at {i}");
            thread::sleep(Duration::from_micros(200));
        }
        let publish = format!(r#"{{"type":"publish","channel":"flood","payload":"{i:08}{pad}"}}"#);
        publisher
            .write_all(&masked(true, 1, publish.as_bytes()))
            .unwrap();
        if i % 1000 == 0 {
            bystander.check("during the channel flood");
            mem.sample(&server, "channel flood");
        }
    }
    for r in readers {
        close_client(r.join().expect("a reader missed or reordered messages"));
    }
    drainer.join().expect("publisher acks");

    // The one that never read: some messages (the welcome and the ack were
    // read above), then 1008.
    let mut got = 0;
    let code = loop {
        let (_, op, p) = read_frame(&mut slow).expect("messages then a close frame");
        match op {
            1 => got += 1,
            8 => break u16::from_be_bytes([p[0], p[1]]),
            _ => panic!("unexpected opcode {op}"),
        }
    };
    assert_eq!(code, 1008);
    assert!(
        got < MESSAGES,
        "the subscriber that never read was not cut off"
    );
    let _ = slow.write_all(&masked(true, 8, &1008u16.to_be_bytes()));
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    eprintln!("channel flood: the subscriber that never read got {got} of {MESSAGES}");
    let m = scrape(&server);
    assert_eq!(
        metric_sum(&m, "ringcast_slow_consumer_closes_total", None),
        1.0
    );
    assert!(metric_sum(&m, "ringcast_deliveries_total", None) >= (READERS * MESSAGES + got) as f64);
    bystander.check("after the channel flood");
    mem.report(&server, "channel flood");
}

#[test]
fn abrupt_resets_mid_handshake_and_mid_frame_leave_nothing_behind() {
    const EACH: usize = 200;
    let server = Server::spawn(&[]);
    let mut bystander = Bystander::new(&server);
    let mut listener = client(&server.url("/broadcast"));
    let mut mem = Memory::new(&server, 16 * MIB);
    let head = upgrade_request("/echo");
    let mut socks = Vec::new();
    // Half a request head each.
    for _ in 0..EACH {
        let mut s = tcp(server.addr);
        s.write_all(&head.as_bytes()[..head.len() / 2]).unwrap();
        socks.push(s);
    }
    // Upgraded on every route (subscribed, on /ws), then half a frame each.
    let frame = masked(true, 2, &[7; 1000]);
    for i in 0..EACH {
        let path = ["/echo", "/broadcast", "/ws"][i % 3];
        let mut s = raw_ws(server.addr, path);
        if path == "/ws" {
            // The welcome, then the subscribe's ack.
            assert_eq!(read_frame(&mut s).unwrap().1, 1);
            let sub = format!(r#"{{"type":"subscribe","channel":"rst-{i}","id":1}}"#);
            s.write_all(&masked(true, 1, sub.as_bytes())).unwrap();
            assert_eq!(read_frame(&mut s).unwrap().1, 1);
        }
        s.write_all(&frame[..frame.len() / 2]).unwrap();
        socks.push(s);
    }
    // All of them open on the server: the two bystanders, the 400, the scrape.
    wait_connections(&server, 2 + 2 * EACH + 1);
    mem.sample(&server, "before the resets");
    for s in socks {
        reset(s);
    }
    wait_connections(&server, 3);
    let m = scrape(&server);
    assert_eq!(metric_sum(&m, "ringcast_subscriptions", None), 0.0);
    assert_eq!(metric_sum(&m, "ringcast_channels", None), 0.0);
    bystander.check("after the resets");
    // The broadcast hub lost 66 subscribers at once; the one left is served.
    listener
        .send(Message::binary(b"still here".to_vec()))
        .unwrap();
    loop {
        match listener.read().unwrap() {
            Message::Binary(b) => {
                assert_eq!(b.as_ref(), b"still here");
                break;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("broadcast listener: unexpected {other:?}"),
        }
    }
    mem.report(&server, "abrupt resets");
}

#[test]
fn a_connection_flood_over_max_connections_gets_503_and_the_rest_are_served() {
    const LIMIT: usize = 50;
    const FLOOD: usize = 80;
    let server = Server::spawn(&["--cores", "1", "--max-connections", "50"]);
    // The bystander is one of the 50.
    let mut bystander = Bystander::new(&server);
    let mut mem = Memory::new(&server, 64 * MIB);
    let flood = |count: usize| {
        let mut admitted = Vec::new();
        let mut refused = 0;
        for _ in 0..count {
            let mut s = tcp(server.addr);
            s.write_all(upgrade_request("/echo").as_bytes()).unwrap();
            let head = read_head(&mut s);
            if head.starts_with("HTTP/1.1 101 ") {
                admitted.push(s);
            } else {
                assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).unwrap();
                refused += 1;
            }
        }
        (admitted, refused)
    };
    let echo_all = |admitted: &mut [TcpStream]| {
        for (i, s) in admitted.iter_mut().enumerate() {
            let text = format!("admitted {i}");
            s.write_all(&masked(true, 1, text.as_bytes())).unwrap();
            assert_eq!(read_frame(s).unwrap(), (true, 1, text.into_bytes()));
        }
    };

    let (mut admitted, refused) = flood(FLOOD - 1);
    assert_eq!((admitted.len() + 1, refused), (LIMIT, FLOOD - LIMIT));
    echo_all(&mut admitted);
    bystander.check("at the limit");
    mem.sample(&server, "connection flood");
    // They leave with a closing handshake; then there is room again.
    for mut s in admitted {
        s.write_all(&masked(true, 8, &1000u16.to_be_bytes()))
            .unwrap();
        assert_eq!(close_frame(&mut s).0, 1000);
    }
    wait_connections(&server, 2);
    let (mut admitted, refused) = flood(LIMIT);
    assert_eq!((admitted.len(), refused), (LIMIT - 1, 1));
    echo_all(&mut admitted);
    bystander.check("full again");

    let m = scrape(&server);
    let outcome = |o| common::handshakes(&m, o);
    assert_eq!(outcome("over_capacity"), (FLOOD - LIMIT + 1) as f64);
    assert_eq!(outcome("upgraded"), (1 + 2 * (LIMIT - 1)) as f64);
    mem.report(&server, "connection flood");
}

#[test]
fn a_client_that_shuts_down_its_side_right_after_its_request_still_gets_the_answer() {
    // Request and FIN in the same breath (`nc -N`, HTTP/1.0-style clients,
    // a WebSocket client that closes and stops sending): the FIN often
    // arrives in the same loop pass as the request, before the answer is
    // flushed. The answer must still go out.
    const ROUNDS: usize = 50;
    let server = Server::spawn(&["--cores", "2", "--api-key", "k"]);
    let mut bystander = Bystander::new(&server);
    let mut mem = Memory::new(&server, 64 * MIB);
    let half_close = |request: &[u8]| {
        let mut s = tcp(server.addr);
        s.write_all(request).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        String::from_utf8_lossy(&resp).into_owned()
    };
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "/healthz",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 200 ",
        ),
        (
            "a refused upgrade",
            b"POST /echo HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 405 ",
        ),
        (
            "an unknown path",
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 404 ",
        ),
        (
            "/api/channels (answered once the other core replies)",
            b"GET /api/channels HTTP/1.1\r\nHost: x\r\nX-Api-Key: k\r\n\r\n",
            "HTTP/1.1 200 ",
        ),
    ];
    for (name, request, want) in cases {
        for round in 0..ROUNDS {
            let resp = half_close(request);
            assert!(resp.starts_with(want), "{name}, round {round}: {resp:?}");
        }
        bystander.check(name);
    }
    // A WebSocket client's close frame and FIN together: the close reply
    // still comes.
    for round in 0..ROUNDS {
        let mut s = raw_ws(server.addr, "/echo");
        s.write_all(&masked(true, 8, &1000u16.to_be_bytes()))
            .unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        assert_eq!(resp, [0x88, 2, 0x03, 0xE8], "round {round}");
    }
    bystander.check("after the half-closes");
    wait_connections(&server, 2);
    mem.report(&server, "half-close");
}
