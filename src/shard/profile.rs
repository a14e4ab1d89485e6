//! `GET /debug/pprof/profile?seconds=N`: the seed's pprof, for Rust.
//!
//! A request starts a CPU profile of the whole process (every core's
//! thread, sampled at 99 Hz by `SIGPROF` through the `pprof` crate) on a
//! thread of its own, and its connection waits like any other answer from
//! elsewhere (`Phase::Answering`, bounded by a deadline). The core does not
//! block and nothing is sent to it: the connection's timer polls the
//! profile's channel once the sampling time is up, then every 100 ms until
//! the report is ready. Without a request in flight nothing of this runs:
//! no signal handler is installed, no timer armed, no state kept.
//!
//! One profile at a time per process (a second request gets `409`); the
//! body is a gzipped pprof protobuf (`go tool pprof`, speedscope, pprof's
//! web UI), or with `?format=svg` a flamegraph.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::slab::Phase;
use super::Shard;
use crate::app::requests::{json_error, ProfileFormat, ProfileReq};
use crate::conn::ConnKey;
use crate::http;

/// Samples per second: not a multiple of common timer frequencies, so the
/// samples do not line up with periodic work (Go's pprof uses 100).
const FREQUENCY: i32 = 99;
/// Libraries a sample must not be taken in: the pprof crate drops every
/// sample whose interrupted instruction lies in one. Only libgcc, whose
/// unwinder the signal handler itself runs (and must not re-enter), and the
/// vDSO. Not libc: `SIGPROF` is delivered as a thread returns from the
/// kernel, inside libc's `syscall` wrapper, so blocking libc dropped every
/// sample of `io_uring_enter`, where this server spends 85-95% of its CPU
/// (2-8 samples in 1 s of a saturated core, against 99 now).
const BLOCKLIST: &[&str] = &["libgcc", "vdso"];
/// How often a waiting connection looks for its report once the sampling
/// time is up (building the report takes a moment: symbolisation).
const POLL: Duration = Duration::from_millis(100);
/// The most a report may take after the sampling time before the request
/// is given up (the connection is closed by its deadline).
const GRACE: Duration = Duration::from_secs(30);

/// A profile is being taken somewhere in the process.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// A finished profile: content type and body, or why there is none.
type Report = Result<(&'static str, Vec<u8>), String>;

/// A connection waiting for its profile.
pub(super) struct Waiting {
    key: ConnKey,
    report: Receiver<Report>,
}

/// Clears [`RUNNING`] when the profiling thread ends, however it ends.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::SeqCst);
    }
}

impl Shard {
    /// Starts a profile for the connection `key`, or answers `409` if one
    /// is running already.
    pub(super) fn start_profile(&mut self, key: ConnKey, req: ProfileReq) {
        if RUNNING
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return self.respond_error(
                key,
                409,
                "profile_running",
                "a profile is being taken already; try again when it is done",
            );
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let running = Running;
        let spawned = std::thread::Builder::new()
            .name("ringcast-pprof".into())
            .spawn(move || {
                let _running = running;
                let _ = tx.send(take(req));
            });
        if let Err(e) = spawned {
            // `running` went with the closure that was never run.
            let message = format!("cannot start the profiling thread: {e}");
            return self.respond_error(key, 500, "profile_failed", &message);
        }
        info!(
            core = self.id,
            seconds = req.seconds,
            "CPU profile started (GET /debug/pprof/profile)"
        );
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.phase = Phase::Answering;
        let now = Instant::now();
        let sampled = Duration::from_secs(req.seconds.into());
        self.waiting_profiles
            .retain(|w| self.conns.get_mut(w.key).is_some());
        self.waiting_profiles.push(Waiting { key, report: rx });
        self.set_deadline(key, now + sampled + GRACE);
        self.wake_at(key, now + sampled);
    }

    /// A timer of a connection in `Phase::Answering` fired: if it waits
    /// for a profile, answers it when the report is ready, else looks
    /// again in [`POLL`]. Returns whether the connection waits for one.
    pub(super) fn poll_profile(&mut self, key: ConnKey, now: Instant) -> bool {
        let Some(i) = self.waiting_profiles.iter().position(|w| w.key == key) else {
            return false;
        };
        let answer = match self.waiting_profiles[i].report.try_recv() {
            Err(TryRecvError::Empty) => {
                self.wake_at(key, now + POLL);
                return true;
            }
            Ok(report) => report,
            Err(TryRecvError::Disconnected) => Err("the profiling thread ended early".into()),
        };
        self.waiting_profiles.swap_remove(i);
        match answer {
            Ok((content_type, body)) => {
                let headers = if content_type == GZIPPED_PPROF {
                    "Content-Disposition: attachment; filename=\"profile.pb.gz\"\r\n"
                } else {
                    ""
                };
                self.env.scratch.clear();
                http::write_response(200, content_type, headers, &body, &mut self.env.scratch);
                self.respond(key);
            }
            Err(e) => {
                warn!(core = self.id, "CPU profile failed: {e}");
                self.respond_error(key, 500, "profile_failed", &e);
            }
        }
        true
    }

    /// Answers the request with a JSON error and closes after it.
    fn respond_error(&mut self, key: ConnKey, status: u16, code: &str, message: &str) {
        self.env.scratch.clear();
        json_error(status, "", code, message, &mut self.env.scratch);
        self.respond(key);
    }

    /// Makes the connection's timer fire at `at` (earlier than its deadline).
    fn wake_at(&mut self, key: ConnKey, at: Instant) {
        if let Some(c) = self.conns.get_mut(key) {
            c.wheel_tick = self.wheel.insert(at, key);
        }
    }
}

/// The content type of the default report.
const GZIPPED_PPROF: &str = "application/octet-stream";

/// Samples the process for `req.seconds`, then builds the report.
fn take(req: ProfileReq) -> Report {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        .blocklist(BLOCKLIST)
        .build()
        .map_err(|e| format!("cannot start the profiler: {e}"))?;
    std::thread::sleep(Duration::from_secs(req.seconds.into()));
    let report = guard
        .report()
        .build()
        .map_err(|e| format!("cannot build the report: {e}"))?;
    match req.format {
        ProfileFormat::Svg => {
            let mut svg = Vec::new();
            report
                .flamegraph(&mut svg)
                .map_err(|e| format!("cannot draw the flamegraph: {e}"))?;
            Ok(("image/svg+xml", svg))
        }
        ProfileFormat::Pprof => {
            use pprof::protos::Message;
            let profile = report
                .pprof()
                .map_err(|e| format!("cannot encode the profile: {e}"))?;
            let raw = profile.encode_to_vec();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut gz, &raw).map_err(|e| e.to_string())?;
            Ok((GZIPPED_PPROF, gz.finish().map_err(|e| e.to_string())?))
        }
    }
}
