"""What dnf5's python_plugins_loader.cpp does with $LIBDNF_PYTHON_PLUGIN_DIR, in Python: append
the directory to sys.path, import every *.py in it (sorted) by its stem, take the module's
`libdnf5` global (the loader reaches libdnf5.base.Base through it, so a plugin must
`import libdnf5` at module level) and its `Plugin` class, instantiate it with the plugin data and
add it to the locked Base. Then libdnf5 calls the hooks; `run_transaction` calls the two
transaction hooks the way base/transaction.cpp does (pre before the rpm run, post after it)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import libdnf5


def load_plugins(plugin_dir: Path, base: libdnf5.base.Base) -> list[Any]:
    if str(plugin_dir) not in sys.path:
        sys.path.append(str(plugin_dir))
    base.lock()
    loaded = []
    for path in sorted(plugin_dir.glob("*.py")):
        module = importlib.import_module(path.stem)
        binding = vars(module)["libdnf5"]  # KeyError, like PyDict_GetItemString failing
        plugin = vars(module)["Plugin"](libdnf5.plugin.IPluginData(base))
        binding.base.Base.get_locked_base().add_plugin(plugin)
        loaded.append(plugin)
    for plugin in loaded:
        plugin.init()
    return loaded


def run_transaction(plugins: list[Any], transaction: libdnf5.base.Transaction) -> None:
    for plugin in plugins:
        plugin.pre_transaction(transaction)
    for plugin in plugins:
        plugin.post_transaction(transaction)
