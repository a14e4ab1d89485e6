//! permessage-deflate (RFC 7692) payload codec: one compressor per window
//! size and one inflater per core, reset before every message.
//!
//! Every connection that negotiated the extension is answered with
//! `server_no_context_takeover` and `client_no_context_takeover`, so each
//! message is a self-contained raw deflate stream in both directions. That
//! is what lets a core share one [`Deflater`] and one [`Inflater`] among
//! all its connections: a connection holds no compression state at all
//! (zlib keeps ~300 KB per stream with context takeover), and a publication
//! is compressed once and the same bytes go to every subscriber.
//!
//! The backend is zlib-rs through flate2: a memory-safe zlib (no C
//! toolchain) that, unlike miniz_oxide, supports raw streams with a chosen
//! window size, which `server_max_window_bits` needs.

use std::time::Instant;

use bytemuck::{Pod, Zeroable};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// RFC 7692 §7.2.1: the bytes a sync flush ends with, removed before
/// sending and appended again before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// An inflated buffer above this capacity is freed after its message, so a
/// core does not pin the largest message it ever inflated.
const KEEP_CAPACITY: usize = 64 * 1024;

/// `--compression-level`'s default: zlib-rs's level 1 is its "quick"
/// strategy with fixed Huffman codes (varied 1 KB JSON ends at 0.82 of its
/// size); 2 is the first with codes fitted to the message (0.62).
pub const DEFAULT_LEVEL: u32 = 2;

/// `--compression-min-bytes`'s default: below it deflate saves next to
/// nothing and costs a compressor reset.
pub const DEFAULT_MIN_BYTES: usize = 256;

/// The LZ77 window a compressor may use, as a power of two: 9..=15.
///
/// zlib cannot produce a raw stream with an 8-bit window, so an offer of
/// `server_max_window_bits=8` is declined (RFC 7692 §7.1.2.1 allows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WindowBits(u8);

impl WindowBits {
    /// 32 KiB: what a peer must accept unless it asked for less.
    pub const MAX: WindowBits = WindowBits(15);

    /// `bits` if a compressor can honour it.
    pub fn new(bits: u8) -> Option<WindowBits> {
        (9..=15).contains(&bits).then_some(WindowBits(bits))
    }

    /// The number of bits.
    pub fn get(self) -> u8 {
        self.0
    }
}

/// Counters of a core's compression work (plain words: published with the
/// core's other counters).
#[repr(C)]
#[derive(Default, Clone, Copy, Debug, Pod, Zeroable)]
pub struct DeflateStats {
    /// Messages compressed (once per message, not per recipient).
    pub compressed: u64,
    /// Their bytes before compression.
    pub compressed_plain_bytes: u64,
    /// Their bytes after compression (as sent, without the sync tail).
    pub compressed_bytes: u64,
    /// Messages that were compressed but sent plain: the result was not
    /// smaller.
    pub incompressible: u64,
    /// Nanoseconds spent compressing.
    pub compress_ns: u64,
    /// Compressed messages received and inflated.
    pub inflated: u64,
    /// Their bytes as received.
    pub inflated_wire_bytes: u64,
    /// Their bytes once inflated.
    pub inflated_bytes: u64,
    /// Nanoseconds spent inflating.
    pub inflate_ns: u64,
    /// Compressed frames queued to connections (a publication counts once
    /// per recipient here, once in `compressed`).
    pub sent_compressed: u64,
    /// Their bytes as queued (headers included).
    pub sent_compressed_bytes: u64,
    /// What the same frames would have been plain.
    pub sent_compressed_plain_bytes: u64,
}

impl DeflateStats {
    /// Field by field sum (a core's compressor and inflater counters).
    pub fn plus(mut self, other: &DeflateStats) -> DeflateStats {
        let a: &mut [u64; 12] = bytemuck::cast_mut(&mut self);
        let b: &[u64; 12] = bytemuck::cast_ref(other);
        for (x, y) in a.iter_mut().zip(b) {
            *x += y;
        }
        self
    }
}

/// A core's compressors: one per window size in use (created on first use,
/// ~300 KB each), reset before every message.
pub struct Deflater {
    level: Compression,
    /// Messages shorter than this are sent plain: deflate's block overhead
    /// makes tiny messages grow, and the reset costs more than it saves.
    min_bytes: usize,
    by_window: [Option<Box<Compress>>; 7],
    /// The last compressed message.
    out: Vec<u8>,
    /// What this core compressed.
    pub stats: DeflateStats,
}

