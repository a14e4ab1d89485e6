#!/usr/bin/env bash
# scripts/bench.sh [--quick] [--rounds N] [--duration S] [--warmup S]
#                  [--servers "ringcast ringcast-tokio"] [--tls [on|both|off]]
#                  [--peer NAME=CMD]... [SCENARIO ...]
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
#   broadcast-light 1,000 subscribers, publisher $BROADCAST_LIGHT_RATE msg/s
#                   (default 500) x 64 B: latency below saturation (on a host
#                   where one loopback send costs ~2 us, 500/s already fills
#                   a core; set the rate lower there)
#   broadcast-wide  5,000 subscribers, publisher 300 msg/s x 64 B
#   channels        as broadcast, through one /ws channel (subscribe, JSON
#                   publish; ringcast only: the baseline has no /ws); server
#                   history off (--history-size 0)
#   channels-ordered as channels with 2 publishers on different server cores
#                   and history on (--history-size 100): every subscriber
#                   checks the channel's offsets are consecutive (gaps and
#                   reorders are reported as failures)
#   cluster         channels-ordered over two ringcast nodes sharing the
#                   channel through Redis (--broker, history 100): 1,000
#                   subscribers and the 2 publishers split over the nodes;
#                   CPU summed over the nodes, Redis's apart (ringcast only)
#   cluster-publish closed-loop publishes (4 conns x 16 in flight x 64 B,
#                   acks/s and ack latency) against one node, with the
#                   in-memory engine and with the Redis engine in turn
#   idle            15,000 connections held (RSS per connection)
#   churn           64 parallel connect/handshake/echo/close loops
#   broadcast-json  1,000 subscribers, publisher $BROADCAST_JSON_RATE msg/s
#                   (default 500) x 1 KB realistic JSON (--payload json),
#                   server compression off (variant off) and on with the
#                   subscribers negotiating permessage-deflate (variant on):
#                   deliveries per server CPU-s, p99 and bytes on the wire
#                   per delivery side by side. (2,000 msg/s of 1 KB is 2 GB/s
#                   of deliveries: more than a 2-CPU host's loopback carries,
#                   compressed or not, so both variants lag by seconds.)
#   echo-deflate    100 conns x 16 in flight x 1 KB JSON, closed loop,
#                   compression off and on (on: the clients send compressed
#                   too, so both directions are measured)
#   idle-deflate    the idle scenario with server compression on, the
#                   clients negotiating permessage-deflate (variant deflate)
#                   or not (variant plain): RSS per connection
#   ringcast runs these with --compression off (variant off) or
#   --compression on --compression-min-bytes $COMPRESSION_MIN_BYTES (default
#   256; variants on, plain, deflate); a build without --compression skips
#   them (said so). The baseline, which has no permessage-deflate, runs
#   their off/plain variant only.
#
#   --quick      echo, broadcast, churn and idle (2,000 conns) with short
#                windows, 3 rounds: under 2 minutes once built
#   --rounds N   rounds per scenario (default 3)
#   --duration S measured seconds per run (default 5; quick 1.5)
#   --warmup S   warm-up seconds per run (default 2; quick 0.5)
#   --peer NAME=CMD  another server as one more column (after --servers),
#                with "ringcast / NAME" ratios: any program that serves the
#                /echo + /broadcast contract of ../shared/peers/README.md.
#                CMD is a shell command; {port} in it becomes a free loopback
#                port, and it runs with CORES=<number of server CPUs> in its
#                environment, pinned and under perf like the others. Ready
#                once the port accepts a connection. Plain ws:// only: TLS
#                runs and ringcast-only scenarios skip it. Example:
#                --peer "uws=/tmp/uws/uws-server {port}"
#   --tls [MODE] wss:// (TLS) runs: `on` (the default when MODE is left
#                out) runs every scenario over TLS only, `both` runs each
#                plain and then over TLS (the TLS rows follow the plain ones
#                in the summary, with the TLS / plain ratio), `off` (the
#                default without --tls) plain only. A throwaway CA and a
#                server certificate for 127.0.0.1 and localhost are made
#                with the openssl CLI in a temporary directory (removed at
#                exit); every server gets --tls-cert/--tls-key, the
#                generator wss://ADDR and --ca. A server binary whose --help
#                has no --tls-cert (ringcast before its TLS support) is
#                skipped for the TLS runs, and says so. TLS_KEY=ec (default,
#                ECDSA P-256) or rsa (RSA 2048) picks the server's key;
#                TLS_VERSION=any (default), 1.2 or 1.3 what the generator
#                offers. TLS sessions are never resumed: churn measures full
#                handshakes. KTLS=1 also gives ringcast --ktls (the kernel
#                encrypts once the handshake is done, where it can: the
#                server's log in raw/ says whether it could, and its
#                /metrics count ringcast_ktls_connections_total).
#
# CPU layout: SERVER_CPUS (default 0) for the server; GEN_CPUS (default:
# every other CPU) for the generator, one thread per CPU. Both servers get the
# same CPUs (ringcast --cpus, ringcast-tokio --threads <count>).
# cluster: one node per CPU of CLUSTER_CPUS (default "0 1": node A on CPU 0,
# node B on CPU 1, one core each), the generator on CLUSTER_GEN_CPUS
# (default: every CPU). cluster-publish: its one node on SERVER_CPUS, the
# generator on GEN_CPUS. The cluster scenarios start one redis-server
# (no persistence) on a free loopback port, on REDIS_CPUS (default: every
# CPU), emptied before each run and stopped at the end.
# Binaries: target/release, or $CARGO_TARGET_DIR/release when that is set.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$RINGCAST_ROOT"

