#!/bin/bash
# Run the clearify-workerd system tests in a Debian 12 VM.
#
#   tests/system/run.sh [--arch amd64|arm64] [--deb PATH] [--keep-disk] [--list] [SCENARIO...]
#
# SCENARIO is a file name under scenarios/ without ".sh" (e.g. smoke,
# 02-tasks) or its number (2). Default: every scenario, in order.
# Each scenario gets a fresh VM: a qcow2 overlay on the cached image
# (build-image.sh), booted headless with QEMU/TCG, with a 9p share carrying
# the .deb, the scenario scripts, the example app and a result directory.
# A scenario may ask for another boot on the same disk (lib.sh:
# request_next_boot); the host then boots the same overlay again and runs
# the scenario's next phase (SYSTEST_PHASE=2, ...).
#
# Exits non-zero if the image cannot be built, a VM does not boot, a scenario
# fails, or a scenario produced no result. Never passes vacuously.
#
# Options:
#   --arch ARCH    amd64 (default, or $SYSTEST_ARCH) or arm64: an arm64 image
#                  (build-image.sh --arch arm64) on qemu-system-aarch64
#                  (-M virt -cpu cortex-a72, TCG); its default scenarios are
#                  the arm64 subset (ARM64_SCENARIOS below), and every
#                  timeout is multiplied by $SYSTEST_TIME_FACTOR (default 3)
#   --deb PATH     the .deb to install (default: $SYSTEST_DEB, or the newest
#                  dist/clearify-workerd_*_ARCH.deb of the repository)
#   --keep-disk    keep each scenario's overlay disk (default: deleted)
#   --deb-next PATH  version N+1 for 15-upgrade-repo (default:
#                  $SYSTEST_DEB_NEXT, or the newest dist/next/*_amd64.deb,
#                  made by make-next-deb.sh)
#   --list         print the scenario names and exit
# Without scenario names every scenario runs, except those marked
# "# systest-default: no" (long measurements), which run when named.
# Environment: SYSTEST_OUT (default tests/system/out), SYSTEST_BOOT_TIMEOUT
# (seconds for a boot to reach the runner, default 300), SYSTEST_CACHE.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out_root=${SYSTEST_OUT:-$here/out}
boot_timeout=${SYSTEST_BOOT_TIMEOUT:-300}
default_timeout=300
max_phases=3
deb=${SYSTEST_DEB:-}
deb_next=${SYSTEST_DEB_NEXT:-}
arch=${SYSTEST_ARCH:-amd64}
# The scenarios an arm64 run does by default (issue 16 §1): install, tasks on
# two groups, a SIGKILL restart, journald fields, a memory_max OOM restart,
# warm stop, purge.
ARM64_SCENARIOS=(01-install 02-tasks 03-crash 04-journald 05-limits 08-warm-stop 10-remove-purge)
keep_disk=0
names=()

usage() { sed -n '2,34p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "run.sh: $*" >&2; exit 1; }

# smoke first: when the VM itself is broken, it says so fastest.
all_scenarios() { (cd "$here/scenarios" && ls -1 -- *.sh | sed 's/\.sh$//' | sort -V | awk '$0 == "smoke" {print; next} {rest[++n] = $0} END {for (i = 1; i <= n; i++) print rest[i]}'); }

while [ $# -gt 0 ]; do
    case "$1" in
        --deb) [ $# -ge 2 ] || die "--deb needs a path"; deb=$2; shift 2 ;;
        --deb=*) deb=${1#--deb=}; shift ;;
        --deb-next) [ $# -ge 2 ] || die "--deb-next needs a path"; deb_next=$2; shift 2 ;;
        --arch) [ $# -ge 2 ] || die "--arch needs amd64 or arm64"; arch=$2; shift 2 ;;
        --arch=*) arch=${1#--arch=}; shift ;;
        --keep-disk) keep_disk=1; shift ;;
        --list) all_scenarios; exit 0 ;;
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; echo "run.sh: unknown option $1" >&2; exit 2 ;;
        *) names+=("$1"); shift ;;
    esac
