"""The code-quality gates (STYLE.md §9) as tests, so CI fails on them: mypy, ruff, shellcheck."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Every directory whose shell files are shipped or run by CI.
SHELL_DIRS = ("hooks", "packaging", "scripts", "demo", ".ci", "tests/data")
SHELL_SHEBANGS = (
    "#!/bin/sh",
    "#!/bin/bash",
    "#!/usr/bin/sh",
    "#!/usr/bin/bash",
    "#!/usr/bin/env sh",
    "#!/usr/bin/env bash",
)
SKIP_DIRS = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def find_tool(name: str) -> str:
    """The venv's tool next to the running interpreter, else one on PATH; fail if neither."""
    # Not resolved: sys.executable is .venv/bin/python, a symlink to /usr/bin/python3.
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; run scripts/setup-test-env.sh", pytrace=False)
    return found


def run_tool(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )


def assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    command, status = " ".join(proc.args), proc.returncode
    assert status == 0, f"`{command}` exited {status}:\n{proc.stdout}"


def has_shebang(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"#!"


def is_shell_file(path: Path) -> bool:
    if path.suffix == ".sh":
        return True
    try:
        with path.open("rb") as f:
            first = f.readline(200).decode("utf-8", "replace").strip()
    except OSError:
        return False
    # "#!/bin/sh -e" and "#!/bin/bash" count, "#!/bin/shiny" does not.
    return any(first == s or first.startswith(s + " ") for s in SHELL_SHEBANGS)


def find_shell_files() -> list[Path]:
    files: list[Path] = []
    for top in SHELL_DIRS:
        base = ROOT / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(ROOT)
            if SKIP_DIRS.intersection(rel.parts) or not path.is_file() or path.is_symlink():
                continue
            if is_shell_file(path):
                files.append(rel)
    return files


def test_mypy_strict() -> None:
    # Files and strictness come from [tool.mypy] in pyproject.toml.
    assert_clean(run_tool([find_tool("mypy")]))


def test_ruff_check() -> None:
    assert_clean(run_tool([find_tool("ruff"), "check", "--no-fix", "."]))


def test_ruff_format() -> None:
    assert_clean(run_tool([find_tool("ruff"), "format", "--check", "."]))


def test_shellcheck() -> None:
    shellcheck = find_tool("shellcheck")
    files = find_shell_files()
    # scripts/ always holds shell files: finding none means the search itself is broken.
    assert any(f.parts[0] == "scripts" for f in files), f"no shell files found under {ROOT}"
    assert_clean(run_tool([shellcheck, *map(str, files)]))


def test_scripts_are_executable() -> None:
    # CI, dkms (PRE_BUILD…) and the README exec these; a lost +x bit shows only at run time.
    not_executable = [
        str(f)
        for f in find_shell_files()
        if f.parts[0] in ("scripts", ".ci", "tests")
        if has_shebang(ROOT / f) and not (ROOT / f).stat().st_mode & 0o111
    ]
    assert not_executable == [], f"shell scripts without +x: {not_executable}"
