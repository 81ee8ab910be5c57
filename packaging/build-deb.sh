#!/bin/bash
# Build the clearify-workerd .debs for amd64 and/or arm64 on an amd64 Debian 12
# host, and check them. One-time host setup: sudo packaging/setup-cross.sh
#
# Usage: packaging/build-deb.sh [OPTIONS] [amd64|arm64|all]    (default: all)
#        packaging/build-deb.sh test-arm64
#
#   amd64        native build (cargo from PATH, e.g. rustup's)
#   arm64        cross build with Debian's toolchain:
#                dpkg-buildpackage -a arm64 -Pcross,nocheck -b -us -uc
#   all          both
#   test-arm64   run the library's unit tests for arm64 under
#                qemu-aarch64-static (Debian's cargo, no .deb built)
#
# Options:
#   --check-repro   build each .deb a second time from a copy of the tree in
#                   another directory with an empty target dir, and require
#                   byte-identical .debs (sha256)
#   --test          also run the unit tests: in the amd64 package build, and
#                   under qemu for arm64 (as test-arm64)
#   -h, --help      this text
#
# Results go to dist/: the .debs, .buildinfo, .changes and build logs.
# Checks on each .deb (any failure exits non-zero):
#   lintian (no errors, no warnings), the expected files, `file` names the
#   right CPU, the binaries run (--version; --check on the shipped config and
#   the examples, arm64 under qemu-aarch64-static without -L), the glibc the
#   package needs (<= 2.35, Ubuntu 22.04), the unit's security exposure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIST=$ROOT/dist
MAX_GLIBC=2.35
MAX_EXPOSURE=25    # systemd-analyze security --threshold: 2.5 * 10 (issue 12)

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "build-deb.sh: $*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }

check_repro=0
run_tests=0
target=all
while [ $# -gt 0 ]; do
    case $1 in
        --check-repro) check_repro=1 ;;
        --test) run_tests=1 ;;
        -h|--help) usage; exit 0 ;;
        amd64|arm64|all|test-arm64) target=$1 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done

need() {
    local missing=()
    for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
    [ ${#missing[@]} -eq 0 ] ||
        die "missing: ${missing[*]} (run: sudo packaging/setup-cross.sh)"
}

[ "$(dpkg --print-architecture)" = amd64 ] || die "expects an amd64 build host"
need dpkg-buildpackage dpkg-parsechangelog dh lintian file sha256sum
VERSION=$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -S Version)
SOURCE=$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -S Source)
mkdir -p "$DIST"

# Copy the source tree (tracked and untracked-but-not-ignored files) into $1,
# so that dpkg-buildpackage writes its results next to it, not into the
# directory above the checkout.
stage() {
    local dest=$1
    rm -rf "$dest"
    mkdir -p "$dest"
    if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' f; do
                [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"
            done | tar --null -T - -cf -) | tar -C "$dest" -xf -
    else
        tar -C "$ROOT" --exclude=./target --exclude=./dist --exclude=./.git -cf - . |
            tar -C "$dest" -xf -
    fi
}

# build ARCH WORKDIR TARGET_DIR: one dpkg-buildpackage run; prints the .deb path.
build() {
    local arch=$1 work=$2 tdir=$3 src log opts=() t0
    src=$work/$SOURCE-$VERSION
    log=$work/build.log
    stage "$src"
    if [ "$arch" = amd64 ]; then
        need cargo
        if [ $run_tests = 1 ]; then
            opts=(-b -us -uc)
        else
            opts=(-Pnocheck -b -us -uc)
        fi
    else
        need /usr/bin/cargo /usr/bin/rustc "${arch_gnu[$arch]}-gcc"
        opts=(-a "$arch" -Pcross,nocheck -b -us -uc)
    fi
    local dbo=${DEB_BUILD_OPTIONS:-}
    if [ $run_tests = 0 ] || [ "$arch" != amd64 ]; then dbo="$dbo nocheck"; fi
    echo "dpkg-buildpackage ${opts[*]}   (in $src, log: $log)" >&2
    t0=$(date +%s)
    if ! (cd "$src" && env CARGO_TARGET_DIR="$tdir" DEB_BUILD_OPTIONS="${dbo# }" \
            dpkg-buildpackage "${opts[@]}") >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "dpkg-buildpackage for $arch failed; full log: $log"
    fi
    echo "build time $arch: $(( $(date +%s) - t0 )) s" >&2
    ls "$work"/"${SOURCE}_${VERSION}_${arch}.deb"
}

