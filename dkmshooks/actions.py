"""The dkms lifecycle actions (add, build, install, uninstall, unbuild, remove, status) with
dkms 3.4's messages, order and exit codes."""

from __future__ import annotations

import fnmatch
import os
import random
import re
import shutil
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import DKMS_RELEASE_STRING, fsutil, run
from .console import Console
from .dkmsconf import ConfContext, DkmsConf, read_conf
from .errors import (
    AlreadyAddedError,
    BadConfError,
    BrokenModuleError,
    BuildFailedError,
    BuiltModuleMissingError,
    DkmsError,
    EmptyKernelError,
    ExcludedError,
    HeadersMissingError,
    InstallError,
    MissingDependsError,
    NoConfInPathError,
    NotAddedError,
    PatchFailedError,
    PatchMissingError,
    PreInstallFailedError,
    ScriptFailedError,
    SourceMissingError,
    UsageError,
)
from .framework import Settings
from .kernel import (
    KernelFacts,
    compressed_or_uncompressed,
    find_module_files,
    kernel_facts,
    module_compressed_suffix,
)
from .layout import Layout
from .modinfo import compare_versions, module_verinfo
from .tree import Tree


@dataclass(frozen=True)
class Options:
    """What the command line asked for, beyond module/version/kernels."""

    force: bool = False
    force_version_override: bool = False
    verbose: bool = False
    no_depmod: bool = False
    conf: Path | None = None
    kernel_source_dir: Path | None = None
    kernel_config: Path | None = None
    directives: tuple[tuple[str, str], ...] = ()
    rpm_safe_upgrade: bool = False
    modprobe_on_install: bool = False
    symlink_modules: bool = False


@dataclass
class Signing:
    enabled: bool = False
    sign_file: str = ""
    hash: str = ""
    key: str = ""
    cert: str = ""


