from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from dkmshooks import state
from dkmshooks.layout import Layout
from dkmshooks.locking import LockTimeout, TreeLock


def _hold(
    path: str, ready: multiprocessing.synchronize.Event, release: multiprocessing.synchronize.Event
) -> None:  # type: ignore[name-defined]
    with TreeLock(Path(path)):
        ready.set()
        release.wait(10)


def test_wait_names_the_holder_and_times_out(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    proc = multiprocessing.Process(target=_hold, args=(str(lock), ready, release))
    proc.start()
    try:
        assert ready.wait(10)
        said: list[str] = []
        with pytest.raises(LockTimeout) as info:
            TreeLock(lock, timeout=0.5, say=said.append, poll=0.05).acquire()
        assert said and f"pid {proc.pid}" in said[0]
        assert f"pid {proc.pid}" in info.value.lines[0]
    finally:
        release.set()
        proc.join(10)
    # the holder is gone: the lock is free again and reentrant within one object
    lock_obj = TreeLock(lock, timeout=1)
    with lock_obj, lock_obj:
        assert "pid" in lock.read_text()
    assert lock.read_text() == ""


def test_lock_released_when_holder_is_killed(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    proc = multiprocessing.Process(target=_hold, args=(str(lock), ready, release))
    proc.start()
    assert ready.wait(10)
    proc.kill()
    proc.join(10)
    start = time.monotonic()
    with TreeLock(lock, timeout=5):
        pass
    assert time.monotonic() - start < 5


def test_pending_and_transactions(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path)
    state.record_pending(layout, "6.1.0-1", "no-headers", ["b", "a"], "linux-headers-6.1.0-1")
    assert state.read_pending(layout, "6.1.0-1")["modules"] == ["a", "b"]  # type: ignore[index]
    assert [p["kernel"] for p in state.all_pending(layout)] == ["6.1.0-1"]
    state.clear_pending(layout, "6.1.0-1")
    assert state.read_pending(layout, "6.1.0-1") is None
    assert state.transaction_done(layout, "t/1", "K") is None
    state.mark_transaction(layout, "t/1", "K", {"headers": True, "image": False})
    assert state.transaction_done(layout, "t/1", "K") == {"headers": True, "image": False}
    # unreadable or foreign-schema state is ignored, not trusted
    state.pending_path(layout, "X").write_text('{"schema": 99}')
    assert state.read_pending(layout, "X") is None
