"""The host side of the crash tests: a sandbox holding a two-module package, pictures of its
state (taken inside the sandbox by probe.py), saving and restoring that state between trials, and
the invariants a crash at any instant must keep.

A *sweep* runs one command again and again with DKMSHOOKS_FAULT=*:n (dkmshooks/faults.py), so the
n-th crash point it reaches SIGKILLs it, for n = 1, 2, ... until the command finishes unharmed.
After each kill the state must be consistent (`crash_problems`), and re-running the same command
must reach exactly the state a run without a crash reaches (`completion_problems`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from integration.sandbox import OVERLAYS, Result, Sandbox
from integration.sources import write_source_tree

ARCH = os.uname().machine
PROBE = Path(__file__).resolve().parent / "probe.py"
SWARM = Path(__file__).resolve().parent / "swarm.py"
MODULE, VERSION = "crash_test", "2.0"
KOS = ("crash_a", "crash_b")
# Debian's override of DEST_MODULE_LOCATION (dkms's override_dest_module_location)
DEST = "updates/dkms"
ORIGINAL = "kernel/drivers/crash_a.ko"

CONF = f"""\
PACKAGE_NAME="{MODULE}"
PACKAGE_VERSION="{{version}}"
MAKE="{{make}}"
BUILT_MODULE_NAME[0]="crash_a"
DEST_MODULE_LOCATION[0]="/kernel/extra"
BUILT_MODULE_NAME[1]="crash_b"
DEST_MODULE_LOCATION[1]="/kernel/extra"
AUTOINSTALL="yes"
"""

_KILLED_AT = re.compile(r"dkmshooks: fault injection: SIGKILL at (\S+)")
_STATUS = re.compile(r"^(\S+?)/(\S+?)(?:, (\S+), (\S+))?: (added|built|installed|broken)(.*)$")


@dataclass(frozen=True)
class Picture:
    tree: dict[str, str]  # /var/lib/dkms, relative paths -> "D" | "L:target" | "F[:hash]"
    lib: dict[str, str]  # /lib/modules/<kver>
    deps: list[str] | None  # modules.dep lines
    state: dict[str, str]  # /var/lib/dkmshooks
    status_rc: int
    status: str

    def ko_hashes(self) -> set[str]:
        return {
            v[2:]
            for k, v in [*self.tree.items(), *self.lib.items()]
            if v.startswith("F:") and ".ko" in k and not k.endswith(".origin")
        }

    def normalized(self) -> dict[str, object]:
        """What must be equal between a run that crashed and was re-run and one that did not:
        everything but scratch (dot entries, build/, make.log, which a re-run that finds the work
        already done may leave for `dkms remove` to sweep) and the per-transaction records."""
        return {
            "tree": {k: v for k, v in self.tree.items() if not is_scratch(k)},
            "lib": self.lib,
            "deps": self.deps,
            "pending": {k: v for k, v in self.state.items() if k.startswith("pending")},
            "status": self.status,
        }


def is_scratch(rel: str) -> bool:
    parts = rel.split("/")
    return (
        any(p.startswith(".") for p in parts)
        or (len(parts) >= 3 and parts[2] == "build")
        or parts[-1] == "make.log"
    )


@dataclass
class Trial:
    n: int
    point: str
    problems: list[str] = field(default_factory=list)


class Lab:
    def __init__(self, sandbox: Sandbox, kver: str, dkmshooks: Path) -> None:
        self.sb = sandbox
        self.kver = kver
        self.dkmshooks = dkmshooks
        self.saved = sandbox.root / "saved"

    # -- running -----------------------------------------------------------------------------

    def run(
        self, argv: Sequence[str], *, fault: str | None = None, env: Mapping[str, str] | None = None
    ) -> Result:
        extra = dict(env or {})
        if fault:
            extra["DKMSHOOKS_FAULT"] = fault
        return self.sb.run(list(argv), env=extra, timeout=300)

    def dkms(self, *args: str, fault: str | None = None) -> Result:
        return self.run([str(self.sb.dkms_path), *args], fault=fault)

    def sh(self, script: str) -> str:
        result = self.sb.run(["bash", "-c", f"set -e\n{script}"], timeout=300)
        assert result.rc == 0, f"sandbox setup failed ({result.rc}):\n{script}\n{result.output}"
        return result.output

    def swarm(self, jobs: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
        """Run jobs ({"argv", "env", "delay"}) at once inside one sandbox entry (swarm.py)."""
        out = self.sb.check([sys.executable, str(SWARM), json.dumps(list(jobs))])
        results: list[dict[str, object]] = json.loads(out)
        return results

    # -- state -------------------------------------------------------------------------------

    def picture(self) -> Picture:
        return self.run_and_picture(None)[1]

    def run_and_picture(
        self, argv: Sequence[str] | None, *, fault: str | None = None
    ) -> tuple[Result, Picture]:
        """Run argv (if any) and take a picture afterwards, in one sandbox entry."""
        spec: dict[str, object] = {
            "trees": ["/var/lib/dkms", f"/lib/modules/{self.kver}", "/var/lib/dkmshooks"],
            "deps": [self.kver],
            "status": [str(self.sb.dkms_path), "status"],
        }
        if argv is not None:
            spec["run"] = {"argv": list(argv), "env": {"DKMSHOOKS_FAULT": fault} if fault else {}}
        out = self.sb.check([sys.executable, str(PROBE), json.dumps(spec)])
        data = json.loads(out)
        ran = data.get("run", {"rc": 0, "output": ""})
        result = Result(tuple(argv or ()), ran["rc"], ran["output"])
        trees = data["trees"]
        lib = {
            k: v
            for k, v in trees[f"/lib/modules/{self.kver}"].items()
            if k.split("/")[0] not in ("build", "source")
        }
        return result, Picture(
            tree=trees["/var/lib/dkms"],
            lib=lib,
            deps=data["deps"][self.kver],
            state=trees["/var/lib/dkmshooks"],
            status_rc=data["status"]["rc"],
            status=data["status"]["output"],
        )

    def save(self, name: str) -> None:
        """Keep the sandbox's upper layers (no command is running: nothing is mounted)."""
        target = self.saved / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for layer, _ in OVERLAYS:
            _copy_contents(self.sb.root / layer / "upper", target / layer)

    def restore(self, name: str) -> None:
        for layer, _ in OVERLAYS:
            upper = self.sb.root / layer / "upper"
            for child in upper.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            _copy_contents(self.saved / name / layer, upper)

    # -- sweeps ------------------------------------------------------------------------------

    def sweep(
        self, argv: Sequence[str], start: str, *, limit: int = 80, gone_ok: bool = False
    ) -> list[Trial]:
        """Crash `argv` at each of its crash points in turn, starting from saved state `start`;
        return one Trial per point with the invariants it broke. With `gone_ok`, a re-run may
        find the module already gone from the tree (exit 3, as a second `dkms remove` does)."""
        self.restore(start)
        before = self.picture()
        clean, after = self.run_and_picture(argv)
        assert clean.rc == 0, f"{list(argv)} fails without a crash:\n{clean.output}"
        trials: list[Trial] = []
        for n in range(1, limit + 1):
            self.restore(start)
            crashed, mid = self.run_and_picture(argv, fault=f"*:{n}")
            if crashed.rc != -9:
                assert crashed.rc == clean.rc, crashed.output
                assert n > 1, f"{list(argv)} never reached a crash point"
                return trials
            found = _KILLED_AT.search(crashed.output)
            trial = Trial(n, found.group(1) if found else "?")
            trial.problems += crash_problems(mid, before, after, self.kver)
            again, final = self.run_and_picture(argv)
            gone = gone_ok and again.rc == 3 and "is not located in the DKMS tree" in again.output
            if again.rc != clean.rc and not gone:
                trial.problems.append(
                    f"re-run exited {again.rc}, not {clean.rc}:\n{again.output.strip()}"
                )
            trial.problems += completion_problems(final, after)
            trials.append(trial)
        raise AssertionError(f"{list(argv)} reached more than {limit} crash points")


