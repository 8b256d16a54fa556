"""Benchmark 4: what dkmshooks's dnf4 plugin adds to a dnf transaction that touches no kernel or
module package. dnf loads the plugin in its own (already running) Python process, so the cost is
the import of the plugin's adapter plus its transaction() hook; Python's own start-up is not part
of it. dnf itself is not available on this Debian host: the hook gets a stand-in for dnf's `base`
with the attributes the adapter reads (transaction.install_set / remove_set of packages with a
`name`, conf.installroot), holding PACKAGES ordinary package names.

Prints one JSON line: {"import_s": ..., "hook_s": ..., "packages": N, "rc": ...}.
"""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

PACKAGES = 300


def fake_base(count: int) -> SimpleNamespace:
    names = [f"python3-package-{i}" for i in range(count)] + ["glibc", "bash", "openssl-libs"]
    pkgs = [SimpleNamespace(name=n, version="1.0", release="1.fc40", arch="x86_64") for n in names]
    half = len(pkgs) // 2
    transaction = SimpleNamespace(install_set=pkgs[:half], remove_set=pkgs[half:])
    return SimpleNamespace(transaction=transaction, conf=SimpleNamespace(installroot="/"))


def main() -> None:
    base = fake_base(PACKAGES)
    start = time.perf_counter()
    from dkmshooks.adapters import dnf as adapter

    imported = time.perf_counter()
    rc = adapter.dnf4_transaction(base, {"PATH": "/usr/bin:/bin"})
    done = time.perf_counter()
    leaked = sorted(m for m in sys.modules if m.startswith("dkmshooks."))
    print(
        json.dumps(
            {
                "import_s": imported - start,
                "hook_s": done - imported,
                "packages": PACKAGES + 3,
                "rc": rc,
                "modules": leaked,
            }
        )
    )


if __name__ == "__main__":
    main()
