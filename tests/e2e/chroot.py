"""A Debian 12 chroot for the end-to-end tier, driven with the real dpkg and apt.

The base system (debootstrap minbase plus what kernel packages and module builds need) is built
once and cached as a tarball under the cache dir ($DKMSHOOKS_TEST_CACHE, default
/var/cache/dkmshooks-test), keyed by a hash of its recipe; each test module unpacks a fresh copy.
Every command runs in its own private mount namespace (`unshare --mount`) in which proc, sys,
/dev, /dev/pts and the shared apt archive cache are mounted into the chroot: the mounts vanish with
the command, whatever happens to the test process, and the host never sees them. The archive
cache (cache dir / apt-archives) is shared by all chroots, so each .deb is downloaded once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY = "http://deb.debian.org/debian-security"
CACHE_VAR = "DKMSHOOKS_TEST_CACHE"
# Set to keep each chroot after its tests for a look around (the next e2e run removes it).
KEEP_VAR = "DKMSHOOKS_E2E_KEEP"
DEFAULT_CACHE = Path("/var/cache/dkmshooks-test")

# What kernel packages, dkms.conf evaluation and module builds need, installed into the base
# once so that each test only pays for the kernels themselves. linux-kbuild-6.1 and
# linux-compiler-gcc-12-x86 are shared by every 6.1 ABI's headers.
BASE_PACKAGES = (
    "python3",
    "make",
    "gcc",
    "kmod",
    "initramfs-tools",
    "linux-base",
    "linux-kbuild-6.1",
    "linux-compiler-gcc-12-x86",
    "zstd",
)

# Bump when the recipe below changes in a way the hash cannot see.
RECIPE_VERSION = 1

# The wrapper's own failure, told apart from whatever the wrapped command returns.
SETUP_FAILED = 125

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

APT_CONF = """\
// dkmshooks e2e: non-interactive, lean, and downloads kept in the shared archive cache.
APT::Install-Recommends "false";
APT::Install-Suggests "false";
APT::Sandbox::User "root";
APT::Keep-Downloaded-Packages "true";
Acquire::Languages "none";
DPkg::Lock::Timeout "900";
Dpkg::Use-Pty "false";
"""

# initramfs-tools: only the modules named in /etc/initramfs-tools/modules (dkms_test for the
# lsinitramfs check) instead of `most`, which takes a quarter of a minute per kernel on 2 cores;
# `dep` cannot find the root device inside a chroot.
INITRAMFS_CONF = """\
MODULES=list
BUSYBOX=auto
COMPRESS=zstd
COMPRESSLEVEL=1
"""


class ChrootError(RuntimeError):
    """The chroot itself could not be set up; no expectation of a test was checked."""


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    rc: int
    output: str  # stdout and stderr merged, in the order written

    def check(self) -> Result:
        if self.rc != 0:
            raise AssertionError(
                f"{shlex.join(self.argv)} exited {self.rc}:\n{self.output[-6000:]}"
            )
        return self


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_VAR) or DEFAULT_CACHE)


def host_sources() -> tuple[str, str]:
    """(Debian mirror, deb822 sources text) as this machine uses them: the chroot gets the same
    mirror, so it reaches whatever the host reaches."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    mirror, security = DEFAULT_MIRROR, DEFAULT_SECURITY
    if sources.is_file():
        for stanza in sources.read_text(encoding="utf-8").split("\n\n"):
            fields = dict(
                line.split(":", 1)
                for line in stanza.splitlines()
                if ":" in line and not line.startswith("#")
            )
            uris = fields.get("URIs", "").split()
            suites = fields.get("Suites", "").split()
            if not uris:
                continue
            if any(s.endswith("-security") for s in suites):
                security = uris[0]
            elif SUITE in suites:
                mirror = uris[0]
    text = (
        f"Types: deb\nURIs: {mirror}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {security}\nSuites: {SUITE}-security\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    return mirror, text


def _recipe_key(mirror: str, sources: str) -> str:
    recipe = "\n".join(
        [str(RECIPE_VERSION), SUITE, mirror, sources, APT_CONF, INITRAMFS_CONF, *BASE_PACKAGES]
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def _tar_compress() -> list[str]:
    return ["-I", "zstd -T0 -3"] if shutil.which("zstd") else ["-z"]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path in this process's mount namespace."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def remove_tree(path: Path) -> None:
    """rm -rf that refuses to run while anything is mounted below path (a bound /dev!)."""
    if not path.exists():
        return
    mounted = mounts_under(path)
    if mounted:
        raise ChrootError(f"not removing {path}: still mounted: {mounted}")
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True)


class Chroot:
    def __init__(self, path: Path, archives: Path) -> None:
        self.path = path
        self.archives = archives

    def _wrapper(self) -> str:
        root = shlex.quote(str(self.path))
        archives = shlex.quote(str(self.archives))
        mounts = [
            f"mount -t proc proc {root}/proc",
            f"mount -t sysfs sysfs {root}/sys",
            f"mount --bind /dev {root}/dev",
            f"mount --bind /dev/pts {root}/dev/pts",
            f"mkdir -p {root}/var/cache/apt/archives",
            f"mount --bind {archives} {root}/var/cache/apt/archives",
        ]
        lines = [
            f"{m} || {{ echo 'dkmshooks-e2e: setup failed: {m}' >&2; exit {SETUP_FAILED}; }}"
            for m in mounts
        ]
        return "\n".join([*lines, f'exec chroot {root} "$@"'])

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float = 1800,
    ) -> Result:
        full_env = {
            "PATH": BASE_PATH,
            "HOME": "/root",
            "LC_ALL": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive",
            "TERM": "dumb",
            **(env or {}),
        }
        argv = tuple(argv)
        # every chroot shares one apt archive cache, whose lock apt does not wait for: serialise
        # apt runs across chroots (and across test processes) on the host side
        guard = (
            _locked(self.archives.parent / "apt-archives.lock")
            if argv and os.path.basename(argv[0]) in ("apt-get", "apt")
            else nullcontext()
        )
        with guard:
            proc = self._spawn(argv, full_env, input, timeout)
        output = proc.stdout.decode("utf-8", errors="replace")
        if proc.returncode == SETUP_FAILED and output.startswith("dkmshooks-e2e: setup failed"):
            raise ChrootError(output.strip())
        return Result(argv, proc.returncode, output)

    def _spawn(
        self,
        argv: tuple[str, ...],
        full_env: Mapping[str, str],
        input: str | None,
        timeout: float,
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                self._wrapper(),
                "dkmshooks-e2e",
                "/usr/bin/env",
                "-i",
                *(f"{k}={v}" for k, v in full_env.items()),
                *argv,
            ],
            input=None if input is None else input.encode(),
            stdin=subprocess.DEVNULL if input is None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )

    def sh(self, script: str, **kwargs: object) -> Result:
        return self.run(["sh", "-c", script], **kwargs)  # type: ignore[arg-type]

    def apt_get(self, *args: str) -> Result:
        return self.run(["apt-get", "-y", *args])

    def file(self, path: str) -> Path:
        """A path inside the chroot, seen from the host."""
        return self.path / path.lstrip("/")

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        target.chmod(mode)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_base(staging: Path, mirror: str, sources: str, cache: Path, archives: Path) -> None:
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ChrootError("debootstrap is not installed (apt-get install debootstrap)")
    debs = cache / "debootstrap-debs"
    debs.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [debootstrap, "--variant=minbase", f"--cache-dir={debs}", SUITE, str(staging), mirror],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise ChrootError(f"debootstrap failed:\n{proc.stdout.decode(errors='replace')[-4000:]}")
    chroot = Chroot(staging, archives)
    (staging / "etc/apt/sources.list").unlink(missing_ok=True)
    chroot.write("/etc/apt/sources.list.d/debian.sources", sources)
    chroot.write("/etc/apt/apt.conf.d/90dkmshooks-e2e", APT_CONF)
    # No daemons started from maintainer scripts inside the chroot.
    chroot.write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", mode=0o755)
    chroot.apt_get("update").check()
    chroot.apt_get("install", *BASE_PACKAGES).check()
    chroot.write("/etc/initramfs-tools/conf.d/dkmshooks-e2e.conf", INITRAMFS_CONF)