def _copy_contents(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if any(src.iterdir()):
        # cp -a: overlayfs whiteouts are device nodes and opaque dirs carry xattrs
        subprocess.run(["cp", "-a", f"{src}/.", str(dest)], check=True)


def parse_status(text: str) -> dict[tuple[str, str, str, str], tuple[str, tuple[str, ...]]]:
    """{(module, version, kver, arch): (state, extras)} from `dkms status` output."""
    found = {}
    for line in text.splitlines():
        match = _STATUS.match(line)
        if match:
            module, version, kver, arch, state, rest = match.groups()
            extras = tuple(re.findall(r"\(([^)]*)\)", rest))
            found[(module, version, kver or "", arch or "")] = (state, extras)
    return found


def crash_problems(mid: Picture, before: Picture, after: Picture, kver: str) -> list[str]:
    """What a crash must never leave: a module file that is neither the old nor the new one, a
    lost original module, a `dkms status` that errs, says broken, or says what is not so."""
    problems = []
    good = before.ko_hashes() | after.ko_hashes()
    for where, entries in (("/var/lib/dkms", mid.tree), (f"/lib/modules/{kver}", mid.lib)):
        for rel, kind in entries.items():
            name = rel.rsplit("/", 1)[-1]
            if is_scratch(rel) or ".ko" not in name or name.endswith(".origin"):
                continue
            if kind.startswith("F:") and kind[2:] not in good:
                problems.append(f"{where}/{rel} is half-written (matches no complete module)")
    original = before.lib.get(ORIGINAL) or after.lib.get(ORIGINAL)
    if original and original not in [*mid.lib.values(), *mid.tree.values()]:
        problems.append(f"the original {ORIGINAL} is lost")
    if mid.status_rc != 0 or re.search(r"Error|Traceback|broken", mid.status):
        problems.append(f"dkms status fails or reports breakage:\n{mid.status}")
    problems += untrue_status(mid, kver, good)
    return problems


def untrue_status(pic: Picture, kver: str, good: set[str]) -> list[str]:
    """Recompute the state of MODULE/VERSION on kver from the files and compare with the status."""
    problems = []
    module_dir = f"{MODULE}/{VERSION}/{kver}/{ARCH}/module"
    built = pic.tree.get(module_dir) == "D"
    if built:
        for ko in KOS:
            if pic.tree.get(f"{module_dir}/{ko}.ko", "F:missing")[2:] not in good:
                problems.append(f"{module_dir} exists without a complete {ko}.ko")
    linked = pic.tree.get(f"{MODULE}/kernel-{kver}-{ARCH}") == f"L:{VERSION}/{kver}/{ARCH}"
    added = pic.tree.get(f"{MODULE}/{VERSION}/source", "").startswith("L:")
    status = parse_status(pic.status)
    if not added:
        if any(key[0] == MODULE for key in status):
            problems.append(f"status lists {MODULE} though it is not in the tree:\n{pic.status}")
        return problems
    truth = "installed" if built and linked else "built" if built else "added"
    key = (MODULE, VERSION, kver, ARCH) if built else (MODULE, VERSION, "", "")
    state, extras = status.get(key, ("(no line)", ()))
    if state != truth:
        problems.append(f"status says {state}, the files say {truth}:\n{pic.status}")
        return problems
    if built:
        has_original = pic.tree.get(f"{MODULE}/original_module/{kver}/{ARCH}") == "D"
        if ("Original modules exist" in extras) != has_original:
            problems.append(f"status is wrong about original modules:\n{pic.status}")
    if truth == "installed":
        differs = any(
            pic.lib.get(f"{DEST}/{ko}.ko") != pic.tree.get(f"{module_dir}/{ko}.ko") for ko in KOS
        )
        if ("Differences between built and installed modules" in extras) != differs:
            problems.append(f"status is wrong about the installed copies:\n{pic.status}")
    return problems


def completion_problems(final: Picture, after: Picture) -> list[str]:
    want, got = after.normalized(), final.normalized()
    problems = []
    for part in want:
        if want[part] != got[part]:
            problems.append(
                f"after the re-run, {part} differs from a run without a crash:\n"
                f"  expected: {_short(want[part], got[part])}\n"
                f"  got:      {_short(got[part], want[part])}"
            )
    return problems


def _short(value: object, other: object) -> str:
    if isinstance(value, dict) and isinstance(other, dict):
        return repr({k: v for k, v in value.items() if other.get(k) != v})
    return repr(value)


def make_package(directory: Path, version: str, make: str = "") -> Path:
    """crash_test-<version>: two modules, so a crash can fall between them."""
    return write_source_tree(
        directory / f"{MODULE}-{version}",
        CONF.format(version=version, make=make),
        KOS,
        version=version,
    )


def prepare(sb: Sandbox, kver: str, dkmshooks: Path, workdir: Path) -> Lab:
    """A kernel whose image is "installed" (modules.order, kernel/, /boot/vmlinuz, a modules.dep
    with one module of its own: crash_a 1.0, which dkms must archive and restore), and
    crash_test/2.0 added and built for it. Saved as "built", "installed" and "added".

    The modules are compiled once, here, by kbuild; crash_test's MAKE then copies those
    (unsigned, unstripped) .ko files into place, so each of the many build trials exercises
    every step dkms takes around MAKE (log, checks, strip, sign, staging) at a fraction of the
    cost of kbuild, which the integration tier exercises."""
    lab = Lab(sb, kver, dkmshooks)
    old = make_package(workdir, "1.0")
    new = make_package(workdir, VERSION, make="cp prebuilt/crash_a.ko prebuilt/crash_b.ko .")
    sb.copy_in(old, f"/usr/src/{MODULE}-1.0")
    sb.copy_in(new, f"/usr/src/{MODULE}-{VERSION}")
    lab.sh(
        f"""
        K={kver}; OLD=/usr/src/{MODULE}-1.0; NEW=/usr/src/{MODULE}-{VERSION}
        mkdir $NEW/prebuilt && cp $NEW/*.c $NEW/Makefile $NEW/prebuilt/
        make -C /lib/modules/$K/build M=$OLD modules >/dev/null & old=$!
        make -C /lib/modules/$K/build M=$NEW/prebuilt modules >/dev/null & new=$!
        wait $old; wait $new
        find $NEW/prebuilt -type f ! -name '*.ko' -delete
        mkdir -p /lib/modules/$K/kernel/drivers
        cp $OLD/crash_a.ko /lib/modules/$K/{ORIGINAL}
        rm -rf $OLD
        echo {ORIGINAL} > /lib/modules/$K/modules.order
        depmod -a $K
        touch /boot/vmlinuz-$K
        dkms add {MODULE}/{VERSION} >/dev/null
        dkms build {MODULE}/{VERSION} -k $K >/dev/null
        """
    )
    lab.save("built")
    lab.sh(f"dkms install {MODULE}/{VERSION} -k {kver} >/dev/null")
    lab.save("installed")
    lab.restore("built")
    lab.sh(f"dkms unbuild {MODULE}/{VERSION} -k {kver} >/dev/null")
    lab.save("added")
    return lab


def upper_state(sb: Sandbox) -> dict[str, str]:
    """Everything the sandbox ever wrote (its overlay upper layers), by path as seen inside."""
    found: dict[str, str] = {}
    for layer, target in OVERLAYS:
        upper = sb.root / layer / "upper"
        for dirpath, dirnames, filenames in os.walk(upper):
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                inside = target + "/" + str(path.relative_to(upper))
                st = path.lstat()
                if path.is_symlink():
                    found[inside] = "L:" + os.readlink(path)
                elif path.is_dir():
                    found[inside] = "D"
                elif path.is_file():
                    found[inside] = f"F:{st.st_size}:{hash(path.read_bytes())}"
                else:
                    found[inside] = f"S:{st.st_mode:o}:{st.st_rdev}"
    return found


def changed_outside(
    before: Mapping[str, str], after: Mapping[str, str], allowed: Sequence[str]
) -> list[str]:
    """Paths written, changed or deleted between two upper_state()s outside `allowed` prefixes."""
    return sorted(
        path
        for path in set(before) | set(after)
        if before.get(path) != after.get(path)
        and not any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)
    )
