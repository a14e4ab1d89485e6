//! The server side of an open WebSocket connection as a pure state machine.
//!
//! [`Session::feed`] takes bytes exactly as they came off the socket (any
//! split: half a header, many frames, a frame across reads), unmasks payloads
//! in place (or while the handler copies them, see
//! [`Handler::copy_masked`]), validates everything RFC 6455 requires, and reports complete
//! messages and the control frames to send to a [`Handler`]. It owns no
//! socket and no output buffer, so the I/O underneath can be anything.
//!
//! A data frame that is complete in the input and not part of a fragmented
//! message is handed over in place: no copy. Only messages that span reads or
//! fragments are assembled, and never beyond `max_message` bytes: the size is
//! checked from each frame header before its payload is read.

use super::close::{parse_close_payload, CloseCode, ClosePayload, ReceivedClose};
use super::deflate::{InflateError, Inflater, WindowBits};
use super::frame::{
    apply_mask, parse_header_with, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
};
use super::utf8::{self, Utf8Stream};

/// The kind of a complete data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// UTF-8 text (validated).
    Text,
    /// Bytes.
    Binary,
}

impl MessageKind {
    /// The opcode to send a message of this kind with.
    pub fn opcode(self) -> OpCode {
        match self {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        }
    }
}

/// What a session needs from its owner.
pub trait Handler {
    /// A complete, validated data message (text is valid UTF-8).
    fn on_message(&mut self, kind: MessageKind, payload: &[u8]);
    /// Queue a control frame (pong or close) for the peer.
    fn send_control(&mut self, opcode: OpCode, payload: &[u8]);
    /// A pong arrived (used for round-trip measurement).
    fn on_pong(&mut self, _payload: &[u8]) {}
    /// Offered first, before `on_message`, for a whole unfragmented data
    /// message that is still masked. A handler that copies the payload
    /// anyway (an echo) unmasks it while copying — one pass over the bytes
    /// instead of two — and returns its copy, which the session then
    /// validates. `None` (the default): the session unmasks in place and
    /// calls `on_message`.
    fn copy_masked(&mut self, _kind: MessageKind, _masked: &[u8], _mask: [u8; 4]) -> Option<&[u8]> {
        None
    }
    /// Takes back the copy `copy_masked` just returned: its text was not
    /// valid UTF-8, and the session is failing the connection.
    fn withdraw_copy(&mut self) {}
}

/// Where the closing handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// We sent a close frame and read on only to see the peer's reply;
    /// incoming data is discarded. The owner should bound this with a timer.
    AwaitingClose,
    /// Nothing more will be sent or parsed: once the queued frames are
    /// flushed the owner shuts down the TCP connection.
    Done,
}

/// Protocol limits for one session.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest data message accepted, summed over fragments (else 1009).
    pub max_message: usize,
    /// Most frames one message may be split into (else 1009): bounds the
    /// work a stream of empty continuation frames can cause, which the byte
    /// limit alone does not.
    pub max_fragments: u32,
}

impl Limits {
    /// Limits for tests and tools: `max_message` bytes, fragments bounded
    /// only by it.
    pub fn bytes(max_message: usize) -> Limits {
        Limits {
            max_message,
            max_fragments: u32::MAX,
        }
    }
}

#[derive(Clone, Copy)]
struct FrameProgress {
    opcode: OpCode,
    fin: bool,
    mask: [u8; 4],
    remaining: u64,
    offset: u64,
}

/// Per-connection protocol state. Between messages it is 16 bytes and
/// holds no heap memory, with or without permessage-deflate (compression
/// state is the core's): what 100k idle connections multiply.
pub struct Session {
    state: State,
    /// permessage-deflate was negotiated: the window the server may
    /// compress with.
    deflate: Option<WindowBits>,
    /// What a read left unfinished (a cut header, a frame whose payload is
    /// still to come, a message spanning frames or reads); `None` once the
    /// input so far was whole messages, as an idle connection's is.
    progress: Option<Box<Progress>>,
}

