//! Resource limits over real sockets: `--max-connections` (503 at the
//! upgrade), `--max-msgs-per-sec` (close 1008 for the flooder only),
//! `--max-subscriptions` (an error, the connection kept), and their
//! counters in `/metrics`.

mod common;

use common::{
    client, close_client, handshakes, http_body, http_exchange, masked, metric_sum, raw_ws,
    read_frame, recv_json, scrape, send_json, upgrade_request, Running, Server, Ws, PATIENCE,
};
use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use tungstenite::Message;

fn echo_once(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text(text));
}

/// An upgrade over the limit: 503 with a plain-text reason.
fn assert_over_capacity(server: &impl Running) {
    let (status, resp) = http_exchange(server.addr(), upgrade_request("/echo").as_bytes());
    assert_eq!(status, 503, "{resp}");
    assert_eq!(
        http_body(&resp),
        "server at its connection limit; retry later\n"
    );
}

#[test]
fn connection_limit_refuses_with_503_until_a_client_leaves() {
    // One core, so the global limit is exactly its share.
    let server = Server::start(&["--cores", "1", "--max-connections", "3"]);
    let mut clients: Vec<Ws> = (0..3)
        .map(|i| {
            let mut ws = client(&server.url("/echo"));
            echo_once(&mut ws, &format!("client {i}"));
            ws
        })
        .collect();
    assert_over_capacity(&server);
    // Plain HTTP is not a WebSocket connection: still served at the limit.
    let (status, _) = http_exchange(server.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);

    close_client(clients.remove(0));
    // Wait until the server has released it: two clients plus the scrape's
    // own connection (anything else still lingering only delays this).
    let start = Instant::now();
    loop {
        let open = metric_sum(&scrape(&server), "ringcast_connections", None);
        if open <= 3.0 {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "closed client never released ({open} connections)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut again = client(&server.url("/echo"));
    echo_once(&mut again, "after a client left");
    // Full again.
    assert_over_capacity(&server);
    for ws in clients.iter_mut() {
        echo_once(ws, "still served");
    }

    let m = scrape(&server);
    assert_eq!(handshakes(&m, "over_capacity"), 2.0);
    assert_eq!(handshakes(&m, "upgraded"), 4.0);
    close_client(again);
    for ws in clients {
        close_client(ws);
    }
}

#[test]
fn rate_limit_closes_a_flooding_client_only() {
    const BURST: usize = 20;
    const FLOOD: usize = 200;
    let server = Server::start(&[
        "--cores",
        "1",
        "--max-msgs-per-sec",
        "20",
        "--msg-burst",
        "20",
    ]);
    // Both on the one core.
    let mut polite = client(&server.url("/echo"));
    echo_once(&mut polite, "polite 0");

    let mut flood = raw_ws(server.addr, "/echo");
    let frames: Vec<u8> = (0..FLOOD)
        .flat_map(|i| masked(true, 1, format!("flood {i}").as_bytes()))
        .collect();
    flood.write_all(&frames).unwrap();
    let mut echoed = 0;
    let (code, reason) = loop {
        let (fin, op, p) = read_frame(&mut flood).expect("a close frame, not the end");
        match op {
            1 => {
                assert!(fin);
                assert_eq!(p, format!("flood {echoed}").as_bytes());
                echoed += 1;
            }
            8 => {
                assert!(p.len() >= 2, "close frame without a code");
                break (u16::from_be_bytes([p[0], p[1]]), p[2..].to_vec());
            }
            _ => panic!("unexpected opcode {op}"),
        }
    };
    assert_eq!(code, 1008);
    assert_eq!(reason, b"message rate limit exceeded");
    // The bucket starts full: a burst's worth always gets through.
    assert!((BURST..FLOOD).contains(&echoed), "{echoed} echoed");
    flood
        .write_all(&masked(true, 8, &1008u16.to_be_bytes()))
        .unwrap();
    let mut rest = Vec::new();
    let _ = flood.read_to_end(&mut rest);

    // The other client on the same core is unaffected.
    for i in 1..5 {
        std::thread::sleep(Duration::from_millis(100));
        echo_once(&mut polite, &format!("polite {i}"));
    }

    let m = scrape(&server);
    assert_eq!(
        metric_sum(&m, "ringcast_rate_limit_closes_total", None),
        1.0
    );
    assert_eq!(
        metric_sum(&m, "ringcast_messages_in_total", None),
        (echoed + 5) as f64
    );
    close_client(polite);
}

#[test]
fn subscription_limit_refuses_extra_channels_and_keeps_the_connection() {
    let server = Server::start(&["--cores", "2", "--max-subscriptions", "2"]);
    let (mut ws, _) = common::ws_client(&server.url("/ws"));
    for (id, ch) in [(1, "a"), (2, "b")] {
        common::subscribe_ws(&mut ws, ch, id);
    }
    send_json(&mut ws, json!({"type":"subscribe","channel":"c","id":3}));
    let err = recv_json(&mut ws);
    assert_eq!((&err["type"], &err["id"]), (&json!("error"), &json!(3)));
    assert_eq!(err["code"], "too_many_subscriptions", "{err}");

    // Subscribing again to a channel it has costs nothing.
    common::subscribe_ws(&mut ws, "a", 4);
    send_json(&mut ws, json!({"type":"ping","id":5}));
    assert_eq!(recv_json(&mut ws), json!({"type":"pong","id":5}));

    // Room again after an unsubscribe.
    send_json(&mut ws, json!({"type":"unsubscribe","channel":"b","id":6}));
    assert_eq!(recv_json(&mut ws), json!({"type":"ack","id":6}));
    // Nothing published in it yet.
    assert_eq!(common::subscribe_ws(&mut ws, "c", 7).1, 0);

    // And the new subscription is live: a publish from another client
    // (on whichever core) reaches it.
    let (mut publisher, _) = common::ws_client(&server.url("/ws"));
    assert_eq!(common::publish_ws(&mut publisher, "c", json!([1]), 1).1, 1);
    assert_eq!(
        common::recv_text(&mut ws),
        r#"{"type":"message","channel":"c","offset":1,"payload":[1]}"#
    );

    let m = scrape(&server);
    assert_eq!(
        metric_sum(&m, "ringcast_subscription_limit_total", None),
        1.0
    );
    assert_eq!(metric_sum(&m, "ringcast_subscriptions", None), 2.0);
    close_client(ws);
    close_client(publisher);
}
