"""dnf adapter: the packages of a dnf4/dnf5 transaction → one `Trigger`.

What reaches us, and when (reference/distro-hooks.md §3; the lab's §2 for dnf 4.14):

    caller                         when                              gives
    dnf4 plugin                    transaction(): after the rpm      base.transaction's
      (hooks/dnf/dkmshooks_dnf.py)   transaction and its scriptlets    install_set, remove_set
    libdnf5 Python plugin          post_transaction(transaction),    get_transaction_packages()
      (python-plugins/…libdnf5.py)   likewise after the scriptlets
    dnf5 actions plugin            post_transaction (in),            NAME VERSION RELEASE ARCH
      (dkmshooks.actions)            pre_transaction (out)             of one package, run as
                                                                       `dkmshooks hook dnf package`

Which packages mean what. The kernel release K comes from the package itself: its
`kernel-devel-uname-r = K` / `kernel-uname-r = K` provides (Fedora's kernel.spec, every
flavour), else its file list (/usr/src/kernels/K/…, /lib/modules/K/vmlinuz); never from
`uname -r`, and never rebuilt from name-version-release (Fedora adds `+debug`, RHEL `.debug`).

    in   headers (kernel*-devel) of K, no image of K in the transaction  → headers-added
    in   headers of K together with the image of K                       → nothing: the image's
                                                                           %posttrans runs
                                                                           kernel-install, whose
                                                                           plugin builds before
                                                                           dracut (40 < 50)
    in   image (kernel*-core) of K                                       → nothing, same reason
    out  image of K (not reinstalled)                                    → image-removed
    out  headers of K (not reinstalled, image stays)                     → headers-removed

headers-added is the case no kernel hook covers: kernel-devel installed in a later transaction
runs only a hardlink %post. It comes *after* the kernel's initramfs was built, so the engine
decides whether to regenerate it (no `initramfs_follows`).

Cost. dnf loads the plugin for every command, so this module imports nothing beyond the
standard library and dkmshooks.trigger at load time; a transaction without a package named
`kernel*` ends after one pass over the package names, before any provides are read, and the
engine (dkms.conf evaluation, tree scan) is imported only when there is a kernel event.

--installroot. dnf runs its plugins on the host, not chrooted, while rpm runs the scriptlets
(and so kernel-install and our 40-dkmshooks.install) chrooted into the installroot. To act on the
same system those did, a transaction in an installroot is handed to the installroot's own
dkmshooks: `chroot ROOT dkmshooks hook dnf kernels --transaction ID K:EVENT…`. An installroot
without dkmshooks has no DKMS modules for us to manage; we say so and do nothing. Build trees
refer to themselves with absolute paths (/lib/modules/K/build → /usr/src/kernels/K), which is why
this is a chroot and not the engine's DKMSHOOKS_ROOT relocation.

Transactions. Every dkmshooks call of one dnf run uses the same id, derived from the dnf process
(pid and start time): the plugin in-process, `dkmshooks hook dnf package` as the actions plugin's
child, and kernel-install's plugin from a scriptlet, by walking up its ancestors. So a kernel that
kernel-install already handled in this transaction costs the engine a no-op.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dkmshooks.apttxn import read_process, rpm_manager, rpm_transaction
from dkmshooks.console import note
from dkmshooks.trigger import KERNEL_EVENTS, KernelEvent, Trigger, new_transaction_id

USAGE = (
    """\
Usage: dkmshooks hook dnf package [--installroot DIR] [--transaction ID]
                                  in|out NAME VERSION RELEASE ARCH
       dkmshooks hook dnf kernels [--transaction ID] KVER:EVENT...
