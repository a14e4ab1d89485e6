//! Client side of the wire: pre-encoded masked frames, the upgrade request,
//! and a minimal parser for the (unmasked) frames a server sends.

/// Mask key for every frame the generator sends. RFC 6455 wants keys to be
/// unpredictable to defeat cache poisoning by scripts in browsers; a load
/// generator has no such adversary, and a fixed key lets frames be encoded
/// once and reused. The server still unmasks every byte.
pub(crate) const MASK: [u8; 4] = [0x5a, 0xa5, 0x3c, 0xc3];

/// Opcodes used here.
pub(crate) const TEXT: u8 = 1;
pub(crate) const BINARY: u8 = 2;
pub(crate) const CLOSE: u8 = 8;
pub(crate) const PING: u8 = 9;
pub(crate) const PONG: u8 = 10;

/// RSV1 in a frame's first byte: the message is compressed
/// (permessage-deflate), set on its first frame only.
pub(crate) const RSV1: u8 = 0x40;

/// A complete masked client frame.
pub(crate) fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    ringcast::ws::frame::encode_client_frame(true, opcode, payload, MASK, &mut v);
    v
}

/// A complete masked client frame of a compressed message: RSV1 set,
/// `compressed` as the payload.
pub(crate) fn masked_compressed_frame(opcode: u8, compressed: &[u8]) -> Vec<u8> {
    let mut v = masked_frame(opcode, compressed);
    v[0] |= RSV1;
    v
}

/// Offset of the payload in a frame built by [`masked_frame`].
pub(crate) fn payload_offset(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 6,
        126..=0xFFFF => 8,
        _ => 14,
    }
}

/// XORs `bytes` into a masked frame's payload at payload offset `at`.
pub(crate) fn write_masked(frame: &mut [u8], payload_off: usize, at: usize, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        let p = at + i;
        frame[payload_off + p] = b ^ MASK[p & 3];
    }
}

/// The upgrade request (fixed key: the generator checks the status line,
/// the server's accept value is covered by the test suite), offering
/// permessage-deflate when `deflate`. `pad`: a plain request carries an
/// ignored header exactly as long as the offer instead, so plain and
/// deflate clients send requests of one length (the server's receive
/// buffers then hold the same bytes, and an RSS difference between them
/// is what negotiating costs).
pub(crate) fn upgrade_request(host: &str, path: &str, deflate: bool, pad: bool) -> Vec<u8> {
    let offer = format!("Sec-WebSocket-Extensions: {}\r\n", crate::deflate::OFFER);
    let ext = if deflate {
        offer
    } else if pad {
        let name = "X-Ringcast-Load-Pad: ";
        format!("{name}{}\r\n", "p".repeat(offer.len() - name.len() - 2))
    } else {
        String::new()
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
    )
    .into_bytes()
}

/// End of an HTTP response head in `buf`, if complete.
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A complete server frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ServerFrame {
    pub op: u8,
    /// RSV1: a compressed message (permessage-deflate).
    pub compressed: bool,
    /// Header length: the payload starts here.
    pub header: usize,
    pub len: usize,
}

/// The server frame at the start of `buf`, or `None` if incomplete.
#[inline]
pub(crate) fn server_frame(buf: &[u8]) -> Option<ServerFrame> {
    if buf.len() < 2 {
        return None;
    }
    let op = buf[0] & 0x0F;
    let compressed = buf[0] & RSV1 != 0;
    let (len, hl) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    (buf.len() >= hl + len).then_some(ServerFrame {
        op,
        compressed,
        header: hl,
        len,
    })
}

/// Monotonic clock in nanoseconds; the same clock in every process on the
/// host, so a timestamp written by one generator process can be read by
/// another.
#[inline]
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_through_the_server_codec() {
        for n in [0usize, 32, 125, 126, 16384, 70000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut f = masked_frame(BINARY, &payload);
            let (h, hl) = ringcast::ws::frame::parse_header(&f).unwrap().unwrap();
            assert_eq!(h.payload_len as usize, n);
            assert_eq!(hl, payload_offset(n));
            ringcast::ws::frame::apply_mask(&mut f[hl..], h.mask, 0);
            assert_eq!(&f[hl..], &payload[..]);
        }
    }

    #[test]
    fn parses_server_frames() {
        let mut out = Vec::new();
        ringcast::ws::frame::encode_frame_into(ringcast::ws::OpCode::Text, &[b'a'; 300], &mut out);
        let f = ServerFrame {
            op: TEXT,
            compressed: false,
            header: 4,
            len: 300,
        };
        assert_eq!(server_frame(&out), Some(f));
        assert_eq!(server_frame(&out[..100]), None);
        out[0] |= RSV1;
        assert_eq!(
            server_frame(&out),
            Some(ServerFrame {
                compressed: true,
                ..f
            })
        );
    }

    #[test]
    fn compressed_client_frames_carry_rsv1() {
        let packed = crate::deflate::compress(15, &[b'a'; 200]).unwrap();
        let mut f = masked_compressed_frame(TEXT, &packed);
        // The server's parser, told deflate was negotiated, takes RSV1.
        let (h, hl) = ringcast::ws::frame::parse_header(&{
            let mut plain = f.clone();
            plain[0] &= !RSV1;
            plain
        })
        .unwrap()
        .unwrap();
        assert_eq!(f[0], 0x80 | RSV1 | TEXT);
        assert_eq!(h.payload_len as usize, packed.len());
        ringcast::ws::frame::apply_mask(&mut f[hl..], h.mask, 0);
        assert_eq!(
            crate::deflate::Inflater::new().inflate(&f[hl..]).unwrap(),
            &[b'a'; 200][..]
        );
    }

    #[test]
    fn the_upgrade_offers_deflate_when_asked() {
        let plain = String::from_utf8(upgrade_request("h:1", "/echo", false, false)).unwrap();
        assert!(!plain.contains("Extensions"));
        assert!(plain.ends_with("\r\n\r\n"));
        let padded = upgrade_request("h:1", "/echo", false, true);
        let offer = String::from_utf8(upgrade_request("h:1", "/echo", true, false)).unwrap();
        assert_eq!(padded.len(), offer.len());
        assert!(!String::from_utf8(padded).unwrap().contains("Extensions"));
        assert!(offer.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ));
    }
}
