"""Malformed and borderline dkms.conf files, against dkms 3.4: upstream run_test.sh's `malformed`
section. Each dkms.conf sits next to the exact messages (and their order) dkms prints for it.

Where dkms refuses a file before copying it, nothing may change on disk; where it copies the
source tree to /usr/src first (the duplicate-module checks run on the copy), only that copy may
appear, and the DKMS tree stays untouched.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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

CONF_TEST_ADDED = created("dkms_conf_test")
CONF_TEST_REMOVED = "Deleting module dkms_conf_test/1.0 completely from the DKMS tree.\n"


def bad_conf(path: str) -> str:
    return f"\nError! Bad conf file.\nFile: {path} does not represent a valid dkms.conf file.\n"


class Snapshot:
    """What dkms may not touch when it refuses a dkms.conf: the DKMS tree, and which source
    trees exist in /usr/src."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.dkms_tree = sandbox.tree("/var/lib/dkms")
        self.usr_src = self._usr_src()

    def _usr_src(self) -> list[str]:
        return sorted(self.sandbox.check(["ls", "-A", "/usr/src"]).split())

    def assert_unchanged(self, *, new_sources: tuple[str, ...] = ()) -> None:
        assert self.sandbox.tree("/var/lib/dkms") == self.dkms_tree
        assert self._usr_src() == sorted([*self.usr_src, *new_sources])


def test_source_tree_without_dkms_conf(sandbox: Sandbox, tmp_path: Path) -> None:
    """A directory without dkms.conf is not a source tree: the argument is taken as
    `module/version`, which for an absolute path means an empty module name."""
    tree = write_source_tree(tmp_path / "dkms_conf_test_no_conf", None, ["dkms_conf_test"])
    before = Snapshot(sandbox)
    expect(
        sandbox.dkms("add", str(tree)),
        1,
        "\nError! Arguments <module> and <module-version> are not specified.\n"
        "Usage: add <module>/<module-version> or\n"
        "       add -m <module>/<module-version> or\n"
        "       add -m <module> -v <module-version>\n",
    )
    before.assert_unchanged()


def test_empty_dkms_conf(sandbox: Sandbox, tmp_path: Path) -> None:
    tree = write_source_tree(tmp_path / "dkms_conf_test_empty", "", makefile=False)
    before = Snapshot(sandbox)
    expect(
        sandbox.dkms("add", str(tree)),
        8,
        "dkms.conf: Error! No 'PACKAGE_NAME' directive specified.\n"
        "dkms.conf: Error! No 'PACKAGE_VERSION' directive specified.\n"
        + bad_conf(f"{tree}/dkms.conf"),
    )
    before.assert_unchanged()


def test_invalid_values_in_order(sandbox: Sandbox, tmp_path: Path) -> None:
    """Every record is checked, in order, and AUTOINSTALL last; all errors are printed before
    dkms gives up."""
    tree = write_source_tree(
        tmp_path / "dkms_conf_test_invalid",
        'PACKAGE_NAME="dkms_conf_test"\n'
        'PACKAGE_VERSION="1.0"\n'
        'DEST_MODULE_NAME[0]="dkms_conf_test.ko"\n'
        'DEST_MODULE_LOCATION[0]="/usr/lib/modules"\n'
        'BUILT_MODULE_NAME[1]="dkms_conf_test.o"\n'
        'DEST_MODULE_NAME[1]="dkms_conf_test_1"\n'
        'AUTOINSTALL="maybe"\n',
        makefile=False,
    )
    before = Snapshot(sandbox)
    expect(
        sandbox.dkms("add", str(tree)),
        8,
        "dkms.conf: Error! No 'BUILT_MODULE_NAME' directive specified for record #0.\n"
        "dkms.conf: Error! 'DEST_MODULE_NAME' directive ends in '.o' or '.ko' in record #0.\n"
        "dkms.conf: Error! Directive 'DEST_MODULE_LOCATION' does not begin with\n"
        "'/kernel', '/updates', or '/extra' in record #0.\n"
        "dkms.conf: Error! 'BUILT_MODULE_NAME' directive ends in '.o' or '.ko' in record #1.\n"
        "dkms.conf: Error! No 'DEST_MODULE_LOCATION' directive specified for record #1.\n"
        "dkms.conf: Error! Unsupported AUTOINSTALL value 'maybe'\n" + bad_conf(f"{tree}/dkms.conf"),
    )
    before.assert_unchanged()


