"""The DKMS tree on disk: which module/versions exist and their state per kernel/arch.
Pure filesystem reads, in dkms's glob order, no dkms.conf evaluation."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from .layout import Layout

_KERNEL_DIR = re.compile(r"^[0-9]+\.")
_ACTIVE_LINK = re.compile(r"^kernel-.*-")


def _glob_sorted(names: list[str]) -> list[str]:
    # bash glob order in the C locale, which is how hooks and root shells run; for ASCII names
    # (nearly all) code point order is that byte order, and much cheaper to get
    if all(n.isascii() for n in names):
        return sorted(names)
    return sorted(names, key=os.fsencode)


def _listdir(path: str | Path) -> list[str]:
    try:
        return _glob_sorted([n for n in os.listdir(path) if not n.startswith(".")])
    except OSError:
        return []


def _scan(path: str, pattern: re.Pattern[str] | None = None) -> list[tuple[str, bool]]:
    """_listdir's names (only those `pattern` matches), each with whether it is a symlink."""
    try:
        with os.scandir(path) as it:
            found = {
                e.name: e.is_symlink()
                for e in it
                if not e.name.startswith(".") and (pattern is None or pattern.match(e.name))
            }
    except OSError:
        return []
    return [(name, found[name]) for name in _glob_sorted(list(found))]


class BuiltEntry(NamedTuple):  # a tuple: one per status line, built fast
    module: str
    version: str
    kver: str
    arch: str
    installed: bool


class StatusEntry(NamedTuple):
    state: str  # broken | added | built | installed
    module: str
    version: str
    kver: str = ""
    arch: str = ""


class Tree:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        # as a string without a trailing slash: the names joined to it come from listdir or
        # from check_name, never absolute, so f-strings join them as os.path.join would
        self._dkms_tree = os.fspath(layout.dkms_tree).rstrip("/")

    # The predicates below run for every status line and plan entry (10,000 of them on a big
    # tree), so they use os.path on strings rather than pathlib (docs/performance.md).

    def is_broken(self, module: str, version: str) -> bool:
        if not module or not version:
            return False
        vdir = f"{self._dkms_tree}/{module}/{version}"
        if not os.path.isdir(vdir):
            return False
        src = f"{vdir}/source"
        if os.path.islink(src):
            return not os.path.isdir(src)
        return self.layout.module_source(module, version).is_dir()

    def is_added(self, module: str, version: str) -> bool:
        if not module or not version:
            return False
        src = f"{self._dkms_tree}/{module}/{version}/source"
        return os.path.islink(src) and os.path.isdir(src)

    def is_built(self, module: str, version: str, kver: str, arch: str) -> bool:
        if not (module and version and kver and arch):
            return False
        kdir = f"{self._dkms_tree}/{module}/{version}/{kver}"
        built = f"{kdir}/{arch}"
        if os.path.islink(kdir) or os.path.islink(built):
            return False  # planted, not built by us: never trusted, never followed (issue #9)
        return os.path.isdir(f"{built}/module")

    def is_active(self, module: str, version: str, kver: str, arch: str) -> bool:
        link = f"{self._dkms_tree}/{module}/kernel-{kver}-{arch}"
        try:
            target = os.readlink(link)
        except OSError:
            return False
        if target == f"{version}/{kver}/{arch}":
            return True  # the link dkms writes: resolves to exactly the built dir
        return os.path.realpath(link) == os.path.realpath(
            self.layout.built_dir(module, version, kver, arch)
        )

    def is_installed(self, module: str, version: str, kver: str, arch: str) -> bool:
        return self.is_built(module, version, kver, arch) and self.is_active(
            module, version, kver, arch
        )

    def module_versions(self, module: str = "", version: str = "") -> Iterator[tuple[str, str]]:
        """list_module_version_combos: `$dkms_tree/${m:-*}/${v:-*}` dirs, not kernel-* links."""
        tree = self._dkms_tree
        modules = [module] if module else _listdir(tree)
        for m in modules:
            mdir = os.path.join(tree, m)
            if not os.path.isdir(mdir):
                continue
            versions = [version] if version else _listdir(mdir)
            for v in versions:
                if _ACTIVE_LINK.match(v) or not os.path.isdir(os.path.join(mdir, v)):
                    continue
                yield m, v

    def built_entries(
        self, module: str, version: str, kver: str = "", arch: str = ""
    ) -> Iterator[BuiltEntry]:
        vdir = f"{self._dkms_tree}/{module}/{version}"
        if kver or arch:
            kernels = [kver] if kver else [k for k in _listdir(vdir) if _KERNEL_DIR.match(k)]
            for k in kernels:
                arches = [arch] if arch else _listdir(os.path.join(vdir, k))
                for a in arches:
                    if self.is_built(module, version, k, a):
                        yield BuiltEntry(
                            module, version, k, a, self.is_active(module, version, k, a)
                        )
            return
        # every kernel and arch: is_built's two symlink tests come from the directory entries
        for k, k_link in _scan(vdir, _KERNEL_DIR):
            if k_link:
                continue
            kdir = f"{vdir}/{k}"
            for a, a_link in _scan(kdir):
                if not a_link and os.path.isdir(f"{kdir}/{a}/module"):
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
