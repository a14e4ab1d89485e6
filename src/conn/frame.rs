//! Frames encoded once and shared by reference.

use std::cell::OnceCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::ws::deflate::{Deflater, WindowBits};
use crate::ws::frame::{encode_header, OpCode, MAX_SERVER_HEADER_LEN, RSV1};

/// A complete server frame (header + payload), encoded exactly once.
///
/// Immutable and `Send`: this is what crosses cores through the mesh. Each
/// core holds it by one `Arc` reference and fans it out locally through
/// [`Frame`], so the atomic count is touched once per core, not once per
/// recipient.
pub struct SharedFrame(Arc<[u8]>);

impl SharedFrame {
    /// Encodes `payload` as one unfragmented frame: one allocation, one copy.
    pub fn encode(opcode: OpCode, payload: &[u8]) -> SharedFrame {
        SharedFrame::encode_parts(opcode, &[payload])
    }

    /// Encodes the concatenation of `parts` as one frame's payload (a
    /// channel message wraps the client's payload in its envelope this way:
    /// the payload is copied once, straight into the shared frame).
    pub fn encode_parts(opcode: OpCode, parts: &[&[u8]]) -> SharedFrame {
        SharedFrame::encode_with(opcode, false, parts)
    }

    /// Encodes a permessage-deflate payload: RSV1 set.
    pub fn encode_compressed(opcode: OpCode, payload: &[u8]) -> SharedFrame {
        SharedFrame::encode_with(opcode, true, &[payload])
    }

    fn encode_with(opcode: OpCode, compressed: bool, parts: &[&[u8]]) -> SharedFrame {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut hdr = [0u8; MAX_SERVER_HEADER_LEN];
        let h = encode_header(opcode, len, &mut hdr);
        if compressed {
            hdr[0] |= RSV1;
        }
        let mut bytes = Arc::<[u8]>::new_uninit_slice(h + len);
        let dst = Arc::get_mut(&mut bytes)
            .expect("a fresh Arc is unique")
            .as_mut_ptr()
            .cast::<u8>();
        // SAFETY: `dst` points at h + len writable bytes; the header and the
        // parts (len bytes in total) fill all of them, so the slice is
        // initialised afterwards.
        unsafe {
            std::ptr::copy_nonoverlapping(hdr.as_ptr(), dst, h);
            let mut at = h;
            for p in parts {
                std::ptr::copy_nonoverlapping(p.as_ptr(), dst.add(at), p.len());
                at += p.len();
            }
            SharedFrame(bytes.assume_init())
        }
    }

    /// Another reference to the same bytes (for another core).
    pub fn share(&self) -> SharedFrame {
        SharedFrame(Arc::clone(&self.0))
    }

    /// The encoded frame.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A core-local handle to a [`SharedFrame`]: cloning it for each of 10,000
/// subscribers is 10,000 non-atomic increments on one cache line that no
/// other core touches.
///
/// It also carries the frame's permessage-deflate variant, compressed the
/// first time a subscriber on this core that negotiated the extension is
/// delivered to: once per core and window size, never per recipient.
#[derive(Clone)]
pub struct Frame(Rc<FrameInner>);

struct FrameInner {
    plain: SharedFrame,
    /// The compressed variant for a 32 KiB window (what browsers get);
    /// `None` inside: the message goes plain (small, or incompressible).
    deflated: OnceCell<Option<Frame>>,
    /// Variants for the windows 9..=14 a client may have asked for.
    narrow: OnceCell<Box<[OnceCell<Option<Frame>>; 6]>>,
}

impl Frame {
    /// Wraps a shared frame for local fan-out.
    pub fn new(shared: SharedFrame) -> Frame {
        Frame(Rc::new(FrameInner {
            plain: shared,
            deflated: OnceCell::new(),
            narrow: OnceCell::new(),
        }))
    }

    /// The encoded frame.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        self.0.plain.bytes()
    }

    /// A `Send` reference to the same bytes, for another core.
    pub fn share(&self) -> SharedFrame {
        self.0.plain.share()
    }

