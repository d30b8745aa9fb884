"""``bioverse backup restore``: into an empty installation only, verified first, all or nothing (docs/backup.md)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text

from platform_api.backup.create import Installation
from platform_api.backup.destination import Destination
from platform_api.backup.errors import BackupError, BackupFault, RestoreRefused
from platform_api.backup.mlflow_store import relocate, unpack_artifacts
from platform_api.backup.stores import database_kind, empty_postgres, restore_database, sqlite_path, unpack
from platform_api.backup.verify import read_entry, read_manifest

__all__ = ["FAILED", "IN_PROGRESS", "non_empty_parts", "restore_backup"]

log = logging.getLogger(__name__)
IN_PROGRESS, FAILED = "RESTORE-IN-PROGRESS.json", "RESTORE-FAILED.json"


def _has_tables(url: str) -> bool:
    if database_kind(url) == "sqlite":
        path = sqlite_path(url)
        return path.exists() and path.stat().st_size > 0
    engine = create_engine(url)
    try:
        return bool(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _artifact_folder(target: Installation) -> Path | None:
    from experiments.tracking import embedded_artifact_location

    embedded = embedded_artifact_location(target.tracking_uri)
    return Path(embedded.removeprefix("file://")) if embedded else None


def non_empty_parts(target: Installation) -> list[str]:
    """What the target installation already holds (empty list: an empty installation)."""
    found = [f"platform database ({target.database_url.split('@')[-1]})"] if _has_tables(target.database_url) else []
    if _has_tables(target.tracking_uri):
        found.append("MLflow store")
    for label, path in (("feature repo", target.feature_repo / "feature_store.yaml"), ("checkpoints", target.checkpoints)):
        if path.exists():
            found.append(f"{label} ({path})")
    for folder in (_artifact_folder(target), target.data_dir / "audit", target.data_dir / "keys"):
        if folder is not None and folder.is_dir() and any(folder.iterdir()):
            found.append(str(folder))
    if (target.data_dir / IN_PROGRESS).exists():
        found.append(f"an interrupted restore ({target.data_dir / IN_PROGRESS})")
    return found


def _carry_checkpoints(source_db: str, head: dict[str, Any], target: Installation, key: bytes) -> int:
    """Re-anchor the source's checkpoints (MAC checked, up to the copied head) to the restored database's id."""
    from experiments.keys import mac
    from platform_api.audit_checkpoints import database_id, read_checkpoints

    new_db = database_id(target.database_url)
    if new_db == source_db or not target.checkpoints.exists():
        return 0
    lines = []
    for cp in read_checkpoints(source_db, path=target.checkpoints, key=key):
        if not cp.valid or cp.last_id > int(head.get("last_id", 0)):
            continue
        record: dict[str, Any] = {"db": new_db, "events": cp.events, "last_id": cp.last_id, "head": cp.head,
                                  "legacy_until": cp.legacy_until, "at": cp.at}
        # the message audit_checkpoints signs (keep in step with it): "checkpoint:" + compact sorted JSON
        record["mac"] = mac(key, "checkpoint:" + json.dumps(record, sort_keys=True, separators=(",", ":")))
        lines.append(json.dumps(record, sort_keys=True) + "\n")
    with target.checkpoints.open("a") as out:
        out.writelines(lines)
    return len(lines)


def _check_audit(target: Installation, manifest_head: dict[str, Any], source_db: str) -> str:
    from sqlalchemy.orm import Session

    from experiments.errors import SecretKeyError
    from experiments.keys import secret_key
    from platform_api.audit_archive_store import archive_location, open_store
    from platform_api.audit_archive_verify import verify_all
    from platform_api.audit_checkpoints import write_checkpoint

    try:
        key = secret_key("audit", data_dir=target.data_dir, create=False)
    except SecretKeyError as err:
        return f"not verified: {err}"
    carried = _carry_checkpoints(source_db, manifest_head, target, key)
    engine = create_engine(target.database_url)
    try:
        with Session(engine) as session:  # archived segments (restored under audit/archive) and live table as one chain
            check = verify_all(session, open_store(archive_location()), checkpoints=target.checkpoints, key=key)
        if not check.ok:
            raise BackupError(f"the restored audit chain does not verify: {check.breaks[0].event_id}: {check.reason}")
        write_checkpoint(engine, path=target.checkpoints, key=key)
    finally:
        engine.dispose()
    return f"intact: {check.events} events, {check.checkpoints} checkpoints ({carried} carried over)"


def _check_counts(url: str, expected: dict[str, int]) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            for table, count in expected.items():
                found = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                if found != count:
                    raise BackupError(f"{table}: {found} rows restored, the backup holds {count}")
    finally:
        engine.dispose()


def _remove(path: Path) -> Callable[[], None]:
    def undo() -> None:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                p.unlink(missing_ok=True)
    return undo


def _database_undo(url: str) -> Callable[[], None]:
    return _remove(sqlite_path(url)) if database_kind(url) == "sqlite" else lambda: empty_postgres(url)


def restore_backup(destination: Destination, name: str, target: Installation, *, key: bytes | None,
                   force: bool = False, keys_from: Path | None = None,
                   rebuild_features: bool = False) -> dict[str, Any]:
    """Restore backup ``name`` into ``target`` and return what was done (timings, counts, audit, feature recipe).

    Raises:
        RestoreRefused: the target is not empty (without ``force``) or of another kind.
        BackupFault: a file is missing, truncated, altered or does not decrypt (nothing was placed).
        BackupError: a step failed; the target was emptied again (or marked ``RESTORE-FAILED.json``).
    """
    started = time.perf_counter()
    manifest = read_manifest(destination, name)
    if manifest.encrypted and key is None:
        raise BackupError(f"{name} is encrypted: give --key-file or set BIOVERSE_BACKUP_KEY")
    for what, url, kind in (("platform database", target.database_url, manifest.database_kind),
                            ("MLflow store", target.tracking_uri, manifest.mlflow.get("kind", "sqlite"))):
        if database_kind(url) != kind:
            raise RestoreRefused(f"the backup's {what} is {kind}, the target's is {database_kind(url)}: restore into the same kind")
    if parts := non_empty_parts(target):
        if not force:
            raise RestoreRefused(f"the target installation is not empty ({'; '.join(parts)}); restore needs an empty "
                                 "one (--force replaces it)")
        log.warning("--force: deleting the target's %s before restoring", "; ".join(parts))
        _wipe(target)
    target.data_dir.mkdir(parents=True, exist_ok=True)
    marker = target.data_dir / IN_PROGRESS
    marker.write_text(json.dumps({"backup": name, "from": destination.url, "started": datetime.now(UTC).isoformat()}))
    staging = target.data_dir / f".restore-{name}"
    undo: list[Callable[[], None]] = [_remove(staging)]
    report: dict[str, Any] = {"backup": name}
    try:
        staging.mkdir(parents=True, exist_ok=True)
        staged: dict[str, Path] = {}
        faults = []
        for entry in manifest.files:
            path = staging / entry.path.removesuffix(".enc")
            if fault := read_entry(destination, name, entry, key, manifest.encrypted, target=path):
                faults.append(fault)
            staged[entry.role] = path
        if faults:
            raise BackupFault(f"backup {name} does not verify; nothing was restored: {'; '.join(faults)}", faults)
        report["verify_seconds"] = round(time.perf_counter() - started, 2)
        undo.append(_database_undo(target.database_url))
        restore_database(staged["platform-db"], target.database_url)
        undo.append(_database_undo(target.tracking_uri))
        restore_database(staged["mlflow-db"], target.tracking_uri)
        new_root = manifest.mlflow["artifact_root"]
        if (folder := _artifact_folder(target)) is not None:
            new_root = folder.as_uri()
            undo.append(_remove(folder))
        unpack_artifacts(staged["mlflow-artifacts"], new_root)
        report["mlflow_paths_moved"] = relocate(target.tracking_uri, manifest.mlflow["artifact_root"], new_root)
        if "feature-repo" in staged:
            undo.append(_remove(target.feature_repo))
            unpack(staged["feature-repo"], target.feature_repo)
            _set_registry_aside(target.feature_repo)
        undo.append(_remove(target.data_dir / "audit"))
        names = unpack(staged["audit"], target.data_dir / "audit")
        if "checkpoints.jsonl" in names and target.checkpoints != target.data_dir / "audit" / "checkpoints.jsonl":
            target.checkpoints.parent.mkdir(parents=True, exist_ok=True)
            os.replace(target.data_dir / "audit" / "checkpoints.jsonl", target.checkpoints)
            undo.append(_remove(target.checkpoints))
        _place_keys(target, staged.get("keys"), keys_from, undo)
        from platform_api.db import migrate

        migrate(target.database_url)
        _check_counts(target.database_url, manifest.row_counts)
        report["row_counts"] = manifest.row_counts
        report["audit"] = _check_audit(target, manifest.audit_head, str(manifest.source.get("audit_db_id", "")))
        report["features"] = _features(target, manifest.features, rebuild_features)
    except BaseException as err:
        failed = _undo(undo)
        if failed:
            (target.data_dir / FAILED).write_text(json.dumps({"backup": name, "error": str(err), "not_undone": failed}))
        marker.unlink(missing_ok=True)
        if isinstance(err, BackupError) or not isinstance(err, Exception):
            raise
        raise BackupError(f"restore failed and was undone: {type(err).__name__}: {err}") from err
    shutil.rmtree(staging, ignore_errors=True)
    marker.unlink(missing_ok=True)
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


def _place_keys(target: Installation, archive: Path | None, keys_from: Path | None, undo: list[Callable[[], None]]) -> None:
    keys = target.data_dir / "keys"
    if archive is None and keys_from is None:
        return
    undo.append(_remove(keys))
    if archive is not None:
        names = unpack(archive, keys)
        if "oauth-signing.key" in names:
            os.replace(keys / "oauth-signing.key", target.data_dir / "oauth-signing.key")
            undo.append(_remove(target.data_dir / "oauth-signing.key"))
    else:
        shutil.copytree(keys_from, keys, dirs_exist_ok=True)  # type: ignore[arg-type]
    keys.chmod(0o700)
    for path in keys.iterdir():
        path.chmod(0o600)


def _set_registry_aside(repo: Path) -> None:
    """Keep the source's Feast registry as ``registry.restored.db``: ``features init`` re-creates the
    registry from the definitions without the source's materialization watermark, so the
    (incremental) materialize reloads every value within the views' TTL, not only newer ones."""
    registry = repo / "data" / "registry.db"
    if registry.exists():
        os.replace(registry, registry.with_name("registry.restored.db"))


