"""modinfo version facts and dkms's module version comparison. The `.modinfo` ELF section is
read directly (plain, gzip or xz modules); anything else falls back to the real `modinfo`."""

from __future__ import annotations

import gzip
import lzma
import struct
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


def elf_modinfo(data: bytes) -> list[tuple[str, str]] | None:
    """key=value pairs of the `.modinfo` section of an ELF64 little-endian object, or None."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    try:
        shoff = struct.unpack_from("<Q", data, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        if shentsize < 64 or shstrndx >= shnum:
            return None

        def section(i: int) -> tuple[int, int, int]:
            name, _type, _flags, _addr, offset, size = struct.unpack_from(
                "<IIQQQQ", data, shoff + i * shentsize
            )
            return name, offset, size

        _, str_off, str_size = section(shstrndx)
        names = data[str_off : str_off + str_size]
        for i in range(shnum):
            name_off, offset, size = section(i)
            end = names.find(b"\0", name_off)
            if names[name_off:end] == b".modinfo":
                raw = data[offset : offset + size]
                pairs = []
                for item in raw.split(b"\0"):
                    key, sep, value = item.partition(b"=")
                    if sep:
                        pairs.append(
                            (key.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
                        )
                return pairs
    except struct.error:
        return None
    return []


def _read_module(path: Path) -> bytes | None:
    try:
        if path.name.endswith(".ko"):
            return path.read_bytes()
        if path.name.endswith(".ko.gz"):
            return gzip.decompress(path.read_bytes())
        if path.name.endswith(".ko.xz"):
            return lzma.decompress(path.read_bytes())
    except (OSError, EOFError, lzma.LZMAError, gzip.BadGzipFile):
        return None
    return None


def module_verinfo(path: Path | None) -> tuple[str, str]:
    if path is None:
        return "", ""
    data = _read_module(path)
    pairs = elf_modinfo(data) if data is not None else None
    if pairs is not None:
        fields = dict(pairs)
        version_words = fields.get("version", "").split()
        version = version_words[0] if version_words else ""
        checksum = version_words[1] if len(version_words) > 1 else ""
        srcversion = fields.get("srcversion", "").split()
        return version, (srcversion[0] if srcversion else "") or checksum
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