/// The parse state a read can leave behind, out of line so that only the
/// connections in the middle of a frame or message pay for it.
struct Progress {
    /// The message being assembled is compressed (RSV1 on its first frame).
    msg_compressed: bool,
    /// A frame header cut off at the end of the previous read.
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: u8,
    /// The frame whose payload is being read.
    frame: Option<FrameProgress>,
    /// The data message being assembled (fragmented, or spanning reads).
    msg_kind: Option<MessageKind>,
    msg_len: u64,
    /// Frames of the message in progress.
    msg_frames: u32,
    msg: Vec<u8>,
    utf8: Utf8Stream,
    /// A control frame payload cut off at the end of a read.
    ctrl: [u8; MAX_CONTROL_PAYLOAD],
    ctrl_len: u8,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            msg_compressed: false,
            hdr: [0; MAX_HEADER_LEN],
            hdr_len: 0,
            frame: None,
            msg_kind: None,
            msg_len: 0,
            msg_frames: 0,
            msg: Vec::new(),
            utf8: Utf8Stream::new(),
            ctrl: [0; MAX_CONTROL_PAYLOAD],
            ctrl_len: 0,
        }
    }

    /// Nothing is left unfinished: no header, frame or message in progress
    /// and no buffer held (the next frame starts from scratch).
    fn idle(&self) -> bool {
        self.hdr_len == 0
            && self.frame.is_none()
            && self.msg_kind.is_none()
            && self.ctrl_len == 0
            && self.msg.capacity() == 0
    }

    fn release_message(&mut self) {
        self.msg_kind = None;
        self.msg_compressed = false;
        self.msg_len = 0;
        self.msg = Vec::new();
        self.utf8 = Utf8Stream::new();
    }
}

/// One [`Session::feed_with`] call: the session's state and limits, and the
/// progress it works on (the session's own, or a fresh one on the stack that
/// is boxed only if the input ends mid-frame).
struct Feed<'a> {
    state: State,
    limits: Limits,
    p: &'a mut Progress,
}

/// The most a message buffer is sized for up front from a length claim.
const RESERVE_MAX: usize = 64 * 1024;

impl Default for Session {
    fn default() -> Session {
        Session::new()
    }
}

impl Session {
    /// A session for a connection that just completed its handshake.
    pub fn new() -> Session {
        Session::negotiated(None)
    }

    /// A session whose handshake agreed permessage-deflate with a server
    /// window of `deflate`, if `Some`.
    pub fn negotiated(deflate: Option<WindowBits>) -> Session {
        Session {
            state: State::Open,
            deflate,
            progress: None,
        }
    }

    /// Where the closing handshake stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// The window to compress messages to this peer with, if it negotiated
    /// permessage-deflate.
    #[inline]
    pub fn deflate(&self) -> Option<WindowBits> {
        self.deflate
    }

    /// Bytes of heap memory held by a message in progress.
    pub fn buffered_bytes(&self) -> usize {
        self.progress.as_ref().map_or(0, |p| p.msg.capacity())
    }

    /// Starts a server-initiated close (e.g. 1001 on shutdown, 1008 for a
    /// slow consumer) and waits for the peer's reply.
    pub fn close(&mut self, code: CloseCode, reason: &str, h: &mut impl Handler) {
        if self.state == State::Open {
            h.send_control(OpCode::Close, ClosePayload::new(code, reason).as_bytes());
            self.state = State::AwaitingClose;
            if let Some(p) = self.progress.as_deref_mut() {
                p.release_message();
                if p.idle() {
                    self.progress = None;
                }
            }
        }
    }

    /// Processes bytes read from the peer. `input` is unmasked in place.
    /// A compressed message fails the connection (1002): use
    /// [`Session::feed_with`] for sessions that negotiated compression.
    pub fn feed(&mut self, input: &mut [u8], limits: Limits, h: &mut impl Handler) -> State {
        self.feed_with(input, None, limits, h)
    }

