"""dkms.conf + /etc/dkms overrides + --directive, evaluated by bash, validated as dkms 3.4 does,
frozen into a DkmsConf for one (module, version, kernel, arch)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import shellconf
from .console import Console
from .errors import BadConfError, ConfMissingError
from .fsutil import stamp
from .versions import ver_gt, ver_lt

CONF_VARIABLES = [
    "PACKAGE_NAME",
    "PACKAGE_VERSION",
    "POST_ADD",
    "POST_BUILD",
    "POST_INSTALL",
    "POST_REMOVE",
    "PRE_BUILD",
    "PRE_INSTALL",
    "BUILD_DEPENDS",
    "BUILD_EXCLUSIVE_ARCH",
    "BUILD_EXCLUSIVE_CONFIG",
    "BUILD_EXCLUSIVE_KERNEL",
    "BUILD_EXCLUSIVE_KERNEL_MIN",
    "BUILD_EXCLUSIVE_KERNEL_MAX",
    "build_exclude",
    "OBSOLETE_BY",
    "MAKE",
    "MAKE_MATCH",
    "PATCH",
    "PATCH_MATCH",
    "patch_array",
    "BUILT_MODULE_NAME",
    "built_module_name",
    "BUILT_MODULE_LOCATION",
    "built_module_location",
    "DEST_MODULE_NAME",
    "dest_module_name",
    "DEST_MODULE_LOCATION",
    "dest_module_location",
    "STRIP",
    "strip",
    "AUTOINSTALL",
    "NO_WEAK_MODULES",
    "BUILD_DEPENDS_REBUILD",
    "CLEAN",
    "REMAKE_INITRD",
    "MODULES_CONF",
    "MODULES_CONF_OBSOLETES",
    "MODULES_CONF_ALIAS_TYPE",
    "MODULES_CONF_OBSOLETE_ONLY",
]

DEPRECATED = (
    "CLEAN",
    "REMAKE_INITRD",
    "MODULES_CONF",
    "MODULES_CONF_OBSOLETES",
    "MODULES_CONF_ALIAS_TYPE",
    "MODULES_CONF_OBSOLETE_ONLY",
    "OBSOLETE_BY",
)

# More module records than any real package has; beyond it a dkms.conf is refused, not looped over.
MAX_MODULES = 1024

_EXCLUSIVE = (
    "BUILD_EXCLUSIVE_KERNEL",
    "BUILD_EXCLUSIVE_KERNEL_MIN",
    "BUILD_EXCLUSIVE_KERNEL_MAX",
    "BUILD_EXCLUSIVE_ARCH",
    "BUILD_EXCLUSIVE_CONFIG",
)


@dataclass(frozen=True)
class ModuleEntry:
    index: int
    built_name: str
    built_location: str  # relative to the build dir, "" or ending in "/"
    dest_name: str
    dest_location: str  # after the distro override, e.g. "/updates/dkms"
    conf_dest_location: str  # DEST_MODULE_LOCATION[i] as written
    strip: bool
    excluded: bool  # BUILD_EXCLUSIVE says: not for this kernel/arch/config


@dataclass(frozen=True)
class DkmsConf:
    path: Path
    kver: str
    arch: str
    package_name: str
    package_version: str
    modules: tuple[ModuleEntry, ...]
    make_command: str
    patches: tuple[str, ...]
    pre_build: str
    post_build: str
    post_add: str
    pre_install: str
    post_install: str
    post_remove: str
    build_depends: tuple[str, ...]
    autoinstall: bool
    build_depends_rebuild: bool
    no_weak_modules: bool
    obsolete_by: str
    build_exclude: bool
    has_per_module_exclusive: bool
    values: shellconf.ShellValues = field(repr=False, compare=False)
    shown_path: str = ""

    @property
    def active_modules(self) -> tuple[ModuleEntry, ...]:
        return tuple(m for m in self.modules if not m.excluded)


@dataclass(frozen=True)
class ConfContext:
    """Everything dkms puts in scope while a dkms.conf is sourced."""

    etc_dkms: Path
    distro: str
    addon_modules_dir: str
    dkms_tree: Path
    source_tree: Path
    install_tree: Path
    tmp_location: Path
    parallel_jobs: str
    kernel_source_dir: Path
    kernel_config: Path
    directives: tuple[tuple[str, str], ...] = ()
    verbose: bool = False
    force: bool = False
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def override_dest_location(distro: str, addon_modules_dir: str, location: str) -> str:
    if addon_modules_dir:
        return f"/{addon_modules_dir}"
    for prefixes, dest in (
        (("fedora", "rhel", "centos"), "/extra"),
        (("sles", "suse", "opensuse"), "/updates"),
        (("debian", "ubuntu", "arch"), "/updates/dkms"),
    ):
        if distro.startswith(prefixes):
            return dest
    return location


def override_files(etc_dkms: Path, module: str, version: str, kver: str, arch: str) -> list[Path]:
    return [
        etc_dkms / f"{module}.conf",
        etc_dkms / f"{module}-{version}.conf",
        etc_dkms / f"{module}-{version}-{kver}.conf",
        etc_dkms / f"{module}-{version}-{kver}-{arch}.conf",
        etc_dkms / f"{module}--{kver}.conf",
        etc_dkms / f"{module}--{kver}-{arch}.conf",
    ]


def bash_regex_match(pattern: str, text: str) -> bool:
    """bash `[[ text =~ pattern ]]` (POSIX ERE, unanchored); Python re is close enough for the
    patterns dkms.conf files use. An invalid pattern never matches, as in bash."""
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return False


def _config_has(config: Path, option: str) -> bool:
    try:
        text = config.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(rf"^{re.escape(option)}=[ym]", text, re.MULTILINE) is not None


def _exclusive_ok(
    values: shellconf.ShellValues, index: int, kver: str, arch: str, kernel_config: Path
) -> bool:
    """dkms's check_build_exclusive_for_module; `X` means `X[0]`, so index 0 is global too."""
    for idx in (0, index) if index != 0 else (0,):
        kernel = values.get("BUILD_EXCLUSIVE_KERNEL", idx)
        if kernel and not bash_regex_match(kernel, kver):
            return False
        kmin = values.get("BUILD_EXCLUSIVE_KERNEL_MIN", idx)
        if kmin and ver_lt(kver, kmin):
            return False
        kmax = values.get("BUILD_EXCLUSIVE_KERNEL_MAX", idx)
        if kmax and ver_gt(kver, kmax):
            return False
        march = values.get("BUILD_EXCLUSIVE_ARCH", idx)
        if march and not bash_regex_match(march, arch):
            return False
    for idx in (0, index) if index != 0 else (0,):
        configs = values.get("BUILD_EXCLUSIVE_CONFIG", idx)
        if configs and kernel_config.exists():
            for option in configs.split():
                if option.startswith("!"):
                    if _config_has(kernel_config, option[1:]):
                        return False
                elif not _config_has(kernel_config, option):
                    return False
    return True


