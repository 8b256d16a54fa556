"""Evaluate bash configuration files (dkms.conf, framework.conf) the way dkms's safe_source does:
each file is sourced in a subshell, only whitelisted variables come back (every index, CR
stripped), and they are re-read by the parent shell, so later files replace only the indices they
set. All of it runs in one separate bash process: nothing a file defines reaches our process."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
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


#: in `evaluate`'s `consulted`: bash computed the values, which may depend on anything in scope
ANY = "*"


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
    consulted: set[str] | None = None,
) -> ShellValues:
    """Source `files` in order (missing ones skipped) with `scope` visible as variables.
    `consulted` gets the names of `scope` the result was computed from, or ANY when bash
    computed it (a script may look at anything)."""
    env = dict(base_env if base_env is not None else os.environ)
    used: set[str] = set()
    literal = evaluate_literal(
        files, variables, scope=scope, deprecated=deprecated, env=env, consulted=used
    )
    if literal is not None:
        if consulted is not None:
            consulted |= used
        return literal
    if consulted is not None:
        consulted.add(ANY)
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
# Most framework.conf(.d) files and dkms.conf files are comments and plain assignments of inert
# words and simple references (`$name`, `${name}`). For those, what the bash above computes is
# known without running it: a reference to a name whose value is known is replaced verbatim (no
# splitting: it is an assignment or inside double quotes); if the result is inert it passes the
# `echo` and the second expansion unchanged, except that each run of blanks becomes one space.
# Anything else (another `$` form, a quote inside, a command, a name that may come from the
# caller's environment, an unknown upper-case name, a CR, an unreadable file) goes to bash.
# docs/decisions.md has the reasoning; tests/unit/test_shellconf.py holds both paths to the same
# answers.

_INERT = r"[A-Za-z0-9_./:,+@%=-]"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# the lookahead keeps `$name` from matching a shorter name, which would make a failing match
# backtrack exponentially in the number of references on a line
_REF = rf"\$(?:{_NAME}(?![A-Za-z0-9_])|\{{{_NAME}\}})"
_PART = rf"(?:{_INERT}|{_REF})"
_LITERAL_LINE = re.compile(
    r"[ \t]*(?:"
    rf"(?P<name>{_NAME})"
    r"(?:\[(?P<index>0|[1-9][0-9]{0,8})\])?="
    rf"(?:(?P<bare>{_PART}*)|\"(?P<dq>(?:{_PART}|[ \t])*)\"|'(?P<sq>(?:{_INERT}|[ \t])*)')"
    r"(?:[ \t]+#.*|[ \t]*)"
    r"|#.*|)"
)
_REFERENCE = re.compile(rf"\$(?:(?P<plain>{_NAME})|\{{(?P<braced>{_NAME})\}})")
_INERT_VALUE = re.compile(rf"(?:{_INERT}|[ \t])*")
_LOWER_NAME = re.compile(r"[a-z][a-z0-9_]*")
_BLANKS = re.compile(r"[ \t]+")
# read by bash before the script runs: they can set variables, options (nounset, nullglob, posix
# mode) or replace `echo` with an exported function
_BASH_STARTUP = frozenset({"BASH_ENV", "SHELLOPTS", "BASHOPTS", "POSIXLY_CORRECT"})

#: (name, index, value as written, whether it is expanded)
_Assignment = tuple[str, int, str, bool]


def _literal_assignments(path: str) -> list[_Assignment] | None:
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
    out: list[_Assignment] = []
    for line in text.split("\n"):
        match = _LITERAL_LINE.fullmatch(line)
        if match is None:
            return None
        name = match.group("name")
        if name is None:
            continue
        index = int(match.group("index") or 0)
        if match.group("sq") is not None:
            out.append((name, index, match.group("sq"), False))
        else:
            bare = match.group("bare")
            out.append((name, index, bare if bare is not None else match.group("dq"), True))
    return out


def _expand(template: str, lookup: Callable[[str], str | None]) -> str | None:
    parts: list[str] = []
    pos = 0
    for ref in _REFERENCE.finditer(template):
        value = lookup(ref.group("plain") or ref.group("braced"))
        if value is None:
            return None
        parts += (template[pos : ref.start()], value)
        pos = ref.end()
    parts.append(template[pos:])
    return "".join(parts)


def _source_literal(
    path: str,
    whitelist: frozenset[str],
    arrays: dict[str, dict[int, str]],
    scope: Mapping[str, str],
    consulted: set[str],
) -> dict[str, dict[int, str]] | None:
    """The whitelisted arrays after `path` is sourced and its variables echoed and re-read;
    the names of `scope` it referred to are added to `consulted`."""
    assignments = _literal_assignments(path)
    if assignments is None:
        return None
    # while the file is sourced: earlier files' values (already re-read) and this file's raw ones
    current = {name: dict(idx) for name, idx in arrays.items()}
    # lower-case helpers live in the subshell only; `x[1]=v` leaves `$x` (= x[0]) unknown
    helpers: dict[str, str] = {}

    def lookup(name: str) -> str | None:
        if name in whitelist:
            return current.get(name, {}).get(0, "")  # popped from the environment
        if name in helpers:
            return helpers[name]
        if name in scope and _LOWER_NAME.fullmatch(name):
            consulted.add(name)
            return scope[name]
        return None  # may come from the caller's environment, or be one of bash's own

    for name, index, template, expanded in assignments:
        value = _expand(template, lookup) if expanded else template
        if value is None:
            return None
        if name in whitelist:
            if _INERT_VALUE.fullmatch(value) is None:
                return None  # the parent would expand it a second time
            current.setdefault(name, {})[index] = value
        elif _LOWER_NAME.fullmatch(name) is None:
            return None  # might be one of bash's own (IFS, PATH, ...): let bash decide
        elif index == 0:
            helpers[name] = value
    # the unquoted `echo` of dkms's safe_source
    return {name: {i: _BLANKS.sub(" ", v) for i, v in idx.items()} for name, idx in current.items()}


def evaluate_literal(
    files: Sequence[Path],
    variables: Sequence[str],
    *,
    scope: Mapping[str, str],
    deprecated: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    consulted: set[str] | None = None,
) -> ShellValues | None:
    """What `evaluate` returns, computed without bash, or None when bash is needed. The names
    of `scope` that the values were computed from are added to `consulted`."""
    used: set[str] = set() if consulted is None else consulted
    whitelist = frozenset(variables)
    for key in (*(env or ()), *scope):
        if key.startswith(("DKMS_DIRECTIVE", "BASH_FUNC_")) or key in _BASH_STARTUP:
            return None
    if any(name not in whitelist for name in deprecated):
        return None
    arrays: dict[str, dict[int, str]] = {
        name: {0: scope[name]} for name in variables if name in scope
    }
    used.update(arrays)
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
        after = _source_literal(path, whitelist, arrays, scope, used)
        if after is None:
            return None
        arrays = after
        for name in deprecated:
            if arrays.get(name):
                deps.append((path, name, arrays[name].get(0, "")))
    return ShellValues(arrays=arrays, deprecations=tuple(deps))
