//! The oracles behind both the property tests (`tests/properties.rs`) and
//! the cargo-fuzz targets (`fuzz/fuzz_targets/`, which include this file):
//! each `check_*` takes any input and panics when an invariant breaks.
//!
//! - [`check_handshake`]: `parse_http` / `parse_request` never panic, agree
//!   with each other, keep every slice inside the buffer, and give the same
//!   answer however the request is split across reads.
//! - [`check_frames`]: a [`Session`] reports exactly the same events for a
//!   byte stream fed whole, in any chunking, with or without a handler that
//!   copies payloads through `copy_masked`, and the same (normalised) events
//!   as [`reference_session`], a plain reimplementation of RFC 6455's rules.
//! - [`check_ws_json`]: `parse_client` and `parse_publish` never panic and
//!   agree with a prediction from the message parsed as a `serde_json::Value`
//!   (the stream fields too: `since`, `presence`, `join_leave`, `limit`);
//!   accepted payloads are valid JSON (checked by [`is_json`], independent of
//!   serde_json) and carry the value the client sent.
// Included by the property tests and the fuzz targets alike; `pub` is how
// they reach the oracles, not an API.
#![allow(unreachable_pub)]
#![allow(dead_code)]

use ringcast::http::{self, Credentials};
use ringcast::internals::{api, protocol, Route};
use ringcast::ws::frame::{self, OpCode};
use ringcast::ws::handshake::{self, Parsed, Progress, Target};
use ringcast::ws::{CloseCode, Handler, Limits, MessageKind, Session, State};
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

// ---------------------------------------------------------------- handshake

/// `(max_head, max_body)` pairs the handshake target picks from: the
/// server's defaults and small ones that put the limits within reach.
pub const HTTP_LIMITS: [(usize, usize); 4] = [(8192, 1024), (64, 16), (300, 0), (4096, 65536)];

type Http<'a> = Result<Progress<'a, Route, ringcast::internals::Resource>, http::Refusal>;

fn parse(buf: &[u8], max_head: usize, max_body: usize) -> Http<'_> {
    handshake::parse_http(buf, max_head, max_body, Route::target)
}

/// Whether `s` lies inside `buf` (borrowed from it, not copied).
fn inside(buf: &[u8], s: &[u8]) -> bool {
    let (b, p) = (buf.as_ptr() as usize, s.as_ptr() as usize);
    p >= b && p + s.len() <= b + buf.len()
}

fn creds_inside(buf: &[u8], c: &Credentials<'_>) -> bool {
    let origin = match c.origin {
        http::Origin::Value(v) => Some(v),
        http::Origin::Absent | http::Origin::Malformed => None,
    };
    [origin, c.bearer, c.query_token, c.api_key]
        .into_iter()
        .flatten()
        .all(|s| !s.is_empty() && inside(buf, s.as_bytes()))
}

/// Where a request stands, without borrows, to compare outcomes of
/// different buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    Partial,
    Awaiting(String),
    Done(String),
    Refused(u16),
}

fn stage(r: &Http<'_>) -> Stage {
    match r {
        Ok(Progress::Partial) => Stage::Partial,
        Ok(Progress::AwaitingBody {
            continue_expected,
            resource,
            method,
            creds,
        }) => Stage::Awaiting(format!(
            "{continue_expected} {resource:?} {method:?} {creds:?}"
        )),
        Ok(Progress::Done(p)) => Stage::Done(format!("{p:?}")),
        Err(r) => Stage::Refused(r.status),
    }
}

