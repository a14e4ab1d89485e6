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
//! `/broadcast` clients get a task pair: the reader task publishes to the
//! hub; the writer task takes everything queued for its client at once
//! (`recv_many`), feeds it and flushes once. The queue is an unbounded
//! `mpsc` with a byte counter beside it, so the bound is in bytes like
//! ringcast's (`--max-send-queue-bytes`): a client whose backlog is over the
//! bound when a message is queued for it is closed with 1008 and its backlog
//! dropped; nobody else waits for it.
//!
//! Why not `tokio::sync::broadcast` for the hub: its bound is a message
//! count shared by all receivers, and a lagging receiver silently skips
//! messages (`RecvError::Lagged`). A per-client byte bound closes the slow
//! client instead of losing its messages silently, which is the semantics
//! ringcast promises. The hub is a read-mostly `RwLock<HashMap>` of client
//! queues; messages are `Bytes`, so fan-out clones a reference per client
//! (tungstenite then frames each copy itself).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
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

/// What the writer task sends.
enum Out {
    Msg(Message),
    Close(CloseCode, &'static str),
    /// The reader is done: flush what is queued and stop.
    Done,
}

/// One client's outbound side, shared by the reader, the hub and the writer.
struct Client {
    tx: mpsc::UnboundedSender<Out>,
    queued: AtomicUsize,
    /// Set once the client is over its bound; the writer drops the backlog.
    slow: AtomicBool,
    slow_notify: Notify,
}

impl Client {
    /// Queues a message unless the client's backlog is over the bound.
    fn enqueue(&self, msg: Message, max: usize) {
        if self.slow.load(Ordering::Relaxed) {
            return;
        }
        if self.queued.load(Ordering::Relaxed) > max {
            self.slow.store(true, Ordering::Relaxed);
            self.slow_notify.notify_one();
            return;
        }
        self.queued.fetch_add(msg.len(), Ordering::Relaxed);
        let _ = self.tx.send(Out::Msg(msg));
    }
}

#[derive(Default)]
struct Hub {
    clients: RwLock<HashMap<u64, Arc<Client>>>,
    next: AtomicU64,
}

struct Server {
    args: Args,
    hub: Hub,
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
    raise_nofile();
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
    let server = Arc::new(Server {
        args: args.clone(),
        hub: Hub::default(),
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

async fn serve(stream: TcpStream, server: &Server, mut shutdown: watch::Receiver<bool>) {
    let args = &server.args;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = Arc::new(Client {
        tx,
        queued: AtomicUsize::new(0),
        slow: AtomicBool::new(false),
        slow_notify: Notify::new(),
    });
    let id = server.hub.next.fetch_add(1, Ordering::Relaxed);
    let mut route = None;
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
                server
                    .hub
                    .clients
                    .write()
                    .expect("hub lock")
                    .insert(id, client.clone());
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
        Ok(Ok(ws)) => Some(ws),
        Ok(Err(e)) => {
            log(args, "debug", &format!("handshake refused: {e}"));
            None
        }
        Err(_) => {
            log(args, "debug", "handshake timeout");
            None
        }
    };
    let (Some(ws), Some(route)) = (ws, route) else {
        server.hub.clients.write().expect("hub lock").remove(&id);
        return;
    };
    if route == Route::Echo {
        return echo(ws, shutdown, args).await;
    }
    let (mut sink, mut stream) = ws.split();

    // Writer: take everything queued at once, feed it, flush once.
    let wclient = client.clone();
    let writer = tokio::spawn(async move {
        let close = |code, reason: &'static str| {
            Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }))
        };
        let mut batch = Vec::with_capacity(64);
        'outer: loop {
            let n = tokio::select! {
                biased;
                _ = wclient.slow_notify.notified() => {
                    let _ = sink.send(close(CloseCode::Policy, "send queue over limit")).await;
                    break;
                }
                _ = shutdown.changed() => {
                    let _ = sink.send(close(CloseCode::Away, "server shutting down")).await;
                    break;
                }
                n = rx.recv_many(&mut batch, 256) => n,
            };
            if n == 0 {
                let _ = sink.flush().await;
                break;
            }
            for out in batch.drain(..) {
                match out {
                    Out::Msg(m) => {
                        let len = m.len();
                        if sink.feed(m).await.is_err() {
                            break 'outer;
                        }
                        wclient.queued.fetch_sub(len, Ordering::Relaxed);
                    }
                    Out::Close(code, reason) => {
                        let _ = sink.send(close(code, reason)).await;
                        break 'outer;
                    }
                    Out::Done => {
                        let _ = sink.flush().await;
                        break 'outer;
                    }
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        sink
    });

    // Reader: parse, echo or publish; map protocol errors to close codes.
    let max = args.max_send_queue_bytes;
    while let Some(r) = stream.next().await {
        match r {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => match route {
                Route::Echo => client.enqueue(m, max),
                Route::Broadcast => {
                    let clients = server.hub.clients.read().expect("hub lock");
                    for c in clients.values() {
                        c.enqueue(m.clone(), max);
                    }
                }
            },
            Ok(_) => {} // ping/pong/close: tungstenite replies itself
            Err(e) => {
                let code = match e {
                    WsError::Capacity(_) => Some((CloseCode::Size, "message too big")),
                    WsError::Utf8(_) => Some((CloseCode::Invalid, "invalid UTF-8")),
                    WsError::Protocol(_) => Some((CloseCode::Protocol, "protocol error")),
                    _ => None,
                };
                if let Some((code, reason)) = code {
                    let _ = client.tx.send(Out::Close(code, reason));
                }
                break;
            }
        }
    }
    if route == Route::Broadcast {
        server.hub.clients.write().expect("hub lock").remove(&id);
    }
    let _ = client.tx.send(Out::Done);
    drop(client);
    // The writer ends after flushing the queue or sending a close frame;
    // then wait briefly for the peer's close.
    if let Ok(sink) = writer.await {
        if let Ok(mut ws) = sink.reunite(stream) {
            let _ = tokio::time::timeout(Duration::from_secs_f64(args.close_timeout), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
    }
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
    let fail = |e: &WsError| match e {
        WsError::Capacity(_) => Some((CloseCode::Size, "message too big")),
        WsError::Utf8(_) => Some((CloseCode::Invalid, "invalid UTF-8")),
        WsError::Protocol(_) => Some((CloseCode::Protocol, "protocol error")),
        _ => None,
    };
    let close = |code, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
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
                    if let Some((code, reason)) = fail(&e) {
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

fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on our own process.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
