"""The rebuild engine in hook mode (`dkmshooks trigger`, `dkmshooks plan`), against real Debian
kernel headers: the ordering rules of DESIGN.md ("The engine") and issue 4, the tree lock, the
failure policy, the initramfs decision and the unified rebuild log.

The host has headers but no kernel image; a test makes a kernel's image "arrive" inside the
sandbox (EngineSandbox.make_image_ready) and can hide a kernel's headers to play the image-first
order. The initramfs generator is a stand-in that records its calls (the real one would need a
kernel image and write /boot); what is under test is whether and how often the engine calls it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import DATA, FIXTURES
from .engine_sandbox import REBUILD_LOG, EngineSandbox, make_engine
from .expected import ARCH, dest_dir, status_lines
from .sandbox import Sandbox
from .sources import write_source_tree

pytestmark = pytest.mark.integration

RECORD_FIELDS = {
    "time",
    "source",
    "transaction",
    "module",
    "version",
    "kernel",
    "arch",
    "action",
    "outcome",
    "duration",
    "schema",
}
MULTI_KOS = ["dkms_multi_a.ko", "dkms_multi_b_renamed.ko"]


@pytest.fixture
def engine(sandbox: Sandbox, tmp_path: Path) -> EngineSandbox:
    return make_engine(sandbox, tmp_path)


def records(engine: EngineSandbox, **fields: str) -> list[dict[str, Any]]:
    """Rebuild-log records whose fields equal `fields`, each checked for the common shape."""
    found = []
    for record in engine.rebuild_log():
        missing = RECORD_FIELDS - set(record)
        assert not missing, f"rebuild log record without {sorted(missing)}: {record}"
        if all(record.get(k) == v for k, v in fields.items()):
            found.append(record)
    return found


def outcomes(engine: EngineSandbox, **fields: str) -> list[tuple[str, str, str]]:
    """(module, action, outcome) of the matching records, in log order."""
    return [(r["module"], r["action"], r["outcome"]) for r in records(engine, **fields)]


def installed_kos(engine: EngineSandbox, kver: str) -> list[str]:
    if not engine.exists(dest_dir(kver)):
        return []
    return sorted(engine.check(["ls", dest_dir(kver)]).split())


def built_files(engine: EngineSandbox, module: str, kver: str) -> list[str]:
    base = f"/var/lib/dkms/{module}/1.0/{kver}/{ARCH}"
    kos = engine.check(["sh", "-c", f"ls {base}/module/*.ko"]).split()
    return [*kos, f"{base}/log/make.log"]


def plan(engine: EngineSandbox, *kernels: str) -> dict[str, dict[str, Any]]:
    """`dkmshooks plan --json`, per kernel; stdout must be nothing but the JSON document."""
    argv = [str(engine.dkmshooks_path), "plan", "--json"]
    for kver in kernels:
        argv += ["-k", kver]
    rc, stdout, stderr = engine.run_split(argv)
    assert rc == 0, stdout + stderr
    document = json.loads(stdout)
    assert document["schema"] == 1
    return {k["kernel"]: k for k in document["kernels"]}


def actions(entry: dict[str, Any]) -> dict[str, str]:
    return {a["module"]: a["action"] for a in entry["actions"]}


def assert_vermagic(engine: EngineSandbox, kver: str, kos: list[str]) -> None:
    for ko in kos:
        vermagic = engine.check(["modinfo", "-F", "vermagic", f"{dest_dir(kver)}/{ko}"])
        assert vermagic.startswith(f"{kver} "), (kver, ko, vermagic)


# -- ordering rules ------------------------------------------------------------------------------


def test_headers_first_then_image_installs_without_rebuilding(
    engine: EngineSandbox, kernels: list[str]
) -> None:
    """Headers configured before the image: build now, hold install and depmod (status `built`,
    log `deferred-no-image`, pending `no-image`). The image trigger then installs the very files
    that were built: same inode, same mtime, make.log untouched, no `built` record."""
    kver = kernels[0]
    engine.register(DATA / "dkms_multi_test-1.0", DATA / "dkms_test-1.0")

    result = engine.trigger(f"{kver}:headers-added", transaction="apt-100", source="apt")
    assert result.rc == 0, result.output
    for module in ("dkms_multi_test", "dkms_test"):
        assert status_lines(engine, module) == f"{module}/1.0, {kver}, {ARCH}: built\n"
    assert installed_kos(engine, kver) == []
    assert sorted(outcomes(engine, transaction="apt-100")) == [
        ("dkms_multi_test", "build", "built"),
        ("dkms_multi_test", "install", "deferred-no-image"),
        ("dkms_test", "build", "built"),
        ("dkms_test", "install", "deferred-no-image"),
    ]
    assert {r["source"] for r in records(engine)} == {"apt"}
    pending = engine.pending(kver)
    assert pending is not None and pending["reason"] == "no-image", pending
    assert pending["modules"] == ["dkms_multi_test", "dkms_test"]
    entry = plan(engine, kver)[kver]
    assert (entry["headers"], entry["image"]) == (True, False)
    assert actions(entry) == {"dkms_multi_test": "defer-no-image", "dkms_test": "defer-no-image"}

    files = built_files(engine, "dkms_multi_test", kver) + built_files(engine, "dkms_test", kver)
    before = {path: engine.stat(path) for path in files}
    logged = len(engine.rebuild_log())
    engine.make_image_ready(kver)
    result = engine.trigger(f"{kver}:image-added", transaction="apt-100", source="apt")
    assert result.rc == 0, result.output
    assert {path: engine.stat(path) for path in files} == before, "rebuilt instead of installed"
    assert sorted(outcomes(engine, transaction="apt-100")[logged:]) == [
        ("dkms_multi_test", "install", "installed"),
        ("dkms_test", "install", "installed"),
    ]
    for module in ("dkms_multi_test", "dkms_test"):
        assert status_lines(engine, module) == f"{module}/1.0, {kver}, {ARCH}: installed\n"
    assert installed_kos(engine, kver) == [*MULTI_KOS, "dkms_test.ko"]
    engine.check(
        [
            "cmp",
            f"/var/lib/dkms/dkms_test/1.0/{kver}/{ARCH}/module/dkms_test.ko",
            f"{dest_dir(kver)}/dkms_test.ko",
        ]
    )
    modules_dep = engine.read_text(f"/lib/modules/{kver}/modules.dep")
    assert "updates/dkms/dkms_test.ko:" in modules_dep, "depmod did not run after the install"
    assert engine.pending(kver) is None

    # A third trigger of the same transaction with nothing new: a no-op.
    log_before = engine.read_text(REBUILD_LOG)
    result = engine.trigger(f"{kver}:image-added", transaction="apt-100", source="apt")
    assert result.rc == 0, result.output
    assert f"{kver}: already handled in this transaction" in result.output
    assert engine.read_text(REBUILD_LOG) == log_before


def test_image_first_without_headers_then_headers(
    engine: EngineSandbox, kernels: list[str]
) -> None:
    """Image configured before its headers: nothing is built, the kernel is pending with the
    headers package named; the headers trigger then builds and installs."""
    kver = kernels[1]
    engine.register(DATA / "dkms_test-1.0")
    engine.hide_headers(kver)
    engine.make_image_ready(kver)

    result = engine.trigger(f"{kver}:image-added", transaction="apt-200", source="apt")
    assert result.rc == 0, result.output
    assert f"linux-headers-{kver}" in result.output
    assert status_lines(engine, "dkms_test") == "dkms_test/1.0: added\n"
    assert not engine.exists(f"/var/lib/dkms/dkms_test/1.0/{kver}")
    pending = engine.pending(kver)
    assert pending is not None, "no pending state for a kernel without headers"
    assert (pending["reason"], pending["hint"], pending["modules"]) == (
        "no-headers",
        f"linux-headers-{kver}",
        ["dkms_test"],
    )
    (deferred,) = records(engine, transaction="apt-200")
    assert (deferred["module"], deferred["outcome"]) == ("dkms_test", "deferred-no-headers")
    assert f"linux-headers-{kver}" in deferred["message"]
    entry = plan(engine, kver)[kver]
    assert (entry["headers"], entry["image"]) == (False, True)
    assert actions(entry) == {"dkms_test": "defer-no-headers"}

    engine.restore_headers(kver)
    result = engine.trigger(f"{kver}:headers-added", transaction="apt-201", source="apt")
    assert result.rc == 0, result.output
    assert status_lines(engine, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: installed\n"
    assert outcomes(engine, transaction="apt-201") == [("dkms_test", "install", "installed")]
    assert_vermagic(engine, kver, ["dkms_test.ko"])
    assert engine.pending(kver) is None


def test_pending_state_does_not_outlive_its_reason(
    engine: EngineSandbox, kernels: list[str]
) -> None:
    """Once the headers are there, K is no longer waiting for its headers package, even when a
    module then fails to build: `dkmshooks doctor` must not tell the admin to install a package
    that is installed."""
    kver = kernels[1]
    engine.register(DATA / "dkms_failing_test-1.0", DATA / "dkms_test-1.0")
    engine.hide_headers(kver)
    engine.make_image_ready(kver)
    result = engine.trigger(f"{kver}:image-added", transaction="apt-250")
    assert result.rc == 0, result.output
    assert engine.pending(kver) is not None

    engine.restore_headers(kver)
    result = engine.trigger(f"{kver}:headers-added", transaction="apt-251")
    assert result.rc == 0, result.output
    assert status_lines(engine, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: installed\n"
    pending = engine.pending(kver)
    assert pending is None or pending["reason"] != "no-headers", pending


def test_headers_and_image_in_one_transaction(engine: EngineSandbox, kernels: list[str]) -> None:
    """Headers hook, image hook and kernel-install of one transaction: one rebuild; the later
    triggers are no-ops. A later transaction finds everything installed and rebuilds nothing."""
    kver = kernels[0]
    engine.register(DATA / "dkms_multi_test-1.0", DATA / "dkms_test-1.0")
    engine.make_image_ready(kver)

    result = engine.trigger(
        f"{kver}:headers-added", f"{kver}:image-added", transaction="apt-300", source="apt"
    )
    assert result.rc == 0, result.output
    assert result.output.count("already handled in this transaction") == 1, result.output
    assert sorted(outcomes(engine)) == [
        ("dkms_multi_test", "install", "installed"),
        ("dkms_test", "install", "installed"),
    ]
    assert installed_kos(engine, kver) == [*MULTI_KOS, "dkms_test.ko"]
    files = built_files(engine, "dkms_multi_test", kver) + built_files(engine, "dkms_test", kver)
    before = {path: engine.stat(path) for path in files}
    log_before = engine.read_text(REBUILD_LOG)

    for event, source in (("headers-added", "apt"), ("image-added", "kernel-install")):
        result = engine.trigger(f"{kver}:{event}", transaction="apt-300", source=source)
        assert result.rc == 0, result.output
        assert f"{kver}: already handled in this transaction" in result.output
    result = engine.trigger(f"{kver}:image-added", transaction="apt-301", source="apt")
    assert result.rc == 0, result.output
    assert engine.read_text(REBUILD_LOG) == log_before
    assert {path: engine.stat(path) for path in files} == before


def test_kernel_removal(engine: EngineSandbox, kernels: list[str]) -> None:
    """image-removed unbuilds everything built for K, AUTOINSTALL or not, leaves nothing of ours
    under /lib/modules/K, and forgets K's pending state."""
    k1, k2 = kernels[0], kernels[1]
    engine.register(DATA / "dkms_noautoinstall_test-1.0", DATA / "dkms_test-1.0")
    engine.make_image_ready(k1)
    result = engine.dkms("install", "-k", k1, "dkms_noautoinstall_test/1.0")
    assert result.rc == 0, result.output
    result = engine.trigger(f"{k1}:image-added", transaction="apt-400")
    assert result.rc == 0, result.output
    # k2: headers only, so its build waits for an image that will never come.
    result = engine.trigger(f"{k2}:headers-added", transaction="apt-400")
    assert result.rc == 0, result.output
    assert engine.pending(k2) is not None

    result = engine.trigger(f"{k2}:image-removed", transaction="apt-401")
    assert result.rc == 0, result.output
    assert engine.pending(k2) is None
    assert not engine.exists(f"/var/lib/dkms/dkms_test/1.0/{k2}")
    assert outcomes(engine, transaction="apt-401") == [("dkms_test", "unbuild", "removed")]
    assert status_lines(engine, "dkms_test") == f"dkms_test/1.0, {k1}, {ARCH}: installed\n"

    # Only the build tree goes: what is installed stays until the kernel itself goes.
    log_before = engine.read_text(REBUILD_LOG)
    result = engine.trigger(f"{k1}:headers-removed", transaction="apt-402")
    assert result.rc == 0, result.output
    assert installed_kos(engine, k1) == ["dkms_noautoinstall_test.ko", "dkms_test.ko"]
    assert engine.read_text(REBUILD_LOG) == log_before

    result = engine.trigger(f"{k1}:image-removed", transaction="apt-402")
    assert result.rc == 0, result.output
    assert sorted(outcomes(engine, transaction="apt-402")) == [
        ("dkms_noautoinstall_test", "unbuild", "removed"),
        ("dkms_test", "unbuild", "removed"),
    ]
    for module in ("dkms_noautoinstall_test", "dkms_test"):
        assert status_lines(engine, module) == f"{module}/1.0: added\n"
    assert not engine.exists(f"/lib/modules/{k1}/updates"), engine.tree(f"/lib/modules/{k1}")
    assert engine.pending(k1) is None


