"""What happened, from whom: the one input of the rebuild engine, built by each adapter."""

from __future__ import annotations

from dataclasses import dataclass, field

from .apttxn import new_transaction_id

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


__all__ = [
    "KERNEL_EVENTS",
    "MODULE_EVENTS",
    "SOURCES",
    "KernelEvent",
    "ModuleEvent",
    "Trigger",
    "new_transaction_id",
]
