//! The library face of the server: start it from a [`Config`] inside any
//! program, publish into it from any thread, stop it gracefully.
//!
//! [`Server::start`] does what the binary does up to "every core listens"
//! and returns; the cores run on their own pinned threads until
//! [`Server::shutdown`] (or a [`ShutdownHandle`], or a failed core). It
//! installs no signal handler: what a signal means is the embedding
//! program's business (the binary's is in [`crate::runtime::run`]).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use tracing::{error, info, warn};

use super::publisher::Publisher;
use super::{limits, warn_if_open, ExitReport, GLOMMIO_IO_MEMORY};
use crate::config::Config;
use crate::hub::mesh;
use crate::shard::{inject, Control, Shard, Stats};

/// A running server: one pinned executor per core, each with its own
/// listener on [`Server::local_addr`].
///
/// Dropping it shuts it down (close frames, then waits for the cores), so
/// no server outlives its owner by accident; [`Server::shutdown`] does the
/// same and returns the cores' counters.
pub struct Server {
    addr: SocketAddr,
    /// Where TLS is served: `addr` itself, `--tls-listen`, or nowhere.
    tls_addr: Option<SocketAddr>,
    tls_files: Option<crate::tls::TlsFiles>,
    cores: usize,
    control: Arc<Control>,
    publisher: Publisher,
    /// Watches the cores and joins them; its result is the server's.
    supervisor: Option<JoinHandle<Result<Vec<Stats>, String>>>,
}

/// Asks a [`Server`] to stop, from any thread (a signal handler's thread,
/// an admin endpoint of the embedding program): `Send + Sync + Clone`,
/// and it outlives the server harmlessly.
#[derive(Clone)]
pub struct ShutdownHandle {
    control: Arc<Control>,
    /// The certificate and key files, re-read by [`ShutdownHandle::reload_tls`].
    tls_files: Option<crate::tls::TlsFiles>,
}

impl ShutdownHandle {
    /// Re-reads the TLS certificate and key (what SIGHUP does): new
    /// handshakes on every core use them, established connections keep
    /// the certificate they were opened with. `Ok(false)` when TLS is not
    /// configured; an error (the old certificate stays) names the file and
    /// the problem.
    pub fn reload_tls(&self) -> Result<bool, String> {
        let Some(files) = &self.tls_files else {
            return Ok(false);
        };
        let config = crate::tls::config::load(files)?;
        self.control.reload_tls(config);
        Ok(true)
    }

    /// Withdraws readiness: `/readyz` answers 503 from now on, so a load
    /// balancer stops sending new clients, while every open connection is
    /// still served. Follow it with [`ShutdownHandle::shutdown`].
    pub fn drain(&self) {
        self.control.draining.store(true, Ordering::SeqCst);
    }

    /// Asks every core to stop: no new connections, every open one is
    /// closed with 1001 (going away), waiting for the close handshakes up
    /// to `--shutdown-grace`. Returns at once; [`Server::wait`] returns
    /// when the cores are done. Asking twice is harmless.
    pub fn shutdown(&self) {
        self.control.request_shutdown();
    }

    /// Whether a shutdown was asked for (by anyone, or by a failed core).
    pub fn is_shutting_down(&self) -> bool {
        self.control.shutdown.load(Ordering::SeqCst)
    }
}