`package` is what dnf5's actions plugin runs for one package of a transaction (in = installed,
upgraded, downgraded or reinstalled; out = removed or replaced); the kernel release is read from
that package's provides and files in the rpm database. `kernels` hands events that a dnf plugin
derived on the host to the dkmshooks of an installroot. EVENT is one of:
"""
    + ", ".join(KERNEL_EVENTS)
    + "\n"
)

IMAGE_PROVIDE = "kernel-uname-r"
HEADERS_PROVIDE = "kernel-devel-uname-r"

_HEADERS_PATH = re.compile(r"^/usr/src/kernels/([^/]+)(?:/|$)")
_IMAGE_PATH = re.compile(r"^(?:/usr)?/lib/modules/([^/]+)/vmlinuz$")


# -- packages → kernel events ---------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    """One package of a transaction, as far as this adapter cares."""

    name: str
    version: str
    release: str
    arch: str
    inbound: bool  # installed, upgraded, downgraded or reinstalled (False: removed or replaced)
    provides: tuple[str, ...] = ()  # "NAME = VERSION" strings, as rpm and both dnf APIs print them
    files: tuple[str, ...] = ()

    @property
    def nevra(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.{self.arch}"


@dataclass(frozen=True)
class KernelPackage:
    kver: str
    kind: str  # "image" | "headers"
    package: Package


def is_kernel_name(name: str) -> bool:
    """The cheap first look: every kernel image and headers package of Fedora, RHEL and their
    rebuilds (kernel-core, kernel-devel, kernel-debug-devel, kernel-rt-core, kernel-ml-devel,
    kernel-uek-devel…) is named kernel*."""
    return name.startswith("kernel")


def _provided(provides: Iterable[str], wanted: str) -> str | None:
    for item in provides:
        name, sep, version = item.partition("=")
        if sep and name.strip() == wanted and version.strip():
            return version.strip()
    return None


def kernel_from_provides(provides: Iterable[str]) -> tuple[str, str] | None:
    """(kind, K) from a package's provides, or None."""
    items = tuple(provides)
    kver = _provided(items, HEADERS_PROVIDE)
    if kver is not None:
        return "headers", kver
    kver = _provided(items, IMAGE_PROVIDE)
    if kver is not None:
        return "image", kver
    return None


def kernel_from_files(files: Iterable[str]) -> tuple[str, str] | None:
    """(kind, K) from a package's file list, or None."""
    for path in files:
        match = _HEADERS_PATH.match(path)
        if match:
            return "headers", match.group(1)
        match = _IMAGE_PATH.match(path)
        if match:
            return "image", match.group(1)
    return None


def kernel_of(package: Package) -> KernelPackage | None:
    if not is_kernel_name(package.name):
        return None
    found = kernel_from_provides(package.provides) or kernel_from_files(package.files)
    if found is None:
        return None
    kind, kver = found
    try:
        KernelEvent(kver, "image-added")  # the same validation the trigger will apply
    except ValueError:
        return None
    return KernelPackage(kver=kver, kind=kind, package=package)


def kernel_events(packages: Iterable[Package]) -> tuple[KernelEvent, ...]:
    """The kernel events of one transaction (the table in the module docstring)."""
    kernels = [k for k in (kernel_of(p) for p in packages) if k is not None]
    arriving = {(k.kind, k.kver) for k in kernels if k.package.inbound}
    leaving = {(k.kind, k.kver) for k in kernels if not k.package.inbound}
    events: list[KernelEvent] = []

    def add(kver: str, event: str) -> None:
        item = KernelEvent(kver, event)
        if item not in events:
            events.append(item)

    for k in kernels:
        if k.package.inbound:
            continue
        if (k.kind, k.kver) in arriving:
            continue  # reinstalled (or replaced by a package of the same release)
        if k.kind == "image":
            add(k.kver, "image-removed")
        elif ("image", k.kver) not in leaving:
            add(k.kver, "headers-removed")
    for k in kernels:
        if k.package.inbound and k.kind == "headers" and ("image", k.kver) not in arriving:
            add(k.kver, "headers-added")
    return tuple(events)


