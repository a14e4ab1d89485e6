//! Configuration: command-line flags, optionally on top of a TOML file
//! (`--config`) that mirrors them.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{ArgMatches, ColorChoice, CommandFactory, FromArgMatches, Parser};
use serde::{Serialize, Serializer};

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
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Most frames one message may be split into (else close 1009).
    #[arg(long, default_value_t = 131_072)]
    pub max_fragments: u32,

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

    /// Key for the publish API (`Authorization: Bearer KEY` or
    /// `X-Api-Key: KEY`). Without it the API answers 403.
    #[arg(long, env = "RINGCAST_API_KEY", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redact")]
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
        let mut all = vec![bin.clone()];
        all.extend(
            file_args(&path, &cli, &bin)
                .map_err(in_file)?
                .into_iter()
                .map(OsString::from),
        );
        all.extend(args.into_iter().skip(1));
        let matches = Config::command()
            .color(ColorChoice::Never)
            .try_get_matches_from(all)
            .map_err(|e| in_file(clap_reason(&e)))?;
        Config::from_arg_matches(&matches).map_err(|e| in_file(clap_reason(&e)))
    }

    /// The configuration as a `--config` file, for `--print-config`: `None`
    /// options are left out, secrets are shown as `"<redacted>"`.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| format!("cannot print the configuration: {e}"))
    }
}

/// The arguments the config file at `path` stands for, minus those the
/// command line (`cli`) or the environment overrides. Every entry is
/// checked, overridden or not, so a bad file fails the same way always.
fn file_args(path: &Path, cli: &ArgMatches, bin: &OsString) -> Result<Vec<String>, String> {
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
    for (key, value) in &table {
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
    Ok(out)
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

/// As the `--cpus` string, so a printed config round-trips.
impl Serialize for CpuList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

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
        (parsed.auth_secret, parsed.api_key) = (None, None);
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
            "--log=ringcast=debug,warn",
        ];
        let original = load(&args).unwrap();
        let printed = original.to_toml().unwrap();
        assert!(!printed.contains("hunter2"), "{printed}");
        let mut table: toml::Table = printed.parse().unwrap();
        for key in ["auth-secret", "api-key"] {
            assert_eq!(table.remove(key).unwrap().as_str(), Some(REDACTED));
        }
        let read = with_file(&table.to_string(), &[]).unwrap();
        let mut want = original.clone();
        (want.auth_secret, want.api_key) = (None, None);
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
        let candidates = ["7", "2.5", r#""127.0.0.1:7""#, r#"["https://a"]"#, "true"];
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
}
