from __future__ import annotations

import os
from pathlib import Path

from dkmshooks.layout import Layout
from dkmshooks.tree import Tree


def make_tree(root: Path) -> tuple[Layout, Tree]:
    layout = Layout(root=root)
    src = layout.module_source("foo", "1.0")
    src.mkdir(parents=True)
    (src / "dkms.conf").write_text("")
    vdir = layout.version_dir("foo", "1.0")
    vdir.mkdir(parents=True)
    os.symlink(src, vdir / "source")
    for kver in ("6.10.0", "6.9.0"):
        (layout.built_dir("foo", "1.0", kver, "x86_64") / "module").mkdir(parents=True)
    os.symlink("1.0/6.9.0/x86_64", layout.active_link("foo", "6.9.0", "x86_64"))
    # a broken one: link to a missing source
    bdir = layout.version_dir("bar", "2")
    bdir.mkdir(parents=True)
    os.symlink(root / "nowhere", bdir / "source")
    return layout, Tree(layout)


def test_states_in_glob_order(tmp_path: Path) -> None:
    _, tree = make_tree(tmp_path)
    got = [(e.state, e.module, e.kver) for e in tree.status()]
    assert got == [
        ("broken", "bar", ""),
        ("built", "foo", "6.10.0"),
        ("installed", "foo", "6.9.0"),
    ]
    assert [e.state for e in tree.status("foo", "1.0", "6.1")] == ["added"]


def test_predicates(tmp_path: Path) -> None:
    _layout, tree = make_tree(tmp_path)
    assert tree.is_added("foo", "1.0") and not tree.is_added("bar", "2")
    assert tree.is_broken("bar", "2") and not tree.is_broken("foo", "1.0")
    assert tree.is_installed("foo", "1.0", "6.9.0", "x86_64")
    assert not tree.is_installed("foo", "1.0", "6.10.0", "x86_64")
    # kernel-* links are not module versions
    assert list(tree.module_versions("foo")) == [("foo", "1.0")]
    assert tree.kernel_dirs_left("foo", "1.0") == ["6.10.0", "6.9.0"]
