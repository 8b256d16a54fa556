"""What happened, from whom: the one input of the rebuild engine, built by each adapter."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

SOURCES = ("apt", "dnf", "pacman", "kernel-install", "cli", "boot")
KERNEL_EVENTS = (
    "image-added",  # the kernel's own modules and image are in place (postinst, kernel-install add)
    "headers-added",  # its build tree is in place (header_postinst, kernel-devel)
    "image-preinst",  # the image is about to be (re)installed: built modules may be stale
    "image-removed",  # the kernel is going away: uninstall and unbuild everything for it
    "headers-removed",  # only the build tree goes away: installed modules stay
)
MODULE_EVENTS = ("added", "removed")


@dataclass(frozen=True)
class KernelEvent:
    kver: str
    event: str

    def __post_init__(self) -> None:
        if self.event not in KERNEL_EVENTS:
            raise ValueError(f"unknown kernel event {self.event!r}")
        if not self.kver or "/" in self.kver or self.kver in (".", ".."):
            raise ValueError(f"invalid kernel release {self.kver!r}")


@dataclass(frozen=True)
class ModuleEvent:
    module: str
    version: str
    event: str

    def __post_init__(self) -> None:
        if self.event not in MODULE_EVENTS:
            raise ValueError(f"unknown module event {self.event!r}")


@dataclass(frozen=True)
class Trigger:
    source: str
    transaction: str
    kernels: tuple[KernelEvent, ...] = ()
    modules: tuple[ModuleEvent, ...] = ()
    #: the distro's name for the headers package of a kernel, for "install X" messages
    headers_package_hint: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown trigger source {self.source!r}")


def new_transaction_id() -> str:
    """A fresh id when the package manager gives none: random first (shown shortened), then time."""
    # os.urandom, not uuid4: `import uuid` (and the platform module it pulls in) costs more
    # than the rest of a no-op hook's imports
    return f"{os.urandom(4).hex()}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
