//! The opening handshake (RFC 6455 §4.2): parse an HTTP/1.1 upgrade request
//! head without allocating, then answer with `101 Switching Protocols` or a
//! precise refusal. The same parser also takes plain HTTP API requests with
//! a `Content-Length` body ([`parse_http`]), so one connection-accepting path
//! serves both.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// Headers a request may carry before it is refused with 431.
const MAX_HEADERS: usize = 64;
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The interim response for a client that sent `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A refused handshake: the HTTP status and a short reason for the body and
/// the debug log. The connection is closed after the response is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

const fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

/// The reason phrase for a status line. Clients ignore it, so unknown codes
/// get a generic one (an empty phrase is valid HTTP/1.1 below 400).
fn status_text(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ if status >= 400 => "Error",
        _ => "",
    }
}

impl Refusal {
    /// Appends the full HTTP response (status line, headers, plain-text body).
    pub fn write_response(&self, out: &mut Vec<u8>) {
        let extra = match self.status {
            401 => "WWW-Authenticate: Bearer\r\n",
            405 => "Allow: GET\r\n",
            426 => "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n",
            _ => "",
        };
        // The body is the reason plus a newline, written in place rather
        // than concatenated into a temporary.
        let len = self.reason.len() + 1;
        write_head(self.status, "text/plain; charset=utf-8", extra, len, out);
        out.extend_from_slice(self.reason.as_bytes());
        out.push(b'\n');
    }
}

/// A valid upgrade request, routed.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade<R> {
    /// What the request path mapped to.
    pub route: R,
    /// The `Sec-WebSocket-Accept` value for the response.
    pub accept: [u8; 28],
    /// Length of the request head; bytes after it are WebSocket frames.
    pub head_len: usize,
}

impl<R> Upgrade<R> {
    /// Appends the `101 Switching Protocols` response.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        self.write_response_with(b"", out);
    }

    /// Appends the `101` response with extra header lines (each ending in
    /// `\r\n`).
    pub fn write_response_with(&self, extra_headers: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        );
        out.extend_from_slice(&self.accept);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(extra_headers);
        out.extend_from_slice(b"\r\n");
    }
}

/// Computes `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(WS_GUID);
    let mut out = [0u8; 28];
    // 20 bytes of digest always encode to exactly 28 base64 characters.
    let n = BASE64
        .encode_slice(sha.digest().bytes(), &mut out)
        .unwrap_or(0);
    debug_assert_eq!(n, 28);
    out
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Whether a comma-separated header value contains `token` (ASCII
/// case-insensitive), as `Connection: keep-alive, Upgrade` does.
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

/// The path of a request target, without query or fragment; absolute-form
/// targets (`http://host/path`) are reduced to their path.
fn target_path(target: &str) -> &str {
    let mut t = target;
    if let Some(rest) = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))
    {
        t = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    let end = t.find(['?', '#']).unwrap_or(t.len());
    &t[..end]
}

/// Parses an upgrade request from the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete and still within
/// `max_head` bytes. `route` maps a request path to an endpoint; `None`
/// refuses it with 404. Checks run in the order a client can act on: size,
/// syntax, method, version, path, then the WebSocket headers.
pub fn parse_request<R>(
    buf: &[u8],
    max_head: usize,
    route: impl FnOnce(&str) -> Option<R>,
) -> Result<Option<Upgrade<R>>, Refusal> {
    match parse_any::<R, ()>(buf, max_head, |p| route(p).map(Target::WebSocket))? {
        Some(Request::Upgrade(up)) => Ok(Some(up)),
        _ => Ok(None),
    }
}

/// What a request path names: a WebSocket endpoint, or a plain HTTP `GET`
/// resource (health, readiness, metrics) answered without upgrading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<W, H> {
    WebSocket(W),
    Http(H),
}

/// A complete, valid request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<W, H> {
    /// A WebSocket upgrade: answer 101.
    Upgrade(Upgrade<W>),
    /// A plain `GET` of an HTTP resource; the head is `head_len` bytes.
    Get { resource: H, head_len: usize },
}

/// A complete request head as httparse left it, borrowed from the buffer.
struct Head<'h, 'a> {
    method: &'a str,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    target: &'a str,
    headers: &'h [httparse::Header<'a>],
    len: usize,
}

