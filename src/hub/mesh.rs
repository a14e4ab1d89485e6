//! Cross-core delivery: a full mesh of glommio's lock-free SPSC rings
//! (`glommio::channels::spsc_queue`, the ring inside its shared channels),
//! one per ordered pair of cores, read and written directly by each core's
//! loop.
//!
//! Why not glommio's `MeshBuilder`: its join handshake intermittently never
//! completes when executors start under load (reproduced here in about one
//! start in six with several servers starting at once; see glommio issues
//! #261 and #555), and its receivers are woken through glommio's reactor,
//! which a busy core only runs when preempted. Reading the rings from the
//! loop delivers remote frames in the very pass they arrive.
//!
//! What crosses is a [`MeshMsg`]: frames as a `SharedFrame` (an `Arc` of
//! the encoded bytes, one reference per receiving core, never a copy), and
//! the small control messages that keep each core's view of which cores
//! subscribe to which channel current. A core that is about to sleep
//! raises its `sleeping` flag and re-checks its inbound rings; a producer
//! that pushed to it lowers the flag and writes the core's eventfd once. A
//! busy core costs producers one read of that flag per pass, not a syscall.
//! If a ring is full the frame waits in a per-peer backlog, retried every
//! pass in order; past [`BACKLOG_PAUSE`] frames the core stops reading from
//! its own clients until it drains, so a slow core slows publishers instead
//! of growing memory.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use glommio::channels::spsc_queue::{self, Consumer, Producer};

use super::MeshMsg;
use crate::conn::Frame;

/// Slots in each SPSC ring.
pub(crate) const RING_CAPACITY: usize = 8192;
/// Backlog (frames waiting for ring room, per peer) at which this core stops
/// reading from its clients until the backlog drains.
pub(crate) const BACKLOG_PAUSE: usize = 4 * RING_CAPACITY;

/// One core's doorbell, on its own cache line so raising and lowering it
/// never disturbs another core's.
///
/// The doorbell owns the core's wake-up eventfd: it lives in the shared
/// [`Doorbells`], so it stays open as long as any thread can ring it. A core
/// that stops (or dies) closes nothing another core may still write to; a
/// descriptor number is never written after its close.
#[repr(align(64))]
pub(crate) struct Doorbell {
    sleeping: AtomicBool,
    fd: OwnedFd,
}

impl Doorbell {
    fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Doorbell {
            sleeping: AtomicBool::new(false),
            // SAFETY: fd is a fresh descriptor we own.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The eventfd the core's ring polls to wake up.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Wakes the core unconditionally (shutdown).
    pub(crate) fn ring(&self) {
        let one = 1u64;
        // SAFETY: writing 8 bytes to an eventfd this doorbell owns (open
        // for as long as `self` lives).
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Wakes the core if it announced it is going to sleep. Returns whether
    /// it rang.
    pub(crate) fn ring_if_sleeping(&self) -> bool {
        let rang =
            self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst);
        if rang {
            self.ring();
        }
        rang
    }
}

/// Every core's doorbell.
pub(crate) type Doorbells = Arc<[Doorbell]>;

/// Doorbells for `cores` cores.
pub(crate) fn doorbells(cores: usize) -> io::Result<Doorbells> {
    (0..cores).map(|_| Doorbell::new()).collect()
}

/// One core's ends of the mesh, built on the main thread and moved to the
/// core's executor.
pub(crate) struct Links {
    me: usize,
    to: Vec<(usize, Producer<MeshMsg>)>,
    from: Vec<Consumer<MeshMsg>>,
}

/// Builds the full mesh for `cores` cores: `cores * (cores - 1)` rings.
pub(crate) fn build(cores: usize) -> Vec<Links> {
    let mut links: Vec<Links> = (0..cores)
        .map(|me| Links {
            me,
            to: Vec::new(),
            from: Vec::new(),
        })
        .collect();
    for src in 0..cores {
        for dst in (0..cores).filter(|&d| d != src) {
            let (p, c) = spsc_queue::make(RING_CAPACITY);
            links[src].to.push((dst, p));
            links[dst].from.push(c);
        }
    }
    links
}

struct Peer {
    core: usize,
    ring: Producer<MeshMsg>,
    backlog: VecDeque<MeshMsg>,
    /// Pushed to since the last doorbell check.
    pushed: bool,
    /// The peer's loop is gone (its end of the ring was disconnected when
    /// it stopped or failed): nothing more is queued for it.
    gone: bool,
}

/// This core's end of the mesh. Lives in the core's loop; never shared.
pub(crate) struct Mesh {
    me: usize,
    peers: Vec<Peer>,
    from: Vec<Consumer<MeshMsg>>,
    bells: Doorbells,
    backlog_high_water: usize,
    counters: MeshCounters,
    /// Peers below this index are cores and get `/broadcast` frames; the
    /// broker engine (the last peer, when there is one) does not.
    broadcast_cores: usize,
}

/// What this core's end of the mesh did: the cross-core cost of broadcast,
/// for the cost model in README (one push per remote core per message).
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct MeshCounters {
    /// Frames pushed into peers' rings (each a pointer-sized `Arc` handle).
    pub pushed: u64,
    /// Messages dropped because their core had stopped.
    pub dropped: u64,
    /// Frames popped from peers' rings.
    pub received: u64,
    /// Doorbells rung (eventfd writes to a sleeping peer).
    pub doorbells: u64,
}

impl Mesh {
    /// Takes ownership of this core's links.
    pub(crate) fn new(links: Links, bells: Doorbells) -> Mesh {
        Mesh {
            me: links.me,
            peers: links
                .to
                .into_iter()
                .map(|(core, ring)| Peer {
                    core,
                    ring,
                    backlog: VecDeque::new(),
                    pushed: false,
                    gone: false,
                })
                .collect(),
            from: links.from,
            bells,
            backlog_high_water: 0,
            counters: MeshCounters::default(),
            broadcast_cores: usize::MAX,
        }
    }

