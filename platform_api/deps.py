"""Typed FastAPI dependencies: the database session, the caller (and its tenant), and the services."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from experiments.registry import ModelRegistry
from platform_api import services
from platform_api.auth import Principal, TenantPrincipal, authenticate, authenticate_cached
from platform_api.cache import LocalCache, TTLStore
from platform_api.db import DatabaseUrl, get_session, session_factory
from platform_api.errors import Forbidden, NotAuthenticated, TooManyRequests
from platform_api.image_batches import ImageBatchScorer
from platform_api.metrics import ApiMetrics
from platform_api.ratelimit import RateLimits
from platform_api.recorder import Recorder
from platform_api.reviews import ReviewService
from platform_api.scoring import ImageScorer, RiskScorer, TwinPatients
from platform_api.serve_scoring import ServeRiskClient, serve_risk_client
from platform_api.settings import ApiSettings, get_settings
from platform_api.vision import VisionClient, get_vision

__all__ = [
    "CallerDep",
    "FeaturesDep",
    "ImageBatchScorerDep",
    "ImageScorerDep",
    "LimitQuery",
    "MetricsDep",
    "ModelsDep",
    "OffsetQuery",
    "PatientReader",
    "PatientWriter",
    "PatientsDep",
    "PredictionCacheDep",
    "RateLimitsDep",
    "RecorderDep",
    "RegistryDep",
    "ReviewsDep",
    "RiskScorerDep",
    "SessionDep",
    "TerminologyDep",
    "TwinIndexDep",
    "VisionDep",
    "bearer_scheme",
    "client_address",
    "get_feature_service",
    "get_image_batch_scorer",
    "get_image_scorer",
    "get_metrics",
    "get_model_service",
    "get_prediction_cache",
    "get_rate_limits",
    "get_recorder",
    "get_registry",
    "get_review_service",
    "get_risk_scorer",
    "get_terminology_service",
    "get_twin_index",
    "get_twin_patients",
    "get_vision_client",
    "identify_caller",
    "registry_at",
    "require_roles",
    "require_tenant_roles",
]

SessionDep = Annotated[Session, Depends(get_session)]
bearer_scheme = HTTPBearer(auto_error=False,
                           description="An API key `bv_<id>_<secret>`, or an access token from `POST /v1/oauth/token`")


def _authenticate(url: str, token: str | None) -> Principal:
    with session_factory(url)() as session:
        return authenticate(session, token)


def client_address(request: Request) -> str:
    """The address the request came from, as the server sees it (the key of rate limits)."""
    return request.client.host if request.client else "unknown"


async def get_rate_limits(request: Request) -> RateLimits | None:
    """The app's rate limits (none in an app built without them)."""
    limits: RateLimits | None = getattr(request.app.state, "rate_limits", None)
    return limits


async def get_metrics(request: Request) -> ApiMetrics | None:
    """The app's Prometheus metrics (none in an app built without them)."""
    metrics: ApiMetrics | None = getattr(request.app.state, "metrics", None)
    return metrics


RateLimitsDep = Annotated[RateLimits | None, Depends(get_rate_limits)]
MetricsDep = Annotated[ApiMetrics | None, Depends(get_metrics)]


async def identify_caller(request: Request, url: DatabaseUrl,
                          credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]) -> Principal:
    """The caller: from the principal cache on the event loop, else from the database in a
    thread, unless the address is over its limit of failed checks (429)."""
    token = credentials.credentials if credentials else None
    limits = await get_rate_limits(request)
    address = client_address(request)
    try:
        cached = authenticate_cached(token)
        if cached is not None:
            return cached
        if limits is not None and (wait := limits.auth_blocked(address)):
            raise TooManyRequests(f"too many failed credential checks from this address; retry in {wait} s", wait)
        return await run_in_threadpool(_authenticate, url, token)
    except NotAuthenticated:
        if limits is not None and token:  # no credentials at all guess nothing: not counted
            limits.auth_failed(address)
        raise


CallerDep = Annotated[Principal, Depends(identify_caller)]


def _allowed(caller: Principal, roles: tuple[str, ...]) -> Principal:
    if caller.role not in roles:
        raise Forbidden(f"role {caller.role} may not do this (allowed: {', '.join(roles)})")
    return caller


