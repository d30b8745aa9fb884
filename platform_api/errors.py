"""Errors of the platform API, and the one table that maps domain errors to HTTP answers.

Hierarchy::

    PlatformError
    ├── NotAuthenticated   401: no or unknown credentials
    ├── Forbidden          403: the caller's role may not do this
    ├── NotFound           404: unknown, or another tenant's (the same answer)
    ├── Conflict           409: it exists already
    ├── PayloadTooLarge    413: an upload over its limit
    ├── UnsupportedMedia   415: an upload that is not a PNG or JPEG image
    ├── TooManyRequests    429: over a rate limit (with Retry-After)
    └── Unavailable        503: a service the request needs does not answer (vision)

Errors of the lower layers are answered through the same table: a model or feature store
that is not ready, or a database that does not answer, is 503; a review the registry's
gate refuses is 409 (403 for approving one's own model, 404 for an unknown version); features a model or the feature store cannot take are 422;
a twin whose stored features break their contract cannot be scored (409, naming the twin and the feature);
MLflow not answering, or a signing key (gate, audit) that is missing or unusable, is 503.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from experiments.errors import TrackingError
from experiments.keys import SecretKeyError
from experiments.registry import (
    LauncherUnknown,
    NothingToRollBack,
    NotApproved,
    NotPending,
    RationaleRequired,
    RationaleTooLong,
    ReportMissing,
    ReportNotRead,
    ReportStale,
    ReviewError,
    SelfApproval,
    VersionNotFound,
    WrongScope,
)
from feature_store.errors import FeatureDataError, FeatureRepoError, StoredValueError
from serving.errors import ModelNotReadyError, PredictionInputError

__all__ = ["Conflict", "Forbidden", "NotAuthenticated", "NotFound", "PayloadTooLarge", "PlatformError", "TooManyRequests",
           "Unavailable", "UnsupportedMedia", "install_error_handlers"]

logger = logging.getLogger(__name__)


class PlatformError(Exception):
    """Base class of the platform API's domain errors."""


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


_STATUS: dict[type[Exception], int] = {
    NotAuthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMedia: 415,
    TooManyRequests: 429,
    Unavailable: 503,
    PredictionInputError: 422,
    FeatureDataError: 422,
    StoredValueError: 409,
    ModelNotReadyError: 503,
    FeatureRepoError: 503,
    OperationalError: 503,
    VersionNotFound: 404,
    SelfApproval: 403,
    LauncherUnknown: 409,
    RationaleRequired: 422,
    RationaleTooLong: 422,
    NotPending: 409,
    ReportMissing: 409,
    ReportStale: 409,
    NotApproved: 409,
    NothingToRollBack: 409,
    ReportNotRead: 403,
    WrongScope: 403,
    ReviewError: 409,  # any other refusal of the gate (e.g. a decision with an unnamed key)
    TrackingError: 503,  # MLflow (tracking server, registry, artifact store) did not answer
    SecretKeyError: 503,  # the gate or audit key is missing or unusable: the operator's to fix
}


def install_error_handlers(app: FastAPI) -> None:
    """Answer domain errors with their status and ``{"detail": message}``."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        status = next(code for cls, code in _STATUS.items() if isinstance(exc, cls))
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

    for cls in _STATUS:
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
