//! Property tests: the cargo-fuzz targets' checks (`tests/targets`) on
//! inputs proptest generates, so they run on stable in every `cargo test`.
//!
//! 256 cases per property by default; `PROPTEST_CASES=100000 cargo test
//! --release --test properties` runs longer. The fuzz seed corpus runs here
//! too; an input that breaks an invariant belongs at the end as a plain
//! test with its exact bytes.

mod targets;

use proptest::prelude::*;
use ringcast::ws::Limits;
use targets::{FrameSpec, FramesCase};

/// 256 cases unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Shrinking a failure is useful; a runaway shrink is not.
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- handshake

/// Header lines a request may carry: the upgrade's, body framing (good and
/// bad), credentials, and junk.
const HEADERS: &[&str] = &[
    "Host: x",
    "Upgrade: websocket",
    "upgrade: h2c, WebSocket",
    "Connection: Upgrade",
    "Connection: keep-alive, upgrade",
    "Connection: close",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Key: c2hvcnQ=",
    "Sec-WebSocket-Key:  dGhlIHNhbXBsZSBub25jZQ== ",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Version: 8",
    "Content-Length: 0",
    "Content-Length: 5",
    "Content-Length: 13",
    "content-length: 013",
    "Content-Length: 99999999999999999999999",
    "Content-Length: -1",
    "Content-Length: 1, 1",
    "Content-Length:",
    "Transfer-Encoding: chunked",
    "Expect: 100-continue",
    "Authorization: Bearer abc.def",
    "Authorization: bearer\t t",
    "Authorization: Basic eA==",
    "Origin: https://app.example",
    "Origin:",
    "X-Api-Key: k3y",
    "X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "Bad Header: x",
    ": empty name",
    "X-Obs: \u{e9}",
];

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "HEAD", "get", "PATCH", ""];

const TARGETS: &[&str] = &[
    "/ws",
    "/echo",
    "/broadcast",
    "/api/publish",
    "/api/publish?token=t0k",
    "/ws?a=1&token=jwt.x.y#f",
    "/ws?xtoken=1&token=",
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/channels",
    "http://host/ws?token=a",
    "https://host",
    "/nope",
    "*",
    "/ws%20",
];

/// A request built from parts, then possibly damaged: a byte replaced, or
/// the buffer cut short.
fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(METHODS),
        prop::sample::select(TARGETS),
        prop::sample::select(&["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x"][..]),
        prop::collection::vec(prop::sample::select(HEADERS), 0..10),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..40),
        (any::<u8>(), any::<prop::sample::Index>(), any::<u8>()),
    )
        .prop_map(|(m, t, v, headers, lf, body, (damage, at, byte))| {
            let eol = if lf { "\n" } else { "\r\n" };
            let mut s = format!("{m} {t} {v}{eol}");
            for h in headers {
                s.push_str(h);
                s.push_str(eol);
            }
            s.push_str(eol);
            let mut b = s.into_bytes();
            b.extend_from_slice(&body);
            match damage % 8 {
                0 => {
                    let i = at.index(b.len());
                    b[i] = byte;
                }
                1 => b.truncate(at.index(b.len() + 1)),
                _ => {}
            }
            b
        })
}

/// The standard upgrade request, routed to each endpoint.
fn upgrade(target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn handshake_structured(req in request(), limits in prop::sample::select(&targets::HTTP_LIMITS[..])) {
        targets::check_handshake(&req, limits.0, limits.1);
    }

    #[test]
    fn handshake_bytes(buf in prop::collection::vec(any::<u8>(), 0..400), limits in prop::sample::select(&targets::HTTP_LIMITS[..])) {
        targets::check_handshake(&buf, limits.0, limits.1);
    }
}

