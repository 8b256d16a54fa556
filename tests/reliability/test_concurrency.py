"""Concurrency: many invocations at once end with a consistent tree and log, and a waiter is
told who holds the lock and gives up after a bounded time."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from integration.conftest import KERNELS

from dkmshooks import rebuildlog

from .lab import ARCH, DEST, KOS, MODULE, ORIGINAL, VERSION, Lab, crash_problems, parse_status

pytestmark = pytest.mark.reliability

REBUILD_LOG = "/var/log/dkmshooks/rebuild.log"


def outputs(results: list[dict[str, object]]) -> str:
    return "\n".join(f"{r['argv']} -> {r['rc']}:\n{r['output']}" for r in results)


def log_records(lab: Lab) -> list[rebuildlog.LogRecord]:
    if not lab.sb.exists(REBUILD_LOG):
        return []
    lines = lab.sb.read_text(REBUILD_LOG).splitlines()
    return [rebuildlog.LogRecord.from_json(line) for line in lines]  # raises on a torn line


def test_simultaneous_hooks_for_one_kernel_rebuild_once(lab: Lab) -> None:
    """apt's header_postinst, the image postinst and kernel-install all fire for one kernel in
    one transaction, here eight times at once: one build, one install, one log record."""
    lab.restore("added")
    events = ["headers-added"] * 5 + ["image-added"] * 3
    jobs = [
        {
            "argv": [
                *("dkmshooks", "trigger", "--kernel", f"{lab.kver}:{event}"),
                *("--transaction", "apt-42", "--source", "apt"),
            ],
            "delay": 0.02 * i,
        }
        for i, event in enumerate(events)
    ]
    results = lab.swarm(jobs)
    assert all(r["rc"] == 0 for r in results), outputs(results)
    assert all(  # (whether any had to wait depends on timing; the waiter test forces it)
        "held by pid" in line
        for r in results
        for line in str(r["output"]).splitlines()
        if "waiting for the lock" in line
    ), outputs(results)
    picture = lab.picture()
    assert parse_status(picture.status) == {
        (MODULE, VERSION, lab.kver, ARCH): ("installed", ("Original modules exist",))
    }, picture.status
    installed = [r for r in log_records(lab) if r.module == MODULE and r.outcome == "installed"]
    assert len(installed) == 1, installed


def test_install_and_remove_of_one_module_at_once(lab: Lab) -> None:
    """`dkms install` and `dkms remove` racing: whichever runs last wins, wholly."""
    lab.restore("built")
    before = lab.picture()
    assert lab.dkms("install", f"{MODULE}/{VERSION}", "-k", lab.kver).rc == 0
    installed = lab.picture()
    for trial in range(2):
        lab.restore("built")
        jobs = []
        for i in range(6):
            action = ["install", f"{MODULE}/{VERSION}", "-k", lab.kver]
            if (i + trial) % 2:
                action = ["remove", f"{MODULE}/{VERSION}", "--all"]
            jobs.append({"argv": ["dkms", *action], "delay": 0.03 * i})
        results = lab.swarm(jobs)
        for r in results:
            ok = r["rc"] == 0 or (
                r["rc"] == 3 and "is not located in the DKMS tree" in str(r["output"])
            )
            assert ok, outputs(results)
        final = lab.picture()
        assert not crash_problems(final, before, installed, lab.kver), outputs(results)
        status = parse_status(final.status)
        ours = {f"{DEST}/{ko}.ko" for ko in KOS}
        if status:
            assert status == {
                (MODULE, VERSION, lab.kver, ARCH): ("installed", ("Original modules exist",))
            }
            assert ours <= set(final.lib)
            assert final.deps == installed.deps
        else:  # removed: every trace gone, the kernel's own module back in place
            assert not any(k.startswith(f"{MODULE}/") for k in final.tree), final.tree
            assert not ours & set(final.lib)
            assert final.lib[ORIGINAL] == before.lib[ORIGINAL]
            assert final.deps == before.deps


def test_autoinstall_for_two_kernels_at_once(lab: Lab) -> None:
    if len(KERNELS) < 2:
        pytest.skip("needs two kernel header packages")
    lab.restore("built")
    kernels = [KERNELS[0], lab.kver]
    jobs = [
        {"argv": ["dkms", "autoinstall", "-k", k], "delay": 0.01 * i}
        for i, k in enumerate(kernels * 2)
    ]
    results = lab.swarm(jobs)
    assert all(r["rc"] == 0 for r in results), outputs(results)
    status = parse_status(lab.picture().status)
    assert {k[2] for k, (state, extras) in status.items() if state == "installed"} == set(
        kernels
    ), status
    assert not any("Differences" in " ".join(extras) for _, extras in status.values()), status


def test_a_waiter_names_the_holder_and_gives_up_in_bounded_time(lab: Lab) -> None:
    lab.restore("built")
    holder = (
        "import time, pathlib\n"
        "from dkmshooks.locking import TreeLock\n"
        "lock = TreeLock(pathlib.Path('/var/lib/dkmshooks/lock'))\n"
        "lock.acquire()\n"
        "time.sleep(3)\n"
    )
    quick = {"DKMSHOOKS_LOCK_TIMEOUT": "1"}
    results = lab.swarm(
        [
            {"argv": [sys.executable, "-c", holder]},
            {
                "argv": ["dkms", "install", f"{MODULE}/{VERSION}", "-k", lab.kver],
                "env": quick,
                "delay": 0.5,
            },
            {
                "argv": ["dkmshooks", "trigger", "--kernel", f"{lab.kver}:image-added"],
                "env": quick,
                "delay": 0.5,
            },
        ]
    )
    _holder, *waiters = results
    for r in waiters:
        out = str(r["output"])
        assert r["rc"] == 1, outputs(results)
        assert "waiting for the lock /var/lib/dkmshooks/lock held by pid " in out, out
        assert "Timed out after 1s waiting for /var/lib/dkmshooks/lock, held by pid " in out, out
        assert float(r["elapsed"]) < 4, outputs(results)  # type: ignore[arg-type]
    assert "installed" not in lab.picture().status  # nothing was done without the lock


WRITER = """
import sys, time
from pathlib import Path
from dkmshooks import rebuildlog
path, me, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(count):
    batch = [
        rebuildlog.LogRecord(time="2026-01-01T00:00:00Z", source="cli", transaction=me,
            module="m", version=str(i), kernel="k", arch="x", action="install",
            outcome="installed", message=f"{me} {i} {j}" + "x" * (i % 300))
        for j in range(1 + i % 3)
    ]
    rebuildlog.append(path, batch, max_bytes=64_000, keep=10_000)
    print(i, flush=True)
