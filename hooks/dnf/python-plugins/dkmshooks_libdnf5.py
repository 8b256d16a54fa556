"""dkmshooks's libdnf5 Python plugin, installed as $LIBDNF_PYTHON_PLUGIN_DIR/dkmshooks_libdnf5.py
for dnf5 installations that run Python plugins: python3-libdnf5-python-plugins-loader imports
every *.py there and instantiates its `Plugin` (only when that variable is set: a plain dnf5
relies on dkmshooks.actions instead). It lives in its own directory here because dnf4 loads every
*.py of its plugin path. libdnf5 calls post_transaction() after the rpm transaction and its
scriptlets; the adapter reads the kernel packages of the transaction there."""

import libdnf5

from dkmshooks.adapters import dnf as adapter


class Plugin(libdnf5.plugin.IPlugin):
    def __init__(self, data=None):
        # Loaders of libdnf5 ≥ 5.2 pass the plugin data; older ones call Plugin().
        if data is None:
            super().__init__()
        else:
            super().__init__(data)

    @staticmethod
    def get_api_version():
        return libdnf5.PluginAPIVersion(2, 0)

    @staticmethod
    def get_name():
        return "dkmshooks"

    @staticmethod
    def get_version():
        return libdnf5.plugin.Version(0, 1, 0)

    def get_attribute(self, name):
        return {
            "author.name": "dkmshooks",
            "description": "Builds DKMS modules when kernel-devel arrives after its kernel.",
        }.get(name)

    def post_transaction(self, transaction):
        # Non-zero only with strict = true.
        if adapter.libdnf5_post_transaction(self.get_base(), transaction, libdnf5.transaction):
            raise RuntimeError("dkmshooks: module builds failed (strict = true)")
