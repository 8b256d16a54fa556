"""`dkms autoinstall`, `kernel_preinst`/`kernel_postinst`/`kernel_prerm`, `match`, BUILD_DEPENDS
and BUILD_EXCLUSIVE against real Debian kernel headers, compared with dkms 3.4.

Expected texts follow dkms 3.4's `autoinstall()`, `kernel_preinst()`, `kernel_prerm()` and
`run_match()` (dkms.in) and the `autoinstall`, `dependencies` and `multiple` sections of
upstream's run_test.sh, adapted to the sample modules of tests/data and tests/integration/fixtures.
Where the issue asks for more than dkms (a broken or conf-less module does not abort the others;
depmod really runs once after kernel_prerm/kernel_preinst), the test says so.

The engine runs independent modules of a round in parallel; whatever `parallel_jobs` says, the
output must be dkms's, each module's lines whole and in dkms's order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import DATA, FIXTURES
from .engine_sandbox import EngineSandbox, make_engine
from .expected import (
    ARCH,
    default_make,
    dest_dir,
    expect,
    normalize_output,
    signing_message,
    signing_prologue,
    status_lines,
)
from .sandbox import Sandbox
from .sources import write_source_tree

pytestmark = pytest.mark.integration

AUTOINSTALL_FAILED = (
    "\nError! One or more modules failed to install during autoinstall.\n"
    "Refer to previous errors for more information.\n"
)


@pytest.fixture
def engine(sandbox: Sandbox, tmp_path: Path) -> EngineSandbox:
    return make_engine(sandbox, tmp_path)


# -- module sources ------------------------------------------------------------------------------


def conf_text(name: str, extra: str = "", modules: tuple[str, ...] = ()) -> str:
    """A dkms.conf for package `name` building `modules` (default: one module named `name`)."""
    lines = [f'PACKAGE_NAME="{name}"', 'PACKAGE_VERSION="1.0"']
    for index, module in enumerate(modules or (name,)):
        lines += [
            f'BUILT_MODULE_NAME[{index}]="{module}"',
            f'DEST_MODULE_LOCATION[{index}]="/kernel/extra"',
        ]
    lines.append('AUTOINSTALL="yes"')
    return "\n".join(lines) + "\n" + extra


def generated(tmp_path: Path, name: str, extra: str = "", modules: tuple[str, ...] = ()) -> Path:
    return write_source_tree(
        tmp_path / "sources" / f"{name}-1.0",
        conf_text(name, extra, modules),
        modules or (name,),
    )


# -- dkms's output, piece by piece -----------------------------------------------------------------


def header(module: str, kver: str) -> str:
    return f"Autoinstall of module {module}/1.0 for kernel {kver} ({ARCH})\n"


def built_and_installed(module: str, kver: str, kos: tuple[tuple[str, str], ...] = ()) -> str:
    """Build and install output of one module: kos = ((built path in build/, installed name)...),
    default one module named like the package."""
    kos = kos or ((module, module),)
    signed = "".join(signing_message(module, "1.0", built) + "\n" for built, _ in kos)
    installed = "".join(f"Installing {dest_dir(kver)}/{dest}.ko\n" for _, dest in kos)
    return f"Building module(s)... done.\n{signed}{installed}Running depmod... done.\n"


MULTI_KOS = (("a/dkms_multi_a", "dkms_multi_a"), ("b/dkms_multi_b", "dkms_multi_b_renamed"))


def build_failed(module: str, kver: str) -> str:
    return (
        "Building module(s)...(bad exit status: 2)\n"
        "Failed command:\n"
        f"{default_make(module, '1.0', kver)}\n"
        "\n"
        f"Error! Bad return status for module build on kernel: {kver} ({ARCH})\n"
        f"Consult /var/lib/dkms/{module}/1.0/build/make.log for more information.\n"
    )


def excluded(module: str, kver: str) -> str:
    return (
        f"Warning: The /var/lib/dkms/{module}/1.0/{kver}/{ARCH}/dkms.conf\n"
        f"for module {module}/1.0 includes BUILD_EXCLUSIVE directives\n"
        "which do not match this kernel/arch/config for any modules.\n"
        "This indicates that it should not be built.\n"
    )


def removing(module: str, kver: str) -> str:
    return f"dkms: removing module {module}/1.0 for kernel {kver} ({ARCH})\n"


def unbuilt(module: str, kver: str, kos: tuple[str, ...] = ()) -> str:
    deleted = "".join(f"Deleting {dest_dir(kver)}/{ko}.ko\n" for ko in (kos or (module,)))
    return (
        f"Module {module}/1.0 for kernel {kver} ({ARCH}):\n"
        "Before uninstall, this module version was ACTIVE on this kernel.\n"
        f"{deleted}"
    )


def same_but_make_jobs(text: str) -> str:
    """dkms itself prints `make -j<parallel_jobs>` in "Failed command:"; everything else must be
    identical whatever the parallelism."""
    return re.sub(r"\bmake -j[0-9]+ ", "make -j<N> ", normalize_output(text))


def installed_kos(engine: EngineSandbox, kver: str) -> list[str]:
    if not engine.exists(dest_dir(kver)):
        return []
    return sorted(engine.check(["ls", dest_dir(kver)]).split())


# -- autoinstall ---------------------------------------------------------------------------------


def test_autoinstall_pass_skip_fail_serial_and_parallel(
    engine: EngineSandbox, kernels: list[str]
) -> None:
    """Pass, skip (77) and fail (10) in one run: dkms's exact output and exit 11. The signing
    prologue comes once, before the first module that is not built (the excluded one: dkms
    prepares the kernel before it learns it is excluded). With parallel_jobs=2 the engine builds
    the round's modules concurrently and the output is the same, line for line."""
    kver = kernels[0]
    engine.register(
        FIXTURES / "dkms_excluded_test-1.0",
        DATA / "dkms_failing_test-1.0",
        DATA / "dkms_multi_test-1.0",
        DATA / "dkms_noautoinstall_test-1.0",
        DATA / "dkms_test-1.0",
    )
    expected = (
        f"{signing_prologue(kver)}\n"
        f"{header('dkms_excluded_test', kver)}{excluded('dkms_excluded_test', kver)}\n"
        f"{header('dkms_failing_test', kver)}{build_failed('dkms_failing_test', kver)}\n"
        f"{header('dkms_multi_test', kver)}"
        f"{built_and_installed('dkms_multi_test', kver, MULTI_KOS)}\n"
        f"{header('dkms_test', kver)}{built_and_installed('dkms_test', kver)}\n"
        f"Autoinstall on {kver} succeeded for module(s) dkms_multi_test dkms_test.\n"
        f"Autoinstall on {kver} was skipped for module(s) dkms_excluded_test.\n"
        f"Autoinstall on {kver} failed for module(s) dkms_failing_test(10).\n"
        f"{AUTOINSTALL_FAILED}"
    )
    serial = engine.dkms("autoinstall", "-k", kver, env={"parallel_jobs": "1"})
    expect(serial, 11, expected)
    for module in ("dkms_multi_test", "dkms_test"):
        assert status_lines(engine, module) == f"{module}/1.0, {kver}, {ARCH}: installed\n"
    for module in ("dkms_excluded_test", "dkms_failing_test", "dkms_noautoinstall_test"):
        assert status_lines(engine, module) == f"{module}/1.0: added\n"
    assert installed_kos(engine, kver) == [
        "dkms_multi_a.ko",
        "dkms_multi_b_renamed.ko",
        "dkms_test.ko",
    ]
    # The run's outcomes in the unified rebuild log: one transaction, source cli.
    records = engine.rebuild_log()
    assert {r["source"] for r in records} == {"cli"}
    assert len({r["transaction"] for r in records}) == 1
    outcomes = {r["module"]: r["outcome"] for r in records}
    assert outcomes == {
        "dkms_excluded_test": "skipped-excluded",
        "dkms_failing_test": "failed",
        "dkms_multi_test": "installed",
        "dkms_test": "installed",
    }
    (failed,) = [r for r in records if r["outcome"] == "failed"]
    assert failed["exit_code"] == 10
    assert failed["make_log"] == "/var/lib/dkms/dkms_failing_test/1.0/build/make.log"
    assert any("this module fails to build on purpose" in line for line in failed["tail"])

    for module in ("dkms_multi_test", "dkms_test"):
        result = engine.dkms("unbuild", "-k", kver, f"{module}/1.0")
        assert result.rc == 0, result.output
    parallel = engine.dkms("autoinstall", "-k", kver, env={"parallel_jobs": "2"})
    assert parallel.rc == 11, parallel.output
    assert same_but_make_jobs(parallel.output) == same_but_make_jobs(serial.output)
    assert installed_kos(engine, kver) == [
        "dkms_multi_a.ko",
        "dkms_multi_b_renamed.ko",
        "dkms_test.ko",
    ]


