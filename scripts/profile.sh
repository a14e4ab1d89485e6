#!/usr/bin/env bash
# scripts/profile.sh [--server NAME] [--duration S] [--warmup S] [--freq HZ]
#                    [--call-graph MODE] SCENARIO
#
# Profiles a server under one bench scenario (see scripts/bench.sh --help for
# the list): the server runs on SERVER_CPUS (default 0), the load generator on
# the other CPUs; after the warm-up, `perf record` samples the server
# (software cpu-clock event, so it works in VMs without hardware counters)
# and the samples are folded and drawn with inferno. Writes
# results/profile-<scenario>-<server>-<stamp>/: flamegraph.svg, folded.txt,
# top.txt (hottest symbols, self time) and load.txt (the generator's report).
#
#   --server NAME      ringcast (default) or ringcast-tokio
#   --duration S       seconds sampled (default 5)
#   --warmup S         seconds before sampling starts (default 2)
#   --freq HZ          sampling frequency (default 999)
#   --call-graph MODE  perf's --call-graph (default dwarf,16384)
#
# Needs perf (Debian: apt-get install linux-perf). Installs inferno's
# collapse/flamegraph tools with `cargo install inferno` if missing.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$RINGCAST_ROOT"

SERVER=ringcast
DURATION=5
WARMUP=2
FREQ=999
CALLGRAPH=dwarf,16384
SCEN=
while [ $# -gt 0 ]; do
  case "$1" in
    --server) SERVER=${2:?}; shift 2 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --warmup) WARMUP=${2:?}; shift 2 ;;
    --freq) FREQ=${2:?}; shift 2 ;;
    --call-graph) CALLGRAPH=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) SCEN=$1; shift ;;
  esac
done
[ -n "$SCEN" ] || die "which scenario? (echo, echo-big, echo-lat, broadcast, broadcast-wide, idle, churn)"
command -v perf >/dev/null 2>&1 || die "perf not found (Debian: apt-get install linux-perf)"
require_cargo
if ! command -v inferno-flamegraph >/dev/null 2>&1 || ! command -v inferno-collapse-perf >/dev/null 2>&1; then
  echo "profile.sh: installing inferno (cargo install inferno)"
  cargo install --locked inferno >/dev/null
fi

case "$SCEN" in
  echo)           GEN="echo --conns 100 --in-flight 16 --size 32" ;;
  echo-big)       GEN="echo --conns 50 --in-flight 4 --size 16384 --binary" ;;
  echo-lat)       GEN="echo --conns 1000 --in-flight 1 --size 32" ;;
  broadcast)      GEN="broadcast --conns 1000 --rate 2000 --size 64" ;;
  broadcast-wide) GEN="broadcast --conns 5000 --rate 300 --size 64" ;;
  idle)           GEN="idle --conns 15000" ;;
  churn)          GEN="churn --parallel 64" ;;
  *) die "unknown scenario '$SCEN'" ;;
esac

NCPU=$(nproc)
SERVER_CPUS=${SERVER_CPUS:-0}
if [ -z "${GEN_CPUS:-}" ]; then
  if [ "$NCPU" -gt 1 ]; then GEN_CPUS="1-$((NCPU - 1))"; else GEN_CPUS=0; fi
fi
case "$SERVER" in
  ringcast) SARGS="--cpus $SERVER_CPUS" ;;
  ringcast-tokio) SARGS="--threads 1" ;;
  *) SARGS="" ;;
esac

build_release >/dev/null
OUT="$RINGCAST_ROOT/results/profile-$SCEN-$SERVER-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
trap 'stop_server >/dev/null 2>&1 || true' EXIT
# shellcheck disable=SC2086
start_server taskset -c "$SERVER_CPUS" "$RINGCAST_BIN/$SERVER" $SARGS
PID=$(sed -n 's/.*listening on ws:\/\/[0-9.:]* (pid \([0-9]*\)).*/\1/p' "$SERVER_LOG" | sed -n 1p)
[ -n "$PID" ] || PID=$SERVER_PID
echo "profile.sh: $SERVER (pid $PID) on CPU $SERVER_CPUS at $SERVER_ADDR; $SCEN from CPU $GEN_CPUS"

# shellcheck disable=SC2086
taskset -c "$GEN_CPUS" "$RINGCAST_BIN/ringcast-load" $GEN --addr "$SERVER_ADDR" \
  --server-pid "$PID" --warmup "$WARMUP" --duration "$DURATION" >"$OUT/load.txt" 2>&1 &
LOAD=$!
# Start sampling once connections are up and warmed (the generator opens
# connections first, then warms up for WARMUP seconds).
sleep "$(python3 -c "print($WARMUP + 1.0)")"
perf record -e cpu-clock -F "$FREQ" --call-graph "$CALLGRAPH" -p "$PID" -o "$OUT/perf.data" \
  -- sleep "$DURATION" >/dev/null 2>"$OUT/perf-record.log" || { cat "$OUT/perf-record.log" >&2; die "perf record failed"; }
wait "$LOAD" || echo "profile.sh: the generator exited with an error (see $OUT/load.txt)" >&2
stop_server || true
trap - EXIT

perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf >"$OUT/folded.txt"
inferno-flamegraph --title "$SERVER under $SCEN ($GEN)" <"$OUT/folded.txt" >"$OUT/flamegraph.svg"
perf report -i "$OUT/perf.data" --no-children --sort symbol -g none --stdio 2>/dev/null \
  | grep -E '^ +[0-9]' | sed -n '1,40{s/ *$//;p}' >"$OUT/top.txt"
rm -f "$OUT/perf.data" "$OUT/perf.data.old"

grep -E '^  ' "$OUT/load.txt" || true
echo
echo "Top symbols (self time):"
head -n 20 "$OUT/top.txt"
echo
echo "profile.sh: wrote $OUT/flamegraph.svg, top.txt, folded.txt"
