"""Fake of dnf5's `libdnf5` Python package (SWIG bindings of the C++ library): see README.md."""

from __future__ import annotations

from dataclasses import dataclass

from . import base, conf, plugin, rpm, transaction


@dataclass(frozen=True)
class PluginAPIVersion:
    """libdnf5::PluginAPIVersion: the plugin API a plugin implements (2.0: IPlugin, 2.1:
    IPlugin2_1 with goal_resolved)."""

    major: int
    minor: int


__all__ = ["PluginAPIVersion", "base", "conf", "plugin", "rpm", "transaction"]
