"""One error hierarchy; each class carries the exit code dkms uses for it."""

from __future__ import annotations

from collections.abc import Sequence


class DkmsError(Exception):
    """An error the user can act on. `lines` are printed as dkms prints them."""

    code: int = 1
    #: "error" prints "\nError! ..." like dkms's die(); "warn" prints "Warning: ..." (diewarn);
    #: "plain" prints the lines as they are, to stderr.
    style: str = "error"

    def __init__(self, *lines: str, hint: str | None = None, code: int | None = None) -> None:
        super().__init__("\n".join(lines))
        self.lines: Sequence[str] = lines
        self.hint = hint
        if code is not None:
            self.code = code


class UsageError(DkmsError):
    code = 1


class NotRootError(DkmsError):
    code = 1


class UnknownOptionError(DkmsError):
    code = 2


class SourceMissingError(DkmsError):
    code = 2


class AlreadyAddedError(DkmsError):
    code = 3


class NotAddedError(DkmsError):
    code = 3


class ConfMissingError(DkmsError):
    code = 4


class BrokenModuleError(DkmsError):
    code = 4


class ArgumentConflictError(DkmsError):
    code = 4


class AllBannedError(DkmsError):
    code = 5


class PatchMissingError(DkmsError):
    code = 5


class PatchFailedError(DkmsError):
    code = 6


class InstallError(DkmsError):
    code = 6


class BuiltModuleMissingError(DkmsError):
    code = 7


class BadConfError(DkmsError):
    code = 8


class NoConfInPathError(DkmsError):
    code = 9


class BuildFailedError(DkmsError):
    code = 10


class AutoinstallFailedError(DkmsError):
    code = 11


class ArchUnknownError(DkmsError):
    code = 12


class MissingDependsError(DkmsError):
    code = 13


class KernelHookError(DkmsError):
    code = 14


class EmptyKernelError(DkmsError):
    code = 16


class HeadersMissingError(DkmsError):
    code = 21


class ExcludedError(DkmsError):
    code = 77
    style = "warn"


class PreInstallFailedError(DkmsError):
    code = 101


class ScriptFailedError(DkmsError):
    """A PRE_BUILD/POST_BUILD script failed: dkms exits with the script's own status."""

    style = "plain"


class SilentExit(DkmsError):
    """Leave with a code after the messages were already printed."""

    style = "plain"


class CommandFailed(DkmsError):
    """A child process failed where the caller did not expect it (internal use)."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str = "") -> None:
        super().__init__(f"{argv[0]} exited with status {returncode}")
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
