"""Fixtures for the boot tier: qemu (TCG) booting the kernels that apt installed in the e2e tier's
Debian 12 chroot. Needs root, network (or a warm apt cache) and qemu-system-x86."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.chroot import Debian

from .guest import QEMU, QemuUnavailable, find_qemu
from .proof import debian_with_module


def _unavailable(reason: str) -> None:
    """Skip locally; in CI, where the environment is built for this tier, fail loudly instead."""
    if os.environ.get("CI"):
        pytest.fail(f"boot environment incomplete in CI: {reason}")
    pytest.skip(reason)


def _install_qemu() -> None:
    """As the e2e tier does for debootstrap: scripts/setup-test-env.sh installs it, but a machine
    set up before this tier existed may lack it."""
    if shutil.which(QEMU) or os.geteuid() != 0:
        return
    apt_get = ["apt-get", "-o", "DPkg::Lock::Timeout=900", "install", "-y"]
    subprocess.run(
        [*apt_get, "--no-install-recommends", "qemu-system-x86"],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture(scope="session")
def qemu() -> str:
    _install_qemu()
    try:
        return find_qemu()
    except QemuUnavailable as e:
        # The one reason to skip even in CI (issue 11): no qemu at all, so nothing can boot.
        pytest.skip(f"qemu cannot start here, so no kernel can be booted: {e}")


@pytest.fixture(scope="module")
def debian(qemu: str) -> Iterator[Debian]:
    if os.geteuid() != 0:
        _unavailable("the boot tier runs apt in a chroot: it needs root")
    for tool in ("unshare", "chroot", "tar", "debootstrap"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} is not installed (scripts/setup-test-env.sh installs it)")
    with debian_with_module(prefix="test_boot-") as system:
        yield system


@pytest.fixture
def consoles(tmp_path: Path) -> Path:
    """Where each boot's serial console is kept, for reading after a failure."""
    return tmp_path
