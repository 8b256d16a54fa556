"""The whole story, for the boot tier and for the README's main job alike: in a Debian 12 chroot
with dkmshooks and dkms_test/1.0, apt installs a real kernel, the apt hooks build and install the
module and the initramfs is made with it; qemu then boots that kernel with that initramfs, and the
module loads. Then the same after an upgrade to a newer kernel ABI.

`cd tests && python -m boot.proof [OUT]` runs it as a demonstration (demo/boot-proof.sh does).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from e2e.chroot import (
    MODULE,
    NEW,
    OLD,
    REPO,
    VERSION,
    AptRun,
    Debian,
    Result,
    ensure_base_tarball,
    headers,
    image,
    unpack,
    work_dir,
)

from .guest import Boot, QemuUnavailable, boot, find_qemu

T = TypeVar("T")

# The guest's shell and tools; static, so it runs from the appended archive without a libc.
BUSYBOX_PACKAGE = "busybox-static"
BUSYBOX = "/bin/busybox"


@contextmanager
def debian_with_module(prefix: str) -> Iterator[Debian]:
    """A fresh copy of the e2e tier's cached Debian 12 base, with dkmshooks installed from this
    checkout, dkms_test/1.0 registered and listed for initramfs-tools (the base uses
    MODULES=list)."""
    tarball = ensure_base_tarball()
    with work_dir(prefix=prefix) as path:
        chroot = unpack(tarball, path)
        subprocess.run([str(REPO / "scripts" / "install-into-root.sh"), str(path)], check=True)
        system = Debian(chroot)
        # The base's package lists may predate today's archive (kernels move on point releases).
        apt_get(system, "update").check()
        apt_get(system, "install", BUSYBOX_PACKAGE).check()
        system.dkms_add(MODULE)
        chroot.write("/etc/initramfs-tools/modules", f"{MODULE}\n")
        yield system


# Every chroot bind-mounts one shared archive cache, and apt takes its lock without waiting
# (DPkg::Lock::Timeout covers only dpkg's lock): an e2e run next door makes apt exit 100 at once.
ARCHIVES_BUSY = "Could not get lock /var/cache/apt/archives/lock"
ARCHIVES_PATIENCE = 900.0


def _patiently(attempt: Callable[[], T], output: Callable[[T], str]) -> T:
    deadline = time.monotonic() + ARCHIVES_PATIENCE
    while True:
        result = attempt()
        if ARCHIVES_BUSY not in output(result) or time.monotonic() > deadline:
            return result
        time.sleep(3)


def apt_get(debian: Debian, *args: str) -> Result:
    return _patiently(lambda: debian.run("apt-get", "-y", *args), lambda r: r.output)


def install_kernel(debian: Debian, kver: str) -> AptRun:
    return _patiently(
        lambda: debian.apt("install", image(kver), headers(kver)), lambda r: r.result.output
    )


def boot_kernel(debian: Debian, kver: str, qemu: str, work: Path) -> Boot:
    return boot(
        qemu,
        kernel=debian.file(f"/boot/vmlinuz-{kver}"),
        initrd=debian.initramfs(kver),
        busybox=debian.file(BUSYBOX),
        module=MODULE,
        work=work,
    )


def installed_sha256(debian: Debian, kver: str) -> str:
    return hashlib.sha256(debian.installed_module(kver).read_bytes()).hexdigest()


def problems_after_install(debian: Debian, kver: str, run: AptRun) -> list[str]:
    """What is wrong with the chroot after apt installed kver, before anything boots."""
    found = []
    if run.result.rc != 0:
        found.append(f"{run.label} exited {run.result.rc}:\n{run.result.output[-4000:]}")
    if not debian.installed_module(kver).is_file():
        found.append(f"the hooks installed no {debian.installed_module(kver)}")
    elif not debian.in_modules_dep(kver):
        found.append(f"{MODULE} is not in /lib/modules/{kver}/modules.dep")
    if not debian.initramfs(kver).is_file():
        found.append(f"no {debian.initramfs(kver)}")
    elif not debian.initramfs_lists(kver):
        found.append(f"lsinitramfs /boot/initrd.img-{kver} does not list {MODULE}.ko")
    if not any(r["source"] == "apt" for r in run.of(MODULE, kver)):
        found.append(f"{run.label} logged nothing for {MODULE} on {kver}: {run.records}")
    return found


def problems_in_boot(result: Boot, kver: str, sha256: str) -> list[str]:
    """Everything the guest must have printed for the proof to hold; [] when it holds."""
    proof = result.proof
    if not proof.complete:
        return [f"the guest did not run the proof to its end\n{result.describe()}"]
    found = []

    def expect(what: str, ok: bool) -> None:
        if not ok:
            found.append(what)

    def values(key: str) -> list[str]:
        return proof.all(key)

    path = f"/lib/modules/{kver}/updates/dkms/{MODULE}.ko"
    expect(f"uname -r is {kver}: {values('uname-r')}", values("uname-r") == [kver])
    expect(f"modprobe {MODULE} exited 0: {values('modprobe-rc')}", values("modprobe-rc") == ["0"])
    expect(
        f"modprobe resolves {MODULE} to {path}: {values('show-depends')}",
        any(v.endswith(path) for v in values("show-depends")),
    )
    expect(
        f"/proc/modules lists {MODULE}: {values('proc-modules')}",
        any(v.startswith(f"{MODULE} ") and " Live " in v for v in values("proc-modules")),
    )
    expect(
        f"dmesg has '{MODULE}: loaded version {VERSION}': {values('dmesg')}",
        any(f"{MODULE}: loaded version {VERSION}" in v for v in values("dmesg")),
    )
    expect(
        f"/sys/module/{MODULE}/version is {VERSION}: {values('sysfs-version')}",
        values("sysfs-version") == [VERSION],
    )
    # O: out of tree, as every DKMS module; the kernel says so only for a module it loaded.
    expect(
        f"/sys/module/{MODULE}/taint has O: {values('sysfs-taint')}",
        any("O" in v for v in values("sysfs-taint")),
    )
    expect(f"the initramfs holds {path}: {values('file')}", values("file") == [path])
    # The kernel's own check is weak (modversions CRCs matched across 55 and 56, see the lab
    # report §5), so the build for this kernel is identified by its vermagic and its bytes.
    expect(
        f"its vermagic starts with {kver}: {values('vermagic')}",
        len(values("vermagic")) == 1 and values("vermagic")[0].startswith(f"{kver} "),
    )
    expect(
        f"its sha256 is the hook-installed file's {sha256}: {values('sha256')}",
        values("sha256") == [sha256],
    )
    if found:
        found.append(result.describe())
    return found


# -- the demonstration -----------------------------------------------------------------------------


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _show_hook_lines(run: AptRun) -> None:
    for line in run.result.output.splitlines():
        if "dkmshooks" in line or "update-initramfs" in line:
            print(f"    apt| {line}")


def _show_proof(result: Boot) -> None:
    print(f"    qemu exited {result.rc} after {result.seconds:.1f} s; the guest printed:")
    for key, value in result.proof.lines:
        print(f"    guest| {key} {value}")


def demonstrate(out: Path) -> int:
    started = time.monotonic()
    failures: list[str] = []
    try:
        qemu: str | None = find_qemu()
    except QemuUnavailable as e:
        qemu = None
        _say(f"LIGHTER VARIANT: qemu cannot start here ({e}); the kernels are NOT booted")
    _say("Debian 12 chroot (cached debootstrap base) with dkmshooks and dkms_test/1.0")
    with debian_with_module(prefix="boot-proof-") as debian:
        print(f"    {debian.chroot.path} ready after {time.monotonic() - started:.0f} s")
        for step, kver in enumerate((OLD, NEW)):
            what = "install" if step == 0 else "upgrade to"
            _say(f"apt-get {what} {image(kver)} {headers(kver)} (in the chroot)")
            t0 = time.monotonic()
            run = install_kernel(debian, kver)
            _show_hook_lines(run)
            print(f"    apt-get exited {run.result.rc} in {time.monotonic() - t0:.0f} s")
            problems = problems_after_install(debian, kver, run)
            failures += problems
            if problems:
                print("\n".join(problems))
                break
            listed = debian.run("lsinitramfs", f"/boot/initrd.img-{kver}").check().output
            for line in listed.splitlines():
                if f"{MODULE}.ko" in line:
                    print(f"    lsinitramfs /boot/initrd.img-{kver}: {line}")
            if qemu is None:
                continue
            _say(f"boot /boot/vmlinuz-{kver} with /boot/initrd.img-{kver} under qemu (TCG)")
            result = boot_kernel(debian, kver, qemu, out)
            _show_proof(result)
            problems = problems_in_boot(result, kver, installed_sha256(debian, kver))
            failures += problems
            if problems:
                print("\n".join(problems))
                break
            print(f"    PROOF: {MODULE} {VERSION} loaded in the booted {kver} kernel")
        _say("the unified rebuild log of these apt runs: dkmshooks log (in the chroot)")
        print(debian.run("dkmshooks", "log").output, end="")
        log = debian.file("/var/log/dkmshooks/rebuild.log")
        if log.is_file():
            shutil.copy(log, out / "rebuild.log")
    elapsed = time.monotonic() - started
    if failures:
        _say(f"FAILED after {elapsed:.0f} s ({len(failures)} problems above)")
        return 1
    if qemu is None:
        _say(f"done in {elapsed:.0f} s: LIGHTER VARIANT (rebuilt and in the initramfs, not booted)")
        print(f"    rebuild.log: {out}")
    else:
        _say(f"done in {elapsed:.0f} s: {MODULE} loads in the booted {OLD} and {NEW} kernels")
        print(f"    serial console logs and rebuild.log: {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=REPO / "build" / "boot-proof")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("boot-proof: run as root (debootstrap, chroot and apt need it)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    return demonstrate(args.out)


if __name__ == "__main__":
    sys.exit(main())
