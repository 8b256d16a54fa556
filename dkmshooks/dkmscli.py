"""Front ends: the `dkms` command (dkms 3.4's interface) and the `dkmshooks` command."""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import DKMS_RELEASE_STRING, faults, janitor, run
from .console import Console
from .errors import DkmsError, SilentExit
from .framework import Settings, load_post_transaction, load_settings
from .layout import Layout
from .session import Options, check_module_args, check_name, require_root
from .status import Session
from .tree import Tree
from .versions import natural_key

ACTION_RE = re.compile(
    r"^(remove|(auto|un)?install|match|mktarball|(un)?build|add|status|ldtarball|generate_mok|list|config|"
    r"kernel_(preinst|postinst|prerm))$"
)
_MV_RE = re.compile(r"^([^/]*)/(.*)$", re.DOTALL)

USAGE = """\
Usage: {prog} [action] [options]
  [action]  = {{ add | remove | build | unbuild | install | uninstall | match |
               autoinstall | mktarball | ldtarball | status | generate_mok |
               kernel_preinst | kernel_postinst | kernel_prerm }}
  [options] = [-m module] [-v module-version] [-k kernel-version] [-a arch]
              [-c dkms.conf-location] [-q] [--force] [--force-version-override] [--all]
              [--templatekernel=kernel] [--directive='cli-directive=cli-value']
              [--config=kernel-include/config/auto.conf-location] [--archive=tarball-location]
              [--kernelsourcedir=source-location] [--rpm_safe_upgrade]
              [--dkmstree path] [--sourcetree path] [--installtree path]
              [--binaries-only] [--source-only] [--verbose]
              [--no-depmod] [--modprobe-on-install] [-j number] [--version] [--help]
"""
# Beyond dkms 3.4 (not in its usage text, which scripts compare): `status --json`, `list`, `config`.


@dataclass
class Args:
    """The dkms command line, parsed by dkms's own rules (prefix globs, first-`=` split)."""

    action: str = ""
    module: str = ""
    version: str = ""
    kernels: list[str] = field(default_factory=list)
    arches: list[str] = field(default_factory=list)
    template_kernel: str = ""
    conf: str = ""
    quiet: bool = False
    binaries_only: bool = False
    source_only: bool = False
    force: bool = False
    force_version_override: bool = False
    all: bool = False
    verbose: bool = False
    rpm_safe_upgrade: bool = False
    dkms_tree: str = ""
    source_tree: str = ""
    install_tree: str = ""
    symlink_modules: bool = False
    kernel_config: str = ""
    archive: str = ""
    kernel_source_dir: str = ""
    directives: list[str] = field(default_factory=list)
    no_depmod: bool = False
    modprobe_on_install: bool = False
    parallel_jobs: str | None = None
    try_source_tree: str = ""
    show_version: bool = False
    show_help: bool = False
    unknown_option: str = ""
    deprecated: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    second_action: bool = False
    json: bool = False


