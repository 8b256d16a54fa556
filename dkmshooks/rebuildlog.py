"""The unified rebuild log: one JSON object per line for every (module, version, kernel, arch,
action) outcome. The engine appends, `dkmshooks log` reads. The format is docs/log-format.md."""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

SOURCES = frozenset({"apt", "dnf", "pacman", "kernel-install", "cli", "boot"})
OUTCOMES = frozenset(
    {
        "installed",
        "built",
        "already-installed",
        "skipped-excluded",
        "deferred-no-headers",
        "deferred-no-image",
        "deferred-dependency",
        "failed",
        "removed",
        "initramfs-regenerated",
    }
)
TAIL_LINES = 20

# A reader must see every field a schema-1 writer always wrote; the others default, so a newer
# writer may drop them without breaking this reader.
_REQUIRED = (
    "time",
    "source",
    "transaction",
    "module",
    "version",
    "kernel",
    "arch",
    "action",
    "outcome",
    "schema",
)
_TEXT_FIELDS = (
    "time",
    "source",
    "transaction",
    "module",
    "version",
    "kernel",
    "arch",
    "action",
    "outcome",
    "message",
)
# json.dumps(ensure_ascii=False) leaves these as they are, and str.splitlines() and some shippers
# break lines on them; escaped they stay one JSON line for every reader.
_LINE_BREAK_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}
_TIMESTAMP_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})"
)


class LogWriteError(OSError):
    """The log could not be appended to; `filename` is the log, `strerror` the reason."""

    def __str__(self) -> str:
        reason = self.strerror or "write failed"
        if self.errno == errno.ENOSPC:
            reason += " (the disk is full)"
        return f"cannot write the rebuild log {self.filename}: {reason}"


@dataclass(frozen=True)
class LogRecord:
    """One outcome. Construction validates every field, so `to_json` always yields a line that
    `from_json` reads back equal."""

    time: str
    source: str
    transaction: str
    module: str
    version: str
    kernel: str
    arch: str
    action: str
    outcome: str
    duration: float = 0.0
    make_log: str | None = None
    tail: tuple[str, ...] | None = None
    message: str = ""
    exit_code: int | None = None
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for name in _TEXT_FIELDS:
            _require_text(name, getattr(self, name))
        parse_timestamp(self.time)
        duration: object = self.duration
        if not isinstance(duration, (int, float)) or isinstance(duration, bool):
            raise ValueError(f"duration: expected a number, got {_kind(duration)}")
        if not math.isfinite(duration) or duration < 0:
            raise ValueError(f"duration: expected a finite number >= 0, got {duration!r}")
        object.__setattr__(self, "duration", float(duration))
        if self.make_log is not None:
            _require_text("make_log", self.make_log)
        tail: object = self.tail
        if tail is not None:
            if not isinstance(tail, (list, tuple)):
                raise ValueError(f"tail: expected a list of strings, got {_kind(tail)}")
            for line in tail:
                _require_text("tail", line)
            object.__setattr__(self, "tail", tuple(tail))
        exit_code: object = self.exit_code
        if exit_code is not None and not _is_int(exit_code):
            raise ValueError(f"exit_code: expected an integer or null, got {_kind(exit_code)}")
        schema: object = self.schema
        if not _is_int(schema) or self.schema < 1:
            raise ValueError(f"schema: expected an integer >= 1, got {schema!r}")

    @property
    def when(self) -> datetime:
        """`time` as an aware datetime in UTC."""
        return parse_timestamp(self.time)

    @property
    def is_failed(self) -> bool:
        return self.outcome == "failed"

    def to_json(self) -> str:
        """One line of JSON (no newline inside it, none at its end), keys sorted."""
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.tail is not None:
            data["tail"] = list(self.tail)
        text = json.dumps(
            data, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
        )
        return text.translate(_LINE_BREAK_ESCAPES)

    @classmethod
    def from_json(cls, line: str) -> LogRecord:
        """Parse one line. Unknown keys are ignored (a newer writer may add fields); anything
        malformed raises ValueError."""
        try:
            data = json.loads(line)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {_kind(data)}")
        missing = [name for name in _REQUIRED if name not in data]
        if missing:
            raise ValueError(f"missing field(s): {', '.join(missing)}")
        return cls(**{key: value for key, value in data.items() if key in _FIELD_NAMES})


