"""A GNU make jobserver shared by the builds the engine runs at the same time.

With N builds at once and a budget of J jobs, a fixed `make -j(J/N)` per build leaves cores idle
as soon as the round's short builds are done and only a long one is left (it keeps its -j1).
Instead the engine is the top of one jobserver, exactly as a parent make is: it has one implicit
slot and a pipe holding J-1 tokens. A task needs a slot to start (the implicit one if free, else
a token); its `make` gets MAKEFLAGS with `--jobserver-auth=R,W` and no `-j` of its own, so it runs
one job in the task's slot and one more for every token it can read, and gives them back as its
jobs end. At any moment at most J jobs run in total, and a build that is alone gets all J.

Only MAKE commands that start with `make` get the jobserver, i.e. exactly those dkms runs with
`-j`; the others (dahdi's `(make ...; make ...)`, openafs's `./configure && make`) stay serial,
as dkms runs them. GNU make >= 4.2 reads `--jobserver-auth=R,W` (Debian 12: 4.3, Fedora: 4.4).
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable

TOKEN = b"+"


class JobServer:
    def __init__(self, jobs: int) -> None:
        self.jobs = max(1, jobs)
        self._read, self._write = os.pipe()
        os.write(self._write, TOKEN * (self.jobs - 1))
        # The makes inherit a blocking read end (make 4.2 treats EAGAIN there as fatal); we read
        # through our own open file description of the same pipe, which can be non-blocking.
        try:
            self._ours = os.open(f"/proc/self/fd/{self._read}", os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            self._ours = -1
        self._implicit_free = True
        self._lock = threading.Lock()

    @property
    def fds(self) -> tuple[int, int]:
        return self._read, self._write

    @property
    def makeflags(self) -> str:
        """MAKEFLAGS as a parent make passes it to a recursive make (make 4.2+ syntax)."""
        return f" -j{self.jobs} --jobserver-auth={self._read},{self._write}"

    def acquire(self) -> Callable[[], None]:
        """Wait for a slot; returns the function that gives it back."""
        while True:
            with self._lock:
                if self._implicit_free:
                    self._implicit_free = False
                    return self._release_implicit
            token = self._try_read()
            if token:
                return lambda: self._release_token(token)
            # the implicit slot can come free without a byte arriving: look again soon
            select.select([self._read], [], [], 0.05)

    def _try_read(self) -> bytes:
        if self._ours >= 0:
            try:
                return os.read(self._ours, 1)
            except BlockingIOError:
                return b""
        ready, _, _ = select.select([self._read], [], [], 0)
        return os.read(self._read, 1) if ready else b""  # may wait for a make's next token

    def _release_implicit(self) -> None:
        with self._lock:
            self._implicit_free = True

    def _release_token(self, token: bytes) -> None:
        os.write(self._write, token)

    def close(self) -> None:
        for fd in (self._read, self._write, self._ours):
            try:
                os.close(fd)
            except OSError:
                pass
