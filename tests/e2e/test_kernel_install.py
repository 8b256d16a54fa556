"""systemd's real /usr/bin/kernel-install (252 here) running dkmshooks's plugin,
hooks/kernel-install/40-dkmshooks.install, before a stand-in 50-dracut.install (issue 7).

kernel-install is driven only through its environment (it has no --root): KERNEL_INSTALL_PLUGINS
names the plugins, KERNEL_INSTALL_CONF_ROOT, BOOT_ROOT, MACHINE_ID and TMPDIR keep it in the test's
directory. dkmshooks runs on the host against a system root given by DKMSHOOKS_ROOT, whose
/lib/modules/K/build points at the host's real Debian headers, so modules really build; nothing is
written outside the test's directory. The one test of plugin discovery bind-mounts test
directories over /etc/kernel/install.d and /usr/lib/kernel/install.d in a private mount
namespace, so kernel-install scans "the real places" while the host's stay untouched."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .rpm_env import DATA, DRACUT, DRACUT_PLUGIN, LSINITRD, MACHINE_ID, NEW, OLD, REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PLUGIN = REPO / "hooks" / "kernel-install" / "40-dkmshooks.install"
MODULE = "dkms_test"
FAILING = "dkms_failing_test"
NO_HEADERS = "6.1.0-99-amd64"  # a kernel whose headers do not exist anywhere


@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]
    rc: int
    output: str


class KernelInstallHost:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.bin = base / "bin"
        self.plugins = base / "plugins"
        self.conf = base / "conf"
        for d in (
            self.bin,
            self.plugins,
            self.conf,
            base / "tmp",
            self.root / "etc",
            self.root / "boot",
        ):
            d.mkdir(parents=True, exist_ok=True)
        (self.root / "etc/os-release").write_text('NAME="Fedora Linux"\nID=fedora\nVERSION_ID=41\n')
        (self.conf / "install.conf").write_text("layout=other\n")
        for name, text in (("dracut", DRACUT), ("lsinitrd", LSINITRD)):
            self._script(self.bin / name, text)
        self._script(self.plugins / "50-dracut.install", DRACUT_PLUGIN)
        # `dkms` and `dkmshooks` from this checkout, on PATH as a package would put them.
        for name, function in (("dkms", "dkms_main"), ("dkmshooks", "dkmshooks_main")):
            self._script(
                self.bin / name,
                f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                f"from dkmshooks.cli import {function}\n{function}()\n",
            )

    @staticmethod
    def _script(path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o755)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LC_ALL": "C.UTF-8",
            "DKMSHOOKS_ROOT": str(self.root),
            "E2E_ROOT": str(self.root),
            "KERNEL_INSTALL_PLUGINS": f"{PLUGIN} {self.plugins / '50-dracut.install'}",
            "KERNEL_INSTALL_CONF_ROOT": str(self.conf),
            "BOOT_ROOT": str(self.root / "boot"),
            "MACHINE_ID": MACHINE_ID,
            "TMPDIR": str(self.base / "tmp"),
            **extra,
        }

    def run(self, argv: list[str], **extra: str) -> Run:
        proc = subprocess.run(
            argv,
            env=self.env(**extra),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
            check=False,
        )
        return Run(tuple(argv), proc.returncode, proc.stdout)

    def kernel(self, kver: str, *, headers: bool = True) -> None:
        """K's own module tree and image under the root, as kernel-core leaves them."""
        top = self.root / "lib/modules" / kver
        (top / "kernel").mkdir(parents=True)
        (top / "vmlinuz").write_text(f"stand-in image {kver}\n")
        (top / "modules.order").write_text("")
        if headers:
            (top / "build").symlink_to(f"/usr/src/linux-headers-{kver}")

    def add_module(self, module: str) -> None:
        shutil.copytree(DATA / f"{module}-1.0", self.root / f"usr/src/{module}-1.0")
        result = self.run(["dkms", "add", "-m", module, "-v", "1.0"])
        assert result.rc == 0, result.output

    def kernel_install(self, *args: str, **extra: str) -> Run:
        return self.run(["/usr/bin/kernel-install", *args], **extra)

    def add(self, kver: str, **extra: str) -> Run:
        return self.kernel_install(
            "add", kver, str(self.root / f"lib/modules/{kver}/vmlinuz"), **extra
        )

    # -- results ----------------------------------------------------------------------------------

    def modules(self, kver: str) -> list[str]:
        top = self.root / "lib/modules" / kver
        return sorted(str(p.relative_to(top)) for p in top.rglob("*.ko*")) if top.is_dir() else []

    def dracut_calls(self) -> list[dict[str, str]]:
        log = self.root / "var/log/dracut-standin.log"
        if not log.exists():
            return []
        calls = []
        for line in log.read_text().splitlines():
            head, _, modules = line.partition(" modules=")
            call = dict(item.split("=", 1) for item in head.split())
            call["modules"] = modules.strip()
            calls.append(call)
        return calls

    def rebuild_log(self) -> list[dict[str, object]]:
        log = self.root / "var/log/dkmshooks/rebuild.log"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@pytest.fixture
