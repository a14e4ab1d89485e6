//! One core's share of the server: its listener, its connections, its ring,
//! its hub, and the loop that drives them.
//!
//! Each pass of the loop:
//! 1. one `io_uring_enter` submits everything queued in the previous pass
//!    and runs the kernel's deferred completion work;
//! 2. every completion is handled: new connections, received bytes (parsed
//!    in place from the provided buffer, which goes straight back to the
//!    kernel), finished sends;
//! 3. the hub fans out the pass's broadcasts, local and remote, walking
//!    subscribers once per batch;
//! 4. every connection with new output gets one send covering all of it.
//!
//! The loop is a glommio task; `Shard` is `!Send` (it holds `Rc`s), so
//! nothing here can leak to another core.

pub mod conn;
pub mod heartbeat;
mod http;
pub mod metrics;
pub mod outq;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};
use tracing::{debug, error, info, warn};

use crate::app::{ConnIo, CoreHook, Env, MsgStats, Policy, Resource, Route, WsConn};
use crate::hub::channels::Channels;
use crate::hub::frame::Frame;
use crate::hub::mesh::{self, Doorbells, Mesh};
use crate::hub::{Hub, MeshMsg};
use crate::io::bufring::BufRing;
use crate::io::ring::Ring;
use crate::runtime::timer::TimerWheel;
use crate::ws::frame::encode_frame_into;
use crate::ws::handshake::{self, Parsed, Progress, Refusal};
use crate::ws::{CloseCode, Limits, OpCode, Session, State};
use conn::{token, untoken, Conn, ConnKey, Op, Phase, SendMsg, Slab, NO_TICK};
use heartbeat::{Beat, Due};
use http::{HeadOutcome, RefusedBy};
use outq::{BufPool, FreeList};

/// Settings every core shares (read-only).
#[derive(Clone)]
pub struct ShardConfig {
    pub listen: std::net::SocketAddr,
    pub backlog: i32,
    pub max_header_bytes: usize,
    pub limits: Limits,
    pub max_send_queue_bytes: usize,
    pub handshake_timeout: Duration,
    pub close_timeout: Duration,
    pub shutdown_grace: Duration,
    pub recv_buffers: u16,
    pub recv_buffer_size: usize,
    /// Limits and heartbeat settings applied per connection.
    pub policy: Policy,
    /// Close connections that sent no message for this long.
    pub idle_timeout: Option<Duration>,
    /// This core's share of `--max-connections` (0: no limit).
    pub max_connections: usize,
    /// Number of cores (for interest announcements).
    pub cores: usize,
    /// Token verification for upgrades (`--auth-secret`).
    pub verifier: Option<crate::app::auth::Verifier>,
    /// `--allowed-origins` (empty: any).
    pub allowed_origins: Vec<String>,
    /// The HTTP API's key (`--api-key`; none: the API is off).
    pub api_key: Option<String>,
    /// Largest API request body.
    pub max_body_bytes: usize,
}

/// What the main thread and the cores share: the shutdown flag and each
/// core's doorbell. The flag is read once per loop pass (a read-shared cache
/// line); nothing else here is touched on the data path.
pub struct Control {
    pub shutdown: AtomicBool,
    /// Set with `shutdown` when a core failed: the others close their
    /// connections with 1012 (service restart) instead of 1001, since the
    /// process is about to exit for its service manager to restart it.
    pub restart: AtomicBool,
    /// Set on SIGTERM, before `shutdown` (which waits `--drain-delay`):
    /// readiness is withdrawn first.
    pub draining: AtomicBool,
    pub bells: Doorbells,
    /// Each core's published counters (written only by that core).
    pub metrics: Box<[metrics::CoreMetrics]>,
}

impl Control {
    /// Control block for `cores` cores (one eventfd each for the
    /// doorbells).
    pub fn new(cores: usize) -> io::Result<Arc<Control>> {
        Ok(Arc::new(Control {
            shutdown: AtomicBool::new(false),
            restart: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            bells: mesh::doorbells(cores)?,
            metrics: (0..cores)
                .map(|_| metrics::CoreMetrics::default())
                .collect(),
        }))
    }

    /// Ready for traffic: every core listens and no drain has begun.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
            && !self.shutdown.load(Ordering::Relaxed)
            && self
                .metrics
                .iter()
                .all(|m| m.listening.load(Ordering::Relaxed))
    }

    /// Asks every core to shut down and wakes the ones that sleep.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for bell in self.bells.iter() {
            bell.ring();
        }
    }
}

/// Per-core counters and gauges (plain integers: only this core writes
/// them). `repr(C)` of `u64`s only, so the metrics block copies it word by
/// word.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    pub accepted: u64,
    pub upgraded: u64,
    pub refused: u64,
    pub closed: u64,
    pub deliveries: u64,
    pub slow_consumer_closes: u64,
    pub sends: u64,
    pub enters: u64,
    pub turns: u64,
    /// Plain HTTP requests answered (health, readiness, metrics, API).
    pub http_requests: u64,
    /// Upgrades refused: 401 (token), 403 (origin), 503 (connection limit).
    pub unauthorized: u64,
    pub forbidden_origin: u64,
    pub over_capacity: u64,
    /// Connections closed with 1008 for their message rate.
    pub rate_limit_closes: u64,
    /// Connections closed with 1011 after missed pongs.
    pub heartbeat_closes: u64,
    /// Connections closed for sending nothing within the idle timeout.
    pub idle_closes: u64,
    /// Times the loop slept (blocked in its ring with nothing to do).
    pub sleeps: u64,
    /// Times a peer core's backlog reached the pause mark (episodes).
    pub congestion_episodes: u64,
    /// Messages dropped for a core that had stopped.
    pub mesh_dropped: u64,
    /// Connections that became suspect (missed pongs), ever.
    pub suspects_total: u64,
    /// Pings sent.
    pub pings: u64,
    /// Panics caught while handling one connection's input (that
    /// connection was dropped; the core went on).
    pub handler_panics: u64,
    /// Bytes the kernel accepted from our sends.
    pub bytes_out: u64,
    /// Gauges, refreshed about once a second: suspect connections now,
    /// unsent bytes queued over all connections.
    pub suspects: u64,
    pub send_queue_bytes: u64,
    /// Gauge: memory held by all send queues (what the bound counts).
    pub send_queue_memory: u64,
    /// Gauges: frames waiting for room in peers' rings; connections whose
    /// reads are paused while a peer is congested.
    pub mesh_backlog: u64,
    pub paused_connections: u64,
    /// Gauges: free `sendmsg` headers and pooled send-buffer bytes kept
    /// for reuse (both freed once unused for a second).
    pub sendmsg_headers: u64,
    pub send_pool_bytes: u64,
    /// Gauges: channel entries and local subscriptions.
    pub channels: u64,
    pub subscriptions: u64,
    /// Counters of the connections' messages.
    pub msg: MsgStats,
}

