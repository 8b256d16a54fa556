"""The apt/dpkg adapter: hook calls → Trigger, transaction ids from /proc, the hook files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dkmshooks.adapters import apt
from dkmshooks.errors import UsageError
from dkmshooks.layout import Layout
from dkmshooks.trigger import KernelEvent

REPO = Path(__file__).resolve().parents[2]
HOOKS = REPO / "hooks" / "apt"
K = "6.1.0-56-amd64"
IMAGE = f"/boot/vmlinuz-{K}"

# DEB_MAINT_PARAMS values are the ones Debian 12's kernel maintainer scripts really pass (read in
# linux-image-6.1.0-55-amd64's preinst/postinst/prerm/postrm and the lab's hook log).
CASES = [
    # kind, $2 given, DEB_MAINT_PARAMS (None = unset), expected event
    ("preinst", True, "install", None),
    ("preinst", True, "install 6.1.192-1", None),
    ("preinst", True, "upgrade 6.1.192-2 6.1.192-2", "image-preinst"),
    ("preinst", True, "abort-upgrade 6.1.192-2", None),
    ("postinst", True, "configure ", "image-added"),
    ("postinst", True, "configure 6.1.192-2", "image-added"),
    ("postinst", True, "'configure' ''", "image-added"),
    ("postinst", True, None, "image-added"),
    ("postinst", True, "abort-upgrade 6.1.192-3", None),
    ("postinst", True, "triggered linux-update-6.1.0-56-amd64", None),
    ("header_postinst", False, None, "headers-added"),
    ("header_postinst", False, "", "headers-added"),
    ("header_postinst", True, "configure ", "headers-added"),
    ("header_postinst", False, "abort-upgrade 6.1.192-2", None),
    ("prerm", True, "remove", "image-removed"),
    ("prerm", True, None, "image-removed"),
    ("prerm", True, "upgrade 6.1.192-3", None),
    ("prerm", True, "deconfigure in-favour foo 1", None),
    ("postrm", True, "remove", "image-removed"),
    ("postrm", True, "purge", "image-removed"),
    ("postrm", True, "upgrade 6.1.192-2", None),
    ("postrm", True, "failed-upgrade 6.1.192-2", None),
    ("postrm", True, "abort-install", None),
    ("postrm", True, "disappear foo 1", None),
    ("postrm", True, None, None),
]


@pytest.mark.parametrize(("kind", "with_image", "params", "expected"), CASES)
def test_event_per_hook_call(
    kind: str, with_image: bool, params: str | None, expected: str | None
) -> None:
    environ = {} if params is None else {"DEB_MAINT_PARAMS": params}
    args = [K, IMAGE] if with_image else [K]
    trigger = apt.trigger_from_hook(kind, args, environ, transaction="t1")
    if expected is None:
        assert trigger is None
    else:
        assert trigger is not None
        assert trigger.kernels == (KernelEvent(K, expected),)


def test_trigger_carries_source_hint_and_call() -> None:
    environ = {
        "DEB_MAINT_PARAMS": "configure 6.1.192-1",
        "DPKG_MAINTSCRIPT_PACKAGE": f"linux-image-{K}",
    }
    trigger = apt.trigger_from_hook("postinst", [K, IMAGE], environ, transaction="apt-x-1")
    assert trigger is not None
    assert trigger.source == "apt"
    assert trigger.transaction == "apt-x-1"
    assert trigger.modules == ()
    assert trigger.headers_package_hint == f"linux-headers-{K}"
    assert trigger.extra == {
        "hook": "postinst.d",
        "deb_maint_params": "configure 6.1.192-1",
        "image": IMAGE,
        "package": f"linux-image-{K}",
    }


def test_transaction_falls_back_to_environment_then_fresh_id() -> None:
    from_env = apt.trigger_from_hook("header_postinst", [K], {apt.TRANSACTION_VAR: "mine"})
    assert from_env is not None and from_env.transaction == "mine"
    fresh = [apt.trigger_from_hook("header_postinst", [K], {}) for _ in range(2)]
    assert fresh[0] is not None and fresh[1] is not None
    assert fresh[0].transaction and fresh[0].transaction[:8] != fresh[1].transaction[:8]


@pytest.mark.parametrize(
    ("kind", "args"),
    [("postinst", []), ("postinst", [""]), ("bogus", [K]), ("postinst", ["../etc"])],
)
def test_bad_calls_are_usage_errors(kind: str, args: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        apt.trigger_from_hook(kind, args, {"DEB_MAINT_PARAMS": "configure"})
    assert info.value.code == 2


def test_maint_params_are_unquoted_like_eval_set() -> None:
    assert apt.parse_maint_params("'configure' '6.1.192-1'") == ("configure", "6.1.192-1")
    assert apt.parse_maint_params("configure ") == ("configure",)
    assert apt.parse_maint_params("remove 'unbalanced") == ("remove", "'unbalanced")


def test_initramfs_follows_only_where_a_generator_hook_runs_after_ours(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path)
    assert not apt.initramfs_follows(layout, {})
    hooks = tmp_path / "etc/kernel/postinst.d"
    hooks.mkdir(parents=True)
    (hooks / "initramfs-tools").write_text("#!/bin/sh\n")
    assert not apt.initramfs_follows(layout, {})  # not executable: run-parts skips it
    (hooks / "initramfs-tools").chmod(0o755)
    assert apt.initramfs_follows(layout, {})
    assert not apt.initramfs_follows(layout, {"INITRD": "No"})
    assert "dkmshooks" < "dracut" < "initramfs-tools"  # run-parts order: ours first

    environ = {"DEB_MAINT_PARAMS": "configure 6.1.192-1"}
    told = apt.trigger_from_hook("postinst", [K, IMAGE], environ, initramfs_follows=True)
    assert told is not None and told.extra["initramfs_follows"] == "1"
    untold = apt.trigger_from_hook("postinst", [K, IMAGE], environ)
    assert untold is not None and "initramfs_follows" not in untold.extra


# -- transactions against a fake /proc -------------------------------------------------------------

BTIME = 1_700_000_000  # 2023-11-14T22:13:20Z


def _fake_proc(tmp_path: Path, processes: dict[int, tuple[int, str, int]]) -> Path:
    """processes: pid → (ppid, comm, start ticks)."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text(f"cpu  1 2 3\nbtime {BTIME}\nprocesses 9\n")
    for pid, (ppid, comm, start) in processes.items():
        (proc / str(pid)).mkdir()
        tail = " ".join(["S", str(ppid), *["0"] * 17, str(start), "0", "0"])
        (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) {tail}\n")
    return proc