def test_image_preinst_then_image_added_rebuilds(engine: EngineSandbox, kernels: list[str]) -> None:
    """A kernel package being reinstalled or upgraded in place: image-preinst unbuilds the
    AUTOINSTALL modules only (dkms's kernel_preinst), and the image-added of the same
    transaction builds and installs them again."""
    kver = kernels[0]
    engine.register(DATA / "dkms_noautoinstall_test-1.0", DATA / "dkms_test-1.0")
    engine.make_image_ready(kver)
    result = engine.dkms("install", "-k", kver, "dkms_noautoinstall_test/1.0")
    assert result.rc == 0, result.output
    result = engine.trigger(f"{kver}:image-added", transaction="apt-450")
    assert result.rc == 0, result.output
    old_make_log = engine.stat(f"/var/lib/dkms/dkms_test/1.0/{kver}/{ARCH}/log/make.log")

    result = engine.trigger(f"{kver}:image-preinst", transaction="apt-451")
    assert result.rc == 0, result.output
    assert outcomes(engine, transaction="apt-451") == [("dkms_test", "unbuild", "removed")]
    assert status_lines(engine, "dkms_test") == "dkms_test/1.0: added\n"
    assert installed_kos(engine, kver) == ["dkms_noautoinstall_test.ko"]
    modules_dep = engine.read_text(f"/lib/modules/{kver}/modules.dep")
    assert "dkms_test.ko" not in modules_dep, "depmod did not run after image-preinst"

    result = engine.trigger(f"{kver}:image-added", transaction="apt-451")
    assert result.rc == 0, result.output
    assert outcomes(engine, transaction="apt-451")[1:] == [("dkms_test", "install", "installed")]
    assert installed_kos(engine, kver) == ["dkms_noautoinstall_test.ko", "dkms_test.ko"]
    new_make_log = engine.stat(f"/var/lib/dkms/dkms_test/1.0/{kver}/{ARCH}/log/make.log")
    assert new_make_log != old_make_log, "installed the stale build instead of rebuilding"


