"""Every path dkmshooks touches, derived from one root and the three trees."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """`root` relocates the whole system (package managers' --root/--installroot, tests).
    The three trees default to dkms's locations under root; framework.conf and the CLI may move
    them, in which case they are used as given."""

    root: Path = Path("/")
    dkms_tree: Path = field(default=Path())
    source_tree: Path = field(default=Path())
    install_tree: Path = field(default=Path())

    def __post_init__(self) -> None:
        if self.dkms_tree == Path():
            object.__setattr__(self, "dkms_tree", self.under("/var/lib/dkms"))
        if self.source_tree == Path():
            object.__setattr__(self, "source_tree", self.under("/usr/src"))
        if self.install_tree == Path():
            object.__setattr__(self, "install_tree", self.under("/lib/modules"))

    def under(self, path: str) -> Path:
        """A system path below the root."""
        return self.root / path.lstrip("/")

    def with_trees(
        self,
        dkms_tree: Path | None = None,
        source_tree: Path | None = None,
        install_tree: Path | None = None,
    ) -> Layout:
        return replace(
            self,
            dkms_tree=dkms_tree or self.dkms_tree,
            source_tree=source_tree or self.source_tree,
            install_tree=install_tree or self.install_tree,
        )

    # /etc
    @property
    def etc_dkms(self) -> Path:
        return self.under("/etc/dkms")

    @property
    def framework_conf(self) -> Path:
        return self.etc_dkms / "framework.conf"

    @property
    def framework_conf_d(self) -> Path:
        return self.etc_dkms / "framework.conf.d"

    @property
    def no_autoinstall_flag(self) -> Path:
        return self.etc_dkms / "no-autoinstall"

    @property
    def forced_modules_dir(self) -> Path:
        return self.under("/usr/share/dkms/modules_to_force_install")

    @property
    def config_toml(self) -> Path:
        return self.under("/etc/dkmshooks/config.toml")

    @property
    def os_release_candidates(self) -> tuple[Path, Path]:
        return (self.under("/etc/os-release"), self.under("/usr/lib/os-release"))

    def boot_system_map(self, kver: str) -> Path:
        return self.under(f"/boot/System.map-{kver}")

    # dkms tree
    def module_dir(self, module: str) -> Path:
        return self.dkms_tree / module

    def version_dir(self, module: str, version: str) -> Path:
        return self.dkms_tree / module / version

    def source_link(self, module: str, version: str) -> Path:
        return self.version_dir(module, version) / "source"

    def build_dir(self, module: str, version: str) -> Path:
        return self.version_dir(module, version) / "build"

    def kernel_dir(self, module: str, version: str, kver: str) -> Path:
        return self.version_dir(module, version) / kver

    def built_dir(self, module: str, version: str, kver: str, arch: str) -> Path:
        return self.version_dir(module, version) / kver / arch

    def active_link(self, module: str, kver: str, arch: str) -> Path:
        return self.dkms_tree / module / f"kernel-{kver}-{arch}"

    def original_module_dir(self, module: str, kver: str, arch: str) -> Path:
        return self.dkms_tree / module / "original_module" / kver / arch

    def module_source(self, module: str, version: str) -> Path:
        return self.source_tree / f"{module}-{version}"

    @property
    def default_mok_key(self) -> Path:
        return self.under("/var/lib/dkms/mok.key")

    @property
    def default_mok_cert(self) -> Path:
        return self.under("/var/lib/dkms/mok.pub")

    @property
    def post_transaction_log(self) -> Path:
        return self.dkms_tree / "post_transaction.log"

    # install tree
    def modules_dir(self, kver: str) -> Path:
        return self.install_tree / kver

    # dkmshooks's own state
    @property
    def state_dir(self) -> Path:
        return self.under("/var/lib/dkmshooks")

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "lock"

    @property
    def log_dir(self) -> Path:
        return self.under("/var/log/dkmshooks")

    @property
    def rebuild_log(self) -> Path:
        return self.log_dir / "rebuild.log"
