"""Shared fixtures: synthetic hospitals and spec builders."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from experiments.spec import ExperimentSpec, parse_spec
from training.tabular.synth import FEATURE_RANGES, FEATURES_CATEGORICAL, FEATURES_NUMERIC, LABEL, PATIENT_ID, synthesize_hospitals


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests where there is no GPU; mark integration tests by folder."""
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU")
    gpu = _has_gpu()
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip_gpu)
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def spec_dict(hospital_paths: list[Path], **overrides: Any) -> dict[str, Any]:
    """A small valid spec over the given hospital files; ``overrides`` replace sections."""
    spec: dict[str, Any] = {
        "name": "test-cardiac",
        "registered_model": "test-cardiac-risk",
        "seed": 1,
        "data": {
            "patient_id": PATIENT_ID,
            "label": LABEL,
            "numeric": list(FEATURES_NUMERIC),
            "categorical": list(FEATURES_CATEGORICAL),
            "ranges": {c: list(r) for c, r in FEATURE_RANGES.items()},
            "hospitals": [{"id": p.stem, "path": str(p)} for p in hospital_paths],
        },
        "model": {"kind": "logistic"},
        "strategy": {"name": "fedavg", "min_hospitals": 2},
        "training": {"rounds": 2, "local_epochs": 1, "batch_size": 64, "learning_rate": 0.05},
        "privacy": {"enabled": True, "target_epsilon": 2.0, "target_delta": 1e-5, "hospital_budget": 10.0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def make_spec(hospital_paths: list[Path], **overrides: Any) -> ExperimentSpec:
    """Validated :func:`spec_dict`."""
    return parse_spec(spec_dict(hospital_paths, **overrides))


@pytest.fixture(scope="session")
def hospitals_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic hospitals (3,000 patients), written once per session; do not modify."""
    out = tmp_path_factory.mktemp("hospitals")
    synthesize_hospitals(n_hospitals=3, n_patients=3000, seed=11, out_dir=out)
    return out


@pytest.fixture()
def hospital_files(hospitals_dir: Path, tmp_path: Path) -> list[Path]:
    """A private copy of the three hospitals, safe to modify."""
    copies = []
    for path in sorted(hospitals_dir.glob("hospital-*.csv")):
        target = tmp_path / "data" / path.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
        copies.append(target)
    return copies


@pytest.fixture()
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """BIOVERSE_DATA_DIR and FLWR_HOME in a temporary folder."""
    home = tmp_path / "bioverse"
    monkeypatch.setenv("BIOVERSE_DATA_DIR", str(home))
    monkeypatch.setenv("FLWR_HOME", str(home / "flwr"))
    from experiments.settings import get_settings

    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture()
def flower_task_identity() -> Iterator[None]:
    """The identity Flower's runtime sets before it calls a ClientApp handler (tests call handlers directly)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def spec_json(spec: ExperimentSpec) -> str:
    """The spec as the run config carries it."""
    return json.dumps(spec.model_dump(mode="json"))
