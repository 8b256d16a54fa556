"""Side-by-side benchmarks of dkmshooks against Debian's dkms 3.0.10 (issue 10).

Run as root through `bench/run.sh`. Every command of either tool runs in its own private mount
namespace whose /etc, /var/lib, /usr/src, /lib/modules, /var/log and /boot are overlays with
their upper layers in a scratch directory, so neither tool ever writes the host's trees, and the
two tools never share one. Debian's dkms is never installed: its .deb is extracted into the cache
and mounted (read-only overlay) over /usr/sbin and /usr/lib inside its namespaces only.
The mounts are set up before a long-lived runner starts (nsrunner.py), so no timing includes them.

Runs alternate between the tools; medians are reported with the ratio dkms / dkmshooks.
Results: <scratch>/results.json and results.md (the table docs/performance.md quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess  # noqa: TID251 - the harness is not dkmshooks; it drives both tools
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path(os.environ.get("BENCH_CACHE", "/var/cache/dkmshooks-bench"))
DKMS_DEB_DIR = CACHE / "dkms-3.0.10"
# the kernels' real linux-image packages, extracted: /lib/modules/K (4,000 modules, modules.dep)
# and /boot/System.map-K, so depmod costs what it costs on a real upgrade, for both tools
IMAGES = CACHE / "images"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OVERLAYS = (
    ("etc", "/etc"),
    ("var-lib", "/var/lib"),
    ("usr-src", "/usr/src"),
    ("lib-modules", "/lib/modules"),
    ("var-log", "/var/log"),
    ("boot", "/boot"),
)
# Needs minutes per kernel (serial ./configure && make): left out of the timed autoinstall runs
SLOW_SKIPPED = ("openafs-modules-dkms",)
FAILING_NOTE = "librem-ec-acpi, openrazer-driver, lttng-modules fail on 6.1.192 (lab report §0)"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- tools ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    name: str
    path: str  # PATH inside the namespace; `dkms` resolves to this tool's
    ro_overlays: tuple[tuple[str, str], ...] = ()  # (extra lower dir, mount point)

    def env(self, **extra: str) -> dict[str, str]:
        env = {"PATH": self.path, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
        env.update(extra)
        return env


DKMS = Tool(
    "dkms-3.0.10",
    BASE_PATH,
    (
        (str(DKMS_DEB_DIR / "usr/sbin"), "/usr/sbin"),
        (str(DKMS_DEB_DIR / "usr/lib"), "/usr/lib"),
    ),
)


def stage_dkmshooks(stage: Path, source: Path = REPO / "dkmshooks") -> Tool:
    """dkmshooks from this checkout, laid out as its .deb installs it (packaging/debian/rules,
    scripts/install-into-root.sh): the package in /usr/lib/python3/dist-packages, byte-compiled
    as py3compile does, and `#!/usr/bin/python3` wrappers: /usr/sbin/dkms, /usr/bin/dkmshooks.
    Mounted read-only in dkmshooks's namespaces."""
    site = stage / "usr/lib/python3/dist-packages"
    shutil.copytree(source, site / "dkmshooks", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(site)], check=True)
    for where, entry in (("usr/sbin/dkms", "dkms_main"), ("usr/bin/dkmshooks", "dkmshooks_main")):
        script = stage / where
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(f"#!/usr/bin/python3\nfrom dkmshooks.cli import {entry}\n\n{entry}()\n")
        script.chmod(0o755)
    return Tool(
        "dkmshooks",
        BASE_PATH,
        (
            (str(stage / "usr/sbin"), "/usr/sbin"),
            (str(stage / "usr/bin"), "/usr/bin"),
            (str(site), "/usr/lib/python3/dist-packages"),
        ),
    )


# -- scratch trees and namespaces ----------------------------------------------------------------


