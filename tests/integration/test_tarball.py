"""mktarball and ldtarball round trips with a module really built against Debian's headers: the
tarball is made in one sandbox and loaded into a second, fresh one (a different machine, as far
as dkms can tell). Outputs are dkms 3.4's, except where dkmshooks deliberately does better:
binaries-only tarballs stay visible to `status` and install without a source tree.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from .conftest import DATA
from .expected import ARCH, dest_dir, expect, status_lines
from .sandbox import Sandbox

pytestmark = pytest.mark.integration

TREE = "/var/lib/dkms/dkms_test/1.0"
STUB = f"{TREE}/binaries-only-source"


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> dict[str, str]:
    """dkms's private unpack directory goes under $TMPDIR: keep it in the test's own space, so
    the tests can also check that it is always cleaned up."""
    path = tmp_path / "dkms-tmp"
    path.mkdir()
    return {"TMPDIR": str(path)}


@pytest.fixture
def fresh(sandbox: Sandbox, tmp_path: Path) -> Sandbox:
    """A second machine: its own empty DKMS tree and /usr/src."""
    return Sandbox(tmp_path / "fresh", sandbox.dkms_path)


def built_sandbox(sandbox: Sandbox, kernels: list[str], env: dict[str, str]) -> None:
    sandbox.add_source(DATA / "dkms_test-1.0")
    for kver in kernels:
        result = sandbox.dkms("build", "dkms_test/1.0", "-k", kver, env=env)
        assert result.rc == 0, result.output


def mktarball_output(kernels: list[str], location: str, source: bool = True) -> str:
    marked = "".join(f"Marking modules for {k} ({ARCH}) for archiving...\n" for k in kernels)
    middle = (
        f"Marking {TREE}/source for archiving...\n"
        if source
        else "Creating tarball structure to specifically accomodate binaries.\n"
    )
    return f"{marked}\n{middle}\nTarball location: {location}\n"


def vermagic(sandbox: Sandbox, path: str) -> str:
    return sandbox.check(["modinfo", "-F", "vermagic", path]).strip()


def test_source_only_round_trip(
    sandbox: Sandbox, fresh: Sandbox, kernels: list[str], tmp_path: Path, tmpdir_env: dict[str, str]
) -> None:
    kver = kernels[0]
    sandbox.add_source(DATA / "dkms_test-1.0")
    assert sandbox.dkms("add", "dkms_test/1.0", env=tmpdir_env).rc == 0
    expect(
        sandbox.dkms("mktarball", "dkms_test/1.0", "--source-only", env=tmpdir_env),
        0,
        mktarball_output([], f"{TREE}/tarball//dkms_test-1.0-source-only.dkms.tar.gz"),
    )
    archive = sandbox.upper_dir(f"{TREE}/tarball/dkms_test-1.0-source-only.dkms.tar.gz")
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == [
            ".",
            "./dkms_main_tree",
            "./dkms_source_tree",
            "./dkms_source_tree/Makefile",
            "./dkms_source_tree/dkms.conf",
            "./dkms_source_tree/dkms_test.c",
        ]

    expect(
        fresh.dkms("ldtarball", str(archive), env=tmpdir_env),
        0,
        "\nLoading tarball for dkms_test/1.0\n"
        f"Creating symlink {TREE}/source -> /usr/src/dkms_test-1.0\n",
    )
    assert (
        fresh.read_text("/usr/src/dkms_test-1.0/dkms_test.c")
        == (DATA / "dkms_test-1.0" / "dkms_test.c").read_text()
    )
    assert status_lines(fresh, "dkms_test") == "dkms_test/1.0: added\n"
    result = fresh.dkms("build", "dkms_test/1.0", "-k", kver, env=tmpdir_env)
    assert result.rc == 0, result.output
    assert status_lines(fresh, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: built\n"

    expect(
        fresh.dkms("ldtarball", str(archive), env=tmpdir_env),
        8,
        "\nError! dkms_test/1.0 is already added!\nAborting.\n",
    )
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == []


def test_source_and_binaries_round_trip(
    sandbox: Sandbox, fresh: Sandbox, kver: str, tmp_path: Path, tmpdir_env: dict[str, str]
) -> None:
    built_sandbox(sandbox, [kver], tmpdir_env)
    archive = tmp_path / "archives" / "dkms_test.tar.gz"
    expect(
        sandbox.dkms(
            "mktarball", "dkms_test/1.0", "-k", kver, f"--archive={archive}", env=tmpdir_env
        ),
        0,
        mktarball_output([kver], str(archive)),
    )
    built_ko = sandbox.upper_dir(f"{TREE}/{kver}/{ARCH}/module/dkms_test.ko").read_bytes()

    expect(
        fresh.dkms("ldtarball", "--archive", str(archive), "-k", kver, env=tmpdir_env),
        0,
        "\nLoading tarball for dkms_test/1.0\n"
        f"Loading {TREE}/{kver}/{ARCH}...\n"
        f"Creating symlink {TREE}/source -> /usr/src/dkms_test-1.0\n",
    )
    assert status_lines(fresh, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: built\n"
    assert fresh.upper_dir(f"{TREE}/{kver}/{ARCH}/module/dkms_test.ko").read_bytes() == built_ko

    fresh.check(["depmod", "-a", kver])
    ko = f"{dest_dir(kver)}/dkms_test.ko"
    expect(
        fresh.dkms("install", "dkms_test/1.0", "-k", kver, env=tmpdir_env),
        0,
        f"Installing {ko}\nRunning depmod... done.\n",
    )
    assert status_lines(fresh, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: installed\n"
    assert vermagic(fresh, ko).split()[0] == kver

    # Loading over it: dkms 3.4's messages without --force; with it, everything is reloaded.
    expect(
        fresh.dkms("ldtarball", str(archive), env=tmpdir_env),
        8,
        "\nError! dkms_test/1.0 is already added!\nAborting.\n",
    )
    result = fresh.dkms("ldtarball", "--force", str(archive), env=tmpdir_env)
    assert result.rc == 0, result.output
    assert "Forcing install of dkms_test/1.0\n" in result.output
    assert f"Loading {TREE}/{kver}/{ARCH}...\n" in result.output
    assert status_lines(fresh, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: installed\n"
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == []


def test_binaries_only_round_trip(
    sandbox: Sandbox,
    fresh: Sandbox,
    kernels: list[str],
    tmp_path: Path,
    tmpdir_env: dict[str, str],
) -> None:
    """dkms 3.4 leaves such a module invisible (`source` becomes a real directory); here it is
    `built`, installs without a build, and is removed cleanly."""
    built_sandbox(sandbox, kernels, tmpdir_env)
    k_args = [arg for kver in kernels for arg in ("-k", kver)]
    name = "dkms_test-1.0-" + "-".join(f"kernel{k}-{ARCH}" for k in kernels) + ".dkms.tar.gz"
    expect(
        sandbox.dkms("mktarball", "dkms_test/1.0", *k_args, "--binaries-only", env=tmpdir_env),
        0,
        mktarball_output(kernels, f"{TREE}/tarball//{name}", source=False),
    )
    archive = sandbox.upper_dir(f"{TREE}/tarball/{name}")

    loading = "".join(f"Loading {TREE}/{kver}/{ARCH}...\n" for kver in kernels)
    expect(
        fresh.dkms("ldtarball", str(archive), env=tmpdir_env),
        0,
        "\nLoading tarball for dkms_test/1.0\n"
        f"Creating {STUB}\n"
        f"Copying dkms.conf to {STUB} ...\n"
        f"{loading}"
        f"Creating symlink {TREE}/source -> {STUB}\n",
    )
    assert not fresh.exists("/usr/src/dkms_test-1.0")
    assert fresh.readlink(f"{TREE}/source") == STUB
    assert status_lines(fresh, "dkms_test") == "".join(
        f"dkms_test/1.0, {kver}, {ARCH}: built\n" for kver in kernels
    )

    for kver in kernels:
        fresh.check(["depmod", "-a", kver])
        ko = f"{dest_dir(kver)}/dkms_test.ko"
        expect(
            fresh.dkms("install", "dkms_test/1.0", "-k", kver, env=tmpdir_env),
            0,
            f"Installing {ko}\nRunning depmod... done.\n",
        )
        assert vermagic(fresh, ko).split()[0] == kver
    assert status_lines(fresh, "dkms_test") == "".join(
        f"dkms_test/1.0, {kver}, {ARCH}: installed\n" for kver in kernels
    )

    # There is nothing to build from, and dkms says so.
    expect(
        fresh.dkms("build", "dkms_test/1.0", "-k", f"{kernels[0]}-other", env=tmpdir_env),
        8,
        f"\nError! The directory {TREE}/source does not appear to have module source located "
        "within it.\nBuild halted.\n",
    )

    result = fresh.dkms("remove", "dkms_test/1.0", "--all", env=tmpdir_env)
    assert result.rc == 0, result.output
    assert result.output.endswith("Deleting module dkms_test/1.0 completely from the DKMS tree.\n")
    assert not fresh.exists("/var/lib/dkms/dkms_test")
    for kver in kernels:
        assert not fresh.exists(f"{dest_dir(kver)}/dkms_test.ko")
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == []


def test_hostile_tarball_changes_nothing(
    sandbox: Sandbox, tmp_path: Path, tmpdir_env: dict[str, str]
) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(DATA / "dkms_test-1.0", arcname="dkms_source_tree")
        tar.add(DATA / "dkms_test-1.0" / "Makefile", arcname="dkms_main_tree/../../../etc/cron.d/x")
    before = sandbox.tree("/var/lib/dkms") + sandbox.tree("/usr/src") + sandbox.tree("/etc/cron.d")
    result = sandbox.dkms("ldtarball", str(archive), env=tmpdir_env)
    assert result.rc == 7
    assert result.output.startswith(
        f"\nError! Refusing to load {archive}:\n"
        "member 'dkms_main_tree/../../../etc/cron.d/x': it has a '..' path component.\n"
    )
    after = sandbox.tree("/var/lib/dkms") + sandbox.tree("/usr/src") + sandbox.tree("/etc/cron.d")
    assert after == before
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == []
