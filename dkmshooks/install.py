"""dkms install, uninstall, unbuild and remove, with original-module archiving and rollback."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from . import faults, fsutil, janitor, run
from .build import Builder
from .dkmsconf import DkmsConf, ModuleEntry, read_conf
from .errors import (
    DkmsError,
    EmptyKernelError,
    InstallError,
    PreInstallFailedError,
)
from .kernel import (
    compressed_or_uncompressed,
    find_module_files,
)
from .modinfo import compare_versions, module_verinfo
from .session import _null_console


class Installer(Builder):
    """install, uninstall, unbuild, remove."""

    def maybe_build(self, module: str, version: str, kver: str, arch: str) -> None:
        if self.tree.is_built(module, version, kver, arch):
            if self.options.force:
                self.do_unbuild(module, version, kver, arch)
            else:
                self.console.echo(
                    f"Module {module}/{version} already built for kernel {kver} ({arch}), skip. "
                    "You may override by specifying --force."
                )
                return
        self.do_build(module, version, kver, arch)

    # -- install -------------------------------------------------------------------------------

    def forced_installation(self, module: str) -> str:
        forced_dir = self.layout.forced_modules_dir
        if not forced_dir.is_dir():
            return ""
        words: list[str] = []
        for elem in sorted(forced_dir.iterdir(), key=lambda p: os.fsencode(p.name)):
            try:
                words += elem.read_text(encoding="utf-8", errors="replace").split()
            except OSError:
                continue
        for word in words:
            if word == module:
                return "force"
            if word == f"{module}_version-override":
                return "version-override"
        return ""

    def do_install(self, module: str, version: str, kver: str, arch: str) -> None:
        if not kver or not arch:
            raise EmptyKernelError("do_install: Empty $kernelver or $arch")
        if not self.tree.is_built(module, version, kver, arch):
            self.do_build(module, version, kver, arch)
        layout = self.layout
        base_dir = layout.built_dir(module, version, kver, arch)
        lib_tree = layout.modules_dir(kver)
        backup_dir = layout.original_module_dir(module, kver, arch)
        active_link = layout.active_link(module, kver, arch)
        force = self.options.force
        force_version_override = self.options.force_version_override
        forced = self.forced_installation(module)
        if forced == "force":
            force = True
            self.console.echo(f"Forcing installation of {module}")
        elif forced == "version-override":
            force_version_override = True
            self.console.echo(f"Forcing version override of {module}")
        if not lib_tree.exists():
            raise InstallError(
                f"The directory {lib_tree} doesn't exist.",
                "You cannot install a module onto a non-existent kernel.",
            )
        suffix = self.suffix(kver)
        conf = self.read_conf(module, version, kver, arch, strict=True)
        for entry in conf.active_modules:
            found = compressed_or_uncompressed(base_dir / "module", entry.dest_name, suffix)
            if found is None or not found.is_file():
                raise InstallError(f"Missing module {entry.dest_name} in {base_dir}/module")
            dest_dir = Path(f"{lib_tree}{entry.dest_location}")
            if not fsutil.is_within(dest_dir, lib_tree):  # checked before anything moves
                raise InstallError(
                    f"{dest_dir} resolves to {os.path.realpath(dest_dir)}, outside {lib_tree}; "
                    "refusing to install there."
                )
        if self.tree.is_installed(module, version, kver, arch):
            raise DkmsError(
                f"This module/version combo is already installed for kernel {kver} ({arch}).",
                code=5,
            )
        if self.options.rpm_safe_upgrade:
            force = True
        rc = self.run_script("pre_install", conf.pre_install, module, version, kver=kver, arch=arch)
        if rc != 0 and not force:
            raise PreInstallFailedError(
                "pre_install failed, aborting install.", "You may override by specifying --force."
            )
        any_installed = False
        for entry in conf.active_modules:
            resumed = self.is_interrupted_install(entry, base_dir, lib_tree, suffix)
            if not resumed and not self.check_version_sanity(
                module,
                version,
                kver,
                arch,
                conf.obsolete_by,
                entry.dest_name,
                force,
                force_version_override,
            ):
                continue
            name = entry.dest_name
            installed = find_module_files(lib_tree, name, suffix)
            original_copy = compressed_or_uncompressed(backup_dir, name, suffix)
            if active_link.is_symlink() and original_copy is not None:
                self.console.echo("An original module was already stored during a previous install")
            elif not active_link.is_symlink() and not resumed:
                candidates = [
                    compressed_or_uncompressed(lib_tree / "extra", name, suffix),
                    compressed_or_uncompressed(lib_tree / "updates", name, suffix),
                    compressed_or_uncompressed(
                        Path(f"{lib_tree}{entry.dest_location}"), name, suffix
                    ),
                    installed[0] if len(installed) == 1 else None,
                ]
                for original in candidates:
                    if original is None or not original.is_file():
                        continue
                    self.console.echo(
                        f"Found pre-existing {original}, archiving for uninstallation"
                    )
                    planted = fsutil.find_symlink(layout.dkms_tree, backup_dir)
                    if planted is not None:
                        raise InstallError(
                            f"{planted} is a symbolic link; refusing to archive "
                            f"{original} through it."
                        )
                    backup_dir.mkdir(parents=True, exist_ok=True)
                    # where it came from first: a crash between the two must not leave an
                    # archived original that uninstall cannot put back (issue #9)
                    fsutil.write_atomic(backup_dir / f"{original.name}.origin", f"{original}\n")
                    fsutil.move(original, backup_dir / original.name)
                    break
            toinstall = compressed_or_uncompressed(base_dir / "module", name, suffix)
            assert toinstall is not None
            dest_dir = Path(f"{lib_tree}{entry.dest_location}")
            self.console.echo(f"Installing {dest_dir}/{toinstall.name}")
            dest_dir.mkdir(parents=True, exist_ok=True)
            try:
                if self.options.symlink_modules or self.settings.symlink_modules:
                    fsutil.symlink_atomic(str(toinstall), dest_dir / toinstall.name)
                else:
                    fsutil.copy_file_atomic(toinstall, dest_dir / toinstall.name)
            except OSError as exc:
                raise InstallError(f"Copying '{toinstall}' failed") from exc
            any_installed = True
            faults.point("install.copied")
        if conf.modules and not any_installed:
            raise InstallError("Installation aborted.")
        fsutil.symlink_atomic(f"{version}/{kver}/{arch}", active_link)
        faults.point("install.linked")
        self.weak_modules("add", conf, module, kver, arch)
        self.run_script("post_install", conf.post_install, module, version, kver=kver, arch=arch)
        rc = self.invoke_fn("Running depmod", lambda: self.depmod(kver), conf.package_name)
        if rc != 0:
            self.do_uninstall(module, version, kver, arch)
            raise InstallError(
                "Problems with depmod detected. Automatically uninstalling this module.",
                "Install Failed (depmod problems). Module rolled back to built state.",
            )
        if (self.options.modprobe_on_install or self.settings.modprobe_on_install) and (
            kver == os.uname().release
        ):
            run.run(
                [
                    "bash",
                    "-c",
                    "find /sys/devices -name modalias -print0 | xargs -0 cat | sort -u "
                    "| xargs modprobe -a -b -q; "
                    "[ -f /lib/systemd/system/systemd-modules-load.service ] && "
                    "systemctl restart systemd-modules-load.service; true",
                ],
                check=False,
            )
        self.check_and_rebuild_dependent_modules(kver, arch)

    def weak_modules(self, what: str, conf: DkmsConf, module: str, kver: str, arch: str) -> None:
        """RHEL's weak-modules / SUSE's weak-modules2 (kABI tracking), as dkms sets them up."""
        if self.environ.get("NO_WEAK_MODULES") or conf.no_weak_modules:
            return
        distro = self.settings.distro
        suffix = self.suffix(kver)
        if distro.startswith("rhel"):
            tool = self.layout.under("/usr/sbin/weak-modules")
            argv = [str(tool), "--no-initramfs", f"--{what}-modules"]
        elif distro.startswith(("sles", "suse", "opensuse")):
            tool = self.layout.under("/usr/lib/module-init-tools/weak-modules2")
            # dkms passes a literal '${kernelver}' here; the kernel release is what is meant
            argv = [str(tool), f"--{what}-kernel-modules", kver]
        else:
            return
        if not os.access(tool, os.X_OK):
            return
        self.console.echo(f"{'Adding' if what == 'add' else 'Removing'} linked weak modules...")
        files = []
        for entry in conf.active_modules:
            found = compressed_or_uncompressed(
                Path(f"{self.layout.modules_dir(kver)}{entry.dest_location}"),
                entry.dest_name,
                suffix,
            )
            if found is not None:
                files.append(str(found))
        run.run(argv, check=False, stdin_text="".join(f"{f}\n" for f in files))

    def check_and_rebuild_dependent_modules(self, kver: str, arch: str) -> None:
        """BUILD_DEPENDS_REBUILD: rebuild modules built for K/A whose dependency's version
        changed (upgrade or downgrade) since they were built."""
        if self.options.force:
            return
        todo: list[tuple[str, str]] = []
        for entry in self.tree.status("", "", kver, arch):
            if entry.state not in ("built", "installed") or entry.kver != kver:
                continue
            try:
                conf = self.read_conf(
                    entry.module,
                    entry.version,
                    kver,
                    arch,
                    self.layout.source_link(entry.module, entry.version) / "dkms.conf",
                )
            except DkmsError:
                continue
            if not conf.build_depends or not conf.build_depends_rebuild:
                continue
            base = self.layout.built_dir(entry.module, entry.version, kver, arch)
            for dep in conf.build_depends:
                dep_version = self.latest_registered_version(dep, kver, arch)
                if not dep_version:
                    continue
                try:
                    recorded = (base / f".dep_{dep}").read_text(encoding="utf-8").strip()
                except OSError:
                    recorded = None
                if recorded != dep_version:
                    todo.append((entry.module, entry.version))
                    break
        for module, version in todo:
            self.console.echo(
                "", f"Rebuilding module {module}/{version} due to updated dependencies", ""
            )
            self.do_uninstall(module, version, kver, arch)
            self.do_unbuild(module, version, kver, arch)
            self.do_build(module, version, kver, arch)
            self.do_install(module, version, kver, arch)

    def check_version_sanity(
        self,
        module: str,
        version: str,
        kver: str,
        arch: str,
        obsolete_by: str,
        name: str,
        force: bool,
        force_version_override: bool,
    ) -> bool:
        if obsolete_by and _is_obsolete(kver, obsolete_by, force):
            self.console.echo_err(
                "",
                f"Module has been obsoleted due to being included in kernel {obsolete_by}.",
                f"We will avoid installing for future kernels above {obsolete_by}.",
                "You may override by specifying --force.",
            )
            return False
        suffix = self.suffix(kver)
        found = find_module_files(self.layout.modules_dir(kver), name, suffix)
        if not found:
            return True
        if force_version_override:
            return True
        if len(found) > 1:
            self.console.warn(
                "Cannot do version sanity checking because multiple "
                f"{name}.ko{suffix} modules were found in kernel {kver}."
            )
            return True
        kernels_module = found[0]
        dkms_module = compressed_or_uncompressed(
            self.layout.built_dir(module, version, kver, arch) / "module", name, suffix
        )
        kernel_info = module_verinfo(kernels_module)
        dkms_info = module_verinfo(dkms_module)
        result = compare_versions(kernel_info, dkms_info)
        if result == ">" and not force:
            self.console.error(
                f"Module version {dkms_info[0]} for {name}.ko{suffix}",
                f"is not newer than what is already found in kernel {kver} ({kernel_info[0]}).",
                "You may override by specifying --force.",
            )
            return False
        if result == "==" and not force:
            identical = dkms_module is not None and fsutil.same_content(kernels_module, dkms_module)
            if "".join(dkms_info).strip() or identical:
                if dkms_info[0]:
                    self.console.echo_err(
                        f"Module {kernels_module} already installed at version {dkms_info[0]}, "
                        "override by specifying --force"
                    )
                else:
                    self.console.echo_err(
                        f"Module {kernels_module} already installed (unversioned module), "
                        "override by specifying --force"
                    )
                return False
        return True

    def is_interrupted_install(
        self, entry: ModuleEntry, base_dir: Path, lib_tree: Path, suffix: str
    ) -> bool:
        """Our own module, byte for byte, already at its destination while the module is not
        active: an install killed between the copy and the link. Not a kernel module to check
        versions against or to archive (the real original, if any, was archived by then)."""
        ours = compressed_or_uncompressed(base_dir / "module", entry.dest_name, suffix)
        there = compressed_or_uncompressed(
            Path(f"{lib_tree}{entry.dest_location}"), entry.dest_name, suffix
        )
        return ours is not None and there is not None and fsutil.same_content(ours, there)

    def repair_depmod(self, module: str, version: str, kver: str, arch: str) -> None:
        """A run killed between installing (or deleting) files and depmod left modules.dep
        stale; a re-run that finds nothing else to do must still run depmod (issue #9)."""
        mdir = self.layout.modules_dir(kver)
        link = self.layout.active_link(module, kver, arch)
        try:
            if link.is_symlink() and (
                (mdir / "modules.dep").stat().st_mtime_ns > link.lstat().st_mtime_ns
            ):
                return  # depmod ran after the install: the cheap, common case
            lines = (mdir / "modules.dep").read_text(encoding="utf-8", errors="replace")
            conf = read_conf(
                self.layout.source_link(module, version) / "dkms.conf",
                module,
                version,
                kver,
                arch,
                self.conf_context(kver),
                _null_console(),
            )
        except (OSError, DkmsError):
            return
        listed = {line.split(":", 1)[0] for line in lines.splitlines()}
        suffix = self.suffix(kver)
        for entry in conf.active_modules:
            rel = f"{entry.dest_location.strip('/')}/{entry.dest_name}.ko{suffix}"
            if (mdir / rel).is_file() != (rel in listed):
                self.invoke_fn("Running depmod", lambda: self.depmod(kver), conf.package_name)
                return

    def repair_depmod_all(self, kver: str, arch: str) -> None:
        """repair_depmod for every module installed on kver (the engine's re-runs skip them)."""
        for module, version in self.tree.module_versions():
            if self.tree.is_installed(module, version, kver, arch):
                self.repair_depmod(module, version, kver, arch)

    def maybe_install(self, module: str, version: str, kver: str, arch: str) -> None:
        if self.tree.is_installed(module, version, kver, arch):
            if self.options.force:
                self.do_uninstall(module, version, kver, arch)
                self.console.echo("")
            else:
                self.console.echo(
                    f"Module {module}/{version} already installed on kernel {kver} ({arch}), "
                    "skip. You may override by specifying --force."
                )
                self.repair_depmod(module, version, kver, arch)
                return
        self.do_install(module, version, kver, arch)

    # -- uninstall / unbuild / remove ----------------------------------------------------------

    def find_actual_dest(self, module: str, kver: str, arch: str, entry: object) -> str | None:
        from .dkmsconf import ModuleEntry

        assert isinstance(entry, ModuleEntry)
        suffix = self.suffix(kver)
        locations = [entry.dest_location]
        if entry.conf_dest_location != entry.dest_location:
            locations.append(entry.conf_dest_location)
        owned = compressed_or_uncompressed(
            self.layout.active_link(module, kver, arch) / "module", entry.dest_name, suffix
        )
        owned_info = module_verinfo(owned)
        for loc in locations:
            installed = compressed_or_uncompressed(
                Path(f"{self.layout.modules_dir(kver)}{loc}"), entry.dest_name, suffix
            )
            if installed is None:
                continue
            if compare_versions(owned_info, module_verinfo(installed)) in ("==", "="):
                return loc
        return None

    def do_uninstall(self, module: str, version: str, kver: str, arch: str) -> None:
        layout = self.layout
        backup_dir = layout.original_module_dir(module, kver, arch)
        self.console.echo(f"Module {module}/{version} for kernel {kver} ({arch}):")
        suffix = self.suffix(kver)
        conf = self.read_conf(module, version, kver, arch)
        lib_tree = layout.modules_dir(kver)
        link = layout.active_link(module, kver, arch)
        was_active = self.tree.is_active(module, version, kver, arch)
        if was_active:
            self.console.echo("Before uninstall, this module version was ACTIVE on this kernel.")
            self.weak_modules("remove", conf, module, kver, arch)
            for entry in conf.modules:
                name = entry.dest_name
                real = self.find_actual_dest(module, kver, arch, entry)
                if real is not None:
                    self.console.echo(f"Deleting {lib_tree}{real}/{name}.ko{suffix}")
                    for path in Path(f"{lib_tree}{real}").glob(f"{name}.ko*"):
                        if path.is_file() or path.is_symlink():
                            path.unlink()
                    faults.point("uninstall.deleted")
                    _rmdir_parents(lib_tree, real.strip("/"))
                else:
                    self.console.echo(f"Module {name}.ko{suffix} was not found within {lib_tree}/")
                    # deleted by a run killed before it removed the emptied directories
                    _rmdir_parents(lib_tree, entry.dest_location.strip("/"))
                if backup_dir.is_dir():
                    for origin in sorted(backup_dir.rglob(f"{name}.*.origin")):
                        if not origin.is_file():
                            continue
                        original = Path(str(origin)[: -len(".origin")])
                        if not original.is_file():
                            continue
                        try:
                            location = origin.read_text(encoding="utf-8").splitlines()[0]
                        except (OSError, IndexError):
                            location = ""
                        if location.startswith(f"{lib_tree}/") and fsutil.is_within(
                            Path(location).parent, lib_tree
                        ):
                            self.console.echo(f"Restoring archived original module {location}")
                            Path(location).parent.mkdir(parents=True, exist_ok=True)
                            fsutil.move(original, Path(location))
                            origin.unlink()
                        else:
                            self.console.warn(f"Bad original location '{location}' in {origin}")
                    _delete_empty_dirs(backup_dir.parent)
                legacy = compressed_or_uncompressed(backup_dir, name, suffix)
                if legacy is not None:
                    self.console.echo("Restoring archived original module")
                    target = Path(f"{lib_tree}{entry.conf_dest_location}")
                    target.mkdir(parents=True, exist_ok=True)
                    fsutil.move(legacy, target / legacy.name)
            link.unlink(missing_ok=True)
        else:
            self.console.echo("This module version was INACTIVE for this kernel.")
        self.run_script("post_remove", conf.post_remove, module, version, kver=kver, arch=arch)
        if self.options.delayed_depmod:
            self.depmod_pending = True
        else:
            self.invoke_fn("Running depmod", lambda: self.depmod(kver), conf.package_name)
        orig_k = layout.dkms_tree / module / "original_module" / kver
        unrestored = [  # never delete an original we could not put back (issue #9)
            p for p in backup_dir.rglob("*.ko*") if p.is_file() and p.suffix != ".origin"
        ]
        if was_active and unrestored:
            self.console.warn(
                f"Keeping {len(unrestored)} original module(s) in {backup_dir}: "
                "they could not be restored."
            )
        elif was_active and backup_dir.is_dir():
            self.console.echo(
                f"Removing original module(s) from DKMS tree for kernel {kver} ({arch})"
            )
            fsutil.remove_tree(backup_dir)
            if orig_k.is_dir() and not any(p.is_dir() for p in orig_k.iterdir()):
                fsutil.remove_tree(orig_k)
        orig = layout.dkms_tree / module / "original_module"
        if orig.is_dir() and not any(p.is_dir() for p in orig.iterdir()):
            fsutil.remove_tree(orig)

    def maybe_uninstall(self, module: str, version: str, kver: str, arch: str) -> None:
        if not self.tree.is_installed(module, version, kver, arch):
            conf_path = self.layout.source_link(module, version) / "dkms.conf"
            excluded = False
            if conf_path.is_file():
                quiet = _null_console()
                try:
                    conf = read_conf(
                        conf_path, module, version, kver, arch, self.conf_context(kver), quiet
                    )
                    excluded = conf.has_per_module_exclusive
                except DkmsError:
                    excluded = False
            if not excluded:
                self.console.echo(
                    f"Module {module}/{version} is not installed for kernel {kver} ({arch}). "
                    "Skipping..."
                )
            if self.tree.is_built(module, version, kver, arch) and not self.options.delayed_depmod:
                self.repair_depmod(module, version, kver, arch)
            return
        self.do_uninstall(module, version, kver, arch)

    def do_unbuild(self, module: str, version: str, kver: str, arch: str) -> None:
        kdir = self.layout.kernel_dir(module, version, kver)
        if kdir.is_symlink():
            kdir.unlink()  # planted: drop the link, never what it points to (issue #9)
            return
        fsutil.remove_tree(self.layout.built_dir(module, version, kver, arch))
        if kdir.is_dir() and not any(p.is_dir() for p in kdir.iterdir()):
            fsutil.remove_tree(kdir)

    def maybe_unbuild(self, module: str, version: str, kver: str, arch: str) -> None:
        if not self.tree.is_built(module, version, kver, arch):
            self.console.echo(
                f"Module {module}/{version} is not built for kernel {kver} ({arch}). Skipping..."
            )
            return
        self.do_unbuild(module, version, kver, arch)

    def remove_module(self, module: str, version: str, kernels: Sequence[tuple[str, str]]) -> None:
        vdir = self.layout.version_dir(module, version)
        mdir = self.layout.module_dir(module)
        janitor.sweep_module(mdir)  # what killed runs left (we hold the tree lock)
        if vdir.is_dir():
            for child in vdir.iterdir():
                if child.is_dir() and not child.is_symlink() and not any(child.iterdir()):
                    child.rmdir()
        if self.options.rpm_safe_upgrade and self.rpm_safe_upgrade_cancel(module, version):
            self.console.warn("Remove cancelled because --rpm_safe_upgrade scenario detected.")
            return
        for kver, arch in kernels:
            self.maybe_uninstall(module, version, kver, arch)
            self.maybe_unbuild(module, version, kver, arch)
            self.console.echo("")
        if not self.tree.kernel_dirs_left(module, version):
            self.console.echo(f"Deleting module {module}/{version} completely from the DKMS tree.")
            fsutil.remove_tree(vdir)
        if mdir.is_dir() and not os.listdir(mdir):
            fsutil.remove_tree(mdir)

    def rpm_safe_upgrade_cancel(self, module: str, version: str) -> bool:
        from .rpmsafe import find_and_clear_lock

        return find_and_clear_lock(self, module, version)


def _is_obsolete(kver: str, obsolete_by: str, force: bool) -> bool:
    from .versions import ver_key

    if force:
        return False
    obs = obsolete_by.split("-")
    mine = kver.split("-")
    obs0, mine0 = ver_key(obs[0]), ver_key(mine[0])
    if obs0 == mine0:
        if len(obs) < 2 or not obs[1]:
            return True
        mine1 = ver_key(mine[1]) if len(mine) > 1 else ""
        obs1 = ver_key(obs[1])
        return mine1.encode() >= obs1.encode()
    return mine0.encode() > obs0.encode()


def _rmdir_parents(top: Path, relative: str) -> None:
    """`cd top && rmdir -p --ignore-fail-on-non-empty relative`."""
    parts = [p for p in relative.split("/") if p]
    while parts:
        try:
            (top / "/".join(parts)).rmdir()
        except OSError:
            return
        parts.pop()


def _delete_empty_dirs(top: Path) -> None:
    """`find top -type d -empty -delete` (depth first)."""
    if not top.is_dir():
        return
    for dirpath, _dirnames, _filenames in sorted(os.walk(top), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass
