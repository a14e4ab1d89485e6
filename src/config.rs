//! Configuration: command-line flags, optionally on top of a TOML file
//! (`--config`) that mirrors them.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, ColorChoice, CommandFactory, FromArgMatches, Parser};
use serde::{Serialize, Serializer};

/// The per-channel options [`Config::channels`] and
/// [`Config::channel_rules`] hold, and the check a rule's pattern passes.
pub use crate::hub::options::{validate_pattern, ChannelOptions, ChannelRule, ChannelRules};

/// ringcast: a thread-per-core io_uring WebSocket server.
///
/// Endpoints: /echo (every message comes back) and /broadcast (every message
/// goes to every /broadcast client on every core).
///
/// Every flag can also be set in a `--config` TOML file; the command line
/// and environment variables take precedence over the file.
#[derive(Parser, Serialize, Debug, Clone, PartialEq)]
#[command(version, about, long_about = None)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    /// TOML file of defaults for the other flags: keys are the flag names
    /// (`max-connections = 1000`, `allowed-origins = ["https://a"]`,
    /// `cpus = "0,2-3"`); the command line and environment win over it.
    /// It may also hold `[[channels]]` tables of per-channel options
    /// (`pattern = "chat:*"`, `history_size`, `history_ttl`, `presence`,
    /// `join_leave`, `allow_publish`; first match wins, keys not given take
    /// the flags' values).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (file plus command line) as TOML
    /// and exit. The output is a valid --config file, except that
    /// auth-secret and api-key are printed as "<redacted>" (which a config
    /// file rejects, so they must be filled back in or set by environment).
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,

    /// Address every core listens on (SO_REUSEPORT).
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,

    /// PEM certificate chain, the server's own certificate first: with
    /// --tls-key, every endpoint (/ws, /echo, /broadcast, the pages, the
    /// API) is served over TLS 1.3/1.2 (wss://, https://) by the cores
    /// themselves — on --listen, or on --tls-listen beside a plain
    /// --listen. SIGHUP re-reads both files: new handshakes get the new
    /// certificate, established connections keep theirs.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// Serve TLS on this address and keep --listen plain, side by side
    /// (e.g. plain for a proxy or health checks on loopback, TLS for the
    /// world). Needs --tls-cert and --tls-key.
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,

    /// kTLS: after each TLS 1.3 handshake (AES-GCM or ChaCha20-Poly1305),
    /// hand the session's keys to the kernel, which then encrypts and
    /// decrypts the connection's records: the cores send and receive plain
    /// bytes, and rustls keeps only what a key update needs. Where the
    /// kernel has no `tls` module or lacks the cipher, and for TLS 1.2,
    /// connections stay in user space (counted in
    /// ringcast_ktls_connections_total). Needs --tls-cert and --tls-key.
    #[arg(long)]
    pub ktls: bool,

    /// Number of cores to run on (the first N online CPUs). Default: all.
    #[arg(long, conflicts_with = "cpus")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores: Option<usize>,

    /// Exact CPUs to run on, e.g. `0,2-3`. One executor is pinned to each.
    #[arg(long, value_parser = parse_cpu_list)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<CpuList>,

    /// Largest request head accepted, in bytes (else 431).
    #[arg(long, default_value_t = 8 * 1024)]
    pub max_header_bytes: usize,

    /// Largest message accepted, summed over fragments (else close 1009).
    /// At most 1 GiB.
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_parser = parse_message_bytes)]
    pub max_message_bytes: usize,

    /// Most frames one message may be split into (else close 1009).
    #[arg(long, default_value_t = 131_072)]
    pub max_fragments: u32,

    /// permessage-deflate (RFC 7692) on every WebSocket endpoint. On by
    /// default: a connection holds no compression state (each core shares
    /// one compressor and one inflater, reset per message), a publication
    /// is compressed once per core however many subscribers get it, and
    /// JSON shrinks on the wire (varied 1 KB events to about 0.6). `off` answers every offer
    /// without the extension.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub compression: Switch,

    /// Messages shorter than this many bytes are sent uncompressed: deflate
    /// saves next to nothing on them and costs a compressor reset each.
    #[arg(long, default_value_t = crate::ws::deflate::DEFAULT_MIN_BYTES)]
    pub compression_min_bytes: usize,

    /// zlib compression level, 1 (fastest) to 9 (smallest). Level 1 is
    /// zlib-rs's "quick" strategy with fixed Huffman codes, which leaves 1 KB
    /// of varied JSON at 0.82 of its size; 2, the default, is the first
    /// with codes fitted to the message (0.62) for about 3x the time;
    /// higher levels gain under 1% more on messages this size.
    #[arg(
        long,
        default_value_t = crate::ws::deflate::DEFAULT_LEVEL,
        value_parser = clap::value_parser!(u32).range(1..=9)
    )]
    pub compression_level: u32,

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
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redact")]
    pub auth_secret: Option<String>,

    /// Origins allowed to open WebSockets (comma-separated, exact match,
    /// e.g. `https://app.example.com`); others get 403. Default: any.
    #[arg(long, value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Key for the HTTP API (`Authorization: Bearer KEY` or
    /// `X-Api-Key: KEY`). Without it the API answers 403, except
    /// `/api/stats` (the dashboard's data), which the key guards when set.
    #[arg(long, env = "RINGCAST_API_KEY", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redact")]
    pub api_key: Option<String>,

    /// Largest HTTP request body accepted by the API, in bytes (else 413).
    /// At most 1 GiB.
    #[arg(long, default_value_t = 1024 * 1024, value_parser = parse_message_bytes)]
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

    /// Publishes per second one connection may make (`/broadcast` messages
    /// and `/ws` publishes; token bucket, one second's worth of burst): a
    /// publish costs one delivery per subscriber on every core, so one
    /// client past this is closed with 1008. 0: no limit. The publish API
    /// is not limited by it.
    #[arg(long, default_value_t = 5000.0)]
    pub max_publishes_per_sec: f64,

    /// Channels one `/ws` connection may subscribe to at once.
    #[arg(long, default_value_t = 100)]
    pub max_subscriptions: usize,

    /// Publications a channel keeps for history and recovery (0: none, and
    /// history requests are refused), for channels no `[[channels]]` rule
    /// of the config file gives a `history_size`.
    #[arg(long, default_value_t = 100)]
    pub history_size: u32,

    /// Seconds a publication stays in history, for channels no rule gives
    /// a `history_ttl`.
    #[arg(long, default_value_t = 300.0, value_parser = parse_seconds)]
    pub history_ttl: f64,

    /// History memory budget per core, in bytes (frames, 64 B per entry,
    /// 256 B per channel holding history): over it the core's oldest
    /// publications (of any channel) are evicted first.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub history_max_bytes: usize,

    /// Largest `limit` a history request may ask for (more: `bad_limit`),
    /// and the limit of a request that gives none.
    #[arg(long, default_value_t = 1000)]
    pub history_max_limit: u32,

    /// Most clients listed in a presence answer (its count stays exact).
    #[arg(long, default_value_t = 1000)]
    pub presence_max_clients: u32,

    /// Keep channels' subscriber lists for `presence` requests, for
    /// channels no rule gives a `presence`.
    #[arg(long)]
    pub presence: bool,

    /// Let subscribers ask for `join`/`leave` events, for channels no rule
    /// gives a `join_leave`.
    #[arg(long)]
    pub join_leave: bool,

    /// Whether `/ws` clients may publish (`false`: only the HTTP API and an
    /// embedding program's publisher may), for channels no rule gives an
    /// `allow_publish`.
    #[arg(long, action = ArgAction::Set, default_value_t = true, value_name = "BOOL")]
    pub allow_publish: bool,

    /// The channel engine: `redis://HOST:PORT[/DB]` (or
    /// `redis-cluster://HOST:PORT[,HOST:PORT...]`) shares channels,
    /// history and presence with every node using the same Redis. Unset:
    /// the in-memory engine (one node). A password comes from the URL
    /// (`redis://:PASSWORD@HOST`) or `RINGCAST_BROKER_PASSWORD`.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,

    /// Password for `--broker` when the URL has none.
    #[arg(long, env = "RINGCAST_BROKER_PASSWORD", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redact")]
    pub broker_password: Option<String>,

    /// Seconds a channel's epoch and offset stay in Redis after its last
    /// publication (at least its history TTL): a channel idle for longer
    /// starts a new epoch, and a client recovering across that is told
    /// `recovered:false`.
    #[arg(long, default_value_t = 30.0 * 86400.0, value_parser = parse_retention)]
    pub broker_meta_ttl: f64,

    /// Seconds a node stays subscribed to a channel in Redis after its
    /// last local subscriber left (absorbs churn).
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    pub broker_unsubscribe_delay: f64,

    /// Log level (error, warn, info, debug, trace); overrides RUST_LOG.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,

    /// Once every core listens, write the bound address (`IP:PORT` and a
    /// newline) to this file, atomically (written beside it, then
    /// renamed): how a script or test that started ringcast on port 0
    /// learns the port without reading the log.
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr_file: Option<PathBuf>,

    /// Test hooks (a client can make a handler panic, a core fail or
    /// stall). Not a flag, so no deployment turns it on by accident: the
    /// binary sets it from `RINGCAST_FAILPOINTS=1`, an embedding test sets
    /// it directly (no environment variable shared by every server in the
    /// process).
    #[arg(skip)]
    #[serde(skip)]
    pub failpoints: bool,

    /// Per-channel options, the config file's `[[channels]]` tables in file
    /// order (first match wins), with the keys a table left out filled from
    /// the flags. Not a flag. Serialized last: TOML puts tables after plain
    /// values.
    #[arg(skip)]
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "serialize_rules"
    )]
    pub channels: Vec<ChannelRule>,
}

/// The built-in defaults, exactly those of the flags (clap's own
/// defaults, so the two cannot drift apart), for a program that embeds the
/// server and has no command line. Unlike [`Config::from_args_and_file`]
/// it reads no environment variable: an embedder's configuration is what
/// its code says.
impl Default for Config {
    fn default() -> Config {
        let matches = Config::command()
            .mut_args(|a| a.env(None::<&'static str>))
            .try_get_matches_from(["ringcast"])
            .expect("the flags' defaults parse");
        Config::from_arg_matches(&matches).expect("the flags' defaults are valid")
    }
}

impl Config {
    /// The `--broker` engine, if one is set (the URL checked).
    pub(crate) fn broker_url(&self) -> Result<Option<crate::broker::BrokerUrl>, String> {
        self.broker
            .as_deref()
            .map(|u| crate::broker::url::parse(u, self.broker_password.clone()))
            .transpose()
    }

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

    /// The options the channel flags give: those of channels no rule
    /// matches, and of the keys a rule leaves out.
    pub fn channel_defaults(&self) -> ChannelOptions {
        ChannelOptions {
            history_size: self.history_size,
            history_ttl: Duration::from_secs_f64(self.history_ttl),
            presence: self.presence,
            join_leave: self.join_leave,
            allow_publish: self.allow_publish,
        }
    }

    /// The per-channel rules ([`Config::channels`], in order) over the
    /// flags' options as the default.
    pub fn channel_rules(&self) -> ChannelRules {
        let mut rules = self.channels.clone();
        // The `/demo` chat's rooms: presence and join/leave on, after the
        // file's rules (a `[[channels]]` rule matching `demo:*` wins).
        rules.push(ChannelRule {
            pattern: DEMO_PATTERN.to_owned(),
            options: ChannelOptions {
                presence: true,
                join_leave: true,
                allow_publish: true,
                ..self.channel_defaults()
            },
        });
        ChannelRules {
            rules,
            default: self.channel_defaults(),
        }
    }
}

/// The built-in rule's pattern: the channels of the `/demo` chat.
pub const DEMO_PATTERN: &str = "demo:*";

/// What `--print-config` shows instead of a secret. A config file holding
/// it is rejected, so a saved printout never runs with a guessable secret.
const REDACTED: &str = "<redacted>";

/// Flags that make no sense inside a config file.
const NOT_IN_FILE: [&str; 4] = ["config", "print-config", "help", "version"];

/// Why [`Config::from_args_and_file`] failed.
#[derive(Debug)]
pub enum LoadError {
    /// A command-line problem, or `--help`/`--version`: call `exit()` on it
    /// to behave exactly like `Config::parse()`.
    Clap(clap::Error),
    /// A problem with the `--config` file; the message names the file and,
    /// where there is one, the key.
    File(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Clap(e) => write!(f, "{}", clap_reason(e)),
            LoadError::File(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for LoadError {}

/// The process's configuration: its arguments on top of its `--config`
/// file. Command-line errors, `--help` and `--version` exit here as with
/// `Config::parse()`; a bad config file comes back as the message to print.
pub fn load() -> Result<Config, String> {
    match Config::from_args_and_file(std::env::args_os()) {
        Ok(cfg) => Ok(cfg),
        Err(LoadError::Clap(e)) => e.exit(),
        Err(LoadError::File(msg)) => Err(msg),
    }
}

impl Config {
    /// Parses `args` (program name first) over the file named by
    /// `--config`, if any. Precedence: command line and environment, then
    /// the file, then the built-in defaults.
    ///
    /// Each file entry becomes a `--key=value` argument for clap, so clap
    /// stays the single source of flag names, defaults and validation;
    /// entries for flags the command line or environment already set are
    /// dropped (as are ones conflicting with those, e.g. `cores` when
    /// `--cpus` is given) rather than overridden, which also keeps the
    /// environment above the file.
    pub fn from_args_and_file<I, T>(args: I) -> Result<Config, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let cli = Config::command()
            .try_get_matches_from(&args)
            .map_err(LoadError::Clap)?;
        let Some(path) = cli.get_one::<PathBuf>("config").cloned() else {
            return Config::from_arg_matches(&cli).map_err(LoadError::Clap);
        };
        let in_file = |e: String| LoadError::File(format!("config {}: {e}", path.display()));
        let bin = args.first().cloned().unwrap_or_else(|| "ringcast".into());
        let (flags, rules) = file_args(&path, &cli, &bin).map_err(in_file)?;
        let mut all = vec![bin.clone()];
        all.extend(flags.into_iter().map(OsString::from));
        all.extend(args.into_iter().skip(1));
        let matches = Config::command()
            .color(ColorChoice::Never)
            .try_get_matches_from(all)
            .map_err(|e| in_file(clap_reason(&e)))?;
        let mut cfg = Config::from_arg_matches(&matches).map_err(|e| in_file(clap_reason(&e)))?;
        // Rules take the effective flags (file and command line merged)
        // for the keys they leave out.
        let default = cfg.channel_defaults();
        cfg.channels = rules.into_iter().map(|r| r.resolve(&default)).collect();
        Ok(cfg)
    }

    /// The certificate and key files, if TLS is configured; an error for
    /// half a configuration.
    pub(crate) fn tls_files(&self) -> Result<Option<crate::tls::TlsFiles>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (Some(_), None) => Err("--tls-cert needs --tls-key".into()),
            (None, Some(_)) => Err("--tls-key needs --tls-cert".into()),
            (None, None) if self.tls_listen.is_some() => {
                Err("--tls-listen needs --tls-cert and --tls-key".into())
            }
            (None, None) if self.ktls => Err("--ktls needs --tls-cert and --tls-key".into()),
            (None, None) => Ok(None),
        }
    }

    /// The configuration as a `--config` file, for `--print-config`: `None`
    /// options are left out, secrets are shown as `"<redacted>"`.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| format!("cannot print the configuration: {e}"))
    }
}

/// The arguments the config file at `path` stands for, minus those the
/// command line (`cli`) or the environment overrides, and its
/// `[[channels]]` rules (not flags, so parsed here, not by clap). Every
/// entry is checked, overridden or not, so a bad file fails the same way
/// always.
fn file_args(
    path: &Path,
    cli: &ArgMatches,
    bin: &OsString,
) -> Result<(Vec<String>, Vec<RuleEntry>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e| format!("invalid TOML: {e}"))?;
    let cmd = Config::command();
    let mut check = Config::command().color(ColorChoice::Never);
    let given = |a: &clap::Arg| {
        matches!(
            cli.value_source(a.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let mut seen: Vec<(&str, &clap::Arg)> = Vec::new();
    let mut out = Vec::new();
    let mut rules = Vec::new();
    for (key, value) in &table {
        if key == CHANNELS {
            rules = channel_entries(value)?;
            continue;
        }
        let long = key.replace('_', "-");
        if NOT_IN_FILE.contains(&long.as_str()) {
            return Err(format!("key \"{key}\" cannot be set in a config file"));
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .ok_or_else(|| format!("unknown key \"{key}\""))?;
        for (other, other_arg) in &seen {
            if other_arg.get_id() == arg.get_id() {
                return Err(format!("keys \"{other}\" and \"{key}\" set the same flag"));
            }
            if conflict(&cmd, arg, other_arg) {
                return Err(format!("keys \"{other}\" and \"{key}\" cannot both be set"));
            }
        }
        seen.push((key, arg));
        let entry = entry_args(&long, arg, value).map_err(|e| format!("key \"{key}\": {e}"))?;
        check
            .try_get_matches_from_mut(
                std::iter::once(bin.clone()).chain(entry.iter().map(Into::into)),
            )
            .map_err(|e| format!("key \"{key}\": {}", clap_reason(&e)))?;
        if !given(arg)
            && !cmd
                .get_arguments()
                .any(|c| given(c) && conflict(&cmd, arg, c))
        {
            out.extend(entry);
        }
    }
    Ok((out, rules))
}

/// The config file's key for per-channel rules (`[[channels]]`).
const CHANNELS: &str = "channels";

/// The keys of a `[[channels]]` table (`-` may stand for `_`).
const RULE_KEYS: [&str; 6] = [
    "pattern",
    "history_size",
    "history_ttl",
    "presence",
    "join_leave",
    "allow_publish",
];

/// A `[[channels]]` table as written: the keys it leaves out take the
/// flags' values once the file and the command line are merged.
#[derive(Debug, Default)]
struct RuleEntry {
    pattern: String,
    history_size: Option<u32>,
    history_ttl: Option<Duration>,
    presence: Option<bool>,
    join_leave: Option<bool>,
    allow_publish: Option<bool>,
}

impl RuleEntry {
    /// The rule, with `default` (the flags) for the keys not given.
    fn resolve(self, default: &ChannelOptions) -> ChannelRule {
        ChannelRule {
            pattern: self.pattern,
            options: ChannelOptions {
                history_size: self.history_size.unwrap_or(default.history_size),
                history_ttl: self.history_ttl.unwrap_or(default.history_ttl),
                presence: self.presence.unwrap_or(default.presence),
                join_leave: self.join_leave.unwrap_or(default.join_leave),
                allow_publish: self.allow_publish.unwrap_or(default.allow_publish),
            },
        }
    }
}

/// The file's `channels` value: an array of tables, each a rule with a
/// pattern no earlier rule has. Errors name the entry (`channels[2]: ...`).
fn channel_entries(value: &toml::Value) -> Result<Vec<RuleEntry>, String> {
    let toml::Value::Array(items) = value else {
        return Err(format!(
            "key \"{CHANNELS}\": expected an array of tables ([[{CHANNELS}]]), found {}",
            value.type_str()
        ));
    };
    let mut out: Vec<RuleEntry> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let entry = channel_entry(item).map_err(|e| format!("{CHANNELS}[{i}]: {e}"))?;
        if let Some(j) = out.iter().position(|r| r.pattern == entry.pattern) {
            return Err(format!(
                "{CHANNELS}[{i}]: pattern {:?} is already that of {CHANNELS}[{j}]",
                entry.pattern
            ));
        }
        out.push(entry);
    }
    Ok(out)
}

/// One `[[channels]]` table.
fn channel_entry(item: &toml::Value) -> Result<RuleEntry, String> {
    use toml::Value;
    let Value::Table(table) = item else {
        return Err(format!("expected a table, found {}", item.type_str()));
    };
    let mut entry = RuleEntry::default();
    let mut pattern = None;
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (key, value) in table {
        let name = key.replace('-', "_");
        let Some(&canon) = RULE_KEYS.iter().find(|k| **k == name) else {
            return Err(format!("unknown key \"{key}\""));
        };
        if let Some((other, _)) = seen.iter().find(|(_, c)| *c == canon) {
            return Err(format!(
                "keys \"{other}\" and \"{key}\" set the same option"
            ));
        }
        seen.push((key, canon));
        let found = |what: &str| match value {
            Value::Integer(i) => format!("expected {what}, found {i}"),
            v => format!("expected {what}, found {}", v.type_str()),
        };
        let bool_value = || value.as_bool().ok_or_else(|| found("true or false"));
        let checked = match canon {
            "pattern" => value
                .as_str()
                .ok_or_else(|| found("a string"))
                .and_then(|p| {
                    validate_pattern(p)?;
                    pattern = Some(p.to_string());
                    Ok(())
                }),
            "history_size" => value
                .as_integer()
                .filter(|&n| n >= 0)
                .ok_or_else(|| found("a non-negative integer"))
                .and_then(|n| {
                    let n = u32::try_from(n)
                        .map_err(|_| format!("{n} is too large (at most {})", u32::MAX))?;
                    entry.history_size = Some(n);
                    Ok(())
                }),
            "history_ttl" => match value {
                Value::Integer(i) => Ok(*i as f64),
                Value::Float(f) => Ok(*f),
                _ => Err(found("a number of seconds")),
            }
            .and_then(check_seconds)
            .map(|s| entry.history_ttl = Some(Duration::from_secs_f64(s))),
            "presence" => bool_value().map(|b| entry.presence = Some(b)),
            "join_leave" => bool_value().map(|b| entry.join_leave = Some(b)),
            _ => bool_value().map(|b| entry.allow_publish = Some(b)),
        };
        checked.map_err(|e| match canon {
            // validate_pattern's errors name the pattern already.
            "pattern" if value.is_str() => e,
            _ => format!("key \"{key}\": {e}"),
        })?;
    }
    entry.pattern = pattern.ok_or_else(|| "missing key \"pattern\"".to_string())?;
    Ok(entry)
}

/// A rule as `--print-config` writes it: every key, so the printout says
/// exactly what each rule does and reads back the same.
#[derive(Serialize)]
struct RuleToml<'a> {
    pattern: &'a str,
    history_size: u32,
    history_ttl: f64,
    presence: bool,
    join_leave: bool,
    allow_publish: bool,
}

/// [`Config::channels`] as `[[channels]]` tables.
fn serialize_rules<S: Serializer>(rules: &[ChannelRule], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(rules.iter().map(|r| RuleToml {
        pattern: &r.pattern,
        history_size: r.options.history_size,
        history_ttl: r.options.history_ttl.as_secs_f64(),
        presence: r.options.presence,
        join_leave: r.options.join_leave,
        allow_publish: r.options.allow_publish,
    }))
}

/// One file entry as arguments: `--key=value` (so values starting with `-`
/// stay values), arrays comma-joined for flags that take lists, booleans as
/// a bare flag for flags that take no value.
fn entry_args(long: &str, arg: &clap::Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    use toml::Value;
    if !arg.get_action().takes_values() {
        return match value {
            Value::Boolean(true) => Ok(vec![format!("--{long}")]),
            Value::Boolean(false) => Ok(Vec::new()),
            v => Err(format!("expected true or false, found {}", v.type_str())),
        };
    }
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        v => Err(format!(
            "expected a string or number, found {}",
            v.type_str()
        )),
    };
    let text = match value {
        // A flag that takes `true|false` as a value (`--allow-publish`).
        Value::Boolean(b) if takes_bool(arg) => b.to_string(),
        Value::Array(items) => {
            let Some(delim) = arg.get_value_delimiter() else {
                return Err("expected a single value, found array".into());
            };
            if items.is_empty() {
                return Ok(Vec::new());
            }
            let items = items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?;
            items.join(&delim.to_string())
        }
        v => scalar(v)?,
    };
    if text == REDACTED {
        return Err(format!(
            "\"{REDACTED}\" is --print-config's placeholder, not a value; \
             set the real one here or in the environment"
        ));
    }
    Ok(vec![format!("--{long}={text}")])
}

/// Whether `arg`'s value is `true` or `false`.
fn takes_bool(arg: &clap::Arg) -> bool {
    let values = arg.get_possible_values();
    ["true", "false"]
        .iter()
        .all(|b| values.iter().any(|v| v.get_name() == *b))
}

/// Whether clap would reject `a` and `b` together (declared on either side).
fn conflict(cmd: &clap::Command, a: &clap::Arg, b: &clap::Arg) -> bool {
    let declared = |x: &clap::Arg, y: &clap::Arg| {
        cmd.get_arg_conflicts_with(x)
            .iter()
            .any(|c| c.get_id() == y.get_id())
    };
    declared(a, b) || declared(b, a)
}

/// A clap error as one line: the value and why it is bad, else the first
/// line of clap's message without its `error: ` prefix or usage text.
fn clap_reason(e: &clap::Error) -> String {
    use std::error::Error as _;
    if let (Some(ContextValue::String(v)), Some(why)) =
        (e.get(ContextKind::InvalidValue), e.source())
    {
        return format!("invalid value '{v}': {why}");
    }
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// Secrets are printed only as `"<redacted>"`.
fn redact<S: Serializer>(secret: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_none(),
    }
}

/// A parsed CPU list such as `0,2-3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// `0,2-3` form: what `--cpus` parses back to the same list.
impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0.iter().copied().peekable();
        let mut sep = "";
        while let Some(start) = rest.next() {
            let mut end = start;
            while let Some(next) = rest.next_if(|&n| end.checked_add(1) == Some(n)) {
                end = next;
            }
            match start == end {
                true => write!(f, "{sep}{start}")?,
                false => write!(f, "{sep}{start}-{end}")?,
            }
            sep = ",";
        }
        Ok(())
    }
}

/// An `on`/`off` setting.
#[derive(clap::ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl Switch {
    /// Whether it is on.
    pub fn on(self) -> bool {
        self == Switch::On
    }
}

/// As the `--cpus` string, so a printed config round-trips.
impl Serialize for CpuList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A message size limit: a number of bytes, 1 to 1 GiB (a queued frame's
/// offset is kept in 32 bits).
fn parse_message_bytes(s: &str) -> Result<usize, String> {
    let v: usize = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of bytes"))?;
    if !(1..=1 << 30).contains(&v) {
        return Err(format!("{v} is out of range: 1 to 1073741824 (1 GiB)"));
    }
    Ok(v)
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    check_seconds(v)
}

/// Seconds up to a year (retention times), at least one.
fn parse_retention(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(1.0..=31_536_000.0).contains(&v) {
        return Err(format!("{v} is out of range (1 to 31536000 seconds)"));
    }
    Ok(v)
}

/// A time in seconds a flag or config entry may hold: 0 to one day.
fn check_seconds(v: f64) -> Result<f64, String> {
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
                .ok()
                .filter(|&c| c < libc::CPU_SETSIZE as usize)
                .ok_or_else(|| format!("bad CPU number '{x}' in '{s}'"))
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
    fn default_is_the_flags_defaults() {
        let mut parsed = load(&[]).unwrap();
        // The environment may set these for the parsed one only.
        (parsed.auth_secret, parsed.api_key, parsed.broker_password) = (None, None, None);
        assert_eq!(Config::default(), parsed);
        assert!(!Config::default().failpoints);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2-3").unwrap().0, vec![0, 2, 3]);
        assert_eq!(parse_cpu_list("3,1,1").unwrap().0, vec![1, 3]);
        assert!(parse_cpu_list("2-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("0-18446744073709551615").is_err());
    }

    #[test]
    fn message_limits_stay_within_one_gib() {
        assert_eq!(parse_message_bytes("1073741824"), Ok(1 << 30));
        let too_big = parse_message_bytes("1073741825").unwrap_err();
        assert!(too_big.contains("1 GiB"), "{too_big}");
        assert!(parse_message_bytes("0").is_err());
        assert!(parse_message_bytes("lots").is_err());
    }

    #[test]
    fn cpu_lists_print_as_they_parse() {
        for text in ["0,2-3", "1", "0-3,7", "0,2,4-5,9-11"] {
            let list = parse_cpu_list(text).unwrap();
            assert_eq!(list.to_string(), text);
            assert_eq!(parse_cpu_list(&list.to_string()).unwrap(), list);
        }
    }

    /// Loads `args` (without the program name).
    fn load(args: &[&str]) -> Result<Config, LoadError> {
        Config::from_args_and_file(std::iter::once("ringcast").chain(args.iter().copied()))
    }

    /// Loads `args` with `--config` naming a file that holds `toml`; file
    /// errors come back as their message.
    fn with_file(toml: &str, args: &[&str]) -> Result<Config, String> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ringcast-config-test-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, toml).unwrap();
        let path_arg = path.to_str().unwrap();
        let mut all = vec!["--config", path_arg];
        all.extend_from_slice(args);
        let result = load(&all);
        std::fs::remove_file(&path).unwrap();
        match result {
            Ok(mut cfg) => {
                assert_eq!(cfg.config.as_deref(), Some(path.as_path()));
                cfg.config = None;
                Ok(cfg)
            }
            Err(LoadError::File(msg)) => {
                assert!(msg.contains(path_arg), "{msg:?} does not name the file");
                Err(msg)
            }
            Err(LoadError::Clap(e)) => panic!("clap error: {e}"),
        }
    }

    #[test]
    fn file_values_apply() {
        let cfg = with_file(
            r#"
            listen = "0.0.0.0:9100"
            max-connections = 1000
            shutdown-grace = 2      # an integer for a float flag
            ping-min = 2.5
            cpus = "0,2-3"
            backlog = -1            # a value that looks like a flag
            log = "debug"
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:9100".parse().unwrap());
        assert_eq!(cfg.max_connections, 1000);
        assert_eq!(cfg.shutdown_grace, 2.0);
        assert_eq!(cfg.ping_min, 2.5);
        assert_eq!(cfg.cpus, Some(CpuList(vec![0, 2, 3])));
        assert_eq!(cfg.backlog, -1);
        assert_eq!(cfg.log.as_deref(), Some("debug"));
        // What the file leaves out keeps its default.
        assert_eq!(cfg.max_header_bytes, load(&[]).unwrap().max_header_bytes);
    }

    #[test]
    fn command_line_beats_file() {
        let toml = r#"
            listen = "0.0.0.0:9100"
            max-connections = 1000
            allowed-origins = ["https://file"]
            cores = 1
        "#;
        let args = [
            "--max-connections",
            "5",
            "--allowed-origins",
            "https://cli",
            "--cpus",
            "0",
        ];
        let cfg = with_file(toml, &args).unwrap();
        assert_eq!(cfg.max_connections, 5);
        assert_eq!(cfg.listen, "0.0.0.0:9100".parse().unwrap());
        // Lists are replaced, not appended to.
        assert_eq!(cfg.allowed_origins, ["https://cli"]);
        // The file's `cores` yields to the conflicting `--cpus`.
        assert_eq!((cfg.cores, cfg.cpus), (None, Some(CpuList(vec![0]))));
    }

    #[test]
    fn snake_case_keys() {
        let cfg = with_file("max_connections = 7\nmax-body-bytes = 9", &[]).unwrap();
        assert_eq!((cfg.max_connections, cfg.max_body_bytes), (7, 9));
        let err = with_file("max_connections = 7\nmax-connections = 8", &[]).unwrap_err();
        assert!(err.contains("set the same flag"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = with_file("max-conections = 3", &[]).unwrap_err();
        assert!(err.ends_with(r#": unknown key "max-conections""#), "{err}");
        let err = with_file("[server]\nlisten = \"0.0.0.0:1\"", &[]).unwrap_err();
        assert!(err.contains(r#"unknown key "server""#), "{err}");
        for key in ["config", "print-config", "print_config", "help"] {
            let err = with_file(&format!("{key} = \"x\""), &[]).unwrap_err();
            assert!(
                err.contains(&format!(r#"key "{key}" cannot be set"#)),
                "{err}"
            );
        }
    }

    #[test]
    fn wrong_types_and_bad_files() {
        let cases = [
            (
                "max-connections = \"lots\"",
                r#"key "max-connections": invalid value 'lots'"#,
            ),
            (
                "max-connections = 1.5",
                r#"key "max-connections": invalid value '1.5'"#,
            ),
            (
                "max-connections = true",
                r#"key "max-connections": expected a string or number"#,
            ),
            (
                "listen = [\"0.0.0.0:1\"]",
                r#"key "listen": expected a single value"#,
            ),
            (
                "log = { level = 1 }",
                r#"key "log": expected a string or number, found table"#,
            ),
            (
                "allowed-origins = [[\"a\"]]",
                r#"key "allowed-origins": expected a string"#,
            ),
            (
                "shutdown-grace = -1",
                r#"key "shutdown-grace": invalid value '-1': -1 is out"#,
            ),
            ("cpus = \"2-1\"", r#"key "cpus": invalid value '2-1'"#),
            (
                "cores = 1\ncpus = \"0\"",
                r#"keys "cores" and "cpus" cannot both be set"#,
            ),
            (
                "api-key = \"<redacted>\"",
                r#"key "api-key": "<redacted>" is"#,
            ),
            ("listen = ", "invalid TOML"),
        ];
        for (toml, want) in cases {
            let err = with_file(toml, &[]).unwrap_err();
            assert!(err.contains(want), "{toml:?}: {err:?} lacks {want:?}");
        }
        // A bad entry fails even when the command line overrides it.
        let err = with_file("max-connections = \"lots\"", &["--max-connections", "1"]);
        assert!(err.is_err());
        let missing = "/nonexistent/ringcast.toml";
        match load(&["--config", missing]) {
            Err(LoadError::File(msg)) => {
                assert!(msg.starts_with(&format!("config {missing}: cannot read")))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn command_line_errors_stay_clap_errors() {
        for (args, kind) in [
            (&["--help"][..], clap::error::ErrorKind::DisplayHelp),
            (&["--version"], clap::error::ErrorKind::DisplayVersion),
            (&["--bogus"], clap::error::ErrorKind::UnknownArgument),
            (
                &["--config", "/nonexistent", "--backlog", "x"],
                clap::error::ErrorKind::ValueValidation,
            ),
        ] {
            match load(args) {
                Err(LoadError::Clap(e)) => assert_eq!(e.kind(), kind, "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn arrays_for_allowed_origins() {
        let cfg = with_file(r#"allowed-origins = ["https://a", "https://b"]"#, &[]).unwrap();
        assert_eq!(cfg.allowed_origins, ["https://a", "https://b"]);
        let cfg = with_file(r#"allowed-origins = "https://a,https://b""#, &[]).unwrap();
        assert_eq!(cfg.allowed_origins, ["https://a", "https://b"]);
        let cfg = with_file("allowed-origins = []", &[]).unwrap();
        assert!(cfg.allowed_origins.is_empty());
    }

    #[test]
    fn print_config_round_trips() {
        let args = [
            "--listen=[::1]:9100",
            "--cpus=0,2-3",
            "--max-header-bytes=1",
            "--max-message-bytes=2",
            "--max-send-queue-bytes=3",
            "--shutdown-grace=0.1",
            "--handshake-timeout=1.25",
            "--close-timeout=86400",
            "--backlog=-7",
            "--recv-buffers=8",
            "--recv-buffer-size=4096",
            "--ping-interval=1",
            "--ping-min=0.5",
            "--ping-max=3",
            "--idle-timeout=60",
            "--drain-delay=2",
            "--auth-secret=hunter2-jwt",
            "--allowed-origins=https://a,https://b",
            "--api-key=hunter2-api",
            "--max-body-bytes=5",
            "--max-connections=6",
            "--max-msgs-per-sec=0.3",
            "--msg-burst=1e300",
            "--max-subscriptions=9",
            "--history-size=0",
            "--history-ttl=0.1",
            "--history-max-bytes=10",
            "--history-max-limit=11",
            "--presence-max-clients=12",
            "--presence",
            "--join-leave",
            "--allow-publish=false",
            "--log=ringcast=debug,warn",
            "--broker=redis://127.0.0.1:6390/2",
            "--broker-password=hunter2-redis",
            "--broker-meta-ttl=600",
            "--broker-unsubscribe-delay=0.5",
        ];
        let original = load(&args).unwrap();
        let printed = original.to_toml().unwrap();
        assert!(!printed.contains("hunter2"), "{printed}");
        let mut table: toml::Table = printed.parse().unwrap();
        for key in ["auth-secret", "api-key", "broker-password"] {
            assert_eq!(table.remove(key).unwrap().as_str(), Some(REDACTED));
        }
        let read = with_file(&table.to_string(), &[]).unwrap();
        let mut want = original.clone();
        (want.auth_secret, want.api_key, want.broker_password) = (None, None, None);
        assert_eq!(read, want);
        // And the defaults, `cores` and `--print-config` itself.
        let original = load(&["--cores=1", "--print-config"]).unwrap();
        let mut read = with_file(&original.to_toml().unwrap(), &[]).unwrap();
        read.print_config = true;
        assert_eq!(read, original);
    }

    /// Guards that the file mirrors every flag: each one (but those in
    /// [`NOT_IN_FILE`]) must take some value from a file that changes the
    /// configuration, and `--print-config` must show it. A flag of a new
    /// kind of value may need a new candidate here.
    #[test]
    fn every_flag_can_be_set_from_a_file() {
        let default = load(&[]).unwrap();
        let candidates = [
            "7",
            "2.5",
            r#""127.0.0.1:7""#,
            r#"["https://a"]"#,
            "true",
            "false",
            r#""off""#,
        ];
        let cmd = Config::command();
        let mut tried = 0;
        for arg in cmd.get_arguments() {
            let long = arg.get_long().expect("every flag has a long name");
            if NOT_IN_FILE.contains(&long) {
                continue;
            }
            tried += 1;
            let cfg = candidates
                .iter()
                .find_map(|value| {
                    let cfg = with_file(&format!("{long} = {value}"), &[]).ok()?;
                    (cfg != default).then_some(cfg)
                })
                .unwrap_or_else(|| panic!("no candidate value for {long} works in a file"));
            let printed = cfg.to_toml().unwrap();
            let key = format!("{long} = ");
            assert!(
                printed.lines().any(|l| l.starts_with(&key)),
                "{long}:\n{printed}"
            );
        }
        assert!(tried >= 25, "only {tried} flags");
    }

    #[test]
    fn channel_flag_defaults_are_the_options_defaults() {
        let want = ChannelRules {
            rules: vec![ChannelRule {
                pattern: DEMO_PATTERN.into(),
                options: ChannelOptions {
                    presence: true,
                    join_leave: true,
                    ..ChannelOptions::default()
                },
            }],
            default: ChannelOptions::default(),
        };
        assert_eq!(Config::default().channel_rules(), want);
        assert_eq!(load(&[]).unwrap().channel_rules(), want);
        let cfg = Config::default();
        assert_eq!(
            (
                cfg.history_max_bytes,
                cfg.history_max_limit,
                cfg.presence_max_clients
            ),
            (64 << 20, 1000, 1000)
        );
    }

    #[test]
    fn channel_flags() {
        let cfg = load(&[
            "--history-size=5",
            "--history-ttl=1.5",
            "--history-max-bytes=4096",
            "--history-max-limit=50",
            "--presence-max-clients=7",
            "--presence",
            "--join-leave",
            "--allow-publish",
            "false",
        ])
        .unwrap();
        let want = ChannelOptions {
            history_size: 5,
            history_ttl: Duration::from_millis(1500),
            presence: true,
            join_leave: true,
            allow_publish: false,
        };
        assert_eq!(cfg.channel_rules().default, want);
        assert_eq!(
            (
                cfg.history_max_bytes,
                cfg.history_max_limit,
                cfg.presence_max_clients
            ),
            (4096, 50, 7)
        );
        assert!(load(&["--allow-publish=true"]).unwrap().allow_publish);
        // `--allow-publish` takes a value, and only true or false.
        assert!(matches!(
            load(&["--allow-publish"]),
            Err(LoadError::Clap(_))
        ));
        assert!(matches!(
            load(&["--allow-publish=yes"]),
            Err(LoadError::Clap(_))
        ));
        assert!(matches!(
            load(&["--history-ttl=86401"]),
            Err(LoadError::Clap(_))
        ));
        // From a file, the flags take TOML booleans.
        let cfg = with_file("allow-publish = false\npresence = true", &[]).unwrap();
        assert!(!cfg.allow_publish && cfg.presence);
        let err = with_file("allow-publish = \"maybe\"", &[]).unwrap_err();
        assert!(
            err.contains(r#"key "allow-publish": invalid value 'maybe'"#),
            "{err}"
        );
    }

    /// The file's channel rules, in order, with the given keys.
    const RULES: &str = r#"
        history-size = 50
        presence = true

        [[channels]]
        pattern = "chat:*"
        history_size = 500
        history_ttl = 600
        join_leave = true

        [[channels]]
        pattern = "ticks"
        history_ttl = 0.25
        presence = false
        allow_publish = false

        [[channels]]
        pattern = "*"
    "#;

    #[test]
    fn channel_rules_from_a_file() {
        let cfg = with_file(RULES, &[]).unwrap();
        let flags = ChannelOptions {
            history_size: 50,
            presence: true,
            ..ChannelOptions::default()
        };
        let rules = cfg.channel_rules();
        assert_eq!(rules.default, flags);
        let want = [
            (
                "chat:*",
                ChannelOptions {
                    history_size: 500,
                    history_ttl: Duration::from_secs(600),
                    join_leave: true,
                    ..flags.clone()
                },
            ),
            (
                "ticks",
                ChannelOptions {
                    history_ttl: Duration::from_millis(250),
                    presence: false,
                    allow_publish: false,
                    ..flags.clone()
                },
            ),
            ("*", flags.clone()),
        ];
        let got: Vec<_> = cfg
            .channels
            .iter()
            .map(|r| (r.pattern.as_str(), r.options.clone()))
            .collect();
        assert_eq!(got, want);
        // The file's rules, then the built-in one for /demo.
        assert_eq!(rules.rules[..cfg.channels.len()], cfg.channels[..]);
        assert_eq!(
            rules.rules.last().map(|r| r.pattern.as_str()),
            Some(DEMO_PATTERN)
        );
        assert_eq!(rules.resolve("chat:lobby"), &want[0].1);
        assert_eq!(rules.resolve("ticks"), &want[1].1);
        assert_eq!(rules.resolve("other"), &flags);
        // Inline tables, kebab-case keys and an empty list do as well.
        let cfg = with_file(
            r#"channels = [{ pattern = "a", history-size = 3 }, { pattern = "b*" }]"#,
            &[],
        )
        .unwrap();
        assert_eq!(cfg.channels.len(), 2);
        assert_eq!(cfg.channels[0].options.history_size, 3);
        assert_eq!(cfg.channels[1].pattern, "b*");
        assert!(with_file("channels = []", &[]).unwrap().channels.is_empty());
        // Without a file there are no rules.
        assert!(load(&[]).unwrap().channels.is_empty());
    }

    #[test]
    fn rules_take_the_effective_flags() {
        let cli = [
            "--history-size=7",
            "--history-ttl=9",
            "--join-leave",
            "--allow-publish=false",
        ];
        let cfg = with_file(RULES, &cli).unwrap();
        let [chat, ticks, all] = &cfg.channels[..] else {
            panic!("{:?}", cfg.channels)
        };
        // What a rule sets stays...
        assert_eq!(chat.options.history_size, 500);
        assert_eq!(chat.options.history_ttl, Duration::from_secs(600));
        assert!(!ticks.options.presence);
        // ...what it leaves out follows the command line, else the file.
        assert_eq!(ticks.options.history_size, 7);
        assert!(!chat.options.allow_publish);
        assert!(ticks.options.join_leave);
        assert!(chat.options.presence);
        let flags = ChannelOptions {
            history_size: 7,
            history_ttl: Duration::from_secs(9),
            presence: true,
            join_leave: true,
            allow_publish: false,
        };
        assert_eq!(all.options, flags);
        assert_eq!(cfg.channel_rules().default, flags);
    }

    #[test]
    fn channel_errors_name_the_entry() {
        // Valid rules to put before the bad one.
        let ok = |n: usize| -> String {
            (0..n)
                .map(|i| format!("[[channels]]\npattern = \"ok{i}\"\n"))
                .collect()
        };
        let cases = [
            (
                format!("{}[[channels]]\npattern = \"x\"\nhistroy_size = 1", ok(2)),
                r#": channels[2]: unknown key "histroy_size""#,
            ),
            (
                "[[channels]]\nhistory_size = 1".to_string(),
                r#": channels[0]: missing key "pattern""#,
            ),
            (
                format!("{}[[channels]]\npattern = \"a b*\"", ok(1)),
                ": channels[1]: pattern \"a b*\": ' ' is not allowed in a channel name",
            ),
            (
                format!("{}[[channels]]\npattern = \"\"", ok(1)),
                ": channels[1]: empty pattern",
            ),
            (
                format!("{}[[channels]]\npattern = \"a b\"", ok(1)),
                ": channels[1]: pattern \"a b\": ",
            ),
            (
                "[[channels]]\npattern = 3".to_string(),
                r#": channels[0]: key "pattern": expected a string, found 3"#,
            ),
            (
                format!("{}[[channels]]\npattern = \"y\"\nhistory_size = -1", ok(3)),
                r#": channels[3]: key "history_size": expected a non-negative integer, found -1"#,
            ),
            (
                "[[channels]]\npattern = \"y\"\nhistory_size = 1.5".to_string(),
                r#": channels[0]: key "history_size": expected a non-negative integer, found float"#,
            ),
            (
                "[[channels]]\npattern = \"y\"\nhistory_size = 4294967296".to_string(),
                r#": channels[0]: key "history_size": 4294967296 is too large (at most 4294967295)"#,
            ),
            (
                "[[channels]]\npattern = \"y\"\nhistory_ttl = \"5m\"".to_string(),
                r#": channels[0]: key "history_ttl": expected a number of seconds, found string"#,
            ),
            (
                "[[channels]]\npattern = \"y\"\nhistory_ttl = -1".to_string(),
                r#": channels[0]: key "history_ttl": -1 is out of range (0 to 86400 seconds)"#,
            ),
            (
                "[[channels]]\npattern = \"y\"\nhistory_ttl = nan".to_string(),
                r#": channels[0]: key "history_ttl": NaN is out of range (0 to 86400 seconds)"#,
            ),
            (
                "[[channels]]\npattern = \"y\"\npresence = 1".to_string(),
                r#": channels[0]: key "presence": expected true or false, found 1"#,
            ),
            (
                "[[channels]]\npattern = \"y\"\njoin_leave = \"yes\"".to_string(),
                r#": channels[0]: key "join_leave": expected true or false, found string"#,
            ),
            (
                "[[channels]]\npattern = \"y\"\nallow_publish = []".to_string(),
                r#": channels[0]: key "allow_publish": expected true or false, found array"#,
            ),
            (
                "[[channels]]\npattern = \"y\"\njoin_leave = true\njoin-leave = true".to_string(),
                r#": channels[0]: keys "join-leave" and "join_leave" set the same option"#,
            ),
            (
                format!("{}[[channels]]\npattern = \"b\"\n{}", ok(1), ok(1)),
                r#": channels[2]: pattern "ok0" is already that of channels[0]"#,
            ),
            (
                "channels = 3".to_string(),
                r#": key "channels": expected an array of tables ([[channels]]), found integer"#,
            ),
            (
                "[channels]\npattern = \"y\"".to_string(),
                r#": key "channels": expected an array of tables ([[channels]]), found table"#,
            ),
            (
                "channels = [\"chat:*\"]".to_string(),
                r#": channels[0]: expected a table, found string"#,
            ),
        ];
        for (toml, want) in cases {
            let err = with_file(&toml, &[]).unwrap_err();
            assert!(err.starts_with("config "), "{err}");
            if want.ends_with(": ") {
                assert!(err.contains(want), "{toml:?}: {err:?} lacks {want:?}");
            } else {
                assert!(
                    err.ends_with(want),
                    "{toml:?}: {err:?} does not end in {want:?}"
                );
            }
        }
        // A bad rule fails even when the command line sets every flag.
        let err = with_file(
            "[[channels]]\npattern = \"y\"\npresence = 1",
            &["--presence"],
        );
        assert!(err.is_err());
    }

    #[test]
    fn channels_print_and_round_trip() {
        let original = with_file(RULES, &["--history-ttl=0.1", "--max-connections=3"]).unwrap();
        let printed = original.to_toml().unwrap();
        assert_eq!(printed.matches("[[channels]]").count(), 3, "{printed}");
        let table: toml::Table = printed.parse().unwrap();
        let rules = table["channels"].as_array().unwrap();
        for rule in rules {
            let keys: Vec<_> = rule
                .as_table()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut want = RULE_KEYS.to_vec();
            want.sort_unstable();
            let mut keys = keys;
            keys.sort_unstable();
            assert_eq!(keys, want, "{printed}");
        }
        // The printout is a config file that gives the same configuration,
        // whatever the command line then says (every rule key is explicit).
        assert_eq!(with_file(&printed, &[]).unwrap(), original);
        let changed = with_file(&printed, &["--history-size=1"]).unwrap();
        assert_eq!(changed.channels, original.channels);
        // Without rules no `channels` key is printed.
        let printed = load(&[]).unwrap().to_toml().unwrap();
        assert!(!printed.contains("channels"), "{printed}");
    }
}
