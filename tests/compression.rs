//! permessage-deflate (RFC 7692) over real sockets: the negotiation table,
//! compressed echo in every shape, the protocol errors, a deflate bomb, and
//! compress-once fan-out checked through the server's counters.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use common::*;
use ringcast::ws::deflate::{Deflater, Inflater, WindowBits};

const FULL: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

/// Upgrades `path` with `extensions` (whole header lines); returns the
/// stream and the response head.
fn upgrade(addr: SocketAddr, path: &str, extensions: &str) -> (TcpStream, String) {
    let mut s = tcp(addr);
    s.write_all(upgrade_request_with(path, extensions).as_bytes())
        .unwrap();
    let head = read_head(&mut s);
    (s, head)
}

fn offer() -> &'static str {
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
}

/// A connection that negotiated the extension.
fn deflate_ws(addr: SocketAddr, path: &str) -> TcpStream {
    let (s, head) = upgrade(addr, path, offer());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(extension_answer(&head).as_deref(), Some(FULL), "{head}");
    s
}

fn extension_answer(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_string())
    })
}

/// One server frame: (fin, rsv1, opcode, payload).
fn read_any(s: &mut TcpStream) -> (bool, bool, u8, Vec<u8>) {
    use std::io::Read;
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("a frame");
    assert_eq!(h[0] & 0x30, 0, "RSV2/RSV3 set");
    assert_eq!(h[1] & 0x80, 0, "server masked a frame");
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    (h[0] & 0x80 != 0, h[0] & 0x40 != 0, h[0] & 0x0F, p)
}

/// Reads one data message; inflates it if RSV1 is set. Returns (opcode,
/// was compressed, payload).
fn read_message_deflated(s: &mut TcpStream) -> (u8, bool, Vec<u8>) {
    let (fin, rsv1, op, p) = read_any(s);
    assert!(fin, "the server does not fragment");
    let plain = if rsv1 {
        Inflater::new()
            .inflate(&p, 64 << 20)
            .expect("valid deflate")
            .to_vec()
    } else {
        p
    };
    (op, rsv1, plain)
}

fn compress(payload: &[u8]) -> Vec<u8> {
    Deflater::new(6, 1)
        .compress(WindowBits::MAX, payload)
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| {
            // Incompressible: still a valid compressed message (stored).
            let mut c = flate2::Compress::new(flate2::Compression::none(), false);
            let mut out = Vec::with_capacity(payload.len() + 64);
            c.compress_vec(payload, &mut out, flate2::FlushCompress::Sync)
                .unwrap();
            out.truncate(out.len() - 4);
            out
        })
}

/// A masked frame with RSV1 set.
fn compressed_frame(fin: bool, opcode: u8, data: &[u8]) -> Vec<u8> {
    frame(fin, 4, opcode, data, Some(MASK))
}

fn chat_json(n: usize) -> String {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"user\":\"user{}\",\"text\":\"message number {i} in the room\",\"ts\":{}}},",
            i % 7,
            1_700_000_000 + i * 13
        ));
        i += 1;
    }
    // Valid JSON of at least `n` bytes: the last comma becomes the `]`.
    s.pop();
    s.push(']');
    s
}

fn counter(server: &impl Running, name: &str, label: Option<(&str, &str)>) -> f64 {
    metric_sum(&scrape(server), name, label)
}

