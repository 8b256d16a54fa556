"""The rest of the dkms surface on real headers: BUILD_DEPENDS_REBUILD, generate_mok, -q and
--verbose, modules_to_force_install, post_transaction after autoinstall, --rpm_safe_upgrade."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from .conftest import DATA
from .sandbox import Sandbox
from .sources import write_source_tree

pytestmark = pytest.mark.integration


def dep_module(tmp_path: Path, version: str) -> Path:
    conf = (
        f'PACKAGE_NAME="dkms_dep_base_test"\nPACKAGE_VERSION="{version}"\n'
        'BUILT_MODULE_NAME[0]="dkms_dep_base_test"\nDEST_MODULE_LOCATION[0]="/kernel/extra"\n'
        'AUTOINSTALL="yes"\n'
    )
    return write_source_tree(
        tmp_path / f"dkms_dep_base_test-{version}", conf, ["dkms_dep_base_test"], version=version
    )


def user_module(tmp_path: Path) -> Path:
    conf = (
        'PACKAGE_NAME="dkms_dep_user_test"\nPACKAGE_VERSION="1.0"\n'
        'BUILT_MODULE_NAME[0]="dkms_dep_user_test"\nDEST_MODULE_LOCATION[0]="/kernel/extra"\n'
        'AUTOINSTALL="yes"\nBUILD_DEPENDS="dkms_dep_base_test"\nBUILD_DEPENDS_REBUILD="yes"\n'
    )
    return write_source_tree(tmp_path / "dkms_dep_user_test-1.0", conf, ["dkms_dep_user_test"])


def test_build_depends_rebuild_on_upgrade_and_downgrade(
    sandbox: Sandbox, kernels: list[str], tmp_path: Path
) -> None:
    kver = kernels[-1]
    for version in ("1.0", "2.0"):
        sandbox.add_source(dep_module(tmp_path, version))
    sandbox.add_source(user_module(tmp_path))
    assert sandbox.dkms("install", "dkms_dep_base_test/1.0", "-k", kver).rc == 0
    missing = sandbox.dkms("build", "dkms_dep_user_test/1.0", "-k", "6.1.0-0-none")
    assert missing.rc == 21  # headers are checked before BUILD_DEPENDS, as in dkms
    result = sandbox.dkms("install", "dkms_dep_user_test/1.0", "-k", kver)
    assert result.rc == 0, result.output
    dep_file = f"/var/lib/dkms/dkms_dep_user_test/1.0/{kver}/x86_64/.dep_dkms_dep_base_test"
    # the newest *registered* version of the dependency, as dkms records it
    assert sandbox.read_text(dep_file) == "1.0\n"
    built = f"/var/lib/dkms/dkms_dep_user_test/1.0/{kver}/x86_64"

    def build_id() -> str:
        # a rebuild renames a fresh staging directory into place (new inode and change time)
        return sandbox.check(["stat", "-c", "%i %.9Z", built]).strip()

    first = build_id()

    upgrade = sandbox.dkms("install", "dkms_dep_base_test/2.0", "-k", kver)
    assert upgrade.rc == 0, upgrade.output
    rebuilding = "\nRebuilding module dkms_dep_user_test/1.0 due to updated dependencies\n\n"
    assert rebuilding in upgrade.output, upgrade.output
    assert sandbox.read_text(dep_file) == "2.0\n"
    second = build_id()
    assert second != first

    assert sandbox.dkms("remove", "dkms_dep_base_test/2.0", "--all").rc == 0
    downgrade = sandbox.dkms("install", "dkms_dep_base_test/1.0", "-k", kver)
    assert downgrade.rc == 0, downgrade.output
    assert rebuilding in downgrade.output, downgrade.output
    assert sandbox.read_text(dep_file) == "1.0\n"
    assert build_id() != second
    again = sandbox.dkms("install", "dkms_dep_base_test/1.0", "-k", kver, "--force")
    assert "Rebuilding module" not in again.output
    status = sandbox.dkms("status", "dkms_dep_user_test").output
    assert status == f"dkms_dep_user_test/1.0, {kver}, x86_64: installed\n"


def test_generate_mok(sandbox: Sandbox) -> None:
    result = sandbox.dkms("generate_mok")
    assert result.rc == 0, result.output
    assert result.output == (
        "Signing key: /var/lib/dkms/mok.key\n"
        "Public certificate (MOK): /var/lib/dkms/mok.pub\n"
        "Certificate or key are missing, generating self signed certificate for MOK...\n"
    )
    key = sandbox.upper_dir("/var/lib") / "dkms/mok.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = sandbox.check(
        ["openssl", "x509", "-inform", "DER", "-in", "/var/lib/dkms/mok.pub", "-noout", "-text"]
    )
    assert "Code Signing" in text
    again = sandbox.dkms("generate_mok")
    assert again.output == (
        "Signing key: /var/lib/dkms/mok.key\nPublic certificate (MOK): /var/lib/dkms/mok.pub\n"
    )


def test_quiet_and_verbose(sandbox: Sandbox, kernels: list[str]) -> None:
    kver = kernels[-1]
    sandbox.add_source(DATA / "dkms_test-1.0")
    quiet = sandbox.dkms("add", "dkms_test/1.0", "-q")
    assert (quiet.rc, quiet.output) == (0, "")
    verbose = sandbox.dkms("build", "dkms_test/1.0", "-k", kver, "--verbose")
    assert verbose.rc == 0, verbose.output
    command = (
        f"make -j1 KERNELRELEASE={kver} -C /lib/modules/{kver}/build "
        "M=/var/lib/dkms/dkms_test/1.0/build"
    )
    # --verbose echoes the command instead of "Building module(s)..."
    assert f"\n{command}\n done.\n" in verbose.output, verbose.output
    assert "Building module(s)" not in verbose.output


def test_modules_to_force_install(sandbox: Sandbox, kernels: list[str]) -> None:
    kver = kernels[-1]
    sandbox.add_source(DATA / "dkms_test-1.0")
    sandbox.write_text("/usr/share/dkms/modules_to_force_install/test", "dkms_test\n")
    result = sandbox.dkms("install", "dkms_test/1.0", "-k", kver)
    assert result.rc == 0, result.output
    assert "Forcing installation of dkms_test\n" in result.output
    sandbox.remove("/usr/share/dkms")


def test_post_transaction_after_autoinstall(sandbox: Sandbox, kernels: list[str]) -> None:
    kver = kernels[-1]
    sandbox.add_source(DATA / "dkms_test-1.0")
    assert sandbox.dkms("add", "dkms_test/1.0").rc == 0
    sandbox.write_text(
        "/etc/dkms/framework.conf.d/post.conf", 'post_transaction="echo done for ${kernelver}"\n'
    )
    result = sandbox.dkms("autoinstall", "-k", kver)
    assert result.rc == 0, result.output
    assert result.output.endswith(
        f"Autoinstall on {kver} succeeded for module(s) dkms_test.\n"
        "Executing post-transaction command... done.\n"
    ), result.output
    assert f"done for {kver}\n" in sandbox.read_text("/var/lib/dkms/post_transaction.log")
    # nothing to do: dkms prints nothing and runs no post-transaction command
    assert sandbox.dkms("autoinstall", "-k", kver).output == ""


def test_rpm_safe_upgrade_cancels_the_remove_of_the_same_transaction(sandbox: Sandbox) -> None:
    sandbox.add_source(DATA / "dkms_test-1.0")
    tmp = sandbox.upper_dir("/var/lib") / "rpm-safe"
    tmp.mkdir(parents=True)
    env = {"TMPDIR": "/var/lib/rpm-safe"}
    # both calls share their grandparent (this test process), like the %post and %preun of an
    # rpm upgrade transaction
    assert sandbox.dkms("add", "dkms_test/1.0", "--rpm_safe_upgrade", env=env).rc == 0
    locks = os.listdir(tmp)
    assert len(locks) == 1 and locks[0].startswith("dkms_rpm_safe_upgrade_lock.")
    result = sandbox.dkms("remove", "dkms_test/1.0", "--all", "--rpm_safe_upgrade", env=env)
    assert (result.rc, result.output) == (
        0,
        "Warning: Remove cancelled because --rpm_safe_upgrade scenario detected.\n",
    )
    assert os.listdir(tmp) == []
    assert sandbox.dkms("status").output == "dkms_test/1.0: added\n"


def test_etc_dkms_patches_and_script_overrides(sandbox: Sandbox, kernels: list[str]) -> None:
    kver = kernels[-1]
    sandbox.add_source(DATA / "dkms_scripts_test-1.0")
    shipped = sandbox.read_text("/usr/src/dkms_scripts_test-1.0/dkms.conf")
    patch_name = next(
        line.split("=", 1)[1].strip('"')
        for line in shipped.splitlines()
        if line.startswith("PATCH[0]")
    )
    original_patch = sandbox.read_text(f"/usr/src/dkms_scripts_test-1.0/patches/{patch_name}")
    # the admin's copy of the patch changes the printed text differently
    sandbox.write_text(
        f"/etc/dkms/dkms_scripts_test/patches/{patch_name}",
        original_patch.replace("patched by PATCH[0]", "patched by the admin"),
    )
    post_install = next(
        line.split("=", 1)[1].strip('"').split()[0]
        for line in shipped.splitlines()
        if line.startswith("POST_INSTALL")
    )
    override = f"/etc/dkms/dkms_scripts_test/{Path(post_install).name}"
    sandbox.write_text(override, "#!/bin/sh\necho admin post_install override ran\n")
    sandbox.check(["chmod", "+x", override])
    result = sandbox.dkms("install", "dkms_scripts_test/1.0", "-k", kver)
    assert result.rc == 0, result.output
    assert "admin post_install override ran\n" in result.output
    module = f"/lib/modules/{kver}/updates/dkms/dkms_scripts_test.ko"
    strings = sandbox.check(["sh", "-c", f"strings {module} | grep 'patched by' || true"])
    assert "patched by the admin" in strings, strings


def test_build_environment_is_imported(sandbox: Sandbox, kernels: list[str]) -> None:
    kver = kernels[-1]
    sandbox.add_source(DATA / "dkms_test-1.0")
    sandbox.write_text("/etc/dkms/toolset.env", "export DKMS_TEST_TOOLSET=from-build-environment\n")
    sandbox.write_text(
        "/etc/dkms/framework.conf.d/env.conf", "build_environment=/etc/dkms/toolset.env\n"
    )
    # the conf's MAKE shows what the build saw; dkms expands conf values twice, so `\$` is what
    # defers a variable to build time
    conf = sandbox.read_text("/usr/src/dkms_test-1.0/dkms.conf")
    sandbox.write_text(
        "/usr/src/dkms_test-1.0/dkms.conf",
        conf + "MAKE[0]='echo toolset=\\$DKMS_TEST_TOOLSET; make -C $kernel_source_dir M=\\$PWD'\n",
    )
    result = sandbox.dkms("build", "dkms_test/1.0", "-k", kver)
    assert result.rc == 0, result.output
    log = sandbox.read_text(f"/var/lib/dkms/dkms_test/1.0/{kver}/x86_64/log/make.log")
    assert "toolset=from-build-environment\n" in log, log