class Scratch:
    """The upper layers of one namespace's overlays; cloned cheaply to reset state."""

    def __init__(self, path: Path, lowers: dict[str, str] | None = None) -> None:
        self.path = path
        self.lowers = dict(lowers or {})
        for name, _ in OVERLAYS:
            (path / name / "upper").mkdir(parents=True, exist_ok=True)
            (path / name / "work").mkdir(parents=True, exist_ok=True)

    def upper(self, target: str) -> Path:
        for name, mount in OVERLAYS:
            if target == mount or target.startswith(mount + "/"):
                return self.path / name / "upper" / target[len(mount) :].lstrip("/")
        raise ValueError(target)

    def opaque(self, target: str) -> Path:
        up = self.upper(target)
        up.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(target):
            os.setxattr(up, "trusted.overlay.opaque", b"y")
        return up

    def write(self, target: str, data: str | bytes, mode: int = 0o644) -> None:
        up = self.upper(target)
        up.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            data = data.encode()
        up.write_bytes(data)
        os.chmod(up, mode)

    def clone(self, dest: Path) -> Scratch:
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for name, _ in OVERLAYS:
            (dest / name).mkdir()
            subprocess.run(
                ["cp", "-a", "--reflink=auto", str(self.path / name / "upper"), str(dest / name)],
                check=True,
            )
            (dest / name / "work").mkdir()
        return Scratch(dest, self.lowers)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class Namespace:
    """A runner inside a private mount namespace over one scratch tree, for one tool."""

    def __init__(self, scratch: Scratch, tool: Tool) -> None:
        self.tool = tool
        lines = ["set -eu"]
        # first: /lib is /usr/lib on merged-/usr systems, so /lib/modules must go on top of these
        for extra, target in tool.ro_overlays:
            lines.append(
                f"mount -t overlay bench-ro -o lowerdir={shlex.quote(extra)}:{target} {target}"
            )
        for name, target in OVERLAYS:
            lower = scratch.lowers.get(target)
            if lower is None:
                lower = target
                image_part = IMAGES / target.lstrip("/")
                if image_part.is_dir():
                    lower = f"{target}:{image_part}"  # the host's (headers' build links) on top
            up, work = scratch.path / name / "upper", scratch.path / name / "work"
            lines.append(
                f"mount -t overlay bench -o lowerdir={shlex.quote(lower)},"
                f"upperdir={shlex.quote(str(up))},workdir={shlex.quote(str(work))} {target}"
            )
        lines.append('exec "$@"')
        self.errlog = open(scratch.path / "runner.err", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "\n".join(lines),
                "bench-ns",
                "/usr/bin/python3",
                str(HERE / "nsrunner.py"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errlog,
            text=True,
            bufsize=1,
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str = "/",
        keep: int = 4000,
        check: bool = False,
    ) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"argv": list(argv), "env": env or self.tool.env(), "cwd": cwd, "keep": keep}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"namespace runner died; see {self.errlog.name}")
        reply: dict[str, Any] = json.loads(line)
        if check and reply["rc"] != 0:
            raise RuntimeError(f"{list(argv)} failed ({reply['rc']}):\n{reply['out']}")
        return reply

    def sh(self, script: str, **kw: Any) -> dict[str, Any]:
        return self.run(["bash", "-c", script], **kw)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.errlog.close()


# -- the modules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    package: str  # the *-dkms package
    src: Path  # extracted /usr/src/<dir>
    name: str
    version: str


def ensure_images(kernels: Sequence[str]) -> None:
    """Download (never install) the kernels' linux-image packages; extract them into IMAGES."""
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for kver in kernels:
        if (IMAGES / "lib/modules" / kver / "modules.dep").is_file():
            continue
        pkg = f"linux-image-{kver}"
        if not list(debs.glob(f"{pkg}_*.deb")):
            log(f"downloading {pkg}")
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
        deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
        stage = IMAGES.with_name("images.tmp")
        shutil.rmtree(stage, ignore_errors=True)
        stage.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(stage)], check=True)
        # what the image's postinst does: depmod, so modules.dep exists as on an installed image
        subprocess.run(
            ["depmod", "-b", str(stage), "-a", kver, "-F", str(stage / f"boot/System.map-{kver}")],
            check=True,
        )
        for sub in (f"lib/modules/{kver}", f"boot/System.map-{kver}", f"boot/config-{kver}"):
            dest = IMAGES / sub
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(stage / sub, dest)
        shutil.rmtree(stage, ignore_errors=True)


def ensure_cache() -> None:
    """Download (never install) Debian's dkms and every *-dkms package of the archive."""
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not any(debs.glob("dkms_*.deb")) or len(list(debs.glob("*-dkms_*.deb"))) < 30:
        out = subprocess.run(
            ["apt-cache", "search", "--names-only", "--", "-dkms$"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        names = sorted(
            line.split()[0] for line in out.splitlines() if line and line.split()[0] != "dh-dkms"
        )
        log(f"downloading dkms and {len(names)} *-dkms packages into {debs}")
        subprocess.run(["apt-get", "download", "dkms", *names], cwd=debs, check=True)
    if not (DKMS_DEB_DIR / "usr/sbin/dkms").is_file():
        DKMS_DEB_DIR.parent.mkdir(parents=True, exist_ok=True)
        deb = sorted(debs.glob("dkms_*.deb"))[-1]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(DKMS_DEB_DIR)], check=True)
    for deb in sorted(debs.glob("*-dkms_*.deb")):
        pkg = deb.name.split("_", 1)[0]
        dest = CACHE / "x" / pkg
        if not dest.is_dir():
            dest.parent.mkdir(parents=True, exist_ok=True)  # dpkg-deb -x makes only dest
            subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)