/// Parses the request head (size and syntax checks only); `Ok(None)` while
/// it is incomplete and still under `max_head`. `headers` is the caller's
/// stack array, so nothing is allocated.
fn parse_head<'h, 'a>(
    buf: &'a [u8],
    max_head: usize,
    headers: &'h mut [httparse::Header<'a>],
) -> Result<Option<Head<'h, 'a>>, Refusal> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_head {
                return Err(refuse(431, "request head too large"));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(431, "too many request headers"))
        }
        Err(_) => return Err(refuse(400, "malformed HTTP request")),
    };
    if len > max_head {
        return Err(refuse(431, "request head too large"));
    }
    // A complete parse always sets method, path and version.
    Ok(Some(Head {
        method: req.method.unwrap_or(""),
        version: req.version.unwrap_or(0),
        target: req.path.unwrap_or("/"),
        headers: req.headers,
        len,
    }))
}

/// The request line of an upgrade: `GET` over HTTP/1.1 (RFC 6455 §4.1).
fn check_upgrade_line(head: &Head) -> Result<(), Refusal> {
    if head.method != "GET" {
        return Err(refuse(405, "WebSocket upgrade requires GET"));
    }
    if head.version != 1 {
        return Err(refuse(400, "WebSocket upgrade requires HTTP/1.1"));
    }
    Ok(())
}

/// Checks the upgrade headers of a head whose request line already passed
/// [`check_upgrade_line`] and computes the accept key.
fn check_upgrade<W>(head: &Head, route: W) -> Result<Upgrade<W>, Refusal> {
    let mut upgrade = false;
    let mut connection = false;
    let mut key: Option<&[u8]> = None;
    let mut version: Option<&[u8]> = None;
    let mut host = false;
    let mut body = false;
    for h in head.headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(h.value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(h.value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if key.is_some() {
                return Err(refuse(400, "duplicate Sec-WebSocket-Key"));
            }
            key = Some(trim(h.value));
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = Some(trim(h.value));
        } else if name.eq_ignore_ascii_case("host") {
            host = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            body |= trim(h.value) != b"0";
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            body = true;
        }
    }
    if !upgrade {
        return Err(refuse(400, "missing or invalid Upgrade: websocket"));
    }
    if !connection {
        return Err(refuse(400, "missing or invalid Connection: Upgrade"));
    }
    let key = key.ok_or(refuse(400, "missing Sec-WebSocket-Key"))?;
    let mut decoded = [0u8; 18];
    match BASE64.decode_slice(key, &mut decoded) {
        Ok(16) => {}
        _ => return Err(refuse(400, "Sec-WebSocket-Key must be 16 bytes in base64")),
    }
    if version != Some(b"13") {
        return Err(refuse(
            426,
            "unsupported Sec-WebSocket-Version (13 is supported)",
        ));
    }
    if !host {
        return Err(refuse(400, "missing Host header"));
    }
    if body {
        return Err(refuse(400, "an upgrade request must not have a body"));
    }
    Ok(Upgrade {
        route,
        accept: accept_key(key),
        head_len: head.len,
    })
}

/// Parses a request head that may name a WebSocket endpoint or a plain
/// HTTP resource (see [`Target`]); upgrade requests are checked exactly as
/// [`parse_request`] checks them.
pub fn parse_any<R, H>(
    buf: &[u8],
    max_head: usize,
    route: impl FnOnce(&str) -> Option<Target<R, H>>,
) -> Result<Option<Request<R, H>>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Some(head) = parse_head(buf, max_head, &mut headers)? else {
        return Ok(None);
    };
    // Only GET resources exist here, so the upgrade's request-line rules
    // apply to every path, before routing.
    check_upgrade_line(&head)?;
    match route(target_path(head.target)) {
        Some(Target::WebSocket(r)) => Ok(Some(Request::Upgrade(check_upgrade(&head, r)?))),
        Some(Target::Http(resource)) => Ok(Some(Request::Get {
            resource,
            head_len: head.len,
        })),
        None => Err(refuse(404, "no WebSocket endpoint at this path")),
    }
}

