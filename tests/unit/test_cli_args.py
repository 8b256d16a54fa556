from __future__ import annotations

from pathlib import Path

from dkmshooks.cli import parse_args


def test_module_version_forms() -> None:
    assert (parse_args(["add", "foo/1.0"]).module, parse_args(["add", "foo/1.0"]).version) == (
        "foo",
        "1.0",
    )
    args = parse_args(["build", "-m", "foo", "-v", "2.0", "-k", "6.1.0-56-amd64/x86_64"])
    assert (args.module, args.version, args.kernels, args.arches) == (
        "foo",
        "2.0",
        ["6.1.0-56-amd64"],
        ["x86_64"],
    )
    assert parse_args(["-m", "foo/1/2"]).version == "1/2"


def test_prefix_options_and_equals() -> None:
    args = parse_args(["--modulefoo=bar/3", "--kernelver=K1", "--kernelver", "K2", "-j", "4"])
    assert (args.module, args.version) == ("bar", "3")
    assert args.kernels == ["K1", "K2"]
    assert args.parallel_jobs == "4"
    assert parse_args(["--archive=x.tgz"]).archive == "x.tgz"
    assert parse_args(["--arch", "x86_64"]).arches == ["x86_64"]


def test_unknown_short_forms() -> None:
    assert parse_args(["-j4"]).unknown_option == "-j4"
    assert parse_args(["-k=K"]).unknown_option == "-k=K"


def test_second_action_and_stray_word() -> None:
    assert parse_args(["add", "build"]).second_action
    args = parse_args(["add", "foo/1", "extra"])
    assert args.warnings == ["I do not know how to handle extra."]


def test_positional_paths(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "dkms.conf").write_text("PACKAGE_NAME=x\n")
    assert parse_args(["add", str(src)]).try_source_tree == str(src)
    assert parse_args(["add", str(src / "dkms.conf")]).try_source_tree == f"{src}/./"
    tarball = tmp_path / "x.tar.gz"
    tarball.write_bytes(b"")
    assert parse_args(["ldtarball", str(tarball)]).archive == str(tarball)
