"""Which initramfs generator the system uses, whether a kernel has an image now, whether our
modules are (or must be) in it, and regenerating it once per kernel."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import run
from .layout import Layout


@dataclass(frozen=True)
class Generator:
    name: str  # update-initramfs | dracut | mkinitcpio | kernel-install | none

    def command(self, layout: Layout, kver: str) -> list[str] | None:
        if self.name == "update-initramfs":
            return ["update-initramfs", "-u", "-k", kver]
        if self.name == "dracut":
            return ["dracut", "-f", "--kver", kver]
        if self.name == "mkinitcpio":
            preset = mkinitcpio_preset(layout, kver)
            if preset:
                return ["mkinitcpio", "-p", preset]
            return [
                "mkinitcpio",
                "-k",
                kver,
                "-g",
                str(layout.under(f"/boot/initramfs-{kver}.img")),
            ]
        if self.name == "kernel-install":
            image = kernel_image(layout, kver)
            return ["kernel-install", "add", kver, str(image)] if image else None
        return None


def _which(layout: Layout, name: str) -> bool:
    if layout.root != Path("/"):
        return any(
            (layout.root / d.lstrip("/") / name).exists()
            for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
        )
    return shutil.which(name) is not None


def detect_generator(layout: Layout) -> Generator:
    for name in ("update-initramfs", "dracut", "mkinitcpio"):
        if _which(layout, name):
            return Generator(name)
    if _which(layout, "kernel-install"):
        return Generator("kernel-install")
    return Generator("none")


def kernel_image(layout: Layout, kver: str) -> Path | None:
    for candidate in (
        layout.under(f"/boot/vmlinuz-{kver}"),
        layout.modules_dir(kver) / "vmlinuz",
    ):
        if candidate.exists():
            return candidate
    return None


def mkinitcpio_preset(layout: Layout, kver: str) -> str | None:
    pkgbase = layout.modules_dir(kver) / "pkgbase"
    try:
        name = pkgbase.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if name and layout.under(f"/etc/mkinitcpio.d/{name}.preset").exists():
        return name
    return None


def initramfs_images(layout: Layout, kver: str) -> list[Path]:
    """The initramfs files that belong to kver, by each distro's naming."""
    names = [
        f"/boot/initrd.img-{kver}",  # Debian, Ubuntu
        f"/boot/initramfs-{kver}.img",  # Fedora, RHEL (dracut)
    ]
    preset = mkinitcpio_preset(layout, kver)
    if preset:
        names += [f"/boot/initramfs-{preset}.img", f"/boot/initramfs-{preset}-fallback.img"]
    return [p for p in (layout.under(n) for n in names) if p.exists()]


def newest_initramfs_mtime(layout: Layout, kver: str) -> float | None:
    images = initramfs_images(layout, kver)
    if not images:
        return None
    return max(p.stat().st_mtime for p in images)


def configured_modules(layout: Layout) -> set[str]:
    """Module names the admin asked the generator to include."""
    names: set[str] = set()
    files = [layout.under("/etc/initramfs-tools/modules")]
    for d in ("/etc/initramfs-tools/conf.d",):
        p = layout.under(d)
        if p.is_dir():
            files += sorted(p.iterdir())
    for f in files:
        try:
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                word = line.split("#", 1)[0].strip().split(" ")[0]
                if word and "=" not in word:
                    names.add(word)
        except OSError:
            continue
    dracut_files = [layout.under("/etc/dracut.conf")]
    dracut_d = layout.under("/etc/dracut.conf.d")
    if dracut_d.is_dir():
        dracut_files += sorted(dracut_d.glob("*.conf"))
    for f in dracut_files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for match in re.finditer(r"(?:add_drivers|force_drivers)\+?=\s*\"([^\"]*)\"", text):
            names.update(match.group(1).split())
    try:
        text = layout.under("/etc/mkinitcpio.conf").read_text(encoding="utf-8", errors="replace")
        for match in re.finditer(r"^MODULES=\(([^)]*)\)", text, re.MULTILINE):
            names.update(match.group(1).replace('"', " ").split())
    except OSError:
        pass
    return {n.replace("-", "_") for n in names}


def listed_in_image(layout: Layout, kver: str, module_names: Iterable[str]) -> bool:
    """Whether any of the module files is inside kver's current initramfs (lsinitramfs/lsinitrd)."""
    wanted = {n.replace("-", "_") for n in module_names}
    for image in initramfs_images(layout, kver):
        for tool in ("lsinitramfs", "lsinitrd"):
            if not shutil.which(tool):
                continue
            proc = run.run([tool, str(image)], check=False, capture=True)
            if proc.returncode != 0:
                continue
            for line in proc.stdout.splitlines():
                base = os.path.basename(line.strip())
                stem = re.sub(r"\.ko(\.(gz|xz|zst))?$", "", base)
                if stem != base and stem.replace("-", "_") in wanted:
                    return True
            break
    return False


def regenerate(layout: Layout, kver: str) -> tuple[int, str, list[str]]:
    """Run the system's generator for kver. Returns (status, output, argv)."""
    generator = detect_generator(layout)
    argv = generator.command(layout, kver)
    if argv is None:
        return 0, f"no initramfs generator found for {kver}", []
    if layout.root != Path("/"):
        argv = ["chroot", str(layout.root), *argv]
    proc = run.run(argv, check=False, capture=True, merge_stderr=True)
    return proc.returncode, proc.stdout, argv
