"""Round time on Flower's deployment engine: BioVerse's warm ClientApp runner against Flower's
process per task (the old path), stock Flower's quickstart-style app, and the simulation engine.

Every case runs the same tiny tabular MLP (DP-SGD) spec, or for stock Flower its own FedAvg app,
with SuperNodes as separate processes on loopback (insecure). Per-round time is the median
after round 1. RSS per SuperNode is the process tree's (SuperNode, runner or SuperExec, task
processes), sampled every 0.5 s: idle (before the run) and peak.

Usage: python benchmarks/deployment_rounds.py [--nodes 3,10,30] [--rounds 3]
           [--old-max 3] [--stock-max 10] [--case-timeout 900]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import tomli_w
from federation_wall import make_spec

from _results import machine, table, write_section
from experiments.spec import parse_spec
from federation.launcher import LaunchOptions, run_experiment
from federation.processes import child_env, flower_bin, free_port, stop, wait_for_port
from federation.superlink import superlink_command
from federation.supernode import supernode_command
from training.tabular.synth import synthesize_hospitals

STOCK_APP = Path(__file__).with_name("stock_flower_app")
AUTH_FAILED = "authentication failed"


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, bytes."""
    total = 0
    with contextlib.suppress(psutil.Error):
        for p in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
    return total


class RssSampler:
    """Samples each SuperNode's process-tree RSS every 0.5 s in a thread; keeps the peak."""

    def __init__(self, pids: list[int]) -> None:
        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak = [0] * len(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> list[int]:
        return [tree_rss(p) for p in self.processes]

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = [max(a, b) for a, b in zip(self.peak, self.now())]

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def deployment(work: Path, nodes: list[dict[str, Any]], runner: str, env: dict[str, str]) -> Iterator[tuple[str, list[int]]]:
    """A SuperLink and one SuperNode per node config on loopback; yields the address and the SuperNodes' pids."""
    port = free_port()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []

    def start(command: list[str], log: str) -> subprocess.Popen:
        out = open(logs / log, "ab")  # noqa: SIM115 - handed to the child
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True)
        processes.append(process)
        return process

    try:
        link = start(superlink_command(port=port, simulation=False), "superlink.log")
        wait_for_port(port, 120, link)
        for i, node in enumerate(nodes):
            start(supernode_command(superlink=f"127.0.0.1:{port}", port=free_port(), node_config=node, runner=runner),
                  f"supernode-{i:02d}.log")
        time.sleep(2 + 0.2 * len(nodes))  # let them connect and settle before idle RSS is taken
        yield f"127.0.0.1:{port}", [p.pid for p in processes[1:]]
    finally:
        for process in reversed(processes):
            stop(process)


def auth_failures(work: Path) -> int:
    return sum(p.read_text(errors="replace").count(AUTH_FAILED) for p in (work / "logs").glob("supernode-*.log"))


def bioverse_deployment(work: Path, paths: list[Path], rounds: int, runner: str, timeout: float) -> dict[str, Any]:
    spec = make_spec(paths, rounds)
    spec["data"]["hospitals"] = [{"id": p.stem} for p in paths]  # sites hold their own paths
    nodes = [{"hospital-id": p.stem, "data-path": str(p), "privacy-budget": 1000.0,
              "ledger-path": str(work / "ledgers" / f"{p.stem}.json")} for p in paths]
    env = child_env({"FLWR_HOME": str(work / "flwr-home"), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                     "PYTHONWARNINGS": "ignore"})
    with deployment(work, nodes, runner, env) as (address, pids), RssSampler(pids) as rss:
        idle = rss.now()
        summary = run_experiment(parse_spec(spec), LaunchOptions(engine="deployment", run_dir=work / "run", superlink=address,
                                                                 tracking_uri=f"sqlite:///{work / 'mlflow.db'}", timeout=timeout))
    return {"rounds": [r["wall"] for r in summary["seconds"]["rounds"]], "idle": idle, "peak": rss.peak,
            "auth_failures": auth_failures(work)}


def stock_deployment(work: Path, n: int, rounds: int, timeout: float) -> dict[str, Any]:
    home, timing = work / "flwr-home", work / "timing.jsonl"
    env = child_env({"FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONWARNINGS": "ignore"})
    with deployment(work, [{"hospital-id": f"node-{i}"} for i in range(n)], "subprocess", env) as (address, pids), \
            RssSampler(pids) as rss:
        idle = rss.now()
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": "bench", "bench": {"address": address, "insecure": True}}}))
        config = f'num-server-rounds={rounds} min-nodes={n} timing-file="{timing}"'
        subprocess.run([flower_bin("flwr"), "run", str(STOCK_APP), "bench", "--run-config", config, "--stream"],
                       env=env, cwd=work, capture_output=True, timeout=timeout, check=True)
    marks = [json.loads(line)["time"] for line in timing.read_text().splitlines()]
    return {"rounds": [b - a for a, b in zip(marks, marks[1:])], "idle": idle, "peak": rss.peak,
            "auth_failures": auth_failures(work)}


