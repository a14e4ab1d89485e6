//! Micro-benchmarks of ringcast's hot paths, no sockets involved:
//!
//! - `frame_parse_unmask`: header parse + unmask of one client frame; and
//!   `session_feed_echo`: one read of 16 pipelined 32-byte text messages
//!   through `Session::feed` with the real `/echo` handler (`ConnIo`) and
//!   out queue, i.e. what one `/echo` read costs in user space;
//! - `frame_encode`: encoding a server frame into a reused buffer, and once
//!   into a `SharedFrame` for broadcast (allocation included);
//! - `handshake`: parsing a realistic browser upgrade request, the accept key
//!   alone, writing the 101;
//! - `utf8`: whole-message and incremental validation;
//! - `fanout_10k`: queueing one frame (and a batch of 16) to 10,000 local
//!   subscribers through the hub.
//!
//! Sizes: 32 B is a typical chat/ticker message, 1 KiB a JSON document,
//! 16 KiB the `echo-big` load profile, 1 MiB a large upload; UTF-8 uses
//! 64 KiB (the session's reassembly buffer) instead of 16 KiB. Throughput is
//! payload bytes, or messages/deliveries where that is the unit that matters.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast::internals::{heartbeat, ConnCtl, ConnIo, Env, Policy, Route};
use ringcast::internals::{
    BufPool, ConnKey, Frame, Hub, OutQueue, Pushed, Recipients, SharedFrame, MAX_IOV,
};
use ringcast::ws::deflate::{Deflater, Inflater, WindowBits};
use ringcast::ws::frame::{
    apply_mask, encode_client_frame, encode_frame_into, parse_header, OpCode,
};
use ringcast::ws::handshake::{accept_key, parse_request};
use ringcast::ws::utf8::{validate, Utf8Stream};
use ringcast::ws::{Limits, Session, State};

const SIZES: [usize; 4] = [32, 1024, 16 * 1024, 1024 * 1024];
const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_client_frame(true, opcode, payload, MASK, &mut v);
    v
}

fn mixed_text(len: usize) -> Vec<u8> {
    let unit = "Καλημέρα κόσμε, こんにちは世界 🌍 hello world! ";
    let mut s = String::new();
    while s.len() < len {
        s.push_str(unit);
    }
    let mut cut = len;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.into_bytes()
}

fn frame_parse_unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_parse_unmask");
    for size in SIZES {
        let mut buf = masked(2, &vec![7u8; size]);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                // Unmasking is its own inverse, so the same buffer serves
                // every iteration without a copy.
                let (h, hl) = parse_header(black_box(&buf)).unwrap().unwrap();
                apply_mask(&mut buf[hl..], h.mask, 0);
                black_box(&buf);
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("session_feed_echo");
    // One read from a client with 16 messages in flight: 16 masked 32-byte
    // text frames, 16 * 38 = 608 bytes.
    let read: Vec<u8> = (0..16).flat_map(|_| masked(1, &[b'x'; 32])).collect();
    g.throughput(Throughput::Elements(16));
    g.bench_function("16x32B_text", |b| {
        let limits = Limits::bytes(16 << 20);
        let mut session = Session::new();
        let mut out = OutQueue::default();
        let mut buf = read.clone();
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOV];

        // Untimed check that this really is the echo path: 16 messages in,
        // 16 unmasked 34-byte frames queued in one coalesced buffer.
        let policy = Policy {
            max_queue: usize::MAX,
            msg_rate: None,
            publish_rate: None,
            max_subscriptions: 0,
            history_max_limit: 1000,
            heartbeat: heartbeat::Policy {
                base_us: 30_000_000,
                min_us: 10_000_000,
                max_us: 120_000_000,
            },
            failpoints: false,
        };
        let mut ctl = ConnCtl::open(Route::Echo, None, &policy, 0);
        let mut env = Env::new(0, 1, policy);
        let key = ConnKey { idx: 0, gen: 0 };
        {
            let mut io = ConnIo::new(key, &mut out, &mut ctl, &mut env, None);
            assert_eq!(session.feed(&mut buf, limits, &mut io), State::Open);
        }
        assert_eq!(env.stats.messages_in, 16);
        assert_eq!(out.queued_bytes(), 16 * 34);
        assert_eq!(out.prepare_send(&mut iov), 1);
        out.complete_send(16 * 34, &mut env.pool);

        b.iter(|| {
            // The session unmasks in place: refill the read buffer (a 608-byte
            // copy, like the kernel's copy into a receive buffer; measured on
            // its own as `refill_copy_608B` below).
            buf.copy_from_slice(&read);
            let mut io = ConnIo::new(key, &mut out, &mut ctl, &mut env, None);
            session.feed(&mut buf, limits, &mut io);
            // Drain the queue as a completed send would (the buffer goes back
            // to the pool, as in the server).
            out.prepare_send(&mut iov);
            let n = out.queued_bytes();
            out.complete_send(n, &mut env.pool);
        })
    });
    g.throughput(Throughput::Bytes(read.len() as u64));
    g.bench_function("refill_copy_608B", |b| {
        let mut buf = read.clone();
        b.iter(|| {
            buf.copy_from_slice(black_box(&read));
            black_box(&mut buf);
        })
    });
    g.finish();
}

