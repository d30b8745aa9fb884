"""MLflow tracking of federated runs and registration of the global model."""

from __future__ import annotations

import functools
import getpass
import logging
import os
import socket
import subprocess
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.errors import TrackingError
from experiments.names import CANDIDATE_ALIAS, VALIDATION_DIR
from experiments.spec import ExperimentSpec
from training.decision import Decision
from training.modality import Modality, Preprocessor, get_modality

__all__ = ["CANDIDATE_ALIAS", "VALIDATION_DIR", "RunTracker", "code_version", "embedded_artifact_location", "flatten", "mark_run_ended", "pip_requirements",
           "reconcile_runs"]

log = logging.getLogger(__name__)


@functools.cache
def code_version() -> str:
    """The code that trained a model: the git commit of this checkout (``+dirty`` with
    uncommitted changes), else the installed package's version."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return f"git:{sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        try:
            return f"bioverse {metadata.version('bioverse')}"
        except metadata.PackageNotFoundError:
            return "unknown"
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call


def embedded_artifact_location(tracking_uri: str) -> str | None:
    """For a SQLite store, artifacts go to ``mlartifacts`` beside the database file; for another
    database (PostgreSQL), to the configured artifact root (the production profile's S3); a
    tracking server decides itself (None)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    if tracking_uri.startswith(("postgresql", "mysql", "mssql")):
        from experiments.settings import get_settings

        return get_settings().resolved_artifact_root()
    return None


def mark_run_ended(tracking_uri: str, run_id: str, status: str = "KILLED") -> bool:
    """End a run the coordinator could not end itself (interrupted, timed out).

    Leaves a run that already ended alone; returns True if it changed the status.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_terminated(run_id, status)
    except MlflowException as err:
        log.warning("could not mark run %s %s: %s", run_id, status, err.message)
        return False
    return True


#: Tags of a live coordinator: where it runs, and until when it promises to renew its lease.
HOST_TAG, PID_TAG, PID_STARTED_TAG, LEASE_TAG = "bioverse.host", "bioverse.pid", "bioverse.pid_started", "bioverse.lease_until"
ENDED_BY_TAG, END_REASON_TAG = "bioverse.ended_by", "bioverse.end_reason"


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if there is none."""
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    except Exception:  # psutil.NoSuchProcess, AccessDenied on a zombie  # noqa: BLE001
        return None


def _alive(tags: dict[str, str], now: float) -> tuple[bool, str]:
    """Whether the coordinator of a RUNNING run still lives, and if not, why not."""
    host, pid, started = tags.get(HOST_TAG), tags.get(PID_TAG), tags.get(PID_STARTED_TAG)
    if host == socket.gethostname() and pid and pid.isdigit():
        actual = _process_started(int(pid))
        if actual is None:
            return False, f"its coordinator (process {pid} on {host}) is gone"
        if started and actual and abs(actual - float(started)) > 2:
            return False, f"its coordinator (process {pid} on {host}) is gone (the id was reused)"
        return True, ""
    lease = tags.get(LEASE_TAG)
    if lease is None:
        return True, ""  # a run of an older BioVerse, or another tool's: leave it alone
    if float(lease) < now:
        return False, f"its coordinator on {host or 'another host'} stopped renewing its lease at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(float(lease)))} UTC"
    return True, ""


def _progress_note(client: MlflowClient, run_id: str) -> str:
    started = client.get_metric_history(run_id, "round_started")
    finished = client.get_metric_history(run_id, "evaluate_hospitals")
    last_started = int(max((m.value for m in started), default=0))
    last_done = max((m.step for m in finished), default=0)
    if last_started > last_done:
        return (f"; round {last_started} had started ({last_done} completed): hospitals may have charged it "
                "to their ledgers")
    return ""


def reconcile_runs(tracking_uri: str, *, now: float | None = None) -> list[tuple[str, str]]:
    """Mark FAILED every federated run still RUNNING whose coordinator is gone.

    A coordinator tags its run with its host, process id and start time, and renews a
    lease (``bioverse.lease_until``) every round. A run on this host whose process is gone,
    or on another host whose lease has expired, ended without saying so (kill -9, power
    loss): it is marked FAILED with ``bioverse.ended_by=reconciliation`` and the reason,
    including the round it was in (which hospitals may already have charged).

    Returns:
        (run id, reason) of each run marked.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    now = time.time() if now is None else now
    marked: list[tuple[str, str]] = []
    try:
        experiments = client.search_experiments()
        if not experiments:
            return marked
        runs = client.search_runs([e.experiment_id for e in experiments],
                                  filter_string="attributes.status = 'RUNNING' and tags.`bioverse.kind` = 'federated-training'",
                                  max_results=1000)
        for run in runs:
            alive, reason = _alive(run.data.tags, now)
            if alive:
                continue
            reason += _progress_note(client, run.info.run_id)
            client.log_batch(run.info.run_id, tags=[RunTag(ENDED_BY_TAG, "reconciliation"), RunTag(END_REASON_TAG, reason[:5000])])
            client.set_terminated(run.info.run_id, "FAILED")
            log.warning("run %s marked FAILED: %s", run.info.run_id, reason)
            marked.append((run.info.run_id, reason))
    except MlflowException as err:
        raise TrackingError(f"MLflow reconciliation failed: {err.message}") from err
    return marked


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested spec as dotted MLflow params (lists of hospitals become their ids)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif key == "hospitals" and isinstance(value, list):
            out[name] = ",".join(h["id"] for h in value)
        else:
            out[name] = str(value)[:6000]
    return out


def pip_requirements() -> list[str]:
    """The pinned packages a registered model's environment needs."""
    wanted = ("torch", "pandas", "numpy", "scikit-learn", "pytorch-lightning", "opacus", "mlflow", "pillow")
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in wanted]


