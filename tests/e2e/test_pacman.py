"""End to end with the real pacman: our alpm hooks, chrooted into a throwaway Arch-like root,
build a real module against a real kernel build tree, install it, run depmod, and keep the
initramfs (a mkinitcpio stand-in) current, once per preset and transaction.

Layout (details in pacman_env.py): each test gets WORK/root as pacman's RootDir with a private
pacman.conf. Every pacman call, and every command chrooted into the root, runs in its own mount
namespace (`unshare --mount`) in which WORK/root/usr is an overlay: the host's /usr read-only
below (bash, python3, make, gcc, kmod: what the chrooted hooks run), WORK/usr-upper above (what
the packages install; its lib/modules, src and local are opaque, so only the root's own kernels
and sources show). Outside the namespace the root's /usr is that upper dir. Packages are built
with makepkg from real inputs (the host's Debian 6.1 headers merged into an Arch-style
usr/lib/modules/K/build) and cached between runs under $DKMSHOOKS_TEST_CACHE/pacman.
Kernel 6.1.0-56-amd64 is `linux` 1-1; 6.1.0-55-amd64 is the newer `linux` 2-1."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .pacman_env import (
    NEW_KVER,
    OLD_KVER,
    STANDIN_SCRIPTS,
    EnvironmentUnavailable,
    PacmanRoot,
    Result,
    find_pyalpm,
    make_repos,
    missing_requirements,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BASE = ("dkmshooks", "kmod", "mkinitcpio")
MODULE = "dkms_test"


def _unavailable(reason: str) -> None:
    """Skip locally; in CI, where the environment is built for this tier, fail loudly instead."""
    if os.environ.get("CI"):
        pytest.fail(f"pacman e2e environment incomplete in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    missing = missing_requirements()
    if missing:
        _unavailable("missing: " + ", ".join(missing))
    try:
        return make_repos(tmp_path_factory.mktemp("pacman-repos"))
    except EnvironmentUnavailable as exc:
        _unavailable(str(exc))
        raise


@pytest.fixture
def alpm(repos: dict[str, Path], tmp_path: Path) -> Iterator[PacmanRoot]:
    root = PacmanRoot(tmp_path, repos["first"])
    ok = root.pacman("-Sy", *BASE)
    assert ok.returncode == 0, ok
    yield root
    # pytest keeps its last tmp dirs for a post-mortem; the logs, state and DKMS tree stay, the
    # 60 MB of headers per kernel and root go.
    shutil.rmtree(root.upper / "lib" / "modules", ignore_errors=True)


def _ok(result: Result) -> Result:
    assert result.returncode == 0, result
    assert "error:" not in result.output, result
    return result


def _module_files(root: PacmanRoot, kver: str) -> list[str]:
    return root.glob(f"/usr/lib/modules/{kver}/**/{MODULE}.ko*")


def _vermagic(root: PacmanRoot, path: str) -> str:
    proc = subprocess.run(
        ["modinfo", "-F", "vermagic", str(root.path(path))],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.split()[0]


def _status(root: PacmanRoot) -> str:
    return _ok(root.run(["dkms", "status"], chroot=True)).output


def _assert_installed(root: PacmanRoot, kver: str) -> None:
    files = _module_files(root, kver)
    assert len(files) == 1, (files, root.transcript())
    assert _vermagic(root, files[0]) == kver
    # depmod ran for kver after the install: the module is in its dependency list.
    assert f"{MODULE}.ko" in root.read(f"/usr/lib/modules/{kver}/modules.dep")
    assert f"{MODULE}/1.0, {kver}, x86_64: installed" in _status(root)


def _initramfs_modules(root: PacmanRoot) -> list[str]:
    return root.read("/boot/initramfs-linux.img").splitlines()


def _records(root: PacmanRoot, **match: str) -> list[dict[str, object]]:
    return [r for r in root.log_records() if all(r.get(k) == v for k, v in match.items())]


def test_fresh_install_builds_installs_and_the_initramfs_is_generated_once(
    alpm: PacmanRoot,
) -> None:
    result = _ok(alpm.pacman("-S", "linux", "linux-headers", "foo-dkms"))

    assert "Building and installing DKMS modules (dkmshooks)" in result.output
    assert f"{OLD_KVER}: {MODULE}/1.0 installed" in result.output
    _assert_installed(alpm, OLD_KVER)
    # mkinitcpio's own hook (after ours) generated the preset once, with the module in it; the
    # follow-up saw that and did not run it again.
    assert alpm.mkinitcpio_calls() == [f"call preset=linux kver={OLD_KVER}"]
    assert f"updates/dkms/{MODULE}.ko" in _initramfs_modules(alpm)
    assert not alpm.exists("/var/lib/dkmshooks/pacman-initramfs.json")
    installed = _records(alpm, module=MODULE, outcome="installed", source="pacman")
    assert [r["kernel"] for r in installed] == [OLD_KVER]


def test_syu_to_a_newer_kernel_rebuilds_for_it_and_drops_the_old_one(
    alpm: PacmanRoot, repos: dict[str, Path]
) -> None:
    _ok(alpm.pacman("-S", "linux", "linux-headers", "foo-dkms"))
    calls_before = len(alpm.mkinitcpio_calls())

    alpm.use_repo(repos["next"])
    # -yy: the second repository's db may be no newer than the first one's copy (same second).
    result = _ok(alpm.pacman("-Syyu"))

    assert "upgrading linux..." in result.output
    _assert_installed(alpm, NEW_KVER)
    # The old kernel's modules went with it: nothing of ours is left in its tree or in DKMS's.
    assert _module_files(alpm, OLD_KVER) == []
    assert not alpm.exists(f"/usr/lib/modules/{OLD_KVER}")
    assert not alpm.exists(f"/var/lib/dkms/{MODULE}/1.0/{OLD_KVER}")
    assert OLD_KVER not in _status(alpm)
    assert alpm.mkinitcpio_calls()[calls_before:] == [f"call preset=linux kver={NEW_KVER}"]
    assert _initramfs_modules(alpm)[0] == f"kver={NEW_KVER}"
    assert f"updates/dkms/{MODULE}.ko" in _initramfs_modules(alpm)
    removed = _records(alpm, module=MODULE, kernel=OLD_KVER, outcome="removed")
    installed = _records(alpm, module=MODULE, kernel=NEW_KVER, outcome="installed")
    assert len(removed) == 1 and len(installed) == 1
    # One id for the whole pacman transaction, Pre and Post hooks alike.
    assert removed[0]["transaction"] == installed[0]["transaction"]


def test_module_package_installed_after_the_kernel(alpm: PacmanRoot) -> None:
    _ok(alpm.pacman("-S", "linux", "linux-headers"))
    calls_before = len(alpm.mkinitcpio_calls())
    assert _module_files(alpm, OLD_KVER) == []

    result = _ok(alpm.pacman("-S", "foo-dkms"))

    assert f"{OLD_KVER}: {MODULE}/1.0 installed" in result.output
    _assert_installed(alpm, OLD_KVER)
    # mkinitcpio's hook fires on usr/src/*/dkms.conf (all presets, -P): once, not again by us.
    assert alpm.mkinitcpio_calls()[calls_before:] == [f"call preset=linux kver={OLD_KVER}"]
    assert f"updates/dkms/{MODULE}.ko" in _initramfs_modules(alpm)


def test_headers_only_transaction_builds_and_the_follow_up_regenerates_once(
    alpm: PacmanRoot,
) -> None:
    first = _ok(alpm.pacman("-S", "linux", "foo-dkms"))
    assert f"{OLD_KVER}: no kernel headers; not building {MODULE}/1.0" in first.output
    assert "Install linux-headers and it will be." in first.output
    assert _module_files(alpm, OLD_KVER) == []
    assert _records(alpm, module=MODULE, outcome="deferred-no-headers")
    calls_before = len(alpm.mkinitcpio_calls())
    assert f"updates/dkms/{MODULE}.ko" not in _initramfs_modules(alpm)

    result = _ok(alpm.pacman("-S", "linux-headers"))

    _assert_installed(alpm, OLD_KVER)
    # Nothing in this transaction triggers mkinitcpio's hook; ours regenerated the preset once.
    assert "Updating linux initcpios" not in result.output
    assert "regenerating the initramfs (preset linux)" in result.output
    assert alpm.mkinitcpio_calls()[calls_before:] == [f"call preset=linux kver={OLD_KVER}"]
    assert f"updates/dkms/{MODULE}.ko" in _initramfs_modules(alpm)
    assert _records(alpm, module="initramfs", outcome="initramfs-regenerated")
    assert not alpm.exists("/var/lib/dkmshooks/pacman-initramfs.json")
    assert not alpm.exists(f"/var/lib/dkmshooks/pending/{OLD_KVER}.json")


def test_failing_module_is_logged_and_pacman_still_succeeds(alpm: PacmanRoot) -> None:
    result = alpm.pacman("-S", "linux", "linux-headers", "foo-dkms", "failing-dkms")

    assert result.returncode == 0, result
    assert "dkms_failing_test/1.0 failed" in result.output
    assert "module build(s) FAILED: dkms_failing_test/1.0" in result.output
    # The others are not held back by it, and the kernel's initramfs still exists.
    _assert_installed(alpm, OLD_KVER)
    assert alpm.exists("/boot/initramfs-linux.img")
    failed = _records(alpm, module="dkms_failing_test", outcome="failed", source="pacman")
    assert len(failed) == 1, alpm.log_records()
    assert failed[0]["kernel"] == OLD_KVER
    assert failed[0]["make_log"]
    assert any("#error" in line or "error:" in line for line in failed[0]["tail"] or [])  # type: ignore[attr-defined]


def test_removing_the_module_package_uninstalls_it_everywhere(alpm: PacmanRoot) -> None:
    _ok(alpm.pacman("-S", "linux", "linux-headers", "foo-dkms"))
    _assert_installed(alpm, OLD_KVER)

    result = _ok(alpm.pacman("-R", "foo-dkms"))

    assert "Removing DKMS modules of removed kernels and module sources" in result.output
    assert _module_files(alpm, OLD_KVER) == []
    assert f"{MODULE}.ko" not in alpm.read(f"/usr/lib/modules/{OLD_KVER}/modules.dep")
    assert not alpm.exists(f"/var/lib/dkms/{MODULE}")
    assert MODULE not in _status(alpm)
    assert _records(alpm, module=MODULE, action="remove", outcome="removed")
    # The kernel itself is untouched.
    assert alpm.exists(f"/usr/lib/modules/{OLD_KVER}/kernel/drivers/misc/lab_placeholder.ko")


def test_reinstalling_the_same_kernel_rebuilds_its_modules(alpm: PacmanRoot) -> None:
    _ok(alpm.pacman("-S", "linux", "linux-headers", "foo-dkms"))

    result = _ok(alpm.pacman("-S", "linux"))  # same release: pacman's Upgrade, same paths

    assert "Removing DKMS modules of reinstalled kernels" in result.output
    assert f"{OLD_KVER}: {MODULE}/1.0 installed" in result.output
    _assert_installed(alpm, OLD_KVER)
    unbuilt = _records(alpm, module=MODULE, action="unbuild", outcome="removed")
    assert len(unbuilt) == 1


def test_kernel_upgraded_without_its_headers_says_which_package_is_missing(
    alpm: PacmanRoot, repos: dict[str, Path]
) -> None:
    with_pyalpm = find_pyalpm() is not None
    if with_pyalpm:
        _ok(alpm.pacman("-S", "pyalpm"))  # the hook then asks pacman's database (pyalpm)
    _ok(alpm.pacman("-S", "linux", "linux-headers", "foo-dkms"))
    alpm.use_repo(repos["next"])

    result = _ok(alpm.pacman("-Syy", "linux"))  # Arch pitfall: kernel upgraded, headers not

    assert _module_files(alpm, NEW_KVER) == []
    hint = "linux-headers 2-1 (the installed one is 1-1)" if with_pyalpm else "linux-headers"
    assert f"{NEW_KVER}: no kernel headers; not building {MODULE}/1.0. Install {hint} and" in (
        result.output
    )
    assert _records(alpm, kernel=NEW_KVER, module=MODULE, outcome="deferred-no-headers")
    assert alpm.exists(f"/var/lib/dkmshooks/pending/{NEW_KVER}.json")

    _ok(alpm.pacman("-S", "linux-headers"))

    _assert_installed(alpm, NEW_KVER)
    assert not alpm.exists(f"/var/lib/dkmshooks/pending/{NEW_KVER}.json")


def test_pyalpm_reads_the_real_database(alpm: PacmanRoot) -> None:
    from dkmshooks.adapters.pacman import Package, headers_hint, open_package_db
    from dkmshooks.layout import Layout

    if find_pyalpm() is None:  # optional, also for the adapter: never a CI failure
        pytest.skip("pyalpm is not installed in the test interpreter")
    _ok(alpm.pacman("-S", "linux"))
    # From the host, the root's /usr is an empty mount point: no pkgbase file, only the db.
    layout = Layout(root=alpm.root)
    db = open_package_db(layout)
    assert db is not None
    assert db.get("linux") == Package("linux", "linux", "1-1")
    assert db.get("linux-headers") is None
    vmlinuz = f"usr/lib/modules/{OLD_KVER}/vmlinuz"
    assert db.owner(vmlinuz) == Package("linux", "linux", "1-1")
    assert db.owner(vmlinuz, guess="kmod") == Package("linux", "linux", "1-1")
    assert db.owner("usr/lib/modules/none/vmlinuz") is None
    assert headers_hint(layout, OLD_KVER, db) == "linux-headers"


def test_stand_in_scripts_pass_shellcheck(tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        _unavailable("shellcheck is not installed")
    for name, text in STANDIN_SCRIPTS.items():
        script = tmp_path / name
        script.write_text(text)
        proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout
