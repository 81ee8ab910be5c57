#!/usr/bin/env bash
# Installs what building, the demo and the tests need on Debian 12:
#   - Debian packages: redis-server (the tests and the demo start their own
#     instances on free loopback ports; the system service is not used),
#     python3-venv, build tools, and a Rust toolchain when none is on PATH;
#   - /usr/local/bin/promtool (tests/metrics.rs checks the Prometheus output
#     with it), taken out of Debian's prometheus package without installing
#     that package (which would start a Prometheus server on port 9090);
#   - .venv/ at the repository root with the pinned Celery of
#     examples/requirements.txt.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_pkgs=()
for p in redis-server python3-venv python3-pip build-essential pkg-config util-linux procps; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if ! command -v cargo >/dev/null 2>&1; then
    # Debian's own toolchain (1.9x from bookworm-security); rust-version is 1.95.
    need_pkgs+=(rustc-web cargo-web)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "setup-deps: installing ${need_pkgs[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq "${need_pkgs[@]}"
fi
# The packaged redis-server service is not needed: the tests and the demo
# start their own. Leave it as the machine had it.

if ! command -v promtool >/dev/null 2>&1; then
    echo "setup-deps: installing /usr/local/bin/promtool (from Debian's prometheus package)"
    tmp=$(mktemp -d)
    (cd "$tmp" && $SUDO apt-get -o DPkg::Lock::Timeout=900 download -qq prometheus) \
        || { $SUDO apt-get update -qq && (cd "$tmp" && $SUDO apt-get download -qq prometheus); }
    dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
    $SUDO install -m 0755 "$tmp/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$tmp"
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import celery, redis' 2>/dev/null \
    || [ "$(readlink -f .venv/bin/python)" != "$(readlink -f /usr/bin/python3 2>/dev/null || true)" ] \
    || ! cmp -s examples/requirements.txt .venv/.requirements 2>/dev/null; then
    echo "setup-deps: creating .venv with Celery"
    rm -rf .venv
    # Debian's python3, not one under a private home (pyenv in /root):
    # workers run as an unprivileged user and must be able to run it.
    py=/usr/bin/python3
    [ -x "$py" ] || py=$(command -v python3)
    "$py" -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r examples/requirements.txt
    cp examples/requirements.txt .venv/.requirements
fi
# Workers run as an unprivileged user when the tests run as root: the venv,
# the example app and the fake celery must be reachable by anyone.
chmod -R a+rX .venv examples tests/bin
if [ "$(id -u)" -eq 0 ] && ! setpriv --reuid=nobody --regid=nogroup --clear-groups \
        test -x "$(pwd)/tests/bin/fake-celery" 2>/dev/null; then
    # A checkout under a private directory (e.g. /root): let others search
    # (not list) the directories above it.
    d=$(pwd)
    while [ "$d" != / ]; do
        perm=$(stat -c %A "$d")
        if [ "${perm:9:1}" != x ] && [ "${perm:9:1}" != t ]; then
            echo "setup-deps: chmod o+x $d (workers run as nobody in the tests)"
            chmod o+x "$d"
        fi
        d=$(dirname "$d")
    done
fi
echo "setup-deps: ok ($(.venv/bin/python -c 'import celery; print("celery", celery.__version__)'), $(redis-server --version | cut -d' ' -f3))"
