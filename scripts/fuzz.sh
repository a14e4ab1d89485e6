#!/usr/bin/env bash
# Runs the cargo-fuzz (libFuzzer) targets in fuzz/ one after another and
# reports, per target, the executions and the coverage (libFuzzer's `cov`:
# instrumented edges reached) at start and at the end of the run.
#
#   handshake  the HTTP/upgrade request parser
#   frames     the frame decoder / session, fed in random chunk sizes
#   ws_json    the /ws JSON message and POST /api/publish body parsers
#
# Installs cargo-fuzz from crates.io when it is missing. Uses the nightly
# toolchain when rustup has one; otherwise (or with RINGCAST_FUZZ_STABLE=1)
# the default one with RUSTC_BOOTSTRAP=1, since cargo-fuzz passes -Z flags
# (sanitizer, coverage) that only nightly accepts. libFuzzer itself is C++:
# it needs g++ (Debian: build-essential).
# The corpus grows in fuzz/corpus/<target>/ (only seed-* files are kept in
# git); a crash stops the run, lands in fuzz/artifacts/<target>/ and makes
# this script exit non-zero. The same checks run on stable in every
# `cargo test` (tests/properties.rs).
#
# Usage: scripts/fuzz.sh [--seconds S] [--target NAME]...
#   --seconds S   run each target for S seconds (default 300)
#   --target NAME only this target (repeatable; default: all three)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$RINGCAST_ROOT/fuzz"

SECONDS_EACH=300
TARGETS=()
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) SECONDS_EACH=${2:?--seconds needs a number}; shift 2 ;;
    --target) TARGETS+=("${2:?--target needs a name}"); shift 2 ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
if ! [[ $SECONDS_EACH =~ ^[0-9]+$ ]] || [ "$SECONDS_EACH" -lt 1 ] || [ "$SECONDS_EACH" -gt 86400 ]; then
  die "--seconds must be 1..86400"
fi
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(handshake frames ws_json)
for t in "${TARGETS[@]}"; do
  [ -f "fuzz_targets/$t.rs" ] || die "no fuzz target '$t' (fuzz/fuzz_targets/)"
done

require_cargo
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz (crates.io)" >&2
  cargo install cargo-fuzz --locked --quiet
fi
TOOLCHAIN=()
if [ "${RINGCAST_FUZZ_STABLE:-0}" != 1 ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  TOOLCHAIN=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

LOGDIR=$(mktemp -d -t ringcast-fuzz.XXXXXX)
trap 'rm -rf "$LOGDIR"' EXIT
# Build first, so the fuzzing time below is all fuzzing.
# `-a`: debug assertions and overflow checks stay on in the fuzzed code.
for t in "${TARGETS[@]}"; do
  cargo "${TOOLCHAIN[@]}" fuzz build -a "$t"
done

printf '%-10s %8s %12s %10s %10s\n' target seconds executions cov_start cov_end
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  log=$LOGDIR/$t.log
  rc=0
  cargo "${TOOLCHAIN[@]}" fuzz run -a "$t" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov0=$(sed -n 's/.*INITED cov: \([0-9]*\).*/\1/p' "$log" | head -1)
  cov1=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' "$log" | tail -1)
  printf '%-10s %8s %12s %10s %10s\n' "$t" "$SECONDS_EACH" "${execs:-?}" "${cov0:-?}" "${cov1:-?}"
  if [ "$rc" -ne 0 ]; then
    status=1
    echo "fuzz.sh: $t failed (exit $rc); the end of its log:" >&2
    tail -40 "$log" >&2
  fi
done
exit "$status"
