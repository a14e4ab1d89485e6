//! `ringcast-tokio`: the baseline ringcast is measured against.
//!
//! What a competent Rust developer would write with the standard stack:
//! a tokio multi-thread runtime (`--threads N`, default all cores) and
//! tokio-tungstenite, with the same flags, endpoints and limits as ringcast.
//!
//! `/echo` is one task per client: echoes are fed into the socket's write
//! buffer and flushed when no more input is ready, so a burst of requests is
//! answered with one write; a client that stops reading stops being read.
//!
//! `/broadcast` uses `tokio::sync::broadcast`, the usual tokio fan-out:
//! a publish is one write into a shared ring, and each subscriber's writer
//! task reads by cursor, takes everything already published, feeds it and
//! flushes once. Per-client `mpsc` queues were tried first and cost ~25% of
//! the core in queue pushes and pops alone at 2 M deliveries/s. The ring's
//! bound is in messages: `--max-send-queue-bytes` / 1 KiB (at least 64), so
//! 4096 by default. A subscriber that falls that far behind gets
//! `RecvError::Lagged` and is closed with 1008: never skipped silently. The
//! other clients are not slowed (the publisher never waits).
//!
//! `--addr-file PATH` writes the bound address to PATH once listening, so
//! tests and scripts that start it on port 0 need not parse the log.
//!
//! `--tls-cert FILE --tls-key FILE` (PEM) serve every endpoint over TLS
//! (`wss://`) the way a tokio service does: tokio-rustls in front of the
//! same connection task, rustls's defaults otherwise (TLS 1.2 and 1.3,
//! its session cache and TLS 1.3 tickets), ALPN `http/1.1`, the TLS
//! handshake counted in `--handshake-timeout`.

mod conn;
mod limits;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch, Notify};
use tokio_tungstenite::tungstenite::Message;

/// Baseline WebSocket server on tokio + tokio-tungstenite.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Runtime worker threads. Default: all cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Largest message accepted (else close 1009).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Bound on a client's unsent backlog (else close 1008).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_send_queue_bytes: usize,
    /// Seconds to wait for close handshakes on SIGINT/SIGTERM.
    #[arg(long, default_value_t = 5.0)]
    shutdown_grace: f64,
    /// Seconds a client has to complete its opening handshake.
    #[arg(long, default_value_t = 10.0)]
    handshake_timeout: f64,
    /// Seconds to wait, after our close frame, for the peer's close reply
    /// and then its FIN (input meanwhile is read and discarded).
    #[arg(long, default_value_t = 5.0)]
    close_timeout: f64,
    /// Log level (error, warn, info, debug).
    #[arg(long, default_value = "info")]
    log: String,
    /// Once listening, write the bound address (`127.0.0.1:PORT` and a
    /// newline) to this file, atomically (PATH.tmp, then renamed).
    #[arg(long, value_name = "PATH")]
    addr_file: Option<PathBuf>,
    /// Serve TLS (wss://) with this PEM certificate chain (the server's
    /// certificate first); needs --tls-key. TLS 1.2 and 1.3, ALPN http/1.1.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// What every connection task shares.
struct Server {
    /// The command line, for the limits and timeouts each connection uses.
    args: Args,
    /// Every /broadcast message, framed by each subscriber's writer.
    hub: broadcast::Sender<Message>,
    /// Connections being served: shutdown waits (bounded) for zero.
    active: AtomicUsize,
    /// Woken when `active` drops to zero.
    idle: Notify,
    /// `--tls-cert`: every connection is accepted through TLS first.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

fn main() {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringcast-tokio: runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(args, threads)) {
        eprintln!("ringcast-tokio: {e}");
        std::process::exit(1);
    }
}

/// Prints `msg` to stderr if `level` is within `--log`: the baseline keeps
/// its logging as plain as its stack (no subscriber, no filtering syntax).
fn log(args: &Args, level: &str, msg: &str) {
    let rank = |l: &str| match l {
        "error" => 0,
        "warn" => 1,
        "info" => 2,
        _ => 3,
    };
    if rank(level) <= rank(&args.log) {
        eprintln!("{} ringcast-tokio: {msg}", level.to_uppercase());
    }
}

/// Writes `addr` and a newline to `path` atomically: to `PATH.tmp` first,
/// then renamed over `path`, so a reader polling for the file never sees a
/// partial address.
fn write_addr_file(path: &Path, addr: SocketAddr) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Listens until SIGINT/SIGTERM, then closes every connection with 1001 and
/// waits (at most `--shutdown-grace`) for their tasks to finish.
async fn run(args: Args, threads: usize) -> Result<(), String> {
    if let Some((old, new)) = limits::raise_nofile() {
        log(
            &args,
            "info",
            &format!("raised open-files limit from {old} to {new}"),
        );
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    if let Some(path) = &args.addr_file {
        write_addr_file(path, local)
            .map_err(|e| format!("writing --addr-file {}: {e}", path.display()))?;
    }
    log(
        &args,
        "info",
        &format!(
            "ringcast-tokio listening on {}://{local} (pid {}) with {threads} worker thread(s); max message {} B, send queue bound {} B per connection{}",
            if tls.is_some() { "wss" } else { "ws" },
            std::process::id(),
            args.max_message_bytes,
            args.max_send_queue_bytes,
            if tls.is_some() {
                "; TLS 1.2/1.3 (rustls, ring), ALPN http/1.1"
            } else {
                ""
            }
        ),
    );
    let capacity = (args.max_send_queue_bytes / 1024).max(64);
    let server = Arc::new(Server {
        args: args.clone(),
        hub: broadcast::channel(capacity).0,
        active: AtomicUsize::new(0),
        idle: Notify::new(),
        tls,
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    server.active.fetch_add(1, Ordering::SeqCst);
                    let server = server.clone();
                    let shutdown = shutdown_rx.clone();
                    tokio::spawn(async move {
                        conn::serve(stream, &server, shutdown).await;
                        if server.active.fetch_sub(1, Ordering::SeqCst) == 1 {
                            server.idle.notify_waiters();
                        }
                    });
                }
                Err(e) => {
                    log(&args, "warn", &format!("accept: {e}; pausing 100 ms"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    drop(listener);
    log(
        &args,
        "info",
        "shutting down: no new connections, closing open ones with 1001",
    );
    let _ = shutdown_tx.send(true);
    let grace = Duration::from_secs_f64(args.shutdown_grace);
    let _ = tokio::time::timeout(grace, async {
        while server.active.load(Ordering::SeqCst) > 0 {
            let idle = server.idle.notified();
            if server.active.load(Ordering::SeqCst) == 0 {
                break;
            }
            idle.await;
        }
    })
    .await;
    Ok(())
}
