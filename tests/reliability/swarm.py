"""Runs *inside* a sandbox: start several commands at once (each after its own delay), wait
for all of them, print their exit status, output and run time as JSON. One mount namespace for
all of them, so they share the tree, its flock and the rebuild log as on a real machine.

argv[1]: JSON list of {"argv": [...], "env": {...}, "delay": seconds}. Standard library only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time


def main() -> None:
    jobs = json.loads(sys.argv[1])
    start = time.monotonic()
    running = []
    for job in sorted(jobs, key=lambda j: j.get("delay", 0)):
        wait = start + job.get("delay", 0) - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        out = tempfile.TemporaryFile()  # noqa: SIM115 (closed when this process exits)
        proc = subprocess.Popen(
            job["argv"],
            env={**os.environ, **job.get("env", {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        running.append((job, proc, out, time.monotonic()))
    ended: dict[int, float] = {}

    def wait(index: int, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        ended[index] = time.monotonic()

    waiters = [
        threading.Thread(target=wait, args=(i, proc)) for i, (_, proc, _, _) in enumerate(running)
    ]
    for thread in waiters:
        thread.start()
    for thread in waiters:
        thread.join()
    results = []
    for index, (job, proc, out, began) in enumerate(running):
        rc = proc.returncode
        out.seek(0)
        results.append(
            {
                "argv": job["argv"],
                "rc": rc,
                "output": out.read().decode("utf-8", "replace"),
                "elapsed": ended[index] - began,
            }
        )
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
