from __future__ import annotations

import os
from pathlib import Path

import pytest

from dkmshooks.framework import detect_distro
from dkmshooks.layout import Layout
from dkmshooks.sign import default_sign_file, prepare_signing


def test_distro_detection_follows_dkms(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path)
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text('ID=rocky\nID_LIKE="rhel centos fedora"\n')
    assert detect_distro(layout) == "rhel centos fedora"  # /usr/lib when /etc has none
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text("ID=ubuntu\nID_LIKE=debian\n")
    assert detect_distro(layout) == "ubuntu"
    (tmp_path / "etc/os-release").write_text("ID=linuxmint\nID_LIKE='ubuntu debian'\n")
    assert detect_distro(layout) == "ubuntu debian"


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_default_sign_file_per_distro(tmp_path: Path) -> None:
    layout = Layout(root=tmp_path)
    kver = "6.1.0-56-amd64"
    fallback = f"{layout.install_tree}/{kver}/build/scripts/sign-file"
    assert default_sign_file(layout, "debian", kver) == fallback
    kbuild = executable(tmp_path / "usr/lib/linux-kbuild-6.1/scripts/sign-file")
    assert default_sign_file(layout, "debian", kver) == str(kbuild)
    headers = executable(tmp_path / f"usr/src/linux-headers-{kver}/scripts/sign-file")
    if not any(os.access(os.path.join(d, "kmodsign"), os.X_OK) for d in os.get_exec_path()):
        assert default_sign_file(layout, "ubuntu", kver) == str(headers)
    gentoo = executable(tmp_path / f"usr/src/linux-{kver}/scripts/sign-file")
    assert default_sign_file(layout, "gentoo", kver) == str(gentoo)
    assert default_sign_file(layout, "arch", kver) == fallback


@pytest.mark.parametrize(
    ("framework", "config", "expected"),
    [
        (
            "try_sign_modules=false\n",
            None,
            "Module signing is disabled by policy, modules won't be signed\n",
        ),
        (
            "try_sign_modules=true\n",
            None,
            "Kernel config {cfg} not found, modules won't be signed\n",
        ),
        (
            "try_sign_modules=true\n",
            "CONFIG_MODULES=y\n",
            "The kernel is built without module signing facility, modules won't be signed\n",
        ),
        (
            "try_sign_modules=true\nsign_file=/nonexistent/sign-file\n",
            'CONFIG_MODULE_SIG_HASH="sha256"\n',
            "Sign command: /nonexistent/sign-file\n"
            "Binary /nonexistent/sign-file not found, modules won't be signed\n",
        ),
    ],
)
def test_signing_prologue_messages(
    root: Path,
    make_session,
    framework: str,
    config: str | None,
    expected: str,  # type: ignore[no-untyped-def]
) -> None:
    kver = "6.1.0-56-amd64"
    build = root / f"lib/modules/{kver}/build"
    build.mkdir(parents=True)
    if config is not None:
        (build / ".config").write_text(config)
    (root / "etc/dkms/framework.conf.d").mkdir(parents=True)
    (root / "etc/dkms/framework.conf.d/sign.conf").write_text(framework)
    session, console = make_session()
    signing = prepare_signing(session, kver)
    assert not signing.enabled
    assert console.text == expected.format(cfg=build / ".config")


def test_kernelver_in_signing_paths(root: Path, make_session) -> None:  # type: ignore[no-untyped-def]
    kver = "6.1.0-56-amd64"
    build = root / f"lib/modules/{kver}/build"
    build.mkdir(parents=True)
    (build / ".config").write_text('CONFIG_MODULE_SIG_HASH="sha512"\n')
    signer = executable(root / "opt" / kver / "sign-file")
    key_dir = root / "keys" / kver
    key_dir.mkdir(parents=True)
    (key_dir / "k.key").write_text("key")
    (key_dir / "k.der").write_text("cert")
    (root / "etc/dkms").mkdir(parents=True)
    (root / "etc/dkms/framework.conf").write_text(
        f"try_sign_modules=true\nsign_file={root}/opt/${{kernelver}}/sign-file\n"
        f"mok_signing_key={root}/keys/${{kernelver}}/k.key\n"
        f"mok_certificate={root}/keys/${{kernelver}}/k.der\n"
    )
    session, console = make_session()
    signing = prepare_signing(session, kver)
    assert signing.enabled and signing.hash == "sha512"
    assert signing.sign_file == str(signer)
    assert console.text == (
        f"Sign command: {signer}\nSigning key: {key_dir}/k.key\n"
        f"Public certificate (MOK): {key_dir}/k.der\n"
    )


def test_pkcs11_key_is_passed_through(tmp_path: Path) -> None:
    from dkmshooks.sign import prepare_mok

    from .helpers import Captured

    cert = tmp_path / "mok.der"
    cert.write_bytes(b"cert")
    console = Captured()
    ok, key, got_cert = prepare_mok(
        Layout(root=tmp_path), "debian", "pkcs11:token=dkms;object=mok", str(cert), console, None
    )
    assert ok and key == "pkcs11:token=dkms;object=mok" and got_cert == str(cert)
    # a token key is never "missing": nothing is generated
    assert console.text == (
        f"Signing key: pkcs11:token=dkms;object=mok\nPublic certificate (MOK): {cert}\n"
    )