/// Checks one request buffer (see the module docs).
pub fn check_handshake(buf: &[u8], max_head: usize, max_body: usize) {
    let full = parse(buf, max_head, max_body);
    // Where the head ends, when it is complete and accepted.
    let mut head_end = None;
    match &full {
        Err(r) => {
            assert!((400..=599).contains(&r.status), "{r:?}");
            assert!(!r.reason.is_empty());
            let mut out = Vec::new();
            r.write_response(&mut out);
            let line = format!("HTTP/1.1 {} ", r.status);
            assert!(out.starts_with(line.as_bytes()));
        }
        Ok(Progress::Partial) => assert!(buf.len() < max_head),
        Ok(Progress::AwaitingBody { creds, .. }) => assert!(creds_inside(buf, creds)),
        Ok(Progress::Done(Parsed::Upgrade { upgrade, creds })) => {
            let n = upgrade.head_len;
            assert!(n <= buf.len() && n <= max_head, "head_len {n}");
            assert!(buf[..n].ends_with(b"\n"));
            assert!(creds_inside(&buf[..n], creds));
            assert!(upgrade.accept.iter().all(u8::is_ascii_graphic));
            let mut out = Vec::new();
            upgrade.write_response(upgrade.deflate.as_ref(), b"", &mut out);
            assert!(out.starts_with(b"HTTP/1.1 101 ") && out.ends_with(b"\r\n\r\n"));
            head_end = Some(n);
        }
        Ok(Progress::Done(Parsed::Http {
            head_len,
            body,
            creds,
            ..
        })) => {
            let n = *head_len;
            assert!(n <= max_head && n + body.len() <= buf.len());
            assert!(buf[..n].ends_with(b"\n"));
            assert!(body.len() <= max_body);
            assert_eq!(body.as_ptr() as usize, buf.as_ptr() as usize + n);
            assert!(creds_inside(&buf[..n], creds));
            head_end = Some(n);
        }
    }

    // The head limit at and around this buffer's length: a head still
    // incomplete at max_head bytes is refused, and a larger limit never
    // turns an answer into a refusal or another answer.
    let mut accepted: Option<Stage> = None;
    for m in [
        buf.len().saturating_sub(1),
        buf.len(),
        buf.len() + 1,
        1 << 20,
    ] {
        let s = stage(&parse(buf, m, max_body));
        if s == Stage::Partial {
            assert!(buf.len() < m, "Partial at max_head {m}");
        }
        match (&accepted, &s) {
            (Some(a), s) => assert_eq!(a, s, "max_head {m}"),
            (None, Stage::Refused(_)) => {}
            (None, s) => accepted = Some(s.clone()),
        }
    }

    // The upgrade-only parser agrees with parse_http when every path is a
    // WebSocket endpoint.
    let ws_only = handshake::parse_http(buf, max_head, max_body, |p| {
        Some(Target::<String, ()>::WebSocket(p.to_owned()))
    });
    let plain = handshake::parse_request(buf, max_head, |p| Some(p.to_owned()));
    match (&ws_only, &plain) {
        (Ok(Progress::Partial), Ok(None)) => {}
        (Err(a), Err(b)) => assert_eq!(a, b),
        (Ok(Progress::Done(Parsed::Upgrade { upgrade, .. })), Ok(Some(up))) => {
            assert_eq!(upgrade, up)
        }
        other => panic!("parse_http and parse_request disagree: {other:?}"),
    }

    // Reads may split a request anywhere: the server acts on the first
    // answer that is not Partial (a refusal, or a Done), so every prefix
    // must lead to the same answer as the whole buffer, and the stages only
    // move forward (Partial, then AwaitingBody, then Done).
    let cuts: Vec<usize> = if buf.len() <= 300 {
        (0..buf.len()).collect()
    } else {
        let step = buf.len() / 64;
        (0..buf.len())
            .step_by(step)
            .chain(buf.len() - 8..buf.len())
            .chain(
                head_end
                    .into_iter()
                    .flat_map(|h| h.saturating_sub(3)..h + 3),
            )
            .filter(|&c| c < buf.len())
            .collect()
    };
    let want = stage(&full);
    for cut in cuts {
        let got = stage(&parse(&buf[..cut], max_head, max_body));
        match (&got, &want) {
            (Stage::Partial, _) => {
                if let Some(h) = head_end {
                    assert!(cut < h, "cut {cut}: Partial past the head ({h})");
                }
            }
            (Stage::Awaiting(a), Stage::Awaiting(b)) => assert_eq!(a, b, "cut {cut}"),
            // A body still arriving: the same resource, method, credentials.
            (Stage::Awaiting(_), Stage::Done(_)) => {
                let Ok(Progress::Done(Parsed::Http { head_len, .. })) = &full else {
                    panic!("cut {cut}: AwaitingBody before an upgrade: {full:?}")
                };
                assert!(cut >= *head_len, "cut {cut}");
            }
            (Stage::Done(a), Stage::Done(b)) => assert_eq!(a, b, "cut {cut}"),
            // A head cut at max_head is 431 whatever follows it.
            (Stage::Refused(a), Stage::Refused(b)) => {
                assert!(
                    a == b || *a == 431,
                    "cut {cut}: refused with {a}, whole: {b}"
                )
            }
            _ => panic!(
                "cut {cut} of {}: {got:?}, the whole buffer: {want:?}",
                buf.len()
            ),
        }
    }

    // Bytes after a complete request (pipelined data, WebSocket frames)
    // change nothing.
    if let Some(h) = head_end {
        let body_len = match &full {
            Ok(Progress::Done(Parsed::Http { body, .. })) => body.len(),
            _ => 0,
        };
        let mut longer = buf[..h + body_len].to_vec();
        longer.extend_from_slice(b"\x81\x80GET / HTTP/1.1\r\n\r\n");
        assert_eq!(stage(&parse(&longer, max_head, max_body)), want);
    }
}

// ---------------------------------------------------------------- frames

/// What a session told its handler, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Message(MessageKind, Vec<u8>),
    /// A control frame the session queued for the peer (pong, close).
    Send(OpCode, Vec<u8>),
    /// A pong arrived.
    Pong(Vec<u8>),
}

/// Records every event; with `copying`, takes whole messages through
/// `copy_masked` as the echo endpoint does (`ConnIo::copy_masked`).
#[derive(Default)]
pub struct Recorder {
    pub events: Vec<Event>,
    pub copying: bool,
    /// A copy was offered and not yet withdrawn or kept.
    withdrawable: bool,
}

impl Handler for Recorder {
    fn on_message(&mut self, kind: MessageKind, payload: &[u8]) {
        self.withdrawable = false;
        self.events.push(Event::Message(kind, payload.to_vec()));
    }
    fn send_control(&mut self, opcode: OpCode, payload: &[u8]) {
        self.withdrawable = false;
        self.events.push(Event::Send(opcode, payload.to_vec()));
    }
    fn on_pong(&mut self, payload: &[u8]) {
        self.withdrawable = false;
        self.events.push(Event::Pong(payload.to_vec()));
    }
    fn copy_masked(&mut self, kind: MessageKind, masked: &[u8], mask: [u8; 4]) -> Option<&[u8]> {
        if !self.copying {
            return None;
        }
        let mut v = Vec::new();
        frame::unmask_into(masked, mask, &mut v);
        self.events.push(Event::Message(kind, v));
        self.withdrawable = true;
        match self.events.last() {
            Some(Event::Message(_, v)) => Some(v),
            _ => None,
        }
    }
    fn withdraw_copy(&mut self) {
        assert!(
            self.withdrawable,
            "withdraw_copy without a copy to take back"
        );
        self.withdrawable = false;
        assert!(matches!(self.events.pop(), Some(Event::Message(..))));
    }
}

/// Everything observable after feeding a stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub state: State,
}

/// The close a session started itself in [`run_session`] with `close_first`.
const OWN_CLOSE: (CloseCode, &str) = (CloseCode::GOING_AWAY, "bye");

