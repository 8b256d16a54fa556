from __future__ import annotations

from dkmshooks.versions import natural_key, ver_gt, ver_key, ver_lt


def test_ver_key_pads_like_dkms() -> None:
    assert ver_key("2.6.9-1cvs200409091247") == "002.006.009-001cvs200409091247"
    assert ver_key("6.1.0-56-amd64") == "006.001.000-056-amd064"


def test_ver_ordering() -> None:
    assert ver_gt("6.10", "6.9")
    assert ver_lt("1.0", "1.0.1")
    assert not ver_gt("1.0", "1.0")
    # dkms's documented quirk: MAX "6.1" excludes "6.1.0-x"
    assert ver_gt("6.1.0-56-amd64", "6.1")


def test_natural_key_orders_kernels() -> None:
    kernels = ["6.10.0", "6.9.0", "6.1.0-56-amd64", "6.1.0-9-amd64"]
    assert sorted(kernels, key=natural_key) == [
        "6.1.0-9-amd64",
        "6.1.0-56-amd64",
        "6.9.0",
        "6.10.0",
    ]
