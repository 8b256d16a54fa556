"""The rebuild engine: trigger → plan → parallel, locked execution → report and unified log.

`dkms autoinstall`/`kernel_*` use it in *dkms mode* (dkms 3.4's output and exit codes, each
module's lines printed whole in dkms's order); the package-manager adapters use it in *hook mode*
(the ordering rules of DESIGN.md, dkmshooks's progress voice, the failure policy)."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import initramfs, state
from .config import Config, load_config, log_path_for
from .console import Console
from .errors import DkmsError, HeadersMissingError
from .jobserver import JobServer
from .session import Options
from .status import Session
from .trigger import Trigger
from .versions import ver_gt

# -- output capture ------------------------------------------------------------------------------


class BufferConsole(Console):
    """Records what a task prints, with its stream, to replay it whole and in order later."""

    captures = True

    def __init__(self) -> None:
        super().__init__(out=io.StringIO(), err=io.StringIO())
        self.chunks: list[tuple[str, str]] = []

    def write(self, text: str) -> None:
        self.chunks.append(("out", text))

    def write_err(self, text: str) -> None:
        self.chunks.append(("err", text))

    def replay(self, console: Console) -> None:
        for stream, text in self.chunks:
            if stream == "out":
                console.write(text)
            else:
                console.write_err(text)

    def text(self) -> str:
        return "".join(t for _, t in self.chunks)


def fork(session: Session, console: Console, **options: object) -> Session:
    """A private copy of the session for one task (own console, signing state, caches)."""
    opts = replace(session.options, **options) if options else session.options  # type: ignore[arg-type]
    return replace(
        session,
        console=console,
        options=opts,
        signing=replace(session.signing),
        _suffix_cache=dict(session._suffix_cache),
        _conf_cache={},
    )


# -- results -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    module: str
    version: str
    kver: str
    arch: str
    action: str
    outcome: str
    rc: int = 0
    duration: float = 0.0
    make_log: str | None = None
    tail: tuple[str, ...] | None = None
    message: str = ""


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    initramfs: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome == "failed"]


# -- planning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    module: str
    version: str
    depends: tuple[str, ...]
    excluded: bool = False
    #: its MAKE does not start with `make`: dkms gives it no -j, it builds on one core
    serial: bool = False


@dataclass
class KernelPlan:
    kver: str
    arch: str
    candidates: list[Candidate] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    bad_conf: list[tuple[str, str, DkmsError]] = field(default_factory=list)


def latest_versions(session: Session) -> tuple[list[tuple[str, str]], list[str]]:
    """(module, latest version) in glob order of first appearance, and broken m/v."""
    latest: dict[str, str] = {}
    order: list[str] = []
    broken: list[str] = []
    tree = session.tree
    # what `status` lists, one m/v at a time: its built entries would not change the answer
    for module, version in tree.module_versions():
        if tree.is_broken(module, version):
            broken.append(f"{module}/{version}")
            continue
        if not tree.is_added(module, version):
            continue
        if module not in latest:
            order.append(module)
            latest[module] = version
        elif ver_gt(version, latest[module]):
            latest[module] = version
    return [(m, latest[m]) for m in order], broken


def plan_kernel(
    session: Session,
    kver: str,
    arch: str,
    *,
    only: Sequence[str] = (),
    registered: tuple[list[tuple[str, str]], list[str]] | None = None,
) -> KernelPlan:
    """`registered`: latest_versions(session), when the caller plans several kernels."""
    plan = KernelPlan(kver, arch)
    modules, broken = registered if registered is not None else latest_versions(session)
    plan.broken = list(broken)
    for module, version in modules:
        if only and module not in only:
            continue
        if session.tree.is_active(module, version, kver, arch):
            plan.already.append(module)
            continue
        quiet = BufferConsole()
        try:
            conf = fork(session, quiet).read_conf(
                module,
                version,
                kver,
                arch,
                session.layout.source_link(module, version) / "dkms.conf",
                persistent=True,
            )
        except DkmsError as exc:
            plan.bad_conf.append((module, version, _with_output(exc, quiet)))
            continue
        if not conf.autoinstall:
            continue
        plan.candidates.append(
            Candidate(
                module,
                version,
                conf.build_depends,
                excluded=conf.build_exclude,
                serial=not conf.make_command.startswith("make"),
            )
        )
    return plan


def _with_output(exc: DkmsError, buffer: BufferConsole) -> DkmsError:
    exc.captured = buffer.text()  # type: ignore[attr-defined]
    return exc


# -- execution -----------------------------------------------------------------------------------


@dataclass
class TaskRun:
    candidate: Candidate
    needs_build: bool
    console: BufferConsole = field(default_factory=BufferConsole)
    rc: int = 0
    duration: float = 0.0
    error: DkmsError | None = None


def _budget(session: Session, config: Config | None) -> int:
    if config is not None and config.jobs:
        return config.jobs
    jobs = session.settings.parallel_jobs
    try:
        return max(1, int(jobs))
    except ValueError:
        return os.cpu_count() or 1


def run_tasks(
    session: Session,
    tasks: Sequence[TaskRun],
    work: Callable[[Session, Candidate], None],
    *,
    budget: int,
    on_start: Callable[[TaskRun], None] | None = None,
    on_end: Callable[[TaskRun], None] | None = None,
    extra_options: Mapping[str, object] | None = None,
) -> None:
    """Run independent tasks concurrently. The make job budget is shared, not multiplied: the
    builds take their jobs from one GNU make jobserver of `budget` slots (jobserver.py), and the
    tasks start longest first, so a long serial build is not the one left running alone at the
    end. Callers report in their own order: `tasks` itself is not reordered."""
    if not tasks:
        return
    workers = max(1, min(budget, len(tasks)))
    jobs = str(max(1, budget // workers)) if session.settings.parallel_jobs != "0" else "0"
    jobserver = JobServer(budget) if workers > 1 and jobs != "0" else None

    def one(task: TaskRun) -> None:
        release = jobserver.acquire() if jobserver is not None else None
        try:
            run_one(task)
        finally:
            if release is not None:
                release()

    def run_one(task: TaskRun) -> None:
        sub = fork(task_session, task.console, **(extra_options or {}))
        if on_start is not None:
            on_start(task)
        start = time.monotonic()
        try:
            work(sub, task.candidate)
            task.rc = 0
        except DkmsError as exc:
            from .dkmscli import print_error

            print_error(sub.console, exc)
            task.rc = exc.code
            task.error = exc
        except Exception as exc:  # a bug must not leave other modules unbuilt
            sub.console.write_err(f"dkmshooks: internal error: {exc!r}\n")
            task.rc = 70
            task.error = DkmsError(f"internal error: {exc!r}", code=70)
        task.duration = time.monotonic() - start
        if on_end is not None:
            on_end(task)

    task_session = replace(
        session, settings=replace(session.settings, parallel_jobs=jobs), jobserver=jobserver
    )
    if workers == 1:
        for task in tasks:
            one(task)
        return
    from concurrent.futures import ThreadPoolExecutor  # only when there is work for two

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, longest_first(session, tasks, budget)))
    finally:
        assert jobserver is not None
        jobserver.close()


def longest_first(session: Session, tasks: Sequence[TaskRun], budget: int) -> list[TaskRun]:
    """Tasks by expected build time, longest first (LPT scheduling). The estimate is the size of
    the sources a build compiles; a serial build cannot spread over the budget, so its estimate
    counts `budget` times. Tasks that need no build go last. Stable for equal estimates."""

    def estimate(task: TaskRun) -> float:
        if not task.needs_build:
            return 0.0
        c = task.candidate
        size = _source_bytes(session.layout.source_link(c.module, c.version))
        return float(size * budget if c.serial else size)

    return sorted(tasks, key=estimate, reverse=True)


_SOURCE_SUFFIXES = (".c", ".h", ".S", ".cc", ".cpp", ".rs")


def _source_bytes(top: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(top, followlinks=False):
        for name in filenames:
            if name.endswith(_SOURCE_SUFFIXES):
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
    return total


# -- dkms mode: autoinstall, kernel_prerm, kernel_preinst ----------------------------------------


def dkms_autoinstall(session: Session, kver: str, arch: str, *, log: LogSink | None = None) -> int:
    """dkms 3.4's autoinstall for one kernel, with rounds run in parallel and output replayed in
    dkms's order. A broken or conf-less module is reported and the others still install."""
    console = session.console
    layout = session.layout
    if layout.no_autoinstall_flag.exists():
        console.echo("Automatic installation of modules has been disabled.")
        return 0
    plan = plan_kernel(session, kver, arch)
    session.repair_depmod_all(kver, arch)  # a run killed before its depmod (issue #9)
    for mv in plan.broken:
        console.error(
            f"{mv} is broken! Missing the source directory or the symbolic link pointing to it.",
            "Manual intervention is required!",
        )
    installed: list[str] = list(plan.already)
    skipped: list[str] = []
    failed: list[str] = []
    for module, _version, exc in plan.bad_conf:
        captured = getattr(exc, "captured", "")
        if captured:
            console.write_err(captured)
        from .dkmscli import print_error

        print_error(console, exc)
        failed.append(f"{module}({exc.code})")
    to_install = list(plan.candidates)
    if not to_install and not failed:
        return 0  # dkms prints nothing at all when there is nothing to do
    depends = {c.module: list(c.depends) for c in to_install}
    budget = _budget(session, None)
    prologue_done = session.prepared_kernel == f"{kver}/{arch}"

    while to_install:
        satisfied = set(installed) | set(skipped)
        for m in depends:
            depends[m] = [d for d in depends[m] if d not in satisfied]
        ready = [c for c in to_install if not depends[c.module]]
        waiting = [c for c in to_install if depends[c.module]]
        if not ready:
            break
        tasks = [
            TaskRun(c, not session.tree.is_built(c.module, c.version, kver, arch)) for c in ready
        ]
        prologue = BufferConsole()
        if any(t.needs_build for t in tasks) and not prologue_done:
            if not session.facts(kver).headers_ready:
                # dkms dies here for the whole run; modules before the first build still install
                first = next(i for i, t in enumerate(tasks) if t.needs_build)
                _run_autoinstall_round(session, tasks[:first], kver, arch, 1, log)
                for t in tasks[:first]:
                    _replay_autoinstall(console, t, kver, arch)
                    _classify(t, installed, skipped, failed)
                session.prepare_kernel(kver)
                raise HeadersMissingError("unreachable")  # pragma: no cover
            prepared = fork(session, prologue)
            prepared.prepare_kernel_and_signing(kver, arch)
            session.prepared_kernel = prepared.prepared_kernel
            session.signing = prepared.signing
        _run_autoinstall_round(session, tasks, kver, arch, budget, log)
        for t in tasks:
            if t.needs_build and not prologue_done:
                prologue.replay(console)
                prologue_done = True
            _replay_autoinstall(console, t, kver, arch)
            _classify(t, installed, skipped, failed)
        to_install = waiting

    session.installed_count = len(installed)
    if installed:
        console.echo(f"Autoinstall on {kver} succeeded for module(s) {' '.join(installed)}.")
    if skipped:
        console.echo(f"Autoinstall on {kver} was skipped for module(s) {' '.join(skipped)}.")
    if failed:
        console.echo(f"Autoinstall on {kver} failed for module(s) {' '.join(failed)}.")
    known = {m for m, _ in latest_versions(session)[0]}
    real_missing: list[Candidate] = []
    deferred: list[Candidate] = []
    for c in to_install:
        if any(d in known for d in depends[c.module]):
            real_missing.append(c)
        else:
            deferred.append(c)
    for c in real_missing:
        console.echo(
            f"{c.module}/{c.version} autoinstall failed due to missing dependencies: "
            f"{' '.join(depends[c.module])}."
        )
    for c in deferred:
        console.echo(
            f"{c.module}/{c.version} autoinstall deferred: BUILD_DEPENDS not registered with "
            f"DKMS: {' '.join(depends[c.module])}."
        )
    if deferred:
        names = " ".join(f"{c.module}/{c.version}" for c in deferred)
        console.echo(
            f"Autoinstall on {kver} deferred module(s) {names} due to BUILD_DEPENDS not yet "
            "registered with DKMS.",
            "These may be provided externally or by a package not yet configured; "
            "autoinstall will retry on the next trigger.",
        )
    if log is not None:
        for c in real_missing:
            log.add(
                c.module,
                c.version,
                kver,
                arch,
                "install",
                "failed",
                rc=11,
                message=f"missing dependencies: {' '.join(depends[c.module])}",
            )
        for c in deferred:
            log.add(
                c.module,
                c.version,
                kver,
                arch,
                "install",
                "deferred-dependency",
                message=f"BUILD_DEPENDS not registered: {' '.join(depends[c.module])}",
            )
    if failed or real_missing:
        raise DkmsError(
            "One or more modules failed to install during autoinstall.",
            "Refer to previous errors for more information.",
            code=11,
        )
    return 0


