//! Start-up and shutdown: one pinned glommio executor per CPU, each running
//! its own [`Shard`](crate::shard::Shard) ([`server`]), publishing from
//! other threads ([`publisher`]), and the binary's signal handling that
//! drains them ([`run`]).

pub(crate) mod limits;
pub(crate) mod publisher;
pub(crate) mod server;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use crate::app::heartbeat;
use crate::app::requests::Access;
use crate::app::{Policy, Rate};
use crate::config::Config;
use crate::shard::{ShardConfig, Stats};
use crate::ws::Limits;
use server::{Server, ShutdownHandle};

/// glommio reserves this much registered memory per executor for its own
/// storage I/O, which ringcast does not use (default would be 10 MiB).
pub(crate) const GLOMMIO_IO_MEMORY: usize = 64 * 1024;

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
            compression: self.compression.on().then_some(crate::shard::Compression {
                level: self.compression_level,
                min_bytes: self.compression_min_bytes,
            }),
            handshake_timeout: Duration::from_secs_f64(self.handshake_timeout),
            close_timeout: Duration::from_secs_f64(self.close_timeout),
            shutdown_grace: self.grace(),
            recv_buffers: self.recv_buffers,
            recv_buffer_size: self.recv_buffer_size,
            policy: Policy {
                max_queue: self.max_send_queue_bytes,
                msg_rate: Rate::new(
                    self.max_msgs_per_sec,
                    if self.msg_burst > 0.0 {
                        self.msg_burst
                    } else {
                        self.max_msgs_per_sec.max(1.0)
                    },
                ),
                publish_rate: Rate::new(
                    self.max_publishes_per_sec,
                    self.max_publishes_per_sec.max(1.0),
                ),
                max_subscriptions: self.max_subscriptions,
                history_max_limit: self.history_max_limit,
                heartbeat: heartbeat::Policy {
                    base_us: micros(self.ping_interval),
                    min_us: micros(self.ping_min),
                    max_us: micros(self.ping_max),
                },
                failpoints: self.failpoints,
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
            channels: self.channel_rules(),
            stream_limits: crate::hub::stream::StreamLimits {
                history_max_bytes: self.history_max_bytes,
                presence_max_clients: self.presence_max_clients,
                answer_max_bytes: self.max_send_queue_bytes,
            },
            nonce: crate::hub::stream::process_nonce(),
            broker: self.broker.is_some(),
            tls: None,
        }
    }
}

fn micros(seconds: f64) -> u64 {
    (seconds * 1e6) as u64
}

/// The binary's server: [`Server::start`], signal handling, `--addr-file`,
/// then [`Server::wait`]. Runs until SIGINT/SIGTERM and a completed drain
/// (or a failed core: then the error). Returns the per-core counters.
pub fn run(cfg: &Config) -> Result<Vec<Stats>, String> {
    // Before any core starts and before the startup line: a signal that
    // arrives as soon as someone sees "listening" must reach our handler,
    // not the default action (which kills the process without close
    // frames). Signals caught before the thread below runs wait for it.
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    let server = Server::start(cfg)?;
    spawn_signal_thread(
        signals,
        server.handle(),
        Duration::from_secs_f64(cfg.drain_delay),
    )?;
    if let Some(path) = &cfg.addr_file {
        // A script waiting for this file would wait forever: fail instead
        // (dropping the server shuts it down).
        write_addr_file(path, server.local_addr())
            .map_err(|e| format!("--addr-file {}: {e}", path.display()))?;
    }
    server.wait()
}

/// Writes `addr` and a newline to `path` so that a reader never sees a
/// partial file: written to `PATH.tmp` beside it, then renamed over it.
fn write_addr_file(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Reports a core's end to the supervisor exactly once: with its result,
/// or, if the core's thread unwinds before that (a panic outside every
/// `catch_unwind`), with the panic.
pub(crate) struct ExitReport {
    core: usize,
    tx: Option<mpsc::Sender<(usize, Result<Stats, String>)>>,
}

impl ExitReport {
    pub(crate) fn new(core: usize, tx: mpsc::Sender<(usize, Result<Stats, String>)>) -> ExitReport {
        ExitReport { core, tx: Some(tx) }
    }

    pub(crate) fn send(&mut self, r: Result<Stats, String>) {
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
pub(crate) fn warn_if_open(cfg: &Config) {
    if cfg.auth_secret.is_some() && cfg.allowed_origins.is_empty() {
        warn!(
            "--auth-secret is set but --allowed-origins is not: any web page can open WebSockets \
             here with a token it holds (cross-site WebSocket hijacking); list your origins"
        );
    }
    if cfg.failpoints {
        warn!("failpoints (RINGCAST_FAILPOINTS=1): test hooks are on (a client can make a handler panic); never in production");
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
fn spawn_signal_thread(
    mut signals: Signals,
    server: ShutdownHandle,
    drain_delay: Duration,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("ringcast-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    match server.reload_tls() {
                        Ok(true) => {
                            info!("SIGHUP: TLS certificate reloaded; new handshakes use it")
                        }
                        Ok(false) => info!("SIGHUP: no TLS configured, nothing to reload"),
                        Err(e) => error!(
                            "SIGHUP: TLS reload failed, keeping the current certificate: {e}"
                        ),
                    }
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    // Readiness flips first, so a load balancer stops
                    // routing here while open connections are still served.
                    server.drain();
                    if drain_delay.is_zero() {
                        info!(
                            signal = sig,
                            "shutting down: no new connections, closing open ones with 1001"
                        );
                        server.shutdown();
                    } else {
                        info!(
                            signal = sig,
                            "draining: /readyz answers 503; closing connections with 1001 in {:?}",
                            drain_delay
                        );
                        let later = server.clone();
                        let delayed = std::thread::Builder::new()
                            .name("ringcast-drain".into())
                            .spawn(move || {
                                std::thread::sleep(drain_delay);
                                later.shutdown();
                            });
                        if delayed.is_err() {
                            server.shutdown();
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
        // Start-up: one pinned executor per CPU, running the loop, and its
        // join handle.
        "glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement}",
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
