//! permessage-deflate (RFC 7692) on the client side: what the upgrade
//! offers, what the server's `101` must grant, and the payload codec.
//!
//! The generator inflates every message on its own (a fresh stream per
//! message), so it needs the server to answer `server_no_context_takeover`;
//! it never keeps a compression context either, which any server accepts
//! (`client_no_context_takeover` or not). One [`Inflater`] per generator
//! thread then serves all its connections. The payload codec is the
//! server's own (`ringcast::ws::deflate`), as the frame codec is; what
//! checks the server against other implementations is Autobahn (Python's
//! zlib), Chromium and the test suite's own deflate peer.

use ringcast::ws::deflate::{self as codec, Deflater, InflateError, WindowBits};

/// The offer the upgrade request carries: permessage-deflate with the
/// server free to limit the client's window (what browsers send).
pub(crate) const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// A message inflating past this is refused (a broken or hostile server must
/// not make the generator allocate without bound).
pub(crate) const INFLATE_LIMIT: usize = 64 << 20;

/// What a server's `101` granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Granted {
    /// The largest window the client may compress with
    /// (`client_max_window_bits`, 15 when absent).
    pub client_window: u8,
    /// The extension as the server wrote it, for the report.
    pub answer: String,
}

/// Reads the `Sec-WebSocket-Extensions` of a `101` response head. `Ok`
/// when permessage-deflate was granted on terms the generator can keep;
/// otherwise an error naming the server's answer.
pub(crate) fn granted(head: &[u8]) -> Result<Granted, String> {
    let text = String::from_utf8_lossy(head);
    let values: Vec<&str> = text
        .split("\r\n")
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-extensions")
                .then_some(value.trim())
        })
        .collect();
    let answer = values.join(", ");
    let ext = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|e| {
            e.split(';')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case("permessage-deflate"))
        });
    let Some(ext) = ext else {
        return Err(if answer.is_empty() {
            "the server did not grant permessage-deflate (no Sec-WebSocket-Extensions in its 101)"
                .to_string()
        } else {
            format!(
                "the server did not grant permessage-deflate (Sec-WebSocket-Extensions: {answer})"
            )
        });
    };
    let mut client_window = 15u8;
    let mut server_resets = false;
    for param in ext.split(';').skip(1) {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param.trim(), None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) => server_resets = true,
            ("client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(v)) if window_bits(v).is_some() => {}
            ("client_max_window_bits", Some(v)) => match window_bits(v) {
                // zlib cannot write a raw stream with an 8-bit window.
                Some(9..=15) => client_window = window_bits(v).unwrap_or(15),
                _ => {
                    return Err(format!(
                        "the server granted permessage-deflate with {name}={v}, which the generator cannot compress with (Sec-WebSocket-Extensions: {answer})"
                    ))
                }
            },
            _ => {
                return Err(format!(
                    "the server granted permessage-deflate with a parameter the generator does not know or that is malformed: {:?} (Sec-WebSocket-Extensions: {answer})",
                    param.trim()
                ))
            }
        }
    }
    if !server_resets {
        return Err(format!(
            "the server granted permessage-deflate with context takeover (no server_no_context_takeover); the generator inflates every message on its own (Sec-WebSocket-Extensions: {answer})"
        ));
    }
    Ok(Granted {
        client_window,
        answer: ext.to_string(),
    })
}

/// A window size parameter: 8..=15 (RFC 7692 §7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    let b: u8 = v.parse().ok()?;
    (8..=15).contains(&b).then_some(b)
}

/// Compresses one message with a fresh stream and a window of `window`
/// bits (9..=15): the payload of a frame with RSV1 set (sync tail
/// removed). `None` when that is not smaller than `payload` (it goes
/// plain).
pub(crate) fn compress(window: u8, payload: &[u8]) -> Option<Vec<u8>> {
    let window = WindowBits::new(window.clamp(9, 15))?;
    // zlib's default level, no threshold: the generator compresses each
    // distinct message once.
    Deflater::new(6, 1)
        .compress(window, payload)
        .map(<[u8]>::to_vec)
}

