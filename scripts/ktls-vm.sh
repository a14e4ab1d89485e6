#!/usr/bin/env bash
# scripts/ktls-vm.sh [--kernel-package PKG] [--timeout S] [--mem MB] [--with FILE]...
#                    [--env NAME=VALUE]... -- PROGRAM [ARGS...]
# scripts/ktls-vm.sh --test
#
# Runs PROGRAM (a ringcast binary or test binary built on this machine) inside
# a throwaway QEMU guest whose kernel has the `tls` module, for hosts whose own
# kernel was built without CONFIG_TLS (kTLS then cannot be exercised on the
# host: `ringcast --ktls` falls back to rustls and says so).
#
# --test builds the TLS integration tests and runs the kTLS one in the guest,
# with RINGCAST_TEST_EXPECT_KTLS=1 (the test then fails unless every TLS 1.3
# connection was offloaded); CI runs it.
#
# The guest kernel is Debian's cloud kernel, fetched with `apt-get download`
# into $KTLS_VM_DIR (default /tmp/ringcast-ktls-vm) on first use; nothing of
# it is committed. The guest is an initramfs with busybox, the kernel's tls
# and cipher modules, PROGRAM and the shared libraries it links (and each
# --with FILE at the same path, with its libraries: more programs,
# certificates), a writable root (/tmp included) and loopback only. PROGRAM
# may be a shell script (busybox sh runs it); --env sets its environment. It
# runs once, its output goes to the serial console (this terminal), the guest
# powers off, and this script exits with PROGRAM's exit status (124 if the
# guest timed out, 125 if it ended without one).
#
# The guest is emulated (TCG); KTLS_VM_KVM=1 tries KVM instead. Under TCG,
# speed figures from the guest are only meaningful as ratios measured in the
# same guest (scripts/ktls-vm-bench.sh).
set -euo pipefail

