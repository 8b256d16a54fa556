from __future__ import annotations

from pathlib import Path

import pytest

from dkmshooks.framework import load_settings
from dkmshooks.layout import Layout
from dkmshooks.session import Options
from dkmshooks.status import Session

from .helpers import Captured


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    return tmp_path


@pytest.fixture
def make_session(root: Path):  # type: ignore[no-untyped-def]
    def make(**options: object) -> tuple[Session, Captured]:
        env = {"PATH": "/usr/bin:/bin", "parallel_jobs": "1"}
        settings = load_settings(Layout(root=root), env)
        console = Captured()
        return (
            Session(settings=settings, options=Options(**options), console=console, environ=env),  # type: ignore[arg-type]
            console,
        )

    return make
