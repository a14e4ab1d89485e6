//! Command-line configuration.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// ringcast: a thread-per-core io_uring WebSocket server.
///
/// Endpoints: /echo (every message comes back) and /broadcast (every message
/// goes to every /broadcast client on every core).
#[derive(Parser, Debug, Clone)]
#[command(version, about, long_about = None)]
pub struct Config {
    /// Address every core listens on (SO_REUSEPORT).
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,

    /// Number of cores to run on (the first N online CPUs). Default: all.
    #[arg(long, conflicts_with = "cpus")]
    pub cores: Option<usize>,

    /// Exact CPUs to run on, e.g. `0,2-3`. One executor is pinned to each.
    #[arg(long, value_parser = parse_cpu_list)]
    pub cpus: Option<CpuList>,

    /// Largest request head accepted, in bytes (else 431).
    #[arg(long, default_value_t = 8 * 1024)]
    pub max_header_bytes: usize,

    /// Largest message accepted, summed over fragments (else close 1009).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Bound on a connection's unsent bytes; a consumer that falls further
    /// behind is closed with 1008.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_send_queue_bytes: usize,

    /// Seconds to wait for close handshakes on SIGINT/SIGTERM.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    pub shutdown_grace: f64,

    /// Seconds a client has to complete its opening handshake.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub handshake_timeout: f64,

    /// Seconds to wait for the peer's reply after the server sends a close
    /// frame, and for its FIN after the server's.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    pub close_timeout: f64,

    /// Listen backlog per core.
    #[arg(long, default_value_t = 4096)]
    pub backlog: i32,

    /// Receive buffers per core (rounded up to a power of two): the shared
    /// pool multishot receives fill; connections own no read buffer.
    #[arg(long, default_value_t = 128)]
    pub recv_buffers: u16,

    /// Size of each receive buffer, in bytes. Receives are packed into a
    /// buffer one after another (Linux >= 6.12), so large buffers cost
    /// nothing per small read and let 16 KiB frames arrive whole.
    #[arg(long, default_value_t = 64 * 1024)]
    pub recv_buffer_size: usize,

    /// Base heartbeat interval in seconds. A connection's ping interval is
    /// `base * 0.5 + rtt * 2`, clamped to [--ping-min, --ping-max].
    #[arg(long, default_value_t = 30.0, value_parser = parse_seconds)]
    pub ping_interval: f64,

    /// Shortest heartbeat interval, seconds (also the retry delay after a
    /// missed pong).
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub ping_min: f64,

    /// Longest heartbeat interval, seconds.
    #[arg(long, default_value_t = 120.0, value_parser = parse_seconds)]
    pub ping_max: f64,

    /// Close a WebSocket connection that sent no message for this many
    /// seconds (pongs do not count). 0 disables it: heartbeats already find
    /// dead peers, and a pure subscriber may never send anything.
    #[arg(long, default_value_t = 0.0, value_parser = parse_seconds)]
    pub idle_timeout: f64,

    /// Seconds between SIGTERM and the start of the drain, during which
    /// `/readyz` already answers 503 so a load balancer stops sending
    /// traffic while open connections are still served.
    #[arg(long, default_value_t = 0.0, value_parser = parse_seconds)]
    pub drain_delay: f64,

    /// HS256 secret: when set, every WebSocket upgrade needs a valid JWT
    /// (`?token=` or `Authorization: Bearer`), else 401.
    #[arg(long, env = "RINGCAST_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// Origins allowed to open WebSockets (comma-separated, exact match,
    /// e.g. `https://app.example.com`); others get 403. Default: any.
    #[arg(long, value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Key for the publish API (`Authorization: Bearer KEY` or
    /// `X-Api-Key: KEY`). Without it the API answers 403.
    #[arg(long, env = "RINGCAST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Largest HTTP request body accepted by the API, in bytes (else 413).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most WebSocket connections in total (each core takes its share);
    /// over it, upgrades get 503. 0: no limit but the descriptor limit.
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,

    /// Messages per second one connection may send (token bucket); a
    /// client over it is closed with 1008. 0: no limit.
    #[arg(long, default_value_t = 0.0)]
    pub max_msgs_per_sec: f64,

    /// Burst the rate limit allows above --max-msgs-per-sec (bucket size).
    /// 0: one second's worth.
    #[arg(long, default_value_t = 0.0)]
    pub msg_burst: f64,

    /// Channels one `/ws` connection may subscribe to at once.
    #[arg(long, default_value_t = 100)]
    pub max_subscriptions: usize,

    /// Log level (error, warn, info, debug, trace); overrides RUST_LOG.
    #[arg(long)]
    pub log: Option<String>,
}

impl Config {
    /// The CPUs to start executors on.
    pub fn cpu_set(&self) -> Result<Vec<usize>, String> {
        let online = online_cpus();
        let cpus = match (&self.cpus, self.cores) {
            (Some(list), _) => list.0.clone(),
            (None, Some(n)) => {
                if n == 0 || n > online.len() {
                    return Err(format!(
                        "--cores {n}: this machine has {} online CPUs",
                        online.len()
                    ));
                }
                online[..n].to_vec()
            }
            (None, None) => online,
        };
        if let Some(bad) = cpus.iter().find(|c| !online_cpus().contains(c)) {
            return Err(format!("CPU {bad} is not online"));
        }
        Ok(cpus)
    }

    /// Shutdown grace period.
    pub fn grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace)
    }
}

/// A parsed CPU list such as `0,2-3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.0..=86_400.0).contains(&v) {
        return Err(format!("{v} is out of range (0 to 86400 seconds)"));
    }
    Ok(v)
}

/// Parses `0,2-3` style CPU lists (as in `taskset -c`).
pub fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad CPU number '{x}' in '{s}'"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("bad CPU range '{part}'"));
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err("empty CPU list".into());
    }
    Ok(CpuList(out))
}

/// CPUs this process may run on, in order.
pub fn online_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a cpu_set_t we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            return (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect();
        }
    }
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2-3").unwrap().0, vec![0, 2, 3]);
        assert_eq!(parse_cpu_list("3,1,1").unwrap().0, vec![1, 3]);
        assert!(parse_cpu_list("2-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
