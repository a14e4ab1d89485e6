//! One generator thread: a single io_uring loop driving its share of the
//! connections. Frames are encoded once up front; every connection keeps one
//! receive posted straight into its read buffer and at most one send in
//! flight (echo replies are sent from the prebuilt frames, never copied), and
//! everything a loop pass queues goes to the kernel in one `io_uring_enter`
//! that also collects the completions. The ring is the server's own
//! [`Ring`] (`SINGLE_ISSUER | DEFER_TASKRUN`), so the generator pays neither
//! an epoll wake-up per socket nor a syscall per read or write: on a shared
//! 2-CPU host the generator's core is otherwise the first thing to saturate,
//! and its queueing then shows up as server latency.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use io_uring::{opcode, squeue, types};
use ringcast::io::ring::Ring;

use crate::deflate::{self, Inflater};
use crate::payload;
use crate::stream::{self, OffsetCheck, Reply, Step};
use crate::tls::{self, Tls};
use crate::wire::{self, now_ns};

/// What the run does.
#[derive(Clone, Debug)]
pub(crate) enum Scenario {
    /// Closed loop: every connection keeps `in_flight` messages of `size`
    /// bytes outstanding on `/echo`.
    Echo {
        in_flight: usize,
        size: usize,
        binary: bool,
    },
    /// `subscribers` on `/broadcast`; `publishers` connections send `rate`
    /// messages/s between them (round-robin over one schedule) of `size`
    /// bytes, evenly paced (open loop). With `channel`, everyone is on `/ws`
    /// instead: subscribers subscribe to the channel (a connection counts as
    /// open once its subscription is acknowledged) and check that the
    /// channel's offsets arrive consecutively; the publishers send `publish`
    /// messages whose payload is a JSON string of `size` characters, each
    /// publisher on a different server core when the server's `welcome`
    /// says which core a connection landed on.
    Broadcast {
        rate: u64,
        size: usize,
        channel: Option<String>,
        publishers: usize,
    },
    /// Closed loop on `/ws`: every connection keeps `in_flight` `publish`
    /// messages to `channel` (a payload string of `size` characters, an
    /// `id` each) awaiting their ack, and sends the next as each ack (or
    /// error reply) comes back. Counts acks; latency is publish to ack.
    Publish {
        in_flight: usize,
        size: usize,
        channel: String,
    },
    /// Connections opened (at most `concurrency` handshakes at a time per
    /// thread) and held.
    Idle { concurrency: usize },
    /// Loops of connect → handshake → one echo → close.
    Churn,
}

/// Everything a worker needs to know; shared read-only.
pub(crate) struct Plan {
    /// The servers: connection N goes to `addrs[N % len]` ([`target_of`]).
    pub addrs: Vec<SocketAddr>,
    pub sources: Vec<IpAddr>,
    pub scenario: Scenario,
    /// Connections (or churn loops) per worker, indexed by worker id.
    pub conns_per_worker: Vec<usize>,
    /// Index of the first connection of each worker (source spreading).
    pub first_conn: Vec<usize>,
    /// Broadcast: the worker that hosts the publisher.
    pub publisher_worker: usize,
    /// Offer permessage-deflate on every connection but the broadcast
    /// publishers, and fail a connection whose server does not grant it.
    /// Echo (and churn) clients then send their messages compressed.
    pub deflate: bool,
    /// Plain upgrade requests are padded to the deflate offer's length
    /// (`--pad-upgrade`).
    pub pad_upgrade: bool,
    /// Message bodies are realistic JSON objects ([`payload::json`])
    /// instead of filler.
    pub json: bool,
    /// `wss://` targets: every connection speaks TLS.
    pub tls: Option<TlsPlan>,
}

/// What every TLS connection of the run shares.
pub(crate) struct TlsPlan {
    pub config: Arc<rustls::ClientConfig>,
    /// The name (SNI, certificate check) of each server, by target.
    pub names: Vec<rustls::pki_types::ServerName<'static>>,
}

/// TLS handshakes a worker completed, and what they negotiated.
#[derive(Default, Clone, Debug)]
pub(crate) struct TlsStats {
    /// Completed handshakes (whole run), and how many of them resumed a
    /// session.
    pub handshakes: u64,
    pub resumed: u64,
    /// The first connection's version, cipher suite, key exchange group
    /// and ALPN protocol.
    pub session: Option<tls::Session>,
    /// Connections that negotiated other parameters than the first
    /// ([`tls::Session::same_parameters`]).
    pub mixed: u64,
}

/// Distinct JSON bodies a publisher cycles through (`--payload json`).
const JSON_POOL: u64 = 64;

/// The server (index into [`Plan::addrs`]) of connection `number`:
/// round-robin, so `n` servers each get every n-th connection.
#[inline]
pub(crate) fn target_of(number: usize, n: usize) -> usize {
    number % n.max(1)
}

/// Part `i` of `total` split over `parts` as evenly as possible (the first
/// `total % parts` get one more): the connections per worker, and per
/// server under [`target_of`].
pub(crate) fn share(total: usize, parts: usize, i: usize) -> usize {
    let parts = parts.max(1);
    total / parts + usize::from(i < total % parts)
}

/// The first id the `publish` scenario sends: ids are written into a
/// prebuilt frame in place, so they keep a fixed width of 16 digits (a JSON
/// number has no leading zeros).
pub(crate) const FIRST_PUBLISH_ID: u64 = 1_000_000_000_000_000;

