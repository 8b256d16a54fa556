"""Package-manager adapters: each turns what one manager tells its hooks into a `Trigger` and hands
it to `dkmshooks.engine.handle_trigger`. Adapters never decide what to build, and the core never
imports an adapter."""

from __future__ import annotations

from dkmshooks.errors import DkmsError
from dkmshooks.layout import Layout


def is_strict(layout: Layout) -> bool:
    """`strict = true` in config.toml: the hooks may then fail the transaction. An unreadable
    config counts as not strict, as the engine itself treats it."""
    from dkmshooks.config import load_config

    try:
        return load_config(layout).strict
    except DkmsError:
        return False
