"""A Fedora-shaped rpm world on this Debian machine, for the dnf and kernel-install e2e tests.

What is real: dnf 4 (`/usr/bin/dnf`, Debian's python3-dnf) with `--installroot`, rpm and its
scriptlets, rpmbuild, createrepo_c, systemd's `/usr/bin/kernel-install` (252, a shell script)
and its plugin discovery, depmod, make and gcc, Debian's 6.1 kernel headers, and dkmshooks from
this checkout. What is a stand-in: the kernel image (a text file), dracut (a script that records
its calls and what it would have put into the initramfs), and the kernel packages themselves,
built here by rpmbuild:

    kernel-core  K   /lib/modules/K/{vmlinuz,modules.order,modules.builtin,config,kernel/},
                     build -> /usr/src/kernels/K; %posttrans `kernel-install add K …`,
                     %preun `kernel-install remove K` (Fedora's kernel.spec does exactly that);
                     Provides installonlypkg(kernel)
    kernel-devel K   /usr/src/kernels/K: the host's linux-headers-K, -common and linux-kbuild-6.1
                     merged into one tree as Fedora ships it; Provides installonlypkg(kernel)
    dracut           the stand-in /usr/bin/dracut, /usr/bin/lsinitrd and 50-dracut.install
    host-usr         no files; Provides /bin/sh, which every package with a scriptlet requires:
                     the shell, like all of /usr, comes from the host (below)
    M-dkms           tests/data/M-1.0 in /usr/src/M-1.0; %post `dkms add`, %preun `dkms remove`

K is a Debian release (6.1.0-56-amd64) in an rpm named kernel-core-6.1.0-56: the headers are
real, vermagic matches, and nothing can derive K from name-version-release by accident. rpm
refuses a second '-' in a dependency version, so these packages cannot carry Fedora's
`kernel-uname-r = K` / `kernel-devel-uname-r = K` provides (a Fedora K, 6.11.4-301.fc41.x86_64,
has one): the adapter finds K through its documented fallback, the package's file list. The
provides path is covered by the unit tests.

The installroot's layout (the least surprising one we found): rpm runs scriptlets chrooted into
the installroot, so kernel-install, python3, make, gcc and kmod must exist inside it. Every
command runs in a private mount namespace (`unshare --mount`) in which the root's /usr is an
overlayfs whose lower layer is the host's /usr (read-only: programs, libraries, Python) and whose
upper layer is the root's own (`usr-upper/`: everything rpm installs under /usr, dkmshooks, the
plugins). /bin, /sbin, /lib and /lib64 are the merged-/usr symlinks; /etc, /var, /boot, /tmp and
/root (where Debian's rpm keeps the rpmdb: %_dbpath is ~/.rpmdb) are the root's own directories.
The host's /usr/lib/modules and /usr/lib/kernel/install.d are hidden by opaque directories, so the
root sees only its own kernels and plugins. proc and /dev are mounted into the root for the
scriptlets. dnf runs in that namespace but outside the chroot, as it does for any installroot,
with its plugin path and plugin config path pointed at hooks/dnf/. The mounts die with the
namespace; nothing reaches the host's /lib/modules, /var/lib/dkms, /etc, /boot, kernel plugin
directories or rpm database.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
HOOKS = REPO / "hooks"

#: Debian 12 kernel ABIs with headers on this machine (scripts/kernels.txt). OLD < NEW.
OLD = "6.1.0-55-amd64"
NEW = "6.1.0-56-amd64"
KBUILD = Path("/usr/lib/linux-kbuild-6.1")

MACHINE_ID = "0123456789abcdef0123456789abcdef"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The wrapper's own failure, told apart from whatever the wrapped command returns.
SETUP_FAILED = 125


def missing_tools() -> str | None:
    """Why the rpm world cannot be built here, or None."""
    for tool in ("rpmbuild", "createrepo_c", "dnf", "unshare", "chroot", "kernel-install"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup-test-env.sh installs it)"
    if os.geteuid() != 0:
        return "needs root (mount namespaces, chroot, rpm scriptlets)"
    for kver in (OLD, NEW):
        if not Path(f"/usr/src/linux-headers-{kver}/Makefile").is_file():
            return f"linux-headers-{kver} is not installed"
    if not KBUILD.is_dir():
        return f"{KBUILD} is missing"
    return None


def version_release(kver: str) -> tuple[str, str]:
    """6.1.0-56-amd64 → ("6.1.0", "56"): what the rpm calls itself; K stays in the provides."""
    version, abi = kver.split("-")[:2]
    return version, abi


# -- the stand-ins ---------------------------------------------------------------------------------

# $E2E_ROOT prefixes every system path, so the same scripts serve a chroot (unset) and the
# kernel-install tests, which run on the host with DKMSHOOKS_ROOT.
DRACUT = """\
#!/bin/sh
# dracut stand-in: records the call (who asked, for which kernel) and the .ko files under
# /lib/modules/KVER at that moment, and writes that list as the "initramfs".
r=${E2E_ROOT:-}
kver= out=
while [ $# -gt 0 ]; do
    case $1 in
        --kver) kver=$2; shift ;;
        -*) ;;
        *) out=$1 ;;
    esac
    shift
