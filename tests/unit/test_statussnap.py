"""The status snapshot: `dkms status` printed from what an earlier run kept, only while every
file it rests on is unchanged. The oracle is the same command without any cache (snapshot and
confcache removed): after each change to the tree, the kept answer must equal it.

File times move in clock ticks, so the snapshot keeps nothing that changed less than
confcache.RACY_NS before a run. The tests shrink that window to 50 ms and let 60 ms pass before
a run that is to keep something (`settle`), as the 2 s window does for real runs."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dkmshooks import confcache, statussnap
from dkmshooks.status import Session

from .helpers import Captured

ARCH = "x86_64"
KERNELS = ("6.1.0-1-amd64", "6.1.0-2-amd64", "6.1.0-3-amd64")
K1, K2, K3 = KERNELS
WINDOW_NS = 50_000_000

Make = Callable[..., tuple[Session, Captured]]


def conf(name: str, modules: tuple[str, ...]) -> str:
    lines = [f'PACKAGE_NAME="{name}"', 'PACKAGE_VERSION="1"', 'AUTOINSTALL="yes"']
    for i, mod in enumerate(modules):
        lines.append(f'BUILT_MODULE_NAME[{i}]="{mod}"')
        lines.append(f'DEST_MODULE_LOCATION[{i}]="/updates/dkms"')
    lines.append('MAKE[0]="make -C $kernel_source_dir M=$dkms_tree/$PACKAGE_NAME/x/build"')
    return "\n".join(lines) + "\n"


def register(
    root: Path, m: str, v: str, modules: tuple[str, ...] | None = None, extra: str = ""
) -> None:
    src = root / f"usr/src/{m}-{v}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "dkms.conf").write_text(conf(m, modules or (m,)) + extra)
    vdir = root / f"var/lib/dkms/{m}/{v}"
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "source").symlink_to(src)


def build(root: Path, m: str, v: str, kver: str, arch: str = ARCH, mod: str = "") -> Path:
    ko = root / f"var/lib/dkms/{m}/{v}/{kver}/{arch}/module/{mod or m}.ko"
    ko.parent.mkdir(parents=True, exist_ok=True)
    ko.write_bytes(b"\x7fELF " + f"{m}-{v}-{kver}".encode())
    return ko


def install(root: Path, m: str, v: str, kver: str, arch: str = ARCH) -> None:
    link = root / f"var/lib/dkms/{m}/kernel-{kver}-{arch}"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(f"{v}/{kver}/{arch}")
    built = root / f"var/lib/dkms/{m}/{v}/{kver}/{arch}/module/{m}.ko"
    dest = root / f"lib/modules/{kver}/updates/dkms/{m}.ko"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(built.read_bytes())


@pytest.fixture
def world(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """alpha 1.0 installed for K1 and K2 and built for K3, alpha 2.0 added, beta 1.0 installed
    for K1 with two modules, delta 0.9 built for K1 but excluded there (its conf wants a kernel
    option K1 lacks), an empty epsilon/1 dir, gamma 3 broken (its source is gone)."""
    monkeypatch.setattr(confcache, "RACY_NS", WINDOW_NS)
    for kver in KERNELS:
        b = root / f"lib/modules/{kver}/build"
        (b / "include").mkdir(parents=True)
        (b / ".config").write_text("CONFIG_MODULES=y\n")
    (root / "etc/dkms").mkdir(parents=True)
    register(root, "alpha", "1.0")
    register(root, "alpha", "2.0")
    register(root, "beta", "1.0", ("beta", "beta_extra"))
    for kver in KERNELS:
        build(root, "alpha", "1.0", kver)
    for kver in (K1, K2):
        install(root, "alpha", "1.0", kver)
    build(root, "beta", "1.0", K1)
    build(root, "beta", "1.0", K1, mod="beta_extra")
    install(root, "beta", "1.0", K1)
    dest = root / f"lib/modules/{K1}/updates/dkms/beta_extra.ko"
    built = root / f"var/lib/dkms/beta/1.0/{K1}/{ARCH}/module/beta_extra.ko"
    dest.write_bytes(built.read_bytes())
    register(root, "delta", "0.9", extra='BUILD_EXCLUSIVE_CONFIG="CONFIG_DELTA"\n')
    (root / f"var/lib/dkms/delta/0.9/{K1}/{ARCH}/module").mkdir(parents=True)
    (root / "var/lib/dkms/epsilon/1").mkdir(parents=True)
    (root / "var/lib/dkms/gamma/3").mkdir(parents=True)
    (root / "var/lib/dkms/gamma/3/source").symlink_to(root / "usr/src/gamma-3")
    return root


def settle() -> None:
    time.sleep(WINDOW_NS * 1.2 / 1e9)


class Run:
    """`dkms status` as a new process runs it: what it printed, and how many module/versions
    it worked out rather than took from the snapshot."""

    def __init__(self, make_session: Make, monkeypatch: pytest.MonkeyPatch) -> None:
        self.make_session = make_session
        self.worked_out = 0
        original = Session._status_section

        def counting(session: Session, *args: object) -> object:
            self.worked_out += 1
            return original(session, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(Session, "_status_section", counting)

    def __call__(
        self,
        module: str = "",
        kernels: tuple[tuple[str, str], ...] = (),
        as_json: bool = False,
        **options: object,
    ) -> tuple[str, int]:
        session, out = self.make_session(**options)
        cache = confcache.for_layout(session.layout)
        cache.reload()
        self.worked_out = 0
        session.show_status(module, "", list(kernels), as_json=as_json)
        cache.reload()
        return out.text, self.worked_out

    def fresh(self, *args: object, **kw: object) -> str:
        """The same query with no cache of any kind."""
        session, _ = self.make_session()
        cache = confcache.for_layout(session.layout)
        cache.reload()
        kept = session.layout.state_dir / "confcache"
        aside = kept.with_name("confcache.aside")
        if kept.exists():
            kept.rename(aside)
        try:
            text, _ = self(*args, **kw)  # type: ignore[arg-type]
        finally:
            if kept.exists():
                shutil.rmtree(kept)
            if aside.exists():
                aside.rename(kept)
        return text


@pytest.fixture
def run(make_session: Make, monkeypatch: pytest.MonkeyPatch) -> Run:
    return Run(make_session, monkeypatch)


EXPECTED = f"""\
alpha/1.0, {K1}, {ARCH}: installed
alpha/1.0, {K2}, {ARCH}: installed
alpha/1.0, {K3}, {ARCH}: built
alpha/2.0: added
beta/1.0, {K1}, {ARCH}: installed
delta/0.9, {K1}, {ARCH}: built
gamma/3: broken