def test_sparse_arrays(sandbox: Sandbox, tmp_path: Path) -> None:
    """The number of modules is one more than the largest index used; the gaps are records with
    nothing set."""
    tree = write_source_tree(
        tmp_path / "dkms_conf_test_sparse_arrays",
        'PACKAGE_NAME="dkms_conf_test"\n'
        'PACKAGE_VERSION="1.0"\n'
        'BUILT_MODULE_NAME[1]="dkms_conf_test_a"\n'
        'DEST_MODULE_LOCATION[1]="/kernel/extra"\n'
        'BUILT_MODULE_NAME[3]="dkms_conf_test_b"\n'
        'DEST_MODULE_LOCATION[3]="/updates"\n'
        'DEST_MODULE_LOCATION[4]="/opt"\n',
        makefile=False,
    )
    before = Snapshot(sandbox)
    expect(
        sandbox.dkms("add", str(tree)),
        8,
        "dkms.conf: Error! No 'BUILT_MODULE_NAME' directive specified for record #0.\n"
        "dkms.conf: Error! No 'DEST_MODULE_LOCATION' directive specified for record #0.\n"
        "dkms.conf: Error! No 'BUILT_MODULE_NAME' directive specified for record #2.\n"
        "dkms.conf: Error! No 'DEST_MODULE_LOCATION' directive specified for record #2.\n"
        "dkms.conf: Error! No 'BUILT_MODULE_NAME' directive specified for record #4.\n"
        "dkms.conf: Error! Directive 'DEST_MODULE_LOCATION' does not begin with\n"
        "'/kernel', '/updates', or '/extra' in record #4.\n" + bad_conf(f"{tree}/dkms.conf"),
    )
    before.assert_unchanged()


def test_zero_modules(sandbox: Sandbox, kernels: list[str], tmp_path: Path) -> None:
    """A package that builds no kernel module at all: a warning at every strict read, and a
    build and install that succeed without installing anything."""
    kver = kernels[0]
    warning = "dkms.conf: Warning! Zero modules specified.\n"
    tree = write_source_tree(
        tmp_path / "dkms_conf_test_zero_modules",
        'PACKAGE_NAME="dkms_conf_test"\nPACKAGE_VERSION="1.0"\n',
    )
    expect(sandbox.dkms("add", str(tree)), 0, warning + CONF_TEST_ADDED)
    assert status_lines(sandbox, "dkms_conf_test") == "dkms_conf_test/1.0: added\n"
    expect(
        sandbox.dkms("remove", "--all", "-m", "dkms_conf_test", "-v", "1.0"), 0, CONF_TEST_REMOVED
    )
    assert status_lines(sandbox, "dkms_conf_test") == ""

    expect(
        sandbox.dkms("install", "-k", kver, "-m", "dkms_conf_test", "-v", "1.0"),
        0,
        warning
        + CONF_TEST_ADDED
        + "\n"
        + warning
        + f"{signing_prologue(kver)}\n"
        + "Building module(s)... done.\n"
        + warning
        + "Running depmod... done.\n",
    )
    assert (
        status_lines(sandbox, "dkms_conf_test")
        == f"dkms_conf_test/1.0, {kver}, {ARCH}: installed\n"
    )
    expect(
        sandbox.dkms("remove", "--all", "-m", "dkms_conf_test", "-v", "1.0"),
        0,
        f"Module dkms_conf_test/1.0 for kernel {kver} ({ARCH}):\n"
        "Before uninstall, this module version was ACTIVE on this kernel.\n"
        "Running depmod... done.\n"
        "\n" + CONF_TEST_REMOVED,
    )
    assert status_lines(sandbox, "dkms_conf_test") == ""


