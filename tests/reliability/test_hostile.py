"""Hostile and broken input: every case ends with a clear error naming the problem and nothing
written outside the DKMS tree (checked on the sandbox's overlay upper layers, which record every
write)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from integration.sandbox import Sandbox

from .lab import ARCH, DEST, MODULE, VERSION, Lab, changed_outside, upper_state

pytestmark = pytest.mark.reliability

# dkms writes its tree (and MOK key pair) and takes the tree lock; nothing else for add/build
LOCK = "/var/lib/dkmshooks/lock"
TREE = ["/var/lib/dkms", LOCK]


def package(sb: Sandbox, tmp: Path, name: str, conf: str | bytes, **files: str) -> str:
    """/usr/src/<name>-1.0 with `conf` as its dkms.conf (bytes: written as they are)."""
    src = tmp / f"{name}-1.0"
    src.mkdir(parents=True)
    (src / "dkms.conf").write_bytes(conf if isinstance(conf, bytes) else conf.encode())
    (src / "Makefile").write_text("obj-m :=\n")
    for rel, text in files.items():
        (src / rel).write_text(text)
    return sb.add_source(src)


def conf(name: str, **extra: str) -> str:
    lines = {
        "PACKAGE_NAME": f'"{name}"',
        "PACKAGE_VERSION": '"1.0"',
        "BUILT_MODULE_NAME[0]": f'"{name}"',
        "DEST_MODULE_LOCATION[0]": '"/updates"',
        "MAKE": '"true"',
    }
    lines.update(extra)
    return "".join(f"{k}={v}\n" for k, v in lines.items())


@pytest.mark.parametrize(
    ("directive", "value", "complaint"),
    [
        (
            "DEST_MODULE_LOCATION[0]",
            '"/kernel/../../../../etc"',
            "Directive 'DEST_MODULE_LOCATION' contains a '..' component",
        ),
        (
            "BUILT_MODULE_LOCATION[0]",
            '"../../../../../../etc/"',
            "Directive 'BUILT_MODULE_LOCATION' contains a '..' component",
        ),
        ("DEST_MODULE_NAME[0]", '"../../../etc/x"', "'DEST_MODULE_NAME' contains '/'"),
        ("BUILT_MODULE_NAME[0]", '"../x"', "'BUILT_MODULE_NAME' contains '/'"),
    ],
)
def test_locations_and_names_that_leave_their_tree_are_refused(
    sandbox: Sandbox, tmp_path: Path, kver: str, directive: str, value: str, complaint: str
) -> None:
    package(sandbox, tmp_path, "hostile", conf("hostile", **{directive: value}))
    before = upper_state(sandbox)
    for action in (["add", "hostile/1.0"], ["install", "hostile/1.0", "-k", kver]):
        result = sandbox.dkms(*action)
        assert result.rc == 8, result.output
        assert f"dkms.conf: Error! {complaint}" in result.output
        assert "Error! Bad conf file." in result.output
    assert changed_outside(before, upper_state(sandbox), [LOCK]) == []


@pytest.mark.parametrize("name", ["../../etc/x", "..", "a/b"])
def test_package_names_that_are_not_one_path_component_are_refused(
    sandbox: Sandbox, tmp_path: Path, name: str
) -> None:
    path = package(sandbox, tmp_path, "named", conf(name, **{"BUILT_MODULE_NAME[0]": '"named"'}))
    before = upper_state(sandbox)
    result = sandbox.dkms("add", path)
    assert result.rc == 1, result.output
    assert f"Invalid module name {name!r}" in result.output
    assert changed_outside(before, upper_state(sandbox), [LOCK]) == []


def test_a_newline_in_a_name_collapses_to_a_space_as_in_dkms(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """dkms's export loop (`eval echo ...`) word-splits values, so a newline never reaches a
    path: the name is one component with a space, which dkms accepts too."""
    path = package(sandbox, tmp_path, "nl", conf("a\nb"))
    result = sandbox.dkms("add", path)
    assert result.rc == 0, result.output
    assert sandbox.is_symlink("/var/lib/dkms/a b/1.0/source")
    assert sandbox.dkms("status").output == "a b/1.0: added\n"


def test_a_built_module_behind_a_symlink_out_of_the_build_dir_is_refused(
    sandbox: Sandbox, tmp_path: Path, kver: str
) -> None:
    """The source ships `out -> /etc/victim`; strip and sign-file would write through it."""
    sandbox.write_text("/etc/victim/victim.ko", "precious\n")
    path = package(
        sandbox, tmp_path, "victim", conf("victim", **{"BUILT_MODULE_LOCATION[0]": "out"})
    )
    sandbox.check(["ln", "-s", "/etc/victim", f"{path}/out"])
    before = upper_state(sandbox)
    result = sandbox.dkms("build", "victim/1.0", "-k", kver)
    assert result.rc == 7, result.output
    assert (
        "/var/lib/dkms/victim/1.0/build/out/victim.ko resolves to /etc/victim/victim.ko, "
        "outside the build directory /var/lib/dkms/victim/1.0/build; refusing to strip, sign "
        "or install it." in result.output
    )
    assert changed_outside(before, upper_state(sandbox), TREE) == []
    assert sandbox.read_text("/etc/victim/victim.ko") == "precious\n"
    assert sandbox.dkms("status").output == "victim/1.0: added\n"


def test_an_absolute_built_location_stays_inside_the_build_dir(
    sandbox: Sandbox, tmp_path: Path, kver: str
) -> None:
    """dkms concatenates build/ and BUILT_MODULE_LOCATION as strings: "/etc/" means
    build//etc/, never /etc/ (Python's Path / "/etc" would have meant /etc)."""
    sandbox.write_text("/etc/abs.ko", "precious\n")
    package(sandbox, tmp_path, "abs", conf("abs", **{"BUILT_MODULE_LOCATION[0]": '"/etc/"'}))
    before = upper_state(sandbox)
    result = sandbox.dkms("build", "abs/1.0", "-k", kver)
    assert result.rc == 7, result.output
    assert "Build of /etc/abs.ko failed for" in result.output
    assert changed_outside(before, upper_state(sandbox), TREE) == []


