"""The only door to child processes: argv lists in, typed errors out, optional make.log blocks."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

from .errors import CommandFailed


def _debug(fmt: str, *args: object) -> None:
    """`+ argv` at debug level. logging is imported on the first command, not at start-up: a
    no-op hook runs no command, and the import is a tenth of its cost."""
    import logging

    logging.getLogger("dkmshooks.run").debug(fmt, *args)


PathLike = "str | os.PathLike[str]"


def _flush() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    capture: bool = False,
    merge_stderr: bool = False,
    stdin_text: str | None = None,
    quiet: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run argv. With capture, stdout (and stderr) come back as text; otherwise they are inherited
    (or discarded with quiet). Raises CommandFailed on a non-zero status when check is set."""
    args = [os.fspath(a) for a in argv]
    _debug("+ %s", " ".join(args))
    _flush()
    stdout: int | None = None
    stderr: int | None = None
    import subprocess  # here: a hook with nothing to do starts no process

    if capture:
        stdout = subprocess.PIPE
        stderr = subprocess.STDOUT if merge_stderr else subprocess.PIPE
    elif quiet:
        stdout = stderr = subprocess.DEVNULL
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=stdout,
            stderr=stderr,
            input=stdin_text,
            text=True,
            errors="surrogateescape",
            check=False,
        )
    except FileNotFoundError as exc:
        if check:
            raise CommandFailed(args, 127, str(exc)) from exc
        return subprocess.CompletedProcess(args, 127, "", str(exc))
    if check and proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, (proc.stdout or "") + (proc.stderr or ""))
    return proc


def run_bash(
    script: str,
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a bash script text explicitly with bash (dkms.conf and its commands are bash)."""
    return run(
        ["bash", "-c", script, "bash", *args], cwd=cwd, env=env, check=False, capture=capture
    )


def run_bash_bytes(
    script: str,
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int, bytes, bytes]:
    """Like run_bash, but stdout comes back as bytes (for NUL-separated output); stderr is
    inherited, as dkms lets a sourced file's stderr through."""
    argv = ["bash", "-c", script, "bash", *args]
    _debug("+ %s", " ".join(argv[:2]))
    _flush()
    import subprocess  # here: a hook with nothing to do starts no process

    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        check=False,
    )
    return proc.returncode, proc.stdout, b""


def run_logged(
    command: str,
    logfile: Path,
    *,
    description: str,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    tick: Callable[[], None] | None = None,
    tick_seconds: float = 3.0,
    pass_fds: Sequence[int] = (),
    shown: str | None = None,
) -> int:
    """Run a bash command string the way dkms's invoke_command does with a log file: a block in
    the log with the description, `# command:`, the output, exit code and elapsed time.
    `tick` is called every `tick_seconds` while the command runs (dkms's progress dots).
    `pass_fds`: descriptors the command inherits (the engine's make jobserver); `shown`: the
    command the log names, when it differs in form only (see Builder.do_build)."""
    import subprocess  # here: a hook with nothing to do starts no process

    start = time.monotonic()
    with open(logfile, "a", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(f"\n{description}\n# command: {shown or command}\n")
        fh.flush()
        _flush()
        _debug("+ %s", command)
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            pass_fds=tuple(pass_fds),
        )
        while True:
            try:
                rc = proc.wait(timeout=tick_seconds)
                break
            except subprocess.TimeoutExpired:
                if tick is not None:
                    tick()
    elapsed = int(time.monotonic() - start)
    hours, rest = divmod(elapsed, 3600)
    minutes, seconds = divmod(rest, 60)
    with open(logfile, "a", encoding="utf-8") as fh:
        fh.write(f"\n# exit code: {rc}\n")
        fh.write(f"# elapsed time: {hours:02d}:{minutes:02d}:{seconds:02d}\n")
        fh.write("-" * 64 + "\n")
    return rc


def run_quiet_status(
    command: str,
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    tick: Callable[[], None] | None = None,
) -> int:
    """A bash command whose output dkms discards (invoke_command in background mode, no log)."""
    _flush()
    import subprocess  # here: a hook with nothing to do starts no process

    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        try:
            return proc.wait(timeout=3.0)
        except subprocess.TimeoutExpired:
            if tick is not None:
                tick()
