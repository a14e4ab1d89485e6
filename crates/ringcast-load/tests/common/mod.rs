//! Running the generator binary from the crate's tests: bounded, with its
//! JSON line parsed, and a window that measured nothing lengthened rather
//! than failed.
// Each test crate uses a part of it.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one generator run may take before the test gives up on it.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// Runs `ringcast-load ARGS`, bounded by [`PATIENCE`] (killed past it).
pub(crate) fn run<S: AsRef<str>>(args: &[S]) -> Output {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast-load"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringcast-load");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringcast-load {args:?} ran over {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut stdout).expect("stdout");
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_end(&mut stderr).expect("stderr");
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// `ringcast-load ARGS`, which must succeed: its JSON line. A run whose
/// window measured nothing is run again with a longer one (see
/// [`longer_window`]).
pub(crate) fn load<S: AsRef<str>>(args: &[S]) -> Value {
    let mut args: Vec<String> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let mut j = load_once(&args);
    for _ in 0..2 {
        match longer_window(&j, &args) {
            Some(next) => args = next,
            None => break,
        }
        j = load_once(&args);
    }
    j
}

/// What a window-bound run measured nothing in is run again with a window
/// ten times longer, twice at most: a stalled, loaded host may let 0.3 s
/// pass without one message, and that must not fail a test. Returns the
/// arguments for the next try, or `None` when `j` counted something (or
/// the run has no window to lengthen).
fn longer_window(j: &Value, args: &[String]) -> Option<Vec<String>> {
    if j["count"].as_u64() != Some(0) {
        return None;
    }
    let i = args.iter().position(|a| a == "--duration")?;
    let d: f64 = args.get(i + 1)?.parse().ok()?;
    let mut next = args.to_vec();
    next[i + 1] = (d * 10.0).to_string();
    Some(next)
}

fn load_once(args: &[String]) -> Value {
    let out = run(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "ringcast-load {args:?}: {}\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line:\n{stdout}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}