def simulation(work: Path, paths: list[Path], rounds: int, timeout: float) -> dict[str, Any]:
    summary = run_experiment(parse_spec(make_spec(paths, rounds)),
                             LaunchOptions(engine="simulation", run_dir=work / "run", tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                                           ledger_dir=work / "ledgers", timeout=timeout))
    return {"rounds": [r["wall"] for r in summary["seconds"]["rounds"]]}


def later(rounds: list[float]) -> float:
    """Median round time after round 1."""
    return statistics.median(rounds[1:] or rounds)


def mib(values: list[int]) -> str:
    return f"{statistics.median(values) / 2**20:.0f}" if values and max(values) else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", default="3,10,30")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old-max", type=int, default=3, help="largest federation run on the old path (process per task)")
    parser.add_argument("--stock-max", type=int, default=10, help="largest federation run with stock Flower's app")
    parser.add_argument("--case-timeout", type=float, default=900)
    parser.add_argument("--patients-per-node", type=int, default=300)
    parser.add_argument("--from-json", default=None, help="render the table from an earlier run's results.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    root = Path(tempfile.mkdtemp(prefix="bioverse-deployment-rounds-"))
    os.environ["BIOVERSE_DATA_DIR"] = str(root / "home")
    results: list[tuple[str, int, dict[str, Any] | str]] = []

    def case(name: str, n: int, fn: Any, *fn_args: Any) -> None:
        work = root / f"{name.split()[0]}-{name.split()[-1]}-{n}"
        started = time.perf_counter()
        try:
            outcome: dict[str, Any] | str = fn(work, *fn_args)
        except Exception as err:  # noqa: BLE001 - a failed case is a row, the others still run
            outcome = f"failed: {str(err)[:120]}"
        print(f"{name} x{n}: {time.perf_counter() - started:.0f} s, {outcome}", file=sys.stderr, flush=True)
        results.append((name, n, outcome))
        (root / "results.json").write_text(json.dumps(results))  # to render the table again: --from-json

    if args.from_json:
        results.extend(tuple(r) for r in json.loads(Path(args.from_json).read_text()))
        args.nodes = ""

    for n in [int(v) for v in args.nodes.split(",") if v]:
        paths = [h.path for h in synthesize_hospitals(n_hospitals=n, n_patients=args.patients_per_node * n, seed=5,
                                                      out_dir=root / f"data-{n}")]
        case("bioverse deployment warm", n, bioverse_deployment, paths, args.rounds, "warm", args.case_timeout)
        if n <= args.old_max:
            case("bioverse deployment subprocess", n, bioverse_deployment, paths, args.rounds, "subprocess", args.case_timeout)
        if n <= args.stock_max:
            case("stock-flower deployment subprocess", n, stock_deployment, n, args.rounds, args.case_timeout)
        case("bioverse simulation -", n, simulation, paths, args.rounds, args.case_timeout)

    rows = []
    for name, n, outcome in results:
        app, engine, runner = name.split()
        if isinstance(outcome, str):
            rows.append([app, engine, runner, str(n), outcome, "", "", "", ""])
            continue
        warm = next((o for a, e, r, m, o in ((*x[0].split(), x[1], x[2]) for x in results)
                     if a == "bioverse" and e == "deployment" and r == "warm" and m == n and isinstance(o, dict)), None)
        ratio = f"{later(outcome['rounds']) / later(warm['rounds']):.1f}x" if warm else "-"
        rows.append([app, engine, runner, str(n), f"{outcome['rounds'][0]:.1f}", f"{later(outcome['rounds']):.2f}", ratio,
                     f"{mib(outcome.get('idle', []))} / {mib(outcome.get('peak', []))}",
                     str(outcome.get("auth_failures", "-"))])
    load = os.getloadavg()
    body = (
        "## Deployment engine round time (`benchmarks/deployment_rounds.py`)\n\n"
        f"{machine()}; load average at the end {load[0]:.1f}; {args.rounds} rounds, tiny tabular MLP (32-16, DP-SGD), "
        f"{args.patients_per_node} patients per hospital; SuperLink and SuperNodes as processes on loopback, insecure "
        "(TLS and node authentication not in this run). `warm`: BioVerse's SuperNode wrapper (adaptive Fleet polling, "
        "one runner with torch and the ClientApp imported, a forked child per task); `subprocess`: Flower's own "
        "(a fresh `flwr-clientapp` process per task; the old path). Stock Flower: its own FedAvg app, "
        "`benchmarks/stock_flower_app/`, stock grid and SuperNode. Ratio: rounds after round 1 against BioVerse warm "
        "with the same number of nodes. RSS: median over SuperNodes of the process tree, idle / peak.\n\n"
        + table(["app", "engine", "runner", "nodes", "round 1 (s)", "round 2+ median (s)", "vs warm",
                 "RSS per SuperNode MiB idle / peak", "'authentication failed' lines"], rows)
    )
    print(body)
    write_section("deployment-rounds", body)


if __name__ == "__main__":
    main()