/// Feeds `stream` to a new session in pieces of the sizes in `chunks`
/// (cycled; a 0 feeds an empty slice; no sizes, or all zero: one piece).
/// With `close_first` the server starts a close before any byte arrives.
pub fn run_session(
    limits: Limits,
    stream: &[u8],
    chunks: &[usize],
    copying: bool,
    close_first: bool,
) -> Outcome {
    let mut s = Session::new();
    let mut h = Recorder {
        copying,
        ..Recorder::default()
    };
    if close_first {
        s.close(OWN_CLOSE.0, OWN_CLOSE.1, &mut h);
        assert_eq!(s.state(), State::AwaitingClose);
    }
    let mut buf = stream.to_vec();
    let whole = [buf.len()];
    let chunks = if chunks.iter().all(|&c| c == 0) {
        &whole[..]
    } else {
        chunks
    };
    let mut pos = 0;
    let mut prev = s.state();
    for &size in chunks.iter().cycle() {
        if pos >= buf.len() {
            break;
        }
        let end = (pos + size).min(buf.len());
        let before = h.events.len();
        let state = s.feed(&mut buf[pos..end], limits, &mut h);
        assert_eq!(state, s.state());
        assert!(
            rank(state) >= rank(prev),
            "state went back: {prev:?} -> {state:?}"
        );
        if prev == State::Done {
            assert_eq!(h.events.len(), before, "events after Done");
        }
        prev = state;
        pos = end;
    }
    assert!(!h.withdrawable || matches!(h.events.last(), Some(Event::Message(..))));
    if s.state() == State::Done {
        assert_eq!(s.buffered_bytes(), 0, "a closed session holds a buffer");
    }
    Outcome {
        events: h.events,
        state: s.state(),
    }
}

fn rank(s: State) -> u8 {
    match s {
        State::Open => 0,
        State::AwaitingClose => 1,
        State::Done => 2,
    }
}

/// Checks one stream (see the module docs); `chunks` as in [`run_session`].
pub fn check_frames(limits: Limits, stream: &[u8], chunks: &[usize], close_first: bool) {
    let whole = run_session(limits, stream, &[], false, close_first);
    check_outcome(&whole, limits, close_first);
    for copying in [false, true] {
        let split = run_session(limits, stream, chunks, copying, close_first);
        assert_eq!(split, whole, "chunks {chunks:?}, copying {copying}");
    }
    let copied = run_session(limits, stream, &[], true, close_first);
    assert_eq!(copied, whole, "copy_masked changed the outcome");
    if stream.len() <= 2048 {
        let bytewise = run_session(limits, stream, &[1], false, close_first);
        assert_eq!(bytewise, whole, "fed one byte at a time");
    }
    let model = reference_session(limits, stream, close_first);
    assert_eq!(normalise(&whole.events), model.events, "against the model");
    assert_eq!(whole.state, model.state, "state against the model");
    if !close_first {
        check_deflate(limits, stream, chunks, &whole);
    }
}

/// permessage-deflate, two ways. The same bytes fed to a session that
/// negotiated the extension (RSV1 now allowed on first frames) keep every
/// invariant; and the messages the plain session delivered, re-sent
/// compressed (each split over two frames, fed in the same chunk sizes),
/// come out of a deflate session exactly as they went in.
fn check_deflate(limits: Limits, stream: &[u8], chunks: &[usize], plain: &Outcome) {
    use ringcast::ws::deflate::{Deflater, Inflater, WindowBits};
    let feed = |bytes: &[u8], chunks: &[usize]| {
        let mut s = Session::negotiated(Some(WindowBits::MAX));
        let mut inf = Inflater::new();
        let mut h = Recorder::default();
        let mut buf = bytes.to_vec();
        let sizes: Vec<usize> = chunks.iter().copied().filter(|&c| c > 0).collect();
        let sizes = if sizes.is_empty() {
            vec![buf.len().max(1)]
        } else {
            sizes
        };
        let mut pos = 0;
        for &size in sizes.iter().cycle() {
            if pos >= buf.len() {
                break;
            }
            let end = (pos + size).min(buf.len());
            s.feed_with(&mut buf[pos..end], Some(&mut inf), limits, &mut h);
            pos = end;
        }
        if s.state() == State::Done {
            assert_eq!(s.buffered_bytes(), 0, "a closed session holds a buffer");
        }
        Outcome {
            events: h.events,
            state: s.state(),
        }
    };
    let raw = feed(stream, chunks);
    check_outcome(&raw, limits, false);

    let mut d = Deflater::new(6, 1);
    let mut wire = Vec::new();
    let mut sent = Vec::new();
    for e in &plain.events {
        let Event::Message(kind, payload) = e else {
            continue;
        };
        let Some(packed) = d.compress(WindowBits::MAX, payload) else {
            continue; // incompressible: the server would send it plain
        };
        let op = kind.opcode() as u8;
        // Two frames, where the fragment limit allows it.
        let cut = if limits.max_fragments >= 2 {
            packed.len() / 2
        } else {
            packed.len()
        };
        let (a, b) = packed.split_at(cut);
        let start = wire.len();
        frame::encode_client_frame(b.is_empty(), op, a, [1, 2, 3, 4], &mut wire);
        wire[start] |= frame::RSV1;
        if !b.is_empty() {
            frame::encode_client_frame(true, 0, b, [5, 6, 7, 8], &mut wire);
        }
        sent.push(Event::Message(*kind, payload.clone()));
    }
    let got = feed(&wire, chunks);
    assert_eq!(got.events, sent, "compressed messages round-trip");
    assert_eq!(got.state, State::Open);
}

