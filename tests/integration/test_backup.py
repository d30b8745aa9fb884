"""Restore drills: a real installation (registered, approved models; twins, predictions, audit
chain with checkpoints) backed up to a folder and to S3 (moto), plain and encrypted, tampered
with, killed mid-way, and restored into empty SQLite and PostgreSQL installations."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from platform_api.backup.create import Installation, create_backup
from platform_api.backup.destination import FolderDestination, S3Destination
from platform_api.backup.errors import BackupError, BackupFault, RestoreRefused
from platform_api.backup.restore import restore_backup
from platform_api.backup.verify import list_backups, verify_backup
from tests.integration.conftest import BIOVERSE, PostgresDatabase, clear_platform_caches, register_risk_models

MODEL = "backup-risk"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _env(root: Path, db_url: str) -> dict[str, str]:
    return {"BIOVERSE_DATA_DIR": str(root), "BIOVERSE_API_DATABASE_URL": db_url, "BIOVERSE_API_MODEL_NAME": MODEL,
            "BIOVERSE_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}


def _use(mp: pytest.MonkeyPatch, root: Path, db_url: str) -> Installation:
    from experiments import settings as experiment_settings

    for key, value in _env(root, db_url).items():
        mp.setenv(key, value)
    experiment_settings.get_settings.cache_clear()
    clear_platform_caches()
    return Installation(root, db_url, f"sqlite:///{root / 'mlflow.db'}", root / "audit" / "checkpoints.jsonl",
                        root / "feature_repo")


def _build(root: Path, db_url: str, hospitals: list[Path], *, full: bool = False) -> dict[str, Any]:
    """Models registered and version 1 approved into production, 3 twins with 2 predictions each, a
    checkpoint; with ``full``, a Feast repo holding the twins' features, and every audit event but
    the head moved to an archive segment under audit/archive."""
    import pandas as pd
    from fastapi.testclient import TestClient
    from mlflow.tracking import MlflowClient

    from feature_store.repo import FeatureRepo
    from platform_api import db
    from platform_api.audit_checkpoints import write_checkpoint
    from platform_api.auth import create_key
    from platform_api.main import create_app
    from platform_api.models import Prediction

    with pytest.MonkeyPatch.context() as mp:
        _use(mp, root, db_url)
        register_risk_models(f"sqlite:///{root / 'mlflow.db'}", MODEL, hospitals, versions=2)
        patients = pd.read_csv(hospitals[0]).head(3)
        if full:
            repo = FeatureRepo(root / "feature_repo").init()
            repo.ingest(patients, tenant_id="t1")
            repo.materialize()
        with TestClient(create_app()) as http:
            with db.session_factory()() as session:
                key = create_key(session, role="app", tenant_id="t1")
            auth = {"Authorization": f"Bearer {key}"}
            twins = [http.post("/v1/twins", json={"patient_id": p}, headers=auth).json()["id"] for p in patients["patient_id"]]
            with db.session_factory()() as session:
                predictions = [Prediction(twin_id=t, tenant_id="t1", model_name=MODEL, model_version="1", risk=0.1 * n,
                                          inputs={"age": 50 + n}) for n, t in enumerate(twins * 2)]
                session.add_all(predictions)
                session.commit()
                ids = [p.id for p in predictions]
            assert http.get(f"/v1/twins/{twins[0]}", headers=auth).status_code == 200
            write_checkpoint(db.get_engine())
            if full:
                from platform_api.audit_archive import Archiver, cutoff
                from platform_api.audit_archive_store import open_store

                assert Archiver(db.get_engine(), open_store(root / "audit" / "archive")).run(cutoff(older_than_days=0)).segments
        clear_platform_caches()
        registry = MlflowClient(f"sqlite:///{root / 'mlflow.db'}", registry_uri=f"sqlite:///{root / 'mlflow.db'}")
        aliases = dict(registry.get_registered_model(MODEL).aliases)
        tags = {v: dict(registry.get_model_version(MODEL, v).tags) for v in ("1", "2")}
    assert str(aliases["production"]) == "1"
    return {"key": key, "twins": twins, "predictions": ids, "aliases": aliases, "tags": tags,
            "age": int(patients["age"].iloc[0]) if full else None}


def _check_restored(root: Path, db_url: str, built: dict[str, Any], *, features: bool = False) -> str:
    """The restored installation serves the twins and predictions, loads the approved production
    model from the moved artifacts, and `bioverse audit verify` passes with its checkpoints."""
    from fastapi.testclient import TestClient
    from mlflow.tracking import MlflowClient

    from experiments.gate import APPROVAL_TAG
    from platform_api.main import create_app

    with pytest.MonkeyPatch.context() as mp:
        _use(mp, root, db_url)
        with TestClient(create_app()) as http:
            auth = {"Authorization": f"Bearer {built['key']}"}
            for twin in built["twins"]:
                assert http.get(f"/v1/twins/{twin}", headers=auth).json()["id"] == twin
            for prediction in built["predictions"]:
                assert http.get(f"/v1/predictions/{prediction}", headers=auth).status_code == 200
            ready = http.get("/readyz").json()
            assert ready["checks"]["model"] == f"ok: {MODEL} version 1", ready
            if features:  # the online store rebuilt from the restored offline store
                assert ready["checks"]["feature_store"] == "ok", ready
                state = http.get(f"/v1/twins/{built['twins'][0]}", headers=auth).json()
                assert state["features"]["age"] == built["age"], state
        uri = f"sqlite:///{root / 'mlflow.db'}"
        client = MlflowClient(uri, registry_uri=uri)
        assert client.get_registered_model(MODEL).aliases == built["aliases"]
        version = client.get_model_version(MODEL, "1")
        assert APPROVAL_TAG in version.tags  # the review decision, signed with the gate key
        assert {v: dict(client.get_model_version(MODEL, v).tags) for v in ("1", "2")} == built["tags"]
        assert str(root) in client.get_run(str(version.run_id)).info.artifact_uri
        clear_platform_caches()
    done = subprocess.run([BIOVERSE, "audit", "verify"], capture_output=True, text=True,
                          env={**os.environ, **_env(root, db_url)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "audit log intact" in done.stdout and "checkpoint" in done.stdout and "no checkpoint" not in done.stdout
    return done.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, hospitals_dir: Path) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("source")
    return root, _build(root, f"sqlite:///{root / 'platform.db'}", sorted(hospitals_dir.glob("hospital-*.csv")), full=True)


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=43000 + secrets.randbelow(900))
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"  # noqa: SLF001 - moto's only handle on the bound port
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**S3_KEYS, "AWS_ENDPOINT_URL": endpoint}.items():
            mp.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="backups")
        yield "s3://backups/bioverse"
    server.stop()


def test_sqlite_backups_to_a_folder_and_s3_verify_and_restore_into_empty_installations(
        source: tuple[Path, dict[str, Any]], s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, built = source
    _use(monkeypatch, root, f"sqlite:///{root / 'platform.db'}")
    here = Installation(root, f"sqlite:///{root / 'platform.db'}", f"sqlite:///{root / 'mlflow.db'}",
                        root / "audit" / "checkpoints.jsonl", root / "feature_repo")
    folder, key = FolderDestination(tmp_path / "backups"), secrets.token_bytes(32)
    plain = create_backup(folder, here, key=None)
    assert plain.row_counts["twins"] == 3 and plain.row_counts["predictions"] == 6
    assert plain.audit_head["events"] == plain.row_counts["audit_events"] > 0
    assert any("KEYS NOT BACKED UP" in w for w in plain.warnings) and plain.file("keys") is None
    sealed = create_backup(S3Destination(s3_url), here, key=key)
    assert sealed.file("keys") is not None and all(f.path.endswith(".enc") for f in sealed.files)

    assert verify_backup(folder, plain.name, None).ok and verify_backup(S3Destination(s3_url), sealed.name, key).ok
    wrong = verify_backup(S3Destination(s3_url), sealed.name, secrets.token_bytes(32))
    assert len(wrong.faults) == len(sealed.files) and "does not decrypt" in wrong.faults[0]

    # restore the plain folder backup (keys handed over separately) into an empty data dir
    target = tmp_path / "restored-plain"
    report = restore_backup(folder, plain.name, _use(monkeypatch, target, f"sqlite:///{target / 'platform.db'}"),
                            key=None, keys_from=root / "keys")
    assert report["mlflow_paths_moved"] > 0 and report["audit"].startswith("intact") and "(0 carried" not in report["audit"]
    assert report["features"] == "online store not rebuilt: run `bioverse features init && bioverse features materialize`"
    assert "archive segment" in _check_restored(target, f"sqlite:///{target / 'platform.db'}", built)
    with pytest.raises(RestoreRefused, match="not empty"):
        restore_backup(folder, plain.name, _use(monkeypatch, target, f"sqlite:///{target / 'platform.db'}"), key=None)
    forced = restore_backup(folder, plain.name, _use(monkeypatch, target, f"sqlite:///{target / 'platform.db'}"), key=None,
                            force=True, keys_from=root / "keys")
    assert forced["audit"].startswith("intact") and forced["row_counts"]["predictions"] == 6

    # a restore that fails late (another audit key: the chain does not verify) is undone: the target is empty again
    wrong_keys, failed = tmp_path / "wrong-keys", tmp_path / "restored-failed"
    wrong_keys.mkdir()
    (wrong_keys / "audit.key").write_text(secrets.token_hex(32))
    (wrong_keys / "audit.key").chmod(0o600)
    with pytest.raises(BackupError, match="does not verify"):
        restore_backup(folder, plain.name, _use(monkeypatch, failed, f"sqlite:///{failed / 'platform.db'}"), key=None,
                       keys_from=wrong_keys)
    assert list(failed.iterdir()) == []

    # restore the encrypted S3 backup through the CLI, keys coming from the backup itself
    target = tmp_path / "restored-s3"
    key_file = tmp_path / "backup.key"
    key_file.write_text(key.hex())
    env = {**os.environ, **_env(target, f"sqlite:///{target / 'platform.db'}")}
    done = subprocess.run([BIOVERSE, "backup", "restore", s3_url, sealed.name, "--key-file", str(key_file)],
                          capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "3 twins, 6 predictions; audit log intact" in done.stdout and "online store rebuilt" in done.stdout
    assert str(target) in (target / "feature_repo" / "feature_store.yaml").read_text()  # re-applied where it now lives
    _check_restored(target, f"sqlite:///{target / 'platform.db'}", built, features=True)

    # tamper: one file altered, one truncated, one removed -> verify names each, exit 1; restore refuses, places nothing
    base = folder.root / plain.name
    (base / "audit.tar").write_bytes(b"x" + (base / "audit.tar").read_bytes()[1:])
    (base / "mlflow.db").write_bytes((base / "mlflow.db").read_bytes()[:1000])
    (base / "mlflow-artifacts.tar").unlink()
    done = subprocess.run([BIOVERSE, "backup", "verify", str(folder.root), plain.name], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "audit.tar: sha256 differs" in done.stderr and "mlflow.db: truncated" in done.stderr
    assert "mlflow-artifacts.tar: missing" in done.stderr and "Traceback" not in done.stderr
    empty = tmp_path / "never"
    with pytest.raises(BackupFault):
        restore_backup(folder, plain.name, _use(monkeypatch, empty, f"sqlite:///{empty / 'platform.db'}"), key=None)
    assert sorted(p.name for p in empty.iterdir()) == []
    listed = subprocess.run([BIOVERSE, "backup", "list", str(folder.root)], capture_output=True, text=True, timeout=60)
    assert "FAILED" in listed.stdout and plain.name in listed.stdout


def test_postgres_to_postgres_restore(hospitals_dir: Path, postgres_database: PostgresDatabase, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The source database is emptied after the backup and restored at another address (``localhost``
    instead of ``127.0.0.1``: another database to the audit checkpoints, as after a move)."""
    from platform_api.backup.stores import empty_postgres

    source_root, target_root = tmp_path / "pg-source", tmp_path / "pg-target"
    built = _build(source_root, postgres_database.sqlalchemy_url, sorted(hospitals_dir.glob("hospital-*.csv"))[:2])
    here = _use(monkeypatch, source_root, postgres_database.sqlalchemy_url)
    manifest = create_backup(FolderDestination(tmp_path / "b"), here, key=None)
    assert manifest.database_kind == "postgresql" and manifest.file("platform-db").path == "platform.pgdump"
    clear_platform_caches()
    empty_postgres(postgres_database.sqlalchemy_url)
    url = postgres_database.sqlalchemy_url.replace("@127.0.0.1:", "@localhost:")
    with pytest.raises(RestoreRefused, match="kind"):  # a PostgreSQL backup does not go into SQLite
        restore_backup(FolderDestination(tmp_path / "b"), manifest.name,
                       _use(monkeypatch, target_root, f"sqlite:///{target_root / 'p.db'}"), key=None)
    report = restore_backup(FolderDestination(tmp_path / "b"), manifest.name, _use(monkeypatch, target_root, url), key=None,
                            keys_from=source_root / "keys")
    assert report["audit"].startswith("intact") and "carried over" in report["audit"] and "(0 carried" not in report["audit"]
    _check_restored(target_root, url, built)
    clear_platform_caches()


