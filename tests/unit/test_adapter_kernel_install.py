"""dkmshooks.adapters.kernel_install: kernel-install's plugin calls → Trigger, the exit policy,
and the plugin file itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dkmshooks.adapters import kernel_install
from dkmshooks.errors import UsageError
from dkmshooks.layout import Layout
from dkmshooks.trigger import KernelEvent

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "hooks" / "kernel-install" / "40-dkmshooks.install"
K = "6.11.4-301.fc41.x86_64"


def os_root(path: Path, os_release: str) -> Layout:
    (path / "etc").mkdir(parents=True)
    (path / "etc/os-release").write_text(os_release)
    return Layout(root=path)


@pytest.fixture
def fedora(tmp_path: Path) -> Layout:
    return os_root(tmp_path / "fedora", 'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=41\n')


@pytest.fixture
def debian(tmp_path: Path) -> Layout:
    return os_root(tmp_path / "debian", 'ID=debian\nVERSION_ID="12"\n')


def trigger(layout: Layout, *argv: str, **env: str):  # type: ignore[no-untyped-def]
    return kernel_install.trigger_from_args(list(argv), env, transaction="tx", layout=layout)


def test_add_is_image_added_and_the_initramfs_follows(fedora: Layout) -> None:
    t = trigger(
        fedora,
        "add",
        K,
        f"/boot/efi/abc/{K}",
        f"/lib/modules/{K}/vmlinuz",
        KERNEL_INSTALL_LAYOUT="bls",
    )
    assert t is not None
    assert t.source == "kernel-install"
    assert t.transaction == "tx"
    assert t.kernels == (KernelEvent(K, "image-added"),)
    assert t.extra["initramfs_follows"] == "1"
    assert t.extra["image"] == f"/lib/modules/{K}/vmlinuz"
    assert t.extra["entry_dir"] == f"/boot/efi/abc/{K}"
    assert t.extra["layout"] == "bls"
    assert t.headers_package_hint == f"kernel-devel-{K}"


def test_add_with_prebuilt_initrds_is_still_image_added(fedora: Layout) -> None:
    t = trigger(fedora, "add", K, "/e", "/img", "/initrd1", "/initrd2")
    assert t is not None
    assert t.kernels == (KernelEvent(K, "image-added"),)
    assert t.extra["initrds"] == "2"


def test_remove_is_image_removed(fedora: Layout) -> None:
    t = trigger(fedora, "remove", K, f"/boot/abc/{K}")
    assert t is not None
    assert t.kernels == (KernelEvent(K, "image-removed"),)
    assert "initramfs_follows" not in t.extra


def test_headers_hint_follows_the_distribution(debian: Layout, fedora: Layout) -> None:
    t = trigger(debian, "add", "6.1.0-56-amd64", "/e", "/boot/vmlinuz-6.1.0-56-amd64")
    assert t is not None
    assert t.headers_package_hint == ""  # the engine names linux-headers-K itself
    assert kernel_install.devel_package(f"{K}+debug") == "kernel-debug-devel-" + K
    assert kernel_install.devel_package(K) == f"kernel-devel-{K}"


@pytest.mark.parametrize("verb", ["inspect", "list", "add-all", "frobnicate"])
def test_other_verbs_are_ignored(fedora: Layout, verb: str) -> None:
    assert trigger(fedora, verb, K) is None
    assert kernel_install.main([verb, K], {"DKMSHOOKS_ROOT": str(fedora.root)}) == 0


@pytest.mark.parametrize("argv", [["add"], ["remove", ""], ["add", "../etc"]])
def test_missing_or_bad_release_is_a_usage_error(fedora: Layout, argv: list[str]) -> None:
    with pytest.raises(UsageError):
        trigger(fedora, *argv)


def test_main_runs_the_engine_and_exits_0(tmp_path: Path, fedora: Layout) -> None:
    """The real engine on an empty system: nothing to build, the kernel recorded as handled."""
    env = {"DKMSHOOKS_ROOT": str(fedora.root), "DKMSHOOKS_TRANSACTION": "ki-unit"}
    assert kernel_install.main(["add", K, "/e", "/img"], env) == 0
    state = json.loads(
        (fedora.root / "var/lib/dkmshooks/transactions/ki-unit.json").read_text(encoding="utf-8")
    )
    assert K in state["kernels"]
    assert kernel_install.main(["remove", K, "/e"], env) == 0


def test_main_usage(fedora: Layout, capsys: pytest.CaptureFixture[str]) -> None:
    assert kernel_install.main([], {}) == 2
    assert kernel_install.main(["add"], {"DKMSHOOKS_ROOT": str(fedora.root)}) == 2
    assert "kernel release is missing" in capsys.readouterr().err


def test_engine_error_does_not_stop_the_later_plugins(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A system the engine refuses (no os-release: dkms's own error) is one line and exit 0."""
    root = tmp_path / "bare"
    root.mkdir()
    env = {"DKMSHOOKS_ROOT": str(root), "DKMSHOOKS_TRANSACTION": "t"}
    assert kernel_install.main(["add", K, "/e", "/img"], env) == 0
    err = capfd.readouterr().err
    assert "os-release" in err
    assert "Traceback" not in err


