"""The DKMS tree on disk: which module/versions exist and their state per kernel/arch.
Pure filesystem reads, in dkms's glob order, no dkms.conf evaluation."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, Optional

from .fsutil import stamp
from .layout import Layout

#: What an answer about the tree rests on, for answers kept between runs (statussnap): each
#: key is a kind and a path, its value what was seen there before the path was looked at:
#: "=path" its stamp (a directory's also stands for its listing, the kinds of its entries and
#: the targets of its symlinks, none of which can change without changing it), "?path" its
#: stamp too, but only its being a directory counts (a file found below it shows that as well),
#: "!" the answer rests on more than files (it is not kept).
Deps = Optional[dict[str, object]]
DOUBT = "!"


def note(deps: Deps, path: str, kind: str = "=") -> None:
    """Record `path`'s stamp in `deps` (if it is not None) before the caller looks at it."""
    if deps is not None and kind + path not in deps:
        deps[kind + path] = stamp(path)


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

    def is_broken(self, module: str, version: str, deps: Deps = None) -> bool:
        if not module or not version:
            return False
        vdir = f"{self._dkms_tree}/{module}/{version}"
        note(deps, vdir)  # also stands for `source` being a symlink, and for its target
        if not os.path.isdir(vdir):
            return False
        src = f"{vdir}/source"
        if os.path.islink(src):
            note(deps, src)
            return not os.path.isdir(src)
        usr_src = os.fspath(self.layout.module_source(module, version))
        note(deps, usr_src)
        return os.path.isdir(usr_src)

    def is_added(self, module: str, version: str, deps: Deps = None) -> bool:
        if not module or not version:
            return False
        vdir = f"{self._dkms_tree}/{module}/{version}"
        note(deps, vdir)
        src = f"{vdir}/source"
        if not os.path.islink(src):
            return False
        note(deps, src)
        return os.path.isdir(src)

    def is_built(self, module: str, version: str, kver: str, arch: str, deps: Deps = None) -> bool:
        if not (module and version and kver and arch):
            return False
        vdir = f"{self._dkms_tree}/{module}/{version}"
        kdir = f"{vdir}/{kver}"
        built = f"{kdir}/{arch}"
        note(deps, vdir)
        if os.path.islink(kdir):
            return False  # planted, not built by us: never trusted, never followed (issue #9)
        note(deps, kdir)
        if os.path.islink(built):
            return False
        note(deps, f"{built}/module", "?")
        return os.path.isdir(f"{built}/module")

    def is_active(self, module: str, version: str, kver: str, arch: str, deps: Deps = None) -> bool:
        """Whether kernel-K-A resolves to the built dir. `deps`: the caller has noted the
        module's dir, which stands for the link (a symlink's target never changes in place)."""
        link = f"{self._dkms_tree}/{module}/kernel-{kver}-{arch}"
        try:
            target = os.readlink(link)
        except OSError:
            return False
        if target == f"{version}/{kver}/{arch}":
            return True  # the link dkms writes: resolves to exactly the built dir
        if deps is not None:
            deps[DOUBT] = []  # resolving it reads more than the module's dir
        return os.path.realpath(link) == os.path.realpath(
            self.layout.built_dir(module, version, kver, arch)
        )

    def is_installed(self, module: str, version: str, kver: str, arch: str) -> bool:
        return self.is_built(module, version, kver, arch) and self.is_active(
            module, version, kver, arch
        )

    def module_names(self, module: str = "", deps: Deps = None) -> list[str]:
        """`${m:-*}` in `$dkms_tree`: the module, or every name there."""
        if module:
            return [module]
        note(deps, self._dkms_tree)
        return _listdir(self._dkms_tree)

    def version_names(self, module: str, version: str = "", deps: Deps = None) -> list[str]:
        """`${v:-*}` in the module's dir, without the kernel-* links; which of them are dirs
        is for the caller to ask. `deps` gets the module's dir even when `version` is given:
        its kernel-* links decide which versions are installed."""
        mdir = os.path.join(self._dkms_tree, module)
        note(deps, mdir)
        names = [version] if version else _listdir(mdir)
        return [v for v in names if not _ACTIVE_LINK.match(v)]

    def module_versions(self, module: str = "", version: str = "") -> Iterator[tuple[str, str]]:
        """list_module_version_combos: `$dkms_tree/${m:-*}/${v:-*}` dirs, not kernel-* links."""
        for m in self.module_names(module):
            mdir = os.path.join(self._dkms_tree, m)
            for v in self.version_names(m, version):
                if os.path.isdir(os.path.join(mdir, v)):
                    yield m, v

    def built_entries(
        self, module: str, version: str, kver: str = "", arch: str = "", deps: Deps = None
    ) -> Iterator[BuiltEntry]:
        """`deps`: as for is_active, the caller has noted the module's dir."""
        vdir = f"{self._dkms_tree}/{module}/{version}"
        note(deps, vdir)
        if kver or arch:
            kernels = [kver] if kver else [k for k in _listdir(vdir) if _KERNEL_DIR.match(k)]
            for k in kernels:
                if arch:
                    arches = [arch]
                else:
                    note(deps, os.path.join(vdir, k))
                    arches = _listdir(os.path.join(vdir, k))
                for a in arches:
                    if self.is_built(module, version, k, a, deps):
                        active = self.is_active(module, version, k, a, deps)
                        yield BuiltEntry(module, version, k, a, active)
            return
        # every kernel and arch: is_built's two symlink tests come from the directory entries
        for k, k_link in _scan(vdir, _KERNEL_DIR):
            if k_link:
                continue
            kdir = f"{vdir}/{k}"
            note(deps, kdir)
            for a, a_link in _scan(kdir):
                if a_link:
                    continue
                note(deps, f"{kdir}/{a}/module", "?")
                if os.path.isdir(f"{kdir}/{a}/module"):
                    active = self.is_active(module, version, k, a, deps)
                    yield BuiltEntry(module, version, k, a, active)

    def status(
        self, module: str = "", version: str = "", kver: str = "", arch: str = ""
    ) -> Iterator[StatusEntry]:
        for m in self.module_names(module):
            for v in self.version_names(m, version):
                yield from self.version_status(m, v, kver, arch)

    def version_status(
        self, module: str, version: str, kver: str = "", arch: str = "", deps: Deps = None
    ) -> list[StatusEntry]:
        """The status lines of one of version_names()'s names (none if it is not a dir).
        `deps`: the caller has noted the module's dir (version_names does)."""
        vdir = os.path.join(self._dkms_tree, module, version)
        note(deps, vdir)
        if not os.path.isdir(vdir):
            return []
        if self.is_broken(module, version, deps):
            return [StatusEntry("broken", module, version)]
        if not self.is_added(module, version, deps):
            return []
        lines = [
            StatusEntry("installed" if e.installed else "built", module, version, e.kver, e.arch)
            for e in self.built_entries(module, version, kver, arch, deps)
        ]
        return lines or [StatusEntry("added", module, version)]

    def kernel_dirs_left(self, module: str, version: str) -> list[str]:
        vdir = self.layout.version_dir(module, version)
        keep = re.compile(r"(build|tarball|driver_disk|rpm|deb|source)$")
        return [
            n
            for n in _listdir(vdir)
            if (vdir / n).is_dir() and not (vdir / n).is_symlink() and not keep.search(n)
        ]