/// Invariants of one outcome on their own.
fn check_outcome(o: &Outcome, limits: Limits, close_first: bool) {
    let mut closed = false;
    for e in &o.events {
        match e {
            Event::Message(kind, payload) => {
                assert!(!closed, "a message after the close frame");
                assert!(
                    payload.len() <= limits.max_message,
                    "message over the limit"
                );
                if *kind == MessageKind::Text {
                    assert!(std::str::from_utf8(payload).is_ok(), "text not UTF-8");
                }
            }
            Event::Send(OpCode::Pong, p) => {
                assert!(!closed, "a pong after the close frame");
                assert!(p.len() <= 125);
            }
            Event::Send(OpCode::Close, p) => {
                assert!(!closed, "two close frames");
                closed = true;
                assert!(p.len() <= 125 && p.len() != 1);
                if p.len() >= 2 {
                    let code = CloseCode(u16::from_be_bytes([p[0], p[1]]));
                    assert!(code.is_valid_on_wire(), "close code {code}");
                    assert!(std::str::from_utf8(&p[2..]).is_ok());
                }
            }
            Event::Send(op, _) => panic!("sent a {op:?} frame"),
            Event::Pong(p) => assert!(p.len() <= 125),
        }
    }
    assert_eq!(closed, close_first || o.state == State::Done);
}

/// Events with close payloads cut to their code: the model does not know
/// the reason texts.
fn normalise(events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .map(|e| match e {
            Event::Send(OpCode::Close, p) => {
                Event::Send(OpCode::Close, p[..p.len().min(2)].to_vec())
            }
            e => e.clone(),
        })
        .collect()
}

/// RFC 6455 server-side rules as a straightforward loop over the whole
/// stream, sharing no code with [`Session`]: what a session must report
/// (close payloads cut to their code).
pub fn reference_session(limits: Limits, s: &[u8], close_first: bool) -> Outcome {
    let mut events = Vec::new();
    let mut state = State::Open;
    if close_first {
        events.push(Event::Send(
            OpCode::Close,
            OWN_CLOSE.0 .0.to_be_bytes().to_vec(),
        ));
        state = State::AwaitingClose;
    }
    // Fails the connection with `code`: a close frame if we had sent none.
    let fail = |events: &mut Vec<Event>, state: &mut State, code: u16| {
        if *state == State::Open {
            events.push(Event::Send(OpCode::Close, code.to_be_bytes().to_vec()));
        }
        *state = State::Done;
    };
    // The message in progress: kind, bytes so far, declared length, frames.
    let mut msg: Option<(MessageKind, Vec<u8>, u64, u64)> = None;
    let mut pos = 0usize;
    while state != State::Done {
        let rest = &s[pos..];
        if rest.len() < 2 {
            break;
        }
        let (b0, b1) = (rest[0], rest[1]);
        let op = b0 & 0x0F;
        let fin = b0 & 0x80 != 0;
        let len7 = u64::from(b1 & 0x7F);
        let control = op >= 8;
        if b0 & 0x70 != 0
            || !matches!(op, 0 | 1 | 2 | 8 | 9 | 10)
            || b1 & 0x80 == 0
            || (control && (!fin || len7 > 125))
        {
            fail(&mut events, &mut state, 1002);
            break;
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if rest.len() < 2 + ext {
            break;
        }
        let len = match ext {
            0 => len7,
            n => rest[2..2 + n]
                .iter()
                .fold(0u64, |a, &b| a << 8 | u64::from(b)),
        };
        if len >> 63 != 0 {
            fail(&mut events, &mut state, 1002);
            break;
        }
        let hl = 2 + ext + 4;
        if rest.len() < hl {
            break;
        }
        let mask = [rest[hl - 4], rest[hl - 3], rest[hl - 2], rest[hl - 1]];
        let max = limits.max_message as u64;
        match op {
            1 | 2 => {
                if msg.is_some() {
                    fail(&mut events, &mut state, 1002);
                    break;
                }
                if len > max {
                    fail(&mut events, &mut state, 1009);
                    break;
                }
                let kind = if op == 1 {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                msg = Some((kind, Vec::new(), len, 1));
            }
            0 => {
                let Some(m) = msg.as_mut() else {
                    fail(&mut events, &mut state, 1002);
                    break;
                };
                m.2 += len;
                m.3 += 1;
                if m.2 > max || m.3 > u64::from(limits.max_fragments) {
                    fail(&mut events, &mut state, 1009);
                    break;
                }
            }
            _ => {}
        }
        let avail = (rest.len() - hl).min(usize::try_from(len).unwrap_or(usize::MAX));
        let payload: Vec<u8> = rest[hl..hl + avail]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        let complete = avail as u64 == len;
        if control {
            if !complete {
                break;
            }
            match op {
                9 if state == State::Open => events.push(Event::Send(OpCode::Pong, payload)),
                10 => events.push(Event::Pong(payload)),
                8 => {
                    let reply = match payload.len() {
                        0 => Ok(vec![]),
                        1 => Err(1002),
                        _ => {
                            let code = u16::from_be_bytes([payload[0], payload[1]]);
                            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                                Err(1002)
                            } else if std::str::from_utf8(&payload[2..]).is_err() {
                                Err(1007)
                            } else {
                                Ok(code.to_be_bytes().to_vec())
                            }
                        }
                    };
                    match reply {
                        Err(code) => fail(&mut events, &mut state, code),
                        Ok(reply) => {
                            if state == State::Open {
                                events.push(Event::Send(OpCode::Close, reply));
                            }
                            state = State::Done;
                        }
                    }
                }
                _ => {}
            }
        } else {
            let m = msg.as_mut().expect("a data frame belongs to a message");
            m.1.extend_from_slice(&payload);
            // Fail fast: bytes that can never start valid UTF-8.
            if m.0 == MessageKind::Text {
                if let Err(e) = std::str::from_utf8(&m.1) {
                    if e.error_len().is_some() || (complete && fin) {
                        fail(&mut events, &mut state, 1007);
                        break;
                    }
                }
            }
            if !complete {
                break;
            }
            if fin {
                let (kind, data, _, _) = msg.take().expect("checked above");
                if state == State::Open {
                    events.push(Event::Message(kind, data));
                }
            }
        }
        pos += hl + avail;
    }
    Outcome { events, state }
}

/// One frame to put on the wire, valid or not: any opcode and RSV bits,
/// masked or not, any length encoding, a length field that may lie.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub fin: bool,
    /// RSV1-3 (0 for a valid frame).
    pub rsv: u8,
    /// The raw 4-bit opcode.
    pub opcode: u8,
    pub masked: bool,
    /// 0: shortest length form, 1: 16-bit form, 2: 64-bit form.
    pub len_form: u8,
    /// Declared length instead of the payload's (a lie, or a huge claim).
    pub len_override: Option<u64>,
    pub mask: [u8; 4],
    pub payload: Vec<u8>,
}