QUICK=0
ROUNDS=3
DURATION=
WARMUP=
SERVERS="ringcast ringcast-tokio"
TLS=off
SCENARIOS=()
declare -A PEER_CMD=()
PEERS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --rounds) ROUNDS=${2:?}; shift 2 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --warmup) WARMUP=${2:?}; shift 2 ;;
    --servers) SERVERS=${2:?}; shift 2 ;;
    --peer)
      case "${2:-}" in
        [A-Za-z0-9]*=?*) PEER_CMD[${2%%=*}]=${2#*=}; PEERS+=("${2%%=*}"); shift 2 ;;
        *) die "--peer wants NAME=CMD (e.g. --peer \"uws=/tmp/uws/uws-server {port}\"), not '${2:-}'" ;;
      esac ;;
    --tls)
      case "${2:-}" in
        on|off|both) TLS=$2; shift 2 ;;
        *) TLS=on; shift ;;
      esac ;;
    -h|--help) sed -n '2,103p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) SCENARIOS+=("$1"); shift ;;
  esac
done
ALL=(echo echo-big echo-lat broadcast broadcast-light broadcast-wide channels channels-ordered cluster cluster-publish idle churn
     broadcast-json echo-deflate idle-deflate)
if [ ${#SCENARIOS[@]} -eq 0 ]; then
  if [ "$QUICK" = 1 ]; then SCENARIOS=(echo broadcast churn idle); else SCENARIOS=("${ALL[@]}"); fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "bench.sh: redis-server not found (Debian: apt-get install redis-server); skipping cluster, cluster-publish" >&2
    kept=()
    for s in "${SCENARIOS[@]}"; do case "$s" in cluster|cluster-publish) ;; *) kept+=("$s") ;; esac; done
    SCENARIOS=("${kept[@]}")
  fi
fi
if [ "$QUICK" = 1 ]; then
  DURATION=${DURATION:-1.5}; WARMUP=${WARMUP:-0.5}
else
  DURATION=${DURATION:-5}; WARMUP=${WARMUP:-2}
fi
[ "$ROUNDS" -ge 1 ] || die "--rounds must be >= 1"
for peer in "${PEERS[@]}"; do
  case "${PEER_CMD[$peer]}" in *"{port}"*) ;; *) die "--peer $peer: the command has no {port} to listen on" ;; esac
  SERVERS="$SERVERS peer:$peer"
done
# The transports each scenario runs over: 0 plain, 1 TLS.
case "$TLS" in
  off) TLS_MODES="0" ;;
  on) TLS_MODES="1" ;;
  both) TLS_MODES="0 1" ;;
esac
TLS_KEY=${TLS_KEY:-ec}
KTLS=${KTLS:-0}
case "$KTLS" in 0|1) ;; *) die "KTLS must be 0 or 1, not '$KTLS'" ;; esac
TLS_VERSION=${TLS_VERSION:-any}
case "$TLS_KEY" in ec|rsa) ;; *) die "TLS_KEY must be ec or rsa, not '$TLS_KEY'" ;; esac
case "$TLS_VERSION" in any|1.2|1.3) ;; *) die "TLS_VERSION must be any, 1.2 or 1.3, not '$TLS_VERSION'" ;; esac