impl Deflater {
    /// Compressors at zlib `level` (0-9) that leave messages under
    /// `min_bytes` plain. Allocates nothing until the first message.
    pub fn new(level: u32, min_bytes: usize) -> Deflater {
        Deflater {
            level: Compression::new(level.min(9)),
            min_bytes,
            by_window: Default::default(),
            out: Vec::new(),
            stats: DeflateStats::default(),
        }
    }

    /// Compresses `payload` as one message for a peer whose window is at
    /// most `window`. Returns the compressed payload (RSV1 set, sync tail
    /// removed), or `None` when the message should go plain: it is under
    /// the threshold, or compressing did not make it smaller.
    pub fn compress(&mut self, window: WindowBits, payload: &[u8]) -> Option<&[u8]> {
        if payload.len() < self.min_bytes.max(1) {
            return None;
        }
        let started = Instant::now();
        let level = self.level;
        let c = self.by_window[usize::from(window.0 - 9)].get_or_insert_with(|| {
            Box::new(Compress::new_with_window_bits(level, false, window.0))
        });
        c.reset();
        self.out.clear();
        // Anything longer than the payload plus the tail is no gain: one
        // call into that much room either finishes or proves it.
        self.out.reserve(payload.len() + TAIL.len() + 1);
        let done = c
            .compress_vec(payload, &mut self.out, FlushCompress::Sync)
            .is_ok()
            && c.total_in() == payload.len() as u64
            && self.out.len() < self.out.capacity();
        self.stats.compress_ns += started.elapsed().as_nanos() as u64;
        let packed = self.out.len().saturating_sub(TAIL.len());
        if !done || !self.out.ends_with(&TAIL) || packed >= payload.len() {
            self.stats.incompressible += 1;
            self.release();
            return None;
        }
        self.out.truncate(packed);
        self.stats.compressed += 1;
        self.stats.compressed_plain_bytes += payload.len() as u64;
        self.stats.compressed_bytes += packed as u64;
        Some(&self.out)
    }

    /// Frees the output buffer if a large message grew it.
    pub fn release(&mut self) {
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
    }
}

/// Why a compressed message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (close 1009); inflating stopped
    /// there.
    TooBig,
    /// Not a valid raw deflate stream (close 1007).
    Invalid,
}

/// A core's inflater: a 32 KiB-window raw inflater (it reads any window a
/// client chose), reset before every message, with an output buffer that
/// never grows past the message limit.
#[derive(Default)]
pub struct Inflater {
    d: Option<Box<Decompress>>,
    out: Vec<u8>,
    /// What this core inflated.
    pub stats: DeflateStats,
}

impl Inflater {
    /// An inflater; allocates nothing until the first message.
    pub fn new() -> Inflater {
        Inflater::default()
    }

    /// Inflates one message's compressed payload. At most `limit` bytes are
    /// produced: one byte past it stops inflating with
    /// [`InflateError::TooBig`], so a deflate bomb costs at most the limit
    /// in memory. The result is valid until the next call.
    pub fn inflate(&mut self, compressed: &[u8], limit: usize) -> Result<&[u8], InflateError> {
        let started = Instant::now();
        let d = self
            .d
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, 15)));
        d.reset(false);
        self.out.clear();
        let result = inflate_into(d, compressed, &mut self.out, limit);
        self.stats.inflate_ns += started.elapsed().as_nanos() as u64;
        match result {
            Ok(()) => {
                self.stats.inflated += 1;
                self.stats.inflated_wire_bytes += compressed.len() as u64;
                self.stats.inflated_bytes += self.out.len() as u64;
                Ok(&self.out)
            }
            Err(e) => {
                self.release();
                Err(e)
            }
        }
    }

    /// Frees the output buffer if a large message grew it.
    pub fn release(&mut self) {
        if self.out.capacity() > KEEP_CAPACITY {
            self.out = Vec::new();
        }
    }
}

