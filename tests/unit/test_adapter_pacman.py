"""The pacman adapter's pure parts: NeedsTargets lines → targets → events → Triggers, the
headers hint, transaction ids, and the initramfs follow-up's bookkeeping. The hooks themselves
run under real pacman in tests/e2e/test_pacman.py."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from dkmshooks.adapters import pacman
from dkmshooks.adapters.pacman import Package, Targets
from dkmshooks.layout import Layout
from dkmshooks.tree import Tree
from dkmshooks.trigger import KernelEvent, ModuleEvent

K1 = "6.9.1-arch1-1"
K2 = "6.6.30-1-lts"

# -- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"usr/lib/modules/{K1}/vmlinuz", ("image", K1)),
        (f"usr/lib/modules/{K1}/modules.order\n", ("image", K1)),
        (f"usr/lib/modules/{K1}/build/include/", ("headers", K1)),
        (f"usr/lib/modules/{K1}/build/include/linux/module.h", ("headers", K1)),
        (f"/usr/lib/modules/{K1}/vmlinuz", ("image", K1)),
        (f"lib/modules/{K1}/vmlinuz", ("image", K1)),
        ("usr/src/zfs-2.2.3/dkms.conf", ("source", "zfs-2.2.3")),
        # alpm's `*` crosses `/`, so these can reach us; they are not what the globs mean
        (f"usr/lib/modules/{K1}/build/vmlinuz", None),
        (f"usr/lib/modules/{K1}/build/modules.order", None),
        (f"usr/lib/modules/{K1}/kernel/drivers/foo.ko.zst", None),
        ("usr/src/zfs-2.2.3/module/dkms.conf", None),
        ("usr/lib/modules/../vmlinuz", None),
        ("usr/lib/modules/vmlinuz", None),
        ("usr/src/dkms.conf", None),
        ("", None),
        ("   ", None),
        ("linux", None),  # a Package target, should a hook ever be one
    ],
)
def test_parse_target(line: str, expected: tuple[str, str] | None) -> None:
    assert pacman.parse_target(line) == expected


def test_parse_targets_sorts_and_deduplicates() -> None:
    lines = [
        f"usr/lib/modules/{K2}/vmlinuz",
        f"usr/lib/modules/{K1}/vmlinuz",
        f"usr/lib/modules/{K1}/modules.order",
        f"usr/lib/modules/{K1}/build/include/",
        f"usr/lib/modules/{K2}/build/include/",
        "usr/src/b-1.0/dkms.conf",
        "usr/src/a-2/dkms.conf",
        "usr/share/whatever",
    ]
    targets = pacman.parse_targets(lines)
    assert targets == Targets(images=(K2, K1), headers=(K2, K1), sources=("a-2", "b-1.0"))
    assert targets.kernels == (K2, K1)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dkms_test-1.0", ("dkms_test", "1.0")),
        ("nvidia-open-550.54.14", ("nvidia-open", "550.54.14")),
        ("foo-1.0-rc1", ("foo", "1.0-rc1")),
        ("v4l2loopback-0.13.2", ("v4l2loopback", "0.13.2")),
        ("foo-v2", ("foo", "v2")),  # no digit after any "-": Arch's last "-"
        ("foo-bar-git", ("foo-bar", "git")),
        ("foo", None),
        ("-1.0", None),
        ("foo-", None),
    ],
)
def test_split_source_dir(name: str, expected: tuple[str, str] | None) -> None:
    assert pacman.split_source_dir(name) == expected


# -- events ----------------------------------------------------------------------------------------


def test_install_events() -> None:
    targets = Targets(images=(K1,), headers=(K1, K2))
    assert pacman.kernel_events("install", targets) == (
        KernelEvent(K2, "headers-added"),
        KernelEvent(K1, "image-added"),
    )


def test_upgrade_events_only_for_reinstalled_images() -> None:
    targets = Targets(images=(K1,), headers=(K1, K2))
    assert pacman.kernel_events("upgrade", targets) == (KernelEvent(K1, "image-preinst"),)


def test_remove_events() -> None:
    targets = Targets(images=(K1,), headers=(K1, K2))
    assert pacman.kernel_events("remove", targets) == (
        KernelEvent(K2, "headers-removed"),
        KernelEvent(K1, "image-removed"),
    )


def test_module_events() -> None:
    pairs = [("zfs", "2.2.3")]
    assert pacman.module_events("install", pairs) == (ModuleEvent("zfs", "2.2.3", "added"),)
    assert pacman.module_events("upgrade", pairs) == (ModuleEvent("zfs", "2.2.3", "removed"),)
    assert pacman.module_events("remove", pairs) == (ModuleEvent("zfs", "2.2.3", "removed"),)


def test_added_modules_are_dropped_when_the_kernel_events_cover_every_kernel() -> None:
    kernels = (KernelEvent(K1, "image-added"),)
    modules = (ModuleEvent("zfs", "2.2.3", "added"),)
    assert pacman.without_covered_modules(kernels, modules, [K1]) == ()
    # another kernel with headers needs the module event
    assert pacman.without_covered_modules(kernels, modules, [K1, K2]) == modules
    assert pacman.without_covered_modules((), modules, [K1]) == modules
    removed = (ModuleEvent("zfs", "2.2.3", "removed"),)
    assert pacman.without_covered_modules(kernels, removed, [K1]) == removed


def test_build_triggers_groups_kernels_by_headers_hint() -> None:
    kernels = (
        KernelEvent(K1, "image-added"),
        KernelEvent(K2, "image-added"),
        KernelEvent("6.9.2-arch1-1", "headers-added"),
    )
    modules = (ModuleEvent("zfs", "2.2.3", "added"),)
    hints = {K1: "linux-headers", K2: "linux-lts-headers", "6.9.2-arch1-1": "linux-headers"}
    triggers = pacman.build_triggers(
        "install", kernels, modules, transaction="pacman-1", hints=hints
    )
    assert [(t.headers_package_hint, [e.kver for e in t.kernels]) for t in triggers] == [
        ("linux-headers", [K1, "6.9.2-arch1-1"]),
        ("linux-lts-headers", [K2]),
    ]
    assert [t.modules for t in triggers] == [(), modules]
    assert all(t.source == "pacman" and t.transaction == "pacman-1" for t in triggers)
    assert all(t.extra == {"hook": "install", "initramfs_follows": "1"} for t in triggers)


def test_build_triggers_for_modules_only_and_for_nothing() -> None:
    modules = (ModuleEvent("zfs", "2.2.3", "removed"),)
    (trigger,) = pacman.build_triggers("remove", (), modules, transaction="t")
    assert trigger.kernels == () and trigger.modules == modules
    assert trigger.extra == {"hook": "remove"}
    assert pacman.build_triggers("install", (), (), transaction="t") == []


# -- which package -------------------------------------------------------------------------------


class FakeDb:
    def __init__(self, *packages: tuple[Package, list[str]]) -> None:
        self.packages = packages

    def get(self, name: str) -> Package | None:
        return next((p for p, _ in self.packages if p.name == name), None)

    def owner(self, path: str, *, guess: str = "") -> Package | None:
        return next((p for p, files in self.packages if path in files), None)


def _kernel_dir(root: Path, kver: str, pkgbase: str | None) -> Layout:
    layout = Layout(root=root)
    mdir = layout.modules_dir(kver)
    mdir.mkdir(parents=True)
    if pkgbase is not None:
        (mdir / "pkgbase").write_text(f"{pkgbase}\n")
    return layout


def test_headers_hint_from_pkgbase(tmp_path: Path) -> None:
    layout = _kernel_dir(tmp_path, K2, "linux-lts")
    assert pacman.read_pkgbase(layout, K2) == "linux-lts"
    assert pacman.headers_hint(layout, K2, None) == "linux-lts-headers"


def test_headers_hint_without_anything(tmp_path: Path) -> None:
    layout = _kernel_dir(tmp_path, K1, None)
    assert pacman.read_pkgbase(layout, K1) is None
    assert "e.g. linux-headers" in pacman.headers_hint(layout, K1, None)


def test_headers_hint_from_the_database(tmp_path: Path) -> None:
    layout = _kernel_dir(tmp_path, K1, None)
    db = FakeDb(
        (Package("linux-zen", "linux-zen", "6.9.1.zen1-1"), [f"usr/lib/modules/{K1}/vmlinuz"]),
        (Package("linux-zen-headers", "linux-zen", "6.9.0.zen1-1"), []),
    )
    assert pacman.headers_hint(layout, K1, db) == (
        "linux-zen-headers 6.9.1.zen1-1 (the installed one is 6.9.0.zen1-1)"
    )
    only_kernel = FakeDb(
        (Package("linux-zen", "linux-zen", "6.9.1.zen1-1"), [f"usr/lib/modules/{K1}/vmlinuz"])
    )
    assert pacman.headers_hint(layout, K1, only_kernel) == "linux-zen-headers"


class _AlpmPkg:
    """The attributes of a pyalpm.Package that AlpmDb reads."""

    def __init__(self, name: str, base: str | None, version: str, files: list[str]) -> None:
        self.name, self.base, self.version = name, base, version
        self.files = [(f, 0, 0o644) for f in files]


class _AlpmLocalDb:
    def __init__(self, *pkgs: _AlpmPkg) -> None:
        self.pkgcache = list(pkgs)

    def get_pkg(self, name: str) -> _AlpmPkg | None:
        return next((p for p in self.pkgcache if p.name == name), None)


def test_alpm_db_reads_pyalpm_shaped_objects() -> None:
    vmlinuz = f"usr/lib/modules/{K1}/vmlinuz"
    db = pacman.AlpmDb(
        _AlpmLocalDb(
            _AlpmPkg("foo", None, "1-1", ["usr/bin/foo"]),
            _AlpmPkg("linux", "linux", "6.9.1.arch1-1", [f"usr/lib/modules/{K1}/", vmlinuz]),
        )
    )
    assert db.get("foo") == Package("foo", "foo", "1-1")
    assert db.get("nope") is None
    assert db.owner(vmlinuz) == Package("linux", "linux", "6.9.1.arch1-1")
    assert db.owner(vmlinuz, guess="foo") == Package("linux", "linux", "6.9.1.arch1-1")
    assert db.owner("usr/lib/modules/x/vmlinuz") is None


def test_open_package_db_without_a_database(tmp_path: Path) -> None:
    assert pacman.open_package_db(Layout(root=tmp_path)) is None


# -- transactions ----------------------------------------------------------------------------------


def _fake_proc(tmp_path: Path, pid: int, start_ticks: int, btime: int) -> Path:
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True)
    fields = ["S", "1"] + ["0"] * 17 + [str(start_ticks)] + ["0"] * 10
    (proc / str(pid) / "stat").write_text(f"{pid} (pacman (x)) {' '.join(fields)}\n")
    (proc / "stat").write_text(f"cpu 1 2 3\nbtime {btime}\n")
    return proc


def test_transaction_id_from_the_parent_process(tmp_path: Path) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    proc = _fake_proc(tmp_path, 4242, start_ticks=90 * ticks, btime=1_700_000_000)
    layout = Layout(root=tmp_path)
    tid = pacman.transaction_id(layout, {}, ppid=4242, proc=proc)
    assert tid == "pacman-20231114T221450-4242"  # 1_700_000_090 in UTC
    assert pacman.transaction_id(layout, {}, ppid=4242, proc=proc) == tid


def test_transaction_id_falls_back_to_the_db_lock_then_to_a_fresh_id(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path)
    lock = tmp_path / "var/lib/pacman/db.lck"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    os.utime(lock, (1_700_000_000, 1_700_000_000))
    no_proc = tmp_path / "no-proc"
    assert pacman.transaction_id(layout, {}, ppid=7, proc=no_proc) == "pacman-20231114T221320-7"
    lock.unlink()
    assert not pacman.transaction_id(layout, {}, ppid=7, proc=no_proc).startswith("pacman-")


def test_transaction_id_override() -> None:
    env = {pacman.TRANSACTION_VAR: "mine"}
    assert pacman.transaction_id(Layout(root=Path("/nonexistent")), env) == "mine"


# -- the initramfs follow-up ---------------------------------------------------------------------


def _arch_kernel(tmp_path: Path, kver: str = K1) -> Layout:
    layout = _kernel_dir(tmp_path, kver, "linux")
    (tmp_path / "etc/mkinitcpio.d").mkdir(parents=True)
    (tmp_path / "etc/mkinitcpio.d/linux.preset").write_text("PRESETS=('default')\n")
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/initramfs-linux.img").write_text("old\n")
    return layout


def test_needs_refresh() -> None:
    img = {"/boot/initramfs-linux.img": [1, 2, 3]}
    assert pacman.needs_refresh(img, {"/boot/initramfs-linux.img": [1, 2, 3]})
    assert not pacman.needs_refresh(img, {"/boot/initramfs-linux.img": [9, 2, 3]})
    assert not pacman.needs_refresh(img, {})
    assert not pacman.needs_refresh({}, {})
    assert not pacman.needs_refresh({}, img)  # created after the module landed
    both = {**img, "/boot/initramfs-linux-fallback.img": [4, 5, 6]}
    assert not pacman.needs_refresh(both, img)


def test_landed_modules() -> None:
    before = {K1: {"a/1"}}
    after = {K1: {"a/1", "b/2"}, K2: {"a/1"}, "gone": set()}
    assert pacman.landed_modules(before, after) == {K1: ["b/2"], K2: ["a/1"]}
    assert pacman.landed_modules(after, after) == {}


def test_record_and_read_followup(tmp_path: Path) -> None:
    layout = _arch_kernel(tmp_path)
    pacman.record_followup(layout, {K1: ["zfs/2.2.3"]}, "pacman-1")
    entry = pacman.read_followup(layout)[K1]
    st = (tmp_path / "boot/initramfs-linux.img").stat()
    assert entry["images"] == {"/boot/initramfs-linux.img": [st.st_mtime_ns, st.st_size, st.st_ino]}
    assert entry["modules"] == ["zfs/2.2.3"] and entry["transaction"] == "pacman-1"
    assert pacman.needs_refresh(entry["images"], pacman.snapshot_images(layout, K1))
    pacman.record_followup(layout, {}, "pacman-2")  # nothing landed: unchanged
    assert pacman.read_followup(layout)[K1]["transaction"] == "pacman-1"


def test_read_followup_ignores_other_schemas_and_garbage(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path)
    path = pacman.followup_path(layout)
    path.parent.mkdir(parents=True)
    for text in ("{", "[]", json.dumps({"schema": 99, "kernels": {K1: {}}})):
        path.write_text(text)
        assert pacman.read_followup(layout) == {}
    path.write_text(json.dumps({"schema": 1, "kernels": {K1: {}, "..": {}, K2: "x"}}))
    assert pacman.read_followup(layout) == {K1: {}}


def _followup(tmp_path: Path) -> Layout:
    layout = _arch_kernel(tmp_path)
    pacman.record_followup(layout, {K1: ["zfs/2.2.3"]}, "pacman-1")
    return layout


def test_followup_skips_an_image_a_generator_already_refreshed(tmp_path: Path) -> None:
    layout = _followup(tmp_path)
    image = tmp_path / "boot/initramfs-linux.img"
    image.write_text("regenerated by mkinitcpio's own hook, with more in it\n")
    assert pacman.run_followup(layout, {}) == 0
    assert not pacman.followup_path(layout).exists()
    assert not layout.rebuild_log.exists()  # nothing was regenerated, nothing to log


def test_followup_forgets_kernels_removed_since(tmp_path: Path) -> None:
    layout = _followup(tmp_path)
    (layout.modules_dir(K1) / "pkgbase").unlink()
    layout.modules_dir(K1).rmdir()
    assert pacman.run_followup(layout, {}) == 0
    assert not pacman.followup_path(layout).exists()


def test_followup_honours_initramfs_never(tmp_path: Path) -> None:
    layout = _followup(tmp_path)
    layout.config_toml.parent.mkdir(parents=True)
    layout.config_toml.write_text('[modules.zfs]\ninitramfs = "never"\n')
    assert pacman.run_followup(layout, {}) == 0
    assert not pacman.followup_path(layout).exists()
    assert not layout.rebuild_log.exists()


def test_plan_followup_once_per_preset(tmp_path: Path) -> None:
    from dkmshooks.config import Config, ModulePolicy

    layout = _arch_kernel(tmp_path)  # K1, pkgbase linux, preset linux
    lts = _kernel_dir(tmp_path, K2, "linux-lts")
    (tmp_path / "etc/mkinitcpio.d/linux-lts.preset").write_text("PRESETS=('default')\n")
    (tmp_path / "boot/initramfs-linux-lts.img").write_text("old\n")
    assert lts.root == layout.root
    stray = "6.9.0-custom"  # no pkgbase, no preset: its own "kernel K" key
    _kernel_dir(tmp_path, stray, None)
    (tmp_path / f"boot/initramfs-{stray}.img").write_text("old\n")
    pacman.record_followup(
        layout, {K1: ["zfs/2.2.3"], K2: ["zfs/2.2.3"], stray: ["vbox/7.0"]}, "pacman-1"
    )
    entries = pacman.read_followup(layout)
    # a second kernel on the linux preset (say, recorded by an earlier transaction) adds nothing
    entries["6.9.0-arch1-1"] = dict(entries[K1])
    _kernel_dir(tmp_path, "6.9.0-arch1-1", "linux")
    plan = pacman.plan_followup(layout, entries, Config())
    assert {key: kver for key, (kver, _) in plan.items()} == {
        "linux": "6.9.0-arch1-1",
        "linux-lts": K2,
        f"kernel {stray}": stray,
    }
    never = Config(modules={"vbox": ModulePolicy(initramfs="never")})
    assert f"kernel {stray}" not in pacman.plan_followup(layout, entries, never)
    assert pacman.plan_followup(layout, entries, Config(initramfs="never")) == {}


def test_followup_without_records_does_nothing(tmp_path: Path) -> None:
    assert pacman.run_followup(Layout(root=tmp_path), {}) == 0
    assert not pacman.followup_path(Layout(root=tmp_path)).exists()


# -- the command ---------------------------------------------------------------------------------


def test_main_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert pacman.main([], {}) == 2
    assert pacman.main(["--help"], {}) == 0
    assert "hook pacman install" in capsys.readouterr().out
    assert pacman.main(["frobnicate"], {}) == 2
    assert pacman.main(["install", "extra"], {}) == 2


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_main_refuses_a_terminal_on_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"DKMSHOOKS_ROOT": str(tmp_path)}
    assert pacman.main(["install"], env, stdin=_Tty("")) == 2
    assert "NeedsTargets" in capsys.readouterr().err


def test_main_with_nothing_of_ours_on_stdin_touches_nothing(tmp_path: Path) -> None:
    env = {"DKMSHOOKS_ROOT": str(tmp_path)}
    assert pacman.main(["install"], env, stdin=io.StringIO("usr/share/doc/x\n")) == 0
    assert list(tmp_path.iterdir()) == []


def _source(root: Path, name: str, version: str) -> None:
    src = root / "usr/src" / f"{name}-{version}"
    src.mkdir(parents=True)
    (src / "dkms.conf").write_text(
        f'PACKAGE_NAME="{name}"\nPACKAGE_VERSION="{version}"\n'
        f'BUILT_MODULE_NAME[0]="{name}"\nDEST_MODULE_LOCATION[0]="/updates"\nAUTOINSTALL="yes"\n'
    )


def test_install_registers_the_source_and_remove_unregisters_it(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text("ID=arch\n")
    _source(tmp_path, "foo-bar", "1.0-rc1")
    env = {"DKMSHOOKS_ROOT": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    target = "usr/src/foo-bar-1.0-rc1/dkms.conf\n"
    layout = Layout(root=tmp_path)

    assert pacman.main(["install"], env, stdin=io.StringIO(target)) == 0
    # the name comes from the dkms.conf, not from guessing at the directory name's dashes
    assert Tree(layout).is_added("foo-bar", "1.0-rc1")

    assert pacman.main(["remove"], env, stdin=io.StringIO(target)) == 0
    assert not Tree(layout).is_added("foo-bar", "1.0-rc1")
    assert not layout.module_dir("foo-bar").exists()