def find_modules(ns: Namespace, kver: str, only: Sequence[str]) -> list[Module]:
    modules = []
    for pkgdir in sorted((CACHE / "x").iterdir()):
        if only and pkgdir.name not in only:
            continue
        srcs = sorted((pkgdir / "usr/src").glob("*/dkms.conf"))
        if not srcs:
            continue
        src = srcs[0].parent
        # dkms.conf is bash: ask bash (inside the namespace) what it says
        reply = ns.run(
            [
                "bash",
                "-c",
                'cd "$1" && kernelver=$2 kernel_source_dir=/lib/modules/$2/build '
                "dkms_tree=/var/lib/dkms; . ./dkms.conf >/dev/null 2>&1; "
                'printf "%s\\n%s\\n" "$PACKAGE_NAME" "$PACKAGE_VERSION"',
                "bash",
                str(src),
                kver,
            ],
            check=True,
        )
        name, version = reply["out"].splitlines()[:2]
        if src.name != f"{name}-{version}":
            log(f"note: {src.name} is not {name}-{version}")
        modules.append(Module(pkgdir.name, src, name, version))
    return modules


# -- measurements --------------------------------------------------------------------------------


@dataclass
class Series:
    label: str
    tool: str
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)
    rcs: list[int] = field(default_factory=list)
    note: str = ""

    def add(self, reply: dict[str, Any]) -> None:
        self.walls.append(reply["wall"])
        self.cpus.append(reply["user"] + reply["sys"])
        self.others.append(reply.get("others", 0.0))
        self.rcs.append(reply["rc"])

    @property
    def median(self) -> float:
        return statistics.median(self.walls) if self.walls else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "tool": self.tool,
            "walls": self.walls,
            "cpus": self.cpus,
            "others": self.others,
            "rcs": self.rcs,
            "median": self.median,
            "note": self.note,
        }


@dataclass
class Results:
    started: str
    machine: dict[str, str]
    series: list[Series] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def new(self, label: str, tool: str, note: str = "") -> Series:
        s = Series(label, tool, note=note)
        self.series.append(s)
        return s

    def get(self, label: str, tool: str) -> Series | None:
        return next((s for s in self.series if s.label == label and s.tool == tool), None)


def machine_facts() -> dict[str, str]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    dkmshooks_rev = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory_gib": f"{int(mem) / 1048576:.0f}",
        "os": platform.freedesktop_os_release().get("PRETTY_NAME", ""),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dkmshooks": dkmshooks_rev,
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# -- the benchmark run ---------------------------------------------------------------------------


