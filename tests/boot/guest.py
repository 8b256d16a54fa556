"""Boot a Debian kernel under qemu with its real initramfs and read, from the serial console, what a
tiny init saw when it loaded a module.

The real initramfs (the one update-initramfs made in the chroot) is booted unchanged, followed by a
small newc cpio that adds only /dkmshooks-proof/{init,busybox}: the kernel unpacks concatenated
archives in order, and `rdinit=/dkmshooks-proof/init` runs our init instead of initramfs-tools' one.
Everything the init loads — the module, modules.dep, kmod's modprobe — therefore comes from the real
initramfs; the appended archive carries no module and no modules.dep.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
PROOF_DIR = "dkmshooks-proof"
MARK = "dkmshooks-proof:"
# TCG boots a stock Debian kernel to our init in about 2 s of guest time and 5 s of wall time on
# the 2-core lab VM; the /dev/kvm there (kvm_pvm) hangs a stock kernel forever, so KVM is opt-in.
ACCEL_VAR = "DKMSHOOKS_BOOT_ACCEL"
# Another qemu build, or a missing one to see the lighter variant of the demo.
QEMU_VAR = "DKMSHOOKS_BOOT_QEMU"
BOOT_TIMEOUT = 120.0

# busybox's applets for the shell work; modprobe is the real initramfs's own (kmod), so that a
# modprobe which cannot resolve the module through the initramfs's modules.dep fails the proof.
# The kernel's console output shares the serial line with ours, so every line we print carries
# MARK at its start and `quiet` keeps the kernel from writing between them.
GUEST_INIT = f"""#!/{PROOF_DIR}/busybox sh
P=/{PROOF_DIR}
$P/busybox mkdir -p $P/bin /proc /sys /dev
$P/busybox --install -s $P/bin
export PATH=$P/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() {{ echo "{MARK} $*"; }}
module=$(cat /proc/cmdline | tr ' ' '\\n' | sed -n 's/^dkmshooks.module=//p')
say begin
say uname-r $(uname -r)
say cmdline $(cat /proc/cmdline)
if [ -x /sbin/modprobe ]; then mp=/sbin/modprobe; else mp=$P/bin/modprobe; fi
say modprobe-binary $mp $(readlink -f $mp)
$mp --show-depends "$module" 2>&1 | while read -r line; do say show-depends "$line"; done
out=$($mp "$module" 2>&1)
say modprobe-rc $?
[ -n "$out" ] && echo "$out" | while read -r line; do say modprobe-output "$line"; done
grep "^$module " /proc/modules | while read -r line; do say proc-modules "$line"; done
dmesg | grep -e "$module:" -e "taint" | while read -r line; do say dmesg "$line"; done
[ -d /sys/module/$module ] && say sysfs-version $(cat /sys/module/$module/version)
[ -d /sys/module/$module ] && say sysfs-taint $(cat /sys/module/$module/taint)
for f in $(find /lib/modules/$(uname -r) -name "$module.ko*"); do
    say file $f
    say sha256 $(sha256sum $f | cut -d' ' -f1)
    say vermagic $(modinfo -F vermagic $f)
