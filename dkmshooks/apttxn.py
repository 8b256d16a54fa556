"""Which package-manager run a hook call belongs to (its transaction id: an apt or dpkg run, or
the rpm front end above a kernel-install call), and what an apt call means (its event). Used by
the apt, dnf and kernel-install adapters and by fasthook, which answers before anything heavier
than `os` is imported; so no dataclasses here (see adapters/apt.py for how the id is recorded and
shared)."""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing itself is not imported: see the module docstring
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

TRANSACTION_SCHEMA = 1
TRANSACTION_FILE = "apt-transaction"
#: Overrides the transaction id of a hook call (scripts that drive dpkg themselves, tests).
TRANSACTION_VAR = "DKMSHOOKS_TRANSACTION"


def hook_event(kind: str, params: Sequence[str]) -> str | None:
    """The engine's event for a call of /etc/kernel/<kind>.d with DEB_MAINT_PARAMS split into
    `params` (the table in adapters/apt.py), or None for a call that means nothing to it."""
    action = params[0] if params else ""
    if kind == "preinst":
        return "image-preinst" if action == "upgrade" else None
    if kind == "postinst":
        return "image-added" if action in ("", "configure") else None
    if kind == "header_postinst":
        return "headers-added" if action in ("", "configure") else None
    if kind == "prerm":
        return "image-removed" if action in ("", "remove") else None
    # postrm
    return "image-removed" if action in ("remove", "purge") else None


def new_transaction_id() -> str:
    """A fresh id when the package manager gives none: random first (shown shortened), then time."""
    # os.urandom, not uuid4: `import uuid` (and the platform module it pulls in) costs more
    # than the rest of a no-op hook's imports
    return f"{os.urandom(4).hex()}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"


class Process:
    """One /proc/PID/stat: pid, parent, command name, and start time (clock ticks after boot),
    which with the pid identifies the process for this boot."""

    __slots__ = ("comm", "pid", "ppid", "start")

    def __init__(self, pid: int, ppid: int, comm: str, start: int) -> None:
        self.pid, self.ppid, self.comm, self.start = pid, ppid, comm, start

    def _key(self) -> tuple[int, int, str, int]:
        return (self.pid, self.ppid, self.comm, self.start)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Process) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, ppid={self.ppid}, comm={self.comm!r}, start={self.start})"


class AptTransaction:
    """The record DPkg::Pre-Invoke writes: the id, and the apt process it belongs to."""

    __slots__ = ("id", "pid", "start")

    def __init__(self, id: str, pid: int, start: int) -> None:
        self.id, self.pid, self.start = id, pid, start

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AptTransaction) and (self.id, self.pid, self.start) == (
            other.id,
            other.pid,
            other.start,
        )

    def __hash__(self) -> int:
        return hash((self.id, self.pid, self.start))

    def __repr__(self) -> str:
        return f"AptTransaction(id={self.id!r}, pid={self.pid}, start={self.start})"

    def is_process(self, process: Process) -> bool:
        return self.pid == process.pid and self.start == process.start


def read_process(pid: int, proc: str | os.PathLike[str] = "/proc") -> Process | None:
    try:
        with open(os.path.join(proc, str(pid), "stat"), encoding="utf-8", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    # comm is in parentheses and may itself contain spaces and parentheses.
    head, _, tail = stat.rpartition(")")
    _, _, comm = head.partition("(")
    fields = tail.split()
    try:
        return Process(pid=pid, ppid=int(fields[1]), comm=comm, start=int(fields[19]))
    except (IndexError, ValueError):
        return None


def ancestors(pid: int, proc: str | os.PathLike[str] = "/proc") -> list[Process]:
    """pid's parent, its parent, … up to (not including) pid 0."""
    chain: list[Process] = []
    current = read_process(pid, proc)
    seen = {pid}
    while current is not None and current.ppid > 0 and current.ppid not in seen:
        seen.add(current.ppid)
        current = read_process(current.ppid, proc)
        if current is not None:
            chain.append(current)
    return chain


def boot_time(proc: str | os.PathLike[str]) -> float:
    try:
        with open(os.path.join(proc, "stat"), encoding="utf-8") as fh:
            for line in fh.read().splitlines():
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def utc_stamp(seconds: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))


