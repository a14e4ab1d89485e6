//! What a core shares with the main thread (and an embedding program): the
//! shutdown flags, every core's doorbell, every core's published counters.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::metrics;
use crate::hub::mesh::{self, Doorbells};

/// What the main thread and the cores share: the shutdown flag and each
/// core's doorbell. The flag is read once per loop pass (a read-shared cache
/// line); nothing else here is touched on the data path.
pub(crate) struct Control {
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
    /// When the server started: `/api/stats` reports uptime on this
    /// monotonic clock, so a reader's rates survive wall-clock steps.
    pub started: std::time::Instant,
    /// The broker engine's counters, when `--broker` is set: its
    /// connection state is part of readiness.
    pub broker: Option<Arc<crate::broker::BrokerMetrics>>,
    /// A reloaded TLS configuration, and its generation (bumped after the
    /// store): a core compares the generation (one relaxed load) before
    /// each TLS accept and takes the lock only when it changed. Never
    /// touched on the data path.
    pub tls_reloaded: std::sync::Mutex<Option<Arc<rustls::ServerConfig>>>,
    /// See `tls_reloaded`; 0 until the first reload.
    pub tls_generation: std::sync::atomic::AtomicU64,
}

impl Control {
    /// Hands every core a new TLS configuration for its next handshakes.
    pub(crate) fn reload_tls(&self, config: Arc<rustls::ServerConfig>) {
        if let Ok(mut slot) = self.tls_reloaded.lock() {
            *slot = Some(config);
        }
        self.tls_generation.fetch_add(1, Ordering::Release);
    }

    /// Control block for `cores` cores (one eventfd each for the
    /// doorbells).
    #[cfg(test)]
    pub(crate) fn new(cores: usize) -> io::Result<Arc<Control>> {
        Control::with_broker(cores, None)
    }

    /// Control block for `cores` cores and, with `broker`, one more
    /// doorbell (the broker thread's, last).
    pub(crate) fn with_broker(
        cores: usize,
        broker: Option<Arc<crate::broker::BrokerMetrics>>,
    ) -> io::Result<Arc<Control>> {
        let bells = cores + usize::from(broker.is_some());
        Ok(Arc::new(Control {
            shutdown: AtomicBool::new(false),
            restart: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            bells: mesh::doorbells(bells)?,
            broker,
            tls_reloaded: std::sync::Mutex::new(None),
            tls_generation: std::sync::atomic::AtomicU64::new(0),
            metrics: (0..cores)
                .map(|_| metrics::CoreMetrics::default())
                .collect(),
            started: std::time::Instant::now(),
        }))
    }

    /// Ready for traffic: every core listens and no drain has begun.
    pub(crate) fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
            && !self.shutdown.load(Ordering::Relaxed)
            && self
                .broker
                .as_ref()
                .is_none_or(|b| b.connected.load(Ordering::Relaxed))
            && self
                .metrics
                .iter()
                .all(|m| m.listening.load(Ordering::Relaxed))
    }

    /// Asks every core to shut down and wakes the ones that sleep.
    pub(crate) fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for bell in self.bells.iter() {
            bell.ring();
        }
    }
}
