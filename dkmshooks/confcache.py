"""Evaluated dkms.conf files, kept between invocations for the questions that only read them:
`dkms status` (one conf per line), `dkmshooks plan` and the engine's "is there anything to do for
this kernel?". Evaluating a dkms.conf costs a bash process (~5 ms); a warm lookup costs a few
stat() calls.

An entry is valid while nothing it was computed from has changed: the identity and stamps
(inode, size, mtime_ns, ctime_ns) of the dkms.conf, of the six /etc/dkms override files dkms
reads for it (absent ones included), and of the kernel's config, .config and vmlinux, plus every
value dkms puts in scope (kernel, arch, trees, distro, jobs, ...). The caller's environment is not
part of the key; see docs/decisions.md. Builds and installs never use the cache: they evaluate
the conf themselves (read_conf strict).

One JSON file per module/version under /var/lib/dkmshooks/confcache, with a schema version; a
second one (`…@values.json`) for values shared by every kernel (shared_key, get_values: a conf
that uses the kernel only in words, evaluated once with placeholders, see dkmsconf.shared_values),
and a third (`…@status.json`) for what `dkms status` derived from the confs: its per-line extras
and file comparisons, each with the stamps of the files it was computed from. Both are written
to a temporary file and renamed (no fsync: a lost or torn file is a cache miss).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from . import shellconf
from .dkmsconf import ConfContext, DkmsConf, ModuleEntry
from .fsutil import Stamp, stamp
from .layout import Layout

SCHEMA = 1
#: entries kept per module/version: one per kernel/arch/context, the most recent first
MAX_ENTRIES = 64
MEMO_SECONDS = 1.0
#: a stamp this recent may not show the next change (file times move in clock ticks)
RACY_NS = 2_000_000_000


def racy(stamps: Iterable[Stamp], now_ns: int | None = None) -> bool:
    """Whether any of `stamps` changed less than RACY_NS before `now_ns` (or after it)."""
    limit = (time.time_ns() if now_ns is None else now_ns) - RACY_NS
    return any(len(s) == 4 and (s[2] >= limit or s[3] >= limit) for s in stamps)


_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")


def _quote(name: str) -> str:
    """A file name part for any module or version name, one-to-one (`%XX` for other bytes)."""
    raw = name.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if chr(b) in _SAFE else f"%{b:02X}" for b in raw)


def _names(directory: str) -> frozenset[str]:
    try:
        return frozenset(os.listdir(directory))
    except OSError:
        return frozenset()


def override_names(module: str, version: str, kver: str, arch: str) -> list[str]:
    """dkmsconf.override_files, as names in /etc/dkms (without building six Paths per line)."""
    return [
        f"{module}.conf",
        f"{module}-{version}.conf",
        f"{module}-{version}-{kver}.conf",
        f"{module}-{version}-{kver}-{arch}.conf",
        f"{module}--{kver}.conf",
        f"{module}--{kver}-{arch}.conf",
    ]


def own_override_names(module: str, version: str, kver: str, arch: str) -> list[str]:
    """The override names of one kernel alone (the last four of override_names)."""
    return override_names(module, version, kver, arch)[2:]


def _context(kver: str, arch: str, ctx: ConfContext) -> str:
    """Everything besides the conf's path and the files that decides what read_conf returns."""
    return "\0".join(
        [
            kver,
            os.fspath(ctx.kernel_source_dir),
            os.fspath(ctx.kernel_config),
            _shared_context(arch, ctx),
        ]
    )


def _shared_context(arch: str, ctx: ConfContext) -> str:
    """_context without the kernel: what decides evaluate_conf's values for every kernel, when
    they were computed without looking at the kernel (dkmsconf.kernel_independent)."""
    return "\0".join(
        [
            arch,
            os.fspath(ctx.etc_dkms),
            ctx.distro,
            ctx.addon_modules_dir,
            os.fspath(ctx.dkms_tree),
            os.fspath(ctx.source_tree),
            os.fspath(ctx.install_tree),
            os.fspath(ctx.tmp_location),
            ctx.parallel_jobs,
            "v" if ctx.verbose else "",
            "f" if ctx.force else "",
        ]
    )