def read_transaction_file(path: str | os.PathLike[str]) -> AptTransaction | None:
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if data.get("schema") != TRANSACTION_SCHEMA:
            return None
        return AptTransaction(id=str(data["id"]), pid=int(data["pid"]), start=int(data["start"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def dpkg_transaction(dpkg: Process, proc: str | os.PathLike[str] = "/proc") -> str:
    """The id of a dpkg run without apt: what every hook call of it computes alike, in the shape
    of new_transaction_id() (distinct first 8 chars, then when dpkg started)."""
    import hashlib

    ticks = os.sysconf("SC_CLK_TCK")
    started = boot_time(proc) + dpkg.start / ticks
    digest = hashlib.sha256(f"dpkg {dpkg.pid} {dpkg.start} {started}".encode()).hexdigest()
    return f"{digest[:8]}-{utc_stamp(started)}"


def current_transaction(
    state_dir: str | os.PathLike[str],
    environ: Mapping[str, str],
    *,
    pid: int | None = None,
    proc: str | os.PathLike[str] = "/proc",
) -> str:
    """The id shared by every hook call of this apt run (or dpkg run, without apt)."""
    forced = environ.get(TRANSACTION_VAR)
    if forced:
        return forced
    chain = ancestors(os.getpid() if pid is None else pid, proc)
    record = read_transaction_file(os.path.join(state_dir, TRANSACTION_FILE))
    if record is not None and any(record.is_process(p) for p in chain):
        return record.id
    for process in chain:
        if process.comm == "dpkg":
            return dpkg_transaction(process, proc)
    return new_transaction_id()


#: Names of the processes that run rpm transactions (comm, at most 15 characters). The first
#: ancestor with one of these names is "the package manager" of a kernel-install call.
RPM_MANAGERS = frozenset(
    {
        "dnf",
        "dnf-3",
        "dnf4",
        "dnf5",
        "dnf-automatic",
        "dnf5daemon-serv",
        "yum",
        "microdnf",
        "packagekitd",
        "rpm",
        "rpm-ostree",
        "zypper",
    }
)


def rpm_manager(pid: int, proc: str | os.PathLike[str] = "/proc") -> Process | None:
    """The nearest ancestor of pid that is an rpm front end."""
    for process in ancestors(pid, proc):
        if process.comm in RPM_MANAGERS:
            return process
    return None


def rpm_transaction(pid: int, start: int, proc: str | os.PathLike[str] = "/proc") -> str:
    """The id every dkmshooks call of one rpm front end's run computes alike (the process `pid`
    started at `start` clock ticks after boot), in the shape of new_transaction_id()."""
    import hashlib

    started = boot_time(proc) + start / os.sysconf("SC_CLK_TCK")
    digest = hashlib.sha256(f"rpm-manager {pid} {start}".encode()).hexdigest()
    return f"{digest[:8]}-{utc_stamp(started)}"


def kernel_install_transaction(
    state_dir: str | os.PathLike[str],
    environ: Mapping[str, str],
    *,
    pid: int | None = None,
    proc: str | os.PathLike[str] = "/proc",
) -> str:
    """The id a kernel-install plugin call shares with the rest of its package-manager run: the
    dnf (or other rpm front end) process that runs the kernel's scriptlet, else apt's or dpkg's
    run (Debian's zz-systemd-boot), else a fresh one."""
    forced = environ.get(TRANSACTION_VAR)
    if forced:
        return forced
    manager = rpm_manager(os.getpid() if pid is None else pid, proc)
    if manager is not None:
        return rpm_transaction(manager.pid, manager.start, proc)
    return current_transaction(state_dir, environ, pid=pid, proc=proc)