def _run_autoinstall_round(
    session: Session,
    tasks: Sequence[TaskRun],
    kver: str,
    arch: str,
    budget: int,
    log: LogSink | None,
) -> None:
    def work(sub: Session, cand: Candidate) -> None:
        sub.maybe_install(cand.module, cand.version, kver, arch)

    def end(task: TaskRun) -> None:
        if log is None:
            return
        c = task.candidate
        outcome = {0: "installed", 77: "skipped-excluded"}.get(task.rc, "failed")
        log.add(
            c.module,
            c.version,
            kver,
            arch,
            "install",
            outcome,
            rc=task.rc,
            duration=task.duration,
            session=session,
        )

    run_tasks(session, tasks, work, budget=budget, on_end=end)


def _replay_autoinstall(console: Console, task: TaskRun, kver: str, arch: str) -> None:
    c = task.candidate
    console.echo(f"Autoinstall of module {c.module}/{c.version} for kernel {kver} ({arch})")
    task.console.replay(console)
    console.echo("")


def _classify(task: TaskRun, installed: list[str], skipped: list[str], failed: list[str]) -> None:
    m = task.candidate.module
    if task.rc == 0:
        installed.append(m)
    elif task.rc == 77:
        skipped.append(m)
    else:
        failed.append(f"{m}({task.rc})")


