"""A throwaway Arch-like root driven with the real pacman (Debian's pacman-package-manager), its
packages built here with the real makepkg, for the pacman end-to-end tests.

Layout of one root (all under the test's tmp dir; nothing of the host is written):

    WORK/root/             pacman's RootDir: var/lib/pacman (the local db), var/lib/dkms, boot,
                           etc, var/log, tmp; bin, sbin, lib, lib64 are symlinks into usr (merged
                           /usr, as on Arch, so /lib/modules is /usr/lib/modules). etc holds an
                           os-release (ID=arch) and a copy of the host's /etc/alternatives
                           symlinks, through which the host toolchain finds awk
    WORK/root/usr          an empty mount point; inside a command's private mount namespace an
                           overlay is mounted on it: lower = the host's /usr (read-only: bash,
                           python3, make, gcc, kmod for the hooks, which run chrooted into the
                           root), upper = WORK/usr-upper
    WORK/usr-upper/        the root's own /usr: everything the packages installed there lands here.
                           lib/modules, src and local are opaque (the host's kernels, sources and
                           /usr/local do not show through), and the host's own initramfs
                           generators are whited out, so the root sees only what pacman put in it
    WORK/pacman.conf       RootDir, DBPath, CacheDir, LogFile, HookDir all inside the root, so the
                           host's /etc/pacman.d and /var/lib/pacman are never read or written

Every command (pacman, or a command chrooted into the root) runs under `unshare --mount` with the
overlay, /proc and /dev mounted: the mounts die with the command. To look at the root from the
test, `PacmanRoot.path()` maps /usr/... to the upper dir (whiteouts count as absent).

Packages (see `recipes()`): `linux` with a real module tree (one placeholder module built against
the host's headers for that release, modules.order, vmlinuz, pkgbase), `linux-headers` whose
usr/lib/modules/K/build is a real, self-contained kernel build tree merged Arch-style from
Debian's linux-headers-K, linux-headers-*-common and linux-kbuild-6.1 (so the vermagic says K),
stand-ins for `kmod` (its 60-depmod hook) and `mkinitcpio` (its 90-mkinitcpio-install hook and a
`mkinitcpio` that writes an "image" listing the kernel's modules and logs every call), the
`*-dkms` packages from tests/data, `dkmshooks` itself (the package in the root's Python path,
/usr/bin/dkms and /usr/bin/dkmshooks, the hooks from hooks/pacman) and, when the test interpreter
has it, `pyalpm` (its extension module, for the hooks' database look-ups). makepkg runs as `builder`
if that user exists, else as `nobody`. Built packages are cached under
$DKMSHOOKS_TEST_CACHE/pacman (default /var/cache/dkmshooks-test), keyed by a hash of their recipe
and inputs, so a re-run only rebuilds dkmshooks when the code changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
CACHE_VAR = "DKMSHOOKS_TEST_CACHE"
DEFAULT_CACHE = Path("/var/cache/dkmshooks-test")
# Bump when a recipe changes in a way its hash cannot see.
RECIPE_VERSION = 1

#: kernel release → pkgver of `linux`/`linux-headers`: 55 is the *newer* package, so that -Syu
#: from the first repo to the second replaces 56 by 55 (both ABIs are installed on the host).
KERNELS = {"6.1.0-56-amd64": "1", "6.1.0-55-amd64": "2"}
OLD_KVER, NEW_KVER = "6.1.0-56-amd64", "6.1.0-55-amd64"
KBUILD = Path("/usr/lib/linux-kbuild-6.1")
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MKINITCPIO_LOG = "/var/log/mkinitcpio-standin.log"
HOST_GENERATORS = ("sbin/update-initramfs", "bin/dracut", "bin/booster")
SETUP_FAILED = 125


class EnvironmentUnavailable(RuntimeError):
    """Something the tier needs is missing on this machine."""


def missing_requirements() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (mount namespaces, chroot, makepkg as another user)")
    for tool in ("pacman", "makepkg", "repo-add", "bsdtar", "fakeroot", "unshare", "runuser"):
        if shutil.which(tool) is None:
            missing.append(tool)
    for kver in KERNELS:
        for tree in (Path(f"/usr/src/linux-headers-{kver}"), common_headers(kver)):
            if not (tree / "Makefile").is_file():
                missing.append(str(tree))
    if not (KBUILD / "scripts").is_dir():
        missing.append(str(KBUILD))
    return missing


def common_headers(kver: str) -> Path:
    return Path(f"/usr/src/linux-headers-{kver.rsplit('-', 1)[0]}-common")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_VAR) or DEFAULT_CACHE) / "pacman"


def build_user() -> str:
    for name in ("builder", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise EnvironmentUnavailable("no unprivileged user (builder or nobody) for makepkg")


# -- package recipes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One makepkg run: `stage` files (relative name → text or source path) are copied next to
    the PKGBUILD; `inputs` are host paths package() reads, hashed by metadata."""

    name: str
    version: str
    body: str  # package() body
    build: str = ""  # build() body
    stage: Mapping[str, str | Path] = field(default_factory=dict)
    inputs: tuple[Path, ...] = ()
    executables: tuple[str, ...] = ()

    def pkgbuild(self) -> str:
        lines = [
            f"pkgname={self.name}",
            f"pkgver={self.version}",
            "pkgrel=1",
            f'pkgdesc="dkmshooks e2e: {self.name}"',
            "arch=(x86_64)",
            "license=(GPL)",
            "options=(!strip !debug !zipman !purge)",
        ]
        if self.build:
            lines += ["build() {", textwrap.indent(self.build.strip("\n"), "  "), "}"]
        lines += ["package() {", textwrap.indent(self.body.strip("\n"), "  "), "}", ""]
        return "\n".join(lines)

    def key(self) -> str:
        digest = hashlib.sha256(f"{RECIPE_VERSION}\n{self.pkgbuild()}".encode())
        for name, value in sorted(self.stage.items()):
            digest.update(f"\0{name}\0".encode())
            if isinstance(value, Path):
                _hash_tree(digest, value, content=True)
            else:
                digest.update(value.encode())
        for path in self.inputs:
            _hash_tree(digest, path, content=False)
        return digest.hexdigest()[:16]


