"""Shared helpers for unit tests."""

from __future__ import annotations

import io
from pathlib import Path

from dkmshooks.console import Console
from dkmshooks.dkmsconf import ConfContext


class Captured(Console):
    def __init__(self) -> None:
        super().__init__(out=io.StringIO(), err=io.StringIO())
        self.merged: list[str] = []

    def write(self, text: str) -> None:
        self.merged.append(text)
        super().write(text)

    def write_err(self, text: str) -> None:
        self.merged.append(text)
        super().write_err(text)

    @property
    def text(self) -> str:
        return "".join(self.merged)


def conf_context(root: Path, **kw: object) -> ConfContext:
    """The ConfContext dkms gives a dkms.conf, with every tree under `root` and kernel `K`."""
    base = dict(
        etc_dkms=root / "etc/dkms",
        distro="debian",
        addon_modules_dir="",
        dkms_tree=root / "var/lib/dkms",
        source_tree=root / "usr/src",
        install_tree=root / "lib/modules",
        tmp_location=Path("/tmp"),
        parallel_jobs="1",
        kernel_source_dir=root / "lib/modules/K/build",
        kernel_config=root / "lib/modules/K/build/.config",
        environ={"PATH": "/usr/bin:/bin"},
    )
    base.update(kw)
    return ConfContext(**base)  # type: ignore[arg-type]
