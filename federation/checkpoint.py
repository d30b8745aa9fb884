"""Per-round checkpoints of a federated run in its MLflow run, and reopening a run to resume it."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.spec import ExperimentSpec, parse_spec
from experiments.tracking import END_REASON_TAG, ENDED_BY_TAG, HOST_TAG, LEASE_TAG, PID_STARTED_TAG, PID_TAG, RunTracker
from federation.errors import ResumeError
from training.modality import Preprocessor

__all__ = ["CHECKPOINT_DIR", "Checkpoint", "load_checkpoint", "reopen_run", "resumable_spec", "save_checkpoint",
           "spec_digest"]

log = logging.getLogger(__name__)

#: Where a run's latest checkpoint lives among its artifacts (overwritten every round).
CHECKPOINT_DIR = "checkpoint"
_STATE, _ARRAYS = "state.json", "arrays.npz"
#: Tag counting how often a run was resumed.
RESUMED_TAG = "bioverse.resumed"

#: The coordinator's attributes a resumed run needs (JSON-able), and the model selection's.
_COORDINATOR = ("participation", "epsilon", "final_eval", "fingerprints", "datasets", "statistics_epsilon",
                "class_counts", "class_weights", "timings", "train_losses", "loss_warning", "_noise_warned")
_SELECTION = ("epsilon", "noise_sd", "stopped_early", "rounds_with_val", "stop_suppressed")
_STOPPING = ("best_round", "best_value", "stale", "last_round")
#: Server-side optimiser state of Flower's strategies: FedAvgM's momentum, FedAdam/FedYogi's moments.
_STRATEGY_ARRAYS = ("momentum_vector", "m_t", "v_t")


def spec_digest(spec: ExperimentSpec) -> str:
    """SHA-256 of the spec as the run recorded it (``spec.json``)."""
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


@dataclass
class Checkpoint:
    """A run's state after its last completed round."""

    server_round: int
    state: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def _group(self, prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) + 1:]: v for k, v in self.arrays.items() if k.startswith(prefix + "/")}

    def encoder(self, spec: ExperimentSpec) -> Preprocessor:
        """The federation's preprocessor from the statistics round (no new statistics round)."""
        return spec.modality.preprocessor_from_json(spec, self.state["encoder"])

    def restore_coordinator(self, coordinator: Any) -> Preprocessor:
        """Put the coordinator and its model selection back as they were after the round;
        returns the encoder."""
        for name in _COORDINATOR:
            setattr(coordinator, name, self.state["coordinator"][name])
        selection, saved = coordinator.selection, self.state["selection"]
        for name in _SELECTION:
            setattr(selection, name, saved[name])
        for name in _STOPPING:
            setattr(selection.stopping, name, saved["stopping"][name])
        selection.stopping.history = {int(k): v for k, v in saved["stopping"]["history"].items()}
        best = self._group("best")
        selection.best_state = {k: torch.from_numpy(v.copy()) for k, v in best.items()} if best else None
        return self.encoder(coordinator.spec)

    def restore_strategy(self, strategy: Any) -> ArrayRecord:
        """Put the strategy's state back (optimiser moments, clip bound, early stop) and make it
        skip the rounds already done; returns the global model to continue from."""
        saved = self.state["strategy"]
        strategy.clip_bound = saved["clip_bound"]
        strategy.stopped_after = saved["stopped_after"]
        strategy.resume_after = self.server_round
        for name in _STRATEGY_ARRAYS:
            found = self._group(f"strategy.{name}")
            if found and name == "momentum_vector":
                setattr(strategy, name, [found[str(i)] for i in range(len(found))])
            elif found:
                setattr(strategy, name, found)
        return ArrayRecord({k: torch.from_numpy(v.copy()) for k, v in self._group("model").items()})


def save_checkpoint(coordinator: Any, strategy: Any, server_round: int, arrays: ArrayRecord | None,
                    encoder: Preprocessor) -> None:
    """Checkpoint the run after ``server_round`` into its MLflow artifacts (``checkpoint/``).

    The state file is written last, so a coordinator killed while writing leaves the
    previous round's state pointing at arrays of the same or a later round: the arrays
    carry their round and :func:`load_checkpoint` refuses a pair that does not match.
    """
    selection = coordinator.selection
    stopping = selection.stopping
    state = {
        "round": server_round,
        "spec_digest": spec_digest(coordinator.spec),
        "encoder": encoder.to_json(),
        "coordinator": {name: getattr(coordinator, name) for name in _COORDINATOR},
        "selection": {**{name: getattr(selection, name) for name in _SELECTION},
                      "stopping": {**{name: getattr(stopping, name) for name in _STOPPING},
                                   "history": {str(k): v for k, v in stopping.history.items()}}},
        "strategy": {"clip_bound": strategy.clip_bound, "stopped_after": strategy.stopped_after,
                     "node_names": {str(k): v for k, v in strategy.node_names.items()}},
        "saved": time.time(),
        # a copy of the run's audit-heads.json (federation.audit_heads), should that artifact be torn
        "audit_heads": list(getattr(getattr(coordinator, "audit_heads", None), "heads", [])),
    }
    flat: dict[str, np.ndarray] = {"round": np.array(server_round)}
    if arrays is not None:
        flat.update({f"model/{k}": v.numpy() for k, v in arrays.items()})
    if selection.best_state is not None:
        flat.update({f"best/{k}": v.detach().cpu().numpy() for k, v in selection.best_state.items()})
    for name in _STRATEGY_ARRAYS:
        value = getattr(strategy, name, None)
        items = enumerate(value) if isinstance(value, list) else value.items() if isinstance(value, dict) else ()
        flat.update({f"strategy.{name}/{k}": np.asarray(v) for k, v in items})
    with tempfile.TemporaryDirectory(prefix="bioverse-checkpoint-") as tmp:
        np.savez(Path(tmp) / _ARRAYS, **flat)
        coordinator.tracker.log_artifacts(Path(tmp), CHECKPOINT_DIR)
        (Path(tmp) / _ARRAYS).unlink()
        (Path(tmp) / _STATE).write_text(json.dumps(state, default=float))
        coordinator.tracker.log_artifacts(Path(tmp), CHECKPOINT_DIR)
    coordinator.tracker.log_metrics({"checkpoint_round": float(server_round)}, step=server_round)


