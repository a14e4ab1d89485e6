//! The one delivery loop every fan-out goes through: frames to the
//! out-queues of a list of connections, each bound checked before every
//! frame. It sees keys and queues only; who owns the connections, and what
//! becomes of one that went over its bound, is the caller's business.

use crate::conn::outq::Pushed;
use crate::conn::{BufPool, ConnKey, Frame, OutQueue};
use crate::ws::deflate::{Deflater, WindowBits};

/// The connections fan-out delivers to, by key: implemented by whoever owns
/// them (a core's slab).
pub trait Recipients {
    /// Runs `push` on the out-queue of `key` if that connection is still
    /// there, with the window it negotiated permessage-deflate with (if it
    /// did), then records what happened (queued frames to flush, a bound
    /// crossed). Returns what `push` returned, or `None` for a connection
    /// that is gone.
    fn with_queue(
        &mut self,
        key: ConnKey,
        push: impl FnOnce(&mut OutQueue, Option<WindowBits>) -> Pushed,
    ) -> Option<Pushed>;
}

/// Queues `batch` to each connection in `to`, in order, a reference or a
/// copy per frame (see [`OutQueue::push_frames`]). A connection that
/// negotiated permessage-deflate gets each frame's compressed variant,
/// made by `deflater` for the first such recipient on this core and shared
/// by the rest. Returns the number of frames queued.
#[inline]
pub(crate) fn deliver<'f>(
    to: impl IntoIterator<Item = ConnKey>,
    batch: impl Iterator<Item = &'f Frame> + Clone,
    pool: &mut BufPool,
    deflater: &mut Deflater,
    max_queue: usize,
    recipients: &mut impl Recipients,
) -> u64 {
    let mut deliveries = 0;
    for key in to {
        let pushed = recipients.with_queue(key, |q, window| match window {
            None => q.push_frames(batch.clone(), max_queue, pool),
            Some(_) => {
                let frames = batch.clone().map(|f| {
                    let g = f.for_peer(window, deflater);
                    if !g.same_bytes(f) {
                        deflater.stats.sent_compressed += 1;
                        deflater.stats.sent_compressed_bytes += g.bytes().len() as u64;
                        deflater.stats.sent_compressed_plain_bytes += f.bytes().len() as u64;
                    }
                    g
                });
                q.push_frames(frames, max_queue, pool)
            }
        });
        deliveries += pushed.map_or(0, |p| p.frames);
    }
    deliveries
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Out-queues by key, recording who was delivered to (for unit tests
    /// of fan-out without a core).
    #[derive(Default)]
    pub(crate) struct Queues {
        pub(crate) queues: HashMap<ConnKey, OutQueue>,
        /// Connections that negotiated permessage-deflate.
        pub(crate) deflate: HashMap<ConnKey, WindowBits>,
        pub(crate) touched: Vec<(ConnKey, bool)>,
    }

    impl Queues {
        pub(crate) fn add(&mut self, key: ConnKey) {
            self.queues.insert(key, OutQueue::default());
        }
    }

    impl Recipients for Queues {
        fn with_queue(
            &mut self,
            key: ConnKey,
            push: impl FnOnce(&mut OutQueue, Option<WindowBits>) -> Pushed,
        ) -> Option<Pushed> {
            let window = self.deflate.get(&key).copied();
            let pushed = push(self.queues.get_mut(&key)?, window);
            self.touched.push((key, pushed.over));
            Some(pushed)
        }
    }

    #[test]
    fn delivers_the_batch_in_order_and_skips_the_gone() {
        let mut q = Queues::default();
        let (a, gone, b) = (
            ConnKey { idx: 1, gen: 0 },
            ConnKey { idx: 2, gen: 0 },
            ConnKey { idx: 3, gen: 0 },
        );
        q.add(a);
        q.add(b);
        let frames = [
            Frame::new(crate::conn::SharedFrame::encode(
                crate::ws::OpCode::Text,
                b"1",
            )),
            Frame::new(crate::conn::SharedFrame::encode(
                crate::ws::OpCode::Text,
                b"2",
            )),
        ];
        let mut pool = BufPool::default();
        let mut d = Deflater::new(6, 64);
        let n = deliver(
            [a, gone, b],
            frames.iter(),
            &mut pool,
            &mut d,
            usize::MAX,
            &mut q,
        );
        assert_eq!(n, 4);
        assert_eq!(q.touched, vec![(a, false), (b, false)]);
        assert_eq!(q.queues[&a].queued_bytes(), 6);
    }

    #[test]
    fn compresses_once_for_every_deflate_recipient() {
        let mut q = Queues::default();
        let keys: Vec<ConnKey> = (0..4).map(|idx| ConnKey { idx, gen: 0 }).collect();
        for (i, &k) in keys.iter().enumerate() {
            q.add(k);
            if i % 2 == 1 {
                q.deflate.insert(k, WindowBits::MAX);
            }
        }
        let json = "{\"user\":\"ann\",\"text\":\"hello there\"}".repeat(50);
        let frames = [Frame::new(crate::conn::SharedFrame::encode(
            crate::ws::OpCode::Text,
            json.as_bytes(),
        ))];
        let (mut pool, mut d) = (BufPool::default(), Deflater::new(6, 64));
        let n = deliver(
            keys.iter().copied(),
            frames.iter(),
            &mut pool,
            &mut d,
            usize::MAX,
            &mut q,
        );
        assert_eq!(n, 4);
        assert_eq!(d.stats.compressed, 1, "once, not per recipient");
        assert_eq!(d.stats.sent_compressed, 2);
        let plain = frames[0].bytes().len();
        assert_eq!(q.queues[&keys[0]].queued_bytes(), plain);
        assert!(q.queues[&keys[1]].queued_bytes() < plain / 4);
    }
}
