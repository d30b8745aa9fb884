"""Scoring a tenant's twins (risk in process, images through the vision deployment), recorded with their audit events."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi.concurrency import run_in_threadpool

from feature_store.contract import violations
from feature_store.errors import StoredValueError
from platform_api import crud
from platform_api.auth import TenantPrincipal
from platform_api.cache import LocalCache, TTLStore
from platform_api.db import session_factory
from platform_api.errors import NotFound
from platform_api.metrics import ApiMetrics
from platform_api.recorder import Recorder, Unit
from platform_api.schemas import ImagePredictionPublic, PredictionPublic
from platform_api.serve_scoring import ServeRiskClient
from platform_api.services import FeatureService, ModelService
from platform_api.vision import VisionClient
from serving.routing import Route

__all__ = ["ImageScorer", "RiskScorer", "TwinPatients"]


def _audit(caller: TenantPrincipal, action: str) -> dict[str, Any]:
    return {"actor": caller.key_id, "role": caller.role, "tenant_id": caller.tenant_id, "patient_id": None,
            "action": action, "outcome": "ok"}


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class TwinPatients:
    """Which patient each of a tenant's twins is, from the twin index, else the database."""

    url: str
    twins: LocalCache

    def _lookup(self, tenant_id: str, twin_ids: list[str]) -> dict[str, str]:
        with session_factory(self.url)() as session:
            return crud.twin_patients(session=session, tenant_id=tenant_id, twin_ids=twin_ids)

    async def of(self, tenant_id: str, twin_ids: list[str]) -> dict[str, str]:
        """twin id -> patient id for the tenant's twins (another tenant's twin is not found)."""
        keys = {f"{tenant_id}|{t}": t for t in twin_ids}
        found = {keys[k]: v["patient_id"] for k, v in self.twins.get_many(keys).items()}
        missing = [t for t in twin_ids if t not in found]
        if missing:
            fresh = await run_in_threadpool(self._lookup, tenant_id, missing)
            self.twins.set_many({f"{tenant_id}|{t}": {"patient_id": p} for t, p in fresh.items()})
            found.update(fresh)
            unknown = [t for t in missing if t not in fresh]
            if unknown:
                raise NotFound(f"no twin {unknown[0]}")
        return found


async def _record(recorder: Recorder, unit: Unit) -> None:
    """Hand ``unit`` to the recorder; back once it is committed."""
    await asyncio.wrap_future(recorder.submit(unit))


