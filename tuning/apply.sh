#!/usr/bin/env bash
# tuning/apply.sh [--dry-run] [--persist]
#
# Applies tuning/sysctl.conf to the running kernel, idempotently: every key is
# read with `sysctl -n` and written with `sysctl -w` only when it differs.
# Prints one line per key:
#   changed KEY: OLD -> NEW      written now
#   ok KEY = VALUE               already set (a ceiling already higher than
#                                the file's value counts as set: never lowered)
#   skipped KEY: REASON          not on this kernel / not writable here
#                                (containers, other network namespaces,
#                                module not loaded); never fatal
# and a summary line. Running it twice reports 0 changed the second time.
#
#   --dry-run   show what would change; change nothing
#   --persist   also install sysctl.conf as /etc/sysctl.d/60-ringcast.conf and
#               limits.conf as /etc/security/limits.d/60-ringcast.conf (only
#               when the content differs)
#
# Must run as root. Works from any directory.
set -euo pipefail
export LC_ALL=C

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
SYSCTL_SRC=$HERE/sysctl.conf
LIMITS_SRC=$HERE/limits.conf
SYSCTL_DST=/etc/sysctl.d/60-ringcast.conf
LIMITS_DST=/etc/security/limits.d/60-ringcast.conf

# Single-number ceilings: raising them is the point, lowering a host's higher
# value (systemd sets fs.file-max and fs.nr_open to their maximum at boot)
# would only take capacity away.
declare -A CEILING=(
  [fs.file-max]=1 [fs.nr_open]=1
  [net.core.somaxconn]=1 [net.ipv4.tcp_max_syn_backlog]=1
  [net.core.netdev_max_backlog]=1 [net.core.optmem_max]=1
  [net.core.rmem_max]=1 [net.core.wmem_max]=1
  [net.ipv4.tcp_max_tw_buckets]=1 [net.ipv4.tcp_max_orphans]=1
  [net.netfilter.nf_conntrack_max]=1
)

DRY=0
PERSIST=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --persist) PERSIST=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "apply.sh: unknown option '$arg' (see --help)" >&2
      exit 2
      ;;
  esac
done

if [[ $EUID -ne 0 ]]; then
  echo "apply.sh: must run as root to change kernel settings; try: sudo $0 $*" >&2
  exit 1
fi
if ! command -v sysctl >/dev/null; then
  echo "apply.sh: sysctl not found (install procps)" >&2
  exit 1
fi
if [[ ! -r $SYSCTL_SRC ]]; then
  echo "apply.sh: cannot read $SYSCTL_SRC" >&2
  exit 1
fi

# Collapse runs of spaces/tabs to one space and trim: multi-value keys such as
# tcp_rmem print tab-separated.
norm() {
  local s
  s=$(tr -s ' \t' '  ' <<<"$1")
  s=${s#' '}
  printf '%s' "${s%' '}"
}

# Whether unsigned decimal $1 >= $2, without arithmetic overflow (fs.file-max
# can be 2^63-1).
num_ge() {
  local a=$1 b=$2
  [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ ]] || return 1
  a=${a#"${a%%[!0]*}"}
  b=${b#"${b%%[!0]*}"}
  if ((${#a} != ${#b})); then
    ((${#a} > ${#b}))
  else
    [[ ! $a < $b ]]
  fi
}

# One-line version of a sysctl error message.
oneline() {
  local s=${1//$'\n'/; }
  s=${s//sysctl: /}
  printf '%s' "${s:-no error message}"
}

COMMENT_OR_BLANK='^[[:space:]]*([#;]|$)'
changed=0 same=0 skipped=0
skip() {
  echo "skipped $1: $2"
  skipped=$((skipped + 1))
}

while IFS= read -r line <&3 || [[ -n $line ]]; do
  # sysctl.d syntax: whole-line comments start with # or ;
  [[ $line =~ $COMMENT_OR_BLANK ]] && continue
  if [[ $line != *=* ]]; then
    skip "$(norm "$line")" "not a 'key = value' line"
    continue
  fi
  key=$(norm "${line%%=*}")
  key=${key#-} # systemd's "ignore errors" prefix
  want=$(norm "${line#*=}")
  path=/proc/sys/${key//.//}

  if [[ ! -e $path ]]; then
    skip "$key" "not on this kernel ($path missing: module not loaded, or not visible in this namespace)"
    continue
  fi
  if ! have=$(sysctl -n "$key" 2>&1 </dev/null); then
    skip "$key" "cannot read: $(oneline "$have")"
    continue
  fi
  have=$(norm "$have")

  if [[ $have == "$want" ]]; then
    echo "ok $key = $have"
    same=$((same + 1))
    continue
  fi
  if [[ -n ${CEILING[$key]:-} ]] && num_ge "$have" "$want"; then
    echo "ok $key = $have (above $want; not lowered)"
    same=$((same + 1))
    continue
  fi

  if ((DRY)); then
    if [[ ! -w $path ]]; then
      skip "$key" "not writable here (read-only /proc/sys?); stays $have"
    else
      echo "would change $key: $have -> $want"
      changed=$((changed + 1))
    fi
    continue
  fi

  if ! err=$(sysctl -q -w "$key=$want" 2>&1 </dev/null); then
    skip "$key" "cannot set here: $(oneline "$err"); stays $have"
    continue
  fi
  now=$(norm "$(sysctl -n "$key" 2>/dev/null </dev/null || true)")
  if [[ $now == "$want" ]]; then
    echo "changed $key: $have -> $want"
    changed=$((changed + 1))
  else
    skip "$key" "kernel kept '$now' after writing '$want' (was '$have')"
  fi
done 3<"$SYSCTL_SRC"

install_if_different() { # src dst
  local src=$1 dst=$2
  if [[ -f $dst ]] && cmp -s "$src" "$dst"; then
    echo "ok $dst is up to date"
  elif ((DRY)); then
    echo "would install $src -> $dst"
  else
    install -D -m 0644 "$src" "$dst"
    echo "installed $src -> $dst"
  fi
}
if ((PERSIST)); then
  install_if_different "$SYSCTL_SRC" "$SYSCTL_DST"
  install_if_different "$LIMITS_SRC" "$LIMITS_DST"
fi

if ((DRY)); then verb="would change"; else verb="changed"; fi
echo "apply.sh: $changed $verb, $same already set, $skipped skipped"
echo "apply.sh: note: RLIMIT_NOFILE/RLIMIT_MEMLOCK (limits.conf) do not change for shells already running" \
  "(this one: nofile hard $(ulimit -Hn), memlock $(ulimit -l) KiB); they apply on a new login," \
  "or use tuning/ringcast.service (LimitNOFILE=, LimitMEMLOCK=)."
