"""Run `dkms` for real without touching the host.

Every command runs in a private mount namespace (`unshare --mount --propagation private`) in which
/etc, /var/lib, /usr/src, /lib/modules, /var/log, /boot and /usr/share are overlayfs mounts over
the host's own directories. The upper layers live under the test's tmp_path, so state persists
from one `Sandbox.run` to the next within a test, while the host's trees are only ever read:
nothing a test does reaches the host's /var/lib/dkms, /usr/src, /lib/modules, /etc, /var/log,
/boot or /usr/share. Kernel
headers, compilers, make, depmod, modinfo, sign-file and openssl are the host's real ones.

The sandbox starts out as a host on which dkms was just installed: an empty /var/lib/dkms and an
/etc/dkms/framework.conf.d/, whatever the host itself holds there, and no dkmshooks state, config
or rebuild log (host content in those directories and in /lib/modules/*/updates is hidden with
opaque overlay directories).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# (name of the upper/work pair under the sandbox root, mount point)
OVERLAYS = (
    ("etc", "/etc"),
    ("var-lib", "/var/lib"),
    ("usr-src", "/usr/src"),
    ("lib-modules", "/lib/modules"),
    # dkms autoinstall/kernel_* append to dkmshooks's rebuild log; the engine reads /boot.
    ("var-log", "/var/log"),
    ("boot", "/boot"),
    # dkms reads /usr/share/dkms/modules_to_force_install; a test that writes it must not leave
    # it on the host for the next run's tests to find
    ("usr-share", "/usr/share"),
)

# The wrapper's own failure, told apart from whatever the wrapped command returns.
SETUP_FAILED = 125

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# dkms's running_in_chroot() compares /proc/1/mountinfo with /proc/self/mountinfo, and inside any
# new mount namespace they differ, so dkms would print "Running in chroot, modules won't be signed".
# Upstream's run_test.sh handles the same situation by installing this very file when it detects a
# chroot; doing it here keeps signing (sign-file, the MOK key pair) really exercised.
TRY_SIGN_MODULES_CONF = "/etc/dkms/framework.conf.d/try_sign_modules.conf"


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up; no test expectation was checked."""


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    rc: int
    output: str  # stdout and stderr merged into one pipe, in the order they were written


def _wrapper_script(root: Path) -> str:
    lines = ["set -u"]
    for name, target in OVERLAYS:
        upper = shlex.quote(str(root / name / "upper"))
        work = shlex.quote(str(root / name / "work"))
        quoted_target = shlex.quote(target)
        lines.append(
            f"mount -t overlay dkms-sandbox -o lowerdir={quoted_target},upperdir={upper},"
            f"workdir={work} {quoted_target} || "
            f"{{ echo 'dkms-sandbox: cannot mount an overlay on {target}' >&2; "
            f"exit {SETUP_FAILED}; }}"
        )
    lines.append('exec "$@"')
    return "\n".join(lines)


