"""Predictions and observations of twins: features from the online store, the model in-process."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import TypeAdapter
from sqlalchemy import select

from feature_store.contract import violations
from feature_store.errors import StoredValueError
from platform_api import crud
from platform_api.audit import audited
from platform_api.auth import Principal
from platform_api.db import DatabaseUrl, session_factory
from platform_api.deps import LimitQuery, OffsetQuery, PatientReader, PatientWriter, SessionDep
from platform_api.errors import NotFound
from platform_api.fhir import risk_assessment
from platform_api.models import Twin
from platform_api.recorder import Unit
from platform_api.schemas import (
    BatchPredictionCreate,
    ObservationCreate,
    ObservationResult,
    PredictionPage,
    PredictionPublic,
)
from platform_api.services import (
    get_features,
    get_models,
    get_prediction_cache,
    get_recorder,
    get_terminology,
    get_twin_index,
)
from platform_api.settings import get_settings

__all__ = ["patients_of", "router"]

router = APIRouter(tags=["predictions"])


def _lookup_twins(url: str, tenant_id: str, twin_ids: list[str]) -> dict[str, str]:
    with session_factory(url)() as session:
        rows = session.execute(select(Twin.id, Twin.patient_id).where(Twin.tenant_id == tenant_id, Twin.id.in_(twin_ids)))
        return {twin_id: patient_id for twin_id, patient_id in rows}


async def patients_of(url: str, tenant_id: str, twin_ids: list[str]) -> dict[str, str]:
    """twin id -> patient id for the tenant's twins (another tenant's twin is not found)."""
    index = get_twin_index()
    keys = {f"{tenant_id}|{t}": t for t in twin_ids}
    found = {keys[k]: v["patient_id"] for k, v in index.get_many(keys).items()}
    missing = [t for t in twin_ids if t not in found]
    if missing:
        fresh = await run_in_threadpool(_lookup_twins, url, tenant_id, missing)
        index.set_many({f"{tenant_id}|{t}": {"patient_id": p} for t, p in fresh.items()})
        found.update(fresh)
        unknown = [t for t in missing if t not in fresh]
        if unknown:
            raise NotFound(f"no twin {unknown[0]}")
    return found


async def _score(request: Request, url: str, caller: Principal, action: str, twin_ids: list[str]) -> list[PredictionPublic]:
    """Features of the twins, one model call for all, then predictions, alerts and the audit
    event committed together by the recorder (answered once durable)."""
    tenant = caller.tenant_id
    audit: dict[str, Any] = {"actor": caller.key_id, "role": caller.role, "tenant_id": tenant, "patient_id": None,
                             "action": action, "outcome": "ok"}
    recorder = get_recorder(url)
    try:
        patients = await patients_of(url, tenant, twin_ids)
        if len(twin_ids) == 1:
            audit["patient_id"] = patients[twin_ids[0]]
        features_service = get_features()
        features, missing = features_service.cached(tenant, list(patients.values()))
        if missing:
            features.update(await run_in_threadpool(features_service.fetch, tenant, missing))
        models = get_models()
        model = models.fresh() or await run_in_threadpool(models.current)
        inputs = [{k: features.get(patients[t], {}).get(k) for k in model.features} for t in twin_ids]
        for twin_id, used in zip(twin_ids, inputs, strict=True):
            problems = violations(used)  # values stored before the contracts, or around them
            if problems:
                raise StoredValueError(f"twin {twin_id}", problems)
        risks = model.predict(inputs)
    except Exception as err:
        audit["outcome"] = type(err).__name__.lower()
        await asyncio.wrap_future(recorder.submit(Unit(audit)))
        raise
    threshold = get_settings().alert_threshold
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    unit = Unit(audit)
    out = []
    for twin_id, used, risk in zip(twin_ids, inputs, risks, strict=True):
        prediction = {"id": str(uuid.uuid4()), "twin_id": twin_id, "tenant_id": tenant, "model_name": model.name,
                      "model_version": model.version, "risk": float(risk), "inputs": used, "created_at": now}
        unit.predictions.append(prediction)
        priority = crud.alert_priority(float(risk), threshold)
        if priority is not None:
            unit.alerts.append({"id": str(uuid.uuid4()), "prediction_id": prediction["id"], "twin_id": twin_id,
                                "tenant_id": tenant, "priority": priority, "status": "open", "created_at": now,
                                "acknowledged_at": None, "acknowledged_by": None})
        out.append(PredictionPublic(**{k: v for k, v in prediction.items() if k != "tenant_id"}, alert_priority=priority,
                                    decision=float(risk) >= model.threshold, threshold=model.threshold))
    await asyncio.wrap_future(recorder.submit(unit))
    get_prediction_cache().set_many({p.twin_id: p.model_dump(mode="json") for p in out})
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.observe_prediction(model.name, model.version, len(out))
        metrics.observe_unknown_categories(model.unknown_categories(inputs))
        for alert in unit.alerts:
            metrics.observe_alert(alert["priority"])
    return out


def _json(content: bytes, status_code: int) -> Response:
    return Response(content=content, status_code=status_code, media_type="application/json")


@router.post("/v1/twins/{twin_id}/predictions", status_code=status.HTTP_201_CREATED, response_model=PredictionPublic,
             responses={409: {"description": "A stored feature of the twin breaks its contract (named)"}})
async def predict_twin(twin_id: str, request: Request, url: DatabaseUrl, caller: PatientWriter) -> Response:
    """Score a twin now: its current features, the production model; stored and returned
    with the model version and the inputs used (an alert is raised above the threshold)."""
    (result,) = await _score(request, url, caller, f"prediction.create:{twin_id[:40]}", [twin_id])
    return _json(result.model_dump_json().encode(), status.HTTP_201_CREATED)


@router.post("/v1/predictions/batch", status_code=status.HTTP_201_CREATED, response_model=list[PredictionPublic],
             responses={404: {"description": "One of the twins is not the caller's tenant's (the first is named)"},
                        409: {"description": "A stored feature of a twin breaks its contract (named)"}})
async def predict_batch(body: BatchPredictionCreate, request: Request, url: DatabaseUrl, caller: PatientWriter) -> Response:
    """Score up to 1,000 twins of the caller's tenant in one call; an unknown id fails the whole batch."""
    ids = list(dict.fromkeys(body.twin_ids))
    results = await _score(request, url, caller, f"prediction.batch:{len(ids)}", ids)
    return _json(_PREDICTION_LIST.dump_json(results), status.HTTP_201_CREATED)


