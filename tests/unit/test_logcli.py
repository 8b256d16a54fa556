from __future__ import annotations

import json
import os
import pty
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dkmshooks.logcli import default_log_path, main
from dkmshooks.rebuildlog import LogRecord, append, format_timestamp, from_json


def _record(age: timedelta, **overrides: object) -> LogRecord:
    fields: dict[str, object] = {
        "time": format_timestamp(datetime.now(timezone.utc) - age),
        "source": "apt",
        "transaction": "5f1c2e7a-0000-4000-8000-000000000001",
        "module": "zfs",
        "version": "2.2.2",
        "kernel": "6.1.0-18-amd64",
        "arch": "x86_64",
        "action": "install",
        "outcome": "installed",
        "duration": 42.0,
    }
    fields.update(overrides)
    return LogRecord(**fields)  # type: ignore[arg-type]


OLD_OK = _record(timedelta(days=3), source="dnf", transaction="aaaa0000")
NEW_FAIL = _record(
    timedelta(hours=2),
    kernel="6.6.13-amd64",
    module="nvidia",
    version="550.54.14",
    action="build",
    outcome="failed",
    make_log="/var/lib/dkms/nvidia/550.54.14/build/make.log",
    tail=("error: implicit declaration of function",),
    exit_code=10,
)
NEW_OK = _record(timedelta(minutes=5), kernel="6.6.13-amd64")
RECORDS = [OLD_OK, NEW_FAIL, NEW_OK]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "rebuild.log"
    append(path, RECORDS)
    return path


def _json_out(out: str) -> list[LogRecord]:
    return [from_json(line) for line in out.splitlines()]


def test_default_log_path() -> None:
    assert default_log_path(Path("/")) == Path("/var/log/dkmshooks/rebuild.log")
    assert default_log_path(Path("/mnt")) == Path("/mnt/var/log/dkmshooks/rebuild.log")


def test_json_prints_stored_lines(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log", str(log), "--json"], {}) == 0
    out, err = capsys.readouterr()
    assert out == log.read_text(encoding="utf-8")
    assert err == ""


def test_json_keeps_fields_of_newer_writers(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    newer = json.loads(NEW_OK.to_json())
    newer.update(schema=2, signed_by="mok")
    line = json.dumps(newer, sort_keys=True)
    with log.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
    assert main(["--log", str(log), "--json", "--since", "1h"], {}) == 0
    assert capsys.readouterr().out.splitlines() == [NEW_OK.to_json(), line]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--failed"], [NEW_FAIL]),
        (["--kernel", "6.6.13-amd64"], [NEW_FAIL, NEW_OK]),
        (["--kernel", "6.6.13-amd64", "--failed"], [NEW_FAIL]),
        (["--kernel", "5.10.0-28-amd64"], []),
        (["--module", "zfs"], [OLD_OK, NEW_OK]),
        (["--module", "nvidia/550.54.14"], [NEW_FAIL]),
        (["--source", "dnf"], [OLD_OK]),
        (["--transaction", "5f1c2e7a"], [NEW_FAIL, NEW_OK]),
        (["--since", "1d"], [NEW_FAIL, NEW_OK]),
        (["--since", "1h"], [NEW_OK]),
        (["--since", "2000-01-01"], RECORDS),
    ],
)
def test_json_filters(
    log: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: list[LogRecord]
) -> None:
    assert main(["--log", str(log), "--json", *args], {}) == 0
    assert _json_out(capsys.readouterr().out) == expected


def test_table_is_plain_when_not_a_tty(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log", str(log)], {}) == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines[0].startswith("TIME (UTC)")
    assert "nvidia/550.54.14" in lines[2] and "failed" in lines[2]
    assert lines[3] == (
        "    make.log: /var/lib/dkms/nvidia/550.54.14/build/make.log (exit status 10)"
    )
    assert lines[4] == "        error: implicit declaration of function"
    assert "zfs/2.2.2" in lines[-1]  # newest last
    assert err == ""


def test_default_path_is_under_dkmshooks_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    append(default_log_path(tmp_path), [NEW_FAIL])
    assert main(["--json"], {"DKMSHOOKS_ROOT": str(tmp_path)}) == 0
    assert _json_out(capsys.readouterr().out) == [NEW_FAIL]


def test_missing_log_is_not_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--failed"], {"DKMSHOOKS_ROOT": str(tmp_path)}) == 0
    expected = tmp_path / "var/log/dkmshooks/rebuild.log"
    assert capsys.readouterr() == (f"no matching records in {expected}\n", "")
    assert main(["--json", "--log", str(tmp_path / "none")], {}) == 0
    assert capsys.readouterr() == ("", "")


def test_nothing_matching(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log", str(log), "--module", "v4l2loopback"], {}) == 0
    assert capsys.readouterr().out == f"no matching records in {log}\n"


def test_unreadable_log_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log", str(tmp_path)], {}) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"dkmshooks: cannot read the rebuild log {tmp_path}: ")


def test_skipped_lines_are_reported_on_stderr(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with log.open("a", encoding="utf-8") as f:
        f.write('{"time": "2026-')  # torn by a crash
    assert main(["--log", str(log), "--json"], {}) == 0
    out, err = capsys.readouterr()
    assert _json_out(out) == RECORDS
    assert err.startswith("dkmshooks: skipped 1 unreadable line of the log, first: ")
    assert f"{log}:4: truncated last line" in err


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--since", "yesterday"],
        ["--since"],
        ["--source", "yum"],
        ["--fail"],  # no abbreviations: a later option must not change what this means
        ["extra"],
    ],
)
def test_bad_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args, {}) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("dkmshooks: log: ")
    assert err.count("\n") == 1


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], {}) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dkmshooks log ")
    for option in ("--kernel", "--module", "--failed", "--since", "--transaction", "--json"):
        assert option in out


@pytest.mark.parametrize(
    ("args", "environ", "colored"),
    [
        ([], {}, True),
        ([], {"NO_COLOR": "1"}, False),
        ([], {"NO_COLOR": ""}, False),
        ([], {"TERM": "dumb"}, False),
        (["--no-color"], {}, False),
    ],
)
def test_color_only_on_a_tty(
    log: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    environ: dict[str, str],
    colored: bool,
) -> None:
    master, slave = pty.openpty()
    with os.fdopen(slave, "w", encoding="utf-8") as tty:
        monkeypatch.setattr(sys, "stdout", tty)
        assert main(["--log", str(log), *args], environ) == 0
        monkeypatch.undo()
    out = os.read(master, 65536).decode()
    os.close(master)
    assert "nvidia/550.54.14" in out
    assert ("\x1b[1;31mfailed\x1b[0m" in out) is colored
    assert ("\x1b" in out) is colored
