"""Fixtures for the integration tier: real Debian kernel headers, real toolchain, a private
mount-namespace sandbox per test (see sandbox.py)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from .sandbox import Sandbox

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Set to run this tier against another dkms, e.g. upstream's for a side-by-side check.
DKMS_OVERRIDE_VAR = "DKMSHOOKS_TEST_DKMS"


def _in_ci() -> bool:
    return bool(os.environ.get("CI"))


def _unavailable(reason: str) -> None:
    """Skip locally; in CI, where the environment is built for this tier, fail loudly instead."""
    if _in_ci():
        pytest.fail(f"integration environment incomplete in CI: {reason}")
    pytest.skip(reason)


def _version_key(kver: str) -> list[tuple[int, object]]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", kver)]


def find_kernels() -> list[str]:
    """Kernel releases whose Debian headers are installed and reachable as /lib/modules/K/build."""
    found = []
    for headers in Path("/usr/src").glob("linux-headers-6.1.0-*-amd64"):
        kver = headers.name[len("linux-headers-") :]
        if (headers / "Makefile").is_file() and Path(
            f"/lib/modules/{kver}/build/Makefile"
        ).is_file():
            found.append(kver)
    return sorted(found, key=_version_key)


KERNELS = find_kernels()


def dkms_executable() -> Path | None:
    override = os.environ.get(DKMS_OVERRIDE_VAR)
    if override:
        return Path(override)
    beside_python = Path(sys.executable).parent / "dkms"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("dkms")
    return Path(found) if found else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kver" in metafunc.fixturenames:
        params: list[str | None] = [*KERNELS] or [None]
        metafunc.parametrize(
            "kver", params, ids=[p or "no-kernel-headers" for p in params], indirect=True
        )


@pytest.fixture
def kernels() -> list[str]:
    if len(KERNELS) < 2:
        _unavailable(
            "needs two Debian kernel header packages (linux-headers-6.1.0-*-amd64), found "
            f"{KERNELS or 'none'}"
        )
    return KERNELS


@pytest.fixture
def kver(request: pytest.FixtureRequest, kernels: list[str]) -> str:
    """Each kernel whose headers are installed, one test instance per kernel."""
    assert request.param in kernels
    return str(request.param)


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    if os.geteuid() != 0:
        _unavailable("needs root: mount namespaces, overlayfs and dkms itself")
    if shutil.which("unshare") is None:
        _unavailable("needs unshare(1) from util-linux")
    dkms = dkms_executable()
    if dkms is None:
        _unavailable(f"no dkms executable (pip install -e . or set {DKMS_OVERRIDE_VAR})")
    assert dkms is not None
    return Sandbox(tmp_path / "sandbox", dkms)
