"""The apt hook for a kernel that needs nothing, answered from a verdict (dkmshooks/verdict.py,
dkmshooks/fasthook.py): only while everything the engine read is unchanged, with the same
transaction state the engine leaves, and never when the engine would have done or said
anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dkmshooks import fasthook, verdict
from dkmshooks.adapters import apt
from dkmshooks.locking import TreeLock

K = "6.1.0-56-amd64"
IMAGE = f"/boot/vmlinuz-{K}"
ARCH = os.uname().machine
CONF = (
    'PACKAGE_NAME="m"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="m"\n'
    'DEST_MODULE_LOCATION[0]="/updates/dkms"\nAUTOINSTALL="yes"\n'
    'MAKE[0]="make -C $kernel_source_dir M=$dkms_tree/m/1.0/build"\n'
)


@pytest.fixture
def tree(root: Path) -> Path:
    """m/1.0 built and installed for K, depmod run after the install: K needs nothing."""
    src = root / "usr/src/m-1.0"
    src.mkdir(parents=True)
    (src / "dkms.conf").write_text(CONF)
    vdir = root / "var/lib/dkms/m/1.0"
    (vdir / K / ARCH / "module").mkdir(parents=True)
    (vdir / K / ARCH / "module/m.ko").write_bytes(b"\x7fELF m")
    (vdir / "source").symlink_to(src)
    kdir = root / "lib/modules" / K
    (kdir / "build/include").mkdir(parents=True)
    (kdir / "build/.config").write_text("CONFIG_MODULES=y\n")
    (kdir / "build/Makefile").write_text("all:\n")
    (kdir / "updates/dkms").mkdir(parents=True)
    (kdir / "updates/dkms/m.ko").write_bytes(b"\x7fELF m")
    (root / "var/lib/dkms/m" / f"kernel-{K}-{ARCH}").symlink_to(f"1.0/{K}/{ARCH}")
    (kdir / "modules.dep").write_text("updates/dkms/m.ko:\n")
    (root / "boot").mkdir()
    (root / f"boot/vmlinuz-{K}").write_bytes(b"kernel")
    (root / f"boot/System.map-{K}").write_text("ffffffff81000000 T _text\n")
    return root


def environ(root: Path, transaction: str = "t-engine", **extra: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C.UTF-8",  # else Python sets LC_CTYPE in a child's environment (PEP 538)
        "DKMSHOOKS_ROOT": str(root),
        "DEB_MAINT_PARAMS": "configure 6.1.192-1",
        "DKMSHOOKS_TRANSACTION": transaction,
        **extra,
    }


def engine_hook(root: Path, env: dict[str, str], kind: str = "postinst") -> int:
    """The hook call as the engine handles it (it saves a verdict when it does nothing)."""
    args = [K, IMAGE] if kind == "postinst" else [K]
    return apt.main([kind, *args], env)


def fast_hook(env: dict[str, str], kind: str = "postinst") -> int | None:
    args = [K, IMAGE] if kind == "postinst" else [K]
    return fasthook.answer(["hook", "apt", kind, *args], env)


def verdict_path(root: Path) -> Path:
    return root / "var/lib/dkmshooks/verdicts" / K


def transaction(root: Path, name: str) -> dict[str, object]:
    data = json.loads((root / f"var/lib/dkmshooks/transactions/{name}.json").read_text())
    assert isinstance(data, dict)
    data.pop("transaction")
    return data


@pytest.fixture
def settled(tree: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`tree` with the engine's verdict saved. The tree was made a moment ago, and a verdict
    needs every stamp to be RACY_NS old (test_a_tree_changed_moments_ago_gets_no_verdict)."""
    monkeypatch.setattr(verdict, "RACY_NS", 0)
    assert engine_hook(tree, environ(tree)) == 0
    assert verdict_path(tree).is_file()
    return tree


def test_the_second_call_is_answered_as_the_engine_answered_the_first(settled: Path) -> None:
    assert fast_hook(environ(settled, "t-fast")) == 0
    assert transaction(settled, "t-fast") == transaction(settled, "t-engine")
    kernels = transaction(settled, "t-fast")["kernels"]
    assert isinstance(kernels, dict)
    assert sorted(kernels) == [K, f"{K}#image-added"]


def test_the_headers_hook_marks_what_the_engine_marks(settled: Path) -> None:
    assert engine_hook(settled, environ(settled, "t-engine-h"), "header_postinst") == 0
    assert fast_hook(environ(settled, "t-fast-h"), "header_postinst") == 0
    assert transaction(settled, "t-fast-h") == transaction(settled, "t-engine-h")
    kernels = transaction(settled, "t-fast-h")["kernels"]
    assert isinstance(kernels, dict) and sorted(kernels) == [K]


