"""Crash consistency: SIGKILL at every crash point of build, install, uninstall and remove."""

from __future__ import annotations

import sys

import pytest

from .lab import DEST, MODULE, VERSION, Lab, Trial

pytestmark = pytest.mark.reliability


def check(trials: list[Trial], *expected_points: str) -> None:
    """Every trial kept every invariant, and the sweep did reach the points that matter."""
    assert set(expected_points) <= {t.point for t in trials}, [t.point for t in trials]
    assert not report(trials), report(trials)


def report(trials: list[Trial]) -> str:
    return "\n".join(
        f"crash #{t.n} at {t.point}:\n  "
        + "\n  ".join(p.replace("\n", "\n    ") for p in t.problems)
        for t in trials
        if t.problems
    )


def test_install_survives_a_crash_at_every_point(lab: Lab) -> None:
    trials = lab.sweep(["dkms", "install", f"{MODULE}/{VERSION}", "-k", lab.kver], "built")
    check(
        trials,
        "write_atomic.before_rename",
        "move.before",
        "copy.before_rename",
        "install.copied",
        "symlink.before_rename",
        "install.linked",
    )


def test_uninstall_survives_a_crash_at_every_point(lab: Lab) -> None:
    trials = lab.sweep(["dkms", "uninstall", f"{MODULE}/{VERSION}", "-k", lab.kver], "installed")
    check(trials, "uninstall.deleted", "move.before", "copy.copied", "remove_tree.renamed")


def test_build_survives_a_crash_at_every_point(lab: Lab) -> None:
    trials = lab.sweep(["dkms", "build", f"{MODULE}/{VERSION}", "-k", lab.kver], "added")
    check(
        trials,
        "build.source_copied",
        "build.made",
        "build.staged",
        "build.renamed",
        "remove_tree.renamed",
    )


def test_remove_survives_a_crash_at_every_point(lab: Lab) -> None:
    trials = lab.sweep(
        ["dkms", "remove", f"{MODULE}/{VERSION}", "--all"], "installed", gone_ok=True
    )
    check(trials, "uninstall.deleted", "move.before", "remove_tree.renamed")


def test_hook_trigger_survives_a_crash_at_every_point(lab: Lab) -> None:
    """The package-manager path: headers and image present, module added but not built; the
    trigger builds and installs. Re-running the same transaction finishes the job."""
    argv = ["dkmshooks", "trigger", "--kernel", f"{lab.kver}:headers-added", "--transaction", "t1"]
    trials = lab.sweep(argv, "added")
    check(
        trials,
        "build.made",
        "build.staged",
        "install.copied",
        "install.linked",
        "write_atomic.before_rename",
    )


def test_autoinstall_after_a_crash_before_depmod_runs_depmod(lab: Lab) -> None:
    """autoinstall (and the hooks) skip a module that is already installed; killed between
    its install and depmod, the re-run must still bring modules.dep up to date. The other
    crash points of autoinstall are those of install, swept above."""
    lab.restore("built")
    crashed = lab.dkms("autoinstall", "-k", lab.kver, fault="install.linked:1")
    assert crashed.rc == -9, crashed.output
    stale = lab.picture()
    assert stale.deps is not None and f"{DEST}/crash_a.ko:" not in stale.deps
    again = lab.dkms("autoinstall", "-k", lab.kver)
    assert again.rc == 0, again.output
    assert lab.picture().deps == [f"{DEST}/crash_a.ko:", f"{DEST}/crash_b.ko:"]


def test_what_killed_runs_leave_is_swept_by_the_next_command(lab: Lab) -> None:
    """Staging dirs, half-deleted dirs, unrenamed symlinks and module copies of dead processes
    are hidden from `dkms status` and swept, under the lock, by the next command that changes
    the tree; the next build simply succeeds."""
    lab.restore("added")
    k, v = lab.kver, f"/var/lib/dkms/{MODULE}/{VERSION}"
    lab.sh(
        f"""
        mkdir -p {v}/{k}/.tmp_x86_64_AbC123/module {v}/.tmp_rm_build_999/x
        mkdir -p /var/lib/dkms/{MODULE}/.tmp_rm_1.9_998 /lib/modules/{k}/{DEST}
        ln -s 1.9/{k}/x86_64 /var/lib/dkms/{MODULE}/.kernel-{k}-x86_64.tmp997
        echo partial > /lib/modules/{k}/{DEST}/.crash_a.ko.dkmshooks-tmp.q1w2e3
        echo partial > {v}/{k}/.tmp_x86_64_AbC123/module/crash_a.ko
        """
    )
    assert lab.dkms("status").output == f"{MODULE}/{VERSION}: added\n"
    built = lab.dkms("build", f"{MODULE}/{VERSION}", "-k", k)
    assert built.rc == 0, built.output
    leftovers = lab.sh(f"find /var/lib/dkms /lib/modules/{k} -name '.*' | sort")
    assert leftovers == "", leftovers
    assert lab.dkms("status").output == f"{MODULE}/{VERSION}, {k}, x86_64: built\n"


def test_a_lock_held_by_a_killed_process_is_free_at_once(lab: Lab) -> None:
    """flock dies with its holder: no stale lock file to clean, no wait after a crash."""
    lab.restore("built")
    holder = (
        "import os, pathlib, signal, time\n"
        "from dkmshooks.locking import TreeLock\n"
        "TreeLock(pathlib.Path('/var/lib/dkmshooks/lock')).acquire()\n"
        "time.sleep(1)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    results = lab.swarm(
        [
            {"argv": [sys.executable, "-c", holder]},
            {
                "argv": ["dkms", "install", f"{MODULE}/{VERSION}", "-k", lab.kver],
                "env": {"DKMSHOOKS_LOCK_TIMEOUT": "20"},
                "delay": 0.4,
            },
        ]
    )
    killed, install = results
    assert killed["rc"] == -9
    assert install["rc"] == 0, install["output"]
    assert "waiting for the lock /var/lib/dkmshooks/lock held by pid" in str(install["output"])
    assert float(install["elapsed"]) < 5  # type: ignore[arg-type]
