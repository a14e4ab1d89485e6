//! Incremental UTF-8 validation for text messages that arrive in pieces
//! (fragments, or one frame split across reads).
//!
//! RFC 6455 lets a server fail a bad text message as soon as it sees an
//! invalid byte ("fail fast"), which Autobahn's 6.4.x cases check. So each
//! piece is validated as it arrives with a SIMD validator; only a code point
//! cut at the end of a piece (at most 3 bytes) is carried to the next one.

/// The validator found bytes that can never be UTF-8.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid;

/// Validation state carried between pieces of one message: the start of a
/// code point that the previous piece cut off.
#[derive(Default, Clone, Copy)]
pub struct Utf8Stream {
    carry: [u8; 4],
    carry_len: u8,
}

/// Expected length of a UTF-8 sequence from its lead byte (0 if the byte
/// cannot start a sequence).
fn seq_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

impl Utf8Stream {
    /// A validator at the start of a message.
    pub const fn new() -> Utf8Stream {
        Utf8Stream {
            carry: [0; 4],
            carry_len: 0,
        }
    }

    /// Validates the next piece of the message.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), Invalid> {
        if self.carry_len > 0 {
            let have = self.carry_len as usize;
            let want = seq_len(self.carry[0]);
            let take = (want - have).min(input.len());
            self.carry[have..have + take].copy_from_slice(&input[..take]);
            let now = have + take;
            input = &input[take..];
            match simdutf8::compat::from_utf8(&self.carry[..now]) {
                Ok(_) => self.carry_len = 0,
                // Still a valid prefix of a code point: wait for more.
                Err(e) if e.error_len().is_none() && now < want => {
                    self.carry_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(Invalid),
            }
        }
        match simdutf8::compat::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(Invalid),
                None => {
                    // A truncated but so far valid code point at the end.
                    let tail = &input[e.valid_up_to()..];
                    self.carry[..tail.len()].copy_from_slice(tail);
                    self.carry_len = tail.len() as u8;
                    Ok(())
                }
            },
        }
    }

    /// Ends the message: a code point still cut off is an error.
    pub fn finish(&mut self) -> Result<(), Invalid> {
        let incomplete = self.carry_len != 0;
        *self = Utf8Stream::new();
        if incomplete {
            Err(Invalid)
        } else {
            Ok(())
        }
    }
}

/// Validates a complete text message in one call.
#[inline]
pub fn validate(input: &[u8]) -> Result<(), Invalid> {
    // Short messages are most chat and echo traffic, and mostly ASCII;
    // simdutf8 hands inputs under 64 bytes to `core::str::from_utf8`, 1.3%
    // of a 32-byte echo run's CPU. An OR over the bytes (vectorised) settles
    // the ASCII ones in a few instructions.
    if input.len() < 64 && input.iter().fold(0u8, |acc, b| acc | b) < 0x80 {
        return Ok(());
    }
    simdutf8::basic::from_utf8(input)
        .map(|_| ())
        .map_err(|_| Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_inputs_take_the_ascii_path_only_when_ascii() {
        assert!(validate(b"").is_ok());
        assert!(validate(b"hello, 32 bytes of plain ascii..").is_ok());
        assert!(validate("h\u{e9}llo \u{1f600}".as_bytes()).is_ok());
        assert!(validate(b"abc\xffdef").is_err());
        assert!(validate(b"abc\xc3").is_err()); // cut mid-character
        assert!(validate(&[0x7f; 63]).is_ok());
        let mut long = vec![b'a'; 100];
        long[70] = 0xc0;
        assert!(validate(&long).is_err());
    }

    fn split_all(bytes: &[u8]) -> Vec<Result<(), Invalid>> {
        // Feed the input cut at every possible pair of points.
        let mut out = Vec::new();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut v = Utf8Stream::new();
                let r = v
                    .feed(&bytes[..i])
                    .and_then(|_| v.feed(&bytes[i..j]))
                    .and_then(|_| v.feed(&bytes[j..]))
                    .and_then(|_| v.finish());
                out.push(r);
            }
        }
        out
    }

    #[test]
    fn valid_text_passes_at_every_split() {
        let s = "κόσμε-€-𝄞-aé中";
        for r in split_all(s.as_bytes()) {
            assert_eq!(r, Ok(()));
        }
    }

    #[test]
    fn invalid_text_fails_at_every_split() {
        let cases: [&[u8]; 6] = [
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"ab\xffcd",
            b"\xe0\x80\xaf",
            b"abc\xce", // truncated at the end
        ];
        for c in cases {
            for r in split_all(c) {
                assert_eq!(r, Err(Invalid), "{c:?}");
            }
        }
    }

    #[test]
    fn fails_fast_before_the_message_ends() {
        // Autobahn 6.4.1: the invalid code point is in the middle fragment.
        let mut v = Utf8Stream::new();
        assert!(v.feed("κόσμε".as_bytes()).is_ok());
        assert_eq!(v.feed(b"\xf4\x90\x80\x80"), Err(Invalid));
        // A lead byte that can never be valid is refused on its own.
        let mut v = Utf8Stream::new();
        assert_eq!(v.feed(b"\xf5"), Err(Invalid));
        // A prefix that is invalid already fails before the sequence completes.
        let mut v = Utf8Stream::new();
        assert_eq!(v.feed(b"\xf4\x90"), Err(Invalid));
    }
}
