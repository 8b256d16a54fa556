"""One dkms invocation: settings, options, facts, conf reading, child commands, depmod."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import confcache, run
from .console import Console
from .dkmsconf import (
    ConfContext,
    DkmsConf,
    evaluate_conf,
    finish_conf,
    read_conf,
    shared_values,
    strict_checks,
    values_for_kernel,
)
from .errors import (
    BrokenModuleError,
    DkmsError,
    NotAddedError,
    ScriptFailedError,
    UsageError,
)
from .framework import Settings
from .jobserver import JobServer
from .kernel import (
    KernelFacts,
    kernel_facts,
    module_compressed_suffix,
)
from .layout import Layout
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
    delayed_depmod: bool = False


@dataclass
class Signing:
    enabled: bool = False
    sign_file: str = ""
    hash: str = ""
    key: str = ""
    cert: str = ""


# ConfContext per kernel for confcache lookups, shared by a session's forks (the same settings,
# options and environment give the same context; it holds the environment, so ids stay unique)
_CONTEXTS: dict[tuple[object, ...], ConfContext] = {}


@dataclass
class SessionBase:
    """One dkms invocation: settings, options, and the little state dkms keeps between steps."""

    settings: Settings
    options: Options
    console: Console
    environ: Mapping[str, str]
    prepared_kernel: str = "none"
    depmod_pending: bool = False
    installed_count: int = 0
    signing: Signing = field(default_factory=Signing)
    _suffix_cache: dict[str, str] = field(default_factory=dict)
    _conf_cache: dict[tuple[object, ...], DkmsConf] = field(default_factory=dict)
    #: set by the engine while builds run concurrently (see jobserver.py)
    jobserver: JobServer | None = None

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
        persistent: bool = False,
    ) -> DkmsConf:
        """read_conf(_strict)_or_die: `path` is dkms's explicit third argument. `persistent`:
        a question that only reads the conf (status, plan) may be answered from confcache."""
        conf_path = (
            path or self.options.conf or self.layout.source_link(module, version) / ("dkms.conf")
        )
        shown = str(path) if path is not None else str(self.options.conf or "")
        if persistent and not strict and not self.options.directives and module and version:
            return self._read_conf_cached(conf_path, module, version, kver, arch, shown)
        # dkms does not re-read a conf it just read for the same module/version/kernel/arch:
        # the deprecation warnings and DIRECTIVE lines appear once; the strict checks rerun.
        key = (
            str(conf_path),
            shown,
            module,
            version,
            kver,
            arch,
            _stamp(conf_path),
            _stamp(self.layout.etc_dkms),
        )
        cached = self._conf_cache.get(key)
        if cached is not None:
            if strict:
                strict_checks(cached, self.console)
            return cached
        conf = read_conf(
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
        if not self.options.directives:
            self._conf_cache[key] = conf
        return conf

    def _cached_context(self, kver: str) -> ConfContext:
        memo = (kver, self.settings, self.options, id(self.environ))
        ctx = _CONTEXTS.get(memo)
        if ctx is None:
            ctx = _CONTEXTS[memo] = self.conf_context(kver)
        return ctx

    def conf_cache_key(
        self, conf_path: str, module: str, version: str, kver: str, arch: str
    ) -> str | None:
        """What decides the persistent read_conf of this module/version/kernel/arch, as one
        string: its context and the digest of the stamps of the files it reads (the same two
        things confcache keys an evaluated conf on); None where that read is not cached."""
        if self.options.directives or not (module and version):
            return None
        ctx = self._cached_context(kver)
        cache = confcache.for_layout(self.layout)
        key, digest = cache.key(conf_path, module, version, kver, arch, ctx)
        return f"{key}\0{digest}"

    def _read_conf_cached(
        self, conf_path: Path, module: str, version: str, kver: str, arch: str, shown: str
    ) -> DkmsConf:
        """read_conf for status and plan, through confcache (one lookup per status line). A conf
        whose values do not depend on the kernel is evaluated once for all kernels; the rest of
        read_conf (finish_conf: validation, MAKE_MATCH, BUILD_EXCLUSIVE, ...) runs per kernel."""
        cache = confcache.for_layout(self.layout)
        ctx = self._cached_context(kver)
        shared = cache.shared_key(conf_path, module, version, kver, arch, ctx)
        generic = None if shared is None else cache.get_values(module, version, *shared)
        values = None if generic is None else values_for_kernel(generic, kver, ctx)
        consulted: set[str] | None = None
        if values is None:
            ckey, digest = cache.key(conf_path, module, version, kver, arch, ctx)
            cached = cache.get(module, version, ckey, digest)
            if cached is not None:
                return cached
            consulted = set()
            values = evaluate_conf(conf_path, module, version, kver, arch, ctx, consulted=consulted)
        conf = finish_conf(
            values, conf_path, module, version, kver, arch, ctx, self.console, shown_path=shown
        )
        if consulted is None:
            return conf  # made from the shared values: nothing new to keep
        # an override of this kernel's own that appeared since shared_key() looked may have
        # been sourced: its values are then this kernel's alone
        etc = os.fspath(ctx.etc_dkms)
        own = confcache.own_override_names(module, version, kver, arch)
        generic = None
        if shared is not None and not any(os.path.lexists(os.path.join(etc, n)) for n in own):
            generic = shared_values(values, consulted, conf_path, module, version, kver, arch, ctx)
        if generic is not None and shared is not None:
            cache.put_values(module, version, *shared, generic)
        else:
            cache.put(module, version, ckey, digest, conf)
        return conf

    # -- output helpers ------------------------------------------------------------------------

    @property
    def verbose(self) -> bool:
        return self.options.verbose or self.settings.verbose

    def _ticker(self, package_name: str) -> object:
        from fnmatch import fnmatchcase

        if self.verbose or fnmatchcase(package_name, "dkms*_test"):
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
        pass_fds: Sequence[int] = (),
        shown: str | None = None,
    ) -> int:
        """dkms's invoke_command in background mode. `shown` is what to print and log as the
        command when it differs from the one run in form only (the jobserver's make)."""
        display = shown or command
        if self.verbose:
            self.console.echo(display)
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
                pass_fds=pass_fds,
                shown=display,
            )
        else:
            rc = run.run_quiet_status(command, cwd=cwd, env=env, tick=tick)  # type: ignore[arg-type]
        if rc > 0:
            self.console.write(f"(bad exit status: {rc})")
            if not self.verbose:
                self.console.write(f"\nFailed command:\n{display}\n")
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
        # an executable /etc/dkms/<module>/<script> replaces the packaged one (dkms 3.4)
        override = self.layout.etc_dkms / module / os.path.basename(value.split(" ", 1)[0])
        if os.path.isfile(override) and os.access(override, os.X_OK):
            rest = value.split(" ", 1)[1] if " " in value else ""
            command = f"{override} {rest}".rstrip()
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
        if self.console.captures:
            proc = run.run(
                command.split(), cwd=base, env=env, check=False, capture=True, merge_stderr=True
            )
            self.console.write(proc.stdout)
        else:
            proc = run.run(command.split(), cwd=base, env=env, check=False)
        return proc.returncode

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


def _mkdtemp6(parent: Path, prefix: str) -> Path:
    import random  # not at start-up: most commands make no temporary dir
    import string

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


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)
