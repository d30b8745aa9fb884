"""``bioverse doctor``'s checks: every store the settings name, reachable, at its schema, writable."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from feature_store.profile import get_profile, redact

__all__ = ["Check", "run_checks"]

Status = Literal["ok", "warn", "fail"]
TIMEOUT_SECONDS = 3


@dataclass(frozen=True)
class Check:
    """One service's verdict.

    Attributes:
        service: What was checked (``platform database``, ``MLflow artifacts``, ...).
        target: Where, with passwords redacted.
        status: ``ok``, ``warn`` (works, but needs a step, such as ``features init``) or ``fail``.
        detail: What was found, or why it failed (one line).
        seconds: How long the check took.
    """

    service: str
    target: str
    status: Status
    detail: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {**asdict(self), "seconds": round(self.seconds, 3)}


class _Failed(Exception):
    """A check's failure, with the line to show."""


def _one_line(error: BaseException) -> str:
    cause = getattr(error, "orig", None) or error
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text[:200]


def _timed(service: str, target: str, probe: Callable[[], tuple[Status, str]]) -> Check:
    started = time.perf_counter()
    try:
        status, detail = probe()
    except Exception as e:  # noqa: BLE001 - any failure of a probe is that service's verdict
        status, detail = "fail", _one_line(e)
    return Check(service, redact(target), status, detail, time.perf_counter() - started)


def _engine(url: str) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    args = {"connect_timeout": TIMEOUT_SECONDS} if url.startswith("postgres") else {}
    return create_engine(url, connect_args=args, poolclass=NullPool)


def _sqlite_missing(url: str) -> bool:
    return url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists()


def _schema_state(url: str, script_heads: set[str], tool: str) -> tuple[Status, str]:
    """Reachable, and the Alembic revision stored there against the code's head."""
    from alembic.runtime.migration import MigrationContext

    if _sqlite_missing(url):
        return "warn", "not created yet (created on first use)"
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()
    if not current:
        return "warn", f"reachable; empty (the schema is created on first use; {tool})"
    if current != script_heads:
        raise _Failed(f"schema at {', '.join(sorted(current))}, code expects {', '.join(sorted(script_heads))} ({tool})")
    return "ok", f"reachable; schema at head {', '.join(sorted(current))}"


def _platform_database(url: str) -> tuple[Status, str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from platform_api.db import ALEMBIC_INI

    heads = set(ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_heads())
    return _schema_state(url, heads, "`bioverse api serve` migrates on start")


def _mlflow_backend(uri: str) -> tuple[Status, str]:
    if uri.startswith(("http://", "https://")):
        import httpx

        answer = httpx.get(uri.rstrip("/") + "/health", timeout=TIMEOUT_SECONDS)
        answer.raise_for_status()
        return "ok", f"tracking server answers /health ({answer.text.strip()[:20]})"
    if uri.startswith("file:") or "://" not in uri:
        return "warn", "a file store (not a database)"
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _schema_state(uri, {_get_latest_schema_revision()}, "MLflow creates it on first use")


def _s3_artifacts(root: str) -> tuple[Status, str]:
    import boto3
    from botocore.config import Config as BotoConfig

    parts = urlsplit(root)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None  # else boto3's own (AWS_ENDPOINT_URL_S3, ...)
    client = boto3.client("s3", endpoint_url=endpoint, config=BotoConfig(
        connect_timeout=TIMEOUT_SECONDS, read_timeout=TIMEOUT_SECONDS, retries={"max_attempts": 1}))
    client.head_bucket(Bucket=bucket)
    key = "/".join(p for p in (prefix, ".bioverse-doctor", uuid.uuid4().hex) if p)
    client.put_object(Bucket=bucket, Key=key, Body=b"bioverse doctor")
    client.delete_object(Bucket=bucket, Key=key)
    return "ok", f"bucket {bucket} reachable with these credentials; write and delete worked"


def _local_folder(path: Path) -> tuple[Status, str]:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".bioverse-doctor-"):
        pass
    return "ok", "a local folder; writable"


