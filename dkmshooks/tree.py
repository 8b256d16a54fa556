"""The DKMS tree on disk: which module/versions exist and their state per kernel/arch.
Pure filesystem reads, in dkms's glob order, no dkms.conf evaluation."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .layout import Layout

_KERNEL_DIR = re.compile(r"^[0-9]+\.")


def _glob_sorted(names: list[str]) -> list[str]:
    # bash glob order in the C locale, which is how hooks and root shells run
    return sorted(names, key=os.fsencode)


def _listdir(path: Path) -> list[str]:
    try:
        return _glob_sorted([n for n in os.listdir(path) if not n.startswith(".")])
    except OSError:
        return []


@dataclass(frozen=True)
class BuiltEntry:
    module: str
    version: str
    kver: str
    arch: str
    installed: bool


@dataclass(frozen=True)
class StatusEntry:
    state: str  # broken | added | built | installed
    module: str
    version: str
    kver: str = ""
    arch: str = ""


class Tree:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def is_broken(self, module: str, version: str) -> bool:
        vdir = self.layout.version_dir(module, version)
        if not module or not version or not vdir.is_dir():
            return False
        src = vdir / "source"
        if src.is_symlink() and not src.is_dir():
            return True
        return not src.is_symlink() and self.layout.module_source(module, version).is_dir()

    def is_added(self, module: str, version: str) -> bool:
        if not module or not version:
            return False
        src = self.layout.source_link(module, version)
        return src.is_symlink() and src.is_dir()

    def is_built(self, module: str, version: str, kver: str, arch: str) -> bool:
        if not (module and version and kver and arch):
            return False
        built = self.layout.built_dir(module, version, kver, arch)
        if built.parent.is_symlink() or built.is_symlink():
            return False  # planted, not built by us: never trusted, never followed (issue #9)
        return (built / "module").is_dir()

    def is_active(self, module: str, version: str, kver: str, arch: str) -> bool:
        link = self.layout.active_link(module, kver, arch)
        if not link.is_symlink():
            return False
        target = os.path.realpath(link)
        return target == os.path.realpath(self.layout.built_dir(module, version, kver, arch))

    def is_installed(self, module: str, version: str, kver: str, arch: str) -> bool:
        return self.is_built(module, version, kver, arch) and self.is_active(
            module, version, kver, arch
        )

    def module_versions(self, module: str = "", version: str = "") -> Iterator[tuple[str, str]]:
        """list_module_version_combos: `$dkms_tree/${m:-*}/${v:-*}` dirs, not kernel-* links."""
        tree = self.layout.dkms_tree
        modules = [module] if module else _listdir(tree)
        for m in modules:
            mdir = tree / m
            if not mdir.is_dir():
                continue
            versions = [version] if version else _listdir(mdir)
            for v in versions:
                if not (mdir / v).is_dir():
                    continue
                if re.match(r"^kernel-.*-", v):
                    continue
                yield m, v

    def built_entries(
        self, module: str, version: str, kver: str = "", arch: str = ""
    ) -> Iterator[BuiltEntry]:
        vdir = self.layout.version_dir(module, version)
        kernels = [kver] if kver else [k for k in _listdir(vdir) if _KERNEL_DIR.match(k)]
        for k in kernels:
            kdir = vdir / k
            arches = [arch] if arch else _listdir(kdir)
            for a in arches:
                if not self.is_built(module, version, k, a):
                    continue
                yield BuiltEntry(module, version, k, a, self.is_active(module, version, k, a))

    def status(
        self, module: str = "", version: str = "", kver: str = "", arch: str = ""
    ) -> Iterator[StatusEntry]:
        for m, v in self.module_versions(module, version):
            if self.is_broken(m, v):
                yield StatusEntry("broken", m, v)
                continue
            if not self.is_added(m, v):
                continue
            any_built = False
            for entry in self.built_entries(m, v, kver, arch):
                any_built = True
                yield StatusEntry(
                    "installed" if entry.installed else "built", m, v, entry.kver, entry.arch
                )
            if not any_built:
                yield StatusEntry("added", m, v)

    def kernel_dirs_left(self, module: str, version: str) -> list[str]:
        vdir = self.layout.version_dir(module, version)
        keep = re.compile(r"(build|tarball|driver_disk|rpm|deb|source)$")
        return [
            n
            for n in _listdir(vdir)
            if (vdir / n).is_dir() and not (vdir / n).is_symlink() and not keep.search(n)
        ]