def _has_exclusive(values: shellconf.ShellValues, index: int) -> bool:
    return any(values.get(name, 0) or values.get(name, index) for name in _EXCLUSIVE)


#: what dkms puts in a conf's scope that differs from one kernel to the next (`arch` aside)
KERNEL_SCOPE = frozenset({"kernelver", "kernel_source_dir", "kernel_config"})


def read_conf(
    conf_path: Path,
    module: str,
    version: str,
    kver: str,
    arch: str,
    ctx: ConfContext,
    console: Console,
    *,
    strict: bool = False,
    shown_path: str | None = None,
) -> DkmsConf:
    """Evaluate and validate; on failure print dkms's `dkms.conf: Error!` lines and raise
    BadConfError with dkms's `Bad conf file.` text (`shown_path` is what dkms names there)."""
    values = evaluate_conf(conf_path, module, version, kver, arch, ctx, strict=strict)
    return finish_conf(
        values,
        conf_path,
        module,
        version,
        kver,
        arch,
        ctx,
        console,
        strict=strict,
        shown_path=shown_path,
    )


# Values shared by every kernel (confcache's shared entries): most confs use the kernel only in
# words like `MAKE="make -C $kernel_source_dir …"`. Evaluated with a placeholder for each of
# KERNEL_SCOPE, they become any kernel's values by substitution, which is exact when the
# kernel's values, like the placeholders, are non-empty inert words: the literal evaluator then
# takes the same path for both (docs/decisions.md).
_PLACEHOLDER = "@dkmshooks.{}@"
_MARK = "@dkmshooks."
_SUBSTITUTABLE = re.compile(r"[A-Za-z0-9_./:,+%=-]+")


