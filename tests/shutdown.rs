//! SIGINT/SIGTERM: stop accepting, close every connection with 1001, wait
//! for the close handshakes (up to the grace period), exit 0.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::time::Instant;

use common::{client, expect_close, masked, raw_ws, read_frame, Server, PATIENCE};
use tungstenite::Message;

/// How many listening TCP sockets on `port` process `pid` holds: entries
/// of `/proc/net/tcp{,6}` in state LISTEN whose inode is one of the
/// process's own descriptors (none once it has exited).
///
/// Matching by inode, not by connecting to the port, is what keeps this
/// independent of tests running in parallel: once the server lets its
/// port go, another test's server may be given the same port number, and
/// a connection to it would then succeed although ours stopped listening.
fn listening_sockets(pid: u32, port: u16) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let local_port = f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && f[3] == "0A" && inodes.contains(f[9]) {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn sigterm_closes_everyone_with_1001_and_exits_0() {
    // A long grace period: the held client below keeps the server draining
    // (alive) until the test has looked at its sockets.
    let mut server = Server::spawn(&["--cores", "2", "--shutdown-grace", "60"]);
    let port = server.addr.port();
    // One listener per core, as the process's own sockets show.
    assert_eq!(listening_sockets(server.pid(), port), 2);
    let mut clients: Vec<_> = (0..6)
        .map(|i| client(&server.url(if i % 2 == 0 { "/echo" } else { "/broadcast" })))
        .collect();
    for ws in &mut clients {
        ws.send(Message::text("hi")).unwrap();
    }
    // A raw client that answers its close frame only when told to.
    let mut held = raw_ws(server.addr, "/echo");
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
    // The held client gets its 1001 too, and does not answer yet: the
    // server is draining and cannot exit, so what follows is about a live
    // process.
    let code = loop {
        let (_, op, p) = read_frame(&mut held).expect("a close frame, not the end");
        if op == 8 {
            break u16::from_be_bytes([p[0], p[1]]);
        }
    };
    assert_eq!(code, 1001);
    // Not accepting any more: no listening socket left in the process.
    let start = Instant::now();
    loop {
        let n = listening_sockets(server.pid(), port);
        if n == 0 {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "still {n} listening socket(s) while draining\n{}",
            server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(server.is_running(), "exited early\n{}", server.log());
    // Complete the last close handshake and hang up; the server then exits.
    held.write_all(&masked(true, 8, &1001u16.to_be_bytes()))
        .unwrap();
    held.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = held.read_to_end(&mut rest);
    let status = server.wait();
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
}

#[test]
fn shutdown_gives_up_on_silent_peers_after_the_grace_period() {
    let mut server = Server::spawn(&["--shutdown-grace", "1"]);
    // A raw client that never answers the close frame.
    let mut s = raw_ws(server.addr, "/echo");
    s.write_all(&common::masked(true, 1, b"x")).unwrap();
    server.signal(libc::SIGINT);
    let status = server.wait();
    assert!(status.success(), "{}", server.log());
    // It did get the 1001 before the server gave up.
    assert_eq!(expect_close(&mut s), 1001);
}