declare -A arch_gnu=([amd64]=x86_64-linux-gnu [arm64]=aarch64-linux-gnu)
declare -A arch_file=([amd64]='x86-64' [arm64]='ARM aarch64')
declare -A arch_qemu=([amd64]='' [arm64]=qemu-aarch64-static)

# check ARCH DEB: everything we can check without installing the package.
check() {
    local arch=$1 deb=$2 x run=() f desc
    x=$DIST/.extract/$arch
    rm -rf "$x"
    mkdir -p "$x"
    dpkg-deb -x "$deb" "$x"
    dpkg-deb -e "$deb" "$x/DEBIAN"

    step "lintian $(basename "$deb")"
    lintian -I --fail-on error,warning "$deb" || die "lintian reports errors or warnings for $deb"
    echo "lintian: no errors, no warnings"

    step "contents"
    for f in usr/sbin/clearify-workerd usr/bin/clearifyctl \
             lib/systemd/system/clearify-workerd.service \
             etc/clearify/workers.toml etc/clearify/worker.env \
             usr/share/man/man8/clearify-workerd.8.gz usr/share/man/man1/clearifyctl.1.gz \
             usr/share/man/man5/workers.toml.5.gz \
             usr/share/bash-completion/completions/clearifyctl \
             usr/share/zsh/vendor-completions/_clearifyctl \
             usr/share/doc/clearify-workerd/examples/workers-pi4-4gb.toml \
             usr/share/doc/clearify-workerd/examples/workers-pi4-8gb.toml \
             usr/share/doc/clearify-workerd/examples/workers-cloud-2-4vcpu.toml; do
        [ -e "$x/$f" ] || die "$deb lacks /$f"
    done
    grep -qx /etc/clearify/workers.toml "$x/DEBIAN/conffiles" || die "workers.toml is not a conffile"
    grep -qx /etc/clearify/worker.env "$x/DEBIAN/conffiles" || die "worker.env is not a conffile"
    [ "$(stat -c %a "$x/etc/clearify/worker.env")" = 640 ] || die "worker.env is not mode 0640 in the .deb"
    dpkg-deb -c "$deb" | awk '{print $1, $3, $6}' | grep -E 'usr/s?bin/|etc/' || true

    step "binaries"
    for f in usr/sbin/clearify-workerd usr/bin/clearifyctl; do
        desc=$(file -b "$x/$f")
        echo "/$f: $desc"
        case $desc in
            *"${arch_file[$arch]}"*) ;;
            *) die "/$f is not a ${arch_file[$arch]} binary" ;;
        esac
        printf '%-28s %s bytes\n' "/$f" "$(stat -c %s "$x/$f")"
    done
    if [ -n "${arch_qemu[$arch]}" ]; then
        need "${arch_qemu[$arch]}"
        # No binfmt_misc here: call qemu explicitly. No -L: the arm64 loader
        # and libc come from libc6:arm64 in /lib (multiarch).
        run=("${arch_qemu[$arch]}")
    fi
    "${run[@]}" "$x/usr/sbin/clearify-workerd" --version
    "${run[@]}" "$x/usr/bin/clearifyctl" --version 2>/dev/null || "${run[@]}" "$x/usr/bin/clearifyctl" version

    # --check on the shipped config and the examples. They name
    # /opt/clearify/venv/bin/celery and /etc/clearify/worker.env, which --check
    # requires to exist: point them at a sandbox with a stand-in celery. They
    # also name the worker user clearify-worker, which postinst creates and
    # --check looks up: on a build host without it, nobody stands in.
    local sb=$DIST/.extract/sandbox-$arch cfg out worker_user=clearify-worker
    getent passwd clearify-worker >/dev/null || worker_user=nobody
    grep -q '^user = "clearify-worker"' "$x/etc/clearify/workers.toml" ||
        die "the shipped workers.toml does not set [celery] user = \"clearify-worker\""
    rm -rf "$sb"
    mkdir -p "$sb/opt/clearify/venv/bin"
    printf '#!/bin/sh\nexit 0\n' >"$sb/opt/clearify/venv/bin/celery"
    chmod 0755 "$sb/opt/clearify/venv/bin/celery"
    cp "$x/etc/clearify/worker.env" "$sb/worker.env"
    for cfg in "$x/etc/clearify/workers.toml" "$x"/usr/share/doc/clearify-workerd/examples/*.toml; do
        sed -e "s#/opt/clearify#$sb/opt/clearify#g" \
            -e "s#/etc/clearify/worker.env#$sb/worker.env#g" \
            -e "s#^user = \"clearify-worker\"#user = \"$worker_user\"#" \
            "$cfg" >"$sb/$(basename "$cfg")"
        echo "--check $(basename "$cfg")"
        if ! out=$("${run[@]}" "$x/usr/sbin/clearify-workerd" --check --config "$sb/$(basename "$cfg")" 2>&1); then
            printf '%s\n' "$out" >&2
            die "clearify-workerd --check rejects $(basename "$cfg")"
        fi
    done

    step "dependencies"
    local depends glibc
    depends=$(dpkg-deb -f "$deb" Depends)
    echo "Depends: $depends"
    glibc=$(printf '%s\n' "$depends" | sed -n 's/.*libc6 (>= \([^)]*\)).*/\1/p')
    [ -n "$glibc" ] || die "no versioned libc6 dependency in $deb"
    dpkg --compare-versions "$glibc" le "$MAX_GLIBC" ||
        die "needs glibc $glibc, more than $MAX_GLIBC (Ubuntu 22.04)"
    echo "glibc needed: $glibc (<= $MAX_GLIBC)"

    step "unit"
    # verify checks the unit against a root holding the system's units, the
    # packaged binary and /bin/kill. It exits 0 even on unknown keys or bad
    # values, so any output counts as a failure.
    local vr=$DIST/.extract/verify-root-$arch out
    rm -rf "$vr"
    mkdir -p "$vr/lib/systemd" "$vr/bin" "$vr/usr/sbin"
    cp -a /lib/systemd/system "$vr/lib/systemd/"
    cp "$x/lib/systemd/system/clearify-workerd.service" "$vr/lib/systemd/system/"
    cp /bin/kill "$vr/bin/kill"
    cp "$x/usr/sbin/clearify-workerd" "$vr/usr/sbin/"
    out=$(systemd-analyze verify --man=no --root="$vr" clearify-workerd.service 2>&1) ||
        die "systemd-analyze verify failed: $out"
    [ -z "$out" ] || die "systemd-analyze verify complains: $out"
    echo "systemd-analyze verify: clean"
    systemd-analyze security --offline=true --threshold=$MAX_EXPOSURE \
        "$x/lib/systemd/system/clearify-workerd.service" | tail -n 1 ||
        die "unit exposure above $MAX_EXPOSURE/10"
}

