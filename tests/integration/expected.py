"""dkms 3.4's expected output, and the normalisation run_test.sh applies before comparing.

Only what upstream normalises is normalised: the `.tmp_<arch>_XXXXXX` staging directory, the MOK
key generation line (printed only by the first build in a fresh tree), openssl's non-critical
noise, and in make.log the timestamp, elapsed times and kbuild chatter. Everything else, including
empty lines and the interleaving of stdout and stderr, is compared byte for byte.
"""

from __future__ import annotations

import difflib
import os
import platform
import re

from .sandbox import Result, Sandbox

ARCH = platform.machine()

MOK_KEY = "/var/lib/dkms/mok.key"
MOK_CERT = "/var/lib/dkms/mok.pub"

_DROPPED_OUTPUT_LINES = (
    re.compile(
        r"^Certificate or key are missing, generating self signed certificate for MOK\.\.\.$"
    ),
    re.compile(r"^At main\.c:"),
    re.compile(r"^- SSL error:"),
)


def dest_dir(kver: str) -> str:
    """Where dkms installs on Debian, whatever DEST_MODULE_LOCATION says.

    Module files are plain `.ko` throughout: Debian 12's kernels do not compress modules, and with
    only their headers installed dkms finds no *.ko.{gz,xz,zst} under /lib/modules/K to copy the
    suffix from."""
    return f"/lib/modules/{kver}/updates/dkms"


def sign_file(kver: str) -> str:
    """dkms's default sign-file on Debian (`/usr/lib/linux-kbuild-${kernelver%.*}/...`), falling
    back to the one in the kernel's build tree, as in upstream's run_test.sh."""
    kbuild = f"/usr/lib/linux-kbuild-{kver.rsplit('.', 1)[0]}/scripts/sign-file"
    if os.path.isfile(kbuild) and os.access(kbuild, os.X_OK):
        return kbuild
    return f"/lib/modules/{kver}/build/scripts/sign-file"


def signing_prologue(kver: str) -> str:
    """Printed once per kernel before the first build; ends with a newline, so an f-string that
    continues with "\\n<next line>" reproduces the empty line dkms prints after it."""
    return (
        f"Sign command: {sign_file(kver)}\n"
        f"Signing key: {MOK_KEY}\n"
        f"Public certificate (MOK): {MOK_CERT}\n"
    )


def signing_message(module: str, version: str, ko: str | None = None) -> str:
    return f"Signing module /var/lib/dkms/{module}/{version}/build/{ko or module}.ko"


def created(module: str, version: str = "1.0") -> str:
    """What add prints once it has registered /usr/src/<module>-<version>."""
    return (
        f"Creating symlink /var/lib/dkms/{module}/{version}/source -> /usr/src/{module}-{version}\n"
    )


def default_make(module: str, version: str, kver: str) -> str:
    return (
        f"make -j1 KERNELRELEASE={kver} -C /lib/modules/{kver}/build "
        f"M=/var/lib/dkms/{module}/{version}/build"
    )


def normalize_output(text: str) -> str:
    text = re.sub(rf"/(\.tmp_{re.escape(ARCH)})_[^/]{{6}}/", r"/\1_XXXXXX/", text)
    lines = text.split("\n")
    kept = [line for line in lines if not any(p.search(line) for p in _DROPPED_OUTPUT_LINES)]
    return "\n".join(kept)


_MAKE_LOG_DROPPED_BEFORE_PATHS = (
    re.compile(r"warning: the compiler differs from the one used to build the kernel"),
    re.compile(r"  The kernel was built by:"),
    re.compile(r"  You are using:"),
    re.compile(r"make(\[[0-9]+\])?: (Entering|Leaving) directory"),
)
_MAKE_LOG_DROPPED_AFTER_PATHS = (
    re.compile(r"^  AR      built-in\.a$"),
    re.compile(r"^  Building modules, stage 2\.$"),
    re.compile(r"^  MODPOST Module\.symvers$"),
    re.compile(r"^  MODPOST [0-9]+ modules$"),
    re.compile(r"^  CC      \.module-common\.o$"),
    re.compile(r"^  BTF     dkms_(.*_)?test.ko$"),
    re.compile(
        r"Skipping BTF generation for (/var/lib/dkms/.*/)?dkms_(.*_)?test.ko "
        r"due to unavailability of vmlinux$"
    ),
    re.compile(r"^  CLEAN   \.tmp_versions$"),
)


def normalize_make_log(text: str) -> str:
    """A line-for-line port of run_test.sh's generalize_make_log (a sed script, in order)."""
    out = []
    for number, line in enumerate(text.split("\n"), start=1):
        if number == 2:
            line = "<timestamp>"
        if "# elapsed time:" in line:
            line = re.sub(r"[0-9]+:[0-9]+:[0-9]+", "<hh:mm:ss>", line, count=1)
        if any(p.search(line) for p in _MAKE_LOG_DROPPED_BEFORE_PATHS):
            continue
        line = line.replace(" [M] ", "     ", 1)
        if line.startswith("  "):
            line = re.sub(r"/var/lib/dkms/.*/", "", line, count=1)
        if any(p.search(line) for p in _MAKE_LOG_DROPPED_AFTER_PATHS):
            continue
        out.append(line)
    return "\n".join(out)


def _mismatch(what: str, rc: int, expected_rc: int, actual: str, expected: str) -> str:
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            "expected (dkms 3.4)",
            "actual",
        )
    )
    return (
        f"{what}\nexit code: expected {expected_rc}, got {rc}\n"
        f"--- output diff ---\n{diff or '(output identical)'}\n"
        f"--- actual output ---\n{actual}"
    )


def expect(result: Result, rc: int, output: str) -> None:
    """The command exited with `rc` and printed exactly `output` (stdout+stderr, normalised)."""
    actual = normalize_output(result.output)
    assert (result.rc, actual) == (rc, output), _mismatch(
        f"dkms differs from 3.4 for: {' '.join(result.argv)}", result.rc, rc, actual, output
    )


def expect_make_log(sandbox: Sandbox, path: str, output: str) -> None:
    actual = normalize_make_log(sandbox.read_text(path))
    assert actual == output, _mismatch(f"make.log differs from 3.4: {path}", 0, 0, actual, output)


def status_lines(sandbox: Sandbox, module: str) -> str:
    """`dkms status | grep "^<module>/"`, as run_test.sh's run_status_with_expected_output."""
    result = sandbox.dkms("status")
    assert result.rc == 0, f"dkms status exited {result.rc}:\n{result.output}"
    return "".join(
        line + "\n" for line in result.output.splitlines() if line.startswith(f"{module}/")
    )