class Bench:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.k1, self.k2 = opts.kernels
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.root = Path(opts.scratch) / stamp
        self.root.mkdir(parents=True)
        self.results = Results(time.strftime("%Y-%m-%d %H:%M:%S %Z"), machine_facts())
        self.results.facts["kernels"] = [self.k1, self.k2]
        self.mok = self.root / "mok"
        self.hooks = stage_dkmshooks(self.root / "dkmshooks-install")
        self.modules: list[Module] = []

    # -- scratch setup --

    def seed(self, scratch: Scratch, tool: Tool, *, kernels: bool = True) -> None:
        for target in (
            "/var/lib/dkms",
            "/etc/dkms",
            "/var/lib/dkmshooks",
            "/etc/dkmshooks",
            "/var/log/dkmshooks",
        ):
            scratch.opaque(target)
        fw = (DKMS_DEB_DIR / "etc/dkms/framework.conf").read_text()
        scratch.write("/etc/dkms/framework.conf", fw)
        # dkmshooks (as dkms 3.4) does not sign inside a chroot-like namespace unless told to;
        # dkms 3.0.10 signs anyway. Both sign, as on a real host.
        scratch.write("/etc/dkms/framework.conf.d/try_sign_modules.conf", "try_sign_modules=true\n")
        scratch.write("/var/lib/dkms/mok.key", (self.mok / "mok.key").read_bytes(), 0o600)
        scratch.write("/var/lib/dkms/mok.pub", (self.mok / "mok.pub").read_bytes())
        for kver in (self.k1, self.k2) if kernels else ():
            if os.path.isdir(f"/lib/modules/{kver}/updates"):
                scratch.opaque(f"/lib/modules/{kver}/updates")
            # "image ready": the real image's module tree (IMAGES), or a stand-in for one
            if not (IMAGES / "lib/modules" / kver / "modules.dep").is_file():
                scratch.write(f"/lib/modules/{kver}/modules.order", "")
                scratch.upper(f"/lib/modules/{kver}/kernel").mkdir(parents=True, exist_ok=True)
            scratch.write(f"/boot/vmlinuz-{kver}", "bench: not a real kernel image\n")
        if tool is DKMS:
            for hook in (DKMS_DEB_DIR / "etc/kernel").glob("*/dkms"):
                scratch.write(f"/etc/kernel/{hook.parent.name}/dkms", hook.read_bytes(), mode=0o755)
        else:  # dkmshooks's apt hooks, where its .deb puts them, and its kernel-install plugin
            for hook in (REPO / "hooks/apt").glob("kernel-*"):
                kind = hook.name[len("kernel-") :]
                scratch.write(f"/etc/kernel/{kind}.d/dkmshooks", hook.read_bytes(), mode=0o755)
            plugin = REPO / "hooks/kernel-install/40-dkmshooks.install"
            scratch.write(f"/etc/kernel/install.d/{plugin.name}", plugin.read_bytes(), mode=0o755)

    def make_mok(self) -> None:
        self.mok.mkdir()
        subprocess.run(
            [
                "openssl",
                "req",
                "-new",
                "-x509",
                "-nodes",
                "-days",
                "36500",
                "-subj",
                "/CN=DKMS module signing key",
                "-newkey",
                "rsa:2048",
                "-keyout",
                str(self.mok / "mok.key"),
                "-outform",
                "DER",
                "-out",
                str(self.mok / "mok.pub"),
            ],
            check=True,
            capture_output=True,
        )

    def base_tree(self, tool: Tool, modules: Sequence[Module]) -> Scratch:
        scratch = Scratch(self.root / f"base-{tool.name}")
        self.seed(scratch, tool)
        ns = Namespace(scratch, tool)
        try:
            for m in modules:
                ns.run(["cp", "-a", str(m.src), "/usr/src/"], check=True)
                ns.run(["dkms", "add", "-m", m.name, "-v", m.version], check=True)
        finally:
            ns.close()
        return scratch

    # -- helpers --

    def timed(
        self,
        series: Series,
        scratch: Scratch,
        tool: Tool,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        ns = Namespace(scratch, tool)
        try:
            reply = ns.run(argv, env=env, keep=20000)
        finally:
            ns.close()
        series.add(reply)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in series.label)
        (scratch.path / f"{safe}.{series.tool}.out").write_text(reply["out"])
        load = os.getloadavg()[0]
        log(
            f"  {series.label:44} {tool.name:12} {reply['wall']:8.3f}s rc={reply['rc']} "
            f"load {load:.1f}"
        )
        return reply

    def alternate(
        self,
        label: str,
        runs: Sequence[tuple[Tool, Scratch, Sequence[str], dict[str, str] | None]],
        reps: int,
        note: str = "",
    ) -> None:
        """One namespace per tool for all reps; runs alternate, the first tool swaps each rep."""
        series = {tool.name: self.results.new(label, tool.name, note) for tool, *_ in runs}
        spaces = {tool.name: Namespace(scratch, tool) for tool, scratch, *_ in runs}
        try:
            for tool, _, argv, env in runs:  # one untimed warm-up each (page cache)
                spaces[tool.name].run(argv, env=env)
            for rep in range(reps):
                order = list(runs) if rep % 2 == 0 else list(reversed(runs))
                for tool, _, argv, env in order:
                    reply = spaces[tool.name].run(argv, env=env, keep=2000)
                    series[tool.name].add(reply)
            for s in series.values():
                log(f"  {label:44} {s.tool:12} median {s.median:8.4f}s rcs={set(s.rcs)}")
        finally:
            for ns in spaces.values():
                ns.close()

    # -- benchmark 3: autoinstall of real modules --

    def bench_autoinstall(self, bases: dict[str, Scratch]) -> dict[str, Scratch]:
        reps = self.opts.build_reps
        k1, k2 = self.k1, self.k2
        last: dict[str, Scratch] = {}
        s_dkms1 = self.results.new("3a autoinstall, 1 new kernel", DKMS.name)
        s_hooks1 = self.results.new("3a autoinstall, 1 new kernel", self.hooks.name)
        s_trig1 = self.results.new("3a autoinstall, 1 new kernel", "dkmshooks trigger")
        s_dkms2 = self.results.new("3b autoinstall, 2 new kernels", DKMS.name)
        s_trig2 = self.results.new("3b autoinstall, 2 new kernels", "dkmshooks trigger")
        s_hooks2 = self.results.new("3b autoinstall, 2 new kernels", self.hooks.name)
        for rep in range(reps):
            log(f"benchmark 3, rep {rep + 1}/{reps}")
            runs: list[tuple[Series, Tool, list[str]]] = [
                (s_dkms1, DKMS, ["dkms", "autoinstall", "-k", k2]),
                (s_hooks1, self.hooks, ["dkms", "autoinstall", "-k", k2]),
                (s_trig1, self.hooks, ["dkmshooks", "trigger", "--kernel", f"{k2}:image-added"]),
                # dkms autoinstall takes one kernel: apt runs its postinst hook once per kernel
                (
                    s_dkms2,
                    DKMS,
                    ["sh", "-c", f"dkms autoinstall -k {k1}; dkms autoinstall -k {k2}"],
                ),
                (
                    s_hooks2,
                    self.hooks,
                    ["sh", "-c", f"dkms autoinstall -k {k1}; dkms autoinstall -k {k2}"],
                ),
                (
                    s_trig2,
                    self.hooks,
                    [
                        "dkmshooks",
                        "trigger",
                        "--kernel",
                        f"{k1}:image-added",
                        "--kernel",
                        f"{k2}:image-added",
                    ],
                ),
            ]
            if rep % 2:
                runs.reverse()
            for series, tool, argv in runs:
                scratch = bases[tool.name].clone(self.root / f"run-{tool.name}")
                reply = self.timed(series, scratch, tool, argv)
                if series is s_hooks1:
                    self.results.facts["autoinstall_summary"] = [
                        line for line in reply["out"].splitlines() if line.startswith("Autoinstall")
                    ]
                if series in (s_dkms2, s_trig2):
                    if tool.name in last:
                        last[tool.name].remove()
                    final = self.root / f"after3b-{tool.name}"
                    if final.exists():
                        shutil.rmtree(final)
                    scratch.path.rename(final)
                    last[tool.name] = Scratch(final)
                else:
                    scratch.remove()
        return last

    def attempted_modules(self) -> list[Module]:
        """The modules autoinstall really builds here: installed or failed (not excluded)."""
        names: set[str] = set()
        for line in self.results.facts.get("autoinstall_summary", []):
            if "succeeded for" in line or "failed for" in line:
                words = line.split("module(s)", 1)[1].strip().rstrip(".").split()
                names.update(w.split("(", 1)[0] for w in words)
        return [m for m in self.modules if m.name in names]

    def bench_raw(self, modules: Sequence[Module]) -> None:
        """The physical limit: each raw MAKE alone, -j<cores>, wall and CPU-seconds."""
        cores = os.cpu_count() or 1
        scratch = Scratch(self.root / "raw")
        self.seed(scratch, self.hooks)
        ns = Namespace(scratch, self.hooks)
        raw: dict[str, dict[str, dict[str, float]]] = {}
        try:
            for kver in (self.k1, self.k2):
                for m in modules:
                    reply = ns.run(
                        [
                            str(HERE / "rawbuild.sh"),
                            str(m.src),
                            m.name,
                            m.version,
                            kver,
                            str(self.root / "rawtree"),
                            str(cores),
                        ],
                        env=self.hooks.env(),
                    )
                    cpu = reply["user"] + reply["sys"]
                    raw.setdefault(kver, {})[m.name] = {
                        "wall": reply["wall"],
                        "cpu": cpu,
                        "rc": reply["rc"],
                    }
                    log(
                        f"  raw {m.name:28} {kver} {reply['wall']:7.2f}s cpu {cpu:7.2f}s "
                        f"rc={reply['rc']}"
                    )
        finally:
            ns.close()
        shutil.rmtree(self.root / "rawtree", ignore_errors=True)
        self.results.facts["raw"] = raw
        one = raw[self.k2]
        both = [v for k in raw.values() for v in k.values()]
        self.results.facts["limit_1kernel"] = max(
            max(v["wall"] for v in one.values()), sum(v["cpu"] for v in one.values()) / cores
        )
        self.results.facts["limit_2kernels"] = max(
            max(v["wall"] for v in both), sum(v["cpu"] for v in both) / cores
        )
        self.results.facts["raw_cpu_1kernel"] = sum(v["cpu"] for v in one.values())
        self.results.facts["raw_cpu_2kernels"] = sum(v["cpu"] for v in both)
        self.results.facts["raw_longest"] = max(
            ((n, v["wall"]) for n, v in one.items()), key=lambda x: x[1]
        )

    # -- the full trees of benchmarks 1 and 2 --

    def complete_trees(self, trees: dict[str, Scratch]) -> None:
        """Install what autoinstall left out (no AUTOINSTALL: lime-forensics; too slow to time:
        openafs), untimed, so the status tree has every archive module, as in the lab report."""
        extra = [m for m in self.all_modules if m.package in SLOW_SKIPPED]
        lime = [m for m in self.modules if m.name == "lime-forensics"]
        for tool in (DKMS, self.hooks):
            ns = Namespace(trees[tool.name], tool)
            try:
                for m in extra:
                    ns.run(["cp", "-a", str(m.src), "/usr/src/"], check=True)
                    ns.run(["dkms", "add", "-m", m.name, "-v", m.version], check=True)
                for m in [*lime, *extra] if not self.opts.quick else lime:
                    for kver in (self.k1, self.k2):
                        log(f"  {tool.name}: dkms install {m.name} -k {kver} (untimed)")
                        argv = ["dkms", "install", "-m", m.name, "-v", m.version, "-k", kver]
                        reply = ns.run(argv)
                        if reply["rc"]:
                            log(f"    rc={reply['rc']}: {reply['out'][-400:]}")
                status = ns.run(["dkms", "status"], check=True)["out"]
            finally:
                ns.close()
            self.results.facts[f"status_lines_{tool.name}"] = len(status.splitlines())

    def noop_trees(self, trees: dict[str, Scratch]) -> dict[str, Scratch]:
        """Benchmark 2 needs nothing to do: drop the registered modules that are not installed
        for every kernel (they fail to build, so autoinstall would retry them)."""
        out = {}
        for tool in (DKMS, self.hooks):
            scratch = trees[tool.name].clone(self.root / f"noop-{tool.name}")
            ns = Namespace(scratch, tool)
            try:
                lines = ns.run(["dkms", "status"], check=True)["out"].splitlines()
                installed: dict[str, int] = {}
                for line in lines:
                    head = line.split(",", 1)[0].split(":", 1)[0]
                    installed.setdefault(head, 0)
                    if line.endswith("installed") or ": installed" in line:
                        installed[head] += 1
                for mv, count in installed.items():
                    if count < 2:
                        module, version = mv.split("/", 1)
                        ns.run(["dkms", "remove", "-m", module, "-v", version, "--all"])
                self.results.facts[f"noop_modules_{tool.name}"] = sum(
                    1 for c in installed.values() if c >= 2
                )
            finally:
                ns.close()
            out[tool.name] = scratch
        return out

    # -- benchmark 5: synthetic tree --

    def synth_tree(self, tool: Tool) -> Scratch:
        empty = self.root / "empty"
        empty.mkdir(exist_ok=True)
        scratch = Scratch(self.root / f"synth-{tool.name}", {"/lib/modules": str(empty)})
        self.seed(scratch, tool, kernels=False)  # only the synthetic kernels in /lib/modules
        ns = Namespace(scratch, tool)
        try:
            ko = self.tiny_ko(ns)
            ns.run(
                [
                    "/usr/bin/python3",
                    str(HERE / "synth.py"),
                    "--modules",
                    str(self.opts.synth_modules),
                    "--kernels",
                    str(self.opts.synth_kernels),
                    "--headers",
                    f"/usr/src/linux-headers-{self.k2}",
                    "--ko",
                    ko,
                ],
                check=True,
            )
        finally:
            ns.close()
        return scratch

    def tiny_ko(self, ns: Namespace) -> str:
        ko = self.root / "tiny" / "vpoll.ko"
        if not ko.exists():
            vpoll = next((m for m in self.all_modules if m.name == "vpoll"), None)
            if vpoll is not None:
                reply = ns.run(
                    [
                        str(HERE / "rawbuild.sh"),
                        str(vpoll.src),
                        "vpoll",
                        vpoll.version,
                        self.k2,
                        str(self.root / "tiny-tree"),
                        "2",
                    ],
                    env=self.hooks.env(),
                )
                built = self.root / "tiny-tree" / "vpoll" / vpoll.version / "build" / "vpoll.ko"
                if reply["rc"] == 0 and built.exists():
                    ko.parent.mkdir(exist_ok=True)
                    shutil.copyfile(built, ko)
        return str(ko) if ko.exists() else ""

    # -- benchmark 4: dnf plugin --

    def bench_dnf(self) -> None:
        """In dnf's own process the plugin costs its import and its transaction() hook."""
        if not (REPO / "dkmshooks/adapters/dnf.py").is_file():
            self.results.facts["dnf"] = "pending: no dkmshooks/adapters/dnf.py yet"
            log("benchmark 4: " + self.results.facts["dnf"])
            return
        label = "4 dnf plugin, no kernel in transaction (import + hook, in-process)"
        series = self.results.new(label, self.hooks.name, note="dnf stand-in; see dnfcost.py")
        scratch = Scratch(self.root / "dnf")
        self.seed(scratch, self.hooks)
        ns = Namespace(scratch, self.hooks)
        try:
            for _ in range(self.opts.fast_reps * 2):
                reply = ns.run(["/usr/bin/python3", str(HERE / "dnfcost.py")], check=True)
                data = json.loads(reply["out"].strip().splitlines()[-1])
                series.add(
                    {
                        "wall": data["import_s"] + data["hook_s"],
                        "user": reply["user"],
                        "sys": reply["sys"],
                        "rc": data["rc"],
                    }
                )
                self.results.facts["dnf_modules_loaded"] = data["modules"]
        finally:
            ns.close()
        log(f"  {label} median {series.median:.4f}s")

    # -- main --

    def run(self) -> None:
        opts = self.opts
        ensure_cache()
        ensure_images((self.k1, self.k2))
        self.make_mok()
        probe = Scratch(self.root / "probe")
        self.seed(probe, self.hooks)
        ns = Namespace(probe, self.hooks)
        try:
            self.all_modules = find_modules(ns, self.k2, opts.only)
        finally:
            ns.close()
        probe.remove()
        self.modules = [m for m in self.all_modules if m.package not in SLOW_SKIPPED]
        self.results.facts["modules"] = [f"{m.name}/{m.version}" for m in self.modules]
        self.results.facts["module_sources"] = [
            {"package": m.package, "src": str(m.src), "name": m.name, "version": m.version}
            for m in self.modules
        ]
        self.results.facts["skipped_slow"] = [
            f"{m.name}/{m.version}" for m in self.all_modules if m.package in SLOW_SKIPPED
        ]
        log(f"{len(self.modules)} modules; scratch {self.root}")
        want = set(opts.benchmarks)

        if want & {"1", "2", "3"}:
            bases = {t.name: self.base_tree(t, self.modules) for t in (DKMS, self.hooks)}
            trees = self.bench_autoinstall(bases)
            if "3" in want:
                self.bench_raw(self.attempted_modules())
            for b in bases.values():
                b.remove()
            self.complete_trees(trees)
            if "1" in want:
                log("benchmark 1: dkms status")
                self.alternate(
                    "1 dkms status (30 modules x 2 kernels)",
                    [(t, trees[t.name], ["dkms", "status"], None) for t in (DKMS, self.hooks)],
                    opts.slow_reps,
                )
                # and once as the first status after the conf cache is emptied (an upgrade)
                ours = trees[self.hooks.name]
                cold = self.results.new("1 dkms status, cold conf cache", self.hooks.name)
                for _ in range(3):
                    shutil.rmtree(ours.upper("/var/lib/dkmshooks/confcache"), ignore_errors=True)
                    self.timed(cold, ours, self.hooks, ["dkms", "status"])
            if "2" in want:
                noop = self.noop_trees(trees)
                k = self.k2
                log("benchmark 2: no-op autoinstall and hooks")
                self.alternate(
                    "2 no-op dkms autoinstall -k K",
                    [
                        (t, noop[t.name], ["dkms", "autoinstall", "-k", k], None)
                        for t in (DKMS, self.hooks)
                    ],
                    opts.slow_reps,
                )
                hook_runs: list[tuple[Tool, Scratch, Sequence[str], dict[str, str] | None]] = [
                    (
                        DKMS,
                        noop[DKMS.name],
                        ["/etc/kernel/postinst.d/dkms", k, f"/boot/vmlinuz-{k}"],
                        DKMS.env(DEB_MAINT_PARAMS="configure"),
                    ),
                    (
                        self.hooks,
                        noop[self.hooks.name],
                        ["dkmshooks", "trigger", "--kernel", f"{k}:image-added"],
                        None,
                    ),
                ]
                self.alternate("2 hook, kernel needs nothing (trigger)", hook_runs, opts.slow_reps)
                if (REPO / "dkmshooks/adapters/apt.py").is_file():
                    self.alternate(
                        "2 hook, kernel needs nothing (apt postinst)",
                        [
                            hook_runs[0],
                            (
                                self.hooks,
                                noop[self.hooks.name],
                                ["/etc/kernel/postinst.d/dkmshooks", k, f"/boot/vmlinuz-{k}"],
                                self.hooks.env(DEB_MAINT_PARAMS="configure"),
                            ),
                        ],
                        opts.slow_reps,
                    )
                # kernel-install's plugin call, as systemd's kernel-install makes it (Debian's dkms
                # ships /etc/kernel/install.d/dkms, which runs its postinst.d hook)
                entry = f"/boot/efi/0123456789abcdef0123456789abcdef/{k}"
                plugin_env = {
                    "KERNEL_INSTALL_LAYOUT": "bls",
                    "KERNEL_INSTALL_MACHINE_ID": "0123456789abcdef0123456789abcdef",
                    "KERNEL_INSTALL_STAGING_AREA": "/tmp/kernel-install.staging.bench",
                }
                self.alternate(
                    "2 hook, kernel needs nothing (kernel-install plugin)",
                    [
                        (
                            DKMS,
                            noop[DKMS.name],
                            ["/etc/kernel/install.d/dkms", "add", k, entry, f"/boot/vmlinuz-{k}"],
                            DKMS.env(**plugin_env),
                        ),
                        (
                            self.hooks,
                            noop[self.hooks.name],
                            [
                                "/etc/kernel/install.d/40-dkmshooks.install",
                                "add",
                                k,
                                entry,
                                f"/boot/vmlinuz-{k}",
                            ],
                            self.hooks.env(**plugin_env),
                        ),
                    ],
                    opts.slow_reps,
                )
        if "4" in want:
            self.bench_dnf()
        if "5" in want:
            log("benchmark 5: synthetic tree")
            synth = {t.name: self.synth_tree(t) for t in (DKMS, self.hooks)}
            label = f"5 ({opts.synth_modules} m/v x {opts.synth_kernels} kernels)"
            hooks = (self.hooks, synth[self.hooks.name])
            # the first status evaluates every dkms.conf and fills the cache: measured once
            cold = self.results.new(f"{label} dkms status, cold cache", self.hooks.name)
            self.timed(cold, hooks[1], self.hooks, ["dkms", "status"])
            built = [f"6.1.0-{100 + i}-synth" for i in range(opts.synth_kernels)]
            per_kernel = [x for k in built for x in ("-k", k)]
            for argv, what in (
                (["dkms", "status"], "dkms status"),
                (["dkms", "status", "--json"], "dkms status --json"),
                (["dkmshooks", "plan", *per_kernel], "dkmshooks plan (its kernels)"),
                (["dkmshooks", "plan", "--json", *per_kernel], "dkmshooks plan --json (same)"),
                # plus the new kernel: one dkms.conf evaluation per module, as autoinstall does;
                # plan writes nothing, so no cache holds them until a hook or status ran
                (["dkmshooks", "plan"], "dkmshooks plan (+ 1 new kernel, nothing built)"),
            ):
                self.alternate(f"{label} {what}", [(*hooks, argv, None)], opts.fast_reps)
            one = "6.1.0-100-synth"
            self.alternate(
                f"{label} dkms status -k {one} ({opts.synth_modules} lines)",
                [
                    (t, synth[t.name], ["dkms", "status", "-k", one], None)
                    for t in (DKMS, self.hooks)
                ],
                1,
                note="one kernel only: dkms 3.0.10's full status would take ~20x as long",
            )
        self.write()

    def write(self) -> None:
        self.results.facts["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        data = {
            "started": self.results.started,
            "machine": self.results.machine,
            "facts": self.results.facts,
            "series": [s.as_dict() for s in self.results.series],
        }
        (self.root / "results.json").write_text(json.dumps(data, indent=1, sort_keys=True))
        md = render(data)
        (self.root / "results.md").write_text(md)
        print(md)
        log(f"results: {self.root}/results.json, {self.root}/results.md")