QEMU_SKIP=control::server::tests::peer_groups_are_the_peers_groups

test_arm64() {
    need /usr/bin/cargo /usr/bin/rustc aarch64-linux-gnu-gcc qemu-aarch64-static
    step "unit tests for arm64 under qemu-aarch64-static"
    local t0
    t0=$(date +%s)
    (cd "$ROOT" && env RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
        AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static \
        /usr/bin/cargo test --locked --target aarch64-unknown-linux-gnu --lib \
        --target-dir "$ROOT/target/test-arm64" -- --skip "$QEMU_SKIP")
    # qemu-user (7.2) does not emulate getsockopt(SO_PEERGROUPS): it answers
    # ERANGE whatever the buffer size. That one test of the call itself runs
    # natively only (cargo test on amd64; the VM system tests use it too).
    echo "arm64 unit tests: $(( $(date +%s) - t0 )) s; not run under qemu-user: $QEMU_SKIP (SO_PEERGROUPS is not emulated)"
}

one() {
    local arch=$1 deb deb2 work
    step "build $arch"
    work=$DIST/.build/$arch
    deb=$(build "$arch" "$work" "$ROOT/target/deb-$arch")
    for f in "$work"/*.deb "$work"/*.buildinfo "$work"/*.changes; do
        [ -e "$f" ] && cp -p "$f" "$DIST/"
    done
    cp -p "$work/build.log" "$DIST/build-$arch.log"
    deb=$DIST/$(basename "$deb")
    check "$arch" "$deb"
    if [ $check_repro = 1 ]; then
        step "reproducibility $arch: second build elsewhere, empty target dir"
        rm -rf "$ROOT/target/deb-repro-$arch"
        deb2=$(build "$arch" "$DIST/.build/repro-$arch/elsewhere" "$ROOT/target/deb-repro-$arch")
        sha256sum "$deb" "$deb2"
        if [ "$(sha256sum <"$deb")" != "$(sha256sum <"$deb2")" ]; then
            command -v diffoscope >/dev/null && diffoscope "$deb" "$deb2" | head -n 60
            die "$arch: the two builds differ"
        fi
        echo "reproducible: identical .debs"
    fi
}

case $target in
    amd64|arm64) one "$target" ;;
    all) one amd64; one arm64 ;;
    test-arm64) test_arm64; exit 0 ;;
esac
if [ $run_tests = 1 ] && [ "$target" != amd64 ]; then test_arm64; fi

step "results in $DIST"
ls -l "$DIST"/*.deb
