//! Start-up and shutdown: one pinned glommio executor per CPU, each running
//! its own [`Shard`], plus the signal handling that drains them.

pub(crate) mod limits;

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use crate::app::heartbeat;
use crate::app::requests::Access;
use crate::app::Policy;
use crate::config::Config;
use crate::hub::mesh;
use crate::shard::{Control, Shard, ShardConfig, Stats};
use crate::ws::Limits;

/// glommio reserves this much registered memory per executor for its own
/// storage I/O, which ringcast does not use (default would be 10 MiB).
const GLOMMIO_IO_MEMORY: usize = 64 * 1024;

impl Config {
    /// The per-core settings derived from the command line.
    pub fn shard_config(&self) -> ShardConfig {
        ShardConfig {
            listen: self.listen,
            backlog: self.backlog,
            max_header_bytes: self.max_header_bytes,
            limits: Limits {
                max_message: self.max_message_bytes,
                max_fragments: self.max_fragments,
            },
            max_send_queue_bytes: self.max_send_queue_bytes,
            handshake_timeout: Duration::from_secs_f64(self.handshake_timeout),
            close_timeout: Duration::from_secs_f64(self.close_timeout),
            shutdown_grace: self.grace(),
            recv_buffers: self.recv_buffers,
            recv_buffer_size: self.recv_buffer_size,
            policy: Policy {
                max_queue: self.max_send_queue_bytes,
                rate_per_us: self.max_msgs_per_sec / 1e6,
                burst: if self.msg_burst > 0.0 {
                    self.msg_burst as f32
                } else {
                    self.max_msgs_per_sec.max(1.0) as f32
                },
                publish_rate_per_us: self.max_publishes_per_sec / 1e6,
                publish_burst: self.max_publishes_per_sec.max(1.0) as f32,
                max_subscriptions: self.max_subscriptions,
                heartbeat: heartbeat::Policy {
                    base_us: micros(self.ping_interval),
                    min_us: micros(self.ping_min),
                    max_us: micros(self.ping_max),
                },
                failpoints: std::env::var_os("RINGCAST_FAILPOINTS").is_some_and(|v| v == "1"),
            },
            idle_timeout: (self.idle_timeout > 0.0)
                .then(|| Duration::from_secs_f64(self.idle_timeout)),
            max_connections: self.max_connections,
            cores: 1,
            access: Access {
                verifier: self
                    .auth_secret
                    .as_ref()
                    .map(|s| crate::app::auth::Verifier::new(s.as_bytes())),
                allowed_origins: self.allowed_origins.clone(),
                api_key: self.api_key.clone(),
            },
            max_body_bytes: self.max_body_bytes,
        }
    }
}

fn micros(seconds: f64) -> u64 {
    (seconds * 1e6) as u64
}

