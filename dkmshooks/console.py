"""Line-flushed stdout/stderr in dkms's voice (error/warn/deprecated) and in dkmshooks's."""

from __future__ import annotations

import sys
from typing import TextIO


class Console:
    """Writes go straight to the streams and are flushed, so interleaving with children matches."""

    #: True when output is recorded for later (parallel tasks): children's output is captured too
    captures = False

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def echo(self, *lines: str) -> None:
        self.write("".join(f"{line}\n" for line in lines) if lines else "\n")

    def write_err(self, text: str) -> None:
        self.out.flush()
        self.err.write(text)
        self.err.flush()

    def echo_err(self, *lines: str) -> None:
        self.write_err("".join(f"{line}\n" for line in lines) if lines else "\n")

    def error(self, *lines: str) -> None:
        """dkms's error(): an empty line, then `Error! ` before the first line, all on stderr."""
        body = "".join(f"{line}\n" for line in lines)
        self.write_err(f"\nError! {body}")

    def warn(self, *lines: str) -> None:
        body = "".join(f"{line}\n" for line in lines)
        self.write_err(f"Warning: {body}")

    def deprecated(self, *lines: str) -> None:
        body = "".join(f"{line}\n" for line in lines)
        self.write_err(f"Deprecated feature: {body}")

    def flush(self) -> None:
        self.out.flush()
        self.err.flush()


def note(message: str) -> None:
    """dkmshooks's own voice: one line on stderr that says who is speaking."""
    sys.stdout.flush()
    sys.stderr.write(f"dkmshooks: {message}\n")
    sys.stderr.flush()