def test_a_kernel_handled_in_this_transaction_is_said_so(
    settled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert fast_hook(environ(settled, "t-fast")) == 0
    assert capsys.readouterr().err == ""
    assert fast_hook(environ(settled, "t-fast"), "header_postinst") == 0
    assert capsys.readouterr().err == f"dkmshooks: {K}: already handled in this transaction\n"


def test_the_command_answers_without_importing_the_engine(settled: Path) -> None:
    probe = (
        "import atexit, sys\n"
        "engine = lambda: 'engine' if 'dkmshooks.engine' in sys.modules else 'fast'\n"
        "atexit.register(lambda: print(engine()))\n"
        "from dkmshooks.cli import dkmshooks_main\n"
        "dkmshooks_main()\n"
    )
    env = environ(settled, "t-command")
    argv = [sys.executable, "-c", probe, "hook", "apt", "postinst", K, IMAGE]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "fast\n", "")
    assert transaction(settled, "t-command") == transaction(settled, "t-engine")
    # and the same command goes to the engine once the verdict no longer holds
    (settled / "etc/dkms").mkdir(exist_ok=True)
    (settled / "etc/dkms/no-autoinstall").write_text("")
    env = environ(settled, "t-command-2")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout) == (0, "engine\n")
    assert "automatic installation is disabled" in done.stderr


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# changed\n")


CHANGES: dict[str, Callable[[Path], object]] = {
    "module uninstalled": lambda r: (r / f"var/lib/dkms/m/kernel-{K}-{ARCH}").unlink(),
    "newer version registered": lambda r: (
        (r / "var/lib/dkms/m/2.0").mkdir(),
        (r / "var/lib/dkms/m/2.0/source").symlink_to(r / "usr/src/m-1.0"),
    ),
    "another module registered": lambda r: (
        (r / "var/lib/dkms/n/1.0").mkdir(parents=True),
        (r / "var/lib/dkms/n/1.0/source").symlink_to(r / "usr/src/m-1.0"),
    ),
    "source removed": lambda r: (r / "usr/src/m-1.0/dkms.conf").rename(r / "usr/src/conf"),
    "source dir gone": lambda r: (r / "usr/src/m-1.0").rename(r / "usr/src/gone"),
    "temporary dir of a killed build": lambda r: (r / f"var/lib/dkms/m/1.0/{K}/.tmp_x_1").mkdir(),
    "temporary module of a killed install": lambda r: _touch(
        r / f"lib/modules/{K}/updates/dkms/.m.ko.dkmshooks-tmp.1"
    ),
    "automatic installation disabled": lambda r: _touch(r / "etc/dkms/no-autoinstall"),
    "framework.conf written": lambda r: _touch(r / "etc/dkms/framework.conf"),
    "framework.conf.d file added": lambda r: _touch(r / "etc/dkms/framework.conf.d/x.conf"),
    "config.toml written": lambda r: _touch(r / "etc/dkmshooks/config.toml"),
    "os-release changed": lambda r: (r / "etc/os-release").write_text(
        'ID=ubuntu\nVERSION_ID="24.04"\n'
    ),
    "depmod older than the install": lambda r: os.utime(
        r / f"var/lib/dkms/m/kernel-{K}-{ARCH}",
        ns=(0, (r / f"lib/modules/{K}/modules.dep").stat().st_mtime_ns + 10**9),
        follow_symlinks=False,
    ),
    "another kernel installed": lambda r: (r / "lib/modules/6.1.0-57-amd64").mkdir(),
    "headers removed": lambda r: (r / f"lib/modules/{K}/build").rename(r / "build.old"),
    "image removed": lambda r: (r / f"boot/vmlinuz-{K}").unlink(),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_any_change_the_engine_could_see_sends_the_call_to_it(settled: Path, change: str) -> None:
    CHANGES[change](settled)
    assert fast_hook(environ(settled, "t-fast")) is None
    assert not (settled / "var/lib/dkmshooks/transactions/t-fast.json").exists()


@pytest.mark.parametrize(
    "extra",
    [
        {"DKMSHOOKS_LOCK_TIMEOUT": "5"},
        {"parallel_jobs": "7"},
        {"PATH": "/usr/local/bin:/usr/bin:/bin"},
        {"DKMSHOOKS_FAULT": "*:1"},
    ],
)
def test_another_environment_sends_the_call_to_the_engine(
    settled: Path, extra: dict[str, str]
) -> None:
    assert fast_hook(environ(settled, "t-fast", **extra)) is None


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("postinst", "abort-upgrade 6.1.192-1"),
        ("postinst", "'configure' ''"),  # quoted: left to the adapter's shlex parsing
        ("postinst", "configure\t6.1.192-1"),  # not a plain space: likewise
        ("postinst", "abort-upgrade\x1cconfigure"),
        ("preinst", "upgrade 6.1.192-1 6.1.192-1"),
        ("prerm", "remove"),
    ],
)
def test_other_calls_go_to_the_engine(settled: Path, kind: str, params: str) -> None:
    env = environ(settled, "t-fast", DEB_MAINT_PARAMS=params)
    assert fasthook.answer(["hook", "apt", kind, K, IMAGE], env) is None