# The compression scenarios' knobs (see --help).
COMPRESSION_MIN_BYTES=${COMPRESSION_MIN_BYTES:-256}
BROADCAST_JSON_RATE=${BROADCAST_JSON_RATE:-500}
BROADCAST_LIGHT_RATE=${BROADCAST_LIGHT_RATE:-500}
scenario_args() { # the generator's arguments for a scenario
  case "$1" in
    echo)           echo "echo --conns 100 --in-flight 16 --size 32" ;;
    echo-big)       echo "echo --conns 50 --in-flight 4 --size 16384 --binary" ;;
    echo-lat)       echo "echo --conns 1000 --in-flight 1 --size 32" ;;
    broadcast)      echo "broadcast --conns 1000 --rate 2000 --size 64" ;;
    broadcast-light) echo "broadcast --conns 1000 --rate $BROADCAST_LIGHT_RATE --size 64" ;;
    broadcast-wide) echo "broadcast --conns 5000 --rate 300 --size 64" ;;
    channels)       echo "broadcast --conns 1000 --rate 2000 --size 64 --channel bench" ;;
    channels-ordered|cluster) echo "broadcast --conns 1000 --rate 2000 --size 64 --channel bench --publishers 2" ;;
    cluster-publish) echo "publish --conns 4 --in-flight 16 --size 64 --channel bench" ;;
    idle|idle-deflate) if [ "$QUICK" = 1 ]; then echo "idle --conns 2000"; else echo "idle --conns 15000"; fi ;;
    churn)          echo "churn --parallel 64" ;;
    broadcast-json) echo "broadcast --conns 1000 --rate $BROADCAST_JSON_RATE --size 1024 --payload json" ;;
    echo-deflate)   echo "echo --conns 100 --in-flight 16 --size 1024 --payload json" ;;
    *) die "unknown scenario '$1' (one of: ${ALL[*]})" ;;
  esac
}
for s in "${SCENARIOS[@]}"; do scenario_args "$s" >/dev/null; done

# Scenarios that only ringcast runs (the baseline has no /ws, no broker).
ringcast_only() { case "$1" in channels|channels-ordered|cluster|cluster-publish) return 0 ;; *) return 1 ;; esac; }
# The compression scenarios: each runs once per variant, the server's
# compression flags and the generator's --deflate following the variant.
# The baseline runs the first variant only (no extension).
scenario_variants() {
  case "$1" in
    broadcast-json|echo-deflate) echo "off on" ;;
    idle-deflate) echo "plain deflate" ;;
    *) echo "" ;;
  esac
}
variant_server_args() { # scenario variant: ringcast's flags for it
  case "$2" in
    off) echo "--compression off" ;;
    on|plain|deflate) echo "--compression on --compression-min-bytes $COMPRESSION_MIN_BYTES" ;;
    *) echo "" ;;
  esac
}
variant_gen_args() { # scenario variant: the generator's extra flags
  case "$2" in
    on|deflate) echo "--deflate" ;;
    # The same request length as the offer: RSS differs by negotiation only.
    plain) echo "--pad-upgrade" ;;
    *) echo "" ;;
  esac
}
# Scenarios that need Redis.
uses_redis() { case "$1" in cluster|cluster-publish) return 0 ;; *) return 1 ;; esac; }
NEED_REDIS=0
for s in "${SCENARIOS[@]}"; do if uses_redis "$s"; then NEED_REDIS=1; fi; done
if [ "$NEED_REDIS" = 1 ] && ! { command -v redis-server && command -v redis-cli; } >/dev/null 2>&1; then
  die "the cluster scenarios need redis-server and redis-cli (Debian: apt-get install redis-server)"
fi

