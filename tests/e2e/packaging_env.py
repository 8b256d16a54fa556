"""Helpers for the packaging tests (test_packaging.py): the three packages built from this
checkout by scripts/build-package.sh, and the scratch roots they are installed into with the
real package managers.

    Debian   the cached Debian 12 chroot of chroot.py, driven with apt and dpkg inside it
    rpm      an empty dnf --installroot; its only other package is a stub that provides what
             ours requires (python3, kmod, gcc…), so no scriptlet and no host file is needed
    Arch     an empty pacman --root with a private pacman.conf (root, db, cache, log and hook
             dirs all inside it)

Nothing here writes to the host's /etc, /var/lib/dpkg, /var/lib/dkms, /lib/modules, rpm or
pacman databases: every root is a directory under the test's tmp or cache dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chroot import Chroot, Result

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-package.sh"
ARCHIVES_LOCKED = "Could not get lock /var/cache/apt/archives/lock"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: What each kind of build needs on the host.
BUILD_TOOLS = {
    "deb": ("dpkg-buildpackage", "dh", "dh_python3", "lintian"),
    "rpm": ("rpmbuild", "rpm", "createrepo_c", "dnf"),
    "arch": ("makepkg", "bsdtar", "fakeroot", "pacman", "runuser"),
}


def missing_tools(kind: str) -> list[str]:
    return [tool for tool in BUILD_TOOLS[kind] if shutil.which(tool) is None]


def version() -> str:
    match = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert match, "no version in pyproject.toml"
    return match.group(1)


def dkms_compat_version() -> str:
    text = (REPO / "dkmshooks" / "__init__.py").read_text()
    match = re.search(r'^DKMS_COMPAT_VERSION = "([^"]+)"$', text, re.M)
    assert match, "no DKMS_COMPAT_VERSION in dkmshooks/__init__.py"
    return match.group(1)


def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A host command, stdout and stderr merged, never raising."""
    env = {"PATH": BASE_PATH, "LC_ALL": "C.UTF-8", "HOME": "/root", **kwargs.pop("env", {})}
    return subprocess.run(  # type: ignore[no-any-return]
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
        env=env,
        **kwargs,
    )


def check(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"`{' '.join(proc.args)}` exited {proc.returncode}:\n{proc.stdout}"
    return proc.stdout


def build_package(kind: str, out: Path) -> Path:
    """scripts/build-package.sh KIND OUT, the documented build command; returns the package."""
    proc = subprocess.run(
        [str(BUILD_SCRIPT), kind, str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": BASE_PATH, "LC_ALL": "C.UTF-8", "HOME": "/root"},
    )
    assert proc.returncode == 0, f"building the {kind} package failed:\n{proc.stderr[-6000:]}"
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.parent == out, proc.stdout
    return path


# -- Debian ----------------------------------------------------------------------------------------


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every entry below root: its type, mode and content hash or link target."""
    found: dict[str, str] = {}
    if not root.exists():
        return found
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            found[rel] = f"link {os.readlink(path)}"
        elif stat.S_ISDIR(st.st_mode):
            found[rel] = f"dir {stat.S_IMODE(st.st_mode):o}"
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[rel] = f"file {stat.S_IMODE(st.st_mode):o} {digest}"
    return found


@dataclass
class DebianSystem:
    """The Debian 12 chroot the .deb is installed into."""

    chroot: Chroot

    def run(self, *argv: str, env: Mapping[str, str] | None = None) -> Result:
        return self.chroot.run(argv, env=env)

    def apt(self, *args: str) -> Result:
        """apt-get in the chroot; its output is printed (pytest shows it for failed tests)."""
        started = time.monotonic()
        while True:
            result = self.chroot.run(["apt-get", "-y", *args])
            # The archive cache is shared by every e2e chroot (chroot.py), and apt does not wait
            # for its lock the way DPkg::Lock::Timeout makes it wait for dpkg's.
            if result.rc == 0 or ARCHIVES_LOCKED not in result.output:
                break
            if time.monotonic() - started > 900:
                break
            time.sleep(5)
        elapsed = time.monotonic() - started
        print(f"e2e: apt-get {' '.join(args)}: exit {result.rc} in {elapsed:.1f} s")
        print(result.output)
        return result

    def status(self, package: str) -> str:
        """dpkg's Status field, "" when dpkg does not know the package."""
        result = self.run("dpkg-query", "-W", "-f=${Status}", package)
        return result.output.strip() if result.rc == 0 else ""

    def file(self, path: str) -> Path:
        return self.chroot.file(path)

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.file(path))

    def dkms_status(self, *args: str) -> list[str]:
        out = self.run("dkms", "status", *args).check().output
        return [line for line in out.splitlines() if line.strip()]

    def log_records(self) -> list[dict[str, Any]]:
        log = self.file("/var/log/dkmshooks/rebuild.log")
        if not log.is_file():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


# -- rpm -------------------------------------------------------------------------------------------


def rpm_requires(rpm: Path) -> list[str]:
    return check(run(["rpm", "-qp", "--requires", str(rpm)])).split("\n")


def stub_provides(requires: Sequence[str]) -> list[str]:
    """What a stub package must provide so that an installroot satisfies these requirements:
    each plain requirement once, versioned ones at a version that meets them (the rich
    requirements, "(python3 >= 3.11 or python3-tomli)", are then met as well)."""
    provides = []
    for req in requires:
        req = req.strip()
        if not req or req.startswith(("rpmlib(", "config(", "(")):
            continue
        parts = req.split()
        if len(parts) == 3 and parts[1] == "=":
            provides.append(req)
        elif len(parts) == 3 and parts[1] in (">=", ">"):
            provides.append(f"{parts[0]} = 999")
        else:
            provides.append(parts[0])
    return sorted(set(provides))


def stub_spec(name: str, provides: Sequence[str], files: Mapping[str, str] | None = None) -> str:
    """A noarch package with these provides and files (path → content), and no scriptlets."""
    install = ["mkdir -p %{buildroot}"]
    for path, content in (files or {}).items():
        install.append(f"mkdir -p %{{buildroot}}{os.path.dirname(path)}")
        install.append(f"printf '%%s' {shlex_quote(content)} > %{{buildroot}}{path}")
    lines = [
        "%global debug_package %{nil}",
        f"Name: {name}",
        "Version: 1",
        "Release: 1",
        f"Summary: dkmshooks packaging test: {name}",
        "License: GPL-2.0-or-later",
        "BuildArch: noarch",
        "AutoReqProv: no",
        *(f"Provides: {p}" for p in provides),
        "",
        "%description",
        "A stand-in for the packaging tests of dkmshooks.",
        "",
        "%install",
        *install,
        "",
        "%files",
        *(files or {}),
    ]
    return "\n".join(lines) + "\n"


def shlex_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def build_rpm(spec_text: str, name: str, work: Path) -> Path:
    spec = work / f"{name}.spec"
    spec.write_text(spec_text)
    top = work / "rpmbuild"
    check(run(["rpmbuild", "--quiet", "-bb", "--define", f"_topdir {top}", str(spec)]))
    return next((top / "RPMS" / "noarch").glob(f"{name}-1-1.noarch.rpm"))


@dataclass
class DnfRoot:
    """An empty installroot for Debian's dnf 4 (rpmdb at ROOT/root/.rpmdb: Debian's %_dbpath)."""

    root: Path
    reposdir: Path

    @classmethod
    def create(cls, base: Path, repo: Path) -> DnfRoot:
        root = base / "root"
        root.mkdir(parents=True)
        reposdir = base / "repos.d"
        reposdir.mkdir()
        (reposdir / "packaging.repo").write_text(
            f"[packaging]\nname=dkmshooks packaging test\nbaseurl=file://{repo}\n"
            "gpgcheck=0\nrepo_gpgcheck=0\nenabled=1\nmetadata_expire=0\n"
        )
        return cls(root, reposdir)

    def dnf(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            "/usr/bin/dnf",
            "-y",
            f"--installroot={self.root}",
            "--releasever=41",
            f"--setopt=reposdir={self.reposdir}",
            "--setopt=gpgcheck=0",
            "--setopt=install_weak_deps=0",
            *args,
        ]
        return run(argv, env=dict(env or {}))

    def rpm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["rpm", f"--root={self.root}", *args])


