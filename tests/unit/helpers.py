"""Shared helpers for unit tests."""

from __future__ import annotations

import io

from dkmshooks.console import Console


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
