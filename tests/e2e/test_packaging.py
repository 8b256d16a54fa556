"""The distribution packages of issue 8, built with the documented command
(scripts/build-package.sh, see packaging/README.md) and installed with the real package managers:

- the .deb into a Debian 12 chroot that runs Debian's own dkms 3.0.10 and a real `*-dkms`
  package from the archive (v4l2loopback-dkms) on a real kernel: ours replaces dkms without
  touching its tree, rebuilds the module when the package is reinstalled, removes it with the
  package, runs its kernel hooks from the places the kernel packages run them, and leaves the
  tree behind when purged (issue 3's last bullet too);
- the rpm into an empty dnf installroot, swapping out a stand-in dkms;
- the Arch package into an empty pacman root, replacing a stand-in dkms.

The tests at the end, on the packaging files themselves, are quick; the others are marked e2e and
slow. The Debian tests share one chroot and run in file order, each starting from where the previous
one left the system (as test_apt.py's do, but the states here build on each other).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import packaging_env as env
from .chroot import Chroot, unpack, work_dir

KVER = "6.1.0-56-amd64"
V4L2 = "v4l2loopback"
V4L2_VERSION = "0.12.7"
V4L2_PACKAGE = "v4l2loopback-dkms"
KERNEL_PACKAGES = (f"linux-image-{KVER}", f"linux-headers-{KVER}")

APT_HOOKS = tuple(
    f"/etc/kernel/{kind}.d/dkmshooks"
    for kind in ("preinst", "postinst", "header_postinst", "prerm", "postrm")
)
# dkms's hook paths, taken over as no-ops so that a replaced dkms's leftover conffiles go quiet.
TAKEN_OVER = tuple(
    f"/etc/kernel/{kind}.d/dkms" for kind in ("preinst", "postinst", "header_postinst", "prerm")
)
DEB_FILES = (
    *APT_HOOKS,
    *TAKEN_OVER,
    "/etc/apt/apt.conf.d/99dkmshooks",
    "/usr/sbin/dkms",
    "/usr/bin/dkmshooks",
    "/usr/lib/dkms/common.postinst",
    "/usr/lib/dkms/dkms_autoinstaller",
    "/usr/lib/python3/dist-packages/dkmshooks/__init__.py",
    "/usr/share/man/man8/dkms.8.gz",
    "/usr/share/man/man8/dkmshooks.8.gz",
    "/usr/share/bash-completion/completions/dkms",
    "/usr/share/bash-completion/completions/dkmshooks",
)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"packaging e2e environment incomplete in CI: {reason}")
    pytest.skip(reason)


def _require(kind: str) -> None:
    if os.geteuid() != 0:
        _unavailable("building and installing packages into scratch roots needs root")
    missing = env.missing_tools(kind)
    if missing:
        _unavailable(f"missing {', '.join(missing)} (scripts/setup-test-env.sh installs them)")


@pytest.fixture(scope="module")
def built() -> dict[str, Path]:
    """Packages built so far in this module, by kind (each built once, on first use)."""
    return {}


def package(kind: str, built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require(kind)
    if kind not in built:
        built[kind] = env.build_package(kind, tmp_path_factory.mktemp(f"pkg-{kind}"))
    return built[kind]


# -- Debian ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deb(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return package("deb", built, tmp_path_factory)


@pytest.mark.e2e
@pytest.mark.slow
def test_deb_builds_lintian_clean(deb: Path) -> None:
    assert deb.name == f"dkmshooks_{env.version()}_all.deb"
    fields = env.check(env.run(["dpkg-deb", "--field", str(deb)]))
    assert "Architecture: all" in fields
    assert f"Provides: dkms (= {env.dkms_compat_version()})" in fields
    assert "Conflicts: dkms" in fields
    assert "Replaces: dkms" in fields
    listing = env.check(env.run(["dpkg-deb", "--contents", str(deb)]))
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    assert set(DEB_FILES) <= paths, sorted(set(DEB_FILES) - paths)
    assert not [p for p in paths if "__pycache__" in p or p.endswith(".pyc")]
    conffiles = env.check(env.run(["dpkg-deb", "--info", str(deb), "conffiles"])).split()
    assert sorted(conffiles) == sorted([*APT_HOOKS, *TAKEN_OVER, "/etc/apt/apt.conf.d/99dkmshooks"])
    lintian = env.run(["lintian", "--fail-on", "error", "--no-tag-display-limit", str(deb)])
    assert lintian.returncode == 0, lintian.stdout


@pytest.fixture(scope="module")
def debian(debian_base: Path, deb: Path) -> Iterator[env.DebianSystem]:
    with work_dir(prefix="test_packaging-") as path:
        chroot: Chroot = unpack(debian_base, path)
        shutil.copy2(deb, chroot.file(f"/tmp/{deb.name}"))
        yield env.DebianSystem(chroot)


@pytest.fixture(scope="module")
def bash_dkms_tree(debian: env.DebianSystem) -> dict[str, str]:
    """Debian's dkms 3.0.10 has built and installed v4l2loopback-dkms for a real kernel; the
    DKMS tree as it left it."""
    debian.apt("install", *KERNEL_PACKAGES, "dkms", V4L2_PACKAGE).check()
    assert debian.file(f"/lib/modules/{KVER}/updates/dkms/{V4L2}.ko").is_file()
    head = debian.file(f"/var/lib/dkms/{V4L2}/{V4L2_VERSION}/{KVER}/x86_64/log/make.log")
    assert "dkms-3.4.3" not in head.read_text().splitlines()[0]
    return env.tree_snapshot(debian.file("/var/lib/dkms"))


@pytest.mark.e2e
@pytest.mark.slow
def test_deb_replaces_bash_dkms_and_keeps_its_tree(
    debian: env.DebianSystem, bash_dkms_tree: dict[str, str], deb: Path
) -> None:
    module = debian.file(f"/lib/modules/{KVER}/updates/dkms/{V4L2}.ko")
    module_before = module.read_bytes()

    result = debian.apt("install", f"/tmp/{deb.name}")
    assert result.rc == 0, result.output[-6000:]

    assert debian.status("dkmshooks") == "install ok installed"
    # Removed for the Conflicts, not purged: of its conffiles, the kernel hooks are ours now.
    assert debian.status("dkms") == "deinstall ok config-files"
    for path in TAKEN_OVER[1:]:  # dkms 3.0.10 has no preinst.d hook
        owner = debian.run("dpkg-query", "-S", path).check().output
        assert owner.strip() == f"dkmshooks: {path}", owner
        assert (
            debian.file(path).read_text()
            == (env.REPO / "packaging/debian/kernel-hook-dkms").read_text()
        )
    for path in DEB_FILES:
        assert debian.exists(path), path
    assert debian.file("/usr/sbin/dkms").read_text().startswith("#!/usr/bin/python3\n")
    assert "dkms-3.4.3" in debian.run("dkms", "--version").check().output
    # The tree the bash dkms wrote, byte for byte, and its module still in place.
    assert env.tree_snapshot(debian.file("/var/lib/dkms")) == bash_dkms_tree
    assert module.read_bytes() == module_before
    assert debian.dkms_status() == [f"{V4L2}/{V4L2_VERSION}, {KVER}, x86_64: installed"]
    # The hooks are where the kernel packages' run-parts and apt look for them.
    for kind in ("preinst", "postinst", "header_postinst", "prerm", "postrm"):
        listed = debian.run("run-parts", "--test", f"/etc/kernel/{kind}.d").check().output
        assert f"/etc/kernel/{kind}.d/dkmshooks" in listed.split()
    config = debian.run("apt-config", "dump").check().output
    assert "hook apt pre-invoke" in config
    assert "hook apt post-invoke" in config

    # Purging what is left of dkms takes nothing of ours and nothing of the tree.
    debian.apt("purge", "dkms").check()
    assert debian.status("dkms") in ("", "unknown ok not-installed")
    for path in DEB_FILES:
        assert debian.exists(path), path
    assert env.tree_snapshot(debian.file("/var/lib/dkms")) == bash_dkms_tree


@pytest.mark.e2e
@pytest.mark.slow
def test_real_dkms_package_is_rebuilt_by_our_tool(debian: env.DebianSystem) -> None:
    records_before = len(debian.log_records())
    # prerm runs `dkms remove --all`, postinst /usr/lib/dkms/common.postinst: both ours now.
    result = debian.apt("install", "--reinstall", V4L2_PACKAGE)
    assert result.rc == 0, result.output[-6000:]

    assert debian.dkms_status() == [f"{V4L2}/{V4L2_VERSION}, {KVER}, x86_64: installed"]
    module = f"/lib/modules/{KVER}/updates/dkms/{V4L2}.ko"
    assert debian.file(module).is_file()
    vermagic = debian.run("modinfo", "-F", "vermagic", module).check().output
    assert vermagic.split()[0] == KVER
    make_log = debian.file(f"/var/lib/dkms/{V4L2}/{V4L2_VERSION}/{KVER}/x86_64/log/make.log")
    assert make_log.read_text().startswith(f"DKMS (dkms-3.4.3) make.log for {V4L2}/{V4L2_VERSION}")
    records = [r for r in debian.log_records()[records_before:] if r["module"] == V4L2]
    assert [r["outcome"] for r in records if r["kernel"] == KVER][-1] == "installed", records
    assert debian.file(f"/lib/modules/{KVER}/modules.dep").read_text().count(f"{V4L2}.ko:") == 1


@pytest.mark.e2e
@pytest.mark.slow
def test_kernel_hooks_of_the_deb_run(debian: env.DebianSystem) -> None:
    records_before = len(debian.log_records())
    # linux-image's maintainer scripts again: run-parts of /etc/kernel/*.d, ours among them (and
    # no longer dkms's: those paths are ours now and do nothing).
    result = debian.run("dpkg-reconfigure", "-fnoninteractive", f"linux-image-{KVER}")
    print(result.output)
    assert result.rc == 0, result.output[-6000:]
    assert "/etc/kernel/postinst.d/dkmshooks:" in result.output
    records = [r for r in debian.log_records()[records_before:] if r["module"] == V4L2]
    print(records)
    assert records and {r["source"] for r in records} == {"apt"}, records
    assert records[-1]["kernel"] == KVER and records[-1]["outcome"] == "installed", records
    assert debian.dkms_status() == [f"{V4L2}/{V4L2_VERSION}, {KVER}, x86_64: installed"]


@pytest.mark.e2e
@pytest.mark.slow
def test_removing_the_dkms_package_removes_the_module(debian: env.DebianSystem) -> None:
    result = debian.apt("remove", V4L2_PACKAGE)
    assert result.rc == 0, result.output[-6000:]
    assert not debian.exists(f"/lib/modules/{KVER}/updates/dkms/{V4L2}.ko")
    assert not debian.exists(f"/var/lib/dkms/{V4L2}")
    assert debian.dkms_status() == []
    assert f"{V4L2}.ko" not in debian.file(f"/lib/modules/{KVER}/modules.dep").read_text()


@pytest.mark.e2e
@pytest.mark.slow
def test_purge_removes_hooks_and_leaves_the_tree(debian: env.DebianSystem) -> None:
    # Something in the tree for the admin to keep: a module added and installed by hand.
    source = env.REPO / "tests" / "data" / "dkms_test-1.0"
    shutil.copytree(source, debian.file("/usr/src/dkms_test-1.0"), symlinks=True)
    debian.run("dkms", "install", "dkms_test/1.0", "-k", KVER).check()
    installed = f"/lib/modules/{KVER}/updates/dkms/dkms_test.ko"
    assert debian.exists(installed)
    tree = env.tree_snapshot(debian.file("/var/lib/dkms"))
    assert debian.exists("/var/log/dkmshooks/rebuild.log")

    result = debian.apt("purge", "dkmshooks")
    assert result.rc == 0, result.output[-6000:]

    assert debian.status("dkmshooks") in ("", "unknown ok not-installed")
    for path in (*DEB_FILES, "/usr/lib/python3/dist-packages/dkmshooks"):
        assert not debian.exists(path), path
    for path in ("/var/log/dkmshooks", "/var/lib/dkmshooks", "/etc/dkmshooks"):
        assert not debian.exists(path), path
    # As dkms: the tree, the sources and the installed modules are the admin's.
    assert env.tree_snapshot(debian.file("/var/lib/dkms")) == tree
    assert debian.exists(installed)
    assert debian.exists("/usr/src/dkms_test-1.0/dkms.conf")
    # Nothing of ours is left for the kernel packages to run (dpkg drops emptied directories).
    for kind in ("preinst", "postinst", "header_postinst", "prerm", "postrm"):
        if debian.exists(f"/etc/kernel/{kind}.d"):
            listed = debian.run("run-parts", "--test", f"/etc/kernel/{kind}.d").check().output
            assert "dkmshooks" not in listed


# -- rpm -------------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_rpm_installs_with_dnf_where_dnf_and_kernel_install_look(
    built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    rpm = package("rpm", built, tmp_path_factory)
    assert rpm.name == f"dkmshooks-{env.version()}-1.noarch.rpm"
    info = env.check(env.run(["rpm", "-qp", "--provides", "--conflicts", str(rpm)]))
    assert f"dkms = {env.dkms_compat_version()}" in info.splitlines()
    assert not env.check(env.run(["rpm", "-qp", "--scripts", str(rpm)])).strip()

    # A repository with ours, a stub for what it requires, and a stand-in for Fedora's dkms.
    repo = tmp_path / "repo"
    repo.mkdir()
    base = env.stub_spec("packaging-base", env.stub_provides(env.rpm_requires(rpm)))
    fake_dkms = env.stub_spec(
        "dkms", ["dkms = 3.1.4"], {"/usr/sbin/dkms": "#!/bin/sh\necho bash dkms\n"}
    )
    for spec, name in ((base, "packaging-base"), (fake_dkms, "dkms")):
        shutil.copy2(env.build_rpm(spec, name, tmp_path), repo)
    shutil.copy2(rpm, repo)
    env.check(env.run(["createrepo_c", "--quiet", str(repo)]))
    root = env.DnfRoot.create(tmp_path / "dnf", repo)
    env.check(root.dnf("--disableplugin=*", "install", "packaging-base", "dkms"))

    refused = root.dnf("--disableplugin=*", "install", "dkmshooks")
    assert refused.returncode != 0 and "conflicts with dkms" in refused.stdout, refused.stdout
    env.check(root.dnf("--disableplugin=*", "swap", "dkms", "dkmshooks"))

    installed = env.check(root.rpm("-qa", "--qf", "%{NAME}\\n")).split()
    assert sorted(installed) == ["dkmshooks", "packaging-base"]
    files = set(env.check(root.rpm("-ql", "dkmshooks")).split())
    site = next(Path(f).parent for f in files if f.endswith("/dkmshooks/__init__.py")).parent
    assert str(site).startswith("/usr/lib/python3.") and site.name == "site-packages"
    expected = {
        f"{site}/dnf-plugins/dkmshooks_dnf.py",
        "/etc/dnf/plugins/dkmshooks.conf",
        "/etc/dnf/libdnf5-plugins/actions.d/dkmshooks.actions",
        "/usr/lib/kernel/install.d/40-dkmshooks.install",
        "/usr/sbin/dkms",
        "/usr/bin/dkmshooks",
        "/usr/lib/dkms/common.postinst",
        "/usr/lib/dkms/dkms_autoinstaller",
        "/usr/share/bash-completion/completions/dkms",
        "/usr/share/bash-completion/completions/dkmshooks",
    }
    assert expected <= files, sorted(expected - files)
    assert any(f.startswith("/usr/share/man/man8/dkmshooks.8") for f in files)
    for path in expected:
        assert os.path.lexists(root.root / path.lstrip("/")), path
    # The swap left our command, not the stand-in's, at the path both packages had.
    assert (root.root / "usr/sbin/dkms").read_text().startswith("#!/usr/bin/python3\n")
    plugin = root.root / "usr/lib/kernel/install.d/40-dkmshooks.install"
    assert os.access(plugin, os.X_OK)
    actions = (root.root / "etc/dnf/libdnf5-plugins/actions.d/dkmshooks.actions").read_text()
    assert actions == (env.REPO / "hooks/dnf/dkmshooks.actions").read_text()

    # dnf 4 loads the plugin from the root's site-packages, with dkmshooks from the same place.
    site_dir = root.root / str(site).lstrip("/")
    pyenv = {"PYTHONPATH": str(site_dir), "PYTHONDONTWRITEBYTECODE": "1"}
    loaded = root.dnf(
        "-v",
        f"--setopt=pluginpath={site_dir / 'dnf-plugins'}",
        f"--setopt=pluginconfpath={root.root / 'etc/dnf/plugins'}",
        "repolist",
        env=pyenv,
    )
    assert loaded.returncode == 0 and "Loaded plugins: dkmshooks" in loaded.stdout, loaded.stdout
    probe = env.run(
        [
            "/usr/bin/python3",
            "-c",
            "import dnf, dkmshooks, dkmshooks_dnf; "
            "assert issubclass(dkmshooks_dnf.DkmsHooks, dnf.Plugin); "
            "print(dkmshooks.__file__)",
        ],
        cwd="/",
        env={
            "PYTHONPATH": f"{site_dir}:{site_dir / 'dnf-plugins'}",
            "PYTHONDONTWRITEBYTECODE": "1",
        },
    )
    assert probe.returncode == 0, probe.stdout
    assert probe.stdout.strip() == str(site_dir / "dkmshooks" / "__init__.py")

    env.check(root.dnf("--disableplugin=*", "remove", "dkmshooks"))
    assert not (site_dir / "dkmshooks").exists()
    assert not (root.root / "etc/dnf/plugins/dkmshooks.conf").exists()


# -- Arch ------------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_arch_package_installs_with_pacman_where_alpm_looks(
    built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    pkg = package("arch", built, tmp_path_factory)
    assert pkg.name.startswith(f"dkmshooks-{env.version()}-1-any.pkg.tar")
    fake_dkms = env.makepkg(
        env.arch_stub_pkgbuild("dkms", '  install -Dm755 /dev/null "$pkgdir/usr/bin/dkms"'),
        tmp_path / "fake-dkms",
    )
    source = env.makepkg(
        env.arch_stub_pkgbuild(
            "foo-dkms",
            '  d="$pkgdir/usr/src/foo-1.0"\n'
            '  install -d "$d"\n'
            '  printf "PACKAGE_NAME=foo\\nPACKAGE_VERSION=1.0\\n" >"$d/dkms.conf"',
        ),
        tmp_path / "foo-dkms",
    )
    root = env.PacmanRoot.create(tmp_path / "alpm")
    env.check(root.pacman("-U", str(fake_dkms)))

    # -dd: the root has none of Arch's python, kmod, gcc…; the conflict with dkms stays checked.
    refused = root.pacman("-U", "-dd", str(pkg))
    assert refused.returncode != 0 and "dkmshooks and dkms are in conflict" in refused.stdout
    # --ask=4 answers the "Remove dkms?" question with yes, as an admin would.
    env.check(root.pacman("-U", "-dd", "--ask=4", str(pkg)))
    assert env.check(root.pacman("-Qq")).split() == ["dkmshooks"]

    info = env.check(root.pacman("-Qi", "dkmshooks"))
    assert f"dkms={env.dkms_compat_version()}" in info
    assert "Conflicts With  : dkms" in info
    files = set(env.check(root.pacman("-Qlq", "dkmshooks")).split())
    hook_dir = root.root / "usr/share/libalpm/hooks"
    hooks = sorted(p.name for p in (env.REPO / "hooks" / "pacman").glob("*.hook"))
    assert hooks, "no pacman hooks in hooks/pacman"
    for name in hooks:
        assert f"{hook_dir}/{name}" in files
        assert (hook_dir / name).read_text() == (env.REPO / "hooks/pacman" / name).read_text()
    for path in ("usr/bin/dkms", "usr/bin/dkmshooks", "usr/lib/dkms/common.postinst"):
        assert f"{root.root}/{path}" in files
    assert (root.root / "usr/bin/dkms").read_text().startswith("#!/usr/bin/python3\n")
    assert not any("/sbin/" in f for f in files)  # Arch's /usr/sbin is a link to bin

    # The directory the packaged hooks are in is the one libalpm reads for this root...
    verbose = env.check(root.pacman("-v", "-Q", "dkmshooks"))
    hook_dirs = next(line for line in verbose.splitlines() if line.startswith("Hook Dirs"))
    assert f"{hook_dir}/" in hook_dirs.split(":", 1)[1].split()
    # ...and a module source arriving triggers them. Their Exec runs chrooted into the root,
    # which has no python3, so it fails there; pacman carries on, as for any Post hook.
    added = root.pacman("-U", str(source))
    assert added.returncode == 0, added.stdout
    assert "Building and installing DKMS modules (dkmshooks)..." in added.stdout

    env.check(root.pacman("-R", "foo-dkms", "dkmshooks"))
    assert not any(hook_dir.glob("*dkmshooks*"))


# -- the packaging files themselves ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["packaging/arch/PKGBUILD", "packaging/completion/dkms", "packaging/completion/dkmshooks"],
)
def test_bash_files_without_shebang_pass_shellcheck(path: str) -> None:
    # tests/test_tooling.py finds shell files by their shebang; these have none.
    if shutil.which("shellcheck") is None:
        _unavailable("shellcheck is not installed")
    proc = subprocess.run(
        ["shellcheck", "-s", "bash", path], cwd=env.REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout


def test_packaging_files_agree_on_versions() -> None:
    """One version (pyproject.toml) and one dkms release (dkmshooks.DKMS_COMPAT_VERSION) in
    every packaging file; scripts/build-package.sh refuses to build when the first drifts."""
    version, dkms = env.version(), env.dkms_compat_version()
    changelog = (env.REPO / "packaging/debian/changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"dkmshooks ({version}) ")
    control = (env.REPO / "packaging/debian/control").read_text()
    assert f"Provides: dkms (= {dkms})," in control
    spec = (env.REPO / "packaging/rpm/dkmshooks.spec").read_text()
    assert f"\nVersion:        {version}\n" in spec
    assert f"\n%global dkms_version {dkms}\n" in spec
    pkgbuild = (env.REPO / "packaging/arch/PKGBUILD").read_text()
    assert f"\npkgver={version}\n" in pkgbuild
    assert f'\nprovides=("dkms={dkms}")\n' in pkgbuild
