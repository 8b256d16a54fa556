#!/bin/bash
# The physical floor of one module build: the MAKE its dkms.conf gives, run as dkms runs it
# (`make` prefix → `make -j<jobs> KERNELRELEASE=<k>`, PRE_BUILD first, cwd = the build dir,
# CC from the kernel's CONFIG_CC_VERSION_TEXT), in a fresh copy of the source, with nothing else:
# no clean, strip, sign, copy or depmod. bench.py times it (wall and CPU-seconds via rusage).
# usage: rawbuild.sh SOURCE_DIR NAME VERSION KERNELVER RAWTREE JOBS
# no `set -u`: dkms.conf files use unset variables (lttng-modules: $i before it is set)
src=$1 name=$2 ver=$3 k=$4 rawtree=$5 jobs=$6
build=$rawtree/$name/$ver/build
rm -rf "${rawtree:?}/$name"
mkdir -p "$rawtree/$name/$ver"
cp -a "$src" "$build"
cd "$build" || exit 90
# shellcheck disable=SC2034 # read by the sourced dkms.conf and its MAKE
kernelver=$k kernel_source_dir=/lib/modules/$k/build dkms_tree=$rawtree arch=$(uname -m)
# shellcheck disable=SC2034
source_tree=/usr/src module=$name module_version=$ver
cc=$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\([^ ]*\).*/\1/p' "$kernel_source_dir/.config" 2>/dev/null)
if [ -n "$cc" ] && command -v "$cc" >/dev/null; then export CC=$cc KERNEL_CC=$cc; fi
# shellcheck disable=SC1091
source ./dkms.conf >/dev/null 2>&1
mc=${MAKE[0]:-make -C $kernel_source_dir M=$dkms_tree/$name/$ver/build}
[[ $mc == make* ]] && mc="make -j$jobs KERNELRELEASE=$k${mc#make}"
if [ -n "${PRE_BUILD:-}" ]; then
    # shellcheck disable=SC2086
    (exec ./$PRE_BUILD) || exit 91
fi
echo "RAW MAKE: $mc"
eval "$mc"