impl FrameSpec {
    /// Appends the frame as a client would send it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len = self.len_override.unwrap_or(self.payload.len() as u64);
        out.push(u8::from(self.fin) << 7 | (self.rsv & 7) << 4 | (self.opcode & 0x0F));
        let m = if self.masked { 0x80 } else { 0 };
        match self.len_form {
            1 if len <= 0xFFFF => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            1 | 2 => {
                out.push(m | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
            _ if len < 126 => out.push(m | len as u8),
            _ if len <= 0xFFFF => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(m | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if self.masked {
            out.extend_from_slice(&self.mask);
            let start = out.len();
            out.extend_from_slice(&self.payload);
            frame::apply_mask(&mut out[start..], self.mask, 0);
        } else {
            out.extend_from_slice(&self.payload);
        }
    }
}

/// Encodes frames back to back.
pub fn encode_stream(frames: &[FrameSpec]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out);
    }
    out
}

/// Text that stresses UTF-8 validation at fragment and read boundaries:
/// 1- to 4-byte code points, and invalid bytes.
const TEXT_PIECES: [&[u8]; 16] = [
    b"a",
    b"hello ",
    "é".as_bytes(),
    "€".as_bytes(),
    "𝄞".as_bytes(),
    "κόσμε".as_bytes(),
    b"\xce",
    b"\xe2\x82",
    b"\xf0\x9d\x84",
    b"\x9e",
    b"\xff",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xf4\x90\x80\x80",
    b"{\"type\":\"ping\"}",
    b"",
];

/// Masks the generators choose from (zero: the payload is readable as is).
const MASKS: [[u8; 4]; 4] = [
    [0, 0, 0, 0],
    [0x37, 0xFA, 0x21, 0x3D],
    [0xFF, 0xFF, 0xFF, 0xFF],
    [1, 2, 3, 4],
];

/// Decodes fuzzer bytes into frames, so mutations of a few bytes change
/// whole frames rather than bits of masked payload. Per frame: a control
/// byte `c` (bits 0-2: opcode among 0,1,2,8,9,10,0,1; bit 3: FIN; bits 4-5:
/// length form and mask; bit 6: a tweak byte follows; bit 7: the payload is
/// text pieces), the tweak byte if any (bits 0-2: RSV, bit 3: unmasked, bits
/// 4-7: raw opcode if nonzero), then a length byte `n` and `n` payload bytes
/// (or `n` indexes into the text pieces).
pub fn frames_from_bytes(mut data: &[u8]) -> Vec<FrameSpec> {
    let mut next = || -> Option<u8> {
        let (&b, rest) = data.split_first()?;
        data = rest;
        Some(b)
    };
    let mut frames = Vec::new();
    while let Some(c) = next() {
        let mut f = FrameSpec {
            fin: c & 8 != 0,
            rsv: 0,
            opcode: [0, 1, 2, 8, 9, 10, 0, 1][usize::from(c & 7)],
            masked: true,
            len_form: ((c >> 4) & 3) % 3,
            len_override: None,
            mask: MASKS[usize::from((c >> 4) & 3)],
            payload: Vec::new(),
        };
        if c & 0x40 != 0 {
            let t = next().unwrap_or(0);
            f.rsv = t & 7;
            f.masked = t & 8 == 0;
            if t >> 4 != 0 {
                f.opcode = t >> 4;
            }
            if t == 0xFF {
                // A length claim far beyond any limit.
                f.len_override = Some(1 << (40 + u32::from(next().unwrap_or(0) % 24)));
            }
        }
        let n = next().unwrap_or(0);
        for _ in 0..n {
            let Some(b) = next() else { break };
            if c & 0x80 != 0 {
                f.payload
                    .extend_from_slice(TEXT_PIECES[usize::from(b & 15)]);
            } else {
                f.payload.push(b);
            }
        }
        frames.push(f);
    }
    frames
}

/// A frames case decoded from fuzzer bytes: `[flags, n, n chunk sizes,
/// stream...]`. Flags: bit 0: the stream is [`frames_from_bytes`] input;
/// bit 1: close first; bits 2-4: max_message, bits 5-7: max_fragments (an
/// index into [`MAX_MESSAGE`], [`MAX_FRAGMENTS`]).
/// `max_message` values the frames targets try (0 and 1 included: the
/// server accepts any `--max-message-bytes`).
pub const MAX_MESSAGE: [usize; 8] = [0, 1, 16, 125, 126, 1000, 65536, 1 << 20];
/// `max_fragments` values the frames targets try.
pub const MAX_FRAGMENTS: [u32; 8] = [0, 1, 2, 3, 16, 1000, 131_072, u32::MAX];

pub struct FramesCase {
    pub limits: Limits,
    pub chunks: Vec<usize>,
    pub stream: Vec<u8>,
    pub close_first: bool,
}

impl FramesCase {
    pub fn from_bytes(data: &[u8]) -> Option<FramesCase> {
        let (&flags, rest) = data.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let n = usize::from(n % 16).min(rest.len());
        let (sizes, rest) = rest.split_at(n);
        let stream = if flags & 1 != 0 {
            encode_stream(&frames_from_bytes(rest))
        } else {
            rest.to_vec()
        };
        Some(FramesCase {
            limits: Limits {
                max_message: MAX_MESSAGE[usize::from((flags >> 2) & 7)],
                max_fragments: MAX_FRAGMENTS[usize::from(flags >> 5)],
            },
            chunks: sizes.iter().map(|&s| usize::from(s)).collect(),
            stream,
            close_first: flags & 2 != 0,
        })
    }

