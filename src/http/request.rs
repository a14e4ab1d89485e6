//! Parsing an HTTP/1.1 request head without allocating (httparse into the
//! caller's stack array), its method and target, and how its body is
//! delimited. Knows nothing of WebSocket.

use super::response::{refuse, Refusal};

/// Headers a request may carry before it is refused with 431.
pub(crate) const MAX_HEADERS: usize = 64;

pub(crate) fn trim(v: &[u8]) -> &[u8] {
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
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

/// The path of a request target, without query or fragment; absolute-form
/// targets (`http://host/path`) are reduced to their path.
pub(crate) fn target_path(target: &str) -> &str {
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

/// A complete request head as httparse left it, borrowed from the buffer.
pub(crate) struct Head<'h, 'a> {
    /// The method token.
    pub(crate) method: &'a str,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) version: u8,
    /// The request target as sent.
    pub(crate) target: &'a str,
    /// The headers, in order.
    pub(crate) headers: &'h [httparse::Header<'a>],
    /// Length of the head in bytes.
    pub(crate) len: usize,
}

/// Parses the request head (size and syntax checks only); `Ok(None)` while
/// it is incomplete and still under `max_head`. `headers` is the caller's
/// stack array, so nothing is allocated.
pub(crate) fn parse_head<'h, 'a>(
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

/// A request method. Only those an API resource may plausibly accept are
/// named; the caller answers 405 for the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
    /// Anything else (methods are case-sensitive).
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 §9.1): `get` is `Other`.
    pub(crate) fn from_token(m: &str) -> Self {
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

/// How an HTTP request's body is delimited.
pub(crate) struct Framing {
    /// Declared body length (0 without `Content-Length`).
    pub(crate) len: usize,
    /// The client sent `Expect: 100-continue`.
    pub(crate) continue_expected: bool,
}

impl Framing {
    /// Reads `Content-Length` and `Expect`. Chunked bodies are refused
    /// rather than decoded: API clients can always send a length, and one
    /// framing keeps request smuggling (RFC 9112 §6.3) off the table.
    pub(crate) fn from_headers(
        headers: &[httparse::Header],
        max_body: usize,
    ) -> Result<Self, Refusal> {
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
