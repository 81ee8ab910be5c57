#!/bin/bash
# Install the host tools the system tests need (Debian 12, as root).
# Idempotent: does nothing when everything is there. run.sh calls it when a
# tool is missing.
#
#   tests/system/install-deps.sh [--arch arm64]
#
# --arch arm64 (run.sh --arch arm64 passes it) adds qemu-system-arm
# (qemu-system-aarch64) and qemu-user-static (mmdebstrap runs the arm64
# image's maintainer scripts through qemu-aarch64 via binfmt_misc).
#
# bookworm's qemu-system-x86 (7.2) conflicts with a qemu-utils 10.x from
# backports (preinstalled on some machines), so qemu-utils comes from
# bookworm, with --allow-downgrades.
set -euo pipefail
arch=amd64
case "${1:-}" in
    --arch) arch=${2:-} ;;
    --arch=*) arch=${1#--arch=} ;;
    "") ;;
    *) echo "install-deps.sh: unknown argument $1" >&2; exit 2 ;;
esac
need=()
if [ "$arch" = arm64 ]; then
    command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
    [ -x /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] && [ -r /usr/lib/binfmt.d/qemu-aarch64.conf ] || need+=(qemu-user-static)
fi
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v timeout >/dev/null || need+=(coreutils)
if ! command -v qemu-img >/dev/null || [ "${#need[@]}" -gt 0 ]; then
    need+=(qemu-utils/bookworm)
fi
[ "${#need[@]}" = 0 ] && exit 0
[ "$(id -u)" = 0 ] || { echo "install-deps.sh: need root to install: ${need[*]}" >&2; exit 1; }
echo "install-deps.sh: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=900 update -q >&2
apt-get -o DPkg::Lock::Timeout=900 install -y -q --allow-downgrades "${need[@]}" >&2
tools=(mmdebstrap qemu-system-x86_64 qemu-img mke2fs)
[ "$arch" = arm64 ] && tools+=(qemu-system-aarch64 qemu-aarch64-static)
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || { echo "install-deps.sh: $tool still missing" >&2; exit 1; }
done
