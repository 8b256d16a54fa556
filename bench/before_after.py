r"""Before/after of the optimisations: dkmshooks at an older revision against this checkout, on
the trees a finished `bench.py` run left behind, alternating runs, medians and ratios.

    sudo .venv/bin/python bench/before_after.py --before ec48dfd \
        --reuse /var/tmp/dkmshooks-bench/<run>

Benchmarks 1, 2 and 5 run on clones of that run's trees; 3a (one new kernel, the hook path) on
freshly registered sources. Results: <run>/before-after.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess  # noqa: TID251 - the harness drives the tools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench as b


def stage_revision(rev: str, stage: Path) -> b.Tool:
    """dkmshooks as it was at `rev`, staged like the checkout (bench.stage_dkmshooks)."""
    src = stage / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(b.REPO), "archive", rev, "dkmshooks"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    tool = b.stage_dkmshooks(stage / "install", source=src / "dkmshooks")
    return b.Tool(f"dkmshooks@{rev}", tool.path, tool.ro_overlays)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="git revision of the 'before' code")
    parser.add_argument("--reuse", required=True, help="a finished bench.py run directory")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--build-reps", type=int, default=3)
    parser.add_argument("--benchmarks", default="1,2,3,5", type=lambda s: s.split(","))
    opts = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("before_after: must run as root")
    run_dir = Path(opts.reuse)
    previous = json.loads((run_dir / "results.json").read_text())
    k1, k2 = previous["facts"]["kernels"]
    work = run_dir / "before-after"
    if work.exists():
        subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir()
    bench = b.Bench.__new__(b.Bench)
    bench.opts = argparse.Namespace(fast_reps=opts.reps)
    bench.k1, bench.k2 = k1, k2
    bench.root = work
    bench.mok = run_dir / "mok"
    bench.results = b.Results(time.strftime("%Y-%m-%d %H:%M:%S %Z"), b.machine_facts())
    bench.results.facts["kernels"] = [k1, k2]
    bench.hooks = b.stage_dkmshooks(work / "after-install")
    before = stage_revision(opts.before, work / "before")
    after = bench.hooks
    tools = (before, after)

    def clones(name: str) -> dict[str, b.Scratch]:
        src = b.Scratch(run_dir / name, _lowers(run_dir, name))
        return {t.name: src.clone(work / f"{name}-{t.name}") for t in tools}

    def pairs(
        trees: dict[str, b.Scratch], argv: Sequence[str], env: dict[str, str] | None = None
    ) -> list[tuple[b.Tool, b.Scratch, Sequence[str], dict[str, str] | None]]:
        return [(t, trees[t.name], argv, env) for t in tools]

    want = set(opts.benchmarks)
    if "1" in want:
        trees = clones("after3b-dkmshooks")
        bench.alternate(
            "1 dkms status (30 modules x 2 kernels)", pairs(trees, ["dkms", "status"]), opts.reps
        )
    if "2" in want:
        trees = clones("noop-dkmshooks")
        bench.alternate(
            "2 no-op dkms autoinstall -k K",
            pairs(trees, ["dkms", "autoinstall", "-k", k2]),
            opts.reps,
        )
        bench.alternate(
            "2 hook, kernel needs nothing (trigger)",
            pairs(trees, ["dkmshooks", "trigger", "--kernel", f"{k2}:image-added"]),
            opts.reps,
        )
    if "5" in want:
        trees = clones("synth-dkmshooks")
        per_kernel = [x for i in range(20) for x in ("-k", f"6.1.0-{100 + i}-synth")]
        for argv in (["dkms", "status"], ["dkmshooks", "plan", *per_kernel]):
            for t in tools:  # the first run of each fills the conf cache of the new code
                ns = b.Namespace(trees[t.name], t)
                ns.run(argv)
                ns.close()
            bench.alternate(f"5 {' '.join(argv[:2])} (500 m/v x 20 kernels)", pairs(trees, argv), 1)
    if "3" in want:
        if "module_sources" in previous["facts"]:
            modules = [
                b.Module(m["package"], Path(m["src"]), m["name"], m["version"])
                for m in previous["facts"]["module_sources"]
            ]
        else:  # a run from before bench.py recorded them
            probe = b.Scratch(work / "probe")
            bench.seed(probe, after)
            ns = b.Namespace(probe, after)
            try:
                found = b.find_modules(ns, k2, [])
            finally:
                ns.close()
            modules = [m for m in found if m.package not in b.SLOW_SKIPPED]
        base = bench.base_tree(after, modules)
        label = "3a autoinstall, 1 new kernel (trigger)"
        series = {t.name: bench.results.new(label, t.name) for t in tools}
        for rep in range(opts.build_reps):
            for t in tools if rep % 2 == 0 else tuple(reversed(tools)):
                scratch = base.clone(work / f"run-{t.name}")
                bench.timed(
                    series[t.name],
                    scratch,
                    t,
                    ["dkmshooks", "trigger", "--kernel", f"{k2}:image-added"],
                )
                scratch.remove()
        limit = previous["facts"].get("limit_1kernel")
        if limit:
            bench.results.facts["limit_1kernel"] = limit
    data = {
        "started": bench.results.started,
        "machine": bench.results.machine,
        "before": opts.before,
        "facts": bench.results.facts,
        "series": [s.as_dict() for s in bench.results.series],
    }
    (run_dir / "before-after.json").write_text(json.dumps(data, indent=1, sort_keys=True))
    md = render(data, before.name, after.name)
    (run_dir / "before-after.md").write_text(md)
    print(md)


def _lowers(run_dir: Path, name: str) -> dict[str, str]:
    return {"/lib/modules": str(run_dir / "empty")} if name.startswith("synth") else {}


def render(data: dict[str, Any], before: str, after: str) -> str:
    lines = [
        f"Before/after, {data['started']}, load average {data['machine']['loadavg']} at the start.",
        "",
        f"| benchmark | {before} median s | {after} median s | speed-up |",
        "|---|---:|---:|---:|",
    ]
    by_label: dict[str, dict[str, list[float]]] = {}
    for s in data["series"]:
        by_label.setdefault(s["label"], {})[s["tool"]] = s["walls"]
    for label, walls in by_label.items():
        old = statistics.median(walls.get(before, [float("nan")]))
        new = statistics.median(walls.get(after, [float("nan")]))
        lines.append(f"| {label} | {old:.4f} | {new:.4f} | {old / new:.1f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
