"""libdnf5.base: Base (only what plugins reach through IPlugin.get_base()), Transaction and
TransactionPackage (include/libdnf5/base/transaction.hpp, transaction_package.hpp)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .conf import ConfigMain
from .rpm import Package


class Base:
    _locked: Base | None = None

    def __init__(self, installroot: str = "/") -> None:
        self._config = ConfigMain(installroot)
        self.plugins: list[Any] = []

    def get_config(self) -> ConfigMain:
        return self._config

    # What python_plugins_loader.cpp calls to register an instantiated Python plugin.
    @classmethod
    def get_locked_base(cls) -> Base:
        if cls._locked is None:
            raise RuntimeError("no Base is locked")
        return cls._locked

    def lock(self) -> None:
        type(self)._locked = self

    def add_plugin(self, plugin: Any) -> None:
        self.plugins.append(plugin)


class TransactionPackage:
    def __init__(self, package: Package, action: int, reason: int = 0, state: int = 0) -> None:
        self._package = package
        self._action = action
        self._reason = reason
        self._state = state

    def get_package(self) -> Package:
        return self._package

    def get_action(self) -> int:
        return self._action

    def get_reason(self) -> int:
        return self._reason

    def get_state(self) -> int:
        return self._state


class Transaction:
    def __init__(self, packages: Sequence[TransactionPackage]) -> None:
        self._packages = list(packages)

    def get_transaction_packages(self) -> list[TransactionPackage]:
        return list(self._packages)

    def get_transaction_packages_count(self) -> int:
        return len(self._packages)
