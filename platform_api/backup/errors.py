"""Errors of backup and restore.

Hierarchy::

    BackupError (PlatformError)   a backup cannot be made, read or restored (one line in the CLI)
    ├── BackupFault               verify found missing, truncated or altered files
    └── RestoreRefused            the target installation is not empty (or the source kind differs)
"""

from __future__ import annotations

from platform_api.errors import PlatformError

__all__ = ["BackupError", "BackupFault", "RestoreRefused"]


class BackupError(PlatformError):
    """A backup cannot be made, read or restored."""


class BackupFault(BackupError):
    """Verify found faults; ``faults`` names each file and what is wrong with it."""

    def __init__(self, message: str, faults: list[str]) -> None:
        super().__init__(message)
        self.faults = faults


class RestoreRefused(BackupError):
    """The target is not an empty installation of the backup's kind."""
