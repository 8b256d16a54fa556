"""Unpacking an untrusted tar archive: every member is validated before anything is written.

Refused: absolute paths, `..` components, members inside symlinks, symlinks that lead outside the
archive (following the archive's own links as the kernel would), hard links to anything but an
earlier regular file, device nodes and FIFOs, and archives past a member count or unpacked size
(checked on the decompressed stream, so pax-header bombs are bounded too). Members are written by
us, without owners, set-id bits or group/other write.
"""

from __future__ import annotations

import bz2
import gzip
import importlib
import io
import lzma
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from .errors import DkmsError


@dataclass(frozen=True)
class Limits:
    """What an archive may unpack to. dkms tarballs hold a source tree and a few .ko files."""

    members: int = 100_000
    total_bytes: int = 4 << 30
    #: headers, padding and end-of-archive blocks on top of the members' data
    overhead_bytes: int = 256 << 20


DEFAULT_LIMITS = Limits()


class InvalidTarballError(DkmsError):
    code = 7


def zstd_file() -> Callable[..., IO[bytes]] | None:
    """Python 3.14's compression.zstd, when this Python has it."""
    try:
        module = importlib.import_module("compression.zstd")
    except ImportError:
        return None
    return cast("Callable[..., IO[bytes]] | None", getattr(module, "ZstdFile", None))


class _Unsafe(Exception):
    def __init__(self, member: str, reason: str) -> None:
        super().__init__(reason)
        self.member = member
        self.reason = reason


class _Corrupt(Exception):
    """Reading the archive failed: not a tar, truncated, corrupt, unreadable."""


class _WriteFailed(Exception):
    """Writing into the private directory failed ($TMPDIR full, read-only, ...)."""

    def __init__(self, member: str, error: OSError) -> None:
        super().__init__(error.strerror or str(error))
        self.member = member


def unsafe_error(archive: Path, member: str, reason: str) -> InvalidTarballError:
    what = f"member '{member}': {reason}." if member else f"{reason}."
    return InvalidTarballError(
        f"Refusing to load {archive}:",
        what,
        "Nothing was written. A DKMS tarball only holds relative paths that stay inside it;",
        f"inspect this one with 'tar -tvvf {archive}' and get a clean copy from its provider.",
    )


def _corrupt_error(archive: Path, detail: str) -> InvalidTarballError:
    return InvalidTarballError(
        f"Cannot unpack {archive}: {detail}.",
        "It is not a tar archive, or it is truncated or corrupt. Nothing was written.",
        "Fetch or copy the file again.",
    )


@dataclass(frozen=True)
class _Member:
    path: str  # normalised: relative, no "", "." or ".." components
    kind: str  # dir | file | symlink | hardlink
    info: tarfile.TarInfo
    target: str = ""  # symlink target as stored, or the hard link's normalised member path


def unpack(archive: Path, dest: Path, limits: Limits = DEFAULT_LIMITS) -> None:
    """Validate every member of `archive`, then unpack it into the empty directory `dest`.
    Raises InvalidTarballError (code 7) naming the offending member; on error, `dest` may hold
    part of the archive and the caller discards it."""
    try:
        with _open_raw(archive) as raw, _open_archive(raw, archive, limits) as tar:
            members = _scan(tar, limits)
            _extract(tar, members, dest)
    except _Unsafe as exc:
        raise unsafe_error(archive, exc.member, exc.reason) from None
    except _WriteFailed as exc:
        raise DkmsError(
            f"Cannot unpack '{exc.member}' from {archive} into {dest}: {exc}.",
            "Nothing was written to the source or DKMS trees. "
            "Check the free space and permissions of $TMPDIR.",
        ) from None
    except _Corrupt as exc:
        raise _corrupt_error(archive, str(exc)) from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, ValueError, OSError) as exc:
        detail = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        raise _corrupt_error(archive, detail or type(exc).__name__) from None


def _open_raw(archive: Path) -> IO[bytes]:
    try:
        return open(archive, "rb")
    except OSError as exc:
        raise InvalidTarballError(f"Cannot read {archive}: {exc.strerror or exc}.") from None