# Extra ringcast flags per scenario, as "--flag value" pairs. A flag the
# binary's --help does not list (an older build, e.g. one side of an A/B) is
# left out with a warning, so the scenario still runs there.
scenario_server_args() {
  case "$1" in
    channels)         echo "--history-size 0" ;;
    channels-ordered|cluster) echo "--history-size 100" ;;
    # A closed loop goes past the default 5,000 publishes/s per connection.
    cluster-publish) echo "--history-size 100 --max-publishes-per-sec 0" ;;
    *) echo "" ;;
  esac
}
supported_server_args() { # bin scenario: the scenario's flags this binary has
  local bin=$1 scen=$2 help out=() flag value
  local -a args
  read -r -a args <<<"$(scenario_server_args "$scen")"
  [ ${#args[@]} -gt 0 ] || return 0
  case "$bin" in peer:*) return 0 ;; esac
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

# Whether binary $1's --help lists flag $2 (a peer has none).
has_flag() { case "$1" in peer:*) return 1 ;; esac; "$1" --help 2>&1 | grep -qE -- "(^|[^[:alnum:]-])$2([^[:alnum:]-]|\$)"; }

# A server is a binary name in $RINGCAST_BIN (target/release), or LABEL=PATH
# for any build of either server (an A/B of two ringcast builds:
# "old=/tmp/old/ringcast ringcast"); its flags follow from the binary's file
# name.
# A --peer is "peer:NAME" here: its "binary" is that marker (no flags, no
# --help), and it is launched from its command.
server_label() { case "$1" in peer:*) echo "${1#peer:}" ;; *=*) echo "${1%%=*}" ;; *) echo "$1" ;; esac; }
server_bin() { case "$1" in peer:*) echo "$1" ;; *=*) echo "${1#*=}" ;; *) echo "$RINGCAST_BIN/$1" ;; esac; }

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
GEN_N=$(count_cpus "$GEN_CPUS")
CLUSTER_CPUS=${CLUSTER_CPUS:-"0 $((NCPU > 1 ? 1 : 0))"}
CLUSTER_GEN_CPUS=${CLUSTER_GEN_CPUS:-0-$((NCPU - 1))}
CLUSTER_GEN_N=$(count_cpus "$CLUSTER_GEN_CPUS")
REDIS_CPUS=${REDIS_CPUS:-0-$((NCPU - 1))}

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

# --- TLS: a throwaway CA and server certificate ------------------------------
TLS_DIR=
if [ "$TLS" != off ]; then
  if ! command -v openssl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "bench.sh: installing openssl (the certificates for --tls)" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; } \
        || die "could not install openssl"
    else
      die "--tls needs the openssl CLI (Debian: apt-get install openssl)"
    fi
  fi
  TLS_DIR=$(mktemp -d -t ringcast-bench-tls.XXXXXX)
  # make_tls_certs DIR: ca.pem (a CA, never used for anything else) and
  # server.pem/server.key (127.0.0.1 and localhost, signed by it), valid
  # for 2 days.
  make_tls_certs() {
    local dir=$1 newkey
    case "$TLS_KEY" in
      ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
      rsa) newkey=(-newkey rsa:2048) ;;
    esac
    openssl req -x509 "${newkey[@]}" -nodes -days 2 -subj "/CN=ringcast bench CA" \
      -keyout "$dir/ca.key" -out "$dir/ca.pem" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -new "${newkey[@]}" -nodes -subj "/CN=localhost" \
      -keyout "$dir/server.key" -out "$dir/server.csr"
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
      -days 2 -extfile "$dir/server.ext" -out "$dir/server.pem"
  }
  make_tls_certs "$TLS_DIR" >"$TLS_DIR/openssl.log" 2>&1 \
    || { cat "$TLS_DIR/openssl.log" >&2; die "openssl could not make the TLS certificates"; }
fi

require_cargo
build_release >/dev/null
STAMP=$(date +%Y%m%d-%H%M%S)
OUT="$RINGCAST_ROOT/results/$STAMP"
mkdir -p "$OUT/raw"
echo "bench.sh: ${SCENARIOS[*]} x {$SERVERS} x $ROUNDS rounds, ${WARMUP}s warm-up + ${DURATION}s measured;" \
     "server on CPU $SERVER_CPUS, generator on CPU $GEN_CPUS ($GEN_N threads); results in $OUT"
if [ "$TLS" != off ]; then
  echo "bench.sh: TLS $TLS: server key $TLS_KEY, generator offers TLS $TLS_VERSION, no session resumption;" \
       "certificates in $TLS_DIR"
  if [ "$KTLS" = 1 ]; then
    echo "bench.sh: KTLS=1: ringcast gets --ktls (kernel ULPs loaded: $(cat /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null))"
  fi
fi
if [ "$NEED_REDIS" = 1 ]; then
  echo "bench.sh: cluster: nodes on CPUs {$CLUSTER_CPUS}, generator on CPU $CLUSTER_GEN_CPUS ($CLUSTER_GEN_N threads), redis-server on CPU $REDIS_CPUS"
