"""Property-based tests (hypothesis) for every parser of outside input: the NUL-separated output
of the dkms.conf evaluator, modinfo output, version ordering, the package-manager hook inputs and
the rebuild log reader. Where dkms defines the meaning (VER, get_module_verinfo) the oracle is
dkms's own bash, run for real."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dkmshooks import rebuildlog, shellconf
from dkmshooks.errors import DkmsError
from dkmshooks.modinfo import parse_modinfo
from dkmshooks.versions import ver_gt, ver_key

pytestmark = pytest.mark.reliability

FAST = settings(max_examples=150, deadline=None)
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bash(script: str, *args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(
        ["bash", "-c", script, "bash", *args],
        input=stdin,
        stdout=subprocess.PIPE,
        check=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
    ).stdout


# -- the dkms.conf evaluator's records ------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
values = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b""))
arrays = st.dictionaries(names, st.dictionaries(st.integers(0, 10**6), values, max_size=4))


def encode(arrays: dict[str, dict[int, bytes]]) -> bytes:
    out = b""
    for name, items in arrays.items():
        for index, value in items.items():
            out += b"V\0" + name.encode() + b"\0" + str(index).encode() + b"\0" + value + b"\0"
    return out


@FAST
@given(arrays)
def test_records_round_trip(arrays: dict[str, dict[int, bytes]]) -> None:
    parsed = shellconf.parse_records(encode(arrays))
    expected = {
        n: {i: v.decode("utf-8", "surrogateescape") for i, v in items.items()}
        for n, items in arrays.items()
        if items
    }
    assert {n: dict(v) for n, v in parsed.arrays.items()} == expected
    for name, items in expected.items():
        for index in items:
            # what a dkms.conf set comes back byte for byte, even when it is not UTF-8
            assert (
                parsed.get(name, index).encode("utf-8", "surrogateescape") == (arrays[name][index])
            )


@FAST
@given(st.binary(max_size=400))
def test_records_parser_takes_any_bytes(data: bytes) -> None:
    parsed = shellconf.parse_records(data)
    assert all(isinstance(i, int) for items in parsed.arrays.values() for i in items)


@FAST
@given(arrays, st.binary(max_size=60))
def test_records_after_a_garbage_kind_are_ignored(
    arrays: dict[str, dict[int, bytes]], tail: bytes
) -> None:
    """The script only ever writes V and D records; anything else ends the input."""
    parsed = shellconf.parse_records(encode(arrays) + b"X\0" + tail)
    assert {n: dict(v) for n, v in parsed.arrays.items()} == {
        n: {i: v.decode("utf-8", "surrogateescape") for i, v in items.items()}
        for n, items in arrays.items()
        if items
    }


# characters dkms's export loop (`eval echo NAME[i]=\"$value\"`) carries unchanged: no blanks,
# quotes, globs, braces, `$` or backslashes, which that eval re-interprets
safe_value = st.lists(
    st.sampled_from([*"abcXYZ019._-+:/,@%=", "\xe9", "\xff", "\x80"]), max_size=20
).map("".join)


@SLOW
@given(st.dictionaries(st.integers(0, 50), safe_value, min_size=1, max_size=5))
def test_evaluated_conf_values_come_back_exactly(tmp_path_factory, items) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path_factory.mktemp("conf") / "dkms.conf"
    raw = b"".join(
        f"BUILT_MODULE_NAME[{i}]='".encode() + v.encode("latin-1") + b"'\n"
        for i, v in items.items()
    )
    conf.write_bytes(raw)
    got = shellconf.evaluate([conf], ["BUILT_MODULE_NAME"], scope={}, base_env=dict(os.environ))
    assert {
        i: v.encode("utf-8", "surrogateescape") for i, v in got.array("BUILT_MODULE_NAME").items()
    } == {i: v.encode("latin-1") for i, v in items.items()}


# -- modinfo output: dkms's get_module_verinfo is the oracle ----------------------------------

GET_MODULE_VERINFO = r"""
while read -a vals; do
    case "${vals[0]}" in
        version:) ver="${vals[1]}"; checksum="${vals[2]}" ;;
        srcversion:) srcver="${vals[1]}" ;;
    esac
