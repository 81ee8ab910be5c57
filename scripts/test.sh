#!/usr/bin/env bash
# The whole test suite (what CI runs):
#   1. installs what the tests need (scripts/setup-deps.sh),
#   2. checks formatting and lints,
#   3. runs the unit and integration tests (real processes, real
#      redis-server instances on free loopback ports, real Celery),
#   4. builds the .deb packages and checks them, and runs the library's
#      unit tests for arm64 under qemu-user (packaging/build-deb.sh),
#   5. replays the fuzz corpus and fuzzes each target with AFL++ for
#      FUZZ_SECONDS (default 60) seconds (scripts/fuzz.sh, docs/fuzzing.md),
#   6. runs the system tests in a Debian 12 VM (tests/system/run.sh).
# Stages can be picked: scripts/test.sh [unit] [deb] [fuzz] [system] [system-arm64]
# (default: unit deb fuzz system).
# system-arm64 is NOT in the default set, so CI (.ci/run) does not run it:
# it installs the arm64 .deb in a Debian 12 arm64 VM under
# qemu-system-aarch64 (TCG) and runs the arm64 subset of the scenarios
# (install, tasks on two groups, SIGKILL restart, journald fields, OOM
# restart, warm stop, purge). Measured, it adds about 20 min of image build
# and 3-9 min per scenario (41 min for the 7), which would take the CI run past 75 min
# (tests/system/README.md, "arm64"). Run it with: scripts/test.sh system-arm64
# (after the deb stage has built dist/clearify-workerd_*_arm64.deb).
set -euo pipefail
cd "$(dirname "$0")/.."

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(unit deb fuzz system)
want() { local s; for s in "${stages[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

step() { printf '\n==== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "dependencies"
scripts/setup-deps.sh

if want unit; then
    step "cargo fmt --check"
    cargo fmt --all -- --check
    step "cargo clippy"
    cargo clippy --locked --all-targets -- -D warnings
    step "cargo test"
    cargo test --locked --no-fail-fast
fi
if want deb; then
    step "Debian packages (amd64 + arm64) and lintian"
    $SUDO packaging/setup-cross.sh
    packaging/build-deb.sh all
    step "arm64 unit tests under qemu-user"
    packaging/build-deb.sh test-arm64
fi
if want fuzz; then
    step "fuzzing: corpus replay and AFL++ (${FUZZ_SECONDS:-60} s per target)"
    scripts/fuzz.sh
fi
if want system; then
    step "system tests in a Debian 12 VM"
    deb=$(ls -t dist/clearify-workerd_*_amd64.deb 2>/dev/null | head -n1)
    [ -n "$deb" ] || { echo "no dist/clearify-workerd_*_amd64.deb: run the deb stage first" >&2; exit 1; }
    # 15-upgrade-repo upgrades to version N+1 of the package: built here
    # (cargo, release; the binaries repacked into the .deb).
    next=$(tests/system/make-next-deb.sh "$deb")
    # SYSTEM_SCENARIOS names the scenarios to run (default: all of them).
    # shellcheck disable=SC2086
    tests/system/run.sh --deb "$deb" --deb-next "$next" ${SYSTEM_SCENARIOS:-}
fi
if want system-arm64; then
    step "arm64 system tests in a Debian 12 arm64 VM (qemu-system-aarch64, TCG)"
    deb=$(ls -t dist/clearify-workerd_*_arm64.deb 2>/dev/null | head -n1)
    [ -n "$deb" ] || { echo "no dist/clearify-workerd_*_arm64.deb: run the deb stage first" >&2; exit 1; }
    # SYSTEM_ARM64_SCENARIOS names the scenarios (default: run.sh's arm64
    # subset: 01-install 02-tasks 03-crash 04-journald 05-limits 08-warm-stop
    # 10-remove-purge).
    # shellcheck disable=SC2086
    tests/system/run.sh --arch arm64 --deb "$deb" ${SYSTEM_ARM64_SCENARIOS:-}
fi
step "all tests passed"
