//! Real external services for tests: `redis-server` (one node, or a cluster
//! made with `redis-cli --cluster create`) and nginx running
//! `deploy/nginx.conf`. Each is a child process on a free loopback port
//! with its own temporary directory (data, config, logs), killed and
//! removed on drop. Nothing is mocked; every wait is bounded and a service
//! that does not come up fails the test with its log.
//!
//! `.ci/run` installs the packages (`redis-server`, `redis-tools`, `nginx`).

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::PATIENCE;

/// How long a service process gets to start answering.
pub const STARTUP: Duration = Duration::from_secs(10);

/// Where Debian's package puts nginx (not on a non-root `PATH`).
pub const NGINX_BIN: &str = "/usr/sbin/nginx";

/// The nginx config [`Nginx::start`] runs (rewritten for its ports).
pub const NGINX_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf");

// ----- scratch directories and ports ----------------------------------------

/// A directory under the system temp dir, removed (with its contents) on
/// drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory named after `what`, this process and a
    /// sequence number.
    pub fn new(what: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ringcast-{what}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nothing listens on right now: bind port 0, read what the
/// kernel picked, close. (Another process could take it before the service
/// binds it; the ephemeral range makes that unlikely.)
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// `127.0.0.1:port`.
fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A file's text, or a note that it could not be read (for panic messages).
fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

/// Opens (appending) the log file a child's stdout and stderr both go to.
fn log_stdio(path: &Path) -> (Stdio, Stdio) {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let g = f.try_clone().expect("dup log file");
    (Stdio::from(f), Stdio::from(g))
}

/// Polls `ready` until it holds, for at most `limit`. Panics with `log()`
/// if `child` exits first or time runs out (the child is killed then).
fn wait_ready(
    what: &str,
    child: &mut Child,
    limit: Duration,
    log: impl Fn() -> String,
    mut ready: impl FnMut() -> bool,
) {
    let start = Instant::now();
    loop {
        if ready() {
            return;
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "{what} exited ({status}) before it was ready; its log:\n{}",
                log()
            );
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} was not ready within {limit:?}; its log:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for a child to exit within `limit`; kills it after that. Returns
/// whether it exited by itself.
fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().ok().flatten().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Starts `cmd`, or panics naming the package that provides `bin`.
fn spawn(cmd: &mut Command, bin: &str, package: &str) -> Child {
    cmd.stdin(Stdio::null()).spawn().unwrap_or_else(|e| {
        panic!("starting {bin}: {e} (install the Debian package {package}; .ci/run does)")
    })
}

// ----- RESP2 ---------------------------------------------------------------

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespValue {
    /// `+OK`
    Simple(String),
    /// `-ERR ...` (the text after the `-`)
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc`
    Bulk(Vec<u8>),
    /// The null bulk string `$-1` and the null array `*-1`.
    Nil,
    /// `*N` followed by N replies, nested to any depth.
    Array(Vec<RespValue>),
}

impl RespValue {
    /// The text of a simple string or a (UTF-8) bulk string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            RespValue::Simple(s) => Some(s),
            RespValue::Bulk(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// [`as_str`](Self::as_str), or a panic naming what came instead.
    pub fn text(&self) -> &str {
        self.as_str()
            .unwrap_or_else(|| panic!("expected a string reply, got {self:?}"))
    }

    /// The value of an integer reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            RespValue::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of an array reply.
    pub fn as_array(&self) -> Option<&[RespValue]> {
        match self {
            RespValue::Array(v) => Some(v),
            _ => None,
        }
    }

    /// Whether this is `+OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, RespValue::Simple(s) if s == "OK")
    }
}

