//! One task per connection: the handshake (TLS first with `--tls-cert`)
//! routes it to `/echo` or `/broadcast`, then [`echo`] or
//! [`broadcast_client`] serves it until it closes or the server shuts down.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::{log, Args, Server};

/// The endpoint a client asked for in its upgrade request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    /// `/echo`: every message comes back to its sender.
    Echo,
    /// `/broadcast`: every message goes to every `/broadcast` client.
    Broadcast,
}

/// Serves one accepted connection: the TLS handshake when the server has
/// a certificate, the WebSocket handshake (both within
/// `--handshake-timeout`), then the endpoint's loop.
pub(crate) async fn serve(stream: TcpStream, server: &Server, shutdown: watch::Receiver<bool>) {
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs_f64(server.args.handshake_timeout);
    match &server.tls {
        None => serve_ws(stream, server, shutdown, deadline).await,
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => serve_ws(tls, server, shutdown, deadline).await,
            Ok(Err(e)) => log(&server.args, "debug", &format!("TLS handshake failed: {e}")),
            Err(_) => log(&server.args, "debug", "TLS handshake timeout"),
        },
    }
}

/// The WebSocket side of [`serve`], over TCP or TLS.
async fn serve_ws<S>(
    stream: S,
    server: &Server,
    shutdown: watch::Receiver<bool>,
    deadline: tokio::time::Instant,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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
    let ws = match tokio::time::timeout_at(deadline, handshake).await {
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

/// A close frame with `code` and `reason`.
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
    // Wait (bounded) for the reader to see the peer's close, then linger.
    let timeout = Duration::from_secs_f64(args.close_timeout);
    if let Ok(Ok(stream)) = tokio::time::timeout(timeout, reader).await {
        if let Ok(ws) = stream.reunite(sink) {
            linger(ws.into_inner(), timeout).await;
        }
    }
}

/// Ends a connection whose close frame is already written: FIN our side,
/// then read and discard (bounded) until the peer's FIN. Dropping a socket
/// with unread input makes the kernel send an RST, which can destroy the
/// close frame before the peer reads it (a client still streaming when the
/// server fails the connection); the glommio server lingers the same way.
async fn linger<S>(mut s: S, timeout: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = s.shutdown().await;
    let mut buf = [0u8; 16 * 1024];
    let _ = tokio::time::timeout(timeout, async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
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
    let close_timeout = Duration::from_secs_f64(args.close_timeout);
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
                        linger(ws.into_inner(), close_timeout).await;
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
    let _ = tokio::time::timeout(close_timeout, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    linger(ws.into_inner(), close_timeout).await;
}
