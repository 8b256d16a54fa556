"""`dkmshooks log`: the unified rebuild log as a table for admins or as JSON lines for shippers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

from .console import note
from .layout import Layout
from .rebuildlog import (
    SOURCES,
    ReadStats,
    RecordFilter,
    parse_since,
    read,
    read_raw,
    render_table,
)

EPILOG = """\
WHEN is a date or a time in UTC, as the table shows it (2026-11-22, 2026-11-22T10:00,
"2026-11-22 10:00:05", 2026-11-22T10:00+02:00), or an age: 45s, 30m, 2h, 3d, 1w.
Exit status: 0 (also when nothing matches or there is no log yet), 1 the log cannot be read,
2 bad arguments."""


class _ArgumentError(Exception):
    pass


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so errors get our `dkmshooks:` voice."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


def _parser() -> _Parser:
    parser = _Parser(
        prog="dkmshooks log",
        description="Show what the rebuild engine built, installed, deferred or failed, oldest "
        "first, from the current log and its rotated files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--kernel", metavar="KVER", help="only this kernel release")
    parser.add_argument("--module", metavar="MODULE[/VERSION]", help="only this module")
    parser.add_argument("--failed", action="store_true", help="only failures")
    parser.add_argument("--since", metavar="WHEN", help="only records at or after WHEN")
    parser.add_argument(
        "--transaction", metavar="ID", help="only this transaction (a prefix is enough)"
    )
    parser.add_argument("--source", choices=sorted(SOURCES), help="only this trigger source")
    parser.add_argument(
        "--json", action="store_true", help="print the matching records as JSON lines"
    )
    parser.add_argument(
        "--log", metavar="PATH", help="read this log (default: /var/log/dkmshooks/rebuild.log)"
    )
    parser.add_argument("--no-color", action="store_true", help="never colour the table")
    return parser


def default_log_path(root: Path) -> Path:
    return Layout(root=root).rebuild_log


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    try:
        args = _parser().parse_args(list(argv))
    except _ArgumentError as exc:
        note(f"log: {exc} (see 'dkmshooks log --help')")
        return 2
    except _Exit as exc:
        return exc.status
    since = None
    if args.since is not None:
        try:
            since = parse_since(args.since, datetime.now(timezone.utc))
        except ValueError as exc:
            note(f"log: --since: {exc}")
            return 2
    root = Path(environ.get("DKMSHOOKS_ROOT") or "/")
    path = Path(args.log) if args.log else default_log_path(root)
    criteria = RecordFilter(
        kernel=args.kernel,
        module=args.module,
        failed=args.failed,
        since=since,
        transaction=args.transaction,
        source=args.source,
    )
    stats = ReadStats()
    try:
        if args.json:
            for line, record in read_raw(path, stats=stats):
                if criteria.matches(record):
                    sys.stdout.write(f"{line}\n")
            sys.stdout.flush()
        else:
            records = [record for record in read(path, stats=stats) if criteria.matches(record)]
            color = (
                sys.stdout.isatty()
                and not args.no_color
                and "NO_COLOR" not in environ
                and environ.get("TERM") != "dumb"
            )
            sys.stdout.write(render_table(records, color=color, path=path))
            sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        note(f"cannot read the rebuild log {path}: {exc.strerror or exc}")
        return 1
    if stats.skipped:
        lines = "line" if stats.skipped == 1 else "lines"
        note(f"skipped {stats.skipped} unreadable {lines} of the log, first: {stats.problems[0]}")
    return 0