/// A command as a RESP array of bulk strings.
pub fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one reply (of any depth) from `r`.
pub fn read_reply(r: &mut impl BufRead) -> io::Result<RespValue> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(if line.is_empty() {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")
        } else {
            bad(format!(
                "unterminated line {:?}",
                String::from_utf8_lossy(&line)
            ))
        });
    }
    line.truncate(line.len() - 2);
    let (kind, rest) = line.split_first().ok_or_else(|| bad("empty line".into()))?;
    let text = String::from_utf8(rest.to_vec()).map_err(|e| bad(e.to_string()))?;
    let number = || -> io::Result<i64> {
        text.parse()
            .map_err(|_| bad(format!("bad number {text:?} after {:?}", *kind as char)))
    };
    Ok(match kind {
        b'+' => RespValue::Simple(text.clone()),
        b'-' => RespValue::Error(text.clone()),
        b':' => RespValue::Integer(number()?),
        b'$' => match number()? {
            -1 => RespValue::Nil,
            n if n >= 0 => {
                let mut body = vec![0u8; n as usize + 2];
                r.read_exact(&mut body)?;
                if !body.ends_with(b"\r\n") {
                    return Err(bad("bulk string not followed by CRLF".into()));
                }
                body.truncate(n as usize);
                RespValue::Bulk(body)
            }
            n => return Err(bad(format!("bulk length {n}"))),
        },
        b'*' => match number()? {
            -1 => RespValue::Nil,
            n if n >= 0 => RespValue::Array(
                (0..n)
                    .map(|_| read_reply(r))
                    .collect::<io::Result<Vec<_>>>()?,
            ),
            n => return Err(bad(format!("array length {n}"))),
        },
        other => return Err(bad(format!("unknown reply type {:?}", *other as char))),
    })
}

/// Sends one command to `addr` on a new connection and reads its reply.
pub fn resp_command(addr: SocketAddr, args: &[&str]) -> io::Result<RespValue> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(PATIENCE))?;
    s.set_write_timeout(Some(PATIENCE))?;
    s.write_all(&encode_command(args))?;
    read_reply(&mut BufReader::new(s))
}

/// Whether something on `port` answers PING with `+PONG` (quickly).
fn pongs(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&loopback(port), Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(&encode_command(&["PING"])).is_err() {
        return false;
    }
    matches!(read_reply(&mut BufReader::new(s)), Ok(RespValue::Simple(p)) if p == "PONG")
}

// ----- redis-server ----------------------------------------------------------

/// A `redis-server` child process on `127.0.0.1:port`, without persistence,
/// in its own temporary directory (its `--dir` and `redis.log`).
pub struct Redis {
    port: u16,
    extra: Vec<String>,
    child: Option<Child>,
    // Last: removed after the process is gone.
    dir: TempDir,
}

impl Redis {
    /// A standalone server on a free port, answering PING.
    pub fn start() -> Redis {
        Redis::start_on(free_port(), &[])
    }

    /// A server on `port` with extra `redis-server` arguments (kept for
    /// [`restart`](Self::restart)).
    pub fn start_on(port: u16, extra: &[&str]) -> Redis {
        let mut redis = Redis {
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
            dir: TempDir::new(&format!("redis-{port}")),
        };
        redis.launch();
        redis
    }