@dataclass
class Session:
    """One dkms invocation: settings, options, and the little state dkms keeps between steps."""

    settings: Settings
    options: Options
    console: Console
    environ: Mapping[str, str]
    prepared_kernel: str = "none"
    signing: Signing = field(default_factory=Signing)
    _suffix_cache: dict[str, str] = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        return self.settings.layout

    @property
    def tree(self) -> Tree:
        return Tree(self.layout)

    @property
    def parallel_jobs(self) -> str:
        jobs = self.settings.parallel_jobs
        return "" if jobs == "0" else jobs

    # -- facts ---------------------------------------------------------------------------------

    def facts(self, kver: str) -> KernelFacts:
        return kernel_facts(
            self.layout,
            kver,
            source_dir=self.options.kernel_source_dir,
            config=self.options.kernel_config,
        )

    def suffix(self, kver: str) -> str:
        if kver not in self._suffix_cache:
            self._suffix_cache[kver] = module_compressed_suffix(self.layout, kver)
        return self._suffix_cache[kver]

    def forget_suffix(self, kver: str) -> None:
        self._suffix_cache.pop(kver, None)

    def conf_context(self, kver: str) -> ConfContext:
        facts = self.facts(kver)
        return ConfContext(
            etc_dkms=self.layout.etc_dkms,
            distro=self.settings.distro,
            addon_modules_dir=self.settings.addon_modules_dir,
            dkms_tree=self.layout.dkms_tree,
            source_tree=self.layout.source_tree,
            install_tree=self.layout.install_tree,
            tmp_location=self.settings.tmp_location,
            parallel_jobs=self.parallel_jobs,
            kernel_source_dir=facts.source_dir,
            kernel_config=facts.config,
            directives=self.options.directives,
            verbose=self.options.verbose or self.settings.verbose,
            force=self.options.force,
            environ=self.environ,
        )

    def read_conf(
        self,
        module: str,
        version: str,
        kver: str,
        arch: str,
        path: Path | None = None,
        *,
        strict: bool = False,
    ) -> DkmsConf:
        """read_conf(_strict)_or_die: `path` is dkms's explicit third argument."""
        conf_path = (
            path or self.options.conf or self.layout.source_link(module, version) / ("dkms.conf")
        )
        shown = str(path) if path is not None else str(self.options.conf or "")
        return read_conf(
            conf_path,
            module,
            version,
            kver,
            arch,
            self.conf_context(kver),
            self.console,
            strict=strict,
            shown_path=shown,
        )

    # -- output helpers ------------------------------------------------------------------------

    @property
    def verbose(self) -> bool:
        return self.options.verbose or self.settings.verbose

    def _ticker(self, package_name: str) -> object:
        if self.verbose or fnmatch.fnmatchcase(package_name, "dkms*_test"):
            return None
        return lambda: self.console.write(".")

    def invoke(
        self,
        command: str,
        description: str,
        *,
        logfile: Path | None,
        package_name: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """dkms's invoke_command in background mode."""
        if self.verbose:
            self.console.echo(command)
        else:
            self.console.write(f"{description}...")
        tick = self._ticker(package_name)
        if logfile is not None:
            rc = run.run_logged(
                command,
                logfile,
                description=description,
                cwd=cwd,
                env=env,
                tick=tick,  # type: ignore[arg-type]
            )
        else:
            rc = run.run_quiet_status(command, cwd=cwd, env=env, tick=tick)  # type: ignore[arg-type]
        if rc > 0:
            self.console.write(f"(bad exit status: {rc})")
            if not self.verbose:
                self.console.write(f"\nFailed command:\n{command}\n")
        else:
            self.console.write(" done.\n")
        return rc

    def invoke_fn(self, description: str, fn: object, package_name: str) -> int:
        """invoke_command for work we do ourselves (depmod): `desc...` then ` done.`"""
        if not self.verbose:
            self.console.write(f"{description}...")
        try:
            rc = int(fn())  # type: ignore[operator]
        except DkmsError:
            rc = 1
        if rc > 0:
            self.console.write(f"(bad exit status: {rc})")
            if not self.verbose:
                self.console.write(f"\nFailed command:\n{description}\n")
        else:
            self.console.write(" done.\n")
        return rc

    def script_env(self, module: str, version: str, kver: str, arch: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in self.environ.items()
            if k not in ("CC", "CXX", "CFLAGS", "CXXFLAGS", "LDFLAGS")
        }
        facts = self.facts(kver) if kver else None
        env.update(
            module=module,
            module_version=version,
            kernelver=kver,
            arch=arch,
            dkms_tree=str(self.layout.dkms_tree),
            source_tree=str(self.layout.source_tree),
            install_tree=str(self.layout.install_tree),
            parallel_jobs=self.parallel_jobs,
        )
        if facts is not None:
            env["kernel_source_dir"] = str(facts.source_dir)
            env["kernel_config"] = str(facts.config)
        return env

    # -- scripts -------------------------------------------------------------------------------

    def run_script(
        self,
        kind: str,
        value: str,
        module: str,
        version: str,
        *,
        kver: str = "",
        arch: str = "",
        logfile: Path | None = None,
        package_name: str = "",
    ) -> int:
        """run_build_script: pre/post_build run in build/ with a log; others in source/."""
        if not value:
            return 0
        script_type = "build" if kind in ("pre_build", "post_build") else "source"
        base = self.layout.version_dir(module, version) / script_type
        command = f"{base}/{value}"
        executable = command.split(" ", 1)[0]
        env = self.script_env(module, version, kver, arch)
        if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
            self.console.echo("")
            self.console.warn(f"The {kind} script is not executable.")
            return 0
        if logfile is not None:
            rc = self.invoke(
                f"cd {base}/ && {command}",
                f"Running the {kind} script",
                logfile=logfile,
                package_name=package_name,
                env=env,
            )
            if rc != 0:
                self.console.echo(f"Consult {logfile} for more information.")
                raise ScriptFailedError(code=rc)
            return 0
        self.console.echo(f"Running the {kind} script:")
        proc = run.run(command.split(), cwd=base, env=env, check=False)
        return proc.returncode

    # -- add -----------------------------------------------------------------------------------

    def add_source_tree(self, path: Path, kver: str, arch: str) -> tuple[str, str]:
        """Copy a directory holding a dkms.conf to /usr/src/m-v (dkms's add_source_tree)."""
        src = Path(os.path.realpath(path))
        if not (src / "dkms.conf").is_file():
            raise NoConfInPathError(f"{path} must contain a dkms.conf file!")
        require_root()
        try:
            conf = self.read_conf("", "", kver, arch, src / "dkms.conf")
        except BadConfError as exc:
            self.console.error(*exc.lines)
            raise DkmsError("Malformed dkms.conf file. Cannot load source tree.", code=10) from exc
        module, version = conf.package_name, conf.package_version
        check_name(module, version)
        dest = self.layout.module_source(module, version)
        if self.options.force and dest.is_dir():
            self.console.echo_err("")
            self.console.echo(f"Forcing install of {module}/{version}")
            shutil.rmtree(dest)
        if src in (
            Path(os.path.realpath(dest)),
            Path(os.path.realpath(self.layout.source_link(module, version))),
            Path(os.path.realpath(self.layout.build_dir(module, version))),
        ):
            return module, version
        fsutil.copy_tree_into(src, dest)
        return module, version

    def add_module(self, module: str, version: str, kver: str, arch: str) -> None:
        check_module_args("add", module, version)
        check_name(module, version)
        if self.tree.is_added(module, version):
            raise AlreadyAddedError(
                f"DKMS tree already contains: {module}/{version}",
                "You cannot add the same module/version combo more than once.",
            )
        source_dir = self.layout.module_source(module, version)
        conf_path = self.options.conf or source_dir / "dkms.conf"
        if not source_dir.is_dir():
            raise SourceMissingError(
                "Could not find module source directory.",
                f"Directory: {source_dir} does not exist.",
            )
        conf = self.read_conf(module, version, kver, arch, conf_path, strict=True)
        link = self.layout.source_link(module, version)
        self.console.echo(f"Creating symlink {link} -> {source_dir}")
        self.layout.build_dir(module, version).mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        fsutil.symlink_atomic(str(source_dir), link)
        self.run_script("post_add", conf.post_add, module, version, kver=kver, arch=arch)

    # -- build ---------------------------------------------------------------------------------

    def prepare_kernel_and_signing(self, kver: str, arch: str) -> None:
        if self.prepared_kernel == f"{kver}/{arch}":
            return
        self.prepare_kernel(kver)
        self.prepare_signing(kver)
        self.prepared_kernel = f"{kver}/{arch}"
        self.console.echo("")

    def prepare_kernel(self, kver: str) -> None:
        if not self.facts(kver).headers_ready:
            tree = self.layout.install_tree
            raise HeadersMissingError(
                f"Your kernel headers for kernel {kver} cannot be found at "
                f"{tree}/{kver}/build or {tree}/{kver}/source.",
                "Please install your distribution's kernel headers package matching "
                f"{kver}, or use the --kernelsourcedir option to tell DKMS where it's located.",
            )

    def prepare_signing(self, kver: str) -> None:
        from .sign import prepare_signing

        self.signing = prepare_signing(self, kver)

    def do_build(self, module: str, version: str, kver: str, arch: str) -> None:
        if not kver or not arch:
            raise EmptyKernelError("do_build: Empty $kernelver or $arch")
        if not self.tree.is_added(module, version):
            self.add_module(module, version, kver, arch)
            self.console.echo("")
        layout = self.layout
        source_dir = layout.source_link(module, version)
        build_dir = layout.build_dir(module, version)
        kernel_dir = layout.kernel_dir(module, version, kver)
        base_dir = layout.built_dir(module, version, kver, arch)
        build_log = build_dir / "make.log"
        if base_dir.is_dir():
            raise AlreadyAddedError(
                f"This module/version has already been built on: {kver}",
                f"Directory {base_dir} already exists. Use the dkms remove function before "
                "trying to build again.",
            )
        suffix = self.suffix(kver)
        conf = self.read_conf(module, version, kver, arch, strict=True)
        if conf.build_exclude:
            raise ExcludedError(
                f"The {base_dir}/dkms.conf",
                f"for module {module}/{version} includes BUILD_EXCLUSIVE directives",
                "which do not match this kernel/arch/config for any modules.",
                "This indicates that it should not be built.",
            )
        try:
            entries = [e for e in os.listdir(source_dir)]
        except OSError:
            entries = []
        if len(entries) < 2:
            raise BadConfError(
                f"The directory {source_dir} does not appear to have module source located "
                "within it.",
                "Build halted.",
            )
        self.prepare_kernel_and_signing(kver, arch)
        facts = self.facts(kver)
        env = self.script_env(module, version, kver, arch)
        env.update(self.compiler_env(facts))
        env.update(self.build_environment())

        missing = self.missing_build_depends(conf, kver, arch)
        if missing:
            text = " " + " ".join(missing)
            if self.options.force:
                self.console.warn(
                    f"Trying to build module {module}/{version} for kernel {kver} ({arch}) "
                    f"despite of missing BUILD_DEPENDS:{text}."
                )
            else:
                raise MissingDependsError(
                    f"Aborting build of module {module}/{version} for kernel {kver} ({arch}) "
                    f"due to missing BUILD_DEPENDS:{text}.",
                    "You may override by specifying --force.",
                )

        if build_dir.exists() or build_dir.is_symlink():
            fsutil.remove_tree(build_dir)
        fsutil.copy_tree(Path(os.path.realpath(source_dir)), build_dir)
        etc_patches = layout.etc_dkms / module / "patches"
        if etc_patches.is_dir():
            fsutil.copy_tree_into(etc_patches, build_dir / "patches")
        with open(build_log, "a", encoding="utf-8") as fh:
            fh.write(
                f"{DKMS_RELEASE_STRING.join(('DKMS (', ')'))} make.log for {module}/{version} "
                f"for kernel {kver} ({arch})\n"
            )
            fh.write(time.strftime("%a %b %e %H:%M:%S %Z %Y") + "\n")

        name = conf.package_name
        for patch in conf.patches:
            if "/../" in f"patches/{patch}":
                self.report_build_problem(
                    module,
                    version,
                    kver,
                    PatchMissingError(
                        f"Patch {patch} as specified in dkms.conf contains '..' path component."
                    ),
                )
            if not (build_dir / "patches" / patch).exists():
                self.report_build_problem(
                    module,
                    version,
                    kver,
                    PatchMissingError(
                        f"Patch {patch} as specified in dkms.conf cannot be",
                        f"found in {build_dir}/patches/.",
                    ),
                )
            rc = self.invoke(
                f"patch -p1 < ./patches/{patch}",
                f"Applying patch {patch}",
                logfile=build_log,
                package_name=name,
                cwd=build_dir,
                env=env,
            )
            if rc != 0:
                self.report_build_problem(
                    module,
                    version,
                    kver,
                    PatchFailedError(
                        f"Application of patch {patch} failed.",
                        f"Consult {build_log} for more information.",
                    ),
                )

        self.run_script(
            "pre_build",
            conf.pre_build,
            module,
            version,
            kver=kver,
            arch=arch,
            logfile=build_log,
            package_name=name,
        )

        make_command = conf.make_command
        if make_command.startswith("make"):
            make_command = (
                f"make -j{self.parallel_jobs} KERNELRELEASE={kver}" + make_command[len("make") :]
            )
        rc = self.invoke(
            make_command,
            "Building module(s)",
            logfile=build_log,
            package_name=name,
            cwd=build_dir,
            env=env,
        )
        if rc != 0:
            self.report_build_problem(
                module,
                version,
                kver,
                BuildFailedError(
                    f"Bad return status for module build on kernel: {kver} ({arch})",
                    f"Consult {build_log} for more information.",
                ),
            )

        for entry in conf.active_modules:
            built = build_dir / f"{entry.built_location}{entry.built_name}.ko"
            if not built.exists():
                self.report_build_problem(
                    module,
                    version,
                    kver,
                    BuiltModuleMissingError(
                        f"Build of {entry.built_location}{entry.built_name}.ko failed for: "
                        f"{kver} ({arch})",
                        "Make sure the name and location of the generated module are correct,",
                        f"or consult {build_log} for more information.",
                    ),
                )

        kernel_dir.mkdir(parents=True, exist_ok=True)
        tmp_base = _mkdtemp6(kernel_dir, f".tmp_{arch}_")
        (tmp_base / "log").mkdir()
        (tmp_base / "module").mkdir()
        symvers = build_dir / "Module.symvers"
        if symvers.is_file():
            shutil.copyfile(symvers, tmp_base / "module" / "Module.symvers")
        from .compress import compress_module
        from .sign import sign_module

        for entry in conf.active_modules:
            built = build_dir / f"{entry.built_location}{entry.built_name}.ko"
            if not built.is_file():
                self.console.warn(f"{built} has disappeared")
                continue
            if entry.strip:
                strip_tool = "llvm-strip" if env.get("CC") == "clang" else "strip"
                run.run([strip_tool, "-g", str(built)], check=False)
            if self.signing.enabled:
                sign_module(self, built)
            result = compress_module(self, built, suffix)
            if result is not None:
                shutil.copyfile(result, tmp_base / "module" / f"{entry.dest_name}.ko{suffix}")
            else:
                shutil.copyfile(built, tmp_base / "module" / f"{entry.dest_name}.ko")
        for entry in conf.active_modules:
            found = compressed_or_uncompressed(tmp_base / "module", entry.dest_name, suffix)
            if found is None or not found.is_file():
                raise BuiltModuleMissingError(
                    f"Missing module '{entry.dest_name}' in {tmp_base}/module"
                )
        os.chmod(tmp_base, 0o755)
        fsutil.fsync_tree(tmp_base)
        os.rename(tmp_base, base_dir)
        fsutil.fsync_dir(kernel_dir)

        self.run_script(
            "post_build",
            conf.post_build,
            module,
            version,
            kver=kver,
            arch=arch,
            logfile=build_log,
            package_name=name,
        )
        try:
            os.replace(build_log, base_dir / "log" / "make.log")
        except OSError:
            pass
        fsutil.remove_tree(build_dir)

    def compiler_env(self, facts: KernelFacts) -> dict[str, str]:
        """CC from CONFIG_CC_VERSION_TEXT (dkms exports it so the module's compiler matches)."""
        env: dict[str, str] = {}
        text = facts.config_value("CONFIG_CC_VERSION_TEXT")
        if text:
            cc = text.split(" ", 1)[0]
            if cc and shutil.which(cc):
                env["CC"] = env["KERNEL_CC"] = cc
        if facts.config_value("CONFIG_CC_IS_CLANG") == "y" and shutil.which("clang"):
            env["CC"] = env["KERNEL_CC"] = "clang"
        if facts.config_value("CONFIG_LD_IS_LLD") == "y" and shutil.which("ld.lld"):
            env["LD"] = env["KERNEL_LD"] = "ld.lld"
        return env

    def build_environment(self) -> dict[str, str]:
        path = self.settings.build_environment
        if not path or not os.path.isfile(path):
            return {}
        proc = run.run(
            ["bash", "-c", 'source "$1" >/dev/null 2>&1; env -0', "bash", path],
            check=False,
            capture=True,
        )
        env: dict[str, str] = {}
        for item in proc.stdout.split("\0"):
            key, sep, value = item.partition("=")
            if sep and key not in ("PWD", "SHLVL", "_", "OLDPWD"):
                env[key] = value
        return env

    def missing_build_depends(self, conf: DkmsConf, kver: str, arch: str) -> list[str]:
        missing = []
        for dep in conf.build_depends:
            installed = any(e.state == "installed" for e in self.tree.status(dep, "", kver, arch))
            if not installed:
                missing.append(dep)
        return missing

    def report_build_problem(self, module: str, version: str, kver: str, error: DkmsError) -> None:
        apport = self.layout.under("/usr/share/apport/apport")
        if os.access(apport, os.X_OK) and shutil.which("python3"):
            run.run(
                [
                    "python3",
                    str(self.layout.under("/usr/share/apport/package-hooks/dkms_packages.py")),
                    "-m",
                    module,
                    "-v",
                    version,
                    "-k",
                    kver,
                ],
                check=False,
            )
        raise error

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
            if not self.check_version_sanity(
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
            elif not active_link.is_symlink():
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
                    backup_dir.mkdir(parents=True, exist_ok=True)
                    fsutil.move(original, backup_dir / original.name)
                    fsutil.write_atomic(backup_dir / f"{original.name}.origin", f"{original}\n")
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
        if conf.modules and not any_installed:
            raise InstallError("Installation aborted.")
        fsutil.symlink_atomic(f"{version}/{kver}/{arch}", active_link)
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
                return
        self.do_install(module, version, kver, arch)

    # -- depmod --------------------------------------------------------------------------------

    def depmod_base(self) -> list[str]:
        tree = self.layout.install_tree
        if tree == Path("/lib/modules") or tree == Path("/usr/lib/modules"):
            return []
        if tree.name == "modules" and tree.parent.name == "lib":
            base = tree.parent.parent
            if base.name == "usr":
                base = base.parent
            return ["-b", str(base)]
        return []

    def depmod(self, kver: str) -> int:
        if self.options.no_depmod:
            return 0
        mdir = self.layout.modules_dir(kver)
        modules_dep = mdir / "modules.dep"
        if not modules_dep.is_file():
            return 0
        argv = ["depmod", *self.depmod_base(), "-a", kver]
        system_map = self.layout.boot_system_map(kver)
        if system_map.is_file():
            argv += ["-F", str(system_map)]
        proc = run.run(argv, check=False, quiet=not self.verbose)
        if modules_dep.is_file() and modules_dep.stat().st_size == 0:
            for pattern in (
                "modules.alias",
                "modules.dep",
                "modules.devname",
                "modules.softdep",
                "modules.symbols",
                "modules.weakdep",
                "modules.*.bin",
            ):
                for path in mdir.glob(pattern):
                    path.unlink(missing_ok=True)
            try:
                mdir.rmdir()
            except OSError:
                pass
        return proc.returncode

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
            for entry in conf.modules:
                name = entry.dest_name
                real = self.find_actual_dest(module, kver, arch, entry)
                if real is not None:
                    self.console.echo(f"Deleting {lib_tree}{real}/{name}.ko{suffix}")
                    for path in Path(f"{lib_tree}{real}").glob(f"{name}.ko*"):
                        if path.is_file() or path.is_symlink():
                            path.unlink()
                    _rmdir_parents(lib_tree, real.strip("/"))
                else:
                    self.console.echo(f"Module {name}.ko{suffix} was not found within {lib_tree}/")
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
                        if location.startswith(f"{lib_tree}/"):
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
        self.invoke_fn("Running depmod", lambda: self.depmod(kver), conf.package_name)
        orig_k = layout.dkms_tree / module / "original_module" / kver
        if was_active and backup_dir.is_dir():
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
            return
        self.do_uninstall(module, version, kver, arch)

    def do_unbuild(self, module: str, version: str, kver: str, arch: str) -> None:
        fsutil.remove_tree(self.layout.built_dir(module, version, kver, arch))
        kdir = self.layout.kernel_dir(module, version, kver)
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
        for kdir in vdir.glob("*/.tmp_*"):
            fsutil.remove_tree(kdir)
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
        mdir = self.layout.module_dir(module)
        if mdir.is_dir() and not os.listdir(mdir):
            fsutil.remove_tree(mdir)

    def rpm_safe_upgrade_cancel(self, module: str, version: str) -> bool:
        from .rpmsafe import find_and_clear_lock

        return find_and_clear_lock(self, module, version)

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

    # -- checks --------------------------------------------------------------------------------

    def module_is_broken_and_die(self, module: str, version: str) -> None:
        if self.tree.is_broken(module, version):
            raise BrokenModuleError(
                f"{module}/{version} is broken!",
                "Missing the source directory or the symbolic link pointing to it.",
                "Manual intervention is required!",
            )

    def module_is_added_or_die(self, module: str, version: str) -> None:
        if not self.tree.is_added(module, version):
            raise NotAddedError(
                f"The module/version combo: {module}/{version} is not located in the DKMS tree."
            )


def _null_console() -> Console:
    import io

    return Console(out=io.StringIO(), err=io.StringIO())


def require_root() -> None:
    if os.geteuid() != 0:
        raise DkmsError("You must be root to use this command.", code=1)


def check_module_args(action: str, module: str, version: str) -> None:
    if module and version:
        return
    raise UsageError(
        "Arguments <module> and <module-version> are not specified.",
        f"Usage: {action} <module>/<module-version> or",
        f"       {action} -m <module>/<module-version> or",
        f"       {action} -m <module> -v <module-version>",
    )


_BAD_NAME = re.compile(r"[/\n\0]|^\.\.?$")


def check_name(module: str, version: str) -> None:
    """dkms splits on the first `/` and would then build paths from the rest; a name that is
    not one path component would leave the tree. Refuse it before anything touches disk."""
    for what, value in (("module name", module), ("module version", version)):
        if _BAD_NAME.search(value):
            raise UsageError(
                f"Invalid {what} {value!r}: it must not contain '/', a newline or be '.' or '..'."
            )


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


def _mkdtemp6(parent: Path, prefix: str) -> Path:
    alphabet = string.ascii_letters + string.digits
    for _ in range(100):
        name = prefix + "".join(random.choice(alphabet) for _ in range(6))
        path = parent / name
        try:
            path.mkdir(mode=0o700)
            return path
        except FileExistsError:
            continue
    raise DkmsError("Unable to make temporary directory.", code=1)


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
