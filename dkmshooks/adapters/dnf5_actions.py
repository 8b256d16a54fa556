"""The file format of dnf5's actions plugin (libdnf5-plugin-actions), read the way the plugin
reads it, so that hooks/dnf/dkmshooks.actions can be checked where dnf5 does not exist.

Written from dnf5's `doc/libdnf5_plugins/actions.8.rst` and `libdnf5-plugins/actions/actions.cpp`
(plugin versions 0.2.0 of dnf5 5.1.0 up to 1.4.x of dnf5 5.4; reference/lab-pacman-dnf-kinstall.md
§2.4). Nothing here runs at hook time: dnf5 itself parses the file and runs the commands.

One action per line, `callback:package_filter:direction:options:command`, split at the first four
colons (the command may contain more); empty lines and lines starting with `#` are skipped. The
command is split at unescaped spaces, `${…}` variables are substituted in each argument, and only
then backslash escapes are resolved. An unknown variable is an error: the command is not run.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CALLBACKS = (
    "pre_base_setup",
    "post_base_setup",
    "repos_configured",  # plugin 1.1.0 (dnf5 5.2.5.0)
    "repos_loaded",  # 1.1.0
    "pre_add_cmdline_packages",  # 1.1.0
    "post_add_cmdline_packages",  # 1.1.0
    "goal_resolved",  # 1.3.0 (dnf5 5.2.10.0)
    "pre_transaction",
    "post_transaction",
)
#: The callbacks every version of the plugin knows (0.2.0, dnf5 5.1.0).
PORTABLE_CALLBACKS = ("pre_base_setup", "post_base_setup", "pre_transaction", "post_transaction")
PACKAGE_CALLBACKS = ("goal_resolved", "pre_transaction", "post_transaction")
OPTIONS = {
    "enabled": ("1", "host-only", "installroot-only"),  # 0.3.0
    "mode": ("plain", "json"),  # 1.2.0
    "raise_error": ("0", "1"),  # 1.4.0; 0 (the default) only logs a failing command
}
PKG_ATTRIBUTES = (
    "name",
    "arch",
    "version",
    "release",
    "epoch",
    "na",
    "evr",
    "nevra",
    "full_nevra",
    "repo_id",
    "license",
    "location",
    "vendor",
    "action",
)
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


class ActionsError(ValueError):
    """A line the actions plugin would refuse (it refuses the whole file set at startup)."""


@dataclass(frozen=True)
class Action:
    callback: str
    package_filter: str
    direction: str  # "in", "out" or "" (both)
    options: Mapping[str, str]
    args: tuple[str, ...]  # split, not yet substituted nor unescaped
    line_number: int = 0

    @property
    def is_portable(self) -> bool:
        """Understood by every dnf5 release with the plugin (empty options field, old callbacks)."""
        return not self.options and self.callback in PORTABLE_CALLBACKS


@dataclass(frozen=True)
class PackageInfo:
    """What the plugin substitutes for `${pkg.…}`; `action` is one of I U D R E O."""

    name: str
    version: str
    release: str
    arch: str
    epoch: str = "0"
    action: str = "I"
    repo_id: str = "@System"
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def inbound(self) -> bool:
        return self.action in ("I", "U", "D", "R")

    def attribute(self, key: str) -> str | None:
        evr = f"{self.version}-{self.release}"
        if self.epoch not in ("", "0"):
            evr = f"{self.epoch}:{evr}"
        nevra = f"{self.name}-{evr}.{self.arch}"
        values = {
            "name": self.name,
            "arch": self.arch,
            "version": self.version,
            "release": self.release,
            "epoch": self.epoch,
            "na": f"{self.name}.{self.arch}",
            "evr": evr,
            "nevra": nevra,
            "full_nevra": f"{self.name}-{self.epoch or '0'}:{self.version}-{self.release}"
            f".{self.arch}",
            "repo_id": self.repo_id,
            "action": self.action,
            **self.extra,
        }
        return values.get(key)

    def matches(self, package_filter: str) -> bool:
        """The NEVRA forms the plugin tries a filter against (file paths are not modelled)."""
        forms = (
            self.name,
            f"{self.name}.{self.arch}",
            f"{self.name}-{self.version}",
            f"{self.name}-{self.version}-{self.release}",
            f"{self.name}-{self.version}-{self.release}.{self.arch}",
            f"{self.name}-{self.epoch}:{self.version}-{self.release}.{self.arch}",
        )
        return any(fnmatch.fnmatchcase(form, package_filter) for form in forms)


def split_args(text: str) -> list[str]:
    """actions.cpp's split(): spaces delimit, a backslash escapes the next character (kept)."""
    out: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] == " ":
            i += 1
        if i >= n or text[i] in "\n\r":
            return out
        start, escape = i, False
        while i < n and (escape or text[i] != " ") and text[i] not in "\n\r":
            escape = (not escape) and text[i] == "\\"
            i += 1
        out.append(text[start:i])


