#!/usr/bin/env bash
# scripts/idle_wakeups.sh [--conns N] [--seconds S] [BIN...]
#
# Wake-ups per second of an idle server core: one ringcast core holding N
# idle connections (default 10,000; ringcast-load idle answers the pings),
# counted as the voluntary context switches of the core's thread over S
# seconds (default 10) once every connection is open. Each BIN (default
# target/release/ringcast) is measured in turn on the same port, so two
# builds can be compared side by side in one run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CONNS=10000
SECONDS_MEASURED=10
BINS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --conns) CONNS="$2"; shift 2 ;;
    --seconds) SECONDS_MEASURED="$2"; shift 2 ;;
    *) BINS+=("$1"); shift ;;
  esac
done
[ ${#BINS[@]} -gt 0 ] || BINS=(target/release/ringcast)
LOAD=target/release/ringcast-load
[ -x "$LOAD" ] || cargo build --release # at the root: all three, as lib.sh build_release
PORT=9317

switches() { # pid -> voluntary context switches of core 0's threads
  local pid=$1 t n=0
  for t in /proc/"$pid"/task/*; do
    case "$(cat "$t/comm")" in
      ringcast-0*) n=$((n + $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status"))) ;;
    esac
  done
  echo "$n"
}

for bin in "${BINS[@]}"; do
  "$bin" --cores 1 --listen 127.0.0.1:$PORT --log warn &
  server=$!
  sleep 1
  "$LOAD" idle --addr 127.0.0.1:$PORT --conns "$CONNS" --threads 1 \
    --warmup 1 --duration $((SECONDS_MEASURED + 8)) >/dev/null 2>&1 &
  load=$!
  # Wait until every connection is open (the server's descriptor count).
  for _ in $(seq 1 120); do
    open=$(find /proc/$server/fd -maxdepth 1 | wc -l)
    [ "$open" -ge "$CONNS" ] && break
    sleep 0.5
  done
  sleep 2
  a=$(switches $server)
  sleep "$SECONDS_MEASURED"
  b=$(switches $server)
  echo "$bin: $CONNS idle connections, $(( (b - a) / SECONDS_MEASURED )) wake-ups/s of the core ($((b - a)) in ${SECONDS_MEASURED} s)"
  wait $load || true
  kill -TERM $server; wait $server || true
done