# apt-get (100) ran dpkg (200), whose maintainer script (250) ran run-parts (300), which ran our
# hook twice (400, 401); for Pre-Invoke and Post-Invoke apt forked a child of itself (440, 455:
# same comm, as observed in the chroot), which ran `sh -c` (450, 460) → dkmshooks.
APT_RUN = {
    1: (0, "systemd", 1),
    50: (1, "bash", 500),
    100: (50, "apt-get", 1000),
    200: (100, "dpkg", 2000),
    250: (200, "linux-image-6.1", 2100),
    300: (250, "run-parts", 2200),
    400: (300, "dkmshooks", 2300),
    401: (300, "dkmshooks", 2400),
    440: (100, "apt-get", 1499),
    450: (440, "sh", 1500),
    451: (450, "dkmshooks", 1501),
    # apt runs dpkg again to configure (210 → 310 → hook 402).
    210: (100, "dpkg", 3000),
    260: (210, "linux-image-6.1", 3100),
    310: (260, "run-parts", 3200),
    402: (310, "dkmshooks", 3300),
    455: (100, "apt-get", 8999),
    460: (455, "sh", 9000),
    461: (460, "dkmshooks", 9001),
}


def test_one_id_for_all_hook_calls_of_an_apt_run(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, APT_RUN)
    layout = Layout(root=tmp_path / "root")
    record = apt.begin_transaction(layout, pid=451, proc=proc, now=BTIME + 60)
    assert record is not None
    assert (record.pid, record.start) == (100, 1000)
    assert re.fullmatch(r"[0-9a-f]{8}-20231114T221420", record.id)
    assert apt.read_transaction(layout) == record
    ids = {apt.current_transaction(layout, {}, pid=pid, proc=proc) for pid in (400, 401, 402)}
    assert ids == {record.id}
    assert apt.end_transaction(layout, pid=461, proc=proc)
    assert not apt.transaction_path(layout).exists()


