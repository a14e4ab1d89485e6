//! A core's connections: the slab that owns them, each connection's phase,
//! and the completion tokens that name a connection in the ring.

use std::os::fd::OwnedFd;

use crate::app::ConnCtl;
use crate::conn::outq::MAX_IOV;
use crate::conn::{ConnKey, OutQueue};
use crate::tls::{KernelTls, Tls, TlsSession};
use crate::ws::deflate::WindowBits;
use crate::ws::Session;

/// Completion kinds, packed with a [`ConnKey`] into `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    /// Completions we do not act on (a receive's cancellation).
    Ignore = 4,
    /// The wake-up eventfd's poll: another thread woke this core.
    Wake = 5,
}

const GEN_BITS: u32 = 24;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;

/// Packs an operation and a connection into a completion's `user_data`.
#[inline]
pub(crate) fn token(op: Op, key: ConnKey) -> u64 {
    ((op as u64) << 56) | (((key.gen & GEN_MASK) as u64) << 32) | key.idx as u64
}

/// Unpacks [`token`].
#[inline]
pub(crate) fn untoken(ud: u64) -> (Option<Op>, ConnKey) {
    let op = match (ud >> 56) as u8 {
        1 => Some(Op::Accept),
        2 => Some(Op::Recv),
        3 => Some(Op::Send),
        4 => Some(Op::Ignore),
        5 => Some(Op::Wake),
        _ => None,
    };
    let key = ConnKey {
        idx: ud as u32,
        gen: ((ud >> 32) as u32) & GEN_MASK,
    };
    (op, key)
}

/// Where a connection is in its life.
pub(crate) enum Phase {
    /// Reading the HTTP upgrade request. The head buffer stays empty (no
    /// allocation) when the request arrives in one read.
    Handshake(Vec<u8>),
    /// A WebSocket connection.
    Open(Session),
    /// A complete HTTP request (`GET /api/channels`) whose answer other
    /// cores are still gathering. It is no longer parsed: whatever else the
    /// client sends is discarded (the answer closes the connection), so a
    /// second request can never be read into it.
    Answering,
    /// Sending what is queued, then FIN; reading on (and discarding) until
    /// the peer's FIN or the close timeout. Refused handshakes and finished
    /// close handshakes end here, so the peer reads every byte we sent.
    Lingering,
    /// Being torn down: waiting for in-flight operations to complete before
    /// the descriptor is closed and the slot reused.
    Closing,
}

/// The iovecs and header of a `sendmsg` in flight; boxed so their address
/// is stable while the kernel reads them.
pub(crate) struct SendMsg {
    pub hdr: libc::msghdr,
    pub iov: [libc::iovec; MAX_IOV],
}

impl SendMsg {
    /// An empty message header.
    pub(crate) fn new() -> Box<SendMsg> {
        Box::new(SendMsg {
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            hdr: unsafe { std::mem::zeroed() },
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOV],
        })
    }
}

/// One client connection. Owned by its core's slab; never shared.
pub(crate) struct Conn {
    /// The socket; closed when the connection is dropped from the slab,
    /// which happens only once no operation references it.
    pub fd: OwnedFd,
    /// Where it is in its life.
    pub phase: Phase,
    /// Bytes waiting to be sent, bounded.
    pub out: OutQueue,
    /// The header of a `sendmsg` in flight, if the send needed one.
    pub sendmsg: Option<Box<SendMsg>>,
    /// Yes/no state ([`Flag`]).
    pub flags: Flags,
    /// When the current phase times out.
    pub deadline: Deadline,
    /// Tick of the timer-wheel entry this connection counts on
    /// ([`NO_TICK`]: none); other entries for it are stale.
    pub wheel_tick: u64,
    /// What the endpoints and the heartbeat keep per connection, the
    /// endpoint's own state included.
    pub ctl: ConnCtl,
    /// TLS connections: the session that decrypts what arrives and
    /// encrypts what `out` holds, or the kernel's once it took over (a
    /// pointer's width on plain ones).
    pub tls: Option<Box<Tls>>,
}