/// One core's state. Owned by its loop task.
pub struct Shard {
    id: usize,
    // Field order matters: the ring must be dropped before the buffer
    // mapping it has registered.
    ring: Ring,
    bufs: BufRing,
    listener: Option<OwnedFd>,
    accept_armed: bool,
    accept_retry_at: Option<Instant>,
    conns: Slab,
    hub: Hub,
    channels: Channels,
    mesh: Option<Mesh>,
    /// Messages from other cores, read this pass.
    mesh_in: Vec<MeshMsg>,
    /// Open WebSocket connections, and this core's share of
    /// `--max-connections` (0: no limit).
    open_ws: usize,
    max_open: usize,
    /// `/api/channels` requests waiting for other cores' answers.
    queries: Vec<ChannelsQuery>,
    next_query: u32,
    /// Reused for `/ws` replies.
    scratch: Vec<u8>,
    /// `X-Ringcast-Core: N`, sent with every 101: which core holds the
    /// connection (operators correlating per-core metrics, and tests that
    /// need clients on different cores).
    core_header: String,
    /// The core's clock: `now` is read once per pass; `now_us` is it in
    /// microseconds since `epoch`.
    epoch: Instant,
    now: Instant,
    now_us: u64,
    /// When the gauges were last refreshed.
    gauges_at: Instant,
    pool: BufPool,
    /// When the send-buffer pool is next trimmed of buffers it did not need.
    pool_trim_at: Instant,
    /// Free `sendmsg` headers (~1 KiB each). Boxed on purpose: a header
    /// moves between this list and a connection, and its address must not
    /// change while the kernel reads it. Trimmed with the buffer pool, so a
    /// fan-out to 100k subscribers does not pin 100k headers.
    sendmsgs: FreeList<Box<SendMsg>>,
    /// Where a flush gathers a connection's iovecs before knowing whether
    /// it needs a `sendmsg` header at all.
    iov: Box<[libc::iovec; outq::MAX_IOV]>,
    dirty: Vec<ConnKey>,
    rearm: Vec<ConnKey>,
    overflow: Vec<ConnKey>,
    /// A peer core is congested (its backlog is past the pause mark).
    congested: bool,
    /// Connections whose receive was cancelled while congested: they
    /// published cross-core traffic; re-armed when the backlog drains.
    paused: Vec<ConnKey>,
    /// Test hook asked for by a client this pass (failpoints only).
    core_hook: CoreHook,
    recycled: bool,
    wheel: TimerWheel<ConnKey>,
    /// Scratch list of due timer entries.
    due: Vec<(u64, ConnKey)>,
    cfg: Rc<ShardConfig>,
    control: Arc<Control>,
    stats: Stats,
    msg_stats: MsgStats,
    /// Shutdown: when the close handshakes must be done.
    drain_deadline: Option<Instant>,
    /// Shutdown: set once stragglers were aborted at the deadline; the loop
    /// ends when their descriptors are closed or at this instant.
    drain_cutoff: Option<Instant>,
}

/// Token for the listener's multishot accept.
const ACCEPT: ConnKey = ConnKey {
    idx: u32::MAX,
    gen: 0,
};
/// How soon a core with frames waiting for room in a peer's ring retries.
const MESH_RETRY: Duration = Duration::from_micros(200);
/// After the shutdown grace period, how long aborted connections get for
/// their in-flight operations to complete before the core exits anyway.
const DRAIN_CUTOFF: Duration = Duration::from_secs(1);
/// Pause before re-arming accept after EMFILE/ENFILE, so a full descriptor
/// table does not turn the accept path into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often the gauges that need a walk over all connections (send-queue
/// bytes, suspects) are refreshed.
const GAUGE_PERIOD: Duration = Duration::from_secs(1);
/// How long a pooled send buffer may sit unused before it is freed.
const POOL_TRIM_PERIOD: Duration = Duration::from_secs(1);

/// An `/api/channels` request gathering every core's counts.
struct ChannelsQuery {
    id: u32,
    key: ConnKey,
    waiting_for: usize,
    counts: std::collections::BTreeMap<String, u64>,
}

