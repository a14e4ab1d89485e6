//! The one delivery loop every fan-out goes through: frames to the
//! out-queues of a list of connections, each bound checked before every
//! frame. It sees keys and queues only; who owns the connections, and what
//! becomes of one that went over its bound, is the caller's business.

use crate::conn::outq::Pushed;
use crate::conn::{BufPool, ConnKey, Frame, OutQueue};

/// The connections fan-out delivers to, by key: implemented by whoever owns
/// them (a core's slab).
pub trait Recipients {
    /// Runs `push` on the out-queue of `key` if that connection is still
    /// there, then records what happened (queued frames to flush, a bound
    /// crossed). Returns what `push` returned, or `None` for a connection
    /// that is gone.
    fn with_queue(
        &mut self,
        key: ConnKey,
        push: impl FnOnce(&mut OutQueue) -> Pushed,
    ) -> Option<Pushed>;
}

/// Queues `batch` to each connection in `to`, in order, a reference or a
/// copy per frame (see [`OutQueue::push_frames`]). Returns the number of
/// frames queued.
#[inline]
pub(crate) fn deliver<'f>(
    to: impl IntoIterator<Item = ConnKey>,
    batch: impl Iterator<Item = &'f Frame> + Clone,
    pool: &mut BufPool,
    max_queue: usize,
    recipients: &mut impl Recipients,
) -> u64 {
    let mut deliveries = 0;
    for key in to {
        let pushed = recipients.with_queue(key, |q| q.push_frames(batch.clone(), max_queue, pool));
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
            push: impl FnOnce(&mut OutQueue) -> Pushed,
        ) -> Option<Pushed> {
            let pushed = push(self.queues.get_mut(&key)?);
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
        let n = deliver([a, gone, b], frames.iter(), &mut pool, usize::MAX, &mut q);
        assert_eq!(n, 4);
        assert_eq!(q.touched, vec![(a, false), (b, false)]);
        assert_eq!(q.queues[&a].queued_bytes(), 6);
    }
}