package=linux-image-cloud-amd64
timeout_s=900
mem=2048
with=()
envs=()
test_mode=0
while [ $# -gt 0 ]; do
  case "$1" in
    --kernel-package) package=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --test) test_mode=1; shift ;;
    --with) with+=("$(realpath "$2")"); shift 2 ;;
    --env)
      case "$2" in [A-Za-z_]*=*) envs+=("$2") ;; *) echo "ktls-vm: --env wants NAME=VALUE, not '$2'" >&2; exit 2 ;; esac
      shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "ktls-vm: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$test_mode" = 1 ]; then
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  bin=$(cargo test --release --test tls --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m["target"]["name"] == "tls" and "#ringcast@" in m["package_id"]:
        print(m["executable"])' | head -1)
  [ -n "$bin" ] || { echo "ktls-vm: could not build the tls tests (cargo test --release --test tls --no-run)" >&2; exit 2; }
  envs+=(RINGCAST_TEST_EXPECT_KTLS=1)
  set -- "$bin" --exact ktls_offloads_where_the_kernel_allows_and_falls_back_to_rustls_where_not --nocapture
fi
[ $# -ge 1 ] || { echo "ktls-vm: give the program to run after -- (or --test)" >&2; exit 2; }
program=$(realpath "$1"); shift
[ -x "$program" ] || { echo "ktls-vm: $program is not an executable" >&2; exit 2; }

need() { command -v "$1" >/dev/null 2>&1; }
missing=()
need qemu-system-x86_64 || missing+=(qemu-system-x86)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || missing+=(busybox-static)
need cpio || missing+=(cpio)
need depmod || [ -x /usr/sbin/depmod ] || missing+=(kmod)
if [ ${#missing[@]} -gt 0 ]; then
  echo "ktls-vm: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
busybox=$(command -v busybox)
! ldd "$busybox" >/dev/null 2>&1 \
  || { echo "ktls-vm: $busybox is not static (install busybox-static)" >&2; exit 2; }

dir=${KTLS_VM_DIR:-/tmp/ringcast-ktls-vm}
mkdir -p "$dir"

# The kernel: a meta-package resolves to the versioned image; download once.
real=$(apt-cache depends "$package" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$real" ] && package=$real
kdir=$dir/$package
if [ ! -d "$kdir/boot" ]; then
  echo "ktls-vm: fetching $package with apt-get download" >&2
  (cd "$dir" && rm -f "${package}"_*.deb && apt-get download -qq -o APT::Sandbox::User=root "$package")
  mkdir -p "$kdir"
  dpkg-deb -x "$dir/${package}"_*.deb "$kdir"
fi
vmlinuz=$(find "$kdir/boot" -name "vmlinuz-*" | head -1)
release=${vmlinuz##*/vmlinuz-}
moddir=$kdir/lib/modules/$release
[ -n "$(find "$moddir/kernel/net/tls" -name 'tls.ko*' 2>/dev/null)" ] \
  || { echo "ktls-vm: $package has no tls module" >&2; exit 2; }

# The initramfs.
root=$(mktemp -d "$dir/root.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,tmp,run} "$root/lib/modules/$release/kernel"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
# tls.ko and the kernel's ciphers (AES-GCM, ChaCha20-Poly1305 and what they
# need), with a modules.dep, so that the kernel's own module autoload
# (request_module -> modprobe) works in the guest as on an installed system.
for sub in net/tls crypto arch/x86/crypto lib/crypto; do
  mkdir -p "$root/lib/modules/$release/kernel/$sub"
  cp -r "$moddir/kernel/$sub/." "$root/lib/modules/$release/kernel/$sub/"
done
cp "$moddir"/modules.order "$moddir"/modules.builtin* "$root/lib/modules/$release/" 2>/dev/null || true
find "$root/lib/modules" -name '*.ko.xz' -exec xz -d {} +
find "$root/lib/modules" -name '*.ko.zst' -exec zstd -q --rm -d {} +
"$(command -v depmod || echo /usr/sbin/depmod)" -b "$root" "$release"
# PROGRAM and every --with file at their own paths, with the dynamic loader
# and every library a binary among them links.
for f in "$program" "${with[@]}"; do
  [ -e "$f" ] || { echo "ktls-vm: $f does not exist" >&2; exit 2; }
  mkdir -p "$root$(dirname "$f")"
  cp "$f" "$root$f"
  { ldd "$f" 2>/dev/null || true; } | awk '/=> \// {print $3} /^[ \t]*\/[^ ]+ \(/ {print $1}'
done | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
args=""
for a in "$@"; do args+=" $(printf '%q' "$a")"; done
exports=""
for e in "${envs[@]}"; do exports+="export ${e%%=*}=$(printf '%q' "${e#*=}")"$'\n'; done
cat > "$root/init" <<EOF
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ip link set lo up
echo /bin/modprobe > /proc/sys/kernel/modprobe
modprobe tls && echo "ktls-vm: tls module loaded; ULPs: \$(cat /proc/sys/net/ipv4/tcp_available_ulp)"
# The accelerated ciphers, as an installed system would have them loaded
# (the kernel's autoload would otherwise take whichever "gcm(aes)" it finds).
for m in aesni_intel ghash_clmulni_intel chacha_x86_64 poly1305_x86_64 gcm chacha20poly1305; do
  modprobe "\$m" 2>/dev/null || echo "ktls-vm: no \$m"
done
ulimit -n 20000
ulimit -l unlimited
cd /tmp
export HOME=/tmp TMPDIR=/tmp RUST_BACKTRACE=1
$exports$(head -c2 "$program" | grep -q '#!' && echo "sh ")$program$args
echo "VM-EXIT=\$?"
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$dir/initrd.gz"

accel=tcg
if [ -w /dev/kvm ] && [ "${KTLS_VM_KVM:-0}" = 1 ]; then accel=kvm; fi
echo "ktls-vm: booting $release ($accel, ${mem} MB, 2 vCPUs): $program$args" >&2
log=$dir/console.log
set +e
timeout "$timeout_s" qemu-system-x86_64 -accel "$accel" -cpu max -m "$mem" -smp 2 \
  -kernel "$vmlinuz" -initrd "$dir/initrd.gz" \
  -append "console=ttyS0 panic=-1 quiet" -nographic -no-reboot -nic none \
  | tee "$log"
qemu_rc=${PIPESTATUS[0]}
set -e
[ "$qemu_rc" = 124 ] && { echo "ktls-vm: the guest timed out after ${timeout_s}s" >&2; exit 124; }
rc=$(tr -d '\r' < "$log" | sed -n 's/^VM-EXIT=\([0-9]*\)$/\1/p' | tail -1)
[ -n "$rc" ] || { echo "ktls-vm: the guest ended without the program's exit status (qemu: $qemu_rc)" >&2; exit 125; }
exit "$rc"
