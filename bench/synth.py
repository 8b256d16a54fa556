"""Write a synthetic DKMS tree for benchmark 5: M module/versions, each built and installed for K
kernels, plus one more kernel with headers and nothing built (what `plan` sees after a kernel
upgrade). Only the tree structure and small dkms.conf files; no builds. Run inside the bench
namespace (it writes /var/lib/dkms, /usr/src, /lib/modules and /boot of that namespace).

    python3 synth.py --modules 500 --kernels 20 --headers /usr/src/linux-headers-K --ko tiny.ko
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

CONF = """\
PACKAGE_NAME="{m}"
PACKAGE_VERSION="{v}"
BUILT_MODULE_NAME[0]="{m}"
DEST_MODULE_LOCATION[0]="/updates/dkms"
MAKE[0]="make -C $kernel_source_dir M=$dkms_tree/$PACKAGE_NAME/$PACKAGE_VERSION/build"
AUTOINSTALL="yes"
"""


def kernels(count: int) -> list[str]:
    return [f"6.1.0-{100 + i}-synth" for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modules", type=int, default=500)
    parser.add_argument("--kernels", type=int, default=20)
    parser.add_argument("--headers", required=True, help="a real headers tree for build/")
    parser.add_argument("--ko", default="", help="a small real .ko to use as every module")
    parser.add_argument("--root", default="/")
    parser.add_argument("--arch", default=os.uname().machine)
    opts = parser.parse_args()
    root = Path(opts.root)
    ko = Path(opts.ko).read_bytes() if opts.ko else b"\x7fELF synthetic module\n"
    dkms_tree = root / "var/lib/dkms"
    src_tree = root / "usr/src"
    lib_modules = root / "lib/modules"
    built_kernels = kernels(opts.kernels)
    new_kernel = f"6.1.0-{100 + opts.kernels}-synth"
    for kver in [*built_kernels, new_kernel]:
        kdir = lib_modules / kver
        (kdir / "kernel").mkdir(parents=True, exist_ok=True)
        (kdir / "updates" / "dkms").mkdir(parents=True, exist_ok=True)
        (kdir / "modules.order").write_text("")
        build = kdir / "build"
        if not build.is_symlink():
            build.symlink_to(opts.headers)
        boot = root / "boot"
        boot.mkdir(exist_ok=True)
        (boot / f"vmlinuz-{kver}").write_bytes(b"synthetic kernel image\n")
    for i in range(opts.modules):
        m, v = f"synth{i:03d}", f"1.{i % 7}"
        src = src_tree / f"{m}-{v}"
        src.mkdir(parents=True, exist_ok=True)
        (src / "dkms.conf").write_text(CONF.format(m=m, v=v))
        (src / "Makefile").write_text(f"obj-m := {m}.o\n")
        (src / f"{m}.c").write_text("/* synthetic */\n")
        vdir = dkms_tree / m / v
        vdir.mkdir(parents=True, exist_ok=True)
        link = vdir / "source"
        if not link.is_symlink():
            link.symlink_to(f"/usr/src/{m}-{v}")
        for kver in built_kernels:
            mdir = vdir / kver / opts.arch / "module"
            mdir.mkdir(parents=True, exist_ok=True)
            (vdir / kver / opts.arch / "log").mkdir(exist_ok=True)
            (mdir / f"{m}.ko").write_bytes(ko)
            active = dkms_tree / m / f"kernel-{kver}-{opts.arch}"
            if not active.is_symlink():
                active.symlink_to(f"{v}/{kver}/{opts.arch}")
            (lib_modules / kver / "updates" / "dkms" / f"{m}.ko").write_bytes(ko)
    for kver in built_kernels:
        with open(lib_modules / kver / "modules.dep", "w") as fh:
            for i in range(opts.modules):
                fh.write(f"updates/dkms/synth{i:03d}.ko:\n")


if __name__ == "__main__":
    main()
