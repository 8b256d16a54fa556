"""The dkms actions beyond the module lifecycle: autoinstall, kernel_*, match, generate_mok,
and the tarball actions (in tarball.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .config import Config, load_config, log_path_for
from .engine import LogSink, dkms_autoinstall, dkms_kernel_remove
from .errors import DkmsError
from .framework import load_signing
from .session import require_root
from .sign import prepare_mok
from .trigger import new_transaction_id

if TYPE_CHECKING:
    from .dkmscli import Args
    from .status import Session


def _log_sink(session: Session) -> LogSink:
    try:
        config = load_config(session.layout)
    except DkmsError:
        config = Config()
    return LogSink(log_path_for(session.layout, config), "cli", new_transaction_id())


def dispatch(session: Session, action: str, args: Args, pairs: Sequence[tuple[str, str]]) -> int:
    if action in ("mktarball", "ldtarball"):
        from .tarball import dispatch_tarball

        return dispatch_tarball(session, action, args, pairs)
    if action == "generate_mok":
        cfg = load_signing(session.layout, session.environ, "")
        ok, _, _ = prepare_mok(
            session.layout,
            session.settings.distro,
            cfg.mok_signing_key,
            cfg.mok_certificate,
            session.console,
            None,
        )
        return 0 if ok else 1
    if action in ("autoinstall", "kernel_postinst"):
        from .dkmscli import _have_one_kernel, _post_transaction

        _have_one_kernel(args, action, len(pairs))
        require_root()
        kver, arch = pairs[0]
        log = _log_sink(session)
        try:
            rc = dkms_autoinstall(session, kver, arch, log=log)
        finally:
            log.flush(session.console)
        if rc == 0 and session.settings.post_transaction and session.installed_count:
            # dkms 3.4 means to run it here but its guard reads a variable out of scope
            _post_transaction(session, kver)
        return rc
    if action in ("kernel_prerm", "kernel_preinst"):
        require_root()
        kver, arch = pairs[0]
        log = _log_sink(session)
        try:
            return dkms_kernel_remove(
                session, kver, arch, preinst=action == "kernel_preinst", log=log
            )
        finally:
            log.flush(session.console)
    if action == "match":
        require_root()
        from .dkmscli import _have_one_kernel

        _have_one_kernel(args, "match", len(pairs))
        return run_match(session, args, pairs[0])
    raise DkmsError(f"The action {action} is not available in this version of dkmshooks.")


def run_match(session: Session, args: Args, pair: tuple[str, str]) -> int:
    console = session.console
    kver, arch = pair
    template = args.template_kernel
    if not template:
        raise DkmsError(
            "Invalid number of parameters passed.",
            "Usage: match --templatekernel=<kernel-version> -k <kernel-version>",
            "   or: match --templatekernel=<kernel-version> -k <kernel-version> <module>",
            code=1,
        )
    if template == kver:
        raise DkmsError("The templatekernel and the specified kernel version are the same.", code=2)
    entries = [e for e in session.tree.status("", "", template, arch) if e.state == "installed"]
    if args.module:
        if not session.layout.module_dir(args.module).is_dir():
            raise DkmsError(f"The module: {args.module} is not located in the DKMS tree.", code=3)
        entries = [e for e in entries if e.module == args.module]
    console.echo("")
    console.echo(f"Matching modules in kernel: {kver} ({arch})")
    console.echo(f"to the configuration of kernel: {template} ({arch})")
    if not entries:
        console.echo("")
        console.echo("There is nothing to be done for this match.")
        return 0
    session.prepare_kernel(kver)
    rc = 0
    for entry in entries:
        console.echo(f"Module:  {entry.module}")
        console.echo(f"Version: {entry.version}")
        if session.tree.is_broken(entry.module, entry.version):
            console.error(
                f"{entry.module}/{entry.version} is broken!",
                "Missing the source directory or the symbolic link pointing to it.",
                "Manual intervention is required!",
            )
            continue
        try:
            session.maybe_build(entry.module, entry.version, kver, arch)
            session.maybe_install(entry.module, entry.version, kver, arch)
            rc = 0
        except DkmsError as exc:
            from .dkmscli import print_error

            print_error(console, exc)
            rc = exc.code
    return rc
