"""dkms mktarball and ldtarball (source, source+binaries, binaries-only).

Layout of a tarball written by mktarball (dkms 3.4's, member names start with `./`):

    dkms_main_tree/<kver>/<arch>/{module,log}/…        built modules, one dir per kernel/arch
    dkms_source_tree/…                                 the module source (unless --binaries-only)
    dkms_binaries_only/{PACKAGE_NAME,PACKAGE_VERSION,dkms.conf}        (with --binaries-only)

Loading never lets the archive decide where things go: safetar validates every member before
anything is unpacked, unpacks into a private directory under $TMPDIR, and only once the result has
been checked too (dkms.conf, kernel/arch dirs, links staying inside the part that is copied) is
anything copied to the source tree or the DKMS tree.
"""

from __future__ import annotations

import bz2
import grp
import gzip
import io
import lzma
import os
import pwd
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

from . import fsutil, run
from .dkmsconf import read_conf as read_dkms_conf
from .errors import AlreadyAddedError, DkmsError, NotRootError, SilentExit, SourceMissingError
from .safetar import (
    DEFAULT_LIMITS,
    InvalidTarballError,
    Limits,
    require_self_contained,
    unpack,
    unsafe_error,
    zstd_file,
)
from .session import _null_console, check_module_args, check_name, require_root

if TYPE_CHECKING:
    from .dkmscli import Args
    from .status import Session

#: Where a binaries-only module's dkms.conf lives when no source tree exists on the system; the
#: module's `source` link points here. dkms 3.4 makes `source` itself a real directory, which its
#: own is_module_added rejects, so the module vanishes from `status` (reference §7 "Other").
#: The name ends in "source" so that `remove` (ours and dkms's) does not take it for a kernel dir.
BINARIES_ONLY_SOURCE = "binaries-only-source"

_KERNEL_DIR = re.compile(r"^[0-9]+\.")


# -- entry points --------------------------------------------------------------------------------


def dispatch_tarball(
    session: Session, action: str, args: Args, pairs: Sequence[tuple[str, str]]
) -> int:
    if action == "mktarball":
        check_module_args("mktarball", args.module, args.version)
        check_name(args.module, args.version)
        session.module_is_broken_and_die(args.module, args.version)
        session.module_is_added_or_die(args.module, args.version)
        make_tarball(
            session,
            args.module,
            args.version,
            pairs,
            archive=args.archive,
            source_only=args.source_only,
            binaries_only=args.binaries_only,
        )
        return 0
    if os.geteuid() != 0 and args.force:
        raise NotRootError("You must be root to use this command with the --force option.")
    if not args.archive:
        raise SourceMissingError(
            "No tarball given.",
            "Usage: ldtarball <path/to/tarball> or ldtarball --archive=<path/to/tarball>",
        )
    kver, arch = pairs[0] if pairs else (os.uname().release, os.uname().machine)
    loaded = load_tarball(session, Path(args.archive), kver, arch)
    if loaded.registered_binaries_only:
        return 0
    if args.force and session.tree.is_added(loaded.module, loaded.version):
        # dkms 3.4 goes on to `add` and dies with 3 ("already contains") after a --force load
        # that worked; the module is registered, which is all `add` would have done.
        return 0
    if args.rpm_safe_upgrade:
        from .rpmsafe import write_lock

        write_lock(session, loaded.module, loaded.version)
    session.add_module(loaded.module, loaded.version, kver, arch)
    return 0


def load_tarball_for_add(session: Session, archive: Path, kver: str, arch: str) -> tuple[str, str]:
    """`dkms add x.tar.gz` / `dkms ldtarball`: unpack and register; returns (module, version)."""
    loaded = load_tarball(session, archive, kver, arch)
    if loaded.registered_binaries_only:
        # `add` would now refuse with "already contains": the stub registration was the add.
        raise SilentExit(code=0)
    return loaded.module, loaded.version


# -- mktarball -----------------------------------------------------------------------------------