fi
peer_specs=()
for peer in "${PEERS[@]}"; do peer_specs+=("$peer=${PEER_CMD[$peer]}"); done
PEERS_JSON=$(python3 -c 'import json, sys; print(json.dumps(dict(a.split("=", 1) for a in sys.argv[1:])))' \
  "${peer_specs[@]}")
cat > "$OUT/host.json" <<EOF
{"cpus": $NCPU, "server_cpus": "$SERVER_CPUS", "gen_cpus": "$GEN_CPUS", "kernel": "$(uname -r)",
 "cluster_cpus": "$CLUSTER_CPUS", "cluster_gen_cpus": "$CLUSTER_GEN_CPUS", "redis_cpus": "$REDIS_CPUS",
 "redis": "$(if [ "$NEED_REDIS" = 1 ]; then redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p'; fi)",
 "compression_min_bytes": $COMPRESSION_MIN_BYTES, "broadcast_json_rate": $BROADCAST_JSON_RATE, "broadcast_light_rate": $BROADCAST_LIGHT_RATE,
 "tls": "$TLS", "ktls": $KTLS, "tls_key": "$(if [ "$TLS" != off ]; then echo "$TLS_KEY"; fi)", "tls_version": "$(if [ "$TLS" != off ]; then echo "$TLS_VERSION"; fi)",
 "servers": "$(for s in $SERVERS; do server_label "$s"; done | tr '\n' ' ')", "rounds": $ROUNDS, "duration": $DURATION, "warmup": $WARMUP, "quick": $QUICK, "perf_events": "$EVENTS",
 "peers": $PEERS_JSON,
 "commit": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)", "date": "$(date -Is)"}
EOF

# Every process a run started, for the exit trap.
RUN_PIDS=()   # servers
PERF_PIDS=()  # their perf stat wrappers
REDIS_PID=
REDIS_PORT=
cleanup() {
  local p
  for p in "${RUN_PIDS[@]}" "${PERF_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ -n "$REDIS_PID" ]; then kill -KILL "$REDIS_PID" 2>/dev/null || true; fi
  if [ -n "$TLS_DIR" ]; then rm -rf "$TLS_DIR"; fi
}
trap cleanup EXIT