def _kernel_scope(kver: str, ctx: ConfContext) -> dict[str, str]:
    return {
        "kernelver": kver,
        "kernel_source_dir": os.fspath(ctx.kernel_source_dir),
        "kernel_config": os.fspath(ctx.kernel_config),
    }


def values_for_kernel(
    shared: shellconf.ShellValues, kver: str, ctx: ConfContext
) -> shellconf.ShellValues | None:
    """Shared values (shared_values) made this kernel's; None when the kernel's scope values are
    not words the substitution is exact for."""
    scope = _kernel_scope(kver, ctx)
    if not all(_SUBSTITUTABLE.fullmatch(value) for value in scope.values()):
        return None
    marks = [(_PLACEHOLDER.format(name), value) for name, value in scope.items()]

    def fill(text: str) -> str:
        if _MARK in text:
            for mark, value in marks:
                text = text.replace(mark, value)
        return text

    return shellconf.ShellValues(
        arrays={n: {i: fill(v) for i, v in idx.items()} for n, idx in shared.arrays.items()},
        deprecations=tuple((f, n, fill(v)) for f, n, v in shared.deprecations),
    )


def shared_values(
    values: shellconf.ShellValues,
    consulted: set[str],
    conf_path: Path,
    module: str,
    version: str,
    kver: str,
    arch: str,
    ctx: ConfContext,
) -> shellconf.ShellValues | None:
    """What every kernel's values can be made from (values_for_kernel), given this kernel's
    `values` and the names of its scope they were `consulted` from (evaluate_conf); None when
    there is no such thing: bash computed them, or the substitution would not give back exactly
    `values`. The caller makes sure no /etc/dkms override of this kernel's own was read."""
    if shellconf.ANY in consulted:
        return None
    if not consulted & KERNEL_SCOPE:
        # as they are, unless a value holds a placeholder's text, which the substitution
        # would replace
        texts = [v for idx in values.arrays.values() for v in idx.values()]
        texts += [d[2] for d in values.deprecations]
        return None if any(_MARK in text for text in texts) else values
    used: set[str] = set()
    generic = evaluate_conf(
        conf_path, module, version, kver, arch, ctx, consulted=used, placeholders=True
    )
    if shellconf.ANY in used or values_for_kernel(generic, kver, ctx) != values:
        return None
    return generic


def evaluate_conf(
    conf_path: Path,
    module: str,
    version: str,
    kver: str,
    arch: str,
    ctx: ConfContext,
    *,
    strict: bool = False,
    consulted: set[str] | None = None,
    placeholders: bool = False,
) -> shellconf.ShellValues:
    """The first half of read_conf: the conf and its /etc/dkms overrides sourced as dkms sources
    them. `consulted`: see shellconf.evaluate. `placeholders`: the kernel's scope values
    (KERNEL_SCOPE) are placeholders (see shared_values)."""
    if not os.access(conf_path, os.R_OK):
        raise ConfMissingError(
            "Could not locate dkms.conf file.", f"File: {conf_path} does not exist."
        )
    scope = {
        **_kernel_scope(kver, ctx),
        "arch": arch,
        "dkms_tree": os.fspath(ctx.dkms_tree),
        "source_tree": os.fspath(ctx.source_tree),
        "install_tree": os.fspath(ctx.install_tree),
        "tmp_location": os.fspath(ctx.tmp_location),
        "module": module,
        "module_version": version,
        "parallel_jobs": ctx.parallel_jobs,
        "running_distribution": ctx.distro,
        "verbose": "true" if ctx.verbose else "",
        "force": "true" if ctx.force else "",
    }
    if placeholders:
        scope.update((name, _PLACEHOLDER.format(name)) for name in KERNEL_SCOPE)
    files = [conf_path, *override_files(ctx.etc_dkms, module, version, kver, arch)]
    return shellconf.evaluate(
        files,
        CONF_VARIABLES,
        scope=scope,
        deprecated=DEPRECATED if strict else (),
        base_env=ctx.environ,
        consulted=consulted,
    )


