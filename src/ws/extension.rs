//! `Sec-WebSocket-Extensions` (RFC 6455 §9.1) and the permessage-deflate
//! negotiation (RFC 7692 §7): the client's offers in, one agreement out.
//!
//! The server takes the first permessage-deflate offer it can honour and
//! always answers `server_no_context_takeover; client_no_context_takeover`:
//! every message is compressed on its own, which is what lets a core share
//! its compressor and inflater among all connections
//! ([`super::deflate`]). An offer it cannot honour (unknown or repeated
//! parameters, bad values, `server_max_window_bits=8`) is declined by
//! moving on to the next one, and with none left the connection opens
//! without the extension; only a header that is not a valid extension
//! list at all refuses the handshake (400).

use super::deflate::WindowBits;

/// The permessage-deflate parameters agreed with one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deflate {
    /// The largest window the server may compress with.
    pub server_window: WindowBits,
    /// The client limited the server's window: the answer repeats it.
    pub window_limited: bool,
}

impl Deflate {
    /// Appends the response header line (with its `\r\n`).
    pub fn write_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if self.window_limited {
            out.extend_from_slice(b"; server_max_window_bits=");
            let bits = self.server_window.get();
            if bits >= 10 {
                out.push(b'1');
            }
            out.push(b'0' + bits % 10);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The header is not a valid extension list (answered with 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// One `name[=value]` parameter of an offer.
struct Param<'a> {
    name: &'a [u8],
    /// The value, unquoted (a quoted-string's escapes kept as they are:
    /// no permessage-deflate value may contain one).
    value: Option<&'a [u8]>,
}

/// Chooses permessage-deflate parameters from the values of every
/// `Sec-WebSocket-Extensions` header, in order. `Ok(None)`: no offer, or
/// none the server can honour.
pub fn negotiate<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<Deflate>, Malformed> {
    let mut chosen = None;
    for value in values {
        let mut p = Cursor { s: value, at: 0 };
        loop {
            p.skip_ows();
            if p.eat(b',') {
                continue; // an empty list element (RFC 7230 §7)
            }
            if p.done() {
                break;
            }
            let name = p.token().ok_or(Malformed(
                "Sec-WebSocket-Extensions: expected an extension name",
            ))?;
            let mut params: Vec<Param<'a>> = Vec::new();
            loop {
                p.skip_ows();
                if p.done() || p.eat(b',') {
                    break;
                }
                if !p.eat(b';') {
                    return Err(Malformed(
                        "Sec-WebSocket-Extensions: expected ';' or ',' after an extension",
                    ));
                }
                p.skip_ows();
                let name = p.token().ok_or(Malformed(
                    "Sec-WebSocket-Extensions: expected a parameter name",
                ))?;
                p.skip_ows();
                let value = if p.eat(b'=') {
                    p.skip_ows();
                    Some(p.value().ok_or(Malformed(
                        "Sec-WebSocket-Extensions: expected a parameter value",
                    ))?)
                } else {
                    None
                };
                params.push(Param { name, value });
            }
            if chosen.is_none() && name.eq_ignore_ascii_case(b"permessage-deflate") {
                chosen = accept(&params);
            }
        }
    }
    Ok(chosen)
}

/// The agreement for one offer, or `None` to decline it (RFC 7692 §7.1).
fn accept(params: &[Param<'_>]) -> Option<Deflate> {
    let mut seen = [false; 4];
    let mut server_window = None;
    for p in params {
        let which = [
            &b"server_no_context_takeover"[..],
            b"client_no_context_takeover",
            b"server_max_window_bits",
            b"client_max_window_bits",
        ]
        .iter()
        .position(|n| p.name.eq_ignore_ascii_case(n))?;
        if std::mem::replace(&mut seen[which], true) {
            return None; // the same parameter twice
        }
        match (which, p.value) {
            (0 | 1, None) => {}
            (2, Some(v)) => server_window = Some(window_bits(v)?),
            (3, None) => {}
            (3, Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
    }
    match server_window {
        None => Some(Deflate {
            server_window: WindowBits::MAX,
            window_limited: false,
        }),
        // zlib has no raw 8-bit window (`WindowBits::new(8)` is `None`):
        // declined (§7.1.2.1).
        Some(bits) => Some(Deflate {
            server_window: WindowBits::new(bits)?,
            window_limited: true,
        }),
    }
}

/// `8`..`15`, without leading zeros (RFC 7692 §7.1.2).
fn window_bits(v: &[u8]) -> Option<u8> {
    match v {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn done(&self) -> bool {
        self.at >= self.s.len()
    }

    fn skip_ows(&mut self) {
        while matches!(self.s.get(self.at), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.s.get(self.at) == Some(&c);
        self.at += usize::from(hit);
        hit
    }

    /// An RFC 7230 token.
    fn token(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        while self.s.get(self.at).is_some_and(|&c| is_tchar(c)) {
            self.at += 1;
        }
        (self.at > start).then(|| &self.s[start..self.at])
    }

    /// A token or a quoted-string (returned without its quotes).
    fn value(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return self.token();
        }
        let start = self.at;
        loop {
            match *self.s.get(self.at)? {
                b'"' => break,
                b'\\' => self.at += 2,
                c if c == b'\t' || c >= 0x20 && c != 0x7F => self.at += 1,
                _ => return None,
            }
        }
        let v = self.s.get(start..self.at)?;
        self.at += 1;
        Some(v)
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a negotiation came to: the server window and whether the
    /// answer names it.
    type Outcome = Result<Option<(u8, bool)>, Malformed>;

    fn neg(values: &[&str]) -> Outcome {
        negotiate(values.iter().map(|v| v.as_bytes()))
            .map(|d| d.map(|d| (d.server_window.get(), d.window_limited)))
    }

    #[test]
    fn offers_and_what_is_agreed() {
        let full = Ok(Some((15, false)));
        let table: &[(&[&str], Outcome)] = &[
            (&["permessage-deflate"], full),
            (&["permessage-deflate; client_max_window_bits"], full),
            // Chromium's and Firefox's offer.
            (
                &["permessage-deflate; client_max_window_bits"],
                Ok(Some((15, false))),
            ),
            (
                &["permessage-deflate; client_no_context_takeover; server_no_context_takeover"],
                full,
            ),
            (&["permessage-deflate; client_max_window_bits=10"], full),
            (
                &["permessage-deflate; server_max_window_bits=9"],
                Ok(Some((9, true))),
            ),
            (
                &["permessage-deflate; server_max_window_bits=\"12\""],
                Ok(Some((12, true))),
            ),
            (
                &["permessage-deflate ;server_max_window_bits = 15"],
                Ok(Some((15, true))),
            ),
            (&["PerMessage-Deflate"], full),
            // Declined offers: the next one is taken, or none.
            (&["permessage-deflate; server_max_window_bits=8"], Ok(None)),
            (
                &["permessage-deflate; server_max_window_bits=8, permessage-deflate"],
                full,
            ),
            (&["permessage-deflate; server_max_window_bits"], Ok(None)),
            (&["permessage-deflate; server_max_window_bits=16"], Ok(None)),
            (&["permessage-deflate; server_max_window_bits=09"], Ok(None)),
            (&["permessage-deflate; client_max_window_bits=7"], Ok(None)),
            (
                &["permessage-deflate; server_no_context_takeover=1"],
                Ok(None),
            ),
            (&["permessage-deflate; unknown_param"], Ok(None)),
            (
                &["permessage-deflate; client_no_context_takeover; client_no_context_takeover"],
                Ok(None),
            ),
            (
                &[
                    "permessage-deflate; foo, permessage-deflate; server_max_window_bits=10",
                    "permessage-deflate",
                ],
                Ok(Some((10, true))),
            ),
            // Other extensions are ignored; several headers are one list.
            (&["x-webkit-deflate-frame"], Ok(None)),
            (&["x-foo; a=1", "permessage-deflate"], full),
            (&["x-foo, , permessage-deflate,"], full),
            (&[""], Ok(None)),
            (&[], Ok(None)),
            // Not an extension list at all.
            (
                &["permessage-deflate;"],
                Err(Malformed(
                    "Sec-WebSocket-Extensions: expected a parameter name",
                )),
            ),
            (
                &["; permessage-deflate"],
                Err(Malformed(
                    "Sec-WebSocket-Extensions: expected an extension name",
                )),
            ),
            (
                &["permessage-deflate client_max_window_bits"],
                Err(Malformed(
                    "Sec-WebSocket-Extensions: expected ';' or ',' after an extension",
                )),
            ),
            (
                &["permessage-deflate; server_max_window_bits="],
                Err(Malformed(
                    "Sec-WebSocket-Extensions: expected a parameter value",
                )),
            ),
            (
                &["permessage-deflate; server_max_window_bits=\"10"],
                Err(Malformed(
                    "Sec-WebSocket-Extensions: expected a parameter value",
                )),
            ),
            (
                &["perm\"essage"],
                Err(Malformed(
                    "Sec-WebSocket-Extensions: expected ';' or ',' after an extension",
                )),
            ),
        ];
        for (values, want) in table {
            assert_eq!(&neg(values), want, "{values:?}");
        }
    }

    #[test]
    fn the_answer_names_both_no_context_takeovers() {
        let mut out = Vec::new();
        Deflate {
            server_window: WindowBits::MAX,
            window_limited: false,
        }
        .write_header(&mut out);
        assert_eq!(
            out,
            b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        );
        for bits in 9..=15 {
            let mut out = Vec::new();
            Deflate {
                server_window: WindowBits::new(bits).unwrap(),
                window_limited: true,
            }
            .write_header(&mut out);
            let want = format!("; server_max_window_bits={bits}\r\n");
            assert!(
                out.ends_with(want.as_bytes()),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
    }
}
