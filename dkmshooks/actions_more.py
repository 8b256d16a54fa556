"""The dkms actions beyond the module lifecycle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import DkmsError
from .framework import load_signing
from .sign import prepare_mok

if TYPE_CHECKING:
    from .cli import Args
    from .status import Session


def dispatch(session: Session, action: str, args: Args, pairs: Sequence[tuple[str, str]]) -> int:
    if action in ("mktarball", "ldtarball"):
        from .tarball import dispatch_tarball

        return dispatch_tarball(session, action, args, pairs)
    if action == "generate_mok":
        cfg = load_signing(session.layout, session.environ, "")
        ok, _, _ = prepare_mok(
            session.layout,
            session.settings.distro,
            cfg.mok_signing_key,
            cfg.mok_certificate,
            session.console,
            None,
        )
        return 0 if ok else 1
    raise DkmsError(
        f"The action {action} is not available in this version of dkmshooks yet.",
        "Use the module lifecycle actions (add, build, install, uninstall, unbuild, remove, "
        "status) meanwhile.",
        code=1,
    )