def finish_conf(
    values: shellconf.ShellValues,
    conf_path: Path,
    module: str,
    version: str,
    kver: str,
    arch: str,
    ctx: ConfContext,
    console: Console,
    *,
    strict: bool = False,
    shown_path: str | None = None,
) -> DkmsConf:
    """The second half of read_conf: --directive, validation, and what depends on the kernel
    (MAKE_MATCH, PATCH_MATCH, BUILD_EXCLUSIVE, LLVM=1)."""
    arrays = {name: dict(idx) for name, idx in values.arrays.items()}
    for name, value in ctx.directives:
        arrays.setdefault(name, {})[0] = value
        console.echo(f'DIRECTIVE: {name}="{value}"')
    values = shellconf.ShellValues(arrays=arrays, deprecations=values.deprecations)

    if strict:
        for file, name, scalar in values.deprecations:
            if name == "CLEAN" and scalar in ("true", "/bin/true", "/usr/bin/true"):
                continue
            if name == "OBSOLETE_BY":
                console.deprecated(f"OBSOLETE_BY ({file}): use BUILD_EXCLUSIVE_KERNEL_MAX instead")
            else:
                console.deprecated(f"{name} ({file})")

    errors: list[str] = []
    package_name = values.get("PACKAGE_NAME")
    package_version = values.get("PACKAGE_VERSION")
    if not package_name:
        errors.append("No 'PACKAGE_NAME' directive specified.")
    if not package_version:
        errors.append("No 'PACKAGE_VERSION' directive specified.")

    indices: list[int] = []
    for name in (
        "BUILT_MODULE_NAME",
        "BUILT_MODULE_LOCATION",
        "DEST_MODULE_NAME",
        "DEST_MODULE_LOCATION",
    ):
        indices.extend(values.array(name).keys())
    num_modules = max(indices) + 1 if indices else 0
    if num_modules > MAX_MODULES:
        # BUILT_MODULE_NAME[2000000000]=x would otherwise mean two billion records to check
        errors.append(
            f"{num_modules} module records (highest index {num_modules - 1}); "
            f"at most {MAX_MODULES} are supported."
        )
        num_modules = 0

    strip_first = ""
    modules: list[ModuleEntry] = []
    for i in range(num_modules):
        built_name = values.get("BUILT_MODULE_NAME", i)
        built_location = values.get("BUILT_MODULE_LOCATION", i)
        dest_name = values.get("DEST_MODULE_NAME", i)
        conf_dest = values.get("DEST_MODULE_LOCATION", i)
        strip_raw = values.get("STRIP", i)
        if strip_raw[:1] in ("n", "N"):
            strip = "no"
        elif strip_raw[:1] in ("y", "Y"):
            strip = "yes"
        elif strip_raw == "":
            strip = strip_first or "yes"
        else:
            strip = ""  # dkms leaves it unset: anything but "no" strips
        if i == 0:
            strip_first = strip
        if not built_name and num_modules == 1:
            built_name = package_name
        if not dest_name:
            dest_name = built_name
        if built_location and not built_location.endswith("/"):
            built_location += "/"
        if not built_name:
            errors.append(f"No 'BUILT_MODULE_NAME' directive specified for record #{i}.")
        if built_name.endswith((".o", ".ko")):
            errors.append(f"'BUILT_MODULE_NAME' directive ends in '.o' or '.ko' in record #{i}.")
        if dest_name.endswith((".o", ".ko")):
            errors.append(f"'DEST_MODULE_NAME' directive ends in '.o' or '.ko' in record #{i}.")
        errors.extend(_path_errors(i, built_name, dest_name, built_location, conf_dest))
        dest_location = override_dest_location(ctx.distro, ctx.addon_modules_dir, conf_dest)
        if conf_dest == "":
            errors.append(f"No 'DEST_MODULE_LOCATION' directive specified for record #{i}.")
        elif not conf_dest.startswith(("/kernel", "/updates", "/extra")):
            errors.append(
                "Directive 'DEST_MODULE_LOCATION' does not begin with\n"
                f"'/kernel', '/updates', or '/extra' in record #{i}."
            )
        modules.append(
            ModuleEntry(
                index=i,
                built_name=built_name,
                built_location=built_location,
                dest_name=dest_name,
                dest_location=dest_location,
                conf_dest_location=conf_dest,
                strip=strip != "no",
                excluded=False,
            )
        )

    make = values.array("MAKE")
    make_match = values.array("MAKE_MATCH")
    make_command = "" if make_match.get(0) else make.get(0, "")
    for idx in sorted(make):
        if make.get(idx) and make_match.get(idx) and bash_regex_match(make_match[idx], kver):
            make_command = make[idx]
    if not make_command:
        make_command = f"make -C {ctx.kernel_source_dir} M={ctx.dkms_tree}/{module}/{version}/build"
    if _built_with_clang(ctx.kernel_source_dir / "vmlinux", ctx.kernel_config):
        make_command += " LLVM=1"

    patch = values.array("PATCH")
    patch_match = values.array("PATCH_MATCH")
    patches = tuple(
        patch[idx]
        for idx in sorted(patch)
        if patch[idx] and (not patch_match.get(idx) or bash_regex_match(patch_match[idx], kver))
    )

    obsolete_by = values.get("OBSOLETE_BY")
    if obsolete_by and not values.get("BUILD_EXCLUSIVE_KERNEL_MAX"):
        per_module_max = any(
            values.get("BUILD_EXCLUSIVE_KERNEL_MAX", i) for i in range(num_modules)
        )
        if not per_module_max:
            arrays.setdefault("BUILD_EXCLUSIVE_KERNEL_MAX", {})[0] = obsolete_by

    has_exclusive = False
    buildable = 0
    final_modules = []
    for entry in modules:
        if _has_exclusive(values, entry.index):
            has_exclusive = True
        ok = _exclusive_ok(values, entry.index, kver, arch, ctx.kernel_config)
        buildable += ok
        final_modules.append(_replace_excluded(entry, not ok))
    build_exclude = buildable == 0 and has_exclusive

    flags: dict[str, bool] = {}
    for name in ("AUTOINSTALL", "BUILD_DEPENDS_REBUILD", "NO_WEAK_MODULES"):
        value = values.get(name)
        if value == "" or value.lower() == "no":
            flags[name] = False
        elif value.lower() == "yes":
            flags[name] = True
        else:
            flags[name] = False
            errors.append(f"Unsupported {name} value '{value}'")

    if errors:
        for message in errors:
            console.write_err("".join(f"dkms.conf: Error! {message}\n".splitlines(True)))
        raise BadConfError(
            "Bad conf file.",
            f"File: {shown_path if shown_path is not None else conf_path} "
            "does not represent a valid dkms.conf file.",
        )

    has_per_module_exclusive = any(
        values.get(name, i) for i in range(num_modules) for name in _EXCLUSIVE
    )
    build_depends = tuple(v for _, v in sorted(values.array("BUILD_DEPENDS").items()) if v)
    conf = DkmsConf(
        path=conf_path,
        kver=kver,
        arch=arch,
        package_name=package_name,
        package_version=package_version,
        modules=tuple(final_modules),
        make_command=make_command,
        patches=patches,
        pre_build=values.get("PRE_BUILD"),
        post_build=values.get("POST_BUILD"),
        post_add=values.get("POST_ADD"),
        pre_install=values.get("PRE_INSTALL"),
        post_install=values.get("POST_INSTALL"),
        post_remove=values.get("POST_REMOVE"),
        build_depends=build_depends,
        autoinstall=flags["AUTOINSTALL"],
        build_depends_rebuild=flags["BUILD_DEPENDS_REBUILD"],
        no_weak_modules=flags["NO_WEAK_MODULES"],
        obsolete_by=obsolete_by,
        build_exclude=build_exclude,
        has_per_module_exclusive=has_per_module_exclusive,
        values=values,
        shown_path=shown_path if shown_path is not None else str(conf_path),
    )
    if strict:
        strict_checks(conf, console)
    return conf