# --- Redis (cluster scenarios) -------------------------------------------------
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis_cli() { timeout 5 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# One redis-server for the whole run, on a free loopback port, without
# persistence (a port taken between the probe and the bind: another port).
start_redis() {
  local attempt
  mkdir -p "$OUT/redis"
  for attempt in 1 2 3 4 5; do
    REDIS_PORT=$(free_port)
    taskset -c "$REDIS_CPUS" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$OUT/redis" --logfile "$OUT/redis/redis.log" &
    REDIS_PID=$!
    for _ in $(seq 1 100); do
      if [ "$(redis_cli ping 2>/dev/null)" = PONG ]; then return 0; fi
      kill -0 "$REDIS_PID" 2>/dev/null || break
      sleep 0.05
    done
    kill -KILL "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=
    echo "bench.sh: redis-server did not start on port $REDIS_PORT (attempt $attempt)" >&2
  done
  tail -n 20 "$OUT/redis/redis.log" >&2 || true
  die "redis-server did not start"
}

stop_redis() {
  [ -n "$REDIS_PID" ] || return 0
  redis_cli shutdown nosave >/dev/null 2>&1 || true
  for _ in $(seq 1 100); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
  REDIS_PID=
}

# --- one run ---------------------------------------------------------------------
# launch NAME CPUS CMD...: starts a server on CPUS (under perf stat when
# EVENTS is set: its counts in $OUT/raw/NAME.perf, control FIFO NAME.ctl)
# with --listen 127.0.0.1:0 and waits for its "listening on ws://ADDR (pid
# N)" line (wss:// with TLS); sets L_ADDR and L_PID.
launch() {
  local name=$1 cpus=$2; shift 2
  local log="$OUT/raw/$name.server.log" fifo="$OUT/raw/$name.ctl"
  : >"$log" # exists before the background job opens it
  if [ -n "$EVENTS" ]; then
    rm -f "$fifo"; mkfifo "$fifo"
    perf stat -D -1 --control "fifo:$fifo" -x, -o "$OUT/raw/$name.perf" -e "$EVENTS" -- \
      taskset -c "$cpus" "$@" --listen 127.0.0.1:0 >"$log" 2>&1 &
    PERF_PIDS+=("$!")
  else
    taskset -c "$cpus" "$@" --listen 127.0.0.1:0 >"$log" 2>&1 &
    RUN_PIDS+=("$!")
  fi
  L_ADDR=""; L_PID=""
  for _ in $(seq 1 200); do
    L_ADDR=$(sed -n 's/.*listening on wss\{0,1\}:\/\/\([0-9.:]*\).*/\1/p' "$log" 2>/dev/null | sed -n 1p || true)
    L_PID=$(sed -n 's/.*listening on wss\{0,1\}:\/\/[0-9.:]* (pid \([0-9]*\)).*/\1/p' "$log" 2>/dev/null | sed -n 1p || true)
    [ -n "$L_ADDR" ] && [ -n "$L_PID" ] && break
    sleep 0.05
  done
  if [ -z "$L_ADDR" ] || [ -z "$L_PID" ]; then cat "$log" >&2; die "$name did not start"; fi
  RUN_PIDS+=("$L_PID")
}

# launch_peer NAME CPUS PEER: starts --peer PEER's command on CPUS (under
# perf stat when EVENTS is set) on a free port with CORES set, waits until
# the port accepts a connection; sets L_ADDR and L_PID.
launch_peer() {
  local name=$1 cpus=$2 peer=$3
  local log="$OUT/raw/$name.server.log" fifo="$OUT/raw/$name.ctl" port cmd wrapper ncores
  port=$(free_port)
  cmd=${PEER_CMD[$peer]//\{port\}/$port}
  ncores=$(count_cpus "$cpus")
  echo "$cmd" >"$log"
  if [ -n "$EVENTS" ]; then
    rm -f "$fifo"; mkfifo "$fifo"
    CORES=$ncores perf stat -D -1 --control "fifo:$fifo" -x, -o "$OUT/raw/$name.perf" -e "$EVENTS" -- \
      taskset -c "$cpus" sh -c "exec $cmd" >>"$log" 2>&1 &
    wrapper=$!
    PERF_PIDS+=("$wrapper")
  else
    CORES=$ncores taskset -c "$cpus" sh -c "exec $cmd" >>"$log" 2>&1 &
    wrapper=
    L_PID=$!
  fi
  L_ADDR=""
  for _ in $(seq 1 200); do
    # perf's child execs taskset, sh and the command: it is the server.
    if [ -n "$wrapper" ]; then L_PID=$(pgrep -P "$wrapper" | sed -n 1p || true); fi
    if [ -n "$L_PID" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      L_ADDR=127.0.0.1:$port
      break
    fi
    sleep 0.05
  done
  if [ -z "$L_ADDR" ]; then cat "$log" >&2; die "peer $peer did not listen on port $port ($cmd)"; fi
  RUN_PIDS+=("$L_PID")
}

# stop_all: SIGTERM every server of the run, wait for them (bounded) and for
# their perf wrappers (which write the counts on exit).
stop_all() {
  local p
  for p in "${RUN_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${RUN_PIDS[@]}"; do
    for _ in $(seq 1 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null || true
  done
  # The perf wrappers, or the servers themselves when they are this
  # shell's children (not a child: wait fails, which is fine).
  for p in "${PERF_PIDS[@]}" "${RUN_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  RUN_PIDS=(); PERF_PIDS=()
}

# run_case NAME SCENARIO SPEC ROUND VARIANT BROKER GEN_CPUS GEN_THREADS CPUS...:
# one server per CPUS argument (a CPU list each; a node of a cluster when
# there are several, named A, B, ...), with --broker BROKER when that is not
# empty, the generator on GEN_CPUS against all of them (connections
# round-robin), then one record: the generator's JSON line, perf counts
# summed over the servers, and the layout. VARIANT tells the runs of one
# scenario apart (cluster-publish: memory, redis). With RUN_TLS=1 the
# servers get --tls-cert/--tls-key and the generator wss:// and --ca.
run_case() {
  local name=$1 scen=$2 spec=$3 round=$4 variant=$5 broker=$6 gcpus=$7 gthreads=$8
  shift 8
  local server bin kind
  server=$(server_label "$spec")
  bin=$(server_bin "$spec")
  kind=$(basename "$bin")
  case "$bin" in peer:*) ;; *) [ -x "$bin" ] || die "$server: no executable at $bin" ;; esac
  local sargs extra="" node nodes=$# i=0 cpus vsargs vgargs
  sargs=$(supported_server_args "$bin" "$scen")
  # A compression variant's flags are what it measures: passed as they are,
  # never dropped (a ringcast without them skips the run instead).
  vsargs=$(variant_server_args "$scen" "$variant")
  vgargs=$(variant_gen_args "$scen" "$variant")
  if [ -n "$vsargs" ] && [ "$kind" = ringcast ]; then
    if ! has_flag "$bin" --compression; then
      echo "bench.sh: $bin has no --compression; skipping $name" >&2
      return 0
    fi
    extra="${extra:+$extra }$vsargs"
  fi
  local tls_server=() tls_gen=() scheme=""
  if [ "$RUN_TLS" = 1 ]; then
    if ! has_flag "$bin" --tls-cert; then
      echo "bench.sh: $bin has no --tls-cert; skipping $name (TLS)" >&2
      return 0
    fi
    tls_server=(--tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key")
    if [ "$KTLS" = 1 ] && [ "$kind" = ringcast ] && has_flag "$bin" --ktls; then
      tls_server+=(--ktls)
    fi
    tls_gen=(--ca "$TLS_DIR/ca.pem" --tls-version "$TLS_VERSION")
    scheme=wss://
  fi
  if [ -n "$broker" ]; then
    if ! has_flag "$bin" --broker; then
      echo "bench.sh: $bin has no --broker; skipping $name" >&2
      return 0
    fi
    redis_cli flushall >/dev/null || die "redis-server on port $REDIS_PORT does not answer"
    extra="--broker $broker"
  fi
  local gen=() perfs=() node_cpus=() letters=(A B C D E F G H I J K L M N O P)
  for cpus in "$@"; do
    node=$name
    if [ "$nodes" -gt 1 ]; then node=$name.${letters[i]}; fi
    i=$((i + 1))
    local -a flags
    case "$kind" in
      ringcast) read -r -a flags <<<"--cpus $cpus $sargs $extra" ;;
      ringcast-tokio) read -r -a flags <<<"--threads $(count_cpus "$cpus")" ;;
      *) flags=() ;;
    esac
    case "$kind" in
      peer:*) launch_peer "$node" "$cpus" "${kind#peer:}" ;;
      *) launch "$node" "$cpus" "$bin" "${flags[@]}" "${tls_server[@]}" ;;
    esac
    gen+=(--addr "$scheme$L_ADDR" --server-pid "$L_PID")
    node_cpus+=("$cpus")
    if [ -n "$EVENTS" ]; then
      gen+=(--perf-ctl "$OUT/raw/$node.ctl")
      perfs+=("$OUT/raw/$node.perf")
    fi
  done
  if [ -n "$broker" ]; then gen+=(--watch-pid "redis=$REDIS_PID"); fi
  local rc=0
  # shellcheck disable=SC2046,SC2086
  taskset -c "$gcpus" "$RINGCAST_BIN/ringcast-load" $(scenario_args "$scen") $vgargs \
    "${gen[@]}" "${tls_gen[@]}" --threads "$gthreads" --label "$server" \
    --duration "$DURATION" --warmup "$WARMUP" >"$OUT/raw/$name.out" 2>&1 || rc=$?
  stop_all
  rm -f "$OUT"/raw/"$name"*.ctl
  if [ "$rc" -ne 0 ]; then
    echo "bench.sh: $name: generator failed (exit $rc):" >&2
    tail -n 5 "$OUT/raw/$name.out" >&2
    return 0
  fi
  # One record: the generator's JSON line plus perf counts (summed over the
  # servers; a count one of them lacks is null) and the layout.
  python3 - "$OUT/raw/$name.out" "$scen" "$server" "$round" "$sargs $extra" "$variant" \
    "${node_cpus[*]}" "$gcpus" "$RUN_TLS" "${perfs[@]}" >"$OUT/raw/$name.json" <<'PY'
