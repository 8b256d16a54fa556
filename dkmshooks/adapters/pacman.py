"""pacman/ALPM adapter: the targets pacman writes to the hooks in hooks/pacman/ → `Trigger`s, and
the follow-up that refreshes the initramfs images mkinitcpio's own hook did not cover.

What libalpm runs (alpm-hooks(5); reference/distro-hooks.md §2): every hook is `Type = Path` with
`NeedsTargets` (the matched paths, relative to the root, sorted, one per line on stdin), forked,
chroot()ed into pacman's root and execv()ed, so `Exec` is an absolute path inside the root and
`DKMSHOOKS_ROOT` is normally unset. Within Pre and within Post, hooks run in the order of their
file names, whichever hook directory they are in (libalpm compares them without ".hook").

    file                             when  operation        `hook pacman`  targets → events
    70-dkmshooks-upgrade.hook        Pre   Upgrade          upgrade    image → image-preinst
                                                                       dkms.conf → removed
    71-dkmshooks-remove.hook         Pre   Remove           remove     image → image-removed
                                                                       headers → headers-removed
                                                                       dkms.conf → removed
    70-dkmshooks-install.hook        Post  Install, Upgrade install    image → image-added
                                                                       headers → headers-added
                                                                       dkms.conf → added
    90-zz-dkmshooks-initramfs.hook   Post  Install, Upgrade initramfs  (state left by install)

Targets: "image" is `usr/lib/modules/K/modules.order` or `…/vmlinuz` (the kernel package),
"headers" is `usr/lib/modules/K/build/include/` (the headers package), "dkms.conf" is
`usr/src/M-V/dkms.conf` (a module source package). K is the directory name, as in Arch's own dkms
hook script.

Why these and not more:
- A kernel update changes K, so pacman reports it as Install of the new paths plus Remove of the
  old ones, never as Upgrade (lab-pacman-dnf-kinstall.md §1.5). Upgrade only happens for the same
  K (a rebuilt or reinstalled package): then, as Arch's 70-dkms-upgrade does, the modules built
  for K are unbuilt before the files change and the Post hook rebuilds them.
- Remove hooks must be PreTransaction: in Post the old tree is gone. Upgrade sorts before remove,
  as in Arch's dkms package ("upgrade is run before remove in order to have the cleanest depmod
  file"). No AbortOnFail anywhere: a module must never block a kernel transaction.
- Headers alone going away leaves installed modules in place (headers-removed only notes it).
- Module sources are registered with the DKMS tree here (`dkms add`), because Arch has no
  maintainer script that does it: Arch's dkms hook runs `dkms install M/V` for every
  `/usr/src/*/dkms.conf` on a kernel change, which adds as a side effect. The engine only plans
  registered modules, so for a kernel event every unregistered source in /usr/src is added first.

Initramfs: mkinitcpio's own `90-mkinitcpio-install.hook` runs after our 70- hook whenever a
`vmlinuz` or a `dkms.conf` was installed, and then already includes what we built. It does not
run for a headers-only transaction, and a module could also land after it ran. So the install
hook passes `initramfs_follows` to the engine (which then never regenerates itself) and records,
for each kernel that got a module, the identity (mtime, size, inode) of its initramfs images at
that moment. The 90-zz- hook, which sorts after every `90-<generator>` hook, regenerates once per
mkinitcpio preset only the kernels whose images are still exactly those, and clears the record.
Arch's mkinitcpio regenerates on every dkms.conf change (mkinitcpio commit aff8171, issue #200),
so `initramfs = "auto"` means "regenerate" here; only "never" skips it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from dkmshooks.adapters import is_strict
from dkmshooks.console import note
from dkmshooks.errors import DkmsError
from dkmshooks.fsutil import write_atomic
from dkmshooks.layout import Layout
from dkmshooks.trigger import KernelEvent, ModuleEvent, Trigger, new_transaction_id

if TYPE_CHECKING:
    from dkmshooks.config import Config
    from dkmshooks.status import Session

ACTIONS = ("install", "upgrade", "remove", "initramfs")

#: Overrides the transaction id (scripts that run pacman and want one id in the log, tests).
TRANSACTION_VAR = "DKMSHOOKS_TRANSACTION"
FOLLOWUP_FILE = "pacman-initramfs.json"
FOLLOWUP_SCHEMA = 1

USAGE = """\
Usage: dkmshooks hook pacman install|upgrade|remove   < targets
       dkmshooks hook pacman initramfs
