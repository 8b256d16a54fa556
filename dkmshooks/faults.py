"""Crash injection for the reliability tests (tests/reliability, docs/guarantees.md).

`DKMSHOOKS_FAULT=<point>:<n>[,<point>:<n>...]` makes the process SIGKILL itself the n-th time it
reaches the named point; the point `*` counts every point, so a test can walk a command through
each of its file operations in turn (`*:1`, `*:2`, ... until the command finishes unharmed).
The command-line edge reads the variable once (cli.py) and calls `arm`; core code only calls
`point`, which costs one empty-dict test when nothing is armed.

SIGKILL is what a power cut, the OOM killer or `kill -9` from an impatient admin look like to
us: no `finally`, no atexit, no flush. Whatever state that leaves must be recoverable.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

ENV_VAR = "DKMSHOOKS_FAULT"

_armed: dict[str, int] = {}
_lock = threading.Lock()


def arm(spec: str) -> None:
    """Parse `point:n,...`; malformed items are ignored (this is a test hook, not an interface)."""
    with _lock:
        _armed.clear()
        for item in spec.split(","):
            name, _, count = item.strip().rpartition(":")
            if name and count.isdigit() and int(count) > 0:
                _armed[name] = int(count)


def point(name: str) -> None:
    """A place where a crash must leave either the old or the new state."""
    if not _armed:
        return
    with _lock:
        for key in (name, "*"):
            if key not in _armed:
                continue
            _armed[key] -= 1
            if _armed[key] == 0:
                sys.stdout.flush()
                sys.stderr.write(f"dkmshooks: fault injection: SIGKILL at {name}\n")
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
