//! The `/ws` message protocol: typed JSON objects in WebSocket text frames.
//!
//! Client → server: `subscribe`, `unsubscribe`, `publish` (with a `payload`
//! of any JSON value) and `ping`, each with an optional `id` the reply
//! echoes. Server → client: `ack`, `error`, `pong` and `message`.
//!
//! Pure functions, no I/O. Parsing borrows from the frame: channel names are
//! `Cow`s (owned only when the client escaped characters in them) and a
//! payload is a [`RawValue`], the exact bytes the client sent, validated but
//! never re-encoded, so fan-out copies it once into the outgoing frame.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Unexpected, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::conn::SharedFrame;

pub use crate::hub::name::MAX_CHANNEL_LEN;

/// Checks a channel name (see [`crate::hub::name::check`]) as a protocol
/// error.
///
/// The error's `id` is `None`: [`parse_client`] fills in the request's.
pub fn validate_channel(name: &str) -> Result<(), ProtoError> {
    crate::hub::name::check(name).map_err(|m| ProtoError::new(ErrorCode::BadChannel, m, None))
}

/// One parsed client message, borrowing from the frame it came in.
#[derive(Debug)]
pub enum ClientMsg<'a> {
    /// Start receiving `message`s published on `channel`.
    Subscribe {
        /// The channel name (validated).
        channel: Cow<'a, str>,
        /// The request id, echoed in the answer.
        id: Option<u64>,
        /// Recover what was published after this point.
        since: Option<Since>,
        /// Put the presence list in the ack.
        presence: bool,
        /// Receive `join`/`leave` events.
        join_leave: bool,
    },
    /// Read the channel's history.
    History {
        /// The channel name (validated).
        channel: Cow<'a, str>,
        /// The request id, echoed in the answer.
        id: Option<u64>,
        /// Most publications to return (default: the server's cap).
        limit: Option<u64>,
        /// Only publications after this point.
        since: Option<Since>,
    },
    /// Who is subscribed to `channel`.
    Presence {
        /// The channel name (validated).
        channel: Cow<'a, str>,
        /// The request id, echoed in the answer.
        id: Option<u64>,
    },
    /// Stop receiving `message`s published on `channel`.
    Unsubscribe {
        /// The channel name (validated).
        channel: Cow<'a, str>,
        /// The request id, echoed in the answer.
        id: Option<u64>,
    },
    /// Send `payload` to every subscriber of `channel`.
    Publish {
        /// The channel name (validated).
        channel: Cow<'a, str>,
        /// The payload, exactly as sent (valid JSON).
        payload: &'a RawValue,
        /// The request id, echoed in the answer.
        id: Option<u64>,
    },
    /// A liveness check at the application level (answered with `pong`).
    Ping {
        /// The request id, echoed in the pong.
        id: Option<u64>,
    },
}

impl ClientMsg<'_> {
    /// The request id the reply must echo, whatever the message type.
    pub fn id(&self) -> Option<u64> {
        match *self {
            ClientMsg::Subscribe { id, .. }
            | ClientMsg::History { id, .. }
            | ClientMsg::Presence { id, .. }
            | ClientMsg::Unsubscribe { id, .. }
            | ClientMsg::Publish { id, .. }
            | ClientMsg::Ping { id } => id,
        }
    }
}

/// Why a request was refused, as the `code` field of an `error` reply:
/// stable machine-readable names clients can match on, unlike the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not a JSON object, or a field of the wrong JSON type.
    BadJson,
    /// A `type` the server does not know.
    UnknownType,
    /// A field the message type requires is absent.
    MissingField,
    /// A channel name outside the rules of [`validate_channel`].
    BadChannel,
    /// The connection's token does not grant this channel.
    Forbidden,
    /// The connection is at its subscription limit.
    TooManySubscriptions,
    /// `unsubscribe` from a channel the connection is not subscribed to.
    NotSubscribed,
    /// A binary frame: the protocol is JSON text only.
    BinaryUnsupported,
    /// `presence` on a channel whose options keep no presence.
    PresenceDisabled,
    /// `join_leave` on a channel whose options have no join/leave events.
    JoinLeaveDisabled,
    /// `history` on a channel whose options keep no history.
    HistoryDisabled,
    /// A history `limit` over `--history-max-limit`.
    BadLimit,
    /// A history `since` from another epoch: that history is gone.
    EpochMismatch,
    /// `publish` on a channel only the API may publish to.
    PublishDisabled,
    /// The broker (Redis) is unreachable or refused the request: nothing
    /// was stored or acked; retry later.
    Unavailable,
}

