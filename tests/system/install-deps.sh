#!/bin/bash
# Install the host tools the system tests need (Debian 12, as root).
# Idempotent: does nothing when everything is there. run.sh calls it when a
# tool is missing.
#
# bookworm's qemu-system-x86 (7.2) conflicts with a qemu-utils 10.x from
# backports (preinstalled on some machines), so qemu-utils comes from
# bookworm, with --allow-downgrades.
set -euo pipefail
need=()
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
for tool in mmdebstrap qemu-system-x86_64 qemu-img mke2fs; do
    command -v "$tool" >/dev/null || { echo "install-deps.sh: $tool still missing" >&2; exit 1; }
done