#[test]
fn handshake_known_good_requests() {
    for t in ["/ws", "/echo", "/broadcast?token=abc"] {
        targets::check_handshake(&upgrade(t), 8192, 1024);
    }
    let post =
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{\"a\":[1,2,3]}";
    targets::check_handshake(post, 8192, 1024);
}

// ---------------------------------------------------------------- frames

fn limits() -> impl Strategy<Value = Limits> {
    (
        prop::sample::select(&targets::MAX_MESSAGE[..]),
        prop::sample::select(&targets::MAX_FRAGMENTS[..]),
    )
        .prop_map(|(max_message, max_fragments)| Limits {
            max_message,
            max_fragments,
        })
}

/// Read sizes: mostly small (splitting headers and code points), some 0.
fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![4 => 0usize..16, 1 => 0usize..600], 0..8)
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        // Text, valid or not, cut anywhere.
        ("[a-zé€𝄞κ ]{0,12}", any::<prop::sample::Index>()).prop_map(|(s, i)| {
            let b = s.into_bytes();
            let cut = i.index(b.len() + 1);
            b[..cut].to_vec()
        }),
        // Close payloads: a code (any) and a reason (maybe not UTF-8).
        (any::<u16>(), prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(c, r)| {
            let mut v = c.to_be_bytes().to_vec();
            v.extend(r);
            v
        }),
        Just(vec![0u8; 125]),
        Just(vec![b'x'; 126]),
        Just(vec![7u8; 300]),
    ]
}

/// A frame, valid four times out of five.
fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    (
        prop_oneof![
            8 => prop::sample::select(&[0u8, 1, 2, 8, 9, 10][..]),
            1 => 0u8..16,
        ],
        any::<bool>(),
        prop_oneof![9 => Just(0u8), 1 => 0u8..8],
        prop_oneof![19 => Just(true), 1 => Just(false)],
        prop_oneof![6 => Just(0u8), 1 => 1u8..3],
        prop_oneof![
            19 => Just(None),
            1 => prop_oneof![0u64..200, Just(1 << 40), Just(1 << 63), Just(u64::MAX)].prop_map(Some),
        ],
        any::<[u8; 4]>(),
        payload(),
    )
        .prop_map(
            |(opcode, fin, rsv, masked, len_form, len_override, mask, payload)| FrameSpec {
                fin,
                rsv,
                opcode,
                masked,
                len_form,
                len_override,
                mask,
                payload,
            },
        )
}

/// Mostly a well-formed fragmented message with control frames in
/// between, or any frames.
fn frames() -> impl Strategy<Value = Vec<FrameSpec>> {
    prop_oneof![
        prop::collection::vec(frame_spec(), 0..12),
        (
            prop::collection::vec(frame_spec(), 0..6),
            any::<bool>(),
            prop::collection::vec(frame_spec(), 0..4)
        )
            .prop_map(|(pieces, text, controls)| {
                // First piece Text/Binary, then continuations, last FIN; a
                // control frame after each piece when there is one.
                let n = pieces.len();
                let mut out = Vec::new();
                let mut controls = controls.into_iter().filter(|c| c.opcode >= 8);
                for (i, mut p) in pieces.into_iter().enumerate() {
                    p.opcode = if i > 0 {
                        0
                    } else if text {
                        1
                    } else {
                        2
                    };
                    p.fin = i + 1 == n;
                    out.push(p);
                    out.extend(controls.next());
                }
                out
            }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes: the same events whole, in pieces, copied or not.
    #[test]
    fn frames_any_bytes(stream in prop::collection::vec(any::<u8>(), 0..200), chunks in chunks(), limits in limits(), close_first in prop::bool::weighted(0.1)) {
        targets::check_frames(limits, &stream, &chunks, close_first);
    }

    /// Streams of (mostly valid) frames, cut into random reads.
    #[test]
    fn frames_structured(frames in frames(), chunks in chunks(), limits in limits(), close_first in prop::bool::weighted(0.1)) {
        let stream = targets::encode_stream(&frames);
        targets::check_frames(limits, &stream, &chunks, close_first);
    }

    /// The fuzz target's own input format.
    #[test]
    fn frames_fuzz_format(data in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Some(case) = FramesCase::from_bytes(&data) {
            case.check();
        }
    }
}

// ---------------------------------------------------------------- JSON

/// JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::to_string(&f).unwrap()),
        prop::sample::select(&["-0", "1e400", "0.5E-3", "\"\\ud800\"", "\"\\u00e9\\n\""][..])
            .prop_map(str::to_owned),
        ".{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(("[a-z]{0,3}", inner), 0..4).prop_map(|v| {
                let fields: Vec<String> = v.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

fn channel() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_.:/@-]{1,10}",
        Just(String::new()),
        Just("x".repeat(129)),
        Just("chat.*".to_owned()),
        Just("a b".to_owned()),
        Just("é".to_owned()),
    ]
    .prop_map(|c| serde_json::to_string(&c).unwrap())
}

