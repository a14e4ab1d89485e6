//! The broker thread: one per node. It owns the node's Redis connections
//! (one subscriber, one pipelined command connection), takes the cores'
//! requests from its end of the mesh and sends answers and publications
//! back through it, all in one `poll` loop: no async runtime, no lock.
//!
//! Connections are re-established with full-jitter exponential backoff,
//! and probed with `PING` every second: a connection that owes a reply for
//! longer than the probe timeout is dropped, so a wedged socket is noticed
//! even when TCP says nothing.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::engine::{Engine, PRESENCE_REFRESH};
use super::link::Link;
use super::resp::Reply;
use super::topology;
use super::url::{BrokerUrl, Kind};
use super::BrokerMetrics;
use crate::hub::mesh::{Doorbells, Mesh};
use crate::hub::MeshMsg;

/// How often both connections are probed.
const PROBE_PERIOD: Duration = Duration::from_secs(1);
/// How long a probe or a publication may wait for its reply before the
/// connection is considered wedged.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// (A node has two connections, not thousands: a short cap costs Redis
/// little and gets publishing back within a second of Redis returning.)
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Connect timeout (the loop waits for it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes read per socket per pass, so one flood cannot starve the rest.
const READ_MAX: usize = 4 << 20;

struct Backoff {
    attempt: u32,
    next: Instant,
    seed: u64,
}

impl Backoff {
    fn new(seed: u64) -> Backoff {
        Backoff {
            attempt: 0,
            next: Instant::now(),
            seed,
        }
    }

    /// Full jitter: a uniform wait in [0, min(max, min·2^attempt)].
    fn failed(&mut self, now: Instant) {
        self.seed = crate::hub::stream::mix(self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
        let cap = BACKOFF_MIN
            .saturating_mul(1 << self.attempt.min(10))
            .min(BACKOFF_MAX);
        let wait = cap.mul_f64((self.seed >> 11) as f64 / (1u64 << 53) as f64);
        self.attempt += 1;
        self.next = now + wait.max(Duration::from_millis(10));
    }

    fn succeeded(&mut self) {
        self.attempt = 0;
    }
}

/// Everything the thread needs.
pub(crate) struct BrokerThread {
    /// Where Redis is.
    pub(crate) url: BrokerUrl,
    /// The engine.
    pub(crate) engine: Engine,
    /// The broker's end of the mesh.
    pub(crate) mesh: Mesh,
    /// Every core's doorbell, and the broker's own (last).
    pub(crate) bells: Doorbells,
    /// The broker's index in the mesh.
    pub(crate) me: usize,
    /// Shared counters.
    pub(crate) metrics: Arc<BrokerMetrics>,
    /// Whether the server shuts down.
    pub(crate) stop: Box<dyn Fn() -> bool + Send>,
}

/// The loop's own state: timers and each Redis node's reconnect backoff
/// (command, subscriber), by node index.
struct LoopState {
    auth: Vec<Vec<u8>>,
    cluster: bool,
    seed: u64,
    backoffs: Vec<[Backoff; 2]>,
    inbox: Vec<MeshMsg>,
    replies: Vec<Reply>,
    next_probe: Instant,
    next_refresh: Instant,
    /// When the cluster topology is (re)read; `None` while it is current.
    topology_due: Option<Instant>,
    topology_backoff: Backoff,
    was_connected: bool,
    logged_down: bool,
}

const CMD: usize = 0;
const SUB: usize = 1;

impl BrokerThread {
    /// Runs until shutdown.
    pub(crate) fn run(mut self) {
        let now = Instant::now();
        let seed = crate::hub::stream::process_nonce();
        let cluster = self.url.kind == Kind::Cluster;
        let mut st = LoopState {
            auth: match (&self.url.user, &self.url.password) {
                (Some(u), Some(p)) => vec![u.clone().into_bytes(), p.clone().into_bytes()],
                (None, Some(p)) => vec![p.clone().into_bytes()],
                _ => Vec::new(),
            },
            cluster,
            seed,
            backoffs: Vec::new(),
            inbox: Vec::new(),
            replies: Vec::new(),
            next_probe: now + PROBE_PERIOD,
            next_refresh: now + PRESENCE_REFRESH,
            // A cluster's topology is read before anything else, and again
            // when a reply says a slot moved or a master cannot be reached.
            topology_due: cluster.then_some(now),
            topology_backoff: Backoff::new(seed ^ 2),
            was_connected: false,
            logged_down: false,
        };
        while !(self.stop)() {
            self.topology(&mut st);
            self.connect(&mut st);
            let mut worked = self.requests(&mut st);
            worked |= self.replies(&mut st);
            let idle_at = self.timers(&mut st);
            worked |= self.flush(&mut st);
            if !worked {
                self.sleep(&mut st, idle_at);
            }
        }
        self.metrics.connected.store(false, Ordering::Relaxed);
        info!("broker thread stopped");
    }

    /// Reads the cluster topology when it is due.
    fn topology(&mut self, st: &mut LoopState) {
        let now = Instant::now();
        if st.cluster && self.engine.stale && st.topology_due.is_none() {
            st.topology_due = Some(now.max(st.topology_backoff.next));
        }
        if st.topology_due.is_some_and(|t| now >= t) {
            match topology::discover(&self.url.nodes, &st.auth, CONNECT_TIMEOUT) {
                Ok(t) => {
                    info!(
                        "broker: Redis Cluster with {} masters: {}",
                        t.nodes.len(),
                        t.nodes.join(", ")
                    );
                    self.engine.set_topology(t);
                    st.topology_backoff.succeeded();
                    st.topology_due = None;
                }
                Err(e) => {
                    warn!("broker: reading the Redis Cluster topology: {e}");
                    self.engine.stale = false;
                    st.topology_backoff.failed(now);
                    st.topology_due = Some(st.topology_backoff.next);
                }
            }
        }
        let n = self.engine.nodes.len();
        while st.backoffs.len() < n {
            let k = (st.backoffs.len() as u64) << 8;
            st.backoffs
                .push([Backoff::new(st.seed ^ k), Backoff::new(st.seed ^ k ^ 1)]);
        }
        st.backoffs.truncate(n);
    }

    /// Connects what is down and due.
    fn connect(&mut self, st: &mut LoopState) {
        let now = Instant::now();
        if st.topology_due.is_none() {
            for (i, backoff) in st.backoffs.iter_mut().enumerate() {
                let node = &self.engine.nodes[i];
                let cmd_due = node.cmd.is_none() && now >= backoff[CMD].next;
                let sub_due = node.sub.is_none() && now >= backoff[SUB].next;
                if !cmd_due && !sub_due {
                    continue;
                }
                let addr = node.addr.clone();
                if cmd_due {
                    match Link::connect(&addr, CONNECT_TIMEOUT) {
                        Ok(link) => {
                            backoff[CMD].succeeded();
                            self.engine.command_up(i, link, &st.auth, self.url.db);
                        }
                        Err(e) => {
                            if !st.logged_down {
                                warn!("broker: cannot reach Redis at {addr}: {e}; publishes are refused until it is back");
                                st.logged_down = true;
                            }
                            backoff[CMD].failed(now);
                            // A cluster master that is gone may have been
                            // replaced: read the topology again.
                            self.engine.stale |= st.cluster;
                        }
                    }
                }
                if sub_due {
                    match Link::connect(&addr, CONNECT_TIMEOUT) {
                        Ok(link) => {
                            backoff[SUB].succeeded();
                            self.engine.subscriber_up(i, link, &st.auth);
                        }
                        Err(_) => backoff[SUB].failed(now),
                    }
                }
            }
        }
        let connected = st.topology_due.is_none() && self.engine.connected();
        if connected != st.was_connected {
            self.metrics.connected.store(connected, Ordering::Relaxed);
            if connected {
                info!("broker: connected to Redis ({})", self.url);
                st.logged_down = false;
            }
            st.was_connected = connected;
        }
    }

    /// The cores' requests (`announce_sleep` may have left some in the
    /// inbox too).
    fn requests(&mut self, st: &mut LoopState) -> bool {
        let mut worked = self.mesh.retry_backlog();
        self.mesh.receive(&mut st.inbox);
        if !st.inbox.is_empty() {
            worked = true;
            let now = Instant::now();
            for msg in st.inbox.drain(..) {
                self.engine.receive(msg, now);
            }
        }
        worked
    }

    /// Redis's replies. Pub/sub is not read while a core is far behind
    /// (back-pressure: Redis buffers, and past its output limit it drops
    /// the connection, which the stream read repairs).
    fn replies(&mut self, st: &mut LoopState) -> bool {
        let mut worked = false;
        let replies = &mut st.replies;
        for (i, backoff) in st.backoffs.iter_mut().enumerate() {
            if !self.mesh.congested() {
                if let Some(sub) = &mut self.engine.nodes[i].sub {
                    let read = sub.read_replies(replies, READ_MAX);
                    worked |= !replies.is_empty();
                    let mut failed = read
                        .err()
                        .map(|e| format!("subscriber connection lost: {e}"));
                    for r in replies.drain(..) {
                        if failed.is_some() {
                            break;
                        }
                        if let Err(e) = self.engine.subscriber_reply(i, r) {
                            failed = Some(e);
                        }
                    }
                    replies.clear();
                    if let Some(e) = failed {
                        warn!("broker: {}: {e}; reconnecting", self.engine.nodes[i].addr);
                        self.engine.subscriber_down(i);
                        backoff[SUB].failed(Instant::now());
                    }
                }
            }
            if let Some(cmd) = &mut self.engine.nodes[i].cmd {
                let read = cmd.read_replies(replies, READ_MAX);
                worked |= !replies.is_empty();
                let now = Instant::now();
                let mut failed = read.err().map(|e| format!("command connection lost: {e}"));
                for r in replies.drain(..) {
                    if failed.is_some() {
                        break;
                    }
                    if let Err(e) = self.engine.command_reply(i, r, now) {
                        failed = Some(e);
                    }
                }
                replies.clear();
                if let Some(e) = failed {
                    warn!("broker: {}: {e}; reconnecting", self.engine.nodes[i].addr);
                    self.engine.command_down(i);
                    backoff[CMD].failed(Instant::now());
                }
            }
        }
        worked
    }

    /// Probes, wedged connections, presence refresh, idle channels.
    /// Returns when the next idle channel is due.
    fn timers(&mut self, st: &mut LoopState) -> Option<Instant> {
        let now = Instant::now();
        if now >= st.next_probe {
            self.engine.probe(now);
            st.next_probe = now + PROBE_PERIOD;
        }
        for (i, backoff) in st.backoffs.iter_mut().enumerate() {
            let node = &self.engine.nodes[i];
            if node.sub_probe.is_some_and(|t| now >= t + PROBE_TIMEOUT) {
                warn!("broker: {}: the subscriber connection did not answer a probe in {PROBE_TIMEOUT:?}; reconnecting", node.addr);
                self.engine.subscriber_down(i);
                backoff[SUB].failed(now);
            }
            if self
                .engine
                .oldest_publish(i)
                .is_some_and(|t| now >= t + PROBE_TIMEOUT)
            {
                warn!(
                    "broker: {}: Redis did not answer in {PROBE_TIMEOUT:?}; reconnecting",
                    self.engine.nodes[i].addr
                );
                self.engine.command_down(i);
                backoff[CMD].failed(now);
            }
        }
        if now >= st.next_refresh {
            self.engine.refresh_presence();
            st.next_refresh = now + PRESENCE_REFRESH;
        }
        let idle_at = self.engine.expire_idle(now);
        self.engine.flush_subscriptions();
        idle_at
    }

    /// Writes to Redis, then answers to the cores. Returns whether any
    /// answer went out.
    fn flush(&mut self, st: &mut LoopState) -> bool {
        let now = Instant::now();
        for (i, backoff) in st.backoffs.iter_mut().enumerate() {
            if let Some(Err(e)) = self.engine.nodes[i].cmd.as_mut().map(Link::flush) {
                warn!("broker: write to Redis failed: {e}; reconnecting");
                self.engine.command_down(i);
                backoff[CMD].failed(now);
            }
            if let Some(Err(e)) = self.engine.nodes[i].sub.as_mut().map(Link::flush) {
                warn!("broker: write to Redis failed: {e}; reconnecting");
                self.engine.subscriber_down(i);
                backoff[SUB].failed(now);
            }
        }
        let answered = !self.engine.out.is_empty();
        for (core, msg) in self.engine.out.drain(..) {
            self.mesh.send_to(core, msg);
        }
        self.mesh.ring_doorbells();
        answered
    }

    /// Sleeps until a socket, a core or a timer needs the thread.
    fn sleep(&mut self, st: &mut LoopState, idle_at: Option<Instant>) {
        if !self.mesh.announce_sleep(&mut st.inbox) {
            return;
        }
        let now = Instant::now();
        let mut deadline = st.next_probe.min(st.next_refresh);
        for (node, backoff) in self.engine.nodes.iter().zip(&st.backoffs) {
            if node.cmd.is_none() {
                deadline = deadline.min(backoff[CMD].next);
            }
            if node.sub.is_none() {
                deadline = deadline.min(backoff[SUB].next);
            }
        }
        if let Some(t) = idle_at.into_iter().chain(st.topology_due).min() {
            deadline = deadline.min(t);
        }
        if self.engine.stale {
            deadline = now;
        }
        if self.mesh.backlogged() {
            deadline = deadline.min(now + Duration::from_millis(1));
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        let bell = self.bells[self.me].fd().as_raw_fd();
        let mut fds = vec![libc::pollfd {
            fd: bell,
            events: libc::POLLIN,
            revents: 0,
        }];
        for node in &self.engine.nodes {
            for l in [&node.cmd, &node.sub].into_iter().flatten() {
                let mut events = libc::POLLIN;
                if l.wants_write() {
                    events |= libc::POLLOUT;
                }
                fds.push(libc::pollfd {
                    fd: l.fd(),
                    events,
                    revents: 0,
                });
            }
        }
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of pollfd for the call's duration.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if fds[0].revents != 0 {
            let mut n = 0u64;
            // SAFETY: reading 8 bytes from the broker's nonblocking eventfd
            // into a u64.
            unsafe { libc::read(bell, (&mut n as *mut u64).cast(), 8) };
        }
        self.mesh.woke();
    }
}