def test_without_apt_the_dpkg_run_gives_the_id(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, APT_RUN)
    layout = Layout(root=tmp_path / "root")
    ticks = os.sysconf("SC_CLK_TCK")
    (proc / "200" / "stat").write_text(
        "200 (dpkg) S 100 " + " ".join(["0"] * 17) + f" {ticks * 3600} 0 0\n"
    )
    first = apt.current_transaction(layout, {}, pid=400, proc=proc)
    assert re.fullmatch(r"[0-9a-f]{8}-20231114T231320", first)
    assert apt.current_transaction(layout, {}, pid=401, proc=proc) == first
    # Another dpkg run (another pid, or the same pid later) gets another id, from its first chars.
    (proc / "200" / "stat").write_text(
        "200 (dpkg) S 100 " + " ".join(["0"] * 17) + f" {ticks * 3601} 0 0\n"
    )
    assert apt.current_transaction(layout, {}, pid=400, proc=proc)[:8] != first[:8]


def test_stale_record_of_a_dead_or_reused_pid_is_ignored(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, APT_RUN)
    layout = Layout(root=tmp_path / "root")
    record = apt.begin_transaction(layout, pid=451, proc=proc, now=BTIME)
    assert record is not None
    # apt-get 100 died without Post-Invoke; pid 100 now belongs to a new apt-get.
    (proc / "100" / "stat").write_text("100 (apt-get) S 50 " + " ".join(["0"] * 17) + " 7777 0 0\n")
    dpkg = apt.read_process(200, proc)
    assert dpkg is not None
    assert apt.current_transaction(layout, {}, pid=400, proc=proc) == apt.dpkg_transaction(
        dpkg, proc
    )
    # The new run's Post-Invoke (not an ancestor of the record's process) clears the dead record.
    assert apt.end_transaction(layout, pid=461, proc=proc)


def test_record_of_a_live_unrelated_apt_is_kept(tmp_path: Path) -> None:
    processes = {**APT_RUN, 700: (1, "aptitude", 50), 701: (700, "sh", 60), 702: (701, "x", 61)}
    proc = _fake_proc(tmp_path, processes)
    layout = Layout(root=tmp_path / "root")
    apt.begin_transaction(layout, pid=702, proc=proc)
    assert not apt.end_transaction(layout, pid=461, proc=proc)
    assert apt.read_transaction(layout) is not None


def test_environment_overrides_everything(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, APT_RUN)
    layout = Layout(root=tmp_path / "root")
    apt.begin_transaction(layout, pid=451, proc=proc)
    environ = {apt.TRANSACTION_VAR: "ci-42"}
    assert apt.current_transaction(layout, environ, pid=400, proc=proc) == "ci-42"


def test_no_dpkg_no_apt_gives_a_fresh_id(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {1: (0, "init", 1), 5: (1, "bash", 2), 6: (5, "dkmshooks", 3)})
    layout = Layout(root=tmp_path / "root")
    ids = {apt.current_transaction(layout, {}, pid=6, proc=proc) for _ in range(2)}
    assert len(ids) == 2


def test_unreadable_record_is_ignored_and_cleared(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, APT_RUN)
    layout = Layout(root=tmp_path / "root")
    path = apt.transaction_path(layout)
    path.parent.mkdir(parents=True)
    path.write_text('{"schema": 99, "id": "x", "pid": 100, "start": 1000}\n')
    dpkg = apt.read_process(200, proc)
    assert dpkg is not None
    assert apt.current_transaction(layout, {}, pid=400, proc=proc) == apt.dpkg_transaction(
        dpkg, proc
    )
    assert apt.end_transaction(layout, pid=461, proc=proc)
    assert not path.exists()