/// One field of a message: the known keys with plausible or wrong values,
/// and unknown keys.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                "ping",
                "subscribe",
                "unsubscribe",
                "publish",
                "history",
                "presence",
                "nope"
            ][..]
        )
        .prop_map(|t| format!("\"type\":\"{t}\"")),
        stream_field(),
        channel().prop_map(|c| format!("\"channel\":{c}")),
        json_value().prop_map(|p| format!("\"payload\":{p}")),
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            Just("-1".to_owned()),
            Just("1.5".to_owned()),
            Just("null".to_owned()),
            Just("\"7\"".to_owned()),
            Just("18446744073709551616".to_owned()),
        ]
        .prop_map(|i| format!("\"id\":{i}")),
        json_value().prop_map(|v| format!("\"type\":{v}")),
        json_value().prop_map(|v| format!("\"x\":{v}")),
        prop::collection::vec(prop::collection::vec(entry_field(), 0..3), 0..4).prop_map(|es| {
            let es: Vec<String> = es.iter().map(|e| format!("{{{}}}", e.join(","))).collect();
            format!("\"messages\":[{}]", es.join(","))
        }),
    ]
}

/// The channel stream fields (`since`, `presence`, `join_leave`, `limit`)
/// with plausible or wrong values.
fn stream_field() -> impl Strategy<Value = String> {
    let count = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..2000).prop_map(|n| n.to_string()),
        Just("-1".to_owned()),
        Just("-0".to_owned()),
        Just("1.5".to_owned()),
        Just("1e3".to_owned()),
        Just("null".to_owned()),
        Just("\"5\"".to_owned()),
        Just("18446744073709551616".to_owned()),
    ];
    let epoch = prop_oneof![
        "[0-9a-f]{16}".prop_map(|e| format!("\"{e}\"")),
        "[0-9a-zA-Z+]{0,18}".prop_map(|e| format!("\"{e}\"")),
        Just("5".to_owned()),
        Just("null".to_owned()),
    ];
    let since = prop_oneof![
        (count.clone(), epoch.clone())
            .prop_map(|(o, e)| format!("{{\"offset\":{o},\"epoch\":{e}}}")),
        (count.clone(), epoch.clone())
            .prop_map(|(o, e)| format!("{{\"epoch\":{e},\"x\":1,\"offset\":{o}}}")),
        count.clone().prop_map(|o| format!("{{\"offset\":{o}}}")),
        epoch.clone().prop_map(|e| format!("{{\"epoch\":{e}}}")),
        (count.clone(), epoch)
            .prop_map(|(o, e)| format!("{{\"offset\":{o},\"offset\":{o},\"epoch\":{e}}}")),
        json_value(),
    ];
    let flag = prop_oneof![
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
        Just("1".to_owned()),
        Just("\"yes\"".to_owned()),
    ];
    prop_oneof![
        since.prop_map(|v| format!("\"since\":{v}")),
        flag.clone().prop_map(|v| format!("\"presence\":{v}")),
        flag.prop_map(|v| format!("\"join_leave\":{v}")),
        count.prop_map(|v| format!("\"limit\":{v}")),
    ]
}

fn entry_field() -> impl Strategy<Value = String> {
    prop_oneof![
        channel().prop_map(|c| format!("\"channel\":{c}")),
        json_value().prop_map(|p| format!("\"payload\":{p}")),
        Just("\"channel\":1".to_owned()),
        Just("\"messages\":[]".to_owned()),
    ]
}

