"""Round time on Flower's deployment engine: BioVerse's warm ClientApp runner against Flower's
process per task (the old path), stock Flower's quickstart-style app, and the simulation engine.

Every case runs the same tiny tabular MLP (DP-SGD) spec, or for stock Flower its own FedAvg app,
with SuperNodes as separate processes on loopback (insecure). Per-round time is the median
after round 1. Memory per SuperNode is the process tree's (SuperNode, runner or SuperExec, task
processes), RSS and PSS, sampled every 2 s: idle (before the run) and peak.

Usage: python benchmarks/deployment_rounds.py [--nodes 3,10,30] [--rounds 3]
           [--old-max 3] [--stock-max 10] [--case-timeout 900]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
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
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from federation_wall import make_spec

from _results import machine, table, write_section
from experiments.spec import parse_spec
from federation.control_api import register_node
from federation.launcher import LaunchOptions, run_experiment
from federation.pki import NodeKey, create_ca, issue_server_certificate
from federation.processes import child_env, flower_bin, free_port, stop, wait_for_port
from federation.superlink import SuperLinkTLS, superlink_command
from federation.supernode import secure_supernode_command, supernode_command
from training.tabular.synth import synthesize_hospitals

STOCK_APP = Path(__file__).with_name("stock_flower_app")
AUTH_FAILED = "authentication failed"
#: Memory a SuperNode's process tree may take at its peak, by runner (measured here: the warm
#: runner holds ~530 MiB RSS after its imports, a Flower task process ~450 MiB while it runs).
MEMORY_PER_NODE = {"warm": 800 * 2**20, "subprocess": 700 * 2**20}


def tree_memory(process: psutil.Process) -> tuple[int, int]:
    """RSS and PSS of a process and all its descendants, bytes. RSS counts pages a forked child
    shares with its parent twice; PSS splits every shared page among the processes sharing it."""
    rss = pss = 0
    with contextlib.suppress(psutil.Error):
        for p in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                info = p.memory_full_info()
                rss, pss = rss + info.rss, pss + info.pss
    return rss, pss


class MemorySampler:
    """Samples each SuperNode's process-tree RSS and PSS every 2 s in a thread; keeps the peaks."""

    def __init__(self, pids: list[int]) -> None:
        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak = [(0, 0)] * len(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> list[tuple[int, int]]:
        return [tree_memory(p) for p in self.processes]

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            self.peak = [(max(a[0], b[0]), max(a[1], b[1])) for a, b in zip(self.peak, self.now())]

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def tree_cpu(process: psutil.Process) -> float:
    """CPU seconds (user + system) of a process and its descendants, those already reaped included."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for p in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
    return total


class CpuClock:
    """Every 0.5 s, the CPU seconds the hospitals' process trees (SuperNodes, runners, task
    processes) and the coordinator's (SuperLink, ServerApp) have used so far; :meth:`between`
    interpolates, for the CPU a round took whatever else the machine was doing."""

    def __init__(self, hospitals: list[int], coordinator: int) -> None:
        self.hospitals = [psutil.Process(pid) for pid in hospitals]
        self.coordinator = psutil.Process(coordinator)
        self.timeline: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.timeline.append((time.time(), sum(tree_cpu(p) for p in self.hospitals), tree_cpu(self.coordinator)))

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def at(self, when: float) -> tuple[float, float]:
        """Hospitals' and coordinator's CPU seconds used by ``when``."""
        before = [s for s in self.timeline if s[0] <= when] or self.timeline[:1]
        after = [s for s in self.timeline if s[0] >= when] or self.timeline[-1:]
        (t0, h0, c0), (t1, h1, c1) = before[-1], after[0]
        share = 0.0 if t1 == t0 else (when - t0) / (t1 - t0)
        return h0 + share * (h1 - h0), c0 + share * (c1 - c0)

    def rounds(self, progress: Path) -> list[tuple[float, float]]:
        """Per round after round 1: the hospitals' and coordinator's CPU seconds, from one round's
        last ``evaluate`` progress event to the next."""
        ends = [json.loads(line)["time"] for line in progress.read_text().splitlines()
                if '"event": "evaluate"' in line]
        marks = [self.at(t) for t in ends]
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:])]

    def __enter__(self) -> CpuClock:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def wait_until_ready(logs: Path, n: int, runner: str, timeout: float = 180) -> None:
    """Until every SuperNode is connected (and, warm, its runner has its imports): idle memory is taken after."""
    sign = "ClientApp runner ready" if runner == "warm" else "SuperNode ID"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        texts = [p.read_text(errors="replace") for p in logs.glob("supernode-*.log")]
        if len(texts) >= n and all(sign in t for t in texts):
            return
        time.sleep(1)


def secure_setup(work: Path, port: int, n: int) -> tuple[SuperLinkTLS, list[Path]]:
    """A CA, the SuperLink's certificate and one OpenSSH node key per SuperNode (as ``bioverse
    coordinator init`` and ``bioverse hospital join`` make them)."""
    pki = work / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    create_ca("bench", pki / "ca.pem", pki / "ca.key")
    issue_server_certificate(pki / "ca.pem", pki / "ca.key", ["127.0.0.1"], pki / "server.pem", pki / "server.key")
    keys = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        keys.append(pki / f"node-{i:02d}")
        keys[-1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()))
    return SuperLinkTLS(pki / "server.pem", pki / "server.key", pki / "ca.pem", node_auth=True), keys


@contextlib.contextmanager
def deployment(work: Path, nodes: list[dict[str, Any]], runner: str, env: dict[str, str],
               secure: bool = False) -> Iterator[tuple[str, list[int], Path | None]]:
    """A SuperLink and one SuperNode per node config on loopback (``secure``: TLS and node
    authentication, every key registered); yields the address, the pids (SuperLink first, then
    the SuperNodes) and the CA."""
    port = free_port()
    tls, keys = secure_setup(work, port, len(nodes)) if secure else (None, [])
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []

    def start(command: list[str], log: str) -> subprocess.Popen:
        out = open(logs / log, "ab")  # noqa: SIM115 - handed to the child
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True)
        processes.append(process)
        return process

    try:
        address = f"127.0.0.1:{port}"
        link = start(superlink_command(port=port, simulation=False, tls=tls), "superlink.log")
        wait_for_port(port, 120, link)
        for i, node in enumerate(nodes):
            if tls is None:
                command = supernode_command(superlink=address, port=free_port(), node_config=node, runner=runner)
            else:
                public = serialization.load_ssh_private_key(keys[i].read_bytes(), None).public_key()
                register_node(address, tls.ca_certfile, NodeKey.from_public_key(public).pem, f"node-{i:02d}")
                command = secure_supernode_command(superlink=address, port=free_port(), node_config=node, runner=runner,
                                                   root_certificates=tls.ca_certfile, private_key=keys[i])
            start(command, f"supernode-{i:02d}.log")
        time.sleep(2 + 0.2 * len(nodes))  # let them connect and settle before idle memory is taken
        wait_until_ready(logs, len(nodes), runner)
        yield address, [p.pid for p in processes], tls.ca_certfile if tls else None
    finally:
        for process in reversed(processes):
            stop(process)


def auth_failures(work: Path) -> int:
    return sum(p.read_text(errors="replace").count(AUTH_FAILED) for p in (work / "logs").glob("supernode-*.log"))


def bioverse_deployment(work: Path, paths: list[Path], rounds: int, runner: str, timeout: float,
                        secure: bool = False) -> dict[str, Any]:
    spec = make_spec(paths, rounds)
    spec["data"]["hospitals"] = [{"id": p.stem} for p in paths]  # sites hold their own paths
    nodes = [{"hospital-id": p.stem, "data-path": str(p), "privacy-budget": 1000.0,
              "ledger-path": str(work / "ledgers" / f"{p.stem}.json")} for p in paths]
    env = child_env({"FLWR_HOME": str(work / "flwr-home"), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                     "PYTHONWARNINGS": "ignore"})
    with deployment(work, nodes, runner, env, secure) as (address, pids, ca), MemorySampler(pids[1:]) as rss, \
            CpuClock(pids[1:], pids[0]) as cpu:
        idle = rss.now()
        summary = run_experiment(parse_spec(spec), LaunchOptions(engine="deployment", run_dir=work / "run", superlink=address,
                                                                 tracking_uri=f"sqlite:///{work / 'mlflow.db'}", timeout=timeout,
                                                                 root_certificates=ca))
    return {"rounds": [r["wall"] for r in summary["seconds"]["rounds"]], "idle": idle, "peak": rss.peak,
            "auth_failures": auth_failures(work), "cpu": cpu.rounds(work / "run" / "progress.jsonl")}


def stock_deployment(work: Path, n: int, rounds: int, timeout: float) -> dict[str, Any]:
    home, timing = work / "flwr-home", work / "timing.jsonl"
    env = child_env({"FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONWARNINGS": "ignore"})
    with deployment(work, [{"hospital-id": f"node-{i}"} for i in range(n)], "subprocess", env) as (address, pids, _), \
            MemorySampler(pids[1:]) as rss:
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


def mib(values: list[list[int]]) -> str:
    """Median RSS / PSS over SuperNodes, MiB."""
    if not values:
        return "-"
    return " / ".join(f"{statistics.median(v[i] for v in values) / 2**20:.0f}" for i in (0, 1))


def cpu_cells(cpu: list[list[float]] | None, n: int) -> list[str]:
    """One hospital's and the coordinator's CPU seconds per round (median after round 1), and all of it over 2 cores."""
    if not cpu:
        return ["-", "-"]
    hospitals, coordinator = statistics.median(c[0] for c in cpu), statistics.median(c[1] for c in cpu)
    return [f"{hospitals / n:.2f} / {coordinator:.2f}", f"{(hospitals + coordinator) / 2:.2f}"]


def report(results: list[tuple[str, int, Any]], args: argparse.Namespace) -> None:
    """Print the table and write it into RESULTS.md (after every case: a cut-short run keeps what it measured)."""
    rows = []
    for name, n, outcome in results:
        app, engine, runner = name.split()
        if isinstance(outcome, str):
            rows.append([app, engine, runner, str(n), outcome, "", "", "", "", "", "", ""])
            continue
        warm = next((o for a, e, r, m, o in ((*x[0].split(), x[1], x[2]) for x in results)
                     if a == "bioverse" and e == "deployment" and r == "warm" and m == n and isinstance(o, dict)), None)
        ratio = f"{later(outcome['rounds']) / later(warm['rounds']):.1f}x" if warm else "-"
        rows.append([app, engine, runner, str(n), f"{outcome['rounds'][0]:.1f}", f"{later(outcome['rounds']):.2f}", ratio,
                     mib(outcome.get("idle", [])), mib(outcome.get("peak", [])),
                     str(outcome.get("auth_failures", "-")), *cpu_cells(outcome.get("cpu"), n)])
    load = os.getloadavg()
    body = (
        f"## {args.title}\n\n"
        f"{machine()}; load average at the end {load[0]:.1f}; {args.rounds} rounds, tiny tabular MLP (32-16, DP-SGD), "
        f"{args.patients_per_node} patients per hospital; SuperLink and SuperNodes as processes on loopback, insecure "
        "unless the engine says `+tls+auth` (TLS, node keys registered, every Fleet request signed). `warm`: BioVerse's SuperNode wrapper (adaptive Fleet polling, "
        "one runner with torch and the ClientApp imported, a forked child per task); `subprocess`: Flower's own "
        "(a fresh `flwr-clientapp` process per task; the old path). Stock Flower: its own FedAvg app, "
        "`benchmarks/stock_flower_app/`, stock grid and SuperNode. Ratio: rounds after round 1 against BioVerse warm "
        "with the same number of nodes. Memory: median over SuperNodes of the process tree (SuperNode, runner or "
        "SuperExec, task processes), idle (before the run) and peak (sampled every 2 s); RSS counts pages a forked "
        "child shares with the runner again, PSS splits shared pages (also those shared between SuperNodes). "
        "CPU: seconds of CPU per round after round 1 (median), the hospitals' process trees (SuperNode, runner, task "
        "processes) divided by the number of hospitals, and the coordinator's (SuperLink, ServerApp); unlike the wall "
        "time, little affected by other load on the machine. `CPU-bound round` is all of it divided by 2 cores: the "
        "round time this vm could reach with every hospital on it and nothing else running; with one host per "
        "hospital a round needs about one hospital's CPU plus the coordinator's.\n\n"
        + table(["app", "engine", "runner", "nodes", "round 1 (s)", "round 2+ median (s)", "vs warm",
                 "idle MiB (RSS / PSS)", "peak MiB (RSS / PSS)", "'authentication failed' lines",
                 "CPU s per round: one hospital / coordinator", "CPU-bound round, all on 2 cores (s)"], rows)
        + (f"\n\n{args.note}" if args.note else "")
    )
    print(body)
    write_section(args.section, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", default="3,10,30")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old-max", type=int, default=3, help="largest federation run on the old path (process per task)")
    parser.add_argument("--stock-max", type=int, default=10, help="largest federation run with stock Flower's app")
    parser.add_argument("--case-timeout", type=float, default=900)
    parser.add_argument("--patients-per-node", type=int, default=300)
    parser.add_argument("--from-json", default=None, help="start from an earlier run's results.json (rows kept)")
    parser.add_argument("--note", default="", help="a line added under the table")
    parser.add_argument("--section", default="deployment-rounds", help="the RESULTS.md section written")
    parser.add_argument("--title", default="Deployment engine round time (`benchmarks/deployment_rounds.py`)")
    parser.add_argument("--cases", default="warm,warm-tls,subprocess,stock,sim",
                        help="which cases: warm, warm-tls (TLS and node authentication), subprocess, stock, sim")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    root = Path(tempfile.mkdtemp(prefix="bioverse-deployment-rounds-"))
    os.environ["BIOVERSE_DATA_DIR"] = str(root / "home")
    results: list[tuple[str, int, dict[str, Any] | str]] = []

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the case's processes on the way out

    def case(name: str, n: int, fn: Any, *fn_args: Any) -> None:
        work = root / f"{name.replace(' ', '-').replace('+', '-')}-{n}"
        started = time.perf_counter()
        need = n * MEMORY_PER_NODE.get(name.split()[-1], 0)
        available = psutil.virtual_memory().available
        try:
            if need > 0.7 * available:
                raise MemoryError(f"skipped: ~{need / 2**30:.0f} GiB for {n} SuperNodes, {available / 2**30:.0f} GiB available")
            outcome: dict[str, Any] | str = fn(work, *fn_args)
        except MemoryError as err:
            outcome = str(err)
        except Exception as err:  # noqa: BLE001 - a failed case is a row, the others still run
            outcome = f"failed: {str(err)[:120]}"
        print(f"{name} x{n}: {time.perf_counter() - started:.0f} s, {outcome}", file=sys.stderr, flush=True)
        results.append((name, n, outcome))
        (root / "results.json").write_text(json.dumps(results))  # to render the table again: --from-json
        report(results, args)

    if args.from_json:  # an earlier run's rows first; --nodes "" only renders them
        results.extend(tuple(r) for r in json.loads(Path(args.from_json).read_text()))
    kinds = set(args.cases.split(","))

    for n in [int(v) for v in args.nodes.split(",") if v]:
        paths = [h.path for h in synthesize_hospitals(n_hospitals=n, n_patients=args.patients_per_node * n, seed=5,
                                                      out_dir=root / f"data-{n}")]
        if "warm" in kinds:
            case("bioverse deployment warm", n, bioverse_deployment, paths, args.rounds, "warm", args.case_timeout)
        if "subprocess" in kinds and n <= args.old_max:
            case("bioverse deployment subprocess", n, bioverse_deployment, paths, args.rounds, "subprocess", args.case_timeout)
        if "stock" in kinds and n <= args.stock_max:
            case("stock-flower deployment subprocess", n, stock_deployment, n, args.rounds, args.case_timeout)
        if "sim" in kinds:
            case("bioverse simulation -", n, simulation, paths, args.rounds, args.case_timeout)
        if "warm-tls" in kinds:
            case("bioverse deployment+tls+auth warm", n, bioverse_deployment, paths, args.rounds, "warm", args.case_timeout, True)

    report(results, args)


if __name__ == "__main__":
    main()
