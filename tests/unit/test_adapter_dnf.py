"""dkmshooks.adapters.dnf: dnf transactions → kernel events; the dnf4 plugin with the real dnf
module (when importable) and fake dnf objects; the libdnf5 plugin against tests/fakes/libdnf5;
the dnf5 actions file read by dkmshooks.adapters.dnf5_actions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from dkmshooks.adapters import dnf as adapter
from dkmshooks.adapters import dnf5_actions
from dkmshooks.adapters.dnf import Package, kernel_events
from dkmshooks.trigger import KernelEvent

REPO = Path(__file__).resolve().parents[2]
HOOKS = REPO / "hooks" / "dnf"
FAKES = REPO / "tests" / "fakes"

K1 = "6.11.4-301.fc41.x86_64"
K2 = "6.11.5-300.fc41.x86_64"


def core(kver: str, inbound: bool = True, name: str = "kernel-core") -> Package:
    version, release = kver.split("-", 1)
    return Package(
        name,
        version,
        release.rsplit(".", 1)[0],
        "x86_64",
        inbound,
        provides=(f"kernel-uname-r = {kver}", "installonlypkg(kernel)", f"{name} = {kver}"),
    )


def devel(kver: str, inbound: bool = True, name: str = "kernel-devel") -> Package:
    version, release = kver.split("-", 1)
    return Package(
        name,
        version,
        release.rsplit(".", 1)[0],
        "x86_64",
        inbound,
        provides=(f"kernel-devel-uname-r = {kver}", "installonlypkg(kernel)"),
    )


# -- which packages mean what ----------------------------------------------------------------------


def test_kernel_release_comes_from_provides_not_from_the_version() -> None:
    # Debian-style release in an rpm: name-version-release says nothing about it.
    pkg = Package(
        "kernel-devel", "6.1.0", "56", "x86_64", True, ("kernel-devel-uname-r = 6.1.0-56-amd64",)
    )
    found = adapter.kernel_of(pkg)
    assert found is not None
    assert (found.kind, found.kver) == ("headers", "6.1.0-56-amd64")


def test_kernel_release_from_files_when_provides_lack_it() -> None:
    headers = Package(
        "kernel-ml-devel", "6.9", "1", "x86_64", True, files=(f"/usr/src/kernels/{K1}/Makefile",)
    )
    image = Package(
        "kernel-core", "6.11.4", "301", "x86_64", True, files=(f"/lib/modules/{K1}/vmlinuz",)
    )
    usr_image = Package(
        "kernel-core", "6.11.4", "301", "x86_64", True, files=(f"/usr/lib/modules/{K1}/vmlinuz",)
    )
    assert adapter.kernel_from_files(headers.files) == ("headers", K1)
    assert adapter.kernel_from_files(image.files) == ("image", K1)
    assert adapter.kernel_from_files(usr_image.files) == ("image", K1)
    assert adapter.kernel_from_files([f"/lib/modules/{K1}/kernel/fs/foo.ko.xz"]) is None


def test_variant_kernels_keep_their_suffix() -> None:
    dbg = f"{K1}+debug"
    pkg = devel(dbg, name="kernel-debug-devel")
    assert kernel_events([pkg]) == (KernelEvent(dbg, "headers-added"),)
    trigger = adapter.build_trigger(kernel_events([pkg]), "t", via="test")
    assert trigger is not None
    assert trigger.headers_package_hint == "kernel-debug-devel-6.11.4-301.fc41.x86_64"


def test_packages_not_named_kernel_are_not_looked_at() -> None:
    pkg = Package("kmod-nvidia", "1", "1", "x86_64", True, (f"kernel-devel-uname-r = {K1}",))
    assert adapter.kernel_of(pkg) is None
    tools = Package("kernel-tools-libs-devel", "6.11.4", "301", "x86_64", True, ("x = 1",))
    assert adapter.kernel_of(tools) is None


@pytest.mark.parametrize(
    ("packages", "expected"),
    [
        pytest.param([devel(K1)], [(K1, "headers-added")], id="devel-later"),
        pytest.param([core(K1), devel(K1)], [], id="core+devel: kernel-install does it"),
        pytest.param([devel(K1), core(K1)], [], id="devel+core, other order"),
        pytest.param([core(K1)], [], id="core alone: kernel-install"),
        pytest.param([core(K1, False)], [(K1, "image-removed")], id="remove kernel"),
        pytest.param(
            [core(K1, False), devel(K1, False)], [(K1, "image-removed")], id="remove both"
        ),
        pytest.param([devel(K1, False)], [(K1, "headers-removed")], id="remove devel"),
        pytest.param([core(K1), devel(K1), core(K1, False), devel(K1, False)], [], id="reinstall"),
        pytest.param(
            [core(K2), devel(K2), core(K1, False), devel(K1, False)],
            [(K1, "image-removed")],
            id="upgrade replacing the old kernel",
        ),
        pytest.param(
            [devel(K2), devel(K1)],
            [(K2, "headers-added"), (K1, "headers-added")],
            id="two devels",
        ),
    ],
)
def test_kernel_events(packages: list[Package], expected: list[tuple[str, str]]) -> None:
    assert kernel_events(packages) == tuple(KernelEvent(k, e) for k, e in expected)


def test_trigger_shape() -> None:
    trigger = adapter.build_trigger(
        kernel_events([devel(K1)]), "tx-1", via="dnf4 plugin", packages=["kernel-devel-x"]
    )
    assert trigger is not None
    assert trigger.source == "dnf"
    assert trigger.transaction == "tx-1"
    assert trigger.kernels == (KernelEvent(K1, "headers-added"),)
    assert trigger.headers_package_hint == f"kernel-devel-{K1}"
    # kernel-devel arrives after the initramfs was made: the engine decides about regenerating.
    assert "initramfs_follows" not in trigger.extra
    assert adapter.build_trigger((), "tx", via="x") is None


# -- transaction ids -------------------------------------------------------------------------------


def fake_proc(tmp_path: Path, processes: dict[int, tuple[int, str, int]]) -> Path:
    """A /proc with `stat` (btime) and PID/stat for {pid: (ppid, comm, start)}."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
    for pid, (ppid, comm, start) in processes.items():
        (proc / str(pid)).mkdir()
        fields = ["S", str(ppid)] + ["0"] * 17 + [str(start)] + ["0"] * 10
        (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    return proc


def test_kernel_install_below_dnf_shares_dnfs_transaction(tmp_path: Path) -> None:
    # dkmshooks ← 40-dkmshooks.install (exec'd) ← kernel-install ← scriptlet sh ← dnf ← bash
    proc = fake_proc(
        tmp_path,
        {
            500: (400, "python3", 9000),
            400: (300, "kernel-install", 8900),
            300: (200, "sh", 8800),
            200: (100, "dnf", 5000),
            100: (1, "bash", 10),
            1: (0, "systemd", 1),
        },
    )
    manager = adapter.find_manager_process(500, proc)
    assert manager == adapter.ManagerProcess(pid=200, start=5000)
    shared = adapter.manager_transaction(manager, proc)
    # The dnf4 plugin computes the same id from inside the dnf process (pid 200).
    assert shared == adapter.manager_transaction(adapter.ManagerProcess(200, 5000), proc)
    assert shared != adapter.manager_transaction(adapter.ManagerProcess(200, 5001), proc)
    assert adapter.find_manager_process(100, proc) is None


def test_forced_transaction_wins() -> None:
    env = {"DKMSHOOKS_TRANSACTION": "forced-1"}
    assert adapter.own_transaction(env) == "forced-1"
    assert adapter.child_transaction(env) == "forced-1"


# -- the dnf4 plugin -------------------------------------------------------------------------------


class Reldep:
    """hawkey.Reldep prints as "NAME = VERSION"."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class Dnf4Package:
    """What a hawkey package offers; reading provides/files is counted (they cost a lookup)."""

    def __init__(self, pkg: Package, reads: dict[str, int]) -> None:
        self.name, self.version, self.release, self.arch = (
            pkg.name,
            pkg.version,
            pkg.release,
            pkg.arch,
        )
        self._pkg = pkg
        self._reads = reads

    @property
    def provides(self) -> list[Reldep]:
        self._reads["provides"] += 1
        return [Reldep(p) for p in self._pkg.provides]

    @property
    def files(self) -> list[str]:
        self._reads["files"] += 1
        return list(self._pkg.files)


def dnf4_base(packages: list[Package], installroot: str = "/") -> tuple[Any, dict[str, int]]:
    reads = {"provides": 0, "files": 0}
    transaction = SimpleNamespace(
        install_set={Dnf4Package(p, reads) for p in packages if p.inbound},
        remove_set={Dnf4Package(p, reads) for p in packages if not p.inbound},
    )
    return SimpleNamespace(
        transaction=transaction, conf=SimpleNamespace(installroot=installroot)
    ), reads


def other(name: str) -> Package:
    return Package(name, "1.0", "1", "noarch", True, ("nothing = 1",))


def test_dnf4_packages_reads_provides_of_kernel_packages_only() -> None:
    base, reads = dnf4_base([other("bash"), other("vim"), devel(K1), core(K2, False)])
    found = adapter.dnf4_packages(base)
    assert sorted((p.name, p.inbound) for p in found) == [
        ("kernel-core", False),
        ("kernel-devel", True),
    ]
    assert reads == {"provides": 2, "files": 0}


def test_dnf4_unrelated_transaction_costs_almost_nothing() -> None:
    """Run in a fresh interpreter: loading the adapter and handling a 3000-package transaction
    without kernels imports neither the engine nor dkms.conf evaluation, reads no provides and
    takes milliseconds."""
    script = textwrap.dedent(
        """
        import sys, time
        from types import SimpleNamespace
        t0 = time.perf_counter()
        from dkmshooks.adapters import dnf as adapter
        class Pkg:
            def __init__(self, i):
                self.name, self.version, self.release, self.arch = f"pkg{i}", "1", "1", "noarch"
            @property
            def provides(self):
                raise AssertionError("provides read for an unrelated package")
            files = provides
        tx = SimpleNamespace(install_set=[Pkg(i) for i in range(3000)], remove_set=[])
        base = SimpleNamespace(transaction=tx, conf=SimpleNamespace(installroot="/"))
        t1 = time.perf_counter()
        rc = adapter.dnf4_transaction(base, {})
        t2 = time.perf_counter()
        heavy = sorted(m for m in sys.modules if m.split(".")[-1] in
                       ("engine", "hookengine", "dkmsconf", "tree", "session", "run"))
        print(rc, heavy, round((t2 - t1) * 1000, 2), round((t1 - t0) * 1000, 2))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO
    )
    out = proc.stdout.strip()
    assert out.startswith("0 [] "), out
    handle_ms = float(out.split()[2])
    assert handle_ms < 50, f"3000 unrelated packages took {handle_ms} ms"


