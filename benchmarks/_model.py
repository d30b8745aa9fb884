"""Shared benchmark set-up: a risk model trained on a synthetic hospital, registered as production."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from mlflow.tracking import MlflowClient

from experiments.gate import mark_approved
from experiments.spec import parse_spec
from experiments.tracking import RunTracker, embedded_artifact_location
from training.tabular.data import HospitalDataModule
from training.tabular.hospital import model_hparams
from training.tabular.local import train_locally
from training.tabular.models import build_model
from training.tabular.preprocessing import FeatureEncoder
from training.tabular.synth import FEATURES_CATEGORICAL, FEATURES_NUMERIC, LABEL

FEATURES = FEATURES_NUMERIC + FEATURES_CATEGORICAL


def register_production_model(*, work: Path, name: str, train_path: Path, epochs: int = 1, uri: str | None = None) -> str:
    """Train an MLP (64-32) on ``train_path``, register it as ``name`` v1 with the
    ``production`` alias in the MLflow store at ``uri`` (default: an embedded one under ``work``); returns the store's URI."""
    spec = parse_spec({"name": f"bench-{name}", "registered_model": name,
                       "data": {"label": LABEL, "numeric": list(FEATURES_NUMERIC), "categorical": list(FEATURES_CATEGORICAL),
                                "hospitals": [{"id": "h", "path": str(train_path)}]},
                       "model": {"kind": "mlp", "hidden": [64, 32]}, "strategy": {"min_hospitals": 1},
                       "privacy": {"enabled": False}})
    dm = HospitalDataModule(train_path, spec.data.contract)
    dm.encoder = FeatureEncoder.from_statistics(dm.statistics(), spec.data.contract)
    model = build_model("mlp", dm.encoder.input_dim, **model_hparams(spec))
    train_locally(model, dm.dataset("train"), epochs=epochs, batch_size=64, dp=None)
    uri = uri or f"sqlite:///{work / 'mlflow.db'}"
    tracker = RunTracker(uri, embedded_artifact_location(uri))
    tracker.start(spec)
    tracker.register(model=model, encoder=dm.encoder, kind="mlp", hparams=model_hparams(spec), model_name=name, tags={})
    tracker.end()
    os.environ.setdefault("BIOVERSE_GATE_KEY", secrets.token_hex(32))  # shared with the API and Serve processes
    mark_approved(uri, name, "1")  # production serves gate-signed versions only (docs/review.md)
    MlflowClient(uri, registry_uri=uri).set_registered_model_alias(name, "production", "1")
    return uri