def build_trigger(
    events: Sequence[KernelEvent], transaction: str, *, via: str, packages: Sequence[str] = ()
) -> Trigger | None:
    if not events:
        return None
    from .kernel_install import devel_package

    hints = {devel_package(e.kver) for e in events if e.event == "headers-added"}
    extra = {"via": via}
    if packages:
        extra["packages"] = " ".join(packages)
    return Trigger(
        source="dnf",
        transaction=transaction,
        kernels=tuple(events),
        headers_package_hint=hints.pop() if len(hints) == 1 else "",
        extra=extra,
    )


# -- transaction ids ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManagerProcess:
    pid: int
    start: int  # clock ticks after boot: with the pid, unique for one boot


def find_manager_process(
    pid: int | None = None, proc: Path = Path("/proc")
) -> ManagerProcess | None:
    """The nearest ancestor of pid (default: this process) that is an rpm front end."""
    found = rpm_manager(os.getpid() if pid is None else pid, proc)
    return None if found is None else ManagerProcess(pid=found.pid, start=found.start)


def manager_transaction(manager: ManagerProcess, proc: Path = Path("/proc")) -> str:
    """The id every dkmshooks call of one package-manager run computes alike, in the shape of
    trigger.new_transaction_id()'s neighbours in the log (distinct first 8 chars, then a time)."""
    return rpm_transaction(manager.pid, manager.start, proc)


def own_transaction(environ: Mapping[str, str], proc: Path = Path("/proc")) -> str:
    """The id of the dnf run this code runs inside (the dnf4 plugin, the libdnf5 plugin)."""
    forced = environ.get("DKMSHOOKS_TRANSACTION")
    if forced:
        return forced
    me = read_process(os.getpid(), proc)
    if me is None:
        return new_transaction_id()
    return manager_transaction(ManagerProcess(pid=me.pid, start=me.start), proc)


def child_transaction(environ: Mapping[str, str], proc: Path = Path("/proc")) -> str:
    """The id of the dnf run whose child this process is (dnf5's actions plugin)."""
    forced = environ.get("DKMSHOOKS_TRANSACTION")
    if forced:
        return forced
    manager = find_manager_process(proc=proc)
    return manager_transaction(manager, proc) if manager is not None else new_transaction_id()


# -- running the engine (here or in the installroot) ----------------------------------------------


def _is_host_root(installroot: str) -> bool:
    try:
        return Path(installroot or "/").resolve() == Path("/")
    except OSError:
        return False


def installroot_tool(installroot: str) -> Path | None:
    """The dkmshooks command inside an installroot, as a path inside it."""
    for candidate in ("/usr/bin/dkmshooks", "/usr/sbin/dkmshooks"):
        if Path(installroot, candidate.lstrip("/")).is_file():
            return Path(candidate)
    return None


def dispatch(trigger: Trigger, installroot: str, environ: Mapping[str, str]) -> int:
    """Run the engine for trigger on the system dnf worked on. Returns its exit status."""
    if _is_host_root(installroot) or environ.get("DKMSHOOKS_ROOT"):
        from dkmshooks.engine import handle_trigger

        return handle_trigger(trigger, environ)
    what = ", ".join(f"{e.kver} {e.event}" for e in trigger.kernels)
    tool = installroot_tool(installroot)
    if tool is None:
        note(f"{installroot}: dkmshooks is not installed there; nothing to do for {what}")
        return 0
    from dkmshooks import run

    argv = ["chroot", installroot, str(tool), "hook", "dnf", "kernels"]
    argv += ["--transaction", trigger.transaction]
    argv += [f"{e.kver}:{e.event}" for e in trigger.kernels]
    return run.run(argv, check=False).returncode


def _run_guarded(what: str, action: Callable[[], int], environ: Mapping[str, str]) -> int:
    """The failure policy (DESIGN.md) for every entry point: a broken engine is a loud message
    and exit 0, or 1 when the admin asked for strictness."""
    from dkmshooks.errors import DkmsError

    try:
        return action()
    except DkmsError as exc:
        strict = _is_strict(environ)
        note(f"{what}: {' '.join(exc.lines)}" + ("" if strict else "; dnf carries on"))
        return 1 if strict else 0
    except Exception:
        sys.stderr.write(traceback.format_exc())
        strict = _is_strict(environ)
        note(
            f"internal error while handling {what}; this is a bug, please report it with the "
            "output above. "
            + ("strict = true: failing the transaction." if strict else "dnf carries on.")
        )
        return 1 if strict else 0