def test_autoinstall_nothing_to_do_prints_nothing(
    engine: EngineSandbox, kernels: list[str]
) -> None:
    """Installed modules and modules without AUTOINSTALL: empty output, exit 0 (run_test.sh
    "Running dkms autoinstall again")."""
    kver = kernels[0]
    engine.register(DATA / "dkms_noautoinstall_test-1.0")
    expect(engine.dkms("autoinstall", "-k", kver), 0, "")
    engine.register(DATA / "dkms_test-1.0")
    expect(
        engine.dkms("autoinstall", "-k", kver),
        0,
        f"{signing_prologue(kver)}\n"
        f"{header('dkms_test', kver)}{built_and_installed('dkms_test', kver)}\n"
        f"Autoinstall on {kver} succeeded for module(s) dkms_test.\n",
    )
    tree = engine.tree("/var/lib/dkms")
    expect(engine.dkms("autoinstall", "-k", kver), 0, "")
    expect(engine.dkms("kernel_postinst", "-k", kver), 0, "")
    assert engine.tree("/var/lib/dkms") == tree


def test_autoinstall_reports_broken_and_bad_conf_and_installs_the_others(
    engine: EngineSandbox, kernels: list[str], tmp_path: Path
) -> None:
    """dkms 3.4 aborts the whole autoinstall on the first unreadable dkms.conf (exit 4 or 8;
    dkms-project/dkms#52, #352). Issue 3: report it, install the others, exit 11. A broken
    module/version (source gone) is reported and skipped, as dkms does."""
    kver = kernels[0]
    bad = generated(tmp_path, "dkms_badconf_test")
    gone = generated(tmp_path, "dkms_noconf_test")
    broken = generated(tmp_path, "dkms_broken_test")
    engine.register(bad, broken, DATA / "dkms_multi_test-1.0", gone, DATA / "dkms_test-1.0")
    # After `add`, as a package upgrade or an admin's edit would do it.
    engine.write_text(
        "/usr/src/dkms_badconf_test-1.0/dkms.conf",
        'PACKAGE_NAME="dkms_badconf_test\nPACKAGE_VERSION="1.0"\nAUTOINSTALL="yes"\n',
    )
    engine.remove("/usr/src/dkms_noconf_test-1.0/dkms.conf")
    engine.remove("/usr/src/dkms_broken_test-1.0")

    result = engine.dkms("autoinstall", "-k", kver)
    conf = "/var/lib/dkms/dkms_badconf_test/1.0/source/dkms.conf"
    # bash's own complaint about the unterminated quote; its wording is bash's business
    output = "".join(
        line
        for line in normalize_output(result.output).splitlines(keepends=True)
        if not line.startswith(f"{conf}: line ")
    )
    expected = (
        "\nError! dkms_broken_test/1.0 is broken! Missing the source directory or the symbolic "
        "link pointing to it.\n"
        "Manual intervention is required!\n"
        "dkms.conf: Error! No 'PACKAGE_NAME' directive specified.\n"
        "dkms.conf: Error! No 'PACKAGE_VERSION' directive specified.\n"
        "\nError! Bad conf file.\n"
        f"File: {conf} does not represent a valid dkms.conf file.\n"
        "\nError! Could not locate dkms.conf file.\n"
        "File: /var/lib/dkms/dkms_noconf_test/1.0/source/dkms.conf does not exist.\n"
        f"{signing_prologue(kver)}\n"
        f"{header('dkms_multi_test', kver)}"
        f"{built_and_installed('dkms_multi_test', kver, MULTI_KOS)}\n"
        f"{header('dkms_test', kver)}{built_and_installed('dkms_test', kver)}\n"
        f"Autoinstall on {kver} succeeded for module(s) dkms_multi_test dkms_test.\n"
        f"Autoinstall on {kver} failed for module(s) dkms_badconf_test(8) dkms_noconf_test(4).\n"
        f"{AUTOINSTALL_FAILED}"
    )
    assert (result.rc, output) == (11, expected), result.output
    for module in ("dkms_multi_test", "dkms_test"):
        assert status_lines(engine, module) == f"{module}/1.0, {kver}, {ARCH}: installed\n"


def test_no_autoinstall_flag(engine: EngineSandbox, kernels: list[str]) -> None:
    kver = kernels[0]
    engine.register(DATA / "dkms_test-1.0")
    engine.write_text("/etc/dkms/no-autoinstall", "")
    tree = engine.tree("/var/lib/dkms")
    for action in ("autoinstall", "kernel_postinst"):
        expect(
            engine.dkms(action, "-k", kver),
            0,
            "Automatic installation of modules has been disabled.\n",
        )
    assert engine.tree("/var/lib/dkms") == tree
    assert status_lines(engine, "dkms_test") == "dkms_test/1.0: added\n"


@pytest.mark.parametrize(
    ("args", "rc", "message"),
    [
        pytest.param(
            ("autoinstall", "--all"),
            5,
            "The action autoinstall does not support the --all parameter.",
            id="autoinstall--all",
        ),
        pytest.param(
            ("autoinstall", "-k", "{k1}", "-k", "{k2}"),
            4,
            "The action autoinstall does not support multiple kernel version parameters on the "
            "command line.",
            id="autoinstall-two-k",
        ),
        *(
            pytest.param(
                args,
                4,
                f"The action {args[0]} requires exactly one kernel version parameter on the "
                "command line.",
                id=f"{args[0]}-{'two-k' if len(args) > 1 else 'no-k'}",
            )
            for action in ("kernel_prerm", "kernel_preinst", "kernel_postinst")
            for args in ((action,), (action, "-k", "{k1}", "-k", "{k2}"))
        ),
    ],
)
def test_kernel_argument_rules(
    engine: EngineSandbox, kernels: list[str], args: tuple[str, ...], rc: int, message: str
) -> None:
    engine.register(DATA / "dkms_test-1.0")
    tree = engine.tree("/var/lib/dkms")
    argv = [a.format(k1=kernels[0], k2=kernels[1]) for a in args]
    expect(engine.dkms(*argv), rc, f"\nError! {message}\n")
    assert engine.tree("/var/lib/dkms") == tree


