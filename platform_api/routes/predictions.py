"""Predictions and observations of twins: features from the online store, the model in-process."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from platform_api import crud
from platform_api.audit import audited
from platform_api.auth import Principal
from platform_api.deps import LimitQuery, OffsetQuery, PatientReader, PatientWriter, SessionDep
from platform_api.errors import NotFound
from platform_api.models import Twin
from platform_api.schemas import (
    BatchPredictionCreate,
    ObservationCreate,
    ObservationResult,
    PredictionPage,
    PredictionPublic,
)
from platform_api.services import get_features, get_models
from platform_api.settings import get_settings

__all__ = ["router"]

router = APIRouter(tags=["predictions"])


def _score(session: Session, caller: Principal, twins: list[Twin]) -> list[PredictionPublic]:
    """Features of the twins, one model call for all, stored predictions and alerts."""
    assert caller.tenant_id is not None
    features = get_features().current(caller.tenant_id, [t.patient_id for t in twins])
    model = get_models().current()
    inputs = [{k: features[t.patient_id].get(k) for k in model.features} for t in twins]
    risks = model.predict(inputs)
    threshold = get_settings().alert_threshold
    out = []
    for twin, used, risk in zip(twins, inputs, risks, strict=True):
        prediction, alert = crud.create_prediction(session=session, twin=twin, risk=float(risk), model_name=model.name,
                                                   model_version=model.version, inputs=used, alert_threshold=threshold)
        out.append(PredictionPublic.model_validate(prediction).model_copy(update={"alert_priority": alert.priority if alert else None}))
    return out


@router.post("/v1/twins/{twin_id}/predictions", status_code=status.HTTP_201_CREATED, response_model=PredictionPublic)
def predict_twin(twin_id: str, session: SessionDep, caller: PatientWriter) -> PredictionPublic:
    """Score a twin now: its current features, the production model; stored and returned
    with the model version and the inputs used (an alert is raised above the threshold)."""
    assert caller.tenant_id is not None
    with audited(session, caller, f"prediction.create:{twin_id[:40]}") as target:
        twin = crud.get_twin(session=session, tenant_id=caller.tenant_id, twin_id=twin_id)
        target["patient_id"] = twin.patient_id
        (result,) = _score(session, caller, [twin])
    return result


@router.post("/v1/predictions/batch", status_code=status.HTTP_201_CREATED, response_model=list[PredictionPublic])
def predict_batch(body: BatchPredictionCreate, session: SessionDep, caller: PatientWriter) -> list[PredictionPublic]:
    """Score up to 1,000 twins of the caller's tenant in one call; an unknown id fails the whole batch."""
    assert caller.tenant_id is not None
    with audited(session, caller, f"prediction.batch:{len(body.twin_ids)}"):
        ids = list(dict.fromkeys(body.twin_ids))
        found = {t.id: t for t in session.scalars(select(Twin).where(Twin.tenant_id == caller.tenant_id, Twin.id.in_(ids)))}
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"no twin {missing[0]}")
        results = _score(session, caller, [found[i] for i in ids])
    return results


@router.get("/v1/twins/{twin_id}/predictions", response_model=PredictionPage)
def prediction_history(
    twin_id: str,
    session: SessionDep,
    caller: PatientReader,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
) -> PredictionPage:
    """A twin's predictions, newest first."""
    assert caller.tenant_id is not None
    with audited(session, caller, f"prediction.list:{twin_id[:40]}") as target:
        twin = crud.get_twin(session=session, tenant_id=caller.tenant_id, twin_id=twin_id)
        target["patient_id"] = twin.patient_id
        items, total = crud.list_predictions(session=session, twin_id=twin.id, limit=limit, offset=offset)
        page = PredictionPage(items=[PredictionPublic.model_validate(p) for p in items], total=total, limit=limit, offset=offset)
    return page


@router.post("/v1/twins/{twin_id}/observations", status_code=status.HTTP_202_ACCEPTED, response_model=ObservationResult)
def observe(twin_id: str, body: ObservationCreate, session: SessionDep, caller: PatientWriter) -> ObservationResult:
    """New vitals or labs: pushed to the feature store (online and offline); the twin's
    cached state is dropped, so the next read and prediction see them."""
    assert caller.tenant_id is not None
    with audited(session, caller, f"observation.create:{twin_id[:40]}") as target:
        twin = crud.get_twin(session=session, tenant_id=caller.tenant_id, twin_id=twin_id)
        target["patient_id"] = twin.patient_id
        values: dict[str, Any] = dict(body.values)
        updated = get_features().observe(caller.tenant_id, twin.patient_id, values, body.observed_at)
    return ObservationResult(updated_views=updated)
