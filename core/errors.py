"""Exceptions a user can act on; each carries the one line the user will read."""

from __future__ import annotations

from core.findings import ReturnCode


class BlockvaultError(Exception):
    """Base of every error blockvault reports to a user.

    The message is the whole story in one line: the thing that is wrong and the fix.
    """

    return_code: ReturnCode = ReturnCode.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TargetError(BlockvaultError):
    """A TARGET argument names nothing blockvault can work on."""


class NeedsRootError(BlockvaultError):
    """The operation reads or changes devices and must run as root."""


class DeviceReadError(BlockvaultError):
    """A block device could not be opened or read."""
