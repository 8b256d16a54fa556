"""A dkms.conf evaluated once for every kernel (confcache's shared entries, dkmsconf's
shared_values / values_for_kernel) must give each kernel exactly what evaluating the conf for
that kernel gives. Bash is the judge."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dkmshooks import shellconf
from dkmshooks.dkmsconf import ConfContext, evaluate_conf, shared_values, values_for_kernel

from .helpers import conf_context, random_conf

ARCH = "x86_64"
# (release, kernel_source_dir, kernel_config); the last two are not words the substitution is
# exact for, so values_for_kernel must refuse them
KERNELS = [
    ("6.1.0-1-amd64", "/lib/modules/6.1.0-1-amd64/build", "/boot/config-6.1.0-1-amd64"),
    ("6.1.0-2-amd64", "/usr/src/linux-headers-6.1.0-2-amd64", "/usr/src/h-2/.config"),
    ("5.10.0+deb11u3", "/lib/modules/5.10.0+deb11u3/build", "/x/include/config/auto.conf"),
    ("6.8.0-rc1~test", "/lib/modules/6.8.0-rc1~test/build", "/boot/config"),
    ("6.1.0-3-amd64", "/src with blanks/build", "/boot/config-6.1.0-3-amd64"),
]
SUBSTITUTABLE = {KERNELS[0][0], KERNELS[1][0], KERNELS[2][0]}


def context(root: Path, kernel: tuple[str, str, str], *, bash: bool = False) -> ConfContext:
    environ = {"PATH": "/usr/bin:/bin"}
    if bash:
        environ["BASH_ENV"] = ""  # an empty BASH_ENV reads nothing, but keeps the no-bash path off
    return conf_context(
        root,
        kernel_source_dir=Path(kernel[1]),
        kernel_config=Path(kernel[2]),
        environ=environ,
    )


def plain(values: shellconf.ShellValues) -> tuple[dict[str, dict[int, str]], tuple[object, ...]]:
    return {k: dict(v) for k, v in values.arrays.items()}, tuple(values.deprecations)


def _random_conf(rng: random.Random) -> str:
    names = ["PACKAGE_NAME", "MAKE", "MAKE[1]", "BUILT_MODULE_NAME[0]", "MAKE_MATCH[1]", "x", "y"]
    refs = ["$kernelver", "${kernel_source_dir}", "$kernel_config", "$x", "${y}", "$arch"]
    refs += ["$PACKAGE_NAME", "$dkms_tree", "$module"]
    # the last word is a placeholder written literally: it must not be taken for one
    words = ["a", "-", "/", "  ", "\t", "b.c", "=", ":", "@dkmshooks.kernelver@"]
    return random_conf(rng, names, refs, words, 0.6)


def share(
    root: Path, text: str, kernel: tuple[str, str, str] = KERNELS[0]
) -> tuple[shellconf.ShellValues, set[str], shellconf.ShellValues | None]:
    """`text` as root/dkms.conf, evaluated for `kernel`: its values, the names of the scope
    they were computed from, and what shared_values makes of them."""
    (root / "etc/dkms").mkdir(parents=True, exist_ok=True)
    conf = root / "dkms.conf"
    conf.write_text(text)
    ctx = context(root, kernel)
    consulted: set[str] = set()
    values = evaluate_conf(conf, "m", "1.0", kernel[0], ARCH, ctx, consulted=consulted)
    shared = shared_values(values, consulted, conf, "m", "1.0", kernel[0], ARCH, ctx)
    return values, consulted, shared


@pytest.mark.parametrize("first", [0, 1])
def test_shared_values_give_each_kernel_what_bash_gives(tmp_path: Path, first: int) -> None:
    root = tmp_path
    conf = root / "dkms.conf"
    rng = random.Random(first)
    shared_count = 0
    compared = 0
    with_kernel = 0
    for _ in range(80):
        _, consulted, shared = share(root, _random_conf(rng), KERNELS[first])
        if shared is None:
            continue
        shared_count += 1
        with_kernel += bool(consulted & {"kernelver", "kernel_source_dir", "kernel_config"})
        for kernel in KERNELS:
            got = values_for_kernel(shared, kernel[0], context(root, kernel))
            if kernel[0] not in SUBSTITUTABLE:
                assert got is None
                continue
            truth = evaluate_conf(
                conf, "m", "1.0", kernel[0], ARCH, context(root, kernel, bash=True)
            )
            assert got is not None
            assert plain(got) == plain(truth), conf.read_text()
            compared += 1
    # the generator must exercise the shared path, and often with the kernel in the values
    assert shared_count >= 25 and compared >= 75 and with_kernel >= 10, with_kernel


def test_literal_placeholder_text_is_not_shared(tmp_path: Path) -> None:
    _, consulted, shared = share(tmp_path, 'MAKE="make KVER=$kernelver X=@dkmshooks.kernelver@"\n')
    assert consulted == {"kernelver"}
    assert shared is None


def test_values_computed_by_bash_are_not_shared(tmp_path: Path) -> None:
    values, consulted, shared = share(tmp_path, 'MAKE="make KVER=$(echo $kernelver)"\n')
    assert values.get("MAKE") == f"make KVER={KERNELS[0][0]}"
    assert consulted == {shellconf.ANY}
    assert shared is None


def test_values_without_the_kernel_are_shared_as_they_are(tmp_path: Path) -> None:
    values, consulted, shared = share(
        tmp_path, 'PACKAGE_NAME=m\nMAKE="make M=$dkms_tree/m/1.0/build"\n'
    )
    assert consulted == {"dkms_tree"}
    assert shared is values