done

# Per architecture: the QEMU binary and machine, the serial console, and a
# factor for every timeout (TCG emulating arm64 is slower than amd64).
case "$arch" in
    amd64)
        qemu=qemu-system-x86_64
        machine=(-cpu max)
        console_dev=ttyS0
        time_factor=${SYSTEST_TIME_FACTOR:-1}
        ;;
    arm64)
        qemu=qemu-system-aarch64
        machine=(-M virt -cpu cortex-a72)
        console_dev=ttyAMA0
        time_factor=${SYSTEST_TIME_FACTOR:-3}
        ;;
    *) die "unsupported --arch '$arch' (amd64, arm64)" ;;
esac
[[ "$time_factor" =~ ^[1-9][0-9]?$ ]] || die "SYSTEST_TIME_FACTOR must be an integer 1..99, got '$time_factor'"
boot_timeout=$((boot_timeout * time_factor))

for tool in "$qemu" qemu-img mmdebstrap mke2fs; do
    if ! command -v "$tool" >/dev/null; then
        echo "run.sh: $tool missing: running install-deps.sh"
        "$here/install-deps.sh" --arch "$arch" || die "could not install the tools (see install-deps.sh)"
        break
    fi
done
for tool in "$qemu" qemu-img timeout; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (tests/system/install-deps.sh installs it)"
done

# Resolve the scenario names.
mapfile -t available < <(all_scenarios)
[ "${#available[@]}" -gt 0 ] || die "no scenarios under $here/scenarios"
scenarios=()
if [ "${#names[@]}" = 0 ] && [ "$arch" = arm64 ]; then
    names=("${ARM64_SCENARIOS[@]}")
fi
if [ "${#names[@]}" = 0 ]; then
    # A scenario with a "# systest-default: no" line (a long measurement)
    # runs only when named.
    for a in "${available[@]}"; do
        if grep -qx '# systest-default: no' "$here/scenarios/$a.sh"; then
            echo "run.sh: $a runs only when named (systest-default: no)"
        else
            scenarios+=("$a")
        fi
    done
