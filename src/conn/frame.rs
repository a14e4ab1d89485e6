//! Frames encoded once and shared by reference.

use std::rc::Rc;
use std::sync::Arc;

use crate::ws::frame::{encode_header, OpCode, MAX_SERVER_HEADER_LEN};

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
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut hdr = [0u8; MAX_SERVER_HEADER_LEN];
        let h = encode_header(opcode, len, &mut hdr);
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
#[derive(Clone)]
pub struct Frame(Rc<SharedFrame>);

impl Frame {
    /// Wraps a shared frame for local fan-out.
    pub fn new(shared: SharedFrame) -> Frame {
        Frame(Rc::new(shared))
    }

    /// The encoded frame.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }

    /// A `Send` reference to the same bytes, for another core.
    pub fn share(&self) -> SharedFrame {
        self.0.share()
    }

    /// Whether two handles point at the same encoded bytes.
    pub fn same_bytes(&self, other: &Frame) -> bool {
        std::ptr::eq(self.bytes().as_ptr(), other.bytes().as_ptr())
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
}
