# Helpers for the apt-repository scenarios (14-apt-repo, 15-upgrade-repo),
# sourced after lib.sh inside the guest. The repository is built in the guest
# with the real packaging/apt-repo.sh (copied into the share by run.sh) onto
# the 9p share, and apt reads it from there as a file: URI.
# shellcheck shell=bash

REPO=$SYSTEST_SHARE/repo
REPO_KEY=/root/repo-key          # the throwaway test key (local disk: gpg-agent's socket)
APT_REPO=$SYSTEST_SHARE/systest/apt-repo.sh
SOURCES=/etc/apt/sources.list.d/clearify.sources
export DEBIAN_FRONTEND=noninteractive

# apt_sources_offline: the guest has no network (-nic none), so the image's
# Debian sources could only add "Failed to fetch" warnings to apt update:
# set them aside. Every dependency of the package is already installed.
apt_sources_offline() {
    mkdir -p /root/apt-sources-off
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
        [ -e "$f" ] && mv "$f" /root/apt-sources-off/
    done
    return 0
}

# publish OUT GNUPGHOME DEB...: build or update the repository OUT.
publish() {
    local out=$1 home=$2; shift 2
    bash "$APT_REPO" --out "$out" --gnupghome "$home" "$@" || fail "apt-repo.sh failed for $*"
}

# add_repo: what a device does: fetch clearify.sources into sources.list.d
# (here a copy from the file: repository).
add_repo() {
    install -m 0644 "$REPO/clearify.sources" "$SOURCES"
}

# apt_update_clean: apt-get update must succeed with no warning, error or
# notice (--error-on=any turns warnings into a failure as well).
APT_UPDATE_OUT=""
apt_update_clean() {
    local rc=0
    APT_UPDATE_OUT=$(apt-get update --error-on=any 2>&1) || rc=$?
    printf '%s\n' "$APT_UPDATE_OUT"
    [ "$rc" = 0 ] || fail "apt-get update exited $rc"
    if printf '%s\n' "$APT_UPDATE_OUT" | grep -Eq '^(W|E|N|Err):'; then
        fail "apt-get update printed warnings or errors: $(printf '%s\n' "$APT_UPDATE_OUT" | grep -E '^(W|E|N|Err):')"
    fi
    echo "ok: apt-get update: no warnings"
}

# installed_version: the installed version of the package, or "".
installed_version() { dpkg-query -W -f='${Version}' clearify-workerd 2>/dev/null || true; }

# daemon_version: the version the running daemon reports (clearifyctl version).
daemon_version() { clearifyctl version 2>/dev/null | sed -n 's/^clearify-workerd \([^ ]*\) (protocol .*/\1/p'; }

# next_deb N: the path of version N+1 in the share (deb-next/, made on the
# host by make-next-deb.sh: binaries built by cargo at N+1, repacked into
# the .deb with dpkg-deb, changelog bumped; run.sh --deb-next). Fails unless
# it is the same package, newer than N.
next_deb() {
    local debs d
    debs=$(ls -1 "$SYSTEST_SHARE"/deb-next/*.deb 2>/dev/null || true)
    [ -n "$debs" ] || fail "no version N+1 in the share: run tests/system/make-next-deb.sh on the host (run.sh picks dist/next/ up, or --deb-next PATH)"
    [ "$(echo "$debs" | wc -l)" = 1 ] || fail "more than one .deb in deb-next/: $debs"
    d=$debs
    [ "$(dpkg-deb -f "$d" Package)" = clearify-workerd ] || fail "$d is not clearify-workerd"
    dpkg --compare-versions "$(dpkg-deb -f "$d" Version)" gt "$1" || fail "$d is not newer than $1"
    echo "$d"
}

# restart_and_wait: restart the unit; every worker running, text-1 consuming.
restart_and_wait() {
    systemctl restart "$UNIT" || fail "systemctl restart $UNIT failed"
    wait_for 60 "$UNIT active" unit_is_active
    wait_for 180 "all workers running" all_running
    wait_for 240 "text-1@systest answers a Celery ping" celery_ready text-1@systest
}

# start_sleep_task SECS TAG: send demo.sleep to text_processing and wait
# until it has started; sets SLEEP_ID and SLEEP_STARTED (ms).
start_sleep_task() {
    SLEEP_ID=$(tasks send demo.sleep text_processing "[$1, \"$2\"]") || fail "sending demo.sleep"
    wait_for 120 "the $1 s task $2 started" sh -c \
        "journalctl -u $UNIT -b --no-pager -o cat | grep -q 'sleep $2: start'"
    SLEEP_STARTED=$(now_ms)
}
