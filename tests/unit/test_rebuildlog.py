from __future__ import annotations

import errno
import json
import multiprocessing
import os
import stat
import tempfile
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkmshooks.rebuildlog import (
    OUTCOMES,
    SCHEMA_VERSION,
    SOURCES,
    LogRecord,
    LogWriteError,
    ReadStats,
    append,
    filter_records,
    format_duration,
    format_timestamp,
    from_json,
    lock_path,
    parse_since,
    parse_timestamp,
    read,
    read_raw,
    read_tail,
    read_with_stats,
    render_table,
)

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)


def make_record(**overrides: object) -> LogRecord:
    fields: dict[str, object] = {
        "time": "2026-11-22T01:02:03Z",
        "source": "apt",
        "transaction": "0123456789abcdef",
        "module": "v4l2loopback",
        "version": "0.12.7",
        "kernel": "6.1.0-18-amd64",
        "arch": "x86_64",
        "action": "install",
        "outcome": "installed",
        "duration": 3.25,
    }
    fields.update(overrides)
    return LogRecord(**fields)  # type: ignore[arg-type]


FAILED = make_record(
    module="nvidia",
    version="550.54.14",
    action="build",
    outcome="failed",
    duration=65.0,
    make_log="/var/lib/dkms/nvidia/550.54.14/build/make.log",
    tail=("nvidia.c:12:5: error: implicit declaration", "make: *** [all] Error 2"),
    message="Bad return status for module build on kernel: 6.1.0-18-amd64 (x86_64)",
    exit_code=10,
)


# The record and its line


def test_round_trip_keeps_every_field() -> None:
    line = FAILED.to_json()
    assert "\n" not in line
    assert from_json(line) == FAILED
    assert LogRecord.from_json(line) == FAILED
    data = json.loads(line)
    assert list(data) == sorted(data)
    assert data["schema"] == SCHEMA_VERSION == 1
    assert data["tail"] == list(FAILED.tail or ())
    assert line == json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def test_to_json_keeps_non_ascii_and_escapes_every_line_break() -> None:
    record = make_record(message="Größe\nzweite Zeile\u2028third\x85fourth\rfifth")
    line = record.to_json()
    assert "Größe" in line
    assert len(line.splitlines()) == 1
    assert from_json(line) == record


def test_integer_duration_becomes_float() -> None:
    record = make_record(duration=3)
    assert record.duration == 3.0 and isinstance(record.duration, float)
    assert from_json(record.to_json()) == record


def test_unknown_keys_and_newer_schema_are_read() -> None:
    data = json.loads(make_record().to_json())
    data.update(schema=2, outcome="signed", signer="mok", cost={"cpu": 1})
    record = from_json(json.dumps(data))
    assert record.schema == 2
    assert record.outcome == "signed"


def test_optional_fields_may_be_absent() -> None:
    data = json.loads(make_record().to_json())
    for name in ("duration", "make_log", "tail", "message", "exit_code"):
        del data[name]
    record = from_json(json.dumps(data))
    assert record == replace(make_record(), duration=0.0)


def _with(**changes: object) -> str:
    data = json.loads(make_record().to_json())
    for key, value in changes.items():
        if value is _DELETE:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


_DELETE = object()


@pytest.mark.parametrize(
    "line",
    [
        "",
        "not json",
        '{"time": "2026-11-22T01:02:03Z"',
        "[1, 2, 3]",
        '"a string"',
        "null",
        "[" * 100_000,
        _with(kernel=_DELETE),
        _with(schema=_DELETE),
        _with(kernel=61),
        _with(module=None),
        _with(time="2026-11-22 01:02:03"),
        _with(time="2026-13-22T01:02:03Z"),
        _with(time="yesterday"),
        _with(duration="3.2"),
        _with(duration=-1),
        _with(duration=True),
        _with(exit_code="10"),
        _with(exit_code=True),
        _with(exit_code=1.5),
        _with(tail="one line"),
        _with(tail=["ok", 3]),
        _with(make_log=7),
        _with(schema=0),
        _with(schema="1"),
        _with(message="\ud800"),
        '{"duration": NaN}',
        _with(duration=_DELETE)[:-1] + ', "duration": Infinity}',
    ],
)
def test_malformed_lines_raise_value_error(line: str) -> None:
    with pytest.raises(ValueError):
        from_json(line)


