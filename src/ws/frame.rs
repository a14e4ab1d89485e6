//! RFC 6455 §5.2 frame headers: parsing client frames, encoding server frames,
//! and unmasking payloads a machine word at a time.
//!
//! The parser only looks at headers. Payload bytes are handled by the caller
//! (`Session`) in place, so a frame that arrives complete in one read buffer is
//! never copied.

use super::close::CloseCode;

/// Frame opcodes defined by RFC 6455. Reserved opcodes never get this far:
/// [`parse_header`] fails the connection with 1002 instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// Continues a fragmented message.
    Continuation = 0x0,
    /// A UTF-8 text message (or its first fragment).
    Text = 0x1,
    /// A binary message (or its first fragment).
    Binary = 0x2,
    /// Starts or answers the closing handshake.
    Close = 0x8,
    /// Asks for a pong.
    Ping = 0x9,
    /// Answers a ping (or is a heartbeat).
    Pong = 0xA,
}

impl OpCode {
    fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Control frames (close, ping, pong) may interleave with a fragmented
    /// message and are limited to 125 bytes of payload.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Longest client frame header: 2 + 8 (64-bit length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;
/// Longest server frame header: servers never mask.
pub const MAX_SERVER_HEADER_LEN: usize = 10;
/// RFC 6455 §5.5: control frame payloads are at most 125 bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A parsed, validated client frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The final fragment of its message.
    pub fin: bool,
    /// RSV1: the message this frame starts is compressed
    /// (permessage-deflate; only ever set on a first data frame).
    pub compressed: bool,
    /// What the frame carries.
    pub opcode: OpCode,
    /// The masking key (all zero when unmasked).
    pub mask: [u8; 4],
    /// Payload length as declared.
    pub payload_len: u64,
}

/// Why a header was rejected: the close code to fail the connection with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderError {
    /// The close code to fail the connection with.
    pub code: CloseCode,
    /// Why, for the close frame.
    pub reason: &'static str,
}

const fn protocol(reason: &'static str) -> HeaderError {
    HeaderError {
        code: CloseCode::PROTOCOL,
        reason,
    }
}

/// The RSV1 bit of a frame's first byte: permessage-deflate's
/// "Per-Message Compressed" bit.
pub const RSV1: u8 = 0x40;

/// Parses one client frame header from the start of `buf`, for a
/// connection without extensions (any RSV bit fails it).
#[inline]
pub fn parse_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, HeaderError> {
    parse_header_with(buf, false)
}

/// Parses one client frame header from the start of `buf`; `deflate`: the
/// connection negotiated permessage-deflate, so RSV1 may start a message.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((header, len)))`
/// with the header length otherwise. Everything RFC 6455 lets a server check
/// from the header alone is checked here: RSV bits (RSV1 only on the first
/// frame of a data message, and only with the extension; RFC 7692 §6),
/// reserved opcodes, masking, control frame size and fragmentation, and the
/// most significant bit of a 64-bit length.
#[inline]
pub fn parse_header_with(
    buf: &[u8],
    deflate: bool,
) -> Result<Option<(FrameHeader, usize)>, HeaderError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x30 != 0 {
        return Err(protocol("reserved bits set without an extension"));
    }
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(protocol("reserved opcode"))?;
    let compressed = b0 & RSV1 != 0;
    if compressed {
        if !deflate {
            return Err(protocol("reserved bits set without an extension"));
        }
        if opcode.is_control() {
            return Err(protocol("RSV1 set on a control frame"));
        }
        if opcode == OpCode::Continuation {
            return Err(protocol("RSV1 set on a continuation frame"));
        }
    }
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(protocol("client frames must be masked"));
    }
    let len7 = b1 & 0x7F;
    if opcode.is_control() {
        if !fin {
            return Err(protocol("fragmented control frame"));
        }
        if len7 as usize > MAX_CONTROL_PAYLOAD {
            return Err(protocol("control frame payload over 125 bytes"));
        }
    }
    let (payload_len, len_bytes) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 2)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(protocol("64-bit payload length with the top bit set"));
            }
            (len, 8)
        }
        n => (n as u64, 0),
    };
    let header_len = 2 + len_bytes + 4;
    if buf.len() < header_len {
        return Ok(None);
    }
    let m = &buf[2 + len_bytes..header_len];
    Ok(Some((
        FrameHeader {
            fin,
            compressed,
            opcode,
            mask: [m[0], m[1], m[2], m[3]],
            payload_len,
        },
        header_len,
    )))
}

