"""The sandbox of sandbox.py, widened for the rebuild engine: /boot and /var/log are private
overlays too, so a test can make a kernel "image ready" (modules.order, kernel/, /boot/vmlinuz-K),
give it an initramfs, and read the unified rebuild log without touching the host's files.

Helpers here speak in the engine's terms: make a kernel's image appear, write the dkmshooks
config, install a stand-in `update-initramfs`, read the rebuild log and the pending state.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .sandbox import OVERLAYS, SETUP_FAILED, Result, Sandbox, SandboxError

# What the engine needs beyond dkms: mounted after sandbox.py's own overlays, unless sandbox.py
# already has them.
ENGINE_OVERLAYS = tuple(
    (name, target)
    for name, target in (("boot", "/boot"), ("var-log", "/var/log"))
    if target not in {t for _, t in OVERLAYS}
)

REBUILD_LOG = "/var/log/dkmshooks/rebuild.log"
CONFIG_TOML = "/etc/dkmshooks/config.toml"
STATE_DIR = "/var/lib/dkmshooks"

UNSHARE = ("unshare", "--mount", "--propagation", "private", "sh", "-c")


def dkmshooks_executable(dkms: Path) -> Path | None:
    """`dkmshooks` installed next to the dkms under test, or next to this Python."""
    for candidate in (dkms.parent / "dkmshooks", Path(sys.executable).parent / "dkmshooks"):
        if candidate.is_file():
            return candidate
    found = shutil.which("dkmshooks")
    return Path(found) if found else None


def _mount_lines(root: Path) -> list[str]:
    lines = []
    for name, target in ENGINE_OVERLAYS:
        upper = shlex.quote(str(root / name / "upper"))
        work = shlex.quote(str(root / name / "work"))
        quoted_target = shlex.quote(target)
        lines.append(
            f"mount -t overlay dkms-sandbox -o lowerdir={quoted_target},upperdir={upper},"
            f"workdir={work} {quoted_target} || "
            f"{{ echo 'dkms-sandbox: cannot mount an overlay on {target}' >&2; "
            f"exit {SETUP_FAILED}; }}"
        )
    return lines


class EngineSandbox(Sandbox):
    def __init__(self, root: Path, dkms: Path, dkmshooks: Path) -> None:
        for name, _ in ENGINE_OVERLAYS:
            (root / name / "upper").mkdir(parents=True, exist_ok=True)
            (root / name / "work").mkdir(parents=True, exist_ok=True)
        super().__init__(root, dkms)
        self.dkmshooks_path = dkmshooks
        if ENGINE_OVERLAYS:
            head, _, tail = self._wrapper.rpartition("\n")
            assert tail == 'exec "$@"', "sandbox.py's wrapper changed shape"
            self._wrapper = "\n".join([head, *_mount_lines(root), tail])
        for hidden in ("/var/lib/dkmshooks", "/etc/dkmshooks", "/var/log/dkmshooks"):
            self._opaque_dir(hidden)
        # Stand-ins go here, a host directory first on PATH (see install_update_initramfs).
        self.bin_dir = root / "bin"
        self.bin_dir.mkdir(exist_ok=True)
        self.base_env["PATH"] = f"{self.bin_dir}:{self.base_env['PATH']}"

    def upper_dir(self, path: str) -> Path:
        for name, target in ENGINE_OVERLAYS:
            if path == target or path.startswith(target + "/"):
                return self.root / name / "upper" / path[len(target) :].lstrip("/")
        return super().upper_dir(path)

    # -- modules ---------------------------------------------------------------------------------

    def register(self, *sources: Path) -> None:
        """Put each tree at /usr/src/<m>-<v> and `dkms add` it, as a *-dkms package does."""
        for source in sources:
            self.add_source(source)
            module, _, version = source.name.rpartition("-")
            result = self.dkms("add", f"{module}/{version}")
            assert result.rc == 0, f"dkms add {module}/{version}:\n{result.output}"

    # -- running -----------------------------------------------------------------------------------

    def run_split(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> tuple[int, str, str]:
        """Run argv inside the sandbox with stdout and stderr kept apart: (rc, stdout, stderr)."""
        proc = subprocess.run(
            [*UNSHARE, self._wrapper, "dkms-sandbox", *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env={**self.base_env, **(env or {})},
            timeout=600,
            check=False,
        )
        stderr = proc.stderr.decode("utf-8", errors="replace")
        if proc.returncode == SETUP_FAILED and stderr.startswith("dkms-sandbox:"):
            raise SandboxError(stderr.strip())
        return proc.returncode, proc.stdout.decode("utf-8", errors="replace"), stderr

    def dkmshooks(self, *args: str, env: Mapping[str, str] | None = None) -> Result:
        return self.run([str(self.dkmshooks_path), *args], env=env)

    def trigger(
        self,
        *kernel_events: str,
        transaction: str | None = None,
        modules: Sequence[str] = (),
        initramfs_follows: bool = False,
        source: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        """`dkmshooks trigger --kernel K:EVENT... [--module M/V:EVENT...]`."""
        argv = ["trigger"]
        if source is not None:
            argv += ["--source", source]
        for item in kernel_events:
            argv += ["--kernel", item]
        for item in modules:
            argv += ["--module", item]
        if transaction is not None:
            argv += ["--transaction", transaction]
        if initramfs_follows:
            argv.append("--initramfs-follows")
        return self.dkmshooks(*argv, env=env)

    # -- kernels -----------------------------------------------------------------------------------

    def make_image_ready(self, kver: str) -> None:
        """What installing the kernel image package would put in place: the kernel's own module
        tree (modules.order, kernel/), its image, and the modules.dep depmod makes of them."""
        self.check(
            [
                "sh",
                "-c",
                'set -e; k="$1"; mkdir -p "/lib/modules/$k/kernel" /boot; '
                # Not a module, but it keeps kernel/ from being an empty directory, as the
                # kernel package's own modules would.
                'echo "stand-in for the kernel\'s own modules" > "/lib/modules/$k/kernel/README"; '
                ': > "/lib/modules/$k/modules.order"; : > "/lib/modules/$k/modules.builtin"; '
                'printf "fake kernel image %s\\n" "$k" > "/boot/vmlinuz-$k"; depmod -a "$k"',
                "sh",
                kver,
            ]
        )

    def hide_headers(self, kver: str) -> None:
        """Make K's headers package look not installed (yet): its /lib/modules/K/{build,source}
        links move aside. The host's headers stay where they are."""
        self.check(
            [
                "sh",
                "-c",
                'set -e; cd "/lib/modules/$1"; for l in build source; do '
                '[ ! -e "$l" ] && [ ! -L "$l" ] || mv "$l" ".$l-hidden"; done',
                "sh",
                kver,
            ]
        )

    def restore_headers(self, kver: str) -> None:
        """Undo hide_headers: the headers package got installed."""
        self.check(
            [
                "sh",
                "-c",
                'set -e; cd "/lib/modules/$1"; for l in build source; do '
                '[ ! -L ".$l-hidden" ] || mv ".$l-hidden" "$l"; done',
                "sh",
                kver,
            ]
        )

    def make_initrd(self, kver: str) -> None:
        """An initramfs for K, generated long before anything the test installs."""
        self.check(
            [
                "sh",
                "-c",
                'printf "old initramfs\\n" > "/boot/initrd.img-$1" && '
                'touch -d "2020-01-01 00:00:00" "/boot/initrd.img-$1"',
                "sh",
                kver,
            ]
        )

    def install_update_initramfs(self, record: Path) -> None:
        """A stand-in for initramfs-tools' `update-initramfs`, first on PATH, that appends its
        arguments, one line per run, to `record` (a host path). The host has no initramfs
        generator of its own to spare, and the real one would write the host's /boot."""
        script = self.bin_dir / "update-initramfs"
        script.write_text(
            "#!/bin/sh\n"
            "# Stand-in for initramfs-tools' update-initramfs: record the call, touch the image.\n"
            f'echo "$*" >> {shlex.quote(str(record))}\n'
            'while [ $# -gt 0 ]; do [ "$1" = -k ] && touch "/boot/initrd.img-$2"; shift; done\n'
            "exit 0\n"
        )
        script.chmod(0o755)

    # -- dkmshooks's own files -------------------------------------------------------------------

    def write_config(self, text: str) -> None:
        self.write_text(CONFIG_TOML, text)

    def rebuild_log(self) -> list[dict[str, Any]]:
        """Every record of the unified rebuild log, oldest first."""
        if not self.exists(REBUILD_LOG):
            return []
        return [json.loads(line) for line in self.read_text(REBUILD_LOG).splitlines() if line]

    def pending(self, kver: str) -> dict[str, Any] | None:
        path = f"{STATE_DIR}/pending/{kver}.json"
        if not self.exists(path):
            return None
        data = json.loads(self.read_text(path))
        assert isinstance(data, dict)
        return data

    def stat(self, path: str) -> tuple[int, int, int]:
        """(inode, mtime in ns, size) of a file inside the sandbox."""
        inode, mtime, size = self.check(["stat", "-c", "%i %.9Y %s", "--", path]).split()
        return int(inode), int(mtime.replace(".", "")), int(size)


def make_engine(sandbox: Sandbox, tmp_path: Path) -> EngineSandbox:
    """An EngineSandbox beside the `sandbox` fixture's (whose checks it relies on)."""
    from .conftest import _unavailable

    hooks = dkmshooks_executable(sandbox.dkms_path)
    if hooks is None:
        _unavailable("no dkmshooks executable next to dkms (pip install -e .)")
    assert hooks is not None
    return EngineSandbox(tmp_path / "engine", sandbox.dkms_path, hooks)
