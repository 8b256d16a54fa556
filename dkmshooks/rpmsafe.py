"""--rpm_safe_upgrade: an `add` and a later `remove` from one rpm transaction cancel out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import run

if TYPE_CHECKING:
    from .session import SessionBase as Session


def _grandparent() -> tuple[str, str]:
    ppid = os.getppid()
    pppid = ""
    try:
        for line in Path(f"/proc/{ppid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                pppid = line.split()[1]
    except OSError:
        return "", ""
    proc = run.run(["ps", "-o", "lstart", "--no-headers", "-p", pppid], check=False, capture=True)
    return pppid, proc.stdout.strip()


def write_lock(session: Session, module: str, version: str) -> None:
    pppid, started = _grandparent()
    import tempfile

    fd, _path = tempfile.mkstemp(
        prefix=f"dkms_rpm_safe_upgrade_lock.{pppid}.", dir=session.settings.tmp_location
    )
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{module}-{version}\n")
        if started:
            fh.write(f"{started}\n")


def find_and_clear_lock(session: Session, module: str, version: str) -> bool:
    pppid, started = _grandparent()
    for lock in sorted(session.settings.tmp_location.glob(f"dkms_rpm_safe_upgrade_lock.{pppid}.*")):
        try:
            lines = lock.read_text().splitlines()
        except OSError:
            continue
        if lines and lines[0] == f"{module}-{version}" and started and lines[-1] == started:
            lock.unlink(missing_ok=True)
            return True
    return False