def make_tarball(
    session: Session,
    module: str,
    version: str,
    pairs: Sequence[tuple[str, str]],
    *,
    archive: str = "",
    source_only: bool = False,
    binaries_only: bool = False,
) -> Path:
    console = session.console
    layout = session.layout
    kver0, arch0 = pairs[0] if pairs else ("", "")
    session.read_conf(module, version, kver0, arch0)

    built: list[tuple[str, str, Path]] = []
    if source_only:
        kernel_list = "source-only"
    else:
        kernel_list = ""
        for kver, arch in pairs:
            built_dir = layout.built_dir(module, version, kver, arch)
            if not built_dir.is_dir():
                raise DkmsError(
                    f"No modules built for {kver} ({arch}).",
                    "Modules must already be in the built state before using mktarball.",
                    code=6,
                )
            console.echo(f"Marking modules for {kver} ({arch}) for archiving...")
            entry = f"kernel{kver}-{arch}"
            kernel_list = f"{kernel_list}-{entry}" if kernel_list else entry
            built.append((kver, arch, built_dir))

    source_dir = layout.source_link(module, version)
    conf_file = session.options.conf or source_dir / "dkms.conf"
    if binaries_only:
        console.echo("", "Creating tarball structure to specifically accomodate binaries.")
    else:
        console.echo("", f"Marking {source_dir} for archiving...")

    # dkms counts `echo "$list" | wc -m`, newline included
    if len(kernel_list) + 1 > 200:
        kernel_list = "manykernels"
    name = f"{module}-{version}-{kernel_list}.dkms.tar.gz"
    dest = f"{layout.version_dir(module, version)}/tarball/"
    if archive:
        name = archive.rsplit("/", 1)[-1]
        if "/" in archive:
            dest = archive.rsplit("/", 1)[0]
    console.echo("", f"Tarball location: {dest}/{name}")

    dest_dir = Path(dest or "/")
    if not dest_dir.is_dir():
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DkmsError(f"Missing write permissions for {dest}.", code=9) from exc
    if not os.access(dest_dir, os.W_OK):
        raise DkmsError(f"Missing write permissions for {dest}.", code=9)

    if not name:
        raise DkmsError("Failed to make tarball.", f"{archive} names no file.", code=6)
    fmt = _format_for_name(name)
    opener = _compressor(fmt)
    if opener is None:
        raise DkmsError(
            "Failed to make tarball.",
            f"dkmshooks writes .tar, .tar.gz, .tar.bz2, .tar.xz and .tar.lzma archives"
            f"{' (and .tar.zst)' if zstd_file() else ''}; '{name}' asks for {fmt}.",
            code=6,
        )
    now = time.time()

    def fill(tar: tarfile.TarFile) -> None:
        tar.addfile(_dir_info(".", now))
        tar.addfile(_dir_info("./dkms_main_tree", now))
        kernels_seen: set[str] = set()
        for kver, arch, built_dir in built:
            if kver not in kernels_seen:
                kernels_seen.add(kver)
                tar.addfile(_dir_info(f"./dkms_main_tree/{kver}", now))
            tar.add(built_dir, arcname=f"./dkms_main_tree/{kver}/{arch}")
        if binaries_only:
            tar.addfile(_dir_info("./dkms_binaries_only", now))
            tar.addfile(*_text_info("./dkms_binaries_only/PACKAGE_NAME", f"{module}\n", now))
            tar.addfile(*_text_info("./dkms_binaries_only/PACKAGE_VERSION", f"{version}\n", now))
            try:
                with open(conf_file, "rb") as fh:
                    info = tar.gettarinfo(arcname="./dkms_binaries_only/dkms.conf", fileobj=fh)
                    tar.addfile(info, fh)
            except OSError:
                pass  # dkms: `cp -f "$conf" … 2>/dev/null`
        else:
            tar.add(os.path.realpath(source_dir), arcname="./dkms_source_tree")

    target = dest_dir / name
    try:
        _write_atomic(target, opener, fill)
    except (OSError, tarfile.TarError, zlib.error, lzma.LZMAError) as exc:
        raise DkmsError("Failed to make tarball.", f"{target}: {exc}", code=6) from exc
    return target