done
[ -n "$kver" ] || { echo "dracut stand-in: no --kver" >&2; exit 1; }
[ -n "$out" ] || out=/boot/initramfs-$kver.img
mods=$(cd "$r/lib/modules/$kver" 2>/dev/null && find . -name '*.ko*' | sort | tr '\\n' ' ')
mkdir -p "$r/var/log"
printf 'kver=%s out=%s caller=%s modules=%s\\n' "$kver" "$out" "${DRACUT_CALLER:-direct}" \\
    "$mods" >>"$r/var/log/dracut-standin.log"
for m in $mods; do echo "usr/lib/modules/$kver/${m#./}"; done >"$r$out"
"""

LSINITRD = """\
#!/bin/sh
# lsinitrd stand-in: the stand-in initramfs is its own file list.
cat "${E2E_ROOT:-}$1"
"""

DRACUT_PLUGIN = """\
#!/bin/sh
# 50-dracut.install stand-in: on add, make /boot/initramfs-KVER.img as RHEL 9's plugin does when
# there is no BLS entry directory; everything else is not its business.
[ "$1" = add ] || exit 0
DRACUT_CALLER=kernel-install exec dracut -f --kver "$2" "/boot/initramfs-$2.img"
"""


# -- rpms ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    name: str
    version: str
    release: str
    arch: str
    install: str  # the %install body
    files: Sequence[str]
    provides: Sequence[str] = ()
    scripts: Mapping[str, str] = field(default_factory=dict)  # "%posttrans" → body

    def text(self) -> str:
        head = [
            "%global debug_package %{nil}",
            "%global __os_install_post %{nil}",
            "%global _build_id_links none",
            # Uncompressed payload: kernel-devel carries ~80 MB of headers.
            "%global _binary_payload w.ufdio",
            f"Name: {self.name}",
            f"Version: {self.version}",
            f"Release: {self.release}",
            f"Summary: e2e test package {self.name}",
            "License: GPL-2.0-only",
            f"BuildArch: {self.arch}",
            "AutoReqProv: no",
            *(f"Provides: {p}" for p in self.provides),
            "",
            "%description",
            f"{self.name} for dkmshooks's dnf end-to-end tests.",
            "",
            "%install",
            self.install.rstrip(),
            "",
            "%files",
            *self.files,
        ]
        for section, body in self.scripts.items():
            head += ["", section, body.rstrip()]
        return "\n".join(head) + "\n"


def merge_headers(kver: str, dest: Path) -> None:
    """Debian's split headers (linux-headers-K: the configured objtree; -common: the source
    headers; linux-kbuild-6.1: scripts and tools) merged into the single tree Fedora's
    kernel-devel ships. The -common Makefile still reads .kernelvariables (ARCH, KERNELRELEASE,
    CC = gcc-12), so the tree builds modules with K's vermagic."""
    headers = Path(f"/usr/src/linux-headers-{kver}")
    common = Path(os.path.realpath(headers / "Makefile"))
    common_dir = Path(f"/usr/src/linux-headers-{kver.rsplit('-', 1)[0]}-common")
    if not common_dir.is_dir():
        raise RuntimeError(f"{common_dir} missing (for {common})")
    dest.mkdir(parents=True)
    subprocess.run(["cp", "-a", f"{common_dir}/.", str(dest)], check=True)
    for link in ("scripts", "tools"):
        (dest / link).unlink()
        subprocess.run(["cp", "-a", str(KBUILD / link), str(dest / link)], check=True)
    for name in (".config", ".kernelvariables", "Module.symvers"):
        shutil.copy2(headers / name, dest / name)
    for sub in ("arch", "include"):
        subprocess.run(["cp", "-a", f"{headers / sub}/.", str(dest / sub)], check=True)