def _is_strict(environ: Mapping[str, str]) -> bool:
    from dkmshooks.adapters import is_strict
    from dkmshooks.layout import Layout

    return is_strict(Layout(root=Path(environ.get("DKMSHOOKS_ROOT") or "/")))


def handle_packages(
    packages: Sequence[Package],
    installroot: str,
    transaction: str,
    environ: Mapping[str, str],
    *,
    via: str,
) -> int:
    kernels = [k for k in (kernel_of(p) for p in packages) if k is not None]
    trigger = build_trigger(
        kernel_events(packages), transaction, via=via, packages=[k.package.nevra for k in kernels]
    )
    if trigger is None:
        return 0
    return _run_guarded(f"dnf {via}", lambda: dispatch(trigger, installroot, environ), environ)


# -- dnf4 ------------------------------------------------------------------------------------------


class Dnf4Package(Protocol):
    name: str
    version: str
    release: str
    arch: str

    @property
    def provides(self) -> Iterable[Any]: ...

    @property
    def files(self) -> Iterable[str]: ...


def _dnf4_package(pkg: Dnf4Package, inbound: bool) -> Package:
    provides = tuple(str(r) for r in pkg.provides)
    # dnf ≥ 4.19 loads no filelists by default: the provides are what counts, files a fallback.
    files = () if kernel_from_provides(provides) else tuple(pkg.files)
    return Package(pkg.name, pkg.version, pkg.release, pkg.arch, inbound, provides, files)


def dnf4_packages(base: Any) -> list[Package]:
    """The kernel* packages of dnf4's resolved transaction (`base.transaction`)."""
    transaction = base.transaction
    if transaction is None:
        return []
    found = [_dnf4_package(p, True) for p in transaction.install_set if is_kernel_name(p.name)]
    found += [_dnf4_package(p, False) for p in transaction.remove_set if is_kernel_name(p.name)]
    return found


def dnf4_transaction(base: Any, environ: Mapping[str, str] | None = None) -> int:
    """dnf4's transaction() hook: the exit status the plugin turns into a dnf error if non-zero."""
    env = os.environ if environ is None else environ
    packages = dnf4_packages(base)
    if not packages:
        return 0
    return handle_packages(
        packages, str(base.conf.installroot), own_transaction(env), env, via="dnf4 plugin"
    )


# -- libdnf5 (dnf5's Python plugins) -------------------------------------------------------------


def libdnf5_packages(transaction: Any, actions: Any) -> list[Package]:
    """The kernel* packages of a libdnf5 base.Transaction. `actions` is libdnf5.transaction (its
    transaction_item_action_is_inbound / _is_outbound)."""
    found: list[Package] = []
    for item in transaction.get_transaction_packages():
        pkg = item.get_package()
        name = pkg.get_name()
        if not is_kernel_name(name):
            continue
        action = item.get_action()
        if actions.transaction_item_action_is_inbound(action):
            inbound = True
        elif actions.transaction_item_action_is_outbound(action):
            inbound = False
        else:
            continue  # reason changes and the like
        provides = tuple(r.to_string() for r in pkg.get_provides())
        files = () if kernel_from_provides(provides) else tuple(pkg.get_files())
        found.append(
            Package(
                name, pkg.get_version(), pkg.get_release(), pkg.get_arch(), inbound, provides, files
            )
        )
    return found


def libdnf5_post_transaction(
    base: Any, transaction: Any, actions: Any, environ: Mapping[str, str] | None = None
) -> int:
    env = os.environ if environ is None else environ
    packages = libdnf5_packages(transaction, actions)
    if not packages:
        return 0
    installroot = str(base.get_config().get_installroot_option().get_value())
    return handle_packages(packages, installroot, own_transaction(env), env, via="libdnf5 plugin")


