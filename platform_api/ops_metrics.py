"""Operations gauges for /metrics: the audit chain's last verification and each hospital's privacy budget left (docs/monitoring.md)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

__all__ = ["AUDIT_METRICS", "FIRST_CHECK_SECONDS", "PRIVACY_METRICS", "AuditResult", "BudgetReport", "OpsChecks", "OpsCollector",
           "budgets_from_runs"]

_log = logging.getLogger(__name__)
#: The first checks of a process run this long after it starts (or after one interval, if shorter).
FIRST_CHECK_SECONDS = 60.0

#: The audit gauges; absent until the first verification of this process has finished.
AUDIT_METRICS = {
    "bioverse_audit_verify_ok": "1 when the last verification found the audit chain intact, 0 when it found breaks.",
    "bioverse_audit_verify_breaks": "Breaks the last verification of the audit chain found.",
    "bioverse_audit_verify_events": "Events the last verification of the audit chain walked.",
    "bioverse_audit_verify_timestamp_seconds": "Unix time the last verification of the audit chain finished.",
    "bioverse_audit_verify_duration_seconds": "How long the last verification of the audit chain took.",
    "bioverse_audit_verify_error": "1 when the last attempt could not verify (database or key unavailable; logged).",
}
#: The privacy gauges, per hospital, from the newest tracked run that hospital took part in.
PRIVACY_METRICS = {
    "bioverse_privacy_budget_left_epsilon": "Epsilon left of the hospital's budget, as it reported at the end of its newest run.",
    "bioverse_privacy_run_epsilon": "Epsilon the hospital's newest run spent there (training and model selection).",
    "bioverse_privacy_report_timestamp_seconds": "Unix start time of the run the hospital's budget figures come from.",
}

#: ``hospital/stage_budget_left`` and ``hospital/stage_epsilon``: what the coordinator logs per reply.
_BUDGET_KEY = re.compile(r"^(?P<hospital>[^/]+)/\w*budget_left$")
_EPSILON_KEY = re.compile(r"^(?P<hospital>[^/]+)/(train_epsilon|evaluate_selection_epsilon)$")


@dataclass(frozen=True)
class AuditResult:
    """The outcome of one verification attempt (``ok`` is None when it could not run)."""

    ok: bool | None
    breaks: int
    events: int
    finished: float
    seconds: float


@dataclass(frozen=True)
class BudgetReport:
    """A hospital's budget figures from one run: epsilon left, epsilon the run spent, run start (unix s)."""

    left: float
    run_epsilon: float
    started: float


def budgets_from_runs(runs: list[tuple[float, dict[str, float]]]) -> dict[str, BudgetReport]:
    """Per hospital, the figures of the newest run that reported its budget left.

    Args:
        runs: ``(start time in unix seconds, latest metrics of the run)`` pairs, any order.
    """
    found: dict[str, BudgetReport] = {}
    for started, metrics in sorted(runs, key=lambda r: r[0], reverse=True):
        left: dict[str, float] = {}
        spent: dict[str, float] = {}
        for key, value in metrics.items():
            if m := _BUDGET_KEY.match(key):
                hospital = m["hospital"]
                left[hospital] = min(value, left.get(hospital, value))  # the last charge leaves the least
            elif m := _EPSILON_KEY.match(key):
                spent[m["hospital"]] = spent.get(m["hospital"], 0.0) + value
        for hospital, value in left.items():
            found.setdefault(hospital, BudgetReport(value, spent.get(hospital, 0.0), started))
    return found