def ensure_base_tarball() -> Path:
    """The cached base system, built now if this recipe has none yet."""
    cache = cache_dir()
    mirror, sources = host_sources()
    tarball = cache / f"bookworm-base-{_recipe_key(mirror, sources)}.tar.zst"
    archives = apt_archives()
    with _locked(cache / "base.lock"):
        if tarball.is_file():
            return tarball
        staging = Path(tempfile.mkdtemp(prefix="base-", dir=cache))
        try:
            started = time.monotonic()
            _build_base(staging, mirror, sources, cache, archives)
            partial = tarball.with_name(tarball.name + ".partial")
            tar = ["tar", "-C", str(staging), "--numeric-owner", "--xattrs", *_tar_compress()]
            subprocess.run([*tar, "-cpf", str(partial), "."], check=True)
            os.replace(partial, tarball)
            print(f"e2e: built {tarball} in {time.monotonic() - started:.0f} s")
            for old in cache.glob("bookworm-base-*.tar.*"):
                if old != tarball:
                    old.unlink()
        finally:
            remove_tree(staging)
    return tarball


def apt_archives() -> Path:
    archives = cache_dir() / "apt-archives"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    return archives


def unpack(tarball: Path, dest: Path) -> Chroot:
    dest.mkdir(parents=True, exist_ok=True)
    tar = ["tar", "-C", str(dest), "--numeric-owner", "--xattrs", *_tar_compress()]
    subprocess.run([*tar, "-xpf", str(tarball)], check=True)
    chroot = Chroot(dest, apt_archives())
    # the cached base keeps the package lists of the day it was made; a point release since then
    # would turn installs into 404s
    chroot.apt_get("update").check()
    return chroot