def host(tmp_path: Path) -> KernelInstallHost:
    for tool in ("/usr/bin/kernel-install", "make", "gcc", "depmod"):
        if shutil.which(tool) is None:
            if os.environ.get("CI"):
                pytest.fail(f"kernel-install e2e: {tool} missing in CI")
            pytest.skip(f"{tool} is not installed")
    for kver in (OLD, NEW):
        if not Path(f"/usr/src/linux-headers-{kver}/Makefile").is_file():
            pytest.skip(f"linux-headers-{kver} is not installed")
    h = KernelInstallHost(tmp_path / "ki")
    h.add_module(MODULE)
    return h


def test_add_builds_and_installs_before_the_initramfs_generator(host: KernelInstallHost) -> None:
    host.kernel(NEW)
    result = host.add(NEW)
    assert result.rc == 0, result.output
    assert host.modules(NEW) == [f"extra/{MODULE}.ko"]
    [call] = host.dracut_calls()
    assert (call["caller"], call["kver"]) == ("kernel-install", NEW)
    assert f"{MODULE}.ko" in call["modules"], "50-dracut ran before our plugin had installed"
    [record] = host.rebuild_log()
    assert (record["source"], record["module"], record["outcome"]) == (
        "kernel-install",
        MODULE,
        "installed",
    )
    # 50-dracut follows: the engine does not regenerate the initramfs itself.
    assert "regenerating the initramfs" not in result.output


def test_failing_module_does_not_stop_dracut(host: KernelInstallHost) -> None:
    """kernel-install stops at the first failing plugin (observed here with 252, as documented
    for ≥ 254): that 50-dracut ran at all shows our plugin exited 0 while a module failed."""
    host.add_module(FAILING)
    host.kernel(NEW)
    result = host.add(NEW)
    assert result.rc == 0, result.output
    assert "module build(s) FAILED" in result.output
    assert host.modules(NEW) == [f"extra/{MODULE}.ko"]
    [call] = host.dracut_calls()
    assert f"{MODULE}.ko" in call["modules"]
    [failed] = [r for r in host.rebuild_log() if r["module"] == FAILING]
    assert failed["outcome"] == "failed" and failed["make_log"]


def test_strict_failure_fails_kernel_install(host: KernelInstallHost) -> None:
    (host.root / "etc/dkmshooks").mkdir(parents=True)
    (host.root / "etc/dkmshooks/config.toml").write_text("strict = true\n")
    host.add_module(FAILING)
    host.kernel(NEW)
    result = host.add(NEW)
    # What strict means here: the failure stops kernel-install, so this kernel gets no
    # initramfs and the package scriptlet fails. Hence it is opt-in.
    assert result.rc == 1, result.output
    assert host.dracut_calls() == []