_FIELD_NAMES = frozenset(f.name for f in fields(LogRecord))


def from_json(line: str) -> LogRecord:
    return LogRecord.from_json(line)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name}: not encodable as UTF-8 (lone surrogate)") from None


# Time


def parse_timestamp(text: str) -> datetime:
    """A record's `time` ("2026-11-22T01:02:03Z"; fractions and numeric offsets are accepted
    from other writers) as an aware datetime in UTC."""
    match = _TIMESTAMP_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"time: expected ISO 8601 like 2026-11-22T01:02:03Z, got {text!r}")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    tz = _parse_offset(offset)
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
        )
        return moment.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"time: {text!r} is not a valid time: {exc}") from None


def format_timestamp(moment: datetime | None = None) -> str:
    """The `time` a writer records: UTC, whole seconds, `Z`. Default: now."""
    if moment is None:
        moment = datetime.now(timezone.utc)
    if moment.tzinfo is None:
        raise ValueError("format_timestamp needs an aware datetime")
    m = moment.astimezone(timezone.utc)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}Z"


def _parse_offset(text: str) -> timezone:
    if text.upper() == "Z":
        return timezone.utc
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:])
    if hours > 23 or minutes > 59:
        raise ValueError(f"bad UTC offset {text!r}")
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if text[0] == "-" else delta)


_AGE_RE = re.compile(r"([0-9]+)\s*([smhdw])(?:\s+ago)?", re.IGNORECASE)
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_WHEN_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?"
    r"(Z|[+-][0-9]{2}:?[0-9]{2})?)?",
    re.IGNORECASE,
)


def parse_since(text: str, now: datetime) -> datetime:
    """`--since WHEN`: an ISO date or time ("2026-11-22", "2026-11-22T10:00", "…10:00:05Z",
    "…+02:00"; a space may replace the T) or an age ("30m", "2h", "3d", "1w", "45s", "2h ago").
    A time without an offset is in `now`'s timezone (UTC if `now` is naive), the timezone the
    table shows. Returns an aware datetime."""
    tz = now.tzinfo or timezone.utc
    if now.tzinfo is None:
        now = now.replace(tzinfo=tz)
    stripped = text.strip()
    age = _AGE_RE.fullmatch(stripped)
    if age is not None:
        try:
            return now - timedelta(seconds=int(age.group(1)) * _AGE_UNITS[age.group(2).lower()])
        except OverflowError:
            raise ValueError(f"time {text!r} is too far in the past") from None
    when = _WHEN_RE.fullmatch(stripped)
    if when is None:
        raise ValueError(
            f"cannot understand time {text!r}: expected a date (2026-11-22), a time "
            "(2026-11-22T10:00, optionally with seconds and Z or +HH:MM) or an age "
            "(30m, 2h, 3d, 1w)"
        )
    year, month, day, hour, minute, second, fraction, offset = when.groups()
    try:
        zone = _parse_offset(offset) if offset else tz
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")),
            zone,
        )
    except ValueError as exc:
        raise ValueError(f"cannot understand time {text!r}: {exc}") from None


# Filtering


@dataclass(frozen=True)
class RecordFilter:
    """What `dkmshooks log` selects. `module` is a name or name/version; `transaction` matches
    by prefix, so the table's short TXN column can be pasted back."""

    kernel: str | None = None
    module: str | None = None
    failed: bool = False
    since: datetime | None = None
    transaction: str | None = None
    source: str | None = None

    def matches(self, record: LogRecord) -> bool:
        if self.kernel is not None and record.kernel != self.kernel:
            return False
        if self.module is not None:
            name, slash, version = self.module.partition("/")
            if record.module != name or (slash and record.version != version):
                return False
        if self.failed and not record.is_failed:
            return False
        if self.transaction is not None and not record.transaction.startswith(self.transaction):
            return False
        if self.source is not None and record.source != self.source:
            return False
        if self.since is not None:
            since = self.since if self.since.tzinfo else self.since.replace(tzinfo=timezone.utc)
            if record.when < since:
                return False
        return True


def filter_records(
    records: Iterable[LogRecord],
    *,
    kernel: str | None = None,
    module: str | None = None,
    failed: bool = False,
    since: datetime | None = None,
    transaction: str | None = None,
    source: str | None = None,
) -> Iterator[LogRecord]:
    criteria = RecordFilter(kernel, module, failed, since, transaction, source)
    return (record for record in records if criteria.matches(record))


