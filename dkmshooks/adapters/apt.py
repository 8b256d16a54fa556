"""apt/dpkg adapter: the /etc/kernel/*.d hook calls of Debian and Ubuntu kernel packages → one
`Trigger`, and one transaction id for all hook calls of one apt run.

What dpkg runs (Debian 12's linux-image-K and linux-headers-K maintainer scripts, checked in the
packages themselves; reference/distro-hooks.md §1), always `run-parts --exit-on-error --arg=K
[--arg=/boot/vmlinuz-K]` with DEB_MAINT_PARAMS set to the maintainer script's own arguments:

    hook dir           run by                    DEB_MAINT_PARAMS        → event
    preinst.d          image preinst             install [OLD]           → nothing (fresh kernel)
                                                 upgrade OLD NEW         → image-preinst
    postinst.d         image postinst            configure OLD           → image-added
    header_postinst.d  headers postinst (perl)   (unset; any postinst)   → headers-added
    prerm.d            image prerm               remove                  → image-removed
    postrm.d           image postrm              remove, purge           → image-removed
                                                 upgrade, abort-*, …     → nothing

Why these and not more:
- preinst `upgrade` is the same kernel release being replaced (the release is part of the package
  name), i.e. an ABI-stable upgrade or `--reinstall`: modules built for K may no longer match it,
  so the engine unbuilds them and the postinst `configure` that follows rebuilds them (Debian
  #1034013; dkms's kernel_preinst). A fresh `install` has nothing stale.
- prerm.d runs only for `remove` (the image prerm exits early otherwise), so an upgrade never
  uninstalls anything; if another template ever passes `upgrade` here we still ignore it: the
  preinst of the new package already invalidated the builds, and uninstalling on upgrade would
  leave the old kernel without its modules if the upgrade is then aborted.
- postrm.d runs for every postrm call, including the old package's `upgrade` after the new files
  were unpacked; only `remove`/`purge` mean the kernel is gone. The engine's second
  image-removed is a no-op after prerm's; it exists so that nothing of ours is left when the
  image's own postrm purges the depmod files and removes /lib/modules/K.
- header_postinst.d gets only `$1` and no DEB_MAINT_PARAMS on Debian (the perl template runs it on
  every postinst call); Ubuntu and linux-base's linux-run-hooks pass `configure …`. Unset or
  `configure` both mean "the headers are there", which the engine may see twice at no cost.
- An empty DEB_MAINT_PARAMS elsewhere (a manual `run-parts`, old kernel-package images) means
  "not told otherwise", as for initramfs-tools' own hook; postrm.d alone needs an explicit
  `remove`/`purge`.
- Ubuntu defers postinst.d to the `linux-update-K` dpkg trigger, but the saved command carries
  DEB_MAINT_PARAMS as it was at configure time, so the table holds; the difference is only the
  order (headers hook first), which the engine's ordering rules cover. Ubuntu's other
  differences are facts the engine reads itself: System.map and config come with linux-modules-K
  (its image_ready), modules are signed with kmodsign (its signing).
- postinst.d runs `dkmshooks` before `initramfs-tools`/`dracut` (run-parts' C-locale order), and
  those rebuild K's initramfs on `configure`: the trigger says so (extra initramfs_follows=1) and
  the engine does not generate it a second time.

Transactions: `DPkg::Pre-Invoke` (hooks/apt/apt.conf) runs `dkmshooks hook apt pre-invoke`, which
records a fresh id with the apt process's pid and start time in the state dir; every hook call
whose ancestors include that process uses the id; `DPkg::Post-Invoke` removes the record. Without
apt (`dpkg -i`), or when a killed apt left a stale record, the id is derived from the nearest
`dpkg` ancestor's pid and start time, which all hook calls of one dpkg run share.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from dkmshooks import apttxn
from dkmshooks.adapters import is_strict
from dkmshooks.apttxn import (
    TRANSACTION_FILE,
    TRANSACTION_SCHEMA,
    TRANSACTION_VAR,
    AptTransaction,
    Process,
    ancestors,
    dpkg_transaction,
    hook_event,
    read_process,
    read_transaction_file,
    utc_stamp,
)
from dkmshooks.console import note
from dkmshooks.errors import DkmsError, UsageError
from dkmshooks.fsutil import write_atomic
from dkmshooks.layout import Layout
from dkmshooks.trigger import KernelEvent, Trigger, new_transaction_id

HOOK_KINDS = ("preinst", "postinst", "header_postinst", "prerm", "postrm")
APT_KINDS = ("pre-invoke", "post-invoke")


# APT runs its DPkg::*-Invoke commands through `/bin/sh -c`.
_SHELLS = frozenset({"sh", "dash", "bash", "busybox"})

USAGE = """\
Usage: dkmshooks hook apt KIND KERNEL-RELEASE [IMAGE-PATH]
       dkmshooks hook apt pre-invoke | post-invoke