/// Length of the header [`encode_header`] writes for a payload of `len` bytes.
#[inline]
pub const fn server_header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Writes an unmasked, unfragmented server frame header into `out` and
/// returns its length (2, 4 or 10 bytes).
#[inline]
pub fn encode_header(
    opcode: OpCode,
    payload_len: usize,
    out: &mut [u8; MAX_SERVER_HEADER_LEN],
) -> usize {
    out[0] = 0x80 | opcode as u8;
    if payload_len < 126 {
        out[1] = payload_len as u8;
        2
    } else if payload_len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// Appends a complete server frame (header + payload) to `out`.
#[inline]
pub fn encode_frame_into(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let mut hdr = [0u8; MAX_SERVER_HEADER_LEN];
    let n = encode_header(opcode, payload.len(), &mut hdr);
    out.reserve(n + payload.len());
    out.extend_from_slice(&hdr[..n]);
    out.extend_from_slice(payload);
}

/// Appends a complete server frame whose payload is permessage-deflate
/// compressed (RSV1 set).
#[inline]
pub fn encode_compressed_frame_into(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    encode_frame_into(opcode, payload, out);
    out[at] |= RSV1;
}

/// Appends a masked client frame: the client side of the codec, for the
/// load generator, tests and benchmarks. `opcode` is the raw 4-bit value so
/// callers can also build frames a server must reject.
pub fn encode_client_frame(
    fin: bool,
    opcode: u8,
    payload: &[u8],
    mask: [u8; 4],
    out: &mut Vec<u8>,
) {
    // Same length encoding as a server frame; then the client's first byte
    // (any FIN and raw opcode) and the MASK bit.
    let mut hdr = [0u8; MAX_SERVER_HEADER_LEN];
    let h = encode_header(OpCode::Binary, payload.len(), &mut hdr);
    hdr[0] = (if fin { 0x80 } else { 0 }) | (opcode & 0x0F);
    hdr[1] |= 0x80;
    out.reserve(h + mask.len() + payload.len());
    out.extend_from_slice(&hdr[..h]);
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// XORs `buf` with the 4-byte `mask`, starting at byte `offset` of the mask
/// stream (the payload position of `buf[0]`), so a payload may be unmasked in
/// pieces as it arrives.
///
/// Works eight bytes at a time; since 8 is a multiple of 4 the mask phase is
/// the same for every word, and the compiler turns the loop into SIMD.
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: u64) {
    let r = (offset & 3) as usize;
    let m = [
        mask[r],
        mask[(r + 1) & 3],
        mask[(r + 2) & 3],
        mask[(r + 3) & 3],
    ];
    let m64 = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let (words, tail) = buf.as_chunks_mut::<8>();
    for w in words {
        *w = (u64::from_ne_bytes(*w) ^ m64).to_ne_bytes();
    }
    for (i, b) in tail.iter_mut().enumerate() {
        *b ^= m[i & 3];
    }
}

/// Appends `src` unmasked with `mask` to `out`: the copy and the unmasking
/// in one pass over the bytes. A handler that copies a payload anyway (an
/// echo) uses this instead of unmasking in place and then copying, which
/// reads and writes every byte twice.
pub fn unmask_into(src: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    let m64 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    out.reserve(src.len());
    let start = out.len();
    let (words, tail) = src.as_chunks::<8>();
    // SAFETY: `reserve` made room for `src.len()` bytes after `start`; every
    // one of them is written below before `set_len` exposes them.
    unsafe {
        let dst = out.as_mut_ptr().add(start);
        for (i, w) in words.iter().enumerate() {
            dst.add(i * 8)
                .cast::<u64>()
                .write_unaligned(u64::from_ne_bytes(*w) ^ m64);
        }
        let done = words.len() * 8;
        for (i, b) in tail.iter().enumerate() {
            // `done` is a multiple of 4, so the mask phase restarts at 0.
            dst.add(done + i).write(b ^ mask[i & 3]);
        }
        out.set_len(start + src.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmask_into_matches_unmasking_in_place() {
        for n in [0usize, 1, 3, 7, 8, 9, 31, 1000, 16 * 1024 + 5] {
            let src: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let mask = [0xA1, 0x02, 0x7F, 0xE4];
            let mut want = src.clone();
            apply_mask(&mut want, mask, 0);
            let mut out = vec![9u8, 9];
            unmask_into(&src, mask, &mut out);
            assert_eq!(&out[..2], &[9, 9]);
            assert_eq!(&out[2..], &want[..], "length {n}");
        }
    }

    fn masked(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_client_frame(fin, op, payload, mask, &mut v);
        v
    }

    #[test]
    fn client_frames_unmask_to_their_payload() {
        let payload: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
        let mut f = masked(true, 2, &payload, [9, 8, 7, 6]);
        let (h, hl) = parse_header(&f).unwrap().unwrap();
        assert_eq!((h.payload_len, h.opcode), (300, OpCode::Binary));
        apply_mask(&mut f[hl..], h.mask, 0);
        assert_eq!(&f[hl..], &payload[..]);
    }

    #[test]
    fn parses_all_length_forms() {
        for n in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20] {
            let payload = vec![7u8; n];
            let f = masked(true, 2, &payload, [1, 2, 3, 4]);
            let (h, hl) = parse_header(&f).unwrap().unwrap();
            assert_eq!(h.payload_len, n as u64);
            assert_eq!(h.opcode, OpCode::Binary);
            assert!(h.fin);
            assert_eq!(hl + n, f.len());
            // every strict prefix of the header is "incomplete"
            for cut in 0..hl {
                assert_eq!(parse_header(&f[..cut]).unwrap(), None, "n={n} cut={cut}");
            }
        }
    }

    #[test]
    fn rejects_what_rfc6455_forbids() {
        let err = |b: &[u8]| parse_header(b).unwrap_err().code;
        assert_eq!(err(&[0x81, 0x00]), CloseCode::PROTOCOL, "unmasked");
        assert_eq!(err(&[0xC1, 0x80]), CloseCode::PROTOCOL, "rsv1");
        assert_eq!(err(&[0xA1, 0x80]), CloseCode::PROTOCOL, "rsv2");
        assert_eq!(err(&[0x91, 0x80]), CloseCode::PROTOCOL, "rsv3");
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(err(&[0x80 | op, 0x80]), CloseCode::PROTOCOL, "op {op}");
        }
        assert_eq!(err(&[0x09, 0x80]), CloseCode::PROTOCOL, "fragmented ping");
        assert_eq!(err(&[0x89, 0x80 | 126]), CloseCode::PROTOCOL, "long ping");
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(err(&huge), CloseCode::PROTOCOL, "64-bit msb");
    }

    #[test]
    fn encodes_headers_roundtrip_lengths() {
        for n in [0usize, 125, 126, 65535, 65536, 20_000_000] {
            let mut h = [0u8; MAX_SERVER_HEADER_LEN];
            let hl = encode_header(OpCode::Text, n, &mut h);
            assert_eq!(hl, server_header_len(n));
            assert_eq!(h[0], 0x81);
            let len = match h[1] {
                126 => u16::from_be_bytes([h[2], h[3]]) as usize,
                127 => u64::from_be_bytes(h[2..10].try_into().unwrap()) as usize,
                x => x as usize,
            };
            assert_eq!(len, n);
        }
    }

    #[test]
    fn mask_matches_bytewise_at_every_offset_and_split() {
        let mask = [0xA1, 0x5B, 0x07, 0xEE];
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let expect: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        for split in [0usize, 1, 2, 3, 5, 7, 8, 9, 500, 999, 1000] {
            let mut d = data.clone();
            let (a, b) = d.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split as u64);
            assert_eq!(d, expect, "split {split}");
        }
    }
}