def test_non_utf8_bytes_in_dkms_conf_are_carried_not_fatal(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    raw = conf("bytes").encode() + b'POST_ADD="\xff\xfe"\n# \xc3\x28 comment\n'
    package(sandbox, tmp_path, "bytes", raw)
    add = sandbox.dkms("add", "bytes/1.0")
    assert add.rc == 0, add.output
    assert "The post_add script is not executable." in add.output
    for result in (sandbox.dkms("status"), sandbox.dkms("remove", "bytes/1.0", "--all")):
        assert result.rc == 0, result.output
        assert "Traceback" not in result.output


def test_a_non_utf8_package_version_round_trips(sandbox: Sandbox, tmp_path: Path) -> None:
    raw = conf("weird").replace('PACKAGE_VERSION="1.0"', "").encode()
    path = package(sandbox, tmp_path, "weird", raw + b'PACKAGE_VERSION="1.0\xff"\n')
    add = sandbox.dkms("add", path)
    assert add.rc == 0, add.output
    status = sandbox.dkms("status")
    assert status.rc == 0 and "weird/1.0" in status.output, status.output
    assert "Traceback" not in add.output + status.output


def test_enormous_and_sparse_module_arrays_are_refused_quickly(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    dense = conf("dense") + (
        "for ((i = 0; i < 25000; i++)); do\n"
        '    BUILT_MODULE_NAME[i]="m$i"; DEST_MODULE_LOCATION[i]="/updates"\n'
        "done\n"
    )
    sparse = conf("sparse") + 'BUILT_MODULE_NAME[2000000000]="far"\n'
    package(sandbox, tmp_path, "dense", dense)
    package(sandbox, tmp_path, "sparse", sparse)
    for name, records in (("dense", 25000), ("sparse", 2000000001)):
        start = time.monotonic()
        result = sandbox.dkms("add", f"{name}/1.0")
        assert time.monotonic() - start < 60
        assert result.rc == 8, result.output
        assert (
            f"dkms.conf: Error! {records} module records (highest index {records - 1}); "
            "at most 1024 are supported." in result.output
        )
    assert sandbox.dkms("status").output == ""


def test_a_conf_that_exits_or_prints_garbage(sandbox: Sandbox, tmp_path: Path) -> None:
    """A dkms.conf is sourced in a subshell whose output is discarded: `exit 1` there loses
    what it had set (dkms says the same), printed garbage (even fake records) changes nothing."""
    package(sandbox, tmp_path, "quits", conf("quits") + "exit 1\n")
    fake = "printf 'V\\0PACKAGE_NAME\\0000\\0pwned\\0'; head -c 2000 /dev/urandom\n"
    package(sandbox, tmp_path, "noisy", conf("noisy") + fake)
    quits = sandbox.dkms("add", "quits/1.0")
    assert quits.rc == 8, quits.output
    assert "dkms.conf: Error! No 'PACKAGE_NAME' directive specified." in quits.output
    noisy = sandbox.dkms("add", "noisy/1.0")
    assert noisy.rc == 0, noisy.output
    assert sandbox.dkms("status").output == "noisy/1.0: added\n"


def test_a_full_tmpdir_does_not_change_what_dkms_conf_means(sandbox: Sandbox, kver: str) -> None:
    """dkms reads every dkms.conf and framework.conf through a mktemp file; with $TMPDIR full
    every variable would silently come back empty. dkmshooks uses a pipe: dkms's warning, then
    the conf means what it says; the compiler's own failure is reported as a build failure."""
    sandbox.add_source(Path(__file__).resolve().parents[1] / "data" / "dkms_test-1.0")
    result = sandbox.run(
        [
            "bash",
            "-c",
            "mkdir -p /var/lib/fulltmp && mount -t tmpfs -o size=64k,nr_inodes=16 tmpfs "
            "/var/lib/fulltmp && (head -c 1M /dev/zero > /var/lib/fulltmp/fill; true) && "
            "export TMPDIR=/var/lib/fulltmp && dkms add dkms_test/1.0 && "
            f"{{ dkms build dkms_test/1.0 -k {kver}; echo build=$?; }} && dkms status",
        ]
    )
    warning = "Warning: dkms will not function properly without some free space in $TMPDIR"
    assert warning in result.output
    assert "Creating symlink /var/lib/dkms/dkms_test/1.0/source" in result.output
    assert "dkms.conf: Error!" not in result.output
    assert "build=10" in result.output  # gcc: "error writing to /var/lib/fulltmp/cc*.s"
    assert result.output.endswith("dkms_test/1.0: added\n"), result.output
    log = sandbox.read_text("/var/lib/dkms/dkms_test/1.0/build/make.log")
    assert "No space left on device" in log


# -- symlinks planted in the DKMS tree -------------------------------------------------------


def test_a_planted_kernel_dir_is_neither_trusted_nor_followed(lab: Lab) -> None:
    """`crash_test/2.0/<kver>` replaced by a link to /etc/victim, which looks like a build."""
    lab.restore("added")
    lab.sh(
        f"""
        mkdir -p /etc/victim/{ARCH}/module
        echo precious > /etc/victim/{ARCH}/module/crash_a.ko
        ln -s /etc/victim /var/lib/dkms/{MODULE}/{VERSION}/{lab.kver}
        """
    )
    before = upper_state(lab.sb)
    status = lab.dkms("status")
    assert status.output == f"{MODULE}/{VERSION}: added\n"  # not "built"
    for action in ("build", "install"):
        result = lab.dkms(action, f"{MODULE}/{VERSION}", "-k", lab.kver)
        assert result.rc == 1, result.output
        assert (
            f"Error! /var/lib/dkms/{MODULE}/{VERSION}/{lab.kver} is a symbolic link to "
            "/etc/victim; refusing to build through it." in result.output
        )
    removed = lab.dkms("remove", f"{MODULE}/{VERSION}", "--all")
    assert removed.rc == 0, removed.output
    assert "Deleting module crash_test/2.0 completely from the DKMS tree." in removed.output
    assert changed_outside(before, upper_state(lab.sb), TREE) == []
    assert lab.sb.read_text(f"/etc/victim/{ARCH}/module/crash_a.ko") == "precious\n"


def test_a_planted_module_dir_in_lib_modules_is_refused(lab: Lab) -> None:
    lab.restore("built")
    lab.sh(
        f"""
        mkdir -p /etc/victim /lib/modules/{lab.kver}/updates
        ln -s /etc/victim /lib/modules/{lab.kver}/{DEST}
        """
    )
    before = upper_state(lab.sb)
    result = lab.dkms("install", f"{MODULE}/{VERSION}", "-k", lab.kver)
    assert result.rc == 6, result.output
    assert (
        f"Error! /lib/modules/{lab.kver}/{DEST} resolves to /etc/victim, outside "
        f"/lib/modules/{lab.kver}; refusing to install there." in result.output
    )
    assert changed_outside(before, upper_state(lab.sb), TREE) == []  # checked before any move
    assert lab.sb.exists(f"/lib/modules/{lab.kver}/kernel/drivers/crash_a.ko")


def test_a_planted_origin_cannot_send_a_module_outside(lab: Lab) -> None:
    """original_module/.../crash_a.ko.origin names where uninstall restores the archived
    original; a path that leaves /lib/modules/<kver> is refused."""
    lab.restore("installed")
    origin = f"/var/lib/dkms/{MODULE}/original_module/{lab.kver}/{ARCH}/crash_a.ko.origin"
    lab.sh(f"echo /lib/modules/{lab.kver}/../../../etc/pwned.ko > {origin}")
    before = upper_state(lab.sb)
    result = lab.dkms("uninstall", f"{MODULE}/{VERSION}", "-k", lab.kver)
    assert result.rc == 0, result.output
    assert f"Warning: Bad original location '/lib/modules/{lab.kver}/../../../etc/" in (
        result.output
    )
    assert not lab.sb.exists("/etc/pwned.ko")
    assert [p for p in changed_outside(before, upper_state(lab.sb), TREE) if "/etc" in p] == []
    # not lost either: dkms's fallback for archives without a usable .origin puts it back at
    # DEST_MODULE_LOCATION (/kernel/extra here), inside the kernel's tree
    assert "Restoring archived original module\n" in result.output
    assert lab.sb.exists(f"/lib/modules/{lab.kver}/kernel/extra/crash_a.ko")


def test_a_planted_original_module_dir_is_refused(lab: Lab) -> None:
    """install archives the kernel's own crash_a.ko under original_module/<K>/<arch>; planted
    as a link to elsewhere, nothing is moved through it."""
    lab.restore("built")
    lab.sh(
        f"""
        mkdir -p /etc/victim /var/lib/dkms/{MODULE}/original_module/{lab.kver}
        ln -s /etc/victim /var/lib/dkms/{MODULE}/original_module/{lab.kver}/{ARCH}
        """
    )
    before = upper_state(lab.sb)
    result = lab.dkms("install", f"{MODULE}/{VERSION}", "-k", lab.kver)
    assert result.rc == 6, result.output
    assert (
        f"Error! /var/lib/dkms/{MODULE}/original_module/{lab.kver}/{ARCH} is a symbolic link; "
        f"refusing to archive /lib/modules/{lab.kver}/kernel/drivers/crash_a.ko through it."
        in result.output
    )
    assert changed_outside(before, upper_state(lab.sb), TREE) == []
    assert lab.sb.exists(f"/lib/modules/{lab.kver}/kernel/drivers/crash_a.ko")