/// Messages remembered inflated, per thread (see [`Inflater`]).
const REMEMBERED: usize = 64;
/// Larger messages (compressed or inflated) are not remembered.
const REMEMBER_MAX: usize = 64 * 1024;

/// One thread's inflater: a 32 KiB-window raw inflater (it reads whatever
/// window the server used), reset before every message.
///
/// It remembers the last [`REMEMBERED`] messages it inflated, compressed
/// bytes and result: a server compresses a publication once, so every
/// subscriber on the thread receives the very same bytes, and an echo
/// client gets back the same message over and over. A message equal byte
/// for byte to a remembered one is not inflated again — the result would
/// be the same bytes — so the generator keeps up with fan-out (inflating
/// every delivery of a 1 KB message costs it ~3 us, more than the server
/// spends delivering it). `decoded` counts the real inflations.
pub(crate) struct Inflater {
    inner: codec::Inflater,
    limit: usize,
    /// (compressed, inflated), the slot `next` replaced next.
    seen: Vec<(Vec<u8>, Vec<u8>)>,
    next: usize,
    /// Messages really inflated, and ones found remembered.
    pub decoded: u64,
    pub reused: u64,
}

impl Inflater {
    pub(crate) fn new() -> Inflater {
        Inflater::with_limit(INFLATE_LIMIT)
    }

    /// An inflater refusing messages of more than `limit` bytes.
    pub(crate) fn with_limit(limit: usize) -> Inflater {
        Inflater {
            inner: codec::Inflater::new(),
            limit,
            seen: Vec::new(),
            next: 0,
            decoded: 0,
            reused: 0,
        }
    }