/// A message object built from fields (duplicates included), sometimes
/// damaged.
fn message() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(field(), 0..6),
        " {0,2}",
        (any::<u8>(), any::<prop::sample::Index>(), any::<u8>()),
    )
        .prop_map(|(fields, ws, (damage, at, byte))| {
            let mut b = format!("{ws}{{{}}}{ws}", fields.join(&format!(",{ws}"))).into_bytes();
            match damage % 6 {
                0 => {
                    let i = at.index(b.len());
                    b[i] = byte;
                }
                1 => b.truncate(at.index(b.len() + 1)),
                _ => {}
            }
            b
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ws_json_structured(text in message()) {
        targets::check_ws_json(&text);
    }

    #[test]
    fn ws_json_bytes(text in prop::collection::vec(any::<u8>(), 0..64)) {
        targets::check_ws_json(&text);
    }

    #[test]
    fn json_grammar_agrees_with_serde_json(v in json_value()) {
        // Within serde_json's limits, both accept the same text.
        if let Ok(parsed) = serde_json::from_str::<serde_json::Value>(&v) {
            prop_assert!(targets::is_json(v.as_bytes()));
            prop_assert!(targets::is_json(parsed.to_string().as_bytes()));
        }
    }
}

#[test]
fn ws_json_known_messages() {
    for m in [
        r#"{"type":"publish","channel":"c","payload":{"k":[1,2.5,"x"]},"id":3}"#,
        r#"{"type":"publish","channel":"c","payload":1e400}"#,
        r#"{"messages":[{"channel":"a","payload":1},{"channel":"b","payload":null}]}"#,
        r#"{"type":"ping","id":null}"#,
        r#"{"type":"subscribe","channel":"c","since":{"offset":3,"epoch":"00000000000000ff"},"presence":true,"join_leave":false,"id":1}"#,
        r#"{"type":"history","channel":"c","limit":10,"since":{"epoch":"x","offset":0,"y":[]}}"#,
        r#"{"type":"history","channel":"c","limit":1e12}"#,
        r#"{"type":"presence","channel":"c","id":2}"#,
        r#"{"type":"subscribe","channel":"c","since":{"offset":1,"offset":2,"epoch":"a"}}"#,
        r#"{"type":"ping","presence":"yes"}"#,
        r#"{"channel":"c","payload":"\ud800"}"#,
        // A duplicate the `Value` hides, behind a type error.
        r#"{"type":null,"type":"ping"}"#,
        r#"{"id":5,"id":null,"type":"ping"}"#,
    ] {
        targets::check_ws_json(m.as_bytes());
    }
    assert!(!targets::is_json(b"{\"a\":01}"));
    assert!(!targets::is_json(b"[1,]"));
    assert!(targets::is_json(b" [1, -0.5e+3, \"\\u00e9\", {}] "));
}

// ---------------------------------------------------------------- seeds

/// The fuzz targets' seed corpus (`fuzz/corpus/<target>/seed-*`), run
/// through the same checks on stable.
#[test]
fn fuzz_seed_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut ran = 0;
    for target in ["handshake", "frames", "ws_json"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(target))
            .expect("fuzz/corpus/<target>")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds for {target}");
        for path in files {
            let data = std::fs::read(&path).expect("seed");
            match target {
                "handshake" => {
                    if let Some((&pick, buf)) = data.split_first() {
                        let (h, b) =
                            targets::HTTP_LIMITS[usize::from(pick) % targets::HTTP_LIMITS.len()];
                        targets::check_handshake(buf, h, b);
                    }
                }
                "frames" => {
                    if let Some(case) = FramesCase::from_bytes(&data) {
                        case.check();
                    }
                }
                _ => targets::check_ws_json(&data),
            }
            ran += 1;
        }
    }
    assert!(ran >= 60, "only {ran} seeds");
}

// ---------------------------------------------------------------- found

/// A publish body with a byte that is not UTF-8 in a field nobody reads
/// was accepted: serde_json validates only the strings it keeps. Such a
/// body is not JSON (RFC 8259 §8.1) and is refused now.
#[test]
fn publish_body_must_be_utf8() {
    let body = b"{\"channel\":\"a\",\"payload\":1,\"x\":\"\xff\"}";
    targets::check_ws_json(body);
    let e = ringcast::internals::api::parse_publish(body).unwrap_err();
    assert_eq!(e.code, "bad_json");
}
