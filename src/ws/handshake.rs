//! The opening handshake (RFC 6455 §4.2) on top of an HTTP/1.1 request head
//! parsed by [`crate::http`]: check the upgrade and answer with `101
//! Switching Protocols` or a precise refusal. Requests for plain HTTP
//! resources take the same path with their `Content-Length` body
//! ([`parse_http`]), so one connection-accepting path serves both.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::extension::{self, Deflate};
use crate::http::request::{has_token, parse_head, target_path, trim, Framing, Head, MAX_HEADERS};
use crate::http::{refuse, Credentials, Method, Refusal};

const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A valid upgrade request, routed.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade<R> {
    /// What the request path mapped to.
    pub route: R,
    /// The `Sec-WebSocket-Accept` value for the response.
    pub accept: [u8; 28],
    /// Length of the request head; bytes after it are WebSocket frames.
    pub head_len: usize,
    /// permessage-deflate, if the client offered it acceptably (the server
    /// decides whether to agree: see [`Upgrade::write_response`]).
    pub deflate: Option<Deflate>,
}

impl<R> Upgrade<R> {
    /// Appends the `101 Switching Protocols` response, agreeing to
    /// `deflate` (the offer's agreement, if the server takes it) and with
    /// extra header lines (each ending in `\r\n`).
    pub fn write_response(
        &self,
        deflate: Option<&Deflate>,
        extra_headers: &[u8],
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        );
        out.extend_from_slice(&self.accept);
        out.extend_from_slice(b"\r\n");
        if let Some(d) = deflate {
            d.write_header(out);
        }
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
    /// A WebSocket endpoint: the request must be an upgrade.
    WebSocket(W),
    /// A plain HTTP resource.
    Http(H),
}

/// A complete, valid request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<W, H> {
    /// A WebSocket upgrade: answer 101.
    Upgrade(Upgrade<W>),
    /// A plain `GET` of an HTTP resource; the head is `head_len` bytes.
    Get {
        /// What the path names.
        resource: H,
        /// Length of the request head.
        head_len: usize,
    },
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
    let offers = head
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
        .map(|h| h.value);
    let deflate = extension::negotiate(offers).map_err(|m| refuse(400, m.0))?;
    Ok(Upgrade {
        route,
        accept: accept_key(key),
        head_len: head.len,
        deflate,
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

/// A complete request.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a, W, H> {
    /// A valid WebSocket upgrade: check `creds`, then answer 101.
    Upgrade {
        /// The checked upgrade.
        upgrade: Upgrade<W>,
        /// What the client presented.
        creds: Credentials<'a>,
    },
    /// A plain HTTP request with its whole body (empty without
    /// `Content-Length`); any method, so the resource decides on 405.
    Http {
        /// What the path names.
        resource: H,
        /// The request method.
        method: Method,
        /// Length of the request head.
        head_len: usize,
        /// The whole body.
        body: &'a [u8],
        /// What the client presented.
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
    /// `100 Continue`), so the caller should send one [`CONTINUE`](crate::http::CONTINUE) the first
    /// time it sees this. The resource, method and credentials are known
    /// already, so the caller can refuse (405, 401) before the body is
    /// sent or buffered.
    AwaitingBody {
        /// The client waits for `100 Continue`.
        continue_expected: bool,
        /// What the path names.
        resource: H,
        /// The request method.
        method: Method,
        /// What the client presented.
        creds: Credentials<'a>,
    },
    /// The request is complete.
    Done(Parsed<'a, W, H>),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{write_ok, write_response, Origin, CONTINUE};

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
        up.write_response(None, b"", &mut resp);
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
                creds: Credentials {
                    target: "/api/publish",
                    ..Credentials::default()
                },
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
                    creds: Credentials {
                        target: "/api/publish",
                        ..Credentials::default()
                    },
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
                creds: Credentials {
                    target: "/api/publish",
                    ..Credentials::default()
                },
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
                creds: Credentials {
                    target: "/healthz",
                    ..Credentials::default()
                },
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
             authorization: bEaReR  t.k-n_1 \r\nX-Api-Key: k3y\r\nIf-None-Match: \"e\"\r\n\r\n",
        );
        assert_eq!(
            c,
            Credentials {
                origin: Origin::Value("https://app.example"),
                bearer: Some("t.k-n_1"),
                query_token: Some("abc"),
                api_key: Some("k3y"),
                if_none_match: Some("\"e\""),
                target: "/api/publish?a=1&token=abc&b=2",
            }
        );
        assert_eq!(c.token(), Some("t.k-n_1"));
        assert_eq!(
            (c.param("a"), c.param("b"), c.param("c")),
            (Some("1"), Some("2"), None)
        );
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
