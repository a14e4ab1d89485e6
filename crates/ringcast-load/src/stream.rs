//! The `/ws` channel-stream frames the generator reads (docs: the wire spec
//! of channel streams), as pure functions over a text frame's bytes:
//! deliveries `{"type":"message","channel":"C","offset":O,"payload":...}`
//! (servers without streams omit `"offset":O,`), the `welcome` every `/ws`
//! connection gets first (`{"type":"welcome","client":"..","core":N,...}`),
//! acks with or without `"epoch"`/`"offset"`, pongs and errors; and the
//! per-subscriber offset check (consecutive offsets, gaps and reorders).
//!
//! Deliveries are the hot path: matched against a prefix built once per
//! channel and read with a few byte comparisons, no JSON parser. The server
//! writes these objects with a fixed field order, which the spec guarantees.

/// What every delivery on `channel` starts with: `{"type":"message","channel":"C",`.
/// The name is one the server accepts (validated by the caller), so it needs
/// no escaping.
pub(crate) fn message_head(channel: &str) -> Vec<u8> {
    format!(r#"{{"type":"message","channel":"{channel}","#).into_bytes()
}

/// A delivery whose body starts with `head` (from [`message_head`]): its
/// offset (`None` from a server without offsets) and the bytes of the
/// payload value, from its first byte to the end of the body. `None` when
/// the body is not such a delivery (or its offset is malformed).
#[inline]
pub(crate) fn parse_message<'a>(body: &'a [u8], head: &[u8]) -> Option<(Option<u64>, &'a [u8])> {
    let rest = body.strip_prefix(head)?;
    let (offset, rest) = match rest.strip_prefix(b"\"offset\":") {
        Some(r) => {
            let (o, r) = parse_u64(r)?;
            (Some(o), r.strip_prefix(b",")?)
        }
        None => (None, rest),
    };
    Some((offset, rest.strip_prefix(b"\"payload\":")?))
}

/// The send time the generator's publisher wrote into a payload: 32 hex
/// digits (sequence number, then the monotonic send time in ns) right after
/// the opening quote of a payload string, or as the `id` a JSON body
/// ([`json_timestamp`]) starts with.
#[inline]
pub(crate) fn payload_timestamp(payload: &[u8]) -> Option<u64> {
    match payload.strip_prefix(b"\"") {
        Some(digits) => parse_hex(digits.get(16..32)?),
        None => json_timestamp(payload),
    }
}

/// The send time in a `--payload json` body: hex digits 16..32 of the `id`
/// it starts with (`{"id":"<32 hex>"`).
#[inline]
pub(crate) fn json_timestamp(body: &[u8]) -> Option<u64> {
    parse_hex(body.strip_prefix(crate::payload::ID_PREFIX)?.get(16..32)?)
}

/// A server reply that is not a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The first frame on `/ws`: the server core the connection is on
    /// (`None` if the field is missing or not a number).
    Welcome {
        core: Option<u64>,
    },
    /// An ack; `offset` is the channel offset a stream server adds (a
    /// publish's sequence number, a subscribe's latest offset).
    Ack {
        offset: Option<u64>,
    },
    Pong,
    Error,
    Other,
}

/// Classifies a non-delivery text frame by its `type` (always the first
/// field the server writes).
pub(crate) fn classify(body: &[u8]) -> Reply {
    if body.starts_with(br#"{"type":"welcome""#) {
        Reply::Welcome {
            core: field_u64(body, b"core"),
        }
    } else if body.starts_with(br#"{"type":"ack""#) {
        Reply::Ack {
            offset: field_u64(body, b"offset"),
        }
    } else if body.starts_with(br#"{"type":"pong""#) {
        Reply::Pong
    } else if body.starts_with(br#"{"type":"error""#) {
        Reply::Error
    } else {
        Reply::Other
    }
}

/// The unsigned integer value of the first `"name":` in `body`. Good for
/// the top-level fields the server writes before any nested object (an
/// ack's `offset` precedes its `publications`).
pub(crate) fn field_u64(body: &[u8], name: &[u8]) -> Option<u64> {
    let mut key = Vec::with_capacity(name.len() + 3);
    key.push(b'"');
    key.extend_from_slice(name);
    key.extend_from_slice(b"\":");
    let at = body.windows(key.len()).position(|w| w == key.as_slice())?;
    parse_u64(&body[at + key.len()..]).map(|(v, _)| v)
}

/// Leading decimal digits (at least one, no overflow) and what follows them.
#[inline]
fn parse_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in &b[..n] {
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some((v, &b[n..]))
}

/// Hex digits (either case) as a number; `None` on any other byte or more
/// than 16 digits.
#[inline]
fn parse_hex(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &c in b {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = v << 4 | u64::from(d);
    }
    Some(v)
}

/// One subscriber's view of a channel's offsets: each must be the previous
/// one plus 1 (the first may be anything).
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct OffsetCheck {
    /// Highest offset seen so far.
    last: Option<u64>,
}

