//! Receiving: multishot receives into the ring's provided buffers, bytes
//! parsed in place and the buffer handed straight back; reads paused while
//! a peer core is congested.

use std::panic::{self, AssertUnwindSafe};

use io_uring::{cqueue, opcode, squeue, types};
use std::time::Instant;

use tracing::{debug, error, warn};

use super::slab::{token, untoken, Conn, Flag, Op, Phase};
use super::Shard;
use crate::app::requests::HeadOutcome;
use crate::app::{ConnIo, CoreHook, Env};
use crate::conn::ConnKey;
use crate::http::Refusal;
use crate::hub::mesh::{self, Mesh};
use crate::io::bufring::RecvBuf;
use crate::ws::deflate::Inflater;
use crate::ws::{Limits, State};
use std::os::fd::AsRawFd;

/// Where a read's bytes are, for parsing.
pub(super) enum Input<'a> {
    /// A provided receive buffer (plain connections).
    Ring(&'a RecvBuf),
    /// The core's scratch of decrypted bytes (TLS connections).
    Plain(&'a mut [u8]),
}

/// Decrypted bytes beyond this are not kept in the core's scratch between
/// reads (a burst of large messages must not pin its peak).
const TLS_PLAIN_KEEP: usize = 256 * 1024;

/// Whether the first bytes on a TLS port are an HTTP request line (a TLS
/// connection starts with a handshake record, byte 0x16).
fn looks_like_http(data: &[u8]) -> bool {
    const METHODS: [&[u8]; 6] = [b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE"];
    data.get(..4).is_some_and(|m| METHODS.contains(&m))
}

/// What parsing one read led to, acted on once the buffer is released.
enum DataOutcome {
    Nothing,
    Fed(Fed),
    Head(HeadOutcome),
}

/// What feeding an open connection's bytes led to.
#[derive(Clone, Copy)]
pub(super) struct Fed {
    /// The session entered `AwaitingClose` or `Done`.
    changed: Option<State>,
    overflowed: bool,
    rate_limited: bool,
    publish_limited: bool,
    /// The bytes made cross-core traffic (a broadcast, a channel publish or
    /// interest): the connection counts as a publisher from now on.
    published: bool,
    /// Test hook the client asked for.
    core_hook: CoreHook,
}

/// Feeds `data` to an open connection's session through its handler.
/// `None` if the connection is not open.
pub(super) fn feed_open(
    key: ConnKey,
    conn: &mut Conn,
    env: &mut Env,
    inflater: &mut Inflater,
    limits: Limits,
    data: &mut [u8],
) -> Option<Fed> {
    let Phase::Open(session) = &mut conn.phase else {
        return None;
    };
    let mesh_before = env.mesh_traffic();
    let before = session.state();
    let deflate = session.deflate();
    let mut io = ConnIo::new(key, &mut conn.out, &mut conn.ctl, env, deflate);
    let inflater = deflate.map(|_| inflater);
    let after = session.feed_with(data, inflater, limits, &mut io);
    let fed = Fed {
        changed: (after != before).then_some(after),
        overflowed: io.overflowed,
        rate_limited: io.rate_limited,
        publish_limited: io.publish_limited,
        published: false,
        core_hook: io.core_hook,
    };
    Some(Fed {
        published: env.mesh_traffic() > mesh_before,
        ..fed
    })
}

impl Shard {
    pub(super) fn arm_recv(&mut self, key: ConnKey) {
        let Some(group) = self.ring.buffers().map(|b| b.group()) else {
            return self.abort(key);
        };
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let fd = types::Fd(c.fd.as_raw_fd());
        let sqe = if c.user_tls().is_some_and(|t| t.offload_pending()) {
            // Before a kTLS hand-over: one read at a time, so nothing is
            // read as ciphertext after the kernel took the keys.
            opcode::Recv::new(fd, std::ptr::null_mut(), 0)
                .buf_group(group)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        } else {
            opcode::RecvMulti::new(fd, group).build()
        };
        let sqe = sqe.user_data(token(Op::Recv, key));
        c.flags.set(Flag::RecvArmed, true);
        // SAFETY: the kernel writes into provided buffers the ring owns.
        if let Err(e) = unsafe { self.ring.push(&sqe) } {
            warn!(core = self.id, "arming recv: {e}");
            c.flags.set(Flag::RecvArmed, false);
            self.abort(key);
        }
    }

    pub(super) fn rearm_recvs(&mut self) {
        while let Some(key) = self.rearm.pop() {
            let wants = self.conns.get_mut(key).is_some_and(|c| {
                !c.flags.has(Flag::RecvArmed)
                    && !c.flags.has(Flag::Paused)
                    && !matches!(c.phase, Phase::Closing)
            });
            if wants && self.offload_or_wait(key) {
                self.arm_recv(key);
            }
        }
    }

    pub(super) fn on_recv(&mut self, cqe: cqueue::Entry) {
        let (_, key) = untoken(cqe.user_data());
        let res = cqe.result();
        let flags = cqe.flags();
        let more = cqueue::more(flags);
        // Where this completion's bytes are; the buffer goes back to the
        // kernel after them unless the kernel is still filling it.
        let buf = cqueue::buffer_select(flags).and_then(|bid| {
            let bufs = self.ring.buffers()?;
            Some(bufs.claim(bid, res.max(0) as usize, cqueue::buffer_more(flags)))
        });
        let Some(conn) = self.conns.get_mut(key) else {
            if let Some(buf) = buf {
                self.release_buf(buf);
            }
            return;
        };
        if !more {
            conn.flags.set(Flag::RecvArmed, false);
        }
        let lingering = matches!(conn.phase, Phase::Lingering);
        let answering = matches!(conn.phase, Phase::Answering);
        if res <= 0 {
            if let Some(buf) = buf {
                self.release_buf(buf);
            }
            let paused = self
                .conns
                .get_mut(key)
                .is_some_and(|c| c.flags.has(Flag::Paused));
            if res == -libc::ECANCELED && paused {
                // Paused while a peer is congested: re-armed when it drains.
            } else if res == -libc::ENOBUFS {
                // The core ran out of receive buffers: pick up again once
                // this pass has recycled some.
                self.rearm.push(key);
            } else if res == 0 {
                self.on_peer_eof(key, lingering, answering);
            } else if self
                .conns
                .get_mut(key)
                .is_some_and(|c| c.kernel_tls().is_some())
            {
                // kTLS: the kernel holds a record that is not data
                // (`EIO`), or one that did not decrypt.
                if res == -libc::EIO {
                    self.on_kernel_record(key, lingering, answering);
                } else {
                    self.on_kernel_record_error(key, -res);
                }
            } else {
                // An error: the peer is gone.
                self.abort(key);
            }
            if !more {
                self.maybe_release(key);
            }
            return;
        }
        let Some(buf) = buf else { return };
        // A bug reachable from one client's bytes must cost that client its
        // connection, not the core its other connections: the input is
        // handled under catch_unwind (release builds unwind, see
        // Cargo.toml), and a panic drops just this connection.
        let handled = panic::catch_unwind(AssertUnwindSafe(|| self.on_data(key, &buf)));
        if handled.is_err() {
            self.stats.handler_panics += 1;
            error!(
                core = self.id,
                "panic while handling a connection's input; that connection is dropped"
            );
            self.abort(key);
        }
        self.release_buf(buf);
        self.pause_if_congested(key);
        if !more {
            self.rearm.push(key);
            self.maybe_release(key);
        }
    }

    fn release_buf(&mut self, buf: RecvBuf) {
        if self.ring.buffers().is_some_and(|b| b.release(buf)) {
            self.recycled = true;
        }
    }

    /// The peer finished sending (FIN, or a TLS close_notify).
    pub(super) fn on_peer_eof(&mut self, key: ConnKey, lingering: bool, answering: bool) {
        if lingering {
            self.release_after_flush(key);
        } else if answering {
            // A complete request whose answer the other cores are still
            // gathering: the peer has simply finished sending.
            if let Some(conn) = self.conns.get_mut(key) {
                conn.flags.set(Flag::PeerFin, true);
            }
        } else {
            // The peer is gone.
            self.abort(key);
        }
    }

    fn on_data(&mut self, key: ConnKey, buf: &RecvBuf) {
        self.parse_input(key, Input::Ring(buf));
    }

    /// Parses a connection's bytes by its phase (a TLS connection's ring
    /// bytes go through [`Shard::on_tls_data`] first).
    fn parse_input(&mut self, key: ConnKey, mut input: Input<'_>) {
        let Shard {
            conns,
            ring,
            env,
            inflater,
            cfg,
            ..
        } = &mut *self;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        if conn.user_tls().is_some() {
            if let Input::Ring(buf) = input {
                // Ciphertext: decrypted first, then parsed as `Plain`.
                return self.on_tls_data(key, buf);
            }
        }
        let data: &mut [u8] = match &mut input {
            Input::Ring(buf) => match ring.buffers() {
                Some(bufs) => bufs.get(buf),
                None => return,
            },
            Input::Plain(p) => p,
        };
        let outcome = match conn.phase {
            Phase::Open(_) => match feed_open(key, conn, env, inflater, cfg.limits, data) {
                Some(fed) => DataOutcome::Fed(fed),
                None => DataOutcome::Nothing,
            },
            Phase::Handshake(_) => DataOutcome::Head(super::head::parse(conn, cfg, env, data)),
            Phase::Answering | Phase::Lingering | Phase::Closing => DataOutcome::Nothing,
        };
        match outcome {
            DataOutcome::Fed(fed) => self.after_feed(key, fed),
            DataOutcome::Head(h) => self.after_head(key, h, input),
            DataOutcome::Nothing => {}
        }
    }

    /// A TLS connection's ciphertext: decrypted into the core's scratch,
    /// then parsed like a plain connection's bytes.
    fn on_tls_data(&mut self, key: ConnKey, buf: &RecvBuf) {
        let mut plain = std::mem::take(&mut self.tls_plain);
        plain.clear();
        let Shard {
            conns, ring, env, ..
        } = &mut *self;
        let (Some(conn), Some(bufs)) = (conns.get_mut(key), ring.buffers()) else {
            self.tls_plain = plain;
            return;
        };
        // What arrives while closing is discarded, as on plain connections.
        let closing = matches!(
            conn.phase,
            Phase::Answering | Phase::Lingering | Phase::Closing
        );
        let (lingering, answering) = (
            matches!(conn.phase, Phase::Lingering),
            matches!(conn.phase, Phase::Answering),
        );
        let Some(tls) = crate::tls::user_mut(&mut conn.tls).filter(|t| !t.failed()) else {
            self.tls_plain = plain;
            return;
        };
        let data = bufs.get(buf);
        if tls.handshaking() && !tls.has_carry() && looks_like_http(data) {
            // Someone typed http:// for an https:// port: tell them so in
            // their own protocol, instead of an alert they cannot read.
            if let Some(tls) = crate::tls::user_mut(&mut conn.tls) {
                tls.clear(&mut env.pool);
            }
            conn.tls = None;
            self.tls_plain = plain;
            self.stats.tls.plain_http += 1;
            debug!(core = self.id, "plain HTTP on the TLS port: 400");
            return self.refuse(
                key,
                Refusal {
                    status: 400,
                    reason: "this port speaks TLS: use https:// or wss://",
                },
            );
        }
        let established = tls.established();
        let result = tls.receive(data, &mut plain, &mut env.pool);
        let version = tls.version();
        let took = tls.handshake_elapsed(Instant::now());
        let unsent = tls.has_unsent();
        match result {
            Err(e) => {
                if established {
                    self.stats.tls.record_errors += 1;
                } else {
                    self.stats.tls.failed += 1;
                }
                debug!(core = self.id, established, "TLS: {e}; closing");
                // The alert rustls queued, if TLS calls for one, goes out;
                // then FIN. Nothing else can be sent on this stream.
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.out.drop_unsent(&mut self.env.pool);
                }
                self.unsubscribe(key);
                if !closing {
                    self.linger(key);
                } else {
                    self.mark_dirty(key);
                }
            }
            Ok(got) => {
                if got.handshake_done {
                    self.stats
                        .tls
                        .handshake_done(version, took.as_micros() as u64);
                    self.count_ktls_unavailable();
                }
                if unsent {
                    self.mark_dirty(key);
                }
                if !plain.is_empty() && !closing {
                    self.parse_input(key, Input::Plain(&mut plain));
                }
                if got.peer_closed {
                    self.stats.tls.peer_close_notify += 1;
                    self.on_peer_eof(key, lingering, answering);
                }
            }
        }
        if plain.capacity() <= TLS_PLAIN_KEEP {
            self.tls_plain = plain;
        }
    }

    /// Feeds what follows the request head in the same read (pipelined
    /// frames) to a connection that was just upgraded.
    pub(super) fn feed_rest(&mut self, key: ConnKey, mut input: Input<'_>, from: usize) {
        let Shard {
            conns,
            ring,
            env,
            inflater,
            cfg,
            ..
        } = &mut *self;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        let data: &mut [u8] = match &mut input {
            Input::Ring(buf) => match ring.buffers() {
                Some(bufs) => bufs.get(buf),
                None => return,
            },
            Input::Plain(p) => p,
        };
        let Some(rest) = data.get_mut(from..) else {
            return;
        };
        if let Some(fed) = feed_open(key, conn, env, inflater, cfg.limits, rest) {
            self.after_feed(key, fed);
        }
    }

    /// Acts on what parsing a read led to.
    pub(super) fn after_feed(&mut self, key: ConnKey, fed: Fed) {
        if fed.published {
            if let Some(c) = self.conns.get_mut(key) {
                c.flags.set(Flag::Publisher, true);
            }
        }
        if fed.core_hook != CoreHook::None {
            self.core_hook = fed.core_hook;
        }
        if let Some(state) = fed.changed {
            self.session_changed(key, state);
        }
        if fed.overflowed {
            self.overflow.push(key);
        }
        use crate::ws::CloseCode;
        if fed.publish_limited
            && self.close_open(key, CloseCode::POLICY, "publish rate limit exceeded", false)
        {
            self.stats.rate_limit_closes += 1;
            tracing::debug!(core = self.id, "closed for publish rate (1008)");
        }
        if fed.rate_limited
            && self.close_open(key, CloseCode::POLICY, "message rate limit exceeded", false)
        {
            self.stats.rate_limit_closes += 1;
            tracing::debug!(core = self.id, "closed for message rate (1008)");
        }
        if self.conns.get_mut(key).is_some_and(|c| c.has_unsent()) {
            self.mark_dirty(key);
        }
    }

    /// Follows the mesh's congestion: on entering it, connections that
    /// publish cross-core traffic get their reads paused as their next
    /// bytes arrive (see [`Shard::pause_if_congested`]); on leaving it, they
    /// are re-armed. Everyone else is read throughout, so pongs and close
    /// replies of subscribers keep flowing while a peer catches up.
    pub(super) fn check_congestion(&mut self) {
        let congested = self.mesh.as_ref().is_some_and(Mesh::congested);
        if congested && !self.congested {
            self.stats.congestion_episodes += 1;
            warn!(
                core = self.id,
                "a peer core is {} frames behind: pausing reads from publishing connections",
                mesh::BACKLOG_PAUSE
            );
        }
        if !congested && self.congested {
            for key in std::mem::take(&mut self.paused) {
                if let Some(c) = self.conns.get_mut(key) {
                    c.flags.set(Flag::Paused, false);
                    self.rearm.push(key);
                }
            }
        }
        self.congested = congested;
    }

    /// While congested, stops reading from a connection that publishes
    /// cross-core traffic: its multishot receive is cancelled, its bytes
    /// wait in the kernel (TCP pushes back on the client), and the backlog
    /// can only grow by what was already received.
    fn pause_if_congested(&mut self, key: ConnKey) {
        if !self.congested {
            return;
        }
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if !c.flags.has(Flag::Publisher)
            || c.flags.has(Flag::Paused)
            || matches!(c.phase, Phase::Closing)
        {
            return;
        }
        c.flags.set(Flag::Paused, true);
        self.paused.push(key);
        if c.flags.has(Flag::RecvArmed) {
            let sqe = opcode::AsyncCancel::new(token(Op::Recv, key))
                .build()
                .user_data(token(Op::Ignore, key));
            // SAFETY: a cancellation references no memory.
            if let Err(e) = unsafe { self.ring.push(&sqe) } {
                warn!(core = self.id, "cancelling a receive: {e}");
            }
        }
    }
}
