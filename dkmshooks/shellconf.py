"""Evaluate bash configuration files (dkms.conf, framework.conf) the way dkms's safe_source does:
each file is sourced in a subshell, only whitelisted variables come back (every index, CR
stripped), and they are re-read by the parent shell, so later files replace only the indices they
set. All of it runs in one separate bash process: nothing a file defines reaches our process."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import run

# $1: whitelisted names; $2: names whose presence is reported after each file (deprecations);
# $3..: files. Output records, NUL-separated: "D" file name value | "V" name index value.
_EVAL_SCRIPT = r"""
__vars=$1; __deprecated=$2; shift 2
CR=$'\r'
for __f in "$@"; do
    [[ -e $__f ]] || continue
    # dkms goes through a mktemp file here; a pipe gives the same subshell without needing a
    # writable $TMPDIR (a full /tmp would silently empty every variable: issue #9)
    . <(
      . "$__f" >/dev/null
      for _export_env in $__vars; do
          for _i in $(eval echo \${!"${_export_env}"[@]}); do
              eval echo '$_export_env[$_i]=\"${'"${_export_env}"'[$_i]%$CR}\"'
          done
      done
      for directive in $(set | grep ^DKMS_DIRECTIVE | cut -d = -f 2-3); do
          directive_name=${directive%%=*}
          directive_value=${directive#*=}
          echo "$directive_name=\"$directive_value\""
      done
    )
    for __d in $__deprecated; do
        eval "__n=\${#${__d}[@]}"
        if (( __n )); then
            eval "__dv=\${${__d}}"
            printf 'D\0%s\0%s\0%s\0' "$__f" "$__d" "$__dv"
        fi
    done
done
for __v in $__vars; do
    eval "__idx=(\"\${!${__v}[@]}\")"
    for __i in "${__idx[@]}"; do
        eval "__val=\${${__v}[__i]}"
        printf 'V\0%s\0%s\0%s\0' "$__v" "$__i" "$__val"
    done
done
"""


@dataclass(frozen=True)
class ShellValues:
    """Whitelisted variables as sparse arrays: name -> {index: value}."""

    arrays: Mapping[str, Mapping[int, str]]
    #: (file, name, scalar value) for every deprecated name set after each file was sourced
    deprecations: Sequence[tuple[str, str, str]] = ()

    def get(self, name: str, index: int = 0) -> str:
        return self.arrays.get(name, {}).get(index, "")

    def array(self, name: str) -> Mapping[int, str]:
        return self.arrays.get(name, {})

    def has(self, name: str) -> bool:
        return bool(self.arrays.get(name))


class ShellEvalError(Exception):
    pass


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def evaluate(
    files: Sequence[Path],
    variables: Sequence[str],
    *,
    scope: Mapping[str, str],
    deprecated: Sequence[str] = (),
    base_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ShellValues:
    """Source `files` in order (missing ones skipped) with `scope` visible as variables."""
    env = dict(base_env if base_env is not None else os.environ)
    literal = evaluate_literal(files, variables, scope=scope, deprecated=deprecated, env=env)
    if literal is not None:
        return literal
    for name in variables:
        env.pop(name, None)
    env.update(scope)
    _, out, _ = run.run_bash_bytes(
        _EVAL_SCRIPT,
        " ".join(variables),
        " ".join(deprecated),
        *[os.fspath(f) for f in files],
        env=env,
        cwd=cwd,
    )
    return parse_records(out)


def parse_records(out: bytes) -> ShellValues:
    """_EVAL_SCRIPT's NUL-separated records → ShellValues; reading stops at the first record of
    an unknown kind (tests/reliability/test_properties.py holds it to that)."""
    fields = out.split(b"\0")
    arrays: dict[str, dict[int, str]] = {}
    deps: list[tuple[str, str, str]] = []
    i = 0
    while i + 3 < len(fields):
        kind = fields[i]
        if kind == b"V":
            name, idx, value = _decode(fields[i + 1]), fields[i + 2], _decode(fields[i + 3])
            try:
                arrays.setdefault(name, {})[int(idx)] = value
            except ValueError:
                pass
        elif kind == b"D":
            deps.append((_decode(fields[i + 1]), _decode(fields[i + 2]), _decode(fields[i + 3])))
        else:
            break
        i += 4
    return ShellValues(arrays=arrays, deprecations=tuple(deps))


# -- files that need no bash ---------------------------------------------------------------------
# Most framework.conf(.d) files (and some dkms.conf files) are comments and plain assignments of
# inert words. For those, what the bash above computes is known without running it: every value
# passes its two expansions and the `echo` word splitting unchanged, except that each run of
# blanks inside a quoted value becomes one space. Anything else (a `$`, a quote inside, a command,
# an unknown upper-case name, a CR, an unreadable file) goes to bash. docs/decisions.md has the
# reasoning; tests/unit/test_shellconf.py holds both paths to the same answers.

_INERT = r"[A-Za-z0-9_./:,+@%=-]"
_LITERAL_LINE = re.compile(
    r"[ \t]*(?:"
    r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>0|[1-9][0-9]{0,8})\])?="
    rf"(?:(?P<bare>{_INERT}*)|\"(?P<dq>(?:{_INERT}|[ \t])*)\"|'(?P<sq>(?:{_INERT}|[ \t])*)')"
    r"(?:[ \t]+#.*|[ \t]*)"
    r"|#.*|)"
)
_INERT_VALUE = re.compile(rf"(?:{_INERT}|[ \t])*")
_LOWER_NAME = re.compile(r"[a-z][a-z0-9_]*")
_BLANKS = re.compile(r"[ \t]+")


def _inert_assignments(path: str, variables: frozenset[str]) -> list[tuple[str, int, str]] | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    if "\r" in text or "\0" in text:
        return None
    out: list[tuple[str, int, str]] = []
    for line in text.split("\n"):
        match = _LITERAL_LINE.fullmatch(line)
        if match is None:
            return None
        name = match.group("name")
        if name is None:
            continue
        if name not in variables:
            if _LOWER_NAME.fullmatch(name) is None:
                return None  # might be one of bash's own (IFS, PATH, ...): let bash decide
            continue  # sourced in a subshell and not whitelisted: it never comes back
        value = match.group("bare")
        if value is None:
            value = match.group("dq") if match.group("dq") is not None else match.group("sq")
            value = _BLANKS.sub(" ", value)  # the unquoted `echo` of dkms's safe_source
        out.append((name, int(match.group("index") or 0), value))
    return out


def evaluate_literal(
    files: Sequence[Path],
    variables: Sequence[str],
    *,
    scope: Mapping[str, str],
    deprecated: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> ShellValues | None:
    """What `evaluate` returns, computed without bash, or None when bash is needed."""
    whitelist = frozenset(variables)
    if env is not None and any(k.startswith("DKMS_DIRECTIVE") for k in env):
        return None
    if any(name not in whitelist for name in deprecated):
        return None
    arrays: dict[str, dict[int, str]] = {
        name: {0: scope[name]} for name in variables if name in scope
    }
    deps: list[tuple[str, str, str]] = []
    seen_file = False
    for f in files:
        path = os.fspath(f)
        if not os.path.exists(path):
            continue
        if not seen_file:
            seen_file = True
            # values already in scope are echoed and sourced again with the first file
            for idx in arrays.values():
                if not _INERT_VALUE.fullmatch(idx[0]) or _BLANKS.sub(" ", idx[0]) != idx[0]:
                    return None
        assignments = _inert_assignments(path, whitelist)
        if assignments is None:
            return None
        for name, index, value in assignments:
            arrays.setdefault(name, {})[index] = value
        for name in deprecated:
            if arrays.get(name):
                deps.append((path, name, arrays[name].get(0, "")))
    return ShellValues(arrays=arrays, deprecations=tuple(deps))