def test_engine_crash_does_not_stop_the_later_plugins(
    fedora: Layout, capfd: pytest.CaptureFixture[str]
) -> None:
    """An engine that cannot even read its config directory still exits 0: what comes after us
    (50-depmod, 50-dracut, 90-loaderentry) must run. Provoked with a state dir that is a file."""
    (fedora.root / "var/lib").mkdir(parents=True)
    (fedora.root / "var/lib/dkmshooks").write_text("not a directory\n")
    env = {"DKMSHOOKS_ROOT": str(fedora.root), "DKMSHOOKS_TRANSACTION": "t"}
    assert kernel_install.main(["add", K, "/e", "/img"], env) == 0
    err = capfd.readouterr().err
    assert "internal error while handling kernel-install add" in err
    assert "remaining kernel-install plugins still run" in err


def test_strict_engine_crash_fails(fedora: Layout) -> None:
    (fedora.root / "etc/dkmshooks").mkdir()
    (fedora.root / "etc/dkmshooks/config.toml").write_text("strict = true\n")
    (fedora.root / "var/lib").mkdir(parents=True)
    (fedora.root / "var/lib/dkmshooks").write_text("not a directory\n")
    env = {"DKMSHOOKS_ROOT": str(fedora.root), "DKMSHOOKS_TRANSACTION": "t"}
    assert kernel_install.main(["add", K, "/e", "/img"], env) == 1


def test_transaction_outside_any_package_manager_is_fresh(fedora: Layout) -> None:
    one = kernel_install.current_transaction(fedora, {})
    assert one
    assert kernel_install.current_transaction(fedora, {"DKMSHOOKS_TRANSACTION": "x"}) == "x"


# -- the plugin file -------------------------------------------------------------------------------


def test_plugin_is_an_executable_install_file() -> None:
    # kernel-install silently skips files without the suffix or the x bit (dkms#335).
    assert PLUGIN.name.endswith(".install")
    assert os.access(PLUGIN, os.X_OK)
    # Before every initramfs generator and depmod (50-*), after nothing that could skip us.
    assert PLUGIN.name < "50-depmod.install" < "50-dracut.install"


def test_plugin_without_dkmshooks_exits_0(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(PLUGIN), "add", K, "/e", "/img"],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, "")


def test_plugin_forwards_its_arguments(tmp_path: Path) -> None:
    """The plugin with a `dkmshooks` on PATH that is this checkout's: the real adapter and engine
    run against an empty root given by DKMSHOOKS_ROOT."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "dkmshooks"
    tool.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from dkmshooks.cli import dkmshooks_main\ndkmshooks_main()\n"
    )
    tool.chmod(0o755)
    root = os_root(tmp_path / "root", "ID=fedora\n").root
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "DKMSHOOKS_ROOT": str(root),
        "DKMSHOOKS_TRANSACTION": "plugin-unit",
    }
    for argv in (["add", K, "/e", "/img"], ["inspect"], ["remove", K, "/e"]):
        proc = subprocess.run(
            [str(PLUGIN), *argv], env=env, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
    assert (root / "var/lib/dkmshooks/transactions/plugin-unit.json").is_file()
