"""dkmshooks: a DKMS-compatible rebuild core with package-manager adapters."""

from __future__ import annotations

__version__ = "0.1.0"
# The `dkms` command is a drop-in for this upstream release; scripts and make.log headers read it.
DKMS_COMPAT_VERSION = "3.4.3"
DKMS_RELEASE_STRING = f"dkms-{DKMS_COMPAT_VERSION}"
