"""dkms's VER() ordering: runs of 1-2 digits padded to three, then compared as strings."""

from __future__ import annotations

import re

_TOKENS = re.compile(r"\d+|\D+")
_BLANKS = re.compile(r"[ \t\n]+")  # bash's default IFS


def ver_key(version: str) -> str:
    """`2.6.9-1cvs200409091247` → `002.006.009-001cvs200409091247`, as dkms's VER() prints it:
    `echo $1 | sed ...`, step by step, so its quirks hold too: `echo $1` word-splits, a padding
    match eats the blank the next one needs ("1 2" → "001002"), and [0-9] means ASCII digits
    only (tests/reliability/test_properties.py runs dkms's sed as the oracle). Not modelled:
    globbing of `*?[` and a first word echo takes as an option (-n, -e)."""
    text = " ".join(word for word in _BLANKS.split(version) if word)
    text = re.sub(r"([^0-9])([0-9])", r"\1 \2", text)
    text = re.sub(r"([0-9])([^0-9])", r"\1 \2", text)
    text = f" {text} "
    text = re.sub(r" ([0-9]) ", r" 00\1 ", text)
    text = re.sub(r" ([0-9][0-9]) ", r" 0\1 ", text)
    return text.replace(" ", "")


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
