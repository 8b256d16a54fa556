"""The dkms.conf cache behind status and plan: a hit only while every stamp it was computed from
is unchanged. The conf counts its own evaluations (it is bash), so a test sees hits and misses
without looking inside."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dkmshooks import confcache
from dkmshooks.status import Session

from .helpers import Captured

K = "6.1.0-1-amd64"
ARCH = "x86_64"


@pytest.fixture(autouse=True)
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trees here are made a moment before they are read, and the cache keeps nothing
    computed from a file changed less than RACY_NS before (test_a_conf_changed_moments_ago_is_
    not_kept); these tests change stamps explicitly instead (a new size, a later mtime)."""
    monkeypatch.setattr(confcache, "RACY_NS", 0)


@pytest.fixture
def tree(root: Path) -> Path:
    """m/1.0 registered, with a dkms.conf that appends a line to `evaluations` when sourced."""
    src = root / "usr/src/m-1.0"
    src.mkdir(parents=True)
    (src / "dkms.conf").write_text(
        f'echo x >> "{root}/evaluations"\n'
        'PACKAGE_NAME="m"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="m"\n'
        'DEST_MODULE_LOCATION[0]="/updates"\nAUTOINSTALL="yes"\n'
        'MAKE[0]="make -C $kernel_source_dir M=$dkms_tree/m/1.0/build"\n'
    )
    vdir = root / "var/lib/dkms/m/1.0"
    vdir.mkdir(parents=True)
    (vdir / "source").symlink_to(src)
    build = root / f"lib/modules/{K}/build"
    (build / "include").mkdir(parents=True)
    (build / ".config").write_text("CONFIG_MODULES=y\n")
    (root / "etc/dkms").mkdir(parents=True)
    return root


Make = Callable[..., tuple[Session, Captured]]


def evaluations(root: Path) -> int:
    path = root / "evaluations"
    return len(path.read_text().splitlines()) if path.exists() else 0


def query(make_session: Make, root: Path, kver: str = K) -> None:
    """One `dkms status`-like question, as a new process would ask it."""
    session, _ = make_session()
    cache = confcache.for_directory(session.layout.state_dir / "confcache")
    cache.reload()
    conf = session.read_conf("m", "1.0", kver, ARCH, persistent=True)
    assert conf.package_name == "m"
    assert conf.make_command.startswith(f"make -C {root}/lib/modules/{kver}/build ")
    cache.reload()