def _owned_info(name: str, mode: int, mtime: float) -> tarfile.TarInfo:
    """A member dkms would have created with mkdir or echo: owned by whoever runs mktarball."""
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.mtime = int(mtime)
    info.uid, info.gid = os.getuid(), os.getgid()
    try:
        info.uname = pwd.getpwuid(info.uid).pw_name
        info.gname = grp.getgrgid(info.gid).gr_name
    except KeyError:
        pass
    return info


def _dir_info(name: str, mtime: float) -> tarfile.TarInfo:
    info = _owned_info(name, 0o755, mtime)
    info.type = tarfile.DIRTYPE
    return info


def _text_info(name: str, text: str, mtime: float) -> tuple[tarfile.TarInfo, IO[bytes]]:
    data = text.encode()
    info = _owned_info(name, 0o644, mtime)
    info.size = len(data)
    return info, io.BytesIO(data)


# GNU tar's `-a` table (the suffix picks the compressor); anything else is a plain tar.
_SUFFIXES = (
    ((".gz", ".tgz", ".taz"), "gzip"),
    ((".bz2", ".tbz", ".tbz2", ".tz2"), "bzip2"),
    ((".xz", ".txz"), "xz"),
    ((".lzma", ".tlz"), "lzma"),
    ((".zst", ".tzst"), "zstd"),
    ((".Z", ".taZ"), "compress"),
    ((".lz",), "lzip"),
    ((".lzo",), "lzop"),
)

_Opener = Callable[[IO[bytes]], IO[bytes]]


def _format_for_name(name: str) -> str:
    for suffixes, fmt in _SUFFIXES:
        if name.endswith(suffixes):
            return fmt
    return ""


def _compressor(fmt: str) -> _Opener | None:
    if fmt == "":
        return lambda raw: raw
    if fmt == "gzip":
        return lambda raw: cast(IO[bytes], gzip.GzipFile(filename="", mode="wb", fileobj=raw))
    if fmt == "bzip2":
        return lambda raw: cast(IO[bytes], bz2.BZ2File(raw, "wb"))
    if fmt == "xz":
        return lambda raw: cast(IO[bytes], lzma.LZMAFile(raw, "wb", format=lzma.FORMAT_XZ))
    if fmt == "lzma":
        return lambda raw: cast(IO[bytes], lzma.LZMAFile(raw, "wb", format=lzma.FORMAT_ALONE))
    zstd = zstd_file()
    if fmt == "zstd" and zstd is not None:
        return lambda raw: zstd(raw, "wb")
    return None


