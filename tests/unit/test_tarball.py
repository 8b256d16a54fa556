"""mktarball/ldtarball against a Layout on a temporary root: hostile archives are refused before
anything is written, and what mktarball writes loads back (source, binaries, binaries-only)."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from dkmshooks import cli
from dkmshooks.console import Console
from dkmshooks.errors import DkmsError
from dkmshooks.framework import load_settings
from dkmshooks.layout import Layout
from dkmshooks.safetar import Limits, unpack
from dkmshooks.session import Options
from dkmshooks.status import Session
from dkmshooks.tarball import (
    BINARIES_ONLY_SOURCE,
    load_tarball,
    load_tarball_for_add,
    make_tarball,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "dkms_test-1.0"
KVER = "6.1.0-55-amd64"
ARCH = "x86_64"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dkms's add_source_tree requires root")


class Env:
    """A system root under tmp_path with its own /etc/os-release, $TMPDIR and trees."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc" / "os-release").write_text("ID=debian\n")
        self.tmp = root / "tmp"
        self.tmp.mkdir(exist_ok=True)
        self.environ = {"TMPDIR": str(self.tmp), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        self.out = io.StringIO()
        self.err = io.StringIO()

    def session(self, **options: object) -> Session:
        settings = load_settings(Layout(root=self.root), self.environ)
        return Session(
            settings=settings,
            options=Options(**options),  # type: ignore[arg-type]
            console=Console(self.out, self.err),
            environ=self.environ,
        )

    @property
    def layout(self) -> Layout:
        return Layout(root=self.root)

    def written(self) -> list[str]:
        """Everything under the source and DKMS trees and $TMPDIR: must stay empty on refusal."""
        found = []
        for top in (self.root / "usr" / "src", self.root / "var" / "lib" / "dkms", self.tmp):
            if top.exists():
                found += [str(p) for p in top.rglob("*")]
        return found

    def dkms(self, *argv: str) -> int:
        return cli._boundary(
            cli.dkms, list(argv), {**self.environ, "DKMSHOOKS_ROOT": str(self.root)}
        )


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path / "root")


