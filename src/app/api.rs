//! The HTTP publish API's bodies: `POST /api/publish` requests and the JSON
//! responses of the API endpoints.
//!
//! Pure functions, no I/O. As on `/ws`, payloads are [`RawValue`]s borrowed
//! from the request body, passed through byte for byte.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::protocol::{
    self, set_once, write_json_string, write_u64, Count, Since, SinceSeed, Text,
};
use crate::conn::SharedFrame;
use crate::hub::{wire, Position};

/// The most messages one batch may carry: bounds the work (and the fan-out)
/// one request can cause before anything is published.
pub const MAX_BATCH: usize = 1000;

/// One message to publish, borrowing from the request body.
#[derive(Debug)]
pub struct Publication<'a> {
    /// A channel name that passed [`protocol::validate_channel`].
    pub channel: Cow<'a, str>,
    /// The exact JSON the caller sent.
    pub payload: &'a RawValue,
}

/// A refused request: the HTTP status and the fields of the error body
/// ([`write_error_body`]).
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status to answer with.
    pub status: u16,
    /// Stable machine-readable name (`bad_json`, `bad_batch`,
    /// `bad_channel`, `missing_field`).
    pub code: &'static str,
    /// Human-readable detail; batch errors start with `messages[i]: `.
    pub message: String,
}

impl ApiError {
    /// A 400 with `code` and `message`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Parses and validates the whole body of `POST /api/publish`:
/// `{"channel":C,"payload":P}` or `{"messages":[{"channel":C,"payload":P},...]}`.
///
/// A batch is all-or-nothing: any bad entry refuses the request with 400
/// naming its index (`messages[3]: ...`), so a caller never has to work out
/// which half of a batch went out. Unknown fields are ignored, for
/// forward compatibility.
pub fn parse_publish(body: &[u8]) -> Result<Vec<Publication<'_>>, ApiError> {
    // JSON text is UTF-8 (RFC 8259 §8.1). serde_json checks only the
    // strings it keeps, so a bad byte in an ignored field would pass.
    let body = simdutf8::basic::from_utf8(body)
        .map_err(|_| ApiError::bad_request("bad_json", "the body is not valid UTF-8"))?;
    let top: Body<'_> =
        serde_json::from_str(body).map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?;
    let Some(batch) = top.messages else {
        return Ok(vec![publication(top.single, "")?]);
    };
    if top.single.channel.is_some() || top.single.payload.is_some() {
        return Err(ApiError::bad_request(
            "bad_batch",
            "a body has either `messages` or `channel` and `payload`, not both",
        ));
    }
    if batch.overflow {
        return Err(ApiError::bad_request(
            "bad_batch",
            format!("more than {MAX_BATCH} messages in one batch"),
        ));
    }
    if batch.entries.is_empty() {
        return Err(ApiError::bad_request("bad_batch", "`messages` is empty"));
    }
    batch
        .entries
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let at = format!("messages[{i}]: ");
            let entry: Entry<'_> = serde_json::from_str(raw.get()).map_err(|e| {
                ApiError::bad_request("bad_json", format!("{at}{}", without_position(&e)))
            })?;
            publication(entry, &at)
        })
        .collect()
}

/// Checks one `{channel, payload}`; `at` prefixes error messages with the
/// entry's place in a batch.
fn publication<'a>(entry: Entry<'a>, at: &str) -> Result<Publication<'a>, ApiError> {
    let missing = |field: &str| {
        ApiError::bad_request("missing_field", format!("{at}missing field `{field}`"))
    };
    let channel = entry.channel.ok_or_else(|| missing("channel"))?;
    let payload = entry.payload.ok_or_else(|| missing("payload"))?;
    protocol::validate_channel(&channel)
        .map_err(|e| ApiError::bad_request("bad_channel", format!("{at}{}", e.message)))?;
    Ok(Publication { channel, payload })
}

/// A batch entry's error, without serde_json's "at line 1 column 14": the
/// position is within the entry, not the body, and would mislead.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(bare) => bare.to_owned(),
        None => text,
    }
}

/// The top-level object: a single publication's fields, or a batch.
struct Body<'a> {
    single: Entry<'a>,
    messages: Option<Batch<'a>>,
}

