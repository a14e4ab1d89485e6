//! Test harness: start the real server on an ephemeral port — in this
//! process through the embedding API ([`Server::start`]), or as its binary
//! where a test needs a process (signals, exit status, RSS, the log:
//! [`Server::spawn`]) — and talk to it over real sockets. Ports come from
//! the API or from `--addr-file`, never from a log line.
// Shared by every test crate, each using a different part of it; `pub`
// is how the test files reach it, not an API.
#![allow(dead_code, unreachable_pub)]

/// Real Redis (single node, cluster) and nginx processes for the tests
/// that need them (tests/balancer.rs).
pub mod services;

/// Test certificates and TLS clients (tests/tls.rs).
pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous bound for anything a test waits on, so a bug fails the test
/// instead of hanging it. Not a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A server implementation the shared tests run against.
#[derive(Clone, Copy, Debug)]
pub struct Flavor {
    pub name: &'static str,
    pub bin: &'static str,
    /// The flag that sets its parallelism (ringcast: cores, tokio: threads).
    pub parallelism_flag: &'static str,
}

/// ringcast and the tokio baseline.
pub fn flavors() -> [Flavor; 2] {
    [
        Flavor {
            name: "ringcast",
            bin: env!("CARGO_BIN_EXE_ringcast"),
            parallelism_flag: "--cores",
        },
        Flavor {
            name: "ringcast-tokio",
            // Leaked (a few bytes per call): `bin` is a `&'static str`.
            bin: workspace_bin("ringcast-tokio")
                .to_str()
                .expect("UTF-8 path")
                .to_owned()
                .leak(),
            parallelism_flag: "--threads",
        },
    ]
}

/// The path of another workspace crate's binary, `target/<profile>/<name>`
/// (cargo sets `CARGO_BIN_EXE_*` only for this package's own binaries): the
/// test executable runs from `target/<profile>/deps/`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable under target/<profile>/deps/");
    let bin = profile_dir.join(name);
    let release = if profile_dir.ends_with("release") {
        " --release"
    } else {
        ""
    };
    assert!(
        bin.is_file(),
        "{} not found: build it with `cargo build{release} -p {name}`, \
         or run `cargo test` from the repo root",
        bin.display()
    );
    bin
}

impl Flavor {
    /// Starts this server with `parallelism` cores/threads and extra args.
    pub fn start(&self, parallelism: usize, args: &[&str]) -> Server {
        let n = parallelism.to_string();
        let mut all = vec![self.parallelism_flag, n.as_str()];
        all.extend_from_slice(args);
        Server::start_bin(self.bin, &all)
    }

    /// Whether this is ringcast itself (per-core counters in its log).
    pub fn is_ringcast(&self) -> bool {
        self.name == "ringcast"
    }
}

/// A running server process.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

/// A server running inside this test process ([`ringcast::Server`]).
/// Dropping it shuts it down gracefully.
pub struct Embedded {
    server: Option<ringcast::Server>,
    pub addr: SocketAddr,
}

impl Embedded {
    /// `ws://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// A publisher into the server from any thread.
    pub fn publisher(&self) -> ringcast::Publisher {
        self.server.as_ref().expect("running").publisher()
    }

    /// Where TLS is served, if it is.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().expect("running").tls_addr()
    }

    /// Re-reads the TLS certificate (what SIGHUP does for the binary).
    pub fn reload_tls(&self) -> Result<bool, String> {
        self.server.as_ref().expect("running").handle().reload_tls()
    }

    /// Shuts down gracefully (1001 close frames); returns each core's
    /// counters.
    pub fn stop(mut self) -> Vec<ringcast::Stats> {
        let server = self.server.take().expect("running");
        server.shutdown().expect("a clean shutdown")
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.shutdown();
        }
    }
}

/// What every running server gives a test: its address.
pub trait Running {
    /// Where it listens.
    fn addr(&self) -> SocketAddr;
    /// `ws://ADDR/path`.
    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr(), path)
    }
}

