"""Live drift of served model versions: recorded predictions against the validation report's reference (docs/monitoring.md)."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from platform_api.metrics import MONITOR_ERRORS
from platform_api.models import Prediction
from training.drift import binned_ks, numeric_bins, psi
from training.tabular.reference import MISSING, calibration_score_reference, window_counts

__all__ = ["DriftMonitor", "WindowSpec", "drift_report", "get_monitor", "monitoring_reference", "read_window",
           "served_versions"]

log = logging.getLogger(__name__)

NO_FEATURE_REFERENCE = "no feature reference: the version was registered before monitoring references (prediction score only)"


@dataclass(frozen=True)
class WindowSpec:
    """Which recorded predictions form a version's window, and when it alerts.

    Attributes:
        size: The last this many predictions.
        minutes: Only those of the last this many minutes (0: no time bound).
        min_predictions: A smaller window has no PSI ("too few predictions").
        threshold: A PSI at or above it is drift (the alert).
    """

    size: int = 1000
    minutes: float = 0.0
    min_predictions: int = 300
    threshold: float = 0.2

    @classmethod
    def from_settings(cls, settings: Any, *, size: int | None = None, minutes: float | None = None) -> WindowSpec:
        """The API settings' window, optionally with another size or time bound."""
        return cls(size=size or settings.monitor_window,
                   minutes=settings.monitor_window_minutes if minutes is None else minutes,
                   min_predictions=settings.monitor_min_predictions, threshold=settings.monitor_psi_threshold)


def monitoring_reference(report: Mapping[str, Any] | None) -> dict[str, Any]:
    """The reference a version's report holds: ``{"score": bins | None, "features": {...} | None}``.

    A report written before monitoring references (no ``monitoring`` section) gives the score
    bins of its calibration curve and no features; no report gives neither.
    """
    if report is None:
        return {"score": None, "features": None}
    section = report.get("monitoring")
    if not isinstance(section, Mapping):
        return {"score": calibration_score_reference(report), "features": None}
    return {"score": section.get("score") or calibration_score_reference(report), "features": section.get("features")}


def read_window(session: Session, model: str, version: str, spec: WindowSpec,
                now: datetime | None = None, tenant: str | None = None) -> tuple[list[dict[str, Any]], list[float]]:
    """Inputs and risks of the version's last ``spec.size`` recorded predictions, newest first: of
    ``tenant`` only when given, else of every tenant."""
    query = select(Prediction.inputs, Prediction.risk).where(Prediction.model_name == model,
                                                             Prediction.model_version == str(version))
    if tenant is not None:
        query = query.where(Prediction.tenant_id == tenant)
    if spec.minutes > 0:
        since = (now or datetime.now(UTC)).replace(tzinfo=None) - timedelta(minutes=spec.minutes)
        query = query.where(Prediction.created_at >= since)
    rows = session.execute(query.order_by(Prediction.created_at.desc()).limit(spec.size)).all()
    return [r.inputs if isinstance(r.inputs, dict) else {} for r in rows], [r.risk for r in rows]


def served_versions(session: Session, hours: float, now: datetime | None = None) -> list[tuple[str, str]]:
    """``(model, version)`` pairs with a recorded prediction in the last ``hours``."""
    since = (now or datetime.now(UTC)).replace(tzinfo=None) - timedelta(hours=hours)
    query = (select(Prediction.model_name, Prediction.model_version).where(Prediction.created_at >= since)
             .group_by(Prediction.model_name, Prediction.model_version)
             .order_by(Prediction.model_name, func.max(Prediction.created_at).desc()))
    return [(r[0], r[1]) for r in session.execute(query).all()]