    pub fn check(&self) {
        check_frames(self.limits, &self.stream, &self.chunks, self.close_first);
    }
}

// ---------------------------------------------------------------- JSON

/// RFC 8259 grammar (UTF-8 text, no depth or number-range limits), written
/// independently of serde_json.
pub fn is_json(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok() && json_grammar(b)
}

/// [`is_json`] without the UTF-8 check: serde_json skips the strings of
/// fields it ignores without validating them, so `parse_client` (whose
/// input is a text frame, already valid UTF-8) is held to the grammar only.
pub fn json_grammar(b: &[u8]) -> bool {
    struct P<'a> {
        b: &'a [u8],
        i: usize,
    }
    impl P<'_> {
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }
        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.i += 1;
            }
        }
        fn eat(&mut self, c: u8) -> bool {
            let ok = self.peek() == Some(c);
            self.i += usize::from(ok);
            ok
        }
        fn digits(&mut self) -> usize {
            let start = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            self.i - start
        }
        fn number(&mut self) -> bool {
            self.eat(b'-');
            let int = self.eat(b'0') || self.digits() > 0;
            if !int {
                return false;
            }
            if self.eat(b'.') && self.digits() == 0 {
                return false;
            }
            if self.eat(b'e') || self.eat(b'E') {
                let _ = self.eat(b'+') || self.eat(b'-');
                if self.digits() == 0 {
                    return false;
                }
            }
            true
        }
        fn string(&mut self) -> bool {
            if !self.eat(b'"') {
                return false;
            }
            loop {
                match self.peek() {
                    None => return false,
                    Some(b'"') => {
                        self.i += 1;
                        return true;
                    }
                    Some(b'\\') => {
                        self.i += 1;
                        match self.peek() {
                            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                                self.i += 1
                            }
                            Some(b'u') => {
                                self.i += 1;
                                for _ in 0..4 {
                                    if !self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                                        return false;
                                    }
                                    self.i += 1;
                                }
                            }
                            _ => return false,
                        }
                    }
                    Some(c) if c < 0x20 => return false,
                    Some(_) => self.i += 1,
                }
            }
        }
        fn value(&mut self) -> bool {
            self.ws();
            let ok = match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    self.ws();
                    if !self.eat(b'}') {
                        loop {
                            self.ws();
                            if !self.string() {
                                return false;
                            }
                            self.ws();
                            if !self.eat(b':') || !self.value() {
                                return false;
                            }
                            if self.eat(b'}') {
                                break;
                            }
                            if !self.eat(b',') {
                                return false;
                            }
                        }
                    }
                    true
                }
                Some(b'[') => {
                    self.i += 1;
                    self.ws();
                    if !self.eat(b']') {
                        loop {
                            if !self.value() {
                                return false;
                            }
                            if self.eat(b']') {
                                break;
                            }
                            if !self.eat(b',') {
                                return false;
                            }
                        }
                    }
                    true
                }
                Some(b'"') => self.string(),
                Some(b't') => self.lit(b"true"),
                Some(b'f') => self.lit(b"false"),
                Some(b'n') => self.lit(b"null"),
                Some(_) => self.number(),
                None => false,
            };
            self.ws();
            ok
        }
        fn lit(&mut self, w: &[u8]) -> bool {
            let ok = self.b[self.i..].starts_with(w);
            self.i += if ok { w.len() } else { 0 };
            ok
        }
    }
    let mut p = P { b, i: 0 };
    p.value() && p.i == b.len()
}

/// `text` as a `Value` when serde_json can hold it (it refuses numbers out
/// of f64 range, lone surrogate escapes and nesting past 128, all valid
/// JSON that ringcast passes through untouched).
fn value_of(text: &[u8]) -> Option<Value> {
    serde_json::from_slice(text).ok()
}

/// An object's fields in order with duplicates kept (a `Value` keeps only
/// the last); `None` if `text` is not one object.
fn fields(text: &[u8]) -> Option<Vec<(String, Box<RawValue>)>> {
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Vec<(String, Box<RawValue>)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut v = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                v.push((k, map.next_value()?));
            }
            Ok(v)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    let f = de.deserialize_map(Fields).ok()?;
    de.end().ok()?;
    Some(f)
}

/// Looks up a field that may appear at most once: `Err` for a duplicate.
fn once(fields: &[(String, Box<RawValue>)], key: &str) -> Result<Option<Value>, ()> {
    let mut found = fields.iter().filter(|(k, _)| k == key);
    let first = found.next();
    if found.next().is_some() {
        return Err(());
    }
    // Only called on text that parsed as a whole.
    Ok(first.map(|(_, v)| serde_json::from_str(v.get()).expect("a field of a parsed value")))
}

/// Outcome of parsing one message, in a form a prediction can match.
#[derive(Debug, PartialEq, Eq)]
enum Verdict<T, A> {
    Ok(T),
    /// The error code, and `A`: the id (`/ws`) or the batch index (API).
    Err(&'static str, A),
}

/// Looks up a field that may appear at most once, as its raw text: `Err`
/// for a duplicate.
fn raw_once<'f>(fields: &'f [(String, Box<RawValue>)], key: &str) -> Result<Option<&'f str>, ()> {
    let mut found = fields.iter().filter(|(k, _)| k == key);
    let first = found.next();
    if found.next().is_some() {
        return Err(());
    }
    Ok(first.map(|(_, v)| v.get()))
}

