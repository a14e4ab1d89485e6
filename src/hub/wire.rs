//! What fan-out puts on the wire, encoded once per publication: `message`
//! frames with their channel offset, `join`/`leave` events, and the JSON
//! writers every reply uses.
//!
//! Channel names are copied without escaping: [`super::name::check`] admits
//! no character JSON would escape.

use crate::conn::SharedFrame;
use crate::ws::OpCode;

/// `{"type":"message","channel":"C","offset":O,"payload":P}` as one frame,
/// and where `P` starts in it (history answers copy the payload back out).
pub fn message_frame(channel: &str, offset: u64, payload: &[u8]) -> (SharedFrame, u32) {
    debug_assert!(super::name::check(channel).is_ok(), "{channel:?}");
    let mut digits = [0u8; 20];
    let digits = u64_digits(offset, &mut digits);
    let parts: [&[u8]; 7] = [
        b"{\"type\":\"message\",\"channel\":\"",
        channel.as_bytes(),
        b"\",\"offset\":",
        digits,
        b",\"payload\":",
        payload,
        b"}",
    ];
    let frame = SharedFrame::encode_parts(OpCode::Text, &parts);
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let before: usize = parts[..5].iter().map(|p| p.len()).sum();
    let at = frame.bytes().len() - body + before;
    (frame, at as u32)
}

/// The payload inside a frame made by [`message_frame`].
pub fn payload_of(frame: &SharedFrame, at: u32) -> &[u8] {
    let b = frame.bytes();
    &b[at as usize..b.len() - 1]
}

/// `{"type":"join"|"leave","channel":"C","client":"ID","user":U}` (`U` a
/// JSON string or `null`), for the subscribers that asked for events.
pub(crate) fn event_frame(
    join: bool,
    channel: &str,
    client: &str,
    user: Option<&str>,
) -> SharedFrame {
    let mut v = Vec::with_capacity(64 + channel.len() + client.len());
    v.extend_from_slice(if join {
        b"{\"type\":\"join\",\"channel\":\""
    } else {
        b"{\"type\":\"leave\",\"channel\":\""
    });
    v.extend_from_slice(channel.as_bytes());
    v.extend_from_slice(b"\",\"client\":");
    write_client(client, user, &mut v);
    SharedFrame::encode(OpCode::Text, &v)
}

/// `{"type":"reset","channel":"C","epoch":E,"offset":O}`: the channel's
/// stream restarted or lost publications a subscriber cannot recover
/// (`recovered:false` semantics, without a resubscribe); delivery goes on
/// after `O`.
pub(crate) fn reset_frame(channel: &str, position: super::Position) -> SharedFrame {
    let mut v = Vec::with_capacity(80 + channel.len());
    v.extend_from_slice(b"{\"type\":\"reset\",\"channel\":\"");
    v.extend_from_slice(channel.as_bytes());
    v.extend_from_slice(b"\",\"epoch\":");
    write_epoch(position.epoch, &mut v);
    v.extend_from_slice(b",\"offset\":");
    write_u64(position.offset, &mut v);
    v.push(b'}');
    SharedFrame::encode(OpCode::Text, &v)
}

/// `"ID","user":U}`: the tail shared by events and presence entries.
fn write_client(client: &str, user: Option<&str>, out: &mut Vec<u8>) {
    write_json_string(client, out);
    out.extend_from_slice(b",\"user\":");
    match user {
        Some(u) => write_json_string(u, out),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

/// `{"client":"ID","user":U}`: one presence entry.
pub(crate) fn write_presence_entry(client: &str, user: Option<&str>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"client\":");
    write_client(client, user, out);
}

/// An epoch as clients see it: 16 hex digits, a JSON string.
pub(crate) fn write_epoch(epoch: u64, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for i in (0..16).rev() {
        out.push(HEX[((epoch >> (i * 4)) & 0xf) as usize]);
    }
    out.push(b'"');
}

/// Reads an epoch a client sent back ([`write_epoch`]'s form). Anything
/// else is no epoch this server ever issued: `None`, which never matches.
pub(crate) fn parse_epoch(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Appends `s` as a JSON string literal (quotes included), escaping `"`,
/// `\` and control characters; everything else, non-ASCII included, is
/// copied as is (JSON text is UTF-8).
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn u64_digits(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Appends `n` in decimal.
pub(crate) fn write_u64(n: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    out.extend_from_slice(u64_digits(n, &mut buf));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frames_carry_the_offset_and_locate_the_payload() {
        for (offset, payload) in [(1u64, "1"), (u64::MAX, "{\"a\":[1,2]}")] {
            let big = format!("\"{}\"", "x".repeat(70_000));
            for p in [payload, &big] {
                let (f, at) = message_frame("room:1", offset, p.as_bytes());
                assert_eq!(payload_of(&f, at), p.as_bytes());
                let body = &f.bytes()[f.bytes().len() - (p.len() + 1)..];
                assert_eq!(&body[..p.len()], p.as_bytes());
                let want = format!(
                    "{{\"type\":\"message\",\"channel\":\"room:1\",\"offset\":{offset},\"payload\":{p}}}"
                );
                assert!(f.bytes().ends_with(want.as_bytes()));
            }
        }
    }

    #[test]
    fn events_and_epochs() {
        let f = event_frame(true, "c", "id-0-1", Some("a\"b"));
        assert!(f
            .bytes()
            .ends_with(br#"{"type":"join","channel":"c","client":"id-0-1","user":"a\"b"}"#));
        let f = event_frame(false, "c", "x", None);
        assert!(f
            .bytes()
            .ends_with(br#"{"type":"leave","channel":"c","client":"x","user":null}"#));
        let mut v = Vec::new();
        write_epoch(0x0123_4567_89ab_cdef, &mut v);
        assert_eq!(v, b"\"0123456789abcdef\"");
        assert_eq!(parse_epoch("0123456789abcdef"), Some(0x0123_4567_89ab_cdef));
        assert_eq!(parse_epoch("123"), None);
        assert_eq!(parse_epoch("zzzzzzzzzzzzzzzz"), None);
    }
}