# Writing


def lock_path(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".lock")


def rotated_path(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def append(
    path: Path, records: Sequence[LogRecord], *, max_bytes: int = 5_000_000, keep: int = 3
) -> None:
    """Append `records` as one write under the log's lock, rotating first when the current file
    would grow past `max_bytes`. `keep` rotated files are kept (path.1 newest … path.keep).
    Raises LogWriteError for any failure of the file system (full disk, read-only, permissions),
    ValueError for a record this writer must not write."""
    if max_bytes <= 0 or keep < 0:
        raise ValueError(f"append: need max_bytes > 0 and keep >= 0, got {max_bytes}, {keep}")
    if not records:
        return
    for record in records:
        _require_writable(record)
    data = "".join(f"{record.to_json()}\n" for record in records).encode("utf-8")
    try:
        _ensure_dir(path.parent)
        lock_fd = _open_created(lock_path(path), os.O_RDWR)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            _append_locked(path, data, max_bytes, keep)
        finally:
            os.close(lock_fd)  # releases the lock
    except OSError as exc:
        if isinstance(exc, LogWriteError):
            raise
        raise LogWriteError(exc.errno or errno.EIO, exc.strerror or str(exc), str(path)) from exc


def _require_writable(record: LogRecord) -> None:
    """A reader takes any source or outcome a newer writer invents; this writer writes only its
    own schema's vocabulary, so a typo in the engine fails a test instead of reaching admins."""
    if record.schema != SCHEMA_VERSION:
        raise ValueError(f"this writer writes schema {SCHEMA_VERSION}, not {record.schema}")
    if record.source not in SOURCES:
        raise ValueError(f"unknown source {record.source!r}; one of {sorted(SOURCES)}")
    if record.outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {record.outcome!r}; one of {sorted(OUTCOMES)}")


def _ensure_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    os.makedirs(directory, mode=0o755, exist_ok=True)
    os.chmod(directory, 0o755)  # whatever the umask


def _open_created(path: Path, flags: int) -> int:
    """Open `path`, creating it 0644 whatever the umask; an existing file keeps its mode."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o644)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _append_locked(path: Path, data: bytes, max_bytes: int, keep: int) -> None:
    fd = _open_created(path, os.O_RDWR | os.O_APPEND)
    try:
        info = os.fstat(fd)
        size = info.st_size
        if stat.S_ISREG(info.st_mode) and size > 0 and size + len(data) > max_bytes:
            os.close(fd)
            fd = -1
            _rotate(path, keep)
            fd = _open_created(path, os.O_RDWR | os.O_APPEND)
            size = os.fstat(fd).st_size
        # A crash mid-write left a partial line: end it, so this batch is not glued onto it.
        if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        _write_all(fd, data, size)
    finally:
        if fd >= 0:
            os.close(fd)


def _write_all(fd: int, data: bytes, size: int) -> None:
    view = memoryview(data)
    try:
        # One write in practice; a short write happens only when the disk is filling up.
        while view:
            view = view[os.write(fd, view) :]
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # not a file that can be synced (a device)
                raise
    except OSError:
        # Take back a partial batch, so the next reader does not skip a torn line.
        try:
            os.ftruncate(fd, size)
        except OSError:
            pass
        raise


def _rotate(path: Path, keep: int) -> None:
    for n in sorted(_rotated_numbers(path), reverse=True):
        if n >= keep:
            os.unlink(rotated_path(path, n))
        else:
            os.rename(rotated_path(path, n), rotated_path(path, n + 1))
    if keep > 0:
        os.rename(path, rotated_path(path, 1))
    else:
        os.unlink(path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _rotated_numbers(path: Path) -> list[int]:
    pattern = re.compile(re.escape(path.name) + r"\.([1-9][0-9]*)")
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    return [int(m.group(1)) for m in map(pattern.fullmatch, names) if m is not None]


def read_tail(make_log: Path, lines: int = TAIL_LINES, *, max_width: int = 500) -> tuple[str, ...]:
    """The last `lines` lines of a make.log for a failed record's `tail` (each cut to
    `max_width`); () if it cannot be read."""
    try:
        with make_log.open("rb") as f:
            start = max(0, f.seek(0, os.SEEK_END) - 64 * 1024)
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ()
    found = text.split("\n")
    if start > 0:
        found = found[1:]  # begins mid-line
    if found and found[-1] == "":
        found.pop()
    found = [line.rstrip("\r") for line in found[-lines:]] if lines > 0 else []
    return tuple(line if len(line) <= max_width else line[: max_width - 1] + "…" for line in found)


# Reading


@dataclass
class ReadStats:
    """Filled in while reading: the files read, records returned, lines skipped (garbage or torn
    by a crash) and the first few reasons, as "path:line: reason"."""

    files: list[Path] = field(default_factory=list)
    records: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    def skip(self, path: Path, lineno: int, reason: str) -> None:
        self.skipped += 1
        if len(self.problems) < 10:
            self.problems.append(f"{path}:{lineno}: {reason}")


@dataclass(frozen=True)
class _Open:
    path: Path
    fd: int
    size: int


_READ_LOCK_WAIT = 5.0
_MAX_LINE = 1 << 20


def read(
    path: Path, *, include_rotated: bool = True, stats: ReadStats | None = None
) -> Iterator[LogRecord]:
    """Every readable record, oldest first: path.N … path.1, then path. A missing log yields
    nothing. Lines that do not parse are skipped and counted in `stats`."""
    return (record for _, record in read_raw(path, include_rotated=include_rotated, stats=stats))


def read_with_stats(
    path: Path, *, include_rotated: bool = True
) -> tuple[list[LogRecord], ReadStats]:
    stats = ReadStats()
    return list(read(path, include_rotated=include_rotated, stats=stats)), stats


def read_raw(
    path: Path, *, include_rotated: bool = True, stats: ReadStats | None = None
) -> Iterator[tuple[str, LogRecord]]:
    """Like `read`, with each record's line as stored (fields unknown to this reader kept)."""
    if stats is None:
        stats = ReadStats()
    opened = _open_snapshot(path, include_rotated)
    try:
        for item in opened:
            stats.files.append(item.path)
            for lineno, raw, complete in _split_lines(item):
                if raw is None:
                    stats.skip(item.path, lineno, f"line longer than {_MAX_LINE} bytes")
                    continue
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                    record = LogRecord.from_json(line)
                except ValueError as exc:
                    reason = str(exc) if complete else "truncated last line"
                    stats.skip(item.path, lineno, reason)
                    continue
                stats.records += 1
                yield line, record
    finally:
        for item in opened:
            os.close(item.fd)


