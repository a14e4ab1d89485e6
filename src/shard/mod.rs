//! One core's share of the server: its listener, its connections, its ring,
//! its hub, and the loop that drives them.
//!
//! Each pass of the loop ([`Shard::turn`]):
//! 1. one `io_uring_enter` submits everything queued in the previous pass
//!    and runs the kernel's deferred completion work;
//! 2. every completion is handled: new connections ([`accept`]), received
//!    bytes ([`recv`]: parsed in place from the provided buffer, which goes
//!    straight back to the kernel; request heads in [`head`]), finished
//!    sends ([`send`]);
//! 3. messages from other cores and the fan-out of the pass's broadcasts
//!    and channel messages, local and remote ([`fanout`]);
//! 4. timers: deadlines, pings, idle limits ([`timers`]);
//! 5. every connection with new output gets one send covering all of it
//!    ([`send`]), and peers with new frames get their doorbell rung.
//!
//! With nothing to do, the loop sleeps in its own ring ([`Shard::park`]).
//! The phase files call down into [`lifecycle`] (abort, linger, release,
//! close, deadlines, the flush list) and never into each other in a
//! circle: `recv` → `head` → `query` → `lifecycle`; `accept`, `send`,
//! `timers`, `fanout` → `lifecycle`.
//!
//! The loop is a glommio task; `Shard` is `!Send` (it holds `Rc`s), so
//! nothing here can leak to another core.

mod accept;
pub(crate) mod control;
mod failpoints;
mod fanout;
mod gauges;
mod head;
pub(crate) mod inject;
mod lifecycle;
pub(crate) mod metrics;
mod offload;
mod profile;
mod query;
mod recv;
mod send;
pub(crate) mod slab;
pub(crate) mod stats;
mod timers;
pub(crate) mod wheel;

use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::cqueue;
use tracing::{info, warn};

use crate::app::requests::Access;
use crate::app::{CoreHook, Env, Policy};
use crate::conn::outq::{FreeList, MAX_IOV};
use crate::conn::{ConnKey, FrameCache};
use crate::hub::mesh::{self, Mesh};
use crate::hub::options::ChannelRules;
use crate::hub::stream::StreamLimits;
use crate::hub::MeshMsg;
use crate::io::ring::Ring;
use crate::ws::deflate::{Deflater, Inflater};
use crate::ws::Limits;
pub(crate) use control::Control;
use slab::{token, untoken, Op, SendMsg, Slab};
pub(crate) use stats::Stats;
use wheel::TimerWheel;

/// Settings every core shares (read-only).
#[derive(Clone)]
pub struct ShardConfig {
    /// Where every core's listener binds (`SO_REUSEPORT`).
    pub listen: std::net::SocketAddr,
    /// The listen backlog.
    pub backlog: i32,
    /// Largest request head (431 beyond).
    pub max_header_bytes: usize,
    /// Message and fragment limits of every session.
    pub limits: Limits,
    /// Per-connection backlog bound (memory, not payload).
    pub max_send_queue_bytes: usize,
    /// permessage-deflate settings; `None`: offers are declined.
    pub compression: Option<Compression>,
    /// How long a client has for its upgrade request.
    pub handshake_timeout: Duration,
    /// How long a close handshake or a linger may take.
    pub close_timeout: Duration,
    /// How long shutdown waits for close handshakes.
    pub shutdown_grace: Duration,
    /// Provided receive buffers per core, and their size.
    pub recv_buffers: u16,
    /// Size of each receive buffer.
    pub recv_buffer_size: usize,
    /// Limits and heartbeat settings applied per connection.
    pub policy: Policy,
    /// Close connections that sent no message for this long.
    pub idle_timeout: Option<Duration>,
    /// `--max-connections` over all cores (0: no limit).
    pub max_connections: usize,
    /// Number of cores (for interest announcements).
    pub cores: usize,
    /// TLS: the configuration every core copies, and where it is served.
    pub tls: Option<TlsSetup>,
    /// Who may upgrade and who may use the API.
    pub access: Access,
    /// Largest API request body.
    pub max_body_bytes: usize,
    /// Channel options by pattern.
    pub channels: ChannelRules,
    /// The in-memory engine's limits.
    pub stream_limits: StreamLimits,
    /// This process's random base for epochs and client ids.
    pub nonce: u64,
    /// A broker engine (Redis) owns every channel: it is the mesh's last
    /// peer, index `cores`.
    pub broker: bool,
}