def test_defaulted_built_module_name_without_source(
    sandbox: Sandbox, kernels: list[str], tmp_path: Path
) -> None:
    """With one module BUILT_MODULE_NAME defaults to PACKAGE_NAME, so the conf is valid; the
    build then stops because the source tree holds nothing but dkms.conf."""
    kver = kernels[0]
    tree = write_source_tree(
        tmp_path / "dkms_conf_test_defaulted_BUILT_MODULE_NAME",
        'PACKAGE_NAME="dkms_conf_test"\nPACKAGE_VERSION="1.0"\nDEST_MODULE_LOCATION[0]="/kernel/extra"\n',
        makefile=False,
    )
    expect(sandbox.dkms("add", str(tree)), 0, CONF_TEST_ADDED)
    expect(
        sandbox.dkms("build", "-k", kver, "-m", "dkms_conf_test", "-v", "1.0"),
        8,
        "\nError! The directory /var/lib/dkms/dkms_conf_test/1.0/source does not appear to have "
        "module source located within it.\nBuild halted.\n",
    )
    assert status_lines(sandbox, "dkms_conf_test") == "dkms_conf_test/1.0: added\n"
    expect(
        sandbox.dkms("remove", "--all", "-m", "dkms_conf_test", "-v", "1.0"), 0, CONF_TEST_REMOVED
    )


@pytest.mark.parametrize(
    ("patch", "error"),
    [
        pytest.param(
            "missing.patch",
            "Patch missing.patch as specified in dkms.conf cannot be\n"
            "found in /var/lib/dkms/dkms_conf_test/1.0/build/patches/.",
            id="missing",
        ),
        pytest.param(
            "../badpath.patch",
            "Patch ../badpath.patch as specified in dkms.conf contains '..' path component.",
            id="dotdot",
        ),
        pytest.param(
            "subdir/../badpath.patch",
            "Patch subdir/../badpath.patch as specified in dkms.conf contains '..' path component.",
            id="subdir-dotdot",
        ),
    ],
)
def test_bad_patch(
    sandbox: Sandbox, kernels: list[str], tmp_path: Path, patch: str, error: str
) -> None:
    """Patches are checked when the build applies them (after the signing prologue): missing
    ones and paths with a `..` component are refused with 5. The `..` paths point at patches
    that do exist, so only the `..` rule can refuse them."""
    kver = kernels[0]
    tree = write_source_tree(
        tmp_path / "dkms_conf_test_patch",
        'PACKAGE_NAME="dkms_conf_test"\n'
        'PACKAGE_VERSION="1.0"\n'
        'BUILT_MODULE_NAME[0]="dkms_conf_test"\n'
        'DEST_MODULE_LOCATION[0]="/kernel/extra"\n'
        f'PATCH[0]="{patch}"\n',
        ["dkms_conf_test"],
    )
    harmless = (
        "--- a/Makefile\n+++ b/Makefile\n@@ -1 +1,2 @@\n obj-m += dkms_conf_test.o\n+# patched\n"
    )
    (tree / "badpath.patch").write_text(harmless)
    (tree / "patches" / "subdir").mkdir(parents=True)
    (tree / "patches" / "badpath.patch").write_text(harmless)

    expect(sandbox.dkms("add", str(tree)), 0, CONF_TEST_ADDED)
    expect(
        sandbox.dkms("build", "-k", kver, "-m", "dkms_conf_test", "-v", "1.0"),
        5,
        f"{signing_prologue(kver)}\n\nError! {error}\n",
    )
    assert status_lines(sandbox, "dkms_conf_test") == "dkms_conf_test/1.0: added\n"
    assert not sandbox.exists(f"/var/lib/dkms/dkms_conf_test/1.0/{kver}")
    expect(
        sandbox.dkms("remove", "--all", "-m", "dkms_conf_test", "-v", "1.0"), 0, CONF_TEST_REMOVED
    )


