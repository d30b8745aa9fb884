"""The demo: fresh synthetic hospitals and a DP experiment spec over them."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from rich.console import Console

from experiments.spec import ExperimentSpec, load_spec

__all__ = ["prepare_demo"]


def prepare_demo(directory: Path, *, hospitals: int, patients: int, rounds: int, seed: int, console: Console) -> tuple[ExperimentSpec, Path]:
    """Synthesise hospitals into ``directory`` and write the demo spec beside them.

    The demo's hospitals are new patients each time, so their privacy ledgers start
    afresh (``directory/ledgers``); a real hospital's ledger is never reset.

    Returns:
        The loaded spec and the demo hospitals' ledger folder.
    """
    from training.synth import FEATURES_CATEGORICAL, FEATURES_NUMERIC, LABEL, PATIENT_ID, synthesize_hospitals

    data_dir, ledgers = directory / "hospitals", directory / "ledgers"
    shutil.rmtree(ledgers, ignore_errors=True)
    written = synthesize_hospitals(n_hospitals=hospitals, n_patients=patients, seed=seed, out_dir=data_dir)
    console.print(f"Synthesised {hospitals} hospitals ({patients} patients) in {data_dir}", highlight=False)
    spec = {
        "name": "demo-cardiac-risk",
        "registered_model": "cardiac-risk",
        "description": "BioVerse demo: cardiac event risk across synthetic hospitals with DP-SGD.",
        "seed": seed,
        "data": {
            "patient_id": PATIENT_ID,
            "label": LABEL,
            "numeric": list(FEATURES_NUMERIC),
            "categorical": list(FEATURES_CATEGORICAL),
            "hospitals": [{"id": h.hospital_id, "path": str(h.path.relative_to(directory))} for h in written],
        },
        "model": {"kind": "mlp", "hidden": [32, 16], "dropout": 0.0},
        "strategy": {"name": "fedavg", "min_hospitals": max(1, hospitals // 2)},
        "training": {"rounds": rounds, "local_epochs": 2, "batch_size": 64, "learning_rate": 0.02},
        "privacy": {"enabled": True, "target_epsilon": 3.0, "target_delta": 1e-5, "max_grad_norm": 1.0,
                    "grad_sample_mode": "fused", "hospital_budget": 10.0},
    }
    path = directory / "demo.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_spec(path), ledgers