@contextmanager
def work_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory under cache dir / work for one chroot, removed afterwards (unless keep),
    and the ones that killed runs left behind removed first. Each is guarded by an flock on
    <dir>.lock, taken before the directory exists and released after it is gone."""
    work = cache_dir() / "work"
    work.mkdir(parents=True, exist_ok=True)
    _remove_stale(work)
    fd, lock_name = tempfile.mkstemp(prefix=prefix, suffix=".lock", dir=work)
    with os.fdopen(fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = Path(lock_name[: -len(".lock")])
        path.mkdir()
        try:
            yield path
        finally:
            if os.environ.get(KEEP_VAR):
                print(f"e2e: kept {path} (until the next e2e run)")
            else:
                remove_tree(path)
                Path(lock_name).unlink()


def _remove_stale(work: Path) -> None:
    for lock_path in work.glob("*.lock"):
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a running session's
            remove_tree(lock_path.with_suffix(""))
            lock_path.unlink(missing_ok=True)
    for path in work.iterdir():
        if path.is_dir() and not path.with_name(path.name + ".lock").exists():
            remove_tree(path)


# -- a Debian system with dkmshooks, as the apt tests see it -------------------------------------

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"

# Two kernel ABIs of Debian 12 (both in the archive as images and headers). OLD < NEW.
OLD = "6.1.0-55-amd64"
NEW = "6.1.0-56-amd64"

MODULE, VERSION = "dkms_test", "1.0"
FAILING = "dkms_failing_test"


def image(kver: str) -> str:
    return f"linux-image-{kver}"


def headers(kver: str) -> str:
    return f"linux-headers-{kver}"


def headers_common(kver: str) -> str:
    # linux-headers-6.1.0-55-amd64 depends on linux-headers-6.1.0-55-common (the arch-independent
    # half); removing the headers "completely" means both.
    return f"linux-headers-{kver.rsplit('-', 1)[0]}-common"


@dataclass
class AptRun:
    label: str
    result: Result
    records: list[dict[str, Any]]  # what this run appended to the unified rebuild log

    @property
    def transactions(self) -> set[str]:
        return {r["transaction"] for r in self.records}

    def of(self, module: str, kver: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["module"] == module and r["kernel"] == kver]


@dataclass
class Debian:
    """A Debian 12 system in a chroot, with dkmshooks and dkms_test/1.0 registered."""

    chroot: Chroot
    runs: list[AptRun] = field(default_factory=list)

    # -- running -----------------------------------------------------------------------------------

    def run(self, *argv: str) -> Result:
        return self.chroot.run(argv)

    def log_records(self) -> list[dict[str, Any]]:
        """The unified log, read the way admins and shippers read it: `dkmshooks log --json`."""
        out = self.run("dkmshooks", "log", "--json").check().output
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def _tracked(self, label: str, argv: Sequence[str]) -> AptRun:
        before = len(self.log_records())
        started = time.monotonic()
        result = self.chroot.run(argv)
        print(f"e2e: {label}: exit {result.rc} in {time.monotonic() - started:.1f} s")
        run = AptRun(label, result, self.log_records()[before:])
        self.runs.append(run)
        return run

    def apt(self, *args: str) -> AptRun:
        return self._tracked(f"apt-get {' '.join(args)}", ["apt-get", "-y", *args])

    def dpkg(self, *args: str) -> AptRun:
        return self._tracked(f"dpkg {' '.join(args)}", ["dpkg", *args])

    # -- state -------------------------------------------------------------------------------------

    def status(self, package: str) -> str:
        """dpkg's Status field ("install ok installed", "… half-configured"), "" if unknown."""
        result = self.run("dpkg-query", "-W", "-f=${Status}", package)
        return result.output.strip() if result.rc == 0 else ""

    def is_installed(self, package: str) -> bool:
        return self.status(package) == "install ok installed"

    def ensure(self, present: Sequence[str] = (), absent: Sequence[str] = ()) -> None:
        """Bring the system to a starting point, outside of what a test checks."""
        gone = [p for p in absent if self.status(p) not in ("", "unknown ok not-installed")]
        if gone:
            self.run("apt-get", "-y", "purge", *gone).check()
        missing = [p for p in present if not self.is_installed(p)]
        if missing:
            self.run("apt-get", "-y", "install", *missing).check()

    def kernel_absent(self, kver: str) -> None:
        self.ensure(absent=[image(kver), headers(kver), headers_common(kver)])

    def kernel_present(self, kver: str) -> None:
        self.ensure(present=[image(kver), headers(kver)])

    def file(self, path: str) -> Path:
        return self.chroot.file(path)

    def installed_module(self, kver: str, module: str = MODULE) -> Path:
        return self.file(f"/lib/modules/{kver}/updates/dkms/{module}.ko")

    def built_module(self, kver: str, module: str = MODULE, version: str = VERSION) -> Path:
        return self.file(f"/var/lib/dkms/{module}/{version}/{kver}/x86_64/module/{module}.ko")

    def make_log(self, kver: str, module: str = MODULE, version: str = VERSION) -> Path:
        return self.file(f"/var/lib/dkms/{module}/{version}/{kver}/x86_64/log/make.log")

    def initramfs(self, kver: str) -> Path:
        return self.file(f"/boot/initrd.img-{kver}")

    def initramfs_lists(self, kver: str, module: str = MODULE) -> bool:
        out = self.run("lsinitramfs", f"/boot/initrd.img-{kver}").check().output
        return f"usr/lib/modules/{kver}/updates/dkms/{module}.ko" in out.splitlines()

    def in_modules_dep(self, kver: str, module: str = MODULE) -> bool:
        dep = self.file(f"/lib/modules/{kver}/modules.dep")
        return dep.is_file() and any(
            line.startswith(f"updates/dkms/{module}.ko:") for line in dep.read_text().splitlines()
        )

    def dkms_add(self, module: str, version: str = VERSION) -> None:
        target = self.file(f"/usr/src/{module}-{version}")
        if not target.exists():
            shutil.copytree(DATA / f"{module}-{version}", target, symlinks=True)
        self.run("dkms", "add", "-m", module, "-v", version).check()
