# shellcheck shell=bash
# Shared helpers for ringcast's scripts (sourced, not run).

# The repository root.
# shellcheck disable=SC2034 # used by the scripts that source this file
RINGCAST_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

# Fails with a clear message if cargo is missing or too old for this crate.
require_cargo() {
  command -v cargo >/dev/null 2>&1 \
    || die "cargo not found: install Rust >= 1.88 with rustup (https://rustup.rs) and retry"
  local v
  v=$(rustc --version | awk '{print $2}')
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  if [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 88 ]; }; then
    die "rustc $v is too old: ringcast needs Rust >= 1.88 (rustup update stable)"
  fi
}

# Where build_release's binaries land: target/release, or
# $CARGO_TARGET_DIR/release when that is set (cargo builds there, so the
# scripts must run from there; a relative one is taken from the root, where
# build_release runs cargo).
# shellcheck disable=SC2034 # used by the scripts that source this file
RINGCAST_BIN=${CARGO_TARGET_DIR:-target}
case "$RINGCAST_BIN" in /*) ;; *) RINGCAST_BIN=$RINGCAST_ROOT/$RINGCAST_BIN ;; esac
RINGCAST_BIN=$RINGCAST_BIN/release

# build_release: the README's `cargo build --release`, run at the repo root
# whatever the caller's directory: all three binaries of the workspace,
# ringcast (the server, the root package), ringcast-load and ringcast-tokio
# (crates/), in $RINGCAST_BIN. Always the whole workspace, never `-p` one
# package: cargo unifies dependency features over the packages it builds, so
# a server built alone is a different build (a second release compile) from
# the one built with the others, and the scripts would not all run the same
# binary.
build_release() {
  (cd "$RINGCAST_ROOT" && cargo build --release)
}

# start_server CMD [ARGS...]: runs CMD ARGS --listen 127.0.0.1:0 (CMD may be
# a wrapper such as taskset), sets SERVER_PID, SERVER_ADDR and SERVER_LOG.
# The server must print "listening on ws://ADDR" once it accepts connections.
start_server() {
  local bin=$1
  SERVER_LOG=$(mktemp -t ringcast-server.XXXXXX.log)
  "$@" --listen 127.0.0.1:0 >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  local i
  for i in $(seq 1 200); do
    SERVER_ADDR=$(sed -n 's/.*listening on ws:\/\/\([0-9.:]*\).*/\1/p' "$SERVER_LOG" | sed -n 1p)
    [ -n "$SERVER_ADDR" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SERVER_LOG" >&2; die "$bin exited during start-up"; }
    sleep 0.05
  done
  cat "$SERVER_LOG" >&2
  kill "$SERVER_PID" 2>/dev/null || true
  die "$bin did not start listening within 10 s"
}

# stop_server: SIGTERM, wait (bounded), return the server's exit status.
stop_server() {
  [ -n "${SERVER_PID:-}" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    echo "$(basename "$0"): server did not exit within 15 s of SIGTERM" >&2
  fi
  local rc=0
  wait "$SERVER_PID" || rc=$?
  SERVER_PID=
  return "$rc"
}
