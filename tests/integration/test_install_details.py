"""Install details on real headers: compression matching the kernel, the version sanity check,
and the rollback when depmod fails."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from .conftest import DATA
from .sandbox import Sandbox

pytestmark = pytest.mark.integration


def add_test_module(sandbox: Sandbox) -> None:
    sandbox.add_source(DATA / "dkms_test-1.0")
    assert sandbox.dkms("add", "dkms_test/1.0").rc == 0


@pytest.mark.parametrize(
    ("suffix", "check"),
    [
        (".xz", ["xz", "--robot", "--list", "-vv"]),
        (".zst", ["zstd", "-t"]),
        (".gz", ["gzip", "-t"]),
    ],
)
def test_module_compressed_like_the_kernel(
    sandbox: Sandbox, kernels: list[str], suffix: str, check: list[str]
) -> None:
    kver = kernels[-1]
    sandbox.write_text(f"/lib/modules/{kver}/kernel/drivers/other{'.ko'}{suffix}", "x")
    add_test_module(sandbox)
    result = sandbox.dkms("install", "dkms_test/1.0", "-k", kver)
    assert result.rc == 0, result.output
    installed = f"/lib/modules/{kver}/updates/dkms/dkms_test.ko{suffix}"
    assert f"Installing {installed}\n" in result.output
    assert sandbox.is_file(installed)
    assert sandbox.is_file(f"/var/lib/dkms/dkms_test/1.0/{kver}/x86_64/module/dkms_test.ko{suffix}")
    tested = sandbox.check([*check, installed])
    if suffix == ".xz":
        # the kernel cannot load CRC64 xz modules (dkms-project/dkms#386)
        assert re.search(r"\bCRC32\b", tested), tested
    # Debian's kmod reads xz and zst but is built without zlib: look inside the plain module
    plain = "/var/lib/dkms_test-plain.ko"
    sandbox.check(["sh", "-c", f"{check[0]} -dc {installed} > {plain}"])
    assert sandbox.check(["modinfo", "-F", "version", plain]).strip() == "1.0"
    assert sandbox.check(["modinfo", "-F", "vermagic", plain]).startswith(f"{kver} ")


def test_version_sanity_refuses_older_and_force_archives(
    sandbox: Sandbox, kernels: list[str], tmp_path: Path
) -> None:
    kver = kernels[-1]
    newer = tmp_path / "dkms_test-2.0"
    shutil.copytree(DATA / "dkms_test-1.0", newer)
    for name in ("dkms.conf", "dkms_test.c"):
        path = newer / name
        path.write_text(path.read_text().replace("1.0", "2.0"))
    sandbox.add_source(newer)
    assert sandbox.dkms("build", "dkms_test/2.0", "-k", kver).rc == 0
    in_tree = f"/lib/modules/{kver}/kernel/drivers/misc/dkms_test.ko"
    sandbox.check(["mkdir", "-p", f"/lib/modules/{kver}/kernel/drivers/misc"])
    sandbox.check(["cp", f"/var/lib/dkms/dkms_test/2.0/{kver}/x86_64/module/dkms_test.ko", in_tree])
    assert sandbox.dkms("remove", "dkms_test/2.0", "--all").rc == 0
    add_test_module(sandbox)
    before = sandbox.tree(f"/lib/modules/{kver}")
    result = sandbox.dkms("install", "dkms_test/1.0", "-k", kver)
    assert result.rc == 6, result.output
    assert result.output.endswith(
        "\nError! Module version 1.0 for dkms_test.ko\n"
        f"is not newer than what is already found in kernel {kver} (2.0).\n"
        "You may override by specifying --force.\n"
        "\nError! Installation aborted.\n"
    ), result.output
    assert sandbox.tree(f"/lib/modules/{kver}") == before
    forced = sandbox.dkms("install", "dkms_test/1.0", "-k", kver, "--force")
    assert forced.rc == 0, forced.output
    assert f"Found pre-existing {in_tree}, archiving for uninstallation\n" in forced.output
    assert not sandbox.exists(in_tree)
    status = sandbox.dkms("status", "dkms_test").output
    assert status == f"dkms_test/1.0, {kver}, x86_64: installed (Original modules exist)\n"
    removed = sandbox.dkms("uninstall", "dkms_test/1.0", "-k", kver)
    assert f"Restoring archived original module {in_tree}\n" in removed.output
    assert sandbox.check(["modinfo", "-F", "version", in_tree]).strip() == "2.0"


def test_depmod_failure_rolls_back(sandbox: Sandbox, kernels: list[str]) -> None:
    kver = kernels[-1]
    # a kernel whose image is installed, so dkms really runs depmod
    sandbox.check(["depmod", "-a", kver])
    # the stand-in lives inside the sandbox's overlay (/var/lib), never on the host
    sandbox.write_text("/var/lib/fakebin/depmod", "#!/bin/sh\necho depmod broke >&2\nexit 1\n")
    sandbox.check(["chmod", "+x", "/var/lib/fakebin/depmod"])
    add_test_module(sandbox)
    path = "/var/lib/fakebin:" + sandbox.base_env["PATH"]
    result = sandbox.dkms("install", "dkms_test/1.0", "-k", kver, env={"PATH": path})
    assert result.rc == 6, result.output
    assert "Running depmod...(bad exit status: 1)" in result.output
    assert result.output.endswith(
        "\nError! Problems with depmod detected. Automatically uninstalling this module.\n"
        "Install Failed (depmod problems). Module rolled back to built state.\n"
    ), result.output
    assert not sandbox.exists(f"/lib/modules/{kver}/updates/dkms/dkms_test.ko")
    assert sandbox.dkms("status", "dkms_test").output == (f"dkms_test/1.0, {kver}, x86_64: built\n")
