"""A hospital's site policy on the deployment engine: joined and started with the CLI, it refuses a run, the coordinator shows why, its audit log holds the refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from federation.ledger import PrivacyLedger
from federation.pki import create_ca
from federation.processes import free_port, stop, wait_for_port
from federation.site_audit import read_rows
from tests.conftest import spec_dict

pytestmark = pytest.mark.integration
BIOVERSE = str(Path(sys.executable).parent / "bioverse")


def test_a_policy_refusal_reaches_the_coordinator_and_the_audit_log(hospital_files: list[Path], tmp_path: Path,
                                                                    isolated_home: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    create_ca("test", tmp_path / "ca.pem", tmp_path / "ca.key")  # join wants the CA; --insecure leaves TLS out
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen] = []

    def bioverse(*args: str, log: str | None = None) -> subprocess.Popen | subprocess.CompletedProcess[str]:
        if log is None:
            return subprocess.run([BIOVERSE, *args], capture_output=True, text=True, env=env, timeout=450)
        process = subprocess.Popen([BIOVERSE, *args], stdout=open(logs / log, "wb"),  # noqa: SIM115
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
        processes.append(process)
        return process

    policies = {"hospital-01": [], "hospital-02": ["--allow-model-kind", "mlp"]}  # the spec trains logistic
    for path in hospital_files[:2]:
        joined = bioverse("hospital", "join", "--coordinator", f"127.0.0.1:{port}", "--ca-cert", str(tmp_path / "ca.pem"),
                          "--hospital-id", path.stem, "--data-path", str(path), "--privacy-budget", "8",
                          "--dir", str(tmp_path / path.stem), "--port", str(free_port()), *policies[path.stem])
        assert joined.returncode == 0, joined.stderr
        assert f"bioverse coordinator add-hospital {path.stem} {path.stem}.pub" in joined.stdout
    spec = spec_dict([], name="policed")
    spec["data"]["hospitals"] = [{"id": p.stem} for p in hospital_files[:2]]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    try:
        link = bioverse("federation", "superlink", "--port", str(port), log="superlink.log")
        wait_for_port(port, 60, link)  # type: ignore[arg-type]
        for path in hospital_files[:2]:
            bioverse("hospital", "start", "--insecure", "--dir", str(tmp_path / path.stem), log=f"{path.stem}.log")
        result = bioverse("experiment", "run", str(tmp_path / "spec.yaml"), "--engine", "deployment", "--superlink",
                          f"127.0.0.1:{port}", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--timeout", "300")
    finally:
        for process in reversed(processes):
            stop(process)  # type: ignore[arg-type]
    assert isinstance(result, subprocess.CompletedProcess)
    output = result.stdout + result.stderr
    reason = "hospital-02's policy refuses model kind 'logistic' (policy allows mlp)"
    assert result.returncode != 0 and f"hospital-02 refused: {reason}" in output, output[-3000:]
    assert "1 hospitals sent statistics, the minimum is 2" in output  # the run stops: too few hospitals
    refused = read_rows(tmp_path / "hospital-02" / "audit.jsonl")
    assert [(r["message"], r["outcome"], r["reason"], r["epsilon"]) for r in refused] == [("statistics", "refused", reason, 0.0)]
    accepted = read_rows(tmp_path / "hospital-01" / "audit.jsonl")
    assert [(r["message"], r["outcome"]) for r in accepted] == [("statistics", "accepted")]
    assert accepted[0]["epsilon"] == pytest.approx(1.0) and accepted[0]["spec"] == refused[0]["spec"]
    assert PrivacyLedger(tmp_path / "hospital-02" / "ledger.json", "hospital-02").entries() == []
    for hospital in ("hospital-01", "hospital-02"):
        verified = bioverse("hospital", "audit", "verify", "--dir", str(tmp_path / hospital))
        assert verified.returncode == 0 and "1 rows, the chain holds" in verified.stdout, verified.stderr
    status = bioverse("hospital", "status", "--dir", str(tmp_path / "hospital-02"))
    assert status.returncode == 0 and "NOT connected" in status.stdout and "0.000 spent, 8.000 left of 8" in status.stdout
    assert refused[0]["run"][:12] in status.stdout and "model kind 'logistic'" in status.stdout
    lines = (tmp_path / "hospital-02" / "audit.jsonl").read_text().splitlines()
    forged = json.loads(lines[0]) | {"outcome": "accepted"}
    (tmp_path / "hospital-02" / "audit.jsonl").write_text(json.dumps(forged) + "\n")
    broken = bioverse("hospital", "audit", "verify", "--dir", str(tmp_path / "hospital-02"))
    assert broken.returncode == 1 and "line 1: its hash does not match its fields" in broken.stderr