def test_autoinstall_without_headers(engine: EngineSandbox) -> None:
    """A module needs building and the kernel has no headers: dkms 3.4's message and 21."""
    kver = "6.1.0-0-amd64"
    engine.register(DATA / "dkms_test-1.0")
    expect(
        engine.dkms("autoinstall", "-k", kver),
        21,
        f"\nError! Your kernel headers for kernel {kver} cannot be found at "
        f"/lib/modules/{kver}/build or /lib/modules/{kver}/source.\n"
        f"Please install your distribution's kernel headers package matching {kver}, or use "
        "the --kernelsourcedir option to tell DKMS where it's located.\n",
    )
    assert status_lines(engine, "dkms_test") == "dkms_test/1.0: added\n"


# -- BUILD_DEPENDS -------------------------------------------------------------------------------


def test_dependency_rounds_and_unregistered_is_deferred(
    engine: EngineSandbox, kernels: list[str]
) -> None:
    """a → b → c, registered in glob order a, b, c: c is built first, then b, then a, one round
    each, with the rounds' other modules (an excluded one) in between as dkms orders them. A
    dependency no module provides is *deferred* (dkms 3.4.1+, PR #587): reported, exit 0."""
    kver = kernels[0]
    engine.register(
        FIXTURES / "dkms_deferred_test-1.0",
        FIXTURES / "dkms_dep_a_test-1.0",
        FIXTURES / "dkms_dep_b_test-1.0",
        FIXTURES / "dkms_dep_c_test-1.0",
        FIXTURES / "dkms_excluded_test-1.0",
    )
    deferred = (
        "dkms_deferred_test/1.0 autoinstall deferred: BUILD_DEPENDS not registered with DKMS: "
        "dkms_unregistered_test.\n"
        f"Autoinstall on {kver} deferred module(s) dkms_deferred_test/1.0 due to BUILD_DEPENDS "
        "not yet registered with DKMS.\n"
        "These may be provided externally or by a package not yet configured; autoinstall will "
        "retry on the next trigger.\n"
    )
    expect(
        engine.dkms("autoinstall", "-k", kver, env={"parallel_jobs": "2"}),
        0,
        f"{signing_prologue(kver)}\n"
        f"{header('dkms_dep_c_test', kver)}{built_and_installed('dkms_dep_c_test', kver)}\n"
        f"{header('dkms_excluded_test', kver)}{excluded('dkms_excluded_test', kver)}\n"
        f"{header('dkms_dep_b_test', kver)}{built_and_installed('dkms_dep_b_test', kver)}\n"
        f"{header('dkms_dep_a_test', kver)}{built_and_installed('dkms_dep_a_test', kver)}\n"
        f"Autoinstall on {kver} succeeded for module(s) dkms_dep_c_test dkms_dep_b_test "
        "dkms_dep_a_test.\n"
        f"Autoinstall on {kver} was skipped for module(s) dkms_excluded_test.\n"
        f"{deferred}",
    )
    for module in ("dkms_dep_a_test", "dkms_dep_b_test", "dkms_dep_c_test"):
        assert status_lines(engine, module) == f"{module}/1.0, {kver}, {ARCH}: installed\n"
    assert status_lines(engine, "dkms_deferred_test") == "dkms_deferred_test/1.0: added\n"
    # Already installed modules lead the summary, in glob order.
    expect(
        engine.dkms("autoinstall", "-k", kver),
        0,
        f"{signing_prologue(kver)}\n"
        f"{header('dkms_excluded_test', kver)}{excluded('dkms_excluded_test', kver)}\n"
        f"Autoinstall on {kver} succeeded for module(s) dkms_dep_a_test dkms_dep_b_test "
        "dkms_dep_c_test.\n"
        f"Autoinstall on {kver} was skipped for module(s) dkms_excluded_test.\n"
        f"{deferred}",
    )


