"""The `dkmshooks` command: what dkms has no word for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from . import __version__
from .console import note

USAGE = """\
Usage: dkmshooks COMMAND [options]
  --version          print the version
Commands of the rebuild engine (hook, log, plan, doctor) are being built.
"""


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"dkmshooks {__version__}")
        return 0
    note(f"unknown command {argv[0]!r}; see 'dkmshooks --help'")
    return 2
