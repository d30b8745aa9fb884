"""A coordinator and three hospitals as separate network hosts (namespaces on one bridge)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from federation.ledger import PrivacyLedger
from tests.conftest import spec_dict
from tests.integration.netns import Host, Network, network, skip_reason

pytestmark = pytest.mark.integration

BIOVERSE = str(Path(sys.executable).parent / "bioverse")
HOSPITALS = ("hospital-01", "hospital-02", "hospital-03")
LINK_PORT = 19093  # inside the coordinator's own namespace: nothing else listens there
WAIT = 120.0  # seconds any process may take to come up


@dataclass
class Federation:
    """The hosts, their folders, and the shared MLflow store (namespaces share the filesystem)."""

    net: Network
    root: Path
    tracking_uri: str

    @property
    def coordinator(self) -> Host:
        return self.net.hosts["coord"]

    def home(self, host: str) -> Path:
        return self.root / host

    def env(self, host: str) -> dict[str, str]:
        home = self.home(host)
        return {**os.environ, "BIOVERSE_DATA_DIR": str(home), "FLWR_HOME": str(home / "flwr"), "PYTHONWARNINGS": "ignore"}

    def ledger(self, hospital: str) -> PrivacyLedger:
        return PrivacyLedger(self.home(hospital) / "ledger.json", hospital)

    def log(self, host: str) -> str:
        path = self.root / "logs" / f"{host}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def write_spec(self, name: str, **overrides: Any) -> Path:
        spec = spec_dict([], name=name, **overrides)
        spec["data"]["hospitals"] = [{"id": h} for h in HOSPITALS]  # each site holds its own path
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        return path

    def launch(self, spec: Path, *, timeout: float) -> Any:
        """``bioverse experiment run`` on the coordinator's host, as its operator runs it."""
        args = [BIOVERSE, "experiment", "run", str(spec), "--engine", "deployment",
                "--superlink", f"{self.coordinator.address}:{LINK_PORT}", "--tracking-uri", self.tracking_uri,
                "--timeout", str(int(timeout))]
        return self.coordinator.popen(args, log=self.root / "logs" / f"run-{spec.stem}.log", env=self.env("coord"))

    def progress(self, experiment: str) -> list[dict[str, Any]]:
        """The coordinator's progress events of the latest run of ``experiment``."""
        files = sorted((self.home("coord") / "runs").glob(f"*-{experiment}/progress.jsonl"))
        if not files:
            return []
        return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


def start_hospital(fed: Federation, hospital: str) -> None:
    host = fed.net.hosts[hospital]
    data = fed.root / "data" / f"{hospital}.csv"
    args = [BIOVERSE, "federation", "supernode", "--superlink", f"{fed.coordinator.address}:{LINK_PORT}",
            "--hospital-id", hospital, "--data-path", str(data), "--privacy-budget", "20",
            "--ledger-path", str(fed.home(hospital) / "ledger.json"), "--port", "19094"]
    host.popen(args, log=fed.root / "logs" / f"{hospital}.log", env=fed.env(hospital))


@pytest.fixture(scope="module")
def federation(hospitals_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """One coordinator host running the SuperLink and three hospital hosts each running a SuperNode."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("multihost")
    (root / "data").mkdir()
    for hospital in HOSPITALS:
        (root / "data" / f"{hospital}.csv").write_bytes((hospitals_dir / f"{hospital}.csv").read_bytes())
    with network(["coord", *HOSPITALS]) as net:
        fed = Federation(net, root, f"sqlite:///{root / 'mlflow.db'}")
        coord = fed.coordinator
        link = coord.popen([BIOVERSE, "federation", "superlink", "--host", coord.address, "--port", str(LINK_PORT)],
                           log=root / "logs" / "coord.log", env=fed.env("coord"))
        coord.wait_for(coord.address, LINK_PORT, WAIT, link)
        for hospital in HOSPITALS:
            start_hospital(fed, hospital)
        for hospital in HOSPITALS:
            wait_for_line(fed, hospital, "SuperNode ID:", WAIT)
        yield fed


def wait_for_line(fed: Federation, host: str, text: str, timeout: float, count: int = 1) -> None:
    """Block until ``host``'s log holds ``text`` ``count`` times; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while fed.log(host).count(text) < count:
        assert time.monotonic() < deadline, f"{host}: no {text!r} (x{count}) within {timeout:.0f} s: {fed.log(host)[-2000:]}"
        time.sleep(0.3)


def finish(process: Any, timeout: float) -> int:
    """The exit status of ``process``, waited for at most ``timeout`` seconds."""
    return int(process.wait(timeout))


def test_a_full_dp_run_across_hosts(federation: Federation) -> None:
    fed = federation
    spec = fed.write_spec("mh-full", strategy={"name": "fedavg", "min_hospitals": 3, "round_timeout": 120})
    started = time.monotonic()
    status = finish(fed.launch(spec, timeout=400), 450)
    output = fed.log("run-mh-full")
    assert status == 0, output[-3000:] + fed.log("hospital-01")[-2000:]
    print(f"full run: {time.monotonic() - started:.0f} s")
    assert "round 2/2  hospitals 3/3" in output
    assert "Registered test-cardiac-risk version" in output
    done = [e for e in fed.progress("mh-full") if e["event"] == "done"][-1]
    run_id = done["run_id"]
    for hospital in HOSPITALS:
        entry = fed.ledger(hospital).entry(run_id)
        assert entry is not None and 0 < entry.epsilon <= 2.0 + 1e-6, hospital


def test_c_a_hospital_cut_off_mid_round_and_the_run_completes_with_the_others(federation: Federation) -> None:
    fed = federation
    cut = fed.net.hosts["hospital-03"]
    spec = fed.write_spec("mh-cut", strategy={"name": "fedavg", "min_hospitals": 2, "round_timeout": 60})
    started = time.monotonic()
    received = fed.log("hospital-03").count("Receiving: train message")
    run = fed.launch(spec, timeout=500)
    try:
        wait_for_line(fed, "hospital-03", "Receiving: train message", 300, count=received + 2)
        cut.cut()  # hospital-03 holds round 2's training task; its reply cannot leave the host
        status = finish(run, 550)
    finally:
        cut.restore()
    output = fed.log("run-mh-cut")
    print(f"cut run: {time.monotonic() - started:.0f} s")
    assert status == 0, output[-3000:]
    assert "round 1/2  hospitals 3/3" in output
    assert "Registered test-cardiac-risk version" in output
    done = [e for e in fed.progress("mh-cut") if e["event"] == "done"][-1]
    train2 = done["participation"]["2"]["train"]
    assert train2["hospital-01"]["status"] == train2["hospital-02"]["status"] == "ok", train2
    assert train2.get("hospital-03", {}).get("status") != "ok", train2