    /// Inflates one message's payload (as received: the tail is appended
    /// here). The result is valid until the next call.
    pub(crate) fn inflate(&mut self, compressed: &[u8]) -> Result<&[u8], String> {
        // The newest first: deliveries of one publication come close
        // together. Different streams differ within their first bytes.
        let n = self.seen.len();
        let found = (0..n)
            .map(|k| (self.next + n - 1 - k) % n)
            .find(|&i| self.seen[i].0 == compressed);
        if let Some(i) = found {
            self.reused += 1;
            return Ok(&self.seen[i].1);
        }
        let limit = self.limit;
        let plain = self.inner.inflate(compressed, limit).map_err(|e| match e {
            InflateError::TooBig => format!("a message inflates past {limit} bytes"),
            InflateError::Invalid => "not a deflate stream".to_string(),
        })?;
        self.decoded += 1;
        if compressed.len() > REMEMBER_MAX || plain.len() > REMEMBER_MAX {
            return Ok(plain);
        }
        // Into the next slot, reusing its old buffers.
        let slot = self.next;
        self.next = (self.next + 1) % REMEMBERED;
        if slot == self.seen.len() {
            self.seen.push((Vec::new(), Vec::new()));
        }
        let (key, value) = &mut self.seen[slot];
        key.clear();
        key.extend_from_slice(compressed);
        value.clear();
        value.extend_from_slice(plain);
        Ok(&self.seen[slot].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    /// RFC 7692 §7.2.1: the sync-flush tail a sender removes.
    const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

    const OK: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n";

    fn head(ext: Option<&str>) -> Vec<u8> {
        let mut h = OK.to_string();
        if let Some(e) = ext {
            h.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
        }
        h.push_str("\r\n");
        h.into_bytes()
    }

    #[test]
    fn reads_what_the_server_granted() {
        let g = granted(&head(Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        )))
        .unwrap();
        assert_eq!(g.client_window, 15);
        assert_eq!(
            g.answer,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        // Case, spacing, a window limit, another extension first.
        let g = granted(&head(Some(
            "x-other, PerMessage-Deflate;Server_No_Context_Takeover; client_max_window_bits=\"12\"; server_max_window_bits=10",
        )))
        .unwrap();
        assert_eq!(g.client_window, 12);
    }

    #[test]
    fn refusals_name_the_answer() {
        let e = granted(&head(None)).unwrap_err();
        assert!(e.contains("no Sec-WebSocket-Extensions"), "{e}");
        let e = granted(&head(Some("x-webkit-deflate-frame"))).unwrap_err();
        assert!(e.contains("x-webkit-deflate-frame"), "{e}");
        let e = granted(&head(Some("permessage-deflate"))).unwrap_err();
        assert!(e.contains("context takeover"), "{e}");
        let e = granted(&head(Some(
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=8",
        )))
        .unwrap_err();
        assert!(e.contains("client_max_window_bits=8"), "{e}");
        let e = granted(&head(Some(
            "permessage-deflate; server_no_context_takeover; frobnicate",
        )))
        .unwrap_err();
        assert!(e.contains("frobnicate"), "{e}");
    }

    #[test]
    fn round_trips_and_stays_independent_per_message() {
        let mut inf = Inflater::new();
        let text: Vec<u8> = (0..5000)
            .flat_map(|i| format!("{{\"n\":{i},\"t\":\"hello\"}}").into_bytes())
            .take(70_000)
            .collect();
        for window in 9..=15 {
            for n in [40usize, 1024, 70_000] {
                let packed = compress(window, &text[..n]).expect("compressible");
                assert!(packed.len() < n);
                assert_eq!(inf.inflate(&packed).unwrap(), &text[..n], "{window} {n}");
                // A stream limited to `window` bits reads it too.
                let mut strict = Decompress::new_with_window_bits(false, window);
                let mut plain = Vec::with_capacity(n + 64);
                let mut input = packed.clone();
                input.extend_from_slice(&TAIL);
                strict
                    .decompress_vec(&input, &mut plain, FlushDecompress::Sync)
                    .unwrap();
                assert_eq!(plain, &text[..n]);
            }
        }
        // Incompressible stays plain; garbage is an error and the inflater
        // still works after it.
        let noise: Vec<u8> = (0u32..256)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(compress(15, &noise), None);
        assert!(inf.inflate(&[0xFF; 16]).is_err());
        let packed = compress(15, &text[..500]).unwrap();
        assert_eq!(inf.inflate(&packed).unwrap(), &text[..500]);
        assert_eq!(inf.inflate(&[0x00]).unwrap(), b"");
    }

    #[test]
    fn a_message_seen_again_is_not_inflated_again() {
        let mut inf = Inflater::new();
        let msgs: Vec<Vec<u8>> = (0..100)
            .map(|i| format!("{{\"n\":{i},\"text\":\"hello hello hello\"}}").into_bytes())
            .collect();
        let packed: Vec<Vec<u8>> = msgs.iter().map(|m| compress(15, m).unwrap()).collect();
        for (m, p) in msgs.iter().zip(&packed).take(10) {
            assert_eq!(inf.inflate(p).unwrap(), &m[..]);
        }
        // Again, interleaved: all remembered, the same results.
        for _ in 0..3 {
            for (m, p) in msgs.iter().zip(&packed).take(10).rev() {
                assert_eq!(inf.inflate(p).unwrap(), &m[..]);
            }
        }
        assert_eq!((inf.decoded, inf.reused), (10, 30));
        // 100 distinct ones push the first out; each still right.
        for (m, p) in msgs.iter().zip(&packed) {
            assert_eq!(inf.inflate(p).unwrap(), &m[..]);
        }
        assert_eq!(inf.decoded, 10 + 90);
        assert_eq!(inf.inflate(&packed[0]).unwrap(), &msgs[0][..]);
        assert_eq!(inf.decoded, 101);
        // A different message of the same length is inflated, not mistaken.
        let twin = compress(15, br#"{"n":1,"text":"hellO hello hello"}"#).unwrap();
        assert_eq!(
            inf.inflate(&twin).unwrap(),
            br#"{"n":1,"text":"hellO hello hello"}"#
        );
        assert!(inf.inflate(&[0xFF; 16]).is_err());
    }

    #[test]
    fn a_bomb_is_refused() {
        let zeros = vec![0u8; 1 << 20];
        let packed = compress(15, &zeros).unwrap();
        let mut inf = Inflater::with_limit((1 << 20) - 1);
        assert!(inf.inflate(&packed).unwrap_err().contains("past"));
        assert_eq!(
            Inflater::with_limit(1 << 20)
                .inflate(&packed)
                .unwrap()
                .len(),
            1 << 20
        );
    }
}
