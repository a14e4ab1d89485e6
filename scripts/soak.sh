#!/usr/bin/env bash
# scripts/soak.sh [--minutes M] [--round S] [--interval S] [--slope-bound KIB]
#
# Soak test: one ringcast server (2 cores, loopback, publish API on,
# heartbeats every 1-2 s so they run all the time) under mixed traffic for
# M minutes (default 20), in rounds of S seconds (default 60) so every
# round's counts stay bounded and its loss is checked. Each round runs, in
# parallel:
#   echo       ringcast-load echo, 50 conns x 1 in flight (niced: it fills
#              whatever CPU is left)
#   broadcast  ringcast-load broadcast, /broadcast, 500 subscribers,
#              500 msg/s x 64 B: loss must be 0
#   channel    the same through the /ws channel "soak": loss must be 0
#   churn      ringcast-load churn, 8 parallel connect/echo/close loops
#   idle       200 connections held through the heartbeats
#   api        POST /api/publish (20 requests/s, some batches) to a /ws
#              subscriber: every message once, in order
#   hostile    misbehaving clients (scripts/soak.py hostile): slowloris
#              heads, invalid UTF-8, oversized and malformed frames, garbage
#              HTTP, bad /ws JSON, a subscriber that never reads (must be
#              cut off, 1008), peers that never answer pings (1011), a
#              rate-limit flooder (1008); each must be ended the way the
#              server promises
# A sampler records, every --interval seconds (default 5), the server's RSS,
# high-water mark, open descriptors and threads, and its /metrics counters
# (connections, closes by cause, protocol errors, handshakes, deliveries ...).
#
# Output: results/soak-<stamp>/ with samples.csv, soak.svg (RSS, connections
# and descriptors over time), summary.md, rounds/<n>/*.out (every client's
# output) and server.log.
#
# Fails (exit 1) if: any legitimate message is lost (broadcast, channel,
# API), a generator reports errors or fails, a hostile client is not cut off
# as expected, the RSS least-squares slope after warm-up exceeds
# --slope-bound KiB/min (default 256; warm-up: the first 3 minutes or 20% of
# the run, whichever is longer; runs too short for it skip the check), the
# server log contains "panicked", the server exits before the end, or it
# does not exit 0 on SIGTERM at the end.
#
# Loopback only; the server and every client share the machine's CPUs.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$RINGCAST_ROOT"

MINUTES=20
ROUND=60
INTERVAL=5
SLOPE_BOUND=256
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES=${2:?}; shift 2 ;;
    --round) ROUND=${2:?}; shift 2 ;;
    --interval) INTERVAL=${2:?}; shift 2 ;;
    --slope-bound) SLOPE_BOUND=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,42p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
in_range() { # VALUE MIN MAX: a whole number within [MIN, MAX]
  [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]
}
in_range "$MINUTES" 1 1440 || die "--minutes must be 1..1440"
in_range "$ROUND" 30 600 || die "--round must be 30..600 seconds"
in_range "$INTERVAL" 1 60 || die "--interval must be 1..60 seconds"
in_range "$SLOPE_BOUND" 0 1048576 || die "--slope-bound must be a whole number of KiB/min"
command -v python3 >/dev/null 2>&1 || die "python3 not found"

require_cargo
build_release >/dev/null
BIN=$RINGCAST_BIN
LOAD=$BIN/ringcast-load
SOAKPY=$RINGCAST_ROOT/scripts/soak.py

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$RINGCAST_ROOT/results/soak-$STAMP
mkdir -p "$OUT/rounds"
API_KEY="soak-$$-$RANDOM$RANDOM"
CORES=2
[ "$(nproc)" -ge 2 ] || CORES=1
HANDSHAKE_TIMEOUT=5
RATE_LIMIT=20000
SERVER_ARGS=(--cores "$CORES" --api-key "$API_KEY" --ping-interval 2 --ping-min 1 --ping-max 2
  --handshake-timeout "$HANDSHAKE_TIMEOUT" --max-msgs-per-sec "$RATE_LIMIT" --log info)
MEASURE=$((ROUND - 12)) # measured seconds per generator run (plus open, warm-up, drain)
LOAD_DESC="echo 50 conns x 1 in flight (nice 10); /broadcast 500 subscribers x 500 msg/s x 64 B; \
/ws channel 500 subscribers x 500 msg/s x 64 B; churn 8 loops (nice 10); idle 200 conns; \
API 20 publish requests/s; hostile clients (slowloris x2, silent peers x2, never-reading subscriber, \
rate flooder, protocol garbage)"

SAMPLER_PID=
JOB_PIDS=()
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  local p
  for p in "${JOB_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  if [ -n "$SAMPLER_PID" ]; then kill -TERM "$SAMPLER_PID" 2>/dev/null || true; fi
  if [ -n "${SERVER_PID:-}" ]; then kill -KILL "$SERVER_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