def kernel_specs(kver: str, staging: Path) -> list[Spec]:
    version, release = version_release(kver)
    tree = staging / f"kernels-{kver}"
    if not tree.exists():
        merge_headers(kver, tree)
    mods = f"%{{buildroot}}/lib/modules/{kver}"
    core = Spec(
        name="kernel-core",
        version=version,
        release=release,
        arch="x86_64",
        provides=("installonlypkg(kernel)",),
        install=textwrap.dedent(
            f"""\
            mkdir -p {mods}/kernel/drivers
            printf 'e2e stand-in kernel image {kver}\\n' > {mods}/vmlinuz
            : > {mods}/modules.order
            : > {mods}/modules.builtin
            : > {mods}/modules.builtin.modinfo
            cp /usr/src/linux-headers-{kver}/.config {mods}/config
            ln -s /usr/src/kernels/{kver} {mods}/build
            ln -s build {mods}/source
            """
        ),
        files=(f"/lib/modules/{kver}",),
        scripts={
            "%posttrans": f"/bin/kernel-install add {kver} /lib/modules/{kver}/vmlinuz || exit $?",
            "%preun": f"/bin/kernel-install remove {kver} || exit $?",
        },
    )
    devel = Spec(
        name="kernel-devel",
        version=version,
        release=release,
        arch="x86_64",
        provides=("installonlypkg(kernel)",),
        install=f"mkdir -p %{{buildroot}}/usr/src/kernels\n"
        f"cp -a {tree} %{{buildroot}}/usr/src/kernels/{kver}\n",
        files=(f"/usr/src/kernels/{kver}",),
    )
    return [core, devel]


def dkms_spec(module: str) -> Spec:
    source = DATA / f"{module}-1.0"
    return Spec(
        name=f"{module}-dkms",
        version="1.0",
        release="1",
        arch="noarch",
        install=f"mkdir -p %{{buildroot}}/usr/src\ncp -a {source} %{{buildroot}}/usr/src/\n",
        files=(f"/usr/src/{module}-1.0",),
        scripts={
            "%post": f"/usr/sbin/dkms add -m {module} -v 1.0 --rpm_safe_upgrade || :",
            "%preun": f"/usr/sbin/dkms remove -m {module} -v 1.0 --all --rpm_safe_upgrade || :",
        },
    )


def dracut_spec(staging: Path) -> Spec:
    files = staging / "dracut-files"
    files.mkdir(exist_ok=True)
    for name, text in (("dracut", DRACUT), ("lsinitrd", LSINITRD), ("50-dracut", DRACUT_PLUGIN)):
        (files / name).write_text(text)
    bindir, plugdir = "%{buildroot}/usr/bin", "%{buildroot}/usr/lib/kernel/install.d"
    return Spec(
        name="dracut",
        version="999",
        release="e2e",
        arch="noarch",
        install=textwrap.dedent(
            f"""\
            install -D -m 0755 {files}/dracut {bindir}/dracut
            install -D -m 0755 {files}/lsinitrd {bindir}/lsinitrd
            install -D -m 0755 {files}/50-dracut {plugdir}/50-dracut.install
            """
        ),
        files=(
            "/usr/bin/dracut",
            "/usr/bin/lsinitrd",
            "/usr/lib/kernel/install.d/50-dracut.install",
        ),
    )


def host_usr_spec() -> Spec:
    return Spec(
        name="host-usr",
        version="1",
        release="e2e",
        arch="noarch",
        provides=("/bin/sh", "/usr/bin/sh"),
        install="mkdir -p %{buildroot}\n",
        files=(),
    )


#: What every root gets in its first transaction.
BASE_PACKAGES = ("host-usr", "dracut")