KIND is the /etc/kernel/KIND.d directory whose hook calls this: preinst, postinst,
header_postinst, prerm or postrm. DEB_MAINT_PARAMS is read from the environment.
pre-invoke and post-invoke are APT's DPkg::Pre-Invoke and DPkg::Post-Invoke hooks.
"""


# -- hook calls → Trigger ------------------------------------------------------------------------


def parse_maint_params(value: str) -> tuple[str, ...]:
    """DEB_MAINT_PARAMS is "$*" of the maintainer script, possibly single-quoted (Debian Kernel
    Handbook 8.1 says to `eval set --` it)."""
    try:
        return tuple(shlex.split(value))
    except ValueError:
        return tuple(value.split())


def trigger_from_hook(
    hook_dir_kind: str,
    args: Sequence[str],
    environ: Mapping[str, str],
    *,
    transaction: str = "",
    initramfs_follows: bool = False,
) -> Trigger | None:
    """The Trigger for one call of /etc/kernel/<hook_dir_kind>.d/dkmshooks with `args` ($1 = the
    kernel release, $2 = the image path, both as dpkg passes them); None when there is nothing to
    do. The transaction id is `transaction`, else $DKMSHOOKS_TRANSACTION, else a fresh one.
    `initramfs_follows`: an initramfs generator's hook runs after ours in this directory (see
    `initramfs_follows()`), so the engine need not regenerate the initramfs itself."""
    if hook_dir_kind not in HOOK_KINDS:
        raise UsageError(f"unknown apt hook kind {hook_dir_kind!r}", hint=USAGE.rstrip(), code=2)
    if not args or not args[0]:
        raise UsageError(
            f"the {hook_dir_kind}.d hook needs the kernel release as its first argument", code=2
        )
    kver = args[0]
    raw_params = environ.get("DEB_MAINT_PARAMS", "")
    event = hook_event(hook_dir_kind, parse_maint_params(raw_params))
    if event is None:
        return None
    try:
        kernel = KernelEvent(kver, event)
    except ValueError as exc:
        raise UsageError(f"{hook_dir_kind}.d hook: {exc}", code=2) from exc
    extra = {"hook": f"{hook_dir_kind}.d", "deb_maint_params": raw_params.strip()}
    if len(args) > 1 and args[1]:
        extra["image"] = args[1]
    package = environ.get("DPKG_MAINTSCRIPT_PACKAGE", "")
    if package:
        extra["package"] = package
    if initramfs_follows:
        extra["initramfs_follows"] = "1"
    return Trigger(
        source="apt",
        transaction=transaction or environ.get(TRANSACTION_VAR) or new_transaction_id(),
        kernels=(kernel,),
        headers_package_hint=f"linux-headers-{kver}",
        extra=extra,
    )


# initramfs generators whose /etc/kernel/postinst.d hook (re)creates K's initramfs on `configure`,
# after ours: run-parts runs the directory in C-locale order and "dkmshooks" sorts first.
_INITRAMFS_HOOKS = ("dracut", "initramfs-tools")


def initramfs_follows(layout: Layout, environ: Mapping[str, str]) -> bool:
    """Whether the postinst.d run that called us goes on to build K's initramfs. initramfs-tools'
    hook skips kernels with INITRD=No (set by old kernel-package images)."""
    if environ.get("INITRD") == "No":
        return False
    hooks = layout.under("/etc/kernel/postinst.d")
    return any(os.access(hooks / name, os.X_OK) for name in _INITRAMFS_HOOKS)


# -- transactions ----------------------------------------------------------------------------------


def transaction_path(layout: Layout) -> Path:
    return layout.state_dir / TRANSACTION_FILE


def read_transaction(layout: Layout) -> AptTransaction | None:
    return read_transaction_file(transaction_path(layout))


def find_apt_process(pid: int, proc: Path = Path("/proc")) -> Process | None:
    """The apt front end that runs this DPkg::*-Invoke command and then dpkg: the first non-shell
    ancestor, or rather the process it was forked from: apt runs the command's `sh -c` from a
    forked child of itself (same comm), while dpkg is a child of apt proper."""
    chain = ancestors(pid, proc)
    for index, process in enumerate(chain):
        if process.comm in _SHELLS:
            continue
        for parent in chain[index + 1 :]:
            if parent.comm != process.comm:
                break
            process = parent
        return process
    return None


def begin_transaction(
    layout: Layout, *, pid: int | None = None, proc: Path = Path("/proc"), now: float | None = None
) -> AptTransaction | None:
    """DPkg::Pre-Invoke: record a fresh id for this apt run (one per dpkg invocation batch)."""
    apt = find_apt_process(os.getpid() if pid is None else pid, proc)
    if apt is None:
        return None
    # The same shape as trigger.new_transaction_id(): `dkmshooks log` shows the first 8 chars.
    stamp = utc_stamp(time.time() if now is None else now)
    record = AptTransaction(id=f"{os.urandom(4).hex()}-{stamp}", pid=apt.pid, start=apt.start)
    data = {"schema": TRANSACTION_SCHEMA, "id": record.id, "pid": record.pid}
    data.update(start=record.start, comm=apt.comm)
    write_atomic(transaction_path(layout), json.dumps(data, sort_keys=True) + "\n")
    return record


def end_transaction(layout: Layout, *, pid: int | None = None, proc: Path = Path("/proc")) -> bool:
    """DPkg::Post-Invoke: drop the record if it is this apt run's, or its apt is gone."""
    record = read_transaction(layout)
    path = transaction_path(layout)
    if record is None:
        if path.exists():
            path.unlink(missing_ok=True)  # unreadable or another schema: useless to anyone
            return True
        return False
    chain = ancestors(os.getpid() if pid is None else pid, proc)
    owner = read_process(record.pid, proc)
    if any(record.is_process(p) for p in chain) or owner is None or owner.start != record.start:
        path.unlink(missing_ok=True)
        return True
    return False


