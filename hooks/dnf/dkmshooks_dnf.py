"""dkmshooks's dnf4 plugin, installed as <python3 sitelib>/dnf-plugins/dkmshooks_dnf.py and
enabled by /etc/dnf/plugins/dkmshooks.conf. dnf calls transaction() after the rpm transaction and
every scriptlet in it (kernel-install included), with the resolved transaction in self.base; the
adapter reads its kernel packages there. PackageKit does not load dnf plugins: kernel-install's
40-dkmshooks.install covers what it installs."""

import dnf
import dnf.exceptions

from dkmshooks.adapters import dnf as adapter


class DkmsHooks(dnf.Plugin):
    name = "dkmshooks"

    def transaction(self):
        # Non-zero only with strict = true: the packages stay installed, dnf reports an error.
        if adapter.dnf4_transaction(self.base) != 0:
            raise dnf.exceptions.Error("dkmshooks: module builds failed (strict = true)")
