//! What a complete request head leads to: admit or refuse a WebSocket
//! upgrade (origin, token), and answer plain HTTP — the operator resources
//! and the publish API.
//!
//! Decisions are made while the request's bytes are still borrowed from the
//! receive buffer (nothing is copied out of it but a token's claims); the
//! core's loop acts on the [`HeadOutcome`] once the buffer is released.

use tracing::debug;

use super::handler::Env;
use super::handler::{history_request, no_presence};
use super::route::KeyRule;
use super::{api, assets, auth, Resource, Route};
use crate::http::{self, Credentials, Method, Refusal};
use crate::hub::HistoryReq;
use crate::ws::handshake::Upgrade;

/// Who may connect and who may use the API (read-only, shared by the
/// cores).
#[derive(Clone, Default)]
pub struct Access {
    /// Token verification for upgrades (`--auth-secret`).
    pub verifier: Option<auth::Verifier>,
    /// `--allowed-origins` (empty: any).
    pub allowed_origins: Vec<String>,
    /// The HTTP API's key (`--api-key`; none: the API is off).
    pub api_key: Option<String>,
}

/// Which counter a refused upgrade goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefusedBy {
    /// A malformed or unsupported request.
    Protocol,
    /// No valid token (401).
    Token,
    /// An origin outside `--allowed-origins` (403).
    Origin,
}

/// What a request head led to.
pub(crate) enum HeadOutcome {
    /// Incomplete: wait for more bytes.
    Nothing,
    /// The body is on its way and the client waits for `100 Continue`.
    Continue,
    /// Upgrade, with the token's claims; frames start at this offset of
    /// the chunk.
    Upgrade(Upgrade<Route>, Option<auth::Claims>, usize),
    /// `/ws` without a valid token: upgrade, then close at once with 4001
    /// and this reason (a browser sees the close code, never a 401).
    UpgradeUnauthorized(Upgrade<Route>, &'static str),
    /// `/ws` from an origin outside `--allowed-origins`: upgrade, then
    /// close at once with 4003 and this reason.
    UpgradeForbidden(Upgrade<Route>, &'static str),
    Refuse(Refusal, RefusedBy),
    /// A complete response is in the core's scratch buffer.
    Respond,
    /// An operator resource, answered by the loop.
    Resource(Resource),
    /// `GET /api/channels`: gather every core's counts.
    Query,
    /// An API request channel owners answer.
    Api(ApiCall),
    /// `GET /debug/pprof/profile`: take a CPU profile, answer when done.
    Profile(ProfileReq),
}

/// A CPU profile request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProfileReq {
    /// How long to sample, 1 to [`PROFILE_MAX_SECONDS`].
    pub seconds: u16,
    /// What the answer's body is.
    pub format: ProfileFormat,
}

/// The body of a profile's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProfileFormat {
    /// A gzipped pprof protobuf (the default, as Go's `net/http/pprof`).
    Pprof,
    /// A flamegraph (`?format=svg`).
    Svg,
}

/// The longest profile a request may ask for.
pub(crate) const PROFILE_MAX_SECONDS: u16 = 300;

/// Reads `?seconds=N` (default 30, as Go's) and `?format=pprof|svg`.
pub(crate) fn profile_request(creds: &Credentials<'_>) -> Result<ProfileReq, String> {
    let seconds = match creds.param("seconds") {
        None => 30,
        Some(s) => match s.parse::<u16>() {
            Ok(n) if (1..=PROFILE_MAX_SECONDS).contains(&n) => n,
            _ => {
                return Err(format!(
                    "seconds must be a whole number from 1 to {PROFILE_MAX_SECONDS}, not '{s}'"
                ))
            }
        },
    };
    let format = match creds.param("format") {
        None | Some("pprof") | Some("proto") => ProfileFormat::Pprof,
        Some("svg") | Some("flamegraph") => ProfileFormat::Svg,
        Some(other) => return Err(format!("format must be pprof or svg, not '{other}'")),
    };
    Ok(ProfileReq { seconds, format })
}

/// An API request for channel owners, owned (the request's bytes are
/// released before the core acts on it).
pub(crate) enum ApiCall {
    /// `POST /api/publish`: channels and payloads, in order.
    Publish(Vec<(Box<str>, Box<[u8]>)>),
    /// `POST /api/history`.
    History(HistoryReq),
    /// `POST /api/presence`: the channel.
    Presence(Box<str>),
}