def strict_checks(conf: DkmsConf, console: Console) -> None:
    """read_conf_strict's extra checks, which dkms runs on every strict read (even when the
    conf itself was not re-read)."""
    errors: list[str] = []
    if not conf.modules:
        console.write_err("dkms.conf: Warning! Zero modules specified.\n")
    seen: set[str] = set()
    for entry in conf.modules:
        key = f"{entry.built_location}{entry.built_name}"
        if key in seen:
            errors.append(f"Duplicate module '{key}' in 'BUILT_MODULE_NAME[{entry.index}]'.")
        seen.add(key)
    seen = set()
    for entry in conf.modules:
        if entry.dest_name in seen:
            errors.append(
                f"Duplicate module '{entry.dest_name}' in 'DEST_MODULE_NAME[{entry.index}]'."
            )
        seen.add(entry.dest_name)
    if errors:
        for message in errors:
            console.write_err(f"dkms.conf: Error! {message}\n")
        raise BadConfError(
            "Bad conf file.", f"File: {conf.shown_path} does not represent a valid dkms.conf file."
        )


def _path_errors(
    index: int, built_name: str, dest_name: str, built_location: str, dest_location: str
) -> list[str]:
    """Names and locations become paths below the build dir and /lib/modules/K: refuse what
    would leave them (dkms itself would follow `..` wherever it leads)."""
    errors = []
    for directive, name in (("BUILT_MODULE_NAME", built_name), ("DEST_MODULE_NAME", dest_name)):
        if "/" in name or "\n" in name:
            errors.append(f"'{directive}' contains '/' or a newline in record #{index}.")
    for directive, location in (
        ("BUILT_MODULE_LOCATION", built_location),
        ("DEST_MODULE_LOCATION", dest_location),
    ):
        if ".." in location.split("/") or "\n" in location:
            errors.append(
                f"Directive '{directive}' contains a '..' component or a newline in record "
                f"#{index}."
            )
    return errors