def test_dependency_failures(engine: EngineSandbox, kernels: list[str], tmp_path: Path) -> None:
    """A cycle, a dependency that fails to build, and a registered dependency without AUTOINSTALL
    leave their dependants "failed due to missing dependencies": exit 11. A skipped (77)
    dependency lets its dependant's turn come, as in dkms; its build then enforces BUILD_DEPENDS
    (an excluded module is not installed) and stops with 13."""
    kver = kernels[0]
    engine.register(
        FIXTURES / "dkms_cycle_x_test-1.0",
        FIXTURES / "dkms_cycle_y_test-1.0",
        FIXTURES / "dkms_excluded_test-1.0",
        DATA / "dkms_failing_test-1.0",
        generated(tmp_path, "dkms_needs_excluded_test", 'BUILD_DEPENDS="dkms_excluded_test"\n'),
        FIXTURES / "dkms_needs_failing_test-1.0",
        generated(tmp_path, "dkms_needs_noauto_test", 'BUILD_DEPENDS="dkms_noautoinstall_test"\n'),
        DATA / "dkms_noautoinstall_test-1.0",
    )
    expect(
        engine.dkms("autoinstall", "-k", kver),
        11,
        f"{signing_prologue(kver)}\n"
        f"{header('dkms_excluded_test', kver)}{excluded('dkms_excluded_test', kver)}\n"
        f"{header('dkms_failing_test', kver)}{build_failed('dkms_failing_test', kver)}\n"
        f"{header('dkms_needs_excluded_test', kver)}"
        "\nError! Aborting build of module dkms_needs_excluded_test/1.0 for kernel "
        f"{kver} ({ARCH}) due to missing BUILD_DEPENDS: dkms_excluded_test.\n"
        "You may override by specifying --force.\n"
        "\n"
        f"Autoinstall on {kver} was skipped for module(s) dkms_excluded_test.\n"
        f"Autoinstall on {kver} failed for module(s) dkms_failing_test(10) "
        "dkms_needs_excluded_test(13).\n"
        "dkms_cycle_x_test/1.0 autoinstall failed due to missing dependencies: "
        "dkms_cycle_y_test.\n"
        "dkms_cycle_y_test/1.0 autoinstall failed due to missing dependencies: "
        "dkms_cycle_x_test.\n"
        "dkms_needs_failing_test/1.0 autoinstall failed due to missing dependencies: "
        "dkms_failing_test.\n"
        "dkms_needs_noauto_test/1.0 autoinstall failed due to missing dependencies: "
        "dkms_noautoinstall_test.\n"
        f"{AUTOINSTALL_FAILED}",
    )
    for module in ("dkms_cycle_x_test", "dkms_cycle_y_test", "dkms_needs_failing_test"):
        assert status_lines(engine, module) == f"{module}/1.0: added\n"
    assert installed_kos(engine, kver) == []


# -- BUILD_EXCLUSIVE -----------------------------------------------------------------------------

