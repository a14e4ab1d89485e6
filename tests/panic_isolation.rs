//! A panic while handling one client's input costs that client its
//! connection, not the core its other connections. The panic is provoked
//! through the test hook `RINGCAST_FAILPOINTS=1` (a `/echo` message
//! `ringcast:panic` panics inside the handler).

mod common;

use common::{client, metric_sum, scrape, Server};
use tungstenite::Message;

#[test]
fn a_handler_panic_drops_one_connection_and_the_core_goes_on() {
    let server = Server::spawn_env(&["--cores", "1"], &[("RINGCAST_FAILPOINTS", "1")]);
    let mut bystander = client(&server.url("/echo"));
    bystander.send(Message::text("before")).unwrap();
    assert_eq!(bystander.read().unwrap(), Message::text("before"));

    let mut victim = client(&server.url("/echo"));
    victim.send(Message::text("ringcast:panic")).unwrap();
    // The victim's connection is dropped: no echo, no close frame.
    match victim.read() {
        Ok(Message::Close(_)) | Err(_) => {}
        Ok(other) => panic!("the panicking connection answered {other:?}"),
    }

    // The same core still serves the bystander and new clients.
    bystander.send(Message::text("after")).unwrap();
    assert_eq!(bystander.read().unwrap(), Message::text("after"));
    let mut newcomer = client(&server.url("/echo"));
    newcomer.send(Message::text("new")).unwrap();
    assert_eq!(newcomer.read().unwrap(), Message::text("new"));

    let metrics = scrape(&server);
    assert_eq!(
        metric_sum(&metrics, "ringcast_handler_panics_total", None),
        1.0
    );
    drop((bystander, newcomer, victim));
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("panic while handling a connection's input"),
        "{log}"
    );
}
