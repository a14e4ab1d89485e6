//! What a client presented with its request — origin, bearer token, query
//! token, API key — borrowed from the head, nothing verified here.

use super::request::trim;

/// The `Origin` header of a request, as presented. "No header" and "a
/// header with nothing usable in it" are kept apart: the first is a
/// non-browser client, the second is no browser at all and must not pass an
/// allow-list as if it were absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Origin<'a> {
    /// No `Origin` header.
    #[default]
    Absent,
    /// One `Origin` header with a non-empty UTF-8 value, trimmed.
    Value(&'a str),
    /// An `Origin` header that is empty (or only whitespace), not UTF-8
    /// (obs-text), or repeated (RFC 6454 §7.3 allows one): nothing a
    /// browser sends.
    Malformed,
}

/// What a client presented; all borrowed from the request head, nothing
/// allocated. Empty token and key values count as absent; an empty
/// `Origin` does not (see [`Origin`]). Nothing is verified here: the
/// caller checks tokens and origins against its configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// `Origin` header (browsers always send it on WebSocket upgrades).
    pub origin: Origin<'a>,
    /// `Authorization: Bearer <token>` (scheme matched case-insensitively).
    pub bearer: Option<&'a str>,
    /// `?token=` query parameter of the request target (first occurrence;
    /// `token` must be a whole parameter name, not `xtoken=`). Browsers
    /// cannot set headers on WebSocket upgrades, hence the query form. Not
    /// percent-decoded: JWTs and hex or base64url keys never need escaping.
    pub query_token: Option<&'a str>,
    /// `X-Api-Key` header.
    pub api_key: Option<&'a str>,
    /// `If-None-Match` header: not a credential, but collected in the same
    /// pass over the headers, for revalidating the embedded files.
    pub if_none_match: Option<&'a str>,
    /// The request target as sent, for resources that take query
    /// parameters ([`Credentials::param`]).
    pub target: &'a str,
}

impl<'a> Credentials<'a> {
    /// The first non-empty value of query parameter `name` (not
    /// percent-decoded).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        query_param(self.target, name)
    }

    /// The bearer token, else the query token.
    pub fn token(&self) -> Option<&'a str> {
        self.bearer.or(self.query_token)
    }

    /// Collects credentials from a request target and its headers; for each
    /// header the first non-empty occurrence wins, except `Origin`, which
    /// must occur once with a usable value.
    pub(crate) fn from_request(target: &'a str, headers: &[httparse::Header<'a>]) -> Self {
        let mut c = Self {
            query_token: query_param(target, "token"),
            target,
            ..Self::default()
        };
        for h in headers {
            // Non-UTF-8 values (obs-text) cannot be a token or an origin.
            let value = || {
                std::str::from_utf8(trim(h.value))
                    .ok()
                    .filter(|v| !v.is_empty())
            };
            let name = h.name;
            if name.eq_ignore_ascii_case("origin") {
                c.origin = match (c.origin, value()) {
                    (Origin::Absent, Some(v)) => Origin::Value(v),
                    _ => Origin::Malformed,
                };
            } else if name.eq_ignore_ascii_case("authorization") {
                c.bearer = c.bearer.or_else(|| value().and_then(bearer_token));
            } else if name.eq_ignore_ascii_case("x-api-key") {
                c.api_key = c.api_key.or_else(value);
            } else if name.eq_ignore_ascii_case("if-none-match") {
                c.if_none_match = c.if_none_match.or_else(value);
            }
        }
        c
    }
}

/// The token of a trimmed `Authorization` value with the `Bearer` scheme
/// (RFC 6750 §2.1; auth schemes are case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once([' ', '\t'])?;
    let token = token.trim_start_matches([' ', '\t']);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of the first `name` parameter in a target's query, if not
/// empty. Matching whole names keeps `xtoken=` from passing for `token=`.
fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query
        .split('&')
        .find_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k == name).then_some(v)
        })
        .filter(|v| !v.is_empty())
}
