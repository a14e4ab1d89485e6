#!/usr/bin/env bash
# scripts/bench.sh [--quick] [--rounds N] [--duration S] [--warmup S]
#                  [--servers "ringcast ringcast-tokio"] [SCENARIO ...]
#   (a server may be LABEL=PATH, e.g. --servers "old=/tmp/old/ringcast ringcast")
#
# Runs benchmark scenarios against ringcast and ringcast-tokio in one run,
# alternating servers A/B/A/B for every round, the server pinned to its CPUs
# and the load generator to the others, the server wrapped in `perf stat`
# (software events and syscall tracepoints; counting only the measured
# window). Writes results/<timestamp>/: raw JSON per run, summary.md (medians,
# min-max, ringcast/tokio ratio, syscalls per message) and chart.svg, and
# copies summary.md to results/latest.md.
#
# Scenarios (default: all):
#   echo            100 conns x 16 in flight x 32 B text, closed loop
#   echo-big        50 conns x 4 in flight x 16 KiB binary
#   echo-lat        1,000 conns x 1 in flight x 32 B
#   broadcast       1,000 subscribers, publisher 2,000 msg/s x 64 B
#   broadcast-wide  5,000 subscribers, publisher 300 msg/s x 64 B
#   channels        as broadcast, through one /ws channel (subscribe, JSON
#                   publish; ringcast only: the baseline has no /ws); server
#                   history off (--history-size 0)
#   channels-ordered as channels with 2 publishers on different server cores
#                   and history on (--history-size 100): every subscriber
#                   checks the channel's offsets are consecutive (gaps and
#                   reorders are reported as failures)
#   idle            15,000 connections held (RSS per connection)
#   churn           64 parallel connect/handshake/echo/close loops
#
#   --quick      echo, broadcast, churn and idle (2,000 conns) with short
#                windows, 3 rounds: under 2 minutes once built
#   --rounds N   rounds per scenario (default 3)
#   --duration S measured seconds per run (default 5; quick 1.5)
#   --warmup S   warm-up seconds per run (default 2; quick 0.5)
#
# CPU layout: SERVER_CPUS (default 0) for the server; GEN_CPUS (default:
# every other CPU) for the generator, one thread per CPU. Both servers get the
# same CPUs (ringcast --cpus, ringcast-tokio --threads <count>).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$RINGCAST_ROOT"

QUICK=0
ROUNDS=3
DURATION=
WARMUP=
SERVERS="ringcast ringcast-tokio"
SCENARIOS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --rounds) ROUNDS=${2:?}; shift 2 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --warmup) WARMUP=${2:?}; shift 2 ;;
    --servers) SERVERS=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) SCENARIOS+=("$1"); shift ;;
  esac
done
ALL=(echo echo-big echo-lat broadcast broadcast-wide channels channels-ordered idle churn)
if [ ${#SCENARIOS[@]} -eq 0 ]; then
  if [ "$QUICK" = 1 ]; then SCENARIOS=(echo broadcast churn idle); else SCENARIOS=("${ALL[@]}"); fi
fi
if [ "$QUICK" = 1 ]; then
  DURATION=${DURATION:-1.5}; WARMUP=${WARMUP:-0.5}
else
  DURATION=${DURATION:-5}; WARMUP=${WARMUP:-2}
fi
[ "$ROUNDS" -ge 1 ] || die "--rounds must be >= 1"

scenario_args() { # the generator's arguments for a scenario
  case "$1" in
    echo)           echo "echo --conns 100 --in-flight 16 --size 32" ;;
    echo-big)       echo "echo --conns 50 --in-flight 4 --size 16384 --binary" ;;
    echo-lat)       echo "echo --conns 1000 --in-flight 1 --size 32" ;;
    broadcast)      echo "broadcast --conns 1000 --rate 2000 --size 64" ;;
    broadcast-wide) echo "broadcast --conns 5000 --rate 300 --size 64" ;;
    channels)       echo "broadcast --conns 1000 --rate 2000 --size 64 --channel bench" ;;
    channels-ordered) echo "broadcast --conns 1000 --rate 2000 --size 64 --channel bench --publishers 2" ;;
    idle)           if [ "$QUICK" = 1 ]; then echo "idle --conns 2000"; else echo "idle --conns 15000"; fi ;;
    churn)          echo "churn --parallel 64" ;;
    *) die "unknown scenario '$1' (one of: ${ALL[*]})" ;;
  esac
}
for s in "${SCENARIOS[@]}"; do scenario_args "$s" >/dev/null; done

# Scenarios that only ringcast runs (the baseline has no /ws).
ringcast_only() { case "$1" in channels|channels-ordered) return 0 ;; *) return 1 ;; esac; }