def parse_args(argv: Sequence[str]) -> Args:
    args = Args()
    i = 0
    n = len(argv)

    def value(arg: str) -> str:
        nonlocal i
        m = re.match(r"^[^=]*=(.*)$", arg, re.DOTALL)
        if m:
            return m.group(1).split("\n", 1)[0]
        i += 1
        return argv[i].split("\n", 1)[0] if i < n else ""

    def module_version(text: str) -> None:
        m = _MV_RE.match(text)
        if m:
            args.module, args.version = m.group(1), m.group(2)
        else:
            args.module = text

    def kernel_arch(text: str) -> None:
        m = _MV_RE.match(text)
        if m:
            args.kernels.append(m.group(1))
            args.arches.append(m.group(2))
        else:
            args.kernels.append(text)

    while i < n:
        arg = argv[i]
        if arg.startswith("--module") or arg == "-m":
            module_version(value(arg))
        elif arg == "-v":
            args.version = value(arg)
        elif arg.startswith("--kernelver") or arg == "-k":
            kernel_arch(value(arg))
        elif arg.startswith("--templatekernel"):
            args.template_kernel = value(arg)
        elif arg == "-c":
            args.conf = value(arg)
        elif arg in ("--quiet", "-q"):
            args.quiet = True
        elif arg in ("--version", "-V"):
            args.show_version = True
            return args
        elif arg in ("--no-initrd", "--no-clean-kernel", "--no-prepare-kernel"):
            args.deprecated.append(arg)
        elif arg == "--binaries-only":
            args.binaries_only = True
        elif arg == "--source-only":
            args.source_only = True
        elif arg == "--force":
            args.force = True
        elif arg == "--force-version-override":
            args.force_version_override = True
        elif arg == "--all":
            args.all = True
        elif arg == "--verbose":
            args.verbose = True
        elif arg == "--rpm_safe_upgrade":
            args.rpm_safe_upgrade = True
        elif arg.startswith("--dkmstree"):
            args.dkms_tree = value(arg)
        elif arg.startswith("--sourcetree"):
            args.source_tree = value(arg)
        elif arg.startswith("--installtree"):
            args.install_tree = value(arg)
        elif arg == "--symlink-modules":
            args.symlink_modules = True
        elif arg.startswith("--config"):
            args.kernel_config = value(arg)
        elif arg.startswith("--archive"):
            args.archive = value(arg)
        elif arg.startswith("--arch") or arg == "-a":
            args.arches.append(value(arg))
        elif arg.startswith("--kernelsourcedir"):
            args.kernel_source_dir = value(arg)
        elif arg.startswith("--directive"):
            args.directives.append(value(arg))
        elif arg == "--json":
            args.json = True
        elif arg == "--no-depmod":
            args.no_depmod = True
        elif arg == "--modprobe-on-install":
            args.modprobe_on_install = True
        elif arg == "--debug":
            pass
        elif arg == "-j":
            args.parallel_jobs = value(arg)
        elif arg in ("--help", "-h"):
            args.show_help = True
            return args
        elif arg.startswith("-"):
            args.unknown_option = arg
            return args
        else:
            if ACTION_RE.match(arg):
                if args.action:
                    args.second_action = True
                    return args
                args.action = arg
            elif os.path.isfile(arg) and arg.endswith("dkms.conf"):
                args.try_source_tree = arg[: -len("dkms.conf")] + "./"
            elif os.path.isdir(arg) and os.path.isfile(os.path.join(arg, "dkms.conf")):
                args.try_source_tree = arg
            elif os.path.isfile(arg):
                args.archive = arg
            elif not args.module:
                module_version(arg)
            else:
                args.warnings.append(f"I do not know how to handle {arg}.")
        i += 1
    return args


def _silence() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def _check_tmp(console: Console, tmp_location: Path) -> None:
    try:
        fd, path = _mkstemp(tmp_location)
    except OSError as exc:
        raise DkmsError("Unable to make temporary file.") from exc
    try:
        ok = os.write(fd, b"Hello, DKMS!\n") == 13
    except OSError:
        ok = False
    finally:
        os.close(fd)
        os.unlink(path)
    if not ok:
        console.warn(
            f"dkms will not function properly without some free space in $TMPDIR ({tmp_location})."
        )


def _mkstemp(directory: Path) -> tuple[int, str]:
    """tempfile.mkstemp without importing tempfile (and random, shutil...) into every command."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        path = os.path.join(directory, f"tmp{os.urandom(6).hex()}")
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "No usable temporary file name found", str(directory))


def _kernel_arch_list(session: Session, args: Args, action: str) -> list[tuple[str, str]]:
    """dkms's setup_kernels_arches."""
    kernels = list(args.kernels)
    arches = list(args.arches)
    if args.all and action in ("build", "install"):
        # beyond dkms (which refuses --all here): every installed kernel that has headers
        try:
            names = os.listdir(session.layout.install_tree)
        except OSError:
            names = []
        kernels = sorted((k for k in names if session.facts(k).headers_ready), key=natural_key)
        arches = [os.uname().machine] * len(kernels)
    elif args.all and action != "status":
        entries = sorted(
            Tree(session.layout).built_entries(args.module, args.version),
            key=lambda e: natural_key(f"{e.kver}/{e.arch}"),
        )
        kernels = [e.kver for e in entries]
        arches = [e.arch for e in entries]
    if action != "status":
        if not kernels and not args.all:
            kernels = [os.uname().release]
        if not arches:
            arches = [os.uname().machine]
    if len(arches) == 1 and len(kernels) > 1:
        arches = arches * len(kernels)
    if action != "status":
        for idx, k in enumerate(kernels):
            if not k:
                raise DkmsError(f"Empty kernelver[{idx}]", code=16)
        for idx, a in enumerate(arches):
            if not a:
                raise DkmsError(f"Empty arch[{idx}]", code=16)
    pairs = []
    for idx, k in enumerate(kernels):
        pairs.append((k, arches[idx] if idx < len(arches) else ""))
    return pairs


