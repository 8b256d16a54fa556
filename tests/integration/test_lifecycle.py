"""The dkms lifecycle (add, build, install, uninstall, unbuild, remove) against real Debian kernel
headers, compared with dkms 3.4's output and exit codes.

Expected texts are those of upstream's run_test.sh (github.com/dkms-project/dkms): its `basic`
section, and what its `multiple` and `autoinstall` sections expect of patches, scripts and build
failures, adapted to the sample modules in tests/data. Each command's stdout and stderr are
compared merged, exactly, after upstream's normalisation (expected.py).
"""

from __future__ import annotations

import re

import pytest

from .conftest import DATA
from .expected import (
    ARCH,
    MOK_CERT,
    created,
    default_make,
    dest_dir,
    expect,
    expect_make_log,
    signing_message,
    signing_prologue,
    status_lines,
)
from .sandbox import TRY_SIGN_MODULES_CONF, Sandbox

pytestmark = pytest.mark.integration

DASHES = "-" * 64
OVERRIDE = " You may override by specifying --force.\n"
NOT_ADDED = "\nError! The module/version combo: {mv} is not located in the DKMS tree.\n"
ALREADY_ADDED = (
    "\nError! DKMS tree already contains: dkms_test/1.0\n"
    "You cannot add the same module/version combo more than once.\n"
)
CREATED = created("dkms_test")
REMOVED = "Deleting module dkms_test/1.0 completely from the DKMS tree.\n"


def already_built(kver: str, module: str = "dkms_test") -> str:
    return f"Module {module}/1.0 already built for kernel {kver} ({ARCH}), skip.{OVERRIDE}"


def already_installed(kver: str) -> str:
    return f"Module dkms_test/1.0 already installed on kernel {kver} ({ARCH}), skip.{OVERRIDE}"


def not_installed(kver: str, module: str = "dkms_test") -> str:
    return f"Module {module}/1.0 is not installed for kernel {kver} ({ARCH}). Skipping...\n"


def not_built(kver: str, module: str = "dkms_test") -> str:
    return f"Module {module}/1.0 is not built for kernel {kver} ({ARCH}). Skipping...\n"


def uninstalled(kver: str, *kos: str, module: str = "dkms_test") -> str:
    deleted = "".join(f"Deleting {dest_dir(kver)}/{ko}.ko\n" for ko in (kos or (module,)))
    return (
        f"Module {module}/1.0 for kernel {kver} ({ARCH}):\n"
        "Before uninstall, this module version was ACTIVE on this kernel.\n"
        f"{deleted}"
        "Running depmod... done.\n"
    )


def build_output(kver: str, module: str = "dkms_test") -> str:
    return (
        f"{signing_prologue(kver)}\nBuilding module(s)... done.\n{signing_message(module, '1.0')}\n"
    )


def headers_missing(kver: str) -> str:
    """dkms 3.4.2+ wording (reference/dkms-interface.md); run_test.sh's copy in the mirror predates
    it and still says "Please install the linux-headers-<K> package or use ..."."""
    return (
        f"\nError! Your kernel headers for kernel {kver} cannot be found at "
        f"/lib/modules/{kver}/build or /lib/modules/{kver}/source.\n"
        f"Please install your distribution's kernel headers package matching {kver}, "
        "or use the --kernelsourcedir option to tell DKMS where it's located.\n"
    )


def install_output(kver: str, module: str = "dkms_test") -> str:
    return f"Installing {dest_dir(kver)}/{module}.ko\nRunning depmod... done.\n"


def modinfo_field(sandbox: Sandbox, field: str, path: str) -> str:
    return sandbox.check(["modinfo", "-F", field, path]).strip()


def cert_serial(sandbox: Sandbox) -> str:
    """run_test.sh's cert_serial: the MOK certificate's serial, upper case, no prefix."""
    out = sandbox.check(["openssl", "x509", "-serial", "-inform", "DER", "-in", MOK_CERT, "-noout"])
    return out.strip().upper().removeprefix("SERIAL=")