def test_construction_validates() -> None:
    with pytest.raises(ValueError, match="duration"):
        make_record(duration=float("nan"))
    with pytest.raises(ValueError, match="time"):
        make_record(time="2026-11-22")
    with pytest.raises(ValueError, match="kernel"):
        make_record(kernel=None)


def test_timestamps() -> None:
    assert format_timestamp(datetime(2026, 11, 22, 1, 2, 3, 999, timezone.utc)) == (
        "2026-11-22T01:02:03Z"
    )
    cet = timezone(timedelta(hours=1))
    assert format_timestamp(datetime(2026, 11, 22, 2, 2, 3, tzinfo=cet)) == "2026-11-22T01:02:03Z"
    with pytest.raises(ValueError):
        format_timestamp(datetime(2026, 11, 22))
    assert parse_timestamp("2026-11-22T02:02:03.5+01:00") == datetime(
        2026, 11, 22, 1, 2, 3, 500000, timezone.utc
    )
    assert make_record(time="2026-11-22T01:02:03Z").when == datetime(
        2026, 11, 22, 1, 2, 3, tzinfo=timezone.utc
    )


# Writing and reading


def test_append_creates_directory_and_files_world_readable(tmp_path: Path) -> None:
    log = tmp_path / "var" / "log" / "dkmshooks" / "rebuild.log"
    old_umask = os.umask(0o077)
    try:
        append(log, [make_record()])
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(log.stat().st_mode) == 0o644
    assert stat.S_IMODE(lock_path(log).stat().st_mode) == 0o644
    assert lock_path(log).name == "rebuild.log.lock"
    assert log.read_text(encoding="utf-8") == make_record().to_json() + "\n"


def test_append_writes_batches_in_order_and_read_returns_them(tmp_path: Path) -> None:
    log = tmp_path / "rebuild.log"
    first = [make_record(module=f"m{i}") for i in range(3)]
    second = [FAILED, make_record(outcome="deferred-no-headers", duration=0.0)]
    append(log, first)
    append(log, [])
    append(log, second)
    assert list(read(log)) == first + second
    assert [r for _, r in read_raw(log)] == first + second
    assert [line for line, _ in read_raw(log)] == log.read_text(encoding="utf-8").splitlines()


def test_append_rejects_what_this_writer_must_not_write(tmp_path: Path) -> None:
    log = tmp_path / "rebuild.log"
    append(log, [make_record()])
    for bad in (
        make_record(outcome="instaled"),
        make_record(source="yum"),
        make_record(schema=2),
    ):
        with pytest.raises(ValueError):
            append(log, [make_record(module="good"), bad])
    assert list(read(log)) == [make_record()]
    with pytest.raises(ValueError):
        append(log, [make_record()], max_bytes=0)


def test_rotation_keeps_newest_files_and_reads_oldest_first(tmp_path: Path) -> None:
    log = tmp_path / "rebuild.log"
    line_size = len(make_record(module="m00").to_json()) + 1
    written = [make_record(module=f"m{i:02d}") for i in range(20)]
    for record in written:
        append(log, [record], max_bytes=2 * line_size, keep=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "rebuild.log",
        "rebuild.log.1",
        "rebuild.log.2",
        "rebuild.log.3",
        "rebuild.log.lock",
    ]
    # Two records per file, four files: the newest eight survive, in order.
    assert list(read(log)) == written[-8:]
    assert list(read(log, include_rotated=False)) == written[-2:]
    assert list(read(tmp_path / "rebuild.log.3", include_rotated=False)) == written[-8:-6]


