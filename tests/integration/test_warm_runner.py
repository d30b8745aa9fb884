"""The deployment engine with BioVerse's warm ClientApp runner: a run completes, every task ran in a
forked child of the runner (no per-task process start), and the SuperNode logs hold no 401s."""

from __future__ import annotations

import contextlib
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


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited


def test_a_runner_whose_supernode_dies_stops_even_while_its_requests_are_retried(tmp_path: Path) -> None:
    import os
    import signal
    import sys
    import time

    # the "SuperNode": starts the runner against a runtime API nobody serves (Flower's client retries), then dies
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import os, subprocess, sys, time\n"
         f"p = subprocess.Popen([sys.executable, '-m', 'federation.app_runner', '--runtime-api-address', '127.0.0.1:{free_port()}',"
         " '--insecure', '--parent-pid', str(os.getpid()), '--preload', ''])\n"
         "print(p.pid, flush=True)\ntime.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    runner = 0
    try:
        runner = int(parent.stdout.readline())
        time.sleep(3)  # the runner is up, retrying its first AcquireTask
        assert _alive(runner)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 30
        while _alive(runner) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(runner), "the runner outlived its SuperNode"
    finally:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(parent.pid, signal.SIGKILL)
        if runner and _alive(runner):
            os.kill(runner, signal.SIGKILL)
