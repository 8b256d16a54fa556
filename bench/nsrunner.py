"""Runs commands for the benchmark harness inside one private mount namespace and times them.

Started by bench.py as `unshare --mount --propagation private sh -c '<overlay mounts>; exec
python3 nsrunner.py'`, so the mounts (and the cost of setting them up) are outside every timing.
Protocol: one JSON request per line on stdin, one JSON reply per line on stdout.

    request: {"argv": [...], "env": {...}, "cwd": "/", "keep": 4000}
    reply:   {"rc": 0, "wall": 0.012, "user": 0.008, "sys": 0.003, "others": 0.001,
              "out": "...last bytes..."}

`wall` is perf_counter around fork+exec+wait; `user`/`sys` come from wait4's rusage, which
includes every descendant the child waited for (make, gcc, ...), i.e. the CPU-seconds of a build;
`others` is the CPU-seconds the rest of the machine used meanwhile (from /proc/stat).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time


def busy_seconds() -> float:
    """CPU-seconds the whole machine has spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_one(req: dict[str, object]) -> dict[str, object]:
    argv = [str(a) for a in req["argv"]]  # type: ignore[attr-defined]
    env = {str(k): str(v) for k, v in dict(req.get("env") or {}).items()}  # type: ignore[call-overload]
    cwd = str(req.get("cwd") or "/")
    keep = int(req.get("keep") or 4000)  # type: ignore[call-overload]
    with tempfile.TemporaryFile() as out:
        busy = busy_seconds()
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # child: no Python-level work between fork and exec
            try:
                # Python ignores SIGPIPE and ignored signals survive exec; shells expect default
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
                os.chdir(cwd)
                fd = os.open(os.devnull, os.O_RDONLY)
                os.dup2(fd, 0)
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - start
        busy = busy_seconds() - busy
        out.seek(0, os.SEEK_END)
        size = out.tell()
        out.seek(max(0, size - keep))
        tail = out.read().decode("utf-8", errors="replace")
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "wall": wall,
        "user": usage.ru_utime,
        "sys": usage.ru_stime,
        # what everything else on the machine used meanwhile (the host is shared)
        "others": max(0.0, busy - usage.ru_utime - usage.ru_stime),
        "out": tail,
    }


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = run_one(json.loads(line))
        except Exception as exc:  # report, keep serving
            reply = {
                "rc": 125,
                "wall": 0.0,
                "user": 0.0,
                "sys": 0.0,
                "others": 0.0,
                "out": f"runner: {exc!r}",
            }
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
