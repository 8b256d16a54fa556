from __future__ import annotations

from .cli import dkms_main

dkms_main()