def kernel_config_value(kver: str, name: str) -> str:
    for config in (
        f"/lib/modules/{kver}/build/include/config/auto.conf",
        f"/lib/modules/{kver}/build/.config",
    ):
        try:
            with open(config) as fh:
                for line in fh:
                    if line.startswith(f"{name}="):
                        return line.split("=", 1)[1].strip().strip('"')
        except FileNotFoundError:
            continue
    raise AssertionError(f"{name} not found in the config of {kver}")


def test_add_forms_and_duplicates(sandbox: Sandbox) -> None:
    """add by m/v, -m m -v v, -m m/v, directory and dkms.conf path; duplicate adds; remove --all
    of a module that is only added. No kernel is involved."""
    tree_before = sandbox.tree("/var/lib/dkms")
    expect(
        sandbox.dkms("add", "-m", "dkms_test", "-v", "1.0"),
        2,
        "\nError! Could not find module source directory.\n"
        "Directory: /usr/src/dkms_test-1.0 does not exist.\n",
    )
    assert sandbox.tree("/var/lib/dkms") == tree_before
    assert not sandbox.exists("/usr/src/dkms_test-1.0")

    # By directory: the tree is copied to /usr/src/<m>-<v> first.
    expect(sandbox.dkms("add", str(DATA / "dkms_test-1.0")), 0, CREATED)
    assert sandbox.is_file("/usr/src/dkms_test-1.0/dkms.conf")
    assert sandbox.readlink("/var/lib/dkms/dkms_test/1.0/source") == "/usr/src/dkms_test-1.0"
    assert sandbox.is_dir("/var/lib/dkms/dkms_test/1.0/build")
    assert status_lines(sandbox, "dkms_test") == "dkms_test/1.0: added\n"
    expect(sandbox.dkms("add", str(DATA / "dkms_test-1.0")), 3, ALREADY_ADDED)

    expect(sandbox.dkms("remove", "--all", "-m", "dkms_test", "-v", "1.0"), 0, REMOVED)
    assert status_lines(sandbox, "dkms_test") == ""
    assert not sandbox.exists("/var/lib/dkms/dkms_test")
    assert sandbox.is_dir("/usr/src/dkms_test-1.0"), "remove must keep the source tree"
    sandbox.remove("/usr/src/dkms_test-1.0")

    # By path to the dkms.conf file.
    expect(sandbox.dkms("add", str(DATA / "dkms_test-1.0" / "dkms.conf")), 0, CREATED)
    assert sandbox.is_file("/usr/src/dkms_test-1.0/dkms.conf")
    assert status_lines(sandbox, "dkms_test") == "dkms_test/1.0: added\n"
    expect(sandbox.dkms("add", str(DATA / "dkms_test-1.0" / "dkms.conf")), 3, ALREADY_ADDED)
    expect(sandbox.dkms("remove", "--all", "-m", "dkms_test", "-v", "1.0"), 0, REMOVED)

    # By name and version, from the existing /usr/src/dkms_test-1.0.
    for args in (("-m", "dkms_test", "-v", "1.0"), ("dkms_test/1.0",), ("-m", "dkms_test/1.0")):
        expect(sandbox.dkms("add", *args), 0, CREATED)
        assert status_lines(sandbox, "dkms_test") == "dkms_test/1.0: added\n"
        expect(sandbox.dkms("add", *args), 3, ALREADY_ADDED)
        expect(sandbox.dkms("remove", "--all", *args), 0, REMOVED)
    assert sandbox.tree("/var/lib/dkms") == tree_before


