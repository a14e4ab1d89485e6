#!/usr/bin/env bash
# scripts/autobahn.sh [--bin NAME] [CASES]
#
# Builds the server (release), starts it on an ephemeral port, runs the
# Autobahn|Testsuite fuzzing client (../shared/conformance) against /echo with
# strict close checking, stops the server with SIGTERM and exits non-zero if
# any case FAILED or the server did not exit cleanly.
#
#   --bin NAME   server binary to test: ringcast (default) or ringcast-tokio
#   CASES        Autobahn case patterns, e.g. '1.*,5.*' (default: all)
#
# Environment: CONFORMANCE_DIR (default ../shared/conformance next to the
# repo), AUTOBAHN_STRICT_CLOSE (default 1), AUTOBAHN_REPORT_DIR (default
# target/autobahn/<bin>). Server arguments can be passed in SERVER_ARGS.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN=ringcast
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=${2:?--bin needs a name}; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
CASES=${1:-*}
CONFORMANCE_DIR=${CONFORMANCE_DIR:-$RINGCAST_ROOT/../shared/conformance}
[ -x "$CONFORMANCE_DIR/run.sh" ] || die "no Autobahn runner at $CONFORMANCE_DIR/run.sh (set CONFORMANCE_DIR)"
export AUTOBAHN_STRICT_CLOSE=${AUTOBAHN_STRICT_CLOSE:-1}
export AUTOBAHN_REPORT_DIR=${AUTOBAHN_REPORT_DIR:-$RINGCAST_ROOT/target/autobahn/$BIN}
export AUTOBAHN_AGENT=${AUTOBAHN_AGENT:-$BIN}

require_cargo
build_release
trap 'stop_server >/dev/null 2>&1 || true' EXIT
# shellcheck disable=SC2086
start_server "$RINGCAST_BIN/$BIN" ${SERVER_ARGS:-}
echo "autobahn.sh: $BIN listening on $SERVER_ADDR (log: $SERVER_LOG)"

rc=0
bash "$CONFORMANCE_DIR/run.sh" "ws://$SERVER_ADDR/echo" "$CASES" || rc=$?

server_rc=0
stop_server || server_rc=$?
trap - EXIT
if [ "$server_rc" -ne 0 ]; then
  echo "autobahn.sh: $BIN exited with status $server_rc after SIGTERM; its log:" >&2
  tail -n 50 "$SERVER_LOG" >&2
  rc=1
fi
if grep -q "panicked" "$SERVER_LOG"; then
  echo "autobahn.sh: $BIN panicked during the run:" >&2
  grep -A5 "panicked" "$SERVER_LOG" >&2
  rc=1
fi
exit "$rc"