# -- failure policy --------------------------------------------------------------------------------


def test_failing_module_among_several(engine: EngineSandbox, kernels: list[str]) -> None:
    """The others are installed; the hook exits 0 after a loud summary, or 1 with strict = true
    (global, or for that module); the failure is in the log with its make.log and last lines."""
    kver = kernels[0]
    engine.register(
        DATA / "dkms_failing_test-1.0", DATA / "dkms_multi_test-1.0", DATA / "dkms_test-1.0"
    )
    engine.make_image_ready(kver)
    make_log = "/var/lib/dkms/dkms_failing_test/1.0/build/make.log"

    result = engine.trigger(f"{kver}:image-added", transaction="apt-500", source="apt")
    assert result.rc == 0, result.output
    assert installed_kos(engine, kver) == [*MULTI_KOS, "dkms_test.ko"]
    assert "FAILED" in result.output and "dkms_failing_test/1.0" in result.output
    assert make_log in result.output
    assert "this module fails to build on purpose" in result.output, "no make.log tail shown"
    (failed,) = records(engine, transaction="apt-500", outcome="failed")
    assert (failed["module"], failed["kernel"], failed["exit_code"]) == (
        "dkms_failing_test",
        kver,
        10,
    )
    assert failed["make_log"] == make_log
    assert 0 < len(failed["tail"]) <= 20
    assert any("this module fails to build on purpose" in line for line in failed["tail"])
    assert sorted(outcomes(engine, transaction="apt-500", outcome="installed")) == [
        ("dkms_multi_test", "install", "installed"),
        ("dkms_test", "install", "installed"),
    ]
    # `dkmshooks log` shows the same failure to machines.
    rc, stdout, stderr = engine.run_split(
        [str(engine.dkmshooks_path), "log", "--failed", "--kernel", kver, "--json"]
    )
    assert rc == 0, stderr
    assert [json.loads(line) for line in stdout.splitlines()] == [failed]

    for number, config, rc in (
        (1, "strict = true\n", 1),
        (2, "strict = true\n[modules.dkms_failing_test]\nstrict = false\n", 0),
        (3, "[modules.dkms_failing_test]\nstrict = true\n", 1),
        (4, "[modules.dkms_test]\nstrict = true\n", 0),
    ):
        engine.write_config(config)
        result = engine.trigger(f"{kver}:image-added", transaction=f"apt-50{number}")
        assert result.rc == rc, f"config {config!r}:\n{result.output}"
        assert outcomes(engine, transaction=f"apt-50{number}", outcome="failed") == [
            ("dkms_failing_test", "install", "failed")
        ]
    assert installed_kos(engine, kver) == [*MULTI_KOS, "dkms_test.ko"]


