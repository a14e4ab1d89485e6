//! Channel messages handed to a core by threads that are not cores (the
//! embedding API's [`Publisher`](crate::Publisher)).
//!
//! Each core has one bounded crossbeam queue ([`inlet`]): any thread sends,
//! the core's loop drains it with `try_recv` once per pass, so the core
//! takes no lock and a thread never blocks it. The message arrives already
//! encoded (the caller's thread paid for that), and the core publishes it
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
use crate::app::protocol;
use crate::conn::{Frame, SharedFrame};
use crate::hub::mesh::Doorbell;
use crate::ws::OpCode;

/// Most messages a core takes from its queue in one pass, so a thread
/// publishing flat out cannot keep the core from its sockets: the rest
/// waits for the next pass (which comes at once, the loop does not sleep
/// while the queue holds anything).
pub(crate) const BATCH: usize = 1024;

/// A channel message encoded for every subscriber: the `message` frame a
/// `/ws` publish of the same channel and payload produces, byte for byte.
pub(crate) struct Injected {
    frame: SharedFrame,
    /// Where the channel name sits inside the frame (it is copied there
    /// verbatim), so the message needs no second allocation for it.
    channel_at: u8,
    channel_len: u8,
}

impl Injected {
    /// Encodes `payload` on `channel`, which must have passed
    /// [`protocol::validate_channel`] (at most 128 ASCII bytes).
    pub(crate) fn encode(channel: &str, payload: &RawValue) -> Injected {
        let parts = protocol::message_parts(channel, payload);
        let frame = SharedFrame::encode_parts(OpCode::Text, &parts);
        let body: usize = parts.iter().map(|p| p.len()).sum();
        let header = frame.bytes().len() - body;
        Injected {
            // A frame header is at most 10 bytes and the envelope before the
            // name 29; a valid name is at most 128 bytes.
            channel_at: (header + parts[0].len()) as u8,
            channel_len: channel.len() as u8,
            frame,
        }
    }

    /// The channel the message is published on.
    #[cfg(test)]
    pub(crate) fn channel(&self) -> &str {
        name_in(self.frame.bytes(), self.channel_at, self.channel_len)
    }

    /// The encoded frame.
    #[cfg(test)]
    pub(crate) fn frame(&self) -> &[u8] {
        self.frame.bytes()
    }
}

/// The channel name at `at..at + len` of an encoded message frame.
fn name_in(frame: &[u8], at: u8, len: u8) -> &str {
    let name = &frame[at as usize..at as usize + len as usize];
    // The name was a `&str` when it was copied in.
    std::str::from_utf8(name).expect("a channel name is ASCII")
}

/// The flag a core raises before it sleeps; on its own cache line, since
/// senders read it on every message.
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
            let frame = Frame::new(msg.frame);
            let channel = name_in(frame.bytes(), msg.channel_at, msg.channel_len);
            self.env.channels.publish(channel, &frame);
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
    fn the_frame_is_the_ws_message_and_names_its_channel() {
        for (channel, payload) in [
            ("a", "1"),
            ("news/eu@x:y.z-_", r#"{"tick":1,"from":"thread 0"}"#),
            (&*"c".repeat(128), &*format!("\"{}\"", "p".repeat(70_000))),
        ] {
            let msg = Injected::encode(channel, raw(payload));
            let parts = protocol::message_parts(channel, raw(payload));
            let want = SharedFrame::encode_parts(OpCode::Text, &parts);
            assert_eq!(msg.frame(), want.bytes());
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
