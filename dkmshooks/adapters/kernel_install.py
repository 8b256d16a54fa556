"""systemd kernel-install adapter: the calls of `40-dkmshooks.install` → one `Trigger`.

kernel-install (reference/distro-hooks.md §4; the lab's §3 for systemd 252) runs every
`*.install` plugin of /etc/kernel/install.d and /usr/lib/kernel/install.d in lexical order as

    PLUGIN add KVER ENTRY_DIR_ABS KERNEL_IMAGE [INITRD…]   → image-added for KVER
    PLUGIN remove KVER ENTRY_DIR_ABS                        → image-removed for KVER
    PLUGIN <any other verb> …                               → nothing (exit 0)

Fedora and RHEL call it from the kernel-core scriptlets (`%posttrans`: add, `%preun`: remove);
Debian only through zz-systemd-boot. ENTRY_DIR_ABS is the BLS entry directory (it may not exist:
layout=other), not /boot, and we never write there.

Why image-added carries `initramfs_follows`: our plugin is numbered 40 so that 50-depmod and
50-dracut (or 50-mkinitcpio) run after it and put the modules we just installed into the
initramfs; the engine must not regenerate it itself.

Exit status: kernel-install stops at the first plugin that fails (documented for systemd ≥ 254,
and observed with 252's shell implementation in tests/e2e/test_kernel_install.py), so a failing
module would cost the kernel its initramfs (dkms#472); 77 would silently skip every later
plugin. The engine returns 0 unless `strict = true`, an internal error is reported and still
gives 0 (1 if strict), and this adapter never returns 77.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

from dkmshooks.adapters import is_strict
from dkmshooks.console import note
from dkmshooks.errors import DkmsError, UsageError
from dkmshooks.layout import Layout
from dkmshooks.trigger import KernelEvent, Trigger

USAGE = """\
Usage: dkmshooks hook kernel-install add KVER ENTRY_DIR IMAGE [INITRD...]
       dkmshooks hook kernel-install remove KVER [ENTRY_DIR]
Called by /usr/lib/kernel/install.d/40-dkmshooks.install with kernel-install's arguments.
Other verbs are accepted and ignored.
"""

#: Distribution families whose kernel headers package is `kernel-devel` (the engine's
#: "install X" hint); elsewhere the engine names the package from its own distro detection.
RPM_FAMILIES = frozenset({"fedora", "rhel", "centos", "rocky", "almalinux", "ol", "amzn"})


def _os_release(layout: Layout) -> dict[str, str]:
    for path in layout.os_release_candidates:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip().strip("\"'")
        return values
    return {}


def devel_package(kver: str) -> str:
    """The package that holds kver's build tree on Fedora/RHEL: kernel-devel-K, and for a
    variant kernel (`…x86_64+debug`) kernel-debug-devel-<K without the suffix>."""
    base, plus, variant = kver.partition("+")
    if plus and variant:
        return f"kernel-{variant}-devel-{base}"
    return f"kernel-devel-{kver}"


def headers_hint(layout: Layout, kver: str) -> str:
    release = _os_release(layout)
    families = {release.get("ID", ""), *release.get("ID_LIKE", "").split()}
    return devel_package(kver) if families & RPM_FAMILIES else ""


def trigger_from_args(
    argv: Sequence[str], environ: Mapping[str, str], *, transaction: str, layout: Layout
) -> Trigger | None:
    """The Trigger for one plugin call with kernel-install's arguments; None for verbs we do not
    handle. Raises UsageError when add/remove come without a usable kernel release."""
    verb = argv[0]
    if verb not in ("add", "remove"):
        return None
    if len(argv) < 2 or not argv[1]:
        raise UsageError(f"kernel-install {verb}: the kernel release is missing", code=2)
    kver = argv[1]
    event = "image-added" if verb == "add" else "image-removed"
    try:
        kernel = KernelEvent(kver, event)
    except ValueError as exc:
        raise UsageError(f"kernel-install {verb}: {exc}", code=2) from exc
    extra = {"verb": verb}
    if len(argv) > 2 and argv[2]:
        extra["entry_dir"] = argv[2]
    if verb == "add":
        extra["initramfs_follows"] = "1"
        if len(argv) > 3 and argv[3]:
            extra["image"] = argv[3]
        if len(argv) > 4:
            extra["initrds"] = str(len(argv) - 4)
    for var, key in (
        ("KERNEL_INSTALL_IMAGE_TYPE", "image_type"),
        ("KERNEL_INSTALL_LAYOUT", "layout"),
    ):
        if environ.get(var):
            extra[key] = environ[var]
    return Trigger(
        source="kernel-install",
        transaction=transaction,
        kernels=(kernel,),
        headers_package_hint=headers_hint(layout, kver),
        extra=extra,
    )


def current_transaction(layout: Layout, environ: Mapping[str, str]) -> str:
    """The id this call shares with the rest of its package-manager run: the dnf (or other rpm
    front end) process that runs the kernel's scriptlet, else apt's or dpkg's run (Debian's
    zz-systemd-boot), else a fresh one (apttxn.kernel_install_transaction)."""
    from dkmshooks.apttxn import kernel_install_transaction

    return kernel_install_transaction(layout.state_dir, environ)


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    layout = Layout(root=Path(environ.get("DKMSHOOKS_ROOT") or "/"))
    try:
        if argv[0] not in ("add", "remove"):
            return 0
        trigger = trigger_from_args(
            argv, environ, transaction=current_transaction(layout, environ), layout=layout
        )
    except UsageError as exc:
        note(" ".join(exc.lines))
        sys.stderr.write(USAGE)
        return exc.code
    if trigger is None:
        return 0
    from dkmshooks.engine import handle_trigger

    try:
        rc = handle_trigger(trigger, environ)
    except DkmsError as exc:
        strict = is_strict(layout)
        note(
            f"kernel-install {argv[0]} {argv[1]}: {' '.join(exc.lines)}"
            + ("" if strict else "; the remaining kernel-install plugins still run")
        )
        return 1 if strict else 0
    except Exception:
        # The failure policy (DESIGN.md) holds even when the engine itself breaks: the plugins
        # after us (depmod, the initramfs, the boot entry) must still run.
        sys.stderr.write(traceback.format_exc())
        strict = is_strict(layout)
        note(
            f"internal error while handling kernel-install {argv[0]} {argv[1]}; this is a bug, "
            "please report it with the output above. "
            + (
                "strict = true: failing kernel-install."
                if strict
                else "The remaining kernel-install plugins still run."
            )
        )
        return 1 if strict else 0
    # 77 would make kernel-install skip every later plugin and report success.
    return 1 if rc == 77 else rc


__all__ = ["USAGE", "current_transaction", "devel_package", "main", "trigger_from_args"]