def _hash_tree(digest: hashlib._Hash, top: Path, *, content: bool) -> None:
    """Content hash for small staged trees, (path, size, mtime) for the big host header trees."""
    paths = (
        [top]
        if not top.is_dir()
        else sorted(p for p in top.rglob("*") if "__pycache__" not in p.parts)
    )
    for path in paths:
        st = path.lstat()
        digest.update(f"{path.relative_to(top.parent)}\0{st.st_mode}\0".encode())
        if stat.S_ISLNK(st.st_mode):
            digest.update(os.readlink(path).encode())
        elif stat.S_ISREG(st.st_mode):
            if content:
                digest.update(path.read_bytes())
            else:
                digest.update(f"{st.st_size}\0{st.st_mtime_ns}".encode())


PLACEHOLDER_C = """\
#include <linux/module.h>
static int __init lab_placeholder_init(void) { return 0; }
static void __exit lab_placeholder_exit(void) { }
module_init(lab_placeholder_init);
module_exit(lab_placeholder_exit);
MODULE_LICENSE("GPL");
"""

# Stand-in for kmod's 60-depmod hook: Arch's kernel packages ship no modules.dep; depmod runs in
# a PostTransaction hook before the DKMS hooks (which need modules.dep to exist, as dkms does).
DEPMOD_HOOK = """\
[Trigger]
Type = Path
Operation = Install
Operation = Upgrade
Operation = Remove
Target = usr/lib/modules/*/
Target = !usr/lib/modules/*/?*

[Action]
Description = Updating module dependencies (stand-in)...
When = PostTransaction
Exec = /usr/share/libalpm/scripts/depmod
NeedsTargets
"""