def test_real_proc_is_readable() -> None:
    me = apt.read_process(os.getpid())
    assert me is not None and me.ppid == os.getppid()
    assert apt.ancestors(os.getpid())[0].pid == os.getppid()


def test_comm_parser_takes_the_last_parenthesis(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {1: (0, "init", 1), 9: (1, "a) (b", 77)})
    assert apt.read_process(9, proc) == apt.Process(pid=9, ppid=1, comm="a) (b", start=77)


# -- the command ---------------------------------------------------------------------------------


def test_pre_and_post_invoke_against_the_real_proc(tmp_path: Path) -> None:
    environ = {"DKMSHOOKS_ROOT": str(tmp_path)}
    assert apt.main(["pre-invoke"], environ) == 0
    layout = Layout(root=tmp_path)
    record = apt.read_transaction(layout)
    assert record is not None
    # Our own hook calls (same ancestors as this process) see the recorded id.
    assert apt.current_transaction(layout, {}) == record.id
    assert apt.main(["post-invoke"], environ) == 0
    assert not apt.transaction_path(layout).exists()


def test_calls_with_nothing_to_do_stay_silent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {"DKMSHOOKS_ROOT": str(tmp_path), "DEB_MAINT_PARAMS": "upgrade 6.1.192-2"}
    assert apt.main(["postrm", K, IMAGE], environ) == 0
    assert apt.main(["preinst", K, IMAGE], {**environ, "DEB_MAINT_PARAMS": "install"}) == 0
    assert capsys.readouterr() == ("", "")


def test_an_engine_that_cannot_start_leaves_the_package_configured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A root without /etc/os-release: dkms cannot name the distro, so nothing can be built.
    environ = {"DKMSHOOKS_ROOT": str(tmp_path), "DEB_MAINT_PARAMS": "configure 6.1.192-1"}
    assert apt.main(["postinst", K, IMAGE], environ) == 0
    err = capsys.readouterr().err
    assert err.startswith("dkmshooks: ")
    assert "os-release" in err


@pytest.mark.parametrize(
    ("argv", "code"), [([], 2), (["--help"], 0), (["bogus", K], 2), (["postinst"], 2)]
)
def test_usage(argv: list[str], code: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert apt.main(argv, {}) == code
    out, err = capsys.readouterr()
    if argv and argv[0] != "--help":
        assert err.startswith("dkmshooks: ")
    else:
        assert out.startswith("Usage: dkmshooks hook apt")


# -- the files dpkg and APT call -------------------------------------------------------------------

RUN_PARTS_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@pytest.mark.parametrize("kind", apt.HOOK_KINDS)
def test_kernel_hook_forwards_to_its_kind(kind: str) -> None:
    hook = HOOKS / f"kernel-{kind}"
    assert hook.stat().st_mode & 0o111
    lines = hook.read_text().splitlines()
    assert lines[0] == "#!/bin/sh"
    assert lines[-1] == f'exec /usr/bin/dkmshooks hook apt {kind} "$@" </dev/null >&2'
    # Installed as /etc/kernel/<kind>.d/dkmshooks (scripts/install-into-root.sh): a name
    # run-parts runs, sorting before initramfs-tools and the zz- boot loader hooks.
    assert RUN_PARTS_NAME.match("dkmshooks")
    assert "dkmshooks" < "initramfs-tools" < "zz-"
    installer = (REPO / "scripts" / "install-into-root.sh").read_text()
    assert '"$repo/hooks/apt/kernel-$kind" "$root/etc/kernel/$kind.d/dkmshooks"' in installer


@pytest.mark.skipif(shutil.which("apt-config") is None, reason="needs apt-config")
def test_apt_conf_is_what_apt_reads() -> None:
    dump = subprocess.run(
        ["apt-config", "-c", str(HOOKS / "apt.conf"), "dump"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for key, kind in (("Pre-Invoke", "pre-invoke"), ("Post-Invoke", "post-invoke")):
        assert (
            f'DPkg::{key}:: "if [ -x /usr/bin/dkmshooks ]; then '
            f'/usr/bin/dkmshooks hook apt {kind} || true; fi";'
        ) in dump.splitlines()
