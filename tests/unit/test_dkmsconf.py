from __future__ import annotations

from pathlib import Path

import pytest

from dkmshooks.dkmsconf import override_dest_location, read_conf
from dkmshooks.errors import BadConfError, ConfMissingError

from .helpers import Captured, conf_context


def write(root: Path, text: str) -> Path:
    path = root / "dkms.conf"
    path.write_text(text)
    return path


def test_scalars_arrays_and_scope(root: Path) -> None:
    conf_path = write(
        root,
        'PACKAGE_NAME="foo"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]="foo"\n'
        'DEST_MODULE_LOCATION[0]="/kernel/extra"\nMAKE[0]="make KVER=$kernelver"\n'
        "AUTOINSTALL=YES\nBUILD_DEPENDS=(bar baz)\n",
    )
    conf = read_conf(
        conf_path, "foo", "1.0", "6.1.0-56-amd64", "x86_64", conf_context(root), Captured()
    )
    assert conf.package_name == "foo"
    assert conf.make_command == "make KVER=6.1.0-56-amd64"
    assert conf.autoinstall
    assert conf.build_depends == ("bar", "baz")
    assert conf.modules[0].dest_location == "/updates/dkms"
    assert conf.modules[0].conf_dest_location == "/kernel/extra"


def test_crlf_is_stripped_and_functions_do_not_leak(root: Path) -> None:
    conf_path = write(
        root,
        'PACKAGE_NAME="foo"\r\nPACKAGE_VERSION="1.0"\r\nDEST_MODULE_LOCATION[0]="/extra"\r\n'
        "read_conf() { echo hijack; }\r\nSECRET=1\r\n",
    )
    conf = read_conf(conf_path, "foo", "1.0", "K", "x86_64", conf_context(root), Captured())
    assert conf.package_version == "1.0"
    assert conf.modules[0].built_name == "foo"
    assert "SECRET" not in conf.values.arrays


def test_validation_messages_in_dkms_order(root: Path) -> None:
    conf_path = write(
        root,
        'BUILT_MODULE_NAME[0]="a.ko"\nDEST_MODULE_LOCATION[0]="/bad"\nAUTOINSTALL=maybe\n',
    )
    console = Captured()
    with pytest.raises(BadConfError) as info:
        read_conf(
            conf_path, "foo", "1.0", "K", "x86_64", conf_context(root), console, shown_path="X"
        )
    assert console.text == (
        "dkms.conf: Error! No 'PACKAGE_NAME' directive specified.\n"
        "dkms.conf: Error! No 'PACKAGE_VERSION' directive specified.\n"
        "dkms.conf: Error! 'BUILT_MODULE_NAME' directive ends in '.o' or '.ko' in record #0.\n"
        "dkms.conf: Error! 'DEST_MODULE_NAME' directive ends in '.o' or '.ko' in record #0.\n"
        "dkms.conf: Error! Directive 'DEST_MODULE_LOCATION' does not begin with\n"
        "'/kernel', '/updates', or '/extra' in record #0.\n"
        "dkms.conf: Error! Unsupported AUTOINSTALL value 'maybe'\n"
    )
    assert info.value.lines == (
        "Bad conf file.",
        "File: X does not represent a valid dkms.conf file.",
    )


def test_sparse_arrays_count_to_highest_index(root: Path) -> None:
    conf_path = write(
        root,
        "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME[2]=c\nDEST_MODULE_LOCATION[2]=/extra\n",
    )
    console = Captured()
    with pytest.raises(BadConfError):
        read_conf(conf_path, "foo", "1", "K", "x86_64", conf_context(root), console)
    assert "No 'BUILT_MODULE_NAME' directive specified for record #0." in console.text
    assert "No 'DEST_MODULE_LOCATION' directive specified for record #1." in console.text


def test_overrides_replace_only_their_indices(root: Path) -> None:
    conf_path = write(
        root,
        "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=(a b)\n"
        "DEST_MODULE_LOCATION=(/extra /extra)\n",
    )
    etc = root / "etc/dkms"
    etc.mkdir(parents=True)
    (etc / "foo-1-K.conf").write_text("BUILT_MODULE_NAME[1]=override\n")
    (etc / "foo--K-x86_64.conf").write_text("AUTOINSTALL=yes\n")
    conf = read_conf(conf_path, "foo", "1", "K", "x86_64", conf_context(root), Captured())
    assert [m.built_name for m in conf.modules] == ["a", "override"]
    assert conf.autoinstall


def test_directives_override_and_echo(root: Path) -> None:
    conf_path = write(root, "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nDEST_MODULE_LOCATION=/extra\n")
    console = Captured()
    conf = read_conf(
        conf_path,
        "foo",
        "1",
        "K",
        "x86_64",
        conf_context(root, directives=(("PACKAGE_VERSION", "2"),)),
        console,
    )
    assert conf.package_version == "2"
    assert console.text == 'DIRECTIVE: PACKAGE_VERSION="2"\n'


