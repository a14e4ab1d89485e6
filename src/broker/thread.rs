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

impl BrokerThread {
    /// Runs until shutdown.
    pub(crate) fn run(mut self) {
        let auth: Vec<Vec<u8>> = match (&self.url.user, &self.url.password) {
            (Some(u), Some(p)) => vec![u.clone().into_bytes(), p.clone().into_bytes()],
            (None, Some(p)) => vec![p.clone().into_bytes()],
            _ => Vec::new(),
        };
        let cluster = self.url.kind == Kind::Cluster;
        let seed = crate::hub::stream::process_nonce();
        let mut backoffs: Vec<(Backoff, Backoff)> = Vec::new();
        let mut inbox: Vec<MeshMsg> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        let mut next_probe = Instant::now() + PROBE_PERIOD;
        let mut next_refresh = Instant::now() + PRESENCE_REFRESH;
        // A cluster's topology is read before anything else, and again
        // when a reply says a slot moved or a master cannot be reached.
        let mut topology_due = cluster.then(Instant::now);
        let mut topology_backoff = Backoff::new(seed ^ 2);
        let mut was_connected = false;
        let mut logged_down = false;
        loop {
            if (self.stop)() {
                break;
            }
            let now = Instant::now();
            if cluster && self.engine.stale && topology_due.is_none() {
                topology_due = Some(now.max(topology_backoff.next));
            }
            if topology_due.is_some_and(|t| now >= t) {
                match topology::discover(&self.url.nodes, &auth, CONNECT_TIMEOUT) {
                    Ok(t) => {
                        info!(
                            "broker: Redis Cluster with {} masters: {}",
                            t.nodes.len(),
                            t.nodes.join(", ")
                        );
                        self.engine.set_topology(t);
                        topology_backoff.succeeded();
                        topology_due = None;
                    }
                    Err(e) => {
                        warn!("broker: reading the Redis Cluster topology: {e}");
                        self.engine.stale = false;
                        topology_backoff.failed(now);
                        topology_due = Some(topology_backoff.next);
                    }
                }
            }
            while backoffs.len() < self.engine.nodes.len() {
                let k = backoffs.len() as u64;
                backoffs.push((
                    Backoff::new(seed ^ (k << 8)),
                    Backoff::new(seed ^ (k << 8) ^ 1),
                ));
            }
            backoffs.truncate(self.engine.nodes.len());
            let ready = topology_due.is_none();
            // Connect what is down and due.
            for i in 0..self.engine.nodes.len() {
                if !ready {
                    break;
                }
                let addr = self.engine.nodes[i].addr.clone();
                if self.engine.nodes[i].cmd.is_none() && now >= backoffs[i].0.next {
                    match Link::connect(&addr, CONNECT_TIMEOUT) {
                        Ok(link) => {
                            backoffs[i].0.succeeded();
                            self.engine.command_up(i, link, &auth, self.url.db);
                        }
                        Err(e) => {
                            if !logged_down {
                                warn!("broker: cannot reach Redis at {addr}: {e}; publishes are refused until it is back");
                                logged_down = true;
                            }
                            backoffs[i].0.failed(now);
                            // A cluster master that is gone may have been
                            // replaced: read the topology again.
                            self.engine.stale |= cluster;
                        }
                    }
                }
                if self.engine.nodes[i].sub.is_none() && now >= backoffs[i].1.next {
                    match Link::connect(&addr, CONNECT_TIMEOUT) {
                        Ok(link) => {
                            backoffs[i].1.succeeded();
                            self.engine.subscriber_up(i, link, &auth);
                        }
                        Err(_) => backoffs[i].1.failed(now),
                    }
                }
            }
            let connected = ready && self.engine.connected();
            if connected != was_connected {
                self.metrics.connected.store(connected, Ordering::Relaxed);
                if connected {
                    info!("broker: connected to Redis ({})", self.url);
                    logged_down = false;
                }
                was_connected = connected;
            }

            // The cores' requests (`announce_sleep` may have left some in
            // `inbox` too).
            let mut worked = self.mesh.retry_backlog();
            self.mesh.receive(&mut inbox);
            if !inbox.is_empty() {
                worked = true;
                let now = Instant::now();
                for msg in inbox.drain(..) {
                    self.engine.receive(msg, now);
                }
            }

            // Redis's replies. Reading pub/sub stops while a core is far
            // behind (back-pressure: Redis buffers, and past its output
            // limit it drops the connection, which the stream read repairs).
            for i in 0..self.engine.nodes.len() {
                if !self.mesh.congested() {
                    if let Some(sub) = &mut self.engine.nodes[i].sub {
                        if let Err(e) = sub.read_replies(&mut replies, READ_MAX) {
                            warn!(
                                "broker: subscriber connection to {} lost: {e}",
                                self.engine.nodes[i].addr
                            );
                            replies.clear();
                            self.engine.subscriber_down(i);
                            backoffs[i].1.failed(Instant::now());
                        }
                        worked |= !replies.is_empty();
                        for r in replies.drain(..) {
                            if let Err(e) = self.engine.subscriber_reply(i, r) {
                                warn!("broker: {e}; reconnecting");
                                self.engine.subscriber_down(i);
                                backoffs[i].1.failed(Instant::now());
                                break;
                            }
                        }
                        replies.clear();
                    }
                }
                if let Some(cmd) = &mut self.engine.nodes[i].cmd {
                    let result = cmd.read_replies(&mut replies, READ_MAX);
                    worked |= !replies.is_empty();
                    let now = Instant::now();
                    let mut failed = result
                        .err()
                        .map(|e| format!("command connection lost: {e}"));
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
                        warn!("broker: {} {e}; reconnecting", self.engine.nodes[i].addr);
                        self.engine.command_down(i);
                        backoffs[i].0.failed(Instant::now());
                    }
                }
            }

            // Probes, presence and idle channels.
            let now = Instant::now();
            if now >= next_probe {
                self.engine.probe(now);
                next_probe = now + PROBE_PERIOD;
            }
            for i in 0..self.engine.nodes.len() {
                if self.engine.nodes[i]
                    .sub_probe
                    .is_some_and(|t| now >= t + PROBE_TIMEOUT)
                {
                    warn!("broker: the subscriber connection did not answer a probe in {PROBE_TIMEOUT:?}; reconnecting");
                    self.engine.subscriber_down(i);
                    backoffs[i].1.failed(now);
                }
                if self
                    .engine
                    .oldest_publish(i)
                    .is_some_and(|t| now >= t + PROBE_TIMEOUT)
                {
                    warn!("broker: Redis did not answer in {PROBE_TIMEOUT:?}; reconnecting");
                    self.engine.command_down(i);
                    backoffs[i].0.failed(now);
                }
            }
            if now >= next_refresh {
                self.engine.refresh_presence();
                next_refresh = now + PRESENCE_REFRESH;
            }
            let idle_at = self.engine.expire_idle(now);
            self.engine.flush_subscriptions();

            // Writes, then answers to the cores.
            for i in 0..self.engine.nodes.len() {
                if let Some(Err(e)) = self.engine.nodes[i].cmd.as_mut().map(Link::flush) {
                    warn!("broker: write to Redis failed: {e}; reconnecting");
                    self.engine.command_down(i);
                    backoffs[i].0.failed(now);
                }
                if let Some(Err(e)) = self.engine.nodes[i].sub.as_mut().map(Link::flush) {
                    warn!("broker: write to Redis failed: {e}; reconnecting");
                    self.engine.subscriber_down(i);
                    backoffs[i].1.failed(now);
                }
            }
            for (core, msg) in self.engine.out.drain(..) {
                worked = true;
                self.mesh.send_to(core, msg);
            }
            self.mesh.ring_doorbells();
            if worked {
                continue;
            }

            // Sleep until a socket, a core or a timer needs us.
            if !self.mesh.announce_sleep(&mut inbox) {
                continue;
            }
            let mut deadline = next_probe.min(next_refresh);
            for (i, node) in self.engine.nodes.iter().enumerate() {
                if node.cmd.is_none() {
                    deadline = deadline.min(backoffs[i].0.next);
                }
                if node.sub.is_none() {
                    deadline = deadline.min(backoffs[i].1.next);
                }
            }
            if let Some(t) = idle_at.into_iter().chain(topology_due).min() {
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
        self.metrics.connected.store(false, Ordering::Relaxed);
        info!("broker thread stopped");
    }
}