def unescape(text: str) -> str:
    out: list[str] = []
    escape = False
    for char in text:
        if escape:
            out.append(_ESCAPES.get(char, char))
            escape = False
        elif char == "\\":
            escape = True
        else:
            out.append(char)
    return "".join(out)


def parse_line(line: str, line_number: int = 0) -> Action | None:
    """One line of an .actions file; None for comments and empty lines."""
    line = line.rstrip("\n")
    if not line or line.startswith("#"):
        return None
    parts = line.split(":", 4)
    if len(parts) < 5:
        raise ActionsError(
            f'line {line_number}: "HOOK:PKG_FILTER:DIRECTION:OPTIONS:CMD" format expected'
        )
    callback, package_filter, direction, options_text, command = parts
    if callback not in CALLBACKS:
        raise ActionsError(f'line {line_number}: unknown hook "{callback}"')
    if package_filter and callback not in PACKAGE_CALLBACKS:
        raise ActionsError(
            f"line {line_number}: a package filter can only be used in goal_resolved, "
            "pre_transaction and post_transaction hooks"
        )
    if direction not in ("", "in", "out"):
        raise ActionsError(f'line {line_number}: unknown package direction "{direction}"')
    if direction and not package_filter:
        raise ActionsError(f"line {line_number}: cannot use direction without package filter")
    options: dict[str, str] = {}
    for option in split_args(options_text):
        key, _, value = option.partition("=")
        if key not in OPTIONS:
            raise ActionsError(f'line {line_number}: unknown option "{option}"')
        if value not in OPTIONS[key]:
            raise ActionsError(f'line {line_number}: unsupported value of "{key}": "{value}"')
        options[key] = value
    args = split_args(command)
    if not args:
        raise ActionsError(f"line {line_number}: missing command")
    return Action(callback, package_filter, direction, options, tuple(args), line_number)


def parse(text: str) -> list[Action]:
    actions = []
    for number, line in enumerate(text.splitlines(), start=1):
        action = parse_line(line, number)
        if action is not None:
            actions.append(action)
    return actions


def substitute(
    arg: str,
    *,
    package: PackageInfo | None = None,
    conf: Mapping[str, str] | None = None,
    variables: Mapping[str, str] | None = None,
    tmp: Mapping[str, str] | None = None,
    pid: int = 0,
    plugin_version: str = "1.4.1",
) -> str:
    """One argument with its `${…}` replaced, as the plugin does before unescaping."""
    out: list[str] = []
    pos = 0
    while True:
        start = arg.find("${", pos)
        if start < 0:
            out.append(arg[pos:])
            return "".join(out)
        out.append(arg[pos:start])
        end = arg.find("}", start + 2)
        if end < 0:
            raise ActionsError(f'incomplete variable name "{arg[start:]}"')
        name = arg[start + 2 : end]
        value: str | None = None
        if name == "pid":
            value = str(pid)
        elif name == "plugin.version":
            value = plugin_version
        elif name.startswith("conf."):
            value = (conf or {}).get(name[5:])
        elif name.startswith("var."):
            value = (variables or {}).get(name[4:])
        elif name.startswith("tmp."):
            value = (tmp or {}).get(name[4:])
        elif name.startswith("pkg.") and package is not None:
            value = package.attribute(name[4:])
        if value is None:
            raise ActionsError(f'unknown variable "{name}"')
        out.append(value)
        pos = end + 1


def render(
    action: Action,
    *,
    package: PackageInfo | None = None,
    conf: Mapping[str, str] | None = None,
    pid: int = 0,
) -> list[str]:
    """The argv the plugin would execvp for this action."""
    return [unescape(substitute(a, package=package, conf=conf, pid=pid)) for a in action.args]


def commands_for(
    actions: Iterable[Action],
    callback: str,
    packages: Iterable[PackageInfo],
    *,
    conf: Mapping[str, str] | None = None,
    pid: int = 0,
) -> list[list[str]]:
    """The commands one callback runs for a transaction, in the plugin's order: action by action,
    each matching package in turn, identical commands once."""
    pkgs = list(packages)
    seen: list[list[str]] = []
    for action in actions:
        if action.callback != callback:
            continue
        if not action.package_filter:
            candidates: list[PackageInfo | None] = [None]
        else:
            candidates = [
                p
                for p in pkgs
                if p.matches(action.package_filter)
                and (not action.direction or (action.direction == "in") == p.inbound)
            ]
        for pkg in candidates:
            argv = render(action, package=pkg, conf=conf, pid=pid)
            if argv not in seen:
                seen.append(argv)
    return seen


__all__ = [
    "CALLBACKS",
    "OPTIONS",
    "PACKAGE_CALLBACKS",
    "PKG_ATTRIBUTES",
    "PORTABLE_CALLBACKS",
    "Action",
    "ActionsError",
    "PackageInfo",
    "commands_for",
    "parse",
    "parse_line",
    "render",
    "split_args",
    "substitute",
    "unescape",
]