DEPMOD_SCRIPT = """\
#!/bin/bash
# Stand-in for kmod's alpm script: depmod each kernel still installed, clean up removed ones.
while read -r line; do
    kver=${line#usr/lib/modules/}
    kver=${kver%/}
    dir=/usr/lib/modules/$kver
    if [[ -e $dir/modules.order ]]; then
        depmod "$kver"
    elif [[ -d $dir ]]; then
        rm -f "$dir"/modules.{alias,alias.bin,builtin.alias.bin,builtin.bin,dep,dep.bin}
        rm -f "$dir"/modules.{devname,softdep,symbols,symbols.bin,weakdep}
        rmdir --ignore-fail-on-non-empty "$dir"
    fi
done
"""

# mkinitcpio's own hook, reduced to what decides when it runs (mkinitcpio libalpm/hooks).
MKINITCPIO_HOOK = """\
[Trigger]
Type = Path
Operation = Install
Operation = Upgrade
Target = usr/lib/modules/*/vmlinuz
Target = usr/lib/initcpio/*

[Trigger]
Type = Path
Operation = Install
Operation = Upgrade
Operation = Remove
Target = usr/src/*/dkms.conf

[Action]
Description = Updating linux initcpios (stand-in)...
When = PostTransaction
Exec = /usr/share/libalpm/scripts/mkinitcpio-install
NeedsTargets
"""

# mkinitcpio's libalpm script, reduced: a vmlinuz target installs /boot/vmlinuz-<pkgbase> and the
# preset, and regenerates that preset; any other target regenerates all presets (-P).
MKINITCPIO_INSTALL = """\
#!/bin/bash
set -e
all=0
presets=()
while read -r line; do
    if [[ $line != */vmlinuz ]]; then
        all=1
        continue
    fi
    read -r pkgbase <"/${line%/vmlinuz}/pkgbase" || continue
    preset=/etc/mkinitcpio.d/$pkgbase.preset
    if [[ ! -e $preset ]]; then
        mkdir -p /etc/mkinitcpio.d
        sed "s|%PKGBASE%|$pkgbase|g" /usr/share/mkinitcpio/hook.preset >"$preset"
    fi
    install -Dm644 "/$line" "/boot/vmlinuz-$pkgbase"
    presets+=("$pkgbase")
done
if ((all)); then
    mkinitcpio -P
else
    for p in "${presets[@]}"; do
        mkinitcpio -p "$p"
    done
fi
"""

HOOK_PRESET = """\
ALL_kver="/boot/vmlinuz-%PKGBASE%"
PRESETS=('default' 'fallback')
default_image="/boot/initramfs-%PKGBASE%.img"
fallback_image="/boot/initramfs-%PKGBASE%-fallback.img"
"""

# The generator: an "image" is the list of the kernel's modules, so a test can tell whether the
# DKMS module made it in; every call is logged, so a test can count runs per transaction.
MKINITCPIO = f"""\
#!/bin/bash
# Stand-in for mkinitcpio: -p PRESET, -P, or -k KVER -g IMAGE.
set -euo pipefail
log={MKINITCPIO_LOG}
generate() {{
    local kver=$1 image=$2
    {{
        echo "kver=$kver"
        find "/usr/lib/modules/$kver" -name '*.ko*' -printf '%P\\n' | sort
    }} >"$image.tmp"
    mv "$image.tmp" "$image"
}}
run_preset() {{
    local name=$1 ALL_kver='' PRESETS=() p var kver
    # shellcheck disable=SC1090 # the preset file is the stand-in's input
    source "/etc/mkinitcpio.d/$name.preset"
    read -r kver <"$ALL_kver"
    echo "call preset=$name kver=$kver" >>"$log"
    for p in "${{PRESETS[@]}}"; do
        var=${{p}}_image
        generate "$kver" "${{!var}}"
    done
}}
case ${{1:-}} in
-p) run_preset "$2" ;;
-P)
    for f in /etc/mkinitcpio.d/*.preset; do
        [[ -e $f ]] || continue
        f=${{f##*/}}
        run_preset "${{f%.preset}}"
    done
    ;;
-k)
    echo "call kver=$2 image=$4" >>"$log"
    generate "$2" "$4"
    ;;
*)
    echo "mkinitcpio stand-in: unsupported arguments: $*" >&2
    exit 1
    ;;
esac
"""

