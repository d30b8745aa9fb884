"""Durable runs on the deployment engine: the SuperLink (and its ServerApp) dies after a round, restarts, and the run resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from federation.checkpoint import load_checkpoint
from federation.ledger import PrivacyLedger
from federation.processes import free_port, kill_tree, stop, wait_for_port
from tests.conftest import spec_dict

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
ROUNDS = 4  # margin: on a quiet machine a round or two more may complete before the kill lands


def _started_run(home: Path) -> str | None:
    for progress in (home / "runs").glob("*/progress.jsonl"):
        for line in progress.read_text().splitlines():
            if '"event": "start"' in line:
                return str(json.loads(line)["run_id"])
    return None


def test_a_run_whose_superlink_died_resumes_on_the_restarted_superlink(
    hospital_files: list[Path], tmp_path: Path, isolated_home: Path
) -> None:
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    processes: list[subprocess.Popen] = []

    def start(*args: str, log: str) -> subprocess.Popen:
        process = subprocess.Popen([str(BIN / "bioverse"), *args], stdout=open(logs / log, "ab"),  # noqa: SIM115
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
        processes.append(process)
        return process

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    superlink = ["federation", "superlink", "--port", str(port)]
    try:
        link = start(*superlink, log="superlink.log")
        wait_for_port(port, 60, link)
        def hospitals() -> list[subprocess.Popen]:
            return [start("federation", "supernode", "--superlink", f"127.0.0.1:{port}", "--hospital-id", path.stem,
                          "--data-path", str(path), "--privacy-budget", "5",
                          "--ledger-path", str(tmp_path / "site-ledgers" / f"{path.stem}.json"), "--port", str(free_port()),
                          log=f"{path.stem}.log") for path in hospital_files[:2]]

        nodes = hospitals()
        spec = spec_dict([], name="deployed-resume", training={"rounds": ROUNDS})
        spec["data"]["hospitals"] = [{"id": p.stem} for p in hospital_files[:2]]
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
        deployment = ["--engine", "deployment", "--superlink", f"127.0.0.1:{port}", "--tracking-uri", uri, "--timeout", "600"]
        first = start("experiment", "run", str(tmp_path / "spec.yaml"), *deployment, log="first.log")
        run_id, checkpoint, deadline = None, None, time.monotonic() + 600
        while checkpoint is None and time.monotonic() < deadline and first.poll() is None:
            run_id = run_id or _started_run(isolated_home)  # the launcher created the store by then
            checkpoint = load_checkpoint(uri, run_id) if run_id else None
            time.sleep(1)
        assert checkpoint is not None and checkpoint.server_round < ROUNDS, (logs / "first.log").read_text()[-3000:]
        kill_tree(link)  # the coordinator's SuperLink dies, and its ServerApp with it
        kill_tree(first)
        checkpoint = load_checkpoint(uri, run_id)  # the last one written before the kill (a later round may have landed)
        assert checkpoint is not None and checkpoint.server_round < ROUNDS
        link = start(*superlink, log="superlink.log")  # restarted, without a database: it knows no node
        wait_for_port(port, 60, link)
        for node in nodes:  # a SuperNode refused as unknown (401) exits; the site's service manager restarts it
            stop(node)
        hospitals()
        resumed = subprocess.run([str(BIN / "bioverse"), "experiment", "resume", str(run_id), *deployment],
                                 capture_output=True, text=True, env=env, timeout=700)
    finally:
        for process in reversed(processes):
            stop(process)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"after round {checkpoint.server_round} of {ROUNDS}" in resumed.stdout
    run = MlflowClient(uri).get_run(str(run_id))
    assert run.info.status == "FINISHED"
    assert MlflowClient(uri, registry_uri=uri).get_model_version("test-cardiac-risk", "1").run_id == run_id
    for hospital in ("hospital-01", "hospital-02"):
        entry = PrivacyLedger(tmp_path / "site-ledgers" / f"{hospital}.json", hospital).entry(str(run_id))
        assert entry is not None and (entry.rounds, entry.last_round) == (ROUNDS, ROUNDS), hospital
