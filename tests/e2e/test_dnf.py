"""Real dnf 4 installing, upgrading and removing kernels in an installroot, with dkmshooks's dnf4
plugin loaded from hooks/dnf/ and its kernel-install plugin run by the kernels' own scriptlets
(issue 7). The packages and the installroot's layout are described in rpm_env.py. Every test
starts from a fresh root in which dkms_test-dkms (registered with `dkms add`) and the dracut
stand-in are installed, and no kernel."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dkmshooks.adapters import dnf5_actions

from .rpm_env import BASE_PACKAGES, HOOKS, NEW, OLD, REPO, RpmRoot, cached_repo, missing_tools

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODULE = "dkms_test"
FAILING = "dkms_failing_test"
# Keep the installroots (the apt tier's variable); they are removed after each test otherwise.
KEEP_VAR = "DKMSHOOKS_E2E_KEEP"


def core(kver: str) -> str:
    version, release = kver.split("-")[:2]
    return f"kernel-core-{version}-{release}"


def devel(kver: str) -> str:
    version, release = kver.split("-")[:2]
    return f"kernel-devel-{version}-{release}"


@pytest.fixture(scope="session")
def repo() -> Path:
    reason = missing_tools()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"dnf e2e environment incomplete in CI: {reason}")
        pytest.skip(reason)
    return cached_repo()


@pytest.fixture
def system(tmp_path: Path, repo: Path) -> Iterator[RpmRoot]:
    root = RpmRoot(tmp_path / "dnf", repo)
    ok(root.dnf("install", *BASE_PACKAGES, f"{MODULE}-dkms"))
    assert root.exists(f"/var/lib/dkms/{MODULE}/1.0/source"), "dkms add in %post did not run"
    yield root
    # Each root holds one or two 50 MB kernel-devel trees; set the variable to look around.
    if not os.environ.get(KEEP_VAR):
        shutil.rmtree(root.base, ignore_errors=True)


def ok(result):  # type: ignore[no-untyped-def]
    assert result.rc == 0, result.describe()
    return result


def records(root: RpmRoot, **match: str) -> list[dict[str, object]]:
    return [r for r in root.rebuild_log() if all(r.get(k) == v for k, v in match.items())]


def module_file(root: RpmRoot, kver: str) -> str:
    found = [m for m in root.modules(kver) if m.startswith(f"extra/{MODULE}.ko")]
    assert found, f"{MODULE} not installed for {kver}: {root.modules(kver)}"
    return found[0]


def test_kernel_and_devel_in_one_transaction(system: RpmRoot) -> None:
    """kernel-core's %posttrans runs kernel-install; our 40- plugin builds and installs before
    50-depmod and 50-dracut, once; the dnf plugin, seeing kernel-core in the transaction, leaves
    the kernel to kernel-install."""
    result = ok(system.dnf("install", core(NEW), devel(NEW)))
    module_file(system, NEW)
    # 50-depmod ran after us and indexed the module.
    assert f"extra/{MODULE}.ko" in system.read(f"/lib/modules/{NEW}/modules.dep")
    [call] = system.dracut_calls()
    assert (call["caller"], call["kver"]) == ("kernel-install", NEW)
    assert f"{MODULE}.ko" in call["modules"], "the initramfs generator ran before our build"
    [record] = records(system, module=MODULE, kernel=NEW)
    assert (record["source"], record["action"], record["outcome"]) == (
        "kernel-install",
        "install",
        "installed",
    )
    assert not records(system, action="initramfs")
    assert result.output.count(f"building and installing {MODULE}/1.0") == 1


def test_devel_in_a_later_transaction_builds_and_regenerates(system: RpmRoot) -> None:
    """kernel-devel after its kernel: no kernel hook runs, the dnf plugin's transaction() hands
    headers-added to the installroot's dkmshooks, which builds, installs, runs depmod and — the
    module being one the admin wants in the initramfs — `dracut -f --kver K`."""
    system.write("/etc/dracut.conf.d/dkms_test.conf", f'add_drivers+=" {MODULE} "\n')
    first = ok(system.dnf("install", core(NEW)))
    assert "Install kernel-devel-" + NEW in first.output
    assert system.modules(NEW) == []
    assert system.exists(f"/var/lib/dkmshooks/pending/{NEW}.json")
    [before] = system.dracut_calls()
    assert before["caller"] == "kernel-install" and MODULE not in before["modules"]

    ok(system.dnf("install", devel(NEW)))
    module_file(system, NEW)
    assert f"extra/{MODULE}.ko" in system.read(f"/lib/modules/{NEW}/modules.dep")
    assert not system.exists(f"/var/lib/dkmshooks/pending/{NEW}.json")
    calls = system.dracut_calls()
    assert [(c["caller"], c["kver"]) for c in calls] == [("kernel-install", NEW), ("direct", NEW)]
    assert f"{MODULE}.ko" in calls[1]["modules"]
    assert f"{MODULE}.ko" in system.read(f"/boot/initramfs-{NEW}.img")
    outcomes = [(r["source"], r["module"], r["outcome"]) for r in system.rebuild_log()]
    assert outcomes == [
        ("kernel-install", MODULE, "deferred-no-headers"),
        ("dnf", MODULE, "installed"),
        ("dnf", "initramfs", "initramfs-regenerated"),
    ]
    log = system.rebuild_log()
    assert log[0]["transaction"] != log[1]["transaction"] == log[2]["transaction"]


def test_devel_later_regenerates_the_initramfs_by_default(system: RpmRoot) -> None:
    ok(system.dnf("install", core(NEW)))
    ok(system.dnf("install", devel(NEW)))
    module_file(system, NEW)
    calls = system.dracut_calls()
    assert [c["caller"] for c in calls] == ["kernel-install", "direct"]


def test_one_dnf_run_is_one_transaction_in_the_log(system: RpmRoot) -> None:
    """A transaction with a new kernel (kernel-install builds for it from the scriptlet) and the
    late headers of an older one (the dnf plugin builds for it afterwards): both records carry
    the id of that dnf process, computed by the plugin in-process and by kernel-install's plugin
    from its ancestors."""
    ok(system.dnf("install", core(OLD)))
    ok(system.dnf("install", core(NEW), devel(NEW), devel(OLD)))
    module_file(system, OLD)
    module_file(system, NEW)
    by_kernel = {r["kernel"]: r for r in records(system, module=MODULE, outcome="installed")}
    assert by_kernel[NEW]["source"] == "kernel-install"
    assert by_kernel[OLD]["source"] == "dnf"
    assert by_kernel[NEW]["transaction"] == by_kernel[OLD]["transaction"]
    [deferred] = records(system, module=MODULE, outcome="deferred-no-headers")
    assert deferred["transaction"] != by_kernel[OLD]["transaction"]


def test_upgrade_to_a_newer_kernel(system: RpmRoot) -> None:
    ok(system.dnf("install", core(OLD), devel(OLD)))
    old_module = system.path(f"/lib/modules/{OLD}/{module_file(system, OLD)}").read_bytes()

    result = ok(system.dnf("upgrade"))
    assert f"kernel-core-6.1.0-{NEW.split('-')[1]}" in result.stdout
    # Both kernels stay (installonly), each with its own build; the old one is untouched.
    module_file(system, NEW)
    assert system.path(f"/lib/modules/{OLD}/{module_file(system, OLD)}").read_bytes() == old_module
    calls = system.dracut_calls()
    assert [(c["caller"], c["kver"]) for c in calls] == [
        ("kernel-install", OLD),
        ("kernel-install", NEW),
    ]
    assert all(f"{MODULE}.ko" in c["modules"] for c in calls)
    installed = records(system, module=MODULE, outcome="installed")
    assert [(r["kernel"], r["source"]) for r in installed] == [
        (OLD, "kernel-install"),
        (NEW, "kernel-install"),
    ]


def test_kernel_removal(system: RpmRoot) -> None:
    ok(system.dnf("install", core(OLD), devel(OLD)))
    ok(system.dnf("install", core(NEW), devel(NEW)))
    assert system.exists(f"/var/lib/dkms/{MODULE}/1.0/{OLD}")

    ok(system.dnf("remove", core(OLD), devel(OLD)))
    assert system.modules(OLD) == []
    assert not system.exists(f"/var/lib/dkms/{MODULE}/1.0/{OLD}")
    assert not system.exists(f"/lib/modules/{OLD}/extra")
    # The other kernel keeps its module.
    module_file(system, NEW)
    assert system.exists(f"/var/lib/dkms/{MODULE}/1.0/{NEW}")
    # kernel-core's %preun (kernel-install remove) did it; the dnf plugin's image-removed after
    # the transaction found nothing left to do.
    removed = records(system, module=MODULE, action="unbuild")
    assert [(r["kernel"], r["source"], r["outcome"]) for r in removed] == [
        (OLD, "kernel-install", "removed")
    ]


def test_failing_module_leaves_the_kernel_installed(system: RpmRoot) -> None:
    ok(system.dnf("install", f"{FAILING}-dkms"))
    result = system.dnf("install", core(NEW), devel(NEW))
    assert result.rc == 0, result.describe()
    assert "Complete!" in result.stdout
    assert "module build(s) FAILED" in result.output
    # The other module and the initramfs were made regardless.
    module_file(system, NEW)
    [call] = system.dracut_calls()
    assert f"{MODULE}.ko" in call["modules"]
    assert FAILING not in call["modules"]
    [failed] = records(system, module=FAILING, kernel=NEW)
    assert failed["outcome"] == "failed"
    assert failed["source"] == "kernel-install"
    assert str(failed["make_log"]).endswith("make.log")
    assert failed["tail"], "the make.log tail belongs in the record"
    assert system.exists(str(failed["make_log"]))


def test_dnf5_actions_command_for_a_later_kernel_devel(system: RpmRoot) -> None:
    """What dnf5's actions plugin runs for hooks/dnf/dkmshooks.actions after a kernel-devel
    install (dnf5 is not available here: the dnf4 plugin is disabled for this transaction and
    the command the actions file renders is run the way the plugin runs it, on the host)."""
    ok(system.dnf("install", core(NEW)))
    ok(system.dnf("install", devel(NEW), plugins=False))
    assert system.modules(NEW) == []

    actions = dnf5_actions.parse((HOOKS / "dnf/dkmshooks.actions").read_text())
    version, release = NEW.split("-")[:2]
    package = dnf5_actions.PackageInfo("kernel-devel", version, release, "x86_64", action="I")
    [argv] = dnf5_actions.commands_for(
        actions, "post_transaction", [package], conf={"installroot": str(system.root)}
    )
    assert argv[0] == "/usr/bin/dkmshooks"
    here = [sys.executable, "-c", "from dkmshooks.cli import dkmshooks_main; dkmshooks_main()"]
    result = system.run([*here, *argv[1:]], env={"PYTHONPATH": str(REPO)})
    assert result.rc == 0, result.describe()
    assert result.stdout == "", "plain mode: every stdout line would be parsed by the plugin"
    module_file(system, NEW)
    [installed] = records(system, module=MODULE, outcome="installed")
    assert installed["source"] == "dnf"
