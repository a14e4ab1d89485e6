//! Cross-core delivery over glommio's channel mesh: a full mesh of bounded
//! lock-free SPSC rings, one per ordered pair of cores.
//!
//! Frames cross as [`SharedFrame`] (an `Arc` of the encoded bytes): one
//! reference per receiving core, never a copy. A receiver task per peer
//! drains its ring in batches into the core's inbox and kicks the loop. If a
//! ring is full the frame waits in a per-peer backlog, drained in order by a
//! sender task that awaits room; while any backlog is over
//! [`BACKLOG_PAUSE`] frames the core stops reading from its own clients, so
//! a core that cannot keep up slows publishers instead of growing memory.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};

use futures_lite::future;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::shared_channel::ConnectedReceiver;

use super::frame::{Frame, SharedFrame};
use crate::runtime::kick::Kick;

/// Slots in each SPSC ring.
pub const RING_CAPACITY: usize = 8192;
/// Backlog (frames waiting for ring room, per peer) at which this core stops
/// reading from its clients until the backlog drains.
pub const BACKLOG_PAUSE: usize = 4 * RING_CAPACITY;

/// The mesh builder every core joins.
pub type Builder = MeshBuilder<SharedFrame, Full>;

/// Creates the mesh for `cores` executors.
pub fn builder(cores: usize) -> Builder {
    MeshBuilder::full(cores, RING_CAPACITY)
}

struct State {
    inbox: RefCell<Vec<Frame>>,
    backlog: RefCell<Vec<VecDeque<SharedFrame>>>,
    backlog_max: Cell<usize>,
    sender_wakers: RefCell<Vec<Option<Waker>>>,
    kick: Rc<Kick>,
    /// Frames dropped because the peer core had already exited (shutdown).
    dropped: Cell<u64>,
}

/// This core's end of the mesh.
pub struct Mesh {
    senders: Rc<Senders<SharedFrame>>,
    state: Rc<State>,
    me: usize,
}

impl Mesh {
    /// Joins the mesh (waits until every core has joined) and starts the
    /// receiver and sender tasks.
    pub async fn join(builder: Builder, kick: Rc<Kick>) -> Result<Mesh, String> {
        let (senders, mut receivers) = builder
            .join()
            .await
            .map_err(|_| "joining the channel mesh failed".to_string())?;
        let n = senders.nr_consumers();
        let me = senders.peer_id();
        let state = Rc::new(State {
            inbox: RefCell::new(Vec::new()),
            backlog: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            backlog_max: Cell::new(0),
            sender_wakers: RefCell::new((0..n).map(|_| None).collect()),
            kick,
            dropped: Cell::new(0),
        });
        let senders = Rc::new(senders);
        for (_, rx) in receivers.streams() {
            glommio::spawn_local(receive(rx, state.clone())).detach();
        }
        for peer in (0..n).filter(|&p| p != me) {
            glommio::spawn_local(send_backlog(peer, senders.clone(), state.clone())).detach();
        }
        Ok(Mesh { senders, state, me })
    }

    /// Sends frames published on this core to every other core, in order.
    pub fn send(&self, frames: &[Frame]) {
        if frames.is_empty() {
            return;
        }
        let mut backlog = self.state.backlog.borrow_mut();
        for peer in 0..backlog.len() {
            if peer == self.me {
                continue;
            }
            let q = &mut backlog[peer];
            let mut i = 0;
            // Straight into the ring while it has room and nothing waits before us.
            if q.is_empty() {
                while i < frames.len() {
                    match self.senders.try_send_to(peer, frames[i].share()) {
                        Ok(()) => i += 1,
                        Err(glommio::GlommioError::WouldBlock(_)) => break,
                        Err(_) => {
                            // The peer exited (shutdown): nobody left to deliver to.
                            self.state
                                .dropped
                                .set(self.state.dropped.get() + (frames.len() - i) as u64);
                            i = frames.len();
                        }
                    }
                }
            }
            if i < frames.len() {
                q.extend(frames[i..].iter().map(Frame::share));
                self.state
                    .backlog_max
                    .set(self.state.backlog_max.get().max(q.len()));
                if let Some(w) = self.state.sender_wakers.borrow_mut()[peer].take() {
                    w.wake();
                }
            }
        }
    }

    /// Moves frames received from other cores into `into`.
    pub fn take_inbox(&self, into: &mut Vec<Frame>) {
        let mut inbox = self.state.inbox.borrow_mut();
        if into.is_empty() {
            std::mem::swap(into, &mut inbox);
        } else {
            into.append(&mut inbox);
        }
    }

    /// Whether a peer is so far behind that this core should stop reading.
    pub fn congested(&self) -> bool {
        self.state
            .backlog
            .borrow()
            .iter()
            .any(|q| q.len() >= BACKLOG_PAUSE)
    }

    /// Largest backlog seen (frames waiting for ring room).
    pub fn backlog_high_water(&self) -> usize {
        self.state.backlog_max.get()
    }
}

/// Drains one peer's ring into the inbox, a batch at a time.
async fn receive(rx: ConnectedReceiver<SharedFrame>, state: Rc<State>) {
    loop {
        let Some(first) = rx.recv().await else { return };
        state.inbox.borrow_mut().push(Frame::new(first));
        // Take whatever else is already there without waiting.
        while let Some(Some(f)) = future::poll_once(rx.recv()).await {
            state.inbox.borrow_mut().push(Frame::new(f));
        }
        state.kick.kick();
    }
}

/// Feeds one peer's backlog into its ring as room appears, in order.
async fn send_backlog(peer: usize, senders: Rc<Senders<SharedFrame>>, state: Rc<State>) {
    loop {
        // Peek, not pop: while this frame waits for room the backlog stays
        // non-empty, so `Mesh::send` queues behind it instead of overtaking.
        let next = future::poll_fn(|cx| {
            let backlog = state.backlog.borrow();
            match backlog[peer].front() {
                Some(f) => Poll::Ready(f.share()),
                None => {
                    state.sender_wakers.borrow_mut()[peer] = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        if senders.send_to(peer, next).await.is_err() {
            state.backlog.borrow_mut()[peer].clear();
            return;
        }
        state.backlog.borrow_mut()[peer].pop_front();
        // Room freed: the loop may resume reading.
        state.kick.kick();
    }
}