STANDIN_SCRIPTS = {
    "depmod": DEPMOD_SCRIPT,
    "mkinitcpio-install": MKINITCPIO_INSTALL,
    "mkinitcpio": MKINITCPIO,
}

WRAPPER = """\
#!/usr/bin/python3
from dkmshooks.cli import {function}
{function}()
"""


def linux_recipe(kver: str) -> Recipe:
    return Recipe(
        name="linux",
        version=KERNELS[kver],
        stage={
            "placeholder/lab_placeholder.c": PLACEHOLDER_C,
            "placeholder/Kbuild": "obj-m := lab_placeholder.o\n",
        },
        inputs=(Path(f"/usr/src/linux-headers-{kver}"),),
        build=f"""
cp -r "$startdir/placeholder" "$srcdir/"
make -s -C /usr/src/linux-headers-{kver} M="$srcdir/placeholder" modules
""",
        body=f"""
d="$pkgdir/usr/lib/modules/{kver}"
install -Dm644 "$srcdir/placeholder/lab_placeholder.ko" "$d/kernel/drivers/misc/lab_placeholder.ko"
echo kernel/drivers/misc/lab_placeholder.ko >"$d/modules.order"
: >"$d/modules.builtin"
: >"$d/modules.builtin.modinfo"
echo {kver} >"$d/vmlinuz"
echo linux >"$d/pkgbase"
""",
    )


def headers_recipe(kver: str) -> Recipe:
    arch_tree = Path(f"/usr/src/linux-headers-{kver}")
    common = common_headers(kver)
    # Arch's linux-headers is one tree (srctree = objtree) in usr/lib/modules/K/build; Debian
    # splits it in three. Merge them: common sources, then the flavour's generated files, config
    # and Module.symvers, then kbuild's scripts and tools; only x86 of arch/, as Arch keeps.
    return Recipe(
        name="linux-headers",
        version=KERNELS[kver],
        inputs=(arch_tree, common, KBUILD),
        body=f"""
b="$pkgdir/usr/lib/modules/{kver}/build"
install -d "$b/arch"
cp -a {common}/Makefile {common}/include "$b/"
cp -a {common}/arch/x86 "$b/arch/"
cp -a {arch_tree}/.config {arch_tree}/.kernelvariables {arch_tree}/Module.symvers "$b/"
cp -a {arch_tree}/include/. "$b/include/"
cp -a {arch_tree}/arch/x86/. "$b/arch/x86/"
cp -a {KBUILD}/scripts {KBUILD}/tools "$b/"
""",
    )


def dkms_recipe(pkgname: str, source: Path) -> Recipe:
    return Recipe(
        name=pkgname,
        version="1.0",
        stage={"src": source},
        body=f"""
install -d "$pkgdir/usr/src/{source.name}"
cp -r "$startdir/src/." "$pkgdir/usr/src/{source.name}/"
""",
    )


def dkmshooks_recipe() -> Recipe:
    stage: dict[str, str | Path] = {
        "dkmshooks": REPO / "dkmshooks",
        "dkmshooks-bin": WRAPPER.format(function="dkmshooks_main"),
        "dkms-bin": WRAPPER.format(function="dkms_main"),
    }
    for hook in sorted((REPO / "hooks" / "pacman").glob("*.hook")):
        stage[f"hooks/{hook.name}"] = hook
    return Recipe(
        name="dkmshooks",
        version="0.1",
        stage=stage,
        body="""
site="$pkgdir/usr/lib/python3/dist-packages"
install -d "$site"
cp -r "$startdir/dkmshooks" "$site/"
find "$site" -name __pycache__ -prune -exec rm -rf {} +
install -Dm755 "$startdir/dkmshooks-bin" "$pkgdir/usr/bin/dkmshooks"
install -Dm755 "$startdir/dkms-bin" "$pkgdir/usr/bin/dkms"
install -d "$pkgdir/usr/share/libalpm/hooks"
install -m644 "$startdir"/hooks/*.hook "$pkgdir/usr/share/libalpm/hooks/"
""",
    )