def build_tar(path: Path, add: Callable[[tarfile.TarFile], None], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        add(tar)
    return path


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes = b"x", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    tar.addfile(info)


def add_conf(tar: tarfile.TarFile, prefix: str = "dkms_source_tree") -> None:
    tar.add(SAMPLE / "dkms.conf", arcname=f"{prefix}/dkms.conf")


def refused(env: Env, archive: Path, *expected: str, limits: Limits | None = None) -> str:
    """Loading `archive` fails with code 7 naming what is wrong, and nothing is written."""
    session = env.session()
    with pytest.raises(DkmsError) as info:
        if limits is None:
            load_tarball(session, archive, KVER, ARCH)
        else:
            load_tarball(session, archive, KVER, ARCH, limits)
    text = "\n".join(info.value.lines)
    assert info.value.code == 7, text
    for fragment in expected:
        assert fragment in text
    assert env.written() == []
    return text


# -- hostile archives ----------------------------------------------------------------------------


def test_absolute_member_is_refused(env: Env, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_bytes(tar, "/etc/cron.d/evil")

    text = refused(env, build_tar(tmp_path / "a.tar.gz", add), "'/etc/cron.d/evil'", "absolute")
    assert text.startswith(f"Refusing to load {tmp_path / 'a.tar.gz'}:")
    assert "Nothing was written" in text


def test_dotdot_member_is_refused(env: Env, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_bytes(tar, "dkms_source_tree/../../../../etc/passwd")

    refused(env, build_tar(tmp_path / "a.tgz", add), "'..' path component", "etc/passwd")


def test_symlink_leaving_the_archive_is_refused(env: Env, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_special(tar, "dkms_source_tree/shadow", tarfile.SYMTYPE, "../../etc/shadow")

    refused(env, build_tar(tmp_path / "a.tgz", add), "'dkms_source_tree/shadow'", "outside")


def test_absolute_symlink_is_refused(env: Env, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_special(tar, "dkms_source_tree/shadow", tarfile.SYMTYPE, "/etc/shadow")

    refused(env, build_tar(tmp_path / "a.tgz", add), "absolute path '/etc/shadow'")


def test_symlink_escaping_through_another_symlink_is_refused(env: Env, tmp_path: Path) -> None:
    # Lexically "a/b/l/.." is a/b, but l leads to the top, so the real target is its parent.
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_special(tar, "a/b/escape", tarfile.SYMTYPE, "l/..")
        add_special(tar, "a/b/l", tarfile.SYMTYPE, "../..")

    refused(env, build_tar(tmp_path / "a.tgz", add), "'a/b/escape'", "outside")


def test_symlink_loop_is_refused(env: Env, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_special(tar, "x", tarfile.SYMTYPE, "y")
        add_special(tar, "y", tarfile.SYMTYPE, "x")

    refused(env, build_tar(tmp_path / "a.tgz", add), "symbolic link")


def test_member_inside_a_symlink_is_refused(env: Env, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_special(tar, "dkms_source_tree/sub", tarfile.SYMTYPE, ".")
        add_bytes(tar, "dkms_source_tree/sub/Makefile")

    refused(env, build_tar(tmp_path / "a.tgz", add), "inside the symbolic link")


def test_member_redefined_as_symlink_is_refused(env: Env, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_special(tar, "dkms_source_tree", tarfile.SYMTYPE, "elsewhere")

    refused(env, build_tar(tmp_path / "a.tgz", add), "more than once")


def test_hard_link_outside_is_refused(env: Env, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_special(tar, "dkms_source_tree/h", tarfile.LNKTYPE, "/etc/shadow")

    refused(env, build_tar(tmp_path / "a.tgz", add), "hard link to '/etc/shadow'")


def test_hard_link_to_a_later_member_is_refused(env: Env, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_special(tar, "dkms_source_tree/h", tarfile.LNKTYPE, "dkms_source_tree/later")
        add_bytes(tar, "dkms_source_tree/later")

    refused(env, build_tar(tmp_path / "a.tgz", add), "hard link")


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (tarfile.CHRTYPE, "character device"),
        (tarfile.BLKTYPE, "block device"),
        (tarfile.FIFOTYPE, "FIFO"),
    ],
)
def test_special_files_are_refused(env: Env, tmp_path: Path, kind: bytes, what: str) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_special(tar, "dkms_source_tree/node", kind)

    refused(env, build_tar(tmp_path / "a.tgz", add), "'dkms_source_tree/node'", what)


def test_too_many_members_is_refused(env: Env, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        for i in range(20):
            add_bytes(tar, f"dkms_source_tree/f{i}")

    refused(
        env, build_tar(tmp_path / "a.tgz", add), "more than 10 members", limits=Limits(members=10)
    )


def test_huge_member_is_refused_from_its_header(env: Env, tmp_path: Path) -> None:
    """A header claiming 5 GiB: refused before any data is read (the data is not even there)."""
    info = tarfile.TarInfo("dkms_source_tree/huge.bin")
    info.size = 5 << 30
    archive = tmp_path / "huge.tar.gz"
    archive.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
    refused(env, archive, "'dkms_source_tree/huge.bin'", "unpacked size past")


def test_oversized_headers_are_refused(env: Env, tmp_path: Path) -> None:
    """A pax header is read into memory whole: the decompressed stream itself is bounded."""

    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("dkms_source_tree/" + "n" * 20000)
        info.pax_headers = {"comment": "c" * 200_000}
        tar.addfile(info, io.BytesIO(b""))

    with tarfile.open(tmp_path / "pax.tar.xz", "w:xz", format=tarfile.PAX_FORMAT) as tar:
        add(tar)
    refused(
        env,
        tmp_path / "pax.tar.xz",
        "unpacks to more than",
        limits=Limits(total_bytes=1000, overhead_bytes=10_000),
    )


def test_truncated_gzip_is_refused(env: Env, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_bytes(tar, "dkms_source_tree/big", os.urandom(200_000))

    whole = build_tar(tmp_path / "whole.tar.gz", add).read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    refused(env, cut, "truncated or corrupt")


def test_truncated_plain_tar_is_refused(env: Env, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_bytes(tar, "dkms_source_tree/big", os.urandom(200_000))

    whole = build_tar(tmp_path / "whole.tar", add, "w").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[:100_000])
    refused(env, cut, "truncated")


def test_not_a_tarball_is_refused(env: Env, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not an archive\n" * 100)
    refused(env, junk, f"Cannot unpack {junk}")


def test_zstd_without_support_says_what_to_do(env: Env, tmp_path: Path) -> None:
    from dkmshooks.safetar import zstd_file

    if zstd_file() is not None:
        pytest.skip("this Python unpacks zstd itself")
    archive = tmp_path / "a.tar.zst"
    archive.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 64)
    refused(env, archive, "zstd", f"zstd -d {archive}")


def test_main_tree_entry_that_is_no_kernel_is_refused(env: Env, tmp_path: Path) -> None:
    """dkms would copy dkms_main_tree/source/x into the module's tree as m/v/source/x."""

    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar, "dkms_binaries_only")
        add_bytes(tar, "dkms_main_tree/source/x86_64/module/evil.ko")

    refused(env, build_tar(tmp_path / "a.tgz", add), "dkms_main_tree/source", "kernel release")


def test_plain_tarball_link_out_of_its_source_dir_is_refused(env: Env, tmp_path: Path) -> None:
    """Inside the archive, but outside the directory that becomes /usr/src/<m>-<v>."""

    def add(tar: tarfile.TarFile) -> None:
        tar.add(SAMPLE, arcname="pkg")
        add_bytes(tar, "secrets/key")
        add_special(tar, "pkg/key", tarfile.SYMTYPE, "../secrets/key")

    refused(env, build_tar(tmp_path / "a.tgz", add), "'pkg/key'", "outside 'pkg'")


def test_refusal_through_the_dkms_command(
    env: Env, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_bytes(tar, "../evil")

    archive = build_tar(tmp_path / "a.tgz", add)
    assert env.dkms("ldtarball", str(archive)) == 7
    err = capfd.readouterr().err
    assert err.startswith(f"\nError! Refusing to load {archive}:\nmember '../evil'")
    assert env.written() == []


# -- errors dkms gives ---------------------------------------------------------------------------


def test_missing_archive(env: Env, tmp_path: Path) -> None:
    with pytest.raises(DkmsError) as info:
        load_tarball(env.session(), tmp_path / "nope.tar.gz", KVER, ARCH)
    assert info.value.code == 2
    assert info.value.lines == (f"{tmp_path / 'nope.tar.gz'} does not exist.",)


def test_no_dkms_conf(env: Env, tmp_path: Path) -> None:
    archive = build_tar(tmp_path / "a.tgz", lambda tar: add_bytes(tar, "src/Makefile"))
    with pytest.raises(DkmsError) as info:
        load_tarball(env.session(), archive, KVER, ARCH)
    assert info.value.code == 3
    assert "No dkms.conf found within it." in info.value.lines[0]
    assert env.written() == []


def test_mktarball_layout_without_a_conf(env: Env, tmp_path: Path) -> None:
    archive = build_tar(
        tmp_path / "a.tgz", lambda tar: add_bytes(tar, "dkms_main_tree/6.1.0-1-amd64/x86_64/x")
    )
    with pytest.raises(DkmsError) as info:
        load_tarball(env.session(), archive, KVER, ARCH)
    assert info.value.code == 7
    assert info.value.lines == (
        "No valid dkms.conf in dkms_source_tree or dkms_binaries_only.",
        f"{archive} is not a valid DKMS tarball.",
    )
    assert env.written() == []


# -- round trips ---------------------------------------------------------------------------------


def add_sample(env: Env, session: Session) -> None:
    shutil.copytree(SAMPLE, env.layout.module_source("dkms_test", "1.0"))
    session.add_module("dkms_test", "1.0", KVER, ARCH)


def fake_build(env: Env, kver: str = KVER, arch: str = ARCH) -> Path:
    """What do_build leaves behind (the .ko's content does not matter to mktarball/ldtarball)."""
    built = env.layout.built_dir("dkms_test", "1.0", kver, arch)
    (built / "module").mkdir(parents=True)
    (built / "log").mkdir()
    (built / "module" / "dkms_test.ko").write_bytes(b"\x7fELF fake module for " + kver.encode())
    (built / "log" / "make.log").write_text("make.log\n")
    return built


def fresh(tmp_path: Path, name: str) -> Env:
    return Env(tmp_path / name)


def members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


@needs_root
def test_mktarball_source_and_binaries_round_trip(env: Env, tmp_path: Path) -> None:
    session = env.session()
    add_sample(env, session)
    fake_build(env)
    env.out.seek(0)
    env.out.truncate()
    archive = make_tarball(session, "dkms_test", "1.0", [(KVER, ARCH)])
    tree = env.layout.dkms_tree
    assert (
        archive
        == tree / "dkms_test/1.0/tarball/dkms_test-1.0-kernel6.1.0-55-amd64-x86_64.dkms.tar.gz"
    )
    assert env.out.getvalue() == (
        f"Marking modules for {KVER} ({ARCH}) for archiving...\n"
        "\n"
        f"Marking {tree}/dkms_test/1.0/source for archiving...\n"
        "\n"
        f"Tarball location: {tree}/dkms_test/1.0/tarball//{archive.name}\n"
    )
    assert members(archive) == [
        ".",
        "./dkms_main_tree",
        f"./dkms_main_tree/{KVER}",
        f"./dkms_main_tree/{KVER}/{ARCH}",
        f"./dkms_main_tree/{KVER}/{ARCH}/log",
        f"./dkms_main_tree/{KVER}/{ARCH}/log/make.log",
        f"./dkms_main_tree/{KVER}/{ARCH}/module",
        f"./dkms_main_tree/{KVER}/{ARCH}/module/dkms_test.ko",
        "./dkms_source_tree",
        "./dkms_source_tree/Makefile",
        "./dkms_source_tree/dkms.conf",
        "./dkms_source_tree/dkms_test.c",
    ]

    other = fresh(tmp_path, "other")
    o_session = other.session()
    loaded = load_tarball(o_session, archive, KVER, ARCH)
    assert (loaded.module, loaded.version, loaded.registered_binaries_only) == (
        "dkms_test",
        "1.0",
        False,
    )
    o_tree = other.layout.dkms_tree
    assert other.out.getvalue() == (
        f"\nLoading tarball for dkms_test/1.0\nLoading {o_tree}/dkms_test/1.0/{KVER}/{ARCH}...\n"
    )
    assert (other.layout.module_source("dkms_test", "1.0") / "dkms_test.c").is_file()
    ko = other.layout.built_dir("dkms_test", "1.0", KVER, ARCH) / "module" / "dkms_test.ko"
    assert ko.read_bytes().endswith(KVER.encode())
    assert list(other.tmp.iterdir()) == []


@needs_root
def test_ldtarball_command_adds_the_module(
    env: Env, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    session = env.session()
    add_sample(env, session)
    fake_build(env)
    archive = make_tarball(session, "dkms_test", "1.0", [(KVER, ARCH)])

    other = fresh(tmp_path, "other")
    capfd.readouterr()
    assert other.dkms("ldtarball", "--archive", str(archive), "-k", KVER) == 0
    o_tree = other.layout.dkms_tree
    assert capfd.readouterr().out == (
        "\nLoading tarball for dkms_test/1.0\n"
        f"Loading {o_tree}/dkms_test/1.0/{KVER}/{ARCH}...\n"
        f"Creating symlink {o_tree}/dkms_test/1.0/source -> "
        f"{other.layout.source_tree}/dkms_test-1.0\n"
    )
    statuses = [(e.state, e.kver) for e in other.session().tree.status("dkms_test")]
    assert statuses == [("built", KVER)]

    assert other.dkms("ldtarball", str(archive)) == 8
    assert capfd.readouterr().err == "\nError! dkms_test/1.0 is already added!\nAborting.\n"

    # --force reloads, and does not fail on the add that follows as dkms 3.4 does
    assert other.dkms("ldtarball", "--force", str(archive)) == 0
    out = capfd.readouterr().out
    assert "Forcing install of dkms_test/1.0" in out
    assert f"Loading {o_tree}/dkms_test/1.0/{KVER}/{ARCH}..." in out


@needs_root
def test_binaries_only_round_trip_is_visible_and_registered(env: Env, tmp_path: Path) -> None:
    session = env.session()
    add_sample(env, session)
    fake_build(env)
    fake_build(env, "6.1.0-56-amd64")
    pairs = [(KVER, ARCH), ("6.1.0-56-amd64", ARCH)]
    archive = make_tarball(session, "dkms_test", "1.0", pairs, binaries_only=True)
    assert archive.name == (
        f"dkms_test-1.0-kernel{KVER}-{ARCH}-kernel6.1.0-56-amd64-{ARCH}.dkms.tar.gz"
    )
    assert "Creating tarball structure to specifically accomodate binaries." in env.out.getvalue()
    names = members(archive)
    assert "./dkms_binaries_only/dkms.conf" in names
    assert "./dkms_binaries_only/PACKAGE_NAME" in names
    assert not any(n.startswith("./dkms_source_tree") for n in names)
    with tarfile.open(archive) as tar:
        got = tar.extractfile("./dkms_binaries_only/PACKAGE_VERSION")
        assert got is not None and got.read() == b"1.0\n"

    other = fresh(tmp_path, "other")
    o_session = other.session()
    loaded = load_tarball(o_session, archive, KVER, ARCH)
    assert loaded.registered_binaries_only
    vdir = other.layout.version_dir("dkms_test", "1.0")
    stub = vdir / BINARIES_ONLY_SOURCE
    assert other.out.getvalue() == (
        "\nLoading tarball for dkms_test/1.0\n"
        f"Creating {stub}\n"
        f"Copying dkms.conf to {stub} ...\n"
        f"Loading {vdir}/{KVER}/{ARCH}...\n"
        f"Loading {vdir}/6.1.0-56-amd64/{ARCH}...\n"
        f"Creating symlink {vdir}/source -> {stub}\n"
    )
    assert os.readlink(vdir / "source") == str(stub)
    assert sorted(p.name for p in stub.iterdir()) == ["dkms.conf"]
    assert not other.layout.module_source("dkms_test", "1.0").exists()
    tree = o_session.tree
    assert not tree.is_broken("dkms_test", "1.0")
    assert [(e.state, e.kver) for e in tree.status("dkms_test")] == [
        ("built", KVER),
        ("built", "6.1.0-56-amd64"),
    ]
    # `remove` must not take the stub for a kernel directory that keeps m/v alive
    assert tree.kernel_dirs_left("dkms_test", "1.0") == [KVER, "6.1.0-56-amd64"]


@needs_root
def test_binaries_only_through_add(env: Env, tmp_path: Path) -> None:
    session = env.session()
    add_sample(env, session)
    fake_build(env)
    archive = make_tarball(session, "dkms_test", "1.0", [(KVER, ARCH)], binaries_only=True)

    other = fresh(tmp_path, "other")
    assert other.dkms("add", str(archive), "-k", KVER) == 0
    assert other.session().tree.is_added("dkms_test", "1.0")
    with pytest.raises(DkmsError) as info:
        load_tarball_for_add(other.session(), archive, KVER, ARCH)
    assert info.value.code == 8


@needs_root
def test_binaries_only_next_to_an_existing_source_tree(env: Env, tmp_path: Path) -> None:
    """dkms: 'if there is a source tree on the system already, don't build a binaries stub'."""
    session = env.session()
    add_sample(env, session)
    fake_build(env)
    archive = make_tarball(session, "dkms_test", "1.0", [(KVER, ARCH)], binaries_only=True)

    other = fresh(tmp_path, "other")
    shutil.copytree(SAMPLE, other.layout.module_source("dkms_test", "1.0"))
    assert other.dkms("ldtarball", str(archive)) == 0
    link = other.layout.source_link("dkms_test", "1.0")
    assert os.readlink(link) == str(other.layout.module_source("dkms_test", "1.0"))
    assert not (link.parent / BINARIES_ONLY_SOURCE).exists()


@needs_root
def test_plain_source_tarball(env: Env, tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile) -> None:
        tar.add(SAMPLE, arcname="upstream-release/driver")
        add_bytes(tar, "upstream-release/README")
        add_bytes(tar, "upstream-release/driver/tools/setuid-helper", b"#!/bin/sh\n", 0o4775)
        add_special(tar, "upstream-release/driver/Kbuild", tarfile.SYMTYPE, "Makefile")
        add_special(
            tar,
            "upstream-release/driver/copy.c",
            tarfile.LNKTYPE,
            "upstream-release/driver/dkms_test.c",
        )

    archive = build_tar(tmp_path / "release.tar.bz2", add, "w:bz2")
    session = env.session()
    assert load_tarball_for_add(session, archive, KVER, ARCH) == ("dkms_test", "1.0")
    src = env.layout.module_source("dkms_test", "1.0")
    assert sorted(p.name for p in src.iterdir()) == [
        "Kbuild",
        "Makefile",
        "copy.c",
        "dkms.conf",
        "dkms_test.c",
        "tools",
    ]
    assert os.readlink(src / "Kbuild") == "Makefile"
    assert (src / "copy.c").read_bytes() == (SAMPLE / "dkms_test.c").read_bytes()
    assert (src / "tools" / "setuid-helper").stat().st_mode & 0o7777 == 0o755
    assert list(env.tmp.iterdir()) == []

    session.add_module("dkms_test", "1.0", KVER, ARCH)
    with pytest.raises(DkmsError) as info:
        load_tarball(session, archive, KVER, ARCH)
    assert info.value.code == 3
    assert info.value.lines[0] == "DKMS tree already contains: dkms_test/1.0"


@needs_root
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.lzma"])
def test_compression_by_suffix_round_trips(env: Env, tmp_path: Path, suffix: str) -> None:
    session = env.session()
    add_sample(env, session)
    out = tmp_path / "out" / f"x{suffix}"
    make_tarball(session, "dkms_test", "1.0", [], archive=str(out), source_only=True)
    magic = out.read_bytes()[:6]
    expected_magic = {
        ".tar": b"./",
        ".tar.gz": b"\x1f\x8b",
        ".tgz": b"\x1f\x8b",
        ".tar.bz2": b"BZh",
        ".tar.xz": b"\xfd7zXZ\x00",
        ".tar.lzma": b"\x5d\x00\x00",
    }[suffix]
    assert magic.startswith(expected_magic)
    other = fresh(tmp_path, "other")
    assert load_tarball(other.session(), out, KVER, ARCH).module == "dkms_test"


@needs_root
def test_mktarball_errors_and_names(
    env: Env, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    session = env.session()
    add_sample(env, session)
    capfd.readouterr()
    assert env.dkms("mktarball", "dkms_test/1.0", "-k", KVER) == 6
    assert capfd.readouterr().err == (
        f"\nError! No modules built for {KVER} ({ARCH}).\n"
        "Modules must already be in the built state before using mktarball.\n"
    )
    assert env.dkms("mktarball", "dkms_test/1.0", "--source-only", "--binaries-only") == 8
    assert env.dkms("mktarball", "nothere/1.0", "--source-only") == 3
    blocker = tmp_path / "file"
    blocker.write_text("")
    capfd.readouterr()
    assert (
        env.dkms("mktarball", "dkms_test/1.0", "--source-only", f"--archive={blocker}/x.tgz") == 9
    )
    assert capfd.readouterr().err == f"\nError! Missing write permissions for {blocker}.\n"

    # No slash in --archive: the name is used inside the default directory.
    assert env.dkms("mktarball", "dkms_test/1.0", "--source-only", "--archive", "mine.tgz") == 0
    assert (env.layout.version_dir("dkms_test", "1.0") / "tarball" / "mine.tgz").is_file()

    kernels = [f"6.1.0-{n}-amd64" for n in range(10, 18)]
    for kver in kernels:
        fake_build(env, kver)
    archive = make_tarball(session, "dkms_test", "1.0", [(k, ARCH) for k in kernels])
    assert archive.name == "dkms_test-1.0-manykernels.dkms.tar.gz"

    assert (
        env.dkms("mktarball", "dkms_test/1.0", "--source-only", "--archive", "/tmp/x.tar.lz") == 6
    )
    assert "Failed to make tarball." in capfd.readouterr().err


def test_unpack_refuses_before_writing(tmp_path: Path) -> None:
    """The unpacker on its own: a bad member late in the archive means nothing at all is written."""

    def add(tar: tarfile.TarFile) -> None:
        for i in range(5):
            add_bytes(tar, f"ok/{i}")
        add_special(tar, "ok/late", tarfile.SYMTYPE, "../../../etc")

    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DkmsError):
        unpack(build_tar(tmp_path / "a.tgz", add), dest)
    assert list(dest.iterdir()) == []


def test_rpm_that_rpm_refuses(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dkms hands an .rpm to `rpm -Uvh` (here a stand-in on PATH that fails)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "rpm"
    fake.write_text('#!/bin/sh\necho "rpm $*" > "$(dirname "$0")/called"\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    package = tmp_path / "dkms_test-1.0.noarch.rpm"
    package.write_bytes(b"not really")
    with pytest.raises(DkmsError) as info:
        load_tarball(env.session(), package, KVER, ARCH)
    assert info.value.code == 9
    assert info.value.lines == (
        f"Unable to install {package} using rpm.",
        "Check to ensure that your system can install .rpm files.",
    )
    assert (bin_dir / "called").read_text() == f"rpm -Uvh {package}\n"
    assert env.written() == []


@needs_root
def test_binaries_only_forced_reload_refreshes_conf_and_binaries(env: Env, tmp_path: Path) -> None:
    session = env.session()
    add_sample(env, session)
    fake_build(env)
    archive = make_tarball(session, "dkms_test", "1.0", [(KVER, ARCH)], binaries_only=True)

    other = fresh(tmp_path, "other")
    load_tarball(other.session(), archive, KVER, ARCH)
    vdir = other.layout.version_dir("dkms_test", "1.0")
    stub = vdir / BINARIES_ONLY_SOURCE
    (stub / "dkms.conf").write_text("# stale\n")
    ko = vdir / KVER / ARCH / "module" / "dkms_test.ko"
    ko.write_bytes(b"stale")

    other.out.seek(0)
    other.out.truncate()
    loaded = load_tarball(other.session(force=True), archive, KVER, ARCH)
    assert not loaded.registered_binaries_only
    assert other.out.getvalue() == (
        "\nLoading tarball for dkms_test/1.0\n"
        f"Copying dkms.conf to {stub} ...\n"
        f"Loading {vdir}/{KVER}/{ARCH}...\n"
    )
    assert (stub / "dkms.conf").read_text() == (SAMPLE / "dkms.conf").read_text()
    assert ko.read_bytes().endswith(KVER.encode())
    assert sorted(p.name for p in (vdir / KVER).iterdir()) == [ARCH]

    with pytest.raises(DkmsError) as info:
        load_tarball(other.session(), archive, KVER, ARCH)
    assert info.value.code == 8


def test_member_the_filesystem_cannot_hold(env: Env, tmp_path: Path) -> None:
    """Writing into the private directory fails: reported as such, and it is cleaned up."""
    long_name = "dkms_source_tree/" + "n" * 300

    def add(tar: tarfile.TarFile) -> None:
        add_conf(tar)
        add_bytes(tar, long_name)

    with pytest.raises(DkmsError) as info:
        load_tarball(env.session(), build_tar(tmp_path / "a.tgz", add), KVER, ARCH)
    assert info.value.code == 1
    assert info.value.lines[0].startswith(f"Cannot unpack '{long_name}' from ")
    assert info.value.lines[0].endswith(": File name too long.")
    assert env.written() == []