def _whoami() -> str:
    """The OS login, marked ``os:`` (unauthenticated: the review gate cannot compare it with a key)."""
    try:
        return f"os:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in the environment nor the password database
        return "unknown"


class RunTracker:
    """One MLflow run per experiment: params, per-round metrics, and the registered model.

    Args:
        tracking_uri: Any MLflow tracking URI (``sqlite:///...``, ``http://...``,
            ``postgresql://...``).
        artifact_location: Where a new experiment keeps artifacts (for embedded
            stores); None lets the tracking server decide.
        launched_by: Who launched the experiment, tagged ``launched_by`` on the registered
            version (a validator may not approve their own model): ``key:<id>/<person>`` for an
            authenticated launch (:class:`experiments.gate.Identity`); default: ``os:<login>``.
    """

    def __init__(self, tracking_uri: str, artifact_location: str | None = None, launched_by: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location
        self.launched_by = (launched_by or "").strip() or _whoami()
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.run_id: str | None = None
        self.lease_seconds = 900.0  # the coordinator renews it every round with the round's timeout
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-metrics")
        self._pending: list[Future[Any]] = []

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlflowException as err:
            raise TrackingError(f"MLflow {what} failed: {err.message}") from err
        except OSError as err:
            raise TrackingError(f"MLflow {what} failed: {err}") from err

    def start(self, spec: ExperimentSpec, tags: dict[str, str] | None = None) -> str:
        """Create (or reuse) the spec's MLflow experiment and start a run; returns its id."""
        experiment = self._call("get experiment", self.client.get_experiment_by_name, spec.name)
        if experiment is None:
            experiment_id = self._call(
                "create experiment", self.client.create_experiment, spec.name, artifact_location=self.artifact_location
            )
        else:
            experiment_id = experiment.experiment_id
        pid = os.getpid()
        started = _process_started(pid)
        liveness = {HOST_TAG: socket.gethostname(), PID_TAG: str(pid), PID_STARTED_TAG: f"{started or 0:.2f}",
                    LEASE_TAG: f"{time.time() + self.lease_seconds:.0f}"}
        run = self._call(
            "start run",
            self.client.create_run,
            experiment_id,
            tags={"bioverse.kind": "federated-training", **liveness, **(tags or {})},
            run_name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        )
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in flatten(spec.model_dump(mode="json")).items()]
        for i in range(0, len(params), 90):
            self._call("log params", self.client.log_batch, self.run_id, params=params[i : i + 90])
        self.log_dict(spec.model_dump(mode="json"), "spec.json")
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue many metrics at one step (round) for a background writer.

        A round's metrics are written off the coordinator's critical path, in order;
        :meth:`flush` waits for them and raises the first failure.
        """
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v == v]  # drop NaN
        run_id = self._run()
        for i in range(0, len(batch), _BATCH):
            chunk = batch[i : i + _BATCH]
            self._pending.append(self._writer.submit(self._call, "log metrics", self.client.log_batch, run_id, metrics=chunk))

    def flush(self) -> None:
        """Wait for queued metrics; raises :class:`TrackingError` if any write failed."""
        pending, self._pending = self._pending, []
        errors = [f.exception() for f in pending]
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            raise failed

    def renew_lease(self, seconds: float | None = None) -> None:
        """Promise to be alive for ``seconds`` more (default: the tracker's lease), so that
        :func:`reconcile_runs` on another host leaves the run alone until then."""
        until = time.time() + (self.lease_seconds if seconds is None else seconds)
        self._pending.append(self._writer.submit(self._call, "renew lease", self.client.set_tag, self._run(),
                                                 LEASE_TAG, f"{until:.0f}"))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tag the run."""
        self._call("tag run", self.client.log_batch, self._run(), tags=[RunTag(k, v) for k, v in tags.items()])

    def log_dict(self, obj: Any, name: str) -> None:
        """Store a JSON artifact in the run."""
        self._call("log artifact", self.client.log_dict, self._run(), obj, name)

    def log_artifacts(self, directory: Path, artifact_path: str) -> None:
        """Store a folder's files in the run under ``artifact_path``."""
        self._call("log artifacts", self.client.log_artifacts, self._run(), str(directory), artifact_path)

    def register(
        self,
        *,
        model: Any,
        encoder: Preprocessor,
        kind: str,
        hparams: dict[str, Any],
        model_name: str,
        tags: dict[str, str],
        candidate: bool = True,
        decision: Decision | None = None,
        modality: Modality | None = None,
    ) -> str:
        """Log the global model (signature, input example) and register a new version.

        The version is created with its tags in one registry call, so the registry never
        holds an untagged version; the ``candidate`` alias then moves to it, unless
        ``candidate`` is False (a version below the quality floor). ``decision`` (the
        served threshold or prior correction) goes into the package's ``decision.json``,
        so the approval's artifact digest covers it, and into the version's tags. ``modality``
        (default: tabular) packages the model. Returns the new version number.
        """
        run_id = self._run()
        self.flush()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            package = (modality or get_modality("tabular")).package_model(Path(tmp), model, encoder, kind, hparams,
                                                                           decision)
            with mlflow.start_run(run_id=run_id):
                info = self._call(
                    "log model",
                    mlflow.pyfunc.log_model,
                    name="model",
                    python_model=package.python_model,
                    artifacts=package.artifacts,
                    signature=package.signature,
                    input_example=package.example,
                    pip_requirements=pip_requirements(),
                )
        version = self._call("register model", mlflow.register_model, info.model_uri, model_name,
                             tags={**tags, **(decision.tags() if decision else {}), "launched_by": self.launched_by})
        # the newest version awaiting review; `production` is only ever set by a validator's approval
        if candidate:
            self._call("set alias", self.client.set_registered_model_alias, model_name, CANDIDATE_ALIAS, str(version.version))
        return str(version.version)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run as FINISHED or FAILED (after the queued metrics are written)."""
        try:
            if status == "FINISHED":
                self.flush()
            else:
                for future in self._pending:
                    future.exception()  # wait, but a failing run keeps its original error
                self._pending = []
        finally:
            self._writer.shutdown(wait=True)
        if self.run_id is not None:
            self._call("end run", self.client.set_terminated, self.run_id, status)

    def _run(self) -> str:
        if self.run_id is None:
            raise TrackingError("no MLflow run started")
        return self.run_id