def kmod_recipe() -> Recipe:
    return Recipe(
        name="kmod",
        version="1",
        stage={"60-depmod.hook": DEPMOD_HOOK, "depmod": DEPMOD_SCRIPT},
        body="""
install -Dm644 "$startdir/60-depmod.hook" "$pkgdir/usr/share/libalpm/hooks/60-depmod.hook"
install -Dm755 "$startdir/depmod" "$pkgdir/usr/share/libalpm/scripts/depmod"
""",
    )


def mkinitcpio_recipe() -> Recipe:
    return Recipe(
        name="mkinitcpio",
        version="1",
        stage={
            "90-mkinitcpio-install.hook": MKINITCPIO_HOOK,
            "mkinitcpio-install": MKINITCPIO_INSTALL,
            "mkinitcpio": MKINITCPIO,
            "hook.preset": HOOK_PRESET,
        },
        body="""
install -Dm644 "$startdir/90-mkinitcpio-install.hook" \\
    "$pkgdir/usr/share/libalpm/hooks/90-mkinitcpio-install.hook"
install -Dm755 "$startdir/mkinitcpio-install" "$pkgdir/usr/share/libalpm/scripts/mkinitcpio-install"
install -Dm755 "$startdir/mkinitcpio" "$pkgdir/usr/bin/mkinitcpio"
install -Dm644 "$startdir/hook.preset" "$pkgdir/usr/share/mkinitcpio/hook.preset"
""",
    )


def find_pyalpm() -> Path | None:
    """pyalpm's extension module, when the test interpreter has it (a Debian /usr/bin/python3
    venv: the same ABI as the python3 that runs the hooks inside the root)."""
    try:
        import pyalpm  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return Path(pyalpm.__file__)


def pyalpm_recipe(module: Path) -> Recipe:
    return Recipe(
        name="pyalpm",
        version="1",
        stage={module.name: module},
        body=f"""
install -Dm644 "$startdir/{module.name}" "$pkgdir/usr/lib/python3/dist-packages/{module.name}"
""",
    )


def recipes() -> dict[str, list[Recipe]]:
    """Repository name → its packages. `next` has the newer kernel (K = NEW_KVER). `pyalpm` is
    there when the test interpreter has it."""
    pyalpm = find_pyalpm()
    common = [
        *([pyalpm_recipe(pyalpm)] if pyalpm is not None else []),
        dkmshooks_recipe(),
        kmod_recipe(),
        mkinitcpio_recipe(),
        dkms_recipe("foo-dkms", DATA / "dkms_test-1.0"),
        dkms_recipe("failing-dkms", DATA / "dkms_failing_test-1.0"),
    ]
    return {
        "first": [linux_recipe(OLD_KVER), headers_recipe(OLD_KVER), *common],
        "next": [linux_recipe(NEW_KVER), headers_recipe(NEW_KVER), *common],
    }


# -- building and caching ---------------------------------------------------------------------


