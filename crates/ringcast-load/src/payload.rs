//! Realistic JSON message bodies (`--payload json`): chat/event-like
//! objects with varying ids, names, numbers, timestamps and text, of an
//! exact size, so compression is measured on what an application would
//! send rather than on repeated filler bytes.
//!
//! Every body starts with `{"id":"` and 32 hex digits: the generator writes
//! the message's sequence number and send time there (see
//! [`ID_PREFIX`]), like the hex digits of the filler payload string.

/// What every body starts with; the 32 hex digits of the id follow.
pub(crate) const ID_PREFIX: &[u8] = br#"{"id":""#;

/// The shortest body: `{"id":"<32 hex>","text":""}`.
pub(crate) const MIN_JSON: usize = ID_PREFIX.len() + 32 + r#"","text":""}"#.len();

const WORDS: &[&str] = &[
    "the",
    "a",
    "to",
    "and",
    "of",
    "is",
    "in",
    "it",
    "you",
    "that",
    "we",
    "for",
    "on",
    "this",
    "with",
    "be",
    "are",
    "have",
    "not",
    "just",
    "can",
    "so",
    "but",
    "at",
    "will",
    "if",
    "do",
    "was",
    "what",
    "all",
    "get",
    "about",
    "when",
    "meeting",
    "deploy",
    "release",
    "build",
    "tests",
    "green",
    "again",
    "tomorrow",
    "today",
    "morning",
    "lunch",
    "thanks",
    "please",
    "review",
    "branch",
    "merged",
    "latency",
    "server",
    "client",
    "looks",
    "good",
    "great",
    "issue",
    "fixed",
    "broken",
    "think",
    "maybe",
    "sure",
    "agree",
    "later",
    "ping",
    "call",
    "send",
    "file",
    "link",
    "docs",
    "ship",
    "friday",
    "weekend",
    "coffee",
    "team",
    "room",
    "update",
    "status",
    "ready",
    "done",
    "working",
    "still",
    "waiting",
    "numbers",
    "graph",
    "dashboard",
    "customer",
    "ticket",
    "priority",
    "question",
    "answer",
    "idea",
    "plan",
    "week",
    "sprint",
    "demo",
    "slides",
    "notes",
    "error",
    "logs",
    "memory",
    "cpu",
    "network",
    "cache",
    "queue",
    "rollback",
    "config",
    "staging",
    "production",
    "alert",
    "oncall",
    "restart",
    "patch",
    "version",
    "feature",
    "flag",
    "metrics",
    "trace",
    "budget",
    "quick",
    "really",
    "very",
    "nice",
    "cool",
    "yes",
    "no",
    "ok",
    "hmm",
    "lol",
    "brb",
    "now",
    "soon",
];
const NAMES: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "nia", "oscar", "peggy", "rupert", "sybil", "trent", "uma", "victor", "wendy", "xavier",
    "yara", "zoe", "mira", "ari", "jo", "kai", "lena", "omar", "priya",
];
const KINDS: &[&str] = &[
    "chat.message",
    "chat.edit",
    "chat.reaction",
    "presence.update",
    "order.created",
    "order.shipped",
    "metric.sample",
    "alert.raised",
];
const EMOJI: &[&str] = &[
    "+1", "heart", "tada", "eyes", "rocket", "laugh", "fire", "check",
];
const LOCALES: &[&str] = &[
    "en-GB", "en-US", "de-DE", "fr-FR", "es-ES", "ja-JP", "pt-BR",
];
const APPS: &[&str] = &["web", "ios", "android", "desktop"];

/// xorshift64*: deterministic, good enough for varied text.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.below(list.len())]
    }
    /// Skewed towards the front of `list` (words: the common ones first),
    /// roughly as word frequencies are.
    fn pick_skewed<'a>(&mut self, list: &[&'a str]) -> &'a str {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        list[((u * u * list.len() as f64) as usize).min(list.len() - 1)]
    }
}