"""


def _writers(path: Path, count: int, n: int) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"w{w}", str(count)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(n)
    ]


def _expected(me: str, upto: int) -> set[str]:
    return {f"{me} {i} {j}" + "x" * (i % 300) for i in range(upto) for j in range(1 + i % 3)}


def test_several_log_writers_lose_no_line(tmp_path: Path) -> None:
    """Eight writers append (and rotate) the same log at once: every record is there, whole."""
    path = tmp_path / "rebuild.log"
    procs = _writers(path, 150, 8)
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    records, stats = rebuildlog.read_with_stats(path)
    assert stats.skipped == 0, stats.problems
    assert len(stats.files) > 1  # it did rotate meanwhile
    got = [r.message for r in records]
    assert len(got) == len(set(got))
    assert set(got) == set().union(*(_expected(f"w{w}", 150) for w in range(8)))


def test_log_writers_killed_at_random_lose_nothing_acknowledged(tmp_path: Path) -> None:
    """SIGKILL writers at random moments: every append that returned is in the log, no line is
    torn, and the reader never fails; a torn tail (a power cut) is skipped, not glued on."""
    path = tmp_path / "rebuild.log"
    rng = random.Random(9)
    procs = _writers(path, 100_000, 6)
    time.sleep(0.3)
    for proc in procs:
        time.sleep(rng.uniform(0, 0.2))
        proc.send_signal(signal.SIGKILL)
    acked: set[str] = set()
    for w, proc in enumerate(procs):
        out, _ = proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        lines = out.split()
        acked |= _expected(f"w{w}", int(lines[-1]) + 1 if lines else 0)
    records, stats = rebuildlog.read_with_stats(path)
    assert stats.skipped == 0, stats.problems
    assert acked <= {r.message for r in records}

    with open(path, "ab") as fh:  # what a power cut mid-write leaves
        fh.write(b'{"time":"2026-01-01T00:00:00Z","source":"cli","tra')
    record = rebuildlog.LogRecord(
        time="2026-01-01T00:00:01Z",
        source="cli",
        transaction="after",
        module="m",
        version="1",
        kernel="k",
        arch="x",
        action="install",
        outcome="installed",
    )
    rebuildlog.append(path, [record], max_bytes=10**9)
    records, stats = rebuildlog.read_with_stats(path)
    assert stats.skipped == 1, stats.problems
    assert records[-1] == record
    assert json.loads(path.read_bytes().splitlines()[-1])["transaction"] == "after"
    assert os.path.getsize(path) > 0
