//! SIGINT/SIGTERM: stop accepting, close every connection with 1001, wait
//! for the close handshakes (up to the grace period), exit 0.

mod common;

use std::io::Write;

use common::{client, expect_close, raw_ws, Server};
use tungstenite::Message;

#[test]
fn sigterm_closes_everyone_with_1001_and_exits_0() {
    let server = Server::start(&["--cores", "2"]);
    let mut clients: Vec<_> = (0..6)
        .map(|i| client(&server.url(if i % 2 == 0 { "/echo" } else { "/broadcast" })))
        .collect();
    for ws in &mut clients {
        ws.send(Message::text("hi")).unwrap();
    }
    let addr = server.addr;
    server.signal(libc::SIGTERM);
    for ws in &mut clients {
        let code = loop {
            match ws.read() {
                Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
                Ok(_) => continue, // echoes / broadcasts sent before the signal
                Err(e) => panic!("expected a close frame, got {e}"),
            }
        };
        assert_eq!(code, Some(1001));
        // tungstenite replies to the close; the server then drops TCP.
        loop {
            match ws.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => break,
                Err(e) => panic!("unexpected error after close: {e}"),
            }
        }
    }
    // Hang up, so the server does not wait for our FIN until its timeout.
    drop(clients);
    let mut server = server;
    let status = server.wait();
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn shutdown_gives_up_on_silent_peers_after_the_grace_period() {
    let mut server = Server::start(&["--shutdown-grace", "1"]);
    // A raw client that never answers the close frame.
    let mut s = raw_ws(server.addr, "/echo");
    s.write_all(&common::masked(true, 1, b"x")).unwrap();
    server.signal(libc::SIGINT);
    let status = server.wait();
    assert!(status.success(), "{}", server.log());
    // It did get the 1001 before the server gave up.
    assert_eq!(expect_close(&mut s), 1001);
}
