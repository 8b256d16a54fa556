"""modinfo version facts and dkms's module version comparison. The `.modinfo` ELF section is
read directly (plain, gzip or xz modules); anything else falls back to the real `modinfo`."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from . import run
from .versions import ver_gt


def parse_modinfo(text: str) -> tuple[str, str]:
    """(version, srcversion-or-checksum) from `modinfo` output, exactly as dkms's
    get_module_verinfo reads it: `while read -a vals ... done <<< "$(modinfo "$1")"`
    (tests/reliability/test_properties.py runs that bash as the oracle)."""
    version = srcversion = checksum = ""
    for words in _read_a(text.replace("\0", "").rstrip("\n") + "\n"):
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
    # gzip and lzma are imported for compressed modules only: every dkms command imports this
    # module, few read a compressed one
    try:
        if path.name.endswith(".ko"):
            return path.read_bytes()
        if path.name.endswith(".ko.gz"):
            import gzip

            try:
                return gzip.decompress(path.read_bytes())
            except gzip.BadGzipFile:
                return None
        if path.name.endswith(".ko.xz"):
            import lzma

            try:
                return lzma.decompress(path.read_bytes())
            except lzma.LZMAError:
                return None
    except (OSError, EOFError):
        return None
    return None


def _read_a(data: str) -> Iterator[list[str]]:
    """bash's `read -a` without -r, line after line: words split on blanks (default IFS), a
    backslash quotes the next character, a backslash-newline joins two lines. A last line that
    a continuation left without its newline is never seen: `read` fails there."""
    words: list[str] = []
    word, in_word = "", False
    i = 0
    while i < len(data):
        char = data[i]
        if char == "\\":
            quoted = data[i + 1 : i + 2]
            i += 2
            if quoted not in ("\n", ""):
                word, in_word = word + quoted, True
            continue
        i += 1
        if char == "\n":
            if in_word:
                words.append(word)
            yield words
            words, word, in_word = [], "", False
        elif char in " \t":
            if in_word:
                words.append(word)
            word, in_word = "", False
        else:
            word, in_word = word + char, True


def module_verinfo(path: Path | None) -> tuple[str, str]:
    if path is None:
        return "", ""
    data = _read_module(path)
    pairs = elf_modinfo(data) if data is not None else None
    if pairs is not None:
        # printed as modinfo prints them, then read as dkms reads modinfo's output
        return parse_modinfo("".join(f"{key}:        {value}\n" for key, value in pairs))
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