def _check_all_banned(args: Args, action: str) -> None:
    if args.all:
        raise DkmsError(f"The action {action} does not support the --all parameter.", code=5)


def _have_one_kernel(args: Args, action: str, count: int | None = None) -> None:
    """`count` is the kernel list after defaults (autoinstall, match); kernel_* count only
    what the command line gave, as dkms checks them before applying the uname -r default."""
    _check_all_banned(args, action)
    if (len(args.kernels) if count is None else count) != 1:
        if re.match(r"kernel_(preinst|postinst|prerm)", action):
            raise DkmsError(
                f"The action {action} requires exactly one kernel version parameter on the "
                "command line.",
                code=4,
            )
        raise DkmsError(
            f"The action {action} does not support multiple kernel version parameters on the "
            "command line.",
            code=4,
        )


def _check_rw_dkms_tree(layout: Layout) -> None:
    tree = layout.dkms_tree
    if not tree.exists() and os.geteuid() == 0:
        try:
            tree.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
    if not os.access(tree, os.W_OK):
        raise DkmsError(f"No write access to DKMS tree at {tree}", code=1)


def _post_transaction(session: Session, kver: str = "") -> None:
    """Read lazily with the (first) kernel in scope, as dkms does, so ${kernelver} works."""
    command = load_post_transaction(session.layout, session.environ, kver)
    if not command:
        return
    logfile = session.layout.post_transaction_log
    logfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.write_text("")
    session.invoke(
        command,
        "Executing post-transaction command",
        logfile=logfile,
        package_name="",
    )


def _per_kernel(session: Session, fn: object, pairs: Sequence[tuple[str, str]]) -> int:
    """build_module/install_module: each kernel runs in dkms's subshell, so a failure is
    reported and the next kernel still runs; the status is the last kernel's."""
    rc = 0
    for kver, arch in pairs:
        try:
            fn(kver, arch)  # type: ignore[operator]
            rc = 0
        except DkmsError as exc:
            print_error(session.console, exc)
            rc = exc.code
    return rc


def print_error(console: Console, exc: DkmsError) -> None:
    if isinstance(exc, SilentExit) or exc.style == "plain":
        if exc.lines and exc.lines != ("",):
            console.echo_err(*[line for line in exc.lines if line])
        return
    if exc.style == "warn":
        console.warn(*exc.lines)
    else:
        console.error(*exc.lines)


