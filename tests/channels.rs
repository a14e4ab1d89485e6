//! `/ws` channels over real sockets: typed JSON messages, subscribe and
//! publish across cores, unsubscribe, the publish API.

mod common;

use common::{Server, PATIENCE};
use serde_json::{json, Value};
use std::net::TcpStream;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

type Ws = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

/// Connects to `path` until the server says the connection landed on
/// `core` (the `X-Ringcast-Core` header of the 101), so a test can place
/// clients on different cores. Bounded: SO_REUSEPORT spreads connections
/// by hash, so a few tries find each core.
fn ws_on_core(server: &Server, path: &str, core: usize) -> Ws {
    for _ in 0..200 {
        let (ws, resp) = tungstenite::connect(server.url(path)).expect("upgrade");
        let on = resp
            .headers()
            .get("x-ringcast-core")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if on == Some(core) {
            if let MaybeTlsStream::Plain(s) = ws.get_ref() {
                s.set_read_timeout(Some(PATIENCE)).unwrap();
            }
            return ws;
        }
    }
    panic!("no connection landed on core {core} in 200 tries");
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// The next JSON message (pings are answered by tungstenite itself).
fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn subscribe_and_publish_across_cores() {
    let server = Server::start(&["--cores", "2"]);
    let mut sub = ws_on_core(&server, "/ws", 0);
    let mut publ = ws_on_core(&server, "/ws", 1);
    send(
        &mut sub,
        json!({"type":"subscribe","channel":"news","id":1}),
    );
    assert_eq!(recv(&mut sub), json!({"type":"ack","id":1}));
    send(
        &mut publ,
        json!({"type":"publish","channel":"news","payload":{"a":[1,2,"x"]},"id":9}),
    );
    assert_eq!(recv(&mut publ), json!({"type":"ack","id":9}));
    assert_eq!(
        recv(&mut sub),
        json!({"type":"message","channel":"news","payload":{"a":[1,2,"x"]}})
    );
}