impl Shard {
    /// Sets up this core: ring, buffers, listener, mesh. Runs on the core's
    /// own thread (the ring is single-issuer).
    pub async fn start(
        id: usize,
        cfg: Rc<ShardConfig>,
        control: Arc<Control>,
        links: Option<mesh::Links>,
    ) -> io::Result<Shard> {
        let ring = Ring::new(4096)?;
        let bufs = BufRing::new(&ring, 0, cfg.recv_buffers, cfg.recv_buffer_size)?;
        let listener = crate::io::listener::bind_reuseport(cfg.listen, cfg.backlog)?;
        let mesh = links.map(|l| Mesh::new(l, control.bells.clone()));
        let now = Instant::now();
        let mut shard = Shard {
            id,
            ring,
            bufs,
            listener: Some(listener),
            accept_armed: false,
            accept_retry_at: None,
            conns: Slab::default(),
            hub: Hub::default(),
            channels: Channels::new(id, cfg.cores),
            mesh,
            mesh_in: Vec::new(),
            open_ws: 0,
            max_open: share(cfg.max_connections, cfg.cores, id),
            queries: Vec::new(),
            next_query: 0,
            scratch: Vec::new(),
            core_header: format!("X-Ringcast-Core: {id}\r\n"),
            epoch: now,
            now,
            now_us: 0,
            gauges_at: now,
            pool: BufPool::default(),
            pool_trim_at: now + POOL_TRIM_PERIOD,
            sendmsgs: FreeList::default(),
            iov: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; outq::MAX_IOV],
            ),
            dirty: Vec::new(),
            rearm: Vec::new(),
            overflow: Vec::new(),
            congested: false,
            paused: Vec::new(),
            core_hook: CoreHook::None,
            recycled: false,
            wheel: TimerWheel::new(now),
            due: Vec::new(),
            cfg,
            control,
            stats: Stats::default(),
            msg_stats: MsgStats::default(),
            drain_deadline: None,
            drain_cutoff: None,
        };
        shard
            .ring
            .arm_wake_poll(shard.control.bells[id].fd(), token(Op::Wake, ACCEPT))?;
        shard.arm_accept()?;
        shard.control.metrics[id]
            .listening
            .store(true, Ordering::Relaxed);
        Ok(shard)
    }

    /// Runs the loop until shutdown completes; returns the core's counters.
    pub async fn run(mut self) -> io::Result<Stats> {
        loop {
            let worked = self.turn()?;
            if self.finished() {
                break;
            }
            if worked {
                glommio::yield_if_needed().await;
            } else {
                self.park()?;
            }
        }
        self.stats.msg = self.msg_stats;
        let mesh = self.mesh.as_ref().map(Mesh::counters).unwrap_or_default();
        info!(
            core = self.id,
            accepted = self.stats.accepted,
            upgraded = self.stats.upgraded,
            refused = self.stats.refused,
            messages_in = self.stats.msg.messages_in,
            deliveries = self.stats.deliveries,
            slow_consumer_closes = self.stats.slow_consumer_closes,
            loop_passes = self.stats.turns,
            ring_enters = self.stats.enters,
            sends = self.stats.sends,
            mesh_pushed = mesh.pushed,
            mesh_received = mesh.received,
            doorbells_rung = mesh.doorbells,
            mesh_backlog_high_water = self.mesh.as_ref().map_or(0, |m| m.backlog_high_water()),
            "core {} stopped: accepted {} connections",
            self.id,
            self.stats.accepted
        );
        Ok(self.stats)
    }

    /// One pass of the loop. Returns whether anything happened.
    fn turn(&mut self) -> io::Result<bool> {
        self.stats.turns += 1;
        let mut worked = false;
        if self.ring.needs_enter() {
            self.stats.enters += 1;
            self.ring.enter()?;
        }
        self.now = Instant::now();
        self.now_us = self.now.saturating_duration_since(self.epoch).as_micros() as u64;
        if self.control.shutdown.load(Ordering::Relaxed) && self.drain_deadline.is_none() {
            self.begin_drain();
            worked = true;
        }
        self.check_congestion();
        while let Some(cqe) = self.ring.next_completion() {
            worked = true;
            self.dispatch(cqe);
        }
        match self.core_hook {
            CoreHook::Fail => {
                panic!("failpoint: a core failure requested by a client (RINGCAST_FAILPOINTS=1)")
            }
            CoreHook::Resume => {
                self.core_hook = CoreHook::None;
                STALLED.store(false, Ordering::SeqCst);
            }
            CoreHook::None | CoreHook::Stall => {}
        }
        if let Some(m) = &mut self.mesh {
            worked |= m.retry_backlog();
            m.receive(&mut self.mesh_in);
        }
        if !self.mesh_in.is_empty() {
            worked = true;
            self.handle_mesh_messages();
        }
        if self.hub.has_pending() {
            worked = true;
            self.fan_out();
        }
        if self.channels.has_pending() {
            worked = true;
            self.fan_out_channels();
        }
        // Timers before the flush: a ping or a timeout's close frame leaves
        // in the pass that queued it, not a pass (or a sleep) later.
        self.timers();
        self.channels.end_pass();
        self.send_channel_messages();
        self.close_overflowed();
        if self.recycled {
            self.bufs.publish();
            self.recycled = false;
        }
        self.rearm_recvs();
        self.publish_metrics();
        self.flush()?;
        if let Some(m) = &mut self.mesh {
            m.ring_doorbells();
        }
        if self.core_hook == CoreHook::Stall {
            // Test hook: what this pass queued (the hook's echo) goes out
            // first, then the loop stops.
            self.core_hook = CoreHook::None;
            self.ring.enter()?;
            stall_until_resumed(self.id);
        }
        Ok(worked)
    }

    /// Follows the mesh's congestion: on entering it, connections that
    /// publish cross-core traffic get their reads paused as their next
    /// bytes arrive (see [`Shard::pause_if_congested`]); on leaving it, they
    /// are re-armed. Everyone else is read throughout, so pongs and close
    /// replies of subscribers keep flowing while a peer catches up.
    fn check_congestion(&mut self) {
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
                    c.paused = false;
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
        if !c.publisher || c.paused || matches!(c.phase, Phase::Closing) {
            return;
        }
        c.paused = true;
        self.paused.push(key);
        if c.recv_armed {
            let sqe = opcode::AsyncCancel::new(token(Op::Recv, key))
                .build()
                .user_data(token(Op::Ignore, key));
            // SAFETY: a cancellation references no memory.
            if let Err(e) = unsafe { self.ring.push(&sqe) } {
                warn!(core = self.id, "cancelling a receive: {e}");
            }
        }
    }

    fn dispatch(&mut self, cqe: cqueue::Entry) {
        match untoken(cqe.user_data()) {
            (Some(Op::Recv), _) => self.on_recv(cqe),
            (Some(Op::Send), key) => self.on_send(key, cqe.result()),
            (Some(Op::Accept), _) => self.on_accept(cqe.result(), cqe.flags()),
            // The multishot poll ended (rare): poll again.
            (Some(Op::Wake), _) if !cqueue::more(cqe.flags()) => {
                let bell = self.control.bells[self.id].fd();
                if let Err(e) = self.ring.arm_wake_poll(bell, token(Op::Wake, ACCEPT)) {
                    warn!(core = self.id, "re-arming the wake-up poll: {e}");
                }
            }
            _ => {}
        }
    }

    /// Whether shutdown has finished on this core.
    fn finished(&self) -> bool {
        self.drain_deadline.is_some()
            && ((self.conns.is_empty() && !self.accept_armed)
                || self.drain_cutoff.is_some_and(|c| Instant::now() >= c))
    }

    /// The next shutdown instant to wake up for, if draining.
    fn drain_timer(&self) -> Option<Instant> {
        self.drain_cutoff.or(self.drain_deadline)
    }

    /// Sleeps until the ring has work, another core rings our doorbell, or
    /// a timer is due: one blocking `io_uring_enter` on our own ring, which
    /// also submits whatever this pass queued. The core's loop is the only
    /// task on its executor, so blocking the thread here starves nothing.
    /// A shutdown request needs no check here: it rings the doorbell after
    /// raising the flag, and a write the poll has not reported yet makes the
    /// wait return at once.
    fn park(&mut self) -> io::Result<()> {
        if let Some(m) = &mut self.mesh {
            if !m.announce_sleep(&mut self.mesh_in) {
                return Ok(());
            }
        }
        // Frames waiting for room in a peer's ring are retried soon.
        let backlog_retry = self
            .mesh
            .as_ref()
            .is_some_and(Mesh::backlogged)
            .then(|| Instant::now() + MESH_RETRY);
        // Gauges still showing queued bytes or suspects are refreshed even
        // while the core is otherwise idle, so a scrape never reads stale ones.
        let gauges = (self.stats.send_queue_bytes > 0 || self.stats.suspects > 0)
            .then(|| self.gauges_at + GAUGE_PERIOD);
        // A core gone quiet still frees its pooled buffers, then sleeps for
        // good.
        let pool_trim =
            (!self.pool.is_empty() || !self.sendmsgs.is_empty()).then_some(self.pool_trim_at);
        let next_timer = [
            self.wheel.next_wake(),
            self.accept_retry_at,
            self.drain_timer(),
            backlog_retry,
            gauges,
            pool_trim,
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = next_timer.map(|t| t.saturating_duration_since(Instant::now()));
        self.stats.enters += 1;
        self.stats.sleeps += 1;
        let r = self.ring.wait(timeout);
        if let Some(m) = &self.mesh {
            m.woke();
        }
        r
    }

    // ----- accept -------------------------------------------------------

    fn arm_accept(&mut self) -> io::Result<()> {
        let Some(l) = &self.listener else {
            return Ok(());
        };
        let sqe = opcode::AcceptMulti::new(types::Fd(l.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(token(Op::Accept, ACCEPT));
        // SAFETY: accept takes no buffers.
        unsafe { self.ring.push(&sqe)? };
        self.accept_armed = true;
        Ok(())
    }

    fn on_accept(&mut self, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if res >= 0 {
            self.stats.accepted += 1;
            if self.drain_deadline.is_some() {
                // SAFETY: closing the descriptor we were just given.
                unsafe { libc::close(res) };
                return;
            }
            let deadline = Instant::now() + self.cfg.handshake_timeout;
            let key = self.conns.insert(Conn::new(res, deadline));
            self.schedule(key);
            debug!(core = self.id, fd = res, "accepted connection");
            self.arm_recv(key);
        } else {
            let err = io::Error::from_raw_os_error(-res);
            match -res {
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
                    warn!(
                        core = self.id,
                        "accept: {err}; pausing accepts for {ACCEPT_BACKOFF:?}"
                    );
                    self.accept_retry_at = Some(Instant::now() + ACCEPT_BACKOFF);
                }
                libc::ECANCELED | libc::EINVAL if self.drain_deadline.is_some() => {}
                _ => debug!(core = self.id, "accept: {err}"),
            }
        }
        if !self.accept_armed && self.drain_deadline.is_none() && self.accept_retry_at.is_none() {
            if let Err(e) = self.arm_accept() {
                warn!(core = self.id, "re-arming accept: {e}");
            }
        }
        if self.drain_deadline.is_some() && !self.accept_armed {
            self.listener = None;
        }
    }

    // ----- receive ------------------------------------------------------

    fn arm_recv(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let sqe = opcode::RecvMulti::new(types::Fd(c.fd), self.bufs.group())
            .build()
            .user_data(token(Op::Recv, key));
        c.recv_armed = true;
        // SAFETY: the kernel writes into provided buffers we own.
        if let Err(e) = unsafe { self.ring.push(&sqe) } {
            warn!(core = self.id, "arming recv: {e}");
            c.recv_armed = false;
            self.abort(key);
        }
    }

    fn rearm_recvs(&mut self) {
        while let Some(key) = self.rearm.pop() {
            let wants = self
                .conns
                .get_mut(key)
                .is_some_and(|c| !c.recv_armed && !c.paused && !matches!(c.phase, Phase::Closing));
            if wants {
                self.arm_recv(key);
            }
        }
    }

    fn on_recv(&mut self, cqe: cqueue::Entry) {
        let (_, key) = untoken(cqe.user_data());
        let res = cqe.result();
        let flags = cqe.flags();
        let more = cqueue::more(flags);
        // Where this completion's bytes are; the buffer goes back to the
        // kernel after them unless the kernel is still filling it.
        let chunk = cqueue::buffer_select(flags).map(|bid| Chunk {
            bid,
            at: self.bufs.claim(bid, res.max(0) as usize),
            len: res.max(0) as usize,
            buffer_more: cqueue::buffer_more(flags),
        });
        let Some(conn) = self.conns.get_mut(key) else {
            if let Some(chunk) = chunk {
                self.release_chunk(chunk);
            }
            return;
        };
        if !more {
            conn.recv_armed = false;
        }
        let lingering = matches!(conn.phase, Phase::Lingering);
        let answering = matches!(conn.phase, Phase::Answering);
        if res <= 0 {
            if let Some(chunk) = chunk {
                self.release_chunk(chunk);
            }
            let paused = self.conns.get_mut(key).is_some_and(|c| c.paused);
            if res == -libc::ECANCELED && paused {
                // Paused while a peer is congested: re-armed when it drains.
            } else if res == -libc::ENOBUFS {
                // The core ran out of receive buffers: pick up again once
                // this pass has recycled some.
                self.rearm.push(key);
            } else if lingering && res == 0 {
                self.release_after_flush(key);
            } else if res == 0 && answering {
                // A complete request whose answer the other cores are
                // still gathering: the peer has simply finished sending.
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.peer_fin = true;
                }
            } else {
                // EOF or error: the peer is gone.
                self.abort(key);
            }
            if !more {
                self.maybe_release(key);
            }
            return;
        }
        let Some(chunk) = chunk else { return };
        // A bug reachable from one client's bytes must cost that client its
        // connection, not the core its other connections: the input is
        // handled under catch_unwind (release builds unwind, see
        // Cargo.toml), and a panic drops just this connection.
        let handled = panic::catch_unwind(AssertUnwindSafe(|| self.on_data(key, chunk)));
        if handled.is_err() {
            self.stats.handler_panics += 1;
            error!(
                core = self.id,
                "panic while handling a connection's input; that connection is dropped"
            );
            self.abort(key);
        }
        self.release_chunk(chunk);
        self.pause_if_congested(key);
        if !more {
            self.rearm.push(key);
            self.maybe_release(key);
        }
    }

    fn release_chunk(&mut self, chunk: Chunk) {
        if self.bufs.release(chunk.bid, chunk.buffer_more) {
            self.recycled = true;
        }
    }

    fn on_data(&mut self, key: ConnKey, chunk: Chunk) {
        let len = chunk.len;
        let outcome = {
            let Shard {
                conns,
                bufs,
                hub,
                channels,
                pool,
                cfg,
                msg_stats,
                scratch,
                now_us,
                ..
            } = &mut *self;
            let Some(conn) = conns.get_mut(key) else {
                return;
            };
            // SAFETY: the chunk came from this completion and is released
            // only after this function returns.
            let data = unsafe { bufs.get(chunk.bid, chunk.at, chunk.len) };
            match &mut conn.phase {
                Phase::Open(session) => {
                    let route = conn.route.unwrap_or(Route::Echo);
                    let mut env = Env {
                        outbox: &mut hub.outbox,
                        channels,
                        stats: msg_stats,
                        scratch,
                        policy: &cfg.policy,
                        now_us: *now_us,
                    };
                    let mesh_before = env.outbox.len() + env.channels.outgoing.len();
                    let mut io =
                        ConnIo::new(route, key, &mut conn.out, &mut conn.ctl, pool, &mut env);
                    let before = session.state();
                    let after = session.feed(data, &mut io);
                    let fed = Fed::from_io(&io, (after != before).then_some(after));
                    let published = env.outbox.len() + env.channels.outgoing.len() > mesh_before;
                    DataOutcome::Fed(Fed { published, ..fed })
                }
                Phase::Handshake(head) => {
                    let (max_head, max_body) = (cfg.max_header_bytes, cfg.max_body_bytes);
                    // A head that came in pieces is collected; it stays
                    // bounded because the parser refuses anything past
                    // `max_head` (431) and `max_body` (413).
                    let buffered = !head.is_empty();
                    if buffered {
                        head.extend_from_slice(data);
                    }
                    let buf: &[u8] = if buffered { head } else { data };
                    let outcome =
                        match handshake::parse_http(buf, max_head, max_body, Route::target) {
                            Ok(Progress::Partial) => HeadOutcome::Nothing,
                            Ok(Progress::AwaitingBody {
                                continue_expected,
                                resource,
                                method,
                                creds,
                            }) => {
                                let refused =
                                    http::precheck(cfg, resource, method, &creds, scratch)
                                        .or_else(|| http::body_not_wanted(resource, scratch));
                                if let Some(refused) = refused {
                                    refused
                                } else if continue_expected && !conn.continue_sent {
                                    conn.continue_sent = true;
                                    HeadOutcome::Continue
                                } else {
                                    HeadOutcome::Nothing
                                }
                            }
                            Ok(Progress::Done(Parsed::Upgrade { upgrade, creds })) => {
                                // Where the frames after the head start in this chunk.
                                let after_head = buf.len() - upgrade.head_len;
                                http::admit(cfg, upgrade, &creds, len - after_head)
                            }
                            Ok(Progress::Done(Parsed::Http {
                                resource,
                                method,
                                body,
                                creds,
                                ..
                            })) => {
                                let req = http::HttpRequest {
                                    resource,
                                    method,
                                    body,
                                    creds,
                                };
                                http::request(cfg, channels, msg_stats, scratch, req)
                            }
                            Err(r) => HeadOutcome::Refuse(r, RefusedBy::Protocol),
                        };
                    if !buffered && matches!(outcome, HeadOutcome::Nothing | HeadOutcome::Continue)
                    {
                        head.extend_from_slice(data);
                    }
                    DataOutcome::Head(outcome)
                }
                Phase::Answering | Phase::Lingering | Phase::Closing => DataOutcome::Nothing,
            }
        };
        match outcome {
            DataOutcome::Fed(fed) => self.after_feed(key, fed),
            DataOutcome::Head(h) => self.after_head(key, h, chunk),
            DataOutcome::Nothing => {}
        }
    }

    /// Acts on a request head once its bytes are released.
    fn after_head(&mut self, key: ConnKey, outcome: HeadOutcome, chunk: Chunk) {
        match outcome {
            HeadOutcome::Nothing => {}
            HeadOutcome::Continue => {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.out
                        .write_with(&mut self.pool, |v| v.extend_from_slice(handshake::CONTINUE));
                    self.mark_dirty(key);
                }
            }
            HeadOutcome::Upgrade(up, claims, from) => self.upgrade(key, up, claims, chunk, from),
            HeadOutcome::Refuse(r, by) => {
                match by {
                    RefusedBy::Protocol => self.stats.refused += 1,
                    RefusedBy::Token => self.stats.unauthorized += 1,
                    RefusedBy::Origin => self.stats.forbidden_origin += 1,
                }
                debug!(
                    core = self.id,
                    status = r.status,
                    reason = r.reason,
                    "handshake refused"
                );
                self.refuse_quietly(key, r);
            }
            HeadOutcome::Respond => self.respond(key),
            HeadOutcome::Resource(r) => self.answer_http(key, r),
            HeadOutcome::Query => self.start_query(key),
        }
    }

    /// Answers a plain HTTP resource and closes the connection after it
    /// (anything the client sent after the request head is ignored).
    fn answer_http(&mut self, key: ConnKey, resource: Resource) {
        self.stats.http_requests += 1;
        // The scrape includes this core's latest counts.
        self.publish_metrics();
        let control = &self.control;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.out.write_with(&mut self.pool, |v| match resource {
            Resource::Health => handshake::write_ok("text/plain; charset=utf-8", b"ok\n", v),
            Resource::Ready if control.ready() => {
                handshake::write_ok("text/plain; charset=utf-8", b"ready\n", v)
            }
            Resource::Ready => Refusal {
                status: 503,
                reason: "not ready: starting or draining",
            }
            .write_response(v),
            Resource::Metrics => handshake::write_ok(
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(&control.metrics).as_bytes(),
                v,
            ),
            // Answered in `http` before they get here.
            Resource::Publish | Resource::ChannelList => {
                handshake::write_response(500, "text/plain", "", b"misrouted\n", v)
            }
        });
        self.linger(key);
    }

    /// Copies this core's counters where a scrape on any core can read them.
    fn publish_metrics(&mut self) {
        if self.now.saturating_duration_since(self.gauges_at) >= GAUGE_PERIOD {
            self.gauges_at = self.now;
            self.refresh_gauges();
        }
        let mut s = self.stats;
        s.msg = self.msg_stats;
        if let Some(m) = &self.mesh {
            s.mesh_backlog = m.backlog_len() as u64;
            s.mesh_dropped = m.counters().dropped;
        }
        s.paused_connections = self.paused.len() as u64;
        s.sendmsg_headers = self.sendmsgs.len() as u64;
        s.send_pool_bytes = self.pool.bytes() as u64;
        s.channels = self.channels.len() as u64;
        s.subscriptions = self.channels.subscriptions() as u64;
        self.control.metrics[self.id].publish(&s, self.conns.len());
    }

    /// The gauges that need a walk over every connection; about once a
    /// second, a few nanoseconds per connection.
    fn refresh_gauges(&mut self) {
        let (mut queued, mut memory, mut suspects) = (0u64, 0u64, 0u64);
        self.conns.for_each(|c| {
            queued += c.out.queued_bytes() as u64;
            memory += c.out.cost() as u64;
            suspects += c.ctl.beat.suspect as u64;
        });
        self.stats.send_queue_bytes = queued;
        self.stats.send_queue_memory = memory;
        self.stats.suspects = suspects;
    }

    fn upgrade(
        &mut self,
        key: ConnKey,
        up: handshake::Upgrade<Route>,
        claims: Option<crate::app::auth::Claims>,
        chunk: Chunk,
        rest_from: usize,
    ) {
        let limits = self.cfg.limits;
        let max = self.max_open;
        if max > 0 && self.open_ws >= max {
            self.stats.over_capacity += 1;
            debug!(
                core = self.id,
                limit = max,
                "upgrade refused: --max-connections (503)"
            );
            return self.refuse_quietly(
                key,
                Refusal {
                    status: 503,
                    reason: "server at its connection limit; retry later",
                },
            );
        }
        let core_header = self.core_header.as_bytes();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.out
            .write_with(&mut self.pool, |v| up.write_response_with(core_header, v));
        conn.phase = Phase::Open(Session::new(limits));
        conn.route = Some(up.route);
        conn.deadline = None;
        conn.ctl.beat = Beat::start(self.now_us, &self.cfg.policy.heartbeat);
        conn.ctl.last_msg_us = self.now_us;
        conn.ctl.tokens = self.cfg.policy.burst;
        conn.ctl.refill_us = self.now_us;
        conn.ctl.pub_tokens = self.cfg.policy.publish_burst;
        conn.ctl.pub_refill_us = self.now_us;
        self.open_ws += 1;
        self.stats.upgraded += 1;
        match up.route {
            Route::Broadcast => conn.sub_slot = Some(self.hub.subscribe(key)),
            Route::Channels => {
                conn.ctl.ws = Some(Box::new(WsConn {
                    claims,
                    ..WsConn::default()
                }))
            }
            Route::Echo => {}
        }
        self.schedule(key);
        self.mark_dirty(key);
        if rest_from < chunk.len {
            // Pipelined frames in the same read as the request head.
            self.feed_slice(key, chunk, rest_from);
        }
    }

    fn feed_slice(&mut self, key: ConnKey, chunk: Chunk, from: usize) {
        let Shard {
            conns,
            bufs,
            hub,
            channels,
            pool,
            msg_stats,
            cfg,
            scratch,
            now_us,
            ..
        } = self;
        let Some(conn) = conns.get_mut(key) else {
            return;
        };
        // SAFETY: as in on_data; the buffer is still ours.
        let data = unsafe { bufs.get(chunk.bid, chunk.at, chunk.len) };
        if let Phase::Open(session) = &mut conn.phase {
            let route = conn.route.unwrap_or(Route::Echo);
            let mut env = Env {
                outbox: &mut hub.outbox,
                channels,
                stats: msg_stats,
                scratch,
                policy: &cfg.policy,
                now_us: *now_us,
            };
            let mesh_before = env.outbox.len() + env.channels.outgoing.len();
            let mut io = ConnIo::new(route, key, &mut conn.out, &mut conn.ctl, pool, &mut env);
            let after = session.feed(&mut data[from..], &mut io);
            let fed = Fed::from_io(&io, (after != State::Open).then_some(after));
            let published = env.outbox.len() + env.channels.outgoing.len() > mesh_before;
            self.after_feed(key, Fed { published, ..fed });
        }
    }

    /// Acts on what parsing a read led to.
    fn after_feed(&mut self, key: ConnKey, fed: Fed) {
        if fed.published {
            if let Some(c) = self.conns.get_mut(key) {
                c.publisher = true;
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
        if fed.publish_limited
            && self.close_open(key, CloseCode::POLICY, "publish rate limit exceeded", false)
        {
            self.stats.rate_limit_closes += 1;
            debug!(core = self.id, "closed for publish rate (1008)");
        }
        if fed.rate_limited
            && self.close_open(key, CloseCode::POLICY, "message rate limit exceeded", false)
        {
            self.stats.rate_limit_closes += 1;
            debug!(core = self.id, "closed for message rate (1008)");
        }
        self.after_output(key);
    }

    /// Answers with a refusal (counted by the caller) and closes.
    fn refuse_quietly(&mut self, key: ConnKey, refusal: Refusal) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.out
            .write_with(&mut self.pool, |v| refusal.write_response(v));
        self.linger(key);
    }

    /// React to the session entering `AwaitingClose` or `Done`.
    fn session_changed(&mut self, key: ConnKey, state: State) {
        self.unsubscribe(key);
        match state {
            State::AwaitingClose => self.set_deadline(key, Instant::now() + self.cfg.close_timeout),
            State::Done => self.linger(key),
            State::Open => {}
        }
    }

    /// Flush what is queued, then FIN, then wait for the peer's FIN.
    fn linger(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.phase = Phase::Lingering;
        conn.fin_after_flush = true;
        self.set_deadline(key, Instant::now() + self.cfg.close_timeout);
        self.mark_dirty(key);
    }

    fn after_output(&mut self, key: ConnKey) {
        if self.conns.get_mut(key).is_some_and(|c| c.out.has_unsent()) {
            self.mark_dirty(key);
        }
    }

    fn mark_dirty(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(key) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    fn set_deadline(&mut self, key: ConnKey, at: Instant) {
        if let Some(c) = self.conns.get_mut(key) {
            c.deadline = Some(at);
        }
        self.schedule(key);
    }

    /// Makes sure the wheel holds an entry for the connection's earliest
    /// timer: its phase deadline, or (open) its next ping or idle limit.
    fn schedule(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let mut next = c.deadline;
        if matches!(c.phase, Phase::Open(_)) && c.deadline.is_none() {
            let at = |us: u64| self.epoch + Duration::from_micros(us);
            let ping = at(c.ctl.beat.next_us);
            let idle = self.cfg.idle_timeout.map(|t| at(c.ctl.last_msg_us) + t);
            next = Some(idle.map_or(ping, |i| i.min(ping)));
        }
        let Some(next) = next else {
            return;
        };
        let tick = self.wheel.tick_of(next);
        if c.wheel_tick == NO_TICK || tick < c.wheel_tick {
            c.wheel_tick = self.wheel.insert(next, key);
        }
    }

    fn unsubscribe(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(ws) = conn.ctl.ws.as_mut() {
            for idx in ws.subs.drain(..) {
                self.channels.unsubscribe(key, idx);
            }
        }
        let Some(slot) = conn.sub_slot.take() else {
            return;
        };
        if let Some(moved) = self.hub.unsubscribe(slot) {
            if let Some(m) = self.conns.get_mut(moved) {
                m.sub_slot = Some(slot);
            }
        }
    }

    // ----- broadcast ----------------------------------------------------

    fn fan_out(&mut self) {
        let max = self.cfg.max_send_queue_bytes;
        let Shard {
            hub,
            conns,
            pool,
            dirty,
            overflow,
            mesh,
            ..
        } = self;
        let r = hub.fan_out(conns, pool, max, on_delivery(overflow, dirty));
        self.stats.deliveries += r.deliveries;
        if let Some(m) = mesh {
            m.send(&hub.outbox);
        }
        hub.outbox.clear();
    }

    /// Closes consumers whose backlog went over the bound: the backlog is
    /// dropped and they get a 1008 close frame; everyone else is unaffected.
    fn close_overflowed(&mut self) {
        while let Some(key) = self.overflow.pop() {
            if self.close_open(key, CloseCode::POLICY, "send queue over limit", true) {
                self.stats.slow_consumer_closes += 1;
                debug!(core = self.id, "closed slow consumer (1008)");
            }
        }
    }

    /// Starts a server-initiated close handshake on an open connection,
    /// optionally dropping its unsent backlog first. Returns whether it was
    /// open.
    fn close_open(
        &mut self,
        key: ConnKey,
        code: CloseCode,
        reason: &str,
        drop_backlog: bool,
    ) -> bool {
        let Shard {
            conns,
            pool,
            hub,
            channels,
            msg_stats,
            scratch,
            cfg,
            now_us,
            ..
        } = &mut *self;
        let Some(conn) = conns.get_mut(key) else {
            return false;
        };
        let Phase::Open(session) = &mut conn.phase else {
            return false;
        };
        if session.state() != State::Open {
            return false;
        }
        if drop_backlog {
            conn.out.drop_unsent(pool);
        }
        let route = conn.route.unwrap_or(Route::Echo);
        let mut env = Env {
            outbox: &mut hub.outbox,
            channels,
            stats: msg_stats,
            scratch,
            policy: &cfg.policy,
            now_us: *now_us,
        };
        let mut io = ConnIo::new(route, key, &mut conn.out, &mut conn.ctl, pool, &mut env);
        session.close(code, reason, &mut io);
        self.session_changed(key, State::AwaitingClose);
        self.mark_dirty(key);
        true
    }

    // ----- send ---------------------------------------------------------

    fn flush(&mut self) -> io::Result<()> {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            if conn.out.sending() || matches!(conn.phase, Phase::Closing) {
                continue;
            }
            if !conn.out.has_unsent() {
                if conn.fin_after_flush {
                    conn.fin_after_flush = false;
                    // SAFETY: shutting down our own socket's write side.
                    unsafe { libc::shutdown(conn.fd, libc::SHUT_WR) };
                }
                if conn.peer_fin {
                    // Everything went out, and the peer had finished.
                    self.release(key);
                }
                continue;
            }
            // Gathered into the core's scratch iovecs first: a single buffer
            // needs no header (most sends), so one is taken only for more.
            let n = conn.out.prepare_send(&mut self.iov[..]);
            let sqe = if n == 1 {
                let iov = self.iov[0];
                opcode::Send::new(
                    types::Fd(conn.fd),
                    iov.iov_base as *const u8,
                    iov.iov_len as u32,
                )
                .flags(libc::MSG_NOSIGNAL)
                .build()
            } else {
                let mut msg = self.sendmsgs.pop().unwrap_or_else(SendMsg::new);
                msg.iov[..n].copy_from_slice(&self.iov[..n]);
                msg.hdr.msg_iov = msg.iov.as_mut_ptr();
                msg.hdr.msg_iovlen = n;
                let sqe = opcode::SendMsg::new(types::Fd(conn.fd), &msg.hdr)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build();
                conn.sendmsg = Some(msg);
                sqe
            };
            self.stats.sends += 1;
            // SAFETY: the iovecs point into chunks the queue keeps unmoved
            // while `sending()`, and the msghdr is boxed in the connection
            // until the completion.
            unsafe { self.ring.push(&sqe.user_data(token(Op::Send, key)))? };
        }
        self.dirty = dirty;
        Ok(())
    }

    fn on_send(&mut self, key: ConnKey, res: i32) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let Some(m) = conn.sendmsg.take() {
            self.sendmsgs.push(m);
        }
        if res < 0 {
            conn.out.clear(&mut self.pool);
            self.abort(key);
            self.maybe_release(key);
            return;
        }
        self.stats.bytes_out += res as u64;
        conn.out.complete_send(res as usize, &mut self.pool);
        if conn.out.has_unsent() || conn.fin_after_flush || conn.peer_fin {
            self.mark_dirty(key);
        }
        self.maybe_release(key);
    }

    // ----- teardown -----------------------------------------------------

    /// Ends a connection now: no more bytes either way.
    fn abort(&mut self, key: ConnKey) {
        self.unsubscribe(key);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(conn.phase, Phase::Closing) {
            return;
        }
        conn.phase = Phase::Closing;
        conn.deadline = None;
        if conn.busy() {
            // Completes the armed receive (and any stuck send) promptly.
            // SAFETY: shutting down our own socket.
            unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
        }
        self.maybe_release(key);
    }

    /// The peer's FIN arrived while lingering. What is still queued for it
    /// (a response, a close reply) goes out first: releasing now would
    /// close the descriptor with it unsent, e.g. for a client that sends
    /// its request and shuts down its write side in the same breath.
    fn release_after_flush(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.out.has_unsent() || conn.out.sending() || conn.fin_after_flush {
            conn.peer_fin = true;
            self.mark_dirty(key);
        } else {
            self.release(key);
        }
    }

    /// Closes the socket normally (after our FIN and the peer's).
    fn release(&mut self, key: ConnKey) {
        self.unsubscribe(key);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.phase = Phase::Closing;
        }
        self.maybe_release(key);
    }

    /// Frees a closing connection once no operation references it.
    fn maybe_release(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !matches!(conn.phase, Phase::Closing) || conn.busy() {
            return;
        }
        if let Some(conn) = self.conns.remove(key) {
            // SAFETY: no operation references the descriptor any more.
            unsafe { libc::close(conn.fd) };
            self.stats.closed += 1;
            if conn.route.is_some() {
                self.open_ws -= 1;
            }
            if let Some(m) = conn.sendmsg {
                self.sendmsgs.push(m);
            }
            let mut out = conn.out;
            out.clear(&mut self.pool);
        }
    }

    // ----- timers and shutdown -------------------------------------------

    fn timers(&mut self) {
        let now = Instant::now();
        if now >= self.pool_trim_at {
            self.pool.trim();
            self.sendmsgs.trim(drop);
            self.pool_trim_at = now + POOL_TRIM_PERIOD;
        }
        if self.accept_retry_at.is_some_and(|t| now >= t) {
            self.accept_retry_at = None;
            if !self.accept_armed && self.drain_deadline.is_none() {
                if let Err(e) = self.arm_accept() {
                    warn!(core = self.id, "re-arming accept: {e}");
                    self.accept_retry_at = Some(now + ACCEPT_BACKOFF);
                }
            }
        }
        if self.wheel.next_wake().is_some_and(|t| t <= now) {
            let mut due = std::mem::take(&mut self.due);
            self.wheel.advance(now, |tick, k| due.push((tick, k)));
            for (tick, key) in due.drain(..) {
                self.timer_fired(tick, key, now);
            }
            self.due = due;
        }
        if self.drain_cutoff.is_none() && self.drain_deadline.is_some_and(|d| now >= d) {
            // Grace is over: drop whoever has not finished closing. Their
            // descriptors close as soon as the aborted operations complete.
            self.drain_cutoff = Some(now + DRAIN_CUTOFF);
            for key in self.conns.keys() {
                self.abort(key);
            }
        }
    }

    /// A wheel entry fired: act on whatever of the connection's timers is
    /// due, then make sure its next one is in the wheel.
    fn timer_fired(&mut self, tick: u64, key: ConnKey, now: Instant) {
        let now_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.wheel_tick != tick {
            return; // superseded by an earlier entry
        }
        conn.wheel_tick = NO_TICK;
        if let Some(d) = conn.deadline {
            if d <= now {
                conn.deadline = None;
                if matches!(conn.phase, Phase::Handshake(_)) {
                    debug!(core = self.id, "handshake timeout");
                }
                self.abort(key);
                return;
            }
        } else if matches!(conn.phase, Phase::Open(_)) {
            let idle = self
                .cfg
                .idle_timeout
                .is_some_and(|t| now_us >= conn.ctl.last_msg_us + t.as_micros() as u64);
            if idle {
                if self.close_open(key, CloseCode::NORMAL, "idle timeout", false) {
                    self.stats.idle_closes += 1;
                    debug!(core = self.id, "closed idle connection");
                }
                return;
            }
            if now_us >= conn.ctl.beat.next_us {
                self.heartbeat(key, now_us);
            }
        }
        self.schedule(key);
    }

    /// A connection's ping is due: ping it, or close it after too many
    /// missed pongs. A peer that does not even read gets no ping (its
    /// backlog is over the bound); its misses still count.
    fn heartbeat(&mut self, key: ConnKey, now_us: u64) {
        let max = self.cfg.max_send_queue_bytes;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.ctl.beat.due(now_us) {
            Due::Close => {
                if self.close_open(key, CloseCode::INTERNAL, "heartbeat timeout", true) {
                    self.stats.heartbeat_closes += 1;
                    debug!(core = self.id, "closed after missed pongs (1011)");
                }
            }
            Due::Ping {
                payload,
                now_suspect,
            } => {
                if now_suspect {
                    self.stats.suspects_total += 1;
                    debug!(core = self.id, "connection suspect: missed pongs");
                }
                if conn.out.cost() <= max {
                    conn.out.write_with(&mut self.pool, |v| {
                        encode_frame_into(OpCode::Ping, &payload, v)
                    });
                    self.stats.pings += 1;
                    self.mark_dirty(key);
                }
            }
        }
    }

    // ----- channels -----------------------------------------------------

    /// Dispatches what other cores sent this pass.
    fn handle_mesh_messages(&mut self) {
        let mut msgs = std::mem::take(&mut self.mesh_in);
        for msg in msgs.drain(..) {
            match self.channels.receive(msg) {
                None => {}
                Some(MeshMsg::Broadcast(f)) => self.hub.inbox.push(Frame::new(f)),
                Some(MeshMsg::ChannelsQuery { from, query }) => {
                    let channels = self.channels.local_counts();
                    if let Some(m) = &mut self.mesh {
                        m.send_to(from as usize, MeshMsg::ChannelsReply { query, channels });
                    }
                }
                Some(MeshMsg::ChannelsReply { query, channels }) => {
                    self.channels_reply(query, &channels)
                }
                Some(_) => {}
            }
        }
        self.mesh_in = msgs;
        // Subscriptions every peer has now confirmed.
        let acks = std::mem::take(&mut self.channels.acks_due);
        for (key, id) in acks {
            if let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ctl.ws.as_mut()) {
                ws.held_acks = ws.held_acks.saturating_sub(1);
            }
            self.ws_reply(key, |v| crate::app::protocol::write_ack(id, v));
        }
    }

    /// Queues a `/ws` reply to an open connection outside its own read.
    fn ws_reply(&mut self, key: ConnKey, write: impl FnOnce(&mut Vec<u8>)) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !matches!(&conn.phase, Phase::Open(s) if s.state() == State::Open) {
            return;
        }
        if conn.out.cost() > self.cfg.max_send_queue_bytes {
            // Not reading: it is closed as a slow consumer, like any reply
            // refused for its backlog.
            self.overflow.push(key);
            return;
        }
        self.scratch.clear();
        write(&mut self.scratch);
        let scratch = &self.scratch;
        conn.out.write_with(&mut self.pool, |v| {
            encode_frame_into(OpCode::Text, scratch, v)
        });
        // Counted like a reply queued during the connection's own read.
        self.msg_stats.replies += 1;
        self.mark_dirty(key);
    }

    fn fan_out_channels(&mut self) {
        let max = self.cfg.max_send_queue_bytes;
        let Shard {
            channels,
            conns,
            pool,
            dirty,
            overflow,
            ..
        } = self;
        let n = channels.fan_out(conns, pool, max, on_delivery(overflow, dirty));
        self.stats.deliveries += n;
    }

    /// Hands this pass's channel messages for other cores to the mesh.
    fn send_channel_messages(&mut self) {
        if self.channels.outgoing.is_empty() {
            return;
        }
        let mut out = std::mem::take(&mut self.channels.outgoing);
        if let Some(m) = &mut self.mesh {
            for (core, msg) in out.drain(..) {
                m.send_to(core, msg);
            }
        }
        out.clear();
        self.channels.outgoing = out;
    }

    fn begin_drain(&mut self) {
        let deadline = Instant::now() + self.cfg.shutdown_grace;
        self.drain_deadline = Some(deadline);
        self.control.metrics[self.id]
            .listening
            .store(false, Ordering::Relaxed);
        info!(
            core = self.id,
            connections = self.conns.len(),
            "shutting down: closing with 1001"
        );
        if let Some(l) = &self.listener {
            // Stops new connections at once and completes the armed accept.
            // SAFETY: shutting down our own listening socket.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
            if !self.accept_armed {
                self.listener = None;
            }
        }
        let (code, reason) = if self.control.restart.load(Ordering::Relaxed) {
            (
                CloseCode::SERVICE_RESTART,
                "server restarting after a failure",
            )
        } else {
            (CloseCode::GOING_AWAY, "server shutting down")
        };
        for key in self.conns.keys() {
            let handshaking = self
                .conns
                .get_mut(key)
                .is_some_and(|c| matches!(c.phase, Phase::Handshake(_)));
            if handshaking {
                self.abort(key);
            } else if self.close_open(key, code, reason, false) {
                self.set_deadline(key, deadline);
            }
        }
    }
}