    /// Sends `/broadcast` frames only to cores `0..cores` (the peers past
    /// them are not cores).
    pub(crate) fn broadcast_to(&mut self, cores: usize) {
        self.broadcast_cores = cores;
    }

    /// Sends `/broadcast` frames published on this core to every other
    /// core, in order.
    pub(crate) fn send(&mut self, frames: &[Frame]) {
        if frames.is_empty() {
            return;
        }
        for i in 0..self.peers.len() {
            if self.peers[i].core >= self.broadcast_cores {
                continue;
            }
            for f in frames {
                self.push_to_peer(i, MeshMsg::Broadcast(f.share()));
            }
        }
    }

    /// Sends one message to one other core (behind anything already
    /// waiting for that core, so per-pair order holds).
    pub(crate) fn send_to(&mut self, core: usize, msg: MeshMsg) {
        debug_assert_ne!(core, self.me);
        let i = if core < self.me { core } else { core - 1 };
        if i < self.peers.len() {
            self.push_to_peer(i, msg);
        }
    }

    fn push_to_peer(&mut self, i: usize, msg: MeshMsg) {
        let peer = &mut self.peers[i];
        if peer.gone {
            self.counters.dropped += 1;
        } else if !peer.backlog.is_empty() {
            peer.backlog.push_back(msg);
        } else if let Some(back) = peer.ring.try_push(msg) {
            // Full, or the peer is gone (a disconnected ring refuses pushes).
            if peer.ring.consumer_disconnected() {
                peer.gone = true;
                self.counters.dropped += 1;
            } else {
                peer.backlog.push_back(back);
            }
        } else {
            peer.pushed = true;
            self.counters.pushed += 1;
        }
        self.backlog_high_water = self.backlog_high_water.max(peer.backlog.len());
    }

    /// Moves backlogged frames into rings that have room again; drops what
    /// waits for a core that is gone. Returns whether anything moved.
    pub(crate) fn retry_backlog(&mut self) -> bool {
        let mut moved = false;
        for peer in &mut self.peers {
            if !peer.backlog.is_empty() && peer.ring.consumer_disconnected() {
                peer.gone = true;
                self.counters.dropped += peer.backlog.len() as u64;
                peer.backlog = VecDeque::new();
                moved = true;
            }
            while let Some(f) = peer.backlog.pop_front() {
                match peer.ring.try_push(f) {
                    None => {
                        moved = true;
                        peer.pushed = true;
                        self.counters.pushed += 1;
                    }
                    Some(back) => {
                        peer.backlog.push_front(back);
                        break;
                    }
                }
            }
            if peer.backlog.is_empty() && peer.backlog.capacity() > RING_CAPACITY {
                peer.backlog = VecDeque::new();
            }
        }
        moved
    }

    /// Wakes every peer this core pushed to since the last call, if it is
    /// asleep. Call once per pass, after all sends.
    pub(crate) fn ring_doorbells(&mut self) {
        let mut any = false;
        for peer in &self.peers {
            any |= peer.pushed;
        }
        if !any {
            return;
        }
        // Pairs with the fence in `announce_sleep`: either the sleeper sees
        // our frames when it re-checks, or we see its flag.
        fence(Ordering::SeqCst);
        for peer in &mut self.peers {
            if std::mem::take(&mut peer.pushed)
                && !peer.gone
                && self.bells[peer.core].ring_if_sleeping()
            {
                self.counters.doorbells += 1;
            }
        }
    }

    /// Moves messages from other cores into `inbox`, in the order each
    /// core sent them. Returns how many arrived.
    pub(crate) fn receive(&mut self, inbox: &mut Vec<MeshMsg>) -> usize {
        let before = inbox.len();
        for c in &self.from {
            while let Some(m) = c.try_pop() {
                inbox.push(m);
            }
        }
        let n = inbox.len() - before;
        self.counters.received += n as u64;
        n
    }

