"""Runs *inside* a sandbox (tests/integration/sandbox.py) and prints, as JSON, what is on disk
there: the host cannot see the sandbox's merged overlay view, so the tests ask this script.

argv[1] is a JSON object:
  run:     {"argv": [...], "env": {...}} to run first (its exit status and output are returned:
           a test then needs one sandbox entry per step, not two)
  trees:   directories to list (every entry, symlinks not followed; .ko files hashed)
  deps:    kernel releases whose modules.dep lines to return
  status:  argv of a `dkms status` to run, or null
Standard library only: it runs under whatever Python the sandbox finds.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys


def describe(path: str) -> str:
    if os.path.islink(path):
        return "L:" + os.readlink(path)
    if os.path.isdir(path):
        return "D"
    if ".ko" in os.path.basename(path) or path.endswith((".key", ".pub", ".der")):
        with open(path, "rb") as fh:
            return "F:" + hashlib.sha256(fh.read()).hexdigest()[:16]
    return "F"


def listing(top: str) -> dict[str, str]:
    found: dict[str, str] = {}
    if not os.path.lexists(top):
        return found
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, top)] = describe(path)
    return found


def main() -> None:
    spec = json.loads(sys.argv[1])
    out: dict[str, object] = {}
    if spec.get("run"):
        proc = subprocess.run(
            spec["run"]["argv"],
            env={**os.environ, **spec["run"].get("env", {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        out["run"] = {"rc": proc.returncode, "output": proc.stdout.decode("utf-8", "replace")}
    out["trees"] = {top: listing(top) for top in spec.get("trees", [])}
    out["deps"] = {}
    for kver in spec.get("deps", []):
        try:
            with open(f"/lib/modules/{kver}/modules.dep", encoding="utf-8") as fh:
                out["deps"][kver] = sorted(fh.read().splitlines())  # type: ignore[index]
        except OSError:
            out["deps"][kver] = None  # type: ignore[index]
    if spec.get("status"):
        proc = subprocess.run(
            spec["status"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        out["status"] = {"rc": proc.returncode, "output": proc.stdout.decode("utf-8", "replace")}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
