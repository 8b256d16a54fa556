"""Hook mode of the engine: the ordering rules for package-manager triggers, progress in
dkmshooks's voice, one rebuild per transaction, initramfs follow-up, failure policy."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import initramfs, janitor, state
from .config import Config, load_config, log_path_for
from .console import note
from .engine import (
    BufferConsole,
    Candidate,
    LogSink,
    TaskRun,
    _budget,
    built_for_kernel,
    fork,
    hook_session,
    plan_kernel,
    run_tasks,
)
from .errors import DkmsError
from .layout import Layout
from .locking import TreeLock, lock_timeout
from .status import Session
from .trigger import Trigger


@dataclass
class HookRun:
    session: Session
    trigger: Trigger
    config: Config
    log: LogSink
    arch: str
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    #: (module, kernel) pairs already attempted in this trigger: a failure is not retried
    attempted: set[tuple[str, str]] = field(default_factory=set)
    #: the kernel being handled waited for its headers: its initramfs was made without us
    was_pending_no_headers: bool = False
    #: kernels found to need nothing at all (nothing to build, install, report or repair),
    #: with the readiness that was marked in the transaction
    idle: dict[str, dict[str, bool]] = field(default_factory=dict)

    @property
    def layout(self):  # type: ignore[no-untyped-def]
        return self.session.layout


def headers_package(trigger: Trigger, kver: str, distro: str) -> str:
    per_kernel = trigger.extra.get(f"headers_hint:{kver}")
    if per_kernel:
        return per_kernel
    if trigger.headers_package_hint:
        return trigger.headers_package_hint
    if distro.startswith(("fedora", "rhel", "centos", "rocky", "alma", "ol")):
        return f"kernel-devel-{kver}"
    if distro.startswith("arch"):
        return "the headers package of this kernel (e.g. linux-headers)"
    return f"linux-headers-{kver}"


def run_trigger(trigger: Trigger, environ: Mapping[str, str]) -> int:
    kver = verdict_kernel(trigger, environ)
    if kver is None:
        return _run_trigger(trigger, environ)[0]
    # a hook call fasthook can answer next time, if this run does nothing (verdict.py)
    from . import verdict

    state_dir = os.fspath(Layout(root=Path(environ.get("DKMSHOOKS_ROOT") or "/")).state_dir)
    name = verdict.name_for(trigger.source, kver)
    recorder = verdict.Recorder(verdict.excluded_paths(state_dir))
    with recorder:
        rc, run = _run_trigger(trigger, environ)
    found = None
    if rc == 0 and run is not None and not run.failures and not run.log.records:
        readiness = run.idle.get(kver)
        if readiness is not None and list(run.idle) == [kver]:
            found = recorder.verdict(name, readiness["headers"], readiness["image"], environ)
    if found is not None:
        verdict.save(state_dir, found)
    else:
        verdict.forget(state_dir, name)
    return rc


def verdict_kernel(trigger: Trigger, environ: Mapping[str, str]) -> str | None:
    """The kernel of a trigger whose "nothing to do" fasthook can answer: one apt hook call for
    a kernel's image or headers being configured, or one kernel-install `add` (not under fault
    injection)."""
    if trigger.modules or len(trigger.kernels) != 1 or environ.get("DKMSHOOKS_FAULT"):
        return None
    event = trigger.kernels[0]
    if trigger.source == "apt" and event.event in ("image-added", "headers-added"):
        return event.kver
    if trigger.source == "kernel-install" and event.event == "image-added":
        return event.kver
    return None


def forget_verdicts(layout: Layout, kver: str) -> None:
    """A kernel going away: its verdicts can never hold again (/lib/modules/K changes)."""
    from . import verdict

    for source in ("apt", "kernel-install"):
        verdict.forget(os.fspath(layout.state_dir), verdict.name_for(source, kver))


def _run_trigger(trigger: Trigger, environ: Mapping[str, str]) -> tuple[int, HookRun | None]:
    try:
        session = hook_session(environ)
    except DkmsError as exc:
        # a hook must not fail the package transaction over our own setup problem
        note(f"{' '.join(exc.lines)}; nothing was rebuilt")
        return 0, None
    layout = session.layout
    try:
        config = load_config(layout)
    except DkmsError as exc:
        note(f"{' '.join(exc.lines)}; using the defaults")
        config = Config()
    log = LogSink(log_path_for(layout, config), trigger.source, trigger.transaction)
    run = HookRun(session, trigger, config, log, os.uname().machine)
    with TreeLock(layout.lock_path, say=note, timeout=lock_timeout(environ)):
        janitor.sweep(layout)  # what runs killed earlier left (issue #9)
        for event in trigger.kernels:
            kver = event.kver
            if event.event == "image-removed":
                remove_kernel(run, kver, preinst=False)
                forget_verdicts(layout, kver)
            elif event.event == "image-preinst":
                remove_kernel(run, kver, preinst=True)
                state.mark_transaction(
                    layout, trigger.transaction, f"{kver}#preinst", {"seen": True}
                )
            elif event.event == "headers-removed":
                note(f"{kver}: headers removed; installed modules stay until the kernel goes")
            else:
                if event.event == "image-added":
                    state.mark_transaction(
                        layout, trigger.transaction, f"{kver}#image-added", {"seen": True}
                    )
                add_kernel(run, kver)
        for mev in trigger.modules:
            if mev.event == "added":
                register_module(run, mev.module, mev.version)
                for kver in installed_kernels(session):
                    add_kernel(run, kver, only=(mev.module,))
            else:
                remove_module_everywhere(run, mev.module, mev.version)
    log.flush(session.console)
    if run.failures:
        note(
            f"{len(run.failures)} module build(s) FAILED: {', '.join(run.failures)}. "
            "The kernel packages were left configured; see `dkmshooks log --failed`."
        )
        if any(run.config.is_strict_for(f.split("/", 1)[0]) for f in run.failures):
            return 1, run
    return 0, run


def installed_kernels(session: Session) -> list[str]:
    top = session.layout.install_tree
    try:
        names = sorted(os.listdir(top))
    except OSError:
        return []
    return [k for k in names if (top / k).is_dir() and session.facts(k).headers_ready]


def add_kernel(run: HookRun, kver: str, *, only: Sequence[str] = ()) -> None:
    session, layout, trigger = run.session, run.layout, run.trigger
    facts = session.facts(kver)
    headers = facts.headers_complete
    image = facts.image_ready(layout)
    readiness = {"headers": headers, "image": image}
    if not only:
        done = state.transaction_done(layout, trigger.transaction, kver)
        if done == readiness:
            note(f"{kver}: already handled in this transaction")
            return
    if layout.no_autoinstall_flag.exists():
        note(f"{kver}: automatic installation is disabled by {layout.no_autoinstall_flag}")
        return
    plan = plan_kernel(session, kver, run.arch, only=only)
    for mv in plan.broken:
        note(f"{kver}: {mv} is broken (missing source); skipped. Fix or remove it with dkms.")
    for module, version, exc in plan.bad_conf:
        message = " ".join(exc.lines)
        note(f"{kver}: {module}/{version}: {message}")
        run.log.add(
            module, version, kver, run.arch, "install", "failed", rc=exc.code, message=message
        )
        run.failures.append(f"{module}/{version} ({kver})")
    candidates = [
        c
        for c in plan.candidates
        if not run.config.module(c.module).skip and (c.module, kver) not in run.attempted
    ]
    fork(session, BufferConsole()).repair_depmod_all(kver, run.arch)  # after a crash (#9)
    if not candidates:
        if not only:
            state.mark_transaction(layout, trigger.transaction, kver, readiness)
            state.clear_pending(layout, kver)
            if not plan.broken and not plan.bad_conf and not plan.candidates:
                run.idle[kver] = readiness
        return
    hint = headers_package(trigger, kver, session.settings.distro)
    pending = state.read_pending(layout, kver)
    run.was_pending_no_headers = bool(pending and pending.get("reason") == "no-headers")
    if not headers:
        _defer_without_headers(run, kver, candidates, image, hint)
    elif not image:
        _build_only(run, kver, candidates, hint)
    else:
        _build_and_install(run, kver, candidates)
    if not only:
        state.mark_transaction(layout, trigger.transaction, kver, readiness)


def _defer_without_headers(
    run: HookRun, kver: str, candidates: Sequence[Candidate], image: bool, hint: str
) -> None:
    session = run.session
    built = [c for c in candidates if session.tree.is_built(c.module, c.version, kver, run.arch)]
    unbuilt = [c for c in candidates if c not in built]
    for c in unbuilt:
        run.log.add(
            c.module,
            c.version,
            kver,
            run.arch,
            "build",
            "deferred-no-headers",
            message=f"install {hint} to build it",
        )
    if unbuilt:
        names = " ".join(f"{c.module}/{c.version}" for c in unbuilt)
        note(f"{kver}: no kernel headers; not building {names}. Install {hint} and it will be.")
        state.record_pending(run.layout, kver, "no-headers", [c.module for c in unbuilt], hint)
    if built and image:
        _build_and_install(run, kver, built)
    elif built:
        for c in built:
            run.log.add(
                c.module,
                c.version,
                kver,
                run.arch,
                "install",
                "deferred-no-image",
                message="built; installs when the kernel image arrives",
            )


def _build_only(run: HookRun, kver: str, candidates: Sequence[Candidate], hint: str) -> None:
    """Headers configured before the image: build now, hold install and depmod."""
    session = run.session
    todo = [c for c in candidates if not session.tree.is_built(c.module, c.version, kver, run.arch)]
    ok = _run_rounds(run, kver, candidates, todo, install=False)
    for c in candidates:
        if c.module in ok:
            run.log.add(
                c.module,
                c.version,
                kver,
                run.arch,
                "install",
                "deferred-no-image",
                message="built; installs when the kernel image arrives",
            )
    note(f"{kver}: kernel image not installed yet; built modules will be installed with it")
    state.record_pending(run.layout, kver, "no-image", [c.module for c in candidates], hint)


def _build_and_install(run: HookRun, kver: str, candidates: Sequence[Candidate]) -> None:
    session = run.session
    before = initramfs.newest_initramfs_mtime(run.layout, kver)
    ok = _run_rounds(run, kver, candidates, list(candidates), install=True)
    if ok:
        quiet = fork(session, BufferConsole())
        rc = quiet.depmod(kver)
        if rc != 0:
            note(f"{kver}: depmod failed (status {rc}); run `depmod -a {kver}` to see why")
    # headers and image are both here now: nothing is pending any more (failures are in the log)
    state.clear_pending(run.layout, kver)
    installed = [c for c in candidates if c.module in ok]
    if installed:
        _maybe_regenerate_initramfs(run, kver, installed, before)


def _run_rounds(
    run: HookRun,
    kver: str,
    candidates: Sequence[Candidate],
    todo: Sequence[Candidate],
    *,
    install: bool,
) -> set[str]:
    """Dependency rounds; within a round, modules build in parallel. Returns module names that
    ended in the wanted state (built, or installed)."""
    session, arch = run.session, run.arch
    ok = {c.module for c in candidates if c not in todo}
    ok |= {m for m in _already_installed_names(session, kver, arch)}
    failed: set[str] = set()
    skipped: set[str] = set()
    pending = list(todo)
    budget = _budget(session, run.config)
    if any(not session.tree.is_built(c.module, c.version, kver, arch) for c in pending):
        prologue = fork(session, BufferConsole())
        try:
            prologue.prepare_kernel_and_signing(kver, arch)
            session.prepared_kernel = prologue.prepared_kernel
            session.signing = prologue.signing
        except DkmsError as exc:
            note(f"{kver}: {' '.join(exc.lines)}")
            return ok
    known = {m for m, _ in _registered(session)}
    while pending:
        ready = []
        waiting = []
        for c in pending:
            deps = [d for d in c.depends if d not in ok and d not in skipped]
            if any(d in failed for d in deps):
                failed.add(c.module)
                run.failures.append(f"{c.module}/{c.version} ({kver})")
                run.log.add(
                    c.module,
                    c.version,
                    kver,
                    arch,
                    "build",
                    "failed",
                    message=f"a BUILD_DEPENDS module failed: {' '.join(deps)}",
                )
                note(f"{kver}: {c.module}/{c.version} not built: its dependency failed")
            elif deps:
                waiting.append(c)
            else:
                ready.append(c)
        if not ready:
            for c in waiting:
                deps = [d for d in c.depends if d not in ok and d not in skipped]
                outcome = "failed" if any(d in known for d in deps) else "deferred-dependency"
                run.log.add(
                    c.module,
                    c.version,
                    kver,
                    arch,
                    "build",
                    outcome,
                    message=f"BUILD_DEPENDS not satisfied: {' '.join(deps)}",
                )
                note(f"{kver}: {c.module}/{c.version} waits for {' '.join(deps)}")
                if outcome == "failed":
                    run.failures.append(f"{c.module}/{c.version} ({kver})")
            break
        tasks = [TaskRun(c, True) for c in ready]
        run.attempted.update((c.module, kver) for c in ready)
        action = "install" if install else "build"

        def work(sub: Session, cand: Candidate) -> None:
            if install:
                sub.maybe_install(cand.module, cand.version, kver, arch)
            elif not sub.tree.is_built(cand.module, cand.version, kver, arch):
                sub.do_build(cand.module, cand.version, kver, arch)

        def start(task: TaskRun) -> None:
            c = task.candidate
            built = session.tree.is_built(c.module, c.version, kver, arch)
            verb = ("installing" if built else "building and installing") if install else "building"
            note(f"{kver}: {verb} {c.module}/{c.version}...")

        def end(task: TaskRun, action: str = action) -> None:
            c = task.candidate
            if task.rc == 0:
                outcome = "installed" if install else "built"
            elif task.rc == 77:
                outcome = "skipped-excluded"
            else:
                outcome = "failed"
            rec = run.log.add(
                c.module,
                c.version,
                kver,
                arch,
                action,
                outcome,
                rc=task.rc,
                duration=task.duration,
                session=session,
                message=_last_error(task) if outcome == "failed" else "",
            )
            note(f"{kver}: {c.module}/{c.version} {outcome} ({task.duration:.1f}s)")
            if outcome == "failed":
                if rec.make_log:
                    note(f"{kver}: {c.module}/{c.version}: see {rec.make_log}; its last lines:")
                    for line in rec.tail or ():
                        note(f"    {line}")
                else:
                    for line in task.console.text().splitlines()[-20:]:
                        note(f"    {line}")

        run_tasks(
            session,
            tasks,
            work,
            budget=budget,
            on_start=start,
            on_end=end,
            extra_options={"no_depmod": True},
        )
        for t in tasks:
            if t.rc == 0:
                ok.add(t.candidate.module)
            elif t.rc == 77:
                skipped.add(t.candidate.module)
            else:
                failed.add(t.candidate.module)
                run.failures.append(f"{t.candidate.module}/{t.candidate.version} ({kver})")
        pending = waiting
    return ok


def _last_error(task: TaskRun) -> str:
    if task.error is not None:
        return " ".join(line for line in task.error.lines if line)
    return ""


def _registered(session: Session) -> list[tuple[str, str]]:
    return list(session.tree.module_versions())


def _already_installed_names(session: Session, kver: str, arch: str) -> set[str]:
    names = set()
    for module, version in session.tree.module_versions():
        if session.tree.is_active(module, version, kver, arch):
            names.add(module)
    return names


def _maybe_regenerate_initramfs(
    run: HookRun, kver: str, installed: Sequence[Candidate], before: float | None
) -> None:
    layout, config = run.layout, run.config
    if run.trigger.extra.get("initramfs_follows") == "1":
        return
    txn = run.trigger.transaction
    if state.transaction_done(layout, txn, f"{kver}#preinst") and not state.transaction_done(
        layout, txn, f"{kver}#image-added"
    ):
        return  # the image is being reinstalled in this transaction: its own hook regenerates
    if before is None:
        return  # no initramfs yet: the generator's own hook will include the modules
    policies = {c.module: config.module(c.module).initramfs or config.initramfs for c in installed}
    installed = [c for c in installed if policies[c.module] != "never"]
    if not installed:
        return
    names: set[str] = set()
    for c in installed:
        mdir = layout.built_dir(c.module, c.version, kver, run.arch) / "module"
        for f in mdir.glob("*.ko*"):
            names.add(f.name.split(".ko", 1)[0])
    # modules that waited for headers missed the initramfs the kernel package generated
    wanted = run.was_pending_no_headers or any(policies[c.module] == "always" for c in installed)
    if not wanted:
        configured = initramfs.configured_modules(layout)
        wanted = bool({n.replace("-", "_") for n in names} & configured)
    if not wanted:
        wanted = initramfs.listed_in_image(layout, kver, names)
    if not wanted:
        return
    note(f"{kver}: regenerating the initramfs (a module it contains was rebuilt)...")
    start = time.monotonic()
    rc, output, argv = initramfs.regenerate(layout, kver)
    outcome = "initramfs-regenerated" if rc == 0 else "failed"
    run.log.add(
        "initramfs",
        "-",
        kver,
        run.arch,
        "initramfs",
        outcome,
        rc=rc,
        duration=time.monotonic() - start,
        message=" ".join(argv),
    )
    if rc != 0:
        note(f"{kver}: {' '.join(argv)} failed (status {rc}):")
        for line in output.splitlines()[-20:]:
            note(f"    {line}")
        run.failures.append(f"initramfs ({kver})")
    else:
        note(f"{kver}: initramfs regenerated ({time.monotonic() - start:.1f}s)")


def remove_kernel(run: HookRun, kver: str, *, preinst: bool) -> None:
    session, arch = run.session, run.arch
    quiet = fork(session, BufferConsole(), delayed_depmod=True)
    removed = 0
    for module, version in built_for_kernel(
        quiet, kver, arch, autoinstall_only=preinst, skip_bad_conf=True
    ):
        start = time.monotonic()
        try:
            quiet.maybe_uninstall(module, version, kver, arch)
            quiet.maybe_unbuild(module, version, kver, arch)
            removed += 1
            run.log.add(
                module, version, kver, arch, "unbuild", "removed", duration=time.monotonic() - start
            )
        except DkmsError as exc:
            run.log.add(
                module,
                version,
                kver,
                arch,
                "unbuild",
                "failed",
                rc=exc.code,
                message=" ".join(exc.lines),
            )
            run.failures.append(f"{module}/{version} ({kver})")
    if quiet.depmod_pending:
        quiet.depmod(kver)
    top = session.layout.modules_dir(kver)
    if top.is_dir():
        from .install import _delete_empty_dirs

        _delete_empty_dirs(top)
    if not preinst:
        state.clear_pending(session.layout, kver)
    if removed:
        what = "to rebuild after the upgrade" if preinst else "for the removed kernel"
        note(f"{kver}: removed {removed} module(s) {what}")


def register_module(run: HookRun, module: str, version: str) -> None:
    """A module source that arrived without `dkms add` (Arch, rpm without scriptlets)."""
    session = run.session
    if not module or not version or session.tree.is_added(module, version):
        return
    if not session.layout.module_source(module, version).is_dir():
        return
    try:
        fork(session, BufferConsole()).add_module(module, version, os.uname().release, run.arch)
        note(f"{module}/{version}: registered")
    except DkmsError as exc:
        note(f"{module}/{version}: cannot register: {' '.join(exc.lines)}")
        run.failures.append(f"{module}/{version}")


def remove_module_everywhere(run: HookRun, module: str, version: str) -> None:
    session = run.session
    if not session.tree.is_added(module, version) and not session.tree.is_broken(module, version):
        return
    quiet = fork(session, BufferConsole())
    kernels = [(e.kver, e.arch) for e in session.tree.built_entries(module, version)]
    try:
        quiet.remove_module(module, version, kernels)
        for kver, arch in kernels:
            run.log.add(module, version, kver, arch, "remove", "removed")
        note(f"{module}/{version}: removed from {len(kernels)} kernel(s)")
    except DkmsError as exc:
        note(f"{module}/{version}: removal failed: {' '.join(exc.lines)}")
        run.failures.append(f"{module}/{version}")


def find_kernels(root: Path) -> list[str]:
    try:
        return sorted(os.listdir(root))
    except OSError:
        return []