fn frame_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    for size in SIZES {
        let payload = vec![b'x'; size];
        let mut out = Vec::with_capacity(size + 16);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("into_vec", size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                encode_frame_into(OpCode::Text, black_box(&payload), &mut out);
                black_box(&out);
            })
        });
        g.bench_with_input(BenchmarkId::new("shared_frame", size), &size, |b, _| {
            b.iter(|| black_box(SharedFrame::encode(OpCode::Text, black_box(&payload))))
        });
    }
    g.finish();
}

const BROWSER_REQUEST: &str = "GET /echo?room=lobby HTTP/1.1\r\n\
Host: chat.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://chat.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    let req = BROWSER_REQUEST.as_bytes();
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_request", |b| {
        b.iter(|| {
            parse_request(black_box(req), 8192, |p| (p == "/echo").then_some(()))
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("accept_key", |b| {
        b.iter(|| accept_key(black_box(b"dGhlIHNhbXBsZSBub25jZQ==")))
    });
    let up = parse_request(req, 8192, |p| (p == "/echo").then_some(()))
        .unwrap()
        .unwrap();
    let mut out = Vec::with_capacity(256);
    g.bench_function("write_101", |b| {
        b.iter(|| {
            out.clear();
            up.write_response(None, b"", &mut out);
            black_box(&out);
        })
    });
    g.finish();
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    for size in [32usize, 1024, 64 * 1024, 1024 * 1024] {
        let ascii = vec![b'a'; size];
        let mixed = mixed_text(size);
        g.throughput(Throughput::Bytes(ascii.len() as u64));
        g.bench_with_input(BenchmarkId::new("ascii", size), &size, |b, _| {
            b.iter(|| validate(black_box(&ascii)).unwrap())
        });
        // `mixed_text` stops at a char boundary, so it may be a few bytes short.
        g.throughput(Throughput::Bytes(mixed.len() as u64));
        g.bench_with_input(BenchmarkId::new("mixed", size), &size, |b, _| {
            b.iter(|| validate(black_box(&mixed)).unwrap())
        });
    }
    // A 64 KiB text message arriving as 1 KiB pieces. The cuts fall at fixed
    // byte offsets, so many split a multi-byte character and exercise the
    // carry between pieces.
    let text = mixed_text(64 * 1024);
    let mid_char_cuts = (PIECE..text.len())
        .step_by(PIECE)
        .filter(|&i| text[i] & 0xC0 == 0x80)
        .count();
    assert!(mid_char_cuts > 0, "no piece boundary splits a character");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("stream_64KiB_in_1KiB_pieces", |b| {
        b.iter(|| {
            let mut v = Utf8Stream::new();
            for piece in text.chunks(PIECE) {
                v.feed(black_box(piece)).unwrap();
            }
            v.finish().unwrap();
        })
    });
    g.finish();
}

const PIECE: usize = 1024;

/// Out-queues addressed by key, as a core's slab holds them (one lookup per
/// recipient, generation checked), for the hub's delivery loop.
#[derive(Default)]
struct Queues {
    slots: Vec<(u32, OutQueue)>,
}

impl Queues {
    fn insert(&mut self) -> ConnKey {
        self.slots.push((0, OutQueue::default()));
        ConnKey {
            idx: (self.slots.len() - 1) as u32,
            gen: 0,
        }
    }

    fn get_mut(&mut self, k: ConnKey) -> Option<&mut OutQueue> {
        match self.slots.get_mut(k.idx as usize) {
            Some((gen, q)) if *gen == k.gen => Some(q),
            _ => None,
        }
    }
}

impl Recipients for Queues {
    #[inline]
    fn with_queue(
        &mut self,
        key: ConnKey,
        push: impl FnOnce(&mut OutQueue, Option<WindowBits>) -> Pushed,
    ) -> Option<Pushed> {
        self.get_mut(key).map(|q| push(q, None))
    }
}

fn fanout(c: &mut Criterion) {
    const SUBS: usize = 10_000;
    let mut g = c.benchmark_group("fanout_10k");
    // `warm`: queues are drained as a completed send drains them, which keeps
    // each connection's small chunk deque allocated (the server's steady
    // state). `cold`: queues are drained with `clear`, which frees the deque,
    // so every delivery to an idle connection allocates one again.
    for (drain, batch) in [("warm", 1usize), ("warm", 16), ("cold", 1)] {
        let mut slab = Queues::default();
        let mut hub = Hub::default();
        let mut pool = BufPool::default();
        let mut deflater = Deflater::new(3, 256);
        let keys: Vec<_> = (0..SUBS)
            .map(|_| {
                let k = slab.insert();
                hub.subscribe(k);
                k
            })
            .collect();
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOV];
        let mut drain_all = |slab: &mut Queues, pool: &mut BufPool| {
            for &k in &keys {
                let out = slab.get_mut(k).expect("live connection");
                if drain == "warm" {
                    out.prepare_send(&mut iov);
                    let n = out.queued_bytes();
                    out.complete_send(n, pool);
                } else {
                    out.clear(pool);
                }
            }
        };
        let publish = |hub: &mut Hub| {
            for _ in 0..batch {
                hub.outbox
                    .push(Frame::new(SharedFrame::encode(OpCode::Text, &[b'x'; 64])));
            }
        };

        // Untimed check: every subscriber gets the whole batch.
        publish(&mut hub);
        let done = hub.fan_out(&mut pool, &mut deflater, usize::MAX, &mut slab);
        assert_eq!(done, (SUBS * batch) as u64);
        hub.outbox.clear();
        drain_all(&mut slab, &mut pool);

        g.throughput(Throughput::Elements((SUBS * batch) as u64));
        let id = BenchmarkId::new(format!("{drain}_frames_per_fan_out"), batch);
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Timed: encoding and publishing the batch, then queueing
                    // it to all 10,000 subscribers.
                    let t = Instant::now();
                    publish(&mut hub);
                    black_box(hub.fan_out(&mut pool, &mut deflater, usize::MAX, &mut slab));
                    total += t.elapsed();
                    // Untimed: release the frames and empty every queue.
                    hub.outbox.clear();
                    drain_all(&mut slab, &mut pool);
                }
                total
            })
        });
    }
    g.finish();
}