done <<< "$(cat)"
printf '%s\0%s\0' "$ver" "${srcver:-$checksum}"
"""

modinfo_word = st.lists(
    st.sampled_from([*"abc019.-_:", "version:", "srcversion:", "\\", " ", "\t", "\r", "\x0b"]),
    max_size=8,
).map("".join)
modinfo_text = st.lists(modinfo_word, max_size=8).map("\n".join)


@FAST
@given(modinfo_text)
def test_modinfo_parsing_matches_dkms(text: str) -> None:
    out = bash(GET_MODULE_VERINFO, stdin=text.encode()).split(b"\0")
    assert parse_modinfo(text) == (out[0].decode(), out[1].decode())


@FAST
@given(st.text(max_size=300))
def test_modinfo_parsing_takes_any_text(text: str) -> None:
    version, srcversion = parse_modinfo(text)
    assert isinstance(version, str) and isinstance(srcversion, str)


def test_modinfo_parsing_of_a_real_module() -> None:
    text = (
        "filename:       /lib/modules/6.1.0-56-amd64/updates/dkms/dkms_test.ko\n"
        "version:        1.0\n"
        "description:    A simple dkms test module\n"
        "srcversion:     ABCDEF0123456789ABCDEF0\n"
    )
    assert parse_modinfo(text) == ("1.0", "ABCDEF0123456789ABCDEF0")


# -- version ordering: dkms's VER() (sed) is the oracle ---------------------------------------

VER = r"""
VER()
{
    echo $1 | sed -e 's:\([^0-9]\)\([0-9]\):\1 \2:g' \
        -e 's:\([0-9]\)\([^0-9]\):\1 \2:g' \
        -e 's:\(.*\): \1 :' \
        -e 's: \([0-9]\) : 00\1 :g' \
        -e 's: \([0-9][0-9]\) : 0\1 :g' \
        -e 's: ::g'
}
for v in "$@"; do printf '%s\0' "$(VER "$v")"; done
"""

version = st.lists(
    st.sampled_from([*"0123456789", *"0123456789", ".", "-", "_", "+", "~", "rc", "a", "Z", " "]),
    max_size=16,
).map("".join)


def _echo_safe(text: str) -> bool:
    """`echo $1` takes a first word like -n or -e as an option: dkms's quirk, not modelled."""
    words = text.split()
    return not words or not words[0].startswith("-")


@FAST
@given(st.lists(version, min_size=1, max_size=20))
def test_ver_key_is_dkms_ver(versions: list[str]) -> None:
    versions = [v for v in versions if _echo_safe(v)]
    assume(versions)
    expected = bash(VER, *versions).split(b"\0")[:-1]
    assert [ver_key(v) for v in versions] == [e.decode() for e in expected]


@FAST
@given(st.text(alphabet="0123456789.-_abc\u0663\u00b2\u2155", max_size=12))
def test_ver_key_treats_only_ascii_digits_as_digits(text: str) -> None:
    """sed's [0-9] in dkms: other Unicode digits are letters to it, so to us."""
    assume(_echo_safe(text))
    assert ver_key(text) == bash(VER, text).split(b"\0")[0].decode()


@FAST
@given(version, version, version)
def test_ver_ordering_is_a_total_order(a: str, b: str, c: str) -> None:
    assert not (ver_gt(a, b) and ver_gt(b, a))
    if ver_gt(a, b) and ver_gt(b, c):
        assert ver_gt(a, c)
    assert ver_gt(a, b) or ver_gt(b, a) or ver_key(a) == ver_key(b)


# -- package-manager hook inputs ------------------------------------------------------------

kver = st.from_regex(r"[0-9]\.[0-9]{1,2}\.[0-9]{1,3}(-[0-9]{1,3})?-[a-z0-9]{2,8}", fullmatch=True)
path_text = st.text(alphabet="/usrlibmodesvlinuz.-0123456789abcdefkrnlh", max_size=60)


def test_adapters_exist() -> None:
    pytest.importorskip("dkmshooks.adapters.apt")
    pytest.importorskip("dkmshooks.adapters.pacman")
    pytest.importorskip("dkmshooks.adapters.dnf")


@FAST
@given(st.text(max_size=80))
def test_apt_maint_params_take_any_text(text: str) -> None:
    apt = pytest.importorskip("dkmshooks.adapters.apt")
    assert all(isinstance(p, str) for p in apt.parse_maint_params(text))


@FAST
@given(st.lists(st.text(alphabet="abcxyz019 '\"-", max_size=10), max_size=5))
def test_apt_maint_params_undo_shell_quoting(words: list[str]) -> None:
    apt = pytest.importorskip("dkmshooks.adapters.apt")
    assert list(apt.parse_maint_params(shlex.join(words))) == words


