"""Verdicts: "kernel K needs nothing", with everything the engine read to reach it.

A package-manager hook for a kernel whose modules are all installed costs mostly the start of
Python and the import of the engine (docs/performance.md). When a hook run ends having done
nothing for K (no module to build or install, nothing broken, no bad dkms.conf, nothing left by
a killed run to sweep, no depmod to repair, not a line printed), the engine saves a verdict for
K: the stamp (device, inode, mode, size, mtime, ctime; or the errno) of every path the run
looked at, the environment it ran with and the readiness of K it saw. The paths are recorded as
the run touches them: os.stat, os.lstat, os.readlink and os.access are wrapped for the run, and
an audit hook (PEP 578) sees every open, listdir and scandir (for a scandir also every entry,
and a symlink's target), every change to the file system and every process started.

fasthook answers the next hook call for K from the verdict when every stamp is still the same
and the environment is the same: the engine would read exactly what it read before, so it
would again do nothing; what that run wrote to the transaction state is written again. No
verdict is saved by a run that started a process (bash for a framework.conf, depmod), wrote
anything but dkmshooks's own transaction state, or read a path changed less than RACY_NS
before it was stamped (a second change within one tick of the file system's clock could leave
a stamp as it was). Builds, installs and everything but these hook calls never use verdicts.

Only `os` is imported at start-up: fasthook reads verdicts before anything else is loaded.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # typing is not imported: see the module docstring
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

MAGIC = "dkmshooks-verdict-3"
_END = "end"
#: a path changed this recently when it was stamped makes the verdict unsafe to keep
RACY_NS = 2_000_000_000
#: set per dpkg maintainer-script call; none of them changes what the engine decides
VOLATILE_ENV = frozenset(
    {
        "DEB_MAINT_PARAMS",
        "DPKG_MAINTSCRIPT_ARCH",
        "DPKG_MAINTSCRIPT_DEBUG",
        "DPKG_MAINTSCRIPT_NAME",
        "DPKG_MAINTSCRIPT_PACKAGE",
        "DPKG_MAINTSCRIPT_PACKAGE_REFCOUNT",
        "DPKG_RUNNING_VERSION",
        "DKMSHOOKS_TRANSACTION",  # only names the transaction, which fasthook works out itself
        "KERNEL_INSTALL_STAGING_AREA",  # a fresh temporary dir per kernel-install run, unread
        "_",  # the shell's bookkeeping: the command last run, how deep the shells are nested
        "SHLVL",
    }
)
# a process may read anything; a second thread's reads could be missed (Recorder.inside)
_SPAWN_EVENTS = frozenset(
    {
        "subprocess.Popen",
        "os.system",
        "os.posix_spawn",
        "os.exec",
        "os.fork",
        "os.forkpty",
        "_thread.start_new_thread",
    }
)
_WRITE_EVENTS = frozenset(
    {
        "os.remove",
        "os.rename",
        "os.rmdir",
        "os.mkdir",
        "os.symlink",
        "os.link",
        "os.chmod",
        "os.chown",
        "os.utime",
        "os.truncate",
        "os.setxattr",
        "os.removexattr",
        "os.chflags",
        "os.mkfifo",
        "os.mknod",
    }
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

_stat = os.stat  # the real ones, whatever a Recorder has put in their place meanwhile
_lstat = os.lstat


def stamp(path: str, follow: bool = True) -> str:
    """What a verdict keeps of a path: enough to see any change to it, its type or its place."""
    try:
        st = _stat(path) if follow else _lstat(path)
    except OSError as exc:
        return f"-{exc.errno}"
    return f"{st.st_dev}:{st.st_ino}:{st.st_mode}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def environment(environ: Mapping[str, str]) -> list[str]:
    return sorted(f"{k}={v}" for k, v in environ.items() if k not in VOLATILE_ENV)


def host() -> list[str]:
    """What of the process besides files and environment the engine could act on."""
    uname = os.uname()
    return [uname.machine, uname.release, str(os.geteuid()), str(os.cpu_count())]


def path_for(state_dir: str, kver: str) -> str:
    from .state import safe_name

    return os.path.join(state_dir, "verdicts", safe_name(kver))


def name_for(source: str, kver: str) -> str:
    """What a verdict is saved under: the kernel for an apt call, `kernel-install:K` for a
    kernel-install plugin call (the adapters before the engine differ)."""
    return kver if source == "apt" else f"{source}:{kver}"


def excluded_paths(state_dir: str) -> list[str]:
    """Read and written by every hook run, and handled by fasthook itself (the transaction
    state, the lock, the verdicts), or not files at all (/proc)."""
    names = ("transactions", "pending", "verdicts", "apt-transaction", "lock")
    return [state_dir, *(os.path.join(state_dir, n) for n in names), "/proc"]


class Verdict:
    """A saved verdict: K's readiness, and the stamps it holds while they all still hold."""

    __slots__ = ("env", "headers", "host", "image", "kver", "records")

    def __init__(
        self,
        kver: str,
        headers: bool,
        image: bool,
        env: list[str],
        host: list[str],
        records: list[tuple[str, str, str]],
    ) -> None:
        self.kver, self.headers, self.image = kver, headers, image
        self.env, self.host, self.records = env, host, records

    def encode(self) -> str:
        fields = [MAGIC, self.kver, "1" if self.headers else "0", "1" if self.image else "0"]
        fields += [str(len(self.host)), *self.host, str(len(self.env)), *self.env]
        for kind, value, path in self.records:
            fields += [kind, value, path]
        # a verdict cut short (a crash while it was written) must not pass with fewer stamps
        fields += [_END, str(len(self.records))]
        return "\0".join(fields)

    @classmethod
    def decode(cls, text: str) -> Verdict | None:
        fields = text.split("\0")
        try:
            if fields[0] != MAGIC:
                return None
            kver, headers, image = fields[1], fields[2] == "1", fields[3] == "1"
            at = 4
            count = int(fields[at])
            host = fields[at + 1 : at + 1 + count]
            at += 1 + count
            count = int(fields[at])
            env = fields[at + 1 : at + 1 + count]
            at += 1 + count
            rest = fields[at:-2]
            if fields[-2:] != [_END, str(len(rest) // 3)] or len(rest) % 3 or len(env) != count:
                return None
            records = [(rest[i], rest[i + 1], rest[i + 2]) for i in range(0, len(rest), 3)]
        except (IndexError, ValueError):
            return None
        return cls(kver, headers, image, env, host, records)

    def holds(self, kver: str, environ: Mapping[str, str]) -> bool:
        """Same kernel, environment, host facts, and every path as it was."""
        if self.kver != kver or self.env != environment(environ) or self.host != host():
            return False
        return all(stamp(path, kind == "F") == value for kind, value, path in self.records)


def load(state_dir: str, kver: str) -> Verdict | None:
    try:
        with open(path_for(state_dir, kver), encoding="utf-8", errors="surrogateescape") as fh:
            return Verdict.decode(fh.read())
    except OSError:
        return None


def forget(state_dir: str, kver: str) -> None:
    try:
        os.unlink(path_for(state_dir, kver))
    except OSError:
        pass


# -- recording ----------------------------------------------------------------------------------

_active: Recorder | None = None
_hook_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    recorder = _active
    if recorder is None or recorder.inside or recorder.doubt:
        return  # once in doubt, the run is not watched any further: no verdict either way
    try:
        recorder.event(event, args)
    except Exception as exc:  # an audit hook must never break the run it watches
        recorder.doubt = recorder.doubt or f"recording failed: {exc!r}"


class _Output:
    """sys.stdout / sys.stderr while recording: a run that printed anything saves no verdict."""

    def __init__(self, stream: Any, recorder: Recorder) -> None:
        self._stream, self._recorder = stream, recorder

    def write(self, text: str) -> Any:
        if text:
            self._recorder.doubt = self._recorder.doubt or "it printed something"
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class Recorder:
    """Records what a run reads (see the module docstring); `doubt` says why its verdict must
    not be kept, if anything does."""

    def __init__(self, exclude: Iterable[str]) -> None:
        self.exclude = tuple(exclude)
        self.records: dict[tuple[str, str], str] = {}
        self.doubt = ""
        self.inside = False
        self.started_ns = time.time_ns()
        self._saved: dict[str, Any] = {}
        stdlib = os.path.dirname(os.__file__)
        self._quiet = (stdlib + "/",)  # the interpreter's own files, opened by lazy imports

    # -- what the run does --

    def _path(self, raw: object) -> str | None:
        if isinstance(raw, int) or raw is None:
            return None
        path = os.fsdecode(os.fspath(raw))  # type: ignore[call-overload]
        if not path.startswith("/"):
            path = os.path.join(os.getcwd(), path)
        for root in self.exclude:
            if path == root or path.startswith(root + "/"):
                return None
        return path

    def read(self, raw: object, follow: bool = True) -> None:
        path = self._path(raw)
        if path is None or path.startswith(self._quiet):
            return
        key = ("F" if follow else "L", path)
        if key not in self.records:
            self.inside = True
            try:
                self.records[key] = stamp(path, follow)
            finally:
                self.inside = False

    def wrote(self, raw: object, what: str) -> None:
        path = self._path(raw)
        if path is not None and not self.doubt:
            self.doubt = f"{what} {path}"

    def listed(self, raw: object) -> None:
        if isinstance(raw, int):
            self.doubt = self.doubt or "a directory listed through a descriptor"
            return
        path = self._path(raw)
        if path is None:
            return
        self.read(path)
        self.inside = True
        try:
            with os.scandir(path) as it:
                entries = [(e.path, e.is_symlink()) for e in it]
        except OSError:
            entries = []
        finally:
            self.inside = False
        for entry, is_link in entries:
            self.read(entry, follow=False)
            if is_link:
                self.read(entry)

    def event(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            if isinstance(mode, str):
                writing = any(c in mode for c in "wax+")
            else:
                writing = bool(flags & _WRITE_FLAGS)
            if writing:
                self.wrote(path, "wrote")
            else:
                self.read(path)
        elif event in ("os.listdir", "os.scandir"):
            self.listed(args[0] if args and args[0] is not None else ".")
        elif event in _SPAWN_EVENTS:
            self.doubt = self.doubt or f"started a process ({event})"
        elif event in _WRITE_EVENTS:
            if event == "os.mkdir" and self._isdir(args[0]):
                return  # mkdir(exist_ok=True) of a directory that is there: no change
            if event == "os.rmdir" and self._has_entries(args[0]):
                return  # rmdir "if now empty" of one that is not: no change
            self.wrote(args[0], event)
            if event == "os.rename":
                self.wrote(args[1], event)

    def _has_entries(self, raw: object) -> bool:
        path = self._path(raw)
        if path is None:
            return False
        self.inside = True
        try:
            with os.scandir(path) as it:
                return any(True for _ in it)
        except OSError:
            return False
        finally:
            self.inside = False

    def _isdir(self, raw: object) -> bool:
        path = self._path(raw)
        if path is None:
            return False
        try:
            return _stat(path).st_mode & 0o170000 == 0o040000
        except OSError:
            return False

    # -- start and stop --

    def __enter__(self) -> Recorder:
        global _active, _hook_installed
        if not _hook_installed:
            try:
                sys.addaudithook(_audit)
                _hook_installed = True
            except Exception:  # another audit hook refused ours: the run goes unwatched
                self.doubt = "no audit hook"
                return self

        def wrap(real: Callable[..., Any], follow: bool | None) -> Callable[..., Any]:
            def wrapped(path: Any, *args: Any, **kw: Any) -> Any:
                if not self.inside and not self.doubt:
                    try:
                        if kw.get("dir_fd") is not None:
                            self.doubt = "a path relative to a directory descriptor"
                        else:
                            how = kw.get("follow_symlinks", True) if follow is None else follow
                            self.read(path, how)
                    except Exception as exc:  # never the run's problem
                        self.doubt = f"recording failed: {exc!r}"
                return real(path, *args, **kw)

            return wrapped

        for name, follow in (
            ("stat", None),
            ("lstat", False),
            ("readlink", False),
            ("access", None),
        ):
            self._saved[name] = getattr(os, name)
            setattr(os, name, wrap(self._saved[name], follow))
        self._saved["stdout"], self._saved["stderr"] = sys.stdout, sys.stderr
        sys.stdout = _Output(sys.stdout, self)
        sys.stderr = _Output(sys.stderr, self)
        _active = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        if not self._saved:  # __enter__ watched nothing
            return
        _active = None
        for name in ("stat", "lstat", "readlink", "access"):
            setattr(os, name, self._saved[name])
        sys.stdout, sys.stderr = self._saved["stdout"], self._saved["stderr"]
        if exc[0] is not None:
            self.doubt = self.doubt or "the run raised"

    def racy(self) -> str:
        """A recorded path that changed too shortly before it was stamped, if any."""
        limit = self.started_ns - RACY_NS
        for (_, path), value in self.records.items():
            parts = value.split(":")
            if len(parts) == 6 and max(int(parts[4]), int(parts[5])) > limit:
                return path
        return ""

    def verdict(
        self, kver: str, headers: bool, image: bool, environ: Mapping[str, str]
    ) -> Verdict | None:
        """The verdict this run supports, or None (see `doubt` and `racy`)."""
        if self.doubt or self.racy():
            return None
        records = [(kind, value, path) for (kind, path), value in self.records.items()]
        # the code that decided: a new dkmshooks may decide otherwise
        package = os.path.dirname(os.path.abspath(__file__))
        try:
            names = sorted(n for n in os.listdir(package) if n.endswith(".py"))
        except OSError:
            return None
        for name in ["", *names, *(f"adapters/{n}" for n in ("__init__.py", "apt.py"))]:
            path = os.path.join(package, name) if name else package
            records.append(("F", stamp(path), path))
        return Verdict(kver, headers, image, environment(environ), host(), records)


def save(state_dir: str, verdict: Verdict) -> None:
    """Written beside and renamed: a reader sees the old verdict, the new one, or none."""
    path = path_for(state_dir, verdict.kver)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write(verdict.encode())
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