def dkms(argv: Sequence[str], environ: Mapping[str, str], prog: str = "dkms") -> int:
    console = Console()
    os.umask(0o022)
    args = parse_args(argv)
    if args.show_version:
        console.echo(DKMS_RELEASE_STRING)
        return 0
    root = Path(environ.get("DKMSHOOKS_ROOT", "/") or "/")
    settings = load_settings(
        Layout(root=root),
        environ,
        dkms_tree=Path(args.dkms_tree) if args.dkms_tree else None,
        source_tree=Path(args.source_tree) if args.source_tree else None,
        install_tree=Path(args.install_tree) if args.install_tree else None,
    )
    _check_tmp(console, settings.tmp_location)
    if args.quiet:
        _silence()
    for option in args.deprecated:
        console.deprecated(option)
    for warning in args.warnings:
        console.warn(warning)
    if args.unknown_option:
        console.error(f"Unknown option: {args.unknown_option}")
        console.write(USAGE.format(prog=prog))
        return 2
    if args.show_help:
        console.write(USAGE.format(prog=prog))
        return 0
    if args.second_action:
        raise DkmsError("Cannot specify more than one action.", code=4)
    if args.parallel_jobs is not None:
        settings = _replace_jobs(settings, args.parallel_jobs)
    if args.binaries_only and args.source_only:
        raise DkmsError(
            "You have specified both --binaries-only and --source-only.",
            "You cannot do this.",
            code=8,
        )
    if len(args.kernels) != len(args.arches) and len(args.arches) > 1:
        raise DkmsError(
            "If more than one arch is specified on the command line, then there",
            "must be an equal number of kernel versions also specified (1:1 relationship).",
            code=1,
        )
    if args.kernels and args.all:
        raise DkmsError(
            "You cannot specify a kernel version and also specify",
            "--all on the command line.",
            code=2,
        )
    if args.arches and args.all:
        raise DkmsError(
            "You cannot specify an arch and also specify", "--all on the command line.", code=3
        )
    action = args.action
    if re.match(r"kernel_(preinst|postinst|prerm)$", action):
        _have_one_kernel(args, action)

    directives: list[tuple[str, str]] = []
    for item in args.directives:
        name, _, val = item.partition("=")
        directives.append((name, val))
    options = Options(
        force=args.force,
        force_version_override=args.force_version_override,
        verbose=args.verbose,
        no_depmod=args.no_depmod,
        conf=Path(args.conf) if args.conf else None,
        kernel_source_dir=Path(args.kernel_source_dir) if args.kernel_source_dir else None,
        kernel_config=Path(args.kernel_config) if args.kernel_config else None,
        directives=tuple(directives),
        rpm_safe_upgrade=args.rpm_safe_upgrade,
        modprobe_on_install=args.modprobe_on_install,
        symlink_modules=args.symlink_modules,
    )
    session = Session(settings=settings, options=options, console=console, environ=environ)
    pairs = _kernel_arch_list(session, args, action)
    if action in MUTATING_ACTIONS and os.geteuid() == 0:
        from .console import note
        from .locking import TreeLock, lock_timeout

        with TreeLock(session.layout.lock_path, say=note, timeout=lock_timeout(environ)):
            janitor.sweep(session.layout)  # what runs killed earlier left (issue #9)
            return _dispatch(session, args, action, pairs, prog)
    return _dispatch(session, args, action, pairs, prog)


MUTATING_ACTIONS = frozenset(
    [
        "add",
        "build",
        "install",
        "uninstall",
        "unbuild",
        "remove",
        "autoinstall",
        "match",
        "ldtarball",
        "kernel_preinst",
        "kernel_postinst",
        "kernel_prerm",
    ]
)


