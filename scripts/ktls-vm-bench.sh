#!/bin/sh
# scripts/ktls-vm-bench.sh [--rounds N] [--duration S]
#
# kTLS beside user-space rustls, measured side by side in one run inside the
# QEMU guest of scripts/ktls-vm.sh (a kernel with the `tls` module), for hosts
# whose own kernel has no kTLS. Builds target/release/{ringcast,ringcast-load}
# if needed, makes a throwaway certificate, boots the guest and, there, for
# every round alternates ringcast over TLS without and with --ktls on one
# guest core (the generator on the other) through echo, echo-big, churn and
# idle (2,000 connections); then prints the medians and the ktls/rustls
# ratios here, and writes the raw JSON to results/ktls-vm-<timestamp>/.
#
# The guest is emulated (TCG) unless KVM works: absolute figures are far below
# the host's and only the ratios between the two columns mean anything.
#
# Inside the guest the same script runs with --guest (not for direct use).
set -eu

if [ "${1:-}" = --guest ]; then
  # --- in the guest: busybox sh, loopback only ---------------------------
  shift
  bin=$1 load=$2 certs=$3 rounds=$4 duration=$5
  run() { # run MODE SCENARIO ROUND GENERATOR-ARGS...
    mode=$1 scenario=$2 round=$3; shift 3
    extra=""
    [ "$mode" = ktls ] && extra=--ktls
    # shellcheck disable=SC2086 # $extra is one word or none
    taskset -c 0 "$bin" --cores 1 --listen 127.0.0.1:9301 --tls-listen 127.0.0.1:9302 \
      --tls-cert "$certs/server.pem" --tls-key "$certs/server.key" $extra \
      >"/tmp/server-$mode.log" 2>&1 &
    pid=$!
    i=0
    until wget -q -O /dev/null http://127.0.0.1:9301/healthz 2>/dev/null; do
      i=$((i + 1)); [ $i -lt 100 ] || { echo "BENCH-ERROR server did not start"; cat "/tmp/server-$mode.log"; return 1; }
      sleep 0.2
    done
    # The kernel's slab while the load runs: kTLS keeps its per-connection
    # state (tls_context, the AEAD transforms, record buffers) there, where
    # the server's RSS does not show it; the peak over the baseline is
    # compared between the two modes (the sockets themselves are the same).
    slab0=$(awk '/^Slab:/ {print $2}' /proc/meminfo)
    taskset -c 1 "$load" "$@" --addr wss://127.0.0.1:9302 --ca "$certs/server.pem" \
      --threads 1 --duration "$duration" --warmup 1 --server-pid "$pid" >/tmp/load.out 2>/tmp/load.err &
    lpid=$!
    peak=$slab0
    while kill -0 "$lpid" 2>/dev/null; do
      now=$(awk '/^Slab:/ {print $2}' /proc/meminfo)
      [ "$now" -gt "$peak" ] && peak=$now
      sleep 0.25
    done
    wait "$lpid" || true
    json=$(grep '^{' /tmp/load.out | tail -1)
    offloaded=$(wget -q -O - http://127.0.0.1:9301/metrics \
      | awk '/^ringcast_ktls_connections_total.*outcome="offloaded"/ {s += $2} END {print s + 0}')
    kill "$pid"; wait "$pid" 2>/dev/null || true
    if [ -z "$json" ]; then echo "BENCH-ERROR $mode $scenario: no result"; cat /tmp/load.err; return 1; fi
    echo "BENCH $mode $scenario $round $offloaded $((peak - slab0)) $json"
  }
  echo "kTLS ciphers in the guest kernel: $(awk '/^name/ {n = $3} /^driver/ && (n == "gcm(aes)" || n == "rfc7539(chacha20,poly1305)") {printf "%s -> %s; ", n, $3}' /proc/crypto)"
  r=1
  while [ $r -le "$rounds" ]; do
    for mode in rustls ktls; do
      run $mode echo $r echo --conns 100 --in-flight 16 --size 32
      run $mode echo-big $r echo --conns 50 --in-flight 4 --size 16384 --binary
      run $mode churn $r churn --parallel 16
      run $mode idle $r idle --conns 2000
    done
    r=$((r + 1))
  done
  exit 0