def current_transaction(
    layout: Layout,
    environ: Mapping[str, str],
    *,
    pid: int | None = None,
    proc: Path = Path("/proc"),
) -> str:
    """The id shared by every hook call of this apt run (or dpkg run, without apt)."""
    return apttxn.current_transaction(layout.state_dir, environ, pid=pid, proc=proc)


# -- the `dkmshooks hook apt` command -------------------------------------------------------------


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    kind, args = argv[0], argv[1:]
    layout = Layout(root=Path(environ.get("DKMSHOOKS_ROOT") or "/"))
    if kind in APT_KINDS:
        # Never fail apt over bookkeeping: a missing id only splits one apt run into dpkg runs.
        try:
            if kind == "pre-invoke":
                begin_transaction(layout)
            else:
                end_transaction(layout)
        except OSError as exc:
            note(f"apt {kind}: cannot update {transaction_path(layout)}: {exc.strerror}")
        return 0
    try:
        trigger = trigger_from_hook(
            kind,
            args,
            environ,
            transaction=current_transaction(layout, environ),
            initramfs_follows=kind == "postinst" and initramfs_follows(layout, environ),
        )
    except UsageError as exc:
        note(" ".join(exc.lines))
        if exc.hint:
            sys.stderr.write(exc.hint + "\n")
        return exc.code
    if trigger is None:
        return 0
    from dkmshooks.engine import handle_trigger

    # The failure policy (DESIGN.md) holds even when the engine cannot run at all: the kernel
    # package stays configured unless the admin asked for strictness.
    try:
        return handle_trigger(trigger, environ)
    except DkmsError as exc:
        note(f"{kind}.d hook for {args[0]}: {' '.join(exc.lines)}")
        if exc.hint:
            note(exc.hint)
    except Exception:
        import traceback

        sys.stderr.write(traceback.format_exc())
        note(
            f"internal error in the {kind}.d hook for {args[0]}; this is a bug, please report it "
            "with the output above"
        )
    if is_strict(layout):
        note("strict = true in config.toml: failing the package")
        return 1
    note(f"nothing was done for {args[0]}; once fixed, run `dkms autoinstall -k {args[0]}`")
    return 0


__all__ = [
    "HOOK_KINDS",
    "TRANSACTION_VAR",
    "AptTransaction",
    "Process",
    "ancestors",
    "begin_transaction",
    "current_transaction",
    "dpkg_transaction",
    "end_transaction",
    "initramfs_follows",
    "main",
    "parse_maint_params",
    "read_process",
    "read_transaction",
    "trigger_from_hook",
]
