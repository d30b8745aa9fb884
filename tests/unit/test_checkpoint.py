"""A run's per-round checkpoint in MLflow: saved, loaded and restored to the same state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from mlflow.tracking import MlflowClient

from experiments.tracking import RunTracker
from federation import client_app
from federation.checkpoint import load_checkpoint, resumable_spec, save_checkpoint
from federation.coordinator import Coordinator
from federation.errors import ResumeError
from federation.progress import ProgressLog
from federation.strategy import build_strategy
from tests.conftest import make_spec, spec_json
from training.tabular.hospital import model_hparams
from training.tabular.models import build_model
from training.tabular.preprocessing import FeatureEncoder, merge_statistics

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _encoder(spec, tmp_path: Path) -> FeatureEncoder:  # type: ignore[no-untyped-def]
    run_config = {"spec": spec_json(spec), "ledger-dir": str(tmp_path / "ledgers"), "tracking-uri": "", "progress-file": ""}
    ctx = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 3}, state=RecordDict(),
                  run_config=run_config)
    reply = client_app.statistics(Message(RecordDict({"config": ConfigRecord({"run-key": "r"})}), dst_node_id=7,
                                          message_type=MessageType.QUERY), ctx)
    return FeatureEncoder.from_statistics(merge_statistics([json.loads(reply.content["statistics"]["stats"])]),
                                          spec.data.contract)


def _coordinator(spec, uri: str) -> Coordinator:  # type: ignore[no-untyped-def]
    return Coordinator(spec, RunTracker(uri), ProgressLog(None))


@pytest.mark.parametrize("strategy_name", ["fedadam", "fedavgm"])
def test_checkpoint_round_trip_restores_coordinator_selection_and_strategy(
    hospital_files: list[Path], tmp_path: Path, strategy_name: str
) -> None:
    spec = make_spec(hospital_files, strategy={"name": strategy_name})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    encoder = _encoder(spec, tmp_path)
    model = build_model(spec.model.kind, encoder.input_dim, **model_hparams(spec))
    arrays = ArrayRecord(model.state_dict())
    coordinator = _coordinator(spec, uri)
    run_id = coordinator.tracker.start(spec)
    coordinator.epsilon = {"hospital-01": 0.7, "hospital-02": 0.8}
    coordinator.participation = {"0": {"statistics": {"hospital-01": {"status": "ok", "reason": ""}}}}
    coordinator.class_counts = {"hospital-01": [90, 10]}
    coordinator.train_losses = [0.6, 0.5]
    coordinator.selection.stopping.observe(1, 0.61)
    coordinator.selection.stopping.observe(2, 0.59)
    coordinator.selection.best_state = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    coordinator.selection.epsilon = {"hospital-01": 0.1}
    strategy = build_strategy(spec.strategy, observer=coordinator, min_available=2, learning_rate=0.01)
    strategy.clip_bound = 0.83
    strategy.node_names = {5: "hospital-01"}
    moments = {k: np.full(v.shape, 0.25, dtype=np.float32) for k, v in arrays.items()}
    if strategy_name == "fedadam":
        strategy.m_t, strategy.v_t = moments, {k: v * 2 for k, v in moments.items()}
    else:
        strategy.momentum_vector = list(moments.values())
    save_checkpoint(coordinator, strategy, 2, arrays, encoder)
    coordinator.tracker.end("FAILED")

    saved = load_checkpoint(uri, run_id)
    assert saved is not None and saved.server_round == 2
    fresh = _coordinator(spec, uri)
    restored_encoder = saved.restore_coordinator(fresh)
    assert restored_encoder.to_json() == encoder.to_json()
    assert fresh.epsilon == coordinator.epsilon and fresh.participation == coordinator.participation
    assert fresh.class_counts == coordinator.class_counts and fresh.train_losses == [0.6, 0.5]
    stopping = fresh.selection.stopping
    old = coordinator.selection.stopping
    assert (stopping.best_round, stopping.best_value, stopping.stale, stopping.last_round) == (
        old.best_round, old.best_value, old.stale, 2)
    assert stopping.history == {1: 0.61, 2: 0.59}
    assert fresh.selection.epsilon == {"hospital-01": 0.1}
    assert fresh.selection.best_state is not None
    for key, value in coordinator.selection.best_state.items():
        torch.testing.assert_close(fresh.selection.best_state[key], value)
    other = build_strategy(spec.strategy, observer=fresh, min_available=2, learning_rate=0.01)
    model_arrays = saved.restore_strategy(other)
    assert other.clip_bound == 0.83 and other.resume_after == 2 and other.stopped_after is None
    for key in arrays:
        np.testing.assert_array_equal(model_arrays[key].numpy(), arrays[key].numpy())
    if strategy_name == "fedadam":
        assert set(other.m_t) == set(moments)
        np.testing.assert_array_equal(next(iter(other.v_t.values())), next(iter(moments.values())) * 2)
    else:
        assert len(other.momentum_vector) == len(moments)
        np.testing.assert_array_equal(other.momentum_vector[0], next(iter(moments.values())))
    # skipped rounds send nothing
    assert list(other.configure_train(2, model_arrays, ConfigRecord(), None)) == []
    assert resumable_spec(uri, run_id)[1] == 2


def test_resume_refuses_unknown_finished_and_checkpointless_runs(hospital_files: list[Path], tmp_path: Path) -> None:
    spec = make_spec(hospital_files)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker(uri)
    run_id = tracker.start(spec)
    tracker.end("FAILED")
    with pytest.raises(ResumeError, match="has no checkpoint"):
        resumable_spec(uri, run_id)
    MlflowClient(uri).set_terminated(run_id, "FINISHED")
    with pytest.raises(ResumeError, match="already finished"):
        resumable_spec(uri, run_id)
    with pytest.raises(ResumeError, match="no run 0123"):
        resumable_spec(uri, "0123456789abcdef0123456789abcdef")
    other = make_spec(hospital_files, training={"rounds": 7})
    MlflowClient(uri).update_run(run_id, status="FAILED")
    with pytest.raises(ResumeError, match="another spec"):
        resumable_spec(uri, run_id, other)
