//! A connection's request head: collected across reads if it comes in
//! pieces, parsed, and acted on — upgrade, refusal, `100 Continue`, an
//! operator resource, an API answer.

use tracing::debug;

use super::recv::Input;
use super::slab::{Conn, Deadline, Flag, Phase};
use super::{metrics, Shard, ShardConfig};
use crate::app::requests::{self, HeadOutcome, HttpRequest, RefusedBy};
use crate::app::{assets, auth, protocol, ConnCtl, Endpoint, Env, Resource, Route};
use crate::conn::ConnKey;
use crate::http::{self, Refusal};
use crate::ws::handshake::{self, Parsed, Progress};
use crate::ws::{CloseCode, Session};

/// Parses what a handshaking connection has sent so far (`data`: this
/// read). A head that came in pieces is collected in the connection; it
/// stays bounded because the parser refuses anything past
/// `--max-header-bytes` (431) and `--max-body-bytes` (413).
pub(super) fn parse(conn: &mut Conn, cfg: &ShardConfig, env: &mut Env, data: &[u8]) -> HeadOutcome {
    let Phase::Handshake(head) = &mut conn.phase else {
        return HeadOutcome::Nothing;
    };
    let (max_head, max_body) = (cfg.max_header_bytes, cfg.max_body_bytes);
    let buffered = !head.is_empty();
    if buffered {
        head.extend_from_slice(data);
    }
    let buf: &[u8] = if buffered { head } else { data };
    let access = &cfg.access;
    let outcome = match handshake::parse_http(buf, max_head, max_body, Route::target) {
        Ok(Progress::Partial) => HeadOutcome::Nothing,
        Ok(Progress::AwaitingBody {
            continue_expected,
            resource,
            method,
            creds,
        }) => {
            let scratch = &mut env.scratch;
            let refused = requests::precheck(access, resource, method, &creds, scratch)
                .or_else(|| requests::body_not_wanted(resource, scratch));
            if let Some(refused) = refused {
                refused
            } else if continue_expected && !conn.flags.has(Flag::ContinueSent) {
                conn.flags.set(Flag::ContinueSent, true);
                HeadOutcome::Continue
            } else {
                HeadOutcome::Nothing
            }
        }
        Ok(Progress::Done(Parsed::Upgrade { upgrade, creds })) => {
            // Where the frames after the head start in this read.
            let after_head = buf.len() - upgrade.head_len;
            requests::admit(access, upgrade, &creds, data.len() - after_head)
        }
        Ok(Progress::Done(Parsed::Http {
            resource,
            method,
            body,
            creds,
            ..
        })) => {
            let req = HttpRequest {
                resource,
                method,
                body,
                creds,
            };
            requests::request(access, env, req)
        }
        Err(r) => HeadOutcome::Refuse(r, RefusedBy::Protocol),
    };
    if !buffered && matches!(outcome, HeadOutcome::Nothing | HeadOutcome::Continue) {
        if let Phase::Handshake(head) = &mut conn.phase {
            head.extend_from_slice(data);
        }
    }
    outcome
}