/// One publication's fields, both optional so their absence is reported as
/// `missing_field` rather than a JSON error.
#[derive(Default)]
struct Entry<'a> {
    channel: Option<Cow<'a, str>>,
    payload: Option<&'a RawValue>,
}

/// A batch's entries, each kept raw and parsed on its own so an error can
/// name its index.
struct Batch<'a> {
    entries: Vec<&'a RawValue>,
    /// More than [`MAX_BATCH`] entries: the rest were checked for syntax
    /// but not kept, so a huge batch costs no memory before it is refused.
    overflow: bool,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Key {
    Channel,
    Payload,
    Messages,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Body<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(BodyVisitor {
            batch_allowed: true,
        })
    }
}

impl<'de> Deserialize<'de> for Entry<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let body = d.deserialize_map(BodyVisitor {
            batch_allowed: false,
        })?;
        Ok(body.single)
    }
}

/// Reads a body or, with `batch_allowed` off, a batch entry (where
/// `messages` is just an unknown field).
struct BodyVisitor {
    batch_allowed: bool,
}

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with `channel` and `payload`")?;
        if self.batch_allowed {
            f.write_str(" or with `messages`")?;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body<'de>, A::Error> {
        let mut single = Entry::default();
        let mut messages = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Channel => set_once(
                    &mut single.channel,
                    map.next_value_seed(Text("channel"))?,
                    "channel",
                )?,
                Key::Payload => set_once(&mut single.payload, map.next_value()?, "payload")?,
                Key::Messages if self.batch_allowed => {
                    set_once(&mut messages, map.next_value_seed(BatchSeed)?, "messages")?
                }
                Key::Messages | Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Body { single, messages })
    }
}

struct BatchSeed;

impl<'de> DeserializeSeed<'de> for BatchSeed {
    type Value = Batch<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed {
    type Value = Batch<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of {\"channel\",\"payload\"} objects for `messages`")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch<'de>, A::Error> {
        let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_BATCH));
        let mut overflow = false;
        while entries.len() < MAX_BATCH {
            match seq.next_element::<&'de RawValue>()? {
                Some(raw) => entries.push(raw),
                None => return Ok(Batch { entries, overflow }),
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {
            overflow = true;
        }
        Ok(Batch { entries, overflow })
    }
}

/// A `POST /api/history` body: `{"channel":C,"limit":N,"since":{...}}`.
pub struct HistoryBody {
    /// The channel (validated).
    pub channel: String,
    /// Most publications (default: the server's cap).
    pub limit: Option<u64>,
    /// Only publications after this point.
    pub since: Option<Since>,
}

/// Parses a `POST /api/history` body.
pub fn parse_history(body: &[u8]) -> Result<HistoryBody, ApiError> {
    let q = parse_query(body)?;
    Ok(HistoryBody {
        channel: q.channel,
        limit: q.limit,
        since: q.since,
    })
}

/// Parses a `POST /api/presence` body (`{"channel":C}`): the channel.
pub fn parse_presence(body: &[u8]) -> Result<Box<str>, ApiError> {
    Ok(parse_query(body)?.channel.into_boxed_str())
}

struct Query {
    channel: String,
    limit: Option<u64>,
    since: Option<Since>,
}

/// The fields of a history or presence body (unknown ones ignored).
fn parse_query(body: &[u8]) -> Result<Query, ApiError> {
    let body = simdutf8::basic::from_utf8(body)
        .map_err(|_| ApiError::bad_request("bad_json", "the body is not valid UTF-8"))?;
    let q: QueryWire<'_> =
        serde_json::from_str(body).map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?;
    let channel = q
        .channel
        .ok_or_else(|| ApiError::bad_request("missing_field", "missing field `channel`"))?;
    protocol::validate_channel(&channel)
        .map_err(|e| ApiError::bad_request("bad_channel", e.message))?;
    Ok(Query {
        channel: channel.into_owned(),
        limit: q.limit,
        since: q.since,
    })
}

#[derive(Default)]
struct QueryWire<'a> {
    channel: Option<Cow<'a, str>>,
    limit: Option<u64>,
    since: Option<Since>,
}

impl<'de> Deserialize<'de> for QueryWire<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(QueryVisitor)
    }
}

