#!/bin/sh
# One-time, idempotent setup of a Debian 12 (bookworm) amd64 host for building
# the clearify-workerd .debs for amd64 and (cross) arm64 with Debian's own
# Rust toolchain (rustc-web/cargo-web 1.96 from bookworm-security).
#
# Usage: sudo packaging/setup-cross.sh
# Safe to run again: adding an architecture twice and installing installed
# packages are no-ops.
set -eu

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-cross.sh: must run as root (try: sudo $0)" >&2
    exit 1
fi

host_arch=$(dpkg --print-architecture)
if [ "$host_arch" != amd64 ]; then
    echo "setup-cross.sh: expected an amd64 build host, found $host_arch" >&2
    exit 1
fi

APT="apt-get -o DPkg::Lock::Timeout=900"

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "adding foreign architecture arm64"
    dpkg --add-architecture arm64
fi

$APT update

# The -web toolchain is Debian's newer rustc (1.96 in bookworm-security);
# bookworm's plain rustc (1.63) is too old for this crate (rust-version 1.95).
# libstd-rust-web-dev:arm64 is the arm64 standard library; it loads only into
# Debian's own rustc (same build), never into a rustup toolchain.
DEBIAN_FRONTEND=noninteractive $APT install -y --no-install-recommends \
    rustc-web cargo-web libstd-rust-web-dev libstd-rust-web-dev:arm64 \
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
    dpkg-dev debhelper lintian qemu-user-static file \
    build-essential fakeroot

echo
echo "Toolchain now installed:"
for p in rustc-web cargo-web libstd-rust-web-dev:amd64 libstd-rust-web-dev:arm64 \
         gcc-aarch64-linux-gnu debhelper lintian qemu-user-static; do
    printf '  %-28s %s\n' "$p" "$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || echo MISSING)"
done