fn inflate_into(
    d: &mut Decompress,
    compressed: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), InflateError> {
    for piece in [compressed, &TAIL[..]] {
        let mut at = 0;
        loop {
            if out.len() == out.capacity() {
                // Double, from 4 KiB, but never past limit + 1: the byte
                // that proves the message too big.
                let room = out.len().max(4096).min(limit + 1 - out.len());
                if room == 0 {
                    return Err(InflateError::TooBig);
                }
                out.reserve_exact(room);
            }
            let (in0, out0) = (d.total_in(), out.len());
            let status = d
                .decompress_vec(&piece[at..], out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Invalid)?;
            at += (d.total_in() - in0) as usize;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            let stuck = d.total_in() == in0 && out.len() == out0;
            match status {
                // A final block ends the message; what follows (the tail
                // we appended) is not read.
                Status::StreamEnd => return Ok(()),
                _ if at == piece.len() && (out.len() < out.capacity() || stuck) => break,
                // Room and input, yet no progress: not a deflate stream.
                _ if stuck => return Err(InflateError::Invalid),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        let mut i = 0;
        while v.len() < n {
            v.extend_from_slice(
                format!("{{\"user\":\"u{i}\",\"text\":\"hello world\",\"n\":{i}}},").as_bytes(),
            );
            i += 1;
        }
        v.truncate(n);
        v
    }

    #[test]
    fn round_trips_every_window_and_resets_between_messages() {
        let mut inf = Inflater::new();
        for bits in 9..=15 {
            let w = WindowBits::new(bits).unwrap();
            let mut d = Deflater::new(6, 16);
            for n in [100usize, 1000, 70_000] {
                let msg = json(n);
                let packed = d.compress(w, &msg).expect("json compresses").to_vec();
                assert!(packed.len() < msg.len());
                // Decodable on its own by an inflater limited to `bits`:
                // no match reaches further back than the window.
                let mut strict = Decompress::new_with_window_bits(false, bits);
                let mut plain = Vec::with_capacity(n + 16);
                let mut input = packed.clone();
                input.extend_from_slice(&TAIL);
                strict
                    .decompress_vec(&input, &mut plain, FlushDecompress::Sync)
                    .unwrap();
                assert_eq!(plain, msg, "window {bits}, {n} bytes");
                assert_eq!(inf.inflate(&packed, 1 << 20).unwrap(), &msg[..]);
            }
        }
    }

    #[test]
    fn small_and_incompressible_messages_stay_plain() {
        let mut d = Deflater::new(6, 64);
        assert!(d.compress(WindowBits::MAX, &json(63)).is_none());
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(d.compress(WindowBits::MAX, &noise).is_none());
        assert_eq!(d.stats.incompressible, 1);
        assert_eq!(d.stats.compressed, 0);
    }

    #[test]
    fn a_bomb_stops_one_byte_past_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let mut d = Deflater::new(6, 1);
        let packed = d.compress(WindowBits::MAX, &zeros).unwrap().to_vec();
        assert!(packed.len() < 20_000, "{} bytes", packed.len());
        let mut inf = Inflater::new();
        assert_eq!(inf.inflate(&packed, 1 << 20), Err(InflateError::TooBig));
        assert!(inf.out.capacity() <= KEEP_CAPACITY, "released");
        // Exactly at the limit is fine.
        let packed = d
            .compress(WindowBits::MAX, &zeros[..1 << 20])
            .unwrap()
            .to_vec();
        assert_eq!(inf.inflate(&packed, 1 << 20).unwrap().len(), 1 << 20);
    }

    #[test]
    fn garbage_is_invalid_and_the_inflater_recovers() {
        let mut inf = Inflater::new();
        assert_eq!(
            inf.inflate(&[0xFF; 32], 1 << 20),
            Err(InflateError::Invalid)
        );
        let mut d = Deflater::new(6, 1);
        let msg = json(500);
        let packed = d.compress(WindowBits::MAX, &msg).unwrap().to_vec();
        assert_eq!(inf.inflate(&packed, 1 << 20).unwrap(), &msg[..]);
        // An empty message: one empty stored block.
        assert_eq!(inf.inflate(&[0x00], 10).unwrap(), b"");
        assert_eq!(inf.inflate(&[], 10).unwrap(), b"");
    }

    #[test]
    fn a_final_block_ends_the_message() {
        // A client may end with BFINAL (a Z_FINISH stream): everything
        // after it, including the appended tail, is ignored.
        let msg = json(3000);
        let mut c = Compress::new(Compression::new(6), false);
        let mut packed = Vec::with_capacity(4000);
        c.compress_vec(&msg, &mut packed, FlushCompress::Finish)
            .unwrap();
        let mut inf = Inflater::new();
        assert_eq!(inf.inflate(&packed, 1 << 20).unwrap(), &msg[..]);
    }
}
