"""Hostile tarballs for `dkms ldtarball`: absolute paths, `..`, symlink and hardlink escapes,
device nodes, truncated and huge archives. Each is refused with an error that names the
problem, and nothing is written anywhere (the overlay upper layers record every write)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
from pathlib import Path

import pytest
from integration.sandbox import Sandbox

from .lab import changed_outside, upper_state

pytestmark = pytest.mark.reliability

LOCK = "/var/lib/dkmshooks/lock"
CONF = b'PACKAGE_NAME="evil"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="evil"\n'
CONF += b'DEST_MODULE_LOCATION[0]="/updates"\n'


def _file(name: str, data: bytes = b"x\n") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o777 if kind == tarfile.SYMTYPE else 0o644
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info, None


def archive(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_special("dkms_source_tree", tarfile.DIRTYPE)[0])
        for info, data in [
            _file("dkms_source_tree/dkms.conf", CONF),
            _file("dkms_source_tree/Makefile", b"obj-m := evil.o\n"),
            *members,
        ]:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buf.getvalue())


def _raw_members(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """Tar blocks of `members` with no end-of-archive marker after them."""
    out = b""
    for info, data in members:
        out += info.tobuf(format=tarfile.GNU_FORMAT)
        if data:
            out += data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)
    return out


def _huge() -> bytes:
    """A member whose header claims 8 GiB, followed by a few blocks: huge and truncated."""
    info = tarfile.TarInfo("dkms_source_tree/huge.bin")
    info.size = 8 << 30
    good = _raw_members(
        [_file("dkms_source_tree/dkms.conf", CONF), _file("dkms_source_tree/Makefile", b"x\n")]
    )
    return gzip.compress(good + info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096)


def _truncated() -> bytes:
    """A sound archive cut short: the compressed stream ends in the middle of a member."""
    whole = archive([_file("dkms_source_tree/big.c", os.urandom(200_000))])
    return whole[: len(whole) // 2]


CASES = {
    "absolute": lambda: archive([_file("/etc/evil_absolute")]),
    "dotdot": lambda: archive([_file("dkms_source_tree/../../../../etc/evil_dotdot")]),
    "symlink": lambda: archive(
        [
            _special("dkms_source_tree/out", tarfile.SYMTYPE, "/etc"),
            _file("dkms_source_tree/out/evil_symlink"),
        ]
    ),
    "symlink-relative": lambda: archive(
        [
            _special("dkms_source_tree/up", tarfile.SYMTYPE, "../../../../../../etc"),
            _file("dkms_source_tree/up/evil_relative"),
        ]
    ),
    "hardlink": lambda: archive(
        [_special("dkms_source_tree/passwd", tarfile.LNKTYPE, "/etc/passwd")]
    ),
    "device": lambda: archive([_special("dkms_source_tree/mem", tarfile.CHRTYPE)]),
    "truncated": _truncated,
    "huge": _huge,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_tarball_is_refused_and_changes_nothing(
    sandbox: Sandbox, tmp_path: Path, case: str
) -> None:
    path = tmp_path / f"{case}.dkms.tar.gz"
    path.write_bytes(CASES[case]())
    before = upper_state(sandbox)
    start = time.monotonic()
    result = sandbox.dkms("ldtarball", str(path))
    assert time.monotonic() - start < 30
    assert result.rc != 0, result.output
    assert "Error!" in result.output and "Traceback" not in result.output, result.output
    assert changed_outside(before, upper_state(sandbox), [LOCK]) == []
    assert sandbox.dkms("status").output == ""
    for evil in ("absolute", "dotdot", "symlink", "relative"):
        assert not sandbox.exists(f"/etc/evil_{evil}")
