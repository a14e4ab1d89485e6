//! The embedding API: a server started in this process, published into
//! from several threads at once, stopped gracefully.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::{
    parse_message, recv_json, recv_text, send_json, ws_client_on_core, ws_on_core, Server, Ws,
    PATIENCE,
};
use ringcast::PublishError;
use serde_json::json;

/// Subscribes `ws` to `channel` and waits for the ack.
fn subscribe(ws: &mut Ws, channel: &str) {
    send_json(
        ws,
        json!({"type": "subscribe", "channel": channel, "id": 1}),
    );
    let ack = recv_json(ws);
    common::check_offset_ack(&ack, Some(1));
}

#[test]
fn threads_publish_to_subscribers_on_every_core_in_order_and_exactly_once() {
    const THREADS: u64 = 4;
    const EACH: u64 = 500;
    let server = Server::start(&["--cores", "2"]);
    let mut subs = [
        ws_client_on_core(&server, 0).0,
        ws_client_on_core(&server, 1).0,
    ];
    for s in &mut subs {
        subscribe(s, "ticks");
    }
    let publisher = server.publisher();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let p = publisher.clone();
            std::thread::spawn(move || {
                for n in 0..EACH {
                    let payload = format!(r#"{{"from":{t},"n":{n}}}"#);
                    // Back-pressure is the caller's to handle: retry, bounded.
                    let start = Instant::now();
                    loop {
                        match p.publish("ticks", &payload) {
                            Ok(()) => break,
                            Err(PublishError::Full) if start.elapsed() < PATIENCE => {
                                std::thread::yield_now()
                            }
                            Err(e) => panic!("publish: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("publisher thread");
    }
    // The owner core sequences the publications of every thread: both
    // cores see one order, offsets 1, 2, ... in it.
    let mut sequences = Vec::new();
    for (core, ws) in subs.iter_mut().enumerate() {
        let mut next: HashMap<u64, u64> = HashMap::new();
        let mut sequence = Vec::new();
        for i in 0..THREADS * EACH {
            let (channel, offset, payload) = parse_message(&recv_text(ws));
            assert_eq!(channel, "ticks");
            assert_eq!(offset, i + 1, "core {core}: offsets consecutive from 1");
            let (from, n) = (
                payload["from"].as_u64().expect("from"),
                payload["n"].as_u64().expect("n"),
            );
            sequence.push((from, n));
            let want = next.entry(from).or_insert(0);
            assert_eq!(
                n, *want,
                "core {core}: thread {from}'s messages out of order"
            );
            *want += 1;
        }
        assert!(
            next.values().all(|&n| n == EACH),
            "core {core}: every message once: {next:?}"
        );
        sequences.push(sequence);
    }
    assert!(
        sequences[0] == sequences[1],
        "the two cores saw different orders"
    );
    let stats = server.stop();
    assert_eq!(stats.len(), 2);
    let published: u64 = stats.iter().map(|s| s.msg.publishes).sum();
    assert_eq!(published, THREADS * EACH, "each message published once");
}

#[test]
fn bad_input_is_refused_with_its_reason_and_a_stopped_server_says_so() {
    let server = Server::start(&["--cores", "1", "--max-message-bytes", "64"]);
    let p = server.publisher();
    match p.publish("no spaces", "1") {
        Err(PublishError::BadChannel(why)) => assert!(!why.is_empty()),
        other => panic!("bad channel: {other:?}"),
    }
    match p.publish("c", "{not json") {
        Err(e @ PublishError::BadPayload(_)) => {
            assert!(e.to_string().contains("JSON"), "{e}")
        }
        other => panic!("bad payload: {other:?}"),
    }
    match p.publish("c", "1 2") {
        Err(PublishError::BadPayload(_)) => {}
        other => panic!("two values: {other:?}"),
    }
    let big = format!("\"{}\"", "x".repeat(100));
    assert_eq!(
        p.publish("c", &big),
        Err(PublishError::TooLarge { len: 102, max: 64 })
    );
    // A channel nobody subscribes to is fine: the message goes nowhere.
    p.publish("c", r#"{"ok":true}"#).expect("valid message");
    let (mut ws, _) = common::ws_client(&server.url("/ws"));
    subscribe(&mut ws, "c");
    server.stop();
    // The client got the server's going-away close.
    match ws.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    assert_eq!(p.publish("c", "1"), Err(PublishError::Stopped));
}

#[test]
fn a_full_queue_is_back_pressure_and_every_accepted_message_is_delivered() {
    let server = Server::start_env(&["--cores", "2"], &[("RINGCAST_FAILPOINTS", "1")]);
    let p = server.publisher();
    let core = p.core_for("c");
    let other = 1 - core;
    // A subscriber on the other core, its interest confirmed by the ack.
    let (mut sub, _) = ws_client_on_core(&server, other);
    subscribe(&mut sub, "c");
    // Connected before the stall: a new connection could land on the
    // stalled core and wait for it.
    let mut resumer = ws_on_core(&server, "/echo", other);
    // Stall the core that takes "c"'s messages: the echo comes back, then
    // its loop stops (test hook), so nothing drains its queue.
    let mut staller = ws_on_core(&server, "/echo", core);
    staller
        .send(tungstenite::Message::text("ringcast:stall-core"))
        .expect("send");
    let echoed = staller.read().expect("the hook's echo");
    assert_eq!(echoed.to_text().ok(), Some("ringcast:stall-core"));
    let mut accepted = 0;
    loop {
        match p.publish("c", &accepted.to_string()) {
            Ok(()) => accepted += 1,
            Err(PublishError::Full) => break,
            Err(e) => panic!("publish: {e}"),
        }
        assert!(
            accepted <= ringcast::Publisher::QUEUE_CAPACITY,
            "more accepted than the queue holds"
        );
    }
    assert_eq!(accepted, ringcast::Publisher::QUEUE_CAPACITY);
    // Resume it from the other core: everything accepted arrives, in order.
    resumer
        .send(tungstenite::Message::text("ringcast:resume-cores"))
        .expect("send");
    for n in 0..accepted {
        let m = recv_json(&mut sub);
        assert_eq!(m, common::message_json("c", n as u64 + 1, n.into()));
    }
    server.stop();
}