_PREDICTION_LIST = TypeAdapter(list[PredictionPublic])


@router.get("/v1/predictions/{prediction_id}", response_model=PredictionPublic)
def read_prediction(prediction_id: str, session: SessionDep, caller: PatientReader) -> PredictionPublic:
    """One stored prediction of the caller's tenant: risk, model version, inputs used."""
    with audited(session, caller, f"prediction.read:{prediction_id[:40]}") as target:
        prediction, twin, priority = crud.get_prediction(session=session, tenant_id=caller.tenant_id, prediction_id=prediction_id)
        target["patient_id"] = twin.patient_id
        public = PredictionPublic.model_validate(prediction).model_copy(update={"alert_priority": priority})
    return public


@router.get("/v1/predictions/{prediction_id}/fhir", response_class=Response,
            responses={200: {"content": {"application/fhir+json": {}}, "description": "A FHIR R4 RiskAssessment"}})
def read_prediction_fhir(prediction_id: str, session: SessionDep, caller: PatientReader) -> Response:
    """The prediction as a FHIR R4 RiskAssessment: SNOMED CT/LOINC codes from the model
    version's spec, the inputs as contained Observations in ``basis``, the prediction
    window (docs/fhir.md)."""
    with audited(session, caller, f"prediction.fhir:{prediction_id[:40]}") as target:
        prediction, twin, priority = crud.get_prediction(session=session, tenant_id=caller.tenant_id, prediction_id=prediction_id)
        target["patient_id"] = twin.patient_id
        terminology = get_terminology().of(prediction.model_name, prediction.model_version)
        resource = risk_assessment(prediction, twin, alert_priority=priority, terminology=terminology)
    return Response(content=json.dumps(resource), media_type="application/fhir+json")


@router.get("/v1/twins/{twin_id}/predictions", response_model=PredictionPage)
def prediction_history(
    twin_id: str,
    session: SessionDep,
    caller: PatientReader,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
) -> PredictionPage:
    """A twin's predictions, newest first."""
    with audited(session, caller, f"prediction.list:{twin_id[:40]}") as target:
        twin = crud.get_twin(session=session, tenant_id=caller.tenant_id, twin_id=twin_id)
        target["patient_id"] = twin.patient_id
        items, total = crud.list_predictions(session=session, twin_id=twin.id, limit=limit, offset=offset)
        page = PredictionPage(items=[PredictionPublic.model_validate(p) for p in items], total=total, limit=limit, offset=offset)
    return page


@router.post("/v1/twins/{twin_id}/observations", status_code=status.HTTP_202_ACCEPTED, response_model=ObservationResult)
def observe(twin_id: str, body: ObservationCreate, session: SessionDep, caller: PatientWriter) -> ObservationResult:
    """New vitals or labs: finite, plausible values (each feature's declared range; else 422
    naming it) at a time with a time zone (a naive one answers 422). Pushed to the offline
    history, and online unless a newer observation is current there (last write by event
    time; such features are listed in ``not_applied``); the twin's cached state is dropped."""
    with audited(session, caller, f"observation.create:{twin_id[:40]}") as target:
        twin = crud.get_twin(session=session, tenant_id=caller.tenant_id, twin_id=twin_id)
        target["patient_id"] = twin.patient_id
        values: dict[str, Any] = body.values.model_dump(exclude_none=True)
        pushed = get_features().observe(caller.tenant_id, twin.patient_id, values, body.observed_at)
    return ObservationResult(updated_views=pushed.updated_views, not_applied=pushed.not_applied, observed_at=pushed.observed_at)