Error! gamma/3: Missing the module source directory or the symbolic link pointing to it.
Manual intervention is required!
"""


def test_a_kept_answer_is_printed_as_worked_out(world: Path, run: Run) -> None:
    settle()
    first, worked = run()
    assert first == EXPECTED
    assert worked == 6  # alpha/1.0, alpha/2.0, beta/1.0, delta/0.9, epsilon/1, gamma/3
    second, worked = run()
    assert second == EXPECTED
    assert worked == 1  # gamma/3 printed an error: never kept, so it says it again
    snaps = list((world / "var/lib/dkmshooks/confcache/status").iterdir())
    assert len(snaps) == 1 and snaps[0].suffix == ".snap"  # no temporary file left


def test_json_is_what_json_dumps_writes(world: Path, run: Run) -> None:
    settle()
    first, _ = run(as_json=True)
    kept, worked = run(as_json=True)
    assert worked == 1 and kept == first
    assert kept.startswith("\nError! gamma/3: ")  # printed as gamma/3 is worked out
    body = kept.splitlines()[-1]
    records = json.loads(body)
    assert body == json.dumps(records, sort_keys=True)
    assert [(r["module"], r["kernel"], r["state"]) for r in records["modules"]] == [
        ("alpha", K1, "installed"),
        ("alpha", K2, "installed"),
        ("alpha", K3, "built"),
        ("alpha", None, "added"),
        ("beta", K1, "installed"),
        ("delta", K1, "built"),
        ("gamma", None, "broken"),
    ]


def test_within_the_window_nothing_is_kept(world: Path, run: Run) -> None:
    # no settle(): every file changed less than RACY_NS ago
    run()
    _, worked = run()
    assert worked == 6


def test_a_file_changed_within_the_window_keeps_its_section_out(world: Path, run: Run) -> None:
    settle()
    run()
    assert run()[1] == 1
    installed = _lib(world, K1, "beta.ko")
    installed.write_bytes(installed.read_bytes())  # the same bytes, written again
    assert run()[1] == 2  # beta/1.0 and gamma/3
    assert run()[1] == 2  # beta/1.0's installed module is too recent to vouch for it
    settle()
    run()
    text, worked = run()
    assert worked == 1 and text == run.fresh()


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _rewrite_same_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    _touch_later(path)


def _swap_for_link(path: Path) -> None:
    real = path.with_name(path.name + ".real")
    path.rename(real)
    path.symlink_to(real.name)


def _replace_link(link: Path, target: str) -> None:
    """`link` made to point at `target`, or a directory in its place ("")."""
    link.unlink()
    if target:
        link.symlink_to(target)
    else:
        link.mkdir()


def _lib(r: Path, kver: str, name: str) -> Path:
    return r / f"lib/modules/{kver}/updates/dkms/{name}"


def _tree(r: Path, rel: str) -> Path:
    return r / "var/lib/dkms" / rel


CHANGES: dict[str, Callable[[Path], None]] = {
    "installed module rewritten in place": lambda r: _rewrite_same_size(_lib(r, K1, "alpha.ko")),
    "installed module removed": lambda r: _lib(r, K2, "alpha.ko").unlink(),
    "installed module compressed": lambda r: _lib(r, K1, "alpha.ko").rename(
        _lib(r, K1, "alpha.ko.xz")
    ),
    "second installed module rewritten": lambda r: _rewrite_same_size(_lib(r, K1, "beta_extra.ko")),
    "built module rewritten in place": lambda r: _rewrite_same_size(
        _tree(r, f"alpha/1.0/{K3}/{ARCH}/module/alpha.ko")
    ),
    "built module removed": lambda r: _tree(r, f"alpha/1.0/{K1}/{ARCH}/module/alpha.ko").unlink(),
    "module dir of a build removed": lambda r: shutil.rmtree(
        _tree(r, f"alpha/1.0/{K3}/{ARCH}/module")
    ),
    "another arch built": lambda r: build(r, "alpha", "1.0", K2, arch="i686") and None,
    "arch dir swapped for a symlink": lambda r: _swap_for_link(_tree(r, f"alpha/1.0/{K3}/{ARCH}")),
    "kernel dir swapped for a symlink": lambda r: _swap_for_link(_tree(r, f"alpha/1.0/{K2}")),
    "kernel link removed": lambda r: _tree(r, f"alpha/kernel-{K1}-{ARCH}").unlink(),
    "kernel link added": lambda r: install(r, "alpha", "1.0", K3),
    "kernel link made indirect": lambda r: _replace_link(
        _tree(r, f"alpha/kernel-{K2}-{ARCH}"), f"./1.0/{K2}/{ARCH}"
    ),
    "source moved away": lambda r: (r / "usr/src/beta-1.0").rename(r / "usr/src/beta-1.0.old"),
    "an added one's source moved away": lambda r: (r / "usr/src/alpha-2.0").rename(
        r / "usr/src/alpha-2.0.old"
    ),
    "a source in /usr/src for a dir without one": lambda r: (r / "usr/src/epsilon-1").mkdir(),
    "an excluded build's module dir removed": lambda r: shutil.rmtree(
        _tree(r, f"delta/0.9/{K1}/{ARCH}/module")
    ),
    "source link replaced by a dir": lambda r: _replace_link(_tree(r, "alpha/2.0/source"), ""),
    "broken one repaired": lambda r: (r / "usr/src/gamma-3").mkdir(),
    "a version registered": lambda r: register(r, "beta", "2.0"),
    "a version built": lambda r: build(r, "alpha", "2.0", K1) and None,
    "a module removed": lambda r: shutil.rmtree(_tree(r, "beta")),
    "a module registered": lambda r: register(r, "aardvark", "0.1"),
    "a stray file among the versions": lambda r: _tree(r, "alpha/notes").write_text("x"),
    "a version dir that is a symlink": lambda r: _tree(r, "alpha/3.0").symlink_to("1.0"),
    "dkms.conf names one more module": lambda r: (r / "usr/src/alpha-1.0/dkms.conf").write_text(
        conf("alpha", ("alpha", "alpha_more"))
    ),
    "an override for the module": lambda r: (r / "etc/dkms/alpha.conf").write_text(
        'DEST_MODULE_LOCATION[0]="/extra"\n'
    ),
    "the kernel's .config enables what a conf needs": lambda r: (
        r / f"lib/modules/{K1}/build/.config"
    ).write_text("CONFIG_MODULES=y\nCONFIG_DELTA=y\n"),
    "an original module saved": lambda r: _tree(r, f"alpha/original_module/{K1}/{ARCH}").mkdir(
        parents=True
    ),
    "the updates dir removed": lambda r: shutil.rmtree(r / f"lib/modules/{K2}/updates"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_change_is_seen(world: Path, run: Run, change: str) -> None:
    for as_json in (False, True):
        settle()
        run(as_json=as_json)
        kept, worked = run(as_json=as_json)
        assert worked == 1 and kept == run.fresh(as_json=as_json)
    CHANGES[change](world)
    for as_json in (False, True):
        after, _ = run(as_json=as_json)
        assert after == run.fresh(as_json=as_json)
    if change == "installed module rewritten in place":
        assert '"differences": true' in after
    settle()
    run()
    again, _ = run()
    assert again == run.fresh()


def test_only_what_changed_is_worked_out_again(world: Path, run: Run) -> None:
    settle()
    run()
    run()
    _rewrite_same_size(_lib(world, K1, "beta.ko"))
    text, worked = run()
    assert worked == 2  # beta/1.0 and gamma/3
    assert f"beta/1.0, {K1}, {ARCH}: installed (Differences" in text


def test_a_link_resolved_through_other_dirs_is_looked_at_each_time(world: Path, run: Run) -> None:
    """kernel-K-A pointing elsewhere than dkms writes: what it resolves to can change without
    any change in the module's dir, so that module/version is never kept."""
    via = world / "via"
    via.symlink_to(world / "var/lib/dkms/alpha/1.0")
    link = _tree(world, f"alpha/kernel-{K2}-{ARCH}")
    link.unlink()
    link.symlink_to(f"{via}/{K2}/{ARCH}")
    settle()
    first, _ = run()
    assert f"alpha/1.0, {K2}, {ARCH}: installed\n" in first
    _, worked = run()
    assert worked == 2  # alpha/1.0 and gamma/3
    other = world / "other"
    shutil.copytree(world / "var/lib/dkms/alpha/1.0", other, symlinks=True)
    via.unlink()
    via.symlink_to(other)
    text, _ = run()
    assert f"alpha/1.0, {K2}, {ARCH}: built\n" in text
    assert text == run.fresh()


