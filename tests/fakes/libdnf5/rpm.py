"""libdnf5.rpm: Package, Reldep and ReldepList as include/libdnf5/rpm/{package,reldep,
reldep_list}.hpp expose them (getters only; a Package is a read-only view of the sack)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reldep:
    name: str
    relation: str = ""  # "=", "<", ">=", … or "" for an unversioned provide
    version: str = ""

    def get_name(self) -> str:
        return self.name

    def get_relation(self) -> str:
        return self.relation

    def get_version(self) -> str:
        return self.version

    def to_string(self) -> str:
        if not self.relation:
            return self.name
        return f"{self.name} {self.relation} {self.version}"


class ReldepList:
    def __init__(self, items: Sequence[Reldep] = ()) -> None:
        self._items = list(items)

    def size(self) -> int:
        return len(self._items)

    def get(self, index: int) -> Reldep:
        return self._items[index]

    def __iter__(self) -> Iterator[Reldep]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Package:
    name: str
    version: str
    release: str
    arch: str
    epoch: str = "0"
    provides: Sequence[Reldep] = ()
    files: Sequence[str] = ()
    repo_id: str = "@System"
    #: how many times get_provides()/get_files() were called: reading them is not free in
    #: libdnf5 (they come from the solvable), and an unrelated transaction must not pay for it
    reads: dict[str, int] = field(default_factory=lambda: {"provides": 0, "files": 0})

    def get_name(self) -> str:
        return self.name

    def get_version(self) -> str:
        return self.version

    def get_release(self) -> str:
        return self.release

    def get_arch(self) -> str:
        return self.arch

    def get_epoch(self) -> str:
        return self.epoch

    def get_evr(self) -> str:
        evr = f"{self.version}-{self.release}"
        return evr if self.epoch in ("", "0") else f"{self.epoch}:{evr}"

    def get_nevra(self) -> str:
        return f"{self.name}-{self.get_evr()}.{self.arch}"

    def get_full_nevra(self) -> str:
        return f"{self.name}-{self.epoch or '0'}:{self.version}-{self.release}.{self.arch}"

    def get_repo_id(self) -> str:
        return self.repo_id

    def get_provides(self) -> ReldepList:
        self.reads["provides"] += 1
        return ReldepList(self.provides)

    def get_files(self) -> list[str]:
        self.reads["files"] += 1
        return list(self.files)
