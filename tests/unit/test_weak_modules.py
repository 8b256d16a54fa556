"""RHEL's weak-modules and SUSE's weak-modules2 get the installed module files, as in dkms."""

from __future__ import annotations

from pathlib import Path

import pytest

from dkmshooks.dkmsconf import read_conf

from .helpers import Captured


def setup_tree(root: Path, distro_line: str, tool: str) -> tuple[Path, Path]:
    (root / "etc/os-release").write_text(distro_line)
    record = root / "weak-calls"
    script = root / tool.lstrip("/")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(f'#!/bin/sh\necho "$@" >> {record}\ncat >> {record}\n')
    script.chmod(0o755)
    conf_path = root / "dkms.conf"
    conf_path.write_text(
        "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[0]=foo\n"
        "DEST_MODULE_LOCATION[0]=/extra\n"
    )
    return record, conf_path


@pytest.mark.parametrize(
    ("distro_line", "tool", "dest", "first_line"),
    [
        (
            'ID=almalinux\nID_LIKE="rhel centos fedora"\n',
            "/usr/sbin/weak-modules",
            "/extra",
            "--no-initramfs --add-modules",
        ),
        (
            'ID=sles\nID_LIKE="suse"\n',
            "/usr/lib/module-init-tools/weak-modules2",
            "/updates",
            "--add-kernel-modules 6.1.0-56-amd64",
        ),
    ],
)
def test_weak_modules_add(
    root: Path,
    make_session,
    distro_line: str,
    tool: str,
    dest: str,
    first_line: str,  # type: ignore[no-untyped-def]
) -> None:
    record, conf_path = setup_tree(root, distro_line, tool)
    session, console = make_session()
    kver = "6.1.0-56-amd64"
    installed = root / f"lib/modules/{kver}{dest}/foo.ko"
    installed.parent.mkdir(parents=True)
    installed.write_bytes(b"ko")
    conf = read_conf(conf_path, "foo", "1", kver, "x86_64", session.conf_context(kver), Captured())
    session.weak_modules("add", conf, "foo", kver, "x86_64")
    assert console.text == "Adding linked weak modules...\n"
    assert record.read_text() == f"{first_line}\n{installed}\n"


def test_no_weak_modules_on_debian(root: Path, make_session) -> None:  # type: ignore[no-untyped-def]
    record, conf_path = setup_tree(root, "ID=debian\n", "/usr/sbin/weak-modules")
    session, console = make_session()
    conf = read_conf(conf_path, "foo", "1", "K", "x86_64", session.conf_context("K"), Captured())
    session.weak_modules("add", conf, "foo", "K", "x86_64")
    assert console.text == "" and not record.exists()