impl ErrorCode {
    /// The wire name of the code (`snake_case`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::BinaryUnsupported => "binary_unsupported",
            ErrorCode::PresenceDisabled => "presence_disabled",
            ErrorCode::JoinLeaveDisabled => "join_leave_disabled",
            ErrorCode::HistoryDisabled => "history_disabled",
            ErrorCode::BadLimit => "bad_limit",
            ErrorCode::EpochMismatch => "epoch_mismatch",
            ErrorCode::PublishDisabled => "publish_disabled",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: everything [`write_error`] needs for the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    /// The machine-readable error code.
    pub code: ErrorCode,
    /// Human-readable detail; may quote the client's input (it is escaped
    /// when written).
    pub message: String,
    /// The request's `id`, when it could be read, so the client can match
    /// the error to its request.
    pub id: Option<u64>,
}

impl ProtoError {
    /// A refusal with its reply fields.
    pub fn new(code: ErrorCode, message: impl Into<String>, id: Option<u64>) -> ProtoError {
        ProtoError {
            code,
            message: message.into(),
            id,
        }
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ProtoError {}

/// Parses one text message; channel names are validated here.
///
/// Unknown fields are ignored (newer clients may send more), duplicate known
/// fields are refused (two `channel`s would be ambiguous). On error,
/// [`ProtoError::id`] carries the request's id when it could be read, so
/// the error reply can name it.
pub fn parse_client<'a>(text: &'a [u8]) -> Result<ClientMsg<'a>, ProtoError> {
    let wire: Wire<'a> = match serde_json::from_slice(text) {
        Ok(wire) => wire,
        Err(e) => {
            return Err(ProtoError::new(
                ErrorCode::BadJson,
                e.to_string(),
                recover_id(text),
            ))
        }
    };
    let id = wire.id;
    let missing = |field: &str| {
        ProtoError::new(
            ErrorCode::MissingField,
            format!("missing field `{field}`"),
            id,
        )
    };
    let channel = |c: Option<Cow<'a, str>>| -> Result<Cow<'a, str>, ProtoError> {
        let c = c.ok_or_else(|| missing("channel"))?;
        validate_channel(&c).map_err(|e| ProtoError { id, ..e })?;
        Ok(c)
    };
    let kind = wire.kind.ok_or_else(|| missing("type"))?;
    match &*kind {
        "subscribe" => Ok(ClientMsg::Subscribe {
            channel: channel(wire.channel)?,
            id,
            since: wire.since,
            presence: wire.presence.unwrap_or(false),
            join_leave: wire.join_leave.unwrap_or(false),
        }),
        "history" => Ok(ClientMsg::History {
            channel: channel(wire.channel)?,
            id,
            limit: wire.limit,
            since: wire.since,
        }),
        "presence" => Ok(ClientMsg::Presence {
            channel: channel(wire.channel)?,
            id,
        }),
        "unsubscribe" => Ok(ClientMsg::Unsubscribe {
            channel: channel(wire.channel)?,
            id,
        }),
        "publish" => {
            let payload = wire.payload.ok_or_else(|| missing("payload"))?;
            Ok(ClientMsg::Publish {
                channel: channel(wire.channel)?,
                payload,
                id,
            })
        }
        "ping" => Ok(ClientMsg::Ping { id }),
        _ => Err(ProtoError::new(
            ErrorCode::UnknownType,
            "unknown `type`: expected subscribe, unsubscribe, publish, history, presence or ping",
            id,
        )),
    }
}

/// The fields of any client message, all optional: which ones are required
/// depends on `type`, checked after parsing so the errors can say so.
#[derive(Default)]
struct Wire<'a> {
    kind: Option<Cow<'a, str>>,
    channel: Option<Cow<'a, str>>,
    payload: Option<&'a RawValue>,
    id: Option<u64>,
    since: Option<Since>,
    presence: Option<bool>,
    join_leave: Option<bool>,
    limit: Option<u64>,
}

/// A point in a channel's stream the client sent back (`since`): the
/// offset of the last publication it has and the epoch it came from, the
/// engine's own [`Position`]. An epoch this server never issued is kept as
/// 0, which no stream has.
pub type Since = Position;

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Key {
    Type,
    Channel,
    Payload,
    Id,
    Since,
    Presence,
    #[serde(rename = "join_leave")]
    JoinLeave,
    Limit,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Wire<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(WireVisitor)
    }
}

struct WireVisitor;