@pytest.mark.parametrize(
    ("name", "records", "errors"),
    [
        pytest.param(
            "dkms_duplicate_test",
            'BUILT_MODULE_NAME[0]="dkms_duplicate_test"\n'
            'DEST_MODULE_LOCATION[0]="/kernel/extra"\n'
            'BUILT_MODULE_NAME[1]="dkms_duplicate_test"\n'
            'DEST_MODULE_LOCATION[1]="/kernel/extra"\n',
            "dkms.conf: Error! Duplicate module 'dkms_duplicate_test' in 'BUILT_MODULE_NAME[1]'.\n"
            "dkms.conf: Error! Duplicate module 'dkms_duplicate_test' in 'DEST_MODULE_NAME[1]'.\n",
            id="built-and-dest",
        ),
        pytest.param(
            "dkms_duplicate_built_test-1.0",
            'BUILT_MODULE_NAME[0]="dkms_duplicate_built_test"\n'
            'DEST_MODULE_LOCATION[0]="/kernel/extra"\n'
            'BUILT_MODULE_NAME[1]="dkms_duplicate_built_test"\n'
            'DEST_MODULE_NAME[1]="dkms_duplicate_built_test_renamed"\n'
            'DEST_MODULE_LOCATION[1]="/kernel/extra"\n',
            "dkms.conf: Error! Duplicate module 'dkms_duplicate_built_test' in "
            "'BUILT_MODULE_NAME[1]'.\n",
            id="built",
        ),
        pytest.param(
            "dkms_duplicate_dest_test-1.0",
            'BUILT_MODULE_NAME[0]="dkms_duplicate_dest_test"\n'
            'DEST_MODULE_LOCATION[0]="/kernel/extra"\n'
            'BUILT_MODULE_NAME[1]="dkms_duplicate_dest_test_b"\n'
            'DEST_MODULE_NAME[1]="dkms_duplicate_dest_test"\n'
            'DEST_MODULE_LOCATION[1]="/kernel/extra"\n',
            "dkms.conf: Error! Duplicate module 'dkms_duplicate_dest_test' in "
            "'DEST_MODULE_NAME[1]'.\n",
            id="dest",
        ),
    ],
)
def test_duplicate_modules(
    sandbox: Sandbox, tmp_path: Path, name: str, records: str, errors: str
) -> None:
    """Duplicates are a strict-read error: the tree has already been copied to /usr/src when
    add refuses it, but nothing is registered."""
    package = name.removesuffix("-1.0")
    tree = write_source_tree(
        tmp_path / name,
        f'PACKAGE_NAME="{package}"\nPACKAGE_VERSION="1.0"\n' + records,
        makefile=False,
    )
    before = Snapshot(sandbox)
    expect(
        sandbox.dkms("add", str(tree)),
        8,
        errors + bad_conf(f"/usr/src/{package}-1.0/dkms.conf"),
    )
    assert sandbox.is_file(f"/usr/src/{package}-1.0/dkms.conf")
    before.assert_unchanged(new_sources=(f"{package}-1.0",))
    assert status_lines(sandbox, package) == ""


