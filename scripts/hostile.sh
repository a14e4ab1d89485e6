#!/usr/bin/env bash
# Hostile clients at scale against a real ringcast on loopback (the fast,
# small-scale versions are tests/hostile.rs):
#
#   emfile     1,000 raw connections against a server whose descriptor limit
#              is 512: it must not spin while the table is full (< 0.5
#              CPU-s/s over 3 s), must log its EMFILE back-off, and must
#              serve a new client once the connections are released;
#   slowloris  2,000 request heads at 1 byte/s with --handshake-timeout 3:
#              all closed without an answer, a legitimate client served
#              every second meanwhile;
#   rststorm   5,000 connections reset (SO_LINGER 0) mid-handshake and
#              mid-frame, in batches of 500: connections back to 0.
#
# Each reports the server's RSS before/peak/after (peak under baseline +
# 64 MiB, after under baseline + 16 MiB). Prints a summary table; exits
# non-zero if any expectation failed. About a minute; bounded by timeouts.
#
# Usage: scripts/hostile.sh [--only emfile|slowloris|rststorm]
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$RINGCAST_ROOT"

ONLY=
while [ $# -gt 0 ]; do
  case $1 in
    --only) ONLY=${2:?--only needs a scenario}; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

require_cargo
command -v python3 >/dev/null 2>&1 || die "python3 not found"
command -v prlimit >/dev/null 2>&1 || die "prlimit not found (util-linux)"
build_release >/dev/null
BIN=$RINGCAST_BIN/ringcast
CLIENT=$RINGCAST_ROOT/scripts/hostile.py

ROWS=()
FAILED=0
START=$SECONDS

trap 'stop_server >/dev/null 2>&1 || true' EXIT

# fail SCENARIO MESSAGE: records a failed expectation checked here.
fail() {
  ROWS+=("$1"$'\t'"FAIL"$'\t'"$2"$'\t-\t-\t-')
  FAILED=1
}

# run SCENARIO [CLIENT ARGS...]: runs the client against the started server
# and records its summary line.
run() {
  local name=$1 line rc=0
  shift
  echo "== $name" >&2
  line=$(timeout 150 python3 "$CLIENT" "$name" --addr "$SERVER_ADDR" --pid "$SERVER_PID" "$@") || rc=$?
  if [ -z "$line" ]; then
    line="$name"$'\t'"FAIL"$'\t'"client exited with status $rc and no summary"$'\t-\t-\t-'
  fi
  ROWS+=("$line")
  [ "$rc" -eq 0 ] || FAILED=1
  return 0
}

# finish SCENARIO: stops the server; a non-zero exit status is a failure.
finish() {
  local rc=0
  stop_server || rc=$?
  if [ "$rc" -ne 0 ]; then
    fail "$1" "server exited with status $rc (log: $SERVER_LOG)"
  fi
}

wanted() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

if wanted emfile; then
  # The server raises its soft limit to the hard one at start-up: lower both.
  start_server prlimit --nofile=512:512 "$BIN" --cores 2 --handshake-timeout 60
  run emfile --conns 1000
  if ! grep -q "pausing accepts" "$SERVER_LOG"; then
    fail emfile "no EMFILE back-off warning in the server log ($SERVER_LOG)"
  fi
  finish emfile
fi

if wanted slowloris; then
  start_server "$BIN" --cores 2 --handshake-timeout 3
  run slowloris --conns 2000 --timeout 3
  finish slowloris
fi

if wanted rststorm; then
  start_server "$BIN" --cores 2
  run rststorm --conns 5000 --batch 500
  finish rststorm
fi

echo
printf '%-10s %-7s %-9s %-9s %-9s %s\n' scenario result "RSS MiB" peak after outcome
for row in "${ROWS[@]}"; do
  IFS=$'\t' read -r name result outcome before peak after <<<"$row"
  printf '%-10s %-7s %-9s %-9s %-9s %s\n' "$name" "$result" "$before" "$peak" "$after" "$outcome"
done
echo "($((SECONDS - START)) s)"
exit "$FAILED"
