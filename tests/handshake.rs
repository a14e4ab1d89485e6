//! Opening-handshake refusals: exact statuses, the socket closed after the
//! response, and nobody else affected.

mod common;

use common::{client, http_exchange, upgrade_request, Server};
use tungstenite::Message;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn req(path: &str, edit: impl Fn(String) -> String) -> Vec<u8> {
    edit(upgrade_request(path)).into_bytes()
}

#[test]
fn each_bad_request_gets_its_status_and_the_socket_is_closed() {
    let server = Server::spawn(&["--log", "debug"]);
    let a = server.addr;
    // A well-behaved client connected throughout.
    let mut ws = client(&server.url("/echo"));

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("POST", req("/echo", |r| r.replacen("GET", "POST", 1)), 405),
        ("PUT", req("/echo", |r| r.replacen("GET", "PUT", 1)), 405),
        (
            "no Upgrade",
            req("/echo", |r| r.replace("Upgrade: websocket\r\n", "")),
            400,
        ),
        (
            "Upgrade: h2c",
            req("/echo", |r| r.replace("Upgrade: websocket", "Upgrade: h2c")),
            400,
        ),
        (
            "no Connection",
            req("/echo", |r| r.replace("Connection: Upgrade\r\n", "")),
            400,
        ),
        (
            "Connection: close",
            req("/echo", |r| {
                r.replace("Connection: Upgrade", "Connection: close")
            }),
            400,
        ),
        (
            "no key",
            req("/echo", |r| {
                r.replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "")
            }),
            400,
        ),
        (
            "8-byte key",
            req("/echo", |r| r.replace(KEY, "c2hvcnRrZXk=")),
            400,
        ),
        (
            "non-base64 key",
            req("/echo", |r| r.replace(KEY, "not base64 at all!!!!!!!")),
            400,
        ),
        (
            "version 8",
            req("/echo", |r| r.replace("Version: 13", "Version: 8")),
            426,
        ),
        (
            "no version",
            req("/echo", |r| r.replace("Sec-WebSocket-Version: 13\r\n", "")),
            426,
        ),
        ("unknown path", req("/nowhere", |r| r), 404),
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
        (
            "head over 8 KiB",
            req("/echo", |r| {
                r.replace(
                    "Host: localhost\r\n",
                    &format!("Host: localhost\r\nX-Pad: {}\r\n", "p".repeat(9000)),
                )
            }),
            431,
        ),
    ];
    for (name, bytes, want) in cases {
        let (status, resp) = http_exchange(a, &bytes);
        assert_eq!(status, want, "{name}: {resp}");
        assert!(resp.contains("Connection: close\r\n"), "{name}: {resp}");
        if want == 426 {
            assert!(
                resp.contains("Sec-WebSocket-Version: 13\r\n"),
                "{name}: {resp}"
            );
        }
        if want == 405 {
            assert!(resp.contains("Allow: GET\r\n"), "{name}: {resp}");
        }
        // The other client is unaffected.
        ws.send(Message::text(name)).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(name));
    }
    drop(ws);
    let (_, log) = server.stop();
    for status in [405, 400, 426, 404, 431] {
        let needle = format!("status={status}");
        assert!(
            log.lines()
                .any(|l| l.contains("handshake refused") && l.contains(&needle)),
            "no debug line for {status}:\n{log}"
        );
    }
}

#[test]
fn max_header_bytes_flag_is_enforced() {
    let server = Server::start(&["--max-header-bytes", "1024"]);
    let big = req("/echo", |r| {
        r.replace(
            "Host: localhost\r\n",
            &format!("Host: localhost\r\nX-Pad: {}\r\n", "p".repeat(1100)),
        )
    });
    assert_eq!(http_exchange(server.addr, &big).0, 431);
    // A head that arrives in many small pieces is bounded the same way.
    let mut s = common::tcp(server.addr);
    use std::io::{Read, Write};
    for chunk in big.chunks(100) {
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 431 "));
    // A normal request still fits.
    let mut ws = client(&server.url("/echo"));
    ws.send(Message::text("ok")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("ok"));
}

#[test]
fn upgrade_request_in_pieces_and_frames_pipelined_behind_it() {
    use std::io::Write;
    let server = Server::start(&[]);
    let mut s = common::tcp(server.addr);
    let mut bytes = upgrade_request("/echo").into_bytes();
    // A frame in the same write as the end of the head.
    bytes.extend(common::masked(true, 1, b"pipelined"));
    for chunk in bytes.chunks(9) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let head = common::read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let (fin, op, payload) = common::read_frame(&mut s).unwrap();
    assert!(fin);
    assert_eq!(op, 1);
    assert_eq!(payload, b"pipelined");
}

#[test]
fn an_unfinished_request_head_is_dropped_at_the_handshake_timeout() {
    use std::io::{Read, Write};
    let server = Server::start(&["--handshake-timeout", "0.3"]);
    let mut s = common::tcp(server.addr);
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").unwrap();
    // The server closes the connection without a response; read() returns
    // 0 (or a reset) well within the test's patience.
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "unexpected response: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connection was not closed: {e}"),
    }
    // Clients that complete their handshake are unaffected.
    let mut ws = client(&server.url("/echo"));
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("still here"));
}
