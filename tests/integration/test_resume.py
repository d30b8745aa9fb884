"""Durable runs: a coordinator killed after a round is resumed with `bioverse experiment resume`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from federation.checkpoint import load_checkpoint
from federation.ledger import PrivacyLedger
from federation.processes import kill_tree
from tests.conftest import spec_dict
from tests.integration.conftest import BIOVERSE, cli_env

pytestmark = pytest.mark.integration

ROUNDS = 8  # margin: simulated rounds take ~0.3 s here, so several may complete before the kill lands


def _started_run(home: Path) -> str | None:
    for progress in (home / "runs").glob("*/progress.jsonl"):
        for line in progress.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "start":
                return str(event["run_id"])
    return None


def test_a_killed_coordinator_is_resumed_from_its_last_round(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = spec_dict(hospital_files, name="resume-me", training={"rounds": ROUNDS})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri, env, home = f"sqlite:///{tmp_path / 'mlflow.db'}", cli_env(tmp_path), tmp_path / "home"
    first = subprocess.Popen([BIOVERSE, "experiment", "run", str(tmp_path / "spec.yaml"), "--tracking-uri", uri, "--quiet"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run_id, deadline = None, time.monotonic() + 600
    try:
        while time.monotonic() < deadline and first.poll() is None:
            run_id = run_id or _started_run(home)
            checkpoint = load_checkpoint(uri, run_id) if run_id else None
            if checkpoint is not None:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no checkpoint before the run ended: {first.stdout.read() if first.stdout else ''}")
    finally:
        kill_tree(first)  # launcher, flwr run, SuperLink, ServerApp, Ray: the coordinator's machine dies
    assert run_id is not None
    checkpoint = load_checkpoint(uri, run_id)  # the last one written before the kill (a later round may have landed)
    assert checkpoint is not None and checkpoint.server_round < ROUNDS

    resumed = subprocess.run([BIOVERSE, "experiment", "resume", run_id, "--tracking-uri", uri, "--quiet"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming run {run_id} (resume-me) after round {checkpoint.server_round} of {ROUNDS}" in resumed.stdout

    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["bioverse.resumed"] == "1"
    assert sorted(m.step for m in client.get_metric_history(run_id, "evaluate_hospitals")) == list(range(1, ROUNDS + 1))
    (version,) = client.search_model_versions("name='test-cardiac-risk'")
    assert version.run_id == run_id
    runs = [[json.loads(line) for line in p.read_text().splitlines()] for p in (home / "runs").glob("*/progress.jsonl")]
    (resumed_events,) = [events for events in runs if events and events[0].get("resumed_after")]
    trained = sorted({e["round"] for e in resumed_events if e["event"] == "train"})
    assert trained == list(range(checkpoint.server_round + 1, ROUNDS + 1))  # rounds numbered as in the original run
    assert not any(e["event"] == "statistics" for e in resumed_events)  # no second statistics release
    for hospital in ("hospital-01", "hospital-02", "hospital-03"):
        entry = PrivacyLedger(home / "ledgers" / f"{hospital}.json", hospital).entry(run_id)
        assert entry is not None and (entry.rounds, entry.last_round) == (ROUNDS, ROUNDS), hospital  # each round charged once

    again = subprocess.run([BIOVERSE, "experiment", "resume", run_id, "--tracking-uri", uri],
                           env=env, capture_output=True, text=True, timeout=600)  # the CLI and MLflow take minutes at load 15+
    assert again.returncode != 0 and "already finished" in again.stdout + again.stderr
    assert "Traceback" not in again.stdout + again.stderr