impl Server {
    /// Starts one executor per CPU of `cfg` (`--cores`/`--cpus`), binds
    /// every core's listener to `cfg.listen` (port 0: one free port chosen
    /// for all), and returns once every core accepts connections, or with
    /// the first core's start-up error after stopping the others.
    pub fn start(cfg: &Config) -> Result<Server, String> {
        let cpus = cfg.cpu_set()?;
        let n = cpus.len();
        if n > crate::hub::MAX_CORES {
            return Err(format!(
                "{n} cores requested; at most {} are supported (use --cores or --cpus)",
                crate::hub::MAX_CORES
            ));
        }
        limits::raise_nofile();
        let mut shard_cfg = cfg.shard_config();
        shard_cfg.cores = n;
        let tls_files = cfg.tls_files()?;
        let tls_config = tls_files
            .as_ref()
            .map(crate::tls::config::load)
            .transpose()?;
        // Port 0: pick one port for all cores. The placeholder holds it
        // (bound, never listening, so it receives nothing) until every core
        // has bound.
        let placeholder = if cfg.listen.port() == 0 {
            let p = crate::io::listener::reserve_port(cfg.listen)
                .map_err(|e| format!("reserving a port: {e}"))?;
            shard_cfg.listen = p.1;
            Some(p.0)
        } else {
            None
        };
        let listen = shard_cfg.listen;
        // --tls-listen with port 0: likewise, one port for all cores.
        let tls_placeholder = match cfg.tls_listen {
            Some(addr) if addr.port() == 0 => {
                let p = crate::io::listener::reserve_port(addr)
                    .map_err(|e| format!("reserving a port for --tls-listen: {e}"))?;
                Some(p)
            }
            _ => None,
        };
        let tls_listen = tls_placeholder.as_ref().map(|p| p.1).or(cfg.tls_listen);
        // kTLS: what the kernel offloads, found once for every core.
        let ktls = (cfg.ktls && tls_config.is_some()).then(|| {
            let support = crate::tls::ktls::probe();
            match &support {
                crate::tls::ktls::Support::Available(_) => info!("{}", support.describe()),
                crate::tls::ktls::Support::Unavailable(_) => warn!("{}", support.describe()),
            }
            support
        });
        shard_cfg.tls = tls_config.clone().map(|config| crate::shard::TlsSetup {
            config,
            listen: tls_listen,
            ktls: ktls.clone(),
        });
        let tls_placeholder = tls_placeholder.map(|p| p.0);
        let broker_url = cfg.broker_url()?;
        let broker_metrics = broker_url
            .as_ref()
            .map(|_| Arc::new(crate::broker::BrokerMetrics::default()));
        let control = Control::with_broker(n, broker_metrics.clone())
            .map_err(|e| format!("creating the cores' doorbells: {e}"))?;
        // The broker engine is the mesh's last peer.
        let peers = n + usize::from(broker_url.is_some());
        let mut links: Vec<Option<mesh::Links>> = if peers > 1 {
            mesh::build(peers).into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        if let (Some(url), Some(metrics)) = (broker_url, broker_metrics) {
            let broker_links = links.pop().flatten().expect("the broker's links");
            spawn_broker(cfg, &shard_cfg, url, metrics, broker_links, &control)?;
        }
        let (inlets, inboxes): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| inject::inlet(Publisher::QUEUE_CAPACITY))
            .unzip();
        let publisher = Publisher::new(control.clone(), inlets, cfg.max_message_bytes);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        // Every core reports here when its loop ends, however it ends (a
        // drop guard reports a panic too), so the supervisor learns of a
        // failed core at once rather than when it gets round to joining it.
        let (exit_tx, exit_rx) = mpsc::channel::<(usize, Result<Stats, String>)>();

        let mut handles = Vec::with_capacity(n);
        let mut spawn_error = None;
        for ((i, &cpu), inbox) in cpus.iter().enumerate().zip(inboxes) {
            let shard_cfg = shard_cfg.clone();
            let control = control.clone();
            let mesh = links[i].take();
            let ready = ready_tx.clone();
            let exit = ExitReport::new(i, exit_tx.clone());
            let spawned = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("ringcast-{i}"))
                .io_memory(GLOMMIO_IO_MEMORY)
                .spawn(move || async move {
                    let mut exit = exit;
                    let started = Shard::start(i, Rc::new(shard_cfg), control, mesh, inbox).await;
                    let shard = match started {
                        Ok(s) => {
                            let _ = ready.send(Ok(()));
                            s
                        }
                        Err(e) => {
                            let msg = format!("core {i} (CPU {cpu}): {e}");
                            let _ = ready.send(Err(msg.clone()));
                            exit.send(Err(msg));
                            return;
                        }
                    };
                    let r = shard.run().await.map_err(|e| format!("core {i}: {e}"));
                    exit.send(r);
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // The cores already started must not be left running.
                    spawn_error = Some(format!("starting executor on CPU {cpu}: {e}"));
                    break;
                }
            }
        }
        drop(ready_tx);
        drop(exit_tx);

