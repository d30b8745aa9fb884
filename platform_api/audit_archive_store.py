"""Where archived audit segments live (a folder or S3), the archive records' table, and the retention settings."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from experiments.keys import mac, verify_mac
from platform_api.errors import PlatformError
from platform_api.settings import get_settings

__all__ = ["AUDIT_ARCHIVES", "MANIFEST_FIELDS", "ArchiveStore", "AuditArchiveError", "LocalStore", "RetentionSettings", "S3Store",
           "archive_location", "manifest_problem", "open_store", "retention_settings", "sign_manifest"]

#: One row per archived segment (migration 0006): append-only; the DELETE trigger on
#: ``audit_events`` lets only rows at or below the newest ``last_id`` go, oldest first.
AUDIT_ARCHIVES = sa.Table(
    "audit_archives", sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("first_id", sa.Integer, nullable=False),
    sa.Column("last_id", sa.Integer, nullable=False),
    sa.Column("events", sa.Integer, nullable=False),
    sa.Column("first_prev_hash", sa.String(64), nullable=False),
    sa.Column("last_hash", sa.String(64), nullable=False),
    sa.Column("first_at", sa.String(32), nullable=False),
    sa.Column("last_at", sa.String(32), nullable=False),
    sa.Column("segment", sa.String(200), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("archived_at", sa.DateTime, nullable=False),
    sa.Column("mac", sa.String(64), nullable=False),
)


#: What a manifest (and its ``audit_archives`` row) signs, in this order.
MANIFEST_FIELDS = ("first_id", "last_id", "events", "first_prev_hash", "last_hash", "first_at", "last_at", "segment",
                   "sha256", "bytes")
def _message(manifest: Mapping[str, Any]) -> str:
    return "archive:" + json.dumps({k: manifest[k] for k in MANIFEST_FIELDS}, sort_keys=True, separators=(",", ":"))


def sign_manifest(manifest: Mapping[str, Any], key: bytes) -> dict[str, Any]:
    """The manifest's fields with ``mac`` (HMAC-SHA256 under the audit key, message prefixed ``archive:``)."""
    fields = {k: manifest[k] for k in MANIFEST_FIELDS}
    return {**fields, "mac": mac(key, _message(fields))}


def manifest_problem(manifest: Any, key: bytes) -> str:
    """Why a manifest (or ``audit_archives`` row) cannot be trusted; empty when its MAC holds."""
    if not isinstance(manifest, Mapping) or any(k not in manifest for k in MANIFEST_FIELDS):
        return "not a readable manifest"
    return "" if verify_mac(key, _message(manifest), str(manifest.get("mac", ""))) else "its MAC does not verify (forged or altered)"


class AuditArchiveError(PlatformError):
    """Archiving refused or failed: a store that cannot be written or read back, a segment that does not verify."""


class RetentionSettings(BaseSettings):
    """Audit retention (``BIOVERSE_API_`` prefix, next to the API's other audit settings).

    Attributes:
        audit_retention_days: Events older than this are archived (default 7 years).
        audit_archive: A folder or ``s3://bucket/prefix``; empty: ``<data dir>/audit/archive``.
        audit_archive_segment_events: At most this many events per segment (one transaction each;
            on SQLite appenders wait for it: about 1 s at 50,000).
    """

    model_config = SettingsConfigDict(env_prefix="BIOVERSE_API_", extra="ignore")

    audit_retention_days: float = Field(default=2557, ge=0)
    audit_archive: str = ""
    audit_archive_segment_events: int = Field(default=50_000, ge=1)


@functools.cache
def retention_settings() -> RetentionSettings:
    """The retention settings, read once per process."""
    return RetentionSettings()


def archive_location() -> str:
    """The configured archive: ``BIOVERSE_API_AUDIT_ARCHIVE`` or ``<data dir>/audit/archive``."""
    return retention_settings().audit_archive or str(get_settings().data_dir / "audit" / "archive")


class ArchiveStore(Protocol):
    """A flat namespace of immutable objects: segments and their manifests."""

    def put(self, name: str, data: bytes) -> None:
        """Write ``name`` durably (replacing it whole)."""

    def get(self, name: str) -> bytes | None:
        """The bytes of ``name``; ``None`` when it does not exist."""

    def names(self) -> list[str]:
        """Every object's name."""

    def delete(self, name: str) -> None:
        """Remove ``name`` (missing is fine)."""


class LocalStore:
    """A folder: each object written to a temporary file, fsynced, renamed into place, the folder fsynced."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def put(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        folder = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def get(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_file() and not p.name.startswith("."))

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)


class S3Store:
    """``s3://bucket/prefix`` through boto3 (endpoint from ``AWS_ENDPOINT_URL``); a put is durable when it returns."""

    def __init__(self, bucket: str, prefix: str) -> None:
        import boto3

        self.bucket, self.prefix = bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client: Any = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as err:
            raise AuditArchiveError(f"{self}: cannot {what} ({' '.join(str(err).split())})") from err

    def put(self, name: str, data: bytes) -> None:
        with self._calling(f"write {name}"):
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)

    def get(self, name: str) -> bytes | None:
        with self._calling(f"read {name}"):
            try:
                return bytes(self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read())
            except self.client.exceptions.NoSuchKey:
                return None

    def names(self) -> list[str]:
        found = []
        with self._calling("list the archive"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                found += [item["Key"][len(self.prefix):] for item in page.get("Contents", ())]
        return sorted(n for n in found if "/" not in n)

    def delete(self, name: str) -> None:
        with self._calling(f"delete {name}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)


def open_store(location: str | Path | None = None) -> LocalStore | S3Store:
    """The store at ``location`` (a folder or ``s3://bucket/prefix``; default :func:`archive_location`)."""
    where = str(location or archive_location())
    if where.startswith("s3://"):
        bucket, _, prefix = where[5:].partition("/")
        if not bucket:
            raise AuditArchiveError(f"{where}: an S3 archive needs a bucket (s3://bucket/prefix)")
        return S3Store(bucket, prefix)
    return LocalStore(Path(where).expanduser())