# package → (dkms.conf extra, modules, excluded on the older kernel, excluded on the newer one).
# The two kernels are Debian's 6.1.0-N-amd64 (N ascending); dkms compares with VER(), which pads
# each number to three digits, so "6.1" < "6.1.0-N-amd64" (MAX "6.1" excludes every 6.1.0-N).
EXCLUSIVE_CASES: dict[str, tuple[str, tuple[str, ...], bool, bool]] = {
    "dkms_bx_kernel_test": ('BUILD_EXCLUSIVE_KERNEL="^{k1}"\n', (), False, True),
    "dkms_bx_min_test": ('BUILD_EXCLUSIVE_KERNEL_MIN="{k2}"\n', (), True, False),
    "dkms_bx_max_test": ('BUILD_EXCLUSIVE_KERNEL_MAX="{k1}"\n', (), False, True),
    "dkms_bx_max_short_test": ('BUILD_EXCLUSIVE_KERNEL_MAX="6.1"\n', (), True, True),
    "dkms_bx_arch_test": ('BUILD_EXCLUSIVE_ARCH="^{arch}"\n', (), False, False),
    "dkms_bx_other_arch_test": ('BUILD_EXCLUSIVE_ARCH="^s390x"\n', (), True, True),
    "dkms_bx_config_test": (
        'BUILD_EXCLUSIVE_CONFIG="CONFIG_MODULES !CONFIG_DKMS_TEST_NO_SUCH_OPTION"\n',
        (),
        False,
        False,
    ),
    "dkms_bx_not_config_test": ('BUILD_EXCLUSIVE_CONFIG="!CONFIG_MODULES"\n', (), True, True),
    "dkms_bx_no_config_test": (
        'BUILD_EXCLUSIVE_CONFIG="CONFIG_DKMS_TEST_NO_SUCH_OPTION"\n',
        (),
        True,
        True,
    ),
    # Per module: [1] excludes only the second module; the package still builds.
    "dkms_bx_second_test": (
        'BUILD_EXCLUSIVE_KERNEL[1]="^nomatch-"\n',
        ("dkms_bx_second_a", "dkms_bx_second_b"),
        False,
        False,
    ),
    # dkms's quirk: `$BUILD_EXCLUSIVE_KERNEL` is `${BUILD_EXCLUSIVE_KERNEL[0]}`, so index 0 is
    # also the global value and excludes the second module, which has no constraint of its own.
    "dkms_bx_first_test": (
        'BUILD_EXCLUSIVE_KERNEL[0]="^nomatch-"\n',
        ("dkms_bx_first_a", "dkms_bx_first_b"),
        True,
        True,
    ),
    # A global MIN that both kernels pass, and a per-module MAX only the older one passes.
    "dkms_bx_mixed_test": (
        'BUILD_EXCLUSIVE_KERNEL_MIN="6.1.0"\nBUILD_EXCLUSIVE_KERNEL_MAX[1]="{k1}"\n',
        ("dkms_bx_mixed_a", "dkms_bx_mixed_b"),
        False,
        False,
    ),
}


def test_build_exclusive_matrix(engine: EngineSandbox, kernels: list[str], tmp_path: Path) -> None:
    """Kernel regex, MIN, MAX (with VER()'s padding), ARCH, CONFIG (`X`, `!X`), global and per
    module [i] including the index-0-is-global quirk, on both kernels. On the older kernel each
    excluded package is refused by `dkms build` with 77 and the plan says skip-excluded; on the
    newer one a real autoinstall builds exactly the included packages and, inside a package,
    installs only the modules their own [i] constraints admit."""
    k1, k2 = kernels[0], kernels[1]
    sources = []
    for name, (extra, modules, _, _) in EXCLUSIVE_CASES.items():
        sources.append(generated(tmp_path, name, extra.format(k1=k1, k2=k2, arch=ARCH), modules))
    engine.register(*sources)

    for kver, column in ((k1, 2), (k2, 3)):
        rc, stdout, _ = engine.run_split([str(engine.dkmshooks_path), "plan", "-k", kver, "--json"])
        assert rc == 0, stdout
        (plan,) = json.loads(stdout)["kernels"]
        actions = {a["module"]: a["action"] for a in plan["actions"]}
        wrong = {
            name: actions.get(name)
            for name, case in EXCLUSIVE_CASES.items()
            if (actions.get(name) == "skip-excluded") != case[column]
        }
        assert not wrong, f"plan for {kver} misjudges BUILD_EXCLUSIVE: {wrong}"

    for name, (_, _, out_k1, _) in EXCLUSIVE_CASES.items():
        if out_k1:
            # the exclusion is checked before the kernel is prepared: no signing prologue
            expect(engine.dkms("build", "-k", k1, f"{name}/1.0"), 77, excluded(name, k1))

    result = engine.dkms("autoinstall", "-k", k2, env={"parallel_jobs": "2"})
    included = [n for n, case in EXCLUSIVE_CASES.items() if not case[3]]
    skipped = [n for n, case in EXCLUSIVE_CASES.items() if case[3]]
    summary = normalize_output(result.output).splitlines()[-2:]
    assert (result.rc, summary) == (
        0,
        [
            f"Autoinstall on {k2} succeeded for module(s) {' '.join(sorted(included))}.",
            f"Autoinstall on {k2} was skipped for module(s) {' '.join(sorted(skipped))}.",
        ],
    ), result.output
    for name in skipped:
        assert excluded(name, k2) in normalize_output(result.output)
        assert status_lines(engine, name) == f"{name}/1.0: added\n"
    assert installed_kos(engine, k2) == sorted(
        [
            "dkms_bx_arch_test.ko",
            "dkms_bx_config_test.ko",
            "dkms_bx_min_test.ko",
            "dkms_bx_mixed_a.ko",
            "dkms_bx_second_a.ko",
        ]
    )
    # The excluded module of an included package is neither kept in the tree nor installed.
    assert not engine.exists(
        f"/var/lib/dkms/dkms_bx_second_test/1.0/{k2}/{ARCH}/module/dkms_bx_second_b.ko"
    )
    assert engine.exists(
        f"/var/lib/dkms/dkms_bx_second_test/1.0/{k2}/{ARCH}/module/dkms_bx_second_a.ko"
    )