/// A connection's yes/no state: one bit each in [`Flags`], where seven
/// `bool`s would cost every connection's slot a word with the padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Flag {
    /// A multishot receive is armed.
    RecvArmed = 1,
    /// Listed in the core's flush list.
    Dirty = 1 << 1,
    /// Shut down the write side once the queue is flushed.
    FinAfterFlush = 1 << 2,
    /// The peer's FIN came before our answer was flushed (lingering, or
    /// while an `/api/channels` answer was gathered): release the
    /// connection once it is.
    PeerFin = 1 << 3,
    /// `100 Continue` was sent for the request body.
    ContinueSent = 1 << 4,
    /// Its input has made cross-core traffic: paused first when a peer
    /// core is congested.
    Publisher = 1 << 5,
    /// Reads are paused (receive cancelled) until the congestion clears.
    Paused = 1 << 6,
}

/// The set of a connection's [`Flag`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags(u8);

impl Flags {
    /// Whether `f` is set.
    #[inline]
    pub(crate) fn has(self, f: Flag) -> bool {
        self.0 & f as u8 != 0
    }

    /// Sets or clears `f`.
    #[inline]
    pub(crate) fn set(&mut self, f: Flag, on: bool) {
        if on {
            self.0 |= f as u8;
        } else {
            self.0 &= !(f as u8);
        }
    }
}

/// No timer-wheel entry.
pub(crate) const NO_TICK: u64 = u64::MAX;

/// A phase deadline on the core's clock (microseconds since its epoch), or
/// none: 8 bytes in every connection where `Option<Instant>` takes 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadline(u64);

impl Deadline {
    /// The phase has no deadline (an open connection: its timers are the
    /// heartbeat's and the idle limit's).
    pub(crate) const NONE: Deadline = Deadline(u64::MAX);

    /// A deadline `us` microseconds after the core's epoch.
    #[inline]
    pub(crate) fn at_us(us: u64) -> Deadline {
        Deadline(us.min(u64::MAX - 1))
    }

    /// The deadline in microseconds since the epoch, if there is one.
    #[inline]
    pub(crate) fn get(self) -> Option<u64> {
        (self != Deadline::NONE).then_some(self.0)
    }
}

impl Conn {
    /// The permessage-deflate window an open connection negotiated, if
    /// any: what its frames are compressed with.
    #[inline]
    pub(crate) fn deflate(&self) -> Option<WindowBits> {
        match &self.phase {
            Phase::Open(session) => session.deflate(),
            _ => None,
        }
    }

    /// A freshly accepted connection.
    pub(crate) fn new(fd: OwnedFd, deadline: Deadline) -> Conn {
        Conn {
            fd,
            phase: Phase::Handshake(Vec::new()),
            out: OutQueue::default(),
            sendmsg: None,
            flags: Flags::default(),
            deadline,
            wheel_tick: NO_TICK,
            ctl: ConnCtl::default(),
            tls: None,
        }
    }

    /// The user-space TLS session, if rustls does this connection's
    /// records (not a plain connection, not one the kernel took over).
    #[inline]
    pub(crate) fn user_tls(&self) -> Option<&TlsSession> {
        match self.tls.as_deref() {
            Some(Tls::User(s)) => Some(s),
            _ => None,
        }
    }

    /// [`Conn::user_tls`], mutably.
    #[inline]
    pub(crate) fn user_tls_mut(&mut self) -> Option<&mut TlsSession> {
        crate::tls::user_mut(&mut self.tls)
    }

    /// The kernel's TLS, if it took this connection over.
    #[inline]
    pub(crate) fn kernel_tls(&mut self) -> Option<&mut KernelTls> {
        match self.tls.as_deref_mut() {
            Some(Tls::Kernel(k)) => Some(k),
            _ => None,
        }
    }

    /// Whether operations still reference this connection.
    pub(crate) fn busy(&self) -> bool {
        self.flags.has(Flag::RecvArmed)
            || self.out.sending()
            || self.user_tls().is_some_and(|t| t.sending())
    }