#[test]
fn negotiation_table_over_the_wire() {
    let server = Server::start(&[]);
    let off = Server::start(&["--compression", "off"]);
    enum Want {
        Agreed(&'static str),
        Without,
        BadRequest,
    }
    use Want::*;
    let h = |v: &str| format!("Sec-WebSocket-Extensions: {v}\r\n");
    let cases: Vec<(String, Want)> = vec![
        (String::new(), Without),
        (h("permessage-deflate"), Agreed(FULL)),
        (h("permessage-deflate; client_max_window_bits"), Agreed(FULL)),
        (
            h("permessage-deflate; client_no_context_takeover; server_no_context_takeover"),
            Agreed(FULL),
        ),
        (
            h("permessage-deflate; server_max_window_bits=10; client_max_window_bits=12"),
            Agreed(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10",
            ),
        ),
        // Declined offers: the next is taken, or the extension is left out.
        (h("permessage-deflate; server_max_window_bits=8"), Without),
        (
            h("permessage-deflate; server_max_window_bits=8, permessage-deflate"),
            Agreed(FULL),
        ),
        (h("permessage-deflate; server_max_window_bits=16"), Without),
        (h("permessage-deflate; no_such_param"), Without),
        (
            h("permessage-deflate; client_max_window_bits; client_max_window_bits"),
            Without,
        ),
        (h("x-webkit-deflate-frame"), Without),
        (h("x-foo") + &h("permessage-deflate"), Agreed(FULL)),
        // Not an extension list: refused.
        (h("permessage-deflate;"), BadRequest),
        (h("permessage-deflate; server_max_window_bits=\"10"), BadRequest),
        (h("permessage-deflate client_max_window_bits"), BadRequest),
    ];
    for (extra, want) in &cases {
        let (mut s, head) = upgrade(server.addr, "/echo", extra);
        match want {
            Agreed(answer) => {
                assert!(head.starts_with("HTTP/1.1 101 "), "{extra:?}: {head}");
                assert_eq!(
                    extension_answer(&head).as_deref(),
                    Some(*answer),
                    "{extra:?}"
                );
            }
            Without => {
                assert!(head.starts_with("HTTP/1.1 101 "), "{extra:?}: {head}");
                assert_eq!(extension_answer(&head), None, "{extra:?}: {head}");
                // Without the extension RSV1 is a protocol error.
                s.write_all(&compressed_frame(true, 1, &compress(b"hello")))
                    .unwrap();
                assert_eq!(expect_close(&mut s), 1002, "{extra:?}");
            }
            BadRequest => {
                assert!(head.starts_with("HTTP/1.1 400 "), "{extra:?}: {head}");
            }
        }
    }
    // `--compression off`: every offer is answered without the extension.
    let (mut s, head) = upgrade(off.addr, "/echo", &h("permessage-deflate"));
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(extension_answer(&head), None, "{head}");
    s.write_all(&compressed_frame(true, 2, &compress(&[7; 300])))
        .unwrap();
    assert_eq!(expect_close(&mut s), 1002);
    // The tungstenite client (no deflate) is unaffected.
    let mut ws = client(&server.ws_url("/echo"));
    ws.send(tungstenite::Message::text("plain")).unwrap();
    assert_eq!(read_message(&mut ws).into_text().unwrap(), "plain");
}

#[test]
fn compressed_echo_in_every_shape() {
    let server = Server::start(&[]);
    let mut s = deflate_ws(server.addr, "/echo");
    let text = chat_json(4000);
    // Compressed text: the echo comes back compressed.
    s.write_all(&compressed_frame(true, 1, &compress(text.as_bytes())))
        .unwrap();
    let (op, rsv1, got) = read_message_deflated(&mut s);
    assert_eq!((op, rsv1), (1, true));
    assert_eq!(got, text.as_bytes());
    // Binary, compressed.
    let bin: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8 / 16).collect();
    s.write_all(&compressed_frame(true, 2, &compress(&bin)))
        .unwrap();
    let (op, rsv1, got) = read_message_deflated(&mut s);
    assert_eq!((op, rsv1), (2, true));
    assert_eq!(got, bin);
    // Fragmented: RSV1 on the first frame only; the compressed bytes are
    // split anywhere.
    let packed = compress(text.as_bytes());
    let (a, rest) = packed.split_at(packed.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut wire = compressed_frame(false, 1, a);
    wire.extend(masked(false, 0, b));
    wire.extend(masked(false, 0, &[])); // an empty continuation
    wire.extend(masked(true, 0, c));
    // Split across writes too, byte by byte for the headers' sake.
    for chunk in wire.chunks(7) {
        s.write_all(chunk).unwrap();
    }
    let (op, rsv1, got) = read_message_deflated(&mut s);
    assert_eq!((op, rsv1), (1, true));
    assert_eq!(got, text.as_bytes());
    // Under --compression-min-bytes (256): answered plain.
    s.write_all(&compressed_frame(true, 1, &compress(b"{\"small\":true}")))
        .unwrap();
    let (op, rsv1, got) = read_message_deflated(&mut s);
    assert_eq!((op, rsv1, &got[..]), (1, false, &b"{\"small\":true}"[..]));
    // An uncompressed message on a deflate connection is fine, and its
    // echo is compressed (it is large).
    s.write_all(&masked(true, 1, text.as_bytes())).unwrap();
    let (_, rsv1, got) = read_message_deflated(&mut s);
    assert!(rsv1);
    assert_eq!(got, text.as_bytes());
    // An empty compressed message.
    s.write_all(&compressed_frame(true, 2, &[0x00])).unwrap();
    let (op, _, got) = read_message_deflated(&mut s);
    assert_eq!((op, got.len()), (2, 0));
    // Pings are never compressed and still answered.
    s.write_all(&masked(true, 9, b"p")).unwrap();
    let (_, rsv1, op, p) = read_any(&mut s);
    assert_eq!((rsv1, op, &p[..]), (false, 10, &b"p"[..]));
    s.write_all(&masked(true, 8, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(expect_close(&mut s), 1000);
    let inflated = counter(&server, "ringcast_deflate_inflated_total", None);
    assert_eq!(inflated, 5.0);
    assert_eq!(
        counter(
            &server,
            "ringcast_deflate_in_bytes_total",
            Some(("form", "plain"))
        ),
        (2 * text.len() + bin.len() + 14) as f64
    );
    assert!(counter(&server, "ringcast_deflate_compressed_total", None) >= 4.0);
}

#[test]
fn compression_protocol_errors_close_with_the_right_code() {
    let server = Server::start(&[]);
    let packed = compress(b"ping payload");
    let invalid_utf8 = compress(&[b'a', 0xC3, 0x28, b'b']);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "RSV1 on a ping",
            compressed_frame(true, 9, &packed[..5]),
            1002,
        ),
        (
            "RSV1 on a close",
            compressed_frame(true, 8, &[3, 232]),
            1002,
        ),
        (
            "RSV1 on a continuation",
            {
                let mut v = masked(false, 1, b"plain start");
                v.extend(compressed_frame(true, 0, &packed));
                v
            },
            1002,
        ),
        (
            "not deflate data",
            compressed_frame(true, 2, &[0xFF; 40]),
            1007,
        ),
        (
            "invalid UTF-8 once inflated",
            compressed_frame(true, 1, &invalid_utf8),
            1007,
        ),
    ];
    for (what, wire, code) in cases {
        let mut s = deflate_ws(server.addr, "/echo");
        s.write_all(&wire).unwrap();
        assert_eq!(expect_close(&mut s), code, "{what}");
    }
    // Nobody else noticed.
    let mut s = deflate_ws(server.addr, "/echo");
    s.write_all(&compressed_frame(
        true,
        1,
        &compress(chat_json(500).as_bytes()),
    ))
    .unwrap();
    assert_eq!(read_message_deflated(&mut s).2, chat_json(500).as_bytes());
}

#[test]
fn a_deflate_bomb_is_closed_with_1009_and_costs_no_memory() {
    let server = Server::spawn(&["--max-message-bytes", "1048576", "--cores", "1"]);
    // 10 MB of zeros compress to about 10 KB.
    let bomb = compress(&vec![0u8; 10 << 20]);
    assert!(bomb.len() < 20_000, "{} bytes", bomb.len());
    let mut bystander = deflate_ws(server.addr, "/echo");
    let warm = || {
        let mut s = deflate_ws(server.addr, "/echo");
        s.write_all(&compressed_frame(true, 2, &compress(&vec![1u8; 900_000])))
            .unwrap();
        assert_eq!(read_message_deflated(&mut s).2.len(), 900_000);
    };
    // Once at full size, so the baseline includes what a legitimate
    // message at the limit costs.
    warm();
    let before = rss_bytes(&server);
    for round in 0..8 {
        let mut s = deflate_ws(server.addr, "/echo");
        s.write_all(&compressed_frame(true, 2, &bomb)).unwrap();
        assert_eq!(expect_close(&mut s), 1009, "round {round}");
        // Fragmented, too: the limit holds across frames.
        let mut s = deflate_ws(server.addr, "/echo");
        let (a, b) = bomb.split_at(bomb.len() / 2);
        let mut wire = compressed_frame(false, 2, a);
        wire.extend(masked(true, 0, b));
        s.write_all(&wire).unwrap();
        assert_eq!(expect_close(&mut s), 1009, "round {round}, fragmented");
    }
    let after = rss_bytes(&server);
    // 16 bombs of 10 MB each: memory stays within 4 MiB of where it was.
    assert!(
        after < before + (4 << 20),
        "RSS grew from {before} to {after} bytes"
    );
    bystander
        .write_all(&compressed_frame(
            true,
            1,
            &compress(chat_json(2000).as_bytes()),
        ))
        .unwrap();
    assert_eq!(
        read_message_deflated(&mut bystander).2,
        chat_json(2000).as_bytes()
    );
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn a_publication_is_compressed_once_for_all_its_subscribers() {
    // One core, so every subscriber is on the core that compresses.
    let server = Server::start(&["--cores", "1"]);
    let mut zipped: Vec<TcpStream> = (0..20)
        .map(|_| deflate_ws(server.addr, "/broadcast"))
        .collect();
    let mut plain: Vec<TcpStream> = (0..5).map(|_| raw_ws(server.addr, "/broadcast")).collect();
    // Subscribed once the server answered something on each: a broadcast
    // from a plain client round-trips to itself.
    let mut publisher = raw_ws(server.addr, "/broadcast");
    let before = counter(&server, "ringcast_deflate_compressed_total", None);
    let msgs: Vec<String> = (0..10).map(|i| chat_json(1000 + i * 10)).collect();
    for m in &msgs {
        publisher.write_all(&masked(true, 1, m.as_bytes())).unwrap();
    }
    for s in zipped.iter_mut() {
        for m in &msgs {
            let (op, rsv1, got) = read_message_deflated(s);
            assert_eq!((op, rsv1), (1, true));
            assert_eq!(got, m.as_bytes());
        }
    }
    for s in plain.iter_mut().chain(std::iter::once(&mut publisher)) {
        for m in &msgs {
            let (_, rsv1, _, got) = read_any(s);
            assert!(!rsv1, "a client without the extension gets plain frames");
            assert_eq!(got, m.as_bytes());
        }
    }
    let compressed = counter(&server, "ringcast_deflate_compressed_total", None) - before;
    assert_eq!(compressed, 10.0, "once per publication, not per subscriber");
    assert_eq!(counter(&server, "ringcast_deflate_sent_total", None), 200.0);
    let wire = counter(
        &server,
        "ringcast_deflate_sent_bytes_total",
        Some(("form", "compressed")),
    );
    let unzipped = counter(
        &server,
        "ringcast_deflate_sent_bytes_total",
        Some(("form", "plain")),
    );
    assert!(
        wire * 3.0 < unzipped,
        "{wire} compressed vs {unzipped} plain"
    );

    // A channel publication: the same, through /ws.
    let mut subs: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut s = deflate_ws(server.addr, "/ws");
            read_message_deflated(&mut s); // welcome
            let sub = format!("{{\"type\":\"subscribe\",\"channel\":\"room\",\"id\":{i}}}");
            s.write_all(&masked(true, 1, sub.as_bytes())).unwrap();
            let (_, _, ack) = read_message_deflated(&mut s);
            assert!(String::from_utf8_lossy(&ack).contains("\"ack\""));
            s
        })
        .collect();
    let before = counter(&server, "ringcast_deflate_compressed_total", None);
    let payload = chat_json(1500);
    let publish =
        format!("{{\"type\":\"publish\",\"channel\":\"room\",\"id\":9,\"payload\":{payload}}}");
    subs[0]
        .write_all(&masked(true, 1, publish.as_bytes()))
        .unwrap();
    for s in subs.iter_mut() {
        // The publisher's ack may come first.
        let (rsv1, v) = loop {
            let (_, rsv1, got) = read_message_deflated(s);
            let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
            if v["type"] != "ack" {
                break (rsv1, v);
            }
        };
        assert!(rsv1, "{v}");
        assert_eq!(v["type"], "message");
        assert_eq!(
            v["payload"],
            serde_json::from_str::<serde_json::Value>(&payload).unwrap()
        );
    }
    let compressed = counter(&server, "ringcast_deflate_compressed_total", None) - before;
    assert_eq!(compressed, 1.0, "one compression for three subscribers");
}