def test_second_question_is_answered_from_the_cache(tree: Path, make_session: Make) -> None:
    query(make_session, tree)
    query(make_session, tree)
    assert evaluations(tree) == 1
    files = list((tree / "var/lib/dkmshooks/confcache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"  # no temporary file left behind


def test_a_conf_changed_moments_ago_is_not_kept(
    tree: Path, make_session: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a second change within one tick of the file system's clock could leave the stamps as
    # they were: nothing computed from a file that recent is kept
    monkeypatch.setattr(confcache, "RACY_NS", 2_000_000_000)
    query(make_session, tree)
    query(make_session, tree)
    assert evaluations(tree) == 2
    assert not (tree / "var/lib/dkmshooks/confcache").exists()
    monkeypatch.setattr(confcache, "RACY_NS", 50_000_000)
    time.sleep(0.06)
    query(make_session, tree)
    query(make_session, tree)
    assert evaluations(tree) == 3


def _retime(path: Path) -> None:
    """Another mtime, a second before the one it had (one in the future is never trusted)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 1_000_000_000))


CHANGES: dict[str, Callable[[Path], None]] = {
    "dkms.conf edited": lambda r: _append(r / "usr/src/m-1.0/dkms.conf", "# edit\n"),
    "dkms.conf same size, new mtime": lambda r: _retime(r / "usr/src/m-1.0/dkms.conf"),
    "dkms.conf replaced": lambda r: os.replace(
        _copy(r / "usr/src/m-1.0/dkms.conf"), r / "usr/src/m-1.0/dkms.conf"
    ),
    "kernel .config edited": lambda r: (r / f"lib/modules/{K}/build/.config").write_text(
        "CONFIG_MODULES=y\nCONFIG_X=y\n"
    ),
    "kernel auto.conf appears": lambda r: _write(
        r / f"lib/modules/{K}/build/include/config/auto.conf", "CONFIG_MODULES=y\n"
    ),
    "vmlinux appears": lambda r: _write(r / f"lib/modules/{K}/build/vmlinux", "\x7fELF"),
    **{
        f"override {name} appears": (lambda r, n=name: _write(r / "etc/dkms" / n, "# x\n"))
        for name in (
            "m.conf",
            "m-1.0.conf",
            f"m-1.0-{K}.conf",
            f"m-1.0-{K}-{ARCH}.conf",
            f"m--{K}.conf",
            f"m--{K}-{ARCH}.conf",
        )
    },
}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _append(path: Path, text: str) -> None:
    with path.open("a") as fh:
        fh.write(text)


def _copy(path: Path) -> Path:
    new = path.with_name("dkms.conf.new")
    new.write_bytes(path.read_bytes())
    return new


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_stamp_change_is_a_miss(tree: Path, make_session: Make, change: str) -> None:
    query(make_session, tree)
    CHANGES[change](tree)
    query(make_session, tree)
    assert evaluations(tree) == 2
    query(make_session, tree)
    assert evaluations(tree) == 2  # and the new answer is cached again


def test_override_edit_is_a_miss(tree: Path, make_session: Make) -> None:
    override = tree / "etc/dkms/m.conf"
    override.write_text("# one\n")
    query(make_session, tree)
    override.write_text("# one, two\n")
    query(make_session, tree)
    assert evaluations(tree) == 2


def test_override_removed_is_a_miss(tree: Path, make_session: Make) -> None:
    override = tree / "etc/dkms/m-1.0.conf"
    override.write_text("AUTOINSTALL=no\n")
    query(make_session, tree)
    override.unlink()
    query(make_session, tree)
    assert evaluations(tree) == 2


def test_other_kernel_is_another_entry(tree: Path, make_session: Make) -> None:
    other = "6.1.0-2-amd64"
    (tree / f"lib/modules/{other}/build/include").mkdir(parents=True)
    query(make_session, tree)
    query(make_session, tree, other)
    query(make_session, tree)
    query(make_session, tree, other)
    assert evaluations(tree) == 2


@pytest.mark.parametrize("content", ["not json", '{"schema": 999}', '{"schema": 1}', ""])
def test_unreadable_or_foreign_cache_file_is_a_miss(
    tree: Path, make_session: Make, content: str
) -> None:
    query(make_session, tree)
    (path,) = (tree / "var/lib/dkmshooks/confcache").iterdir()
    path.write_text(content)
    query(make_session, tree)
    assert evaluations(tree) == 2


def test_builds_never_use_the_cache(tree: Path, make_session: Make) -> None:
    query(make_session, tree)
    for _ in range(2):
        session, _ = make_session()
        session.read_conf("m", "1.0", K, ARCH, strict=True)
    assert evaluations(tree) == 3


def test_without_write_access_it_still_answers(tree: Path, make_session: Make) -> None:
    state = tree / "var/lib/dkmshooks"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text("not a directory\n")  # so nothing can be created below it
    query(make_session, tree)
    query(make_session, tree)
    assert evaluations(tree) == 2


def test_override_names_are_dkmsconfs() -> None:
    from dkmshooks.dkmsconf import override_files

    names = [p.name for p in override_files(Path("/etc/dkms"), "m", "1.0", K, ARCH)]
    assert confcache.override_names("m", "1.0", K, ARCH) == names


def test_same_content_verdict_follows_both_files(tree: Path) -> None:
    cache = confcache.ConfCache(tree / "cache")
    a, b = tree / "a.ko", tree / "b.ko"
    a.write_bytes(b"\x7fELF one")
    b.write_bytes(b"\x7fELF one")
    assert cache.same_content("m", "1.0", str(a), str(b))
    cache.reload()
    b.write_bytes(b"\x7fELF two")  # same size
    _retime(b)
    assert not cache.same_content("m", "1.0", str(a), str(b))
    cache.reload()
    a.write_bytes(b"\x7fELF two")
    _retime(a)
    assert cache.same_content("m", "1.0", str(a), str(b))
    b.unlink()
    assert not cache.same_content("m", "1.0", str(a), str(b))


def test_read_only_cache_answers_but_writes_nothing(tree: Path, make_session: Make) -> None:
    session, _ = make_session()
    cache = confcache.for_layout(session.layout)
    cache.reload()
    cache.read_only = True
    try:
        query(make_session, tree)
        assert not (tree / "var/lib/dkmshooks/confcache").exists()
    finally:
        cache.read_only = False
    query(make_session, tree)  # now it is written, and the read-only user reads it
    cache.read_only = True
    try:
        query(make_session, tree)
    finally:
        cache.read_only = False
    assert evaluations(tree) == 2


# -- what status derives from the confs: the per-line extras ---------------------------------


def _installed(root: Path, content: bytes = b"\x7fELF built") -> tuple[Path, Path]:
    """m/1.0 built and installed for K; returns (built .ko, installed .ko)."""
    built = root / f"var/lib/dkms/m/1.0/{K}/{ARCH}/module/m.ko"
    built.parent.mkdir(parents=True)
    built.write_bytes(content)
    (root / f"var/lib/dkms/m/kernel-{K}-{ARCH}").symlink_to(f"1.0/{K}/{ARCH}")
    installed = root / f"lib/modules/{K}/updates/dkms/m.ko"  # dkms 3.4 on Debian
    installed.parent.mkdir(parents=True)
    installed.write_bytes(content)
    return built, installed


def status_line(make_session: Make) -> str:
    """`dkms status` as a new process runs it, with the cache written back at its end."""
    session, out = make_session()
    cache = confcache.for_layout(session.layout)
    cache.reload()
    session.show_status("", "", [])
    cache.reload()
    return out.text


def test_status_extras_are_remembered_until_a_file_they_read_changes(
    tree: Path, make_session: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nothing is remembered of a file changed less than RACY_NS ago: a short window, waited out
    monkeypatch.setattr(confcache, "RACY_NS", 50_000_000)
    built, installed = _installed(tree)
    time.sleep(0.06)
    clean = f"m/1.0, {K}, {ARCH}: installed\n"
    assert status_line(make_session) == clean
    assert status_line(make_session) == clean
    assert evaluations(tree) == 1
    status_files = sorted(p.name for p in (tree / "var/lib/dkmshooks/confcache").iterdir())
    assert status_files == ["m@1.0.json", "m@1.0@status.json", "status"]  # status: statussnap

    # the installed copy overwritten in place, same size: the remembered answer is not used
    installed.write_bytes(b"\x7fELF other")
    _retime(installed)
    differs = f"m/1.0, {K}, {ARCH}: installed (Differences between built and installed modules)\n"
    assert status_line(make_session) == differs
    assert status_line(make_session) == differs
    installed.write_bytes(built.read_bytes())
    assert status_line(make_session) == clean

    # an original module saved later (the module's first one: only its parent existed before)
    (tree / f"var/lib/dkms/m/original_module/{K}/{ARCH}").mkdir(parents=True)
    original = f"m/1.0, {K}, {ARCH}: installed (Original modules exist)\n"
    assert status_line(make_session) == original
    assert status_line(make_session) == original

    # the built module gone
    built.unlink()
    missing = (
        f"m/1.0, {K}, {ARCH}: installed (Original modules exist)"
        " (Built modules are missing in the kernel modules folder)\n"
    )
    assert status_line(make_session) == missing
    assert evaluations(tree) == 1  # the conf itself never changed


def test_status_extras_follow_the_installed_state(tree: Path, make_session: Make) -> None:
    _, installed = _installed(tree)
    installed.write_bytes(b"\x7fELF other")
    differs = f"m/1.0, {K}, {ARCH}: installed (Differences between built and installed modules)\n"
    assert status_line(make_session) == differs
    (tree / f"var/lib/dkms/m/kernel-{K}-{ARCH}").unlink()  # a built module is compared to nothing
    assert status_line(make_session) == f"m/1.0, {K}, {ARCH}: built\n"


def test_status_extras_follow_the_conf(tree: Path, make_session: Make) -> None:
    _installed(tree)
    assert status_line(make_session) == f"m/1.0, {K}, {ARCH}: installed\n"
    conf = tree / "usr/src/m-1.0/dkms.conf"
    _append(conf, 'BUILT_MODULE_NAME[1]="second"\nDEST_MODULE_LOCATION[1]="/updates"\n')
    missing = (
        f"m/1.0, {K}, {ARCH}: installed (Built modules are missing in the kernel modules folder)\n"
    )
    assert status_line(make_session) == missing
    assert evaluations(tree) == 2


# -- values shared by every kernel --------------------------------------------------------------

K2 = "6.1.0-2-amd64"


@pytest.fixture
def literal_tree(tree: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """`tree` with the common archive shape of dkms.conf, which needs no bash and uses the
    kernel only in MAKE; and the kernels each evaluation of it was for."""
    from dkmshooks import session as session_module

    (tree / "usr/src/m-1.0/dkms.conf").write_text(
        'PACKAGE_NAME="m"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="m"\n'
        'DEST_MODULE_LOCATION[0]="/updates"\nAUTOINSTALL="yes"\n'
        'MAKE[0]="make -C $kernel_source_dir M=$dkms_tree/m/1.0/build KVER=$kernelver"\n'
    )
    (tree / f"lib/modules/{K2}/build/include").mkdir(parents=True)
    (tree / f"lib/modules/{K2}/build/.config").write_text("CONFIG_MODULES=y\n")
    seen: list[str] = []
    real = session_module.evaluate_conf

    def counting(*args: object, **kw: object):  # type: ignore[no-untyped-def]
        seen.append(str(args[3]))
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(session_module, "evaluate_conf", counting)
    return tree, seen


def conf_for(make_session: Make, kver: str):  # type: ignore[no-untyped-def]
    session, _ = make_session()
    cache = confcache.for_layout(session.layout)
    cache.reload()
    conf = session.read_conf("m", "1.0", kver, ARCH, persistent=True)
    cache.reload()
    return conf


def uncached(make_session: Make, kver: str):  # type: ignore[no-untyped-def]
    session, _ = make_session()
    return session.read_conf("m", "1.0", kver, ARCH)


def test_a_new_kernel_is_answered_from_the_shared_values(
    literal_tree: tuple[Path, list[str]], make_session: Make
) -> None:
    root, seen = literal_tree
    first = conf_for(make_session, K)
    assert seen == [K]
    files = sorted(p.name for p in (root / "var/lib/dkmshooks/confcache").iterdir())
    assert files == ["m@1.0@values.json"]  # no entry of its own for K
    second = conf_for(make_session, K2)
    assert seen == [K]  # K2's conf came from K's evaluation
    for kver, conf in ((K, first), (K2, second)):
        assert conf == uncached(make_session, kver)
        assert conf.values == uncached(make_session, kver).values
    assert second.make_command == (
        f"make -C {root}/lib/modules/{K2}/build M={root}/var/lib/dkms/m/1.0/build KVER={K2}"
    )
    # and the shared entry follows the conf like any other
    _append(root / "usr/src/m-1.0/dkms.conf", 'AUTOINSTALL="no"\n')
    assert not conf_for(make_session, K2).autoinstall
    assert seen == [K, K2]


def test_a_kernel_with_its_own_override_is_evaluated_for_itself(
    literal_tree: tuple[Path, list[str]], make_session: Make
) -> None:
    root, seen = literal_tree
    assert conf_for(make_session, K).autoinstall
    (root / f"etc/dkms/m-1.0-{K2}.conf").write_text('AUTOINSTALL="no"\n')
    assert not conf_for(make_session, K2).autoinstall
    assert not conf_for(make_session, K2).autoinstall  # its own entry, cached
    assert conf_for(make_session, K).autoinstall  # the shared one still serves K
    assert seen == [K, K2]
    # an override for every kernel changes the shared entry's stamps
    (root / "etc/dkms/m.conf").write_text('MAKE[0]="make other"\n')
    assert conf_for(make_session, K).make_command == "make other"
    assert conf_for(make_session, K2).make_command == "make other"
    assert seen == [K, K2, K, K2]


def test_a_kernel_whose_names_cannot_be_substituted_is_evaluated_for_itself(
    literal_tree: tuple[Path, list[str]], make_session: Make
) -> None:
    root, seen = literal_tree
    odd = "6.8.0-rc1~test"  # `~` is not an inert word: bash must evaluate it
    (root / f"lib/modules/{odd}/build/include").mkdir(parents=True)
    conf_for(make_session, K)
    conf = conf_for(make_session, odd)
    assert seen == [K, odd]
    assert conf == uncached(make_session, odd)
    assert conf.make_command.endswith(f"KVER={odd}")


def test_a_read_only_plan_uses_shared_values_it_did_not_write(
    literal_tree: tuple[Path, list[str]], make_session: Make
) -> None:
    root, seen = literal_tree
    conf_for(make_session, K)
    session, _ = make_session()
    cache = confcache.for_layout(session.layout)
    cache.reload()
    cache.read_only = True
    try:
        before = {p: p.stat().st_mtime_ns for p in (root / "var/lib/dkmshooks/confcache").iterdir()}
        conf_for(make_session, K2)
        after = {p: p.stat().st_mtime_ns for p in (root / "var/lib/dkmshooks/confcache").iterdir()}
    finally:
        cache.read_only = False
    assert seen == [K] and before == after
