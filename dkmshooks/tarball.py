"""dkms mktarball and ldtarball (source, source+binaries, binaries-only), with safe extraction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DkmsError

if TYPE_CHECKING:
    from .cli import Args
    from .status import Session


def dispatch_tarball(
    session: Session, action: str, args: Args, pairs: Sequence[tuple[str, str]]
) -> int:
    raise DkmsError(f"The action {action} is not available in this version of dkmshooks yet.")


def load_tarball_for_add(session: Session, archive: Path, kver: str, arch: str) -> tuple[str, str]:
    """`dkms add x.tar.gz` / `dkms ldtarball`: unpack and register; returns (module, version)."""
    raise DkmsError("Loading tarballs is not available in this version of dkmshooks yet.", code=7)
