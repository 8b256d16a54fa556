"""The end of the story for a user (issue 11): after apt installs a kernel, the module the apt hooks
rebuilt loads in that kernel, booted under qemu with the initramfs the installation made. Each test
boots for real and reads the proof from the guest's serial console; none passes without a boot."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e.chroot import MODULE, NEW, OLD, VERSION, Debian, headers, image

from .proof import (
    boot_kernel,
    install_kernel,
    installed_sha256,
    problems_after_install,
    problems_in_boot,
)

pytestmark = [pytest.mark.boot, pytest.mark.slow]


def assert_loads(debian: Debian, kver: str, qemu: str, consoles: Path) -> None:
    result = boot_kernel(debian, kver, qemu, consoles)
    problems = problems_in_boot(result, kver, installed_sha256(debian, kver))
    assert not problems, "\n".join(problems)
    print(f"boot: {MODULE} {VERSION} loaded in {kver} ({result.seconds:.1f} s):")
    print("\n".join(f"  guest| {k} {v}" for k, v in result.proof.lines))


def test_module_loads_in_the_kernel_apt_installed(
    debian: Debian, qemu: str, consoles: Path
) -> None:
    debian.kernel_absent(OLD)
    debian.kernel_absent(NEW)
    run = install_kernel(debian, OLD)
    problems = problems_after_install(debian, OLD, run)
    assert not problems, "\n".join(problems)
    assert_loads(debian, OLD, qemu, consoles)


def test_module_loads_in_the_new_kernel_after_an_upgrade(
    debian: Debian, qemu: str, consoles: Path
) -> None:
    if not (debian.is_installed(image(OLD)) and debian.is_installed(headers(OLD))):
        assert not problems_after_install(debian, OLD, install_kernel(debian, OLD))
    debian.kernel_absent(NEW)
    run = install_kernel(debian, NEW)
    problems = problems_after_install(debian, NEW, run)
    assert not problems, "\n".join(problems)
    assert_loads(debian, NEW, qemu, consoles)
    # The kernel a user falls back to still has its own build.
    assert debian.is_installed(headers(OLD))
    assert_loads(debian, OLD, qemu, consoles)


def test_the_proof_fails_without_the_module_in_the_initramfs(
    debian: Debian, qemu: str, consoles: Path
) -> None:
    """The control: the same boot with an initramfs made without dkms_test must not pass."""
    if not (debian.is_installed(image(OLD)) and debian.is_installed(headers(OLD))):
        assert not problems_after_install(debian, OLD, install_kernel(debian, OLD))
    modules = "/etc/initramfs-tools/modules"
    listed = debian.file(modules).read_text()
    debian.chroot.write(modules, "")
    try:
        debian.run("update-initramfs", "-u", "-k", OLD).check()
        assert not debian.initramfs_lists(OLD)
        result = boot_kernel(debian, OLD, qemu, consoles)
        assert result.proof.complete, result.describe()
        assert result.proof.one("uname-r") == OLD
        assert result.proof.one("modprobe-rc") != "0"
        assert result.proof.all("sysfs-version") == []
        assert problems_in_boot(result, OLD, installed_sha256(debian, OLD))
    finally:
        debian.chroot.write(modules, listed)
        debian.run("update-initramfs", "-u", "-k", OLD).check()
    assert debian.initramfs_lists(OLD)
