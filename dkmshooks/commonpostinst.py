"""`/usr/lib/dkms/common.postinst NAME VERSION [TARBALL_ROOT] [ARCH] [UPGRADE]`, the entry point
the maintainer scripts of `*-dkms` packages (and dh-dkms) call. Same arguments, messages and
loading rules as dkms's script; the builds go through the engine, for every kernel that has
headers (dkms builds only for the running and the newest kernel)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .config import Config, load_config
from .console import Console
from .engine import BufferConsole, fork, handle_trigger, hook_session
from .errors import DkmsError
from .trigger import ModuleEvent, Trigger, new_transaction_id


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    console = Console()
    args = list(argv) + [""] * 5
    name, version, tarball_root, arch, _upgrade = args[:5]
    if not name or not version:
        console.echo("Need NAME and VERSION defined", "ARCH is optional")
        return 1
    session = hook_session(environ)
    session = fork(session, console)
    layout = session.layout
    if layout.no_autoinstall_flag.exists():
        console.echo("autoinstall for dkms modules has been disabled.")
        return 0
    if layout.version_dir(name, version).exists():
        console.echo(f"Removing old {name}/{version} DKMS files...")
        kernels = [(e.kver, e.arch) for e in session.tree.built_entries(name, version)]
        fork(session, BufferConsole()).remove_module(name, version, kernels)
    tarball = Path(tarball_root) / f"{name}-{version}.dkms.tar.gz" if tarball_root else None
    try:
        if tarball is not None and tarball.is_file():
            from .tarball import load_tarball_for_add

            kver = os.uname().release
            module, ver = load_tarball_for_add(session, tarball, kver, arch or os.uname().machine)
            if not session.tree.is_added(module, ver):
                fork(session, BufferConsole()).add_module(module, ver, kver, os.uname().machine)
        elif layout.module_source(name, version).is_dir():
            console.echo(f"Loading new {name}/{version} DKMS files...")
            quiet = fork(session, BufferConsole())
            quiet.add_module(name, version, os.uname().release, arch or os.uname().machine)
    except DkmsError as exc:
        from .dkmscli import print_error

        print_error(console, exc)
        if tarball is not None and tarball.is_file():
            console.echo(
                "",
                "",
                f"Unable to load DKMS tarball {tarball}.",
                "Common causes include: ",
                " - Corrupt distribution specific archive",
                "",
                "",
            )
            return 2
        return exc.code
    if not session.tree.is_added(name, version):
        console.echo(f"{name}/{version} is not registered; nothing to build.")
        return 0
    try:
        conf = fork(session, BufferConsole()).read_conf(
            name,
            version,
            os.uname().release,
            arch or os.uname().machine,
            layout.source_link(name, version) / "dkms.conf",
        )
    except DkmsError as exc:
        from .dkmscli import print_error

        print_error(console, exc)
        return 1
    if not conf.autoinstall:
        console.echo(f"Not building the {name} module which does not have AUTOINSTALL enabled.")
        return 0
    source = "apt" if environ.get("DPKG_MAINTSCRIPT_PACKAGE") else "cli"
    trigger = Trigger(
        source=source,
        transaction=environ.get("DKMSHOOKS_TRANSACTION") or new_transaction_id(),
        modules=(ModuleEvent(name, version, "added"),),
    )
    rc = handle_trigger(trigger, environ)
    try:
        config = load_config(layout)
    except DkmsError:
        config = Config()
    return rc if config.is_strict_for(name) else 0