struct QueryVisitor;

impl<'de> Visitor<'de> for QueryVisitor {
    type Value = QueryWire<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with `channel`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<QueryWire<'de>, A::Error> {
        let mut q = QueryWire::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match &*key {
                "channel" => set_once(
                    &mut q.channel,
                    map.next_value_seed(Text("channel"))?,
                    "channel",
                )?,
                "limit" => set_once(&mut q.limit, map.next_value_seed(Count("limit"))?, "limit")?,
                "since" => set_once(&mut q.since, map.next_value_seed(SinceSeed)?, "since")?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(q)
    }
}

/// Appends `{"published":N,"results":[{"channel":C,"offset":O,"epoch":"E"},...]}`.
pub fn write_published_results(results: &[(Box<str>, Position)], out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"published\":");
    write_u64(results.len() as u64, out);
    out.extend_from_slice(b",\"results\":[");
    for (i, (channel, p)) in results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"channel\":");
        write_json_string(channel, out);
        out.extend_from_slice(b",\"offset\":");
        write_u64(p.offset, out);
        out.extend_from_slice(b",\"epoch\":");
        wire::write_epoch(p.epoch, out);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

/// Appends `{"epoch":"E","offset":T,"publications":[...]}`.
pub fn write_history_body(
    p: Position,
    publications: &[(u64, SharedFrame, u32)],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"{\"epoch\":");
    wire::write_epoch(p.epoch, out);
    out.extend_from_slice(b",\"offset\":");
    write_u64(p.offset, out);
    out.push(b',');
    protocol::write_publications(publications, out);
    out.push(b'}');
}

/// Appends `{"error":{"code":"...","message":"..."}}`, the body of every
/// API error response (both strings escaped).
pub fn write_error_body(code: &str, message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"error\":{\"code\":");
    write_json_string(code, out);
    out.extend_from_slice(b",\"message\":");
    write_json_string(message, out);
    out.extend_from_slice(b"}}");
}

