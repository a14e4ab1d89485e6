//! ringcast inside your own program: start the server on its cores,
//! publish from ordinary threads, watch a subscriber receive it, stop with
//! close frames.
//!
//!     cargo run --release --example embed -- [SECONDS]
//!
//! Runs for SECONDS (default 5; bounded to 60), then shuts down.

use std::time::{Duration, Instant};

use tungstenite::Message;

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("SECONDS must be a number"))
        .unwrap_or(5)
        .min(60);
    let cfg = ringcast::Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        ..ringcast::Config::default()
    };
    let server = ringcast::Server::start(&cfg).unwrap_or_else(|e| {
        eprintln!("embed: {e}");
        std::process::exit(1);
    });
    let url = format!("ws://{}/ws", server.local_addr());
    println!("ringcast on {} core(s): {url}", server.cores());

    // A subscriber, as a browser would be: the server's welcome first (its
    // client id, core and ping interval), then the subscribe's ack (the
    // channel's epoch and latest offset); every message carries its offset.
    let (mut ws, _) = tungstenite::connect(&url).expect("connect");
    println!("subscriber: {}", ws.read().expect("welcome"));
    ws.send(Message::text(
        r#"{"type":"subscribe","channel":"ticks","id":1}"#,
    ))
    .expect("subscribe");
    println!("subscriber: {}", ws.read().expect("ack"));

    // Three threads of "your program" publishing through clones of one
    // Publisher: no lock on the cores, back-pressure reported, not hidden.
    let until = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..3)
        .map(|k| {
            let publisher = server.publisher();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < until {
                    let payload = format!(r#"{{"tick":{n},"from":"thread {k}"}}"#);
                    match publisher.publish("ticks", &payload) {
                        Ok(()) => n += 1,
                        Err(e) => eprintln!("thread {k}: {e}"),
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                n
            })
        })
        .collect();

    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
    }
    let mut received = 0u64;
    while Instant::now() < until {
        match ws.read() {
            Ok(Message::Text(t)) => {
                received += 1;
                println!("subscriber: {t}");
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                eprintln!("subscriber: {e}");
                break;
            }
        }
    }
    let published: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    match server.shutdown() {
        Ok(cores) => println!(
            "published {published}, received {received}; {} core(s) stopped cleanly",
            cores.len()
        ),
        Err(e) => {
            eprintln!("embed: {e}");
            std::process::exit(1);
        }
    }
}
