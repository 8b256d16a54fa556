"""apt and dpkg installing, upgrading and removing real Debian 12 kernels, with dkmshooks's hooks
in /etc/kernel/*.d and /etc/apt/apt.conf.d (issue 5). One chroot is shared by the module; every
test first brings it to the state it starts from, so each also runs alone (`-k`)."""

from __future__ import annotations

import pytest

from .chroot import (
    FAILING,
    MODULE,
    NEW,
    OLD,
    AptRun,
    Debian,
    headers,
    headers_common,
    image,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def assert_clean_run(run: AptRun) -> None:
    """apt (or dpkg) succeeded, and everything it logged came from one apt transaction."""
    assert run.result.rc == 0, f"{run.label} exited {run.result.rc}:\n{run.result.output[-6000:]}"
    assert run.records, f"{run.label} logged nothing:\n{run.result.output[-4000:]}"
    assert {r["source"] for r in run.records} == {"apt"}
    assert len(run.transactions) == 1, run.records


def test_image_and_headers_in_one_apt_run(debian: Debian) -> None:
    debian.kernel_absent(OLD)
    run = debian.apt("install", image(OLD), headers(OLD))
    assert_clean_run(run)
    assert debian.installed_module(OLD).is_file()
    assert debian.in_modules_dep(OLD)
    assert debian.initramfs_lists(OLD)
    # Built once: one successful build (+install) record, whichever hook ran first.
    done = [r for r in run.of(MODULE, OLD) if r["outcome"] in ("built", "installed")]
    assert [r["action"] for r in done] == ["install"], run.records


def test_headers_first_then_image(debian: Debian) -> None:
    debian.kernel_absent(OLD)
    first = debian.apt("install", headers(OLD))
    assert_clean_run(first)
    # Built, but nothing installed into a kernel that is not there yet.
    assert debian.built_module(OLD).is_file()
    assert not debian.installed_module(OLD).exists()
    built_at = debian.make_log(OLD).stat().st_mtime_ns

    second = debian.apt("install", image(OLD))
    assert_clean_run(second)
    assert second.transactions != first.transactions
    assert debian.installed_module(OLD).is_file()
    assert debian.in_modules_dep(OLD)
    assert debian.initramfs_lists(OLD)
    # The image finished the job without building again.
    assert debian.make_log(OLD).stat().st_mtime_ns == built_at
    assert [r["action"] for r in second.of(MODULE, OLD)] == ["install"], second.records


def test_image_first_then_headers(debian: Debian) -> None:
    debian.kernel_absent(OLD)
    first = debian.apt("install", image(OLD))
    assert_clean_run(first)
    assert not debian.built_module(OLD).exists()
    assert not debian.initramfs_lists(OLD)
    assert all(r["outcome"].startswith("deferred") for r in first.of(MODULE, OLD)), first.records
    assert f"linux-headers-{OLD}" in first.result.output
    initramfs_before = debian.initramfs(OLD).stat().st_mtime_ns

    second = debian.apt("install", headers(OLD))
    assert_clean_run(second)
    assert debian.installed_module(OLD).is_file()
    assert debian.in_modules_dep(OLD)
    # The initramfs made when the image arrived lacked the module: regenerated, and now has it.
    assert debian.initramfs(OLD).stat().st_mtime_ns != initramfs_before
    assert debian.initramfs_lists(OLD)


def test_upgrade_to_a_newer_abi(debian: Debian) -> None:
    debian.kernel_present(OLD)
    debian.kernel_absent(NEW)
    old_module = debian.installed_module(OLD).read_bytes()
    run = debian.apt("install", image(NEW), headers(NEW))
    assert_clean_run(run)
    for kver in (OLD, NEW):
        assert debian.installed_module(kver).is_file()
        assert debian.in_modules_dep(kver)
        assert debian.initramfs_lists(kver)
    assert debian.installed_module(OLD).read_bytes() == old_module
    vermagic = debian.run(
        "modinfo", "-F", "vermagic", f"/lib/modules/{NEW}/updates/dkms/{MODULE}.ko"
    )
    assert vermagic.check().output.startswith(f"{NEW} ")


def test_removing_the_old_kernel(debian: Debian) -> None:
    debian.kernel_present(OLD)
    debian.kernel_present(NEW)
    removed = debian.apt("remove", image(OLD), headers(OLD))
    assert_clean_run(removed)
    # `remove` keeps the image's depmod files; nothing of ours may stay beside them.
    leftovers = debian.file(f"/lib/modules/{OLD}")
    assert not list(leftovers.rglob(f"{MODULE}.ko*"))
    assert not (leftovers / "updates").exists()
    assert not debian.file(f"/var/lib/dkms/{MODULE}/1.0/{OLD}").exists()
    assert not debian.file(f"/var/lib/dkmshooks/pending/{OLD}.json").exists()

    purged = debian.apt("purge", image(OLD), headers(OLD), headers_common(OLD))
    assert purged.result.rc == 0, purged.result.output[-4000:]
    # The image's postrm could remove /lib/modules/K: it was empty.
    assert not leftovers.exists()
    # The other kernel keeps its module.
    assert debian.installed_module(NEW).is_file()
    assert debian.in_modules_dep(NEW)


def test_same_version_reinstall_with_plain_dpkg(debian: Debian) -> None:
    """An ABI-stable upgrade of the same kernel release, without apt: preinst.d invalidates the
    build, postinst.d rebuilds it, and the hook calls of that one dpkg run share one id."""
    debian.kernel_present(NEW)
    built_at = debian.make_log(NEW).stat().st_mtime_ns
    debs = sorted(debian.chroot.archives.glob(f"{image(NEW)}_*_amd64.deb"))
    assert debs, "apt's archive cache lost the image it installed"
    run = debian.dpkg("-i", f"/var/cache/apt/archives/{debs[-1].name}")
    assert_clean_run(run)
    assert debian.make_log(NEW).stat().st_mtime_ns != built_at
    assert debian.installed_module(NEW).is_file()
    assert debian.in_modules_dep(NEW)
    assert debian.initramfs_lists(NEW)
    # initramfs-tools' postinst.d hook, after ours, made it: generated once, not twice.
    assert [r for r in run.records if r["action"] == "initramfs"] == []
    assert not (run.transactions & {t for r in debian.runs[:-1] for t in r.transactions})


def test_failing_module_leaves_the_kernel_configured(debian: Debian) -> None:
    debian.kernel_present(NEW)
    debian.dkms_add(FAILING)
    config = debian.file("/etc/dkmshooks/config.toml")
    try:
        run = debian.apt("install", "--reinstall", image(NEW), headers(NEW))
        assert_clean_run(run)
        assert debian.status(image(NEW)) == "install ok installed"
        assert debian.status(headers(NEW)) == "install ok installed"
        failed = [r for r in run.of(FAILING, NEW) if r["outcome"] == "failed"]
        assert failed, run.records
        # The good module still made it, into the initramfs too.
        assert debian.installed_module(NEW).is_file()
        assert debian.initramfs_lists(NEW)
        listed = debian.run("dkmshooks", "log", "--failed", "--json").check().output
        assert f'"module":"{FAILING}"' in listed.replace(" ", "")

        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text("strict = true\n")
        strict = debian.apt("install", "--reinstall", headers(NEW))
        assert strict.result.rc != 0
        assert f"dpkg: error processing package {headers(NEW)}" in strict.result.output
        assert debian.status(headers(NEW)) == "install ok half-configured"
        assert {r["source"] for r in strict.records} == {"apt"}
        assert any(r["outcome"] == "failed" for r in strict.of(FAILING, NEW)), strict.records
    finally:
        config.unlink(missing_ok=True)
        debian.run("dkms", "remove", f"{FAILING}/1.0", "--all")
        debian.run("dpkg", "--configure", "-a").check()
    assert debian.status(headers(NEW)) == "install ok installed"


def test_one_transaction_per_apt_run_in_the_log(debian: Debian) -> None:
    debian.kernel_present(NEW)
    for _ in range(2):
        # A same-version reinstall always rebuilds, so each run has something to log.
        assert_clean_run(debian.apt("install", "--reinstall", image(NEW)))
    # Every apt and dpkg run of this module so far: its own id, shared by all its records.
    ids = [run.transactions for run in debian.runs if run.records]
    assert all(len(t) == 1 for t in ids), ids
    flat = [t for ts in ids for t in ts]
    assert len(flat) == len(set(flat)), flat
    # Each id stands out in `dkmshooks log`'s table, which shows its first 8 characters.
    assert len({t[:8] for t in flat}) == len(flat)