def built_for_kernel(
    session: Session,
    kver: str,
    arch: str,
    *,
    autoinstall_only: bool,
    skip_bad_conf: bool = False,
) -> list[tuple[str, str]]:
    """The module/versions built for K/A (only those with AUTOINSTALL when asked: the modules a
    kernel_preinst unbuilds so the postinst rebuilds them)."""
    found = []
    for module, version in list(session.tree.module_versions()):
        if not session.tree.is_built(module, version, kver, arch):
            continue
        if autoinstall_only:
            try:
                conf = session.read_conf(
                    module,
                    version,
                    kver,
                    arch,
                    session.layout.source_link(module, version) / "dkms.conf",
                )
            except DkmsError:
                if skip_bad_conf:
                    continue
                raise
            if not conf.autoinstall:
                continue
        found.append((module, version))
    return found


def dkms_kernel_remove(
    session: Session, kver: str, arch: str, *, preinst: bool, log: LogSink | None = None
) -> int:
    """kernel_prerm (unbuild everything built for K) and kernel_preinst (unbuild AUTOINSTALL
    modules so postinst rebuilds them). depmod runs once at the end — really (dkms skips it)."""
    console = session.console
    failed: list[str] = []
    delayed = fork(session, console, delayed_depmod=True)
    # dkms's read_conf_or_die: an unreadable conf stops kernel_preinst
    for module, version in built_for_kernel(session, kver, arch, autoinstall_only=preinst):
        console.echo_err(f"dkms: removing module {module}/{version} for kernel {kver} ({arch})")
        start = time.monotonic()
        try:
            delayed.maybe_uninstall(module, version, kver, arch)
            delayed.maybe_unbuild(module, version, kver, arch)
            if log is not None:
                log.add(
                    module,
                    version,
                    kver,
                    arch,
                    "unbuild",
                    "removed",
                    duration=time.monotonic() - start,
                )
        except DkmsError as exc:
            from .dkmscli import print_error

            print_error(console, exc)
            failed.append(f"{module}/{version}({exc.code})")
            if log is not None:
                log.add(
                    module,
                    version,
                    kver,
                    arch,
                    "unbuild",
                    "failed",
                    rc=exc.code,
                    message=" ".join(exc.lines),
                )
        if not preinst:
            console.echo("")
    if delayed.depmod_pending:
        session.invoke_fn("Running depmod", lambda: session.depmod(kver), "")
    top = session.layout.modules_dir(kver)
    if top.is_dir():
        from .install import _delete_empty_dirs

        _delete_empty_dirs(top)
    if failed:
        what = "kernel_preinst" if preinst else "kernel_prerm"
        raise DkmsError(
            f"dkms {what} for kernel {kver} ({arch}) failed for module(s) {' '.join(failed)}.",
            code=14,
        )
    return 0