    /// The frame to queue for a peer: for one that negotiated
    /// permessage-deflate with `window`, the compressed variant (made on
    /// first use with the core's `deflater`) unless the message goes plain.
    #[inline]
    pub fn for_peer<'a>(
        &'a self,
        window: Option<WindowBits>,
        deflater: &mut Deflater,
    ) -> &'a Frame {
        let Some(w) = window else {
            return self;
        };
        let cell = if w == WindowBits::MAX {
            &self.0.deflated
        } else {
            let narrow = self.0.narrow.get_or_init(Box::default);
            &narrow[usize::from(w.get() - 9)]
        };
        cell.get_or_init(|| self.compress(w, deflater))
            .as_ref()
            .unwrap_or(self)
    }

    fn compress(&self, w: WindowBits, deflater: &mut Deflater) -> Option<Frame> {
        let bytes = self.bytes();
        // Data frames only; the header is 2, 4 or 10 bytes by its length byte.
        let opcode = match bytes.first()? & 0x0F {
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            _ => return None,
        };
        let at = match bytes.get(1)? {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let packed = deflater.compress(w, bytes.get(at..)?)?;
        let frame = SharedFrame::encode_compressed(opcode, packed);
        deflater.release();
        Some(Frame::new(frame))
    }

    /// Whether two handles point at the same encoded bytes.
    pub fn same_bytes(&self, other: &Frame) -> bool {
        std::ptr::eq(self.bytes().as_ptr(), other.bytes().as_ptr())
    }
}

/// Frames the cache holds at most; past it, it starts over.
const FRAME_CACHE_MAX: usize = 1024;

/// This core's handles for shared frames that arrive more than once: the
/// publications a recovery replays, which the same history hands to every
/// connection that recovers. Replayed through one handle, a publication is
/// compressed once per core however many connections recover it (a
/// reconnect storm recovers the same history thousands of times).
///
/// Keyed by the frame's address, which stays unique while the cache holds
/// the frame. Bounded: at most [`FRAME_CACHE_MAX`] frames, and the owner
/// empties it once per trim period, so it pins recent frames only.
#[derive(Default)]
pub(crate) struct FrameCache {
    map: std::collections::HashMap<usize, Frame>,
}

impl FrameCache {
    /// The core's handle for `shared`: the cached one if this frame came
    /// before, a new one (now cached) otherwise.
    pub(crate) fn frame(&mut self, shared: SharedFrame) -> Frame {
        let key = shared.bytes().as_ptr() as usize;
        if let Some(f) = self.map.get(&key) {
            return f.clone();
        }
        if self.map.len() >= FRAME_CACHE_MAX {
            self.map.clear();
        }
        let f = Frame::new(shared);
        self.map.insert(key, f.clone());
        f
    }

    /// Whether it holds no frame.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops every frame (and the map's memory).
    pub(crate) fn clear(&mut self) {
        self.map = std::collections::HashMap::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_once_and_shares() {
        let f = Frame::new(SharedFrame::encode(OpCode::Text, b"hi"));
        assert_eq!(f.bytes(), &[0x81, 2, b'h', b'i']);
        let g = f.clone();
        assert!(f.same_bytes(&g));
        let remote = Frame::new(f.share());
        assert!(remote.same_bytes(&f));
        let big = SharedFrame::encode(OpCode::Binary, &vec![9u8; 70_000]);
        assert_eq!(big.bytes().len(), 10 + 70_000);
        assert_eq!(big.bytes()[1], 127);
        let parts = SharedFrame::encode_parts(OpCode::Text, &[b"{\"a\":", b"1", b"}"]);
        assert_eq!(parts.bytes(), b"\x81\x07{\"a\":1}");
    }

    #[test]
    fn compressed_once_per_window_and_plain_when_small() {
        let text = "{\"event\":\"tick\",\"value\":42}".repeat(40);
        let f = Frame::new(SharedFrame::encode(OpCode::Text, text.as_bytes()));
        let mut d = Deflater::new(6, 64);
        assert!(f.for_peer(None, &mut d).same_bytes(&f));
        let a = f.for_peer(Some(WindowBits::MAX), &mut d).clone();
        let b = f.for_peer(Some(WindowBits::MAX), &mut d).clone();
        assert!(a.same_bytes(&b), "compressed once");
        assert_eq!(d.stats.compressed, 1);
        assert_eq!(a.bytes()[0], 0x80 | RSV1 | OpCode::Text as u8);
        assert!(a.bytes().len() < f.bytes().len() / 4);
        let narrow = f.for_peer(WindowBits::new(9), &mut d).clone();
        assert!(!narrow.same_bytes(&a));
        assert_eq!(d.stats.compressed, 2);
        let mut inf = crate::ws::deflate::Inflater::new();
        for c in [&a, &narrow] {
            let at = if c.bytes()[1] == 126 { 4 } else { 2 };
            let plain = inf.inflate(&c.bytes()[at..], 1 << 20).unwrap();
            assert_eq!(plain, text.as_bytes());
        }
        let small = Frame::new(SharedFrame::encode(OpCode::Text, b"{\"a\":1}"));
        assert!(small
            .for_peer(Some(WindowBits::MAX), &mut d)
            .same_bytes(&small));
        let close = Frame::new(SharedFrame::encode(OpCode::Close, &[3, 232]));
        assert!(close
            .for_peer(Some(WindowBits::MAX), &mut d)
            .same_bytes(&close));
    }
}