impl Running for Embedded {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Running for Server {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The configuration `ringcast ARGS` would run with, on an ephemeral port.
fn config(args: &[&str]) -> ringcast::Config {
    let mut all = vec!["ringcast", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    ringcast::Config::from_args_and_file(all).unwrap_or_else(|e| panic!("config {args:?}: {e}"))
}

impl Server {
    /// Starts ringcast in this process with extra arguments.
    pub fn start(args: &[&str]) -> Embedded {
        Server::start_env(args, &[])
    }

    /// Starts ringcast in this process; `RINGCAST_FAILPOINTS=1` in `env`
    /// turns the test hooks on (the config field, not the environment,
    /// which every server in the process would share).
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Embedded {
        let mut cfg = config(args);
        for (k, v) in env {
            match (*k, *v) {
                ("RINGCAST_FAILPOINTS", "1") => cfg.failpoints = true,
                other => panic!("no in-process meaning for {other:?}: use Server::spawn_env"),
            }
        }
        let server = ringcast::Server::start(&cfg).unwrap_or_else(|e| panic!("start: {e}"));
        Embedded {
            addr: server.local_addr(),
            server: Some(server),
        }
    }

    /// Starts the `ringcast` binary with extra arguments.
    pub fn spawn(args: &[&str]) -> Server {
        Server::start_bin(env!("CARGO_BIN_EXE_ringcast"), args)
    }

    /// Starts the `ringcast` binary with extra arguments and environment
    /// variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch(env!("CARGO_BIN_EXE_ringcast"), args, env)
    }

    /// Starts a server binary that takes `--listen` and `--addr-file`.
    pub fn start_bin(bin: &str, args: &[&str]) -> Server {
        Server::launch(bin, args, &[])
    }

    fn launch(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let addr_file =
            std::env::temp_dir().join(format!("ringcast-test-{}-{n}.addr", std::process::id()));
        let _ = std::fs::remove_file(&addr_file);
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--addr-file")
            .arg(&addr_file)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let start = Instant::now();
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                if let Ok(a) = text.trim().parse::<SocketAddr>() {
                    break a;
                }
            }
            let exited = child.try_wait().expect("try_wait").is_some();
            if exited || start.elapsed() > PATIENCE {
                let _ = child.kill();
                panic!("server did not start:\n{}", log.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let _ = std::fs::remove_file(&addr_file);
        Server {
            child: Some(child),
            addr,
            log,
        }
    }

    /// `ws://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our child's pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// SIGTERM, then waits for the exit; returns status and full log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let status = self.wait();
        // Let the reader thread drain the pipe.
        std::thread::sleep(Duration::from_millis(50));
        (status, self.log())
    }

    /// Whether the process is still running (not yet exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    /// Waits for the process to exit on its own.
    pub fn wait(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st;
            }
            if start.elapsed() > PATIENCE {
                let _ = child.kill();
                panic!("server did not exit:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Per-core "accepted N connections" figures from the server's shutdown log.
pub fn accepted_per_core(log: &str) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    for line in log.lines() {
        if let Some(i) = line.find("core ") {
            let rest = &line[i + 5..];
            if let Some((core, tail)) = rest.split_once(" stopped: accepted ") {
                if let (Ok(c), Some(n)) = (core.parse(), tail.split_whitespace().next()) {
                    if let Ok(n) = n.parse() {
                        out.push((c, n));
                    }
                }
            }
        }
    }
    out.sort();
    out
}

// ----- raw protocol helpers (for inputs a well-behaved client never sends) --

/// A TCP connection with timeouts set.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A valid upgrade request for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Reads an HTTP response head byte by byte (so no frame bytes are eaten).
pub fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            Ok(_) => break,
            Err(e) => panic!(
                "reading response head: {e} (got {:?})",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A raw WebSocket connection after a successful upgrade.
pub fn raw_ws(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = tcp(addr);
    s.write_all(upgrade_request(path).as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "upgrade failed: {head}");
    // Header names are case-insensitive (tokio-tungstenite sends lowercase).
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    s
}

/// Sends raw request bytes and reads the whole response until the server
/// closes. Returns (status, full response text).
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = tcp(addr);
    s.write_all(request).unwrap();
    let mut resp = Vec::new();
    match s.read_to_end(&mut resp) {
        Ok(_) => {}
        Err(e) => panic!(
            "server did not close after its response: {e}; got {:?}",
            String::from_utf8_lossy(&resp)
        ),
    }
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

/// Encodes a client frame. `mask: None` sends it unmasked (a protocol error).
pub fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = vec![(if fin { 0x80 } else { 0 }) | (rsv << 4) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        v.push(m | n as u8);
    } else if n <= 0xFFFF {
        v.push(m | 126);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(m | 127);
        v.extend_from_slice(&(n as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            v.extend_from_slice(&k);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => v.extend_from_slice(payload),
    }
    v
}

/// A masked client frame.
pub fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, 0, opcode, payload, Some([0x12, 0x34, 0x56, 0x78]))
}

/// Reads one server frame: (fin, opcode, payload). Server frames must be
/// unmasked and have no RSV bits.
pub fn read_frame(s: &mut TcpStream) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    assert_eq!(h[0] & 0x70, 0, "server set RSV bits");
    assert_eq!(h[1] & 0x80, 0, "server masked a frame");
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p)?;
    Ok((h[0] & 0x80 != 0, h[0] & 0x0F, p))
}

/// Reads frames until a close frame; returns its status code (0 if none)
/// and checks the server then closes the TCP connection.
pub fn expect_close(s: &mut TcpStream) -> u16 {
    loop {
        let (_, op, p) = read_frame(s).expect("expected a close frame, connection ended first");
        if op == 8 {
            let code = if p.len() >= 2 {
                u16::from_be_bytes([p[0], p[1]])
            } else {
                0
            };
            // Complete the handshake, then the server must close TCP.
            let _ = s.write_all(&masked(true, 8, &p[..p.len().min(2)]));
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            return code;
        }
    }
}

/// A tungstenite client with timeouts on its socket.
pub fn client(url: &str) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>> {
    let (ws, resp) = tungstenite::connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(resp.status(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.set_write_timeout(Some(PATIENCE)).unwrap();
    }
    ws
}

// ----- requests with extra headers, /metrics, /ws JSON --------------------

/// A tungstenite client connection.
pub type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// [`upgrade_request`] with extra header lines (each ending in `\r\n`).
pub fn upgrade_request_with(path: &str, extra_headers: &str) -> String {
    let req = upgrade_request(path);
    format!("{}{extra_headers}\r\n", &req[..req.len() - 2])
}

/// Upgrades with tungstenite, sending extra headers; `Err` carries the
/// refusal (`tungstenite::Error::Http` with the response).
pub fn try_client_with(url: &str, headers: &[(&str, &str)]) -> tungstenite::Result<Ws> {
    use tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request()?;
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("name");
        req.headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    let (ws, resp) = tungstenite::connect(req)?;
    assert_eq!(resp.status(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.set_write_timeout(Some(PATIENCE)).unwrap();
    }
    Ok(ws)
}

/// The body of an HTTP response text.
pub fn http_body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Scrapes `/metrics` and parses it as Prometheus text.
pub fn scrape(server: &impl Running) -> prometheus_parse::Scrape {
    let (status, resp) = http_exchange(server.addr(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{resp}");
    let lines = http_body(&resp).lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text format")
}

/// Sums a metric's samples over cores (optionally only those with a label).
pub fn metric_sum(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    label: Option<(&str, &str)>,
) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name}: unexpected sample type"),
        })
        .sum()
}

/// `ringcast_handshakes_total{outcome=...}` summed over cores.
pub fn handshakes(scrape: &prometheus_parse::Scrape, outcome: &str) -> f64 {
    metric_sum(
        scrape,
        "ringcast_handshakes_total",
        Some(("outcome", outcome)),
    )
}

/// Sends a `/ws` JSON message.
pub fn send_json(ws: &mut Ws, v: serde_json::Value) {
    ws.send(tungstenite::Message::text(v.to_string())).unwrap();
}

/// The next `/ws` JSON message (pings are answered by tungstenite itself).
pub fn recv_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        match read_message(ws) {
            tungstenite::Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The next message, read again when a signal interrupted the read (a
/// test process that spawns servers can see one; tungstenite keeps its
/// partial frame and does not retry by itself).
pub fn read_message(ws: &mut Ws) -> tungstenite::Message {
    loop {
        match ws.read() {
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                continue
            }
            other => return other.expect("read"),
        }
    }
}

/// Closes a tungstenite client and waits for the server's side of the
/// close handshake.
pub fn close_client(mut ws: Ws) {
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
}

// ----- server memory --------------------------------------------------------

/// The server's resident set size in bytes (`VmRSS` in /proc/PID/status).
pub fn rss_bytes(server: &Server) -> u64 {
    let pid = server.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kib * 1024
}

/// Connects to `path` until the server says the connection landed on
/// `core` (the `X-Ringcast-Core` header of the 101), so a test can place
/// clients on different cores. Bounded: SO_REUSEPORT spreads connections
/// by hash, so a few tries find each core.
pub fn ws_on_core(server: &impl Running, path: &str, core: usize) -> Ws {
    for _ in 0..200 {
        let (ws, resp) = tungstenite::connect(server.ws_url(path)).expect("upgrade");
        let on = resp
            .headers()
            .get("x-ringcast-core")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if on == Some(core) {
            if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
                s.set_read_timeout(Some(PATIENCE)).unwrap();
            }
            return ws;
        }
    }
    panic!("no connection landed on core {core} in 200 tries");
}

// ----- /ws: the welcome, streams messages and acks ------------------------

/// Checks a `/ws` welcome's shape, exactly:
/// `{"type":"welcome","client":ID,"core":N,"ping_ms":P}`.
pub fn check_welcome(v: &serde_json::Value) {
    assert_eq!(v["type"], "welcome", "the first frame on /ws: {v}");
    let mut keys: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("welcome not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["client", "core", "ping_ms", "type"], "welcome: {v}");
    assert!(
        v["client"].as_str().is_some_and(|c| !c.is_empty()),
        "welcome client: {v}"
    );
    assert!(v["core"].is_u64(), "welcome core: {v}");
    assert!(v["ping_ms"].is_u64(), "welcome ping_ms: {v}");
}

/// Reads the welcome, the first frame of every `/ws` connection, checks
/// its shape and returns it.
pub fn expect_welcome(ws: &mut Ws) -> serde_json::Value {
    let v = recv_json(ws);
    check_welcome(&v);
    v
}

/// A `/ws` client (any query: `url` is the whole `ws://` URL) with its
/// welcome consumed: (connection, welcome).
pub fn ws_client(url: &str) -> (Ws, serde_json::Value) {
    let mut ws = client(url);
    let welcome = expect_welcome(&mut ws);
    (ws, welcome)
}

/// [`try_client_with`] for `/ws`, the welcome consumed.
pub fn try_ws_client_with(
    url: &str,
    headers: &[(&str, &str)],
) -> tungstenite::Result<(Ws, serde_json::Value)> {
    let mut ws = try_client_with(url, headers)?;
    let welcome = expect_welcome(&mut ws);
    Ok((ws, welcome))
}

/// A `/ws` client on `core` ([`ws_on_core`]), its welcome consumed; the
/// welcome names the same core as the 101's `X-Ringcast-Core`.
pub fn ws_client_on_core(server: &impl Running, core: usize) -> (Ws, serde_json::Value) {
    ws_path_on_core(server, "/ws", core)
}

/// [`ws_client_on_core`] with a path (`/ws?token=...`).
pub fn ws_path_on_core(server: &impl Running, path: &str, core: usize) -> (Ws, serde_json::Value) {
    let mut ws = ws_on_core(server, path, core);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_write_timeout(Some(PATIENCE)).unwrap();
    }
    let welcome = expect_welcome(&mut ws);
    assert_eq!(welcome["core"], core, "welcome on core {core}: {welcome}");
    (ws, welcome)
}

/// [`raw_ws`] on `/ws`, the welcome frame read: (socket, welcome).
pub fn raw_ws_welcomed(addr: SocketAddr, path: &str) -> (TcpStream, serde_json::Value) {
    let mut s = raw_ws(addr, path);
    let (fin, op, p) = read_frame(&mut s).expect("the welcome frame");
    assert!(fin && op == 1, "welcome: opcode {op}, fin {fin}");
    let welcome: serde_json::Value = serde_json::from_slice(&p).expect("welcome JSON");
    check_welcome(&welcome);
    (s, welcome)
}

/// The exact text of a `message` frame: `payload` as the raw JSON text.
pub fn message_text(channel: &str, offset: u64, payload: &str) -> String {
    format!(
        r#"{{"type":"message","channel":{},"offset":{offset},"payload":{payload}}}"#,
        serde_json::Value::from(channel)
    )
}

/// A `message` as a value.
pub fn message_json(channel: &str, offset: u64, payload: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"type":"message","channel":channel,"offset":offset,"payload":payload})
}