    /// Whether bytes wait to go out: plaintext queued, or (TLS) ciphertext
    /// not yet sent.
    pub(crate) fn has_unsent(&self) -> bool {
        self.out.has_unsent() || self.user_tls().is_some_and(|t| t.has_unsent())
    }

    /// Whether a send is in flight (plain or TLS).
    pub(crate) fn sending(&self) -> bool {
        self.out.sending() || self.user_tls().is_some_and(|t| t.sending())
    }
}

/// The core's connections, addressed by [`ConnKey`]. The generations live
/// apart from the connections, so a slot is exactly a `Conn` (its
/// descriptor's niche makes the `Option` free) with no padding for them.
#[derive(Default)]
pub(crate) struct Slab {
    conns: Vec<Option<Conn>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    len: usize,
}

impl Slab {
    /// Stores a connection and returns its key.
    pub(crate) fn insert(&mut self, conn: Conn) -> ConnKey {
        self.len += 1;
        if let Some(idx) = self.free.pop() {
            self.conns[idx as usize] = Some(conn);
            ConnKey {
                idx,
                gen: self.gens[idx as usize],
            }
        } else {
            self.conns.push(Some(conn));
            self.gens.push(0);
            ConnKey {
                idx: (self.conns.len() - 1) as u32,
                gen: 0,
            }
        }
    }

    /// The live connection for `key`, if it still exists.
    #[inline]
    pub(crate) fn get_mut(&mut self, key: ConnKey) -> Option<&mut Conn> {
        let i = key.idx as usize;
        match (self.conns.get_mut(i), self.gens.get(i)) {
            (Some(Some(c)), Some(&gen)) if gen == key.gen => Some(c),
            _ => None,
        }
    }

    /// Frees the slot; the next connection in it gets a new generation.
    pub(crate) fn remove(&mut self, key: ConnKey) -> Option<Conn> {
        let i = key.idx as usize;
        if *self.gens.get(i)? != key.gen {
            return None;
        }
        let c = self.conns[i].take()?;
        self.gens[i] = (key.gen + 1) & GEN_MASK;
        self.free.push(key.idx);
        self.len -= 1;
        Some(c)
    }

    /// Live connections.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no live connections.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` on every live connection.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Conn)) {
        for c in self.conns.iter().flatten() {
            f(c);
        }
    }

    /// Keys of all live connections.
    pub(crate) fn keys(&self) -> Vec<ConnKey> {
        self.conns
            .iter()
            .zip(&self.gens)
            .enumerate()
            .filter(|(_, (c, _))| c.is_some())
            .map(|(i, (_, &gen))| ConnKey { idx: i as u32, gen })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_roundtrip() {
        let k = ConnKey {
            idx: 123_456,
            gen: 0xABCDE,
        };
        assert_eq!(untoken(token(Op::Send, k)), (Some(Op::Send), k));
        assert_eq!(untoken(token(Op::Recv, k)).0, Some(Op::Recv));
    }

    #[test]
    fn stale_keys_miss_after_reuse() {
        let mut s = Slab::default();
        let now = Deadline::at_us(0);
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"));
        let a = s.insert(Conn::new(fd(), now));
        assert!(s.remove(a).is_some());
        let b = s.insert(Conn::new(fd(), now));
        assert_eq!(a.idx, b.idx);
        assert!(s.get_mut(a).is_none());
        assert!(s.get_mut(b).is_some());
        assert_eq!(s.len(), 1);
    }
}
#[cfg(test)]
mod budget {
    use std::mem::size_of;

    /// The idle-connection budget (README, "Idle connections"): a slot is
    /// what every connection costs, so growing it is a decision, not an
    /// accident. Update the README's table with the limit.
    #[test]
    fn an_idle_connections_slot_stays_within_its_budget() {
        assert_eq!(size_of::<Option<super::Conn>>(), size_of::<super::Conn>());
        assert!(
            size_of::<super::Conn>() <= 208,
            "{}",
            size_of::<super::Conn>()
        );
        assert!(size_of::<crate::ws::Session>() <= 16);
        assert!(size_of::<crate::conn::OutQueue>() <= 56);
        assert!(size_of::<super::Deadline>() == 8);
    }
}
