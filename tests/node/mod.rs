//! Runs a `node --test` suite (the SDK's, the browser tests) and, when it
//! fails, names the failing tests and their errors in the panic message, so
//! the end of a long CI log says what broke.

use std::path::Path;
use std::process::{Command, Stdio};

/// Installs `dir`'s packages from its lock file unless `marker` (a
/// package directory under `node_modules`) is there already.
pub(crate) fn npm_ci(dir: &Path, marker: &str) {
    if dir.join("node_modules").join(marker).is_dir() {
        return;
    }
    let ci = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("npm (install Node.js and npm: apt-get install nodejs npm)");
    assert!(ci.success(), "npm ci in {} failed", dir.display());
}

/// Runs `node --test` in `dir` with `envs`, one test file at a time, its
/// TAP output echoed; panics with every `not ok` block on failure.
pub(crate) fn run_suite(dir: &Path, what: &str, envs: &[(&str, &str)]) {
    let mut cmd = Command::new("node");
    cmd.args(["--test", "--test-concurrency=1", "--test-reporter=tap"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("node --test (install Node.js >= 18)");
    let tap = String::from_utf8_lossy(&out.stdout);
    print!("{tap}");
    if out.status.success() {
        return;
    }
    // A failing test's block: its `not ok` line and the indented YAML
    // (error, location, stack) after it; and the runner's `# Error:`
    // lines (activity after a test ended, which fails its whole file).
    let mut failures = String::new();
    let mut in_block = false;
    for line in tap.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("not ok") {
            in_block = true;
        } else if trimmed.starts_with("ok ") || trimmed.starts_with("# Subtest") {
            in_block = false;
        }
        if in_block || trimmed.starts_with("# Error") {
            failures.push_str(line);
            failures.push('\n');
        }
    }
    panic!("{what} failed ({}):\n{failures}", out.status);
}
