#!/bin/bash
# Install dkmshooks from this checkout into a Debian root directory (a chroot), laid out the way its
# .deb does: the package in /usr/lib/python3/dist-packages, `dkms` in /usr/sbin, `dkmshooks` in /usr/bin,
# the apt hooks in /etc/kernel/*.d and /etc/apt/apt.conf.d. Running it again replaces what it
# installed before (files deleted from the checkout disappear from the root too).
# Usage: scripts/install-into-root.sh ROOT
set -euo pipefail

die() { printf 'install-into-root: %s\n' "$*" >&2; exit 1; }

(($# == 1)) || die "usage: $0 ROOT"
root=$1
[[ -d $root ]] || die "$root is not a directory"
root=$(cd -- "$root" && pwd)
[[ $root != / ]] || die "refusing to install into / (use the .deb for that)"
repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

site=$root/usr/lib/python3/dist-packages
staging=$site/.dkmshooks.new
rm -rf -- "$staging"
mkdir -p -- "$site"
cp -R -- "$repo/dkmshooks" "$staging"
# The checkout's own bytecode is for its venv's interpreter, not the root's python3.
find "$staging" -name __pycache__ -prune -exec rm -rf -- {} +
rm -rf -- "$site/dkmshooks"
mv -- "$staging" "$site/dkmshooks"

wrapper() {
    install -D -m 0755 /dev/stdin "$root/$1" <<EOF
#!/usr/bin/python3
from dkmshooks.cli import $2
$2()
EOF
}
wrapper usr/sbin/dkms dkms_main
wrapper usr/bin/dkmshooks dkmshooks_main

for kind in preinst postinst header_postinst prerm postrm; do
    install -D -m 0755 "$repo/hooks/apt/kernel-$kind" "$root/etc/kernel/$kind.d/dkmshooks"
done
install -D -m 0644 "$repo/hooks/apt/apt.conf" "$root/etc/apt/apt.conf.d/99dkmshooks"