def _code_stamp() -> list[Stamp]:
    """Entries are only as good as the code that computed them: an upgrade of dkmshooks (even one
    that keeps SCHEMA) changes these stamps and empties the cache."""
    from . import dkmsconf, versions

    modules = (dkmsconf, shellconf, versions)
    return [stamp(mod.__file__ or "") for mod in modules] + [stamp(__file__)]


# Entries are stored positionally, in the field order of the dataclasses (which the code stamp
# pins): a status line's lookup is then mostly the JSON parse, and half the size of a dict's.
_CONF_FIELDS = tuple(f.name for f in fields(DkmsConf))
_MODULE_FIELDS = tuple(f.name for f in fields(ModuleEntry))


def _encode(conf: DkmsConf) -> list[Any]:
    out: list[Any] = []
    for name in _CONF_FIELDS:
        value = getattr(conf, name)
        if name == "path":
            value = os.fspath(value)
        elif name == "modules":
            value = [[getattr(m, f) for f in _MODULE_FIELDS] for m in value]
        elif name == "values":
            value = _encode_values(value)
        elif isinstance(value, tuple):
            value = list(value)
        out.append(value)
    return out


def _encode_values(values: shellconf.ShellValues) -> list[Any]:
    return [
        [[n, [[i, v] for i, v in sorted(idx.items())]] for n, idx in values.arrays.items()],
        [list(d) for d in values.deprecations],
    ]


def _decode_values(data: list[Any]) -> shellconf.ShellValues:
    arrays, deprecations = data
    return shellconf.ShellValues(
        arrays={n: {int(i): str(v) for i, v in pairs} for n, pairs in arrays},
        deprecations=tuple(tuple(d) for d in deprecations),
    )


def _decode(data: list[Any]) -> DkmsConf:
    args = dict(zip(_CONF_FIELDS, data))
    args.update(
        path=Path(args["path"]),
        modules=tuple(ModuleEntry(*m) for m in args["modules"]),
        patches=tuple(args["patches"]),
        build_depends=tuple(args["build_depends"]),
        values=_decode_values(args["values"]),
    )
    return DkmsConf(**args)