def _run(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), text=True, capture_output=True, check=False, **kwargs)  # type: ignore[call-overload,no-any-return]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_package(recipe: Recipe, cache: Path) -> Path:
    """The recipe's .pkg.tar from the cache, built with makepkg first if needed."""
    key = recipe.key()
    done = cache / "pkgs" / f"{recipe.name}-{recipe.version}-{key}"
    with _locked(cache / "lock"):
        found = sorted(done.glob("*.pkg.tar")) if done.is_dir() else []
        if found:
            return found[0]
        user = build_user()
        workdir = Path(tempfile.mkdtemp(prefix=f"build-{recipe.name}-", dir=cache))
        try:
            (workdir / "PKGBUILD").write_text(recipe.pkgbuild())
            for name, value in recipe.stage.items():
                target = workdir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(value, Path):
                    if value.is_dir():
                        shutil.copytree(value, target, ignore=shutil.ignore_patterns("__pycache__"))
                    else:
                        shutil.copy2(value, target)
                else:
                    target.write_text(value)
            for root, dirs, files in os.walk(workdir):
                for item in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    shutil.chown(item, user)
            os.chmod(workdir, 0o755)
            env = {
                "PATH": BASE_PATH,
                "HOME": str(workdir),
                "LANG": "C.UTF-8",
                "PKGEXT": ".pkg.tar",  # uncompressed: the headers are 60 MB of text
                "PKGDEST": str(workdir),
            }
            proc = _run(
                [
                    "runuser",
                    "-u",
                    user,
                    "--",
                    "env",
                    *(f"{k}={v}" for k, v in env.items()),
                    "makepkg",
                    "-d",
                    "-f",
                    "--nosign",
                    "--noconfirm",
                    "--noprogressbar",
                ],
                cwd=workdir,
            )
            built = sorted(workdir.glob("*.pkg.tar"))
            if proc.returncode != 0 or not built:
                raise EnvironmentUnavailable(
                    f"makepkg {recipe.name} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                )
            staging = done.with_name(done.name + ".new")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            os.replace(built[0], staging / built[0].name)
            shutil.rmtree(done, ignore_errors=True)
            os.replace(staging, done)
            _prune(done, keep=3)
            return done / built[0].name
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _prune(done: Path, *, keep: int) -> None:
    """Keep the newest few builds of one package (dkmshooks changes with every commit)."""
    prefix = done.name.rsplit("-", 1)[0] + "-"
    siblings = [
        p
        for p in done.parent.glob(prefix + "*")
        if p.is_dir() and p.name.count("-") == done.name.count("-")
    ]
    for old in sorted(siblings, key=lambda p: p.stat().st_mtime)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def make_repos(where: Path, cache: Path | None = None) -> dict[str, Path]:
    """One local repository (`lab`) per entry of recipes(), in where/<name>."""
    cache = cache or cache_dir()
    repos = {}
    for name, items in recipes().items():
        repo = where / name
        repo.mkdir(parents=True)
        for recipe in items:
            pkg = build_package(recipe, cache)
            try:
                os.link(pkg, repo / pkg.name)
            except OSError:
                shutil.copy2(pkg, repo / pkg.name)
        proc = _run(
            [
                "repo-add",
                "-q",
                str(repo / "lab.db.tar.gz"),
                *map(str, sorted(repo.glob("*.pkg.tar"))),
            ]
        )
        if proc.returncode != 0:
            raise EnvironmentUnavailable(f"repo-add failed:\n{proc.stdout}{proc.stderr}")
        repos[name] = repo
    return repos


# -- the root ---------------------------------------------------------------------------------

_NAMESPACE_SCRIPT = """\
set -e
root=$1 upper=$2 work=$3
shift 3
mount -t overlay overlay -o "lowerdir=/usr,upperdir=$upper,workdir=$work" "$root/usr"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
exec "$@"
"""

PACMAN_CONF = """\
[options]
RootDir = {root}/
DBPath = {root}/var/lib/pacman/
CacheDir = {root}/var/cache/pacman/pkg/
LogFile = {root}/var/log/pacman.log
HookDir = {root}/etc/pacman.d/hooks/
GPGDir = {root}/etc/pacman.d/gnupg/
Architecture = x86_64
SigLevel = Never
LocalFileSigLevel = Never

[lab]
SigLevel = Never
Server = file://{repo}
"""


@dataclass
class Result:
    argv: list[str]
    returncode: int
    output: str

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)}  → {self.returncode}\n{self.output}"