Called by the alpm hooks in /usr/share/libalpm/hooks/*dkmshooks*.hook, not by people.
install, upgrade and remove read pacman's NeedsTargets list on stdin: paths relative to the root,
one per line (usr/lib/modules/K/vmlinuz, usr/lib/modules/K/build/include/, usr/src/M-V/dkms.conf).
initramfs regenerates the initramfs of kernels that got a module after the generator ran.
DKMSHOOKS_ROOT relocates the root (hooks run chrooted into pacman's root, so it is normally /).
"""

_IMAGE_FILES = ("modules.order", "vmlinuz")


# -- NeedsTargets → what changed -----------------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    """What one hook call was told, by kind. Kernel releases and source directory names are
    sorted and unique."""

    images: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # directory names under usr/src, e.g. "zfs-2.2.3"

    @property
    def kernels(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.images) | set(self.headers)))


def _is_kver(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name


def parse_target(line: str) -> tuple[str, str] | None:
    """One NeedsTargets line → ("image"|"headers", K) or ("source", "M-V"); None for anything
    else. alpm globs match `*` across `/` (fnmatch without FNM_PATHNAME), so a hook may be handed
    deeper paths than its Target suggests: only these exact shapes count."""
    path = line.strip().strip("/")
    if not path:
        return None
    parts = path.split("/")
    if parts[0] == "usr":
        parts = parts[1:]
    if len(parts) >= 4 and parts[0] == "lib" and parts[1] == "modules" and _is_kver(parts[2]):
        kver, rest = parts[2], parts[3:]
        if len(rest) == 1 and rest[0] in _IMAGE_FILES:
            return ("image", kver)
        if len(rest) >= 2 and rest[0] == "build" and rest[1] == "include":
            return ("headers", kver)
        return None
    if len(parts) == 3 and parts[0] == "src" and parts[2] == "dkms.conf" and _is_kver(parts[1]):
        return ("source", parts[1])
    return None


def parse_targets(lines: Iterable[str]) -> Targets:
    found: dict[str, set[str]] = {"image": set(), "headers": set(), "source": set()}
    for line in lines:
        parsed = parse_target(line)
        if parsed is not None:
            found[parsed[0]].add(parsed[1])
    return Targets(
        images=tuple(sorted(found["image"])),
        headers=tuple(sorted(found["headers"])),
        sources=tuple(sorted(found["source"])),
    )


def split_source_dir(name: str) -> tuple[str, str] | None:
    """`/usr/src/<module>-<version>` → (module, version) when nothing better is known (the
    registered tree or the dkms.conf). Versions start with a digit far more often than names
    contain "-<digit>", so split at the last "-" followed by a digit, else at the last "-"
    (which is what Arch's dkms hook does: `([^/]+)-([^/]+)`)."""
    candidates = [m.start() for m in re.finditer(r"-(?=[0-9])", name)]
    cut = candidates[-1] if candidates else name.rfind("-")
    if cut <= 0 or cut == len(name) - 1:
        return None
    return name[:cut], name[cut + 1 :]


def kernel_events(action: str, targets: Targets) -> tuple[KernelEvent, ...]:
    """One event per kernel: the image, when both image and headers changed, says more."""
    events: list[KernelEvent] = []
    images = set(targets.images)
    for kver in targets.kernels:
        if action == "install":
            events.append(KernelEvent(kver, "image-added" if kver in images else "headers-added"))
        elif action == "upgrade":
            # Same K reinstalled: modules built for it may not match the new image. Headers
            # upgraded alone change nothing that is installed.
            if kver in images:
                events.append(KernelEvent(kver, "image-preinst"))
        elif action == "remove":
            events.append(
                KernelEvent(kver, "image-removed" if kver in images else "headers-removed")
            )
    return tuple(events)


def module_events(action: str, sources: Sequence[tuple[str, str]]) -> tuple[ModuleEvent, ...]:
    event = "added" if action == "install" else "removed"
    return tuple(ModuleEvent(m, v, event) for m, v in sources)


def kernels_with_headers(layout: Layout) -> list[str]:
    try:
        names = sorted(os.listdir(layout.install_tree))
    except OSError:
        return []
    return [k for k in names if (layout.modules_dir(k) / "build" / "include").is_dir()]


def without_covered_modules(
    kernels: Sequence[KernelEvent],
    modules: Sequence[ModuleEvent],
    headers_kernels: Sequence[str],
) -> tuple[ModuleEvent, ...]:
    """Added modules need no event of their own when the transaction's kernel events reach every
    kernel that has headers: those build all registered modules, the new ones included. The
    engine's module loop would try a module that just failed for such a kernel a second time."""
    added = {e.kver for e in kernels if e.event in ("image-added", "headers-added")}
    if added and set(headers_kernels) <= added:
        return tuple(m for m in modules if m.event != "added")
    return tuple(modules)


def build_triggers(
    action: str,
    kernels: Sequence[KernelEvent],
    modules: Sequence[ModuleEvent],
    *,
    transaction: str,
    hints: Mapping[str, str] | None = None,
) -> list[Trigger]:
    """The engine calls for one hook call. A Trigger carries one headers-package hint, and
    linux and linux-lts need different ones, so kernels are grouped by hint; module events ride
    with the last group (the engine processes a trigger's kernels before its modules)."""
    if not kernels and not modules:
        return []
    hints = hints or {}
    groups: dict[str, list[KernelEvent]] = {}
    for event in kernels:
        groups.setdefault(hints.get(event.kver, ""), []).append(event)
    extra = {"hook": action}
    if action == "install":
        # The 90-zz- hook regenerates the initramfs once per preset, after mkinitcpio's hook.
        extra["initramfs_follows"] = "1"
    items = list(groups.items()) or [("", [])]
    triggers = []
    for index, (hint, events) in enumerate(items):
        last = index == len(items) - 1
        triggers.append(
            Trigger(
                source="pacman",
                transaction=transaction,
                kernels=tuple(events),
                modules=tuple(modules) if last else (),
                headers_package_hint=hint,
                extra=dict(extra),
            )
        )
    return triggers


# -- which package a kernel belongs to -----------------------------------------------------------


def read_pkgbase(layout: Layout, kver: str) -> str | None:
    """`usr/lib/modules/K/pkgbase`, which Arch kernel packages ship for mkinitcpio's hook."""
    try:
        name = (layout.modules_dir(kver) / "pkgbase").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if name and "/" not in name and not name.startswith(".") else None


@dataclass(frozen=True)
class Package:
    name: str
    base: str
    version: str


class PackageDb(Protocol):
    """The little a hook asks of pacman's local database."""

    def get(self, name: str) -> Package | None: ...

    def owner(self, path: str, *, guess: str = "") -> Package | None: ...


class AlpmDb:
    """pacman's local database through pyalpm (read-only: pacman holds db.lck during hooks)."""

    def __init__(self, localdb: Any) -> None:
        self._db = localdb

    @staticmethod
    def _package(pkg: Any) -> Package:
        return Package(name=str(pkg.name), base=str(pkg.base or pkg.name), version=str(pkg.version))

    def get(self, name: str) -> Package | None:
        pkg = self._db.get_pkg(name)
        return None if pkg is None else self._package(pkg)

    def owner(self, path: str, *, guess: str = "") -> Package | None:
        if guess:
            pkg = self._db.get_pkg(guess)
            if pkg is not None and any(f[0] == path for f in pkg.files):
                return self._package(pkg)
        for pkg in self._db.pkgcache:
            if any(f[0] == path for f in pkg.files):
                return self._package(pkg)
        return None


def open_package_db(layout: Layout) -> PackageDb | None:
    """pyalpm where it is installed and the database opens; None otherwise. Inside a hook the
    database is normally at /var/lib/pacman of the root, but `pacman --dbpath` may put it where
    the chroot cannot see it (pachooks PR #4): everything must work without it."""
    try:
        import pyalpm  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    dbpath = layout.under("/var/lib/pacman")
    if not (dbpath / "local").is_dir():
        return None
    try:
        handle = pyalpm.Handle(str(layout.root), str(dbpath))
        localdb = handle.get_localdb()
        localdb.pkgcache  # noqa: B018 - loads the db now, so a broken one fails here
    except Exception:  # pyalpm.error, and whatever a damaged database raises
        return None
    return AlpmDb(localdb)


def headers_hint(layout: Layout, kver: str, db: PackageDb | None) -> str:
    """The package to install for kver's headers, for "install X" messages: Arch names it
    `<pkgbase>-headers` (linux-headers, linux-lts-headers, linux-zen-headers)."""
    base = read_pkgbase(layout, kver)
    kernel_pkg = None
    if db is not None:
        try:
            kernel_pkg = db.owner(f"usr/lib/modules/{kver}/vmlinuz", guess=base or "")
        except Exception:
            kernel_pkg = None
        if kernel_pkg is not None:
            base = kernel_pkg.base
    if not base:
        return f"the headers package of kernel {kver} (e.g. linux-headers)"
    headers = f"{base}-headers"
    if db is not None and kernel_pkg is not None:
        try:
            installed = db.get(headers)
        except Exception:
            installed = None
        if installed is not None and installed.version != kernel_pkg.version:
            return f"{headers} {kernel_pkg.version} (the installed one is {installed.version})"
    return headers


# -- transactions ---------------------------------------------------------------------------------


def _process_start(pid: int, proc: Path) -> str | None:
    """When pid started, as UTC YYYYmmddTHHMMSS, from /proc (unique with the pid)."""
    try:
        stat = (proc / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
        ticks = int(stat.rpartition(")")[2].split()[19])
        btime = next(
            float(line.split()[1])
            for line in (proc / "stat").read_text(encoding="utf-8").splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    seconds = btime + ticks / os.sysconf("SC_CLK_TCK")
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))


def transaction_id(
    layout: Layout,
    environ: Mapping[str, str],
    *,
    ppid: int | None = None,
    proc: Path = Path("/proc"),
) -> str:
    """One id for every hook call of one pacman transaction: libalpm forks the hooks from the
    process that runs the transaction, so it is our parent. Its start time comes from /proc when
    the root has it mounted, else from pacman's db.lck, which lives exactly one transaction."""
    forced = environ.get(TRANSACTION_VAR)
    if forced:
        return forced
    parent = os.getppid() if ppid is None else ppid
    started = _process_start(parent, proc)
    if started is not None:
        return f"pacman-{started}-{parent}"
    try:
        lock = layout.under("/var/lib/pacman/db.lck").stat()
        started = time.strftime("%Y%m%dT%H%M%S", time.gmtime(lock.st_mtime))
        return f"pacman-{started}-{parent}"
    except OSError:
        return new_transaction_id()


# -- the initramfs follow-up ----------------------------------------------------------------------

ImageStamps = dict[str, list[int]]


def followup_path(layout: Layout) -> Path:
    return layout.state_dir / FOLLOWUP_FILE


def snapshot_images(layout: Layout, kver: str) -> ImageStamps:
    """Identity of each initramfs image of kver now: any regeneration changes one of these."""
    from dkmshooks.initramfs import initramfs_images

    stamps: ImageStamps = {}
    for image in initramfs_images(layout, kver):
        try:
            st = image.stat()
        except OSError:
            continue
        stamps["/" + str(image.relative_to(layout.root))] = [st.st_mtime_ns, st.st_size, st.st_ino]
    return stamps


def needs_refresh(recorded: Mapping[str, Sequence[int]], now: Mapping[str, Sequence[int]]) -> bool:
    """Regenerate only images that exist and are still those seen when the module landed: a
    changed, new or vanished image means a generator ran after us (or removed the kernel)."""
    return bool(now) and {k: list(v) for k, v in recorded.items()} == {
        k: list(v) for k, v in now.items()
    }


def read_followup(layout: Layout) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(followup_path(layout).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("schema") != FOLLOWUP_SCHEMA:
        return {}
    kernels = data.get("kernels")
    if not isinstance(kernels, dict):
        return {}
    return {k: v for k, v in kernels.items() if isinstance(v, dict) and _is_kver(k)}


def write_followup(layout: Layout, kernels: Mapping[str, Mapping[str, Any]]) -> None:
    path = followup_path(layout)
    if not kernels:
        path.unlink(missing_ok=True)
        return
    data = {"schema": FOLLOWUP_SCHEMA, "kernels": dict(kernels)}
    write_atomic(path, json.dumps(data, sort_keys=True, indent=1) + "\n")


def record_followup(layout: Layout, landed: Mapping[str, Sequence[str]], transaction: str) -> None:
    """Remember, for each kernel that just got modules, its images as they are now. A newer
    record replaces an older one: an image regenerated after the newest module covers all."""
    if not landed:
        return
    kernels = read_followup(layout)
    for kver, modules in landed.items():
        kernels[kver] = {
            "transaction": transaction,
            "modules": sorted(modules),
            "images": snapshot_images(layout, kver),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    write_followup(layout, kernels)


def _installed(layout: Layout) -> dict[str, set[str]]:
    from dkmshooks.tree import Tree

    found: dict[str, set[str]] = {}
    for entry in Tree(layout).status():
        if entry.state == "installed":
            found.setdefault(entry.kver, set()).add(f"{entry.module}/{entry.version}")
    return found


def landed_modules(
    before: Mapping[str, set[str]], after: Mapping[str, set[str]]
) -> dict[str, list[str]]:
    """Kernels that have an installed module now that they did not have before."""
    landed = {}
    for kver, mods in after.items():
        new = mods - before.get(kver, set())
        if new:
            landed[kver] = sorted(new)
    return landed


def plan_followup(
    layout: Layout, entries: Mapping[str, Mapping[str, Any]], config: Config
) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """Preset (or "kernel K" without one) → the kernel and record to regenerate it for: each
    recorded kernel still installed, whose images no generator touched since, and whose modules
    are not all `initramfs = "never"`. One entry per preset: mkinitcpio -p builds all its images."""
    from dkmshooks.initramfs import mkinitcpio_preset

    todo: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for kver, entry in sorted(entries.items()):
        if not layout.modules_dir(kver).is_dir():
            continue  # removed again in the same transaction
        recorded = entry.get("images")
        if not needs_refresh(
            recorded if isinstance(recorded, dict) else {}, snapshot_images(layout, kver)
        ):
            continue
        modules = [str(m).split("/", 1)[0] for m in entry.get("modules", [])]
        policies = {config.module(m).initramfs or config.initramfs for m in modules}
        if policies and policies <= {"never"}:
            continue
        key = mkinitcpio_preset(layout, kver) or f"kernel {kver}"
        todo.setdefault(key, (kver, entry))
    return todo


def run_followup(layout: Layout, environ: Mapping[str, str]) -> int:
    """The 90-zz- hook: regenerate, once per preset, the initramfs of each recorded kernel that no
    generator refreshed since its module landed; then forget the records."""
    from dkmshooks import initramfs
    from dkmshooks.config import Config, load_config, log_path_for
    from dkmshooks.engine import LogSink
    from dkmshooks.locking import TreeLock

    try:
        config = load_config(layout)
    except DkmsError as exc:
        note(f"{' '.join(exc.lines)}; using the defaults")
        config = Config()
    with TreeLock(layout.lock_path, say=note):
        entries = read_followup(layout)
        if not entries:
            return 0
        todo = plan_followup(layout, entries, config)
        failed = 0
        for key, (kver, entry) in todo.items():
            transaction = str(entry.get("transaction") or "") or new_transaction_id()
            log = LogSink(log_path_for(layout, config), "pacman", transaction)
            what = key if key.startswith("kernel ") else f"preset {key}"
            note(f"{kver}: regenerating the initramfs ({what}): its new modules came after it")
            start = time.monotonic()
            rc, output, argv = initramfs.regenerate(layout, kver)
            elapsed = time.monotonic() - start
            log.add(
                "initramfs",
                "-",
                kver,
                os.uname().machine,
                "initramfs",
                "initramfs-regenerated" if rc == 0 else "failed",
                rc=rc,
                duration=elapsed,
                message=" ".join(argv),
            )
            log.flush()
            if rc != 0:
                failed += 1
                note(f"{kver}: {' '.join(argv)} failed (status {rc}):")
                for line in output.splitlines()[-20:]:
                    note(f"    {line}")
            else:
                note(f"{kver}: initramfs regenerated ({elapsed:.1f}s)")
        # Failed ones too: retrying in every later transaction would not fix the generator.
        write_followup(layout, {})
    if failed and config.strict:
        return 1
    return 0


# -- registering module sources ------------------------------------------------------------------


def _resolve_sources(
    session: Session, names: Iterable[str], kver: str, arch: str
) -> list[tuple[str, str]]:
    """Source directory names → (module, version): a registered module whose source is that
    directory, else the dkms.conf's PACKAGE_NAME/PACKAGE_VERSION, else split_source_dir."""
    layout = session.layout
    registered = {
        layout.module_source(m, v).name: (m, v) for m, v in session.tree.module_versions()
    }
    resolved = []
    for name in names:
        if name in registered:
            resolved.append(registered[name])
            continue
        conf_path = layout.source_tree / name / "dkms.conf"
        pair = None
        if conf_path.is_file():
            try:
                conf = session.read_conf("", "", kver, arch, conf_path)
                if f"{conf.package_name}-{conf.package_version}" == name:
                    pair = (conf.package_name, conf.package_version)
            except DkmsError:
                pair = None
        pair = pair or split_source_dir(name)
        if pair is not None:
            resolved.append(pair)
    return resolved


def _all_source_dirs(layout: Layout) -> list[str]:
    try:
        names = sorted(os.listdir(layout.source_tree))
    except OSError:
        return []
    return [n for n in names if (layout.source_tree / n / "dkms.conf").is_file()]


def register_sources(
    session: Session, pairs: Sequence[tuple[str, str]], transaction: str
) -> list[str]:
    """`dkms add` for each source not in the tree yet; returns "m/v" of those that failed."""
    from dkmshooks.config import Config, load_config, log_path_for
    from dkmshooks.engine import BufferConsole, LogSink, fork

    layout = session.layout
    failed = []
    arch = os.uname().machine
    kver = os.uname().release
    records = None
    for module, version in pairs:
        if session.tree.is_added(module, version):
            continue
        if not (layout.module_source(module, version) / "dkms.conf").is_file():
            continue
        try:
            fork(session, BufferConsole()).add_module(module, version, kver, arch)
        except DkmsError as exc:
            message = " ".join(line for line in exc.lines if line)
            note(f"{module}/{version}: cannot register it with DKMS: {message}")
            failed.append(f"{module}/{version}")
            if records is None:
                try:
                    config = load_config(layout)
                except DkmsError:
                    config = Config()
                records = LogSink(log_path_for(layout, config), "pacman", transaction)
            records.add(module, version, "", arch, "add", "failed", rc=exc.code, message=message)
    if records is not None:
        records.flush()
    return failed


# -- the `dkmshooks hook pacman` command ----------------------------------------------------------


def handle(action: str, lines: Iterable[str], environ: Mapping[str, str]) -> int:
    """install, upgrade, remove: targets → registered sources → engine → follow-up record."""
    from dkmshooks.engine import handle_trigger, hook_session
    from dkmshooks.locking import TreeLock

    targets = parse_targets(lines)
    if not targets.kernels and not targets.sources:
        return 0
    session = hook_session(environ)
    layout = session.layout
    transaction = transaction_id(layout, environ)
    arch = os.uname().machine
    kver_for_conf = targets.kernels[-1] if targets.kernels else os.uname().release
    sources = _resolve_sources(session, targets.sources, kver_for_conf, arch)
    if action == "install":
        wanted = list(sources)
        if targets.kernels:
            everything = _resolve_sources(session, _all_source_dirs(layout), kver_for_conf, arch)
            wanted += [p for p in everything if p not in wanted]
        with TreeLock(layout.lock_path, say=note):
            bad = set(register_sources(session, wanted, transaction))
        sources = [(m, v) for m, v in sources if f"{m}/{v}" not in bad]
    kernels = kernel_events(action, targets)
    hints: dict[str, str] = {}
    if action == "install" and kernels:
        db = open_package_db(layout)
        hints = {e.kver: headers_hint(layout, e.kver, db) for e in kernels}
    modules = module_events(action, sources)
    if action == "install":
        modules = without_covered_modules(kernels, modules, kernels_with_headers(layout))
    triggers = build_triggers(action, kernels, modules, transaction=transaction, hints=hints)
    before = _installed(layout) if action == "install" else {}
    rc = 0
    for trigger in triggers:
        rc = max(rc, handle_trigger(trigger, environ))
    if action == "install":
        with TreeLock(layout.lock_path, say=note):
            record_followup(layout, landed_modules(before, _installed(layout)), transaction)
    return rc


def main(argv: Sequence[str], environ: Mapping[str, str], stdin: TextIO | None = None) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    action = argv[0]
    if action not in ACTIONS or len(argv) > 1:
        note(f"hook pacman: unexpected arguments {' '.join(argv)!r}")
        sys.stderr.write(USAGE)
        return 2
    layout = Layout(root=Path(environ.get("DKMSHOOKS_ROOT") or "/"))
    try:
        if action == "initramfs":
            return run_followup(layout, environ)
        stream = sys.stdin if stdin is None else stdin
        if stream.isatty():
            note(f"hook pacman {action}: reads pacman's targets on stdin (NeedsTargets)")
            return 2
        return handle(action, stream.read().splitlines(), environ)
    except Exception:
        # PostTransaction exit codes are only logged by pacman, and our Pre hooks have no
        # AbortOnFail: say loudly what broke, and keep the transaction going.
        sys.stderr.write(traceback.format_exc())
        note(
            f"internal error in the pacman {action} hook; this is a bug, please report it with "
            "the output above. Kernel and module packages were changed as pacman planned."
        )
        return 1 if is_strict(layout) else 0


__all__ = [
    "ACTIONS",
    "TRANSACTION_VAR",
    "AlpmDb",
    "Package",
    "PackageDb",
    "Targets",
    "build_triggers",
    "handle",
    "headers_hint",
    "kernel_events",
    "kernels_with_headers",
    "landed_modules",
    "main",
    "module_events",
    "needs_refresh",
    "open_package_db",
    "parse_target",
    "parse_targets",
    "plan_followup",
    "read_followup",
    "read_pkgbase",
    "record_followup",
    "run_followup",
    "snapshot_images",
    "split_source_dir",
    "transaction_id",
    "without_covered_modules",
]