def _features(target: Installation, features: dict[str, Any], rebuild: bool) -> str:
    if not features:
        return "no feature repo in the backup"
    recipe = " && ".join(features.get("rebuild", []))
    if not rebuild:
        return f"online store not rebuilt: run `{recipe}`"
    from feature_store.configured import configured_repo

    try:  # the target's settings: its online store (SQLite or Redis) and registry (file or SQL)
        configured_repo(init=True).materialize()
    except Exception as err:  # noqa: BLE001 - the online store is a cache; the restore stands
        return f"online store NOT rebuilt ({type(err).__name__}: {err}); run `{recipe}`"
    return "online store rebuilt (feast apply + materialize)"


def _undo(steps: list[Callable[[], None]]) -> list[str]:
    failed = []
    for step in reversed(steps):
        try:
            step()
        except Exception as err:  # noqa: BLE001 - undo as much as possible, report the rest
            failed.append(f"{type(err).__name__}: {err}")
    return failed


def _wipe(target: Installation) -> None:
    for url in (target.database_url, target.tracking_uri):
        _database_undo(url)()
    for path in (_artifact_folder(target), target.feature_repo, target.data_dir / "audit", target.data_dir / "keys",
                 target.checkpoints, target.data_dir / IN_PROGRESS):
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                _remove(path)()
