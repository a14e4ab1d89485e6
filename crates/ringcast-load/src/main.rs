//! `ringcast-load`: the load generator for ringcast and its baseline.
//!
//! Scenarios: `echo` (closed loop), `broadcast` (open loop, paced
//! publisher), `publish` (closed loop of acknowledged `/ws` publishes),
//! `idle` (open and hold connections) and `churn` (connect, handshake, one
//! echo, close, repeat). Connections are spread round-robin over one or
//! more server addresses (`--addr` repeated: several nodes sharing channels
//! through a broker). Each thread runs one io_uring loop over
//! its connections with frames encoded in advance. With `--server-pid` the
//! server's CPU time and memory are read from /proc around the measured
//! window (summed over the processes when `--server-pid` is repeated),
//! giving work per server CPU-second: the figure that stays meaningful when
//! the generator, not the server, is the limit. `--watch-pid NAME=PID`
//! measures another process (a broker) the same way, reported apart. The
//! generator reports its own CPU use too. `--deflate` negotiates
//! permessage-deflate (RFC 7692) and inflates what arrives compressed; the
//! bytes on the wire are counted either way, and `--payload json` sends
//! realistic JSON instead of filler. `wss://` addresses run every scenario
//! over TLS (rustls, one `ClientConnection` per connection, driven by the
//! same loop), trusting `--ca` (or nothing: `--insecure-tls`); TLS sessions
//! are not resumed unless `--tls-resume`, so `churn` measures full
//! handshakes. A human summary is printed, then one JSON line.

mod deflate;
mod payload;
mod procfs;
mod stream;
mod tls;
mod wire;
mod worker;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;

use wire::now_ns;
use worker::{
    Outcome, Plan, Scenario, Shared, StreamStats, TlsPlan, TlsStats, WireStats, Worker,
    PLACEMENT_ATTEMPTS,
};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Kind {
    Echo,
    Broadcast,
    Publish,
    Idle,
    Churn,
}

/// What message bodies carry.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum PayloadKind {
    /// Repeated bytes (the send time in place): the cheapest to produce,
    /// unrealistically compressible.
    Filler,
    /// Chat/event-like JSON objects of exactly `--size` bytes, varying ids,
    /// names, numbers and text (a pool of 64 per thread); text frames.
    Json,
}

/// Load generator for WebSocket servers with /echo and /broadcast.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Scenario to run.
    #[arg(value_enum)]
    scenario: Kind,
    /// Server address: host:port or ws://host:port, or wss://host:port for
    /// TLS (every scenario runs over TLS; needs --ca or --insecure-tls). A
    /// path after it is ignored (the scenario picks the path). Repeat it
    /// for several servers (nodes of one cluster), all ws:// or all wss://:
    /// connection N goes to address N mod the count (round-robin), and so
    /// do broadcast publishers.
    #[arg(long, visible_alias = "url", default_value = "127.0.0.1:9001")]
    addr: Vec<String>,
    /// wss://: the PEM certificates to trust (the CA that signed the
    /// server's certificate, or a self-signed server certificate with
    /// CA:FALSE itself); the server's certificate must name the host of the
    /// address (an IP address or a DNS name). Required for wss:// unless
    /// --insecure-tls.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// wss:// WITHOUT verifying the server's certificate: any certificate,
    /// any name is accepted (no --ca needed). For a quick look only; only
    /// the chain and name checks are skipped (the handshake's signatures
    /// are still verified).
    #[arg(long, conflicts_with = "ca")]
    insecure_tls: bool,
    /// wss://: the TLS versions offered (1.2, 1.3, or any: the server
    /// picks, 1.3 when it has it).
    #[arg(long, value_enum, default_value = "any")]
    tls_version: tls::Version,
    /// wss://: keep TLS sessions and resume them when reconnecting (churn).
    /// Without it every handshake is a full one.
    #[arg(long)]
    tls_resume: bool,
    /// Connections: echo clients, broadcast subscribers, publish clients,
    /// idle connections.
    #[arg(long)]
    conns: Option<usize>,
    /// Echo: messages each connection keeps in flight. Publish: publishes
    /// each connection keeps awaiting their ack.
    #[arg(long, visible_alias = "inflight", default_value_t = 16)]
    in_flight: usize,
    /// Message payload size in bytes.
    #[arg(long)]
    size: Option<usize>,
    /// Echo: send binary messages (default: text).
    #[arg(long)]
    binary: bool,
    /// Message bodies: filler bytes or realistic JSON (echo, broadcast,
    /// publish). JSON bodies go in text frames; on a `/ws` channel the
    /// body is the publication's payload object.
    #[arg(long, value_enum, default_value = "filler")]
    payload: PayloadKind,
    /// Offer permessage-deflate (`Sec-WebSocket-Extensions: permessage-deflate;
    /// client_max_window_bits`) on every connection but the broadcast
    /// publishers, fail at once if the server does not grant it (with
    /// server_no_context_takeover), and inflate compressed messages before
    /// measuring them. Echo and churn clients send their messages
    /// compressed too (both directions measured).
    #[arg(long)]
    deflate: bool,
    /// Without --deflate: pad the upgrade request with an ignored header as
    /// long as the deflate offer, so a plain and a deflate run send requests
    /// of one length (idle-deflate compares their RSS per connection).
    #[arg(long, conflicts_with = "deflate")]
    pad_upgrade: bool,
    /// Broadcast: messages per second the publisher sends.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Broadcast through a `/ws` channel of this name instead of
    /// `/broadcast` (subscribe, then JSON publish messages). Publish: the
    /// channel published to (default `bench`).
    #[arg(long, value_parser = parse_channel)]
    channel: Option<String>,
    /// Broadcast: publisher connections sharing `--rate` (round-robin). On a
    /// `/ws` channel each is placed on a different server core, by the
    /// `core` of the server's welcome (up to 64 connections tried; then
    /// publishers may share a core, and the summary says so).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    publishers: u64,
    /// Churn: connect/echo/close loops running in parallel.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Idle: handshakes in flight per thread while opening.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Generator threads (one event loop each). Default: available CPUs.
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds measured (after warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Spread client sockets over source addresses 127.0.0.1 ..= 127.0.0.N
    /// (each gives ~28k ports towards one server address). Default: enough
    /// for the connection count.
    #[arg(long)]
    sources: Option<usize>,
    /// Server process to measure (CPU seconds, RSS) around the window.
    /// Repeat it for several servers: the figures are their sums.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Another process to measure around the window, reported apart from
    /// the server under NAME (e.g. `redis=1234` for a broker). Repeatable.
    #[arg(long, value_name = "NAME=PID", value_parser = parse_named_pid)]
    watch_pid: Vec<(String, u32)>,
    /// A label copied into the JSON line (e.g. the server's name).
    #[arg(long)]
    label: Option<String>,
    /// A `perf stat --control fifo:PATH` control FIFO: the generator writes
    /// `enable` at the start of the measured window and `disable` at its
    /// end, so perf counts exactly the window. Repeatable (one perf per
    /// server).
    #[arg(long)]
    perf_ctl: Vec<std::path::PathBuf>,
    /// Give up if connections are not all open within this many seconds.
    #[arg(long, default_value_t = 60.0)]
    open_timeout: f64,
    /// Broadcast: seconds to wait after the window for the deliveries of
    /// messages published in it (on a busy host a subscriber can lag).
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
}

