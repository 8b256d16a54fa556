"""`dkms status`'s answer, kept between runs with what it rests on (a status snapshot).

A status line costs about ten system calls and a conf-cache lookup when it is worked out: the
listings of its module, version and kernel dirs, the kernel-K-A link, the built and installed
modules and the extras memo. A snapshot keeps, per query (filters, kernels, `--json`), the
output of each module/version ("section") with the stamps (fsutil.stamp) of the paths it was
computed from, each taken before the path was looked at (tree.Deps). A directory's stamp
stands for its listing, the kinds of its entries and the targets of its symlinks: none of them
can change without changing its mtime and ctime. So a kept section is checked with one stat()
of its version dir, one per kernel dir and one per built and installed module (in-place
rewrites are what "(Differences between built and installed modules)" reports, so those are
stat()ed every time), and printed as it was. A section that fails its check is worked out again
(and kept again); the rest are reused.

Not kept: a section that printed anything else (errors, warnings), that rests on more than
files (a non-canonical kernel-K-A link, a compressed module, a module found elsewhere: tree.DOUBT)
or on a path changed less than confcache.RACY_NS before the run began (a second change in the
same file-system clock tick would leave the same stamp).

The whole snapshot also rests on the session (settings, options), dkmshooks's own code, the
entries of /etc/dkms and, per kernel, the context and config files the confs were evaluated
with (confcache.kernel_key); a change there drops every section. Like the rest of confcache
it does not follow what a dkms.conf reads besides its overrides (docs/decisions.md).

One marshal file per query under /var/lib/dkmshooks/confcache/status, written to a temporary
file and renamed; only a file owned by root or the caller is read, and anything unexpected in
one is a miss. At most KEEP queries are kept.
"""

from __future__ import annotations

import marshal
import os
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import confcache
from .fsutil import Stamp, stamp
from .tree import DOUBT, Tree

MAGIC = "dkmshooks-status-snapshot-1"
KEEP = 8
_PACK = struct.Struct("=Qqqq").pack
#: stat() needs only search permission on the dirs above a file; so does an O_PATH descriptor
_ANCHOR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
MAX_ANCHORS = 64


STAMP_SIZE = 32
#: no file has inode 0
ABSENT = bytes(STAMP_SIZE)


def packed(path: str) -> bytes:
    """fsutil.stamp(path), in the form a snapshot keeps (ABSENT for a path that is not there):
    bytes load much faster than four large ints."""
    return _packed(stamp(path))


def _packed(old: Stamp) -> bytes:
    return _PACK(*old) if old else ABSENT