class _Bounded(io.RawIOBase):
    """The decompressed stream, refusing to yield more than `limit` bytes. tarfile reads whole
    pax and GNU long-name headers into memory, so this bounds memory as well as disk."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        super().__init__()
        self._inner = inner
        self._limit = limit

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _check(self, end: int) -> None:
        if end > self._limit:
            raise _Unsafe("", f"it unpacks to more than {self._limit} bytes")

    def read(self, size: int | None = -1) -> bytes:
        # Never ask the decompressor for more than one byte past the limit: RawIOBase.read
        # would allocate a buffer of whatever size a hostile header claims.
        pos = self._inner.tell()
        room = self._limit + 1 - pos
        want = room if size is None or size < 0 else min(size, room)
        data = self._inner.read(max(want, 0))
        self._check(pos + len(data))
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._check(offset)
        elif whence == io.SEEK_CUR:
            self._check(self._inner.tell() + offset)
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()


_UNSUPPORTED_MAGIC = (
    (b"\x1f\x9d", "compress (.Z)", "uncompress"),
    (b"LZIP", "lzip", "lzip -d"),
    (b"\x89LZO", "lzop", "lzop -d"),
)


def _decompressing(raw: IO[bytes], archive: Path) -> IO[bytes]:
    """The archive's tar stream, decompressed by what its magic says (as GNU tar does)."""
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if magic.startswith(b"BZh"):
        return cast(IO[bytes], bz2.BZ2File(raw))
    if magic.startswith(b"\xfd7zXZ\x00"):
        return cast(IO[bytes], lzma.LZMAFile(raw, format=lzma.FORMAT_XZ))
    if magic.startswith(b"\x5d\x00\x00"):
        return cast(IO[bytes], lzma.LZMAFile(raw, format=lzma.FORMAT_ALONE))
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        zstd = zstd_file()
        if zstd is None:
            raise _Corrupt(
                "it is compressed with zstd, which this Python cannot unpack; "
                f"run 'zstd -d {archive}' and load the resulting .tar"
            )
        return zstd(raw)
    for prefix, what, tool in _UNSUPPORTED_MAGIC:
        if magic.startswith(prefix):
            raise _Corrupt(
                f"it is compressed with {what}, which dkmshooks does not unpack; "
                f"run '{tool} {archive}' and load the resulting .tar"
            )
    return raw


@contextmanager
def _open_archive(raw: IO[bytes], archive: Path, limits: Limits) -> Iterator[tarfile.TarFile]:
    stream = _decompressing(raw, archive)
    bounded = _Bounded(stream, limits.total_bytes + limits.overhead_bytes)
    try:
        with tarfile.open(fileobj=cast(IO[bytes], bounded), mode="r:") as tar:
            yield tar
    finally:
        if stream is not raw:
            stream.close()


