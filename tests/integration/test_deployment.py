"""The same apps on Flower's deployment engine: a SuperLink and two SuperNode processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from federation.ledger import PrivacyLedger
from federation.processes import free_port, stop, wait_for_port
from tests.conftest import spec_dict

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def test_two_hospitals_as_separate_supernode_processes(hospital_files: list[Path], tmp_path: Path, isolated_home: Path) -> None:
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    processes: list[subprocess.Popen] = []

    def start(*args: str, log: str) -> subprocess.Popen:
        process = subprocess.Popen([str(BIN / "bioverse"), "federation", *args], stdout=open(logs / log, "wb"),  # noqa: SIM115
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
        processes.append(process)
        return process

    try:
        link = start("superlink", "--port", str(port), log="superlink.log")
        wait_for_port(port, 60, link)
        for path in hospital_files[:2]:
            start("supernode", "--superlink", f"127.0.0.1:{port}", "--hospital-id", path.stem, "--data-path", str(path),
                  "--privacy-budget", "5", "--ledger-path", str(tmp_path / "site-ledgers" / f"{path.stem}.json"),
                  "--port", str(free_port()), log=f"{path.stem}.log")
        spec = spec_dict([], name="deployed")
        spec["data"]["hospitals"] = [{"id": p.stem} for p in hospital_files[:2]]  # sites hold their own paths
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        result = subprocess.run(
            [str(BIN / "bioverse"), "experiment", "run", str(tmp_path / "spec.yaml"), "--engine", "deployment",
             "--superlink", f"127.0.0.1:{port}", "--tracking-uri", uri, "--timeout", "400"],
            capture_output=True, text=True, env=env, timeout=450,
        )
    finally:
        for process in reversed(processes):
            stop(process)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + (logs / "hospital-01.log").read_text()[-2000:]
    assert "round 2/2  hospitals 2/2" in result.stdout
    assert "Registered test-cardiac-risk version 1" in result.stdout
    client = MlflowClient(uri, registry_uri=uri)
    tags = client.get_model_version("test-cardiac-risk", "1").tags
    assert tags["hospitals"] == "hospital-01,hospital-02"
    assert str(client.get_model_version_by_alias("test-cardiac-risk", "candidate").version) == "1"  # awaiting review
    run_id = tags["run_id"]
    for hospital in ("hospital-01", "hospital-02"):
        entry = PrivacyLedger(tmp_path / "site-ledgers" / f"{hospital}.json", hospital).entry(run_id)
        assert entry is not None and 0 < entry.epsilon <= 2.0 + 1e-6