/// A non-negative integer that fits a u64 (what `limit` and
/// `since.offset` must be).
fn count_of(raw: &str) -> Option<u64> {
    serde_json::from_str::<Value>(raw).ok()?.as_u64()
}

/// The epoch a client sent back, as the server reads it: 16 hex digits,
/// anything else is 0 (no stream has it).
fn epoch_of(s: &str) -> u64 {
    if s.len() != 16 {
        return 0;
    }
    u64::from_str_radix(s, 16).unwrap_or(0)
}

/// `since`'s prediction: `{"offset":N,"epoch":"E"}`, both once, other keys
/// ignored; `None` when it is anything else (a `bad_json`).
fn predict_since(raw: &str) -> Option<protocol::Since> {
    let f = fields(raw.as_bytes())?;
    let offset = count_of(raw_once(&f, "offset").ok()??)?;
    let epoch = match serde_json::from_str::<Value>(raw_once(&f, "epoch").ok()??).ok()? {
        Value::String(e) => epoch_of(&e),
        _ => return None,
    };
    Some(protocol::Since { offset, epoch })
}

/// What `parse_client` must answer for `text`, when serde_json can parse
/// it as a `Value` (else `None`).
fn predict_client(text: &[u8]) -> Option<Verdict<Option<u64>, Option<u64>>> {
    value_of(text)?;
    let bad_json = Some(Verdict::Err("bad_json", None));
    let Some(f) = fields(text) else {
        return bad_json;
    };
    // `id`: at most one that is not null, a u64.
    let mut id = None;
    for (k, v) in &f {
        if k == "id" {
            match serde_json::from_str::<Value>(v.get()).ok()? {
                Value::Null => {}
                Value::Number(n) if n.is_u64() && id.is_none() => id = n.as_u64(),
                _ => return bad_json,
            }
        }
    }
    let (Ok(kind), Ok(channel), Ok(payload)) =
        (once(&f, "type"), once(&f, "channel"), once(&f, "payload"))
    else {
        return bad_json;
    };
    if [&kind, &channel]
        .iter()
        .any(|v| v.as_ref().is_some_and(|v| !v.is_string()))
    {
        return bad_json;
    }
    // The stream fields are typed whatever the message type: each at most
    // once, `presence`/`join_leave` booleans, `limit` a count, `since` an
    // object with a count `offset` and a string `epoch`.
    let (Ok(presence), Ok(join_leave), Ok(limit), Ok(since)) = (
        once(&f, "presence"),
        once(&f, "join_leave"),
        raw_once(&f, "limit"),
        raw_once(&f, "since"),
    ) else {
        return bad_json;
    };
    if [&presence, &join_leave]
        .iter()
        .any(|v| v.as_ref().is_some_and(|v| !v.is_boolean()))
        || limit.is_some_and(|l| count_of(l).is_none())
        || since.is_some_and(|s| predict_since(s).is_none())
    {
        return bad_json;
    }
    let err = |code| Some(Verdict::Err(code, id));
    let Some(Value::String(kind)) = kind else {
        return err("missing_field");
    };
    match kind.as_str() {
        "ping" => return Some(Verdict::Ok(id)),
        "subscribe" | "unsubscribe" | "history" | "presence" => {}
        "publish" if payload.is_none() => return err("missing_field"),
        "publish" => {}
        _ => return err("unknown_type"),
    }
    match channel {
        None => err("missing_field"),
        Some(Value::String(c)) if protocol::validate_channel(&c).is_err() => err("bad_channel"),
        Some(_) => Some(Verdict::Ok(id)),
    }
}

/// Checks that a payload is the client's value, byte for byte inside its
/// message. (The `message` frame built from it is checked over real
/// sockets: every message in tests/channels.rs and tests/streams.rs is
/// compared as text, field order included.)
fn check_payload(text: &[u8], whole: Option<&Value>, payload: &str) {
    assert!(inside(text, payload.as_bytes()), "payload not borrowed");
    assert!(is_json(payload.as_bytes()), "payload not JSON: {payload:?}");
    let _: &RawValue = serde_json::from_str(payload).expect("a RawValue parses again");
    if let (Some(want), Some(got)) = (whole, value_of(payload.as_bytes())) {
        assert_eq!(&got, want, "payload value changed");
    }
}

/// Checks one `/ws` message and one publish API body (see module docs).
pub fn check_ws_json(text: &[u8]) {
    check_client(text);
    check_publish(text);
}

