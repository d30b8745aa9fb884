"""Predictions and observations of twins: scored by the twin scorer, read back through crud."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import TypeAdapter

from platform_api import crud
from platform_api.audit import audited
from platform_api.deps import (
    FeaturesDep,
    LimitQuery,
    OffsetQuery,
    PatientReader,
    PatientWriter,
    RiskScorerDep,
    SessionDep,
    TerminologyDep,
)
from platform_api.fhir import risk_assessment
from platform_api.schemas import (
    BatchPredictionCreate,
    ObservationCreate,
    ObservationResult,
    PredictionPage,
    PredictionPublic,
)

__all__ = ["router"]

router = APIRouter(tags=["predictions"])


def _json(content: bytes, status_code: int) -> Response:
    return Response(content=content, status_code=status_code, media_type="application/json")


@router.post("/v1/twins/{twin_id}/predictions", status_code=status.HTTP_201_CREATED, response_model=PredictionPublic,
             responses={409: {"description": "A stored feature of the twin breaks its contract (named)"}})
async def predict_twin(twin_id: str, caller: PatientWriter, scorer: RiskScorerDep) -> Response:
    """Score a twin now: its current features, the production model; stored and returned
    with the model version and the inputs used (an alert is raised above the threshold)."""
    (result,) = await scorer.predict(caller, f"prediction.create:{twin_id[:40]}", [twin_id])
    return _json(result.model_dump_json().encode(), status.HTTP_201_CREATED)


@router.post("/v1/predictions/batch", status_code=status.HTTP_201_CREATED, response_model=list[PredictionPublic],
             responses={404: {"description": "One of the twins is not the caller's tenant's (the first is named)"},
                        409: {"description": "A stored feature of a twin breaks its contract (named)"}})
async def predict_batch(body: BatchPredictionCreate, caller: PatientWriter, scorer: RiskScorerDep) -> Response:
    """Score up to 1,000 twins of the caller's tenant in one call; an unknown id fails the whole batch."""
    ids = list(dict.fromkeys(body.twin_ids))
    results = await scorer.predict(caller, f"prediction.batch:{len(ids)}", ids)
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
def read_prediction_fhir(prediction_id: str, session: SessionDep, caller: PatientReader,
                         terminologies: TerminologyDep) -> Response:
    """The prediction as a FHIR R4 RiskAssessment: SNOMED CT/LOINC codes from the model
    version's spec, the inputs as contained Observations in ``basis``, the prediction
    window (docs/fhir.md)."""
    with audited(session, caller, f"prediction.fhir:{prediction_id[:40]}") as target:
        prediction, twin, priority = crud.get_prediction(session=session, tenant_id=caller.tenant_id, prediction_id=prediction_id)
        target["patient_id"] = twin.patient_id
        terminology = terminologies.of(prediction.model_name, prediction.model_version)
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
def observe(twin_id: str, body: ObservationCreate, session: SessionDep, caller: PatientWriter,
            features: FeaturesDep) -> ObservationResult:
    """New vitals or labs: finite, plausible values (each feature's declared range; else 422
    naming it) at a time with a time zone (a naive one answers 422). Pushed to the offline
    history, and online unless a newer observation is current there (last write by event
    time; such features are listed in ``not_applied``); the twin's cached state is dropped."""
    with audited(session, caller, f"observation.create:{twin_id[:40]}") as target:
        twin = crud.get_twin(session=session, tenant_id=caller.tenant_id, twin_id=twin_id)
        target["patient_id"] = twin.patient_id
        values: dict[str, Any] = body.values.model_dump(exclude_none=True)
        pushed = features.observe(caller.tenant_id, twin.patient_id, values, body.observed_at)
    return ObservationResult(updated_views=pushed.updated_views, not_applied=pushed.not_applied, observed_at=pushed.observed_at)
