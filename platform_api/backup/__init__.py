"""Backup and restore of a whole installation: platform database, MLflow, Feast recipe, audit anchor (docs/backup.md)."""

from __future__ import annotations

from platform_api.backup.errors import BackupError, BackupFault, RestoreRefused
from platform_api.backup.manifest import FORMAT_VERSION, FileEntry, Manifest

__all__ = ["FORMAT_VERSION", "BackupError", "BackupFault", "FileEntry", "Manifest", "RestoreRefused"]
