//! Writing HTTP/1.1 responses: refusals with a plain-text reason, complete
//! responses with any status and body, `100 Continue`. One request per
//! connection, so every response says `Connection: close`.

/// The interim response for a client that sent `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A refused handshake: the HTTP status and a short reason for the body and
/// the debug log. The connection is closed after the response is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// Why, for the response body and the log.
    pub reason: &'static str,
}

pub(crate) const fn refuse(status: u16, reason: &'static str) -> Refusal {
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
        304 => "Not Modified",
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
/// and 304 the content type, length and body are left out, as HTTP
/// requires (a 304's length would have to be the unsent file's).
pub fn write_response(
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    if status == 204 || status == 304 {
        // Neither carries a body (RFC 9110 §8.6, §15.3.5, §15.4.5).
        use std::io::Write;
        let _ = write!(
            out,
            "HTTP/1.1 {status} {}\r\nConnection: close\r\n{extra_headers}\r\n",
            status_text(status)
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