def test_dnf4_installroot_without_dkmshooks_does_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    base, _ = dnf4_base([devel(K1)], installroot=str(tmp_path))
    assert adapter.dnf4_transaction(base, {"DKMSHOOKS_TRANSACTION": "t"}) == 0
    err = capfd.readouterr().err
    assert f"{tmp_path}: dkmshooks is not installed there" in err
    assert f"{K1} headers-added" in err


def load_transactions(root: Path, transaction: str) -> dict[str, Any]:
    path = root / "var/lib/dkmshooks/transactions" / f"{transaction}.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.fixture
def engine_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty system for the real engine: no modules registered, so a trigger only records that
    it handled its kernels (the transaction state), which is what these tests look at."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=fedora\nVERSION_ID="41"\n')
    (root / "usr/src/kernels" / K1 / "include").mkdir(parents=True)
    (root / "usr/src/kernels" / K1 / "Makefile").write_text("# headers\n")
    (root / "lib/modules" / K1).mkdir(parents=True)
    (root / "lib/modules" / K1 / "build").symlink_to(root / "usr/src/kernels" / K1)
    monkeypatch.setenv("DKMSHOOKS_ROOT", str(root))
    monkeypatch.setenv("DKMSHOOKS_TRANSACTION", "unit-dnf")
    return root


