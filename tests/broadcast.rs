//! `/broadcast`: every message to every client on every core, in order; a
//! slow consumer is cut off without slowing anyone else. Run against
//! ringcast and the tokio baseline alike; ringcast's per-core counters are
//! checked as well.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use common::{accepted_per_core, client, flavors, masked, read_frame, Flavor};
use tungstenite::Message;

#[test]
fn broadcast_reaches_every_client_across_cores_in_order() {
    for flavor in flavors() {
        broadcast_across_cores(flavor);
    }
}

fn broadcast_across_cores(flavor: Flavor) {
    eprintln!("server: {}", flavor.name);
    let server = flavor.start(2, &[]);
    const CLIENTS: usize = 16;
    const PUBLISHERS: usize = 3;
    const PER_PUBLISHER: usize = 300;
    let url = server.url("/broadcast");
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = url.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut ws = client(&url);
                barrier.wait(); // everyone is subscribed before anyone publishes
                if c < PUBLISHERS {
                    for i in 0..PER_PUBLISHER {
                        ws.write(Message::text(format!("{c}:{i}"))).unwrap();
                    }
                    ws.flush().unwrap();
                }
                let mut next = [0usize; PUBLISHERS];
                for _ in 0..PUBLISHERS * PER_PUBLISHER {
                    let m = ws.read().unwrap();
                    let t = m.to_text().unwrap();
                    let (p, i) = t.split_once(':').unwrap();
                    let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
                    assert_eq!(
                        i, next[p],
                        "client {c}: publisher {p}'s messages out of order"
                    );
                    next[p] += 1;
                }
                assert_eq!(
                    next, [PER_PUBLISHER; PUBLISHERS],
                    "client {c} missed messages"
                );
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let (status, log) = server.stop();
    assert!(status.success(), "{log}");
    if !flavor.is_ringcast() {
        return;
    }
    let per_core = accepted_per_core(&log);
    assert_eq!(per_core.len(), 2, "{log}");
    assert!(
        per_core.iter().all(|&(_, n)| n > 0),
        "clients did not land on both cores: {per_core:?}\n{log}"
    );
    assert_eq!(
        per_core.iter().map(|&(_, n)| n).sum::<u64>(),
        CLIENTS as u64
    );
}

#[test]
fn slow_consumer_is_closed_with_1008_and_others_get_every_message() {
    for flavor in flavors() {
        slow_consumer(flavor);
    }
}

fn slow_consumer(flavor: Flavor) {
    eprintln!("server: {}", flavor.name);
    let mut args = vec!["--max-send-queue-bytes", "262144", "--close-timeout", "60"];
    if flavor.is_ringcast() {
        // The publisher goes as fast as the consumers read: not what the
        // publish rate limit is for (tests/reliability.rs covers that).
        args.extend(["--max-publishes-per-sec", "0"]);
    }
    let server = flavor.start(2, &args);
    const MESSAGES: usize = 8000;
    const SIZE: usize = 4096;

    // The slow consumer: a tiny receive buffer, and it does not read.
    let slow = {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&server.addr.into()).unwrap();
        let mut s: std::net::TcpStream = sock.into();
        s.set_read_timeout(Some(common::PATIENCE)).unwrap();
        s.write_all(common::upgrade_request("/broadcast").as_bytes())
            .unwrap();
        assert!(common::read_head(&mut s).starts_with("HTTP/1.1 101 "));
        s
    };

    // Consumers that keep up: the publisher never gets more than WINDOW
    // messages ahead of them (64 KiB, a quarter of the bound), so only the
    // consumer that stops reading can go over the bound.
    const WINDOW: usize = 16;
    let fast_seen = Arc::new(AtomicUsize::new(0));
    let own_seen = Arc::new(AtomicUsize::new(0));

    // A fast consumer that counts everything.
    let mut fast = client(&server.url("/broadcast"));
    let seen = fast_seen.clone();
    let fast_reader = thread::spawn(move || {
        for i in 0..MESSAGES {
            match fast.read().unwrap() {
                Message::Binary(b) => {
                    assert_eq!(b.len(), SIZE);
                    assert_eq!(
                        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
                        i,
                        "out of order"
                    );
                }
                other => panic!("fast consumer got {other:?} at {i}"),
            }
            seen.store(i + 1, Ordering::Release);
        }
    });

    // The publisher writes raw frames and drains its own copies on another thread.
    let mut publisher = common::raw_ws(server.addr, "/broadcast");
    let mut drain = publisher.try_clone().unwrap();
    let seen = own_seen.clone();
    let drainer = thread::spawn(move || {
        for i in 0..MESSAGES {
            read_frame(&mut drain).unwrap();
            seen.store(i + 1, Ordering::Release);
        }
    });
    for i in 0..MESSAGES {
        let start = Instant::now();
        while i
            >= fast_seen
                .load(Ordering::Acquire)
                .min(own_seen.load(Ordering::Acquire))
                + WINDOW
        {
            assert!(
                start.elapsed() < common::PATIENCE,
                "consumers stopped making progress"
            );
            thread::yield_now();
        }
        let mut payload = vec![0u8; SIZE];
        payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
        publisher.write_all(&masked(true, 2, &payload)).unwrap();
    }
    fast_reader
        .join()
        .expect("fast consumer missed or reordered messages");
    drainer.join().expect("publisher missed its own messages");
    drop(publisher);

    // Now the slow consumer reads: some early messages, then a 1008 close.
    let mut slow = slow;
    let mut got = 0;
    let code = loop {
        let (_, op, p) =
            read_frame(&mut slow).expect("slow consumer: stream ended without a close frame");
        match op {
            2 => got += 1,
            8 => break u16::from_be_bytes([p[0], p[1]]),
            _ => panic!("unexpected opcode {op}"),
        }
    };
    assert_eq!(code, 1008);
    assert!(got < MESSAGES, "the slow consumer was not cut off");
    let _ = slow.write_all(&masked(true, 8, &1008u16.to_be_bytes()));
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    drop(slow);

    let (status, log) = server.stop();
    assert!(status.success(), "exit {status:?}\n{log}");
    if !flavor.is_ringcast() {
        return;
    }
    if !flavor.is_ringcast() {
        return;
    }
    let closes: u64 = log
        .lines()
        .filter_map(|l| l.split("slow_consumer_closes=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(closes, 1, "{log}");
}