/// Checks an upgrade's origin and token.
pub(crate) fn admit(
    access: &Access,
    up: Upgrade<Route>,
    creds: &Credentials<'_>,
    frames_from: usize,
) -> HeadOutcome {
    if !auth::origin_allowed(&access.allowed_origins, creds.origin) {
        if up.route == Route::Channels {
            return HeadOutcome::UpgradeForbidden(up, "origin not allowed");
        }
        let refusal = Refusal {
            status: 403,
            reason: "origin not allowed",
        };
        return HeadOutcome::Refuse(refusal, RefusedBy::Origin);
    }
    let claims = match &access.verifier {
        None => None,
        Some(v) => match v.verify(creds.token()) {
            Ok(c) => Some(c),
            Err(e) if up.route == Route::Channels => {
                return HeadOutcome::UpgradeUnauthorized(up, e.reason());
            }
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
pub(crate) struct HttpRequest<'a> {
    pub resource: Resource,
    pub method: Method,
    pub body: &'a [u8],
    pub creds: Credentials<'a>,
}

/// Refuses a request from its head alone — wrong method (405), missing or
/// wrong API key (401/403) — so a refused client never gets to send, and
/// the core never buffers, its body. `None`: go ahead.
pub(crate) fn precheck(
    access: &Access,
    resource: Resource,
    method: Method,
    creds: &Credentials<'_>,
    scratch: &mut Vec<u8>,
) -> Option<HeadOutcome> {
    scratch.clear();
    let allowed = if resource.takes_body() {
        Method::Post
    } else {
        Method::Get
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
    let needs_key = match resource.key_rule() {
        KeyRule::Open => false,
        KeyRule::IfSet => access.api_key.is_some(),
        KeyRule::Required => true,
    };
    (needs_key && !api_authorised(access, creds, scratch)).then_some(HeadOutcome::Respond)
}

/// A body announced for a resource that takes none is refused at once
/// (413) rather than buffered up to `--max-body-bytes`.
pub(crate) fn body_not_wanted(resource: Resource, scratch: &mut Vec<u8>) -> Option<HeadOutcome> {
    if resource.takes_body() {
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
pub(crate) fn request(access: &Access, env: &mut Env, req: HttpRequest<'_>) -> HeadOutcome {
    let scratch = &mut env.scratch;
    if let Some(refused) = precheck(access, req.resource, req.method, &req.creds, scratch) {
        return refused;
    }
    match req.resource {
        Resource::Sdk | Resource::SdkVersioned | Resource::Demo | Resource::Dashboard => {
            match (assets::of(req.resource), req.creds.if_none_match) {
                // The browser has this version: 304, no body.
                (Some(asset), Some(tags)) if asset.matches(tags) => {
                    http::write_response(304, "", &asset.headers(), b"", scratch);
                    HeadOutcome::Respond
                }
                _ => HeadOutcome::Resource(req.resource),
            }
        }
        Resource::Health | Resource::Ready | Resource::Metrics | Resource::Stats => {
            HeadOutcome::Resource(req.resource)
        }
        Resource::ChannelList => HeadOutcome::Query,
        Resource::Profile => match profile_request(&req.creds) {
            Ok(p) => HeadOutcome::Profile(p),
            Err(message) => {
                json_error(400, "", "bad_request", &message, scratch);
                HeadOutcome::Respond
            }
        },
        Resource::Publish | Resource::History | Resource::Presence => {
            match api_call(env, req.resource, req.body) {
                Ok(call) => HeadOutcome::Api(call),
                Err(e) => {
                    json_error(e.status, "", e.code, &e.message, &mut env.scratch);
                    HeadOutcome::Respond
                }
            }
        }
    }
}

/// Parses and checks the body of an API request channel owners answer.
fn api_call(env: &mut Env, resource: Resource, body: &[u8]) -> Result<ApiCall, api::ApiError> {
    match resource {
        Resource::History => {
            let h = api::parse_history(body)?;
            let cap = env.policy.history_max_limit;
            history_request(&env.rules, &h.channel, h.limit, h.since, cap)
                .map(ApiCall::History)
                .map_err(|(code, message)| api::ApiError::bad_request(code.as_str(), message))
        }
        Resource::Presence => {
            let channel = api::parse_presence(body)?;
            if !env.rules.resolve(&channel).presence {
                let message = no_presence(&channel);
                return Err(api::ApiError::bad_request("presence_disabled", message));
            }
            Ok(ApiCall::Presence(channel))
        }
        _ => {
            let batch = api::parse_publish(body)?;
            env.stats.publishes += batch.len() as u64;
            let batch = batch
                .iter()
                .map(|p| {
                    (
                        Box::from(&*p.channel),
                        Box::from(p.payload.get().as_bytes()),
                    )
                })
                .collect();
            Ok(ApiCall::Publish(batch))
        }
    }
}

/// Checks the API key; on failure the error response is in `out`.
fn api_authorised(access: &Access, creds: &Credentials<'_>, out: &mut Vec<u8>) -> bool {
    let Some(expected) = &access.api_key else {
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

/// An API error response: `{"error":{"code":..,"message":..}}`.
pub(crate) fn json_error(status: u16, extra: &str, code: &str, message: &str, out: &mut Vec<u8>) {
    let mut body = Vec::new();
    api::write_error_body(code, message, &mut body);
    http::write_response(status, "application/json", extra, &body, out);
}
