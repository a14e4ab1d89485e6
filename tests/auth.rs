//! Who may connect, over real sockets: HS256 tokens on the upgrade (query
//! or `Authorization: Bearer`), the token's channel claims on `/ws`, the
//! `Origin` allow-list, and the counters they leave in `/metrics`.

mod common;

use common::{
    check_offset_ack, client, handshakes, http_body, http_exchange, masked, metric_sum, read_frame,
    read_head, recv_json, recv_text, scrape, send_json, tcp, try_client_with, try_ws_client_with,
    upgrade_request, upgrade_request_with, ws_client, Server,
};
use ringcast::internals::auth::{sign, Claims};
use serde_json::json;
use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};
use tungstenite::Message;

const SECRET: &str = "integration-test-secret-0123456789abcdef";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(secret: &str, exp: u64, channels: Option<&[&str]>) -> String {
    sign(secret.as_bytes(), &claims(exp, channels))
}

fn claims(exp: u64, channels: Option<&[&str]>) -> Claims {
    Claims {
        sub: "user-1".into(),
        exp,
        nbf: None,
        channels: channels.map(|c| c.iter().map(|s| s.to_string()).collect()),
    }
}

fn echo_once(ws: &mut common::Ws, text: &str) {
    ws.send(Message::text(text)).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text(text));
}

#[test]
fn valid_token_upgrades_via_query_or_bearer() {
    let server = Server::start(&["--cores", "2", "--auth-secret", SECRET]);
    let t = token(SECRET, now() + 3600, None);

    let mut by_query = client(&server.url(&format!("/echo?token={t}")));
    echo_once(&mut by_query, "via query");

    let bearer = format!("Bearer {t}");
    let mut by_header = try_client_with(&server.url("/echo"), &[("Authorization", &bearer)])
        .expect("upgrade with a bearer token");
    echo_once(&mut by_header, "via header");

    let m = scrape(&server);
    assert_eq!(handshakes(&m, "upgraded"), 2.0);
    assert_eq!(handshakes(&m, "unauthorized"), 0.0);
    common::close_client(by_query);
    common::close_client(by_header);
}

#[test]
fn bad_or_missing_tokens_get_401_before_the_upgrade() {
    let server = Server::start(&["--cores", "2", "--auth-secret", SECRET]);
    let expired = token(SECRET, now() - 3600, None);
    let forged = token("some-other-secret-0123456789abcdef", now() + 3600, None);
    let cases = [
        (upgrade_request("/echo"), "missing token"),
        (upgrade_request("/broadcast"), "missing token"),
        (upgrade_request("/echo?token=garbage"), "invalid token"),
        (
            upgrade_request_with("/echo", "Authorization: Bearer not.a.jwt\r\n"),
            "invalid token",
        ),
        (
            upgrade_request(&format!("/echo?token={expired}")),
            "token expired",
        ),
        (
            upgrade_request(&format!("/echo?token={forged}")),
            "invalid token",
        ),
    ];
    for (req, reason) in &cases {
        let (status, resp) = http_exchange(server.addr, req.as_bytes());
        assert_eq!(status, 401, "{req}\n{resp}");
        assert_eq!(http_body(&resp), format!("{reason}\n"), "{req}");
        assert!(resp.contains("WWW-Authenticate: Bearer\r\n"), "{resp}");
        assert!(!resp.contains("Sec-WebSocket-Accept"), "{resp}");
    }
    // A real client sees the refusal as an HTTP error.
    match try_client_with(&server.url(&format!("/echo?token={expired}")), &[]) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401, got {:?}", other.map(|_| "a WebSocket")),
    }

    let m = scrape(&server);
    assert_eq!(handshakes(&m, "unauthorized"), (cases.len() + 1) as f64);
    assert_eq!(handshakes(&m, "upgraded"), 0.0);
    assert_eq!(handshakes(&m, "forbidden"), 0.0);
}