/// A 1 KB JSON event, realistic rather than repetitive: what a channel
/// publication looks like.
fn json_event(i: usize) -> Vec<u8> {
    let mut v = String::from("{\"type\":\"message\",\"channel\":\"room:lobby\",\"items\":[");
    let mut n = 0;
    while v.len() < 1000 {
        v.push_str(&format!(
            "{{\"id\":{},\"user\":\"user{}\",\"price\":{}.{:02},\"side\":\"{}\"}},",
            i * 31 + n,
            (i + n) % 17,
            1000 + (i * 7 + n * 13) % 997,
            (n * 37) % 100,
            if n % 3 == 0 { "buy" } else { "sell" }
        ));
        n += 1;
    }
    v.pop();
    v.push_str("]}");
    v.into_bytes()
}

/// permessage-deflate: one message compressed (reset included) per level,
/// and inflated. Compress-once makes this a per-publication cost; the
/// echo pays it per message.
fn deflate(c: &mut Criterion) {
    let msgs: Vec<Vec<u8>> = (0..64).map(json_event).collect();
    let mut g = c.benchmark_group("deflate_1k_json");
    g.throughput(Throughput::Bytes(msgs[0].len() as u64));
    for level in [1u32, 2, 6] {
        let mut d = Deflater::new(level, 1);
        let (mut plain, mut packed) = (0, 0);
        for m in &msgs {
            plain += m.len();
            packed += d.compress(WindowBits::MAX, m).map_or(m.len(), <[u8]>::len);
        }
        println!(
            "level {level}: {packed} of {plain} bytes ({:.2})",
            packed as f64 / plain as f64
        );
        let mut i = 0;
        g.bench_function(BenchmarkId::new("compress_level", level), |b| {
            b.iter(|| {
                i = (i + 1) % msgs.len();
                black_box(d.compress(WindowBits::MAX, &msgs[i]).map(<[u8]>::len))
            })
        });
    }
    let mut d = Deflater::new(3, 1);
    let packed: Vec<Vec<u8>> = msgs
        .iter()
        .filter_map(|m| d.compress(WindowBits::MAX, m).map(<[u8]>::to_vec))
        .collect();
    let mut inf = Inflater::new();
    let mut i = 0;
    g.bench_function("inflate", |b| {
        b.iter(|| {
            i = (i + 1) % packed.len();
            black_box(inf.inflate(&packed[i], 1 << 20).map(<[u8]>::len))
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    deflate,
    frame_parse_unmask,
    frame_encode,
    handshake,
    utf8,
    fanout
);
criterion_main!(benches);