def _replace_excluded(entry: ModuleEntry, excluded: bool) -> ModuleEntry:
    from dataclasses import replace

    return replace(entry, excluded=excluded)


_CLANG: dict[tuple[str, str, tuple[tuple[int, ...], ...]], bool] = {}


def _stamps(*paths: Path) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(stamp(p)) for p in paths)


def _built_with_clang(vmlinux: Path, config: Path) -> bool:
    """dkms's LLVM=1 test: vmlinux's .comment if there is a vmlinux, else the kernel config.
    Remembered while neither file changes: every dkms.conf of a kernel asks (500 on a big
    tree), and a kernel config is 200 kB."""
    stamps = _stamps(vmlinux, config)
    key = (os.fspath(vmlinux), os.fspath(config), stamps)
    verdict = _CLANG.get(key)
    if verdict is None:
        if stamps[0]:
            verdict = _vmlinux_is_clang(vmlinux)
        else:
            verdict = bool(stamps[1]) and _config_contains(config, "CONFIG_CC_IS_CLANG=y")
        if _stamps(vmlinux, config) == stamps:
            _CLANG[key] = verdict
    return verdict


def _config_contains(path: Path, needle: str) -> bool:
    try:
        return needle in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _vmlinux_is_clang(vmlinux: Path) -> bool:
    """readelf -p .comment mentions clang; reading the section's bytes directly is equivalent."""
    try:
        with open(vmlinux, "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    return b"clang" in data


def module_names(conf: DkmsConf) -> Sequence[str]:
    return [m.dest_name for m in conf.modules]