def require_roles(*roles: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency admitting only ``roles`` (platform-wide keys and tenants' keys alike)."""

    async def check(caller: CallerDep) -> Principal:
        return _allowed(caller, roles)

    return check


def require_tenant_roles(*roles: str) -> Callable[[Principal], Awaitable[TenantPrincipal]]:
    """A dependency admitting only tenant-bound keys of ``roles``: the caller with its tenant."""

    async def check(caller: CallerDep) -> TenantPrincipal:
        _allowed(caller, roles)
        if caller.tenant_id is None:
            raise Forbidden("this key belongs to no tenant; patient data is reached through a tenant's key")
        return TenantPrincipal(key_id=caller.key_id, role=caller.role, tenant_id=caller.tenant_id, name=caller.name)

    return check


#: Callers who may read a tenant's patient data, and those who may change it. Clinical
#: validators see models and their reports, never patient twins (least privilege).
PatientReader = Annotated[TenantPrincipal, Depends(require_tenant_roles("app", "hospital", "admin"))]
PatientWriter = Annotated[TenantPrincipal, Depends(require_tenant_roles("app", "hospital", "admin"))]

#: Paging parameters shared by the list routes.
LimitQuery = Annotated[int, Query(ge=1, le=200)]
OffsetQuery = Annotated[int, Query(ge=0, le=10_000_000)]


# The services. Async on purpose: FastAPI runs a sync dependency in the thread pool, and
# these only hand out process-wide objects.

async def get_feature_service() -> services.FeatureService:
    """Current features of a tenant's patients (Feast, TTL-cached)."""
    return services.get_features()


async def get_model_service() -> services.ModelService:
    """The served model version, following its alias."""
    return services.get_models()


async def get_terminology_service() -> services.TerminologyService:
    """The codes (SNOMED CT, LOINC) of a model version's spec."""
    return services.get_terminology()


async def get_prediction_cache() -> TTLStore:
    """The latest prediction of each twin (300 s)."""
    return services.get_prediction_cache()


async def get_twin_index() -> LocalCache:
    """twin id -> patient id, per tenant."""
    return services.get_twin_index()


async def get_recorder(url: DatabaseUrl) -> Recorder:
    """The group-committing writer of predictions and audit events for the platform database."""
    return services.get_recorder(url)


@functools.cache
def registry_at(uri: str) -> ModelRegistry:
    """The registry client of a tracking URI (one per URI and process)."""
    return ModelRegistry(uri)


async def get_registry() -> ModelRegistry:
    """The registry the API reviews (the tracking URI the API scores from)."""
    return registry_at(get_settings().resolved_tracking_uri())


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]


async def get_review_service(registry: RegistryDep) -> ReviewService:
    """Review decisions through the registry's gate, audited."""
    return ReviewService(registry)


async def get_vision_client() -> VisionClient:
    """The client of the VisionClassifier deployment."""
    return get_vision()


FeaturesDep = Annotated[services.FeatureService, Depends(get_feature_service)]
ModelsDep = Annotated[services.ModelService, Depends(get_model_service)]
TerminologyDep = Annotated[services.TerminologyService, Depends(get_terminology_service)]
PredictionCacheDep = Annotated[TTLStore, Depends(get_prediction_cache)]
TwinIndexDep = Annotated[LocalCache, Depends(get_twin_index)]
RecorderDep = Annotated[Recorder, Depends(get_recorder)]
ReviewsDep = Annotated[ReviewService, Depends(get_review_service)]
VisionDep = Annotated[VisionClient, Depends(get_vision_client)]


async def get_twin_patients(url: DatabaseUrl, twins: TwinIndexDep) -> TwinPatients:
    """Which patient each of a tenant's twins is."""
    return TwinPatients(url=url, twins=twins)


PatientsDep = Annotated[TwinPatients, Depends(get_twin_patients)]


# The scorers are one dependency each, built from the process's services directly rather than
# from the service dependencies above: FastAPI resolves every dependency of every request
# anew (about 5 us of CPU each), and the prediction route is the hot path
# (benchmarks/api_predictions.py): 5 dependencies per prediction instead of 12. A test
# overrides a scorer as a whole, or ``database_url``; the vision client stays a dependency.

async def get_risk_scorer(request: Request, url: DatabaseUrl) -> RiskScorer:
    """Risk predictions of the caller's tenant's twins, from the services above (the model
    call in process, or through Serve's risk route: ``BIOVERSE_API_RISK_SCORING``)."""
    settings = get_settings()
    return RiskScorer(patients=TwinPatients(url=url, twins=services.get_twin_index()), recorder=services.get_recorder(url),
                      features=services.get_features(), models=services.get_models(),
                      predictions=services.get_prediction_cache(), metrics=getattr(request.app.state, "metrics", None),
                      threshold=settings.alert_threshold, remote=_serve_risk(settings))


def _serve_risk(settings: ApiSettings) -> ServeRiskClient | None:
    """The pooled client of Serve's risk route on ``BIOVERSE_API_RISK_SCORING=serve``, else None (in process)."""
    if settings.risk_scoring != "serve":
        return None
    return serve_risk_client(settings.risk_serve_url, settings.risk_serve_timeout_seconds, settings.risk_serve_connections)


async def get_image_scorer(request: Request, url: DatabaseUrl, vision: VisionDep) -> ImageScorer:
    """Image classifications of the caller's tenant's twins."""
    return ImageScorer(patients=TwinPatients(url=url, twins=services.get_twin_index()), recorder=services.get_recorder(url),
                       vision=vision, metrics=getattr(request.app.state, "metrics", None))


async def get_image_batch_scorer(request: Request, url: DatabaseUrl, vision: VisionDep) -> ImageBatchScorer:
    """Several images of a twin classified in one call to the vision deployment."""
    return ImageBatchScorer(patients=TwinPatients(url=url, twins=services.get_twin_index()),
                            recorder=services.get_recorder(url), vision=vision,
                            metrics=getattr(request.app.state, "metrics", None))


RiskScorerDep = Annotated[RiskScorer, Depends(get_risk_scorer)]
ImageScorerDep = Annotated[ImageScorer, Depends(get_image_scorer)]
ImageBatchScorerDep = Annotated[ImageBatchScorer, Depends(get_image_batch_scorer)]