import json, sys, os
out, scen, server, rnd, sargs, variant, node_cpus, gcpus, tls = sys.argv[1:10]
perfs = sys.argv[10:]
line = [l for l in open(out) if l.startswith("{")][-1]
rec = json.loads(line)
counts = {}
for i, perf in enumerate(perfs):
    one = {}
    if os.path.exists(perf):
        for l in open(perf):
            f = l.strip().split(",")
            if len(f) >= 3 and not l.startswith("#"):
                try:
                    one[f[2]] = float(f[0])
                except ValueError:
                    one[f[2]] = None  # <not counted> / <not supported>
    for k in set(counts) | set(one):
        a, b = counts.get(k, 0.0 if i == 0 else None), one.get(k)
        counts[k] = None if a is None or b is None else a + b
rec.update({"bench_scenario": scen, "server_name": server, "round": int(rnd), "perf": counts,
            "server_args": sargs.split(), "variant": variant or None,
            "nodes": len(node_cpus.split()), "node_cpus": node_cpus.split(), "gen_cpus": gcpus,
            "broker": "--broker" in sargs.split(), "bench_tls": tls == "1"})
print(json.dumps(rec))
PY
  # The first 4 summary lines (5 over TLS: the tls line), then: channel
  # runs, where the publishers landed and the ordering verdict; cluster
  # runs, the broker's CPU; compression runs, the bytes on the wire.
  local more="publishers|order|redis" first=4
  if [ -n "$vsargs" ]; then more="$more|wire|client"; fi
  if [ "$RUN_TLS" = 1 ]; then first=5; fi
  grep -E "^  " "$OUT/raw/$name.out" | awk -v more="^  ($more)" -v first="$first" 'NR <= first || $0 ~ more' \
    | sed "s/^/  [$name] /" || true
}

