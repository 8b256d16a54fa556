"""dkmshooks's own state (pending kernels, transactions): small JSON files written atomically,
each with a schema version."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import fsutil

# fasthook marks transactions through this module before anything heavy is imported
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .layout import Layout

SCHEMA = 1


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    data = dict(data, schema=SCHEMA)
    fsutil.write_atomic(path, json.dumps(data, sort_keys=True, indent=1) + "\n")


def safe_name(name: str) -> str:
    """A file name for a kernel release or transaction id."""
    return "".join(c if c.isalnum() or c in "._-+" else "_" for c in name)


def pending_path(layout: Layout, kver: str) -> Path:
    return pending_file(layout.state_dir, kver)


def pending_file(state_dir: str | os.PathLike[str], kver: str) -> Path:
    return Path(state_dir, "pending", f"{safe_name(kver)}.json")


def record_pending(layout: Layout, kver: str, reason: str, modules: list[str], hint: str) -> None:
    _write(
        pending_path(layout, kver),
        {
            "kernel": kver,
            "reason": reason,
            "modules": sorted(modules),
            "hint": hint,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def read_pending(layout: Layout, kver: str) -> dict[str, Any] | None:
    return _read(pending_path(layout, kver))


def all_pending(layout: Layout) -> list[dict[str, Any]]:
    d = layout.state_dir / "pending"
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        data = _read(p)
        if data is not None:
            out.append(data)
    return out


def clear_pending(layout: Layout, kver: str) -> None:
    clear_pending_at(layout.state_dir, kver)


def clear_pending_at(state_dir: str | os.PathLike[str], kver: str) -> None:
    pending_file(state_dir, kver).unlink(missing_ok=True)


def transaction_path(layout: Layout, transaction: str) -> Path:
    return transaction_file(layout.state_dir, transaction)


def transaction_file(state_dir: str | os.PathLike[str], transaction: str) -> Path:
    return Path(state_dir, "transactions", f"{safe_name(transaction)}.json")


def transaction_done(layout: Layout, transaction: str, kver: str) -> dict[str, Any] | None:
    return transaction_done_at(layout.state_dir, transaction, kver)


def transaction_done_at(
    state_dir: str | os.PathLike[str], transaction: str, kver: str
) -> dict[str, Any] | None:
    """What mark_transaction recorded for `kver` in this transaction, if anything."""
    data = _read(transaction_file(state_dir, transaction))
    if data is None:
        return None
    entry = data.get("kernels", {}).get(kver)
    return entry if isinstance(entry, dict) else None


def mark_transaction(layout: Layout, transaction: str, kver: str, facts: dict[str, Any]) -> None:
    mark_transaction_at(layout.state_dir, transaction, kver, facts)


def mark_transaction_at(
    state_dir: str | os.PathLike[str], transaction: str, kver: str, facts: dict[str, Any]
) -> None:
    path = transaction_file(state_dir, transaction)
    data = _read(path) or {"transaction": transaction, "kernels": {}}
    data.setdefault("kernels", {})[kver] = facts
    _write(path, data)
    _prune(path.parent, keep=50)


def _prune(directory: Path, keep: int) -> None:
    files = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
    for old in files[:-keep]:
        old.unlink(missing_ok=True)