impl<'de> Visitor<'de> for WireVisitor {
    type Value = Wire<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message object such as {\"type\":\"ping\"}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Wire<'de>, A::Error> {
        let mut w = Wire::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Type => set_once(&mut w.kind, map.next_value_seed(Text("type"))?, "type")?,
                Key::Channel => set_once(
                    &mut w.channel,
                    map.next_value_seed(Text("channel"))?,
                    "channel",
                )?,
                Key::Payload => set_once(&mut w.payload, map.next_value()?, "payload")?,
                Key::Id => {
                    if let Some(id) = map.next_value_seed(IdSeed)? {
                        set_once(&mut w.id, id, "id")?;
                    }
                }
                Key::Since => set_once(&mut w.since, map.next_value_seed(SinceSeed)?, "since")?,
                Key::Presence => set_once(&mut w.presence, map.next_value()?, "presence")?,
                Key::JoinLeave => set_once(&mut w.join_leave, map.next_value()?, "join_leave")?,
                Key::Limit => {
                    set_once(&mut w.limit, map.next_value_seed(Count("limit"))?, "limit")?
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(w)
    }
}

/// A non-negative integer field, named in the error when it is anything
/// else (a float, a negative number, a string).
pub(crate) struct Count(pub(crate) &'static str);

impl<'de> DeserializeSeed<'de> for Count {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a non-negative integer for `{}`", self.0)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }
}

/// `since`: `{"offset":O,"epoch":"E"}`, both required.
pub(crate) struct SinceSeed;

impl<'de> DeserializeSeed<'de> for SinceSeed {
    type Value = Since;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Since, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SinceSeed {
    type Value = Since;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object {\"offset\":N,\"epoch\":\"...\"} for `since`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Since, A::Error> {
        let (mut offset, mut epoch) = (None, None);
        while let Some(k) = map.next_key::<Cow<'de, str>>()? {
            match &*k {
                "offset" => set_once(
                    &mut offset,
                    map.next_value_seed(Count("since.offset"))?,
                    "offset",
                )?,
                "epoch" => {
                    let e = map.next_value_seed(Text("since.epoch"))?;
                    set_once(
                        &mut epoch,
                        crate::hub::wire::parse_epoch(&e).unwrap_or(0),
                        "epoch",
                    )?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match (offset, epoch) {
            (Some(offset), Some(epoch)) => Ok(Since { offset, epoch }),
            (None, _) => Err(de::Error::custom("`since` needs an `offset`")),
            (_, None) => Err(de::Error::custom("`since` needs an `epoch`")),
        }
    }
}

/// Stores a field's value, refusing a second occurrence of the field.
pub(crate) fn set_once<T, E: de::Error>(
    slot: &mut Option<T>,
    value: T,
    field: &'static str,
) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(field));
    }
    *slot = Some(value);
    Ok(())
}

/// A string field, borrowed from the input unless it contained escapes; the
/// field name makes a type error say which field was wrong.
pub(crate) struct Text(pub(crate) &'static str);

impl<'de> DeserializeSeed<'de> for Text {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a string for `{}`", self.0)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// An `id`: a non-negative integer; `null` counts as absent.
struct IdSeed;

impl<'de> DeserializeSeed<'de> for IdSeed {
    type Value = Option<u64>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IdSeed {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative integer for `id`")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        u64::try_from(v)
            .map(Some)
            .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Reads just the `id` of a message the full parse refused, so the error
/// reply can still name the request.
///
/// The id is recorded the moment it is read, before the parser reaches the
/// fault: `{"id":7,"channel":` (truncated) still yields 7, and so does a
/// message whose `channel` has the wrong type, since other fields are
/// skipped without being interpreted.
fn recover_id(text: &[u8]) -> Option<u64> {
    let found = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(text);
    // The result is irrelevant: only what the probe saw on the way counts.
    let _ = IdProbe(&found).deserialize(&mut de);
    found.get()
}

struct IdProbe<'c>(&'c Cell<Option<u64>>);

impl<'de> DeserializeSeed<'de> for IdProbe<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for IdProbe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            if let Key::Id = key {
                self.0.set(map.next_value_seed(IdSeed)?);
                return Ok(());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// Appends `{"type":"ack","id":N}` (no `id` when the request had none): the
/// request took effect.
pub fn write_ack(id: Option<u64>, out: &mut Vec<u8>) {
    write_reply(b"{\"type\":\"ack\"", id, out);
    out.push(b'}');
}

/// Appends `,"epoch":"E","offset":T`.
fn write_position(p: Position, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"epoch\":");
    wire::write_epoch(p.epoch, out);
    out.extend_from_slice(b",\"offset\":");
    write_u64(p.offset, out);
}

/// Appends `{"type":"ack","id":N,"epoch":"E","offset":T}`: a publication's
/// place, or a subscribe's starting point.
pub fn write_position_ack(id: Option<u64>, p: Position, out: &mut Vec<u8>) {
    write_reply(b"{\"type\":\"ack\"", id, out);
    write_position(p, out);
    out.push(b'}');
}

/// Appends a subscribe's ack: the stream's position, whether `since` was
/// recovered (when given), the presence list (when asked for).
pub fn write_subscribe_ack(
    id: Option<u64>,
    p: Position,
    recovered: Option<bool>,
    presence: Option<&PresenceList>,
    out: &mut Vec<u8>,
) {
    write_reply(b"{\"type\":\"ack\"", id, out);
    write_position(p, out);
    if let Some(r) = recovered {
        out.extend_from_slice(if r {
            b",\"recovered\":true"
        } else {
            b",\"recovered\":false"
        });
    }
    if let Some(list) = presence {
        out.extend_from_slice(b",\"presence\":");
        write_presence_body(list, out);
    }
    out.push(b'}');
}

/// Appends `{"count":N,"clients":[{"client":..,"user":..},...]}`.
pub fn write_presence_body(list: &PresenceList, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{");
    write_presence_fields(list, out);
    out.push(b'}');
}

fn write_presence_fields(list: &PresenceList, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"count\":");
    write_u64(list.count, out);
    out.extend_from_slice(b",\"clients\":[");
    for (i, m) in list.clients.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        wire::write_presence_entry(&m.client, m.user.as_deref(), out);
    }
    out.push(b']');
}

/// Appends a presence request's ack: `{"type":"ack","id":K,"count":N,"clients":[...]}`.
pub fn write_presence_ack(id: Option<u64>, list: &PresenceList, out: &mut Vec<u8>) {
    write_reply(b"{\"type\":\"ack\"", id, out);
    out.push(b',');
    write_presence_fields(list, out);
    out.push(b'}');
}

/// Appends `"publications":[{"offset":O,"payload":P},...]` from history
/// frames (payloads copied out of the `message` frames).
pub fn write_publications(publications: &[(u64, SharedFrame, u32)], out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"publications\":[");
    for (i, (offset, frame, at)) in publications.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"offset\":");
        write_u64(*offset, out);
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(wire::payload_of(frame, *at));
        out.push(b'}');
    }
    out.push(b']');
}

/// Appends a history request's ack:
/// `{"type":"ack","id":K,"epoch":"E","offset":T,"publications":[...]}`.
pub fn write_history_ack(
    id: Option<u64>,
    p: Position,
    publications: &[(u64, SharedFrame, u32)],
    out: &mut Vec<u8>,
) {
    write_reply(b"{\"type\":\"ack\"", id, out);
    write_position(p, out);
    out.push(b',');
    write_publications(publications, out);
    out.push(b'}');
}

/// Appends `{"type":"welcome","client":"ID","core":N,"ping_ms":P}`, the
/// first message on every `/ws` connection.
pub fn write_welcome(client: &str, core: usize, ping_ms: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"type\":\"welcome\",\"client\":");
    write_json_string(client, out);
    out.extend_from_slice(b",\"core\":");
    write_u64(core as u64, out);
    out.extend_from_slice(b",\"ping_ms\":");
    write_u64(ping_ms, out);
    out.push(b'}');
}