# -- pacman ----------------------------------------------------------------------------------------


@dataclass
class PacmanRoot:
    root: Path
    config: Path

    @classmethod
    def create(cls, base: Path) -> PacmanRoot:
        root = base / "root"
        for d in ("var/lib/pacman", "var/cache/pacman/pkg", "var/log", "etc/pacman.d/hooks", "tmp"):
            (root / d).mkdir(parents=True)
        config = base / "pacman.conf"
        config.write_text(
            textwrap.dedent(
                f"""\
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
                """
            )
        )
        return cls(root, config)

    def pacman(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(["pacman", "--config", str(self.config), "--noconfirm", *args])


def arch_stub_pkgbuild(name: str, body: str, extra: str = "") -> str:
    return textwrap.dedent(
        """\
        pkgname={name}
        pkgver=1
        pkgrel=1
        pkgdesc="dkmshooks packaging test: {name}"
        arch=(any)
        license=(GPL-2.0-or-later)
        options=(!strip !debug !zipman !purge)
        {extra}
        package() {{
        {body}
        }}
        """
    ).format(name=name, body=body, extra=extra)


def makepkg(pkgbuild: str, out: Path) -> Path:
    """makepkg as an unprivileged user, in a scratch dir of /tmp that user can reach (pytest's
    tmp dirs are root's, 0700); returns the package, moved into out."""
    out.mkdir(parents=True, exist_ok=True)
    user = next(u for u in ("builder", "nobody") if run(["id", "-u", u]).returncode == 0)
    work = Path(tempfile.mkdtemp(prefix="dkmshooks-makepkg-"))
    try:
        (work / "PKGBUILD").write_text(pkgbuild)
        check(run(["chown", "-R", user, str(work)]))
        env = [f"HOME={work}", f"PKGDEST={work}", "PKGEXT=.pkg.tar"]
        makepkg = ["makepkg", "-d", "-f", "--nosign", "--noconfirm", "--noprogressbar"]
        check(run(["runuser", "-u", user, "--", "env", *env, *makepkg], cwd=work))
        built = next(work.glob("*.pkg.tar"))
        return Path(shutil.move(built, out / built.name))
    finally:
        shutil.rmtree(work, ignore_errors=True)