/// `NAME=PID` of `--watch-pid`.
fn parse_named_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=PID"))?;
    if name.is_empty() {
        return Err(format!("{s:?}: empty NAME"));
    }
    let pid = pid
        .parse::<u32>()
        .map_err(|e| format!("{s:?}: bad PID: {e}"))?;
    Ok((name.to_string(), pid))
}

/// Samples every process of `pids`; `None` if any is missing (or none).
fn sample_all(pids: &[u32]) -> Option<Vec<procfs::Sample>> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| procfs::sample(p)).collect()
}

/// One `--addr`: where to connect, whether over TLS, and the host as
/// written (a TLS connection's server name).
#[derive(Debug, PartialEq, Eq)]
struct Target {
    addr: SocketAddr,
    tls: bool,
    host: String,
}

fn resolve(addr: &str) -> Result<Target, String> {
    let (tls, rest) = match addr.strip_prefix("wss://") {
        Some(r) => (true, r),
        None => (false, addr.strip_prefix("ws://").unwrap_or(addr)),
    };
    let a = rest.split('/').next().unwrap_or(rest);
    let host = a.rsplit_once(':').map_or(a, |(h, _)| h).to_string();
    let sa = a
        .to_socket_addrs()
        .map_err(|e| format!("bad --addr {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("--addr {addr} resolved to nothing"))?;
    Ok(Target {
        addr: sa,
        tls,
        host,
    })
}

/// The TLS side of the plan: `None` for ws:// targets (and then no TLS
/// flag may be given), else the shared client configuration and each
/// target's server name.
fn tls_plan(args: &Args, targets: &[Target]) -> Result<Option<TlsPlan>, String> {
    let any_tls = targets.iter().any(|t| t.tls);
    if targets.iter().any(|t| t.tls != any_tls) {
        return Err("every --addr must be ws:// (or host:port) or every one wss://".into());
    }
    if !any_tls {
        if args.ca.is_some() || args.insecure_tls || args.tls_resume {
            return Err("--ca, --insecure-tls and --tls-resume are for wss:// addresses".into());
        }
        if args.tls_version != tls::Version::Any {
            return Err("--tls-version is for wss:// addresses".into());
        }
        return Ok(None);
    }
    let trust = match (&args.ca, args.insecure_tls) {
        (Some(path), _) => tls::Trust::Ca(path),
        (None, true) => tls::Trust::Insecure,
        (None, false) => {
            return Err(
                "wss:// needs --ca FILE (the PEM CA or certificate to trust), or --insecure-tls to skip verification"
                    .into(),
            )
        }
    };
    let config = tls::client_config(trust, args.tls_version, args.tls_resume)?;
    let names = targets
        .iter()
        .map(|t| tls::server_name(&t.host))
        .collect::<Result<_, _>>()?;
    Ok(Some(TlsPlan { config, names }))
}

fn parse_channel(s: &str) -> Result<String, String> {
    ringcast::internals::protocol::validate_channel(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.message)
}

fn sleep_until(t_ns: u64) {
    let now = now_ns();
    if t_ns > now {
        thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("ringcast-load: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    ringcast::internals::raise_nofile();
    let json_bodies = args.payload == PayloadKind::Json;
    if json_bodies && args.binary {
        return Err("--binary and --payload json do not mix (JSON goes in text frames)".into());
    }
    let targets: Vec<Target> = args
        .addr
        .iter()
        .map(|a| resolve(a))
        .collect::<Result<_, _>>()?;
    let tls = tls_plan(args, &targets)?;
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
    if addrs.iter().any(|a| a.is_ipv6() != addrs[0].is_ipv6()) {
        return Err("every --addr must be of one address family".into());
    }
    let addr_list = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let threads = args
        .threads
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // A JSON body is never shorter than its skeleton.
    let size_or = |default: usize| {
        let s = args.size.unwrap_or(default);
        if json_bodies {
            s.max(payload::MIN_JSON)
        } else {
            s
        }
    };
    let (scenario, conns, size) = match args.scenario {
        Kind::Echo => (
            Scenario::Echo {
                in_flight: args.in_flight.max(1),
                size: size_or(32),
                binary: args.binary,
            },
            args.conns.unwrap_or(100),
            size_or(32),
        ),
        Kind::Broadcast => (
            Scenario::Broadcast {
                rate: args.rate.max(1),
                size: size_or(64).max(16),
                channel: args.channel.clone(),
                publishers: args.publishers as usize,
            },
            args.conns.unwrap_or(1000),
            size_or(64).max(16),
        ),
        Kind::Publish => (
            Scenario::Publish {
                in_flight: args.in_flight.max(1),
                size: size_or(64),
                channel: args.channel.clone().unwrap_or_else(|| "bench".into()),
            },
            args.conns.unwrap_or(1),
            size_or(64),
        ),
        Kind::Idle => (
            Scenario::Idle {
                concurrency: args.concurrency,
            },
            args.conns.unwrap_or(1000),
            0,
        ),
        Kind::Churn => (Scenario::Churn, args.parallel.max(1), 32),
    };
    let per_source = 25_000usize;
    let sources_n = args
        .sources
        .unwrap_or_else(|| conns.div_ceil(per_source))
        .clamp(1, 254);
    let sources: Vec<IpAddr> = if addrs.iter().all(|a| a.is_ipv4() && a.ip().is_loopback()) {
        (1..=sources_n as u8)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect()
    } else {
        vec![]
    };
    let threads = threads.min(conns.max(1));
    let conns_per_worker: Vec<usize> = (0..threads)
        .map(|i| conns / threads + usize::from(i < conns % threads))
        .collect();
    let first_conn: Vec<usize> = conns_per_worker
        .iter()
        .scan(0, |acc, &n| {
            let s = *acc;
            *acc += n;
            Some(s)
        })
        .collect();
    let plan = Arc::new(Plan {
        addrs: addrs.clone(),
        sources: sources.clone(),
        scenario: scenario.clone(),
        conns_per_worker,
        first_conn,
        publisher_worker: 0,
        deflate: args.deflate,
        pad_upgrade: args.pad_upgrade,
        json: json_bodies,
        tls,
    });
    let shared = Arc::new(Shared::default());

    let server_before_start = sample_all(&args.server_pid);
    let gen_before_start = procfs::self_cpu_seconds();
    let open_started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let plan = plan.clone();
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("load-{i}"))
                .spawn(move || match Worker::new(i, plan, shared) {
                    Ok(w) => Ok(w.run()),
                    Err(e) => Err(format!("worker {i}: {e}")),
                })
                .map_err(|e| format!("spawning worker: {e}"))
        })
        .collect::<Result<_, _>>()?;

    // Wait for every connection (churn: none to wait for).
    let must_open = if args.scenario == Kind::Churn {
        0
    } else {
        conns
    };
    let deadline = Instant::now() + Duration::from_secs_f64(args.open_timeout);
    while shared.opened.load(Ordering::Relaxed) < must_open {
        let fatal = shared.fatal.lock().ok().and_then(|f| f.clone());
        if let Some(msg) = fatal {
            shared.stop.store(true, Ordering::SeqCst);
            join(handles);
            return Err(msg);
        }
        if Instant::now() > deadline || handles.iter().all(|h| h.is_finished()) {
            shared.stop.store(true, Ordering::SeqCst);
            let errs: Vec<String> = join(handles)
                .into_iter()
                .filter_map(|o| o.ok()?.first_error)
                .collect();
            return Err(format!(
                "only {} of {} connections opened ({} failed); first error: {}",
                shared.opened.load(Ordering::Relaxed),
                must_open,
                shared.failed.load(Ordering::Relaxed),
                errs.first().map_or("none", String::as_str)
            ));
        }
        thread::sleep(Duration::from_millis(2));
    }
    let open_secs = open_started.elapsed().as_secs_f64();
    // The server's CPU over the opening: with the generator the limit on the
    // opening rate (its CPU is the one saturated), handshakes per server
    // CPU-s is the figure that compares servers.
    let open_cpu_s = match (&server_before_start, sample_all(&args.server_pid)) {
        (Some(a), Some(b)) => Some(
            a.iter()
                .zip(&b)
                .map(|(a, b)| procfs::Delta::between(*a, *b).cpu_s)
                .sum::<f64>(),
        ),
        _ => None,
    };
    let open_gen_cpu_s = procfs::self_cpu_seconds() - gen_before_start;
    if args.scenario == Kind::Broadcast {
        shared.publish.store(true, Ordering::Release);
        // The publishers are more connections, placed by the publisher's
        // worker.
        let deadline = Instant::now() + Duration::from_secs_f64(args.open_timeout);
        while !shared.publishers_placed.load(Ordering::Acquire) {
            if Instant::now() > deadline {
                shared.stop.store(true, Ordering::SeqCst);
                join(handles);
                return Err("publishers did not connect".into());
            }
            thread::sleep(Duration::from_millis(1));
        }
        if shared.publishers_up.load(Ordering::Relaxed) == 0 {
            shared.stop.store(true, Ordering::SeqCst);
            let first = join(handles)
                .into_iter()
                .find_map(|o| o.ok()?.first_error)
                .unwrap_or_else(|| "none".into());
            return Err(format!("no publisher connected; first error: {first}"));
        }
    }

    // The measured window.
    let idle_settle = if args.scenario == Kind::Idle {
        1.0
    } else {
        0.0
    };
    let start = now_ns() + ((args.warmup + idle_settle) * 1e9) as u64;
    let end = start + (args.duration * 1e9) as u64;
    shared.window_end.store(end, Ordering::SeqCst);
    shared.window_start.store(start, Ordering::SeqCst);
    let mut perf = args
        .perf_ctl
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(|e| format!("opening perf control fifo {}: {e}", p.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    sleep_until(start);
    perf_command(&mut perf, "enable");
    let server_a = sample_all(&args.server_pid);
    let watched_a: Vec<Option<procfs::Sample>> = args
        .watch_pid
        .iter()
        .map(|(_, p)| procfs::sample(*p))
        .collect();
    let self_a = procfs::self_cpu_seconds();
    sleep_until(end);
    perf_command(&mut perf, "disable");
    let server_b = sample_all(&args.server_pid);
    let watched_b: Vec<Option<procfs::Sample>> = args
        .watch_pid
        .iter()
        .map(|(_, p)| procfs::sample(*p))
        .collect();
    let self_b = procfs::self_cpu_seconds();
    let window_s = (end - start) as f64 / 1e9;

    // Broadcast: let in-flight deliveries of in-window messages arrive.
    let mut drain_s = 0.0;
    if args.scenario == Kind::Broadcast {
        let t = Instant::now();
        let expected = || shared.published_in_window.load(Ordering::Relaxed) * conns as u64;
        while shared.delivered.load(Ordering::Relaxed) < expected()
            && t.elapsed() < Duration::from_secs_f64(args.drain)
        {
            thread::sleep(Duration::from_millis(5));
        }
        drain_s = t.elapsed().as_secs_f64();
    }
    shared.stop.store(true, Ordering::SeqCst);
    let outcomes: Vec<Outcome> = join(handles).into_iter().collect::<Result<_, _>>()?;
    // A failure that voids the run after the connections were open (churn
    // opens connections all along).
    if let Some(msg) = shared.fatal.lock().ok().and_then(|f| f.clone()) {
        return Err(msg);
    }

    // ----- aggregate and report -----------------------------------------
    let mut lat =
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string())?;
    let mut hs = lat.clone();
    let (mut count, mut bytes, mut published, mut errors, mut lag, mut opened, mut last_open) =
        (0, 0, 0, 0, 0, 0, 0);
    let mut first_error = None;
    let mut st = StreamStats::default();
    let mut wire_st = WireStats::default();
    let mut extension: Option<String> = None;
    let mut client_compressed: Option<(usize, usize)> = None;
    let mut tls_st = TlsStats::default();
    for o in &outcomes {
        tls_st.handshakes += o.tls.handshakes;
        tls_st.resumed += o.tls.resumed;
        tls_st.mixed += o.tls.mixed;
        match (&tls_st.session, &o.tls.session) {
            (None, s) => tls_st.session.clone_from(s),
            (Some(a), Some(b)) if !a.same_parameters(b) => {
                tls_st.mixed += 1;
            }
            _ => {}
        }
        wire_st.add(&o.wire);
        if extension.is_none() {
            extension.clone_from(&o.extension);
        }
        client_compressed = client_compressed.or(o.client_compressed);
        let s = &o.stream;
        st.with_offset += s.with_offset;
        st.without_offset += s.without_offset;
        st.gaps += s.gaps;
        st.gap_offsets += s.gap_offsets;
        st.reorders += s.reorders;
        st.welcomes += s.welcomes;
        for (&core, &n) in &s.subscriber_cores {
            *st.subscriber_cores.entry(core).or_default() += n;
        }
        st.publisher_cores.extend_from_slice(&s.publisher_cores);
        st.publisher_targets.extend_from_slice(&s.publisher_targets);
        st.publisher_attempts += s.publisher_attempts;
        st.placement_gave_up |= s.placement_gave_up;
        st.publish_acks += s.publish_acks;
        st.last_offset = st.last_offset.max(s.last_offset);
        lat.add(&o.latency_us).map_err(|e| e.to_string())?;
        hs.add(&o.handshake_us).map_err(|e| e.to_string())?;
        count += o.count;
        bytes += o.bytes;
        published += o.published;
        errors += o.errors;
        lag = lag.max(o.publisher_lag_us);
        opened += o.opened;
        last_open = last_open.max(o.last_open_ns);
        if first_error.is_none() {
            first_error.clone_from(&o.first_error);
        }
    }
    let _ = last_open;
    if wire_st.mismatches > 0 {
        errors += wire_st.mismatches;
        first_error.get_or_insert_with(|| "an echo reply differed from the message sent".into());
    }
    let rate = count as f64 / window_s;
    // Per server process, then their sum.
    let server_each: Vec<procfs::Delta> = match (&server_a, &server_b) {
        (Some(a), Some(b)) => a
            .iter()
            .zip(b)
            .map(|(a, b)| procfs::Delta::between(*a, *b))
            .collect(),
        _ => Vec::new(),
    };
    let server = (!server_each.is_empty()).then(|| procfs::Delta::sum(&server_each));
    let server_before_start = server_before_start.map(|v| v.iter().map(|s| s.rss).sum::<u64>());
    let gen_cpu = self_b - self_a;
    let pct = |q: f64| lat.value_at_quantile(q);
    let unit = match args.scenario {
        Kind::Echo => "messages",
        Kind::Broadcast => "deliveries",
        Kind::Publish => "acks",
        Kind::Idle => "connections",
        Kind::Churn => "cycles",
    };
    let one = match args.scenario {
        Kind::Echo => "message",
        Kind::Broadcast => "delivery",
        Kind::Publish => "ack",
        Kind::Idle => "connection",
        Kind::Churn => "cycle",
    };
    // Per counted message (echo, delivery): payload bytes as received and
    // once inflated; bytes read from the sockets in the window per message
    // that arrived in it.
    let per_msg = |b: u64| (count > 0).then(|| b as f64 / count as f64);
    let read_per_msg =
        (wire_st.arrived > 0).then(|| wire_st.read_bytes as f64 / wire_st.arrived as f64);
    let wire_payload = wire_st.compressed_wire_bytes + wire_st.plain_bytes;
    let inflated = wire_st.compressed_bytes + wire_st.plain_bytes;
    let ratio = (wire_st.compressed_wire_bytes > 0)
        .then(|| wire_st.compressed_bytes as f64 / wire_st.compressed_wire_bytes as f64);

    let label = args.label.clone().unwrap_or_default();
    let tls_on = plan.tls.is_some();
    println!(
        "ringcast-load {:?} against {}{addr_list}{}{}{}",
        args.scenario,
        if tls_on { "wss://" } else { "" },
        if label.is_empty() {
            String::new()
        } else {
            format!(" ({label})")
        },
        if json_bodies { ", JSON bodies" } else { "" },
        match &extension {
            Some(e) => format!(", {e}"),
            None if args.deflate => ", permessage-deflate offered".to_string(),
            None => String::new(),
        }
    );
    match args.scenario {
        Kind::Echo => println!(
            "  {conns} connections x {} in flight x {size} B {}, {threads} threads, {window_s:.1} s measured",
            args.in_flight,
            if args.binary { "binary" } else { "text" }
        ),
        Kind::Broadcast => println!(
            "  {conns} subscribers, {} at {} msg/s x {size} B{}, {threads} threads, {window_s:.1} s measured",
            if args.publishers == 1 {
                "publisher".to_string()
            } else {
                format!("{} publishers", args.publishers)
            },
            args.rate,
            args.channel
                .as_ref()
                .map_or(String::new(), |c| format!(" on /ws channel {c}"))
        ),
        Kind::Publish => println!(
            "  {conns} connection{} x {} publishes in flight x {size} B on /ws channel {}, {threads} threads, {window_s:.1} s measured",
            if conns == 1 { "" } else { "s" },
            args.in_flight,
            args.channel.as_deref().unwrap_or("bench")
        ),
        Kind::Idle => println!("  {conns} connections held, {threads} threads"),
        Kind::Churn => println!("  {conns} parallel loops, {threads} threads, {window_s:.1} s measured"),
    }
    let verified = match (&args.ca, args.insecure_tls) {
        (Some(ca), _) => format!("certificate verified against {}", ca.display()),
        _ => "certificate NOT verified (--insecure-tls)".to_string(),
    };
    if tls_on {
        let s = tls_st.session.clone().unwrap_or_default();
        println!(
            "  tls: {} {} {}, ALPN {}; {} handshakes ({} resumed{}){}; {verified}",
            s.version,
            s.cipher,
            s.kx.as_deref().unwrap_or("(no key exchange)"),
            s.alpn.as_deref().unwrap_or("none"),
            tls_st.handshakes,
            tls_st.resumed,
            if args.tls_resume {
                ", resumption on"
            } else {
                ", resumption off: full handshakes"
            },
            if tls_st.mixed > 0 {
                format!(", {} negotiated something else", tls_st.mixed)
            } else {
                String::new()
            }
        );
    }
    let mut expected = None;
    let mut loss = None;
    match args.scenario {
        Kind::Idle => {
            println!(
                "  opened {opened} connections in {open_secs:.2} s: {:.0} handshakes/s (handshake p50 {} us, p99 {} us)",
                opened as f64 / open_secs,
                hs.value_at_quantile(0.5),
                hs.value_at_quantile(0.99)
            );
            if let Some(cpu) = open_cpu_s.filter(|c| *c > 0.0) {
                println!(
                    "  opening: server {cpu:.2} CPU-s = {:.0} handshakes per server CPU-s; generator {:.2} CPU-s = {:.0}% of {threads} thread(s)",
                    opened as f64 / cpu,
                    open_gen_cpu_s,
                    open_gen_cpu_s / open_secs / threads as f64 * 100.0
                );
            }
        }
        _ => {
            println!(
                "  {count} {unit} in window: {rate:.0} {unit}/s, {:.1} MB/s payload",
                bytes as f64 / window_s / 1e6
            );
            if count > 0 {
                println!(
                    "  latency us: p50 {} p90 {} p99 {} p99.9 {} max {}",
                    pct(0.5),
                    pct(0.9),
                    pct(0.99),
                    pct(0.999),
                    lat.max()
                );
            }
        }
    }
    if args.scenario == Kind::Publish {
        println!("  published {published} in window, {count} acked in window");
    }
    if args.scenario == Kind::Broadcast {
        let exp = published * conns as u64;
        expected = Some(exp);
        loss = Some(exp.saturating_sub(count));
        println!(
            "  published {published} in window; expected {exp} deliveries, received {count}, lost {} (drained {drain_s:.2} s); publisher max lag {lag} us",
            exp.saturating_sub(count)
        );
    }
    if count > 0 && matches!(args.scenario, Kind::Echo | Kind::Broadcast) {
        println!(
            "  wire: {:.0} B read per {one}; payload {:.0} B received, {:.0} B inflated; {} compressed{}, {} plain",
            read_per_msg.unwrap_or(0.0),
            per_msg(wire_payload).unwrap_or(0.0),
            per_msg(inflated).unwrap_or(0.0),
            wire_st.compressed,
            ratio.map_or(String::new(), |r| format!(" ({r:.2}x)")),
            wire_st.plain,
        );
    }
    if let Some((plain, packed)) = client_compressed {
        println!("  client sends each message compressed: {packed} B for {plain} B");
    }
    let channel_mode = args.scenario == Kind::Broadcast && args.channel.is_some();
    if channel_mode {
        println!(
            "  {}",
            placement_line(&st, args.publishers as usize, &addrs)
        );
        if st.welcomes > 0 {
            let per: Vec<String> = st
                .subscriber_cores
                .iter()
                .map(|(c, n)| format!("core {c}: {n}"))
                .collect();
            println!(
                "  welcome: {} subscribers ({})",
                st.welcomes,
                if per.is_empty() {
                    "no core given".to_string()
                } else {
                    per.join(", ")
                }
            );
        } else {
            println!("  welcome: none (a server without channel streams)");
        }
        if st.with_offset == 0 {
            println!(
                "  order: not checked, no delivery carried an offset ({} without)",
                st.without_offset
            );
        } else {
            println!(
                "  order{}: {} deliveries with offsets (whole run): {} gaps ({} offsets missing), {} duplicates/reorders{}; {} publish acks, last offset {}",
                if st.gaps + st.reorders > 0 { " FAILED" } else { "" },
                st.with_offset,
                st.gaps,
                st.gap_offsets,
                st.reorders,
                if st.without_offset > 0 {
                    format!(", {} without an offset", st.without_offset)
                } else {
                    String::new()
                },
                st.publish_acks,
                st.last_offset.map_or("-".to_string(), |o| o.to_string())
            );
        }
    }
    let mut server_json = serde_json::Value::Null;
    if let Some(d) = server {
        let per_cpu = if d.cpu_s > 0.0 {
            count as f64 / d.cpu_s
        } else {
            0.0
        };
        let rss_hold = d.rss_after;
        let base = server_before_start.unwrap_or(d.rss_before);
        let per_conn = (rss_hold as f64 - base as f64) / conns.max(1) as f64;
        println!(
            "  server: {:.2} CPU-s ({:.2} user + {:.2} sys) = {:.0}% of a core; {}",
            d.cpu_s,
            d.user_s,
            d.sys_s,
            d.cpu_s / window_s * 100.0,
            if args.scenario == Kind::Idle {
                format!(
                    "RSS {:.1} MiB before, {:.1} MiB holding: {per_conn:.0} B per connection",
                    base as f64 / 1048576.0,
                    rss_hold as f64 / 1048576.0
                )
            } else {
                format!(
                    "{per_cpu:.0} {unit} per server CPU-s; RSS {:.1} MiB",
                    rss_hold as f64 / 1048576.0
                )
            }
        );
        if server_each.len() > 1 {
            let per: Vec<String> = args
                .server_pid
                .iter()
                .zip(&server_each)
                .map(|(p, d)| format!("pid {p} {:.0}%", d.cpu_s / window_s * 100.0))
                .collect();
            println!(
                "  server: summed over {} processes ({})",
                server_each.len(),
                per.join(", ")
            );
        }
        server_json = json!({
            "pid": args.server_pid.first(),
            "pids": args.server_pid,
            "each": args.server_pid.iter().zip(&server_each).map(|(p, d)| json!({
                "pid": p, "cpu_s": d.cpu_s, "utilization": d.cpu_s / window_s, "rss": d.rss_after,
            })).collect::<Vec<_>>(),
            "cpu_s": d.cpu_s, "user_s": d.user_s, "sys_s": d.sys_s,
            "utilization": d.cpu_s / window_s,
            "per_cpu_s": per_cpu,
            "rss_before": base, "rss": rss_hold,
            "rss_per_conn": if args.scenario == Kind::Idle { json!(per_conn) } else { serde_json::Value::Null },
        });
    }
    let mut watched_json = serde_json::Map::new();
    for (((name, pid), a), b) in args.watch_pid.iter().zip(&watched_a).zip(&watched_b) {
        let v = match (a, b) {
            (Some(a), Some(b)) => {
                let d = procfs::Delta::between(*a, *b);
                println!(
                    "  {name} (pid {pid}): {:.2} CPU-s = {:.0}% of a core; RSS {:.1} MiB",
                    d.cpu_s,
                    d.cpu_s / window_s * 100.0,
                    d.rss_after as f64 / 1048576.0
                );
                json!({"pid": pid, "cpu_s": d.cpu_s, "user_s": d.user_s, "sys_s": d.sys_s,
                       "utilization": d.cpu_s / window_s, "rss": d.rss_after})
            }
            _ => {
                println!("  {name} (pid {pid}): not measured (no such process)");
                serde_json::Value::Null
            }
        };
        watched_json.insert(name.clone(), v);
    }
    println!(
        "  generator: {gen_cpu:.2} CPU-s = {:.0}% of {threads} thread(s){}",
        gen_cpu / window_s * 100.0,
        if gen_cpu / window_s > 0.9 * threads as f64 {
            " (the generator may be the limit)"
        } else {
            ""
        }
    );
    if errors > 0 {
        println!(
            "  errors: {errors} (first: {})",
            first_error.as_deref().unwrap_or("?")
        );
    }
    let wire_json = json!({
        "read_bytes": wire_st.read_bytes,
        "read_per_msg": read_per_msg,
        "arrived": wire_st.arrived,
        "inflated_decoded": wire_st.decoded,
        "inflated_reused": wire_st.reused,
        "payload_bytes": wire_payload,
        "payload_per_msg": per_msg(wire_payload),
        "inflated_bytes": inflated,
        "inflated_per_msg": per_msg(inflated),
        "compressed": wire_st.compressed,
        "compressed_wire_bytes": wire_st.compressed_wire_bytes,
        "compressed_bytes": wire_st.compressed_bytes,
        "compressed_ratio": ratio,
        "plain": wire_st.plain,
        "plain_bytes": wire_st.plain_bytes,
        "mismatches": wire_st.mismatches,
    });
    let mut j = json!({
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "label": label,
        "addr": addrs[0].to_string(),
        "addrs": addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "conns_per_addr": (0..addrs.len()).map(|i| worker::share(conns, addrs.len(), i)).collect::<Vec<_>>(),
        "conns": conns,
        "in_flight": args.in_flight,
        "size": size,
        "binary": args.binary,
        "rate": args.rate,
        "threads": threads,
        "sources": sources.len().max(1),
        "window_s": window_s,
        "count": count,
        "per_s": rate,
        "bytes_per_s": bytes as f64 / window_s,
        "latency_us": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p999": pct(0.999), "max": lat.max(), "samples": lat.len()},
        "published": published,
        "expected": expected,
        "loss": loss,
        "publisher_lag_us": lag,
        "publishers": if args.scenario == Kind::Broadcast { json!(st.publisher_cores.len()) } else { serde_json::Value::Null },
        "publishers_wanted": if args.scenario == Kind::Broadcast { json!(args.publishers) } else { serde_json::Value::Null },
        "channel": args.channel,
        "stream": if channel_mode { stream_json(&st) } else { serde_json::Value::Null },
        "gaps": if channel_mode && st.with_offset > 0 { json!(st.gaps) } else { serde_json::Value::Null },
        "reorders": if channel_mode && st.with_offset > 0 { json!(st.reorders) } else { serde_json::Value::Null },
        "opened": opened,
        "open_s": open_secs,
        "handshakes_per_s": if args.scenario == Kind::Idle { opened as f64 / open_secs } else { 0.0 },
        "open_server_cpu_s": open_cpu_s,
        "open_generator_cpu_s": open_gen_cpu_s,
        "handshakes_per_server_cpu_s": match open_cpu_s {
            Some(c) if c > 0.0 && args.scenario == Kind::Idle => json!(opened as f64 / c),
            _ => serde_json::Value::Null,
        },
        "handshake_us": {"p50": hs.value_at_quantile(0.5), "p99": hs.value_at_quantile(0.99)},
        "errors": errors,
        "server": server_json,
        "watched": watched_json,
        "generator": {"cpu_s": gen_cpu, "utilization": gen_cpu / window_s},
    });
    // Compression: what was negotiated, what came over the wire.
    if let Some(m) = j.as_object_mut() {
        m.insert(
            "payload".into(),
            json!(if json_bodies { "json" } else { "filler" }),
        );
        m.insert("deflate".into(), json!(args.deflate));
        m.insert("extension".into(), json!(extension));
        m.insert("wire".into(), wire_json);
        m.insert(
            "tls".into(),
            if tls_on {
                let s = tls_st.session.clone().unwrap_or_default();
                json!({
                    "version": s.version,
                    "cipher": s.cipher,
                    "kx": s.kx,
                    "alpn": s.alpn,
                    "offered": args.tls_version.name(),
                    "verified": !args.insecure_tls,
                    "ca": args.ca.as_ref().map(|p| p.display().to_string()),
                    "resumption": args.tls_resume,
                    "handshakes": tls_st.handshakes,
                    "resumed": tls_st.resumed,
                    "mixed": tls_st.mixed,
                })
            } else {
                serde_json::Value::Null
            },
        );
        m.insert(
            "client_compressed".into(),
            json!(client_compressed.map(|(plain, packed)| json!({"plain": plain, "wire": packed}))),
        );
    }
    println!("{j}");
    Ok(())
}

/// How the publishers landed on server cores (and servers, with several
/// addresses), for the summary.
fn placement_line(st: &StreamStats, wanted: usize, addrs: &[SocketAddr]) -> String {
    let n = st.publisher_cores.len();
    let cores: Vec<String> = st
        .publisher_cores
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let core = c.map_or("?".to_string(), |c| c.to_string());
            match st.publisher_targets.get(k) {
                Some(&t) if addrs.len() > 1 => format!("{core} of {}", addrs[t]),
                _ => core,
            }
        })
        .collect();
    let tried = format!(
        "{} connection{} tried",
        st.publisher_attempts,
        if st.publisher_attempts == 1 { "" } else { "s" }
    );
    if st.publisher_cores.iter().all(Option::is_none) {
        return format!("publishers: {n} of {wanted}, server cores unknown (no welcome); {tried}");
    }
    let mut line = format!(
        "publishers: {n} on server cores {}; {tried}",
        cores.join(", ")
    );
    if n < wanted {
        line.push_str(&format!(" (only {n} of {wanted} connected)"));
    }
    if st.placement_gave_up {
        line.push_str(&format!(
            " (wanted {wanted} distinct cores: only {} found in {PLACEMENT_ATTEMPTS} attempts, so publishers share cores)",
            distinct_publisher_cores(st)
        ));
    }
    line
}