/// A browser cannot read the status of a refused upgrade, so on `/ws` a
/// missing or bad token is told with a close code instead: the upgrade
/// completes, no welcome, and the server closes at once with 4001
/// `unauthorized: <reason>`. Frames the client pipelined behind the
/// request are never acted on; the attempt counts as unauthorized.
#[test]
fn ws_without_a_valid_token_is_closed_with_4001() {
    let server = Server::start(&["--cores", "2", "--auth-secret", SECRET]);
    let expired = token(SECRET, now() - 3600, None);
    let forged = token("some-other-secret-0123456789abcdef", now() + 3600, None);
    let not_yet = sign(
        SECRET.as_bytes(),
        &Claims {
            nbf: Some(now() + 3600),
            ..claims(now() + 7200, None)
        },
    );
    let cases = [
        (upgrade_request("/ws"), "missing token"),
        (upgrade_request("/ws?token=garbage"), "invalid token"),
        (
            upgrade_request_with("/ws", &format!("Authorization: Bearer {expired}\r\n")),
            "token expired",
        ),
        (
            upgrade_request_with("/ws", &format!("Authorization: Bearer {forged}\r\n")),
            "invalid token",
        ),
        (
            upgrade_request(&format!("/ws?token={not_yet}")),
            "token not valid yet (nbf)",
        ),
    ];
    for (req, reason) in &cases {
        let mut s = tcp(server.addr);
        let mut bytes = req.clone().into_bytes();
        // A publish pipelined behind the request is not acted on.
        bytes.extend(masked(
            true,
            1,
            br#"{"type":"publish","channel":"x","payload":1,"id":1}"#,
        ));
        s.write_all(&bytes).unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101 "), "{req}\n{head}");
        let (fin, opcode, payload) = read_frame(&mut s).expect("a close frame");
        assert!(fin);
        assert_eq!(opcode, 8, "the first frame is the close, no welcome");
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4001, "{req}");
        assert_eq!(
            std::str::from_utf8(&payload[2..]).unwrap(),
            format!("unauthorized: {reason}"),
            "{req}"
        );
        // The client answers the close; the server then ends the connection.
        s.write_all(&masked(true, 8, &payload[..2])).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "nothing after the close: {rest:?}");
    }
    // tungstenite sees the close code.
    let (mut ws, _) = tungstenite::connect(server.url("/ws?token=garbage")).expect("upgrade");
    match ws.read() {
        Ok(tungstenite::Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 4001);
            assert_eq!(f.reason.as_str(), "unauthorized: invalid token");
        }
        other => panic!("expected a 4001 close, got {other:?}"),
    }
    let m = scrape(&server);
    assert_eq!(handshakes(&m, "unauthorized"), (cases.len() + 1) as f64);
    assert_eq!(handshakes(&m, "upgraded"), 0.0);
    assert_eq!(metric_sum(&m, "ringcast_publishes_total", None), 0.0);
}

/// On `/ws`, a refused origin is told with 4003 after the upgrade (a
/// browser cannot read a 403).
#[test]
fn ws_from_a_refused_origin_is_closed_with_4003() {
    let server = Server::start(&["--cores", "1", "--allowed-origins", "https://good.example"]);
    let req = upgrade_request_with("/ws", "Origin: https://evil.example\r\n");
    let mut s = tcp(server.addr);
    s.write_all(req.as_bytes()).unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101 "));
    let (_, opcode, payload) = read_frame(&mut s).expect("a close frame");
    assert_eq!(opcode, 8, "no welcome");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4003);
    assert_eq!(&payload[2..], b"forbidden: origin not allowed");
    let m = scrape(&server);
    assert_eq!(handshakes(&m, "forbidden"), 1.0);
    assert_eq!(handshakes(&m, "upgraded"), 0.0);
    // Elsewhere the refusal stays a 403.
    let (status, _) = http_exchange(
        server.addr,
        upgrade_request_with("/echo", "Origin: https://evil.example\r\n").as_bytes(),
    );
    assert_eq!(status, 403);
}

/// A `/ws` connection whose token expires while it is open is closed with
/// 4002 `token expired` (checked when its timer fires, at least once per
/// ping interval): the client reconnects with a fresh token.
#[test]
fn ws_is_closed_with_4002_when_its_token_expires() {
    let server = Server::start(&[
        "--cores",
        "1",
        "--auth-secret",
        SECRET,
        "--ping-interval",
        "1",
        "--ping-min",
        "0.5",
    ]);
    // Valid for one more second, plus the verifier's 5 s leeway.
    let t = token(SECRET, now() + 1, None);
    let (mut ws, _) = ws_client(&server.url(&format!("/ws?token={t}")));
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
    }
    loop {
        match common::read_message(&mut ws) {
            tungstenite::Message::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 4002);
                assert_eq!(f.reason.as_str(), "token expired");
                break;
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("expected a 4002 close, got {other:?}"),
        }
    }
    let m = scrape(&server);
    assert_eq!(
        metric_sum(&m, "ringcast_token_expired_closes_total", None),
        1.0
    );
}