class PacmanRoot:
    def __init__(self, work: Path, repo: Path) -> None:
        self.work = work
        self.root = work / "root"
        self.upper = work / "usr-upper"
        self.overlay_work = work / "usr-work"
        self.conf = work / "pacman.conf"
        self.history: list[Result] = []
        self._create()
        self.use_repo(repo)

    def _create(self) -> None:
        r = self.root
        for d in (
            "usr",
            "proc",
            "dev",
            "boot",
            "etc/pacman.d/hooks",
            "var/lib/pacman",
            "var/cache/pacman/pkg",
            "var/log",
            "run",
        ):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "tmp").mkdir(mode=0o1777)
        os.chmod(r / "tmp", 0o1777)
        for link in ("bin", "lib", "lib64", "sbin"):
            os.symlink(f"usr/{link}", r / link)
        (r / "etc/os-release").write_text('NAME="Arch Linux (dkmshooks e2e)"\nID=arch\n')
        # The host toolchain reaches some tools through Debian's alternatives (awk → mawk).
        if Path("/etc/alternatives").is_dir():
            shutil.copytree("/etc/alternatives", r / "etc/alternatives", symlinks=True)
        self.overlay_work.mkdir()
        for opaque in ("lib/modules", "src", "local"):
            d = self.upper / opaque
            d.mkdir(parents=True)
            os.setxattr(d, "trusted.overlay.opaque", b"y")
        for tool in HOST_GENERATORS:
            if os.path.lexists(Path("/usr") / tool):
                whiteout = self.upper / tool
                whiteout.parent.mkdir(parents=True, exist_ok=True)
                os.mknod(whiteout, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def use_repo(self, repo: Path) -> None:
        self.conf.write_text(PACMAN_CONF.format(root=self.root, repo=repo))

    def run(
        self,
        argv: Sequence[str],
        *,
        chroot: bool = False,
        env: Mapping[str, str] | None = None,
        timeout: float = 900,
    ) -> Result:
        """argv in the root's mount namespace, on the host (pacman) or chrooted into the root."""
        inner = ["chroot", str(self.root), *argv] if chroot else list(argv)
        full_env = {"PATH": BASE_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}
        full_env.update(env or {})
        proc = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                _NAMESPACE_SCRIPT,
                "sh",
                str(self.root),
                str(self.upper),
                str(self.overlay_work),
                *inner,
            ],
            env=full_env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
            timeout=timeout,
        )
        result = Result(list(argv), proc.returncode, proc.stdout)
        self.history.append(result)
        return result

    def pacman(self, *args: str) -> Result:
        return self.run(
            ["pacman", "--config", str(self.conf), "--noconfirm", "--noprogressbar", *args]
        )

    def path(self, path: str) -> Path:
        """Where the root's `path` (absolute, as seen inside the root) is, from the host."""
        rel = path.lstrip("/")
        if rel == "usr" or rel.startswith("usr/"):
            return self.upper / rel[len("usr/") :] if rel != "usr" else self.upper
        for link in ("lib/", "bin/", "sbin/", "lib64/"):
            if rel.startswith(link):
                return self.upper / rel
        return self.root / rel

    def exists(self, path: str) -> bool:
        p = self.path(path)
        try:
            st = p.lstat()
        except FileNotFoundError:
            return False
        return not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0)

    def read(self, path: str) -> str:
        p = self.path(path)
        return p.read_text() if self.exists(path) else ""

    def glob(self, pattern: str) -> list[str]:
        """Paths of the root (absolute, as seen inside it) that match an absolute pattern."""
        rel = pattern.lstrip("/")
        if rel.startswith("usr/"):
            names = ["/usr/" + str(p.relative_to(self.upper)) for p in self.upper.glob(rel[4:])]
        else:
            names = ["/" + str(p.relative_to(self.root)) for p in self.root.glob(rel)]
        return sorted(n for n in names if self.exists(n))

    def mkinitcpio_calls(self) -> list[str]:
        return [line for line in self.read(MKINITCPIO_LOG).splitlines() if line.startswith("call ")]

    def log_records(self) -> list[dict[str, object]]:
        text = self.read("/var/log/dkmshooks/rebuild.log")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def transcript(self) -> str:
        return "\n".join(str(r) for r in self.history)