def test_the_verdict_volatile_variables_of_dpkg_do_not_matter(settled: Path) -> None:
    env = environ(settled, "t-fast", DPKG_MAINTSCRIPT_PACKAGE=f"linux-image-{K}")
    env["DEB_MAINT_PARAMS"] = "configure"
    assert fast_hook(env) == 0


def test_a_held_lock_sends_the_call_to_the_engine(settled: Path) -> None:
    lock = TreeLock(settled / "var/lib/dkmshooks/lock")
    lock.acquire()
    try:
        assert fast_hook(environ(settled, "t-fast")) is None
    finally:
        lock.release()
    assert fast_hook(environ(settled, "t-fast")) == 0


@pytest.mark.parametrize("content", ["", "garbage", "dkmshooks-verdict-3\0" + K, "\0" * 10])
def test_an_unreadable_verdict_sends_the_call_to_the_engine(settled: Path, content: str) -> None:
    verdict_path(settled).write_text(content)
    assert fast_hook(environ(settled, "t-fast")) is None


def test_a_verdict_cut_short_is_not_read(settled: Path) -> None:
    data = verdict_path(settled).read_bytes()
    found = verdict.Verdict.decode(data.decode())
    assert found is not None and len(found.records) > 50
    # cut after any whole field, as a crash while it was written could leave it
    cuts = [i for i, b in enumerate(data) if b == 0]
    for cut in cuts[-4:] + cuts[5:40:7] + [len(data) - 1]:
        assert verdict.Verdict.decode(data[:cut].decode()) is None, cut


def test_a_run_that_did_something_saves_no_verdict(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verdict, "RACY_NS", 0)
    stale = tree / f"var/lib/dkms/m/1.0/{K}/.tmp_x_1"
    stale.mkdir()
    assert engine_hook(tree, environ(tree)) == 0
    assert not stale.exists()  # swept
    assert not verdict_path(tree).exists()
    assert engine_hook(tree, environ(tree, "t-2")) == 0  # now there is nothing to do
    assert verdict_path(tree).exists()


def test_a_run_that_printed_something_saves_no_verdict(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verdict, "RACY_NS", 0)
    (tree / "var/lib/dkms/n/1.0").mkdir(parents=True)
    (tree / "var/lib/dkms/n/1.0/source").symlink_to(tree / "usr/src/missing")  # broken
    assert engine_hook(tree, environ(tree)) == 0
    assert not verdict_path(tree).exists()
    assert fast_hook(environ(tree, "t-fast")) is None


def test_a_run_that_started_a_process_saves_no_verdict(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verdict, "RACY_NS", 0)
    # a framework.conf only bash can read: what it computes may depend on anything
    _touch(tree / "etc/dkms/framework.conf")
    (tree / "etc/dkms/framework.conf").write_text('verbose="$(echo)"\n')
    assert engine_hook(tree, environ(tree)) == 0
    assert not verdict_path(tree).exists()


def test_a_tree_changed_moments_ago_gets_no_verdict(tree: Path) -> None:
    # the tree was just made: a second change within the same tick of the file system's clock
    # could leave a stamp as it was, so nothing younger than RACY_NS is trusted
    assert engine_hook(tree, environ(tree)) == 0
    assert not verdict_path(tree).exists()


def test_a_stale_verdict_is_dropped_by_the_engine(settled: Path) -> None:
    (settled / "etc/dkms").mkdir(exist_ok=True)
    (settled / "etc/dkms/no-autoinstall").write_text("")
    assert engine_hook(settled, environ(settled, "t-2")) == 0  # says so: no verdict
    assert not verdict_path(settled).exists()


