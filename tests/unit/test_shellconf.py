"""shellconf's no-bash path must give exactly what bash gives, and must step aside (None) for
anything it cannot be sure of."""

from __future__ import annotations

from pathlib import Path

import pytest

from dkmshooks import run, shellconf

VARS = ["PACKAGE_NAME", "PACKAGE_VERSION", "MAKE", "CLEAN", "parallel_jobs", "tmp_location"]
SCOPE = {"kernelver": "6.1.0-1-amd64", "tmp_location": "/tmp", "parallel_jobs": "4"}


def bash_values(files: list[Path], deprecated: tuple[str, ...] = ()) -> shellconf.ShellValues:
    env = {"PATH": "/usr/bin:/bin", **SCOPE}
    _, out, _ = run.run_bash_bytes(
        shellconf._EVAL_SCRIPT,
        " ".join(VARS),
        " ".join(deprecated),
        *[str(f) for f in files],
        env=env,
    )
    return shellconf.parse_records(out)


def literal_values(
    files: list[Path], deprecated: tuple[str, ...] = ()
) -> shellconf.ShellValues | None:
    return shellconf.evaluate_literal(
        files, VARS, scope=SCOPE, deprecated=deprecated, env={"PATH": "/usr/bin:/bin"}
    )


def as_plain(values: shellconf.ShellValues) -> tuple[dict[str, dict[int, str]], tuple[object, ...]]:
    return {k: dict(v) for k, v in values.arrays.items()}, tuple(values.deprecations)


LITERAL_CASES = [
    "",
    "# all comments\n#\n   # indented\n",
    "# a comment ending in a backslash does not continue \\\nPACKAGE_NAME=foo\n",
    'PACKAGE_NAME="foo"\nPACKAGE_VERSION=1.2.3-4+deb12u1\n',
    "PACKAGE_NAME='single quoted'\n",
    'MAKE[0]="make  -C   /lib/modules/x/build\tM=/y"\nMAKE[3]=other\n',
    'MAKE="  leading and trailing  "\n',
    "PACKAGE_NAME=foo # trailing comment\n",
    "parallel_jobs=8\ntmp_location=/var/tmp\n",
    "local_name=ignored\nPACKAGE_NAME=\n",
    "CLEAN=true\nPACKAGE_NAME=a=b:c,d@e%f\n",
    "PACKAGE_NAME=foo",  # no final newline
]


@pytest.mark.parametrize("text", LITERAL_CASES)
def test_literal_path_matches_bash(tmp_path: Path, text: str) -> None:
    conf = tmp_path / "a.conf"
    conf.write_text(text)
    literal = literal_values([conf], ("CLEAN",))
    assert literal is not None
    assert as_plain(literal) == as_plain(bash_values([conf], ("CLEAN",)))


def test_later_files_replace_only_their_indices(tmp_path: Path) -> None:
    first, second, missing = tmp_path / "1.conf", tmp_path / "2.conf", tmp_path / "none.conf"
    first.write_text("MAKE[0]=a\nMAKE[1]=b\nPACKAGE_NAME=x\nCLEAN=yes\n")
    second.write_text("MAKE=c\nPACKAGE_VERSION=2\n")
    files = [first, missing, second]
    literal = literal_values(files, ("CLEAN",))
    assert literal is not None
    assert as_plain(literal) == as_plain(bash_values(files, ("CLEAN",)))
    assert literal.array("MAKE") == {0: "c", 1: "b"}


def test_no_files_gives_the_scope(tmp_path: Path) -> None:
    files = [tmp_path / "missing.conf"]
    literal = literal_values(files)
    assert literal is not None
    assert as_plain(literal) == as_plain(bash_values(files))


@pytest.mark.parametrize(
    "text",
    [
        'MAKE[0]="make -C ${kernel_source_dir}"\n',
        "PACKAGE_NAME=$(echo x)\n",
        "PACKAGE_NAME=`echo x`\n",
        'PACKAGE_NAME="a\\"b"\n',
        "PACKAGE_NAME=x#y\n",
        "PACKAGE_NAME=x y\n",
        "PACKAGE_NAME=~/x\n",
        "PACKAGE_NAME=*\n",
        "PACKAGE_NAME=foo\r\n",
        "IFS=x\n",
        "PACKAGE_NAME=foo; echo hi\n",
        "if true; then PACKAGE_NAME=foo; fi\n",
        ". /etc/other.conf\n",
        "export PACKAGE_NAME=foo\n",
        "PACKAGE_NAME+=foo\n",
        "MAKE[08]=x\n",
        "PACKAGE_NAME='it''s'\n",
        'PACKAGE_NAME="caf\u00e9"\n',
    ],
)
def test_bash_is_used_for_anything_else(tmp_path: Path, text: str) -> None:
    conf = tmp_path / "a.conf"
    conf.write_text(text)
    assert literal_values([conf]) is None


def test_scope_values_that_bash_would_change_go_to_bash(tmp_path: Path) -> None:
    conf = tmp_path / "a.conf"
    conf.write_text("PACKAGE_NAME=foo\n")
    odd = {"tmp_location": "/tmp/$x"}
    assert shellconf.evaluate_literal([conf], VARS, scope=odd) is None
    # without any file bash never re-reads the scope, so it comes back as it is
    assert shellconf.evaluate_literal([tmp_path / "none"], VARS, scope=odd) is not None


def test_directive_environment_goes_to_bash(tmp_path: Path) -> None:
    conf = tmp_path / "a.conf"
    conf.write_text("PACKAGE_NAME=foo\n")
    env = {"DKMS_DIRECTIVE_1": "MAKE=x"}
    assert shellconf.evaluate_literal([conf], VARS, scope=SCOPE, env=env) is None


def test_unreadable_file_goes_to_bash(tmp_path: Path) -> None:
    conf = tmp_path / "dir.conf"
    conf.mkdir()
    assert literal_values([conf]) is None