# -- lock ----------------------------------------------------------------------------------------

# Three triggers for one kernel in one mount namespace (the lock is a flock on a file of the
# sandbox's /var/lib, so all three must see the same overlay mount). The first one's build holds
# at dkms_gate_test's PRE_BUILD until the others are known to be waiting; every wait is a bounded
# poll, nothing depends on how long anything takes.
CONCURRENT_TRIGGERS = r"""
out=$1 kver=$2 hooks=$3
gate=/var/lib/dkms-test-gate
wait_for() {
    what=$1; shift; i=0
    until "$@"; do
        i=$((i + 1))
        if [ "$i" -ge 3000 ]; then
            echo "never happened: $what" > "$out/error"; touch "$gate/open"; return 1
        fi
        sleep 0.1
    done
}
"$hooks" trigger --source apt --transaction apt-600 --kernel "$kver:image-added" \
    > "$out/first.out" 2> "$out/first.err" &
first=$!
echo "$first" > "$out/first.pid"
wait_for "the first trigger starts building" test -e "$gate/started"
"$hooks" trigger --source apt --transaction apt-600 --kernel "$kver:headers-added" \
    > "$out/same.out" 2> "$out/same.err" &
same=$!
"$hooks" trigger --source kernel-install --transaction ki-601 --kernel "$kver:image-added" \
    > "$out/other.out" 2> "$out/other.err" &
other=$!
wait_for "the second trigger waits for the lock" grep -q "waiting for the lock" "$out/same.err"
wait_for "the third trigger waits for the lock" grep -q "waiting for the lock" "$out/other.err"
touch "$gate/open"
wait "$first"; echo $? > "$out/first.rc"
wait "$same"; echo $? > "$out/same.rc"
wait "$other"; echo $? > "$out/other.rc"
"""


