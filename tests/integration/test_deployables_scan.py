"""checkov's security scan of deploy/ (Kubernetes manifests, the Dockerfile, secrets): no finding but
the skips listed here and in docs/deployment.md; a new finding fails. checkov runs from its own
virtual environment (`make checkov`: its pins conflict with the project's). Also the clinic's
make-secrets.sh (a subprocess, so not in the unit tier)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKOV = Path(os.environ.get("BIOVERSE_CHECKOV", ROOT / ".venv" / "checkov" / "bin" / "checkov"))
#: Every skip (check, resource), each with its reason in the manifest and in docs/deployment.md.
EXPECTED_SKIPS = {
    ("CKV_K8S_43", "Deployment.bioverse.bioverse-api"),
    ("CKV_K8S_43", "Deployment.bioverse.bioverse-mlflow"),
}

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def checkov() -> Path:
    if not CHECKOV.exists():
        if os.environ.get("BIOVERSE_REQUIRE_CHECKOV") == "1":
            pytest.fail(f"checkov is not installed at {CHECKOV} (make checkov)")
        pytest.skip("checkov is not installed (make checkov)")
    return CHECKOV


def _scan(checkov: Path, target: Path) -> dict[str, dict[str, Any]]:
    """checkov's JSON report of ``target`` (a folder), by framework; offline (--skip-download)."""
    done = subprocess.run(
        [str(checkov), "-d", str(target), "--framework", "kubernetes", "dockerfile", "secrets", "--skip-download",
         "--compact", "-o", "json"],
        capture_output=True, text=True, timeout=200, check=False)
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: findings, reported in the JSON
    report = json.loads(done.stdout)
    return {r["check_type"]: r for r in (report if isinstance(report, list) else [report])}


def test_deploy_has_no_finding_but_the_documented_skips(checkov: Path) -> None:
    reports = _scan(checkov, ROOT / "deploy")
    assert {"kubernetes", "dockerfile"} <= set(reports)
    failed = [(c["check_id"], c["resource"], c["file_path"]) for r in reports.values() for c in r["results"]["failed_checks"]]
    assert not failed, f"new checkov findings (fix them, or skip inline with a reason and list them in docs/deployment.md): {failed}"
    skipped = {(c["check_id"], c["resource"]) for r in reports.values() for c in r["results"].get("skipped_checks", [])}
    assert skipped == EXPECTED_SKIPS
    assert reports["kubernetes"]["summary"]["passed"] > 100 and reports["dockerfile"]["summary"]["passed"] > 50
    assert all(r["summary"]["parsing_errors"] == 0 for r in reports.values())
    docs = (ROOT / "docs" / "deployment.md").read_text()
    assert all(check in docs for check, _ in EXPECTED_SKIPS)


def test_the_scan_fails_on_a_weakened_manifest(checkov: Path, tmp_path: Path) -> None:
    weakened = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy" / "kubernetes", weakened, ignore=shutil.ignore_patterns("schemas"))
    api = weakened / "api.yaml"
    api.write_text(api.read_text().replace("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"))
    failed = {(c["check_id"], c["resource"]) for c in _scan(checkov, weakened)["kubernetes"]["results"]["failed_checks"]}
    assert failed == {("CKV_K8S_22", "Deployment.bioverse.bioverse-api")}


def test_make_secrets_writes_secrets_that_agree(tmp_path: Path) -> None:
    """deploy/clinic/make-secrets.sh: one password in every URL, S3 keys in the credentials file,
    the production profile accepts the server URL, and a second run refuses to overwrite."""
    from feature_store.profile import StoreProfile

    clinic = tmp_path / "clinic"
    clinic.mkdir()
    shutil.copy(ROOT / "deploy" / "clinic" / "make-secrets.sh", clinic)
    subprocess.run(["sh", str(clinic / "make-secrets.sh")], check=True, capture_output=True, timeout=30)
    secrets = {p.name: p.read_text() for p in (clinic / "secrets").iterdir()}
    password = secrets["postgres_password"]
    assert len(password) == 64 and (clinic / "secrets").stat().st_mode & 0o077 == 0
    assert secrets["postgres_url"] == f"postgresql://bioverse:{password}@postgres:5432"
    assert secrets["database_url"].endswith(f"{password}@postgres:5432/bioverse")
    assert secrets["mlflow_database_url"].endswith(f"{password}@postgres:5432/bioverse_mlflow")
    assert f"aws_access_key_id = {secrets['s3_access_key']}" in secrets["s3_credentials"]
    assert f"aws_secret_access_key = {secrets['s3_secret_key']}" in secrets["s3_credentials"]
    profile = StoreProfile(profile="production", postgres_url=secrets["postgres_url"], redis_url="redis://redis:6379/0",
                           artifact_root="s3://mlflow-artifacts/mlflow").check()
    assert profile.platform_database_url() == secrets["database_url"]
    again = subprocess.run(["sh", str(clinic / "make-secrets.sh")], capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "already holds secrets" in again.stderr
    assert (clinic / "secrets" / "postgres_password").read_text() == password