    /// Announces that this core is about to sleep. Returns `false` (and
    /// withdraws the announcement) if frames arrived meanwhile; they are in
    /// `inbox` then.
    pub(crate) fn announce_sleep(&mut self, inbox: &mut Vec<MeshMsg>) -> bool {
        self.bells[self.me].sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.receive(inbox) > 0 {
            self.bells[self.me].sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Clears the sleep announcement after waking.
    pub(crate) fn woke(&self) {
        self.bells[self.me].sleeping.store(false, Ordering::SeqCst);
    }

    /// Counters so far.
    pub(crate) fn counters(&self) -> MeshCounters {
        self.counters
    }

    /// Whether frames wait for ring room (the loop must retry soon).
    pub(crate) fn backlogged(&self) -> bool {
        self.peers.iter().any(|p| !p.backlog.is_empty())
    }

    /// Whether a peer is so far behind that this core should stop reading.
    pub(crate) fn congested(&self) -> bool {
        self.peers
            .iter()
            .any(|p| !p.gone && p.backlog.len() >= BACKLOG_PAUSE)
    }

    /// Largest backlog seen (frames waiting for ring room).
    pub(crate) fn backlog_high_water(&self) -> usize {
        self.backlog_high_water
    }

    /// Frames waiting for ring room now, over all peers.
    pub(crate) fn backlog_len(&self) -> usize {
        self.peers.iter().map(|p| p.backlog.len()).sum()
    }
}

impl Drop for Mesh {
    /// A core that stops, normally or by a panic, disconnects its inbound
    /// rings: its peers see it gone and stop queueing for it instead of
    /// filling a ring nobody reads and stalling on it.
    fn drop(&mut self) {
        for c in &self.from {
            c.disconnect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::SharedFrame;
    use crate::ws::OpCode;

    #[test]
    fn delivers_in_order_with_backlog_and_shares_bytes() {
        let bells = doorbells(2).expect("eventfds");
        let mut links = build(2).into_iter();
        let mut a = Mesh::new(links.next().unwrap(), bells.clone());
        let mut b = Mesh::new(links.next().unwrap(), bells.clone());
        let frames: Vec<Frame> = (0..RING_CAPACITY + 100)
            .map(|i| {
                Frame::new(SharedFrame::encode(
                    OpCode::Binary,
                    &(i as u32).to_be_bytes(),
                ))
            })
            .collect();
        a.send(&frames);
        assert!(a.backlogged(), "more frames than ring slots");
        let mut inbox = Vec::new();
        assert_eq!(b.receive(&mut inbox), RING_CAPACITY);
        assert!(a.retry_backlog());
        assert!(!a.backlogged());
        b.receive(&mut inbox);
        assert_eq!(inbox.len(), frames.len());
        for (i, f) in inbox.iter().enumerate() {
            let MeshMsg::Broadcast(f) = f else {
                panic!("frame {i}: not a broadcast");
            };
            assert!(
                Frame::new(f.share()).same_bytes(&frames[i]),
                "frame {i} copied or reordered"
            );
        }
    }

    #[test]
    fn sleeper_is_rung_once() {
        let bells = doorbells(2).expect("eventfds");
        let mut links = build(2).into_iter();
        let mut a = Mesh::new(links.next().unwrap(), bells.clone());
        let mut b = Mesh::new(links.next().unwrap(), bells.clone());
        let efd = bells[1].fd().as_raw_fd();
        let mut inbox = Vec::new();
        assert!(b.announce_sleep(&mut inbox));
        let f = Frame::new(SharedFrame::encode(OpCode::Text, b"x"));
        a.send(std::slice::from_ref(&f));
        a.ring_doorbells();
        a.send(std::slice::from_ref(&f));
        a.ring_doorbells(); // flag already lowered: no second write
        let mut v = 0u64;
        // SAFETY: reading 8 bytes from the doorbell's eventfd.
        let n = unsafe { libc::read(efd, (&mut v as *mut u64).cast(), 8) };
        assert_eq!((n, v), (8, 1));
        b.woke();
        assert_eq!(b.receive(&mut inbox), 2);
    }

    #[test]
    fn a_stopped_core_is_dropped_from_the_mesh_not_waited_for() {
        let bells = doorbells(2).expect("eventfds");
        let mut links = build(2).into_iter();
        let mut a = Mesh::new(links.next().unwrap(), bells.clone());
        let b = Mesh::new(links.next().unwrap(), bells.clone());
        let frames: Vec<Frame> = (0..RING_CAPACITY + 10)
            .map(|_| Frame::new(SharedFrame::encode(OpCode::Binary, b"x")))
            .collect();
        a.send(&frames);
        assert!(a.backlogged());
        drop(b); // core 1 stops: its inbound rings are disconnected
        assert!(a.retry_backlog());
        assert!(!a.backlogged(), "the backlog for a gone core is dropped");
        a.send(&frames[..5]);
        assert!(!a.backlogged() && !a.congested());
        assert_eq!(a.counters().dropped, 10 + 5);
        a.ring_doorbells(); // rings nobody: the peer is gone
    }
}