/// One `message` frame, parsed, its field order checked (type, channel,
/// offset, payload): (channel, offset, payload).
pub fn parse_message(text: &str) -> (String, u64, serde_json::Value) {
    #[derive(serde::Deserialize)]
    struct M<'a> {
        r#type: String,
        channel: String,
        offset: u64,
        #[serde(borrow)]
        payload: &'a serde_json::value::RawValue,
    }
    let m: M<'_> = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(m.r#type, "message", "{text}");
    assert_eq!(
        text,
        message_text(&m.channel, m.offset, m.payload.get()),
        "a message's fields are type, channel, offset, payload, in that order"
    );
    let payload = serde_json::from_str(m.payload.get()).unwrap();
    (m.channel, m.offset, payload)
}

/// The next text frame as the server wrote it (pings answered by
/// tungstenite).
pub fn recv_text(ws: &mut Ws) -> String {
    loop {
        match read_message(ws) {
            tungstenite::Message::Text(t) => return t.as_str().to_owned(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Whether `e` is a string of hex digits (epochs are opaque hex strings).
pub fn is_epoch(e: &serde_json::Value) -> bool {
    e.as_str()
        .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Checks an ack that carries a channel's position (a subscribe without
/// `since` or `presence`, a publish): exactly `type`, `id` (when `id` is
/// `Some`), `epoch` and `offset`. Returns (epoch, offset).
pub fn check_offset_ack(v: &serde_json::Value, id: Option<u64>) -> (String, u64) {
    assert_eq!(v["type"], "ack", "{v}");
    let mut keys: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let want: &[&str] = if id.is_some() {
        &["epoch", "id", "offset", "type"]
    } else {
        &["epoch", "offset", "type"]
    };
    assert_eq!(keys, want, "ack fields: {v}");
    if let Some(id) = id {
        assert_eq!(v["id"], id, "{v}");
    }
    assert!(is_epoch(&v["epoch"]), "epoch: {v}");
    let offset = v["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("offset: {v}"));
    (v["epoch"].as_str().unwrap().to_owned(), offset)
}

/// Subscribes (no options) and checks the ack: returns (epoch, offset).
pub fn subscribe_ws(ws: &mut Ws, channel: &str, id: u64) -> (String, u64) {
    send_json(
        ws,
        serde_json::json!({"type":"subscribe","channel":channel,"id":id}),
    );
    let ack = recv_json(ws);
    check_offset_ack(&ack, Some(id))
}

/// Publishes and waits for the ack (the publisher must not be subscribed
/// to anything that could arrive first): returns (epoch, offset).
pub fn publish_ws(
    ws: &mut Ws,
    channel: &str,
    payload: serde_json::Value,
    id: u64,
) -> (String, u64) {
    send_json(
        ws,
        serde_json::json!({"type":"publish","channel":channel,"payload":payload,"id":id}),
    );
    let ack = recv_json(ws);
    check_offset_ack(&ack, Some(id))
}