@FAST
@given(
    st.sampled_from(["preinst", "postinst", "header_postinst", "prerm", "postrm"]),
    st.text(max_size=30),
    st.text(max_size=30),
)
def test_apt_hook_calls_give_a_trigger_none_or_a_usage_error(
    kind: str, release: str, params: str
) -> None:
    apt = pytest.importorskip("dkmshooks.adapters.apt")
    try:
        trigger = apt.trigger_from_hook(
            kind, [release], {"DEB_MAINT_PARAMS": params}, transaction="t"
        )
    except DkmsError:
        return
    if trigger is not None:
        (event,) = trigger.kernels
        assert event.kver == release and "/" not in release and release not in (".", "..")


@FAST
@given(st.lists(st.one_of(path_text, st.text(max_size=40)), max_size=20))
def test_pacman_targets_are_one_path_component(lines: list[str]) -> None:
    pacman = pytest.importorskip("dkmshooks.adapters.pacman")
    targets = pacman.parse_targets(lines)
    for name in (*targets.images, *targets.headers, *targets.sources):
        assert name and "/" not in name and name not in (".", "..")


@FAST
@given(kver)
def test_pacman_recognises_kernel_paths(release: str) -> None:
    pacman = pytest.importorskip("dkmshooks.adapters.pacman")
    assert pacman.parse_target(f"usr/lib/modules/{release}/vmlinuz") == ("image", release)
    assert pacman.parse_target(f"usr/lib/modules/{release}/build/include/") == (
        "headers",
        release,
    )


@FAST
@given(
    st.lists(
        st.builds(
            lambda name, inbound, provides, files: (name, inbound, provides, files),
            st.sampled_from(["kernel-core", "kernel-devel", "kernel-rt-devel", "kernelx"]),
            st.booleans(),
            st.lists(
                st.builds(
                    lambda n, v: f"{n} = {v}",
                    st.sampled_from(["kernel-uname-r", "kernel-devel-uname-r", "other"]),
                    st.one_of(kver, st.text(alphabet="./ab0", max_size=8)),
                ),
                max_size=2,
            ),
            st.lists(
                st.one_of(
                    kver.map(lambda k: f"/lib/modules/{k}/vmlinuz"),
                    st.text(alphabet="/usrckenl.0-", max_size=25).map(
                        lambda t: f"/usr/src/kernels/{t}"
                    ),
                ),
                max_size=2,
            ),
        ),
        max_size=4,
    )
)
def test_dnf_packages_give_kernel_events_never_a_crash(
    packages: list[tuple[str, bool, list[str], list[str]]],
) -> None:
    """Whatever rpm headers a transaction carries, a hook turns them into events for valid
    kernel releases; it must not die on a package naming `..` or `a/b` as its release."""
    dnf = pytest.importorskip("dkmshooks.adapters.dnf")
    pkgs = [
        dnf.Package(name, "1", "1", "x86_64", inbound, tuple(provides), tuple(files))
        for name, inbound, provides, files in packages
    ]
    for event in dnf.kernel_events(pkgs):
        assert "/" not in event.kver and event.kver not in ("", ".", "..")


@FAST
@given(st.text(max_size=120))
def test_dnf5_actions_lines_parse_or_say_why(line: str) -> None:
    actions = pytest.importorskip("dkmshooks.adapters.dnf5_actions")
    try:
        actions.parse_line(line, 1)
    except actions.ActionsError:
        pass


# -- the rebuild log reader -----------------------------------------------------------------


def _record(i: int) -> rebuildlog.LogRecord:
    return rebuildlog.LogRecord(
        time="2026-01-01T00:00:00Z",
        source="apt",
        transaction=f"t{i}",
        module="m",
        version="1",
        kernel="6.1.0-56-amd64",
        arch="x86_64",
        action="install",
        outcome="installed",
    )


@FAST
@given(st.binary(max_size=2000))
def test_log_reader_takes_any_bytes(tmp_path_factory, data: bytes) -> None:  # type: ignore[no-untyped-def]
    path: Path = tmp_path_factory.mktemp("log") / "rebuild.log"
    path.write_bytes(data)
    records, stats = rebuildlog.read_with_stats(path)
    assert stats.records == len(records)


@FAST
@given(st.lists(st.one_of(st.integers(0, 999), st.binary(max_size=80)), max_size=20))
def test_log_reader_keeps_every_good_line_among_garbage(tmp_path_factory, items) -> None:  # type: ignore[no-untyped-def]
    path: Path = tmp_path_factory.mktemp("log") / "rebuild.log"
    lines = [
        _record(item).to_json().encode() if isinstance(item, int) else item.replace(b"\n", b"")
        for item in items
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    good = [_record(item) for item in items if isinstance(item, int)]
    records = list(rebuildlog.read(path))
    assert [r for r in records if r in good] == good
