"""The sandbox the integration tier relies on: writes stay inside it, and persist across runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .sandbox import TRY_SIGN_MODULES_CONF, Sandbox

pytestmark = pytest.mark.integration


def test_writes_stay_in_the_sandbox_and_persist(sandbox: Sandbox, tmp_path: Path) -> None:
    marker = f"dkms-sandbox-{os.getpid()}-{tmp_path.name}"
    paths = [f"/var/lib/dkms/{marker}", f"/etc/dkms/{marker}", f"/usr/src/{marker}"]
    modules = Path("/lib/modules")
    kernels = sorted(p.name for p in modules.iterdir()) if modules.is_dir() else []
    if kernels:
        paths.append(f"/lib/modules/{kernels[0]}/{marker}")
    for path in paths:
        sandbox.write_text(path, "inside\n")
    for path in paths:
        assert not os.path.lexists(path), f"{path} leaked out of the sandbox"
        assert sandbox.read_text(path) == "inside\n", "state must persist from one run to the next"
        assert sandbox.upper_dir(path).read_text() == "inside\n"


def test_starts_as_a_fresh_dkms_installation(sandbox: Sandbox) -> None:
    assert sandbox.check(["ls", "-A", "/var/lib/dkms"]) == ""
    assert sandbox.check(["ls", "-A", "/etc/dkms"]) == "framework.conf.d\n"
    assert sandbox.read_text(TRY_SIGN_MODULES_CONF) == "try_sign_modules=true\n"


def test_output_is_one_merged_stream(sandbox: Sandbox) -> None:
    result = sandbox.sh("echo 1; echo 2 >&2; echo 3; echo 4 >&2; exit 7")
    assert (result.rc, result.output) == (7, "1\n2\n3\n4\n")


def test_environment(sandbox: Sandbox) -> None:
    env = dict(line.split("=", 1) for line in sandbox.check(["env"]).splitlines() if "=" in line)
    assert env["parallel_jobs"] == "1"
    assert env["PATH"].split(":")[0] == str(sandbox.dkms_path.parent)