# -- kernel_preinst / kernel_postinst / kernel_prerm -----------------------------------------------


def modules_dep(engine: EngineSandbox, kver: str) -> str:
    path = f"/lib/modules/{kver}/modules.dep"
    return engine.read_text(path) if engine.exists(path) else ""


def test_kernel_preinst_postinst_prerm(engine: EngineSandbox, kernels: list[str]) -> None:
    """kernel_preinst unbuilds the AUTOINSTALL modules, kernel_postinst autoinstalls them again,
    kernel_prerm unbuilds everything; the `dkms: removing module` lines go to stderr; depmod
    runs once at the end, and really (dkms 3.4 skips it by a bug: `do_depmod $1` with no $1)."""
    kver = kernels[0]
    engine.make_image_ready(kver)  # a modules.dep, so that depmod is due
    engine.register(
        DATA / "dkms_multi_test-1.0",
        DATA / "dkms_noautoinstall_test-1.0",
        DATA / "dkms_test-1.0",
    )
    result = engine.dkms("install", "-k", kver, "dkms_noautoinstall_test/1.0")
    assert result.rc == 0, result.output
    result = engine.dkms("autoinstall", "-k", kver)
    assert result.rc == 0, result.output
    before = modules_dep(engine, kver)
    for ko in ("dkms_test.ko", "dkms_multi_a.ko", "dkms_noautoinstall_test.ko"):
        assert f"updates/dkms/{ko}:" in before

    rc, stdout, stderr = engine.run_split([str(engine.dkms_path), "kernel_preinst", "-k", kver])
    assert rc == 0, stdout + stderr
    assert stderr == removing("dkms_multi_test", kver) + removing("dkms_test", kver)
    assert stdout == (
        unbuilt("dkms_multi_test", kver, ("dkms_multi_a", "dkms_multi_b_renamed"))
        + unbuilt("dkms_test", kver)
        + "Running depmod... done.\n"
    )
    after = modules_dep(engine, kver)
    assert "dkms_test.ko" not in after and "dkms_multi_a.ko" not in after, after
    assert "updates/dkms/dkms_noautoinstall_test.ko:" in after, "depmod did not run"
    assert status_lines(engine, "dkms_test") == "dkms_test/1.0: added\n"
    assert (
        status_lines(engine, "dkms_noautoinstall_test")
        == f"dkms_noautoinstall_test/1.0, {kver}, {ARCH}: installed\n"
    )

    # The installed module without AUTOINSTALL counts as succeeded, as in dkms.
    expect(
        engine.dkms("kernel_postinst", "-k", kver),
        0,
        f"{signing_prologue(kver)}\n"
        f"{header('dkms_multi_test', kver)}"
        f"{built_and_installed('dkms_multi_test', kver, MULTI_KOS)}\n"
        f"{header('dkms_test', kver)}{built_and_installed('dkms_test', kver)}\n"
        f"Autoinstall on {kver} succeeded for module(s) dkms_noautoinstall_test "
        "dkms_multi_test dkms_test.\n",
    )

    rc, stdout, stderr = engine.run_split([str(engine.dkms_path), "kernel_prerm", "-k", kver])
    assert rc == 0, stdout + stderr
    assert stderr == "".join(
        removing(m, kver) for m in ("dkms_multi_test", "dkms_noautoinstall_test", "dkms_test")
    )
    assert stdout == (
        unbuilt("dkms_multi_test", kver, ("dkms_multi_a", "dkms_multi_b_renamed"))
        + "\n"
        + unbuilt("dkms_noautoinstall_test", kver)
        + "\n"
        + unbuilt("dkms_test", kver)
        + "\n"
        + "Running depmod... done.\n"
    )
    for module in ("dkms_multi_test", "dkms_noautoinstall_test", "dkms_test"):
        assert status_lines(engine, module) == f"{module}/1.0: added\n"
    assert not engine.exists(f"/lib/modules/{kver}/updates"), engine.tree(
        f"/lib/modules/{kver}/updates"
    )
    assert "updates/" not in modules_dep(engine, kver)
    expect(engine.dkms("kernel_prerm", "-k", kver), 0, "")
    expect(engine.dkms("kernel_preinst", "-k", kver), 0, "")


