"""Errors of the platform API, and the one table that answers every domain error with its HTTP status.

Hierarchy (statuses from :data:`STATUS`, resolved through each error's class hierarchy)::

    PlatformError          400: any other refusal of the API
    ├── KeyRequestInvalid       a key asked for with an unknown role or without its tenant (also a ValueError)
    ├── NotAuthenticated   401: no or unknown credentials
    ├── Forbidden          403: the caller's role may not do this
    ├── NotFound           404: unknown, or another tenant's (the same answer)
    ├── Conflict           409: it exists already
    ├── PayloadTooLarge    413: an upload over its limit
    ├── UnsupportedMedia   415: an upload that is not a PNG or JPEG image
    ├── TooManyRequests    429: over a rate limit (with Retry-After)
    └── Unavailable        503: a service the request needs does not answer (vision)
        └── DependencyDown      a configured dependency does not answer (``/readyz``)

    BodyTooLarge (fastapi.HTTPException)  413: a streamed body passed the limit

The lower layers' errors are in the same table (see docs/api.md for all of it).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from experiments.errors import (
    ExperimentError,
    RationaleRequired,
    RationaleTooLong,
    ReportNotRead,
    ReviewError,
    SecretKeyError,
    SelfApproval,
    TrackingError,
    VersionNotFound,
    WrongScope,
)
from feature_store.errors import (
    FeatureDataError,
    FeatureQueryError,
    FeatureRepoError,
    FeatureStoreError,
    StoredValueError,
)
from serving.errors import ModelNotReadyError, PredictionInputError, ServingError
from training.errors import TrainingError

__all__ = ["STATUS", "BodyTooLarge", "Conflict", "DependencyDown", "Forbidden", "KeyRequestInvalid", "NotAuthenticated", "NotFound",
           "PayloadTooLarge", "PlatformError", "TooManyRequests", "Unavailable", "UnsupportedMedia",
           "install_error_handlers", "status_of"]

logger = logging.getLogger(__name__)


class PlatformError(Exception):
    """Base class of the platform API's domain errors."""


class KeyRequestInvalid(PlatformError, ValueError):
    """An API key asked for with a role that does not exist, or without the tenant its role needs."""


class NotAuthenticated(PlatformError):
    """No credentials, or credentials that match no active key."""


class Forbidden(PlatformError):
    """The caller is known but its role (or lack of tenant) does not allow the action."""


class NotFound(PlatformError):
    """No such object for this caller; another tenant's object is reported the same way."""


class Conflict(PlatformError):
    """The object exists already."""


class PayloadTooLarge(PlatformError):
    """An uploaded file over its size limit."""


class UnsupportedMedia(PlatformError):
    """An uploaded file of a type the endpoint does not take."""


class TooManyRequests(PlatformError):
    """Over a rate limit (see :mod:`platform_api.ratelimit`); ``retry_after`` in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(PlatformError):
    """A service the request needs (the vision deployment) does not answer."""


class DependencyDown(Unavailable):
    """A dependency the API is configured with (database, cache, feature store, registry) does not answer."""


class BodyTooLarge(HTTPException):
    """A streamed request body passed its limit (an HTTPException, so FastAPI's body parsing lets it through)."""


#: Domain error -> HTTP status. An error is answered with the status of the first class of
#: its hierarchy (``type(exc).__mro__``) found here, so a new subclass gets its base's.
STATUS: dict[type[Exception], int] = {
    PlatformError: 400,
    NotAuthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMedia: 415,
    TooManyRequests: 429,
    Unavailable: 503,
    OperationalError: 503,  # the platform database does not answer
    ServingError: 503,  # the served model cannot answer
    ModelNotReadyError: 503,
    PredictionInputError: 422,  # features the model cannot take
    FeatureStoreError: 503,  # the feature store cannot answer
    FeatureRepoError: 503,
    FeatureDataError: 422,  # observations the feature store cannot take
    FeatureQueryError: 422,
    StoredValueError: 409,  # a twin whose stored features break their contract cannot be scored
    TrainingError: 422,  # a value a packaged model cannot take
    ExperimentError: 409,  # the experiment or registry state refuses the request
    TrackingError: 503,  # MLflow (tracking server, registry, artifact store) did not answer
    SecretKeyError: 503,  # the gate or audit key is missing or unusable: the operator's to fix
    ReviewError: 409,  # the registry's gate refuses (decided already, no or stale report, not approved...)
    VersionNotFound: 404,
    SelfApproval: 403,
    ReportNotRead: 403,
    WrongScope: 403,
    RationaleRequired: 422,
    RationaleTooLong: 422,
}


def status_of(exc: BaseException) -> int:
    """The HTTP status of ``exc``: that of the nearest class of its hierarchy in :data:`STATUS` (else 500)."""
    return next((STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS), 500)


def install_error_handlers(app: FastAPI) -> None:
    """Answer domain errors with their status and ``{"detail": message}``."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        status = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(exc.retry_after)}
        detail = str(exc)
        if isinstance(exc, OperationalError):
            detail = "the database is not available; try again"
        elif isinstance(exc, SecretKeyError):  # names a server path: the log gets it, the caller does not
            logger.error("signing key unusable: %s", exc)
            detail = "the server's signing key is missing or unusable; the operator has been told in the server log"
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    for cls in STATUS:
        app.add_exception_handler(cls, handle)

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        """FastAPI's 422, except that the refused input is echoed as valid JSON (a NaN or
        Infinity sent in the body would otherwise make the error answer itself fail)."""
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": _finite_json(jsonable_encoder(exc.errors()))}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid_request)


def _finite_json(value: Any) -> Any:
    """``value`` with non-finite floats spelled as strings ("NaN", "Infinity", "-Infinity")."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    return value
