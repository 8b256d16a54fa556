"""Fixtures for the end-to-end tier's apt tests: real dpkg and apt in a Debian 12 chroot (see
chroot.py), with dkmshooks installed from this checkout by scripts/install-into-root.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .chroot import MODULE, REPO, Debian, ensure_base_tarball, unpack, work_dir


def _unavailable(reason: str) -> None:
    """Skip locally; in CI, where the environment is built for this tier, fail loudly instead."""
    if os.environ.get("CI"):
        pytest.fail(f"apt e2e environment incomplete in CI: {reason}")
    pytest.skip(reason)


def _ensure_debootstrap() -> None:
    if shutil.which("debootstrap"):
        return
    apt_get = ["apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y"]
    subprocess.run(
        [*apt_get, "--no-install-recommends", "debootstrap"],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        stdin=subprocess.DEVNULL,
        check=True,
    )


@pytest.fixture(scope="session")
def debian_base() -> Path:
    if os.geteuid() != 0:
        _unavailable("the e2e tier runs dpkg and apt in a chroot: it needs root")
    for tool in ("unshare", "chroot", "tar"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} is not installed")
    _ensure_debootstrap()
    started = time.monotonic()
    tarball = ensure_base_tarball()
    print(f"e2e: base system {tarball.name} ready in {time.monotonic() - started:.1f} s")
    return tarball


@pytest.fixture(scope="module")
def debian(debian_base: Path, request: pytest.FixtureRequest) -> Iterator[Debian]:
    with work_dir(prefix=request.module.__name__.rsplit(".", 1)[-1] + "-") as path:
        chroot = unpack(debian_base, path)
        subprocess.run([str(REPO / "scripts" / "install-into-root.sh"), str(path)], check=True)
        system = Debian(chroot)
        system.dkms_add(MODULE)
        # initramfs-tools copies only the modules it is told about (MODULES=list in the base).
        chroot.write("/etc/initramfs-tools/modules", f"{MODULE}\n")
        yield system
