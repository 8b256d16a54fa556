#!/bin/sh
# The benchmarks of issue 10: dkmshooks against Debian's dkms 3.0.10, side by side.
# usage: sudo bench/run.sh [--quick] [--benchmarks 1,2,3,4,5] [other bench.py options]
# Needs root (mount namespaces), the repo's .venv, network for the first run (apt-get download
# into /var/cache/dkmshooks-bench; nothing is installed), about 1 h and 3 GB in /var/tmp.
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench: run me as root (sudo bench/run.sh)" >&2; exit 1; }
[ -x .venv/bin/dkms ] || { echo "bench: no .venv/bin/dkms; pip install -e . first" >&2; exit 1; }
exec .venv/bin/python bench/bench.py "$@"