fn check_client(text: &[u8]) {
    let value = value_of(text);
    let got = match protocol::parse_client(text) {
        Ok(msg) => {
            assert!(json_grammar(text), "accepted text that is not JSON");
            let v = value.as_ref();
            // The stream fields as sent, when the text parses as a `Value`.
            let raw = |key: &str| {
                fields(text).and_then(|f| raw_once(&f, key).ok().flatten().map(str::to_owned))
            };
            match &msg {
                protocol::ClientMsg::Subscribe {
                    channel,
                    since,
                    presence,
                    join_leave,
                    ..
                } => {
                    assert!(protocol::validate_channel(channel).is_ok());
                    if let Some(v) = v {
                        assert_eq!(v["channel"], **channel);
                        assert_eq!(*presence, v["presence"].as_bool().unwrap_or(false));
                        assert_eq!(*join_leave, v["join_leave"].as_bool().unwrap_or(false));
                        assert_eq!(*since, raw("since").and_then(|s| predict_since(&s)));
                    }
                }
                protocol::ClientMsg::History {
                    channel,
                    limit,
                    since,
                    ..
                } => {
                    assert!(protocol::validate_channel(channel).is_ok());
                    if let Some(v) = v {
                        assert_eq!(v["channel"], **channel);
                        assert_eq!(*limit, v["limit"].as_u64());
                        assert_eq!(*since, raw("since").and_then(|s| predict_since(&s)));
                    }
                }
                protocol::ClientMsg::Presence { channel, .. }
                | protocol::ClientMsg::Unsubscribe { channel, .. } => {
                    assert!(protocol::validate_channel(channel).is_ok());
                    if let Some(v) = v {
                        assert_eq!(v["channel"], **channel);
                    }
                }
                protocol::ClientMsg::Publish {
                    channel, payload, ..
                } => {
                    assert!(protocol::validate_channel(channel).is_ok());
                    check_payload(text, v.map(|v| &v["payload"]), payload.get());
                }
                protocol::ClientMsg::Ping { .. } => {}
            }
            Verdict::Ok(msg.id())
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            let mut out = Vec::new();
            protocol::write_error(e.id, e.code, &e.message, &mut out);
            let reply = value_of(&out).expect("an error reply is JSON");
            assert_eq!(reply["code"], e.code.as_str());
            assert_eq!(reply["message"], e.message.as_str());
            assert_eq!(reply.get("id").and_then(Value::as_u64), e.id);
            if !json_grammar(text) {
                assert_eq!(e.code, protocol::ErrorCode::BadJson, "{e:?}");
            }
            Verdict::Err(e.code.as_str(), e.id)
        }
    };
    if let Some(want) = predict_client(text) {
        match (&got, &want) {
            // The id recovered for bad_json is best effort.
            (Verdict::Err("bad_json", _), Verdict::Err("bad_json", _)) => {}
            _ => assert_eq!(got, want, "parse_client against the prediction"),
        }
    }
}

/// What `parse_publish` must answer for `body`, when serde_json can parse
/// it as a `Value` (else `None`); errors of a batch entry carry its index.
fn predict_publish(body: &[u8]) -> Option<Verdict<usize, Option<usize>>> {
    value_of(body)?;
    // One publication's fields.
    let entry = |text: &[u8]| -> Result<(), &'static str> {
        let f = fields(text).ok_or("bad_json")?;
        let (Ok(channel), Ok(payload)) = (once(&f, "channel"), once(&f, "payload")) else {
            return Err("bad_json");
        };
        match channel {
            Some(Value::String(c)) if payload.is_some() => protocol::validate_channel(&c)
                .map(drop)
                .map_err(|_| "bad_channel"),
            Some(Value::String(_)) | None => Err("missing_field"),
            Some(_) => Err("bad_json"),
        }
    };
    let Some(f) = fields(body) else {
        return Some(Verdict::Err("bad_json", None));
    };
    let Ok(messages) = once(&f, "messages") else {
        return Some(Verdict::Err("bad_json", None));
    };
    if messages.is_none() {
        return Some(match entry(body) {
            Ok(()) => Verdict::Ok(1),
            Err(code) => Verdict::Err(code, None),
        });
    }
    let (Ok(channel), Ok(payload)) = (once(&f, "channel"), once(&f, "payload")) else {
        return Some(Verdict::Err("bad_json", None));
    };
    let raw = f
        .iter()
        .find(|(k, _)| k == "messages")
        .map(|(_, v)| v.get());
    let Ok(list) = serde_json::from_str::<Vec<Box<RawValue>>>(raw.unwrap_or("")) else {
        return Some(Verdict::Err("bad_json", None));
    };
    if channel.as_ref().is_some_and(|c| !c.is_string()) {
        return Some(Verdict::Err("bad_json", None));
    }
    if channel.is_some() || payload.is_some() || list.is_empty() || list.len() > api::MAX_BATCH {
        return Some(Verdict::Err("bad_batch", None));
    }
    for (i, e) in list.iter().enumerate() {
        if let Err(code) = entry(e.get().as_bytes()) {
            return Some(Verdict::Err(code, Some(i)));
        }
    }
    Some(Verdict::Ok(list.len()))
}

fn check_publish(body: &[u8]) {
    let value = value_of(body);
    let got = match api::parse_publish(body) {
        Ok(pubs) => {
            assert!(is_json(body), "accepted a body that is not JSON");
            assert!((1..=api::MAX_BATCH).contains(&pubs.len()));
            let batch = value.as_ref().and_then(|v| v.get("messages"));
            for (i, p) in pubs.iter().enumerate() {
                assert!(protocol::validate_channel(&p.channel).is_ok());
                let want = value.as_ref().map(|v| match batch {
                    Some(b) => &b[i]["payload"],
                    None => &v["payload"],
                });
                check_payload(body, want, p.payload.get());
            }
            Verdict::Ok(pubs.len())
        }
        Err(e) => {
            assert_eq!(e.status, 400);
            assert!(
                matches!(
                    e.code,
                    "bad_json" | "bad_batch" | "bad_channel" | "missing_field"
                ),
                "{e:?}"
            );
            assert!(!e.message.is_empty());
            let mut out = Vec::new();
            api::write_error_body(e.code, &e.message, &mut out);
            let reply = value_of(&out).expect("an error body is JSON");
            assert_eq!(reply["error"]["message"], e.message.as_str());
            if !is_json(body) {
                assert_eq!(e.code, "bad_json", "{e:?}");
            }
            let at = e
                .message
                .strip_prefix("messages[")
                .and_then(|m| m.split_once("]: "))
                .and_then(|(i, _)| i.parse().ok());
            Verdict::Err(e.code, at)
        }
    };
    if let Some(want) = predict_publish(body) {
        assert_eq!(got, want, "parse_publish against the prediction");
    }
}