def _mlflow_artifacts(uri: str) -> tuple[str, Callable[[], tuple[Status, str]]]:
    from experiments.settings import get_settings
    from experiments.tracking import embedded_artifact_location

    root = embedded_artifact_location(uri) if not uri.startswith(("http://", "https://")) else None
    root = root or get_settings().resolved_artifact_root()
    if not root:
        return "(the tracking server's)", lambda: ("ok", "the tracking server stores artifacts")
    if root.startswith("s3://"):
        return root, lambda: _s3_artifacts(root)
    if root.startswith("file:"):
        return root, lambda: _local_folder(Path(urlsplit(root).path))
    return root, lambda: ("warn", "not checked (only s3:// and local folders are)")


def _redis(url: str, *, write: bool) -> tuple[Status, str]:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS)
    try:
        client.ping()
        if write:
            key = f"bioverse:doctor:{uuid.uuid4().hex}"
            client.set(key, b"1", ex=10)
            client.delete(key)
        keys = client.dbsize()
    finally:
        client.close()
    return "ok", f"answers PING{'; write worked' if write else ''}; {keys} keys in this database"


def _feast_redis_url(connection: str) -> str:
    """Feast's ``host:port,db=N,password=..,ssl=true`` as a redis:// URL."""
    address, *options = connection.split(",")
    fields = dict(o.split("=", 1) for o in options if "=" in o)
    scheme = "rediss" if fields.get("ssl", "").lower() == "true" else "redis"
    auth = f":{fields['password']}@" if fields.get("password") else ""
    return f"{scheme}://{auth}{address}/{fields.get('db', '0')}"


def _feast_registry(registry: str, repo_dir: Path) -> tuple[str, Callable[[], tuple[Status, str]]]:
    if registry:
        def probe() -> tuple[Status, str]:
            from sqlalchemy import inspect

            engine = _engine(registry)
            try:
                tables = set(inspect(engine).get_table_names())
            finally:
                engine.dispose()
            if "feature_views" not in tables:
                return "warn", "reachable; no registry yet: run `bioverse features init`"
            return "ok", f"reachable; SQL registry ({len(tables)} tables)"

        return registry, probe
    path = repo_dir / "data" / "registry.db"
    return str(path), lambda: ("ok", "file registry") if path.exists() else ("warn", "no registry yet: run `bioverse features init`")


def _online_store(online_store: str, redis_url: str, repo_dir: Path) -> tuple[str, Callable[[], tuple[Status, str]]]:
    if online_store == "redis":
        url = _feast_redis_url(redis_url)
        return url, lambda: _redis(url, write=False)
    path = repo_dir / "data" / "online.db"
    return str(path), lambda: ("ok", "SQLite file") if path.exists() else ("warn", "no online store yet: run `bioverse features init`")


def _free_space(path: Path, min_free_bytes: int) -> tuple[Status, str]:
    path.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(path)
    detail = f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB"
    if usage.free < min_free_bytes:
        raise _Failed(f"{detail}; below the {min_free_bytes / 2**30:.1f} GiB asked for")
    return "ok", detail


def run_checks(*, min_free_bytes: int = 2**30) -> tuple[str, list[Check]]:
    """Check every store the settings (and the profile) name.

    Returns:
        The profile's name and one check per service, in a fixed order.

    Raises:
        ProfileError: the production profile is half-configured (nothing to check against).
    """
    from feature_store.settings import get_settings as feature_settings
    from platform_api.settings import get_settings

    profile = get_profile()
    api, features = get_settings(), feature_settings()
    database, tracking = api.resolved_database_url(), api.resolved_tracking_uri()
    checks = [_timed("platform database", database, lambda: _platform_database(database)),
              _timed("MLflow backend", tracking, lambda: _mlflow_backend(tracking))]
    target, probe = _mlflow_artifacts(tracking)
    checks.append(_timed("MLflow artifacts", target, probe))
    target, probe = _feast_registry(features.feast_registry, features.repo_dir)
    checks.append(_timed("Feast registry", target, probe))
    target, probe = _online_store(features.online_store, features.redis_url, features.repo_dir)
    checks.append(_timed("Feast online store", target, probe))
    if api.cache_url:
        checks.append(_timed("API caches", api.cache_url, lambda: _redis(api.cache_url, write=True)))
    else:
        checks.append(Check("API caches", "in-process", "ok", "per process (no Redis configured)", 0.0))
    checks.append(_timed("data dir free space", str(api.data_dir), lambda: _free_space(api.data_dir, min_free_bytes)))
    return profile.profile, checks