start_server "$BIN/ringcast" "${SERVER_ARGS[@]}"
ADDR=$SERVER_ADDR
echo "soak.sh: server pid $SERVER_PID on $ADDR ($CORES cores); $MINUTES min in rounds of ${ROUND} s; results in $OUT"

echo 0 >"$OUT/.round"
python3 "$SOAKPY" sample --addr "$ADDR" --pid "$SERVER_PID" --interval "$INTERVAL" \
  --out "$OUT/samples.csv" --stop-file "$OUT/.stop" --round-file "$OUT/.round" &
SAMPLER_PID=$!
# A baseline sample of the idle server before the first round (bounded).
for _ in $(seq 1 100); do
  [ -f "$OUT/samples.csv" ] && [ "$(wc -l <"$OUT/samples.csv")" -ge 3 ] && break
  kill -0 "$SAMPLER_PID" 2>/dev/null || die "the sampler exited; see above"
  sleep 0.2
done

# job NAME CMD...: runs CMD (bounded by `timeout`) into rounds/<n>/NAME.out,
# its exit status into NAME.rc.
job() {
  local name=$1; shift
  (
    rc=0
    timeout --kill-after=10 $((ROUND + 90)) "$@" >"$RDIR/$name.out" 2>&1 || rc=$?
    echo "$rc" >"$RDIR/$name.rc"
  ) &
  JOB_PIDS+=($!)
}

SERVER_DIED=
START=$(date +%s)
r=0
while :; do
  r=$((r + 1))
  RDIR=$OUT/rounds/$r
  mkdir -p "$RDIR"
  echo "$r" >"$OUT/.round"
  JOB_PIDS=()
  common=(--addr "$ADDR" --threads 1 --warmup 2 --duration "$MEASURE")
  job echo nice -n 10 "$LOAD" echo "${common[@]}" --conns 50 --in-flight 1
  job broadcast "$LOAD" broadcast "${common[@]}" --conns 500 --rate 500 --size 64 --drain 20
  job channel "$LOAD" broadcast "${common[@]}" --conns 500 --rate 500 --size 64 --drain 20 --channel soak
  job churn nice -n 10 "$LOAD" churn "${common[@]}" --parallel 8
  job idle "$LOAD" idle "${common[@]}" --conns 200
  job api python3 "$SOAKPY" apicheck --addr "$ADDR" --api-key "$API_KEY" --seconds "$MEASURE" --rate 20
  job hostile python3 "$SOAKPY" hostile --addr "$ADDR" --api-key "$API_KEY" --seconds $((MEASURE + 5)) \
    --handshake-timeout "$HANDSHAKE_TIMEOUT" --rate-limit "$RATE_LIMIT"
  for p in "${JOB_PIDS[@]}"; do wait "$p" || true; done
  JOB_PIDS=()
  python3 "$RINGCAST_ROOT/scripts/soak_report.py" roundline --dir "$RDIR" --round "$r" || true
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    SERVER_DIED="during round $r"
    echo "soak.sh: the server exited during round $r" >&2
    break
  fi
  elapsed=$(($(date +%s) - START))
  # Start another round only if it ends within half a round of the target.
  [ $((elapsed + ROUND)) -le $((MINUTES * 60 + ROUND / 2)) ] || break
done
echo 0 >"$OUT/.round"
# A few samples of the server at rest after the last round.
[ -n "$SERVER_DIED" ] || sleep $((INTERVAL * 3))
touch "$OUT/.stop"
wait "$SAMPLER_PID" || true
SAMPLER_PID=

EXIT_STATUS=0
if [ -n "$SERVER_DIED" ]; then
  wait "$SERVER_PID" || EXIT_STATUS=$?
  SERVER_PID=
else
  stop_server || EXIT_STATUS=$?
fi
cp "$SERVER_LOG" "$OUT/server.log"
rm -f "$SERVER_LOG" "$OUT/.stop" "$OUT/.round"
PANICS=$(grep -c "panicked" "$OUT/server.log" || true)

rc=0
python3 "$RINGCAST_ROOT/scripts/soak_report.py" report --dir "$OUT" --slope-bound "$SLOPE_BOUND" --interval "$INTERVAL" \
  --round-s "$ROUND" --panics "$PANICS" --server-died "$SERVER_DIED" --exit-status "$EXIT_STATUS" \
  --server-cmd "ringcast ${SERVER_ARGS[*]/$API_KEY/<key>}" --load "$LOAD_DESC" \
  --commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" --date "$(date -Is)" \
  --host "$(nproc) CPUs, Linux $(uname -r)" >/dev/null || rc=$?
cat "$OUT/summary.md"
echo "soak.sh: results in $OUT"
exit "$rc"
