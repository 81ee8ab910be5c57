#!/bin/bash
# Build (or update) a signed apt repository of clearify-workerd from .debs,
# with Debian's own tools (apt-ftparchive from apt-utils, gpg). The result is
# plain files: any static web server can serve it, and apt reads it as a
# file: URI too. docs/apt-repository.md explains keys and publishing.
#
# Usage: packaging/apt-repo.sh [OPTIONS] [DEB...]
#
#   DEB...            the packages to publish (default: every
#                     dist/clearify-workerd_*_{amd64,arm64}.deb)
#   --out DIR         the repository (default: dist/apt). Packages already
#                     in its pool stay published, so a device can still
#                     install (downgrade to) an older version; a .deb whose
#                     name is in the pool with other contents is refused.
#   --key KEY         sign with this secret key (fingerprint, key id or user
#                     id) from gpg's keyring ($GNUPGHOME, or --gnupghome)
#   --gnupghome DIR   the keyring that holds --key; without --key, where
#                     the throwaway test key is made and kept
#   --url URL         where devices reach the repository, written into
#                     clearify.sources (default: file:<absolute --out>)
#   --suite NAME      suite and codename (default: bookworm)
#   -h, --help        this text
#
# Without --key the repository is signed with a THROWAWAY TEST KEY, made on
# the first run and kept next to the repository (DIR.test-gnupg, never
# inside it, or --gnupghome), so later runs sign with the same key. Only
# for tests: a device must trust a real key (docs/apt-repository.md).
#
# Writes into DIR:
#   pool/main/c/clearify-workerd/*.deb
#   dists/SUITE/main/binary-{amd64,arm64}/Packages{,.gz}
#   dists/SUITE/Release, InRelease (clear-signed), Release.gpg (detached)
#   clearify-archive-keyring.asc, clearify-archive-keyring.gpg: the public key
#   clearify.sources: a deb822 source with the key inline in Signed-By, so
#     curl -fsSLo /etc/apt/sources.list.d/clearify.sources URL/clearify.sources
#     apt update && apt install clearify-workerd
#   is all a device needs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ARCHES="amd64 arm64"
COMPONENT=main
PACKAGE=clearify-workerd

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "apt-repo.sh: $*" >&2; exit 1; }
say() { echo "apt-repo.sh: $*" >&2; }