def _normalize(name: str) -> str:
    if name.startswith("/"):
        raise _Unsafe(name, "it has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Unsafe(name, "it has a '..' path component")
    return "/".join(parts)


def _kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "dir"
    if info.isreg():
        return "file"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr():
        raise _Unsafe(info.name, "it is a character device node")
    if info.isblk():
        raise _Unsafe(info.name, "it is a block device node")
    if info.isfifo():
        raise _Unsafe(info.name, "it is a FIFO")
    raise _Unsafe(info.name, f"it has an unsupported member type {info.type!r}")


def _scan(tar: tarfile.TarFile, limits: Limits) -> list[_Member]:
    members: list[_Member] = []
    # path -> dir | parent (implied by a deeper member) | file | symlink
    kinds: dict[str, str] = {}
    links: dict[str, str] = {}
    total = 0
    count = 0
    while True:
        info = tar.next()
        if info is None:
            break
        count += 1
        if count > limits.members:
            raise _Unsafe(info.name, f"the archive has more than {limits.members} members")
        path = _normalize(info.name)
        kind = _kind(info)
        if not path:
            if kind == "dir":
                continue
            raise _Unsafe(info.name, "it has an empty path")
        if kind == "file":
            total += info.size
            if total > limits.total_bytes:
                raise _Unsafe(
                    info.name, f"it takes the unpacked size past {limits.total_bytes} bytes"
                )
        parts = path.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            seen = kinds.setdefault(prefix, "parent")
            if seen == "symlink":
                raise _Unsafe(info.name, f"it lies inside the symbolic link '{prefix}'")
            if seen not in ("dir", "parent"):
                raise _Unsafe(info.name, f"'{prefix}' is a file in the archive too")
        seen_kind = kinds.get(path)
        if seen_kind is not None and not (
            (kind == "dir" and seen_kind in ("dir", "parent"))
            or (kind == "file" and seen_kind == "file")
        ):
            raise _Unsafe(info.name, "it appears more than once, with different types")
        target = ""
        if kind == "symlink":
            target = info.linkname
            if not target:
                raise _Unsafe(info.name, "it is a symbolic link with an empty target")
            if target.startswith("/"):
                raise _Unsafe(info.name, f"it is a symbolic link to the absolute path '{target}'")
            links[path] = target
        elif kind == "hardlink":
            try:
                target = _normalize(info.linkname)
            except _Unsafe:
                target = ""
            if not target or kinds.get(target) != "file":
                raise _Unsafe(
                    info.name,
                    f"it is a hard link to '{info.linkname}', which is not a regular file "
                    "earlier in the archive",
                )
        kinds[path] = "file" if kind == "hardlink" else kind
        members.append(_Member(path, kind, info, target))
    # Checked once all links are known: a later link can change where an earlier one leads.
    for path, target in links.items():
        parent = path.split("/")[:-1]
        if _resolve([*parent, *target.split("/")], links) is None:
            raise _Unsafe(path, f"it is a symbolic link pointing outside the archive ('{target}')")
    return members


def _resolve(parts: list[str], links: dict[str, str], depth: int = 0) -> list[str] | None:
    """Where `parts` leads inside the unpacked archive, following the archive's own symlinks as
    the kernel would; None if it leaves the archive (or loops)."""
    if depth > 40:
        return None
    out: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                return None
            out.pop()
            continue
        out.append(part)
        target = links.get("/".join(out))
        if target is not None:
            if target.startswith("/"):
                return None
            resolved = _resolve([*out[:-1], *target.split("/")], links, depth + 1)
            if resolved is None:
                return None
            out = resolved
    return out


def _extract(tar: tarfile.TarFile, members: list[_Member], dest: Path) -> None:
    root = os.path.realpath(dest)
    for member in members:
        try:
            _extract_member(tar, member, dest, root)
        except OSError as exc:
            raise _WriteFailed(member.info.name, exc) from exc


def _extract_member(tar: tarfile.TarFile, member: _Member, dest: Path, root: str) -> None:
    target = dest.joinpath(*member.path.split("/"))
    if member.kind == "dir":
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
        return
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    # Validation makes this impossible; checked again because the cost is one syscall.
    if os.path.commonpath([root, os.path.realpath(target.parent)]) != root:
        raise _Unsafe(member.info.name, "it would be written outside the unpack directory")
    if os.path.lexists(target):
        target.unlink()
    if member.kind == "symlink":
        os.symlink(member.target, target)
    elif member.kind == "hardlink":
        source = dest.joinpath(*member.target.split("/"))
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    else:
        _write_member(tar, member, target)


def _write_member(tar: tarfile.TarFile, member: _Member, target: Path) -> None:
    info = member.info
    src = tar.extractfile(info)
    if src is None:
        raise _Corrupt(f"cannot read member '{info.name}'")
    written = 0
    with src, open(target, "xb") as out:
        while written < info.size:
            try:
                chunk = src.read(min(1 << 20, info.size - written))
            except OSError as exc:  # bz2 and gzip report bad data as OSError
                raise _Corrupt(f"member '{info.name}' cannot be read ({exc})") from exc
            if not chunk:
                break
            out.write(chunk)
            written += len(chunk)
    if written != info.size:
        raise _Corrupt(f"member '{info.name}' is truncated ({written} of {info.size} bytes)")
    # No set-id bits and no group/other write: this ends up in root's source and DKMS trees.
    os.chmod(target, (info.mode & 0o755) | 0o600)
    os.utime(target, (info.mtime, info.mtime))


def require_self_contained(archive: Path, unpacked: Path, top: Path) -> None:
    """Symlinks in a subtree we are about to copy must stay inside that subtree once copied."""
    root = os.path.realpath(top)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                continue
            real = os.path.realpath(path)
            if os.path.commonpath([root, real]) != root:
                raise unsafe_error(
                    archive,
                    os.path.relpath(path, unpacked),
                    f"it is a symbolic link to '{os.readlink(path)}', outside "
                    f"'{os.path.relpath(top, unpacked)}', the part of the archive that is loaded",
                )
