//! What a core does with a complete request head: admit or refuse a
//! WebSocket upgrade (origin, token), and answer plain HTTP — the operator
//! resources and the publish API.
//!
//! Decisions are made while the request's bytes are still borrowed from the
//! receive buffer (nothing is copied out of it but a token's claims); the
//! loop acts on the [`HeadOutcome`] once the buffer is released.

use std::collections::BTreeMap;

use tracing::debug;

use super::conn::ConnKey;
use super::{ChannelsQuery, Shard, ShardConfig};
use crate::app::{api, auth, protocol, MsgStats, Resource, Route};
use crate::hub::channels::Channels;
use crate::hub::frame::{Frame, SharedFrame};
use crate::hub::MeshMsg;
use crate::ws::handshake::{self, Credentials, Method, Refusal, Upgrade};
use crate::ws::OpCode;

/// Which counter a refused upgrade goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RefusedBy {
    /// A malformed or unsupported request.
    Protocol,
    /// No valid token (401).
    Token,
    /// An origin outside `--allowed-origins` (403).
    Origin,
}

/// What a request head led to.
pub(super) enum HeadOutcome {
    /// Incomplete: wait for more bytes.
    Nothing,
    /// The body is on its way and the client waits for `100 Continue`.
    Continue,
    /// Upgrade, with the token's claims; frames start at this offset of
    /// the chunk.
    Upgrade(Upgrade<Route>, Option<auth::Claims>, usize),
    Refuse(Refusal, RefusedBy),
    /// A complete response is in the core's scratch buffer.
    Respond,
    /// An operator resource, answered by the loop.
    Resource(Resource),
    /// `GET /api/channels`: gather every core's counts.
    Query,
}

/// Checks an upgrade's origin and token.
pub(super) fn admit(
    cfg: &ShardConfig,
    up: Upgrade<Route>,
    creds: &Credentials<'_>,
    frames_from: usize,
) -> HeadOutcome {
    if !auth::origin_allowed(&cfg.allowed_origins, creds.origin) {
        let refusal = Refusal {
            status: 403,
            reason: "origin not allowed",
        };
        return HeadOutcome::Refuse(refusal, RefusedBy::Origin);
    }
    let claims = match &cfg.verifier {
        None => None,
        Some(v) => match v.verify(creds.token()) {
            Ok(c) => Some(c),
            Err(e) => {
                let refusal = Refusal {
                    status: 401,
                    reason: e.reason(),
                };
                return HeadOutcome::Refuse(refusal, RefusedBy::Token);
            }
        },
    };
    HeadOutcome::Upgrade(up, claims, frames_from)
}

/// A plain HTTP request, complete with its body.
pub(super) struct HttpRequest<'a> {
    pub resource: Resource,
    pub method: Method,
    pub body: &'a [u8],
    pub creds: Credentials<'a>,
}

/// Refuses a request from its head alone — wrong method (405), missing or
/// wrong API key (401/403) — so a refused client never gets to send, and
/// the core never buffers, its body. `None`: go ahead.
pub(super) fn precheck(
    cfg: &ShardConfig,
    resource: Resource,
    method: Method,
    creds: &Credentials<'_>,
    scratch: &mut Vec<u8>,
) -> Option<HeadOutcome> {
    scratch.clear();
    let allowed = match resource {
        Resource::Publish => Method::Post,
        _ => Method::Get,
    };
    if method != allowed {
        let allow = if allowed == Method::Post {
            "Allow: POST\r\n"
        } else {
            "Allow: GET\r\n"
        };
        json_error(405, allow, "method_not_allowed", "wrong method", scratch);
        return Some(HeadOutcome::Respond);
    }
    let api = matches!(resource, Resource::Publish | Resource::ChannelList);
    (api && !api_authorised(cfg, creds, scratch)).then_some(HeadOutcome::Respond)
}

/// A body announced for a resource that takes none is refused at once
/// (413) rather than buffered up to `--max-body-bytes`.
pub(super) fn body_not_wanted(resource: Resource, scratch: &mut Vec<u8>) -> Option<HeadOutcome> {
    if resource == Resource::Publish {
        return None;
    }
    scratch.clear();
    json_error(
        413,
        "",
        "body_not_allowed",
        "this resource takes no request body",
        scratch,
    );
    Some(HeadOutcome::Respond)
}

