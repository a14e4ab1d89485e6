//! The opening handshake (RFC 6455 §4.2): parse an HTTP/1.1 upgrade request
//! head without allocating, then answer with `101 Switching Protocols` or a
//! precise refusal.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// Headers a request may carry before it is refused with 431.
const MAX_HEADERS: usize = 64;
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

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

impl Refusal {
    fn status_text(&self) -> &'static str {
        match self.status {
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Error",
        }
    }

    /// Appends the full HTTP response (status line, headers, plain-text body).
    pub fn write_response(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let extra = match self.status {
            405 => "Allow: GET\r\n",
            426 => "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n",
            _ => "",
        };
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n{}\n",
            self.status,
            self.status_text(),
            self.reason.len() + 1,
            extra,
            self.reason
        );
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
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        );
        out.extend_from_slice(&self.accept);
        out.extend_from_slice(b"\r\n\r\n");
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

/// Parses a request head that may name a WebSocket endpoint or a plain
/// HTTP resource (see [`Target`]); upgrade requests are checked exactly as
/// [`parse_request`] checks them.
pub fn parse_any<R, H>(
    buf: &[u8],
    max_head: usize,
    route: impl FnOnce(&str) -> Option<Target<R, H>>,
) -> Result<Option<Request<R, H>>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
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
    if head_len > max_head {
        return Err(refuse(431, "request head too large"));
    }
    if req.method != Some("GET") {
        return Err(refuse(405, "WebSocket upgrade requires GET"));
    }
    if req.version != Some(1) {
        return Err(refuse(400, "WebSocket upgrade requires HTTP/1.1"));
    }
    let path = target_path(req.path.unwrap_or("/"));
    let route = match route(path) {
        Some(Target::WebSocket(r)) => r,
        Some(Target::Http(resource)) => return Ok(Some(Request::Get { resource, head_len })),
        None => return Err(refuse(404, "no WebSocket endpoint at this path")),
    };

    let mut upgrade = false;
    let mut connection = false;
    let mut key: Option<&[u8]> = None;
    let mut version: Option<&[u8]> = None;
    let mut host = false;
    let mut body = false;
    for h in req.headers.iter() {
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
    Ok(Some(Request::Upgrade(Upgrade {
        route,
        accept: accept_key(key),
        head_len,
    })))
}

/// Appends a complete `200 OK` response with `body`, closing the connection
/// after it (plain HTTP resources are one request per connection).
pub fn write_ok(content_type: &str, body: &[u8], out: &mut Vec<u8>) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body);
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
}
