"""Module signing as dkms 3.4 sets it up: policy, chroot rule, sign-file lookup, MOK generation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from . import run
from .console import Console
from .framework import load_signing
from .layout import Layout

if TYPE_CHECKING:
    from .session import SessionBase as Session
    from .session import Signing


def default_sign_file(layout: Layout, distro: str, kver: str) -> str:
    candidate = ""
    if distro.startswith("debian"):
        candidate = str(
            layout.under(f"/usr/lib/linux-kbuild-{kver.rsplit('.', 1)[0]}/scripts/sign-file")
        )
    elif distro.startswith("ubuntu"):
        candidate = shutil.which("kmodsign") or ""
        if not (candidate and os.access(candidate, os.X_OK)):
            candidate = str(layout.under(f"/usr/src/linux-headers-{kver}/scripts/sign-file"))
    elif distro.startswith("gentoo"):
        candidate = str(layout.under(f"/usr/src/linux-{kver}/scripts/sign-file"))
    if not os.path.isfile(candidate):
        candidate = f"{layout.install_tree}/{kver}/build/scripts/sign-file"
    return candidate


def prepare_mok(
    layout: Layout, distro: str, key: str, cert: str, console: Console, kernel_config: Path | None
) -> tuple[bool, str, str]:
    """Returns (usable, key, cert); generates a self-signed MOK with openssl when missing."""
    environ = os.environ
    if not key:
        if distro.startswith("ubuntu"):
            key = str(layout.under("/var/lib/shim-signed/mok/MOK.priv"))
            cert = str(layout.under("/var/lib/shim-signed/mok/MOK.der"))
            if not (os.path.isfile(key) and os.path.isfile(cert)):
                tool = shutil.which("update-secureboot-policy")
                if not tool:
                    console.echo(
                        "Binary update-secureboot-policy not found, modules won't be signed"
                    )
                    return False, key, cert
                if os.path.isfile(cert):
                    os.unlink(cert)
                console.echo(
                    "Certificate or key are missing, generating them using "
                    "update-secureboot-policy..."
                )
                env = dict(environ, SHIM_NOTRIGGER="y")
                run.run([tool, "--new-key"], env=env, check=False, quiet=True)
                run.run([tool, "--enroll-key"], check=False)
        elif distro.startswith("gentoo"):
            key = environ.get("MODULES_SIGN_KEY", "")
            cert = environ.get("MODULES_SIGN_CERT", "")
            if not key and kernel_config is not None and kernel_config.is_file():
                for line in kernel_config.read_text(errors="replace").splitlines():
                    if line.startswith("CONFIG_MODULE_SIG_KEY="):
                        key = line.split("=", 1)[1].replace('"', "")
                        cert = key
    if not key:
        key = str(layout.default_mok_key)
    console.echo(f"Signing key: {key}")
    if not cert:
        cert = str(layout.default_mok_cert)
    console.echo(f"Public certificate (MOK): {cert}")
    if not key.startswith("pkcs11:") and not (os.path.isfile(key) and os.path.isfile(cert)):
        console.echo(
            "Certificate or key are missing, generating self signed certificate for MOK..."
        )
        if not shutil.which("openssl"):
            console.echo("openssl not found, can't generate key and certificate.")
            return False, key, cert
        generate_mok(Path(key), Path(cert))
        if not os.path.isfile(key):
            console.echo(
                f"Key file {key} not found and can't be generated, modules won't be signed"
            )
            return False, key, cert
    if not os.path.isfile(cert):
        console.echo(
            f"Certificate file {cert} not found and can't be generated, modules won't be signed"
        )
        return False, key, cert
    return True, key, cert


def generate_mok(key: Path, cert: Path) -> None:
    """The private key is created 0600 from the start: openssl writes into a file we made."""
    key.parent.mkdir(parents=True, exist_ok=True)
    cert.parent.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        run.run(
            [
                "openssl",
                "req",
                "-new",
                "-x509",
                "-nodes",
                "-days",
                "36500",
                "-subj",
                "/CN=DKMS module signing key",
                "-newkey",
                "rsa:2048",
                "-keyout",
                str(key),
                "-addext",
                "extendedKeyUsage=codeSigning",
                "-outform",
                "DER",
                "-out",
                str(cert),
            ],
            check=False,
            quiet=True,
        )
    finally:
        os.umask(old_umask)
    if key.is_file():
        os.chmod(key, 0o600)
    if cert.is_file():
        os.chmod(cert, 0o644)


def prepare_signing(session: Session, kver: str) -> Signing:
    from .session import Signing

    console = session.console
    layout = session.layout
    cfg = load_signing(layout, session.environ, kver)
    policy = cfg.try_sign_modules
    facts = session.facts(kver)
    if policy == "false":
        console.echo("Module signing is disabled by policy, modules won't be signed")
        return Signing()
    if policy != "true" and is_chroot_for_signing(layout):
        console.echo("Running in chroot, modules won't be signed")
        return Signing()
    if not facts.config.is_file():
        console.echo(f"Kernel config {facts.config} not found, modules won't be signed")
        return Signing()
    sign_hash = facts.sign_hash
    if sign_hash is None:
        console.echo("The kernel is built without module signing facility, modules won't be signed")
        return Signing()
    sign_file = cfg.sign_file or default_sign_file(layout, session.settings.distro, kver)
    console.echo(f"Sign command: {sign_file}")
    if not (os.path.isfile(sign_file) and os.access(sign_file, os.X_OK)):
        console.echo(f"Binary {sign_file} not found, modules won't be signed")
        return Signing()
    ok, key, cert = prepare_mok(
        layout,
        session.settings.distro,
        cfg.mok_signing_key,
        cfg.mok_certificate,
        console,
        facts.config,
    )
    return Signing(enabled=ok, sign_file=sign_file, hash=sign_hash, key=key, cert=cert)


def is_chroot_for_signing(layout: Layout) -> bool:
    from .kernel import is_in_chroot

    return is_in_chroot()


def sign_module(session: Session, module: Path) -> None:
    signing = session.signing
    session.console.echo(f"Signing module {module}")
    proc = run.run(
        [signing.sign_file, signing.hash, signing.key, signing.cert, str(module)],
        check=False,
        capture=True,
        merge_stderr=True,
    )
    if proc.returncode != 0:
        session.console.warn(f"Failed to sign module '{module}'!", proc.stdout.rstrip("\n"))