class Sandbox:
    def __init__(self, root: Path, dkms: Path) -> None:
        self.root = root
        self.dkms_path = dkms
        self.base_env = {
            # The dkms under test first on PATH, as upstream's suite finds `dkms` through PATH.
            "PATH": f"{dkms.parent}:{BASE_PATH}",
            "HOME": "/root",
            # dkms reads parallel_jobs from the environment; upstream's suite exports it so the
            # expected outputs can say `make -j1 ...`.
            "parallel_jobs": "1",
        }
        self._wrapper = _wrapper_script(root)
        for name, _ in OVERLAYS:
            (root / name / "upper").mkdir(parents=True, exist_ok=True)
            (root / name / "work").mkdir(parents=True, exist_ok=True)
        self._seed()
        self._version: str | None = None

    # -- layout ----------------------------------------------------------------------------------

    def upper_dir(self, path: str) -> Path:
        """Where the sandbox keeps its own version of `path` (absent if the sandbox never wrote
        it). Deleted host files show up here as overlayfs whiteouts, so prefer `read_text`,
        `exists` and friends, which look at the merged view."""
        for name, target in OVERLAYS:
            if path == target or path.startswith(target + "/"):
                return self.root / name / "upper" / path[len(target) :].lstrip("/")
        raise ValueError(f"{path} is not inside one of the sandbox overlays")

    def _opaque_dir(self, path: str) -> Path:
        upper = self.upper_dir(path)
        upper.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(path):
            try:
                os.setxattr(upper, "trusted.overlay.opaque", b"y")
            except OSError as err:
                raise SandboxError(f"cannot hide the host's {path}: {err}") from err
        return upper

    def _seed(self) -> None:
        self._opaque_dir("/var/lib/dkms")
        self._opaque_dir("/etc/dkms")
        # dkmshooks's own state, config and log start out empty too.
        self._opaque_dir("/var/lib/dkmshooks")
        self._opaque_dir("/etc/dkmshooks")
        self._opaque_dir("/var/log/dkmshooks")
        conf = self.upper_dir(TRY_SIGN_MODULES_CONF)
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("try_sign_modules=true\n")
        modules = Path("/lib/modules")
        if modules.is_dir():
            for kernel_dir in modules.iterdir():
                if (kernel_dir / "updates").is_dir():
                    self._opaque_dir(f"/lib/modules/{kernel_dir.name}/updates")

    # -- running ---------------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float = 600,
    ) -> Result:
        """Run argv inside the sandbox; stdout and stderr share one pipe."""
        full_env = {**self.base_env, **(env or {})}
        proc = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                self._wrapper,
                "dkms-sandbox",
                *argv,
            ],
            input=None if input is None else input.encode(),
            stdin=subprocess.DEVNULL if input is None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            timeout=timeout,
            check=False,
        )
        output = proc.stdout.decode("utf-8", errors="replace")
        if proc.returncode == SETUP_FAILED and output.startswith("dkms-sandbox:"):
            raise SandboxError(output.strip())
        return Result(tuple(argv), proc.returncode, output)

    def dkms(self, *args: str, env: Mapping[str, str] | None = None) -> Result:
        return self.run([str(self.dkms_path), *args], env=env)

    def sh(self, script: str) -> Result:
        return self.run(["sh", "-c", script])

    def check(self, argv: Sequence[str], input: str | None = None) -> str:
        """Run a helper command that must succeed; return its output."""
        result = self.run(argv, input=input)
        if result.rc != 0:
            raise AssertionError(
                f"sandbox helper {list(argv)} failed with {result.rc}:\n{result.output}"
            )
        return result.output

    def dkms_version(self) -> str:
        if self._version is None:
            self._version = self.check([str(self.dkms_path), "--version"]).strip()
        return self._version

    # -- files, seen through the sandbox's merged view -------------------------------------------

    def read_text(self, path: str) -> str:
        return self.check(["cat", "--", path])

    def write_text(self, path: str, text: str) -> None:
        self.check(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", path], input=text)

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path]).rc == 0

    def is_file(self, path: str) -> bool:
        return self.run(["test", "-f", path]).rc == 0

    def is_dir(self, path: str) -> bool:
        return self.run(["test", "-d", path]).rc == 0

    def is_symlink(self, path: str) -> bool:
        return self.run(["test", "-L", path]).rc == 0

    def readlink(self, path: str) -> str:
        return self.check(["readlink", "--", path]).rstrip("\n")

    def remove(self, path: str) -> None:
        self.check(["rm", "-rf", "--", path])

    def copy_in(self, source: Path, dest: str) -> None:
        """Copy a host file or directory to `dest` inside the sandbox (modes preserved)."""
        self.check(["cp", "-a", "--", str(source), dest])

    def add_source(self, fixture: Path, name: str | None = None) -> str:
        """Put a module source tree at /usr/src/<name> (default: the fixture's directory name),
        as a *-dkms package would; return its path in the sandbox."""
        dest = f"/usr/src/{name or fixture.name}"
        self.copy_in(fixture, dest)
        return dest

    def tree(self, path: str) -> list[str]:
        """Every entry under `path` (type, mode, size of non-directories, link target), sorted;
        empty if `path` does not exist. For "nothing changed on disk" assertions."""
        if not self.exists(path):
            return []
        listing = self.check(
            [
                "find",
                path,
                "(",
                "-type",
                "d",
                "-printf",
                "d %m %p\\n",
                ")",
                "-o",
                "-printf",
                "%y %m %s %p %l\\n",
            ]
        )
        return sorted(listing.splitlines())
