"""Privilege: what needs root says so before it starts (dkms's check_root and
check_rw_dkms_tree), instead of failing half way; a read-only tree is named as such."""

from __future__ import annotations

from pathlib import Path

import pytest
from integration.sandbox import Sandbox

from .lab import changed_outside, upper_state

pytestmark = pytest.mark.reliability

DATA = Path(__file__).resolve().parents[1] / "data"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
ROOT = "Error! You must be root to use this command."
NO_WRITE = "Error! No write access to DKMS tree at /var/lib/dkms"


@pytest.fixture
def added(sandbox: Sandbox) -> Sandbox:
    sandbox.add_source(DATA / "dkms_test-1.0")
    assert sandbox.dkms("add", "dkms_test/1.0").rc == 0
    return sandbox


def test_actions_that_need_root_say_so_and_change_nothing(added: Sandbox, kver: str) -> None:
    dkms = str(added.dkms_path)
    cases = [
        (["install", "dkms_test/1.0", "-k", kver], ROOT),
        (["uninstall", "dkms_test/1.0", "-k", kver], ROOT),
        (["autoinstall", "-k", kver], ROOT),
        (["kernel_postinst", "-k", kver], ROOT),
        (["kernel_prerm", "-k", kver], ROOT),
        (["match", f"--templatekernel={kver}", "-k", "6.1.0-0-amd64"], ROOT),
        (["build", "dkms_test/1.0", "-k", kver], NO_WRITE),
        (["unbuild", "dkms_test/1.0", "-k", kver], NO_WRITE),
        (["remove", "dkms_test/1.0", "--all"], NO_WRITE),
        (["add", "dkms_test/1.0"], NO_WRITE),
    ]
    before = upper_state(added)
    for args, message in cases:
        result = added.run([*NOBODY, dkms, *args])
        assert result.rc == 1, (args, result.output)
        assert result.output.strip() == message, (args, result.output)
    hook = added.run([*NOBODY, "dkmshooks", "trigger", "--kernel", f"{kver}:image-added"])
    assert hook.rc == 1, hook.output
    assert hook.output.startswith(f"\n{ROOT}\n"), hook.output
    assert "Traceback" not in hook.output
    assert changed_outside(before, upper_state(added), []) == []
    status = added.run([*NOBODY, dkms, "status"])  # reading needs no privilege
    assert (status.rc, status.output) == (0, "dkms_test/1.0: added\n")


def test_a_read_only_tree_is_named_before_anything_starts(added: Sandbox, kver: str) -> None:
    result = added.run(
        [
            "bash",
            "-c",
            "mount --bind /var/lib/dkms /var/lib/dkms && "
            "mount -o remount,ro,bind /var/lib/dkms && "
            f"dkms build dkms_test/1.0 -k {kver}; echo rc=$?",
        ]
    )
    assert result.output == f"\n{NO_WRITE}\nrc=1\n", result.output