# Extra ringcast flags per scenario, as "--flag value" pairs. A flag the
# binary's --help does not list (an older build, e.g. one side of an A/B) is
# left out with a warning, so the scenario still runs there.
scenario_server_args() {
  case "$1" in
    channels)         echo "--history-size 0" ;;
    channels-ordered) echo "--history-size 100" ;;
    *) echo "" ;;
  esac
}
supported_server_args() { # bin scenario: the scenario's flags this binary has
  local bin=$1 scen=$2 help out=() flag value
  local -a args
  read -r -a args <<<"$(scenario_server_args "$scen")"
  [ ${#args[@]} -gt 0 ] || return 0
  help=$("$bin" --help 2>&1 || true)
  set -- "${args[@]}"
  while [ $# -ge 2 ]; do
    flag=$1 value=$2; shift 2
    if grep -qE -- "(^|[^[:alnum:]-])$flag([^[:alnum:]-]|\$)" <<<"$help"; then
      out+=("$flag" "$value")
    else
      echo "bench.sh: $bin has no $flag; running $scen without '$flag $value'" >&2
    fi
  done
  echo "${out[*]}"
}

# A server is a binary name in target/release, or LABEL=PATH for any build
# of either server (an A/B of two ringcast builds: "old=/tmp/old/ringcast
# ringcast"); its flags follow from the binary's file name.
server_label() { case "$1" in *=*) echo "${1%%=*}" ;; *) echo "$1" ;; esac; }
server_bin() { case "$1" in *=*) echo "${1#*=}" ;; *) echo "$RINGCAST_ROOT/target/release/$1" ;; esac; }

# --- CPUs ------------------------------------------------------------------
NCPU=$(nproc)
SERVER_CPUS=${SERVER_CPUS:-0}
if [ -z "${GEN_CPUS:-}" ]; then
  if [ "$NCPU" -gt 1 ]; then GEN_CPUS="1-$((NCPU - 1))"; else GEN_CPUS=0; fi
