//! Publishing into a running server from any thread of the program that
//! embeds it.
//!
//! A [`Publisher`] checks and encodes a message on the caller's thread
//! (the cores only publish it), then hands it to one core through that
//! core's bounded queue (see [`crate::shard::inject`]). Which core is a
//! hash of the channel name, so one thread's messages to one channel go
//! through one queue and one core, and arrive in the order they were
//! published.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::TrySendError;
use serde_json::value::RawValue;

use crate::app::protocol;
use crate::shard::inject::{Injected, Inlet};
use crate::shard::Control;

/// A handle that publishes channel messages into a running
/// [`Server`](crate::Server), from any thread.
///
/// Cheap to clone (one reference count) and `Send + Sync`: give each
/// thread its own clone. A message is delivered like a `/ws` client's
/// `publish`: every subscriber of the channel, on every core, receives
/// `{"type":"message","channel":CHANNEL,"payload":PAYLOAD}`, and messages one
/// thread publishes on one channel arrive in order.
///
/// Nothing is lost silently: a message is either queued for a core or
/// refused with a [`PublishError`] saying why. A message accepted in the
/// instant the server begins to shut down may still find its subscribers
/// already closed with 1001, as any message in flight then would.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    control: Arc<Control>,
    inlets: Box<[Inlet]>,
    max_payload: usize,
}

/// Why [`Publisher::publish`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The channel name is not one a `/ws` client could use; the message
    /// says which rule it breaks.
    BadChannel(String),
    /// The payload is not exactly one JSON value; serde_json's reason.
    BadPayload(String),
    /// The payload is longer than `--max-message-bytes`, the most a `/ws`
    /// client may publish.
    TooLarge {
        /// The payload's length.
        len: usize,
        /// `--max-message-bytes`.
        max: usize,
    },
    /// The core's queue is full: the cores are not keeping up with this
    /// rate of publishing (back-pressure). Nothing was queued; the caller
    /// decides whether to retry later, drop, or slow down.
    Full,
    /// The server has shut down (or is shutting down): nobody will
    /// deliver the message.
    Stopped,
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::BadChannel(why) => write!(f, "bad channel name: {why}"),
            PublishError::BadPayload(why) => {
                write!(f, "the payload is not one valid JSON value: {why}")
            }
            PublishError::TooLarge { len, max } => write!(
                f,
                "the payload is {len} bytes, more than the server's --max-message-bytes ({max})"
            ),
            PublishError::Full => f.write_str(
                "the core's publish queue is full (the server is not keeping up); \
                 nothing was published: retry later or publish less often",
            ),
            PublishError::Stopped => f.write_str("the server has shut down; nothing was published"),
        }
    }
}

impl std::error::Error for PublishError {}

impl Publisher {
    /// How many messages each core's queue holds: a burst this long per
    /// core is taken without [`PublishError::Full`] even while the core is
    /// busy. About 24 bytes a slot, allocated when the server starts.
    pub const QUEUE_CAPACITY: usize = 8192;

    /// A publisher over the cores' queues (one per core, in core order).
    pub(crate) fn new(control: Arc<Control>, inlets: Vec<Inlet>, max_payload: usize) -> Publisher {
        Publisher {
            inner: Arc::new(Inner {
                control,
                inlets: inlets.into_boxed_slice(),
                max_payload,
            }),
        }
    }

