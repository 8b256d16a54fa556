#!/bin/bash
# Prepare a Debian 12 machine for dkmshooks's tests and demo: the apt packages, the kernel headers
# listed in scripts/kernels.txt, and .venv with dkmshooks installed editable plus its test tools.
# Re-running it is cheap: it only does what is missing. Installing packages needs root.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

say() { printf 'setup-test-env: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Debian's interpreter, not whatever python3 is first on PATH (pyenv, conda): the venv then matches
# the platform Python a Debian package of dkmshooks would run on.
python=/usr/bin/python3

mapfile -t kernels < <(grep -Ev '^[[:space:]]*(#|$)' scripts/kernels.txt)
((${#kernels[@]} > 0)) || die "scripts/kernels.txt lists no kernel"

# kmod: depmod/modinfo; openssl: module signing keys; patch: PATCH[]; xz-utils/zstd: compressed
# modules; cpio: initramfs tests; bc: kbuild of the 6.1 headers runs it.
packages=(python3 python3-venv python3-pip make gcc bc kmod openssl patch xz-utils zstd cpio shellcheck)
# pacman e2e: the real pacman and makepkg; makepkg needs bsdtar and does not depend on it.
packages+=(pacman-package-manager makepkg libarchive-tools)
# dnf/kernel-install e2e: dnf 4 and its Python binding (the dnf4 plugin), rpm (with rpmbuild),
# createrepo_c; systemd provides kernel-install.
packages+=(dnf python3-dnf rpm createrepo-c systemd)
# packaging e2e (tests/e2e/test_packaging.py): dpkg-buildpackage's debhelper and dh-python, and
# lintian; rpmbuild, makepkg and bsdtar come with the packages above.
packages+=(debhelper dh-python lintian)
# apt e2e and boot tiers: debootstrap makes the Debian chroot; qemu boots its kernels (TCG).
packages+=(debootstrap qemu-system-x86)
# pyalpm (the pacman adapter's optional binding) builds against libalpm and what libalpm.pc needs.
packages+=(libalpm-dev libarchive-dev libcurl4-openssl-dev libgpgme-dev pkg-config)
for k in "${kernels[@]}"; do
    packages+=("linux-headers-$k")
done

# One dpkg-query for all packages keeps the already-set-up case fast. Unknown packages are
# reported on stderr and simply missing from the output.
# shellcheck disable=SC2016 # ${Package} is dpkg-query's format syntax, not a shell expansion
installed=$(dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null | awk '$2 == "install" && $3 == "ok" && $4 == "installed" { print $1 }' || true)
missing=()
for p in "${packages[@]}"; do
    grep -qxF -- "$p" <<<"$installed" || missing+=("$p")
done

if ((${#missing[@]} > 0)); then
    ((EUID == 0)) || die "run as root to install: ${missing[*]}"
    say "installing: ${missing[*]}"
    # No stdin and no prompts in CI; the lock timeout rides out unattended-upgrades on fresh VMs.
    export DEBIAN_FRONTEND=noninteractive
    apt_opts=(-o DPkg::Lock::Timeout=900)
    apt-get "${apt_opts[@]}" update </dev/null
    apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" </dev/null
fi

for k in "${kernels[@]}"; do
    [[ -f /lib/modules/$k/build/Makefile ]] || die "headers for $k are installed but /lib/modules/$k/build is not usable"
done

# A venv from another interpreter (say a pyenv python3 on PATH) is rebuilt, not patched up.
if [[ -f .venv/pyvenv.cfg ]] && ! grep -qx 'home = /usr/bin' .venv/pyvenv.cfg; then
    say "recreating .venv: it was not made by $python"
    "$python" -m venv --clear --system-site-packages .venv
elif [[ ! -x .venv/bin/python ]]; then
    say "creating .venv"
    "$python" -m venv --system-site-packages .venv
fi

# pip runs again only when pyproject.toml changed or a console script is gone.
stamp=.venv/.dkmshooks-setup-stamp
want=$(sha256sum pyproject.toml)
have=$(cat "$stamp" 2>/dev/null || true)
tools_present=true
for tool in dkms dkmshooks pytest mypy ruff; do
    [[ -x .venv/bin/$tool ]] || tools_present=false
done
if [[ $have != "$want" || $tools_present != true ]]; then
    say "installing dkmshooks and its test tools into .venv"
    .venv/bin/python -m pip install --quiet -e '.[test]' </dev/null
    printf '%s\n' "$want" >"$stamp"
fi

# Debian has no python3-pyalpm; PyPI's builds against the libalpm installed above.
if ! .venv/bin/python -c 'import pyalpm' 2>/dev/null; then
    say "installing pyalpm into .venv"
    .venv/bin/python -m pip install --quiet pyalpm </dev/null
fi

say "ready: .venv ($(.venv/bin/python --version)), kernels: ${kernels[*]}"
