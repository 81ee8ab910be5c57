#!/usr/bin/env bash
# Fuzzing on stable Rust with AFL++ through cargo-afl (issue 12 §4;
# docs/fuzzing.md). For each target in fuzz/ it
#   1. replays the checked-in inputs, fuzz/corpus/<target>/ and
#      fuzz/regressions/<target>/, through the target (fuzz/src/bin/replay.rs:
#      one child per input, with a time and a memory cap);
#   2. fuzzes it with AFL++ for FUZZ_SECONDS seconds, starting from the corpus.
# A target fails when an input of step 1 panics, aborts or hangs, or when
# step 2 finds a crash or a hang; each is printed with the target, the file
# and its bytes in hex. The last line is `fuzz: N passed, N failed`.
#
#   scripts/fuzz.sh [target...]        (default: all six)
#
# Environment:
#   FUZZ_SECONDS  fuzzing time per target (default 60; 0: replay only)
#   FUZZ_JOBS     targets fuzzed at once (default: the number of CPUs)
#   FUZZ_OUT      AFL++ output directories (default target/fuzz)
#
# Installs what it needs: Debian's build tools (for AFL++), and cargo-afl,
# which builds AFL++ from its bundled source. Runs as root or with sudo,
# with no terminal (CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

all_targets=(config env_file broker_url control framer heartbeat)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
    case " ${all_targets[*]} " in
        *" $t "*) ;;
        *) echo "fuzz: unknown target $t (targets: ${all_targets[*]})" >&2; exit 2 ;;
    esac
done

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_JOBS=${FUZZ_JOBS:-$(nproc)}
FUZZ_OUT=${FUZZ_OUT:-$root/target/fuzz}
CARGO_AFL_VERSION=0.18.2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

say() { printf 'fuzz: %s\n' "$*"; }

# ---------------------------------------------------------------- tools
need_pkgs=()
for p in build-essential xxd; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    say "installing ${need_pkgs[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq "${need_pkgs[@]}"
fi
if [ "$(cargo afl --version 2>/dev/null | awk '{print $2}')" != "$CARGO_AFL_VERSION" ]; then
    say "installing cargo-afl $CARGO_AFL_VERSION (builds AFL++)"
    cargo install --locked --force cargo-afl --version "$CARGO_AFL_VERSION"
fi
# cargo-afl builds AFL++ when it is installed; build it now if that was
# skipped or the Rust toolchain changed since.
if ! ls "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs/rustc-"$(rustc --version | awk '{print $2}')"-*/afl.rs-"$CARGO_AFL_VERSION"/afl/bin/afl-fuzz >/dev/null 2>&1; then
    say "building AFL++"
    cargo afl config --build --force
fi

# ---------------------------------------------------------------- build
say "building the targets (cargo afl build --release)"
(cd fuzz && cargo afl build --locked --release --features afl)
bin=$root/fuzz/target/release

failed=()
passed=()
declare -A why=()
fail() { why[$1]+="${why[$1]:+; }$2"; }

# ---------------------------------------------------------------- replay
for t in "${targets[@]}"; do
    dirs=("fuzz/corpus/$t")
    [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
    if ! "$bin/replay" "$t" "${dirs[@]}"; then
        fail "$t" "replay of the checked-in inputs failed"
    fi
done

# ---------------------------------------------------------------- fuzz
# One AFL++ run, in the background of a batch of FUZZ_JOBS.
run_afl() {
    local t=$1 out=$FUZZ_OUT/$1
    rm -rf "$out"
    mkdir -p "$out"
    # AFL_NO_UI etc.: no terminal; AFL_SKIP_CPUFREQ, AFL_NO_AFFINITY: shared
    # CI machines; AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES: core_pattern may
    # pipe to systemd-coredump; AFL_IGNORE_SEED_PROBLEMS: a seed that crashes
    # is reported by the replay above, the others are still fuzzed.
    # (AFL++ takes most AFL_* variables as set whatever their value: do not
    # add any with =0.)
    AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_FAST_CAL=1 \
    AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_IGNORE_SEED_PROBLEMS=1 \
        timeout --kill-after=30 $((FUZZ_SECONDS + 120)) \
        cargo afl fuzz -i "fuzz/corpus/$t" -o "$out" -V "$FUZZ_SECONDS" \
            -x "fuzz/dict/$t.dict" -t 2000 -m 2048 -- "$bin/$t" >"$out/afl.log" 2>&1 </dev/null
}

stat_of() { awk -F' *: *' -v k="$2" '$1 == k {print $2}' "$1" 2>/dev/null; }

if [ "$FUZZ_SECONDS" -gt 0 ]; then
    say "fuzzing ${targets[*]} for ${FUZZ_SECONDS} s each, $FUZZ_JOBS at a time"
    declare -A rc=()
    i=0
    while [ $i -lt ${#targets[@]} ]; do
        pids=()
        batch=("${targets[@]:i:FUZZ_JOBS}")
        for t in "${batch[@]}"; do
            run_afl "$t" &
            pids+=($!)
        done
        for k in "${!batch[@]}"; do
            if wait "${pids[$k]}"; then rc[${batch[$k]}]=0; else rc[${batch[$k]}]=$?; fi
        done
        i=$((i + FUZZ_JOBS))
    done
    for t in "${targets[@]}"; do
        out=$FUZZ_OUT/$t
        stats=$out/default/fuzzer_stats
        if [ "${rc[$t]}" -ne 0 ] || [ ! -f "$stats" ]; then
            fail "$t" "afl-fuzz did not run (exit ${rc[$t]}); its log:"
            tail -n 30 "$out/afl.log" | sed 's/^/  | /'
            continue
        fi
        say "$t: $(stat_of "$stats" execs_done) execs in $(stat_of "$stats" run_time) s, $(stat_of "$stats" execs_per_sec) execs/s, corpus $(stat_of "$stats" corpus_count), edges $(stat_of "$stats" edges_found)/$(stat_of "$stats" total_edges), crashes $(stat_of "$stats" saved_crashes), hangs $(stat_of "$stats" saved_hangs)"
        # Every finding, replayed for its panic message; the first input of
        # each distinct panic location is shown in full.
        declare -A seen=()
        for kind in crashes hangs; do
            n=0
            for f in "$out"/default/"$kind"/id:*; do
                [ -e "$f" ] || continue
                n=$((n + 1))
                report=$(FUZZ_REPLAY_TIMEOUT=5 "$bin/replay" "$t" "$f" | tr -d '\0' || true)
                where=$(printf '%s\n' "$report" | grep -m1 -o 'panicked at [^ ]*' || echo "$kind (no panic message)")
                if [ -z "${seen[$where]:-}" ]; then
                    seen[$where]=1
                    echo "FOUND $t $kind: $f"
                    echo "  input (hex): $(head -c 512 "$f" | xxd -p | tr -d '\n')"
                    printf '%s\n' "$report" | grep -A2 'panicked at\|hang:' | head -n 6 | sed 's/^/  /'
                fi
            done
            [ $n -eq 0 ] || fail "$t" "AFL++ found $n $kind ($out/default/$kind)"
        done
        unset seen
    done
fi

for t in "${targets[@]}"; do
    if [ -n "${why[$t]:-}" ]; then
        failed+=("$t")
        say "$t: FAILED: ${why[$t]}"
    else
        passed+=("$t")
    fi
done
[ ${#failed[@]} -eq 0 ] || say "crashing inputs: save them under fuzz/regressions/<target>/ (docs/fuzzing.md)"
echo "fuzz: ${#passed[@]} passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