/// The `publish` scenario's frame template: the masked frame and where in
/// its payload the 16 id digits go. The payload is a string of `size`
/// characters, or `body` (a JSON value) when given.
pub(crate) fn publish_template(
    channel: &str,
    size: usize,
    body: Option<&[u8]>,
) -> (Vec<u8>, usize, usize) {
    let head = format!(r#"{{"type":"publish","channel":"{channel}","id":"#);
    let value = match body {
        Some(b) => String::from_utf8_lossy(b).into_owned(),
        None => format!("\"{}\"", "x".repeat(size)),
    };
    let json = format!(r#"{head}{FIRST_PUBLISH_ID},"payload":{value}}}"#);
    let f = wire::masked_frame(wire::TEXT, json.as_bytes());
    (f, wire::payload_offset(json.len()), head.len())
}

/// Coordination between the workers and the main thread.
#[derive(Default)]
pub(crate) struct Shared {
    pub stop: AtomicBool,
    /// Connections that completed their handshake.
    pub opened: AtomicUsize,
    /// Connections that failed to open.
    pub failed: AtomicUsize,
    /// Measurement window (monotonic ns); 0 until the main thread sets it.
    pub window_start: AtomicU64,
    pub window_end: AtomicU64,
    /// Broadcast: publishing starts once this is set (all subscribed).
    pub publish: AtomicBool,
    /// Broadcast: deliveries of in-window messages seen so far (all workers).
    pub delivered: AtomicU64,
    /// Broadcast: messages published inside the window.
    pub published_in_window: AtomicU64,
    /// Broadcast: the publishers are placed (or placement gave up) ...
    pub publishers_placed: AtomicBool,
    /// ... and this many are publishing.
    pub publishers_up: AtomicUsize,
    /// A failure that makes the run pointless (a server that did not grant
    /// permessage-deflate): the main thread stops waiting and reports it.
    pub fatal: Mutex<Option<String>>,
}

/// Publisher connections tried in search of distinct server cores; after
/// that, publishers may share a core (the report says so).
pub(crate) const PLACEMENT_ATTEMPTS: u32 = 64;

/// Channel-mode counters of the whole run (warm-up, window and drain: an
/// ordering failure is one whenever it happens).
#[derive(Default, Clone, Debug)]
pub(crate) struct StreamStats {
    /// Deliveries that carried an offset, and ones that did not (a server
    /// without channel streams).
    pub with_offset: u64,
    pub without_offset: u64,
    /// Offsets ahead of the previous + 1, and the offsets they skipped.
    pub gaps: u64,
    pub gap_offsets: u64,
    /// Offsets at or below the highest seen: duplicates and reorders.
    pub reorders: u64,
    /// `welcome` frames subscribers got, and their server cores.
    pub welcomes: u64,
    pub subscriber_cores: BTreeMap<u64, u64>,
    /// The publishers in use: the server core of each (`None`: the server
    /// sent no welcome, or not in channel mode).
    pub publisher_cores: Vec<Option<u64>>,
    /// ... and the server (index into [`Plan::addrs`]) of each.
    pub publisher_targets: Vec<usize>,
    /// Publisher connections opened to place them.
    pub publisher_attempts: u32,
    /// Placement ran out of attempts before finding distinct cores.
    pub placement_gave_up: bool,
    /// Publish acks, and the highest offset one carried.
    pub publish_acks: u64,
    pub last_offset: Option<u64>,
}

/// What a worker measured inside the window.
pub(crate) struct Outcome {
    /// Messages (echo: echoes received; broadcast: deliveries; publish:
    /// acks; churn: cycles).
    pub count: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// Latency in microseconds.
    pub latency_us: Histogram<u64>,
    /// Broadcast, publish: messages the publishers sent inside the window.
    pub published: u64,
    /// Broadcast: largest lateness of the publisher against its schedule.
    pub publisher_lag_us: u64,
    /// Errors: connects refused, unexpected closes, bad responses.
    pub errors: u64,
    /// Handshake durations (connect start to 101), microseconds.
    pub handshake_us: Histogram<u64>,
    /// Connections this worker opened successfully.
    pub opened: u64,
    /// When the last of them completed its handshake (monotonic ns).
    pub last_open_ns: u64,
    /// First error message, for the report.
    pub first_error: Option<String>,
    /// Channel mode: ordering, placement and welcome counters.
    pub stream: StreamStats,
    /// What came over the wire, and how it was compressed.
    pub wire: WireStats,
    /// The permessage-deflate a server granted (its answer, first seen).
    pub extension: Option<String>,
    /// Echo with deflate: the message the clients send, plain and as
    /// compressed (payload bytes), for the largest window granted.
    pub client_compressed: Option<(usize, usize)>,
    /// `wss://`: the handshakes.
    pub tls: TlsStats,
}

/// Bytes and messages received inside the window. The messages are the
/// counted ones (echoes, deliveries); `read_bytes` is everything read.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct WireStats {
    /// Bytes read from the sockets (but the broadcast publishers'): frame
    /// headers, replies, control frames, everything the kernel handed over.
    pub read_bytes: u64,
    /// Messages that arrived compressed (RSV1), their payload bytes as
    /// received, and once inflated.
    pub compressed: u64,
    pub compressed_wire_bytes: u64,
    pub compressed_bytes: u64,
    /// Messages that arrived plain, and their payload bytes.
    pub plain: u64,
    pub plain_bytes: u64,
    /// Echo: replies whose payload (inflated) is not the message sent.
    pub mismatches: u64,
    /// Echo replies and deliveries received inside the window (by arrival,
    /// whenever they were sent): what `read_bytes` carried, so the bytes
    /// read per message stay right when subscribers lag.
    pub arrived: u64,
    /// Whole run: compressed messages really inflated, and ones that were
    /// byte for byte one inflated just before (see [`Inflater`]).
    pub decoded: u64,
    pub reused: u64,
}

impl WireStats {
    pub(crate) fn add(&mut self, o: &WireStats) {
        self.read_bytes += o.read_bytes;
        self.compressed += o.compressed;
        self.compressed_wire_bytes += o.compressed_wire_bytes;
        self.compressed_bytes += o.compressed_bytes;
        self.plain += o.plain;
        self.plain_bytes += o.plain_bytes;
        self.mismatches += o.mismatches;
        self.arrived += o.arrived;
        self.decoded += o.decoded;
        self.reused += o.reused;
    }

    /// One counted message: `wire` payload bytes received, `plain` once
    /// inflated (the same when it came plain).
    #[inline]
    fn message(&mut self, compressed: bool, wire: usize, plain: usize) {
        if compressed {
            self.compressed += 1;
            self.compressed_wire_bytes += wire as u64;
            self.compressed_bytes += plain as u64;
        } else {
            self.plain += 1;
            self.plain_bytes += wire as u64;
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Phase {
    /// Connect and upgrade request submitted, waiting for the 101.
    Handshake,
    Open,
    /// Churn: close frame sent, waiting for the server's.
    Closing,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Role {
    Echo,
    Subscriber,
    Publisher,
    /// The `publish` scenario's closed-loop publisher.
    Publish,
    Idle,
    Churn,
}

/// What the send in flight (or the partly sent one) carries.
#[derive(Clone, Copy, Debug)]
enum Outgoing {
    /// `Conn::wfl[off..]`.
    Owned { off: usize },
    /// `frames` prebuilt echo frames of the connection's batch, `off` bytes
    /// of them already sent.
    Echo { frames: usize, off: usize },
}

/// Echo (churn) frames prebuilt back to back: the message, plain or
/// compressed for one window size. Never changed once built, because sends
/// point straight into `bytes` (a batch added later moves the box, not the
/// bytes).
struct EchoBatch {
    /// The window the frames were compressed for; 0: plain.
    window: u8,
    bytes: Box<[u8]>,
    frame_len: usize,
}

struct Conn {
    fd: OwnedFd,
    /// The server it is connected to (index into [`Plan::addrs`]).
    target: usize,
    phase: Phase,
    role: Role,
    /// Read buffer, zeroed once when it grows (never per read): bytes
    /// `rstart..rend` are unprocessed input. Never touched while a receive
    /// into it is in flight.
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Bytes queued behind the send in flight.
    wbuf: Vec<u8>,
    /// Bytes of the send in flight (left alone until it completes).
    wfl: Vec<u8>,
    outgoing: Option<Outgoing>,
    /// Echo frames owed to the server, sent from the prebuilt batch ...
    echo_owed: usize,
    /// ... this one (index into `Worker::batches`).
    batch: usize,
    /// permessage-deflate was negotiated.
    deflate: bool,
    /// Operations the kernel holds for this connection.
    connect_armed: bool,
    recv_armed: bool,
    send_armed: bool,
    /// Given up: the socket is shut down and the slot is freed once the
    /// kernel has returned every operation (their buffers live here).
    dead: bool,
    /// Echo: send times of messages in flight, oldest first.
    sent: VecDeque<u64>,
    started: u64,
    /// Channel subscriber: the offsets seen so far.
    offsets: OffsetCheck,
    /// Publish: the publishes awaiting their ack (id, send time), oldest
    /// first, and the next id to use.
    unacked: VecDeque<(u64, u64)>,
    next_id: u64,
    /// `wss://`: the TLS state. Receives then land in its `rx` and sends
    /// leave from its `tx` (`wfl` and `outgoing` stay unused); the read
    /// buffer holds the decrypted stream, so everything above the socket
    /// operations is the plain path's.
    tls: Option<Box<Tls>>,
}

impl Conn {
    fn armed(&self) -> bool {
        self.connect_armed || self.recv_armed || self.send_armed
    }
}

/// A live (not given-up) connection in slot `t`.
#[inline]
fn live(conns: &mut [Option<Conn>], t: usize) -> Option<&mut Conn> {
    conns
        .get_mut(t)
        .and_then(Option::as_mut)
        .filter(|c| !c.dead)
}

/// Initial read buffer per connection; grows (doubling) only when a frame
/// does not fit.
const READ_BUF: usize = 4096;
/// Echo connections start with room for everything they keep in flight, up
/// to this much, so one receive takes a whole burst.
const ECHO_READ_BUF_MAX: usize = 64 * 1024;
/// Longest sleep in the ring, so a stop request is noticed promptly.
const MAX_WAIT: Duration = Duration::from_millis(5);

/// Completion tags: the low two bits of `user_data`, the slot above them.
const RECV: u64 = 0;
const SEND: u64 = 1;
const CONNECT: u64 = 2;

#[inline]
/// A `send` of `bytes` on `fd` for connection slot `t` (no SIGPIPE); the
/// bytes stay in place until its completion.
fn send_sqe(fd: &OwnedFd, bytes: &[u8], t: usize) -> io_uring::squeue::Entry {
    opcode::Send::new(
        types::Fd(fd.as_raw_fd()),
        bytes.as_ptr(),
        bytes.len() as u32,
    )
    .flags(libc::MSG_NOSIGNAL)
    .build()
    .user_data(tag(t, SEND))
}

fn tag(slot: usize, kind: u64) -> u64 {
    (slot as u64) << 2 | kind
}

/// One generator thread.
pub(crate) struct Worker {
    /// First field, so it is dropped (and its operations cancelled) before
    /// the buffers they point into.
    ring: Ring,
    id: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    /// The server addresses (by target), kept here because connect
    /// operations point at them; never changed after start-up.
    servers: Vec<socket2::SockAddr>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Connections still to open (idle/echo/broadcast) or loops (churn).
    to_open: usize,
    connecting: usize,
    next_number: usize,
    /// The upgrade request for each server (its Host, the scenario's path).
    requests: Vec<Vec<u8>>,
    /// Channels mode: the subscribe frame, the start of a delivery up to
    /// its offset (`{"type":"message","channel":"C",`), and the ping a
    /// publisher candidate sends to learn whether a welcome comes first.
    channel_mode: bool,
    subscribe_frame: Vec<u8>,
    message_prefix: Vec<u8>,
    ping_frame: Vec<u8>,
    /// Echo: `echo_frames` copies of the message frame, back to back: the
    /// plain batch first, then one per window granted with deflate.
    batches: Vec<EchoBatch>,
    echo_frames: usize,
    /// The echo message (the payload every reply must carry) and its opcode.
    echo_payload: Vec<u8>,
    echo_opcode: u8,
    /// The upgrade requests offering permessage-deflate (empty without
    /// `--deflate`), one per server.
    deflate_requests: Vec<Vec<u8>>,
    /// Inflates every compressed message this thread receives.
    inflater: Inflater,
    read_buf: usize,
    /// Broadcast publisher (and the `publish` scenario): its frame, or a
    /// pool of them to cycle through (JSON bodies), all of one length.
    pub_frames: Vec<Vec<u8>>,
    /// The sequence number and send time go in as 32 hex digits (a /ws
    /// channel or JSON bodies), not as binary.
    pub_hex: bool,
    pub_off: usize,
    /// Where in the payload the sequence number and time go (the mask
    /// phase follows the payload offset).
    pub_at: usize,
    /// Publishers in use (connection slots), in schedule order.
    pubs: Vec<usize>,
    /// Publishers wanted.
    pubs_wanted: usize,
    /// Placing publishers: the candidate connection waiting for its
    /// welcome (or for the pong that says there is none).
    placing: bool,
    probe: Option<usize>,
    /// The server core of each of `pubs`, and its server.
    pub_cores: Vec<Option<u64>>,
    pub_targets: Vec<usize>,
    /// Slots of the shared schedule so far (round-robin over `pubs`).
    pub_slot: u64,
    pub_seq: u64,
    pub_active: bool,
    pub_interval_ns: u64,
    pub_next_ns: u64,
    out: Outcome,
    delivered_unreported: u64,
    payload_len: usize,
}

impl Worker {
    /// A worker for thread `id`.
    pub(crate) fn new(id: usize, plan: Arc<Plan>, shared: Arc<Shared>) -> io::Result<Worker> {
        // JSON bodies vary by thread and by message (a pool per thread).
        let json_body = |size: usize, k: u64| payload::json(size, (id as u64) << 32 | k);
        let (echo_payload, echo_opcode, echo_frames, payload_len) = match plan.scenario {
            Scenario::Echo {
                in_flight,
                size,
                binary,
            } => {
                let (payload, op) = if plan.json {
                    (json_body(size, 0), wire::TEXT)
                } else if binary {
                    ((0..size).map(|i| (i * 7 + 3) as u8).collect(), wire::BINARY)
                } else {
                    (vec![b'x'; size], wire::TEXT)
                };
                let n = payload.len();
                (payload, op, in_flight.max(1), n)
            }
            Scenario::Churn => (vec![b'x'; 32], wire::TEXT, 1, 32),
            Scenario::Broadcast { size, .. } | Scenario::Publish { size, .. } => {
                let size = if plan.json {
                    size.max(payload::MIN_JSON)
                } else {
                    size
                };
                (Vec::new(), wire::TEXT, 0, size)
            }
            Scenario::Idle { .. } => (Vec::new(), wire::TEXT, 0, 0),
        };
        let plain_batch = if echo_frames > 0 {
            let f = wire::masked_frame(echo_opcode, &echo_payload);
            EchoBatch {
                window: 0,
                bytes: f.repeat(echo_frames).into_boxed_slice(),
                frame_len: f.len(),
            }
        } else {
            EchoBatch {
                window: 0,
                bytes: Box::default(),
                frame_len: 0,
            }
        };
        let channel = match &plan.scenario {
            Scenario::Broadcast {
                channel: Some(c), ..
            } => Some(c.clone()),
            _ => None,
        };
        let read_buf = match plan.scenario {
            Scenario::Echo { .. } => plain_batch.bytes.len().clamp(READ_BUF, ECHO_READ_BUF_MAX),
            _ => READ_BUF,
        };
        let bodies: Vec<Vec<u8>> = match plan.scenario {
            Scenario::Broadcast { size, .. } | Scenario::Publish { size, .. } if plan.json => {
                (0..JSON_POOL).map(|k| json_body(size, k)).collect()
            }
            _ => Vec::new(),
        };
        let mut pub_hex = channel.is_some() || plan.json;
        let mut pub_frames = Vec::new();
        let (mut pub_off, mut pub_at) = (0, 0);
        match (&plan.scenario, &channel) {
            // The sequence number and send time go into the payload string
            // (or the JSON body's id) as 32 hex digits, the rest is padding
            // (or the body).
            (Scenario::Broadcast { size, .. }, Some(c)) => {
                let head = format!(r#"{{"type":"publish","channel":"{c}","payload":"#);
                let values: Vec<String> = if bodies.is_empty() {
                    vec![format!("\"{}\"", "0".repeat((*size).max(32)))]
                } else {
                    bodies
                        .iter()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .collect()
                };
                for v in values {
                    let json = format!("{head}{v}}}");
                    pub_off = wire::payload_offset(json.len());
                    pub_frames.push(wire::masked_frame(wire::TEXT, json.as_bytes()));
                }
                pub_at = head.len()
                    + if bodies.is_empty() {
                        1
                    } else {
                        payload::ID_PREFIX.len()
                    };
            }
            (Scenario::Broadcast { .. }, None) if !bodies.is_empty() => {
                for b in &bodies {
                    pub_off = wire::payload_offset(b.len());
                    pub_frames.push(wire::masked_frame(wire::TEXT, b));
                }
                pub_at = payload::ID_PREFIX.len();
            }
            (Scenario::Broadcast { size, .. }, None) => {
                let size = (*size).max(16);
                pub_frames.push(wire::masked_frame(wire::BINARY, &vec![0u8; size]));
                pub_off = wire::payload_offset(size);
            }
            // The id's 16 digits are rewritten for every publish.
            (Scenario::Publish { size, channel, .. }, _) => {
                pub_hex = false;
                if bodies.is_empty() {
                    let (f, off, at) = publish_template(channel, *size, None);
                    pub_frames.push(f);
                    (pub_off, pub_at) = (off, at);
                } else {
                    for b in &bodies {
                        let (f, off, at) = publish_template(channel, *size, Some(b));
                        pub_frames.push(f);
                        (pub_off, pub_at) = (off, at);
                    }
                }
            }
            _ => {}
        }
        let path = match &plan.scenario {
            Scenario::Broadcast { channel: None, .. } => "/broadcast",
            Scenario::Broadcast { .. } | Scenario::Publish { .. } => "/ws",
            Scenario::Echo { .. } | Scenario::Idle { .. } | Scenario::Churn => "/echo",
        };
        let request_set = |deflate: bool| -> Vec<Vec<u8>> {
            plan.addrs
                .iter()
                .map(|a| wire::upgrade_request(&a.to_string(), path, deflate, plan.pad_upgrade))
                .collect()
        };
        let requests = request_set(false);
        let deflate_requests = if plan.deflate {
            request_set(true)
        } else {
            Vec::new()
        };
        let (subscribe_frame, message_prefix) = match &channel {
            Some(c) => (
                wire::masked_frame(
                    wire::TEXT,
                    format!(r#"{{"type":"subscribe","channel":"{c}"}}"#).as_bytes(),
                ),
                stream::message_head(c),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let pubs_wanted = match plan.scenario {
            Scenario::Broadcast { publishers, .. } => publishers.max(1),
            _ => 0,
        };
        // Room for a pass that opens 256 connections (3 operations each) or
        // answers every connection; a fuller queue is flushed early by push().
        let ring = Ring::new(4096)?;
        Ok(Worker {
            ring,
            id,
            to_open: plan.conns_per_worker[id],
            next_number: plan.first_conn[id],
            servers: plan.addrs.iter().map(|&a| a.into()).collect(),
            plan,
            shared,
            conns: Vec::new(),
            free: Vec::new(),
            connecting: 0,
            requests,
            deflate_requests,
            channel_mode: channel.is_some(),
            subscribe_frame,
            message_prefix,
            ping_frame: wire::masked_frame(wire::TEXT, br#"{"type":"ping","id":0}"#),
            batches: vec![plain_batch],
            echo_frames,
            echo_payload,
            echo_opcode,
            inflater: Inflater::new(),
            read_buf,
            pub_frames,
            pub_hex,
            pub_off,
            pub_at,
            pubs: Vec::new(),
            pubs_wanted,
            placing: false,
            probe: None,
            pub_cores: Vec::new(),
            pub_targets: Vec::new(),
            pub_slot: 0,
            pub_seq: 0,
            pub_active: false,
            pub_interval_ns: 0,
            pub_next_ns: 0,
            out: Outcome {
                count: 0,
                bytes: 0,
                latency_us: histogram(),
                published: 0,
                publisher_lag_us: 0,
                errors: 0,
                handshake_us: histogram(),
                opened: 0,
                last_open_ns: 0,
                first_error: None,
                stream: StreamStats::default(),
                wire: WireStats::default(),
                extension: None,
                client_compressed: None,
                tls: TlsStats::default(),
            },
            delivered_unreported: 0,
            payload_len,
        })
    }

    /// The echo batch for a connection granted deflate with a client window
    /// of `window` bits: the message compressed once for that window, or
    /// the plain batch when compressing does not make it smaller.
    fn batch_for(&mut self, window: u8) -> usize {
        if self.echo_frames == 0 {
            return 0;
        }
        if let Some(i) = self.batches.iter().position(|b| b.window == window) {
            return i;
        }
        let Some(packed) = deflate::compress(window, &self.echo_payload) else {
            // Sent plain: remembered as this window's batch too.
            let plain = &self.batches[0];
            let (bytes, frame_len) = (plain.bytes.clone(), plain.frame_len);
            self.batches.push(EchoBatch {
                window,
                bytes,
                frame_len,
            });
            return self.batches.len() - 1;
        };
        let f = wire::masked_compressed_frame(self.echo_opcode, &packed);
        self.out
            .client_compressed
            .get_or_insert((self.echo_payload.len(), packed.len()));
        self.batches.push(EchoBatch {
            window,
            bytes: f.repeat(self.echo_frames).into_boxed_slice(),
            frame_len: f.len(),
        });
        self.batches.len() - 1
    }

    /// Runs until the main thread says stop.
    pub(crate) fn run(mut self) -> Outcome {
        let is_publisher_host = matches!(self.plan.scenario, Scenario::Broadcast { .. })
            && self.id == self.plan.publisher_worker;
        let mut publisher_pending = is_publisher_host;
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.open_more();
            if publisher_pending && self.shared.publish.load(Ordering::Acquire) {
                publisher_pending = false;
                self.start_publishers();
            }
            if self.placing && self.probe.is_none() {
                self.next_probe();
            }
            let mut wait = MAX_WAIT;
            if self.pub_active {
                let now = now_ns();
                if self.pub_next_ns <= now {
                    self.publish_due(now);
                }
                wait = wait.min(Duration::from_nanos(
                    self.pub_next_ns.saturating_sub(now_ns()),
                ));
            }
            // One syscall: submit what this pass queued, sleep until a
            // completion (or the next publish slot), run the completions.
            if let Err(e) = self.ring.wait(Some(wait)) {
                self.error(format!("io_uring_enter: {e}"));
                break;
            }
            while let Some(cqe) = self.ring.next_completion() {
                self.complete(cqe.user_data(), cqe.result());
            }
            if self.delivered_unreported > 0 {
                self.shared.delivered.fetch_add(
                    std::mem::take(&mut self.delivered_unreported),
                    Ordering::Relaxed,
                );
            }
        }
        self.close_all();
        self.out.wire.decoded = self.inflater.decoded;
        self.out.wire.reused = self.inflater.reused;
        self.out
    }

    fn window(&self, t: u64) -> bool {
        let s = self.shared.window_start.load(Ordering::Relaxed);
        s != 0 && t >= s && t < self.shared.window_end.load(Ordering::Relaxed)
    }

    fn error(&mut self, msg: String) {
        self.out.errors += 1;
        if self.out.first_error.is_none() {
            self.out.first_error = Some(msg);
        }
    }

    /// Connection `t` failed in a way that makes the run pointless: the
    /// main thread reports `msg` and stops.
    fn fatal(&mut self, t: usize, msg: String) {
        if let Ok(mut f) = self.shared.fatal.lock() {
            f.get_or_insert_with(|| msg.clone());
        }
        self.fail(t, msg);
    }

    /// Queues an operation; a failure here means the ring itself is broken.
    fn push(&mut self, sqe: &squeue::Entry) -> bool {
        // SAFETY: every buffer an operation points to (a connection's read
        // or write buffer, the echo batch, the server address) stays put
        // until its completion: connections are freed only when nothing is
        // armed, and the ring is dropped before the worker's buffers.
        match unsafe { self.ring.push(sqe) } {
            Ok(()) => true,
            Err(e) => {
                self.error(format!("io_uring submit: {e}"));
                false
            }
        }
    }

    // ----- connection set-up --------------------------------------------

    fn open_more(&mut self) {
        let limit = match self.plan.scenario {
            Scenario::Idle { concurrency } => concurrency.max(1),
            _ => 256,
        };
        while self.to_open > 0 && self.connecting < limit {
            self.to_open -= 1;
            let number = self.next_number;
            self.next_number += 1;
            let target = target_of(number, self.servers.len());
            let role = match self.plan.scenario {
                Scenario::Echo { .. } => Role::Echo,
                Scenario::Broadcast { .. } => Role::Subscriber,
                Scenario::Publish { .. } => Role::Publish,
                Scenario::Idle { .. } => Role::Idle,
                Scenario::Churn => Role::Churn,
            };
            if let Err(e) = self.connect(number, target, role) {
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
                self.error(format!("connect: {e}"));
                if matches!(self.plan.scenario, Scenario::Churn) {
                    // Keep the loop count: retry this slot later.
                    self.to_open += 1;
                    break;
                }
            }
        }
    }

    /// Opens connection `number` to server `target` for `role`: connect
    /// and upgrade request go to the kernel as one linked pair (the request
    /// is sent once connected). With `--deflate` the request offers
    /// permessage-deflate, except a broadcast publisher's (it only sends).
    fn connect(&mut self, number: usize, target: usize, role: Role) -> io::Result<usize> {
        let domain = if self.plan.addrs[target].is_ipv6() {
            socket2::Domain::IPV6
        } else {
            socket2::Domain::IPV4
        };
        // A blocking socket: io_uring waits for readiness itself.
        let s = socket2::Socket::new(domain, socket2::Type::STREAM.cloexec(), None)?;
        s.set_tcp_nodelay(true)?;
        if self.plan.sources.len() > 1 {
            let ip = self.plan.sources[number % self.plan.sources.len()];
            // Let connect() choose the port, so each source address has its
            // own 28k ports towards the server.
            // SAFETY: setsockopt on our own socket with an int option.
            unsafe {
                let one: libc::c_int = 1;
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            s.bind(&SocketAddr::new(ip, 0).into())?;
        }
        let fd: OwnedFd = s.into();
        let request = if self.plan.deflate && role != Role::Publisher {
            self.deflate_requests[target].clone()
        } else {
            self.requests[target].clone()
        };
        // TLS: the request goes into rustls, which sends it once the
        // handshake is done; what the connect is linked to is the
        // ClientHello.
        let (request, tls) = match &self.plan.tls {
            None => (request, None),
            Some(p) => {
                let mut tls = Tls::new(&p.config, p.names[target].clone(), self.read_buf)?;
                tls.write(&request)?;
                if !tls.fill()? {
                    return Err(io::Error::other("TLS: no ClientHello to send"));
                }
                (Vec::new(), Some(Box::new(tls)))
            }
        };
        let outgoing = tls.is_none().then_some(Outgoing::Owned { off: 0 });
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let raw = fd.as_raw_fd();
        self.conns[idx] = Some(Conn {
            fd,
            target,
            phase: Phase::Handshake,
            role,
            rbuf: vec![0; self.read_buf],
            rstart: 0,
            rend: 0,
            wbuf: Vec::new(),
            wfl: request,
            outgoing,
            echo_owed: 0,
            batch: 0,
            deflate: false,
            connect_armed: true,
            recv_armed: false,
            send_armed: false,
            dead: false,
            sent: VecDeque::new(),
            started: now_ns(),
            offsets: OffsetCheck::default(),
            unacked: VecDeque::new(),
            next_id: FIRST_PUBLISH_ID,
            tls,
        });
        self.connecting += 1;
        let server = &self.servers[target];
        let sqe = opcode::Connect::new(types::Fd(raw), server.as_ptr().cast(), server.len())
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(tag(idx, CONNECT));
        if !self.push(&sqe) {
            return Err(io::Error::other("io_uring submission failed"));
        }
        // The request, sent once the connect succeeds (cancelled if not).
        self.send_now(idx);
        Ok(idx)
    }

    fn start_publishers(&mut self) {
        let Scenario::Broadcast { rate, .. } = self.plan.scenario.clone() else {
            return;
        };
        self.pub_interval_ns = 1_000_000_000 / rate.max(1);
        self.placing = true;
    }

    /// Opens the next publisher candidate, or ends placement: when enough
    /// publishers are in use, or when connections keep failing (a bound
    /// past [`PLACEMENT_ATTEMPTS`], which only limits the search for
    /// distinct cores).
    fn next_probe(&mut self) {
        let attempts = self.out.stream.publisher_attempts;
        if self.pubs.len() >= self.pubs_wanted
            || attempts >= PLACEMENT_ATTEMPTS + 4 * self.pubs_wanted as u32
        {
            return self.placed();
        }
        self.out.stream.publisher_attempts += 1;
        // The publishers are more /broadcast (or /ws) connections on this
        // worker, spread round-robin over the servers like the subscribers;
        // the number only picks a source address.
        let target = target_of(self.pubs.len(), self.servers.len());
        match self.connect(usize::MAX / 2 + attempts as usize, target, Role::Publisher) {
            Ok(i) => self.probe = Some(i),
            Err(e) => self.error(format!("publisher connect: {e}")),
        }
    }

    /// The candidate `t` learnt its server core (`None`: the server sends no
    /// welcome, or this is `/broadcast`): kept as a publisher if no other
    /// is on that core of that server, or if the search for distinct cores
    /// is over.
    fn placement_reply(&mut self, t: usize, core: Option<u64>) {
        if self.probe != Some(t) {
            return;
        }
        self.probe = None;
        let Some(target) = live(&mut self.conns, t).map(|c| c.target) else {
            return;
        };
        let taken = core.is_some()
            && self
                .pub_cores
                .iter()
                .zip(&self.pub_targets)
                .any(|(&c, &tg)| c == core && tg == target);
        if taken && self.out.stream.publisher_attempts < PLACEMENT_ATTEMPTS {
            // On a core that already has one: close it and try another.
            return self.drop_conn(t);
        }
        if taken {
            self.out.stream.placement_gave_up = true;
        }
        self.pub_cores.push(core);
        self.pub_targets.push(target);
        self.pubs.push(t);
        let now = now_ns();
        self.out.opened += 1;
        self.out.last_open_ns = now;
        self.shared.opened.fetch_add(1, Ordering::Relaxed);
        if self.pubs.len() >= self.pubs_wanted {
            self.placed();
        }
    }

    /// Placement is over: publishing starts with the publishers there are.
    fn placed(&mut self) {
        self.placing = false;
        self.out.stream.publisher_cores = self.pub_cores.clone();
        self.out.stream.publisher_targets = self.pub_targets.clone();
        if !self.pubs.is_empty() {
            self.pub_active = true;
            self.pub_next_ns = now_ns();
        }
        self.shared
            .publishers_up
            .store(self.pubs.len(), Ordering::Relaxed);
        self.shared.publishers_placed.store(true, Ordering::Release);
    }

    /// Sends every message whose slot in the schedule has come, each on
    /// the next publisher in turn.
    fn publish_due(&mut self, now: u64) {
        let n = self.pubs.len();
        if n == 0 {
            return;
        }
        let mut batches = vec![Vec::new(); n];
        while self.pub_next_ns <= now {
            let lag = (now - self.pub_next_ns) / 1000;
            self.out.publisher_lag_us = self.out.publisher_lag_us.max(lag);
            self.pub_next_ns += self.pub_interval_ns;
            let mut f =
                self.pub_frames[(self.pub_seq % self.pub_frames.len() as u64) as usize].clone();
            if self.pub_hex {
                let hex = format!("{:016x}{now:016x}", self.pub_seq);
                wire::write_masked(&mut f, self.pub_off, self.pub_at, hex.as_bytes());
            } else {
                wire::write_masked(&mut f, self.pub_off, 0, &self.pub_seq.to_le_bytes());
                wire::write_masked(&mut f, self.pub_off, 8, &now.to_le_bytes());
            }
            self.pub_seq += 1;
            if self.window(now) {
                self.out.published += 1;
                self.shared
                    .published_in_window
                    .fetch_add(1, Ordering::Relaxed);
            }
            batches[(self.pub_slot % n as u64) as usize].extend_from_slice(&f);
            self.pub_slot += 1;
        }
        for (k, batch) in batches.iter().enumerate() {
            if !batch.is_empty() {
                self.send(self.pubs[k], batch);
            }
        }
    }

    // ----- I/O ------------------------------------------------------------

    /// Routes one completion.
    fn complete(&mut self, user_data: u64, res: i32) {
        let t = (user_data >> 2) as usize;
        let kind = user_data & 3;
        let Some(c) = self.conns.get_mut(t).and_then(Option::as_mut) else {
            return;
        };
        match kind {
            RECV => c.recv_armed = false,
            SEND => c.send_armed = false,
            _ => c.connect_armed = false,
        }
        if c.dead {
            if !c.armed() {
                self.conns[t] = None;
                self.free.push(t);
            }
            return;
        }
        match kind {
            RECV => self.on_recv(t, res),
            SEND => self.on_sent(t, res),
            _ if res < 0 => self.fail(t, format!("connect: {}", os_error(res))),
            _ => self.arm_recv(t),
        }
    }

    fn on_recv(&mut self, t: usize, res: i32) {
        match res {
            0 => self.on_eof(t),
            n if n > 0 => {
                let in_window = self.window(now_ns());
                let mut tls_input = false;
                if let Some(c) = live(&mut self.conns, t) {
                    tls_input = c.tls.is_some();
                    if !tls_input {
                        c.rend += n as usize;
                    }
                    // A broadcast publisher's own copies are not deliveries.
                    // Over TLS the bytes read are records (ciphertext).
                    if in_window && c.role != Role::Publisher {
                        self.out.wire.read_bytes += n as u64;
                    }
                }
                if tls_input {
                    return self.on_tls_recv(t, n as usize);
                }
                self.process(t);
                self.arm_recv(t);
            }
            e if -e == libc::EINTR || -e == libc::EAGAIN => self.arm_recv(t),
            e => self.fail(t, format!("read: {}", os_error(e))),
        }
    }

    /// TLS: `n` bytes of records arrived in the connection's `rx`. The
    /// plaintext goes into the read buffer and through [`Self::process`] as
    /// on the plain path; then whatever rustls has to send (handshake
    /// messages, the request held until the handshake is over, alerts)
    /// goes out with what processing queued, and the next receive is
    /// posted. A TLS error during the handshake is the setup's (a wrong
    /// CA, version or name), so it ends the run.
    fn on_tls_recv(&mut self, t: usize, n: usize) {
        let Some(c) = live(&mut self.conns, t) else {
            return;
        };
        let Some(tls) = c.tls.as_deref_mut() else {
            return;
        };
        let result = tls.received(n, &mut c.rbuf, &mut c.rstart, &mut c.rend);
        let session = tls.established();
        let target = c.target;
        if let Some(s) = session {
            let st = &mut self.out.tls;
            st.handshakes += 1;
            st.resumed += u64::from(s.resumed);
            let differs = st
                .session
                .as_ref()
                .is_some_and(|first| !first.same_parameters(&s));
            st.mixed += u64::from(differs);
            if st.session.is_none() {
                st.session = Some(s);
            }
        }
        let received = match result {
            Ok(r) => r,
            Err(f) if f.handshaking => {
                let addr = self.plan.addrs[target];
                return self.fatal(
                    t,
                    format!("TLS handshake with {addr} failed: {}", f.message),
                );
            }
            Err(f) => return self.fail(t, format!("TLS: {}", f.message)),
        };
        if received.plaintext > 0 {
            self.process(t);
        }
        if received.closed && live(&mut self.conns, t).is_some() {
            // close_notify: the same as the server closing the socket.
            return self.on_eof(t);
        }
        self.send_now(t);
        self.arm_recv(t);
    }

    /// Posts the next receive into the free end of the read buffer (TLS:
    /// into the connection's `rx`, consumed whole on completion).
    fn arm_recv(&mut self, t: usize) {
        let Some(c) = live(&mut self.conns, t) else {
            return;
        };
        if c.recv_armed {
            return;
        }
        if let Some(tls) = c.tls.as_deref_mut() {
            let sqe = opcode::Recv::new(
                types::Fd(c.fd.as_raw_fd()),
                tls.rx.as_mut_ptr(),
                tls.rx.len() as u32,
            )
            .build()
            .user_data(tag(t, RECV));
            c.recv_armed = true;
            self.push(&sqe);
            return;
        }
        if c.rstart == c.rend {
            c.rstart = 0;
            c.rend = 0;
        }
        // Make room: move unprocessed bytes to the front, or grow.
        if c.rend == c.rbuf.len() {
            if c.rstart > 0 {
                c.rbuf.copy_within(c.rstart..c.rend, 0);
                c.rend -= c.rstart;
                c.rstart = 0;
            } else {
                let n = c.rbuf.len() * 2;
                c.rbuf.resize(n, 0);
            }
        }
        let room = &mut c.rbuf[c.rend..];
        let sqe = opcode::Recv::new(
            types::Fd(c.fd.as_raw_fd()),
            room.as_mut_ptr(),
            room.len() as u32,
        )
        .build()
        .user_data(tag(t, RECV));
        c.recv_armed = true;
        self.push(&sqe);
    }

    /// Queues bytes behind whatever is being sent.
    fn send(&mut self, t: usize, bytes: &[u8]) {
        let Some(c) = live(&mut self.conns, t) else {
            return;
        };
        c.wbuf.extend_from_slice(bytes);
        self.send_now(t);
    }

    /// Publish: sends `n` more publishes on `t`, each with the connection's
    /// next id, remembered with its send time until the ack.
    fn send_publishes(&mut self, t: usize, n: usize, now: u64) {
        let in_window = self.window(now);
        let (off, at) = (self.pub_off, self.pub_at);
        let Some(c) = live(&mut self.conns, t) else {
            return;
        };
        for _ in 0..n {
            let id = c.next_id;
            c.next_id += 1;
            let start = c.wbuf.len();
            c.wbuf
                .extend_from_slice(&self.pub_frames[(id % self.pub_frames.len() as u64) as usize]);
            wire::write_masked(&mut c.wbuf[start..], off, at, id.to_string().as_bytes());
            c.unacked.push_back((id, now));
        }
        if in_window {
            self.out.published += n as u64;
        }
        self.send_now(t);
    }

    /// Owes the server `n` more echo frames (sent from the prebuilt batch).
    fn send_echoes(&mut self, t: usize, n: usize) {
        let Some(c) = live(&mut self.conns, t) else {
            return;
        };
        c.echo_owed += n;
        self.send_now(t);
    }

    /// Starts the next send unless one is in flight: the rest of a partly
    /// sent piece first, then queued bytes, then owed echo frames.
    fn send_now(&mut self, t: usize) {
        let frames_per_batch = self.echo_frames;
        let Some(c) = live(&mut self.conns, t) else {
            return;
        };
        let batch = &self.batches[c.batch];
        if c.send_armed {
            return;
        }
        if let Some(tls) = c.tls.as_deref_mut() {
            // Everything queued goes into rustls in the plain path's order
            // (queued bytes, then owed echo frames) once the last records
            // are out, and leaves as records from `tx`.
            if tls.tx_done() {
                let mut r = Ok(false);
                if !c.wbuf.is_empty() {
                    r = tls.write(&c.wbuf).map(|()| false);
                    c.wbuf.clear();
                }
                while r.is_ok() && c.echo_owed > 0 && frames_per_batch > 0 {
                    let frames = c.echo_owed.min(frames_per_batch);
                    c.echo_owed -= frames;
                    r = tls
                        .write(&batch.bytes[..frames * batch.frame_len])
                        .map(|()| false);
                }
                match r.and_then(|_| tls.fill()) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => return self.fail(t, format!("TLS write: {e}")),
                }
            }
            let sqe = send_sqe(&c.fd, &tls.tx[tls.tx_off..], t);
            c.send_armed = true;
            self.push(&sqe);
            return;
        }
        if c.outgoing.is_none() {
            if !c.wbuf.is_empty() {
                std::mem::swap(&mut c.wfl, &mut c.wbuf);
                c.wbuf.clear();
                c.outgoing = Some(Outgoing::Owned { off: 0 });
            } else if c.echo_owed > 0 && frames_per_batch > 0 {
                let frames = c.echo_owed.min(frames_per_batch);
                c.echo_owed -= frames;
                c.outgoing = Some(Outgoing::Echo { frames, off: 0 });
            } else {
                return;
            }
        }
        let bytes = match c.outgoing {
            Some(Outgoing::Owned { off }) => &c.wfl[off..],
            Some(Outgoing::Echo { frames, off }) => &batch.bytes[off..frames * batch.frame_len],
            None => return,
        };
        let sqe = send_sqe(&c.fd, bytes, t);
        c.send_armed = true;
        self.push(&sqe);
    }

    fn on_sent(&mut self, t: usize, res: i32) {
        if res < 0 && -res != libc::EINTR && -res != libc::EAGAIN {
            return self.fail(t, format!("write: {}", os_error(res)));
        }
        let n = res.max(0) as usize;
        let Some(c) = live(&mut self.conns, t) else {
            return;
        };
        if let Some(tls) = c.tls.as_deref_mut() {
            tls.tx_off += n;
            return self.send_now(t);
        }
        let echo_frame_len = self.batches[c.batch].frame_len;
        c.outgoing = match c.outgoing {
            Some(Outgoing::Owned { off }) if off + n < c.wfl.len() => {
                Some(Outgoing::Owned { off: off + n })
            }
            Some(Outgoing::Echo { frames, off }) if off + n < frames * echo_frame_len => {
                Some(Outgoing::Echo {
                    frames,
                    off: off + n,
                })
            }
            _ => None,
        };
        self.send_now(t);
    }

    fn on_eof(&mut self, t: usize) {
        let phase = live(&mut self.conns, t).map(|c| c.phase);
        if phase == Some(Phase::Closing) {
            // Churn: the server closed after the close handshake; done.
            self.finish_cycle(t);
        } else {
            self.fail(t, "connection closed by the server".into());
        }
    }

    /// Handles whatever complete input the connection has buffered.
    fn process(&mut self, t: usize) {
        let Some(c) = live(&mut self.conns, t) else {
            return;
        };
        if c.phase == Phase::Handshake {
            let Some(end) = wire::head_end(&c.rbuf[c.rstart..c.rend]) else {
                return;
            };
            if !c.rbuf[c.rstart..c.rend].starts_with(b"HTTP/1.1 101") {
                let line =
                    String::from_utf8_lossy(&c.rbuf[c.rstart..c.rstart + end.min(64)]).into_owned();
                return self.fail(
                    t,
                    format!("upgrade refused: {}", line.lines().next().unwrap_or("")),
                );
            }
            let mut window = None;
            if self.plan.deflate && c.role != Role::Publisher {
                match deflate::granted(&c.rbuf[c.rstart..c.rstart + end]) {
                    Ok(g) => {
                        c.deflate = true;
                        window = Some(g.client_window);
                        self.out.extension.get_or_insert(g.answer);
                    }
                    Err(e) => return self.fatal(t, e),
                }
            }
            c.rstart += end;
            c.phase = Phase::Open;
            let (role, started) = (c.role, c.started);
            let now = now_ns();
            if let (Some(w), Role::Echo | Role::Churn) = (window, role) {
                // Echo both ways compressed: the message, compressed once
                // per window, is what this connection sends.
                let b = self.batch_for(w);
                if let Some(c) = live(&mut self.conns, t) {
                    c.batch = b;
                }
            }
            let Some(c) = live(&mut self.conns, t) else {
                return;
            };
            match role {
                Role::Echo => {
                    let n = self.echo_frames;
                    c.sent.extend(std::iter::repeat_n(now, n));
                    self.send_echoes(t, n);
                }
                Role::Churn => {
                    c.sent.push_back(now);
                    self.send_echoes(t, 1);
                }
                Role::Publish => {
                    // The welcome comes first; publishing need not wait.
                    let Scenario::Publish { in_flight, .. } = self.plan.scenario else {
                        unreachable!("a Publish connection outside the publish scenario")
                    };
                    self.send_publishes(t, in_flight, now);
                }
                Role::Publisher => {
                    // Upgraded; counted open once placement keeps it.
                    self.connecting -= 1;
                    self.out
                        .handshake_us
                        .saturating_record(now.saturating_sub(started) / 1000);
                    if self.channel_mode {
                        // A stream server's welcome comes before the pong;
                        // an older server answers with the pong alone.
                        let f = self.ping_frame.clone();
                        self.send(t, &f);
                    } else {
                        self.placement_reply(t, None);
                    }
                    return self.frames(t);
                }
                Role::Subscriber if !self.subscribe_frame.is_empty() => {
                    // Open once the subscription is acknowledged.
                    let f = self.subscribe_frame.clone();
                    self.send(t, &f);
                    self.out
                        .handshake_us
                        .saturating_record(now.saturating_sub(started) / 1000);
                    return self.frames(t);
                }
                Role::Subscriber | Role::Idle => {}
            }
            self.out
                .handshake_us
                .saturating_record(now.saturating_sub(started) / 1000);
            self.opened(now);
        }
        self.frames(t);
    }

    /// A connection is ready for the measurement.
    fn opened(&mut self, now: u64) {
        self.out.opened += 1;
        self.out.last_open_ns = now;
        self.connecting -= 1;
        self.shared.opened.fetch_add(1, Ordering::Relaxed);
    }

    /// Consumes complete server frames.
    fn frames(&mut self, t: usize) {
        let mut replies = 0usize;
        let mut closed = false;
        // The close frame's code and reason, for the error.
        let mut close_why = String::new();
        let now = now_ns();
        let in_window = self.window(now);
        let (ws, we) = (
            self.shared.window_start.load(Ordering::Relaxed),
            self.shared.window_end.load(Ordering::Relaxed),
        );
        let window = |ts: u64| ws != 0 && ts >= ws && ts < we;
        let prefix = std::mem::take(&mut self.message_prefix);
        let mut acked = false;
        // A publisher candidate's server core, once its first reply says.
        let mut placement: Option<Option<u64>> = None;
        // Error replies (subscribe or publish refused): count, first text.
        let mut refusals = 0u64;
        let mut refusal: Option<String> = None;
        // Pongs owed for the server's heartbeat pings (a real client's
        // WebSocket stack answers them; without it the server closes the
        // connection with 1011 after a few missed pongs).
        let mut pongs: Vec<u8> = Vec::new();
        // A frame that ends the connection: a compressed one where deflate
        // was not negotiated, or one that does not inflate.
        let mut broken: Option<String> = None;
        let json = self.plan.json;
        let Some(c) = live(&mut self.conns, t) else {
            return;
        };
        while let Some(f) = wire::server_frame(&c.rbuf[c.rstart..c.rend]) {
            let (op, hl, len) = (f.op, f.header, f.len);
            let p = c.rstart + hl;
            // The message's payload: inflated when it came compressed.
            let body: &[u8] = if f.compressed {
                if !c.deflate || !matches!(op, wire::TEXT | wire::BINARY) {
                    broken = Some(format!(
                        "the server set RSV1 on a frame of opcode {op}{}",
                        if c.deflate {
                            ""
                        } else {
                            " without permessage-deflate negotiated"
                        }
                    ));
                    break;
                }
                match self.inflater.inflate(&c.rbuf[p..p + len]) {
                    Ok(b) => b,
                    Err(e) => {
                        broken = Some(format!("inflating a server message: {e}"));
                        break;
                    }
                }
            } else {
                &c.rbuf[p..p + len]
            };
            match (op, c.role) {
                (wire::CLOSE, _) => {
                    closed = true;
                    if let [hi, lo, reason @ ..] = body {
                        close_why = format!(
                            " ({}{}{})",
                            u16::from_be_bytes([*hi, *lo]),
                            if reason.is_empty() { "" } else { ": " },
                            String::from_utf8_lossy(reason)
                        );
                    }
                    c.rstart += hl + len;
                    break;
                }
                (wire::TEXT | wire::BINARY, Role::Echo) => {
                    let sent = c.sent.pop_front().unwrap_or(now);
                    if body != self.echo_payload.as_slice() {
                        self.out.wire.mismatches += 1;
                    }
                    if in_window {
                        self.out.wire.arrived += 1;
                        self.out.count += 1;
                        self.out.bytes += body.len() as u64;
                        self.out.wire.message(f.compressed, len, body.len());
                        self.out.latency_us.saturating_record((now - sent) / 1000);
                    }
                    replies += 1;
                }
                (wire::TEXT | wire::BINARY, Role::Subscriber) => {
                    // The send time: binary at payload offset 8 (/broadcast),
                    // the JSON body's id (/broadcast, --payload json), or hex
                    // digits 16..32 of the payload string or id (/ws).
                    let ts = if prefix.is_empty() && json {
                        stream::json_timestamp(body)
                    } else if prefix.is_empty() {
                        body.get(8..16)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_le_bytes)
                    } else if let Some((offset, payload)) = stream::parse_message(body, &prefix) {
                        let st = &mut self.out.stream;
                        match offset.map(|o| c.offsets.see(o)) {
                            None => st.without_offset += 1,
                            Some(step) => {
                                st.with_offset += 1;
                                match step {
                                    Step::First | Step::Next => {}
                                    Step::Gap(n) => {
                                        st.gaps += 1;
                                        st.gap_offsets += n;
                                    }
                                    Step::Behind => st.reorders += 1,
                                }
                            }
                        }
                        stream::payload_timestamp(payload)
                    } else {
                        match stream::classify(body) {
                            Reply::Ack { .. } => acked = true,
                            Reply::Welcome { core } => {
                                let st = &mut self.out.stream;
                                st.welcomes += 1;
                                if let Some(core) = core {
                                    *st.subscriber_cores.entry(core).or_default() += 1;
                                }
                            }
                            Reply::Error => {
                                refusals += 1;
                                refusal.get_or_insert_with(|| {
                                    String::from_utf8_lossy(body).into_owned()
                                });
                            }
                            Reply::Pong | Reply::Other => {}
                        }
                        None
                    };
                    if ts.is_some() && in_window {
                        self.out.wire.arrived += 1;
                    }
                    if let Some(ts) = ts.filter(|&t| window(t)) {
                        self.out.count += 1;
                        self.out.bytes += body.len() as u64;
                        self.out.wire.message(f.compressed, len, body.len());
                        self.out
                            .latency_us
                            .saturating_record(now.saturating_sub(ts) / 1000);
                        self.delivered_unreported += 1;
                    }
                }
                (wire::TEXT, Role::Publisher) if !prefix.is_empty() => {
                    match stream::classify(body) {
                        Reply::Welcome { core } => {
                            placement.get_or_insert(core);
                        }
                        // The ping's answer: no welcome came first.
                        Reply::Pong => {
                            placement.get_or_insert(None);
                        }
                        Reply::Ack { offset } => {
                            let st = &mut self.out.stream;
                            st.publish_acks += 1;
                            if offset > st.last_offset {
                                st.last_offset = offset;
                            }
                        }
                        Reply::Error => {
                            refusals += 1;
                            refusal
                                .get_or_insert_with(|| String::from_utf8_lossy(body).into_owned());
                        }
                        Reply::Other => {}
                    }
                }
                (wire::TEXT, Role::Publish) => {
                    let reply = stream::classify(body);
                    if matches!(reply, Reply::Ack { .. } | Reply::Error) {
                        // The publish it answers: by id (acks normally come
                        // in order, so it is the oldest), else the oldest.
                        let k = stream::field_u64(body, b"id")
                            .and_then(|id| c.unacked.iter().position(|&(i, _)| i == id))
                            .unwrap_or(0);
                        if let Some((_, sent)) = c.unacked.remove(k) {
                            replies += 1;
                            if in_window {
                                if let Reply::Ack { offset } = reply {
                                    self.out.count += 1;
                                    self.out.bytes += self.payload_len as u64;
                                    self.out
                                        .latency_us
                                        .saturating_record(now.saturating_sub(sent) / 1000);
                                    let st = &mut self.out.stream;
                                    st.publish_acks += 1;
                                    if offset > st.last_offset {
                                        st.last_offset = offset;
                                    }
                                }
                            }
                        }
                        if reply == Reply::Error {
                            refusals += 1;
                            refusal
                                .get_or_insert_with(|| String::from_utf8_lossy(body).into_owned());
                        }
                    }
                }
                (wire::TEXT | wire::BINARY, Role::Churn) => replies += 1,
                (wire::PING, _) => {
                    pongs.extend(wire::masked_frame(wire::PONG, &c.rbuf[p..p + len]));
                }
                _ => {} // the publisher's own copies, pongs
            }
            c.rstart += hl + len;
        }
        let (role, phase) = (c.role, c.phase);
        self.message_prefix = prefix;
        if let Some(msg) = broken {
            return self.fail(t, msg);
        }
        let pong_owed = !pongs.is_empty() && !closed && phase != Phase::Closing;
        if pong_owed {
            // Queued ahead of anything this pass sends; flushed below.
            c.wbuf.extend_from_slice(&pongs);
        }
        if closed {
            if role == Role::Churn && phase == Phase::Closing {
                return self.finish_cycle(t);
            }
            return self.fail(t, format!("server sent a close frame{close_why}"));
        }
        match role {
            Role::Echo if replies > 0 => {
                c.sent.extend(std::iter::repeat_n(now, replies));
                self.send_echoes(t, replies);
            }
            Role::Publish if replies > 0 => self.send_publishes(t, replies, now),
            Role::Churn if replies > 0 => {
                if let Some(sent) = c.sent.pop_front() {
                    if in_window {
                        self.out.latency_us.saturating_record((now - sent) / 1000);
                    }
                }
                c.phase = Phase::Closing;
                let close = wire::masked_frame(wire::CLOSE, &1000u16.to_be_bytes());
                self.send(t, &close);
            }
            _ => {}
        }
        if pong_owed {
            self.send_now(t);
        }
        if acked {
            self.opened(now);
        }
        if refusals > 0 {
            self.out.errors += refusals - 1;
            self.error(format!(
                "server error reply: {}",
                refusal.unwrap_or_default()
            ));
        }
        if let Some(core) = placement {
            self.placement_reply(t, core);
        }
    }

    // ----- endings ----------------------------------------------------------

    fn finish_cycle(&mut self, t: usize) {
        if self.window(now_ns()) {
            self.out.count += 1;
            self.out.bytes += self.payload_len as u64;
        }
        self.drop_conn(t);
        self.to_open += 1; // the loop goes round again
    }

    fn fail(&mut self, t: usize, msg: String) {
        let phase = live(&mut self.conns, t).map(|c| c.phase);
        if phase == Some(Phase::Handshake) {
            self.connecting -= 1;
            self.shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        let stopping = self.shared.stop.load(Ordering::Relaxed);
        if !stopping {
            self.error(msg);
        }
        let churn = matches!(self.plan.scenario, Scenario::Churn);
        self.drop_conn(t);
        if churn && !stopping {
            self.to_open += 1;
        }
    }

    /// Closes connection `t`. Operations still in the kernel point into its
    /// buffers, so a connection with any armed is shut down (which ends
    /// them) and its slot freed when the last completion comes back.
    fn drop_conn(&mut self, t: usize) {
        if let Some(c) = live(&mut self.conns, t) {
            if c.armed() {
                c.dead = true;
                // SAFETY: shutting down our own socket; ends its operations.
                unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
            } else {
                self.conns[t] = None;
                self.free.push(t);
            }
        }
        if self.probe == Some(t) {
            self.probe = None; // placement opens another
        }
        if let Some(k) = self.pubs.iter().position(|&p| p == t) {
            self.pubs.remove(k);
            self.pub_cores.remove(k);
            self.pub_targets.remove(k);
            self.pub_active = !self.pubs.is_empty();
        }
    }

    /// End of the run: shut every socket down and collect the completions
    /// of the operations that ends (bounded), so no buffer is freed under
    /// the kernel's feet.
    fn close_all(&mut self) {
        for t in 0..self.conns.len() {
            self.drop_conn(t);
        }
        for _ in 0..100 {
            if self.conns.iter().flatten().all(|c| !c.armed()) {
                break;
            }
            if self.ring.wait(Some(Duration::from_millis(10))).is_err() {
                break;
            }
            while let Some(cqe) = self.ring.next_completion() {
                self.complete(cqe.user_data(), cqe.result());
            }
        }
    }
}

fn os_error(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_round_robin_over_servers() {
        let n = 3;
        let targets: Vec<usize> = (0..7).map(|i| target_of(i, n)).collect();
        assert_eq!(targets, [0, 1, 2, 0, 1, 2, 0]);
        // What each server gets is share() of the total.
        for total in [0, 1, 7, 1000] {
            let counted: Vec<usize> = (0..n)
                .map(|s| (0..total).filter(|&i| target_of(i, n) == s).count())
                .collect();
            let shares: Vec<usize> = (0..n).map(|s| share(total, n, s)).collect();
            assert_eq!(counted, shares, "{total} connections");
        }
        assert_eq!(target_of(5, 1), 0);
        assert_eq!(target_of(5, 0), 0);
    }

    #[test]
    fn publish_frames_carry_each_id_as_valid_json() {
        let body = payload::json(300, 7);
        for template in [None, Some(&body[..])] {
            let (mut f, off, at) = publish_template("bench", 20, template);
            for id in [
                FIRST_PUBLISH_ID,
                FIRST_PUBLISH_ID + 12_345,
                9_999_999_999_999_999,
            ] {
                wire::write_masked(&mut f, off, at, id.to_string().as_bytes());
                let (h, hl) = ringcast::ws::frame::parse_header(&f).unwrap().unwrap();
                let mut payload = f[hl..].to_vec();
                ringcast::ws::frame::apply_mask(&mut payload, h.mask, 0);
                let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                assert_eq!(v["type"], "publish");
                assert_eq!(v["channel"], "bench");
                assert_eq!(v["id"].as_u64(), Some(id));
                match template {
                    None => assert_eq!(v["payload"].as_str().map(str::len), Some(20)),
                    Some(b) => assert_eq!(
                        v["payload"],
                        serde_json::from_slice::<serde_json::Value>(b).unwrap()
                    ),
                }
            }
        }
    }
}