def _dispatch(
    session: Session, args: Args, action: str, pairs: list[tuple[str, str]], prog: str
) -> int:
    console = session.console
    settings = session.settings
    module, version = args.module, args.version

    if action in ("remove", "unbuild", "uninstall"):
        check_module_args(action, module, version)
        session.module_is_broken_and_die(module, version)
        session.module_is_added_or_die(module, version)
        if action == "uninstall":
            require_root()
        else:
            _check_rw_dkms_tree(session.layout)
        if action == "remove":
            session.remove_module(module, version, pairs)
        else:
            for idx, (kver, arch) in enumerate(pairs):
                if idx:
                    console.echo("")
                session.maybe_uninstall(module, version, kver, arch)
                if action == "unbuild":
                    session.maybe_unbuild(module, version, kver, arch)
        if settings.post_transaction:
            _post_transaction(session, pairs[0][0] if pairs else "")
        return 0
    if action in ("add", "build", "install"):
        if action == "add":
            _check_all_banned(args, action)
        elif args.all and not pairs:
            console.echo_err("dkmshooks: no installed kernel has headers; nothing to do for --all")
            return 0
        if action != "add":
            session.module_is_broken_and_die(module, version)
        if action == "install":
            require_root()
        else:
            _check_rw_dkms_tree(session.layout)
        kver0, arch0 = pairs[0] if pairs else (os.uname().release, os.uname().machine)
        if not module and not version:
            if args.archive:
                from .tarball import load_tarball_for_add

                module, version = load_tarball_for_add(session, Path(args.archive), kver0, arch0)
            if args.try_source_tree:
                module, version = session.add_source_tree(Path(args.try_source_tree), kver0, arch0)
        if action == "add":
            if args.rpm_safe_upgrade:
                from .rpmsafe import write_lock

                check_module_args("add", module, version)
                write_lock(session, module, version)
            session.add_module(module, version, kver0, arch0)
            return 0
        if not (module and version):
            check_module_args("add", module, version)
        if not session.tree.is_added(module, version):
            # the source directory check comes first, as in dkms's add (exit 2)
            source = session.layout.module_source(module, version)
            if source.is_dir():
                check_name(module, version)
        else:
            check_name(module, version)
        if action == "build":
            return _per_kernel(
                session, lambda k, a: session.maybe_build(module, version, k, a), pairs
            )
        rc = _per_kernel(session, lambda k, a: session.maybe_install(module, version, k, a), pairs)
        if rc == 0 and settings.post_transaction:
            _post_transaction(session, pairs[0][0] if pairs else "")
        return rc
    if action == "status":
        session.show_status(module, version, pairs, as_json=args.json)
        return 0
    if action == "list":
        session.show_list(module, as_json=args.json)
        return 0
    if action == "config":
        check_module_args("config", module, version)
        session.module_is_broken_and_die(module, version)
        session.module_is_added_or_die(module, version)
        kver, arch = pairs[0]
        session.show_config(module, version, kver, arch, as_json=args.json)
        return 0
    if action in (
        "autoinstall",
        "match",
        "mktarball",
        "ldtarball",
        "generate_mok",
        "kernel_preinst",
        "kernel_postinst",
        "kernel_prerm",
    ):
        from . import actions_more

        return actions_more.dispatch(session, action, args, pairs)
    console.error(f'Unknown action specified: "{action}"')
    console.write(USAGE.format(prog=prog))
    return 0


def _replace_jobs(settings: Settings, jobs: str) -> Settings:
    from dataclasses import replace

    return replace(settings, parallel_jobs=jobs)


def _boundary(fn: object, *fargs: object) -> int:
    console = Console()
    try:
        return int(fn(*fargs))  # type: ignore[operator]
    except DkmsError as exc:
        print_error(console, exc)
        if exc.hint:
            console.echo_err(exc.hint)
        return exc.code
    except KeyboardInterrupt:
        console.echo_err("")
        return 130
    except BrokenPipeError:
        return 141
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            return _internal_error(console)
        # the machine, not dkmshooks: say which file and why, without a bug report's traceback
        where = f" ({exc.filename})" if exc.filename else ""
        console.error(f"{exc.strerror}{where}.")
        console.echo_err(
            "dkmshooks: the command stopped part way; free space or fix the file system and run "
            "it again: it picks up where it stopped."
        )
        return 1
    except Exception:
        return _internal_error(console)


# Errors of the machine rather than of dkmshooks (issue #9).
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def _internal_error(console: Console) -> int:
    import traceback

    console.write_err(traceback.format_exc())
    console.echo_err(
        "dkmshooks: internal error. This is a bug; please report it with the output above."
    )
    return 70


def dkms_main() -> None:
    prog = sys.argv[0]
    faults.arm(os.environ.get(faults.ENV_VAR, ""))
    sys.exit(_boundary(dkms, sys.argv[1:], dict(os.environ), prog))


def dkmshooks_main() -> None:
    from .hookscli import main

    faults.arm(os.environ.get(faults.ENV_VAR, ""))
    sys.exit(_boundary(main, sys.argv[1:], dict(os.environ)))


__all__ = ["dkms", "dkms_main", "dkmshooks_main", "parse_args", "run"]