def test_concurrent_triggers_wait_for_the_lock(
    engine: EngineSandbox, kernels: list[str], tmp_path: Path
) -> None:
    """While one trigger builds, two more for the same kernel start: both say they wait and name
    the holder; then the one of the same transaction is a no-op and the other finds everything
    installed. One build in all."""
    kver = kernels[0]
    engine.register(FIXTURES / "dkms_gate_test-1.0")
    engine.make_image_ready(kver)
    out = tmp_path / "triggers"
    out.mkdir()
    result = engine.run(
        ["sh", "-c", CONCURRENT_TRIGGERS, "sh", str(out), kver, str(engine.dkmshooks_path)]
    )
    assert result.rc == 0, result.output
    assert not (out / "error").exists(), (out / "error").read_text()
    files = {p.name: p.read_text() for p in out.iterdir()}
    assert (files["first.rc"], files["same.rc"], files["other.rc"]) == ("0\n", "0\n", "0\n"), files
    holder = (
        f"waiting for the lock /var/lib/dkmshooks/lock held by pid {files['first.pid'].strip()} "
    )
    for name in ("same.err", "other.err"):
        assert holder in files[name], files[name]
        assert files[name].count("waiting for the lock") == 1, files[name]
    assert f"{kver}: already handled in this transaction" in files["same.err"]
    assert "waiting for the lock" not in files["first.err"]
    assert engine.read_text("/var/lib/dkms-test-gate/builds") == "build\n", "built more than once"
    assert (
        status_lines(engine, "dkms_gate_test") == f"dkms_gate_test/1.0, {kver}, {ARCH}: installed\n"
    )
    assert outcomes(engine) == [("dkms_gate_test", "install", "installed")]


