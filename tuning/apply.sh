#!/usr/bin/env bash
# tuning/apply.sh [--dry-run] [--persist]
#
# Applies tuning/sysctl.conf to the running kernel, idempotently: each key
# is read first and only written if it differs. Prints "changed key: old ->
# new", "ok key = value" or "skipped key: reason" (keys this kernel lacks or
# that a container cannot write are skipped, not fatal).
#
#   --dry-run   show what would change, change nothing
#   --persist   also install sysctl.conf as /etc/sysctl.d/60-ringcast.conf and
#               limits.conf as /etc/security/limits.d/60-ringcast.conf
#               (only when their content differs)
#
# Must run as root.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DRY=0
PERSIST=0
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    --persist) PERSIST=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "apply.sh: unknown option $a (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" -ne 0 ]; then
  echo "apply.sh: must run as root (sudo $0 $*)" >&2
  exit 1
fi

norm() { tr -s ' \t' ' ' <<<"$1" | sed 's/^ //; s/ $//'; }
changed=0 same=0 skipped=0
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%%#*}
  [[ "$line" =~ ^[[:space:]]*$ ]] && continue
  key=$(norm "${line%%=*}")
  want=$(norm "${line#*=}")
  path="/proc/sys/${key//./\/}"
  if [ ! -e "$path" ]; then
    echo "skipped $key: not present on this kernel"
    skipped=$((skipped + 1))
    continue
  fi
  have=$(norm "$(cat "$path" 2>/dev/null || echo '?')")
  if [ "$have" = "$want" ]; then
    echo "ok $key = $want"
    same=$((same + 1))
    continue
  fi
  if [ "$DRY" = 1 ]; then
    echo "would change $key: $have -> $want"
    changed=$((changed + 1))
    continue
  fi
  if err=$(sysctl -q -w "$key=$want" 2>&1) && [ "$(norm "$(cat "$path")")" = "$want" ]; then
    echo "changed $key: $have -> $want"
    changed=$((changed + 1))
  else
    echo "skipped $key: cannot set here (${err:-value not accepted}; stays $have)"
    skipped=$((skipped + 1))
  fi
done <"$HERE/sysctl.conf"

install_if_different() { # src dst
  if [ -f "$2" ] && cmp -s "$1" "$2"; then
    echo "ok $2 already installed"
  elif [ "$DRY" = 1 ]; then
    echo "would install $2"
  else
    install -D -m 0644 "$1" "$2"
    echo "installed $2"
  fi
}
if [ "$PERSIST" = 1 ]; then
  install_if_different "$HERE/sysctl.conf" /etc/sysctl.d/60-ringcast.conf
  install_if_different "$HERE/limits.conf" /etc/security/limits.d/60-ringcast.conf
fi

verb=changed; [ "$DRY" = 1 ] && verb="would change"
echo "apply.sh: $changed $verb, $same already set, $skipped skipped"
echo "apply.sh: open-files and locked-memory limits (limits.conf) apply to new logins;" \
     "services get them from tuning/ringcast.service (LimitNOFILE, LimitMEMLOCK)."