/// What TLS serves and where.
#[derive(Clone)]
pub struct TlsSetup {
    /// Certificate, key, versions, ALPN (each core takes its own copy,
    /// with its own session cache).
    pub config: Arc<rustls::ServerConfig>,
    /// `--tls-listen`: TLS here, `listen` stays plain. `None`: `listen`
    /// serves TLS.
    pub listen: Option<std::net::SocketAddr>,
    /// `--ktls`: what the kernel was found to offload (`None`: not asked).
    pub ktls: Option<crate::tls::ktls::Support>,
}

/// How messages are compressed for clients that negotiated
/// permessage-deflate.
#[derive(Clone, Copy, Debug)]
pub struct Compression {
    /// zlib level, 1-9.
    pub level: u32,
    /// Shorter messages go plain.
    pub min_bytes: usize,
}

/// One core's state. Owned by its loop task.
pub(crate) struct Shard {
    id: usize,
    /// The ring, with the provided receive buffers it owns.
    ring: Ring,
    accept: accept::Acceptor,
    conns: Slab,
    /// What the handlers reach: hub, channels, counters, buffers.
    env: Env,
    /// Inflates every compressed message this core receives (beside `env`
    /// so a session can inflate into it while its handler holds `env`).
    inflater: Inflater,
    /// Recovery replays' frames, so each is compressed once per core.
    replays: FrameCache,
    mesh: Option<Mesh>,
    /// Messages from other cores, read this pass.
    mesh_in: Vec<MeshMsg>,
    /// Open WebSocket connections, and this core's share of
    /// `--max-connections` (0: no limit).
    open_ws: usize,
    max_open: usize,
    /// `/api/channels` requests waiting for other cores' answers.
    queries: query::Queries,
    /// `GET /debug/pprof/profile` requests waiting for their report.
    waiting_profiles: Vec<profile::Waiting>,
    /// `X-Ringcast-Core: N`, sent with every 101: which core holds the
    /// connection (operators correlating per-core metrics, and tests that
    /// need clients on different cores).
    core_header: String,
    /// The core's clock: `now` is read once per pass; `env.now_us` is it in
    /// microseconds since `epoch`.
    epoch: Instant,
    now: Instant,
    /// When the gauges were last refreshed.
    gauges_at: Instant,
    /// When the send-buffer pool is next trimmed of buffers it did not need.
    pool_trim_at: Instant,
    /// Free `sendmsg` headers (~1 KiB each). Boxed on purpose: a header
    /// moves between this list and a connection, and its address must not
    /// change while the kernel reads it. Trimmed with the buffer pool, so a
    /// fan-out to 100k subscribers does not pin 100k headers.
    sendmsgs: FreeList<Box<SendMsg>>,
    /// Where a flush gathers a connection's iovecs before knowing whether
    /// it needs a `sendmsg` header at all.
    iov: Box<[libc::iovec; MAX_IOV]>,
    /// Connections with output to flush this pass.
    dirty: Vec<ConnKey>,
    /// Connections whose multishot receive ended and wants re-arming.
    rearm: Vec<ConnKey>,
    /// Connections over their backlog bound, closed with 1008 this pass.
    overflow: Vec<ConnKey>,
    /// A peer core is congested (its backlog is past the pause mark).
    congested: bool,
    /// Connections whose receive was cancelled while congested: they
    /// published cross-core traffic; re-armed when the backlog drains.
    paused: Vec<ConnKey>,
    /// Test hook asked for by a client this pass (failpoints only).
    core_hook: CoreHook,
    /// Buffers went back to the ring this pass: publish them.
    recycled: bool,
    wheel: TimerWheel<ConnKey>,
    /// Scratch list of due timer entries.
    due: Vec<(u64, ConnKey)>,
    cfg: Rc<ShardConfig>,
    control: Arc<Control>,
    stats: Stats,
    /// Shutdown: when the close handshakes must be done.
    drain_deadline: Option<Instant>,
    /// Shutdown: set once stragglers were aborted at the deadline; the loop
    /// ends when their descriptors are closed or at this instant.
    drain_cutoff: Option<Instant>,
    /// Channel messages from threads outside the cores (the `Publisher`).
    inbox: inject::Inbox,
    /// `/ws` connections opened on this core so far: the next one's client
    /// number.
    clients: u64,
    /// This core's TLS configuration (its own session cache); replaced
    /// when the certificate is reloaded, so new handshakes use the new one
    /// and established connections keep theirs.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Where a TLS connection's decrypted bytes are gathered for parsing.
    tls_plain: Vec<u8>,
    /// The reload generation `tls` came from (`Control::tls_generation`).
    tls_generation: u64,
}

