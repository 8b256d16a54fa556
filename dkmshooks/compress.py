"""Module compression matching the kernel's (gzip, xz with crc32, zstd)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from . import run

if TYPE_CHECKING:
    from .session import SessionBase as Session


def compress_module(session: Session, module: Path, suffix: str) -> Path | None:
    """Compress in place; returns the compressed file, or None to use the plain module (no
    compression, or the compressor failed — dkms falls back to uncompressed)."""
    settings = session.settings
    if suffix == ".gz":
        argv = ["gzip", *shlex.split(settings.compress_gzip_opts), "-f", str(module)]
    elif suffix == ".xz":
        argv = ["xz", *shlex.split(settings.compress_xz_opts), "-f", str(module)]
    elif suffix == ".zst":
        argv = ["zstd", *shlex.split(settings.compress_zstd_opts), "-f", str(module)]
    else:
        return None
    proc = run.run(argv, check=False)
    target = Path(f"{module}{suffix}")
    if proc.returncode != 0 or not target.exists():
        return None
    return target
