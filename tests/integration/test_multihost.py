"""A coordinator and three hospitals as separate network hosts (namespaces on one bridge)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from federation.ledger import PrivacyLedger
from federation.proxy import NGINX
from tests.conftest import spec_dict
from tests.integration.netns import Host, Network, network, skip_reason

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
BIOVERSE = str(BIN / "bioverse")
HOSPITALS = ("hospital-01", "hospital-02", "hospital-03")
PUBLIC_PORT = 19092  # nginx on the coordinator's address; the hosts' namespaces are private, no collisions
SUPERLINK_PORT = 19093  # the SuperLink, on the coordinator's loopback only
WAIT = 120.0  # seconds any process may take to come up
RUN_TIMEOUT = 900  # seconds a 2-round run may take (3-6 minutes on a busy 2-core VM)


@dataclass
class Federation:
    """The hosts, their folders, and the shared MLflow store (namespaces share the filesystem)."""

    net: Network
    root: Path
    tracking_uri: str
    coordinator_process: Any = None  # the running `bioverse coordinator start`

    @property
    def coordinator(self) -> Host:
        return self.net.hosts["coord"]

    @property
    def coordinator_dir(self) -> Path:
        return self.home("coord") / "coordinator"

    @property
    def public_address(self) -> str:
        return f"{self.coordinator.address}:{PUBLIC_PORT}"

    def home(self, host: str) -> Path:
        return self.root / host

    def env(self, host: str) -> dict[str, str]:
        home = self.home(host)
        return {**os.environ, "BIOVERSE_DATA_DIR": str(home), "FLWR_HOME": str(home / "flwr"), "PYTHONWARNINGS": "ignore",
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def cli(self, host: str, *args: str, timeout: float = 120) -> Any:
        """``bioverse ARGS`` on ``host``, to the end."""
        return self.net.hosts[host].run([BIOVERSE, *args], timeout=timeout, env=self.env(host))

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
        """``bioverse experiment run --coordinator`` on the coordinator's host, as its operator runs it."""
        args = [BIOVERSE, "experiment", "run", str(spec), "--coordinator", str(self.coordinator_dir),
                "--tracking-uri", self.tracking_uri, "--timeout", str(int(timeout))]
        return self.coordinator.popen(args, log=self.root / "logs" / f"run-{spec.stem}.log", env=self.env("coord"))

    def progress(self, experiment: str) -> list[dict[str, Any]]:
        """The coordinator's progress events of the latest run of ``experiment``."""
        files = sorted((self.home("coord") / "runs").glob(f"*-{experiment}/progress.jsonl"))
        if not files:
            return []
        return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]

    def online(self) -> int:
        """How many admitted hospitals the coordinator sees online."""
        return self.cli("coord", "coordinator", "hospitals", "--dir", str(self.coordinator_dir)).stdout.count(" online")


def join(fed: Federation, hospital: str, data: Path) -> Path:
    """``bioverse hospital join`` on the hospital's host with the CA certificate the coordinator's
    operator handed over; returns the public key the hospital sends back."""
    handed = fed.home(hospital) / "received-ca.pem"
    handed.parent.mkdir(parents=True, exist_ok=True)
    handed.write_bytes((fed.coordinator_dir / "pki" / "ca.pem").read_bytes())
    done = fed.cli(hospital, "hospital", "join", "--dir", str(fed.home(hospital)), "--coordinator", fed.public_address,
                   "--ca-cert", str(handed), "--hospital-id", hospital, "--data-path", str(data),
                   "--privacy-budget", "20", "--port", "19094")
    assert done.returncode == 0, done.stdout + done.stderr
    return fed.home(hospital) / "keys" / f"{hospital}.pub"


def start_hospital(fed: Federation, hospital: str) -> Any:
    """``bioverse hospital start`` on the hospital's host: its SuperNode dials the coordinator's
    public address with TLS (the federation's CA) and signs every request with its node key."""
    return fed.net.hosts[hospital].popen([BIOVERSE, "hospital", "start", "--dir", str(fed.home(hospital))],
                                         log=fed.root / "logs" / f"{hospital}.log", env=fed.env(hospital))


