"""Fixtures for the reliability tier (docs/guarantees.md): the integration tier's sandbox, and a
crash lab (lab.py) prepared once per session; every test starts by restoring a saved state."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.conftest import KERNELS, dkms_executable
from integration.engine_sandbox import dkmshooks_executable
from integration.sandbox import Sandbox

from .lab import Lab, prepare


def _require_sandbox() -> tuple[Path, Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root: mount namespaces, overlayfs and dkms itself")
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) from util-linux")
    if not KERNELS:
        pytest.skip("needs Debian kernel headers (linux-headers-6.1.0-*-amd64)")
    dkms = dkms_executable()
    if dkms is None:
        pytest.skip("no dkms executable (pip install -e .)")
    hooks = dkmshooks_executable(dkms)
    if hooks is None:
        pytest.skip("no dkmshooks executable (pip install -e .)")
    return dkms, hooks


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    dkms, _ = _require_sandbox()
    return Sandbox(tmp_path / "sandbox", dkms)


@pytest.fixture
def dkmshooks() -> Path:
    return _require_sandbox()[1]


@pytest.fixture
def kver() -> str:
    _require_sandbox()
    return KERNELS[-1]


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    dkms, hooks = _require_sandbox()
    root = tmp_path_factory.mktemp("lab")
    yield prepare(Sandbox(root / "sandbox", dkms), KERNELS[-1], hooks, root / "src")
