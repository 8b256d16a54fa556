"""`dkmshooks plan`: what the engine would do for a kernel, without doing anything."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from . import confcache
from .console import note
from .engine import hook_session, latest_versions, plan_kernel
from .errors import DkmsError
from .status import Session


def describe(
    session: Session,
    kver: str,
    arch: str,
    registered: tuple[list[tuple[str, str]], list[str]] | None = None,
) -> dict[str, Any]:
    facts = session.facts(kver)
    headers = facts.headers_complete
    image = facts.image_ready(session.layout)
    plan = plan_kernel(session, kver, arch, registered=registered)
    actions: list[dict[str, Any]] = []
    for module in plan.already:
        actions.append({"module": module, "action": "already-installed"})
    for module, version, exc in plan.bad_conf:
        actions.append(
            {
                "module": module,
                "version": version,
                "action": "bad-conf",
                "message": " ".join(exc.lines),
            }
        )
    for mv in plan.broken:
        module, _, version = mv.partition("/")
        actions.append({"module": module, "version": version, "action": "broken"})
    for c in plan.candidates:
        built = session.tree.is_built(c.module, c.version, kver, arch)
        if c.excluded:
            action = "skip-excluded"
        elif not headers and not built:
            action = "defer-no-headers"
        elif not image:
            action = "defer-no-image" if built else "build, defer-install"
        else:
            action = "install" if built else "build+install"
        actions.append(
            {"module": c.module, "version": c.version, "action": action, "depends": list(c.depends)}
        )
    return {"kernel": kver, "arch": arch, "headers": headers, "image": image, "actions": actions}


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    parser = argparse.ArgumentParser(prog="dkmshooks plan")
    parser.add_argument(
        "-k",
        "--kernel",
        action="append",
        default=[],
        help="kernel release (repeatable; default: every kernel in the install tree)",
    )
    parser.add_argument("--json", action="store_true", help="machine output on stdout")
    opts = parser.parse_args(argv)
    try:
        session = hook_session(environ)
    except DkmsError as exc:
        note(" ".join(exc.lines))
        return 1
    confcache.for_layout(session.layout).read_only = True  # a plan changes nothing on disk
    arch = os.uname().machine
    kernels = opts.kernel
    if not kernels:
        try:
            kernels = sorted(os.listdir(session.layout.install_tree))
        except OSError:
            kernels = []
    registered = latest_versions(session)  # once for every kernel
    result = [describe(session, k, arch, registered) for k in kernels]
    if opts.json:
        print(json.dumps({"schema": 1, "kernels": result}, sort_keys=True))
        return 0
    for k in result:
        ready = f"headers {'yes' if k['headers'] else 'NO'}, image {'yes' if k['image'] else 'NO'}"
        print(f"{k['kernel']} ({k['arch']}): {ready}")
        if not k["actions"]:
            print("  nothing registered")
        for a in k["actions"]:
            mv = a["module"] + (f"/{a['version']}" if a.get("version") else "")
            deps = f" (after {', '.join(a['depends'])})" if a.get("depends") else ""
            print(f"  {mv:40} {a['action']}{deps}")
    return 0