@pytest.fixture(scope="module")
def federation(hospitals_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """A coordinator host (SuperLink on its loopback, nginx on its address) and three admitted
    hospital hosts, each running its node with TLS and its key; plus a host that joined but was
    never admitted."""
    reason = skip_reason() or (None if Path(NGINX).exists() or shutil.which("nginx") else "nginx is not installed")
    if reason and os.environ.get("BIOVERSE_REQUIRE_NETNS"):
        pytest.fail(f"{reason} (BIOVERSE_REQUIRE_NETNS is set)")
    if reason:
        pytest.skip(f"{reason}; set BIOVERSE_REQUIRE_NETNS=1 to fail instead")
    root = tmp_path_factory.mktemp("multihost")
    (root / "data").mkdir()
    for hospital in HOSPITALS:
        (root / "data" / f"{hospital}.csv").write_bytes((hospitals_dir / f"{hospital}.csv").read_bytes())
    with network(["coord", *HOSPITALS, "intruder"]) as net:
        fed = Federation(net, root, f"sqlite:///{root / 'mlflow.db'}")
        done = fed.cli("coord", "coordinator", "init", "--dir", str(fed.coordinator_dir), "--public-address",
                       fed.public_address, "--superlink-port", str(SUPERLINK_PORT))
        assert done.returncode == 0, done.stdout + done.stderr
        keys = {h: join(fed, h, root / "data" / f"{h}.csv") for h in HOSPITALS}
        join(fed, "intruder", root / "data" / "hospital-01.csv")
        for hospital, key in keys.items():
            added = fed.cli("coord", "coordinator", "add-hospital", hospital, str(key), "--dir", str(fed.coordinator_dir))
            assert added.returncode == 0, added.stdout + added.stderr
        start_coordinator(fed)
        for hospital in HOSPITALS:
            start_hospital(fed, hospital)
        wait_until(lambda: fed.online() == len(HOSPITALS), WAIT, "three hospitals online")
        yield fed


def start_coordinator(fed: Federation) -> Any:
    """``bioverse coordinator start`` on the coordinator's host, waited for."""
    before = fed.log("coord").count("coordinator ready")
    process = fed.coordinator.popen([BIOVERSE, "coordinator", "start", "--dir", str(fed.coordinator_dir)],
                                    log=fed.root / "logs" / "coord.log", env=fed.env("coord"))
    wait_until(lambda: fed.log("coord").count("coordinator ready") > before, WAIT, "coordinator ready", process)
    fed.coordinator_process = process
    return process


def wait_until(predicate: Any, timeout: float, what: str, process: Any = None) -> None:
    """Block until ``predicate()``; bounded by ``timeout``, and by ``process`` staying alive."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process is None or process.poll() is None, f"{what}: the process exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.3)


def wait_for_line(fed: Federation, host: str, text: str, timeout: float, count: int = 1) -> None:
    """Block until ``host``'s log holds ``text`` ``count`` times; bounded by ``timeout``."""
    wait_until(lambda: fed.log(host).count(text) >= count, timeout, f"{host}: {text!r} x{count}")


def finish(process: Any, timeout: float) -> int:
    """The exit status of ``process``, waited for at most ``timeout`` seconds."""
    return int(process.wait(timeout))


def test_b_an_unadmitted_hospital_is_refused(federation: Federation) -> None:
    fed = federation
    started = time.monotonic()
    intruder = start_hospital(fed, "intruder")
    wait_until(lambda: intruder.poll() is not None, WAIT, "the unadmitted node gives up")
    print(f"intruder refused: {time.monotonic() - started:.0f} s")
    assert intruder.returncode != 0
    said = fed.log("intruder")
    assert "the coordinator has not registered this hospital's key" in said, said[-2000:]
    assert "Traceback" not in said, said[-2000:]
    assert fed.online() == len(HOSPITALS)


PROBE = """
import json, sys
import httpx
ca, base, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
with httpx.Client(verify=ca, timeout=10) as client:
    print(json.dumps({p: (client.get(base + p[4:]) if p.startswith("GET ") else client.post(base + p, content=b"")).status_code
                      for p in paths}))
"""


def test_e_only_the_fleet_api_answers_a_hospital_host(federation: Federation) -> None:
    fed = federation
    hospital, coord = fed.net.hosts["hospital-01"], fed.coordinator.address
    paths = ["/v1/control/list-runs", "/v1/control/start-run", "/v1/control/stop-run", "/v1/runtime/pull-messages",
             "/v1/runtime/get-nodes", "/v1/fleet/../control/list-runs", "/docs", "GET /v1/fleet/pull-messages",
             "/v1/fleet/pull-messages"]
    probe = hospital.run([sys.executable, "-c", PROBE, str(fed.home("hospital-01") / "received-ca.pem"),
                          f"https://{fed.public_address}", *paths], timeout=60, env=fed.env("hospital-01"))
    assert probe.returncode == 0, probe.stderr[-2000:]
    codes = json.loads(probe.stdout.strip().splitlines()[-1])
    assert {p: c for p, c in codes.items() if p != "/v1/fleet/pull-messages"} == dict.fromkeys(paths[:-1], 403), codes
    assert codes["/v1/fleet/pull-messages"] != 403, codes  # the Fleet path reaches the SuperLink
    assert not hospital.reaches(coord, SUPERLINK_PORT), "the SuperLink's own port answers a hospital host"
    assert fed.coordinator.reaches("127.0.0.1", SUPERLINK_PORT)  # ...while it listens on the coordinator's loopback
    # The Control API from a hospital host, as an attacker with flwr would try it: refused.
    (fed.home("hospital-01") / "flwr").mkdir(parents=True, exist_ok=True)
    (fed.home("hospital-01") / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "coord"\n\n[superlink.coord]\naddress = "{fed.public_address}"\n'
        f'root-certificates = "{fed.home("hospital-01") / "received-ca.pem"}"\n')
    listed = hospital.run([str(BIN / "flwr"), "ls", "coord"], timeout=60, env=fed.env("hospital-01"))
    assert listed.returncode != 0 and "403 Forbidden" in listed.stdout + listed.stderr, listed.stdout[-2000:]


NODE_NAMES = """
import json, sys
from pathlib import Path
from federation.coordinator_service import hospital_node_ids
from federation.coordinator_setup import load_coordinator
print(json.dumps(sorted(hospital_node_ids(load_coordinator(Path(sys.argv[1]))).values())))
"""


def test_f_the_operator_admits_and_removes_hospitals_while_the_coordinator_runs(federation: Federation) -> None:
    fed = federation
    coord = str(fed.coordinator_dir)
    again = fed.cli("coord", "coordinator", "init", "--dir", coord, "--public-address", fed.public_address)
    assert again.returncode != 0 and "--force" in again.stderr and "Traceback" not in again.stderr, again.stderr
    names = fed.coordinator.run([sys.executable, "-c", NODE_NAMES, coord], timeout=120, env=fed.env("coord"))
    assert names.returncode == 0, names.stderr[-2000:]
    assert json.loads(names.stdout.strip().splitlines()[-1]) == sorted(HOSPITALS)  # node ids map to admitted names
    key = fed.root / "keys" / "late-clinic"
    key.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key)], check=True, timeout=60)
    added = fed.cli("coord", "coordinator", "add-hospital", "late-clinic", str(key.with_suffix(".pub")), "--dir", coord)
    assert added.returncode == 0 and "node " in added.stdout, added.stdout + added.stderr  # registered at once
    listed = fed.cli("coord", "coordinator", "hospitals", "--dir", coord).stdout
    assert "late-clinic" in listed and "registered" in listed and listed.count(" online") == len(HOSPITALS), listed
    removed = fed.cli("coord", "coordinator", "remove-hospital", "late-clinic", "--dir", coord)
    assert removed.returncode == 0 and "unregistered" in removed.stdout, removed.stdout + removed.stderr
    assert "late-clinic" not in fed.cli("coord", "coordinator", "hospitals", "--dir", coord).stdout