# -- the unified log -----------------------------------------------------------------------------


class LogSink:
    """Collects outcome records for one engine run and appends them to the unified log."""

    def __init__(self, path: Path, source: str, transaction: str) -> None:
        self.path = path
        self.source = source
        self.transaction = transaction
        self.records: list[Outcome] = []
        self.lock = threading.Lock()

    def add(
        self,
        module: str,
        version: str,
        kver: str,
        arch: str,
        action: str,
        outcome: str,
        *,
        rc: int = 0,
        duration: float = 0.0,
        message: str = "",
        session: Session | None = None,
    ) -> Outcome:
        make_log = tail = None
        if outcome == "failed" and session is not None:
            candidate = session.layout.build_dir(module, version) / "make.log"
            if candidate.is_file():
                make_log = str(candidate)
                tail = tuple(_tail(candidate, 20))
        elif session is not None:
            candidate = session.layout.built_dir(module, version, kver, arch) / "log" / "make.log"
            if candidate.is_file():
                make_log = str(candidate)
        record = Outcome(
            module,
            version,
            kver,
            arch,
            action,
            outcome,
            rc,
            round(duration, 3),
            make_log,
            tail,
            message,
        )
        with self.lock:
            self.records.append(record)
        return record

    def flush(self, console: Console | None = None) -> None:
        if not self.records:
            return
        try:
            from . import rebuildlog

            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            rebuildlog.append(
                self.path,
                [
                    rebuildlog.LogRecord(
                        time=now,
                        source=self.source,
                        transaction=self.transaction,
                        module=r.module,
                        version=r.version,
                        kernel=r.kver,
                        arch=r.arch,
                        action=r.action,
                        outcome=r.outcome,
                        duration=r.duration,
                        make_log=r.make_log,
                        tail=r.tail,
                        message=r.message,
                        exit_code=r.rc if r.rc else None,
                        schema=1,
                    )
                    for r in self.records
                ],
            )
        except (ImportError, OSError, ValueError) as exc:
            if console is not None:
                console.write_err(
                    f"dkmshooks: could not write the rebuild log {self.path}: {exc}\n"
                )
        self.records = []


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return data.splitlines()[-lines:]


# -- hook mode -----------------------------------------------------------------------------------


def _say(message: str) -> None:
    from .console import note

    note(message)


def hook_session(environ: Mapping[str, str]) -> Session:
    from .framework import load_settings
    from .layout import Layout

    root = Path(environ.get("DKMSHOOKS_ROOT", "/") or "/")
    settings = load_settings(Layout(root=root), environ)
    return Session(settings=settings, options=Options(), console=BufferConsole(), environ=environ)


def handle_trigger(trigger: Trigger, environ: Mapping[str, str]) -> int:
    """The adapters' one entry point. Exit code: 0 unless a module failed and `strict` is set."""
    from .hookengine import run_trigger

    return run_trigger(trigger, environ)


__all__ = [
    "BufferConsole",
    "Candidate",
    "KernelPlan",
    "LogSink",
    "Outcome",
    "Report",
    "TaskRun",
    "dkms_autoinstall",
    "dkms_kernel_remove",
    "fork",
    "handle_trigger",
    "hook_session",
    "initramfs",
    "latest_versions",
    "load_config",
    "log_path_for",
    "plan_kernel",
    "run_tasks",
    "state",
]
