"""Resume: time from `bioverse experiment resume` to the next round, against a fresh run's time to round 1.

Runs a 3-hospital DP federation with the CLI on the simulation engine, kills the whole
coordinator (launcher, SuperLink, ServerApp, Ray) with SIGKILL once round 1 is
checkpointed, and resumes it. Both times run from the command's launch to the end of a
training round (the fresh run's round 1, the resumed run's next round), measured in the
same run of this script; the ratio is resume / fresh.

Usage: python benchmarks/resume.py [--rounds 3] [--patients 3000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _results import machine, table, write_section
from federation.checkpoint import load_checkpoint
from federation.processes import kill_tree
from training.tabular.synth import FEATURE_RANGES, FEATURES_CATEGORICAL, FEATURES_NUMERIC, LABEL, PATIENT_ID, synthesize_hospitals

BIOVERSE = str(Path(sys.executable).parent / "bioverse")


def _spec(paths: list[Path], rounds: int, name: str) -> dict:
    return {
        "name": name,
        "data": {"patient_id": PATIENT_ID, "label": LABEL, "numeric": list(FEATURES_NUMERIC),
                 "categorical": list(FEATURES_CATEGORICAL), "ranges": {c: list(r) for c, r in FEATURE_RANGES.items()},
                 "hospitals": [{"id": p.stem, "path": str(p)} for p in paths]},
        "model": {"kind": "mlp", "hidden": [32, 16], "dropout": 0.0},
        "strategy": {"name": "fedavgm", "min_hospitals": 2},
        "training": {"rounds": rounds, "local_epochs": 1, "batch_size": 64, "learning_rate": 0.01},
        "privacy": {"target_epsilon": 3.0, "target_delta": 1e-5, "hospital_budget": 1000.0},
    }


def _events(home: Path) -> list[dict]:
    found = []
    for path in sorted((home / "runs").glob("*/progress.jsonl")):  # run folders are named by launch time
        found += [{**json.loads(line), "file": str(path)} for line in path.read_text().splitlines() if line.strip()]
    return found


def one(root: Path, paths: list[Path], rounds: int, name: str) -> tuple[float, float, float]:
    """(fresh launch -> round 1 trained, resume launch -> next round trained, resume total) in seconds."""
    (root / "spec.yaml").write_text(yaml.safe_dump(_spec(paths, rounds, name)))
    home, uri = root / "home", f"sqlite:///{root / 'mlflow.db'}"
    env = {**os.environ, "BIOVERSE_DATA_DIR": str(home), "FLWR_HOME": str(home / "flwr")}
    launched = time.time()
    first = subprocess.Popen([BIOVERSE, "experiment", "run", str(root / "spec.yaml"), "--tracking-uri", uri, "--quiet"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run_id, checkpoint = None, None
    try:
        while checkpoint is None and first.poll() is None:
            run_id = run_id or next((e["run_id"] for e in _events(home) if e["event"] == "start"), None)
            checkpoint = load_checkpoint(uri, run_id) if run_id else None
            time.sleep(0.2)
    finally:
        kill_tree(first)
    if checkpoint is None:
        raise SystemExit("the run ended before its first checkpoint")
    fresh = next(e["time"] for e in _events(home) if e["event"] == "train" and e["round"] == 1) - launched
    for _ in range(3):  # on an overloaded machine Ray's node can time out during startup: resume again
        relaunched = time.time()
        done = subprocess.run([BIOVERSE, "experiment", "resume", str(run_id), "--tracking-uri", uri, "--quiet"],
                              env=env, capture_output=True, text=True, timeout=900)
        total = time.time() - relaunched
        if done.returncode == 0 or "before the run finished" not in done.stdout + done.stderr:
            break
        print("resume: the engine crashed (see its flwr-run.log); resuming again", flush=True)
    if done.returncode != 0:
        logs = sorted((home / "runs").glob("*/flwr-run.log"))
        tail = logs[-1].read_text(errors="replace")[-3000:] if logs else ""
        raise SystemExit(f"resume failed: {done.stdout[-2000:]} {done.stderr[-2000:]}\n--- {logs[-1] if logs else ''}\n{tail}")
    resumed_file = [e["file"] for e in _events(home) if e["event"] == "start" and e.get("resumed_after")][-1]
    resume = next(e["time"] for e in _events(home) if e["file"] == resumed_file and e["event"] == "train") - relaunched
    return fresh, resume, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--patients", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", help="Work in this folder and keep it (logs of a failed resume).")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as tmp_dir:
        tmp = args.keep or tmp_dir
        data = Path(tmp) / "data"
        paths = sorted(h.path for h in synthesize_hospitals(n_hospitals=3, n_patients=args.patients, seed=3, out_dir=data))
        for i in range(args.repeats):
            root = Path(tmp) / f"r{i}"
            root.mkdir(parents=True)
            fresh, resume, total = one(root, paths, args.rounds, f"bench-resume-{i}")
            rows.append([str(i + 1), f"{fresh:.1f}", f"{resume:.1f}", f"{resume / fresh:.2f}", f"{total:.1f}"])
            print(f"repeat {i + 1}: fresh launch -> round 1 {fresh:.1f} s, resume -> next round {resume:.1f} s", flush=True)
    body = "\n".join([
        "## Resume (`benchmarks/resume.py`)",
        "",
        f"3 hospitals x {args.patients} patients, tabular MLP, DP, FedAvgM, {args.rounds} rounds, simulation engine,",
        "coordinator killed (SIGKILL of the launcher's whole process tree) once round 1 was checkpointed, then",
        "`bioverse experiment resume RUN_ID`. Times from the command's launch to the end of a training round",
        "(the fresh run's round 1; the resumed run's next round). Baseline: the fresh run, same script run.",
        f"Machine: {machine()}.",
        "",
        table(["repeat", "fresh: launch -> round 1 (s)", "resume: launch -> next round (s)", "ratio", "resume total (s)"], rows),
        "",
        "A resume skips the federated statistics round (its results are in the checkpoint) but pays the",
        "same engine start (SuperLink, simulation runtime, Ray) and reads the checkpoint from MLflow.",
    ])
    print(body)
    write_section("resume", body)


if __name__ == "__main__":
    main()