/// Token for the listener's multishot accept and the doorbell's poll.
const CORE: ConnKey = ConnKey {
    idx: u32::MAX,
    gen: 0,
};
/// How soon a core with frames waiting for room in a peer's ring retries.
const MESH_RETRY: Duration = Duration::from_micros(200);
/// How often the gauges that need a walk over all connections (send-queue
/// bytes, suspects) are refreshed.
const GAUGE_PERIOD: Duration = Duration::from_secs(1);
/// How long a pooled send buffer may sit unused before it is freed.
const POOL_TRIM_PERIOD: Duration = Duration::from_secs(1);

impl Shard {
    /// Sets up this core: ring, buffers, listener, mesh. Runs on the core's
    /// own thread (the ring is single-issuer).
    pub(crate) async fn start(
        id: usize,
        cfg: Rc<ShardConfig>,
        control: Arc<Control>,
        links: Option<mesh::Links>,
        inbox: inject::Inbox,
    ) -> io::Result<Shard> {
        let mut ring = Ring::new(4096)?;
        ring.provide_buffers(0, cfg.recv_buffers, cfg.recv_buffer_size)?;
        let mut listeners = Vec::with_capacity(2);
        let plain = crate::io::listener::bind_reuseport(cfg.listen, cfg.backlog)?;
        match &cfg.tls {
            Some(t) => match t.listen {
                Some(addr) => {
                    listeners.push((plain, false));
                    let tls = crate::io::listener::bind_reuseport(addr, cfg.backlog)?;
                    listeners.push((tls, true));
                }
                None => listeners.push((plain, true)),
            },
            None => listeners.push((plain, false)),
        }
        let mesh = links.map(|l| {
            let mut m = Mesh::new(l, control.bells.clone());
            m.broadcast_to(cfg.cores);
            m
        });
        let now = Instant::now();
        let mut shard = Shard {
            id,
            ring,
            accept: accept::Acceptor::new(listeners),
            tls: cfg
                .tls
                .as_ref()
                .map(|t| crate::tls::config::per_core(&t.config, t.ktls.is_some())),
            tls_plain: Vec::new(),
            tls_generation: 0,
            conns: Slab::default(),
            inflater: Inflater::new(),
            replays: FrameCache::default(),
            env: Env::with_channels(
                id,
                cfg.cores,
                cfg.policy.clone(),
                Rc::new(cfg.channels.clone()),
                cfg.stream_limits.clone(),
                cfg.nonce,
            ),
            clients: 0,
            mesh,
            mesh_in: Vec::new(),
            open_ws: 0,
            max_open: share(cfg.max_connections, cfg.cores, id),
            queries: query::Queries::default(),
            waiting_profiles: Vec::new(),
            core_header: format!("X-Ringcast-Core: {id}\r\n"),
            epoch: now,
            now,
            gauges_at: now,
            pool_trim_at: now + POOL_TRIM_PERIOD,
            sendmsgs: FreeList::default(),
            iov: Box::new(
                [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_IOV],
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
            drain_deadline: None,
            drain_cutoff: None,
            inbox,
        };
        if shard.cfg.broker {
            shard.env.channels.use_broker(shard.cfg.cores);
        }
        if let Some(c) = shard.cfg.compression {
            shard.env.deflater = Deflater::new(c.level, c.min_bytes);
        }
        shard
            .ring
            .arm_wake_poll(shard.control.bells[id].fd(), token(Op::Wake, CORE))?;
        shard.arm_accept()?;
        shard.control.metrics[id]
            .listening
            .store(true, Ordering::Relaxed);
        Ok(shard)
    }

    /// Runs the loop until shutdown completes; returns the core's counters.
    pub(crate) async fn run(mut self) -> io::Result<Stats> {
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
        self.stats.msg = self.env.stats;
        self.stats.deflate = self.env.deflater.stats.plus(&self.inflater.stats);
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
        self.env.now_us = self.now.saturating_duration_since(self.epoch).as_micros() as u64;
        if self.control.shutdown.load(Ordering::Relaxed) && self.drain_deadline.is_none() {
            self.begin_drain();
            worked = true;
        }
        self.check_congestion();
        while let Some(cqe) = self.ring.next_completion() {
            worked = true;
            self.dispatch(cqe);
        }
        self.run_core_hook();
        if let Some(m) = &mut self.mesh {
            worked |= m.retry_backlog();
            m.receive(&mut self.mesh_in);
        }
        worked |= self.take_injected();
        if !self.mesh_in.is_empty()
            || self.env.channels.outgoing_len() > 0
            || !self.env.streams.out.is_empty()
        {
            worked = true;
            self.handle_mesh_messages();
        }
        self.sweep_history();
        if self.env.hub.has_pending() || self.env.channels.has_pending() {
            worked = true;
            self.fan_out();
        }
        // Timers before the flush: a ping or a timeout's close frame leaves
        // in the pass that queued it, not a pass (or a sleep) later.
        self.timers();
        self.env.channels.end_pass();
        // Leaves and withdrawals from this pass's closes; what is for this
        // core is handled next pass (the loop does not sleep on it).
        self.route_outgoing();
        worked |= !self.mesh_in.is_empty();
        self.close_overflowed();
        if self.recycled {
            if let Some(bufs) = self.ring.buffers() {
                bufs.publish();
            }
            self.recycled = false;
        }
        self.rearm_recvs();
        self.publish_metrics();
        // Wake the peers this pass pushed to before our own sends: they
        // fan out in parallel with this core's flush instead of after it
        // (with an owner core between publisher and subscribers, that is
        // the hop's latency).
        if let Some(m) = &mut self.mesh {
            m.ring_doorbells();
        }
        self.flush()?;
        self.stall_if_asked()?;
        Ok(worked)
    }

    fn dispatch(&mut self, cqe: cqueue::Entry) {
        match untoken(cqe.user_data()) {
            (Some(Op::Recv), _) => self.on_recv(cqe),
            (Some(Op::Send), key) => self.on_send(key, cqe.result()),
            (Some(Op::Accept), which) => self.on_accept(which, cqe.result(), cqe.flags()),
            // The multishot poll ended (rare): poll again.
            (Some(Op::Wake), _) if !cqueue::more(cqe.flags()) => {
                let bell = self.control.bells[self.id].fd();
                if let Err(e) = self.ring.arm_wake_poll(bell, token(Op::Wake, CORE)) {
                    warn!(core = self.id, "re-arming the wake-up poll: {e}");
                }
            }
            _ => {}
        }
    }

    /// Whether shutdown has finished on this core.
    fn finished(&self) -> bool {
        self.drain_deadline.is_some()
            && ((self.conns.is_empty() && !self.accept.armed())
                || self.drain_cutoff.is_some_and(|c| Instant::now() >= c))
    }

    /// Sleeps until the ring has work, another core rings our doorbell, or
    /// a timer is due: one blocking `io_uring_enter` on our own ring, which
    /// also submits whatever this pass queued. The core's loop is the only
    /// task on its executor, so blocking the thread here starves nothing.
    /// A shutdown request needs no check here: it rings the doorbell after
    /// raising the flag, and a write the poll has not reported yet makes the
    /// wait return at once. Nor do messages queued by other threads (see
    /// [`inject`]): the core announces its sleep and looks at its queue
    /// once more, and a sender that finds the announcement rings.
    fn park(&mut self) -> io::Result<()> {
        if !self.mesh_in.is_empty() {
            return Ok(());
        }
        if let Some(m) = &mut self.mesh {
            if !m.announce_sleep(&mut self.mesh_in) {
                return Ok(());
            }
        }
        if !self.inbox.may_sleep() {
            if let Some(m) = &self.mesh {
                m.woke();
            }
            return Ok(());
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
            (!self.env.pool.is_empty() || !self.sendmsgs.is_empty() || !self.replays.is_empty())
                .then_some(self.pool_trim_at);
        let next_timer = [
            self.wheel.next_wake(),
            self.accept.retry_at,
            self.drain_cutoff.or(self.drain_deadline),
            backlog_retry,
            gauges,
            pool_trim,
            self.env
                .streams
                .next_expiry_us()
                .map(|us| self.epoch + Duration::from_micros(us)),
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
        self.inbox.woke();
        r
    }
}

impl Shard {
    /// Drops history past its age once its oldest entry is due.
    fn sweep_history(&mut self) {
        let now = self.env.now_us;
        if self.env.streams.next_expiry_us().is_some_and(|t| t <= now) {
            self.env.streams.sweep(now);
        }
    }
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
