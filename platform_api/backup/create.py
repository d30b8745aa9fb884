"""``bioverse backup create``: copy every store consistently, hash (and encrypt) each file, write the manifest last."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from platform_api.backup.crypto import encrypt_file
from platform_api.backup.destination import Destination, FolderDestination
from platform_api.backup.manifest import FileEntry, Manifest, redact, sha256_file
from platform_api.backup.mlflow_store import artifact_root, pack_artifacts
from platform_api.backup.stores import COUNTED, database_kind, dump_database, pack_folder

__all__ = ["FEATURE_RECIPE", "Installation", "create_backup"]

log = logging.getLogger(__name__)

#: The online store is a cache: these rebuild it from the restored offline store and definitions.
FEATURE_RECIPE = ("bioverse features init", "bioverse features materialize")
#: Key files that are never stored with a backup (the backup key itself).
_NEVER = ("backup.key",)


@dataclass(frozen=True)
class Installation:
    """Where one installation keeps its state (from the API's and the feature store's settings)."""

    data_dir: Path
    database_url: str
    tracking_uri: str
    checkpoints: Path
    feature_repo: Path

    @classmethod
    def configured(cls) -> Installation:
        """The installation this process's settings describe."""
        from feature_store.settings import get_settings as feature_settings
        from platform_api.audit_checkpoints import checkpoint_path
        from platform_api.settings import get_settings as api_settings

        api = api_settings()
        return cls(api.data_dir, api.resolved_database_url(), api.resolved_tracking_uri(), checkpoint_path(),
                   feature_settings().repo_dir)

    def settings(self) -> dict[str, object]:
        """The source's settings as a manifest records them (secrets redacted)."""
        from feature_store.settings import get_settings as feature_settings
        from platform_api.settings import get_settings as api_settings

        api = api_settings().model_dump(mode="json")
        features = feature_settings().model_dump(mode="json")
        return redact({**{f"api.{k}": v for k, v in api.items()}, **{f"features.{k}": v for k, v in features.items()},
                       "database_url": self.database_url, "tracking_uri": self.tracking_uri})


def _online_store_file(path: Path, repo: Path) -> bool:
    return path.name in ("online.db", "online_store.db") or path.suffix in (".tmp",) or ".ipynb" in path.parts


def create_backup(destination: Destination, installation: Installation, *, key: bytes | None,
                  name: str | None = None, include_keys: bool | None = None) -> Manifest:
    """Make one complete backup of ``installation`` at ``destination`` and return its manifest.

    Order: platform database, MLflow database, MLflow artifacts (a superset of what the
    copied database references), Feast repo, audit folder (checkpoints may be newer than
    the copied chain; restore carries only those the copy reaches), keys (encrypted only).
    Nothing is visible as a backup until the manifest is written; on any error the
    staging area is removed.
    """
    created = datetime.now(UTC)
    name = name or created.strftime("bioverse-%Y%m%dT%H%M%S%fZ")
    include_keys = key is not None if include_keys is None else include_keys
    kind = database_kind(installation.database_url)
    local = isinstance(destination, FolderDestination)
    work = destination.staging_path(name) if isinstance(destination, FolderDestination) else Path(tempfile.mkdtemp(prefix="bioverse-backup-"))
    manifest = Manifest(name=name, created_at=created.isoformat(timespec="seconds"), encrypted=key is not None,
                        database_kind=kind, source=installation.settings())
    from platform_api.audit_checkpoints import database_id

    manifest.source["audit_db_id"] = database_id(installation.database_url)
    try:
        produced: list[tuple[Path, str]] = []
        db_file, manifest.row_counts, manifest.audit_head = dump_database(installation.database_url, work / "platform",
                                                                          count=COUNTED)
        produced.append((db_file, "platform-db"))
        mlflow_file, _, _ = dump_database(installation.tracking_uri, work / "mlflow")
        produced.append((mlflow_file, "mlflow-db"))
        root = artifact_root(installation.tracking_uri)
        manifest.mlflow = {"kind": database_kind(installation.tracking_uri), "artifact_root": root,
                           "artifact_files": pack_artifacts(root, work / "mlflow-artifacts.tar")}
        produced.append((work / "mlflow-artifacts.tar", "mlflow-artifacts"))
        repo = installation.feature_repo
        if (repo / "feature_store.yaml").exists():
            files = pack_folder(repo, work / "feature-repo.tar", skip=lambda p: _online_store_file(p, repo))
            produced.append((work / "feature-repo.tar", "feature-repo"))
            manifest.features = {"repo": str(repo), "files": files, "rebuild": list(FEATURE_RECIPE),
                                 "note": "the online store is not copied: it is a cache, rebuilt by the commands in 'rebuild'"}
        audit_dir = installation.data_dir / "audit"
        extra = {} if installation.checkpoints.parent == audit_dir else {"checkpoints.jsonl": installation.checkpoints}
        pack_folder(audit_dir, work / "audit.tar", extra=extra)
        produced.append((work / "audit.tar", "audit"))
        keys = installation.data_dir / "keys"
        key_files = {"oauth-signing.key": installation.data_dir / "oauth-signing.key"}
        if include_keys:
            pack_folder(keys, work / "keys.tar", skip=lambda p: p.name in _NEVER, extra=key_files)
            produced.append((work / "keys.tar", "keys"))
        elif keys.is_dir() and any(keys.iterdir()):
            manifest.warnings.append(
                f"KEYS NOT BACKED UP: {keys} holds the audit and gate keys; a plain backup leaves them out. Keep a copy "
                "elsewhere (restore --keys-from): without the audit key the restored audit chain cannot be verified")
        for path, role in produced:
            manifest.files.append(_store(path, role, key, destination, name, local))
        destination.commit(name, manifest.to_json())
    except BaseException:
        destination.abort(name)
        raise
    finally:
        if not local:
            shutil.rmtree(work, ignore_errors=True)
    return manifest


def _store(path: Path, role: str, key: bytes | None, destination: Destination, name: str, local: bool) -> FileEntry:
    plain_sha, plain_size = sha256_file(path)
    stored = path
    if key is not None:
        stored = path.with_name(path.name + ".enc")
        encrypt_file(key, path, stored)
        path.unlink()
    sha, size = sha256_file(stored) if key is not None else (plain_sha, plain_size)
    if not local:
        destination.put(name, stored.name, stored)
        stored.unlink()
    return FileEntry(stored.name, role, size, sha, plain_size, plain_sha)
