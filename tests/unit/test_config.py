from __future__ import annotations

from pathlib import Path

import pytest

from dkmshooks.config import Config, ConfigError, load_config, log_path_for
from dkmshooks.layout import Layout


def write(root: Path, text: str) -> Layout:
    layout = Layout(root=root)
    layout.config_toml.parent.mkdir(parents=True, exist_ok=True)
    layout.config_toml.write_text(text)
    return layout


def test_missing_file_gives_defaults(root: Path) -> None:
    assert load_config(Layout(root=root)) == Config()


def test_full_config(root: Path) -> None:
    layout = write(
        root,
        'strict = true\njobs = 3\nlog_path = "/var/log/x.log"\ninitramfs = "always"\n'
        '[modules.nvidia]\nstrict = false\ninitramfs = "never"\n[modules.zfs]\nskip = true\n',
    )
    config = load_config(layout)
    assert config.strict and config.jobs == 3 and config.initramfs == "always"
    assert not config.is_strict_for("nvidia")
    assert config.is_strict_for("other")
    assert config.module("zfs").skip
    assert log_path_for(layout, config) == root / "var/log/x.log"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("strict = 1\n", "strict: expected bool"),
        ("jobs = 0\n", "jobs must be at least 1"),
        ('initramfs = "sometimes"\n', "initramfs must be one of"),
        ("bogus = 1\n", "unknown setting 'bogus'"),
        ("[modules.x]\nfoo = 1\n", "unknown setting 'foo'"),
        ("strict = \n", "is not valid TOML"),
    ],
)
def test_bad_config_is_a_clear_error(root: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(root, text))
    assert needle in " ".join(info.value.lines)
