"""Small module source trees written by the tests themselves.

The shared sample modules live in tests/data; the trees here are variants whose whole point is
their dkms.conf (malformed ones, CRLF line endings, deprecated directives, a package that ships a
module under another package's name), so each test keeps the dkms.conf it feeds dkms next to the
messages it expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

_C_SOURCE = """\
// SPDX-License-Identifier: GPL-2.0
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("{description}");
MODULE_VERSION("{version}");

static int __init {name}_init(void)
{{
	pr_info("{name}: loaded version {version}\\n");
	return 0;
}}

static void __exit {name}_exit(void)
{{
}}

module_init({name}_init);
module_exit({name}_exit);
"""


def write_source_tree(
    directory: Path,
    conf: str | None,
    modules: Sequence[str] = (),
    *,
    version: str = "1.0",
    description: str = "A dkms integration test module",
    makefile: bool = True,
    crlf: bool = False,
) -> Path:
    """Create `directory` with `conf` as its dkms.conf (None: no dkms.conf at all), a kbuild
    Makefile building `modules` (none: a Makefile that builds nothing), and one C file each."""
    directory.mkdir(parents=True)
    if conf is not None:
        data = conf.replace("\n", "\r\n") if crlf else conf
        (directory / "dkms.conf").write_bytes(data.encode())
    if makefile:
        objects = "".join(f"obj-m += {name}.o\n" for name in modules) or "obj-m :=\n"
        (directory / "Makefile").write_text(objects)
    for name in modules:
        (directory / f"{name}.c").write_text(
            _C_SOURCE.format(name=name, version=version, description=description)
        )
    return directory.resolve()
