//! The baseline end to end: the real binary on an ephemeral port, found
//! through `--addr-file` (no log parsing), an `/echo` and a `/broadcast`
//! round trip with a blocking tungstenite client, then SIGTERM, which must
//! close open clients with 1001 and end the process cleanly.
//!
//! Being an integration test of this package, it also makes `cargo test`
//! at the repo root build the `ringcast-tokio` binary, which the root
//! package's shared tests (tests/echo.rs, tests/broadcast.rs) run too.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// Bound on anything the test waits for, so a bug fails it instead of
/// hanging it. Not a performance assertion.
const PATIENCE: Duration = Duration::from_secs(30);

/// A running `ringcast-tokio`, killed on drop if the test did not stop it.
struct Baseline {
    child: Child,
    addr: SocketAddr,
    addr_file: PathBuf,
}

impl Baseline {
    /// Starts the binary on `127.0.0.1:0` and waits for its address file.
    fn start(name: &str) -> Baseline {
        let addr_file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ringcast-tokio-{name}-{}.addr", std::process::id()));
        let _ = std::fs::remove_file(&addr_file);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast-tokio"))
            .args(["--listen", "127.0.0.1:0", "--threads", "2", "--log", "warn"])
            .arg("--addr-file")
            .arg(&addr_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Only warnings and errors: they belong in the test's output.
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting ringcast-tokio");
        let deadline = Instant::now() + PATIENCE;
        // The file is renamed into place, so once it exists it is whole.
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                break text;
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("ringcast-tokio exited ({status}) before writing its address file");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("no {} within {PATIENCE:?}", addr_file.display());
            }
            sleep(Duration::from_millis(10));
        };
        let line = text
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("address file {text:?} does not end in a newline"));
        let addr: SocketAddr = line
            .parse()
            .unwrap_or_else(|e| panic!("address file {text:?}: {e}"));
        assert_eq!(addr.ip().to_string(), "127.0.0.1", "{text:?}");
        assert_ne!(addr.port(), 0, "the bound port, not the requested 0");
        let mut tmp = addr_file.clone().into_os_string();
        tmp.push(".tmp");
        assert!(
            !PathBuf::from(tmp).exists(),
            "the temporary file is renamed, not left behind"
        );
        Baseline {
            child,
            addr,
            addr_file,
        }
    }

    /// A client upgraded on `path`, its socket bounded by [`PATIENCE`].
    fn connect(&self, path: &str) -> WebSocket<TcpStream> {
        let stream = TcpStream::connect(self.addr).expect("TCP connect");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(PATIENCE))
            .expect("write timeout");
        let url = format!("ws://{}{path}", self.addr);
        let (ws, resp) =
            tungstenite::client(url.as_str(), stream).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(resp.status(), 101, "{url}");
        ws
    }

    /// Sends SIGTERM, as a service manager or Ctrl-C would (SIGINT).
    fn sigterm(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own child, not yet reaped, so it cannot name another process.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits (bounded) for the process to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ringcast-tokio still running {PATIENCE:?} after SIGTERM"
            );
            sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.addr_file);
    }
}

/// The next data message (tungstenite answers pings itself).
fn next_data(ws: &mut WebSocket<TcpStream>) -> Message {
    loop {
        match ws.read().expect("read") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

#[test]
fn echo_and_broadcast_round_trips_on_the_address_from_addr_file() {
    let server = Baseline::start("round-trips");

    let mut echo = server.connect("/echo");
    for m in [
        Message::text("hello, baseline"),
        Message::binary(vec![0u8, 1, 2, 255]),
    ] {
        echo.send(m.clone()).expect("send");
        assert_eq!(next_data(&mut echo), m);
    }

    // Both are subscribed once their upgrade completes, so a publish from
    // one reaches both, the publisher included.
    let mut publisher = server.connect("/broadcast");
    let mut subscriber = server.connect("/broadcast");
    let m = Message::text("to everyone");
    publisher.send(m.clone()).expect("publish");
    assert_eq!(next_data(&mut subscriber), m);
    assert_eq!(next_data(&mut publisher), m);
}

#[test]
fn sigterm_closes_open_clients_with_1001_and_exits_cleanly() {
    let mut server = Baseline::start("sigterm");
    let mut clients = [server.connect("/echo"), server.connect("/broadcast")];
    // A round trip each, so both are past the handshake and being served.
    for ws in &mut clients {
        let m = Message::text("ready");
        ws.send(m.clone()).expect("send");
        assert_eq!(next_data(ws), m);
    }

    server.sigterm();
    for (ws, path) in clients.iter_mut().zip(["/echo", "/broadcast"]) {
        match next_data(ws) {
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::Away, "{path}: {frame:?}");
            }
            other => panic!("{path}: expected a 1001 close, got {other:?}"),
        }
        // Reading on sends tungstenite's close reply, then sees the end.
        loop {
            match ws.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("{path}: after the close: {e}"),
            }
        }
    }
    let status = server.wait_exit();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
