"""Sweep what killed runs left behind. Every crash window of build, install and remove leaves
at most these, all hidden from `dkms status` (dot names) and all recognisable by name:

  <dkms_tree>/<m>/<v>/<kver>/.tmp_<arch>_XXXXXX        a build's staging dir (build.py)
  <dkms_tree>/<m>[/<v>[/<kver>]]/.tmp_rm_<name>_<pid>   a dir renamed to be deleted (fsutil)
  <dkms_tree>/<m>[/<v>]/.<link>.tmp<pid>              a symlink not yet renamed (fsutil)
  <install_tree>/<kver>/<dest>/.<name>.ko.dkmshooks-tmp.*   a module not yet renamed (fsutil)

Only ever called with the tree lock held, so nothing found is still being written. Symlinks
are never followed: a planted `<m>/<v>/<kver>` link to elsewhere is not ours to sweep.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import fsutil
from .layout import Layout

# where dkms's distro overrides and most dkms.conf files put modules (dkmsconf.py)
_DEST_DIRS = ("updates/dkms", "updates", "extra", "kernel/extra")


_SYMLINK_TMP = re.compile(r"^\..+\.tmp[0-9]+$")


def _is_stale(name: str) -> bool:
    return name.startswith(".tmp_") or _SYMLINK_TMP.match(name) is not None


def _dirs(path: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def sweep_module(module_dir: Path) -> list[Path]:
    """Sweep one `<dkms_tree>/<module>` (three levels deep); remove it if that empties it."""
    found: list[Path] = []
    level = [os.fspath(module_dir)]
    for _depth in range(3):
        below: list[str] = []
        for directory in level:
            # every hook walks this: directory entries say what is a real dir, no stat()
            try:
                with os.scandir(directory) as it:
                    for child in it:
                        if _is_stale(child.name):
                            found.append(Path(child.path))
                        elif child.is_dir(follow_symlinks=False):
                            below.append(child.path)
            except OSError:
                pass
        level = below
    for path in found:
        fsutil.remove_tree(path)
    try:
        module_dir.rmdir()  # only if now empty
    except OSError:
        pass
    return found


def _entries(directory: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(directory)]
    except OSError:
        return []


def sweep(layout: Layout) -> list[Path]:
    found: list[Path] = []
    for module_dir in _dirs(layout.dkms_tree):
        if not module_dir.name.startswith("."):
            found += sweep_module(module_dir)
    for kernel_dir in _dirs(layout.install_tree):
        for dest in _DEST_DIRS:
            for child in _entries(kernel_dir / dest):
                if child.name.startswith(".") and fsutil.TMP_MARK in child.name:
                    child.unlink(missing_ok=True)
                    found.append(child)
    return found