def render(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"Run {data['started']} on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{m['os']}, host kernel {m['kernel']}, Python {m['python']}, dkmshooks {m['dkmshooks']}; "
        f"load average {m['loadavg']} at the start, {data['facts'].get('loadavg_end', '?')} "
        "at the end.",
        "",
        "| benchmark | tool | runs | median s | ratio dkms/ours | note |",
        "|---|---|---:|---:|---:|---|",
    ]
    series = data["series"]
    by_label: dict[str, list[dict[str, Any]]] = {}
    for s in series:
        by_label.setdefault(s["label"], []).append(s)
    for label, group in by_label.items():
        ref = next((s for s in group if s["tool"] == "dkms-3.0.10"), None)
        for s in group:
            ratio = ""
            if ref is not None and s is not ref and s["median"] > 0:
                ratio = f"{ref['median'] / s['median']:.1f}x"
            rcs = sorted(set(s["rcs"]))
            note = s["note"] + (f" rc={rcs}" if rcs != [0] else "")
            lines.append(
                f"| {label} | {s['tool']} | {len(s['walls'])} | {s['median']:.4f} | {ratio} | "
                f"{note.strip()} |"
            )
    f = data["facts"]
    if "limit_1kernel" in f:
        lines += [
            "",
            f"Physical limit (raw MAKE builds, {m['cores']} cores): one kernel "
            f"{f['limit_1kernel']:.1f} s (CPU {f['raw_cpu_1kernel']:.1f} s, longest "
            f"{f['raw_longest'][0]} {f['raw_longest'][1]:.1f} s); two kernels "
            f"{f['limit_2kernels']:.1f} s (CPU {f['raw_cpu_2kernels']:.1f} s).",
        ]
        cores = int(m["cores"])
        raw = f["raw"]
        longest_2 = max(v["wall"] for k in raw.values() for v in k.values())
        for label, key, cpu, longest in (
            ("3a autoinstall, 1 new kernel", "limit_1kernel", "raw_cpu_1kernel", None),
            ("3b autoinstall, 2 new kernels", "limit_2kernels", "raw_cpu_2kernels", longest_2),
        ):
            longest = longest if longest is not None else f["raw_longest"][1]
            for s in by_label.get(label, []):
                # The host is shared: the CPU others used during a run was not ours to use.
                adjusted = []
                for wall, others in zip(s["walls"], s.get("others") or [0.0] * len(s["walls"])):
                    free = max(0.5, cores - others / wall)
                    adjusted.append(wall / max(longest, f[cpu] / free))
                lines.append(
                    f"- {label}, {s['tool']}: {s['median'] / f[key]:.2f}x the limit; "
                    f"{statistics.median(adjusted):.2f}x the limit on the cores left free by "
                    f"other work during the runs"
                )
    if isinstance(f.get("dnf"), str):
        lines += ["", f"Benchmark 4: {f['dnf']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kernels", nargs=2, default=["6.1.0-55-amd64", "6.1.0-56-amd64"])
    parser.add_argument("--scratch", default="/var/tmp/dkmshooks-bench")
    parser.add_argument("--benchmarks", default="1,2,3,4,5", type=lambda s: s.split(","))
    parser.add_argument("--only", default="", type=lambda s: [x for x in s.split(",") if x])
    parser.add_argument("--build-reps", type=int, default=3)
    parser.add_argument("--slow-reps", type=int, default=5, help="runs of 1 and 2")
    parser.add_argument("--fast-reps", type=int, default=11, help="runs of 4 and 5")
    parser.add_argument("--synth-modules", type=int, default=500)
    parser.add_argument("--synth-kernels", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="6 small modules, 1 build rep")
    opts = parser.parse_args()
    if opts.quick:
        opts.only = opts.only or [
            "vpoll-dkms",
            "acpi-call-dkms",
            "gost-crypto-dkms",
            "tp-smapi-dkms",
            "lime-forensics-dkms",
            "openrazer-driver-dkms",
        ]
        opts.build_reps = 1
        opts.slow_reps = 3
        opts.fast_reps = 3
    if os.geteuid() != 0:
        sys.exit("bench: must run as root (mount namespaces, overlays); see bench/README.md")
    Bench(opts).run()


if __name__ == "__main__":
    main()