fi
count_cpus() { python3 -c "
import sys
n=0
for part in sys.argv[1].split(','):
    a,_,b=part.partition('-'); n+= (int(b)-int(a)+1) if b else 1
print(n)" "$1"; }
SERVER_N=$(count_cpus "$SERVER_CPUS")
GEN_N=$(count_cpus "$GEN_CPUS")

# --- perf --------------------------------------------------------------------
WANT_EVENTS="task-clock context-switches cpu-migrations page-faults raw_syscalls:sys_enter \
syscalls:sys_enter_io_uring_enter syscalls:sys_enter_read syscalls:sys_enter_write \
syscalls:sys_enter_recvfrom syscalls:sys_enter_sendto syscalls:sys_enter_sendmsg \
syscalls:sys_enter_epoll_wait syscalls:sys_enter_epoll_pwait"
EVENTS=""
if command -v perf >/dev/null 2>&1; then
  for ev in $WANT_EVENTS; do
    if perf stat -x, -e "$ev" -- true 2>&1 >/dev/null | grep -q "^[0-9]"; then
      EVENTS="${EVENTS:+$EVENTS,}$ev"
    else
      echo "bench.sh: perf event $ev not supported here; skipping it" >&2
    fi
  done
else
  echo "bench.sh: perf not found (Debian: apt-get install linux-perf); running without syscall counts" >&2
fi

require_cargo
build_release >/dev/null
STAMP=$(date +%Y%m%d-%H%M%S)
OUT="$RINGCAST_ROOT/results/$STAMP"
mkdir -p "$OUT/raw"
echo "bench.sh: ${SCENARIOS[*]} x {$SERVERS} x $ROUNDS rounds, ${WARMUP}s warm-up + ${DURATION}s measured;" \
     "server on CPU $SERVER_CPUS, generator on CPU $GEN_CPUS ($GEN_N threads); results in $OUT"
cat > "$OUT/host.json" <<EOF
{"cpus": $NCPU, "server_cpus": "$SERVER_CPUS", "gen_cpus": "$GEN_CPUS", "kernel": "$(uname -r)",
 "servers": "$(for s in $SERVERS; do server_label "$s"; done | tr '\n' ' ')", "rounds": $ROUNDS, "duration": $DURATION, "warmup": $WARMUP, "quick": $QUICK, "perf_events": "$EVENTS",
 "commit": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)", "date": "$(date -Is)"}
EOF

PERF_PID=
cleanup() {
  if [ -n "${SERVER_PID:-}" ]; then kill -KILL "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "$PERF_PID" ]; then kill -KILL "$PERF_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

run_one() { # scenario server round
  local scen=$1 spec=$2 round=$3
  local server bin kind
  server=$(server_label "$spec")
  bin=$(server_bin "$spec")
  kind=$(basename "$bin")
  local name="$scen.$server.$round"
  local log="$OUT/raw/$name.server.log" fifo="$OUT/raw/$name.ctl"
  local sargs
  case "$kind" in
    ringcast) sargs="--cpus $SERVER_CPUS $(supported_server_args "$bin" "$scen")" ;;
    ringcast-tokio) sargs="--threads $SERVER_N" ;;
    *) sargs="" ;;
  esac
  [ -x "$bin" ] || die "$server: no executable at $bin"
  local perf_args=()
  : >"$log" # exists before the background job opens it
  if [ -n "$EVENTS" ]; then
    rm -f "$fifo"; mkfifo "$fifo"
    # shellcheck disable=SC2086
    perf stat -D -1 --control "fifo:$fifo" -x, -o "$OUT/raw/$name.perf" -e "$EVENTS" -- \
      taskset -c "$SERVER_CPUS" "$bin" $sargs --listen 127.0.0.1:0 >"$log" 2>&1 &
    PERF_PID=$!
    perf_args=(--perf-ctl "$fifo")
  else
    # shellcheck disable=SC2086
    taskset -c "$SERVER_CPUS" "$bin" $sargs --listen 127.0.0.1:0 >"$log" 2>&1 &
    PERF_PID=
  fi
  local addr=""
  for _ in $(seq 1 200); do
    addr=$(sed -n 's/.*listening on ws:\/\/\([0-9.:]*\).*/\1/p' "$log" 2>/dev/null | sed -n 1p || true)
    SERVER_PID=$(sed -n 's/.*listening on ws:\/\/[0-9.:]* (pid \([0-9]*\)).*/\1/p' "$log" 2>/dev/null | sed -n 1p || true)
    [ -n "$addr" ] && [ -n "$SERVER_PID" ] && break
    sleep 0.05
  done
  [ -n "$addr" ] || { cat "$log" >&2; die "$server did not start"; }
  local rc=0
  # shellcheck disable=SC2046
  taskset -c "$GEN_CPUS" "$RINGCAST_ROOT/target/release/ringcast-load" $(scenario_args "$scen") \
    --addr "$addr" --server-pid "$SERVER_PID" --threads "$GEN_N" --label "$server" \
    --duration "$DURATION" --warmup "$WARMUP" "${perf_args[@]}" >"$OUT/raw/$name.out" 2>&1 || rc=$?
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  if [ -n "$PERF_PID" ]; then wait "$PERF_PID" 2>/dev/null || true; fi
  PERF_PID=; SERVER_PID=
  rm -f "$fifo"
  if [ "$rc" -ne 0 ]; then
    echo "bench.sh: $name: generator failed (exit $rc):" >&2
    tail -n 5 "$OUT/raw/$name.out" >&2
    return 0
  fi
  # One record: the generator's JSON line plus perf counts.
  python3 - "$OUT/raw/$name.out" "$OUT/raw/$name.perf" "$scen" "$server" "$round" "$sargs" >"$OUT/raw/$name.json" <<'PY'
import json, sys, os
out, perf, scen, server, rnd, sargs = sys.argv[1:7]
line = [l for l in open(out) if l.startswith("{")][-1]
rec = json.loads(line)
counts = {}
if os.path.exists(perf):
    for l in open(perf):
        f = l.strip().split(",")
        if len(f) >= 3 and not l.startswith("#"):
            try:
                counts[f[2]] = float(f[0])
            except ValueError:
                counts[f[2]] = None  # <not counted> / <not supported>
rec.update({"bench_scenario": scen, "server_name": server, "round": int(rnd), "perf": counts,
            "server_args": sargs.split()})
print(json.dumps(rec))
PY
  grep -E "^  " "$OUT/raw/$name.out" | sed "s/^/  [$name] /" | sed -n 1,4p
  # Channel runs: where the publishers landed and the ordering verdict.
  grep -E "^  (publishers|order)" "$OUT/raw/$name.out" | sed "s/^/  [$name] /" || true
}

for round in $(seq 1 "$ROUNDS"); do
  for scen in "${SCENARIOS[@]}"; do
    for spec in $SERVERS; do
      if ringcast_only "$scen" && [ "$(basename "$(server_bin "$spec")")" != ringcast ]; then continue; fi
      run_one "$scen" "$spec" "$round"
    done
  done
done

python3 "$RINGCAST_ROOT/scripts/bench_report.py" "$OUT"
cp "$OUT/summary.md" "$RINGCAST_ROOT/results/latest.md"
cp "$OUT/chart.svg" "$RINGCAST_ROOT/results/latest.svg"
echo
cat "$OUT/summary.md"
echo
echo "bench.sh: wrote $OUT/summary.md, $OUT/chart.svg (copied to results/latest.md, results/latest.svg)"
