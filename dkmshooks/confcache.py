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

One JSON file per module/version under /var/lib/dkmshooks/confcache, with a schema version;
written to a temporary file and renamed (no fsync: a lost or torn file is a cache miss).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import threading
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from . import shellconf
from .dkmsconf import ConfContext, DkmsConf, ModuleEntry, override_files

SCHEMA = 1
#: entries kept per module/version: one per kernel/arch/context, the most recent first
MAX_ENTRIES = 64

Stamp = list[int]


def stamp(path: str | os.PathLike[str]) -> Stamp:
    """[inode, size, mtime_ns, ctime_ns]; [] for a file that is not there."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def context_key(conf_path: Path, kver: str, arch: str, ctx: ConfContext) -> str:
    """Everything besides the files that decides what read_conf returns."""
    return "\0".join(
        [
            os.fspath(conf_path),
            kver,
            arch,
            os.fspath(ctx.etc_dkms),
            ctx.distro,
            ctx.addon_modules_dir,
            os.fspath(ctx.dkms_tree),
            os.fspath(ctx.source_tree),
            os.fspath(ctx.install_tree),
            os.fspath(ctx.tmp_location),
            ctx.parallel_jobs,
            os.fspath(ctx.kernel_source_dir),
            os.fspath(ctx.kernel_config),
            "v" if ctx.verbose else "",
            "f" if ctx.force else "",
        ]
    )


def file_stamps(
    conf_path: Path, module: str, version: str, kver: str, arch: str, ctx: ConfContext
) -> list[Stamp]:
    """The stamps of every file the evaluation read (see the module docstring)."""
    files: list[str | Path] = [
        conf_path,
        *override_files(ctx.etc_dkms, module, version, kver, arch),
        ctx.kernel_config,
        os.path.join(ctx.kernel_source_dir, ".config"),
        os.path.join(ctx.kernel_source_dir, "vmlinux"),
    ]
    return [stamp(f) for f in files]


def _code_stamp() -> list[Stamp]:
    """Entries are only as good as the code that computed them: an upgrade of dkmshooks (even one
    that keeps SCHEMA) changes these stamps and empties the cache."""
    from . import dkmsconf

    return [stamp(mod.__file__ or "") for mod in (dkmsconf, shellconf)] + [stamp(__file__)]


def _encode(conf: DkmsConf) -> dict[str, Any]:
    data = {f.name: getattr(conf, f.name) for f in fields(conf)}
    data["path"] = os.fspath(conf.path)
    data["modules"] = [asdict(m) for m in conf.modules]
    data["patches"] = list(conf.patches)
    data["build_depends"] = list(conf.build_depends)
    data["values"] = {
        "arrays": {
            name: [[i, v] for i, v in sorted(idx.items())]
            for name, idx in conf.values.arrays.items()
        },
        "deprecations": [list(d) for d in conf.values.deprecations],
    }
    return data


def _decode(data: dict[str, Any]) -> DkmsConf:
    values = data["values"]
    args = dict(data)
    args.update(
        path=Path(data["path"]),
        modules=tuple(ModuleEntry(**m) for m in data["modules"]),
        patches=tuple(data["patches"]),
        build_depends=tuple(data["build_depends"]),
        values=shellconf.ShellValues(
            arrays={
                name: {int(i): v for i, v in pairs} for name, pairs in values["arrays"].items()
            },
            deprecations=tuple(tuple(d) for d in values["deprecations"]),
        ),
    )
    return DkmsConf(**args)


class ConfCache:
    """The cache of one state directory; shared by every session and thread of the process."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[tuple[str, str], dict[str, Any]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._code: list[Stamp] | None = None

    def _path(self, module: str, version: str) -> Path:
        digest = hashlib.sha256(f"{module}\0{version}".encode("utf-8", "surrogateescape"))
        return self.directory / f"{digest.hexdigest()[:32]}.json"

    def _load(self, module: str, version: str) -> dict[str, Any]:
        key = (module, version)
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
                with open(self._path(module, version), encoding="utf-8") as fh:
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

    def get(self, module: str, version: str, key: str, stamps: list[Stamp]) -> DkmsConf | None:
        with self._lock:
            entry = self._load(module, version)["entries"].get(key)
        if not isinstance(entry, dict) or entry.get("stamps") != stamps:
            return None
        try:
            return _decode(entry["conf"])
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, module: str, version: str, key: str, stamps: list[Stamp], conf: DkmsConf) -> None:
        with self._lock:
            data = self._load(module, version)
            entries: dict[str, Any] = data["entries"]
            entries.pop(key, None)
            entries[key] = {"stamps": stamps, "conf": _encode(conf)}
            while len(entries) > MAX_ENTRIES:
                entries.pop(next(iter(entries)))
            self._dirty.add((module, version))

    def reload(self) -> None:
        """Write what changed and forget what was loaded (the next lookup reads the files)."""
        self.flush()
        with self._lock:
            self._files.clear()

    def flush(self) -> None:
        """Write what changed; quietly nothing where we may not write (a user's `dkms status`)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            if not dirty:
                return
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError:
                return
            for module, version in sorted(dirty):
                path = self._path(module, version)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                try:
                    with open(tmp, "w", encoding="utf-8") as fh:
                        json.dump(self._files[(module, version)], fh, separators=(",", ":"))
                    os.replace(tmp, path)
                except OSError:
                    try:
                        tmp.unlink()
                    except OSError:
                        pass


_caches: dict[Path, ConfCache] = {}
_caches_lock = threading.Lock()


def for_directory(directory: Path) -> ConfCache:
    """The process's cache for `directory`, written back when the process exits."""
    with _caches_lock:
        cache = _caches.get(directory)
        if cache is None:
            cache = _caches[directory] = ConfCache(directory)
            atexit.register(cache.flush)
        return cache
