"""dkmshooks's own state (pending kernels, transactions): small JSON files written atomically,
each with a schema version."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import fsutil
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


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-+" else "_" for c in name)


def pending_path(layout: Layout, kver: str) -> Path:
    return layout.state_dir / "pending" / f"{_safe(kver)}.json"


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
    pending_path(layout, kver).unlink(missing_ok=True)


def transaction_path(layout: Layout, transaction: str) -> Path:
    return layout.state_dir / "transactions" / f"{_safe(transaction)}.json"


def transaction_done(layout: Layout, transaction: str, kver: str) -> dict[str, Any] | None:
    data = _read(transaction_path(layout, transaction))
    if data is None:
        return None
    entry = data.get("kernels", {}).get(kver)
    return entry if isinstance(entry, dict) else None


def mark_transaction(layout: Layout, transaction: str, kver: str, facts: dict[str, Any]) -> None:
    path = transaction_path(layout, transaction)
    data = _read(path) or {"transaction": transaction, "kernels": {}}
    data.setdefault("kernels", {})[kver] = facts
    _write(path, data)
    _prune(path.parent, keep=50)


def _prune(directory: Path, keep: int) -> None:
    files = sorted(directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
    for old in files[:-keep]:
        old.unlink(missing_ok=True)
