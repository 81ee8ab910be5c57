#!/bin/bash
# Build (or reuse) the Debian 12 VM image for the clearify-workerd system tests.
#
#   tests/system/build-image.sh [--print-dir] [--force] [--arch amd64|arm64]
#
# --arch (or $SYSTEST_ARCH; default amd64) is the Debian architecture of the
# image. arm64 is built on an amd64 host: mmdebstrap runs the maintainer
# scripts through qemu-user (qemu-user-static, registered in binfmt_misc;
# this script mounts binfmt_misc and registers qemu-aarch64 when needed),
# installs linux-image-arm64 instead of linux-image-amd64, and caches under
# /var/cache/clearify-systest-arm64 instead.
# The image is cached outside the repository, under $SYSTEST_CACHE
# (default /var/cache/clearify-systest), in a directory named by a hash of
# everything that goes into it: this script, image/packages.txt and the files
# under image/. A cached image is reused as is; --force rebuilds it.
# Output in the cache directory:
#   rootfs.raw   ext4 file system image (no partition table), root=/dev/vda
#   vmlinuz      the image's kernel, for a direct -kernel boot
#   initrd.img   a trimmed initrd (virtio_pci, virtio_blk, ext4, 9p)
#   build.log, timings, ok
# The last line printed on stdout is the cache directory.
#
# Needs root, mmdebstrap, mke2fs (e2fsprogs) and access to Debian's package
# archive. The archive is taken from the host's own apt sources
# (/etc/apt/sources.list.d/debian.sources, or $SYSTEST_APT_SOURCES).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
arch=${SYSTEST_ARCH:-amd64}
sources=${SYSTEST_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}
image_size=${SYSTEST_IMAGE_SIZE:-4G}
force=0
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        --print-dir) ;;
        --arch) [ $# -ge 2 ] || { echo "build-image.sh: --arch needs a value" >&2; exit 2; }; arch=$2; shift ;;
        --arch=*) arch=${1#--arch=} ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "build-image.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
case "$arch" in
    amd64) cache_root=${SYSTEST_CACHE:-/var/cache/clearify-systest} ;;
    arm64) cache_root=${SYSTEST_CACHE:-/var/cache/clearify-systest-arm64} ;;
    *) echo "build-image.sh: unsupported --arch '$arch' (amd64, arm64)" >&2; exit 2 ;;
esac

