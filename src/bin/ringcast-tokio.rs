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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch, Notify};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

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
    /// Accepted for command-line compatibility with ringcast; tungstenite
    /// closes on its own schedule.
    #[arg(long, default_value_t = 5.0)]
    close_timeout: f64,
    /// Log level (error, warn, info, debug).
    #[arg(long, default_value = "info")]
    log: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    Echo,
    Broadcast,
}

struct Server {
    args: Args,
    /// Every /broadcast message, framed by each subscriber's writer.
    hub: broadcast::Sender<Message>,
    active: AtomicUsize,
    idle: Notify,
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

async fn run(args: Args, threads: usize) -> Result<(), String> {
    ringcast::runtime::limits::raise_nofile();
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    log(
        &args,
        "info",
        &format!(
            "ringcast-tokio listening on ws://{local} (pid {}) with {threads} worker thread(s); max message {} B, send queue bound {} B per connection",
            std::process::id(),
            args.max_message_bytes,
            args.max_send_queue_bytes
        ),
    );
    let capacity = (args.max_send_queue_bytes / 1024).max(64);
    let server = Arc::new(Server {
        args: args.clone(),
        hub: broadcast::channel(capacity).0,
        active: AtomicUsize::new(0),
        idle: Notify::new(),
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
                        serve(stream, &server, shutdown).await;
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

async fn serve(stream: TcpStream, server: &Server, shutdown: watch::Receiver<bool>) {
    let args = &server.args;
    let mut route = None;
    let mut subscription = None;
    // The callback's signature is tungstenite's (its error is a full HTTP
    // response), so the large Err variant is not ours to shrink.
    #[allow(clippy::result_large_err)]
    // Runs before the 101 is written: a /broadcast client is subscribed by
    // the time it can see the upgrade succeed, so it misses nothing sent
    // after that.
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        route = match req.uri().path() {
            "/echo" => Some(Route::Echo),
            "/broadcast" => {
                subscription = Some(server.hub.subscribe());
                Some(Route::Broadcast)
            }
            _ => {
                let mut r = ErrorResponse::new(Some("no WebSocket endpoint at this path\n".into()));
                *r.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
                return Err(r);
            }
        };
        Ok(resp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(args.max_message_bytes))
        .max_frame_size(Some(args.max_message_bytes));
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    let ws = match tokio::time::timeout(Duration::from_secs_f64(args.handshake_timeout), handshake)
        .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return log(args, "debug", &format!("handshake refused: {e}")),
        Err(_) => return log(args, "debug", "handshake timeout"),
    };
    match (route, subscription) {
        (Some(Route::Echo), _) => echo(ws, shutdown, args).await,
        (Some(Route::Broadcast), Some(rx)) => {
            broadcast_client(ws, rx, &server.hub, shutdown, args).await
        }
        _ => {}
    }
}

fn close(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// The close code for a read error, if the peer broke the protocol.
fn close_for(e: &WsError) -> Option<(CloseCode, &'static str)> {
    match e {
        WsError::Capacity(_) => Some((CloseCode::Size, "message too big")),
        WsError::Utf8(_) => Some((CloseCode::Invalid, "invalid UTF-8")),
        WsError::Protocol(_) => Some((CloseCode::Protocol, "protocol error")),
        _ => None,
    }
}

/// A /broadcast client: a reader task that publishes, and a writer (this
/// task) that drains the shared ring from its cursor.
async fn broadcast_client<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    mut rx: broadcast::Receiver<Message>,
    hub: &broadcast::Sender<Message>,
    mut shutdown: watch::Receiver<bool>,
    args: &Args,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (fail_tx, mut fail_rx) = tokio::sync::oneshot::channel::<(CloseCode, &'static str)>();
    let hub2 = hub.clone();
    let reader = tokio::spawn(async move {
        while let Some(r) = stream.next().await {
            match r {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                    let _ = hub2.send(m);
                }
                Ok(_) => {} // ping/pong/close: tungstenite replies itself
                Err(e) => {
                    if let Some(c) = close_for(&e) {
                        let _ = fail_tx.send(c);
                    }
                    break;
                }
            }
        }
        stream
    });
    // Writer: everything already published goes out in one flush.
    let mut closing = None;
    'outer: loop {
        let first = tokio::select! {
            biased;
            c = &mut fail_rx => {
                closing = c.ok();
                break;
            }
            _ = shutdown.changed() => {
                closing = Some((CloseCode::Away, "server shutting down"));
                break;
            }
            m = rx.recv() => m,
        };
        let mut next = Some(first);
        let mut fed = 0;
        while let Some(r) = next.take() {
            match r {
                Ok(m) => {
                    if sink.feed(m).await.is_err() {
                        break 'outer;
                    }
                    fed += 1;
                }
                Err(RecvError::Lagged(_)) => {
                    closing = Some((CloseCode::Policy, "send queue over limit"));
                    break 'outer;
                }
                Err(RecvError::Closed) => break 'outer,
            }
            if fed < 256 {
                next = match rx.try_recv() {
                    Ok(m) => Some(Ok(m)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Some(Err(RecvError::Lagged(n)))
                    }
                    Err(_) => None,
                };
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
        if reader.is_finished() {
            break;
        }
    }
    drop(rx);
    if let Some((code, reason)) = closing {
        let _ = sink.send(close(code, reason)).await;
    }
    // Wait (bounded) for the reader to see the peer's close, then drop TCP.
    let _ = tokio::time::timeout(Duration::from_secs_f64(args.close_timeout), reader).await;
}

/// `/echo` needs no queue shared with other tasks, so it is one task: feed
/// every echo into the socket's write buffer and flush once no more input is
/// ready. A client that stops reading stops being read (TCP backpressure),
/// so its backlog is bounded by tungstenite's write buffer.
async fn echo<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    mut shutdown: watch::Receiver<bool>,
    args: &Args,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::FutureExt;
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                let _ = ws.send(close(CloseCode::Away, "server shutting down")).await;
                break;
            }
            m = ws.next() => m,
        };
        let mut next = first;
        loop {
            match next {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.feed(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {} // control frames: tungstenite replies itself
                Some(Err(e)) => {
                    if let Some((code, reason)) = close_for(&e) {
                        let _ = ws.send(close(code, reason)).await;
                    }
                    return;
                }
                None => return,
            }
            // Keep going while input is already there; flush when it is not.
            match ws.next().now_or_never() {
                Some(m) => next = m,
                None => break,
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
    // Shutting down: wait for the peer's close reply (bounded).
    let _ = tokio::time::timeout(Duration::from_secs_f64(args.close_timeout), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
