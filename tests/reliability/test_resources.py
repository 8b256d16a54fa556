"""Disk space: a build that cannot fit is refused up front with the space it needs and where;
one that runs out anyway stops with the file that could not be written, leaves no half-built
module, and the next command sweeps its leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest
from integration.sandbox import Sandbox

pytestmark = pytest.mark.reliability

DATA = Path(__file__).resolve().parents[1] / "data"


def test_a_build_that_cannot_fit_is_refused_up_front(sandbox: Sandbox, kver: str) -> None:
    sandbox.add_source(DATA / "dkms_test-1.0")
    result = sandbox.run(
        [
            "bash",
            "-c",
            "mount -t tmpfs -o size=8m tmpfs /var/lib/dkms && dkms add dkms_test/1.0 && "
            f"{{ dkms build dkms_test/1.0 -k {kver}; echo rc=$?; }} && dkms status && "
            "ls -A /var/lib/dkms/dkms_test/1.0",
        ]
    )
    assert (
        "Error! Not enough free space to build in /var/lib/dkms/dkms_test/1.0/build: about 33 "
        "MiB needed, 7 MiB available on the file system holding /var/lib/dkms/dkms_test/1.0/"
        "build.\nFree some space there (or move dkms_tree in framework.conf) and build again.\n"
        "rc=10\ndkms_test/1.0: added\nbuild\nsource\n" in result.output
    ), result.output


BIG = """\
PACKAGE_NAME="big"
PACKAGE_VERSION="1.0"
BUILT_MODULE_NAME[0]="big"
DEST_MODULE_LOCATION[0]="/updates"
MAKE="head -c 24M /dev/zero > big.ko"
"""


def test_running_out_of_space_anyway_stops_cleanly(
    sandbox: Sandbox, tmp_path: Path, kver: str
) -> None:
    """The estimate is only an estimate: a MAKE that writes far more than its source suggests
    fills the disk while the module is staged."""
    src = tmp_path / "big-1.0"
    src.mkdir()
    (src / "dkms.conf").write_text(BIG)
    (src / "README").write_text("small source, big module\n")
    sandbox.add_source(src)
    result = sandbox.run(
        [
            "bash",
            "-c",
            "mount -t tmpfs -o size=40m tmpfs /var/lib/dkms && dkms add big/1.0 >/dev/null && "
            f"{{ dkms build big/1.0 -k {kver}; echo rc=$?; }}; dkms status; "
            "ls -A /var/lib/dkms/big/1.0/*/; dkms remove big/1.0 --all >/dev/null; "
            "echo left:; ls -A /var/lib/dkms",
        ]
    )
    out = result.output
    assert "\nError! No space left on device (/var/lib/dkms/big/1.0/" in out, out
    assert "the command stopped part way; free space or fix the file system" in out
    assert "rc=1\nbig/1.0: added\n" in out  # no half-built module is ever "built"
    assert ".tmp_x86_64_" in out  # its staging dir, hidden from status ...
    assert out.endswith("left:\nmok.key\nmok.pub\n"), out  # ... and swept
    assert "Traceback" not in out
