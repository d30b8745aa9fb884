"""Where backups live: a folder, or an S3 prefix (``s3://bucket/prefix``). A backup is complete
once its ``manifest.json`` is there: a folder is renamed into place after it, on S3 it is the last object written."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from platform_api.backup.errors import BackupError
from platform_api.backup.manifest import MANIFEST

__all__ = ["Destination", "FolderDestination", "S3Destination", "open_destination"]

_STAGING = ".incomplete-"
F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def _s3_errors(what: str, where: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise FileNotFoundError(where) from err
        raise BackupError(f"{where}: cannot {what} ({err.response.get('Error', {}).get('Code', 'error')}: {err})") from err
    except BotoCoreError as err:
        raise BackupError(f"{where}: cannot {what} ({err})") from err


def _s3_call(what: str) -> Callable[[F], F]:
    """S3 failures (no bucket, no credentials, endpoint down) become one-line :class:`BackupError` s."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(self: S3Destination, *args: Any, **kwargs: Any) -> Any:
            with _s3_errors(what, self.url):
                return fn(self, *args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap


class Destination(ABC):
    """A place holding backups by name (a folder or an S3 prefix); see :func:`open_destination`."""

    url: str

    @abstractmethod
    def put(self, name: str, relpath: str, local: Path, *, staging: bool = True) -> None:
        """Store ``local`` as ``relpath`` of backup ``name`` (in its staging area while it is made)."""

    @abstractmethod
    def commit(self, name: str, manifest_text: str) -> None:
        """Write the manifest and make the backup visible as complete."""

    @abstractmethod
    def abort(self, name: str) -> None:
        """Remove a backup's staging area."""

    @abstractmethod
    def names(self) -> tuple[list[str], list[str]]:
        """(complete backups, incomplete ones: a create that died or is still running), each sorted."""

    @abstractmethod
    def files(self, name: str) -> dict[str, int]:
        """Every file of a complete backup with its size."""

    @abstractmethod
    def open(self, name: str, relpath: str) -> BinaryIO:
        """Read a file of a complete backup (FileNotFoundError when absent)."""

    def read_text(self, name: str, relpath: str) -> str | None:
        """A small file of a complete backup as text, ``None`` when absent."""
        try:
            with self.open(name, relpath) as stream:
                return stream.read().decode()
        except FileNotFoundError:
            return None

    @abstractmethod
    def write_text(self, name: str, relpath: str, text: str) -> None:
        """Write a small file into a complete backup (verify's record)."""


class FolderDestination(Destination):
    """Backups as sub-folders of ``root``; one is made in ``.incomplete-<name>`` and renamed when whole."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def _staging(self, name: str) -> Path:
        return self.root / f"{_STAGING}{name}"

    def put(self, name: str, relpath: str, local: Path, *, staging: bool = True) -> None:
        target = (self._staging(name) if staging else self.root / name) / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        if local.resolve() != target.resolve():
            shutil.copyfile(local, target)

    def staging_path(self, name: str) -> Path:
        """The folder a backup is written into while it is made (files can be produced there directly)."""
        path = self._staging(name)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self, name: str, manifest_text: str) -> None:
        staging = self._staging(name)
        _write_synced(staging / MANIFEST, manifest_text.encode())
        for path in staging.rglob("*"):
            if path.is_file():
                _fsync(path)
        final = self.root / name
        if final.exists():
            raise BackupError(f"{final}: a backup of that name exists")
        os.rename(staging, final)
        _fsync_dir(self.root)

    def abort(self, name: str) -> None:
        shutil.rmtree(self._staging(name), ignore_errors=True)

    def names(self) -> tuple[list[str], list[str]]:
        if not self.root.is_dir():
            return [], []
        complete, partial = [], []
        for child in self.root.iterdir():
            if not child.is_dir():
                continue
            if child.name.startswith(_STAGING):
                partial.append(child.name.removeprefix(_STAGING))
            elif (child / MANIFEST).is_file():
                complete.append(child.name)
        return sorted(complete), sorted(partial)

    def files(self, name: str) -> dict[str, int]:
        base = self.root / name
        return {p.relative_to(base).as_posix(): p.stat().st_size for p in base.rglob("*") if p.is_file()}

    def open(self, name: str, relpath: str) -> BinaryIO:
        return (self.root / name / relpath).open("rb")

    def write_text(self, name: str, relpath: str, text: str) -> None:
        _write_synced(self.root / name / relpath, text.encode())


class S3Destination(Destination):
    """Backups under ``s3://bucket/prefix/<name>/``; the endpoint comes from ``AWS_ENDPOINT_URL`` or
    ``MLFLOW_S3_ENDPOINT_URL`` (credentials as boto3 finds them)."""

    def __init__(self, url: str) -> None:
        import boto3

        self.url = url.rstrip("/")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise BackupError(f"{url}: an S3 destination is s3://bucket/prefix")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
        self.s3: Any = boto3.client("s3", endpoint_url=endpoint)

    def _key(self, name: str, relpath: str = "") -> str:
        return "/".join(p for p in (self.prefix, name, relpath) if p)

    @_s3_call("upload")
    def put(self, name: str, relpath: str, local: Path, *, staging: bool = True) -> None:
        self.s3.upload_file(str(local), self.bucket, self._key(name, relpath))

    @_s3_call("write the manifest")
    def commit(self, name: str, manifest_text: str) -> None:
        if self.read_text(name, MANIFEST) is not None:
            raise BackupError(f"{self._key(name)}: a backup of that name exists")
        self.s3.put_object(Bucket=self.bucket, Key=self._key(name, MANIFEST), Body=manifest_text.encode())

    @_s3_call("remove the staging objects")
    def abort(self, name: str) -> None:
        keys = [{"Key": k} for k in self._objects(self._key(name) + "/")]
        for start in range(0, len(keys), 1000):
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start:start + 1000]})

    @_s3_call("list objects")
    def _objects(self, prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = item["Size"]
        return found

    def names(self) -> tuple[list[str], list[str]]:
        base = f"{self.prefix}/" if self.prefix else ""
        seen: dict[str, bool] = {}
        for key in self._objects(base):
            name, _, rest = key[len(base):].partition("/")
            if rest:
                seen[name] = seen.get(name, False) or rest == MANIFEST
        return sorted(n for n, ok in seen.items() if ok), sorted(n for n, ok in seen.items() if not ok)

    def files(self, name: str) -> dict[str, int]:
        base = self._key(name) + "/"
        return {k[len(base):]: size for k, size in self._objects(base).items()}

    @_s3_call("read")
    def open(self, name: str, relpath: str) -> BinaryIO:
        return self.s3.get_object(Bucket=self.bucket, Key=self._key(name, relpath))["Body"]  # type: ignore[no-any-return]

    @_s3_call("write")
    def write_text(self, name: str, relpath: str, text: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._key(name, relpath), Body=text.encode())


def open_destination(where: str) -> Destination:
    """A folder path or an ``s3://bucket/prefix`` URL."""
    if where.startswith("s3://"):
        return S3Destination(where)
    return FolderDestination(Path(where).expanduser())


def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync(path)
