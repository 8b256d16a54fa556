"""dkms status: one line per module/version/kernel/arch with dkms 3.4's extras, and the same
facts as JSON (`dkms status --json`), `dkms list` and `dkms config`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import confcache, fsutil
from .console import Console
from .dkmsconf import DkmsConf
from .errors import BadConfError, DkmsError
from .install import Installer
from .kernel import compressed_or_uncompressed
from .tree import DOUBT, Deps, StatusEntry

if TYPE_CHECKING:
    from .statussnap import Snapshot

STATUS_SCHEMA = 1


@dataclass(frozen=True)
class Extras:
    original_modules: bool = False
    built_modules_missing: bool = False
    differences: bool = False

    def text(self) -> str:
        out = ""
        if self.original_modules:
            out += " (Original modules exist)"
        if self.built_modules_missing:
            out += " (Built modules are missing in the kernel modules folder)"
        elif self.differences:
            out += " (Differences between built and installed modules)"
        return out


def _plain_or_packed(
    directory: str, name: str, suffix: Callable[[str], str], kver: str
) -> str | None:
    """kernel.compressed_or_uncompressed on strings, asking for the suffix only if needed."""
    plain = os.path.join(directory, f"{name}.ko")
    if os.path.exists(plain):
        return plain
    ext = suffix(kver)
    packed = f"{plain}{ext}"
    if ext and os.path.exists(packed):
        return packed
    return None


_UNCACHEABLE: tuple[str, fsutil.Stamp] = ("", [])


def _status_line(entry: StatusEntry, extras: Extras, as_json: bool) -> str:
    """A status line, or its JSON record (keys sorted, as json.dumps(sort_keys=True) writes)."""
    if as_json:
        record = {
            "module": entry.module,
            "version": entry.version,
            "kernel": entry.kver or None,
            "arch": entry.arch or None,
            "state": entry.state,
            "original_modules": extras.original_modules,
            "built_modules_missing": extras.built_modules_missing,
            "differences": extras.differences,
        }
        return json.dumps(record, sort_keys=True)
    mv = f"{entry.module}/{entry.version}"
    if entry.state in ("broken", "added"):
        return f"{mv}: {entry.state}"
    return f"{mv}, {entry.kver}, {entry.arch}: {entry.state}{extras.text()}"


class _Watch(Console):
    """Passes everything on to `inner`, noting that something was said."""

    def __init__(self, inner: Console) -> None:
        super().__init__(inner.out, inner.err)
        self.inner = inner
        self.captures = inner.captures
        self.said = False

    def write(self, text: str) -> None:
        self.said = True
        self.inner.write(text)

    def echo(self, *lines: str) -> None:
        self.said = True
        self.inner.echo(*lines)

    def write_err(self, text: str) -> None:
        self.said = True
        self.inner.write_err(text)

    def echo_err(self, *lines: str) -> None:
        self.said = True
        self.inner.echo_err(*lines)

    def error(self, *lines: str) -> None:
        self.said = True
        self.inner.error(*lines)

    def warn(self, *lines: str) -> None:
        self.said = True
        self.inner.warn(*lines)

    def deprecated(self, *lines: str) -> None:
        self.said = True
        self.inner.deprecated(*lines)


def _note_seen(deps: Deps, seen: list[tuple[str, fsutil.Stamp]]) -> None:
    """status_extras's files (`~path`: through the memo, which is a stamp all the same)."""
    if deps is None:
        return
    for path, old in seen:
        if not path:
            deps[DOUBT] = []  # _UNCACHEABLE
        else:
            deps["=" + (path[1:] if path[:1] == "~" else path)] = old


