#!/bin/bash
# The main job: set the machine up (scripts/setup-test-env.sh), then run demo/main-job.sh, which
# adds, builds and installs a sample module with dkmshooks's `dkms` for every kernel in
# scripts/kernels.txt without touching the host's DKMS state. Needs root.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup-test-env.sh"
exec "$repo/demo/main-job.sh" "$@"
