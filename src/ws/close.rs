//! Close codes (RFC 6455 §7.4) and close frame payloads.

use std::fmt;

/// A WebSocket close status code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection is fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the server is shutting down.
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL: CloseCode = CloseCode(1002);
    /// 1007: a text message (or close reason) was not valid UTF-8.
    pub const INVALID_DATA: CloseCode = CloseCode(1007);
    /// 1008: the peer broke a server policy (e.g. it stopped reading and its
    /// send queue went over the bound).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: a message was larger than the server accepts.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// 1012 (IANA registry): the service is restarting; reconnect later.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 4001 (private range): the token is missing, invalid or not valid
    /// yet; do not reconnect with it. A browser cannot read a refused
    /// upgrade's HTTP status, so `/ws` tells it this way.
    pub const UNAUTHORIZED: CloseCode = CloseCode(4001);
    /// 4003 (private range): the origin is not allowed; do not reconnect.
    pub const FORBIDDEN: CloseCode = CloseCode(4003);
    /// 4002 (private range): the token expired during the connection;
    /// reconnect with a fresh one.
    pub const TOKEN_EXPIRED: CloseCode = CloseCode(4002);

    /// Whether a peer may send this code in a close frame.
    ///
    /// 1004–1006 and 1015 are reserved for local use and must never appear
    /// on the wire; 1016–2999 are reserved for future RFCs; 3000–4999 are for
    /// libraries and applications; everything else is invalid.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a received close frame said.
#[derive(Debug, PartialEq, Eq)]
pub enum ReceivedClose<'a> {
    /// An empty close payload: the peer gave no status.
    NoStatus,
    /// A valid status code and a UTF-8 reason (possibly empty).
    Status(CloseCode, &'a str),
}

/// Validates a received (already unmasked) close payload.
///
/// Errors carry the code to fail the connection with: 1002 for a one-byte
/// payload or a code that may not be sent, 1007 for a reason that is not
/// UTF-8.
pub fn parse_close_payload(payload: &[u8]) -> Result<ReceivedClose<'_>, CloseCode> {
    match payload.len() {
        0 => Ok(ReceivedClose::NoStatus),
        1 => Err(CloseCode::PROTOCOL),
        _ => {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_valid_on_wire() {
                return Err(CloseCode::PROTOCOL);
            }
            let reason =
                simdutf8::basic::from_utf8(&payload[2..]).map_err(|_| CloseCode::INVALID_DATA)?;
            Ok(ReceivedClose::Status(code, reason))
        }
    }
}

/// A close frame payload built on the stack: code plus a reason cut to fit
/// the 125-byte control frame limit on a UTF-8 boundary.
#[derive(Clone, Copy)]
pub struct ClosePayload {
    buf: [u8; 125],
    len: u8,
}

impl ClosePayload {
    /// An empty payload (reply to a close that carried no status).
    pub const EMPTY: ClosePayload = ClosePayload {
        buf: [0; 125],
        len: 0,
    };

    /// Code plus reason; the reason is truncated to 123 bytes at a character
    /// boundary.
    pub fn new(code: CloseCode, reason: &str) -> ClosePayload {
        let mut buf = [0u8; 125];
        buf[..2].copy_from_slice(&code.0.to_be_bytes());
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        buf[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
        ClosePayload {
            buf,
            len: (2 + cut) as u8,
        }
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_matches_autobahn_7_7_and_7_9() {
        for c in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(CloseCode(c).is_valid_on_wire(), "{c}");
        }
        for c in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(c).is_valid_on_wire(), "{c}");
        }
    }

    #[test]
    fn parses_payloads() {
        assert_eq!(parse_close_payload(&[]), Ok(ReceivedClose::NoStatus));
        assert_eq!(parse_close_payload(&[3]), Err(CloseCode::PROTOCOL));
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, b'o', b'k']),
            Ok(ReceivedClose::Status(CloseCode::NORMAL, "ok"))
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, 0xFF]),
            Err(CloseCode::INVALID_DATA)
        );
        assert_eq!(parse_close_payload(&[0x03, 0xED]), Err(CloseCode::PROTOCOL));
    }

    #[test]
    fn payload_truncates_on_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let p = ClosePayload::new(CloseCode::POLICY, &reason);
        assert!(p.as_bytes().len() <= 125);
        assert!(std::str::from_utf8(&p.as_bytes()[2..]).is_ok());
        assert_eq!(&p.as_bytes()[..2], &1008u16.to_be_bytes());
    }
}