/// How an offset relates to the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The first offset this subscriber saw.
    First,
    /// Previous + 1.
    Next,
    /// Ahead of previous + 1: this many offsets were skipped.
    Gap(u64),
    /// At or below the highest seen: a duplicate or a reorder. The highest
    /// stays the reference, so one stale message counts once (a later
    /// in-order message is not a gap).
    Behind,
}

impl OffsetCheck {
    #[inline]
    pub(crate) fn see(&mut self, offset: u64) -> Step {
        let step = match self.last {
            None => Step::First,
            Some(l) if offset == l.wrapping_add(1) => Step::Next,
            Some(l) if offset > l => Step::Gap(offset - l - 1),
            Some(_) => return Step::Behind,
        };
        self.last = Some(offset);
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_with_and_without_offsets() {
        let head = message_head("bench");
        assert_eq!(head, br#"{"type":"message","channel":"bench","#);
        let body = br#"{"type":"message","channel":"bench","offset":42,"payload":"00000000000000070000000000abcdef"}"#;
        let (off, payload) = parse_message(body, &head).unwrap();
        assert_eq!(off, Some(42));
        assert_eq!(payload_timestamp(payload), Some(0xabcdef));
        // An older server: no offset, the payload right after the channel.
        let old =
            br#"{"type":"message","channel":"bench","payload":"0000000000000007000000000000ABCD"}"#;
        let (off, payload) = parse_message(old, &head).unwrap();
        assert_eq!(off, None);
        assert_eq!(payload_timestamp(payload), Some(0xabcd));
        // A non-string payload parses; it just has no timestamp.
        let (off, payload) = parse_message(
            br#"{"type":"message","channel":"bench","offset":1,"payload":{"a":1}}"#,
            &head,
        )
        .unwrap();
        assert_eq!((off, payload), (Some(1), &br#"{"a":1}}"#[..]));
        assert_eq!(payload_timestamp(payload), None);
        // Other channels, other types, malformed offsets.
        for bad in [
            &br#"{"type":"message","channel":"bench2","offset":1,"payload":"x"}"#[..],
            br#"{"type":"message","channel":"other","payload":"x"}"#,
            br#"{"type":"ack","id":1}"#,
            br#"{"type":"message","channel":"bench","offset":,"payload":"x"}"#,
            br#"{"type":"message","channel":"bench","offset":-1,"payload":"x"}"#,
            br#"{"type":"message","channel":"bench","offset":99999999999999999999,"payload":"x"}"#,
            br#"{"type":"message","channel":"bench","offset":3}"#,
        ] {
            assert_eq!(
                parse_message(bad, &head),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(payload_timestamp(br#""short""#), None);
        // A JSON body's id carries it too.
        let (_, payload) = parse_message(
            br#"{"type":"message","channel":"bench","offset":1,"payload":{"id":"00000000000000070000000000abcdef","text":"hi"}}"#,
            &head,
        )
        .unwrap();
        assert_eq!(payload_timestamp(payload), Some(0xabcdef));
        assert_eq!(
            json_timestamp(br#"{"id":"000000000000000700000000000000ff","x":1}"#),
            Some(0xff)
        );
        assert_eq!(json_timestamp(br#"{"id":"0007"}"#), None);
        assert_eq!(
            payload_timestamp(br#""00000000000000000000000g00000000""#),
            None
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            classify(br#"{"type":"welcome","client":"0a1b2c3d4e5f-1-7","core":1,"ping_ms":25000}"#),
            Reply::Welcome { core: Some(1) }
        );
        assert_eq!(
            classify(br#"{"type":"welcome","client":"x"}"#),
            Reply::Welcome { core: None }
        );
        assert_eq!(
            classify(br#"{"type":"ack","id":3,"epoch":"9f3a","offset":17}"#),
            Reply::Ack { offset: Some(17) }
        );
        assert_eq!(classify(br#"{"type":"ack"}"#), Reply::Ack { offset: None });
        assert_eq!(
            classify(br#"{"type":"ack","id":3}"#),
            Reply::Ack { offset: None }
        );
        // The top-level offset, not a publication's.
        assert_eq!(
            classify(br#"{"type":"ack","id":1,"epoch":"e","offset":9,"publications":[{"offset":8,"payload":1}]}"#),
            Reply::Ack { offset: Some(9) }
        );
        assert_eq!(classify(br#"{"type":"pong","id":0}"#), Reply::Pong);
        assert_eq!(
            classify(br#"{"type":"error","id":2,"code":"bad_json","message":"m"}"#),
            Reply::Error
        );
        assert_eq!(classify(br#"{"type":"join","channel":"c"}"#), Reply::Other);
    }

    #[test]
    fn offsets_consecutive_gaps_and_reorders() {
        let mut c = OffsetCheck::default();
        let steps: Vec<Step> = [7, 8, 9, 12, 11, 12, 13, 13, 20, 21]
            .into_iter()
            .map(|o| c.see(o))
            .collect();
        use Step::*;
        assert_eq!(
            steps,
            [
                First,
                Next,
                Next,
                Gap(2),
                Behind,
                Behind,
                Next,
                Behind,
                Gap(6),
                Next
            ]
        );
    }
}
