"""dkms's VER() ordering: runs of 1-2 digits padded to three, then compared as strings."""

from __future__ import annotations

import re

_TOKENS = re.compile(r"\d+|\D+")


def ver_key(version: str) -> str:
    """`2.6.9-1cvs200409091247` → `002.006.009-001cvs200409091247`, as dkms's VER() prints it."""
    out = []
    for token in _TOKENS.findall(version.replace(" ", "")):
        if token.isdigit() and len(token) < 3:
            token = token.rjust(3, "0")
        out.append(token)
    return "".join(out)


def ver_gt(a: str, b: str) -> bool:
    return ver_key(a).encode() > ver_key(b).encode()


def ver_lt(a: str, b: str) -> bool:
    return ver_key(a).encode() < ver_key(b).encode()


def natural_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """An approximation of `sort -V` for ordering kernels in `--all`."""
    parts: list[tuple[int, int | str]] = []
    for token in _TOKENS.findall(version):
        parts.append((0, int(token)) if token.isdigit() else (1, token))
    return tuple(parts)