/// A request method. Only those an API resource may plausibly accept are
/// named; the caller answers 405 for the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 §9.1): `get` is `Other`.
    fn from_token(m: &str) -> Self {
        match m {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            _ => Self::Other,
        }
    }
}

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
}

impl<'a> Credentials<'a> {
    /// The bearer token, else the query token.
    pub fn token(&self) -> Option<&'a str> {
        self.bearer.or(self.query_token)
    }

    /// Collects credentials from a request target and its headers; for each
    /// header the first non-empty occurrence wins, except `Origin`, which
    /// must occur once with a usable value.
    fn from_request(target: &'a str, headers: &[httparse::Header<'a>]) -> Self {
        let mut c = Self {
            query_token: query_param(target, "token"),
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

/// A complete request.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a, W, H> {
    /// A valid WebSocket upgrade: check `creds`, then answer 101.
    Upgrade {
        upgrade: Upgrade<W>,
        creds: Credentials<'a>,
    },
    /// A plain HTTP request with its whole body (empty without
    /// `Content-Length`); any method, so the resource decides on 405.
    Http {
        resource: H,
        method: Method,
        head_len: usize,
        body: &'a [u8],
        creds: Credentials<'a>,
    },
}

/// Where parsing stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress<'a, W, H> {
    /// The head is incomplete (and still under max_head).
    Partial,
    /// The head is complete and valid, its declared body (Content-Length)
    /// has not fully arrived. `continue_expected`: the client sent
    /// `Expect: 100-continue` (curl does for bodies > 1 KiB and waits 1 s for
    /// `100 Continue`), so the caller should send one [`CONTINUE`] the first
    /// time it sees this. The resource, method and credentials are known
    /// already, so the caller can refuse (405, 401) before the body is
    /// sent or buffered.
    AwaitingBody {
        continue_expected: bool,
        resource: H,
        method: Method,
        creds: Credentials<'a>,
    },
    Done(Parsed<'a, W, H>),
}

/// How an HTTP request's body is delimited.
struct Framing {
    len: usize,
    continue_expected: bool,
}

impl Framing {
    /// Reads `Content-Length` and `Expect`. Chunked bodies are refused
    /// rather than decoded: API clients can always send a length, and one
    /// framing keeps request smuggling (RFC 9112 §6.3) off the table.
    fn from_headers(headers: &[httparse::Header], max_body: usize) -> Result<Self, Refusal> {
        if headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        {
            return Err(refuse(
                411,
                "chunked bodies are not supported; send Content-Length",
            ));
        }
        let mut len: Option<usize> = None;
        let mut continue_expected = false;
        for h in headers {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = content_length(h.value)?;
                if len.is_some_and(|l| l != n) {
                    return Err(refuse(400, "conflicting Content-Length headers"));
                }
                len = Some(n);
            } else if h.name.eq_ignore_ascii_case("expect") {
                continue_expected |= trim(h.value).eq_ignore_ascii_case(b"100-continue");
            }
        }
        let len = len.unwrap_or(0);
        if len > max_body {
            return Err(refuse(413, "request body too large"));
        }
        Ok(Self {
            len,
            continue_expected,
        })
    }
}

/// A `Content-Length` value: digits only (no sign, no list). Values beyond
/// `usize` saturate, which any body limit then refuses with 413.
fn content_length(value: &[u8]) -> Result<usize, Refusal> {
    let v = trim(value);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(refuse(400, "invalid Content-Length"));
    }
    Ok(v.iter()
        .try_fold(0usize, |n, &d| {
            n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        })
        .unwrap_or(usize::MAX))
}

