"""Federated runs as MLflow holds them, after marking FAILED those whose coordinator died."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.tracking import END_REASON_TAG, reconcile_runs

__all__ = ["FederatedRun", "federated_runs", "run_statuses"]


@dataclass(frozen=True)
class FederatedRun:
    """One federated training run: its experiment, id, MLflow status and why it ended (if said)."""

    experiment: str
    run_id: str
    status: str
    started_ms: int
    end_reason: str


def federated_runs(tracking_uri: str, limit: int) -> tuple[list[tuple[str, str]], list[FederatedRun]]:
    """Reconcile, then list the newest ``limit`` federated runs.

    Returns:
        (run id, reason) of each run reconciliation marked FAILED, and the runs newest first.
    """
    marked = reconcile_runs(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return marked, []
    runs = client.search_runs(list(experiments), filter_string="tags.`bioverse.kind` = 'federated-training'",
                              order_by=["attributes.start_time DESC"], max_results=limit)
    return marked, [FederatedRun(experiment=experiments.get(run.info.experiment_id, "?"), run_id=run.info.run_id,
                                 status=run.info.status, started_ms=run.info.start_time,
                                 end_reason=run.data.tags.get(END_REASON_TAG, "")) for run in runs]


def run_statuses(tracking_uri: str, run_ids: list[str]) -> dict[str, str]:
    """MLflow status of each run (after reconciling runs whose coordinator died); ``not found`` if unknown."""
    reconcile_runs(tracking_uri)
    client, found = MlflowClient(tracking_uri=tracking_uri), {}
    for run_id in set(run_ids):
        try:
            found[run_id] = client.get_run(run_id).info.status
        except MlflowException:
            found[run_id] = "not found"
    return found
