//! `--deflate` against a permessage-deflate server written here (std
//! sockets, a thread per connection, flate2), so the generator is tested on
//! whatever a server may answer: `/echo` sends every message back,
//! `/broadcast` sends it to every `/broadcast` connection; both compress
//! for the connections that negotiated the extension and inflate what
//! arrives compressed, with the window the answer granted the client. Then
//! against ringcast itself (embedded), compression on and off.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use common::load;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::Value;

const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];
const RESETS: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[derive(Default)]
struct Seen {
    /// Each upgrade's path and its Sec-WebSocket-Extensions ("" if none).
    offers: Mutex<Vec<(String, String)>>,
    /// Data frames received compressed and plain.
    compressed: AtomicU64,
    plain: AtomicU64,
}

/// The `/broadcast` connections, and whether each negotiated deflate.
type Subs = Mutex<Vec<(Arc<Mutex<TcpStream>>, bool)>>;

struct Fake {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

/// A server answering an offer with `answer` (none: the extension is not
/// granted). Lives until the test process ends.
fn fake(answer: Option<&'static str>) -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let subs: Arc<Subs> = Arc::default();
    let s = seen.clone();
    thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let (seen, subs) = (s.clone(), subs.clone());
            thread::spawn(move || {
                let _ = serve(conn, answer, &seen, &subs);
            });
        }
    });
    Fake { addr, seen }
}

/// The client window an answer grants (`client_max_window_bits=N`).
fn client_window(answer: &str) -> u8 {
    answer
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("client_max_window_bits="))
        .find_map(|v| v.parse().ok())
        .unwrap_or(15)
}