def _split_lines(item: _Open) -> Iterator[tuple[int, bytes | None, bool]]:
    """(line number, line or None if oversized, ended by a newline) up to the snapshot size, so
    what a writer appends meanwhile is left for the next reader."""
    offset, lineno = 0, 0
    pending = b""
    oversized = False
    while offset < item.size:
        chunk = os.pread(item.fd, min(1 << 16, item.size - offset), offset)
        if not chunk:
            break  # truncated behind our back
        offset += len(chunk)
        parts = chunk.split(b"\n")
        for part in parts[:-1]:
            lineno += 1
            yield lineno, (None if oversized else pending + part), True
            pending, oversized = b"", False
        if not oversized:
            pending += parts[-1]
            if len(pending) > _MAX_LINE:
                pending, oversized = b"", True
    if pending or oversized:
        yield lineno + 1, (None if oversized else pending), False


def _candidates(path: Path, include_rotated: bool) -> list[Path]:
    """Newest first: opened in that order, a rotation meanwhile can only show a file twice
    (deduplicated by inode), never hide one."""
    rotated = sorted(_rotated_numbers(path)) if include_rotated else []
    return [path, *(rotated_path(path, n) for n in rotated)]


def _open_snapshot(path: Path, include_rotated: bool) -> list[_Open]:
    """Open every file of the log under the shared lock, oldest first, and note their sizes;
    writers rotate and append under the exclusive lock, so the set is consistent. Without the
    lock (none yet, no permission, a writer stuck for seconds) retry until nothing moved."""
    lock_fd = _lock_shared(path)
    try:
        attempts = 1 if lock_fd is not None else 5
        for attempt in range(attempts):
            opened, identities = _open_files(path, include_rotated)
            if lock_fd is not None or identities == _identities(path, include_rotated):
                break
            if attempt + 1 < attempts:
                for item in opened:
                    os.close(item.fd)
        return opened[::-1]
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def _open_files(
    path: Path, include_rotated: bool
) -> tuple[list[_Open], list[tuple[Path, int, int]]]:
    opened: list[_Open] = []
    identities: list[tuple[Path, int, int]] = []
    seen: set[tuple[int, int]] = set()
    try:
        for candidate in _candidates(path, include_rotated):
            try:
                fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            info = os.fstat(fd)
            identities.append((candidate, info.st_dev, info.st_ino))
            if (info.st_dev, info.st_ino) in seen:
                os.close(fd)
                continue
            seen.add((info.st_dev, info.st_ino))
            opened.append(_Open(candidate, fd, info.st_size))
    except BaseException:
        for item in opened:
            os.close(item.fd)
        raise
    return opened, identities