/// Parses a WebSocket upgrade or an HTTP request with its body from the
/// start of `buf`, which holds everything received so far; call it again on
/// the grown buffer after [`Progress::Partial`] or
/// [`Progress::AwaitingBody`] (the head, at most `max_head` bytes, is simply
/// parsed again).
///
/// Checks run in the order a client can act on: head size, syntax, path
/// (`None` from `route` is 404), then for a [`Target::WebSocket`] exactly
/// what [`parse_any`] checks (GET, HTTP/1.1, the upgrade headers), and for a
/// [`Target::Http`] the body framing: `Transfer-Encoding` is 411, a bad or
/// conflicting `Content-Length` 400, one over `max_body` 413 before the body
/// arrives. HTTP/1.0 is accepted for HTTP resources. Bytes after the body
/// are ignored: one request per connection. Nothing is allocated.
pub fn parse_http<'a, W, H>(
    buf: &'a [u8],
    max_head: usize,
    max_body: usize,
    route: impl FnOnce(&str) -> Option<Target<W, H>>,
) -> Result<Progress<'a, W, H>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Some(head) = parse_head(buf, max_head, &mut headers)? else {
        return Ok(Progress::Partial);
    };
    let creds = Credentials::from_request(head.target, head.headers);
    let parsed = match route(target_path(head.target)) {
        Some(Target::WebSocket(r)) => {
            check_upgrade_line(&head)?;
            Parsed::Upgrade {
                upgrade: check_upgrade(&head, r)?,
                creds,
            }
        }
        Some(Target::Http(resource)) => {
            let framing = Framing::from_headers(head.headers, max_body)?;
            let Some(body) = buf.get(head.len..head.len.saturating_add(framing.len)) else {
                return Ok(Progress::AwaitingBody {
                    continue_expected: framing.continue_expected,
                    resource,
                    method: Method::from_token(head.method),
                    creds,
                });
            };
            Parsed::Http {
                resource,
                method: Method::from_token(head.method),
                head_len: head.len,
                body,
                creds,
            }
        }
        None => return Err(refuse(404, "no resource at this path")),
    };
    Ok(Progress::Done(parsed))
}

/// Writes a status line and headers announcing a `content_len`-byte body.
fn write_head(
    status: u16,
    content_type: &str,
    extra_headers: &str,
    content_len: usize,
    out: &mut Vec<u8>,
) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {content_len}\r\nConnection: close\r\n{extra_headers}\r\n",
        status_text(status),
    );
}

/// Appends a complete response with any status, content type and body,
/// `Connection: close` (one request per connection), plus `extra_headers`
/// (each line already ending in `\r\n`, may be empty). Used for JSON API
/// responses (e.g. 401 with `WWW-Authenticate: Bearer\r\n`). For 204
/// the content type and body are left out, as HTTP requires.
pub fn write_response(
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    if status == 204 {
        // 204 carries neither a body nor its length (RFC 9110 §8.6, §15.3.5).
        use std::io::Write;
        let _ = write!(
            out,
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n{extra_headers}\r\n"
        );
        return;
    }
    write_head(status, content_type, extra_headers, body.len(), out);
    out.extend_from_slice(body);
}

