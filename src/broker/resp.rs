//! RESP2, the Redis wire protocol: commands out, replies in. A parser that
//! knows nothing of sockets (it reads a byte slice and says how much it
//! used, or that it needs more), like the WebSocket frame parser.
//!
//! Why our own codec and not a client crate: the broker thread multiplexes
//! a subscriber connection, a pipelined command connection and the cores'
//! rings in one `poll` loop, and fred or redis-rs's async clients bring
//! tokio (a second runtime); redis-rs's blocking client cannot wait on a
//! socket and an eventfd at once. RESP2 is five reply types; parsing a
//! pub/sub message here is one pass over the bytes with no allocation but
//! the payload's own copy.

use std::fmt;

/// One reply. Bulk strings keep their bytes; arrays nest.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK`
    Status(Box<str>),
    /// `-ERR ...`: the command failed (the connection is fine).
    Error(Box<str>),
    /// `:42`
    Int(i64),
    /// `$n` bytes.
    Bulk(Box<[u8]>),
    /// `$-1` or `*-1`.
    Nil,
    /// `*n` replies.
    Array(Vec<Reply>),
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Status(s) => write!(f, "+{s}"),
            Reply::Error(s) => write!(f, "-{s}"),
            Reply::Int(i) => write!(f, ":{i}"),
            Reply::Bulk(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Reply::Nil => f.write_str("nil"),
            Reply::Array(a) => f.debug_list().entries(a).finish(),
        }
    }
}

impl Reply {
    /// The bytes of a bulk or status reply.
    pub(crate) fn bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(b) => Some(b),
            Reply::Status(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// An unsigned integer (offsets, epochs).
    pub(crate) fn u64(&self) -> Option<u64> {
        match self {
            Reply::Int(i) => u64::try_from(*i).ok(),
            _ => std::str::from_utf8(self.bytes()?).ok()?.parse().ok(),
        }
    }

    /// The elements of an array reply.
    pub(crate) fn array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Why bytes are not RESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad RESP from the broker: {}", self.0)
    }
}

/// Deepest array nesting accepted (our scripts return three levels).
const MAX_DEPTH: usize = 8;
/// Longest bulk string accepted: Redis's own `proto-max-bulk-len` default.
const MAX_BULK: usize = 512 << 20;

/// Parses one reply from the front of `buf`: `Ok(Some((reply, used)))`,
/// `Ok(None)` if `buf` holds only part of one.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let mut at = 0;
    match parse_at(buf, &mut at, 0)? {
        Some(r) => Ok(Some((r, at))),
        None => Ok(None),
    }
}

fn line<'a>(buf: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let rest = &buf[*at..];
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    *at += end + 2;
    Some(&rest[..end])
}

fn number(l: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(l)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProtocolError(format!("not a number: {:?}", String::from_utf8_lossy(l))))
}

fn text(l: &[u8]) -> Box<str> {
    String::from_utf8_lossy(l).into()
}

fn parse_at(buf: &[u8], at: &mut usize, depth: usize) -> Result<Option<Reply>, ProtocolError> {
    if *at >= buf.len() {
        return Ok(None);
    }
    let kind = buf[*at];
    let start = *at;
    *at += 1;
    let Some(l) = line(buf, at) else {
        *at = start;
        return Ok(None);
    };
    let reply = match kind {
        b'+' => Reply::Status(text(l)),
        b'-' => Reply::Error(text(l)),
        b':' => Reply::Int(number(l)?),
        b'$' => {
            let n = number(l)?;
            if n < 0 {
                Reply::Nil
            } else {
                let n = n as usize;
                if n > MAX_BULK {
                    return Err(ProtocolError(format!("bulk string of {n} bytes")));
                }
                if buf.len() < *at + n + 2 {
                    *at = start;
                    return Ok(None);
                }
                if &buf[*at + n..*at + n + 2] != b"\r\n" {
                    return Err(ProtocolError("bulk string without CRLF".into()));
                }
                let b = buf[*at..*at + n].into();
                *at += n + 2;
                Reply::Bulk(b)
            }
        }
        b'*' => {
            let n = number(l)?;
            if n < 0 {
                Reply::Nil
            } else {
                if depth >= MAX_DEPTH {
                    return Err(ProtocolError("arrays nested too deep".into()));
                }
                // Each element takes at least 3 bytes: never reserve more
                // than the buffer could hold.
                let mut items = Vec::with_capacity((n as usize).min(buf.len() / 3));
                for _ in 0..n {
                    match parse_at(buf, at, depth + 1)? {
                        Some(r) => items.push(r),
                        None => {
                            *at = start;
                            return Ok(None);
                        }
                    }
                }
                Reply::Array(items)
            }
        }
        other => {
            return Err(ProtocolError(format!(
                "unexpected type byte {:?}",
                other as char
            )))
        }
    };
    Ok(Some(reply))
}

/// Appends one command (an array of bulk strings) to `out`.
pub(crate) fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    header(out, b'*', args.len());
    for a in args {
        header(out, b'$', a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    out.extend_from_slice(itoa(n as u64).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal (no allocation).
pub(crate) fn itoa(n: u64) -> Decimal {
    let mut d = Decimal {
        buf: [0; 20],
        start: 20,
    };
    let mut n = n;
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    d
}

/// A decimal number's digits, on the stack.
pub(crate) struct Decimal {
    buf: [u8; 20],
    start: usize,
}

impl Decimal {
    /// The digits.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reply_type_and_partial_input() {
        let input = b"+OK\r\n-ERR no\r\n:-7\r\n$3\r\na\r\n\r\n$-1\r\n*2\r\n*1\r\n:1\r\n$0\r\n\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((r, used)) = parse(&input[at..]).unwrap() {
            got.push(r);
            at += used;
        }
        assert_eq!(at, input.len());
        assert_eq!(
            got,
            vec![
                Reply::Status("OK".into()),
                Reply::Error("ERR no".into()),
                Reply::Int(-7),
                Reply::Bulk(b"a\r\n".to_vec().into()),
                Reply::Nil,
                Reply::Array(vec![
                    Reply::Array(vec![Reply::Int(1)]),
                    Reply::Bulk(Box::new([]))
                ]),
            ]
        );
        // Every strict prefix of the last reply is incomplete, never an error.
        let last = b"*2\r\n*1\r\n:1\r\n$0\r\n\r\n";
        for cut in 0..last.len() {
            assert_eq!(parse(&last[..cut]).unwrap(), None, "prefix {cut}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"?\r\n"[..],
            b":x\r\n",
            b"$3\r\nabcd\r\n",
            b"$99999999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // A huge array count with no elements is just incomplete.
        assert_eq!(parse(b"*1000000000\r\n").unwrap(), None);
    }

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        assert_eq!(itoa(0).as_bytes(), b"0");
        assert_eq!(itoa(u64::MAX).as_bytes(), b"18446744073709551615");
        let (r, _) = parse(&out).unwrap().unwrap();
        assert_eq!(r.array().map(<[Reply]>::len), Some(3));
        assert_eq!(Reply::Bulk(b"12".to_vec().into()).u64(), Some(12));
    }
}