def _number(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _compare(reference: Sequence[int], window: Sequence[int], labels: list[str], numeric: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"labels": labels, "reference": [round(float(c), 3) for c in reference], "window": [int(c) for c in window],
                           "psi": _number(psi(reference, window))}
    if numeric:  # KS over the ordered bins only (the missing slot has no place on the line)
        ks = binned_ks(reference[:-1], window[:-1])
        out["ks"], out["ks_p"] = (None, None) if ks is None else (_number(ks[0]), _number(ks[1]))
    return out


def _labels(feature: Mapping[str, Any]) -> list[str]:
    if feature["kind"] == "categorical":
        return [*feature["values"], MISSING]
    edges = [f"{e:.4g}" for e in feature["edges"]]
    return [f"< {edges[0]}", *[f"[{a}, {b})" for a, b in zip(edges, edges[1:])], f">= {edges[-1]}", MISSING]


def drift_report(model: str, version: str, reference: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                 risks: Sequence[float], spec: WindowSpec) -> dict[str, Any]:
    """Drift of one version's window against its reference: PSI per feature and for the score, KS for numerics.

    ``status`` is ``ok``, ``too few predictions`` (window under ``spec.min_predictions``: no
    PSI) or ``no reference`` (no validation report). ``alert`` is True when a PSI reaches
    ``spec.threshold``; ``drifted`` names what did (``prediction`` for the score).
    """
    report: dict[str, Any] = {
        "model": model, "version": str(version), "window": len(rows),
        "window_spec": {"size": spec.size, "minutes": spec.minutes, "min_predictions": spec.min_predictions},
        "threshold": spec.threshold, "status": "ok", "alert": False, "drifted": [], "prediction": None, "features": None,
        "feature_reference": "ok" if reference.get("features") else NO_FEATURE_REFERENCE,
    }
    if reference.get("score") is None and not reference.get("features"):
        report["status"] = "no reference"
        return report
    if len(rows) < spec.min_predictions:
        report["status"] = f"too few predictions ({len(rows)} < {spec.min_predictions})"
        return report
    score = reference.get("score")
    if score is not None:
        r = np.asarray([x for x in risks if x is not None and math.isfinite(x)], dtype=float)
        edges = list(score["edges"])
        labels = [f"< {edges[0]:.4g}", *[f"[{a:.4g}, {b:.4g})" for a, b in zip(edges, edges[1:])], f">= {edges[-1]:.4g}"]
        window = [*numeric_bins(r, edges).tolist(), len(risks) - r.size]  # a score that is not a finite number: missing
        report["prediction"] = _compare([*score["counts"], 0], window, [*labels, MISSING], True)
        report["prediction"]["source"] = score.get("source")
    features = reference.get("features") or {}
    if features:
        counts = window_counts(features, rows)
        report["features"] = {column: {"kind": f["kind"], "suppressed": int(f.get("suppressed", 0)),
                                       **_compare(f["counts"], counts[column], _labels(f), f["kind"] == "numeric")}
                              for column, f in features.items()}
    checked = ([("prediction", report["prediction"])] if report["prediction"] else []) + list((report["features"] or {}).items())
    report["drifted"] = [name for name, c in checked if c["psi"] is not None and c["psi"] >= spec.threshold]
    report["alert"] = bool(report["drifted"])
    return report


class DriftMonitor:
    """Drift of the served versions, recomputed at most every ``refresh_seconds`` (what /metrics reads).

    Args:
        sessions: Opens a session on the platform database.
        reports: ``(model, version) -> report dict or None`` (the registry's validation report).
        spec: The window and threshold.
        active_hours: Versions with a prediction in this period are monitored.
        refresh_seconds: How long a computed snapshot is served again.
        reference_seconds: How long a version's reference is kept before it is read again.
    """

    def __init__(self, sessions: Callable[[], Session], reports: Callable[[str, str], Mapping[str, Any] | None],
                 spec: WindowSpec, *, active_hours: float = 24.0, refresh_seconds: float = 30.0,
                 reference_seconds: float = 300.0) -> None:
        self.sessions, self.reports, self.spec = sessions, reports, spec
        self.active_hours, self.refresh_seconds, self.reference_seconds = active_hours, refresh_seconds, reference_seconds
        self._references: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._snapshot: tuple[float, list[dict[str, Any]]] | None = None
        self._alerting: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def reference(self, model: str, version: str) -> dict[str, Any]:
        """The version's reference (cached for ``reference_seconds``)."""
        key = (model, str(version))
        found = self._references.get(key)
        if found is not None and time.monotonic() - found[0] < self.reference_seconds:
            return found[1]
        reference = monitoring_reference(self.reports(model, str(version)))
        self._references[key] = (time.monotonic(), reference)
        return reference

    def version_drift(self, model: str, version: str, spec: WindowSpec | None = None,
                      tenant: str | None = None) -> dict[str, Any]:
        """Drift of one version now (the route, the CLI and the page call this), over ``tenant``'s
        predictions only when given (a tenant's key sees no other tenant's counts)."""
        spec = spec or self.spec
        reference = self.reference(model, version)
        with self.sessions() as session:
            rows, risks = read_window(session, model, version, spec, tenant=tenant)
        return drift_report(model, version, reference, rows, risks, spec)

    def snapshot(self) -> list[dict[str, Any]]:
        """Drift of every served version, recomputed when older than ``refresh_seconds``."""
        with self._lock:
            if self._snapshot is not None and time.monotonic() - self._snapshot[0] < self.refresh_seconds:
                return self._snapshot[1]
            with self.sessions() as session:
                versions = served_versions(session, self.active_hours)
            reports = []
            for model, version in versions:
                try:
                    reports.append(self.version_drift(model, version))
                except MONITOR_ERRORS as err:  # one version's broken reference must not hide the others
                    log.warning("drift of %s version %s not computed: %s", model, version, err)
            self._log_alerts(reports)
            self._snapshot = (time.monotonic(), reports)
            return reports

    def _log_alerts(self, reports: list[dict[str, Any]]) -> None:
        """A warning when a version starts (or stops) drifting."""
        now = {(r["model"], r["version"]) for r in reports if r["alert"]}
        for r in reports:
            key = (r["model"], r["version"])
            if key in now and key not in self._alerting:
                log.warning("drift alert: %s version %s: PSI >= %s on %s", *key, r["threshold"], ", ".join(r["drifted"]))
            elif key in self._alerting and key not in now:
                log.warning("drift alert cleared: %s version %s", *key)
        self._alerting = now


def _registry_report(tracking_uri: str) -> Callable[[str, str], Mapping[str, Any] | None]:
    from experiments.errors import VersionNotFound
    from experiments.registry_reader import RegistryReader

    reader = RegistryReader(tracking_uri)

    def report(model: str, version: str) -> Mapping[str, Any] | None:
        try:
            return reader.report(model, version)
        except VersionNotFound:  # predictions of a version no longer registered: no reference
            return None

    return report


@functools.lru_cache(maxsize=8)
def _monitor(database_url: str, tracking_uri: str, spec: WindowSpec, active_hours: float,
             refresh_seconds: float) -> DriftMonitor:
    from platform_api.db import session_factory

    return DriftMonitor(session_factory(database_url), _registry_report(tracking_uri), spec,
                        active_hours=active_hours, refresh_seconds=refresh_seconds)


def get_monitor(settings: Any | None = None) -> DriftMonitor:
    """The process's monitor of the API settings' database and registry (one per configuration)."""
    if settings is None:
        from platform_api.settings import get_settings

        settings = get_settings()
    return _monitor(settings.resolved_database_url(), settings.resolved_tracking_uri(), WindowSpec.from_settings(settings),
                    settings.monitor_active_hours, settings.monitor_refresh_seconds)
