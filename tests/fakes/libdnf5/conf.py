"""libdnf5.conf: the ConfigMain options a plugin reads, as get_<name>_option() objects."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Option(Generic[T]):
    def __init__(self, value: T) -> None:
        self._value = value

    def get_value(self) -> T:
        return self._value

    def get_value_string(self) -> str:
        return str(self._value)


class ConfigMain:
    def __init__(self, installroot: str = "/") -> None:
        self._installroot = Option(installroot)

    def get_installroot_option(self) -> Option[str]:
        return self._installroot