def test_crlf_line_endings(sandbox: Sandbox, kver: str, tmp_path: Path) -> None:
    """A dkms.conf written on Windows: the trailing CR of every value is dropped (a CR left in
    DEST_MODULE_NAME would show in the installed file name)."""
    tree = write_source_tree(
        tmp_path / "dkms_crlf_test-1.0",
        'PACKAGE_NAME="dkms_crlf_test"\n'
        'PACKAGE_VERSION="1.0"\n'
        'BUILT_MODULE_NAME[0]="dkms_dos_test"\n'
        'DEST_MODULE_LOCATION[0]="/kernel/extra"\n'
        'AUTOINSTALL="yes"\n',
        ["dkms_dos_test"],
        crlf=True,
    )
    assert b"\r\n" in (tree / "dkms.conf").read_bytes()
    expect(
        sandbox.dkms("add", str(tree)),
        0,
        created("dkms_crlf_test"),
    )
    assert status_lines(sandbox, "dkms_crlf_test") == "dkms_crlf_test/1.0: added\n"
    expect(
        sandbox.dkms("install", "-k", kver, "-m", "dkms_crlf_test", "-v", "1.0"),
        0,
        f"{signing_prologue(kver)}\n"
        "Building module(s)... done.\n"
        f"{signing_message('dkms_crlf_test', '1.0', 'dkms_dos_test')}\n"
        f"Installing {dest_dir(kver)}/dkms_dos_test.ko\n"
        "Running depmod... done.\n",
    )
    assert (
        status_lines(sandbox, "dkms_crlf_test")
        == f"dkms_crlf_test/1.0, {kver}, {ARCH}: installed\n"
    )
    assert sandbox.is_file(f"{dest_dir(kver)}/dkms_dos_test.ko")
    expect(
        sandbox.dkms("remove", "-k", kver, "-m", "dkms_crlf_test", "-v", "1.0"),
        0,
        f"Module dkms_crlf_test/1.0 for kernel {kver} ({ARCH}):\n"
        "Before uninstall, this module version was ACTIVE on this kernel.\n"
        f"Deleting {dest_dir(kver)}/dkms_dos_test.ko\n"
        "Running depmod... done.\n"
        "\n"
        "Deleting module dkms_crlf_test/1.0 completely from the DKMS tree.\n",
    )
    assert status_lines(sandbox, "dkms_crlf_test") == ""


def test_deprecated_directives(sandbox: Sandbox, kernels: list[str], tmp_path: Path) -> None:
    """REMAKE_INITRD and OBSOLETE_BY are reported once per strict read of each file (CLEAN=true
    silently), on stderr, and otherwise change nothing."""
    kver = kernels[0]
    tree = write_source_tree(
        tmp_path / "dkms_deprecated_test-1.0",
        'PACKAGE_NAME="dkms_deprecated_test"\n'
        'PACKAGE_VERSION="1.0"\n'
        'BUILT_MODULE_NAME[0]="dkms_deprecated_test"\n'
        'DEST_MODULE_LOCATION[0]="/kernel/extra"\n'
        'AUTOINSTALL="yes"\n'
        'REMAKE_INITRD="yes"\n'
        'CLEAN="true"\n'
        "OBSOLETE_BY=99.0\n",
        ["dkms_deprecated_test"],
    )

    def deprecated(conf: str) -> str:
        return (
            f"Deprecated feature: REMAKE_INITRD ({conf})\n"
            f"Deprecated feature: OBSOLETE_BY ({conf}): use BUILD_EXCLUSIVE_KERNEL_MAX instead\n"
        )

    expect(
        sandbox.dkms("add", str(tree)),
        0,
        deprecated("/usr/src/dkms_deprecated_test-1.0/dkms.conf") + created("dkms_deprecated_test"),
    )
    expect(
        sandbox.dkms("install", "-k", kver, "-m", "dkms_deprecated_test", "-v", "1.0"),
        0,
        deprecated("/var/lib/dkms/dkms_deprecated_test/1.0/source/dkms.conf")
        + f"{signing_prologue(kver)}\n"
        "Building module(s)... done.\n"
        f"{signing_message('dkms_deprecated_test', '1.0')}\n"
        f"Installing {dest_dir(kver)}/dkms_deprecated_test.ko\n"
        "Running depmod... done.\n",
    )
    assert status_lines(sandbox, "dkms_deprecated_test") == (
        f"dkms_deprecated_test/1.0, {kver}, {ARCH}: installed\n"
    )
    expect(
        sandbox.dkms("remove", "-k", kver, "-m", "dkms_deprecated_test", "-v", "1.0"),
        0,
        f"Module dkms_deprecated_test/1.0 for kernel {kver} ({ARCH}):\n"
        "Before uninstall, this module version was ACTIVE on this kernel.\n"
        f"Deleting {dest_dir(kver)}/dkms_deprecated_test.ko\n"
        "Running depmod... done.\n"
        "\n"
        "Deleting module dkms_deprecated_test/1.0 completely from the DKMS tree.\n",
    )
