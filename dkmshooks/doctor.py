"""`dkmshooks doctor`: for each installed kernel, what is missing and the command that fixes it."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from . import confcache, run, state
from .config import Config, load_config, log_path_for
from .console import note
from .engine import hook_session, plan_kernel
from .errors import DkmsError
from .status import Session


@dataclass(frozen=True)
class Finding:
    kernel: str
    problem: str
    fix: str


def headers_fix(distro: str, kver: str) -> str:
    if distro.startswith(("fedora", "rhel", "centos")):
        return f"dnf install kernel-devel-uname-r == {kver}"
    if distro.startswith("arch"):
        return "pacman -S the headers package of this kernel (e.g. linux-headers)"
    if distro.startswith("suse"):
        return f"zypper install kernel-devel (matching {kver})"
    return f"apt-get install linux-headers-{kver}"


def kernels_of(session: Session) -> list[str]:
    names: set[str] = set()
    try:
        names |= {n for n in os.listdir(session.layout.install_tree) if n[:1].isdigit()}
    except OSError:
        pass
    boot = session.layout.under("/boot")
    try:
        names |= {n[len("vmlinuz-") :] for n in os.listdir(boot) if n.startswith("vmlinuz-")}
    except OSError:
        pass
    return sorted(names)


def last_failures(session: Session, config: Config) -> dict[tuple[str, str], dict[str, object]]:
    """The last outcome per (module, kernel) in the unified log, where it was a failure."""
    path = log_path_for(session.layout, config)
    last: dict[tuple[str, str], dict[str, object]] = {}
    files = [*sorted(path.parent.glob(path.name + ".*"), reverse=True), path]
    for f in files:
        if f.suffix == ".lock":
            continue
        try:
            lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "module" in rec and "kernel" in rec:
                last[(str(rec["module"]), str(rec["kernel"]))] = rec
    return {k: v for k, v in last.items() if v.get("outcome") == "failed"}


def diagnose(session: Session, config: Config) -> list[Finding]:
    findings: list[Finding] = []
    layout, distro = session.layout, session.settings.distro
    arch = os.uname().machine
    failures = last_failures(session, config)
    for kver in kernels_of(session):
        facts = session.facts(kver)
        headers = facts.headers_complete
        image = facts.image_ready(layout)
        if not headers:
            findings.append(
                Finding(
                    kver,
                    "kernel headers are not installed; no module can be built",
                    headers_fix(distro, kver),
                )
            )
        if headers and not image:
            findings.append(
                Finding(
                    kver,
                    "only the headers are installed, not the kernel itself; built "
                    "modules wait for the image",
                    f"install the kernel image for {kver}, or remove its headers",
                )
            )
        pending = state.read_pending(layout, kver)
        if pending and headers and image:
            findings.append(
                Finding(
                    kver,
                    f"stale pending state ({pending.get('reason')}) although the kernel "
                    "is now complete",
                    f"dkmshooks trigger --kernel {kver}:image-added",
                )
            )
        plan = plan_kernel(session, kver, arch)
        for mv in plan.broken:
            findings.append(
                Finding(
                    kver,
                    f"{mv} is broken: its source directory or link is missing",
                    f"dkms remove {mv} --all  (or restore /usr/src/{mv.replace('/', '-')})",
                )
            )
        for module, version, exc in plan.bad_conf:
            findings.append(
                Finding(
                    kver,
                    f"{module}/{version}: dkms.conf no longer evaluates ({' '.join(exc.lines)})",
                    f"fix {layout.source_link(module, version)}/dkms.conf or the overrides "
                    f"in {layout.etc_dkms}",
                )
            )
        for c in plan.candidates:
            failure = failures.get((c.module, kver))
            if failure is not None:
                findings.append(
                    Finding(
                        kver,
                        f"{c.module}/{c.version} failed to build last time "
                        f"(see {failure.get('make_log') or 'dkmshooks log --failed'})",
                        f"fix the cause, then: dkms install {c.module}/{c.version} -k {kver}",
                    )
                )
            elif headers and image and not c.excluded:
                findings.append(
                    Finding(
                        kver,
                        f"{c.module}/{c.version} is not installed for this kernel",
                        f"dkms autoinstall -k {kver}",
                    )
                )
    findings += signing_findings(session)
    return findings


def signing_findings(session: Session) -> list[Finding]:
    cert = session.layout.default_mok_cert
    if not cert.is_file() or not shutil.which("mokutil"):
        return []
    proc = run.run(
        ["mokutil", "--test-key", str(cert)], check=False, capture=True, merge_stderr=True
    )
    if "is not enrolled" in proc.stdout:
        return [
            Finding(
                "-",
                f"the module signing certificate {cert} is not enrolled; Secure "
                "Boot will refuse the modules",
                f"mokutil --import {cert}  (then reboot and confirm)",
            )
        ]
    return []


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    parser = argparse.ArgumentParser(prog="dkmshooks doctor")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(argv)
    try:
        session = hook_session(environ)
        config = load_config(session.layout)
    except DkmsError as exc:
        note(" ".join(exc.lines))
        return 1
    confcache.for_layout(session.layout).read_only = True  # diagnosing changes nothing
    findings = diagnose(session, config)
    if opts.json:
        print(json.dumps({"schema": 1, "findings": [asdict(f) for f in findings]}, sort_keys=True))
    elif not findings:
        print("Everything is in order: every kernel has its headers, image and modules.")
    else:
        for f in findings:
            print(f"{f.kernel}: {f.problem}\n    fix: {f.fix}")
    return 1 if findings else 0