/// Appends a complete `200 OK` response with `body`, closing the connection
/// after it (plain HTTP resources are one request per connection).
pub fn write_ok(content_type: &str, body: &[u8], out: &mut Vec<u8>) {
    write_response(200, content_type, "", body, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn route(p: &str) -> Option<u8> {
        (p == "/echo").then_some(1)
    }

    #[test]
    fn plain_get_resources_skip_the_upgrade_checks() {
        let route = |p: &str| match p {
            "/healthz" => Some(Target::Http(7u16)),
            "/echo" => Some(Target::WebSocket(1u8)),
            _ => None,
        };
        let req = "GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_any(req.as_bytes(), 8192, route),
            Ok(Some(Request::Get {
                resource: 7,
                head_len: req.len()
            }))
        );
        // Still HTTP: wrong method or version is refused as before.
        let post = "POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_any(post.as_bytes(), 8192, route).unwrap_err().status,
            405
        );
        assert!(matches!(
            parse_any(OK.as_bytes(), 8192, route),
            Ok(Some(Request::Upgrade(_)))
        ));
        let mut out = Vec::new();
        write_ok("text/plain", b"ok\n", &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
        );
    }

    fn parse(s: &str) -> Result<Option<Upgrade<u8>>, Refusal> {
        parse_request(s.as_bytes(), 8192, route)
    }

    fn status(s: &str) -> u16 {
        parse(s).unwrap_err().status
    }

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn accepts_valid_request_and_reports_head_len() {
        let mut s = OK.as_bytes().to_vec();
        s.extend_from_slice(b"\x81\x80");
        let up = parse_request(&s, 8192, route).unwrap().unwrap();
        assert_eq!(up.route, 1);
        assert_eq!(up.head_len, OK.len());
        let mut resp = Vec::new();
        up.write_response(&mut resp);
        let resp = String::from_utf8(resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 "));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn tolerant_header_forms() {
        let s = OK
            .replace("Connection: Upgrade", "connection: keep-alive, UPGRADE")
            .replace("Upgrade: websocket", "upgrade: WebSocket")
            .replace("GET /echo ", "GET /echo?token=1 ");
        assert!(parse(&s).unwrap().is_some());
    }

    #[test]
    fn incomplete_head_waits() {
        for cut in 0..OK.len() - 1 {
            assert_eq!(parse(&OK[..cut]), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn refusals_have_exact_statuses() {
        assert_eq!(status(&OK.replace("GET", "POST")), 405);
        assert_eq!(status(&OK.replace("/echo", "/nope")), 404);
        assert_eq!(status(&OK.replace("Upgrade: websocket\r\n", "")), 400);
        assert_eq!(
            status(&OK.replace("Upgrade: websocket", "Upgrade: h2c")),
            400
        );
        assert_eq!(status(&OK.replace("Connection: Upgrade\r\n", "")), 400);
        assert_eq!(
            status(&OK.replace("Connection: Upgrade", "Connection: close")),
            400
        );
        assert_eq!(
            status(&OK.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")),
            400
        );
        assert_eq!(
            status(&OK.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")),
            400
        );
        assert_eq!(
            status(&OK.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!notbase64!!")),
            400
        );
        assert_eq!(status(&OK.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(
            status(&OK.replace("Sec-WebSocket-Version: 13\r\n", "")),
            426
        );
        assert_eq!(status(&OK.replace("HTTP/1.1", "HTTP/1.0")), 400);
        assert_eq!(status(&OK.replace("Host: x\r\n", "")), 400);
        assert_eq!(
            status(&OK.replace("Host: x\r\n", "Host: x\r\nContent-Length: 5\r\n")),
            400
        );
        assert_eq!(status("GARBAGE\r\n\r\n"), 400);
        let big = OK.replace(
            "Host: x\r\n",
            &format!("Host: x\r\nX-Pad: {}\r\n", "a".repeat(9000)),
        );
        assert_eq!(status(&big), 431);
        assert_eq!(status(&"a".repeat(9000)), 431);
        assert_eq!(
            parse_request(&b"GET / HTTP/1.1\r\nX: aaaaaaaa"[..], 16, route)
                .unwrap_err()
                .status,
            431
        );
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            status(&OK.replace("Host: x\r\n", &format!("Host: x\r\n{many}"))),
            431
        );
    }

    #[test]
    fn refusal_responses_are_well_formed() {
        let mut out = Vec::new();
        refuse(426, "v").write_response(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(s.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(s.contains("Content-Length: 2\r\n"));
        assert!(s.ends_with("\r\n\r\nv\n"));
    }

    /// Routes for `parse_http`: `/ws` upgrades, `/api/*` are HTTP resources.
    fn api_route(p: &str) -> Option<Target<u8, &'static str>> {
        match p {
            "/ws" => Some(Target::WebSocket(1)),
            "/api/publish" => Some(Target::Http("publish")),
            "/healthz" => Some(Target::Http("health")),
            _ => None,
        }
    }

    fn http(buf: &[u8]) -> Result<Progress<'_, u8, &'static str>, Refusal> {
        parse_http(buf, 8192, 1024, api_route)
    }

    fn http_status(s: &str) -> u16 {
        http(s.as_bytes()).unwrap_err().status
    }

    const POST: &str =
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n";
    const BODY: &str = "{\"a\":[1,2,3]}";

    #[test]
    fn post_with_body_in_one_buffer() {
        // A pipelined second request after the body is ignored.
        let req = format!("{POST}{BODY}GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(
            http(req.as_bytes()),
            Ok(Progress::Done(Parsed::Http {
                resource: "publish",
                method: Method::Post,
                head_len: POST.len(),
                body: BODY.as_bytes(),
                creds: Credentials::default(),
            }))
        );
    }

    #[test]
    fn split_body_waits_at_every_cut() {
        let req = format!("{POST}{BODY}");
        for cut in 0..req.len() {
            let want = if cut < POST.len() {
                Progress::Partial
            } else {
                Progress::AwaitingBody {
                    continue_expected: false,
                    resource: "publish",
                    method: Method::Post,
                    creds: Credentials::default(),
                }
            };
            assert_eq!(http(&req.as_bytes()[..cut]), Ok(want), "cut {cut}");
        }
        assert!(matches!(
            http(req.as_bytes()),
            Ok(Progress::Done(Parsed::Http { body, .. })) if body == BODY.as_bytes()
        ));
    }

    #[test]
    fn expect_100_continue_is_reported_while_the_body_is_missing() {
        let head = POST.replace("Host: x\r\n", "Host: x\r\nExpect: 100-Continue\r\n");
        assert_eq!(
            http(head.as_bytes()),
            Ok(Progress::AwaitingBody {
                continue_expected: true,
                resource: "publish",
                method: Method::Post,
                creds: Credentials::default(),
            })
        );
        let full = format!("{head}{BODY}");
        assert!(matches!(
            http(full.as_bytes()),
            Ok(Progress::Done(Parsed::Http { .. }))
        ));
        assert_eq!(CONTINUE, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn body_framing_refusals() {
        // Over max_body: refused from the head alone.
        assert_eq!(
            http_status(&POST.replace("Length: 13", "Length: 1025")),
            413
        );
        let huge = POST.replace("Length: 13", &format!("Length: {}", "9".repeat(40)));
        assert_eq!(http_status(&huge), 413);
        let chunked = POST.replace("Content-Length: 13", "Transfer-Encoding: chunked");
        let r = http(chunked.as_bytes()).unwrap_err();
        assert_eq!(r.status, 411);
        assert!(r.reason.contains("Content-Length"));
        // Transfer-Encoding wins over Content-Length, whatever the order.
        let both = POST.replace("Host: x\r\n", "Host: x\r\nTransfer-Encoding: chunked\r\n");
        assert_eq!(http_status(&both), 411);
        for bad in ["-1", "+13", "1 3", "13, 13", "0x10", "", "١٣"] {
            let s = POST.replace("Length: 13", &format!("Length: {bad}"));
            assert_eq!(http_status(&s), 400, "Content-Length: {bad:?}");
        }
        let dup = POST.replace("Host: x\r\n", "Host: x\r\nContent-Length: 12\r\n");
        assert_eq!(http_status(&dup), 400);
        // Duplicates that agree are one length.
        let same = format!(
            "{}{BODY}",
            POST.replace("Host: x\r\n", "Host: x\r\ncontent-length: 013\r\n")
        );
        assert!(matches!(
            http(same.as_bytes()),
            Ok(Progress::Done(Parsed::Http { body, .. })) if body == BODY.as_bytes()
        ));
    }

    #[test]
    fn no_content_length_means_empty_body() {
        let req = "DELETE /api/publish HTTP/1.1\r\nHost: x\r\n\r\ntrailing";
        assert!(matches!(
            http(req.as_bytes()),
            Ok(Progress::Done(Parsed::Http {
                method: Method::Delete,
                body: b"",
                ..
            }))
        ));
        for (m, want) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("PUT", Method::Put),
            ("PATCH", Method::Other),
            ("get", Method::Other),
        ] {
            let req = format!("{m} /api/publish HTTP/1.1\r\n\r\n");
            assert!(
                matches!(
                    http(req.as_bytes()),
                    Ok(Progress::Done(Parsed::Http { method, .. })) if method == want
                ),
                "{m}"
            );
        }
    }

    #[test]
    fn http_10_get_of_a_resource_is_accepted() {
        let req = "GET /healthz HTTP/1.0\r\n\r\n";
        assert_eq!(
            http(req.as_bytes()),
            Ok(Progress::Done(Parsed::Http {
                resource: "health",
                method: Method::Get,
                head_len: req.len(),
                body: b"",
                creds: Credentials::default(),
            }))
        );
        // Upgrades still need HTTP/1.1.
        let ws = OK.replace("/echo", "/ws").replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(http_status(&ws), 400);
    }

    #[test]
    fn head_checks_match_parse_any() {
        let ws = OK.replace("/echo", "/ws");
        assert_eq!(http_status(&ws.replace("GET", "POST")), 405);
        assert_eq!(http_status(&ws.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(
            http_status(&ws.replace("Host: x\r\n", "Host: x\r\nContent-Length: 5\r\n")),
            400
        );
        assert_eq!(http_status("POST /nope HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(http_status("GARBAGE\r\n\r\n"), 400);
        assert_eq!(http_status(&"a".repeat(9000)), 431);
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            http_status(&POST.replace("Host: x\r\n", &format!("Host: x\r\n{many}"))),
            431
        );
        // A head under max_head followed by a body beyond it is fine.
        let req = format!("{POST}{BODY}");
        assert!(matches!(
            parse_http(req.as_bytes(), POST.len(), 1024, api_route),
            Ok(Progress::Done(_))
        ));
    }

    fn creds_of(req: &str) -> Credentials<'_> {
        match http(req.as_bytes()) {
            Ok(Progress::Done(Parsed::Http { creds, .. } | Parsed::Upgrade { creds, .. })) => creds,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn credentials_are_extracted() {
        let c = creds_of(
            "POST /api/publish?a=1&token=abc&b=2 HTTP/1.1\r\nOrigin: https://app.example\r\n\
             authorization: bEaReR  t.k-n_1 \r\nX-Api-Key: k3y\r\n\r\n",
        );
        assert_eq!(
            c,
            Credentials {
                origin: Origin::Value("https://app.example"),
                bearer: Some("t.k-n_1"),
                query_token: Some("abc"),
                api_key: Some("k3y"),
            }
        );
        assert_eq!(c.token(), Some("t.k-n_1"));
        let q = creds_of("GET /healthz?token=abc#frag HTTP/1.1\r\n\r\n");
        assert_eq!((q.query_token, q.token()), (Some("abc"), Some("abc")));
        for target in [
            "/healthz?xtoken=1",
            "/healthz?token",
            "/healthz?token=",
            "/healthz",
        ] {
            let req = format!("GET {target} HTTP/1.1\r\n\r\n");
            assert_eq!(creds_of(&req).query_token, None, "{target}");
        }
        // The first occurrence wins.
        let first = creds_of("GET /healthz?token=a&token=b HTTP/1.1\r\n\r\n");
        assert_eq!(first.query_token, Some("a"));
        // Other schemes and empty tokens are not bearer tokens.
        for auth in ["Basic dXNlcjpwdw==", "Bearer", "Bearer   ", "Bearerabc"] {
            let req = format!("GET /healthz HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n");
            assert_eq!(creds_of(&req).bearer, None, "{auth}");
        }
    }

    #[test]
    fn upgrades_carry_credentials() {
        let req = OK.replace("GET /echo ", "GET /ws?token=jwt.x.y ").replace(
            "Host: x\r\n",
            "Host: x\r\nOrigin: http://localhost:3000\r\n",
        );
        let Ok(Progress::Done(Parsed::Upgrade { upgrade, creds })) = http(req.as_bytes()) else {
            panic!("not an upgrade");
        };
        assert_eq!(upgrade.route, 1);
        assert_eq!(upgrade.head_len, req.len());
        assert_eq!(&upgrade.accept, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(creds.origin, Origin::Value("http://localhost:3000"));
        assert_eq!(creds.token(), Some("jwt.x.y"));
    }

    #[test]
    fn write_response_format() {
        let mut out = Vec::new();
        write_response(
            401,
            "application/json",
            "WWW-Authenticate: Bearer\r\n",
            b"{}",
            &mut out,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\nWWW-Authenticate: Bearer\r\n\r\n{}"
        );
        out.clear();
        write_response(204, "application/json", "", b"ignored", &mut out);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        out.clear();
        write_response(299, "text/plain", "", b"", &mut out);
        assert!(out.starts_with(b"HTTP/1.1 299 \r\n"));
        for (status, text) in [
            (401, "Unauthorized"),
            (411, "Length Required"),
            (413, "Payload Too Large"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
        ] {
            let mut out = Vec::new();
            refuse(status, "r").write_response(&mut out);
            let s = String::from_utf8(out).unwrap();
            assert!(
                s.starts_with(&format!("HTTP/1.1 {status} {text}\r\n")),
                "{s}"
            );
            assert_eq!(s.contains("WWW-Authenticate: Bearer\r\n"), status == 401);
            assert!(s.ends_with("\r\n\r\nr\n"));
        }
    }
}
