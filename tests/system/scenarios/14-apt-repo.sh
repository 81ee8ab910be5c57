#!/bin/bash
# 14. The signed apt repository (issue 16 §2). packaging/apt-repo.sh builds
# a repository from the .deb onto the 9p share, signed with a throwaway test
# key. A device adds it the documented way (clearify.sources into
# sources.list.d, a file: URI here): `apt-get update` passes with no warning
# (--error-on=any, and no W:/E:/N: line), `apt-get install clearify-workerd`
# installs it from the repository and the service runs. The same repository
# signed with another key is refused by apt (NO_PUBKEY, "is not signed") and
# offers no package.
# systest-timeout: 900
. "$SYSTEST_LIB"
. "$SYSTEST_SHARE/systest/repo-lib.sh"

deb=$(deb_path)
ver=$(dpkg-deb -f "$deb" Version)
apt_sources_offline

step "build the repository on the share with packaging/apt-repo.sh"
publish "$REPO" "$REPO_KEY" "$deb"
for f in dists/bookworm/InRelease dists/bookworm/Release.gpg dists/bookworm/Release \
    dists/bookworm/main/binary-amd64/Packages.gz dists/bookworm/main/binary-arm64/Packages.gz \
    "pool/main/c/clearify-workerd/clearify-workerd_${ver}_amd64.deb" \
    clearify.sources clearify-archive-keyring.gpg clearify-archive-keyring.asc; do
    [ -f "$REPO/$f" ] || fail "the repository lacks $f"
done
echo "ok: the repository has InRelease, Release.gpg, both arches' indexes, the pool and clearify.sources"
rel=$(cat "$REPO/dists/bookworm/Release")
assert_contains "$rel" "Architectures: amd64 arm64" "Release"
assert_contains "$rel" "Codename: bookworm" "Release"
assert_cmd "InRelease verifies against the published key" \
    gpgv --keyring "$REPO/clearify-archive-keyring.gpg" "$REPO/dists/bookworm/InRelease"
assert_cmd "Release.gpg verifies against the published key" \
    gpgv --keyring "$REPO/clearify-archive-keyring.gpg" "$REPO/dists/bookworm/Release.gpg" "$REPO/dists/bookworm/Release"
src=$(cat "$REPO/clearify.sources")
assert_contains "$src" "URIs: file:$REPO" "clearify.sources"
assert_contains "$src" "Signed-By:" "clearify.sources"
assert_contains "$src" " -----BEGIN PGP PUBLIC KEY BLOCK-----" "clearify.sources (the key inline)"

step "a device adds clearify.sources; apt-get update"
install_demo_app
start_redis
add_repo
apt_update_clean
assert_contains "$APT_UPDATE_OUT" "file:$REPO bookworm InRelease" "apt-get update"
policy=$(apt-cache policy clearify-workerd)
printf '%s\n' "$policy"
assert_contains "$policy" "Candidate: $ver" "apt-cache policy"
assert_contains "$policy" "file:$REPO bookworm/main amd64 Packages" "apt-cache policy"

step "apt-get install clearify-workerd (by name, from the repository)"
apt-get install -y clearify-workerd || fail "apt-get install clearify-workerd failed"
assert_eq "$(installed_version)" "$ver" "installed version"
wait_for 60 "$UNIT active" unit_is_active
assert_eq "$(systemctl is-active "$UNIT")" active "systemctl is-active"
assert_eq "$(systemctl is-enabled "$UNIT")" enabled "systemctl is-enabled"
assert_eq "$(daemon_version)" "$ver" "the daemon's version (clearifyctl version)"
assert_cmd "clearifyctl status answers" clearifyctl status

step "the service runs workers from the installed package"
write_env
two_group_config
restart_and_wait
assert_cmd "tasks run" tasks batch text_processing 3 --timeout 180

step "the same packages signed with another key are refused"
EVIL=$SYSTEST_SHARE/evil-repo
publish "$EVIL" /root/evil-key "$deb"
good_fpr=$(sed -n 's/^# Key fingerprint: //p' "$REPO/clearify.sources")
evil_fpr=$(sed -n 's/^# Key fingerprint: //p' "$EVIL/clearify.sources")
assert_ne "$evil_fpr" "$good_fpr" "the other repository's key"
# The device's source (its trusted key) now points at the other repository,
# as if a mirror or a man in the middle served it.
rm -f "$SOURCES"
sed "s#^URIs: .*#URIs: file:$EVIL#" "$REPO/clearify.sources" >/etc/apt/sources.list.d/evil.sources
rc=0
out=$(apt-get update 2>&1) || rc=$?
printf '%s\n' "$out"
assert_ne "$rc" 0 "apt-get update's exit status for the other key"
assert_contains "$out" "NO_PUBKEY" "apt-get update"
assert_contains "$out" "file:$EVIL bookworm InRelease' is not signed" "apt-get update"
policy=$(apt-cache policy clearify-workerd)
printf '%s\n' "$policy"
assert_not_contains "$policy" "file:$EVIL" "apt-cache policy (nothing from the refused repository)"
rm -f /etc/apt/sources.list.d/evil.sources

step "the real repository again: clean"
add_repo
apt_update_clean
assert_contains "$(apt-cache policy clearify-workerd)" "file:$REPO bookworm/main amd64 Packages" "apt-cache policy"
