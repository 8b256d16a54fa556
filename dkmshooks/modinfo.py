"""modinfo version facts and dkms's module version comparison."""

from __future__ import annotations

from pathlib import Path

from . import run
from .versions import ver_gt


def parse_modinfo(text: str) -> tuple[str, str]:
    """(version, srcversion-or-checksum) from `modinfo` output, as dkms's get_module_verinfo."""
    version = srcversion = checksum = ""
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "version:":
            version = words[1] if len(words) > 1 else ""
            checksum = words[2] if len(words) > 2 else ""
        elif words[0] == "srcversion:":
            srcversion = words[1] if len(words) > 1 else ""
    return version, srcversion or checksum


def module_verinfo(path: Path | None) -> tuple[str, str]:
    if path is None:
        return "", ""
    proc = run.run(["modinfo", str(path)], check=False, capture=True)
    if proc.returncode != 0:
        return "", ""
    return parse_modinfo(proc.stdout)


def compare_versions(a: tuple[str, str], b: tuple[str, str]) -> str:
    """dkms's compare_module_version: `==`, `=`, `>` (a newer) or `<`."""
    if a[0] == b[0]:
        return "==" if a[1] == b[1] else "="
    if ver_gt(a[0], b[0]):
        return ">"
    return "<"
