"""The deployment engine with BioVerse's warm ClientApp runner: a run completes, every task ran in a
forked child of the runner (no per-task process start), and the SuperNode logs hold no 401s."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from experiments.spec import parse_spec
from federation.launcher import LaunchOptions, run_experiment
from federation.processes import free_port, stop, wait_for_port
from federation.superlink import start_superlink
from federation.supernode import start_supernode
from tests.conftest import spec_dict

pytestmark = pytest.mark.integration


def test_a_deployment_run_on_the_warm_runner_has_clean_supernode_logs(hospital_files: list[Path], tmp_path: Path,
                                                                      isolated_home: Path) -> None:
    port, logs = free_port(), tmp_path / "logs"
    processes: list[subprocess.Popen] = []
    try:
        processes.append(start_superlink(port=port, log_file=logs / "superlink.log", simulation=False))
        wait_for_port(port, 60, processes[0])
        for path in hospital_files[:2]:
            node = {"hospital-id": path.stem, "data-path": str(path), "privacy-budget": 5.0,
                    "ledger-path": str(tmp_path / "site-ledgers" / f"{path.stem}.json")}
            processes.append(start_supernode(superlink=f"127.0.0.1:{port}", port=free_port(), node_config=node,
                                             log_file=logs / f"{path.stem}.log"))
        spec = spec_dict([], name="warm")
        spec["data"]["hospitals"] = [{"id": p.stem} for p in hospital_files[:2]]  # sites hold their own paths
        summary = run_experiment(parse_spec(spec), LaunchOptions(
            engine="deployment", run_dir=tmp_path / "run", superlink=f"127.0.0.1:{port}",
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", timeout=400))
    finally:
        for process in reversed(processes):
            stop(process)
    assert summary["model_version"]
    for path in hospital_files[:2]:
        log = (logs / f"{path.stem}.log").read_text(errors="replace")
        assert "ClientApp runner ready" in log, log[-2000:]
        # statistics, 2 x (train, evaluate), validation: each a forked task that exited cleanly
        assert log.count("(exit code 0)") >= 6, log[-3000:]
        assert "Start `flwr-clientapp` process" not in log  # Flower's per-task process start is not used
        assert "authentication failed" not in log, log[-3000:]
