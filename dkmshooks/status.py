"""dkms status: one line per module/version/kernel/arch with dkms 3.4's extras, and the same
facts as JSON (`dkms status --json`), `dkms list` and `dkms config`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import fsutil
from .errors import BadConfError, DkmsError
from .install import Installer
from .kernel import compressed_or_uncompressed

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


class Session(Installer):
    """A dkms invocation with every lifecycle action."""

    # -- status --------------------------------------------------------------------------------

    def status_extras(self, module: str, version: str, kver: str, arch: str) -> Extras:
        try:
            conf = self.read_conf(
                module,
                version,
                kver,
                arch,
                self.layout.source_link(module, version) / "dkms.conf",
                persistent=True,
            )
        except DkmsError as exc:
            if not isinstance(exc, BadConfError):
                self.console.error(*exc.lines)
            return Extras()
        original = self.layout.original_module_dir(module, kver, arch).is_dir()
        suffix = self.suffix(kver)
        installed = self.tree.is_active(module, version, kver, arch)
        for entry in conf.active_modules:
            tree_mod = compressed_or_uncompressed(
                self.layout.built_dir(module, version, kver, arch) / "module",
                entry.dest_name,
                suffix,
            )
            if tree_mod is None:
                return Extras(original, built_modules_missing=True)
            if installed:
                real = self.find_actual_dest(module, kver, arch, entry)
                real_mod = compressed_or_uncompressed(
                    Path(f"{self.layout.modules_dir(kver)}{real or ''}"), entry.dest_name, suffix
                )
                if real_mod is None or not fsutil.same_content(tree_mod, real_mod):
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
        targets = list(kernels) or [("", "")]
        records: list[dict[str, Any]] = []
        for kver, arch in targets:
            for entry in self.tree.status(module, version, kver, arch):
                mv = f"{entry.module}/{entry.version}"
                if as_json:
                    record: dict[str, Any] = {
                        "module": entry.module,
                        "version": entry.version,
                        "kernel": entry.kver or None,
                        "arch": entry.arch or None,
                        "state": entry.state,
                    }
                    extras = (
                        self.status_extras(entry.module, entry.version, entry.kver, entry.arch)
                        if entry.state in ("built", "installed")
                        else Extras()
                    )
                    record.update(
                        original_modules=extras.original_modules,
                        built_modules_missing=extras.built_modules_missing,
                        differences=extras.differences,
                    )
                    records.append(record)
                elif entry.state == "broken":
                    self.console.echo(f"{mv}: broken")
                    self.console.error(
                        f"{mv}: Missing the module source directory or the symbolic link "
                        "pointing to it.",
                        "Manual intervention is required!",
                    )
                elif entry.state == "added":
                    self.console.echo(f"{mv}: added")
                else:
                    line = f"{mv}, {entry.kver}, {entry.arch}: {entry.state}"
                    line += self.status_extra(entry.module, entry.version, entry.kver, entry.arch)
                    self.console.echo(line)
        if as_json:
            self.console.echo(
                json.dumps({"schema": STATUS_SCHEMA, "modules": records}, sort_keys=True)
            )

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