/// Appends `{"type":"pong","id":N}` (no `id` when the ping had none).
pub fn write_pong(id: Option<u64>, out: &mut Vec<u8>) {
    write_reply(b"{\"type\":\"pong\"", id, out);
    out.push(b'}');
}

/// Appends `{"type":"error","id":N,"code":"...","message":"..."}` (no `id`
/// when the request had none or it could not be read). The message is
/// JSON-escaped, so it may quote client input.
pub fn write_error(id: Option<u64>, code: ErrorCode, message: &str, out: &mut Vec<u8>) {
    write_reply(b"{\"type\":\"error\"", id, out);
    out.extend_from_slice(b",\"code\":\"");
    out.extend_from_slice(code.as_str().as_bytes());
    out.extend_from_slice(b"\",\"message\":");
    write_json_string(message, out);
    out.push(b'}');
}

fn write_reply(head: &[u8], id: Option<u64>, out: &mut Vec<u8>) {
    out.extend_from_slice(head);
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        write_u64(id, out);
    }
}

pub use crate::hub::wire::write_json_string;
pub(crate) use crate::hub::wire::write_u64;
use crate::hub::{wire, Position, PresenceList};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(text: &str) -> Result<ClientMsg<'_>, ProtoError> {
        parse_client(text.as_bytes())
    }

    fn err(text: &str) -> ProtoError {
        match parse(text) {
            Ok(m) => panic!("{text} parsed as {m:?}"),
            Err(e) => e,
        }
    }

    fn to_value(out: &[u8]) -> Value {
        serde_json::from_slice(out).unwrap_or_else(|e| {
            panic!("{e}: {:?}", String::from_utf8_lossy(out));
        })
    }

    #[test]
    fn subscribe_with_and_without_id() {
        match parse(r#"{"type":"subscribe","channel":"chat.room1","id":7}"#).unwrap() {
            ClientMsg::Subscribe { channel, id, .. } => {
                assert_eq!(channel, "chat.room1");
                assert!(matches!(channel, Cow::Borrowed(_)), "zero-copy");
                assert_eq!(id, Some(7));
            }
            m => panic!("{m:?}"),
        }
        match parse(r#"{"channel":"a","type":"subscribe"}"#).unwrap() {
            ClientMsg::Subscribe { channel, id, .. } => {
                assert_eq!(channel, "a");
                assert_eq!(id, None);
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn unsubscribe_with_and_without_id() {
        match parse(r#"{"type":"unsubscribe","channel":"x","id":0}"#).unwrap() {
            ClientMsg::Unsubscribe { channel, id } => {
                assert_eq!(channel, "x");
                assert_eq!(id, Some(0));
            }
            m => panic!("{m:?}"),
        }
        match parse(r#" { "type" : "unsubscribe" , "channel" : "x" } "#).unwrap() {
            ClientMsg::Unsubscribe { id, .. } => assert_eq!(id, None),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn ping_with_and_without_id() {
        let m = parse(r#"{"type":"ping","id":18446744073709551615}"#).unwrap();
        assert!(matches!(m, ClientMsg::Ping { id: Some(u64::MAX) }));
        assert_eq!(m.id(), Some(u64::MAX));
        assert!(matches!(
            parse(r#"{"type":"ping"}"#).unwrap(),
            ClientMsg::Ping { id: None }
        ));
        // `null` is the same as no id.
        assert!(matches!(
            parse(r#"{"type":"ping","id":null}"#).unwrap(),
            ClientMsg::Ping { id: None }
        ));
    }

    #[test]
    fn publish_payload_is_byte_exact() {
        for payload in [
            r#"{"b": [1, 2, {"c": null}],   "a":"x"}"#,
            r#"[1,"two",3.0,  true,false,null]"#,
            r#""quote \" backslash \\ unicode \u00e9 \ud83d\ude00 newline \n""#,
            "\"raw é 😀\"",
            "-12.5e+3",
            "0",
            "18446744073709551616123",
            "null",
            "true",
            "{}",
            "[]",
        ] {
            let text = format!(r#"{{"type":"publish","channel":"c","payload":{payload},"id":3}}"#);
            match parse(&text).unwrap() {
                ClientMsg::Publish {
                    channel,
                    payload: p,
                    id,
                } => {
                    assert_eq!(channel, "c");
                    assert_eq!(p.get(), payload);
                    assert_eq!(id, Some(3));
                }
                m => panic!("{m:?}"),
            }
        }
    }

    #[test]
    fn publish_without_id() {
        match parse(r#"{"type":"publish","payload":{"k":1},"channel":"c"}"#).unwrap() {
            ClientMsg::Publish { payload, id, .. } => {
                assert_eq!(payload.get(), r#"{"k":1}"#);
                assert_eq!(id, None);
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn escaped_channel_name_is_unescaped_then_validated() {
        match parse(r#"{"type":"subscribe","channel":"chat\/room\u0031"}"#).unwrap() {
            ClientMsg::Subscribe { channel, .. } => {
                assert_eq!(channel, "chat/room1");
                assert!(matches!(channel, Cow::Owned(_)));
            }
            m => panic!("{m:?}"),
        }
        // An escape that unescapes to a forbidden character is still refused.
        let e = err(r#"{"type":"subscribe","channel":"a\"b","id":1}"#);
        assert_eq!((e.code, e.id), (ErrorCode::BadChannel, Some(1)));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let m = parse(
            r#"{"v":2,"type":"subscribe","extra":{"nested":[1,2]},"channel":"a","id":5,"z":null}"#,
        )
        .unwrap();
        assert!(matches!(m, ClientMsg::Subscribe { id: Some(5), .. }));
        // A payload on a subscribe is just another field it does not use.
        assert!(parse(r#"{"type":"subscribe","channel":"a","payload":1}"#).is_ok());
    }

    #[test]
    fn validate_channel_rules() {
        for ok in [
            "a",
            "Z",
            "0",
            "chat.room-1_x:y/z@host",
            &"x".repeat(MAX_CHANNEL_LEN),
        ] {
            assert_eq!(validate_channel(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            &"x".repeat(MAX_CHANNEL_LEN + 1),
            "chat.*",
            "*",
            "a b",
            "a\"b",
            "a\\b",
            "a\nb",
            "a\0",
            "é",
            "a,b",
            "a#b",
            "a+b",
        ] {
            let e = validate_channel(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadChannel, "{bad:?}");
            assert!(
                e.message.contains("1 to 128 ASCII letters"),
                "{}",
                e.message
            );
        }
        let e = validate_channel("a*").unwrap_err();
        assert!(e.message.starts_with("'*' is not allowed"), "{}", e.message);
        let e = validate_channel(&"x".repeat(200)).unwrap_err();
        assert!(e.message.contains("200 bytes"), "{}", e.message);
    }

    #[test]
    fn bad_json() {
        for (text, id) in [
            ("", None),
            ("not json", None),
            (r#"{"type":"ping""#, None),
            (r#"{"type":"ping"} trailing"#, None),
            (r#"["ping"]"#, None),
            (r#""ping""#, None),
            ("null", None),
            ("42", None),
            (r#"{"type":5,"id":1}"#, Some(1)),
            (r#"{"type":"subscribe","channel":7,"id":2}"#, Some(2)),
            (r#"{"type":"subscribe","channel":null,"id":2}"#, Some(2)),
            (r#"{"type":"ping","id":-1}"#, None),
            (r#"{"type":"ping","id":1.5}"#, None),
            (r#"{"type":"ping","id":"1"}"#, None),
            (r#"{"type":"ping","id":1e3}"#, None),
            (r#"{"type":"ping","type":"ping","id":3}"#, Some(3)),
            (
                r#"{"type":"publish","channel":"c","payload":[1,2,"id":4}"#,
                None,
            ),
        ] {
            let e = err(text);
            assert_eq!(e.code, ErrorCode::BadJson, "{text}: {e:?}");
            assert_eq!(e.id, id, "{text}: {e:?}");
        }
    }

    #[test]
    fn bad_json_messages_name_the_problem() {
        let e = err(r#"{"type":"subscribe","channel":7}"#);
        assert!(
            e.message.contains("expected a string for `channel`"),
            "{}",
            e.message
        );
        let e = err(r#"{"type":"ping","id":-1}"#);
        assert!(
            e.message
                .contains("expected a non-negative integer for `id`"),
            "{}",
            e.message
        );
        let e = err(r#"{"type":"ping","type":"ping"}"#);
        assert!(
            e.message.contains("duplicate field `type`"),
            "{}",
            e.message
        );
        let e = err(r#"["ping"]"#);
        assert!(
            e.message.contains("expected a message object"),
            "{}",
            e.message
        );
    }

    #[test]
    fn id_recovery() {
        // The id comes before the fault in the text...
        assert_eq!(err(r#"{"id":9,"type":"ping""#).id, Some(9));
        assert_eq!(err(r#"{"id":9,"type":"subscribe","channel":"#).id, Some(9));
        // ...or after a field of the wrong type, which the probe skips.
        assert_eq!(
            err(r#"{"channel":{"x":1},"type":"publish","id":10}"#).id,
            Some(10)
        );
        assert_eq!(err(r#"{"type":["a"],"id":11}"#).id, Some(11));
        // Nothing to recover when the id itself is the problem or never read.
        assert_eq!(err(r#"{"id":"x","type":"ping"}"#).id, None);
        assert_eq!(err(r#"{"type":"ping","#).id, None);
        // Semantic errors always carry the parsed id.
        assert_eq!(err(r#"{"id":12}"#).id, Some(12));
        assert_eq!(err(r#"{"type":"nope","id":13}"#).id, Some(13));
    }

    #[test]
    fn missing_field() {
        for (text, field) in [
            (r#"{}"#, "type"),
            (r#"{"id":1,"channel":"a"}"#, "type"),
            (r#"{"type":"subscribe"}"#, "channel"),
            (r#"{"type":"unsubscribe","id":1}"#, "channel"),
            (r#"{"type":"publish","channel":"a"}"#, "payload"),
            (r#"{"type":"publish","payload":1}"#, "channel"),
        ] {
            let e = err(text);
            assert_eq!(e.code, ErrorCode::MissingField, "{text}");
            assert_eq!(e.message, format!("missing field `{field}`"), "{text}");
        }
        // `"payload":null` is a payload, not a missing one.
        match parse(r#"{"type":"publish","channel":"a","payload":null}"#).unwrap() {
            ClientMsg::Publish { payload, .. } => assert_eq!(payload.get(), "null"),
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn unknown_type() {
        for t in ["Subscribe", "", "message", "ack", "pub"] {
            let text = format!(r#"{{"type":"{t}","channel":"a","id":4}}"#);
            let e = err(&text);
            assert_eq!((e.code, e.id), (ErrorCode::UnknownType, Some(4)), "{t}");
        }
    }

    #[test]
    fn bad_channel() {
        for t in ["subscribe", "unsubscribe", "publish"] {
            let text = format!(r#"{{"type":"{t}","channel":"a*","payload":1,"id":6}}"#);
            let e = err(&text);
            assert_eq!((e.code, e.id), (ErrorCode::BadChannel, Some(6)), "{t}");
        }
        let e = err(r#"{"type":"subscribe","channel":""}"#);
        assert_eq!((e.code, e.id), (ErrorCode::BadChannel, None));
    }

    #[test]
    fn error_codes_have_stable_names() {
        let all = [
            (ErrorCode::BadJson, "bad_json"),
            (ErrorCode::UnknownType, "unknown_type"),
            (ErrorCode::MissingField, "missing_field"),
            (ErrorCode::BadChannel, "bad_channel"),
            (ErrorCode::Forbidden, "forbidden"),
            (ErrorCode::TooManySubscriptions, "too_many_subscriptions"),
            (ErrorCode::NotSubscribed, "not_subscribed"),
            (ErrorCode::BinaryUnsupported, "binary_unsupported"),
        ];
        for (code, name) in all {
            assert_eq!(code.as_str(), name);
            assert_eq!(code.to_string(), name);
            let mut out = Vec::new();
            write_error(Some(1), code, "m", &mut out);
            assert_eq!(to_value(&out)["code"], name);
        }
    }

    #[test]
    fn ack_and_pong() {
        let mut out = Vec::new();
        write_ack(Some(42), &mut out);
        assert_eq!(to_value(&out), json!({"type":"ack","id":42}));
        out.clear();
        write_ack(None, &mut out);
        assert_eq!(out, br#"{"type":"ack"}"#);
        out.clear();
        write_pong(Some(u64::MAX), &mut out);
        assert_eq!(to_value(&out), json!({"type":"pong","id":u64::MAX}));
        out.clear();
        write_pong(None, &mut out);
        assert_eq!(to_value(&out), json!({"type":"pong"}));
        // Appends rather than overwrites.
        write_ack(Some(0), &mut out);
        assert_eq!(out, br#"{"type":"pong"}{"type":"ack","id":0}"#);
    }

    #[test]
    fn error_reply_escapes_the_message() {
        let message = "quote \" backslash \\ newline \n tab \t nul \0 esc \x1b del \x7f é 😀";
        let mut out = Vec::new();
        write_error(Some(7), ErrorCode::BadChannel, message, &mut out);
        assert_eq!(
            to_value(&out),
            json!({"type":"error","id":7,"code":"bad_channel","message":message})
        );
        out.clear();
        write_error(None, ErrorCode::BadJson, "", &mut out);
        assert_eq!(
            to_value(&out),
            json!({"type":"error","code":"bad_json","message":""})
        );
        // A parse error's own message round-trips too.
        let e = err("{\"type\":\"\\q\"}");
        out.clear();
        write_error(e.id, e.code, &e.message, &mut out);
        assert_eq!(to_value(&out)["message"], e.message.as_str());
    }

    #[test]
    fn json_string_escaping() {
        let all: String = (0u8..0x80).map(char::from).collect();
        let mut out = Vec::new();
        write_json_string(&all, &mut out);
        assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), all);
        out.clear();
        write_json_string("\u{1}\u{1f}", &mut out);
        assert_eq!(out, br#""\u0001\u001f""#);
    }

    #[test]
    fn integers() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            write_u64(n, &mut out);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn stream_requests_parse() {
        let text = r#"{"type":"subscribe","channel":"c","since":{"epoch":"00000000000000ff","offset":41},"presence":true,"join_leave":true,"id":3}"#;
        match parse(text).unwrap() {
            ClientMsg::Subscribe {
                since,
                presence,
                join_leave,
                id,
                ..
            } => {
                assert_eq!(
                    since,
                    Some(Since {
                        offset: 41,
                        epoch: 255
                    })
                );
                assert!(presence && join_leave);
                assert_eq!(id, Some(3));
            }
            m => panic!("{m:?}"),
        }
        // An epoch this server never issued parses, and matches nothing.
        let text = r#"{"type":"subscribe","channel":"c","since":{"offset":1,"epoch":"x"}}"#;
        assert!(matches!(
            parse(text).unwrap(),
            ClientMsg::Subscribe {
                since: Some(Since { epoch: 0, .. }),
                ..
            }
        ));
        match parse(r#"{"type":"history","channel":"c","limit":5,"id":1}"#).unwrap() {
            ClientMsg::History { limit, since, .. } => assert_eq!((limit, since), (Some(5), None)),
            m => panic!("{m:?}"),
        }
        assert!(matches!(
            parse(r#"{"type":"presence","channel":"c"}"#).unwrap(),
            ClientMsg::Presence { id: None, .. }
        ));
        for (bad, says) in [
            (
                r#"{"type":"subscribe","channel":"c","since":{"offset":1.5,"epoch":"e"},"id":2}"#,
                "since.offset",
            ),
            (
                r#"{"type":"subscribe","channel":"c","since":{"offset":-1,"epoch":"e"}}"#,
                "since.offset",
            ),
            (
                r#"{"type":"subscribe","channel":"c","since":{"offset":"1","epoch":"e"}}"#,
                "since.offset",
            ),
            (
                r#"{"type":"subscribe","channel":"c","since":{"epoch":"e"}}"#,
                "offset",
            ),
            (r#"{"type":"subscribe","channel":"c","since":5}"#, "since"),
            (
                r#"{"type":"subscribe","channel":"c","since":{"offset":1,"epoch":7}}"#,
                "since.epoch",
            ),
            (r#"{"type":"history","channel":"c","limit":1e12}"#, "limit"),
            (r#"{"type":"history","channel":"c","limit":-3}"#, "limit"),
            (
                r#"{"type":"subscribe","channel":"c","presence":"yes"}"#,
                "bool",
            ),
        ] {
            let e = err(bad);
            assert_eq!(e.code, ErrorCode::BadJson, "{bad}");
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
        assert_eq!(
            err(r#"{"type":"subscribe","channel":"c","since":{"offset":1.5,"epoch":"e"},"id":2}"#)
                .id,
            Some(2)
        );
    }

    #[test]
    fn stream_replies_are_json() {
        let p = Position {
            epoch: 0xab,
            offset: 7,
        };
        let mut v = Vec::new();
        write_subscribe_ack(Some(1), p, Some(true), None, &mut v);
        assert_eq!(
            to_value(&v),
            json!({"type":"ack","id":1,"epoch":"00000000000000ab","offset":7,"recovered":true})
        );
        let list = PresenceList {
            count: 3,
            clients: vec![crate::hub::Member {
                client: "a-0-1".into(),
                user: Some("u\"1".into()),
            }],
        };
        v.clear();
        write_presence_ack(Some(2), &list, &mut v);
        assert_eq!(
            to_value(&v),
            json!({"type":"ack","id":2,"count":3,"clients":[{"client":"a-0-1","user":"u\"1"}]})
        );
        let (f1, at1) = crate::hub::wire::message_frame("c", 6, br#"{"x":1}"#);
        let (f2, at2) = crate::hub::wire::message_frame("c", 7, b"[2]");
        v.clear();
        write_history_ack(None, p, &[(6, f1, at1), (7, f2, at2)], &mut v);
        assert_eq!(
            to_value(&v),
            json!({"type":"ack","epoch":"00000000000000ab","offset":7,
                   "publications":[{"offset":6,"payload":{"x":1}},{"offset":7,"payload":[2]}]})
        );
        v.clear();
        write_welcome("n-1-2", 1, 30000, &mut v);
        assert_eq!(
            to_value(&v),
            json!({"type":"welcome","client":"n-1-2","core":1,"ping_ms":30000})
        );
    }
}
