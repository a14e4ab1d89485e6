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
use super::url::BrokerUrl;
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
        let node = self.url.nodes[0].clone();
        let auth: Vec<Vec<u8>> = match (&self.url.user, &self.url.password) {
            (Some(u), Some(p)) => vec![u.clone().into_bytes(), p.clone().into_bytes()],
            (None, Some(p)) => vec![p.clone().into_bytes()],
            _ => Vec::new(),
        };
        let seed = crate::hub::stream::process_nonce();
        let mut cmd_backoff = Backoff::new(seed);
        let mut sub_backoff = Backoff::new(seed ^ 1);
        let mut inbox: Vec<MeshMsg> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        let mut next_probe = Instant::now() + PROBE_PERIOD;
        let mut next_refresh = Instant::now() + PRESENCE_REFRESH;
        let mut was_connected = false;
        let mut logged_down = false;
        loop {
            if (self.stop)() {
                break;
            }
            let now = Instant::now();
            // Connect what is down and due.
            if self.engine.cmd.is_none() && now >= cmd_backoff.next {
                match Link::connect(&node, CONNECT_TIMEOUT) {
                    Ok(link) => {
                        cmd_backoff.succeeded();
                        self.engine.command_up(link, &auth, self.url.db);
                    }
                    Err(e) => {
                        if !logged_down {
                            warn!("broker: cannot reach Redis at {node}: {e}; publishes are refused until it is back");
                            logged_down = true;
                        }
                        cmd_backoff.failed(now);
                    }
                }
            }
            if self.engine.sub.is_none() && now >= sub_backoff.next {
                match Link::connect(&node, CONNECT_TIMEOUT) {
                    Ok(link) => {
                        sub_backoff.succeeded();
                        self.engine.subscriber_up(link, &auth);
                    }
                    Err(_) => sub_backoff.failed(now),
                }
            }
            let connected = self.engine.connected();
            if connected != was_connected {
                self.metrics.connected.store(connected, Ordering::Relaxed);
                if connected {
                    info!("broker: connected to Redis at {node}");
                    logged_down = false;
                }
                was_connected = connected;
            }

            // The cores' requests.
            let mut worked = self.mesh.retry_backlog();
            // (`announce_sleep` may have left messages in `inbox` too.)
            self.mesh.receive(&mut inbox);
            if !inbox.is_empty() {
                worked = true;
                let now = Instant::now();
                for msg in inbox.drain(..) {
                    self.engine.receive(msg, now);
                }
            }

            // Redis's replies. Reading stops while a core is far behind
            // (back-pressure: Redis buffers, and past its output limit it
            // drops the connection, which the stream read repairs).
            if !self.mesh.congested() {
                if let Some(sub) = &mut self.engine.sub {
                    match sub.read_replies(&mut replies, READ_MAX) {
                        Ok(n) => worked |= n > 0,
                        Err(e) => {
                            warn!("broker: subscriber connection lost: {e}");
                            replies.clear();
                            self.engine.subscriber_down();
                            sub_backoff.failed(Instant::now());
                        }
                    }
                    for r in replies.drain(..) {
                        if let Err(e) = self.engine.subscriber_reply(r) {
                            warn!("broker: {e}; reconnecting");
                            self.engine.subscriber_down();
                            sub_backoff.failed(Instant::now());
                            break;
                        }
                    }
                    replies.clear();
                }
            }
            if let Some(cmd) = &mut self.engine.cmd {
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
                    if let Err(e) = self.engine.command_reply(r, now) {
                        failed = Some(e);
                    }
                }
                replies.clear();
                if let Some(e) = failed {
                    warn!("broker: {e}; reconnecting");
                    self.engine.command_down();
                    cmd_backoff.failed(Instant::now());
                }
            }

            // Probes and idle channels.
            let now = Instant::now();
            if now >= next_probe {
                self.engine.probe(now);
                next_probe = now + PROBE_PERIOD;
            }
            if self
                .engine
                .sub_probe
                .is_some_and(|t| now >= t + PROBE_TIMEOUT)
            {
                warn!("broker: the subscriber connection did not answer a probe in {PROBE_TIMEOUT:?}; reconnecting");
                self.engine.subscriber_down();
                sub_backoff.failed(now);
            }
            if self
                .engine
                .oldest_publish()
                .is_some_and(|t| now >= t + PROBE_TIMEOUT)
            {
                warn!("broker: Redis did not answer in {PROBE_TIMEOUT:?}; reconnecting");
                self.engine.command_down();
                cmd_backoff.failed(now);
            }
            if now >= next_refresh {
                self.engine.refresh_presence();
                next_refresh = now + PRESENCE_REFRESH;
            }
            let idle_at = self.engine.expire_idle(now);
            self.engine.flush_subscriptions();

            // Writes, then answers to the cores.
            if let Some(Err(e)) = self.engine.cmd.as_mut().map(Link::flush) {
                warn!("broker: write to Redis failed: {e}; reconnecting");
                self.engine.command_down();
                cmd_backoff.failed(now);
            }
            if let Some(Err(e)) = self.engine.sub.as_mut().map(Link::flush) {
                warn!("broker: write to Redis failed: {e}; reconnecting");
                self.engine.subscriber_down();
                sub_backoff.failed(now);
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
            if self.engine.cmd.is_none() {
                deadline = deadline.min(cmd_backoff.next);
            }
            if self.engine.sub.is_none() {
                deadline = deadline.min(sub_backoff.next);
            }
            if let Some(t) = idle_at {
                deadline = deadline.min(t);
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
            for l in [&self.engine.cmd, &self.engine.sub].into_iter().flatten() {
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