def test_rotation_with_keep_zero_drops_old_lines(tmp_path: Path) -> None:
    log = tmp_path / "rebuild.log"
    written = [make_record(module=f"m{i}") for i in range(5)]
    for record in written:
        append(log, [record], max_bytes=10, keep=0)
    assert list(read(log)) == written[-1:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rebuild.log", "rebuild.log.lock"]


def test_missing_log_reads_as_empty(tmp_path: Path) -> None:
    records, stats = read_with_stats(tmp_path / "nowhere" / "rebuild.log")
    assert records == []
    assert stats == ReadStats()


def test_rotated_files_are_read_when_current_is_missing(tmp_path: Path) -> None:
    log = tmp_path / "rebuild.log"
    append(log, [make_record(module="a")], max_bytes=10)
    append(log, [make_record(module="b")], max_bytes=10)
    log.unlink()
    lock_path(log).unlink()  # a copied log has no lock file: read without it
    assert [r.module for r in read(log)] == ["a"]


def test_truncated_last_line_is_skipped_counted_and_then_closed(tmp_path: Path) -> None:
    log = tmp_path / "rebuild.log"
    written = [make_record(module=f"m{i}") for i in range(3)]
    append(log, written)
    data = log.read_bytes()
    log.write_bytes(data[:-20])  # a crash in the middle of the last line
    records, stats = read_with_stats(log)
    assert records == written[:2]
    assert stats.skipped == 1
    assert stats.records == 2
    assert stats.files == [log]
    assert "truncated" in stats.problems[0] and f"{log}:3" in stats.problems[0]
    # The next writer ends the torn line first, so its own record is not glued onto it.
    append(log, [FAILED])
    records, stats = read_with_stats(log)
    assert records == [*written[:2], FAILED]
    assert stats.skipped == 1


def test_complete_last_line_without_newline_is_read(tmp_path: Path) -> None:
    log = tmp_path / "rebuild.log"
    log.write_text(make_record().to_json(), encoding="utf-8")
    records, stats = read_with_stats(log)
    assert records == [make_record()]
    assert stats.skipped == 0


def test_garbage_lines_are_skipped_and_reported(tmp_path: Path) -> None:
    log = tmp_path / "rebuild.log"
    good = make_record().to_json().encode()
    log.write_bytes(b"\n".join([good, b"\xff\xfe garbage", b"", b"   ", b"{}", b"[1]", good, b""]))
    records, stats = read_with_stats(log)
    assert records == [make_record(), make_record()]
    assert stats.skipped == 3
    assert [p.split(":")[1] for p in stats.problems] == ["2", "5", "6"]


def test_oversized_line_is_skipped(tmp_path: Path) -> None:
    log = tmp_path / "rebuild.log"
    good = make_record().to_json().encode()
    log.write_bytes(good + b"\n" + b"x" * (3 << 20) + b"\n" + good + b"\n" + b"y" * (2 << 20))
    records, stats = read_with_stats(log)
    assert records == [make_record(), make_record()]
    assert stats.skipped == 2


def test_reader_sees_a_snapshot(tmp_path: Path) -> None:
    log = tmp_path / "rebuild.log"
    append(log, [make_record(module="a"), make_record(module="b")])
    reader = read(log)
    assert next(reader).module == "a"
    append(log, [make_record(module="c")], max_bytes=10)  # appended and rotated meanwhile
    assert [r.module for r in reader] == ["b"]
    assert [r.module for r in read(log)] == ["a", "b", "c"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_raises_log_write_error_naming_the_log(tmp_path: Path) -> None:
    log = tmp_path / "rebuild.log"
    log.symlink_to("/dev/full")
    with pytest.raises(LogWriteError) as caught:
        append(log, [make_record()])
    assert isinstance(caught.value, OSError)
    assert caught.value.errno == errno.ENOSPC
    assert str(log) in str(caught.value)
    assert "disk is full" in str(caught.value)


def test_unwritable_location_raises_log_write_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(LogWriteError, match="rebuild log"):
        append(blocker / "rebuild.log", [make_record()])


# Concurrent writers


def _write_records(
    start: Barrier, path: str, writer: int, count: int, max_bytes: int, keep: int
) -> None:
    start.wait(timeout=60)
    seq = 0
    while seq < count:
        batch = [
            make_record(
                transaction=f"writer-{writer}",
                version=str(n),
                message="x" * ((writer * 37 + n * 11) % 200),
            )
            for n in range(seq, min(count, seq + 1 + seq % 3))
        ]
        append(Path(path), batch, max_bytes=max_bytes, keep=keep)
        seq += len(batch)


def _check_snapshot(records: list[LogRecord], stats: ReadStats, writers: int) -> int:
    """Each writer's records form a gap-free prefix in order: nothing lost, nothing doubled."""
    assert stats.skipped == 0, stats.problems
    by_writer: dict[str, list[int]] = {f"writer-{w}": [] for w in range(writers)}
    for record in records:
        by_writer[record.transaction].append(int(record.version))
    for seqs in by_writer.values():
        assert seqs == list(range(len(seqs)))
    return len(records)


def test_concurrent_writers_rotating_never_lose_or_interleave_lines(tmp_path: Path) -> None:
    log = tmp_path / "rebuild.log"
    writers, count, max_bytes = 8, 200, 4096
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(writers + 1)
    processes = [
        context.Process(target=_write_records, args=(start, str(log), w, count, max_bytes, 100_000))
        for w in range(writers)
    ]
    for process in processes:
        process.start()
    snapshots = []
    try:
        start.wait(timeout=60)
        # Read while they write and rotate: every snapshot must be consistent.
        while any(p.is_alive() for p in processes):
            snapshots.append(_check_snapshot(*read_with_stats(log), writers))
    finally:
        for process in processes:
            process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * writers
    records, stats = read_with_stats(log)
    assert _check_snapshot(records, stats, writers) == writers * count
    assert snapshots == sorted(snapshots)
    assert len(stats.files) > 20  # it did rotate, many times
    for path in stats.files:
        assert path.stat().st_size <= max_bytes
        for line in path.read_text(encoding="utf-8").splitlines():
            from_json(line)


# Filters, --since, table


def _sample() -> list[LogRecord]:
    return [
        make_record(time="2026-11-20T08:00:00Z", transaction="aaaa1111", source="dnf"),
        make_record(time="2026-11-22T09:00:00Z", transaction="bbbb2222", kernel="6.2.0-1"),
        replace(FAILED, time="2026-11-22T10:00:00Z", transaction="bbbb2222"),
        make_record(time="2026-11-22T11:00:00Z", module="zfs", version="2.2.2", source="boot"),
    ]


def test_filters() -> None:
    sample = _sample()

    def pick(**criteria: object) -> list[int]:
        return [sample.index(r) for r in filter_records(sample, **criteria)]  # type: ignore[arg-type]

    assert pick() == [0, 1, 2, 3]
    assert pick(kernel="6.2.0-1") == [1]
    assert pick(kernel="6.2") == []
    assert pick(module="zfs") == [3]
    assert pick(module="v4l2loopback/0.12.7") == [0, 1]
    assert pick(module="v4l2loopback/0.12") == []
    assert pick(failed=True) == [2]
    assert pick(transaction="bbbb") == [1, 2]
    assert pick(source="dnf") == [0]
    assert pick(since=datetime(2026, 11, 22, 9, 0, tzinfo=timezone.utc)) == [1, 2, 3]
    assert pick(since=datetime(2026, 11, 22, 9, 0)) == [1, 2, 3]  # naive: UTC
    assert pick(since=datetime(2026, 11, 22, 10, 0, 1, tzinfo=timezone.utc), source="boot") == [3]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", NOW - timedelta(hours=2)),
        ("30m", NOW - timedelta(minutes=30)),
        ("3d", NOW - timedelta(days=3)),
        ("1w", NOW - timedelta(weeks=1)),
        ("45s", NOW - timedelta(seconds=45)),
        ("2h ago", NOW - timedelta(hours=2)),
        (" 2H ", NOW - timedelta(hours=2)),
        ("2026-11-22", datetime(2026, 11, 22, tzinfo=timezone.utc)),
        ("2026-11-22T10:00", datetime(2026, 11, 22, 10, tzinfo=timezone.utc)),
        ("2026-11-22T10:00Z", datetime(2026, 11, 22, 10, tzinfo=timezone.utc)),
        ("2026-11-22 10:00:05", datetime(2026, 11, 22, 10, 0, 5, tzinfo=timezone.utc)),
        ("2026-11-22T10:00:05.25Z", datetime(2026, 11, 22, 10, 0, 5, 250000, timezone.utc)),
        ("2026-11-22T12:00+02:00", datetime(2026, 11, 22, 10, tzinfo=timezone.utc)),
        ("2026-11-22T12:00+0200", datetime(2026, 11, 22, 10, tzinfo=timezone.utc)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


def test_parse_since_uses_the_timezone_of_now() -> None:
    cet = timezone(timedelta(hours=1))
    since = parse_since("2026-11-22T10:00", NOW.astimezone(cet))
    assert since == datetime(2026, 11, 22, 9, tzinfo=timezone.utc)
    assert parse_since("1h", datetime(2026, 11, 22, 12)).tzinfo is not None


@pytest.mark.parametrize(
    "text",
    ["", "yesterday", "2h30m", "-2h", "2 hours", "2026-11-32", "2026-11-22T25:00", "11/22/2026",
     "2026-11-22Z", "2026-11-22T10:00+25:00", "٢h", "99999999999999w"],
)  # fmt: skip
def test_parse_since_rejects_clearly(text: str) -> None:
    with pytest.raises(ValueError, match="time"):
        parse_since(text, NOW)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0.0s"), (3.24, "3.2s"), (59.9, "59.9s"), (59.96, "1m00s"), (65, "1m05s"),
     (3599.4, "59m59s"), (3725, "1h02m")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_table_without_color() -> None:
    deferred = make_record(
        time="2026-11-22T10:30:00Z",
        outcome="deferred-no-headers",
        message="install linux-headers-6.2.0-1",
    )
    table = render_table([*_sample(), deferred][::-1], color=False)
    assert "\x1b" not in table
    lines = table.splitlines()
    assert lines[0].split() == [
        "TIME",
        "(UTC)",
        "SOURCE",
        "TXN",
        "KERNEL",
        "MODULE/VERSION",
        "ACTION",
        "OUTCOME",
        "DURATION",
    ]
    assert lines[1].split() == [
        "2026-11-20",
        "08:00:00",
        "dnf",
        "aaaa1111",
        "6.1.0-18-amd64",
        "v4l2loopback/0.12.7",
        "install",
        "installed",
        "3.2s",
    ]
    failed_row = next(i for i, line in enumerate(lines) if " failed " in line)
    assert "bbbb2222" in lines[failed_row] and "1m05s" in lines[failed_row]
    assert lines[failed_row + 1] == (
        "    make.log: /var/lib/dkms/nvidia/550.54.14/build/make.log (exit status 10)"
    )
    assert lines[failed_row + 2].startswith("    Bad return status")
    assert lines[failed_row + 3] == "        nvidia.c:12:5: error: implicit declaration"
    assert lines[failed_row + 4] == "        make: *** [all] Error 2"
    assert lines[failed_row + 5].split()[1] == "10:30:00"  # the deferred row
    assert lines[failed_row + 6] == "    install linux-headers-6.2.0-1"
    assert "zfs/2.2.2" in lines[-1]  # newest last
    # Fixed width: every row's columns start where the header's do.
    rows = [line for line in lines[1:] if not line.startswith(" ")]
    assert len(rows) == 5
    for column in ("SOURCE", "OUTCOME"):
        starts = {row[lines[0].index(column) - 2 : lines[0].index(column)] for row in rows}
        assert starts == {"  "}
    assert {len(row) for row in rows} == {len(lines[0])}  # DURATION right-aligned


def test_table_with_color_and_hostile_text() -> None:
    sample = _sample()
    hostile = replace(FAILED, tail=("\x1b[31merror:\x1b[0m bad", "\u202eevil"), module="m\x07")
    table = render_table([*sample, hostile], color=True)
    assert "\x1b[1;31mfailed\x1b[0m" in table
    assert "\x1b[32minstalled\x1b[0m" in table
    assert "\\x1b[31merror:\\x1b[0m bad" in table
    assert "\\u202eevil" in table and "m\\x07/" in table
    plain = render_table([*sample, hostile], color=False)
    assert "\x1b" not in plain and "\x07" not in plain and "\u202e" not in plain
    deferred = render_table([make_record(outcome="deferred-no-image")], color=True)
    assert "\x1b[33mdeferred-no-image\x1b[0m" in deferred


def test_empty_table() -> None:
    assert render_table([], color=True, path=Path("/var/log/x.log")) == (
        "no matching records in /var/log/x.log\n"
    )


def test_read_tail(tmp_path: Path) -> None:
    make_log = tmp_path / "make.log"
    make_log.write_text("".join(f"line {i}\n" for i in range(100)) + "x" * 900 + "\n")
    tail = read_tail(make_log)
    assert len(tail) == 20
    assert tail[-2] == "line 99"
    assert tail[-1] == "x" * 499 + "…"
    assert read_tail(tmp_path / "missing") == ()
    big = tmp_path / "big.log"
    big.write_bytes(b"y" * 200_000 + b"\nlast\n")
    assert read_tail(big, 3) == ("last",)


# Properties

_text = st.text(max_size=40)
_records = st.builds(
    LogRecord,
    time=st.datetimes(timezones=st.just(timezone.utc)).map(format_timestamp),
    source=st.sampled_from(sorted(SOURCES)),
    transaction=_text,
    module=_text,
    version=_text,
    kernel=_text,
    arch=_text,
    action=_text,
    outcome=st.sampled_from(sorted(OUTCOMES)),
    duration=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    make_log=st.none() | _text,
    tail=st.none() | st.lists(_text, max_size=5).map(tuple),
    message=st.text(max_size=200),
    exit_code=st.none() | st.integers(),
    schema=st.just(SCHEMA_VERSION),
)


@given(_records)
def test_property_json_round_trip(record: LogRecord) -> None:
    line = record.to_json()
    assert len(line.splitlines()) == 1
    assert from_json(line) == record


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.binary(max_size=300))
def test_property_read_never_raises_on_garbage(current: bytes, rotated: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory) / "rebuild.log"
        log.write_bytes(current)
        Path(f"{log}.1").write_bytes(rotated)
        records, stats = read_with_stats(log)
        assert stats.records == len(records)
        for record in records:
            assert from_json(record.to_json()) == record


@settings(max_examples=60, deadline=None)
@given(st.lists(_records | st.binary(max_size=80).filter(lambda b: b"\n" not in b), max_size=12))
def test_property_garbage_lines_cost_only_themselves(items: list[LogRecord | bytes]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory) / "rebuild.log"
        log.write_bytes(
            b"".join(
                (i.to_json().encode() if isinstance(i, LogRecord) else i) + b"\n" for i in items
            )
        )
        records, stats = read_with_stats(log)
        assert records == [i for i in items if isinstance(i, LogRecord)]
        assert stats.skipped == sum(1 for i in items if isinstance(i, bytes) and i.strip())