def test_kernel_prerm_merged_output(engine: EngineSandbox, kernels: list[str]) -> None:
    """run_test.sh's view of kernel_prerm: stdout and stderr in one stream, a module's lines
    after its `dkms: removing` line, an empty line after each module, one depmod at the end."""
    kver = kernels[1]
    engine.register(DATA / "dkms_multi_test-1.0", DATA / "dkms_test-1.0")
    result = engine.dkms("autoinstall", "-k", kver)
    assert result.rc == 0, result.output
    expect(
        engine.dkms("kernel_prerm", "-k", kver),
        0,
        removing("dkms_multi_test", kver)
        + unbuilt("dkms_multi_test", kver, ("dkms_multi_a", "dkms_multi_b_renamed"))
        + "\n"
        + removing("dkms_test", kver)
        + unbuilt("dkms_test", kver)
        + "\n"
        + "Running depmod... done.\n",
    )
    assert installed_kos(engine, kver) == []


# -- match ---------------------------------------------------------------------------------------


def test_match_templatekernel(engine: EngineSandbox, kernels: list[str]) -> None:
    """`match --templatekernel T -k K [m]` installs on K what is installed on T."""
    k1, k2 = kernels[0], kernels[1]
    engine.register(DATA / "dkms_multi_test-1.0", DATA / "dkms_test-1.0")
    result = engine.dkms("autoinstall", "-k", k1)
    assert result.rc == 0, result.output

    expect(
        engine.dkms("match", "--templatekernel", k1, "-k", k2, "dkms_test"),
        0,
        f"\nMatching modules in kernel: {k2} ({ARCH})\n"
        f"to the configuration of kernel: {k1} ({ARCH})\n"
        "Module:  dkms_test\n"
        "Version: 1.0\n"
        f"{signing_prologue(k2)}\n"
        f"Building module(s)... done.\n{signing_message('dkms_test', '1.0')}\n"
        f"Installing {dest_dir(k2)}/dkms_test.ko\n"
        "Running depmod... done.\n",
    )
    assert installed_kos(engine, k2) == ["dkms_test.ko"]
    override = " You may override by specifying --force.\n"
    expect(
        engine.dkms(f"--templatekernel={k1}", "match", "-k", k2),
        0,
        f"\nMatching modules in kernel: {k2} ({ARCH})\n"
        f"to the configuration of kernel: {k1} ({ARCH})\n"
        "Module:  dkms_multi_test\n"
        "Version: 1.0\n"
        f"{signing_prologue(k2)}\n"
        "Building module(s)... done.\n"
        f"{signing_message('dkms_multi_test', '1.0', 'a/dkms_multi_a')}\n"
        f"{signing_message('dkms_multi_test', '1.0', 'b/dkms_multi_b')}\n"
        f"Installing {dest_dir(k2)}/dkms_multi_a.ko\n"
        f"Installing {dest_dir(k2)}/dkms_multi_b_renamed.ko\n"
        "Running depmod... done.\n"
        "Module:  dkms_test\n"
        "Version: 1.0\n"
        f"Module dkms_test/1.0 already built for kernel {k2} ({ARCH}), skip.{override}"
        f"Module dkms_test/1.0 already installed on kernel {k2} ({ARCH}), skip.{override}",
    )
    for ko in ("dkms_multi_a", "dkms_multi_b_renamed", "dkms_test"):
        vermagic = engine.check(["modinfo", "-F", "vermagic", f"{dest_dir(k2)}/{ko}.ko"])
        assert vermagic.startswith(f"{k2} "), (ko, vermagic)

    tree = engine.tree("/var/lib/dkms")
    expect(
        engine.dkms("match", "--templatekernel", k1, "-k", k1),
        2,
        "\nError! The templatekernel and the specified kernel version are the same.\n",
    )
    expect(
        engine.dkms("match", "-k", k2),
        1,
        "\nError! Invalid number of parameters passed.\n"
        "Usage: match --templatekernel=<kernel-version> -k <kernel-version>\n"
        "   or: match --templatekernel=<kernel-version> -k <kernel-version> <module>\n",
    )
    expect(
        engine.dkms("match", "--templatekernel", k1, "-k", k2, "dkms_nosuch_test"),
        3,
        "\nError! The module: dkms_nosuch_test is not located in the DKMS tree.\n",
    )
    expect(
        engine.dkms("match", "--templatekernel", "6.1.0-0-amd64", "-k", k2),
        0,
        f"\nMatching modules in kernel: {k2} ({ARCH})\n"
        f"to the configuration of kernel: 6.1.0-0-amd64 ({ARCH})\n"
        "\nThere is nothing to be done for this match.\n",
    )
    assert engine.tree("/var/lib/dkms") == tree
