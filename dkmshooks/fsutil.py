"""File operations that leave either the old or the new state: write beside, fsync, rename."""

from __future__ import annotations

import os
from pathlib import Path

from . import faults

# Prefix of our temporary files beside a destination: stale ones (from a process that was
# killed between creating and renaming them) are recognisable, and swept by the next writer.
TMP_MARK = ".dkmshooks-tmp."


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            fp = os.path.join(dirpath, name)
            if os.path.islink(fp):
                continue
            try:
                fd = os.open(fp, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


#: a file's identity and change stamps: [inode, size, mtime_ns, ctime_ns], [] when it is absent
Stamp = list[int]


def stamp(path: str | os.PathLike[str]) -> Stamp:
    """[inode, size, mtime_ns, ctime_ns]; [] for a file that is not there. Caches keyed on it
    (confcache, dkmsconf's LLVM test) see any change: a replaced, rewritten or touched file."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    import tempfile  # not at start-up: most commands never write a file

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        faults.point("write_atomic.before_rename")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def copy_file_atomic(src: Path, dest: Path) -> None:
    """Installed modules never appear half-written: copy beside, fsync, rename over.
    Callers hold the tree lock, so a temporary file of `dest` found here is a dead process's."""
    # imported here, not at start-up: every hook imports this module, few copy files
    import glob
    import shutil
    import tempfile

    prefix = f".{dest.name}{TMP_MARK}"
    for stale in dest.parent.glob(glob.escape(prefix) + "*"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        faults.point("copy.copied")
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        faults.point("copy.before_rename")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def symlink_atomic(target: str, link: Path) -> None:
    import glob  # here: every hook imports this module, few write links

    for stale in link.parent.glob(glob.escape(f".{link.name}.tmp") + "*"):
        stale.unlink(missing_ok=True)
    tmp = link.parent / f".{link.name}.tmp{os.getpid()}"
    os.symlink(target, tmp)
    faults.point("symlink.before_rename")
    os.replace(tmp, link)
    fsync_dir(link.parent)


def move(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    faults.point("move.before")
    try:
        os.replace(src, dest)
    except OSError:
        copy_file_atomic(src, dest)
        src.unlink()
    fsync_dir(dest.parent)


def remove_tree(path: Path) -> None:
    """Delete a file, a symlink (never what it points to) or a directory. A directory is first
    renamed out of sight (`.tmp_rm_*`, which the tree ignores and `dkms remove` sweeps), so a
    crash while deleting never leaves a half-deleted module directory behind."""
    if path.is_symlink() or path.is_file():
        faults.point("remove_tree.unlink")
        path.unlink(missing_ok=True)
    elif path.is_dir():
        doomed = path.with_name(f".tmp_rm_{path.name}_{os.getpid()}")
        try:
            os.rename(path, doomed)
        except OSError:
            doomed = path  # a mount point, or a parent we cannot write: delete in place
        faults.point("remove_tree.renamed")
        import shutil  # here: every hook imports this module, few delete trees

        shutil.rmtree(doomed, ignore_errors=True)


def find_symlink(top: Path, path: Path) -> Path | None:
    """The first component of `path` below `top` that is a symlink (`path` must be below `top`)."""
    current = top
    for part in path.relative_to(top).parts:
        current = current / part
        if current.is_symlink():
            return current
    return None


def is_within(path: Path, top: Path) -> bool:
    """Whether `path`, every symlink resolved, is `top` or below it."""
    real = os.path.realpath(path)
    base = os.path.realpath(top).rstrip("/")
    return real == base or real.startswith(base + "/")


def copy_tree(src: Path, dest: Path) -> None:
    """`cp -a src/ dest` (dest must not exist)."""
    import shutil  # here: every hook imports this module, few copy files

    shutil.copytree(src, dest, symlinks=True)


def copy_tree_into(src: Path, dest: Path) -> None:
    """`cp -fprT src/ dest`: merge src's content into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    import shutil  # here: every hook imports this module, few copy files

    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)


def same_content(a: Path, b: Path) -> bool:
    import filecmp  # here: every hook imports this module, few copy files

    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False