def test_add_without_headers_defers_and_exits_0(host: KernelInstallHost) -> None:
    host.kernel(NO_HEADERS, headers=False)
    result = host.add(NO_HEADERS)
    assert result.rc == 0, result.output
    assert f"Install kernel-devel-{NO_HEADERS}" in result.output
    assert host.modules(NO_HEADERS) == []
    assert [c["kver"] for c in host.dracut_calls()] == [NO_HEADERS]
    pending = json.loads((host.root / f"var/lib/dkmshooks/pending/{NO_HEADERS}.json").read_text())
    assert pending["modules"] == [MODULE]
    assert [r["outcome"] for r in host.rebuild_log()] == ["deferred-no-headers"]


def test_remove_uninstalls_what_was_built(host: KernelInstallHost) -> None:
    host.kernel(OLD)
    host.kernel(NEW)
    assert host.add(OLD).rc == 0
    assert host.add(NEW).rc == 0
    result = host.kernel_install("remove", OLD)
    assert result.rc == 0, result.output
    assert host.modules(OLD) == []
    assert not (host.root / f"var/lib/dkms/{MODULE}/1.0/{OLD}").exists()
    assert host.modules(NEW) == [f"extra/{MODULE}.ko"]
    removed = [r for r in host.rebuild_log() if r["action"] == "unbuild"]
    assert [(r["kernel"], r["outcome"]) for r in removed] == [(OLD, "removed")]
    # The stand-in 50-dracut does nothing on remove.
    assert [c["kver"] for c in host.dracut_calls()] == [OLD, NEW]


def test_a_second_add_in_one_transaction_costs_nothing(host: KernelInstallHost) -> None:
    host.kernel(NEW)
    assert host.add(NEW, DKMSHOOKS_TRANSACTION="one-transaction").rc == 0
    again = host.add(NEW, DKMSHOOKS_TRANSACTION="one-transaction")
    assert again.rc == 0, again.output
    assert "already handled in this transaction" in again.output
    assert [r["outcome"] for r in host.rebuild_log()] == ["installed"]


def test_inspect_and_other_verbs_are_left_alone(host: KernelInstallHost) -> None:
    for verb in ("inspect", "frobnicate"):
        proc = subprocess.run(
            [str(PLUGIN), verb, NEW], env=host.env(), capture_output=True, text=True, check=False
        )
        assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert host.rebuild_log() == []


def test_discovered_in_the_plugin_directories_before_dracut(host: KernelInstallHost) -> None:
    """No KERNEL_INSTALL_PLUGINS: kernel-install scans /etc/kernel/install.d and
    /usr/lib/kernel/install.d (test directories bind-mounted over them), sorts, and runs ours,
    installed under its shipped name, before 50-dracut; a 90- plugin sees the same order."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    usr_dir, etc_dir = host.base / "usr-install.d", host.base / "etc-install.d"
    usr_dir.mkdir()
    etc_dir.mkdir()
    shutil.copy2(PLUGIN, usr_dir / PLUGIN.name)
    shutil.copy2(host.plugins / "50-dracut.install", usr_dir / "50-dracut.install")
    order = host.base / "order.log"
    recorder = f'#!/bin/sh\necho "${{0##*/}} $1" >> {shlex.quote(str(order))}\n'
    for name, where in (("10-first.install", etc_dir), ("90-last.install", usr_dir)):
        (where / name).write_text(recorder)
        (where / name).chmod(0o755)
    host.kernel(NEW)
    image = host.root / f"lib/modules/{NEW}/vmlinuz"
    script = (
        'set -e; mount --bind "$1" /usr/lib/kernel/install.d; '
        'mount --bind "$2" /etc/kernel/install.d; shift 2; exec "$@"'
    )
    env = host.env()
    del env["KERNEL_INSTALL_PLUGINS"]
    for d in ("/usr/lib/kernel/install.d", "/etc/kernel/install.d"):
        if not Path(d).is_dir():
            pytest.skip(f"{d} does not exist to mount over")
    proc = subprocess.run(
        [
            "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", script, "sh", str(usr_dir), str(etc_dir),
            "/usr/bin/kernel-install", "add", NEW, str(image),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert order.read_text().splitlines() == ["10-first.install add", "90-last.install add"]
    [call] = host.dracut_calls()
    assert f"{MODULE}.ko" in call["modules"]
    assert [r["outcome"] for r in host.rebuild_log()] == ["installed"]