done
say kernel-tainted $(cat /proc/sys/kernel/tainted)
say end uptime $(cut -d' ' -f1 /proc/uptime)
sync
poweroff -f
"""


class QemuUnavailable(RuntimeError):
    """qemu cannot start at all here; nothing about the module was checked."""


def find_qemu() -> str:
    """The qemu binary, after checking it runs and offers TCG; QemuUnavailable otherwise."""
    wanted = os.environ.get(QEMU_VAR) or QEMU
    qemu = shutil.which(wanted)
    if qemu is None:
        raise QemuUnavailable(f"{wanted} is not installed (apt-get install qemu-system-x86)")
    try:
        proc = subprocess.run(
            [qemu, "-accel", "help"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise QemuUnavailable(f"{qemu} -accel help did not run: {e}") from e
    if proc.returncode != 0 or "tcg" not in proc.stdout.split():
        raise QemuUnavailable(
            f"{qemu} -accel help exited {proc.returncode} without offering tcg:\n"
            f"{proc.stdout}{proc.stderr}"
        )
    return qemu


def is_static_elf(path: Path) -> bool:
    """True for an ELF64 executable with no PT_INTERP: it runs without the guest's libc."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    endian = "<" if data[5] == 1 else ">"
    (phoff,) = struct.unpack_from(endian + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    pt_interp = 3
    return all(
        struct.unpack_from(endian + "I", data, phoff + i * phentsize)[0] != pt_interp
        for i in range(phnum)
    )


def _newc_member(name: str, mode: int, data: bytes, ino: int) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    member = header + encoded
    member += b"\0" * (-len(member) % 4)
    return member + data + b"\0" * (-len(data) % 4)


def proof_cpio(busybox: Path) -> bytes:
    """The archive appended to the real initramfs: a directory of its own (replacing /bin or /sbin
    would replace the real initramfs's merged-/usr symlinks), our init and a static busybox."""
    if not is_static_elf(busybox):
        raise ValueError(f"{busybox} is not a static ELF executable (install busybox-static)")
    members = [
        _newc_member(PROOF_DIR, 0o040755, b"", 1),
        _newc_member(f"{PROOF_DIR}/init", 0o100755, GUEST_INIT.encode(), 2),
        _newc_member(f"{PROOF_DIR}/busybox", 0o100755, busybox.read_bytes(), 3),
        _newc_member("TRAILER!!!", 0, b"", 0),
    ]
    archive = b"".join(members)
    return archive + b"\0" * (-len(archive) % 512)


@dataclass(frozen=True)
class Proof:
    """What the guest printed after MARK, one (key, value) per line, in order."""

    lines: tuple[tuple[str, str], ...]

    def all(self, key: str) -> list[str]:
        return [value for k, value in self.lines if k == key]

    def one(self, key: str) -> str:
        values = self.all(key)
        assert len(values) == 1, f"expected one {key!r} line from the guest, got {values}"
        return values[0]

    @property
    def complete(self) -> bool:
        keys = [k for k, _ in self.lines]
        return "begin" in keys and "end" in keys


def parse_proof(console: str) -> Proof:
    lines = []
    for raw in console.splitlines():
        # The first line follows SeaBIOS's terminal escapes on the same line.
        at = raw.find(MARK)
        if at < 0:
            continue
        key, _, value = raw[at + len(MARK) :].strip("\r\n\0 ").partition(" ")
        lines.append((key, value.strip()))
    return Proof(tuple(lines))


@dataclass(frozen=True)
class Boot:
    argv: tuple[str, ...]
    console: str  # everything the guest wrote to ttyS0 (and qemu to stdout/stderr)
    rc: int | None  # None: killed after the timeout
    seconds: float
    proof: Proof

    def describe(self) -> str:
        ending = "timed out" if self.rc is None else f"exited {self.rc}"
        return (
            f"qemu {ending} after {self.seconds:.1f} s: {' '.join(self.argv)}\n"
            f"--- serial console (last 6000 characters) ---\n{self.console[-6000:]}"
        )


def boot(
    qemu: str,
    kernel: Path,
    initrd: Path,
    busybox: Path,
    module: str,
    work: Path,
    timeout: float = BOOT_TIMEOUT,
) -> Boot:
    """Boot kernel with initrd + the proof archive; the console is also kept in work/."""
    work.mkdir(parents=True, exist_ok=True)
    combined = work / f"{initrd.name}+proof"
    with combined.open("wb") as out:
        with initrd.open("rb") as real:
            shutil.copyfileobj(real, out)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(proof_cpio(busybox))
    accel = os.environ.get(ACCEL_VAR) or "tcg"
    append = f"console=ttyS0 panic=-1 quiet rdinit=/{PROOF_DIR}/init dkmshooks.module={module}"
    argv = (
        qemu,
        "-accel",
        accel,
        *(("-cpu", "host") if accel == "kvm" else ()),
        "-nographic",
        "-no-reboot",
        "-m",
        "512",
        "-kernel",
        str(kernel),
        "-initrd",
        str(combined),
        "-append",
        append,
    )
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
        rc: int | None = proc.returncode
        raw = proc.stdout
    except subprocess.TimeoutExpired as e:
        rc, raw = None, e.output or b""
    seconds = time.monotonic() - started
    console = raw.decode("utf-8", errors="replace")
    (work / f"console-{kernel.name}.log").write_text(console, encoding="utf-8")
    combined.unlink()
    return Boot(argv, console, rc, seconds, parse_proof(console))