def _code_stamps() -> list[tuple[str, Stamp]]:
    """Every module of the package: a snapshot is only as good as the code that wrote it."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        names = sorted(n for n in os.listdir(here) if n.endswith(".py"))
    except OSError:
        return [("", [])]
    return [(name, stamp(os.path.join(here, name))) for name in names]


def _dir_stamps(directory: str) -> list[tuple[str, Stamp]]:
    """The directory's stamp and each of its entries' (/etc/dkms: overrides, framework.conf)."""
    out = [(directory, stamp(directory))]
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return out
    return out + [(name, stamp(os.path.join(directory, name))) for name in names]


class Snapshot:
    """One query's snapshot: the one read at the start (`old`) and the one being written."""

    def __init__(
        self,
        directory: Path,
        key: str,
        etc_dkms: str,
        kernel_key: Callable[[str, str], str],
        read_only: bool,
    ) -> None:
        self.directory = directory
        raw = key.encode("utf-8", "surrogateescape")
        # a name per query (hashlib costs more to import than it would save; two queries with
        # one name only take turns: the key inside decides)
        self.path = directory / f"{zlib.crc32(raw):08x}{zlib.adler32(raw):08x}.snap"
        self.read_only = read_only
        self.started = time.time_ns()
        self._kernel_key = kernel_key
        self._kernel_now: dict[str, str] = {}
        # taken before anything below is looked at
        self.header = (MAGIC, python_tag(), key, _code_stamps(), _dir_stamps(etc_dkms))
        self.racy_header = confcache.racy((s for _, s in self.header[4]), self.started)
        old = self._load()
        self.old_kernels: dict[str, str] = old[1] if old else {}
        self.old_tree: tuple[Any, list[str]] | None = old[2] if old else None
        self.old_modules: dict[str, list[Any]] = old[3] if old else {}
        self.kernels: dict[str, str] = {}
        self.tree: tuple[bytes | None, list[str]] | None = None
        self.modules: dict[str, list[Any]] = {}
        self.changed = old is None
        self._root_slash = "/"
        self._anchors: dict[str, int] = {}
        self._strings: dict[str, str] = {}

    # -- reading -------------------------------------------------------------------------------

    def _load(self) -> tuple[Any, ...] | None:
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_uid not in (0, os.geteuid()):
                    return None
                data = marshal.loads(fh.read())  # marshal.load(fh) reads in small pieces
        except (OSError, EOFError, ValueError, TypeError):
            return None
        if (
            not isinstance(data, tuple)
            or len(data) != 4
            or data[0] != self.header
            or not isinstance(data[1], dict)
            or not (data[2] is None or (isinstance(data[2], tuple) and len(data[2]) == 2))
            or not isinstance(data[3], dict)
            or not all(
                isinstance(rec, list)
                and len(rec) == 3
                and isinstance(rec[1], list)
                and isinstance(rec[2], dict)
                for rec in data[3].values()
            )
        ):
            return None
        return data

    def kernel_holds(self, name: str) -> bool:
        """Whether the kernel part of the conf keys ("K\\0A") is what the snapshot was made with."""
        now = self._kernel_now.get(name)
        if now is None:
            kver, _, arch = name.partition("\0")
            now = self._kernel_now[name] = self._kernel_key(kver, arch)
        return self.old_kernels.get(name) == now

    def walk(self, tree: Tree, module: str, version: str) -> Iterator[tuple[str, list[str]]]:
        """(module, version names) as Tree.module_names/version_names give them, from the
        snapshot where the directory listed has not changed."""
        root = tree.layout.dkms_tree.as_posix()
        self._root_slash = root.rstrip("/") + "/"
        if module:
            names = [module]
        else:
            now = stamp(root)
            seen = _packed(now)
            old = self.old_tree
            if old is not None and old[0] == seen:
                names = old[1]
            else:
                names = tree.module_names()
                self.changed = True
            self.tree = (None if confcache.racy([now], self.started) else seen, names)
        for m in names:
            mdir = os.path.join(root, m)
            now = stamp(mdir)
            seen = _packed(now)
            rec = self.old_modules.get(m)
            if rec is not None and rec[0] == seen:
                versions = rec[1]
                old_sections = rec[2]
            else:
                versions = tree.version_names(m, version)
                old_sections = {}
                self.changed = True
            kept = None if confcache.racy([now], self.started) else seen
            self.modules[m] = [kept, versions, {}, old_sections]
            yield m, versions

    def section(self, module: str, target: int, version: str) -> str | None:
        """The kept output of a section whose deps all hold (and keeps it for the next run)."""
        rec = self.modules[module]
        kept = rec[3].get((target, version))
        if kept is None:
            return None
        try:
            text, anchors, which, names, stamps, kernels = kept
            if not self._holds(anchors, which, names.split("\0"), stamps):
                return None
            for name in kernels:
                if not self.kernel_holds(name):
                    return None
        except (TypeError, ValueError, IndexError):
            return None  # not what keep() writes
        for name in kernels:
            self.kernels[name] = self.old_kernels[name]
        rec[2][(target, version)] = kept
        return text  # type: ignore[no-any-return]

    def _holds(
        self, anchors: Sequence[str], which: bytes, names: Sequence[str], stamps: bytes
    ) -> bool:
        """Whether each `anchors[which[i]]/names[i]` has stamp i (STAMP_SIZE bytes each). The
        names are looked up from a descriptor of their anchor (the section's module dir, or a dir
        many sections share, which stays open): a shorter walk per stat(), and the same answer
        as the whole path's at this moment."""
        if len(self._anchors) + len(anchors) > MAX_ANCHORS:
            self.close()  # not while a section holds some of them
        fds = [self._open(anchor) for anchor in anchors]
        try:
            stat = os.stat
            at = 0
            for i, name in zip(which, names):
                fd = fds[i]
                if fd < 0:  # the anchor could not be opened: the path answers for itself
                    now = packed(os.path.join(anchors[i], name))
                else:
                    try:
                        st = stat(name, dir_fd=fd)
                        now = _PACK(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    except OSError:
                        now = ABSENT
                if now != stamps[at : at + STAMP_SIZE]:
                    return False
                at += STAMP_SIZE
            return at == len(stamps)
        finally:
            for anchor, fd in zip(anchors, fds):
                if fd >= 0 and anchor not in self._anchors:
                    os.close(fd)

    def _open(self, anchor: str) -> int:
        """A descriptor of `anchor` (-1 if it cannot be opened); one shared by many sections (not
        below the DKMS tree) stays open for the run."""
        fd = self._anchors.get(anchor)
        if fd is not None:
            return fd
        try:
            fd = os.open(anchor, _ANCHOR_FLAGS)
        except OSError:
            fd = -1
        if not anchor.startswith(self._root_slash):
            self._anchors[anchor] = fd
        return fd

    def close(self) -> None:
        """Close the shared anchors' descriptors."""
        for fd in self._anchors.values():
            if fd >= 0:
                os.close(fd)
        self._anchors.clear()

    # -- writing -------------------------------------------------------------------------------

    def keep(self, module: str, target: int, version: str, text: str, deps: dict[str, Any]) -> None:
        """A section just worked out (`text`: its output, as section() is to give it back), if
        it may be kept (see the module docstring)."""
        self.changed = True
        rec = self.modules[module]
        if DOUBT in deps or rec[0] is None:
            return
        stamps = [old for key, old in deps.items() if key[:1] in "=?"]
        if confcache.racy(stamps, self.started):
            return
        for key, value in deps.items():
            if key[:1] == "@" and self.kernels.setdefault(key[1:], value) != value:
                return  # the kernel changed during the run
        # "?dir" is implied by a file in it that is there
        holding = {os.path.dirname(key[1:]) for key, old in deps.items() if key[:1] == "=" and old}
        mdir = self._root_slash + module
        anchors: dict[str, int] = {mdir: 0}
        which, names, stamps, kernels = bytearray(), [], [], []
        for key, old in deps.items():
            path = key[1:]
            if key[:1] == "@":
                kernels.append(self._strings.setdefault(path, path))
                continue
            if key[:1] == "?" and old and path in holding:
                continue
            if path.startswith(mdir + "/"):  # everything of the module's own
                anchor, name = mdir, path[len(mdir) + 1 :]
            else:
                anchor, name = os.path.split(path)
                anchor = self._strings.setdefault(anchor, anchor)  # written once per file
            index = anchors.setdefault(anchor, len(anchors))
            if index > 255 or "\0" in name:
                return
            which.append(index)
            names.append(name or ".")
            stamps.append(_packed(old))
        rec[2][(target, version)] = (
            text,
            tuple(anchors),
            bytes(which),
            "\0".join(names),
            b"".join(stamps),
            tuple(kernels),
        )

    def save(self) -> None:
        """Write the snapshot, if anything changed and it may; quietly nothing otherwise."""
        if not self.changed or self.read_only or self.racy_header:
            return
        modules = {m: rec[:3] for m, rec in self.modules.items()}
        data = (self.header, self.kernels, self.tree, modules)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                marshal.dump(data, fh)
            os.replace(tmp, self.path)
        except (OSError, ValueError):
            try:
                tmp.unlink()
            except OSError:
                pass
            return
        self._prune()

    def _prune(self) -> None:
        try:
            entries = [e for e in os.scandir(self.directory) if e.name.endswith(".snap")]
            entries.sort(key=lambda e: e.stat().st_mtime_ns, reverse=True)
            for e in entries[KEEP:]:
                os.unlink(e.path)
        except OSError:
            pass


def python_tag() -> str:
    """marshal's format is the interpreter's: a snapshot is read by the Python that wrote it."""
    return f"{sys.implementation.cache_tag}:{marshal.version}"