die() { echo "build-image.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap and chroot)"
for tool in mmdebstrap mke2fs chroot sha256sum flock; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (apt-get install mmdebstrap e2fsprogs)"
done
[ -r "$sources" ] || die "no apt sources file at $sources (set SYSTEST_APT_SOURCES)"
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
    # A foreign image: its maintainer scripts and the chroot commands below
    # run through qemu-user, which the kernel finds through binfmt_misc.
    binfmt=/proc/sys/fs/binfmt_misc
    [ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt" \
        || die "cannot mount binfmt_misc on $binfmt"
    if [ ! -e "$binfmt/qemu-aarch64" ]; then
        conf=/usr/lib/binfmt.d/qemu-aarch64.conf
        [ -r "$conf" ] || die "no $conf (apt-get install qemu-user-static; tests/system/install-deps.sh does)"
        /lib/systemd/systemd-binfmt "$conf" || die "cannot register qemu-aarch64 in binfmt_misc"
    fi
    grep -qx enabled "$binfmt/qemu-aarch64" || die "qemu-aarch64 is registered in binfmt_misc but disabled"
fi

# The cache key: every input of the image, by content.
key=$(
    cd "$here"
    { cat build-image.sh; for f in image/*; do echo "== $f"; cat "$f"; done; [ "$arch" = amd64 ] || echo "== arch $arch"; } | sha256sum | cut -c1-16
)
dir=$cache_root/$key
mkdir -p "$cache_root"

exec 9>"$cache_root/.lock-$key"
flock -w 3600 9 || die "timed out waiting for another build of $dir"

if [ "$force" = 0 ] && [ -f "$dir/ok" ]; then
    echo "build-image.sh: using cached image $dir" >&2
    echo "$dir"
    exit 0
fi

work=$(mktemp -d "$cache_root/build-$key.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
root=$work/root
log=$work/build.log
t0=$(date +%s)
echo "build-image.sh: building $dir (log: $log)" >&2

mapfile -t pkgs < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e "s/^linux-image-amd64\$/linux-image-$arch/" "$here/image/packages.txt")
include=$(IFS=,; echo "${pkgs[*]}")

# mmdebstrap: essential + apt, plus our packages, without Recommends. The
# essential hook makes the kernel package's own initrd a small one (conf.d
# overrides initramfs.conf): a full MODULES=most initrd takes 15+ min when
# it is built through qemu-user for arm64, and is replaced below anyway.
# Through qemu-user (arm64) every maintainer script is emulated: more time.
mmdebstrap_limit=1800
[ "$arch" = amd64 ] || mmdebstrap_limit=3600
if ! timeout "$mmdebstrap_limit" mmdebstrap \
        --variant=apt \
        --architectures="$arch" \
        --aptopt='APT::Install-Recommends "false"' \
        --aptopt='Acquire::Retries "3"' \
        --include="$include" \
        --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && printf "MODULES=list\nCOMPRESS=gzip\n" >"$1/etc/initramfs-tools/conf.d/systest.conf"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$root" "$sources" >"$log" 2>&1; then
    tail -40 "$log" >&2
    die "mmdebstrap failed (log above)"
fi
t1=$(date +%s)

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

# --- configuration ----------------------------------------------------------
echo systest >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tsystest\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
printf '/dev/vda\t/\text4\trw,relatime,errors=remount-ro\t0\t1\n' >"$root/etc/fstab"
# Machine id: generated on first boot (the file exists but is empty).
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# Persistent journal, so a second boot can read the first one.
mkdir -p "$root/var/log/journal"

# Trimmed initrd: only the modules a virtio guest with an ext4 root needs.
sed -i -e 's/^MODULES=.*/MODULES=list/' -e 's/^COMPRESS=.*/COMPRESS=gzip/' \
    "$root/etc/initramfs-tools/initramfs.conf"
printf '%s\n' virtio_pci virtio_blk virtio_console ext4 9p 9pnet_virtio >"$root/etc/initramfs-tools/modules"
in_root update-initramfs -u -k all >>"$log" 2>&1 || die "update-initramfs failed (see $log)"

# The celery wrapper (Debian's python3-celery has no /usr/bin/celery).
install -m 0755 "$here/image/celery" "$root/usr/local/bin/celery"

# The in-guest runner bootstrap and its unit.
install -m 0755 "$here/image/systest-boot" "$root/usr/local/sbin/systest-boot"
install -m 0644 "$here/image/systest-runner.service" "$root/etc/systemd/system/systest-runner.service"
in_root systemctl enable systest-runner.service >>"$log" 2>&1

# Redis stays disabled: scenarios decide when the broker runs.
in_root systemctl disable redis-server.service >>"$log" 2>&1 || true
[ -e "$root/etc/systemd/system/multi-user.target.wants/redis-server.service" ] && die "redis-server still enabled"

# No interactive use: no gettys, no logind (nobody logs in; runuser needs no
# session); slow or irrelevant units masked (each costs seconds under TCG).
for unit in serial-getty@ttyS0.service getty@tty1.service getty.target console-getty.service \
        e2scrub_reap.service e2scrub_all.timer e2scrub_all.service \
        apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service \
        dpkg-db-backup.timer man-db.timer fstrim.timer logrotate.timer \
        systemd-timesyncd.service systemd-networkd-wait-online.service \
        systemd-pstore.service modprobe@drm.service modprobe@dm_mod.service modprobe@fuse.service \
        modprobe@loop.service modprobe@configfs.service sys-kernel-config.mount sys-fs-fuse-connections.mount \
        systemd-logind.service sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount \
        systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount; do
    in_root systemctl mask "$unit" >>"$log" 2>&1
done
# Root has no password; nobody logs in.
in_root passwd -l root >>"$log" 2>&1

# Keep the image small.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_Packages

# Kernel and initrd for a direct boot.
mkdir -p "$work/out"
cp "$(ls -1 "$root"/boot/vmlinuz-* | sort -V | tail -1)" "$work/out/vmlinuz"
cp "$(ls -1 "$root"/boot/initrd.img-* | sort -V | tail -1)" "$work/out/initrd.img"
[ -s "$work/out/vmlinuz" ] && [ -s "$work/out/initrd.img" ] || die "no kernel or initrd in the image"

# ext4 file system straight from the directory (no loop mount needed).
mke2fs -q -t ext4 -L systest-root -E root_owner=0:0 -d "$root" "$work/out/rootfs.raw" "$image_size" >>"$log" 2>&1 \
    || die "mke2fs failed (see $log)"
t2=$(date +%s)

{
    echo "mmdebstrap_secs=$((t1 - t0))"
    echo "configure_and_mkfs_secs=$((t2 - t1))"
    echo "total_secs=$((t2 - t0))"
    echo "built_at=$(date -u +%FT%TZ)"
    echo "kernel=$(basename "$(ls -1 "$root"/boot/vmlinuz-* | sort -V | tail -1)")"
} >"$work/out/timings"
cp "$log" "$work/out/build.log"
printf '%s\n' "${pkgs[@]}" >"$work/out/packages"
in_root dpkg-query -W -f '${Package} ${Version}\n' >"$work/out/manifest"
touch "$work/out/ok"

rm -rf "$dir"
mv "$work/out" "$dir"
echo "build-image.sh: built $dir in $((t2 - t0)) s" >&2
echo "$dir"