def _registry_runs(tracking_uri: str, max_runs: int) -> list[tuple[float, dict[str, float]]]:
    """The newest ``max_runs`` runs of every experiment in the tracking store, with their latest metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    runs = client.search_runs(experiments, filter_string="", max_results=max_runs, order_by=["attributes.start_time DESC"])
    return [(r.info.start_time / 1000, dict(r.data.metrics)) for r in runs]


def audit_result() -> AuditResult:
    """What ``bioverse audit verify`` checks: the archive's segments and the live table as one
    chain (a segment altered or lost after archiving is a break here too), with the checkpoints."""
    from platform_api.audit_archive_store import open_store
    from platform_api.audit_archive_verify import verify_all
    from platform_api.db import session_factory

    start = time.perf_counter()
    with session_factory()() as session:
        check = verify_all(session, open_store())
    return AuditResult(check.ok, len(check.breaks), check.events, time.time(), time.perf_counter() - start)


class OpsChecks:
    """One daemon thread running the periodic checks the gauges read; a scrape only reads their last results.

    Args:
        audit_seconds: Verify the audit chain this often (0: never; no audit gauges).
        privacy_seconds: Re-read the hospitals' budget figures this often (0: never).
        tracking_uri: The MLflow tracking store the coordinator logs runs to.
        max_runs: How many of the newest runs are read for budget figures.
        verify_audit, read_runs: The checks (defaults: the platform database, the tracking store).
    """

    def __init__(self, *, audit_seconds: float, privacy_seconds: float, tracking_uri: str = "", max_runs: int = 200,
                 verify_audit: Callable[[], AuditResult] = audit_result,
                 read_runs: Callable[[], list[tuple[float, dict[str, float]]]] | None = None) -> None:
        self.audit_seconds = audit_seconds
        self.privacy_seconds = privacy_seconds
        self._verify_audit = verify_audit
        self._read_runs = read_runs or (lambda: _registry_runs(tracking_uri, max_runs))
        self.audit: AuditResult | None = None
        self.audit_error = False
        self.budgets: dict[str, BudgetReport] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (nothing when both intervals are 0)."""
        if self._thread is None and (self.audit_seconds > 0 or self.privacy_seconds > 0):
            self._thread = threading.Thread(target=self._run, name="bioverse-ops-checks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to end and wait for it (a verification under way finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def check_audit(self) -> None:
        """Verify the chain once; a failure to verify sets ``audit_error`` and keeps the last result."""
        try:
            self.audit = self._verify_audit()
            self.audit_error = False
            if not self.audit.ok:
                _log.error("audit chain verification found %d breaks in %d events (run bioverse audit verify)",
                           self.audit.breaks, self.audit.events)
        except Exception as err:  # noqa: BLE001 - the thread must survive any store failure; logged, exported
            self.audit_error = True
            _log.warning("audit chain not verified: %s", err)

    def check_privacy(self) -> None:
        """Re-read the budget figures once; a failure keeps the last figures (logged)."""
        try:
            self.budgets = budgets_from_runs(self._read_runs())
        except Exception as err:  # noqa: BLE001 - as check_audit
            _log.warning("privacy budget figures not read: %s", err)

    def _run(self) -> None:
        # The first check waits a little (at most a minute): no chain walk or registry read at start-up.
        start = time.monotonic()
        due = {"audit": start + min(self.audit_seconds, FIRST_CHECK_SECONDS),
               "privacy": start + min(self.privacy_seconds, FIRST_CHECK_SECONDS)}
        while not self._stop.is_set():
            now = time.monotonic()
            if self.audit_seconds > 0 and now >= due["audit"]:
                self.check_audit()
                due["audit"] = time.monotonic() + self.audit_seconds
            if self.privacy_seconds > 0 and now >= due["privacy"]:
                self.check_privacy()
                due["privacy"] = time.monotonic() + self.privacy_seconds
            waits = [due[k] for k, s in (("audit", self.audit_seconds), ("privacy", self.privacy_seconds)) if s > 0]
            self._stop.wait(max(0.05, min(waits) - time.monotonic()))


class OpsCollector:
    """Exports the last results of :class:`OpsChecks` (no database or registry read at scrape time)."""

    def __init__(self, checks: OpsChecks) -> None:
        self.checks = checks

    def describe(self) -> list[Metric]:
        """Nothing to describe before the first scrape."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The audit gauges (once verified, or once failed) and one privacy series per hospital."""
        checks = self.checks
        if checks.audit_seconds > 0 and (checks.audit is not None or checks.audit_error):
            audit: dict[str, Any] = {name: GaugeMetricFamily(name, doc) for name, doc in AUDIT_METRICS.items()}
            audit["bioverse_audit_verify_error"].add_metric([], 1.0 if checks.audit_error else 0.0)
            result = checks.audit
            if result is not None and result.ok is not None:
                audit["bioverse_audit_verify_ok"].add_metric([], 1.0 if result.ok else 0.0)
                audit["bioverse_audit_verify_breaks"].add_metric([], result.breaks)
                audit["bioverse_audit_verify_events"].add_metric([], result.events)
                audit["bioverse_audit_verify_timestamp_seconds"].add_metric([], result.finished)
                audit["bioverse_audit_verify_duration_seconds"].add_metric([], result.seconds)
            yield from audit.values()
        privacy = {name: GaugeMetricFamily(name, doc, labels=["hospital"]) for name, doc in PRIVACY_METRICS.items()}
        for hospital, report in sorted(checks.budgets.items()):
            privacy["bioverse_privacy_budget_left_epsilon"].add_metric([hospital], report.left)
            privacy["bioverse_privacy_run_epsilon"].add_metric([hospital], report.run_epsilon)
            privacy["bioverse_privacy_report_timestamp_seconds"].add_metric([hospital], report.started)
        yield from privacy.values()