class Session(Installer):
    """A dkms invocation with every lifecycle action."""

    # -- status --------------------------------------------------------------------------------

    def status_extras(
        self,
        module: str,
        version: str,
        kver: str,
        arch: str,
        installed: bool | None = None,
        deps: Deps = None,
    ) -> Extras:
        """dkms 3.4's status extras for one line. `installed`: whether the line says installed,
        when the caller already knows. A result is remembered (confcache) with the stamps of
        every file it was computed from, so a repeated status costs a few stat() calls a line.
        `deps` (tree.Deps) gets what the answer rests on: the conf's stamp, the kernel's part of
        the conf's key ("@K\0A") and the files compared."""
        tree = os.fspath(self.layout.dkms_tree)
        if installed is None:
            installed = self.tree.is_active(module, version, kver, arch)
        conf_path = f"{tree}/{module}/{version}/source/dkms.conf"
        cache = confcache.for_layout(self.layout)
        if deps is not None:
            # taken before the conf's key, which takes its stamps from the same memo
            deps["=" + conf_path] = cache.memo_stamp(conf_path)
            deps[f"@{kver}\0{arch}"] = cache.kernel_key(kver, arch, self._cached_context(kver))
        memo_key = self.conf_cache_key(conf_path, module, version, kver, arch)
        if memo_key is None and deps is not None:
            deps[DOUBT] = []
        if memo_key is not None:
            hit = cache.get_extras(module, version, memo_key, installed)
            if hit is not None:
                _note_seen(deps, hit[1])
                return Extras(*hit[0])
        try:
            conf = self.read_conf(module, version, kver, arch, Path(conf_path), persistent=True)
        except DkmsError as exc:
            if not isinstance(exc, BadConfError):
                self.console.error(*exc.lines)
            return Extras()
        original_dir = os.path.join(tree, module, "original_module", kver, arch)
        # the files the answer depends on, each stamped before it is looked at (for the memo)
        # (most modules never had an original module: one stat of the parent covers them all;
        # a path starting with "~" is checked through the cache's short-lived stat memo)
        parent = os.path.join(tree, module, "original_module")
        if cache.memo_stamp(parent):
            seen = [(original_dir, fsutil.stamp(original_dir))]
        else:
            seen = [("~" + parent, [])]
        original = os.path.isdir(original_dir)
        result = self._extras(conf, module, version, kver, arch, installed, original, seen)
        _note_seen(deps, seen)
        if memo_key is not None and _UNCACHEABLE not in seen:
            cache.put_extras(
                module,
                version,
                memo_key,
                installed,
                seen,
                (result.original_modules, result.built_modules_missing, result.differences),
            )
        return result

    def _extras(
        self,
        conf: DkmsConf,
        module: str,
        version: str,
        kver: str,
        arch: str,
        installed: bool,
        original: bool,
        seen: list[tuple[str, fsutil.Stamp]],
    ) -> Extras:
        """The extras proper. Appends each file consulted, with its stamp taken before, to
        `seen`, and _UNCACHEABLE when the answer depends on more than those files (a
        compression suffix, a search for the module)."""
        tree = os.fspath(self.layout.dkms_tree)
        built = os.path.join(tree, module, version, kver, arch, "module")
        modules_dir = f"{os.fspath(self.layout.install_tree).rstrip('/')}/{kver}"
        cache = confcache.for_layout(self.layout)
        for entry in conf.active_modules:
            # the kernel's compression suffix (a walk of its module tree) only matters when
            # the plain .ko is not there
            plain = os.path.join(built, f"{entry.dest_name}.ko")
            seen.append((plain, fsutil.stamp(plain)))
            tree_mod = _plain_or_packed(built, entry.dest_name, self.suffix, kver)
            if tree_mod != plain:
                seen.append(_UNCACHEABLE)
            if tree_mod is None:
                return Extras(original, built_modules_missing=True)
            if not installed:
                continue
            # find_actual_dest looks at dest_location first and takes it when the module there
            # has the built one's version info; a byte-identical copy settles both questions
            where = f"{modules_dir}{entry.dest_location}"
            plain = os.path.join(where, f"{entry.dest_name}.ko")
            seen.append((plain, fsutil.stamp(plain)))
            first = _plain_or_packed(where, entry.dest_name, self.suffix, kver)
            if first is not None and cache.same_content(module, version, tree_mod, first):
                if first != plain:
                    seen.append(_UNCACHEABLE)
                continue
            seen.append(_UNCACHEABLE)
            real = self.find_actual_dest(module, kver, arch, entry)
            real_mod = compressed_or_uncompressed(
                Path(f"{modules_dir}{real or ''}"), entry.dest_name, self.suffix(kver)
            )
            if real_mod is None or not fsutil.same_content(Path(tree_mod), real_mod):
                return Extras(original, differences=True)
        return Extras(original)

    def status_extra(self, module: str, version: str, kver: str, arch: str) -> str:
        return self.status_extras(module, version, kver, arch).text()

    def show_status(
        self,
        module: str,
        version: str,
        kernels: Sequence[tuple[str, str]],
        *,
        as_json: bool = False,
    ) -> None:
        """Each target's lines, module/version by module/version; a module/version whose lines
        the status snapshot kept, and whose files have not changed since, is printed from it."""
        targets = list(kernels) or [("", "")]
        snap = self._status_snapshot(module, version, targets, as_json)
        try:
            self._show_status(snap, module, version, targets, as_json)
        finally:
            snap.close()
        snap.save()

    def _show_status(
        self,
        snap: Snapshot,
        module: str,
        version: str,
        targets: list[tuple[str, str]],
        as_json: bool,
    ) -> None:
        modules = list(snap.walk(self.tree, module, version))
        join = ", " if as_json else "\n"  # between JSON records, between text lines
        out: list[str] = []  # kept text not yet written, or every JSON record
        for target, (kver, arch) in enumerate(targets):
            for m, versions in modules:
                for v in versions:
                    text = snap.section(m, target, v)
                    if text is None:
                        if out and not as_json:
                            self.console.echo(*out)
                            out.clear()
                        lines, deps = self._status_section(m, v, kver, arch, as_json)
                        text = join.join(lines)
                        snap.keep(m, target, v, text, deps)
                        if not as_json:
                            continue  # written as worked out
                    if text:
                        out.append(text)
        if as_json:
            # json.dumps({"schema": ..., "modules": records}, sort_keys=True), record by record
            self.console.echo(f'{{"modules": [{join.join(out)}], "schema": {STATUS_SCHEMA}}}')
        elif out:
            self.console.echo(*out)

    def _status_snapshot(
        self, module: str, version: str, targets: list[tuple[str, str]], as_json: bool
    ) -> Snapshot:
        cache = confcache.for_layout(self.layout)
        query = (self.settings, self.options, module, version, targets, as_json)
        from . import statussnap  # only `status` needs it, not every command Session serves

        return statussnap.Snapshot(
            cache.directory / "status",
            repr(query),
            os.fspath(self.layout.etc_dkms),
            lambda kver, arch: cache.kernel_key(kver, arch, self._cached_context(kver)),
            cache.read_only,
        )

    def _status_section(
        self, module: str, version: str, kver: str, arch: str, as_json: bool
    ) -> tuple[list[str], dict[str, Any]]:
        """One module/version's lines for one target, as printed (text lines are written as
        they come), and what they rest on (tree.Deps; DOUBT if anything else was printed)."""
        deps: dict[str, Any] = {}
        lines: list[str] = []
        real = self.console
        watch = self.console = _Watch(real)  # what the lines' own reads print
        try:
            for entry in self.tree.version_status(module, version, kver, arch, deps):
                extras = Extras()
                if entry.state in ("built", "installed"):
                    extras = self.status_extras(
                        entry.module,
                        entry.version,
                        entry.kver,
                        entry.arch,
                        entry.state == "installed",
                        deps,
                    )
                line = _status_line(entry, extras, as_json)
                lines.append(line)
                if not as_json:
                    real.echo(line)
                if entry.state == "broken":
                    self.console.error(
                        f"{entry.module}/{entry.version}: Missing the module source directory "
                        "or the symbolic link pointing to it.",
                        "Manual intervention is required!",
                    )
        finally:
            self.console = real
        if watch.said:
            deps[DOUBT] = []
        return lines, deps

    def show_list(self, module: str, *, as_json: bool = False) -> None:
        """`dkms list`: the registered module/versions, without touching any kernel."""
        records = []
        for m, v in self.tree.module_versions(module):
            if self.tree.is_broken(m, v):
                state = "broken"
            elif self.tree.is_added(m, v):
                state = "added"
            else:
                continue
            records.append({"module": m, "version": v, "state": state})
        if as_json:
            self.console.echo(
                json.dumps({"schema": STATUS_SCHEMA, "modules": records}, sort_keys=True)
            )
            return
        for r in records:
            suffix = " (broken)" if r["state"] == "broken" else ""
            self.console.echo(f"{r['module']}/{r['version']}{suffix}")

    def show_config(
        self, module: str, version: str, kver: str, arch: str, *, as_json: bool = False
    ) -> None:
        """`dkms config`: the dkms.conf as dkms evaluates it for one kernel/arch."""
        conf = self.read_conf(module, version, kver, arch)
        if as_json:
            data = {
                "schema": STATUS_SCHEMA,
                "module": module,
                "version": version,
                "kernel": kver,
                "arch": arch,
                "file": str(conf.path),
                "variables": {
                    name: {str(i): v for i, v in sorted(idx.items())}
                    for name, idx in sorted(conf.values.arrays.items())
                },
                "make_command": conf.make_command,
                "autoinstall": conf.autoinstall,
                "build_exclude": conf.build_exclude,
                "modules": [
                    {
                        "built_name": m.built_name,
                        "built_location": m.built_location,
                        "dest_name": m.dest_name,
                        "dest_location": m.dest_location,
                        "strip": m.strip,
                        "excluded": m.excluded,
                    }
                    for m in conf.modules
                ],
            }
            self.console.echo(json.dumps(data, sort_keys=True))
            return
        self.console.echo(f"# {conf.path} for kernel {kver} ({arch})")
        for name, idx in sorted(conf.values.arrays.items()):
            for i, value in sorted(idx.items()):
                quoted = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
                self.console.echo(f'{name}[{i}]="{quoted}"')
        self.console.echo(f"# make command: {conf.make_command}")
        for m in conf.modules:
            state = "excluded" if m.excluded else "built"
            self.console.echo(
                f"# module #{m.index}: {m.built_location}{m.built_name}.ko -> "
                f"{m.dest_location}/{m.dest_name}.ko ({state})"
            )