def _identities(path: Path, include_rotated: bool) -> list[tuple[Path, int, int]]:
    found = []
    for candidate in _candidates(path, include_rotated):
        try:
            info = os.stat(candidate)
        except FileNotFoundError:
            continue
        found.append((candidate, info.st_dev, info.st_ino))
    return found


def _lock_shared(path: Path) -> int | None:
    try:
        fd = os.open(lock_path(path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    # Polled, not blocking: a writer stuck in fsync on a dead disk must not hang `dkmshooks log`.
    deadline = time.monotonic() + _READ_LOCK_WAIT
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.002)
    except OSError:
        pass
    os.close(fd)
    return None


# Rendering

_RESET = "\x1b[0m"
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_HEADER = (
    "TIME (UTC)",
    "SOURCE",
    "TXN",
    "KERNEL",
    "MODULE/VERSION",
    "ACTION",
    "OUTCOME",
    "DURATION",
)


def format_duration(seconds: float) -> str:
    """3.2s, 1m05s, 2h03m."""
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    total = round(seconds)
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def _printable(text: str) -> str:
    """Log text (a compiler's coloured output, a hostile module name) must not drive the
    terminal: control and bidi characters are shown escaped."""
    text = text.replace("\t", "    ")
    return _UNPRINTABLE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _outcome_color(outcome: str) -> str | None:
    if outcome == "failed":
        return "\x1b[1;31m"
    if outcome.startswith("deferred"):
        return "\x1b[33m"
    if outcome in ("installed", "already-installed"):
        return "\x1b[32m"
    return None


def _time_cell(record: LogRecord) -> str:
    t = record.when
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d}"


def render_table(
    records: Iterable[LogRecord], *, color: bool, path: Path | str | None = None
) -> str:
    """A fixed-width table, oldest first and newest last, times in UTC. A failed row is followed
    by its make.log, message and tail; a deferred row by its message. Colour only if asked."""
    rows = sorted(records, key=lambda record: record.when)
    if not rows:
        return f"no matching records in {path}\n" if path is not None else "no matching records\n"
    cells = [
        tuple(
            _printable(cell)
            for cell in (
                _time_cell(r),
                r.source,
                r.transaction[:8],
                r.kernel,
                f"{r.module}/{r.version}",
                r.action,
                r.outcome,
                format_duration(r.duration),
            )
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [_HEADER, *cells]) for i in range(len(_HEADER))]
    lines = [_table_row(_HEADER, widths, None)]
    for record, row in zip(rows, cells):
        lines.append(_table_row(row, widths, _outcome_color(record.outcome) if color else None))
        lines.extend(_details(record))
    return "".join(f"{line}\n" for line in lines)


def _table_row(row: Sequence[str], widths: Sequence[int], outcome_color: str | None) -> str:
    padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths)]
    if outcome_color is not None:
        padded[-1] = f"{outcome_color}{row[-2]}{_RESET}{' ' * (widths[-2] - len(row[-2]))}"
    padded.append(row[-1].rjust(widths[-1]))
    return "  ".join(padded)


def _details(record: LogRecord) -> list[str]:
    lines: list[str] = []
    if record.is_failed:
        status = f"exit status {record.exit_code}" if record.exit_code is not None else ""
        if record.make_log is not None:
            suffix = f" ({status})" if status else ""
            lines.append(f"    make.log: {_printable(record.make_log)}{suffix}")
        elif status:
            lines.append(f"    {status}")
    if record.is_failed or record.outcome.startswith("deferred"):
        lines.extend(f"    {_printable(line)}" for line in record.message.splitlines())
    if record.is_failed and record.tail:
        lines.extend(f"        {_printable(line)}".rstrip() for line in record.tail)
    return lines