QUERIES: list[dict[str, object]] = [
    {},
    {"as_json": True},
    {"module": "alpha"},
    {"kernels": ((K2, ""),)},
    {"kernels": ((K3, ARCH), (K1, ARCH)), "as_json": True},
    {"module": "beta", "kernels": ((K1, ""),)},
]


@pytest.mark.parametrize("seed", range(6))
def test_random_changes_against_no_cache(world: Path, run: Run, seed: int) -> None:
    rng = random.Random(seed)
    names = list(CHANGES)
    rng.shuffle(names)
    for name in names[:6]:
        query = rng.choice(QUERIES)
        settle()
        run(**query)  # type: ignore[arg-type]
        try:
            CHANGES[name](world)
        except OSError:
            continue  # an earlier change took away what this one changes
        for q in (query, rng.choice(QUERIES)):
            got, _ = run(**q)  # type: ignore[arg-type]
            assert got == run.fresh(**q), (seed, name, q)


def _snapshot(world: Path) -> Path:
    (snap,) = (world / "var/lib/dkmshooks/confcache/status").iterdir()
    return snap


@pytest.mark.parametrize(
    "spoil",
    [
        lambda p: p.write_bytes(b"garbage"),
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
        lambda p: p.write_bytes(b""),
        lambda p: os.chown(p, 4242, 4242),
    ],
    ids=["garbage", "truncated", "empty", "someone else's"],
)
def test_a_spoiled_or_foreign_snapshot_is_not_used(
    world: Path, run: Run, spoil: Callable[[Path], None]
) -> None:
    settle()
    run()
    spoil(_snapshot(world))
    text, worked = run()
    assert text == EXPECTED
    assert worked == 6


def test_other_code_is_another_snapshot(
    world: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    settle()
    run()
    monkeypatch.setattr(statussnap, "_code_stamps", lambda: [("status.py", [1, 2, 3, 4])])
    _, worked = run()
    assert worked == 6


def test_other_options_are_another_snapshot(world: Path, run: Run) -> None:
    settle()
    run()
    _, worked = run(force=True)
    assert worked == 6


def test_read_only_cache_writes_no_snapshot(world: Path, make_session: Make) -> None:
    settle()
    session, out = make_session()
    cache = confcache.for_layout(session.layout)
    cache.reload()
    cache.read_only = True
    try:
        session.show_status("", "", [])
    finally:
        cache.read_only = False
    assert out.text == EXPECTED
    assert not (world / "var/lib/dkmshooks/confcache/status").exists()
