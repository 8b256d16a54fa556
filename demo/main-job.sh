#!/bin/bash
# Demo of dkmshooks's `dkms` (the dkms 3.4 interface): add tests/data/dkms_test-1.0, build and
# install it for every kernel in scripts/kernels.txt, then show `dkms status`, modinfo and make.log.
#
# It runs in a private mount namespace where /var/lib/dkms, /usr/src, /lib/modules and /etc/dkms
# are overlays (or a fresh tmpfs) backed by tmpfs: the host's DKMS state is never touched, and
# everything vanishes when the script ends. Logs are copied to build/demo/ (DKMSHOOKS_DEMO_OUT).
# Needs root and .venv (scripts/setup-test-env.sh); scripts/main-job.sh does both.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
# DKMS=/usr/sbin/dkms runs the same demo with another dkms, e.g. Debian's, for comparison.
dkms=${DKMS:-$repo/.venv/bin/dkms}
module=dkms_test
version=1.0
out=${DKMSHOOKS_DEMO_OUT:-$repo/build/demo}

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo/main-job.sh: error: %s\n' "$*" >&2; exit 1; }
run() {
    printf '+ %s\n' "$*"
    "$@"
}

if [[ ${DKMSHOOKS_DEMO_IN_NAMESPACE:-} != 1 ]]; then
    ((EUID == 0)) || die "run as root: the demo needs unshare -m and mount"
    [[ -x $dkms ]] || die "$dkms is missing; run scripts/setup-test-env.sh first"
    command -v unshare >/dev/null || die "unshare (util-linux) is missing"
    mkdir -p "$out"
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/dkmshooks-demo.XXXXXX")
    # The namespace's mounts die with its last process, leaving only this empty directory.
    trap 'rmdir "$scratch"' EXIT
    rc=0
    # --propagation private: none of our mounts may propagate back into the host's namespace.
    DKMSHOOKS_DEMO_IN_NAMESPACE=1 DKMSHOOKS_DEMO_SCRATCH=$scratch DKMSHOOKS_DEMO_OUT=$out DKMS=$dkms \
        unshare --mount --propagation private -- "$repo/demo/main-job.sh" "$@" || rc=$?
    exit "$rc"
fi

# ---- inside the private mount namespace from here on ----
scratch=${DKMSHOOKS_DEMO_SCRATCH:?}
mount -t tmpfs -o mode=0755 dkmshooks-demo "$scratch"

isolated=()
# Make $1 writable without touching the host: overlay it, or its nearest existing ancestor when
# it does not exist (a fresh machine has no /var/lib/dkms or /etc/dkms, and creating them on the
# host is exactly what we must not do). Symlinks are resolved first: /lib is usr/lib on Debian 12.
isolate() {
    local want=$1 dir id covered
    dir=$want
    while [[ ! -d $dir ]]; do
        dir=$(dirname -- "$dir")
    done
    dir=$(realpath -- "$dir")
    for covered in "${isolated[@]}"; do
        if [[ $dir == "$covered" || $dir == "$covered"/* ]]; then
            mkdir -p -- "$want"
            return 0
        fi
    done
    id=${dir//\//_}
    mkdir -p "$scratch/$id/upper" "$scratch/$id/work"
    mount -t overlay "dkmshooks-demo$id" \
        -o "lowerdir=$dir,upperdir=$scratch/$id/upper,workdir=$scratch/$id/work" "$dir"
    isolated+=("$dir")
    mkdir -p -- "$want"
}

# /usr/src and /lib/modules keep the host's kernel headers (/lib/modules/K/build points into
# /usr/src); the DKMS tree and its configuration start empty, so the demo sees only its module.
isolate /usr/src
isolate /lib/modules
isolate /var/lib/dkms
isolate /etc/dkms
mount -t tmpfs -o mode=0755 dkmshooks-demo-tree /var/lib/dkms
mount -t tmpfs -o mode=0755 dkmshooks-demo-etc /etc/dkms

arch=$(uname -m)
mapfile -t kernels < <(grep -Ev '^[[:space:]]*(#|$)' "$repo/scripts/kernels.txt")

# Whatever happens, keep the logs: the namespace and everything in it vanish when we exit.
save_logs() {
    local log dest
    while IFS= read -r -d '' log; do
        dest=$out/${log#/var/lib/dkms/}
        mkdir -p -- "$(dirname -- "$dest")"
        cp -- "$log" "$dest"
    done < <(find /var/lib/dkms -name make.log -print0 2>/dev/null)
}
trap save_logs EXIT

# dkms 3.4 counts a private mount namespace as a chroot (its mountinfo differs from PID 1's), so
# it says "Running in chroot, modules won't be signed" here: expected, the host is not involved.
say "dkms: $("$dkms" --version)"
say "kernels: ${kernels[*]} ($arch)"

run cp -a "$repo/tests/data/$module-$version" /usr/src/
run "$dkms" add "$module/$version"
for k in "${kernels[@]}"; do
    say "kernel $k"
    run "$dkms" build "$module/$version" -k "$k"
    run "$dkms" install "$module/$version" -k "$k"
done

say "status"
printf '+ %s status\n' "$dkms"
"$dkms" status | tee "$out/status.txt"

for k in "${kernels[@]}"; do
    say "installed module for $k"
    # Not `modinfo -k`: with headers but no kernel image there is no modules.dep, so dkms 3.4
    # skips depmod and the name does not resolve. find does not follow the build/ symlink.
    mapfile -t installed < <(find "/lib/modules/$k/" -name "$module.ko*")
    ((${#installed[@]} > 0)) || die "dkms install left no $module.ko* under /lib/modules/$k"
    run modinfo "${installed[@]}"
    make_log=/var/lib/dkms/$module/$version/$k/$arch/log/make.log
    say "make.log for $k: $make_log (copied to $out/$module/$version/$k/$arch/log/make.log)"
    cat -- "$make_log"
done

say "done; the host's /var/lib/dkms, /usr/src, /lib/modules and /etc/dkms were not modified"
