"""Twins: a patient's identity within a tenant. Every access is audited."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from sqlalchemy.orm import Session

from feature_store.errors import FeatureStoreError
from platform_api import crud
from platform_api.audit import audited
from platform_api.cache import TTLStore
from platform_api.deps import (
    FeaturesDep,
    LimitQuery,
    OffsetQuery,
    PatientReader,
    PatientWriter,
    PredictionCacheDep,
    SessionDep,
)
from platform_api.schemas import PredictionPublic, TwinCreate, TwinDetail, TwinPage, TwinPublic, TwinUpdate

__all__ = ["router"]

router = APIRouter(prefix="/v1/twins", tags=["twins"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TwinPublic,
             responses={409: {"description": "The patient already has a twin in this tenant"}})
def create_twin(twin_in: TwinCreate, session: SessionDep, caller: PatientWriter) -> TwinPublic:
    """Create a twin for a patient of the caller's tenant."""
    with audited(session, caller, "twin.create", twin_in.patient_id, writes=True):
        twin = crud.create_twin(session=session, tenant_id=caller.tenant_id, twin_in=twin_in)
        public = TwinPublic.model_validate(twin)
    return public


@router.get("", response_model=TwinPage)
def list_twins(
    session: SessionDep,
    caller: PatientReader,
    limit: LimitQuery = 50,
    offset: OffsetQuery = 0,
    patient_id: Annotated[str | None, Query(min_length=1, max_length=128, description="Only the twin of this patient.")] = None,
) -> TwinPage:
    """The caller's tenant's twins, a page at a time (or the twin of one patient)."""
    with audited(session, caller, "twin.list", patient_id):
        items, total = crud.list_twins(session=session, tenant_id=caller.tenant_id, limit=limit, offset=offset, patient_id=patient_id)
        page = TwinPage(items=[TwinPublic.model_validate(t) for t in items], total=total, limit=limit, offset=offset)
    return page


@router.get("/{twin_id}", response_model=TwinDetail)
def read_twin(twin_id: str, session: SessionDep, caller: PatientReader, features_service: FeaturesDep,
              cache: PredictionCacheDep) -> TwinDetail:
    """One twin of the caller's tenant (any other answers 404): identity, current features
    from the online store (cached 60 s) and the latest prediction."""
    with audited(session, caller, f"twin.read:{twin_id[:40]}") as target:
        twin = crud.get_twin(session=session, tenant_id=caller.tenant_id, twin_id=twin_id)
        target["patient_id"] = twin.patient_id
        features, unavailable = None, None
        try:
            features = features_service.current(caller.tenant_id, [twin.patient_id])[twin.patient_id]
        except FeatureStoreError as err:
            unavailable = str(err)
        detail = TwinDetail(**TwinPublic.model_validate(twin).model_dump(), features=features, features_unavailable=unavailable,
                            latest_prediction=_latest_prediction(session, cache, twin.id))
    return detail


def _latest_prediction(session: Session, cache: TTLStore, twin_id: str) -> PredictionPublic | None:
    """The twin's latest prediction: from the prediction cache (300 s), else the database."""
    cached = cache.get_many([twin_id]).get(twin_id)
    if cached is not None:
        return PredictionPublic.model_validate(cached)
    latest = crud.latest_prediction(session=session, twin_id=twin_id)
    if latest is None:
        return None
    public = PredictionPublic.model_validate(latest)
    cache.set_many({twin_id: public.model_dump(mode="json")})
    return public


@router.patch("/{twin_id}", response_model=TwinPublic)
def update_twin(twin_id: str, twin_in: TwinUpdate, session: SessionDep, caller: PatientWriter) -> TwinPublic:
    """Change a twin of the caller's tenant."""
    with audited(session, caller, f"twin.update:{twin_id[:40]}", writes=True) as target:
        twin = crud.get_twin(session=session, tenant_id=caller.tenant_id, twin_id=twin_id)
        target["patient_id"] = twin.patient_id
        public = TwinPublic.model_validate(crud.update_twin(session=session, twin=twin, twin_in=twin_in))
    return public