fi

# --- on the host ----------------------------------------------------------
rounds=2 duration=3
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "ktls-vm-bench: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"
cargo build --release -q -p ringcast -p ringcast-load --bins
command -v openssl >/dev/null || apt-get install -y -qq openssl >/dev/null
certs=$(mktemp -d -t ringcast-ktls-bench.XXXXXX)
trap 'rm -rf "$certs"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$certs/server.key" -out "$certs/server.pem" -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=CA:FALSE 2>/dev/null
out=results/ktls-vm-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$out"
echo "ktls-vm-bench: $rounds round(s) of ${duration}s per scenario and mode; console in $out/console.log" >&2
"$here/ktls-vm.sh" --timeout $((rounds * 8 * (duration + 40) + 120)) \
  --with "$repo/target/release/ringcast" --with "$repo/target/release/ringcast-load" \
  --with "$certs/server.pem" --with "$certs/server.key" \
  -- "$here/ktls-vm-bench.sh" --guest "$repo/target/release/ringcast" \
  "$repo/target/release/ringcast-load" "$certs" "$rounds" "$duration" \
  | tr -d '\r' | tee "$out/console.log" | grep -E '^(BENCH|ktls-vm|kTLS)' | cut -c1-100 >&2 || true
grep '^BENCH ' "$out/console.log" >"$out/runs.txt" || { echo "ktls-vm-bench: no results (see $out/console.log)" >&2; exit 1; }
python3 - "$out" <<'PY'
import json, statistics, sys
out = sys.argv[1]
rows = {}
offloaded = {}
for line in open(f"{out}/runs.txt"):
    _, mode, scenario, _round, off, slab_kb, doc = line.split(" ", 6)
    d = json.loads(doc)
    d["slab_per_conn"] = int(slab_kb) * 1024 / d["conns"] if scenario == "idle" else None
    rows.setdefault((scenario, mode), []).append(d)
    offloaded[(scenario, mode)] = offloaded.get((scenario, mode), 0) + int(float(off))
def med(scenario, mode, f):
    vals = [f(d) for d in rows.get((scenario, mode), [])]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
figures = [
    ("echo", "msgs per server CPU-s", lambda d: d["server"]["per_cpu_s"], "{:,.0f}"),
    ("echo", "p99 ms", lambda d: d["latency_us"]["p99"] / 1000, "{:.2f}"),
    ("echo-big", "msgs per server CPU-s", lambda d: d["server"]["per_cpu_s"], "{:,.0f}"),
    ("churn", "cycles per server CPU-s", lambda d: d["server"]["per_cpu_s"], "{:,.0f}"),
    ("idle", "server RSS per connection, B", lambda d: d["server"]["rss_per_conn"], "{:,.0f}"),
    ("idle", "kernel slab per connection (both ends), B", lambda d: d["slab_per_conn"], "{:,.0f}"),
    ("echo", "server CPU in the kernel (sys / total)", lambda d: d["server"]["sys_s"] / d["server"]["cpu_s"], "{:.2f}"),
]
lines = ["| scenario | figure | rustls | kTLS | kTLS / rustls |", "|---|---|---|---|---|"]
for scenario, name, f, fmt in figures:
    a, b = med(scenario, "rustls", f), med(scenario, "ktls", f)
    cell = lambda v: fmt.format(v) if v is not None else "-"
    ratio = f"{b / a:.2f}x" if a and b else "-"
    lines.append(f"| {scenario} | {name} | {cell(a)} | {cell(b)} | {ratio} |")
lines.append("")
lines.append("connections offloaded to the kernel (sum over runs): " + ", ".join(
    f"{s}/{m} {offloaded[(s, m)]}" for (s, m) in sorted(offloaded)))
text = "\n".join(lines) + "\n"
open(f"{out}/summary.md", "w").write(text)
print(text)
PY