def test_a_killed_create_leaves_no_complete_backup(source: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    root, _ = source
    (root / "mlartifacts" / "padding.bin").write_bytes(os.urandom(1 << 20) * 96)  # something to be in the middle of
    try:
        env = {**os.environ, **_env(root, f"sqlite:///{root / 'platform.db'}")}
        process = subprocess.Popen([BIOVERSE, "backup", "create", str(tmp_path / "b")], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not any((tmp_path / "b").glob(".incomplete-*")) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        (root / "mlartifacts" / "padding.bin").unlink()
    complete, partial = list_backups(FolderDestination(tmp_path / "b"))
    assert complete == [] and len(partial) == 1
    listed = subprocess.run([BIOVERSE, "backup", "list", str(tmp_path / "b")], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "1 incomplete (not restorable)" in listed.stderr
    with pytest.raises(BackupError, match="no complete backup"):
        verify_backup(FolderDestination(tmp_path / "b"), partial[0], None)


def test_an_s3_artifact_root_is_packed_and_put_back(s3_url: str, tmp_path: Path) -> None:
    """The production profile's MLflow artifacts on S3: every object under the root goes into the tar and comes back."""
    import boto3

    from platform_api.backup.mlflow_store import pack_artifacts, unpack_artifacts

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket="mlflow")
    objects = {"1/abc/artifacts/model/model.pt": b"weights", "1/abc/artifacts/validation/report.json": b"{}"}
    for key, body in objects.items():
        s3.put_object(Bucket="mlflow", Key=f"artifacts/{key}", Body=body)
    assert pack_artifacts("s3://mlflow/artifacts", tmp_path / "a.tar") == 2
    unpack_artifacts(tmp_path / "a.tar", "s3://mlflow/restored")
    for key, body in objects.items():
        assert s3.get_object(Bucket="mlflow", Key=f"restored/{key}")["Body"].read() == body