# -- the `dkmshooks hook dnf` command ------------------------------------------------------------


def query_package(installroot: str, nevra: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(provides, files) of an installed package, from the rpm database of installroot."""
    from dkmshooks import run

    argv = ["rpm"]
    if not _is_host_root(installroot):
        argv += ["--root", installroot]
    fmt = "[P %{PROVIDENAME} %{PROVIDEFLAGS:depflags} %{PROVIDEVERSION}\n][F %{FILENAMES}\n]"
    proc = run.run([*argv, "-q", "--qf", fmt, nevra], check=False, capture=True)
    if proc.returncode != 0:
        return None
    provides: list[str] = []
    files: list[str] = []
    for line in proc.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "P":
            name, _, tail = rest.partition(" ")
            flags, _, version = tail.strip().partition(" ")
            provides.append(f"{name} {flags} {version}".strip() if flags else name)
        elif kind == "F":
            files.append(rest)
    return tuple(provides), tuple(files)


def _options(argv: Sequence[str], names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """--name VALUE / --name=VALUE for the given names; the rest positional."""
    values: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in names:
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"{name} needs a value")
                i += 1
                value = argv[i]
            values[name] = value
        elif arg.startswith("--"):
            raise ValueError(f"unknown option {arg}")
        else:
            rest.append(arg)
        i += 1
    return values, rest


def package_command(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    # dnf5's actions plugin parses every stdout line of the command (plain mode) and logs any
    # line that is not tmp.X=, conf.X=, var.X=… as a syntax error: everything we and our
    # children print goes to stderr.
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    options, rest = _options(argv, ("--installroot", "--transaction"))
    if len(rest) != 5 or rest[0] not in ("in", "out"):
        raise ValueError("expected in|out NAME VERSION RELEASE ARCH")
    direction, name, version, release, arch = rest
    if not is_kernel_name(name):
        return 0
    installroot = options.get("--installroot") or "/"
    pkg = Package(name, version, release, arch, direction == "in")
    facts = query_package(installroot, pkg.nevra)
    if facts is None:
        note(f"{pkg.nevra} is not in the rpm database of {installroot}; nothing to do")
        return 0
    pkg = Package(name, version, release, arch, direction == "in", *facts)
    transaction = options.get("--transaction") or child_transaction(environ)
    return handle_packages([pkg], installroot, transaction, environ, via="dnf5 actions")


def kernels_command(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    options, rest = _options(argv, ("--transaction",))
    if not rest:
        raise ValueError("expected KVER:EVENT...")
    events = []
    for item in rest:
        kver, _, event = item.rpartition(":")
        events.append(KernelEvent(kver, event))
    transaction = options.get("--transaction") or child_transaction(environ)
    trigger = build_trigger(events, transaction, via="installroot hand-off")
    assert trigger is not None
    from dkmshooks.engine import handle_trigger

    return _run_guarded("dnf kernels", lambda: handle_trigger(trigger, environ), environ)


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    commands = {"package": package_command, "kernels": kernels_command}
    command = commands.get(argv[0])
    if command is None:
        note(f"hook dnf: unknown command {argv[0]!r}")
        sys.stderr.write(USAGE)
        return 2
    try:
        return command(argv[1:], environ)
    except ValueError as exc:
        note(f"hook dnf {argv[0]}: {exc}")
        sys.stderr.write(USAGE)
        return 2


__all__ = [
    "HEADERS_PROVIDE",
    "IMAGE_PROVIDE",
    "USAGE",
    "KernelPackage",
    "ManagerProcess",
    "Package",
    "build_trigger",
    "child_transaction",
    "dispatch",
    "dnf4_packages",
    "dnf4_transaction",
    "find_manager_process",
    "handle_packages",
    "is_kernel_name",
    "kernel_events",
    "kernel_from_files",
    "kernel_from_provides",
    "kernel_of",
    "libdnf5_packages",
    "libdnf5_post_transaction",
    "main",
    "manager_transaction",
    "own_transaction",
    "query_package",
]
