"""A Ray cluster across network-namespace hosts (``ray start --head`` / ``--address``), and a bounded HTTP load.

Run as ``python -m tests.integration.raycluster load URL ROWS OUT --clients N --seconds S``
on a host to drive closed-loop single-patient requests and write what happened to ``OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DASHBOARD_PORT", "GCS_PORT", "SERVE_PORT", "RayCluster", "short_temp_root", "start_ray_cluster", "wait_until"]

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
GCS_PORT = 6380  # each host has its own network stack: fixed ports collide with nobody
DASHBOARD_PORT = 8265
SERVE_PORT = 8000
OBJECT_STORE_BYTES = 80 * 2**20  # Ray's floor is 75 MiB; nothing large travels through it here

#: Knobs that keep three Ray nodes small on a shared 2-core machine.
RAY_KNOBS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_enable_worker_prestart": "0",  # no idle Python workers started ahead of tasks
    "RAY_prestart_worker_first_driver": "0",
    "RAY_memory_monitor_refresh_ms": "0",  # the machine's memory is other tenants' too: no OOM killing of ours
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_BACKEND_LOG_LEVEL": "warning",
    "RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT": "300",  # 30 s is too short on a loaded machine
    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "300",  # (60 s)
}


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 1.0) -> Any:
    """``predicate()``'s first truthy value; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(poll)


@dataclass
class RayCluster:
    """A head, workers and a client host on one network; Ray's temp dirs under ``root``."""

    net: Any  # tests.integration.netns.Network
    root: Path
    head_name: str
    worker_names: Sequence[str]
    client_name: str

    @property
    def head(self) -> Any:
        return self.net.hosts[self.head_name]

    @property
    def client(self) -> Any:
        return self.net.hosts[self.client_name]

    @property
    def dashboard(self) -> str:
        return f"http://{self.head.address}:{DASHBOARD_PORT}"

    @property
    def serve_url(self) -> str:
        return f"http://{self.head.address}:{SERVE_PORT}"

    def address_of(self, name: str) -> str:
        return self.net.hosts[name].address

    def env(self, **extra: str) -> dict[str, str]:
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, **RAY_KNOBS, "PYTHONWARNINGS": "ignore", "PATH": path, "PYTHONPATH": str(REPO), **extra}

    def ray_start(self, name: str, *args: str, timeout: float = 240) -> None:
        """``ray start ARGS`` on host ``name`` with its own temp dir; fails with Ray's output."""
        host = self.net.hosts[name]
        temp = self.root / name
        argv = [str(BIN / "ray"), "start", "--node-ip-address", host.address, "--temp-dir", str(temp),
                "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats", *args]
        done = host.run(argv, timeout=timeout, env=self.env())
        said = (done.stdout + done.stderr).strip().splitlines()
        assert done.returncode == 0, f"ray start on {name} exited {done.returncode}: " + "\n".join(said[-15:])[-3000:]

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``bioverse ARGS`` on the client host."""
        return self.client.run([str(BIN / "bioverse"), *args], timeout=timeout, env=self.env())

    def status(self) -> list[dict[str, Any]]:
        """``bioverse serve status --json`` from the client host, parsed."""
        done = self.cli("serve", "status", "--address", self.dashboard, "--json", timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    def replicas(self, deployment: str = "RiskPredictor") -> list[dict[str, Any]]:
        """The deployment's replicas (state, node_ip, node_id) as ``serve status --json`` shows them."""
        return [r for d in self.status() if d["name"] == deployment for r in d["replicas"]]

    def post(self, path: str, body: dict[str, Any], timeout: float = 60) -> tuple[int, str]:
        """An HTTP POST to the Serve proxy on the head, sent from the client host: (status, body)."""
        argv = ["curl", "-s", "-m", str(int(timeout)), "-o", "-", "-w", "\n%{http_code}", "-H",
                "content-type: application/json", "-d", json.dumps(body), f"{self.serve_url}{path}"]
        done = self.client.run(argv, timeout=timeout + 10)
        text, _, code = done.stdout.rpartition("\n")
        return int(code or 0), text

    def load(self, rows: Path, out: Path, *, clients: int, seconds: float) -> subprocess.Popen:
        """Start a bounded closed-loop load on the client host (see :func:`drive_load`); SIGTERM
        (``terminate()``) ends it early, results still written to ``out``."""
        argv = [sys.executable, "-m", "tests.integration.raycluster", "load", f"{self.serve_url}/risk", str(rows),
                str(out), "--clients", str(clients), "--seconds", str(seconds)]
        return self.client.popen(argv, log=self.root / "logs" / f"load-{out.stem}.log", env=self.env(), cwd=REPO)


def start_ray_cluster(net: Any, root: Path, *, head: str = "head", workers: Sequence[str] = ("worker1", "worker2"),
                      client: str = "client", worker_cpus: int = 2) -> RayCluster:
    """``ray start --head`` on ``head`` (no CPUs: the Serve controller and proxy only, which
    need none; the dashboard for the REST API) and ``ray start --address`` on each worker."""
    cluster = RayCluster(net, root, head, tuple(workers), client)
    cluster.ray_start(head, "--head", "--port", str(GCS_PORT), "--dashboard-host", "0.0.0.0", "--dashboard-port",
                      str(DASHBOARD_PORT), "--include-dashboard", "true", "--num-cpus", "0")
    for worker in workers:
        cluster.ray_start(worker, "--address", f"{cluster.head.address}:{GCS_PORT}", "--num-cpus", str(worker_cpus))
    return cluster


def short_temp_root() -> Path:
    """A short folder for Ray's temp dirs (its Unix socket paths must stay under 107 bytes)."""
    path = Path("/tmp") / f"rc{os.getpid()}{secrets.token_hex(2)}"
    path.mkdir()
    return path


def drive_load(url: str, rows: list[dict[str, Any]], *, clients: int, seconds: float,
               stop: threading.Event | None = None) -> dict[str, Any]:
    """``clients`` threads each send one-patient requests one after another for ``seconds``
    (or until ``stop``); returns every request's (start offset, ok) and the first few errors."""
    import httpx

    stop = stop or threading.Event()
    events: list[tuple[float, bool]] = []
    errors: list[str] = []
    started = time.monotonic()
    deadline = started + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=30) as session:
            i = k
            while time.monotonic() < deadline and not stop.is_set():
                at = time.monotonic() - started
                try:
                    response = session.post(url, json={"instances": [rows[i % len(rows)]]})
                    ok = response.status_code == 200
                    if not ok and len(errors) < 20:
                        errors.append(f"{at:.1f}s {response.status_code} {response.text[:160]}")
                except httpx.HTTPError as err:
                    ok = False
                    if len(errors) < 20:
                        errors.append(f"{at:.1f}s {type(err).__name__}: {err}"[:200])
                    time.sleep(0.2)
                events.append((at, ok))
                i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    return {"events": events, "errors": errors, "seconds": time.monotonic() - started}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bounded closed-loop load on a Serve route")
    parser.add_argument("command", choices=["load"])
    parser.add_argument("url")
    parser.add_argument("rows", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args(argv)
    rows = json.loads(args.rows.read_text())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # terminate(): stop early, still write the results
    result = drive_load(args.url, rows, clients=args.clients, seconds=args.seconds, stop=stop)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