/// What fan-out does per subscriber: one over its backlog bound is queued
/// for a 1008 close, one that got frames is queued for the flush.
fn on_delivery<'a>(
    overflow: &'a mut Vec<ConnKey>,
    dirty: &'a mut Vec<ConnKey>,
) -> impl FnMut(ConnKey, &mut Conn, bool) + 'a {
    move |key, conn, over| {
        if over {
            overflow.push(key);
        }
        if !conn.dirty {
            conn.dirty = true;
            dirty.push(key);
        }
    }
}

/// Test hook (`ringcast:stall-core`): set while a stalled core waits.
static STALLED: AtomicBool = AtomicBool::new(false);

/// Stops this core's loop until another core's client sends
/// `ringcast:resume-cores`, or a minute passes: what a core stuck behind
/// something slow looks like to its peers (their rings to it fill up).
fn stall_until_resumed(id: usize) {
    warn!(
        core = id,
        "failpoint: core stalled until ringcast:resume-cores"
    );
    STALLED.store(true, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(60);
    while STALLED.load(Ordering::SeqCst) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    STALLED.store(false, Ordering::SeqCst);
}

/// Core `id`'s share of a global limit: `total` split as evenly as it goes
/// (the shares sum to `total`). A limit below the core count still lets
/// every core hold one connection.
fn share(total: usize, cores: usize, id: usize) -> usize {
    if total == 0 {
        return 0;
    }
    let cores = cores.max(1);
    (total / cores + usize::from(id < total % cores)).max(1)
}

/// What parsing one read led to, acted on once the buffer is released.
enum DataOutcome {
    Nothing,
    Fed(Fed),
    Head(HeadOutcome),
}

/// What feeding an open connection's bytes led to.
#[derive(Clone, Copy)]
struct Fed {
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

impl Fed {
    fn from_io(io: &ConnIo<'_, '_>, changed: Option<State>) -> Fed {
        Fed {
            changed,
            overflowed: io.overflowed,
            rate_limited: io.rate_limited,
            publish_limited: io.publish_limited,
            published: false,
            core_hook: io.core_hook,
        }
    }
}

/// The bytes one receive completion delivered: `len` bytes at `at` in
/// provided buffer `bid`.
#[derive(Clone, Copy)]
struct Chunk {
    bid: u16,
    at: usize,
    len: usize,
    /// The kernel keeps filling this buffer (incremental mode): not ours to
    /// give back yet.
    buffer_more: bool,
}
