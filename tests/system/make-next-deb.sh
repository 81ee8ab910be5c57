#!/bin/bash
# Make version N+1 of a clearify-workerd .deb for the VM scenario
# 15-upgrade-repo, on the host, without a second package build:
#
#   tests/system/make-next-deb.sh [DEB] [OUT_DIR]
#
# DEB (default: the newest dist/clearify-workerd_*_amd64.deb) is version N.
# A copy of the source tree gets version N+1 (the last number plus one) in
# Cargo.toml, Cargo.lock and a new debian/changelog entry; cargo builds the
# two binaries from it (release profile, CARGO_TARGET_DIR
# target/next-release, kept as a cache: after the first build only this
# crate is rebuilt). Then DEB is unpacked and repacked with dpkg-deb: those
# binaries, Version: N+1, the new changelog on top of the packaged one,
# fresh md5sums. So the new daemon really reports N+1 (`clearifyctl
# version`): the version is compiled in (env!("CARGO_PKG_VERSION")), and
# patching the string in the old binary is not enough (the compiler stores
# short constants as immediates). Prints the path of the new .deb
# (OUT_DIR, default dist/next/). run.sh passes it to the guest (--deb-next).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
die() { echo "make-next-deb.sh: $*" >&2; exit 1; }

deb=${1:-$(ls -1t "$repo"/dist/clearify-workerd_*_amd64.deb 2>/dev/null | head -1 || true)}
[ -n "$deb" ] && [ -f "$deb" ] || die "no .deb given and none in $repo/dist (packaging/build-deb.sh amd64)"
out_dir=${2:-$repo/dist/next}
[ "$(dpkg-deb -f "$deb" Architecture)" = amd64 ] || die "$deb is not amd64 (cargo builds for this host)"
ver=$(dpkg-deb -f "$deb" Version)
next=$(python3 -c '
import re, sys
m = re.fullmatch(r"(\d+\.\d+\.)(\d+)", sys.argv[1])
if not m:
    sys.exit(f"cannot bump version {sys.argv[1]!r} (expected X.Y.Z)")
print(m.group(1) + str(int(m.group(2)) + 1))
' "$ver") || die "cannot bump $ver"
command -v cargo >/dev/null || die "no cargo on PATH"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$work/src
mkdir -p "$src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf -) | tar -C "$src" -xf -
grep -qx "version = \"$ver\"" "$src/Cargo.toml" || die "Cargo.toml is not at version $ver (the .deb's)"
python3 - "$src" "$ver" "$next" <<'PY'
import sys
src, old, new = sys.argv[1:]
def sub(path, a, b):
    s = open(path).read()
    if s.count(a) < 1:
        sys.exit(f"{path}: {a!r} not found")
    open(path, "w").write(s.replace(a, b, 1))
sub(f"{src}/Cargo.toml", f'\nversion = "{old}"\n', f'\nversion = "{new}"\n')
sub(f"{src}/Cargo.lock", f'name = "clearify-workerd"\nversion = "{old}"\n', f'name = "clearify-workerd"\nversion = "{new}"\n')
PY
entry="clearify-workerd ($next) bookworm; urgency=medium

  * Version N+1 for the system test 15-upgrade-repo (made by
    tests/system/make-next-deb.sh from $ver).

 -- Clearify Development <dev@clearify.invalid>  $(date -R)
"
printf '%s\n' "$entry" | cat - "$src/debian/changelog" >"$work/changelog"
mv "$work/changelog" "$src/debian/changelog"

tdir=$repo/target/next-release
# Seed the cache with the dependencies of a release build already made
# (the deb stage's, else target/release): when their flags match, only this
# crate is built instead of every dependency again.
if [ ! -d "$tdir/release" ]; then
    for seed in "$repo/target/deb-amd64/release" "$repo/target/release"; do
        if [ -d "$seed/deps" ]; then
            mkdir -p "$tdir"
            cp -a "$seed" "$tdir/release"
            break
        fi
    done
fi
echo "make-next-deb.sh: cargo build --release $ver -> $next (target dir $tdir)" >&2
(cd "$src" && CARGO_TARGET_DIR=$tdir cargo build --release --locked --quiet \
    --bin clearify-workerd --bin clearifyctl) || die "cargo build of $next failed"

pkg=$work/pkg
dpkg-deb -R "$deb" "$pkg"
install -m 0755 "$tdir/release/clearify-workerd" "$pkg/usr/sbin/clearify-workerd"
install -m 0755 "$tdir/release/clearifyctl" "$pkg/usr/bin/clearifyctl"
sed -i "s/^Version: .*/Version: $next/" "$pkg/DEBIAN/control"
cl=$pkg/usr/share/doc/clearify-workerd/changelog.gz
[ -f "$cl" ] || die "$deb has no $cl"
{ printf '%s\n' "$entry"; zcat "$cl"; } | gzip -9n >"$cl.new"
mv "$cl.new" "$cl"
(cd "$pkg" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
"$pkg/usr/sbin/clearify-workerd" --version | grep -qF "$next" || die "the new clearify-workerd does not report $next"
mkdir -p "$out_dir"
out=$out_dir/clearify-workerd_${next}_amd64.deb
dpkg-deb --root-owner-group -b "$pkg" "$out" >/dev/null || die "dpkg-deb -b failed"
echo "$out"