out=$ROOT/dist/apt
key=""
gnupghome=""
url=""
suite=bookworm
debs=()
while [ $# -gt 0 ]; do
    case $1 in
        --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift ;;
        --key) [ $# -ge 2 ] || die "--key needs a key"; key=$2; shift ;;
        --gnupghome) [ $# -ge 2 ] || die "--gnupghome needs a directory"; gnupghome=$2; shift ;;
        --url) [ $# -ge 2 ] || die "--url needs a URL"; url=$2; shift ;;
        --suite) [ $# -ge 2 ] || die "--suite needs a name"; suite=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) debs+=("$1") ;;
    esac
    shift
done

for c in apt-ftparchive gpg dpkg-deb gzip sha256sum; do
    command -v "$c" >/dev/null 2>&1 || die "missing: $c (apt-get install apt-utils gpg gpg-agent)"
done
[[ $suite =~ ^[a-z0-9][a-z0-9.-]*$ ]] || die "bad suite name: $suite"

if [ ${#debs[@]} = 0 ]; then
    shopt -s nullglob
    for a in $ARCHES; do debs+=("$ROOT"/dist/${PACKAGE}_*_"$a".deb); done
    shopt -u nullglob
    [ ${#debs[@]} -gt 0 ] || die "no $ROOT/dist/${PACKAGE}_*_{amd64,arm64}.deb: build them (packaging/build-deb.sh) or name .debs"
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -n "$url" ] || url=file:$out
if [ -n "$gnupghome" ]; then
    [ -d "$gnupghome" ] || install -d -m 0700 "$gnupghome"
    GNUPGHOME=$(cd "$gnupghome" && pwd)
    export GNUPGHOME
fi

# ---- the key ------------------------------------------------------------------
if [ -z "$key" ]; then
    [ -n "$gnupghome" ] || export GNUPGHOME=$out.test-gnupg
    if [ ! -s "$GNUPGHOME/test-key.fpr" ]; then
        say "no --key: making a THROWAWAY TEST KEY in $GNUPGHOME (for tests only)"
        # Never a throwaway key in someone's real keyring.
        if [ -d "$GNUPGHOME" ] && [ -n "$(ls -A "$GNUPGHOME")" ]; then
            die "$GNUPGHOME is not empty and holds no test key: give --key, or an empty or new directory"
        fi
        install -d -m 0700 "$GNUPGHOME"
        gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
            --quick-gen-key "clearify-workerd TEST repository (throwaway) <test@clearify.invalid>" \
            ed25519 sign never 2>/dev/null || die "gpg could not make the test key"
        gpg --batch --with-colons --list-secret-keys 2>/dev/null | awk -F: '$1 == "fpr" {print $10; exit}' \
            >"$GNUPGHOME/test-key.fpr"
    fi
    key=$(cat "$GNUPGHOME/test-key.fpr")
    say "signing with the throwaway test key $key"
fi
# The primary key's fingerprint, and the key must be able to sign here.
fpr=$(gpg --batch --with-colons --list-secret-keys -- "$key" 2>/dev/null |
    awk -F: '$1 == "fpr" {print $10; exit}') || true
[ -n "$fpr" ] || die "no secret key '$key' in ${GNUPGHOME:-~/.gnupg}"

# ---- the pool ---------------------------------------------------------------------
pool=pool/$COMPONENT/${PACKAGE:0:1}/$PACKAGE
mkdir -p "$out/$pool"
for deb in "${debs[@]}"; do
    [ -f "$deb" ] || die "no such .deb: $deb"
    pkg=$(dpkg-deb -f "$deb" Package) || die "$deb is not a .deb"
    ver=$(dpkg-deb -f "$deb" Version)
    arch=$(dpkg-deb -f "$deb" Architecture)
    [ "$pkg" = "$PACKAGE" ] || die "$deb is package '$pkg', not $PACKAGE"
    case " $ARCHES all " in *" $arch "*) ;; *) die "$deb: architecture $arch (this repository has $ARCHES)" ;; esac
    # The canonical name, whatever the file was called (epochs drop out).
    name=${PACKAGE}_${ver#*:}_$arch.deb
    dest=$out/$pool/$name
    if [ -e "$dest" ]; then
        if [ "$(sha256sum <"$deb")" != "$(sha256sum <"$dest")" ]; then
            die "$name is already published with other contents; a published version never changes: bump the version"
        fi
        say "already published: $name"
        continue
    fi
    install -m 0644 "$deb" "$dest.tmp"
    mv "$dest.tmp" "$dest"
    say "added $name"
done

# ---- the indexes --------------------------------------------------------------
dists=dists/$suite
cd "$out"
rm -rf "$dists.new"
for a in $ARCHES; do
    d=$dists.new/$COMPONENT/binary-$a
    mkdir -p "$d"
    # --arch: only *_ARCH.deb and *_all.deb; Filename: relative to the root.
    apt-ftparchive --arch "$a" packages pool >"$d/Packages"
    gzip -9n <"$d/Packages" >"$d/Packages.gz"
    echo "$a: $(grep -c '^Package:' "$d/Packages" || true) package(s)" >&2
done
apt-ftparchive \
    -o APT::FTPArchive::Release::Origin=Clearify \
    -o APT::FTPArchive::Release::Label=clearify-workerd \
    -o APT::FTPArchive::Release::Suite="$suite" \
    -o APT::FTPArchive::Release::Codename="$suite" \
    -o APT::FTPArchive::Release::Architectures="$ARCHES" \
    -o APT::FTPArchive::Release::Components="$COMPONENT" \
    -o APT::FTPArchive::Release::Description="clearify-workerd packages" \
    release "$dists.new" >"$out/.Release.tmp"
mv "$out/.Release.tmp" "$dists.new/Release"
# No "!" after the fingerprint: gpg picks the key's signing subkey, so a
# build machine may hold only that (docs/apt-repository.md).
sign=(gpg --batch --yes --quiet --no-auto-check-trustdb --local-user "$fpr" --digest-algo SHA512)
"${sign[@]}" --clearsign -o "$dists.new/InRelease" "$dists.new/Release"
"${sign[@]}" --armor --detach-sign -o "$dists.new/Release.gpg" "$dists.new/Release"
# Swap the new indexes in: a client sees the old set or the new one (two
# renames; a client mid-update retries on a hash mismatch).
rm -rf "$dists.old"
[ -e "$dists" ] && mv "$dists" "$dists.old"
mv "$dists.new" "$dists"
rm -rf "$dists.old"

# ---- the public key and the source file -----------------------------------------
gpg --batch --no-auto-check-trustdb --armor --export "$fpr" >clearify-archive-keyring.asc.tmp
gpg --batch --no-auto-check-trustdb --export "$fpr" >clearify-archive-keyring.gpg.tmp
[ -s clearify-archive-keyring.gpg.tmp ] || die "could not export the public key $fpr"
mv clearify-archive-keyring.asc.tmp clearify-archive-keyring.asc
mv clearify-archive-keyring.gpg.tmp clearify-archive-keyring.gpg
{
    echo "# clearify-workerd: apt source (deb822, sources.list(5))."
    echo "# Key fingerprint: $fpr"
    echo "Types: deb"
    echo "URIs: $url"
    echo "Suites: $suite"
    echo "Components: $COMPONENT"
    echo "Signed-By:"
    # The key inline: one space of indent, an empty line as " .".
    sed -e 's/^$/./' -e 's/^/ /' clearify-archive-keyring.asc
} >clearify.sources.tmp
mv clearify.sources.tmp clearify.sources
chmod 0644 clearify.sources clearify-archive-keyring.asc clearify-archive-keyring.gpg

say "repository $out ($suite, $ARCHES), signed by $fpr"
say "source file: $out/clearify.sources (URIs: $url)"
