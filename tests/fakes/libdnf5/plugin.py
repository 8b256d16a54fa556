"""libdnf5.plugin: IPlugin (include/libdnf5/plugin/iplugin.hpp, plugin API 2.0), IPlugin2_1 and
Version. IPlugin's constructor takes the IPluginData the loader was given; get_base() returns
the Base it belongs to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Base


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    micro: int


class IPluginData:
    """Opaque to plugins: libdnf5 hands it to the plugin constructor."""

    def __init__(self, base: Base) -> None:
        self._base = base


class IPlugin:
    def __init__(self, data: IPluginData) -> None:
        if not isinstance(data, IPluginData):
            raise TypeError("IPlugin.__init__() needs the IPluginData the loader passes")
        self._data = data

    # Required by the C++ interface (pure virtual).
    def get_api_version(self) -> Any:
        raise NotImplementedError("pure virtual method IPlugin.get_api_version")

    def get_name(self) -> str:
        raise NotImplementedError("pure virtual method IPlugin.get_name")

    def get_version(self) -> Version:
        raise NotImplementedError("pure virtual method IPlugin.get_version")

    def get_attribute(self, name: str) -> str | None:
        raise NotImplementedError("pure virtual method IPlugin.get_attribute")

    # Hooks, in the order libdnf5 calls them; the defaults do nothing.
    def load_plugins(self) -> None:
        pass

    def init(self) -> None:
        pass

    def pre_base_setup(self) -> None:
        pass

    def post_base_setup(self) -> None:
        pass

    def repos_configured(self) -> None:
        pass

    def repos_loaded(self) -> None:
        pass

    def pre_add_cmdline_packages(self, paths: list[str]) -> None:
        pass

    def post_add_cmdline_packages(self) -> None:
        pass

    def pre_transaction(self, transaction: Any) -> None:
        pass

    def post_transaction(self, transaction: Any) -> None:
        pass

    def finish(self) -> None:
        pass

    def get_base(self) -> Base:
        return self._data._base


class IPlugin2_1(IPlugin):
    def goal_resolved(self, transaction: Any) -> None:
        pass


__all__ = ["IPlugin", "IPlugin2_1", "IPluginData", "Version"]