@dataclass(frozen=True)
class RiskScorer:
    """Risk predictions of a tenant's twins with the served model. Predictions, alerts and the
    request's audit event are committed together by the recorder (answered once durable); a
    refusal is audited with the error's name."""

    patients: TwinPatients
    recorder: Recorder
    features: FeatureService
    models: ModelService
    predictions: TTLStore
    metrics: ApiMetrics | None
    threshold: float
    remote: ServeRiskClient | None = None  # BIOVERSE_API_RISK_SCORING=serve: the model call goes to Ray Serve

    async def predict(self, caller: TenantPrincipal, action: str, twin_ids: list[str]) -> list[PredictionPublic]:
        """Features of the twins, one model call per version that answers (a rollout splits
        them by twin id), then the stored predictions and alerts."""
        audit = _audit(caller, action)
        try:
            scored = await self._risks(caller.tenant_id, twin_ids, audit)
        except Exception as err:
            audit["outcome"] = type(err).__name__.lower()
            await _record(self.recorder, Unit(audit))
            raise
        unit, now = Unit(audit), _now()
        out = [self._prediction(unit, caller.tenant_id, model, (twin_id, now), used, risk)
               for twin_id, (model, used, risk) in zip(twin_ids, scored, strict=True)]
        await _record(self.recorder, unit)
        self.predictions.set_many({p.twin_id: p.model_dump(mode="json") for p in out})
        if self.metrics is not None:
            for (name, version), n in Counter((m.name, m.version) for m, _, _ in scored).items():
                self.metrics.observe_prediction(name, version, n)
            self.metrics.observe_unknown_categories(scored[0][0].unknown_categories([u for _, u, _ in scored]))
            for alert in unit.alerts:
                self.metrics.observe_alert(alert["priority"])
        return out

    async def _risks(self, tenant: str, twin_ids: list[str], audit: dict[str, Any]) -> list[tuple[Any, dict[str, Any], float]]:
        """Per twin: the version that scored it, the inputs it was scored on, and the risk."""
        patients = await self.patients.of(tenant, twin_ids)
        if len(twin_ids) == 1:
            audit["patient_id"] = patients[twin_ids[0]]
        features, missing = self.features.cached(tenant, list(patients.values()))
        if missing:
            features.update(await run_in_threadpool(self.features.fetch, tenant, missing))
        route = self.models.split.fresh()
        if route is None:
            route = await run_in_threadpool(self.models.split.current)
        if self.remote is not None:  # BIOVERSE_API_RISK_SCORING=serve: Serve routes a rollout's share and scores
            model = route.production
            inputs = [{k: features.get(patients[t], {}).get(k) for k in model.features} for t in twin_ids]
            for twin_id, used in zip(twin_ids, inputs, strict=True):
                if problems := violations(used):
                    raise StoredValueError(f"twin {twin_id}", problems)
            answered = await self.remote.predict(model, inputs, twin_ids)
            return [(served, used, risk) for (served, risk), used in zip(answered, inputs, strict=True)]
        groups: dict[str, tuple[Any, list[int]]] = {}
        for n, twin_id in enumerate(twin_ids):
            model = route.pick(twin_id)
            groups.setdefault(model.version, (model, []))[1].append(n)
        scored: list[Any] = [None] * len(twin_ids)
        for model, members in groups.values():
            for n, answered, used, risk in self._scored(route, model, [patients[twin_ids[n]] for n in members], features,
                                                        [twin_ids[n] for n in members]):
                scored[members[n]] = (answered, used, risk)
        return scored

    @staticmethod
    def _scored(route: Route, model: Any, patients: list[str], features: dict[str, dict[str, Any]],
                twin_ids: list[str]) -> list[tuple[int, Any, dict[str, Any], float]]:
        """Score one version's share of the twins; a failed candidate's share goes to production."""
        for answering in (model, route.production):
            inputs = [{k: features.get(p, {}).get(k) for k in answering.features} for p in patients]
            for twin_id, used in zip(twin_ids, inputs, strict=True):
                problems = violations(used)  # values stored before the contracts, or around them
                if problems:
                    raise StoredValueError(f"twin {twin_id}", problems)
            risks = route.score(answering, inputs)
            if risks is not None:
                if answering is route.production:
                    route.score_shadow(inputs)
                return [(n, answering, used, float(r)) for n, (used, r) in enumerate(zip(inputs, risks, strict=True))]
        raise AssertionError("production answers or raises")  # pragma: no cover

    def _prediction(self, unit: Unit, tenant: str, model: Any, at: tuple[str, datetime], used: dict[str, Any],
                    risk: float) -> PredictionPublic:
        """One prediction of twin ``at[0]`` made at ``at[1]`` (and its alert above the threshold) added to ``unit``."""
        twin_id, now = at
        prediction = {"id": str(uuid.uuid4()), "twin_id": twin_id, "tenant_id": tenant, "model_name": model.name,
                      "model_version": model.version, "risk": risk, "inputs": used, "created_at": now}
        unit.predictions.append(prediction)
        priority = crud.alert_priority(risk, self.threshold)
        if priority is not None:
            unit.alerts.append({"id": str(uuid.uuid4()), "prediction_id": prediction["id"], "twin_id": twin_id,
                                "tenant_id": tenant, "priority": priority, "status": "open", "created_at": now,
                                "acknowledged_at": None, "acknowledged_by": None})
        return PredictionPublic(**{k: v for k, v in prediction.items() if k != "tenant_id"}, alert_priority=priority,
                                decision=risk >= model.threshold, threshold=model.threshold)


@dataclass(frozen=True)
class ImageScorer:
    """Image classifications of a tenant's twins by the vision deployment, recorded like predictions."""

    patients: TwinPatients
    recorder: Recorder
    vision: VisionClient
    metrics: ApiMetrics | None

    async def classify(self, caller: TenantPrincipal, twin_id: str,
                       read: Callable[[], Awaitable[tuple[bytes, str]]]) -> ImagePredictionPublic:
        """Classify an image of the twin's patient (``read`` gives its bytes and type) and store the result."""
        audit = _audit(caller, f"image_prediction.create:{twin_id[:40]}")
        try:
            audit["patient_id"] = (await self.patients.of(caller.tenant_id, [twin_id]))[twin_id]
            data, kind = await read()
            result = await self.vision.classify(data, kind)
        except Exception as err:
            audit["outcome"] = type(err).__name__.lower()
            await _record(self.recorder, Unit(audit))
            raise
        row: dict[str, Any] = {
            "id": str(uuid.uuid4()), "twin_id": twin_id, "tenant_id": caller.tenant_id,
            "model_name": str(result["model_name"]), "model_version": str(result["model_version"]),
            "label": str(result["label"]), "probability": float(result["probability"]),
            "probabilities": {str(k): float(v) for k, v in result["probabilities"].items()},
            "image_sha256": hashlib.sha256(data).hexdigest(), "image_bytes": len(data), "content_type": kind,
            "created_at": _now(),
        }
        await _record(self.recorder, Unit(audit, image_predictions=[row]))
        if self.metrics is not None:
            self.metrics.observe_prediction(row["model_name"], row["model_version"], 1)
        return ImagePredictionPublic(**{k: v for k, v in row.items() if k != "tenant_id"})