def _write_atomic(path: Path, opener: _Opener, fill: Callable[[tarfile.TarFile], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            stream = opener(raw)
            try:
                with tarfile.open(fileobj=stream, mode="w", format=tarfile.GNU_FORMAT) as tar:
                    fill(tar)
            finally:
                if stream is not raw:
                    stream.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsutil.fsync_dir(path.parent)


# -- ldtarball -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    module: str
    version: str
    #: a binaries-only tarball was registered with a stub source dir (no `add` to follow)
    registered_binaries_only: bool = False


def load_tarball(
    session: Session, archive: Path, kver: str, arch: str, limits: Limits = DEFAULT_LIMITS
) -> Loaded:
    """dkms's load_tarball: validate and unpack privately, then copy the source to
    /usr/src/<m>-<v> and the prebuilt kernel/arch dirs into the DKMS tree."""
    if not os.path.exists(archive):
        raise SourceMissingError(f"{archive} does not exist.")
    if str(archive).endswith(".rpm"):
        _install_rpm(session, archive, kver, arch)
    console = session.console
    layout = session.layout
    force = session.options.force
    with _private_dir(session.settings.tmp_location) as unpacked:
        unpack(archive, unpacked, limits)

        main_tree = unpacked / "dkms_main_tree"
        if not _is_real_dir(main_tree):
            # Not made by mktarball: any dkms.conf inside marks the source tree.
            conf = _find_conf(unpacked)
            if conf is None:
                raise DkmsError(
                    "Tarball does not appear to be a correctly formed DKMS archive. "
                    "No dkms.conf found within it.",
                    code=3,
                )
            require_self_contained(archive, unpacked, conf.parent)
            package = _peek_package(session, conf, kver, arch)
            if package is not None and session.tree.is_added(*package) and not force:
                # dkms copies over /usr/src/<m>-<v> first and refuses afterwards, in `add`.
                raise AlreadyAddedError(
                    f"DKMS tree already contains: {package[0]}/{package[1]}",
                    "You cannot add the same module/version combo more than once.",
                )
            module, version = session.add_source_tree(conf.parent, kver, arch)
            return Loaded(module, version)

        module = version = loc = ""
        pkg_conf = Path()
        for candidate in ("dkms_source_tree", "dkms_binaries_only"):
            conf = unpacked / candidate / "dkms.conf"
            if not conf.is_file() or conf.is_symlink():
                continue
            parsed = session.read_conf("", "", kver, arch, conf)
            if not (parsed.package_name and parsed.package_version):
                console.echo_err("")
                console.echo_err("Malformed dkms.conf, refusing to load.")
                continue
            module, version, loc = parsed.package_name, parsed.package_version, candidate
            pkg_conf = conf
            check_name(module, version)
            if session.tree.is_added(module, version) and not force:
                raise DkmsError(f"{module}/{version} is already added!", "Aborting.", code=8)
            break
        if not loc:
            raise InvalidTarballError(
                "No valid dkms.conf in dkms_source_tree or dkms_binaries_only.",
                f"{archive} is not a valid DKMS tarball.",
            )
        binaries = _prebuilt_dirs(archive, unpacked, main_tree)
        if loc == "dkms_source_tree":
            require_self_contained(archive, unpacked, unpacked / loc)

        # Everything is validated; from here on the trees are written.
        console.echo("", f"Loading tarball for {module}/{version}")
        stub = False
        stub_dir = layout.version_dir(module, version) / BINARIES_ONLY_SOURCE
        link = layout.source_link(module, version)
        if loc == "dkms_source_tree":
            session.add_source_tree(unpacked / loc, kver, arch)
        elif not session.tree.is_added(module, version):
            # dkms: "if there is a source tree on the system already, don't build a binaries stub"
            if not layout.module_source(module, version).is_dir():
                require_root()
                _make_binaries_only_source(session, stub_dir, pkg_conf)
                stub = True
        elif os.path.realpath(link) == os.path.realpath(stub_dir):
            # --force over an earlier binaries-only load: its dkms.conf goes with the binaries
            _make_binaries_only_source(session, stub_dir, pkg_conf, create=False)

        for b_kver, b_arch, src in binaries:
            _load_prebuilt(session, module, version, b_kver, b_arch, src)

        if stub:
            console.echo(f"Creating symlink {link} -> {stub_dir}")
            fsutil.remove_tree(link)
            fsutil.symlink_atomic(str(stub_dir), link)
        return Loaded(module, version, registered_binaries_only=stub)


def _peek_package(session: Session, conf: Path, kver: str, arch: str) -> tuple[str, str] | None:
    """PACKAGE_NAME/PACKAGE_VERSION, quietly; add_source_tree reports a bad conf its own way."""
    try:
        parsed = read_dkms_conf(
            conf, "", "", kver, arch, session.conf_context(kver), _null_console()
        )
    except DkmsError:
        return None
    return parsed.package_name, parsed.package_version


def _install_rpm(session: Session, archive: Path, kver: str, arch: str) -> None:
    """dkms: an .rpm is installed with rpm, then autoinstall runs, and dkms exits."""
    proc = run.run(["rpm", "-Uvh", str(archive)], check=False)
    if proc.returncode != 0:
        raise DkmsError(
            f"Unable to install {archive} using rpm.",
            "Check to ensure that your system can install .rpm files.",
            code=9,
        )
    from . import actions_more
    from .dkmscli import Args

    rc = actions_more.dispatch(session, "autoinstall", Args(action="autoinstall"), [(kver, arch)])
    raise SilentExit(code=rc)


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _find_conf(top: Path) -> Path | None:
    """The shallowest regular dkms.conf (dkms takes `find | head -n 1`, in readdir order)."""
    found: list[tuple[int, str, Path]] = []
    for dirpath, _dirnames, filenames in os.walk(top):
        if "dkms.conf" in filenames:
            path = Path(dirpath) / "dkms.conf"
            if path.is_file() and not path.is_symlink():
                rel = os.path.relpath(path, top)
                found.append((rel.count("/"), rel, path))
    return min(found)[2] if found else None


def _prebuilt_dirs(archive: Path, unpacked: Path, main_tree: Path) -> list[tuple[str, str, Path]]:
    """dkms_main_tree/<kver>/<arch> dirs, in dkms's glob order, each checked to be one."""
    found = []
    for kver in _sorted_names(main_tree):
        kdir = main_tree / kver
        if not _is_real_dir(kdir):
            continue
        if not _KERNEL_DIR.match(kver):
            raise unsafe_error(
                archive,
                f"dkms_main_tree/{kver}",
                "it is not a kernel release directory, and would be copied into the module's "
                "DKMS tree as one",
            )
        for arch in _sorted_names(kdir):
            adir = kdir / arch
            if _is_real_dir(adir):
                require_self_contained(archive, unpacked, adir)
                found.append((kver, arch, adir))
    return found


def _sorted_names(path: Path) -> list[str]:
    return sorted((n for n in os.listdir(path) if not n.startswith(".")), key=os.fsencode)


def _make_binaries_only_source(
    session: Session, stub_dir: Path, conf: Path, *, create: bool = True
) -> None:
    if create:
        session.console.echo(f"Creating {stub_dir}")
        fsutil.remove_tree(stub_dir)
        stub_dir.mkdir(parents=True)
    session.console.echo(f"Copying dkms.conf to {stub_dir} ...")
    fsutil.copy_file_atomic(conf, stub_dir / "dkms.conf")


def _load_prebuilt(
    session: Session, module: str, version: str, kver: str, arch: str, src: Path
) -> None:
    dest = session.layout.built_dir(module, version, kver, arch)
    if dest.is_dir() and not session.options.force:
        session.console.warn(f"{dest} already exists. Skipping...")
        return
    session.console.echo(f"Loading {dest}...")
    kdir = dest.parent
    kdir.mkdir(parents=True, exist_ok=True)
    # The same staging name as a build's, so `remove` cleans up after a crash.
    staging = Path(tempfile.mkdtemp(prefix=f".tmp_{arch}_", dir=kdir))
    old: Path | None = None
    try:
        fsutil.copy_tree_into(src, staging)
        os.chmod(staging, 0o755)
        fsutil.fsync_tree(staging)
        if dest.exists() or dest.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".old_{arch}_", dir=kdir))
            os.replace(dest, old / arch)
        os.rename(staging, dest)
        fsutil.fsync_dir(kdir)
    except BaseException:
        fsutil.remove_tree(staging)
        if old is not None and not dest.exists():
            os.replace(old / arch, dest)
        raise
    finally:
        if old is not None:
            fsutil.remove_tree(old)


@contextmanager
def _private_dir(tmp_location: Path) -> Iterator[Path]:
    try:
        path = Path(tempfile.mkdtemp(prefix="dkms.", dir=tmp_location))
    except OSError as exc:
        raise DkmsError(f"Unable to make a temporary directory in {tmp_location}: {exc}") from exc
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
