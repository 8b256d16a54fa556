"""dkms add and build: registering a source tree and building it for one kernel."""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import DKMS_RELEASE_STRING, faults, fsutil, run
from .dkmsconf import DkmsConf
from .errors import (
    AlreadyAddedError,
    BadConfError,
    BuildFailedError,
    BuiltModuleMissingError,
    DkmsError,
    EmptyKernelError,
    ExcludedError,
    HeadersMissingError,
    MissingDependsError,
    NoConfInPathError,
    PatchFailedError,
    PatchMissingError,
    SourceMissingError,
)
from .kernel import (
    KernelFacts,
    compressed_or_uncompressed,
)
from .session import SessionBase, _mkdtemp6, check_module_args, check_name, require_root
from .versions import natural_key

BUILD_SPACE_MARGIN = 32 * 1024 * 1024


class Builder(SessionBase):
    """add and build."""

    # -- add -----------------------------------------------------------------------------------

    def add_source_tree(self, path: Path, kver: str, arch: str) -> tuple[str, str]:
        """Copy a directory holding a dkms.conf to /usr/src/m-v (dkms's add_source_tree)."""
        import shutil  # not at start-up (with bz2 and lzma): only builds copy

        src = Path(os.path.realpath(path))
        if not (src / "dkms.conf").is_file():
            raise NoConfInPathError(f"{path} must contain a dkms.conf file!")
        require_root()
        conf = self.read_conf("", "", kver, arch, src / "dkms.conf")
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
        check_name(module, version)
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
        import shutil  # not at start-up (with bz2 and lzma): only builds copy

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
        planted = fsutil.find_symlink(layout.dkms_tree, base_dir)
        if planted is not None:
            raise DkmsError(
                f"{planted} is a symbolic link to {os.readlink(planted)}; refusing to build "
                "through it.",
                "Remove it, then build again.",
            )
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

        self.require_free_space(Path(os.path.realpath(source_dir)), build_dir)
        if build_dir.exists() or build_dir.is_symlink():
            fsutil.remove_tree(build_dir)
        fsutil.copy_tree(Path(os.path.realpath(source_dir)), build_dir)
        faults.point("build.source_copied")
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
        pass_fds: tuple[int, ...] = ()
        shown = None
        if make_command.startswith("make") and self.jobserver is not None:
            # Concurrent builds share the engine's jobserver (jobserver.py): make runs without a
            # -j of its own and gets its slots through MAKEFLAGS. What dkms prints and logs is
            # the command it would run with the whole budget, which is what this one amounts to.
            rest = make_command[len("make") :]
            shown = f"make -j{self.jobserver.jobs} KERNELRELEASE={kver}{rest}"
            make_command = f"make KERNELRELEASE={kver}{rest}"
            env["MAKEFLAGS"] = self.jobserver.makeflags
            pass_fds = self.jobserver.fds
        elif make_command.startswith("make"):
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
            pass_fds=pass_fds,
            shown=shown,
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

        faults.point("build.made")
        for entry in conf.active_modules:
            built = Path(f"{build_dir}/{entry.built_location}{entry.built_name}.ko")
            self.require_inside_build_dir(built, build_dir)
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
        for stale in kernel_dir.glob(f".tmp_{arch}_*"):
            fsutil.remove_tree(stale)  # a killed build's staging (we hold the tree lock)
        tmp_base = _mkdtemp6(kernel_dir, f".tmp_{arch}_")
        (tmp_base / "log").mkdir()
        (tmp_base / "module").mkdir()
        symvers = build_dir / "Module.symvers"
        if symvers.is_file():
            shutil.copyfile(symvers, tmp_base / "module" / "Module.symvers")
        from .compress import compress_module
        from .sign import sign_module

        for entry in conf.active_modules:
            built = Path(f"{build_dir}/{entry.built_location}{entry.built_name}.ko")
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
        faults.point("build.staged")
        os.rename(tmp_base, base_dir)
        fsutil.fsync_dir(kernel_dir)
        faults.point("build.renamed")

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
        if conf.build_depends_rebuild and not self.options.force:
            for dep in conf.build_depends:
                dep_version = self.latest_registered_version(dep, kver, arch)
                if dep_version:
                    fsutil.write_atomic(base_dir / f".dep_{dep}", f"{dep_version}\n")

    def require_free_space(self, source: Path, build_dir: Path) -> None:
        """Refuse to start a build that cannot fit (dkms has none: a full disk shows up as a
        compiler error deep in make.log, or a half-copied tree). The estimate, documented in
        docs/guarantees.md: the source copied to build/, objects and modules with debug info
        (together about 3x the source), the staged copy, plus a fixed 32 MiB for everything a
        kernel module build writes whatever its size."""
        size = 0
        for dirpath, _dirnames, filenames in os.walk(source):
            for name in filenames:
                try:
                    size += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        need = 4 * size + BUILD_SPACE_MARGIN
        where = build_dir
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            st = os.statvfs(where)
        except OSError:
            return
        free = st.f_frsize * (st.f_bfree if os.geteuid() == 0 else st.f_bavail)
        if build_dir.is_dir():
            free += sum(  # what the previous build/ frees when it is replaced
                os.lstat(os.path.join(d, f)).st_size
                for d, _, files in os.walk(build_dir)
                for f in files
            )
        if free < need:
            mib = 1024 * 1024
            raise BuildFailedError(
                f"Not enough free space to build in {build_dir}: about {-(-need // mib)} MiB "
                f"needed, {free // mib} MiB available on the file system holding {where}.",
                "Free some space there (or move dkms_tree in framework.conf) and build again.",
            )

    def require_inside_build_dir(self, built: Path, build_dir: Path) -> None:
        """A module is stripped, signed and copied: never through a path that leaves build/
        (a `..` location, or a symlink shipped in the source pointing elsewhere)."""
        if not fsutil.is_within(built, build_dir):
            raise BuiltModuleMissingError(
                f"{built} resolves to {os.path.realpath(built)}, outside the build directory "
                f"{build_dir}; refusing to strip, sign or install it.",
                "Check BUILT_MODULE_LOCATION and the symbolic links in the module source.",
            )

    def latest_registered_version(self, module: str, kver: str, arch: str) -> str:
        """The newest version of `module` in `dkms status -k K` (sort -V), "" if none."""
        versions = [e.version for e in self.tree.status(module, "", kver, arch)]
        return max(versions, key=natural_key) if versions else ""

    def compiler_env(self, facts: KernelFacts) -> dict[str, str]:
        """CC from CONFIG_CC_VERSION_TEXT (dkms exports it so the module's compiler matches)."""
        import shutil  # not at start-up (with bz2 and lzma): only builds copy

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
        import shutil  # not at start-up (with bz2 and lzma): only builds copy

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