#[test]
fn a_recovered_history_is_compressed_once_for_every_recovering_client() {
    let server = Server::start(&["--cores", "1"]);
    let mut publisher = deflate_ws(server.addr, "/ws");
    read_message_deflated(&mut publisher); // welcome
    let payloads: Vec<String> = (0..5).map(|i| chat_json(900 + 50 * i)).collect();
    let mut epoch = String::new();
    for (i, p) in payloads.iter().enumerate() {
        let publish =
            format!("{{\"type\":\"publish\",\"channel\":\"hist\",\"id\":{i},\"payload\":{p}}}");
        publisher
            .write_all(&masked(true, 1, publish.as_bytes()))
            .unwrap();
        let (_, _, ack) = read_message_deflated(&mut publisher);
        let ack: serde_json::Value = serde_json::from_slice(&ack).unwrap();
        assert_eq!(ack["type"], "ack", "{ack}");
        epoch = ack["epoch"].as_str().unwrap().to_string();
    }
    let before = counter(&server, "ringcast_deflate_compressed_total", None);
    for client in 0..4 {
        let mut s = deflate_ws(server.addr, "/ws");
        read_message_deflated(&mut s); // welcome
        let sub = format!(
            "{{\"type\":\"subscribe\",\"channel\":\"hist\",\"id\":1,\"since\":{{\"epoch\":\"{epoch}\",\"offset\":0}}}}"
        );
        s.write_all(&masked(true, 1, sub.as_bytes())).unwrap();
        let (_, _, ack) = read_message_deflated(&mut s);
        let ack: serde_json::Value = serde_json::from_slice(&ack).unwrap();
        assert_eq!(ack["recovered"], true, "client {client}: {ack}");
        for (i, p) in payloads.iter().enumerate() {
            let (_, rsv1, got) = read_message_deflated(&mut s);
            assert!(rsv1, "client {client}, publication {i} replayed compressed");
            let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
            assert_eq!(v["offset"], i + 1);
            assert_eq!(
                v["payload"],
                serde_json::from_str::<serde_json::Value>(p).unwrap()
            );
        }
    }
    let compressed = counter(&server, "ringcast_deflate_compressed_total", None) - before;
    assert_eq!(
        compressed, 5.0,
        "each replayed publication compressed once, not per client"
    );
}
