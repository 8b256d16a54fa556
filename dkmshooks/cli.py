"""Entry points of the `dkms` and `dkmshooks` commands, as the packages' wrappers import them
(`from dkmshooks.cli import dkmshooks_main`).

Nothing is imported here at start-up: a package-manager hook for a kernel that needs nothing is
answered by fasthook before the engine is loaded. The commands themselves are dkmscli's; its
other names stay reachable from here (`from dkmshooks.cli import parse_args`)."""

from __future__ import annotations

import os
import sys


def dkms_main() -> None:
    from .dkmscli import dkms_main as main

    main()


def dkmshooks_main() -> None:
    from .fasthook import answer

    rc = answer(sys.argv[1:], os.environ)
    if rc is not None:
        sys.exit(rc)
    from .dkmscli import dkmshooks_main as main

    main()


def __getattr__(name: str) -> object:
    if name.startswith("__"):  # the import system asks for __path__ & co.: not dkmscli's
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import dkmscli

    try:
        return getattr(dkmscli, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


__all__ = ["dkms_main", "dkmshooks_main"]
