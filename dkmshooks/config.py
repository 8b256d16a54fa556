"""/etc/dkmshooks/config.toml → Config (the engine's policy; dkms's own settings stay in
framework.conf)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DkmsError
from .layout import Layout

INITRAMFS_POLICIES = ("auto", "always", "never")


@dataclass(frozen=True)
class ModulePolicy:
    initramfs: str | None = None  # overrides the global policy for this module
    strict: bool | None = None
    skip: bool = False  # never built by the engine's triggers (still by `dkms install`)


@dataclass(frozen=True)
class Config:
    strict: bool = False
    jobs: int | None = None
    log_path: Path | None = None
    initramfs: str = "auto"
    modules: Mapping[str, ModulePolicy] = field(default_factory=dict)

    def module(self, name: str) -> ModulePolicy:
        return self.modules.get(name, ModulePolicy())

    def is_strict_for(self, name: str) -> bool:
        policy = self.module(name).strict
        return self.strict if policy is None else policy


class ConfigError(DkmsError):
    code = 8


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    return value


def parse_config(data: Mapping[str, Any], path: Path) -> Config:
    known = {"strict", "jobs", "log_path", "initramfs", "modules"}
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{path}: unknown setting {key!r}",
                hint=f"Known settings: {', '.join(sorted(known))}.",
            )
    strict = bool(_expect(data.get("strict", False), bool, f"{path}: strict"))
    jobs = data.get("jobs")
    if jobs is not None:
        jobs = _expect(jobs, int, f"{path}: jobs")
        if jobs < 1:
            raise ConfigError(f"{path}: jobs must be at least 1, got {jobs}")
    log_path = data.get("log_path")
    if log_path is not None:
        log_path = Path(_expect(log_path, str, f"{path}: log_path"))
    initramfs = _expect(data.get("initramfs", "auto"), str, f"{path}: initramfs")
    if initramfs not in INITRAMFS_POLICIES:
        raise ConfigError(f"{path}: initramfs must be one of {', '.join(INITRAMFS_POLICIES)}")
    modules: dict[str, ModulePolicy] = {}
    for name, table in _expect(data.get("modules", {}), dict, f"{path}: modules").items():
        where = f"{path}: modules.{name}"
        _expect(table, dict, where)
        unknown = set(table) - {"initramfs", "strict", "skip"}
        if unknown:
            raise ConfigError(f"{where}: unknown setting {sorted(unknown)[0]!r}")
        mi = table.get("initramfs")
        if mi is not None and mi not in INITRAMFS_POLICIES:
            raise ConfigError(f"{where}.initramfs must be one of {', '.join(INITRAMFS_POLICIES)}")
        ms = table.get("strict")
        if ms is not None:
            _expect(ms, bool, f"{where}.strict")
        modules[name] = ModulePolicy(
            initramfs=mi, strict=ms, skip=bool(_expect(table.get("skip", False), bool, where))
        )
    return Config(strict=strict, jobs=jobs, log_path=log_path, initramfs=initramfs, modules=modules)


def load_config(layout: Layout) -> Config:
    path = layout.config_toml
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    # imported here: most hosts have no config.toml, and every hook call would pay for the parser
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on RHEL 9's Python 3.9
        import tomli as tomllib
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"{path} is not valid TOML: {exc}", hint="Fix the file or move it away."
        ) from exc
    return parse_config(data, path)


def log_path_for(layout: Layout, config: Config) -> Path:
    if config.log_path is None:
        return layout.rebuild_log
    return layout.under(str(config.log_path))