@pytest.mark.timeout(2 * RUN_TIMEOUT)
def test_d_the_coordinator_host_crashes_and_the_run_resumes(federation: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    from federation.checkpoint import load_checkpoint

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    fed = federation
    spec = fed.write_spec("mh-resume", strategy={"name": "fedavg", "min_hospitals": 3, "round_timeout": 300})
    started = time.monotonic()
    fed.launch(spec, timeout=RUN_TIMEOUT)
    wait_until(lambda: any(e["event"] == "start" for e in fed.progress("mh-resume")), 300, "the run starts")
    run_id = next(e["run_id"] for e in fed.progress("mh-resume") if e["event"] == "start")

    def checkpointed() -> bool:
        checkpoint = load_checkpoint(fed.tracking_uri, run_id)
        return checkpoint is not None and checkpoint.server_round >= 1

    wait_until(checkpointed, 400, "round 1 checkpointed")
    fed.coordinator.crash()  # launcher, ServerApp, SuperLink and nginx die at once
    crashed = time.monotonic()
    start_coordinator(fed)  # same folder: the SuperLink's database, certificates and admitted keys
    wait_until(lambda: fed.online() == len(HOSPITALS), WAIT, "the hospitals reconnect")
    print(f"coordinator back, hospitals online: {time.monotonic() - crashed:.0f} s after the crash")
    resume = fed.coordinator.run([BIOVERSE, "experiment", "resume", run_id, "--coordinator", str(fed.coordinator_dir),
                                  "--tracking-uri", fed.tracking_uri, "--timeout", str(RUN_TIMEOUT)],
                                  timeout=RUN_TIMEOUT + 60, env=fed.env("coord"))
    print(f"resume: {time.monotonic() - started:.0f} s in all, {time.monotonic() - crashed:.0f} s from the crash")
    output = resume.stdout + resume.stderr
    assert resume.returncode == 0, output[-3000:]
    assert f"resuming run {run_id}" in output and "after round 1 of 2" in output, output[-3000:]
    assert "round 2/2  hospitals 3/3" in output, output[-3000:]
    assert "Registered test-cardiac-risk version" in output, output[-3000:]
    for hospital in HOSPITALS:  # each round charged once, although round 2 may have been asked twice
        entry = fed.ledger(hospital).entry(run_id)
        assert entry is not None and entry.rounds == 2 and entry.last_round == 2, (hospital, entry)
        assert 0 < entry.epsilon <= 2.0 + 1e-6, (hospital, entry)


@pytest.mark.timeout(2 * RUN_TIMEOUT)
def test_c_a_hospital_cut_off_mid_round_and_the_run_completes_with_the_others(federation: Federation) -> None:
    fed = federation
    cut = fed.net.hosts["hospital-03"]
    spec = fed.write_spec("mh-cut", strategy={"name": "fedavg", "min_hospitals": 2, "round_timeout": 90})
    started = time.monotonic()
    received = fed.log("hospital-03").count("Receiving: train message")
    run = fed.launch(spec, timeout=RUN_TIMEOUT)
    try:
        wait_for_line(fed, "hospital-03", "Receiving: train message", 300, count=received + 2)
        cut.cut()  # hospital-03 holds round 2's training task; its reply cannot leave the host
        status = finish(run, RUN_TIMEOUT + 60)
    finally:
        cut.restore()
    output = fed.log("run-mh-cut")
    print(f"cut run: {time.monotonic() - started:.0f} s")
    assert status == 0, output[-3000:]
    assert "round 1/2  hospitals 3/3" in output and "round 2/2  hospitals 2/3" in output, output[-3000:]
    assert "hospital-03 failed" in output, output[-3000:]  # named by its id, with the SuperLink's reason
    assert "Registered test-cardiac-risk version" in output
    done = [e for e in fed.progress("mh-cut") if e["event"] == "done"][-1]
    train2 = done["participation"]["2"]["train"]
    assert train2["hospital-01"]["status"] == train2["hospital-02"]["status"] == "ok", train2
    assert train2.get("hospital-03", {}).get("status") != "ok", train2
    # A full DP run across hosts: each hospital charged its own ledger (hospital-03 at least round 1).
    run_id = done["run_id"]
    for hospital in HOSPITALS:
        entry = fed.ledger(hospital).entry(run_id)
        assert entry is not None and 0 < entry.epsilon <= 2.0 + 1e-6, (hospital, entry)
    # The hospital sees its federation from its own host: connected, the run that touched its data.
    status = fed.cli("hospital-02", "hospital", "status", "--dir", str(fed.home("hospital-02")))
    assert status.returncode == 0 and "connected:" in status.stdout and "NOT connected" not in status.stdout, status.stdout
    assert run_id[:12] in status.stdout and "audit log:" in status.stdout and "verified" in status.stdout, status.stdout
    verified = fed.cli("hospital-02", "hospital", "audit", "verify", "--dir", str(fed.home("hospital-02")))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_g_the_coordinator_stops_cleanly(federation: Federation) -> None:
    fed = federation
    process = fed.coordinator_process
    assert process is not None and process.poll() is None
    stopped = fed.log("coord").count("coordinator stopped")
    os.killpg(process.pid, signal.SIGTERM)  # as systemd or compose stop it
    assert finish(process, 60) == 0, fed.log("coord")[-2000:]
    assert fed.log("coord").count("coordinator stopped") == stopped + 1, fed.log("coord")[-2000:]