def load_file_module(path: Path, name: str) -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dnf4_plugin_shim_hands_kernel_devel_to_the_engine(engine_root: Path) -> None:
    dnf = pytest.importorskip("dnf", reason="python3-dnf is only in Debian's /usr/bin/python3")
    shim = load_file_module(HOOKS / "dkmshooks_dnf.py", "dkmshooks_dnf_under_test")
    plugin_classes = [
        v for v in vars(shim).values() if isinstance(v, type) and issubclass(v, dnf.Plugin)
    ]
    assert [c.name for c in plugin_classes if c is not dnf.Plugin] == ["dkmshooks"]
    base, _ = dnf4_base([other("bash"), devel(K1)])
    plugin = shim.DkmsHooks(base, None)
    plugin.transaction()
    state = load_transactions(engine_root, "unit-dnf")
    assert state["kernels"][K1] == {"headers": True, "image": False}


def test_dnf4_plugin_conf_enables_it() -> None:
    import configparser

    parser = configparser.ConfigParser()
    parser.read(HOOKS / "dkmshooks.conf")
    assert parser.getboolean("main", "enabled")


# -- the libdnf5 Python plugin, against the fake binding -------------------------------------------


@pytest.fixture
def libdnf5() -> Iterator[ModuleType]:
    sys.path.insert(0, str(FAKES))
    try:
        import libdnf5  # the fake: dnf5's bindings are not packaged for Debian

        assert Path(libdnf5.__file__).is_relative_to(FAKES)
        yield libdnf5
    finally:
        sys.path.remove(str(FAKES))