def test_module_argument_with_slashes(sandbox: Sandbox) -> None:
    """`m/v` splits at the first '/': `dkms_test/1.0/extra` is module dkms_test, version
    1.0/extra, whose source directory does not exist."""
    sandbox.add_source(DATA / "dkms_test-1.0")
    tree_before = sandbox.tree("/var/lib/dkms")
    expect(
        sandbox.dkms("add", "dkms_test/1.0/extra"),
        2,
        "\nError! Could not find module source directory.\n"
        "Directory: /usr/src/dkms_test-1.0/extra does not exist.\n",
    )
    expect(
        sandbox.dkms("add", "-m", "dkms_test/1.0/extra"),
        2,
        "\nError! Could not find module source directory.\n"
        "Directory: /usr/src/dkms_test-1.0/extra does not exist.\n",
    )
    assert sandbox.tree("/var/lib/dkms") == tree_before


@pytest.mark.parametrize("action", ["uninstall", "unbuild", "remove"])
def test_actions_on_a_module_that_was_never_added(sandbox: Sandbox, action: str) -> None:
    expect(
        sandbox.dkms(action, "-m", "dkms_nosuch_test", "-v", "1.0", "-k", "6.1.0-0-amd64"),
        3,
        NOT_ADDED.format(mv="dkms_nosuch_test/1.0"),
    )


