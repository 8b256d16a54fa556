"""Shared helpers for unit tests."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
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


def random_conf(
    rng: random.Random,
    names: Sequence[str],
    refs: Sequence[str],
    words: Sequence[str],
    ref_share: float,
) -> str:
    """1-6 assignments `NAME=value` of 0-4 parts, each a reference (with probability
    `ref_share`) or a word; quoted when it holds a blank, and otherwise half of the time."""
    lines = []
    for _ in range(rng.randint(1, 6)):
        parts = [
            rng.choice(refs if rng.random() < ref_share else words)
            for _ in range(rng.randint(0, 4))
        ]
        value = "".join(parts)
        if any(c in value for c in " \t") or rng.random() < 0.5:
            value = f'"{value}"'
        lines.append(f"{rng.choice(names)}={value}\n")
    return "".join(lines)
