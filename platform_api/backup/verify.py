"""``bioverse backup verify`` and ``list``: re-hash (and decrypt-check) every file against the manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from platform_api.backup.crypto import decrypt_file
from platform_api.backup.destination import Destination
from platform_api.backup.errors import BackupError
from platform_api.backup.manifest import MANIFEST, FileEntry, Manifest, compare_file, unexpected_files

__all__ = ["VERIFIED", "BackupInfo", "VerifyResult", "list_backups", "read_entry", "read_manifest", "verify_backup"]

VERIFIED = "verified.json"


class _Hashing:
    """A stream that hashes and counts what is read from it."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.sha, self.size = stream, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def drain(self) -> tuple[str, int]:
        while self.read(1 << 20):
            pass
        return self.sha.hexdigest(), self.size


def read_entry(destination: Destination, name: str, entry: FileEntry, key: bytes | None, encrypted: bool,
               target: Path | None = None) -> str | None:
    """Read one stored file, hashing it (and decrypting it into ``target`` or just checking it); the fault, or None."""
    try:
        stream = destination.open(name, entry.path)
    except FileNotFoundError:
        return f"{entry.path}: missing"
    with stream:
        reader = _Hashing(stream)
        problem = None
        out = target.open("wb") if target is not None else None
        try:
            if encrypted and key is not None:
                try:
                    decrypt_file(key, reader, out)  # type: ignore[arg-type]
                except BackupError as err:
                    problem = f"{entry.path}: does not decrypt: {err}"
            elif out is not None:
                while chunk := reader.read(1 << 20):
                    out.write(chunk)
        finally:
            if out is not None:
                out.close()
        return compare_file(entry, reader.drain()) or problem


def read_manifest(destination: Destination, name: str) -> Manifest:
    """The manifest of a complete backup.

    Raises:
        BackupError: no such complete backup, or an unreadable manifest.
    """
    text = destination.read_text(name, MANIFEST)
    if text is None:
        raise BackupError(f"{destination.url}/{name}: no complete backup of that name (no manifest)")
    try:
        return Manifest.from_json(text)
    except (ValueError, TypeError) as err:
        raise BackupError(f"{name}/{MANIFEST}: {err}") from err


@dataclass(frozen=True)
class VerifyResult:
    """What verify found: each fault (missing, truncated, altered, not decrypting), and notes."""

    manifest: Manifest
    faults: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        """True when every file matches the manifest (and decrypts, where checked)."""
        return not self.faults


def verify_backup(destination: Destination, name: str, key: bytes | None, *, record: bool = True) -> VerifyResult:
    """Re-hash every file of backup ``name`` (decrypting it when the key is given) and record the outcome."""
    manifest = read_manifest(destination, name)
    faults = [f for entry in manifest.files if (f := read_entry(destination, name, entry, key, manifest.encrypted))]
    notes = [f"{n}: not in the manifest (ignored)" for n in unexpected_files(manifest, destination.files(name))]
    if manifest.encrypted and key is None:
        notes.append("encrypted and no key given: hashes checked, decryption not")
    if record:
        destination.write_text(name, VERIFIED, json.dumps(
            {"at": datetime.now(UTC).isoformat(timespec="seconds"), "ok": not faults, "faults": faults,
             "decrypt_checked": manifest.encrypted and key is not None}))
    return VerifyResult(manifest, faults, notes)


@dataclass(frozen=True)
class BackupInfo:
    """One line of ``backup list``."""

    name: str
    created_at: str
    size: int
    encrypted: bool
    verified: str


def list_backups(destination: Destination) -> tuple[list[BackupInfo], list[str]]:
    """(complete backups, oldest first, with their last verify; names of incomplete ones)."""
    complete, partial = destination.names()
    infos = []
    for name in complete:
        try:
            manifest = read_manifest(destination, name)
        except BackupError:
            partial.append(f"{name} (unreadable manifest)")
            continue
        state = "not verified"
        if (text := destination.read_text(name, VERIFIED)) is not None:
            try:
                record = json.loads(text)
                state = f"{'ok' if record['ok'] else 'FAILED'} {record['at']}"
            except (ValueError, KeyError, TypeError):
                state = "unreadable verify record"
        infos.append(BackupInfo(name, manifest.created_at, manifest.size, manifest.encrypted, state))
    return sorted(infos, key=lambda i: i.created_at), partial