        let mut startup_error = spawn_error;
        for _ in 0..handles.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    startup_error.get_or_insert(e);
                }
                Err(_) => {
                    startup_error.get_or_insert("an executor exited during start-up".into());
                }
            }
        }
        drop(placeholder);
        drop(tls_placeholder);
        if let Some(e) = startup_error {
            error!("{e}");
            control.request_shutdown();
            // The cores' own errors are logged there; the first one is ours.
            let _ = supervise(&control, exit_rx, handles, Some(e.clone()));
            return Err(e);
        }
        if let (Some(files), Some(addr)) = (
            &tls_files,
            tls_listen.or(tls_config.as_ref().map(|_| listen)),
        ) {
            info!(
                "TLS on {addr} (wss://, https://): TLS 1.3/1.2, ALPN http/1.1, certificate {}; SIGHUP reloads it",
                files.cert.display()
            );
        }
        info!(
            "ringcast listening on ws://{} (pid {}) with {} core(s) on CPUs {:?}; max message {} B, max header {} B, \
             send queue bound {} B per connection, {} recv buffers x {} B per core, handshake timeout {}s, \
             shutdown grace {}s",
            listen,
            std::process::id(),
            n,
            cpus,
            cfg.max_message_bytes,
            cfg.max_header_bytes,
            cfg.max_send_queue_bytes,
            cfg.recv_buffers.next_power_of_two(),
            cfg.recv_buffer_size,
            cfg.handshake_timeout,
            cfg.shutdown_grace
        );
        limits::warn_if_low(n);
        warn_if_open(cfg);

        let watched = control.clone();
        let supervisor = std::thread::Builder::new()
            .name("ringcast-supervisor".into())
            .spawn(move || supervise(&watched, exit_rx, handles, None));
        let supervisor = match supervisor {
            Ok(h) => h,
            Err(e) => {
                // Without a supervisor nobody would notice a failed core:
                // stop now. (The closure, and with it the cores' handles, is
                // gone, so the cores are only asked to stop, not joined.)
                control.request_shutdown();
                return Err(format!("spawning the supervisor thread: {e}"));
            }
        };
        Ok(Server {
            addr: listen,
            tls_addr: tls_config.as_ref().map(|_| tls_listen.unwrap_or(listen)),
            tls_files,
            cores: n,
            control,
            publisher,
            supervisor: Some(supervisor),
        })
    }

    /// The address every core listens on (with the port chosen when
    /// `cfg.listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where TLS is served (`--tls-listen`, else the main address), if a
    /// certificate is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// How many cores run (one executor, listener and publish queue each).
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// A handle for publishing from any thread; clone it freely.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// A handle for draining or stopping the server from another thread
    /// while this one waits in [`Server::wait`].
    pub fn handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            control: self.control.clone(),
            tls_files: self.tls_files.clone(),
        }
    }

    /// Stops gracefully: every connection gets a 1001 close frame, the
    /// cores wait for the close handshakes (up to `--shutdown-grace`),
    /// then end. Returns each core's counters, in core order, or the error
    /// of a core that failed.
    pub fn shutdown(self) -> Result<Vec<Stats>, String> {
        self.control.request_shutdown();
        self.wait()
    }

    /// Waits until the server stops: a [`ShutdownHandle`] asked for it, or
    /// a core failed. A core that fails takes the others down (they close
    /// their connections with 1012, service restart) and the result is
    /// that core's error.
    pub fn wait(mut self) -> Result<Vec<Stats>, String> {
        self.join()
    }

    fn join(&mut self) -> Result<Vec<Stats>, String> {
        let Some(supervisor) = self.supervisor.take() else {
            return Err("the server was already stopped".into());
        };
        supervisor
            .join()
            .unwrap_or_else(|_| Err("the supervisor thread panicked".into()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.supervisor.is_some() {
            self.control.request_shutdown();
            let _ = self.join();
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("cores", &self.cores)
            .finish_non_exhaustive()
    }
}

/// Collects every core's end and joins the executors. Cores end in any
/// order; the first that ends with an error without a shutdown having been
/// asked for has failed, and takes the others down with it (1012).
fn supervise(
    control: &Control,
    exits: mpsc::Receiver<(usize, Result<Stats, String>)>,
    handles: Vec<ExecutorJoinHandle<()>>,
    mut failure: Option<String>,
) -> Result<Vec<Stats>, String> {
    let mut stats: Vec<Option<Stats>> = vec![None; control.metrics.len()];
    for (core, r) in exits.iter() {
        match r {
            Ok(s) => stats[core] = Some(s),
            Err(e) => {
                let asked = control.shutdown.load(Ordering::SeqCst);
                if failure.is_none() && !asked {
                    error!(
                        core,
                        "core {core} failed: {e}; closing the other cores' connections with 1012 \
                         and exiting with status 1 for the service manager to restart ringcast"
                    );
                    control.restart.store(true, Ordering::SeqCst);
                } else {
                    error!(core, "{e}");
                }
                failure.get_or_insert(e);
                control.request_shutdown();
            }
        }
    }
    for h in handles {
        if let Err(e) = h.join() {
            failure.get_or_insert(format!("executor failed: {e}"));
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(stats.into_iter().flatten().collect()),
    }
}

/// Starts the broker thread: the node's Redis connections and the engine
/// that answers the cores' channel requests through the mesh.
fn spawn_broker(
    cfg: &Config,
    shard_cfg: &crate::shard::ShardConfig,
    url: crate::broker::BrokerUrl,
    metrics: Arc<crate::broker::BrokerMetrics>,
    links: mesh::Links,
    control: &Arc<Control>,
) -> Result<(), String> {
    use crate::broker::engine::{Engine, EngineConfig};
    let engine = Engine::new(
        EngineConfig {
            unsubscribe_delay: Duration::from_secs_f64(cfg.broker_unsubscribe_delay),
            meta_ttl: Duration::from_secs_f64(cfg.broker_meta_ttl),
            limits: shard_cfg.stream_limits.clone(),
        },
        shard_cfg.channels.clone(),
        metrics.clone(),
        shard_cfg.nonce,
        // A cluster's masters are learnt by the thread before it connects.
        crate::broker::topology::Topology::single(&url.nodes[0]),
        url.kind == crate::broker::Kind::Cluster,
    );
    let me = shard_cfg.cores;
    let watched = control.clone();
    let thread = crate::broker::thread::BrokerThread {
        url,
        engine,
        // It never sends `/broadcast` frames (node-local by design).
        mesh: mesh::Mesh::new(links, control.bells.clone()),
        bells: control.bells.clone(),
        me,
        metrics,
        stop: Box::new(move || watched.shutdown.load(Ordering::Relaxed)),
    };
    std::thread::Builder::new()
        .name("ringcast-broker".into())
        .spawn(move || thread.run())
        .map(drop)
        .map_err(|e| format!("starting the broker thread: {e}"))
}