    /// Publishes `payload` (one JSON value, e.g. `{"tick":1}`, `"text"` or
    /// `42`) on `channel`, to every subscriber on every core. Returns once
    /// the message is queued for a core, without waiting for delivery.
    ///
    /// The payload is passed through as the exact bytes given (whitespace
    /// around the value aside), as with a `/ws` publish.
    pub fn publish(&self, channel: &str, payload: &str) -> Result<(), PublishError> {
        let inner = &*self.inner;
        if inner.control.shutdown.load(Ordering::Relaxed) {
            return Err(PublishError::Stopped);
        }
        protocol::validate_channel(channel).map_err(|e| PublishError::BadChannel(e.message))?;
        if payload.len() > inner.max_payload {
            return Err(PublishError::TooLarge {
                len: payload.len(),
                max: inner.max_payload,
            });
        }
        let value: &RawValue =
            serde_json::from_str(payload).map_err(|e| PublishError::BadPayload(e.to_string()))?;
        let core = self.core_for(channel);
        let msg = Injected::encode(channel, value);
        match inner.inlets[core].send(msg, &inner.control.bells[core]) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(PublishError::Full),
            Err(TrySendError::Disconnected(_)) => Err(PublishError::Stopped),
        }
    }

    /// The core that owns `channel` (FNV-1a of the name, modulo the core
    /// count): it sequences the channel's publications, so a message from
    /// this handle (and every clone of it) goes straight to it, and a
    /// [`PublishError::Full`] is about its queue.
    pub fn core_for(&self, channel: &str) -> usize {
        crate::hub::name::owner(channel, self.inner.inlets.len())
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("cores", &self.inner.inlets.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::inject;

    fn publisher(cores: usize, capacity: usize) -> (Publisher, Vec<inject::Inbox>) {
        let control = Control::new(cores).unwrap();
        let (inlets, inboxes) = (0..cores).map(|_| inject::inlet(capacity)).unzip();
        (Publisher::new(control, inlets, 1024), inboxes)
    }

    #[test]
    fn refusals_say_why() {
        let (p, _inboxes) = publisher(2, 8);
        for bad in ["", "a b", "chat.*", &"x".repeat(129)] {
            match p.publish(bad, "1") {
                Err(PublishError::BadChannel(why)) => assert!(why.contains("channel"), "{why}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        for bad in ["", "{", "1 2", "{\"a\":1}x", "nul", "'single'"] {
            assert!(
                matches!(p.publish("c", bad), Err(PublishError::BadPayload(_))),
                "{bad:?}"
            );
        }
        let big = format!("\"{}\"", "x".repeat(1024));
        assert_eq!(
            p.publish("c", &big),
            Err(PublishError::TooLarge {
                len: 1026,
                max: 1024
            })
        );
        for ok in ["1", " {\"tick\":1} ", "\"text\"", "[1,2]", "null"] {
            p.publish("c", ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn a_full_queue_is_full_and_a_stopped_server_is_stopped() {
        let (p, inboxes) = publisher(2, 4);
        let core = p.core_for("c");
        for _ in 0..4 {
            p.publish("c", "1").unwrap();
        }
        assert_eq!(p.publish("c", "1"), Err(PublishError::Full));
        assert!(PublishError::Full.to_string().contains("full"));
        // Another channel on the other core still goes through.
        let other = (0..)
            .map(|i| format!("c{i}"))
            .find(|c| p.core_for(c) != core)
            .unwrap();
        p.publish(&other, "1").unwrap();
        // A core that stopped (its queue's receiver dropped)...
        drop(inboxes);
        assert_eq!(p.publish(&other, "1"), Err(PublishError::Stopped));
        // ...and a server that was asked to stop.
        let (p, _inboxes) = publisher(1, 4);
        p.inner.control.request_shutdown();
        assert_eq!(p.publish("c", "1"), Err(PublishError::Stopped));
    }

    #[test]
    fn a_channel_always_goes_to_the_same_core() {
        let (p, _inboxes) = publisher(3, 4);
        let q = p.clone();
        let cores: std::collections::BTreeSet<usize> = (0..100)
            .map(|i| {
                let c = format!("channel-{i}");
                assert_eq!(p.core_for(&c), q.core_for(&c));
                p.core_for(&c)
            })
            .collect();
        assert_eq!(cores.len(), 3, "names spread over the cores");
    }

    #[test]
    fn publisher_is_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Publisher>();
    }
}
