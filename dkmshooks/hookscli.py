"""The `dkmshooks` command: what dkms has no word for (hook, trigger, plan, log, doctor)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence

from . import __version__
from .console import note

USAGE = """\
Usage: dkmshooks COMMAND [options]

Commands:
  hook MANAGER ARGS...   entry point of the package-manager hooks (apt, dnf, pacman,
                         kernel-install); called by the files in hooks/, not by people
  trigger                run the rebuild engine by hand: --kernel K:EVENT [--module M/V:EVENT]
  plan -k K [--json]     show what the engine would do for kernel K, without doing it
  log [filters]          the unified rebuild log (see `dkmshooks log --help`)
  doctor                 what is missing for each installed kernel, and the fix
  --version              print the version
"""


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], list(argv[1:])
    if command == "--version":
        print(f"dkmshooks {__version__}")
        return 0
    if command == "hook":
        return hook(rest, environ)
    if command == "trigger":
        return trigger(rest, environ)
    if command == "common-postinst":
        return _subcommand("commonpostinst", rest, environ)
    if command in ("plan", "log", "doctor"):
        return _subcommand(
            {"plan": "plancli", "log": "logcli", "doctor": "doctor"}[command], rest, environ
        )
    note(f"unknown command {command!r}; see 'dkmshooks --help'")
    return 2


def _subcommand(module: str, argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """Import a subcommand module lazily: a hook for one manager loads nothing of the others."""
    try:
        mod = importlib.import_module(f"dkmshooks.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"dkmshooks.{module}":
            raise
        note(f"{module.replace('adapters.', '')}: not available in this version of dkmshooks")
        return 2
    return int(mod.main(argv, environ))


def hook(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    if not argv:
        note("hook: which package manager? (apt, dnf, pacman, kernel-install)")
        return 2
    manager, rest = argv[0], list(argv[1:])
    adapters = {"apt": "apt", "dnf": "dnf", "pacman": "pacman", "kernel-install": "kernel_install"}
    if manager not in adapters:
        note(f"hook: unknown package manager {manager!r}")
        return 2
    return _subcommand(f"adapters.{adapters[manager]}", rest, environ)


def trigger(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    import argparse  # here: the package-manager hooks, which never need it, run on every call

    from .engine import handle_trigger
    from .trigger import KERNEL_EVENTS, KernelEvent, ModuleEvent, Trigger, new_transaction_id

    parser = argparse.ArgumentParser(prog="dkmshooks trigger")
    parser.add_argument(
        "--kernel",
        action="append",
        default=[],
        metavar="K:EVENT",
        help=f"events: {', '.join(KERNEL_EVENTS)}",
    )
    parser.add_argument(
        "--module", action="append", default=[], metavar="M/V:EVENT", help="events: added, removed"
    )
    parser.add_argument("--transaction", default="")
    parser.add_argument("--source", default="cli")
    parser.add_argument(
        "--initramfs-follows",
        action="store_true",
        help="the caller regenerates the initramfs after us",
    )
    opts = parser.parse_args(argv)
    try:
        kernels = []
        for item in opts.kernel:
            kver, _, event = item.rpartition(":")
            kernels.append(KernelEvent(kver, event))
        modules = []
        for item in opts.module:
            mv, _, event = item.rpartition(":")
            module, _, version = mv.partition("/")
            modules.append(ModuleEvent(module, version, event))
        trig = Trigger(
            source=opts.source,
            transaction=opts.transaction or new_transaction_id(),
            kernels=tuple(kernels),
            modules=tuple(modules),
            extra={"initramfs_follows": "1"} if opts.initramfs_follows else {},
        )
    except ValueError as exc:
        note(f"trigger: {exc}")
        return 2
    return handle_trigger(trig, environ)


def dump_json(obj: object) -> str:
    import json

    return json.dumps(obj, sort_keys=True)