def test_lifecycle(sandbox: Sandbox, kver: str) -> None:
    """run_test.sh `basic`: build, rebuild, install, reinstall, signature, make.log, uninstall,
    unbuild, remove, combined install, remove --all."""
    ko = f"{dest_dir(kver)}/dkms_test.ko"
    base = f"/var/lib/dkms/dkms_test/1.0/{kver}/{ARCH}"
    # An empty modules.dep, as a kernel image would ship one, so that dkms really runs depmod
    # (it skips depmod for kernels that have headers but no modules.dep).
    sandbox.check(["depmod", "-a", kver])
    sandbox.add_source(DATA / "dkms_test-1.0")
    expect(sandbox.dkms("add", "-m", "dkms_test", "-v", "1.0"), 0, CREATED)

    expect(sandbox.dkms("build", "-k", kver, "-m", "dkms_test", "-v", "1.0"), 0, build_output(kver))
    assert status_lines(sandbox, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: built\n"
    assert sandbox.is_file(f"{base}/module/dkms_test.ko")
    assert not sandbox.exists("/var/lib/dkms/dkms_test/1.0/build"), "build/ is removed on success"
    assert sandbox.is_file("/var/lib/dkms/mok.key") and sandbox.is_file(MOK_CERT)

    expect_make_log(
        sandbox,
        f"{base}/log/make.log",
        f"DKMS ({sandbox.dkms_version()}) make.log for dkms_test/1.0 for kernel {kver} ({ARCH})\n"
        "<timestamp>\n"
        "\n"
        "Building module(s)\n"
        f"# command: {default_make('dkms_test', '1.0', kver)}\n"
        "  CC      dkms_test.o\n"
        "  CC      dkms_test.mod.o\n"
        "  LD      dkms_test.ko\n"
        "\n"
        "# exit code: 0\n"
        "# elapsed time: <hh:mm:ss>\n"
        f"{DASHES}\n",
    )

    expect(
        sandbox.dkms("build", "-k", kver, "-m", "dkms_test", "-v", "1.0"), 0, already_built(kver)
    )
    expect(
        sandbox.dkms("build", "-k", f"{kver}-noheaders", "-m", "dkms_test", "-v", "1.0"),
        21,
        headers_missing(f"{kver}-noheaders"),
    )
    assert not sandbox.exists(f"/var/lib/dkms/dkms_test/1.0/{kver}-noheaders")
    expect(
        sandbox.dkms("build", "-k", kver, "-k", kver, "-m", "dkms_test", "-v", "1.0"),
        0,
        already_built(kver) + already_built(kver),
    )
    expect(
        sandbox.dkms("build", "-k", kver, "-m", "dkms_test", "-v", "1.0", "--force"),
        0,
        build_output(kver),
    )
    assert status_lines(sandbox, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: built\n"

    expect(
        sandbox.dkms("install", "-k", kver, "-m", "dkms_test", "-v", "1.0"), 0, install_output(kver)
    )
    assert status_lines(sandbox, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: installed\n"
    assert sandbox.is_file(ko)
    assert sandbox.readlink(f"/var/lib/dkms/dkms_test/kernel-{kver}-{ARCH}") == f"1.0/{kver}/{ARCH}"
    assert "updates/dkms/dkms_test.ko:" in sandbox.read_text(f"/lib/modules/{kver}/modules.dep")

    expect(
        sandbox.dkms("install", "-k", kver, "-m", "dkms_test", "-v", "1.0"),
        0,
        already_installed(kver),
    )
    expect(
        sandbox.dkms("install", "-k", kver, "-m", "dkms_test", "-v", "1.0", "--force"),
        0,
        uninstalled(kver) + "\n" + install_output(kver),
    )
    assert status_lines(sandbox, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: installed\n"

    # The installed module: what modinfo says, and that it is signed with the MOK dkms generated.
    modinfo = sandbox.check(["modinfo", ko]).splitlines()
    quad = sorted(
        line
        for line in modinfo
        if line.split(":")[0] in ("description", "filename", "license", "version")
    )
    assert quad == [
        "description:    A simple dkms test module",
        f"filename:       {ko}",
        "license:        GPL",
        "version:        1.0",
    ]
    assert modinfo_field(sandbox, "vermagic", ko).split()[0] == kver
    assert modinfo_field(sandbox, "sig_key", ko).replace(":", "") == cert_serial(sandbox)
    assert modinfo_field(sandbox, "sig_hashalgo", ko) == kernel_config_value(
        kver, "CONFIG_MODULE_SIG_HASH"
    )
    assert modinfo_field(sandbox, "signer", ko) == "DKMS module signing key"

    expect(
        sandbox.dkms("uninstall", "-k", kver, "-m", "dkms_test", "-v", "1.0"), 0, uninstalled(kver)
    )
    assert status_lines(sandbox, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: built\n"
    assert not sandbox.exists(ko)
    assert not sandbox.is_symlink(f"/var/lib/dkms/dkms_test/kernel-{kver}-{ARCH}")
    modules_dep = f"/lib/modules/{kver}/modules.dep"
    if sandbox.exists(modules_dep):
        assert "dkms_test.ko" not in sandbox.read_text(modules_dep)
    expect(
        sandbox.dkms("uninstall", "-k", kver, "-m", "dkms_test", "-v", "1.0"),
        0,
        not_installed(kver),
    )
    assert status_lines(sandbox, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: built\n"

    expect(
        sandbox.dkms("unbuild", "-k", kver, "-m", "dkms_test", "-v", "1.0"), 0, not_installed(kver)
    )
    assert status_lines(sandbox, "dkms_test") == "dkms_test/1.0: added\n"
    assert not sandbox.exists(f"/var/lib/dkms/dkms_test/1.0/{kver}")
    expect(
        sandbox.dkms("unbuild", "-k", kver, "-m", "dkms_test", "-v", "1.0"),
        0,
        not_installed(kver) + not_built(kver),
    )
    assert status_lines(sandbox, "dkms_test") == "dkms_test/1.0: added\n"

    expect(
        sandbox.dkms("remove", "-k", kver, "-m", "dkms_test", "-v", "1.0"),
        0,
        not_installed(kver) + not_built(kver) + "\n" + REMOVED,
    )
    assert status_lines(sandbox, "dkms_test") == ""
    assert not sandbox.exists("/var/lib/dkms/dkms_test")
    assert sandbox.is_dir("/usr/src/dkms_test-1.0"), "remove must keep the source tree"

    # install adds and builds as needed; the add is followed by an empty line.
    expect(
        sandbox.dkms("install", "-k", kver, "-m", "dkms_test", "-v", "1.0"),
        0,
        CREATED + "\n" + build_output(kver) + install_output(kver),
    )
    assert status_lines(sandbox, "dkms_test") == f"dkms_test/1.0, {kver}, {ARCH}: installed\n"
    assert modinfo_field(sandbox, "version", ko) == "1.0"

    expect(
        sandbox.dkms("remove", "--all", "-m", "dkms_test", "-v", "1.0"),
        0,
        uninstalled(kver) + "\n" + REMOVED,
    )
    assert status_lines(sandbox, "dkms_test") == ""
    assert not sandbox.exists(ko)
    assert not sandbox.exists("/var/lib/dkms/dkms_test")


def test_post_transaction(sandbox: Sandbox, kernels: list[str]) -> None:
    """post_transaction (framework.conf) runs after a successful install, uninstall, unbuild or
    remove; it is read when it runs, so ${kernelver} is the kernel acted on; its output goes to
    post_transaction.log in make.log's block format."""
    kver = kernels[0]
    framework_conf = "/etc/dkms/framework.conf.d/dkms_test_framework.conf"
    executed = "Executing post-transaction command... done.\n"
    log = (
        "\n"
        "<timestamp>\n"
        f"# command: echo This is a test message as post transaction. Kernel version is {kver}\n"
        f"This is a test message as post transaction. Kernel version is {kver}\n"
        "\n"
        "# exit code: 0\n"
        "# elapsed time: <hh:mm:ss>\n"
        f"{DASHES}\n"
    )
    sandbox.add_source(DATA / "dkms_test-1.0")
    expect(
        sandbox.dkms("install", "-k", kver, "dkms_test/1.0"),
        0,
        CREATED + "\n" + build_output(kver) + install_output(kver),
    )
    sandbox.write_text(
        framework_conf,
        'post_transaction="echo This is a test message as post transaction. '
        'Kernel version is ${kernelver}"\n',
    )
    expect(
        sandbox.dkms("install", "-k", kver, "dkms_test/1.0", "--force"),
        0,
        uninstalled(kver) + "\n" + install_output(kver) + executed,
    )
    expect_make_log(sandbox, "/var/lib/dkms/post_transaction.log", log)
    sandbox.remove("/var/lib/dkms/post_transaction.log")
    expect(sandbox.dkms("uninstall", "-k", kver, "dkms_test/1.0"), 0, uninstalled(kver) + executed)
    expect_make_log(sandbox, "/var/lib/dkms/post_transaction.log", log)

    # Not after a build; after any install that succeeds, even one that had nothing to do.
    sandbox.remove("/var/lib/dkms/post_transaction.log")
    expect(sandbox.dkms("build", "-k", kver, "dkms_test/1.0"), 0, already_built(kver))
    expect(sandbox.dkms("install", "-k", kver, "dkms_test/1.0"), 0, install_output(kver) + executed)
    sandbox.remove("/var/lib/dkms/post_transaction.log")
    expect(
        sandbox.dkms("install", "-k", kver, "dkms_test/1.0"), 0, already_installed(kver) + executed
    )


def test_two_kernels_in_one_command(sandbox: Sandbox, kernels: list[str]) -> None:
    """build, install, uninstall and remove --all over two kernels at once: one signing prologue
    per kernel, an empty line between the kernels of uninstall and after each kernel of remove;
    the exit code is that of the *last* kernel."""
    k1, k2 = kernels[:2]
    sandbox.add_source(DATA / "dkms_test-1.0")
    expect(sandbox.dkms("add", "dkms_test/1.0"), 0, CREATED)
    expect(
        sandbox.dkms("build", "dkms_test/1.0", "-k", k1, "-k", k2),
        0,
        build_output(k1) + build_output(k2),
    )
    assert status_lines(sandbox, "dkms_test") == (
        f"dkms_test/1.0, {k1}, {ARCH}: built\ndkms_test/1.0, {k2}, {ARCH}: built\n"
    )
    expect(
        sandbox.dkms("build", "dkms_test/1.0", "-k", f"{k1}-noheaders", "-k", k1),
        0,
        headers_missing(f"{k1}-noheaders") + already_built(k1),
    )
    expect(
        sandbox.dkms("build", "dkms_test/1.0", "-k", k1, "-k", f"{k1}-noheaders"),
        21,
        already_built(k1) + headers_missing(f"{k1}-noheaders"),
    )
    expect(
        sandbox.dkms("install", "dkms_test/1.0", "-k", k1, "-k", k2),
        0,
        install_output(k1) + install_output(k2),
    )
    assert status_lines(sandbox, "dkms_test") == (
        f"dkms_test/1.0, {k1}, {ARCH}: installed\ndkms_test/1.0, {k2}, {ARCH}: installed\n"
    )
    expect(sandbox.dkms("status", "-k", k2), 0, f"dkms_test/1.0, {k2}, {ARCH}: installed\n")
    expect(
        sandbox.dkms("uninstall", "dkms_test/1.0", "-k", k1, "-k", k2),
        0,
        uninstalled(k1) + "\n" + uninstalled(k2),
    )
    expect(sandbox.dkms("install", "dkms_test/1.0", "-k", k2), 0, install_output(k2))
    expect(
        sandbox.dkms("remove", "dkms_test/1.0", "--all"),
        0,
        not_installed(k1) + "\n" + uninstalled(k2) + "\n" + REMOVED,
    )
    assert status_lines(sandbox, "dkms_test") == ""
    assert not sandbox.exists(f"{dest_dir(k1)}/dkms_test.ko")
    assert not sandbox.exists(f"{dest_dir(k2)}/dkms_test.ko")


def test_signing_is_refused_in_a_chroot_by_default(sandbox: Sandbox, kernels: list[str]) -> None:
    """Without try_sign_modules=true, dkms's chroot detection (our mount namespace counts as a
    chroot) turns signing off: run_test.sh's `try_sign_modules=not_in_chroot` case."""
    kver = kernels[0]
    sandbox.remove(TRY_SIGN_MODULES_CONF)
    sandbox.add_source(DATA / "dkms_test-1.0")
    expect(sandbox.dkms("add", "dkms_test/1.0"), 0, CREATED)
    expect(
        sandbox.dkms("build", "-k", kver, "dkms_test/1.0"),
        0,
        "Running in chroot, modules won't be signed\n\nBuilding module(s)... done.\n",
    )
    built_ko = f"/var/lib/dkms/dkms_test/1.0/{kver}/{ARCH}/module/dkms_test.ko"
    assert modinfo_field(sandbox, "sig_key", built_ko) == ""
    assert not sandbox.exists(MOK_CERT), "no key pair is generated when nothing is signed"


def test_multi_module_package(sandbox: Sandbox, kver: str) -> None:
    """Two modules built in subdirectories, one renamed on install, MAKE[0] naming the build
    directory through ${dkms_tree}."""
    mv = "dkms_multi_test/1.0"
    base = f"/var/lib/dkms/dkms_multi_test/1.0/{kver}/{ARCH}"
    expect(
        sandbox.dkms("add", str(DATA / "dkms_multi_test-1.0")),
        0,
        created("dkms_multi_test"),
    )
    expect(
        sandbox.dkms("install", "-k", kver, mv),
        0,
        f"{signing_prologue(kver)}\n"
        "Building module(s)... done.\n"
        f"{signing_message('dkms_multi_test', '1.0', 'a/dkms_multi_a')}\n"
        f"{signing_message('dkms_multi_test', '1.0', 'b/dkms_multi_b')}\n"
        f"Installing {dest_dir(kver)}/dkms_multi_a.ko\n"
        f"Installing {dest_dir(kver)}/dkms_multi_b_renamed.ko\n"
        "Running depmod... done.\n",
    )
    assert status_lines(sandbox, "dkms_multi_test") == f"{mv}, {kver}, {ARCH}: installed\n"
    assert sorted(sandbox.check(["ls", f"{base}/module"]).split()) == [
        "Module.symvers",
        "dkms_multi_a.ko",
        "dkms_multi_b_renamed.ko",
    ]
    make_log = sandbox.read_text(f"{base}/log/make.log")
    assert (
        f"# command: make -j1 KERNELRELEASE={kver} -C /lib/modules/{kver}/build "
        "M=/var/lib/dkms/dkms_multi_test/1.0/build modules\n"
    ) in make_log
    for ko in ("dkms_multi_a", "dkms_multi_b_renamed"):
        path = f"{dest_dir(kver)}/{ko}.ko"
        assert modinfo_field(sandbox, "vermagic", path).split()[0] == kver
        assert modinfo_field(sandbox, "sig_key", path).replace(":", "") == cert_serial(sandbox)

    expect(
        sandbox.dkms("uninstall", "-k", kver, mv),
        0,
        uninstalled(kver, "dkms_multi_a", "dkms_multi_b_renamed", module="dkms_multi_test"),
    )
    assert not sandbox.exists(f"{dest_dir(kver)}/dkms_multi_a.ko")
    assert not sandbox.exists(f"{dest_dir(kver)}/dkms_multi_b_renamed.ko")
    expect(
        sandbox.dkms("remove", "-k", kver, mv),
        0,
        not_installed(kver, "dkms_multi_test")
        + "\nDeleting module dkms_multi_test/1.0 completely from the DKMS tree.\n",
    )
    assert status_lines(sandbox, "dkms_multi_test") == ""


def test_patch_and_scripts(sandbox: Sandbox, kver: str) -> None:
    """PATCH[0], then PRE_BUILD/POST_BUILD logged to make.log with a "... done." on the terminal;
    POST_ADD, PRE_INSTALL, POST_INSTALL and POST_REMOVE printing straight to the terminal."""
    mv = "dkms_scripts_test/1.0"
    build = "/var/lib/dkms/dkms_scripts_test/1.0/build"
    base = f"/var/lib/dkms/dkms_scripts_test/1.0/{kver}/{ARCH}"
    ko = f"{dest_dir(kver)}/dkms_scripts_test.ko"
    expect(
        sandbox.dkms("add", str(DATA / "dkms_scripts_test-1.0")),
        0,
        created("dkms_scripts_test") + "Running the post_add script:\n"
        "dkms_scripts_test: post_add script ran\n",
    )
    expect(
        sandbox.dkms("install", "-k", kver, mv),
        0,
        f"{signing_prologue(kver)}\n"
        "Applying patch dkms_scripts_test-message.patch... done.\n"
        "Running the pre_build script... done.\n"
        "Building module(s)... done.\n"
        f"{signing_message('dkms_scripts_test', '1.0')}\n"
        "Running the post_build script... done.\n"
        "Running the pre_install script:\n"
        "dkms_scripts_test: pre_install script ran\n"
        f"Installing {ko}\n"
        "Running the post_install script:\n"
        "dkms_scripts_test: post_install script ran\n"
        "Running depmod... done.\n",
    )
    assert status_lines(sandbox, "dkms_scripts_test") == f"{mv}, {kver}, {ARCH}: installed\n"
    assert sandbox.run(["grep", "-q", "-a", "-F", "patched by PATCH[0]", ko]).rc == 0, (
        "the installed module was built from unpatched source"
    )

    block_end = f"\n# exit code: 0\n# elapsed time: <hh:mm:ss>\n{DASHES}\n"
    expect_make_log(
        sandbox,
        f"{base}/log/make.log",
        f"DKMS ({sandbox.dkms_version()}) make.log for {mv} for kernel {kver} ({ARCH})\n"
        "<timestamp>\n"
        "\n"
        "Applying patch dkms_scripts_test-message.patch\n"
        "# command: patch -p1 < ./patches/dkms_scripts_test-message.patch\n"
        "patching file dkms_scripts_test.c\n"
        f"{block_end}"
        "\n"
        "Running the pre_build script\n"
        f"# command: cd {build}/ && {build}/scripts/script.sh pre_build\n"
        "dkms_scripts_test: pre_build script ran\n"
        f"{block_end}"
        "\n"
        "Building module(s)\n"
        f"# command: {default_make('dkms_scripts_test', '1.0', kver)}\n"
        "  CC      dkms_scripts_test.o\n"
        "  CC      dkms_scripts_test.mod.o\n"
        "  LD      dkms_scripts_test.ko\n"
        f"{block_end}"
        "\n"
        "Running the post_build script\n"
        f"# command: cd {build}/ && {build}/scripts/script.sh post_build\n"
        "dkms_scripts_test: post_build script ran\n"
        f"{block_end}",
    )

    expect(
        sandbox.dkms("unbuild", "-k", kver, mv),
        0,
        f"Module {mv} for kernel {kver} ({ARCH}):\n"
        "Before uninstall, this module version was ACTIVE on this kernel.\n"
        f"Deleting {ko}\n"
        "Running the post_remove script:\n"
        "dkms_scripts_test: post_remove script ran\n"
        "Running depmod... done.\n",
    )
    assert status_lines(sandbox, "dkms_scripts_test") == f"{mv}: added\n"
    expect(
        sandbox.dkms("remove", "-k", kver, mv),
        0,
        not_installed(kver, "dkms_scripts_test")
        + not_built(kver, "dkms_scripts_test")
        + "\nDeleting module dkms_scripts_test/1.0 completely from the DKMS tree.\n",
    )


def test_failing_build(sandbox: Sandbox, kver: str) -> None:
    """A module that does not compile: exit 10, the failed command, make.log kept in build/."""
    mv = "dkms_failing_test/1.0"
    make_log = "/var/lib/dkms/dkms_failing_test/1.0/build/make.log"
    failure = (
        "Building module(s)...(bad exit status: 2)\n"
        "Failed command:\n"
        f"{default_make('dkms_failing_test', '1.0', kver)}\n"
        "\n"
        f"Error! Bad return status for module build on kernel: {kver} ({ARCH})\n"
        f"Consult {make_log} for more information.\n"
    )
    expect(
        sandbox.dkms("add", str(DATA / "dkms_failing_test-1.0")),
        0,
        created("dkms_failing_test"),
    )
    expect(sandbox.dkms("build", "-k", kver, mv), 10, f"{signing_prologue(kver)}\n{failure}")
    assert status_lines(sandbox, "dkms_failing_test") == f"{mv}: added\n"
    assert not sandbox.exists(f"/var/lib/dkms/dkms_failing_test/1.0/{kver}")

    log = sandbox.read_text(make_log)
    lines = log.split("\n")
    assert lines[0] == (
        f"DKMS ({sandbox.dkms_version()}) make.log for {mv} for kernel {kver} ({ARCH})"
    )
    assert lines[2:5] == [
        "",
        "Building module(s)",
        f"# command: {default_make('dkms_failing_test', '1.0', kver)}",
    ]
    assert "this module fails to build on purpose" in log
    assert lines[-5:-3] == ["", "# exit code: 2"]
    assert re.fullmatch(r"# elapsed time: \d\d:\d\d:\d\d", lines[-3])
    assert lines[-2:] == [DASHES, ""]

    # install builds first, and fails the same way.
    expect(sandbox.dkms("install", "-k", kver, mv), 10, f"{signing_prologue(kver)}\n{failure}")
    assert not sandbox.exists(f"{dest_dir(kver)}/dkms_failing_test.ko")
    expect(
        sandbox.dkms("remove", "-k", kver, mv),
        0,
        not_installed(kver, "dkms_failing_test")
        + not_built(kver, "dkms_failing_test")
        + "\nDeleting module dkms_failing_test/1.0 completely from the DKMS tree.\n",
    )
    assert status_lines(sandbox, "dkms_failing_test") == ""
