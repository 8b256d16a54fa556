from __future__ import annotations

import json
import os
from pathlib import Path

from dkmshooks.layout import Layout


def make_installed_tree(root: Path) -> Layout:
    layout = Layout(root=root)
    src = layout.module_source("dkms_test", "1.0")
    src.mkdir(parents=True)
    (src / "dkms.conf").write_text(
        "PACKAGE_NAME=dkms_test\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=dkms_test\n"
        'DEST_MODULE_LOCATION[0]="/kernel/extra"\nAUTOINSTALL=yes\n'
    )
    (src / "dkms_test.c").write_text("")
    vdir = layout.version_dir("dkms_test", "1.0")
    vdir.mkdir(parents=True)
    os.symlink(src, vdir / "source")
    for kver in ("6.1.0-55-amd64", "6.1.0-56-amd64"):
        mdir = layout.built_dir("dkms_test", "1.0", kver, "x86_64") / "module"
        mdir.mkdir(parents=True)
        (mdir / "dkms_test.ko").write_bytes(b"module " + kver.encode())
    dest = layout.modules_dir("6.1.0-56-amd64") / "updates/dkms"
    dest.mkdir(parents=True)
    (dest / "dkms_test.ko").write_bytes(b"module 6.1.0-56-amd64")
    os.symlink(
        "1.0/6.1.0-56-amd64/x86_64", layout.active_link("dkms_test", "6.1.0-56-amd64", "x86_64")
    )
    return layout


def test_status_json_matches_text(root: Path, make_session) -> None:  # type: ignore[no-untyped-def]
    make_installed_tree(root)
    session, console = make_session()
    session.show_status("", "", [])
    assert console.text == (
        "dkms_test/1.0, 6.1.0-55-amd64, x86_64: built\n"
        "dkms_test/1.0, 6.1.0-56-amd64, x86_64: installed\n"
    )
    session, console = make_session()
    session.show_status("", "", [], as_json=True)
    doc = json.loads(console.text)
    assert doc["schema"] == 1
    assert [(m["kernel"], m["state"], m["differences"]) for m in doc["modules"]] == [
        ("6.1.0-55-amd64", "built", False),
        ("6.1.0-56-amd64", "installed", False),
    ]


def test_status_json_reports_differences(root: Path, make_session) -> None:  # type: ignore[no-untyped-def]
    layout = make_installed_tree(root)
    (layout.modules_dir("6.1.0-56-amd64") / "updates/dkms/dkms_test.ko").write_bytes(b"changed")
    session, console = make_session()
    session.show_status("dkms_test", "", [("6.1.0-56-amd64", "")], as_json=True)
    (record,) = json.loads(console.text)["modules"]
    assert record["differences"] is True
    session, console = make_session()
    session.show_status("dkms_test", "", [("6.1.0-56-amd64", "")])
    assert console.text.endswith("installed (Differences between built and installed modules)\n")


def test_list_and_config(root: Path, make_session) -> None:  # type: ignore[no-untyped-def]
    make_installed_tree(root)
    session, console = make_session()
    session.show_list("")
    assert console.text == "dkms_test/1.0\n"
    session, console = make_session()
    session.show_config("dkms_test", "1.0", "6.1.0-56-amd64", "x86_64", as_json=True)
    doc = json.loads(console.text)
    assert doc["variables"]["PACKAGE_NAME"] == {"0": "dkms_test"}
    assert doc["modules"][0]["dest_location"] == "/updates/dkms"
    assert doc["autoinstall"] is True