def _extras_key(memo_key: str) -> tuple[str, str]:
    """(context, stamps) of a status memo key; the context, a few hundred bytes of paths, is
    stored as its BLAKE2 digest (a status file holds one per kernel)."""
    from hashlib import blake2b

    context, stamps = memo_key.rsplit("\0", 1)
    return blake2b(context.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest(), stamps


class ConfCache:
    """The cache of one state directory; shared by every session and thread of the process.
    `read_only`: use what is there, write nothing (`dkmshooks plan` and `doctor` promise to
    change nothing on disk)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.read_only = False
        # (module, version, kind): kind "" is the evaluated confs, "status" what status derived
        # from them (a separate, small file: status does not parse every conf of the module)
        self._files: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._dirty: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self._code: list[Stamp] | None = None
        # stat() results reused for MEMO_SECONDS: `dkms status` asks about the same dkms.conf,
        # /etc/dkms and kernel config once per line (10,000 lines on a big tree)
        self._memo: dict[tuple[Callable[[str], Any], str], tuple[float, Any]] = {}
        # key()'s per-kernel part: (when, ctx, context tail, kernel file stamps, /etc/dkms, names)
        self._kernel_parts: dict[tuple[str, str, int], tuple[Any, ...]] = {}
        # digest (from key() or shared_key()) → whether one of its stamps is too recent to keep
        # what was computed under it (RACY_NS): put() and put_values() then keep nothing
        self._racy: dict[str, bool] = {}

    def _path(self, module: str, version: str, kind: str = "") -> Path:
        tail = f"@{kind}" if kind else ""  # `@` never occurs in a quoted name
        return self.directory / f"{_quote(module)}@{_quote(version)}{tail}.json"

    def _load(self, module: str, version: str, kind: str = "") -> dict[str, Any]:
        key = (module, version, kind)
        data = self._files.get(key)
        if data is None:
            if self._code is None:
                self._code = _code_stamp()
            data = {
                "schema": SCHEMA,
                "code": self._code,
                "module": module,
                "version": version,
                "entries": {},
            }
            try:
                with open(self._path(module, version, kind), encoding="utf-8") as fh:
                    stored = json.load(fh)
                if (
                    isinstance(stored, dict)
                    and stored.get("schema") == SCHEMA
                    and stored.get("code") == self._code
                    and stored.get("module") == module
                    and stored.get("version") == version
                    and isinstance(stored.get("entries"), dict)
                ):
                    data = stored
            except (OSError, ValueError):
                pass
            self._files[key] = data
        return data

    def _memo_get(self, path: str, fn: Callable[[str], Any]) -> Any:
        now = time.monotonic()
        key = (fn, path)
        hit = self._memo.get(key)
        if hit is not None and now - hit[0] < MEMO_SECONDS:
            return hit[1]
        value = fn(path)
        self._memo[key] = (now, value)
        return value

    def memo_stamp(self, path: str) -> Stamp:
        """stamp(path), reused for MEMO_SECONDS."""
        result: Stamp = self._memo_get(path, stamp)
        return result

    def memo_names(self, directory: str) -> frozenset[str]:
        """The names in `directory`, reused for MEMO_SECONDS."""
        result: frozenset[str] = self._memo_get(directory, _names)
        return result

    def _kernel_part(self, kver: str, arch: str, ctx: ConfContext) -> tuple[Any, ...]:
        """(when, ctx, context, kernel file stamps, /etc/dkms, its names, shared context)"""
        now = time.monotonic()
        part = self._kernel_parts.get((kver, arch, id(ctx)))
        if part is None or part[1] is not ctx or now - part[0] >= MEMO_SECONDS:
            etc = os.fspath(ctx.etc_dkms)
            src = os.fspath(ctx.kernel_source_dir)
            kernel_files = (os.fspath(ctx.kernel_config), f"{src}/.config", f"{src}/vmlinux")
            tail = _context(kver, arch, ctx)
            kernel = [self.memo_stamp(path) for path in kernel_files]
            part = (now, ctx, tail, kernel, etc, self.memo_names(etc), _shared_context(arch, ctx))
            self._kernel_parts[(kver, arch, id(ctx))] = part
        return part

    def kernel_key(self, kver: str, arch: str, ctx: ConfContext) -> str:
        """What key() takes from the kernel, as one string: its context and the stamps of its
        config files."""
        part = self._kernel_part(kver, arch, ctx)
        return f"{part[2]}\0{part[3]!r}"

    def key(
        self,
        conf_path: str | os.PathLike[str],
        module: str,
        version: str,
        kver: str,
        arch: str,
        ctx: ConfContext,
    ) -> tuple[str, str]:
        """(context key, digest of the stamps of every file the evaluation read): what an entry
        is stored under and what it must match (see the module docstring). The kernel's part
        (the context, its config files, the /etc/dkms listing) is worked out once per kernel and
        reused for MEMO_SECONDS: `dkms status` asks once per line (10,000 on a big tree)."""
        _, _, tail, kernel, etc, present, _ = self._kernel_part(kver, arch, ctx)
        conf = os.fspath(conf_path)
        names = override_names(module, version, kver, arch)
        stamps = self._conf_stamps(conf, etc, present, names) + kernel
        return f"{conf}\0{tail}", self._digest(stamps)

    def shared_key(
        self,
        conf_path: str | os.PathLike[str],
        module: str,
        version: str,
        kver: str,
        arch: str,
        ctx: ConfContext,
    ) -> tuple[str, str] | None:
        """key() for the values evaluate_conf computes for every kernel alike (see get_values):
        without the kernel, its config files and its own /etc/dkms overrides; None when kernel
        `kver` has an override file of its own in /etc/dkms (its values are its own)."""
        _, _, _, _, etc, present, shared = self._kernel_part(kver, arch, ctx)
        names = override_names(module, version, kver, arch)
        if any(name in present for name in names[2:]):  # own_override_names
            return None
        conf = os.fspath(conf_path)
        return f"{conf}\0{shared}", self._digest(self._conf_stamps(conf, etc, present, names[:2]))

    def _conf_stamps(
        self, conf: str, etc: str, present: frozenset[str], names: list[str]
    ) -> list[Stamp]:
        """The conf's stamp, then each named /etc/dkms override's ([] for one not there)."""
        stamps = [self.memo_stamp(conf)]
        for name in names:
            stamps.append(stamp(os.path.join(etc, name)) if name in present else [])
        return stamps

    @staticmethod
    def digest(stamps: list[Stamp]) -> str:
        """What an entry stores of its stamps: one string parses much faster than 40 ints."""
        return repr(stamps)

    def _digest(self, stamps: list[Stamp]) -> str:
        digest = self.digest(stamps)
        self._racy[digest] = racy(stamps)
        return digest

    def same_content(self, module: str, version: str, a: str, b: str) -> bool:
        """fsutil.same_content, remembered while neither file changes (status compares every
        built module with its installed copy: megabytes per line otherwise); not for files
        changed less than RACY_NS before."""
        from . import fsutil

        stamps = [stamp(a), stamp(b)]
        key = f"{a}\0{b}"
        with self._lock:
            same = self._load(module, version, "status").setdefault("same", {})
            hit = same.get(key)
        if isinstance(hit, list) and len(hit) == 2 and hit[0] == stamps:
            return bool(hit[1])
        verdict = fsutil.same_content(Path(a), Path(b))
        if [stamp(a), stamp(b)] == stamps and stamps[0] and stamps[1] and not racy(stamps):
            with self._lock:
                same.pop(key, None)
                same[key] = [stamps, verdict]
                while len(same) > MAX_ENTRIES * 4:
                    same.pop(next(iter(same)))
                self._dirty.add((module, version, "status"))
        return verdict

    def get_extras(
        self, module: str, version: str, memo_key: str, installed: bool
    ) -> tuple[tuple[bool, bool, bool], list[tuple[str, Stamp]]] | None:
        """A status line's extras as put_extras stored them, if none of their inputs changed:
        the conf's context and file stamps (`memo_key`), the installed state and the stamps of
        every file the answer was computed from. Returns (flags, those files and stamps)."""
        key, digest = _extras_key(memo_key)
        with self._lock:
            hit = self._load(module, version, "status").get("extras", {}).get(key)
        if not isinstance(hit, list) or len(hit) != 4:
            return None
        stored_digest, was_installed, files, flags = hit
        if stored_digest != digest or was_installed is not installed:
            return None
        try:
            seen = []
            for path, old in files:
                now = self.memo_stamp(path[1:]) if path[:1] == "~" else stamp(path)
                if now != old:
                    return None
                seen.append((path, old))
            original, missing, differences = flags
        except (TypeError, ValueError):
            return None
        return (bool(original), bool(missing), bool(differences)), seen

    def put_extras(
        self,
        module: str,
        version: str,
        memo_key: str,
        installed: bool,
        files: list[tuple[str, Stamp]],
        flags: tuple[bool, bool, bool],
    ) -> None:
        """`files`: each with the stamp it had before the answer was computed from it. Not kept
        when one of them changed less than RACY_NS before (a second change within the file
        system's clock tick would leave the same stamp)."""
        if racy(old for _, old in files):
            return
        key, digest = _extras_key(memo_key)
        entry = [digest, installed, [[path, old] for path, old in files], list(flags)]
        with self._lock:
            extras = self._load(module, version, "status").setdefault("extras", {})
            extras.pop(key, None)
            extras[key] = entry
            while len(extras) > MAX_ENTRIES:
                extras.pop(next(iter(extras)))
            self._dirty.add((module, version, "status"))

    def get_values(
        self, module: str, version: str, key: str, digest: str
    ) -> shellconf.ShellValues | None:
        """Values put_values stored under shared_key(): one entry serves every kernel, so the
        first plan or status for a new kernel evaluates nothing (only dkmsconf.finish_conf)."""
        with self._lock:
            entry = self._load(module, version, "values")["entries"].get(key)
        if not isinstance(entry, list) or len(entry) != 2 or entry[0] != digest:
            return None
        try:
            return _decode_values(entry[1])
        except (KeyError, TypeError, ValueError):
            return None

    def put_values(
        self, module: str, version: str, key: str, digest: str, values: shellconf.ShellValues
    ) -> None:
        """Only for values dkmsconf.kernel_independent() says are the same for every kernel;
        nothing for a digest shared_key() did not make or found too recent (RACY_NS)."""
        if self._racy.get(digest, True):
            return
        with self._lock:
            entries: dict[str, Any] = self._load(module, version, "values")["entries"]
            entries.pop(key, None)
            entries[key] = [digest, _encode_values(values)]
            while len(entries) > MAX_ENTRIES:
                entries.pop(next(iter(entries)))
            self._dirty.add((module, version, "values"))

    def get(self, module: str, version: str, key: str, digest: str) -> DkmsConf | None:
        with self._lock:
            entry = self._load(module, version)["entries"].get(key)
        if not isinstance(entry, list) or len(entry) != 2 or entry[0] != digest:
            return None
        try:
            return _decode(entry[1])
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, module: str, version: str, key: str, digest: str, conf: DkmsConf) -> None:
        """Nothing for a digest key() did not make or found too recent (RACY_NS)."""
        if self._racy.get(digest, True):
            return
        with self._lock:
            data = self._load(module, version)
            entries: dict[str, Any] = data["entries"]
            entries.pop(key, None)
            entries[key] = [digest, _encode(conf)]
            while len(entries) > MAX_ENTRIES:
                entries.pop(next(iter(entries)))
            self._dirty.add((module, version, ""))

    def reload(self) -> None:
        """Write what changed and forget what was loaded (the next lookup reads the files)."""
        self.flush()
        with self._lock:
            self._files.clear()
            self._memo.clear()
            self._kernel_parts.clear()
            self._racy.clear()

    def flush(self) -> None:
        """Write what changed; quietly nothing where we may not write (a user's `dkms status`)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            if not dirty or self.read_only:
                return
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError:
                return
            for module, version, kind in sorted(dirty):
                path = self._path(module, version, kind)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                try:
                    with open(tmp, "w", encoding="utf-8") as fh:
                        json.dump(self._files[(module, version, kind)], fh, separators=(",", ":"))
                    os.replace(tmp, path)
                except OSError:
                    try:
                        tmp.unlink()
                    except OSError:
                        pass


_caches: dict[Path, ConfCache] = {}
_caches_lock = threading.Lock()
_by_layout: dict[Layout, ConfCache] = {}


def for_layout(layout: Layout) -> ConfCache:
    """for_directory(layout.state_dir / "confcache"), without recomputing the path per line."""
    cache = _by_layout.get(layout)
    if cache is None:
        cache = _by_layout[layout] = for_directory(layout.state_dir / "confcache")
    return cache


def for_directory(directory: Path) -> ConfCache:
    """The process's cache for `directory`, written back when the process exits."""
    with _caches_lock:
        cache = _caches.get(directory)
        if cache is None:
            cache = _caches[directory] = ConfCache(directory)
            atexit.register(cache.flush)
        return cache