/// Runs the server until SIGINT/SIGTERM and a completed drain. Returns the
/// per-core counters.
pub fn run(cfg: &Config) -> Result<Vec<Stats>, String> {
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
    // Port 0: pick one port for all cores. The placeholder holds it (bound,
    // never listening, so it receives nothing) until every core has bound.
    let placeholder = if cfg.listen.port() == 0 {
        let p = crate::io::listener::reserve_port(cfg.listen)
            .map_err(|e| format!("reserving a port: {e}"))?;
        shard_cfg.listen = p.1;
        Some(p.0)
    } else {
        None
    };
    let listen = shard_cfg.listen;
    let control = Control::new(n).map_err(|e| format!("creating the cores' doorbells: {e}"))?;
    // Before any core starts and before the startup line: a signal that
    // arrives as soon as someone sees "listening" must reach our handler,
    // not the default action (which kills the process without close frames).
    spawn_signal_thread(control.clone(), Duration::from_secs_f64(cfg.drain_delay))?;
    let mut links: Vec<Option<mesh::Links>> = if n > 1 {
        mesh::build(n).into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    // Every core reports here when its loop ends, however it ends (a drop
    // guard reports a panic too), so the main thread learns of a failed core
    // at once rather than when it gets round to joining it.
    let (exit_tx, exit_rx) = mpsc::channel::<(usize, Result<Stats, String>)>();

    let mut handles = Vec::with_capacity(n);
    for (i, &cpu) in cpus.iter().enumerate() {
        let shard_cfg = shard_cfg.clone();
        let control = control.clone();
        let mesh = links[i].take();
        let ready = ready_tx.clone();
        let exit = ExitReport::new(i, exit_tx.clone());
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("ringcast-{i}"))
            .io_memory(GLOMMIO_IO_MEMORY)
            .spawn(move || async move {
                let mut exit = exit;
                let shard = match Shard::start(i, Rc::new(shard_cfg), control, mesh).await {
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
            })
            .map_err(|e| format!("starting executor on CPU {cpu}: {e}"))?;
        handles.push(h);
    }
    drop(ready_tx);
    drop(exit_tx);
    let placeholder_guard = placeholder;

    let mut startup_error = None;
    for _ in 0..n {
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
    drop(placeholder_guard);
    if let Some(e) = &startup_error {
        error!("{e}");
        control.request_shutdown();
    } else {
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
    }

    // Cores end in any order; the first that ends without a shutdown having
    // been asked for has failed, and takes the process down with it.
    let mut stats: Vec<Option<Stats>> = vec![None; n];
    let mut failure = startup_error;
    for (core, r) in exit_rx.iter() {
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

/// Reports a core's end to the main thread exactly once: with its result,
/// or, if the core's thread unwinds before that (a panic outside every
/// `catch_unwind`), with the panic.
struct ExitReport {
    core: usize,
    tx: Option<mpsc::Sender<(usize, Result<Stats, String>)>>,
}

impl ExitReport {
    fn new(core: usize, tx: mpsc::Sender<(usize, Result<Stats, String>)>) -> ExitReport {
        ExitReport { core, tx: Some(tx) }
    }

    fn send(&mut self, r: Result<Stats, String>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.core, r));
        }
    }
}

impl Drop for ExitReport {
    fn drop(&mut self) {
        if self.tx.is_some() {
            let why = if std::thread::panicking() {
                "its loop panicked (the panic message is logged above)"
            } else {
                "its loop ended without a result"
            };
            self.send(Err(why.to_string()));
        }
    }
}

/// Warns about settings that leave a door open.
fn warn_if_open(cfg: &Config) {
    if cfg.auth_secret.is_some() && cfg.allowed_origins.is_empty() {
        warn!(
            "--auth-secret is set but --allowed-origins is not: any web page can open WebSockets \
             here with a token it holds (cross-site WebSocket hijacking); list your origins"
        );
    }
    if std::env::var_os("RINGCAST_FAILPOINTS").is_some_and(|v| v == "1") {
        warn!("RINGCAST_FAILPOINTS=1: test hooks are on (a client can make a handler panic); never in production");
    }
    if cfg.api_key.is_none() {
        info!(
            "publish API off (/api/publish, /api/channels answer 403): set --api-key to enable it"
        );
    }
}

/// First SIGINT/SIGTERM drains: `/readyz` turns 503 at once, then after
/// `--drain-delay` every connection is closed with 1001 (waiting up to the
/// grace period). A second signal exits at once.
fn spawn_signal_thread(control: Arc<Control>, drain_delay: Duration) -> Result<(), String> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).map_err(|e| format!("installing signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("ringcast-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen == 1 {
                    // Readiness flips first, so a load balancer stops
                    // routing here while open connections are still served.
                    control.draining.store(true, Ordering::SeqCst);
                    if drain_delay.is_zero() {
                        info!(
                            signal = sig,
                            "shutting down: no new connections, closing open ones with 1001"
                        );
                        control.request_shutdown();
                    } else {
                        info!(
                            signal = sig,
                            "draining: /readyz answers 503; closing connections with 1001 in {:?}",
                            drain_delay
                        );
                        let later = control.clone();
                        let delayed = std::thread::Builder::new()
                            .name("ringcast-drain".into())
                            .spawn(move || {
                                std::thread::sleep(drain_delay);
                                later.request_shutdown();
                            });
                        if delayed.is_err() {
                            control.request_shutdown();
                        }
                    }
                } else {
                    warn!(signal = sig, "second signal: exiting without waiting");
                    std::process::exit(130);
                }
            }
        })
        .map_err(|e| format!("spawning signal thread: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// What of glommio the cores may use. Each core's loop parks inside its
    /// own ring (`Shard::park`), so glommio's reactor only runs when the
    /// loop yields: any other glommio task, timer, channel or I/O source on
    /// a core would starve while the core sleeps. The loop is therefore the
    /// executor's only task, and this test keeps it so: a use of any other
    /// part of glommio fails here with the reason, before it can starve.
    const ALLOWED: &[&str] = &[
        // Start-up: one pinned executor per CPU, running the loop.
        "glommio::{LocalExecutorBuilder, Placement}",
        // The mesh's lock-free rings (plain memory, no reactor).
        "glommio::channels::spsc_queue",
        // Preemption points inside the loop's own task.
        "glommio::yield_if_needed",
    ];

    #[test]
    fn the_shard_loop_is_the_only_glommio_task() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut stack = vec![std::path::PathBuf::from(root)];
        let mut offending = Vec::new();
        // Spelled in two parts so this test does not find itself.
        let needle = ["glommio", "::"].concat();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("source is UTF-8");
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    for (at, _) in code.match_indices(needle.as_str()) {
                        let rest = &code[at..];
                        if !ALLOWED.iter().any(|a| rest.starts_with(a)) {
                            offending.push(format!(
                                "{}:{}: {}",
                                path.display(),
                                n + 1,
                                line.trim()
                            ));
                        }
                    }
                }
            }
        }
        assert!(
            offending.is_empty(),
            "glommio used beyond the executor, its SPSC rings and yield points; a core's loop \
             parks in its own ring and would starve any other glommio task or timer:\n{}",
            offending.join("\n")
        );
    }
}