def load_checkpoint(tracking_uri: str, run_id: str) -> Checkpoint | None:
    """The run's last checkpoint, or None when it has none."""
    client = MlflowClient(tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="bioverse-checkpoint-") as tmp:
        try:
            folder = Path(client.download_artifacts(run_id, CHECKPOINT_DIR, tmp))
        except (MlflowException, OSError):
            return None
        if not (folder / _STATE).exists() or not (folder / _ARRAYS).exists():
            return None
        state = json.loads((folder / _STATE).read_text())
        with np.load(io.BytesIO((folder / _ARRAYS).read_bytes())) as npz:
            arrays = {k: npz[k] for k in npz.files}
    if int(arrays.pop("round")) != int(state["round"]):
        raise ResumeError(f"run {run_id}: its checkpoint is torn (arrays of another round); it cannot be resumed")
    return Checkpoint(int(state["round"]), state, arrays)


def resumable_spec(tracking_uri: str, run_id: str, expected: ExperimentSpec | None = None) -> tuple[ExperimentSpec, int]:
    """The spec of a run that can be resumed, and its last checkpointed round.

    Raises:
        ResumeError: unknown run, finished or still running, no checkpoint, or a spec that
            differs from ``expected``.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ResumeError(f"no run {run_id} in {tracking_uri}: see `bioverse experiment runs`") from None
    if run.data.tags.get("bioverse.kind") != "federated-training":
        raise ResumeError(f"run {run_id} is not a federated training run")
    if run.info.status == "FINISHED":
        raise ResumeError(f"run {run_id} already finished: nothing to resume")
    if run.info.status == "RUNNING":
        raise ResumeError(f"run {run_id} is still running (its coordinator is alive); stop it first")
    with tempfile.TemporaryDirectory(prefix="bioverse-spec-") as tmp:
        try:
            recorded = json.loads(Path(client.download_artifacts(run_id, "spec.json", tmp)).read_text())
        except (MlflowException, OSError, ValueError):
            raise ResumeError(f"run {run_id} has no readable spec.json: it cannot be resumed") from None
    spec = parse_spec(recorded, f"run {run_id}'s spec.json")
    if expected is not None and spec_digest(expected) != spec_digest(spec):
        mine, theirs = _flat(expected.model_dump(mode="json")), _flat(recorded)
        differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        raise ResumeError(f"run {run_id} was started with another spec (differs in {', '.join(differ[:5]) or 'order'}): "
                          "resume it without --spec or with the spec it ran")
    checkpoint = load_checkpoint(tracking_uri, run_id)
    if checkpoint is None:
        raise ResumeError(f"run {run_id} has no checkpoint (it ended before its first round completed): run it again")
    if checkpoint.state["spec_digest"] != spec_digest(spec):
        raise ResumeError(f"run {run_id}: its checkpoint was written for another spec than its spec.json")
    return spec, checkpoint.server_round


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def reopen_run(tracker: RunTracker, spec: ExperimentSpec, run_id: str) -> Checkpoint:
    """Set a failed run RUNNING again under this coordinator (its liveness tags, a fresh
    lease) and return its checkpoint.

    Raises:
        ResumeError: no checkpoint, or one written for another spec.
    """
    checkpoint = load_checkpoint(tracker.tracking_uri, run_id)
    if checkpoint is None:
        raise ResumeError(f"run {run_id} has no checkpoint to resume from")
    if checkpoint.state["spec_digest"] != spec_digest(spec):
        raise ResumeError(f"run {run_id}: the spec to resume with is not the spec its checkpoint was written for")
    import psutil

    client = tracker.client
    previous = client.get_run(run_id).data.tags
    try:
        client.update_run(run_id, status="RUNNING")
        for tag in (ENDED_BY_TAG, END_REASON_TAG):
            if tag in previous:
                client.delete_tag(run_id, tag)
    except MlflowException as err:
        raise ResumeError(f"run {run_id} could not be reopened: {err.message}") from err
    tracker.run_id = run_id
    tracker.set_tags({HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
                      PID_STARTED_TAG: f"{psutil.Process().create_time():.2f}",
                      LEASE_TAG: f"{time.time() + tracker.lease_seconds:.0f}",
                      RESUMED_TAG: str(int(previous.get(RESUMED_TAG, "0")) + 1)})
    log.info("run %s resumed after round %d", run_id, checkpoint.server_round)
    return checkpoint