def build_repo(workdir: Path) -> Path:
    """rpmbuild every package (both kernels, the dkms packages, the dracut stand-in) and
    createrepo_c them into one repository; returns its directory."""
    staging = workdir / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    specs = [
        *kernel_specs(OLD, staging),
        *kernel_specs(NEW, staging),
        dkms_spec("dkms_test"),
        dkms_spec("dkms_failing_test"),
        dracut_spec(staging),
        host_usr_spec(),
    ]
    topdir = workdir / "rpmbuild"
    repo = workdir / "repo"
    repo.mkdir(exist_ok=True)
    for spec in specs:
        path = staging / f"{spec.name}-{spec.version}-{spec.release}.spec"
        path.write_text(spec.text())
        subprocess.run(
            ["rpmbuild", "--quiet", "-bb", "--define", f"_topdir {topdir}", str(path)],
            check=True,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
    for rpm in topdir.glob("RPMS/*/*.rpm"):
        shutil.copy2(rpm, repo / rpm.name)
    subprocess.run(["createrepo_c", "--quiet", str(repo)], check=True)
    shutil.rmtree(topdir)
    for tree in staging.glob("kernels-*"):
        shutil.rmtree(tree)
    return repo


# -- the installroot -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        command = shlex.join(self.argv)
        return f"`{command}` exited {self.rc}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def _opaque(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.setxattr(path, "trusted.overlay.opaque", b"y")


def install_dkmshooks(usr: Path) -> None:
    """dkmshooks from this checkout, laid out as its rpm would: the package for the root's
    python3, `dkms` and `dkmshooks` in /usr/sbin and /usr/bin, the kernel-install plugin."""
    site = usr / "lib/python3/dist-packages/dkmshooks"
    if site.exists():
        shutil.rmtree(site)
    shutil.copytree(REPO / "dkmshooks", site, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for directory, name, function in (
        ("sbin", "dkms", "dkms_main"),
        ("bin", "dkmshooks", "dkmshooks_main"),
    ):
        target = usr / directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            f"#!/usr/bin/python3\nfrom dkmshooks.cli import {function}\n{function}()\n"
        )
        target.chmod(0o755)
    plugins = usr / "lib/kernel/install.d"
    shutil.copy2(HOOKS / "kernel-install/40-dkmshooks.install", plugins / "40-dkmshooks.install")


class RpmRoot:
    """One dnf installroot with its own /usr upper layer (see the module docstring)."""

    def __init__(self, base: Path, repo: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.upper = base / "usr-upper"
        self.work = base / "usr-work"
        self.repo = repo
        self.reposdir = base / "repos.d"
        self._setup()

    def _setup(self) -> None:
        root = self.root
        for d in ("usr", "etc", "var/tmp", "var/log", "tmp", "proc", "dev", "boot", "root", "run"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "tmp").chmod(0o1777)
        (root / "var/tmp").chmod(0o1777)
        for link in ("bin", "sbin", "lib", "lib64"):
            (root / link).symlink_to(f"usr/{link}")
        self.work.mkdir(parents=True)
        _opaque(self.upper / "lib/modules")
        _opaque(self.upper / "lib/kernel/install.d")
        # Debian's own systemd plugin, which Fedora has as well; it runs chrooted.
        shutil.copy2(
            "/usr/lib/kernel/install.d/50-depmod.install",
            self.upper / "lib/kernel/install.d/50-depmod.install",
        )
        install_dkmshooks(self.upper)
        etc = root / "etc"
        # Debian's /usr/bin/awk, cc, … are symlinks through /etc/alternatives: the root needs
        # the host's links to run the host's /usr (kbuild calls awk).
        shutil.copytree("/etc/alternatives", etc / "alternatives", symlinks=True)
        (etc / "os-release").write_text(
            'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=41\nPRETTY_NAME="Fedora (dkmshooks e2e)"\n'
        )
        (etc / "machine-id").write_text(MACHINE_ID + "\n")
        (etc / "kernel").mkdir()
        # No BLS entry directory: the stand-in 50-dracut writes /boot/initramfs-K.img.
        (etc / "kernel/install.conf").write_text("layout=other\n")
        self.reposdir.mkdir()
        (self.reposdir / "e2e.repo").write_text(
            f"[e2e]\nname=dkmshooks e2e\nbaseurl=file://{self.repo}\ngpgcheck=0\n"
            "repo_gpgcheck=0\nenabled=1\nmetadata_expire=0\n"
        )

    # -- running -----------------------------------------------------------------------------------

    def _wrapper(self) -> str:
        q = shlex.quote
        r, u, w = q(str(self.root)), q(str(self.upper)), q(str(self.work))
        return "\n".join(
            [
                "set -u",
                f"mount -t overlay e2e-usr -o lowerdir=/usr,upperdir={u},workdir={w} {r}/usr "
                f"|| exit {SETUP_FAILED}",
                f"mount -t proc proc {r}/proc || exit {SETUP_FAILED}",
                f"mount --rbind /dev {r}/dev || exit {SETUP_FAILED}",
                'exec "$@"',
            ]
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        chroot: bool = False,
        env: Mapping[str, str] | None = None,
        timeout: float = 600,
    ) -> Result:
        """argv in the namespace; with chroot, inside the root (argv's paths are the root's)."""
        full_env = {"PATH": BASE_PATH, "HOME": "/root", "LC_ALL": "C.UTF-8", **(env or {})}
        inner = ["chroot", str(self.root), *argv] if chroot else list(argv)
        command = ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c"]
        command += [self._wrapper(), "e2e-ns", *inner]
        proc = subprocess.run(
            command,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode == SETUP_FAILED:
            raise RuntimeError(f"cannot set up the namespace for {argv}: {proc.stderr}")
        return Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def dnf(self, *args: str, plugins: bool = True, env: Mapping[str, str] | None = None) -> Result:
        """Debian's dnf 4 on this installroot; with plugins, ours from hooks/dnf/ and only it."""
        argv = [
            "/usr/bin/dnf",
            "-y",
            f"--installroot={self.root}",
            "--releasever=41",
            f"--setopt=reposdir={self.reposdir}",
            "--setopt=gpgcheck=0",
            "--setopt=install_weak_deps=0",
            "--disableplugin=*" if not plugins else f"--setopt=pluginpath={HOOKS / 'dnf'}",
        ]
        if plugins:
            argv.append(f"--setopt=pluginconfpath={HOOKS / 'dnf'}")
        # The host dnf imports the plugin, and the plugin dkmshooks, from this checkout.
        python_env = {"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
        return self.run([*argv, *args], env={**python_env, **(env or {})})

    # -- looking at the result ---------------------------------------------------------------------

    def path(self, path: str) -> Path:
        """Where a path of the root lives on the host once the namespace is gone."""
        for link in ("/lib/", "/lib64/", "/bin/", "/sbin/"):
            if path.startswith(link):
                path = "/usr" + path
        if path == "/usr" or path.startswith("/usr/"):
            return self.upper / path[len("/usr") :].lstrip("/")
        return self.root / path.lstrip("/")

    def exists(self, path: str) -> bool:
        p = self.path(path)
        if p.is_symlink():
            return True  # its target is a path of the root, not of the host
        # A deleted file of the lower layer is a 0/0 character device in the upper one.
        return p.exists() and not (p.is_char_device() and os.stat(p).st_rdev == 0)

    def write(self, path: str, text: str) -> None:
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def read(self, path: str) -> str:
        return self.path(path).read_text(encoding="utf-8", errors="replace")

    def modules(self, kver: str) -> list[str]:
        """The .ko files under /lib/modules/K, relative to it."""
        top = self.path(f"/lib/modules/{kver}")
        if not top.is_dir():
            return []
        return sorted(str(p.relative_to(top)) for p in top.rglob("*.ko*"))

    def dracut_calls(self) -> list[dict[str, str]]:
        """The stand-in dracut's log: one dict per call (kver, out, caller, modules)."""
        if not self.exists("/var/log/dracut-standin.log"):
            return []
        calls = []
        for line in self.read("/var/log/dracut-standin.log").splitlines():
            head, _, modules = line.partition(" modules=")
            call = dict(item.split("=", 1) for item in head.split())
            call["modules"] = modules.strip()
            calls.append(call)
        return calls

    def rebuild_log(self) -> list[dict[str, object]]:
        import json

        if not self.exists("/var/log/dkmshooks/rebuild.log"):
            return []
        return [
            json.loads(line)
            for line in self.read("/var/log/dkmshooks/rebuild.log").splitlines()
            if line.strip()
        ]


def cache_dir() -> Path:
    """Where built repositories are kept between runs (shared with the apt tier's convention)."""
    return Path(os.environ.get("DKMSHOOKS_TEST_CACHE") or "/var/cache/dkmshooks-test")


def cached_repo() -> Path:
    """The repository for this checkout's recipe, built once (about 25 s) and then reused."""
    import fcntl
    import tempfile

    top = cache_dir()
    top.mkdir(parents=True, exist_ok=True)
    final = top / f"rpm-repo-{repo_key()}"
    with open(top / "rpm-repo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "repodata/repomd.xml").is_file():
            return final
        work = Path(tempfile.mkdtemp(prefix="rpm-repo-", dir=top))
        try:
            built = build_repo(work)
            shutil.rmtree(final, ignore_errors=True)
            built.rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for old in top.glob("rpm-repo-*"):
            if old.is_dir() and old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def repo_key() -> str:
    """What the built repository depends on: this file, the module sources, the headers."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for module in ("dkms_test", "dkms_failing_test"):
        for path in sorted((DATA / f"{module}-1.0").rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(DATA)).encode() + path.read_bytes())
    for kver in (OLD, NEW):
        digest.update(Path(f"/usr/src/linux-headers-{kver}/Module.symvers").read_bytes()[:4096])
    return digest.hexdigest()[:16]