# The runs of one scenario on one server (over TLS when RUN_TLS=1: the run
# names get -tls after the scenario's).
RUN_TLS=0
run_one() { # scenario server round
  local scen=$1 spec=$2 round=$3 server t=""
  server=$(server_label "$spec")
  if [ "$RUN_TLS" = 1 ]; then t=-tls; fi
  case "$scen" in
    cluster)
      # shellcheck disable=SC2086 # one node per CPU list
      run_case "$scen$t.$server.$round" "$scen" "$spec" "$round" "" "redis://127.0.0.1:$REDIS_PORT" \
        "$CLUSTER_GEN_CPUS" "$CLUSTER_GEN_N" $CLUSTER_CPUS ;;
    cluster-publish)
      # The two engines back to back, the same node layout.
      run_case "$scen-memory$t.$server.$round" "$scen" "$spec" "$round" memory "" \
        "$GEN_CPUS" "$GEN_N" "$SERVER_CPUS"
      run_case "$scen-redis$t.$server.$round" "$scen" "$spec" "$round" redis "redis://127.0.0.1:$REDIS_PORT" \
        "$GEN_CPUS" "$GEN_N" "$SERVER_CPUS" ;;
    broadcast-json|echo-deflate|idle-deflate)
      # Compression off/on (plain/deflate) back to back; the baseline, which
      # has no permessage-deflate, runs the first variant only.
      local variant first=1
      for variant in $(scenario_variants "$scen"); do
        if [ "$first" = 0 ] && [ "$(basename "$(server_bin "$spec")")" != ringcast ]; then break; fi
        first=0
        run_case "$scen-$variant$t.$server.$round" "$scen" "$spec" "$round" "$variant" "" \
          "$GEN_CPUS" "$GEN_N" "$SERVER_CPUS"
      done ;;
    *)
      run_case "$scen$t.$server.$round" "$scen" "$spec" "$round" "" "" "$GEN_CPUS" "$GEN_N" "$SERVER_CPUS" ;;
  esac
}

if [ "$NEED_REDIS" = 1 ]; then start_redis; fi

for round in $(seq 1 "$ROUNDS"); do
  for scen in "${SCENARIOS[@]}"; do
    for RUN_TLS in $TLS_MODES; do
      for spec in $SERVERS; do
        if ringcast_only "$scen" && [ "$(basename "$(server_bin "$spec")")" != ringcast ]; then continue; fi
        run_one "$scen" "$spec" "$round"
      done
    done
  done
done

stop_redis

python3 "$RINGCAST_ROOT/scripts/bench_report.py" "$OUT"
cp "$OUT/summary.md" "$RINGCAST_ROOT/results/latest.md"
cp "$OUT/chart.svg" "$RINGCAST_ROOT/results/latest.svg"
echo
cat "$OUT/summary.md"
echo
echo "bench.sh: wrote $OUT/summary.md, $OUT/chart.svg (copied to results/latest.md, results/latest.svg)"
