"""The backup manifest: what was copied, each file's size and sha256, row counts and the audit head (pure code)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["FORMAT_VERSION", "MANIFEST", "FileEntry", "Manifest", "compare_file", "redact", "redact_url", "sha256_file",
           "sha256_stream", "unexpected_files"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_CHUNK = 1 << 20
_SECRET_NAME = re.compile(r"(secret|password|token|key)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"^(?P<head>[a-z][a-z0-9+.-]*://[^:/@]*:)(?P<pw>[^@]*)(?P<tail>@.*)$", re.IGNORECASE)


def redact_url(value: str) -> str:
    """A URL with its password replaced by ``***`` (``postgresql://u:***@host/db``)."""
    match = _URL_PASSWORD.match(value)
    return f"{match['head']}***{match['tail']}" if match else value


def redact(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings safe to store: values of secret-looking names become ``***`` (when set), URLs lose passwords."""
    safe: dict[str, Any] = {}
    for name, value in settings.items():
        if _SECRET_NAME.search(name) and value not in ("", None):
            safe[name] = "***"
        elif isinstance(value, str):
            safe[name] = redact_url(value)
        elif isinstance(value, Path):
            safe[name] = str(value)
        else:
            safe[name] = value
    return safe


def sha256_stream(stream: BinaryIO) -> tuple[str, int]:
    """(sha256 hex, bytes read) of a stream, read in 1 MiB chunks."""
    h, size = hashlib.sha256(), 0
    while chunk := stream.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file."""
    with path.open("rb") as stream:
        return sha256_stream(stream)


@dataclass(frozen=True)
class FileEntry:
    """One file of a backup: its name in the backup, what it holds, size and sha256 as stored.

    ``plain_size``/``plain_sha256`` describe the content before encryption (equal to the
    stored ones in a plain backup).
    """

    path: str
    role: str
    size: int
    sha256: str
    plain_size: int
    plain_sha256: str


@dataclass
class Manifest:
    """Everything a backup holds; ``manifest.json`` is written last, so its presence marks a complete backup."""

    name: str
    created_at: str
    encrypted: bool
    database_kind: str
    source: dict[str, Any]
    files: list[FileEntry] = field(default_factory=list)
    row_counts: dict[str, int] = field(default_factory=dict)
    audit_head: dict[str, Any] = field(default_factory=dict)
    mlflow: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @property
    def size(self) -> int:
        """Bytes stored (all files, not counting the manifest)."""
        return sum(f.size for f in self.files)

    def file(self, role: str) -> FileEntry | None:
        """The (first) file of ``role``."""
        return next((f for f in self.files if f.role == role), None)

    def files_of(self, role: str) -> list[FileEntry]:
        """Every file of ``role``."""
        return [f for f in self.files if f.role == role]

    def to_json(self) -> str:
        """The manifest as stable, indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse a manifest; refuses a format this code does not know.

        Raises:
            ValueError: not a manifest, or a newer format.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or "format_version" not in data:
            raise ValueError("not a BioVerse backup manifest")
        if int(data["format_version"]) > FORMAT_VERSION:
            raise ValueError(f"backup format {data['format_version']} is newer than this BioVerse reads ({FORMAT_VERSION})")
        files = [FileEntry(**f) for f in data.pop("files", [])]
        known = set(cls.__dataclass_fields__)
        return cls(files=files, **{k: v for k, v in data.items() if k in known})


def compare_file(entry: FileEntry, found: tuple[str, int] | None) -> str | None:
    """What is wrong with a stored file given its (sha256, size), or ``None`` when it matches."""
    if found is None:
        return f"{entry.path}: missing"
    digest, size = found
    if size < entry.size:
        return f"{entry.path}: truncated ({size} of {entry.size} bytes)"
    if size != entry.size:
        return f"{entry.path}: size {size}, the manifest says {entry.size} (altered)"
    if digest != entry.sha256:
        return f"{entry.path}: sha256 differs from the manifest (altered)"
    return None


def unexpected_files(manifest: Manifest, names: Iterable[str]) -> list[str]:
    """Files in the backup folder the manifest does not list (ignoring the manifest and verify's record)."""
    listed = {f.path for f in manifest.files} | {MANIFEST, "verified.json"}
    return sorted(n for n in names if n not in listed)