    fn launch(&mut self) {
        assert!(
            self.child.is_none(),
            "redis on {} already running",
            self.port
        );
        let (out, err) = log_stdio(&self.log_path());
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .args(&self.extra)
            .stdout(out)
            .stderr(err);
        let mut child = spawn(&mut cmd, "redis-server", "redis-server");
        let log = self.log_path();
        wait_ready(
            &format!("redis-server on port {}", self.port),
            &mut child,
            STARTUP,
            || read_log(&log),
            || pongs(self.port),
        );
        self.child = Some(child);
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log file (stdout and stderr of every run).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Everything it has logged.
    pub fn log(&self) -> String {
        read_log(&self.log_path())
    }

    /// SIGKILL, then reaps the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same flags (killing it
    /// first if it still runs) and waits for PONG.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Sends `sig` to the process (SIGSTOP/SIGCONT: a wedged broker).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    /// Sends one command and returns the reply (an error reply is a
    /// [`RespValue::Error`], not a panic); panics with the log if the
    /// server cannot be reached.
    pub fn cmd(&self, args: &[&str]) -> RespValue {
        self.try_cmd(args).unwrap_or_else(|e| {
            panic!(
                "redis {} {args:?}: {e}; its log:\n{}",
                self.port,
                self.log()
            )
        })
    }

    /// [`cmd`](Self::cmd) that returns I/O errors (a killed server).
    pub fn try_cmd(&self, args: &[&str]) -> io::Result<RespValue> {
        resp_command(self.addr(), args)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `redis-server --cluster-enabled yes` nodes, all masters, made into one
/// cluster by `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<Redis>,
}

/// A free port whose cluster bus port (port + 10000) is free and valid.
fn free_cluster_port() -> u16 {
    for _ in 0..200 {
        let p = free_port();
        if p <= 55535 && TcpListener::bind(loopback(p + 10000)).is_ok() {
            return p;
        }
    }
    panic!("no free port with a free cluster bus port (+10000)");
}

impl RedisCluster {
    /// `masters` (at least 3, redis-cli's minimum) nodes, no replicas, all
    /// 16384 slots assigned; returns once every node reports
    /// `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        assert!(masters >= 3, "a Redis cluster needs at least 3 masters");
        let nodes: Vec<Redis> = (0..masters)
            .map(|_| {
                let port = free_cluster_port();
                let conf = format!("nodes-{port}.conf");
                Redis::start_on(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let cluster = RedisCluster { nodes };
        cluster.create();
        cluster.wait_ok();
        cluster
    }

    /// Runs `redis-cli --cluster create` (bounded), its output in the first
    /// node's directory.
    fn create(&self) {
        let log = self.nodes[0].dir().join("cluster-create.log");
        let (out, err) = log_stdio(&log);
        let mut cmd = Command::new("redis-cli");
        cmd.args(["--cluster", "create"])
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(out)
            .stderr(err);
        let mut child = spawn(&mut cmd, "redis-cli", "redis-tools");
        if !wait_exit(&mut child, PATIENCE) {
            panic!(
                "redis-cli --cluster create did not finish within {PATIENCE:?}:\n{}\n{}",
                read_log(&log),
                self.logs()
            );
        }
        let status = child.wait().expect("wait");
        assert!(
            status.success(),
            "redis-cli --cluster create: {status}\n{}\n{}",
            read_log(&log),
            self.logs()
        );
    }

    /// Waits (bounded) until every node's CLUSTER INFO says
    /// `cluster_state:ok`.
    fn wait_ok(&self) {
        let start = Instant::now();
        loop {
            let states: Vec<String> = self
                .nodes
                .iter()
                .map(|n| match n.try_cmd(&["CLUSTER", "INFO"]) {
                    Ok(info) => info
                        .as_str()
                        .and_then(|t| t.lines().find(|l| l.starts_with("cluster_state:")))
                        .map_or_else(|| format!("{info:?}"), |l| l.trim().to_owned()),
                    Err(e) => e.to_string(),
                })
                .collect();
            if states.iter().all(|s| s == "cluster_state:ok") {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "cluster not ok within {PATIENCE:?}: {states:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every node's log, for panic messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- redis {} ---\n{}", n.port(), n.log()))
            .collect()
    }

    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2,...`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis-cluster://{}", hosts.join(","))
    }

    /// The nodes' ports, in creation order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(Redis::port).collect()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Redis {
        &self.nodes[i]
    }

    /// Node `i`, to kill or restart.
    pub fn node_mut(&mut self, i: usize) -> &mut Redis {
        &mut self.nodes[i]
    }

    /// Sends a command to node `i` (no redirection: a key of another
    /// node's slot gets `-MOVED`).
    pub fn cmd_on(&self, i: usize, args: &[&str]) -> RespValue {
        self.nodes[i].cmd(args)
    }
}

// ----- nginx -----------------------------------------------------------------

/// nginx running [`NGINX_CONF`] as a foreground process under a temporary
/// prefix, listening on a free loopback port and proxying to `upstreams`.
pub struct Nginx {
    port: u16,
    child: Option<Child>,
    dir: TempDir,
}

/// Rewrites `deploy/nginx.conf` for a test: the `listen` line to
/// `127.0.0.1:port`, the `server` lines of `upstream ringcast { ... }` to one
/// per upstream (keeping the first line's parameters, `max_fails=...`), the
/// `pid`, `error_log` and `access_log` paths and the temp paths into
/// `prefix`. Panics if the file no longer has exactly the lines it rewrites,
/// so the file and this function cannot drift apart silently.
pub fn render_nginx_conf(
    template: &str,
    port: u16,
    upstreams: &[SocketAddr],
    prefix: &Path,
) -> String {
    assert!(!upstreams.is_empty(), "nginx needs at least one upstream");
    let p = prefix.display();
    let mut out = String::new();
    let (mut listens, mut pids, mut error_logs, mut access_logs, mut https, mut blocks) =
        (0, 0, 0, 0, 0, 0);
    let mut in_upstream = false;
    let mut servers_written = false;
    for line in template.lines() {
        let t = line.trim();
        let indent = &line[..line.len() - line.trim_start().len()];
        if in_upstream {
            if t == "}" {
                assert!(servers_written, "upstream ringcast has no server lines");
                in_upstream = false;
            } else if let Some(rest) = t.strip_prefix("server ") {
                if !servers_written {
                    // `server ADDR params;` -> the same params for each upstream.
                    let params = rest
                        .trim_end_matches(';')
                        .split_once(char::is_whitespace)
                        .map_or("", |(_, params)| params.trim());
                    for u in upstreams {
                        out.push_str(&format!("{indent}server {u} {params};\n"));
                    }
                    servers_written = true;
                }
                continue;
            }
        } else if t.starts_with("upstream ringcast") && t.ends_with('{') {
            in_upstream = true;
            blocks += 1;
        } else if t.starts_with("listen ") {
            listens += 1;
            out.push_str(&format!("{indent}listen 127.0.0.1:{port};\n"));
            continue;
        } else if t.starts_with("pid ") {
            pids += 1;
            out.push_str(&format!("{indent}pid {p}/nginx.pid;\n"));
            continue;
        } else if t.starts_with("error_log ") {
            error_logs += 1;
            out.push_str(&format!("{indent}error_log {p}/error.log info;\n"));
            continue;
        } else if t.starts_with("access_log ") {
            access_logs += 1;
            out.push_str(&format!("{indent}access_log {p}/access.log;\n"));
            continue;
        } else if t == "http {" {
            https += 1;
            out.push_str(line);
            out.push('\n');
            for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                out.push_str(&format!("{indent}    {kind}_temp_path {p}/{kind}_temp;\n"));
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    let counts = [
        ("listen", listens),
        ("pid", pids),
        ("error_log", error_logs),
        ("access_log", access_logs),
        ("http {", https),
        ("upstream ringcast {", blocks),
    ];
    for (what, n) in counts {
        assert_eq!(n, 1, "{NGINX_CONF}: expected one `{what}` line, found {n}");
    }
    assert!(!in_upstream, "upstream ringcast block not closed");
    out
}

impl Nginx {
    /// nginx on a free port in front of `upstreams`; returns once the port
    /// accepts connections.
    pub fn start(upstreams: &[SocketAddr]) -> Nginx {
        let dir = TempDir::new("nginx");
        let port = free_port();
        let template =
            fs::read_to_string(NGINX_CONF).unwrap_or_else(|e| panic!("reading {NGINX_CONF}: {e}"));
        let conf = dir.path().join("nginx.conf");
        fs::write(
            &conf,
            render_nginx_conf(&template, port, upstreams, dir.path()),
        )
        .expect("writing nginx.conf");
        let (out, err) = log_stdio(&dir.path().join("nginx.out"));
        let mut cmd = Command::new(NGINX_BIN);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            // The error log before the config is read (else nginx's
            // compiled-in path, which a non-root user cannot open).
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdout(out)
            .stderr(err);
        let mut child = spawn(&mut cmd, NGINX_BIN, "nginx");
        let mut nginx = Nginx {
            port,
            child: None,
            dir,
        };
        wait_ready(
            &format!("nginx on port {port}"),
            &mut child,
            STARTUP,
            || nginx.log(),
            || TcpStream::connect_timeout(&loopback(port), Duration::from_millis(500)).is_ok(),
        );
        nginx.child = Some(child);
        nginx
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `ws://127.0.0.1:PORT{path}` (for plain HTTP, swap the scheme or use
    /// [`addr`](Self::addr)).
    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// The rendered config, its output and its error log.
    pub fn log(&self) -> String {
        let d = self.dir.path();
        format!(
            "--- nginx.conf ---\n{}\n--- nginx.out ---\n{}\n--- error.log ---\n{}",
            read_log(&d.join("nginx.conf")),
            read_log(&d.join("nginx.out")),
            read_log(&d.join("error.log"))
        )
    }

    /// Its access log (one line per request or WebSocket, at its end).
    pub fn access_log(&self) -> String {
        read_log(&self.dir.path().join("access.log"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as i32;
        // The workers' pids, for the case the master has to be SIGKILLed
        // (they would outlive it, holding the port).
        let workers: Vec<i32> = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        // SIGTERM: the master stops its workers, then exits.
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if !wait_exit(&mut child, Duration::from_secs(5)) {
            for w in workers {
                // SAFETY: kill(2) on the master's children, found above.
                unsafe { libc::kill(w, libc::SIGKILL) };
            }
        }
    }
}
