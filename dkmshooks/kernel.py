"""Facts about one kernel: where its headers and config are, whether headers and image are ready,
which module compression it uses, whether it signs modules."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .layout import Layout


@dataclass(frozen=True)
class KernelFacts:
    kver: str
    modules_dir: Path
    source_dir: Path  # the build tree (`kernel_source_dir`)
    config: Path  # `kernel_config`

    @property
    def headers_ready(self) -> bool:
        """dkms's own test is `build/include` exists; the engine also wants the Makefile."""
        return (self.source_dir / "include").exists()

    @property
    def headers_complete(self) -> bool:
        return self.headers_ready and (self.source_dir / "Makefile").exists()

    def image_ready(self, layout: Layout) -> bool:
        has_tree = (self.modules_dir / "modules.order").exists() and (
            self.modules_dir / "kernel"
        ).is_dir()
        has_image = (layout.under(f"/boot/vmlinuz-{self.kver}")).exists() or (
            self.modules_dir / "vmlinuz"
        ).exists()
        return has_tree and has_image

    def config_value(self, option: str) -> str | None:
        try:
            text = self.config.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        match = re.search(rf"^{re.escape(option)}=(.*)$", text, re.MULTILINE)
        if match is None:
            return None
        return match.group(1).replace('"', "")

    @property
    def sign_hash(self) -> str | None:
        return self.config_value("CONFIG_MODULE_SIG_HASH")


def kernel_facts(
    layout: Layout,
    kver: str,
    *,
    source_dir: Path | None = None,
    config: Path | None = None,
) -> KernelFacts:
    src = source_dir if source_dir is not None else layout.modules_dir(kver) / "build"
    if config is None:
        auto = src / "include" / "config" / "auto.conf"
        config = auto if auto.exists() else src / ".config"
    return KernelFacts(
        kver=kver, modules_dir=layout.modules_dir(kver), source_dir=src, config=config
    )


def module_compressed_suffix(layout: Layout, kver: str) -> str:
    """dkms 3.4 looks for installed `*.ko.gz`, `*.ko.xz`, `*.ko.zst` in the kernel's module tree;
    the last kind found wins. One walk instead of dkms's three."""
    found: set[str] = set()
    top = layout.modules_dir(kver)
    if not top.is_dir():
        return ""
    for _dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            if name.endswith(".ko.gz"):
                found.add(".gz")
            elif name.endswith(".ko.xz"):
                found.add(".xz")
            elif name.endswith(".ko.zst"):
                found.add(".zst")
        if len(found) == 3:
            break
    for suffix in (".zst", ".xz", ".gz"):
        if suffix in found:
            return suffix
    return ""


def find_module_files(tree: Path, name: str, suffix: str) -> list[Path]:
    """`find tree -name name.ko -type f -o -name name.ko<suffix> -type f`."""
    wanted = {f"{name}.ko", f"{name}.ko{suffix}"}
    found: list[Path] = []
    if not tree.is_dir():
        return found
    for dirpath, _dirnames, filenames in os.walk(tree):
        for fname in filenames:
            if fname in wanted:
                path = Path(dirpath) / fname
                if path.is_file() and not path.is_symlink():
                    found.append(path)
    return found


def compressed_or_uncompressed(directory: Path, name: str, suffix: str) -> Path | None:
    plain = directory / f"{name}.ko"
    if plain.exists():
        return plain
    packed = directory / f"{name}.ko{suffix}"
    if suffix and packed.exists():
        return packed
    return None


def is_in_chroot() -> bool:
    """A port of dkms's running_in_chroot (Debian's ischroot)."""
    if os.environ.get("FAKECHROOT") == "true" or os.environ.get("FAKECHROOT_BASE"):
        return True
    if "libfakechroot" in os.environ.get("LD_PRELOAD", ""):
        return True
    try:
        if Path("/proc/1/mountinfo").read_bytes() != Path("/proc/self/mountinfo").read_bytes():
            return True
    except OSError:
        pass
    try:
        root1 = os.stat("/proc/1/root")
        root = os.stat("/")
        if (root1.st_dev, root1.st_ino) != (root.st_dev, root.st_ino):
            return True
    except OSError:
        pass
    return False
