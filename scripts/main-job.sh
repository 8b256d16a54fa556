#!/bin/bash
# The main job: set the machine up (scripts/setup-test-env.sh), then
#   1. demo/main-job.sh adds, builds and installs a sample module with dkmshooks's `dkms` for every
#      kernel in scripts/kernels.txt without touching the host's DKMS state (a few seconds);
#   2. demo/boot-proof.sh ends the story on real kernels: in a Debian 12 chroot, apt installs
#      linux-image-6.1.0-55-amd64 and then upgrades to 6.1.0-56, dkmshooks's apt hooks rebuild the
#      module into each kernel and its initramfs, qemu boots each kernel with that initramfs and the
#      module loads; it ends with the unified rebuild log (`dkmshooks log`). Without qemu it runs a
#      labelled lighter variant that stops short of booting. About 35 s with a warm cache
#      (/var/cache/dkmshooks-test), about 85 s on the first run (debootstrap and 150 MB of .debs);
#      measured on a 2-core VM.
# Needs root.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup-test-env.sh"
"$repo/demo/main-job.sh" "$@"
exec "$repo/demo/boot-proof.sh"
