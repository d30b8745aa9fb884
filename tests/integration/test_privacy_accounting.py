"""Issue 10 items 9, 11, 12 and 18 on real runs: `bioverse experiment run` on Flower's
simulation engine, MLflow on SQLite, the hospitals' ledgers on disk, and a real kill -9."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from experiments.names import CANDIDATE_ALIAS
from federation.ledger import PrivacyLedger
from tests.conftest import spec_dict
from training.fingerprint import dataset_fingerprint
from training.tabular.synth import FEATURES_CATEGORICAL, FEATURES_NUMERIC

pytestmark = pytest.mark.integration

BIOVERSE = str(Path(sys.executable).parent / "bioverse")


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "BIOVERSE_DATA_DIR": str(root / "home"), "FLWR_HOME": str(root / "home" / "flwr")}


@pytest.fixture(scope="module")
def useless_run(tmp_path_factory: pytest.TempPathFactory, hospitals_dir: Path) -> dict:
    """A real run whose features carry nothing: every patient looks the same, so the model
    can do no better than the trivial one (the probe's FedYogi model was worse still)."""
    root = tmp_path_factory.mktemp("useless")
    paths = []
    for source in sorted(hospitals_dir.glob("hospital-*.csv")):
        frame = pd.read_csv(source)
        for column in FEATURES_NUMERIC:
            frame[column] = 50.0
        for column in FEATURES_CATEGORICAL:
            frame[column] = "x"
        frame.to_csv(root / source.name, index=False)
        paths.append(root / source.name)
    spec = spec_dict(paths, name="it-useless", registered_model="it-useless-risk",
                     privacy={"statistics_epsilon": 0.5}, validation={"min_cell": 10})
    for column in FEATURES_NUMERIC:
        spec["data"]["ranges"][column] = [0.0, 100.0]
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    # hospital-03 has spent its budget on this very data in an earlier run: it must refuse the statistics round
    spent = PrivacyLedger(root / "home" / "ledgers" / "hospital-03.json", "hospital-03", dataset_fingerprint(paths[2]))
    spent.charge(run="earlier", experiment="old", epsilon=9.8, delta=1e-5, steps=1, budget=10.0)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = subprocess.run([BIOVERSE, "experiment", "run", str(root / "spec.yaml"), "--tracking-uri", uri],
                            capture_output=True, text=True, env=_env(root), timeout=900)
    return {"result": result, "uri": uri, "root": root, "paths": paths}


def test_useless_model_is_registered_with_a_warning_and_no_candidate_alias(useless_run: dict) -> None:
    """Item 18: below the quality floor, the version is tagged and not made candidate."""
    result = useless_run["result"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "QUALITY WARNING: no better than the trivial model" in result.stdout
    assert "not given the candidate alias" in result.stdout
    client = MlflowClient(useless_run["uri"], registry_uri=useless_run["uri"])
    version = client.get_model_version("it-useless-risk", "1")
    warning = version.tags["validation.quality_warning"]
    assert "95% CI reaches 0.5" in warning and "\n" not in warning
    assert CANDIDATE_ALIAS not in client.get_registered_model("it-useless-risk").aliases


def test_statistics_round_was_noised_charged_and_recorded(useless_run: dict) -> None:
    """Items 9 and 12: each hospital charged its statistics release to the ledger of the
    dataset it holds, and the MLflow run records what it cost and which dataset paid."""
    assert useless_run["result"].returncode == 0
    client = MlflowClient(useless_run["uri"], registry_uri=useless_run["uri"])  # the global registry URI leaks between tests
    run_id = client.get_model_version("it-useless-risk", "1").tags["run_id"]
    run = client.get_run(run_id)
    ledgers = useless_run["root"] / "home" / "ledgers"
    out = useless_run["result"].stdout
    assert "statistics from 2/3 hospitals" in out and "hospital-03 refused" in out  # the coordinator says so
    assert "privacy budget exhausted: 9.800 spent in earlier runs + 0.500" in out
    refused = PrivacyLedger(ledgers / "hospital-03.json", "hospital-03")
    assert [e.run for e in refused.entries(every_dataset=True)] == ["earlier"]  # it released and paid nothing
    for path in useless_run["paths"][:2]:
        hospital = path.stem
        dataset = dataset_fingerprint(path)
        assert run.data.tags[f"dataset.{hospital}"] == dataset
        assert run.data.metrics[f"{hospital}/statistics_epsilon"] == pytest.approx(0.5)
        ledger = PrivacyLedger(ledgers / f"{hospital}.json", hospital, dataset)
        statistics = ledger.entry(f"{run_id}/statistics")
        training = ledger.entry(run_id)
        assert statistics is not None and statistics.kind == "statistics" and statistics.epsilon == pytest.approx(0.5)
        assert training is not None and training.rounds == 2 and training.dataset == dataset
        assert ledger.spent() == pytest.approx(0.5 + training.epsilon)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_a_run_killed_mid_round_is_marked_failed_and_agrees_with_the_ledger(tmp_path: Path, hospital_files: list[Path]) -> None:
    """Item 11: kill -9 the launcher and every process under it (the coordinator's box
    dies) in the middle of training; the next `bioverse experiment runs` marks it FAILED
    with the round it was in, and the ledger shows the rounds the hospitals paid for."""
    spec = spec_dict(hospital_files, name="it-killed", registered_model="it-killed-risk",
                     training={"rounds": 30, "local_epochs": 3})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = _env(tmp_path)
    launcher = subprocess.Popen([BIOVERSE, "experiment", "run", str(tmp_path / "spec.yaml"), "--tracking-uri", uri, "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    victims: list[psutil.Process] = []
    try:
        deadline, run_id = time.monotonic() + 600, None
        while time.monotonic() < deadline and run_id is None:
            for progress in (tmp_path / "home" / "runs").glob("*/progress.jsonl"):
                events = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
                start = [e for e in events if e["event"] == "start"]
                if start and any(e["event"] == "train" for e in events):
                    run_id = start[0]["run_id"]
            assert launcher.poll() is None, "the run ended before it could be killed"
            time.sleep(0.5)
        assert run_id is not None, "no training round within 10 minutes"
        victims = [psutil.Process(launcher.pid), *_descendants(launcher.pid)]
        for process in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        launcher.wait(30)
        psutil.wait_procs(victims, timeout=30)
    finally:
        for process in [*victims, *_descendants(launcher.pid)]:
            if process.is_running():
                process.kill()
        if launcher.poll() is None:
            launcher.kill()
    client = MlflowClient(uri, registry_uri=uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # what the probe saw: RUNNING for ever
    listed = subprocess.run([BIOVERSE, "experiment", "runs", "--tracking-uri", uri], capture_output=True, text=True,
                            env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert f"marked FAILED: run {run_id}" in listed.stdout and "is gone" in listed.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["bioverse.ended_by"] == "reconciliation"
    ledger_dir = tmp_path / "home" / "ledgers"
    charged = [PrivacyLedger(ledger_dir / f"{p.stem}.json", p.stem).entry(run_id) for p in hospital_files]
    paid = max(e.rounds for e in charged if e is not None)
    assert paid >= 1
    assert f"round {paid} had started" in run.data.tags["bioverse.end_reason"] or paid <= len(
        client.get_metric_history(run_id, "evaluate_hospitals"))
    shown = subprocess.run([BIOVERSE, "ledger", "show", str(ledger_dir / "hospital-01.json"), "--hospital-id", "hospital-01",
                            "--tracking-uri", uri], capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0 and "MLflow FAILED" in shown.stdout, shown.stdout + shown.stderr


def test_reconciliation_marks_dead_and_expired_runs_only(tmp_path: Path, hospital_files: list[Path]) -> None:
    """Item 11, without Flower: a coordinator process killed with -9 right after starting its
    run, a run on another host whose lease expired, and one whose lease holds."""
    from experiments.tracking import HOST_TAG, LEASE_TAG, reconcile_runs

    (tmp_path / "spec.json").write_text(json.dumps(spec_dict(hospital_files, name="it-reconcile")))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = ("import json, sys, time\nfrom experiments.spec import parse_spec\nfrom experiments.tracking import RunTracker\n"
              f"spec = parse_spec(json.load(open({str(tmp_path / 'spec.json')!r})))\n"
              f"print(RunTracker({uri!r}).start(spec), flush=True)\ntime.sleep(600)\n")
    coordinator = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        dead = coordinator.stdout.readline().strip()  # type: ignore[union-attr]
        client = MlflowClient(uri, registry_uri=uri)
        assert client.get_run(dead).info.status == "RUNNING"
        assert reconcile_runs(uri) == []  # alive: left alone
    finally:
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait(10)
    experiment = client.get_experiment_by_name("it-reconcile").experiment_id
    expired = client.create_run(experiment, tags={"bioverse.kind": "federated-training", HOST_TAG: "elsewhere",
                                                  LEASE_TAG: str(time.time() - 10)}).info.run_id
    holding = client.create_run(experiment, tags={"bioverse.kind": "federated-training", HOST_TAG: "elsewhere",
                                                  LEASE_TAG: str(time.time() + 600)}).info.run_id
    marked = dict(reconcile_runs(uri))
    assert set(marked) == {dead, expired}
    assert "is gone" in marked[dead] and "stopped renewing its lease" in marked[expired]
    assert client.get_run(dead).info.status == "FAILED" and client.get_run(expired).info.status == "FAILED"
    assert client.get_run(holding).info.status == "RUNNING"