/// Answers a plain HTTP request, or says who will.
pub(super) fn request(
    cfg: &ShardConfig,
    channels: &mut Channels,
    stats: &mut MsgStats,
    scratch: &mut Vec<u8>,
    req: HttpRequest<'_>,
) -> HeadOutcome {
    if let Some(refused) = precheck(cfg, req.resource, req.method, &req.creds, scratch) {
        return refused;
    }
    match req.resource {
        Resource::Health | Resource::Ready | Resource::Metrics => {
            HeadOutcome::Resource(req.resource)
        }
        Resource::ChannelList => HeadOutcome::Query,
        Resource::Publish => {
            publish(channels, stats, req.body, scratch);
            HeadOutcome::Respond
        }
    }
}

/// Checks the API key; on failure the error response is in `out`.
fn api_authorised(cfg: &ShardConfig, creds: &Credentials<'_>, out: &mut Vec<u8>) -> bool {
    let Some(expected) = &cfg.api_key else {
        json_error(
            403,
            "",
            "api_disabled",
            "the HTTP API is off: start ringcast with --api-key",
            out,
        );
        return false;
    };
    if !api::key_matches(expected, creds.bearer.or(creds.api_key)) {
        debug!("API request with a missing or wrong key (401)");
        json_error(
            401,
            "WWW-Authenticate: Bearer\r\n",
            "unauthorized",
            "missing or wrong API key (send Authorization: Bearer KEY or X-Api-Key: KEY)",
            out,
        );
        return false;
    }
    true
}

/// `POST /api/publish`: every message is framed once and published like a
/// `/ws` client's; the batch is all-or-nothing.
fn publish(channels: &mut Channels, stats: &mut MsgStats, body: &[u8], out: &mut Vec<u8>) {
    let batch = match api::parse_publish(body) {
        Ok(b) => b,
        Err(e) => return json_error(e.status, "", e.code, &e.message, out),
    };
    for p in &batch {
        let parts = protocol::message_parts(&p.channel, p.payload);
        let frame = Frame::new(SharedFrame::encode_parts(OpCode::Text, &parts));
        channels.publish(&p.channel, &frame);
    }
    stats.publishes += batch.len() as u64;
    let mut body = Vec::new();
    api::write_published_body(batch.len(), &mut body);
    handshake::write_response(200, "application/json", "", &body, out);
}

fn json_error(status: u16, extra: &str, code: &str, message: &str, out: &mut Vec<u8>) {
    let mut body = Vec::new();
    api::write_error_body(code, message, &mut body);
    handshake::write_response(status, "application/json", extra, &body, out);
}

impl Shard {
    /// Starts `GET /api/channels`: this core's counts now, the other
    /// cores' through the mesh; answered when the last one replies.
    pub(super) fn start_query(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.phase = super::conn::Phase::Answering;
        // Bounded like a close: if an answer never comes, the connection
        // is dropped rather than held.
        self.set_deadline(key, std::time::Instant::now() + self.cfg.close_timeout);
        let mut counts = BTreeMap::new();
        for (name, n) in self.channels.local_counts() {
            counts.insert(name.to_string(), n as u64);
        }
        let peers = self.channels.peer_count();
        let id = self.next_query;
        self.next_query = self.next_query.wrapping_add(1);
        self.queries.push(ChannelsQuery {
            id,
            key,
            waiting_for: peers,
            counts,
        });
        if let Some(m) = &mut self.mesh {
            let from = self.id as u16;
            for core in (0..peers + 1).filter(|&c| c != self.id) {
                m.send_to(core, MeshMsg::ChannelsQuery { from, query: id });
            }
        }
        self.finish_query(id);
    }

    /// Another core's counts for query `id`.
    pub(super) fn channels_reply(&mut self, id: u32, channels: &[(std::sync::Arc<str>, u32)]) {
        if let Some(q) = self.queries.iter_mut().find(|q| q.id == id) {
            for (name, n) in channels {
                *q.counts.entry(name.to_string()).or_insert(0) += *n as u64;
            }
            q.waiting_for = q.waiting_for.saturating_sub(1);
        }
        self.finish_query(id);
    }

    fn finish_query(&mut self, id: u32) {
        let Some(pos) = self
            .queries
            .iter()
            .position(|q| q.id == id && q.waiting_for == 0)
        else {
            return;
        };
        let q = self.queries.swap_remove(pos);
        let list: Vec<(String, u64)> = q.counts.into_iter().collect();
        let mut body = Vec::new();
        api::write_channels_body(&list, &mut body);
        self.scratch.clear();
        handshake::write_response(200, "application/json", "", &body, &mut self.scratch);
        self.respond(q.key);
    }

    /// Sends the response in the scratch buffer and closes after it.
    pub(super) fn respond(&mut self, key: ConnKey) {
        self.stats.http_requests += 1;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let scratch = &self.scratch;
        conn.out
            .write_with(&mut self.pool, |v| v.extend_from_slice(scratch));
        self.linger(key);
    }
}