    /// [`Session::feed`], inflating compressed messages with the core's
    /// `inflater` (RSV1 is accepted only with one, and only if the
    /// handshake negotiated permessage-deflate). `limits` are the core's:
    /// the same for every connection, so not kept per session.
    pub fn feed_with(
        &mut self,
        input: &mut [u8],
        inflater: Option<&mut Inflater>,
        limits: Limits,
        h: &mut impl Handler,
    ) -> State {
        let deflate = self.deflate.is_some() && inflater.is_some();
        let mut fresh = None;
        let p = match self.progress.as_deref_mut() {
            Some(p) => p,
            None => fresh.insert(Progress::new()),
        };
        let mut feed = Feed {
            state: self.state,
            limits,
            p,
        };
        feed.run(input, deflate, inflater, h);
        self.state = feed.state;
        let idle = feed.p.idle();
        match (idle, fresh) {
            // The input ended mid-frame or mid-message: keep what is needed.
            (false, Some(p)) => self.progress = Some(Box::new(p)),
            // What was unfinished is done: give the memory back.
            (true, None) => self.progress = None,
            _ => {}
        }
        self.state
    }
}

impl Feed<'_> {
    /// The parse loop: frames out of `input` until it is used up or the
    /// connection is done.
    fn run(
        &mut self,
        input: &mut [u8],
        deflate: bool,
        mut inflater: Option<&mut Inflater>,
        h: &mut impl Handler,
    ) {
        let mut pos = 0;
        while pos < input.len() && self.state != State::Done {
            match self.p.frame {
                None => {
                    let parsed = if self.p.hdr_len == 0 {
                        parse_header_with(&input[pos..], deflate)
                    } else {
                        // Complete the header cut off by the previous read.
                        let have = self.p.hdr_len as usize;
                        let take = (MAX_HEADER_LEN - have).min(input.len() - pos);
                        self.p.hdr[have..have + take].copy_from_slice(&input[pos..pos + take]);
                        parse_header_with(&self.p.hdr[..have + take], deflate)
                            .map(|r| r.map(|(f, n)| (f, n - have)))
                    };
                    match parsed {
                        Ok(Some((header, consumed))) => {
                            pos += consumed;
                            self.p.hdr_len = 0;
                            if let Err((code, reason)) = self.start_frame(header) {
                                self.fail(code, reason, h);
                                break;
                            }
                            if header.payload_len == 0 {
                                self.end_frame(inflater.as_deref_mut(), h);
                            } else {
                                self.try_whole_frame(input, &mut pos, inflater.as_deref_mut(), h);
                            }
                        }
                        Ok(None) => {
                            // Keep the partial header for the next read.
                            let rest = &input[pos..];
                            let have = self.p.hdr_len as usize;
                            if have == 0 {
                                self.p.hdr[..rest.len()].copy_from_slice(rest);
                                self.p.hdr_len = rest.len() as u8;
                            } else {
                                self.p.hdr_len = (have + rest.len()) as u8;
                            }
                            pos = input.len();
                        }
                        Err(e) => {
                            self.fail(e.code, e.reason, h);
                            break;
                        }
                    }
                }
                Some(mut f) => {
                    let n = (f.remaining.min((input.len() - pos) as u64)) as usize;
                    let chunk = &mut input[pos..pos + n];
                    apply_mask(chunk, f.mask, f.offset);
                    pos += n;
                    f.remaining -= n as u64;
                    f.offset += n as u64;
                    self.p.frame = Some(f);
                    if f.opcode.is_control() {
                        let at = self.p.ctrl_len as usize;
                        self.p.ctrl[at..at + n].copy_from_slice(chunk);
                        self.p.ctrl_len += n as u8;
                        if f.remaining == 0 {
                            let len = self.p.ctrl_len as usize;
                            let payload = self.p.ctrl;
                            self.p.ctrl_len = 0;
                            self.p.frame = None;
                            self.control(f.opcode, &payload[..len], h);
                        }
                    } else {
                        if let Err((code, reason)) = self.append_data(chunk) {
                            self.fail(code, reason, h);
                            break;
                        }
                        if f.remaining == 0 {
                            self.end_frame(inflater.as_deref_mut(), h);
                        }
                    }
                }
            }
        }
    }

    /// Fails the connection: sends a close frame with `code` and stops
    /// parsing, since the byte stream may no longer be framed correctly.
    fn fail(&mut self, code: CloseCode, reason: &str, h: &mut impl Handler) {
        if self.state == State::Open {
            h.send_control(OpCode::Close, ClosePayload::new(code, reason).as_bytes());
        }
        self.state = State::Done;
        self.release_message();
    }

    fn release_message(&mut self) {
        self.p.release_message();
    }

    /// Validates a new frame against the message state and records it.
    fn start_frame(&mut self, f: FrameHeader) -> Result<(), (CloseCode, &'static str)> {
        match f.opcode {
            OpCode::Text | OpCode::Binary => {
                if self.p.msg_kind.is_some() {
                    return Err((CloseCode::PROTOCOL, "expected a continuation frame"));
                }
                if f.payload_len > self.limits.max_message as u64 {
                    return Err((CloseCode::TOO_BIG, "message too big"));
                }
                self.p.msg_kind = Some(if f.opcode == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                });
                self.p.msg_len = f.payload_len;
                self.p.msg_frames = 1;
                self.p.msg_compressed = f.compressed;
            }
            OpCode::Continuation => {
                if self.p.msg_kind.is_none() {
                    return Err((CloseCode::PROTOCOL, "continuation without a message"));
                }
                self.p.msg_len += f.payload_len;
                if self.p.msg_len > self.limits.max_message as u64 {
                    return Err((CloseCode::TOO_BIG, "message too big"));
                }
                self.p.msg_frames = self.p.msg_frames.saturating_add(1);
                if self.p.msg_frames > self.limits.max_fragments {
                    return Err((CloseCode::TOO_BIG, "too many fragments"));
                }
            }
            OpCode::Close | OpCode::Ping | OpCode::Pong => {}
        }
        self.p.frame = Some(FrameProgress {
            opcode: f.opcode,
            fin: f.fin,
            mask: f.mask,
            remaining: f.payload_len,
            offset: 0,
        });
        Ok(())
    }

    /// Fast path: the whole payload of the current frame is in `input`.
    /// Control frames and unfragmented data messages are handled in place.
    fn try_whole_frame(
        &mut self,
        input: &mut [u8],
        pos: &mut usize,
        inflater: Option<&mut Inflater>,
        h: &mut impl Handler,
    ) {
        let Some(f) = self.p.frame else { return };
        let len = f.remaining as usize;
        let whole_message = f.opcode.is_control() || (f.fin && f.opcode != OpCode::Continuation);
        if input.len() - *pos < len || !whole_message {
            return;
        }
        let range = *pos..*pos + len;
        *pos += len;
        self.p.frame = None;
        if f.opcode.is_control() {
            let payload = &mut input[range];
            apply_mask(payload, f.mask, 0);
            self.control(f.opcode, payload, h);
            return;
        }
        let kind = self.p.msg_kind.take().unwrap_or(MessageKind::Binary);
        self.p.msg_len = 0;
        if std::mem::take(&mut self.p.msg_compressed) {
            let payload = &mut input[range];
            apply_mask(payload, f.mask, 0);
            return self.inflated(kind, payload, inflater, h);
        }
        if self.state == State::Open {
            if let Some(copy) = h.copy_masked(kind, &input[range.clone()], f.mask) {
                if kind == MessageKind::Text && utf8::validate(copy).is_err() {
                    h.withdraw_copy();
                    self.fail(CloseCode::INVALID_DATA, "invalid UTF-8 in text message", h);
                }
                return;
            }
        }
        let payload = &mut input[range];
        apply_mask(payload, f.mask, 0);
        if kind == MessageKind::Text && utf8::validate(payload).is_err() {
            self.fail(CloseCode::INVALID_DATA, "invalid UTF-8 in text message", h);
        } else if self.state == State::Open {
            h.on_message(kind, payload);
        }
    }

    /// Appends a piece of a data frame's payload to the message in progress.
    fn append_data(&mut self, chunk: &[u8]) -> Result<(), (CloseCode, &'static str)> {
        // Compressed text is validated once inflated.
        if self.p.msg_kind == Some(MessageKind::Text)
            && !self.p.msg_compressed
            && self.p.utf8.feed(chunk).is_err()
        {
            return Err((CloseCode::INVALID_DATA, "invalid UTF-8 in text message"));
        }
        if self.state == State::Open {
            if self.p.msg.is_empty() {
                // First bytes: size the buffer for this frame, but never trust
                // a length claim for more than 64 KiB up front.
                let want = (self.p.msg_len as usize).min(RESERVE_MAX);
                self.p.msg.reserve(want.max(chunk.len()));
            }
            self.p.msg.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// The current data frame is complete (its payload already appended).
    fn end_frame(&mut self, inflater: Option<&mut Inflater>, h: &mut impl Handler) {
        let Some(f) = self.p.frame.take() else { return };
        if f.opcode.is_control() {
            // Zero-length control frame.
            self.control(f.opcode, &[], h);
            return;
        }
        if !f.fin {
            return;
        }
        let kind = self.p.msg_kind.take().unwrap_or(MessageKind::Binary);
        self.p.msg_len = 0;
        if std::mem::take(&mut self.p.msg_compressed) {
            // An idle connection keeps no message buffer.
            let msg = std::mem::take(&mut self.p.msg);
            return self.inflated(kind, &msg, inflater, h);
        }
        if kind == MessageKind::Text && self.p.utf8.finish().is_err() {
            self.fail(CloseCode::INVALID_DATA, "invalid UTF-8 in text message", h);
            return;
        }
        if self.state == State::Open {
            h.on_message(kind, &self.p.msg);
        }
        // An idle connection keeps no message buffer.
        self.p.msg = Vec::new();
    }

    /// A complete compressed message: inflated (never past the message
    /// limit), validated, handed over.
    fn inflated(
        &mut self,
        kind: MessageKind,
        compressed: &[u8],
        inflater: Option<&mut Inflater>,
        h: &mut impl Handler,
    ) {
        // RSV1 is refused in the header without an inflater.
        let (Some(inf), State::Open) = (inflater, self.state) else {
            return;
        };
        match inf.inflate(compressed, self.limits.max_message) {
            Err(InflateError::TooBig) => self.fail(CloseCode::TOO_BIG, "message too big", h),
            Err(InflateError::Invalid) => {
                self.fail(CloseCode::INVALID_DATA, "invalid compressed data", h)
            }
            Ok(plain) if kind == MessageKind::Text && utf8::validate(plain).is_err() => {
                self.fail(CloseCode::INVALID_DATA, "invalid UTF-8 in text message", h)
            }
            Ok(plain) => h.on_message(kind, plain),
        }
        inf.release();
    }

    fn control(&mut self, opcode: OpCode, payload: &[u8], h: &mut impl Handler) {
        match opcode {
            OpCode::Ping if self.state == State::Open => h.send_control(OpCode::Pong, payload),
            OpCode::Pong => h.on_pong(payload),
            OpCode::Close => match parse_close_payload(payload) {
                Err(code) => {
                    let reason = if code == CloseCode::INVALID_DATA {
                        "invalid UTF-8 in close reason"
                    } else {
                        "invalid close frame"
                    };
                    self.fail(code, reason, h);
                }
                Ok(received) => {
                    if self.state == State::Open {
                        // Echo the peer's status code (not its reason).
                        let reply = match received {
                            ReceivedClose::NoStatus => ClosePayload::EMPTY,
                            ReceivedClose::Status(code, _) => ClosePayload::new(code, ""),
                        };
                        h.send_control(OpCode::Close, reply.as_bytes());
                    }
                    self.state = State::Done;
                    self.release_message();
                }
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec {
        messages: Vec<(MessageKind, Vec<u8>)>,
        control: Vec<(OpCode, Vec<u8>)>,
        /// Take whole messages through `copy_masked`, as the echo does.
        copying: bool,
    }

    impl Handler for Rec {
        fn on_message(&mut self, kind: MessageKind, payload: &[u8]) {
            self.messages.push((kind, payload.to_vec()));
        }
        fn send_control(&mut self, opcode: OpCode, payload: &[u8]) {
            self.control.push((opcode, payload.to_vec()));
        }
        fn copy_masked(
            &mut self,
            kind: MessageKind,
            masked: &[u8],
            mask: [u8; 4],
        ) -> Option<&[u8]> {
            if !self.copying {
                return None;
            }
            let mut v = Vec::new();
            crate::ws::frame::unmask_into(masked, mask, &mut v);
            self.messages.push((kind, v));
            self.messages.last().map(|(_, v)| &v[..])
        }
        fn withdraw_copy(&mut self) {
            self.messages.pop();
        }
    }

    impl Rec {
        fn close_code(&self) -> Option<u16> {
            self.control
                .iter()
                .find(|(op, _)| *op == OpCode::Close)
                .map(|(_, p)| {
                    if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        0
                    }
                })
        }
    }

    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

    fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        crate::ws::frame::encode_client_frame(fin, op, payload, MASK, &mut v);
        v
    }

    fn limits() -> Limits {
        Limits {
            max_message: 1 << 20,
            max_fragments: 64,
        }
    }

    /// Feeds `bytes` cut into pieces of `chunk` bytes.
    fn run(bytes: &[u8], chunk: usize) -> (Rec, State) {
        run_with(bytes, chunk, false)
    }

    /// As `run`, the handler optionally copying whole messages itself.
    fn run_with(bytes: &[u8], chunk: usize, copying: bool) -> (Rec, State) {
        let mut s = Session::new();
        let mut r = Rec {
            copying,
            ..Rec::default()
        };
        let mut buf = bytes.to_vec();
        let mut state = State::Open;
        for piece in buf.chunks_mut(chunk.max(1)) {
            state = s.feed(piece, limits(), &mut r);
        }
        (r, state)
    }

    fn every_chunking(bytes: &[u8], check: impl Fn(&Rec, State)) {
        for copying in [false, true] {
            for chunk in [1, 2, 3, 5, 7, 13, 64, 1000, bytes.len().max(1)] {
                let (r, st) = run_with(bytes, chunk, copying);
                check(&r, st);
            }
        }
    }

    #[test]
    fn single_frames_text_and_binary() {
        let mut input = frame(true, 1, "héllo".as_bytes());
        input.extend(frame(true, 2, &[0, 1, 2, 255]));
        input.extend(frame(true, 1, b""));
        every_chunking(&input, |r, st| {
            assert_eq!(st, State::Open);
            assert_eq!(
                r.messages,
                vec![
                    (MessageKind::Text, "héllo".as_bytes().to_vec()),
                    (MessageKind::Binary, vec![0, 1, 2, 255]),
                    (MessageKind::Text, vec![]),
                ]
            );
        });
    }

    #[test]
    fn large_frames_across_reads() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let input = frame(true, 2, &big);
        for chunk in [4096, 65536, 100_003] {
            let (r, _) = run(&input, chunk);
            assert_eq!(r.messages.len(), 1);
            assert_eq!(r.messages[0].1, big);
        }
    }

    #[test]
    fn fragments_with_interleaved_control() {
        let mut input = frame(false, 1, b"Hel");
        input.extend(frame(true, 9, b"ping!"));
        input.extend(frame(false, 0, b"lo, "));
        input.extend(frame(true, 10, b""));
        input.extend(frame(true, 0, "wörld".as_bytes()));
        every_chunking(&input, |r, st| {
            assert_eq!(st, State::Open);
            assert_eq!(
                r.messages,
                vec![(MessageKind::Text, "Hello, wörld".as_bytes().to_vec())]
            );
            assert_eq!(r.control, vec![(OpCode::Pong, b"ping!".to_vec())]);
        });
    }

    #[test]
    fn utf8_split_across_fragments_is_valid() {
        let s = "€𝄞".as_bytes();
        let mut input = frame(false, 1, &s[..2]);
        input.extend(frame(false, 0, &s[2..5]));
        input.extend(frame(true, 0, &s[5..]));
        every_chunking(&input, |r, _| {
            assert_eq!(r.messages, vec![(MessageKind::Text, s.to_vec())]);
        });
    }

    #[test]
    fn invalid_utf8_fails_fast_with_1007() {
        // The bad bytes are in the first fragment; the message never finishes.
        let input = frame(false, 1, b"ok\xff");
        every_chunking(&input, |r, st| {
            assert_eq!(st, State::Done);
            assert_eq!(r.close_code(), Some(1007));
            assert!(r.messages.is_empty());
        });
        let input = frame(
            true,
            1,
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
        );
        every_chunking(&input, |r, _| assert_eq!(r.close_code(), Some(1007)));
        // Truncated code point at the end of the message.
        let mut input = frame(false, 1, b"ab");
        input.extend(frame(true, 0, b"\xce"));
        every_chunking(&input, |r, _| assert_eq!(r.close_code(), Some(1007)));
    }

    #[test]
    fn protocol_errors_fail_with_1002() {
        let cases: Vec<Vec<u8>> = vec![
            vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'], // unmasked
            {
                let mut f = frame(true, 1, b"x");
                f[0] |= 0x40; // rsv1
                f
            },
            frame(true, 3, b""),     // reserved opcode
            frame(true, 0, b"cont"), // continuation without start
            [frame(false, 1, b"a"), frame(true, 1, b"b")].concat(), // new message mid-fragment
            frame(false, 9, b""),    // fragmented ping
            frame(true, 8, &[0x03]), // 1-byte close payload
            frame(true, 8, &[0x03, 0xED]), // close code 1005
        ];
        for c in cases {
            every_chunking(&c, |r, st| {
                assert_eq!(st, State::Done, "{c:?}");
                assert_eq!(r.close_code(), Some(1002), "{c:?}");
            });
        }
    }

    #[test]
    fn too_many_fragments_fail_with_1009() {
        // 64 frames are allowed (limits()); the 65th closes with 1009,
        // even though every fragment is empty.
        let mut bytes = frame(false, 1, b"");
        for _ in 0..62 {
            bytes.extend(frame(false, 0, b""));
        }
        bytes.extend(frame(true, 0, b"ok"));
        let (rec, state) = run(&bytes, 7);
        assert_eq!(state, State::Open);
        assert_eq!(rec.messages, vec![(MessageKind::Text, b"ok".to_vec())]);
        let mut flood = frame(false, 2, b"x");
        for _ in 0..100 {
            flood.extend(frame(false, 0, b""));
        }
        let (rec, state) = run(&flood, 13);
        assert_eq!(rec.close_code(), Some(1009));
        assert_ne!(state, State::Open);
        assert!(rec.messages.is_empty());
    }

    #[test]
    fn oversized_message_fails_with_1009_before_payload() {
        let mut s = Session::new();
        let mut r = Rec::default();
        // Just the header of a 2^40-byte frame: refused without any payload.
        let mut hdr = vec![0x82, 0xFF];
        hdr.extend_from_slice(&(1u64 << 40).to_be_bytes());
        hdr.extend_from_slice(&MASK);
        assert_eq!(s.feed(&mut hdr, Limits::bytes(100), &mut r), State::Done);
        assert_eq!(r.close_code(), Some(1009));
        assert_eq!(s.buffered_bytes(), 0);
        // Fragments that add up past the limit.
        let mut s = Session::new();
        let mut r = Rec::default();
        let mut input = frame(false, 2, &[0; 60]);
        input.extend(frame(true, 0, &[0; 60]));
        assert_eq!(s.feed(&mut input, Limits::bytes(100), &mut r), State::Done);
        assert_eq!(r.close_code(), Some(1009));
        assert!(r.messages.is_empty());
    }

    #[test]
    fn close_handshake_echoes_code() {
        let mut input = frame(true, 8, &[0x03, 0xE8, b'b', b'y', b'e']);
        input.extend(frame(true, 1, b"after close is ignored"));
        every_chunking(&input, |r, st| {
            assert_eq!(st, State::Done);
            assert_eq!(r.control, vec![(OpCode::Close, vec![0x03, 0xE8])]);
            assert!(r.messages.is_empty());
        });
        every_chunking(&frame(true, 8, b""), |r, st| {
            assert_eq!(st, State::Done);
            assert_eq!(r.control, vec![(OpCode::Close, vec![])]);
        });
        every_chunking(&frame(true, 8, &[0x0F, 0xA0, 0xC3]), |r, _| {
            assert_eq!(r.close_code(), Some(1007)); // code 4000, bad UTF-8 reason
        });
    }

    #[test]
    fn server_close_waits_for_reply() {
        let mut s = Session::new();
        let mut r = Rec::default();
        s.close(CloseCode::GOING_AWAY, "shutdown", &mut r);
        assert_eq!(s.state(), State::AwaitingClose);
        assert_eq!(r.close_code(), Some(1001));
        // Data and pings after our close are ignored; the reply completes it.
        let mut input = frame(true, 1, b"late");
        input.extend(frame(true, 9, b"p"));
        input.extend(frame(true, 8, &[0x03, 0xE9]));
        assert_eq!(s.feed(&mut input, limits(), &mut r), State::Done);
        assert!(r.messages.is_empty());
        assert_eq!(r.control.len(), 1);
    }

    /// A masked frame with RSV1 set.
    fn deflated(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = frame(fin, op, payload);
        v[0] |= crate::ws::frame::RSV1;
        v
    }

    fn compress(payload: &[u8]) -> Vec<u8> {
        let mut d = crate::ws::deflate::Deflater::new(6, 1);
        d.compress(WindowBits::MAX, payload).unwrap().to_vec()
    }

    /// Feeds `bytes` in pieces of `chunk` to a session that negotiated
    /// permessage-deflate.
    fn run_deflate(bytes: &[u8], chunk: usize, max: usize) -> (Rec, State) {
        let limits = Limits {
            max_message: max,
            max_fragments: 64,
        };
        let mut s = Session::negotiated(Some(WindowBits::MAX));
        let mut inf = Inflater::new();
        let mut r = Rec::default();
        let mut buf = bytes.to_vec();
        let mut state = State::Open;
        for piece in buf.chunks_mut(chunk.max(1)) {
            state = s.feed_with(piece, Some(&mut inf), limits, &mut r);
        }
        (r, state)
    }

    #[test]
    fn compressed_messages_whole_and_fragmented_at_every_split() {
        let text = "{\"k\":\"value\",\"n\":12345}".repeat(30);
        let packed = compress(text.as_bytes());
        let (a, b) = packed.split_at(packed.len() / 2);
        let mut wire = deflated(true, 1, &packed);
        wire.extend(deflated(false, 2, a));
        wire.extend(frame(true, 9, b"ping"));
        wire.extend(frame(true, 0, b));
        wire.extend(frame(true, 1, b"plain"));
        for chunk in [1, 3, 7, 64, wire.len()] {
            let (r, state) = run_deflate(&wire, chunk, 1 << 20);
            assert_eq!(state, State::Open, "chunk {chunk}");
            assert_eq!(r.messages.len(), 3);
            assert_eq!(r.messages[0], (MessageKind::Text, text.as_bytes().to_vec()));
            assert_eq!(
                r.messages[1],
                (MessageKind::Binary, text.as_bytes().to_vec())
            );
            assert_eq!(r.messages[2], (MessageKind::Text, b"plain".to_vec()));
            assert_eq!(r.control, vec![(OpCode::Pong, b"ping".to_vec())]);
        }
    }

    #[test]
    fn compression_errors_and_limits() {
        let packed = compress(b"hello hello hello hello");
        let bomb = compress(&vec![0u8; 1 << 20]);
        let bad_utf8 =
            compress(&[b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".as_slice(), &[0xFF]].concat());
        let mut rsv1_continuation = frame(false, 1, b"a");
        rsv1_continuation.extend(deflated(true, 0, b"b"));
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("rsv1 ping", deflated(true, 9, b""), 1002),
            ("rsv1 continuation", rsv1_continuation, 1002),
            ("garbage", deflated(true, 2, &[0xFF; 16]), 1007),
            ("bad utf-8", deflated(true, 1, &bad_utf8), 1007),
            ("bomb", deflated(true, 2, &bomb), 1009),
        ];
        for (what, wire, code) in cases {
            let (r, state) = run_deflate(&wire, wire.len(), 64 * 1024);
            assert_eq!((state, r.close_code()), (State::Done, Some(code)), "{what}");
            assert!(r.messages.is_empty(), "{what}");
        }
        // Without the extension (or without an inflater) RSV1 is 1002.
        let (r, _) = run(&deflated(true, 1, &packed), 1000);
        assert_eq!(r.close_code(), Some(1002));
        // An idle session's size is what every connection costs.
        assert!(std::mem::size_of::<Session>() <= 224);
    }
}