/// Appends `{"channels":[{"name":"a","subscribers":3},...]}`, sorted by
/// name so the output is stable whatever order the cores reported in.
pub fn write_channels_body(channels: &[(String, u64)], out: &mut Vec<u8>) {
    let mut sorted: Vec<&(String, u64)> = channels.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out.extend_from_slice(b"{\"channels\":[");
    for (i, (name, subscribers)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        write_json_string(name, out);
        out.extend_from_slice(b",\"subscribers\":");
        write_u64(*subscribers, out);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

/// Compares a presented API key with the configured one in time that
/// depends only on the presented key's length, so response timing does not
/// reveal how many leading bytes of a guess were right.
///
/// No key presented, or an empty configured key, never matches: an empty
/// key must not turn into "anyone may publish".
pub fn key_matches(expected: &str, presented: Option<&str>) -> bool {
    let (expected, Some(presented)) = (expected.as_bytes(), presented) else {
        return false;
    };
    if expected.is_empty() {
        return false;
    }
    let presented = presented.as_bytes();
    // Every presented byte is compared (against the expected key, cycled),
    // with no early exit; a length mismatch is folded into the same result.
    let mut diff = expected.len() ^ presented.len();
    for (p, e) in presented.iter().zip(expected.iter().cycle()) {
        diff |= usize::from(p ^ e);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn ok(body: &str) -> Vec<Publication<'_>> {
        parse_publish(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    fn err(body: &str) -> ApiError {
        match parse_publish(body.as_bytes()) {
            Ok(p) => panic!("{body} parsed as {p:?}"),
            Err(e) => {
                assert_eq!(e.status, 400, "{body}");
                e
            }
        }
    }

    fn to_value(out: &[u8]) -> Value {
        serde_json::from_slice(out).unwrap_or_else(|e| {
            panic!("{e}: {:?}", String::from_utf8_lossy(out));
        })
    }

    #[test]
    fn single_publication() {
        let p = ok(r#"{"channel":"news","payload":{"a":[1, 2.50,"x\n"]},"v":1}"#);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].channel, "news");
        assert!(matches!(p[0].channel, Cow::Borrowed(_)));
        assert_eq!(p[0].payload.get(), r#"{"a":[1, 2.50,"x\n"]}"#);

        let p = ok(r#"{"payload":null,"channel":"a\/b"}"#);
        assert_eq!((&*p[0].channel, p[0].payload.get()), ("a/b", "null"));
    }

    #[test]
    fn batch_keeps_order_and_bytes() {
        let p = ok(r#"{"messages":[
            {"channel":"a","payload":1},
            {"channel":"b","payload":"two \"2\"","extra":true},
            {"payload":[3],"channel":"a"}
        ]}"#);
        let got: Vec<(&str, &str)> = p.iter().map(|p| (&*p.channel, p.payload.get())).collect();
        assert_eq!(got, [("a", "1"), ("b", r#""two \"2\"""#), ("a", "[3]")]);
    }

    #[test]
    fn batch_limits() {
        let entry = r#"{"channel":"c","payload":0}"#;
        let body = |n: usize| format!(r#"{{"messages":[{}]}}"#, vec![entry; n].join(","));
        assert_eq!(parse_publish(body(1).as_bytes()).unwrap().len(), 1);
        assert_eq!(
            parse_publish(body(MAX_BATCH).as_bytes()).unwrap().len(),
            MAX_BATCH
        );
        let e = parse_publish(body(MAX_BATCH + 1).as_bytes()).unwrap_err();
        assert_eq!((e.status, e.code), (400, "bad_batch"));
        assert!(e.message.contains("1000"), "{}", e.message);

        let e = err(r#"{"messages":[]}"#);
        assert_eq!(e.code, "bad_batch");

        // Beyond the limit, entries are still checked for JSON syntax.
        let broken = format!(
            r#"{{"messages":[{},{{"x":}}]}}"#,
            vec![entry; MAX_BATCH].join(",")
        );
        assert_eq!(
            parse_publish(broken.as_bytes()).unwrap_err().code,
            "bad_json"
        );
    }

    #[test]
    fn batch_and_single_fields_together() {
        let e = err(r#"{"channel":"a","messages":[{"channel":"b","payload":1}]}"#);
        assert_eq!(e.code, "bad_batch");
    }

    #[test]
    fn bad_json() {
        for body in [
            "",
            "{",
            "nope",
            "[]",
            "null",
            r#"{"channel":"a","payload":1} x"#,
            r#"{"channel":5,"payload":1}"#,
            r#"{"channel":"a","payload":}"#,
            r#"{"channel":"a","channel":"b","payload":1}"#,
            r#"{"messages":{"channel":"a","payload":1}}"#,
            r#"{"messages":null}"#,
            r#"{"messages":[1,2]"#,
        ] {
            assert_eq!(err(body).code, "bad_json", "{body}");
        }
        // Not UTF-8, though only in a field nobody reads.
        let e = parse_publish(b"{\"channel\":\"a\",\"payload\":1,\"x\":\"\xff\"}").unwrap_err();
        assert_eq!((e.status, e.code), (400, "bad_json"));
        assert!(e.message.contains("UTF-8"), "{}", e.message);
        let e = err(r#"{"channel":5,"payload":1}"#);
        assert!(
            e.message.contains("a string for `channel`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn bad_entries_name_their_index() {
        let body = |bad: &str| {
            format!(
                r#"{{"messages":[{{"channel":"a","payload":1}},{{"channel":"b","payload":2}},{bad}]}}"#
            )
        };
        for (bad, code, detail) in [
            (
                "5",
                "bad_json",
                "expected an object with `channel` and `payload`",
            ),
            (
                r#"{"channel":[],"payload":1}"#,
                "bad_json",
                "a string for `channel`",
            ),
            (
                r#"{"channel":"a","channel":"a","payload":1}"#,
                "bad_json",
                "duplicate field",
            ),
            (
                r#"{"payload":1}"#,
                "missing_field",
                "missing field `channel`",
            ),
            (
                r#"{"channel":"x"}"#,
                "missing_field",
                "missing field `payload`",
            ),
            (
                r#"{"channel":"x*","payload":1}"#,
                "bad_channel",
                "ASCII letters",
            ),
            (
                r#"{"channel":"","payload":1}"#,
                "bad_channel",
                "empty channel name",
            ),
        ] {
            let text = body(bad);
            let e = err(&text);
            assert_eq!(e.code, code, "{bad}: {e}");
            assert!(e.message.starts_with("messages[2]: "), "{bad}: {e}");
            assert!(e.message.contains(detail), "{bad}: {e}");
            assert!(!e.message.contains(" at line "), "{bad}: {e}");
        }
        // A `messages` inside an entry is an unknown field, not a nested batch.
        let p = ok(r#"{"messages":[{"channel":"a","payload":1,"messages":5}]}"#);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn missing_field_and_bad_channel_in_single() {
        for (body, field) in [
            ("{}", "channel"),
            (r#"{"payload":1}"#, "channel"),
            (r#"{"channel":"a"}"#, "payload"),
        ] {
            let e = err(body);
            assert_eq!(e.code, "missing_field", "{body}");
            assert_eq!(e.message, format!("missing field `{field}`"));
        }
        let e = err(r#"{"channel":"has space","payload":1}"#);
        assert_eq!(e.code, "bad_channel");
        assert!(e.message.contains("ASCII letters"), "{}", e.message);
    }

    #[test]
    fn error_body() {
        let mut out = Vec::new();
        write_error_body("bad_json", "expected `,` \"here\"\n", &mut out);
        assert_eq!(
            to_value(&out),
            json!({"error":{"code":"bad_json","message":"expected `,` \"here\"\n"}})
        );
        let e = err(r#"{"messages":[{"channel":"\u0000","payload":1}]}"#);
        out.clear();
        write_error_body(e.code, &e.message, &mut out);
        assert_eq!(to_value(&out)["error"]["message"], e.message.as_str());
    }

    #[test]
    fn published_body() {
        let mut out = Vec::new();
        let p = Position {
            epoch: 1,
            offset: 9,
        };
        write_published_results(&[("a".into(), p), ("b".into(), p)], &mut out);
        assert_eq!(
            to_value(&out),
            json!({"published":2,"results":[
                {"channel":"a","offset":9,"epoch":"0000000000000001"},
                {"channel":"b","offset":9,"epoch":"0000000000000001"}]})
        );
    }

    #[test]
    fn history_and_presence_bodies() {
        let h = parse_history(
            br#"{"channel":"c","limit":3,"since":{"offset":2,"epoch":"0000000000000001"}}"#,
        )
        .unwrap();
        assert_eq!((h.channel.as_str(), h.limit), ("c", Some(3)));
        assert_eq!(
            h.since,
            Some(Since {
                offset: 2,
                epoch: 1
            })
        );
        assert_eq!(&*parse_presence(br#"{"channel":"c","x":1}"#).unwrap(), "c");
        for bad in [
            &br#"{"limit":1}"#[..],
            br#"{"channel":"a b"}"#,
            br#"{"channel":"c","limit":1.5}"#,
            b"[]",
        ] {
            assert!(
                parse_history(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn channels_body_sorted() {
        let mut out = Vec::new();
        write_channels_body(&[], &mut out);
        assert_eq!(out, br#"{"channels":[]}"#);

        out.clear();
        let channels = vec![
            ("zeta".to_string(), 1),
            ("alpha".to_string(), 3),
            ("Beta".to_string(), 0),
            ("alpha.2".to_string(), u64::MAX),
        ];
        write_channels_body(&channels, &mut out);
        assert_eq!(
            to_value(&out),
            json!({"channels":[
                {"name":"Beta","subscribers":0},
                {"name":"alpha","subscribers":3},
                {"name":"alpha.2","subscribers":u64::MAX},
                {"name":"zeta","subscribers":1},
            ]})
        );
    }

    #[test]
    fn api_keys() {
        assert!(key_matches("s3cret-key", Some("s3cret-key")));
        for wrong in [
            None,
            Some(""),
            Some("s3cret-ke"),
            Some("s3cret-key "),
            Some("s3cret-kez"),
            Some("S3cret-key"),
            Some("s3cret-keys3cret-key"),
        ] {
            assert!(!key_matches("s3cret-key", wrong), "{wrong:?}");
        }
        // An unset key matches nothing, not even an empty one.
        assert!(!key_matches("", Some("")));
        assert!(!key_matches("", None));
    }
}
