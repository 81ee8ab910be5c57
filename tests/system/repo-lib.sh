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

# bump_version V: V with its last number one higher (0.1.0 -> 0.1.1), the
# same length, or fail (the binaries are patched in place).
bump_version() {
    python3 - "$1" <<'PY'
import re, sys
v = sys.argv[1]
m = re.fullmatch(r"(.*?)(\d+)", v)
if not m:
    sys.exit(f"cannot bump version {v!r}")
new = m.group(1) + str(int(m.group(2)) + 1)
if len(new) != len(v):
    sys.exit(f"bumping {v} gives {new}, of another length")
print(new)
PY
}

# make_next_deb IN OUT: version N+1 of the package IN, without a cargo build:
# unpacked and repacked with dpkg-deb, Version bumped, an entry on top of the
# package's changelog, and the version string inside both binaries patched
# (same length) so that `clearify-workerd --version`, `clearifyctl version`
# and the daemon's answer over the socket all say N+1. Prints N+1.
make_next_deb() {
    local in=$1 out=$2 ver next dir=/root/next-pkg cl
    ver=$(dpkg-deb -f "$in" Version)
    next=$(bump_version "$ver") || fail "cannot bump $ver"
    rm -rf "$dir"
    dpkg-deb -R "$in" "$dir"
    sed -i "s/^Version: .*/Version: $next/" "$dir/DEBIAN/control"
    python3 - "$ver" "$next" "$dir/usr/sbin/clearify-workerd" "$dir/usr/bin/clearifyctl" <<'PY' >&2 || fail "patching the binaries' version failed"
import sys
old, new = sys.argv[1].encode(), sys.argv[2].encode()
for path in sys.argv[3:]:
    data = open(path, "rb").read()
    n = data.count(old)
    if n == 0:
        sys.exit(f"{path}: version {old!r} not found")
    open(path, "wb").write(data.replace(old, new))
    print(f"{path}: {n} occurrence(s) of {old.decode()} -> {new.decode()}")
PY
    for cl in "$dir"/usr/share/doc/clearify-workerd/changelog.Debian.gz "$dir"/usr/share/doc/clearify-workerd/changelog.gz; do
        [ -f "$cl" ] || continue
        { printf 'clearify-workerd (%s) bookworm; urgency=medium\n\n  * System test 15-upgrade-repo: version N+1, repacked from %s.\n\n -- Clearify Development <dev@clearify.invalid>  %s\n\n' \
            "$next" "$ver" "$(date -R)"; zcat "$cl"; } | gzip -9n >"$cl.new"
        mv "$cl.new" "$cl"
    done
    (cd "$dir" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
    dpkg-deb -b "$dir" "$out" >/dev/null || fail "dpkg-deb -b of version $next failed"
    "$dir/usr/sbin/clearify-workerd" --version | grep -qF "$next" || fail "the patched clearify-workerd does not report $next"
    echo "$next"
}