#[test]
fn channel_claims_limit_subscribe_and_publish() {
    let server = Server::start(&["--cores", "2", "--auth-secret", SECRET]);
    let t = token(SECRET, now() + 3600, Some(&["chat.*"]));
    let (mut ws, _) = ws_client(&server.url(&format!("/ws?token={t}")));

    send_json(
        &mut ws,
        json!({"type":"subscribe","channel":"chat.room","id":1}),
    );
    let (epoch, offset) = check_offset_ack(&recv_json(&mut ws), Some(1));
    assert_eq!(offset, 0);

    send_json(&mut ws, json!({"type":"subscribe","channel":"news","id":2}));
    let err = recv_json(&mut ws);
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["id"], 2, "{err}");
    assert_eq!(err["code"], "forbidden", "{err}");

    // Still open and answering.
    send_json(&mut ws, json!({"type":"ping","id":3}));
    assert_eq!(recv_json(&mut ws), json!({"type":"pong","id":3}));

    send_json(
        &mut ws,
        json!({"type":"publish","channel":"news","payload":"x","id":4}),
    );
    let err = recv_json(&mut ws);
    assert_eq!((&err["type"], &err["id"]), (&json!("error"), &json!(4)));
    assert_eq!(err["code"], "forbidden", "{err}");

    // Within the claims: the ack and the delivery to itself, in either order.
    send_json(
        &mut ws,
        json!({"type":"publish","channel":"chat.room","payload":{"n":1},"id":5}),
    );
    let mut got = [recv_text(&mut ws), recv_text(&mut ws)];
    // `{"type":"ack"...` sorts before `{"type":"message"...`.
    got.sort();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&got[0]).unwrap(),
        json!({"type":"ack","id":5,"epoch":epoch,"offset":1})
    );
    assert_eq!(
        got[1],
        r#"{"type":"message","channel":"chat.room","offset":1,"payload":{"n":1}}"#
    );

    // A token without `channels` may use any channel.
    let open = token(SECRET, now() + 3600, None);
    let (mut any, _) =
        try_ws_client_with(&server.url(&format!("/ws?token={open}")), &[]).expect("upgrade");
    send_json(
        &mut any,
        json!({"type":"subscribe","channel":"news","id":1}),
    );
    assert_eq!(check_offset_ack(&recv_json(&mut any), Some(1)).1, 0);

    let m = scrape(&server);
    assert_eq!(metric_sum(&m, "ringcast_claims_denied_total", None), 2.0);
    assert_eq!(handshakes(&m, "upgraded"), 2.0);
    assert_eq!(handshakes(&m, "unauthorized"), 0.0);
    common::close_client(ws);
    common::close_client(any);
}

#[test]
fn origins_outside_the_allow_list_get_403() {
    let server = Server::start(&[
        "--cores",
        "2",
        "--allowed-origins",
        "https://app.example,https://admin.example",
    ]);
    let req = upgrade_request_with("/echo", "Origin: https://evil.example\r\n");
    let (status, resp) = http_exchange(server.addr, req.as_bytes());
    assert_eq!(status, 403, "{resp}");
    assert_eq!(http_body(&resp), "origin not allowed\n");

    let mut allowed = Vec::new();
    for origin in ["https://app.example", "https://admin.example"] {
        let mut ws = try_client_with(&server.url("/echo"), &[("Origin", origin)])
            .unwrap_or_else(|e| panic!("Origin {origin}: {e}"));
        echo_once(&mut ws, origin);
        allowed.push(ws);
    }
    // No Origin: not a browser, allowed.
    let mut no_origin = client(&server.url("/echo"));
    echo_once(&mut no_origin, "no origin");
    allowed.push(no_origin);

    let m = scrape(&server);
    assert_eq!(handshakes(&m, "forbidden"), 1.0);
    assert_eq!(handshakes(&m, "upgraded"), 3.0);
    assert_eq!(handshakes(&m, "unauthorized"), 0.0);
    for ws in allowed {
        common::close_client(ws);
    }
}