# -- parallel builds ------------------------------------------------------------------------------


def test_parallel_builds_for_two_kernels(engine: EngineSandbox, kernels: list[str]) -> None:
    """Several modules, two kernels, one trigger, the make budget shared: every installed module
    is built for its own kernel (vermagic) from its own patched sources, and a dependency is
    installed before its dependant."""
    k1, k2 = kernels[0], kernels[1]
    engine.register(
        FIXTURES / "dkms_dep_b_test-1.0",
        FIXTURES / "dkms_dep_c_test-1.0",
        DATA / "dkms_multi_test-1.0",
        DATA / "dkms_scripts_test-1.0",
    )
    engine.make_image_ready(k1)
    engine.make_image_ready(k2)
    engine.write_config("jobs = 2\n")
    result = engine.trigger(
        f"{k1}:image-added", f"{k2}:image-added", transaction="apt-700", source="apt"
    )
    assert result.rc == 0, result.output
    expected = sorted(
        ["dkms_dep_b_test.ko", "dkms_dep_c_test.ko", *MULTI_KOS, "dkms_scripts_test.ko"]
    )
    for kver in (k1, k2):
        assert installed_kos(engine, kver) == expected
        assert_vermagic(engine, kver, expected)
        installed = [r["module"] for r in records(engine, kernel=kver, outcome="installed")]
        assert sorted(installed) == [
            "dkms_dep_b_test",
            "dkms_dep_c_test",
            "dkms_multi_test",
            "dkms_scripts_test",
        ]
        assert installed.index("dkms_dep_c_test") < installed.index("dkms_dep_b_test")
        # PATCH[0] of dkms_scripts_test changes the string the module prints.
        ko = f"{dest_dir(kver)}/dkms_scripts_test.ko"
        assert "patched by PATCH[0]" in engine.check(["strings", ko])


# -- plan ----------------------------------------------------------------------------------------