else
    for n in "${names[@]}"; do
        n=${n%.sh}; n=${n##*/}
        match=""
        for a in "${available[@]}"; do
            if [ "$a" = "$n" ]; then match=$a; break; fi
            if [[ "$n" =~ ^[0-9]+$ ]] && [[ "$a" =~ ^0*${n#0}- ]]; then match=$a; break; fi
        done
        [ -n "$match" ] || die "unknown scenario '$n' (have: ${available[*]})"
        scenarios+=("$match")
    done
fi

# The .deb, if any. A scenario that needs it fails loudly without it.
if [ -z "$deb" ]; then
    deb=$(ls -1t "$repo"/dist/clearify-workerd_*_"$arch".deb 2>/dev/null | head -1 || true)
fi
if [ -n "$deb" ]; then
    [ -f "$deb" ] || die "no such .deb: $deb"
    deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")
    echo "run.sh: package: $deb"
    case "$deb" in
        *_"$arch".deb|*_all.deb) ;;
        *) die "$deb is not an $arch package (--arch $arch)" ;;
    esac
else
    echo "run.sh: no .deb given and none in $repo/dist: scenarios that install it will fail"
fi

[ -n "$deb_next" ] || deb_next=$(ls -1t "$repo"/dist/next/clearify-workerd_*_amd64.deb 2>/dev/null | head -1 || true)
if [ -n "$deb_next" ]; then
    [ -f "$deb_next" ] || die "no such .deb: $deb_next"
    echo "run.sh: version N+1 (15-upgrade-repo): $deb_next"
fi

t_start=$(date +%s)
img_dir=$("$here/build-image.sh" --arch "$arch" | tail -1) || die "image build failed"
[ -f "$img_dir/ok" ] || die "image build failed: $img_dir/ok missing"
t_image=$(date +%s)
echo "run.sh: $arch image $img_dir (ready after $((t_image - t_start)) s)"

run_id=$(date -u +%Y%m%dT%H%M%SZ)-$$
run_dir=$out_root/$run_id
mkdir -p "$run_dir"
ln -sfn "$run_id" "$out_root/latest"
summary=$run_dir/summary.txt
: >"$summary"

# Never leave a QEMU behind when run.sh itself is stopped.
qemu_pid=""
on_exit() { [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null; }
trap on_exit EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM

ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { printf '%d.%01d' $(($1 / 1000)) $((($1 % 1000) / 100)); }

scenario_timeout() {
    local t
    t=$(sed -n 's/^# systest-timeout: *\([0-9][0-9]*\).*/\1/p' "$here/scenarios/$1.sh" | head -1)
    echo $(( ${t:-$default_timeout} * time_factor ))
}

# Boot the VM of scenario $1 (dir $2) for phase $3; returns 0 when the
# runner wrote a result for that phase.
boot() {
    local name=$1 dir=$2 phase=$3 limit=$4
    local share=$dir/share console=$dir/console-phase$phase.log
    local qemu_limit=$((boot_timeout + limit + 60))
    printf 'SYSTEST_SCENARIO=%s\nSYSTEST_PHASE=%s\nSYSTEST_TIMEOUT=%s\nSYSTEST_TIME_FACTOR=%s\n' "$name" "$phase" "$limit" "$time_factor" >"$share/run.conf"
    local t0 t1 started="" pid now
    t0=$(ms)
    timeout -k 10 "$qemu_limit" "$qemu" \
        -name "systest-$name" \
        -accel tcg,thread=multi "${machine[@]}" -m 2048 -smp 2 \
        -nic none -nographic -no-reboot -monitor none \
        -serial "file:$console" \
        -kernel "$img_dir/vmlinuz" -initrd "$img_dir/initrd.img" \
        -append "console=$console_dev,115200 root=/dev/vda rootfstype=ext4 rw panic=-1 quiet systemd.show_status=1 mitigations=off" \
        -drive "file=$dir/disk.qcow2,if=virtio,format=qcow2,cache=unsafe" \
        -virtfs "local,path=$share,mount_tag=share,security_model=none,id=share" \
        -device virtio-rng-pci \
        </dev/null >"$dir/qemu-phase$phase.out" 2>&1 &
    pid=$!
    qemu_pid=$pid
    # Watch for the runner to start, and for the boot budget.
    while kill -0 "$pid" 2>/dev/null; do
        if [ -z "$started" ] && [ -f "$share/results/phase$phase.started" ]; then
            started=$(secs $(($(ms) - t0)))
            echo "run.sh:   $name phase $phase: runner started ${started} s after QEMU launch ($(grep -h '^system_state=' "$share/results/phase$phase.started"))"
        fi
        if [ -z "$started" ]; then
            now=$(ms)
            if [ $((now - t0)) -gt $((boot_timeout * 1000)) ]; then
                echo "run.sh:   $name phase $phase: no runner after ${boot_timeout} s: killing QEMU"
                kill "$pid" 2>/dev/null
                break
            fi
        fi
        sleep 0.5
    done
    wait "$pid"
    local qrc=$?
    qemu_pid=""
    t1=$(ms)
    echo "run.sh:   $name phase $phase: QEMU exited ($qrc) after $(secs $((t1 - t0))) s"
    echo "$name phase$phase boot_to_runner=${started:-none} vm_total=$(secs $((t1 - t0)))" >>"$run_dir/timings.txt"
    [ -f "$share/results/phase$phase.rc" ]
}

show_failure() {
    local name=$1 dir=$2 phase=$3
    echo "---- $name phase $phase: scenario log (tail) ----"
    tail -n 60 "$dir/share/results/phase$phase.log" 2>/dev/null || echo "(no scenario log)"
    echo "---- $name phase $phase: serial console (tail) ----"
    tail -n 40 "$dir/console-phase$phase.log" 2>/dev/null || echo "(no console log)"
    [ -s "$dir/qemu-phase$phase.out" ] && { echo "---- QEMU output ----"; tail -n 20 "$dir/qemu-phase$phase.out"; }
    echo "---- full logs: $dir ----"
}

passed=0
failed=0
boot_broken=""
for name in "${scenarios[@]}"; do
    if [ -n "$boot_broken" ]; then
        # Don't spend a boot timeout per scenario on a VM that cannot boot.
        failed=$((failed + 1))
        echo "run.sh: FAIL $name: not run: $boot_broken"
        echo "FAIL $name 0s not run: $boot_broken" >>"$summary"
        continue
    fi
    dir=$run_dir/$name
    share=$dir/share
    mkdir -p "$share/systest" "$share/results" "$share/deb" "$share/examples"
    cp -a "$here/guest-runner.sh" "$here/lib.sh" "$here/tasks.py" "$here/attack_tasks.py" "$here/fixtures" "$here/scenarios" "$share/systest/"
    cp -a "$repo/examples/demo_app" "$share/examples/"
    cp -a "$repo/packaging/apt-repo.sh" "$here/repo-lib.sh" "$share/systest/"   # 14-apt-repo, 15-upgrade-repo
    [ -n "$deb" ] && cp "$deb" "$share/deb/"
    [ -n "$deb_next" ] && mkdir -p "$share/deb-next" && cp "$deb_next" "$share/deb-next/"
    chmod -R a+rX "$share"
    qemu-img create -q -f qcow2 -b "$img_dir/rootfs.raw" -F raw "$dir/disk.qcow2" || die "qemu-img create failed"
    limit=$(scenario_timeout "$name")
    echo "run.sh: == $name (timeout ${limit} s)"
    t0=$(date +%s)
    verdict=FAIL
    why=""
    phase=1
    while :; do
        rm -f "$share/results/next-phase"
        if ! boot "$name" "$dir" "$phase" "$limit"; then
            if [ -f "$share/results/phase$phase.started" ]; then
                why="no result from phase $phase (scenario or VM hung; QEMU killed)"
            else
                why="VM did not boot to the runner (phase $phase)"
                boot_broken="the VM of $name did not boot"
            fi
            show_failure "$name" "$dir" "$phase"
            break
        fi
        rc=$(cat "$share/results/phase$phase.rc")
        if [ "$rc" != 0 ]; then
            [ "$rc" = 124 ] && why="phase $phase timed out after $limit s" || why="phase $phase exited $rc"
            show_failure "$name" "$dir" "$phase"
            break
        fi
        if [ -f "$share/results/next-phase" ]; then
            phase=$((phase + 1))
            if [ "$phase" -gt "$max_phases" ]; then
                why="asked for more than $max_phases boots"
                break
            fi
            echo "run.sh:   $name asks for boot $phase on the same disk"
            continue
        fi
        verdict=PASS
        break
    done
    t1=$(date +%s)
    [ "$keep_disk" = 1 ] || rm -f "$dir/disk.qcow2"
    if [ "$verdict" = PASS ]; then
        passed=$((passed + 1))
        echo "run.sh: PASS $name ($((t1 - t0)) s, $phase boot(s))"
        echo "PASS $name $((t1 - t0))s" >>"$summary"
    else
        failed=$((failed + 1))
        echo "run.sh: FAIL $name: $why ($((t1 - t0)) s)"
        echo "FAIL $name $((t1 - t0))s $why" >>"$summary"
    fi
done

t_end=$(date +%s)
echo "run.sh: logs in $run_dir; image $((t_image - t_start)) s, total $((t_end - t_start)) s"
[ $((passed + failed)) = "${#scenarios[@]}" ] || { echo "run.sh: internal error: counted $((passed + failed)) of ${#scenarios[@]}"; failed=$((failed + 1)); }
echo "system: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
