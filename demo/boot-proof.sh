#!/bin/bash
# Demo of the whole apt story on real kernels (issue 11). In a Debian 12 debootstrap chroot (the e2e
# tier's cached base, under /var/cache/dkmshooks-test/work; removed afterwards) with dkmshooks
# installed by scripts/install-into-root.sh and tests/data/dkms_test-1.0 registered:
#   1. apt-get install linux-image-6.1.0-55-amd64 + headers: the apt hooks build and install
#      dkms_test and the initramfs is made with it (lsinitramfs shows it);
#   2. qemu (TCG) boots /boot/vmlinuz-K with that /boot/initrd.img-K, plus a tiny appended init
#      that runs the real initramfs's modprobe and prints /proc/modules, the module's dmesg line,
#      its sysfs version, vermagic and sha256 (compared with the file the hook installed);
#   3. the same after an upgrade to linux-image-6.1.0-56-amd64 + headers;
#   4. `dkmshooks log` in the chroot: the unified log of the rebuilds apt triggered.
# Without a usable qemu it runs a clearly labelled lighter variant: steps 1, 3 and 4, no boot.
# The host's /etc, /boot, /lib/modules and /var/lib/dkms are never touched. Serial console logs
# and rebuild.log are kept in build/boot-proof/ (or $1).
# Takes about 35 s on a 2-core VM once the base tarball and .debs are cached in
# /var/cache/dkmshooks-test (each boot about 4-5 s under TCG), about 85 s on the first run
# (debootstrap and 150 MB of downloads). Needs root and .venv.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
die() { printf 'demo/boot-proof.sh: error: %s\n' "$*" >&2; exit 1; }

((EUID == 0)) || die "run as root: debootstrap, chroot and apt need it"
[[ -x $repo/.venv/bin/python ]] || die "$repo/.venv is missing; run scripts/setup-test-env.sh first"
out=${1:-$repo/build/boot-proof}
mkdir -p -- "$out"
out=$(cd -- "$out" && pwd)

# The story is shared with the boot test tier (tests/boot/proof.py), which reuses the e2e tier's
# chroot helpers; both live under tests/, which is therefore the import root.
cd -- "$repo/tests"
exec "$repo/.venv/bin/python" -m boot.proof "$out"
