"""`dkmshooks hook apt postinst|header_postinst K` and `dkmshooks hook kernel-install add K …`
for a kernel that needs nothing, answered before the engine is imported.

The engine saves a verdict when such a call found nothing to do for K (verdict.py). The next
call for K, under the tree lock, checks that every path the engine read is unchanged and the
environment is the same; then the engine would again do nothing, and this module does what it
did besides reading: it marks K (and, for the image, K#image-added) in the transaction's state
(apt's run, or for kernel-install the package manager's run the adapter finds) and clears K's
pending record, or says that the transaction already handled K. Anything else, any doubt, any
error: None, and the caller runs the engine as usual.
"""

from __future__ import annotations

import os

from . import apttxn, verdict

TYPE_CHECKING = False  # typing is not imported: see the module docstring
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def answer(argv: Sequence[str], environ: Mapping[str, str]) -> int | None:
    """The exit code of the hook call `argv` (the `dkmshooks` command's arguments), or None
    when the engine has to run."""
    try:
        return _answer(argv, environ)
    except Exception:  # the engine runs instead, and reports whatever this was
        return None


def _answer(argv: Sequence[str], environ: Mapping[str, str]) -> int | None:
    if len(argv) < 4 or argv[0] != "hook" or environ.get("DKMSHOOKS_FAULT"):
        return None
    if argv[1] == "apt" and len(argv) in (4, 5):
        kind, kver = argv[2], argv[3]
        if kind not in ("postinst", "header_postinst"):
            return None  # the calls whose "nothing to do" a verdict records (hookengine)
        # the event as the adapter works it out, from DEB_MAINT_PARAMS split into words; here
        # only printable ASCII without quotes or escapes, which splits at spaces as the
        # adapter's shlex splits it; anything else is left to the adapter
        params = environ.get("DEB_MAINT_PARAMS", "")
        if not all(" " <= c <= "~" for c in params) or any(c in params for c in "'\"\\"):
            return None
        event = apttxn.hook_event(kind, [word for word in params.split(" ") if word])
        source = "apt"
    elif argv[1] == "kernel-install" and argv[2] == "add":
        kver, event, source = argv[3], "image-added", "kernel-install"
    else:
        return None
    if event is None or not kver or "/" in kver or kver in (".", ".."):
        return None
    root = environ.get("DKMSHOOKS_ROOT") or "/"
    state_dir = os.path.join(root, "var/lib/dkmshooks")
    name = verdict.name_for(source, kver)
    found = verdict.load(state_dir, name)
    if found is None:
        return None
    from pathlib import Path

    from .locking import TreeLock

    lock = TreeLock(Path(state_dir, "lock"))
    if not lock.try_acquire():
        return None  # another run holds the tree: the engine waits for it, and says so
    try:
        if not found.holds(name, environ):
            return None
        from . import state

        if source == "apt":
            transaction = apttxn.current_transaction(state_dir, environ)
        else:
            transaction = apttxn.kernel_install_transaction(state_dir, environ)
        if event == "image-added":
            state.mark_transaction_at(state_dir, transaction, f"{kver}#image-added", {"seen": True})
        readiness = {"headers": found.headers, "image": found.image}
        if state.transaction_done_at(state_dir, transaction, kver) == readiness:
            from .console import note

            note(f"{kver}: already handled in this transaction")
            return 0
        state.mark_transaction_at(state_dir, transaction, kver, readiness)
        state.clear_pending_at(state_dir, kver)
        return 0
    finally:
        lock.release()