/// Distinct (server, core) pairs the publishers are on.
fn distinct_publisher_cores(st: &StreamStats) -> usize {
    let mut distinct: Vec<(usize, u64)> = st
        .publisher_cores
        .iter()
        .enumerate()
        .filter_map(|(k, c)| Some((st.publisher_targets.get(k).copied().unwrap_or(0), (*c)?)))
        .collect();
    distinct.sort_unstable();
    distinct.dedup();
    distinct.len()
}

fn stream_json(st: &StreamStats) -> serde_json::Value {
    json!({
        "with_offset": st.with_offset,
        "without_offset": st.without_offset,
        "gaps": st.gaps,
        "gap_offsets": st.gap_offsets,
        "reorders": st.reorders,
        "welcomes": st.welcomes,
        "subscriber_cores": st.subscriber_cores.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "publisher_cores": st.publisher_cores,
        "publisher_addrs": st.publisher_targets,
        "publisher_distinct_cores": distinct_publisher_cores(st),
        "publisher_attempts": st.publisher_attempts,
        "placement_gave_up": st.placement_gave_up,
        "publish_acks": st.publish_acks,
        "last_offset": st.last_offset,
    })
}

fn perf_command(ctl: &mut [std::fs::File], cmd: &str) {
    use std::io::Write;
    for f in ctl {
        if let Err(e) = f.write_all(format!("{cmd}\n").as_bytes()) {
            eprintln!("ringcast-load: perf control: {e}");
        }
    }
}

