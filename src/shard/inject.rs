//! Channel messages handed to a core by threads that are not cores (the
//! embedding API's [`Publisher`](crate::Publisher)).
//!
//! Each core has one bounded crossbeam queue ([`inlet`]): any thread sends,
//! the core's loop drains it with `try_recv` once per pass, so the core
//! takes no lock and a thread never blocks it. The message arrives
//! validated and packed in one allocation (the caller's thread paid for
//! that), on the channel's owner core, which numbers and publishes it
//! exactly like a message from the HTTP publish API.
//!
//! Waking a sleeping core uses its doorbell (the eventfd its ring polls),
//! but only when the core announced it is going to sleep: a core about to
//! park raises its [`Inbox`]'s `parked` flag, fences, and looks at the
//! queue once more; a sender enqueues, fences, and rings if it finds the
//! flag raised (lowering it, so of several senders only one rings). With
//! both fences sequentially consistent, either the core sees the message
//! or the sender sees the flag, so no message waits for a core that sleeps
//! on; a busy core costs senders a read of one flag, never a syscall.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::value::RawValue;

use super::Shard;
use crate::hub::mesh::Doorbell;
use crate::hub::{MeshMsg, ReplyTo, Unsequenced};

/// Most messages a core takes from its queue in one pass, so a thread
/// publishing flat out cannot keep the core from its sockets: the rest
/// waits for the next pass (which comes at once, the loop does not sleep
/// while the queue holds anything).
pub(crate) const BATCH: usize = 1024;

/// A channel message from another thread: channel and payload, validated.
pub(crate) struct Injected {
    /// The channel name, then the payload.
    bytes: Box<[u8]>,
    channel_len: u8,
}

impl Injected {
    /// A publication of `payload` (valid JSON) on `channel` (validated).
    pub(crate) fn encode(channel: &str, payload: &RawValue) -> Injected {
        let mut bytes = Vec::with_capacity(channel.len() + payload.get().len());
        bytes.extend_from_slice(channel.as_bytes());
        bytes.extend_from_slice(payload.get().as_bytes());
        Injected {
            bytes: bytes.into_boxed_slice(),
            channel_len: channel.len() as u8,
        }
    }

    /// The channel.
    pub(crate) fn channel(&self) -> &str {
        let name = &self.bytes[..self.channel_len as usize];
        std::str::from_utf8(name).expect("a channel name is ASCII")
    }

    /// The payload.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.bytes[self.channel_len as usize..]
    }
}

#[repr(align(64))]
#[derive(Default)]
struct Parked(AtomicBool);

/// The sending end of one core's queue.
pub(crate) struct Inlet {
    tx: Sender<Injected>,
    parked: Arc<Parked>,
}

/// The core's end of its queue.
pub(crate) struct Inbox {
    rx: Receiver<Injected>,
    parked: Arc<Parked>,
}

/// One core's queue, holding at most `capacity` messages.
pub(crate) fn inlet(capacity: usize) -> (Inlet, Inbox) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let parked = Arc::new(Parked::default());
    let inbox = Inbox {
        rx,
        parked: parked.clone(),
    };
    (Inlet { tx, parked }, inbox)
}

impl Inlet {
    /// Queues `msg` for the core whose doorbell is `bell`, waking the core
    /// if it sleeps. A full queue or a core that has stopped gives the
    /// message back in the error.
    pub(crate) fn send(
        &self,
        msg: Injected,
        bell: &Doorbell,
    ) -> Result<(), TrySendError<Injected>> {
        self.tx.try_send(msg)?;
        // Pairs with the fence in `Inbox::may_sleep`.
        fence(Ordering::SeqCst);
        if self.parked.0.load(Ordering::SeqCst) && self.parked.0.swap(false, Ordering::SeqCst) {
            bell.ring();
        }
        Ok(())
    }
}