def test_without_an_audit_hook_the_run_goes_on_unwatched(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(hook: object) -> None:
        raise RuntimeError("audit hooks are locked")

    monkeypatch.setattr(verdict, "RACY_NS", 0)
    monkeypatch.setattr(verdict, "_hook_installed", False)
    monkeypatch.setattr(sys, "addaudithook", refused)
    assert engine_hook(tree, environ(tree)) == 0
    assert transaction(tree, "t-engine")  # the engine did its part
    assert not verdict_path(tree).exists()
    assert os.stat is verdict._stat  # nothing left wrapped


# -- kernel-install's plugin call ---------------------------------------------------------------

ENTRY = "/boot/efi/0123456789abcdef0123456789abcdef/" + K


def kernel_install_env(root: Path, transaction: str, staging: str = "a") -> dict[str, str]:
    env = environ(root, transaction, KERNEL_INSTALL_STAGING_AREA=f"/tmp/ki.staging.{staging}")
    env.pop("DEB_MAINT_PARAMS")
    env.update(KERNEL_INSTALL_LAYOUT="bls", KERNEL_INSTALL_MACHINE_ID="0123456789abcdef" * 2)
    return env


def engine_plugin(root: Path, env: dict[str, str], verb: str = "add") -> int:
    from dkmshooks.adapters import kernel_install

    args = [verb, K, ENTRY, IMAGE] if verb == "add" else [verb, K, ENTRY]
    return kernel_install.main(args, env)


def fast_plugin(env: dict[str, str], verb: str = "add") -> int | None:
    args = [verb, K, ENTRY, IMAGE] if verb == "add" else [verb, K, ENTRY]
    return fasthook.answer(["hook", "kernel-install", *args], env)


def plugin_verdict(root: Path) -> Path:
    return root / "var/lib/dkmshooks/verdicts" / f"kernel-install_{K}"


@pytest.fixture
def settled_plugin(tree: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(verdict, "RACY_NS", 0)
    assert engine_plugin(tree, kernel_install_env(tree, "k-engine")) == 0
    assert plugin_verdict(tree).is_file()
    return tree


def test_the_plugin_is_answered_as_the_engine_answered_it(settled_plugin: Path) -> None:
    # another run of kernel-install: another staging area, which the engine never reads
    env = kernel_install_env(settled_plugin, "k-fast", staging="b")
    assert fast_plugin(env) == 0
    assert transaction(settled_plugin, "k-fast") == transaction(settled_plugin, "k-engine")
    kernels = transaction(settled_plugin, "k-fast")["kernels"]
    assert isinstance(kernels, dict) and sorted(kernels) == [K, f"{K}#image-added"]


def test_the_plugin_and_the_apt_hook_keep_their_own_verdicts(
    settled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the apt hook's verdict says nothing about the plugin's run (another adapter before it)
    assert fast_plugin(kernel_install_env(settled, "k-fast")) is None
    assert engine_plugin(settled, kernel_install_env(settled, "k-engine")) == 0
    assert plugin_verdict(settled).is_file() and verdict_path(settled).is_file()
    assert fast_plugin(kernel_install_env(settled, "k-fast-2")) == 0
    assert fast_hook(environ(settled, "t-fast")) == 0


@pytest.mark.parametrize("verb", ["remove", "inspect"])
def test_other_plugin_calls_go_to_the_engine(settled_plugin: Path, verb: str) -> None:
    assert fast_plugin(kernel_install_env(settled_plugin, "k-other"), verb) is None


def test_a_change_sends_the_plugin_call_to_the_engine(settled_plugin: Path) -> None:
    (settled_plugin / "etc/dkms").mkdir(exist_ok=True)
    (settled_plugin / "etc/dkms/no-autoinstall").write_text("")
    assert fast_plugin(kernel_install_env(settled_plugin, "k-2")) is None
    env = kernel_install_env(settled_plugin, "k-2")
    env["KERNEL_INSTALL_LAYOUT"] = "other"
    (settled_plugin / "etc/dkms/no-autoinstall").unlink()
    assert fast_plugin(env) is None  # the rest of kernel-install's environment counts


def test_a_removed_kernel_leaves_no_verdict(settled: Path, settled_plugin: Path) -> None:
    assert plugin_verdict(settled).is_file() and verdict_path(settled).is_file()
    assert engine_plugin(settled, kernel_install_env(settled, "k-remove"), "remove") == 0
    assert not plugin_verdict(settled).exists() and not verdict_path(settled).exists()