fn join(handles: Vec<thread::JoinHandle<Result<Outcome, String>>>) -> Vec<Result<Outcome, String>> {
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_and_without_scheme() {
        let t = resolve("127.0.0.1:9001").unwrap();
        assert_eq!(
            (t.addr.port(), t.tls, t.host.as_str()),
            (9001, false, "127.0.0.1")
        );
        let t = resolve("ws://127.0.0.1:9002/echo").unwrap();
        assert_eq!(
            (t.addr.port(), t.tls, t.host.as_str()),
            (9002, false, "127.0.0.1")
        );
        let t = resolve("wss://localhost:9003/").unwrap();
        assert_eq!(
            (t.addr.port(), t.tls, t.host.as_str()),
            (9003, true, "localhost")
        );
        assert!(t.addr.ip().is_loopback());
        let t = resolve("wss://[::1]:9004").unwrap();
        assert_eq!(
            (t.addr.port(), t.tls, t.host.as_str()),
            (9004, true, "[::1]")
        );
        assert!(resolve("wss://127.0.0.1").is_err(), "a port is needed");
    }

    #[test]
    fn tls_flags_need_wss_and_wss_needs_trust() {
        let parse = |v: &[&str]| Args::try_parse_from(v).unwrap();
        let targets = |a: &Args| {
            a.addr
                .iter()
                .map(|s| resolve(s).unwrap())
                .collect::<Vec<_>>()
        };
        let plain = parse(&["x", "echo", "--addr", "127.0.0.1:1", "--ca", "/nonexistent"]);
        let e = tls_plan(&plain, &targets(&plain)).err().unwrap();
        assert!(e.contains("wss://"), "{e}");
        let bare = parse(&["x", "echo", "--addr", "wss://127.0.0.1:1"]);
        let e = tls_plan(&bare, &targets(&bare)).err().unwrap();
        assert!(e.contains("--ca") && e.contains("--insecure-tls"), "{e}");
        let mixed = parse(&[
            "x",
            "echo",
            "--addr",
            "wss://127.0.0.1:1",
            "--addr",
            "127.0.0.1:2",
            "--insecure-tls",
        ]);
        assert!(tls_plan(&mixed, &targets(&mixed)).is_err());
        let missing = parse(&[
            "x",
            "echo",
            "--addr",
            "wss://127.0.0.1:1",
            "--ca",
            "/nonexistent",
        ]);
        let e = tls_plan(&missing, &targets(&missing)).err().unwrap();
        assert!(e.contains("/nonexistent"), "{e}");
        for v in ["1.2", "1.3", "any"] {
            let a = parse(&[
                "x",
                "echo",
                "--addr",
                "wss://127.0.0.1:1",
                "--insecure-tls",
                "--tls-version",
                v,
            ]);
            let p = tls_plan(&a, &targets(&a)).unwrap().expect("a TLS plan");
            assert_eq!(a.tls_version.name(), v);
            assert_eq!(p.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        }
        assert!(Args::try_parse_from(["x", "echo", "--ca", "a", "--insecure-tls"]).is_err());
    }
}
