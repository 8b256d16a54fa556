"""dkms status: one line per module/version/kernel/arch with dkms 3.4's extras."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from . import fsutil
from .errors import (
    BadConfError,
    DkmsError,
)
from .install import Installer
from .kernel import (
    compressed_or_uncompressed,
)


class Session(Installer):
    """A dkms invocation with every lifecycle action."""

    # -- status --------------------------------------------------------------------------------

    def status_extra(self, module: str, version: str, kver: str, arch: str) -> str:
        extra = ""
        try:
            conf = self.read_conf(
                module, version, kver, arch, self.layout.source_link(module, version) / "dkms.conf"
            )
        except DkmsError as exc:
            if not isinstance(exc, BadConfError):
                self.console.error(*exc.lines)
            return extra
        if self.layout.original_module_dir(module, kver, arch).is_dir():
            extra += " (Original modules exist)"
        suffix = self.suffix(kver)
        installed = self.tree.is_active(module, version, kver, arch)
        for entry in conf.active_modules:
            tree_mod = compressed_or_uncompressed(
                self.layout.built_dir(module, version, kver, arch) / "module",
                entry.dest_name,
                suffix,
            )
            if tree_mod is None:
                extra += " (Built modules are missing in the kernel modules folder)"
                break
            if installed:
                real = self.find_actual_dest(module, kver, arch, entry)
                real_mod = compressed_or_uncompressed(
                    Path(f"{self.layout.modules_dir(kver)}{real or ''}"), entry.dest_name, suffix
                )
                if real_mod is None or not fsutil.same_content(tree_mod, real_mod):
                    extra += " (Differences between built and installed modules)"
                    break
        return extra

    def show_status(self, module: str, version: str, kernels: Sequence[tuple[str, str]]) -> None:
        targets = list(kernels) or [("", "")]
        for kver, arch in targets:
            for entry in self.tree.status(module, version, kver, arch):
                mv = f"{entry.module}/{entry.version}"
                if entry.state == "broken":
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
