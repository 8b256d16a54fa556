"""One lock for every mutation of the tree: fcntl.flock, a bounded wait that names the holder.
The kernel drops a flock when its holder dies, so a crashed run never leaves a stale lock."""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

from .errors import DkmsError


class LockTimeout(DkmsError):
    code = 1


DEFAULT_TIMEOUT = 1800.0


def lock_timeout(environ: Mapping[str, str]) -> float:
    """How long to wait for the lock: DKMSHOOKS_LOCK_TIMEOUT seconds, default 30 minutes (a
    long build of another module is a normal reason to wait; a hung one is not)."""
    try:
        value = float(environ.get("DKMSHOOKS_LOCK_TIMEOUT", ""))
    except ValueError:
        return DEFAULT_TIMEOUT
    return value if value >= 0 else DEFAULT_TIMEOUT


class TreeLock:
    def __init__(
        self,
        path: Path,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        say: Callable[[str], None] | None = None,
        poll: float = 0.2,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.say = say
        self.poll = poll
        self.fd: int | None = None
        self.depth = 0

    def holder(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""

    def try_acquire(self) -> bool:
        """acquire() if nobody holds the lock; False (and no message) if somebody does."""
        timeout, say = self.timeout, self.say
        self.timeout, self.say = 0.0, None
        try:
            self.acquire()
        except LockTimeout:
            return False
        finally:
            self.timeout, self.say = timeout, say
        return True

    def acquire(self) -> None:
        if self.depth:
            self.depth += 1
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
                raise DkmsError(
                    "You must be root to use this command.",
                    hint=f"(the tree lock {self.path} cannot be opened by this user)",
                ) from exc
            raise
        deadline = time.monotonic() + self.timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if not announced and self.say is not None:
                who = self.holder() or "another process"
                self.say(f"waiting for the lock {self.path} held by {who}")
                announced = True
            if time.monotonic() >= deadline:
                who = self.holder() or "another process"
                os.close(fd)
                raise LockTimeout(
                    f"Timed out after {int(self.timeout)}s waiting for {self.path}, held by {who}.",
                    hint="Check that process; the lock is released as soon as it exits.",
                )
            time.sleep(self.poll)
        os.ftruncate(fd, 0)
        info = (
            f"pid {os.getpid()} ({' '.join(sys.argv[:6])[:200]}) since {time.strftime('%H:%M:%S')}"
        )
        os.pwrite(fd, info.encode("utf-8", "replace") + b"\n", 0)
        self.fd = fd
        self.depth = 1

    def release(self) -> None:
        if self.fd is None:
            return
        self.depth -= 1
        if self.depth:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> TreeLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