#[test]
fn token_before_its_nbf_gets_401() {
    let server = Server::start(&["--cores", "2", "--auth-secret", SECRET]);
    let not_yet = sign(
        SECRET.as_bytes(),
        &Claims {
            nbf: Some(now() + 3600),
            ..claims(now() + 7200, None)
        },
    );
    for req in [
        upgrade_request(&format!("/echo?token={not_yet}")),
        upgrade_request_with(
            "/broadcast",
            &format!("Authorization: Bearer {not_yet}\r\n"),
        ),
    ] {
        let (status, resp) = http_exchange(server.addr, req.as_bytes());
        assert_eq!(status, 401, "{req}\n{resp}");
        assert_eq!(http_body(&resp), "token not valid yet (nbf)\n", "{req}");
        assert!(resp.contains("WWW-Authenticate: Bearer\r\n"), "{resp}");
        assert!(!resp.contains("Sec-WebSocket-Accept"), "{resp}");
    }

    // A token whose nbf has passed upgrades.
    let valid = sign(
        SECRET.as_bytes(),
        &Claims {
            nbf: Some(now() - 60),
            ..claims(now() + 3600, None)
        },
    );
    let mut ws = client(&server.url(&format!("/echo?token={valid}")));
    echo_once(&mut ws, "nbf passed");

    let m = scrape(&server);
    assert_eq!(handshakes(&m, "unauthorized"), 2.0);
    assert_eq!(handshakes(&m, "upgraded"), 1.0);
    common::close_client(ws);
}

/// An upgrade request with raw extra header bytes (which need not be UTF-8).
fn upgrade_request_bytes(path: &str, extra_headers: &[u8]) -> Vec<u8> {
    let req = upgrade_request(path);
    [&req.as_bytes()[..req.len() - 2], extra_headers, b"\r\n"].concat()
}

#[test]
fn empty_invalid_or_null_origins_get_403_with_an_allow_list() {
    let server = Server::start(&["--cores", "2", "--allowed-origins", "https://app.example"]);
    let cases: [&[u8]; 6] = [
        b"Origin:\r\n",
        b"Origin:    \r\n",
        b"Origin: https://app.example\xff\r\n",
        b"Origin: \x80\xfe\r\n",
        b"Origin: null\r\n",
        // An empty first Origin does not let a second one stand in.
        b"Origin:\r\nOrigin: https://app.example\r\n",
    ];
    for headers in cases {
        let req = upgrade_request_bytes("/echo", headers);
        let (status, resp) = http_exchange(server.addr, &req);
        let shown = String::from_utf8_lossy(headers);
        assert_eq!(status, 403, "{shown}\n{resp}");
        assert_eq!(http_body(&resp), "origin not allowed\n", "{shown}");
        assert!(!resp.contains("Sec-WebSocket-Accept"), "{resp}");
    }
    // A listed origin over the same raw path still upgrades.
    let mut s = common::tcp(server.addr);
    s.write_all(&upgrade_request_bytes(
        "/echo",
        b"Origin: https://app.example\r\n",
    ))
    .unwrap();
    let head = common::read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    drop(s);

    let m = scrape(&server);
    assert_eq!(handshakes(&m, "forbidden"), cases.len() as f64);
    assert_eq!(handshakes(&m, "upgraded"), 1.0);
}

#[test]
fn without_an_allow_list_malformed_origins_still_upgrade() {
    let server = Server::start(&["--cores", "1"]);
    for headers in [
        &b"Origin:\r\n"[..],
        b"Origin: \x80\xfe\r\n",
        b"Origin: null\r\n",
    ] {
        let mut s = common::tcp(server.addr);
        s.write_all(&upgrade_request_bytes("/echo", headers))
            .unwrap();
        let head = common::read_head(&mut s);
        let shown = String::from_utf8_lossy(headers);
        assert!(head.starts_with("HTTP/1.1 101 "), "{shown}\n{head}");
    }
    let m = scrape(&server);
    assert_eq!(handshakes(&m, "forbidden"), 0.0);
    assert_eq!(handshakes(&m, "upgraded"), 3.0);
}
