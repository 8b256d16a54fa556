"""framework.conf(.d), the environment variables dkms honours, and os-release → Settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import shellconf
from .errors import DkmsError
from .layout import Layout

NONSIGNING_VARIABLES = (
    "source_tree",
    "dkms_tree",
    "install_tree",
    "tmp_location",
    "verbose",
    "symlink_modules",
    "autoinstall_all_kernels",
    "modprobe_on_install",
    "parallel_jobs",
    "compress_gzip_opts",
    "compress_xz_opts",
    "compress_zstd_opts",
    "build_environment",
    "post_transaction",
)
SIGNING_VARIABLES = ("sign_file", "mok_signing_key", "mok_certificate", "try_sign_modules")

# dkms assigns these before reading framework.conf, so the environment cannot set them.
_DKMS_DEFAULTS = {
    "verbose": "",
    "symlink_modules": "",
    "compress_gzip_opts": "",
    "compress_xz_opts": "--check=crc32 --lzma2=dict=1MiB",
    "compress_zstd_opts": "-q --rm -T0",
}


@dataclass(frozen=True)
class Settings:
    layout: Layout
    distro: str
    tmp_location: Path
    verbose: bool
    symlink_modules: bool
    autoinstall_all_kernels: bool
    modprobe_on_install: bool
    parallel_jobs: str
    compress_gzip_opts: str
    compress_xz_opts: str
    compress_zstd_opts: str
    build_environment: str
    post_transaction: str
    addon_modules_dir: str


@dataclass(frozen=True)
class SigningSettings:
    sign_file: str
    mok_signing_key: str
    mok_certificate: str
    try_sign_modules: str


def framework_files(layout: Layout) -> list[Path]:
    files = [layout.framework_conf]
    if layout.framework_conf_d.is_dir():
        files += sorted(layout.framework_conf_d.glob("*.conf"), key=lambda p: os.fsencode(p.name))
    return [f for f in files if f.exists()]


def detect_distro(layout: Layout) -> str:
    """dkms's running_distribution: `ubuntu`, else the first word of ID_LIKE, else ID."""
    for path in layout.os_release_candidates:
        if path.exists():
            values = _parse_os_release(path)
            ident = values.get("ID", "")
            if ident == "ubuntu":
                return ident
            like = values.get("ID_LIKE", "")
            if like:
                return like
            return ident
    raise DkmsError("System is missing os-release file.", code=4)


def _parse_os_release(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_settings(
    layout: Layout,
    environ: Mapping[str, str],
    *,
    dkms_tree: Path | None = None,
    source_tree: Path | None = None,
    install_tree: Path | None = None,
) -> Settings:
    distro = detect_distro(layout)
    scope = dict(_DKMS_DEFAULTS)
    scope.update(
        dkms_tree=os.fspath(layout.dkms_tree),
        source_tree=os.fspath(layout.source_tree),
        install_tree=os.fspath(layout.install_tree),
        tmp_location=environ.get("TMPDIR") or "/tmp",
    )
    # Values dkms does not reset leak in from the environment (run_test.sh relies on parallel_jobs).
    for name in NONSIGNING_VARIABLES:
        if name not in scope and name in environ:
            scope[name] = environ[name]
    values = shellconf.evaluate(
        framework_files(layout), NONSIGNING_VARIABLES, scope=scope, base_env=environ
    )

    def get(name: str) -> str:
        return values.get(name) if values.has(name) else scope.get(name, "")

    new_layout = layout.with_trees(
        dkms_tree=dkms_tree or Path(get("dkms_tree")),
        source_tree=source_tree or Path(get("source_tree")),
        install_tree=install_tree or Path(get("install_tree")),
    )
    parallel_jobs = get("parallel_jobs") or str(os.cpu_count() or 1)
    return Settings(
        layout=new_layout,
        distro=distro,
        tmp_location=Path(get("tmp_location") or "/tmp"),
        verbose=bool(get("verbose")),
        symlink_modules=bool(get("symlink_modules")),
        autoinstall_all_kernels=bool(get("autoinstall_all_kernels")),
        modprobe_on_install=bool(get("modprobe_on_install")),
        parallel_jobs=parallel_jobs,
        compress_gzip_opts=get("compress_gzip_opts"),
        compress_xz_opts=get("compress_xz_opts"),
        compress_zstd_opts=get("compress_zstd_opts"),
        build_environment=get("build_environment"),
        post_transaction=get("post_transaction"),
        addon_modules_dir=environ.get("ADDON_MODULES_DIR", ""),
    )


def load_signing(layout: Layout, environ: Mapping[str, str], kver: str) -> SigningSettings:
    """Read lazily per kernel, as dkms does, so `${kernelver}` works in the paths."""
    scope = {name: environ[name] for name in SIGNING_VARIABLES if name in environ}
    scope["kernelver"] = kver
    values = shellconf.evaluate(
        framework_files(layout), SIGNING_VARIABLES, scope=scope, base_env=environ
    )

    def get(name: str) -> str:
        return values.get(name) if values.has(name) else scope.get(name, "")

    return SigningSettings(
        sign_file=get("sign_file"),
        mok_signing_key=get("mok_signing_key"),
        mok_certificate=get("mok_certificate"),
        try_sign_modules=get("try_sign_modules"),
    )


def load_post_transaction(layout: Layout, environ: Mapping[str, str], kver: str = "") -> str:
    scope = (
        {"post_transaction": environ["post_transaction"]} if "post_transaction" in environ else {}
    )
    scope["kernelver"] = kver
    values = shellconf.evaluate(
        framework_files(layout), ("post_transaction",), scope=scope, base_env=environ
    )
    return (
        values.get("post_transaction")
        if values.has("post_transaction")
        else scope.get("post_transaction", "")
    )