/// A JSON object of exactly `size` bytes (at least [`MIN_JSON`]), varied by
/// `seed`: fields are added while they fit, then a `text` of words fills
/// the rest.
pub(crate) fn json(size: usize, seed: u64) -> Vec<u8> {
    let size = size.max(MIN_JSON);
    let mut r = Rng::new(seed);
    let id = format!("{:016x}{:016x}", r.next(), r.next());
    let user = r.below(90_000) + 10_000;
    let name = r.pick(NAMES);
    let ms = 1_764_700_000_000u64 + r.next() % 86_400_000;
    let (s, milli) = (ms / 1000 % 86_400, ms % 1000);
    // Optional fields, most important first; each is `,"key":value`.
    let mut fields = vec![
        format!(r#","type":"{}""#, r.pick(KINDS)),
        format!(r#","room":"room-{:04}""#, r.below(5000)),
        format!(
            r#","user":{{"id":{user},"name":"{name}","display":"{}{}","status":"{}"}}"#,
            name[..1].to_ascii_uppercase(),
            &name[1..],
            ["online", "away", "busy"][r.below(3)]
        ),
        format!(
            r#","sent_at":"2026-12-03T{:02}:{:02}:{:02}.{milli:03}Z""#,
            s / 3600,
            s / 60 % 60,
            s % 60
        ),
        format!(r#","mentions":["@{}","@{}"]"#, r.pick(NAMES), r.pick(NAMES)),
        format!(
            r#","reactions":{{"{}":{},"{}":{}}}"#,
            r.pick(EMOJI),
            r.below(40),
            r.pick(EMOJI),
            r.below(9)
        ),
        format!(
            r#","client":{{"app":"{}","version":"{}.{}.{}","locale":"{}"}}"#,
            r.pick(APPS),
            r.below(6) + 1,
            r.below(30),
            r.below(12),
            r.pick(LOCALES)
        ),
        format!(
            r#","thread":{{"id":"t-{:x}","replies":{},"last_reply_by":{}}}"#,
            r.next() >> 20,
            r.below(200),
            r.below(90_000) + 10_000
        ),
        format!(
            r#","attachments":[{{"kind":"image","url":"https://cdn.example.net/u/{user}/{:012x}.png","w":{},"h":{},"bytes":{}}}]"#,
            r.next() >> 16,
            320 + r.below(1600),
            240 + r.below(1200),
            10_000 + r.below(900_000)
        ),
        format!(
            r#","meta":{{"trace":"{:016x}","hops":{},"edited":{},"pinned":{}}}"#,
            r.next(),
            r.below(5),
            r.below(2) == 1,
            r.below(5) == 0
        ),
    ];
    let mut out = format!("{{\"id\":\"{id}\"").into_bytes();
    let text_frame = r#","text":""}"#.len();
    // Leave some room for text: a message has one.
    let want_text = (size / 5).min(240);
    for f in fields.drain(..) {
        if out.len() + f.len() + text_frame + want_text.min(size - out.len() - text_frame) <= size {
            out.extend_from_slice(f.as_bytes());
        }
    }
    // Then a list of like objects (the room's participants), as events
    // carry (line items, members, recent messages): the same keys again
    // with other values, which is what deflate finds in real JSON.
    let list_frame = r#","participants":[]"#.len();
    let mut first = true;
    loop {
        let item = format!(
            r#"{}{{"id":{},"name":"{}","status":"{}","role":"{}","last_seen":"2026-12-03T{:02}:{:02}:{:02}Z","muted":{}}}"#,
            if first { "" } else { "," },
            r.below(90_000) + 10_000,
            r.pick(NAMES),
            ["online", "away", "busy", "offline"][r.below(4)],
            ["member", "member", "member", "moderator", "guest"][r.below(5)],
            r.below(24),
            r.below(60),
            r.below(60),
            r.below(7) == 0
        );
        let frame = if first { list_frame } else { 0 };
        if out.len() + frame + item.len() + text_frame + want_text > size {
            break;
        }
        if first {
            out.extend_from_slice(br#","participants":["#);
        }
        out.extend_from_slice(item.as_bytes());
        first = false;
    }
    if !first {
        out.push(b']');
    }
    // Fill the rest with text.
    let room = size - out.len() - text_frame;
    let mut text = String::with_capacity(room + 16);
    let mut sentence_start = true;
    while text.len() < room {
        let w = r.pick_skewed(WORDS);
        if !text.is_empty() {
            text.push(' ');
        }
        if sentence_start {
            text.push_str(&w[..1].to_ascii_uppercase());
            text.push_str(&w[1..]);
        } else {
            text.push_str(w);
        }
        sentence_start = r.below(9) == 0;
        if sentence_start {
            text.push(['.', '!', '?'][r.below(3)]);
        }
    }
    text.truncate(room);
    out.extend_from_slice(br#","text":""#);
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(br#""}"#);
    debug_assert_eq!(out.len(), size);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_size_valid_json_with_an_id_in_place() {
        for size in [0, MIN_JSON, 60, 100, 256, 1000, 1024, 4096, 16384] {
            for seed in 0..20 {
                let b = json(size, seed);
                assert_eq!(b.len(), size.max(MIN_JSON), "size {size} seed {seed}");
                let v: serde_json::Value = serde_json::from_slice(&b)
                    .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&b)));
                assert!(b.starts_with(ID_PREFIX));
                let id = v["id"].as_str().unwrap();
                assert_eq!(id.len(), 32);
                assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
                assert!(v["text"].is_string());
            }
        }
    }

    #[test]
    fn varied_and_realistically_compressible() {
        let a = json(1024, 1);
        let b = json(1024, 2);
        assert_ne!(a, b);
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        for key in ["type", "room", "user", "sent_at", "client"] {
            assert!(v.get(key).is_some(), "1 KB carries {key}: {v}");
        }
        // Not filler: deflate gains, but far less than on repeated bytes.
        let packed = crate::deflate::compress(15, &a).unwrap();
        let ratio = a.len() as f64 / packed.len() as f64;
        assert!((1.3..4.0).contains(&ratio), "ratio {ratio:.2}");
        let filler = crate::deflate::compress(15, &[b'x'; 1024]).unwrap();
        assert!(filler.len() < packed.len() / 10);
        // Larger bodies carry a list of like objects: more to find.
        let big = json(4096, 1);
        let v: serde_json::Value = serde_json::from_slice(&big).unwrap();
        assert!(v["participants"].as_array().unwrap().len() > 10, "{v}");
        let big_ratio = big.len() as f64 / crate::deflate::compress(15, &big).unwrap().len() as f64;
        assert!(
            (ratio..8.0).contains(&big_ratio),
            "{big_ratio:.2} vs {ratio:.2}"
        );
    }
}
