"""Secrets: the MOK private key is created 0600 by root, readable by nobody else, and never
copied into the tree, a make.log, the rebuild log, hook output or a tarball. Keys come from
the environment only where dkms 3.4 takes them from it (docs/guarantees.md says which)."""

from __future__ import annotations

import pytest

from .lab import ARCH, MODULE, VERSION, Lab

pytestmark = pytest.mark.reliability

KEY = "/var/lib/dkms/mok.key"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_the_private_key_stays_where_it_was_made(lab: Lab) -> None:
    lab.restore("added")
    hook = lab.run(
        ["dkmshooks", "trigger", "--kernel", f"{lab.kver}:headers-added", "--transaction", "s"]
    )
    tarball = lab.dkms("mktarball", f"{MODULE}/{VERSION}", "-k", lab.kver)
    assert hook.rc == 0 and tarball.rc == 0, hook.output + tarball.output
    assert lab.sh(f"stat -c '%a %u %g' {KEY}") == "600 0 0\n"
    body = [line for line in lab.sb.read_text(KEY).splitlines() if not line.startswith("-----")]
    assert len(body) > 10
    probe = body[len(body) // 2]  # a line of the PEM body: 64 characters of the key itself
    found = lab.sh(
        f"""
        grep -rlF --exclude-dir='pytest-of-*' -e '{probe}' /var/lib/dkms /var/lib/dkmshooks \
            /var/log /usr/src /etc /tmp /lib/modules/{lab.kver}/updates || true
        for t in /var/lib/dkms/{MODULE}/{VERSION}/tarball/*.tar.gz; do
            tar -xzOf "$t" | grep -caF -e '{probe}' || true
        done
        """
    )
    assert found == f"{KEY}\n0\n", found
    assert probe not in hook.output + tarball.output
    log = lab.sb.read_text(f"/var/lib/dkms/{MODULE}/{VERSION}/{lab.kver}/{ARCH}/log/make.log")
    assert probe not in log
    denied = lab.run([*NOBODY, "cat", KEY])
    assert denied.rc == 1 and "Permission denied" in denied.output


def test_generate_mok_makes_the_key_0600_whatever_the_umask(lab: Lab) -> None:
    lab.restore("added")
    out = lab.sh(
        f"rm -f {KEY} /var/lib/dkms/mok.pub; umask 000; dkms generate_mok >/dev/null; "
        f"stat -c '%a' {KEY} /var/lib/dkms/mok.pub"
    )
    assert out == "600\n644\n"


def test_keys_come_from_the_environment_only_as_in_dkms(lab: Lab) -> None:
    """dkms does not reset mok_signing_key/mok_certificate/sign_file/try_sign_modules before it
    sources framework.conf, so the environment sets them unless framework.conf does; nothing
    else (e.g. MODULES_SIGN_KEY, Gentoo's) is read from it on this distribution."""
    lab.restore("added")
    build = f"dkms build {MODULE}/{VERSION} -k {lab.kver} --force"
    env_key = lab.sh(
        f"mok_signing_key=/etc/dkms/env.key mok_certificate=/etc/dkms/env.der {build}; "
        "stat -c '%a' /etc/dkms/env.key"
    )
    assert "Signing key: /etc/dkms/env.key\n" in env_key
    assert env_key.endswith("\n600\n")
    lab.sb.write_text("/etc/dkms/framework.conf.d/key.conf", "mok_signing_key=/etc/dkms/conf.key\n")
    conf_key = lab.sh(f"mok_signing_key=/etc/dkms/env.key {build}")
    assert "Signing key: /etc/dkms/conf.key\n" in conf_key
    lab.sb.remove("/etc/dkms/framework.conf.d/key.conf")
    gentoo = lab.sh(f"MODULES_SIGN_KEY=/etc/dkms/gentoo.key {build}")
    assert f"Signing key: {KEY}\n" in gentoo
