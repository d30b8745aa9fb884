"""Wall time of a 10-hospital, 10-round DP federation on the simulation engine.

Splits the run into start-up (SuperLink, simulation runtime and Ray start, MLflow run,
federated statistics), rounds (client compute vs coordination) and registration, and
compares with the same local training run sequentially in one process without Flower
(the baseline, measured in the same run).

Usage: python benchmarks/federation_wall.py [--hospitals 10] [--rounds 10] [--patients 20000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from _results import machine, table, write_section
from experiments.spec import parse_spec
from federation.launcher import LaunchOptions, run_experiment
from training.tabular.data import HospitalDataModule
from training.tabular.hospital import model_hparams
from training.tabular.local import evaluate_model, train_locally
from training.tabular.models import build_model
from training.tabular.preprocessing import FeatureEncoder, local_statistics, merge_statistics
from training.tabular.synth import FEATURE_RANGES, FEATURES_CATEGORICAL, FEATURES_NUMERIC, LABEL, PATIENT_ID, synthesize_hospitals


def make_spec(paths: list[Path], rounds: int) -> dict:
    return {
        "name": "bench-federation",
        "data": {"patient_id": PATIENT_ID, "label": LABEL, "numeric": list(FEATURES_NUMERIC),
                 "categorical": list(FEATURES_CATEGORICAL), "ranges": {c: list(r) for c, r in FEATURE_RANGES.items()},
                 "hospitals": [{"id": p.stem, "path": str(p)} for p in paths]},
        "model": {"kind": "mlp", "hidden": [32, 16], "dropout": 0.0},
        "strategy": {"name": "fedavg", "min_hospitals": 2},
        "training": {"rounds": rounds, "local_epochs": 1, "batch_size": 64, "learning_rate": 0.01},
        "privacy": {"target_epsilon": 3.0, "target_delta": 1e-5, "hospital_budget": 1000.0},
    }


def baseline(spec_dict: dict) -> float:
    """The same DP training and evaluation, hospital after hospital, in this process."""
    spec = parse_spec(spec_dict)
    torch.set_num_threads(1)
    started = time.perf_counter()
    modules = [HospitalDataModule(h.path, spec.data.contract, spec.training.batch_size, spec.data.test_fraction, spec.seed)
               for h in spec.data.hospitals]
    encoder = FeatureEncoder.from_statistics(merge_statistics([local_statistics(m.split.train, spec.data.contract) for m in modules]),
                                             spec.data.contract)
    global_model = build_model("mlp", encoder.input_dim, **model_hparams(spec))
    for m in modules:
        m.encoder = encoder
    for _ in range(spec.training.rounds):
        states, weights = [], []
        for m in modules:
            local = build_model("mlp", encoder.input_dim, **model_hparams(spec))
            local.load_state_dict(global_model.state_dict())
            data = m.dataset("train")
            train_locally(local, data, epochs=1, batch_size=spec.training.batch_size, dp=spec.privacy.dp_config, noise_multiplier=1.0)
            states.append(local.state_dict())
            weights.append(len(data))
        global_model.load_state_dict({k: sum(s[k] * w for s, w in zip(states, weights)) / sum(weights) for k in states[0]})
        for m in modules:
            evaluate_model(global_model, m.dataset("test"))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hospitals", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--patients", type=int, default=20000)
    parser.add_argument("--client-cpus", type=float, default=1.0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp(prefix="bioverse-bench-"))
    os.environ["BIOVERSE_DATA_DIR"] = str(work / "home")
    written = synthesize_hospitals(n_hospitals=args.hospitals, n_patients=args.patients, seed=5, out_dir=work / "data")
    spec_dict = make_spec([h.path for h in written], args.rounds)
    in_process = baseline(spec_dict)

    marks: dict[str, float] = {}
    started = time.perf_counter()

    def on_event(event: dict) -> None:
        marks.setdefault(event["event"], time.perf_counter() - started)

    summary = run_experiment(
        parse_spec(spec_dict),
        LaunchOptions(engine="simulation", run_dir=work / "run", tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                      ledger_dir=work / "ledgers", client_cpus=args.client_cpus),
        on_event,
    )
    total = time.perf_counter() - started
    rounds = summary["seconds"]["rounds"]
    slots = max(1.0, min(args.hospitals, (os.cpu_count() or 1) / args.client_cpus))
    walls = [r["wall"] for r in rounds]
    compute = [r["handler_seconds"] / slots for r in rounds]
    overhead = [w - c for w, c in zip(walls, compute)]
    startup = marks["statistics"]
    rounds_total = sum(walls)
    register = total - startup - rounds_total
    rows = [
        ["whole run (wall)", f"{total:.1f} s", "aim < 60 s"],
        ["start-up: to first round", f"{startup:.1f} s",
         f"ServerApp up at {marks['start']:.1f} s (SuperLink, flwr run, MLflow run); then simulation runtime, Ray, statistics"],
        ["rounds", f"{rounds_total:.1f} s", f"{len(walls)} rounds, first {walls[0]:.2f} s, median {statistics.median(walls):.2f} s"],
        ["client compute per round", f"{statistics.median(compute) * 1e3:.0f} ms",
         f"median of (sum of hospitals' handler time) / {slots:g} parallel slots"],
        ["coordination per round", f"{statistics.median(overhead) * 1e3:.0f} ms",
         f"median; max {max(overhead) * 1e3:.0f} ms; aim < 250 ms"],
        ["registration + shutdown", f"{register:.1f} s", "log and register the model, stop the SuperLink"],
        ["baseline: same training in one process", f"{in_process:.1f} s", f"federation / baseline = {total / in_process:.1f}x"],
    ]
    body = (
        "## Federation wall time (`benchmarks/federation_wall.py`)\n\n"
        f"{machine()}; {args.hospitals} hospitals, {args.patients} patients, {args.rounds} rounds, MLP 32-16, DP-SGD (fused), "
        f"Flower simulation with {args.client_cpus:g} CPU per hospital.\n\n"
        + table(["part", "time", "notes"], rows)
    )
    print(body)
    print(f"epsilon max {max(summary['epsilon'].values()):.3f}, model version {summary['model_version']}", file=sys.stderr)
    write_section("federation-wall", body)


if __name__ == "__main__":
    main()