def fake_transaction(libdnf5: Any, items: list[tuple[Package, int]]) -> Any:
    rpm = libdnf5.rpm
    out = []
    for pkg, action in items:
        provides = []
        for text in pkg.provides:
            name, sep, version = text.partition(" = ")
            provides.append(rpm.Reldep(name, "=" if sep else "", version))
        fake = rpm.Package(pkg.name, pkg.version, pkg.release, pkg.arch, provides=provides)
        out.append(libdnf5.base.TransactionPackage(fake, action))
    return libdnf5.base.Transaction(out)


def test_libdnf5_plugin_loads_like_python_plugins_loader_does(
    libdnf5: Any, tmp_path: Path, engine_root: Path
) -> None:
    import shutil

    plugin_dir = tmp_path / "libdnf5-plugins"
    plugin_dir.mkdir()
    shutil.copy(HOOKS / "python-plugins" / "dkmshooks_libdnf5.py", plugin_dir)
    import python_plugins_loader

    base = libdnf5.base.Base()
    [plugin] = python_plugins_loader.load_plugins(plugin_dir, base)
    assert base.plugins == [plugin]
    assert plugin.get_name() == "dkmshooks"
    assert plugin.get_api_version() == libdnf5.PluginAPIVersion(2, 0)
    assert isinstance(plugin.get_version(), libdnf5.plugin.Version)
    assert plugin.get_attribute("description")

    actions = libdnf5.transaction
    transaction = fake_transaction(
        libdnf5,
        [
            (other("bash"), actions.TransactionItemAction_UPGRADE),
            (devel(K1), actions.TransactionItemAction_INSTALL),
            (core(K2, False), actions.TransactionItemAction_REMOVE),
        ],
    )
    python_plugins_loader.run_transaction([plugin], transaction)
    state = load_transactions(engine_root, "unit-dnf")
    assert state["kernels"][K1] == {"headers": True, "image": False}


def test_libdnf5_packages_skip_reason_changes_and_unrelated_packages(libdnf5: Any) -> None:
    actions = libdnf5.transaction
    transaction = fake_transaction(
        libdnf5,
        [
            (other("bash"), actions.TransactionItemAction_INSTALL),
            (devel(K1), actions.TransactionItemAction_REASON_CHANGE),
            (devel(K2), actions.TransactionItemAction_INSTALL),
            (core(K1, False), actions.TransactionItemAction_REPLACED),
        ],
    )
    found = adapter.libdnf5_packages(transaction, actions)
    assert [(p.name, p.inbound) for p in found] == [("kernel-devel", True), ("kernel-core", False)]
    assert found[0].provides[0] == f"kernel-devel-uname-r = {K2}"
    bash = transaction.get_transaction_packages()[0].get_package()
    assert bash.reads == {"provides": 0, "files": 0}


# -- the dnf5 actions file -------------------------------------------------------------------------


def actions_file() -> list[dnf5_actions.Action]:
    return dnf5_actions.parse((HOOKS / "dkmshooks.actions").read_text())


def test_actions_file_parses_and_runs_on_every_plugin_version() -> None:
    actions = actions_file()
    assert [(a.callback, a.package_filter, a.direction) for a in actions] == [
        ("post_transaction", "kernel*-devel*", "in"),
        ("pre_transaction", "kernel*-core*", "out"),
    ]
    assert all(a.is_portable for a in actions)
    for action in actions:
        assert action.args[:4] == ("/usr/bin/dkmshooks", "hook", "dnf", "package")


