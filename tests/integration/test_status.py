"""`dkms status` in every state, against dkms 3.4: added, built, installed, the three extras
(original modules archived, built modules missing, installed copy differing from the built one)
and broken modules. Expected texts from upstream run_test.sh's `replace`, `incomplete` and
`broken` sections, adapted to tests/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import DATA
from .expected import (
    ARCH,
    created,
    dest_dir,
    expect,
    signing_message,
    signing_prologue,
    status_lines,
)
from .sandbox import Sandbox
from .sources import write_source_tree

pytestmark = pytest.mark.integration

BROKEN = (
    "\nError! dkms_test/1.0 is broken!\n"
    "Missing the source directory or the symbolic link pointing to it.\n"
    "Manual intervention is required!\n"
)
BROKEN_STATUS = (
    "dkms_test/1.0: broken\n"
    "\n"
    "Error! dkms_test/1.0: Missing the module source directory or the symbolic link pointing "
    "to it.\n"
    "Manual intervention is required!\n"
)


def build_output(
    kver: str, module: str = "dkms_test", version: str = "1.0", ko: str | None = None
) -> str:
    return (
        f"{signing_prologue(kver)}\nBuilding module(s)... done.\n"
        f"{signing_message(module, version, ko)}\n"
    )


def install_output(kver: str, ko: str = "dkms_test") -> str:
    return f"Installing {dest_dir(kver)}/{ko}.ko\nRunning depmod... done.\n"


def test_status_of_an_empty_tree(sandbox: Sandbox) -> None:
    expect(sandbox.dkms("status"), 0, "")
    expect(sandbox.dkms("status", "-k", "6.1.0-0-amd64"), 0, "")
    expect(sandbox.dkms("status", "-m", "dkms_test"), 0, "")


def test_added_built_installed_and_filters(sandbox: Sandbox, kernels: list[str]) -> None:
    k1, k2 = kernels[:2]
    expect(sandbox.dkms("add", str(DATA / "dkms_test-1.0")), 0, created("dkms_test"))
    expect(
        sandbox.dkms("add", str(DATA / "dkms_noautoinstall_test-1.0")),
        0,
        created("dkms_noautoinstall_test"),
    )
    noauto = "dkms_noautoinstall_test/1.0: added\n"
    expect(sandbox.dkms("status"), 0, noauto + "dkms_test/1.0: added\n")

    expect(
        sandbox.dkms("install", "-k", k1, "dkms_test/1.0"), 0, build_output(k1) + install_output(k1)
    )
    expect(sandbox.dkms("build", "-k", k2, "dkms_test/1.0"), 0, build_output(k2))
    installed_k1 = f"dkms_test/1.0, {k1}, {ARCH}: installed\n"
    built_k2 = f"dkms_test/1.0, {k2}, {ARCH}: built\n"
    expect(sandbox.dkms("status"), 0, noauto + installed_k1 + built_k2)

    # Filters: by module, module/version, -m/-v, kernel. A module not built for the kernel that
    # -k names still shows as added.
    expect(sandbox.dkms("status", "dkms_test"), 0, installed_k1 + built_k2)
    expect(sandbox.dkms("status", "dkms_test/1.0"), 0, installed_k1 + built_k2)
    expect(sandbox.dkms("status", "-m", "dkms_test", "-v", "1.0"), 0, installed_k1 + built_k2)
    expect(sandbox.dkms("status", "-k", k1), 0, noauto + installed_k1)
    expect(sandbox.dkms("status", "-k", k2), 0, noauto + built_k2)
    expect(sandbox.dkms("status", "dkms_test", "-k", f"{k1}/{ARCH}"), 0, installed_k1)
    expect(sandbox.dkms("status", "-k", "6.1.0-0-amd64"), 0, noauto + "dkms_test/1.0: added\n")
    expect(sandbox.dkms("status", "dkms_nosuch_test"), 0, "")


def test_original_modules_and_differences(sandbox: Sandbox, kver: str, tmp_path: Path) -> None:
    """run_test.sh `replace`: a second package ships dkms_test.ko too. Installing it archives the
    dkms_test.ko already in the kernel tree, `(Original modules exist)`; dkms_test's own
    installed copy is now someone else's, `(Differences between built and installed modules)`;
    removing the replacement restores the original."""
    ko = f"{dest_dir(kver)}/dkms_test.ko"
    replace = write_source_tree(
        tmp_path / "dkms_replace_test-2.0",
        'PACKAGE_NAME="dkms_replace_test"\n'
        'PACKAGE_VERSION="2.0"\n'
        'BUILT_MODULE_NAME[0]="dkms_test"\n'
        'DEST_MODULE_LOCATION[0]="/kernel/extra"\n'
        'AUTOINSTALL="yes"\n',
        ["dkms_test"],
        version="2.0",
        description="A dkms test module that replaces dkms_test",
    )
    expect(sandbox.dkms("add", str(DATA / "dkms_test-1.0")), 0, created("dkms_test"))
    expect(
        sandbox.dkms("install", "-k", kver, "dkms_test/1.0"),
        0,
        build_output(kver) + install_output(kver),
    )
    expect(sandbox.dkms("add", str(replace)), 0, created("dkms_replace_test", "2.0"))
    expect(
        sandbox.dkms("install", "-k", kver, "dkms_replace_test/2.0"),
        0,
        build_output(kver, "dkms_replace_test", "2.0", "dkms_test")
        + f"Found pre-existing {ko}, archiving for uninstallation\n"
        + install_output(kver),
    )
    assert status_lines(sandbox, "dkms_replace_test") == (
        f"dkms_replace_test/2.0, {kver}, {ARCH}: installed (Original modules exist)\n"
    )
    assert status_lines(sandbox, "dkms_test") == (
        f"dkms_test/1.0, {kver}, {ARCH}: installed"
        " (Differences between built and installed modules)\n"
    )
    archive = f"/var/lib/dkms/dkms_replace_test/original_module/{kver}/{ARCH}"
    assert sandbox.read_text(f"{archive}/dkms_test.ko.origin") == f"{ko}\n"
    assert sandbox.check(["modinfo", "-F", "version", f"{archive}/dkms_test.ko"]).strip() == "1.0"
    assert sandbox.check(["modinfo", "-F", "version", ko]).strip() == "2.0"

    expect(
        sandbox.dkms("remove", "-k", kver, "-m", "dkms_replace_test", "-v", "2.0"),
        0,
        f"Module dkms_replace_test/2.0 for kernel {kver} ({ARCH}):\n"
        "Before uninstall, this module version was ACTIVE on this kernel.\n"
        f"Deleting {ko}\n"
        f"Restoring archived original module {ko}\n"
        "Running depmod... done.\n"
        "\n"
        "Deleting module dkms_replace_test/2.0 completely from the DKMS tree.\n",
    )
    assert status_lines(sandbox, "dkms_replace_test") == ""
    assert status_lines(sandbox, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: installed\n"
    assert sandbox.check(["modinfo", "-F", "version", ko]).strip() == "1.0"
    assert not sandbox.exists("/var/lib/dkms/dkms_replace_test")

    expect(
        sandbox.dkms("remove", "-k", kver, "-m", "dkms_test", "-v", "1.0"),
        0,
        f"Module dkms_test/1.0 for kernel {kver} ({ARCH}):\n"
        "Before uninstall, this module version was ACTIVE on this kernel.\n"
        f"Deleting {ko}\n"
        "Running depmod... done.\n"
        "\n"
        "Deleting module dkms_test/1.0 completely from the DKMS tree.\n",
    )
    assert not sandbox.exists(ko)


def test_original_module_shipped_with_the_kernel(
    sandbox: Sandbox, kver: str, tmp_path: Path
) -> None:
    """An older dkms_test.ko already in the kernel's own tree (as when a DKMS package updates an
    in-tree driver): install archives it with its origin, status says so, uninstall puts it
    back where it was."""
    in_tree = f"/lib/modules/{kver}/kernel/drivers/misc/dkms_test.ko"
    old = write_source_tree(
        tmp_path / "in-tree-dkms_test", None, ["dkms_test"], version="0.9", description="in-tree"
    )
    sandbox.check(["make", "-s", "-C", f"/lib/modules/{kver}/build", f"M={old}", "modules"])
    sandbox.check(["mkdir", "-p", in_tree.rsplit("/", 1)[0]])
    sandbox.copy_in(old / "dkms_test.ko", in_tree)

    expect(sandbox.dkms("add", str(DATA / "dkms_test-1.0")), 0, created("dkms_test"))
    expect(
        sandbox.dkms("install", "-k", kver, "dkms_test/1.0"),
        0,
        build_output(kver)
        + f"Found pre-existing {in_tree}, archiving for uninstallation\n"
        + install_output(kver),
    )
    assert status_lines(sandbox, "dkms_test") == (
        f"dkms_test/1.0, {kver}, {ARCH}: installed (Original modules exist)\n"
    )
    assert not sandbox.exists(in_tree)
    archive = f"/var/lib/dkms/dkms_test/original_module/{kver}/{ARCH}"
    assert sandbox.read_text(f"{archive}/dkms_test.ko.origin") == f"{in_tree}\n"

    expect(
        sandbox.dkms("uninstall", "-k", kver, "dkms_test/1.0"),
        0,
        f"Module dkms_test/1.0 for kernel {kver} ({ARCH}):\n"
        "Before uninstall, this module version was ACTIVE on this kernel.\n"
        f"Deleting {dest_dir(kver)}/dkms_test.ko\n"
        f"Restoring archived original module {in_tree}\n"
        "Running depmod... done.\n",
    )
    assert sandbox.check(["modinfo", "-F", "version", in_tree]).strip() == "0.9"
    assert not sandbox.exists("/var/lib/dkms/dkms_test/original_module")
    assert status_lines(sandbox, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: built\n"


def test_built_modules_missing(sandbox: Sandbox, kver: str) -> None:
    """run_test.sh `incomplete`: the built .ko (and hence the installed one) deleted behind
    dkms's back."""
    ko = f"{dest_dir(kver)}/dkms_test.ko"
    module_dir = f"/var/lib/dkms/dkms_test/1.0/{kver}/{ARCH}/module"
    expect(sandbox.dkms("add", str(DATA / "dkms_test-1.0")), 0, created("dkms_test"))
    expect(sandbox.dkms("build", "-k", kver, "-m", "dkms_test", "-v", "1.0"), 0, build_output(kver))
    expect(
        sandbox.dkms("install", "-k", kver, "-m", "dkms_test", "-v", "1.0"), 0, install_output(kver)
    )
    assert status_lines(sandbox, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: installed\n"

    sandbox.check(["rm", f"{module_dir}/dkms_test.ko", ko])
    missing = " (Built modules are missing in the kernel modules folder)"
    assert (
        status_lines(sandbox, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: installed{missing}\n"
    )

    expect(
        sandbox.dkms("uninstall", "-k", kver, "-m", "dkms_test", "-v", "1.0"),
        0,
        f"Module dkms_test/1.0 for kernel {kver} ({ARCH}):\n"
        "Before uninstall, this module version was ACTIVE on this kernel.\n"
        f"Module dkms_test.ko was not found within /lib/modules/{kver}/\n"
        "Running depmod... done.\n",
    )
    assert status_lines(sandbox, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: built{missing}\n"

    expect(
        sandbox.dkms("install", "-k", kver, "-m", "dkms_test", "-v", "1.0"),
        6,
        f"\nError! Missing module dkms_test in {module_dir}\n",
    )
    assert status_lines(sandbox, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: built{missing}\n"
    assert not sandbox.exists(ko)

    expect(
        sandbox.dkms("remove", "--all", "-m", "dkms_test", "-v", "1.0"),
        0,
        f"Module dkms_test/1.0 is not installed for kernel {kver} ({ARCH}). Skipping...\n"
        "\n"
        "Deleting module dkms_test/1.0 completely from the DKMS tree.\n",
    )
    assert status_lines(sandbox, "dkms_test") == ""


def test_broken(sandbox: Sandbox) -> None:
    """run_test.sh `broken`: the `source` symlink removed, or the source tree it points to.
    status reports it (and still exits 0); add repairs it; every other action refuses with 4
    and leaves the tree alone."""
    expect(sandbox.dkms("add", str(DATA / "dkms_test-1.0")), 0, created("dkms_test"))
    sandbox.remove("/var/lib/dkms/dkms_test/1.0/source")
    expect(sandbox.dkms("status", "dkms_test/1.0"), 0, BROKEN_STATUS)

    expect(sandbox.dkms("add", "dkms_test/1.0"), 0, created("dkms_test"))
    sandbox.remove("/var/lib/dkms/dkms_test/1.0/source")
    tree = sandbox.tree("/var/lib/dkms")
    for action in ("build", "install", "unbuild", "uninstall"):
        expect(sandbox.dkms(action, "dkms_test/1.0"), 4, BROKEN)
    assert sandbox.tree("/var/lib/dkms") == tree

    expect(
        sandbox.dkms("add", str(DATA / "dkms_noautoinstall_test-1.0")),
        0,
        created("dkms_noautoinstall_test"),
    )
    expect(sandbox.dkms("status"), 0, "dkms_noautoinstall_test/1.0: added\n" + BROKEN_STATUS)
    tree = sandbox.tree("/var/lib/dkms")
    expect(sandbox.dkms("remove", "dkms_test/1.0"), 4, BROKEN)
    assert sandbox.tree("/var/lib/dkms") == tree

    # A dangling symlink: the source tree itself is gone.
    expect(sandbox.dkms("add", "dkms_test/1.0"), 0, created("dkms_test"))
    sandbox.remove("/usr/src/dkms_test-1.0")
    expect(sandbox.dkms("status"), 0, "dkms_noautoinstall_test/1.0: added\n" + BROKEN_STATUS)
    expect(sandbox.dkms("build", "dkms_test/1.0"), 4, BROKEN)