impl Shard {
    /// Acts on a request head once its bytes are no longer borrowed.
    pub(super) fn after_head(&mut self, key: ConnKey, outcome: HeadOutcome, input: Input<'_>) {
        match outcome {
            HeadOutcome::Nothing => {}
            HeadOutcome::Continue => {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.out
                        .write_with(&mut self.env.pool, |v| v.extend_from_slice(http::CONTINUE));
                    self.mark_dirty(key);
                }
            }
            HeadOutcome::Upgrade(up, claims, from) => self.upgrade(key, up, claims, input, from),
            HeadOutcome::UpgradeUnauthorized(up, reason) => {
                self.stats.unauthorized += 1;
                debug!(
                    core = self.id,
                    reason, "/ws upgrade without a valid token: 4001"
                );
                let reason = format!("unauthorized: {reason}");
                self.upgrade_then_close(key, up, CloseCode::UNAUTHORIZED, &reason);
            }
            HeadOutcome::UpgradeForbidden(up, reason) => {
                self.stats.forbidden_origin += 1;
                debug!(
                    core = self.id,
                    reason, "/ws upgrade from a refused origin: 4003"
                );
                let reason = format!("forbidden: {reason}");
                self.upgrade_then_close(key, up, CloseCode::FORBIDDEN, &reason);
            }
            HeadOutcome::Refuse(r, by) => {
                match by {
                    RefusedBy::Protocol => self.stats.refused += 1,
                    RefusedBy::Token => self.stats.unauthorized += 1,
                    RefusedBy::Origin => self.stats.forbidden_origin += 1,
                }
                debug!(
                    core = self.id,
                    status = r.status,
                    reason = r.reason,
                    "handshake refused"
                );
                self.refuse(key, r);
            }
            HeadOutcome::Respond => self.respond(key),
            HeadOutcome::Resource(r) => self.answer_http(key, r),
            HeadOutcome::Query => self.start_query(key),
            HeadOutcome::Api(call) => self.start_api(key, call),
            HeadOutcome::Profile(req) => self.start_profile(key, req),
        }
    }

    /// Answers a plain HTTP resource and closes the connection after it
    /// (anything the client sent after the request head is ignored).
    fn answer_http(&mut self, key: ConnKey, resource: Resource) {
        self.stats.http_requests += 1;
        // The scrape includes this core's latest counts.
        self.publish_metrics();
        let control = &self.control;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.out.write_with(&mut self.env.pool, |v| match resource {
            Resource::Health => http::write_ok("text/plain; charset=utf-8", b"ok\n", v),
            Resource::Ready if control.ready() => {
                http::write_ok("text/plain; charset=utf-8", b"ready\n", v)
            }
            Resource::Ready => Refusal {
                status: 503,
                reason: "not ready: starting or draining",
            }
            .write_response(v),
            Resource::Sdk | Resource::SdkVersioned | Resource::Demo | Resource::Dashboard => {
                match assets::of(resource) {
                    Some(a) => http::write_response(
                        200,
                        a.content_type,
                        &a.headers(),
                        a.body.as_bytes(),
                        v,
                    ),
                    None => http::write_response(500, "text/plain", "", b"misrouted\n", v),
                }
            }
            Resource::Stats => http::write_response(
                200,
                "application/json",
                "Cache-Control: no-store\r\n",
                &metrics::render_json(
                    &control.metrics,
                    control.started.elapsed().as_millis() as u64,
                ),
                v,
            ),
            Resource::Metrics => {
                let mut text = metrics::render(&control.metrics);
                if let Some(b) = &control.broker {
                    b.render(&mut text);
                }
                http::write_ok(
                    "text/plain; version=0.0.4; charset=utf-8",
                    text.as_bytes(),
                    v,
                )
            }
            // Answered in `requests` before they get here.
            Resource::Publish
            | Resource::ChannelList
            | Resource::History
            | Resource::Presence
            | Resource::Profile => http::write_response(500, "text/plain", "", b"misrouted\n", v),
        });
        self.linger(key);
    }

    /// Completes a `/ws` upgrade that may not go on (no valid token, a
    /// refused origin), only to close it with `code` and `reason`: a
    /// browser sees close codes, never a refused upgrade's status. The
    /// connection has no endpoint, so nothing it sends is acted on (frames
    /// pipelined behind the request are never read), and it counts as
    /// refused, not upgraded.
    fn upgrade_then_close(
        &mut self,
        key: ConnKey,
        up: handshake::Upgrade<Route>,
        code: CloseCode,
        reason: &str,
    ) {
        if self.open_session(key, &up, ConnCtl::default()) {
            self.mark_dirty(key);
            self.close_open(key, code, reason, false);
        }
    }

    /// Queues the 101 and opens the WebSocket session with `ctl`. Returns
    /// whether the connection was there.
    fn open_session(&mut self, key: ConnKey, up: &handshake::Upgrade<Route>, ctl: ConnCtl) -> bool {
        let core_header = self.core_header.as_bytes();
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        // The extension is agreed only if this server compresses.
        let deflate = up.deflate.filter(|_| self.cfg.compression.is_some());
        conn.out.write_with(&mut self.env.pool, |v| {
            up.write_response(deflate.as_ref(), core_header, v)
        });
        let window = deflate.map(|d| d.server_window);
        conn.phase = Phase::Open(Session::negotiated(window));
        conn.deadline = Deadline::NONE;
        conn.ctl = ctl;
        true
    }

    fn upgrade(
        &mut self,
        key: ConnKey,
        up: handshake::Upgrade<Route>,
        claims: Option<auth::Claims>,
        input: Input<'_>,
        rest_from: usize,
    ) {
        let max = self.max_open;
        if max > 0 && self.open_ws >= max {
            self.stats.over_capacity += 1;
            debug!(
                core = self.id,
                limit = max,
                "upgrade refused: --max-connections (503)"
            );
            return self.refuse(
                key,
                Refusal {
                    status: 503,
                    reason: "server at its connection limit; retry later",
                },
            );
        }
        let ctl = ConnCtl::open(up.route, claims, &self.env.policy, self.env.now_us);
        if !self.open_session(key, &up, ctl) {
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match &mut conn.ctl.endpoint {
            Endpoint::Broadcast { slot } => *slot = Some(self.env.hub.subscribe(key)),
            Endpoint::Channels(ws) => {
                // The first message: who the client is, where, and how
                // often it will be pinged.
                ws.client = self.clients;
                self.clients += 1;
                let id = self.env.client_id(ws.client);
                let ping_ms = self.env.policy.heartbeat.interval_us(None) / 1000;
                let core = self.id;
                let window = conn.deflate();
                self.env.queue_text(&mut conn.out, window, |v| {
                    protocol::write_welcome(&id, core, ping_ms, v)
                });
            }
            Endpoint::None | Endpoint::Echo => {}
        }
        self.open_ws += 1;
        self.stats.upgraded += 1;
        self.schedule(key);
        self.mark_dirty(key);
        let len = match &input {
            Input::Ring(buf) => buf.len(),
            Input::Plain(p) => p.len(),
        };
        if rest_from < len {
            // Pipelined frames in the same read as the request head.
            self.feed_rest(key, input, rest_from);
        }
    }
}
