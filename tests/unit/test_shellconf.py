"""shellconf's no-bash path must give exactly what bash gives, and must step aside (None) for
anything it cannot be sure of."""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path

import pytest

from dkmshooks import run, shellconf
from dkmshooks.dkmsconf import read_conf

from .helpers import Captured, conf_context, random_conf

VARS = ["PACKAGE_NAME", "PACKAGE_VERSION", "MAKE", "CLEAN", "parallel_jobs", "tmp_location"]
SCOPE = {
    "kernelver": "6.1.0-1-amd64",
    "tmp_location": "/tmp",
    "parallel_jobs": "4",
    "kernel_source_dir": "/lib/modules/6.1.0-1-amd64/build",
    "dkms_tree": "/var/lib/dkms",
    "spaced": " a  b\tc ",
    "odd": "/tmp/$x",
    "star": "*",
    "quote": 'say "hi"',
    "UPPER": "up",
}


def bash_values(
    files: list[Path], deprecated: tuple[str, ...] = (), variables: list[str] = VARS
) -> shellconf.ShellValues:
    env = {"PATH": "/usr/bin:/bin", **SCOPE}
    _, out, _ = run.run_bash_bytes(
        shellconf._EVAL_SCRIPT,
        " ".join(variables),
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


# -- simple references ($name, ${name}) --------------------------------------------------------


def assert_same_as_bash(files: list[Path], deprecated: tuple[str, ...] = ()) -> None:
    literal = literal_values(files, deprecated)
    assert literal is not None
    assert as_plain(literal) == as_plain(bash_values(files, deprecated))


def write_confs(tmp_path: Path, *texts: str) -> list[Path]:
    files = []
    for i, text in enumerate(texts):
        files.append(tmp_path / f"{i}.conf")
        files[-1].write_text(text)
    return files


REFERENCE_CASES = [
    "PACKAGE_NAME=foo\nPACKAGE_VERSION=1.0\n"
    'MAKE[0]="make -C $kernel_source_dir M=$dkms_tree/$PACKAGE_NAME/$PACKAGE_VERSION/build"\n',
    'MAKE[0]="make KVER=${kernelver} -C ${kernel_source_dir}"\n',
    "PACKAGE_NAME=foo\nCLEAN=${PACKAGE_NAME}\nMAKE=$PACKAGE_NAME.ko\n",
    "PACKAGE_NAME=x\nPACKAGE_VERSION=${PACKAGE_NAME}_suffix\n",  # braces end the name
    "PACKAGE_NAME=x\nPACKAGE_VERSION=$PACKAGE_NAME-1:2%3@4=5,6+7\n",  # inert chars end it
    'PACKAGE_NAME=${PACKAGE_VERSION}\nMAKE="-$CLEAN-"\n',  # unset whitelisted: empty
    "MAKE[1]=x\nPACKAGE_NAME=$MAKE\n",  # $MAKE is ${MAKE[0]}, unset
    "MAKE[0]=a\nMAKE[1]=$MAKE/b\n",
    'MAKE=a\nMAKE="$MAKE   b"\nPACKAGE_NAME="$MAKE"\n',  # raw within the file, collapsed after
    'ver=1.2\nbase=/usr/src\nPACKAGE_VERSION=$ver\nMAKE="make -C $base/${ver}"\n',
    "x=a\nx=$x.b\nPACKAGE_NAME=$x\n",
    "kernelver=custom\nMAKE=$kernelver\n",  # a helper shadows the scope
    "kernelver[1]=other\nMAKE=$kernelver\n",  # ...but not at another index
    'x="  a   b  "\nMAKE=$x\nCLEAN="$x"\nPACKAGE_NAME=-$x-\n',  # blanks survive until the echo
    'PACKAGE_NAME=$spaced\nMAKE="x${spaced}y"\n',
    'tmp_location=$tmp_location/sub\nparallel_jobs="$parallel_jobs $parallel_jobs"\n',
    "PACKAGE_NAME=$kernelver # not $HOME\n",
    "PACKAGE_NAME='kernelver'\nMAKE=\"${kernelver}\"\n",
    "x=$odd\ny=$star\nz=$quote\nPACKAGE_NAME=ok\n",  # unused helpers may hold anything
    'MAKE="$PACKAGE_NAME"\nPACKAGE_NAME=late\n',  # order matters
    'MAKE="\t$kernelver\t"\n',
]


@pytest.mark.parametrize("text", REFERENCE_CASES)
def test_references_match_bash(tmp_path: Path, text: str) -> None:
    assert_same_as_bash(write_confs(tmp_path, text), ("CLEAN",))


@pytest.mark.parametrize(
    "texts",
    [
        # a later file sees what earlier ones left, after the parent re-read it (blanks collapsed)
        ('PACKAGE_NAME=foo\nMAKE="a   b"\n', 'MAKE[1]="$MAKE  $PACKAGE_NAME"\n'),
        ("tmp_location=/a\n", "MAKE=$tmp_location\n", "CLEAN=${MAKE}x\n"),
        # a scope name changed in one file is back to the scope's value in the next
        ("kernelver=override\n", "PACKAGE_NAME=$kernelver\n"),
        ("PACKAGE_NAME=foo\n", "PACKAGE_NAME=$PACKAGE_NAME-bar\nCLEAN=$PACKAGE_NAME\n"),
        ("CLEAN=$kernelver\n", "", 'CLEAN="$CLEAN $CLEAN"\n'),
    ],
)
def test_references_across_files_match_bash(tmp_path: Path, texts: tuple[str, ...]) -> None:
    files = write_confs(tmp_path, *texts)
    files.insert(1, tmp_path / "missing.conf")
    assert_same_as_bash(files, ("CLEAN",))


@pytest.mark.parametrize(
    "text",
    [
        "PACKAGE_NAME=$HOME\n",  # the caller's environment
        "PACKAGE_NAME=$PATH\n",
        "PACKAGE_NAME=${foo}\n",  # never assigned: may be in the environment too
        "PACKAGE_NAME=$UPPER\n",  # upper-case and not whitelisted: possibly bash's own
        "PACKAGE_NAME=x\nMAKE=$PACKAGE_NAMEx\n",  # one longer name, unknown
        "PACKAGE_NAME=x\nMAKE=$kernelver_x\n",
        "x[1]=a\nPACKAGE_NAME=$x\n",  # $x is x[0], which the environment may hold
        "MAKE[1]=a\nMAKE=$MAKE[1]\n",
        "MAKE=${MAKE[1]}\n",
        "MAKE=${#kernelver}\n",
        "MAKE=${kernelver%-*}\n",
        "MAKE=${kernelver:-x}\n",
        "MAKE=${kernelver\n",
        'MAKE="$1"\n',
        "MAKE=$@\n",
        "MAKE=$$\n",
        "MAKE=$?\n",
        "MAKE=$_\n",
        "MAKE=$CR\n",  # safe_source's own variables
        "MAKE=$__f\n",
        "MAKE=a$\n",
        'MAKE="a$"\n',
        "MAKE=$((1+2))\n",
        "MAKE=$'x'\n",
        'MAKE="\\$kernelver"\n',
        "MAKE=`echo $kernelver`\n",
        "MAKE=$odd\n",  # would be expanded again when the parent re-reads it
        'MAKE="$star"\n',  # would glob in the echo
        "MAKE=$quote\n",
        "x=$odd\nMAKE=$x\n",
        "IFS=$kernelver\n",
        "FOO=$kernelver\n",
        "x=$HOME\n",  # a helper whose value is unknown
    ],
)
def test_references_bash_must_answer(tmp_path: Path, text: str) -> None:
    assert literal_values(write_confs(tmp_path, text)) is None


def test_helpers_do_not_survive_to_the_next_file(tmp_path: Path) -> None:
    files = write_confs(tmp_path, "x=1\n", "PACKAGE_NAME=$x\n")
    assert literal_values(files) is None
    # unset in bash, but only because the environment has no x
    assert bash_values(files).get("PACKAGE_NAME") == ""


def test_whitelisted_scope_value_with_blank_runs_goes_to_bash(tmp_path: Path) -> None:
    files = write_confs(tmp_path, "PACKAGE_NAME=$tmp_location\n")
    scope = {**SCOPE, "tmp_location": "/a  b"}
    assert shellconf.evaluate_literal(files, VARS, scope=scope) is None


@pytest.mark.parametrize(
    "key", ["BASH_ENV", "SHELLOPTS", "BASHOPTS", "POSIXLY_CORRECT", "BASH_FUNC_echo%%"]
)
def test_environment_bash_reads_at_startup_goes_to_bash(tmp_path: Path, key: str) -> None:
    files = write_confs(tmp_path, "PACKAGE_NAME=$kernelver\n")
    env = {"PATH": "/usr/bin:/bin", key: "x"}
    assert shellconf.evaluate_literal(files, VARS, scope=SCOPE, env=env) is None


def test_failing_lines_with_many_references_fail_fast(tmp_path: Path) -> None:
    # without the lookahead in _REF each `$name` could end at any of its characters
    text = 'MAKE="' + "$kernel_source_dir_abcdefgh " * 12 + '["\n'
    start = time.monotonic()
    assert literal_values(write_confs(tmp_path, text)) is None
    assert time.monotonic() - start < 1


def _random_conf(rng: random.Random) -> str:
    names = ["PACKAGE_NAME", "MAKE", "MAKE[1]", "CLEAN", "tmp_location", "x", "kernelver"]
    refs = ["$PACKAGE_NAME", "${MAKE}", "$CLEAN", "$tmp_location", "$x", "${kernelver}"]
    refs += ["$spaced", "$dkms_tree", "$parallel_jobs"]
    words = ["a", "-", "/", "  ", "\t", "b.c", "=", ":"]
    return random_conf(rng, names, refs, words, 0.5)


def _needs_bash(files: list[Path]) -> bool:
    """A reference to a name that is neither whitelisted, nor in SCOPE, nor assigned earlier in
    the same file (where `$x` next to word characters is a longer name)."""
    for f in files:
        helpers: set[str] = set()
        for line in f.read_text().splitlines():
            for ref in re.finditer(r"\$(?:\{(\w+)\}|(\w+))", line):
                name = ref.group(1) or ref.group(2)
                if name not in VARS and name not in SCOPE and name not in helpers:
                    return True
            helpers.add(line.split("=", 1)[0])
    return False


@pytest.mark.parametrize("seed", range(60))
def test_random_reference_files_match_bash(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    files = write_confs(tmp_path, *(_random_conf(rng) for _ in range(rng.randint(1, 3))))
    literal = literal_values(files, ("CLEAN",))
    if _needs_bash(files):
        assert literal is None
    else:
        assert literal is not None
        assert as_plain(literal) == as_plain(bash_values(files, ("CLEAN",)))


def test_archive_dkms_conf_needs_no_bash(tmp_path: Path) -> None:
    conf = tmp_path / "dkms.conf"
    conf.write_text(
        'PACKAGE_NAME="foo"\n'
        'PACKAGE_VERSION="1.0"\n'
        "BUILT_MODULE_NAME[0]=${PACKAGE_NAME}\n"
        'DEST_MODULE_LOCATION[0]="/updates/dkms"\n'
        'MAKE[0]="make -C $kernel_source_dir'
        ' M=$dkms_tree/$PACKAGE_NAME/$PACKAGE_VERSION/build"\n'
        'AUTOINSTALL="yes"\n'
    )
    # no bash on this PATH: read_conf can only succeed without it
    ctx = conf_context(tmp_path, environ={"PATH": os.fspath(tmp_path / "empty")})
    with pytest.raises(FileNotFoundError):
        run.run_bash_bytes("true", env=ctx.environ)
    got = read_conf(conf, "foo", "1.0", "K", "x86_64", ctx, Captured(), strict=True)
    assert (
        got.make_command
        == f"make -C {tmp_path}/lib/modules/K/build M={tmp_path}/var/lib/dkms/foo/1.0/build"
    )
    assert got.modules[0].built_name == "foo"
    assert got.autoinstall
