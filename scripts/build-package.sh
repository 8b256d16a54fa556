#!/bin/bash
# Build one of dkmshooks's distribution packages from this checkout with the distribution's own
# tool, in a scratch copy of the tree (the checkout is never written to):
#   deb   dpkg-buildpackage -us -uc -b, with packaging/debian as debian/  → dkmshooks_V_all.deb
#   rpm   rpmbuild -bb packaging/rpm/dkmshooks.spec on a tarball of the tree → dkmshooks-V-1.noarch.rpm
#   arch  makepkg in packaging/arch (as an unprivileged user when run as root) → dkmshooks-V-1-any.pkg.tar.*
# Usage: scripts/build-package.sh deb|rpm|arch [OUTDIR]   (default OUTDIR: dist/)
# Prints the path of the built package on stdout; the tools' chatter goes to stderr.
set -euo pipefail

say() { printf 'build-package: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

(($# == 1 || $# == 2)) || die "usage: $0 deb|rpm|arch [OUTDIR]"
kind=$1
repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
out=${2:-$repo/dist}
mkdir -p -- "$out"
out=$(cd -- "$out" && pwd)

# One version everywhere: pyproject.toml is the truth, each packaging file must agree with it.
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml")
[[ -n $version ]] || die "no version in pyproject.toml"
check_version() { # file found-version
    [[ $2 == "$version" ]] || die "$1 says version '$2', pyproject.toml says '$version'"
}
check_version packaging/debian/changelog "$(sed -n '1s/^dkmshooks (\([^)-]*\).*/\1/p' "$repo/packaging/debian/changelog")"
check_version packaging/rpm/dkmshooks.spec "$(sed -n 's/^Version:[[:space:]]*//p' "$repo/packaging/rpm/dkmshooks.spec")"
check_version packaging/arch/PKGBUILD "$(sed -n 's/^pkgver=//p' "$repo/packaging/arch/PKGBUILD")"

stage=$(mktemp -d "${TMPDIR:-/tmp}/dkmshooks-build.XXXXXX")
trap 'rm -rf -- "$stage"' EXIT
src=$stage/dkmshooks-$version
mkdir -- "$src"
# What the packages are made of; the venv, caches, tests and build output stay behind.
for item in dkmshooks hooks packaging pyproject.toml README.md; do
    cp -R -- "$repo/$item" "$src/"
done
find "$src" \( -name __pycache__ -o -name '*.pyc' -o -name '*.egg-info' \) -prune -exec rm -rf -- {} +

case $kind in
deb)
    cp -R -- "$src/packaging/debian" "$src/debian"
    (cd -- "$src" && dpkg-buildpackage -us -uc -b) >&2
    built=("$stage"/dkmshooks_"$version"_all.deb)
    ;;
rpm)
    top=$stage/rpmbuild
    mkdir -p -- "$top/SOURCES"
    tar -C "$stage" -czf "$top/SOURCES/dkmshooks-$version.tar.gz" "dkmshooks-$version"
    opts=(--define "_topdir $top")
    # Debian's rpm has rpmbuild but an empty rpm database: BuildRequires cannot be checked there.
    if ! rpm -q --quiet rpm 2>/dev/null; then
        say "rpm database without rpm itself (not an rpm-based system): building with --nodeps"
        opts+=(--nodeps)
    fi
    rpmbuild -bb "${opts[@]}" "$src/packaging/rpm/dkmshooks.spec" >&2
    built=("$top"/RPMS/noarch/dkmshooks-"$version"-*.noarch.rpm)
    ;;
arch)
    run=()
    if ((EUID == 0)); then
        # makepkg refuses to run as root. No user is created: builder (the lab's) or nobody.
        user=${DKMSHOOKS_BUILD_USER:-}
        if [[ -z $user ]]; then
            for candidate in builder nobody; do
                if id -u "$candidate" >/dev/null 2>&1; then
                    user=$candidate
                    break
                fi
            done
        fi
        [[ -n $user ]] || die "running as root and no unprivileged user for makepkg"
        chown -R -- "$user" "$stage"
        run=(runuser -u "$user" --)
    fi
    # -d: the dependencies are Arch's (python, kmod…); a non-Arch host has no pacman db of them.
    (cd -- "$src/packaging/arch" &&
        "${run[@]}" env HOME="$stage" BUILDDIR="$stage/makepkg" PKGDEST="$stage/pkgs" \
            makepkg -d -f --nosign --noconfirm --noprogressbar) >&2
    built=("$stage"/pkgs/dkmshooks-"$version"-*-any.pkg.tar*)
    ;;
*)
    die "unknown package kind '$kind' (deb, rpm or arch)"
    ;;
esac

[[ -f ${built[0]} ]] || die "$kind build produced no package"
cp -- "${built[0]}" "$out/"
printf '%s\n' "$out/${built[0]##*/}"