impl Inbox {
    /// Announces that the core is going to sleep. Returns `false` (and
    /// withdraws the announcement) if messages are waiting.
    pub(crate) fn may_sleep(&self) -> bool {
        self.parked.0.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.rx.is_empty() {
            return true;
        }
        self.parked.0.store(false, Ordering::SeqCst);
        false
    }

    /// Withdraws the announcement after waking.
    pub(crate) fn woke(&self) {
        self.parked.0.store(false, Ordering::SeqCst);
    }
}

impl Shard {
    /// Publishes what other threads queued for this core, at most [`BATCH`]
    /// messages, each like an API publish (counted in `publishes`).
    /// Returns whether there were any.
    pub(super) fn take_injected(&mut self) -> bool {
        let mut n = 0;
        while n < BATCH {
            let Ok(msg) = self.inbox.rx.try_recv() else {
                break;
            };
            // The `Publisher` sends a channel's messages to its owner, so
            // they are numbered right here; should the two ever disagree,
            // the owner numbers it after one more hop.
            let (channel, payload) = (msg.channel(), msg.payload());
            let owner = self.env.channels.owner_of(channel);
            if owner == self.id {
                let now = self.env.now_us;
                self.env
                    .streams
                    .sequence(self.id, ReplyTo::Nobody, channel, payload, now);
            } else {
                let u = Unsequenced {
                    from: self.id as u16,
                    reply: ReplyTo::Nobody,
                    channel: channel.into(),
                    payload: payload.into(),
                };
                self.env
                    .channels
                    .send(owner, MeshMsg::Sequence(Box::new(u)));
            }
            n += 1;
        }
        self.env.stats.publishes += n as u64;
        n > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> &RawValue {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_message_keeps_its_channel_and_payload() {
        for (channel, payload) in [
            ("a", "1"),
            ("news/eu@x:y.z-_", r#"{"tick":1,"from":"thread 0"}"#),
            (&*"c".repeat(128), &*format!("\"{}\"", "p".repeat(70_000))),
        ] {
            let msg = Injected::encode(channel, raw(payload));
            assert_eq!(msg.payload(), payload.as_bytes());
            assert_eq!(msg.channel(), channel);
        }
    }

    #[test]
    fn a_full_queue_and_a_stopped_core_give_the_message_back() {
        let bell = &crate::hub::mesh::doorbells(1).unwrap()[0];
        let (inlet, inbox) = inlet(2);
        for _ in 0..2 {
            inlet.send(Injected::encode("c", raw("1")), bell).unwrap();
        }
        match inlet.send(Injected::encode("c", raw("2")), bell) {
            Err(TrySendError::Full(m)) => assert_eq!(m.channel(), "c"),
            other => panic!("{:?}", other.map_err(|e| e.is_full())),
        }
        assert!(!inbox.may_sleep(), "messages wait: no sleep");
        drop(inbox);
        assert!(matches!(
            inlet.send(Injected::encode("c", raw("3")), bell),
            Err(TrySendError::Disconnected(_))
        ));
    }

    #[test]
    fn a_sender_rings_only_a_core_that_announced_its_sleep() {
        let bells = crate::hub::mesh::doorbells(1).unwrap();
        let (inlet, inbox) = inlet(4);
        let count = |bell: &Doorbell| {
            use std::os::fd::AsRawFd;
            let mut n = 0u64;
            // SAFETY: reading 8 bytes from a nonblocking eventfd we own.
            let r = unsafe { libc::read(bell.fd().as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
            if r == 8 {
                n
            } else {
                0
            }
        };
        inlet
            .send(Injected::encode("c", raw("1")), &bells[0])
            .unwrap();
        assert_eq!(count(&bells[0]), 0, "an awake core is not rung");
        while inbox.rx.try_recv().is_ok() {}
        assert!(inbox.may_sleep());
        inlet
            .send(Injected::encode("c", raw("2")), &bells[0])
            .unwrap();
        inlet
            .send(Injected::encode("c", raw("3")), &bells[0])
            .unwrap();
        assert_eq!(count(&bells[0]), 1, "one ring for a sleeping core");
        inbox.woke();
    }
}