fn serve(mut s: TcpStream, answer: Option<&str>, seen: &Seen, subs: &Subs) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    let offer = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    seen.offers
        .lock()
        .unwrap()
        .push((path.clone(), offer.clone()));
    let granted = answer.filter(|_| offer.starts_with("permessage-deflate"));
    let mut resp =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            .to_string();
    if let Some(a) = granted {
        resp.push_str(&format!("Sec-WebSocket-Extensions: {a}\r\n"));
    }
    resp.push_str("\r\n");
    s.write_all(resp.as_bytes())?;
    let me = Arc::new(Mutex::new(s.try_clone()?));
    if path == "/broadcast" {
        subs.lock().unwrap().push((me.clone(), granted.is_some()));
    }
    let mut inflate = Decompress::new_with_window_bits(false, granted.map_or(15, client_window));
    loop {
        while let Some((fin_op, payload, used)) = client_frame(&buf) {
            buf.drain(..used);
            let (rsv1, op) = (fin_op & 0x40 != 0, fin_op & 0x0F);
            if op == 8 {
                let _ = me.lock().unwrap().write_all(&frame(0x88, &payload));
                return Ok(());
            }
            if op != 1 && op != 2 {
                continue;
            }
            let message = if rsv1 {
                seen.compressed.fetch_add(1, Ordering::Relaxed);
                inflate.reset(false);
                let mut input = payload;
                input.extend_from_slice(&TAIL);
                inflate_strictly(&mut inflate, &input)
            } else {
                seen.plain.fetch_add(1, Ordering::Relaxed);
                payload
            };
            let plain = frame(0x80 | op, &message);
            let packed = frame(0xC0 | op, &compress(&message));
            if path == "/broadcast" {
                for (sub, deflate) in subs.lock().unwrap().iter() {
                    let _ = sub
                        .lock()
                        .unwrap()
                        .write_all(if *deflate { &packed } else { &plain });
                }
            } else {
                me.lock()
                    .unwrap()
                    .write_all(if granted.is_some() { &packed } else { &plain })?;
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Inflates `input` 64 bytes of output at a time, so back-references
/// resolve through the inflater's own window (one call into a large
/// buffer would resolve them in the buffer, whatever the window): a
/// distance past the granted window is an error, as in a real server.
fn inflate_strictly(d: &mut Decompress, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let at = d.total_in() as usize;
        let mut piece = Vec::with_capacity(64);
        d.decompress_vec(&input[at..], &mut piece, FlushDecompress::Sync)
            .expect("the client's message inflates within the granted window");
        let full = piece.len() == piece.capacity();
        out.extend_from_slice(&piece);
        if d.total_in() as usize == input.len() && !full {
            return out;
        }
    }
}

/// A complete masked client frame at the start of `b`: (first byte,
/// unmasked payload, bytes used).
fn client_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (len, mut at) = match b[1] & 0x7F {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    at += 4;
    let payload = b.get(at..at + len)?;
    let unmasked = payload
        .iter()
        .enumerate()
        .map(|(i, x)| x ^ mask[i & 3])
        .collect();
    Some((b[0], unmasked, at + len))
}

fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    match payload.len() {
        n @ 0..=125 => f.push(n as u8),
        n @ 126..=0xFFFF => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// One message as a fresh raw deflate stream, sync tail removed.
fn compress(message: &[u8]) -> Vec<u8> {
    let mut c = Compress::new_with_window_bits(Compression::default(), false, 15);
    let mut out = Vec::with_capacity(message.len() + 64);
    c.compress_vec(message, &mut out, FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    out
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn echo_compresses_both_ways_and_verifies_the_inflated_replies() {
    let srv = fake(Some(RESETS));
    let addr = srv.addr.to_string();
    let j = load(&[
        "echo",
        "--addr",
        &addr,
        "--deflate",
        "--payload",
        "json",
        "--size",
        "1024",
        "--conns",
        "3",
        "--in-flight",
        "2",
        "--threads",
        "1",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
    ]);
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["deflate"], true);
    assert_eq!(j["payload"], "json");
    assert_eq!(j["extension"], RESETS);
    let count = j["count"].as_u64().unwrap();
    assert!(count > 0, "{j}");
    let w = &j["wire"];
    // Every reply came compressed and inflated to the message sent.
    assert_eq!(w["compressed"].as_u64(), Some(count), "{j}");
    assert_eq!(w["plain"], 0, "{j}");
    assert_eq!(w["mismatches"], 0, "{j}");
    assert_eq!(f(&w["inflated_per_msg"]), 1024.0, "{j}");
    assert!(f(&w["payload_per_msg"]) < 1024.0, "{j}");
    assert!(f(&w["compressed_ratio"]) > 1.2, "{j}");
    assert!(f(&w["read_per_msg"]) >= f(&w["payload_per_msg"]), "{j}");
    // ... and every message the clients sent was compressed too.
    assert!(
        j["client_compressed"]["wire"].as_u64().unwrap() < 1024,
        "{j}"
    );
    assert!(srv.seen.compressed.load(Ordering::Relaxed) >= count);
    assert_eq!(srv.seen.plain.load(Ordering::Relaxed), 0);
    for (path, offer) in srv.seen.offers.lock().unwrap().iter() {
        assert_eq!(path, "/echo");
        assert_eq!(offer, "permessage-deflate; client_max_window_bits");
    }
}

#[test]
fn a_limited_client_window_is_honoured() {
    // 9 bits: the server's inflater reads back at most 512 bytes, which a
    // 1 KB message compressed with the default 32 KiB window exceeds.
    let srv = fake(Some(
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=9",
    ));
    let addr = srv.addr.to_string();
    let j = load(&[
        "echo",
        "--addr",
        &addr,
        "--deflate",
        "--payload",
        "json",
        "--size",
        "1024",
        "--conns",
        "2",
        "--in-flight",
        "1",
        "--threads",
        "1",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
    ]);
    assert_eq!(j["errors"], 0, "{j}");
    assert!(j["count"].as_u64().unwrap() > 0, "{j}");
    assert!(srv.seen.compressed.load(Ordering::Relaxed) > 0);
    assert_eq!(j["wire"]["mismatches"], 0, "{j}");
}

#[test]
fn broadcast_subscribers_inflate_and_count_wire_bytes() {
    let srv = fake(Some(RESETS));
    let addr = srv.addr.to_string();
    let common = [
        "broadcast",
        "--addr",
        &addr,
        "--payload",
        "json",
        "--size",
        "1024",
        "--conns",
        "6",
        "--rate",
        "100",
        "--threads",
        "2",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
    ];
    let mut with = common.to_vec();
    with.push("--deflate");
    let j = load(&with);
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["loss"], 0, "{j}");
    let count = j["count"].as_u64().unwrap();
    assert!(count > 0, "{j}");
    let w = &j["wire"];
    assert_eq!(w["compressed"].as_u64(), Some(count), "{j}");
    assert_eq!(f(&w["inflated_per_msg"]), 1024.0, "{j}");
    assert!(f(&w["payload_per_msg"]) < 1024.0 / 1.2, "{j}");
    // The latency stamp survived the compression.
    assert_eq!(j["latency_us"]["samples"].as_u64(), Some(count), "{j}");
    // One publication reaches 3 subscribers per thread as the same bytes:
    // inflated once, found again for the others.
    let (decoded, reused) = (
        w["inflated_decoded"].as_u64().unwrap(),
        w["inflated_reused"].as_u64().unwrap(),
    );
    assert!(decoded + reused >= count, "{j}");
    assert!(reused >= decoded, "{j}");
    assert!(f(&w["read_per_msg"]) > f(&w["payload_per_msg"]), "{j}");
    // Subscribers offered the extension; the publisher (which only sends)
    // did not, and sent plain JSON.
    let offers = srv.seen.offers.lock().unwrap().clone();
    assert_eq!(offers.len(), 7, "{offers:?}");
    assert_eq!(offers.iter().filter(|(_, o)| o.is_empty()).count(), 1);
    assert_eq!(srv.seen.compressed.load(Ordering::Relaxed), 0);

    // Without --deflate: nothing offered, everything plain and the same
    // bytes per delivery on the wire as inflated.
    let plain = fake(Some(RESETS));
    let addr = plain.addr.to_string();
    let mut without = common.to_vec();
    without[2] = &addr;
    let j = load(&without);
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["deflate"], false);
    assert_eq!(j["extension"], Value::Null);
    let w = &j["wire"];
    assert_eq!(w["compressed"], 0, "{j}");
    assert_eq!(w["plain"], j["count"], "{j}");
    assert_eq!(f(&w["payload_per_msg"]), 1024.0, "{j}");
    assert_eq!(w["compressed_ratio"], Value::Null, "{j}");
}

#[test]
fn a_server_that_does_not_grant_deflate_fails_the_run_naming_its_answer() {
    for (answer, expect) in [
        (None, "no Sec-WebSocket-Extensions"),
        (Some("permessage-deflate"), "context takeover"),
    ] {
        let srv = fake(answer);
        let addr = srv.addr.to_string();
        let out = common::run(&[
            "idle",
            "--addr",
            &addr,
            "--deflate",
            "--conns",
            "3",
            "--duration",
            "0.2",
            "--warmup",
            "0.1",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{answer:?} accepted");
        assert!(
            err.contains("did not grant permessage-deflate") || err.contains(expect),
            "{err}"
        );
        assert!(err.contains(expect), "{answer:?}: {err}");
    }
}

// ----- against ringcast itself ----------------------------------------------

/// An in-process ringcast on an ephemeral loopback port, one core.
fn ringcast(extra: &[&str]) -> ringcast::Server {
    let mut args = vec!["ringcast", "--listen", "127.0.0.1:0", "--cores", "1"];
    args.extend_from_slice(extra);
    let cfg = ringcast::Config::from_args_and_file(args.clone())
        .unwrap_or_else(|e| panic!("config {args:?}: {e}"));
    ringcast::Server::start(&cfg).unwrap_or_else(|e| panic!("start {args:?}: {e}"))
}

#[test]
fn ringcast_echo_and_a_channel_compressed_end_to_end() {
    let srv = ringcast(&["--compression", "on", "--compression-min-bytes", "256"]);
    let addr = srv.local_addr().to_string();
    let j = load(&[
        "echo",
        "--addr",
        &addr,
        "--deflate",
        "--payload",
        "json",
        "--size",
        "1024",
        "--conns",
        "2",
        "--in-flight",
        "2",
        "--threads",
        "1",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
    ]);
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(
        j["extension"],
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    let count = j["count"].as_u64().unwrap();
    assert!(count > 0, "{j}");
    assert_eq!(j["wire"]["compressed"].as_u64(), Some(count), "{j}");
    assert_eq!(j["wire"]["mismatches"], 0, "{j}");

    // A channel: JSON publications compressed once, inflated by every
    // subscriber, offsets consecutive.
    let j = load(&[
        "broadcast",
        "--addr",
        &addr,
        "--deflate",
        "--payload",
        "json",
        "--size",
        "1024",
        "--channel",
        "bench",
        "--conns",
        "5",
        "--rate",
        "100",
        "--threads",
        "1",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
    ]);
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["loss"], 0, "{j}");
    assert_eq!(j["gaps"], 0, "{j}");
    assert_eq!(j["reorders"], 0, "{j}");
    let count = j["count"].as_u64().unwrap();
    assert!(count > 0, "{j}");
    assert_eq!(j["wire"]["compressed"].as_u64(), Some(count), "{j}");
    assert_eq!(j["latency_us"]["samples"].as_u64(), Some(count), "{j}");
    // The delivery wraps the 1 KB body; it shrinks on the wire.
    assert!(f(&j["wire"]["inflated_per_msg"]) > 1024.0, "{j}");
    assert!(
        f(&j["wire"]["payload_per_msg"]) < f(&j["wire"]["inflated_per_msg"]),
        "{j}"
    );
    let stats = srv.shutdown().unwrap();
    // The server inflated the echo clients' messages and compressed.
    assert!(stats.iter().map(|s| s.deflate.inflated).sum::<u64>() > 0);
    assert!(stats.iter().map(|s| s.deflate.compressed).sum::<u64>() > 0);
}

#[test]
fn ringcast_with_compression_off_fails_a_deflate_run() {
    let srv = ringcast(&["--compression", "off"]);
    let addr = srv.local_addr().to_string();
    let out = common::run(&[
        "echo",
        "--addr",
        &addr,
        "--deflate",
        "--conns",
        "2",
        "--duration",
        "0.2",
        "--warmup",
        "0.1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("did not grant permessage-deflate"), "{err}");
    // Without --deflate the same server is fine, and nothing is compressed.
    let j = load(&[
        "echo",
        "--addr",
        &addr,
        "--payload",
        "json",
        "--size",
        "1024",
        "--conns",
        "2",
        "--duration",
        "0.2",
        "--warmup",
        "0.1",
    ]);
    assert_eq!(j["errors"], 0, "{j}");
    assert_eq!(j["wire"]["compressed"], 0, "{j}");
    assert_eq!(f(&j["wire"]["payload_per_msg"]), 1024.0, "{j}");
    srv.shutdown().unwrap();
}