def test_actions_render_to_our_command_line() -> None:
    pkg = dnf5_actions.PackageInfo("kernel-devel", "6.11.4", "301.fc41", "x86_64", action="I")
    post = dnf5_actions.commands_for(
        actions_file(), "post_transaction", [pkg, pkg], conf={"installroot": "/"}
    )
    assert post == [
        [
            "/usr/bin/dkmshooks",
            "hook",
            "dnf",
            "package",
            "--installroot=/",
            "in",
            "kernel-devel",
            "6.11.4",
            "301.fc41",
            "x86_64",
        ]
    ]
    gone = dnf5_actions.PackageInfo("kernel-core", "6.11.4", "301.fc41", "x86_64", action="E")
    pre = dnf5_actions.commands_for(
        actions_file(), "pre_transaction", [gone, pkg], conf={"installroot": "/mnt"}
    )
    assert [c[4:6] for c in pre] == [["--installroot=/mnt", "out"]]
    # kernel-devel being installed matches no pre_transaction line, bash no line at all
    bash = dnf5_actions.PackageInfo("bash", "5.2", "1.fc41", "x86_64")
    assert dnf5_actions.commands_for(actions_file(), "post_transaction", [bash]) == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("post_base_setup:kernel:::/bin/true", "package filter can only be used"),
        ("post_transaction:kernel:in:foo=1:/bin/true", 'unknown option "foo=1"'),
        ("post_transaction:kernel:sideways::/bin/true", "unknown package direction"),
        ("post_transaction::in::/bin/true", "cannot use direction without package filter"),
        ("post_transction:kernel:in::/bin/true", 'unknown hook "post_transction"'),
        ("post_transaction:kernel:in:/bin/true", "format expected"),
        ("post_transaction:kernel:in::", "missing command"),
        ("post_transaction:kernel:in:enabled=2:/bin/true", 'unsupported value of "enabled"'),
    ],
)
def test_actions_validator_rejects_what_the_plugin_rejects(line: str, message: str) -> None:
    with pytest.raises(dnf5_actions.ActionsError, match=message):
        dnf5_actions.parse_line(line, 1)


def test_actions_lab_examples_pass() -> None:
    text = (
        "post_transaction:/lib/modules/*/vmlinuz:in:enabled=1 raise_error=0:/usr/sbin/foo-kmod"
        " autoinstall --kernel ${pkg.version}-${pkg.release}.${pkg.arch}\n"
        "pre_transaction:kernel-core:out::/usr/sbin/foo-kmod remove-kernel ${pkg.version}\n"
        "# a comment\n\n"
        "post_transaction::::/usr/bin/sh -c echo\\ log.INFO=foo-kmod\\ done\n"
    )
    actions = dnf5_actions.parse(text)
    assert len(actions) == 3
    assert not actions[0].is_portable
    assert dnf5_actions.render(actions[2]) == ["/usr/bin/sh", "-c", "echo log.INFO=foo-kmod done"]


def test_actions_unknown_variable_is_an_error() -> None:
    action = dnf5_actions.parse_line("post_transaction::::/bin/echo ${pkg.provides}", 1)
    assert action is not None
    with pytest.raises(dnf5_actions.ActionsError, match="unknown variable"):
        dnf5_actions.render(action)


# -- the `dkmshooks hook dnf` command --------------------------------------------------------------


def run_hook(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from dkmshooks.cli import dkmshooks_main; dkmshooks_main()", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_package_command_as_the_actions_plugin_runs_it(tmp_path: Path) -> None:
    """The rendered post_transaction command against an installroot whose rpm database does not
    know the package: nothing to do, exit 0, and nothing on stdout (plain mode parses it)."""
    pkg = dnf5_actions.PackageInfo("kernel-devel", "6.11.4", "301.fc41", "x86_64")
    [argv] = dnf5_actions.commands_for(
        actions_file(), "post_transaction", [pkg], conf={"installroot": str(tmp_path)}
    )
    proc = run_hook(*argv[1:])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "not in the rpm database" in proc.stderr


def test_package_command_ignores_packages_not_named_kernel(tmp_path: Path) -> None:
    proc = run_hook(
        "hook", "dnf", "package", f"--installroot={tmp_path}", "in", "bash", "5", "1", "x"
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


@pytest.mark.parametrize(
    "args",
    [
        ("package", "in", "kernel-devel"),
        ("package", "sideways", "kernel-devel", "1", "2", "x86_64"),
        ("package", "--bogus", "in", "kernel-devel", "1", "2", "x86_64"),
        ("kernels", "6.1:exploded"),
        ("frobnicate",),
    ],
)
def test_hook_dnf_usage_errors(args: tuple[str, ...]) -> None:
    proc = run_hook("hook", "dnf", *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("dkmshooks: ")


def test_kernels_command_runs_the_engine(engine_root: Path) -> None:
    env = {"DKMSHOOKS_ROOT": str(engine_root)}
    proc = run_hook(
        "hook", "dnf", "kernels", "--transaction", "handoff-1", f"{K1}:headers-added", env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert load_transactions(engine_root, "handoff-1")["kernels"][K1]["headers"] is True
