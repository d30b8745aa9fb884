"""The MLflow store's artifact root: found, packed, restored, and the database's paths moved to a new root."""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from sqlalchemy import create_engine, inspect, text

from platform_api.backup.errors import BackupError
from platform_api.backup.stores import pack_folder, unpack

__all__ = ["artifact_root", "pack_artifacts", "relocate", "unpack_artifacts"]

#: Columns of the MLflow schema that hold artifact locations.
_PATH_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("model_versions", "source"),
                 ("model_versions", "storage_location"), ("logged_models", "artifact_location"))


def artifact_root(tracking_uri: str) -> str:
    """Where the store's artifacts live: ``mlartifacts`` beside a SQLite store, else the common
    parent of the experiments' artifact locations (``file:///...`` or ``s3://...``)."""
    from experiments.tracking import embedded_artifact_location

    if embedded := embedded_artifact_location(tracking_uri):
        return embedded
    engine = create_engine(tracking_uri)
    try:
        with engine.connect() as connection:
            locations = [row[0] for row in connection.execute(text("SELECT artifact_location FROM experiments"))]
    finally:
        engine.dispose()
    parents = {loc.rstrip("/").rsplit("/", 1)[0] for loc in locations if loc}
    if len(parents) != 1:
        raise BackupError(f"the MLflow experiments have {len(parents)} artifact roots; one is supported")
    return parents.pop()


def _local(root: str) -> Path | None:
    parsed = urlparse(root)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def _s3(root: str) -> tuple[object, str, str]:
    import os

    import boto3

    parsed = urlparse(root)
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or None
    return boto3.client("s3", endpoint_url=endpoint), parsed.netloc, parsed.path.strip("/")


def pack_artifacts(root: str, target: Path) -> int:
    """Tar every artifact under ``root`` (a folder or an S3 prefix) into ``target``; returns files packed."""
    if (folder := _local(root)) is not None:
        return pack_folder(folder, target)
    if not root.startswith("s3://"):
        raise BackupError(f"{root}: artifact roots on file or s3 are supported")
    s3, bucket, prefix = _s3(root)
    with tempfile.TemporaryDirectory() as tmp:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):  # type: ignore[attr-defined]
            for item in page.get("Contents", []):
                local = Path(tmp) / item["Key"][len(prefix):].lstrip("/")
                local.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, item["Key"], str(local))  # type: ignore[attr-defined]
        return pack_folder(Path(tmp), target)


def unpack_artifacts(archive: Path, root: str) -> None:
    """Put the artifacts of :func:`pack_artifacts` under ``root`` (a folder or an S3 prefix)."""
    if (folder := _local(root)) is not None:
        unpack(archive, folder)
        return
    s3, bucket, prefix = _s3(root)
    with tempfile.TemporaryDirectory() as tmp:
        for name in unpack(archive, Path(tmp)):
            local = Path(tmp) / name
            if local.is_file():
                s3.upload_file(str(local), bucket, f"{prefix}/{name}".lstrip("/"))  # type: ignore[attr-defined]


def relocate(tracking_uri: str, old_root: str, new_root: str) -> int:
    """Rewrite artifact locations under ``old_root`` to ``new_root`` in the restored MLflow database; returns rows changed."""
    if old_root.rstrip("/") == new_root.rstrip("/"):
        return 0
    old, new = old_root.rstrip("/"), new_root.rstrip("/")
    engine = create_engine(tracking_uri)
    changed = 0
    try:
        tables = set(inspect(engine).get_table_names())
        with engine.begin() as connection:
            for table, column in _PATH_COLUMNS:
                if table not in tables or column not in {c["name"] for c in inspect(engine).get_columns(table)}:
                    continue
                result = connection.execute(
                    text(f"UPDATE {table} SET {column} = :new || substr({column}, :cut) "
                         f"WHERE substr({column}, 1, :n) = :old"),
                    {"new": new, "cut": len(old) + 1, "n": len(old), "old": old})
                changed += result.rowcount or 0
    finally:
        engine.dispose()
    return changed
