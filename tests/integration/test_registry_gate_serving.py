"""The gate holds outside BioVerse's code (issue 10 item 4): every loader serves ``production``
only with the gate's signed approval, so an alias moved with the plain MLflow client, or tags
forged with it, serve nothing new. Real MLflow registry, real model files; no Ray (the Serve
deployments use the same :class:`AliasFollower`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from experiments.gate import APPROVAL_TAG
from serving.errors import ModelNotReadyError, UnapprovedVersion
from serving.follow import AliasFollower
from serving.loaded import LoadedModel
from serving.model_source import RegistryModel
from tests.integration.conftest import register_risk_models, sign_approved

MODEL = "gate-risk"


@pytest.fixture()
def registry(tmp_path: Path, hospital_files: list[Path]) -> dict[str, Any]:
    """Two versions; version 1 approved by the gate and in production, version 2 pending."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_risk_models(uri, MODEL, hospital_files, versions=2)
    return {"uri": uri, "client": MlflowClient(uri, registry_uri=uri)}


def _wait(condition: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_follower_keeps_the_approved_version_when_the_alias_is_moved_by_hand(
        registry: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    uri, client = registry["uri"], registry["client"]
    follower: AliasFollower[Any] = AliasFollower(RegistryModel(uri, MODEL), LoadedModel, poll_seconds=0.1)
    try:
        assert follower.model.version == "1"
        with caplog.at_level(logging.ERROR, logger="serving.model_source"):
            client.set_registered_model_alias(MODEL, "production", "2")  # pending, moved with the plain client
            assert _wait(lambda: "REFUSED" in caplog.text)
            time.sleep(0.5)
        assert follower.model.version == "1"  # nothing new is served
        assert "production alias without approval" in caplog.text and "version 2" in caplog.text
        assert caplog.text.count("REFUSED") == 1  # logged once, not every poll

        # forged: review_status and the approval copied from version 1 (the key is outside MLflow)
        v1 = client.get_model_version(MODEL, "1").tags
        for key in ("review_status", "review.report_sha256", APPROVAL_TAG):
            client.set_model_version_tag(MODEL, "2", key, v1[key])
        time.sleep(0.8)
        assert follower.model.version == "1"

        sign_approved(uri, MODEL, "2")  # the gate approves version 2 after all: served within a poll
        assert _wait(lambda: follower.model.version == "2")
    finally:
        follower.stop()


def test_nothing_approved_under_the_alias_is_not_ready(registry: dict[str, Any]) -> None:
    uri, client = registry["uri"], registry["client"]
    client.set_registered_model_alias(MODEL, "production", "2")
    with pytest.raises(UnapprovedVersion, match="production alias without approval"):
        AliasFollower(RegistryModel(uri, MODEL), LoadedModel)
    with pytest.raises(UnapprovedVersion):  # bulk scoring loads through the same gate
        RegistryModel(uri, MODEL).load_current(LoadedModel)
    assert issubclass(UnapprovedVersion, ModelNotReadyError)  # the API answers 503 and /readyz stays honest
    # files swapped after approval: version 1's approval no longer matches what would be loaded
    v1 = client.get_model_version(MODEL, "1")
    model_id = str(v1.source).removeprefix("models:/")
    stored = client.get_logged_model(model_id).artifact_location  # the artifact store, written directly
    (Path(stored.removeprefix("file://")) / "artifacts" / "extra.txt").write_text("tampered")
    with pytest.raises(UnapprovedVersion, match="files changed since approval|does not verify"):
        RegistryModel(uri, MODEL).load("1")
    # `candidate` is for unreviewed versions: no approval needed there
    assert RegistryModel(uri, MODEL, "candidate").load("2").version == "2"
    assert RegistryModel(uri, MODEL, require_approval=False).load("2").version == "2"


def test_a_fresh_process_loads_through_the_gate(registry: dict[str, Any]) -> None:
    """As a Ray Serve replica does: no MLflow URI set in the process beforehand (the demo's case)."""
    import os
    import subprocess
    import sys

    registry["client"].set_registered_model_alias(MODEL, "candidate", "2")
    code = ("import sys; from serving.follow import AliasFollower; from serving.loaded import LoadedModel; "
            "from serving.model_source import RegistryModel; "
            "uri = sys.argv[1]; "
            "print(AliasFollower(RegistryModel(uri, sys.argv[2]), LoadedModel).model.version, "
            "AliasFollower(RegistryModel(uri, sys.argv[2], 'candidate'), LoadedModel).model.version)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run([sys.executable, "-c", code, registry["uri"], MODEL], capture_output=True, text=True,
                          env=env, cwd=str(Path(__file__).parents[2]), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "2"]


def test_serve_up_refuses_an_alias_moved_by_hand_in_one_line(registry: dict[str, Any], isolated_home: Path) -> None:
    """`bioverse serve up` checks the approval before it starts Ray: one line, exit 1, and
    nothing started (it used to start the replicas, each of which then refused the version)."""
    from typer.testing import CliRunner

    from platform_api.cli import app

    uri, client = registry["uri"], registry["client"]
    client.set_registered_model_alias(MODEL, "production", "2")  # pending, moved with the plain client
    result = CliRunner().invoke(app, ["serve", "up", "--model", MODEL, "--tracking-uri", uri, "--vision-model", "none"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "production alias without approval" in " ".join(result.output.split())
    assert not (isolated_home / "serve" / "serve_config.yaml").exists()  # nothing was started