def test_strict_mode_duplicates_and_deprecations(root: Path) -> None:
    conf_path = write(
        root,
        "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=(a a)\n"
        "DEST_MODULE_LOCATION=(/extra /extra)\nREMAKE_INITRD=yes\nCLEAN=true\n",
    )
    console = Captured()
    with pytest.raises(BadConfError):
        read_conf(conf_path, "foo", "1", "K", "x86_64", conf_context(root), console, strict=True)
    assert f"Deprecated feature: REMAKE_INITRD ({conf_path})\n" in console.text
    assert "CLEAN" not in console.text
    assert "Duplicate module 'a' in 'BUILT_MODULE_NAME[1]'." in console.text
    assert "Duplicate module 'a' in 'DEST_MODULE_NAME[1]'." in console.text


def test_build_exclusive_index_zero_is_global(root: Path) -> None:
    conf_path = write(
        root,
        "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=(a b)\n"
        "DEST_MODULE_LOCATION=(/extra /extra)\nBUILD_EXCLUSIVE_KERNEL[0]='^5\\.'\n",
    )
    conf = read_conf(
        conf_path, "foo", "1", "6.1.0-56-amd64", "x86_64", conf_context(root), Captured()
    )
    assert [m.excluded for m in conf.modules] == [True, True]
    assert conf.build_exclude


def test_build_exclusive_config_and_per_module(root: Path) -> None:
    config = root / "lib/modules/K/build/.config"
    config.parent.mkdir(parents=True)
    config.write_text("CONFIG_FOO=y\nCONFIG_BAR=m\n")
    conf_path = write(
        root,
        "PACKAGE_NAME=foo\nPACKAGE_VERSION=1\nBUILT_MODULE_NAME=(a b c)\n"
        "DEST_MODULE_LOCATION=(/extra /extra /extra)\n"
        "BUILD_EXCLUSIVE_CONFIG[1]='CONFIG_FOO !CONFIG_BAR'\nBUILD_EXCLUSIVE_ARCH[2]='^arm'\n",
    )
    conf = read_conf(conf_path, "foo", "1", "6.1", "x86_64", conf_context(root), Captured())
    assert [m.excluded for m in conf.modules] == [False, True, True]
    assert not conf.build_exclude


def test_missing_conf(root: Path) -> None:
    with pytest.raises(ConfMissingError):
        read_conf(root / "nope", "foo", "1", "K", "x86_64", conf_context(root), Captured())


def test_dest_override_per_distro() -> None:
    assert override_dest_location("rhel fedora", "", "/kernel/x") == "/extra"
    assert override_dest_location("opensuse-leap", "", "/kernel/x") == "/updates"
    assert override_dest_location("arch", "", "/kernel/x") == "/updates/dkms"
    assert override_dest_location("gentoo", "", "/kernel/x") == "/kernel/x"
    assert override_dest_location("debian", "addon", "/kernel/x") == "/addon"


def test_clang_kernel_adds_llvm_and_follows_its_files(root: Path) -> None:
    """dkms appends LLVM=1 for a clang-built kernel: vmlinux's .comment when there is a vmlinux,
    else CONFIG_CC_IS_CLANG in the config. The verdict is remembered only while both files are
    unchanged."""
    conf_path = write(root, 'PACKAGE_NAME="foo"\nPACKAGE_VERSION="1"\nMAKE[0]="make all"\n')
    build = root / "lib/modules/K/build"
    build.mkdir(parents=True)
    config = build / ".config"

    def make() -> str:
        return read_conf(
            conf_path, "foo", "1", "K", "x86_64", conf_context(root), Captured()
        ).make_command

    assert make() == "make all"  # no config, no vmlinux
    config.write_text("CONFIG_MODULES=y\nCONFIG_CC_IS_GCC=y\n")
    assert make() == "make all"
    config.write_text("CONFIG_MODULES=y\nCONFIG_CC_IS_CLANG=y\n")
    assert make() == "make all LLVM=1"
    vmlinux = build / "vmlinux"
    vmlinux.write_bytes(b"\x7fELF ... GCC: (Debian 12.2.0-14) 12.2.0\0")
    assert make() == "make all"  # vmlinux decides when it is there
    vmlinux.write_bytes(b"\x7fELF ... Debian clang version 14.0.6\0")
    assert make() == "make all LLVM=1"
    vmlinux.unlink()
    config.write_text("CONFIG_MODULES=y\nCONFIG_CC_IS_GCC=y\n")
    assert make() == "make all"
