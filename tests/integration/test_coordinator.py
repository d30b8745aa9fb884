"""A coordinator on loopback as an operator runs it: init, admitted keys, SuperLink behind nginx, a DP run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from federation.control_api import list_nodes
from federation.coordinator_service import hospital_node_ids
from federation.coordinator_setup import load_coordinator
from federation.processes import free_port, node_config_arg, stop
from federation.proxy import NGINX
from tests.conftest import spec_dict

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
BIOVERSE = str(BIN / "bioverse")

if not (Path(NGINX).exists() or shutil.which("nginx")) and not os.environ.get("BIOVERSE_REQUIRE_NGINX"):
    pytest.skip("nginx is not installed (apt-get install nginx-light); set BIOVERSE_REQUIRE_NGINX=1 to fail instead",
                allow_module_level=True)


def _cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIOVERSE, *args], capture_output=True, text=True, env=env, timeout=timeout)


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub")


def _supernode(public: str, ca: Path, key: Path, node: dict[str, str | float | int], log: Path,
               env: dict[str, str]) -> subprocess.Popen:
    """A hospital's flower-supernode dialling the proxy with TLS and its node key."""
    command = [str(BIN / "flower-supernode"), "--superlink", public, "--root-certificates", str(ca),
               "--auth-supernode-private-key", str(key), "--isolation", "subprocess", "--host", "127.0.0.1",
               "--port", str(free_port()), "--node-config", node_config_arg(node), "--max-retries", "3"]
    return subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,  # noqa: SIM115
                            start_new_session=True)


def _wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: process exited with {process.returncode}")
        time.sleep(1.0)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


@pytest.mark.timeout(1500)  # the deployment engine's rounds take minutes on a loaded 2-core box
def test_coordinator_admits_registered_hospitals_only_and_runs_dp(hospital_files: list[Path], tmp_path: Path,
                                                                   isolated_home: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    coord, public_port = tmp_path / "coord", free_port()
    public = f"127.0.0.1:{public_port}"
    done = _cli("coordinator", "init", "--dir", str(coord), "--public-address", public,
                "--superlink-port", str(free_port()), env=env)
    assert done.returncode == 0, done.stderr
    assert "ca.pem" in done.stdout and public in done.stdout
    again = _cli("coordinator", "init", "--dir", str(coord), "--public-address", public, env=env)
    assert again.returncode != 0 and "--force" in again.stderr and "Traceback" not in again.stderr
    ca = coord / "pki" / "ca.pem"

    (tmp_path / "keys").mkdir()
    keys = {p.stem: _keygen(tmp_path / "keys" / p.stem) for p in hospital_files[:2]}
    intruder = _keygen(tmp_path / "keys" / "intruder")
    first, second = list(keys)
    assert _cli("coordinator", "add-hospital", first, str(keys[first]), "--dir", str(coord), env=env).returncode == 0

    processes: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    coordinator = subprocess.Popen([BIOVERSE, "coordinator", "start", "--dir", str(coord)], stdout=open(logs / "coord.log", "wb"),  # noqa: SIM115
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_for(lambda: "coordinator ready" in (logs / "coord.log").read_text(), 120, "coordinator start", coordinator)
        # Added while running: registered at once, under its name.
        added = _cli("coordinator", "add-hospital", second, str(keys[second]), "--dir", str(coord), env=env)
        assert added.returncode == 0 and "node " in added.stdout, added.stdout + added.stderr
        listed = _cli("coordinator", "hospitals", "--dir", str(coord), env=env).stdout
        assert first in listed and second in listed and "registered" in listed, listed

        # Only the Fleet API faces the hospitals: Control, Runtime, docs are refused by the proxy.
        with httpx.Client(verify=str(ca), timeout=10) as client:
            for path in ("/v1/control/list-runs", "/v1/control/start-run", "/v1/runtime/pull-messages", "/docs",
                         "/v1/fleet/../control/list-nodes"):
                assert client.post(f"https://{public}{path}").status_code == 403, path
            assert client.get(f"https://{public}/v1/fleet/pull-messages").status_code == 403
            assert client.post(f"https://{public}/v1/fleet/pull-messages").status_code != 403  # reaches the SuperLink

        # An unregistered key is refused and its SuperNode gives up; the admitted ones come online.
        outsider = _supernode(public, ca, intruder.with_suffix(""), {"hospital-id": "intruder"}, logs / "intruder.log", env)
        processes.append(outsider)
        for path in hospital_files[:2]:
            node = {"hospital-id": path.stem, "data-path": str(path), "privacy-budget": 5.0, "statistics": "dp",
                    "ledger-path": str(tmp_path / "ledgers" / f"{path.stem}.json")}
            processes.append(_supernode(public, ca, keys[path.stem].with_suffix(""), node, logs / f"{path.stem}.log", env))
        _wait_for(lambda: outsider.poll() is not None, 180, "unregistered supernode refused")
        assert outsider.returncode != 0
        assert "Failed to activate SuperNode" in (logs / "intruder.log").read_text()
        config = load_coordinator(coord)
        _wait_for(lambda: sorted(n.status for n in list_nodes(config.superlink_address, ca)) == ["online", "online"],
                  180, "both hospitals online")
        assert sorted(hospital_node_ids(config).values()) == [first, second]  # node ids map to admitted names
        listed = _cli("coordinator", "hospitals", "--dir", str(coord), env=env).stdout
        assert listed.count(" online") == 2, listed

        spec = spec_dict([], name="coordinated")
        spec["data"]["hospitals"] = [{"id": p.stem} for p in hospital_files[:2]]
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        result = _cli("experiment", "run", str(tmp_path / "spec.yaml"), "--coordinator", str(coord),
                      "--tracking-uri", uri, "--timeout", "900", env=env, timeout=960)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "round 2/2  hospitals 2/2" in result.stdout

        removed = _cli("coordinator", "remove-hospital", second, "--dir", str(coord), env=env)
        assert removed.returncode == 0 and "unregistered" in removed.stdout, removed.stdout + removed.stderr
    finally:
        for process in reversed(processes):
            stop(process)
        if coordinator.poll() is None:
            os.killpg(coordinator.pid, signal.SIGTERM)
            try:
                coordinator.wait(30)
            except subprocess.TimeoutExpired:
                stop(coordinator)
    assert coordinator.returncode == 0, (logs / "coord.log").read_text()[-2000:]
    assert "coordinator stopped" in (logs / "coord.log").read_text()