def test_plan_json(engine: EngineSandbox, kernels: list[str], tmp_path: Path) -> None:
    """`dkmshooks plan --json` says what a trigger would do, per kernel, and does none of it."""
    k1, k2 = kernels[0], kernels[1]
    engine.register(
        FIXTURES / "dkms_dep_a_test-1.0",
        FIXTURES / "dkms_dep_b_test-1.0",
        FIXTURES / "dkms_excluded_test-1.0",
        DATA / "dkms_noautoinstall_test-1.0",
        DATA / "dkms_test-1.0",
    )
    for name in ("dkms_badconf_test", "dkms_broken_test"):
        engine.register(
            write_source_tree(
                tmp_path / "sources" / f"{name}-1.0",
                f'PACKAGE_NAME="{name}"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="{name}"\n'
                'DEST_MODULE_LOCATION[0]="/kernel/extra"\nAUTOINSTALL="yes"\n',
                [name],
            )
        )
    engine.write_text(
        "/usr/src/dkms_badconf_test-1.0/dkms.conf",
        'PACKAGE_NAME="dkms_badconf_test"\nPACKAGE_VERSION="1.0"\n'
        'BUILT_MODULE_NAME[0]="dkms_badconf_test"\nDEST_MODULE_LOCATION[0]="/kernel/extra"\n'
        'AUTOINSTALL="maybe"\n',
    )
    engine.remove("/usr/src/dkms_broken_test-1.0")
    engine.make_image_ready(k1)
    result = engine.dkms("install", "-k", k1, "dkms_test/1.0")
    assert result.rc == 0, result.output

    watched = ("/var/lib/dkms", "/var/lib/dkmshooks", "/var/log/dkmshooks", "/lib/modules")
    before = {path: engine.tree(path) for path in watched}
    every = plan(engine)
    assert sorted(every) == sorted(kernels)
    assert plan(engine, k1, k2) == every
    assert {path: engine.tree(path) for path in watched} == before, "plan changed something"

    def by_module(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {a["module"]: a for a in entry["actions"]}

    first = every[k1]
    assert (first["kernel"], first["arch"], first["headers"], first["image"]) == (
        k1,
        ARCH,
        True,
        True,
    )
    got = by_module(first)
    assert got["dkms_test"] == {"module": "dkms_test", "action": "already-installed"}
    assert got["dkms_dep_a_test"] == {
        "module": "dkms_dep_a_test",
        "version": "1.0",
        "action": "build+install",
        "depends": ["dkms_dep_b_test"],
    }
    assert got["dkms_dep_b_test"] == {
        "module": "dkms_dep_b_test",
        "version": "1.0",
        "action": "build+install",
        "depends": ["dkms_dep_c_test"],
    }
    assert got["dkms_excluded_test"]["action"] == "skip-excluded"
    assert got["dkms_broken_test"] == {
        "module": "dkms_broken_test",
        "version": "1.0",
        "action": "broken",
    }
    assert got["dkms_badconf_test"]["action"] == "bad-conf"
    assert "dkms_badconf_test/1.0/source/dkms.conf" in got["dkms_badconf_test"]["message"]
    assert "dkms_noautoinstall_test" not in got, "not AUTOINSTALL: not the engine's to build"

    second = every[k2]
    assert (second["headers"], second["image"]) == (True, False)
    assert actions(second)["dkms_test"] == "build, defer-install"
    assert actions(second)["dkms_excluded_test"] == "skip-excluded"


# -- initramfs -----------------------------------------------------------------------------------


def test_initramfs_regeneration_decision(
    engine: EngineSandbox, kernels: list[str], tmp_path: Path
) -> None:
    """A module installed into K after K's initramfs was generated: regenerate it once when the
    module is (or must be) in it; never when it is not there, when the config says never, when
    the caller regenerates anyway (--initramfs-follows), or when K has no initramfs yet. The
    modules are built once; each case reinstalls them."""
    kver = kernels[0]
    engine.register(DATA / "dkms_multi_test-1.0", DATA / "dkms_test-1.0")
    engine.make_image_ready(kver)
    calls = tmp_path / "update-initramfs.calls"
    engine.install_update_initramfs(calls)
    listed = "/etc/initramfs-tools/modules"

    def run_case(number: int, *, initramfs_follows: bool = False) -> list[str]:
        if calls.exists():
            calls.unlink()
        result = engine.trigger(
            f"{kver}:image-added",
            transaction=f"apt-80{number}",
            initramfs_follows=initramfs_follows,
        )
        assert result.rc == 0, result.output
        assert installed_kos(engine, kver) == [*MULTI_KOS, "dkms_test.ko"]
        for module in ("dkms_multi_test", "dkms_test"):
            result = engine.dkms("uninstall", "-k", kver, f"{module}/1.0")
            assert result.rc == 0, result.output
        return calls.read_text().splitlines() if calls.exists() else []

    # No initramfs yet: the generator's own kernel hook will include the modules.
    engine.write_text(listed, "# modules for the initramfs\ndkms_test\n")
    assert run_case(0) == []

    engine.make_initrd(kver)
    # Both of the installed modules are listed: still one regeneration.
    engine.write_text(listed, "# modules for the initramfs\ndkms_test\ndkms_multi_a\n")
    assert run_case(1) == [f"-u -k {kver}"]
    (regenerated,) = records(engine, transaction="apt-801", action="initramfs")
    assert regenerated["outcome"] == "initramfs-regenerated"

    engine.make_initrd(kver)
    engine.write_text(listed, "# modules for the initramfs\nloop\n")
    assert run_case(2) == [], "regenerated for modules the initramfs does not hold"

    engine.make_initrd(kver)
    engine.write_text(listed, "dkms_test\n")
    engine.write_config('initramfs = "never"\n')
    assert run_case(3) == [], 'initramfs = "never" ignored'

    engine.make_initrd(kver)
    engine.write_config('initramfs = "auto"\n')
    assert run_case(4, initramfs_follows=True) == [], "--initramfs-follows ignored"

    engine.make_initrd(kver)
    engine.write_text(listed, "loop\n")
    engine.write_config('initramfs = "always"\n')
    assert run_case(5) == [f"-u -k {kver}"], 'initramfs = "always" ignored'

    engine.make_initrd(kver)
    engine.write_text(listed, "dkms_test\n")
    engine.write_config('initramfs = "auto"\n[modules.dkms_test]\ninitramfs = "never"\n')
    assert run_case(6) == [], "[modules.dkms_test] initramfs = never ignored"
